/* SPDX-License-Identifier: MIT */
/*
 * codec_uq.c - "uq": uniform quantization with prediction and rANS entropy coding.
 *
 *   uq:k=STEP,v=STEP,rope=THETA,sink=N,lsh=HAMMING,cn=0|1,qw=GAMMA,dq=LAMBDA,kl=P:P:P:P,vl=P:...
 *
 * Per slab (one layer, K or V, one kv head: block_tokens x head_dim):
 *  1. keys are rotated back to their pre-RoPE frame (rope=THETA, 0 = off): in that frame the
 *     keys of one token are the same wherever it stands, which the prediction below exploits;
 *  2. the first N tokens of the sequence (sink=N) are kept exact;
 *  3. each channel's mean over the block is subtracted (sent in the stream, step/8 grid);
 *  4. every token vector is predicted either by that mean or by an earlier token vector of
 *     the block (as decoded): candidates are found by SimHash (16 random hyperplanes, Hamming
 *     distance <= lsh, 0 = no prediction) and the closest one wins if it beats the mean;
 *  5. the residual is quantized with one uniform step for the whole slab,
 *     step = STEP x RMS of the slab (centred for keys; for values cn=1 centres too);
 *  6. the integers are coded with rANS in one stream per slab: the means, then per token row
 *     its table (a delta from the previous row's) and its residuals; each row picks one of
 *     80 static parametric tables (Laplace or Gaussian shape, 40 scales) by exact coded size;
 *     values past the alphabet escape to a varint list.
 * qw=GAMMA (keys, 0 = off) gives each channel pair its own step, finer where the block's keys
 * carry more energy (see uq_key_weights()), each step level with its own table offset.
 * dq=LAMBDA (0 = off) replaces rounding by dependent (trellis) quantization: two interleaved
 * quantizers chosen by a four-state machine on the indices' parity, the indices of a row
 * picked by a Viterbi search on distortion + LAMBDA x rate (see uq_dq_search()).
 * kl, vl: depth profiles of the key and value steps, in octaves (see layer_tilt()).
 * cx=1: each symbol's table also follows its channel's magnitude in the rows before it (see
 * ctx_row()); no side information.
 * kb=1: after step 1, every row goes to the coordinates of the chain's dictionary (dict.c:
 * per layer, K or V and kv head, an orthonormal basis calibrated on the model's KV), where a
 * few coordinates carry most of the energy; steps 2-6 run there, the means of step 3
 * relative to the dictionary's mean row, qw is off (its pairs are RoPE pairs) and cx is what
 * adapts the tables to the coordinates.  The stream starts with the
 * dictionary's id; the decoder answers -ENOKEY without that dictionary.
 * Error bound: |x - x^| <= step/2 per element in the coded frame (no clipping; with qw, the
 * channel's own step, at most 2^3.5 slab steps; with dq, one step), before the fp16 rounding
 * of the output; the inverse RoPE rotation keeps the pairwise L2 norm, and kb's orthonormal
 * basis each token's L2 norm (so with kb the bound holds for the token's L2 error, times
 * sqrt(head_dim)).
 *
 * This file is the codec and its passes over a block; the encoder's choices (qw's steps, the
 * rows' tables and offsets, dq's search) are in codec_uq_fit.c, what both share in
 * uq_internal.h.
 */
#include <math.h>
#include <stdlib.h>

#include "uq_internal.h"

enum {
	A_K,
	A_V,
	A_ROPE,
	A_SINK,
	A_LSH,
	A_CN,
	A_QW,
	A_DQ,
	A_CX,
	A_KB,
	A_KL,
	A_VL = A_KL + KVT_ARG_LIST_LEN,
	A_N = A_VL + KVT_ARG_LIST_LEN
};

static const struct kvt_argdef uq_args[A_N] = {
    {"k", 0.18, 1e-4, 16, 0},
    {"v", 0.058, 1e-4, 16, 0},
    {"rope", 10000, 0, 1e9, 0},
    {"sink", 0, 0, 1e9, 1},
    {"lsh", 16, 0, 16, 1},
    {"cn", 0, 0, 1, 1},
    {"qw", 0.6, 0, 2, 0},
    {"dq", 0, 0, 8, 0},
    {"cx", 0, 0, 1, 1},
    {"kb", 0, 0, 1, 1},
    {"kl", 0, -4, 4, KVT_ARG_LIST},
    {NULL, 0, -4, 4, KVT_ARG_LIST},
    {NULL, 0, -4, 4, KVT_ARG_LIST},
    {NULL, 0, -4, 4, KVT_ARG_LIST},
    {"vl", 0, -4, 4, KVT_ARG_LIST},
    {NULL, 0, -4, 4, KVT_ARG_LIST},
    {NULL, 0, -4, 4, KVT_ARG_LIST},
    {NULL, 0, -4, 4, KVT_ARG_LIST},
};

_Static_assert(A_N <= KVT_CODEC_MAX_ARGS, "uq's arguments do not fit a stage");

