/* SPDX-License-Identifier: MIT */
/*
 * tier_gpu.h - the GPU tier (tier_gpu.c): one device pool of kvt_gpu.h, exported once over
 * CUDA IPC, behind the common tier interface (tier.h).
 *
 * The tier only keeps bytes: alloc() hands out 4 KiB-granular offsets of the pool, write()
 * copies host memory into the pool and read() copies pool bytes out to host memory, both on
 * the tier's own CUDA stream.  Host buffers must be registered with kvt_tier_gpu_register()
 * first (the daemon registers each tenant arena once).  Copies complete before read()/write()
 * return; their done() callbacks run from complete(), as tier.h asks.
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
 * Opens the tier: device is "GPU-<uuid>" (nvidia-smi -L), a decimal ordinal, or NULL/"" for
 * device 0; conf->capacity_bytes is the pool size (> 0); epoch goes into the descriptor.
 * Returns 0, -ENODEV (no such device, no GPU, no CUDA), -EINVAL, -ENOMEM.
 */
int kvt_tier_gpu_open(const struct kvt_tier_conf *conf, const char *device, uint64_t epoch,
		      struct kvt_tier **out);

/* The descriptor clients open (kvt_gpu_pool_open) to map the pool. */
int kvt_tier_gpu_export(struct kvt_tier *t, struct kvt_gpu_ipc_desc *d);

/* Registers host memory that read()/write() may use (once per mapping). 0 or -errno. */
int kvt_tier_gpu_register(struct kvt_tier *t, void *base, uint64_t len);
void kvt_tier_gpu_unregister(struct kvt_tier *t, void *base);

/* Device UUID of the pool. */
void kvt_tier_gpu_uuid(const struct kvt_tier *t, uint8_t uuid[KVT_GPU_UUID_LEN]);

/* What the daemon needs to run gpu/'s kernels on the pool itself (int8 demotion). */
void *kvt_tier_gpu_base(const struct kvt_tier *t);
struct kvt_gpu_engine *kvt_tier_gpu_engine(const struct kvt_tier *t);
void *kvt_tier_gpu_stream(const struct kvt_tier *t);
int kvt_tier_gpu_device(const struct kvt_tier *t);

/* ops.open: conf->paths[0] is the device (or NULL), epoch 0. */
extern const struct kvt_tier_ops kvt_tier_gpu_ops;

#ifdef __cplusplus
}
#endif
#endif
