/* SPDX-License-Identifier: MIT */
/*
 * libkvtier's device API, put and get: a call's blocks go to (or come from) the daemon's GPU
 * pool first, device to device, and the rest through the host tier's reserve/commit or
 * lease/release, HOST_CHUNK blocks a round so that one round's copies run on the GPU while
 * the next round talks to the daemon.  A pool holding quantized blocks (gpu.codec int8/int4)
 * is written and read through gpu/'s quantization kernels.  Token-major pages (page_heads)
 * move through gpu/'s transposing kernel: straight into (out of) pool blocks, and through a
 * device slot a block (kvtier_gpu_codec.c's q_raw) on the way to (from) the host arena.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "kvtier_gpu_internal.h"
#include "kvtier_internal.h"

/* ---- put and get ------------------------------------------------------------------------- */

static int grow(struct kvt_dev *d, size_t n, const struct kvt_gpu_paged_layout *pl)
{
	size_t segs = n * pl->n_layers * pl->n_kv * pl->pages_per_block;

	if (n > d->blkcap) {
		void *p = realloc(d->blk, n * sizeof(*d->blk));
		if (!p)
			return -ENOMEM;
		d->blk = p;
		d->blkcap = n;
	}
	if (n * pl->pages_per_block > d->idcap || n > d->idcap) {
		size_t cap = n * pl->pages_per_block;
		void *a = realloc(d->ids, cap * sizeof(*d->ids));
		if (!a)
			return -ENOMEM;
		d->ids = a;
		a = realloc(d->addrs, cap * sizeof(*d->addrs));
		if (!a)
			return -ENOMEM;
		d->addrs = a;
		d->idcap = cap;
	}
	if (segs > d->segcap) {
		void *p = realloc(d->segs, segs * sizeof(*d->segs));
		if (!p)
			return -ENOMEM;
		d->segs = p;
		d->segcap = segs;
	}
	if (d->xp_heads) {
		size_t xj = (size_t)DEV_ROUND * pl->n_layers * pl->n_kv * pl->pages_per_block;

		if (xj > d->xjcap) {
			void *p = realloc(d->xjobs, xj * sizeof(*d->xjobs));
			if (!p)
				return -ENOMEM;
			d->xjobs = p;
			d->xjcap = xj;
		}
	}
	return 0;
}

int kvtc_dev_xpose(struct kvt_dev *d, const struct kvt_gpu_paged_layout *pl, const uint64_t *blk,
		   size_t m, bool put, void *stream)
{
	struct kvt_gpu_xgeom x;
	long nj =
	    kvt_gpu_xpose_jobs(pl, d->xp_heads, d->xp_row, d->ids, blk, m, &x, d->xjobs, d->xjcap);
	int ret;

	if (nj < 0)
		return (int)nj;
	ret = kvt_gpu_xpose(d->eng, &x, d->xjobs, (size_t)nj, !put, stream);
	return ret < 0 ? ret : 0;
}

/* queue_copy for token-major pages: pool blocks are gathered into (scattered from) directly;
 * host blocks through their device slot (block k: q_raw slot k % DEV_SLOTS), which the round's
 * DMA copies down (put, after the gather) or up (get, before the scatter). */
static int queue_xpose(struct kvt_dev *d, const struct kvt_gpu_paged_layout *pl,
		       const uint64_t *slot, size_t m, uint8_t where, bool put, void *stream)
{
	uint64_t bb = kvt_gpu_paged_block_bytes(pl);
	int ret;

	if (where == B_GPU)
		return kvtc_dev_xpose(d, pl, d->addrs, m, put, stream);
	for (size_t i = 0; i < m; i++)
		d->segs[i] = put ? (struct kvt_gpu_seg){slot[i], d->addrs[i], bb}
				 : (struct kvt_gpu_seg){d->addrs[i], slot[i], bb};
	if (put && (ret = kvtc_dev_xpose(d, pl, slot, m, true, stream)) < 0)
		return ret;
	ret =
	    kvt_gpu_copy(d->eng, d->segs, m, put ? KVT_GPU_D2H : KVT_GPU_H2D, KVT_GPU_AUTO, stream);
	if (ret >= 0 && !put)
		ret = kvtc_dev_xpose(d, pl, slot, m, false, stream);
	return ret < 0 ? ret : 0;
}

