/* SPDX-License-Identifier: MIT */
/*
 * bq_format.h - the arithmetic of the "bq" codec (codecs/codec_bq.c), shared word for word by
 * the CPU reference, its AVX2 decoder and the CUDA kernels (gpu/gpu_bq.cu), so that all three
 * give the same bytes and the same values.  Format and design: codecs/CODECS.md, "bq".
 *
 * Every float operation here is one IEEE operation rounded to nearest even: on the device the
 * explicit __fmul_rn/__fadd_rn/__fdiv_rn intrinsics (nvcc would otherwise fuse a*b+c into one
 * FMA), on the host plain operators in a file compiled with -ffp-contract=off.  Statistics
 * that a GPU would reduce in a tree (min, max, top three) are order-independent; the one sum
 * (over the D channels of a slab) runs in channel order everywhere.
 */
#ifndef KVT_BQ_FORMAT_H
#define KVT_BQ_FORMAT_H

#include <stdint.h>

#include "../proto/kvt_half.h"

#if defined(__CUDACC__)
#define BQ_HD static __host__ __device__ __forceinline__
#else
#define BQ_HD static inline
#endif

#if defined(__CUDA_ARCH__)
#define BQ_MUL(a, b) __fmul_rn((a), (b))
#define BQ_ADD(a, b) __fadd_rn((a), (b))
#define BQ_SUB(a, b) __fsub_rn((a), (b))
#define BQ_DIV(a, b) __fdiv_rn((a), (b))
#define BQ_SQRT(a)   __fsqrt_rn(a)
#else
#include <math.h>
#define BQ_MUL(a, b) ((a) * (b))
#define BQ_ADD(a, b) ((a) + (b))
#define BQ_SUB(a, b) ((a) - (b))
#define BQ_DIV(a, b) ((a) / (b))
#define BQ_SQRT(a)   sqrtf(a)
#endif

#define BQ_MAXBITS   15u	 /* bits of one code: 0..15 */
#define BQ_MAXOUTL   2u		 /* extremes per side of a channel that may be listed exact */
#define BQ_OUTL_BITS 48u	 /* one outlier: u32 key + 16-bit value */
#define BQ_HUGE	     0x1p56f	 /* |x| >= this (bf16 only) is listed exact, like inf/NaN */
#define BQ_SLAB_HDR  12u	 /* f32 step, u16 sink rows, u16 duplicate rows, u32 outliers */
#define BQ_PAD	     4u		 /* zero bytes after a slab's codes: 32-bit loads stay inside */
#define BQ_MAGIC     0x31305142u /* "BQ01": the stage's first word */

/* "BQ02": the same layout with the keys coded in their pre-RoPE frame (rope=theta) */
#define BQ_MAGIC_ROPE 0x32305142u

/* double operations (rope's angles), one IEEE operation each as above */
#if defined(__CUDA_ARCH__)
#define BQ_DMUL(a, b) __dmul_rn((a), (b))
#define BQ_DADD(a, b) __dadd_rn((a), (b))
#define BQ_DSUB(a, b) __dsub_rn((a), (b))
#define BQ_D2F(a)     __double2float_rn(a)
#else
#define BQ_DMUL(a, b) ((a) * (b))
#define BQ_DADD(a, b) ((a) + (b))
#define BQ_DSUB(a, b) ((a) - (b))
#define BQ_D2F(a)     ((float)(a))
#endif

/* Fine step multipliers 2^(-m/16), m = 0..15, as float literals (the same bits everywhere). */
#define BQ_FINE_TABLE                                                                              \
	{                                                                                          \
		1.00000000f, 0.95760328f, 0.91700404f, 0.87812608f, 0.84089642f, 0.80524517f,      \
		    0.77110541f, 0.73841307f, 0.70710678f, 0.67712777f, 0.64841978f, 0.62092891f,  \
		    0.59460356f, 0.56939432f, 0.54525387f, 0.52213689f                             \
	}

