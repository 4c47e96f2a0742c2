/* SPDX-License-Identifier: MIT */
/*
 * predict_sched.c - the predictor across decode steps: selection and its bookkeeping, the
 * next step's prediction, the counters, and the prefetch request (docs/PREDICTOR.md).
 */
#include "predict_int.h"

#include <math.h>
#include <stdlib.h>

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
	/* the predictions that planned requests served are gone, and decode order restarts */
	for (uint32_t b = 0; b < n_blocks && b < p->cap; b++)
		if (p->req_until[b] != UINT64_MAX)
			p->req[b / 64] &= ~(1ull << (b % 64));
	p->now_pos = 0;
	return 0;
}

/* ---- steps ---- */

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
	return pred_grow(p, n_tokens / p->T + 1);
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
	pred_score_layer(p, layer, q, n_tokens, n - s - (nb - r), false);
	pred_choose(p, nb, n, out);

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
	p->now_pos = pos_of(p, n_tokens, layer);
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
	/* the rows are kept in rank order for kvt_pred_prefetch_plan() */
	if ((size_t)p->rows * n > p->plist_cap[layer]) {
		sel = realloc(p->plist[layer], sizeof(uint32_t) * p->rows * n);
		if (!sel)
			return fail(p, -ENOMEM, "predict_next: out of memory");
		p->plist[layer] = sel;
		p->plist_cap[layer] = (size_t)p->rows * n;
	}
	forced_range(p, nb, &s, &r);
	if (q) {
		/* score at the next step's context: a block that fills now counts */
		pred_score_layer(p, layer, q, ctx, n - s - (nb - r), true);
	} else {
		/* reuse: blocks of the new context that the last scoring did not see
		 * (at most the one that just filled) are not usable for it */
		for (uint32_t b = (n_tokens + p->T - 1) / p->T; b < nb; b++)
			p->state[b] = 0;
	}
	sel = p->plist[layer];
	pred_choose(p, nb, n, sel);
	p->plist_n[layer] = n;
	if (out)
		memcpy(out, sel, sizeof(uint32_t) * p->rows * n);
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
					p->req_until[w * 64 + bit] = UINT64_MAX;
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

/* ---- the prefetch plan: budget against the room of the host tier ---- */

int kvt_pred_set_room(struct kvt_pred *p, uint64_t room_bytes, uint64_t block_bytes,
		      double fraction)
{
	double lim;

	CHECK_HANDLE(p);
	if (!(fraction >= 0 && fraction <= 1))
		return fail(p, -EINVAL, "set_room: fraction %g is not in [0, 1]", fraction);
	if (room_bytes && !block_bytes)
		return fail(p, -EINVAL, "set_room: block_bytes is 0");
	if (!room_bytes) {
		p->room_blocks = 0;
		return 0;
	}
	/* 0.75: the most that kept prefetch at or above no prefetch at every host tier size of
	 * the decode replay (1.0 lost: the daemon evicts down to host.low_watermark, 0.85) */
	lim = floor((fraction > 0 ? fraction : KVT_PRED_ROOM_DEFAULT) * (double)room_bytes /
		    (double)block_bytes);
	p->room_blocks = lim < 1 ? 1 : lim > (double)UINT32_MAX ? UINT32_MAX : (uint64_t)lim;
	return 0;
}

/* A candidate of the plan: its best (rank, distance) over the pending rows holding it, and
 * the last position that needs it. */
struct pcand {
	uint32_t rank, b;
	uint64_t dist, until;
};

static int pcand_cmp(const void *x, const void *y)
{
	const struct pcand *a = x, *c = y;

	if (a->rank != c->rank)
		return a->rank < c->rank ? -1 : 1;
	if (a->dist != c->dist)
		return a->dist < c->dist ? -1 : 1;
	return a->b < c->b ? -1 : a->b > c->b;
}

int kvt_pred_prefetch_plan(struct kvt_pred *p, uint32_t *out, size_t out_cap)
{
	struct pcand *pc;
	uint32_t *slot; /* [cap]: index into pc + 1, 0 = not a candidate */
	uint64_t outstanding = 0, avail;
	size_t nc = 0, n;

	CHECK_HANDLE(p);
	/* requests whose last layer has passed hold no room any more */
	for (size_t w = 0; w < p->words; w++) {
		uint64_t u = p->req[w];
		while (u) {
			uint32_t b = (uint32_t)(w * 64) + (uint32_t)__builtin_ctzll(u);
			if (p->req_until[b] != UINT64_MAX && p->req_until[b] <= p->now_pos) {
				p->req[w] &= ~(1ull << (b % 64));
				p->cnt.expired++;
			}
			u &= u - 1;
		}
		outstanding += (uint64_t)__builtin_popcountll(p->req[w]);
	}
	if (!p->room_blocks)
		avail = UINT64_MAX;
	else
		avail = p->room_blocks > outstanding ? p->room_blocks - outstanding : 0;

	pc = malloc(sizeof(*pc) * p->cap);
	slot = calloc(p->cap, sizeof(*slot));
	if (!pc || !slot) {
		free(pc);
		free(slot);
		return fail(p, -ENOMEM, "prefetch_plan: out of memory");
	}
	for (uint32_t l = 0; l < p->L; l++) {
		uint64_t pos;
		uint32_t pn = p->plist_n[l];

		if (!p->pred_ctx[l])
			continue;
		pos = pos_of(p, p->pred_ctx[l], l);
		if (pos <= p->now_pos)
			continue; /* its layer has passed: the step read what it needed */
		for (uint32_t row = 0; row < p->rows; row++) {
			const uint32_t *sel = p->plist[l] + (size_t)row * pn;
			for (uint32_t i = 0; i < pn; i++) {
				uint32_t b = sel[i];
				struct pcand *c;

				if (b >= p->cap ||
				    (p->res[b / 64] | p->req[b / 64]) >> (b % 64) & 1)
					continue;
				if (!slot[b]) {
					pc[nc] = (struct pcand){i, b, pos - p->now_pos, pos};
					slot[b] = (uint32_t)++nc;
					continue;
				}
				c = &pc[slot[b] - 1];
				if (i < c->rank || (i == c->rank && pos - p->now_pos < c->dist)) {
					c->rank = i;
					c->dist = pos - p->now_pos;
				}
				if (pos > c->until)
					c->until = pos;
			}
		}
	}
	qsort(pc, nc, sizeof(*pc), pcand_cmp);
	n = nc < avail ? nc : (size_t)avail;
	if (out) {
		n = n < out_cap ? n : out_cap;
		for (size_t i = 0; i < n; i++) {
			uint32_t b = pc[i].b;
			out[i] = b;
			p->req[b / 64] |= 1ull << (b % 64);
			p->req_until[b] = pc[i].until;
		}
		p->cnt.requested += n;
		if (nc > avail)
			p->cnt.deferred += nc - avail;
	}
	free(pc);
	free(slot);
	return (int)n;
}

int kvt_pred_set_resident(struct kvt_pred *p, uint32_t block, int resident)
{
	int ret;

	CHECK_HANDLE(p);
	ret = pred_grow(p, block < KVT_PRED_MAX_BLOCKS ? block + 1 : KVT_PRED_MAX_BLOCKS + 1);
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
