/* SPDX-License-Identifier: MIT */
/*
 * tierlist.h - kvtierd's tiers as one ordered list (tiers.order, fastest first).
 *
 * Every tier is reached through the one ops table of tiers/tier.h (struct kvt_tier_ops).
 * What placement does with a kind of tier lives beside it in one daemon-side table (struct
 * kvtd_tier_class, tierlist.c): how it opens from the configuration, whether a block has a
 * copy there, how full it is, what leaves it first (its LRU list in the block index), and how
 * a block moving down the list takes a copy in it.  The watermark pass walks the list from
 * the top; a block that must leave a tier and has no copy in any other tier moves to the
 * next open tier below (kvtd_tier_below), or is dropped at the bottom; a get brings a block
 * up from the nearest tier below that holds it.
 */
#ifndef KVTD_TIERLIST_H
#define KVTD_TIERLIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "index.h"
#include "tier.h"

struct kvtd;
struct tenant;
struct kvtd_tier;

struct kvtd_tier_class {
	const char *name;		/* in tiers.order */
	enum kvtd_tier_id id;		/* its copy counter and LRU list in the index */
	const struct kvt_tier_ops *ops; /* the storage (tiers/) */
	size_t high_off, low_off;	/* its watermarks in struct kvtd_config (a reload
					   changes them) */
	/* Opens the tier from the configuration: 0 with x->t set, 0 with x->t NULL when it is
	 * off (logged), or -errno (the daemon does not start).  NULL: opened later by its own
	 * code (the GPU tier, after the fork: kvtd_gpu_init). */
	int (*open)(struct kvtd *d, struct kvtd_tier *x);
	void (*close)(struct kvtd *d, struct kvtd_tier *x);
	/* Block i has a copy here, complete or being written (it needs no other). */
	bool (*has)(struct kvtd *d, uint32_t i);
	/* Frees block i's copy here, and a write of one in flight.  NULL: copies are
	 * validated by the block's generation and freed lazily (GPU). */
	void (*drop_copy)(struct kvtd *d, uint32_t i);
	/* Copies survive a restart: a deleted block's copy goes at once, even while leased. */
	bool durable;
	/* Optional: false while blocks may not be placed in it (NVMe: recovering). */
	bool (*usable)(const struct kvtd *d);
	/* Optional: runs at every tick before its watermark pass. */
	void (*tick)(struct kvtd *d);
	/* Bytes in use (what the high watermark compares), of which leaving (already on
	 * their way out), and capacity. */
	void (*usage)(struct kvtd *d, uint64_t *used, uint64_t *leaving, uint64_t *cap);
	/* The least recently used block that may leave, leaves: its copy is freed when it has
	 * one elsewhere, else it moves down the list (or is dropped at the bottom).  bg: from
	 * the watermark pass.  0, -ENOSPC (nothing can leave) or -EBUSY (not now). */
	int (*evict_one)(struct kvtd *d, bool bg);
	/* Block i, leaving the tier above with no other copy, gets one here.  0 or -errno
	 * (the caller drops the block unless it went meanwhile).  NULL: nothing moves in
	 * from above. */
	int (*take)(struct kvtd *d, uint32_t i, bool bg);
	int take_from; /* the id of the tier take() moves blocks out of, -1: none */
	/* A get of block i, which has a copy here and none above the host: brings it up to
	 * the host tier.  0 when there now, 1 when the get waits (woken later), -errno. */
	int (*promote)(struct kvtd *d, uint32_t client_id, uint64_t user_data, uint32_t i);
};

/* One tier of the list. */
struct kvtd_tier {
	const struct kvtd_tier_class *cls;
	struct kvt_tier *t; /* NULL: listed but not open (off, no device, failed) */
	unsigned level;	    /* its place in d->tiers, 0 = fastest */
};

/* Builds d->tiers from tiers.order and opens the tiers that open at start.  0 or -errno
 * (logged: an unknown tier, an order placement cannot move blocks along). */
int kvtd_tiers_init(struct kvtd *d);
/* Closes every tier, bottom first. */
void kvtd_tiers_fini(struct kvtd *d);
/* The tier of that id when it is listed (open or not), else NULL. */
struct kvtd_tier *kvtd_tier_get(struct kvtd *d, enum kvtd_tier_id id);
/* The next tier below x that is open and usable, or NULL. */
struct kvtd_tier *kvtd_tier_below(struct kvtd *d, const struct kvtd_tier *x);
/* Whether block i has a copy in an open tier other than x. */
bool kvtd_copy_elsewhere(struct kvtd *d, uint32_t i, const struct kvtd_tier *x);
/* kvt_tier_conf.log for every tier: its lines in the daemon's log, arg = the prefix. */
void kvtd_tier_log(void *arg, int level, const char *msg);
/* The class of a tier name, or NULL. */
const struct kvtd_tier_class *kvtd_tier_class_find(const char *name, size_t len);

#endif
