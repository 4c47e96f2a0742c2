/* SPDX-License-Identifier: MIT */
/*
 * placement.c - where blocks live.
 *
 * A block has a host copy (in its tenant's arena), an NVMe copy (a record in a slot file),
 * or both: promotion keeps the NVMe copy, so a block evicted again after a get costs no
 * second write (inclusive tiers).  Host eviction takes the LRU tail of the host list; with
 * an NVMe tier it demotes the block: the arena bytes go through the NVMe codec chain into a
 * record buffer, the host pages are freed at once, and the record stays in memory until its
 * write completes, so a get in between is served from it.  A get of a block only on NVMe
 * reads the record, checks it (CRC, key, fingerprint, length), decodes it into a fresh arena
 * extent and then completes the waiting gets.  A record that fails a check is a miss: the
 * block is forgotten and the failure counted, never served.
 */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>

#include "daemon.h"
#include "kvt_record.h"
#include "log.h"

#ifdef KVT_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

struct pend_io {
	struct kvt_tier_io io;
	struct kvtd_cjob job; /* codec work on a codec_pool worker */
	struct kvtd *d;
	uint32_t blk, gen;
	uint8_t kind; /* KVTD_IO_DEMOTE or KVTD_IO_PROMOTE */
	uint8_t keep_host;
	uint8_t prefetch;  /* a promotion nobody waited for when it started */
	uint8_t loc_freed; /* demotion: the block went, io.loc was freed before the write ended */
	void *buf;
	size_t cap; /* bytes at buf */
	/* The codec job: demotion encodes src into buf, promotion decodes buf into dst. */
	const struct kvt_chain *chain;
	struct kvt_codec_geom g;
	const uint8_t *src;
	uint8_t *dst;
	uint32_t len;	   /* the block's raw bytes */
	uint32_t enc_len;  /* promotion: payload bytes to decode */
	ssize_t n;	   /* the codec's result */
	uint64_t dst_off;  /* promotion: arena extent decoded into */
	struct tenant *t;  /* ...of this tenant */
	uint64_t encoding; /* host bytes counted in d->host_encoding */
};

#define PEND_OF_JOB(j) ((struct pend_io *)((char *)(j)-offsetof(struct pend_io, job)))

static struct kvtd_blk *B(struct kvtd *d, uint32_t i)
{
	return kvtd_blk(&d->ix, i);
}

/* NVMe usable: open and its records recovered (the recovery scan owns it until then). */
static bool nvme_on(const struct kvtd *d)
{
	return d->nvme != NULL && !d->nvme_recovering;
}

/* ---------------------------------------------------------------------------------------
 * Copies
 */
static void set_host(struct kvtd *d, struct kvtd_blk *b, bool on)
{
	b->on_host = on;
	kvtd_blk_account(d, (uint32_t)(b - d->ix.blk));
}

static void set_nvme(struct kvtd *d, struct kvtd_blk *b, bool on)
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
	if (ch & ACCT_HOST)
		d->tier_nblocks[KVTD_TIER_HOST] += a & ACCT_HOST ? 1 : (uint64_t)-1;
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

bool kvtd_tenant_may_punch(const struct kvtd *d, const struct tenant *t)
{
	/* With one tenant nobody else needs the pages; it reuses them. */
	return d->ntenants > 1 && !t->pinners && !t->gpu_reg;
}

/* Gives every free page of t's arena back to the host (pages freed while it was pinned). */
static void tenant_punch_free(struct kvtd *d, struct tenant *t)
{
	const struct kvtd_pagemap *pm = &t->pm;
	uint64_t p = 0;

	(void)d;
	while (p < pm->npages) {
		uint64_t start, w = pm->bits[p >> 6] >> (p & 63);

		if (w == (~0ull >> (p & 63))) { /* the rest of this word is in use */
			p = (p | 63) + 1;
			continue;
		}
		if (w & 1) {
			p++;
			continue;
		}
		start = p;
		while (p < pm->npages && !(pm->bits[p >> 6] >> (p & 63) & 1)) {
			if (!(p & 63) && !pm->bits[p >> 6] && p + 64 <= pm->npages)
				p += 64;
			else
				p++;
		}
		fallocate(t->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			  (off_t)(start << KVTD_PAGE_SHIFT),
			  (off_t)((p - start) << KVTD_PAGE_SHIFT));
	}
}

void kvtd_tenant_pinned(struct kvtd *d, struct tenant *t, int delta)
{
	if (delta > 0) {
		t->pinners++;
		return;
	}
	if (t->pinners && !--t->pinners && kvtd_tenant_may_punch(d, t))
		tenant_punch_free(d, t);
}

static void fix_tier(struct kvtd_blk *b)
{
	b->tier = b->on_host ? KVTD_TIER_HOST : KVTD_TIER_NVME;
}

static void host_free_copy(struct kvtd *d, uint32_t i, bool punch)
{
	struct kvtd_blk *b = B(d, i);
	struct tenant *t = kvtd_tenant_of(d, b);
	uint64_t np = kvtd_pages(b->len);

	if (!b->on_host)
		return;
	if (kvtd_pagemap_free(&t->pm, b->off >> KVTD_PAGE_SHIFT, np) < 0) {
		kvtd_log(KVTD_LOG_ERR, "arena accounting broken at offset %llu",
			 (unsigned long long)b->off);
		abort();
	}
	/* With several tenants, memory freed in one arena must really return to the host. */
	if (punch && kvtd_tenant_may_punch(d, t))
		fallocate(t->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)b->off,
			  (off_t)(np << KVTD_PAGE_SHIFT));
	t->used_bytes -= np << KVTD_PAGE_SHIFT;
	d->host_used -= np << KVTD_PAGE_SHIFT;
	set_host(d, b, false);
	kvtd_lru_unlink(&d->ix, KVTD_TIER_HOST, i);
	fix_tier(b);
}

static void nvme_free_copy(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);
	struct kvt_tier_loc loc = {b->nvme_off, b->nvme_len, b->nvme_file, b->nvme_flags};

	if (!b->on_nvme)
		return;
	d->nvme_ops->free(d->nvme, &loc);
	set_nvme(d, b, false);
	kvtd_lru_unlink(&d->ix, KVTD_TIER_NVME, i);
	fix_tier(b);
}

/* The gets waiting for block i are answered (err 0: it is on the host): ops.c does it, from
 * the readiness list (waiters.c). */
static void wake_all(struct kvtd *d, uint32_t i, int err)
{
	uint32_t w = B(d, i)->waiters;

	B(d, i)->waiters = KVTD_NIL;
	kvtd_waiters_ready(d, w, i, err);
}

