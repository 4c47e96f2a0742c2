/* SPDX-License-Identifier: MIT */
/*
 * remote_int.h - what the two halves of kvtierd's remote tier share, and nothing else
 * includes: the jobs, the I/O threads' state and the queues between them.  remote_place.c is
 * the event loop's side (the fence, lookups, fetches, installs, setup); remote_io.c the I/O
 * threads (puts, DELs, lookups and gets against the cluster).  Built with KVT_HAVE_REMOTE only.
 */
#ifndef KVTD_REMOTE_INT_H
#define KVTD_REMOTE_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "place_int.h"
#include "redis_cluster.h"
#include "tier_remote.h"

#define PUT_BATCH 16u
#define FENCE_MAX 1024u

enum { RJ_PUT, RJ_LOOKUP, RJ_GET, RJ_DEL };

/* A deleted key this host does not fetch remotely (loop side only). */
struct fence {
	uint64_t lo, hi, fp;
	uint64_t expire_ns; /* when failed: gone then (UINT64_MAX: never) */
	uint32_t pending;   /* DELs and replacing puts in flight */
	bool failed;	    /* a DEL failed: the copy may be there until its TTL */
};

struct rjob {
	struct rjob *next;
	int kind;
	uint32_t client_id;
	uint64_t user_data;
	/* put: the block's bytes and geometry, its record header */
	void *raw;
	uint32_t len;
	struct kvt_codec_geom g;
	struct kvt_remote_put put;
	/* lookup: keys[0..m) after the found first ones, of n asked; res: found in all */
	struct kvt_remote_key *keys;
	uint32_t found, n, m;
	int res;
	/* lookup, get: the absolute deadline, from when the client asked (a job that waited
	 * for a thread past it is a miss at once) */
	uint64_t deadline;
	/* get: the key, the owner, the largest block; after: raw/len or err */
	struct kvt_remote_key key;
	uint32_t tenant, uid, max_len, waiter, first_token;
	int err;
	/* get: R->del_gen when asked; put, del: comes back to the loop (the fence) */
	uint64_t del_gen;
	bool tracked;
};

struct rthread {
	struct kvtd_remote *R;
	pthread_t th;
	bool started;
	struct kvt_remote *r;
	/* what the thread saw last (under R->mu): for kvtierctl */
	struct kvt_remote_stats st;
	struct kvt_rc_stats rc;
	struct kvt_rc_node_info nodes[KVTD_REMOTE_NODES];
	unsigned nnodes;
	/* the puts this thread is writing (under R->mu): a DEL of one of them waits */
	struct rjob *busy[PUT_BATCH];
	unsigned nbusy;
};

struct kvtd_remote {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int efd;
	bool stop;
	struct rjob *hi_head, *hi_tail;	  /* lookups and gets */
	struct rjob *put_head, *put_tail; /* write-behind */
	struct rjob *done_head, *done_tail;
	struct rjob *lk_head, *lk_tail; /* finished lookups, loop side */
	uint32_t put_queued, del_queued;
	/* the fence (loop side): deleted keys not fetched remotely */
	struct fence fence[FENCE_MAX];
	unsigned nfence;
	uint32_t untracked;	  /* DELs in flight of keys the full fence could not hold */
	uint64_t deny_until_ns;	  /* a DEL of such a key failed: no remote fetch until then */
	uint64_t del_gen, ttl_ns; /* deletes so far; remote.ttl (0: none) */
	/* counters of the threads (under mu), copied into d->m by kvtd_remote_sync() */
	uint64_t puts, put_bytes, put_errors, corrupt, errors;
	struct kvt_chain *chain, *raw; /* remote.codec; raw for blocks it refuses */
	uint64_t lookup_ns, get_ns, put_ns;
	unsigned nth;
	struct rthread th[];
};

static inline void job_free(struct rjob *j)
{
	if (!j)
		return;
	free(j->raw);
	free(j->keys);
	free(j);
}

static inline void q_push(struct rjob **head, struct rjob **tail, struct rjob *j)
{
	j->next = NULL;
	if (*tail)
		(*tail)->next = j;
	else
		*head = j;
	*tail = j;
}

static inline struct rjob *q_pop(struct rjob **head, struct rjob **tail)
{
	struct rjob *j = *head;

	if (j) {
		*head = j->next;
		if (!*head)
			*tail = NULL;
	}
	return j;
}

/* An I/O thread (arg: its struct rthread). */
void *kvtd_remote_io_main(void *arg);

#endif
