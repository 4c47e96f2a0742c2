/* SPDX-License-Identifier: MIT */
/*
 * placement.c - block state and its accounting.
 *
 * A block has a copy in one or more tiers of the list (tierlist.h): a host copy in its
 * tenant's arena, an NVMe record, a GPU-pool copy.  Tiers are inclusive: promotion keeps the
 * lower copy, so a block evicted again after a get costs no second write.  This file owns the
 * changes of a block's state (committed, hidden, dropped, deleted) and the counters kept
 * exact at each change (per tier, per tenant), the layout geometries the NVMe codecs need,
 * and room in the index (a full index drops the least recently used unheld block).  Moves
 * between tiers are in demote.c and promote.c, each tier's own side in host_place.c,
 * nvme_place.c and gpu_place.c, the list and the watermark pass in tierlist.c.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_auto.h"
#include "kvt_record.h"
#include "place_int.h"
#include "log.h"

/* ---------------------------------------------------------------------------------------
 * Copies
 */
void kvtd_set_host(struct kvtd *d, struct kvtd_blk *b, bool on)
{
	b->on_host = on;
	kvtd_blk_account(d, (uint32_t)(b - d->ix.blk));
}

void kvtd_set_nvme(struct kvtd *d, struct kvtd_blk *b, bool on)
{
	b->on_nvme = on;
	kvtd_blk_account(d, (uint32_t)(b - d->ix.blk));
}

enum { ACCT_HOST = 1, ACCT_NVME = 2, ACCT_HELD = 4 };

void kvtd_blk_account(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);
	uint8_t a = 0, ch;

	if (b->state == KVTD_BLK_READY)
		a |= (b->on_host ? ACCT_HOST : 0) | (b->on_nvme ? ACCT_NVME : 0);
	if (b->state != KVTD_BLK_FREE && (b->pins || b->leases))
		a |= ACCT_HELD;
	ch = a ^ b->acct;
	if (!ch)
		return;
	if (ch & ACCT_HOST) {
		uint64_t sign = a & ACCT_HOST ? 1 : (uint64_t)-1;

		d->tier_nblocks[KVTD_TIER_HOST] += sign;
		/* the compressed host tier's ratio (host_place.c): a block's stored form is fixed
		 */
		d->m.host_raw_bytes += sign * b->raw_len;
		d->m.host_stored_bytes += sign * b->len;
		d->m.host_encoded_blocks += b->hchain ? sign : 0;
	}
	if (ch & ACCT_NVME)
		d->tier_nblocks[KVTD_TIER_NVME] += a & ACCT_NVME ? 1 : (uint64_t)-1;
	if (ch & ACCT_HELD) {
		uint64_t bytes = kvtd_pages(b->len) << KVTD_PAGE_SHIFT;
		struct tenant *t = kvtd_tenant_of(d, b);

		t->held_bytes += a & ACCT_HELD ? bytes : (uint64_t)0 - bytes;
	}
	b->acct = a;
}

void kvtd_check_counts(struct kvtd *d)
{
	uint64_t tb[KVTD_NTIERS] = {0}, *blocks, *held;
	bool bad = false;

	blocks = calloc(d->ntenants + 1, sizeof(*blocks));
	held = calloc(d->ntenants + 1, sizeof(*held));
	if (!blocks || !held)
		goto out;
	for (uint32_t i = 0; i < d->ix.used; i++) {
		const struct kvtd_blk *b = B(d, i);

		if (b->state == KVTD_BLK_READY) {
			tb[KVTD_TIER_HOST] += b->on_host;
			tb[KVTD_TIER_NVME] += b->on_nvme;
			blocks[b->tenant]++;
		}
		if (b->state != KVTD_BLK_FREE && (b->pins || b->leases))
			held[b->tenant] += kvtd_pages(b->len) << KVTD_PAGE_SHIFT;
	}
	for (int t = 0; t < KVTD_NTIERS; t++) {
		if (tb[t] != d->tier_nblocks[t]) {
			kvtd_log(KVTD_LOG_ERR,
				 "counter check: tier %d has %llu blocks, counted %llu", t,
				 (unsigned long long)tb[t], (unsigned long long)d->tier_nblocks[t]);
			bad = true;
		}
	}
	for (uint32_t k = 0; k < d->ntenants; k++) {
		const struct tenant *t = d->tenants[k];

		if (blocks[k] != t->blocks || held[k] != t->held_bytes) {
			kvtd_log(KVTD_LOG_ERR,
				 "counter check: uid %u has %llu blocks and %llu bytes held, "
				 "counted %llu and %llu",
				 t->uid, (unsigned long long)blocks[k], (unsigned long long)held[k],
				 (unsigned long long)t->blocks, (unsigned long long)t->held_bytes);
			bad = true;
		}
	}
out:
	free(blocks);
	free(held);
	if (bad)
		abort();
}

