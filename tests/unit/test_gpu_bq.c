/* SPDX-License-Identifier: MIT */
/*
 * test_gpu_bq.c - the bq codec's CUDA kernels against the CPU reference (ctest label gpu;
 * exit 77 without a device): for real KV blocks (tests/data excerpt) and synthetic edge cases
 * (bf16, inf/NaN, constant, head_dim not a multiple of 8, one token, > 256 tokens), the GPU
 * encoder's records equal kvt_chain_encode()'s byte for byte, the GPU decoder's blocks equal
 * kvt_chain_decode()'s bit for bit, and a damaged record is flagged; also with rope=theta
 * (keys in the pre-RoPE frame, positions past 2^32).  Every decoder is checked: the warp
 * decoder (kvt_gpu_bq_decode), the one straight into engine pages (kvt_gpu_bq_decode_paged) and
 * the baseline (kvt_gpu_bq_decode_cta); records with random bytes changed are flagged exactly
 * when the CPU refuses them, and otherwise decode to the CPU's values.  Geometries: odd head
 * dims, head_dim 1024, thousands of tokens, and batches of more slabs than the decoder's grid
 * has warps.
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

enum { DEC_WARP, DEC_CTA, DEC_PAGED1, DEC_PAGEDN, DEC_N };
static const char *const dec_names[DEC_N] = {"warp", "cta", "paged ppb=1", "paged ppb>1"};

/* Pages a block for the paged decoder variant v (T must be a multiple of it). */
static uint32_t dec_ppb(int v, uint32_t T)
{
	if (v == DEC_PAGED1)
		return 1;
	return T % 4 == 0 ? 4 : T % 3 == 0 ? 3 : T % 2 == 0 ? 2 : T;
}

/*
 * Decodes the n device records drec (lengths dlen) on the GPU with variant v into host blocks
 * (gdec, n x raw, contiguous layout) and the flags bad.
 */
static void gpu_decode(int v, struct kvt_gpu_bq *b, const struct kvt_codec_geom *g, void **drec,
		       uint32_t *dlen, uint32_t n, uint8_t *gdec, uint32_t *bad)
{
	size_t raw = kvt_geom_block_bytes(g);
	uint32_t *dbad = dev(n * 4);
	if (v == DEC_WARP || v == DEC_CTA) {
		void **hout = calloc(n, sizeof(void *));
		for (uint32_t i = 0; i < n; i++) {
			hout[i] = dev(raw);
			/* poison: every element must be written */
			assert_int_equal(kvt_gpu_memset(hout[i], 0xa5, raw), 0);
		}
		void **dout = dev_copy(hout, n * sizeof(void *));
		int rc = v == DEC_WARP ? kvt_gpu_bq_decode(b, (const void *const *)drec, dlen, n,
							   dout, dbad, NULL)
				       : kvt_gpu_bq_decode_cta(b, (const void *const *)drec, dlen,
							       n, dout, dbad, NULL);
		assert_int_equal(rc, 0);
		assert_int_equal(kvt_gpu_stream_sync(NULL), 0);
		for (uint32_t i = 0; i < n; i++) {
			assert_int_equal(kvt_gpu_memcpy(gdec + i * raw, hout[i], raw), 0);
			kvt_gpu_dev_free(hout[i]);
		}
		kvt_gpu_dev_free(dout);
		free(hout);
	} else {
		const uint32_t L = g->n_layers, H = g->n_kv_heads, D = g->head_dim,
			       T = g->block_tokens, ppb = dec_ppb(v, T), P = T / ppb;
		const size_t np = (size_t)n * L * 2 * ppb, pb = (size_t)P * H * D * 2;
		uint8_t *pages = dev(np * pb), *hp = malloc(np * pb);
		void **hptr = calloc(np, sizeof(void *));
		for (size_t j = 0; j < np; j++) /* scattered: the pages in reverse order */
			hptr[j] = pages + (np - 1 - j) * pb;
		assert_int_equal(kvt_gpu_memset(pages, 0xa5, np * pb), 0);
		void **dp = dev_copy(hptr, np * sizeof(void *));
		assert_int_equal(kvt_gpu_bq_decode_paged(b, (const void *const *)drec, dlen, n, dp,
							 ppb, dbad, NULL),
				 0);
		assert_int_equal(kvt_gpu_stream_sync(NULL), 0);
		assert_int_equal(kvt_gpu_memcpy(hp, pages, np * pb), 0);
		for (uint32_t i = 0; i < n; i++)
			for (uint32_t lk = 0; lk < 2 * L; lk++)
				for (uint32_t h = 0; h < H; h++)
					for (uint32_t t = 0; t < T; t++) {
						size_t j = ((size_t)i * 2 * L + lk) * ppb + t / P;
						const uint8_t *from =
						    hp + ((uint8_t *)hptr[j] - pages) +
						    ((size_t)(t % P) * H + h) * D * 2;
						memcpy(gdec + i * raw +
							   (((size_t)lk * H + h) * T + t) * D * 2,
						       from, (size_t)D * 2);
					}
		kvt_gpu_dev_free(pages);
		kvt_gpu_dev_free(dp);
		free(hp);
		free(hptr);
	}
	assert_int_equal(kvt_gpu_memcpy(bad, dbad, n * 4), 0);
	kvt_gpu_dev_free(dbad);
}

