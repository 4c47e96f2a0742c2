/* SPDX-License-Identifier: MIT */
/*
 * remote_place.c - the remote tier in kvtierd (issue 14): blocks in a Redis Cluster that
 * every host of a fleet shares, below the local tiers (tiers/tier_remote.h is the store).
 *
 * When a block goes remote: write-behind on commit.  A put committed to the host tier is
 * copied (one memcpy on the loop: the arena extent may be reused as soon as the block is
 * evicted) into a job of a bounded queue (remote.queue_max blocks; beyond, the copy is
 * dropped and counted, the loop never waits).  An I/O thread encodes it with remote.codec
 * and stores it (SET NX EX remote.ttl).  So a prefix computed on one host is visible to the
 * others as soon as the write lands, not only when the local tiers evict it.  A block is
 * never removed remotely: a delete is local, and remote copies expire by TTL.
 *
 * Lookup: ops.c answers from the index up to its first miss; for the rest it calls
 * kvtd_remote_lookup(), an I/O thread runs one pipelined EXISTS run (stopping at the first
 * miss) under remote.lookup_timeout_us, and the answer comes back to ops.c through the
 * lookup list (kvtd_remote_lookup_pop).  A node that fails or is late counts as a miss.
 *
 * Get: a key no local tier has is fetched (kvtd_remote_fetch) under remote.get_timeout_us;
 * the I/O thread checks the value (the tier: record header, length, CRC-32C, key and
 * fingerprint; here: owner uid, size, chain) and decodes it; back on the loop, the block is
 * installed in the host tier as a committed put would be, and the get, chained as a waiter,
 * is answered through the readiness list (waiters.c), like a promotion from NVMe.  Anything
 * else (not stored, cluster down, late, corrupt, no host room) is a miss.
 *
 * Threads: remote.threads I/O threads, each with its own struct kvt_remote (one connection
 * per node).  Lookups and gets go first (with two threads or more, the first takes nothing
 * else); puts go in batches of up to PUT_BATCH, pipelined.
 * The key on the wire is the tenant-salted internal key + layout fingerprint, so another
 * host with the same daemon.tenant_salt finds a block of the same uid and layout.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "place_int.h"

#ifdef KVT_HAVE_REMOTE
#include "redis_cluster.h"
#include "tier_remote.h"

#define PUT_BATCH 16u

enum { RJ_PUT, RJ_LOOKUP, RJ_GET };

struct rjob {
	struct rjob *next;
	int kind;
	uint32_t client_id;
	uint64_t user_data;
	/* put: the block's bytes and geometry, its record header */
	void *raw;
	uint32_t len;
	struct kvt_codec_geom g;
	struct kvt_remote_put put;
	/* lookup: keys[0..m) after the found first ones, of n asked; res: found in all */
	struct kvt_remote_key *keys;
	uint32_t found, n, m;
	int res;
	/* lookup, get: the absolute deadline, from when the client asked (a job that waited
	 * for a thread past it is a miss at once) */
	uint64_t deadline;
	/* get: the key, the owner, the largest block; after: raw/len or err */
	struct kvt_remote_key key;
	uint32_t tenant, uid, max_len, waiter, first_token;
	int err;
};

struct rthread {
	struct kvtd_remote *R;
	pthread_t th;
	bool started;
	struct kvt_remote *r;
	/* what the thread saw last (under R->mu): for kvtierctl */
	struct kvt_remote_stats st;
	struct kvt_rc_stats rc;
	struct kvt_rc_node_info nodes[KVTD_REMOTE_NODES];
	unsigned nnodes;
};

struct kvtd_remote {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int efd;
	bool stop;
	struct rjob *hi_head, *hi_tail;	  /* lookups and gets */
	struct rjob *put_head, *put_tail; /* write-behind */
	struct rjob *done_head, *done_tail;
	struct rjob *lk_head, *lk_tail; /* finished lookups, loop side */
	uint32_t put_queued;
	/* counters of the threads (under mu), copied into d->m by kvtd_remote_sync() */
	uint64_t puts, put_bytes, put_errors, corrupt, errors;
	struct kvt_chain *chain, *raw; /* remote.codec; raw for blocks it refuses */
	uint64_t lookup_ns, get_ns, put_ns;
	unsigned nth;
	struct rthread th[];
};

