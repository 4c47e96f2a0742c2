/* SPDX-License-Identifier: MIT */
/*
 * codec_pool.c - worker threads for codec work that must not run on the event loop.
 *
 * A lossy NVMe chain encodes at tens of MB/s: a 1 MiB block would stall every client's ring
 * for tens of milliseconds if the loop encoded it.  Jobs carry two functions: run() on a
 * worker (pure computation on memory the job owns or that the loop keeps alive for it) and
 * done() back on the loop thread, which alone touches the daemon's state.  Completions are
 * announced through an eventfd in the loop's epoll set (EV_CODEC).  The threads, queue and
 * eventfd are a kvt_pool (proto/kvt_pool.h); this file adds the daemon's side: done().
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "codec_auto.h"
#include "daemon.h"
#include "kvt_pool.h"

#define CPOOL_MAX_THREADS 8u

struct kvtd_cpool {
	struct kvt_pool *pool;
	unsigned pending; /* submitted, done() not run yet (loop thread) */
};

static int cjob_run(struct kvt_pool_job *pj)
{
	struct kvtd_cjob *j = (struct kvtd_cjob *)((char *)pj - offsetof(struct kvtd_cjob, pool));

	j->run(j);
	return KVT_POOL_DONE;
}

int kvtd_cpool_init(struct kvtd *d, unsigned nthreads)
{
	struct kvtd_cpool *p;
	struct epoll_event ee = {.events = EPOLLIN};

	if (!nthreads)
		return 0;
	if (nthreads > CPOOL_MAX_THREADS)
		nthreads = CPOOL_MAX_THREADS;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	if (kvt_pool_create(nthreads, -1, &p->pool) < 0) {
		free(p);
		return -EAGAIN;
	}
	d->cpool_ev.kind = EV_CODEC;
	d->cpool_ev.p = NULL;
	ee.data.ptr = &d->cpool_ev;
	if (epoll_ctl(d->ep, EPOLL_CTL_ADD, kvt_pool_event_fd(p->pool), &ee) < 0) {
		d->cpool = p;
		kvtd_cpool_fini(d);
		return -EAGAIN;
	}
	d->cpool = p;
	return 0;
}

bool kvtd_cpool_on(const struct kvtd *d)
{
	return d->cpool != NULL;
}

void kvtd_cpool_submit(struct kvtd *d, struct kvtd_cjob *j)
{
	struct kvtd_cpool *p = d->cpool;

	p->pending++;
	j->pool.run = cjob_run;
	kvt_pool_submit(p->pool, &j->pool);
}

unsigned kvtd_cpool_pending(const struct kvtd *d)
{
	return d->cpool ? d->cpool->pending : 0;
}

static void cjob_reaped(struct kvt_pool_job *pj, void *arg)
{
	struct kvtd *d = arg;
	struct kvtd_cjob *j = (struct kvtd_cjob *)((char *)pj - offsetof(struct kvtd_cjob, pool));

	d->cpool->pending--;
	j->done(d, j);
}

int kvtd_cpool_event(struct kvtd *d)
{
	/* A calibration's end comes through the same event kind (codec_auto.c). */
	int n = kvtd_auto_event(d);

	if (!d->cpool)
		return n;
	/* Oldest first, as they finished. */
	return n + (int)kvt_pool_reap(d->cpool->pool, cjob_reaped, d);
}

void kvtd_cpool_fini(struct kvtd *d)
{
	struct kvtd_cpool *p = d->cpool;

	if (!p)
		return;
	/* Every submitted job finishes and its done() runs: they own memory and blocks. */
	while (p->pending) {
		if (!kvtd_cpool_event(d))
			usleep(1000);
	}
	if (d->ep >= 0)
		epoll_ctl(d->ep, EPOLL_CTL_DEL, kvt_pool_event_fd(p->pool), NULL);
	kvt_pool_destroy(p->pool);
	free(p);
	d->cpool = NULL;
}