/*
 * Step multiplier (log2) of a layer from a depth profile (kl, vl): the list's points sit at
 * equal steps of relative depth, first layer to last, and layers between two points
 * interpolate, so one profile serves models of any depth.
 */
static double layer_tilt(const double *prof, uint32_t layer, uint32_t n_layers)
{
	double u = n_layers > 1 ? (double)layer * (KVT_ARG_LIST_LEN - 1) / (n_layers - 1) : 0;
	uint32_t j = (uint32_t)u;
	if (j >= KVT_ARG_LIST_LEN - 1)
		return prof[KVT_ARG_LIST_LEN - 1];
	return prof[j] + (u - j) * (prof[j + 1] - prof[j]);
}

#define MU_DIV 8.0f /* mean grid: step / 8 */

static int uq_parse(struct kvt_stage *st, const char *a)
{
	int rc = kvt_args_parse(st, uq_args, A_N, a);
	st->needs_dict = !rc && st->arg[A_KB] > 0;
	return rc;
}

static int uq_canon(const struct kvt_stage *st, char *b, size_t l)
{
	return kvt_args_canon(st, uq_args, A_N, b, l);
}

static size_t max_syms(const struct kvt_codec_geom *g);

static size_t uq_bound(const struct kvt_stage *st, const struct kvt_codec_geom *g, size_t n)
{
	if (kvt_geom_check(g))
		return 0;
	size_t slab = geom_slab(g), ms = max_syms(g), T = g->block_tokens;
	/* sinks raw, step, flags and classes, bitmaps, references, escapes (<= 6 bytes a
	 * symbol), lengths, stream */
	size_t per =
	    slab * 2 + 4 + 8 + 2 * ((T + 7) / 8) + packed_len(T, 13) + ms * 6 + 8 + rans_bound(ms);
	return geom_nslabs(g) * per + 8; /* + the dictionary's id */
}

static void uq_free(struct uq_work *w)
{
	if (!w)
		return;
	free(w->x);
	free(w->xh);
	free(w->mu);
	free(w->sc);
	free(w->q);
	free(w->mq);
	free(w->stp);
	free(w->qwi);
	free(w->sym);
	free(w->ref);
	free(w->hash);
	free(w->ti);
	free(w->ra);
	free(w->rows);
	free(w->hist);
	free(w->esc);
	free(w->zs);
	free(w->cat);
	free(w->pairs);
	free(w->bpk);
	free(w->bps);
	free(w->cx);
	free(w->acc);
	free(w->tr);
	free(w);
}

/* Stream symbols of a slab at most: the means, a table delta per row, the residuals. */
static size_t max_syms(const struct kvt_codec_geom *g)
{
	return geom_slab(g) + g->block_tokens + g->head_dim;
}

static struct uq_work *uq_alloc(const struct kvt_codec_geom *g)
{
	struct uq_work *w = calloc(1, sizeof(*w));
	size_t slab = geom_slab(g), ms = max_syms(g);
	if (!w)
		return NULL;
	w->T = g->block_tokens;
	w->D = g->head_dim;
	w->x = malloc(slab * sizeof(float));
	w->xh = malloc(slab * sizeof(float));
	w->mu = malloc(w->D * sizeof(float));
	w->sc = malloc((slab + 2 * w->D) * sizeof(float)); /* + two rows of scratch */
	w->q = malloc(slab * sizeof(int32_t));
	w->mq = malloc(w->D * sizeof(int32_t));
	w->stp = malloc(w->D * sizeof(float));
	w->qwi = calloc(w->D, 1);
	w->sym = malloc(ms * sizeof(uint16_t));
	w->ref = malloc((w->T + w->D) * sizeof(uint16_t)); /* + fit_offsets() scratch */
	w->hash = malloc(w->T * sizeof(uint16_t));
	w->ti = malloc(ms);
	w->ra = malloc(w->T);
	w->rows = malloc(w->T * sizeof(uint32_t));
	w->hist = malloc(RANS_PNSYM * sizeof(uint32_t));
	w->esc = malloc(ms * 6 + 8);
	w->zs = malloc(slab);
	w->cat = malloc(slab);
	w->pairs = malloc((32 * RANS_PNSYM + w->D) * sizeof(uint16_t));
	w->bpk = malloc(4 * w->D * sizeof(int32_t));
	w->bps = malloc(4 * w->D);
	w->cx = malloc(slab);
	w->acc = malloc(w->D * sizeof(uint32_t));
	w->tr = malloc(4 * w->D * sizeof(float));
	if (!w->x || !w->xh || !w->mu || !w->sc || !w->q || !w->mq || !w->stp || !w->qwi ||
	    !w->sym || !w->ref || !w->hash || !w->ti || !w->hist || !w->esc || !w->ra || !w->rows ||
	    !w->zs || !w->cat || !w->bpk || !w->bps || !w->pairs || !w->cx || !w->acc || !w->tr) {
		uq_free(w);
		return NULL;
	}
	return w;
}