/*
 * The n records rec (bound apart, lengths len) decoded by every GPU decoder: a block is
 * flagged exactly when cpu_ok[i] is 0, and otherwise equals dec (the CPU's blocks).
 */
static void check_decoders(const char *spec, const char *what, struct kvt_gpu_bq *b,
			   const struct kvt_codec_geom *g, const uint8_t *rec, size_t bound,
			   const uint32_t *len, uint32_t n, const int *cpu_ok, const uint8_t *dec)
{
	size_t raw = kvt_geom_block_bytes(g);
	void **hrec = calloc(n, sizeof(void *));
	for (uint32_t i = 0; i < n; i++)
		hrec[i] = dev_copy(rec + i * bound, len[i]);
	void **drec = dev_copy(hrec, n * sizeof(void *));
	uint32_t *dlen = dev_copy(len, n * 4), *bad = calloc(n, 4);
	uint8_t *gdec = malloc(raw * n);
	for (int v = 0; v < DEC_N; v++) {
		gpu_decode(v, b, g, drec, dlen, n, gdec, bad);
		for (uint32_t i = 0; i < n; i++) {
			if (bad[i] != (uint32_t)!cpu_ok[i])
				fail_msg("%s %s, %s decoder, block %u: GPU flag %u, CPU %s", spec,
					 what, dec_names[v], i, bad[i],
					 cpu_ok[i] ? "decodes it" : "refuses it");
			if (!cpu_ok[i])
				continue;
			for (size_t k = 0; k < raw / 2; k++)
				if (ld16(gdec + i * raw + 2 * k) != ld16(dec + i * raw + 2 * k))
					fail_msg("%s %s, %s decoder, block %u: element %zu GPU "
						 "%04x, CPU %04x",
						 spec, what, dec_names[v], i, k,
						 ld16(gdec + i * raw + 2 * k),
						 ld16(dec + i * raw + 2 * k));
		}
	}
	for (uint32_t i = 0; i < n; i++)
		kvt_gpu_dev_free(hrec[i]);
	kvt_gpu_dev_free(drec);
	kvt_gpu_dev_free(dlen);
	free(hrec);
	free(bad);
	free(gdec);
}

/* Damaged records the CPU refused and kept, over a test (each test asserts that it saw both
 * kinds: else the damage proves little) */
static unsigned damaged_refused, damaged_kept;

/*
 * Rounds of damaged records: in each, every block's CPU record gets 1 to 3 random bytes of its
 * stage changed (or its length cut); the GPU decoders must flag exactly the records the CPU
 * refuses and decode the others to the CPU's values.
 */
