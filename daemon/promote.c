/* SPDX-License-Identifier: MIT */
/*
 * promote.c - bringing a block up to the host tier, and the gets that wait for it.
 *
 * A get of a block with no host copy walks the tier list down from the host and asks the
 * nearest tier holding the block to bring it up (kvtd_promote; the GPU pool's copy is
 * brought down first by the caller, kvtd_gpu_to_host).  From NVMe (the NVMe class's
 * promote): a record still being written is installed from memory; otherwise the record is
 * read, checked by the tier (CRC) and here (key, fingerprint, length, tenant), decoded into
 * a fresh arena extent (on a codec worker for non-raw chains) and the waiting gets are
 * completed.  A record that fails a check is a miss: the block is forgotten and the failure
 * counted, never served.  Prefetches queue promotions by priority and use at most a quarter
 * of the NVMe queue depth.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec_auto.h"
#include "kvt_record.h"
#include "place_int.h"
#include "log.h"

/* The gets waiting for block i are answered (err 0: it is on the host): ops.c does it, from
 * the readiness list (waiters.c). */
void kvtd_wake_all(struct kvtd *d, uint32_t i, int err)
{
	uint32_t w = B(d, i)->waiters;

	B(d, i)->waiters = KVTD_NIL;
	kvtd_waiters_ready(d, w, i, err);
}

/* ---------------------------------------------------------------------------------------
 * Promotion: NVMe → host
 */

static void decode_run(struct kvtd_cjob *j);
static void decode_done(struct kvtd *d, struct kvtd_cjob *j);

/* The decoded copy becomes block i's host copy. */
static void install_finish(struct kvtd *d, uint32_t i, uint64_t off, size_t rec_bytes)
{
	struct kvtd_blk *b = B(d, i);

	b->off = off;
	kvtd_set_host(d, b, true);
	kvtd_fix_tier(b);
	d->m.promotions_total++;
	d->m.promote_bytes_total += b->len;
	d->tier[KVTD_TIER_NVME].hits++;
	d->tier[KVTD_TIER_NVME].bytes_read += rec_bytes;
}

/* A block stored encoded (compressed host tier, demote.c): its record of the host chain comes
 * back as it is; the clients decode it. */
static int install_as_is(struct kvtd *d, uint32_t i, const struct kvt_record_hdr *h,
			 const uint8_t *payload, size_t n)
{
	struct kvtd_blk *b = B(d, i);
	struct tenant *t = kvtd_tenant_of(d, b);
	int64_t off;

	if (h->chain_id != b->hchain || h->payload_len != b->len || h->raw_len != b->raw_len)
		return -EBADMSG;
	off = kvtd_host_alloc(d, t, b->len);
	if (off < 0)
		return (int)off;
	memcpy(kvtd_host_at(d, t, (uint64_t)off), payload, b->len);
	install_finish(d, i, (uint64_t)off, n);
	return 0;
}

/* How much of a record install() must check itself. */
enum rec_check {
	REC_OURS,     /* our own, still in memory (its crc may be salted by the tier meanwhile) */
	REC_CHECKED,  /* read, the tier checked its CRC */
	REC_UNCHECKED /* read with KVT_TIER_IO_NOVERIFY: its CRC is checked here */
};

/* True when the payload pl (n bytes) is the raw chain's (id 0) frame of a len-byte block
 * (codecs/CODECS.md "Record": the checks kvt_chain_decode makes before its copy), so that
 * the block is the len bytes after the frame. */
static bool raw_frame_ok(const struct kvt_chain *chain, const uint8_t *pl, uint32_t n, uint32_t len)
{
	uint32_t id, raw, enc;

	if (kvt_chain_id(chain) != 0 || n != KVT_CHAIN_HDR_SIZE + (uint64_t)len ||
	    kvt_chain_peek(pl, n, &id, NULL, &raw) < 0 || id != 0)
		return false;
	memcpy(&enc, pl + 12, sizeof(enc));
	return raw == len && enc == len && pl[25] == 1; /* encoded length, one stage */
}