/* cos/sin of every (token, frequency) of the block: sc[t*D + i] = cos, [t*D + D/2 + i] = sin */
static void rope_table(struct uq_work *w, const struct kvt_codec_geom *g, double theta)
{
	uint32_t h = w->D / 2;
	for (uint32_t i = 0; i < h; i++) {
		double f = pow(theta, -2.0 * i / w->D);
		for (uint32_t t = 0; t < w->T; t++) {
			double a = ((double)g->first_token + t) * f;
			w->sc[(size_t)t * w->D + i] = (float)cos(a);
			w->sc[(size_t)t * w->D + h + i] = (float)sin(a);
		}
	}
}

/* Rotates rows t0..t1-1 of x by their positions (sign 1) or back (sign -1). */
static void rope_rows(struct uq_work *w, float *x, uint32_t t0, uint32_t t1, float sign)
{
	uint32_t h = w->D / 2;
	for (uint32_t t = t0; t < t1; t++) {
		float *r = x + (size_t)t * w->D;
		const float *c = w->sc + (size_t)t * w->D, *s = c + h;
		for (uint32_t i = 0; i < h; i++) {
			float a = r[i], b = r[i + h], sn = sign * s[i];
			r[i] = a * c[i] - b * sn;
			r[i + h] = b * c[i] + a * sn;
		}
	}
}

/*
 * kb: rows t0..t1-1 of x times m[D][D] (x <- x m).  With m a dictionary basis the rows go to
 * its coordinates, with the transpose back; the inner loop runs along a row of m, which the
 * compiler vectorises.
 */
static inline __attribute__((always_inline)) void xform_body(float *restrict x, uint32_t t0,
							     uint32_t t1, uint32_t D,
							     const float *restrict m,
							     float *restrict tmp)
{
	const size_t n = D;
	size_t t = t0;
	/* four rows at a time: each row of m is loaded once for four */
	for (; t + 4 <= t1; t += 4) {
		const float *restrict r = x + t * n;
		float *restrict y0 = tmp, *restrict y1 = tmp + n, *restrict y2 = tmp + 2 * n,
				*restrict y3 = tmp + 3 * n;
		memset(tmp, 0, 4 * n * sizeof(float));
		for (size_t k = 0; k < n; k++) {
			const float a0 = r[k], a1 = r[n + k], a2 = r[2 * n + k], a3 = r[3 * n + k];
			const float *restrict mk = m + k * n;
			for (size_t j = 0; j < n; j++) {
				y0[j] += a0 * mk[j];
				y1[j] += a1 * mk[j];
				y2[j] += a2 * mk[j];
				y3[j] += a3 * mk[j];
			}
		}
		memcpy(x + t * n, tmp, 4 * n * sizeof(float));
	}
	for (; t < t1; t++) {
		float *restrict y0 = tmp;
		memset(tmp, 0, n * sizeof(float));
		for (size_t k = 0; k < n; k++) {
			const float a = x[t * n + k], *restrict mk = m + k * n;
			for (size_t j = 0; j < n; j++)
				y0[j] += a * mk[j];
		}
		memcpy(x + t * n, tmp, n * sizeof(float));
	}
}

#if defined(__x86_64__) || defined(__i386__)
/* The same loops for AVX2 (no FMA: the same products and sums in the same order, so the same
 * bits), taken when kvt_simd_active() (test_codec_simd compares the two). */
__attribute__((target("avx2"))) static void xform_avx2(float *restrict x, uint32_t t0, uint32_t t1,
						       uint32_t D, const float *restrict m,
						       float *restrict tmp)
{
	xform_body(x, t0, t1, D, m, tmp);
}
#endif

static void xform_rows(float *restrict x, uint32_t t0, uint32_t t1, uint32_t D,
		       const float *restrict m, float *restrict tmp)
{
#if defined(__x86_64__) || defined(__i386__)
	if (kvt_simd_active()) {
		xform_avx2(x, t0, t1, D, m, tmp);
		return;
	}
#endif
	xform_body(x, t0, t1, D, m, tmp);
}

/* Reconstruction of one row: shared by encoder and decoder so both compute the same bits. */
static inline void recon_row(float *xh, const float *pred, const int32_t *q, const float *step,
			     uint32_t D)
{
	for (uint32_t d = 0; d < D; d++)
		xh[d] = pred[d] + (float)q[d] * step[d];
}

/* SimHash of a row relative to the channel means (the search key of the prediction). */
static uint16_t row_hash(const struct uq_work *w, const float *x, float *tmp)
{
	for (uint32_t d = 0; d < w->D; d++)
		tmp[d] = x[d] - w->mu[d];
	return kvt_simhash16(tmp, w->D);
}

/*
 * cx: channels of one slab differ in scale (values above all, which get no per-channel step),
 * and a row's table fits only their average.  Each symbol's category is its channel's mean
 * |index| over the slab's rows before it against the mean of all channels, in half octaves
 * (8: as the others; also for the first row), the rows as decoded, so no side information.
 * Integers only, so that encoder and decoder agree on every machine.
 */
#define CX_CAP 63u /* |index| counted at most */