/* A demotion in flight of a block that goes: its slot is freed now, not when the write
 * ends, so that settle() can find it (and cancel the write if it has not started). */
static void demote_forget(struct kvtd *d, struct kvtd_blk *b)
{
	struct pend_io *p = b->pend;

	if (b->io != KVTD_IO_DEMOTE || !p || p->loc_freed)
		return;
	d->nvme_ops->free(d->nvme, &p->io.loc);
	p->loc_freed = 1;
}

void kvtd_blk_drop(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);

	if (b->state == KVTD_BLK_READY)
		kvtd_tenant_of(d, b)->blocks--;
	if (d->nvme)
		demote_forget(d, b);
	/* In-flight I/O notices the changed generation and cleans up after itself. */
	b->pend = NULL;
	b->io = KVTD_IO_NONE;
	host_free_copy(d, i, true);
	if (d->nvme)
		nvme_free_copy(d, i);
	b->state = KVTD_BLK_ZOMBIE;
	wake_all(d, i, -ENOENT);
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
	/* The NVMe copy goes now, so that a restart cannot bring a deleted block back (a read
	 * in flight on it still completes: the tier frees the slot after it). */
	if (d->nvme) {
		demote_forget(d, b);
		nvme_free_copy(d, i);
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
	set_host(d, b, true);
	fix_tier(b);
	kvtd_tenant_of(d, b)->blocks++;
	kvtd_blk_lru_update(d, i);
	/* A record of an older version of this key, freed but not yet invalidated, would be
	 * recovered after a crash in place of this one. */
	kvtd_nvme_settle_blk(d, i);
}

/* ---------------------------------------------------------------------------------------
 * NVMe space
 */
static int nvme_evict_one(struct kvtd *d)
{
	uint32_t i = d->ix.lru_tail[KVTD_TIER_NVME];
	struct kvtd_blk *b;

	if (i == KVTD_NIL)
		return -ENOSPC;
	b = B(d, i);
	d->m.nvme_evictions_total++;
	if (b->on_host) {
		nvme_free_copy(d, i);
		kvtd_blk_lru_update(d, i);
	} else {
		kvtd_blk_drop(d, i);
	}
	return 0;
}

