/* SPDX-License-Identifier: MIT */
/*
 * test_gpu_bq.c - the bq codec's CUDA kernels against the CPU reference (ctest label gpu;
 * exit 77 without a device): for real KV blocks (tests/data excerpt) and synthetic edge cases
 * (bf16, inf/NaN, constant, head_dim not a multiple of 8, one token, > 256 tokens), the GPU
 * encoder's records equal kvt_chain_encode()'s byte for byte, the GPU decoder's blocks equal
 * kvt_chain_decode()'s bit for bit, and a damaged record is flagged; also with rope=theta
 * (keys in the pre-RoPE frame, positions past 2^32).
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec.h"
#include "codec_bq.h"
#include "codec_internal.h"
#include "kvt_gpu.h"
#include "kvt_gpu_bq.h"
#include "realblk.h"

static uint64_t rs = 0x2545f4914f6cdd1dull;

static uint64_t rnd(void)
{
	rs ^= rs << 13;
	rs ^= rs >> 7;
	rs ^= rs << 17;
	return rs;
}

static void *dev(size_t n)
{
	void *p = NULL;
	assert_int_equal(kvt_gpu_dev_alloc(-1, n ? n : 16, &p), 0);
	return p;
}

static void *dev_copy(const void *h, size_t n)
{
	void *p = dev(n);
	assert_int_equal(kvt_gpu_memcpy(p, h, n), 0);
	return p;
}

/*
 * n blocks of geometry g (first_token of block i: ft[i]) through chain spec on the CPU and the
 * GPU; asserts equal records and equal decoded blocks.
 */
static void compare(const char *spec, const struct kvt_codec_geom *g, uint8_t *const *blocks,
		    const uint32_t *ft, uint32_t n)
{
	struct kvt_chain *c;
	struct kvt_bq_params p;
	struct kvt_gpu_bq *b;
	struct kvt_codec_geom gg = *g;
	size_t raw = kvt_geom_block_bytes(g);

	assert_int_equal(kvt_chain_parse(spec, &c), 0);
	assert_int_equal(kvt_bq_chain_params(c, g, &p), 0);
	assert_int_equal(kvt_gpu_bq_new(g, &p, &b), 0);
	size_t bound = kvt_gpu_bq_record_bound(b);
	assert_true(bound >= kvt_chain_max_encoded_size(c, g));
	uint8_t *cpu = malloc(bound * n), *gpu = malloc(bound * n), *dec = malloc(raw * n),
		*gdec = malloc(raw * n);
	uint32_t *clen = calloc(n, 4), *glen = calloc(n, 4), *bad = calloc(n, 4);
	void **hsrc = calloc(n, sizeof(void *)), **hrec = calloc(n, sizeof(void *)),
	     **hout = calloc(n, sizeof(void *));
	for (uint32_t i = 0; i < n; i++) {
		gg.first_token = ft[i];
		ssize_t l = kvt_chain_encode(c, &gg, blocks[i], raw, cpu + i * bound, bound);
		assert_true(l > 0);
		clen[i] = (uint32_t)l;
		assert_int_equal(
		    kvt_chain_decode(c, cpu + i * bound, (size_t)l, dec + i * raw, raw, NULL),
		    (ssize_t)raw);
		hsrc[i] = dev_copy(blocks[i], raw);
		hrec[i] = dev(bound);
		hout[i] = dev(raw);
	}
	void **dsrc = dev_copy(hsrc, n * sizeof(void *)),
	     **drec = dev_copy(hrec, n * sizeof(void *)),
	     **dout = dev_copy(hout, n * sizeof(void *));
	uint32_t *dft = dev_copy(ft, n * 4), *dlen = dev(n * 4), *dbad = dev(n * 4);
	void *scratch = dev(kvt_gpu_bq_scratch_bytes(b, n));

	/* encode on the GPU: the CPU's bytes */
	assert_int_equal(
	    kvt_gpu_bq_encode(b, (const void *const *)dsrc, dft, n, drec, dlen, scratch, NULL), 0);
	assert_int_equal(kvt_gpu_stream_sync(NULL), 0);
	assert_int_equal(kvt_gpu_memcpy(glen, dlen, n * 4), 0);
	for (uint32_t i = 0; i < n; i++) {
		if (glen[i] != clen[i])
			fail_msg("%s block %u: GPU record %u bytes, CPU %u", spec, i, glen[i],
				 clen[i]);
		assert_int_equal(kvt_gpu_memcpy(gpu + i * bound, hrec[i], glen[i]), 0);
		for (uint32_t k = 0; k < clen[i]; k++)
			if (gpu[i * bound + k] != cpu[i * bound + k])
				fail_msg("%s block %u: record byte %u differs (GPU %02x, CPU %02x)",
					 spec, i, k, gpu[i * bound + k], cpu[i * bound + k]);
	}
	/* decode the CPU's records on the GPU: the CPU's values */
	for (uint32_t i = 0; i < n; i++)
		assert_int_equal(kvt_gpu_memcpy(hrec[i], cpu + i * bound, clen[i]), 0);
	uint32_t *dclen = dev_copy(clen, n * 4);
	assert_int_equal(
	    kvt_gpu_bq_decode(b, (const void *const *)drec, dclen, n, dout, dbad, NULL), 0);
	assert_int_equal(kvt_gpu_stream_sync(NULL), 0);
	assert_int_equal(kvt_gpu_memcpy(bad, dbad, n * 4), 0);
	for (uint32_t i = 0; i < n; i++) {
		assert_int_equal(bad[i], 0);
		assert_int_equal(kvt_gpu_memcpy(gdec + i * raw, hout[i], raw), 0);
		for (size_t k = 0; k < raw / 2; k++)
			if (ld16(gdec + i * raw + 2 * k) != ld16(dec + i * raw + 2 * k))
				fail_msg("%s block %u: element %zu GPU %04x, CPU %04x", spec, i, k,
					 ld16(gdec + i * raw + 2 * k), ld16(dec + i * raw + 2 * k));
	}
	/* a damaged record (its last pad byte) is flagged, the others are not */
	uint8_t one = 1;
	assert_int_equal(kvt_gpu_memcpy((uint8_t *)hrec[0] + clen[0] - 1, &one, 1), 0);
	assert_int_equal(
	    kvt_gpu_bq_decode(b, (const void *const *)drec, dclen, n, dout, dbad, NULL), 0);
	assert_int_equal(kvt_gpu_stream_sync(NULL), 0);
	assert_int_equal(kvt_gpu_memcpy(bad, dbad, n * 4), 0);
	assert_int_equal(bad[0], 1);
	for (uint32_t i = 1; i < n; i++)
		assert_int_equal(bad[i], 0);

	for (uint32_t i = 0; i < n; i++) {
		kvt_gpu_dev_free(hsrc[i]);
		kvt_gpu_dev_free(hrec[i]);
		kvt_gpu_dev_free(hout[i]);
	}
	kvt_gpu_dev_free(dsrc);
	kvt_gpu_dev_free(drec);
	kvt_gpu_dev_free(dout);
	kvt_gpu_dev_free(dft);
	kvt_gpu_dev_free(dlen);
	kvt_gpu_dev_free(dclen);
	kvt_gpu_dev_free(dbad);
	kvt_gpu_dev_free(scratch);
	free(cpu);
	free(gpu);
	free(dec);
	free(gdec);
	free(clen);
	free(glen);
	free(bad);
	free(hsrc);
	free(hrec);
	free(hout);
	kvt_gpu_bq_free(b);
	kvt_chain_free(c);
}

