/* SPDX-License-Identifier: MIT */
/*
 * codec_bq.c - "bq": a fixed-rate quantizer with per-channel bit allocation, built to decode
 * at memory speed on a CPU core (AVX2) and on a GPU (gpu/gpu_bq.cu), all three bit-exact.
 *
 *   bq:k=STEP,v=STEP,sink=N,outl=0..2,dup=D,kl=P:P:P:P,vl=P:P:P:P,rope=THETA
 *
 * Per slab (layer, K or V, kv head; T tokens x D channels): the first N tokens of the
 * sequence are kept exact (4: attention sinks); a row within D x step/2 of an earlier row in
 * every channel is stored as a reference to it; every channel gets its own bit width b (0..15) and
 * range, from one step per slab, delta = k (or v) x the RMS of the channels' robust ranges (x 2^p
 * of the layer's depth profile kl/vl, as uq's); b is the fewest bits whose 2^b steps cover the
 * channel, after up to `outl` extremes on each side are listed exact when that costs fewer
 * bits; the channel's step is then shrunk by a 4-bit factor 2^(-m/16) to fit its range
 * exactly.  Every row (token) of a slab has the same layout, so rows decode independently.
 * Error bound per element: s/2 <= delta/2 of its channel (plus fp16/bf16 output rounding),
 * (1 + D) x delta/2 in a duplicate row; inf, NaN and |x| >= 2^56 are listed exact.
 * rope=THETA (0: off) codes the keys in their pre-RoPE frame, where a token's key does not
 * depend on its position (narrower ranges, and repeated tokens repeat their keys): the encoder
 * rotates each key row back, the decoder forward (bq_format.h), so the bound above holds for
 * each pair (i, i + D/2) in the L2 norm.  Format: codecs/CODECS.md ("bq").
 */
#include <math.h>
#include <stdlib.h>

#include "bq_format.h"
#include "codec_bq.h"
#include "kvslab.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BQ_X86 1
#endif

enum {
	A_K,
	A_V,
	A_SINK,
	A_OUTL,
	A_DUP,
	A_KL,
	A_VL = A_KL + KVT_ARG_LIST_LEN,
	A_ROPE = A_VL + KVT_ARG_LIST_LEN,
	A_N
};

/* clang-format off */
static const struct kvt_argdef bq_args[A_N] = {
    {"k", 0.08, 1e-4, 16, 0},
    {"v", 0.04, 1e-4, 16, 0},
    {"sink", 4, 0, 1e9, 1},
    {"outl", 2, 0, BQ_MAXOUTL, 1},
    {"dup", 1, 0, 4, 0},
    KVT_ARGDEF_LIST("kl", 0, -4, 4),
    KVT_ARGDEF_LIST("vl", 0, -4, 4),
    {"rope", 0, 0, 1e9, 0},
};
/* clang-format on */

static int bq_parse(struct kvt_stage *st, const char *a)
{
	return kvt_args_parse(st, bq_args, A_N, a);
}

static int bq_canon(const struct kvt_stage *st, char *b, size_t l)
{
	return kvt_args_canon(st, bq_args, A_N, b, l);
}

/* Bytes of the stage before the slabs: magic, slab count, slab offsets (count + 1). */
static size_t bq_head(size_t ns)
{
	return 8 + 4 * (ns + 1);
}

static size_t bq_bound(const struct kvt_stage *st, const struct kvt_codec_geom *g, size_t n)
{
	(void)st;
	(void)n;
	if (kvt_geom_check(g))
		return 0;
	size_t per = (size_t)bq_slab_bound(g->block_tokens, g->head_dim);
	return bq_head(geom_nslabs(g)) + geom_nslabs(g) * per;
}

/* The step factor of slab s: k or v, times 2^p of the layer's depth (as uq's kl/vl). */
static float step_factor(const struct kvt_stage *st, const struct kvt_codec_geom *g, size_t s)
{
	int isv = slab_is_v(g, s);
	uint32_t layer = (uint32_t)(s / (2 * g->n_kv_heads));
	const double *pt = &st->arg[isv ? A_VL : A_KL];
	return (float)(st->arg[isv ? A_V : A_K] * exp2(kvt_arg_depth(pt, layer, g->n_layers)));
}

/* theta^(-2/D) of rope=theta, 0 when off. */
static double rope_ratio(const struct kvt_stage *st, uint32_t D)
{
	return st->arg[A_ROPE] > 0 ? pow(st->arg[A_ROPE], -2.0 / D) : 0.0;
}

int kvt_bq_chain_is(const struct kvt_chain *c)
{
	const struct kvt_stage *st = kvt_chain_stage(c, 0);
	return st && st->ops == &kvt_codec_bq && !kvt_chain_stage(c, 1);
}

int kvt_bq_chain_params(const struct kvt_chain *c, const struct kvt_codec_geom *g,
			struct kvt_bq_params *p)
{
	const struct kvt_stage *st = kvt_chain_stage(c, 0);
	if (!kvt_bq_chain_is(c) || kvt_geom_check(g) || g->n_layers > KVT_BQ_MAX_LAYERS)
		return -EINVAL;
	memset(p, 0, sizeof(*p));
	p->chain_id = kvt_chain_id(c);
	p->sink = (uint32_t)st->arg[A_SINK];
	p->maxoutl = (uint32_t)st->arg[A_OUTL];
	p->dup = (float)st->arg[A_DUP];
	p->n_layers = g->n_layers;
	p->rope_r = rope_ratio(st, g->head_dim);
	/* slab s is layer s / 2H, K or V by (s / H) & 1: its factor is f[s / H] */
	for (size_t i = 0; i < 2 * (size_t)g->n_layers; i++)
		p->f[i] = step_factor(st, g, i * g->n_kv_heads);
	return 0;
}

