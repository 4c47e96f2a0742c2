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
 *
 * Files: this one holds the ops table (at the bottom) and the slot store: open/close,
 * alloc/free, the read/write entry points, the extent map and the freeing list, stats and the
 * I/O buffer arena.  The other parts (request life, slot files and superblock, recovery, the
 * two engines, verification) are listed in nvme_internal.h.
 */
#define _GNU_SOURCE
#include "nvme_internal.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <syslog.h>
#include <unistd.h>

static void nvme_close(struct kvt_tier *t);

struct nv_ext *nv_map_get(struct nv_map *m, uint64_t key)
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
struct nv_ext *nv_map_add(struct nv_map *m, uint64_t key)
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

void nv_map_del(struct nv_map *m, struct nv_ext *e)
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

/* ---- the freeing list: extents in EXT_FREEING, by record key hash ---- */

void nv_fq_add(struct kvt_tier *t, struct nv_ext *e)
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

void nv_fq_del(struct kvt_tier *t, struct nv_ext *e)
{
	uint32_t i = e->fqi;

	if (i == UINT32_MAX)
		return;
	t->fcount[e->kh % NV_FBUCKETS]--;
	e->fqi = UINT32_MAX;
	if (i != --t->nfq) {
		struct nv_ext *m = nv_map_get(&t->map, t->fq[t->nfq]);

		t->fq[i] = t->fq[t->nfq];
		if (m)
			m->fqi = i;
	}
}

/* A freeing extent whose invalidation failed: its pages, which may still hold a valid
 * record, are withheld for good (never reused). */
void nv_quarantine_freeing(struct kvt_tier *t, struct nv_ext *e)
{
	nv_fq_del(t, e);
	e->state = EXT_QUARANTINE;
	t->freeing--;
	t->freeing_pages -= e->npages;
	t->st.quarantined_bytes += (uint64_t)e->npages * NV_PAGE;
}

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
		r = nv_file_open(t, i, conf->paths[i], share);
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
		r = nv_uring_engine.setup(t);
		if (r < 0)
			nv_log(t, LOG_WARNING,
			       "io_uring unavailable (%s%s), using %u pread/pwrite workers",
			       strerror(-r),
			       r == -ENOMEM ? "; RLIMIT_MEMLOCK too low? raise LimitMEMLOCK=" : "",
			       t->qd < NV_MAX_WORKERS ? t->qd : NV_MAX_WORKERS);
	}
	if (r < 0) {
		r = nv_pread_engine.setup(t);
		if (r < 0)
			goto fail;
		t->eng = &nv_pread_engine;
	} else {
		t->eng = &nv_uring_engine;
	}
	if (!(t->flags & KVT_TIER_F_VERIFY_INLINE))
		nv_verifiers_start(t, conf->verify_threads);
	for (unsigned i = 0; i < t->nfiles; i++)
		t->st.capacity_bytes += t->files[i].data_bytes;
	t->st.files = t->nfiles;
	if (!(t->flags & KVT_TIER_F_BG_RECOVER)) {
		r = nv_scan_all(t);
		nv_scan_merge(t);
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

		nv_flush(t);
		if (!t->done_now.head && !t->deferred.head)
			poll(&pfd, 1, 100);
		nvme_complete(t);
	}
	if (t->vpool)
		nv_verifiers_stop(t);
	if (t->eng)
		t->eng->stop(t);
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
	t->magic = 0;
	free(t);
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
		nv_drop_recovered(t, 0);
	}
	n = round_up(len, NV_PAGE) / NV_PAGE;
	for (int tries = 0; tries < 2 && page < 0; tries++) {
		if (tries)
			nv_drain_freeing(t);
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
		r = nv_sb_write(t, f);
		if (r < 0) {
			f->hwm = old;
			nv_alloc_put(&f->alloc, (uint64_t)page, n);
			t->st.write_errors++;
			return r;
		}
	}
	e = nv_map_add(&t->map, ext_key(fi, (uint64_t)page));
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
	e = nv_map_get(&t->map, ext_key(loc->file, (loc->off - NV_DATA_OFF) / NV_PAGE));
	if (!e || (uint64_t)e->npages * NV_PAGE != loc->len)
		return NULL;
	return e;
}

void nvme_free(struct kvt_tier *t, const struct kvt_tier_loc *loc)
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
	nv_fq_add(t, e);
	t->freeing++;
	t->freeing_pages += e->npages;
	if (!e->inflight)
		nv_free_ext(t, e);
	/* free() takes no KVT_TIER_IO_MORE: its invalidation goes to the device now.  Held
	 * back, it kept its queue slot with nothing submitted, and at a small queue depth the
	 * reads queued behind it waited for a completion that never came. */
	nv_flush(t);
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

static int nvme_submit(struct kvt_tier *t)
{
	if (!t || t->magic != NV_TIER_MAGIC)
		return -EINVAL;
	nv_flush(t);
	return 0;
}

static int nvme_event_fd(struct kvt_tier *t)
{
	return t && t->magic == NV_TIER_MAGIC ? t->efd : -EINVAL;
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
