/* SPDX-License-Identifier: MIT */
/*
 * host_place.c - the host tier inside kvtierd: tenant arenas as files of the host tier
 * (tiers/tier_host.c), room for a put or a promotion, and host eviction.
 *
 * Each tenant's arena (a memfd its clients map) is attached to the tier once; the tier hands
 * out page ranges in it under host.capacity over all arenas.  The tier knows nothing of
 * tenants: the daemon keeps each tenant's share (used_bytes, evictions) and decides when
 * freed pages go back to the host (several tenants, no CUDA registration: punched), and what
 * leaves when room is short: the least recently used host copy (its LRU list), freed when
 * the block has a copy in another tier, else moved down the tier list (demote.c for NVMe),
 * else dropped.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_auto.h"
#include "codec_bq.h"
#include "place_int.h"
#include "log.h"
#include "tier_host.h"

static struct kvt_tier *host_tier(struct kvtd *d)
{
	struct kvtd_tier *x = d->tier_at[KVTD_TIER_HOST];

	return x ? x->t : NULL;
}

/* Where block-sized ranges of t's arena are, in the tier's terms. */
static struct kvt_tier_loc host_loc(const struct tenant *t, uint64_t off, uint32_t len)
{
	struct kvt_tier_loc loc = {off, (uint32_t)(kvtd_pages(len) << KVTD_PAGE_SHIFT),
				   t->host_file, 0};

	return loc;
}

int kvtd_host_attach(struct kvtd *d, struct tenant *t)
{
	struct kvt_tier *ht = host_tier(d);
	int ret;

	if (!ht)
		return -ENODEV;
	ret = kvt_tier_host_ops.attach(ht, t->memfd, t->base, t->size);
	if (ret < 0)
		return ret;
	t->host_file = (uint16_t)ret;
	return 0;
}

uint8_t *kvtd_host_at(struct kvtd *d, const struct tenant *t, uint64_t off)
{
	(void)d;
	return t->base + off;
}

bool kvtd_tenant_may_punch(const struct kvtd *d, const struct tenant *t)
{
	/* With one tenant nobody else needs the pages; it reuses them. */
	return d->ntenants > 1 && !t->pinners && !t->gpu_reg;
}

void kvtd_tenant_pinned(struct kvtd *d, struct tenant *t, int delta)
{
	struct kvt_tier_loc all = {0, 0, t->host_file, 0};

	if (delta > 0) {
		t->pinners++;
		return;
	}
	/* Every page freed while it was pinned goes back to the host now. */
	if (t->pinners && !--t->pinners && kvtd_tenant_may_punch(d, t) && host_tier(d))
		kvt_tier_host_ops.discard(host_tier(d), &all);
}

void kvtd_host_free_copy(struct kvtd *d, uint32_t i, bool punch)
{
	struct kvtd_blk *b = B(d, i);
	struct tenant *t = kvtd_tenant_of(d, b);
	struct kvt_tier_loc loc = host_loc(t, b->off, b->len);
	struct kvt_tier *ht = host_tier(d);

	if (!b->on_host)
		return;
	if (ht) { /* else closed already: the daemon is going away */
		/* free() of a range not in use aborts: it would hand one range to two blocks */
		kvt_tier_host_ops.free(ht, &loc);
		/* With several tenants, memory freed in one arena must really return to the
		 * host. */
		if (punch && kvtd_tenant_may_punch(d, t))
			kvt_tier_host_ops.discard(ht, &loc);
	}
	t->used_bytes -= loc.len;
	d->host_used -= loc.len;
	kvtd_set_host(d, b, false);
	kvtd_lru_unlink(&d->ix, KVTD_TIER_HOST, i);
	kvtd_fix_tier(b);
}

/* Jobs in the codec pool at most, from background demotion (each holds a record buffer). */
#define BG_MAX_INFLIGHT 64u

