/* SPDX-License-Identifier: MIT */
/*
 * nvme_internal.h - what the files of the NVMe tier share, and nothing outside tiers/ sees.
 *
 * The tier (its design: tier_nvme.c's header comment) is split by part:
 *   tier_nvme.c     the ops table and the slot store: open/close, alloc/free, read/write entry
 *                   points, the extent map and the freeing list, stats, I/O buffers
 *   nvme_io.c       a request's life after read()/write(): queueing, the backlog, completion,
 *                   invalidation of freed extents, complete(), settle()
 *   nvme_super.c    slot files: open, lock, superblock, preallocation; synchronous I/O
 *   nvme_recover.c  the recovery scan, dedupe, recover() and its background thread
 *   nvme_uring.c    the io_uring engine
 *   nvme_pread.c    the pread/pwrite engine (a kvt_pool of workers)
 *   nvme_verify.c   record verification: inline, or cut in pieces over the verifier pool
 * Everything here runs on the event-loop thread unless its comment says otherwise.
 */
#ifndef KVT_NVME_INTERNAL_H
#define KVT_NVME_INTERNAL_H

#include "kvt_pool.h"
#include "kvt_record.h"
#include "nvme_alloc.h"
#include "tier.h"
#include "tier_common.h"

#include <liburing.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NV_PAGE	       4096u
#define NV_DATA_OFF    ((uint64_t)NV_PAGE)
#define NV_SB_MAGIC    0x5354564bu /* "KVTS" */
#define NV_SB_VERSION  1u
#define NV_SB_COPY     2048u	   /* offset of the superblock's second copy in page 0 */
#define NV_FBUCKETS    65536u	   /* key-hash buckets of the freeing list's filter */
#define NV_TIER_MAGIC  0x4e564d45u /* "NVME", checked on every entry point */
#define NV_HWM_STEP    (64ull << 20)
#define NV_SCAN_CHUNK  (8u << 20)
#define NV_MAX_RECORD  (256u << 20)
#define NV_DEFAULT_QD  32u
#define NV_MAX_QD      1024u
#define NV_DEFAULT_BUF (64ull << 20)
#define NV_MAX_BUF     (1ull << 30) /* one registered iovec */
#define NV_MAX_WORKERS 64u
#define NV_MAX_VERIFY  4u /* verifier threads */
/* Smaller records are checked inline: waking a sleeping verifier costs 30-100 us on a VM,
 * more than the CRC of one piece; from here on the record is cut in two or more. */
#define NV_VERIFY_MIN (512u << 10)
#define NV_VPIECE     (256u << 10) /* a record is checked in pieces of at least this size */
/* Reads of records that follow each other on disk go to the device as one request of at
 * most this many records and bytes (nvme_uring.c). */
#define NV_MERGE_MAX_IOS   64u
#define NV_MERGE_MAX_BYTES (8u << 20)

/* On-disk superblock, little-endian, first 64 bytes of page 0. */
struct nv_sb {
	uint32_t magic;
	uint16_t version;
	uint16_t sb_size;
	uint32_t page_size;
	uint32_t salt;
	uint64_t data_off;
	uint64_t data_bytes;
	uint64_t hwm; /* bytes of the data region that may hold records */
	uint64_t created_ns;
	uint8_t reserved[12];
	uint32_t crc; /* CRC-32C of the 60 bytes above */
};
_Static_assert(sizeof(struct nv_sb) == 64, "superblock is an ABI");

enum nv_ext_state {
	EXT_ALLOC = 1, /* reserved, never written: unreadable */
	EXT_WRITING,
	EXT_VALID,
	EXT_FAILED,    /* write failed: contents undefined, unreadable */
	EXT_RECOVERED, /* found at open, not yet handed over by recover() */
	EXT_FREEING,   /* waiting for in-flight I/O, then for the invalidation write */
	EXT_QUARANTINE /* invalidation failed: pages withheld for good */
};

struct nv_ext {
	uint64_t key; /* (file << 48 | page) + 1; 0 = empty slot */
	uint32_t npages;
	uint16_t inflight;
	uint8_t state;
	uint8_t written : 1; /* the medium may hold a record here */
	uint8_t inval : 1;   /* an invalidation request exists for it */
	uint32_t kh;	     /* hash of the record's key (settle()) */
	uint32_t fqi;	     /* EXT_FREEING: index in the tier's freeing list */
};

