/* SPDX-License-Identifier: MIT */
/*
 * nvme_io.c - the NVMe tier's requests from read()/write()/free() to done(): queue slots and
 * the backlog, hand-over to the engine, completion (counts, extent states, the salt taken
 * off again), invalidation of freed extents, complete(), and the waits of alloc() and
 * settle().  Loop thread only, but nv_efd_signal() (any thread).
 */
#define _GNU_SOURCE
#include "nvme_internal.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

/* ---- lists ---- */

void nv_list_add(struct nv_list *l, struct kvt_tier_io *io)
{
	io->tier_priv[1] = 0;
	if (l->tail)
		l->tail->tier_priv[1] = (uintptr_t)io;
	else
		l->head = io;
	l->tail = io;
}

struct kvt_tier_io *nv_list_pop(struct nv_list *l)
{
	struct kvt_tier_io *io = l->head;

	if (io) {
		l->head = (struct kvt_tier_io *)io->tier_priv[1];
		if (!l->head)
			l->tail = NULL;
	}
	return io;
}

void nv_efd_signal(struct kvt_tier *t)
{
	uint64_t one = 1;

	/* A full counter (never in practice) still leaves the fd readable. */
	if (write(t->efd, &one, sizeof(one)) < 0) {
	}
}

/* Queues the completion of a request that never reached the device. */
static void finish_early(struct kvt_tier *t, struct kvt_tier_io *io, int res)
{
	io->res = res;
	nv_list_add(&t->done_now, io);
	nv_efd_signal(t);
}

/* Hands a request to the engine (or the backlog when the queue is full). */
void nv_start(struct kvt_tier *t, struct kvt_tier_io *io, bool more)
{
	uint32_t len = rq_xfer(io);
	bool wr = rq_op(io) != RQ_READ;
	int r;

	if (!nv_room(t, io)) {
		nv_list_add(&t->backlog, io);
		return;
	}
	io->tier_priv[0] |= RQ_STARTED;
	t->inflight++;
	if (!wr)
		t->rd_inflight++;
	r = hook(t, wr ? KVT_TIER_OP_WRITE : KVT_TIER_OP_READ, io->loc.off, len);
	if (r < 0) {
		finish_early(t, io, r);
		return;
	}
	if (r > 0 && wr && (uint32_t)r < len) {
		/* Torn write for tests: part of the record reaches the medium, then EIO. */
		uint32_t part = (uint32_t)r / NV_PAGE * NV_PAGE;

		if (part)
			nv_pio_full(t->files[io->loc.file].fd, io->buf, part, io->loc.off, true);
		finish_early(t, io, -EIO);
		return;
	}
	if (wr && (t->flags & KVT_TIER_F_FSYNC)) {
		r = hook(t, KVT_TIER_OP_FSYNC, io->loc.off, len);
		if (r < 0)
			io->tier_priv[0] |= (uintptr_t)(-r & 0xffff) << RQ_ERR_SHIFT;
	}
	t->eng->start(t, io, more);
}

static void inval_done(struct kvt_tier_io *io)
{
	struct nv_inval *iv = (struct nv_inval *)io;
	struct kvt_tier *t = iv->t;
	struct nv_ext *e =
	    nv_map_get(&t->map, ext_key(io->loc.file, (io->loc.off - NV_DATA_OFF) / NV_PAGE));

	if (e) {
		e->inval = 0;
		if (io->res >= 0) {
			nv_release(t, e);
		} else {
			/* Pages that may still hold a valid record are never reused. */
			nv_quarantine_freeing(t, e);
			nv_log(t, LOG_ERR,
			       "file %u: invalidating record at %llu failed: %s; %u pages withheld",
			       io->loc.file, (unsigned long long)io->loc.off, strerror(-io->res),
			       e->npages);
		}
	}
	free(iv);
}

