/* SPDX-License-Identifier: MIT */
/*
 * kvt_pool.h - the one worker-thread pool of the project: N threads, a FIFO job queue, and a
 * list of finished jobs announced through an eventfd that an event loop watches.  kvtierd's
 * codec workers (daemon/codec_pool.c), the NVMe tier's pread/pwrite engine
 * (tiers/nvme_pread.c) and its record verifiers (tiers/nvme_verify.c) are pools of this kind.
 *
 * A job is a struct the caller embeds in its own (intrusive: submitting never allocates, so it
 * cannot fail).  Its run() runs on a worker and touches only memory the job owns; the thread
 * that owns the caller's state (the event loop) takes finished jobs back with kvt_pool_reap().
 * Jobs start in submission order; they finish, and are reaped, in the order they finish.
 *
 * Threads: kvt_pool_submit*() and kvt_pool_finish() from any thread; kvt_pool_reap() from one
 * thread at a time (the loop); create and destroy from the loop.
 */
#ifndef KVT_POOL_H
#define KVT_POOL_H

#ifdef __cplusplus
extern "C" {
#endif

struct kvt_pool;

/* run()'s verdict. */
enum {
	KVT_POOL_DONE = 0,  /* finished: goes on the finished list, the eventfd is signalled */
	KVT_POOL_LATER = 1, /* someone calls kvt_pool_finish() for it later (or never: see below) */
};

struct kvt_pool_job {
	struct kvt_pool_job *next; /* the pool's while the job is queued or finished */
	/* Required.  Runs on a worker thread. */
	int (*run)(struct kvt_pool_job *j);
};

/*
 * Starts up to nthreads (>= 1) workers.  efd >= 0: finished jobs are announced on that
 * eventfd (the caller's, which may also carry other events; it stays the caller's); efd < 0:
 * the pool makes one of its own (kvt_pool_event_fd()).  Fewer threads than asked for is not
 * an error (kvt_pool_threads() says how many run); none at all is: -errno of the first
 * failure.  0 or -errno; *out is set on success only.
 */
int kvt_pool_create(unsigned nthreads, int efd, struct kvt_pool **out);

/* The workers that run (>= 1). */
unsigned kvt_pool_threads(const struct kvt_pool *p);

/* The eventfd that becomes readable when a job finishes (the caller's, if it gave one). */
int kvt_pool_event_fd(const struct kvt_pool *p);

/* Queues one job (j->next is overwritten). */
void kvt_pool_submit(struct kvt_pool *p, struct kvt_pool_job *j);

/* Queues jobs already linked through next (NULL-terminated) under one lock, in list order,
 * and wakes as many workers as it can use. */
void kvt_pool_submit_list(struct kvt_pool *p, struct kvt_pool_job *first);

/* Puts j on the finished list and signals the eventfd: for a job whose run() said
 * KVT_POOL_LATER, or any job the caller wants delivered to the reaping thread. */
void kvt_pool_finish(struct kvt_pool *p, struct kvt_pool_job *j);

/*
 * Takes every finished job, oldest first, and calls fn(j, arg) for each (the pool holds no
 * lock meanwhile: fn may submit).  Reads the pool's own eventfd first, so that a job finishing
 * meanwhile re-arms it; a caller-given eventfd is the caller's to read.  Returns how many.
 */
unsigned kvt_pool_reap(struct kvt_pool *p, void (*fn)(struct kvt_pool_job *j, void *arg),
		       void *arg);

/*
 * Waits until every queued job has run, then stops and joins the workers and frees the pool.
 * Jobs finished but not reaped are not touched: a caller that needs them reaps first (until
 * its own count of outstanding jobs is zero).  NULL is a no-op.
 */
void kvt_pool_destroy(struct kvt_pool *p);

#ifdef __cplusplus
}
#endif

#endif
