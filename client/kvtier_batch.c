/* SPDX-License-Identifier: MIT */
/*
 * libkvtier: batches (kvt_put_batch, kvt_get_batch, kvt_get_lease_batch, kvt_lookup_batch).  Many
 * ring entries are pushed at once with one wake-up of the daemon, and completions are matched by
 * user_data as they come back; a put copies each block while the daemon commits the ones
 * before it, a get copies each block as its lease comes back.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvtier_internal.h"

/* Writes one entry (its user_data set) without publishing it; the SQ must have room. */
static void sq_push(struct kvt_client *c, const struct kvt_sqe *s)
{
	memcpy(&c->sqes[c->sq_tail & (c->sq_entries - 1)], s, sizeof(*s));
	c->sq_tail++;
}

/* Publishes what sq_push() wrote and wakes the daemon if it sleeps: one wake-up a batch. */
static void sq_publish(struct kvt_client *c)
{
	kvt_ring_publish(c->sq, c->sq_tail);
	if (kvt_ring_needs_wakeup(c->sq)) {
		uint64_t one = 1;
		ssize_t w = write(c->sq_efd, &one, sizeof(one));
		(void)w;
	}
}

/* ---------------------------------------------------------------------------------------
 * Batches: many ring entries pushed at once, one wake-up, completions matched by
 * user_data (they may come back out of order: a lease may wait for an NVMe read).
 */
enum { B_TODO, B_SENT, B_COPIED, B_DONE };

struct batch {
	struct kvt_client *c;
	uint64_t ud0;	    /* user_data of entry i of the first phase: ud0 + i */
	size_t n;	    /* entries */
	size_t next;	    /* first entry of the first phase not yet pushed */
	size_t *queue;	    /* entries whose second phase waits for room in the SQ */
	size_t qhead, qlen; /* ring of n over queue */
	size_t left;	    /* entries not B_DONE */
	size_t inflight;    /* requests sent whose completion is still to come */
	size_t reaped;	    /* completions of this batch that came back */
	int failed;	    /* the error that ended the batch early, or 0 */
	uint8_t *state;
	int *status;
	bool heap; /* state and queue were allocated (else the caller's room) */
	/* The daemon's SQ head and CQ tail as last read.  While the daemon works on the ring,
	 * every read of them is a cache miss: they are read again only once what the last
	 * read allowed is used up (sq_room, batch_cq_pop). */
	uint32_t sq_head, cq_tail;
	bool unconsumed; /* completions popped whose slots are not given back yet */
};

/* Room for one more entry in the SQ?  -KVT_EPROTOCOL when the daemon's head is absurd. */
static int sq_room(struct batch *b)
{
	struct kvt_client *c = b->c;
	uint32_t pending = c->sq_tail - b->sq_head;

	if (pending < c->sq_entries)
		return 1;
	pending = kvt_ring_pending(c->sq, c->sq_tail);
	if (pending > c->sq_entries) {
		c->broken = true;
		return -KVT_EPROTOCOL;
	}
	b->sq_head = c->sq_tail - pending;
	return pending < c->sq_entries;
}

/*
 * cq_pop() for a batch: the next completion into *q (1), none (0), or -KVT_EPROTOCOL when
 * the daemon's tail is out of range.  The slots go back to the daemon together
 * (batch_cq_consume), before the batch waits or ends.
 */
static int batch_cq_pop(struct batch *b, struct kvt_cqe *q)
{
	struct kvt_client *c = b->c;

	if (b->cq_tail == c->cq_head) {
		uint32_t tail;

		if (cq_tail_read(c, &tail) < 0)
			return -KVT_EPROTOCOL;
		if (tail == c->cq_head)
			return 0;
		b->cq_tail = tail;
	}
	memcpy(q, &c->cqes[c->cq_head & (c->cq_entries - 1)], sizeof(*q));
	c->cq_head++;
	b->unconsumed = true;
	return 1;
}

