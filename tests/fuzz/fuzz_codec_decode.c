/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for one codec chain's decoder (the chain is KVT_FUZZ_CHAIN, one binary per
 * decoder; tests/fuzz/codecs.cmake).  Input = an encoded record exactly as a tier reads it.
 * Invariants: decoding never reads past the input nor writes past the output (ASan), answers
 * a block or -EBADMSG/-ENOSPC (-ENOKEY: a record of another dictionary); a block it accepts
 * encodes again, and that record decodes to the same block for lossless chains (and decodes
 * at all for lossy ones).  A chain that needs a dictionary gets one calibrated on a fixed
 * pseudo-random block of geometry DICT_GEOM: records of other geometries are refused.
 *
 * Linked with replay_main.c it is the ctest driver that replays the committed corpus
 * tests/fuzz/corpus/codec_TAG/; -DKVT_FUZZ_MAKE_SEEDS builds the seed writer below.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

#ifndef KVT_FUZZ_CHAIN
#error "KVT_FUZZ_CHAIN must name the chain"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define OUT_CAP (256u << 10) /* blocks larger than this are refused with -ENOSPC */

/* n pseudo-random fp16 values of moderate range, some rows repeated (row length row) */
static void fill_block(uint16_t *blk, size_t n, uint32_t row, uint32_t *s)
{
	for (size_t i = 0; i < n; i++) {
		*s = *s * 1103515245u + 12345u;
		blk[i] =
		    (uint16_t)((*s >> 16 & 0x8000) | (12 + (*s >> 9) % 5) << 10 | (*s & 0x3ff));
		if (i % 5 == 3 && i >= row) /* some repeated rows */
			blk[i] = blk[i - row];
	}
}

static const struct kvt_codec_geom DICT_GEOM = {2, 1, 16, 8, KVT_DTYPE_FP16, 0};

static struct kvt_chain *chain(void)
{
	static struct kvt_chain *c;
	static struct kvt_dict *d;
	if (c)
		return c;
	if (kvt_chain_parse(KVT_FUZZ_CHAIN, &c))
		abort();
	if (kvt_chain_flags(c) & KVT_CODEC_DICT) {
		struct kvt_dict_trainer *t;
		uint16_t blk[2 * 2 * 16 * 8];
		uint32_t s = 99;
		void *buf;
		size_t len;
		fill_block(blk, sizeof(blk) / 2, 16, &s);
		if (kvt_dict_trainer_new(&DICT_GEOM, 10000, &t) ||
		    kvt_dict_trainer_add(t, &DICT_GEOM, blk, sizeof(blk)) ||
		    kvt_dict_trainer_finish(t, &buf, &len) || kvt_dict_parse(buf, len, &d) ||
		    kvt_chain_set_dict(c, d))
			abort();
		kvt_dict_trainer_free(t);
		free(buf);
	}
	return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kvt_chain *c = chain();
	struct kvt_codec_geom g;
	uint8_t *in = malloc(size ? size : 1), *out = malloc(OUT_CAP);
	if (!in || !out)
		abort();
	memcpy(in, data, size); /* exactly as long as the input: ASan sees any overread */
	ssize_t r = kvt_chain_decode(c, in, size, out, OUT_CAP, &g);
	if (r >= 0) {
		size_t cap = kvt_chain_max_encoded_size(c, &g);
		uint8_t *enc = malloc(cap), *back = malloc((size_t)r);
		if (!enc || !back)
			abort();
		ssize_t l = kvt_chain_encode(c, &g, out, (size_t)r, enc, cap);
		if (l < 0)
			abort(); /* a decoded block must encode again */
		if (kvt_chain_decode(c, enc, (size_t)l, back, (size_t)r, NULL) != r)
			abort();
		if ((kvt_chain_flags(c) & KVT_CODEC_LOSSLESS) && memcmp(out, back, (size_t)r))
			abort();
		free(enc);
		free(back);
	} else if (r != -EBADMSG && r != -ENOSPC && r != -ENOMEM && r != -ENOKEY) {
		abort();
	}
	free(in);
	free(out);
	return 0;
}

#ifdef KVT_FUZZ_MAKE_SEEDS
/*
 * Writes valid records of a few small random blocks, and a truncated and a bit-flipped copy
 * of each, into DIR: how tests/fuzz/corpus/codec_TAG/ was made.  Build by hand, e.g.
 *   cc -DKVT_FUZZ_MAKE_SEEDS -DKVT_FUZZ_CHAIN='"uq"' -Icodecs tests/fuzz/fuzz_codec_decode.c \
 *      build/codecs/libkvt_codecs.a -llz4 -lzstd -lm -lpthread -o seeds && ./seeds DIR
 */
int main(int argc, char **argv)
{
	static const struct kvt_codec_geom geoms[] = {
	    {2, 1, 16, 8, KVT_DTYPE_FP16, 5}, /* DICT_GEOM */
	    {1, 1, 8, 4, KVT_DTYPE_FP16, 0},	{2, 1, 16, 8, KVT_DTYPE_FP16, 0},
	    {1, 2, 32, 16, KVT_DTYPE_FP16, 64}, {1, 1, 16, 8, KVT_DTYPE_BF16, 3},
	};
	uint32_t s = 1;
	if (argc != 2)
		return 2;
	for (size_t k = 0; k < sizeof(geoms) / sizeof(geoms[0]); k++) {
		const struct kvt_codec_geom *g = &geoms[k];
		size_t n = kvt_geom_block_bytes(g), cap = kvt_chain_max_encoded_size(chain(), g);
		uint16_t *blk = malloc(n);
		uint8_t *enc = malloc(cap);
		fill_block(blk, n / 2, g->head_dim, &s);
		ssize_t l = kvt_chain_encode(chain(), g, blk, n, enc, cap);
		if (l == -EINVAL && (kvt_chain_flags(chain()) & KVT_CODEC_DICT)) {
			free(blk); /* not the dictionary's geometry */
			free(enc);
			continue;
		}
		if (l < 0)
			return 1;
		for (int v = 0; v < 3; v++) {
			char p[4096];
			size_t len = v == 1 ? (size_t)l / 2 : (size_t)l;
			if (v == 2)
				enc[l * 2 / 3] ^= 0x10;
			snprintf(p, sizeof(p), "%s/%s_%zu", argv[1],
				 v == 0	  ? "valid"
				 : v == 1 ? "truncated"
					  : "flipped",
				 k);
			FILE *f = fopen(p, "wb");
			if (!f || fwrite(enc, 1, len, f) != len)
				return 1;
			fclose(f);
		}
		free(blk);
		free(enc);
	}
	return 0;
}
#endif
