/* SPDX-License-Identifier: MIT */
/*
 * ops.h - the ring operations (ops.c).
 */
#ifndef KVTD_OPS_H
#define KVTD_OPS_H

#include <stdint.h>

#include "daemon.h" /* KVTD_LAT_BUCKETS */

/* Processes up to DRAIN_BATCH entries of c's submission ring. Returns how many. */
int client_drain(struct kvtd *d, struct client *c);
/* Answers the gets whose promotion ended (the readiness list, waiters.c). */
void kvtd_ready_drain(struct kvtd *d);
/* The daemon's key of c's key (lo, hi) in layout fp: tenant and salt mixed in. */
void internal_key(const struct kvtd *d, const struct client *c, uint64_t fp, uint64_t lo,
		  uint64_t hi, uint64_t *olo, uint64_t *ohi);
/* Counts a get of c that found nothing. */
void count_miss(struct kvtd *d, struct client *c);
/* Upper bounds of kvtier_request_duration_seconds' buckets, in ns (the last is +Inf). */
extern const uint64_t kvtd_lat_le_ns[KVTD_LAT_BUCKETS - 1];

#endif
