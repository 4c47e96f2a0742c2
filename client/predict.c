/* SPDX-License-Identifier: MIT */
/*
 * predict.c - the predictor handle and the key digests (docs/PREDICTOR.md); scoring is in
 * predict_score.c, decode steps and prefetch in predict_sched.c.
 *
 * QKEYS digest of one (block, layer, kv head), D dims, T tokens, n <= T tokens present:
 *
 *   +-------------+-------------+-----------------+--------------------------------------+
 *   | a[D] fp16   | b[D] fp16   | class[D] 2 bits | rows: ceil(T/8) bytes each, bit s =   |
 *   |             |             | (0, 1 or 2 bits)| token s; per dim ascending: class 1:  |
 *   |             |             |                 | one row; class 2: high row, low row   |
 *   +-------------+-------------+-----------------+--------------------------------------+
 *
 *   class 0: key_d ~ a (the block mean of dim d)
 *   class 1: key_d ~ bit ? b : a, split at the mean; a, b = means of the two sides
 *   class 2: key_d ~ a + (code + 1/2) (b - a) / 4, code = 2 high + low, a = min, b = max
 *
 * The dims of largest spread get class 2, then class 1, as many as the byte budget allows.
 * A block's log-mass for query q is log sum_s exp(q.key_s / sqrt(D)) over the reconstructed
 * keys; the mean and variance of the reconstruction, which the two-stage scoring's first stage
 * needs, follow exactly from the per-row popcounts.
 */
#include "predict_int.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

/* ---- creation ---- */

static size_t qkeys_fixed(uint32_t D)
{
	return 4 * (size_t)D + (D + 3) / 4;
}

static int resolve_kind(struct kvt_pred *p, uint32_t kind, size_t budget)
{
	size_t D = p->D, fixed = qkeys_fixed(p->D), r;

	p->rowbytes = (p->T + 7) / 8;
	if (kind == KVT_PRED_DIGEST_AUTO) {
		r = budget > fixed ? (budget - fixed) / p->rowbytes : 0;
		if (r >= D / 2 && r > 0)
			kind = KVT_PRED_DIGEST_QKEYS;
		else if (budget >= 4 * D)
			kind = KVT_PRED_DIGEST_MEANSTD;
		else
			kind = KVT_PRED_DIGEST_CENTROID;
	}
	switch (kind) {
	case KVT_PRED_DIGEST_QKEYS:
		r = budget > fixed ? (budget - fixed) / p->rowbytes : 0;
		if (r == 0)
			return fail(p, -ENOSPC,
				    "QKEYS digest needs more than %zu bytes (budget %zu)", fixed,
				    budget);
		if (r > 2 * D)
			r = 2 * D;
		p->n2 = r > D ? (uint32_t)(r - D) : 0;
		p->n1 = (uint32_t)(r - 2 * (size_t)p->n2);
		p->dbytes = fixed + (size_t)(p->n1 + 2 * p->n2) * p->rowbytes;
		break;
	case KVT_PRED_DIGEST_CENTROID:
		p->dbytes = 2 * D;
		break;
	case KVT_PRED_DIGEST_MEANSTD:
	case KVT_PRED_DIGEST_MINMAX:
		p->dbytes = 4 * D;
		break;
	default:
		return fail(p, -EINVAL, "unknown digest kind %u", kind);
	}
	if (p->dbytes > budget)
		return fail(p, -ENOSPC, "digest of %zu bytes exceeds the budget of %zu bytes",
			    p->dbytes, budget);
	p->kind = kind;
	return 0;
}

