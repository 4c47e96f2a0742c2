/* SPDX-License-Identifier: MIT */
/*
 * kvt_half.h - fp16 and bf16 <-> float, the one scalar conversion of the project: the codecs
 * (codecs/kvmath.c), the predictor (client/predict.c), the GPU kernels' CPU reference
 * (gpu/gpu_ref.c), the bq codec on the CPU and in CUDA (codecs/bq_format.h) and the .kvd
 * reader (bench/kvd.c) all call these.  Header-only, so that a
 * per-element loop inlines them.
 *
 * Semantics are those of the x86 F16C instructions (and of the compiler's _Float16), so that
 * the codecs' AVX2 path gives the same bits (tests/unit/test_codec_simd.c):
 * - fp16 -> float is exact; subnormals are kept; a NaN keeps its payload and comes out quiet.
 * - float -> fp16 rounds to nearest even; anything that rounds to 65520 or more becomes inf;
 *   values below half the smallest subnormal become (signed) zero; a NaN keeps the top 10 bits
 *   of its payload and comes out quiet.
 * - bf16 -> float is exact; float -> bf16 rounds to nearest even, a NaN comes out quiet.
 * tests/unit/test_half.c checks all 65536 inputs of each decoder and the encoders against the
 * compiler's conversion and against the implementations this header replaced.
 */
#ifndef KVT_HALF_H
#define KVT_HALF_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* CUDA kernels use them too (codecs/bq_format.h).  No multiply feeds an add here, so nvcc
 * has nothing to fuse: host and device give the same bits. */
#if defined(__CUDACC__)
#define KVT_HALF_FN static __host__ __device__ __forceinline__
#else
#define KVT_HALF_FN static inline
#endif

union kvt_half_pun {
	float f;
	uint32_t u;
};

KVT_HALF_FN uint32_t kvt_half_fbits(float f)
{
	union kvt_half_pun v;

	v.f = f;
	return v.u;
}

KVT_HALF_FN float kvt_half_bitsf(uint32_t u)
{
	union kvt_half_pun v;

	v.u = u;
	return v.f;
}

KVT_HALF_FN float kvt_half_to_float(uint16_t h)
{
	uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;

	if (e == 0) /* zero or subnormal: m * 2^-24 is exact in float */
		return kvt_half_bitsf(s | kvt_half_fbits((float)m * 0x1p-24f));
	if (e == 31) /* inf, or NaN made quiet as the F16C instruction does */
		return kvt_half_bitsf(s | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0));
	return kvt_half_bitsf(s | (e + 112) << 23 | m << 13);
}

KVT_HALF_FN uint16_t kvt_float_to_half(float f)
{
	uint32_t u = kvt_half_fbits(f), sign = (u >> 16) & 0x8000, a = u & 0x7fffffffu;
	uint16_t o;

	if (a >= 0x47800000u) { /* >= 65536, inf or NaN */
		if (a > 0x7f800000u)
			o = (uint16_t)(0x7e00 | ((a >> 13) & 0x3ff));
		else
			o = 0x7c00;
	} else if (a < 0x38800000u) {
		/*
		 * Result is subnormal or zero: adding 0.5 (2^-1) lines the fp16 subnormal step
		 * (2^-24) up with the float's last mantissa bit, so the float addition itself
		 * rounds to nearest even.
		 */
		o = (uint16_t)(kvt_half_fbits(kvt_half_bitsf(a) + 0.5f) - 0x3f000000u);
	} else {
		uint32_t odd = (a >> 13) & 1;

		a += 0xc8000fffu + odd; /* rebias exponent (-112 << 23) and round half to even */
		o = (uint16_t)(a >> 13);
	}
	return (uint16_t)(o | sign);
}

KVT_HALF_FN float kvt_bf16_to_float(uint16_t h)
{
	return kvt_half_bitsf((uint32_t)h << 16);
}

KVT_HALF_FN uint16_t kvt_float_to_bf16(float f)
{
	uint32_t u = kvt_half_fbits(f);

	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40);
	return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

#ifdef __cplusplus
}
#endif

#endif
