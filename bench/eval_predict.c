/* SPDX-License-Identifier: MIT */
/*
 * kvtier-eval predict: the prefetch predictor (client/kvtier_predict.h) on a real .kvd dump.
 *
 * For every (layer, query head, query position t) of the dump, with the true causal softmax
 * over s <= t of q.k/sqrt(D): mass recall of the predictor's selection with the current query,
 * of the oracle at the same budget and of the baselines; mass recall of the set predicted from
 * the query of t-1; prefetch hit rate; bytes fetched per step; attention-output error of sparse
 * attention over the selected blocks.  Definitions: docs/PREDICTOR.md.
 */
#include "kvd.h"
#include "kvtier_predict.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int eval_predict_main(int argc, char **argv);

enum { SHARED, PERQ, NMODE };
enum { B_CENTROID, B_MEANSTD, B_MINMAX, NBASE };
static const char *const mode_name[NMODE] = {"kv_shared", "per_q_head"};
static const enum kvt_pred_digest base_kind[NBASE] = {
    KVT_PRED_DIGEST_CENTROID, KVT_PRED_DIGEST_MEANSTD, KVT_PRED_DIGEST_MINMAX};

struct cfg {
	uint32_t block, margin, shortlist, sink, recent, digest, digest_bytes;
	double budget;
	float rope_theta;
	uint32_t l0, l1, p0, p1; /* layers [l0, l1), query positions [p0, p1) */
	bool json, per_q_primary;
	const char *path;
};

/* Sums over (layer, query head, position) of one row mode. */
struct acc {
	double rec, rec_oracle, rec_base[NBASE], err, err_oracle;
	double rec_prev, err_prev;
	double n, n_prev;
	double sel, hit, sel_scored, hit_scored; /* entries, over steps with a prediction */
	double sel_time_ns, n_sel_calls;
};

struct mode {
	struct kvt_pred *pred, *base[NBASE];
	uint32_t rows;
	uint32_t *sel, *next, *prev; /* [rows][cap] */
	uint32_t prev_n, next_n;     /* entries per row in prev (budget), next (with margin) */
	uint64_t *pset;		     /* [rows][words]: predicted for this step */
	bool have_prev;
	/* fetch model: per (position, layer, kv head) bitsets of selected and predicted */
	uint64_t *fsel, *fpred;
	struct acc a;
};

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: kvtier-eval predict [options] DUMP.kvd\n"
	    "  --block N          tokens per block (64)\n"
	    "  --budget F         fraction of the causal blocks selected at each step (0.10)\n"
	    "  --margin N         extra blocks per row in the next-step prediction (2)\n"
	    "  --digest KIND      auto|qkeys|centroid|meanstd|minmax (auto)\n"
	    "  --digest-bytes N   digest bytes per (block, layer, kv head); 0 = 6.25%% (0)\n"
	    "  --shortlist N      score only N x budget blocks with the full digest; 0 = all (0)\n"
	    "  --rope-theta F     RoPE base: predict from the query rotated one step (0 = off)\n"
	    "  --sink N           sink blocks always selected (1; 0 = none)\n"
	    "  --recent N         recent blocks always selected (1; 0 = none)\n"
	    "  --per-q-head       report per-query-head selection as the primary figures\n"
	    "  --layers A:B       layers A..B-1 (all)\n"
	    "  --positions A:B    query positions A..B-1 of the dump's P (all)\n"
	    "  --json             one JSON object on stdout\n");
}

