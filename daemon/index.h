/* SPDX-License-Identifier: MIT */
/*
 * index.h - the block index: a chained hash table over 128-bit internal keys, entries in
 * one array addressed by u32 index (stable across growth), and per tier an LRU list of the
 * blocks that may leave it.  Sized for index.max_blocks (1 M by default) without rehashing.
 */
#ifndef KVTD_INDEX_H
#define KVTD_INDEX_H

#include <stdint.h>

#define KVTD_NIL UINT32_MAX

enum kvtd_blk_state {
	KVTD_BLK_FREE = 0,
	KVTD_BLK_RESERVED, /* being written by its owner; invisible */
	KVTD_BLK_READY,	   /* committed; visible */
	KVTD_BLK_ZOMBIE,   /* deleted or evicted while leased; freed on the last release */
};

/* The tiers placement knows (daemon/tierlist.c); their order comes from tiers.order.  Each has
 * an LRU list here; host and NVMe copies are flagged in the block itself, GPU copies in
 * gpu_place.c's side table. */
enum kvtd_tier_id { KVTD_TIER_HOST = 0, KVTD_TIER_NVME = 1, KVTD_TIER_GPU = 2, KVTD_NTIERS };

enum { KVTD_IO_NONE = 0, KVTD_IO_DEMOTE = 1, KVTD_IO_PROMOTE = 2, KVTD_IO_ENCODE = 3 };

struct kvtd_blk {
	uint64_t key_lo, key_hi; /* internal key: tenant salt and layout already mixed in */
	uint32_t next;		 /* hash chain */
	uint32_t lru_prev[KVTD_NTIERS], lru_next[KVTD_NTIERS]; /* per tier (enum kvtd_tier_id) */
	uint32_t gen; /* bumped on every reuse of the entry: stale handles fail */
	uint32_t len;
	uint32_t tenant;
	uint32_t leases;
	uint32_t pins;
	uint32_t owner; /* client id holding the reservation */
	uint8_t state;
	uint8_t tier;		     /* fastest tier holding the data */
	uint8_t in_lru[KVTD_NTIERS]; /* per tier */
	uint8_t hashed;
	uint8_t on_host;    /* host arena copy at off */
	uint8_t on_nvme;    /* NVMe record at nvme_* (written and complete) */
	uint8_t io;	    /* KVTD_IO_*: demotion or promotion in flight */
	uint8_t prefetched; /* brought up by a prefetch and not read since */
	uint8_t acct;	    /* what the block counts in now (placement.c kvtd_blk_account) */
	uint32_t geom;	    /* its layout's geometry entry (placement.c), or KVTD_NIL */
	uint32_t nvme_len;  /* bytes reserved by the NVMe slot */
	uint64_t nvme_off;
	uint16_t nvme_file;
	uint16_t nvme_flags;
	uint32_t waiters; /* index into the daemon's waiter table, or KVTD_NIL */
	void *pend;	  /* the in-flight demotion or promotion (placement.c) */
	uint64_t off;	  /* byte offset in the tenant's arena */
	uint64_t fingerprint;
	uint64_t atime; /* daemon clock (ms) of the last put/get */
	uint64_t hits;
	uint32_t first_token; /* position of the block's first token (0 if not told) */
	/* The block's stored form, the same in every tier: hchain 0, the raw block of len
	 * bytes; else len bytes of a record of host chain hchain (kvtd_host_chain) that
	 * decodes to raw_len bytes.  Clients decode it; NVMe keeps it as it is. */
	uint32_t hchain;
	uint32_t raw_len;
};

struct kvtd_index {
	struct kvtd_blk *blk;
	uint32_t cap, used, max;
	uint32_t free_head;
	uint32_t *bucket;
	uint32_t mask;
	uint32_t count;					       /* entries in the hash */
	uint32_t lru_head[KVTD_NTIERS], lru_tail[KVTD_NTIERS]; /* per tier; head = most recently
								   used */
};

/* Returns 0 or -ENOMEM. */
int kvtd_index_init(struct kvtd_index *ix, uint32_t max_blocks);
void kvtd_index_fini(struct kvtd_index *ix);
/* Entry index of key, or KVTD_NIL. */
uint32_t kvtd_index_find(const struct kvtd_index *ix, uint64_t lo, uint64_t hi);
/* New entry for key (caller checked it is absent), hashed, state FREE; KVTD_NIL when full. */
uint32_t kvtd_index_insert(struct kvtd_index *ix, uint64_t lo, uint64_t hi);
/* Takes the entry out of the hash (lookups miss); the entry itself stays allocated. */
void kvtd_index_unhash(struct kvtd_index *ix, uint32_t i);
/* Unhashes (if needed), unlinks from the LRU and frees the entry; its gen is bumped. */
void kvtd_index_remove(struct kvtd_index *ix, uint32_t i);
/* The one LRU implementation: a list per tier (enum kvtd_tier_id) through the entries. */
void kvtd_lru_push(struct kvtd_index *ix, int list, uint32_t i); /* as most recently used */
void kvtd_lru_unlink(struct kvtd_index *ix, int list, uint32_t i);

static inline struct kvtd_blk *kvtd_blk(const struct kvtd_index *ix, uint32_t i)
{
	return &ix->blk[i];
}

#endif
