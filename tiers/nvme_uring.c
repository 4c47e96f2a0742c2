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
	t->uring = true;
	return 0;
}

static void uring_flush(struct kvt_tier *t)
{
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

static void uring_start(struct kvt_tier *t, struct kvt_tier_io *io, bool more)
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
	io->tier_priv[0] |= 1u << RQ_PEND_SHIFT;
	t->unsubmitted++;
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
	io->res = 0;
	if (!more)
		uring_flush(t);
}

static void uring_reap(struct kvt_tier *t, int *n)
{
	struct io_uring_cqe *cqe;

	while (io_uring_peek_cqe(&t->ring, &cqe) == 0) {
		uint64_t ud = io_uring_cqe_get_data64(cqe);
		struct kvt_tier_io *io = (struct kvt_tier_io *)(uintptr_t)(ud & ~7ull);
		int res = cqe->res;

		io_uring_cqe_seen(&t->ring, cqe);
		if ((ud & 7) == 1) {
			uint32_t want = rq_xfer(io);

			io->res = res < 0 ? res : ((uint32_t)res == want ? (int)io->len : -EIO);
		} else if (res < 0 && io->res >= 0) {
			io->res = res;
		}
		io->tier_priv[0] -= 1u << RQ_PEND_SHIFT;
		if (io->tier_priv[0] & RQ_PEND_MASK)
			continue;
		if (rq_op(io) == RQ_READ && io->res >= 0 && nv_verify_async(t, io))
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
