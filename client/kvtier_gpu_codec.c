/* SPDX-License-Identifier: MIT */
/*
 * libkvtier's device API over the compressed host tier (README "Compressed host tier"): a
 * block stored as a record of a bq chain crosses PCIe as that record and is coded on the GPU
 * (gpu/kvt_gpu_bq.h).
 *
 *   get: record (arena) --H2D--> staging slot --bq decode--> raw slot --D2D--> engine pages
 *   put: engine pages --D2D--> raw slot --bq encode--> record slot --D2H--> arena (reserved
 *        with the record's length, which the GPU tells first through a flag)
 *
 * The coding runs on a stream of its own (d->q_stream) beside the call's, which carries the
 * records over PCIe: a get's round k decodes while round k+1's records go up; a put's round
 * k+1 encodes while round k's records are reserved and go down.  Events order the two where
 * they share slots (a round reuses the slots of the round before the last); measured on an
 * H100, the put went from 0.72 x to 0.97 x pinned cudaMemcpy when it stopped waiting for each
 * round's encode with the bus idle.
 *
 * The decoder writes a block contiguous, as the chain's record describes it: where the engine
 * keeps each block in one buffer of its own (n_layers = n_kv = pages_per_block = 1) that is
 * the page itself, decoded (and encoded) in place; otherwise the pages are scattered, and one
 * device-to-device copy (HBM speed, the engine's layout) follows the decode (precedes the
 * encode).  Token-major pages (kvt_dev_pages.page_heads): the put's copy is gpu/'s transposing
 * gather (kvt_gpu_xpose) into the raw slot, so the encoder codes the layout's order; the get
 * decodes straight into the pages (kvt_gpu_bq_decode_paged, which writes token-major), or,
 * for pages not 4-byte aligned, into the raw slot and scatters it.
 * Staging holds 2 rounds of HOST_CHUNK blocks, as the host path keeps 2 rounds in flight
 * (kvtier_gpu_copy.c): block k uses slot k % (2 * HOST_CHUNK).  A layout whose blocks the
 * kernels cannot take (kvt_gpu_bq_new refuses the geometry), or a build without CUDA, decodes
 * on the CPU into a pinned slot that is copied up as a raw block, and stores its puts raw.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "codec_bq.h"
#include "kvt_gpu_bq.h"
#include "kvtier_gpu_internal.h"
#include "kvtier_internal.h"

#define SLOTS DEV_SLOTS

/* The batch arrays in q_arr (device) and q_harr (pinned mirror), by slot index. */
#define A_SRC	  0u	      /* u64 device pointers */
#define A_DST	  SLOTS	      /* u64 device pointers */
#define A_U32	  (2 * SLOTS) /* then u32 arrays: */
#define A_LEN	  0u	      /* record lengths */
#define A_BAD	  SLOTS	      /* decoder's flags */
#define A_FT	  (2 * SLOTS) /* first tokens */
#define ARR_BYTES (2 * SLOTS * 8 + 3 * SLOTS * 4)

static uint32_t *u32s(uint64_t *arr)
{
	return (uint32_t *)(arr + A_U32);
}

void kvtc_devq_free(struct kvt_dev *d)
{
	if (d->q_stream)
		kvt_gpu_stream_sync(d->q_stream);
	for (unsigned p = 0; p < 2; p++)
		kvt_gpu_event_destroy(d->q_ev_s[p]);
	kvt_gpu_event_destroy(d->q_ev_h);
	kvt_gpu_stream_destroy(d->q_stream);
	for (unsigned k = 0; k < DEV_LAYOUTS; k++)
		kvt_gpu_bq_free(d->bq[k]);
	kvt_gpu_dev_free(d->q_raw);
	kvt_gpu_dev_free(d->q_enc);
	kvt_gpu_dev_free(d->q_scratch);
	kvt_gpu_dev_free(d->q_arr);
	kvt_gpu_host_free(d->q_harr);
	kvt_gpu_host_free(d->q_hraw);
	kvt_gpu_dev_free(d->q_pages);
	kvt_gpu_host_free(d->q_hpages);
}

/* The GPU plan of layout for chain (a bq chain), made once per chain; NULL if none fits. */
static struct kvt_gpu_bq *plan_of(struct kvt_dev *d, int layout, const struct kvt_chain *chain)
{
	struct kvt_codec_geom g;
	struct kvt_bq_params p;

