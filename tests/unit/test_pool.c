/* SPDX-License-Identifier: MIT */
/*
 * The worker pool of proto/kvt_pool.h, as kvtierd's codec workers and the NVMe tier use it:
 * every job runs once and is reaped once; the eventfd becomes readable when (and only when) a
 * job has finished; one worker finishes jobs in submission order; a KVT_POOL_LATER job is
 * reaped only after kvt_pool_finish(); destroy returns only after every queued job ran.
 * Nothing here sleeps: the test waits on the eventfd and on condition variables.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <cmocka.h>

#include "kvt_pool.h"

struct tjob {
	struct kvt_pool_job pj;
	unsigned id;
	unsigned ran;	 /* atomic */
	unsigned reaped; /* reaping thread only */
	int verdict;	 /* what run() returns */
};

/* A gate a job can wait behind, so that the test decides when it finishes. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool open;
	bool entered;
} gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false};

static unsigned total_ran; /* atomic */

static int tjob_run(struct kvt_pool_job *pj)
{
	struct tjob *j = (struct tjob *)pj;

	__atomic_add_fetch(&j->ran, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&total_ran, 1, __ATOMIC_RELAXED);
	return j->verdict;
}

static int gated_run(struct kvt_pool_job *pj)
{
	pthread_mutex_lock(&gate.mu);
	gate.entered = true;
	pthread_cond_broadcast(&gate.cv);
	while (!gate.open)
		pthread_cond_wait(&gate.cv, &gate.mu);
	pthread_mutex_unlock(&gate.mu);
	return tjob_run(pj);
}

static void gate_reset(void)
{
	gate.open = false;
	gate.entered = false;
}

static void gate_wait_entered(void)
{
	pthread_mutex_lock(&gate.mu);
	while (!gate.entered)
		pthread_cond_wait(&gate.cv, &gate.mu);
	pthread_mutex_unlock(&gate.mu);
}

static void gate_open(void)
{
	pthread_mutex_lock(&gate.mu);
	gate.open = true;
	pthread_cond_broadcast(&gate.cv);
	pthread_mutex_unlock(&gate.mu);
}

struct reap_log {
	unsigned n;
	unsigned order[4096];
};

static void reaped(struct kvt_pool_job *pj, void *arg)
{
	struct tjob *j = (struct tjob *)pj;
	struct reap_log *log = arg;

	j->reaped++;
	if (log->n < 4096)
		log->order[log->n] = j->id;
	log->n++;
}

static bool readable(int fd, int timeout_ms)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};

	return poll(&pfd, 1, timeout_ms) == 1 && (pfd.revents & POLLIN);
}

/* Reaps until `want` jobs came back, sleeping on the eventfd in between. */
static void reap_until(struct kvt_pool *p, struct reap_log *log, unsigned want)
{
	while (log->n < want) {
		if (!kvt_pool_reap(p, reaped, log))
			assert_true(readable(kvt_pool_event_fd(p), -1));
	}
}

static void bad_args(void **state)
{
	struct kvt_pool *p = NULL;

	(void)state;
	assert_int_equal(kvt_pool_create(0, -1, &p), -EINVAL);
	assert_null(p);
	assert_int_equal(kvt_pool_create(1, -1, NULL), -EINVAL);
	kvt_pool_destroy(NULL);
}

/* Many jobs on several workers: each runs once and is reaped once. */
static void every_job_runs_once(void **state)
{
	enum { N = 3000 };
	struct tjob *jobs = calloc(N, sizeof(*jobs));
	static struct reap_log log;
	struct kvt_pool *p;

	(void)state;
	assert_non_null(jobs);
	assert_int_equal(kvt_pool_create(3, -1, &p), 0);
	assert_int_equal(kvt_pool_threads(p), 3);
	memset(&log, 0, sizeof(log));
	for (unsigned i = 0; i < N; i++) {
		jobs[i].id = i;
		jobs[i].pj.run = tjob_run;
		kvt_pool_submit(p, &jobs[i].pj);
	}
	reap_until(p, &log, N);
	assert_int_equal(log.n, N);
	for (unsigned i = 0; i < N; i++) {
		assert_int_equal(jobs[i].ran, 1);
		assert_int_equal(jobs[i].reaped, 1);
	}
	assert_int_equal(kvt_pool_reap(p, reaped, &log), 0);
	kvt_pool_destroy(p);
	free(jobs);
}

/*
 * The eventfd is quiet while a job runs and readable once it finished; with one worker, jobs
 * finish and are reaped in submission order, also when submitted as one list.
 */
