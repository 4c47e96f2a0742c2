/* SPDX-License-Identifier: MIT */
/*
 * nvme_uring.c - the NVMe tier's io_uring engine: fixed files, the I/O buffer arena
 * registered as one fixed buffer, batched submission, a write and its fdatasync linked in one
 * submission, COOP_TASKRUN.  Completions make t->efd readable (registered eventfd) and are
 * reaped on the loop thread; large reads go to the verifiers from here (nvme_verify.c).
 */
#define _GNU_SOURCE
#include "nvme_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <syslog.h>

static bool buf_fixed(const struct kvt_tier *t, const void *buf, uint32_t len)
{
	const char *p = buf;

	return t->arena_reg && p >= t->arena && p + len <= t->arena + t->arena_reg;
}

static int uring_setup(struct kvt_tier *t)
{
	unsigned entries = 8;
	int fds[256];
	int r;

	while (entries < 2 * t->qd)
		entries *= 2;
	r = hook(t, KVT_TIER_OP_URING_SETUP, 0, 0);
	if (r >= 0) {
		/* Completions need no IPI to the loop thread: it picks them up on its next
		 * entry into the kernel (poll wakes it).  Older kernels refuse the flag. */
		struct io_uring_params p = {.flags = IORING_SETUP_COOP_TASKRUN};

		r = io_uring_queue_init_params(entries, &t->ring, &p);
		if (r == -EINVAL)
			r = io_uring_queue_init(entries, &t->ring, 0);
	}
	if (r < 0)
		return r;
	r = io_uring_register_eventfd(&t->ring, t->efd);
	if (r < 0) {
		io_uring_queue_exit(&t->ring);
		return r;
	}
	if (t->nfiles <= 256) {
		for (unsigned i = 0; i < t->nfiles; i++)
			fds[i] = t->files[i].fd;
		t->fixed_files = io_uring_register_files(&t->ring, fds, t->nfiles) == 0;
	}
	if (t->arena) {
		size_t len = t->arena_bytes;

		/* Registration pins memory (RLIMIT_MEMLOCK without CAP_IPC_LOCK): shrink until
		 * it fits; buffers past the registered prefix still work, unregistered. */
		while (len >= (1u << 20)) {
			struct iovec iov = {.iov_base = t->arena, .iov_len = len};

			if (io_uring_register_buffers(&t->ring, &iov, 1) == 0) {
				t->arena_reg = len;
				break;
			}
			len /= 2;
		}
		if (t->arena_reg < t->arena_bytes)
			nv_log(t, LOG_WARNING,
			       "io_uring pinned %zu of %zu buffer bytes (RLIMIT_MEMLOCK too low? "
			       "raise LimitMEMLOCK=); I/O through the rest is a little slower",
			       t->arena_reg, t->arena_bytes);
	}
	/* Without it reads go to the device one by one, unmerged, qd records at a time. */
	t->held = calloc((size_t)t->qd * NV_MERGE_MAX_IOS, sizeof(*t->held));
	t->held_cap = t->held ? t->qd * NV_MERGE_MAX_IOS : 0;
	t->uring = true;
	return 0;
}

static void held_emit(struct kvt_tier *t);

static void uring_flush(struct kvt_tier *t)
{
	held_emit(t);
	if (t->unsubmitted) {
		int r = io_uring_submit(&t->ring);

		if (r >= 0)
			t->unsubmitted = 0;
		else
			nv_efd_signal(t); /* EAGAIN/EBUSY: come back through complete() and retry */
	}
}

static struct io_uring_sqe *uring_sqe(struct kvt_tier *t)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&t->ring);

	if (!sqe) {
		io_uring_submit(&t->ring);
		t->unsubmitted = 0;
		sqe = io_uring_get_sqe(&t->ring);
	}
	return sqe;
}

/* One request, one submission entry (or two: a write and its linked fdatasync). */
static void prep_one(struct kvt_tier *t, struct kvt_tier_io *io)
{
	struct nv_file *f = &t->files[io->loc.file];
	bool wr = rq_op(io) != RQ_READ;
	bool sync = wr && (t->flags & KVT_TIER_F_FSYNC);
	int fd = t->fixed_files ? (int)io->loc.file : f->fd;
	uint32_t len = rq_xfer(io);
	struct io_uring_sqe *sqe;

	/* A write and its fdatasync must sit in the same submission to stay linked. */
	if (io_uring_sq_space_left(&t->ring) < (sync ? 2u : 1u)) {
		io_uring_submit(&t->ring);
		t->unsubmitted = 0;
	}
	sqe = uring_sqe(t);
	if (buf_fixed(t, io->buf, len)) {
		if (wr)
			io_uring_prep_write_fixed(sqe, fd, io->buf, len, io->loc.off, 0);
		else
			io_uring_prep_read_fixed(sqe, fd, io->buf, len, io->loc.off, 0);
	} else if (wr) {
		io_uring_prep_write(sqe, fd, io->buf, len, io->loc.off);
	} else {
		io_uring_prep_read(sqe, fd, io->buf, len, io->loc.off);
	}
	if (t->fixed_files)
		sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)io | 1);
	t->unsubmitted++;
	t->nreq++;
	if (sync) {
		sqe->flags |= IOSQE_IO_LINK;
		sqe = uring_sqe(t);
		io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
		if (t->fixed_files)
			sqe->flags |= IOSQE_FIXED_FILE;
		io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)io | 2);
		io->tier_priv[0] += 1u << RQ_PEND_SHIFT;
		t->unsubmitted++;
	}
}