static void check_damaged(const char *spec, struct kvt_chain *c, struct kvt_gpu_bq *b,
			  const struct kvt_codec_geom *g, const uint8_t *cpu, size_t bound,
			  const uint32_t *clen, uint32_t n, int rounds)
{
	size_t raw = kvt_geom_block_bytes(g);
	uint8_t *rec = malloc(bound * n), *dec = malloc(raw * n);
	uint32_t *len = calloc(n, 4);
	int *ok = calloc(n, sizeof(int));
	for (int r = 0; r < rounds; r++) {
		for (uint32_t i = 0; i < n; i++) {
			memcpy(rec + i * bound, cpu + i * bound, clen[i]);
			len[i] = clen[i];
			uint8_t *p = rec + i * bound;
			if (rnd() % 16 == 0) {
				len[i] = KVT_CHAIN_HDR_SIZE + (uint32_t)(rnd() % (clen[i] - 32));
				st32(p + 12, len[i] - KVT_CHAIN_HDR_SIZE); /* a consistent header */
			} else {
				int nb = 1 + (int)(rnd() % 3);
				for (int k = 0; k < nb; k++) {
					/* mostly the head and the slab headers, where the checks
					 * are */
					uint32_t span = rnd() % 2 ? clen[i] - KVT_CHAIN_HDR_SIZE
								  : (uint32_t)(clen[i] / 8 + 1);
					uint32_t at =
					    KVT_CHAIN_HDR_SIZE + (uint32_t)(rnd() % span) %
								     (clen[i] - KVT_CHAIN_HDR_SIZE);
					p[at] ^= (uint8_t)(1 + rnd() % 255);
				}
			}
			ssize_t l = kvt_chain_decode(c, p, len[i], dec + i * raw, raw, NULL);
			ok[i] = l == (ssize_t)raw;
			if (!ok[i])
				assert_int_equal(l, -EBADMSG);
			damaged_refused += !ok[i];
			damaged_kept += ok[i];
		}
		check_decoders(spec, "damaged", b, g, rec, bound, len, n, ok, dec);
	}
	free(rec);
	free(dec);
	free(len);
	free(ok);
}

/*
 * n blocks of geometry g (first_token of block i: ft[i]) through chain spec on the CPU and the
 * GPU; asserts equal records and equal decoded blocks.
 */
static void compare(const char *spec, const struct kvt_codec_geom *g, uint8_t *const *blocks,
		    const uint32_t *ft, uint32_t n, int damage_rounds)
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
	uint8_t *cpu = malloc(bound * n), *gpu = malloc(bound * n), *dec = malloc(raw * n);
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
	/* decode the CPU's records on the GPU, every decoder: the CPU's values */
	int *cok = malloc(n * sizeof(int));
	for (uint32_t i = 0; i < n; i++)
		cok[i] = 1;
	check_decoders(spec, "as encoded", b, g, cpu, bound, clen, n, cok, dec);
	free(cok);
	/* a damaged record (its last pad byte) is flagged, the others are not */
	for (uint32_t i = 0; i < n; i++)
		assert_int_equal(kvt_gpu_memcpy(hrec[i], cpu + i * bound, clen[i]), 0);
	uint32_t *dclen = dev_copy(clen, n * 4);
	uint8_t one = 1;
	assert_int_equal(kvt_gpu_memcpy((uint8_t *)hrec[0] + clen[0] - 1, &one, 1), 0);
	assert_int_equal(
	    kvt_gpu_bq_decode(b, (const void *const *)drec, dclen, n, dout, dbad, NULL), 0);
	assert_int_equal(kvt_gpu_stream_sync(NULL), 0);
	assert_int_equal(kvt_gpu_memcpy(bad, dbad, n * 4), 0);
	assert_int_equal(bad[0], 1);
	for (uint32_t i = 1; i < n; i++)
		assert_int_equal(bad[i], 0);
	/* random damage: flagged exactly when the CPU refuses */
	if (damage_rounds)
		check_damaged(spec, c, b, g, cpu, bound, clen, n, damage_rounds);

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
	damaged_refused = damaged_kept = 0;
	for (size_t i = 0; i < sizeof(chains) / sizeof(chains[0]); i++)
		compare(chains[i], &k.g, blocks, ft, 10, 6);
	assert_true(damaged_refused > 0 && damaged_kept > 0);
	for (uint32_t b = 0; b < 10; b++)
		free(blocks[b]);
}

/* n blocks of g: 0 all zero, 1 constant, then random values, the last with inf, NaN and
 * (bf16) a value past 2^56. */
static uint8_t **synth_blocks(const struct kvt_codec_geom *g, uint32_t n)
{
	size_t raw = kvt_geom_block_bytes(g);
	uint8_t **blocks = calloc(n, sizeof(uint8_t *));
	int bf = g->dtype == KVT_DTYPE_BF16;
	for (uint32_t k = 0; k < n; k++) {
		blocks[k] = malloc(raw);
		for (size_t i = 0; i < raw / 2; i++) {
			float v = k == 0   ? 0.0f
				  : k == 1 ? 2.5f
					   : (float)((int)(rnd() % 2001) - 1000) / 300.0f *
						 (float)(1 + i % 5);
			st16(blocks[k] + 2 * i, bf ? kvt_f2bf(v) : kvt_f2h(v));
		}
		if (k == n - 1 && k > 1) { /* inf, NaN, and (bf16) a value past 2^56 */
			st16(blocks[k], bf ? 0x7f80 : 0x7c00);
			st16(blocks[k] + raw - 2, bf ? 0xffc1 : 0xfe01);
			if (bf && raw > 8)
				st16(blocks[k] + 6, 0x5f90);
		}
	}
	return blocks;
}