static int parse_args(int argc, char **argv, struct cfg *c)
{
	*c = (struct cfg){.block = 64,
			  .budget = 0.10,
			  .margin = 2,
			  .sink = 1,
			  .recent = 1,
			  .l1 = UINT32_MAX,
			  .p1 = UINT32_MAX};
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		int bad = 0;

		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			exit(0);
		} else if (!strcmp(a, "--json")) {
			c->json = true;
			continue;
		} else if (!strcmp(a, "--per-q-head")) {
			c->per_q_primary = true;
			continue;
		} else if (a[0] != '-' || !a[1]) {
			if (c->path) {
				fprintf(stderr, "kvtier-eval predict: more than one dump given\n");
				return -1;
			}
			c->path = a;
			continue;
		}
		if (!v) {
			fprintf(stderr, "kvtier-eval predict: %s needs a value\n", a);
			return -1;
		}
		i++;
		if (!strcmp(a, "--block"))
			bad = kvd_parse_u32(v, &c->block) || !c->block;
		else if (!strcmp(a, "--budget")) {
			char *e;
			c->budget = strtod(v, &e);
			bad = *e || e == v || !(c->budget > 0 && c->budget <= 1);
		} else if (!strcmp(a, "--margin"))
			bad = kvd_parse_u32(v, &c->margin);
		else if (!strcmp(a, "--rope-theta")) {
			char *e;
			c->rope_theta = strtof(v, &e);
			bad = *e || e == v || !(c->rope_theta >= 0);
		} else if (!strcmp(a, "--shortlist"))
			bad = kvd_parse_u32(v, &c->shortlist);
		else if (!strcmp(a, "--sink"))
			bad = kvd_parse_u32(v, &c->sink);
		else if (!strcmp(a, "--recent"))
			bad = kvd_parse_u32(v, &c->recent);
		else if (!strcmp(a, "--digest-bytes"))
			bad = kvd_parse_u32(v, &c->digest_bytes);
		else if (!strcmp(a, "--digest")) {
			static const char *const k[] = {"auto", "qkeys", "centroid", "meanstd",
							"minmax"};
			bad = 1;
			for (uint32_t j = 0; j < 5; j++)
				if (!strcmp(v, k[j])) {
					c->digest = j;
					bad = 0;
				}
		} else if (!strcmp(a, "--layers"))
			bad = kvd_parse_range(v, &c->l0, &c->l1);
		else if (!strcmp(a, "--positions"))
			bad = kvd_parse_range(v, &c->p0, &c->p1);
		else {
			fprintf(stderr, "kvtier-eval predict: unknown option %s\n", a);
			usage(stderr);
			return -1;
		}
		if (bad) {
			fprintf(stderr, "kvtier-eval predict: bad value '%s' for %s\n", v, a);
			return -1;
		}
	}
	if (!c->path) {
		usage(stderr);
		return -1;
	}
	return 0;
}

static int make_pred(const struct kvd *d, const struct cfg *c, uint32_t digest, bool perq,
		     struct kvt_pred **out)
{
	struct kvt_pred_opts o = {
	    .size = sizeof(o),
	    .n_layers = d->n_layers,
	    .n_kv_heads = d->n_kv_heads,
	    .n_q_heads = d->n_q_heads,
	    .head_dim = d->head_dim,
	    .block_tokens = c->block,
	    .digest = digest,
	    .digest_bytes = c->digest_bytes,
	    .sink_blocks = c->sink,
	    .recent_blocks = c->recent,
	    .flags = (perq ? KVT_PRED_PER_Q_HEAD : 0) | (c->sink ? 0 : KVT_PRED_NO_SINK) |
		     (c->recent ? 0 : KVT_PRED_NO_RECENT),
	    .shortlist = c->shortlist,
	    .rope_theta = c->rope_theta,
	};
	int ret = kvt_pred_create(&o, out);

	if (ret < 0)
		fprintf(stderr, "kvtier-eval predict: cannot create predictor: %s\n",
			strerror(-ret));
	return ret;
}

static inline void bset(uint64_t *s, uint32_t b)
{
	s[b / 64] |= 1ull << (b % 64);
}

static inline bool bget(const uint64_t *s, uint32_t b)
{
	return s[b / 64] >> (b % 64) & 1;
}

/* A JSON string: the path and the dump's source name are not ours to trust. */
static void json_str(const char *key, const char *v)
{
	printf("\"%s\":\"", key);
	for (const unsigned char *c = (const unsigned char *)v; *c; c++) {
		if (*c == '"' || *c == '\\')
			printf("\\%c", *c);
		else if (*c < 0x20 || *c > 0x7e)
			printf("\\u%04x", *c);
		else
			putchar(*c);
	}
	printf("\",");
}

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* Oracle under the predictor's constraints: forced blocks, then the best by true mass (summed
 * over the row's query heads).  Writes n blocks to out. */
static void oracle_row(const double *mass, uint32_t nb, uint32_t n, uint32_t s, uint32_t r,
		       uint32_t *out, uint8_t *taken)
{
	uint32_t i = 0;

	memset(taken, 0, nb);
	for (uint32_t b = 0; b < s; b++)
		out[i++] = b, taken[b] = 1;
	for (uint32_t b = r; b < nb; b++)
		out[i++] = b, taken[b] = 1;
	while (i < n) {
		uint32_t best = UINT32_MAX;
		for (uint32_t b = 0; b < nb; b++)
			if (!taken[b] && (best == UINT32_MAX || mass[b] > mass[best]))
				best = b;
		out[i++] = best;
		taken[best] = 1;
	}
}