static void order_and_eventfd(void **state)
{
	enum { N = 64 };
	static struct tjob jobs[N + 1];
	static struct reap_log log;
	struct kvt_pool *p;
	int efd;

	(void)state;
	memset(jobs, 0, sizeof(jobs));
	memset(&log, 0, sizeof(log));
	gate_reset();
	assert_int_equal(kvt_pool_create(1, -1, &p), 0);
	efd = kvt_pool_event_fd(p);
	assert_true(efd >= 0);
	assert_false(readable(efd, 0));
	jobs[0].pj.run = gated_run;
	kvt_pool_submit(p, &jobs[0].pj);
	for (unsigned i = 1; i <= N; i++) {
		jobs[i].id = i;
		jobs[i].pj.run = tjob_run;
		/* the second half as one list */
		jobs[i].pj.next = i > N / 2 && i < N ? &jobs[i + 1].pj : NULL;
	}
	for (unsigned i = 1; i <= N / 2; i++)
		kvt_pool_submit(p, &jobs[i].pj);
	kvt_pool_submit_list(p, &jobs[N / 2 + 1].pj);
	gate_wait_entered();
	/* The only worker is inside the first job: nothing has finished. */
	assert_false(readable(efd, 0));
	assert_int_equal(kvt_pool_reap(p, reaped, &log), 0);
	gate_open();
	assert_true(readable(efd, -1));
	reap_until(p, &log, N + 1);
	for (unsigned i = 0; i <= N; i++)
		assert_int_equal(log.order[i], i);
	/* Reaping reads the pool's own eventfd (a job finishing between that read and the
	 * taking of the list may leave it readable with nothing new: one more reap clears it). */
	assert_int_equal(kvt_pool_reap(p, reaped, &log), 0);
	assert_false(readable(efd, 0));
	kvt_pool_destroy(p);
}

struct finisher {
	struct kvt_pool *p;
	struct tjob *j;
};

static void *finish_later(void *arg)
{
	struct finisher *f = arg;

	kvt_pool_finish(f->p, &f->j->pj);
	return NULL;
}

/*
 * A job that says KVT_POOL_LATER stays off the finished list until someone finishes it (here
 * another thread); the caller's eventfd is the one signalled, and left for the caller to read.
 */
static void later_and_caller_eventfd(void **state)
{
	static struct tjob later, plain;
	static struct reap_log log;
	struct finisher f;
	struct kvt_pool *p;
	pthread_t th;
	uint64_t v;
	int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);

	(void)state;
	assert_true(efd >= 0);
	memset(&log, 0, sizeof(log));
	assert_int_equal(kvt_pool_create(2, efd, &p), 0);
	assert_int_equal(kvt_pool_event_fd(p), efd);
	later.id = 1;
	later.verdict = KVT_POOL_LATER;
	later.pj.run = tjob_run;
	plain.id = 2;
	plain.pj.run = tjob_run;
	kvt_pool_submit(p, &later.pj);
	kvt_pool_submit(p, &plain.pj);
	reap_until(p, &log, 1);
	assert_int_equal(log.order[0], 2); /* only the plain one: the other is not finished */
	assert_int_equal(read(efd, &v, sizeof(v)), (ssize_t)sizeof(v));
	/* ran, but not finished: never reaped */
	while (!__atomic_load_n(&later.ran, __ATOMIC_RELAXED))
		assert_false(kvt_pool_reap(p, reaped, &log));
	assert_int_equal(kvt_pool_reap(p, reaped, &log), 0);
	f.p = p;
	f.j = &later;
	assert_int_equal(pthread_create(&th, NULL, finish_later, &f), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_true(readable(efd, -1));
	/* The pool does not read the caller's eventfd. */
	assert_int_equal(kvt_pool_reap(p, reaped, &log), 1);
	assert_int_equal(log.order[1], 1);
	assert_true(readable(efd, 0));
	assert_int_equal(later.reaped, 1);
	assert_int_equal(later.ran, 1);
	kvt_pool_destroy(p);
	assert_int_equal(fcntl(efd, F_GETFD), FD_CLOEXEC); /* still the caller's */
	close(efd);
}

/*
 * destroy() returns only after every queued job ran: the one worker is held inside the first
 * job while the rest queue up behind it; the gate opens and destroy() is called at once.
 */
static void destroy_runs_every_job(void **state)
{
	enum { N = 500 };
	static struct tjob jobs[N];
	struct kvt_pool *p;

	(void)state;
	memset(jobs, 0, sizeof(jobs));
	gate_reset();
	__atomic_store_n(&total_ran, 0, __ATOMIC_RELAXED);
	assert_int_equal(kvt_pool_create(1, -1, &p), 0);
	jobs[0].pj.run = gated_run;
	kvt_pool_submit(p, &jobs[0].pj);
	for (unsigned i = 1; i < N; i++) {
		jobs[i].pj.run = tjob_run;
		kvt_pool_submit(p, &jobs[i].pj);
	}
	gate_wait_entered();
	assert_int_equal(__atomic_load_n(&total_ran, __ATOMIC_RELAXED), 0);
	gate_open();
	kvt_pool_destroy(p);
	assert_int_equal(__atomic_load_n(&total_ran, __ATOMIC_RELAXED), N);
	for (unsigned i = 0; i < N; i++)
		assert_int_equal(jobs[i].ran, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(bad_args),
	    cmocka_unit_test(every_job_runs_once),
	    cmocka_unit_test(order_and_eventfd),
	    cmocka_unit_test(later_and_caller_eventfd),
	    cmocka_unit_test(destroy_runs_every_job),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