static void job_free(struct rjob *j)
{
	if (!j)
		return;
	free(j->raw);
	free(j->keys);
	free(j);
}

static void q_push(struct rjob **head, struct rjob **tail, struct rjob *j)
{
	j->next = NULL;
	if (*tail)
		(*tail)->next = j;
	else
		*head = j;
	*tail = j;
}

static struct rjob *q_pop(struct rjob **head, struct rjob **tail)
{
	struct rjob *j = *head;

	if (j) {
		*head = j->next;
		if (!*head)
			*tail = NULL;
	}
	return j;
}

/* ---------------------------------------------------------------------------------------
 * I/O threads
 */
static void run_puts(struct rthread *th, struct rjob **v, unsigned n)
{
	struct kvtd_remote *R = th->R;
	struct kvt_remote_put p[PUT_BATCH];
	void *enc[PUT_BATCH] = {0};
	unsigned k = 0;
	uint64_t bytes = 0, errs = 0, ok = 0;

	for (unsigned i = 0; i < n; i++) {
		struct rjob *j = v[i];
		const struct kvt_chain *c = R->chain;
		size_t cap = kvt_chain_max_encoded_size(c, &j->g);
		ssize_t len = -ENOMEM;

		if (cap < (size_t)j->len + 64)
			cap = (size_t)j->len + 64;
		enc[k] = malloc(cap);
		if (enc[k]) {
			len = kvt_chain_encode(c, &j->g, j->raw, j->len, enc[k], cap);
			if (len < 0 && c != R->raw) {
				c = R->raw; /* a chain that refuses this block: raw instead */
				len = kvt_chain_encode(c, &j->g, j->raw, j->len, enc[k], cap);
			}
		}
		if (len < 0) {
			free(enc[k]);
			errs++;
			continue;
		}
		p[k] = j->put;
		p[k].hdr.chain_id = kvt_chain_id(c);
		p[k].hdr.payload_len = (uint32_t)len;
		p[k].payload = enc[k];
		bytes += (uint64_t)len;
		k++;
	}
	if (k)
		kvt_remote_put(th->r, p, k, kvt_remote_now_ns() + R->put_ns);
	for (unsigned i = 0; i < k; i++) {
		if (p[i].res >= 0)
			ok++;
		else
			errs++;
		free(enc[i]);
	}
	pthread_mutex_lock(&R->mu);
	R->puts += ok;
	R->put_bytes += bytes;
	R->put_errors += errs;
	pthread_mutex_unlock(&R->mu);
}

static void run_lookup(struct rthread *th, struct rjob *j)
{
	int got = kvt_remote_lookup(th->r, j->keys, j->m, j->deadline);

	j->res = (int)j->found + (got > 0 ? got : 0);
}

/* Fetches, checks and decodes j's block into j->raw: j->err 0, or why it is a miss. */
static void run_get(struct rthread *th, struct rjob *j)
{
	struct kvtd_remote *R = th->R;
	struct kvt_remote_get g = {.key = j->key};
	const struct kvt_chain *c;
	struct kvt_codec_geom geom;
	ssize_t got;
	bool corrupt = false;

	/* Any sane chain's output is a little over the raw size at worst; more is -ENOSPC. */
	g.cap = (size_t)j->max_len + j->max_len / 8 + 65536;
	g.buf = malloc(g.cap);
	j->err = -ENOENT;
	if (!g.buf)
		return;
	kvt_remote_get(th->r, &g, 1, j->deadline);
	if (g.res < 0) {
		corrupt = g.res == -EBADMSG;
		goto out;
	}
	c = g.hdr.chain_id == kvt_chain_id(R->chain) ? R->chain
	    : g.hdr.chain_id == kvt_chain_id(R->raw) ? R->raw
						     : NULL;
	/* A value of another owner, size or chain is no block of this get. */
	if (!c || g.hdr.tenant != j->uid || !g.hdr.raw_len || g.hdr.raw_len > j->max_len) {
		corrupt = true;
		goto out;
	}
	j->raw = malloc(g.hdr.raw_len);
	if (!j->raw)
		goto out;
	memset(&geom, 0, sizeof(geom));
	got = kvt_chain_decode(c, g.buf, (size_t)g.res, j->raw, g.hdr.raw_len, &geom);
	if (got != (ssize_t)g.hdr.raw_len) {
		free(j->raw);
		j->raw = NULL;
		corrupt = true;
		goto out;
	}
	j->len = g.hdr.raw_len;
	j->first_token = geom.first_token;
	j->err = 0;
out:
	free(g.buf);
	if (corrupt) {
		pthread_mutex_lock(&R->mu);
		R->corrupt++;
		pthread_mutex_unlock(&R->mu);
	}
}

