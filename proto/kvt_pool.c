/* SPDX-License-Identifier: MIT */
/* kvt_pool.c - the worker-thread pool (kvt_pool.h). */
#include "kvt_pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define KVT_POOL_MAGIC 0x4c4f4f50u /* "POOL" */

struct kvt_pool {
	uint32_t magic;
	unsigned nth;
	pthread_t *th;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct kvt_pool_job *q_head, *q_tail; /* waiting for a worker */
	struct kvt_pool_job *d_head, *d_tail; /* finished, not reaped yet */
	bool stop;
	bool own_efd;
	int efd;
};

static void pool_check(const struct kvt_pool *p)
{
	if (p->magic != KVT_POOL_MAGIC)
		abort(); /* a stray pointer: its jobs own memory and blocks */
}

static void efd_signal(int efd)
{
	uint64_t one = 1;

	/* The counter cannot overflow with one write per job; a full one stays readable. */
	if (write(efd, &one, sizeof(one)) < 0) {
	}
}

/* Appends the jobs first..last (already linked) to a list; under p->mu. */
static void append(struct kvt_pool_job **head, struct kvt_pool_job **tail,
		   struct kvt_pool_job *first, struct kvt_pool_job *last)
{
	if (*tail)
		(*tail)->next = first;
	else
		*head = first;
	*tail = last;
}

void kvt_pool_finish(struct kvt_pool *p, struct kvt_pool_job *j)
{
	j->next = NULL;
	pthread_mutex_lock(&p->mu);
	append(&p->d_head, &p->d_tail, j, j);
	pthread_mutex_unlock(&p->mu);
	efd_signal(p->efd);
}

static void *pool_main(void *arg)
{
	struct kvt_pool *p = arg;

	for (;;) {
		struct kvt_pool_job *j;

		pthread_mutex_lock(&p->mu);
		/* The queue empties before a stop takes effect: every queued job runs. */
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
		if (j->run(j) == KVT_POOL_DONE)
			kvt_pool_finish(p, j);
	}
}

int kvt_pool_create(unsigned nthreads, int efd, struct kvt_pool **out)
{
	struct kvt_pool *p;
	int r = 0;

	if (!nthreads || !out)
		return -EINVAL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->th = calloc(nthreads, sizeof(*p->th));
	if (!p->th) {
		free(p);
		return -ENOMEM;
	}
	p->efd = efd;
	if (efd < 0) {
		p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (p->efd < 0) {
			r = -errno;
			free(p->th);
			free(p);
			return r;
		}
		p->own_efd = true;
	}
	p->magic = KVT_POOL_MAGIC;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	for (unsigned i = 0; i < nthreads; i++) {
		r = pthread_create(&p->th[i], NULL, pool_main, p);
		if (r)
			break;
		p->nth++;
	}
	if (!p->nth) {
		kvt_pool_destroy(p);
		return -r;
	}
	*out = p;
	return 0;
}

unsigned kvt_pool_threads(const struct kvt_pool *p)
{
	pool_check(p);
	return p->nth;
}

int kvt_pool_event_fd(const struct kvt_pool *p)
{
	pool_check(p);
	return p->efd;
}

void kvt_pool_submit_list(struct kvt_pool *p, struct kvt_pool_job *first)
{
	struct kvt_pool_job *last = first;
	unsigned n = 1;

	pool_check(p);
	if (!first)
		return;
	while (last->next) {
		last = last->next;
		n++;
	}
	pthread_mutex_lock(&p->mu);
	append(&p->q_head, &p->q_tail, first, last);
	pthread_mutex_unlock(&p->mu);
	/* After the unlock, so that a woken worker does not block on the mutex at once. */
	if (n > 1)
		pthread_cond_broadcast(&p->cv);
	else
		pthread_cond_signal(&p->cv);
}

void kvt_pool_submit(struct kvt_pool *p, struct kvt_pool_job *j)
{
	j->next = NULL;
	kvt_pool_submit_list(p, j);
}

unsigned kvt_pool_reap(struct kvt_pool *p, void (*fn)(struct kvt_pool_job *j, void *arg), void *arg)
{
	struct kvt_pool_job *j;
	unsigned n = 0;

	pool_check(p);
	if (p->own_efd) {
		uint64_t v;

		if (read(p->efd, &v, sizeof(v)) < 0) {
			/* EAGAIN: nothing new; the list below is what counts. */
		}
	}
	pthread_mutex_lock(&p->mu);
	j = p->d_head;
	p->d_head = p->d_tail = NULL;
	pthread_mutex_unlock(&p->mu);
	while (j) {
		struct kvt_pool_job *next = j->next;

		fn(j, arg);
		j = next;
		n++;
	}
	return n;
}

void kvt_pool_destroy(struct kvt_pool *p)
{
	if (!p)
		return;
	pool_check(p);
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (unsigned i = 0; i < p->nth; i++)
		pthread_join(p->th[i], NULL);
	if (p->own_efd)
		close(p->efd);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	p->magic = 0;
	free(p->th);
	free(p);
}