static void ctx_row(const uint32_t *acc, uint32_t n, uint32_t D, uint8_t *out)
{
	/* boundaries between categories c and c + 1: 2^((c - 7.5) / 2) in 16.16 fixed point */
	static const uint32_t thr[15] = {4871,	 6889,	 9742,	 13777,	 19484,
					 27554,	 38968,	 55109,	 77936,	 110218,
					 155872, 220436, 311744, 440872, 623487};
	uint64_t tot = 0;

	if (!n) {
		memset(out, 8, D);
		return;
	}
	for (uint32_t d = 0; d < D; d++)
		tot += acc[d];
	/* (mean |index| + 1/4) against the all-channel one: the quarter keeps silent channels
	 * from looking infinitely quiet */
	/* channel d is in category >= c + 1 when (a << 16) / b >= thr[c] with
	 * a = (4 acc[d] + n) D: when 4 acc[d] + n >= ceil(thr[c] b / (2^16 D)), which moves the
	 * divisions out of the channel loop, same categories */
	uint64_t b = 4 * tot + (uint64_t)n * D, den = (uint64_t)D << 16;
	uint64_t lim[15];
	for (int c = 0; c < 15; c++)
		lim[c] = (thr[c] * b + den - 1) / den;
	for (uint32_t d = 0; d < D; d++) {
		uint64_t a = 4 * (uint64_t)acc[d] + n;
		uint8_t c = 0;
		for (int k = 0; k < 15; k++)
			c += a >= lim[k];
		out[d] = c;
	}
}

static inline void ctx_add(uint32_t *acc, const int32_t *q, uint32_t D)
{
	for (uint32_t d = 0; d < D; d++) {
		uint32_t a = q[d] < 0 ? -(uint32_t)q[d] : (uint32_t)q[d];
		acc[d] += a < CX_CAP ? a : CX_CAP;
	}
}

/* cx categories of every row from nsink on, as the decoder will find them. */
static void ctx_all(struct uq_work *w, uint32_t nsink)
{
	memset(w->acc, 0, w->D * sizeof(uint32_t));
	for (uint32_t t = nsink; t < w->T; t++) {
		ctx_row(w->acc, t - nsink, w->D, w->cx + (size_t)t * w->D);
		ctx_add(w->acc, w->q + (size_t)t * w->D, w->D);
	}
}

/* Decoded row for indices k: shared by encoder and decoder so both compute the same bits. */
static void recon_row_dq(float *xh, const float *pred, const int32_t *k, const float *dstep,
			 uint32_t D)
{
	unsigned s = 0;
	for (uint32_t d = 0; d < D; d++) {
		xh[d] = pred[d] + (float)dq_level(k[d], s) * dstep[d];
		s = dq_next[s][k[d] & 1];
	}
}

/* Appends symbol z (escaped past ESC) coded with table class c. */
static inline void put_sym(struct uq_work *w, size_t *n, uint32_t z, uint8_t c, struct wbuf *e)
{
	w->sym[*n] = (uint16_t)(z < ESC ? z : ESC);
	w->ti[(*n)++] = c;
	if (z >= ESC)
		kv_put_varint(e, z - ESC);
}

/* Lists the coded rows (not all zero) of the slab in w->rows; returns their count. */
static uint32_t zero_rows(struct uq_work *w, uint32_t nsink)
{
	uint32_t nr = 0;
	for (uint32_t t = nsink; t < w->T; t++) {
		const int32_t *q = w->q + (size_t)t * w->D;
		uint32_t nz = 0;
		for (uint32_t d = 0; d < w->D; d++)
			nz |= (uint32_t)q[d];
		if (nz)
			w->rows[nr++] = t;
	}
	return nr;
}