/*
 * Queues the copies of the blocks [from, to) whose place is `where`: pages <-> their kvtier
 * block at blk[].addr.  put: pages are the source.  Returns the blocks queued or -errno.
 */
static long queue_copy(struct kvt_dev *d, const struct kvt_gpu_paged_layout *pl,
		       const uint32_t *ids, size_t from, size_t to, uint8_t where, bool put,
		       void *stream)
{
	uint32_t ppb = pl->pages_per_block;
	uint64_t slot[DEV_ROUND];
	size_t m = 0;
	long ns;
	int ret;

	if (to - from > DEV_ROUND)
		return -EINVAL;
	for (size_t k = from; k < to; k++) {
		if (d->blk[k].where != where)
			continue;
		memcpy(&d->ids[m * ppb], &ids[k * ppb], ppb * sizeof(*ids));
		d->addrs[m] = d->blk[k].addr;
		if (d->xp_heads)
			slot[m] = (uint64_t)(uintptr_t)d->q_raw +
				  (k % DEV_SLOTS) * kvt_gpu_paged_block_bytes(pl);
		m++;
	}
	if (!m)
		return 0;
	if (d->xp_heads) {
		ret = queue_xpose(d, pl, slot, m, where, put, stream);
		return ret < 0 ? ret : (long)m;
	}
	ns = kvt_gpu_paged_segments(pl, d->ids, d->addrs, m, put ? KVT_GPU_D2H : KVT_GPU_H2D,
				    d->segs, d->segcap);
	if (ns < 0)
		return ns;
	ret = kvt_gpu_copy(d->eng, d->segs, (size_t)ns,
			   where == B_GPU ? KVT_GPU_D2D : (put ? KVT_GPU_D2H : KVT_GPU_H2D),
			   KVT_GPU_AUTO, stream);
	return ret < 0 ? ret : (long)m;
}

/*
 * The quantized format of blocks in these pages, when the pool quantizes and the pages fit
 * the kernels: returns the tokens of one page (the tile), else 0 (blocks stay raw).
 */
static unsigned page_plan(const struct kvt_dev *d, const struct kvt_layout *l,
			  const struct kvt_gpu_paged_layout *pl, uint32_t bb, struct kvt_gpu_kvq *q)
{
	uint64_t row = (uint64_t)l->n_kv_heads * l->head_dim * 2;
	unsigned gdt = l->dtype == KVT_DTYPE_FP16 ? KVT_GPU_FP16 : KVT_GPU_BF16;
	uint64_t tt;

	if (!d->bits || d->xp_heads || pl->n_kv != 2 || pl->n_layers != l->n_layers ||
	    (l->dtype != KVT_DTYPE_FP16 && l->dtype != KVT_DTYPE_BF16) || pl->page_bytes % row ||
	    pl->block_stride % 16 || pl->kv_stride % 16)
		return 0;
	for (uint32_t i = 0; i < pl->n_layers; i++) {
		if (pl->layer_base[i] % 16)
			return 0;
	}
	tt = pl->page_bytes / row;
	if (kvt_gpu_kvq_plan(d->bits, gdt, l->n_kv_heads, l->head_dim, (unsigned)tt, l->n_layers,
			     bb, q) < 0 ||
	    q->pages_per_block != pl->pages_per_block)
		return 0;
	return (unsigned)tt;
}

/* Queues the (de)quantizing copies of the B_GPUQ blocks of [from, to): pages -> pool tiles
 * (put) or back.  Returns the blocks queued or -errno. */