static int nvme_alloc(struct kvtd *d, uint32_t len, struct kvt_tier_loc *loc)
{
	for (;;) {
		int ret = d->nvme_ops->alloc(d->nvme, len, loc);

		if (ret != -ENOSPC)
			return ret;
		if (nvme_evict_one(d) < 0)
			return -ENOSPC;
	}
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

static const struct kvt_codec_geom *geom_of(struct kvtd *d, uint32_t i)
{
	kvtd_blk_geom(d, i); /* a recovered block meets its layout's geometry later */
	return B(d, i)->geom != KVTD_NIL ? &d->geoms[B(d, i)->geom].g : NULL;
}

/* ---------------------------------------------------------------------------------------
 * Demotion: host → NVMe
 */
static void demote_done(struct kvt_tier_io *io)
{
	struct pend_io *p = io->arg;
	struct kvtd *d = p->d;
	uint32_t i = p->blk;
	struct kvtd_blk *b = i < d->ix.used ? B(d, i) : NULL;
	bool alive = b && b->gen == p->gen && b->pend == p;

	if (io->res < 0) {
		if (io->res != -ECANCELED)
			d->m.nvme_write_errors_total++;
		if (!p->loc_freed)
			d->nvme_ops->free(d->nvme, &io->loc);
		if (alive) {
			b->pend = NULL;
			b->io = KVTD_IO_NONE;
			/* Nowhere else to keep it: a cache drops what it cannot store. */
			if (!b->on_host && !b->leases)
				kvtd_blk_drop(d, i);
			else
				kvtd_blk_lru_update(d, i);
		}
	} else if (!alive || b->state == KVTD_BLK_ZOMBIE) {
		/* Deleted or evicted meanwhile: the record must not outlive the block. */
		if (!p->loc_freed)
			d->nvme_ops->free(d->nvme, &io->loc);
		if (alive) {
			b->pend = NULL;
			b->io = KVTD_IO_NONE;
			if (!b->leases)
				kvtd_blk_drop(d, i);
		}
	} else {
		b->pend = NULL;
		b->io = KVTD_IO_NONE;
		b->nvme_off = io->loc.off;
		b->nvme_len = io->loc.len;
		b->nvme_file = io->loc.file;
		b->nvme_flags = io->loc.flags;
		set_nvme(d, b, true);
		fix_tier(b);
		d->m.demotions_total++;
		d->m.demote_bytes_total += io->len;
		d->tier[KVTD_TIER_NVME].bytes_written += io->len;
		kvtd_blk_lru_update(d, i);
	}
	d->nvme_ops->buf_free(d->nvme, p->buf);
	free(p);
}

/*
 * A geometry whose block is exactly len bytes, for storing a block raw when its layout's
 * geometry does not describe it (a partial block, or a layout never noted): head_dim 2, so
 * layers x heads x tokens = len / 8, split within the codec's limits.  False when len is no
 * multiple of 8 or cannot be split (such a block cannot be demoted and is dropped).
 */
static bool raw_geom_for(uint32_t len, struct kvt_codec_geom *g)
{
	uint32_t m, t, h;

	if (!len || len % 8)
		return false;
	m = len / 8;
	for (t = 4096; m % t; t--)
		;
	m /= t;
	for (h = 1024; m % h; h--)
		;
	m /= h;
	*g = (struct kvt_codec_geom){.n_layers = m,
				     .n_kv_heads = h,
				     .head_dim = 2,
				     .block_tokens = t,
				     .dtype = KVT_DTYPE_FP16};
	return kvt_geom_check(g) == 0 && kvt_geom_block_bytes(g) == len;
}

/*
 * A demotion's record buffer and codec for block i.  KV codecs need the geometry and a whole
 * block; anything else is stored raw, as is everything when raw is set.  Returns NULL with
 * *err set: -ENOMEM, or -EINVAL for a block no geometry describes (see raw_geom_for).
 */
static struct pend_io *demote_prepare(struct kvtd *d, uint32_t i, bool keep_host, bool raw,
				      int *err)
{
	struct kvtd_blk *b = B(d, i);
	const struct kvt_codec_geom *g = geom_of(d, i);
	const struct kvt_chain *chain = d->nvme_chain;
	struct pend_io *p;

	struct kvt_codec_geom rg;

	if (!g || kvt_geom_block_bytes(g) != b->len) {
		if (!raw_geom_for(b->len, &rg)) {
			*err = -EINVAL;
			return NULL;
		}
		g = &rg;
		chain = d->raw_chain;
	}
	/* a chain that cannot take this geometry (a dictionary of another model): raw */
	if (raw || (chain != d->raw_chain && kvt_chain_usable(chain, g)))
		chain = d->raw_chain;
	*err = -ENOMEM;
	p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->cap = KVT_RECORD_HDR_SIZE + kvt_chain_max_encoded_size(chain, g) + b->len;
	p->buf = d->nvme_ops->buf_alloc(d->nvme, (uint32_t)p->cap);
	if (!p->buf) {
		free(p);
		return NULL;
	}
	p->d = d;
	p->blk = i;
	p->gen = b->gen;
	p->kind = KVTD_IO_DEMOTE;
	p->keep_host = keep_host;
	p->chain = chain;
	p->g = *g;
	p->g.first_token = b->first_token;
	p->src = (const uint8_t *)kvtd_tenant_of(d, b)->base + b->off;
	p->len = b->len;
	return p;
}

static void pend_free(struct kvtd *d, struct pend_io *p)
{
	d->nvme_ops->buf_free(d->nvme, p->buf);
	free(p);
}

/* The encoding itself: loop thread or codec worker.  Sets p->n and maybe p->chain. */
static void demote_encode(struct pend_io *p)
{
	uint8_t *out = (uint8_t *)p->buf + KVT_RECORD_HDR_SIZE;
	size_t room = p->cap - KVT_RECORD_HDR_SIZE;
	const struct kvt_chain *raw = p->d->raw_chain;

	p->n = kvt_chain_encode(p->chain, &p->g, p->src, p->len, out, room);
	if (p->n < 0 && p->chain != raw) {
		/* A chain that refuses this block: the block is stored raw instead. */
		p->chain = raw;
		p->n = kvt_chain_encode(raw, &p->g, p->src, p->len, out, room);
	}
}

/*
 * Seals the encoded record, finds it a slot and writes it; frees the host copy unless
 * p->keep_host.  Returns 0, or -errno with p freed and block i unchanged.
 */
static int demote_write(struct kvtd *d, uint32_t i, struct pend_io *p)
{
	struct kvtd_blk *b = B(d, i);
	struct tenant *t = kvtd_tenant_of(d, b);
	struct kvt_record_hdr *h = p->buf;
	int ret;

	if (p->n < 0) {
		ret = (int)p->n;
		goto fail;
	}
	memset(h, 0, sizeof(*h));
	h->magic = KVT_RECORD_MAGIC;
	h->version = KVT_RECORD_VERSION;
	h->hdr_size = KVT_RECORD_HDR_SIZE;
	h->key_lo = b->key_lo;
	h->key_hi = b->key_hi;
	h->fingerprint = b->fingerprint;
	h->seq = ++d->seq;
	h->raw_len = b->len;
	h->payload_len = (uint32_t)p->n;
	h->chain_id = kvt_chain_id(p->chain);
	h->tenant = t->uid;
	kvt_record_seal(h, h + 1);
	p->io.len = (uint32_t)(sizeof(*h) + (size_t)p->n);
	p->io.buf = p->buf;
	p->io.done = demote_done;
	p->io.arg = p;
	ret = nvme_alloc(d, p->io.len, &p->io.loc);
	if (ret < 0)
		goto fail;
	/* nvme_alloc may have evicted: is block i still what we encoded? */
	if (B(d, i)->gen != p->gen || !B(d, i)->on_host) {
		d->nvme_ops->free(d->nvme, &p->io.loc);
		ret = -ESTALE;
		goto fail;
	}
	ret = d->nvme_ops->write(d->nvme, &p->io);
	if (ret < 0) {
		d->nvme_ops->free(d->nvme, &p->io.loc);
		d->m.nvme_write_errors_total++;
		goto fail;
	}
	b->pend = p;
	b->io = KVTD_IO_DEMOTE;
	if (!p->keep_host)
		host_free_copy(d, i, true);
	kvtd_blk_lru_update(d, i);
	return 0;
fail:
	pend_free(d, p);
	return ret;
}

/*
 * Writes block i to NVMe, encoding on this thread.  keep_host: a flush (the host copy
 * stays); otherwise the host pages are freed as soon as the record is built.  raw: stored
 * with the raw chain whatever nvme.codec says.  Returns 0 or -errno (nothing changed).
 */
static int demote(struct kvtd *d, uint32_t i, bool keep_host, bool raw)
{
	int err;
	struct pend_io *p = demote_prepare(d, i, keep_host, raw, &err);

	if (!p)
		return err;
	demote_encode(p);
	return demote_write(d, i, p);
}

static void encode_run(struct kvtd_cjob *j)
{
	demote_encode(PEND_OF_JOB(j));
}

/* Back on the loop thread: write the record if block i is still the one encoded. */
static void encode_done(struct kvtd *d, struct kvtd_cjob *j)
{
	struct pend_io *p = PEND_OF_JOB(j);
	uint32_t i = p->blk;
	struct kvtd_blk *b = i < d->ix.used ? B(d, i) : NULL;
	int ret;

	d->host_encoding -= p->encoding;
	if (!b || b->gen != p->gen || b->pend != p) {
		pend_free(d, p); /* dropped meanwhile: the pages we read may be anyone's now */
		return;
	}
	b->pend = NULL;
	b->io = KVTD_IO_NONE;
	if (b->state != KVTD_BLK_READY || !b->on_host) {
		pend_free(d, p);
		if (b->state == KVTD_BLK_ZOMBIE && !b->leases)
			kvtd_blk_drop(d, i);
		else
			kvtd_blk_lru_update(d, i);
		return;
	}
	/* Read or pinned meanwhile: the NVMe copy is still worth writing, the host copy stays. */
	p->keep_host = b->leases || b->pins;
	d->m.codec_offloop_encodes_total++;
	ret = demote_write(d, i, p);
	if (ret < 0) {
		if (ret != -ESTALE)
			d->m.demote_failures_total++;
		if (B(d, i)->gen == p->gen)
			kvtd_blk_lru_update(d, i);
	}
}

/*
 * Background demotion between the watermarks: the encoding runs on a codec worker while the
 * host copy stays readable; the record is written, and the host pages freed, when it is done.
 * Returns 0 when started, or -errno (nothing changed).
 */
static int demote_async(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);
	int err;
	struct pend_io *p = demote_prepare(d, i, false, false, &err);

	if (!p)
		return err;
	p->job.run = encode_run;
	p->job.done = encode_done;
	p->encoding = kvtd_pages(b->len) << KVTD_PAGE_SHIFT;
	d->host_encoding += p->encoding;
	b->pend = p;
	b->io = KVTD_IO_ENCODE;
	kvtd_blk_lru_update(d, i); /* off the host LRU: eviction skips it meanwhile */
	kvtd_cpool_submit(d, &p->job);
	return 0;
}

