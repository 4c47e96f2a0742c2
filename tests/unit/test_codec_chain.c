/* SPDX-License-Identifier: MIT */
/*
 * Chain specs, ids and record framing; decoders fed truncated, corrupted and foreign records
 * (every decoder must answer -EBADMSG or a block, never read or write out of bounds: run
 * under ASan in CI).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec.h"

static void test_parse(void **state)
{
	struct kvt_chain *c, *c2;
	static const char *const bad[] = {
	    "",		 "nope",     "lz4+",	  "+lz4",	"zstd:99",	   "zstd:x",
	    "lz4+uq",	 "kivi:k=9", "kivi:zz=1", "uq:k=-1",	"raw:3",	   "kivi+rans:3",
	    "shuffle:1", "fp8+kivi", "zstd:1,2",  "kivi:k=4.5", "uq:kl=0:1:2:3:4", "uq:kl=",
	    "uq:kl=1:",	 "uq:kl=:1", "uq:vl=5",	  "uq:kl=a",	"uq:dq=-1",	   NULL};
	for (size_t i = 0; bad[i]; i++) {
		c = (struct kvt_chain *)1;
		assert_int_equal(kvt_chain_parse(bad[i], &c), -EINVAL);
		assert_null(c);
	}
	assert_int_equal(kvt_chain_parse("raw", &c), 0);
	assert_int_equal(kvt_chain_id(c), 0);
	assert_string_equal(kvt_chain_name(c), "raw");
	assert_int_equal(kvt_chain_flags(c), KVT_CODEC_LOSSLESS);
	kvt_chain_free(c);

	/* canonical names: defaults dropped, zstd's level always written, raw stages dropped */
	assert_int_equal(kvt_chain_parse("zstd", &c), 0);
	assert_int_equal(kvt_chain_parse("raw+zstd:3", &c2), 0);
	assert_string_equal(kvt_chain_name(c), "zstd:3");
	assert_string_equal(kvt_chain_name(c2), "zstd:3");
	assert_int_equal(kvt_chain_id(c), kvt_chain_id(c2));
	assert_int_not_equal(kvt_chain_id(c), 0);
	kvt_chain_free(c);
	kvt_chain_free(c2);

	assert_int_equal(kvt_chain_parse("kivi:g=32,k=4,v=4+rans", &c), 0);
	assert_string_equal(kvt_chain_name(c), "kivi+rans");
	assert_int_equal(kvt_chain_flags(c), KVT_CODEC_LOSSY | KVT_CODEC_KV);
	kvt_chain_free(c);
	assert_int_equal(kvt_chain_parse("uq:k=0.2,v=0.1,lsh=4", &c), 0);
	assert_string_equal(kvt_chain_name(c), "uq:k=0.2,v=0.1,lsh=4");
	kvt_chain_free(c);
	/* list arguments: the shortest list that gives the same slots, in the codec's order */
	assert_int_equal(kvt_chain_parse("uq:vl=-1:0,kl=0:0.5:1:1,dq=0.4", &c), 0);
	assert_string_equal(kvt_chain_name(c), "uq:dq=0.4,kl=0:0.5:1,vl=-1:0");
	assert_int_equal(kvt_chain_parse(kvt_chain_name(c), &c2), 0);
	assert_int_equal(kvt_chain_id(c), kvt_chain_id(c2));
	kvt_chain_free(c);
	kvt_chain_free(c2);
	assert_int_equal(kvt_chain_parse("uq:kl=0:0:0:0", &c), 0);
	assert_string_equal(kvt_chain_name(c), "uq");
	kvt_chain_free(c);
	assert_int_equal(kvt_chain_parse("fpx+lz4", &c), 0);
	assert_int_equal(kvt_chain_flags(c), KVT_CODEC_LOSSLESS | KVT_CODEC_KV);
	kvt_chain_free(c);
	/* the id is a pure function of the canonical name: fixed across builds */
	assert_int_equal(kvt_chain_parse("lz4", &c), 0);
	assert_int_equal(kvt_chain_id(c), 0x82720e75u);
	kvt_chain_free(c);
	kvt_chain_free(NULL);
}

static const char *const chains[] = {"raw",
				     "lz4",
				     "zstd:1",
				     "shuffle+zstd:3",
				     "shuffle+rans",
				     "fpx",
				     "fp8",
				     "kivi",
				     "kivi:rot=1,sink=2,outl=0.02+rans",
				     "uq",
				     "uq:lsh=0,sink=3",
				     "uq:qw=1",
				     "uq:dq=0.4,sink=2",
				     "uq:dq=1,qw=0,kl=0:1,vl=-1",
				     "lowrank:r=4,b=4",
				     "lsh",
				     "lowrank:r=2,b=0",
				     NULL};