static void batch_cq_consume(struct batch *b)
{
	if (b->unconsumed) {
		kvt_ring_consume(b->c->cq, b->c->cq_head);
		b->unconsumed = false;
	}
}

/* Batches of up to this many entries keep their bookkeeping on the stack. */
#define BATCH_SMALL 64

struct batch_room {
	uint8_t state[BATCH_SMALL];
	size_t queue[BATCH_SMALL];
};

static int batch_init(struct batch *b, struct kvt_client *c, size_t n, int *status,
		      struct batch_room *room)
{
	memset(b, 0, sizeof(*b));
	b->c = c;
	b->n = b->left = n;
	b->status = status;
	b->cq_tail = c->cq_head;
	b->sq_head = c->sq_tail - c->sq_entries; /* read at the first sq_room() */
	if (room && n <= BATCH_SMALL) {
		memset(room->state, 0, n);
		b->state = room->state;
		b->queue = room->queue;
	} else {
		b->heap = true;
		b->state = calloc(n ? n : 1, 1);
		b->queue = malloc((n ? n : 1) * sizeof(*b->queue));
		if (!b->state || !b->queue) {
			free(b->state);
			free(b->queue);
			return -ENOMEM;
		}
	}
	/* Second-phase entries (commit, release) are ud0 + n + i. */
	b->ud0 = c->next_ud + 1;
	c->next_ud += 2 * (uint64_t)n;
	return 0;
}

static void batch_free(struct batch *b)
{
	if (b->heap) {
		free(b->state);
		free(b->queue);
	}
}

static void batch_done(struct batch *b, size_t i, int res)
{
	b->status[i] = res;
	b->state[i] = B_DONE;
	b->left--;
}

/* Sends the queued second-phase requests the SQ has room for.  Returns 0 or -errno. */
static int batch_send_second(struct batch *b, const struct kvt_sqe *second)
{
	struct kvt_client *c = b->c;
	bool pushed = false;
	int ret = 0;

	while (b->qlen && (ret = sq_room(b)) > 0) {
		size_t i = b->queue[b->qhead];
		struct kvt_sqe s = second[i];

		b->qhead = (b->qhead + 1) % b->n;
		b->qlen--;
		s.user_data = b->ud0 + b->n + i;
		sq_push(c, &s);
		pushed = true;
		if (s.flags & KVT_SQE_F_NO_CQE)
			batch_done(b, i, b->status[i]);
		else
			b->inflight++;
	}
	if (pushed)
		sq_publish(c);
	return ret < 0 ? ret : 0;
}

/*
 * Runs a batch to the end.  first(b, i, sqe) fills entry i's first request; on its
 * completion, reaped(b, i, cqe, sqe) either finishes the entry (batch_done) or fills a
 * second request into sqe and returns 1 (queued, then sent as room allows; with
 * KVT_SQE_F_NO_CQE the entry is done once sent).  When the daemon goes away or a wait times
 * out, the entries not done get that error.  Called with c->lock held.
 */
static void batch_run(struct batch *b, void (*first)(struct batch *, size_t, struct kvt_sqe *),
		      int (*reaped)(struct batch *, size_t, const struct kvt_cqe *,
				    struct kvt_sqe *),
		      struct kvt_sqe *second)
{
	struct kvt_client *c = b->c;
	uint64_t start = mono_us();
	bool asleep = false;
	int ret = 0;

