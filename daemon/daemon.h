/* SPDX-License-Identifier: MIT */
/*
 * daemon.h - kvtierd's internal state (struct kvtd, clients, tenants), and the functions of
 * the lower layers that the upper ones call: tenants (tenants.c), where blocks live and how
 * they change (placement.c, block.c, gpu_place.c), the gets waiting for a promotion
 * (waiters.c) and the codec workers (codec_pool.c).  The layers above (server.c,
 * networking.c, admin.c, render.c, gpu_msgs.c, ops.c, holds.c) have a header each;
 * docs/ARCHITECTURE.md lists who owns what.  Nothing here calls up into them.
 */
#ifndef KVTD_DAEMON_H
#define KVTD_DAEMON_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "codec.h"
#include "config.h"
#include "index.h"
#include "kvt_metrics.h"
#include "kvt_pool.h"
#include "kvt_proto.h"
#include "kvt_shm.h"
#include "log.h"
#include "pagemap.h"
#include "tier.h"
#include "tierlist.h"

#define CLIENT_MAGIC 0x434c4e54u /* "CLNT" */
#define TENANT_MAGIC 0x54454e54u /* "TENT" */
#define MAX_LAYOUTS  64
#define MAX_HOLDS    (1u << 20)
#define DRAIN_BATCH  64
#define ADMIN_CHUNK  32768

enum ev_kind { EV_LISTEN = 1, EV_SOCK, EV_SQ, EV_TIMER, EV_SIGNAL, EV_TIER, EV_CODEC, EV_REMOTE };

struct ev {
	enum ev_kind kind;
	void *p;
};

enum hold_kind {
	HOLD_NONE = 0,
	HOLD_RESERVE,
	HOLD_LEASE,
	HOLD_PIN,
	HOLD_GPU_RESERVE,
	HOLD_GPU_LEASE
};

struct hold {
	uint32_t blk, blk_gen;
	uint32_t gen;
	uint8_t kind;
	uint32_t next_free;
};

struct tenant {
	uint32_t magic;
	uint32_t uid;
	int memfd;
	uint8_t *base;
	uint64_t size;
	uint16_t host_file; /* its arena's file in the host tier (kvtd_host_attach) */
	uint64_t used_bytes;
	uint64_t blocks;
	unsigned nclients;
	uint64_t
	    held_bytes; /* pages of its blocks that are pinned or leased (host.tenant_hold_max) */
	uint64_t evictions; /* its blocks evicted from the host tier, or to make index room */
	uint32_t ngeoms;    /* layout geometries it holds (index.max_layouts_per_tenant) */
	/* Its arena is registered with CUDA: by the GPU tier here (gpu_reg) or by connected
	 * device clients (pinners).  Pinned pages must not be punched: the GPU would go on
	 * writing pages the CPU no longer sees.  Freed pages are punched when both end. */
	unsigned pinners;
	bool gpu_reg;
};

struct layout_slot {
	uint64_t fp;
	uint32_t block_bytes;
	uint32_t geom; /* the geometry entry this slot holds a reference on (placement.c) */
	/* the host chain the LAYOUT reply named (kvtd_host_chain): what its puts may use */
	const struct kvt_chain *hchain;
};

struct admin_job; /* a listing that runs over several event-loop turns (admin.c) */

/* daemon.user_admin_rate: one bucket of admin commands per non-admin uid (admin.c). */
#define KVTD_ADMIN_BUCKETS 64
struct kvtd_admin_bucket {
	uint32_t uid;
	double tokens;
	uint64_t ms; /* last use (0: free) */
};

struct client {
	uint32_t magic;
	uint32_t id;
	int sock, sq_efd, cq_efd;
	struct ev sock_ev, sq_ev;
	bool hello, admin, data, dead;
	bool device;	/* libkvtier's GPU-tier connection (KVT_HELLO_DEVICE) */
	bool abnormal;	/* ended by the daemon for a protocol error, or holding unfinished work */
	int refused;	/* -errno: told so in reply to its HELLO, then closed; not a client */
	bool throttled; /* over daemon.user_admin_rate: its socket is not read until a tick */
	uid_t uid;
	gid_t gid;
	pid_t pid;
	char name[64];
	struct tenant *t;
	/* rings */
	uint8_t *ring;
	uint32_t ring_size;
	struct kvt_ring_ctl *sq, *cq;
	struct kvt_sqe *sqes;
	struct kvt_cqe *cqes;
	uint8_t *scratch;
	uint32_t sq_entries, cq_entries;
	uint32_t sq_head, cq_tail; /* daemon's own copies: never re-read from shm */
	/* layouts and holds */
	struct layout_slot layouts[MAX_LAYOUTS];
	uint32_t nlayouts;
	struct hold *holds;
	uint32_t nholds, cap_holds, free_hold;
	uint32_t n_leases, n_reserves, n_pins;
	uint64_t puts, gets, hits, misses, lookups;
	uint64_t connected_ms;
	struct admin_job *job;
	struct client *next;
};

