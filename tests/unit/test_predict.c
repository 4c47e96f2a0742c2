/* SPDX-License-Identifier: MIT */
/*
 * Prefetch predictor (client/kvtier_predict.h): digests of known inputs, selection against a
 * brute-force reference, prediction, prefetch list and counters, and API misuse.
 * Randomized tests take --seed N (default 1) and print the seed they ran with.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kvtier_predict.h"

static uint64_t seed = 1;

static uint64_t rnd(void)
{
	/* splitmix64 */
	uint64_t z = (seed += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static float urand(void) /* [-1, 1) */
{
	return (float)((rnd() >> 40) / (double)(1ull << 24) * 2 - 1);
}

static uint16_t h(float x)
{
	_Float16 f = (_Float16)x;
	uint16_t u;
	memcpy(&u, &f, 2);
	return u;
}

static float f(uint16_t u)
{
	_Float16 x;
	memcpy(&x, &u, 2);
	return (float)x;
}

static struct kvt_pred_opts opts(uint32_t L, uint32_t H, uint32_t QH, uint32_t D, uint32_t T)
{
	return (struct kvt_pred_opts){.size = sizeof(struct kvt_pred_opts),
				      .n_layers = L,
				      .n_kv_heads = H,
				      .n_q_heads = QH,
				      .head_dim = D,
				      .block_tokens = T};
}

static struct kvt_pred *make(const struct kvt_pred_opts *o)
{
	struct kvt_pred *p = NULL;
	assert_int_equal(kvt_pred_create(o, &p), 0);
	assert_non_null(p);
	return p;
}

/* ---- creation and sizes ---- */

static void test_create_misuse(void **state)
{
	struct kvt_pred_opts o = opts(2, 2, 4, 64, 64);
	struct kvt_pred *p = (struct kvt_pred *)1;
	struct {
		struct kvt_pred_opts o;
		uint32_t future;
	} big;

	assert_int_equal(kvt_pred_create(NULL, &p), -EINVAL);
	assert_null(p);
	assert_int_equal(kvt_pred_create(&o, NULL), -EINVAL);
	o.size = 8;
	assert_int_equal(kvt_pred_create(&o, &p), -EINVAL);
	o = opts(2, 2, 3, 64, 64); /* q heads not a multiple of kv heads */
	assert_int_equal(kvt_pred_create(&o, &p), -EINVAL);
	o = opts(0, 2, 4, 64, 64);
	assert_int_equal(kvt_pred_create(&o, &p), -EINVAL);
	o = opts(2, 2, 4, 0, 64);
	assert_int_equal(kvt_pred_create(&o, &p), -EINVAL);
	o = opts(2, 2, 4, KVT_PRED_MAX_HEAD_DIM + 1, 64);
	assert_int_equal(kvt_pred_create(&o, &p), -EINVAL);
	o = opts(2, 2, 4, 64, 0);
	assert_int_equal(kvt_pred_create(&o, &p), -EINVAL);
	o = opts(2, 2, 4, 64, 64);
	o.flags = 0x100;
	assert_int_equal(kvt_pred_create(&o, &p), -EINVAL);
	o = opts(2, 2, 4, 64, 64);
	o.digest = 99;
	assert_int_equal(kvt_pred_create(&o, &p), -EINVAL);
	o.digest = KVT_PRED_DIGEST_QKEYS;
	o.digest_bytes = 100; /* below the fixed part */
	assert_int_equal(kvt_pred_create(&o, &p), -ENOSPC);
	assert_null(p);
	o.digest = KVT_PRED_DIGEST_CENTROID;
	o.digest_bytes = 2 * 64 - 1;
	assert_int_equal(kvt_pred_create(&o, &p), -ENOSPC);

	/* a larger, newer struct: accepted if the unknown tail is zero */
	memset(&big, 0, sizeof(big));
	big.o = opts(2, 2, 4, 64, 64);
	big.o.size = sizeof(big);
	assert_int_equal(kvt_pred_create(&big.o, &p), 0);
	kvt_pred_destroy(p);
	big.future = 1;
	assert_int_equal(kvt_pred_create(&big.o, &p), -E2BIG);
	assert_null(p);
	kvt_pred_destroy(NULL);
}

static void test_digest_sizes(void **state)
{
	struct kvt_pred_opts o = opts(4, 2, 4, 128, 64);
	struct kvt_pred *p = make(&o);
	size_t kv = (size_t)2 * 64 * 128 * 2; /* K+V fp16 of one (block, layer, kv head) */

	/* the budget: 6.25 % of 32 KiB */
	assert_int_equal(kvt_pred_digest_kind(p), KVT_PRED_DIGEST_QKEYS);
	assert_true(kvt_pred_digest_bytes(p) <= kv / 16);
	assert_true(kvt_pred_digest_bytes(p) > kv / 16 - 64 / 8); /* and uses it */
	assert_int_equal(kvt_pred_rows(p), 2);
	kvt_pred_destroy(p);

	o = opts(4, 2, 4, 128, 16); /* 512 bytes: too few for QKEYS */
	p = make(&o);
	assert_int_equal(kvt_pred_digest_kind(p), KVT_PRED_DIGEST_MEANSTD);
	assert_int_equal(kvt_pred_digest_bytes(p), 512);
	kvt_pred_destroy(p);

	o.digest = KVT_PRED_DIGEST_CENTROID;
	p = make(&o);
	assert_int_equal(kvt_pred_digest_bytes(p), 256);
	kvt_pred_destroy(p);

	o = opts(1, 1, 1, 128, 64);
	o.digest = KVT_PRED_DIGEST_MINMAX;
	o.flags = KVT_PRED_PER_Q_HEAD;
	p = make(&o);
	assert_int_equal(kvt_pred_digest_bytes(p), 512);
	assert_int_equal(kvt_pred_rows(p), 1);
	kvt_pred_destroy(p);
}

/* ---- digests of known inputs ---- */

/* log sum_s exp(q.k_s/sqrt(D)) over n keys [n][D] */
static double exact_logmass(const float *q, const float *k, uint32_t n, uint32_t D)
{
	double m = -INFINITY, z = 0, sc[4096];

	for (uint32_t s = 0; s < n; s++) {
		double a = 0;
		for (uint32_t d = 0; d < D; d++)
			a += (double)q[d] * k[(size_t)s * D + d];
		sc[s] = a / sqrt((double)D);
		m = sc[s] > m ? sc[s] : m;
	}
	for (uint32_t s = 0; s < n; s++)
		z += exp(sc[s] - m);
	return m + log(z);
}

static void test_digest_constant_keys(void **state)
{
	/* identical keys: every kind's estimate is exact (MINMAX: its bound is q.k) */
	enum { D = 32, T = 16 };
	static const uint32_t kinds[] = {KVT_PRED_DIGEST_QKEYS, KVT_PRED_DIGEST_CENTROID,
					 KVT_PRED_DIGEST_MEANSTD, KVT_PRED_DIGEST_MINMAX};
	uint16_t k[T * D], q[D];
	float kf[T * D], qf[D], out[1];

	for (uint32_t d = 0; d < D; d++) {
		float v = (float)((int)(d % 7) - 3) * 0.25f; /* exact in fp16 */
		for (uint32_t s = 0; s < T; s++)
			k[s * D + d] = h(v), kf[s * D + d] = v;
		q[d] = h((float)((int)(d % 5) - 2) * 0.5f);
		qf[d] = f(q[d]);
	}
	for (size_t i = 0; i < 4; i++) {
		struct kvt_pred_opts o = opts(1, 1, 1, D, T);
		struct kvt_pred *p;
		o.digest = kinds[i];
		o.digest_bytes = 4096;
		p = make(&o);
		assert_int_equal(kvt_pred_block_logmass(p, 0, 0, q, out), -ENOENT);
		assert_int_equal(kvt_pred_add_block(p, 0, k, T), 0);
		assert_int_equal(kvt_pred_block_logmass(p, 0, 0, q, out), 0);
		double want = exact_logmass(qf, kf, T, D);
		if (kinds[i] == KVT_PRED_DIGEST_MINMAX)
			want -= log((double)T); /* a bound on one score, no count */
		assert_float_equal(out[0], want, 1e-4);
		kvt_pred_destroy(p);
	}
}

static void test_digest_two_valued_keys(void **state)
{
	/* With one bit for every dimension (digest_bytes chosen so) keys that take two values
	 * per dimension are reconstructed exactly: the estimate is the exact log-sum-exp. */
	enum { D = 64, T = 64 };
	struct kvt_pred_opts o = opts(1, 1, 2, D, T);
	uint16_t k[T * D], q[2 * D];
	float kf[T * D], qf[2 * D], out[2];
	struct kvt_pred *p;

	o.digest = KVT_PRED_DIGEST_QKEYS;
	o.digest_bytes = 4 * D + D / 4 + D * (T / 8); /* fixed part + one row per dim */
	p = make(&o);
	assert_int_equal(kvt_pred_digest_bytes(p), o.digest_bytes);
	for (uint32_t d = 0; d < D; d++) {
		float lo = (float)(int)(rnd() % 16) * 0.125f - 1,
		      hi = lo + 0.5f + (rnd() % 4) * 0.25f;
		for (uint32_t s = 0; s < T; s++) {
			float v = rnd() & 1 ? hi : lo;
			k[s * D + d] = h(v);
			kf[s * D + d] = v;
		}
	}
	for (uint32_t i = 0; i < 2 * D; i++) {
		q[i] = h(urand() * 4);
		qf[i] = f(q[i]);
	}
	assert_int_equal(kvt_pred_add_block(p, 0, k, T), 0);
	assert_int_equal(kvt_pred_block_logmass(p, 0, 0, q, out), 0);
	assert_float_equal(out[0], exact_logmass(qf, kf, T, D), 2e-3);
	assert_float_equal(out[1], exact_logmass(qf + D, kf, T, D), 2e-3);

	/* partial block: only its n tokens count */
	assert_int_equal(kvt_pred_add_block(p, 1, k, 10), 0);
	assert_int_equal(kvt_pred_block_logmass(p, 1, 0, q, out), 0);
	assert_float_equal(out[0], exact_logmass(qf, kf, 10, D), 2e-3);
	kvt_pred_destroy(p);
}

static void test_digest_stats(void **state)
{
	/* mean+std and min/max formulas on a block of two keys */
	enum { D = 8 };
	uint16_t k[2 * D], q[D];
	float out[1];
	double mean_dot = 0, var_term = 0, bound = 0;

	for (uint32_t d = 0; d < D; d++) {
		float a = 0.5f * d - 1, b = a + (d % 2 ? 1.0f : -0.5f), qq = (d % 3) - 1.0f;
		k[d] = h(a);
		k[D + d] = h(b);
		q[d] = h(qq);
		mean_dot += qq * (a + b) / 2;
		var_term += qq * qq * ((a - b) / 2) * ((a - b) / 2);
		bound += fmax(qq * fmin(a, b), qq * fmax(a, b));
	}
	struct kvt_pred_opts o = opts(1, 1, 1, D, 2);
	o.digest = KVT_PRED_DIGEST_MEANSTD;
	o.digest_bytes = 64;
	struct kvt_pred *p = make(&o);
	assert_int_equal(kvt_pred_add_block(p, 0, k, 2), 0);
	assert_int_equal(kvt_pred_block_logmass(p, 0, 0, q, out), 0);
	assert_float_equal(out[0], log(2.0) + mean_dot / sqrt(D) + var_term / (2.0 * D), 1e-3);
	kvt_pred_destroy(p);
	o.digest = KVT_PRED_DIGEST_MINMAX;
	p = make(&o);
	assert_int_equal(kvt_pred_add_block(p, 0, k, 2), 0);
	assert_int_equal(kvt_pred_block_logmass(p, 0, 0, q, out), 0);
	assert_float_equal(out[0], bound / sqrt(D), 1e-3);
	kvt_pred_destroy(p);
}

/* ---- selection against a brute-force reference ---- */

struct ref {
	uint32_t L, H, QH, D, T, nblk;
	float *k; /* [L][H][nblk*T][D], every value two-valued per (block, dim) */
	uint16_t *k16;
};

static void ref_init(struct ref *r, uint32_t L, uint32_t H, uint32_t QH, uint32_t D, uint32_t T,
		     uint32_t nblk)
{
	size_t n = (size_t)L * H * nblk * T * D;
	*r = (struct ref){L, H, QH, D, T, nblk, malloc(n * 4), malloc(n * 2)};
	for (uint32_t l = 0; l < L; l++)
		for (uint32_t hh = 0; hh < H; hh++)
			for (uint32_t b = 0; b < nblk; b++)
				for (uint32_t d = 0; d < D; d++) {
					/* block-dependent levels so blocks differ in mass */
					float lo = urand() * 1.5f,
					      hi = lo + 0.25f + (rnd() % 8) * 0.125f;
					lo = f(h(lo));
					hi = f(h(hi));
					for (uint32_t s = 0; s < T; s++) {
						size_t i = ((((size_t)l * H + hh) * nblk * T) +
							    b * T + s) *
							       D +
							   d;
						r->k[i] = rnd() % 3 ? lo : hi;
						r->k16[i] = h(r->k[i]);
					}
				}
}

static void ref_free(struct ref *r)
{
	free(r->k);
	free(r->k16);
}

/* The documented rule, computed from exact log-masses: forced blocks, then by per-head
 * log-mass (per query head rows) or by the sum of per-head shares over usable blocks. */
static void ref_select(const struct ref *r, uint32_t layer, const float *q, uint32_t ctx,
		       uint32_t n, uint32_t sink, uint32_t recent, int perq, uint32_t *out)
{
	uint32_t nb = (ctx + r->T - 1) / r->T, G = r->QH / r->H, rows = perq ? r->QH : r->H;
	uint32_t s = sink < nb ? sink : nb, rr = recent < nb ? nb - recent : 0;
	double lm[64][64];

	if (rr < s)
		rr = s;
	for (uint32_t j = 0; j < r->QH; j++)
		for (uint32_t b = 0; b < nb; b++) {
			const float *kb =
			    r->k +
			    ((((size_t)layer * r->H + j / G) * r->nblk * r->T) + (size_t)b * r->T) *
				r->D;
			/* a block is usable when complete within ctx */
			lm[j][b] = (b + 1) * r->T <= ctx
				       ? exact_logmass(q + (size_t)j * r->D, kb, r->T, r->D)
				       : -INFINITY;
		}
	for (uint32_t row = 0; row < rows; row++) {
		double sc[64];
		uint32_t i = 0, j0 = perq ? row : row * G, j1 = perq ? row + 1 : j0 + G;
		int taken[64] = {0};
		for (uint32_t b = 0; b < nb; b++)
			sc[b] = perq ? lm[row][b] : 0;
		if (!perq)
			for (uint32_t j = j0; j < j1; j++) {
				double m = -INFINITY, z = 0;
				for (uint32_t b = 0; b < nb; b++)
					m = lm[j][b] > m ? lm[j][b] : m;
				for (uint32_t b = 0; b < nb; b++)
					z += isfinite(lm[j][b]) ? exp(lm[j][b] - m) : 0;
				for (uint32_t b = 0; b < nb; b++)
					sc[b] += isfinite(lm[j][b]) ? exp(lm[j][b] - m) / z : 0;
			}
		for (uint32_t b = 0; b < s; b++)
			out[row * n + i++] = b, taken[b] = 1;
		for (uint32_t b = rr; b < nb; b++)
			out[row * n + i++] = b, taken[b] = 1;
		while (i < n) {
			int best = -1;
			for (uint32_t b = 0; b < nb; b++)
				if (!taken[b] && isfinite(lm[j0][b]) &&
				    (best < 0 || sc[b] > sc[best]))
					best = (int)b;
			out[row * n + i++] = best < 0 ? UINT32_MAX : (uint32_t)best;
			if (best >= 0)
				taken[best] = 1;
		}
	}
}

static void check_against_ref(uint32_t flags, uint32_t sink, uint32_t recent, uint32_t shortlist)
{
	enum { L = 2, H = 2, QH = 6, D = 32, T = 16, NBLK = 24 };
	struct ref r;
	struct kvt_pred_opts o = opts(L, H, QH, D, T);
	struct kvt_pred *p;
	uint32_t out[QH * NBLK], want[QH * NBLK];
	int perq = !!(flags & KVT_PRED_PER_Q_HEAD);

	ref_init(&r, L, H, QH, D, T, NBLK);
	o.digest = KVT_PRED_DIGEST_QKEYS;
	o.digest_bytes = 4 * D + D / 4 + D * (T / 8); /* exact for two-valued keys */
	o.flags = flags;
	o.sink_blocks = sink;
	o.recent_blocks = recent;
	o.shortlist = shortlist;
	p = make(&o);
	for (uint32_t l = 0; l < L; l++)
		for (uint32_t b = 0; b < NBLK; b++)
			assert_int_equal(
			    kvt_pred_add_block_layer(p, b, l,
						     r.k16 + ((size_t)l * H * NBLK * T + b * T) * D,
						     T, (size_t)NBLK * T * D, D),
			    0);
	for (int trial = 0; trial < 40; trial++) {
		uint32_t layer = rnd() % L, ctx = 1 + rnd() % (NBLK * T), budget = rnd() % 8;
		uint16_t q16[QH * D];
		float q[QH * D];
		int n;
		for (uint32_t i = 0; i < QH * D; i++) {
			q16[i] = h(urand() * 3);
			q[i] = f(q16[i]);
		}
		n = kvt_pred_select(p, layer, q16, ctx, budget, out, sizeof(out) / 4);
		assert_true(n >= 0);
		assert_int_equal(n, kvt_pred_select_count(p, ctx, budget));
		ref_select(&r, layer, q, ctx, (uint32_t)n,
			   flags & KVT_PRED_NO_SINK ? 0
			   : sink		    ? sink
						    : 1,
			   flags & KVT_PRED_NO_RECENT ? 0
			   : recent		      ? recent
						      : 1,
			   perq, want);
		for (uint32_t i = 0; i < kvt_pred_rows(p) * (uint32_t)n; i++) {
			if (out[i] != want[i])
				fail_msg("seed %llu trial %d ctx %u budget %u: entry %u is %u, "
					 "reference %u",
					 (unsigned long long)seed, trial, ctx, budget, i, out[i],
					 want[i]);
		}
	}
	kvt_pred_destroy(p);
	ref_free(&r);
}

static void test_select_ref_shared(void **state)
{
	check_against_ref(0, 0, 0, 0);
}

static void test_select_ref_per_q_head(void **state)
{
	check_against_ref(KVT_PRED_PER_Q_HEAD, 0, 0, 0);
}

static void test_select_ref_forced(void **state)
{
	check_against_ref(0, 2, 3, 0);
	check_against_ref(KVT_PRED_NO_SINK | KVT_PRED_NO_RECENT, 0, 0, 0);
}

static void test_select_ref_shortlist(void **state)
{
	/* the first stage only narrows the candidates: with a shortlist covering them all the
	 * result is the reference's */
	check_against_ref(0, 0, 0, 64);
	check_against_ref(KVT_PRED_PER_Q_HEAD, 0, 0, 64);
}

static void test_select_real_estimate(void **state)
{
	/* Gaussian-like keys with per-block offsets: the digest's estimate of the block
	 * log-mass stays close to the exact value, and blocks with a much larger mass win. */
	enum { D = 64, T = 32, NBLK = 8 };
	struct kvt_pred_opts o = opts(1, 1, 1, D, T);
	struct kvt_pred *p = make(&o);
	uint16_t k[NBLK * T * D], q[D];
	float kf[NBLK * T * D], qf[D], est[1];
	uint32_t out[8];

	for (uint32_t i = 0; i < D; i++)
		qf[i] = f(q[i] = h(urand()));
	for (uint32_t b = 0; b < NBLK; b++)
		for (uint32_t s = 0; s < T; s++)
			for (uint32_t d = 0; d < D; d++) {
				/* block 5 leans towards q */
				float v = urand() + (b == 5 ? 1.5f * qf[d] : 0);
				size_t i = ((size_t)b * T + s) * D + d;
				k[i] = h(v);
				kf[i] = f(k[i]);
			}
	for (uint32_t b = 0; b < NBLK; b++) {
		assert_int_equal(kvt_pred_add_block_layer(p, b, 0, k + (size_t)b * T * D, T, 0, D),
				 0);
		assert_int_equal(kvt_pred_block_logmass(p, b, 0, q, est), 0);
		assert_float_equal(est[0], exact_logmass(qf, kf + (size_t)b * T * D, T, D), 0.25);
	}
	/* context of all 8 blocks; budget 3 = sink 0, recent 7, and the best: 5 */
	assert_int_equal(kvt_pred_select(p, 0, q, NBLK * T, 3, out, 8), 3);
	assert_int_equal(out[0], 0);
	assert_int_equal(out[1], 7);
	assert_int_equal(out[2], 5);
	kvt_pred_destroy(p);
}

/* ---- budget, forcing, causality ---- */

static void test_budget_and_forced(void **state)
{
	enum { D = 16, T = 4, NBLK = 10 };
	struct kvt_pred_opts o = opts(1, 1, 2, D, T);
	o.digest_bytes = 4096; /* 6.25 % of so small a block holds no digest */
	struct kvt_pred *p;
	uint16_t k[NBLK * T * D], q[2 * D];
	uint32_t out[2 * NBLK];

	assert_int_equal(kvt_pred_budget(60, 0.1), 6);
	assert_int_equal(kvt_pred_budget(61, 0.1), 7);
	assert_int_equal(kvt_pred_budget(57, 0.1), 6);
	assert_int_equal(kvt_pred_budget(10, 0), 0);
	assert_int_equal(kvt_pred_budget(10, 1.5), 10);
	assert_int_equal(kvt_pred_budget(3, 0.5), 2);

	p = make(&o);
	for (size_t i = 0; i < NBLK * T * D; i++)
		k[i] = h(urand());
	for (size_t i = 0; i < 2 * D; i++)
		q[i] = h(urand());
	/* only blocks 0..5 have digests */
	for (uint32_t b = 0; b < 6; b++)
		assert_int_equal(kvt_pred_add_block_layer(p, b, 0, k + (size_t)b * T * D, T, 0, D),
				 0);
	/* budget 0: forced blocks only (sink 0 and recent = the partial block 2) */
	assert_int_equal(kvt_pred_select_count(p, 9, 0), 2);
	assert_int_equal(kvt_pred_select(p, 0, q, 9, 0, out, 2 * NBLK), 2);
	assert_int_equal(out[0], 0);
	assert_int_equal(out[1], 2);
	/* one block of context: sink and recent are the same block */
	assert_int_equal(kvt_pred_select(p, 0, q, 3, 5, out, 2 * NBLK), 1);
	assert_int_equal(out[0], 0);
	/* context of 10 blocks, budget 9: blocks 6..8 have no digest and are never chosen */
	assert_int_equal(kvt_pred_select(p, 0, q, 40, 9, out, 2 * NBLK), 9);
	for (uint32_t i = 0; i < 9; i++) {
		if (i < 2)
			assert_int_equal(out[i], i == 0 ? 0 : 9);
		else if (i < 7)
			assert_true(out[i] >= 1 && out[i] <= 5);
		else
			assert_int_equal(out[i], UINT32_MAX);
	}
	/* a digest past the step's context is not used: block 5 filled at token 24, so a
	 * context of 23 tokens cannot see it even though it is digested */
	assert_int_equal(kvt_pred_select(p, 0, q, 23, 6, out, 2 * NBLK), 6);
	for (uint32_t i = 0; i < 6; i++)
		assert_true(out[i] != 5 || i == 1); /* block 5 only as the recent block */
	/* truncate forgets blocks */
	assert_int_equal(kvt_pred_truncate(p, 2), 0);
	assert_int_equal(kvt_pred_select(p, 0, q, 40, 9, out, 2 * NBLK), 9);
	assert_int_equal(out[2], 1);
	assert_int_equal(out[3], UINT32_MAX);
	kvt_pred_destroy(p);
}

static void test_page_layout_equals_strided(void **state)
{
	/* add_block's page layout [layer][head][token][dim] == add_block_layer with strides */
	enum { L = 2, H = 2, QH = 4, D = 32, T = 8 };
	struct kvt_pred_opts o = opts(L, H, QH, D, T);
	struct kvt_pred *a = make(&o), *b = make(&o);
	uint16_t page[L * H * T * D], tokmajor[T * H * D], q[QH * D];
	float ea[QH], eb[QH];

	for (size_t i = 0; i < L * H * T * D; i++)
		page[i] = h(urand());
	for (size_t i = 0; i < QH * D; i++)
		q[i] = h(urand());
	assert_int_equal(kvt_pred_add_block(a, 3, page, T), 0);
	for (uint32_t l = 0; l < L; l++) {
		/* an engine's [token][head][dim] layer layout */
		for (uint32_t hh = 0; hh < H; hh++)
			for (uint32_t s = 0; s < T; s++)
				memcpy(tokmajor + ((size_t)s * H + hh) * D,
				       page + (((size_t)l * H + hh) * T + s) * D, D * 2);
		assert_int_equal(kvt_pred_add_block_layer(b, 3, l, tokmajor, T, D, (size_t)H * D),
				 0);
	}
	for (uint32_t l = 0; l < L; l++) {
		assert_int_equal(kvt_pred_block_logmass(a, 3, l, q, ea), 0);
		assert_int_equal(kvt_pred_block_logmass(b, 3, l, q, eb), 0);
		assert_memory_equal(ea, eb, sizeof(ea));
	}
	kvt_pred_destroy(a);
	kvt_pred_destroy(b);
}

/* ---- prediction, prefetch list, counters ---- */

static void test_predict_prefetch_counters(void **state)
{
	enum { D = 16, T = 4, NBLK = 12 };
	struct kvt_pred_opts o = opts(2, 1, 1, D, T);
	o.digest_bytes = 4096; /* 6.25 % of so small a block holds no digest */
	struct kvt_pred *p;
	uint16_t k[2 * NBLK * T * D], q[D];
	uint32_t sel[NBLK], pred[NBLK], list[NBLK], ctx = 10 * T; /* 10 full blocks */
	struct kvt_pred_counters c;
	int n, np, nl;

	p = make(&o);
	for (size_t i = 0; i < 2 * NBLK * T * D; i++)
		k[i] = h(urand());
	for (size_t i = 0; i < D; i++)
		q[i] = h(urand());
	for (uint32_t b = 0; b < NBLK; b++)
		for (uint32_t l = 0; l < 2; l++)
			assert_int_equal(kvt_pred_add_block_layer(
					     p, b, l, k + ((size_t)l * NBLK + b) * T * D, T, 0, D),
					 0);
	/* predict_next(q = NULL) needs a select of that layer and context first */
	assert_int_equal(kvt_pred_predict_next(p, 0, NULL, ctx, 4, 1, NULL, 0), -EINVAL);
	assert_true(strstr(kvt_pred_errmsg(p), "q is NULL") != NULL);

	n = kvt_pred_select(p, 0, q, ctx, 4, sel, NBLK);
	assert_int_equal(n, 4);
	/* next step: context ctx+1 opens block 10, the new recent block */
	np = kvt_pred_predict_next(p, 0, NULL, ctx, 4, 2, pred, NBLK);
	assert_int_equal(np, 6);
	assert_int_equal(pred[0], 0);
	assert_int_equal(pred[1], 10);
	/* same scores: the first picks of the prediction are the blocks this step chose,
	 * now that block 9 is no longer forced it competes too */
	{
		int found = 0;
		for (int i = 2; i < np; i++)
			found += pred[i] == sel[2] || pred[i] == sel[3];
		assert_int_equal(found, 2);
	}
	/* a prediction from fresh queries equals the reused one for the same q */
	{
		uint32_t pred2[NBLK];
		assert_int_equal(kvt_pred_predict_next(p, 0, q, ctx, 4, 2, pred2, NBLK), 6);
		assert_memory_equal(pred, pred2, sizeof(uint32_t) * 6);
	}

	/* block 0 is resident: the request is the other predicted blocks, ascending */
	assert_int_equal(kvt_pred_set_resident(p, 0, 1), 0);
	nl = kvt_pred_prefetch_list(p, NULL, 0);
	assert_int_equal(nl, 5);
	assert_int_equal(kvt_pred_prefetch_list(p, list, 2), -ENOSPC);
	assert_int_equal(kvt_pred_prefetch_list(p, list, NBLK), 5);
	for (int i = 1; i < 5; i++)
		assert_true(list[i] > list[i - 1]);
	assert_int_equal(kvt_pred_prefetch_list(p, list, NBLK), 0); /* already requested */
	/* an evicted block may be asked for again */
	assert_int_equal(kvt_pred_set_resident(p, list[0], 0), 0);
	assert_int_equal(kvt_pred_prefetch_list(p, NULL, 0), 1);
	/* two of the requested blocks arrive */
	assert_int_equal(kvt_pred_set_resident(p, list[1], 1), 0);
	assert_int_equal(kvt_pred_set_resident(p, list[2], 1), 0);

	/* the next step selects with the same queries: hits, late ones, wasted */
	n = kvt_pred_select(p, 0, q, ctx + 1, 4, sel, NBLK);
	assert_int_equal(n, 4);
	assert_int_equal(kvt_pred_get_counters(p, &c, sizeof(c)), 0);
	assert_int_equal(c.predicted, 12); /* two predictions of 6 */
	assert_int_equal(c.requested, 5);
	assert_int_equal(c.selected, 4);
	assert_int_equal(c.hit, 4); /* same query, margin 2: all predicted */
	assert_int_equal(c.wasted, 2);
	{
		/* late: hits not resident (resident: 0, list[1], list[2]) */
		uint64_t late = 0;
		for (int i = 0; i < n; i++)
			late += sel[i] != 0 && sel[i] != list[1] && sel[i] != list[2];
		assert_int_equal(c.late, late);
	}
	/* the prediction is consumed: another select counts nothing more */
	assert_int_equal(kvt_pred_select(p, 0, q, ctx + 1, 4, sel, NBLK), 4);
	assert_int_equal(kvt_pred_get_counters(p, &c, sizeof(c)), 0);
	assert_int_equal(c.selected, 4);
	/* a prediction of layer 1 does not count for layer 0 */
	assert_int_equal(kvt_pred_predict_next(p, 1, q, ctx, 4, 0, NULL, 0), 4);
	assert_int_equal(kvt_pred_select(p, 0, q, ctx + 1, 4, sel, NBLK), 4);
	assert_int_equal(kvt_pred_get_counters(p, &c, sizeof(c)), 0);
	assert_int_equal(c.selected, 4);
	kvt_pred_reset_counters(p);
	assert_int_equal(kvt_pred_get_counters(p, &c, sizeof(c)), 0);
	assert_int_equal(c.predicted + c.selected + c.hit + c.wasted + c.late + c.requested, 0);
	kvt_pred_destroy(p);
}

/* ---- misuse ---- */

static void test_call_misuse(void **state)
{
	enum { D = 16, T = 4 };
	struct kvt_pred_opts o = opts(2, 1, 2, D, T);
	struct kvt_pred *p;
	uint16_t k[T * D] = {0}, q[2 * D] = {0};
	uint32_t out[64];
	struct kvt_pred_counters c;

	o.digest_bytes = 4096; /* 6.25 % of so small a block holds no digest */
	p = make(&o);
	assert_string_equal(kvt_pred_errmsg(p), "");
	assert_int_equal(kvt_pred_add_block_layer(p, 0, 0, NULL, T, 0, D), -EINVAL);
	assert_true(strstr(kvt_pred_errmsg(p), "NULL") != NULL);
	assert_int_equal(kvt_pred_add_block_layer(p, 0, 2, k, T, 0, D), -EINVAL);
	assert_true(strstr(kvt_pred_errmsg(p), "layer 2") != NULL);
	assert_int_equal(kvt_pred_add_block_layer(p, 0, 0, k, T + 1, 0, D), -EINVAL);
	assert_true(strstr(kvt_pred_errmsg(p), "n_tokens") != NULL);
	assert_int_equal(kvt_pred_add_block_layer(p, 0, 0, k, 0, 0, D), -EINVAL);
	assert_int_equal(kvt_pred_add_block_layer(p, 0, 0, k, T, 0, D - 1), -EINVAL);
	assert_true(strstr(kvt_pred_errmsg(p), "token_stride") != NULL);
	assert_int_equal(kvt_pred_add_block_layer(p, KVT_PRED_MAX_BLOCKS, 0, k, T, 0, D), -ERANGE);
	assert_int_equal(kvt_pred_add_block(p, 0, NULL, T), -EINVAL);

	assert_int_equal(kvt_pred_select(p, 0, NULL, 8, 2, out, 64), -EINVAL);
	assert_int_equal(kvt_pred_select(p, 5, q, 8, 2, out, 64), -EINVAL);
	assert_int_equal(kvt_pred_select(p, 0, q, 0, 2, out, 64), -EINVAL);
	assert_true(strstr(kvt_pred_errmsg(p), "n_tokens is 0") != NULL);
	assert_int_equal(kvt_pred_select(p, 0, q, 8, 2, out, 1), -ENOSPC);
	assert_true(strstr(kvt_pred_errmsg(p), "out holds 1") != NULL);
	assert_int_equal(kvt_pred_select(p, 0, q, 8, 2, NULL, 0), -ENOSPC);
	assert_int_equal(kvt_pred_select(p, 0, q, UINT32_MAX, 2, out, 64), -ERANGE);
	assert_int_equal(kvt_pred_predict_next(p, 0, q, 8, 2, 1, out, 1), -ENOSPC);
	assert_int_equal(kvt_pred_predict_next(p, 0, q, UINT32_MAX, 2, 1, out, 64), -ERANGE);
	assert_int_equal(kvt_pred_set_resident(p, KVT_PRED_MAX_BLOCKS, 1), -ERANGE);
	assert_int_equal(kvt_pred_block_logmass(p, 0, 0, q, NULL), -EINVAL);
	assert_int_equal(kvt_pred_block_logmass(p, 7, 0, q, (float[2]){0}), -ENOENT);
	assert_int_equal(kvt_pred_get_counters(p, NULL, sizeof(c)), -EINVAL);
	assert_int_equal(kvt_pred_get_counters(NULL, &c, sizeof(c)), -EINVAL);
	/* nothing selectable yet is no error: forced blocks only, padded */
	assert_int_equal(kvt_pred_select(p, 0, q, 12, 3, out, 64), 3);
	for (int r = 0; r < 1; r++) {
		assert_int_equal(out[0], 0);
		assert_int_equal(out[1], 2);
		assert_int_equal(out[2], UINT32_MAX);
	}
	/* NULL handles */
	assert_int_equal(kvt_pred_select(NULL, 0, q, 8, 2, out, 64), -EINVAL);
	assert_int_equal(kvt_pred_prefetch_list(NULL, out, 64), -EINVAL);
	assert_string_equal(kvt_pred_errmsg(NULL), "not a predictor handle");
	assert_int_equal(kvt_pred_rows(NULL), 0);
	kvt_pred_destroy(p);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_create_misuse),
	    cmocka_unit_test(test_digest_sizes),
	    cmocka_unit_test(test_digest_constant_keys),
	    cmocka_unit_test(test_digest_two_valued_keys),
	    cmocka_unit_test(test_digest_stats),
	    cmocka_unit_test(test_select_ref_shared),
	    cmocka_unit_test(test_select_ref_per_q_head),
	    cmocka_unit_test(test_select_ref_forced),
	    cmocka_unit_test(test_select_ref_shortlist),
	    cmocka_unit_test(test_select_real_estimate),
	    cmocka_unit_test(test_budget_and_forced),
	    cmocka_unit_test(test_page_layout_equals_strided),
	    cmocka_unit_test(test_predict_prefetch_counters),
	    cmocka_unit_test(test_call_misuse),
	};

	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--seed") && i + 1 < argc)
			seed = strtoull(argv[++i], NULL, 0);
	printf("test_predict: seed %llu\n", (unsigned long long)seed);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