struct bq_scratch {
	float *x;
	struct bq_ext *ext;
	struct bq_choice *ch;
	float *inv, *lo;
	struct bq_chan *cp;
	int32_t *byteoff, *shift, *mask;
	float *cs, *ca;	  /* cp's s and a, side by side for vector loads */
	int32_t *ref;	  /* per row: -1 coded (or sink), else the row it repeats */
	int32_t *crow;	  /* per row: its index among the coded rows, -1 if none */
	uint8_t *first;	  /* per row: no earlier row matches it */
	uint8_t *out;	  /* per element: listed exact */
	float *tlo, *thi; /* per channel: what a value must pass to enter its extremes */
	uint32_t *nbad;	  /* per channel: uncodable values */
	float *topf;	  /* per channel: largest code */
	uint32_t *q;	  /* one row's codes */
	float *rc, *rs;	  /* rope: [T][D/2] cosines and sines of the block's positions */
	int rope_ok;	  /* rc/rs hold the block's table */
};

static void scratch_free(struct bq_scratch *s)
{
	free(s->x);
	free(s->ext);
	free(s->ch);
	free(s->inv);
	free(s->lo);
	free(s->cp);
	free(s->byteoff);
	free(s->shift);
	free(s->mask);
	free(s->cs);
	free(s->ca);
	free(s->ref);
	free(s->crow);
	free(s->first);
	free(s->out);
	free(s->tlo);
	free(s->thi);
	free(s->nbad);
	free(s->topf);
	free(s->q);
	free(s->rc);
	free(s->rs);
}

static int scratch_alloc(struct bq_scratch *s, uint32_t T, uint32_t D, int enc, int rope)
{
	memset(s, 0, sizeof(*s));
	s->x = enc ? malloc((size_t)T * D * sizeof(float)) : malloc(1);
	s->ext = malloc(D * sizeof(*s->ext));
	s->ch = malloc(D * sizeof(*s->ch));
	s->inv = malloc(D * sizeof(float));
	s->lo = malloc(D * sizeof(float));
	s->cp = malloc(D * sizeof(*s->cp));
	s->byteoff = malloc(D * sizeof(int32_t));
	s->shift = malloc(D * sizeof(int32_t));
	s->mask = malloc(D * sizeof(int32_t));
	s->cs = malloc(D * sizeof(float));
	s->ca = malloc(D * sizeof(float));
	s->ref = malloc(T * sizeof(int32_t));
	s->crow = malloc(T * sizeof(int32_t));
	s->first = malloc(T);
	s->out = calloc(enc ? (size_t)T * D : 1, 1);
	s->tlo = malloc(D * sizeof(float));
	s->thi = malloc(D * sizeof(float));
	s->nbad = malloc(D * sizeof(uint32_t));
	s->topf = malloc(D * sizeof(float));
	s->q = malloc(D * sizeof(uint32_t));
	s->rc = malloc(rope ? (size_t)T * (D / 2 + 1) * sizeof(float) : 1);
	s->rs = malloc(rope ? (size_t)T * (D / 2 + 1) * sizeof(float) : 1);
	if (!s->rc || !s->rs || !s->out || !s->tlo || !s->thi || !s->nbad || !s->topf || !s->q ||
	    !s->x || !s->ext || !s->ch || !s->inv || !s->lo || !s->cp || !s->byteoff || !s->shift ||
	    !s->mask || !s->cs || !s->ca || !s->ref || !s->crow || !s->first) {
		scratch_free(s);
		return -ENOMEM;
	}
	return 0;
}

/* The cosines and sines of positions first .. first + T - 1 (rope), once per block: the
 * polynomials at first and at 1, then the recurrence (bq_format.h; gpu_bq.cu does the same). */
static void rope_table(struct bq_scratch *sc, uint32_t T, uint32_t D, uint32_t first, double r)
{
	uint32_t h = D / 2;
	if (sc->rope_ok)
		return;
	for (uint32_t i = 0; i < h; i++) {
		double f = bq_rope_freq(r, i), c, s, c1, s1;
		bq_rope_cs((double)first, f, &c, &s);
		bq_rope_cs(1.0, f, &c1, &s1);
		for (uint32_t t = 0; t < T; t++) {
			sc->rc[(size_t)t * h + i] = BQ_D2F(c);
			sc->rs[(size_t)t * h + i] = BQ_D2F(s);
			bq_rope_step(&c, &s, c1, s1);
		}
	}
	sc->rope_ok = 1;
}

/* Row t, channel c into the channel's extremes (or its count of uncodable values). */
static inline void scan_one(struct bq_scratch *sc, uint32_t c, float v, uint32_t t)
{
	struct bq_ext *e = &sc->ext[c];
	if (!bq_codable(v)) {
		sc->nbad[c]++;
		return;
	}
	if (e->n >= 3 && v >= e->lo[2] && v < e->hi[2])
		return;
	bq_ext_add(e, v, (int)t);
	/* from the third value on, only one below lo[2] or at/above hi[2] can enter */
	sc->tlo[c] = e->n >= 3 ? e->lo[2] : INFINITY;
	sc->thi[c] = e->n >= 3 ? e->hi[2] : -INFINITY;
}

