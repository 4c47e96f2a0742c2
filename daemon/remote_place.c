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
 * others as soon as the write lands, not only when the local tiers evict it.
 *
 * Delete: kvt_delete's promise (no version of the key is served again) holds with the
 * remote tier on.  A delete (kvtd_remote_delete) takes the key's queued write-behind off
 * the queue and queues a DEL; a thread runs the DEL only once no other thread has a put of
 * that key in flight, so the DEL comes after every write of the key this host started.
 * Until the DEL is acknowledged the key is in the fence, a small set on the loop's side:
 * this host never looks the key up or fetches it remotely, and a fetch that was already
 * on its way when any delete came is not installed.  The fence entry goes when the DEL is
 * acknowledged (and no re-put of the key is in flight), or remote.ttl after the delete
 * when the DEL failed (any copy written before the delete has expired by then; with
 * remote.ttl = 0 it stays until restart).  A key put again while fenced is written with
 * SET without NX, so the new bytes replace an old copy that the DEL may have missed.
 * The fence holds FENCE_MAX keys; a delete that finds it full still queues its DEL, and
 * until that DEL is acknowledged this host fetches nothing remotely (lookups and gets of
 * every key are misses); if such a DEL fails, nothing for remote.ttl.  Safe, never wrong.
 * Fleet semantics: another host learns of no delete (it may serve the key from its own
 * tiers), and one that puts the key later stores it again (SET NX: the first value
 * written wins; keys are token-chain hashes, so a key's bytes are the model's KV of that
 * prefix, the same on every host).
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
#include "remote_int.h"

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
	d->m.remote_deleted_keys = R->nfence;
}

/* The fence (loop side): the entry of key, or NULL. */
static struct fence *fence_find(struct kvtd_remote *R, uint64_t lo, uint64_t hi, uint64_t fp)
{
	for (unsigned k = 0; k < R->nfence; k++) {
		struct fence *f = &R->fence[k];

		if (f->lo == lo && f->hi == hi && f->fp == fp)
			return f;
	}
	return NULL;
}

static void fence_drop(struct kvtd_remote *R, struct fence *f)
{
	*f = R->fence[--R->nfence];
}

/* Entries whose failed DEL's TTL has passed: any copy written before the delete is gone. */
static void fence_expire(struct kvtd_remote *R, uint64_t now)
{
	for (unsigned k = 0; k < R->nfence;) {
		struct fence *f = &R->fence[k];

		if (!f->pending && f->failed && now >= f->expire_ns)
			fence_drop(R, f);
		else
			k++;
	}
}

static uint64_t ttl_end(const struct kvtd_remote *R, uint64_t now)
{
	return R->ttl_ns ? now + R->ttl_ns : UINT64_MAX;
}

/* Whether this host may fetch key remotely now (false: counted as fenced). */
static bool fetch_ok(struct kvtd *d, uint64_t lo, uint64_t hi, uint64_t fp)
{
	struct kvtd_remote *R = d->remote;
	uint64_t now;

	if (!R->nfence && !R->untracked && !R->deny_until_ns)
		return true;
	now = kvt_remote_now_ns();
	if (R->deny_until_ns && now >= R->deny_until_ns)
		R->deny_until_ns = 0;
	fence_expire(R, now);
	if (R->untracked || R->deny_until_ns || fence_find(R, lo, hi, fp)) {
		d->m.remote_fenced_total++;
		return false;
	}
	return true;
}

/* A DEL or a fenced key's re-put came back (loop side). */
static void fence_ack(struct kvtd *d, struct rjob *j)
{
	struct kvtd_remote *R = d->remote;
	struct fence *f = fence_find(R, j->key.key_lo, j->key.key_hi, j->key.fingerprint);
	bool del = j->kind == RJ_DEL;

	if (del && j->err < 0)
		d->m.remote_delete_errors_total++;
	else if (del)
		d->m.remote_deletes_total++;
	if (del && !j->tracked) { /* the fence was full */
		R->untracked--;
		if (j->err < 0)
			R->deny_until_ns = ttl_end(R, kvt_remote_now_ns());
		return;
	}
	if (!f)
		return;
	f->pending--;
	if (del && j->err < 0) {
		f->failed = true;
		f->expire_ns = ttl_end(R, kvt_remote_now_ns());
	}
	if (!f->pending && !f->failed)
		fence_drop(R, f);
}

