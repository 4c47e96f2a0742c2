/* SPDX-License-Identifier: MIT */
/*
 * gpu_test_geom.h - the block geometry gpu_hostcodec_test.c and gpu_pageorder_test.c share
 * (on a GPU and, as the *_emu tests, with gpu/ emulated): 4 layers, 8 KV heads, head_dim 128,
 * 16-token pages, and enough blocks for three rounds of the device API's host path.
 */
#ifndef KVT_GPU_TEST_GEOM_H
#define KVT_GPU_TEST_GEOM_H

enum {
	L = 4,
	H = 8,
	D = 128,
	T = 16,
	NB = 72 /* > 2 rounds of HOST_CHUNK: the third reuses the first one's slots */
};

#endif