struct tier_stats {
	uint64_t hits, misses, bytes_read, bytes_written;
};

/* A get waiting for its block to come up from NVMe (waiters.c): chained on the block while
 * it waits, then on the readiness list with the outcome until ops.c answers it. */
struct waiter {
	uint32_t client_id;
	uint32_t next;
	uint64_t user_data;
	uint32_t blk, gen; /* on the readiness list: the block, its generation then */
	int32_t err;	   /* ...and the outcome: 0 (on the host now) or -errno */
};

/* A prefetch waiting for NVMe queue depth: highest priority first, FIFO within one. */
#define KVTD_PF_LEVELS 4
#define KVTD_PF_CAP    4096u

struct pf_item {
	uint32_t blk, gen;
	uint64_t deadline_us; /* 0: none */
};

struct pf_ring {
	struct pf_item *items;
	uint32_t head, tail;
};

/* Geometry of a layout some client of a tenant registered: what the NVMe codec chain
 * needs.  Hashed by (fingerprint, tenant); freed when no block and no client refers to it. */
struct geom_slot {
	uint64_t fp;
	uint32_t tenant; /* index in d->tenants */
	uint32_t refs;	 /* client layout slots and blocks */
	uint32_t next;	 /* hash chain, or the free list */
	struct kvt_codec_geom g;
	char model[64]; /* the layout's model_id (codec = auto shows it) */
};

/* Request kinds timed in kvtier_request_duration_seconds, and its bucket count. */
enum { KVTD_LAT_RESERVE, KVTD_LAT_COMMIT, KVTD_LAT_GET, KVTD_LAT_LOOKUP, KVTD_LAT_OPS };
#define KVTD_LAT_BUCKETS 16

struct kvtd {
	struct kvtd_config cfg;
	int ep, lsock, tfd, sfd;
	bool lsock_from_systemd, stop;
	char sock_path[108];
	struct ev lsock_ev, tfd_ev, sfd_ev;
	struct kvtd_index ix;
	struct tenant **tenants;
	uint32_t ntenants;
	struct client *clients;
	uint32_t nclients, next_client_id;
	uint64_t salt;
	uint64_t epoch;
	uint64_t start_ms;
	uint64_t host_used;
	/* The tiers in tiers.order, fastest first (tierlist.c); by id, NULL when not listed */
	struct kvtd_tier tiers[KVTD_NTIERS];
	uint32_t ntiers;
	struct kvtd_tier *tier_at[KVTD_NTIERS];
	struct tier_stats tier[KVTD_NTIERS];
	struct kvt_metrics m;
	gid_t admin_gid;
	bool have_admin_gid;
	bool watchdog;
	uint8_t *msgbuf;
	/* NVMe tier (nvme_place.c): its instance in d->tiers, NULL when not open */
	struct kvt_tier *nvme;
	const struct kvt_tier_ops *nvme_ops;
	struct kvt_chain *nvme_chain, *raw_chain;
	struct kvt_chain *host_chain; /* host.codec (host_place.c); NULL when raw */
	struct kvt_dict *nvme_dict;   /* nvme.codec_dict, for a chain that needs one */
	struct ev nvme_ev;
	/* The NVMe recovery scan runs (placement.c): NVMe is not used, puts and deletes of keys
	 * not in the index are refused (-EAGAIN). */
	bool nvme_recovering;
	uint64_t nvme_install_bad; /* records that passed the tier's check, failed ours */
	struct kvtd_cpool *cpool;  /* codec workers (codec_pool.c), NULL = codecs run inline */
	struct kvtd_auto *autoc;   /* codec = auto: calibrations, choices (codec_auto.c) */
	struct ev cpool_ev;
	uint64_t host_encoding; /* host bytes of blocks being encoded for demotion */
	uint64_t seq;
	struct geom_slot *geoms;
	uint32_t ngeoms, cap_geoms, free_geom;
	uint32_t *geom_bucket, geom_mask;
	/* Blocks (READY) with a copy per tier: kept exact at every change (kvtd_blk_account),
	 * so status and metrics never scan the index.  check_counts (KVTIER_CHECK_COUNTS=1 in
	 * the environment, for tests) compares them with a full scan at every tick. */
	uint64_t tier_nblocks[KVTD_NTIERS];
	bool check_counts;
	/* Connections: those refused but waiting for their HELLO to be told why; accept()
	 * backing off after EMFILE/ENFILE (the listener is out of epoll until a tick) */
	uint32_t nrefused;
	bool accept_paused, emfile_logged;
	struct kvtd_admin_bucket admin_rate[KVTD_ADMIN_BUCKETS]; /* daemon.user_admin_rate */
	/* pidfds of peers whose connection ended holding something: dead at the next tick
	 * (client_deaths_total), or alive (they closed it: a normal end) */
	int dying[64];
	uint32_t ndying;
	struct waiter *waiters;
	uint32_t nwaiters, cap_waiters, free_waiter;
	uint32_t ready_head, ready_tail; /* the readiness list (waiters.c), FIFO */
	struct pf_ring pf[KVTD_PF_LEVELS];
	uint32_t pf_inflight;
	uint64_t pf_bytes; /* ... and their records' bytes */
	/* Remote tier (remote_place.c); NULL when remote.nodes is empty */
	struct kvtd_remote *remote;
	struct ev remote_ev;
	/* GPU tier (gpu_place.c); NULL when off or unavailable (gpu_err says why) */
	struct kvtd_gpu *gpu;
	int gpu_err;
	/* Operators' view: wall-clock start, request latency histograms (ops.c, render.c). */
	uint64_t start_unix;
	uint64_t lat_bucket[KVTD_LAT_OPS][KVTD_LAT_BUCKETS]; /* non-cumulative */
	uint64_t lat_count[KVTD_LAT_OPS], lat_sum_ns[KVTD_LAT_OPS];
};

