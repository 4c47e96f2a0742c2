/* SPDX-License-Identifier: MIT */
/*
 * Prefetch plan of the predictor (kvt_pred_set_room, kvt_pred_prefetch_plan): the budget
 * holds (never more outstanding requests than the room allows), predictions of passed layers
 * are dropped, requests end when their last layer passes, and the order (rank in a predicted
 * row, then layer distance, then block) matches a reference model of decode steps.
 * Randomized tests take --seed N (default 1) and print the seed they ran with.
 */
#include <errno.h>
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

static uint16_t h(float x)
{
	_Float16 f = (_Float16)x;
	uint16_t u;
	memcpy(&u, &f, 2);
	return u;
}

static float urand(void) /* [-1, 1) */
{
	return (float)((rnd() >> 40) / (double)(1ull << 24) * 2 - 1);
}

enum { L = 4, H = 2, D = 16, T = 4, NBLK = 48, BUDGET = 4, MARGIN = 3 };
#define BLOCK_BYTES 1000u

/* A predictor of L layers and 2 rows over NBLK blocks of random keys. */
static struct kvt_pred *make(void)
{
	struct kvt_pred_opts o = {.size = sizeof(o),
				  .n_layers = L,
				  .n_kv_heads = H,
				  .n_q_heads = H,
				  .head_dim = D,
				  .block_tokens = T,
				  .digest_bytes = 4096}; /* 6.25 % of so small a block holds none */
	static uint16_t k[L * H * T * D];
	struct kvt_pred *p = NULL;

	assert_int_equal(kvt_pred_create(&o, &p), 0);
	for (uint32_t b = 0; b < NBLK; b++) {
		for (size_t i = 0; i < sizeof(k) / sizeof(k[0]); i++)
			k[i] = h(urand());
		assert_int_equal(kvt_pred_add_block(p, b, k, T), 0);
	}
	return p;
}

static void rand_q(uint16_t *q)
{
	for (size_t i = 0; i < (size_t)H * D; i++)
		q[i] = h(urand() * 4);
}

/* ---- the reference: what the plan must hand out, from the predictions made ---- */

struct model {
	/* pending prediction of each layer: for context pctx[l] (0 = none), rows x pn[l] */
	uint32_t pctx[L], pn[L], pred[L][H * NBLK];
	uint64_t now;		/* position of the last select */
	uint64_t until[NBLK];	/* outstanding request up to this position, 0 = none */
	uint8_t resident[NBLK]; /* as told with kvt_pred_set_resident */
	uint64_t limit;		/* outstanding at most, 0 = no limit */
};

static uint64_t pos(uint32_t ctx, uint32_t l)
{
	return (uint64_t)ctx * L + l;
}

struct rc {
	uint32_t rank, b;
	uint64_t dist, until;
};

static int rc_cmp(const void *x, const void *y)
{
	const struct rc *a = x, *c = y;

	if (a->rank != c->rank)
		return a->rank < c->rank ? -1 : 1;
	if (a->dist != c->dist)
		return a->dist < c->dist ? -1 : 1;
	return a->b < c->b ? -1 : a->b > c->b;
}

/* Ends passed requests; writes the expected plan to out and returns its length. */
static uint32_t model_plan(struct model *m, uint32_t *out, uint64_t *until_out)
{
	struct rc c[NBLK];
	uint32_t nc = 0, outstanding = 0, n;
	int idx[NBLK];

	for (uint32_t b = 0; b < NBLK; b++) {
		if (m->until[b] && m->until[b] <= m->now)
			m->until[b] = 0;
		outstanding += m->until[b] != 0;
		idx[b] = -1;
	}
	for (uint32_t l = 0; l < L; l++) {
		uint64_t ps = pos(m->pctx[l], l);
		if (!m->pctx[l] || ps <= m->now)
			continue;
		for (uint32_t r = 0; r < H; r++)
			for (uint32_t i = 0; i < m->pn[l]; i++) {
				uint32_t b = m->pred[l][r * m->pn[l] + i];
				if (b >= NBLK || m->resident[b] || m->until[b])
					continue;
				if (idx[b] < 0) {
					idx[b] = (int)nc;
					c[nc++] = (struct rc){i, b, ps - m->now, ps};
					continue;
				}
				struct rc *e = &c[idx[b]];
				if (i < e->rank || (i == e->rank && ps - m->now < e->dist)) {
					e->rank = i;
					e->dist = ps - m->now;
				}
				if (ps > e->until)
					e->until = ps;
			}
	}
	qsort(c, nc, sizeof(c[0]), rc_cmp);
	n = nc;
	if (m->limit)
		n = m->limit > outstanding ? (uint32_t)(m->limit - outstanding) : 0;
	n = n < nc ? n : nc;
	for (uint32_t i = 0; i < n; i++) {
		out[i] = c[i].b;
		until_out[i] = c[i].until;
	}
	return n;
}

static uint32_t model_outstanding(const struct model *m)
{
	uint32_t n = 0;

	for (uint32_t b = 0; b < NBLK; b++)
		n += m->until[b] != 0;
	return n;
}

