/* SPDX-License-Identifier: MIT */
/*
 * kvtierd's core.  One thread runs everything (Redis-style): an epoll loop over the
 * listening socket, every client's socket and submission eventfd, a timerfd tick and a
 * signalfd.  After any activity the loop keeps polling the rings for daemon.spin_us before
 * it sleeps again, which is what keeps a request's round trip in the microseconds.
 *
 * Trust: nothing a client writes is believed.  Ring entries are copied out of shared memory
 * before they are looked at, every handle is checked against the daemon's own tables, and
 * a client only ever maps its own rings and its own tenant's arena.
 */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifdef KVT_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "daemon.h"
#include "kvt_ring.h"
#include "server.h"

int kvtd_log_level = KVTD_LOG_INFO;
void (*kvtd_on_ready)(void);
int (*kvtd_reload)(struct kvtd_config *cfg);

void kvtd_log(int level, const char *fmt, ...)
{
	static const char *const names[] = {"error", "warning", "info", "debug"};
	static const int prio[] = {3, 4, 6, 7};
	va_list ap;

	if (level > kvtd_log_level)
		return;
	/* Under journald (JOURNAL_STREAM set) a <N> prefix carries the priority and the
	 * journal adds the time; elsewhere the line has its own (UTC, milliseconds). */
	if (getenv("JOURNAL_STREAM")) {
		fprintf(stderr, "<%d>", prio[level]);
	} else {
		struct timespec ts;
		struct tm tm;
		char when[32];

		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
		fprintf(stderr, "%s.%03ldZ kvtierd[%d]: %s: ", when, ts.tv_nsec / 1000000,
			(int)getpid(), names[level]);
	}
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

uint64_t kvtd_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* ---------------------------------------------------------------------------------------
 * Tenants: one arena (memfd) per uid, so a client can only ever touch its own tenant's data.
 */
struct tenant *kvtd_tenant_get(struct kvtd *d, uint32_t uid)
{
	struct tenant *t, **nt;
	int ret;

	for (uint32_t i = 0; i < d->ntenants; i++) {
		if (d->tenants[i]->uid == uid)
			return d->tenants[i];
	}
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->magic = TENANT_MAGIC;
	t->uid = uid;
	t->size = d->cfg.host_capacity & ~(uint64_t)(KVTD_PAGE_SIZE - 1);
	t->memfd = memfd_create("kvtier-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (t->memfd < 0)
		goto fail;
	if (ftruncate(t->memfd, (off_t)t->size) < 0)
		goto fail;
	/* The arena never changes size under a client's mapping. */
	fcntl(t->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
	t->base = mmap(NULL, t->size, PROT_READ | PROT_WRITE, MAP_SHARED, t->memfd, 0);
	if (t->base == MAP_FAILED) {
		t->base = NULL;
		goto fail;
	}
	nt = realloc(d->tenants, (d->ntenants + 1) * sizeof(*nt));
	if (!nt)
		goto fail;
	d->tenants = nt;
	ret = kvtd_host_attach(d, t);
	if (ret < 0) {
		errno = -ret;
		goto fail;
	}
	d->tenants[d->ntenants++] = t;
	d->m.tenants = d->ntenants;
	return t;
fail:
	kvtd_log(KVTD_LOG_ERR, "cannot create the arena of uid %u: %s", uid, strerror(errno));
	if (t->base)
		munmap(t->base, t->size);
	if (t->memfd >= 0)
		close(t->memfd);
	free(t);
	return NULL;
}

struct tenant *kvtd_tenant_of(struct kvtd *d, const struct kvtd_blk *b)
{
	struct tenant *t = d->tenants[b->tenant];

	/* Always on: a block pointing at the wrong arena would serve another tenant's data. */
	if (t->magic != TENANT_MAGIC)
		abort();
	return t;
}

static uint32_t tenant_index(struct kvtd *d, const struct tenant *t)
{
	for (uint32_t i = 0; i < d->ntenants; i++) {
		if (d->tenants[i] == t)
			return i;
	}
	abort();
}

/* ---------------------------------------------------------------------------------------
 * Holds: a client's reservations, leases and pins, released when it goes away.
 */
static int hold_add(struct client *c, uint32_t blk, uint32_t blk_gen, uint8_t kind,
		    uint64_t *handle)
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

static struct hold *hold_get(struct client *c, uint64_t handle, uint8_t kind)
{
	uint32_t h = (uint32_t)handle;

	if (h >= c->nholds || c->holds[h].kind != kind ||
	    c->holds[h].gen != (uint32_t)(handle >> 32))
		return NULL;
	return &c->holds[h];
}

static void hold_put(struct client *c, struct hold *ho)
{
	ho->kind = HOLD_NONE;
	ho->next_free = c->free_hold;
	c->free_hold = (uint32_t)(ho - c->holds);
}

static void lease_drop(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = kvtd_blk(&d->ix, i);

	b->leases--;
	d->m.leases--;
	if (b->state == KVTD_BLK_ZOMBIE && !b->leases && b->io == KVTD_IO_NONE)
		kvtd_blk_drop(d, i);
	else
		kvtd_blk_lru_update(d, i);
}

static bool hold_valid(struct kvtd *d, const struct hold *ho)
{
	return ho->blk < d->ix.used && kvtd_blk(&d->ix, ho->blk)->gen == ho->blk_gen;
}

/* ---------------------------------------------------------------------------------------
 * Requests from the rings.
 */
static void internal_key(const struct kvtd *d, const struct client *c, uint64_t fp, uint64_t lo,
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
	if (!s->len || s->len > l->block_bytes) {
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
	struct kvtd_blk *b = kvtd_blk(&d->ix, i);
	b->state = KVTD_BLK_RESERVED;
	b->tier = KVTD_TIER_HOST;
	b->len = s->len;
	b->off = (uint64_t)off;
	b->tenant = tenant_index(d, c->t);
	b->owner = c->id;
	b->fingerprint = l->fp;
	b->on_host = 1;
	kvtd_blk_geom(d, i);
	ret = hold_add(c, i, b->gen, HOLD_RESERVE, &handle);
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
	} else {
		b->atime = kvtd_now_ms();
		/* arg: first token's position + 1, 0 when the client did not say (codecs
		 * that undo RoPE then take 0) */
		b->first_token = s->arg && s->arg <= UINT32_MAX ? (uint32_t)(s->arg - 1) : 0;
		kvtd_blk_committed(d, ho->blk);
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

/* The accounting of a lease of block i granted to c, whichever tier serves it. */
static void lease_granted(struct kvtd *d, struct client *c, uint32_t i)
{
	struct kvtd_blk *b = kvtd_blk(&d->ix, i);

	b->leases++;
	b->hits++;
	b->atime = kvtd_now_ms();
	kvtd_blk_lru_update(d, i);
	c->n_leases++;
	c->hits++;
	d->m.leases++;
	d->m.hits_total++;
	d->m.get_bytes_total += b->len;
}

/*
 * host.tenant_hold_max: a tenant may pin or lease at most this share of the host tier, so
 * that one tenant holding everything cannot leave the others nothing to evict (ENOSPC).
 * 0 when c's tenant may hold block i too, or -KVT_ELIMIT.
 */
static int hold_quota(struct kvtd *d, struct client *c, uint32_t i)
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
	q->res = (int32_t)b->len;
}

static void count_miss(struct kvtd *d, struct client *c)
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

void kvtd_wake_lease(struct kvtd *d, uint32_t client_id, uint64_t user_data, uint32_t blk, int err)
{
	struct client *c = client_by_id(d, client_id);
	struct kvt_cqe q;

	if (!c)
		return; /* it went away while waiting */
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

static void op_lookup(struct kvtd *d, struct client *c, const struct kvt_sqe *s, struct kvt_cqe *q)
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
}

static void op_delete(struct kvtd *d, struct client *c, const struct kvt_sqe *s, struct kvt_cqe *q)
{
	int ret;
	uint32_t i = find_ready(d, c, s, &ret);

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
		b->pins++;
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
		b->pins--;
		c->n_pins--;
		d->m.pins--;
	}
	kvtd_blk_lru_update(d, i);
	q->res = 0;
}

/* Upper bounds of kvtier_request_duration_seconds' buckets, in ns (the last is +Inf). */
static const uint64_t lat_le_ns[KVTD_LAT_BUCKETS - 1] = {
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

	while (b < KVTD_LAT_BUCKETS - 1 && ns > lat_le_ns[b])
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
		op_lookup(d, c, s, q);
		break;
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

static void client_kill(struct kvtd *d, struct client *c, const char *why);

/* Processes up to DRAIN_BATCH entries of c's submission ring. Returns how many. */
static int client_drain(struct kvtd *d, struct client *c)
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
			continue; /* kvtd_wake_lease() posts it */
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

/* ---------------------------------------------------------------------------------------
 * Clients: handshake, control messages, death.
 */
static int sock_send(int fd, const void *buf, size_t len, const int *fds, int nfds)
{
	struct iovec iov = {(void *)buf, len};
	union {
		char buf[CMSG_SPACE(sizeof(int) * KVT_HELLO_NFDS)];
		struct cmsghdr align;
	} u;
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

	if (nfds) {
		struct cmsghdr *cm;

		memset(&u, 0, sizeof(u));
		mh.msg_control = u.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
	}
	/* Never block the loop on a client that does not read: drop it instead. */
	if (sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)len)
		return -errno ? -errno : -EIO;
	return 0;
}

static int send_result(int fd, int res)
{
	struct kvt_msg_result r;

	memset(&r, 0, sizeof(r));
	kvt_msg_init(&r.h, KVT_MSG_RESULT, sizeof(r));
	r.res = res;
	return sock_send(fd, &r, sizeof(r), NULL, 0);
}

static void admin_job_free(struct client *c);
static void accept_resume(struct kvtd *d);

static void client_free(struct kvtd *d, struct client *c)
{
	struct client **pp;

	for (pp = &d->clients; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	if (c->sock >= 0)
		close(c->sock);
	if (c->sq_efd >= 0)
		close(c->sq_efd);
	if (c->cq_efd >= 0)
		close(c->cq_efd);
	if (c->ring)
		munmap(c->ring, c->ring_size);
	for (uint32_t k = 0; k < c->nlayouts; k++)
		kvtd_geom_unref(d, c->layouts[k].geom);
	if (c->t)
		c->t->nclients--;
	if (c->t && c->device)
		kvtd_tenant_pinned(d, c->t, -1);
	admin_job_free(c);
	free(c->holds);
	c->magic = 0;
	if (c->refused)
		d->nrefused--;
	else
		d->nclients--;
	free(c);
	d->m.clients = d->nclients;
	/* A descriptor is free again: accept() may work now. */
	accept_resume(d);
}

/* Returns everything c held: unfinished puts vanish, leases and pins are dropped. */
static void client_release_all(struct kvtd *d, struct client *c)
{
	for (uint32_t h = 0; h < c->nholds; h++) {
		struct hold *ho = &c->holds[h];

		if (ho->kind == HOLD_NONE)
			continue;
		if (hold_valid(d, ho)) {
			struct kvtd_blk *b = kvtd_blk(&d->ix, ho->blk);
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
				b->pins--;
				d->m.pins--;
				kvtd_blk_lru_update(d, ho->blk);
				break;
			}
		}
		hold_put(c, ho);
	}
	c->n_leases = c->n_reserves = c->n_pins = 0;
	/* Pool room of the reservations dropped above is free again at once. */
	kvtd_gpu_sweep(d);
}

/*
 * A connection that ended holding something: client_deaths_total counts it when its process
 * died (or is dying) with it, not when the process closed it (kvt_close is the goodbye).
 * The process may still be on its way out now, so a pidfd is looked at on the next tick.
 */
static void death_check(struct kvtd *d, pid_t pid)
{
	int fd = pid > 0 ? (int)syscall(SYS_pidfd_open, pid, 0) : -1;

	if (fd < 0) {
		if (errno == ESRCH)
			d->m.client_deaths_total++; /* gone already */
		return; /* cannot tell (another pid namespace, a filter): not counted */
	}
	if (d->ndying == sizeof(d->dying) / sizeof(d->dying[0])) {
		close(fd);
		return;
	}
	d->dying[d->ndying++] = fd;
}

static void death_tick(struct kvtd *d)
{
	for (uint32_t k = 0; k < d->ndying; k++) {
		struct pollfd p = {d->dying[k], POLLIN, 0};

		if (poll(&p, 1, 0) == 1)
			d->m.client_deaths_total++; /* readable: the process has exited */
		close(d->dying[k]);
	}
	d->ndying = 0;
}

static void client_kill(struct kvtd *d, struct client *c, const char *why)
{
	bool held = c->n_leases || c->n_reserves || c->n_pins;

	if (c->dead)
		return;
	kvtd_log(why ? KVTD_LOG_WARN : KVTD_LOG_DEBUG, "client %u (pid %d, uid %u, %s) %s", c->id,
		 (int)c->pid, (unsigned)c->uid, c->name[0] ? c->name : "?",
		 why ? why : "disconnected");
	c->dead = true;
	epoll_ctl(d->ep, EPOLL_CTL_DEL, c->sock, NULL);
	if (c->sq_efd >= 0)
		epoll_ctl(d->ep, EPOLL_CTL_DEL, c->sq_efd, NULL);
	client_release_all(d, c);
	if (held && why)
		d->m.client_deaths_total++; /* ended by us: protocol errors */
	else if (held)
		death_check(d, c->pid);
	/* Freed at the end of the loop iteration: events for c may still be in flight. */
}

static bool is_admin(struct kvtd *d, int sock, uid_t uid, gid_t gid)
{
	gid_t groups[256];
	socklen_t len = sizeof(groups);

	if (uid == 0 || uid == geteuid())
		return true;
	if (!d->have_admin_gid)
		return false;
	if (gid == d->admin_gid)
		return true;
	if (getsockopt(sock, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0) {
		for (size_t i = 0; i < len / sizeof(gid_t); i++) {
			if (groups[i] == d->admin_gid)
				return true;
		}
	}
	return false;
}

static int setup_rings(struct kvtd *d, struct client *c, int fds[KVT_HELLO_NFDS])
{
	uint32_t e = d->cfg.ring_entries;
	struct kvt_shm_hdr *h;
	int ringfd = -1, ret;

	c->ring_size = kvt_shm_ring_bytes(e, 2 * e);
	ringfd = memfd_create("kvtier-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (ringfd < 0)
		return -errno;
	if (ftruncate(ringfd, c->ring_size) < 0) {
		ret = -errno;
		goto fail;
	}
	fcntl(ringfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
	c->ring = mmap(NULL, c->ring_size, PROT_READ | PROT_WRITE, MAP_SHARED, ringfd, 0);
	if (c->ring == MAP_FAILED) {
		c->ring = NULL;
		ret = -errno;
		goto fail;
	}
	h = (struct kvt_shm_hdr *)c->ring;
	h->magic = KVT_SHM_MAGIC;
	h->version = KVT_SHM_VERSION;
	h->compat = KVT_SHM_COMPAT;
	h->hdr_size = KVT_SHM_HDR_SIZE;
	h->features = KVT_SHM_F_NEED_WAKEUP;
	h->total_size = c->ring_size;
	h->sq_off = KVT_SHM_HDR_SIZE;
	h->sq_entries = e;
	h->sqe_size = sizeof(struct kvt_sqe);
	h->cq_off = h->sq_off + (uint32_t)sizeof(struct kvt_ring_ctl) + e * h->sqe_size;
	h->cq_entries = 2 * e;
	h->cqe_size = sizeof(struct kvt_cqe);
	h->scratch_off = h->cq_off + (uint32_t)sizeof(struct kvt_ring_ctl) + 2 * e * h->cqe_size;
	h->scratch_size = KVT_SCRATCH_SIZE;
	h->arena_size = c->t->size;
	h->epoch = d->epoch;
	/* The daemon's view comes from its own numbers, never from the header it shares. */
	c->sq = (struct kvt_ring_ctl *)(c->ring + KVT_SHM_HDR_SIZE);
	c->sqes = (struct kvt_sqe *)(c->ring + KVT_SHM_HDR_SIZE + sizeof(struct kvt_ring_ctl));
	c->cq = (struct kvt_ring_ctl *)((uint8_t *)c->sqes + e * sizeof(struct kvt_sqe));
	c->cqes = (struct kvt_cqe *)((uint8_t *)c->cq + sizeof(struct kvt_ring_ctl));
	c->scratch = (uint8_t *)c->cqes + 2 * e * sizeof(struct kvt_cqe);
	c->sq_entries = e;
	c->cq_entries = 2 * e;
	c->sq_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	c->cq_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (c->sq_efd < 0 || c->cq_efd < 0) {
		ret = -errno;
		goto fail;
	}
	fds[0] = ringfd;
	fds[1] = c->t->memfd;
	fds[2] = c->sq_efd;
	fds[3] = c->cq_efd;
	return 0;
fail:
	close(ringfd);
	return ret;
}

static void handle_hello(struct kvtd *d, struct client *c, const struct kvt_msg_hello *m)
{
	struct kvt_msg_hello_reply r;
	int fds[KVT_HELLO_NFDS] = {-1, -1, -1, -1}, ret = 0;

	memset(&r, 0, sizeof(r));
	kvt_msg_init(&r.h, KVT_MSG_HELLO_REPLY, sizeof(r));
	r.client_id = c->id;
	r.epoch = d->epoch;
	r.daemon_version = KVT_VERSION_NUMBER;
	memcpy(c->name, m->name, sizeof(c->name));
	c->name[sizeof(c->name) - 1] = 0;
	if (c->refused) {
		ret = c->refused; /* why, now that it listens */
		goto reply;
	}
	if (c->hello) {
		ret = -KVT_EPROTOCOL;
		goto reply;
	}
	/* Minor versions talk to each other; a different major does not. */
	if (m->lib_version / 10000 != KVT_VERSION_MAJOR) {
		ret = -KVT_EVERSION;
		goto reply;
	}
	c->hello = true;
	if (m->want_admin == KVT_HELLO_DEVICE) {
		/* GPU messages only: a tenant for the keys, no rings, no arena. */
		c->t = kvtd_tenant_get(d, c->uid);
		if (!c->t) {
			ret = -ENOMEM;
			goto reply;
		}
		c->t->nclients++;
		c->device = true;
		/* Device clients register their tenant's arena with CUDA (pinned pages) while
		 * they are connected: see struct tenant. */
		kvtd_tenant_pinned(d, c->t, +1);
		goto reply;
	}
	if (m->want_admin)
		goto reply;
	c->t = kvtd_tenant_get(d, c->uid);
	if (!c->t) {
		ret = -ENOMEM;
		goto reply;
	}
	c->t->nclients++;
	ret = setup_rings(d, c, fds);
	if (ret < 0)
		goto reply;
	c->data = true;
	c->sq_ev.kind = EV_SQ;
	c->sq_ev.p = c;
	struct epoll_event ee = {.events = EPOLLIN, .data.ptr = &c->sq_ev};
	epoll_ctl(d->ep, EPOLL_CTL_ADD, c->sq_efd, &ee);
	r.arena_size = c->t->size;
	r.ring_size = c->ring_size;
reply:
	r.res = ret;
	if (sock_send(c->sock, &r, sizeof(r), fds, ret < 0 || !c->data ? 0 : KVT_HELLO_NFDS) < 0)
		client_kill(d, c, "handshake reply failed");
	if (fds[0] >= 0)
		close(fds[0]); /* the mapping keeps the ring alive */
	if (ret == -KVT_EVERSION)
		client_kill(d, c, "speaks another protocol version");
	/* A refused connection is not closed here: a peer that sent its next request behind
	 * the HELLO (kvtierctl does) would get EPIPE instead of reading why.  It goes when the
	 * peer closes it, or at daemon.handshake_timeout_ms. */
}

static void handle_layout(struct kvtd *d, struct client *c, const struct kvt_msg_layout *m)
{
	uint64_t fp;
	int64_t geom;
	int ret;

	if (!c->data) {
		ret = -EINVAL;
		goto out;
	}
	ret = kvt_layout_check(&m->layout);
	if (ret < 0)
		goto out;
	fp = kvt_layout_fingerprint(&m->layout);
	for (uint32_t i = 0; i < c->nlayouts; i++) {
		if (c->layouts[i].fp == fp) {
			ret = (int)i;
			goto out;
		}
	}
	if (c->nlayouts == MAX_LAYOUTS) {
		ret = -KVT_ELIMIT;
		goto out;
	}
	geom = kvtd_geom_note(d, c->t, fp, &m->layout);
	if (geom < 0) {
		ret = (int)geom;
		if (ret == -KVT_ELIMIT)
			kvtd_log(
			    KVTD_LOG_WARN,
			    "uid %u: layout refused, index.max_layouts_per_tenant = %u reached",
			    (unsigned)c->uid, d->cfg.max_layouts_per_tenant);
		goto out;
	}
	kvtd_geom_ref(d, (uint32_t)geom);
	c->layouts[c->nlayouts].geom = (uint32_t)geom;
	c->layouts[c->nlayouts].fp = fp;
	c->layouts[c->nlayouts].block_bytes = (uint32_t)kvt_layout_block_bytes(&m->layout);
	ret = (int)c->nlayouts++;
out:
	if (send_result(c->sock, ret) < 0)
		client_kill(d, c, "reply failed");
}

static void handle_stats(struct kvtd *d, struct client *c)
{
	struct kvt_msg_stats r;

	memset(&r, 0, sizeof(r));
	kvt_msg_init(&r.h, KVT_MSG_STATS, sizeof(r));
	r.puts = c->puts;
	r.gets = c->gets;
	r.hits = c->hits;
	r.misses = c->misses;
	r.lookups = c->lookups;
	r.host_capacity_bytes = d->cfg.host_capacity;
	r.host_used_bytes = c->t ? c->t->used_bytes : 0;
	r.host_blocks = c->t ? c->t->blocks : 0;
	r.evictions = c->t ? c->t->evictions : 0;
	r.host_hits = d->tier[KVTD_TIER_HOST].hits;
	r.host_misses = d->tier[KVTD_TIER_HOST].misses;
	r.promotions = d->m.promotions_total;
	r.prefetch_useful = d->m.prefetch_useful_total;
	r.prefetch_late = d->m.prefetch_late_total;
	if (sock_send(c->sock, &r, sizeof(r), NULL, 0) < 0)
		client_kill(d, c, "reply failed");
}

/* ---------------------------------------------------------------------------------------
 * Admin commands (kvtierctl).  Output is rendered here, text or JSON, from the one metric
 * table, so kvtierctl stays a thin printer.
 */
struct sbuf {
	char *p;
	size_t len, cap;
	bool oom;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->oom)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->oom = true;
			return;
		}
		if (b->p && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		size_t ncap = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
		char *np = realloc(b->p, ncap);
		if (!np) {
			b->oom = true;
			return;
		}
		b->p = np;
		b->cap = ncap;
	}
}

static const char *tier_name[KVTD_NTIERS] = {"host", "nvme"};

static void fmt_bytes(char *out, size_t n, uint64_t v)
{
	static const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	double x = (double)v;
	int i = 0;

	while (x >= 1024 && i < 4) {
		x /= 1024;
		i++;
	}
	snprintf(out, n, i ? "%.1f %s" : "%.0f %s", x, u[i]);
}

/*
 * s (at most max bytes) as a JSON string: quotes, backslashes and control characters
 * escaped, bytes that are not UTF-8 replaced by U+FFFD.  Client names are whatever a client
 * sent: unescaped, one could forge fields of the report or break it.
 */
static void sb_json_str(struct sbuf *b, const char *s, size_t max)
{
	const unsigned char *p = (const unsigned char *)s, *e = p + strnlen(s, max);

	sb_printf(b, "\"");
	while (p < e) {
		unsigned c = *p;
		int n = c < 0x80	     ? 0
			: (c & 0xe0) == 0xc0 ? 1
			: (c & 0xf0) == 0xe0 ? 2
			: (c & 0xf8) == 0xf0 ? 3
					     : -1;
		bool ok = n >= 0 && e - p > n && !(n == 1 && c < 0xc2) && !(n == 3 && c > 0xf4);

		for (int k = 1; ok && k <= n; k++)
			ok = (p[k] & 0xc0) == 0x80;
		/* Overlong forms, surrogates and code points above U+10FFFF. */
		if (ok && n == 2)
			ok = !(c == 0xe0 && p[1] < 0xa0) && !(c == 0xed && p[1] > 0x9f);
		if (ok && n == 3)
			ok = !(c == 0xf0 && p[1] < 0x90) && !(c == 0xf4 && p[1] > 0x8f);
		if (!ok) {
			sb_printf(b, "\\ufffd");
			p++;
		} else if (n > 0) {
			sb_printf(b, "%.*s", n + 1, (const char *)p);
			p += n + 1;
		} else if (c == '"' || c == '\\') {
			sb_printf(b, "\\%c", c);
			p++;
		} else if (c < 0x20 || c == 0x7f) {
			sb_printf(b, "\\u%04x", c);
			p++;
		} else {
			sb_printf(b, "%c", c);
			p++;
		}
	}
	sb_printf(b, "\"");
}

/* s for a terminal: control characters (escape sequences among them) become '?'. */
static void safe_text(char *out, size_t n, const char *s, size_t max)
{
	size_t i = 0;

	for (; i + 1 < n && i < max && s[i]; i++) {
		unsigned char c = (unsigned char)s[i];

		out[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
	}
	out[i] = 0;
}

/* Blocks with a copy in the tier (a promoted block counts in both): a counter, not a scan,
 * so that polling metrics costs the clients nothing (kvtd_blk_account keeps it exact). */
static uint64_t tier_blocks(struct kvtd *d, int tier)
{
	return d->tier_nblocks[tier];
}

/* The GPU tier's row, when gpu.capacity asks for one (also when no GPU could serve it). */
static void render_gpu(struct kvtd *d, struct sbuf *b, bool json, bool detail)
{
	struct kvtd_gpu_stats g;
	const char *uuid;
	char c1[32], c2[32];

	if (!d->cfg.gpu_capacity)
		return;
	kvtd_gpu_stats(d, &g, &uuid);
	if (json) {
		sb_printf(b,
			  ",{\"name\":\"gpu\",\"capacity_bytes\":%" PRIu64
			  ",\"used_bytes\":%" PRIu64 ",\"blocks\":%" PRIu64 ",\"hits\":%" PRIu64
			  ",\"misses\":%" PRIu64 ",\"codec\":\"%s\",\"available\":%s",
			  g.capacity, g.used, g.blocks, g.hits, g.misses, d->cfg.gpu_codec,
			  kvtd_gpu_on(d) ? "true" : "false");
		if (detail)
			sb_printf(
			    b,
			    ",\"device\":\"%s\",\"epoch\":%" PRIu64
			    ",\"high_watermark\":%.3f,\"low_watermark\":%.3f"
			    ",\"put_bytes\":%" PRIu64 ",\"get_bytes\":%" PRIu64
			    ",\"demoted_bytes\":%" PRIu64 ",\"promoted_bytes\":%" PRIu64
			    ",\"demotions\":%" PRIu64 ",\"promotions\":%" PRIu64
			    ",\"evictions\":%" PRIu64 ",\"attaches\":%" PRIu64 ",\"error\":\"%s\"",
			    uuid, kvtd_gpu_on(d) ? d->epoch : 0, d->cfg.gpu_high, d->cfg.gpu_low,
			    g.put_bytes, g.get_bytes, g.demoted_bytes, g.promoted_bytes,
			    g.demotions, g.promotions, g.evictions, g.attaches,
			    kvtd_gpu_on(d) ? "" : strerror(-(d->gpu_err ? d->gpu_err : ENODEV)));
		sb_printf(b, "}");
		return;
	}
	if (!kvtd_gpu_on(d)) {
		fmt_bytes(c1, sizeof(c1), d->cfg.gpu_capacity);
		sb_printf(b, "%-6s %12s %12s %10s %10s %10s  %s\n", "gpu", "0 B", "0 B", "-", "-",
			  "-", d->cfg.gpu_codec);
		if (detail)
			sb_printf(b, "       unavailable: gpu.capacity = %s but no GPU (%s)\n", c1,
				  strerror(-(d->gpu_err ? d->gpu_err : ENODEV)));
		return;
	}
	fmt_bytes(c1, sizeof(c1), g.capacity);
	fmt_bytes(c2, sizeof(c2), g.used);
	sb_printf(b, "%-6s %12s %12s %10" PRIu64 " %10" PRIu64 " %10" PRIu64 "  %s\n", "gpu", c1,
		  c2, g.blocks, g.hits, g.misses, d->cfg.gpu_codec);
	if (!detail)
		return;
	sb_printf(b, "       device %s  epoch %" PRIu64 "  watermarks %.2f/%.2f\n", uuid, d->epoch,
		  d->cfg.gpu_low, d->cfg.gpu_high);
	fmt_bytes(c1, sizeof(c1), g.put_bytes);
	fmt_bytes(c2, sizeof(c2), g.get_bytes);
	sb_printf(b, "       clients put %s  got %s", c1, c2);
	fmt_bytes(c1, sizeof(c1), g.demoted_bytes);
	fmt_bytes(c2, sizeof(c2), g.promoted_bytes);
	sb_printf(b,
		  "  demoted %s (%" PRIu64 ")  promoted %s (%" PRIu64 ")  evictions %" PRIu64
		  "  attaches %" PRIu64 "\n",
		  c1, g.demotions, c2, g.promotions, g.evictions, g.attaches);
}

/* The counters of KVT_METRICS as JSON fields "name":value, comma-separated. */
static void render_metric_fields(struct kvtd *d, struct sbuf *b)
{
	int first = 1;

#define X(name, type, help)                                                                        \
	sb_printf(b, "%s\"%s\":%" PRIu64, first ? "" : ",", #name, d->m.name);                     \
	first = 0;
	KVT_METRICS(X)
#undef X
}

/* What the NVMe recovery dropped, by reason, and the bytes lost: JSON fields or a line. */
static void render_recovery(struct kvtd *d, struct sbuf *b, bool json, uint64_t lost)
{
	const struct {
		const char *json, *text;
		uint64_t n;
	} drop[] = {
	    {"corrupt", "corrupt", d->m.nvme_recovery_dropped_corrupt_total},
	    {"unreadable", "unreadable", d->m.nvme_recovery_dropped_unreadable_total},
	    {"cut", "cut off", d->m.nvme_recovery_dropped_cut_total},
	    {"stale", "stale", d->m.nvme_recovery_dropped_stale_total},
	    {"foreign", "foreign", d->m.nvme_recovery_dropped_foreign_total},
	    {"unplaceable", "without room", d->m.nvme_recovery_dropped_unplaceable_total},
	};

	if (json)
		sb_printf(b, ",\"recovering\":%s,\"recovery_dropped\":{",
			  d->nvme_recovering ? "true" : "false");
	else
		sb_printf(b, "       %s: dropped ", d->nvme_recovering ? "recovering" : "recovery");
	for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++) {
		if (json)
			sb_printf(b, "%s\"%s\":%" PRIu64, i ? "," : "", drop[i].json, drop[i].n);
		else
			sb_printf(b, "%s%" PRIu64 " %s", i ? ", " : "", drop[i].n, drop[i].text);
	}
	if (json)
		sb_printf(b, "},\"lost_bytes\":%" PRIu64, lost);
	else
		sb_printf(b, "; %" PRIu64 " bytes lost\n", lost);
}

static void render_tiers(struct kvtd *d, struct sbuf *b, bool json, bool detail)
{
	int ntiers = d->nvme ? 2 : 1;
	struct kvt_tier_stats ns;

	kvtd_nvme_stats(d, &ns);
	if (!json)
		sb_printf(b, "%-6s %12s %12s %10s %10s %10s  %s\n", "tier", "capacity", "used",
			  "blocks", "hits", "misses", "codec");
	for (int t = 0; t < ntiers; t++) {
		bool host = t == KVTD_TIER_HOST;
		uint64_t cap = host ? d->cfg.host_capacity : ns.capacity_bytes;
		uint64_t used = host ? d->host_used : ns.used_bytes;
		const char *codec = host ? d->cfg.host_codec : kvt_chain_name(d->nvme_chain);
		double hi = host ? d->cfg.host_high : d->cfg.nvme_high;
		double lo = host ? d->cfg.host_low : d->cfg.nvme_low;
		const struct tier_stats *ts = &d->tier[t];
		uint64_t rd = host ? ts->bytes_read : ns.bytes_read;
		uint64_t wr = host ? ts->bytes_written : ns.bytes_written;
		uint64_t ev = host ? d->m.evictions_total : d->m.nvme_evictions_total;

		if (json) {
			sb_printf(b,
				  "%s{\"name\":\"%s\",\"capacity_bytes\":%" PRIu64
				  ",\"used_bytes\":%" PRIu64 ",\"blocks\":%" PRIu64
				  ",\"hits\":%" PRIu64 ",\"misses\":%" PRIu64 ",\"codec\":\"%s\"",
				  t ? "," : "", tier_name[t], cap, used, tier_blocks(d, t),
				  ts->hits, ts->misses, codec);
			if (detail)
				sb_printf(b,
					  ",\"high_watermark\":%.3f,\"low_watermark\":%.3f,"
					  "\"bytes_read\":%" PRIu64 ",\"bytes_written\":%" PRIu64
					  ",\"evictions\":%" PRIu64,
					  hi, lo, rd, wr, ev);
			if (detail && host)
				sb_printf(b, ",\"tenants\":%u", d->ntenants);
			if (detail && !host)
				sb_printf(b,
					  ",\"files\":%u,\"paths\":\"%s\",\"io_uring\":%s,"
					  "\"direct\":%s,\"corrupt_records\":%" PRIu64
					  ",\"read_errors\":%" PRIu64 ",\"write_errors\":%" PRIu64
					  ",\"recovered\":%" PRIu64,
					  ns.files, d->cfg.nvme_paths,
					  ns.io_flags & KVT_TIER_ST_URING ? "true" : "false",
					  ns.io_flags & KVT_TIER_ST_DIRECT ? "true" : "false",
					  ns.corrupt_records + d->nvme_install_bad, ns.read_errors,
					  ns.write_errors, d->m.nvme_recovered_total);
			if (detail && !host)
				render_recovery(d, b, true, ns.lost_bytes);
			if (detail && !host && d->nvme_dict)
				sb_printf(b, ",\"codec_dict\":\"%016" PRIx64 "\"",
					  kvt_dict_id(d->nvme_dict));
			sb_printf(b, "}");
		} else {
			char c1[32], c2[32];

			fmt_bytes(c1, sizeof(c1), cap);
			fmt_bytes(c2, sizeof(c2), used);
			sb_printf(
			    b, "%-6s %12s %12s %10" PRIu64 " %10" PRIu64 " %10" PRIu64 "  %s\n",
			    tier_name[t], c1, c2, tier_blocks(d, t), ts->hits, ts->misses, codec);
			if (detail) {
				fmt_bytes(c1, sizeof(c1), rd);
				fmt_bytes(c2, sizeof(c2), wr);
				sb_printf(b,
					  "       watermarks %.2f/%.2f  read %s  written %s  "
					  "evictions %" PRIu64 "\n",
					  lo, hi, c1, c2, ev);
			}
			if (detail && !host)
				sb_printf(
				    b,
				    "       files %u (%s)  %s%s  corrupt records %" PRIu64
				    "  read errors %" PRIu64 "  write errors %" PRIu64
				    "  recovered %" PRIu64 "\n",
				    ns.files, d->cfg.nvme_paths,
				    ns.io_flags & KVT_TIER_ST_URING ? "io_uring" : "pread/pwrite",
				    ns.io_flags & KVT_TIER_ST_DIRECT ? " O_DIRECT" : " buffered",
				    ns.corrupt_records + d->nvme_install_bad, ns.read_errors,
				    ns.write_errors, d->m.nvme_recovered_total);
			if (detail && !host)
				render_recovery(d, b, false, ns.lost_bytes);
			if (detail && !host && d->nvme_dict)
				sb_printf(b, "       dictionary %016" PRIx64 " (%s)\n",
					  kvt_dict_id(d->nvme_dict), d->cfg.nvme_codec_dict);
		}
	}
	if (!d->nvme && !json && detail)
		sb_printf(b, "(no NVMe tier configured: [nvme] enabled = false)\n");
	render_gpu(d, b, json, detail);
}

static void render_status(struct kvtd *d, struct sbuf *b, bool json)
{
	uint64_t up = (kvtd_now_ms() - d->start_ms) / 1000;

	if (json) {
		sb_printf(b,
			  "{\"version\":\"%s\",\"uptime_s\":%" PRIu64
			  ",\"recovering\":%s,\"clients\":%u,\"tenants\":%u,"
			  "\"epoch\":%" PRIu64 ",\"tiers\":[",
			  kvt_version(), up, d->nvme_recovering ? "true" : "false", d->nclients,
			  d->ntenants, d->epoch);
		render_tiers(d, b, true, false);
		sb_printf(b, "],\"metrics\":{");
		render_metric_fields(d, b);
		sb_printf(b, "}}\n");
		return;
	}
	sb_printf(b, "kvtierd %s  uptime %" PRIu64 "s  clients %u  tenants %u%s\n", kvt_version(),
		  up, d->nclients, d->ntenants,
		  d->nvme_recovering ? "  recovering NVMe records (misses until done)" : "");
	render_tiers(d, b, false, false);
}

#ifndef KVTD_BUILD_CUDA
#define KVTD_BUILD_CUDA "no"
#endif
#ifndef KVTD_BUILD_SYSTEMD
#define KVTD_BUILD_SYSTEMD "no"
#endif
#ifndef KVTD_BUILD_TYPE
#define KVTD_BUILD_TYPE ""
#endif
static const char *const lat_op_name[KVTD_LAT_OPS] = {"put_reserve", "put_commit", "get", "lookup"};

/* Build facts, start time and the latency histograms (Prometheus text or JSON members). */
static void render_ops_metrics(struct kvtd *d, struct sbuf *b, bool json)
{
	if (json) {
		sb_printf(b,
			  ",\"build_info\":{\"version\":\"%s\",\"cuda\":\"%s\",\"systemd\":\"%s\","
			  "\"build_type\":\"%s\"},\"start_time_seconds\":%" PRIu64
			  ",\"request_duration_seconds\":{",
			  kvt_version(), KVTD_BUILD_CUDA, KVTD_BUILD_SYSTEMD, KVTD_BUILD_TYPE,
			  d->start_unix);
		for (int op = 0; op < KVTD_LAT_OPS; op++) {
			uint64_t cum = 0;

			sb_printf(b, "%s\"%s\":{\"count\":%" PRIu64 ",\"sum\":%.9f,\"buckets\":[",
				  op ? "," : "", lat_op_name[op], d->lat_count[op],
				  (double)d->lat_sum_ns[op] / 1e9);
			for (int k = 0; k < KVTD_LAT_BUCKETS; k++) {
				cum += d->lat_bucket[op][k];
				if (k < KVTD_LAT_BUCKETS - 1)
					sb_printf(b, "%s[%g,%" PRIu64 "]", k ? "," : "",
						  (double)lat_le_ns[k] / 1e9, cum);
				else
					sb_printf(b, ",[\"+Inf\",%" PRIu64 "]", cum);
			}
			sb_printf(b, "]}");
		}
		sb_printf(b, "}");
		return;
	}
	sb_printf(
	    b,
	    "# HELP kvtier_build_info Version and build options of kvtierd (always 1).\n"
	    "# TYPE kvtier_build_info gauge\n"
	    "kvtier_build_info{version=\"%s\",cuda=\"%s\",systemd=\"%s\",build_type=\"%s\"} 1\n"
	    "# HELP kvtier_start_time_seconds Start time of kvtierd since the Unix epoch.\n"
	    "# TYPE kvtier_start_time_seconds gauge\n"
	    "kvtier_start_time_seconds %" PRIu64 "\n"
	    "# HELP kvtier_request_duration_seconds Service time of requests answered at once "
	    "(a get waiting for an NVMe read is not in it).\n"
	    "# TYPE kvtier_request_duration_seconds histogram\n",
	    kvt_version(), KVTD_BUILD_CUDA, KVTD_BUILD_SYSTEMD, KVTD_BUILD_TYPE, d->start_unix);
	for (int op = 0; op < KVTD_LAT_OPS; op++) {
		uint64_t cum = 0;

		for (int k = 0; k < KVTD_LAT_BUCKETS; k++) {
			cum += d->lat_bucket[op][k];
			if (k < KVTD_LAT_BUCKETS - 1)
				sb_printf(
				    b,
				    "kvtier_request_duration_seconds_bucket{op=\"%s\",le=\"%g\"} "
				    "%" PRIu64 "\n",
				    lat_op_name[op], (double)lat_le_ns[k] / 1e9, cum);
			else
				sb_printf(
				    b,
				    "kvtier_request_duration_seconds_bucket{op=\"%s\",le=\"+Inf\"} "
				    "%" PRIu64 "\n",
				    lat_op_name[op], cum);
		}
		sb_printf(b,
			  "kvtier_request_duration_seconds_sum{op=\"%s\"} %.9f\n"
			  "kvtier_request_duration_seconds_count{op=\"%s\"} %" PRIu64 "\n",
			  lat_op_name[op], (double)d->lat_sum_ns[op] / 1e9, lat_op_name[op],
			  d->lat_count[op]);
	}
}

/* kvtierctl --json metrics: the counters, tiers, build facts and histograms as one object. */
static void render_metrics_json(struct kvtd *d, struct sbuf *b)
{
	sb_printf(b, "{\"metrics\":{");
	render_metric_fields(d, b);
	sb_printf(b, "},\"tiers\":[");
	render_tiers(d, b, true, true);
	sb_printf(b, "]");
	render_ops_metrics(d, b, true);
	sb_printf(b, "}\n");
}

static void render_metrics(struct kvtd *d, struct sbuf *b)
{
	int ntiers = d->nvme ? 2 : 1;
	struct kvt_tier_stats ns;
	struct kvtd_gpu_stats g;
	const char *uuid;

	kvtd_gpu_stats(d, &g, &uuid);

	kvtd_nvme_stats(d, &ns);
#define X(name, type, help)                                                                        \
	sb_printf(b, "# HELP kvtier_%s %s.\n# TYPE kvtier_%s %s\nkvtier_%s %" PRIu64 "\n", #name,  \
		  help, #name, #type, #name, d->m.name);
	KVT_METRICS(X)
#undef X
	render_ops_metrics(d, b, false);
	static const struct {
		const char *name, *type, *help;
	} tm[] = {
	    {"tier_capacity_bytes", "gauge", "Capacity of the tier in bytes"},
	    {"tier_used_bytes", "gauge", "Bytes in use in the tier"},
	    {"tier_blocks", "gauge", "Blocks stored in the tier"},
	    {"tier_hits_total", "counter", "Gets served by the tier"},
	    {"tier_misses_total", "counter", "Gets the tier could not serve"},
	    {"tier_read_bytes_total", "counter", "Bytes read from the tier"},
	    {"tier_written_bytes_total", "counter", "Bytes written to the tier"},
	};
	for (size_t k = 0; k < sizeof(tm) / sizeof(tm[0]); k++) {
		sb_printf(b, "# HELP kvtier_%s %s.\n# TYPE kvtier_%s %s\n", tm[k].name, tm[k].help,
			  tm[k].name, tm[k].type);
		for (int t = 0; t < ntiers; t++) {
			const struct tier_stats *ts = &d->tier[t];
			uint64_t v[] = {t ? ns.capacity_bytes : d->cfg.host_capacity,
					t ? ns.used_bytes : d->host_used,
					tier_blocks(d, t),
					ts->hits,
					ts->misses,
					t ? ns.bytes_read : ts->bytes_read,
					t ? ns.bytes_written : ts->bytes_written};
			sb_printf(b, "kvtier_%s{tier=\"%s\"} %" PRIu64 "\n", tm[k].name,
				  tier_name[t], v[k]);
		}
		if (d->cfg.gpu_capacity) {
			uint64_t v[] = {g.capacity, g.used,	 g.blocks,   g.hits,
					g.misses,   g.get_bytes, g.put_bytes};
			sb_printf(b, "kvtier_%s{tier=\"gpu\"} %" PRIu64 "\n", tm[k].name, v[k]);
		}
	}
	if (!d->cfg.gpu_capacity)
		return;
	static const struct {
		const char *name, *type, *help;
	} gm[] = {
	    {"gpu_available", "gauge", "1 when the GPU tier runs (gpu.capacity > 0 and a GPU)"},
	    {"gpu_epoch", "gauge",
	     "Epoch of the exported pool (clients re-attach when it changes)"},
	    {"gpu_demoted_bytes_total", "counter",
	     "Bytes moved from the GPU pool to the host tier"},
	    {"gpu_promoted_bytes_total", "counter",
	     "Bytes moved from the host tier to the GPU pool"},
	    {"gpu_demotions_total", "counter", "Blocks moved from the GPU pool to the host tier"},
	    {"gpu_promotions_total", "counter", "Blocks moved from the host tier to the GPU pool"},
	    {"gpu_evictions_total", "counter", "Blocks that left the GPU pool to make room"},
	    {"gpu_attaches_total", "counter", "Device connections that mapped the pool"},
	};
	uint64_t gv[] = {kvtd_gpu_on(d),  kvtd_gpu_on(d) ? d->epoch : 0,
			 g.demoted_bytes, g.promoted_bytes,
			 g.demotions,	  g.promotions,
			 g.evictions,	  g.attaches};
	for (size_t k = 0; k < sizeof(gm) / sizeof(gm[0]); k++)
		sb_printf(b, "# HELP kvtier_%s %s.\n# TYPE kvtier_%s %s\nkvtier_%s %" PRIu64 "\n",
			  gm[k].name, gm[k].help, gm[k].name, gm[k].type, gm[k].name, gv[k]);
}

/* The fastest tier holding the block; a block in neither host nor NVMe is in the pool. */
static const char *blk_tier_name(const struct kvtd_blk *k)
{
	return !k->on_host && !k->on_nvme ? "gpu" : tier_name[k->tier];
}

/*
 * `blocks` walks the whole index (pinned and leased blocks are outside the LRU lists), so it
 * runs as a job of ADMIN_SCAN_BATCH entries per event-loop turn: the rings of every client
 * are served in between, however large the index.  The reply goes when the walk is done.
 */
#define ADMIN_SCAN_BATCH 4096u

struct admin_job {
	struct sbuf b;
	uint32_t next; /* the index entry to look at next */
	uint64_t n, limit, now;
	bool json;
};

static void admin_send(struct kvtd *d, struct client *c, struct sbuf *b, int ret);

static void admin_job_free(struct client *c)
{
	if (!c->job)
		return;
	free(c->job->b.p);
	free(c->job);
	c->job = NULL;
}

/* Runs one batch of c's listing; sends the reply when it is done.  Returns entries seen. */
static int admin_job_step(struct kvtd *d, struct client *c)
{
	struct admin_job *j = c->job;
	struct sbuf *b = &j->b;
	uint32_t end =
	    d->ix.used - j->next > ADMIN_SCAN_BATCH ? j->next + ADMIN_SCAN_BATCH : d->ix.used;
	int seen = (int)(end - j->next);

	for (uint32_t i = j->next; i < end && j->n < j->limit; i++) {
		struct kvtd_blk *k = kvtd_blk(&d->ix, i);
		struct tenant *t;
		uint64_t now = j->now;
		bool json = j->json;
		uint64_t n = j->n;

		if (k->state != KVTD_BLK_READY)
			continue;
		t = kvtd_tenant_of(d, k);
		if (!c->admin && t->uid != c->uid)
			continue;
		if (json)
			sb_printf(b,
				  "%s{\"key\":\"%016" PRIx64 "%016" PRIx64 "\",\"tier\":\"%s\","
				  "\"bytes\":%u,\"age_s\":%" PRIu64 ",\"leases\":%u,\"pins\":%u,"
				  "\"hits\":%" PRIu64 ",\"uid\":%u}",
				  n ? "," : "", k->key_hi, k->key_lo, blk_tier_name(k), k->len,
				  (now - k->atime) / 1000, k->leases, k->pins, k->hits, t->uid);
		else
			sb_printf(b,
				  "%016" PRIx64 "%016" PRIx64 " %-5s %10u %8" PRIu64
				  " %6u %5u %8" PRIu64 " %6u\n",
				  k->key_hi, k->key_lo, blk_tier_name(k), k->len,
				  (now - k->atime) / 1000, k->leases, k->pins, k->hits, t->uid);
		j->n++;
	}
	j->next = end;
	if (j->next < d->ix.used && j->n < j->limit)
		return seen ? seen : 1;
	if (j->json)
		sb_printf(b, "]\n");
	c->job = NULL;
	admin_send(d, c, b, 0);
	free(b->p);
	free(j);
	if (!c->dead) {
		struct epoll_event ee = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = &c->sock_ev};
		epoll_ctl(d->ep, EPOLL_CTL_MOD, c->sock, &ee);
	}
	return seen ? seen : 1;
}

/* Starts c's `blocks` listing (first batch now).  False when out of memory. */
static bool render_blocks(struct kvtd *d, struct client *c, bool json, uint64_t limit)
{
	struct admin_job *j = calloc(1, sizeof(*j));
	struct epoll_event ee = {.events = EPOLLRDHUP, .data.ptr = &c->sock_ev};

	if (!j)
		return false;
	/* 0: the default; UINT64_MAX (kvtierctl --limit 0): every block. */
	j->limit = limit ? limit : 100;
	j->json = json;
	j->now = kvtd_now_ms();
	if (json)
		sb_printf(&j->b, "[");
	else
		sb_printf(&j->b, "%-32s %-5s %10s %8s %6s %5s %8s %6s\n", "key", "tier", "bytes",
			  "age_s", "leases", "pins", "hits", "uid");
	/* Its next request waits for this reply: no reading from it meanwhile. */
	epoll_ctl(d->ep, EPOLL_CTL_MOD, c->sock, &ee);
	c->job = j;
	admin_job_step(d, c);
	return true;
}

static void render_clients(struct kvtd *d, struct client *self, struct sbuf *b, bool json)
{
	uint64_t now = kvtd_now_ms();
	int n = 0;

	if (json)
		sb_printf(b, "[");
	else
		sb_printf(b, "%6s %8s %6s %-20s %7s %7s %5s %10s %10s %8s\n", "id", "pid", "uid",
			  "name", "leases", "reserv", "pins", "puts", "gets", "age_s");
	for (struct client *c = d->clients; c; c = c->next) {
		if (c->dead || c->refused || (!self->admin && c->uid != self->uid))
			continue;
		if (json) {
			sb_printf(b, "%s{\"id\":%u,\"pid\":%d,\"uid\":%u,\"name\":", n ? "," : "",
				  c->id, (int)c->pid, (unsigned)c->uid);
			sb_json_str(b, c->name, sizeof(c->name));
			sb_printf(b,
				  ",\"admin\":%s,"
				  "\"leases\":%u,\"reservations\":%u,\"pins\":%u,\"puts\":%" PRIu64
				  ",\"gets\":%" PRIu64 ",\"hits\":%" PRIu64 ",\"age_s\":%" PRIu64
				  "}",
				  c->data ? "false" : "true", c->n_leases, c->n_reserves, c->n_pins,
				  c->puts, c->gets, c->hits, (now - c->connected_ms) / 1000);
		} else {
			char name[sizeof(c->name) + 1];

			safe_text(name, sizeof(name), c->name, sizeof(c->name));
			sb_printf(b,
				  "%6u %8d %6u %-20.20s %7u %7u %5u %10" PRIu64 " %10" PRIu64
				  " %8" PRIu64 "\n",
				  c->id, (int)c->pid, (unsigned)c->uid, name[0] ? name : "-",
				  c->n_leases, c->n_reserves, c->n_pins, c->puts, c->gets,
				  (now - c->connected_ms) / 1000);
		}
		n++;
	}
	if (json)
		sb_printf(b, "]\n");
}

/* The running configuration (kvtierctl config); the tenant salt is a secret, never shown. */
static void render_config(struct kvtd *d, struct sbuf *b, bool json)
{
	const char *sec = "", *section, *name;
	char val[1100];

	sb_printf(b, json ? "{" : "# running configuration of kvtierd %s\n", kvt_version());
	for (size_t i = 0; i < kvtd_config_nkeys(); i++) {
		bool secret;

		kvtd_config_value(&d->cfg, i, &section, &name, val, sizeof(val));
		secret = !strcmp(section, "daemon") && !strcmp(name, "tenant_salt") && val[0];
		if (json) {
			sb_printf(b, "%s\"%s.%s\":", i ? "," : "", section, name);
			sb_json_str(b, secret ? "(set, not shown)" : val, sizeof(val));
			continue;
		}
		if (strcmp(sec, section)) {
			sb_printf(b, "%s[%s]\n", i ? "\n" : "", section);
			sec = section;
		}
		if (secret)
			sb_printf(b, "# %s = (set, not shown)\n", name);
		else
			sb_printf(b, "%s = %s\n", name, val);
	}
	sb_printf(b, json ? "}\n" : "");
}

static int admin_evict(struct kvtd *d, struct sbuf *b, bool json, uint64_t bytes)
{
	uint64_t before = d->m.evicted_bytes_total, nb = d->m.evictions_total;

	while (!bytes || d->m.evicted_bytes_total - before < bytes) {
		if (kvtd_evict_host_one(d, NULL) < 0)
			break;
	}
	nb = d->m.evictions_total - nb;
	if (json)
		sb_printf(b, "{\"evicted_blocks\":%" PRIu64 ",\"evicted_bytes\":%" PRIu64 "}\n", nb,
			  d->m.evicted_bytes_total - before);
	else
		sb_printf(b, "evicted %" PRIu64 " blocks, %" PRIu64 " bytes\n", nb,
			  d->m.evicted_bytes_total - before);
	return 0;
}

/*
 * daemon.user_admin_rate: a user other than root or admin_group may send this many admin
 * commands a second, over all of its connections (a bucket of as many per uid, refilled
 * continuously), so that one user polling status or metrics, e.g. kvtierctl in a loop, cannot
 * take the event loop from the other clients.  Buckets live in a small table; when it is
 * full, the one used least recently is given to the new uid.  true when c may run one more.
 */
static bool admin_budget(struct kvtd *d, struct client *c)
{
	double rate = d->cfg.user_admin_rate;
	uint64_t now = kvtd_now_ms();
	struct kvtd_admin_bucket *bk = NULL, *old = &d->admin_rate[0];

	if (c->admin || rate <= 0)
		return true;
	for (size_t i = 0; i < KVTD_ADMIN_BUCKETS && !bk; i++) {
		struct kvtd_admin_bucket *e = &d->admin_rate[i];

		if (e->ms && e->uid == c->uid)
			bk = e;
		else if (e->ms < old->ms)
			old = e;
	}
	if (!bk) {
		bk = old;
		bk->uid = c->uid;
		bk->tokens = rate;
	} else {
		bk->tokens += (double)(now - bk->ms) * rate / 1000.0;
		if (bk->tokens > rate)
			bk->tokens = rate;
	}
	bk->ms = now ? now : 1;
	if (bk->tokens < 1.0)
		return false;
	bk->tokens -= 1.0;
	return true;
}

static void handle_admin(struct kvtd *d, struct client *c, const struct kvt_msg_admin *m)
{
	struct sbuf b = {0};
	bool json = m->aflags & KVT_ADMIN_F_JSON;
	int ret = 0;

	if (!admin_budget(d, c)) {
		d->m.admin_refused_total++;
		sb_printf(&b,
			  "too many admin commands: users other than root and group '%s' may send "
			  "%u a second (daemon.user_admin_rate)\n",
			  d->cfg.admin_group, d->cfg.user_admin_rate);
		admin_send(d, c, &b, -EAGAIN);
		free(b.p);
		/* Its next message waits for the tick (admin_unthrottle): a user that keeps
		 * asking costs the loop one message a tick, not one per turn. */
		if (!c->dead && !c->job) {
			struct epoll_event ee = {.events = EPOLLRDHUP, .data.ptr = &c->sock_ev};

			if (epoll_ctl(d->ep, EPOLL_CTL_MOD, c->sock, &ee) == 0)
				c->throttled = true;
		}
		return;
	}
	switch (m->cmd) {
	case KVT_ADMIN_STATUS:
		render_status(d, &b, json);
		break;
	case KVT_ADMIN_TIERS:
		if (json)
			sb_printf(&b, "[");
		render_tiers(d, &b, json, true);
		if (json)
			sb_printf(&b, "]\n");
		break;
	case KVT_ADMIN_BLOCKS:
		if (render_blocks(d, c, json, m->arg))
			return; /* replies when its walk is done */
		b.oom = true;
		break;
	case KVT_ADMIN_CLIENTS:
		render_clients(d, c, &b, json);
		break;
	case KVT_ADMIN_METRICS:
		if (json)
			render_metrics_json(d, &b);
		else
			render_metrics(d, &b);
		break;
	case KVT_ADMIN_CONFIG:
		render_config(d, &b, json);
		break;
	case KVT_ADMIN_EVICT:
	case KVT_ADMIN_FLUSH:
		if (!c->admin) {
			ret = -EPERM;
			sb_printf(&b, "permission denied: %s needs root or group '%s'\n",
				  m->cmd == KVT_ADMIN_EVICT ? "evict" : "writeback",
				  d->cfg.admin_group);
			break;
		}
		if (m->cmd == KVT_ADMIN_EVICT) {
			ret = admin_evict(d, &b, json, m->arg);
		} else {
			int n = kvtd_flush(d);
			/* "flushed_blocks" stays for scripts written before writeback. */
			if (n < 0 && json)
				sb_printf(&b, "{\"written_back_blocks\":0,\"flushed_blocks\":0,"
					      "\"note\":\"no NVMe tier configured\"}\n");
			else if (n < 0)
				sb_printf(&b,
					  "nothing to write back: no NVMe tier is configured\n");
			else if (json)
				sb_printf(&b,
					  "{\"written_back_blocks\":%d,\"flushed_blocks\":%d}\n", n,
					  n);
			else
				sb_printf(&b,
					  "queued %d blocks for writing to NVMe (copies; the host "
					  "tier keeps them)\n",
					  n);
		}
		break;
	default:
		ret = -EINVAL;
		d->m.protocol_errors_total++;
		sb_printf(&b, "unknown admin command %u\n", m->cmd);
		break;
	}
	admin_send(d, c, &b, ret);
	free(b.p);
}

/* Sends an admin reply, split into packets; the last one has no MORE flag. */
static void admin_send(struct kvtd *d, struct client *c, struct sbuf *sb, int ret)
{
	struct sbuf b = *sb;
	size_t off = 0;

	if (b.oom) {
		ret = -ENOMEM;
		b.len = 0;
	}
	do {
		size_t n = b.len - off < ADMIN_CHUNK ? b.len - off : ADMIN_CHUNK;
		size_t plen = sizeof(struct kvt_msg_result) + n;
		struct kvt_msg_result *r = (struct kvt_msg_result *)d->msgbuf;

		memset(r, 0, sizeof(*r));
		kvt_msg_init(&r->h, KVT_MSG_RESULT, (uint32_t)plen);
		r->res = ret;
		if (off + n < b.len)
			r->h.flags = KVT_MSG_F_MORE;
		if (n)
			memcpy(r + 1, b.p + off, n);
		if (sock_send(c->sock, r, plen, NULL, 0) < 0) {
			client_kill(d, c, "admin reply failed");
			break;
		}
		off += n;
	} while (off < b.len);
}

/* ---------------------------------------------------------------------------------------
 * The GPU tier's messages (PROTOCOL.md "GPU tier"), on a KVT_HELLO_DEVICE connection.
 */
static void handle_gpu_attach(struct kvtd *d, struct client *c)
{
	struct kvt_msg_gpu_attach_reply r;

	memset(&r, 0, sizeof(r));
	kvt_msg_init(&r.h, KVT_MSG_GPU_ATTACH_REPLY, sizeof(r));
	r.res = c->device ? kvtd_gpu_attach_reply(d, &r) : -EINVAL;
	if (sock_send(c->sock, &r, sizeof(r), NULL, 0) < 0)
		client_kill(d, c, "reply failed");
}

static void gpu_reserve(struct kvtd *d, struct client *c, uint64_t fp,
			const struct kvt_msg_gpu_op *m, const struct kvt_gpu_op_req *q,
			struct kvt_gpu_op_res *r)
{
	uint64_t lo, hi, handle;
	struct kvtd_blk *b;
	int64_t off;
	uint32_t i;
	int ret;

	internal_key(d, c, fp, q->key_lo, q->key_hi, &lo, &hi);
	if (d->nvme_recovering) {
		r->res = -EAGAIN; /* as kvtd_host_alloc(): no puts until NVMe is recovered */
		return;
	}
	if (kvtd_index_find(&d->ix, lo, hi) != KVTD_NIL) {
		d->m.put_exists_total++;
		r->res = -EEXIST;
		return;
	}
	i = kvtd_blk_insert(d, lo, hi);
	if (i == KVTD_NIL) {
		r->res = -KVT_ELIMIT;
		return;
	}
	b = kvtd_blk(&d->ix, i);
	b->state = KVTD_BLK_RESERVED;
	b->tier = KVTD_TIER_HOST;
	b->len = m->len;
	b->tenant = tenant_index(d, c->t);
	b->owner = c->id;
	b->fingerprint = fp;
	b->on_host = 0;
	kvtd_blk_geom(d, i);
	off = kvtd_gpu_reserve(d, i, m->len, &m->layout, m->tile_tokens, &r->flags);
	if (off < 0) {
		if (off == -ENOSPC)
			d->m.enospc_total++;
		kvtd_blk_drop(d, i);
		r->res = (int32_t)off;
		return;
	}
	b = kvtd_blk(&d->ix, i);
	ret = hold_add(c, i, b->gen, HOLD_GPU_RESERVE, &handle);
	if (ret < 0) {
		kvtd_blk_drop(d, i);
		kvtd_gpu_has(d, i); /* frees the stale pool entry */
		r->res = ret;
		return;
	}
	c->n_reserves++;
	d->m.reservations++;
	r->off = (uint64_t)off;
	r->handle = handle;
	r->res = (int32_t)m->len;
}

static void gpu_commit(struct kvtd *d, struct client *c, const struct kvt_gpu_op_req *q,
		       struct kvt_gpu_op_res *r, bool abort_it)
{
	struct hold *ho = hold_get(c, q->handle, HOLD_GPU_RESERVE);
	struct kvtd_blk *b;
	uint32_t i;

	if (!ho || !hold_valid(d, ho)) {
		r->res = -EINVAL;
		return;
	}
	i = ho->blk;
	b = kvtd_blk(&d->ix, i);
	c->n_reserves--;
	d->m.reservations--;
	hold_put(c, ho);
	if (abort_it) {
		kvtd_blk_drop(d, i);
		kvtd_gpu_has(d, i);
		d->m.aborts_total++;
	} else {
		b->state = KVTD_BLK_READY;
		b->atime = kvtd_now_ms();
		kvtd_tenant_of(d, b)->blocks++;
		kvtd_gpu_commit(d, i);
		kvtd_blk_lru_update(d, i);
		kvtd_nvme_settle_blk(d, i); /* as kvtd_blk_committed() */
		c->puts++;
		d->m.puts_total++;
		d->m.put_bytes_total += b->len;
	}
	r->res = 0;
}

static void gpu_lease(struct kvtd *d, struct client *c, uint64_t fp, const struct kvt_gpu_op_req *q,
		      struct kvt_gpu_op_res *r)
{
	uint64_t lo, hi, handle;
	struct kvtd_blk *b;
	int64_t off;
	uint32_t i;
	int ret;

	c->gets++;
	d->m.gets_total++;
	internal_key(d, c, fp, q->key_lo, q->key_hi, &lo, &hi);
	i = kvtd_index_find(&d->ix, lo, hi);
	if (i == KVTD_NIL || kvtd_blk(&d->ix, i)->state != KVTD_BLK_READY) {
		count_miss(d, c);
		r->res = -ENOENT;
		return;
	}
	b = kvtd_blk(&d->ix, i);
	ret = hold_quota(d, c, i);
	if (ret < 0) {
		r->res = ret;
		return;
	}
	off = kvtd_gpu_lease(d, i, &r->flags);
	if (off < 0) {
		/* Stored, but not in the pool: the client reads it through the host tier. */
		r->res = (int32_t)off;
		return;
	}
	ret = hold_add(c, i, b->gen, HOLD_GPU_LEASE, &handle);
	if (ret < 0) {
		kvtd_gpu_unlease(d, i);
		r->res = ret;
		return;
	}
	lease_granted(d, c, i);
	r->off = (uint64_t)off;
	r->handle = handle;
	r->res = (int32_t)b->len;
}

static void gpu_release(struct kvtd *d, struct client *c, const struct kvt_gpu_op_req *q,
			struct kvt_gpu_op_res *r)
{
	struct hold *ho = hold_get(c, q->handle, HOLD_GPU_LEASE);

	if (!ho || !hold_valid(d, ho)) {
		r->res = -EINVAL;
		return;
	}
	c->n_leases--;
	kvtd_gpu_unlease(d, ho->blk);
	lease_drop(d, ho->blk);
	hold_put(c, ho);
	r->res = 0;
}

static void handle_gpu_op(struct kvtd *d, struct client *c, const struct kvt_msg_gpu_op *m,
			  size_t n)
{
	/* The reply is built behind the request: both fit in msgbuf. */
	struct kvt_msg_gpu_op_reply *r = (struct kvt_msg_gpu_op_reply *)(d->msgbuf + KVT_MSG_MAX);
	struct kvt_gpu_op_res *res = (struct kvt_gpu_op_res *)(r + 1);
	const struct kvt_gpu_op_req *req = (const struct kvt_gpu_op_req *)(m + 1);
	size_t rlen = sizeof(*r);
	uint64_t fp = 0, block_bytes = 0;
	int64_t geom = -1;
	int ret = 0;

	_Static_assert(sizeof(struct kvt_msg_gpu_op_reply) +
			       KVT_GPU_OP_BATCH * sizeof(struct kvt_gpu_op_res) <=
			   sizeof(struct kvt_msg_result) + ADMIN_CHUNK,
		       "a GPU_OP reply fits behind the request");
	memset(r, 0, sizeof(*r));
	if (!c->device || m->op == 0 || m->op >= KVT_GPU_OP_MAX || !m->n ||
	    m->n > KVT_GPU_OP_BATCH ||
	    n != sizeof(*m) + (size_t)m->n * sizeof(struct kvt_gpu_op_req)) {
		d->m.protocol_errors_total++;
		ret = -KVT_EPROTOCOL;
		goto reply;
	}
	if (!kvtd_gpu_on(d)) {
		ret = d->gpu_err ? d->gpu_err : -ENODEV;
		goto reply;
	}
	if (m->op == KVT_GPU_OP_RESERVE || m->op == KVT_GPU_OP_LEASE) {
		ret = kvt_layout_check(&m->layout);
		if (ret < 0)
			goto reply;
		fp = kvt_layout_fingerprint(&m->layout);
		block_bytes = kvt_layout_block_bytes(&m->layout);
		if (m->op == KVT_GPU_OP_RESERVE && (!m->len || m->len > block_bytes)) {
			ret = -EINVAL;
			goto reply;
		}
		geom = kvtd_geom_note(d, c->t, fp, &m->layout);
		if (geom >= 0)
			kvtd_geom_ref(d,
				      (uint32_t)geom); /* held for the batch; blocks take theirs */
		else if (geom == -KVT_ELIMIT && m->op == KVT_GPU_OP_RESERVE) {
			ret = (int)geom;
			goto reply;
		}
	}
	for (uint32_t k = 0; k < m->n; k++) {
		struct kvt_gpu_op_req q;

		memcpy(&q, &req[k], sizeof(q));
		memset(&res[k], 0, sizeof(res[k]));
		d->m.ring_requests_total++;
		switch (m->op) {
		case KVT_GPU_OP_RESERVE:
			gpu_reserve(d, c, fp, m, &q, &res[k]);
			break;
		case KVT_GPU_OP_COMMIT:
		case KVT_GPU_OP_ABORT:
			gpu_commit(d, c, &q, &res[k], m->op == KVT_GPU_OP_ABORT);
			break;
		case KVT_GPU_OP_LEASE:
			gpu_lease(d, c, fp, &q, &res[k]);
			break;
		case KVT_GPU_OP_RELEASE:
			gpu_release(d, c, &q, &res[k]);
			break;
		}
	}
	r->n = m->n;
	rlen += (size_t)m->n * sizeof(struct kvt_gpu_op_res);
	if (geom >= 0)
		kvtd_geom_unref(d, (uint32_t)geom);
reply:
	kvt_msg_init(&r->h, KVT_MSG_GPU_OP_REPLY, (uint32_t)rlen);
	r->res = ret;
	if (sock_send(c->sock, r, rlen, NULL, 0) < 0)
		client_kill(d, c, "reply failed");
}

static void client_sock_event(struct kvtd *d, struct client *c, uint32_t events)
{
	if (c->job) {
		/* A listing is under way: its next request waits; a hang-up ends it. */
		if (events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP))
			client_kill(d, c, NULL);
		return;
	}
	for (int round = 0; round < 16 && !c->dead; round++) {
		struct iovec iov = {d->msgbuf, KVT_MSG_MAX};
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
		ssize_t n = recvmsg(c->sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		struct kvt_msg_hdr h;
		int ret;

		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			break;
		if (n <= 0) {
			client_kill(d, c, NULL);
			return;
		}
		if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
			d->m.protocol_errors_total++;
			send_result(c->sock, -EMSGSIZE);
			continue;
		}
		ret = kvt_msg_check(d->msgbuf, (size_t)n);
		if (ret < 0) {
			d->m.protocol_errors_total++;
			send_result(c->sock, ret);
			if (ret == -KVT_EVERSION)
				client_kill(d, c, "sent a message of another protocol version");
			continue;
		}
		memcpy(&h, d->msgbuf, sizeof(h));
		if (!c->hello && h.type != KVT_MSG_HELLO) {
			d->m.protocol_errors_total++;
			send_result(c->sock, -KVT_EPROTOCOL);
			continue;
		}
		switch (h.type) {
		case KVT_MSG_HELLO:
			handle_hello(d, c, (const struct kvt_msg_hello *)d->msgbuf);
			break;
		case KVT_MSG_LAYOUT:
			handle_layout(d, c, (const struct kvt_msg_layout *)d->msgbuf);
			break;
		case KVT_MSG_STATS:
			handle_stats(d, c);
			break;
		case KVT_MSG_ADMIN:
			handle_admin(d, c, (const struct kvt_msg_admin *)d->msgbuf);
			break;
		case KVT_MSG_GPU_ATTACH:
			handle_gpu_attach(d, c);
			break;
		case KVT_MSG_GPU_OP:
			handle_gpu_op(d, c, (const struct kvt_msg_gpu_op *)d->msgbuf, (size_t)n);
			break;
		default:
			d->m.protocol_errors_total++;
			send_result(c->sock, -KVT_EPROTOCOL);
			break;
		}
	}
	if (events & (EPOLLHUP | EPOLLERR))
		client_kill(d, c, NULL);
}

/* Refused connections kept until their HELLO, to answer it with the reason. */
#define REFUSED_MAX 64u

/* Logs a refusal at most once a second (a flood of them must not flood the log). */
static void refuse_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void refuse_log(const char *fmt, ...)
{
	static uint64_t last_ms;
	static unsigned more;
	uint64_t now = kvtd_now_ms();
	char msg[256];
	va_list ap;

	if (last_ms && now - last_ms < 1000) {
		more++;
		return;
	}
	last_ms = now;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (more)
		kvtd_log(KVTD_LOG_WARN, "%s (and %u more refusals)", msg, more);
	else
		kvtd_log(KVTD_LOG_WARN, "%s", msg);
	more = 0;
}

/*
 * Whether a connection of uid may be a client: 0, or -KVT_ELIMIT.  The last
 * daemon.admin_reserved_clients places are kept for admins (root's kvtierctl must get in
 * when users have taken the rest), and one non-admin uid has daemon.max_clients_per_uid.
 */
static int admission(struct kvtd *d, uid_t uid, bool admin)
{
	uint32_t mine = 0;

	if (d->nclients >= d->cfg.max_clients) {
		refuse_log("refusing a client of uid %u: daemon.max_clients = %u reached",
			   (unsigned)uid, d->cfg.max_clients);
		return -KVT_ELIMIT;
	}
	if (admin)
		return 0;
	if (d->nclients >= d->cfg.max_clients - d->cfg.admin_reserved) {
		refuse_log("refusing a client of uid %u: the last %u of daemon.max_clients = %u "
			   "are kept for admins",
			   (unsigned)uid, d->cfg.admin_reserved, d->cfg.max_clients);
		return -KVT_ELIMIT;
	}
	for (struct client *c = d->clients; c; c = c->next) {
		if (!c->dead && !c->refused && c->uid == uid)
			mine++;
	}
	if (mine >= d->cfg.max_clients_per_uid) {
		refuse_log("refusing a client of uid %u: daemon.max_clients_per_uid = %u reached",
			   (unsigned)uid, d->cfg.max_clients_per_uid);
		return -KVT_ELIMIT;
	}
	return 0;
}

/* Back to polling the listener after accept() ran out of descriptors. */
static void accept_resume(struct kvtd *d)
{
	struct epoll_event e = {.events = EPOLLIN, .data.ptr = &d->lsock_ev};

	if (!d->accept_paused)
		return;
	if (epoll_ctl(d->ep, EPOLL_CTL_ADD, d->lsock, &e) == 0)
		d->accept_paused = false;
}

static void accept_clients(struct kvtd *d)
{
	for (;;) {
		int fd = accept4(d->lsock, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		struct ucred cr;
		socklen_t len = sizeof(cr);
		struct client *c;
		int sndbuf = 4 << 20, refused;
		bool admin;

		if (fd < 0) {
			if (errno != EMFILE && errno != ENFILE && errno != ENOBUFS &&
			    errno != ENOMEM)
				return;
			/* The connection stays in the backlog and the listener stays readable: the
			 * loop would spin on it.  Stop polling it until a connection closes or the
			 * next tick; say so once. */
			if (!d->emfile_logged)
				kvtd_log(
				    KVTD_LOG_WARN,
				    "cannot accept connections: %s (raise LimitNOFILE or lower "
				    "daemon.max_clients); retrying at each tick",
				    strerror(errno));
			d->emfile_logged = true;
			if (epoll_ctl(d->ep, EPOLL_CTL_DEL, d->lsock, NULL) == 0)
				d->accept_paused = true;
			return;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0) {
			close(fd);
			continue;
		}
		admin = is_admin(d, fd, cr.uid, cr.gid);
		refused = admission(d, cr.uid, admin);
		if (refused && d->nrefused >= REFUSED_MAX) {
			send_result(fd, refused);
			close(fd);
			continue;
		}
		c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
		c->magic = CLIENT_MAGIC;
		c->id = ++d->next_client_id;
		c->sock = fd;
		c->sq_efd = c->cq_efd = -1;
		c->uid = cr.uid;
		c->gid = cr.gid;
		c->pid = cr.pid;
		c->free_hold = KVTD_NIL;
		c->connected_ms = kvtd_now_ms();
		c->admin = admin;
		c->refused = refused;
		c->sock_ev.kind = EV_SOCK;
		c->sock_ev.p = c;
		struct epoll_event ee = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = &c->sock_ev};
		if (epoll_ctl(d->ep, EPOLL_CTL_ADD, fd, &ee) < 0) {
			close(fd);
			free(c);
			continue;
		}
		c->next = d->clients;
		d->clients = c;
		if (refused) {
			d->nrefused++;
			continue;
		}
		d->nclients++;
		d->m.clients = d->nclients;
		d->m.connections_total++;
	}
}

/* ---------------------------------------------------------------------------------------
 * Setup and the loop.
 */
static int pick_socket_path(struct kvtd *d)
{
	const char *env = getenv("KVTIER_SOCKET"), *xdg = getenv("XDG_RUNTIME_DIR");
	char dir[108];
	int n;

	if (d->cfg.socket[0])
		n = snprintf(d->sock_path, sizeof(d->sock_path), "%s", d->cfg.socket);
	else if (env && *env)
		n = snprintf(d->sock_path, sizeof(d->sock_path), "%s", env);
	else if (geteuid() == 0 || getenv("NOTIFY_SOCKET") || !xdg)
		n = snprintf(d->sock_path, sizeof(d->sock_path), "/run/kvtier/kvtier.sock");
	else
		n = snprintf(d->sock_path, sizeof(d->sock_path), "%s/kvtier/kvtier.sock", xdg);
	if (n < 0 || (size_t)n >= sizeof(d->sock_path)) {
		kvtd_log(KVTD_LOG_ERR, "socket path too long");
		return -ENAMETOOLONG;
	}
	/* Create the parent directory of a default path; an explicit path's must exist.  Its
	 * mode is the socket's access control: 0750, so only this user and group may connect
	 * (systemd's RuntimeDirectoryMode= does the same under the unit). */
	snprintf(dir, sizeof(dir), "%s", d->sock_path);
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = 0;
		if (mkdir(dir, 0750) == 0) {
			kvtd_log(KVTD_LOG_INFO,
				 "created %s (mode 0750, uid %u gid %u): only that user and group "
				 "may connect",
				 dir, (unsigned)geteuid(), (unsigned)getegid());
		} else if (errno != EEXIST) {
			int e = errno;

			kvtd_log(KVTD_LOG_ERR, "cannot create %s: %s", dir, strerror(e));
			return -e;
		}
	}
	return 0;
}

static int open_listener(struct kvtd *d)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, ret;

#ifdef KVT_HAVE_SYSTEMD
	if (sd_listen_fds(1) == 1 &&
	    sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_SEQPACKET, 1, NULL, 0) > 0) {
		d->lsock = SD_LISTEN_FDS_START;
		d->lsock_from_systemd = true;
		fcntl(d->lsock, F_SETFL, fcntl(d->lsock, F_GETFL) | O_NONBLOCK);
		fcntl(d->lsock, F_SETFD, FD_CLOEXEC);
		kvtd_log(KVTD_LOG_INFO, "listening on the socket passed by systemd");
		return 0;
	}
#endif
	ret = pick_socket_path(d);
	if (ret < 0)
		return ret;
	/* Bound and listening under a temporary name, then renamed: the path appears only
	 * when it accepts connections, and a live daemon's socket is never replaced. */
	if (strlen(d->sock_path) + 5 > sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", d->sock_path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
		close(fd);
		kvtd_log(KVTD_LOG_ERR, "another kvtierd is serving %s", d->sock_path);
		return -EADDRINUSE;
	}
	close(fd);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s.new", d->sock_path);
	unlink(sa.sun_path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		goto fail;
	/* Any local user may be a tenant; the directory's mode is the access control. */
	chmod(sa.sun_path, 0666);
	if (listen(fd, 128) < 0 || rename(sa.sun_path, d->sock_path) < 0) {
		unlink(sa.sun_path);
		goto fail;
	}
	d->lsock = fd;
	kvtd_log(KVTD_LOG_INFO, "listening on %s", d->sock_path);
	return 0;
fail:
	ret = -errno;
	kvtd_log(KVTD_LOG_ERR, "cannot listen on %s: %s", d->sock_path, strerror(errno));
	close(fd);
	return ret;
}

int kvtd_create(const struct kvtd_config *cfg, struct kvtd **out)
{
	struct kvtd *d;
	struct itimerspec its = {0};
	sigset_t ss;
	int ret;

	*out = NULL;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->cfg = *cfg;
	d->ep = d->lsock = d->tfd = d->sfd = -1;
	kvtd_log_level = cfg->log_level;
	d->msgbuf = malloc(KVT_MSG_MAX + sizeof(struct kvt_msg_result) + ADMIN_CHUNK);
	if (!d->msgbuf) {
		ret = -ENOMEM;
		goto fail;
	}
	d->salt =
	    cfg->tenant_salt[0] ? kvt_hash64(cfg->tenant_salt, strlen(cfg->tenant_salt), 0) : 0;
	d->check_counts =
	    getenv("KVTIER_CHECK_COUNTS") && !strcmp(getenv("KVTIER_CHECK_COUNTS"), "1");
	d->start_ms = kvtd_now_ms();
	d->start_unix = (uint64_t)time(NULL);
	d->epoch = (uint64_t)time(NULL) << 20 ^ (uint64_t)getpid();
	if (cfg->admin_group[0]) {
		struct group *g = getgrnam(cfg->admin_group);
		if (g) {
			d->admin_gid = g->gr_gid;
			d->have_admin_gid = true;
		}
	}
	ret = kvtd_index_init(&d->ix, (uint32_t)cfg->max_blocks);
	if (ret < 0)
		goto fail;
	d->ep = epoll_create1(EPOLL_CLOEXEC);
	if (d->ep < 0) {
		ret = -errno;
		goto fail;
	}
	ret = open_listener(d);
	if (ret < 0)
		goto fail;
	d->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	its.it_interval.tv_sec = cfg->tick_ms / 1000;
	its.it_interval.tv_nsec = (long)(cfg->tick_ms % 1000) * 1000000;
	its.it_value = its.it_interval;
	if (d->tfd < 0 || timerfd_settime(d->tfd, 0, &its, NULL) < 0) {
		ret = -errno;
		goto fail;
	}
	sigemptyset(&ss);
	sigaddset(&ss, SIGTERM);
	sigaddset(&ss, SIGINT);
	sigaddset(&ss, SIGHUP);
	sigprocmask(SIG_BLOCK, &ss, NULL);
	signal(SIGPIPE, SIG_IGN);
	/* A slot file at the file-size limit must fail a write with EFBIG, not kill us. */
	signal(SIGXFSZ, SIG_IGN);
	d->sfd = signalfd(-1, &ss, SFD_CLOEXEC | SFD_NONBLOCK);
	if (d->sfd < 0) {
		ret = -errno;
		goto fail;
	}
	d->lsock_ev = (struct ev){EV_LISTEN, NULL};
	d->tfd_ev = (struct ev){EV_TIMER, NULL};
	d->sfd_ev = (struct ev){EV_SIGNAL, NULL};
	struct epoll_event e1 = {.events = EPOLLIN, .data.ptr = &d->lsock_ev};
	struct epoll_event e2 = {.events = EPOLLIN, .data.ptr = &d->tfd_ev};
	struct epoll_event e3 = {.events = EPOLLIN, .data.ptr = &d->sfd_ev};
	if (epoll_ctl(d->ep, EPOLL_CTL_ADD, d->lsock, &e1) < 0 ||
	    epoll_ctl(d->ep, EPOLL_CTL_ADD, d->tfd, &e2) < 0 ||
	    epoll_ctl(d->ep, EPOLL_CTL_ADD, d->sfd, &e3) < 0) {
		ret = -errno;
		goto fail;
	}
	ret = kvtd_place_init(d);
	if (ret < 0)
		goto fail;
#ifdef KVT_HAVE_SYSTEMD
	uint64_t wd_usec;
	d->watchdog = sd_watchdog_enabled(0, &wd_usec) > 0;
#endif
	*out = d;
	return 0;
fail:
	kvtd_destroy(d);
	return ret;
}

/* Closes connections that said no HELLO within daemon.handshake_timeout_ms: an idle
 * connection must not hold a place among daemon.max_clients. */
static void handshake_timeouts(struct kvtd *d)
{
	uint64_t now = kvtd_now_ms();
	unsigned n = 0;

	for (struct client *c = d->clients; c; c = c->next) {
		if (c->dead || c->hello || now - c->connected_ms < d->cfg.handshake_timeout_ms)
			continue;
		if (!c->refused) { /* (a refused one was told why already, or is dropped) */
			send_result(c->sock, -ETIMEDOUT);
			n++;
		}
		client_kill(d, c, NULL);
	}
	if (n)
		kvtd_log(KVTD_LOG_WARN,
			 "closed %u connection(s) that sent no HELLO within "
			 "daemon.handshake_timeout_ms = %u",
			 n, d->cfg.handshake_timeout_ms);
}

/* Reads the sockets of connections held back by daemon.user_admin_rate again. */
static void admin_unthrottle(struct kvtd *d)
{
	for (struct client *c = d->clients; c; c = c->next) {
		struct epoll_event ee = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = &c->sock_ev};

		if (!c->throttled || c->dead)
			continue;
		c->throttled = false;
		if (!c->job)
			epoll_ctl(d->ep, EPOLL_CTL_MOD, c->sock, &ee);
	}
}

static void tick(struct kvtd *d)
{
	uint64_t exp;
	ssize_t r = read(d->tfd, &exp, sizeof(exp));

	(void)r;
	handshake_timeouts(d);
	death_tick(d);
	if (!d->accept_paused)
		d->emfile_logged = false; /* a new shortage of descriptors is logged again */
	accept_resume(d);
	admin_unthrottle(d);
	kvtd_watermarks(d);
	if (d->check_counts)
		kvtd_check_counts(d);
#ifdef KVT_HAVE_SYSTEMD
	if (d->watchdog)
		sd_notify(0, "WATCHDOG=1");
#endif
}

/* Sets NEED_WAKEUP on every ring; true if some ring got work meanwhile (don't sleep). */
static bool prepare_sleep(struct kvtd *d)
{
	bool work = false;

	for (struct client *c = d->clients; c; c = c->next) {
		if (c->data && !c->dead && kvt_ring_prepare_sleep(c->sq) != c->sq_head)
			work = true;
	}
	if (work) {
		for (struct client *c = d->clients; c; c = c->next) {
			if (c->data && !c->dead)
				kvt_ring_awake(c->sq);
		}
	}
	return work;
}

/* Keys SIGHUP applies to a running daemon; every other key needs a restart. */
static const char *const live_keys[] = {
    "daemon.log_level",	   "daemon.spin_us",	 "host.high_watermark", "host.low_watermark",
    "nvme.high_watermark", "nvme.low_watermark", "gpu.high_watermark",	"gpu.low_watermark",
};

static void reload(struct kvtd *d)
{
	struct kvtd_config *nc;
	const char *sec, *name;
	char key[80], a[1100], b[1100];
	int changed = 0, restart = 0;

	if (!kvtd_reload) {
		kvtd_log(KVTD_LOG_INFO, "SIGHUP: nothing to reload");
		return;
	}
	nc = malloc(sizeof(*nc));
	if (!nc || kvtd_reload(nc) < 0) {
		kvtd_log(KVTD_LOG_ERR, "SIGHUP: configuration not reloaded; nothing changed");
		free(nc);
		return;
	}
	for (size_t i = 0; i < kvtd_config_nkeys(); i++) {
		bool live = false;

		kvtd_config_value(&d->cfg, i, &sec, &name, a, sizeof(a));
		kvtd_config_value(nc, i, &sec, &name, b, sizeof(b));
		if (!strcmp(a, b))
			continue;
		snprintf(key, sizeof(key), "%s.%s", sec, name);
		for (size_t k = 0; k < sizeof(live_keys) / sizeof(live_keys[0]); k++)
			live |= !strcmp(key, live_keys[k]);
		if (!strcmp(key, "daemon.tenant_salt"))
			a[0] = b[0] = 0; /* a secret: never logged */
		if (live) {
			kvtd_log(KVTD_LOG_WARN, "SIGHUP: %s = %s (was %s)", key, b, a);
			changed++;
		} else {
			kvtd_log(KVTD_LOG_WARN, "SIGHUP: %s = %s needs a restart (still %s)", key,
				 b, a);
			restart++;
		}
	}
	d->cfg.log_level = nc->log_level;
	kvtd_log_level = nc->log_level;
	d->cfg.spin_us = nc->spin_us;
	d->cfg.host_high = nc->host_high;
	d->cfg.host_low = nc->host_low;
	d->cfg.nvme_high = nc->nvme_high;
	d->cfg.nvme_low = nc->nvme_low;
	d->cfg.gpu_high = nc->gpu_high;
	d->cfg.gpu_low = nc->gpu_low;
	kvtd_log(KVTD_LOG_WARN, "SIGHUP: configuration reloaded: %d changed, %d need a restart",
		 changed, restart);
	free(nc);
}

/* The last line of a stop: what the daemon did in its life. */
static void log_summary(struct kvtd *d)
{
	uint64_t keys = d->m.lookup_keys_total;

	kvtd_log(KVTD_LOG_INFO,
		 "stopped after %" PRIu64 " s: %" PRIu64 " connections, %" PRIu64 " puts, %" PRIu64
		 " gets (%" PRIu64 " hits), lookup hit ratio %.3f (%" PRIu64 " of %" PRIu64
		 " blocks), %" PRIu64 " evictions, %" PRIu64 " demotions, %" PRIu64
		 " promotions, %" PRIu64 " blocks stored",
		 (kvtd_now_ms() - d->start_ms) / 1000, d->m.connections_total, d->m.puts_total,
		 d->m.gets_total, d->m.hits_total,
		 keys ? (double)d->m.lookup_hit_blocks_total / (double)keys : 0.0,
		 d->m.lookup_hit_blocks_total, keys, d->m.evictions_total, d->m.demotions_total,
		 d->m.promotions_total, (uint64_t)d->ix.count);
}

int kvtd_run(struct kvtd *d)
{
	struct epoll_event evs[64];
	uint64_t last_work = now_us();
	bool sleeping = false;
	int ret;

	/* Here, not in kvtd_create(): kvtierd forks into the background in between, and a
	 * CUDA context does not survive fork(). */
	ret = kvtd_gpu_init(d);
	if (ret < 0)
		return ret;
	ret = kvtd_nvme_recover_start(d);
	if (ret < 0)
		return ret;

#ifdef KVT_HAVE_SYSTEMD
	sd_notifyf(0, "READY=1\nSTATUS=serving on %s\nMAINPID=%d",
		   d->sock_path[0] ? d->sock_path : "systemd socket", (int)getpid());
#endif
	kvtd_log(KVTD_LOG_INFO, "kvtierd %s serving (pid %d)", kvt_version(), (int)getpid());
	if (kvtd_on_ready)
		kvtd_on_ready();
	while (!d->stop) {
		int timeout = 0, n, work = 0;

		if (!sleeping && now_us() - last_work > d->cfg.spin_us) {
			if (prepare_sleep(d))
				last_work = now_us();
			else
				sleeping = true;
		}
		if (sleeping)
			timeout = (int)d->cfg.tick_ms;
		else if (now_us() - last_work > 2)
			sched_yield(); /* polling: let a client that shares this core run */
		n = epoll_wait(d->ep, evs, 64, timeout);
		if (n < 0 && errno != EINTR)
			return -errno;
		for (int i = 0; i < n; i++) {
			struct ev *e = evs[i].data.ptr;
			struct client *c = e->p;
			uint64_t v;
			ssize_t r;

			switch (e->kind) {
			case EV_LISTEN:
				accept_clients(d);
				break;
			case EV_SOCK:
				client_sock_event(d, c, evs[i].events);
				break;
			case EV_SQ:
				r = read(c->sq_efd, &v, sizeof(v));
				(void)r;
				break;
			case EV_TIMER:
				tick(d);
				break;
			case EV_CODEC:
				kvtd_cpool_event(d);
				break;
			case EV_TIER:
				kvtd_nvme_event(d);
				break;
			case EV_SIGNAL: {
				struct signalfd_siginfo si;
				if (read(d->sfd, &si, sizeof(si)) != sizeof(si))
					break;
				if (si.ssi_signo == SIGHUP) {
					reload(d);
					break;
				}
				kvtd_log(KVTD_LOG_INFO, "signal %u: stopping", si.ssi_signo);
				d->stop = true;
				break;
			}
			}
		}
		if (sleeping && n > 0) {
			sleeping = false;
			for (struct client *c = d->clients; c; c = c->next) {
				if (c->data && !c->dead)
					kvt_ring_awake(c->sq);
			}
		}
		for (struct client *c = d->clients; c; c = c->next) {
			work += client_drain(d, c);
			if (c->job && !c->dead)
				work += admin_job_step(d, c);
		}
		/* Prefetches only after the demand requests of this pass are on their way. */
		kvtd_prefetch_pump(d);
		kvtd_gpu_pump(d);
		if (work) {
			last_work = now_us();
			sleeping = false;
		}
		for (struct client *c = d->clients, *next; c; c = next) {
			next = c->next;
			if (c->dead)
				client_free(d, c);
		}
	}
#ifdef KVT_HAVE_SYSTEMD
	sd_notify(0, "STOPPING=1");
#endif
	log_summary(d);
	return 0;
}

void kvtd_destroy(struct kvtd *d)
{
	if (!d)
		return;
	/* The pool and the arena registrations go before the arenas are unmapped. */
	kvtd_gpu_fini(d);
	kvtd_place_fini(d);
	while (d->clients) {
		client_release_all(d, d->clients);
		client_free(d, d->clients);
	}
	for (uint32_t k = 0; k < d->ndying; k++)
		close(d->dying[k]);
	if (d->lsock >= 0) {
		close(d->lsock);
		if (!d->lsock_from_systemd && d->sock_path[0])
			unlink(d->sock_path);
	}
	if (d->tfd >= 0)
		close(d->tfd);
	if (d->sfd >= 0)
		close(d->sfd);
	if (d->ep >= 0)
		close(d->ep);
	for (uint32_t i = 0; i < d->ntenants; i++) {
		struct tenant *t = d->tenants[i];
		munmap(t->base, t->size);
		close(t->memfd);
		t->magic = 0;
		free(t);
	}
	free(d->tenants);
	kvtd_index_fini(&d->ix);
	free(d->msgbuf);
	free(d);
}