/*
 * Merged reads.  Reads held back (KVT_TIER_IO_MORE) wait in t->held until the flush, which
 * sorts them by place on disk; those whose records follow each other in one file are
 * collected in t->run and go to the device as one request: one read (fixed buffer when their
 * buffers follow each other too) or one readv.  Each record is still checked on
 * its own when the merged read completes (nv_verify_async / nv_finish), so a corrupt record
 * fails only its own request.  A merged read that fails or comes back short is not trusted
 * for anything it did not cover: those requests are read again one by one, so an I/O error
 * fails exactly the records it touches.  The run's requests are linked through
 * tier_priv[1] (no list holds a request between start and completion).
 */
struct nv_merged {
	struct kvt_tier_io *first;
	unsigned n;
	uint32_t bytes;
	struct iovec iov[];
};

static struct kvt_tier_io *run_next(const struct kvt_tier_io *io)
{
	return (struct kvt_tier_io *)io->tier_priv[1];
}

static bool run_follows(const struct kvt_tier *t, const struct kvt_tier_io *io)
{
	const struct kvt_tier_io *l = t->run_tail;

	return t->run_n && t->run_n < NV_MERGE_MAX_IOS && io->loc.file == l->loc.file &&
	       io->loc.off == l->loc.off + rq_xfer(l) &&
	       t->run_bytes + rq_xfer(io) <= NV_MERGE_MAX_BYTES;
}

static void run_add(struct kvt_tier *t, struct kvt_tier_io *io)
{
	io->tier_priv[1] = 0;
	if (t->run_n)
		t->run_tail->tier_priv[1] = (uintptr_t)io;
	else
		t->run_head = io;
	t->run_tail = io;
	t->run_n++;
	t->run_bytes += rq_xfer(io);
}

/* Hands the collected run to the ring. */
static void run_emit(struct kvt_tier *t)
{
	struct kvt_tier_io *io = t->run_head, *next;
	struct io_uring_sqe *sqe;
	struct nv_merged *m;
	bool contig = true;
	char *end;
	int fd;

	if (!t->run_n)
		return;
	t->run_head = t->run_tail = NULL;
	m = t->run_n > 1 ? malloc(sizeof(*m) + t->run_n * sizeof(struct iovec)) : NULL;
	if (!m) {
		/* One request, or no memory for the merge: each on its own. */
		for (; io; io = next) {
			next = run_next(io);
			prep_one(t, io);
		}
		t->run_n = 0;
		t->run_bytes = 0;
		return;
	}
	m->first = io;
	m->n = t->run_n;
	m->bytes = t->run_bytes;
	end = io->buf;
	for (unsigned k = 0; io; io = run_next(io), k++) {
		m->iov[k].iov_base = io->buf;
		m->iov[k].iov_len = rq_xfer(io);
		contig = contig && (char *)io->buf == end;
		end = (char *)io->buf + rq_xfer(io);
	}
	io = m->first;
	fd = t->fixed_files ? (int)io->loc.file : t->files[io->loc.file].fd;
	sqe = uring_sqe(t);
	if (contig && buf_fixed(t, io->buf, m->bytes))
		io_uring_prep_read_fixed(sqe, fd, io->buf, m->bytes, io->loc.off, 0);
	else if (contig)
		io_uring_prep_read(sqe, fd, io->buf, m->bytes, io->loc.off);
	else
		io_uring_prep_readv(sqe, fd, m->iov, m->n, io->loc.off);
	if (t->fixed_files)
		sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)m | 4);
	t->unsubmitted++;
	t->nreq++;
	t->st.merged_reads += t->run_n - 1;
	t->run_n = 0;
	t->run_bytes = 0;
}

static int by_place(const void *a, const void *b)
{
	const struct kvt_tier_io *x = *(struct kvt_tier_io *const *)a;
	const struct kvt_tier_io *y = *(struct kvt_tier_io *const *)b;

	if (x->loc.file != y->loc.file)
		return x->loc.file < y->loc.file ? -1 : 1;
	return x->loc.off < y->loc.off ? -1 : x->loc.off > y->loc.off;
}

/*
 * The held reads in the order of their places on disk, in runs, while the device has
 * fewer than qd requests; the rest stay held for the next flush (a completion frees a
 * slot).  The runs go from where the last one ended, wrapping round to the start of the
 * disk, so that a read behind the others is reached at the next turn.
 */