static long queue_quant(struct kvt_dev *d, const struct kvt_gpu_paged_layout *pl,
			const struct kvt_gpu_kvq *q, const uint32_t *ids, size_t from, size_t to,
			bool put, void *stream)
{
	uint32_t ppb = pl->pages_per_block;
	size_t per = (size_t)pl->n_layers * 2 * ppb, nj = 0, m = 0;
	int ret;

	for (size_t k = from; k < to; k++)
		m += d->blk[k].where == B_GPUQ;
	if (!m)
		return 0;
	if (d->njobs < m * per) {
		struct kvt_gpu_qjob *j = realloc(d->jobs, m * per * sizeof(*j));
		if (!j)
			return -ENOMEM;
		d->jobs = j;
		d->njobs = m * per;
	}
	for (size_t k = from; k < to; k++) {
		if (d->blk[k].where != B_GPUQ)
			continue;
		for (uint32_t l = 0; l < pl->n_layers; l++) {
			for (uint32_t kv = 0; kv < 2; kv++) {
				for (uint32_t j = 0; j < ppb; j++, nj++) {
					uint64_t page =
					    pl->layer_base[l] + kv * pl->kv_stride +
					    (uint64_t)ids[k * ppb + j] * pl->block_stride;
					uint64_t tile =
					    d->blk[k].addr + kvt_gpu_kvq_offset(q, l, kv, j);

					d->jobs[nj].src = put ? page : tile;
					d->jobs[nj].dst = put ? tile : page;
					d->jobs[nj].kind = kv ? KVT_GPU_VALUES : KVT_GPU_KEYS;
					d->jobs[nj].reserved = 0;
				}
			}
		}
	}
	ret = put ? kvt_gpu_quantize(d->eng, &q->qp, d->jobs, nj, stream)
		  : kvt_gpu_dequantize(d->eng, &q->qp, d->jobs, nj, stream);
	return ret < 0 ? ret : (long)m;
}

/* Queues a flag write after the work on stream; returns the value to wait for. */
static int fence(struct kvt_dev *d, void *stream, uint64_t *v)
{
	int ret = kvt_gpu_signal(d->eng, stream, d->flag, d->seq + 1);

	if (ret < 0)
		return ret;
	*v = ++d->seq;
	return 0;
}

/* Token-major pages (page_heads H > 1) must be exactly the layout's blocks, split by tokens:
 * returns the bytes of one head's row, or 0 when they are not. */
static uint32_t xp_row_bytes(const struct kvt_layout *l, const struct kvt_gpu_paged_layout *pl,
			     uint32_t h)
{
	uint64_t row = (uint64_t)l->head_dim * (l->dtype == KVT_DTYPE_FP8_E4M3 ? 1 : 2);

	if (h != l->n_kv_heads || pl->n_kv != 2 || pl->n_layers != l->n_layers ||
	    l->kv_order != KVT_ORDER_K_THEN_V || !row || row > UINT32_MAX ||
	    pl->page_bytes % (h * row) ||
	    pl->page_bytes / (h * row) * pl->pages_per_block != l->block_tokens)
		return 0;
	return (uint32_t)row;
}

static int check_args(struct kvt_dev *d, int layout, const struct kvt_dev_pages *p,
		      const struct kvt_key *keys, const uint32_t *ids, size_t n,
		      struct kvt_gpu_paged_layout *pl, uint32_t *bb, uint32_t *xh, uint32_t *xrow)
{
	size_t old = offsetof(struct kvt_dev_pages, page_heads);
	uint64_t b;

	if (!d || d->magic != DEV_MAGIC || !p || p->size < old || (n && (!keys || !ids)))
		return -EINVAL;
	if (layout < 0 || (unsigned)layout >= d->nlayouts)
		return -KVT_ENOLAYOUT;
	memset(pl, 0, sizeof(*pl));
	pl->size = sizeof(*pl);
	pl->n_layers = p->n_layers;
	pl->layer_base = p->layer_base;
	pl->page_bytes = p->page_bytes;
	pl->block_stride = p->block_stride;
	pl->kv_stride = p->kv_stride;
	pl->n_kv = p->n_kv;
	pl->pages_per_block = p->pages_per_block;
	b = kvt_gpu_paged_block_bytes(pl);
	if (!b || b > kvt_layout_block_bytes(&d->layouts[layout]))
		return -EINVAL;
	*bb = (uint32_t)b;
	*xh = p->size >= old + sizeof(p->page_heads) ? p->page_heads : 0;
	*xrow = 0;
	if (*xh > 1) {
		*xrow = xp_row_bytes(&d->layouts[layout], pl, *xh);
		if (!*xrow)
			return -EINVAL;
	} else {
		*xh = 0; /* one head: token-major is head-major */
	}
	return 0;
}

/* GPU tier part of a put: reserve pool blocks, copy, wait, commit.  Blocks it could not
 * place stay B_NONE for the host tier. */