/* What kvtierctl shows of this thread's connections (its kvt_remote is its own). */
static void snapshot(struct rthread *th)
{
	struct kvt_remote_stats st;
	struct kvt_rc_stats rc;
	struct kvt_rc_node_info nodes[KVTD_REMOTE_NODES];
	struct kvt_rc *cl = kvt_remote_cluster(th->r);
	unsigned n = kvt_rc_nodes(cl, nodes, KVTD_REMOTE_NODES);

	kvt_remote_get_stats(th->r, &st);
	kvt_rc_get_stats(cl, &rc);
	pthread_mutex_lock(&th->R->mu);
	th->R->errors += (st.put_errors + st.get_errors + st.lookup_errors) -
			 (th->st.put_errors + th->st.get_errors + th->st.lookup_errors);
	th->st = st;
	th->rc = rc;
	th->nnodes = n < KVTD_REMOTE_NODES ? n : KVTD_REMOTE_NODES;
	memcpy(th->nodes, nodes, th->nnodes * sizeof(nodes[0]));
	pthread_mutex_unlock(&th->R->mu);
}

static void *io_main(void *arg)
{
	struct rthread *th = arg;
	struct kvtd_remote *R = th->R;
	uint64_t one = 1;
	/* With several threads the first serves lookups and gets only: a batch of puts
	 * never stands between a client and its answer. */
	bool lookups_only = th == &R->th[0] && R->nth > 1;

	/* The slot map (and connections to the nodes it asks) before the first request: a
	 * lookup's deadline of a few ms leaves no room for it.  Failing here is no error: the
	 * first request tries again.  Bounded as this thread's requests are. */
	kvt_rc_refresh(kvt_remote_cluster(th->r),
		       kvt_remote_now_ns() + (lookups_only ? R->get_ns : R->put_ns));
	snapshot(th);
	pthread_mutex_lock(&R->mu);
	for (;;) {
		struct rjob *v[PUT_BATCH], *j;
		unsigned n = 0;

		while (!R->stop && !R->hi_head && (lookups_only || !R->put_head))
			pthread_cond_wait(&R->cv, &R->mu);
		if (R->stop)
			break;
		j = q_pop(&R->hi_head, &R->hi_tail);
		if (!j) {
			while (n < PUT_BATCH && (v[n] = q_pop(&R->put_head, &R->put_tail)))
				n++;
			R->put_queued -= n;
		}
		pthread_mutex_unlock(&R->mu);
		if (j && j->kind == RJ_LOOKUP)
			run_lookup(th, j);
		else if (j)
			run_get(th, j);
		else
			run_puts(th, v, n);
		for (unsigned k = 0; k < n; k++)
			job_free(v[k]);
		snapshot(th);
		pthread_mutex_lock(&R->mu);
		if (j)
			q_push(&R->done_head, &R->done_tail, j);
		/* puts too: the loop brings the metrics up to date */
		if (write(R->efd, &one, sizeof(one)) < 0) {
			/* the counter is far from full: never */
		}
	}
	pthread_mutex_unlock(&R->mu);
	return NULL;
}

/* ---------------------------------------------------------------------------------------
 * The loop's side
 */
bool kvtd_remote_on(const struct kvtd *d)
{
	return d->remote != NULL;
}