#if defined(__CUDACC__)
static __constant__ float bq_fine_dev[16] = BQ_FINE_TABLE;
#endif
static const float bq_fine_host[16] = BQ_FINE_TABLE;

/* 2^(-m/16) */
BQ_HD float bq_fine(unsigned m)
{
#if defined(__CUDA_ARCH__)
	return bq_fine_dev[m & 15];
#else
	return bq_fine_host[m & 15];
#endif
}

/* The bit casts and fp16/bf16 conversions are the project's one (proto/kvt_half.h). */
BQ_HD uint32_t bq_fbits(float f)
{
	return kvt_half_fbits(f);
}

BQ_HD float bq_bitsf(uint32_t u)
{
	return kvt_half_bitsf(u);
}

/* fp16 -> float, exact (NaN made quiet). */
BQ_HD float bq_h2f(uint16_t h)
{
	return kvt_half_to_float(h);
}

/* float -> fp16, round to nearest even, overflow to inf (as F16C and __float2half_rn). */
BQ_HD uint16_t bq_f2h(float f)
{
	return kvt_float_to_half(f);
}

BQ_HD float bq_bf2f(uint16_t h)
{
	return kvt_bf16_to_float(h);
}

BQ_HD uint16_t bq_f2bf(float f)
{
	return kvt_float_to_bf16(f);
}

BQ_HD float bq_ld(uint16_t h, int bf16)
{
	return bf16 ? bq_bf2f(h) : bq_h2f(h);
}

BQ_HD uint16_t bq_st(float f, int bf16)
{
	return bf16 ? bq_f2bf(f) : bq_f2h(f);
}

/* Is the 16-bit element finite and small enough to be quantized (else it is listed exact)? */
BQ_HD int bq_codable(float x)
{
	return x > -BQ_HUGE && x < BQ_HUGE;
}

/* The largest element of the dtype at or below the finite x. */
BQ_HD uint16_t bq_round_down(float x, int bf16)
{
	uint16_t h = bq_st(x, bf16);
	if (bq_ld(h, bf16) > x) {
		if (!(h & 0x7fff))
			h = 0x8001; /* +-0 above a negative x: the smallest negative subnormal */
		else
			h = (uint16_t)(h & 0x8000 ? h + 1 : h - 1);
	}
	return h;
}

/* A channel's decode parameters: value = q * s + a, a = lo + s/2 (separate roundings). */
struct bq_chan {
	float s, a;
};

BQ_HD struct bq_chan bq_chan_params(float delta, unsigned m, float lo)
{
	struct bq_chan c;
	c.s = BQ_MUL(delta, bq_fine(m));
	c.a = BQ_ADD(lo, BQ_MUL(c.s, 0.5f));
	return c;
}

BQ_HD float bq_dequant(uint32_t q, struct bq_chan c)
{
	return BQ_ADD(BQ_MUL((float)q, c.s), c.a);
}

/*
 * The slab step from the channels' robust ranges (sum in channel order) and the full ranges'
 * largest: delta = f * sqrt(sum r^2 / D), at least maxrange / 2^15 so that 15 bits cover any
 * channel.  r_c and maxrange come from finite, codable values only.
 */
BQ_HD float bq_delta(float f, float sumsq, unsigned D, float maxrange)
{
	float d = BQ_MUL(f, BQ_SQRT(BQ_DIV(sumsq, (float)D)));
	float floor_ = BQ_MUL(maxrange, 0x1p-15f);
	return d > floor_ ? d : floor_;
}

/*
 * Bits and fine step of a channel whose kept values span [lo, hi] (lo already rounded down
 * to the dtype), r = hi - lo: the fewest bits b with delta * 2^b >= r (BQ_MAXBITS + 1 if 15
 * do not cover), then the largest m with 2^b * (delta * 2^(-m/16)) >= r.
 */