static void put_gpu(struct kvt_dev *d, const struct kvt_layout *l,
		    const struct kvt_gpu_paged_layout *pl, const struct kvt_key *keys,
		    const uint32_t *ids, size_t n, uint32_t bb, void *stream)
{
	struct kvt_gpu_op_req req[DEV_ROUND];
	struct kvt_gpu_op_res res[DEV_ROUND];
	struct kvt_gpu_kvq q;
	unsigned tt = 0;
	uint64_t base;

	for (size_t k0 = 0; k0 < n; k0 += DEV_ROUND) {
		uint32_t m = (uint32_t)(n - k0 < DEV_ROUND ? n - k0 : DEV_ROUND), nc = 0;
		int ret;

		kvtc_dev_ensure_attached(d);
		if (!d->gpu_tier)
			return;
		base = (uint64_t)(uintptr_t)kvt_gpu_pool_base(d->pool);
		tt = page_plan(d, l, pl, bb, &q);
		for (uint32_t j = 0; j < m; j++)
			req[j] = (struct kvt_gpu_op_req){keys[k0 + j].lo, keys[k0 + j].hi, 0};
		ret = kvtc_dev_gpu_op(d, KVT_GPU_OP_RESERVE, l, bb, tt, req, m, res);
		if (ret == -KVT_EDAEMON) {
			kvtc_dev_ensure_attached(d);
			if (!d->gpu_tier)
				return;
			base = (uint64_t)(uintptr_t)kvt_gpu_pool_base(d->pool);
			tt = page_plan(d, l, pl, bb, &q);
			ret = kvtc_dev_gpu_op(d, KVT_GPU_OP_RESERVE, l, bb, tt, req, m, res);
		}
		if (ret < 0)
			return;
		for (uint32_t j = 0; j < m; j++) {
			struct dev_blk *b = &d->blk[k0 + j];

			bool quant = res[j].flags & KVT_GPU_F_INT8;

			if (res[j].res == -EEXIST) {
				b->where = B_DONE;
			} else if (res[j].res >= 0) {
				/* An honest daemon quantizes only what we asked for, inside the
				 * pool; anything else is aborted below and goes to the host. */
				bool ok = quant ? tt && res[j].flags >> 16 == tt &&
						      res[j].off + q.enc_bytes <= d->desc.bytes
						: res[j].off + bb <= d->desc.bytes;
				b->where = quant ? B_GPUQ : B_GPU;
				b->addr = base + res[j].off;
				b->handle = res[j].handle;
				if (!ok)
					b->addr = 0;
			}
		}
		ret = 0;
		for (uint32_t j = 0; j < m; j++) {
			if (in_pool(d->blk[k0 + j].where) && !d->blk[k0 + j].addr)
				ret = -KVT_EPROTOCOL;
		}
		if (ret >= 0)
			ret = (int)queue_copy(d, pl, ids, k0, k0 + m, B_GPU, true, stream);
		if (ret >= 0)
			ret = (int)queue_quant(d, pl, &q, ids, k0, k0 + m, true, stream);
		if (ret >= 0)
			ret = kvtc_dev_stream_sync(d, stream);
		for (uint32_t j = 0; j < m; j++) {
			if (in_pool(d->blk[k0 + j].where))
				req[nc++].handle = d->blk[k0 + j].handle;
		}
		if (!nc)
			continue;
		if (ret < 0) {
			kvtc_dev_gpu_op(d, KVT_GPU_OP_ABORT, NULL, 0, 0, req, nc, res);
			for (uint32_t j = 0; j < m; j++) {
				if (in_pool(d->blk[k0 + j].where))
					d->blk[k0 + j].where = B_NONE;
			}
			continue;
		}
		ret = kvtc_dev_gpu_op(d, KVT_GPU_OP_COMMIT, NULL, 0, 0, req, nc, res);
		nc = 0;
		for (uint32_t j = 0; j < m; j++) {
			struct dev_blk *b = &d->blk[k0 + j];

			if (!in_pool(b->where))
				continue;
			/* A commit lost to a daemon restart: store it again on the host. */
			b->where = ret == 0 && res[nc].res == 0 ? B_DONE : B_NONE;
			if (b->where == B_DONE)
				d->gpu_puts++;
			nc++;
		}
	}
}

