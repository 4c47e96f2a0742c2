/* SPDX-License-Identifier: MIT */
/*
 * tier_nvme.c - the NVMe tier (DESIGN §2, §4, §8): records in preallocated slot files.
 *
 * Layout (proto/RECORD.md): each file starts with a 4 KiB superblock (magic "KVTS", a random
 * 32-bit salt, the data size and a high-water mark), then a data region of 4 KiB pages.  A
 * record (64-byte kvt_record_hdr + payload, zero-padded to 4 KiB) occupies a run of pages
 * handed out by a next-fit bitmap allocator (nvme_alloc.c).  On the medium the header's crc
 * field is stored XORed with the file's salt, so that a record can only be accepted by the
 * file incarnation that wrote it: a payload that embeds a well-formed record (a hostile
 * client's raw block) or a record left by an older incarnation of the file fails the check.
 * The tier restores the real crc before done() runs, so callers see a plain record.
 *
 * Visibility: every extent has a state in a hash map (alloc -> writing -> valid -> freeing);
 * read() accepts only extents whose write completed (and was fdatasync'd with
 * KVT_TIER_F_FSYNC); a failed write leaves the extent unreadable.  free() zeroes the
 * record's first page before the pages can be reused, so recovery never resurrects a freed
 * record and a new record never races with the invalidation; a free() during I/O on the
 * extent waits for that I/O.  Every read is verified (magic, sizes, CRC): a failure is
 * -EBADMSG and counts in corrupt_records.
 *
 * Recovery: open() scans each file up to its high-water mark, verifies every record,
 * discards (and counts) torn or corrupt ones and keeps, per key, only the highest seq (the
 * tier dedupes; older copies are invalidated and counted as stale).  recover() hands the
 * survivors to the daemon in ascending seq order.
 *
 * I/O engines: io_uring (fixed files, registered buffer arena, batched submission, linked
 * fdatasync, COOP_TASKRUN) or, when io_uring is refused (EPERM/ENOSYS under seccomp) or
 * turned off, a pool of pread/pwrite workers (which also verify the records they read).
 * Both report completions through one eventfd; done() callbacks run only from complete().
 *
 * Ownership: each slot file is flock()ed by one tier instance; a second open gets -EBUSY.
 */
#define _GNU_SOURCE
#include "tier.h"
#include "kvt_record.h"
#include "nvme_alloc.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

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
	struct nv_vjob *job;
	struct nv_vpiece *next;
	uint32_t off, len; /* within the payload */
	uint32_t crc;
};

struct nv_vjob {
	struct kvt_tier_io *io;
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

	char *arena;
	size_t arena_bytes;
	size_t arena_reg; /* registered prefix of the arena */
	struct nv_alloc arena_alloc;
	uint32_t *arena_len;

	unsigned inflight;
	struct nv_list backlog;
	struct nv_list done_now;
	struct nv_list deferred; /* completed while alloc() waited: done() runs in complete() */
	bool defer_user;
	uint64_t freeing;	/* extents in EXT_FREEING: their pages come back soon */
	uint64_t freeing_pages; /* ... and their pages, not counted as used */

	pthread_t *workers;
	unsigned nworkers;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct nv_list wq;
	struct nv_list wdone;
	bool stop;

	/* Verifiers (io_uring mode): pieces queued under vmu; verdicts go to wdone under mu. */
	pthread_t *vthreads;
	unsigned nvthreads;
	pthread_mutex_t vmu;
	pthread_cond_t vcv;
	struct nv_vpiece *vq_head, *vq_tail;
	bool vstop;
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

static void nv_log(struct kvt_tier *t, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void nv_log(struct kvt_tier *t, int level, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (t->log)
		t->log(t->log_arg, level, msg);
	else
		fprintf(stderr, "kvtier nvme: %s\n", msg);
}

static inline uint64_t round_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

static inline int hook(struct kvt_tier *t, int op, uint64_t off, uint32_t len)
{
	return t->io_hook ? t->io_hook(op, off, len) : 0;
}

/* ---- extent map: open addressing, linear probing, backward-shift deletion ---- */

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

static struct nv_ext *map_get(struct nv_map *m, uint64_t key)
{
	size_t i;

	if (!m->cap)
		return NULL;
	for (i = map_hash(key, m->cap);; i = (i + 1) & (m->cap - 1)) {
		if (m->slot[i].key == key)
			return &m->slot[i];
		if (!m->slot[i].key)
			return NULL;
	}
}

static int map_grow(struct nv_map *m)
{
	size_t ncap = m->cap ? m->cap * 2 : 1024;
	struct nv_ext *ns = calloc(ncap, sizeof(*ns));

	if (!ns)
		return -ENOMEM;
	for (size_t i = 0; i < m->cap; i++) {
		size_t j;

		if (!m->slot[i].key)
			continue;
		for (j = map_hash(m->slot[i].key, ncap); ns[j].key; j = (j + 1) & (ncap - 1))
			;
		ns[j] = m->slot[i];
	}
	free(m->slot);
	m->slot = ns;
	m->cap = ncap;
	return 0;
}

/* Inserts a new entry; the returned pointer is valid until the next insertion or deletion. */
static struct nv_ext *map_add(struct nv_map *m, uint64_t key)
{
	size_t i;

	if ((m->n + 1) * 2 > m->cap && map_grow(m) < 0)
		return NULL;
	for (i = map_hash(key, m->cap); m->slot[i].key; i = (i + 1) & (m->cap - 1))
		;
	memset(&m->slot[i], 0, sizeof(m->slot[i]));
	m->slot[i].key = key;
	m->n++;
	return &m->slot[i];
}

static void map_del(struct nv_map *m, struct nv_ext *e)
{
	size_t i = (size_t)(e - m->slot), j = i;

	/* Backward shift keeps probe chains intact without tombstones. */
	for (;;) {
		size_t h;

		j = (j + 1) & (m->cap - 1);
		if (!m->slot[j].key)
			break;
		h = map_hash(m->slot[j].key, m->cap);
		if ((j > i && (h <= i || h > j)) || (j < i && (h <= i && h > j))) {
			m->slot[i] = m->slot[j];
			i = j;
		}
	}
	m->slot[i].key = 0;
	m->n--;
}

static inline unsigned ext_file(const struct nv_ext *e)
{
	return (unsigned)((e->key - 1) >> 48);
}

static inline uint64_t ext_page(const struct nv_ext *e)
{
	return (e->key - 1) & ((1ull << 48) - 1);
}

/* ---- the freeing list: extents in EXT_FREEING, by record key hash ---- */

static void fq_add(struct kvt_tier *t, struct nv_ext *e)
{
	if (t->nfq == t->capfq) {
		uint32_t nc = t->capfq ? t->capfq * 2 : 256;
		uint64_t *n = realloc(t->fq, nc * sizeof(*n));

		if (!n) {
			t->fq_lost = true; /* settle() walks the whole map from now on */
			e->fqi = UINT32_MAX;
			return;
		}
		t->fq = n;
		t->capfq = nc;
	}
	e->fqi = t->nfq;
	t->fq[t->nfq++] = e->key;
	t->fcount[e->kh % NV_FBUCKETS]++;
}

static void fq_del(struct kvt_tier *t, struct nv_ext *e)
{
	uint32_t i = e->fqi;

	if (i == UINT32_MAX)
		return;
	t->fcount[e->kh % NV_FBUCKETS]--;
	e->fqi = UINT32_MAX;
	if (i != --t->nfq) {
		struct nv_ext *m = map_get(&t->map, t->fq[t->nfq]);

		t->fq[i] = t->fq[t->nfq];
		if (m)
			m->fqi = i;
	}
}

/* A freeing extent whose invalidation failed: its pages, which may still hold a valid
 * record, are withheld for good (never reused). */
static void quarantine_freeing(struct kvt_tier *t, struct nv_ext *e)
{
	fq_del(t, e);
	e->state = EXT_QUARANTINE;
	t->freeing--;
	t->freeing_pages -= e->npages;
	t->st.quarantined_bytes += (uint64_t)e->npages * NV_PAGE;
}

/* ---- lists ---- */

static void list_add(struct nv_list *l, struct kvt_tier_io *io)
{
	io->tier_priv[1] = 0;
	if (l->tail)
		l->tail->tier_priv[1] = (uintptr_t)io;
	else
		l->head = io;
	l->tail = io;
}

static struct kvt_tier_io *list_pop(struct nv_list *l)
{
	struct kvt_tier_io *io = l->head;

	if (io) {
		l->head = (struct kvt_tier_io *)io->tier_priv[1];
		if (!l->head)
			l->tail = NULL;
	}
	return io;
}

static void efd_signal(struct kvt_tier *t)
{
	uint64_t one = 1;

	/* A full counter (never in practice) still leaves the fd readable. */
	if (write(t->efd, &one, sizeof(one)) < 0) {
	}
}

/* ---- synchronous helpers (open, recovery, close) ---- */

static int pio_full(int fd, void *buf, size_t len, uint64_t off, bool wr)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = wr ? pwrite(fd, (char *)buf + done, len - done, (off_t)(off + done))
			       : pread(fd, (char *)buf + done, len - done, (off_t)(off + done));

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return wr ? -EIO : (int)done;
		done += (size_t)r;
	}
	return (int)done;
}

static void sb_fill(const struct nv_file *f, void *page)
{
	struct nv_sb sb;

	memset(&sb, 0, sizeof(sb));
	sb.magic = NV_SB_MAGIC;
	sb.version = NV_SB_VERSION;
	sb.sb_size = sizeof(sb);
	sb.page_size = NV_PAGE;
	sb.salt = f->salt;
	sb.data_off = NV_DATA_OFF;
	sb.data_bytes = f->data_bytes;
	sb.hwm = f->hwm;
	sb.created_ns = f->created_ns;
	sb.crc = kvt_crc32c(0, &sb, offsetof(struct nv_sb, crc));
	memset(page, 0, NV_PAGE);
	memcpy(page, &sb, sizeof(sb));
	/* A second copy in the same page: one damaged byte must not cost the whole file. */
	memcpy((char *)page + NV_SB_COPY, &sb, sizeof(sb));
}

static int sb_write(struct kvt_tier *t, struct nv_file *f)
{
	int r;

	sb_fill(f, t->sb_buf);
	r = hook(t, KVT_TIER_OP_WRITE, 0, NV_PAGE);
	if (r >= 0)
		r = pio_full(f->fd, t->sb_buf, NV_PAGE, 0, true);
	if (r >= 0) {
		r = hook(t, KVT_TIER_OP_FSYNC, 0, NV_PAGE);
		if (r >= 0 && fdatasync(f->fd) < 0)
			r = -errno;
	}
	return r < 0 ? r : 0;
}