void kvtd_remote_sync(struct kvtd *d)
{
	struct kvtd_remote *R = d->remote;

	if (!R)
		return;
	pthread_mutex_lock(&R->mu);
	d->m.remote_puts_total = R->puts;
	d->m.remote_put_bytes_total = R->put_bytes;
	d->m.remote_put_errors_total = R->put_errors;
	d->m.remote_corrupt_total = R->corrupt;
	d->m.remote_errors_total = R->errors;
	d->m.remote_queue = R->put_queued;
	pthread_mutex_unlock(&R->mu);
}

static void submit(struct kvtd_remote *R, struct rjob *j)
{
	pthread_mutex_lock(&R->mu);
	if (j->kind == RJ_PUT) {
		q_push(&R->put_head, &R->put_tail, j);
		R->put_queued++;
	} else {
		q_push(&R->hi_head, &R->hi_tail, j);
	}
	/* every thread may be the one a job needs (thread 0 takes no puts) */
	pthread_cond_broadcast(&R->cv);
	pthread_mutex_unlock(&R->mu);
}

void kvtd_remote_put(struct kvtd *d, uint32_t i)
{
	struct kvtd_remote *R = d->remote;
	struct kvtd_blk *b = B(d, i);
	const struct tenant *t = kvtd_tenant_of(d, b);
	const struct kvt_codec_geom *g;
	struct rjob *j;
	bool full;

	if (!R)
		return;
	pthread_mutex_lock(&R->mu);
	full = R->put_queued >= d->cfg.remote_queue_max;
	pthread_mutex_unlock(&R->mu);
	if (full) {
		d->m.remote_put_dropped_total++;
		return;
	}
	j = calloc(1, sizeof(*j));
	if (!j || !(j->raw = malloc(b->len))) {
		free(j);
		d->m.remote_put_dropped_total++;
		return;
	}
	j->kind = RJ_PUT;
	j->len = b->len;
	memcpy(j->raw, kvtd_host_at(d, t, b->off), b->len);
	g = kvtd_geom_of(d, i);
	if (g && kvt_geom_block_bytes(g) == b->len && !kvt_chain_usable(R->chain, g)) {
		j->g = *g;
	} else if (!kvtd_raw_geom_for(b->len, &j->g)) {
		job_free(j); /* a length no geometry describes cannot be encoded */
		d->m.remote_put_dropped_total++;
		return;
	}
	j->g.first_token = b->first_token;
	j->put.hdr.key_lo = b->key_lo;
	j->put.hdr.key_hi = b->key_hi;
	j->put.hdr.fingerprint = b->fingerprint;
	j->put.hdr.raw_len = b->len;
	j->put.hdr.tenant = t->uid;
	d->m.remote_puts_queued_total++;
	submit(R, j);
}

int kvtd_remote_lookup(struct kvtd *d, uint32_t client_id, uint64_t user_data, uint32_t found,
		       uint32_t n, const uint64_t *lohi, uint32_t m, uint64_t fp)
{
	struct rjob *j;

	if (!d->remote || !m)
		return -ENOENT;
	j = calloc(1, sizeof(*j));
	if (!j || !(j->keys = calloc(m, sizeof(*j->keys)))) {
		free(j);
		return -ENOMEM;
	}
	for (uint32_t k = 0; k < m; k++) {
		j->keys[k].key_lo = lohi[2 * k];
		j->keys[k].key_hi = lohi[2 * k + 1];
		j->keys[k].fingerprint = fp;
	}
	j->kind = RJ_LOOKUP;
	j->deadline = kvt_remote_now_ns() + d->remote->lookup_ns;
	j->client_id = client_id;
	j->user_data = user_data;
	j->found = found;
	j->n = n;
	j->m = m;
	d->m.remote_lookups_total++;
	submit(d->remote, j);
	return 1;
}

bool kvtd_remote_lookup_pop(struct kvtd *d, uint32_t *client_id, uint64_t *user_data, int *res,
			    uint32_t *n)
{
	struct rjob *j;

	if (!d->remote || !(j = q_pop(&d->remote->lk_head, &d->remote->lk_tail)))
		return false;
	*client_id = j->client_id;
	*user_data = j->user_data;
	*res = j->res;
	*n = j->n;
	job_free(j);
	return true;
}