/* Exact causal attention of one query head at position t: probabilities prob[0..t], mass per
 * block, output o. */
static void true_attention(const uint16_t *q16, const float *Kh, const float *Vh, uint32_t t,
			   uint32_t T, uint32_t D, float *prob, double *mass, float *o)
{
	float qf[KVT_PRED_MAX_HEAD_DIM], mx = -INFINITY, sc = 1.0f / sqrtf((float)D);
	double z = 0;

	for (uint32_t e = 0; e < D; e++)
		qf[e] = kvd_half_to_float(q16[e]);
	for (uint32_t s = 0; s <= t; s++) {
		const float *kk = Kh + (size_t)s * D;
		float a = 0;
		for (uint32_t e = 0; e < D; e++)
			a += qf[e] * kk[e];
		prob[s] = a * sc;
		mx = prob[s] > mx ? prob[s] : mx;
	}
	for (uint32_t s = 0; s <= t; s++)
		z += (prob[s] = expf(prob[s] - mx));
	for (uint32_t b = 0; b <= t / T; b++)
		mass[b] = 0;
	memset(o, 0, sizeof(float) * D);
	for (uint32_t s = 0; s <= t; s++) {
		const float *v = Vh + (size_t)s * D;
		prob[s] = (float)(prob[s] / z);
		mass[s / T] += prob[s];
		for (uint32_t e = 0; e < D; e++)
			o[e] += prob[s] * v[e];
	}
}

/* Mass and attention-output error of the set blocks[0..n) for one query head. */
static void eval_set(const uint32_t *blocks, uint32_t n, const double *mass, const float *prob,
		     const float *V, const float *o_full, uint32_t t, uint32_t T, uint32_t D,
		     float *o_sparse, double *rec, double *err)
{
	double r = 0, z = 0, num = 0, den = 0;

	memset(o_sparse, 0, sizeof(float) * D);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t b = blocks[i];
		if (b == UINT32_MAX)
			continue;
		r += mass[b];
		for (uint32_t s = b * T; s < (b + 1) * T && s <= t; s++) {
			const float *v = V + (size_t)s * D;
			z += prob[s];
			for (uint32_t e = 0; e < D; e++)
				o_sparse[e] += prob[s] * v[e];
		}
	}
	for (uint32_t e = 0; e < D; e++) {
		double x = z > 0 ? o_sparse[e] / z : 0;
		num += (x - o_full[e]) * (x - o_full[e]);
		den += (double)o_full[e] * o_full[e];
	}
	*rec += r;
	*err += den > 0 ? sqrt(num / den) : 0;
}

/* Fetch model (docs/PREDICTOR.md): the fast tier holds what the last step selected or had
 * predicted; the prediction for step t is requested during step t-1; whatever step t selects
 * and neither holds is a miss, fetched synchronously.  Returns blocks moved per step. */
static void fetch_model(const uint64_t *fsel, const uint64_t *fpred, uint32_t npos, uint32_t nset,
			uint32_t stride_sets, uint32_t group, size_t words, double *moved,
			double *missed)
{
	uint64_t *hold = calloc(words, 8), *cur = calloc(words, 8), *pr = calloc(words, 8);

	*moved = *missed = 0;
	for (uint32_t g0 = 0; g0 < nset; g0 += group) {
		memset(hold, 0, words * 8);
		for (uint32_t t = 0; t < npos; t++) {
			memset(cur, 0, words * 8);
			memset(pr, 0, words * 8);
			for (uint32_t g = g0; g < g0 + group; g++) {
				const uint64_t *a = fsel + ((size_t)t * stride_sets + g) * words;
				const uint64_t *b = fpred + ((size_t)t * stride_sets + g) * words;
				for (size_t w = 0; w < words; w++) {
					cur[w] |= a[w];
					pr[w] |= b[w];
				}
			}
			for (size_t w = 0; w < words && t > 0; w++) {
				*moved += __builtin_popcountll(pr[w] & ~hold[w]);
				*missed += __builtin_popcountll(cur[w] & ~hold[w] & ~pr[w]);
			}
			for (size_t w = 0; w < words; w++)
				hold[w] = cur[w] | pr[w];
		}
	}
	*moved += *missed;
	free(hold);
	free(cur);
	free(pr);
}

