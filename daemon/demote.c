/* SPDX-License-Identifier: MIT */
/*
 * demote.c - moving a block down from the host tier to NVMe.
 *
 * The NVMe class's take (tierlist.h): a block leaving the host tier with no other copy is
 * written down, unless nvme.admit_on_second_use refuses it.  The arena bytes go through the
 * NVMe codec chain into a record buffer from the tier, the record is sealed (CRC-32C) and
 * written to a slot; the host pages are freed at once, and the record stays in memory until
 * its write completes, so that a get in between is served from it (promote.c).  Between the
 * watermarks, with codec threads, the encoding runs on a worker while the host copy stays
 * readable.  kvtd_flush writes an NVMe copy of every host block that has none.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_auto.h"
#include "kvt_record.h"
#include "place_int.h"
#include "log.h"

/* A demotion in flight of a block that goes: its slot is freed now, not when the write
 * ends, so that settle() can find it (and cancel the write if it has not started). */
void kvtd_demote_forget(struct kvtd *d, struct kvtd_blk *b)
{
	struct pend_io *p = b->pend;

	if (b->io != KVTD_IO_DEMOTE || !p || p->loc_freed)
		return;
	d->nvme_ops->free(d->nvme, &p->io.loc);
	p->loc_freed = 1;
}

/* ---------------------------------------------------------------------------------------
 * Demotion: host → NVMe
 */
static void demote_done(struct kvt_tier_io *io)
{
	struct pend_io *p = io->arg;
	struct kvtd *d = p->d;
	uint32_t i = p->blk;
	struct kvtd_blk *b = i < d->ix.used ? B(d, i) : NULL;
	bool alive = b && b->gen == p->gen && b->pend == p;

	if (io->res < 0) {
		if (io->res != -ECANCELED)
			d->m.nvme_write_errors_total++;
		if (!p->loc_freed)
			d->nvme_ops->free(d->nvme, &io->loc);
		if (alive) {
			b->pend = NULL;
			b->io = KVTD_IO_NONE;
			/* Nowhere else to keep it: a cache drops what it cannot store. */
			if (!b->on_host && !b->leases)
				kvtd_blk_drop(d, i);
			else
				kvtd_blk_lru_update(d, i);
		}
	} else if (!alive || b->state == KVTD_BLK_ZOMBIE) {
		/* Deleted or evicted meanwhile: the record must not outlive the block. */
		if (!p->loc_freed)
			d->nvme_ops->free(d->nvme, &io->loc);
		if (alive) {
			b->pend = NULL;
			b->io = KVTD_IO_NONE;
			if (!b->leases)
				kvtd_blk_drop(d, i);
		}
	} else {
		b->pend = NULL;
		b->io = KVTD_IO_NONE;
		b->nvme_off = io->loc.off;
		b->nvme_len = io->loc.len;
		b->nvme_file = io->loc.file;
		b->nvme_flags = io->loc.flags;
		kvtd_set_nvme(d, b, true);
		kvtd_fix_tier(b);
		d->m.demotions_total++;
		d->m.demote_bytes_total += io->len;
		d->tier[KVTD_TIER_NVME].bytes_written += io->len;
		kvtd_blk_lru_update(d, i);
	}
	d->nvme_ops->buf_free(d->nvme, p->buf);
	free(p);
}

/*
 * A geometry whose block is exactly len bytes, for storing a block raw when its layout's
 * geometry does not describe it (a partial block, or a layout never noted): head_dim 2, so
 * layers x heads x tokens = len / 8, split within the codec's limits.  False when len is no
 * multiple of 8 or cannot be split (such a block cannot be demoted and is dropped).
 */
bool kvtd_raw_geom_for(uint32_t len, struct kvt_codec_geom *g)
{
	uint32_t m, t, h;

	if (!len || len % 8)
		return false;
	m = len / 8;
	for (t = 4096; m % t; t--)
		;
	m /= t;
	for (h = 1024; m % h; h--)
		;
	m /= h;
	*g = (struct kvt_codec_geom){.n_layers = m,
				     .n_kv_heads = h,
				     .head_dim = 2,
				     .block_tokens = t,
				     .dtype = KVT_DTYPE_FP16};
	return kvt_geom_check(g) == 0 && kvt_geom_block_bytes(g) == len;
}

/*
 * A demotion's record buffer and codec for block i.  KV codecs need the geometry and a whole
 * block; anything else is stored raw, as is everything when raw is set.  Returns NULL with
 * *err set: -ENOMEM, or -EINVAL for a block no geometry describes (see raw_geom_for).
 */