	if (!chain || kvt_bq_chain_is(chain) <= 0)
		return NULL;
	if (d->bq_id[layout] != kvt_chain_id(chain)) {
		kvt_gpu_bq_free(d->bq[layout]);
		d->bq[layout] = NULL;
		d->bq_tried[layout] = false;
		d->bq_id[layout] = kvt_chain_id(chain);
	}
	if (!d->bq_tried[layout]) {
		d->bq_tried[layout] = true;
		kvtc_geom(&d->layouts[layout], 0, &g);
		if (kvt_bq_chain_params(chain, &g, &p) < 0 ||
		    kvt_gpu_bq_new(&g, &p, &d->bq[layout]) < 0)
			d->bq[layout] = NULL;
	}
	return d->bq[layout];
}

/* Staging for blocks of bb bytes and records of bound bytes (plan: NULL for the CPU path). */
static int staging(struct kvt_dev *d, uint32_t bb, size_t bound, const struct kvt_gpu_bq *plan)
{
	size_t sb = plan ? kvt_gpu_bq_scratch_bytes(plan, HOST_CHUNK) : 0;
	int ret = 0;

	bound = (bound + 255) & ~(size_t)255; /* every slot aligned for the kernels' loads */
	if (!d->q_harr && (ret = kvt_gpu_host_alloc(ARR_BYTES, (void **)&d->q_harr)) < 0)
		return ret;
	if (!d->q_arr && (ret = kvt_gpu_dev_alloc(d->device, ARR_BYTES, (void **)&d->q_arr)) < 0)
		return ret;
	if (d->q_bb < bb || d->q_bound < bound) {
		kvt_gpu_dev_free(d->q_raw);
		kvt_gpu_dev_free(d->q_enc);
		kvt_gpu_host_free(d->q_hraw);
		d->q_raw = d->q_enc = d->q_hraw = NULL;
		d->q_bb = d->q_bound = 0;
		if ((ret = kvt_gpu_dev_alloc(d->device, SLOTS * (size_t)bb, (void **)&d->q_raw)) <
			0 ||
		    (ret = kvt_gpu_dev_alloc(d->device, SLOTS * bound, (void **)&d->q_enc)) < 0 ||
		    (ret = kvt_gpu_host_alloc(SLOTS * (size_t)bb, (void **)&d->q_hraw)) < 0)
			return ret;
		d->q_bb = bb;
		d->q_bound = bound;
	}
	if (plan && !d->q_stream) {
		void *ev[3] = {NULL};

		for (unsigned i = 0; i < 3 && ret >= 0; i++)
			ret = kvt_gpu_event_create(&ev[i]);
		if (ret >= 0)
			ret = kvt_gpu_stream_create(&d->q_stream);
		if (ret < 0) {
			for (unsigned i = 0; i < 3; i++)
				kvt_gpu_event_destroy(ev[i]);
			return ret;
		}
		d->q_ev_s[0] = ev[0];
		d->q_ev_s[1] = ev[1];
		d->q_ev_h = ev[2];
	}
	if (d->q_scratch_len < sb) {
		kvt_gpu_dev_free(d->q_scratch);
		d->q_scratch = NULL;
		d->q_scratch_len = 0;
		if ((ret = kvt_gpu_dev_alloc(d->device, sb, &d->q_scratch)) < 0)
			return ret;
		d->q_scratch_len = sb;
	}
	return 0;
}

const struct kvt_chain *kvtc_devq_put_plan(struct kvt_dev *d, int layout, uint32_t bb,
					   struct kvt_gpu_bq **plan)
{
	const struct kvt_chain *chain = kvtc_put_chain(d->c, d->host_id[layout], bb);

	*plan = plan_of(d, layout, chain);
	if (!*plan || staging(d, bb, kvt_gpu_bq_record_bound(*plan), *plan) < 0)
		return NULL;
	return chain;
}

/* Uploads the batch arrays of indices [s0, s0 + m) (what is set of them). */
static int upload_arrays(struct kvt_dev *d, uint32_t s0, uint32_t m, void *stream)
{
	uint64_t h = (uint64_t)(uintptr_t)d->q_harr, g = (uint64_t)(uintptr_t)d->q_arr;
	uint64_t u = A_U32 * 8;
	struct kvt_gpu_seg segs[4] = {
	    {h + (A_SRC + s0) * 8, g + (A_SRC + s0) * 8, m * 8ull},
	    {h + (A_DST + s0) * 8, g + (A_DST + s0) * 8, m * 8ull},
	    {h + u + (A_LEN + s0) * 4, g + u + (A_LEN + s0) * 4, m * 4ull},
	    {h + u + (A_FT + s0) * 4, g + u + (A_FT + s0) * 4, m * 4ull},
	};

	return kvt_gpu_copy(d->eng, segs, 4, KVT_GPU_H2D, KVT_GPU_DMA, stream);
}