/* tenants.c: one arena per uid.  The tenant of uid, created on first use; NULL when its
 * arena cannot be made (logged). */
struct tenant *kvtd_tenant_get(struct kvtd *d, uint32_t uid);
struct tenant *kvtd_tenant_of(struct kvtd *d, const struct kvtd_blk *b);
/* t's index in d->tenants (what a block records). */
uint32_t kvtd_tenant_index(struct kvtd *d, const struct tenant *t);
/* Unmaps and frees every tenant's arena. */
void kvtd_tenants_fini(struct kvtd *d);

/*
 * waiters.c: the gets waiting for a promotion, and the readiness list.  Placement chains a
 * waiter on the block it promotes and, when the promotion ends, hands the chain to the
 * readiness list with the outcome; ops.c (kvtd_ready_drain) answers the gets from there, on
 * the same turn of the loop.  Nothing here calls another part of the daemon.
 */
void kvtd_waiters_init(struct kvtd *d);
void kvtd_waiters_fini(struct kvtd *d);
/* A waiter for (client_id, user_data) in front of chain next: its index, KVTD_NIL when out
 * of memory. */
uint32_t kvtd_waiter_new(struct kvtd *d, uint32_t next, uint32_t client_id, uint64_t user_data);
/* The gets of chain w, waiting for block blk, are answered with err (0: on the host now):
 * appended to the readiness list in chain order. */
void kvtd_waiters_ready(struct kvtd *d, uint32_t w, uint32_t blk, int err);
/* Takes the oldest entry off the readiness list into *out (its entry is free again).
 * False when the list is empty. */
bool kvtd_ready_pop(struct kvtd *d, struct waiter *out);

/* placement.c (with tierlist.c, host_place.c, demote.c, promote.c, nvme_place.c) */
int kvtd_place_init(struct kvtd *d);
void kvtd_place_fini(struct kvtd *d);
/* The geometry entry of (fp, t), made from l when new: its index (no reference taken), or
 * -KVT_ELIMIT when t holds index.max_layouts_per_tenant already, or -ENOMEM. */
int64_t kvtd_geom_note(struct kvtd *d, struct tenant *t, uint64_t fp, const struct kvt_layout *l);
void kvtd_geom_ref(struct kvtd *d, uint32_t g);
/* Drops a reference; the entry is freed with its last one. */
void kvtd_geom_unref(struct kvtd *d, uint32_t g);
/* Block i (just inserted) refers to the geometry of its fingerprint, if known. */
void kvtd_blk_geom(struct kvtd *d, uint32_t i);
/* A new entry for key (lo, hi), state FREE: when index.max_blocks are in use, the least
 * recently used block that nobody holds is evicted to make room.  KVTD_NIL when none can. */