static void host_finish(struct kvt_dev *d, size_t from, size_t to, bool put, int copy_err,
			int *first_err)
{
	for (size_t k = from; k < to; k++) {
		struct dev_blk *b = &d->blk[k];
		int ret;

		if (b->where != B_HOST && b->where != B_HOSTE)
			continue;
		if (put) {
			ret = copy_err < 0 ? kvt_put_abort(d->c, &b->u.r)
					   : kvt_put_commit(d->c, &b->u.r);
			if (copy_err < 0)
				ret = copy_err;
			if (ret == 0)
				d->host_puts++;
		} else {
			ret = copy_err;
			/* a record the GPU found malformed: its pages hold no block */
			if (ret == 0 && b->where == B_HOSTE)
				ret = kvtc_devq_get_check(d, k);
			kvtc_lease_release_quiet(d->c, &b->u.l);
			if (ret == 0)
				d->host_gets++;
		}
		b->where = ret < 0 ? B_NONE : B_DONE;
		if (ret < 0 && !*first_err)
			*first_err = ret;
	}
}

/* The previous round of a host path: its copies are fenced at v; finished once they land. */
struct round {
	size_t from, to;
	uint64_t v;
	bool have;
};

/* Waits for the previous round's copies (and its coding on the codec stream), then commits or
 * releases its blocks. */
static void finish_prev(struct kvt_dev *d, struct round *prev, bool put, int *first_err)
{
	int w;

	if (!prev->have)
		return;
	uint64_t t;

	w = kvtc_dev_flag_wait(d, d->flag, prev->v);
	/* a get round's decode (a put round's encode was waited for before its store; its
	 * parity's fence is by now the round after next's, which must not be waited for here) */
	if (w == 0 && !put)
		w = kvtc_devq_wait(d, prev->from);
	t = kvtc_dev_clock();
	host_finish(d, prev->from, prev->to, put, w, first_err);
	d->daemon_ns += kvtc_dev_clock() - t;
	prev->have = false;
}

/*
 * Queues round [k0, *k1)'s copies of its B_HOST blocks (and, for a get, its records' round)
 * and fences them; then finishes the previous round and makes this one the previous.  A copy
 * that could not be queued finishes this round as failed and returns it (the caller stops).
 */
static int close_round(struct kvt_dev *d, int layout, const struct kvt_gpu_paged_layout *pl,
		       const uint32_t *ids, size_t k0, size_t k1, uint32_t bb, bool put,
		       void *stream, struct round *prev, int *first_err)
{
	uint64_t v = 0, t = kvtc_dev_clock();
	int ret = (int)queue_copy(d, pl, ids, k0, k1, B_HOST, put, stream);

	if (ret >= 0 && !put)
		ret = kvtc_devq_get_round(d, layout, pl, ids, k0, k1, bb, stream);
	if (ret >= 0)
		ret = fence(d, stream, &v);
	if (ret >= 0)
		ret = kvtc_devq_round_end(d, k0, stream);
	d->queue_ns += kvtc_dev_clock() - t;
	finish_prev(d, prev, put, first_err);
	if (ret < 0) {
		/* Nothing of this round may be trusted: the stream is in an unknown state, so
		 * wait for it before handing the memory back. */
		kvt_gpu_stream_sync(stream);
		host_finish(d, k0, k1, put, ret, first_err);
		return ret;
	}
	*prev = (struct round){k0, k1, v, true};
	return 0;
}

/*
 * Host tier part of a put for the blocks still B_NONE, HOST_CHUNK at a time: round k+1 is
 * encoded on the codec stream (compressed host tier) while round k's records and raw blocks
 * are reserved and copied down, and round k-1 commits once the flag says its copies are done.
 */
