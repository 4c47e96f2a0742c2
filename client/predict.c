/* SPDX-License-Identifier: MIT */
/*
 * predict.c - key digests and block scoring for sparse-attention prefetch (docs/PREDICTOR.md).
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
#include "kvtier_predict.h"
#include "../proto/kvt_half.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PRED_MAGIC 0x6b767470u /* "kvtp" */
#define PRED_DEAD  0xdeadbeefu

/* First version of the options ends with `flags`. */
#define OPTS_V1_SIZE (offsetof(struct kvt_pred_opts, flags) + sizeof(uint32_t))

#define BITWORDS(n) (((size_t)(n) + 63) / 64)

struct cand {
	float s;
	uint32_t b;
};

struct kvt_pred {
	uint32_t magic;
	uint32_t L, H, QH, D, T, G; /* G = query heads per kv head */
	uint32_t kind, flags, shortlist;
	uint32_t sink, recent; /* 0 when disabled by flags */
	uint32_t rows;
	size_t dbytes;	   /* digest bytes per (block, layer, kv head) */
	uint32_t n1, n2;   /* QKEYS: dims with 1 and 2 bits */
	uint32_t rowbytes; /* QKEYS: ceil(T/8) */
	float scale;	   /* 1/sqrt(D) */
	float *rope;	   /* [D/2][2]: cos, sin of one position step; NULL = no rotation */

	uint32_t cap;	     /* blocks with storage */
	size_t words;	     /* BITWORDS(cap) */
	uint8_t *dig;	     /* [cap][L][H][dbytes] */
	uint16_t *ntok;	     /* [cap][L]: tokens digested, 0 = none */
	uint64_t *res, *req; /* [words] bitsets: resident, requested */
	uint64_t *pred;	     /* [L][rows][words]: pending prediction */
	uint32_t *pred_ctx;  /* [L]: context the prediction is for, 0 = none */

	/* scratch */
	float *fkeys;	   /* [T+2][D] + [QH] */
	float *qf;	   /* [QH][D] */
	float *lm;	   /* [QH][cap] log-mass estimates */
	float *rscore;	   /* [rows][cap] row scores of the last scoring */
	uint8_t *state;	   /* [cap]: 0 not usable, 1 usable, 2 to be refined (scratch) */
	uint8_t *full;	   /* [rows][cap]: scored with the full digest (else first stage only) */
	float *acc;	   /* [G+1][rowbytes*8]: per head sums, expanded codes */
	float *base;	   /* [G]: constant term per head */
	struct cand *cand; /* [cap] */
	uint32_t last_layer, last_ctx; /* of rscore; last_ctx 0 = none */

	struct kvt_pred_counters cnt;
	char err[192];
};

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

/* ---- fp16 ---- */

static inline float h2f(uint16_t h)
{
	return kvt_half_to_float(h);
}

static inline uint16_t f2h(float f)
{
	return kvt_float_to_half(f);
}

static inline float rt16(float f) /* round through fp16, as stored */
{
	return h2f(f2h(f));
}

/* ---- errors ---- */

__attribute__((format(printf, 3, 4))) static int fail(struct kvt_pred *p, int err, const char *fmt,
						      ...)
{
	va_list ap;

	if (p) {
		va_start(ap, fmt);
		vsnprintf(p->err, sizeof(p->err), fmt, ap);
		va_end(ap);
	}
	return err;
}

#define CHECK_HANDLE(p)                                                                            \
	do {                                                                                       \
		if (!(p) || (p)->magic != PRED_MAGIC)                                              \
			return -EINVAL;                                                            \
	} while (0)

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

static int grow(struct kvt_pred *p, uint32_t need)
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
	if (!p->fkeys || !p->qf || !p->acc || !p->base || !p->pred_ctx)
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
	ret = grow(p, 1);
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

static inline uint8_t *digest_at(const struct kvt_pred *p, uint32_t block, uint32_t layer,
				 uint32_t h)
{
	return p->dig + (((size_t)block * p->L + layer) * p->H + h) * p->dbytes;
}

static inline uint32_t dclass(const uint8_t *map, uint32_t d)
{
	return (map[d / 4] >> (2 * (d % 4))) & 3;
}

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
	ret = grow(p, block + 1);
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

int kvt_pred_truncate(struct kvt_pred *p, uint32_t n_blocks)
{
	CHECK_HANDLE(p);
	for (uint32_t b = n_blocks; b < p->cap; b++) {
		memset(p->ntok + (size_t)b * p->L, 0, p->L * sizeof(*p->ntok));
		p->res[b / 64] &= ~(1ull << (b % 64));
		p->req[b / 64] &= ~(1ull << (b % 64));
	}
	memset(p->pred_ctx, 0, p->L * sizeof(*p->pred_ctx));
	p->last_ctx = 0;
	return 0;
}

