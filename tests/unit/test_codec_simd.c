/* SPDX-License-Identifier: MIT */
/*
 * SIMD paths equal the scalar ones (fp16 <-> float conversions, AVX2/F16C), codecs give the
 * same bytes either way, and the rANS coder round-trips random streams with several tables.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec.h"
#include "codec_internal.h"
#include "rans.h"

static uint64_t rs = 88172645463325252ull;

static uint64_t rnd(void)
{
	rs ^= rs << 13;
	rs ^= rs >> 7;
	rs ^= rs << 17;
	return rs;
}

static void test_f16_load(void **state)
{
	if (!kvt_simd_active())
		skip();
	uint8_t *src = malloc(65536 * 2 + 2);
	float *a = malloc((65536 + 1) * sizeof(float)), *b = malloc((65536 + 1) * sizeof(float));
	for (uint32_t i = 0; i <= 65536; i++)
		st16(src + 2 * i, (uint16_t)(i == 65536 ? 0x3c00 : i)); /* odd length: tail path */
	kvt_load_f32(a, src, 65537, KVT_DTYPE_FP16);
	kvt_simd_force_scalar(1);
	kvt_load_f32(b, src, 65537, KVT_DTYPE_FP16);
	kvt_simd_force_scalar(0);
	assert_memory_equal(a, b, 65537 * sizeof(float));
	free(src);
	free(a);
	free(b);
}

static void test_f16_store(void **state)
{
	if (!kvt_simd_active())
		skip();
	size_t n = 1 << 20;
	float *x = malloc(n * sizeof(float));
	uint8_t *a = malloc(2 * n), *b = malloc(2 * n);
	static const float special[] = {0.0f,
					-0.0f,
					65504.0f,
					65519.99f,
					65520.0f,
					1e9f,
					-1e9f,
					6.1035156e-05f,
					5.9604645e-08f,
					2.9802322e-08f,
					2.98023259e-08f,
					1.0f + 0x1p-11f,
					1.0f + 0x1p-11f + 0x1p-23f,
					INFINITY,
					-INFINITY};
	for (size_t i = 0; i < n; i++) {
		uint32_t u = (uint32_t)rnd();
		/* mostly the fp16 range, exponents 100..150, some anything (NaNs excluded) */
		if (i % 4)
			u = (u & 0x807fffffu) | (uint32_t)(100 + rnd() % 50) << 23;
		memcpy(&x[i], &u, 4);
		if (isnan(x[i]))
			x[i] = 1.5f;
	}
	memcpy(x, special, sizeof(special));
	kvt_store_f32(a, x, n, KVT_DTYPE_FP16);
	kvt_simd_force_scalar(1);
	kvt_store_f32(b, x, n, KVT_DTYPE_FP16);
	kvt_simd_force_scalar(0);
	assert_memory_equal(a, b, 2 * n);
	free(x);
	free(a);
	free(b);
}

