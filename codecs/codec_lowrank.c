/* SPDX-License-Identifier: MIT */
/*
 * codec_lowrank.c - "lowrank": keys projected on a rank-r basis of their own block.
 *
 *   lowrank:r=R,b=BITS
 *
 * Per key slab (one layer, one kv head: block_tokens x head_dim): the channel means are
 * removed, the top R right singular vectors of the centred keys are found by subspace
 * iteration on the token Gram matrix, and keys are stored as means + coefficients (T x R)
 * times basis (R x D), both fp16.  With b > 0 the residual is quantized too: per channel,
 * asymmetric b bits over the block; values are quantized per token with b bits (b = 0: the
 * residual is dropped and values are stored exactly).  Error bound: keys, the residual's
 * norm when b = 0, else scale/2 per element; values, scale/2 per element (exact if b = 0).
 */
#include <math.h>
#include <stdlib.h>

#include "kvslab.h"

enum { A_R, A_B, A_N };

static const struct kvt_argdef lr_args[A_N] = {{"r", 16, 1, 256, 1}, {"b", 4, 0, 8, 1}};

static int lr_parse(struct kvt_stage *st, const char *a)
{
	return kvt_args_parse(st, lr_args, A_N, a);
}

static int lr_canon(const struct kvt_stage *st, char *b, size_t l)
{
	return kvt_args_canon(st, lr_args, A_N, b, l);
}

static uint32_t rank_of(const struct kvt_stage *st, const struct kvt_codec_geom *g)
{
	uint32_t r = (uint32_t)st->arg[A_R];
	r = r < g->block_tokens ? r : g->block_tokens;
	return r < g->head_dim ? r : g->head_dim;
}

static size_t lr_bound(const struct kvt_stage *st, const struct kvt_codec_geom *g, size_t n)
{
	if (kvt_geom_check(g))
		return 0;
	size_t T = g->block_tokens, D = g->head_dim, r = rank_of(st, g), slab = T * D;
	size_t k = D * 2 + (T + D) * r * 2 + D * 4 + slab, v = T * 4 + slab * 2;
	return (size_t)g->n_layers * g->n_kv_heads * (k + v);
}

/*
 * Asymmetric b-bit quantization of n values x[i * stride] (one channel or one token):
 * writes zero and scale (fp16) and the codes, or decodes (dec != 0) them into x.
 */
static void q_line(struct wbuf *w, float *x, size_t n, size_t stride, unsigned b)
{
	float mn = INFINITY, mx = -INFINITY;
	for (size_t i = 0; i < n; i++) {
		mn = fminf(mn, x[i * stride]);
		mx = fmaxf(mx, x[i * stride]);
	}
	mn = mn < -65504.0f ? -65504.0f : mn > 65504.0f ? 65504.0f : mn;
	uint16_t zh = kvt_f2h(mn);
	if (kvt_h2f(zh) > mn && zh != 0xfbff) /* round the zero point down */
		zh = (zh & 0x7fff) ? (uint16_t)(zh & 0x8000 ? zh + 1 : zh - 1) : 0x8001;
	float z = kvt_h2f(zh), lv = (float)((1u << b) - 1), span = (mx - z) / lv;
	uint16_t sh = f2h_up(span < 65504.0f ? span : 65504.0f);
	float sc = kvt_h2f(sh);
	wb_u16(w, zh);
	wb_u16(w, sh);
	uint8_t codes[4096];
	for (size_t i = 0; i < n; i++) {
		float v = sc > 0 ? rintf((x[i * stride] - z) / sc) : 0;
		codes[i] = (uint8_t)(v < 0 ? 0 : v > lv ? lv : v);
	}
	uint8_t *p = wb_reserve(w, packed_len(n, b));
	if (p)
		pack_bits(p, codes, n, b);
}

static int dq_line(struct rbuf *r, float *x, size_t n, size_t stride, unsigned b)
{
	float z = kvt_h2f(rb_u16(r)), sc = kvt_h2f(rb_u16(r));
	const uint8_t *p = rb_take(r, packed_len(n, b));
	uint8_t codes[4096];
	if (!p || !isfinite(z) || !isfinite(sc))
		return -EBADMSG;
	unpack_bits(codes, p, n, b);
	for (size_t i = 0; i < n; i++)
		x[i * stride] += z + sc * codes[i];
	return 0;
}