/* Downloads the u32 array at off (A_LEN or A_BAD), indices [s0, s0 + m). */
static int download_u32(struct kvt_dev *d, uint32_t off, uint32_t s0, uint32_t m, void *stream)
{
	uint64_t u = A_U32 * 8 + (off + s0) * 4ull;
	struct kvt_gpu_seg seg = {(uint64_t)(uintptr_t)d->q_arr + u,
				  (uint64_t)(uintptr_t)d->q_harr + u, m * 4ull};

	return kvt_gpu_copy(d->eng, &seg, 1, KVT_GPU_D2H, KVT_GPU_DMA, stream);
}

/* Block k's engine buffer when the pages are one contiguous block each, in the layout's order
 * (the kernels then code in place), else 0. */
static uint64_t direct_addr(const struct kvt_dev *d, const struct kvt_gpu_paged_layout *pl,
			    const uint32_t *ids, size_t k)
{
	uint64_t a;

	if (d->xp_heads || pl->n_layers != 1 || pl->n_kv != 1 || pl->pages_per_block != 1)
		return 0;
	a = pl->layer_base[0] + (uint64_t)ids[k] * pl->block_stride;
	return a % 16 ? 0 : a;
}

/* Queues the copies between the pages and the raw slots of the m blocks whose engine ids are
 * at d->ids and slot addresses at d->addrs (put: pages -> slots). */
static int slots_pages(struct kvt_dev *d, const struct kvt_gpu_paged_layout *pl, size_t m, bool put,
		       void *stream)
{
	long ns;
	int ret;

	if (d->xp_heads) /* token-major pages: the slots hold the layout's order */
		return kvtc_dev_xpose(d, pl, d->addrs, m, put, stream);
	ns = kvt_gpu_paged_segments(pl, d->ids, d->addrs, m, put ? KVT_GPU_D2H : KVT_GPU_H2D,
				    d->segs, d->segcap);
	if (ns < 0)
		return (int)ns;
	ret = kvt_gpu_copy(d->eng, d->segs, (size_t)ns, KVT_GPU_D2D, KVT_GPU_AUTO, stream);
	return ret < 0 ? ret : 0;
}

/* The round at k0's parity: which of the two sets of slots it uses. */
static unsigned parity(size_t k0)
{
	return (unsigned)(k0 / HOST_CHUNK) & 1u;
}

/* Queues the codec stream's fence: d->flag[1] reaches the returned value once the work
 * queued on it so far is done. */
static int qfence(struct kvt_dev *d, uint64_t *v)
{
	int ret = kvt_gpu_signal(d->eng, d->q_stream, &d->flag[1], d->q_seq + 1);

	if (ret < 0)
		return ret;
	*v = ++d->q_seq;
	return 0;
}