int kvtd_remote_fetch(struct kvtd *d, uint32_t client_id, uint64_t user_data, struct tenant *t,
		      uint64_t lo, uint64_t hi, uint64_t fp, uint32_t max_len)
{
	struct rjob *j;

	if (!d->remote)
		return -ENOENT;
	j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOENT;
	j->waiter = kvtd_waiter_new(d, KVTD_NIL, client_id, user_data);
	if (j->waiter == KVTD_NIL) {
		free(j);
		return -ENOENT;
	}
	j->kind = RJ_GET;
	j->deadline = kvt_remote_now_ns() + d->remote->get_ns;
	j->key = (struct kvt_remote_key){.key_lo = lo, .key_hi = hi, .fingerprint = fp};
	j->tenant = kvtd_tenant_index(d, t);
	j->uid = t->uid;
	j->max_len = max_len;
	d->m.remote_gets_total++;
	submit(d->remote, j);
	return 1;
}

/* A fetched block becomes a committed host block: its index, or -errno (a miss). */
static int install(struct kvtd *d, struct rjob *j)
{
	struct tenant *t = d->tenants[j->tenant];
	uint32_t i = kvtd_index_find(&d->ix, j->key.key_lo, j->key.key_hi);
	int64_t off;

	if (i != KVTD_NIL) /* put or fetched meanwhile: that one, if it is ready */
		return B(d, i)->state == KVTD_BLK_READY ? (int)i : -ENOENT;
	off = kvtd_host_alloc(d, t, j->len);
	if (off < 0)
		return (int)off;
	i = kvtd_blk_insert(d, j->key.key_lo, j->key.key_hi);
	if (i == KVTD_NIL) {
		kvtd_host_unalloc(d, t, (uint64_t)off, j->len);
		return -ENOENT;
	}
	memcpy(kvtd_host_at(d, t, (uint64_t)off), j->raw, j->len);
	kvtd_blk_reserved(d, i, t, 0, j->key.fingerprint, j->len, off);
	kvtd_blk_commit_host(d, i, j->first_token);
	d->tier[KVTD_TIER_HOST].bytes_written += j->len;
	return (int)i;
}

void kvtd_remote_event(struct kvtd *d)
{
	struct kvtd_remote *R = d->remote;
	struct rjob *j, *done;
	uint64_t v;

	if (!R)
		return;
	if (read(R->efd, &v, sizeof(v)) < 0) {
		/* EAGAIN: nothing new; the list below says */
	}
	pthread_mutex_lock(&R->mu);
	done = R->done_head;
	R->done_head = R->done_tail = NULL;
	pthread_mutex_unlock(&R->mu);
	while ((j = done)) {
		done = j->next;
		if (j->kind == RJ_LOOKUP) {
			d->m.remote_lookup_hit_blocks_total += (uint64_t)(j->res - (int)j->found);
			q_push(&R->lk_head, &R->lk_tail, j);
			continue;
		}
		int i = j->err < 0 ? j->err : install(d, j);
		if (i >= 0) {
			d->m.remote_hits_total++;
			kvtd_waiters_ready(d, j->waiter, (uint32_t)i, 0);
		} else {
			d->m.remote_misses_total++;
			kvtd_waiters_ready(d, j->waiter, KVTD_NIL, -ENOENT);
		}
		job_free(j);
	}
	kvtd_remote_sync(d);
}

