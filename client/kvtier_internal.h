/* SPDX-License-Identifier: MIT */
/*
 * kvtier_internal.h - libkvtier's private header (not installed): the client handle and what
 * the files of the library share.  The library by responsibility:
 *   kvtier_conn.c     the connection: handshake, mapping the rings and the arena, reconnection
 *                     after a daemon restart, the socket requests (layouts, statistics),
 *                     kvt_connect() and kvt_close();
 *   kvtier.c          requests on the rings: submission, completion waits, block copies, and
 *                     the one-block calls (reserve/commit, put, lease, get, lookup, pin...);
 *   kvtier_batch.c    batches: many ring entries for one round trip (kvt_*_batch);
 *   kvtier_gpu*.c     the device API, on top of the public calls (kvtier_gpu_internal.h).
 * Functions shared between files carry the kvtc_ prefix; like every symbol of the library
 * that is not kvt_*, they are hidden (-fvisibility=hidden and kvtier.map).
 */
#ifndef KVTIER_INTERNAL_H
#define KVTIER_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "kvt_check.h"
#include "kvt_proto.h"
#include "kvt_ring.h"
#include "kvtier.h"

#define CLIENT_MAGIC   0x4b56434cu /* "KVCL" */
#define POPULATE_CHUNK (2u << 20)

struct old_map {
	void *p;
	size_t n;
	struct old_map *next;
};

/* A host chain this client met: parsed once, kept until kvt_close() (chains are immutable,
 * so pointers to them stay valid and may be used outside c->lock). */
#define KVTC_MAX_CHAINS 16
struct kvtc_chain_ent {
	uint32_t id;
	struct kvt_chain *chain;
};

struct kvt_client {
	uint32_t magic;
	int sock, sq_efd, cq_efd;
	uint8_t *ring;
	size_t ring_size;
	uint8_t *arena;
	size_t arena_size;
	struct kvt_ring_ctl *sq, *cq;
	struct kvt_sqe *sqes;
	struct kvt_cqe *cqes;
	uint8_t *scratch;
	uint32_t sq_entries, cq_entries;
	uint32_t sq_tail, cq_head;
	uint64_t next_ud;
	pthread_mutex_t lock;
	int timeout_ms;
	unsigned spin_us;
	bool broken;
	_Atomic uint64_t *populated; /* one bit per POPULATE_CHUNK of arena mapped here */
	struct kvt_layout layouts[64];
	uint32_t nlayouts;
	/* The compressed host tier: per layout, the chain the daemon's LAYOUT reply named for
	 * its puts (NULL: raw); the chains met so far, by id. */
	const struct kvt_chain *put_chain[64];
	struct kvtc_chain_ent chains[KVTC_MAX_CHAINS];
	uint32_t nchains;
	char path[108];
	char name[64];
	uint64_t epoch;
	unsigned reconnects;
	int64_t expect_uid; /* kvt_connect_opts.daemon_uid */
	struct old_map *old_maps;
	struct old_map *spare_map; /* for detach(), which must not fail to keep the arena */
};

static inline uint64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* The daemon's CQ tail, read now: 0 with *tail set, or -KVT_EPROTOCOL (the client is broken
 * then) when it is out of range. */
static inline int cq_tail_read(struct kvt_client *c, uint32_t *tail)
{
	*tail = kvt_ring_tail(c->cq);
	if (*tail - c->cq_head > c->cq_entries) {
		c->broken = true;
		return -KVT_EPROTOCOL;
	}
	return 0;
}

/* Takes the next completion off the CQ into *q.  Returns 1, 0 when there is none, or
 * -KVT_EPROTOCOL when the daemon's tail is out of range. */
static inline int cq_pop(struct kvt_client *c, struct kvt_cqe *q)
{
	uint32_t tail;

	if (cq_tail_read(c, &tail) < 0)
		return -KVT_EPROTOCOL;
	if (tail == c->cq_head)
		return 0;
	memcpy(q, &c->cqes[c->cq_head & (c->cq_entries - 1)], sizeof(*q));
	c->cq_head++;
	kvt_ring_consume(c->cq, c->cq_head);
	return 1;
}

/* -EINVAL for NULL or what is not a live client (which, in a debug build, the KVT_CHECK_MAGIC
 * at the entry of each call has already stopped: kvt_check.h). */
static inline int check_client(const struct kvt_client *c)
{
	if (!c || c->magic != CLIENT_MAGIC)
		return -EINVAL;
	return 0;
}

/* A completion's offset and length must lie inside the arena before we touch memory. */
static inline int check_extent(const struct kvt_client *c, uint64_t off, uint64_t len)
{
	if (off > c->arena_size || len > c->arena_size - off)
		return -KVT_EPROTOCOL;
	return 0;
}

/* kvtier_conn.c */
int kvtc_reattach_locked(struct kvt_client *c);
/* The host chain of id (spec: its spec, or NULL to ask the daemon for it): NULL for raw (0),
 * or when it is unknown or cannot be parsed here.  Called with c->lock held. */
const struct kvt_chain *kvtc_chain_locked(struct kvt_client *c, uint32_t id, const char *spec);
/* Asks the daemon again which chain layout's puts use (after -ESTALE).  0 or -errno. */
int kvtc_layout_refresh(struct kvt_client *c, int layout);
/* kvtier.c: the compressed host tier (README "Compressed host tier") */
/* The codec geometry of blocks of l, first token at pos (KVT_POS_UNKNOWN: 0). */
void kvtc_geom(const struct kvt_layout *l, uint32_t pos, struct kvt_codec_geom *g);
/* Decodes the stored form (n bytes at src, a record of chain id; 0: raw) into dst: the raw
 * length, or -ENOBUFS (cap too small), -EBADMSG (malformed, or a chain not known here).
 * locked: c->lock is held. */
ssize_t kvtc_decode(struct kvt_client *c, uint32_t id, const void *src, size_t n, void *dst,
		    size_t cap, bool locked);
/* kvt_lease_release without asking the socket first whether the daemon is still there (a
 * system call): for leases the library took a moment ago and whose release it ignores, as
 * kvt_get does; a hold of a previous daemon is still never released on its successor. */
int kvtc_lease_release_quiet(struct kvt_client *c, struct kvt_lease *l);
/* The chain layout's puts of len bytes are encoded with (NULL: stored raw). */
const struct kvt_chain *kvtc_put_chain(struct kvt_client *c, int layout, size_t len);
/* The host chain of id (asked of the daemon when new), or NULL. */
const struct kvt_chain *kvtc_chain_get(struct kvt_client *c, uint32_t id);
/* A reservation of len bytes: the raw block (chain 0), or a record of chain decoding to
 * raw_len bytes.  As kvt_put_reserve, and -ESTALE when the daemon wants another chain. */
int kvtc_reserve(struct kvt_client *c, int layout, const struct kvt_key *key, size_t len,
		 uint32_t chain, size_t raw_len, struct kvt_reservation *r);
/* The raw length a stored form decodes to: n for raw, the record's for a chain, or -EBADMSG. */
ssize_t kvtc_raw_len(uint32_t id, const void *src, size_t n);

/* kvtier.c */
int kvtc_cq_wait(struct kvt_client *c, uint64_t start, bool *asleep);
void kvtc_populate(struct kvt_client *c, uint64_t off, uint64_t len);
void kvtc_copy_block(void *dst, const void *src, size_t n);

#endif /* KVTIER_INTERNAL_H */