static const char *const chains[] = {
    "bq",
    "bq:k=0.02,v=0.02",
    "bq:k=0.5,v=0.3,outl=0",
    "bq:sink=100,dup=2",
    "bq:dup=0,outl=1",
    "bq:k=0.1,v=0.05,kl=-0.5:0.5,vl=0.3:-0.3",
    "bq:rope=10000",
    "bq:k=0.04,v=0.02,dup=2,rope=500000",
};

static void test_real(void **state)
{
	(void)state;
	uint8_t *blocks[10];
	uint32_t ft[10];
	struct blk k = {{0}, NULL, 0};
	for (uint32_t b = 0; b < 10; b++) {
		k = real_block(b);
		if (!k.raw)
			fail_msg("tests/data/sympy_head640.kvd missing (KVT_TEST_DATA)");
		blocks[b] = (uint8_t *)k.raw;
		ft[b] = b * k.g.block_tokens;
	}
	for (size_t i = 0; i < sizeof(chains) / sizeof(chains[0]); i++)
		compare(chains[i], &k.g, blocks, ft, 10);
	for (uint32_t b = 0; b < 10; b++)
		free(blocks[b]);
}

static void test_synthetic(void **state)
{
	(void)state;
	static const struct kvt_codec_geom geoms[] = {
	    {2, 2, 128, 64, KVT_DTYPE_BF16, 0},
	    {1, 1, 6, 3, KVT_DTYPE_FP16, 0},
	    {1, 3, 10, 1, KVT_DTYPE_FP16, 0},
	    {1, 1, 64, 300, KVT_DTYPE_FP16, 0},
	};
	for (size_t gi = 0; gi < sizeof(geoms) / sizeof(geoms[0]); gi++) {
		const struct kvt_codec_geom *g = &geoms[gi];
		size_t raw = kvt_geom_block_bytes(g);
		uint8_t *blocks[4];
		uint32_t ft[4] = {0, 5, 64, 4294967000u}; /* the last: rope past 2^32 */
		int bf = g->dtype == KVT_DTYPE_BF16;
		for (int k = 0; k < 4; k++) {
			blocks[k] = malloc(raw);
			for (size_t i = 0; i < raw / 2; i++) {
				float v = k == 0   ? 0.0f
					  : k == 1 ? 2.5f
						   : (float)((int)(rnd() % 2001) - 1000) / 300.0f *
							 (float)(1 + i % 5);
				st16(blocks[k] + 2 * i, bf ? kvt_f2bf(v) : kvt_f2h(v));
			}
			if (k == 3) { /* inf, NaN, and (bf16) a value past 2^56 */
				st16(blocks[k], bf ? 0x7f80 : 0x7c00);
				st16(blocks[k] + raw - 2, bf ? 0xffc1 : 0xfe01);
				if (bf && raw > 8)
					st16(blocks[k] + 6, 0x5f90);
			}
		}
		compare("bq", g, blocks, ft, 4);
		compare("bq:sink=70,k=0.01,v=0.3", g, blocks, ft, 4);
		compare("bq:rope=10000", g, blocks, ft, 4);
		for (int k = 0; k < 4; k++)
			free(blocks[k]);
	}
}

int main(void)
{
	if (!kvt_gpu_available()) {
		printf("# no GPU: skipped\n");
		return 77;
	}
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_real),
	    cmocka_unit_test(test_synthetic),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