/* A lossy codec's output does not depend on the conversion path. */
static void test_codec_same_bytes(void **state)
{
	if (!kvt_simd_active())
		skip();
	struct kvt_codec_geom g = {2, 2, 64, 32, KVT_DTYPE_FP16, 0};
	size_t n = kvt_geom_block_bytes(&g);
	uint8_t *blk = malloc(n);
	for (size_t i = 0; i < n / 2; i++)
		st16(blk + 2 * i, kvt_f2h((float)((int)(rnd() % 2001) - 1000) / 250.0f));
	static const char *const specs[] = {
	    "uq",  "uq:dq=0.4,kl=0:1",	  "kivi", "fp8", "lowrank:r=4,b=4",
	    "lsh", "uq:kb=1,cx=1,dq=0.4", NULL};
	/* kb: a dictionary calibrated on the block itself (the basis transform has an AVX2
	 * path) */
	struct kvt_dict_trainer *t;
	struct kvt_dict *dict;
	void *dbuf;
	size_t dlen;
	assert_int_equal(kvt_dict_trainer_new(&g, 10000, &t), 0);
	assert_int_equal(kvt_dict_trainer_add(t, &g, blk, n), 0);
	assert_int_equal(kvt_dict_trainer_finish(t, &dbuf, &dlen), 0);
	kvt_dict_trainer_free(t);
	assert_int_equal(kvt_dict_parse(dbuf, dlen, &dict), 0);
	free(dbuf);
	for (size_t k = 0; specs[k]; k++) {
		struct kvt_chain *c;
		assert_int_equal(kvt_chain_parse(specs[k], &c), 0);
		if (kvt_chain_flags(c) & KVT_CODEC_DICT)
			assert_int_equal(kvt_chain_set_dict(c, dict), 0);
		size_t cap = kvt_chain_max_encoded_size(c, &g);
		uint8_t *e1 = malloc(cap), *e2 = malloc(cap), *d1 = malloc(n), *d2 = malloc(n);
		ssize_t l1 = kvt_chain_encode(c, &g, blk, n, e1, cap);
		assert_true(l1 > 0);
		assert_int_equal(kvt_chain_decode(c, e1, (size_t)l1, d1, n, NULL), (ssize_t)n);
		kvt_simd_force_scalar(1);
		ssize_t l2 = kvt_chain_encode(c, &g, blk, n, e2, cap);
		assert_int_equal(l1, l2);
		assert_memory_equal(e1, e2, (size_t)l1);
		assert_int_equal(kvt_chain_decode(c, e1, (size_t)l1, d2, n, NULL), (ssize_t)n);
		kvt_simd_force_scalar(0);
		assert_memory_equal(d1, d2, n);
		free(e1);
		free(e2);
		free(d1);
		free(d2);
		kvt_chain_free(c);
	}
	kvt_dict_free(dict);
	free(blk);
}

static void test_rans(void **state)
{
	size_t n = 100000;
	uint16_t *sym = malloc(n * sizeof(uint16_t)), *dec = malloc(n * sizeof(uint16_t));
	uint8_t *ti = malloc(n), *buf = malloc(rans_bound(n));
	struct rans_table t[3];
	const struct rans_table *tabs[3] = {&t[0], &t[1], &t[2]};
	uint32_t counts[3][256];
	for (int k = 0; k < 3; k++)
		for (int s = 0; s < 256; s++)
			counts[k][s] = k == 0	? 1
				       : k == 1 ? (s < 4 ? 1000u >> s : 0)
						: (uint32_t)(rnd() % 50);
	for (int k = 0; k < 3; k++)
		assert_int_equal(rans_table_from_counts(&t[k], counts[k], 256), 0);
	for (size_t i = 0; i < n; i++) {
		ti[i] = (uint8_t)(rnd() % 3);
		do
			sym[i] = (uint16_t)(ti[i] == 1 ? rnd() % 4 : rnd() % 256);
		while (!t[ti[i]].freq[sym[i]]);
	}
	long l = rans_encode(sym, ti, n, tabs, buf, rans_bound(n));
	assert_true(l > 0);
	assert_int_equal(rans_decode(buf, (size_t)l, n, ti, 3, tabs, dec), 0);
	assert_memory_equal(sym, dec, n * sizeof(uint16_t));
	/* truncated or extended streams are refused */
	assert_int_equal(rans_decode(buf, (size_t)l - 1, n, ti, 3, tabs, dec), -EBADMSG);
	assert_int_equal(rans_decode(buf, (size_t)l, n, ti, 2, tabs, dec), -EBADMSG);
	/* table serialisation */
	uint8_t tb[1024];
	struct wbuf w;
	struct rbuf r;
	struct rans_table back;
	wb_init(&w, tb, sizeof(tb));
	rans_table_write(&w, &t[2]);
	rb_init(&r, tb, w.len);
	assert_int_equal(rans_table_read(&r, &back, 256), 0);
	assert_memory_equal(back.freq, t[2].freq, sizeof(back.freq));
	rb_init(&r, tb, w.len - 1);
	assert_int_equal(rans_table_read(&r, &back, 256), -EBADMSG);
	/* the static tables: every symbol codable, frequencies sum to M */
	for (unsigned c = 0; c < RANS_PCLASSES; c++) {
		const struct rans_table *p = rans_param_table(c);
		uint32_t sum = 0;
		for (unsigned s = 0; s < p->nsym; s++) {
			assert_true(p->freq[s] > 0);
			sum += p->freq[s];
		}
		assert_int_equal(sum, RANS_M);
	}
	assert_null(rans_param_table(RANS_PCLASSES));
	free(sym);
	free(dec);
	free(ti);
	free(buf);
}