#ifdef BQ_X86
/* One side of the running extremes of eight channels: insert v where m0/m1/m2 say. */
#define BQ_INSERT(v0, v1, v2, r0, r1, r2, m0, m1, m2, v, row)                                      \
	do {                                                                                       \
		v2 = _mm256_blendv_ps(_mm256_blendv_ps(v2, v, m2), v1, m1);                        \
		r2 = _mm256_blendv_ps(_mm256_blendv_ps(r2, row, m2), r1, m1);                      \
		v1 = _mm256_blendv_ps(_mm256_blendv_ps(v1, v, m1), v0, m0);                        \
		r1 = _mm256_blendv_ps(_mm256_blendv_ps(r1, row, m1), r0, m0);                      \
		v0 = _mm256_blendv_ps(v0, v, m0);                                                  \
		r0 = _mm256_blendv_ps(r0, row, m0);                                                \
	} while (0)

/*
 * bq_ext_add() on eight channels at once, branch-free, rows in order: the three smallest
 * (strictly smaller goes first) and largest (larger or equal goes first), the same lists.
 */
__attribute__((target("avx2"))) static void scan_rows_avx2(struct bq_scratch *sc, uint32_t t0,
							   uint32_t T, uint32_t D)
{
	const __m256 huge = _mm256_set1_ps(BQ_HUGE);
	const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
	for (uint32_t c = 0; c < D; c += 8) {
		__m256 l0 = _mm256_set1_ps(INFINITY), l1 = l0, l2 = l0;
		__m256 h0 = _mm256_set1_ps(-INFINITY), h1 = h0, h2 = h0;
		__m256 none = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
		__m256 lr0 = none, lr1 = none, lr2 = none, hr0 = none, hr1 = none, hr2 = none;
		__m256i bad = _mm256_setzero_si256();
		for (uint32_t t = t0; t < T; t++) {
			if (sc->ref[t] >= 0)
				continue;
			__m256 v = _mm256_loadu_ps(sc->x + (size_t)t * D + c);
			__m256 row = _mm256_castsi256_ps(_mm256_set1_epi32((int)t));
			__m256 ok = _mm256_cmp_ps(_mm256_and_ps(v, absmask), huge, _CMP_LT_OQ);
			/* NaN, inf, huge: not ok; each counts one (all-ones is -1) */
			bad = _mm256_sub_epi32(
			    bad, _mm256_castps_si256(
				     _mm256_cmp_ps(_mm256_and_ps(v, absmask), huge, _CMP_NLT_UQ)));
			__m256 m0 = _mm256_and_ps(ok, _mm256_cmp_ps(v, l0, _CMP_LT_OQ));
			__m256 m1 = _mm256_and_ps(ok, _mm256_cmp_ps(v, l1, _CMP_LT_OQ));
			__m256 m2 = _mm256_and_ps(ok, _mm256_cmp_ps(v, l2, _CMP_LT_OQ));
			BQ_INSERT(l0, l1, l2, lr0, lr1, lr2, m0, m1, m2, v, row);
			m0 = _mm256_and_ps(ok, _mm256_cmp_ps(v, h0, _CMP_GE_OQ));
			m1 = _mm256_and_ps(ok, _mm256_cmp_ps(v, h1, _CMP_GE_OQ));
			m2 = _mm256_and_ps(ok, _mm256_cmp_ps(v, h2, _CMP_GE_OQ));
			BQ_INSERT(h0, h1, h2, hr0, hr1, hr2, m0, m1, m2, v, row);
		}
		float fl[3][8], fh[3][8];
		int32_t il[3][8], ih[3][8], nb[8];
		_mm256_storeu_ps(fl[0], l0);
		_mm256_storeu_ps(fl[1], l1);
		_mm256_storeu_ps(fl[2], l2);
		_mm256_storeu_ps(fh[0], h0);
		_mm256_storeu_ps(fh[1], h1);
		_mm256_storeu_ps(fh[2], h2);
		_mm256_storeu_ps((float *)il[0], lr0);
		_mm256_storeu_ps((float *)il[1], lr1);
		_mm256_storeu_ps((float *)il[2], lr2);
		_mm256_storeu_ps((float *)ih[0], hr0);
		_mm256_storeu_ps((float *)ih[1], hr1);
		_mm256_storeu_ps((float *)ih[2], hr2);
		_mm256_storeu_si256((__m256i *)nb, bad);
		for (int k = 0; k < 8; k++) {
			struct bq_ext *e = &sc->ext[c + k];
			for (int i = 0; i < 3; i++) {
				e->lo[i] = fl[i][k];
				e->hi[i] = fh[i][k];
				e->lot[i] = il[i][k];
				e->hit[i] = ih[i][k];
			}
			sc->nbad[c + k] = (uint32_t)nb[k];
		}
	}
}
#endif

/*
 * Scans the coded rows (ref < 0) of [t0, T) into the channels' extremes.  The order of the
 * scan does not matter (codecs/bq_format.h): the GPU's thread per channel finds the same.
 */