	while (b->left) {
		bool pushed = false;

		/* Second phases first: they finish entries and free the daemon's holds. */
		ret = batch_send_second(b, second);
		while (ret >= 0 && b->next < b->n && (ret = sq_room(b)) > 0) {
			struct kvt_sqe s;

			memset(&s, 0, sizeof(s));
			first(b, b->next, &s);
			s.user_data = b->ud0 + b->next;
			b->state[b->next++] = B_SENT;
			b->inflight++;
			sq_push(c, &s);
			pushed = true;
			/* The first entry goes out at once: the daemon works on it while we
			 * write the others. */
			if (b->next == 1) {
				sq_publish(c);
				pushed = false;
			}
		}
		if (pushed)
			sq_publish(c);
		if (ret < 0 || !b->left)
			break;
		struct kvt_cqe q;
		int got = 0;
		while ((ret = batch_cq_pop(b, &q)) > 0) {
			uint64_t k = q.user_data - b->ud0;

			got++;
			if (q.user_data < b->ud0 || k >= 2 * (uint64_t)b->n)
				continue; /* of a request that timed out earlier */
			size_t i = (size_t)(k % b->n);
			/* Only the completion each entry waits for counts (a daemon may be
			 * hostile and answer twice). */
			if (b->state[i] != (k >= b->n ? B_COPIED : B_SENT))
				continue;
			b->inflight--;
			b->reaped++;
			if (k >= b->n) { /* the second phase's completion */
				batch_done(b, i, q.res < 0 ? q.res : b->status[i]);
				continue;
			}
			struct kvt_sqe none, *s2 = second ? &second[i] : &none;
			memset(s2, 0, sizeof(*s2));
			if (reaped(b, i, &q, s2) > 0 && second) {
				b->state[i] = B_COPIED;
				b->queue[(b->qhead + b->qlen++) % b->n] = i;
				/* A commit goes out at once: the daemon commits this block
				 * while we copy the next one.  Releases, which nobody waits
				 * for, go out together once the completions at hand are
				 * reaped (one publish and fence for all). */
				if (!(s2->flags & KVT_SQE_F_NO_CQE) &&
				    (ret = batch_send_second(b, second)) < 0)
					break;
			}
		}
		batch_cq_consume(b);
		if (ret < 0)
			break;
		if (got) {
			start = mono_us(); /* the timeout counts from the last progress */
			if (asleep) {
				kvt_ring_awake(c->cq);
				asleep = false;
			}
			continue;
		}
		if ((b->qlen || b->next < b->n) && sq_room(b) > 0)
			continue;
		if (b->inflight) {
			ret = kvtc_cq_wait(c, start, &asleep);
			if (ret < 0)
				break;
			continue;
		}
		/* The SQ is full of releases, which post no completion to wait for: nudge the
		 * daemon and let it run. */
		uint64_t one = 1;
		ssize_t w = write(c->sq_efd, &one, sizeof(one));
		(void)w;
		if (c->timeout_ms >= 0 && mono_us() - start > (uint64_t)c->timeout_ms * 1000) {
			ret = -ETIMEDOUT;
			break;
		}
		sched_yield();
	}
	batch_cq_consume(b);
	if (asleep)
		kvt_ring_awake(c->cq);
	if (ret < 0) {
		b->failed = ret;
		for (size_t i = 0; i < b->n; i++) {
			if (b->state[i] != B_DONE)
				batch_done(b, i, ret);
		}
	}
}

struct put_ctx {
	struct batch b;
	int layout;
	const struct kvt_key *keys;
	const void *const *data;
	const uint32_t *pos;
	size_t len;
	/* compressed host tier: the layout's chain (NULL: raw), and each entry's record from
	 * its reservation's request until its copy into the arena (NULL: sent raw) */
	const struct kvt_chain *chain;
	uint8_t **enc;
	uint32_t *enc_len;
};