int kvtc_devq_put_encode(struct kvt_dev *d, int layout, const struct kvt_gpu_paged_layout *pl,
			 const uint32_t *ids, size_t k0, size_t k1, uint32_t bb, void *stream)
{
	struct kvt_gpu_bq *plan;
	const struct kvt_chain *chain = kvtc_devq_put_plan(d, layout, bb, &plan);
	uint32_t ppb = pl->pages_per_block, s0 = (uint32_t)(k0 % SLOTS), m = 0, nc = 0, *a;
	uint64_t raw = (uint64_t)(uintptr_t)d->q_raw, enc = (uint64_t)(uintptr_t)d->q_enc;
	unsigned p = parity(k0);
	void *cs = d->q_stream;
	int ret = 0;

	d->q_m[p] = 0;
	d->q_v[p] = 0;
	if (!chain)
		return 0; /* stored raw */
	if (k0 == 0) {
		/* the call's first round: the codec stream reads the pages after the work the
		 * caller queued before the call */
		for (unsigned i = 0; i < 2 && ret >= 0; i++)
			ret = kvt_gpu_event_record(d->q_ev_s[i], stream);
	}
	/* its slots were last copied down by the round before the last */
	if (ret >= 0)
		ret = kvt_gpu_stream_wait(cs, d->q_ev_s[p]);
	if (ret < 0)
		return ret;
	a = u32s(d->q_harr);
	for (size_t k = k0; k < k1; k++) {
		uint64_t slot = k % SLOTS;

		if (d->blk[k].where != B_NONE)
			continue;
		d->blk[k].qi = s0 + m;
		if (direct_addr(d, pl, ids, k)) {
			d->q_harr[A_SRC + s0 + m] = direct_addr(d, pl, ids, k);
		} else {
			memcpy(&d->ids[nc * ppb], &ids[k * ppb], ppb * sizeof(*ids));
			d->addrs[nc++] = raw + slot * bb;
			d->q_harr[A_SRC + s0 + m] = raw + slot * bb;
		}
		d->q_harr[A_DST + s0 + m] = enc + slot * d->q_bound;
		a[A_FT + s0 + m] = 0; /* kvt_dev_put does not know positions: 0, as the daemon */
		a[A_LEN + s0 + m] = 0;
		m++;
	}
	if (!m)
		return 0;
	ret = nc ? slots_pages(d, pl, nc, true, cs) : 0;
	if (ret >= 0)
		ret = upload_arrays(d, s0, m, cs);
	if (ret >= 0)
		ret = kvt_gpu_bq_encode(plan, (const void *const *)(d->q_arr + A_SRC + s0),
					u32s(d->q_arr) + A_FT + s0, m,
					(void *const *)(d->q_arr + A_DST + s0),
					u32s(d->q_arr) + A_LEN + s0, d->q_scratch, cs);
	if (ret >= 0)
		ret = download_u32(d, A_LEN, s0, m, cs);
	if (ret >= 0)
		ret = qfence(d, &d->q_v[p]);
	if (ret < 0) {
		kvt_gpu_stream_sync(cs); /* nothing of it is used: the blocks go raw */
		return ret;
	}
	d->q_chain[p] = chain;
	d->q_m[p] = m;
	return 0;
}

int kvtc_devq_put_store(struct kvt_dev *d, int layout, const struct kvt_key *keys, size_t k0,
			size_t k1, uint32_t bb, void *stream)
{
	struct kvt_gpu_seg segs[HOST_CHUNK];
	unsigned p = parity(k0);
	const struct kvt_chain *chain = d->q_chain[p];
	uint64_t enc = (uint64_t)(uintptr_t)d->q_enc;
	size_t bound = d->q_bound, ns = 0;
	uint32_t *a = u32s(d->q_harr);
	uint64_t t;
	int ret;

	if (!d->q_m[p])
		return 0;
	d->q_m[p] = 0;
	ret = kvtc_dev_flag_wait(d, &d->flag[1], d->q_v[p]);
	if (ret < 0)
		return ret; /* the lengths decide the reservations: stored raw */
	t = kvtc_dev_clock();
	for (size_t k = k0; k < k1; k++) {
		struct dev_blk *b = &d->blk[k];
		uint32_t len;

		if (b->where != B_NONE)
			continue;
		len = a[A_LEN + b->qi];
		if (len < KVT_CHAIN_HDR_SIZE || len > bound)
			continue; /* stored raw by the caller's loop */
		ret = kvtc_reserve(d->c, d->host_id[layout], &keys[k], len, kvt_chain_id(chain), bb,
				   &b->u.r);
		if (ret == -EEXIST) {
			b->where = B_DONE;
			continue;
		}
		if (ret < 0)
			continue; /* the raw path meets the same answer, or stores it raw */
		if (kvtc_dev_host_ready(d, b->u.r.data, len) < 0) {
			kvt_put_abort(d->c, &b->u.r);
			continue;
		}
		b->addr = (uint64_t)(uintptr_t)b->u.r.data;
		b->where = B_HOSTE;
		segs[ns++] = (struct kvt_gpu_seg){enc + (k % SLOTS) * bound, b->addr, len};
		d->gpu_encodes++;
	}
	d->daemon_ns += kvtc_dev_clock() - t;
	if (!ns)
		return 0;
	t = kvtc_dev_clock();
	ret = kvt_gpu_copy(d->eng, segs, ns, KVT_GPU_D2H, KVT_GPU_AUTO, stream);
	d->queue_ns += kvtc_dev_clock() - t;
	if (ret < 0) {
		/* Nothing was copied down: committing would store whatever the arena held. */
		kvt_gpu_stream_sync(stream);
		for (size_t k = k0; k < k1; k++) {
			if (d->blk[k].where == B_HOSTE) {
				kvt_put_abort(d->c, &d->blk[k].u.r);
				d->blk[k].where = B_NONE;
			}
		}
		return ret;
	}
	return 0;
}