/*
 * Decodes the record at rec (n bytes) into a new host extent of block i.  A raw record read
 * unchecked is checked while it is copied (kvt_crc32c_copy: one pass over it).  With p and
 * codec workers, a non-raw record is decoded on a worker: returns 1, and p's job finishes
 * the promotion.  Returns 0, -EBADMSG for a record that is not block i's, or -errno.
 */
static int install(struct kvtd *d, uint32_t i, const uint8_t *rec, size_t n, enum rec_check chk,
		   struct pend_io *p)
{
	struct kvtd_blk *b = B(d, i);
	struct tenant *t = kvtd_tenant_of(d, b);
	struct kvt_record_hdr h;
	const struct kvt_chain *chain;
	int64_t off;
	ssize_t got;

	if (n < sizeof(h))
		return -EBADMSG;
	memcpy(&h, rec, sizeof(h));
	if (chk == REC_UNCHECKED && kvt_record_check_hdr(&h, n - sizeof(h)) < 0)
		return -EBADMSG;
	if (h.key_lo != b->key_lo || h.key_hi != b->key_hi || h.fingerprint != b->fingerprint ||
	    h.tenant != t->uid || h.payload_len > n - sizeof(h))
		return -EBADMSG;
	if (b->hchain) {
		/* kept encoded: checked whole, then copied as it is */
		if (chk == REC_UNCHECKED &&
		    kvt_record_check(&h, rec + sizeof(h), n - sizeof(h)) < 0)
			return -EBADMSG;
		return install_as_is(d, i, &h, rec + sizeof(h), n);
	}
	if (h.raw_len != b->len)
		return -EBADMSG;
	if (h.chain_id == kvt_chain_id(d->nvme_chain))
		chain = d->nvme_chain;
	else if (h.chain_id == 0)
		chain = d->raw_chain;
	else if (!(chain = kvtd_auto_chain_by_id(d, h.chain_id)))
		return -EBADMSG; /* made by a chain this configuration does not know */
	if (chk == REC_UNCHECKED && !raw_frame_ok(chain, rec + sizeof(h), h.payload_len, b->len)) {
		/* not a raw block: checked whole before it is decoded */
		if (kvt_record_check(&h, rec + sizeof(h), n - sizeof(h)) < 0)
			return -EBADMSG;
		chk = REC_CHECKED;
	}
	off = kvtd_host_alloc(d, t, b->len);
	if (off < 0)
		return (int)off;
	if (chk == REC_UNCHECKED) {
		/* The raw chain's decode is its frame's checks and a copy: here the copy also
		 * checks the CRC. */
		const uint8_t *pl = rec + sizeof(h);
		uint32_t crc = kvt_crc32c(kvt_record_hdr_crc(&h), pl, KVT_CHAIN_HDR_SIZE);

		if (kvt_crc32c_copy(crc, kvtd_host_at(d, t, (uint64_t)off), pl + KVT_CHAIN_HDR_SIZE,
				    b->len) != h.crc) {
			kvtd_host_unalloc(d, t, (uint64_t)off, b->len);
			return -EBADMSG;
		}
		install_finish(d, i, (uint64_t)off, n);
		return 0;
	}
	if (p && d->cpool && chain != d->raw_chain) {
		p->chain = chain;
		p->src = rec + sizeof(h);
		p->enc_len = h.payload_len;
		p->t = t;
		p->dst_off = (uint64_t)off;
		p->dst = kvtd_host_at(d, t, (uint64_t)off);
		p->len = b->len;
		p->n = (ssize_t)n; /* the record's bytes, until the decoder answers */
		p->job.run = decode_run;
		p->job.done = decode_done;
		kvtd_cpool_submit(d, &p->job);
		return 1;
	}
	/* host_alloc may have evicted and demoted; block i itself is pinned by its I/O state. */
	got = kvt_chain_decode(chain, rec + sizeof(h), h.payload_len,
			       kvtd_host_at(d, t, (uint64_t)off), b->len, NULL);
	if (got != (ssize_t)b->len) {
		kvtd_host_unalloc(d, t, (uint64_t)off, b->len);
		return -EBADMSG;
	}
	install_finish(d, i, (uint64_t)off, n);
	return 0;
}

/* Ends a promotion of p's block: err 0 (the host copy is in) or why not; from_read: err
 * is the tier's answer to the read (else ours: the record's check, host space). */