uint32_t kvtd_blk_insert(struct kvtd *d, uint64_t lo, uint64_t hi);
/* Brings block i's counters (per tier, per tenant) up to date after a change. */
void kvtd_blk_account(struct kvtd *d, uint32_t i);
/* Compares every counter kept by kvtd_blk_account with a full scan; aborts on a mismatch. */
void kvtd_check_counts(struct kvtd *d);
/* Tenant t's arena got or lost a CUDA registration (pinned: +1 or -1 pinner). */
void kvtd_tenant_pinned(struct kvtd *d, struct tenant *t, int delta);
/* Whether freed pages of t's arena go back to the host now (several tenants, none pinned). */
bool kvtd_tenant_may_punch(const struct kvtd *d, const struct tenant *t);
/* Tenant t's new arena (t->memfd, t->base, t->size) becomes a file of the host tier. 0 or
 * -errno.  Its ranges go when the host tier closes (kvtd_place_fini). */
int kvtd_host_attach(struct kvtd *d, struct tenant *t);
/* Room for len bytes in t's arena, evicting (and demoting) as needed: offset or -errno. */
int64_t kvtd_host_alloc(struct kvtd *d, struct tenant *t, uint32_t len);
/*
 * The compressed host tier (host_place.c).  kvtd_host_chain: the chain clients encode the
 * blocks of layout geometry g with (NULL: raw), told them in the LAYOUT reply.  Today
 * host.codec for every geometry that chain can code; the one place a per-layout choice
 * (host.codec = auto) plugs in.  kvtd_host_chain_by_id: a host chain by id (NULL for 0 and
 * unknown ids): the chains whose records the host tier may hold.
 */
int kvtd_host_chain_init(struct kvtd *d);
void kvtd_host_chain_fini(struct kvtd *d);
const struct kvt_chain *kvtd_host_chain(struct kvtd *d, uint64_t fp,
					const struct kvt_codec_geom *g);
const struct kvt_chain *kvtd_host_chain_by_id(struct kvtd *d, uint32_t id);
/* Checks the header of the record a client wrote into reserved block i's host extent against
 * what its reservation announced (chain, raw length, geometry): 0 or -EBADMSG. */
int kvtd_host_check_record(struct kvtd *d, uint32_t i);
void kvtd_host_unalloc(struct kvtd *d, struct tenant *t, uint64_t off, uint32_t len);
/* Forgets a block in every tier; waiting gets see a miss. */
void kvtd_blk_drop(struct kvtd *d, uint32_t i);
/* Deletes a leased block: invisible at once, freed on the last release. */
void kvtd_blk_hide(struct kvtd *d, uint32_t i);
/* A client's delete of block i (hidden while leased, else dropped), answered only once no
 * NVMe record of it can come back after a crash (kvt_tier_ops.settle). */
void kvtd_blk_delete(struct kvtd *d, uint32_t i);
/* Settles freed NVMe records of block i's key before a new version of it is acknowledged. */
void kvtd_nvme_settle_blk(struct kvtd *d, uint32_t i);
/* From kvtd_run: starts the NVMe recovery scan (after any fork). 0 or -errno. */
int kvtd_nvme_recover_start(struct kvtd *d);
/* A committed block became visible (on the host). */
void kvtd_blk_committed(struct kvtd *d, uint32_t i);
/* Recomputes the block's LRU memberships after a change of leases, pins or copies. */
void kvtd_blk_lru_update(struct kvtd *d, uint32_t i);
/* Evicts the least recently used evictable host block (of only, if set). 0 or -ENOSPC. */
int kvtd_evict_host_one(struct kvtd *d, const struct tenant *only);
/* The watermark pass of every tier, down the list (tierlist.c). */
void kvtd_watermarks(struct kvtd *d);
/*
 * Brings block i up to the host for a get of client c: 0 when it is there now, 1 when the
 * get waits (a waiter: the answer comes through the readiness list, waiters.c), -errno when
 * it cannot be served.
 */
