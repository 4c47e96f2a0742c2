/* SPDX-License-Identifier: MIT */
/*
 * gpu_check.h - the GPU benches' checks: a CUDA call (CK) or a kvtier call (OK, -errno on
 * failure) that fails ends the bench with the call, its place and the error.
 */
#ifndef KVT_BENCH_GPU_CHECK_H
#define KVT_BENCH_GPU_CHECK_H

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK(x)                                                                                      \
	do {                                                                                       \
		cudaError_t e_ = (x);                                                              \
		if (e_ != cudaSuccess) {                                                           \
			fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x,                  \
				cudaGetErrorString(e_));                                           \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)
#define OK(x)                                                                                      \
	do {                                                                                       \
		int r_ = (int)(x);                                                                 \
		if (r_ < 0) {                                                                      \
			fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, strerror(-r_));  \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)

#endif
