/* SPDX-License-Identifier: MIT */
/*
 * predict_score.c - scoring of blocks against a layer's queries from their digests, and the
 * choice of each row's blocks (docs/PREDICTOR.md "Selection").  Digest layout: predict.c.
 */
#include "predict_int.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

/* Bits of a byte as floats, so a row of bits can be accumulated with vector FMAs. */
#define M1(x)                                                                                      \
	{                                                                                          \
		(x) & 1, ((x) >> 1) & 1, ((x) >> 2) & 1, ((x) >> 3) & 1, ((x) >> 4) & 1,           \
		    ((x) >> 5) & 1, ((x) >> 6) & 1, ((x) >> 7) & 1                                 \
	}
#define M4(x)  M1(x), M1((x) + 1), M1((x) + 2), M1((x) + 3)
#define M16(x) M4(x), M4((x) + 4), M4((x) + 8), M4((x) + 12)
#define M64(x) M16(x), M16((x) + 16), M16((x) + 32), M16((x) + 48)
static const float bits8[256][8]
    __attribute__((aligned(32))) = {M64(0), M64(64), M64(128), M64(192)};

/* GCC/Clang vector extension: SSE at the baseline x86-64 ISA, NEON on arm64, at -O2 */
typedef float v4f __attribute__((vector_size(16)));

/* ---- scoring ---- */

static inline bool usable(const struct kvt_pred *p, uint32_t b, uint32_t layer, uint32_t ctx)
{
	uint32_t n;

	if (b >= p->cap)
		return false;
	n = p->ntok[(size_t)b * p->L + layer];
	return n && (uint64_t)b * p->T + n <= ctx;
}

static float lse(const float *x, uint32_t n)
{
	float m = -FLT_MAX, z = 0;

	for (uint32_t i = 0; i < n; i++)
		m = x[i] > m ? x[i] : m;
	for (uint32_t i = 0; i < n; i++)
		z += expf(x[i] - m);
	return m + logf(z);
}

/* Log-mass estimates of one block for the G query heads qf[0..G) of kv head h. */
static void score_full(struct kvt_pred *p, uint32_t b, uint32_t layer, uint32_t h, const float *qf,
		       uint32_t G, float *lm)
{
	const uint8_t *dg = digest_at(p, b, layer, h);
	const uint16_t *a = (const uint16_t *)dg, *bb = a + p->D;
	uint32_t D = p->D, n = p->ntok[(size_t)b * p->L + layer];

	if (p->kind != KVT_PRED_DIGEST_QKEYS) {
		for (uint32_t j = 0; j < G; j++) {
			const float *q = qf + (size_t)j * D;
			float s = 0, c = 0;
			for (uint32_t d = 0; d < D; d++) {
				float x = h2f(a[d]), y = h2f(bb[d]);
				if (p->kind == KVT_PRED_DIGEST_MINMAX) {
					s += fmaxf(q[d] * x, q[d] * y);
				} else {
					s += q[d] * x;
					if (p->kind == KVT_PRED_DIGEST_MEANSTD)
						c += q[d] * q[d] * y * y;
				}
			}
			/* Quest ranks by the bound alone; the others estimate a mass */
			lm[j] = s * p->scale + 0.5f * c * p->scale * p->scale;
			if (p->kind != KVT_PRED_DIGEST_MINMAX)
				lm[j] += logf((float)n);
		}
		return;
	}

	/* key_d(s) = base_d + step_d code_d(s): accumulate step_d code_d(s) over the coded
	 * dims per query head, one expansion of the rows shared by the group's heads */
	const uint8_t *map = dg + 4 * (size_t)D, *row = map + (D + 3) / 4;
	uint32_t rb = p->rowbytes, span = rb * 8;
	v4f *acc = (v4f *)p->acc, *code = (v4f *)p->acc + (size_t)G * span / 4;
	float *base = p->base;

	for (uint32_t j = 0; j < G; j++) {
		const float *q = qf + (size_t)j * D;
		float c0 = 0;
		for (uint32_t d = 0; d < D; d++)
			c0 += q[d] * h2f(a[d]);
		base[j] = c0;
	}
	memset(p->acc, 0, sizeof(float) * G * span);
	for (uint32_t d = 0; d < D; d++) {
		uint32_t c = dclass(map, d);
		float x, st;

		if (!c)
			continue;
		x = h2f(a[d]);
		/* class 1: x + (y-x) bit; class 2: x + (code+1/2)(y-x)/4, code = 2 high + low */
		st = c == 1 ? h2f(bb[d]) - x : (h2f(bb[d]) - x) * 0.25f;
		for (uint32_t i = 0; i < rb; i++) {
			const v4f *hi = (const v4f *)bits8[row[i]];
			const v4f *lo = (const v4f *)bits8[row[(c == 2) * rb + i]];
			code[2 * i] = c == 2 ? 2 * hi[0] + lo[0] : hi[0];
			code[2 * i + 1] = c == 2 ? 2 * hi[1] + lo[1] : hi[1];
		}
		for (uint32_t j = 0; j < G; j++) {
			float w = qf[(size_t)j * D + d] * st;
			v4f wv = {w, w, w, w}, *ac = acc + (size_t)j * span / 4;
			if (c == 2)
				base[j] += 0.5f * w; /* levels sit mid-step */
			for (uint32_t i = 0; i < span / 4; i++)
				ac[i] += wv * code[i];
		}
		row += (size_t)c * rb;
	}
	for (uint32_t j = 0; j < G; j++) {
		float *ac = p->acc + (size_t)j * span;
		for (uint32_t s = 0; s < n; s++)
			ac[s] = (ac[s] + base[j]) * p->scale;
		lm[j] = lse(ac, n);
	}
}

