/* SPDX-License-Identifier: MIT */
/*
 * redis_cluster.h - a small Redis Cluster client for the remote tier (tier_remote.c).
 *
 * Debian 12's hiredis (0.14) has no cluster support, so the routing lives here, over
 * hiredis's RESP reader: CRC16 key slots (with {hash tags}), a slot map read from
 * CLUSTER SLOTS, MOVED updates the map, ASK is answered with ASKING, and CLUSTERDOWN,
 * TRYAGAIN, LOADING and I/O errors refresh the map and retry until the call's deadline.
 * A Redis without cluster support (CLUSTER SLOTS refused) serves every slot itself.
 *
 * Every call takes an absolute deadline (CLOCK_MONOTONIC ns, kvt_rc_now_ns()) and never
 * blocks past it: sockets are non-blocking (connect included) and all waiting is one poll()
 * bounded by the deadline.  Commands of one call are pipelined: each goes to its slot's node
 * at once, all nodes are driven in parallel.  A node that fails breaker_failures times in a
 * row (refused, reset, timed out, protocol error) opens its circuit breaker: for
 * breaker_open_ms its commands fail at once with -EHOSTDOWN, then one call may try it again.
 *
 * Threading: a struct kvt_rc is one I/O thread's: one connection per node, no locks.  Use
 * one per thread.  Errors: >= 0 success, -errno failure; kvt_rc_errstr() says more.
 * Limits: 256 nodes.  Nodes are best named by address: a host name (from the seeds, MOVED or
 * CLUSTER SLOTS) is resolved with getaddrinfo() at connect, which the deadline cannot bound.
 */
#ifndef KVT_REDIS_CLUSTER_H
#define KVT_REDIS_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KVT_RC_SLOTS	16384u
#define KVT_RC_MAX_ARGS 8u

struct kvt_rc;

struct kvt_rc_conf {
	size_t size;		   /* sizeof(struct kvt_rc_conf) */
	const char *seeds;	   /* "host:port[,host:port...]": any nodes of the cluster */
	const char *auth_file;	   /* NULL, or a file whose first line is "password" or "user
				      password" (AUTH); read once by kvt_rc_open() */
	unsigned breaker_failures; /* consecutive failures that open a node (default 3) */
	unsigned breaker_open_ms;  /* how long an open breaker refuses (default 500) */
	unsigned refresh_min_ms;   /* at most one CLUSTER SLOTS per this, unless the map is
				      empty (default 100) */
	unsigned max_redirects;	   /* MOVED/ASK/TRYAGAIN... hops per command (default 16) */
};

/* One argument: one or two pieces sent back to back (a record header and its payload
 * without copying them together).  Pieces are borrowed until the call returns. */
struct kvt_rc_arg {
	const void *p[2];
	size_t len[2];
};

/*
 * One command.  The caller fills argc, arg[] (arg[key_arg] is the key that routes it), and
 * optionally dst[]: where a bulk-string reply of at least dst_len[0] and at most dst_len[0] +
 * dst_len[1] bytes is copied straight from the socket buffer (its first dst_len[0] bytes to
 * dst[0], the rest to dst[1]); such a reply has str = NULL and len set.  Other replies, and
 * strings that do not fit, come as usual.  dst memory may be written even when res < 0.
 * After kvt_rc_exec(): res = 0 and reply = the node's reply (not an error reply; the caller
 * frees it with freeReplyObject(), or kvt_rc_cmd_clear()), or res < 0 and reply = NULL:
 *   -ETIMEDOUT     the deadline passed first
 *   -EHOSTDOWN     the node's breaker is open
 *   -EHOSTUNREACH  no node serves the slot (map empty or slot uncovered)
 *   -ECONNREFUSED, -ECONNRESET, -EPIPE, ...: I/O with the node failed (after retries)
 *   -EPROTO        the node broke the protocol (garbage, malformed CLUSTER SLOTS)
 *   -EAGAIN        CLUSTERDOWN / TRYAGAIN / LOADING until out of redirects
 *   -EACCES        AUTH failed, or NOAUTH / NOPERM
 *   -EREMOTEIO     any other error reply (text in kvt_rc_errstr())
 */
