/* SPDX-License-Identifier: MIT */
/*
 * kveval.c - the codecs' error metric (kveval.h): attention outputs with original and decoded
 * K/V.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "codec_internal.h"
#include "kveval.h"

int kvt_eval_attention(const float *q, uint32_t nq, const uint32_t *ctx, const float *k,
		       const float *v, uint32_t nk, uint32_t D, float *o)
{
	float *s = malloc((size_t)nk * sizeof(float)), *qs = malloc((size_t)D * sizeof(float));
	double *acc = malloc((size_t)D * sizeof(double));
	const float scale = 1.0f / sqrtf((float)D);
	int ret = -ENOMEM;

	if (!s || !qs || !acc)
		goto out;
	for (uint32_t p = 0; p < nq; p++) {
		uint32_t n = ctx ? (ctx[p] < nk ? ctx[p] : nk) : nk;
		float mx = -INFINITY;
		double sum = 0;
		float *out = o + (size_t)p * D;

		for (uint32_t e = 0; e < D; e++)
			qs[e] = q[(size_t)p * D + e] * scale;
		for (uint32_t i = 0; i < n; i++) {
			const float *kr = k + (size_t)i * D;
			float a = 0;

			for (uint32_t e = 0; e < D; e++)
				a += qs[e] * kr[e];
			s[i] = a;
			mx = a > mx ? a : mx;
		}
		for (uint32_t i = 0; i < n; i++) {
			s[i] = expf(s[i] - mx);
			sum += s[i];
		}
		for (uint32_t e = 0; e < D; e++)
			acc[e] = 0;
		for (uint32_t i = 0; i < n; i++) {
			const float *vr = v + (size_t)i * D;
			float w = s[i];

			for (uint32_t e = 0; e < D; e++)
				acc[e] += w * vr[e];
		}
		for (uint32_t e = 0; e < D; e++)
			out[e] = n ? (float)(acc[e] / sum) : 0.0f;
	}
	ret = 0;
out:
	free(s);
	free(qs);
	free(acc);
	return ret;
}

double kvt_eval_rel_err_sum(const float *o, const float *o2, size_t n, uint32_t D)
{
	double tot = 0;

	for (size_t i = 0; i < n; i++) {
		double a = 0, b = 0;

		for (uint32_t c = 0; c < D; c++) {
			double x = o[i * D + c], y = o2[i * D + c];

			a += (x - y) * (x - y);
			b += x * x;
		}
		tot += b > 0 ? sqrt(a / b) : 0;
	}
	return tot;
}

int kvt_eval_block_err(const struct kvt_codec_geom *g, const void *ref, const void *dec,
		       double *sum, size_t *n)
{
	uint32_t T = g->block_tokens, D = g->head_dim;
	size_t slab = (size_t)T * D, half = T / 2;
	float *k = NULL, *v = NULL, *kd = NULL, *vd = NULL, *q = NULL, *o = NULL, *od = NULL;
	const uint8_t *r = ref, *x = dec;
	int ret = -EINVAL;

	if (kvt_geom_check(g) < 0)
		return ret;
	ret = -ENOMEM;
	k = malloc(slab * sizeof(float));
	v = malloc(slab * sizeof(float));
	kd = malloc(slab * sizeof(float));
	vd = malloc(slab * sizeof(float));
	q = malloc(slab * sizeof(float));
	o = malloc(slab * sizeof(float));
	od = malloc(slab * sizeof(float));
	if (!k || !v || !kd || !vd || !q || !o || !od)
		goto out;
	for (uint32_t l = 0; l < g->n_layers; l++)
		for (uint32_t h = 0; h < g->n_kv_heads; h++) {
			/* page-first: layer l's K heads, then its V heads, each [token][dim] */
			size_t ko = (((size_t)l * 2 * g->n_kv_heads) + h) * slab * 2;
			size_t vo = (((size_t)l * 2 + 1) * g->n_kv_heads + h) * slab * 2;

			kvt_load_f32(k, r + ko, slab, g->dtype);
			kvt_load_f32(v, r + vo, slab, g->dtype);
			kvt_load_f32(kd, x + ko, slab, g->dtype);
			kvt_load_f32(vd, x + vo, slab, g->dtype);
			for (uint32_t t = 0; t < T; t++)
				for (uint32_t e = 0; e < D; e++)
					q[(size_t)t * D + e] = k[((t + half) % T) * D + e];
			if (kvt_eval_attention(q, T, NULL, k, v, T, D, o) < 0 ||
			    kvt_eval_attention(q, T, NULL, kd, vd, T, D, od) < 0)
				goto out;
			*sum += kvt_eval_rel_err_sum(o, od, T, D);
			*n += T;
		}
	ret = 0;
out:
	free(k);
	free(v);
	free(kd);
	free(vd);
	free(q);
	free(o);
	free(od);
	return ret;
}