static int host_put(struct kvt_dev *d, int layout, const struct kvt_gpu_paged_layout *pl,
		    const struct kvt_key *keys, const uint32_t *ids, size_t n, uint32_t bb,
		    void *stream)
{
	struct round prev = {0};
	int hid = d->host_id[layout];
	int first_err = 0, ret;

	if (d->xp_heads && n && (ret = kvtc_devq_xp_ready(d, pl, bb)) < 0)
		return ret;
	/* the first round's encode; each round then queues the next one's before its store */
	if (n && (ret = kvtc_devq_put_encode(d, layout, pl, ids, 0, n < HOST_CHUNK ? n : HOST_CHUNK,
					     bb, stream)) < 0)
		first_err = ret;
	for (size_t k0 = 0; k0 < n; k0 += HOST_CHUNK) {
		size_t k1 = n - k0 < HOST_CHUNK ? n : k0 + HOST_CHUNK;
		uint64_t t = kvtc_dev_clock();

		/* what is left B_NONE by the encode and the store is stored raw below */
		if (k1 < n &&
		    (ret = kvtc_devq_put_encode(d, layout, pl, ids, k1,
						n - k1 < HOST_CHUNK ? n : k1 + HOST_CHUNK, bb,
						stream)) < 0 &&
		    !first_err)
			first_err = ret;
		d->queue_ns += kvtc_dev_clock() - t;
		if ((ret = kvtc_devq_put_store(d, layout, keys, k0, k1, bb, stream)) < 0 &&
		    !first_err)
			first_err = ret;
		t = kvtc_dev_clock();
		for (size_t k = k0; k < k1; k++) {
			struct dev_blk *b = &d->blk[k];

			if (b->where != B_NONE)
				continue;
			ret = kvt_put_reserve(d->c, hid, &keys[k], bb, &b->u.r);
			if (ret == -EEXIST) {
				b->where = B_DONE;
				continue;
			}
			if (ret == 0) {
				b->addr = (uint64_t)(uintptr_t)b->u.r.data;
				ret = kvtc_dev_host_ready(d, b->u.r.data, bb);
				if (ret < 0)
					kvt_put_abort(d->c, &b->u.r);
			}
			if (ret < 0) {
				if (!first_err)
					first_err = ret;
				k1 = k; /* later blocks would fail alike */
				n = k;
				break;
			}
			b->where = B_HOST;
		}
		d->daemon_ns += kvtc_dev_clock() - t;
		if (close_round(d, layout, pl, ids, k0, k1, bb, true, stream, &prev, &first_err) <
		    0)
			break;
	}
	finish_prev(d, &prev, true, &first_err);
	/* a round encoded ahead of a stop must not read the pages after the call */
	if (d->q_stream)
		kvtc_dev_stream_sync(d, d->q_stream);
	return first_err;
}

/*
 * Host tier part of a get, HOST_CHUNK at a time: round k's copies (and records' decode) run
 * on the GPU while round k+1 leases (one kvt_get_lease_batch a round), and round k releases
 * once the flags say its copies are done.  *n shrinks to the first miss.
 */
static int host_get(struct kvt_dev *d, int layout, const struct kvt_gpu_paged_layout *pl,
		    const struct kvt_key *keys, const uint32_t *ids, size_t *np, uint32_t bb,
		    void *stream)
{
	struct round prev = {0};
	int hid = d->host_id[layout];
	size_t n = *np;
	int first_err = 0, ret;

	if (d->xp_heads && n && (ret = kvtc_devq_xp_ready(d, pl, bb)) < 0) {
		*np = 0;
		return ret;
	}
	for (size_t k0 = 0; k0 < n; k0 += HOST_CHUNK) {
		size_t k1 = n - k0 < HOST_CHUNK ? n : k0 + HOST_CHUNK;
		struct kvt_key rk[HOST_CHUNK];
		struct kvt_lease rl[HOST_CHUNK];
		int rs[HOST_CHUNK], bret;
		size_t ri[HOST_CHUNK], nr = 0;
		uint64_t t = kvtc_dev_clock();
		bool stop = false;

		/* the round's leases for one round trip (those the GPU tier has not served) */
		for (size_t k = k0; k < k1; k++) {
			if (d->blk[k].where == B_NONE) {
				ri[nr] = k;
				rk[nr++] = keys[k];
			}
		}
		bret = nr ? kvt_get_lease_batch(d->c, hid, rk, rl, nr, rs) : 0;
		for (size_t i = 0; i < nr; i++) {
			struct dev_blk *b = &d->blk[ri[i]];
			size_t k = ri[i];

			if (stop) { /* past a miss: not needed */
				if (rl[i].data)
					kvtc_lease_release_quiet(d->c, &rl[i]);
				continue;
			}
			if (!rl[i].data) { /* its error, or the batch's */
				ret = bret < 0 ? bret : rs[i] < 0 ? rs[i] : -EIO;
			} else {
				b->u.l = rl[i];
				ret = 0;
			}
			if (ret == 0 && b->u.l.chain_id) {
				/* a record: decoded on the GPU (or here) */
				ret = kvtc_devq_get_prepare(d, layout, k, bb);
				if (ret < 0)
					kvtc_lease_release_quiet(d->c, &b->u.l);
				else
					continue;
			} else if (ret == 0 && b->u.l.len != bb) {
				kvtc_lease_release_quiet(d->c, &b->u.l);
				ret = -ENOENT; /* stored with another geometry */
			}
			if (ret == 0) {
				b->addr = (uint64_t)(uintptr_t)b->u.l.data;
				ret = kvtc_dev_host_ready(d, b->u.l.data, bb);
				if (ret < 0)
					kvtc_lease_release_quiet(d->c, &b->u.l);
			}
			if (ret < 0) {
				if (!first_err)
					first_err = ret;
				k1 = k; /* stop here: later blocks are not needed */
				n = k;
				stop = true;
				continue;
			}
			b->where = B_HOST;
		}
		d->daemon_ns += kvtc_dev_clock() - t;
		if (close_round(d, layout, pl, ids, k0, k1, bb, false, stream, &prev, &first_err) <
		    0) {
			n = k0;
			break;
		}
	}
	finish_prev(d, &prev, false, &first_err);
	*np = n;
	return first_err;
}