/* First stage of QKEYS scoring: Gaussian log-sum-exp estimate from the mean and per-dim
 * variance of the reconstructed keys, which the popcounts of the rows give exactly. */
static void score_coarse(struct kvt_pred *p, uint32_t b, uint32_t layer, uint32_t h,
			 const float *qf, uint32_t G, float *lm)
{
	const uint8_t *dg = digest_at(p, b, layer, h);
	const uint16_t *a = (const uint16_t *)dg, *bb = a + p->D;
	const uint8_t *map = dg + 4 * (size_t)p->D, *row = map + (p->D + 3) / 4;
	uint32_t D = p->D, rb = p->rowbytes, n = p->ntok[(size_t)b * p->L + layer];
	float *mean = p->fkeys, *var = p->fkeys + D, inv = 1.0f / (float)n;

	for (uint32_t d = 0; d < D; d++) {
		uint32_t c = dclass(map, d), hi = 0, lo = 0, both = 0;
		float x = h2f(a[d]), y = h2f(bb[d]);

		for (uint32_t i = 0; i < rb * (c > 0); i++)
			hi += (uint32_t)__builtin_popcount(row[i]);
		if (c == 2)
			for (uint32_t i = 0; i < rb; i++) {
				lo += (uint32_t)__builtin_popcount(row[rb + i]);
				both += (uint32_t)__builtin_popcount(row[i] & row[rb + i]);
			}
		if (c == 0) {
			mean[d] = x;
			var[d] = 0;
		} else if (c == 1) {
			float f = hi * inv;
			mean[d] = x + (y - x) * f;
			var[d] = (y - x) * (y - x) * f * (1 - f);
		} else {
			float st = (y - x) * 0.25f, e1 = (2.0f * hi + lo) * inv;
			float e2 = (4.0f * hi + lo + 4.0f * both) * inv;
			mean[d] = x + (e1 + 0.5f) * st;
			var[d] = st * st * fmaxf(e2 - e1 * e1, 0);
		}
		row += (size_t)c * rb;
	}
	for (uint32_t j = 0; j < G; j++) {
		const float *q = qf + (size_t)j * D;
		float s = 0, v = 0;
		for (uint32_t d = 0; d < D; d++) {
			s += q[d] * mean[d];
			v += q[d] * q[d] * var[d];
		}
		lm[j] = logf((float)n) + s * p->scale + 0.5f * v * p->scale * p->scale;
	}
}

int kvt_pred_block_logmass(struct kvt_pred *p, uint32_t block, uint32_t layer, const uint16_t *q,
			   float *out)
{
	CHECK_HANDLE(p);
	if (!q || !out || layer >= p->L)
		return fail(p, -EINVAL, "block_logmass: NULL argument or layer %u >= %u", layer,
			    p->L);
	if (block >= p->cap || !p->ntok[(size_t)block * p->L + layer])
		return fail(p, -ENOENT, "block_logmass: block %u has no digest for layer %u", block,
			    layer);
	for (size_t i = 0; i < (size_t)p->QH * p->D; i++)
		p->qf[i] = h2f(q[i]);
	for (uint32_t h = 0; h < p->H; h++)
		score_full(p, block, layer, h, p->qf + (size_t)h * p->G * p->D, p->G,
			   out + (size_t)h * p->G);
	return 0;
}