int eval_predict_main(int argc, char **argv)
{
	struct cfg c;
	struct kvd d;
	struct mode m[NMODE];
	int ret, rc = 1;
	uint32_t L, H, QH, G, D, T, P, NB, B;
	size_t words;
	float *K = NULL, *V = NULL, *prob = NULL, *o_full = NULL, *o_sp = NULL;
	double *mass = NULL, *gmass = NULL, or_free = 0, nfree = 0;
	uint16_t *q = NULL;
	uint32_t *obuf = NULL;
	uint8_t *taken = NULL;
	double t_start = now_ns();

	memset(m, 0, sizeof(m));
	if (parse_args(argc, argv, &c) < 0)
		return 2;
	ret = kvd_load(c.path, &d);
	if (ret < 0) {
		fprintf(stderr, "kvtier-eval predict: %s: %s\n", c.path, strerror(-ret));
		return 1;
	}
	L = d.n_layers, H = d.n_kv_heads, QH = d.n_q_heads, D = d.head_dim, T = d.n_tokens;
	P = d.n_q_pos, B = c.block, G = QH / H;
	NB = (T + B - 1) / B;
	words = (NB + 63) / 64;
	if (c.l1 == UINT32_MAX)
		c.l1 = L;
	if (c.p1 == UINT32_MAX)
		c.p1 = P;
	if (c.l1 > L || c.p1 > P || !P) {
		fprintf(stderr,
			"kvtier-eval predict: range outside the dump (%u layers, %u positions)\n",
			L, P);
		goto out;
	}

	for (int mo = 0; mo < NMODE; mo++) {
		if (make_pred(&d, &c, c.digest, mo == PERQ, &m[mo].pred) < 0)
			goto out;
		for (int b = 0; b < NBASE; b++)
			if (make_pred(&d, &c, base_kind[b], mo == PERQ, &m[mo].base[b]) < 0)
				goto out;
		m[mo].rows = kvt_pred_rows(m[mo].pred);
		m[mo].sel = calloc((size_t)m[mo].rows * NB, sizeof(uint32_t));
		m[mo].next = calloc((size_t)m[mo].rows * NB, sizeof(uint32_t));
		m[mo].prev = calloc((size_t)m[mo].rows * NB, sizeof(uint32_t));
		m[mo].pset = calloc((size_t)m[mo].rows * words, 8);
		m[mo].fsel = calloc((size_t)P * L * H * words, 8);
		m[mo].fpred = calloc((size_t)P * L * H * words, 8);
		if (!m[mo].sel || !m[mo].next || !m[mo].prev || !m[mo].pset || !m[mo].fsel ||
		    !m[mo].fpred)
			goto nomem;
	}
	K = malloc(sizeof(float) * H * T * D);
	V = malloc(sizeof(float) * H * T * D);
	prob = malloc(sizeof(float) * QH * T);
	o_full = malloc(sizeof(float) * QH * D);
	o_sp = malloc(sizeof(float) * D);
	mass = malloc(sizeof(double) * QH * NB);
	gmass = malloc(sizeof(double) * NB);
	q = malloc(sizeof(uint16_t) * QH * D);
	obuf = malloc(sizeof(uint32_t) * QH * NB);
	taken = malloc(NB);
	if (!K || !V || !prob || !o_full || !o_sp || !mass || !gmass || !q || !obuf || !taken)
		goto nomem;

	for (uint32_t l = c.l0; l < c.l1; l++) {
		for (uint32_t h = 0; h < H; h++)
			for (uint32_t s = 0; s < T; s++)
				for (uint32_t e = 0; e < D; e++) {
					size_t i = ((size_t)h * T + s) * D + e;
					K[i] = kvd_half_to_float(kvd_at(&d, d.k, l, h, s)[e]);
					V[i] = kvd_half_to_float(kvd_at(&d, d.v, l, h, s)[e]);
				}
		/* all blocks, the last ones partial: the predictor only scores a block whose
		 * digest stops at or before the step's context, so nothing leaks from the future */
		for (uint32_t b = 0; b < NB; b++) {
			uint32_t n = T - b * B < B ? T - b * B : B;
			const uint16_t *k0 = kvd_at(&d, d.k, l, 0, b * B);
			for (int mo = 0; mo < NMODE; mo++) {
				ret = kvt_pred_add_block_layer(m[mo].pred, b, l, k0, n,
							       (size_t)T * D, D);
				for (int bi = 0; bi < NBASE && ret >= 0; bi++)
					ret = kvt_pred_add_block_layer(m[mo].base[bi], b, l, k0, n,
								       (size_t)T * D, D);
				if (ret < 0) {
					fprintf(stderr, "kvtier-eval predict: add_block: %s\n",
						kvt_pred_errmsg(m[mo].pred));
					goto out;
				}
			}
		}
		for (int mo = 0; mo < NMODE; mo++)
			m[mo].have_prev = false;

		for (uint32_t pi = c.p0; pi < c.p1; pi++) {
			uint32_t t = T - P + pi, ctx = t + 1, nb = (ctx + B - 1) / B;
			uint32_t k = kvt_pred_budget(nb, c.budget), s0, r0;
			uint32_t nb_next = (ctx + 1 + B - 1) / B;
			uint32_t k_next = kvt_pred_budget(nb_next, c.budget);

			for (uint32_t j = 0; j < QH; j++)
				memcpy(q + (size_t)j * D, d.q + (((size_t)l * QH + j) * P + pi) * D,
				       D * 2);
			s0 = c.sink < nb ? c.sink : nb;
			r0 = c.recent < nb ? nb - c.recent : 0;
			r0 = r0 < s0 ? s0 : r0;

			/* Without a forced recent block the partial block must be scored too:
			 * digest it as it fills, as an engine would have to. */
			if (!c.recent) {
				uint32_t b = t / B;
				const uint16_t *k0 = kvd_at(&d, d.k, l, 0, b * B);
				for (int mo = 0; mo < NMODE; mo++) {
					ret = kvt_pred_add_block_layer(
					    m[mo].pred, b, l, k0, t - b * B + 1, (size_t)T * D, D);
					for (int bi = 0; bi < NBASE && ret >= 0; bi++)
						ret = kvt_pred_add_block_layer(m[mo].base[bi], b, l,
									       k0, t - b * B + 1,
									       (size_t)T * D, D);
					if (ret < 0)
						goto out;
				}
			}

			/* the predictor's selections first: their counters need the prediction
			 * of the last step */
			for (int mo = 0; mo < NMODE; mo++) {
				struct mode *M = &m[mo];
				double t0 = now_ns();
				int n = kvt_pred_select(M->pred, l, q, ctx, k, M->sel,
							(size_t)M->rows * NB);
				M->a.sel_time_ns += now_ns() - t0;
				M->a.n_sel_calls++;
				if (n < 0) {
					fprintf(stderr, "kvtier-eval predict: select: %s\n",
						kvt_pred_errmsg(M->pred));
					goto out;
				}
				if ((uint32_t)n != kvt_pred_select_count(M->pred, ctx, k)) {
					fprintf(stderr,
						"kvtier-eval predict: select count mismatch\n");
					goto out;
				}
				for (uint32_t r = 0; r < M->rows; r++) {
					uint32_t h = mo == PERQ ? r / G : r;
					uint64_t *fs =
					    M->fsel + (((size_t)pi * L + l) * H + h) * words;
					for (int i = 0; i < n; i++) {
						uint32_t b = M->sel[(size_t)r * n + i];
						if (b == UINT32_MAX)
							continue;
						bset(fs, b);
						if (M->have_prev) {
							bool forced = b < s0 || b >= r0;
							bool hit =
							    bget(M->pset + (size_t)r * words, b);
							M->a.sel++;
							M->a.hit += hit;
							M->a.sel_scored += !forced;
							M->a.hit_scored += hit && !forced;
						}
					}
				}
			}

			for (uint32_t j = 0; j < QH; j++)
				true_attention(q + (size_t)j * D, K + (size_t)(j / G) * T * D,
					       V + (size_t)(j / G) * T * D, t, B, D,
					       prob + (size_t)j * T, mass + (size_t)j * NB,
					       o_full + (size_t)j * D);
			for (uint32_t j = 0; j < QH; j++) {
				/* unconstrained per-query-head oracle: the reference rule */
				for (uint32_t b = 0; b < nb; b++)
					gmass[b] = mass[(size_t)j * NB + b];
				oracle_row(gmass, nb, k, 0, nb, obuf, taken);
				for (uint32_t i = 0; i < k; i++)
					or_free += mass[(size_t)j * NB + obuf[i]];
				nfree++;
			}

			for (int mo = 0; mo < NMODE; mo++) {
				struct mode *M = &m[mo];
				uint32_t n = kvt_pred_select_count(M->pred, ctx, k);

				for (uint32_t r = 0; r < M->rows; r++) {
					uint32_t j0 = mo == PERQ ? r : r * G,
						 j1 = mo == PERQ ? r + 1 : j0 + G;
					/* oracle: forced blocks, then the best by the row's summed
					 * mass */
					for (uint32_t b = 0; b < nb; b++) {
						gmass[b] = 0;
						for (uint32_t j = j0; j < j1; j++)
							gmass[b] += mass[(size_t)j * NB + b];
					}
					oracle_row(gmass, nb, n, s0, r0, obuf, taken);
					for (uint32_t j = j0; j < j1; j++) {
						const double *ms = mass + (size_t)j * NB;
						const float *pr = prob + (size_t)j * T,
							    *of = o_full + (size_t)j * D;
						const float *Vh = V + (size_t)(j / G) * T * D;

						eval_set(M->sel + (size_t)r * n, n, ms, pr, Vh, of,
							 t, B, D, o_sp, &M->a.rec, &M->a.err);
						eval_set(obuf, n, ms, pr, Vh, of, t, B, D, o_sp,
							 &M->a.rec_oracle, &M->a.err_oracle);
						if (M->have_prev)
							eval_set(M->prev + (size_t)r * M->prev_n,
								 M->prev_n, ms, pr, Vh, of, t, B, D,
								 o_sp, &M->a.rec_prev,
								 &M->a.err_prev);
						M->a.n++;
						M->a.n_prev += M->have_prev;
					}
				}
				for (int bi = 0; bi < NBASE; bi++) {
					int nn = kvt_pred_select(M->base[bi], l, q, ctx, k, obuf,
								 (size_t)QH * NB);
					if (nn < 0) {
						fprintf(stderr, "kvtier-eval predict: select: %s\n",
							kvt_pred_errmsg(M->base[bi]));
						goto out;
					}
					for (uint32_t r = 0; r < M->rows; r++) {
						uint32_t j0 = mo == PERQ ? r : r * G;
						uint32_t j1 = mo == PERQ ? r + 1 : j0 + G;
						for (uint32_t j = j0; j < j1; j++)
							for (int i = 0; i < nn; i++) {
								uint32_t b =
								    obuf[(size_t)r * nn + i];
								if (b != UINT32_MAX)
									M->a.rec_base[bi] +=
									    mass[(size_t)j * NB +
										 b];
							}
					}
				}
			}

			/* predict the next step from this query (scores of the select reused) */
			for (int mo = 0; mo < NMODE && pi + 1 < c.p1; mo++) {
				struct mode *M = &m[mo];
				int n = kvt_pred_predict_next(
				    M->pred, l, c.rope_theta > 0 ? q : NULL, ctx, k_next, c.margin,
				    M->next, (size_t)M->rows * NB);
				uint32_t n0 = kvt_pred_select_count(M->pred, ctx + 1, k_next);
				if (n < 0) {
					fprintf(stderr, "kvtier-eval predict: predict_next: %s\n",
						kvt_pred_errmsg(M->pred));
					goto out;
				}
				memset(M->pset, 0, (size_t)M->rows * words * 8);
				for (uint32_t r = 0; r < M->rows; r++) {
					uint32_t h = mo == PERQ ? r / G : r;
					uint64_t *fp =
					    M->fpred + (((size_t)(pi + 1) * L + l) * H + h) * words;
					for (int i = 0; i < n; i++) {
						uint32_t b = M->next[(size_t)r * n + i];
						if (b == UINT32_MAX)
							continue;
						bset(M->pset + (size_t)r * words, b);
						bset(fp, b);
					}
					/* the budget-sized prefix is the selection predicted for
					 * t+1 */
					memcpy(M->prev + (size_t)r * n0, M->next + (size_t)r * n,
					       n0 * sizeof(uint32_t));
				}
				M->prev_n = n0;
				M->have_prev = true;
			}
		}
	}

	/* ---- report ---- */
	{
		double blk_bytes = (double)L * H * B * D * 2 * 2,
		       slice_bytes = (double)B * D * 2 * 2;
		double kv_bytes_per_slice = slice_bytes;
		size_t dbytes = kvt_pred_digest_bytes(m[0].pred);
		double dfrac = dbytes / kv_bytes_per_slice;
		uint32_t npos = c.p1 - c.p0;
		int prim = c.per_q_primary ? PERQ : SHARED;
		double moved[NMODE], missed[NMODE], smoved[NMODE], smissed[NMODE];
		double ctx_blocks = 0;
		static const char *const kinds[] = {"auto", "qkeys", "centroid", "meanstd",
						    "minmax"};
		struct kvt_pred_counters pc[NMODE];

		for (uint32_t pi = c.p0; pi < c.p1; pi++)
			ctx_blocks += (double)(T - P + pi + 1 + B - 1) / B;
		ctx_blocks /= npos;
		for (int mo = 0; mo < NMODE; mo++) {
			/* whole blocks (all layers): union over layers and kv heads */
			fetch_model(m[mo].fsel + (size_t)c.p0 * L * H * words,
				    m[mo].fpred + (size_t)c.p0 * L * H * words, npos, L * H, L * H,
				    L * H, words, &moved[mo], &missed[mo]);
			/* per (layer, kv head) slices */
			fetch_model(m[mo].fsel + (size_t)c.p0 * L * H * words,
				    m[mo].fpred + (size_t)c.p0 * L * H * words, npos, L * H, L * H,
				    1, words, &smoved[mo], &smissed[mo]);
			kvt_pred_get_counters(m[mo].pred, &pc[mo], sizeof(pc[mo]));
		}
		(void)kinds;

#define A(mo, f)  (m[mo].a.f / m[mo].a.n)
#define AP(mo, f) (m[mo].a.n_prev ? m[mo].a.f / m[mo].a.n_prev : NAN)
#define HR(mo)	  (m[mo].a.sel ? m[mo].a.hit / m[mo].a.sel : NAN)
#define HRS(mo)	  (m[mo].a.sel_scored ? m[mo].a.hit_scored / m[mo].a.sel_scored : NAN)
		if (c.json) {
			printf("{");
			json_str("dump", c.path);
			json_str("source", d.source);
			printf("\"layers\":[%u,%u],"
			       "\"positions\":[%u,%u],\"block\":%u,\"budget\":%.4f,"
			       "\"rule\":\"k=ceil(budget*ceil((t+1)/block)); sink %u, recent %u "
			       "forced\","
			       "\"selection\":\"%s\",\"digest\":\"%s\",\"digest_bytes\":%zu,"
			       "\"digest_fraction\":%.5f,\"margin\":%u,\"shortlist\":%u,",
			       c.l0, c.l1, c.p0, c.p1, B, c.budget, c.sink, c.recent,
			       mode_name[prim], kinds[kvt_pred_digest_kind(m[0].pred)], dbytes,
			       dfrac, c.margin, c.shortlist);
			for (int pass = 0; pass < NMODE; pass++) {
				int mo = pass == 0 ? prim : 1 - prim;
				if (pass == 1)
					printf("\"%s\":{", mode_name[mo]);
				printf(
				    "\"mass_recall\":%.4f,\"oracle_mass_recall\":%.4f,"
				    "\"ratio_to_oracle\":%.4f,\"prev_step_mass_recall\":%.4f,"
				    "\"prev_step_ratio_to_oracle\":%.4f,"
				    "\"prefetch_hit_rate\":%.4f,\"prefetch_hit_rate_scored\":%.4f,"
				    "\"attn_err\":%.4f,\"oracle_attn_err\":%.4f,"
				    "\"prev_step_attn_err\":%.4f,",
				    A(mo, rec), A(mo, rec_oracle), A(mo, rec) / A(mo, rec_oracle),
				    AP(mo, rec_prev), AP(mo, rec_prev) / A(mo, rec_oracle), HR(mo),
				    HRS(mo), A(mo, err), A(mo, err_oracle), AP(mo, err_prev));
				printf("\"baselines\":{\"centroid\":%.4f,\"mean_std\":%.4f,"
				       "\"quest_minmax\":%.4f},",
				       A(mo, rec_base[0]), A(mo, rec_base[1]), A(mo, rec_base[2]));
				printf(
				    "\"bytes_fetched_per_step\":%.0f,\"sync_blocks_per_step\":%.3f,"
				    "\"slice_bytes_fetched_per_step\":%.0f,"
				    "\"context_bytes\":%.0f,\"select_us\":%.1f,"
				    "\"counters\":{\"predicted\":%llu,\"selected\":%llu,"
				    "\"hit\":%llu,\"wasted\":%llu,\"late\":%llu}",
				    moved[mo] / (npos - 1) * blk_bytes, missed[mo] / (npos - 1),
				    smoved[mo] / (npos - 1) * slice_bytes, ctx_blocks * blk_bytes,
				    m[mo].a.sel_time_ns / m[mo].a.n_sel_calls / 1e3,
				    (unsigned long long)pc[mo].predicted,
				    (unsigned long long)pc[mo].selected,
				    (unsigned long long)pc[mo].hit,
				    (unsigned long long)pc[mo].wasted,
				    (unsigned long long)pc[mo].late);
				printf(pass == 0 ? "," : "},");
			}
			printf("\"oracle_free_mass_recall\":%.4f,\"seconds\":%.1f}\n",
			       or_free / nfree, (now_ns() - t_start) / 1e9);
		} else {
			printf("dump %s (%s): %u layers, %u kv / %u q heads, D %u, %u tokens, %u "
			       "query "
			       "positions\n",
			       c.path, d.source, L, H, QH, D, T, P);
			printf(
			    "block %u tokens, budget %.3f -> k = ceil(budget * blocks(t)); forced: "
			    "sink %u, recent %u; layers %u:%u positions %u:%u\n",
			    B, c.budget, c.sink, c.recent, c.l0, c.l1, c.p0, c.p1);
			printf("digest %s, %zu bytes per (block, layer, kv head) = %.2f%% of its "
			       "K+V\n",
			       kinds[kvt_pred_digest_kind(m[0].pred)], dbytes, 100 * dfrac);
			printf("unconstrained per-q-head oracle (reference rule): %.4f\n",
			       or_free / nfree);
			for (int mo = 0; mo < NMODE; mo++) {
				printf("\n[%s]%s\n", mode_name[mo], mo == prim ? " (primary)" : "");
				printf("  mass recall          %.4f   oracle %.4f   ratio %.4f\n",
				       A(mo, rec), A(mo, rec_oracle),
				       A(mo, rec) / A(mo, rec_oracle));
				printf("  from previous query  %.4f   ratio %.4f\n",
				       AP(mo, rec_prev), AP(mo, rec_prev) / A(mo, rec_oracle));
				printf("  baselines            centroid %.4f  mean+std %.4f  quest "
				       "%.4f\n",
				       A(mo, rec_base[0]), A(mo, rec_base[1]), A(mo, rec_base[2]));
				printf("  prefetch hit rate    %.4f (non-forced blocks %.4f), "
				       "margin %u\n",
				       HR(mo), HRS(mo), c.margin);
				printf(
				    "  attention error      %.4f   oracle %.4f   prev-step %.4f\n",
				    A(mo, err), A(mo, err_oracle), AP(mo, err_prev));
				printf("  fetched per step     %.1f KiB whole blocks (%.2f sync), "
				       "%.1f KiB "
				       "slices; context %.1f KiB\n",
				       moved[mo] / (npos - 1) * blk_bytes / 1024,
				       missed[mo] / (npos - 1),
				       smoved[mo] / (npos - 1) * slice_bytes / 1024,
				       ctx_blocks * blk_bytes / 1024);
				printf("  select()             %.1f us per layer\n",
				       m[mo].a.sel_time_ns / m[mo].a.n_sel_calls / 1e3);
			}
			printf("\n%.1f s\n", (now_ns() - t_start) / 1e9);
		}
	}
	rc = 0;
	goto out;
nomem:
	fprintf(stderr, "kvtier-eval predict: out of memory\n");
out:
	for (int mo = 0; mo < NMODE; mo++) {
		kvt_pred_destroy(m[mo].pred);
		for (int b = 0; b < NBASE; b++)
			kvt_pred_destroy(m[mo].base[b]);
		free(m[mo].sel);
		free(m[mo].next);
		free(m[mo].prev);
		free(m[mo].pset);
		free(m[mo].fsel);
		free(m[mo].fpred);
	}
	free(K);
	free(V);
	free(prob);
	free(o_full);
	free(o_sp);
	free(mass);
	free(gmass);
	free(q);
	free(obuf);
	free(taken);
	kvd_free(&d);
	return rc;
}
