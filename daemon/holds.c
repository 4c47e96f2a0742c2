/* SPDX-License-Identifier: MIT */
/*
 * holds.c - what a client holds: its reservations, leases and pins (struct hold, one table
 * per client, addressed by the handles it is given), the quota on what a tenant may hold
 * (host.tenant_hold_max), and the release of everything when the client goes away.  The
 * block's side of each change is block.c's.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "holds.h"

int hold_add(struct client *c, uint32_t blk, uint32_t blk_gen, uint8_t kind, uint64_t *handle)
{
	uint32_t h;

	if (c->free_hold != KVTD_NIL) {
		h = c->free_hold;
		c->free_hold = c->holds[h].next_free;
	} else {
		if (c->nholds == c->cap_holds) {
			uint32_t ncap = c->cap_holds ? c->cap_holds * 2 : 64;
			struct hold *n;

			if (ncap > MAX_HOLDS)
				return -KVT_ELIMIT;
			n = realloc(c->holds, ncap * sizeof(*n));
			if (!n)
				return -ENOMEM;
			memset(n + c->cap_holds, 0, (ncap - c->cap_holds) * sizeof(*n));
			c->holds = n;
			c->cap_holds = ncap;
		}
		h = c->nholds++;
	}
	c->holds[h].blk = blk;
	c->holds[h].blk_gen = blk_gen;
	c->holds[h].kind = kind;
	c->holds[h].gen++;
	*handle = (uint64_t)c->holds[h].gen << 32 | h;
	return 0;
}

struct hold *hold_get(struct client *c, uint64_t handle, uint8_t kind)
{
	uint32_t h = (uint32_t)handle;

	if (h >= c->nholds || c->holds[h].kind != kind ||
	    c->holds[h].gen != (uint32_t)(handle >> 32))
		return NULL;
	return &c->holds[h];
}

void hold_put(struct client *c, struct hold *ho)
{
	ho->kind = HOLD_NONE;
	ho->next_free = c->free_hold;
	c->free_hold = (uint32_t)(ho - c->holds);
}

void lease_drop(struct kvtd *d, uint32_t i)
{
	d->m.leases--;
	kvtd_blk_unlease(d, i);
}

bool hold_valid(struct kvtd *d, const struct hold *ho)
{
	return ho->blk < d->ix.used && kvtd_blk(&d->ix, ho->blk)->gen == ho->blk_gen;
}

/* The accounting of a lease of block i granted to c, whichever tier serves it. */
void lease_granted(struct kvtd *d, struct client *c, uint32_t i)
{
	kvtd_blk_lease(d, i);
	c->n_leases++;
	c->hits++;
	d->m.leases++;
	d->m.hits_total++;
	d->m.get_bytes_total += kvtd_blk(&d->ix, i)->len;
}

/*
 * host.tenant_hold_max: a tenant may pin or lease at most this share of the host tier, so
 * that one tenant holding everything cannot leave the others nothing to evict (ENOSPC).
 * 0 when c's tenant may hold block i too, or -KVT_ELIMIT.
 */
int hold_quota(struct kvtd *d, struct client *c, uint32_t i)
{
	const struct kvtd_blk *b = kvtd_blk(&d->ix, i);
	uint64_t max = (uint64_t)(d->cfg.host_hold_max * (double)d->cfg.host_capacity);
	uint64_t bytes = kvtd_pages(b->len) << KVTD_PAGE_SHIFT;

	if (b->pins || b->leases || c->t->held_bytes + bytes <= max)
		return 0; /* held already: no more memory */
	kvtd_log(KVTD_LOG_DEBUG, "uid %u: pin or lease refused, host.tenant_hold_max reached",
		 (unsigned)c->uid);
	return -KVT_ELIMIT;
}

/* Returns everything c held: unfinished puts vanish, leases and pins are dropped. */
void client_release_all(struct kvtd *d, struct client *c)
{
	for (uint32_t h = 0; h < c->nholds; h++) {
		struct hold *ho = &c->holds[h];

		if (ho->kind == HOLD_NONE)
			continue;
		if (hold_valid(d, ho)) {
			switch (ho->kind) {
			case HOLD_RESERVE:
			case HOLD_GPU_RESERVE:
				kvtd_blk_drop(d, ho->blk);
				d->m.reservations--;
				d->m.aborts_total++;
				break;
			case HOLD_GPU_LEASE:
				kvtd_gpu_unlease(d, ho->blk);
				lease_drop(d, ho->blk);
				break;
			case HOLD_LEASE:
				lease_drop(d, ho->blk);
				break;
			case HOLD_PIN:
				kvtd_blk_pin(d, ho->blk, false);
				d->m.pins--;
				break;
			}
		}
		hold_put(c, ho);
	}
	c->n_leases = c->n_reserves = c->n_pins = 0;
	/* Pool room of the reservations dropped above is free again at once. */
	kvtd_gpu_sweep(d);
}
