/* SPDX-License-Identifier: MIT */
/*
 * codec_lsh.c - "lsh": near-duplicate token vectors merged, found by SimHash.
 *
 *   lsh:thr=T,ham=H
 *
 * In each slab (one layer, K or V, kv head) every token vector gets a 16-bit SimHash (signs
 * of 16 fixed random ±1 projections).  A vector whose hash is within Hamming distance H of
 * an earlier stored vector's, and whose distance to it is at most T times its own norm, is
 * stored as a reference to that vector (merged); the others are stored exactly (fp16).
 * Error bound: a merged vector x is decoded as y with ||x - y|| <= T ||x||; others exact.
 * (uq uses the same search as a predictor, with the residual coded; this codec shows the
 * merge alone.)  Per slab: merge bitmap, packed references, the stored rows.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>

#include "kvslab.h"

enum { A_THR, A_HAM, A_N };

static const struct kvt_argdef lsh_args[A_N] = {{"thr", 0.05, 0, 1, 0}, {"ham", 3, 0, 16, 1}};

static int lsh_parse(struct kvt_stage *st, const char *a)
{
	return kvt_args_parse(st, lsh_args, A_N, a);
}

static int lsh_canon(const struct kvt_stage *st, char *b, size_t l)
{
	return kvt_args_canon(st, lsh_args, A_N, b, l);
}

static size_t lsh_bound(const struct kvt_stage *st, const struct kvt_codec_geom *g, size_t n)
{
	if (kvt_geom_check(g))
		return 0;
	uint32_t T = g->block_tokens;
	return geom_nslabs(g) * ((T + 7) / 8 + packed_len(T, 16) + geom_slab(g) * 2);
}

/*
 * The projections: sign of hyperplane k at channel d from a xorshift64 sequence per k (the
 * same for every D, so the table below serves every head_dim up to 1024).  Stored as +-1.0f
 * with the channel outermost, so that the 16 sums run side by side in SIMD registers, each
 * still adding its terms in channel order (the same bits as one sum at a time).
 */
#define SH_MAXD 1024
static float (*sh_sign)[16];
static pthread_once_t sh_once = PTHREAD_ONCE_INIT;

static void sh_init(void)
{
	sh_sign = malloc(SH_MAXD * sizeof(*sh_sign));
	if (!sh_sign)
		abort();
	for (unsigned k = 0; k < 16; k++) {
		uint64_t s = 0x9e3779b97f4a7c15ull * (k + 1);
		for (uint32_t d = 0; d < SH_MAXD; d++) {
			s ^= s << 13;
			s ^= s >> 7;
			s ^= s << 17;
			sh_sign[d][k] = (s >> 63) ? 1.0f : -1.0f;
		}
	}
}

uint16_t kvt_simhash16(const float *x, uint32_t D)
{
	float a[16] = {0};
	uint16_t h = 0;

	pthread_once(&sh_once, sh_init);
	if (D > SH_MAXD)
		D = SH_MAXD; /* kvt_geom_check() caps head_dim at 1024 */
	for (uint32_t d = 0; d < D; d++)
		for (unsigned k = 0; k < 16; k++)
			a[k] += sh_sign[d][k] * x[d];
	for (unsigned k = 0; k < 16; k++)
		h = (uint16_t)(h | (a[k] > 0) << k);
	return h;
}

static ssize_t lsh_enc(const struct kvt_stage *st, const struct kvt_codec_geom *g,
		       const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	size_t slab = geom_slab(g), ns = geom_nslabs(g);
	uint32_t T = g->block_tokens, D = g->head_dim;
	unsigned ham = (unsigned)st->arg[A_HAM];
	double thr2 = st->arg[A_THR] * st->arg[A_THR];
	float *x = malloc(slab * sizeof(float));
	uint16_t *h = malloc(T * sizeof(uint16_t)), *ref = malloc(T * sizeof(uint16_t));
	ssize_t rc = -ENOMEM;
	struct wbuf w;

	if (kvt_geom_check(g) || n != kvt_geom_block_bytes(g)) {
		rc = -EINVAL;
		goto out;
	}
	if (!x || !h || !ref)
		goto out;
	wb_init(&w, dst, cap);
	for (size_t s = 0; s < ns && !w.err; s++) {
		const uint8_t *in = src + s * slab * 2;
		kvt_load_f32(x, in, slab, g->dtype);
		kv_sanitize(x, slab);
		for (uint32_t t = 0; t < T; t++) {
			const float *xt = x + (size_t)t * D;
			double nn = 0, best = INFINITY;
			h[t] = kvt_simhash16(xt, D);
			ref[t] = 0;
			for (uint32_t d = 0; d < D; d++)
				nn += (double)xt[d] * xt[d];
			for (uint32_t r = 0; r < t; r++) {
				if (ref[r] || (unsigned)__builtin_popcount(h[r] ^ h[t]) > ham)
					continue;
				double dd = 0;
				for (uint32_t d = 0; d < D; d++) {
					double e = xt[d] - x[(size_t)r * D + d];
					dd += e * e;
				}
				if (dd <= thr2 * nn && dd < best) {
					best = dd;
					ref[t] = (uint16_t)(r + 1);
				}
			}
		}
		kv_write_refs(&w, ref, T);
		for (uint32_t t = 0; t < T; t++)
			if (!ref[t])
				wb_bytes(&w, in + (size_t)t * D * 2, (size_t)D * 2);
	}
	rc = w.err ? w.err : (ssize_t)w.len;
out:
	free(x);
	free(h);
	free(ref);
	return rc;
}

static ssize_t lsh_dec(const struct kvt_stage *st, const struct kvt_codec_geom *g,
		       const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	size_t slab = geom_slab(g), ns = geom_nslabs(g), raw = kvt_geom_block_bytes(g);
	uint32_t T = g->block_tokens, D = g->head_dim;
	size_t rowb = (size_t)D * 2;
	uint16_t ref[4096];
	struct rbuf r;

	if (!raw || cap < raw)
		return -EBADMSG;
	rb_init(&r, src, n);
	for (size_t s = 0; s < ns; s++) {
		uint8_t *o = dst + s * slab * 2;
		if (kv_read_refs(&r, ref, T))
			return -EBADMSG;
		for (uint32_t t = 0; t < T; t++) {
			if (ref[t]) {
				if (ref[ref[t] - 1]) /* must name a row that is itself stored */
					return -EBADMSG;
				memcpy(o + t * rowb, o + (ref[t] - 1) * rowb, rowb);
				continue;
			}
			const uint8_t *row = rb_take(&r, rowb);
			if (!row)
				return -EBADMSG;
			memcpy(o + t * rowb, row, rowb);
		}
	}
	return r.pos == n ? (ssize_t)raw : -EBADMSG;
}

const struct kvt_codec_ops kvt_codec_lsh = {
    .name = "lsh",
    .flags = KVT_CODEC_LOSSY | KVT_CODEC_KV,
    .parse = lsh_parse,
    .canon = lsh_canon,
    .max_encoded_size = lsh_bound,
    .encode = lsh_enc,
    .decode = lsh_dec,
};
