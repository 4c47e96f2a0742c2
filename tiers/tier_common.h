/* SPDX-License-Identifier: MIT */
/*
 * tier_common.h - helpers the tiers share (tier_common.c), internal to tiers/: the queue of
 * completed requests whose done() a tier that completes synchronously runs from complete()
 * (tier.h forbids running it inside read()/write()), and the tier's log line.
 */
#ifndef KVT_TIER_COMMON_H
#define KVT_TIER_COMMON_H

#include "tier.h"

struct kvt_tier_doneq {
	struct kvt_tier_io *head, *tail; /* linked through tier_priv[0] */
};

/* Queues a completed request (io->res set). */
void kvt_tier_doneq_push(struct kvt_tier_doneq *q, struct kvt_tier_io *io);
/* Runs the queued done() callbacks in order; returns how many ran. */
int kvt_tier_doneq_run(struct kvt_tier_doneq *q);

/* One log line through conf->log (level as syslog), or "kvtier NAME: msg" on stderr. */
void kvt_tier_log(void (*log)(void *arg, int level, const char *msg), void *arg, const char *name,
		  int level, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#endif