/* Top-r orthonormal eigenvectors of the T x T Gram matrix G (subspace iteration), in U. */
static void top_eig(const double *G, uint32_t T, uint32_t r, double *U, double *tmp)
{
	uint64_t s = 0x2545f4914f6cdd1dull;
	for (size_t i = 0; i < (size_t)T * r; i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		U[i] = (double)(s >> 11) / 9007199254740992.0 - 0.5;
	}
	for (int it = 0; it < 30; it++) {
		for (uint32_t i = 0; i < T; i++)
			for (uint32_t k = 0; k < r; k++) {
				double a = 0;
				for (uint32_t j = 0; j < T; j++)
					a += G[(size_t)i * T + j] * U[(size_t)j * r + k];
				tmp[(size_t)i * r + k] = a;
			}
		/* Gram-Schmidt on the columns */
		for (uint32_t k = 0; k < r; k++) {
			for (uint32_t m = 0; m < k; m++) {
				double dp = 0;
				for (uint32_t i = 0; i < T; i++)
					dp += tmp[(size_t)i * r + k] * tmp[(size_t)i * r + m];
				for (uint32_t i = 0; i < T; i++)
					tmp[(size_t)i * r + k] -= dp * tmp[(size_t)i * r + m];
			}
			double nn = 0;
			for (uint32_t i = 0; i < T; i++)
				nn += tmp[(size_t)i * r + k] * tmp[(size_t)i * r + k];
			nn = nn > 1e-300 ? 1 / sqrt(nn) : 0;
			for (uint32_t i = 0; i < T; i++)
				tmp[(size_t)i * r + k] *= nn;
		}
		memcpy(U, tmp, (size_t)T * r * sizeof(double));
	}
}

static ssize_t lr_enc(const struct kvt_stage *st, const struct kvt_codec_geom *g,
		      const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	size_t slab = geom_slab(g), ns = geom_nslabs(g);
	uint32_t T = g->block_tokens, D = g->head_dim, R = rank_of(st, g);
	unsigned b = (unsigned)st->arg[A_B];
	float *x = malloc(slab * sizeof(float)), *mu = malloc(D * sizeof(float));
	double *G = malloc((size_t)T * T * sizeof(double)),
	       *U = malloc((size_t)T * R * sizeof(double));
	double *tmp = malloc((size_t)T * R * sizeof(double));
	float *A = malloc((size_t)T * R * sizeof(float)),
	      *B = malloc((size_t)R * D * sizeof(float));
	ssize_t rc = -ENOMEM;
	struct wbuf w;

	if (kvt_geom_check(g) || n != kvt_geom_block_bytes(g)) {
		rc = -EINVAL;
		goto out;
	}
	if (!x || !mu || !G || !U || !tmp || !A || !B)
		goto out;
	wb_init(&w, dst, cap);
	for (size_t s = 0; s < ns && !w.err; s++) {
		const uint8_t *in = src + s * slab * 2;
		kvt_load_f32(x, in, slab, g->dtype);
		kv_sanitize(x, slab);
		if (slab_is_v(g, s)) {
			if (!b) {
				wb_bytes(&w, in, slab * 2);
				continue;
			}
			for (uint32_t t = 0; t < T; t++)
				q_line(&w, x + (size_t)t * D, D, 1, b);
			continue;
		}
		for (uint32_t d = 0; d < D; d++) {
			double a = 0;
			for (uint32_t t = 0; t < T; t++)
				a += x[(size_t)t * D + d];
			uint16_t h = kvt_f2h((float)(a / T));
			mu[d] = kvt_h2f(h);
			wb_u16(&w, h);
			for (uint32_t t = 0; t < T; t++)
				x[(size_t)t * D + d] -= mu[d];
		}
		for (uint32_t i = 0; i < T; i++)
			for (uint32_t j = 0; j <= i; j++) {
				double a = 0;
				for (uint32_t d = 0; d < D; d++)
					a += (double)x[(size_t)i * D + d] * x[(size_t)j * D + d];
				G[(size_t)i * T + j] = G[(size_t)j * T + i] = a;
			}
		top_eig(G, T, R, U, tmp);
		/* A = U (fp16), B = A^T X computed from the rounded A, then rounded */
		for (size_t i = 0; i < (size_t)T * R; i++) {
			uint16_t h = kvt_f2h((float)U[i]);
			A[i] = kvt_h2f(h);
			wb_u16(&w, h);
		}
		for (uint32_t k = 0; k < R; k++)
			for (uint32_t d = 0; d < D; d++) {
				double a = 0, nn = 0;
				for (uint32_t t = 0; t < T; t++) {
					a += (double)A[(size_t)t * R + k] * x[(size_t)t * D + d];
					nn += (double)A[(size_t)t * R + k] * A[(size_t)t * R + k];
				}
				double bv = nn > 0 ? a / nn : 0;
				/* finite fp16 factors, whatever the keys (a decoder refuses inf) */
				bv = bv > 65504 ? 65504 : bv < -65504 ? -65504 : bv;
				uint16_t h = kvt_f2h((float)bv);
				B[(size_t)k * D + d] = kvt_h2f(h);
				wb_u16(&w, h);
			}
		if (!b)
			continue;
		for (uint32_t t = 0; t < T; t++)
			for (uint32_t d = 0; d < D; d++) {
				float a = 0;
				for (uint32_t k = 0; k < R; k++)
					a += A[(size_t)t * R + k] * B[(size_t)k * D + d];
				x[(size_t)t * D + d] -= a;
			}
		for (uint32_t d = 0; d < D; d++)
			q_line(&w, x + d, T, D, b);
	}
	rc = w.err ? w.err : (ssize_t)w.len;
out:
	free(x);
	free(mu);
	free(G);
	free(U);
	free(tmp);
	free(A);
	free(B);
	return rc;
}

