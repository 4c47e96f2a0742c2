/* SPDX-License-Identifier: MIT */
/*
 * gpu_internal.h - what the CUDA files of gpu/ share: the engine, error mapping, the device
 * guard.  Not installed, not API.
 */
#ifndef KVT_GPU_INTERNAL_H
#define KVT_GPU_INTERNAL_H

#include "kvt_gpu.h"

#include <cuda_runtime.h>
#include <errno.h>
#include <stdio.h>

#define KVT_GPU_ENGINE_MAGIC 0x4e454756u /* "VGEN" */

struct kvt_gpu_engine {
	uint32_t magic;
	int device;
	int sms;
	int host_ptr_ok;   /* registered host pointers are valid device pointers */
	uint32_t flags;	   /* KVT_GPU_ENGINE_* */
	uint32_t ctas_bus; /* cap for copy kernels that cross the bus */
	uint32_t ctas_dev; /* cap for device-to-device copy kernels */
	char *staging;	   /* two halves, used alternately */
	uint64_t staging_bytes;
	cudaStream_t side; /* DMA stream of the staged path */
	cudaEvent_t ev_start, ev_k[2], ev_c[2];
	struct kvt_gpu_seg *tmp; /* coalesced copy of the caller's segments */
	size_t tmp_cap;
	struct kvt_gpu_seg *runs; /* DMA list of the staged path */
	size_t runs_cap;
	void **b_dst, **b_src; /* cudaMemcpyBatchAsync arrays */
	size_t *b_len;
	size_t b_cap;
};

/* Maps a CUDA error to -errno and reports where it happened. */
int kvt_gpu_err(cudaError_t err, const char *what, const char *file, int line);

#define KVT_CU(call)                                                                               \
	do {                                                                                       \
		cudaError_t err_ = (call);                                                         \
		if (err_ != cudaSuccess) {                                                         \
			ret = kvt_gpu_err(err_, #call, __FILE__, __LINE__);                        \
			goto out;                                                                  \
		}                                                                                  \
	} while (0)

/* Makes `dev` current for a scope and restores the caller's device afterwards: the library
 * must not change the device an engine's thread works on. */
struct kvt_dev_guard {
	int prev;
	bool changed;
	explicit kvt_dev_guard(int dev) : prev(-1), changed(false)
	{
		if (dev >= 0 && cudaGetDevice(&prev) == cudaSuccess && prev != dev)
			changed = cudaSetDevice(dev) == cudaSuccess;
	}
	~kvt_dev_guard()
	{
		if (changed)
			cudaSetDevice(prev);
	}
};

static inline bool kvt_engine_ok(const struct kvt_gpu_engine *e)
{
	return e && e->magic == KVT_GPU_ENGINE_MAGIC;
}

#endif