static int sb_parse_one(const void *p, struct nv_sb *out)
{
	memcpy(out, p, sizeof(*out));
	if (out->magic != NV_SB_MAGIC || out->version != NV_SB_VERSION ||
	    out->sb_size != sizeof(*out) || out->page_size != NV_PAGE ||
	    out->data_off != NV_DATA_OFF || out->data_bytes % NV_PAGE ||
	    out->crc != kvt_crc32c(0, out, offsetof(struct nv_sb, crc)))
		return -EBADMSG;
	if (out->hwm > out->data_bytes)
		out->hwm = out->data_bytes;
	return 0;
}

/*
 * Page 0 of a slot file: 0 (superblock valid), 1 (only its copy is), -EBADMSG (a kvtier
 * superblock, both copies damaged), -ENOENT (no kvtier magic at all).
 */
static int sb_parse(const void *page, struct nv_sb *out)
{
	uint32_t m0, m1;

	if (sb_parse_one(page, out) == 0)
		return 0;
	if (sb_parse_one((const char *)page + NV_SB_COPY, out) == 0)
		return 1;
	memcpy(&m0, page, sizeof(m0));
	memcpy(&m1, (const char *)page + NV_SB_COPY, sizeof(m1));
	return m0 == NV_SB_MAGIC || m1 == NV_SB_MAGIC ? -EBADMSG : -ENOENT;
}

static bool page_zero(const void *page)
{
	const uint64_t *w = page;

	for (size_t i = 0; i < NV_PAGE / sizeof(*w); i++)
		if (w[i])
			return false;
	return true;
}

static int zero_fill(struct kvt_tier *t, int fd, uint64_t size)
{
	const size_t chunk = 1u << 20;
	void *z = NULL;
	int r = 0;

	if (posix_memalign(&z, NV_PAGE, chunk))
		return -ENOMEM;
	memset(z, 0, chunk);
	for (uint64_t off = 0; off < size; off += chunk) {
		size_t n = size - off < chunk ? (size_t)(size - off) : chunk;

		r = pio_full(fd, z, n, off, true);
		if (r < 0)
			break;
	}
	free(z);
	return r < 0 ? r : 0;
}

static int preallocate(struct kvt_tier *t, struct nv_file *f, const char *path, uint64_t size,
		       bool fresh)
{
	int r = hook(t, KVT_TIER_OP_FALLOCATE, 0, 0);

	if (r >= 0 && fallocate(f->fd, 0, 0, (off_t)size) < 0)
		r = -errno;
	if (r == -EOPNOTSUPP || r == -ENOSYS) {
		nv_log(t, LOG_NOTICE, "%s: fallocate unsupported, zero-filling %llu bytes", path,
		       (unsigned long long)size);
		r = zero_fill(t, f->fd, size);
	}
	if (r < 0) {
		nv_log(t, LOG_ERR, "%s: cannot preallocate %llu bytes: %s", path,
		       (unsigned long long)size, strerror(-r));
		/* Give the space back: a half-allocated new file helps nobody.  An existing
		 * one keeps its size (and records). */
		if (fresh && !f->blockdev && ftruncate(f->fd, 0) < 0) {
		}
	}
	return r;
}

static int rec_cmp_key(const void *a, const void *b)
{
	const struct nv_rec *x = a, *y = b;

	if (x->hdr.key_hi != y->hdr.key_hi)
		return x->hdr.key_hi < y->hdr.key_hi ? -1 : 1;
	if (x->hdr.key_lo != y->hdr.key_lo)
		return x->hdr.key_lo < y->hdr.key_lo ? -1 : 1;
	if (x->hdr.seq != y->hdr.seq)
		return x->hdr.seq > y->hdr.seq ? -1 : 1; /* newest first */
	return 0;
}

static int rec_cmp_seq(const void *a, const void *b)
{
	const struct nv_rec *x = a, *y = b;

	if (x->hdr.seq != y->hdr.seq)
		return x->hdr.seq < y->hdr.seq ? -1 : 1;
	if (x->file != y->file)
		return x->file < y->file ? -1 : 1;
	return x->page < y->page ? -1 : (x->page > y->page);
}

static int rec_push(struct kvt_tier *t, size_t *cap, const struct nv_rec *r)
{
	if (t->nrecs == *cap) {
		size_t nc = *cap ? *cap * 2 : 256;
		struct nv_rec *n = realloc(t->recs, nc * sizeof(*n));

		if (!n)
			return -ENOMEM;
		t->recs = n;
		*cap = nc;
	}
	t->recs[t->nrecs++] = *r;
	return 0;
}

/* Header fields a scan may trust enough to size a read; the CRC decides the rest. */
static bool hdr_plausible(const struct kvt_record_hdr *h, uint64_t room)
{
	return h->magic == KVT_RECORD_MAGIC && h->version == KVT_RECORD_VERSION &&
	       h->hdr_size == KVT_RECORD_HDR_SIZE && h->flags == 0 &&
	       h->payload_len <= NV_MAX_RECORD - KVT_RECORD_HDR_SIZE &&
	       round_up(KVT_RECORD_HDR_SIZE + (uint64_t)h->payload_len, NV_PAGE) <= room;
}

/* Verifies a record as stored (crc salted) at p; fills out->hdr with the real crc. */
static bool rec_verify(const void *p, uint32_t salt, struct kvt_record_hdr *out)
{
	memcpy(out, p, sizeof(*out));
	out->crc ^= salt;
	return kvt_record_check(out, (const char *)p + KVT_RECORD_HDR_SIZE, out->payload_len) == 0;
}

/*
 * The scan reads fixed 8 MiB windows on a reader thread (three buffers in a ring) while this
 * thread verifies the previous window, so startup runs at disk speed rather than disk plus
 * CRC.  A record that crosses into the next window is assembled from both.
 */
#define SCAN_BUFS 3

struct scan_rd {
	struct kvt_tier *t;
	struct nv_file *f;
	char *buf[SCAN_BUFS];
	int res[SCAN_BUFS];
	uint64_t nwin;
	uint64_t produced; /* windows read so far */
	uint64_t consumed; /* windows released by the scanner */
	bool stop;
	pthread_mutex_t mu;
	pthread_cond_t cv;
};

static inline uint32_t win_len(const struct nv_file *f, uint64_t k)
{
	uint64_t pos = k * NV_SCAN_CHUNK;

	return f->scan_end - pos < NV_SCAN_CHUNK ? (uint32_t)(f->scan_end - pos) : NV_SCAN_CHUNK;
}

static void *scan_reader(void *arg)
{
	struct scan_rd *rd = arg;

	for (uint64_t k = 0; k < rd->nwin; k++) {
		uint64_t off = NV_DATA_OFF + k * NV_SCAN_CHUNK;
		uint32_t len = win_len(rd->f, k);
		int r;

		pthread_mutex_lock(&rd->mu);
		while (!rd->stop && k - rd->consumed >= SCAN_BUFS)
			pthread_cond_wait(&rd->cv, &rd->mu);
		pthread_mutex_unlock(&rd->mu);
		if (rd->stop)
			break;
		r = hook(rd->t, KVT_TIER_OP_READ, off, len);
		if (r >= 0)
			r = pio_full(rd->f->fd, rd->buf[k % SCAN_BUFS], len, off, false);
		if (r >= 0 && (uint32_t)r < len)
			r = -EIO;
		pthread_mutex_lock(&rd->mu);
		rd->res[k % SCAN_BUFS] = r < 0 ? r : 0;
		rd->produced = k + 1;
		pthread_cond_broadcast(&rd->cv);
		pthread_mutex_unlock(&rd->mu);
	}
	return NULL;
}

/* Window k (waits for the reader); returns its read status. */
static int scan_get(struct scan_rd *rd, uint64_t k, char **buf)
{
	int r;

	pthread_mutex_lock(&rd->mu);
	while (rd->produced <= k)
		pthread_cond_wait(&rd->cv, &rd->mu);
	r = rd->res[k % SCAN_BUFS];
	pthread_mutex_unlock(&rd->mu);
	*buf = rd->buf[k % SCAN_BUFS];
	return r;
}

static void scan_release(struct scan_rd *rd, uint64_t k)
{
	pthread_mutex_lock(&rd->mu);
	rd->consumed = k + 1;
	pthread_cond_broadcast(&rd->cv);
	pthread_mutex_unlock(&rd->mu);
}

/* Gets the bytes of the record at window k, offset p, into *rp; 0, or -1 if unreadable. */
static int scan_record(struct scan_rd *rd, uint64_t k, char *b, uint32_t p, uint64_t reclen,
		       char **big, uint64_t *bigcap, const char **rp)
{
	struct nv_file *f = rd->f;
	uint32_t wlen = win_len(f, k);
	uint64_t abs = k * NV_SCAN_CHUNK + p;
	int r;

	if (p + reclen <= wlen) {
		*rp = b + p;
		return 0;
	}
	if (reclen > *bigcap) {
		free(*big);
		*big = NULL;
		*bigcap = 0;
		if (posix_memalign((void **)big, NV_PAGE, reclen))
			return -ENOMEM;
		*bigcap = reclen;
	}
	if (reclen <= NV_SCAN_CHUNK && k + 1 < rd->nwin) {
		char *nb;
		uint64_t need = p + reclen - wlen;

		if (scan_get(rd, k + 1, &nb) < 0 || need > win_len(f, k + 1))
			return -1;
		memcpy(*big, b + p, wlen - p);
		memcpy(*big + (wlen - p), nb, need);
		*rp = *big;
		return 0;
	}
	r = hook(rd->t, KVT_TIER_OP_READ, NV_DATA_OFF + abs, (uint32_t)reclen);
	if (r >= 0)
		r = pio_full(f->fd, *big, reclen, NV_DATA_OFF + abs, false);
	if (r < 0 || (uint64_t)r < reclen)
		return -1;
	*rp = *big;
	return 0;
}

