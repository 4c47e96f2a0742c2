/* SPDX-License-Identifier: MIT */
/*
 * proto/kvt_half.h, the one fp16/bf16 conversion, against what it replaced and against the
 * compiler's own _Float16:
 * - fp16 -> float: all 65536 inputs give the compiler's bits (F16C semantics: NaNs come out
 *   quiet), and the bits of the GPU reference's and the predictor's former decoders except
 *   that a signalling NaN now comes out quiet (the codecs' decoder already did that);
 * - float -> fp16: every half round-trips; around every rounding boundary (each midpoint
 *   between two halves, one float step either side, both signs) and on a spread of all float
 *   bit patterns the result is the compiler's and the former encoders' (the predictor's kept
 *   no NaN payload: it differs on NaNs only);
 * - bf16 both ways: all 65536 decoded; encoding against round-to-nearest-even done in double;
 * - named cases: zeros, subnormals, the largest finite, overflow to inf, inf, NaN.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "kvt_half.h"

static uint32_t bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

static float fl(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

static float cc_h2f(uint16_t h)
{
	_Float16 x;

	memcpy(&x, &h, sizeof(h));
	return (float)x;
}

static uint16_t cc_f2h(float f)
{
	_Float16 x = (_Float16)f;
	uint16_t h;

	memcpy(&h, &x, sizeof(h));
	return h;
}

/* gpu/gpu_ref.c before issue 13. */
static uint16_t gpuref_f2h(float f)
{
	uint32_t x, ax, sign, h, rem;

	memcpy(&x, &f, sizeof(x));
	sign = (x >> 16) & 0x8000u;
	ax = x & 0x7fffffffu;
	if (ax > 0x7f800000u)
		return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
	if (ax >= 0x477ff000u)
		return (uint16_t)(sign | 0x7c00u);
	if (ax < 0x38800000u) {
		uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u, shift, half;

		if (ax < 0x33000000u)
			return (uint16_t)sign;
		shift = 126 - e;
		half = 1u << (shift - 1);
		h = m >> shift;
		rem = m & ((1u << shift) - 1);
		if (rem > half || (rem == half && (h & 1)))
			h++;
		return (uint16_t)(sign | h);
	}
	ax -= 0x38000000u;
	h = ax >> 13;
	rem = ax & 0x1fffu;
	if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
		h++;
	return (uint16_t)(sign | h);
}

static float gpuref_h2f(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;

	if (e == 0x1f) {
		x = sign | 0x7f800000u | (m << 13);
	} else if (e) {
		x = sign | ((e + 112) << 23) | (m << 13);
	} else if (m) {
		e = 113;
		while (!(m & 0x400u)) {
			m <<= 1;
			e--;
		}
		x = sign | (e << 23) | ((m & 0x3ffu) << 13);
	} else {
		x = sign;
	}
	return fl(x);
}

/* client/predict.c before issue 13. */
static float pred_h2f(uint16_t h)
{
	uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;

	if (e == 0) {
		float f = (float)m * 5.9604644775390625e-08f;

		return s ? -f : f;
	}
	if (e == 31)
		return fl(s | 0x7f800000u | (m << 13));
	return fl(s | ((e + 112) << 23) | (m << 13));
}

static uint16_t pred_f2h(float f)
{
	uint32_t u = bits(f), s, e, m;

	s = (u >> 16) & 0x8000;
	u &= 0x7fffffffu;
	if (u >= 0x7f800000u)
		return (uint16_t)(s | 0x7c00 | (u > 0x7f800000u ? 0x200 : 0));
	if (u >= 0x477ff000u)
		return (uint16_t)(s | 0x7c00);
	if (u < 0x38800000u)
		return (uint16_t)(s | (uint32_t)lrintf(fl(u) * 16777216.0f));
	e = (u >> 23) - 112;
	m = u & 0x7fffff;
	m += 0xfff + ((m >> 13) & 1);
	return (uint16_t)(s + ((e << 10) + (m >> 13)));
}

