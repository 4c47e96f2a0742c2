/* SPDX-License-Identifier: MIT */
/*
 * codec_pool.c - worker threads for codec work that must not run on the event loop.
 *
 * A lossy NVMe chain encodes at tens of MB/s: a 1 MiB block would stall every client's ring
 * for tens of milliseconds if the loop encoded it.  Jobs carry two functions: run() on a
 * worker (pure computation on memory the job owns or that the loop keeps alive for it) and
 * done() back on the loop thread, which alone touches the daemon's state.  Completions are
 * announced through an eventfd in the loop's epoll set (EV_CODEC).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "daemon.h"

#define CPOOL_MAX_THREADS 8u

struct kvtd_cpool {
	pthread_t th[CPOOL_MAX_THREADS];
	unsigned nth;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct kvtd_cjob *q_head, *q_tail; /* waiting for a worker */
	struct kvtd_cjob *done;		   /* finished, done() not run yet (LIFO) */
	unsigned pending;		   /* submitted, done() not run yet (loop thread) */
	bool stop;
	int efd;
};

static void *cpool_main(void *arg)
{
	struct kvtd_cpool *p = arg;

	for (;;) {
		struct kvtd_cjob *j;
		uint64_t one = 1;

		pthread_mutex_lock(&p->mu);
		while (!p->stop && !p->q_head)
			pthread_cond_wait(&p->cv, &p->mu);
		j = p->q_head;
		if (j) {
			p->q_head = j->next;
			if (!p->q_head)
				p->q_tail = NULL;
		}
		pthread_mutex_unlock(&p->mu);
		if (!j)
			return NULL;
		j->run(j);
		pthread_mutex_lock(&p->mu);
		j->next = p->done;
		p->done = j;
		pthread_mutex_unlock(&p->mu);
		if (write(p->efd, &one, sizeof(one)) < 0) {
			/* The counter cannot overflow with one write per job. */
		}
	}
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
	p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (p->efd < 0) {
		free(p);
		return -errno;
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	for (unsigned i = 0; i < nthreads; i++) {
		if (pthread_create(&p->th[i], NULL, cpool_main, p))
			break;
		p->nth++;
	}
	d->cpool_ev.kind = EV_CODEC;
	d->cpool_ev.p = NULL;
	ee.data.ptr = &d->cpool_ev;
	if (!p->nth || epoll_ctl(d->ep, EPOLL_CTL_ADD, p->efd, &ee) < 0) {
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

	j->next = NULL;
	p->pending++;
	pthread_mutex_lock(&p->mu);
	if (p->q_tail)
		p->q_tail->next = j;
	else
		p->q_head = j;
	p->q_tail = j;
	pthread_mutex_unlock(&p->mu);
	pthread_cond_signal(&p->cv);
}

unsigned kvtd_cpool_pending(const struct kvtd *d)
{
	return d->cpool ? d->cpool->pending : 0;
}

int kvtd_cpool_event(struct kvtd *d)
{
	struct kvtd_cpool *p = d->cpool;
	struct kvtd_cjob *j, *rev = NULL;
	uint64_t v;
	int n = 0;

	if (!p)
		return 0;
	if (read(p->efd, &v, sizeof(v)) < 0) {
		/* EAGAIN: nothing new; the list below is what counts. */
	}
	pthread_mutex_lock(&p->mu);
	j = p->done;
	p->done = NULL;
	pthread_mutex_unlock(&p->mu);
	/* Oldest first, as submitted. */
	while (j) {
		struct kvtd_cjob *next = j->next;

		j->next = rev;
		rev = j;
		j = next;
	}
	while ((j = rev)) {
		rev = j->next;
		p->pending--;
		j->done(d, j);
		n++;
	}
	return n;
}

void kvtd_cpool_fini(struct kvtd *d)
{
	struct kvtd_cpool *p = d->cpool;

	if (!p)
		return;
	/* Every submitted job finishes and its done() runs: they own memory and blocks. */
	while (p->pending && p->nth) {
		if (!kvtd_cpool_event(d))
			usleep(1000);
	}
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (unsigned i = 0; i < p->nth; i++)
		pthread_join(p->th[i], NULL);
	if (d->ep >= 0)
		epoll_ctl(d->ep, EPOLL_CTL_DEL, p->efd, NULL);
	close(p->efd);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p);
	d->cpool = NULL;
}