/* Completion of any request, on the event-loop thread. */
void nv_finish(struct kvt_tier *t, struct kvt_tier_io *io, int res)
{
	unsigned op = rq_op(io);
	int ferr = (int)((io->tier_priv[0] >> RQ_ERR_SHIFT) & 0xffff);
	struct nv_file *f = &t->files[io->loc.file];
	struct nv_ext *e;

	nv_unstart(t, io);
	if (res >= 0 && ferr)
		res = -ferr;
	if (op == RQ_INVAL) {
		if (res < 0)
			t->st.write_errors++;
		io->res = res;
		io->done(io);
		return;
	}
	/* A request settle() cancelled: its extent is gone, maybe reused already. */
	e = io->tier_priv[0] & RQ_DETACHED
		? NULL
		: nv_map_get(&t->map, ext_key(io->loc.file, (io->loc.off - NV_DATA_OFF) / NV_PAGE));
	if (op == RQ_WRITE) {
		struct kvt_record_hdr *h = io->buf;

		h->crc ^= f->salt; /* give the caller its buffer back as it was */
		if (res >= 0) {
			res = (int)io->len;
			t->st.bytes_written += io->len;
		} else if (res != -ECANCELED) {
			t->st.write_errors++;
		}
		if (e && e->state == EXT_WRITING) {
			e->state = res >= 0 ? EXT_VALID : EXT_FAILED;
			if (res >= 0)
				t->st.records++;
		}
	} else {
		if (res >= 0 && !(io->tier_priv[0] & RQ_VERIFIED))
			res = nv_read_verify(t, io);
		if (res >= 0)
			t->st.bytes_read += io->len;
		else if (res == -EBADMSG)
			t->st.corrupt_records++;
		else if (res != -ECANCELED)
			t->st.read_errors++;
	}
	io->res = res;
	if (e) {
		e->inflight--;
		if (e->state == EXT_FREEING && !e->inflight)
			nv_free_ext(t, e);
	}
	if (t->defer_user)
		nv_list_add(&t->deferred, io);
	else
		io->done(io);
}

/* Pages back to the allocator; the entry leaves the map. */
void nv_release(struct kvt_tier *t, struct nv_ext *e)
{
	unsigned fi = (unsigned)((e->key - 1) >> 48);
	uint64_t page = (e->key - 1) & ((1ull << 48) - 1);

	if (e->state == EXT_FREEING) {
		nv_fq_del(t, e);
		t->freeing--;
		t->freeing_pages -= e->npages;
	}
	nv_alloc_put(&t->files[fi].alloc, page, e->npages);
	nv_map_del(&t->map, e);
}

/* The extent is FREEING with no I/O in flight: invalidate (if it may hold a record), then
 * release. */
void nv_free_ext(struct kvt_tier *t, struct nv_ext *e)
{
	struct nv_inval *iv;
	unsigned fi = (unsigned)((e->key - 1) >> 48);
	uint64_t page = (e->key - 1) & ((1ull << 48) - 1);

	if (!e->written) {
		nv_release(t, e);
		return;
	}
	iv = calloc(1, sizeof(*iv));
	if (!iv) {
		nv_quarantine_freeing(t, e);
		return;
	}
	iv->t = t;
	iv->io.loc.file = (uint16_t)fi;
	iv->io.loc.off = NV_DATA_OFF + page * NV_PAGE;
	iv->io.loc.len = NV_PAGE;
	iv->io.buf = t->zero_page;
	iv->io.len = NV_PAGE;
	iv->io.done = inval_done;
	iv->io.tier_priv[0] = RQ_INVAL;
	e->inval = 1;
	nv_start(t, &iv->io, true);
}

/* Reaps every completion available now (engine, early failures), then refills the queue. */
static void reap_all(struct kvt_tier *t, int *n)
{
	struct kvt_tier_io *io;
	struct nv_list l;

	t->eng->reap(t, n);
	/* In io_uring mode the verifiers' verdicts (pread workers deliver theirs themselves). */
	nv_verify_reap(t, n);
	l = t->done_now;
	t->done_now.head = t->done_now.tail = NULL;
	while ((io = nv_list_pop(&l))) {
		nv_finish(t, io, io->res);
		(*n)++;
	}
	while (t->backlog.head && nv_room(t, t->backlog.head))
		nv_start(t, nv_list_pop(&t->backlog), true);
	t->eng->flush(t);
}

int nvme_complete(struct kvt_tier *t)
{
	struct kvt_tier_io *io;
	struct nv_list l;
	uint64_t v;
	int n = 0;

	if (!t || t->magic != NV_TIER_MAGIC)
		return -EINVAL;
	/* Reset the counter before reaping so that a completion racing with us re-arms it. */
	if (read(t->efd, &v, sizeof(v)) < 0) {
	}
	l = t->deferred;
	t->deferred.head = t->deferred.tail = NULL;
	while ((io = nv_list_pop(&l))) {
		io->done(io);
		n++;
	}
	reap_all(t, &n);
	return n;
}

static void wait_some(struct kvt_tier *t);

/*
 * Freed slots return to the allocator only once their invalidation write is done.  When an
 * alloc() finds no room while some are on their way, it waits for them here: completions
 * reaped meanwhile are finished, but their done() callbacks are held for the next
 * complete() (alloc() may run inside a callback; the caller's state must not change under
 * it).  Blocks for at most the I/O already queued.
 */
void nv_drain_freeing(struct kvt_tier *t)
{
	bool old = t->defer_user;

	t->defer_user = true;
	while (t->freeing && (t->inflight || t->verifying || t->backlog.head || t->done_now.head))
		wait_some(t);
	t->defer_user = old;
	if (t->deferred.head)
		nv_efd_signal(t); /* the held callbacks: the event loop must come back */
}