static void held_emit(struct kvt_tier *t)
{
	unsigned n = t->nheld, k0 = 0, j;

	if (!n || t->nreq >= t->qd)
		return;
	qsort(t->held, n, sizeof(*t->held), by_place);
	while (k0 < n &&
	       (t->held[k0]->loc.file < t->scan_file ||
		(t->held[k0]->loc.file == t->scan_file && t->held[k0]->loc.off < t->scan_off)))
		k0++;
	for (j = 0; j < n; j++) {
		struct kvt_tier_io *io = t->held[(k0 + j) % n];

		if (!run_follows(t, io)) {
			run_emit(t);
			if (t->nreq >= t->qd)
				break;
		}
		run_add(t, io);
		t->scan_file = io->loc.file;
		t->scan_off = io->loc.off + rq_xfer(io);
	}
	run_emit(t);
	/* Keep the n - j reads not sent: the circular range from (k0 + j) % n, at the front
	 * (their order does not matter, the next flush sorts them). */
	if (j < n) {
		unsigned from = (k0 + j) % n, m = n - j;
		struct kvt_tier_io **h = t->held;

		if (from + m <= n)
			memmove(h, h + from, m * sizeof(*h));
		else /* [0, from + m - n) stays; [from, n) comes right after it */
			memmove(h + (from + m - n), h + from, (n - from) * sizeof(*h));
	}
	t->nheld = n - j;
}

static void uring_start(struct kvt_tier *t, struct kvt_tier_io *io, bool more)
{
	io->res = 0;
	io->tier_priv[0] |= 1u << RQ_PEND_SHIFT;
	/* A read waits for the flush (at most the queue depth of them: each is in flight);
	 * reads never overlap a write or an invalidation of their extent, so their order
	 * against those does not matter. */
	if (rq_op(io) == RQ_READ && t->held && t->nheld < t->held_cap)
		t->held[t->nheld++] = io;
	else
		prep_one(t, io);
	if (!more)
		uring_flush(t);
}

/* One read request's part is done (res: bytes or -errno of its own read): finish it, or
 * hand it to the verifiers. */
static void read_part_done(struct kvt_tier *t, struct kvt_tier_io *io, int *n)
{
	io->tier_priv[0] -= 1u << RQ_PEND_SHIFT;
	if (io->tier_priv[0] & RQ_PEND_MASK)
		return;
	if (io->res >= 0 && nv_verify_async(t, io))
		return;
	nv_finish(t, io, io->res);
	(*n)++;
}

static void merged_done(struct kvt_tier *t, struct nv_merged *m, int res, int *n)
{
	struct kvt_tier_io *io = m->first, *next;
	uint64_t upto = 0;

	free(m);
	for (; io; io = next) {
		next = run_next(io);
		io->tier_priv[1] = 0;
		upto += rq_xfer(io);
		if (res >= 0 && (uint64_t)res >= upto) {
			io->res = (int)io->len;
			read_part_done(t, io, n);
		} else {
			/* Not covered: read it again on its own, for its own answer. */
			t->st.merged_retries++;
			prep_one(t, io);
		}
	}
}

static void uring_reap(struct kvt_tier *t, int *n)
{
	struct io_uring_cqe *cqe;

	while (io_uring_peek_cqe(&t->ring, &cqe) == 0) {
		uint64_t ud = io_uring_cqe_get_data64(cqe);
		struct kvt_tier_io *io = (struct kvt_tier_io *)(uintptr_t)(ud & ~7ull);
		int res = cqe->res;

		io_uring_cqe_seen(&t->ring, cqe);
		if ((ud & 7) == 4 || (ud & 7) == 1)
			t->nreq--;
		if ((ud & 7) == 4) {
			merged_done(t, (struct nv_merged *)(uintptr_t)(ud & ~7ull), res, n);
			continue;
		}
		if ((ud & 7) == 1) {
			uint32_t want = rq_xfer(io);

			io->res = res < 0 ? res : ((uint32_t)res == want ? (int)io->len : -EIO);
		} else if (res < 0 && io->res >= 0) {
			io->res = res;
		}
		if (rq_op(io) == RQ_READ) {
			read_part_done(t, io, n);
			continue;
		}
		io->tier_priv[0] -= 1u << RQ_PEND_SHIFT;
		if (io->tier_priv[0] & RQ_PEND_MASK)
			continue;
		nv_finish(t, io, io->res);
		(*n)++;
	}
}

static void uring_flush_and_reap(struct kvt_tier *t, int *n)
{
	uring_flush(t);
	uring_reap(t, n);
}

static bool uring_wait(struct kvt_tier *t)
{
	struct io_uring_cqe *cqe;

	if (!t->inflight)
		return false; /* only verifiers or early failures to wait for: t->efd */
	uring_flush(t);
	if (!t->done_now.head)
		io_uring_wait_cqe(&t->ring, &cqe);
	return true;
}

static void uring_stop(struct kvt_tier *t)
{
	free(t->held);
	t->held = NULL;
	t->held_cap = 0;
	io_uring_queue_exit(&t->ring);
}

const struct nv_engine nv_uring_engine = {
    .name = "io_uring",
    .setup = uring_setup,
    .start = uring_start,
    .flush = uring_flush,
    .reap = uring_flush_and_reap,
    .wait = uring_wait,
    .stop = uring_stop,
};