static void scan_extremes(struct bq_scratch *sc, uint32_t t0, uint32_t T, uint32_t D)
{
	uint32_t rows = 0;
	for (uint32_t c = 0; c < D; c++) {
		bq_ext_init(&sc->ext[c]);
		sc->tlo[c] = INFINITY;
		sc->thi[c] = -INFINITY;
		sc->nbad[c] = 0;
	}
	for (uint32_t t = t0; t < T; t++)
		rows += sc->ref[t] < 0;
#ifdef BQ_X86
	if (kvt_simd_active() && D % 8 == 0) {
		scan_rows_avx2(sc, t0, T, D);
	} else
#endif
	{
		for (uint32_t t = t0; t < T; t++) {
			const float *row = sc->x + (size_t)t * D;
			if (sc->ref[t] >= 0)
				continue;
			for (uint32_t c = 0; c < D; c++)
				if (!(row[c] >= sc->tlo[c] && row[c] < sc->thi[c]))
					scan_one(sc, c, row[c], t);
		}
	}
	/* the count of codable values, which the fast path did not keep */
	for (uint32_t c = 0; c < D; c++)
		sc->ext[c].n = rows - sc->nbad[c];
}

#ifdef BQ_X86
/* bq_quant() on eight channels: the same comparisons, the same truncation. */
__attribute__((target("avx2"))) static void
quant_row_avx2(const float *row, const struct bq_scratch *sc, uint32_t D, uint32_t *q)
{
	for (uint32_t c = 0; c < D; c += 8) {
		__m256 v = _mm256_mul_ps(
		    _mm256_sub_ps(_mm256_loadu_ps(row + c), _mm256_loadu_ps(sc->lo + c)),
		    _mm256_loadu_ps(sc->inv + c));
		__m256 top = _mm256_loadu_ps(sc->topf + c);
		__m256i r = _mm256_cvttps_epi32(v);
		r = _mm256_blendv_epi8(r, _mm256_cvttps_epi32(top),
				       _mm256_castps_si256(_mm256_cmp_ps(v, top, _CMP_GE_OQ)));
		r = _mm256_and_si256(
		    r, _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ)));
		_mm256_storeu_si256((__m256i *)(q + c), r);
	}
}
#endif

/*
 * Encodes one slab (T x D elements at in) into w.  The reference: gpu/gpu_bq.cu's encoder
 * follows it step for step.
 */