int pred_grow(struct kvt_pred *p, uint32_t need)
{
	uint32_t cap = p->cap ? p->cap : 64;
	size_t words, oldw = p->words;
	void *t;

	if (need <= p->cap)
		return 0;
	if (need > KVT_PRED_MAX_BLOCKS)
		return fail(p, -ERANGE, "block %u is past the limit of %u blocks", need - 1,
			    KVT_PRED_MAX_BLOCKS);
	while (cap < need)
		cap = cap > KVT_PRED_MAX_BLOCKS / 2 ? KVT_PRED_MAX_BLOCKS : cap * 2;
	words = BITWORDS(cap);

#define GROW(ptr, n_new, n_old)                                                                    \
	do {                                                                                       \
		t = realloc((ptr), (n_new) * sizeof(*(ptr)));                                      \
		if (!t)                                                                            \
			goto nomem;                                                                \
		(ptr) = t;                                                                         \
		memset((ptr) + (n_old), 0, ((n_new) - (n_old)) * sizeof(*(ptr)));                  \
	} while (0)

	GROW(p->dig, (size_t)cap * p->L * p->H * p->dbytes,
	     (size_t)p->cap * p->L * p->H * p->dbytes);
	GROW(p->ntok, (size_t)cap * p->L, (size_t)p->cap * p->L);
	GROW(p->res, words, oldw);
	GROW(p->req, words, oldw);
	GROW(p->req_until, (size_t)cap, (size_t)p->cap);
	GROW(p->lm, (size_t)cap * p->QH, (size_t)p->cap * p->QH);
	GROW(p->rscore, (size_t)cap * p->rows, (size_t)p->cap * p->rows);
	GROW(p->state, (size_t)cap, (size_t)p->cap);
	GROW(p->full, (size_t)cap * p->rows, (size_t)p->cap * p->rows);
	GROW(p->cand, (size_t)cap, (size_t)p->cap);
#undef GROW
	/* pred rows change stride: re-lay them out */
	t = calloc((size_t)p->L * p->rows * words, sizeof(uint64_t));
	if (!t)
		goto nomem;
	if (p->pred)
		for (size_t i = 0; i < (size_t)p->L * p->rows; i++)
			memcpy((uint64_t *)t + i * words, p->pred + i * oldw,
			       oldw * sizeof(uint64_t));
	free(p->pred);
	p->pred = t;
	p->cap = cap;
	p->words = words;
	/* lm and rscore are indexed [head][cap]: stale after a change of cap */
	p->last_ctx = 0;
	return 0;
nomem:
	/* arrays grown so far stay valid and larger than cap; nothing else changed */
	return fail(p, -ENOMEM, "out of memory growing to %u blocks", cap);
}