/* The coder before its speed-ups: a division per symbol, one state at a time. */
static long ref_encode(const uint16_t *sym, const uint8_t *ti, size_t n,
		       const struct rans_table *const *tabs, uint8_t *dst, size_t cap)
{
	const uint32_t L = 1u << 23;
	uint32_t x[4] = {L, L, L, L};
	uint8_t *end = dst + cap, *p = end;
	for (size_t i = n; i-- > 0;) {
		const struct rans_table *t = tabs[ti ? ti[i] : 0];
		uint32_t s = sym[i], f = t->freq[s], c = t->cum[s], k = i & 3;
		uint32_t xmax = ((L >> RANS_PROB_BITS) << 8) * f, v = x[k];
		while (v >= xmax) {
			*--p = (uint8_t)v;
			v >>= 8;
		}
		x[k] = ((v / f) << RANS_PROB_BITS) + (v % f) + c;
	}
	p -= 16;
	for (int k = 0; k < 4; k++)
		st32(p + 4 * k, x[k]);
	memmove(dst, p, (size_t)(end - p));
	return (long)(end - p);
}

/*
 * The encoder's multiply-by-reciprocal gives the same streams as division, for every length
 * modulo 4, skewed and flat tables, one table or many; the one-table decoder (four states in
 * registers) equals the general one and refuses truncated streams.
 */
static void test_rans_reference(void **state)
{
	size_t nmax = 40003;
	uint16_t *sym = malloc(nmax * sizeof(uint16_t)), *d1 = malloc(nmax * sizeof(uint16_t)),
		 *d2 = malloc(nmax * sizeof(uint16_t));
	uint8_t *ti = malloc(nmax), *zero = calloc(nmax, 1), *b1 = malloc(rans_bound(nmax)),
		*b2 = malloc(rans_bound(nmax));
	struct rans_table t[2];
	const struct rans_table *tabs[2] = {&t[0], &t[1]};
	uint32_t counts[2][256];
	for (int s = 0; s < 256; s++) {
		counts[0][s] = s == 0 ? 4000 : s < 3 ? 40 : 1; /* freq 1 symbols: 12 bits each */
		counts[1][s] = (uint32_t)(1 + rnd() % 1000);
	}
	for (int k = 0; k < 2; k++)
		assert_int_equal(rans_table_from_counts(&t[k], counts[k], 256), 0);
	for (size_t n = 0; n < 12; n++) {
		size_t len = n < 8 ? n : nmax - (n - 8);
		for (size_t i = 0; i < len; i++) {
			ti[i] = (uint8_t)(rnd() % 2);
			sym[i] = (uint16_t)(rnd() % (rnd() % 8 ? 4 : 256));
		}
		long l1 = rans_encode(sym, ti, len, tabs, b1, rans_bound(nmax));
		long l2 = ref_encode(sym, ti, len, tabs, b2, rans_bound(nmax));
		assert_int_equal(l1, l2);
		assert_memory_equal(b1, b2, (size_t)l1);
		l1 = rans_encode(sym, NULL, len, tabs, b1, rans_bound(nmax));
		l2 = ref_encode(sym, NULL, len, tabs, b2, rans_bound(nmax));
		assert_int_equal(l1, l2);
		assert_memory_equal(b1, b2, (size_t)l1);
		assert_int_equal(rans_decode(b1, (size_t)l1, len, NULL, 1, tabs, d1), 0);
		assert_int_equal(rans_decode(b1, (size_t)l1, len, zero, 1, tabs, d2), 0);
		assert_memory_equal(d1, sym, len * sizeof(uint16_t));
		assert_memory_equal(d2, sym, len * sizeof(uint16_t));
		if (len < 64)
			continue;
		assert_int_equal(rans_decode(b1, (size_t)l1 - 1, len, NULL, 1, tabs, d1), -EBADMSG);
		assert_int_equal(rans_decode(b1, (size_t)l1 / 2, len, NULL, 1, tabs, d1), -EBADMSG);
		/* a corrupt stream is refused or decodes to other symbols (the stream of a
		 * sequence is unique); records carry a CRC for the rest */
		b1[l1 / 2] ^= 0x5a;
		int rc = rans_decode(b1, (size_t)l1, len, NULL, 1, tabs, d1);
		assert_true(rc == -EBADMSG || memcmp(d1, sym, len * sizeof(uint16_t)));
	}
	/* too small a buffer is -ENOSPC, never an overrun */
	for (size_t cap = 0; cap < 64; cap += 7)
		assert_int_equal(rans_encode(sym, ti, 1000, tabs, b1, cap), -ENOSPC);
	free(sym);
	free(d1);
	free(d2);
	free(ti);
	free(zero);
	free(b1);
	free(b2);
}