/* ---- scoring ---- */

uint32_t kvt_pred_budget(uint32_t n_blocks, double fraction)
{
	double x;

	if (!(fraction > 0))
		return 0;
	if (fraction >= 1)
		return n_blocks;
	/* 0.1 * 60 is 6.000000000000001 in binary: allow for it */
	x = ceil(fraction * n_blocks - 1e-9);
	return x > n_blocks ? n_blocks : (uint32_t)x;
}

/* Forced blocks of a context of nb blocks: [0, s) and [r, nb). */
static void forced_range(const struct kvt_pred *p, uint32_t nb, uint32_t *s, uint32_t *r)
{
	*s = p->sink < nb ? p->sink : nb;
	*r = p->recent < nb ? nb - p->recent : 0;
	if (*r < *s)
		*r = *s;
}

uint32_t kvt_pred_select_count(const struct kvt_pred *p, uint32_t n_tokens, uint32_t budget)
{
	uint32_t nb, s, r, f;

	if (!p || !n_tokens)
		return 0;
	nb = (uint32_t)(((uint64_t)n_tokens + p->T - 1) / p->T);
	forced_range(p, nb, &s, &r);
	f = s + (nb - r);
	if (budget < f)
		budget = f;
	return budget < nb ? budget : nb;
}

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
static void score_layer(struct kvt_pred *p, uint32_t layer, const uint16_t *q, uint32_t ctx,
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
static void choose(struct kvt_pred *p, uint32_t nb, uint32_t n, uint32_t *out)
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

static int check_step(struct kvt_pred *p, const char *fn, uint32_t layer, uint32_t n_tokens)
{
	if (layer >= p->L)
		return fail(p, -EINVAL, "%s: layer %u >= n_layers %u", fn, layer, p->L);
	if (!n_tokens)
		return fail(p, -EINVAL, "%s: n_tokens is 0 (no key to attend to)", fn);
	/* room for this step's blocks and the next step's, so that growing (which drops the
	 * cached scores) never happens between a select and its predict_next */
	if ((uint64_t)n_tokens / p->T + 1 > KVT_PRED_MAX_BLOCKS)
		return fail(p, -ERANGE, "%s: context of %u tokens exceeds %u blocks", fn, n_tokens,
			    KVT_PRED_MAX_BLOCKS);
	return grow(p, n_tokens / p->T + 1);
}

int kvt_pred_select(struct kvt_pred *p, uint32_t layer, const uint16_t *q, uint32_t n_tokens,
		    uint32_t budget, uint32_t *out, size_t out_cap)
{
	uint32_t nb, n, s, r;
	int ret;

	CHECK_HANDLE(p);
	ret = check_step(p, "select", layer, n_tokens);
	if (ret < 0)
		return ret;
	if (!q)
		return fail(p, -EINVAL, "select: queries are NULL");
	nb = (n_tokens + p->T - 1) / p->T;
	n = kvt_pred_select_count(p, n_tokens, budget);
	if (!out || out_cap < (size_t)p->rows * n)
		return fail(p, -ENOSPC, "select: out holds %zu entries, %u rows x %u needed",
			    out ? out_cap : 0, p->rows, n);
	forced_range(p, nb, &s, &r);
	score_layer(p, layer, q, n_tokens, n - s - (nb - r), false);
	choose(p, nb, n, out);

	if (p->pred_ctx[layer] == n_tokens) {
		for (uint32_t row = 0; row < p->rows; row++) {
			const uint64_t *pr = p->pred + ((size_t)layer * p->rows + row) * p->words;
			uint64_t hits = 0, npred = 0;
			for (uint32_t i = 0; i < n; i++) {
				uint32_t b = out[(size_t)row * n + i];
				if (b == UINT32_MAX)
					continue;
				p->cnt.selected++;
				if (pr[b / 64] >> (b % 64) & 1) {
					hits++;
					if (!(p->res[b / 64] >> (b % 64) & 1))
						p->cnt.late++;
				}
			}
			for (size_t w = 0; w < p->words; w++)
				npred += (uint64_t)__builtin_popcountll(pr[w]);
			p->cnt.hit += hits;
			p->cnt.wasted += npred - hits;
		}
		p->pred_ctx[layer] = 0;
	}
	return (int)n;
}

int kvt_pred_predict_next(struct kvt_pred *p, uint32_t layer, const uint16_t *q, uint32_t n_tokens,
			  uint32_t budget, uint32_t margin, uint32_t *out, size_t out_cap)
{
	uint32_t ctx, nb, n, s, r, *sel;
	uint64_t wide;
	int ret;

	CHECK_HANDLE(p);
	if (n_tokens == UINT32_MAX)
		return fail(p, -ERANGE, "predict_next: n_tokens overflows");
	ctx = n_tokens + 1;
	ret = check_step(p, "predict_next", layer, n_tokens);
	if (ret < 0)
		return ret;
	if (!q && (p->last_ctx != n_tokens || p->last_layer != layer || !n_tokens))
		return fail(p, -EINVAL,
			    "predict_next: q is NULL but the last select was not of layer %u "
			    "with n_tokens %u",
			    layer, n_tokens);
	nb = (ctx + p->T - 1) / p->T;
	wide = (uint64_t)budget + margin;
	n = kvt_pred_select_count(p, ctx, wide > UINT32_MAX ? UINT32_MAX : (uint32_t)wide);
	if (out && out_cap < (size_t)p->rows * n)
		return fail(p, -ENOSPC, "predict_next: out holds %zu entries, %u rows x %u needed",
			    out_cap, p->rows, n);
	forced_range(p, nb, &s, &r);
	if (q) {
		/* score at the next step's context: a block that fills now counts */
		score_layer(p, layer, q, ctx, n - s - (nb - r), true);
	} else {
		/* reuse: blocks of the new context that the last scoring did not see
		 * (at most the one that just filled) are not usable for it */
		for (uint32_t b = (n_tokens + p->T - 1) / p->T; b < nb; b++)
			p->state[b] = 0;
	}
	sel = out ? out : NULL;
	if (!sel) {
		sel = malloc(sizeof(uint32_t) * p->rows * n);
		if (!sel)
			return fail(p, -ENOMEM, "predict_next: out of memory");
	}
	choose(p, nb, n, sel);
	memset(p->pred + (size_t)layer * p->rows * p->words, 0,
	       (size_t)p->rows * p->words * sizeof(uint64_t));
	for (uint32_t row = 0; row < p->rows; row++) {
		uint64_t *pr = p->pred + ((size_t)layer * p->rows + row) * p->words;
		for (uint32_t i = 0; i < n; i++) {
			uint32_t b = sel[(size_t)row * n + i];
			if (b == UINT32_MAX)
				continue;
			pr[b / 64] |= 1ull << (b % 64);
			p->cnt.predicted++;
		}
	}
	p->pred_ctx[layer] = ctx;
	if (sel != out)
		free(sel);
	return (int)n;
}

int kvt_pred_prefetch_list(struct kvt_pred *p, uint32_t *out, size_t out_cap)
{
	size_t n = 0;

	CHECK_HANDLE(p);
	for (int pass = out ? 0 : 1; pass < 2; pass++) {
		n = 0;
		for (size_t w = 0; w < p->words; w++) {
			uint64_t u = 0;
			for (uint32_t l = 0; l < p->L; l++) {
				if (!p->pred_ctx[l])
					continue;
				for (uint32_t row = 0; row < p->rows; row++)
					u |= p->pred[((size_t)l * p->rows + row) * p->words + w];
			}
			u &= ~p->res[w] & ~p->req[w];
			if (pass == 1 && out) {
				while (u) {
					uint32_t bit = (uint32_t)__builtin_ctzll(u);
					out[n++] = (uint32_t)(w * 64 + bit);
					p->req[w] |= 1ull << bit;
					u &= u - 1;
				}
			} else {
				n += (size_t)__builtin_popcountll(u);
			}
		}
		if (pass == 0 && n > out_cap)
			return fail(p, -ENOSPC, "prefetch_list: %zu blocks, out holds %zu", n,
				    out_cap);
	}
	if (out)
		p->cnt.requested += n;
	return (int)n;
}

int kvt_pred_set_resident(struct kvt_pred *p, uint32_t block, int resident)
{
	int ret;

	CHECK_HANDLE(p);
	ret = grow(p, block < KVT_PRED_MAX_BLOCKS ? block + 1 : KVT_PRED_MAX_BLOCKS + 1);
	if (ret < 0)
		return ret;
	if (resident)
		p->res[block / 64] |= 1ull << (block % 64);
	else
		p->res[block / 64] &= ~(1ull << (block % 64));
	p->req[block / 64] &= ~(1ull << (block % 64));
	return 0;
}

int kvt_pred_get_counters(const struct kvt_pred *p, struct kvt_pred_counters *c, size_t size)
{
	if (!p || p->magic != PRED_MAGIC || !c)
		return -EINVAL;
	memcpy(c, &p->cnt, size < sizeof(p->cnt) ? size : sizeof(p->cnt));
	return 0;
}

void kvt_pred_reset_counters(struct kvt_pred *p)
{
	if (p && p->magic == PRED_MAGIC)
		memset(&p->cnt, 0, sizeof(p->cnt));
}