static struct pend_io *demote_prepare(struct kvtd *d, uint32_t i, bool keep_host, bool raw,
				      int *err)
{
	struct kvtd_blk *b = B(d, i);
	const struct kvt_codec_geom *g = kvtd_geom_of(d, i);
	const struct kvt_chain *chain = kvtd_auto_nvme_chain(d, b->fingerprint);
	struct pend_io *p;

	struct kvt_codec_geom rg;

	if (!chain)
		chain = d->nvme_chain;
	if (b->hchain) {
		/* Its stored form is already a record (compressed host tier): kept as it is, in
		 * a record of that chain, and installed as it is by a promotion (promote.c). */
		g = NULL;
		chain = d->raw_chain;
	} else if (!g || kvt_geom_block_bytes(g) != b->len) {
		if (!kvtd_raw_geom_for(b->len, &rg)) {
			*err = -EINVAL;
			return NULL;
		}
		g = &rg;
		chain = d->raw_chain;
	}
	/* a chain that cannot take this geometry (a dictionary of another model): raw */
	if (raw || (chain != d->raw_chain && g && kvt_chain_usable(chain, g)))
		chain = d->raw_chain;
	*err = -ENOMEM;
	p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->cap = KVT_RECORD_HDR_SIZE + (g ? kvt_chain_max_encoded_size(chain, g) : 0) + b->len;
	p->buf = d->nvme_ops->buf_alloc(d->nvme, (uint32_t)p->cap);
	if (!p->buf) {
		free(p);
		return NULL;
	}
	p->d = d;
	p->blk = i;
	p->gen = b->gen;
	p->kind = KVTD_IO_DEMOTE;
	p->keep_host = keep_host;
	p->chain = chain;
	p->hchain = b->hchain;
	if (g)
		p->g = *g;
	p->g.first_token = b->first_token;
	p->src = kvtd_host_at(d, kvtd_tenant_of(d, b), b->off);
	p->len = b->len;
	return p;
}

void kvtd_pend_free(struct kvtd *d, struct pend_io *p)
{
	d->nvme_ops->buf_free(d->nvme, p->buf);
	free(p);
}

/* The encoding itself: loop thread or codec worker.  Sets p->n and maybe p->chain. */
static void demote_encode(struct pend_io *p)
{
	uint8_t *out = (uint8_t *)p->buf + KVT_RECORD_HDR_SIZE;
	size_t room = p->cap - KVT_RECORD_HDR_SIZE;
	const struct kvt_chain *raw = p->d->raw_chain;

	if (p->hchain) {
		memcpy(out, p->src, p->len);
		p->n = p->len;
		return;
	}
	p->n = kvt_chain_encode(p->chain, &p->g, p->src, p->len, out, room);
	if (p->n < 0 && p->chain != raw) {
		/* A chain that refuses this block: the block is stored raw instead. */
		p->chain = raw;
		p->n = kvt_chain_encode(raw, &p->g, p->src, p->len, out, room);
	}
}

/*
 * Seals the encoded record, finds it a slot and writes it; frees the host copy unless
 * p->keep_host.  Returns 0, or -errno with p freed and block i unchanged.
 */
static int demote_write(struct kvtd *d, uint32_t i, struct pend_io *p)
{
	struct kvtd_blk *b = B(d, i);
	struct tenant *t = kvtd_tenant_of(d, b);
	struct kvt_record_hdr *h = p->buf;
	int ret;

	if (p->n < 0) {
		ret = (int)p->n;
		goto fail;
	}
	memset(h, 0, sizeof(*h));
	h->magic = KVT_RECORD_MAGIC;
	h->version = KVT_RECORD_VERSION;
	h->hdr_size = KVT_RECORD_HDR_SIZE;
	h->key_lo = b->key_lo;
	h->key_hi = b->key_hi;
	h->fingerprint = b->fingerprint;
	h->seq = ++d->seq;
	h->raw_len = p->hchain ? b->raw_len : b->len;
	h->payload_len = (uint32_t)p->n;
	h->chain_id = p->hchain ? p->hchain : kvt_chain_id(p->chain);
	h->tenant = t->uid;
	kvt_record_seal(h, h + 1);
	p->io.len = (uint32_t)(sizeof(*h) + (size_t)p->n);
	p->io.buf = p->buf;
	p->io.done = demote_done;
	p->io.arg = p;
	ret = kvtd_nvme_alloc(d, p->io.len, &p->io.loc);
	if (ret < 0)
		goto fail;
	/* nvme_alloc may have evicted: is block i still what we encoded? */
	if (B(d, i)->gen != p->gen || !B(d, i)->on_host) {
		d->nvme_ops->free(d->nvme, &p->io.loc);
		ret = -ESTALE;
		goto fail;
	}
	ret = d->nvme_ops->write(d->nvme, &p->io);
	if (ret < 0) {
		d->nvme_ops->free(d->nvme, &p->io.loc);
		d->m.nvme_write_errors_total++;
		goto fail;
	}
	b->pend = p;
	b->io = KVTD_IO_DEMOTE;
	if (!p->keep_host)
		kvtd_host_free_copy(d, i, true);
	kvtd_blk_lru_update(d, i);
	return 0;
fail:
	kvtd_pend_free(d, p);
	return ret;
}