struct kvt_rc_cmd {
	unsigned argc;
	unsigned key_arg; /* index of the routing key in arg[] (usually 1) */
	struct kvt_rc_arg arg[KVT_RC_MAX_ARGS];
	void *dst[2];
	size_t dst_len[2];
	redisReply *reply;
	int res;
	/* private to kvt_rc_exec */
	int ask_node;
	unsigned hops;
	uint16_t slot;
	uint8_t state;
};

/* Per node, for kvtierctl and tests. */
struct kvt_rc_node_info {
	char addr[64];	    /* host:port as the cluster announces it */
	unsigned slots;	    /* slots the map gives it */
	int connected;	    /* a connection is open */
	int breaker_open;   /* refusing until the breaker half-opens */
	uint64_t bytes_out; /* bytes sent */
	uint64_t bytes_in;  /* bytes received */
	uint64_t errors;    /* connect/I/O/protocol errors and timeouts */
	uint64_t breaker_trips;
};

struct kvt_rc_stats {
	uint64_t commands;	     /* commands completed with a reply */
	uint64_t moved;		     /* MOVED replies followed */
	uint64_t ask;		     /* ASK replies followed (ASKING sent) */
	uint64_t retry_errors;	     /* CLUSTERDOWN, TRYAGAIN, LOADING, MASTERDOWN replies */
	uint64_t refreshes;	     /* CLUSTER SLOTS answered and applied */
	uint64_t refresh_fails;	     /* refreshes that found no node able to answer */
	uint64_t timeouts;	     /* commands failed with -ETIMEDOUT */
	uint64_t io_errors;	     /* connection failures */
	uint64_t proto_errors;	     /* protocol violations */
	uint64_t breaker_fast_fails; /* commands refused by an open breaker */
	unsigned nodes;
	int standalone; /* the seed refused CLUSTER: a plain Redis serves every slot */
};

/* Slot of a key: CRC16 (XMODEM) of the key or of its first non-empty {hash tag}, mod 16384. */
unsigned kvt_rc_keyslot(const void *key, size_t len);

/* CLOCK_MONOTONIC in ns: the clock of every deadline here. */
uint64_t kvt_rc_now_ns(void);

/* Reads the configuration (and the auth file); contacts no node: the first call does.
 * -EINVAL for a bad seed list, -errno if the auth file cannot be read, -ENOMEM. */
int kvt_rc_open(const struct kvt_rc_conf *conf, struct kvt_rc **out);
void kvt_rc_close(struct kvt_rc *rc); /* NULL is a no-op */

/*
 * Runs n commands, pipelined and routed by slot, until each has its result or the deadline
 * passes.  Returns how many got res = 0, or -EINVAL.  The arguments are borrowed until it
 * returns (a command not fully sent by then has its connection closed).
 */
int kvt_rc_exec(struct kvt_rc *rc, struct kvt_rc_cmd *cmds, unsigned n, uint64_t deadline_ns);

/* Frees cmd->reply (if any) and resets the result fields. */
void kvt_rc_cmd_clear(struct kvt_rc_cmd *cmd);

/* Reads the slot map now (CLUSTER SLOTS to up to three nodes at once, the first valid answer
 * wins).  0, or the error of the last node tried (kvt_rc_errstr() says which and why). */
int kvt_rc_refresh(struct kvt_rc *rc, uint64_t deadline_ns);

/* The node the map gives slot to ("host:port"), or NULL. */
const char *kvt_rc_slot_node(struct kvt_rc *rc, unsigned slot);

/* The last error's text ("127.0.0.1:7001: protocol error: ..."); never NULL. */
const char *kvt_rc_errstr(const struct kvt_rc *rc);

void kvt_rc_get_stats(const struct kvt_rc *rc, struct kvt_rc_stats *st);

/* Fills up to max entries; returns the number of nodes known. */
unsigned kvt_rc_nodes(const struct kvt_rc *rc, struct kvt_rc_node_info *out, unsigned max);

#ifdef __cplusplus
}
#endif
#endif