int kvt_pred_create(const struct kvt_pred_opts *o, struct kvt_pred **out)
{
	struct kvt_pred_opts opt = {0};
	struct kvt_pred *p;
	size_t budget;
	int ret;

	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!o || o->size < OPTS_V1_SIZE)
		return -EINVAL;
	if (o->size > sizeof(opt)) {
		for (size_t i = sizeof(opt); i < o->size; i++)
			if (((const uint8_t *)o)[i])
				return -E2BIG;
	}
	memcpy(&opt, o, o->size < sizeof(opt) ? o->size : sizeof(opt));
	if (!opt.n_layers || opt.n_layers > KVT_PRED_MAX_LAYERS || !opt.n_kv_heads ||
	    opt.n_kv_heads > KVT_PRED_MAX_HEADS || !opt.n_q_heads ||
	    opt.n_q_heads > KVT_PRED_MAX_HEADS || opt.n_q_heads % opt.n_kv_heads || !opt.head_dim ||
	    opt.head_dim > KVT_PRED_MAX_HEAD_DIM || !opt.block_tokens ||
	    opt.block_tokens > KVT_PRED_MAX_BLOCK_TOKENS ||
	    (opt.flags & ~(KVT_PRED_PER_Q_HEAD | KVT_PRED_NO_SINK | KVT_PRED_NO_RECENT |
			   KVT_PRED_ROPE_INTERLEAVED)) ||
	    opt.shortlist > 1024 || !(opt.rope_theta >= 0) ||
	    (opt.rope_theta > 0 && opt.head_dim % 2))
		return -EINVAL;

	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->L = opt.n_layers;
	p->H = opt.n_kv_heads;
	p->QH = opt.n_q_heads;
	p->D = opt.head_dim;
	p->T = opt.block_tokens;
	p->G = p->QH / p->H;
	p->flags = opt.flags;
	p->shortlist = opt.shortlist;
	p->sink = (opt.flags & KVT_PRED_NO_SINK) ? 0 : (opt.sink_blocks ? opt.sink_blocks : 1);
	p->recent =
	    (opt.flags & KVT_PRED_NO_RECENT) ? 0 : (opt.recent_blocks ? opt.recent_blocks : 1);
	p->rows = (opt.flags & KVT_PRED_PER_Q_HEAD) ? p->QH : p->H;
	p->scale = 1.0f / sqrtf((float)p->D);
	/* 6.25 % of the slice's K+V bytes: 2 * T * D * 2 / 16 */
	budget = opt.digest_bytes ? opt.digest_bytes : (size_t)p->T * p->D / 4;
	ret = resolve_kind(p, opt.digest, budget);
	if (ret < 0)
		goto err;
	ret = -ENOMEM;
	/* keys of a block to encode; or 2 D floats of score_coarse plus G log-masses */
	p->fkeys = malloc(sizeof(float) * ((size_t)(p->T + 2) * p->D + p->QH));
	p->qf = malloc(sizeof(float) * p->QH * p->D);
	p->acc = aligned_alloc(32, sizeof(float) * (p->G + 1) * p->rowbytes * 8);
	p->base = malloc(sizeof(float) * p->G);
	p->pred_ctx = calloc(p->L, sizeof(uint32_t));
	p->plist = calloc(p->L, sizeof(*p->plist));
	p->plist_n = calloc(p->L, sizeof(*p->plist_n));
	p->plist_cap = calloc(p->L, sizeof(*p->plist_cap));
	if (!p->fkeys || !p->qf || !p->acc || !p->base || !p->pred_ctx || !p->plist ||
	    !p->plist_n || !p->plist_cap)
		goto err;
	if (opt.rope_theta > 0) {
		p->rope = malloc(sizeof(float) * p->D);
		if (!p->rope)
			goto err;
		for (uint32_t i = 0; i < p->D / 2; i++) {
			double a = pow((double)opt.rope_theta, -2.0 * i / p->D);
			p->rope[2 * i] = (float)cos(a);
			p->rope[2 * i + 1] = (float)sin(a);
		}
	}
	p->magic = PRED_MAGIC;
	ret = pred_grow(p, 1);
	if (ret < 0)
		goto err;
	*out = p;
	return 0;
err:
	p->magic = PRED_MAGIC;
	kvt_pred_destroy(p);
	return ret;
}

void kvt_pred_destroy(struct kvt_pred *p)
{
	if (!p)
		return;
	if (p->magic != PRED_MAGIC)
		abort(); /* double free or not a predictor: never touch it */
	p->magic = PRED_DEAD;
	free(p->dig);
	free(p->ntok);
	free(p->res);
	free(p->req);
	free(p->pred);
	free(p->pred_ctx);
	for (uint32_t l = 0; p->plist && l < p->L; l++)
		free(p->plist[l]);
	free(p->plist);
	free(p->plist_n);
	free(p->plist_cap);
	free(p->req_until);
	free(p->fkeys);
	free(p->qf);
	free(p->rope);
	free(p->lm);
	free(p->rscore);
	free(p->state);
	free(p->full);
	free(p->acc);
	free(p->base);
	free(p->cand);
	free(p);
}

enum kvt_pred_digest kvt_pred_digest_kind(const struct kvt_pred *p)
{
	return p ? (enum kvt_pred_digest)p->kind : KVT_PRED_DIGEST_AUTO;
}

size_t kvt_pred_digest_bytes(const struct kvt_pred *p)
{
	return p ? p->dbytes : 0;
}