int kvtc_devq_round_end(struct kvt_dev *d, size_t k0, void *stream)
{
	return d->q_stream ? kvt_gpu_event_record(d->q_ev_s[parity(k0)], stream) : 0;
}

int kvtc_devq_wait(struct kvt_dev *d, size_t k0)
{
	unsigned p = parity(k0);

	if (!d->q_stream || !d->q_v[p])
		return 0;
	return kvtc_dev_flag_wait(d, &d->flag[1], d->q_v[p]);
}

int kvtc_devq_get_prepare(struct kvt_dev *d, int layout, size_t k, uint32_t bb)
{
	struct dev_blk *b = &d->blk[k];
	const struct kvt_chain *chain = kvtc_chain_get(d->c, b->u.l.chain_id);
	struct kvt_gpu_bq *plan = plan_of(d, layout, chain);
	uint8_t *slot;
	ssize_t got;
	int ret;

	if (b->u.l.raw_len != bb)
		return -ENOENT; /* stored with another geometry */
	if (plan) {
		ret = staging(d, bb, kvt_gpu_bq_record_bound(plan), plan);
		if (ret < 0)
			return ret;
		if (b->u.l.len > d->q_bound)
			return -EBADMSG;
		ret = kvtc_dev_host_ready(d, b->u.l.data, b->u.l.len);
		if (ret < 0)
			return ret;
		b->addr = (uint64_t)(uintptr_t)b->u.l.data;
		b->where = B_HOSTE;
		return 0;
	}
	/* No GPU decoder for it: decoded here into a pinned slot, copied up as a raw block. */
	ret = staging(d, bb, d->q_bound ? d->q_bound : 1, NULL);
	if (ret < 0)
		return ret;
	slot = d->q_hraw + (k % SLOTS) * (size_t)bb;
	got = kvt_lease_decode(d->c, &b->u.l, slot, bb);
	if (got != (ssize_t)bb)
		return got < 0 ? (int)got : -EBADMSG;
	b->addr = (uint64_t)(uintptr_t)slot;
	b->where = B_HOST;
	d->cpu_decodes++;
	return 0;
}