/* Evicts the host LRU tail; bg: from the watermark path, which may encode asynchronously. */
static int evict_host(struct kvtd *d, const struct tenant *only, bool bg)
{
	const struct kvtd_tier *x = d->tier_at[KVTD_TIER_HOST];
	uint32_t i = d->ix.lru_tail[KVTD_TIER_HOST];
	struct kvtd_tier *below;
	unsigned walked = 0;
	struct kvtd_blk *b;

	while (i != KVTD_NIL) {
		b = B(d, i);
		if (!only || d->tenants[b->tenant] == only)
			break;
		i = b->lru_prev[KVTD_TIER_HOST];
		if (++walked > 100000)
			return -ENOSPC;
	}
	if (i == KVTD_NIL)
		return -ENOSPC;
	b = B(d, i);
	d->m.evictions_total++;
	d->m.evicted_bytes_total += b->len;
	kvtd_tenant_of(d, b)->evictions++;
	if (b->prefetched) {
		d->m.prefetch_wasted_total++;
		b->prefetched = 0;
	}
	/* Punch only when another tenant needs the memory; one tenant reuses its pages. */
	/* Never into an arena registered with CUDA: the GPU would keep writing pages the CPU
	 * no longer sees. */
	bool punch = d->tenants[b->tenant] != only;
	if (kvtd_copy_elsewhere(d, i, x)) {
		/* Already (being) written down, or kept in the GPU pool: dropping the host copy is
		 * enough. */
		kvtd_host_free_copy(d, i, punch);
		kvtd_blk_lru_update(d, i);
		return 0;
	}
	/* Down the list: the next tier takes a copy (NVMe: demote.c), or the block goes. */
	below = kvtd_tier_below(d, x);
	if (below && below->cls->take) {
		uint32_t gen = b->gen;

		if (below->cls->take(d, i, bg) == 0 || B(d, i)->gen != gen)
			return 0; /* moved down, or gone meanwhile: space was freed */
	}
	kvtd_blk_drop(d, i);
	return 0;
}

int kvtd_evict_host_one(struct kvtd *d, const struct tenant *only)
{
	return evict_host(d, only, false);
}

int64_t kvtd_host_alloc(struct kvtd *d, struct tenant *t, uint32_t len)
{
	uint64_t np = kvtd_pages(len), bytes = np << KVTD_PAGE_SHIFT;
	struct kvt_tier *ht = host_tier(d);

	if (bytes > t->size)
		return -E2BIG;
	/* A put while NVMe records are still being recovered could be undone by a crash
	 * before the recovery ends (an older record of its key coming back): refused. */
	if (d->nvme_recovering)
		return -EAGAIN;
	if (!ht)
		return -ENODEV;
	for (;;) {
		if (d->host_used + bytes <= d->cfg.host_capacity) {
			struct kvt_tier_loc loc = {0, 0, t->host_file, 0};
			int ret = kvt_tier_host_ops.alloc(ht, len, &loc);

			if (ret == 0) {
				t->used_bytes += bytes;
				d->host_used += bytes;
				return (int64_t)loc.off;
			}
			if (ret != -ENOSPC)
				return ret;
			/* Room overall but t's arena is fragmented: only t's blocks help. */
			if (kvtd_evict_host_one(d, t) < 0)
				return -ENOSPC;
			continue;
		}
		if (kvtd_evict_host_one(d, NULL) < 0)
			return -ENOSPC;
	}
}

void kvtd_host_unalloc(struct kvtd *d, struct tenant *t, uint64_t off, uint32_t len)
{
	struct kvt_tier_loc loc = host_loc(t, off, len);

	if (host_tier(d))
		kvt_tier_host_ops.free(host_tier(d), &loc);
	t->used_bytes -= loc.len;
	d->host_used -= loc.len;
}

/* ---------------------------------------------------------------------------------------
 * The compressed host tier (README "Compressed host tier").  Clients encode their puts with
 * the chain the daemon names for the layout and decode their gets; the daemon never codes
 * host blocks, it only checks the record header at commit and keeps each block's chain
 * (struct kvtd_blk.hchain), which the block keeps in every tier.
 */

/* A chain an engine may wait on: raw, or a bq chain (CPU AVX2 and CUDA coders, one stage;
 * no dictionary).  Keep in step with config.c's message and README. */
static bool host_chain_ok(const struct kvt_chain *c)
{
	return kvt_chain_id(c) == 0 || kvt_bq_chain_is(c) > 0;
}

int kvtd_host_chain_init(struct kvtd *d)
{
	struct kvt_chain *c;
	int ret;

	/* host.codec = auto: each calibrated model's choice (codec_auto.c), raw until then */
	if (kvtd_auto_is(d->cfg.host_codec)) {
		d->host_chain = NULL;
		return 0;
	}
	ret = kvt_chain_parse(d->cfg.host_codec, &c);

	if (ret < 0) {
		kvtd_log(KVTD_LOG_ERR, "host.codec = %s: not a codec chain (codecs/CODECS.md)",
			 d->cfg.host_codec);
		return ret;
	}
	if (!host_chain_ok(c)) {
		kvtd_log(KVTD_LOG_ERR,
			 "host.codec = %s: the host tier takes raw or a bq chain (GPU-speed, "
			 "decoded on the path an engine waits on); slower chains belong in "
			 "nvme.codec",
			 d->cfg.host_codec);
		kvt_chain_free(c);
		return -EINVAL;
	}
	if (kvt_chain_id(c) == 0) {
		kvt_chain_free(c);
		c = NULL;
	}
	d->host_chain = c;
	return 0;
}

void kvtd_host_chain_fini(struct kvtd *d)
{
	kvt_chain_free(d->host_chain);
	d->host_chain = NULL;
}

