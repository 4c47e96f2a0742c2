/* SPDX-License-Identifier: MIT */
/*
 * waiters.c - the gets that wait for their block to come up from NVMe, and the readiness
 * list that hands them from placement to the operations layer.
 *
 * A waiter is one get (client id, request's user_data).  Placement chains it on the block it
 * promotes (kvtd_promote) and, when the promotion ends, well or not, moves the block's chain
 * here with the outcome (kvtd_waiters_ready).  It does not answer the gets itself: ops.c
 * drains the list (kvtd_ready_drain) after each event the loop handles, leases the block and
 * posts the completions.  So placement never calls up into the code that owns clients and
 * rings.  A waiter's entry is its readiness record: moving it allocates nothing and cannot
 * fail.  Free entries, chains and the list are linked through waiter.next.
 */
#include <stdlib.h>

#include "daemon.h"

void kvtd_waiters_init(struct kvtd *d)
{
	d->free_waiter = KVTD_NIL;
	d->ready_head = d->ready_tail = KVTD_NIL;
}

void kvtd_waiters_fini(struct kvtd *d)
{
	free(d->waiters);
	d->waiters = NULL;
	d->nwaiters = d->cap_waiters = 0;
	kvtd_waiters_init(d);
}

uint32_t kvtd_waiter_new(struct kvtd *d, uint32_t next, uint32_t client_id, uint64_t user_data)
{
	uint32_t w;

	if (d->free_waiter != KVTD_NIL) {
		w = d->free_waiter;
		d->free_waiter = d->waiters[w].next;
	} else {
		if (d->nwaiters == d->cap_waiters) {
			uint32_t ncap = d->cap_waiters ? d->cap_waiters * 2 : 64;
			struct waiter *n = realloc(d->waiters, ncap * sizeof(*n));
			if (!n)
				return KVTD_NIL;
			d->waiters = n;
			d->cap_waiters = ncap;
		}
		w = d->nwaiters++;
	}
	d->waiters[w].client_id = client_id;
	d->waiters[w].user_data = user_data;
	d->waiters[w].next = next;
	return w;
}

void kvtd_waiters_ready(struct kvtd *d, uint32_t w, uint32_t blk, int err)
{
	/* blk may be KVTD_NIL: a get of a block that never came to be (a remote miss) */
	uint32_t gen = blk < d->ix.used ? kvtd_blk(&d->ix, blk)->gen : 0;

	for (; w != KVTD_NIL; w = d->waiters[w].next) {
		d->waiters[w].blk = blk;
		d->waiters[w].gen = gen;
		d->waiters[w].err = err;
		if (d->ready_tail == KVTD_NIL)
			d->ready_head = w;
		else
			d->waiters[d->ready_tail].next = w;
		d->ready_tail = w;
	}
}

bool kvtd_ready_pop(struct kvtd *d, struct waiter *out)
{
	uint32_t w = d->ready_head;

	if (w == KVTD_NIL)
		return false;
	*out = d->waiters[w];
	d->ready_head = out->next;
	if (d->ready_head == KVTD_NIL)
		d->ready_tail = KVTD_NIL;
	d->waiters[w].next = d->free_waiter;
	d->free_waiter = w;
	return true;
}