/* Decode steps with a plan after every layer's prediction; blocks arrive and leave at
 * random.  Checks every plan against the model, and the budget after each. */
static void run_steps(uint64_t room_blocks, double fraction, uint64_t limit)
{
	struct kvt_pred *p = make();
	struct model m;
	uint16_t q[H * D];
	uint32_t sel[H * NBLK], pl[NBLK + 1], want[NBLK];
	uint64_t wuntil[NBLK];
	struct kvt_pred_counters cnt;
	uint64_t handed = 0;

	memset(&m, 0, sizeof(m));
	m.limit = limit;
	assert_int_equal(kvt_pred_set_room(p, room_blocks * BLOCK_BYTES, BLOCK_BYTES, fraction), 0);
	for (uint32_t ctx = 24 * T + 1; ctx < 24 * T + 40; ctx++) {
		uint32_t budget = BUDGET;
		for (uint32_t l = 0; l < L; l++) {
			int n;

			rand_q(q);
			n = kvt_pred_select(p, l, q, ctx, budget, sel, H * NBLK);
			assert_true(n > 0);
			m.now = pos(ctx, l);
			if (m.pctx[l] == ctx)
				m.pctx[l] = 0; /* consumed */
			n = kvt_pred_predict_next(p, l, NULL, ctx, budget, MARGIN, m.pred[l],
						  H * NBLK);
			assert_true(n > 0);
			m.pctx[l] = ctx + 1;
			m.pn[l] = (uint32_t)n;

			uint32_t ne = model_plan(&m, want, wuntil);
			int got = kvt_pred_prefetch_plan(p, pl, NBLK + 1);
			assert_int_equal(got, (int)ne);
			assert_memory_equal(pl, want, sizeof(uint32_t) * ne);
			for (uint32_t i = 0; i < ne; i++)
				m.until[want[i]] = wuntil[i];
			handed += ne;
			/* the budget holds */
			if (limit)
				assert_true(model_outstanding(&m) <= limit);
			/* a full budget hands out nothing more; without out, the count is 0 too */
			if (limit && model_outstanding(&m) == limit)
				assert_int_equal(kvt_pred_prefetch_plan(p, NULL, 0), 0);

			/* some requested blocks arrive (and leave the plan's books), some leave */
			for (uint32_t b = 0; b < NBLK; b++) {
				uint64_t r = rnd() % 16;
				if (m.until[b] && r < 3) {
					assert_int_equal(kvt_pred_set_resident(p, b, 1), 0);
					m.until[b] = 0;
					m.resident[b] = 1;
				} else if (m.resident[b] && r < 4) {
					assert_int_equal(kvt_pred_set_resident(p, b, 0), 0);
					m.resident[b] = 0;
				}
			}
		}
	}
	assert_int_equal(kvt_pred_get_counters(p, &cnt, sizeof(cnt)), 0);
	assert_int_equal(cnt.requested, handed);
	assert_true(handed > 0);
	if (limit)
		assert_true(cnt.deferred > 0); /* the test exercised a full budget */
	kvt_pred_destroy(p);
}

static void test_plan_budget_holds(void **state)
{
	(void)state;
	run_steps(10, 0.5, 5); /* floor(0.5 * 10) */
	run_steps(7, 0.3, 2);  /* floor(2.1) */
	run_steps(3, 0.1, 1);  /* at least one */
	run_steps(16, 0, 12);  /* default fraction 0.75 */
}

static void test_plan_unlimited_matches_model(void **state)
{
	(void)state;
	run_steps(0, 0, 0); /* no room set: every candidate, in order */
}

/* ---- hand-checked cases ---- */

/* Predictions of layers 0..2 for the next step; a select of layer 1 at that step passes
 * layers 0 and 1 (0 skipped, 1 consumed): only layer 2's blocks may be asked for. */
static void test_plan_drops_passed_layers(void **state)
{
	struct kvt_pred *p = make();
	uint16_t q[H * D];
	uint32_t sel[H * NBLK], pred[L][H * NBLK], pl[NBLK], ctx = 20 * T + 2;
	uint8_t in2[NBLK] = {0};
	int n[L], got;

	(void)state;
	for (uint32_t l = 0; l < 3; l++) {
		rand_q(q);
		assert_true(kvt_pred_select(p, l, q, ctx, BUDGET, sel, H * NBLK) > 0);
		n[l] = kvt_pred_predict_next(p, l, NULL, ctx, BUDGET, MARGIN, pred[l], H * NBLK);
		assert_true(n[l] > 0);
	}
	for (int i = 0; i < H * n[2]; i++)
		in2[pred[2][i]] = 1;
	rand_q(q);
	assert_true(kvt_pred_select(p, 1, q, ctx + 1, BUDGET, sel, H * NBLK) > 0);
	got = kvt_pred_prefetch_plan(p, pl, NBLK);
	assert_true(got > 0);
	{
		int expect = 0;
		for (uint32_t b = 0; b < NBLK; b++)
			expect += in2[b];
		assert_int_equal(got, expect);
	}
	for (int i = 0; i < got; i++)
		assert_true(in2[pl[i]]);
	/* the forced blocks lead: sink block 0, then the recent block, then by rank */
	assert_int_equal(pl[0], 0);
	assert_int_equal(pl[1], (ctx + 1 + T - 1) / T - 1);
	/* once layer 2 passes too, nothing is left to ask for, and what was handed out ends */
	rand_q(q);
	assert_true(kvt_pred_select(p, 2, q, ctx + 1, BUDGET, sel, H * NBLK) > 0);
	assert_int_equal(kvt_pred_prefetch_plan(p, pl, NBLK), 0);
	{
		struct kvt_pred_counters c;
		assert_int_equal(kvt_pred_get_counters(p, &c, sizeof(c)), 0);
		assert_int_equal(c.expired, (uint64_t)got);
	}
	kvt_pred_destroy(p);
}