const struct kvt_chain *kvtd_host_chain(struct kvtd *d, uint64_t fp, const struct kvt_codec_geom *g)
{
	const struct kvt_chain *c = d->host_chain;

	if (kvtd_auto_is(d->cfg.host_codec)) {
		c = kvtd_auto_chain_for(d, KVTD_TIER_HOST, fp);
		if (c && !host_chain_ok(c))
			c = NULL;
	}
	/* A geometry the chain cannot code (bq's slab limits, fp8 elements) stays raw. */
	if (!c || !g || kvt_chain_id(c) == 0 || kvt_chain_usable(c, g) < 0)
		return NULL;
	return c;
}

const struct kvt_chain *kvtd_host_chain_by_id(struct kvtd *d, uint32_t id)
{
	const struct kvt_chain *c;

	if (!id)
		return NULL;
	if (d->host_chain && kvt_chain_id(d->host_chain) == id)
		return d->host_chain;
	/* host.codec = auto: a chain some calibration chose (or chose before a newer one),
	 * so that blocks stored under an earlier choice stay readable */
	c = kvtd_auto_is(d->cfg.host_codec) ? kvtd_auto_chain_by_id(d, id) : NULL;
	return c && host_chain_ok(c) ? c : NULL;
}

int kvtd_host_check_record(struct kvtd *d, uint32_t i)
{
	const struct kvtd_blk *b = B(d, i);
	const uint8_t *p = kvtd_host_at(d, kvtd_tenant_of(d, b), b->off);
	const struct kvt_codec_geom *lg = kvtd_geom_of(d, i);
	struct kvt_codec_geom g;
	uint32_t id, raw_len;

	/* Only the header: the client's own decoder checks the rest, and a record that lies
	 * beyond its header hurts no one but its tenant (never the daemon: it decodes none). */
	if (kvt_chain_peek(p, b->len, &id, &g, &raw_len) < 0 || id != b->hchain ||
	    raw_len != b->raw_len || kvt_geom_block_bytes(&g) != raw_len)
		return -EBADMSG;
	if (lg && (g.n_layers != lg->n_layers || g.n_kv_heads != lg->n_kv_heads ||
		   g.head_dim != lg->head_dim || g.block_tokens != lg->block_tokens ||
		   g.dtype != lg->dtype))
		return -EBADMSG;
	return 0;
}

/* ---------------------------------------------------------------------------------------
 * The host tier's entry in the tier list
 */
static int host_open(struct kvtd *d, struct kvtd_tier *x)
{
	struct kvt_tier_conf tc = {0};
	int ret;

	tc.name = "host";
	tc.capacity_bytes = d->cfg.host_capacity;
	tc.log = kvtd_tier_log;
	tc.log_arg = (void *)"host tier";
	ret = kvtd_host_chain_init(d);
	if (ret < 0)
		return ret;
	ret = x->cls->ops->open(&tc, &x->t);
	if (ret < 0) {
		kvtd_log(KVTD_LOG_ERR, "cannot open the host tier: %s", kvt_strerror(ret));
		kvtd_host_chain_fini(d);
	}
	return ret;
}

static void host_close(struct kvtd *d, struct kvtd_tier *x)
{
	kvtd_host_chain_fini(d);
	x->cls->ops->close(x->t);
	x->t = NULL;
}

static bool host_has(struct kvtd *d, uint32_t i)
{
	return B(d, i)->on_host;
}

static void host_drop_copy(struct kvtd *d, uint32_t i)
{
	kvtd_host_free_copy(d, i, true);
}

static void host_usage(struct kvtd *d, uint64_t *used, uint64_t *leaving, uint64_t *cap)
{
	*used = d->host_used;
	/* Blocks being encoded free their pages soon: they count as gone already. */
	*leaving = d->host_encoding;
	*cap = d->cfg.host_capacity;
}

static int host_evict_one(struct kvtd *d, bool bg)
{
	if (bg && d->cpool && kvtd_cpool_pending(d) >= BG_MAX_INFLIGHT)
		return -EBUSY;
	return evict_host(d, NULL, bg);
}

const struct kvtd_tier_class kvtd_host_class = {
    .name = "host",
    .id = KVTD_TIER_HOST,
    .ops = &kvt_tier_host_ops,
    .high_off = offsetof(struct kvtd_config, host_high),
    .low_off = offsetof(struct kvtd_config, host_low),
    .open = host_open,
    .close = host_close,
    .has = host_has,
    .drop_copy = host_drop_copy,
    .usage = host_usage,
    .evict_one = host_evict_one,
    .take = kvtd_gpu_copy_down, /* from the tier above: the GPU pool (gpu_place.c) */
    .take_from = KVTD_TIER_GPU,
};