BQ_HD unsigned bq_bits_b(float delta, float r)
{
	uint32_t ud = bq_fbits(delta), ur = bq_fbits(r);
	int ed = (int)(ud >> 23 & 0xff), er = (int)(ur >> 23 & 0xff);
	if (!(r > 0))
		return 0;
	if (ed && ed < 255 && er && er < 255) {
		/* both normal: delta * 2^b is exact (or overflows, and is then >= r too), so
		 * delta * 2^b >= r exactly when b >= e(r) - e(delta) + (mantissa(delta) <
		 * mantissa(r)): the loop below, without looping */
		int b = er - ed + ((ud & 0x7fffff) < (ur & 0x7fffff));
		return b < 0 ? 0u : b > 16 ? 16u : (unsigned)b;
	}
	unsigned b = 0;
	while (b <= BQ_MAXBITS && BQ_MUL(delta, (float)(1u << b)) < r)
		b++;
	return b;
}

BQ_HD unsigned bq_bits_m(float delta, unsigned b, float r)
{
	/* true at m = 0 (b covers r) and monotone in m: a binary search finds the last */
	unsigned m = 0, hi_m = 15;
	while (m < hi_m) {
		unsigned mid = (m + hi_m + 1) / 2;
		if (BQ_MUL((float)(1u << b), BQ_MUL(delta, bq_fine(mid))) >= r)
			m = mid;
		else
			hi_m = mid - 1;
	}
	return m;
}

/* The code of x in a channel of b bits: floor((x - lo) / s), clamped to [0, 2^b - 1] (the
 * conversion truncates, which is floor for the positive values it sees). */
BQ_HD uint32_t bq_quant(float x, float lo, float inv, unsigned b)
{
	float v = BQ_MUL(BQ_SUB(x, lo), inv);
	uint32_t top = (1u << b) - 1;
	if (!(v > 0))
		return 0;
	return v >= (float)top ? top : (uint32_t)v;
}

/*
 * Running three smallest (ascending) and three largest (descending) of a channel, with their
 * token rows, in the total order (value, row): of equal values the earlier row is the smaller,
 * so the i smallest and the j largest are different rows whenever i + j <= n.
 */
struct bq_ext {
	float lo[3], hi[3];
	int lot[3], hit[3];
	unsigned n; /* codable values seen */
	float mn, mx;
};

BQ_HD void bq_ext_init(struct bq_ext *e)
{
	for (int i = 0; i < 3; i++) {
		e->lo[i] = 0;
		e->hi[i] = 0;
		e->lot[i] = -1;
		e->hit[i] = -1;
	}
	e->n = 0;
}

BQ_HD void bq_ext_add(struct bq_ext *e, float x, int t)
{
	unsigned k = e->n < 3 ? e->n : 3;
	int i;
	/* smallest: insert before the first larger one */
	for (i = (int)k; i > 0 && x < e->lo[i - 1]; i--) {
		if (i < 3) {
			e->lo[i] = e->lo[i - 1];
			e->lot[i] = e->lot[i - 1];
		}
	}
	if (i < 3) {
		e->lo[i] = x;
		e->lot[i] = t;
	}
	for (i = (int)k; i > 0 && x >= e->hi[i - 1]; i--) {
		if (i < 3) {
			e->hi[i] = e->hi[i - 1];
			e->hit[i] = e->hit[i - 1];
		}
	}
	if (i < 3) {
		e->hi[i] = x;
		e->hit[i] = t;
	}
	e->n++;
}

/* The robust range of a channel (without its most extreme value on each side). */
BQ_HD float bq_ext_range(const struct bq_ext *e)
{
	if (e->n >= 3)
		return BQ_SUB(e->hi[1], e->lo[1]);
	return e->n ? BQ_SUB(e->hi[0], e->lo[0]) : 0.0f;
}

/* The full range from the smallest value rounded down to the element type (the range start
 * bq_choose() takes): the values themselves unless they are not elements (rope's rotated keys). */
BQ_HD float bq_ext_full(const struct bq_ext *e, int bf16)
{
	return e->n ? BQ_SUB(e->hi[0], bq_ld(bq_round_down(e->lo[0], bf16), bf16)) : 0.0f;
}