static int cand_cmp(const void *x, const void *y)
{
	const struct cand *a = x, *b = y;

	if (a->s != b->s)
		return a->s > b->s ? -1 : 1;
	return a->b < b->b ? -1 : 1;
}

static inline void cand_swap(struct cand *a, struct cand *b)
{
	struct cand t = *a;

	*a = *b;
	*b = t;
}

/* Puts the k best of c[0..n) first, in order (ties: lower block first).  Quickselect with a
 * middle pivot; cand_cmp is a strict total order, so equal keys cannot stall it. */
static void top_k(struct cand *c, uint32_t n, uint32_t k)
{
	if (k == 0 || n == 0)
		return;
	if (k < n) {
		uint32_t lo = 0, hi = n - 1;
		while (lo < hi) {
			uint32_t st = lo;
			cand_swap(&c[lo + (hi - lo) / 2], &c[hi]);
			for (uint32_t i = lo; i < hi; i++)
				if (cand_cmp(&c[i], &c[hi]) < 0)
					cand_swap(&c[i], &c[st++]);
			cand_swap(&c[st], &c[hi]);
			if (st == k - 1)
				break;
			if (st > k - 1)
				hi = st - 1;
			else
				lo = st + 1;
		}
	}
	qsort(c, k < n ? k : n, sizeof(*c), cand_cmp);
}

/* Row scores of kv head h's rows from lm: per query head, its estimated log-mass; for a row
 * shared by a GQA group, the sum over its query heads of each head's estimated share of mass,
 * so that every head weighs the same whatever its scale (mass recall is averaged over heads). */
static void row_scores(struct kvt_pred *p, uint32_t h, uint32_t nb)
{
	uint32_t j0 = h * p->G;
	float *rs = p->rscore + (size_t)h * p->cap;

	if (p->rows == p->QH) {
		for (uint32_t j = j0; j < j0 + p->G; j++)
			memcpy(p->rscore + (size_t)j * p->cap, p->lm + (size_t)j * p->cap,
			       nb * sizeof(float));
		return;
	}
	for (uint32_t b = 0; b < nb; b++)
		rs[b] = 0;
	for (uint32_t j = j0; j < j0 + p->G; j++) {
		const float *l = p->lm + (size_t)j * p->cap;
		float m = -FLT_MAX, z = 0;
		for (uint32_t b = 0; b < nb; b++)
			if (p->state[b] && l[b] > m)
				m = l[b];
		for (uint32_t b = 0; b < nb; b++)
			if (p->state[b])
				z += expf(l[b] - m);
		for (uint32_t b = 0; b < nb; b++)
			if (p->state[b])
				rs[b] += expf(l[b] - m) / z;
	}
}

/* Rotates the queries in qf one position further. */
static void rope_step(struct kvt_pred *p)
{
	uint32_t half = p->D / 2;
	bool il = p->flags & KVT_PRED_ROPE_INTERLEAVED;

	for (uint32_t j = 0; j < p->QH; j++) {
		float *x = p->qf + (size_t)j * p->D;
		for (uint32_t i = 0; i < half; i++) {
			uint32_t a = il ? 2 * i : i, b = il ? 2 * i + 1 : i + half;
			float c = p->rope[2 * i], sn = p->rope[2 * i + 1], u = x[a], v = x[b];
			x[a] = u * c - v * sn;
			x[b] = v * c + u * sn;
		}
	}
}

/* Scores every usable block of context ctx for layer `layer` into rscore and full. kfree:
 * blocks to be chosen per row, which sizes the shortlist. */
