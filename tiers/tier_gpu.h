/* SPDX-License-Identifier: MIT */
/*
 * tier_gpu.h - the GPU tier (tier_gpu.c): one device pool of kvt_gpu.h, exported once over
 * CUDA IPC, behind the common tier interface (tier.h).
 *
 * The tier only keeps bytes: alloc() hands out 4 KiB-granular offsets of the pool, write()
 * copies host memory into the pool and read() copies pool bytes out to host memory, both on
 * the tier's own CUDA stream.  Host buffers must be registered with ops.mem_register() first.
 * Copies complete before read()/write() return; their done() callbacks run from complete(), as
 * tier.h asks.
 *
 * Without a GPU (or in the build without CUDA) open() fails with -ENODEV: the daemon then
 * runs without the tier.
 */
#ifndef KVT_TIER_GPU_H
#define KVT_TIER_GPU_H

#include <stdint.h>

#include "kvt_gpu.h"
#include "tier.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * open(): conf->paths[0] is the device, "GPU-<uuid>" (nvidia-smi -L), a decimal ordinal, or
 * NULL/"" for device 0; conf->capacity_bytes the pool size (> 0); conf->epoch goes into the
 * descriptor.  Returns 0, -ENODEV (no such device, no GPU, no CUDA), -EINVAL, -ENOMEM.
 * export_desc(): the struct kvt_gpu_ipc_desc clients open (kvt_gpu_pool_open) to map the pool.
 * mem_register(): host memory read()/write() may use (the daemon registers each tenant arena
 * once).  read() with io->xform = a struct kvt_gpu_kvq: the pool holds the block quantized
 * (int8/int4 tiles); the tier dequantizes it on the device and io->len = q->raw_bytes raw
 * bytes reach io->buf.
 */
extern const struct kvt_tier_ops kvt_tier_gpu_ops;

#ifdef __cplusplus
}
#endif
#endif