static void recovery_poll(struct kvtd *d);

/* ---------------------------------------------------------------------------------------
 * Host space and eviction
 */
/* Jobs in the codec pool at most, from background demotion (each holds a record buffer). */
#define BG_MAX_INFLIGHT 64u

/* Evicts the host LRU tail; bg: from the watermark path, which may encode asynchronously. */
static int evict_host(struct kvtd *d, const struct tenant *only, bool bg)
{
	uint32_t i = d->ix.lru_tail[KVTD_TIER_HOST];
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
	if (b->on_nvme || b->io == KVTD_IO_DEMOTE || kvtd_gpu_has(d, i)) {
		/* Already (being) written down, or kept in the GPU pool: dropping the host copy is
		 * enough. */
		host_free_copy(d, i, punch);
		kvtd_blk_lru_update(d, i);
		return 0;
	}
	if (nvme_on(d)) {
		if (d->cfg.nvme_admit_second && !b->hits) {
			d->m.nvme_admission_rejects_total++;
		} else {
			int ret;

			if (bg && d->cpool) {
				ret = demote_async(d, i);
			} else if (d->cpool) {
				/* Space is needed now and the chain has threads because it is slow:
				 * this one is stored raw (lossless, a copy) rather than stall every
				 * client while it encodes. */
				ret = demote(d, i, false, true);
				if (!ret)
					d->m.demotions_raw_fallback_total++;
			} else {
				ret = demote(d, i, false, false);
			}
			if (ret == 0)
				return 0;
			if (ret != -ESTALE)
				d->m.demote_failures_total++;
			if (B(d, i)->gen != b->gen)
				return 0; /* gone meanwhile: space was freed */
		}
	}
	kvtd_blk_drop(d, i);
	return 0;
}

int kvtd_evict_host_one(struct kvtd *d, const struct tenant *only)
{
	return evict_host(d, only, false);
}

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