int kvtd_promote(struct kvtd *d, uint32_t client_id, uint64_t user_data, uint32_t i);
/* Queues a prefetch of block i up to the host (priority 0..3, 3 first). */
void kvtd_prefetch_request(struct kvtd *d, uint32_t i, unsigned prio, uint64_t deadline_us);
/* Starts queued prefetches while NVMe has queue depth to spare for them. */
void kvtd_prefetch_pump(struct kvtd *d);
/* A get is reading block i: counts a useful prefetch. */
void kvtd_prefetch_used(struct kvtd *d, uint32_t i);
/* Writes an NVMe copy of every host block that has none. Returns how many were queued. */
int kvtd_flush(struct kvtd *d);
void kvtd_nvme_event(struct kvtd *d);
/* Sends the NVMe reads held back in this pass of the loop (promote.c reads with
 * KVT_TIER_IO_MORE, so that records that follow each other on disk are read as one). */
void kvtd_nvme_submit(struct kvtd *d);

/*
 * block.c: the changes of a block's state that clients cause (a put's reservation and
 * commit, leases, pins), so that the layers above placement never write struct kvtd_blk.
 */
/* New block i (kvtd_blk_insert) is reserved by client owner of tenant t: len bytes of
 * layout fingerprint fp, at arena offset off, or only in the GPU pool when off < 0. */
void kvtd_blk_reserved(struct kvtd *d, uint32_t i, struct tenant *t, uint32_t owner, uint64_t fp,
		       uint32_t len, int64_t off);
/* Reserved block i will hold a record of host chain hchain (0: raw) decoding to raw_len. */
void kvtd_blk_stored_form(struct kvtd *d, uint32_t i, uint32_t hchain, uint32_t raw_len);
/* A put to the host committed block i (first_token: its first token's position, 0 if not
 * told); it becomes READY (kvtd_blk_committed). */
void kvtd_blk_commit_host(struct kvtd *d, uint32_t i, uint32_t first_token);
/* A device put committed block i: READY, in the GPU pool only. */
void kvtd_blk_commit_gpu(struct kvtd *d, uint32_t i);
/* A lease of block i was granted (a hit, whichever tier serves it). */
void kvtd_blk_lease(struct kvtd *d, uint32_t i);
/* A lease of block i ended: a deleted block goes with its last one. */
void kvtd_blk_unlease(struct kvtd *d, uint32_t i);
/* Block i got a pin (pin) or lost one. */
void kvtd_blk_pin(struct kvtd *d, uint32_t i, bool pin);

/* codec_pool.c: run() on a worker thread, then done() on the loop thread. */
struct kvtd_cjob {
	struct kvt_pool_job pool; /* codec_pool.c's */
	void (*run)(struct kvtd_cjob *j);
	void (*done)(struct kvtd *d, struct kvtd_cjob *j);
};
int kvtd_cpool_init(struct kvtd *d, unsigned nthreads);
bool kvtd_cpool_on(const struct kvtd *d);
void kvtd_cpool_submit(struct kvtd *d, struct kvtd_cjob *j);
unsigned kvtd_cpool_pending(const struct kvtd *d);
int kvtd_cpool_event(struct kvtd *d);
void kvtd_cpool_fini(struct kvtd *d); /* waits for every job and runs its done() */
void kvtd_nvme_stats(struct kvtd *d, struct kvt_tier_stats *st);

/*
 * remote_place.c: the remote tier (Redis Cluster, issue 14), the bottom of the tier list when
 * remote.nodes is set.  Its I/O runs on its own threads; answers come back through an
 * eventfd (EV_REMOTE): fetched blocks are installed in the host tier and their gets put on
 * the readiness list; lookups wait on their own list (kvtd_remote_lookup_pop).  A failure,
 * timeout or bad value is a miss.  Every function is a no-op (or a miss) when it is off.
 */
/* Reads remote.* (chain, seeds, auth file): 0, or -errno (logged: the daemon does not start). */
int kvtd_remote_init(struct kvtd *d);
/* Starts the I/O threads (after any fork). 0 or -errno. */
int kvtd_remote_start(struct kvtd *d);
/* Stops the threads; gets still waiting see a miss.  Nothing when off. */
void kvtd_remote_fini(struct kvtd *d);
bool kvtd_remote_on(const struct kvtd *d);
/* Block i was just committed on the host: a copy of its bytes is queued for the remote
 * store (write-behind); dropped and counted when remote.queue_max blocks already wait. */
void kvtd_remote_put(struct kvtd *d, uint32_t i);
/* A delete of key (lo, hi, fp): its remote copy is deleted too (DEL, after any write-behind of
 * it), and until that is acknowledged this host never fetches the key remotely. */
void kvtd_remote_delete(struct kvtd *d, uint64_t lo, uint64_t hi, uint64_t fp);
/* A lookup of client_id found its first found keys locally; the remote store is asked
 * about the next m (internal keys lohi[2j], lohi[2j+1], layout fp).  1: answered later
 * through kvtd_remote_lookup_pop; < 0: not asked (answer found now). */