static ssize_t uq_enc(const struct kvt_stage *st, const struct kvt_codec_geom *g,
		      const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	size_t slab = geom_slab(g), ns = geom_nslabs(g);
	struct uq_work *w;
	struct wbuf o;
	ssize_t rc;
	double theta = st->arg[A_ROPE];
	int lsh = st->arg[A_LSH] > 0;
	unsigned hmax = (unsigned)st->arg[A_LSH];
	const struct rans_table *tabs[RANS_PCLASSES];

	const struct kvt_dict *dict = st->arg[A_KB] > 0 ? st->dict : NULL;

	if (kvt_geom_check(g) || n != kvt_geom_block_bytes(g))
		return -EINVAL;
	/* kb without a dictionary, or with one of another model or RoPE frame */
	if (st->arg[A_KB] > 0 && kvt_dict_fits(dict, g, theta))
		return -EINVAL;
	w = uq_alloc(g);
	if (!w)
		return -ENOMEM;
	if (theta > 0)
		rope_table(w, g, theta);
	for (unsigned c = 0; c < RANS_PCLASSES; c++)
		tabs[c] = rans_param_table(c);
	uint32_t T = w->T, D = w->D, nsink = sink_rows(g, st->arg[A_SINK]);
	wb_init(&o, dst, cap);
	if (dict) {
		uint64_t id = kvt_dict_id(dict);
		wb_u32(&o, (uint32_t)id);
		wb_u32(&o, (uint32_t)(id >> 32));
	}
	for (size_t s = 0; s < ns && !o.err; s++) {
		const uint8_t *in = src + s * slab * 2;
		int isv = slab_is_v(g, s);
		size_t rs = (size_t)nsink * D;
		uint32_t nrow = T - nsink;

		kvt_load_f32(w->x, in, slab, g->dtype);
		kv_sanitize(w->x, slab);
		wb_bytes(&o, in, rs * 2);
		if (!isv && theta > 0)
			rope_rows(w, w->x, 0, T, -1.0f);
		if (dict)
			xform_rows(w->x, 0, T, D, kvt_dict_basis(dict, s, 0), w->tr);
		memcpy(w->xh, w->x, rs * sizeof(float)); /* sinks: exact references (coded frame) */
		/* channel means, then the step */
		double ss = 0;
		for (uint32_t d = 0; d < D; d++) {
			double a = 0;
			for (uint32_t t = nsink; t < T; t++)
				a += w->x[(size_t)t * D + d];
			w->mu[d] = nrow ? (float)(a / nrow) : 0.0f;
		}
		int centre = !isv || st->arg[A_CN];
		for (size_t i = rs; i < slab; i++) {
			double v = w->x[i] - (centre ? w->mu[i % D] : 0.0f);
			ss += v * v;
		}
		double rms = slab > rs ? sqrt(ss / (double)(slab - rs)) : 0;
		uint32_t layer = (uint32_t)(s / (2 * g->n_kv_heads));
		float step =
		    (float)(st->arg[isv ? A_V : A_K] * rms *
			    exp2(layer_tilt(st->arg + (isv ? A_VL : A_KL), layer, g->n_layers)));
		if (!(step > 1e-6f))
			step = 1e-6f;
		/* qw's channel pairs are RoPE pairs: none in a dictionary's coordinates */
		int has_mu = nrow > 0, qw = !isv && !dict && st->arg[A_QW] > 0 && nrow,
		    dq = st->arg[A_DQ] > 0 && nrow, cx = !qw && st->arg[A_CX] > 0 && nrow;
		wb_f32(&o, step);
		wb_u8(&o, (uint8_t)(has_mu | qw << 1 | dq << 2 | cx << 3));
		if (qw) {
			uq_key_weights(w->x, nsink, T, D, st->arg[A_QW], w->qwi);
			for (uint32_t i = 0; i < D / 2; i += 2)
				wb_u8(&o, (uint8_t)((w->qwi[i] - QW_MIN) | (w->qwi[i + 1] - QW_MIN)
									       << 4));
		}
		for (uint32_t d = 0; d < D; d++) {
			w->stp[d] = qw ? step * exp2f(0.5f * w->qwi[d % (D / 2)]) : step;
			w->lvd[d] = (uint8_t)(qw ? w->qwi[d % (D / 2)] - QW_MIN : -QW_MIN);
		}
		/*
		 * Means on a grid of step/MU_DIV: a mean off by up to step/2 would shift every
		 * token of a quiet channel the same way, an error that attention does not average.
		 */
		/* kb: relative to the model's mean row, which the dictionary holds */
		const float *gm = dict ? kvt_dict_mean(dict, s) : NULL;
		for (uint32_t d = 0; d < D; d++) {
			float g0 = gm ? gm[d] : 0.0f;
			float m = has_mu ? rintf((w->mu[d] - g0) * MU_DIV / w->stp[d]) : 0.0f;
			m = m > 1e8f ? 1e8f : m < -1e8f ? -1e8f : m;
			w->mq[d] = (int32_t)m;
			w->mu[d] = (float)w->mq[d] * (w->stp[d] / MU_DIV) + (has_mu ? g0 : 0.0f);
		}
		/* prediction and quantization, row by row on decoded values */
		float *inv = w->sc + (size_t)T * D + D; /* scratch row */
		for (uint32_t d = 0; d < D; d++)
			inv[d] = 1.0f / w->stp[d];
		for (uint32_t t = 0; t < T; t++) {
			float *x = w->x + (size_t)t * D, *xh = w->xh + (size_t)t * D;
			w->ref[t] = 0;
			if (lsh)
				w->hash[t] = row_hash(w, t < nsink ? xh : x, w->sc + (size_t)T * D);
			if (t < nsink)
				continue;
			const float *pred = w->mu;
			if (lsh) {
				double best = 0;
				for (uint32_t d = 0; d < D; d++)
					best += (double)(x[d] - w->mu[d]) * (x[d] - w->mu[d]);
				best *= 0.9; /* a reference must beat the mean clearly */
				for (uint32_t r = 0; r < t; r++) {
					if ((unsigned)__builtin_popcount(w->hash[r] ^ w->hash[t]) >
					    hmax)
						continue;
					const float *c = w->xh + (size_t)r * D;
					double dd = 0;
					/* partial sums only grow: stop once past the best */
					for (uint32_t d0 = 0; d0 < D && dd < best; d0 += 16)
						for (uint32_t d = d0; d < d0 + 16 && d < D; d++)
							dd += (double)(x[d] - c[d]) * (x[d] - c[d]);
					if (dd < best) {
						best = dd;
						w->ref[t] = (uint16_t)(r + 1);
					}
				}
				if (w->ref[t])
					pred = w->xh + (size_t)(w->ref[t] - 1) * D;
			}
			int32_t *q = w->q + (size_t)t * D;
			for (uint32_t d = 0; d < D; d++) {
				float v = (x[d] - pred[d]) * inv[d];
				v = v > 1e9f ? 1e9f : v < -1e9f ? -1e9f : v;
				q[d] = (int32_t)lrintf(v);
			}
			recon_row(xh, pred, q, w->stp, D);
		}
		/* rows whose residual is all zero (merged duplicates) are flagged, not coded */
		uint32_t nr = zero_rows(w, nsink);
		int8_t off[32] = {0};
		if (cx)
			ctx_all(w, nsink);
		uq_fit_tables(w, nr, off, qw, cx, 0);
		if (dq) {
			/*
			 * Second pass: the same predictions, the residuals quantized by the
			 * trellis, its rate model the first pass's tables; then everything
			 * refitted to the new indices.
			 */
			float *dstep = w->sc + (size_t)T * D, *u = dstep + D;
			float lam = (float)st->arg[A_DQ];
			const uint16_t *pcat[32];
			for (uint32_t d = 0; d < D; d++)
				dstep[d] = w->stp[d] * 0.5f;
			memset(w->acc, 0, D * sizeof(uint32_t));
			for (uint32_t t = nsink; t < T; t++) {
				const float *x = w->x + (size_t)t * D;
				const float *pred =
				    w->ref[t] ? w->xh + (size_t)(w->ref[t] - 1) * D : w->mu;
				int32_t *q = w->q + (size_t)t * D;
				uint8_t c = w->ra[t];
				int zero = 1;
				for (uint32_t d = 0; d < D && zero; d++)
					zero = !q[d];
				if (zero)
					c = 0; /* an all-zero row: the narrowest table */
				for (int cc = 0; cc < 32; cc++)
					pcat[cc] = rans_param_cost(cls_off(c, off[cc & 15]));
				for (uint32_t d = 0; d < D; d++) {
					float v = (x[d] - pred[d]) / dstep[d];
					u[d] = v > 1e8f ? 1e8f : v < -1e8f ? -1e8f : v;
				}
				uint8_t *lv = w->lvd;
				if (cx) {
					lv = w->cx + (size_t)t * D;
					ctx_row(w->acc, t - nsink, D, lv);
				}
				uq_dq_search(w, lv, u, pcat, lam, q);
				if (cx)
					ctx_add(w->acc, q, D);
				recon_row_dq(w->xh + (size_t)t * D, pred, q, dstep, D);
			}
			nr = zero_rows(w, nsink);
			/* the trellis pass left every row's cx categories in w->cx */
			uq_fit_tables(w, nr, off, qw, cx, 1);
		}
		uint8_t *zf = wb_reserve(&o, (T + 7) / 8);
		if (!zf)
			break;
		memset(zf, 0, (T + 7) / 8);
		for (uint32_t t = nsink, i = 0; t < T; t++)
			if (i < nr && w->rows[i] == t)
				i++;
			else
				zf[t / 8] = (uint8_t)(zf[t / 8] | 1u << (t % 8));
		if (lsh)
			kv_write_refs(&o, w->ref, T);
		uint32_t hm[RANS_PNSYM] = {0}, hd[RANS_PNSYM] = {0};
		for (int lv = 0; lv < 32; lv += 2)
			if (((qw || cx) && lv < 16) || (dq && lv >= 16))
				wb_u8(&o, (uint8_t)((off[lv] + 8) | (off[lv + 1] + 8) << 4));
		uint8_t base = nr ? w->ra[w->rows[0]] : 0, prev = base;
		for (uint32_t i = 0; i < nr; i++) {
			uint32_t z = zz_enc((int32_t)w->ra[w->rows[i]] - prev);
			hd[z < ESC ? z : ESC]++;
			prev = w->ra[w->rows[i]];
		}
		if (has_mu)
			for (uint32_t d = 0; d < D; d++) {
				uint32_t z = zz_enc(w->mq[d]);
				hm[z < ESC ? z : ESC]++;
			}
		uint8_t cm = (uint8_t)rans_param_choose(hm, NULL),
			cd = (uint8_t)rans_param_choose(hd, NULL);
		if (has_mu)
			wb_u8(&o, cm);
		if (nr) {
			wb_u8(&o, base);
			wb_u8(&o, cd);
		}
		/* the stream: means, then per coded row its table delta and its residuals */
		struct wbuf e;
		size_t nsym = 0;
		wb_init(&e, w->esc, max_syms(g) * 6 + 8);
		if (has_mu)
			for (uint32_t d = 0; d < D; d++)
				put_sym(w, &nsym, zz_enc(w->mq[d]), cm, &e);
		prev = base;
		for (uint32_t i = 0; i < nr; i++) {
			uint8_t c = w->ra[w->rows[i]];
			const int32_t *q = w->q + (size_t)w->rows[i] * D;
			put_sym(w, &nsym, zz_enc((int32_t)c - prev), cd, &e);
			prev = c;
			const uint8_t *ct = w->cat + (size_t)i * D;
			for (uint32_t d = 0; d < D; d++)
				put_sym(w, &nsym, zz_enc(q[d]), cls_off(c, off[ct[d]]), &e);
		}
		kv_put_varint(&o, (uint32_t)e.len);
		wb_bytes(&o, w->esc, e.len);
		if (o.err || e.err)
			break;
		/* the stream goes to the scratch tail of the output, then after its length */
		size_t room = o.cap - o.len > 5 ? o.cap - o.len - 5 : 0;
		long l = rans_encode(w->sym, w->ti, nsym, tabs, o.p + o.len + 5, room);
		if (l < 0) {
			o.err = (int)l;
			break;
		}
		uint8_t *sp = o.p + o.len + 5;
		kv_put_varint(&o, (uint32_t)l);
		memmove(o.p + o.len, sp, (size_t)l);
		o.len += (size_t)l;
	}
	rc = o.err ? o.err : (ssize_t)o.len;
	uq_free(w);
	return rc;
}