int64_t kvtd_host_alloc(struct kvtd *d, struct tenant *t, uint32_t len)
{
	uint64_t np = kvtd_pages(len), bytes = np << KVTD_PAGE_SHIFT;

	if (bytes > t->size)
		return -E2BIG;
	/* A put while NVMe records are still being recovered could be undone by a crash
	 * before the recovery ends (an older record of its key coming back): refused. */
	if (d->nvme_recovering)
		return -EAGAIN;
	for (;;) {
		if (d->host_used + bytes <= d->cfg.host_capacity) {
			int64_t p = kvtd_pagemap_alloc(&t->pm, np);
			if (p >= 0) {
				t->used_bytes += bytes;
				d->host_used += bytes;
				return p << KVTD_PAGE_SHIFT;
			}
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
	uint64_t np = kvtd_pages(len);

	kvtd_pagemap_free(&t->pm, off >> KVTD_PAGE_SHIFT, np);
	t->used_bytes -= np << KVTD_PAGE_SHIFT;
	d->host_used -= np << KVTD_PAGE_SHIFT;
}

void kvtd_watermarks(struct kvtd *d)
{
	uint64_t high = (uint64_t)(d->cfg.host_high * (double)d->cfg.host_capacity);
	uint64_t low = (uint64_t)(d->cfg.host_low * (double)d->cfg.host_capacity);
	struct kvt_tier_stats st;

	if (d->host_used > high) {
		/* Blocks being encoded free their pages soon: they count as gone already. */
		while (d->host_used - d->host_encoding > low) {
			if (d->cpool && kvtd_cpool_pending(d) >= BG_MAX_INFLIGHT)
				break;
			if (evict_host(d, NULL, true) < 0)
				break;
		}
	}
	if (d->nvme && d->nvme_recovering)
		recovery_poll(d);
	if (!nvme_on(d))
		return;
	d->nvme_ops->stats(d->nvme, &st);
	if (st.used_bytes > (uint64_t)(d->cfg.nvme_high * (double)st.capacity_bytes)) {
		uint64_t target = (uint64_t)(d->cfg.nvme_low * (double)st.capacity_bytes);
		while (st.used_bytes > target) {
			if (nvme_evict_one(d) < 0)
				break;
			d->nvme_ops->stats(d->nvme, &st);
		}
	}
}

/* ---------------------------------------------------------------------------------------
 * Promotion: NVMe → host
 */

static void decode_run(struct kvtd_cjob *j);
static void decode_done(struct kvtd *d, struct kvtd_cjob *j);

/* The decoded copy becomes block i's host copy. */
static void install_finish(struct kvtd *d, uint32_t i, uint64_t off, size_t rec_bytes)
{
	struct kvtd_blk *b = B(d, i);

	b->off = off;
	set_host(d, b, true);
	fix_tier(b);
	d->m.promotions_total++;
	d->m.promote_bytes_total += b->len;
	d->tier[KVTD_TIER_NVME].hits++;
	d->tier[KVTD_TIER_NVME].bytes_read += rec_bytes;
}

/*
 * Decodes the record at rec (n bytes) into a new host extent of block i.  trusted: the
 * record is our own, still in memory (its crc may be salted by the tier meanwhile).  With p
 * and codec workers, a non-raw record is decoded on a worker: returns 1, and p's job
 * finishes the promotion.  Returns 0, -EBADMSG for a record that is not block i's, or -errno.
 */
static int install(struct kvtd *d, uint32_t i, const uint8_t *rec, size_t n, bool trusted,
		   struct pend_io *p)
{
	struct kvtd_blk *b = B(d, i);
	struct tenant *t = kvtd_tenant_of(d, b);
	struct kvt_record_hdr h;
	const struct kvt_chain *chain;
	int64_t off;
	ssize_t got;

	if (n < sizeof(h))
		return -EBADMSG;
	memcpy(&h, rec, sizeof(h));
	if (!trusted && kvt_record_check(&h, rec + sizeof(h), n - sizeof(h)) < 0)
		return -EBADMSG;
	if (h.key_lo != b->key_lo || h.key_hi != b->key_hi || h.fingerprint != b->fingerprint ||
	    h.raw_len != b->len || h.tenant != t->uid || h.payload_len > n - sizeof(h))
		return -EBADMSG;
	if (h.chain_id == kvt_chain_id(d->nvme_chain))
		chain = d->nvme_chain;
	else if (h.chain_id == 0)
		chain = d->raw_chain;
	else
		return -EBADMSG; /* made by a chain this configuration does not know */
	off = kvtd_host_alloc(d, t, b->len);
	if (off < 0)
		return (int)off;
	if (p && d->cpool && chain != d->raw_chain) {
		p->chain = chain;
		p->src = rec + sizeof(h);
		p->enc_len = h.payload_len;
		p->t = t;
		p->dst_off = (uint64_t)off;
		p->dst = t->base + off;
		p->len = b->len;
		p->n = (ssize_t)n; /* the record's bytes, until the decoder answers */
		p->job.run = decode_run;
		p->job.done = decode_done;
		kvtd_cpool_submit(d, &p->job);
		return 1;
	}
	/* host_alloc may have evicted and demoted; block i itself is pinned by its I/O state. */
	got = kvt_chain_decode(chain, rec + sizeof(h), h.payload_len, t->base + off, b->len, NULL);
	if (got != (ssize_t)b->len) {
		kvtd_host_unalloc(d, t, (uint64_t)off, b->len);
		return -EBADMSG;
	}
	install_finish(d, i, (uint64_t)off, n);
	return 0;
}

/* Ends a promotion of p's block: err 0 (the host copy is in) or why not; from_read: err
 * is the tier's answer to the read (else ours: the record's check, host space). */
static void promote_finish(struct kvtd *d, struct pend_io *p, int err, bool from_read)
{
	uint32_t i = p->blk;
	struct kvtd_blk *b = B(d, i);

	/* Nobody asked yet: the prefetch is useful if a get comes before eviction. */
	if (!err && p->prefetch && b->waiters == KVTD_NIL)
		b->prefetched = 1;
	b->pend = NULL;
	b->io = KVTD_IO_NONE;
	if (err == -ECANCELED) {
		wake_all(d, i, -ENOENT); /* the block was deleted: its slot went with it */
	} else if (err == -EBADMSG || err == -ENODATA) {
		d->m.nvme_corrupt_total++;
		if (!from_read)
			d->nvme_install_bad++; /* the tier counted its own */
		kvtd_log(KVTD_LOG_WARN,
			 "NVMe record of block %016llx%016llx failed its check: "
			 "dropped, served as a miss",
			 (unsigned long long)b->key_hi, (unsigned long long)b->key_lo);
		kvtd_blk_drop(d, i); /* wakes the waiters with a miss */
	} else if (err < 0) {
		/* host space (-ENOSPC) or memory is no read error */
		if (from_read)
			d->m.nvme_read_errors_total++;
		if (from_read && err == -EIO)
			kvtd_blk_drop(d, i); /* an unreadable copy is no copy */
		else
			wake_all(d, i, err);
	} else {
		kvtd_blk_lru_update(d, i);
		wake_all(d, i, 0);
	}
	if (B(d, i)->gen == p->gen && b->state == KVTD_BLK_ZOMBIE && !b->leases)
		kvtd_blk_drop(d, i);
}

static void decode_run(struct kvtd_cjob *j)
{
	struct pend_io *p = PEND_OF_JOB(j);
	ssize_t got = kvt_chain_decode(p->chain, p->src, p->enc_len, p->dst, p->len, NULL);

	/* p->n keeps the record's size for the statistics; a failure is any other answer. */
	if (got != (ssize_t)p->len)
		p->n = -EBADMSG;
}

static void decode_done(struct kvtd *d, struct kvtd_cjob *j)
{
	struct pend_io *p = PEND_OF_JOB(j);
	uint32_t i = p->blk;
	struct kvtd_blk *b = i < d->ix.used ? B(d, i) : NULL;

	if (!b || b->gen != p->gen || b->pend != p) {
		/* Dropped meanwhile: the extent was never the block's. */
		kvtd_host_unalloc(d, p->t, p->dst_off, p->len);
	} else if (p->n < 0) {
		kvtd_host_unalloc(d, p->t, p->dst_off, p->len);
		promote_finish(d, p, -EBADMSG, false);
	} else {
		d->m.codec_offloop_decodes_total++;
		install_finish(d, i, p->dst_off, (size_t)p->n);
		promote_finish(d, p, 0, false);
	}
	pend_free(d, p);
}

static void promote_done(struct kvt_tier_io *io)
{
	struct pend_io *p = io->arg;
	struct kvtd *d = p->d;
	uint32_t i = p->blk;
	struct kvtd_blk *b = i < d->ix.used ? B(d, i) : NULL;
	bool alive = b && b->gen == p->gen && b->pend == p;
	int err = io->res < 0 ? io->res : 0;
	bool from_read = err < 0;

	if (p->prefetch)
		d->pf_inflight--;
	if (alive) {
		/* The tier checked the CRC; install() still checks key, layout and length. */
		if (!err)
			err = install(d, i, p->buf, (size_t)io->res, true, p);
		if (err == 1)
			return; /* decoding on a codec worker: decode_done() finishes */
		promote_finish(d, p, err, from_read);
	}
	pend_free(d, p);
}

static int add_waiter(struct kvtd *d, uint32_t i, uint32_t client_id, uint64_t user_data)
{
	uint32_t w = kvtd_waiter_new(d, B(d, i)->waiters, client_id, user_data);

	if (w == KVTD_NIL)
		return -ENOMEM;
	B(d, i)->waiters = w;
	return 0;
}

/* Starts reading block i's record for a promotion. Returns 0 or -errno (nothing started). */
static int start_read(struct kvtd *d, uint32_t i, bool prefetch)
{
	struct kvtd_blk *b = B(d, i);
	struct pend_io *p;
	int ret;

	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->buf = d->nvme_ops->buf_alloc(d->nvme, b->nvme_len);
	if (!p->buf) {
		free(p);
		return -ENOMEM;
	}
	p->d = d;
	p->blk = i;
	p->gen = b->gen;
	p->kind = KVTD_IO_PROMOTE;
	p->prefetch = prefetch;
	p->io.loc.off = b->nvme_off;
	p->io.loc.len = b->nvme_len;
	p->io.loc.file = b->nvme_file;
	p->io.loc.flags = b->nvme_flags;
	p->io.buf = p->buf;
	p->io.len = b->nvme_len;
	p->io.done = promote_done;
	p->io.arg = p;
	ret = d->nvme_ops->read(d->nvme, &p->io);
	if (ret < 0) {
		d->nvme_ops->buf_free(d->nvme, p->buf);
		free(p);
		d->m.nvme_read_errors_total++;
		return ret == -ENODATA ? -ENOENT : ret;
	}
	b->pend = p;
	b->io = KVTD_IO_PROMOTE;
	if (prefetch)
		d->pf_inflight++;
	kvtd_blk_lru_update(d, i);
	return 0;
}

int kvtd_promote(struct kvtd *d, uint32_t client_id, uint64_t user_data, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);
	int ret;

	if (b->on_host)
		return 0;
	if (b->io == KVTD_IO_DEMOTE) {
		/* Still in memory: the record being written is the block. */
		struct pend_io *p = b->pend;
		ret = install(d, i, p->buf, p->io.len, true, NULL);
		if (ret == -EBADMSG) {
			kvtd_blk_drop(d, i);
			return -ENOENT;
		}
		return ret;
	}
	if (b->io == KVTD_IO_PROMOTE) {
		if (((struct pend_io *)b->pend)->prefetch)
			d->m.prefetch_late_total++;
		return add_waiter(d, i, client_id, user_data) < 0 ? -ENOMEM : 1;
	}
	if (!b->on_nvme || !d->nvme)
		return -ENOENT;
	ret = start_read(d, i, false);
	if (ret < 0)
		return ret;
	if (add_waiter(d, i, client_id, user_data) < 0)
		return -ENOMEM; /* the read goes on; the block lands on the host unasked */
	return 1;
}

static uint64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

void kvtd_prefetch_request(struct kvtd *d, uint32_t i, unsigned prio, uint64_t deadline_us)
{
	struct kvtd_blk *b = B(d, i);
	struct pf_ring *r;

	d->m.prefetch_requests_total++;
	if (b->on_host || b->io != KVTD_IO_NONE) {
		/* Predicted and already there: keep it there, ahead of what nobody predicted. */
		d->m.prefetch_resident_total++;
		b->atime = kvtd_now_ms();
		kvtd_blk_lru_update(d, i);
		return;
	}
	if (!d->nvme || !b->on_nvme) {
		d->m.prefetch_dropped_total++;
		return;
	}
	r = &d->pf[prio < KVTD_PF_LEVELS ? prio : KVTD_PF_LEVELS - 1];
	if (!r->items) {
		r->items = calloc(KVTD_PF_CAP, sizeof(*r->items));
		if (!r->items) {
			d->m.prefetch_dropped_total++;
			return;
		}
	}
	if (r->tail - r->head == KVTD_PF_CAP) {
		d->m.prefetch_dropped_total++;
		return;
	}
	r->items[r->tail % KVTD_PF_CAP] =
	    (struct pf_item){i, b->gen, deadline_us ? mono_us() + deadline_us : 0};
	r->tail++;
}

#define PREFETCH_PROTECT_MS 2

static bool prefetch_room(struct kvtd *d, const struct kvtd_blk *b)
{
	uint64_t need = kvtd_pages(b->len) << KVTD_PAGE_SHIFT;
	uint32_t tail = d->ix.lru_tail[KVTD_TIER_HOST];

	if (d->host_used + need <= (uint64_t)(d->cfg.host_high * (double)d->cfg.host_capacity))
		return true;
	return tail != KVTD_NIL && B(d, tail)->atime + PREFETCH_PROTECT_MS < kvtd_now_ms();
}

void kvtd_prefetch_pump(struct kvtd *d)
{
	/* Demand reads never queue behind prefetches: these get a quarter of the depth. */
	uint32_t limit = d->cfg.nvme_queue_depth / 4 ? d->cfg.nvme_queue_depth / 4 : 1;
	uint64_t now = 0;

	if (!d->nvme)
		return;
	for (int lvl = KVTD_PF_LEVELS - 1; lvl >= 0 && d->pf_inflight < limit; lvl--) {
		struct pf_ring *r = &d->pf[lvl];

		while (r->head != r->tail && d->pf_inflight < limit) {
			struct pf_item it = r->items[r->head % KVTD_PF_CAP];
			struct kvtd_blk *b;

			r->head++;
			if (it.blk >= d->ix.used)
				continue;
			b = B(d, it.blk);
			if (b->gen != it.gen || b->state != KVTD_BLK_READY || b->on_host ||
			    b->io != KVTD_IO_NONE || !b->on_nvme)
				continue;
			/* A prefetch may take free room or cold blocks, never a block read in the
			 * last 2 ms: the current decode step's, or predicted for the next one. */
			if (!prefetch_room(d, b)) {
				d->m.prefetch_dropped_total++;
				continue;
			}
			if (it.deadline_us) {
				if (!now)
					now = mono_us();
				if (now > it.deadline_us) {
					d->m.prefetch_dropped_total++;
					continue;
				}
			}
			if (start_read(d, it.blk, true) == 0)
				d->m.prefetch_issued_total++;
		}
	}
}

void kvtd_prefetch_used(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);

	if (b->prefetched) {
		d->m.prefetch_useful_total++;
		b->prefetched = 0;
	}
}

