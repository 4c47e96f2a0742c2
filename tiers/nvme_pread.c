/* SPDX-License-Identifier: MIT */
/*
 * nvme_pread.c - the NVMe tier's pread/pwrite engine, for where io_uring is refused
 * (EPERM/ENOSYS under seccomp) or turned off (KVT_TIER_F_NO_URING): a kvt_pool of up to
 * min(queue depth, NV_MAX_WORKERS) workers, each doing one request at a time with
 * synchronous I/O (and fdatasync with KVT_TIER_F_FSYNC).  A worker also checks the record it
 * read, off the event loop; a large one it cuts in pieces with the verifiers (nvme_verify.c).
 * Results come back through the pool's finished list and t->efd.
 */
#define _GNU_SOURCE
#include "nvme_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

/* A request on a worker.  At most qd are started at once (t->inflight), so open() makes
 * that many and start() never runs out. */
struct nv_pjob {
	struct kvt_pool_job pj;
	struct kvt_tier *t;
	struct kvt_tier_io *io;
};

static int pread_run(struct kvt_pool_job *pj)
{
	struct nv_pjob *w = (struct nv_pjob *)pj;
	struct kvt_tier *t = w->t;
	struct kvt_tier_io *io = w->io;
	struct nv_file *f;
	bool wr;
	int r;

	f = &t->files[io->loc.file];
	wr = rq_op(io) != RQ_READ;
	r = nv_pio_full(f->fd, io->buf, rq_xfer(io), io->loc.off, wr);
	if (r >= 0 && (uint32_t)r != rq_xfer(io))
		r = -EIO;
	if (r >= 0 && wr && (t->flags & KVT_TIER_F_FSYNC) && fdatasync(f->fd) < 0)
		r = -errno;
	io->res = r < 0 ? r : (int)io->len;
	if (!wr && r >= 0) {
		struct nv_vjob *j = nv_vjob_make(t, io, t->nvthreads + 1);

		if (j) {
			/* This worker checks the first piece, the verifiers the others;
			 * whoever finishes last delivers (j is gone after that). */
			io->res = (int)io->len;
			j->wjob = pj;
			nv_vjob_queue(t, j, 1);
			nv_vpiece_run(t, &j->piece[0]);
			return KVT_POOL_LATER;
		}
		/* Checked here, off the event loop either way. */
		io->res = nv_read_verify(t, io);
		io->tier_priv[0] |= RQ_VERIFIED;
	}
	return KVT_POOL_DONE;
}

static int pread_setup(struct kvt_tier *t)
{
	unsigned n = t->qd < NV_MAX_WORKERS ? t->qd : NV_MAX_WORKERS;
	int r;

	t->pjobs = calloc(t->qd, sizeof(*t->pjobs));
	t->pfree = calloc(t->qd, sizeof(*t->pfree));
	if (!t->pjobs || !t->pfree) {
		r = -ENOMEM;
		goto fail;
	}
	for (unsigned i = 0; i < t->qd; i++) {
		t->pjobs[i].pj.run = pread_run;
		t->pjobs[i].t = t;
		t->pfree[t->npfree++] = &t->pjobs[i];
	}
	/* Results wake the loop through the tier's eventfd. */
	r = kvt_pool_create(n, t->efd, &t->wpool);
	if (r < 0)
		goto fail;
	return 0;
fail:
	free(t->pjobs);
	free(t->pfree);
	t->pjobs = NULL;
	t->pfree = NULL;
	t->npfree = 0;
	return r;
}

static void pread_start(struct kvt_tier *t, struct kvt_tier_io *io, bool more)
{
	struct nv_pjob *w;

	(void)more; /* each request goes to a worker at once */
	if (!t->npfree)
		abort(); /* more requests started than the queue depth: the accounting is broken */
	w = t->pfree[--t->npfree];
	w->io = io;
	kvt_pool_submit(t->wpool, &w->pj);
}

static void pread_flush(struct kvt_tier *t)
{
	(void)t;
}

static void pread_reaped(struct kvt_pool_job *pj, void *arg)
{
	struct nv_pjob *w = (struct nv_pjob *)pj;
	struct kvt_tier *t = w->t;
	struct kvt_tier_io *io = w->io;

	w->io = NULL;
	t->pfree[t->npfree++] = w;
	nv_finish(t, io, io->res);
	(*(int *)arg)++;
}

static void pread_reap(struct kvt_tier *t, int *n)
{
	kvt_pool_reap(t->wpool, pread_reaped, n);
}

static bool pread_wait(struct kvt_tier *t)
{
	(void)t;
	return false; /* the workers signal t->efd: the caller polls it */
}

static void pread_stop(struct kvt_tier *t)
{
	kvt_pool_destroy(t->wpool);
	t->wpool = NULL;
	free(t->pjobs);
	free(t->pfree);
	t->pjobs = NULL;
	t->pfree = NULL;
	t->npfree = 0;
}

const struct nv_engine nv_pread_engine = {
    .name = "pread",
    .setup = pread_setup,
    .start = pread_start,
    .flush = pread_flush,
    .reap = pread_reap,
    .wait = pread_wait,
    .stop = pread_stop,
};