struct nv_map {
	struct nv_ext *slot;
	size_t cap; /* power of two */
	size_t n;
};

struct nv_file {
	int fd;
	bool direct;
	bool blockdev;
	uint32_t salt;
	uint64_t data_bytes;
	uint64_t hwm;
	uint64_t created_ns;
	uint64_t scan_end; /* recovery reads [0, scan_end) of the data region */
	struct nv_alloc alloc;
};

struct nv_rec {
	struct kvt_record_hdr hdr; /* with the real crc */
	uint64_t page;
	uint32_t npages;
	uint16_t file;
};

struct nv_list {
	struct kvt_tier_io *head, *tail;
};

/*
 * A read record being checked by the verifier threads: its payload is cut into pieces, each
 * piece's CRC is computed by whichever verifier takes it, and the last one to finish merges
 * them (kvt_crc32c_combine) and delivers the verdict.  Cutting one record across threads is
 * what shortens a depth-1 read; the event loop itself never touches the payload.
 */
struct nv_vjob;
struct nv_vpiece {
	struct kvt_pool_job pj; /* a job of the verifier pool */
	struct nv_vjob *job;
	uint32_t off, len; /* within the payload */
	uint32_t crc;
};

struct nv_vjob {
	struct kvt_tier *t;
	struct kvt_tier_io *io;
	/* Where the verdict goes: a pread worker's job (delivered through the worker pool, the
	 * vjob freed first) or, in io_uring mode, fin itself through the verifier pool (the vjob
	 * freed by the loop when it takes the verdict). */
	struct kvt_pool_job *wjob;
	struct kvt_pool_job fin;
	uint32_t want; /* the record's crc, salt removed */
	unsigned npieces;
	unsigned left;				   /* pieces not done yet (atomic) */
	struct nv_vpiece piece[NV_MAX_VERIFY + 1]; /* the verifiers and the caller */
};

/* tier_priv[0] of a request; tier_priv[1] links it into the tier's lists. */
#define RQ_OP_MASK    0xfu
#define RQ_READ	      1u
#define RQ_WRITE      2u
#define RQ_INVAL      3u
#define RQ_STARTED    0x10u /* counted in inflight */
#define RQ_VERIFIED   0x20u /* a worker already checked the record (res is final) */
#define RQ_DETACHED   0x40u /* cancelled by settle(): its extent is gone */
#define RQ_PEND_SHIFT 8
#define RQ_PEND_MASK  (0xffu << RQ_PEND_SHIFT)
#define RQ_ERR_SHIFT  16 /* forced positive errno (fault injection) */

struct kvt_tier {
	uint32_t magic;
	unsigned flags;
	unsigned qd;
	int (*io_hook)(int op, uint64_t off, uint32_t len);
	void (*log)(void *arg, int level, const char *msg);
	void *log_arg;

	unsigned nfiles;
	unsigned next_file;
	struct nv_file *files;
	struct nv_map map;
	void *zero_page;
	void *sb_buf;

	int efd;
	bool uring;
	bool fixed_files;
	struct io_uring ring;
	unsigned unsubmitted;
	/* Reads held back (KVT_TIER_IO_MORE) until the flush, and a run of them that follow
	 * each other on disk: one request when they go (nvme_uring.c).  In io_uring mode the
	 * queue depth counts requests at the device (nreq; a merged read is one), not records:
	 * up to held_cap reads wait here while the device has qd requests, so that the next
	 * runs are whole when a slot frees.  They go in the order of their places, from
	 * where the last one ended (scan_file/scan_off), wrapping round: none waits forever. */
	struct kvt_tier_io **held;
	unsigned nheld, held_cap;
	unsigned nreq;
	unsigned scan_file;
	uint64_t scan_off;
	struct kvt_tier_io *run_head, *run_tail;
	unsigned run_n;
	uint32_t run_bytes;

	char *arena;
	size_t arena_bytes;
	size_t arena_reg; /* registered prefix of the arena */
	struct nv_alloc arena_alloc;
	uint32_t *arena_len;

	unsigned inflight;
	unsigned rd_inflight; /* the reads among them */
	struct nv_list backlog;
	struct nv_list done_now;
	struct nv_list deferred; /* completed while alloc() waited: done() runs in complete() */
	bool defer_user;
	uint64_t freeing;	/* extents in EXT_FREEING: their pages come back soon */
	uint64_t freeing_pages; /* ... and their pages, not counted as used */