static void enc_slab(struct wbuf *w, struct bq_scratch *sc, const uint8_t *in, uint32_t T,
		     uint32_t D, uint32_t nsink, float f, float dup, unsigned maxoutl, int bf16,
		     int rope)
{
	float *x = sc->x, sumsq = 0, maxr = 0;
	uint32_t ndup = 0, ncoded = 0;
	size_t nout = 0;

	kvt_load_f32(x, in, (size_t)T * D, bf16 ? KVT_DTYPE_BF16 : KVT_DTYPE_FP16);
	if (rope) {
		/* keys into their pre-RoPE frame; a pair that cannot be rotated is listed exact
		 * (NaN here: uncodable); no extremes are listed (the pair would have to be) */
		uint32_t h = D / 2;
		for (uint32_t t = nsink; t < T; t++) {
			float *row = x + (size_t)t * D;
			const float *rc = sc->rc + (size_t)t * h, *rs = sc->rs + (size_t)t * h;
			for (uint32_t i = 0; i < h; i++) {
				if (bq_pair_codable(row[i], row[i + h], bf16))
					bq_unrope(&row[i], &row[i + h], rc[i], rs[i]);
				else
					row[i] = row[i + h] = NAN;
			}
		}
		maxoutl = 0;
	}
	/* 1. the step, from every row past the sinks */
	for (uint32_t t = 0; t < T; t++)
		sc->ref[t] = -1;
	scan_extremes(sc, nsink, T, D);
	for (uint32_t c = 0; c < D; c++) {
		float r = bq_ext_range(&sc->ext[c]), full = bq_ext_full(&sc->ext[c], bf16);
		sumsq = BQ_ADD(sumsq, BQ_MUL(r, r));
		maxr = full > maxr ? full : maxr;
	}
	float delta = bq_delta(f, sumsq, D, maxr);
	/* 2. duplicates: a row that no earlier row matches is "first"; a later row repeats the
	 * earliest first row it matches (each decision reads only the input: parallel) */
	float eps = BQ_MUL(BQ_MUL(dup, delta), 0.5f);
	/* the widest channel first: most pairs of rows differ there (a shortcut; the answer is
	 * bq_rows_match()'s) */
	uint32_t cw = 0;
	for (uint32_t c = 1; c < D; c++)
		if (bq_ext_range(&sc->ext[c]) > bq_ext_range(&sc->ext[cw]))
			cw = c;
#define BQ_NEAR(r, t)                                                                              \
	(fabsf(x[(size_t)(r)*D + cw] - x[(size_t)(t)*D + cw]) <= eps &&                            \
	 bq_rows_match(x + (size_t)(r)*D, x + (size_t)(t)*D, D, eps))
	for (uint32_t t = nsink; t < T; t++) {
		sc->first[t] = 1;
		for (uint32_t r = nsink; r < t && dup > 0; r++)
			if (BQ_NEAR(r, t)) {
				sc->first[t] = 0;
				break;
			}
	}
	for (uint32_t t = nsink; t < T; t++) {
		if (sc->first[t])
			continue;
		for (uint32_t r = nsink; r < t; r++)
			if (sc->first[r] && BQ_NEAR(r, t)) {
				sc->ref[t] = (int32_t)r;
				ndup++;
				break;
			}
	}
#undef BQ_NEAR
	/* 3. per channel bits and range over the coded rows */
	uint32_t rows = T - nsink - ndup;
	scan_extremes(sc, nsink, T, D);
	for (uint32_t c = 0; c < D; c++) {
		struct bq_choice *ch = &sc->ch[c];
		*ch = bq_choose(&sc->ext[c], delta, rows, maxoutl, bf16);
		sc->lo[c] = bq_ld(ch->lo, bf16);
		sc->cp[c] = bq_chan_params(delta, ch->bm >> 4, sc->lo[c]);
		sc->inv[c] = sc->cp[c].s > 0 ? BQ_DIV(1.0f, sc->cp[c].s) : 0.0f;
	}
	/* listed exact: what cannot be coded, and the extremes each channel chose to drop (sc->out
	 * is all zero here: the list below clears what it takes) */
	for (uint32_t c = 0; c < D; c++) {
		for (uint32_t t = nsink; t < T && sc->nbad[c]; t++)
			if (sc->ref[t] < 0 && !bq_codable(x[(size_t)t * D + c]))
				sc->out[(size_t)t * D + c] = 1;
		nout += sc->nbad[c];
		for (unsigned k = 0; k < sc->ch[c].i; k++)
			sc->out[(size_t)sc->ext[c].lot[k] * D + c] = 1;
		for (unsigned k = 0; k < sc->ch[c].j; k++)
			sc->out[(size_t)sc->ext[c].hit[k] * D + c] = 1;
		nout += sc->ch[c].i + sc->ch[c].j;
	}
	wb_f32(w, delta);
	wb_u16(w, (uint16_t)nsink);
	wb_u16(w, (uint16_t)ndup);
	wb_u32(w, (uint32_t)nout);
	uint32_t bits = 0;
	for (uint32_t c = 0; c < D; c++) {
		wb_u8(w, (uint8_t)sc->ch[c].bm);
		bits += sc->ch[c].bm & 15;
	}
	for (uint32_t c = 0; c < D; c++)
		wb_u16(w, sc->ch[c].lo);
	wb_bytes(w, in, (size_t)nsink * D * 2);
	/* duplicate rows: a bitmap, then each one's reference */
	for (uint32_t t0 = 0; t0 < T; t0 += 8) {
		uint8_t m = 0;
		for (uint32_t t = t0; t < t0 + 8 && t < T; t++)
			m |= (uint8_t)((sc->ref[t] >= 0) << (t - t0));
		wb_u8(w, m);
	}
	for (uint32_t t = nsink; t < T; t++)
		if (sc->ref[t] >= 0) {
			if (bq_ref_bytes(T) == 1)
				wb_u8(w, (uint8_t)sc->ref[t]);
			else
				wb_u16(w, (uint16_t)sc->ref[t]);
		}
	/* outliers of the coded rows in (channel, row) order; their codes are 0 */
	for (uint32_t c = 0; c < D; c++)
		for (uint32_t t = nsink; t < T && sc->nbad[c] + sc->ch[c].i + sc->ch[c].j; t++) {
			if (!sc->out[(size_t)t * D + c])
				continue;
			sc->out[(size_t)t * D + c] = 0;
			wb_u32(w, c * T + t);
			wb_bytes(w, in + 2 * ((size_t)t * D + c), 2);
			x[(size_t)t * D + c] = sc->lo[c];
		}
	size_t rb = (bits + 7) / 8;
	uint8_t *codes = wb_reserve(w, rows * rb + BQ_PAD);
	if (!codes)
		return;
	memset(codes, 0, rows * rb + BQ_PAD);
	int simd = kvt_simd_active() && D % 8 == 0;
	for (uint32_t c = 0; c < D; c++)
		sc->topf[c] = (float)((1u << (sc->ch[c].bm & 15)) - 1);
	for (uint32_t t = nsink; t < T; t++) {
		if (sc->ref[t] >= 0)
			continue;
		uint8_t *o = codes + (size_t)ncoded++ * rb;
		uint64_t acc = 0;
		unsigned nb = 0;
		const float *row = x + (size_t)t * D;
		uint32_t *q = sc->q;
#ifdef BQ_X86
		if (simd)
			quant_row_avx2(row, sc, D, q);
		else
#endif
			for (uint32_t c = 0; c < D; c++)
				q[c] = bq_quant(row[c], sc->lo[c], sc->inv[c], sc->ch[c].bm & 15);
		for (uint32_t c = 0; c < D; c++) {
			unsigned b = sc->ch[c].bm & 15;
			acc |= (uint64_t)q[c] << nb;
			nb += b;
			while (nb >= 8) {
				*o++ = (uint8_t)acc;
				acc >>= 8;
				nb -= 8;
			}
		}
		if (nb)
			*o = (uint8_t)acc;
	}
}