/* Waits for some completion and reaps what came (callbacks held while defer_user). */
static void wait_some(struct kvt_tier *t)
{
	int n = 0;

	if (!t->eng->wait(t) && !t->done_now.head) {
		struct pollfd pfd = {.fd = t->efd, .events = POLLIN};
		uint64_t v;

		poll(&pfd, 1, 10);
		if (read(t->efd, &v, sizeof(v)) < 0) {
		}
	}
	reap_all(t, &n);
}

/*
 * Takes the requests on extent e that never reached the device out of the backlog: reads
 * and writes complete with -ECANCELED (done() runs from complete()), a queued
 * invalidation is dropped (the caller invalidates now).
 */
static void cancel_queued(struct kvt_tier *t, struct nv_ext *e)
{
	uint64_t off = NV_DATA_OFF + ext_page(e) * NV_PAGE;
	unsigned fi = ext_file(e);
	struct nv_list keep = {0};
	struct kvt_tier_io *io;

	while ((io = nv_list_pop(&t->backlog))) {
		if (io->loc.file != fi || io->loc.off != off) {
			nv_list_add(&keep, io);
			continue;
		}
		if (rq_op(io) == RQ_INVAL) {
			e->inval = 0;
			free((struct nv_inval *)io);
			continue;
		}
		if (rq_op(io) == RQ_WRITE)
			e->written = 0; /* a slot is written once: this write never started */
		io->tier_priv[0] |= RQ_DETACHED;
		e->inflight--;
		finish_early(t, io, -ECANCELED);
	}
	t->backlog = keep;
}

/*
 * Makes the invalidation of one freed extent durable now (loop thread, blocking): cancels
 * what is queued on it, waits for what is on the device, then zeroes its first page
 * synchronously (and fdatasyncs with KVT_TIER_F_FSYNC).  0, or -errno when the record
 * may still be found at recovery (the pages are quarantined).
 */
static int settle_ext(struct kvt_tier *t, uint64_t ek)
{
	bool old = t->defer_user;
	struct nv_ext *e;
	int r = 0;

	t->defer_user = true;
	while ((e = nv_map_get(&t->map, ek)) && e->state == EXT_FREEING) {
		cancel_queued(t, e);
		if (!e->inflight && !e->inval)
			break;
		wait_some(t);
	}
	t->defer_user = old;
	if (t->deferred.head || t->done_now.head)
		nv_efd_signal(t); /* held callbacks: the event loop must come back */
	if (!e)
		return 0; /* invalidated and released meanwhile */
	if (e->state == EXT_QUARANTINE)
		return -EIO;
	if (e->state != EXT_FREEING)
		return 0;
	if (e->written) {
		unsigned fi = ext_file(e);
		uint64_t page = ext_page(e);

		r = nv_inval_sync(t, fi, page);
		if (r >= 0 && (t->flags & KVT_TIER_F_FSYNC)) {
			r = hook(t, KVT_TIER_OP_FSYNC, NV_DATA_OFF + page * NV_PAGE, NV_PAGE);
			if (r >= 0 && fdatasync(t->files[fi].fd) < 0)
				r = -errno;
		}
		if (r < 0) {
			t->st.write_errors++;
			nv_quarantine_freeing(t, e);
			nv_log(t, LOG_ERR,
			       "file %u: invalidating record at page %llu failed: %s; %u pages "
			       "withheld",
			       fi, (unsigned long long)page, strerror(-r), e->npages);
			return r;
		}
	}
	nv_release(t, e);
	return 0;
}

int nvme_settle(struct kvt_tier *t, uint64_t key_lo, uint64_t key_hi)
{
	uint32_t kh = key_hash(key_lo, key_hi);
	uint64_t *ks = NULL;
	size_t n = 0, cap = 0;
	int ret = 0;

	if (!t || t->magic != NV_TIER_MAGIC)
		return -EINVAL;
	if (!t->scanned || (!t->fq_lost && !t->fcount[kh % NV_FBUCKETS]))
		return 0;
	/* Collect first: settling changes the list. */
	for (size_t i = 0; i < (t->fq_lost ? t->map.cap : t->nfq); i++) {
		struct nv_ext *e = t->fq_lost ? &t->map.slot[i] : nv_map_get(&t->map, t->fq[i]);

		if (!e || !e->key || e->state != EXT_FREEING || e->kh != kh)
			continue;
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 8;
			uint64_t *nk = realloc(ks, nc * sizeof(*nk));

			if (!nk) {
				free(ks);
				return -ENOMEM;
			}
			ks = nk;
			cap = nc;
		}
		ks[n++] = e->key;
	}
	for (size_t j = 0; j < n; j++) {
		int r = settle_ext(t, ks[j]);

		if (r < 0 && !ret)
			ret = r;
	}
	free(ks);
	return ret;
}