void kvtd_fix_tier(struct kvtd_blk *b)
{
	b->tier = b->on_host ? KVTD_TIER_HOST : KVTD_TIER_NVME;
}

void kvtd_blk_drop(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);

	if (b->state == KVTD_BLK_READY)
		kvtd_tenant_of(d, b)->blocks--;
	/* Its copy in every open tier (a write in flight included), down the list. */
	for (uint32_t k = 0; k < d->ntiers; k++) {
		const struct kvtd_tier *x = &d->tiers[k];

		if (x->t && x->cls->drop_copy)
			x->cls->drop_copy(d, i);
	}
	/* In-flight I/O notices the changed generation and cleans up after itself. */
	b->pend = NULL;
	b->io = KVTD_IO_NONE;
	b->state = KVTD_BLK_ZOMBIE;
	kvtd_wake_all(d, i, -ENOENT);
	if (b->geom != KVTD_NIL) {
		kvtd_geom_unref(d, b->geom);
		b->geom = KVTD_NIL;
	}
	kvtd_index_remove(&d->ix, i);
	kvtd_blk_account(d, i);
}

void kvtd_blk_hide(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);

	kvtd_tenant_of(d, b)->blocks--;
	kvtd_index_unhash(&d->ix, i);
	b->state = KVTD_BLK_ZOMBIE;
	kvtd_blk_account(d, i);
	/* Durable copies (NVMe) go now, so that a restart cannot bring a deleted block back (a
	 * read in flight on one still completes: the tier frees the slot after it). */
	for (uint32_t k = 0; k < d->ntiers; k++) {
		const struct kvtd_tier *x = &d->tiers[k];

		if (x->t && x->cls->durable && x->cls->drop_copy)
			x->cls->drop_copy(d, i);
	}
	kvtd_blk_lru_update(d, i);
}

void kvtd_nvme_settle_blk(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);
	int ret;

	if (!nvme_on(d) || !d->nvme_ops->settle)
		return;
	ret = d->nvme_ops->settle(d->nvme, b->key_lo, b->key_hi);
	if (ret < 0)
		kvtd_log(KVTD_LOG_ERR,
			 "NVMe: an older record of block %016llx%016llx could not be invalidated "
			 "(%s): it may come back after a crash",
			 (unsigned long long)b->key_hi, (unsigned long long)b->key_lo,
			 kvt_strerror(ret));
}

void kvtd_blk_delete(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);
	uint64_t lo = b->key_lo, hi = b->key_hi;
	int ret;

	if (b->leases)
		kvtd_blk_hide(d, i); /* invisible at once, the memory goes with the last reader */
	else
		kvtd_blk_drop(d, i);
	if (!nvme_on(d) || !d->nvme_ops->settle)
		return;
	ret = d->nvme_ops->settle(d->nvme, lo, hi);
	if (ret < 0)
		kvtd_log(KVTD_LOG_ERR,
			 "NVMe: the record of deleted block %016llx%016llx could not be "
			 "invalidated (%s): it may come back after a crash",
			 (unsigned long long)hi, (unsigned long long)lo, kvt_strerror(ret));
}

void kvtd_blk_lru_update(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);
	bool ready = b->state == KVTD_BLK_READY && !b->pins;

	kvtd_blk_account(d, i);
	/* A block being encoded keeps its host copy until the record is written. */
	if (ready && b->on_host && !b->leases && b->io != KVTD_IO_ENCODE)
		kvtd_lru_push(&d->ix, KVTD_TIER_HOST, i);
	else
		kvtd_lru_unlink(&d->ix, KVTD_TIER_HOST, i);
	/* NVMe copies of blocks with I/O in flight stay put until it completes. */
	if (ready && b->on_nvme && b->io == KVTD_IO_NONE) {
		if (!b->in_lru[KVTD_TIER_NVME] || b->on_host)
			kvtd_lru_push(&d->ix, KVTD_TIER_NVME, i);
	} else {
		kvtd_lru_unlink(&d->ix, KVTD_TIER_NVME, i);
	}
}

void kvtd_blk_committed(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);

	b->state = KVTD_BLK_READY;
	kvtd_set_host(d, b, true);
	kvtd_fix_tier(b);
	kvtd_tenant_of(d, b)->blocks++;
	kvtd_blk_lru_update(d, i);
	/* A record of an older version of this key, freed but not yet invalidated, would be
	 * recovered after a crash in place of this one. */
	kvtd_nvme_settle_blk(d, i);
}