int kvtd_flush(struct kvtd *d)
{
	int n = 0;

	if (!d->nvme)
		return -ENODEV;
	if (d->nvme_recovering)
		return -EAGAIN;
	for (uint32_t i = 0; i < d->ix.used; i++) {
		struct kvtd_blk *b = B(d, i);

		if (b->state == KVTD_BLK_READY && b->on_host && !b->on_nvme &&
		    b->io == KVTD_IO_NONE && demote(d, i, true, false) == 0)
			n++;
	}
	return n;
}

/* ---------------------------------------------------------------------------------------
 * Setup, recovery, events
 */
static int recover_cb(void *arg, const struct kvt_record_hdr *h, const struct kvt_tier_loc *loc)
{
	struct kvtd *d = arg;
	struct tenant *t;
	struct kvtd_blk *b;
	uint32_t i;

	if (kvtd_index_find(&d->ix, h->key_lo, h->key_hi) != KVTD_NIL) {
		d->m.nvme_recovery_dropped_unplaceable_total++;
		return 1;
	}
	/* written by a codec chain (or dictionary) this configuration does not have: no
	 * decoder for it, drop it now rather than at its first read */
	if (h->chain_id && h->chain_id != kvt_chain_id(d->nvme_chain)) {
		d->m.nvme_recovery_dropped_foreign_total++;
		return 1;
	}
	t = kvtd_tenant_get(d, h->tenant);
	if (!t || h->raw_len > t->size) {
		d->m.nvme_recovery_dropped_unplaceable_total++;
		return 1;
	}
	i = kvtd_index_insert(&d->ix, h->key_lo, h->key_hi);
	if (i == KVTD_NIL) {
		d->m.nvme_recovery_dropped_unplaceable_total++;
		return 1;
	}
	b = B(d, i);
	for (uint32_t k = 0; k < d->ntenants; k++) {
		if (d->tenants[k] == t)
			b->tenant = k;
	}
	b->state = KVTD_BLK_READY;
	b->len = h->raw_len;
	b->fingerprint = h->fingerprint;
	b->atime = kvtd_now_ms();
	b->nvme_off = loc->off;
	b->nvme_len = loc->len;
	b->nvme_file = loc->file;
	b->nvme_flags = loc->flags;
	set_nvme(d, b, true);
	fix_tier(b);
	t->blocks++;
	if (h->seq > d->seq)
		d->seq = h->seq;
	d->m.nvme_recovered_total++;
	kvtd_blk_lru_update(d, i);
	return 0;
}

