/* SPDX-License-Identifier: MIT */
/*
 * ops.c - the ring operations: a client's submission ring drained (client_drain), each
 * entry served (reserve, commit, abort, lease, release, lookup, delete, pin, unpin,
 * prefetch) and its completion posted, the service time of each noted for the metrics.
 * A get of a block on NVMe waits for its promotion; placement reports the promotion's end
 * on the readiness list (waiters.c), and kvtd_ready_drain() answers the waiting gets.
 *
 * Trust: nothing a client writes is believed.  Ring entries are copied out of shared memory
 * before they are looked at, and every handle is checked against the daemon's own tables.
 */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "holds.h"
#include "kvt_ring.h"
#include "networking.h"
#include "ops.h"

void internal_key(const struct kvtd *d, const struct client *c, uint64_t fp, uint64_t lo,
		  uint64_t hi, uint64_t *olo, uint64_t *ohi)
{
	/* The tenant (uid) and the daemon's salt enter every key: the same engine key of two
	 * tenants names two different blocks, and one tenant cannot aim at another's. */
	uint64_t buf[4] = {lo, hi, fp, c->uid};
	XXH128_hash_t h = XXH3_128bits_withSeed(buf, sizeof(buf), d->salt);

	*olo = h.low64;
	*ohi = h.high64;
}

static int layout_of(struct client *c, uint16_t id, struct layout_slot **out)
{
	if (id >= c->nlayouts)
		return -KVT_ENOLAYOUT;
	*out = &c->layouts[id];
	return 0;
}

static void op_reserve(struct kvtd *d, struct client *c, const struct kvt_sqe *s, struct kvt_cqe *q)
{
	struct layout_slot *l;
	uint64_t lo, hi, handle;
	uint32_t i;
	int64_t off;
	int ret;

	ret = layout_of(c, s->layout, &l);
	if (ret < 0)
		goto out;
	if (s->chain) {
		/* A record of the layout's host chain, of one whole block (chains code no
		 * partial block).  Another chain: the client must ask LAYOUT again. */
		if (!l->hchain || kvt_chain_id(l->hchain) != s->chain) {
			ret = -ESTALE;
			goto out;
		}
		if (s->raw_len != l->block_bytes || s->len < KVT_CHAIN_HDR_SIZE ||
		    s->len > kvt_chain_max_encoded_size(l->hchain, &d->geoms[l->geom].g)) {
			ret = -EINVAL;
			goto out;
		}
	} else if (!s->len || s->len > l->block_bytes) {
		ret = -EINVAL;
		goto out;
	}
	internal_key(d, c, l->fp, s->key_lo, s->key_hi, &lo, &hi);
	if (kvtd_index_find(&d->ix, lo, hi) != KVTD_NIL) {
		d->m.put_exists_total++;
		ret = -EEXIST;
		goto out;
	}
	off = kvtd_host_alloc(d, c->t, s->len);
	if (off < 0) {
		if (off == -ENOSPC)
			d->m.enospc_total++;
		ret = (int)off;
		goto out;
	}
	i = kvtd_blk_insert(d, lo, hi);
	if (i == KVTD_NIL) {
		kvtd_host_unalloc(d, c->t, (uint64_t)off, s->len);
		ret = -KVT_ELIMIT;
		goto out;
	}
	kvtd_blk_reserved(d, i, c->t, c->id, l->fp, s->len, off);
	kvtd_blk_stored_form(d, i, s->chain, s->raw_len);
	ret = hold_add(c, i, kvtd_blk(&d->ix, i)->gen, HOLD_RESERVE, &handle);
	if (ret < 0) {
		kvtd_blk_drop(d, i);
		goto out;
	}
	c->n_reserves++;
	d->m.reservations++;
	q->off = (uint64_t)off;
	q->handle = handle;
	ret = (int)s->len;
out:
	q->res = ret;
}