bool kvtd_remote_view(struct kvtd *d, struct kvtd_remote_view *v)
{
	struct kvtd_remote *R = d->remote;

	memset(v, 0, sizeof(*v));
	if (!R)
		return false;
	kvtd_remote_sync(d);
	v->threads = R->nth;
	pthread_mutex_lock(&R->mu);
	v->queued = R->put_queued;
	for (unsigned t = 0; t < R->nth; t++) {
		const struct rthread *th = &R->th[t];

		v->moved += th->rc.moved;
		v->ask += th->rc.ask;
		v->refreshes += th->rc.refreshes;
		v->timeouts += th->rc.timeouts;
		v->io_errors += th->rc.io_errors;
		v->proto_errors += th->rc.proto_errors;
		v->breaker_fast_fails += th->rc.breaker_fast_fails;
		v->standalone |= th->rc.standalone != 0;
		for (unsigned k = 0; k < th->nnodes; k++) {
			const struct kvt_rc_node_info *ni = &th->nodes[k];
			struct kvtd_remote_node *o = NULL;

			for (unsigned x = 0; x < v->nnodes && !o; x++) {
				if (!strcmp(v->nodes[x].addr, ni->addr))
					o = &v->nodes[x];
			}
			if (!o && v->nnodes < KVTD_REMOTE_NODES) {
				o = &v->nodes[v->nnodes++];
				snprintf(o->addr, sizeof(o->addr), "%s", ni->addr);
			}
			if (!o)
				continue;
			/* the thread that saw the map last is as right as any */
			if (ni->slots > o->slots)
				o->slots = ni->slots;
			o->connected |= ni->connected != 0;
			o->breaker_open |= ni->breaker_open != 0;
			o->bytes_out += ni->bytes_out;
			o->bytes_in += ni->bytes_in;
			o->errors += ni->errors;
			o->breaker_trips += ni->breaker_trips;
		}
	}
	pthread_mutex_unlock(&R->mu);
	return true;
}

/* ---------------------------------------------------------------------------------------
 * Setup
 */
int kvtd_remote_init(struct kvtd *d)
{
	const struct kvtd_config *cf = &d->cfg;
	struct kvt_remote_conf rc = {.size = sizeof(rc)};
	struct kvtd_remote *R;
	int ret;

	if (!cf->remote_nodes[0])
		return 0;
	R = calloc(1, sizeof(*R) + cf->remote_threads * sizeof(R->th[0]));
	if (!R)
		return -ENOMEM;
	pthread_mutex_init(&R->mu, NULL);
	pthread_cond_init(&R->cv, NULL);
	R->efd = -1;
	R->nth = cf->remote_threads;
	R->lookup_ns = (uint64_t)cf->remote_lookup_timeout_us * 1000;
	R->get_ns = (uint64_t)cf->remote_get_timeout_us * 1000;
	R->put_ns = (uint64_t)cf->remote_put_timeout_ms * 1000000;
	d->remote = R;
	ret = kvt_chain_parse(cf->remote_codec, &R->chain);
	if (ret < 0) {
		kvtd_log(KVTD_LOG_ERR,
			 "remote.codec = %s: not a codec chain (see codecs/CODECS.md)",
			 cf->remote_codec);
		goto fail;
	}
	if (kvt_chain_flags(R->chain) & KVT_CODEC_DICT) {
		kvtd_log(KVTD_LOG_ERR,
			 "remote.codec = %s: a chain with a dictionary is not "
			 "supported for the remote tier",
			 cf->remote_codec);
		ret = -EINVAL;
		goto fail;
	}
	ret = kvt_chain_parse("raw", &R->raw);
	if (ret < 0)
		goto fail;
	rc.seeds = cf->remote_nodes;
	rc.auth_file = cf->remote_auth_file[0] ? cf->remote_auth_file : NULL;
	rc.ttl_s = cf->remote_ttl;
	for (unsigned t = 0; t < R->nth; t++) {
		R->th[t].R = R;
		ret = kvt_remote_open(&rc, &R->th[t].r);
		if (ret < 0) {
			kvtd_log(KVTD_LOG_ERR, "remote.nodes = %s%s%s: %s", cf->remote_nodes,
				 rc.auth_file ? ", remote.auth_file = " : "",
				 rc.auth_file ? rc.auth_file : "",
				 ret == -EINVAL ? "not a list of host:port" : strerror(-ret));
			goto fail;
		}
	}
	kvtd_log(KVTD_LOG_INFO,
		 "remote tier: %s, codec %s, %u I/O threads, lookup deadline %u us, TTL %u s",
		 cf->remote_nodes, kvt_chain_name(R->chain), R->nth, cf->remote_lookup_timeout_us,
		 cf->remote_ttl);
	return 0;
fail:
	kvtd_remote_fini(d);
	return ret;
}