static void promote_finish(struct kvtd *d, struct pend_io *p, int err, bool from_read)
{
	uint32_t i = p->blk;
	struct kvtd_blk *b = B(d, i);

	/* Nobody asked yet: the prefetch is useful if a get comes before eviction. */
	if (!err && p->prefetch && b->waiters == KVTD_NIL)
		b->prefetched = 1;
	b->pend = NULL;
	b->io = KVTD_IO_NONE;
	if (err == -ECANCELED) {
		kvtd_wake_all(d, i, -ENOENT); /* the block was deleted: its slot went with it */
	} else if (err == -EBADMSG || err == -ENODATA) {
		d->m.nvme_corrupt_total++;
		if (!from_read)
			d->nvme_install_bad++; /* the tier counted its own */
		kvtd_log(KVTD_LOG_WARN,
			 "NVMe record of block %016llx%016llx failed its check: "
			 "dropped, served as a miss",
			 (unsigned long long)b->key_hi, (unsigned long long)b->key_lo);
		kvtd_blk_drop(d, i); /* wakes the waiters with a miss */
	} else if (err < 0) {
		/* host space (-ENOSPC) or memory is no read error */
		if (from_read)
			d->m.nvme_read_errors_total++;
		if (from_read && err == -EIO)
			kvtd_blk_drop(d, i); /* an unreadable copy is no copy */
		else
			kvtd_wake_all(d, i, err);
	} else {
		kvtd_blk_lru_update(d, i);
		kvtd_wake_all(d, i, 0);
	}
	if (B(d, i)->gen == p->gen && b->state == KVTD_BLK_ZOMBIE && !b->leases)
		kvtd_blk_drop(d, i);
}

static void decode_run(struct kvtd_cjob *j)
{
	struct pend_io *p = PEND_OF_JOB(j);
	ssize_t got = kvt_chain_decode(p->chain, p->src, p->enc_len, p->dst, p->len, NULL);

	/* p->n keeps the record's size for the statistics; a failure is any other answer. */
	if (got != (ssize_t)p->len)
		p->n = -EBADMSG;
}

static void decode_done(struct kvtd *d, struct kvtd_cjob *j)
{
	struct pend_io *p = PEND_OF_JOB(j);
	uint32_t i = p->blk;
	struct kvtd_blk *b = i < d->ix.used ? B(d, i) : NULL;

	if (!b || b->gen != p->gen || b->pend != p) {
		/* Dropped meanwhile: the extent was never the block's. */
		kvtd_host_unalloc(d, p->t, p->dst_off, p->len);
	} else if (p->n < 0) {
		kvtd_host_unalloc(d, p->t, p->dst_off, p->len);
		promote_finish(d, p, -EBADMSG, false);
	} else {
		d->m.codec_offloop_decodes_total++;
		install_finish(d, i, p->dst_off, (size_t)p->n);
		promote_finish(d, p, 0, false);
	}
	kvtd_pend_free(d, p);
}

static void promote_done(struct kvt_tier_io *io)
{
	struct pend_io *p = io->arg;
	struct kvtd *d = p->d;
	uint32_t i = p->blk;
	struct kvtd_blk *b = i < d->ix.used ? B(d, i) : NULL;
	bool alive = b && b->gen == p->gen && b->pend == p;
	int err = io->res < 0 ? io->res : 0;
	bool from_read = err < 0;

	if (p->prefetch) {
		d->pf_inflight--;
		d->pf_bytes -= p->io.len;
	}
	if (alive) {
		/* install() checks key, layout and length, and the CRC when the tier did not. */
		if (!err)
			err = install(
			    d, i, p->buf, (size_t)io->res,
			    io->flags & KVT_TIER_IO_NOVERIFY ? REC_UNCHECKED : REC_CHECKED, p);
		if (err == 1)
			return; /* decoding on a codec worker: decode_done() finishes */
		promote_finish(d, p, err, from_read);
	}
	kvtd_pend_free(d, p);
}