static ssize_t lr_dec(const struct kvt_stage *st, const struct kvt_codec_geom *g,
		      const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	size_t slab = geom_slab(g), ns = geom_nslabs(g), raw = kvt_geom_block_bytes(g);
	uint32_t T = g->block_tokens, D = g->head_dim, R = rank_of(st, g);
	unsigned b = (unsigned)st->arg[A_B];
	float *x = malloc(slab * sizeof(float)), *A = malloc((size_t)T * R * sizeof(float));
	float *B = malloc((size_t)R * D * sizeof(float)), *mu = malloc(D * sizeof(float));
	ssize_t rc = -ENOMEM;
	struct rbuf r;

	if (!x || !A || !B || !mu)
		goto out;
	rc = -EBADMSG;
	if (!raw || cap < raw)
		goto out;
	rb_init(&r, src, n);
	for (size_t s = 0; s < ns; s++) {
		uint8_t *o = dst + s * slab * 2;
		memset(x, 0, slab * sizeof(float));
		if (slab_is_v(g, s)) {
			if (!b) {
				const uint8_t *p = rb_take(&r, slab * 2);
				if (!p)
					goto out;
				memcpy(o, p, slab * 2);
				continue;
			}
			for (uint32_t t = 0; t < T; t++)
				if (dq_line(&r, x + (size_t)t * D, D, 1, b))
					goto out;
			kvt_store_f32(o, x, slab, g->dtype);
			continue;
		}
		for (uint32_t d = 0; d < D; d++)
			mu[d] = kvt_h2f(rb_u16(&r));
		for (size_t i = 0; i < (size_t)T * R; i++)
			A[i] = kvt_h2f(rb_u16(&r));
		for (size_t i = 0; i < (size_t)R * D; i++)
			B[i] = kvt_h2f(rb_u16(&r));
		if (r.err)
			goto out;
		for (uint32_t t = 0; t < T; t++)
			for (uint32_t d = 0; d < D; d++) {
				float a = mu[d];
				for (uint32_t k = 0; k < R; k++)
					a += A[(size_t)t * R + k] * B[(size_t)k * D + d];
				x[(size_t)t * D + d] = a;
			}
		if (b)
			for (uint32_t d = 0; d < D; d++)
				if (dq_line(&r, x + d, T, D, b))
					goto out;
		for (size_t i = 0; i < slab; i++)
			if (!isfinite(x[i]))
				goto out;
		kvt_store_f32(o, x, slab, g->dtype);
	}
	rc = r.pos == n ? (ssize_t)raw : -EBADMSG;
out:
	free(x);
	free(A);
	free(B);
	free(mu);
	return rc;
}

const struct kvt_codec_ops kvt_codec_lowrank = {
    .name = "lowrank",
    .flags = KVT_CODEC_LOSSY | KVT_CODEC_KV,
    .parse = lr_parse,
    .canon = lr_canon,
    .max_encoded_size = lr_bound,
    .encode = lr_enc,
    .decode = lr_dec,
};
