/* SPDX-License-Identifier: MIT */
/*
 * codec_uq.c - "uq": uniform quantization with prediction and rANS entropy coding.
 *
 *   uq:k=STEP,v=STEP,rope=THETA,sink=N,lsh=HAMMING,cn=0|1
 *
 * Per slab (one layer, K or V, one kv head: block_tokens x head_dim):
 *  1. keys are rotated back to their pre-RoPE frame (rope=THETA, 0 = off): in that frame the
 *     keys of one token are the same wherever it stands, which the prediction below exploits;
 *  2. the first N tokens of the sequence (sink=N) are kept exact;
 *  3. each channel's mean over the block is subtracted (fp16, sent);
 *  4. every token vector is predicted either by that mean or by an earlier token vector of
 *     the block (as decoded): candidates are found by SimHash (16 random hyperplanes, Hamming
 *     distance <= lsh, 0 = no prediction) and the closest one wins if it beats the mean;
 *  5. the residual is quantized with one uniform step for the whole slab,
 *     step = STEP x RMS of the slab (centred for keys; for values cn=1 centres too);
 *  6. the integer residuals are coded with rANS, one static parametric table (Laplace or
 *     Gaussian shape of a fitted scale) per channel; large values escape to a varint list.
 * Error bound: |x - x^| <= step/2 per element in the coded frame (no clipping), before the
 * fp16 rounding of the output; the inverse RoPE rotation keeps the pairwise L2 norm.
 */
#include <math.h>
#include <stdlib.h>

#include "kvslab.h"
#include "rans.h"

enum { A_K, A_V, A_ROPE, A_SINK, A_LSH, A_CN, A_CTX, A_N };

static const struct kvt_argdef uq_args[A_N] = {
    {"k", 0.14, 1e-4, 16, 0}, {"v", 0.06, 1e-4, 16, 0}, {"rope", 10000, 0, 1e9, 0},
    {"sink", 0, 0, 1e9, 1},   {"lsh", 16, 0, 16, 1},	{"cn", 0, 0, 1, 1},
    {"ctx", 1, 0, 1, 1},
};

#define ESC (RANS_PNSYM - 1)

#define MU_DIV 8.0f /* mean grid: step / 8 */

static int uq_parse(struct kvt_stage *st, const char *a)
{
	return kvt_args_parse(st, uq_args, A_N, a);
}

static int uq_canon(const struct kvt_stage *st, char *b, size_t l)
{
	return kvt_args_canon(st, uq_args, A_N, b, l);
}

static unsigned ref_bits(uint32_t T)
{
	unsigned b = 1;
	while ((1u << b) < T + 1)
		b++;
	return b;
}

static size_t uq_bound(const struct kvt_stage *st, const struct kvt_codec_geom *g, size_t n)
{
	if (kvt_geom_check(g))
		return 0;
	size_t slab = geom_slab(g);
	/* sinks raw + means + step + refs + classes + escapes (<= 6 bytes each) + stream */
	size_t per = slab * 2 + g->head_dim * 3 + 4 + packed_len(g->block_tokens, 13) + 8 +
		     slab * 6 + rans_bound(slab);
	return geom_nslabs(g) * per;
}

struct uq_work {
	uint32_t T, D;
	float *x, *xh, *mu, *sc; /* sc: cos/sin table for RoPE */
	int32_t *q;
	uint16_t *sym, *ref, *hash;
	uint8_t *ti, *cls, *ra;
	uint32_t *rows;
	uint32_t *hist;
	uint8_t *esc;
};

static void uq_free(struct uq_work *w)
{
	if (!w)
		return;
	free(w->x);
	free(w->xh);
	free(w->mu);
	free(w->sc);
	free(w->q);
	free(w->sym);
	free(w->ref);
	free(w->hash);
	free(w->ti);
	free(w->cls);
	free(w->ra);
	free(w->rows);
	free(w->hist);
	free(w->esc);
	free(w);
}