static void put_first(struct batch *b, size_t i, struct kvt_sqe *s)
{
	struct put_ctx *p = (struct put_ctx *)b;

	s->op = KVT_OP_RESERVE;
	s->layout = (uint16_t)p->layout;
	s->len = (uint32_t)p->len;
	s->key_lo = p->keys[i].lo;
	s->key_hi = p->keys[i].hi;
	if (p->chain) {
		/* Encoded while the daemon reserves the entries before it. */
		struct kvt_codec_geom g;
		size_t cap;
		ssize_t e = -ENOMEM;

		free(p->enc[i]); /* of a first try that never came back (batch_exec) */
		p->enc[i] = NULL;
		kvtc_geom(&b->c->layouts[p->layout], p->pos ? p->pos[i] : KVT_POS_UNKNOWN, &g);
		cap = kvt_chain_max_encoded_size(p->chain, &g);
		p->enc[i] = cap ? malloc(cap) : NULL;
		if (p->enc[i])
			e = kvt_chain_encode(p->chain, &g, p->data[i], p->len, p->enc[i], cap);
		if (e <= 0) { /* the chain refuses it, or no memory: stored raw */
			free(p->enc[i]);
			p->enc[i] = NULL;
			return;
		}
		p->enc_len[i] = (uint32_t)e;
		s->len = (uint32_t)e;
		s->chain = kvt_chain_id(p->chain);
		s->raw_len = (uint32_t)p->len;
	}
}

static int put_reaped(struct batch *b, size_t i, const struct kvt_cqe *q, struct kvt_sqe *s)
{
	struct put_ctx *p = (struct put_ctx *)b;
	struct kvt_client *c = b->c;
	const void *src = p->enc && p->enc[i] ? p->enc[i] : p->data[i];
	size_t len = p->enc && p->enc[i] ? p->enc_len[i] : p->len;
	int ret = 1;

	if (q->res == -EEXIST) {
		batch_done(b, i, 1); /* as kvt_put: already stored, nothing written */
		ret = 0;
	} else if (q->res < 0) {
		batch_done(b, i, q->res);
		ret = 0;
	} else if ((size_t)q->res != len || check_extent(c, q->off, len) < 0) {
		c->broken = true; /* a daemon that answers so is not to be trusted further */
		batch_done(b, i, -KVT_EPROTOCOL);
		ret = 0;
	}
	if (!ret)
		goto out;
	kvtc_populate(c, q->off, len);
	kvtc_copy_block(c->arena + q->off, src, len);
	s->op = KVT_OP_COMMIT;
	s->handle = q->handle;
	s->arg = !p->pos || p->pos[i] == KVT_POS_UNKNOWN ? 0 : (uint64_t)p->pos[i] + 1;
	b->status[i] = 0;
out:
	if (p->enc) {
		free(p->enc[i]);
		p->enc[i] = NULL;
	}
	return ret;
}

/* Arguments every batch call checks alike. */
static int batch_args(struct kvt_client *c, int layout, const struct kvt_key *keys,
		      const void *ptrs, size_t n)
{
	int ret = check_client(c);

	if (ret < 0)
		return ret;
	if (n && (!keys || !ptrs))
		return -EINVAL;
	if (n > INT32_MAX)
		return -E2BIG;
	if (layout < 0 || (uint32_t)layout >= c->nlayouts)
		return -KVT_ENOLAYOUT;
	return 0;
}

/* Counts the entries with status >= 0. */
static int batch_count(const int *status, size_t n)
{
	int k = 0;

	for (size_t i = 0; i < n; i++)
		k += status[i] >= 0;
	return k;
}

/*
 * Takes c->lock and reconnects a broken client first, as one request would.  ask: a daemon
 * that hung up since the last request is noticed here, before anything is sent (a system
 * call); kvt_put_batch and kvt_get_batch do without, and learn it from a batch of which
 * nothing came back (batch_exec).
 */
static int batch_lock(struct kvt_client *c, bool ask)
{
	pthread_mutex_lock(&c->lock);
	if (ask && !c->broken && c->sock >= 0) {
		struct pollfd p = {c->sock, POLLRDHUP, 0};

		if (poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)))
			c->broken = true;
	}
	if (c->broken && kvtc_reattach_locked(c) < 0) {
		pthread_mutex_unlock(&c->lock);
		return -KVT_EDAEMON;
	}
	return 0;
}