/* ---------------------------------------------------------------------------------------
 * Layout geometries: hashed by (fingerprint, tenant), so a demotion finds its block's in
 * O(1) however many layouts tenants register; counted per tenant and freed with their last
 * reference (a client's layout slot or a block).
 */
static uint32_t geom_hash(const struct kvtd *d, uint64_t fp, uint32_t tenant)
{
	uint64_t h = (fp ^ tenant) * 0x9e3779b97f4a7c15ull;

	return (uint32_t)(h >> 32) & d->geom_mask;
}

static uint32_t geom_find(const struct kvtd *d, uint64_t fp, uint32_t tenant)
{
	if (!d->geom_bucket)
		return KVTD_NIL;
	for (uint32_t g = d->geom_bucket[geom_hash(d, fp, tenant)]; g != KVTD_NIL;
	     g = d->geoms[g].next) {
		if (d->geoms[g].fp == fp && d->geoms[g].tenant == tenant)
			return g;
	}
	return KVTD_NIL;
}

/* Doubles the bucket array when entries outnumber buckets. */
static int geom_rehash(struct kvtd *d)
{
	uint32_t nb = d->geom_bucket ? (d->geom_mask + 1) * 2 : 64, *bk;

	bk = malloc((size_t)nb * sizeof(*bk));
	if (!bk)
		return -ENOMEM;
	memset(bk, 0xff, (size_t)nb * sizeof(*bk));
	free(d->geom_bucket);
	d->geom_bucket = bk;
	d->geom_mask = nb - 1;
	for (uint32_t g = 0; g < d->cap_geoms; g++) {
		struct geom_slot *x = &d->geoms[g];
		uint32_t h;

		if (x->tenant == UINT32_MAX)
			continue; /* free */
		h = geom_hash(d, x->fp, x->tenant);
		x->next = bk[h];
		bk[h] = g;
	}
	return 0;
}

int64_t kvtd_geom_note(struct kvtd *d, struct tenant *t, uint64_t fp, const struct kvt_layout *l)
{
	uint32_t ti = UINT32_MAX, g, h;
	struct geom_slot *x;

	for (uint32_t k = 0; k < d->ntenants; k++) {
		if (d->tenants[k] == t)
			ti = k;
	}
	if (ti == UINT32_MAX)
		return -EINVAL;
	g = geom_find(d, fp, ti);
	if (g != KVTD_NIL)
		return g;
	if (t->ngeoms >= d->cfg.max_layouts_per_tenant)
		return -KVT_ELIMIT;
	if (d->ngeoms + 1 > d->geom_mask + 1 || !d->geom_bucket) {
		if (geom_rehash(d) < 0)
			return -ENOMEM;
	}
	if (d->free_geom != KVTD_NIL) {
		g = d->free_geom;
		d->free_geom = d->geoms[g].next;
	} else {
		if (d->cap_geoms == UINT32_MAX - 1)
			return -ENOMEM;
		struct geom_slot *n = realloc(d->geoms, (d->cap_geoms + 1) * sizeof(*n));
		if (!n)
			return -ENOMEM;
		d->geoms = n;
		g = d->cap_geoms++;
	}
	x = &d->geoms[g];
	memset(x, 0, sizeof(*x));
	x->tenant = ti;
	x->g.n_layers = l->n_layers;
	x->g.n_kv_heads = l->n_kv_heads;
	x->g.head_dim = l->head_dim;
	x->g.block_tokens = l->block_tokens;
	x->g.dtype = l->dtype;
	/* The daemon cannot tell where in the sequence a block sits (keys are hashes), so
	 * codecs that keep sink tokens exact keep each block's first tokens: safe, not free. */
	x->g.first_token = 0;
	x->fp = fp;
	memcpy(x->model, l->model_id, sizeof(x->model) - 1);
	h = geom_hash(d, fp, ti);
	x->next = d->geom_bucket[h];
	d->geom_bucket[h] = g;
	d->ngeoms++;
	t->ngeoms++;
	/* Held by nobody yet: the caller takes its reference at once. */
	return g;
}

void kvtd_geom_ref(struct kvtd *d, uint32_t g)
{
	d->geoms[g].refs++;
}