static void op_commit(struct kvtd *d, struct client *c, const struct kvt_sqe *s, struct kvt_cqe *q,
		      bool abort_it)
{
	struct hold *ho = hold_get(c, s->handle, HOLD_RESERVE);
	struct kvtd_blk *b;

	if (!ho || !hold_valid(d, ho)) {
		q->res = -EINVAL;
		return;
	}
	b = kvtd_blk(&d->ix, ho->blk);
	c->n_reserves--;
	d->m.reservations--;
	if (abort_it) {
		kvtd_blk_drop(d, ho->blk);
		d->m.aborts_total++;
	} else if (b->hchain && kvtd_host_check_record(d, ho->blk) < 0) {
		/* Not the record the reservation announced: never served. */
		kvtd_blk_drop(d, ho->blk);
		d->m.aborts_total++;
		hold_put(c, ho);
		q->res = -EBADMSG;
		return;
	} else {
		/* arg: first token's position + 1, 0 when the client did not say (codecs
		 * that undo RoPE then take 0) */
		kvtd_blk_commit_host(d, ho->blk,
				     s->arg && s->arg <= UINT32_MAX ? (uint32_t)(s->arg - 1) : 0);
		kvtd_remote_put(d, ho->blk); /* write-behind: other hosts see it soon */
		c->puts++;
		d->m.puts_total++;
		d->m.put_bytes_total += b->len;
		d->tier[KVTD_TIER_HOST].bytes_written += b->len;
	}
	hold_put(c, ho);
	q->res = 0;
}

static uint32_t find_ready(struct kvtd *d, struct client *c, const struct kvt_sqe *s, int *err)
{
	struct layout_slot *l;
	uint64_t lo, hi;
	uint32_t i;

	*err = layout_of(c, s->layout, &l);
	if (*err < 0)
		return KVTD_NIL;
	internal_key(d, c, l->fp, s->key_lo, s->key_hi, &lo, &hi);
	i = kvtd_index_find(&d->ix, lo, hi);
	if (i == KVTD_NIL || kvtd_blk(&d->ix, i)->state != KVTD_BLK_READY) {
		*err = -ENOENT;
		return KVTD_NIL;
	}
	return i;
}

/* Leases block i (on the host) to c and fills the completion. */
static void do_lease(struct kvtd *d, struct client *c, uint32_t i, struct kvt_cqe *q)
{
	struct kvtd_blk *b = kvtd_blk(&d->ix, i);
	uint64_t handle;
	int ret = hold_quota(d, c, i);

	if (!ret)
		ret = hold_add(c, i, b->gen, HOLD_LEASE, &handle);
	if (ret < 0) {
		q->res = ret;
		return;
	}
	kvtd_prefetch_used(d, i);
	lease_granted(d, c, i);
	d->tier[KVTD_TIER_HOST].bytes_read += b->len;
	q->off = b->off;
	q->handle = handle;
	q->flags = b->hchain; /* the client decodes a record of that chain */
	q->res = (int32_t)b->len;
}

void count_miss(struct kvtd *d, struct client *c)
{
	c->misses++;
	d->m.misses_total++;
	d->tier[KVTD_TIER_HOST].misses++;
	if (d->nvme)
		d->tier[KVTD_TIER_NVME].misses++;
}

