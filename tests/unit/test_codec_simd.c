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
	static const char *const specs[] = {"uq", "kivi", "fp8", "lowrank:r=4,b=4", NULL};
	for (size_t k = 0; specs[k]; k++) {
		struct kvt_chain *c;
		assert_int_equal(kvt_chain_parse(specs[k], &c), 0);
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
	    cmocka_unit_test(test_rans),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