static int add_waiter(struct kvtd *d, uint32_t i, uint32_t client_id, uint64_t user_data)
{
	uint32_t w = kvtd_waiter_new(d, B(d, i)->waiters, client_id, user_data);

	if (w == KVTD_NIL)
		return -ENOMEM;
	B(d, i)->waiters = w;
	return 0;
}

/* Starts reading block i's record for a promotion. Returns 0 or -errno (nothing started). */
static int start_read(struct kvtd *d, uint32_t i, bool prefetch)
{
	struct kvtd_blk *b = B(d, i);
	struct pend_io *p;
	int ret;

	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->buf = d->nvme_ops->buf_alloc(d->nvme, b->nvme_len);
	if (!p->buf) {
		free(p);
		return -ENOMEM;
	}
	p->d = d;
	p->blk = i;
	p->gen = b->gen;
	p->kind = KVTD_IO_PROMOTE;
	p->prefetch = prefetch;
	p->io.loc.off = b->nvme_off;
	p->io.loc.len = b->nvme_len;
	p->io.loc.file = b->nvme_file;
	p->io.loc.flags = b->nvme_flags;
	p->io.buf = p->buf;
	p->io.len = b->nvme_len;
	p->io.done = promote_done;
	p->io.arg = p;
	/* Held back until the loop's pass ends (kvtd_nvme_submit): the reads of records that
	 * follow each other on disk go to the device as one. */
	p->io.flags = KVT_TIER_IO_MORE;
	/* Raw records are checked while install() copies them, not by the tier before (a
	 * record that turns out not raw is checked whole there). */
	if (kvt_chain_id(d->nvme_chain) == 0 && !b->hchain)
		p->io.flags |= KVT_TIER_IO_NOVERIFY;
	ret = d->nvme_ops->read(d->nvme, &p->io);
	if (ret < 0) {
		d->nvme_ops->buf_free(d->nvme, p->buf);
		free(p);
		d->m.nvme_read_errors_total++;
		return ret == -ENODATA ? -ENOENT : ret;
	}
	b->pend = p;
	b->io = KVTD_IO_PROMOTE;
	if (prefetch) {
		d->pf_inflight++;
		d->pf_bytes += p->io.len;
	}
	kvtd_blk_lru_update(d, i);
	return 0;
}

int kvtd_nvme_promote(struct kvtd *d, uint32_t client_id, uint64_t user_data, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);
	int ret;

	if (b->on_host)
		return 0;
	if (b->io == KVTD_IO_DEMOTE) {
		/* Still in memory: the record being written is the block. */
		struct pend_io *p = b->pend;
		ret = install(d, i, p->buf, p->io.len, REC_OURS, NULL);
		if (ret == -EBADMSG) {
			kvtd_blk_drop(d, i);
			return -ENOENT;
		}
		return ret;
	}
	if (b->io == KVTD_IO_PROMOTE) {
		if (((struct pend_io *)b->pend)->prefetch)
			d->m.prefetch_late_total++;
		return add_waiter(d, i, client_id, user_data) < 0 ? -ENOMEM : 1;
	}
	if (!b->on_nvme || !d->nvme)
		return -ENOENT;
	ret = start_read(d, i, false);
	if (ret < 0)
		return ret;
	if (add_waiter(d, i, client_id, user_data) < 0)
		return -ENOMEM; /* the read goes on; the block lands on the host unasked */
	return 1;
}

int kvtd_promote(struct kvtd *d, uint32_t client_id, uint64_t user_data, uint32_t i)
{
	const struct kvtd_tier *host = d->tier_at[KVTD_TIER_HOST];

	if (B(d, i)->on_host)
		return 0;
	/* Up from the nearest tier below the host that holds the block. */
	for (uint32_t k = host->level + 1; k < d->ntiers; k++) {
		const struct kvtd_tier *x = &d->tiers[k];

		if (x->t && x->cls->promote && x->cls->has(d, i))
			return x->cls->promote(d, client_id, user_data, i);
	}
	return -ENOENT;
}

static uint64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