/*
 * Writes block i to NVMe, encoding on this thread.  keep_host: a flush (the host copy
 * stays); otherwise the host pages are freed as soon as the record is built.  raw: stored
 * with the raw chain whatever nvme.codec says.  Returns 0 or -errno (nothing changed).
 */
int kvtd_demote(struct kvtd *d, uint32_t i, bool keep_host, bool raw)
{
	int err;
	struct pend_io *p = demote_prepare(d, i, keep_host, raw, &err);

	if (!p)
		return err;
	demote_encode(p);
	return demote_write(d, i, p);
}

static void encode_run(struct kvtd_cjob *j)
{
	demote_encode(PEND_OF_JOB(j));
}

/* Back on the loop thread: write the record if block i is still the one encoded. */
static void encode_done(struct kvtd *d, struct kvtd_cjob *j)
{
	struct pend_io *p = PEND_OF_JOB(j);
	uint32_t i = p->blk;
	struct kvtd_blk *b = i < d->ix.used ? B(d, i) : NULL;
	int ret;

	d->host_encoding -= p->encoding;
	if (!b || b->gen != p->gen || b->pend != p) {
		kvtd_pend_free(d, p); /* dropped meanwhile: the pages we read may be anyone's now */
		return;
	}
	b->pend = NULL;
	b->io = KVTD_IO_NONE;
	if (b->state != KVTD_BLK_READY || !b->on_host) {
		kvtd_pend_free(d, p);
		if (b->state == KVTD_BLK_ZOMBIE && !b->leases)
			kvtd_blk_drop(d, i);
		else
			kvtd_blk_lru_update(d, i);
		return;
	}
	/* Read or pinned meanwhile: the NVMe copy is still worth writing, the host copy stays. */
	p->keep_host = b->leases || b->pins;
	d->m.codec_offloop_encodes_total++;
	ret = demote_write(d, i, p);
	if (ret < 0) {
		if (ret != -ESTALE)
			d->m.demote_failures_total++;
		if (B(d, i)->gen == p->gen)
			kvtd_blk_lru_update(d, i);
	}
}

/*
 * Background demotion between the watermarks: the encoding runs on a codec worker while the
 * host copy stays readable; the record is written, and the host pages freed, when it is done.
 * Returns 0 when started, or -errno (nothing changed).
 */
static int demote_async(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);
	int err;
	struct pend_io *p = demote_prepare(d, i, false, false, &err);

	if (!p)
		return err;
	p->job.run = encode_run;
	p->job.done = encode_done;
	p->encoding = kvtd_pages(b->len) << KVTD_PAGE_SHIFT;
	d->host_encoding += p->encoding;
	b->pend = p;
	b->io = KVTD_IO_ENCODE;
	kvtd_blk_lru_update(d, i); /* off the host LRU: eviction skips it meanwhile */
	kvtd_cpool_submit(d, &p->job);
	return 0;
}

int kvtd_nvme_take(struct kvtd *d, uint32_t i, bool bg)
{
	struct kvtd_blk *b = B(d, i);
	int ret;

	if (d->cfg.nvme_admit_second && !b->hits) {
		d->m.nvme_admission_rejects_total++;
		return -EACCES;
	}
	if (bg && d->cpool) {
		ret = demote_async(d, i);
	} else if (d->cpool) {
		/* Space is needed now and the chain has threads because it is slow: this one is
		 * stored raw (lossless, a copy) rather than stall every client while it encodes. */
		ret = kvtd_demote(d, i, false, true);
		if (!ret)
			d->m.demotions_raw_fallback_total++;
	} else {
		ret = kvtd_demote(d, i, false, false);
	}
	if (ret < 0 && ret != -ESTALE)
		d->m.demote_failures_total++;
	return ret;
}

int kvtd_flush(struct kvtd *d)
{
	int n = 0;

	if (!d->nvme)
		return -ENODEV;
	if (d->nvme_recovering)
		return -EAGAIN;
	for (uint32_t i = 0; i < d->ix.used; i++) {
		struct kvtd_blk *b = B(d, i);

		if (b->state == KVTD_BLK_READY && b->on_host && !b->on_nvme &&
		    b->io == KVTD_IO_NONE && kvtd_demote(d, i, true, false) == 0)
			n++;
	}
	return n;
}