/*
 * A channel's choice: drop the i smallest and j largest codable values (listed exact, 48 bits
 * each) if that saves bits over the rows: the lowest cost rows * b + 48 * (i + j), of equal
 * costs the first in (i, j) order.
 */
struct bq_choice {
	unsigned bm;   /* b | m << 4 */
	unsigned i, j; /* extremes dropped below, above */
	uint16_t lo;   /* dtype bits of the range's start */
};

BQ_HD struct bq_choice bq_choose(const struct bq_ext *e, float delta, unsigned rows,
				 unsigned maxoutl, int bf16)
{
	struct bq_choice best;
	unsigned long best_cost = ~0ul;
	best.bm = 0;
	best.i = best.j = 0;
	best.lo = 0;
	if (!e->n)
		return best;
	for (unsigned i = 0; i <= maxoutl; i++)
		for (unsigned j = 0; j <= maxoutl; j++) {
			if (i + j >= e->n) /* keep one value at least: lo[i] <= hi[j] */
				continue;
			uint16_t loh = bq_round_down(e->lo[i], bf16);
			unsigned b = bq_bits_b(delta, BQ_SUB(e->hi[j], bq_ld(loh, bf16)));
			if (b > BQ_MAXBITS)
				continue;
			unsigned long cost =
			    (unsigned long)rows * b + (unsigned long)BQ_OUTL_BITS * (i + j);
			if (cost < best_cost) {
				best_cost = cost;
				best.bm = b;
				best.i = i;
				best.j = j;
				best.lo = loh;
			}
		}
	if (best_cost != ~0ul)
		best.bm |= bq_bits_m(delta, best.bm, BQ_SUB(e->hi[best.j], bq_ld(best.lo, bf16)))
			   << 4;
	return best;
}

/*
 * Does row b repeat row a within eps in every channel?  (NaN and inf never match.)  The test
 * of row t against the rows before it, first match wins, decides which rows are duplicates.
 */
BQ_HD int bq_rows_match(const float *a, const float *b, unsigned D, float eps)
{
	for (unsigned c = 0; c < D; c++) {
		float d = BQ_SUB(a[c], b[c]);
		if (!(d <= eps && d >= -eps))
			return 0;
	}
	return 1;
}

/* Largest encoded slab of T x D: header, channel table, every row exact (sinks or outliers,
 * 8 bytes an element at most), 15-bit codes, the duplicate map and references, the pad. */
BQ_HD uint64_t bq_slab_bound(uint32_t T, uint32_t D)
{
	uint64_t e = (uint64_t)T * D;
	return BQ_SLAB_HDR + 3ull * D + 8 * e + (e * BQ_MAXBITS + 7) / 8 + (T + 7) / 8 + 2ull * T +
	       BQ_PAD;
}

/*
 * rope=theta: keys are coded in their pre-RoPE frame (rotate-half pairs (i, i + D/2), the
 * frequency of pair i f_i = r^i with r = theta^(-2/D), position first_token + row).  The angles'
 * cosines and sines come from double arithmetic one IEEE operation at a time, so the CPU and the
 * GPU get the same floats: at the block's first position and at 1 a Cody-Waite reduction to
 * [-pi/4, pi/4] and Taylor polynomials (bq_rope_cs()), then row by row the angle-addition
 * recurrence (bq_rope_step()).  r is computed once on the host (pow) and handed to the GPU in
 * kvt_bq_params.
 */
BQ_HD double bq_rope_freq(double r, unsigned i)
{
	double f = 1.0;
	for (unsigned k = 0; k < i; k++)
		f = BQ_DMUL(f, r);
	return f;
}