static uint8_t *make_block(const struct kvt_codec_geom *g, size_t *n)
{
	*n = kvt_geom_block_bytes(g);
	uint8_t *b = malloc(*n);
	uint32_t s = 12345;
	for (size_t i = 0; i < *n / 2; i++) {
		s = s * 1103515245u + 12345u;
		/* fp16 in [-4, 4): sign, exponent 13..16, random mantissa */
		uint16_t h =
		    (uint16_t)((s >> 16 & 0x8000) | (13 + (s >> 8) % 4) << 10 | (s & 0x3ff));
		if (i % 97 == 5)
			h = b[2 * (i - 5)] | b[2 * (i - 5) + 1] << 8;
		b[2 * i] = (uint8_t)h;
		b[2 * i + 1] = (uint8_t)(h >> 8);
	}
	return b;
}

static void test_corrupt(void **state)
{
	struct kvt_codec_geom g = {2, 1, 16, 8, KVT_DTYPE_FP16, 0};
	size_t n;
	uint8_t *blk = make_block(&g, &n), *out = malloc(n);
	for (size_t i = 0; chains[i]; i++) {
		struct kvt_chain *c, *other;
		assert_int_equal(kvt_chain_parse(chains[i], &c), 0);
		assert_int_equal(kvt_chain_parse(i ? chains[i - 1] : "lz4", &other), 0);
		size_t cap = kvt_chain_max_encoded_size(c, &g);
		uint8_t *enc = malloc(cap), *cp = malloc(cap);
		ssize_t l = kvt_chain_encode(c, &g, blk, n, enc, cap);
		assert_true(l > (ssize_t)KVT_CHAIN_HDR_SIZE);
		assert_int_equal(kvt_chain_decode(c, enc, (size_t)l, out, n, NULL), (ssize_t)n);
		/* too small an output buffer, and too small an encode buffer */
		assert_int_equal(kvt_chain_decode(c, enc, (size_t)l, out, n - 1, NULL), -ENOSPC);
		assert_int_equal(kvt_chain_encode(c, &g, blk, n, enc, KVT_CHAIN_HDR_SIZE + 1) < 0,
				 1);
		l = kvt_chain_encode(c, &g, blk, n, enc, cap);
		/* another chain's record */
		assert_int_equal(kvt_chain_decode(other, enc, (size_t)l, out, n, NULL), -EBADMSG);
		/* every truncation; each copy exactly as long as the input, so ASan sees overreads
		 */
		for (size_t k = 0; k < (size_t)l; k++) {
			uint8_t *t = malloc(k ? k : 1);
			memcpy(t, enc, k);
			ssize_t r = kvt_chain_decode(c, t, k, out, n, NULL);
			if (r != -EBADMSG)
				fail_msg("%s: truncated to %zu: %zd", chains[i], k, r);
			free(t);
		}
		/* single byte changes anywhere: an error or some block, never a crash */
		for (size_t k = 0; k < (size_t)l; k++)
			for (int v = 0; v < 3; v++) {
				memcpy(cp, enc, (size_t)l);
				cp[k] = (uint8_t)(v == 0 ? cp[k] ^ 0x01 : v == 1 ? 0xff : 0x00);
				ssize_t r = kvt_chain_decode(c, cp, (size_t)l, out, n, NULL);
				assert_true(r == (ssize_t)n || r == -EBADMSG);
			}
		/* header fields */
		memcpy(cp, enc, (size_t)l);
		cp[4] ^= 1; /* chain id */
		assert_int_equal(kvt_chain_decode(c, cp, (size_t)l, out, n, NULL), -EBADMSG);
		free(enc);
		free(cp);
		kvt_chain_free(c);
		kvt_chain_free(other);
	}
	free(blk);
	free(out);
}

static void test_geometry(void **state)
{
	struct kvt_codec_geom g = {2, 1, 16, 8, KVT_DTYPE_FP16, 0}, bad = g, g2;
	struct kvt_chain *c;
	size_t n;
	uint8_t *blk = make_block(&g, &n), *enc, *out = malloc(n);
	uint32_t id, raw;
	assert_int_equal(kvt_chain_parse("uq", &c), 0);
	bad.head_dim = 15;
	assert_int_equal(kvt_chain_encode(c, &bad, blk, n, out, n), -EINVAL);
	bad = g;
	bad.dtype = 7;
	assert_int_equal(kvt_chain_max_encoded_size(c, &bad), 0);
	assert_int_equal(kvt_chain_encode(c, &g, blk, n - 2, out, n), -EINVAL);
	size_t cap = kvt_chain_max_encoded_size(c, &g);
	enc = malloc(cap);
	g.first_token = 4096;
	ssize_t l = kvt_chain_encode(c, &g, blk, n, enc, cap);
	assert_true(l > 0);
	assert_int_equal(kvt_chain_peek(enc, (size_t)l, &id, &g2, &raw), 0);
	assert_int_equal(id, kvt_chain_id(c));
	assert_int_equal(raw, n);
	assert_memory_equal(&g, &g2, sizeof(g));
	assert_int_equal(kvt_chain_peek(enc, 10, &id, &g2, &raw), -EBADMSG);
	free(enc);
	free(out);
	free(blk);
	kvt_chain_free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse),
	    cmocka_unit_test(test_corrupt),
	    cmocka_unit_test(test_geometry),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
