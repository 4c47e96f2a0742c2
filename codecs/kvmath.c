/* SPDX-License-Identifier: MIT */
/* kvmath.c - half-precision conversions (scalar and AVX2/F16C), Hadamard, RoPE, arguments. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../proto/kvt_half.h"
#include "codec_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define KVT_X86 1
#endif

/* The scalar conversions are the project's one (proto/kvt_half.h), under the codecs' names. */
float kvt_h2f(uint16_t h)
{
	return kvt_half_to_float(h);
}

uint16_t kvt_f2h(float f)
{
	return kvt_float_to_half(f);
}

float kvt_bf2f(uint16_t h)
{
	return kvt_bf16_to_float(h);
}

uint16_t kvt_f2bf(float f)
{
	return kvt_float_to_bf16(f);
}

static int force_scalar;

void kvt_simd_force_scalar(int on)
{
	force_scalar = on;
}

#ifdef KVT_X86
/* AVX2 and F16C present and the OS saves the YMM registers. */
static int have_f16c(void)
{
	static int v = -1;
	if (v < 0) {
		unsigned a, b, c, d, lo = 0, hi = 0;
		v = 0;
		if (__get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1) && (c >> 28 & 1) &&
		    (c >> 27 & 1)) {
			__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
			if ((lo & 6) == 6 && __get_cpuid_count(7, 0, &a, &b, &c, &d))
				v = b >> 5 & 1;
		}
	}
	return v;
}

__attribute__((target("avx2,f16c"))) static void load_f16_avx2(float *dst, const uint8_t *src,
							       size_t n)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m128i h = _mm_loadu_si128((const __m128i *)(src + 2 * i));
		_mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
	}
	for (; i < n; i++)
		dst[i] = kvt_h2f(ld16(src + 2 * i));
}

__attribute__((target("avx2,f16c"))) static void store_f16_avx2(uint8_t *dst, const float *src,
								size_t n)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i),
					    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
		_mm_storeu_si128((__m128i *)(dst + 2 * i), h);
	}
	for (; i < n; i++)
		st16(dst + 2 * i, kvt_f2h(src[i]));
}
#endif

int kvt_simd_active(void)
{
#ifdef KVT_X86
	return !force_scalar && have_f16c();
#else
	return 0;
#endif
}

void kvt_load_f32(float *dst, const uint8_t *src, size_t n, uint32_t dtype)
{
	if (dtype == KVT_DTYPE_BF16) {
		for (size_t i = 0; i < n; i++)
			dst[i] = kvt_bf2f(ld16(src + 2 * i));
		return;
	}
#ifdef KVT_X86
	if (kvt_simd_active()) {
		load_f16_avx2(dst, src, n);
		return;
	}
#endif
	for (size_t i = 0; i < n; i++)
		dst[i] = kvt_h2f(ld16(src + 2 * i));
}

void kvt_store_f32(uint8_t *dst, const float *src, size_t n, uint32_t dtype)
{
	if (dtype == KVT_DTYPE_BF16) {
		for (size_t i = 0; i < n; i++)
			st16(dst + 2 * i, kvt_f2bf(src[i]));
		return;
	}
#ifdef KVT_X86
	if (kvt_simd_active()) {
		store_f16_avx2(dst, src, n);
		return;
	}
#endif
	for (size_t i = 0; i < n; i++)
		st16(dst + 2 * i, kvt_f2h(src[i]));
}

void kvt_hadamard(float *x, uint32_t n)
{
	for (uint32_t h = 1; h < n; h <<= 1)
		for (uint32_t i = 0; i < n; i += h << 1)
			for (uint32_t j = i; j < i + h; j++) {
				float a = x[j], b = x[j + h];
				x[j] = a + b;
				x[j + h] = a - b;
			}
	float s = 1.0f / sqrtf((float)n);
	for (uint32_t i = 0; i < n; i++)
		x[i] *= s;
}

void kvt_rope(float *x, uint32_t d, double pos, double theta, int sign)
{
	uint32_t h = d / 2;
	for (uint32_t i = 0; i < h; i++) {
		double ang = pos * pow(theta, -2.0 * i / d), c = cos(ang), s = sign * sin(ang);
		double a = x[i], b = x[i + h];
		x[i] = (float)(a * c - b * s);
		x[i + h] = (float)(b * c + a * s);
	}
}

size_t kvt_geom_block_bytes(const struct kvt_codec_geom *g)
{
	if (kvt_geom_check(g))
		return 0;
	return geom_nslabs(g) * geom_slab(g) * 2;
}