/* SimHash with its projection table equals the per-call xorshift it replaced. */
static void test_simhash(void **state)
{
	static const uint32_t dims[] = {2, 64, 128, 130, 1024};
	float x[1024];
	for (size_t k = 0; k < sizeof(dims) / sizeof(dims[0]); k++)
		for (int rep = 0; rep < 50; rep++) {
			uint32_t D = dims[k];
			for (uint32_t d = 0; d < D; d++)
				x[d] = (float)((int)(rnd() % 2001) - 1000) / 7.0f;
			uint16_t h = 0;
			for (unsigned j = 0; j < 16; j++) {
				uint64_t s = 0x9e3779b97f4a7c15ull * (j + 1);
				float a = 0;
				for (uint32_t d = 0; d < D; d++) {
					s ^= s << 13;
					s ^= s >> 7;
					s ^= s << 17;
					a += (s >> 63) ? x[d] : -x[d];
				}
				h = (uint16_t)(h | (a > 0) << j);
			}
			assert_int_equal(kvt_simhash16(x, D), h);
		}
}

/* Scalar conversions agree with exact arithmetic on every fp16 value. */
static void test_f16_scalar(void **state)
{
	for (uint32_t h = 0; h < 65536; h++) {
		float f = kvt_h2f((uint16_t)h);
		if (isnan(f))
			continue;
		assert_int_equal(kvt_f2h(f), h);
	}
	assert_int_equal(kvt_f2h(65520.0f), 0x7c00);
	assert_int_equal(kvt_f2h(65519.0f), 0x7bff);
	assert_int_equal(kvt_f2h(0x1p-25f), 0);	  /* tie to even: 0 */
	assert_int_equal(kvt_f2h(0x1.8p-24f), 2); /* tie to even: 2 */
	assert_int_equal(kvt_f2bf(1.0f), 0x3f80);
	assert_true(kvt_bf2f(0x3f80) == 1.0f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_f16_scalar), cmocka_unit_test(test_f16_load),
	    cmocka_unit_test(test_f16_store),  cmocka_unit_test(test_codec_same_bytes),
	    cmocka_unit_test(test_rans),       cmocka_unit_test(test_rans_reference),
	    cmocka_unit_test(test_simhash),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
