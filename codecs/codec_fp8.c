/* SPDX-License-Identifier: MIT */
/*
 * codec_fp8.c - "fp8": every element as fp8 e4m3 (1 sign, 4 exponent, 3 mantissa bits, as
 * Hopper GPUs store it) times a per-token scale.
 *
 * Each token vector (one layer, K or V, kv head, token) is scaled by amax / 448 (fp16,
 * rounded up, so nothing saturates), then rounded to nearest even e4m3.  Error bound: 1/16
 * of the element's magnitude (half a unit of the 3-bit mantissa), or scale * 2^-10 below the
 * smallest normal.  Per slab: block_tokens fp16 scales, then the codes.
 */
#include <math.h>
#include <stdlib.h>

#include "kvslab.h"

#define E4M3_MAX 448.0f

static float e4m3_val(uint8_t c)
{
	unsigned e = (c >> 3) & 15, m = c & 7;
	float v = e ? ldexpf(1.0f + m / 8.0f, (int)e - 7) : ldexpf((float)m, -9);
	return c & 0x80 ? -v : v;
}

/* Nearest-even e4m3 code of v, |v| <= 448. Codes ascend with magnitude, subnormals included. */
static uint8_t e4m3_enc(float v)
{
	uint8_t s = v < 0 ? 0x80 : 0;
	float a = fabsf(v);
	unsigned code;
	if (!(a >= 0x1p-6f)) {
		code = (unsigned)rintf((a == a ? a : 0) * 512.0f); /* 0..8; 8 is 2^-6, code 8 */
	} else {
		int e;
		float f = frexpf(a, &e); /* a = f * 2^e, f in [0.5, 1) */
		unsigned m = (unsigned)rintf((f * 2.0f - 1.0f) * 8.0f);
		int ex = e - 1 + 7;
		if (m == 8) {
			m = 0;
			ex++;
		}
		code = ex > 15 ? 126 : (unsigned)ex << 3 | m;
		if (code > 126) /* 0x7f is NaN */
			code = 126;
	}
	return (uint8_t)(s | code);
}

static size_t fp8_bound(const struct kvt_stage *st, const struct kvt_codec_geom *g, size_t n)
{
	if (kvt_geom_check(g))
		return 0;
	return geom_nslabs(g) * ((size_t)g->block_tokens * 2 + geom_slab(g));
}

static ssize_t fp8_enc(const struct kvt_stage *st, const struct kvt_codec_geom *g,
		       const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	size_t slab = geom_slab(g), ns = geom_nslabs(g);
	uint32_t T = g->block_tokens, D = g->head_dim;
	float *x;
	struct wbuf w;

	if (kvt_geom_check(g) || n != kvt_geom_block_bytes(g))
		return -EINVAL;
	x = malloc(slab * sizeof(float));
	if (!x)
		return -ENOMEM;
	wb_init(&w, dst, cap);
	for (size_t s = 0; s < ns && !w.err; s++) {
		kvt_load_f32(x, src + s * slab * 2, slab, g->dtype);
		kv_sanitize(x, slab);
		float sc[4096];
		for (uint32_t t = 0; t < T; t++) {
			float amax = 0;
			for (uint32_t d = 0; d < D; d++)
				amax = fmaxf(amax, fabsf(x[(size_t)t * D + d]));
			uint16_t h = f2h_up(amax / E4M3_MAX);
			sc[t] = kvt_h2f(h);
			wb_u16(&w, h);
		}
		uint8_t *p = wb_reserve(&w, slab);
		if (!p)
			break;
		for (uint32_t t = 0; t < T; t++) {
			float inv = sc[t] > 0 ? 1.0f / sc[t] : 0;
			for (uint32_t d = 0; d < D; d++) {
				float v = x[(size_t)t * D + d] * inv;
				v = v > E4M3_MAX ? E4M3_MAX : v < -E4M3_MAX ? -E4M3_MAX : v;
				p[(size_t)t * D + d] = e4m3_enc(v);
			}
		}
	}
	free(x);
	return w.err ? w.err : (ssize_t)w.len;
}

static ssize_t fp8_dec(const struct kvt_stage *st, const struct kvt_codec_geom *g,
		       const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	size_t slab = geom_slab(g), ns = geom_nslabs(g), raw = kvt_geom_block_bytes(g);
	uint32_t T = g->block_tokens, D = g->head_dim;
	float lut[256], *x;
	struct rbuf r;

	if (!raw || cap < raw)
		return -EBADMSG;
	if (n != ns * ((size_t)T * 2 + slab))
		return -EBADMSG;
	x = malloc(slab * sizeof(float));
	if (!x)
		return -ENOMEM;
	for (unsigned c = 0; c < 256; c++)
		lut[c] = e4m3_val((uint8_t)c);
	rb_init(&r, src, n);
	for (size_t s = 0; s < ns; s++) {
		const uint8_t *sc = rb_take(&r, (size_t)T * 2), *p = rb_take(&r, slab);
		for (uint32_t t = 0; t < T; t++) {
			float f = kvt_h2f(ld16(sc + 2 * t));
			if (!isfinite(f)) {
				free(x);
				return -EBADMSG;
			}
			for (uint32_t d = 0; d < D; d++) {
				uint8_t c = p[(size_t)t * D + d];
				/* 0x7f/0xff are NaN in e4m3: the encoder never writes them */
				if ((c & 0x7f) == 0x7f) {
					free(x);
					return -EBADMSG;
				}
				x[(size_t)t * D + d] = lut[c] * f;
			}
		}
		kvt_store_f32(dst + s * slab * 2, x, slab, g->dtype);
	}
	free(x);
	return (ssize_t)raw;
}

const struct kvt_codec_ops kvt_codec_fp8 = {
    .name = "fp8",
    .flags = KVT_CODEC_LOSSY | KVT_CODEC_KV,
    .max_encoded_size = fp8_bound,
    .encode = fp8_enc,
    .decode = fp8_dec,
};