/*
 * The two-step batch of kvt_put_batch and kvt_get_batch, its arguments checked: n entries
 * into status (or a scratch array when NULL) through b, a batch of c not yet initialized.
 * Returns how many entries succeeded, or a negative error of the batch as a whole.
 *
 * A batch is not asked again of a restarted daemon when part of it may have been done.  But
 * when the daemon was found gone and not one completion of the batch came back, only first
 * steps (reservations, leases) reached it, which a daemon that went away voids: the batch
 * goes once to its successor, as one RESERVE or LEASE would.  That is how a batch learns of
 * a daemon that hung up since the last request, without a system call to ask first.
 */
static int batch_exec(struct kvt_client *c, struct batch *b, size_t n, int *status,
		      void (*first)(struct batch *, size_t, struct kvt_sqe *),
		      int (*reaped)(struct batch *, size_t, const struct kvt_cqe *,
				    struct kvt_sqe *))
{
	struct kvt_sqe small[BATCH_SMALL], *second = small;
	struct batch_room room;
	int small_st[BATCH_SMALL], *st = status, ret;
	bool again;

	if (!n)
		return 0;
	if (!st)
		st = n <= BATCH_SMALL ? small_st : malloc(n * sizeof(*st));
	if (!st)
		return -ENOMEM;
	if (n > BATCH_SMALL && !(second = malloc(n * sizeof(*second)))) {
		ret = -ENOMEM;
		goto out;
	}
	ret = batch_lock(c, false);
	if (ret < 0)
		goto out;
	for (int tries = 0;; tries++) {
		ret = batch_init(b, c, n, st, &room);
		if (ret < 0)
			break;
		batch_run(b, first, reaped, second);
		batch_free(b);
		again = !tries && b->failed == -KVT_EDAEMON && !b->reaped;
		if (!again || kvtc_reattach_locked(c) < 0)
			break;
	}
	pthread_mutex_unlock(&c->lock);
	if (ret == 0)
		ret = batch_count(st, n);
out:
	if (second != small)
		free(second);
	if (st != status && st != small_st)
		free(st);
	return ret;
}

KVT_API int kvt_put_batch(struct kvt_client *c, int layout, const struct kvt_key *keys,
			  const void *const *data, const uint32_t *first_token, size_t len,
			  size_t n, int *status)
{
	struct put_ctx p = {
	    .layout = layout, .keys = keys, .data = data, .pos = first_token, .len = len};
	int *st = status, ret = batch_args(c, layout, keys, data, n);

	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	if (ret < 0)
		return ret;
	if (!len || len > kvt_layout_block_bytes(&c->layouts[layout]))
		return -EINVAL;
	if (len > UINT32_MAX)
		return -E2BIG;
	for (size_t i = 0; i < n; i++) {
		if (!data[i])
			return -EINVAL;
	}
	pthread_mutex_lock(&c->lock);
	if (len == kvt_layout_block_bytes(&c->layouts[layout]))
		p.chain = c->put_chain[layout];
	pthread_mutex_unlock(&c->lock);
	if (p.chain) {
		p.enc = calloc(n, sizeof(*p.enc));
		p.enc_len = calloc(n, sizeof(*p.enc_len));
		st = status ? status : malloc(n * sizeof(*st));
		if (!p.enc || !p.enc_len || !st) {
			ret = -ENOMEM;
			goto out;
		}
	}
	ret = batch_exec(c, &p.b, n, st, put_first, put_reaped);
	/* Entries the daemon refused for the chain (-ESTALE: it names another one for this
	 * layout now): one by one, kvt_put_at asks which. */
	for (size_t i = 0; ret >= 0 && p.chain && i < n; i++) {
		if (st[i] == -ESTALE) {
			st[i] = kvt_put_at(c, layout, &keys[i],
					   first_token ? first_token[i] : KVT_POS_UNKNOWN, data[i],
					   len);
			ret += st[i] >= 0;
		}
	}
out:
	if (p.enc) {
		for (size_t i = 0; i < n; i++)
			free(p.enc[i]); /* entries a failed batch never reaped */
	}
	free(p.enc);
	free(p.enc_len);
	if (st != status)
		free(st);
	return ret;
}