static int scan_file(struct kvt_tier *t, unsigned fi)
{
	size_t *cap = &t->recs_cap;
	struct kvt_tier_stats *ss = &t->sst;
	struct nv_file *f = &t->files[fi];
	struct scan_rd rd = {.t = t, .f = f};
	char *big = NULL;
	uint64_t bigcap = 0, skip = 0;
	pthread_t th;
	int r = 0;

	if (!f->scan_end)
		return 0;
	rd.nwin = (f->scan_end + NV_SCAN_CHUNK - 1) / NV_SCAN_CHUNK;
	pthread_mutex_init(&rd.mu, NULL);
	pthread_cond_init(&rd.cv, NULL);
	for (int i = 0; i < SCAN_BUFS; i++)
		if (posix_memalign((void **)&rd.buf[i], NV_PAGE, NV_SCAN_CHUNK)) {
			r = -ENOMEM;
			goto out;
		}
	r = -pthread_create(&th, NULL, scan_reader, &rd);
	if (r < 0)
		goto out;
	for (uint64_t k = 0; k < rd.nwin && r >= 0; k++) {
		uint64_t wpos = k * NV_SCAN_CHUNK;

		if (__atomic_load_n(&t->scan_stop, __ATOMIC_RELAXED)) {
			r = -ECANCELED;
			break;
		}
		/* relaxed: a progress figure for kvtierctl, nothing hangs on it */
		__atomic_store_n(&t->scan_done, t->scan_done_base + wpos, __ATOMIC_RELAXED);
		uint32_t wlen = win_len(f, k);
		uint32_t p = skip > wpos ? (uint32_t)(skip - wpos < wlen ? skip - wpos : wlen) : 0;
		char *b;

		if (scan_get(&rd, k, &b) < 0) {
			/* Records starting in an unreadable window are lost; the rest are not. */
			nv_log(t, LOG_ERR, "file %u: scan read at %llu failed", fi,
			       (unsigned long long)(NV_DATA_OFF + wpos));
			ss->read_errors++;
			ss->scan_unreadable++;
			scan_release(&rd, k);
			continue;
		}
		while (p < wlen) {
			const struct kvt_record_hdr *h = (const void *)(b + p);
			struct nv_rec rec;
			uint64_t reclen;
			const char *rp;
			int e;

			if (h->magic != KVT_RECORD_MAGIC) {
				p += NV_PAGE;
				continue;
			}
			if (!hdr_plausible(h, f->data_bytes - (wpos + p))) {
				ss->corrupt_records++;
				ss->scan_corrupt++;
				p += NV_PAGE;
				continue;
			}
			reclen = round_up(KVT_RECORD_HDR_SIZE + (uint64_t)h->payload_len, NV_PAGE);
			if (wpos + p + reclen > f->scan_end && f->scan_end < f->hwm) {
				ss->cut_records++; /* its end was cut off the file */
				p += NV_PAGE;
				continue;
			}
			e = scan_record(&rd, k, b, p, reclen, &big, &bigcap, &rp);
			if (e == -ENOMEM) {
				r = e;
				break;
			}
			if (e < 0) {
				ss->read_errors++;
				ss->scan_unreadable++;
				p += NV_PAGE;
				continue;
			}
			if (!rec_verify(rp, f->salt, &rec.hdr)) {
				ss->corrupt_records++;
				ss->scan_corrupt++;
				p += NV_PAGE;
				continue;
			}
			rec.file = (uint16_t)fi;
			rec.page = (wpos + p) / NV_PAGE;
			rec.npages = (uint32_t)(reclen / NV_PAGE);
			r = nv_alloc_mark(&f->alloc, rec.page, rec.npages);
			if (r == 0)
				r = rec_push(t, cap, &rec);
			if (r < 0)
				break;
			skip = wpos + p + reclen;
			if (reclen >= wlen - p)
				break; /* the rest of this window belongs to the record */
			p += (uint32_t)reclen;
		}
		scan_release(&rd, k);
	}
	pthread_mutex_lock(&rd.mu);
	rd.stop = true;
	pthread_cond_broadcast(&rd.cv);
	pthread_mutex_unlock(&rd.mu);
	pthread_join(th, NULL);
out:
	for (int i = 0; i < SCAN_BUFS; i++)
		free(rd.buf[i]);
	free(big);
	pthread_mutex_destroy(&rd.mu);
	pthread_cond_destroy(&rd.cv);
	return r < 0 ? r : 0;
}

/* Zeroes the first page of an extent synchronously (recovery only, before I/O starts). */
static int inval_sync(struct kvt_tier *t, unsigned fi, uint64_t page)
{
	struct nv_file *f = &t->files[fi];
	uint64_t off = NV_DATA_OFF + page * NV_PAGE;
	int r = hook(t, KVT_TIER_OP_WRITE, off, NV_PAGE);

	if (r >= 0)
		r = pio_full(f->fd, t->zero_page, NV_PAGE, off, true);
	return r < 0 ? r : 0;
}

/* Newest seq per key wins; older copies are invalidated so they stay dead. */
static int recs_dedupe(struct kvt_tier *t)
{
	size_t w = 0;

	if (!t->nrecs)
		return 0;
	qsort(t->recs, t->nrecs, sizeof(*t->recs), rec_cmp_key);
	for (size_t i = 0; i < t->nrecs; i++) {
		struct nv_rec *r = &t->recs[i];

		if (w && r->hdr.key_lo == t->recs[w - 1].hdr.key_lo &&
		    r->hdr.key_hi == t->recs[w - 1].hdr.key_hi) {
			struct nv_file *f = &t->files[r->file];

			t->sst.stale++;
			if (inval_sync(t, r->file, r->page) == 0)
				nv_alloc_put(&f->alloc, r->page, r->npages);
			else
				t->sst.quarantined_bytes += (uint64_t)r->npages * NV_PAGE;
			continue;
		}
		t->recs[w++] = *r;
	}
	t->nrecs = w;
	qsort(t->recs, t->nrecs, sizeof(*t->recs), rec_cmp_seq);
	for (size_t i = 0; i < t->nrecs; i++) {
		struct nv_ext *e = map_add(&t->map, ext_key(t->recs[i].file, t->recs[i].page));

		if (!e)
			return -ENOMEM;
		e->npages = t->recs[i].npages;
		e->state = EXT_RECOVERED;
		e->written = 1;
		e->fqi = UINT32_MAX;
		e->kh = key_hash(t->recs[i].hdr.key_lo, t->recs[i].hdr.key_hi);
	}
	t->sst.recovered = t->nrecs;
	t->sst.records = t->nrecs;
	t->recs_pending = t->nrecs > 0;
	return 0;
}

/* Scans every file, then dedupes: recovery's whole reading part. */
static int scan_all(struct kvt_tier *t)
{
	int r = 0;

	for (unsigned i = 0; i < t->nfiles && r >= 0; i++) {
		r = scan_file(t, i);
		t->scan_done_base += t->files[i].scan_end;
	}
	if (r >= 0)
		r = recs_dedupe(t);
	__atomic_store_n(&t->scan_done, t->scan_total, __ATOMIC_RELAXED);
	return r;
}

static void *scan_main(void *arg)
{
	struct kvt_tier *t = arg;

	t->scan_res = scan_all(t);
	/* release: pairs with the acquire in nvme_recovering(); recover() joins anyway */
	__atomic_store_n(&t->scan_running, 0, __ATOMIC_RELEASE);
	efd_signal(t);
	return NULL;
}

/* The scan's counts join the tier's (loop thread, after the scan). */
static void scan_merge(struct kvt_tier *t)
{
	struct kvt_tier_stats *ss = &t->sst;

	t->st.corrupt_records += ss->corrupt_records;
	t->st.read_errors += ss->read_errors;
	t->st.stale += ss->stale;
	t->st.quarantined_bytes += ss->quarantined_bytes;
	t->st.recovered += ss->recovered;
	t->st.records += ss->records;
	t->st.scan_corrupt += ss->scan_corrupt;
	t->st.scan_unreadable += ss->scan_unreadable;
	t->st.cut_records += ss->cut_records;
	t->st.lost_bytes += ss->lost_bytes;
	memset(ss, 0, sizeof(*ss));
}

/*
 * Two daemons on one slot file would destroy each other's records (and a second one
 * re-initialising the file would wipe it): one owner at a time.  A killed owner's lock
 * outlives it by a moment (its io_uring still holds the file until the kernel tears the
 * ring down), so a restart waits up to NV_LOCK_WAIT_MS before calling the file busy.
 */
#define NV_LOCK_WAIT_MS 3000

static int lock_file(struct kvt_tier *t, int fd, const char *path)
{
	for (int waited = 0;; waited += 20) {
		struct timespec ts = {0, 20 * 1000 * 1000};

		if (flock(fd, LOCK_EX | LOCK_NB) == 0)
			return 0;
		if (errno != EWOULDBLOCK)
			return -errno;
		if (waited >= NV_LOCK_WAIT_MS) {
			nv_log(t, LOG_ERR, "%s is in use by another process", path);
			return -EBUSY;
		}
		nanosleep(&ts, NULL);
	}
}