/* Returns true when the completion is deferred (the block is coming up from NVMe). */
static bool op_lease(struct kvtd *d, struct client *c, const struct kvt_sqe *s, struct kvt_cqe *q)
{
	int ret;
	uint32_t i = find_ready(d, c, s, &ret);

	c->gets++;
	d->m.gets_total++;
	if (i == KVTD_NIL && ret == -ENOENT && kvtd_remote_on(d) && !d->nvme_recovering) {
		/* In no local tier at all: maybe another host stored it (remote_place.c).  Not
		 * while NVMe records are recovered: installing a block is a put, refused then. */
		struct layout_slot *l = &c->layouts[s->layout];
		uint64_t lo, hi;

		internal_key(d, c, l->fp, s->key_lo, s->key_hi, &lo, &hi);
		if (kvtd_index_find(&d->ix, lo, hi) == KVTD_NIL &&
		    kvtd_remote_fetch(d, c->id, s->user_data, c->t, lo, hi, l->fp,
				      l->block_bytes) == 1) {
			d->tier[KVTD_TIER_HOST].misses++; /* as a promotion from NVMe */
			return true;
		}
	}
	if (i == KVTD_NIL) {
		if (ret == -ENOENT)
			count_miss(d, c);
		q->res = ret;
		return false;
	}
	ret = hold_quota(d, c, i); /* before any promotion it would make for nothing */
	if (ret < 0) {
		q->res = ret;
		return false;
	}
	if (kvtd_blk(&d->ix, i)->on_host) {
		d->tier[KVTD_TIER_HOST].hits++;
	} else if (kvtd_gpu_has(d, i)) {
		/* Only in the GPU pool: a CPU reader needs a host copy first. */
		ret = kvtd_gpu_to_host(d, i);
		if (ret < 0) {
			if (ret == -ENOENT)
				count_miss(d, c);
			q->res = ret;
			return false;
		}
	} else {
		d->tier[KVTD_TIER_HOST].misses++;
		ret = kvtd_promote(d, c->id, s->user_data, i);
		if (ret == 1)
			return true;
		if (ret < 0) {
			if (ret == -ENOENT)
				count_miss(d, c);
			q->res = ret;
			return false;
		}
	}
	do_lease(d, c, i, q);
	return false;
}

static struct client *client_by_id(struct kvtd *d, uint32_t id)
{
	for (struct client *c = d->clients; c; c = c->next) {
		if (c->id == id)
			return c->dead ? NULL : c;
	}
	return NULL;
}

/* Posts one completion outside the drain loop; a client that does not reap loses it. */
static void post_cqe(struct kvtd *d, struct client *c, const struct kvt_cqe *q)
{
	uint32_t used = kvt_ring_pending(c->cq, c->cq_tail);

	if (used >= c->cq_entries) {
		d->m.protocol_errors_total++;
		return;
	}
	memcpy(&c->cqes[c->cq_tail & (c->cq_entries - 1)], q, sizeof(*q));
	c->cq_tail++;
	kvt_ring_publish(c->cq, c->cq_tail);
	if (kvt_ring_needs_wakeup(c->cq)) {
		uint64_t one = 1;
		ssize_t r = write(c->cq_efd, &one, sizeof(one));
		(void)r;
	}
}

/* Finishes a get that waited for a promotion (err = 0: lease the block now). */
static void kvtd_wake_lease(struct kvtd *d, uint32_t client_id, uint64_t user_data, uint32_t blk,
			    uint32_t gen, int err)
{
	struct client *c = client_by_id(d, client_id);
	struct kvtd_blk *b = blk < d->ix.used ? kvtd_blk(&d->ix, blk) : NULL;
	struct kvt_cqe q;

	if (!c)
		return; /* it went away while waiting */
	/* The list is drained after each event, so the block is as placement left it; should
	 * it have changed meanwhile, the get goes on as a new one would: gone is a miss, and a
	 * block evicted again (the host tier was full) is brought up again. */
	if (!err && (!b || b->gen != gen || b->state != KVTD_BLK_READY))
		err = -ENOENT;
	if (!err && !b->on_host) {
		err = kvtd_promote(d, client_id, user_data, blk);
		if (err == 1)
			return; /* waits again */
	}
	memset(&q, 0, sizeof(q));
	q.user_data = user_data;
	if (err < 0) {
		if (err == -ENOENT)
			count_miss(d, c);
		q.res = err;
	} else {
		do_lease(d, c, blk, &q);
	}
	post_cqe(d, c, &q);
}

/* Answers a lookup whose remote part ended: res keys found from the first, of n. */
static void lookup_done(struct kvtd *d, uint32_t client_id, uint64_t user_data, int res, uint32_t n)
{
	struct client *c = client_by_id(d, client_id);
	struct kvt_cqe q;

	d->m.lookup_hit_blocks_total += (uint64_t)res;
	d->m.lookup_miss_blocks_total += n - (uint32_t)res;
	if (!c)
		return;
	memset(&q, 0, sizeof(q));
	q.user_data = user_data;
	q.res = res;
	post_cqe(d, c, &q);
}

