/* SPDX-License-Identifier: MIT */
/*
 * nvme_recover.c - the NVMe tier's recovery: open() (or a background thread with
 * KVT_TIER_F_BG_RECOVER, started by recover_start()) scans each slot file up to its high-water
 * mark in 8 MiB windows read ahead on a reader thread, verifies every record, counts torn
 * and corrupt ones, and keeps per key only the highest seq (older copies are invalidated);
 * recover() hands the survivors to the daemon in ascending seq order, and records nobody
 * claimed are freed.  Format: proto/RECORD.md.
 */
#define _GNU_SOURCE
#include "nvme_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

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
			r = nv_pio_full(rd->f->fd, rd->buf[k % SCAN_BUFS], len, off, false);
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
		r = nv_pio_full(f->fd, *big, reclen, NV_DATA_OFF + abs, false);
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
int nv_inval_sync(struct kvt_tier *t, unsigned fi, uint64_t page)
{
	struct nv_file *f = &t->files[fi];
	uint64_t off = NV_DATA_OFF + page * NV_PAGE;
	int r = hook(t, KVT_TIER_OP_WRITE, off, NV_PAGE);

	if (r >= 0)
		r = nv_pio_full(f->fd, t->zero_page, NV_PAGE, off, true);
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
			if (nv_inval_sync(t, r->file, r->page) == 0)
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
		struct nv_ext *e = nv_map_add(&t->map, ext_key(t->recs[i].file, t->recs[i].page));

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
int nv_scan_all(struct kvt_tier *t)
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

	t->scan_res = nv_scan_all(t);
	/* release: pairs with the acquire in nvme_recovering(); recover() joins anyway */
	__atomic_store_n(&t->scan_running, 0, __ATOMIC_RELEASE);
	nv_efd_signal(t);
	return NULL;
}

/* The scan's counts join the tier's (loop thread, after the scan). */
void nv_scan_merge(struct kvt_tier *t)
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

/* Records recovered but never claimed through recover() are freed (and invalidated), so
 * space accounting and a later scan agree with what the daemon knows. */
void nv_drop_recovered(struct kvt_tier *t, size_t from)
{
	for (size_t i = from; i < t->nrecs; i++) {
		struct nv_ext *e = nv_map_get(&t->map, ext_key(t->recs[i].file, t->recs[i].page));

		if (e && e->state == EXT_RECOVERED) {
			e->state = EXT_FREEING;
			nv_fq_add(t, e);
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
	nv_flush(t); /* the invalidations: no caller submits them later (see free()) */
}

int nvme_recover(struct kvt_tier *t, kvt_tier_recover_cb cb, void *arg)
{
	int kept = 0;

	if (!t || t->magic != NV_TIER_MAGIC || !cb)
		return -EINVAL;
	if (!t->scanned) {
		if (t->scan_started)
			pthread_join(t->scan_th, NULL);
		else
			t->scan_res = nv_scan_all(t);
		t->scan_started = false;
		t->scanned = true;
		nv_scan_merge(t);
		if (t->scan_res < 0)
			return t->scan_res;
	}
	if (!t->recs_pending)
		return 0;
	t->recs_pending = false;
	for (size_t i = 0; i < t->nrecs; i++) {
		struct nv_rec *rec = &t->recs[i];
		struct nv_ext *e = nv_map_get(&t->map, ext_key(rec->file, rec->page));
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
			nv_drop_recovered(t, i + 1);
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

int nvme_recovering(struct kvt_tier *t, uint64_t *done, uint64_t *total)
{
	if (!t || t->magic != NV_TIER_MAGIC)
		return -EINVAL;
	if (done)
		*done = __atomic_load_n(&t->scan_done, __ATOMIC_RELAXED);
	if (total)
		*total = t->scan_total;
	return t->scan_started && __atomic_load_n(&t->scan_running, __ATOMIC_ACQUIRE);
}

int nvme_recover_start(struct kvt_tier *t)
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
