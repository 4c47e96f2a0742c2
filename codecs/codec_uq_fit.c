/* SPDX-License-Identifier: MIT */
/*
 * codec_uq_fit.c - the "uq" encoder's choices, which the decoder reads from the stream or
 * finds again without side information (format and arguments: codec_uq.c): the per-pair key
 * steps of qw, each coded row's rANS table and the symbol categories' table offsets (chosen
 * by exact coded size), and the Viterbi search of dependent quantization (dq).
 */
#include <math.h>
#include <string.h>

#include "uq_internal.h"

/*
 * Keys: a step per channel pair.  A key error matters through q.k, and queries are large in
 * the same channel pairs as keys (the RoPE pairs that carry most of the energy), so the pair
 * energy of the block's keys e_p stands in for the query weight: step_p ~ e_p^(-gamma/2),
 * geometric mean kept at the slab step.  Indices in half octaves, 4 bits each.
 */
void uq_key_weights(const float *x, uint32_t T0, uint32_t T, uint32_t D, double gamma, int8_t *idx)
{
	uint32_t h = D / 2;
	double lg[512], mean = 0;
	for (uint32_t i = 0; i < h; i++) {
		double e = 1e-30;
		for (uint32_t t = T0; t < T; t++) {
			double a = x[(size_t)t * D + i], b = x[(size_t)t * D + h + i];
			e += a * a + b * b;
		}
		lg[i] = -0.5 * gamma * log2(e);
		mean += lg[i] / h;
	}
	for (uint32_t i = 0; i < h; i++) {
		double v = rint(2 * (lg[i] - mean));
		idx[i] = (int8_t)(v < QW_MIN ? QW_MIN : v > QW_MAX ? QW_MAX : v);
	}
}

/*
 * With per-pair key steps, a row's residuals are not alike: channels of a fine step have
 * larger symbols; with dq, the two quantizers' indices differ too.  Each category of symbol
 * (step level + 16 x quantizer group, w->cat) gets a table offset off[c] (fitted here on the
 * exact coded size, then the rows' tables refitted), so the row table still fits every symbol.
 */
static void fit_offsets(struct uq_work *w, uint32_t nr, int8_t *off, int qw)
{
	uint32_t D = w->D;
	const uint16_t *pc[RANS_PCLASSES];
	uint64_t cost[32][16];
	uint8_t used[32] = {0};

	for (unsigned c = 0; c < RANS_PCLASSES; c++)
		pc[c] = rans_param_cost(c);
	/* symbols once (escapes clipped) */
	for (uint32_t i = 0; i < nr; i++) {
		const int32_t *q = w->q + (size_t)w->rows[i] * D;
		uint8_t *z = w->zs + (size_t)i * D, *ct = w->cat + (size_t)i * D;
		for (uint32_t d = 0; d < D; d++) {
			uint32_t v = zz_enc(q[d]);
			z[d] = (uint8_t)(v < ESC ? v : ESC);
			used[ct[d]] = 1;
		}
	}
	/*
	 * Per row, the (category, symbol) pairs it holds and their counts: a few dozen
	 * where the row has D symbols, so each candidate table costs a few dozen adds.
	 */
	uint16_t *cnt = w->pairs, *list = w->pairs + 32 * RANS_PNSYM;
	memset(cnt, 0, 32 * RANS_PNSYM * sizeof(*cnt));
	memset(cost, 0, sizeof(cost));
	for (uint32_t pass = 0; pass < 2; pass++)
		for (uint32_t i = 0; i < nr; i++) {
			const uint8_t *z = w->zs + (size_t)i * D, *ct = w->cat + (size_t)i * D;
			uint32_t np = 0;
			for (uint32_t d = 0; d < D; d++) {
				uint16_t idx = (uint16_t)(ct[d] * RANS_PNSYM + z[d]);
				if (!cnt[idx]++)
					list[np++] = idx;
			}
			uint8_t cur = w->ra[w->rows[i]], pick = cur;
			if (!pass) {
				/* the offsets: every category under every shift of the row's table
				 */
				for (int o = -8; o <= 7; o++) {
					const uint16_t *p = pc[cls_off(cur, o)];
					for (uint32_t j = 0; j < np; j++)
						cost[list[j] / RANS_PNSYM][o + 8] +=
						    (uint64_t)cnt[list[j]] *
						    p[list[j] % RANS_PNSYM];
				}
			} else {
				/* then the row's table again, under the chosen offsets */
				uint64_t best = UINT64_MAX;
				for (int k = -6; k <= 6; k++) {
					uint8_t a = cls_off(cur, k);
					uint64_t c = 0;
					for (uint32_t j = 0; j < np; j++) {
						uint32_t cc = list[j] / RANS_PNSYM;
						c += (uint64_t)cnt[list[j]] *
						     pc[cls_off(a, off[cc])][list[j] % RANS_PNSYM];
					}
					if (c < best) {
						best = c;
						pick = a;
					}
				}
				w->ra[w->rows[i]] = pick;
			}
			for (uint32_t j = 0; j < np; j++)
				cnt[list[j]] = 0;
			if (pass)
				continue;
			if (i + 1 == nr)
				for (int c = 0; c < 32; c++) {
					uint64_t best = UINT64_MAX;
					off[c] = 0;
					/* without qw or cx the levels' offsets are not sent:
					 * they stay 0 */
					for (int o = -8; o <= 7 && used[c] && (qw || c >= 16); o++)
						if (cost[c][o + 8] < best) {
							best = cost[c][o + 8];
							off[c] = (int8_t)o;
						}
				}
		}
}

