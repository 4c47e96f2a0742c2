/* SPDX-License-Identifier: MIT */
/*
 * block.c - the changes of a block's state that clients cause: a put's reservation and its
 * commit (to the host arena or to the GPU pool), leases and pins.  With placement.c and
 * gpu_place.c (copies, I/O in flight, eviction, drops) these are the only writers of
 * struct kvtd_blk: the layers that serve clients (ops.c, holds.c, gpu_msgs.c) ask here.
 */
#include "daemon.h"

void kvtd_blk_reserved(struct kvtd *d, uint32_t i, struct tenant *t, uint32_t owner, uint64_t fp,
		       uint32_t len, int64_t off)
{
	struct kvtd_blk *b = kvtd_blk(&d->ix, i);

	b->state = KVTD_BLK_RESERVED;
	b->tier = KVTD_TIER_HOST;
	b->len = len;
	b->raw_len = len;
	b->hchain = 0;
	if (off >= 0)
		b->off = (uint64_t)off;
	b->tenant = kvtd_tenant_index(d, t);
	b->owner = owner;
	b->fingerprint = fp;
	b->on_host = off >= 0;
	kvtd_blk_geom(d, i);
}

void kvtd_blk_stored_form(struct kvtd *d, uint32_t i, uint32_t hchain, uint32_t raw_len)
{
	struct kvtd_blk *b = kvtd_blk(&d->ix, i);

	b->hchain = hchain;
	b->raw_len = hchain ? raw_len : b->len;
}

void kvtd_blk_commit_host(struct kvtd *d, uint32_t i, uint32_t first_token)
{
	struct kvtd_blk *b = kvtd_blk(&d->ix, i);

	b->atime = kvtd_now_ms();
	b->first_token = first_token;
	kvtd_blk_committed(d, i);
}

void kvtd_blk_commit_gpu(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = kvtd_blk(&d->ix, i);

	b->state = KVTD_BLK_READY;
	b->atime = kvtd_now_ms();
	kvtd_tenant_of(d, b)->blocks++;
	kvtd_gpu_commit(d, i);
	kvtd_blk_lru_update(d, i);
	kvtd_nvme_settle_blk(d, i); /* as kvtd_blk_committed() */
}

void kvtd_blk_lease(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = kvtd_blk(&d->ix, i);

	b->leases++;
	b->hits++;
	b->atime = kvtd_now_ms();
	kvtd_blk_lru_update(d, i);
}

void kvtd_blk_unlease(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = kvtd_blk(&d->ix, i);

	b->leases--;
	if (b->state == KVTD_BLK_ZOMBIE && !b->leases && b->io == KVTD_IO_NONE)
		kvtd_blk_drop(d, i);
	else
		kvtd_blk_lru_update(d, i);
}

void kvtd_blk_pin(struct kvtd *d, uint32_t i, bool pin)
{
	struct kvtd_blk *b = kvtd_blk(&d->ix, i);

	if (pin)
		b->pins++;
	else
		b->pins--;
	kvtd_blk_lru_update(d, i);
}