/* The same block at the same rank in two layers: the nearer layer orders it; a request lasts
 * until the last layer that predicted it. */
static void test_plan_budget_refills(void **state)
{
	struct kvt_pred *p = make();
	uint16_t q[H * D];
	uint32_t sel[H * NBLK], pl[NBLK], ctx = 30 * T;
	int got;

	(void)state;
	/* 4 outstanding at most */
	assert_int_equal(kvt_pred_set_room(p, 8 * BLOCK_BYTES + 999, BLOCK_BYTES, 0.5), 0);
	for (uint32_t l = 0; l < L; l++) {
		rand_q(q);
		assert_true(kvt_pred_select(p, l, q, ctx, BUDGET, sel, H * NBLK) > 0);
		assert_true(kvt_pred_predict_next(p, l, NULL, ctx, BUDGET, MARGIN, NULL, 0) > 0);
	}
	assert_int_equal(kvt_pred_prefetch_plan(p, NULL, 0), 4);
	assert_int_equal(kvt_pred_prefetch_plan(p, pl, 2), 2); /* out_cap bounds it too */
	assert_int_equal(kvt_pred_prefetch_plan(p, pl + 2, NBLK), 2);
	assert_int_equal(kvt_pred_prefetch_plan(p, pl + 4, NBLK), 0); /* full */
	/* block 0 (the sink, predicted in every layer) arrives: room for one more */
	assert_int_equal(pl[0], 0);
	assert_int_equal(kvt_pred_set_resident(p, 0, 1), 0);
	got = kvt_pred_prefetch_plan(p, pl + 4, NBLK);
	assert_int_equal(got, 1);
	for (int i = 0; i < 4; i++)
		assert_int_not_equal(pl[4], pl[i]);
	/* a truncation (the sequence rewound) forgets the plan's requests */
	assert_int_equal(kvt_pred_truncate(p, NBLK), 0);
	assert_int_equal(kvt_pred_prefetch_plan(p, pl, NBLK), 0); /* no prediction pending */
	rand_q(q);
	assert_true(kvt_pred_select(p, 0, q, ctx, BUDGET, sel, H * NBLK) > 0);
	assert_true(kvt_pred_predict_next(p, 0, NULL, ctx, BUDGET, MARGIN, NULL, 0) > 0);
	assert_int_equal(kvt_pred_prefetch_plan(p, pl, NBLK), 4); /* the whole budget again */
	kvt_pred_destroy(p);
}

static void test_plan_misuse(void **state)
{
	struct kvt_pred *p = make();
	uint32_t pl[4];

	(void)state;
	assert_int_equal(kvt_pred_set_room(NULL, 1, 1, 0.5), -EINVAL);
	assert_int_equal(kvt_pred_set_room(p, 1000, 0, 0.5), -EINVAL);
	assert_int_equal(kvt_pred_set_room(p, 1000, 10, -0.1), -EINVAL);
	assert_int_equal(kvt_pred_set_room(p, 1000, 10, 1.5), -EINVAL);
	assert_int_equal(kvt_pred_set_room(p, 1000, 10, 0.0 / 0.0), -EINVAL);
	assert_true(strstr(kvt_pred_errmsg(p), "fraction") != NULL);
	assert_int_equal(kvt_pred_set_room(p, 0, 0, 0), 0); /* no limit */
	assert_int_equal(kvt_pred_prefetch_plan(NULL, pl, 4), -EINVAL);
	assert_int_equal(kvt_pred_prefetch_plan(p, pl, 4), 0); /* nothing predicted */
	kvt_pred_destroy(p);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_plan_budget_holds),
	    cmocka_unit_test(test_plan_unlimited_matches_model),
	    cmocka_unit_test(test_plan_drops_passed_layers),
	    cmocka_unit_test(test_plan_budget_refills),
	    cmocka_unit_test(test_plan_misuse),
	};

	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--seed") && i + 1 < argc)
			seed = strtoull(argv[++i], NULL, 0);
	printf("test_predict_sched: seed %llu\n", (unsigned long long)seed);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
