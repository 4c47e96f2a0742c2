/* SPDX-License-Identifier: MIT */
/*
 * redis_internal.h - what redis_cluster.c (slot map, calls) and redis_conn.c (connections,
 * replies, I/O) share.  Not API: the contract is redis_cluster.h.
 *
 * Replies come back in order per connection: each node keeps a FIFO of what it owes
 * (a command of the current call, an ASKING, the AUTH, a CLUSTER SLOTS), tagged with the
 * generation of the call (or refresh) that sent it.  When a call returns with replies still
 * owed, the entries become orphans whose replies are dropped on arrival, so a late reply can
 * never be taken for another command's.
 */
#ifndef KVT_REDIS_INTERNAL_H
#define KVT_REDIS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "redis_cluster.h"

#define RC_MAGIC       0x4b52434cu /* "LCRK" */
#define RC_MAX_NODES   256u
#define RC_BORROW_MIN  4096u /* argument pieces at least this long are sent from the caller */
#define RC_RBUF	       (256u * 1024u)
#define RC_MAX_ORPHANS 4096u
#define RC_IOV	       64

enum { RC_DOWN, RC_CONNECTING, RC_UP };
enum { PEND_CMD, PEND_ASKING, PEND_AUTH, PEND_SLOTS };
/* Command states inside one exec. */
enum { CS_READY, CS_SENT, CS_DONE, CS_BACKOFF };

struct rc_seg {
	const char *ptr; /* borrowed, or NULL: arena + off */
	size_t off, len;
};

struct rc_pend {
	uint8_t kind;
	int32_t cmd; /* PEND_CMD: index in the current call's array, -1 = orphan */
	uint64_t gen;
};

struct rc_node {
	char host[48];
	int port;
	char addr[64];
	int fd, state;
	redisReader *rd;
	char *arena;
	size_t arena_len, arena_cap;
	struct rc_seg *segs;
	unsigned nseg, seg_cap, seg_head;
	size_t seg_off;
	bool borrowed; /* unsent segments point at caller memory */
	struct rc_pend *pend;
	unsigned pend_head, pend_n, pend_cap;
	unsigned fails;
	uint64_t open_until;
	unsigned slots;
	uint64_t bytes_out, bytes_in, errors, trips;
};

struct kvt_rc {
	uint32_t magic;
	struct kvt_rc_conf conf;
	char *user, *pass;
	struct rc_node *nodes;
	unsigned nnodes;
	unsigned nseeds;
	int seeds[16];
	uint16_t map[KVT_RC_SLOTS];    /* node index + 1, 0 = unknown */
	uint16_t newmap[KVT_RC_SLOTS]; /* CLUSTER SLOTS being parsed */
	bool have_map, need_refresh, standalone;
	uint64_t last_refresh;
	int refresh_err; /* the last refresh's result */
	unsigned refresh_rr;
	uint64_t gen;
	/* current call */
	struct kvt_rc_cmd *cmds;
	unsigned ncmds;
	unsigned active; /* PEND_CMD entries of this call not yet answered */
	/* current refresh */
	redisReply *slots_reply;
	int slots_node;
	unsigned slots_active;
	int slots_err;
	char *rbuf;
	struct kvt_rc_stats st;
	char err[256];
};

/* redis_conn.c: nodes and their breakers */
int kvt_rcn_find(struct kvt_rc *rc, const char *host, int port, bool create);
bool kvt_rcn_breaker_open(const struct rc_node *n, uint64_t now);
void kvt_rcn_count_fail(struct kvt_rc *rc, struct rc_node *n);
void kvt_rcn_drop(struct kvt_rc *rc, struct rc_node *n, int err, bool counts);
int kvt_rcn_connect(struct kvt_rc *rc, struct rc_node *n);
/* queueing requests */
int kvt_rcn_pend_push(struct rc_node *n, uint8_t kind, int32_t cmd, uint64_t gen);
int kvt_rcn_queue_args(struct rc_node *n, unsigned argc, const struct kvt_rc_arg *arg);
int kvt_rcn_queue_strs(struct rc_node *n, unsigned argc, const char *const *argv);
/* does n owe replies to the current generation, or hold unsent bytes? */
bool kvt_rcn_busy(const struct kvt_rc *rc, const struct rc_node *n);
/* drives every busy connection until stop(rc) or the deadline: 0, -ETIMEDOUT, -errno */
int kvt_rcn_io(struct kvt_rc *rc, uint64_t deadline, bool (*stop)(const struct kvt_rc *));
/* an error reply that starts with the word p */
bool kvt_rcn_prefix(const redisReply *r, const char *p);
__attribute__((format(printf, 2, 3))) void kvt_rcn_seterr(struct kvt_rc *rc, const char *fmt, ...);

#endif