int kvtd_remote_lookup(struct kvtd *d, uint32_t client_id, uint64_t user_data, uint32_t found,
		       uint32_t n, const uint64_t *lohi, uint32_t m, uint64_t fp);
/* A finished lookup: its client, request, result (keys found from the first) and size. */
bool kvtd_remote_lookup_pop(struct kvtd *d, uint32_t *client_id, uint64_t *user_data, int *res,
			    uint32_t *n);
/* A get of key (lo, hi, fp) of tenant t that no local tier has: fetched from the remote
 * store (at most max_len bytes), installed in the host tier.  1: the get waits (answered
 * through the readiness list); -ENOENT: not asked. */
int kvtd_remote_fetch(struct kvtd *d, uint32_t client_id, uint64_t user_data, struct tenant *t,
		      uint64_t lo, uint64_t hi, uint64_t fp, uint32_t max_len);
/* EV_REMOTE: completions of the I/O threads. */
void kvtd_remote_event(struct kvtd *d);
/* Brings the remote_* metrics the I/O threads count up to date in d->m. */
void kvtd_remote_sync(struct kvtd *d);
/* What kvtierctl shows (render.c): nodes merged over the threads' connections. */
#define KVTD_REMOTE_NODES 64
struct kvtd_remote_node {
	char addr[64];
	unsigned slots;
	bool connected, breaker_open;
	uint64_t bytes_out, bytes_in, errors, breaker_trips;
};
struct kvtd_remote_view {
	unsigned threads, nnodes;
	bool standalone;
	uint64_t queued; /* blocks waiting to be written */
	uint64_t moved, ask, refreshes, timeouts, io_errors, proto_errors, breaker_fast_fails;
	struct kvtd_remote_node nodes[KVTD_REMOTE_NODES];
};
/* Fills v (and brings the remote_* metrics up to date).  False when the tier is off. */
bool kvtd_remote_view(struct kvtd *d, struct kvtd_remote_view *v);

/* gpu_place.c: the GPU tier.  Every function is a no-op (or -ENODEV) when it is off. */
struct kvtd_gpu_stats {
	uint64_t capacity, used, blocks, hits, misses;
	uint64_t put_bytes, get_bytes; /* moved by clients into and out of the pool */
	uint64_t demoted_bytes, promoted_bytes, demotions, promotions;
	uint64_t evictions, demote_failures, attaches;
};
/* Opens the tier when gpu.capacity > 0; without a GPU logs why and leaves d->gpu NULL. */
int kvtd_gpu_init(struct kvtd *d);
void kvtd_gpu_fini(struct kvtd *d);
bool kvtd_gpu_on(const struct kvtd *d);
int kvtd_gpu_attach_reply(struct kvtd *d, struct kvt_msg_gpu_attach_reply *r);
/* Pool room for new block i (RESERVED) of len bytes, quantized with gpu.codec when
 * tile_tokens (tokens of the client's pages) fits the kernels (*flags: KVT_GPU_F_*): its
 * pool offset, or -ENOSPC/-E2BIG/-ENODEV. */
int64_t kvtd_gpu_reserve(struct kvtd *d, uint32_t i, uint32_t len, const struct kvt_layout *l,
			 uint32_t tile_tokens, uint32_t *flags);
/* Block i, just made READY, lives in the pool. */
void kvtd_gpu_commit(struct kvtd *d, uint32_t i);
/* True when block i has a complete pool copy. */
bool kvtd_gpu_has(struct kvtd *d, uint32_t i);
/* Pool offset of block i, held until kvtd_gpu_unlease; -EXDEV when it has no pool copy
 * (a promotion is queued). */
int64_t kvtd_gpu_lease(struct kvtd *d, uint32_t i, uint32_t *flags);
void kvtd_gpu_unlease(struct kvtd *d, uint32_t i);
/* Gives block i, only in the pool, a host copy (a host get of it).  0 or -errno. */
int kvtd_gpu_to_host(struct kvtd *d, uint32_t i);
/* Frees pool copies of blocks that are gone. */
void kvtd_gpu_sweep(struct kvtd *d);
/* Runs queued promotions (host -> pool). */
void kvtd_gpu_pump(struct kvtd *d);
void kvtd_gpu_stats(struct kvtd *d, struct kvtd_gpu_stats *st, const char **uuid);

#endif