void pred_score_layer(struct kvt_pred *p, uint32_t layer, const uint16_t *q, uint32_t ctx,
		      uint32_t kfree, bool next)
{
	uint32_t nb = (uint32_t)(((uint64_t)ctx + p->T - 1) / p->T), s, r;
	uint32_t nrow = p->rows == p->QH ? p->G : 1, want = p->shortlist * kfree;
	bool two = p->kind == KVT_PRED_DIGEST_QKEYS && p->shortlist;
	float *lmb = p->fkeys + 2 * (size_t)p->D; /* G floats past score_coarse's scratch */

	forced_range(p, nb, &s, &r);
	for (size_t i = 0; i < (size_t)p->QH * p->D; i++)
		p->qf[i] = h2f(q[i]);
	if (next && p->rope)
		rope_step(p);
	for (uint32_t b = 0; b < nb; b++)
		p->state[b] = usable(p, b, layer, ctx);
	for (uint32_t h = 0; h < p->H; h++) {
		uint32_t j0 = h * p->G, row0 = p->rows == p->QH ? j0 : h;
		const float *qf = p->qf + (size_t)j0 * p->D;

		for (uint32_t b = 0; b < nb; b++) {
			if (!p->state[b])
				continue;
			if (two)
				score_coarse(p, b, layer, h, qf, p->G, lmb);
			else
				score_full(p, b, layer, h, qf, p->G, lmb);
			for (uint32_t j = 0; j < p->G; j++)
				p->lm[(size_t)(j0 + j) * p->cap + b] = lmb[j];
		}
		if (two) {
			/* refine the forced blocks (they weigh in the shares) and the union of
			 * the rows' shortlists */
			row_scores(p, h, nb);
			for (uint32_t b = 0; b < nb; b++)
				if (p->state[b] && (b < s || b >= r))
					p->state[b] = 2;
			for (uint32_t i = 0; i < nrow; i++) {
				const float *rs = p->rscore + (size_t)(row0 + i) * p->cap;
				uint32_t nc = 0;
				for (uint32_t b = s; b < r; b++)
					if (p->state[b])
						p->cand[nc++] = (struct cand){rs[b], b};
				top_k(p->cand, nc, want < nc ? want : nc);
				for (uint32_t c = 0; c < want && c < nc; c++)
					p->state[p->cand[c].b] = 2;
			}
			for (uint32_t b = 0; b < nb; b++) {
				if (p->state[b] != 2)
					continue;
				score_full(p, b, layer, h, qf, p->G, lmb);
				for (uint32_t j = 0; j < p->G; j++)
					p->lm[(size_t)(j0 + j) * p->cap + b] = lmb[j];
			}
		}
		row_scores(p, h, nb);
		for (uint32_t i = 0; i < nrow; i++) {
			uint8_t *f = p->full + (size_t)(row0 + i) * p->cap;
			for (uint32_t b = 0; b < nb; b++)
				f[b] = !two || p->state[b] == 2;
		}
		if (two)
			for (uint32_t b = 0; b < nb; b++)
				p->state[b] = p->state[b] ? 1 : 0;
	}
	p->last_layer = layer;
	p->last_ctx = ctx;
}

/* Writes the rows of a context of nb blocks with n blocks each: forced blocks, then the best
 * scored ones among those usable at the last scoring (fully scored before first-stage only). */
void pred_choose(struct kvt_pred *p, uint32_t nb, uint32_t n, uint32_t *out)
{
	uint32_t s, r, f;

	forced_range(p, nb, &s, &r);
	f = s + (nb - r);
	for (uint32_t row = 0; row < p->rows; row++) {
		const float *rs = p->rscore + (size_t)row * p->cap;
		const uint8_t *full = p->full + (size_t)row * p->cap;
		uint32_t *o = out + (size_t)row * n, i = 0, nc = 0, nf = 0;

		for (uint32_t b = 0; b < s; b++)
			o[i++] = b;
		for (uint32_t b = r; b < nb; b++)
			o[i++] = b;
		/* fully scored candidates first, then first-stage-only ones after them */
		for (uint32_t b = s; b < r && b < p->cap; b++)
			if (p->state[b] && full[b])
				p->cand[nc++] = (struct cand){rs[b], b};
		nf = nc;
		top_k(p->cand, nf, n - f < nf ? n - f : nf);
		for (uint32_t c = 0; c < nf && i < n; c++)
			o[i++] = p->cand[c].b;
		if (i < n) {
			nc = 0;
			for (uint32_t b = s; b < r && b < p->cap; b++)
				if (p->state[b] && !full[b])
					p->cand[nc++] = (struct cand){rs[b], b};
			top_k(p->cand, nc, n - i < nc ? n - i : nc);
			for (uint32_t c = 0; c < nc && i < n; c++)
				o[i++] = p->cand[c].b;
		}
		while (i < n)
			o[i++] = UINT32_MAX;
	}
}