	const struct nv_engine *eng; /* NULL until open() chose one */

	/* pread engine (nvme_pread.c): workers, and one job slot per request in flight. */
	struct kvt_pool *wpool;
	struct nv_pjob *pjobs;
	struct nv_pjob **pfree; /* free slots (loop thread) */
	unsigned npfree;

	/* Verifiers (nvme_verify.c): pieces of records; in io_uring mode the verdicts come back
	 * through this pool, in pread mode through the worker pool. */
	struct kvt_pool *vpool;
	unsigned nvthreads;
	unsigned verifying; /* reads handed to the verifiers, not finished yet (loop thread) */

	struct nv_rec *recs;
	size_t nrecs;
	bool recs_pending;

	/* Extents in EXT_FREEING (their ext keys), so that settle() finds those of one record
	 * key without a walk over the map; fcount filters by key hash. */
	uint64_t *fq;
	uint32_t nfq, capfq;
	bool fq_lost; /* out of memory once: settle() walks the map */
	uint32_t fcount[NV_FBUCKETS];

	/* Recovery scan (a thread with KVT_TIER_F_BG_RECOVER): it alone touches the files'
	 * allocators, the map and sst until the loop thread joins it in recover(). */
	pthread_t scan_th;
	bool scan_started; /* the scan thread runs (or ran and is not joined yet) */
	bool scanned;	   /* the scan is over and merged: allocators are the loop's */
	int scan_res;
	unsigned scan_running;	 /* atomic */
	unsigned scan_stop;	 /* atomic */
	uint64_t scan_done;	 /* atomic: bytes scanned */
	uint64_t scan_done_base; /* bytes of the files before the one being scanned */
	uint64_t scan_total;
	size_t recs_cap;
	struct kvt_tier_stats sst; /* the scan's counts, merged into st by recover() */

	struct kvt_tier_stats st;
};

struct nv_inval {
	struct kvt_tier_io io;
	struct kvt_tier *t;
};

static inline uint64_t round_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

static inline int hook(struct kvt_tier *t, int op, uint64_t off, uint32_t len)
{
	return t->io_hook ? t->io_hook(op, off, len) : 0;
}

static inline uint32_t key_hash(uint64_t lo, uint64_t hi)
{
	uint64_t k = lo ^ (hi * 0x9e3779b97f4a7c15ull);

	k ^= k >> 29;
	k *= 0xbf58476d1ce4e5b9ull;
	return (uint32_t)(k >> 32);
}

static inline uint64_t ext_key(unsigned file, uint64_t page)
{
	return (((uint64_t)file << 48) | page) + 1;
}

static inline size_t map_hash(uint64_t k, size_t cap)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdull;
	k ^= k >> 33;
	return (size_t)k & (cap - 1);
}

static inline unsigned ext_file(const struct nv_ext *e)
{
	return (unsigned)((e->key - 1) >> 48);
}

static inline uint64_t ext_page(const struct nv_ext *e)
{
	return (e->key - 1) & ((1ull << 48) - 1);
}

static inline unsigned rq_op(const struct kvt_tier_io *io)
{
	return (unsigned)(io->tier_priv[0] & RQ_OP_MASK);
}

static inline uint32_t rq_xfer(const struct kvt_tier_io *io)
{
	return (uint32_t)round_up(io->len, NV_PAGE);
}

/* Whether a request may start now (or waits in the backlog).  The pread engine: qd
 * records.  io_uring: qd writes and invalidations; reads up to held_cap, since the engine
 * holds them until the device has a slot (nvme_uring.c). */
static inline bool nv_room(const struct kvt_tier *t, const struct kvt_tier_io *io)
{
	if (!t->held_cap)
		return t->inflight < t->qd;
	if (rq_op(io) == RQ_READ)
		return t->rd_inflight < t->held_cap;
	return t->inflight - t->rd_inflight < t->qd;
}

/* A started request leaves the count of those in flight. */
static inline void nv_unstart(struct kvt_tier *t, struct kvt_tier_io *io)
{
	if (!(io->tier_priv[0] & RQ_STARTED))
		return;
	io->tier_priv[0] &= ~(uintptr_t)RQ_STARTED;
	t->inflight--;
	if (rq_op(io) == RQ_READ)
		t->rd_inflight--;
}

/*
 * An I/O engine: how a started request reaches the device and how its completion comes back
 * (through t->efd, then reap()).  One per tier, chosen at open().
 */