static int file_open(struct kvt_tier *t, unsigned fi, const char *path, uint64_t share)
{
	struct nv_file *f = &t->files[fi];
	int oflags = O_RDWR | O_CREAT | O_CLOEXEC;
	bool want_direct = !(t->flags & KVT_TIER_F_NO_DIRECT);
	uint64_t data_bytes = share >= 2 * NV_PAGE ? (share - NV_PAGE) / NV_PAGE * NV_PAGE : 0;
	struct nv_sb sb;
	struct statfs sfs;
	struct stat st;
	bool valid, fresh;
	int sb_read, pr;
	int r;

	f->fd = -1;
	if (want_direct) {
		r = hook(t, KVT_TIER_OP_OPEN_DIRECT, 0, 0);
		f->fd = r < 0 ? (errno = -r, -1) : open(path, oflags | O_DIRECT, 0600);
		if (f->fd < 0 && errno != EINVAL)
			return -errno;
		f->direct = f->fd >= 0;
	}
	if (f->fd < 0) {
		if (want_direct)
			nv_log(t, LOG_WARNING,
			       "%s: filesystem refuses O_DIRECT, using buffered I/O (page cache)",
			       path);
		f->fd = open(path, oflags, 0600);
		if (f->fd < 0)
			return -errno;
	}
	r = lock_file(t, f->fd, path);
	if (r < 0)
		return r;
	if (fstat(f->fd, &st) < 0)
		return -errno;
	f->blockdev = S_ISBLK(st.st_mode);
	if (!f->blockdev && fstatfs(f->fd, &sfs) == 0 && sfs.f_type == TMPFS_MAGIC)
		nv_log(t, LOG_NOTICE, "%s is on tmpfs: the NVMe tier is RAM-backed and not durable",
		       path);

	r = pio_full(f->fd, t->sb_buf, NV_PAGE, 0, false);
	if (r == -EINVAL && f->direct) {
		/* Some filesystems take the flag at open and refuse the I/O. */
		nv_log(t, LOG_WARNING, "%s: O_DIRECT read refused, using buffered I/O", path);
		close(f->fd);
		f->direct = false;
		f->fd = open(path, oflags, 0600);
		if (f->fd < 0)
			return -errno;
		r = lock_file(t, f->fd, path);
		if (r < 0)
			return r;
		r = pio_full(f->fd, t->sb_buf, NV_PAGE, 0, false);
	}
	if (r < 0)
		return r;
	sb_read = r;
	if (sb_read < (int)NV_PAGE)
		memset((char *)t->sb_buf + sb_read, 0, NV_PAGE - (size_t)sb_read);
	pr = sb_parse(t->sb_buf, &sb);
	/* Only an empty file (or a blank device) is ours to initialise: anything else either
	 * carries a kvtier superblock or is someone else's data, never to be overwritten. */
	fresh = f->blockdev ? page_zero(t->sb_buf) : st.st_size == 0;
	if (pr == -EBADMSG && !fresh) {
		nv_log(t, LOG_ERR,
		       "%s: the slot file's superblock is damaged (both copies); refusing to "
		       "start rather than wipe its records: restore the file, or remove it to "
		       "start empty",
		       path);
		return -EBADMSG;
	}
	if (pr == -ENOENT && !fresh) {
		nv_log(t, LOG_ERR,
		       "%s: not a kvtier slot file (%llu bytes, no kvtier superblock); refusing "
		       "to overwrite it: name a new file in nvme.paths",
		       path, (unsigned long long)(f->blockdev ? 0 : st.st_size));
		return -EEXIST;
	}
	valid = pr >= 0;
	if (pr == 1)
		nv_log(t, LOG_WARNING, "%s: superblock damaged, using its second copy", path);

	if (f->blockdev) {
		uint64_t dev = 0;

		if (ioctl(f->fd, BLKGETSIZE64, &dev) < 0)
			return -errno;
		dev = dev / NV_PAGE * NV_PAGE;
		if (dev < 2 * NV_PAGE)
			return -ENOSPC;
		if (!data_bytes || data_bytes > dev - NV_PAGE)
			data_bytes = dev - NV_PAGE;
	}
	if (!data_bytes && valid)
		data_bytes = sb.data_bytes;
	if (!data_bytes) {
		nv_log(t, LOG_ERR, "%s: no capacity configured and no slot file to reuse", path);
		return -EINVAL;
	}
	if (valid && data_bytes < sb.data_bytes) {
		nv_log(t, LOG_ERR,
		       "%s: nvme.capacity gives this file a data region of %llu bytes, less than "
		       "the %llu bytes its records may occupy; refusing to drop them: set "
		       "nvme.capacity back (0 reuses the files at their size), or remove the file "
		       "to start empty",
		       path, (unsigned long long)data_bytes, (unsigned long long)sb.data_bytes);
		return -EINVAL;
	}
	f->data_bytes = data_bytes;
	r = nv_alloc_init(&f->alloc, data_bytes / NV_PAGE);
	if (r < 0)
		return r;

	if (valid) {
		uint64_t avail = data_bytes;

		f->salt = sb.salt;
		f->hwm = sb.hwm;
		f->created_ns = sb.created_ns;
		if (!f->blockdev && (uint64_t)st.st_size < NV_DATA_OFF + sb.data_bytes) {
			/* Cut short behind our back: what lay past the end is gone. */
			avail = (uint64_t)st.st_size > NV_DATA_OFF
				    ? ((uint64_t)st.st_size - NV_DATA_OFF) / NV_PAGE * NV_PAGE
				    : 0;
			if (avail < f->hwm) {
				t->sst.lost_bytes += f->hwm - avail;
				nv_log(t, LOG_ERR,
				       "%s: the file is %llu bytes, its superblock says %llu: the "
				       "last %llu bytes of its records were cut off and are lost",
				       path, (unsigned long long)st.st_size,
				       (unsigned long long)(NV_DATA_OFF + sb.data_bytes),
				       (unsigned long long)(f->hwm - avail));
			}
		}
		f->scan_end = f->hwm < avail ? f->hwm : avail;
		if (data_bytes != sb.data_bytes)
			nv_log(t, LOG_NOTICE,
			       "%s: capacity grows from %llu to %llu bytes, records kept", path,
			       (unsigned long long)sb.data_bytes, (unsigned long long)data_bytes);
		if (!f->blockdev && (uint64_t)st.st_size < NV_DATA_OFF + data_bytes) {
			r = preallocate(t, f, path, NV_DATA_OFF + data_bytes, false);
			if (r < 0)
				return r;
		}
		if (pr == 1 || data_bytes != sb.data_bytes)
			return sb_write(t, f);
		return 0;
	}
	/* A fresh incarnation: new salt, so nothing an older one wrote can be accepted. */
	if (getrandom(&f->salt, sizeof(f->salt), 0) != sizeof(f->salt)) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		f->salt = (uint32_t)(ts.tv_nsec ^ ts.tv_sec ^ getpid());
	}
	{
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		f->created_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	}
	f->hwm = 0;
	f->scan_end = 0;
	/* The superblock first: a crash before the preallocation ends leaves a kvtier file. */
	r = sb_write(t, f);
	if (r < 0)
		return r;
	if (!f->blockdev) {
		r = preallocate(t, f, path, NV_DATA_OFF + data_bytes, true);
		if (r < 0)
			return r;
	}
	return 0;
}

/* ---- engines ---- */

static inline unsigned rq_op(const struct kvt_tier_io *io)
{
	return (unsigned)(io->tier_priv[0] & RQ_OP_MASK);
}

static inline uint32_t rq_xfer(const struct kvt_tier_io *io)
{
	return (uint32_t)round_up(io->len, NV_PAGE);
}

static bool buf_fixed(const struct kvt_tier *t, const void *buf, uint32_t len)
{
	const char *p = buf;

	return t->arena_reg && p >= t->arena && p + len <= t->arena + t->arena_reg;
}

/* Removes the salt and checks the record just read: io->len or -EBADMSG. */
static int read_verify(const struct kvt_tier *t, struct kvt_tier_io *io)
{
	struct kvt_record_hdr *h = io->buf;

	h->crc ^= t->files[io->loc.file].salt;
	if (kvt_record_check(h, (char *)io->buf + KVT_RECORD_HDR_SIZE,
			     io->len - KVT_RECORD_HDR_SIZE) < 0)
		return -EBADMSG;
	return (int)io->len;
}

static struct nv_vjob *vjob_make(struct kvt_tier *t, struct kvt_tier_io *io, unsigned hands);
static void vjob_queue(struct kvt_tier *t, struct nv_vjob *j, unsigned from);
static void vpiece_run(struct kvt_tier *t, struct nv_vpiece *pc);

static void *worker_main(void *arg)
{
	struct kvt_tier *t = arg;

	for (;;) {
		struct kvt_tier_io *io;
		struct nv_file *f;
		bool wr;
		int r;

		pthread_mutex_lock(&t->mu);
		while (!t->stop && !t->wq.head)
			pthread_cond_wait(&t->cv, &t->mu);
		io = list_pop(&t->wq);
		pthread_mutex_unlock(&t->mu);
		if (!io)
			break;
		f = &t->files[io->loc.file];
		wr = rq_op(io) != RQ_READ;
		r = pio_full(f->fd, io->buf, rq_xfer(io), io->loc.off, wr);
		if (r >= 0 && (uint32_t)r != rq_xfer(io))
			r = -EIO;
		if (r >= 0 && wr && (t->flags & KVT_TIER_F_FSYNC) && fdatasync(f->fd) < 0)
			r = -errno;
		io->res = r < 0 ? r : (int)io->len;
		if (!wr && r >= 0) {
			struct nv_vjob *j = vjob_make(t, io, t->nvthreads + 1);

			if (j) {
				/* This worker checks the first piece, the verifiers the others;
				 * whoever finishes last delivers (j is gone after that). */
				io->res = (int)io->len;
				vjob_queue(t, j, 1);
				vpiece_run(t, &j->piece[0]);
				continue;
			}
			/* Checked here, off the event loop either way. */
			io->res = read_verify(t, io);
			io->tier_priv[0] |= RQ_VERIFIED;
		}
		pthread_mutex_lock(&t->mu);
		list_add(&t->wdone, io);
		pthread_mutex_unlock(&t->mu);
		efd_signal(t);
	}
	return NULL;
}

static int workers_start(struct kvt_tier *t)
{
	unsigned n = t->qd < NV_MAX_WORKERS ? t->qd : NV_MAX_WORKERS;

	t->workers = calloc(n, sizeof(*t->workers));
	if (!t->workers)
		return -ENOMEM;
	for (unsigned i = 0; i < n; i++) {
		int r = pthread_create(&t->workers[i], NULL, worker_main, t);

		if (r) {
			if (!i)
				return -r;
			break;
		}
		t->nworkers++;
	}
	return 0;
}

static void workers_stop(struct kvt_tier *t)
{
	pthread_mutex_lock(&t->mu);
	t->stop = true;
	pthread_cond_broadcast(&t->cv);
	pthread_mutex_unlock(&t->mu);
	for (unsigned i = 0; i < t->nworkers; i++)
		pthread_join(t->workers[i], NULL);
	free(t->workers);
	t->workers = NULL;
	t->nworkers = 0;
}

static void vjob_finish(struct kvt_tier *t, struct nv_vjob *j)
{
	struct kvt_tier_io *io = j->io;
	const struct kvt_record_hdr *h = io->buf;
	uint32_t crc = kvt_record_hdr_crc(h);

	for (unsigned k = 0; k < j->npieces; k++)
		crc = kvt_crc32c_combine(crc, j->piece[k].crc, j->piece[k].len);
	io->res = crc == j->want ? (int)io->len : -EBADMSG;
	free(j);
	pthread_mutex_lock(&t->mu);
	list_add(&t->wdone, io);
	pthread_mutex_unlock(&t->mu);
	efd_signal(t);
}

static void *verifier_main(void *arg)
{
	struct kvt_tier *t = arg;

	for (;;) {
		struct nv_vpiece *pc;

		pthread_mutex_lock(&t->vmu);
		while (!t->vstop && !t->vq_head)
			pthread_cond_wait(&t->vcv, &t->vmu);
		pc = t->vq_head;
		if (pc) {
			t->vq_head = pc->next;
			if (!t->vq_head)
				t->vq_tail = NULL;
		}
		pthread_mutex_unlock(&t->vmu);
		if (!pc)
			break;
		vpiece_run(t, pc);
	}
	return NULL;
}

static void verifiers_start(struct kvt_tier *t, unsigned want)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	if (!want)
		want = ncpu >= 8 ? (unsigned)(ncpu / 4) : 1;
	if (want > NV_MAX_VERIFY)
		want = NV_MAX_VERIFY;
	t->vthreads = calloc(want, sizeof(*t->vthreads));
	if (!t->vthreads)
		return; /* checked inline then */
	for (unsigned i = 0; i < want; i++) {
		if (pthread_create(&t->vthreads[i], NULL, verifier_main, t))
			break;
		t->nvthreads++;
	}
	if (!t->nvthreads) {
		free(t->vthreads);
		t->vthreads = NULL;
	}
}

static void verifiers_stop(struct kvt_tier *t)
{
	pthread_mutex_lock(&t->vmu);
	t->vstop = true;
	pthread_cond_broadcast(&t->vcv);
	pthread_mutex_unlock(&t->vmu);
	for (unsigned i = 0; i < t->nvthreads; i++)
		pthread_join(t->vthreads[i], NULL);
	free(t->vthreads);
	t->vthreads = NULL;
	t->nvthreads = 0;
}

/*
 * Cuts a read record into at most `hands` pieces (the threads that will check them), after
 * checking its header here (cheap, and the piece sizes depend on it).  Returns NULL when the
 * record is better checked inline: small, no verifiers, a bad header (inline checking
 * reports it), or no memory.  On success the salt is off the header's crc and RQ_VERIFIED
 * is set.
 */