int kvtc_devq_get_round(struct kvt_dev *d, int layout, const struct kvt_gpu_paged_layout *pl,
			const uint32_t *ids, size_t k0, size_t k1, uint32_t bb, void *stream)
{
	struct kvt_gpu_seg segs[HOST_CHUNK];
	struct kvt_gpu_bq *plan = d->bq[layout];
	uint32_t ppb = pl->pages_per_block, s0 = (uint32_t)(k0 % SLOTS), m = 0, nc = 0, *a;
	uint64_t raw = (uint64_t)(uintptr_t)d->q_raw, enc = (uint64_t)(uintptr_t)d->q_enc;
	bool paged = d->xp_heads && d->q_per; /* token-major pages: the paged decoder */
	unsigned p = parity(k0);
	void *cs = d->q_stream;
	int ret;

	d->q_v[p] = 0;
	for (size_t k = k0; k < k1; k++) {
		if (d->blk[k].where != B_HOSTE)
			continue;
		m++;
		/* the paged decoder stores 4 bytes at a time */
		for (uint32_t l = 0; paged && l < pl->n_layers; l++)
			for (uint32_t j = 0; paged && j < ppb; j++)
				paged = !((pl->layer_base[l] | pl->kv_stride |
					   (uint64_t)ids[k * ppb + j] * pl->block_stride) &
					  3);
	}
	if (!m)
		return 0;
	if (!plan || !cs)
		return -EINVAL;
	a = u32s(d->q_harr);
	m = 0;
	for (size_t k = k0; k < k1; k++) {
		struct dev_blk *b = &d->blk[k];
		uint64_t slot = k % SLOTS;

		if (b->where != B_HOSTE)
			continue;
		b->qi = s0 + m;
		d->q_harr[A_SRC + s0 + m] = enc + slot * d->q_bound;
		d->q_harr[A_DST + s0 + m] = raw + slot * bb;
		if (paged) {
			/* token-major pages: decoded straight into them */
			struct kvt_gpu_xgeom x;

			if (kvt_gpu_xpose_jobs(pl, d->xp_heads, d->xp_row, &ids[k * ppb],
					       &d->q_harr[A_DST + s0 + m], 1, &x, d->xjobs,
					       d->xjcap) != (long)d->q_per)
				return -EINVAL;
			for (size_t j = 0; j < d->q_per; j++)
				d->q_hpages[(s0 + m) * d->q_per + j] = d->xjobs[j].page;
		} else if (direct_addr(d, pl, ids, k)) {
			d->q_harr[A_DST + s0 + m] = direct_addr(d, pl, ids, k);
		} else {
			memcpy(&d->ids[nc * ppb], &ids[k * ppb], ppb * sizeof(*ids));
			d->addrs[nc++] = raw + slot * bb;
			d->q_harr[A_DST + s0 + m] = raw + slot * bb;
		}
		a[A_LEN + s0 + m] = (uint32_t)b->u.l.len;
		a[A_BAD + s0 + m] = 1; /* until the decoder says otherwise */
		a[A_FT + s0 + m] = 0;
		segs[m] = (struct kvt_gpu_seg){b->addr, enc + slot * d->q_bound, b->u.l.len};
		m++;
	}
	/* the records up on the call's stream; decoded on the codec stream once they are there,
	 * while the next round's go up */
	ret = kvt_gpu_copy(d->eng, segs, m, KVT_GPU_H2D, KVT_GPU_AUTO, stream);
	if (ret >= 0)
		ret = kvt_gpu_event_record(d->q_ev_h, stream);
	if (ret >= 0)
		ret = kvt_gpu_stream_wait(cs, d->q_ev_h);
	if (ret >= 0)
		ret = upload_arrays(d, s0, m, cs);
	if (ret >= 0 && paged) {
		uint64_t off = (uint64_t)s0 * d->q_per * 8;
		struct kvt_gpu_seg seg = {(uint64_t)(uintptr_t)d->q_hpages + off,
					  (uint64_t)(uintptr_t)d->q_pages + off,
					  (uint64_t)m * d->q_per * 8};

		ret = kvt_gpu_copy(d->eng, &seg, 1, KVT_GPU_H2D, KVT_GPU_DMA, cs);
		if (ret >= 0)
			ret = kvt_gpu_bq_decode_paged(
			    plan, (const void *const *)(d->q_arr + A_SRC + s0),
			    u32s(d->q_arr) + A_LEN + s0, m,
			    (void *const *)(d->q_pages + (size_t)s0 * d->q_per), ppb,
			    u32s(d->q_arr) + A_BAD + s0, cs);
	} else if (ret >= 0) {
		ret = kvt_gpu_bq_decode(
		    plan, (const void *const *)(d->q_arr + A_SRC + s0), u32s(d->q_arr) + A_LEN + s0,
		    m, (void *const *)(d->q_arr + A_DST + s0), u32s(d->q_arr) + A_BAD + s0, cs);
	}
	if (ret >= 0 && nc)
		ret = slots_pages(d, pl, nc, false, cs);
	if (ret >= 0)
		ret = download_u32(d, A_BAD, s0, m, cs);
	if (ret >= 0)
		ret = qfence(d, &d->q_v[p]);
	if (ret < 0) {
		kvt_gpu_stream_sync(cs); /* the caller gives the round up */
		return ret;
	}
	d->gpu_decodes += m;
	return 0;
}

int kvtc_devq_get_check(struct kvt_dev *d, size_t k)
{
	return u32s(d->q_harr)[A_BAD + d->blk[k].qi] ? -EBADMSG : 0;
}

int kvtc_devq_xp_ready(struct kvt_dev *d, const struct kvt_gpu_paged_layout *pl, uint32_t bb)
{
	size_t per = (size_t)pl->n_layers * pl->n_kv * pl->pages_per_block;
	int ret = staging(d, bb, d->q_bound ? d->q_bound : 1, NULL);

	if (ret < 0)
		return ret;
	if (d->q_per < per) {
		kvt_gpu_dev_free(d->q_pages);
		kvt_gpu_host_free(d->q_hpages);
		d->q_pages = d->q_hpages = NULL;
		d->q_per = 0;
		if ((ret = kvt_gpu_dev_alloc(d->device, SLOTS * per * 8, (void **)&d->q_pages)) <
			0 ||
		    (ret = kvt_gpu_host_alloc(SLOTS * per * 8, (void **)&d->q_hpages)) < 0)
			return ret;
	}
	d->q_per = per; /* the arrays may be larger: a slot's stride is this call's */
	return 0;
}