/* Gets and leases: one LEASE a key; the block's arena extent checked when it comes. */
struct lease_keys {
	struct batch b;
	int layout;
	const struct kvt_key *keys;
};

struct lease_ctx {
	struct lease_keys k;
	struct kvt_lease *leases;
};

static void lease_first(struct batch *b, size_t i, struct kvt_sqe *s)
{
	struct lease_keys *g = (struct lease_keys *)b;

	s->op = KVT_OP_LEASE;
	s->layout = (uint16_t)g->layout;
	s->key_lo = g->keys[i].lo;
	s->key_hi = g->keys[i].hi;
}

/* true when LEASE completion q of entry i gave a block inside the arena (its pages populated);
 * else entry i is done with the error. */
static bool lease_granted(struct batch *b, size_t i, const struct kvt_cqe *q)
{
	struct kvt_client *c = b->c;

	if (q->res < 0) {
		batch_done(b, i, q->res);
		return false;
	}
	if (check_extent(c, q->off, (uint64_t)q->res) < 0) {
		c->broken = true;
		batch_done(b, i, -KVT_EPROTOCOL);
		return false;
	}
	kvtc_populate(c, q->off, (uint64_t)q->res);
	return true;
}

static int lease_reaped(struct batch *b, size_t i, const struct kvt_cqe *q, struct kvt_sqe *s)
{
	struct lease_ctx *g = (struct lease_ctx *)b;
	struct kvt_client *c = b->c;
	struct kvt_lease *l = &g->leases[i];
	ssize_t raw;

	if (!lease_granted(b, i, q))
		return 0;
	raw = kvtc_raw_len(q->flags, c->arena + q->off, (size_t)q->res);
	if (raw < 0) {
		/* Not the record its chain makes (as kvt_get_lease): no lease on bytes nobody
		 * can read; it goes back without a completion. */
		b->status[i] = (int)raw;
		s->op = KVT_OP_RELEASE;
		s->flags = KVT_SQE_F_NO_CQE;
		s->handle = q->handle;
		return 1;
	}
	l->data = c->arena + q->off;
	l->len = (size_t)q->res;
	l->handle = q->handle;
	l->raw_len = (size_t)raw;
	l->chain_id = q->flags;
	l->reserved = 0;
	batch_done(b, i, 0);
	return 0;
}

/* The leases of keys[0..n) for one round trip, the arguments checked (leases[i].data NULL
 * where none is held): kvt_get_lease_batch's, and kvt_get_batch's first step. */
static int lease_many(struct kvt_client *c, int layout, const struct kvt_key *keys,
		      struct kvt_lease *leases, size_t n, int *status)
{
	struct lease_ctx g = {.k = {.layout = layout, .keys = keys}, .leases = leases};

	for (size_t i = 0; i < n; i++)
		leases[i].data = NULL;
	return batch_exec(c, &g.k.b, n, status, lease_first, lease_reaped);
}

KVT_API int kvt_get_lease_batch(struct kvt_client *c, int layout, const struct kvt_key *keys,
				struct kvt_lease *leases, size_t n, int *status)
{
	int ret = batch_args(c, layout, keys, leases, n);

	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	return ret < 0 ? ret : lease_many(c, layout, keys, leases, n, status);
}

/*
 * kvt_get_batch: the blocks of a chunk are leased first, all of them, then copied (decoded)
 * and given back.  Copying each block as its lease came back (the first way) ran the copies
 * beside the daemon's work on the next leases, and on a 2-core machine the two slowed each
 * other: 16 KiB blocks 4.4-4.9 GB/s that way against 5.6 GB/s leases first (session 9).
 */