/*
 * nvme.codec_dict: loaded and attached when the chain needs a dictionary; a chain that needs
 * one without it, an unreadable file, or one the chain cannot use is a configuration error.
 */
static int nvme_dict_setup(struct kvtd *d)
{
	const char *path = d->cfg.nvme_codec_dict;
	struct kvt_codec_geom g;
	double theta;
	int ret;

	if (!(kvt_chain_flags(d->nvme_chain) & KVT_CODEC_DICT)) {
		if (*path)
			kvtd_log(KVTD_LOG_WARN,
				 "nvme.codec_dict ignored: nvme.codec = %s needs none",
				 kvt_chain_name(d->nvme_chain));
		return 0;
	}
	if (!*path) {
		kvtd_log(KVTD_LOG_ERR,
			 "nvme.codec = %s needs a dictionary: set nvme.codec_dict (make one with "
			 "kvtier-eval dict)",
			 kvt_chain_name(d->nvme_chain));
		return -EINVAL;
	}
	ret = kvt_dict_load(path, &d->nvme_dict);
	if (ret < 0) {
		kvtd_log(KVTD_LOG_ERR, "nvme.codec_dict = %s: %s", path,
			 ret == -EBADMSG ? "not a kvtier dictionary, or damaged"
					 : kvt_strerror(ret));
		return -EINVAL;
	}
	kvt_chain_set_dict(d->nvme_chain, d->nvme_dict);
	/* the dictionary's own geometry must pass: else its RoPE frame is not the chain's */
	kvt_dict_geom(d->nvme_dict, &g, &theta);
	if (kvt_chain_usable(d->nvme_chain, &g)) {
		kvtd_log(KVTD_LOG_ERR,
			 "nvme.codec_dict = %s: calibrated with RoPE base %g, not the one of "
			 "nvme.codec = %s",
			 path, theta, kvt_chain_name(d->nvme_chain));
		return -EINVAL;
	}
	kvtd_log(KVTD_LOG_INFO,
		 "nvme.codec_dict = %s: %u layers x %u kv heads x %u dims, id %016llx; blocks of "
		 "other models are stored raw",
		 path, g.n_layers, g.n_kv_heads, g.head_dim,
		 (unsigned long long)kvt_dict_id(d->nvme_dict));
	return 0;
}

static void tier_log(void *arg, int level, const char *msg)
{
	kvtd_log(level <= 3   ? KVTD_LOG_ERR
		 : level == 4 ? KVTD_LOG_WARN
			      : KVTD_LOG_INFO,
		 "nvme: %s", msg);
}

/* Test hook: KVTIER_TEST_NVME_FAULT="read:EIO:N" fails every Nth read (or write) with EIO or
 * ENOSPC.  Never set in production; documented for the tests only. */
static int fault_op, fault_err;
static unsigned fault_every, fault_count;
/* KVTIER_TEST_NVME_SCAN_GATE=FILE: the recovery scan's first read waits until FILE exists,
 * so that a test sees the daemon recovering for as long as it needs (an event, no timing). */
static const char *scan_gate;

static int fault_hook(int op, uint64_t off, uint32_t len)
{
	if (scan_gate && op == KVT_TIER_OP_READ) {
		/* Only the scan reads before the recovery ends; it reads on its own thread. */
		while (access(scan_gate, F_OK) != 0)
			usleep(1000);
		scan_gate = NULL;
	}
	if (op != fault_op || !fault_every)
		return 0;
	return ++fault_count % fault_every == 0 ? -fault_err : 0;
}

static void fault_setup(struct kvt_tier_conf *tc)
{
	const char *f = getenv("KVTIER_TEST_NVME_FAULT");
	char op[16], err[16];

	scan_gate = getenv("KVTIER_TEST_NVME_SCAN_GATE");
	if (scan_gate && *scan_gate) {
		tc->io_hook = fault_hook;
		kvtd_log(KVTD_LOG_WARN, "NVMe recovery waits for %s (test hook)", scan_gate);
	} else {
		scan_gate = NULL;
	}
	if (!f || sscanf(f, "%15[a-z]:%15[A-Z]:%u", op, err, &fault_every) != 3)
		return;
	fault_op = !strcmp(op, "read") ? KVT_TIER_OP_READ : KVT_TIER_OP_WRITE;
	fault_err = !strcmp(err, "ENOSPC") ? ENOSPC : EIO;
	tc->io_hook = fault_hook;
	kvtd_log(KVTD_LOG_WARN, "NVMe fault injection on: %s", f);
}