static struct nv_vjob *vjob_make(struct kvt_tier *t, struct kvt_tier_io *io, unsigned hands)
{
	struct kvt_record_hdr *h = io->buf;
	struct nv_vjob *j;
	uint32_t plen, step, off = 0;
	unsigned n;

	if (!t->nvthreads || io->len < NV_VERIFY_MIN)
		return NULL;
	h->crc ^= t->files[io->loc.file].salt;
	if (kvt_record_check_hdr(h, io->len - KVT_RECORD_HDR_SIZE) < 0 ||
	    !(j = calloc(1, sizeof(*j)))) {
		h->crc ^= t->files[io->loc.file].salt;
		return NULL;
	}
	io->tier_priv[0] |= RQ_VERIFIED;
	plen = h->payload_len;
	n = plen / NV_VPIECE;
	n = n < 1 ? 1 : (n > hands ? hands : n);
	step = (plen / n + 63) & ~63u;
	j->io = io;
	j->want = h->crc;
	for (unsigned k = 0; k < n && (off < plen || !k); k++) {
		struct nv_vpiece *pc = &j->piece[k];

		pc->job = j;
		pc->off = off;
		pc->len = plen - off < step || k == n - 1 ? plen - off : step;
		off += pc->len;
		j->npieces++;
	}
	j->left = j->npieces;
	return j;
}

/* Queues pieces [from, npieces) of j for the verifiers. */
static void vjob_queue(struct kvt_tier *t, struct nv_vjob *j, unsigned from)
{
	if (from >= j->npieces)
		return;
	pthread_mutex_lock(&t->vmu);
	for (unsigned k = from; k < j->npieces; k++) {
		struct nv_vpiece *pc = &j->piece[k];

		pc->next = NULL;
		if (t->vq_tail)
			t->vq_tail->next = pc;
		else
			t->vq_head = pc;
		t->vq_tail = pc;
	}
	pthread_mutex_unlock(&t->vmu);
	if (j->npieces - from > 1)
		pthread_cond_broadcast(&t->vcv);
	else
		pthread_cond_signal(&t->vcv);
}

/* Checks one piece; the thread that finishes the last one delivers the verdict. */
static void vpiece_run(struct kvt_tier *t, struct nv_vpiece *pc)
{
	const char *payload = (const char *)pc->job->io->buf + KVT_RECORD_HDR_SIZE;

	pc->crc = kvt_crc32c(0, payload + pc->off, pc->len);
	/* acq_rel: the last one sees every other piece's crc. */
	if (__atomic_sub_fetch(&pc->job->left, 1, __ATOMIC_ACQ_REL) == 0)
		vjob_finish(t, pc->job);
}

/*
 * A read came back from the device (loop thread, io_uring).  A large record goes to the
 * verifiers and its device slot is given back at once, so that the queue refills while the
 * CRC runs; the event loop never touches the payload.  Returns true when the request was
 * handed over (its verdict arrives through wdone).
 */
static bool verify_async(struct kvt_tier *t, struct kvt_tier_io *io)
{
	struct nv_vjob *j = vjob_make(t, io, t->nvthreads);

	if (!j)
		return false;
	if (io->tier_priv[0] & RQ_STARTED) {
		io->tier_priv[0] &= ~(uintptr_t)RQ_STARTED;
		t->inflight--;
	}
	t->verifying++;
	vjob_queue(t, j, 0);
	return true;
}

static int uring_setup(struct kvt_tier *t)
{
	unsigned entries = 8;
	int fds[256];
	int r;

	while (entries < 2 * t->qd)
		entries *= 2;
	r = hook(t, KVT_TIER_OP_URING_SETUP, 0, 0);
	if (r >= 0) {
		/* Completions need no IPI to the loop thread: it picks them up on its next
		 * entry into the kernel (poll wakes it).  Older kernels refuse the flag. */
		struct io_uring_params p = {.flags = IORING_SETUP_COOP_TASKRUN};

		r = io_uring_queue_init_params(entries, &t->ring, &p);
		if (r == -EINVAL)
			r = io_uring_queue_init(entries, &t->ring, 0);
	}
	if (r < 0)
		return r;
	r = io_uring_register_eventfd(&t->ring, t->efd);
	if (r < 0) {
		io_uring_queue_exit(&t->ring);
		return r;
	}
	if (t->nfiles <= 256) {
		for (unsigned i = 0; i < t->nfiles; i++)
			fds[i] = t->files[i].fd;
		t->fixed_files = io_uring_register_files(&t->ring, fds, t->nfiles) == 0;
	}
	if (t->arena) {
		size_t len = t->arena_bytes;

		/* Registration pins memory (RLIMIT_MEMLOCK without CAP_IPC_LOCK): shrink until
		 * it fits; buffers past the registered prefix still work, unregistered. */
		while (len >= (1u << 20)) {
			struct iovec iov = {.iov_base = t->arena, .iov_len = len};

			if (io_uring_register_buffers(&t->ring, &iov, 1) == 0) {
				t->arena_reg = len;
				break;
			}
			len /= 2;
		}
		if (t->arena_reg < t->arena_bytes)
			nv_log(t, LOG_WARNING,
			       "io_uring pinned %zu of %zu buffer bytes (RLIMIT_MEMLOCK too low? "
			       "raise LimitMEMLOCK=); I/O through the rest is a little slower",
			       t->arena_reg, t->arena_bytes);
	}
	t->uring = true;
	return 0;
}

static void efd_signal(struct kvt_tier *t);

static void uring_flush(struct kvt_tier *t)
{
	if (t->unsubmitted) {
		int r = io_uring_submit(&t->ring);

		if (r >= 0)
			t->unsubmitted = 0;
		else
			efd_signal(t); /* EAGAIN/EBUSY: come back through complete() and retry */
	}
}

static struct io_uring_sqe *uring_sqe(struct kvt_tier *t)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&t->ring);

	if (!sqe) {
		io_uring_submit(&t->ring);
		t->unsubmitted = 0;
		sqe = io_uring_get_sqe(&t->ring);
	}
	return sqe;
}

static void uring_start(struct kvt_tier *t, struct kvt_tier_io *io, bool more)
{
	struct nv_file *f = &t->files[io->loc.file];
	bool wr = rq_op(io) != RQ_READ;
	bool sync = wr && (t->flags & KVT_TIER_F_FSYNC);
	int fd = t->fixed_files ? (int)io->loc.file : f->fd;
	uint32_t len = rq_xfer(io);
	struct io_uring_sqe *sqe;

	/* A write and its fdatasync must sit in the same submission to stay linked. */
	if (io_uring_sq_space_left(&t->ring) < (sync ? 2u : 1u)) {
		io_uring_submit(&t->ring);
		t->unsubmitted = 0;
	}
	sqe = uring_sqe(t);
	if (buf_fixed(t, io->buf, len)) {
		if (wr)
			io_uring_prep_write_fixed(sqe, fd, io->buf, len, io->loc.off, 0);
		else
			io_uring_prep_read_fixed(sqe, fd, io->buf, len, io->loc.off, 0);
	} else if (wr) {
		io_uring_prep_write(sqe, fd, io->buf, len, io->loc.off);
	} else {
		io_uring_prep_read(sqe, fd, io->buf, len, io->loc.off);
	}
	if (t->fixed_files)
		sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)io | 1);
	io->tier_priv[0] |= 1u << RQ_PEND_SHIFT;
	t->unsubmitted++;
	if (sync) {
		sqe->flags |= IOSQE_IO_LINK;
		sqe = uring_sqe(t);
		io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
		if (t->fixed_files)
			sqe->flags |= IOSQE_FIXED_FILE;
		io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)io | 2);
		io->tier_priv[0] += 1u << RQ_PEND_SHIFT;
		t->unsubmitted++;
	}
	io->res = 0;
	if (!more)
		uring_flush(t);
}

static void nv_release(struct kvt_tier *t, struct nv_ext *e);
static void nv_free_ext(struct kvt_tier *t, struct nv_ext *e);

/* Queues the completion of a request that never reached the device. */
static void finish_early(struct kvt_tier *t, struct kvt_tier_io *io, int res)
{
	io->res = res;
	list_add(&t->done_now, io);
	efd_signal(t);
}

/* Hands a request to the engine (or the backlog when the queue is full). */
static void nv_start(struct kvt_tier *t, struct kvt_tier_io *io, bool more)
{
	uint32_t len = rq_xfer(io);
	bool wr = rq_op(io) != RQ_READ;
	int r;

	if (t->inflight >= t->qd) {
		list_add(&t->backlog, io);
		return;
	}
	io->tier_priv[0] |= RQ_STARTED;
	t->inflight++;
	r = hook(t, wr ? KVT_TIER_OP_WRITE : KVT_TIER_OP_READ, io->loc.off, len);
	if (r < 0) {
		finish_early(t, io, r);
		return;
	}
	if (r > 0 && wr && (uint32_t)r < len) {
		/* Torn write for tests: part of the record reaches the medium, then EIO. */
		uint32_t part = (uint32_t)r / NV_PAGE * NV_PAGE;

		if (part)
			pio_full(t->files[io->loc.file].fd, io->buf, part, io->loc.off, true);
		finish_early(t, io, -EIO);
		return;
	}
	if (wr && (t->flags & KVT_TIER_F_FSYNC)) {
		r = hook(t, KVT_TIER_OP_FSYNC, io->loc.off, len);
		if (r < 0)
			io->tier_priv[0] |= (uintptr_t)(-r & 0xffff) << RQ_ERR_SHIFT;
	}
	if (t->uring) {
		uring_start(t, io, more);
		return;
	}
	pthread_mutex_lock(&t->mu);
	list_add(&t->wq, io);
	pthread_mutex_unlock(&t->mu);
	/* After the unlock, so the woken worker does not block on the mutex at once. */
	pthread_cond_signal(&t->cv);
}

static void inval_done(struct kvt_tier_io *io)
{
	struct nv_inval *iv = (struct nv_inval *)io;
	struct kvt_tier *t = iv->t;
	struct nv_ext *e =
	    map_get(&t->map, ext_key(io->loc.file, (io->loc.off - NV_DATA_OFF) / NV_PAGE));

	if (e) {
		e->inval = 0;
		if (io->res >= 0) {
			nv_release(t, e);
		} else {
			/* Pages that may still hold a valid record are never reused. */
			quarantine_freeing(t, e);
			nv_log(t, LOG_ERR,
			       "file %u: invalidating record at %llu failed: %s; %u pages withheld",
			       io->loc.file, (unsigned long long)io->loc.off, strerror(-io->res),
			       e->npages);
		}
	}
	free(iv);
}