uint32_t kvt_pred_rows(const struct kvt_pred *p)
{
	return p ? p->rows : 0;
}

const char *kvt_pred_errmsg(const struct kvt_pred *p)
{
	return p && p->magic == PRED_MAGIC ? p->err : "not a predictor handle";
}

/* ---- digests ---- */

struct spread {
	float v;
	uint32_t d;
};

static int spread_cmp(const void *a, const void *b)
{
	const struct spread *x = a, *y = b;

	if (x->v != y->v)
		return x->v > y->v ? -1 : 1;
	return x->d < y->d ? -1 : 1;
}

static void encode_qkeys(const struct kvt_pred *p, const float *k, uint32_t n, uint8_t *out)
{
	uint32_t D = p->D, rb = p->rowbytes;
	uint16_t *a = (uint16_t *)out, *b = a + D;
	uint8_t *map = out + 4 * (size_t)D, *row = map + (D + 3) / 4;
	struct spread sp[KVT_PRED_MAX_HEAD_DIM];

	memset(out, 0, p->dbytes);
	for (uint32_t d = 0; d < D; d++) {
		double m = 0, v = 0;
		for (uint32_t s = 0; s < n; s++)
			m += k[(size_t)s * D + d];
		m /= n;
		for (uint32_t s = 0; s < n; s++)
			v += (k[(size_t)s * D + d] - m) * (k[(size_t)s * D + d] - m);
		sp[d].v = (float)v;
		sp[d].d = d;
	}
	qsort(sp, D, sizeof(sp[0]), spread_cmp);
	for (uint32_t i = 0; i < D; i++) {
		uint32_t c = i < p->n2 ? 2 : i < p->n2 + p->n1 ? 1 : 0;
		map[sp[i].d / 4] |= (uint8_t)(c << (2 * (sp[i].d % 4)));
	}
	for (uint32_t d = 0; d < D; d++) {
		uint32_t c = dclass(map, d);
		double m = 0;

		for (uint32_t s = 0; s < n; s++)
			m += k[(size_t)s * D + d];
		m /= n;
		if (c == 0) {
			a[d] = b[d] = f2h((float)m);
		} else if (c == 1) {
			double lo = 0, hi = 0;
			uint32_t nlo = 0, nhi = 0;
			for (uint32_t s = 0; s < n; s++) {
				float x = k[(size_t)s * D + d];
				if (x >= m) {
					hi += x;
					nhi++;
					row[s / 8] |= (uint8_t)(1u << (s % 8));
				} else {
					lo += x;
					nlo++;
				}
			}
			a[d] = f2h(nlo ? (float)(lo / nlo) : (float)m);
			b[d] = f2h(nhi ? (float)(hi / nhi) : (float)m);
			row += rb;
		} else {
			float lo = FLT_MAX, hi = -FLT_MAX, st;
			for (uint32_t s = 0; s < n; s++) {
				float x = k[(size_t)s * D + d];
				lo = x < lo ? x : lo;
				hi = x > hi ? x : hi;
			}
			a[d] = f2h(lo);
			b[d] = f2h(hi);
			/* code against the stored levels so that decode matches */
			lo = h2f(a[d]);
			st = (h2f(b[d]) - lo) / 4;
			for (uint32_t s = 0; s < n; s++) {
				float x = k[(size_t)s * D + d];
				int code = st > 0 ? (int)floorf((x - lo) / st) : 0;
				code = code < 0 ? 0 : code > 3 ? 3 : code;
				if (code & 2)
					row[s / 8] |= (uint8_t)(1u << (s % 8));
				if (code & 1)
					row[rb + s / 8] |= (uint8_t)(1u << (s % 8));
			}
			row += 2 * (size_t)rb;
		}
	}
}