int kvtd_place_init(struct kvtd *d)
{
	struct kvt_tier_conf tc;
	char *paths_buf = NULL, *save, *tok;
	const char *paths[KVTD_MAX_NVME_PATHS + 1] = {0};
	int np = 0, ret;

	d->free_geom = KVTD_NIL;
	ret = kvt_chain_parse("raw", &d->raw_chain);
	if (ret < 0)
		return ret;
	if (!d->cfg.nvme_enabled)
		return 0;
	ret = kvt_chain_parse(d->cfg.nvme_codec, &d->nvme_chain);
	if (ret < 0) {
		kvtd_log(KVTD_LOG_ERR, "nvme.codec = %s: not a codec chain (see codecs/CODECS.md)",
			 d->cfg.nvme_codec);
		return -EINVAL;
	}
	ret = nvme_dict_setup(d);
	if (ret < 0)
		return ret;
	paths_buf = strdup(d->cfg.nvme_paths);
	if (!paths_buf)
		return -ENOMEM;
	for (tok = strtok_r(paths_buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ')
			tok++;
		if (!*tok)
			continue;
		if (np == KVTD_MAX_NVME_PATHS) {
			kvtd_log(KVTD_LOG_ERR, "nvme.paths names more than %d files (from %s on)",
				 KVTD_MAX_NVME_PATHS, tok);
			free(paths_buf);
			return -EINVAL;
		}
		paths[np++] = tok;
	}
	memset(&tc, 0, sizeof(tc));
	tc.name = "nvme";
	tc.capacity_bytes = d->cfg.nvme_capacity;
	tc.paths = paths;
	tc.queue_depth = d->cfg.nvme_queue_depth;
	tc.flags = (d->cfg.nvme_io_uring ? 0 : KVT_TIER_F_NO_URING) |
		   (d->cfg.nvme_direct ? 0 : KVT_TIER_F_NO_DIRECT) |
		   (d->cfg.nvme_fsync ? KVT_TIER_F_FSYNC : 0) | KVT_TIER_F_BG_RECOVER;
	tc.log = tier_log;
	fault_setup(&tc);
	d->nvme_ops = &kvt_tier_nvme_ops;
	ret = d->nvme_ops->open(&tc, &d->nvme);
	free(paths_buf);
	if (ret < 0) {
		kvtd_log(KVTD_LOG_ERR, "cannot open the NVMe tier (%s): %s", d->cfg.nvme_paths,
			 kvt_strerror(ret));
		d->nvme = NULL;
		return ret;
	}
	/* The records come in from kvtd_run on: see kvtd_nvme_recover_start(). */
	d->nvme_recovering = true;
	d->m.nvme_recovering = 1;
	if (d->nvme_ops->event_fd) {
		d->nvme_ev.kind = EV_TIER;
		d->nvme_ev.p = NULL;
		struct epoll_event ee = {.events = EPOLLIN, .data.ptr = &d->nvme_ev};
		if (epoll_ctl(d->ep, EPOLL_CTL_ADD, d->nvme_ops->event_fd(d->nvme), &ee) < 0)
			return -errno;
	}
	/* A raw chain is a copy: no threads for that. */
	if (kvt_chain_id(d->nvme_chain) != kvt_chain_id(d->raw_chain) &&
	    d->cfg.nvme_codec_threads) {
		ret = kvtd_cpool_init(d, d->cfg.nvme_codec_threads);
		if (ret < 0)
			kvtd_log(KVTD_LOG_WARN, "no codec threads (%s): %s runs on the event loop",
				 kvt_strerror(ret), kvt_chain_name(d->nvme_chain));
	}
	return 0;
}

/* The scan is over: hand the records to the index, and report. */
static int recovery_finish(struct kvtd *d)
{
	struct kvt_tier_stats st;
	int ret;

	ret = d->nvme_ops->recover(d->nvme, recover_cb, d);
	d->nvme_recovering = false;
	d->m.nvme_recovering = 0;
	if (ret < 0) {
		kvtd_log(KVTD_LOG_ERR, "NVMe recovery failed: %s", kvt_strerror(ret));
		return ret;
	}
	d->nvme_ops->stats(d->nvme, &st);
	d->m.nvme_recovery_dropped_corrupt_total += st.scan_corrupt;
	d->m.nvme_recovery_dropped_unreadable_total += st.scan_unreadable;
	d->m.nvme_recovery_dropped_cut_total += st.cut_records;
	d->m.nvme_recovery_dropped_stale_total += st.stale;
	d->m.nvme_recovery_scanned_bytes = d->m.nvme_recovery_total_bytes;
	kvtd_log(KVTD_LOG_INFO,
		 "NVMe tier: %llu blocks recovered, codec %s; records dropped: %llu corrupt, "
		 "%llu unreadable, %llu cut off a truncated file, %llu stale copies, %llu of "
		 "another codec or dictionary, %llu without "
		 "room%s",
		 (unsigned long long)d->m.nvme_recovered_total, kvt_chain_name(d->nvme_chain),
		 (unsigned long long)d->m.nvme_recovery_dropped_corrupt_total,
		 (unsigned long long)d->m.nvme_recovery_dropped_unreadable_total,
		 (unsigned long long)d->m.nvme_recovery_dropped_cut_total,
		 (unsigned long long)d->m.nvme_recovery_dropped_stale_total,
		 (unsigned long long)d->m.nvme_recovery_dropped_foreign_total,
		 (unsigned long long)d->m.nvme_recovery_dropped_unplaceable_total,
		 st.lost_bytes ? "; part of a truncated file lost, see above" : "");
#ifdef KVT_HAVE_SYSTEMD
	sd_notifyf(0, "STATUS=serving on %s; %llu NVMe blocks recovered",
		   d->sock_path[0] ? d->sock_path : "systemd socket",
		   (unsigned long long)d->m.nvme_recovered_total);
#endif
	return 0;
}

/* Progress of the recovery scan; finishes it when the scan is over. */
static void recovery_poll(struct kvtd *d)
{
	uint64_t done = 0, total = 0;
	int r = d->nvme_ops->recovering(d->nvme, &done, &total);

	d->m.nvme_recovery_scanned_bytes = done;
	d->m.nvme_recovery_total_bytes = total;
	if (r == 0) {
		if (recovery_finish(d) < 0)
			d->stop = true; /* logged; the tier is unusable */
		return;
	}
#ifdef KVT_HAVE_SYSTEMD
	sd_notifyf(0,
		   "STATUS=serving (NVMe blocks are misses until recovered): recovery %llu of "
		   "%llu MiB scanned",
		   (unsigned long long)(done >> 20), (unsigned long long)(total >> 20));
#endif
}

int kvtd_nvme_recover_start(struct kvtd *d)
{
	uint64_t total = 0;
	int r;

	if (!d->nvme || !d->nvme_recovering)
		return 0;
	r = d->nvme_ops->recover_start(d->nvme);
	if (r < 0) {
		kvtd_log(KVTD_LOG_ERR, "NVMe recovery: %s", kvt_strerror(r));
		return r;
	}
	if (r == 0)
		return recovery_finish(d);
	d->nvme_ops->recovering(d->nvme, NULL, &total);
	d->m.nvme_recovery_total_bytes = total;
	kvtd_log(KVTD_LOG_INFO,
		 "NVMe tier: recovering %llu MiB of records while serving (misses until then)",
		 (unsigned long long)(total >> 20));
	return 0;
}

void kvtd_nvme_event(struct kvtd *d)
{
	if (d->nvme && d->nvme_ops->complete)
		d->nvme_ops->complete(d->nvme);
	if (d->nvme && d->nvme_recovering)
		recovery_poll(d);
}

void kvtd_nvme_stats(struct kvtd *d, struct kvt_tier_stats *st)
{
	memset(st, 0, sizeof(*st));
	if (d->nvme && d->nvme_recovering)
		d->nvme_ops->recovering(d->nvme, &d->m.nvme_recovery_scanned_bytes, NULL);
	if (d->nvme)
		d->nvme_ops->stats(d->nvme, st);
	else
		st->capacity_bytes = d->cfg.nvme_capacity;
}

void kvtd_place_fini(struct kvtd *d)
{
	/* Codec jobs finish first: their done() may still write a record. */
	kvtd_cpool_fini(d);
	/* close() runs the callbacks of requests still in flight: d must be whole here. */
	if (d->nvme)
		d->nvme_ops->close(d->nvme);
	d->nvme = NULL;
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