/*
 * What put and get start with: checks the arguments, then takes d's lock and readies its
 * per-block state for n blocks.  Returns 1 with the lock held, 0 when there is nothing to do,
 * or -errno (lock not held).
 */
static int op_begin(struct kvt_dev *d, int layout, const struct kvt_dev_pages *p,
		    const struct kvt_key *keys, const uint32_t *ids, size_t n,
		    struct kvt_gpu_paged_layout *pl, uint32_t *bb)
{
	uint32_t xh, xrow;
	int ret = check_args(d, layout, p, keys, ids, n, pl, bb, &xh, &xrow);

	if (ret < 0 || !n)
		return ret;
	if (n > INT32_MAX)
		return -EINVAL;
	pthread_mutex_lock(&d->lock);
	d->xp_heads = xh;
	d->xp_row = xrow;
	ret = grow(d, n, pl);
	if (ret < 0) {
		pthread_mutex_unlock(&d->lock);
		return ret;
	}
	for (size_t k = 0; k < n; k++)
		d->blk[k].where = B_NONE;
	return 1;
}

KVT_API int kvt_dev_put(struct kvt_dev *d, int layout, const struct kvt_dev_pages *p,
			const struct kvt_key *keys, const uint32_t *ids, size_t n, unsigned flags,
			void *stream)
{
	struct kvt_gpu_paged_layout pl;
	size_t done = 0, nh;
	uint32_t bb;
	int ret;

	KVT_CHECK_MAGIC(d, DEV_MAGIC);
	ret = op_begin(d, layout, p, keys, ids, n, &pl, &bb);
	if (ret <= 0)
		return ret;
	stream = stream ? stream : d->own_stream;
	if (!((flags | d->flags) & KVT_DEV_HOST_ONLY))
		put_gpu(d, &d->layouts[layout], &pl, keys, ids, n, bb, stream);
	nh = n;
	ret = host_put(d, layout, &pl, keys, ids, nh, bb, stream);
	for (size_t k = 0; k < n && d->blk[k].where == B_DONE; k++)
		done++;
	if (done || !ret)
		ret = (int)done;
	pthread_mutex_unlock(&d->lock);
	return ret;
}

