/* SPDX-License-Identifier: MIT */
/*
 * remote_io.c - the remote tier's I/O threads (kvtierd, issue 14): each owns one
 * struct kvt_remote (a connection per node) and takes jobs from the queues of remote_int.h:
 * lookups and gets first, then write-behind puts in pipelined batches and DELs, each under
 * its deadline; finished jobs go back to the event loop through the eventfd.  What the loop
 * does with them is remote_place.c's.
 */
#ifdef KVT_HAVE_REMOTE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "remote_int.h"

/* ---------------------------------------------------------------------------------------
 * I/O threads
 */
static void run_puts(struct rthread *th, struct rjob **v, unsigned n)
{
	struct kvtd_remote *R = th->R;
	struct kvt_remote_put p[PUT_BATCH];
	void *enc[PUT_BATCH] = {0};
	unsigned k = 0, vi[PUT_BATCH];
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
			j->err = -EIO;
			errs++;
			continue;
		}
		vi[k] = i;
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
		v[vi[i]]->err = p[i].res < 0 ? p[i].res : 0;
		free(enc[i]);
	}
	pthread_mutex_lock(&R->mu);
	R->puts += ok;
	R->put_bytes += bytes;
	R->put_errors += errs;
	pthread_mutex_unlock(&R->mu);
}

static void run_del(struct rthread *th, struct rjob *j)
{
	int res = -ETIMEDOUT;

	kvt_remote_del(th->r, &j->key, &res, 1, kvt_remote_now_ns() + th->R->put_ns);
	j->err = res;
}

/* Whether another thread is writing a put of j's key (under R->mu). */
static bool put_in_flight(const struct kvtd_remote *R, const struct rthread *me,
			  const struct rjob *j)
{
	for (unsigned t = 0; t < R->nth; t++) {
		const struct rthread *th = &R->th[t];

		for (unsigned k = 0; th != me && k < th->nbusy; k++) {
			const struct kvt_remote_key *b = &th->busy[k]->key;

			if (b->key_lo == j->key.key_lo && b->key_hi == j->key.key_hi &&
			    b->fingerprint == j->key.fingerprint)
				return true;
		}
	}
	return false;
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

void *kvtd_remote_io_main(void *arg)
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
		if (!j && R->put_head->kind == RJ_DEL) {
			/* After every put of the key that another thread is writing. */
			j = q_pop(&R->put_head, &R->put_tail);
			R->del_queued--;
			while (!R->stop && put_in_flight(R, th, j))
				pthread_cond_wait(&R->cv, &R->mu);
		} else if (!j) {
			/* Puts up to the next DEL (which runs alone, after them). */
			while (n < PUT_BATCH && R->put_head && R->put_head->kind == RJ_PUT)
				v[n++] = q_pop(&R->put_head, &R->put_tail);
			R->put_queued -= n;
			memcpy(th->busy, v, n * sizeof(v[0]));
			th->nbusy = n;
		}
		pthread_mutex_unlock(&R->mu);
		if (j && j->kind == RJ_LOOKUP)
			run_lookup(th, j);
		else if (j && j->kind == RJ_DEL)
			run_del(th, j);
		else if (j)
			run_get(th, j);
		else
			run_puts(th, v, n);
		snapshot(th);
		pthread_mutex_lock(&R->mu);
		th->nbusy = 0;
		for (unsigned k = 0; k < n; k++) {
			if (v[k]->tracked) { /* a re-put of a fenced key: the loop counts it */
				free(v[k]->raw);
				v[k]->raw = NULL;
				q_push(&R->done_head, &R->done_tail, v[k]);
			} else {
				job_free(v[k]);
			}
		}
		if (n)
			pthread_cond_broadcast(&R->cv); /* a DEL may wait for these */
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

#endif /* KVT_HAVE_REMOTE */