void kvtd_remote_delete(struct kvtd *d, uint64_t lo, uint64_t hi, uint64_t fp)
{
	struct kvtd_remote *R = d->remote;
	struct rjob *gone = NULL, *j, *del, **pp, *last = NULL;
	struct fence *f;
	bool queued = false;

	if (!R)
		return;
	R->del_gen++; /* a fetch on its way is not installed */
	f = fence_find(R, lo, hi, fp);
	if (!f && R->nfence < FENCE_MAX) {
		f = &R->fence[R->nfence++];
		*f = (struct fence){.lo = lo, .hi = hi, .fp = fp};
	}
	del = calloc(1, sizeof(*del));
	pthread_mutex_lock(&R->mu);
	/* The key's write-behind still queued is not written at all. */
	for (pp = &R->put_head; *pp;) {
		struct rjob *q = *pp;

		if (q->kind == RJ_PUT && q->key.key_lo == lo && q->key.key_hi == hi &&
		    q->key.fingerprint == fp) {
			*pp = q->next;
			R->put_queued--;
			q->next = gone;
			gone = q;
		} else {
			last = q;
			pp = &q->next;
		}
	}
	R->put_tail = last;
	if (del && R->del_queued < FENCE_MAX) {
		del->kind = RJ_DEL;
		del->key = (struct kvt_remote_key){.key_lo = lo, .key_hi = hi, .fingerprint = fp};
		del->tracked = f != NULL;
		q_push(&R->put_head, &R->put_tail, del);
		R->del_queued++;
		queued = true;
		pthread_cond_broadcast(&R->cv);
	}
	pthread_mutex_unlock(&R->mu);
	while ((j = gone)) {
		gone = j->next;
		if (j->tracked && f) /* a re-put of it, fenced before: never written */
			f->pending--;
		job_free(j);
	}
	if (!queued) {
		free(del);
		d->m.remote_delete_errors_total++;
	}
	if (f) {
		f->failed = !queued;
		f->pending += queued;
		f->expire_ns = ttl_end(R, kvt_remote_now_ns());
	} else if (queued) {
		R->untracked++;
	} else {
		R->deny_until_ns = ttl_end(R, kvt_remote_now_ns());
	}
	d->m.remote_deleted_keys = R->nfence;
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
	struct fence *f;
	struct rjob *j;
	bool full;

	/* A block stored encoded (compressed host tier) is its clients' record: the remote
	 * tier's values hold raw blocks, so it stays local (README "Compressed host tier"). */
	if (!R || b->hchain)
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
	j->key = (struct kvt_remote_key){b->key_lo, b->key_hi, b->fingerprint};
	f = fence_find(R, b->key_lo, b->key_hi, b->fingerprint);
	if (f) { /* put again after a delete: replaces what the DEL may have missed */
		j->put.replace = true;
		j->tracked = true;
		f->pending++;
	}
	d->m.remote_puts_queued_total++;
	submit(R, j);
}

int kvtd_remote_lookup(struct kvtd *d, uint32_t client_id, uint64_t user_data, uint32_t found,
		       uint32_t n, const uint64_t *lohi, uint32_t m, uint64_t fp)
{
	struct rjob *j;

	if (!d->remote)
		return -ENOENT;
	/* The suffix up to its first fenced (deleted) key: that one is a miss. */
	for (uint32_t k = 0; k < m; k++) {
		if (!fetch_ok(d, lohi[2 * k], lohi[2 * k + 1], fp))
			m = k;
	}
	if (!m)
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

	if (!d->remote || !fetch_ok(d, lo, hi, fp))
		return -ENOENT;
	j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOENT;
	j->del_gen = d->remote->del_gen;
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
	/* A delete since it was asked: the value read may be the deleted one. */
	if (j->del_gen != d->remote->del_gen)
		return -ENOENT;
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
		if (j->kind != RJ_GET) { /* a DEL, a fenced key's re-put */
			fence_ack(d, j);
			job_free(j);
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
	R->ttl_ns = (uint64_t)cf->remote_ttl * 1000000000;
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
		if (pthread_create(&R->th[t].th, NULL, kvtd_remote_io_main, &R->th[t]))
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

void kvtd_remote_delete(struct kvtd *d, uint64_t lo, uint64_t hi, uint64_t fp)
{
	(void)d, (void)lo, (void)hi, (void)fp;
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