static ssize_t bq_enc(const struct kvt_stage *st, const struct kvt_codec_geom *g,
		      const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	uint32_t T = g->block_tokens, D = g->head_dim;
	size_t ns = geom_nslabs(g), slab = geom_slab(g);
	struct bq_scratch sc;
	struct wbuf w;

	if (kvt_geom_check(g) || n != kvt_geom_block_bytes(g))
		return -EINVAL;
	double rr = rope_ratio(st, D);
	if (scratch_alloc(&sc, T, D, 1, rr > 0))
		return -ENOMEM;
	uint32_t nsink = sink_rows(g, st->arg[A_SINK]);
	if (rr > 0)
		rope_table(&sc, T, D, g->first_token, rr);
	wb_init(&w, dst, cap);
	wb_u32(&w, rr > 0 ? BQ_MAGIC_ROPE : BQ_MAGIC);
	wb_u32(&w, (uint32_t)ns);
	uint8_t *offs = wb_reserve(&w, 4 * (ns + 1));
	for (size_t s = 0; s < ns && !w.err; s++) {
		st32(offs + 4 * s, (uint32_t)w.len);
		enc_slab(&w, &sc, src + s * slab * 2, T, D, nsink, step_factor(st, g, s),
			 (float)st->arg[A_DUP], (unsigned)st->arg[A_OUTL],
			 g->dtype == KVT_DTYPE_BF16, rr > 0 && !slab_is_v(g, s));
	}
	if (!w.err)
		st32(offs + 4 * ns, (uint32_t)w.len);
	scratch_free(&sc);
	return w.err ? w.err : (ssize_t)w.len;
}

/* ---- decoding ----------------------------------------------------------------------- */

/* A slab's parsed header: where its parts are, checked against the geometry. */
struct bq_slab {
	float delta;
	uint32_t nsink, ndup, nout, rb;
	const uint8_t *bm, *lo, *sink, *dmap, *refs, *outl, *codes;
};

/* Parses and checks slab p[len] of T x D; fills sc->ref and sc->crow.  0 or -EBADMSG. */
static int parse_slab(const uint8_t *p, size_t len, uint32_t T, uint32_t D, struct bq_slab *s,
		      struct bq_scratch *sc)
{
	struct rbuf r;
	uint32_t bits = 0, rows, nd = 0, nc = 0;

	rb_init(&r, p, len);
	s->delta = rb_f32(&r);
	s->nsink = rb_u16(&r);
	s->ndup = rb_u16(&r);
	s->nout = rb_u32(&r);
	s->bm = rb_take(&r, D);
	s->lo = rb_take(&r, (size_t)D * 2);
	if (r.err || s->nsink > T || s->ndup > T - s->nsink || !isfinite(s->delta) ||
	    !(s->delta >= 0))
		return -EBADMSG;
	rows = T - s->nsink - s->ndup;
	if (s->nout > (size_t)rows * D)
		return -EBADMSG;
	for (uint32_t c = 0; c < D; c++) {
		if ((s->bm[c] & 15) > BQ_MAXBITS)
			return -EBADMSG;
		bits += s->bm[c] & 15;
	}
	s->rb = (bits + 7) / 8;
	s->sink = rb_take(&r, (size_t)s->nsink * D * 2);
	s->dmap = rb_take(&r, (T + 7) / 8);
	s->refs = rb_take(&r, (size_t)s->ndup * bq_ref_bytes(T));
	s->outl = rb_take(&r, (size_t)s->nout * 6);
	s->codes = rb_take(&r, (size_t)rows * s->rb + BQ_PAD);
	if (r.err || r.pos != len)
		return -EBADMSG;
	for (unsigned i = 0; i < BQ_PAD; i++)
		if (s->codes[(size_t)rows * s->rb + i])
			return -EBADMSG;
	/* duplicate rows: past the sinks, each naming an earlier coded row */
	for (uint32_t t = 0; t < T; t++) {
		int d = s->dmap[t / 8] >> (t % 8) & 1;
		sc->ref[t] = -1;
		sc->crow[t] = -1;
		if (d) {
			uint32_t ref =
			    bq_ref_bytes(T) == 1 ? s->refs[nd] : ld16(s->refs + 2 * (size_t)nd);
			if (t < s->nsink || nd == s->ndup || ref >= t || ref < s->nsink ||
			    sc->ref[ref] >= 0)
				return -EBADMSG;
			sc->ref[t] = (int32_t)ref;
			nd++;
		} else if (t >= s->nsink) {
			sc->crow[t] = (int32_t)nc++;
		}
	}
	if (nd != s->ndup || (T % 8 && s->dmap[T / 8] >> (T % 8)))
		return -EBADMSG;
	/* outlier keys strictly increasing, each in a coded row */
	for (uint32_t i = 0; i < s->nout; i++) {
		uint32_t k = ld32(s->outl + 6 * (size_t)i);
		if (k >= T * D || sc->crow[k % T] < 0 ||
		    (i && k <= ld32(s->outl + 6 * (size_t)i - 6)))
			return -EBADMSG;
	}
	return 0;
}

/* Per-channel decode tables; -EBADMSG if a range start is not finite. */
static int chan_tables(const struct bq_slab *s, uint32_t D, int bf16, struct bq_scratch *sc)
{
	uint32_t off = 0;
	for (uint32_t c = 0; c < D; c++) {
		float lo = bq_ld(ld16(s->lo + 2 * c), bf16);
		unsigned b = s->bm[c] & 15;
		if (!bq_codable(lo))
			return -EBADMSG;
		sc->cp[c] = bq_chan_params(s->delta, s->bm[c] >> 4, lo);
		sc->cs[c] = sc->cp[c].s;
		sc->ca[c] = sc->cp[c].a;
		sc->byteoff[c] = (int32_t)(off >> 3);
		sc->shift[c] = (int32_t)(off & 7);
		sc->mask[c] = (int32_t)((1u << b) - 1);
		off += b;
	}
	return 0;
}