static struct uq_work *uq_alloc(const struct kvt_codec_geom *g)
{
	struct uq_work *w = calloc(1, sizeof(*w));
	size_t slab = geom_slab(g);
	if (!w)
		return NULL;
	w->T = g->block_tokens;
	w->D = g->head_dim;
	w->x = malloc(slab * sizeof(float));
	w->xh = malloc(slab * sizeof(float));
	w->mu = malloc(w->D * sizeof(float));
	w->sc = malloc((slab + w->D) * sizeof(float)); /* + one row of scratch */
	w->q = malloc(slab * sizeof(int32_t));
	w->sym = malloc((slab + w->T) * sizeof(uint16_t));
	w->ref = malloc(w->T * sizeof(uint16_t));
	w->hash = malloc(w->T * sizeof(uint16_t));
	w->ti = malloc(slab);
	size_t nctx = w->T > w->D ? w->T : w->D;
	w->cls = malloc(nctx);
	w->ra = malloc(w->T);
	w->rows = malloc(w->T * sizeof(uint32_t));
	w->hist = malloc(nctx * RANS_PNSYM * sizeof(uint32_t));
	w->esc = malloc(slab * 6 + 8);
	if (!w->x || !w->xh || !w->mu || !w->sc || !w->q || !w->sym || !w->ref || !w->hash ||
	    !w->ti || !w->cls || !w->hist || !w->esc || !w->ra || !w->rows) {
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

static void rope_rows(struct uq_work *w, float *x, uint32_t t0, float sign)
{
	uint32_t h = w->D / 2;
	for (uint32_t t = t0; t < w->T; t++) {
		float *r = x + (size_t)t * w->D;
		const float *c = w->sc + (size_t)t * w->D, *s = c + h;
		for (uint32_t i = 0; i < h; i++) {
			float a = r[i], b = r[i + h], sn = sign * s[i];
			r[i] = a * c[i] - b * sn;
			r[i + h] = b * c[i] + a * sn;
		}
	}
}

/* Context modes: one table per channel, or one per token row (the default). */
enum { CTX_CH, CTX_ROW };

/* Reconstruction of one row: shared by encoder and decoder so both compute the same bits. */
static inline void recon_row(float *xh, const float *pred, const int32_t *q, float step, uint32_t D)
{
	for (uint32_t d = 0; d < D; d++)
		xh[d] = pred[d] + (float)q[d] * step;
}

static void wb_varint(struct wbuf *w, uint32_t v)
{
	while (v >= 0x80) {
		wb_u8(w, (uint8_t)(v | 0x80));
		v >>= 7;
	}
	wb_u8(w, (uint8_t)v);
}

static uint32_t rb_varint(struct rbuf *r)
{
	uint32_t v = 0;
	for (unsigned sh = 0; sh < 35; sh += 7) {
		uint8_t b = rb_u8(r);
		v |= (uint32_t)(b & 0x7f) << sh;
		if (!(b & 0x80))
			return v;
	}
	r->err = -EBADMSG;
	return 0;
}

/* SimHash of a row relative to the channel means (the search key of the prediction). */
static uint16_t row_hash(const struct uq_work *w, const float *x, float *tmp)
{
	for (uint32_t d = 0; d < w->D; d++)
		tmp[d] = x[d] - w->mu[d];
	return kvt_simhash16(tmp, w->D);
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

	if (kvt_geom_check(g) || n != kvt_geom_block_bytes(g))
		return -EINVAL;
	w = uq_alloc(g);
	if (!w)
		return -ENOMEM;
	if (theta > 0)
		rope_table(w, g, theta);
	uint32_t T = w->T, D = w->D, nsink = sink_rows(g, st->arg[A_SINK]);
	unsigned rb = ref_bits(T);
	wb_init(&o, dst, cap);
	for (size_t s = 0; s < ns && !o.err; s++) {
		const uint8_t *in = src + s * slab * 2;
		int isv = slab_is_v(g, s);
		size_t rs = (size_t)nsink * D;

		kvt_load_f32(w->x, in, slab, g->dtype);
		kv_sanitize(w->x, slab);
		wb_bytes(&o, in, rs * 2);
		if (!isv && theta > 0)
			rope_rows(w, w->x, 0, -1.0f);
		memcpy(w->xh, w->x, rs * sizeof(float)); /* sinks: exact references (coded frame) */
		/* channel means, then the step, then the means on the step's grid */
		double ss = 0;
		for (uint32_t d = 0; d < D; d++) {
			double a = 0;
			for (uint32_t t = nsink; t < T; t++)
				a += w->x[(size_t)t * D + d];
			w->mu[d] = T > nsink ? (float)(a / (T - nsink)) : 0.0f;
		}
		int centre = !isv || st->arg[A_CN];
		for (size_t i = rs; i < slab; i++) {
			double v = w->x[i] - (centre ? w->mu[i % D] : 0.0f);
			ss += v * v;
		}
		double rms = slab > rs ? sqrt(ss / (double)(slab - rs)) : 0;
		float step = (float)(st->arg[isv ? A_V : A_K] * rms);
		if (!(step > 1e-6f))
			step = 1e-6f;
		wb_f32(&o, step);
		/*
		 * Means on a grid of step/MU_DIV: a mean off by up to step/2 would shift every
		 * token of a quiet channel the same way, an error that attention does not average.
		 */
		for (uint32_t d = 0; d < D; d++) {
			float m = rintf(w->mu[d] * MU_DIV / step);
			if (m > 1e8f)
				m = 1e8f;
			if (m < -1e8f)
				m = -1e8f;
			wb_varint(&o, zz_enc((int32_t)m));
			w->mu[d] = (float)(int32_t)m * (step / MU_DIV);
		}
		/* prediction and quantization, row by row on decoded values */
		struct wbuf e;
		wb_init(&e, w->esc, slab * 6 + 8);
		float inv = 1.0f / step;
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
					for (uint32_t d = 0; d < D; d++)
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
				float v = (x[d] - pred[d]) * inv;
				if (v > 1e9f)
					v = 1e9f;
				if (v < -1e9f)
					v = -1e9f;
				q[d] = (int32_t)lrintf(v);
			}
			recon_row(xh, pred, q, step, D);
		}
		/* rows whose residual is all zero (merged duplicates) are flagged, not coded */
		int mode = (int)st->arg[A_CTX];
		uint32_t nr = 0;
		size_t nsym = 0;
		uint8_t *zf = wb_reserve(&o, (T + 7) / 8);
		if (!zf)
			break;
		memset(zf, 0, (T + 7) / 8);
		for (uint32_t t = nsink; t < T; t++) {
			const int32_t *q = w->q + (size_t)t * D;
			uint32_t nz = 0;
			for (uint32_t d = 0; d < D; d++)
				nz |= (uint32_t)q[d];
			if (!nz) {
				zf[t / 8] = (uint8_t)(zf[t / 8] | 1u << (t % 8));
				continue;
			}
			for (uint32_t d = 0; d < D; d++) {
				uint32_t z = zz_enc(q[d]);
				uint16_t sy = (uint16_t)(z < ESC ? z : ESC);
				w->sym[nsym++] = sy;
				if (sy == ESC)
					wb_varint(&e, z - ESC);
			}
			w->rows[nr++] = t;
		}
		if (lsh) {
			/* which rows have a reference, then the references of those rows */
			uint8_t *hf = wb_reserve(&o, (T + 7) / 8);
			uint32_t nref = 0;
			if (!hf)
				break;
			memset(hf, 0, (T + 7) / 8);
			for (uint32_t t = 0; t < T; t++)
				if (w->ref[t]) {
					hf[t / 8] = (uint8_t)(hf[t / 8] | 1u << (t % 8));
					w->sym[nsym + nref++] = (uint16_t)(w->ref[t] - 1);
				}
			uint8_t *p = wb_reserve(&o, packed_len(nref, rb));
			if (p) {
				uint64_t acc = 0;
				unsigned nb = 0;
				size_t k = 0;
				for (uint32_t i = 0; i < nref; i++) {
					acc |= (uint64_t)w->sym[nsym + i] << nb;
					nb += rb;
					while (nb >= 8) {
						p[k++] = (uint8_t)acc;
						acc >>= 8;
						nb -= 8;
					}
				}
				if (nb)
					p[k++] = (uint8_t)acc;
			}
		}
		uint32_t nh = mode == CTX_CH ? D : nr;
		memset(w->hist, 0, (size_t)nh * RANS_PNSYM * sizeof(uint32_t));
		for (uint32_t i = 0; i < nr; i++)
			for (uint32_t d = 0; d < D; d++)
				w->hist[(size_t)(mode == CTX_CH ? d : i) * RANS_PNSYM +
					w->sym[(size_t)i * D + d]]++;
		if (mode == CTX_CH) {
			for (uint32_t d = 0; d < D; d++) {
				w->cls[d] = (uint8_t)rans_param_choose(
				    w->hist + (size_t)d * RANS_PNSYM, NULL);
				wb_u8(&o, w->cls[d]);
			}
		} else {
			for (uint32_t i = 0; i < nr; i++) {
				w->ra[w->rows[i]] = (uint8_t)rans_param_choose(
				    w->hist + (size_t)i * RANS_PNSYM, NULL);
				wb_u8(&o, w->ra[w->rows[i]]);
			}
		}
		const struct rans_table *tabs[RANS_PCLASSES];
		for (unsigned c = 0; c < RANS_PCLASSES; c++)
			tabs[c] = rans_param_table(c);
		nsym = 0;
		for (uint32_t i = 0; i < nr; i++)
			for (uint32_t d = 0; d < D; d++)
				w->ti[nsym++] = mode == CTX_CH ? w->cls[d] : w->ra[w->rows[i]];
		wb_u32(&o, (uint32_t)e.len);
		wb_bytes(&o, w->esc, e.len);
		uint8_t *lp = wb_reserve(&o, 4);
		if (o.err || e.err)
			break;
		long l = rans_encode(w->sym, w->ti, nsym, tabs, o.p + o.len, o.cap - o.len);
		if (l < 0) {
			o.err = (int)l;
			break;
		}
		st32(lp, (uint32_t)l);
		o.len += (size_t)l;
	}
	rc = o.err ? o.err : (ssize_t)o.len;
	uq_free(w);
	return rc;
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
	const struct rans_table *tabs[RANS_PCLASSES];
	for (unsigned c = 0; c < RANS_PCLASSES; c++)
		tabs[c] = rans_param_table(c);
	uint32_t T = w->T, D = w->D, nsink = sink_rows(g, st->arg[A_SINK]);
	unsigned rb = ref_bits(T);
	rb_init(&r, src, n);
	for (size_t s = 0; s < ns; s++) {
		uint8_t *out = dst + s * slab * 2;
		int isv = slab_is_v(g, s), mode = (int)st->arg[A_CTX];
		size_t rs = (size_t)nsink * D, nsym = 0;
		const uint8_t *sk = rb_take(&r, rs * 2);
		if (!sk)
			goto out;
		kvt_load_f32(w->xh, sk, rs, g->dtype);
		if (!isv && theta > 0)
			for (uint32_t t = 0; t < nsink; t++) {
				/* sinks serve as references in the coded (pre-RoPE) frame */
				float *row = w->xh + (size_t)t * D;
				const float *c = w->sc + (size_t)t * D, *sn = c + D / 2;
				for (uint32_t i = 0; i < D / 2; i++) {
					float a = row[i], b = row[i + D / 2];
					row[i] = a * c[i] + b * sn[i];
					row[i + D / 2] = b * c[i] - a * sn[i];
				}
			}
		float step = rb_f32(&r);
		if (r.err || !isfinite(step) || !(step > 0))
			goto out;
		for (uint32_t d = 0; d < D; d++) {
			uint32_t z = rb_varint(&r);
			if (r.err || z > 200000000u)
				goto out;
			w->mu[d] = (float)zz_dec(z) * (step / MU_DIV);
		}
		const uint8_t *zf = rb_take(&r, (T + 7) / 8);
		if (!zf)
			goto out;
		uint32_t nr = 0;
		for (uint32_t t = 0; t < T; t++) {
			int zero = zf[t / 8] >> (t % 8) & 1;
			if (t < nsink && zero)
				goto out;
			if (t >= nsink && !zero)
				w->rows[nr++] = t;
		}
		memset(w->ref, 0, T * sizeof(uint16_t));
		if (lsh) {
			const uint8_t *hf = rb_take(&r, (T + 7) / 8);
			uint32_t nref = 0;
			if (!hf)
				goto out;
			for (uint32_t t = 0; t < T; t++)
				nref += hf[t / 8] >> (t % 8) & 1;
			const uint8_t *p = rb_take(&r, packed_len(nref, rb));
			if (!p)
				goto out;
			uint64_t acc = 0;
			unsigned nb = 0;
			size_t k = 0;
			for (uint32_t t = 0; t < T; t++) {
				if (!(hf[t / 8] >> (t % 8) & 1))
					continue;
				while (nb < rb) {
					acc |= (uint64_t)p[k++] << nb;
					nb += 8;
				}
				uint32_t v = (uint32_t)(acc & ((1u << rb) - 1));
				acc >>= rb;
				nb -= rb;
				/* a reference names an earlier row; sink rows have none */
				if (v >= t || t < nsink)
					goto out;
				w->ref[t] = (uint16_t)(v + 1);
			}
		}
		if (mode == CTX_CH) {
			for (uint32_t d = 0; d < D; d++)
				w->cls[d] = rb_u8(&r);
		} else {
			for (uint32_t i = 0; i < nr; i++)
				w->ra[w->rows[i]] = rb_u8(&r);
		}
		uint32_t el = rb_u32(&r);
		const uint8_t *ep = rb_take(&r, el);
		uint32_t sl = rb_u32(&r);
		const uint8_t *sp = rb_take(&r, sl);
		if (!ep || !sp)
			goto out;
		nsym = 0;
		for (uint32_t i = 0; i < nr; i++) {
			uint8_t ra = w->ra[w->rows[i]];
			if ((mode == CTX_CH ? 0 : ra) >= RANS_PCLASSES)
				goto out;
			for (uint32_t d = 0; d < D; d++) {
				uint8_t c = mode == CTX_CH ? w->cls[d] : ra;
				if (c >= RANS_PCLASSES)
					goto out;
				w->ti[nsym++] = c;
			}
		}
		if (rans_decode(sp, sl, nsym, w->ti, RANS_PCLASSES, tabs, w->sym))
			goto out;
		struct rbuf e;
		rb_init(&e, ep, el);
		nsym = 0;
		for (uint32_t t = nsink; t < T; t++) {
			int32_t *q = w->q + (size_t)t * D;
			if (zf[t / 8] >> (t % 8) & 1) {
				memset(q, 0, D * sizeof(*q));
			} else {
				for (uint32_t d = 0; d < D; d++) {
					uint32_t z = w->sym[nsym++];
					if (z == ESC) {
						uint32_t x = rb_varint(&e);
						if (e.err || x > 0x7fffffffu)
							goto out;
						z = x + ESC;
					}
					q[d] = zz_dec(z);
				}
			}
			const float *pred = w->ref[t] ? w->xh + (size_t)(w->ref[t] - 1) * D : w->mu;
			recon_row(w->xh + (size_t)t * D, pred, q, step, D);
		}
		if (e.pos != e.len)
			goto out;
		if (!isv && theta > 0)
			rope_rows(w, w->xh, nsink, 1.0f);
		memcpy(out, sk, rs * 2);
		kvt_store_f32(out + rs * 2, w->xh + rs, slab - rs, g->dtype);
	}
	rc = r.pos == n ? (ssize_t)raw : -EBADMSG;
out:
	uq_free(w);
	return rc;
}

const struct kvt_codec_ops kvt_codec_uq = {
    .name = "uq",
    .flags = KVT_CODEC_LOSSY | KVT_CODEC_KV,
    .parse = uq_parse,
    .canon = uq_canon,
    .max_encoded_size = uq_bound,
    .encode = uq_enc,
    .decode = uq_dec,
};