KVT_API int kvt_dev_get(struct kvt_dev *d, int layout, const struct kvt_dev_pages *p,
			const struct kvt_key *keys, const uint32_t *ids, size_t n, unsigned flags,
			void *stream)
{
	struct kvt_gpu_op_req req[DEV_ROUND];
	struct kvt_gpu_op_res res[DEV_ROUND];
	struct kvt_gpu_paged_layout pl;
	struct kvt_gpu_kvq q;
	unsigned tt = 0;
	size_t nh, hits = 0;
	bool gpu;
	uint32_t bb;
	int ret, gerr = 0;

	KVT_CHECK_MAGIC(d, DEV_MAGIC);
	ret = op_begin(d, layout, p, keys, ids, n, &pl, &bb);
	if (ret <= 0)
		return ret;
	stream = stream ? stream : d->own_stream;
	gpu = !((flags | d->flags) & KVT_DEV_HOST_ONLY);
	if (gpu)
		kvtc_dev_ensure_attached(d);
	tt = page_plan(d, &d->layouts[layout], &pl, bb, &q);
	/* Pool leases first: their copies run while the host part leases and copies. */
	for (size_t k0 = 0; gpu && d->gpu_tier && k0 < n; k0 += DEV_ROUND) {
		uint32_t m = (uint32_t)(n - k0 < DEV_ROUND ? n - k0 : DEV_ROUND);
		uint64_t base = (uint64_t)(uintptr_t)kvt_gpu_pool_base(d->pool);

		for (uint32_t j = 0; j < m; j++)
			req[j] = (struct kvt_gpu_op_req){keys[k0 + j].lo, keys[k0 + j].hi, 0};
		ret = kvtc_dev_gpu_op(d, KVT_GPU_OP_LEASE, &d->layouts[layout], 0, 0, req, m, res);
		if (ret == -KVT_EDAEMON && k0 == 0) {
			kvtc_dev_ensure_attached(d);
			if (!d->gpu_tier)
				break;
			base = (uint64_t)(uintptr_t)kvt_gpu_pool_base(d->pool);
			ret = kvtc_dev_gpu_op(d, KVT_GPU_OP_LEASE, &d->layouts[layout], 0, 0, req,
					      m, res);
		}
		if (ret < 0)
			break; /* the host part finds them (or finds them gone) */
		for (uint32_t j = 0; j < m; j++) {
			struct dev_blk *b = &d->blk[k0 + j];

			if (res[j].res == -ENOENT && k0 + j < n) {
				/* A miss ends the prefix: later blocks are not needed. */
				n = k0 + j;
				continue;
			}
			if (k0 + j >= n && res[j].res >= 0) {
				struct kvt_gpu_op_req rq = {0, 0, res[j].handle};
				struct kvt_gpu_op_res rs;
				kvtc_dev_gpu_op(d, KVT_GPU_OP_RELEASE, NULL, 0, 0, &rq, 1, &rs);
				continue;
			}
			if (res[j].res >= 0 && !(res[j].flags & KVT_GPU_F_INT8) &&
			    (uint32_t)res[j].res == bb && res[j].off + bb <= d->desc.bytes) {
				b->where = B_GPU;
				b->addr = base + res[j].off;
				b->handle = res[j].handle;
			} else if (res[j].res >= 0 && (res[j].flags & KVT_GPU_F_INT8) && tt &&
				   res[j].flags >> 16 == tt && (uint32_t)res[j].res == bb &&
				   res[j].off + q.enc_bytes <= d->desc.bytes) {
				b->where = B_GPUQ;
				b->addr = base + res[j].off;
				b->handle = res[j].handle;
			} else if (res[j].res >= 0) {
				/* Another geometry, or tiles these pages cannot take: the host path
				 * reads it (the daemon dequantizes it on the way down). */
				struct kvt_gpu_op_req rq = {0, 0, res[j].handle};
				struct kvt_gpu_op_res rs;
				kvtc_dev_gpu_op(d, KVT_GPU_OP_RELEASE, NULL, 0, 0, &rq, 1, &rs);
			}
		}
		ret = (int)queue_copy(d, &pl, ids, k0, k0 + m, B_GPU, false, stream);
		if (ret >= 0)
			ret = (int)queue_quant(d, &pl, &q, ids, k0, k0 + m, false, stream);
		if (ret < 0 && !gerr)
			gerr = ret;
	}
	nh = n;
	ret = host_get(d, layout, &pl, keys, ids, &nh, bb, stream);
	/* The pool part: wait for its copies, then give the leases back. */
	if (kvtc_dev_stream_sync(d, stream) < 0 && !gerr)
		gerr = -EIO;
	for (size_t k0 = 0; k0 < n; k0 += DEV_ROUND) {
		uint32_t m = (uint32_t)(n - k0 < DEV_ROUND ? n - k0 : DEV_ROUND), nc = 0;

		for (uint32_t j = 0; j < m; j++) {
			struct dev_blk *b = &d->blk[k0 + j];

			if (!in_pool(b->where))
				continue;
			req[nc++].handle = b->handle;
			b->where = gerr ? B_NONE : B_DONE;
			if (!gerr)
				d->gpu_gets++;
		}
		if (nc)
			kvtc_dev_gpu_op(d, KVT_GPU_OP_RELEASE, NULL, 0, 0, req, nc, res);
	}
	for (size_t k = 0; k < n && d->blk[k].where == B_DONE; k++)
		hits++;
	if (gerr && !hits)
		ret = gerr;
	else if (hits || !ret || ret == -ENOENT)
		ret = (int)hits;
	pthread_mutex_unlock(&d->lock);
	return ret;
}