int kvt_geom_check(const struct kvt_codec_geom *g)
{
	if (!g || !g->n_layers || !g->n_kv_heads || !g->head_dim || !g->block_tokens)
		return -EINVAL;
	if (g->n_layers > 1024 || g->n_kv_heads > 1024 || g->head_dim > 1024 || g->head_dim & 1 ||
	    g->block_tokens > 4096)
		return -EINVAL;
	if (g->dtype != KVT_DTYPE_FP16 && g->dtype != KVT_DTYPE_BF16)
		return -EINVAL;
	/* A block must stay well inside 32-bit lengths: records carry u32 sizes. */
	if ((uint64_t)g->n_layers * 2 * g->n_kv_heads * g->block_tokens * g->head_dim * 2 >
	    (1ull << 30))
		return -EINVAL;
	return 0;
}

int kvt_args_parse(struct kvt_stage *st, const struct kvt_argdef *defs, size_t n, const char *args)
{
	if (n > KVT_CODEC_MAX_ARGS)
		return -EINVAL; /* a codec with more slots than a stage has */
	for (size_t i = 0; i < n; i++)
		st->arg[i] = defs[i].def;
	if (!args || !*args)
		return 0;
	const char *p = args;
	int first = 1;
	while (*p) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		const char *eq = memchr(p, '=', len);
		size_t i = 0;
		const char *val;
		if (eq) {
			for (i = 0; i < n; i++)
				if (defs[i].key && strlen(defs[i].key) == (size_t)(eq - p) &&
				    !memcmp(defs[i].key, p, (size_t)(eq - p)))
					break;
			if (i == n)
				return -EINVAL;
			val = eq + 1;
		} else {
			if (!first || !n) /* a bare value names the first key only */
				return -EINVAL;
			val = p;
		}
		char tmp[96], *e;
		size_t vl = len - (size_t)(val - p);
		if (!vl || vl >= sizeof(tmp))
			return -EINVAL;
		memcpy(tmp, val, vl);
		tmp[vl] = 0;
		if (defs[i].integer == KVT_ARG_LIST) {
			/* "a:b:c": the slots of the list, the last value repeated */
			if (i + KVT_ARG_LIST_LEN > n)
				return -EINVAL;
			char *q = tmp;
			double v = 0;
			for (size_t k = 0; k < KVT_ARG_LIST_LEN; k++) {
				if (q) {
					v = strtod(q, &e);
					if (e == q || (*e && *e != ':') ||
					    !(v >= defs[i].min && v <= defs[i].max))
						return -EINVAL;
					q = *e ? e + 1 : NULL;
				}
				st->arg[i + k] = v;
			}
			if (q)
				return -EINVAL;
			first = 0;
			p += len;
			if (*p == ',')
				p++;
			continue;
		}
		double v = strtod(tmp, &e);
		if (*e || !(v >= defs[i].min && v <= defs[i].max))
			return -EINVAL;
		if (defs[i].integer && v != floor(v))
			return -EINVAL;
		st->arg[i] = v;
		first = 0;
		p += len;
		if (*p == ',')
			p++;
	}
	return 0;
}

int kvt_args_canon(const struct kvt_stage *st, const struct kvt_argdef *defs, size_t n, char *buf,
		   size_t len)
{
	size_t o = 0;
	buf[0] = 0;
	for (size_t i = 0; i < n; i++) {
		int w;
		if (!defs[i].key)
			continue;
		if (defs[i].integer == KVT_ARG_LIST) {
			size_t m = KVT_ARG_LIST_LEN, k, same = 1;
			if (i + m > n)
				return -EINVAL;
			for (k = 0; k < m; k++)
				same &= st->arg[i + k] == defs[i + k].def;
			if (same)
				continue;
			while (m > 1 && st->arg[i + m - 1] == st->arg[i + m - 2])
				m--; /* the shortest list that parses back to the same slots */
			w = snprintf(buf + o, len - o, "%s%s=", o ? "," : "", defs[i].key);
			for (k = 0; k < m && w >= 0 && (size_t)w < len - o; k++) {
				int x = snprintf(buf + o + w, len - o - (size_t)w, "%s%.6g",
						 k ? ":" : "", st->arg[i + k]);
				w = x < 0 ? x : w + x;
			}
		} else {
			if (st->arg[i] == defs[i].def)
				continue;
			w = snprintf(buf + o, len - o, "%s%s=%.6g", o ? "," : "", defs[i].key,
				     st->arg[i]);
		}
		if (w < 0 || (size_t)w >= len - o)
			return -EINVAL;
		o += (size_t)w;
	}
	return 0;
}