void kvtd_ready_drain(struct kvtd *d)
{
	struct waiter w;
	uint32_t client_id, n;
	uint64_t user_data;
	int res;

	while (kvtd_ready_pop(d, &w))
		kvtd_wake_lease(d, w.client_id, w.user_data, w.blk, w.gen, w.err);
	while (kvtd_remote_lookup_pop(d, &client_id, &user_data, &res, &n))
		lookup_done(d, client_id, user_data, res, n);
}

static void op_release(struct kvtd *d, struct client *c, const struct kvt_sqe *s, struct kvt_cqe *q)
{
	struct hold *ho = hold_get(c, s->handle, HOLD_LEASE);

	if (!ho || !hold_valid(d, ho)) {
		q->res = -EINVAL;
		return;
	}
	c->n_leases--;
	lease_drop(d, ho->blk);
	hold_put(c, ho);
	q->res = 0;
}

/*
 * The keys [k, n) of a lookup that the local tiers missed from k on go to the remote tier:
 * true when it answers later (kvtd_ready_drain).
 */
static bool lookup_remote(struct kvtd *d, struct client *c, const struct kvt_sqe *s,
			  const struct layout_slot *l, uint32_t k, uint32_t n)
{
	uint64_t *lohi;
	int ret;

	if (!kvtd_remote_on(d))
		return false;
	lohi = malloc((size_t)(n - k) * 16);
	if (!lohi)
		return false;
	for (uint32_t j = k; j < n; j++) {
		uint64_t key[2];

		memcpy(key, c->scratch + s->arg + (uint64_t)j * 16, 16);
		internal_key(d, c, l->fp, key[0], key[1], &lohi[2 * (j - k)],
			     &lohi[2 * (j - k) + 1]);
	}
	ret = kvtd_remote_lookup(d, c->id, s->user_data, k, n, lohi, n - k, l->fp);
	free(lohi);
	return ret == 1;
}

/* Returns true when the completion is deferred (the remote tier is asked). */
static bool op_lookup(struct kvtd *d, struct client *c, const struct kvt_sqe *s, struct kvt_cqe *q)
{
	struct layout_slot *l;
	uint64_t keys[2 * 64];
	uint32_t n = s->len, done = 0;
	int ret;

	ret = layout_of(c, s->layout, &l);
	if (ret < 0)
		goto out;
	if (n > KVT_LOOKUP_MAX || s->arg > KVT_SCRATCH_SIZE ||
	    (uint64_t)n * 16 > KVT_SCRATCH_SIZE - s->arg) {
		ret = -EINVAL;
		goto out;
	}
	c->lookups++;
	d->m.lookups_total++;
	d->m.lookup_keys_total += n;
	/* Copied out in chunks first: the client may change the scratch area meanwhile. */
	while (done < n) {
		uint32_t m = n - done < 64 ? n - done : 64;
		memcpy(keys, c->scratch + s->arg + (uint64_t)done * 16, (size_t)m * 16);
		for (uint32_t j = 0; j < m; j++) {
			uint64_t lo, hi;
			uint32_t i;

			internal_key(d, c, l->fp, keys[2 * j], keys[2 * j + 1], &lo, &hi);
			i = kvtd_index_find(&d->ix, lo, hi);
			if (i == KVTD_NIL || kvtd_blk(&d->ix, i)->state != KVTD_BLK_READY) {
				ret = (int)(done + j);
				if (lookup_remote(d, c, s, l, done + j, n))
					return true;
				goto out;
			}
		}
		done += m;
	}
	ret = (int)n;
out:
	if (ret >= 0) {
		d->m.lookup_hit_blocks_total += (uint64_t)ret;
		d->m.lookup_miss_blocks_total += n - (uint32_t)ret;
	}
	q->res = ret;
	return false;
}