void kvtd_prefetch_request(struct kvtd *d, uint32_t i, unsigned prio, uint64_t deadline_us)
{
	struct kvtd_blk *b = B(d, i);
	struct pf_ring *r;

	d->m.prefetch_requests_total++;
	if (b->on_host || b->io != KVTD_IO_NONE) {
		/* Predicted and already there: keep it there, ahead of what nobody predicted. */
		d->m.prefetch_resident_total++;
		b->atime = kvtd_now_ms();
		kvtd_blk_lru_update(d, i);
		return;
	}
	if (!d->nvme || !b->on_nvme) {
		d->m.prefetch_dropped_total++;
		return;
	}
	r = &d->pf[prio < KVTD_PF_LEVELS ? prio : KVTD_PF_LEVELS - 1];
	if (!r->items) {
		r->items = calloc(KVTD_PF_CAP, sizeof(*r->items));
		if (!r->items) {
			d->m.prefetch_dropped_total++;
			return;
		}
	}
	if (r->tail - r->head == KVTD_PF_CAP) {
		d->m.prefetch_dropped_total++;
		return;
	}
	r->items[r->tail % KVTD_PF_CAP] =
	    (struct pf_item){i, b->gen, deadline_us ? mono_us() + deadline_us : 0};
	r->tail++;
}

#define PREFETCH_PROTECT_MS 2

static bool prefetch_room(struct kvtd *d, const struct kvtd_blk *b)
{
	uint64_t need = kvtd_pages(b->len) << KVTD_PAGE_SHIFT;
	uint32_t tail = d->ix.lru_tail[KVTD_TIER_HOST];

	if (d->host_used + need <= (uint64_t)(d->cfg.host_high * (double)d->cfg.host_capacity))
		return true;
	return tail != KVTD_NIL && B(d, tail)->atime + PREFETCH_PROTECT_MS < kvtd_now_ms();
}

/*
 * Prefetches in flight: a quarter of the queue depth, so that demand reads never queue
 * behind them.  The tier's depth counts requests at the device, and the reads of records
 * that follow each other on disk go as one of up to 8 MiB: a quarter of the depth is that
 * many such requests (PF_SLOT_BYTES each), and PF_SLOT_RECS records each.  Counted in
 * records only, a prefix of small blocks (256 KiB) was read 2 MiB at a time, one request
 * at the device.  The pread engine merges nothing: its depth counts records.
 */
#define PF_SLOT_BYTES (8ull << 20)
#define PF_SLOT_RECS  16u

static bool prefetch_slot(const struct kvtd *d)
{
	uint32_t q = d->cfg.nvme_queue_depth / 4 ? d->cfg.nvme_queue_depth / 4 : 1;

	if (!d->cfg.nvme_io_uring)
		return d->pf_inflight < q; /* the pread engine: the depth counts records */
	return d->pf_inflight < q * PF_SLOT_RECS && d->pf_bytes < q * PF_SLOT_BYTES;
}

void kvtd_prefetch_pump(struct kvtd *d)
{
	uint64_t now = 0;

	if (!d->nvme)
		return;
	for (int lvl = KVTD_PF_LEVELS - 1; lvl >= 0 && prefetch_slot(d); lvl--) {
		struct pf_ring *r = &d->pf[lvl];

		while (r->head != r->tail && prefetch_slot(d)) {
			struct pf_item it = r->items[r->head % KVTD_PF_CAP];
			struct kvtd_blk *b;

			r->head++;
			if (it.blk >= d->ix.used)
				continue;
			b = B(d, it.blk);
			if (b->gen != it.gen || b->state != KVTD_BLK_READY || b->on_host ||
			    b->io != KVTD_IO_NONE || !b->on_nvme)
				continue;
			/* A prefetch may take free room or cold blocks, never a block read in the
			 * last 2 ms: the current decode step's, or predicted for the next one. */
			if (!prefetch_room(d, b)) {
				d->m.prefetch_dropped_total++;
				continue;
			}
			if (it.deadline_us) {
				if (!now)
					now = mono_us();
				if (now > it.deadline_us) {
					d->m.prefetch_dropped_total++;
					continue;
				}
			}
			if (start_read(d, it.blk, true) == 0)
				d->m.prefetch_issued_total++;
		}
	}
}

void kvtd_prefetch_used(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);

	if (b->prefetched) {
		d->m.prefetch_useful_total++;
		b->prefetched = 0;
	}
}