static bool h_is_nan(uint16_t h)
{
	return (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
}

static void decode_all_halves(void **state)
{
	(void)state;
	for (uint32_t h = 0; h < 65536; h++) {
		float f = kvt_half_to_float((uint16_t)h);

		assert_int_equal(bits(f), bits(cc_h2f((uint16_t)h)));
		if (!h_is_nan((uint16_t)h)) {
			assert_int_equal(bits(f), bits(gpuref_h2f((uint16_t)h)));
			assert_int_equal(bits(f), bits(pred_h2f((uint16_t)h)));
			/* round trip */
			assert_int_equal(kvt_float_to_half(f), h);
		} else {
			/* the same NaN, made quiet */
			assert_true(isnan(f));
			assert_int_equal(bits(f), bits(gpuref_h2f((uint16_t)h)) | 0x400000u);
			assert_int_equal(bits(f), bits(pred_h2f((uint16_t)h)) | 0x400000u);
			assert_int_equal(kvt_float_to_half(f), h | 0x200);
		}
	}
}

static void check_encode(float f)
{
	uint16_t h = kvt_float_to_half(f);

	if (h != cc_f2h(f) || h != gpuref_f2h(f) || (!isnan(f) && h != pred_f2h(f)))
		fail_msg("float 0x%08x: 0x%04x, compiler 0x%04x, gpu_ref 0x%04x, predict 0x%04x",
			 bits(f), h, cc_f2h(f), gpuref_f2h(f), pred_f2h(f));
	if (isnan(f))
		assert_int_equal(pred_f2h(f), (h & 0x8000) | 0x7e00);
}

/* Each midpoint between neighbouring halves (exact in float), one step either side. */
static void encode_rounding_boundaries(void **state)
{
	(void)state;
	for (uint32_t h = 0; h < 0x7c00; h++) {
		float lo = kvt_half_to_float((uint16_t)h);
		float hi = h + 1 == 0x7c00 ? 65536.0f : kvt_half_to_float((uint16_t)(h + 1));
		float mid = (float)(((double)lo + (double)hi) / 2);

		for (int s = 0; s < 2; s++) {
			float sg = s ? -1.0f : 1.0f;

			check_encode(sg * lo);
			check_encode(sg * mid);
			check_encode(sg * nextafterf(mid, 0.0f));
			check_encode(sg * nextafterf(mid, INFINITY));
		}
	}
}

/* A spread over all 2^32 float bit patterns (a prime stride), NaNs and infinities included. */
static void encode_spread(void **state)
{
	(void)state;
	for (uint64_t u = 0; u < (1ull << 32); u += 65521)
		check_encode(fl((uint32_t)u));
	for (uint32_t u = 0x7f800000u; u < 0x7f800000u + 4096; u++) {
		check_encode(fl(u));
		check_encode(fl(u | 0x80000000u));
	}
	for (uint32_t u = 0x7fffffffu - 4096; u <= 0x7fffffffu; u++)
		check_encode(fl(u));
}

static void named_cases(void **state)
{
	(void)state;
	assert_int_equal(kvt_float_to_half(0.0f), 0x0000);
	assert_int_equal(kvt_float_to_half(-0.0f), 0x8000);
	assert_int_equal(kvt_float_to_half(1.0f), 0x3c00);
	assert_int_equal(kvt_float_to_half(65504.0f), 0x7bff);
	assert_int_equal(kvt_float_to_half(65519.0f), 0x7bff);
	assert_int_equal(kvt_float_to_half(65520.0f), 0x7c00); /* ties to even: overflows */
	assert_int_equal(kvt_float_to_half(-1e30f), 0xfc00);
	assert_int_equal(kvt_float_to_half(INFINITY), 0x7c00);
	assert_int_equal(kvt_float_to_half(-INFINITY), 0xfc00);
	assert_int_equal(kvt_float_to_half(0x1p-24f), 0x0001);	   /* smallest subnormal */
	assert_int_equal(kvt_float_to_half(0x1p-25f), 0x0000);	   /* tie to even: zero */
	assert_int_equal(kvt_float_to_half(-0x1p-26f), 0x8000);	   /* underflow keeps the sign */
	assert_int_equal(kvt_float_to_half(0x1.8p-24f), 0x0002);   /* tie to even: 2 */
	assert_int_equal(kvt_float_to_half(0x1.ffcp-15f), 0x0400); /* rounds into the normals */
	assert_int_equal(kvt_float_to_half(0x1.ff8p-15f), 0x03ff); /* largest subnormal */
	assert_true(kvt_half_to_float(0x0001) == 0x1p-24f);
	assert_true(kvt_half_to_float(0x03ff) == 0x1.ff8p-15f);
	assert_true(kvt_half_to_float(0x7bff) == 65504.0f);
	assert_true(isinf(kvt_half_to_float(0x7c00)) && kvt_half_to_float(0x7c00) > 0);
	assert_true(isinf(kvt_half_to_float(0xfc00)) && kvt_half_to_float(0xfc00) < 0);
	assert_int_equal(bits(kvt_half_to_float(0x8000)), 0x80000000u);
	assert_int_equal(bits(kvt_half_to_float(0x7c01)), 0x7fc02000u); /* sNaN made quiet */
	assert_int_equal(bits(kvt_half_to_float(0xfe00)), 0xffc00000u);
	assert_int_equal(kvt_float_to_half(NAN) & 0x7e00, 0x7e00);
	assert_int_equal(kvt_float_to_half(fl(0x7f802000u)), 0x7e01); /* payload kept, quiet */
	assert_int_equal(kvt_float_to_bf16(1.0f), 0x3f80);
	assert_int_equal(kvt_float_to_bf16(1.0f + 0x1p-8f), 0x3f80); /* tie to even */
	assert_int_equal(kvt_float_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
	assert_int_equal(kvt_float_to_bf16(fl(0x7f800001u)), 0x7fc0); /* sNaN made quiet */
	assert_int_equal(kvt_float_to_bf16(fl(0x7f7fffffu)), 0x7f80); /* rounds to inf */
	assert_int_equal(kvt_float_to_bf16(fl(0x00000001u)), 0x0000); /* subnormal to zero */
	assert_int_equal(kvt_float_to_bf16(fl(0x00018000u)), 0x0002); /* subnormal, tie up */
}

/* bf16 of a non-NaN float by round to nearest, ties to even, worked out in double. */
static uint16_t rne_bf16(float f)
{
	uint32_t u = bits(f);
	uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
	double dlo = fabs((double)kvt_bf16_to_float(lo) - f);
	/* past the largest finite (0x7f7f) comes inf, where 2^128 would be */
	double dhi = (hi & 0x7fff) == 0x7f80 ? ldexp(1.0, 128) - fabs((double)f)
					     : fabs((double)kvt_bf16_to_float(hi) - f);

	if (dlo < dhi || (dlo == dhi && !(lo & 1)))
		return lo;
	return hi;
}

static void bf16_both_ways(void **state)
{
	(void)state;
	for (uint32_t h = 0; h < 65536; h++) {
		float f = kvt_bf16_to_float((uint16_t)h);

		assert_int_equal(bits(f), h << 16);
		if (!isnan(f))
			assert_int_equal(kvt_float_to_bf16(f), h);
		else
			assert_int_equal(kvt_float_to_bf16(f), h | 0x40);
	}
	for (uint64_t u = 0; u < (1ull << 32); u += 65521) {
		float f = fl((uint32_t)u);

		if (isnan(f) || isinf(f))
			continue;
		if (kvt_float_to_bf16(f) != rne_bf16(f))
			fail_msg("float 0x%08x: bf16 0x%04x, expected 0x%04x", (uint32_t)u,
				 kvt_float_to_bf16(f), rne_bf16(f));
	}
	/* every tie and its neighbours in one binade */
	for (uint32_t u = 0x3f800000u; u < 0x40000000u; u += 0x8000u) {
		for (int d = -1; d <= 1; d++) {
			float f = fl((uint32_t)((int64_t)u + d));

			assert_int_equal(kvt_float_to_bf16(f), rne_bf16(f));
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(decode_all_halves), cmocka_unit_test(encode_rounding_boundaries),
	    cmocka_unit_test(encode_spread),	 cmocka_unit_test(named_cases),
	    cmocka_unit_test(bf16_both_ways),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