/* Completion of any request, on the event-loop thread. */
static void nv_finish(struct kvt_tier *t, struct kvt_tier_io *io, int res)
{
	unsigned op = rq_op(io);
	int ferr = (int)((io->tier_priv[0] >> RQ_ERR_SHIFT) & 0xffff);
	struct nv_file *f = &t->files[io->loc.file];
	struct nv_ext *e;

	if (io->tier_priv[0] & RQ_STARTED)
		t->inflight--;
	if (res >= 0 && ferr)
		res = -ferr;
	if (op == RQ_INVAL) {
		if (res < 0)
			t->st.write_errors++;
		io->res = res;
		io->done(io);
		return;
	}
	/* A request settle() cancelled: its extent is gone, maybe reused already. */
	e = io->tier_priv[0] & RQ_DETACHED
		? NULL
		: map_get(&t->map, ext_key(io->loc.file, (io->loc.off - NV_DATA_OFF) / NV_PAGE));
	if (op == RQ_WRITE) {
		struct kvt_record_hdr *h = io->buf;

		h->crc ^= f->salt; /* give the caller its buffer back as it was */
		if (res >= 0) {
			res = (int)io->len;
			t->st.bytes_written += io->len;
		} else if (res != -ECANCELED) {
			t->st.write_errors++;
		}
		if (e && e->state == EXT_WRITING) {
			e->state = res >= 0 ? EXT_VALID : EXT_FAILED;
			if (res >= 0)
				t->st.records++;
		}
	} else {
		if (res >= 0 && !(io->tier_priv[0] & RQ_VERIFIED))
			res = read_verify(t, io);
		if (res >= 0)
			t->st.bytes_read += io->len;
		else if (res == -EBADMSG)
			t->st.corrupt_records++;
		else if (res != -ECANCELED)
			t->st.read_errors++;
	}
	io->res = res;
	if (e) {
		e->inflight--;
		if (e->state == EXT_FREEING && !e->inflight)
			nv_free_ext(t, e);
	}
	if (t->defer_user)
		list_add(&t->deferred, io);
	else
		io->done(io);
}

/* Pages back to the allocator; the entry leaves the map. */
static void nv_release(struct kvt_tier *t, struct nv_ext *e)
{
	unsigned fi = (unsigned)((e->key - 1) >> 48);
	uint64_t page = (e->key - 1) & ((1ull << 48) - 1);

	if (e->state == EXT_FREEING) {
		fq_del(t, e);
		t->freeing--;
		t->freeing_pages -= e->npages;
	}
	nv_alloc_put(&t->files[fi].alloc, page, e->npages);
	map_del(&t->map, e);
}

/* The extent is FREEING with no I/O in flight: invalidate (if it may hold a record), then
 * release. */
static void nv_free_ext(struct kvt_tier *t, struct nv_ext *e)
{
	struct nv_inval *iv;
	unsigned fi = (unsigned)((e->key - 1) >> 48);
	uint64_t page = (e->key - 1) & ((1ull << 48) - 1);

	if (!e->written) {
		nv_release(t, e);
		return;
	}
	iv = calloc(1, sizeof(*iv));
	if (!iv) {
		quarantine_freeing(t, e);
		return;
	}
	iv->t = t;
	iv->io.loc.file = (uint16_t)fi;
	iv->io.loc.off = NV_DATA_OFF + page * NV_PAGE;
	iv->io.loc.len = NV_PAGE;
	iv->io.buf = t->zero_page;
	iv->io.len = NV_PAGE;
	iv->io.done = inval_done;
	iv->io.tier_priv[0] = RQ_INVAL;
	e->inval = 1;
	nv_start(t, &iv->io, true);
}

/* ---- ops ---- */

static int nvme_complete(struct kvt_tier *t);
static void drain_freeing(struct kvt_tier *t);

static void nvme_close(struct kvt_tier *t);

/*
 * The I/O buffer arena, on 2 MiB boundaries and asking for transparent huge pages: a record
 * read with O_DIRECT into 4 KiB pages costs the kernel (and a VM's host) one mapping per page,
 * and the first CPU pass over each freshly written page (the CRC check) is several times
 * slower than over the same bytes in a huge page.  Where THP is off this is the same memory.
 */