void kvtd_geom_unref(struct kvtd *d, uint32_t g)
{
	struct geom_slot *x;
	uint32_t *pp;

	if (!d->geoms)
		return; /* kvtd_place_fini() ran: clients and blocks go after it */
	x = &d->geoms[g];
	if (x->refs && --x->refs)
		return;
	for (pp = &d->geom_bucket[geom_hash(d, x->fp, x->tenant)]; *pp != KVTD_NIL;
	     pp = &d->geoms[*pp].next) {
		if (*pp == g) {
			*pp = x->next;
			break;
		}
	}
	d->tenants[x->tenant]->ngeoms--;
	d->ngeoms--;
	x->tenant = UINT32_MAX; /* free */
	x->refs = 0;
	x->next = d->free_geom;
	d->free_geom = g;
}

void kvtd_blk_geom(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);
	uint32_t g;

	if (b->geom != KVTD_NIL)
		return;
	g = geom_find(d, b->fingerprint, b->tenant);
	if (g == KVTD_NIL)
		return;
	kvtd_geom_ref(d, g);
	b->geom = g;
}

const struct kvt_codec_geom *kvtd_geom_of(struct kvtd *d, uint32_t i)
{
	kvtd_blk_geom(d, i); /* a recovered block meets its layout's geometry later */
	return B(d, i)->geom != KVTD_NIL ? &d->geoms[B(d, i)->geom].g : NULL;
}

/* ---------------------------------------------------------------------------------------
 * Index room
 */
/* The least recently used block of LRU list l that nobody holds, walking at most 1024. */
static uint32_t lru_unheld(struct kvtd *d, int l)
{
	uint32_t i = d->ix.lru_tail[l];

	for (unsigned n = 0; i != KVTD_NIL && n < 1024; n++) {
		const struct kvtd_blk *b = B(d, i);

		/* The host list holds neither pinned nor leased blocks; the NVMe list may hold
		 * leased ones (a lease reads the host copy) */
		if (!b->leases && !b->pins && b->state == KVTD_BLK_READY)
			return i;
		i = b->lru_prev[l];
	}
	return KVTD_NIL;
}

/* Frees an index entry: drops the least recently used block nobody holds.  0 or -ENOSPC. */
static int evict_entry(struct kvtd *d)
{
	uint32_t h = lru_unheld(d, KVTD_TIER_HOST),
		 n = nvme_on(d) ? lru_unheld(d, KVTD_TIER_NVME) : KVTD_NIL;
	uint32_t i = h;
	struct kvtd_blk *b;

	if (i == KVTD_NIL || (n != KVTD_NIL && B(d, n)->atime < B(d, h)->atime))
		i = n;
	if (i == KVTD_NIL)
		return -ENOSPC;
	b = B(d, i);
	kvtd_tenant_of(d, b)->evictions++;
	if (b->on_host) {
		d->m.evictions_total++;
		d->m.evicted_bytes_total += b->len;
	} else {
		d->m.nvme_evictions_total++;
	}
	kvtd_blk_drop(d, i);
	return 0;
}

uint32_t kvtd_blk_insert(struct kvtd *d, uint64_t lo, uint64_t hi)
{
	for (;;) {
		uint32_t i = kvtd_index_insert(&d->ix, lo, hi);

		if (i != KVTD_NIL || d->ix.cap < d->ix.max)
			return i; /* an entry, or out of memory */
		if (evict_entry(d) < 0)
			return KVTD_NIL;
	}
}

/* ---------------------------------------------------------------------------------------
 * Setup
 */
int kvtd_place_init(struct kvtd *d)
{
	int ret;

	d->free_geom = KVTD_NIL;
	ret = kvt_chain_parse("raw", &d->raw_chain);
	if (ret < 0)
		return ret;
	ret = kvtd_tiers_init(d);
	if (ret < 0)
		return ret;
	ret = kvtd_auto_init(d);
	if (ret < 0)
		return ret;
	return kvtd_remote_init(d);
}

void kvtd_place_fini(struct kvtd *d)
{
	/* The remote threads stop first: a fetched block is installed in the host tier. */
	kvtd_remote_fini(d);
	/* A calibration stops; codec jobs finish: their done() may still write a record. */
	kvtd_auto_fini(d);
	kvtd_cpool_fini(d);
	/* close() runs the callbacks of requests still in flight: d must be whole here. */
	kvtd_tiers_fini(d);
	kvt_chain_free(d->nvme_chain);
	kvt_chain_free(d->raw_chain);
	d->nvme_chain = d->raw_chain = NULL;
	kvt_dict_free(d->nvme_dict);
	d->nvme_dict = NULL;
	free(d->geoms);
	free(d->geom_bucket);
	d->geom_bucket = NULL;
	for (int k = 0; k < KVTD_PF_LEVELS; k++) {
		free(d->pf[k].items);
		d->pf[k].items = NULL;
	}
	d->geoms = NULL;
}