int kvtd_remote_start(struct kvtd *d)
{
	struct kvtd_remote *R = d->remote;
	struct epoll_event ee = {.events = EPOLLIN};

	if (!R)
		return 0;
	R->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (R->efd < 0)
		return -errno;
	d->remote_ev = (struct ev){EV_REMOTE, NULL};
	ee.data.ptr = &d->remote_ev;
	if (epoll_ctl(d->ep, EPOLL_CTL_ADD, R->efd, &ee) < 0)
		return -errno;
	for (unsigned t = 0; t < R->nth; t++) {
		if (pthread_create(&R->th[t].th, NULL, io_main, &R->th[t]))
			return -EAGAIN;
		R->th[t].started = true;
	}
	return 0;
}

void kvtd_remote_fini(struct kvtd *d)
{
	struct kvtd_remote *R = d->remote;
	struct rjob *j;

	if (!R)
		return;
	pthread_mutex_lock(&R->mu);
	R->stop = true;
	pthread_cond_broadcast(&R->cv);
	pthread_mutex_unlock(&R->mu);
	for (unsigned t = 0; t < R->nth; t++) {
		if (R->th[t].started)
			pthread_join(R->th[t].th, NULL);
		kvt_remote_close(R->th[t].r);
	}
	/* Finished gets are answered; those never run are misses; puts not sent are lost. */
	kvtd_remote_event(d);
	while ((j = q_pop(&R->hi_head, &R->hi_tail))) {
		if (j->kind == RJ_GET)
			kvtd_waiters_ready(d, j->waiter, KVTD_NIL, -ENOENT);
		job_free(j);
	}
	while ((j = q_pop(&R->put_head, &R->put_tail)))
		job_free(j);
	while ((j = q_pop(&R->lk_head, &R->lk_tail)))
		job_free(j);
	if (R->efd >= 0) {
		epoll_ctl(d->ep, EPOLL_CTL_DEL, R->efd, NULL);
		close(R->efd);
	}
	kvt_chain_free(R->chain);
	kvt_chain_free(R->raw);
	pthread_mutex_destroy(&R->mu);
	pthread_cond_destroy(&R->cv);
	free(R);
	d->remote = NULL;
}

#else /* built without hiredis: no remote tier */

int kvtd_remote_init(struct kvtd *d)
{
	if (!d->cfg.remote_nodes[0])
		return 0;
	kvtd_log(KVTD_LOG_ERR,
		 "remote.nodes = %s: kvtierd was built without hiredis (no "
		 "remote tier); install libhiredis-dev and rebuild",
		 d->cfg.remote_nodes);
	return -ENOTSUP;
}

int kvtd_remote_start(struct kvtd *d)
{
	(void)d;
	return 0;
}

void kvtd_remote_fini(struct kvtd *d)
{
	(void)d;
}

bool kvtd_remote_on(const struct kvtd *d)
{
	(void)d;
	return false;
}

void kvtd_remote_put(struct kvtd *d, uint32_t i)
{
	(void)d;
	(void)i;
}

int kvtd_remote_lookup(struct kvtd *d, uint32_t client_id, uint64_t user_data, uint32_t found,
		       uint32_t n, const uint64_t *lohi, uint32_t m, uint64_t fp)
{
	(void)d, (void)client_id, (void)user_data, (void)found, (void)n, (void)lohi, (void)m,
	    (void)fp;
	return -ENOENT;
}

bool kvtd_remote_lookup_pop(struct kvtd *d, uint32_t *client_id, uint64_t *user_data, int *res,
			    uint32_t *n)
{
	(void)d, (void)client_id, (void)user_data, (void)res, (void)n;
	return false;
}

int kvtd_remote_fetch(struct kvtd *d, uint32_t client_id, uint64_t user_data, struct tenant *t,
		      uint64_t lo, uint64_t hi, uint64_t fp, uint32_t max_len)
{
	(void)d, (void)client_id, (void)user_data, (void)t, (void)lo, (void)hi, (void)fp,
	    (void)max_len;
	return -ENOENT;
}

void kvtd_remote_event(struct kvtd *d)
{
	(void)d;
}

void kvtd_remote_sync(struct kvtd *d)
{
	(void)d;
}

bool kvtd_remote_view(struct kvtd *d, struct kvtd_remote_view *v)
{
	(void)d;
	memset(v, 0, sizeof(*v));
	return false;
}
#endif