static void *arena_map(size_t len)
{
	const size_t huge = 2u << 20;
	char *p =
	    mmap(NULL, len + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *a;

	if (p == MAP_FAILED)
		return MAP_FAILED;
	a = (char *)(((uintptr_t)p + huge - 1) & ~(uintptr_t)(huge - 1));
	if (a > p)
		munmap(p, (size_t)(a - p));
	if (a + len < p + len + huge)
		munmap(a + len, (size_t)(p + len + huge - (a + len)));
	(void)madvise(a, len, MADV_HUGEPAGE); /* advice only: EINVAL without THP support */
	return a;
}

static int nvme_open(const struct kvt_tier_conf *conf, struct kvt_tier **out)
{
	struct kvt_tier *t;
	uint64_t share = 0;
	unsigned n = 0;
	int r;

	if (!conf || !out || !conf->paths || !conf->paths[0])
		return -EINVAL;
	while (conf->paths[n])
		n++;
	if (n > 0xffff)
		return -EINVAL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->magic = NV_TIER_MAGIC;
	t->flags = conf->flags;
	t->qd = conf->queue_depth ? conf->queue_depth : NV_DEFAULT_QD;
	if (t->qd > NV_MAX_QD)
		t->qd = NV_MAX_QD;
	t->io_hook = conf->io_hook;
	t->log = conf->log;
	t->log_arg = conf->log_arg;
	t->efd = -1;
	pthread_mutex_init(&t->mu, NULL);
	pthread_cond_init(&t->cv, NULL);
	pthread_mutex_init(&t->vmu, NULL);
	pthread_cond_init(&t->vcv, NULL);
	t->files = calloc(n, sizeof(*t->files));
	if (!t->files) {
		r = -ENOMEM;
		goto fail;
	}
	for (unsigned i = 0; i < n; i++)
		t->files[i].fd = -1;
	if (posix_memalign(&t->zero_page, NV_PAGE, NV_PAGE) ||
	    posix_memalign(&t->sb_buf, NV_PAGE, NV_PAGE)) {
		r = -ENOMEM;
		goto fail;
	}
	memset(t->zero_page, 0, NV_PAGE);
	t->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (t->efd < 0) {
		r = -errno;
		goto fail;
	}
	if (conf->capacity_bytes)
		share = conf->capacity_bytes / n;
	for (unsigned i = 0; i < n; i++) {
		t->nfiles = i + 1; /* so that close() sees the files opened so far */
		r = file_open(t, i, conf->paths[i], share);
		if (r < 0) {
			nv_log(t, LOG_ERR, "%s: %s", conf->paths[i], strerror(-r));
			goto fail;
		}
		t->scan_total += t->files[i].scan_end;
	}

	t->arena_bytes = conf->buf_bytes ? conf->buf_bytes : NV_DEFAULT_BUF;
	t->arena_bytes = round_up(t->arena_bytes, NV_PAGE);
	if (t->arena_bytes > NV_MAX_BUF)
		t->arena_bytes = NV_MAX_BUF;
	t->arena = arena_map(t->arena_bytes);
	if (t->arena == MAP_FAILED) {
		t->arena = NULL;
		t->arena_bytes = 0;
	} else if (nv_alloc_init(&t->arena_alloc, t->arena_bytes / NV_PAGE) < 0 ||
		   !(t->arena_len = calloc(t->arena_bytes / NV_PAGE, sizeof(uint32_t)))) {
		r = -ENOMEM;
		goto fail;
	}

	r = -ENOSYS;
	if (!(t->flags & KVT_TIER_F_NO_URING)) {
		r = uring_setup(t);
		if (r < 0)
			nv_log(t, LOG_WARNING,
			       "io_uring unavailable (%s%s), using %u pread/pwrite workers",
			       strerror(-r),
			       r == -ENOMEM ? "; RLIMIT_MEMLOCK too low? raise LimitMEMLOCK=" : "",
			       t->qd < NV_MAX_WORKERS ? t->qd : NV_MAX_WORKERS);
	}
	if (r < 0) {
		r = workers_start(t);
		if (r < 0)
			goto fail;
	}
	if (!(t->flags & KVT_TIER_F_VERIFY_INLINE))
		verifiers_start(t, conf->verify_threads);
	for (unsigned i = 0; i < t->nfiles; i++)
		t->st.capacity_bytes += t->files[i].data_bytes;
	t->st.files = t->nfiles;
	if (!(t->flags & KVT_TIER_F_BG_RECOVER)) {
		r = scan_all(t);
		scan_merge(t);
		t->scanned = true;
		if (r < 0)
			goto fail;
	}
	*out = t;
	return 0;
fail:
	nvme_close(t);
	return r;
}

static void nvme_close(struct kvt_tier *t)
{
	if (!t)
		return;
	if (t->magic != NV_TIER_MAGIC)
		abort(); /* a stray pointer here would corrupt data on the way out */
	if (t->scan_started) {
		__atomic_store_n(&t->scan_stop, 1, __ATOMIC_RELAXED);
		pthread_join(t->scan_th, NULL);
		t->scan_started = false;
	}
	/* Drain: outstanding done() callbacks (and pending invalidations) run here. */
	while (t->inflight || t->verifying || t->backlog.head || t->done_now.head ||
	       t->deferred.head) {
		struct pollfd pfd = {.fd = t->efd, .events = POLLIN};

		if (t->uring)
			uring_flush(t);
		if (!t->done_now.head && !t->deferred.head)
			poll(&pfd, 1, 100);
		nvme_complete(t);
	}
	if (t->vthreads)
		verifiers_stop(t);
	if (t->uring)
		io_uring_queue_exit(&t->ring);
	if (t->workers)
		workers_stop(t);
	for (unsigned i = 0; i < t->nfiles; i++) {
		struct nv_file *f = &t->files[i];

		if (f->fd >= 0) {
			if (fdatasync(f->fd) < 0 && errno != EINVAL)
				nv_log(t, LOG_ERR, "file %u: fdatasync at close: %s", i,
				       strerror(errno));
			/* Explicitly: io_uring may hold the file a little past its exit, and the
			 * next owner must not find it locked. */
			flock(f->fd, LOCK_UN);
			close(f->fd);
		}
		nv_alloc_destroy(&f->alloc);
	}
	if (t->arena)
		munmap(t->arena, t->arena_bytes);
	nv_alloc_destroy(&t->arena_alloc);
	free(t->arena_len);
	if (t->efd >= 0)
		close(t->efd);
	free(t->files);
	free(t->map.slot);
	free(t->recs);
	free(t->fq);
	free(t->zero_page);
	free(t->sb_buf);
	pthread_mutex_destroy(&t->mu);
	pthread_cond_destroy(&t->cv);
	pthread_mutex_destroy(&t->vmu);
	pthread_cond_destroy(&t->vcv);
	t->magic = 0;
	free(t);
}

static void nvme_free(struct kvt_tier *t, const struct kvt_tier_loc *loc);

/* Records recovered but never claimed through recover() are freed (and invalidated), so
 * space accounting and a later scan agree with what the daemon knows. */
static void drop_recovered(struct kvt_tier *t, size_t from)
{
	for (size_t i = from; i < t->nrecs; i++) {
		struct nv_ext *e = map_get(&t->map, ext_key(t->recs[i].file, t->recs[i].page));

		if (e && e->state == EXT_RECOVERED) {
			e->state = EXT_FREEING;
			fq_add(t, e);
			t->freeing++;
			t->freeing_pages += e->npages;
			t->st.records--;
			nv_free_ext(t, e);
		}
	}
	free(t->recs);
	t->recs = NULL;
	t->nrecs = 0;
	t->recs_pending = false;
	if (t->uring)
		uring_flush(t); /* the invalidations: no caller submits them later (see free()) */
}

static int nvme_alloc(struct kvt_tier *t, uint32_t len, struct kvt_tier_loc *out)
{
	uint64_t n;
	int64_t page = -ENOSPC;
	unsigned fi = 0;
	struct nv_file *f;
	struct nv_ext *e;

	if (!t || t->magic != NV_TIER_MAGIC || !out || len < KVT_RECORD_HDR_SIZE ||
	    len > NV_MAX_RECORD)
		return -EINVAL;
	if (!t->scanned)
		return -EAGAIN; /* the scan owns the allocators until recover() */
	if (t->recs_pending) {
		nv_log(t, LOG_WARNING, "alloc before recover(): dropping %zu recovered records",
		       t->nrecs);
		drop_recovered(t, 0);
	}
	n = round_up(len, NV_PAGE) / NV_PAGE;
	for (int tries = 0; tries < 2 && page < 0; tries++) {
		if (tries)
			drain_freeing(t);
		for (unsigned k = 0; k < t->nfiles; k++) {
			fi = (t->next_file + k) % t->nfiles;
			page = nv_alloc_get(&t->files[fi].alloc, n);
			if (page >= 0)
				break;
		}
		if (!t->freeing)
			break;
	}
	if (page < 0)
		return (int)page;
	/* Spread consecutive blocks over the files (devices). */
	t->next_file = (fi + 1) % t->nfiles;
	f = &t->files[fi];
	if (((uint64_t)page + n) * NV_PAGE > f->hwm) {
		/* Recovery scans up to the mark, so it must be durable before data lands past
		 * it.  Moves in large steps: a handful of synchronous writes per file life. */
		uint64_t old = f->hwm;
		int r;

		f->hwm = round_up(((uint64_t)page + n) * NV_PAGE, NV_HWM_STEP);
		if (f->hwm > f->data_bytes)
			f->hwm = f->data_bytes;
		r = sb_write(t, f);
		if (r < 0) {
			f->hwm = old;
			nv_alloc_put(&f->alloc, (uint64_t)page, n);
			t->st.write_errors++;
			return r;
		}
	}
	e = map_add(&t->map, ext_key(fi, (uint64_t)page));
	if (!e) {
		nv_alloc_put(&f->alloc, (uint64_t)page, n);
		return -ENOMEM;
	}
	e->npages = (uint32_t)n;
	e->state = EXT_ALLOC;
	e->fqi = UINT32_MAX;
	out->off = NV_DATA_OFF + (uint64_t)page * NV_PAGE;
	out->len = (uint32_t)(n * NV_PAGE);
	out->file = (uint16_t)fi;
	out->flags = 0;
	return 0;
}

static struct nv_ext *loc_ext(struct kvt_tier *t, const struct kvt_tier_loc *loc)
{
	struct nv_ext *e;

	if (!loc || loc->file >= t->nfiles || loc->off < NV_DATA_OFF ||
	    (loc->off - NV_DATA_OFF) % NV_PAGE)
		return NULL;
	e = map_get(&t->map, ext_key(loc->file, (loc->off - NV_DATA_OFF) / NV_PAGE));
	if (!e || (uint64_t)e->npages * NV_PAGE != loc->len)
		return NULL;
	return e;
}

static void nvme_free(struct kvt_tier *t, const struct kvt_tier_loc *loc)
{
	struct nv_ext *e;

	if (!t || t->magic != NV_TIER_MAGIC)
		return;
	e = loc_ext(t, loc);
	if (!e || e->state == EXT_FREEING || e->state == EXT_QUARANTINE) {
		nv_log(t, LOG_ERR, "free of unknown or freed slot (file %u off %llu)",
		       loc ? loc->file : 0, loc ? (unsigned long long)loc->off : 0ull);
		return;
	}
	if (e->state == EXT_VALID || e->state == EXT_RECOVERED)
		t->st.records--;
	e->state = EXT_FREEING;
	fq_add(t, e);
	t->freeing++;
	t->freeing_pages += e->npages;
	if (!e->inflight)
		nv_free_ext(t, e);
	/* free() takes no KVT_TIER_IO_MORE: its invalidation goes to the device now.  Held
	 * back, it kept its queue slot with nothing submitted, and at a small queue depth the
	 * reads queued behind it waited for a completion that never came. */
	if (t->uring)
		uring_flush(t);
}

static int io_check(struct kvt_tier *t, const struct kvt_tier_io *io)
{
	if (!io || !io->buf || !io->done || io->len < KVT_RECORD_HDR_SIZE || io->len > io->loc.len)
		return -EINVAL;
	if (t->files[io->loc.file < t->nfiles ? io->loc.file : 0].direct &&
	    ((uintptr_t)io->buf & (NV_PAGE - 1)))
		return -EINVAL;
	return 0;
}

static int nvme_write(struct kvt_tier *t, struct kvt_tier_io *io)
{
	struct kvt_record_hdr *h;
	struct nv_ext *e;
	uint32_t xfer;
	int r;

	if (!t || t->magic != NV_TIER_MAGIC)
		return -EINVAL;
	r = io_check(t, io);
	if (r < 0)
		return r;
	e = loc_ext(t, &io->loc);
	if (!e)
		return -EINVAL;
	if (e->state != EXT_ALLOC)
		return -EBUSY; /* records are written once; alloc a new slot */
	h = io->buf;
	if (h->magic != KVT_RECORD_MAGIC ||
	    KVT_RECORD_HDR_SIZE + (uint64_t)h->payload_len > io->len)
		return -EINVAL;
	xfer = rq_xfer(io);
	/* The pad goes to the medium too: zero it rather than leak heap bytes to disk. */
	memset((char *)io->buf + io->len, 0, xfer - io->len);
	e->kh = key_hash(h->key_lo, h->key_hi);
	h->crc ^= t->files[io->loc.file].salt;
	e->state = EXT_WRITING;
	e->written = 1;
	e->inflight++;
	t->st.writes++;
	io->tier_priv[0] = RQ_WRITE;
	nv_start(t, io, io->flags & KVT_TIER_IO_MORE);
	return 0;
}

static int nvme_read(struct kvt_tier *t, struct kvt_tier_io *io)
{
	struct nv_ext *e;
	int r;

	if (!t || t->magic != NV_TIER_MAGIC)
		return -EINVAL;
	r = io_check(t, io);
	if (r < 0)
		return r;
	e = loc_ext(t, &io->loc);
	if (!e)
		return -EINVAL;
	if (e->state != EXT_VALID)
		return -ENODATA; /* not written (yet), failed, or being freed: never served */
	e->inflight++;
	t->st.reads++;
	io->tier_priv[0] = RQ_READ;
	nv_start(t, io, io->flags & KVT_TIER_IO_MORE);
	return 0;
}

static void uring_reap(struct kvt_tier *t, int *n)
{
	struct io_uring_cqe *cqe;

	while (io_uring_peek_cqe(&t->ring, &cqe) == 0) {
		uint64_t ud = io_uring_cqe_get_data64(cqe);
		struct kvt_tier_io *io = (struct kvt_tier_io *)(uintptr_t)(ud & ~7ull);
		int res = cqe->res;

		io_uring_cqe_seen(&t->ring, cqe);
		if ((ud & 7) == 1) {
			uint32_t want = rq_xfer(io);

			io->res = res < 0 ? res : ((uint32_t)res == want ? (int)io->len : -EIO);
		} else if (res < 0 && io->res >= 0) {
			io->res = res;
		}
		io->tier_priv[0] -= 1u << RQ_PEND_SHIFT;
		if (io->tier_priv[0] & RQ_PEND_MASK)
			continue;
		if (rq_op(io) == RQ_READ && io->res >= 0 && verify_async(t, io))
			continue;
		nv_finish(t, io, io->res);
		(*n)++;
	}
}

/* Reaps every completion available now (engine, early failures), then refills the queue. */
static void reap_all(struct kvt_tier *t, int *n)
{
	struct kvt_tier_io *io;
	struct nv_list l;

	if (t->uring) {
		uring_flush(t);
		uring_reap(t, n);
	}
	/* Worker results, or in io_uring mode the verifiers' verdicts. */
	pthread_mutex_lock(&t->mu);
	l = t->wdone;
	t->wdone.head = t->wdone.tail = NULL;
	pthread_mutex_unlock(&t->mu);
	while ((io = list_pop(&l))) {
		if (t->uring)
			t->verifying--;
		nv_finish(t, io, io->res);
		(*n)++;
	}
	l = t->done_now;
	t->done_now.head = t->done_now.tail = NULL;
	while ((io = list_pop(&l))) {
		nv_finish(t, io, io->res);
		(*n)++;
	}
	while (t->backlog.head && t->inflight < t->qd)
		nv_start(t, list_pop(&t->backlog), true);
	if (t->uring)
		uring_flush(t);
}

static int nvme_complete(struct kvt_tier *t)
{
	struct kvt_tier_io *io;
	struct nv_list l;
	uint64_t v;
	int n = 0;

	if (!t || t->magic != NV_TIER_MAGIC)
		return -EINVAL;
	/* Reset the counter before reaping so that a completion racing with us re-arms it. */
	if (read(t->efd, &v, sizeof(v)) < 0) {
	}
	l = t->deferred;
	t->deferred.head = t->deferred.tail = NULL;
	while ((io = list_pop(&l))) {
		io->done(io);
		n++;
	}
	reap_all(t, &n);
	return n;
}

static void wait_some(struct kvt_tier *t);

/*
 * Freed slots return to the allocator only once their invalidation write is done.  When an
 * alloc() finds no room while some are on their way, it waits for them here: completions
 * reaped meanwhile are finished, but their done() callbacks are held for the next
 * complete() (alloc() may run inside a callback; the caller's state must not change under
 * it).  Blocks for at most the I/O already queued.
 */
static void drain_freeing(struct kvt_tier *t)
{
	bool old = t->defer_user;

	t->defer_user = true;
	while (t->freeing && (t->inflight || t->verifying || t->backlog.head || t->done_now.head))
		wait_some(t);
	t->defer_user = old;
	if (t->deferred.head)
		efd_signal(t); /* the held callbacks: the event loop must come back */
}

/* Waits for some completion and reaps what came (callbacks held while defer_user). */
static void wait_some(struct kvt_tier *t)
{
	int n = 0;

	if (t->uring && t->inflight) {
		struct io_uring_cqe *cqe;

		uring_flush(t);
		if (!t->done_now.head)
			io_uring_wait_cqe(&t->ring, &cqe);
	} else if (!t->done_now.head) {
		struct pollfd pfd = {.fd = t->efd, .events = POLLIN};
		uint64_t v;

		poll(&pfd, 1, 10);
		if (read(t->efd, &v, sizeof(v)) < 0) {
		}
	}
	reap_all(t, &n);
}

/*
 * Takes the requests on extent e that never reached the device out of the backlog: reads
 * and writes complete with -ECANCELED (done() runs from complete()), a queued
 * invalidation is dropped (the caller invalidates now).
 */
static void cancel_queued(struct kvt_tier *t, struct nv_ext *e)
{
	uint64_t off = NV_DATA_OFF + ext_page(e) * NV_PAGE;
	unsigned fi = ext_file(e);
	struct nv_list keep = {0};
	struct kvt_tier_io *io;

	while ((io = list_pop(&t->backlog))) {
		if (io->loc.file != fi || io->loc.off != off) {
			list_add(&keep, io);
			continue;
		}
		if (rq_op(io) == RQ_INVAL) {
			e->inval = 0;
			free((struct nv_inval *)io);
			continue;
		}
		if (rq_op(io) == RQ_WRITE)
			e->written = 0; /* a slot is written once: this write never started */
		io->tier_priv[0] |= RQ_DETACHED;
		e->inflight--;
		finish_early(t, io, -ECANCELED);
	}
	t->backlog = keep;
}

/*
 * Makes the invalidation of one freed extent durable now (loop thread, blocking): cancels
 * what is queued on it, waits for what is on the device, then zeroes its first page
 * synchronously (and fdatasyncs with KVT_TIER_F_FSYNC).  0, or -errno when the record
 * may still be found at recovery (the pages are quarantined).
 */
static int settle_ext(struct kvt_tier *t, uint64_t ek)
{
	bool old = t->defer_user;
	struct nv_ext *e;
	int r = 0;

	t->defer_user = true;
	while ((e = map_get(&t->map, ek)) && e->state == EXT_FREEING) {
		cancel_queued(t, e);
		if (!e->inflight && !e->inval)
			break;
		wait_some(t);
	}
	t->defer_user = old;
	if (t->deferred.head || t->done_now.head)
		efd_signal(t); /* held callbacks: the event loop must come back */
	if (!e)
		return 0; /* invalidated and released meanwhile */
	if (e->state == EXT_QUARANTINE)
		return -EIO;
	if (e->state != EXT_FREEING)
		return 0;
	if (e->written) {
		unsigned fi = ext_file(e);
		uint64_t page = ext_page(e);

		r = inval_sync(t, fi, page);
		if (r >= 0 && (t->flags & KVT_TIER_F_FSYNC)) {
			r = hook(t, KVT_TIER_OP_FSYNC, NV_DATA_OFF + page * NV_PAGE, NV_PAGE);
			if (r >= 0 && fdatasync(t->files[fi].fd) < 0)
				r = -errno;
		}
		if (r < 0) {
			t->st.write_errors++;
			quarantine_freeing(t, e);
			nv_log(t, LOG_ERR,
			       "file %u: invalidating record at page %llu failed: %s; %u pages "
			       "withheld",
			       fi, (unsigned long long)page, strerror(-r), e->npages);
			return r;
		}
	}
	nv_release(t, e);
	return 0;
}

static int nvme_settle(struct kvt_tier *t, uint64_t key_lo, uint64_t key_hi)
{
	uint32_t kh = key_hash(key_lo, key_hi);
	uint64_t *ks = NULL;
	size_t n = 0, cap = 0;
	int ret = 0;

	if (!t || t->magic != NV_TIER_MAGIC)
		return -EINVAL;
	if (!t->scanned || (!t->fq_lost && !t->fcount[kh % NV_FBUCKETS]))
		return 0;
	/* Collect first: settling changes the list. */
	for (size_t i = 0; i < (t->fq_lost ? t->map.cap : t->nfq); i++) {
		struct nv_ext *e = t->fq_lost ? &t->map.slot[i] : map_get(&t->map, t->fq[i]);

		if (!e || !e->key || e->state != EXT_FREEING || e->kh != kh)
			continue;
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 8;
			uint64_t *nk = realloc(ks, nc * sizeof(*nk));

			if (!nk) {
				free(ks);
				return -ENOMEM;
			}
			ks = nk;
			cap = nc;
		}
		ks[n++] = e->key;
	}
	for (size_t j = 0; j < n; j++) {
		int r = settle_ext(t, ks[j]);

		if (r < 0 && !ret)
			ret = r;
	}
	free(ks);
	return ret;
}