/* Symbol categories of a coded row: the channel's step level, + 16 where Q1 coded it. */
static void row_cats(const struct uq_work *w, const uint8_t *lv, const int32_t *k, uint8_t *ct,
		     int dq)
{
	unsigned s = 0;
	for (uint32_t d = 0; d < w->D; d++) {
		ct[d] = (uint8_t)(lv[d] + (dq ? 16 * (s >> 1) : 0));
		if (dq)
			s = dq_next[s][k[d] & 1];
	}
}

/*
 * Viterbi search of one row: u[d] = residual / dstep; p[c] the cost table (1/256 bits) of
 * category c under the row's table.  Candidates: the two nearest levels of the state's
 * quantizer, and zero when it is within one step, so |u - level| <= 2 always.
 */
void uq_dq_search(struct uq_work *w, const uint8_t *lv, const float *u, const uint16_t *const *p,
		  float lam, int32_t *k)
{
	uint32_t D = w->D;
	float J[4] = {0, INFINITY, INFINITY, INFINITY};
	for (uint32_t d = 0; d < D; d++) {
		float nJ[4] = {INFINITY, INFINITY, INFINITY, INFINITY}, a = fabsf(u[d]);
		int32_t sg = u[d] < 0 ? -1 : 1;
		/* each quantizer's candidates once: index, squared error, rate */
		int32_t ck[2][3];
		float ce[2][3], cr[2][3];
		int nc[2] = {0, 0};
		for (unsigned q1 = 0; q1 < 2; q1++) {
			const uint16_t *pp = p[lv[d] + 16 * q1];
			int32_t cand[3], n = 0;
			if (!q1) {
				int32_t m = (int32_t)(a * 0.5f);
				cand[n++] = m;
				cand[n++] = m + 1;
			} else if (a < 1.0f) {
				cand[n++] = 0;
				cand[n++] = 1;
			} else {
				int32_t m =
				    (int32_t)((a - 1.0f) * 0.5f) + 1; /* level 2m - 1 <= a */
				cand[n++] = m;
				cand[n++] = m + 1;
			}
			if (cand[0] && a <= 2.0f)
				cand[n++] = 0;
			for (int j = 0; j < n; j++) {
				int32_t kk = sg * cand[j];
				float e = a - (float)dq_level(cand[j], 2 * q1);
				uint32_t z = zz_enc(kk);
				ck[q1][j] = kk;
				ce[q1][j] = e * e;
				cr[q1][j] = lam * (float)pp[z < ESC ? z : ESC] * (1.0f / 256);
			}
			nc[q1] = n;
		}
		for (unsigned s = 0; s < 4; s++) {
			unsigned q1 = s >> 1;
			if (!(J[s] < INFINITY))
				continue;
			for (int j = 0; j < nc[q1]; j++) {
				float c = J[s] + ce[q1][j] + cr[q1][j];
				unsigned ns = dq_next[s][ck[q1][j] & 1];
				if (c < nJ[ns]) {
					nJ[ns] = c;
					w->bpk[d * 4 + ns] = ck[q1][j];
					w->bps[d * 4 + ns] = (uint8_t)s;
				}
			}
		}
		memcpy(J, nJ, sizeof(J));
	}
	unsigned s = 0;
	for (unsigned t = 1; t < 4; t++)
		if (J[t] < J[s])
			s = t;
	for (uint32_t d = D; d-- > 0;) {
		k[d] = w->bpk[d * 4 + s];
		s = w->bps[d * 4 + s];
	}
}

/*
 * A table per coded row, chosen by exact coded size (sent as deltas in the stream), and the
 * categories' offsets when there is more than one category.  With cx, w->cx must hold the
 * rows' categories.
 */
void uq_fit_tables(struct uq_work *w, uint32_t nr, int8_t *off, int qw, int cx, int dq)
{
	uint32_t D = w->D;
	for (uint32_t i = 0; i < nr; i++) {
		uint32_t *h = w->hist;
		const int32_t *q = w->q + (size_t)w->rows[i] * D;
		memset(h, 0, RANS_PNSYM * sizeof(uint32_t));
		for (uint32_t d = 0; d < D; d++) {
			uint32_t z = zz_enc(q[d]);
			h[z < ESC ? z : ESC]++;
		}
		w->ra[w->rows[i]] = (uint8_t)rans_param_choose(h, NULL);
		row_cats(w, cx ? w->cx + (size_t)w->rows[i] * D : w->lvd, q, w->cat + (size_t)i * D,
			 dq);
	}
	memset(off, 0, 32);
	if (qw || cx || dq)
		fit_offsets(w, nr, off, qw || cx);
}