static void free_blocks(uint8_t **blocks, uint32_t n)
{
	for (uint32_t k = 0; k < n; k++)
		free(blocks[k]);
	free(blocks);
}

static void test_synthetic(void **state)
{
	(void)state;
	static const struct kvt_codec_geom geoms[] = {
	    {2, 2, 128, 64, KVT_DTYPE_BF16, 0},	 {1, 1, 6, 3, KVT_DTYPE_FP16, 0},
	    {1, 3, 10, 1, KVT_DTYPE_FP16, 0},	 {1, 1, 64, 300, KVT_DTYPE_FP16, 0},
	    {1, 1, 96, 33, KVT_DTYPE_FP16, 0},	 {2, 1, 6, 37, KVT_DTYPE_BF16, 0},
	    {1, 1, 1024, 24, KVT_DTYPE_BF16, 0}, {1, 1, 4, 4096, KVT_DTYPE_FP16, 0},
	};
	damaged_refused = damaged_kept = 0;
	for (size_t gi = 0; gi < sizeof(geoms) / sizeof(geoms[0]); gi++) {
		const struct kvt_codec_geom *g = &geoms[gi];
		uint32_t ft[4] = {0, 5, 64, 4294967000u}; /* the last: rope past 2^32 */
		uint8_t **blocks = synth_blocks(g, 4);
		compare("bq", g, blocks, ft, 4, 8);
		compare("bq:sink=70,k=0.01,v=0.3", g, blocks, ft, 4, 0);
		compare("bq:rope=10000", g, blocks, ft, 4, 8);
		compare("bq:k=0.2,v=0.1,dup=4,outl=2,rope=500000", g, blocks, ft, 4, 4);
		free_blocks(blocks, 4);
	}
	assert_true(damaged_refused > 0 && damaged_kept > 0);
}

/* More slabs in one launch than the decoder's grid has warps (65536 CTAs of 4): the warps loop
 * over the rest. */
static void test_many(void **state)
{
	(void)state;
	const struct kvt_codec_geom g = {64, 64, 2, 1, KVT_DTYPE_FP16, 0};
	const uint32_t n = 40; /* 40 x 8192 slabs */
	uint32_t ft[40];
	uint8_t **blocks = synth_blocks(&g, n);
	for (uint32_t i = 0; i < n; i++)
		ft[i] = i ? 100 + 7 * i : 0;
	compare("bq:dup=2", &g, blocks, ft, n, 0);
	compare("bq:rope=10000", &g, blocks, ft, n, 0);
	free_blocks(blocks, n);
}

/* The largest slabs the kernels take (T x D = 24576 elements: 4096 tokens, the codecs' most, of
 * head_dim 6, whose encoder stages the most shared memory) are coded like any other, bit for
 * bit the CPU's; one more channel pair is refused when the plan is made, not at the launch. */
static void test_refused(void **state)
{
	(void)state;
	struct kvt_codec_geom ok = {1, 1, 6, 4096, KVT_DTYPE_FP16, 0}, g = ok;
	struct kvt_chain *c;
	struct kvt_bq_params p;
	struct kvt_gpu_bq *b = NULL;
	uint32_t ft[2] = {0, 4096};
	uint8_t **blocks = synth_blocks(&ok, 2);

	compare("bq", &ok, blocks, ft, 2, 0);
	free_blocks(blocks, 2);
	g.head_dim = 8;
	assert_int_equal(kvt_chain_parse("bq", &c), 0);
	assert_int_equal(kvt_bq_chain_params(c, &g, &p), 0);
	assert_int_equal(kvt_gpu_bq_new(&g, &p, &b), -EINVAL);
	assert_null(b);
	kvt_chain_free(c);
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
	    cmocka_unit_test(test_many),
	    cmocka_unit_test(test_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