static void dec_rows_scalar(const struct bq_slab *s, const struct bq_scratch *sc, uint32_t T,
			    uint32_t D, int bf16, uint8_t *out)
{
	for (uint32_t t = s->nsink; t < T; t++) {
		if (sc->crow[t] < 0)
			continue;
		const uint8_t *row = s->codes + (size_t)sc->crow[t] * s->rb;
		uint8_t *o = out + (size_t)t * D * 2;
		for (uint32_t c = 0; c < D; c++) {
			uint32_t q =
			    (ld32(row + sc->byteoff[c]) >> sc->shift[c]) & (uint32_t)sc->mask[c];
			st16(o + 2 * c, bq_st(bq_dequant(q, sc->cp[c]), bf16));
		}
	}
}

/*
 * rope: every row past the sinks, coded or duplicate (decoded from the codes of the row it
 * repeats), in the pre-RoPE frame, rotated to its own position (bq_rerope()).
 */
static void dec_rows_rope_scalar(const struct bq_slab *s, const struct bq_scratch *sc, uint32_t T,
				 uint32_t D, int bf16, uint8_t *out)
{
	uint32_t h = D / 2;
	for (uint32_t t = s->nsink; t < T; t++) {
		int32_t cr = sc->crow[t] >= 0 ? sc->crow[t] : sc->crow[sc->ref[t]];
		const uint8_t *row = s->codes + (size_t)cr * s->rb;
		const float *rc = sc->rc + (size_t)t * h, *rs = sc->rs + (size_t)t * h;
		uint8_t *o = out + (size_t)t * D * 2;
		for (uint32_t i = 0; i < h; i++) {
			uint32_t c = i + h;
			uint32_t qa =
			    (ld32(row + sc->byteoff[i]) >> sc->shift[i]) & (uint32_t)sc->mask[i];
			uint32_t qb =
			    (ld32(row + sc->byteoff[c]) >> sc->shift[c]) & (uint32_t)sc->mask[c];
			float a = bq_dequant(qa, sc->cp[i]), b = bq_dequant(qb, sc->cp[c]);
			bq_rerope(&a, &b, rc[i], rs[i]);
			st16(o + 2 * i, bq_st(a, bf16));
			st16(o + 2 * c, bq_st(b, bf16));
		}
	}
}

#ifdef BQ_X86
/* Eight floats to fp16 or bf16 (round to nearest even) at o. */
__attribute__((target("avx2,f16c"))) static inline void st8_avx2(uint8_t *o, __m256 v, int bf16)
{
	if (!bf16) {
		_mm_storeu_si128((__m128i *)o,
				 _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
	} else {
		/* round to nearest even on the bits (no NaN: the inputs are finite and the sum of
		 * two finite floats of this size is) */
		__m256i u = _mm256_castps_si256(v);
		__m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
		u = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd));
		u = _mm256_srli_epi32(u, 16);
		__m128i hh =
		    _mm_packus_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
		_mm_storeu_si128((__m128i *)o, hh);
	}
}

/* Eight channels from c of a row of codes, dequantized. */
__attribute__((target("avx2"))) static inline __m256
deq8_avx2(const int *row, const struct bq_scratch *sc, uint32_t c)
{
	__m256i bo = _mm256_loadu_si256((const __m256i *)(sc->byteoff + c));
	__m256i sh = _mm256_loadu_si256((const __m256i *)(sc->shift + c));
	__m256i mk = _mm256_loadu_si256((const __m256i *)(sc->mask + c));
	__m256i q = _mm256_i32gather_epi32(row, bo, 1);
	q = _mm256_and_si256(_mm256_srlv_epi32(q, sh), mk);
	__m256 s8 = _mm256_loadu_ps(sc->cs + c), a8 = _mm256_loadu_ps(sc->ca + c);
	return _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q), s8), a8);
}

/* dec_rows_rope_scalar() eight pairs at a time (D/2 a multiple of 8). */
__attribute__((target("avx2,f16c"))) static void dec_rows_rope_avx2(const struct bq_slab *s,
								    const struct bq_scratch *sc,
								    uint32_t T, uint32_t D,
								    int bf16, uint8_t *out)
{
	uint32_t h = D / 2;
	for (uint32_t t = s->nsink; t < T; t++) {
		int32_t cr = sc->crow[t] >= 0 ? sc->crow[t] : sc->crow[sc->ref[t]];
		const int *row = (const int *)(s->codes + (size_t)cr * s->rb);
		const float *rc = sc->rc + (size_t)t * h, *rs = sc->rs + (size_t)t * h;
		uint8_t *o = out + (size_t)t * D * 2;
		for (uint32_t i = 0; i < h; i += 8) {
			__m256 a = deq8_avx2(row, sc, i), b = deq8_avx2(row, sc, i + h);
			__m256 c8 = _mm256_loadu_ps(rc + i), s8 = _mm256_loadu_ps(rs + i);
			__m256 ra = _mm256_sub_ps(_mm256_mul_ps(a, c8), _mm256_mul_ps(b, s8));
			__m256 rb = _mm256_add_ps(_mm256_mul_ps(b, c8), _mm256_mul_ps(a, s8));
			st8_avx2(o + 2 * i, ra, bf16);
			st8_avx2(o + 2 * (i + h), rb, bf16);
		}
	}
}

