/* SPDX-License-Identifier: MIT */
/*
 * redis_harness.h - real redis-server processes on loopback for the remote tier's tests and
 * bench: a cluster (masters + replicas, created with redis-cli --cluster create) or one
 * plain Redis, on ports picked free at run time, in a temporary directory.
 *
 * Every server is started with PR_SET_PDEATHSIG = SIGKILL, and rh_stop()/an atexit handler
 * kill them, so no server outlives the test even when it crashes.  Every wait polls a
 * condition under a bound; none is a fixed sleep.
 */
#ifndef KVT_REDIS_HARNESS_H
#define KVT_REDIS_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <hiredis/hiredis.h>

#define RH_MAX 8

struct rh_cluster {
	unsigned n; /* servers */
	bool cluster;
	int port[RH_MAX];
	pid_t pid[RH_MAX]; /* -1 when not running */
	bool stopped[RH_MAX];
	char dir[256];
	char seeds[256]; /* "127.0.0.1:p1,127.0.0.1:p2,..." */
};

/* redis-server and redis-cli found? (77 = skip otherwise) */
bool rh_available(void);

/* n servers: cluster with replicas (n = masters * (1 + replicas)), or one plain Redis when
 * cluster is false (n = 1).  Waits for cluster_state:ok everywhere and every replica's link.
 * extra: more "--name value" arguments for every server (NULL-terminated), or NULL.
 * 0 or -errno; on failure everything started is stopped. */
int rh_start(struct rh_cluster *c, unsigned n, bool cluster, const char *const *extra);
void rh_stop(struct rh_cluster *c);

/* (Re)starts server i with its old configuration (its nodes.conf makes it rejoin). */
int rh_node_start(struct rh_cluster *c, unsigned i);
/* Sends sig to server i (SIGKILL: reaps it). */
void rh_node_signal(struct rh_cluster *c, unsigned i, int sig);

/* A command to one server (blocking hiredis, 2 s timeout); NULL on failure. */
redisReply *rh_cmd(int port, const char *fmt, ...);
/* The same, argv form. */
redisReply *rh_cmdargv(int port, int argc, const char **argv, const size_t *len);

/* Index of the server on port, or -1. */
int rh_index(const struct rh_cluster *c, int port);
/* Is server i a master now (ROLE)? */
bool rh_is_master(const struct rh_cluster *c, unsigned i);
/* Server index owning slot according to server `from`'s CLUSTER SLOTS, or -1. */
int rh_slot_owner(const struct rh_cluster *c, unsigned from, unsigned slot);

/*
 * Waits (polling, at most timeout_ms) until every running, not stopped server reports
 * cluster_state:ok, all of them agree on every slot's owner, no slot is owned by a server
 * that is not running, and every running replica's master link is up.  0 or -ETIMEDOUT.
 */
int rh_wait_healthy(struct rh_cluster *c, unsigned timeout_ms);
/* Waits until every master's replicas have acknowledged its whole replication stream. */
int rh_wait_synced(struct rh_cluster *c, unsigned timeout_ms);

/* Run a program to completion (argv[0] looked up in PATH); its exit status or -errno. */
int rh_run(const char *const *argv);
/* Start a program; its pid (with PDEATHSIG), or -errno. */
pid_t rh_spawn(const char *const *argv, const char *log);

uint64_t rh_now_ms(void);

#endif