struct nv_engine {
	const char *name;
	/* At open(), after the files: 0, or -errno when this engine cannot run here. */
	int (*setup)(struct kvt_tier *t);
	/* A request takes its queue slot (t->inflight) before it comes here.  more: further
	 * requests follow at once, so the engine may hold this one back until flush(). */
	void (*start)(struct kvt_tier *t, struct kvt_tier_io *io, bool more);
	/* Hands what start() held back to the device. */
	void (*flush)(struct kvt_tier *t);
	/* Finishes (nv_finish) every request the device completed; *n counts them. */
	void (*reap)(struct kvt_tier *t, int *n);
	/* Blocks until some request completes and returns true, or returns false at once when
	 * the engine cannot wait by itself (the caller polls t->efd). */
	bool (*wait)(struct kvt_tier *t);
	/* At close(), after every request finished. */
	void (*stop)(struct kvt_tier *t);
};

extern const struct nv_engine nv_uring_engine;
extern const struct nv_engine nv_pread_engine;

static inline void nv_flush(struct kvt_tier *t)
{
	if (t->eng)
		t->eng->flush(t);
}

/* One log line through conf->log, or "kvtier nvme: ..." on stderr (tier_common.c). */
#define nv_log(t, level, ...) kvt_tier_log((t)->log, (t)->log_arg, "nvme", level, __VA_ARGS__)

/* tier_nvme.c */
struct nv_ext *nv_map_get(struct nv_map *m, uint64_t key);
struct nv_ext *nv_map_add(struct nv_map *m, uint64_t key);
void nv_map_del(struct nv_map *m, struct nv_ext *e);
void nv_fq_add(struct kvt_tier *t, struct nv_ext *e);
void nv_fq_del(struct kvt_tier *t, struct nv_ext *e);
void nv_quarantine_freeing(struct kvt_tier *t, struct nv_ext *e);
void nvme_free(struct kvt_tier *t, const struct kvt_tier_loc *loc);

/* nvme_io.c */
void nv_list_add(struct nv_list *l, struct kvt_tier_io *io);
struct kvt_tier_io *nv_list_pop(struct nv_list *l);
void nv_efd_signal(struct kvt_tier *t); /* any thread */
void nv_start(struct kvt_tier *t, struct kvt_tier_io *io, bool more);
void nv_finish(struct kvt_tier *t, struct kvt_tier_io *io, int res);
void nv_release(struct kvt_tier *t, struct nv_ext *e);
void nv_free_ext(struct kvt_tier *t, struct nv_ext *e);
void nv_drain_freeing(struct kvt_tier *t);
int nvme_complete(struct kvt_tier *t);
int nvme_settle(struct kvt_tier *t, uint64_t key_lo, uint64_t key_hi);

/* nvme_super.c */
int nv_pio_full(int fd, void *buf, size_t len, uint64_t off, bool wr); /* any thread */
int nv_sb_write(struct kvt_tier *t, struct nv_file *f);
int nv_file_open(struct kvt_tier *t, unsigned fi, const char *path, uint64_t share);

/* nvme_recover.c */
int nv_scan_all(struct kvt_tier *t);
void nv_scan_merge(struct kvt_tier *t);
int nv_inval_sync(struct kvt_tier *t, unsigned fi, uint64_t page);
void nv_drop_recovered(struct kvt_tier *t, size_t from);
int nvme_recover(struct kvt_tier *t, kvt_tier_recover_cb cb, void *arg);
int nvme_recovering(struct kvt_tier *t, uint64_t *done, uint64_t *total);
int nvme_recover_start(struct kvt_tier *t);

/* nvme_verify.c */
int nv_read_verify(const struct kvt_tier *t, struct kvt_tier_io *io); /* any thread */
struct nv_vjob *nv_vjob_make(struct kvt_tier *t, struct kvt_tier_io *io, unsigned hands);
void nv_vjob_queue(struct kvt_tier *t, struct nv_vjob *j, unsigned from);
void nv_vpiece_run(struct kvt_tier *t, struct nv_vpiece *pc);
bool nv_verify_async(struct kvt_tier *t, struct kvt_tier_io *io);
void nv_verifiers_start(struct kvt_tier *t, unsigned want);
void nv_verifiers_stop(struct kvt_tier *t);
void nv_verify_reap(struct kvt_tier *t, int *n);

#endif