static void encode_stats(const struct kvt_pred *p, const float *k, uint32_t n, uint8_t *out)
{
	uint32_t D = p->D;
	uint16_t *x = (uint16_t *)out, *y = x + D;

	for (uint32_t d = 0; d < D; d++) {
		double m = 0, v = 0;
		float lo = FLT_MAX, hi = -FLT_MAX;
		for (uint32_t s = 0; s < n; s++) {
			float e = k[(size_t)s * D + d];
			m += e;
			lo = e < lo ? e : lo;
			hi = e > hi ? e : hi;
		}
		m /= n;
		for (uint32_t s = 0; s < n; s++)
			v += (k[(size_t)s * D + d] - m) * (k[(size_t)s * D + d] - m);
		if (p->kind == KVT_PRED_DIGEST_MINMAX) {
			x[d] = f2h(lo);
			y[d] = f2h(hi);
		} else {
			x[d] = f2h((float)m);
			if (p->kind == KVT_PRED_DIGEST_MEANSTD)
				y[d] = f2h((float)sqrt(v / n));
		}
	}
}

int kvt_pred_add_block_layer(struct kvt_pred *p, uint32_t block, uint32_t layer, const uint16_t *k,
			     uint32_t n_tokens, size_t head_stride, size_t token_stride)
{
	int ret;

	CHECK_HANDLE(p);
	if (!k)
		return fail(p, -EINVAL, "add_block: keys are NULL");
	if (layer >= p->L)
		return fail(p, -EINVAL, "add_block: layer %u >= n_layers %u", layer, p->L);
	if (!n_tokens || n_tokens > p->T)
		return fail(p, -EINVAL, "add_block: n_tokens %u not in 1..%u", n_tokens, p->T);
	if (block >= KVT_PRED_MAX_BLOCKS)
		return fail(p, -ERANGE, "add_block: block %u >= %u", block, KVT_PRED_MAX_BLOCKS);
	if (n_tokens > 1 && token_stride < p->D)
		return fail(p, -EINVAL, "add_block: token_stride %zu < head_dim %u", token_stride,
			    p->D);
	if (p->H > 1 && head_stride < p->D)
		return fail(p, -EINVAL, "add_block: head_stride %zu < head_dim %u", head_stride,
			    p->D);
	ret = pred_grow(p, block + 1);
	if (ret < 0)
		return ret;
	for (uint32_t h = 0; h < p->H; h++) {
		for (uint32_t s = 0; s < n_tokens; s++) {
			const uint16_t *src = k + h * head_stride + s * token_stride;
			float *dst = p->fkeys + (size_t)s * p->D;
			for (uint32_t d = 0; d < p->D; d++)
				dst[d] = h2f(src[d]);
		}
		if (p->kind == KVT_PRED_DIGEST_QKEYS)
			encode_qkeys(p, p->fkeys, n_tokens, digest_at(p, block, layer, h));
		else
			encode_stats(p, p->fkeys, n_tokens, digest_at(p, block, layer, h));
	}
	p->ntok[(size_t)block * p->L + layer] = (uint16_t)n_tokens;
	if (p->last_ctx && p->last_layer == layer)
		p->last_ctx = 0; /* cached scores no longer match the digests */
	return 0;
}

int kvt_pred_add_block(struct kvt_pred *p, uint32_t block, const uint16_t *k, uint32_t n_tokens)
{
	int ret;

	CHECK_HANDLE(p);
	if (!k)
		return fail(p, -EINVAL, "add_block: keys are NULL");
	if (!n_tokens || n_tokens > p->T)
		return fail(p, -EINVAL, "add_block: n_tokens %u not in 1..%u", n_tokens, p->T);
	for (uint32_t l = 0; l < p->L; l++) {
		ret = kvt_pred_add_block_layer(p, block, l, k + (size_t)l * p->H * n_tokens * p->D,
					       n_tokens, (size_t)n_tokens * p->D, p->D);
		if (ret < 0)
			return ret;
	}
	return 0;
}