/* Next symbol of the stream with class c, escapes resolved; -1 when malformed. */
static inline int64_t get_sym(struct rans_dec *rd, uint8_t c, struct rbuf *e)
{
	if (c >= RANS_PCLASSES)
		return -1;
	uint32_t z = rans_dec_sym(rd, rans_param_table(c));
	if (z == ESC) {
		uint32_t x = kv_get_varint(e);
		if (e->err || x > 0x7fffffffu)
			return -1;
		z = x + ESC;
	}
	return rd->err ? -1 : (int64_t)z;
}

static ssize_t uq_dec(const struct kvt_stage *st, const struct kvt_codec_geom *g,
		      const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	size_t slab = geom_slab(g), ns = geom_nslabs(g), raw = kvt_geom_block_bytes(g);
	struct uq_work *w;
	struct rbuf r;
	ssize_t rc = -EBADMSG;
	double theta = st->arg[A_ROPE];
	int lsh = st->arg[A_LSH] > 0;

	if (!raw || cap < raw)
		return -EBADMSG;
	w = uq_alloc(g);
	if (!w)
		return -ENOMEM;
	if (theta > 0)
		rope_table(w, g, theta);
	uint32_t T = w->T, D = w->D, nsink = sink_rows(g, st->arg[A_SINK]);
	const struct rans_table *tabs[RANS_PCLASSES];
	uint8_t *lvd = w->lvd;
	float *dstep = w->sc + (size_t)T * D; /* dq: half steps */
	for (unsigned c = 0; c < RANS_PCLASSES; c++)
		tabs[c] = rans_param_table(c);
	rb_init(&r, src, n);
	const struct kvt_dict *dict = NULL;
	if (st->arg[A_KB] > 0) {
		uint64_t id = rb_u32(&r);
		id |= (uint64_t)rb_u32(&r) << 32;
		if (r.err)
			goto out;
		/* made with a dictionary this chain does not have */
		if (!st->dict || kvt_dict_id(st->dict) != id) {
			rc = -ENOKEY;
			goto out;
		}
		if (kvt_dict_fits(st->dict, g, theta))
			goto out;
		dict = st->dict;
	}
	for (size_t s = 0; s < ns; s++) {
		uint8_t *out = dst + s * slab * 2;
		int isv = slab_is_v(g, s);
		size_t rs = (size_t)nsink * D;
		const uint8_t *sk = rb_take(&r, rs * 2);
		if (!sk)
			goto out;
		kvt_load_f32(w->xh, sk, rs, g->dtype);
		if (!isv && theta > 0)
			rope_rows(w, w->xh, 0, nsink, -1.0f); /* sinks as references, coded frame */
		if (dict)
			xform_rows(w->xh, 0, nsink, D, kvt_dict_basis(dict, s, 0), w->tr);
		float step = rb_f32(&r);
		uint8_t fl = rb_u8(&r), has_mu = fl & 1, qw = fl >> 1 & 1, dq = fl >> 2 & 1,
			cx = fl >> 3 & 1;
		if (r.err || !isfinite(step) || !(step > 0) || fl > 15 || (cx && qw))
			goto out;
		for (uint32_t i = 0; i < D / 2; i += 2) {
			uint8_t b = qw ? rb_u8(&r) : (uint8_t)(-QW_MIN * 17);
			w->qwi[i] = (int8_t)((b & 15) + QW_MIN);
			w->qwi[i + 1] = (int8_t)((b >> 4) + QW_MIN);
		}
		for (uint32_t d = 0; d < D; d++) {
			w->stp[d] = step * exp2f(0.5f * w->qwi[d % (D / 2)]);
			lvd[d] = (uint8_t)(w->qwi[d % (D / 2)] - QW_MIN);
			dstep[d] = w->stp[d] * 0.5f;
		}
		const uint8_t *zf = rb_take(&r, (T + 7) / 8);
		if (!zf)
			goto out;
		uint32_t nr = 0;
		for (uint32_t t = 0; t < T; t++) {
			int zero = zf[t / 8] >> (t % 8) & 1;
			if (t < nsink && zero)
				goto out;
			nr += t >= nsink && !zero;
		}
		memset(w->ref, 0, T * sizeof(uint16_t));
		if (lsh && kv_read_refs(&r, w->ref, T))
			goto out;
		for (uint32_t t = 0; t < nsink; t++)
			if (w->ref[t]) /* sink rows are exact: no reference */
				goto out;
		int8_t off[32] = {0};
		for (int lv = 0; lv < 32; lv += 2)
			if (((qw || cx) && lv < 16) || (dq && lv >= 16)) {
				uint8_t b = rb_u8(&r);
				off[lv] = (int8_t)((b & 15) - 8);
				off[lv + 1] = (int8_t)((b >> 4) - 8);
			}
		uint8_t cm = has_mu ? rb_u8(&r) : 0;
		uint8_t prev = nr ? rb_u8(&r) : 0, cd = nr ? rb_u8(&r) : 0;
		uint32_t el = kv_get_varint(&r);
		const uint8_t *ep = rb_take(&r, el);
		uint32_t sl = kv_get_varint(&r);
		const uint8_t *sp = rb_take(&r, sl);
		struct rans_dec rd;
		struct rbuf e;
		if (!ep || !sp || rans_dec_init(&rd, sp, sl))
			goto out;
		rb_init(&e, ep, el);
		const float *gm = dict ? kvt_dict_mean(dict, s) : NULL;
		for (uint32_t d = 0; d < D; d++) {
			int64_t z = has_mu ? get_sym(&rd, cm, &e) : 0;
			if (z < 0 || z > 400000000)
				goto out;
			w->mu[d] = (float)zz_dec((uint32_t)z) * (w->stp[d] / MU_DIV) +
				   (has_mu && gm ? gm[d] : 0.0f);
		}
		memset(w->acc, 0, D * sizeof(uint32_t));
		for (uint32_t t = nsink; t < T; t++) {
			int32_t *q = w->q + (size_t)t * D;
			const uint8_t *lv = lvd;
			if (cx) {
				ctx_row(w->acc, t - nsink, D, w->cx);
				lv = w->cx;
			}
			if (zf[t / 8] >> (t % 8) & 1) {
				memset(q, 0, D * sizeof(*q));
			} else {
				int64_t z = get_sym(&rd, cd, &e);
				if (z < 0)
					goto out;
				int64_t c = (int64_t)prev + zz_dec((uint32_t)z);
				if (c < 0 || c >= RANS_PCLASSES)
					goto out;
				prev = (uint8_t)c;
				/* the row's table for each category, then the row's symbols */
				const struct rans_table *rt[32];
				for (int cc = 0; cc < (dq ? 32 : 16); cc++)
					rt[cc] = tabs[cls_off(prev, off[cc])];
				for (uint32_t d = 0, ds = 0; d < D; d++) {
					uint32_t y = dq ? rans_dec_sym2(&rd, rt[lv[d]],
									rt[lv[d] + 16], ds >> 1)
							: rans_dec_sym(&rd, rt[lv[d]]);
					if (y == ESC) {
						uint32_t x = kv_get_varint(&e);
						if (e.err || x > 0x7fffffffu)
							goto out;
						y = x + ESC;
					}
					q[d] = zz_dec(y);
					if (dq)
						ds = dq_next[ds][q[d] & 1];
				}
				if (rd.err)
					goto out;
			}
			if (cx)
				ctx_add(w->acc, q, D);
			const float *pred = w->ref[t] ? w->xh + (size_t)(w->ref[t] - 1) * D : w->mu;
			if (dq)
				recon_row_dq(w->xh + (size_t)t * D, pred, q, dstep, D);
			else
				recon_row(w->xh + (size_t)t * D, pred, q, w->stp, D);
		}
		if (rans_dec_finish(&rd) || e.pos != e.len)
			goto out;
		if (dict)
			xform_rows(w->xh, nsink, T, D, kvt_dict_basis(dict, s, 1), w->tr);
		if (!isv && theta > 0)
			rope_rows(w, w->xh, nsink, T, 1.0f);
		memcpy(out, sk, rs * 2);
		kvt_store_f32(out + rs * 2, w->xh + rs, slab - rs, g->dtype);
	}
	rc = r.pos == n ? (ssize_t)raw : -EBADMSG;
out:
	uq_free(w);
	return rc;
}

/* kvt_chain_usable() has checked g already (uq is a KV codec). */
static int uq_usable(const struct kvt_stage *st, const struct kvt_codec_geom *g)
{
	return st->arg[A_KB] > 0 ? kvt_dict_fits(st->dict, g, st->arg[A_ROPE]) : 0;
}

const struct kvt_codec_ops kvt_codec_uq = {
    .name = "uq",
    .flags = KVT_CODEC_LOSSY | KVT_CODEC_KV,
    .parse = uq_parse,
    .canon = uq_canon,
    .max_encoded_size = uq_bound,
    .encode = uq_enc,
    .decode = uq_dec,
    .usable = uq_usable,
};