#define GET_CHUNK 64u

KVT_API int kvt_get_batch(struct kvt_client *c, int layout, const struct kvt_key *keys,
			  void *const *bufs, size_t cap, size_t n, int *status)
{
	int ret = batch_args(c, layout, keys, bufs, n), got = 0;

	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	if (ret < 0)
		return ret;
	for (size_t i = 0; i < n; i++) {
		if (!bufs[i] && cap)
			return -EINVAL;
	}
	for (size_t i0 = 0; i0 < n; i0 += GET_CHUNK) {
		size_t m = n - i0 < GET_CHUNK ? n - i0 : GET_CHUNK;
		struct kvt_lease ls[GET_CHUNK];
		int st[GET_CHUNK];

		ret = lease_many(c, layout, keys + i0, ls, m, st);
		for (size_t j = 0; j < m; j++) {
			ssize_t r = ret < 0 ? ret : st[j];

			if (ls[j].data) {
				/* a raw block is copied, a record decoded */
				r = kvtc_decode(c, ls[j].chain_id, ls[j].data, ls[j].len,
						bufs[i0 + j], cap, false);
				kvtc_lease_release_quiet(c, &ls[j]);
			}
			if (status)
				status[i0 + j] = (int)r;
			got += r >= 0;
		}
		if (ret < 0)
			return got ? got : ret; /* the batch as a whole failed: no later chunk */
	}
	return got;
}

struct lookup_ctx {
	struct batch b;
	int layout;
	size_t base; /* key index of this round's entry 0 */
};

static void lookup_first(struct batch *b, size_t i, struct kvt_sqe *s)
{
	struct lookup_ctx *l = (struct lookup_ctx *)b;

	s->op = KVT_OP_LOOKUP;
	s->layout = (uint16_t)l->layout;
	s->len = 1;
	s->arg = (uint64_t)i * sizeof(struct kvt_key); /* its key in the scratch area */
}

static int lookup_reaped(struct batch *b, size_t i, const struct kvt_cqe *q, struct kvt_sqe *s)
{
	(void)s;
	batch_done(b, i, q->res < 0 ? q->res : q->res > 1 ? -KVT_EPROTOCOL : q->res);
	return 0;
}

KVT_API int kvt_lookup_batch(struct kvt_client *c, int layout, const struct kvt_key *keys, size_t n,
			     uint8_t *present)
{
	int *st = NULL, ret = batch_args(c, layout, keys, present, n), found = 0;

	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	if (ret < 0)
		return ret;
	if (!n)
		return 0;
	st = malloc((n < KVT_LOOKUP_MAX ? n : KVT_LOOKUP_MAX) * sizeof(*st));
	if (!st)
		return -ENOMEM;
	ret = batch_lock(c, true);
	if (ret < 0)
		goto out;
	/* One entry per key, each naming its key in the scratch area: rounds of as many keys
	 * as the scratch area holds. */
	for (size_t done = 0; done < n && ret >= 0;) {
		size_t m = n - done < KVT_LOOKUP_MAX ? n - done : KVT_LOOKUP_MAX;
		struct lookup_ctx l = {.layout = layout, .base = done};

		ret = batch_init(&l.b, c, m, st, NULL);
		if (ret < 0)
			break;
		memcpy(c->scratch, keys + done, m * sizeof(*keys));
		batch_run(&l.b, lookup_first, lookup_reaped, NULL);
		batch_free(&l.b);
		for (size_t i = 0; i < m && ret >= 0; i++) {
			if (st[i] < 0) {
				ret = st[i];
			} else {
				present[done + i] = (uint8_t)(st[i] > 0);
				found += st[i] > 0;
			}
		}
		done += m;
	}
	pthread_mutex_unlock(&c->lock);
out:
	free(st);
	return ret < 0 ? ret : found;
}