static void op_delete(struct kvtd *d, struct client *c, const struct kvt_sqe *s, struct kvt_cqe *q)
{
	int ret;
	uint32_t i = find_ready(d, c, s, &ret);

	if ((ret == 0 || ret == -ENOENT) && kvtd_remote_on(d) &&
	    !(i == KVTD_NIL && d->nvme_recovering)) {
		/* The remote copy too, local or not (a block that left the local tiers may be
		 * there): no version of the key is served again (remote_place.c, the fence). */
		struct layout_slot *l = &c->layouts[s->layout];
		uint64_t lo, hi;

		internal_key(d, c, l->fp, s->key_lo, s->key_hi, &lo, &hi);
		kvtd_remote_delete(d, lo, hi, l->fp);
	}
	if (i == KVTD_NIL) {
		/* Not recovered yet, maybe: a record of it may still be found by the scan, and a
		 * fence kept in memory would die with the daemon.  Promise nothing: retry later,
		 * as puts (README, "Serving while recovering"). */
		q->res = ret == -ENOENT && d->nvme_recovering ? -EAGAIN : ret;
		return;
	}
	d->m.deletes_total++;
	kvtd_blk_delete(d, i);
	q->res = 0;
}

static void op_pin(struct kvtd *d, struct client *c, const struct kvt_sqe *s, struct kvt_cqe *q,
		   bool pin)
{
	uint64_t handle;
	int ret;
	uint32_t i = find_ready(d, c, s, &ret);
	struct kvtd_blk *b;

	if (i == KVTD_NIL) {
		q->res = ret;
		return;
	}
	b = kvtd_blk(&d->ix, i);
	if (pin) {
		ret = hold_quota(d, c, i);
		if (!ret)
			ret = hold_add(c, i, b->gen, HOLD_PIN, &handle);
		if (ret < 0) {
			q->res = ret;
			return;
		}
		kvtd_blk_pin(d, i, true);
		c->n_pins++;
		d->m.pins++;
	} else {
		struct hold *ho = NULL;

		for (uint32_t h = 0; h < c->nholds; h++) {
			if (c->holds[h].kind == HOLD_PIN && c->holds[h].blk == i &&
			    c->holds[h].blk_gen == b->gen) {
				ho = &c->holds[h];
				break;
			}
		}
		if (!ho) {
			q->res = -EINVAL;
			return;
		}
		hold_put(c, ho);
		kvtd_blk_pin(d, i, false);
		c->n_pins--;
		d->m.pins--;
	}
	q->res = 0;
}

/* Upper bounds of kvtier_request_duration_seconds' buckets, in ns (the last is +Inf). */
const uint64_t kvtd_lat_le_ns[KVTD_LAT_BUCKETS - 1] = {
    1000,   2500,    5000,    10000,	25000,	   50000,      100000,	      250000,
    500000, 1000000, 2500000, 10000000, 100000000, 1000000000, 10000000000ull};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000 + (uint64_t)ts.tv_nsec;
}

static void lat_note(struct kvtd *d, int op, uint64_t ns)
{
	int b = 0;

	while (b < KVTD_LAT_BUCKETS - 1 && ns > kvtd_lat_le_ns[b])
		b++;
	d->lat_bucket[op][b]++;
	d->lat_count[op]++;
	d->lat_sum_ns[op] += ns;
}

static bool handle_sqe_op(struct kvtd *d, struct client *c, const struct kvt_sqe *s,
			  struct kvt_cqe *q);

/*
 * Returns true when the completion will be posted later.  Times what operators ask about
 * (kvtier_request_duration_seconds): the daemon's service time of a request answered at
 * once; a get that waits for an NVMe read is not in it (kvtier_promotions_total counts it).
 */
static bool handle_sqe(struct kvtd *d, struct client *c, const struct kvt_sqe *s, struct kvt_cqe *q)
{
	int op = s->op == KVT_OP_RESERVE  ? KVTD_LAT_RESERVE
		 : s->op == KVT_OP_COMMIT ? KVTD_LAT_COMMIT
		 : s->op == KVT_OP_LEASE  ? KVTD_LAT_GET
		 : s->op == KVT_OP_LOOKUP ? KVTD_LAT_LOOKUP
					  : -1;
	uint64_t t0 = op >= 0 ? now_ns() : 0;
	bool later = handle_sqe_op(d, c, s, q);

	if (op >= 0 && !later)
		lat_note(d, op, now_ns() - t0);
	return later;
}