static int nvme_submit(struct kvt_tier *t)
{
	if (!t || t->magic != NV_TIER_MAGIC)
		return -EINVAL;
	if (t->uring)
		uring_flush(t);
	return 0;
}

static int nvme_event_fd(struct kvt_tier *t)
{
	return t && t->magic == NV_TIER_MAGIC ? t->efd : -EINVAL;
}

static int nvme_recover(struct kvt_tier *t, kvt_tier_recover_cb cb, void *arg)
{
	int kept = 0;

	if (!t || t->magic != NV_TIER_MAGIC || !cb)
		return -EINVAL;
	if (!t->scanned) {
		if (t->scan_started)
			pthread_join(t->scan_th, NULL);
		else
			t->scan_res = scan_all(t);
		t->scan_started = false;
		t->scanned = true;
		scan_merge(t);
		if (t->scan_res < 0)
			return t->scan_res;
	}
	if (!t->recs_pending)
		return 0;
	t->recs_pending = false;
	for (size_t i = 0; i < t->nrecs; i++) {
		struct nv_rec *rec = &t->recs[i];
		struct nv_ext *e = map_get(&t->map, ext_key(rec->file, rec->page));
		struct kvt_tier_loc loc = {
		    .off = NV_DATA_OFF + rec->page * NV_PAGE,
		    .len = rec->npages * NV_PAGE,
		    .file = rec->file,
		};
		int r;

		if (!e || e->state != EXT_RECOVERED)
			continue;
		e->state = EXT_VALID;
		r = cb(arg, &rec->hdr, &loc);
		if (r < 0) {
			drop_recovered(t, i + 1);
			return r;
		}
		if (r > 0)
			nvme_free(t, &loc);
		else
			kept++;
	}
	free(t->recs);
	t->recs = NULL;
	t->nrecs = 0;
	return kept;
}

static int nvme_flush(struct kvt_tier *t)
{
	int ret = 0;

	if (!t || t->magic != NV_TIER_MAGIC)
		return -EINVAL;
	for (unsigned i = 0; i < t->nfiles; i++) {
		int r = hook(t, KVT_TIER_OP_FSYNC, 0, 0);

		if (r >= 0 && fdatasync(t->files[i].fd) < 0)
			r = -errno;
		if (r < 0 && !ret)
			ret = r;
	}
	return ret;
}

static void nvme_stats(struct kvt_tier *t, struct kvt_tier_stats *st)
{
	if (!t || t->magic != NV_TIER_MAGIC || !st)
		return;
	*st = t->st;
	/* Slots being invalidated count as free already: an eviction loop that watches
	 * used_bytes must see each free() at once, or it would empty the tier. */
	st->used_bytes = 0 - t->freeing_pages * (uint64_t)NV_PAGE;
	for (unsigned i = 0; i < t->nfiles && t->scanned; i++)
		st->used_bytes +=
		    (t->files[i].alloc.npages - t->files[i].alloc.nfree) * (uint64_t)NV_PAGE;
	st->io_flags = (t->uring ? KVT_TIER_ST_URING : 0) |
		       (t->arena_reg ? KVT_TIER_ST_FIXED_BUFS : 0) |
		       (t->fixed_files ? KVT_TIER_ST_FIXED_FILES : 0);
	st->io_flags |= KVT_TIER_ST_DIRECT;
	for (unsigned i = 0; i < t->nfiles; i++)
		if (!t->files[i].direct)
			st->io_flags &= ~KVT_TIER_ST_DIRECT;
}

static void *nvme_buf_alloc(struct kvt_tier *t, uint32_t len)
{
	uint64_t n;
	void *p = NULL;

	if (!t || t->magic != NV_TIER_MAGIC || !len)
		return NULL;
	n = round_up(len, NV_PAGE) / NV_PAGE;
	if (t->arena) {
		int64_t pg = nv_alloc_get(&t->arena_alloc, n);

		if (pg >= 0) {
			t->arena_len[pg] = (uint32_t)n;
			return t->arena + (uint64_t)pg * NV_PAGE;
		}
	}
	if (posix_memalign(&p, NV_PAGE, n * NV_PAGE))
		return NULL;
	return p;
}

static void nvme_buf_free(struct kvt_tier *t, void *buf)
{
	char *p = buf;

	if (!t || !buf)
		return;
	if (t->arena && p >= t->arena && p < t->arena + t->arena_bytes) {
		uint64_t pg = (uint64_t)(p - t->arena) / NV_PAGE;

		if (nv_alloc_put(&t->arena_alloc, pg, t->arena_len[pg]) < 0)
			abort(); /* double free of an I/O buffer: memory the kernel may DMA into */
		t->arena_len[pg] = 0;
		return;
	}
	free(buf);
}

static int nvme_recovering(struct kvt_tier *t, uint64_t *done, uint64_t *total)
{
	if (!t || t->magic != NV_TIER_MAGIC)
		return -EINVAL;
	if (done)
		*done = __atomic_load_n(&t->scan_done, __ATOMIC_RELAXED);
	if (total)
		*total = t->scan_total;
	return t->scan_started && __atomic_load_n(&t->scan_running, __ATOMIC_ACQUIRE);
}

static int nvme_recover_start(struct kvt_tier *t)
{
	int r;

	if (!t || t->magic != NV_TIER_MAGIC)
		return -EINVAL;
	if (t->scanned || t->scan_started)
		return t->scan_started;
	if (!t->scan_total)
		return 0; /* nothing to read: recover() is immediate */
	t->scan_running = 1;
	r = pthread_create(&t->scan_th, NULL, scan_main, t);
	if (r) {
		t->scan_running = 0;
		return -r;
	}
	t->scan_started = true;
	return 1;
}

const struct kvt_tier_ops kvt_tier_nvme_ops = {
    .name = "nvme",
    .open = nvme_open,
    .close = nvme_close,
    .alloc = nvme_alloc,
    .free = nvme_free,
    .write = nvme_write,
    .read = nvme_read,
    .stats = nvme_stats,
    .event_fd = nvme_event_fd,
    .complete = nvme_complete,
    .submit = nvme_submit,
    .recover = nvme_recover,
    .flush = nvme_flush,
    .buf_alloc = nvme_buf_alloc,
    .buf_free = nvme_buf_free,
    .settle = nvme_settle,
    .recovering = nvme_recovering,
    .recover_start = nvme_recover_start,
};