__attribute__((target("avx2,f16c"))) static void dec_rows_avx2(const struct bq_slab *s,
							       const struct bq_scratch *sc,
							       uint32_t T, uint32_t D, int bf16,
							       uint8_t *out)
{
	for (uint32_t t = s->nsink; t < T; t++) {
		if (sc->crow[t] < 0)
			continue;
		const int *row = (const int *)(s->codes + (size_t)sc->crow[t] * s->rb);
		uint8_t *o = out + (size_t)t * D * 2;
		for (uint32_t c = 0; c < D; c += 8) {
			__m256i bo = _mm256_loadu_si256((const __m256i *)(sc->byteoff + c));
			__m256i sh = _mm256_loadu_si256((const __m256i *)(sc->shift + c));
			__m256i mk = _mm256_loadu_si256((const __m256i *)(sc->mask + c));
			__m256i q = _mm256_i32gather_epi32(row, bo, 1);
			q = _mm256_and_si256(_mm256_srlv_epi32(q, sh), mk);
			__m256 s8 = _mm256_loadu_ps(sc->cs + c), a8 = _mm256_loadu_ps(sc->ca + c);
			__m256 v = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q), s8), a8);
			if (!bf16) {
				_mm_storeu_si128((__m128i *)(o + 2 * c),
						 _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT |
									_MM_FROUND_NO_EXC));
			} else {
				/* round to nearest even on the bits (no NaN: the inputs are
				 * finite and the sum of two finite floats of this size is) */
				__m256i u = _mm256_castps_si256(v);
				__m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16),
							       _mm256_set1_epi32(1));
				u = _mm256_add_epi32(
				    u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd));
				u = _mm256_srli_epi32(u, 16);
				__m128i h = _mm_packus_epi32(_mm256_castsi256_si128(u),
							     _mm256_extracti128_si256(u, 1));
				_mm_storeu_si128((__m128i *)(o + 2 * c), h);
			}
		}
	}
}
#endif

static void dec_rows(const struct bq_slab *s, const struct bq_scratch *sc, uint32_t T, uint32_t D,
		     int bf16, int rope, int simd, uint8_t *out)
{
#ifdef BQ_X86
	if (simd && rope && D % 16 == 0) {
		dec_rows_rope_avx2(s, sc, T, D, bf16, out);
		return;
	}
	if (simd && !rope) {
		dec_rows_avx2(s, sc, T, D, bf16, out);
		return;
	}
#endif
	(void)simd;
	if (rope)
		dec_rows_rope_scalar(s, sc, T, D, bf16, out);
	else
		dec_rows_scalar(s, sc, T, D, bf16, out);
}

static ssize_t bq_dec(const struct kvt_stage *st, const struct kvt_codec_geom *g,
		      const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	uint32_t T = g->block_tokens, D = g->head_dim;
	size_t ns = geom_nslabs(g), slab = geom_slab(g), raw = kvt_geom_block_bytes(g);
	int bf16 = g->dtype == KVT_DTYPE_BF16, rc = 0;
	struct bq_scratch sc;

	double rr = rope_ratio(st, D);
	if (kvt_geom_check(g) || cap < raw)
		return -EBADMSG;
	if (n < bq_head(ns) || ld32(src) != (rr > 0 ? BQ_MAGIC_ROPE : BQ_MAGIC) ||
	    ld32(src + 4) != ns || ld32(src + 8) != bq_head(ns) || ld32(src + 8 + 4 * ns) != n)
		return -EBADMSG;
	if (scratch_alloc(&sc, T, D, 0, rr > 0))
		return -ENOMEM;
	int simd = kvt_simd_active() && D % 8 == 0;
	for (size_t s = 0; s < ns && !rc; s++) {
		uint32_t a = ld32(src + 8 + 4 * s), b = ld32(src + 12 + 4 * s);
		struct bq_slab sl;
		uint8_t *out = dst + s * slab * 2;
		if (b < a || b > n || parse_slab(src + a, b - a, T, D, &sl, &sc) ||
		    chan_tables(&sl, D, bf16, &sc)) {
			rc = -EBADMSG;
			break;
		}
		memcpy(out, sl.sink, (size_t)sl.nsink * D * 2);
		int rope = rr > 0 && !slab_is_v(g, s);
		if (rope)
			rope_table(&sc, T, D, g->first_token, rr);
		dec_rows(&sl, &sc, T, D, bf16, rope, simd, out);
		for (uint32_t i = 0; i < sl.nout; i++) {
			uint32_t k = ld32(sl.outl + 6 * (size_t)i);
			memcpy(out + 2 * ((size_t)(k % T) * D + k / T), sl.outl + 6 * (size_t)i + 4,
			       2);
		}
		/* duplicates copy their (outlier-patched) coded rows (rope: decoded above) */
		for (uint32_t t = sl.nsink; t < T && !rope; t++)
			if (sc.ref[t] >= 0)
				memcpy(out + (size_t)t * D * 2, out + (size_t)sc.ref[t] * D * 2,
				       (size_t)D * 2);
	}
	scratch_free(&sc);
	return rc ? rc : (ssize_t)raw;
}

const struct kvt_codec_ops kvt_codec_bq = {
    .name = "bq",
    .flags = KVT_CODEC_LOSSY | KVT_CODEC_KV,
    .parse = bq_parse,
    .canon = bq_canon,
    .max_encoded_size = bq_bound,
    .encode = bq_enc,
    .decode = bq_dec,
};