static bool handle_sqe_op(struct kvtd *d, struct client *c, const struct kvt_sqe *s,
			  struct kvt_cqe *q)
{
	d->m.ring_requests_total++;
	switch (s->op) {
	case KVT_OP_NOP:
		q->res = 0;
		break;
	case KVT_OP_RESERVE:
		op_reserve(d, c, s, q);
		break;
	case KVT_OP_COMMIT:
		op_commit(d, c, s, q, false);
		break;
	case KVT_OP_ABORT:
		op_commit(d, c, s, q, true);
		break;
	case KVT_OP_LEASE:
		return op_lease(d, c, s, q);
	case KVT_OP_RELEASE:
		op_release(d, c, s, q);
		break;
	case KVT_OP_LOOKUP:
		return op_lookup(d, c, s, q);
	case KVT_OP_DELETE:
		op_delete(d, c, s, q);
		break;
	case KVT_OP_PIN:
		op_pin(d, c, s, q, true);
		break;
	case KVT_OP_UNPIN:
		op_pin(d, c, s, q, false);
		break;
	case KVT_OP_PREFETCH: {
		int err;
		uint32_t i = find_ready(d, c, s, &err);
		if (i != KVTD_NIL)
			kvtd_prefetch_request(d, i, s->len, s->arg);
		else if (err == -ENOENT)
			d->m.prefetch_dropped_total++;
		q->res = i == KVTD_NIL ? err : 0;
		break;
	}
	default:
		d->m.protocol_errors_total++;
		q->res = -KVT_EPROTOCOL;
		break;
	}
	return false;
}

/* Processes up to DRAIN_BATCH entries of c's submission ring. Returns how many. */
int client_drain(struct kvtd *d, struct client *c)
{
	uint32_t tail, head = c->sq_head, smask = c->sq_entries - 1, cmask = c->cq_entries - 1;
	int done = 0;
	bool posted = false;

	if (!c->data || c->dead)
		return 0;
	tail = kvt_ring_tail(c->sq);
	if (tail - head > c->sq_entries) {
		d->m.protocol_errors_total++;
		client_kill(d, c, "submission ring indices out of range");
		return 0;
	}
	while (head != tail && done < DRAIN_BATCH) {
		struct kvt_sqe s;
		struct kvt_cqe q;
		uint32_t cq_used = kvt_ring_pending(c->cq, c->cq_tail);

		if (cq_used > c->cq_entries) {
			d->m.protocol_errors_total++;
			client_kill(d, c, "completion ring indices out of range");
			return done;
		}
		if (cq_used == c->cq_entries)
			break; /* the client is not reaping; wait for it */
		memcpy(&s, &c->sqes[head & smask], sizeof(s));
		head++;
		memset(&q, 0, sizeof(q));
		q.user_data = s.user_data;
		if (handle_sqe(d, c, &s, &q)) {
			done++;
			continue; /* kvtd_ready_drain() posts it */
		}
		if (!(s.flags & KVT_SQE_F_NO_CQE)) {
			memcpy(&c->cqes[c->cq_tail & cmask], &q, sizeof(q));
			c->cq_tail++;
			/* Each completion visible at once: a client reaping a batch copies
			 * this block while we work on the next entries. */
			kvt_ring_publish(c->cq, c->cq_tail);
			posted = true;
		}
		done++;
	}
	c->sq_head = head;
	kvt_ring_consume(c->sq, head);
	if (posted) {
		kvt_ring_publish(c->cq, c->cq_tail);
		if (kvt_ring_needs_wakeup(c->cq)) {
			uint64_t one = 1;
			ssize_t r = write(c->cq_efd, &one, sizeof(one));
			(void)r;
		}
	}
	return done;
}