BQ_HD void bq_rope_cs(double pos, double f, double *cs, double *sn)
{
	double a = BQ_DMUL(pos, f);
	double k = floor(BQ_DADD(BQ_DMUL(a, 6.36619772367581382433e-01), 0.5)); /* 2/pi */
	/* pi/2 in two parts (the first with 33 significant bits) */
	double r = BQ_DSUB(BQ_DSUB(a, BQ_DMUL(k, 1.57079632673412561417e+00)),
			   BQ_DMUL(k, 6.07710050650619224932e-11));
	double z = BQ_DMUL(r, r);
	double ps = 1.60590438368216145994e-10; /* 1/13! ... -1/3!: r + r z P(z) */
	ps = BQ_DSUB(BQ_DMUL(ps, z), 2.50521083854417187751e-08);
	ps = BQ_DADD(BQ_DMUL(ps, z), 2.75573192239858906526e-06);
	ps = BQ_DSUB(BQ_DMUL(ps, z), 1.98412698412698412526e-04);
	ps = BQ_DADD(BQ_DMUL(ps, z), 8.33333333333333321769e-03);
	ps = BQ_DSUB(BQ_DMUL(ps, z), 1.66666666666666657415e-01);
	double s = BQ_DADD(r, BQ_DMUL(BQ_DMUL(r, z), ps));
	double pc = 2.08767569878680989792e-09; /* 1/12! ... -1/2!: 1 + z Q(z) */
	pc = BQ_DSUB(BQ_DMUL(pc, z), 2.75573192239858906526e-07);
	pc = BQ_DADD(BQ_DMUL(pc, z), 2.48015873015873015658e-05);
	pc = BQ_DSUB(BQ_DMUL(pc, z), 1.38888888888888894189e-03);
	pc = BQ_DADD(BQ_DMUL(pc, z), 4.16666666666666643537e-02);
	pc = BQ_DSUB(BQ_DMUL(pc, z), 5.00000000000000000000e-01);
	double c = BQ_DADD(1.0, BQ_DMUL(z, pc));
	switch ((uint64_t)k & 3) {
	case 0:
		*cs = c;
		*sn = s;
		break;
	case 1:
		*cs = -s;
		*sn = c;
		break;
	case 2:
		*cs = -c;
		*sn = -s;
		break;
	default:
		*cs = s;
		*sn = -c;
		break;
	}
}

/* (c, s) of the next position: the angle plus f, whose cosine and sine are (c1, s1). */
BQ_HD void bq_rope_step(double *c, double *s, double c1, double s1)
{
	double x = *c, y = *s;
	*c = BQ_DSUB(BQ_DMUL(x, c1), BQ_DMUL(y, s1));
	*s = BQ_DADD(BQ_DMUL(y, c1), BQ_DMUL(x, s1));
}

/* Into the pre-RoPE frame (encoder) and back (decoder): a pair (a, b) of channels (i, i + D/2)
 * rotated by the position's angle, one IEEE operation at a time. */
BQ_HD void bq_unrope(float *a, float *b, float c, float s)
{
	float x = *a, y = *b;
	*a = BQ_ADD(BQ_MUL(x, c), BQ_MUL(y, s));
	*b = BQ_SUB(BQ_MUL(y, c), BQ_MUL(x, s));
}

BQ_HD void bq_rerope(float *a, float *b, float c, float s)
{
	float x = *a, y = *b;
	*a = BQ_SUB(BQ_MUL(x, c), BQ_MUL(y, s));
	*b = BQ_ADD(BQ_MUL(y, c), BQ_MUL(x, s));
}

/* Can a pair be rotated and coded?  Both finite and below BQ_HUGE / 2 (bf16) or 2^15 (fp16),
 * so that the rotated pair stays codable and within the element type; else both are listed
 * exact (in the RoPE frame, as the input has them). */
BQ_HD int bq_pair_codable(float a, float b, int bf16)
{
	float m = bf16 ? 0x1p55f : 0x1p15f;
	return a > -m && a < m && b > -m && b < m;
}

/* Bytes of one duplicate row's reference. */
BQ_HD unsigned bq_ref_bytes(unsigned T)
{
	return T <= 256 ? 1 : 2;
}

#endif
