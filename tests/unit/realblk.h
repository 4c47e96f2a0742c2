/* SPDX-License-Identifier: MIT */
/*
 * realblk.h - blocks of real KV for the codec tests: the shared dump's 640-token excerpt in
 * $KVT_TEST_DATA (tests/data/sympy_head640.kvd), one block as a codec reads it.
 */
#ifndef KVT_TEST_REALBLK_H
#define KVT_TEST_REALBLK_H

#include <stdio.h>
#include <stdlib.h>

#include "codec.h"
#include "kvd.h"

struct blk {
	struct kvt_codec_geom g;
	uint16_t *raw;
	size_t n; /* bytes */
};

/* 64-token block b of the excerpt, page-first, at its position; raw NULL if the excerpt is
 * missing. */
static inline struct blk real_block(uint32_t b)
{
	struct blk k = {{0}, NULL, 0};
	const char *dir = getenv("KVT_TEST_DATA");
	char path[4096];
	struct kvd d;
	snprintf(path, sizeof(path), "%s/sympy_head640.kvd", dir ? dir : "tests/data");
	if (kvd_load(path, &d))
		return k;
	uint32_t T = 64, t0 = b * T;
	k.g = (struct kvt_codec_geom){d.n_layers, d.n_kv_heads, d.head_dim, T, KVT_DTYPE_FP16, t0};
	k.n = kvt_geom_block_bytes(&k.g);
	k.raw = malloc(k.n);
	if (k.raw)
		kvd_block_io(&d, d.k, d.v, t0, T, k.raw, 1);
	kvd_free(&d);
	return k;
}

#endif
