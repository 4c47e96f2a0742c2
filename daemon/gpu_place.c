/* SPDX-License-Identifier: MIT */
/*
 * gpu_place.c - the GPU tier inside kvtierd: which blocks live in the device pool, where,
 * and how they move between the pool and the host tier.
 *
 * The block index (index.c) stays the one truth about a block; this file keeps a side table
 * of pool copies, one entry per block with a copy, validated by the block's generation (a
 * dropped block bumps it, and the entry is then freed by the next sweep or lookup), and its
 * own LRU list of the copies that may leave the GPU.
 *
 * A block put by a device client lands in the pool only (on_host = 0, on_nvme = 0: placement.c
 * never sees it in its LRU lists).  Above gpu.high_watermark the least recently used copies
 * go down to the host arena, on the tier's own stream, until gpu.low_watermark; a block that
 * already has a host copy just loses its pool copy.  A device get of a block that is only on
 * the host is served from the host and queues a copy up to the pool (promotion).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "log.h"
#include "tier_gpu.h"

enum { ENT_FREE = 0, ENT_RESERVED, ENT_READY };

struct gpu_ent {
	uint32_t blk, gen;
	struct kvt_tier_loc loc;
	uint32_t len;	      /* bytes in the pool (encoded when quantized) */
	struct kvt_gpu_kvq q; /* q.qp.bits = 0: raw */
	uint32_t leases;
	uint32_t prev, next; /* LRU, head = most recently used */
	uint8_t state, in_lru;
};

#define PROMO_CAP 4096u

struct kvtd_gpu {
	struct kvt_tier *t;
	struct kvt_gpu_ipc_desc desc;
	char uuid[41];
	struct gpu_ent *ents;
	uint32_t nents, cap, free_head;
	uint32_t *of_blk; /* block index -> entry, KVTD_NIL when none */
	uint32_t lru_head, lru_tail;
	void **reg; /* registered tenant arenas, by tenant index */
	uint32_t nreg;
	struct {
		uint32_t blk, gen;
	} promo[PROMO_CAP];
	uint32_t promo_head, promo_tail;
	unsigned bits; /* gpu.codec: 0 raw, 8 int8, 4 int4 */
	void *staging; /* device memory for dequantizing on the way down */
	uint64_t staging_len;
	struct kvt_gpu_qjob *jobs;
	size_t njobs;
	struct kvtd_gpu_stats st;
};

static struct gpu_ent *E(struct kvtd_gpu *g, uint32_t e)
{
	return &g->ents[e];
}

static void lru_unlink(struct kvtd_gpu *g, uint32_t e)
{
	struct gpu_ent *x = E(g, e);

	if (!x->in_lru)
		return;
	if (x->prev != KVTD_NIL)
		E(g, x->prev)->next = x->next;
	else
		g->lru_head = x->next;
	if (x->next != KVTD_NIL)
		E(g, x->next)->prev = x->prev;
	else
		g->lru_tail = x->prev;
	x->in_lru = 0;
}

static void lru_push(struct kvtd_gpu *g, uint32_t e)
{
	struct gpu_ent *x = E(g, e);

	lru_unlink(g, e);
	x->prev = KVTD_NIL;
	x->next = g->lru_head;
	if (g->lru_head != KVTD_NIL)
		E(g, g->lru_head)->prev = e;
	else
		g->lru_tail = e;
	g->lru_head = e;
	x->in_lru = 1;
}

/* Puts the entry where it belongs: in the LRU when its copy may leave the GPU. */
static void lru_fix(struct kvtd *d, uint32_t e)
{
	struct kvtd_gpu *g = d->gpu;
	struct gpu_ent *x = E(g, e);
	const struct kvtd_blk *b = kvtd_blk(&d->ix, x->blk);

	if (x->state == ENT_READY && !x->leases && !b->pins && b->state == KVTD_BLK_READY)
		lru_push(g, e);
	else
		lru_unlink(g, e);
}

static void ent_free(struct kvtd *d, uint32_t e)
{
	struct kvtd_gpu *g = d->gpu;
	struct gpu_ent *x = E(g, e);

	lru_unlink(g, e);
	kvt_tier_gpu_ops.free(g->t, &x->loc);
	if (x->state == ENT_READY)
		g->st.blocks--;
	if (x->blk < d->ix.max && g->of_blk[x->blk] == e)
		g->of_blk[x->blk] = KVTD_NIL;
	memset(x, 0, sizeof(*x));
	x->next = g->free_head;
	g->free_head = e;
}

/* The live pool copy of block i, or KVTD_NIL (a stale entry of a dropped block is freed). */
static uint32_t ent_of(struct kvtd *d, uint32_t i)
{
	struct kvtd_gpu *g = d->gpu;
	uint32_t e;

	if (!g || i >= d->ix.max)
		return KVTD_NIL;
	e = g->of_blk[i];
	if (e == KVTD_NIL)
		return KVTD_NIL;
	if (i >= d->ix.used || E(g, e)->gen != kvtd_blk(&d->ix, i)->gen) {
		ent_free(d, e);
		return KVTD_NIL;
	}
	return e;
}

static int ent_new(struct kvtd *d, uint32_t i, uint32_t len, uint32_t *out)
{
	struct kvtd_gpu *g = d->gpu;
	struct kvt_tier_loc loc;
	uint32_t e;
	int ret;

	ret = kvt_tier_gpu_ops.alloc(g->t, len, &loc);
	if (ret < 0)
		return ret;
	if (g->free_head != KVTD_NIL) {
		e = g->free_head;
		g->free_head = E(g, e)->next;
	} else {
		if (g->nents == g->cap) {
			uint32_t ncap = g->cap ? g->cap * 2 : 1024;
			struct gpu_ent *n = realloc(g->ents, (size_t)ncap * sizeof(*n));

			if (!n) {
				kvt_tier_gpu_ops.free(g->t, &loc);
				return -ENOMEM;
			}
			g->ents = n;
			g->cap = ncap;
		}
		e = g->nents++;
	}
	memset(E(g, e), 0, sizeof(struct gpu_ent));
	E(g, e)->blk = i;
	E(g, e)->gen = kvtd_blk(&d->ix, i)->gen;
	E(g, e)->loc = loc;
	E(g, e)->len = len;
	E(g, e)->prev = E(g, e)->next = KVTD_NIL;
	g->of_blk[i] = e;
	*out = e;
	return 0;
}

static void tier_log(void *arg, int level, const char *msg)
{
	(void)arg;
	kvtd_log(level <= 3   ? KVTD_LOG_ERR
		 : level == 4 ? KVTD_LOG_WARN
			      : KVTD_LOG_INFO,
		 "gpu tier: %s", msg);
}

int kvtd_gpu_init(struct kvtd *d)
{
	struct kvt_tier_conf tc = {0};
	struct kvtd_gpu *g;
	int ret;

	if (!d->cfg.gpu_capacity)
		return 0;
	g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	g->free_head = g->lru_head = g->lru_tail = KVTD_NIL;
	g->of_blk = malloc((size_t)d->ix.max * sizeof(uint32_t));
	if (!g->of_blk) {
		free(g);
		return -ENOMEM;
	}
	memset(g->of_blk, 0xff, (size_t)d->ix.max * sizeof(uint32_t));
	tc.name = "gpu";
	tc.capacity_bytes = d->cfg.gpu_capacity;
	tc.log = tier_log;
	ret = kvt_tier_gpu_open(&tc, d->cfg.gpu_device, d->epoch, &g->t);
	if (ret == 0)
		ret = kvt_tier_gpu_export(g->t, &g->desc);
	if (ret < 0) {
		/* The host and NVMe tiers work without it: say so loudly and go on. */
		kvtd_log(KVTD_LOG_WARN,
			 "gpu.capacity = %llu but %s: running without the GPU tier (%s)",
			 (unsigned long long)d->cfg.gpu_capacity,
			 ret == -ENODEV ? (kvt_gpu_available() ? "no such GPU" : "no GPU")
					: "the GPU pool could not be created",
			 strerror(-ret));
		if (g->t)
			kvt_tier_gpu_ops.close(g->t);
		free(g->of_blk);
		free(g);
		d->gpu_err = ret;
		return 0;
	}
	kvt_gpu_uuid_format(g->desc.uuid, g->uuid);
	g->bits = !strcmp(d->cfg.gpu_codec, "int8") ? 8 : !strcmp(d->cfg.gpu_codec, "int4") ? 4 : 0;
	d->gpu = g;
	kvtd_log(KVTD_LOG_INFO, "gpu tier: %llu bytes on %s, epoch %llu",
		 (unsigned long long)g->desc.bytes, g->uuid, (unsigned long long)d->epoch);
	return 0;
}

void kvtd_gpu_fini(struct kvtd *d)
{
	struct kvtd_gpu *g = d->gpu;

	if (!g)
		return;
	for (uint32_t k = 0; k < g->nreg; k++) {
		if (g->reg[k])
			kvt_tier_gpu_unregister(g->t, g->reg[k]);
	}
	kvt_gpu_dev_free(g->staging);
	kvt_tier_gpu_ops.close(g->t);
	free(g->jobs);
	free(g->reg);
	free(g->ents);
	free(g->of_blk);
	free(g);
	d->gpu = NULL;
}

bool kvtd_gpu_on(const struct kvtd *d)
{
	return d->gpu != NULL;
}

int kvtd_gpu_attach_reply(struct kvtd *d, struct kvt_msg_gpu_attach_reply *r)
{
	if (!d->gpu)
		return d->gpu_err ? d->gpu_err : -ENODEV;
	_Static_assert(sizeof(d->gpu->desc) == sizeof(r->desc), "descriptor size");
	memcpy(r->desc, &d->gpu->desc, sizeof(r->desc));
	r->codec = d->gpu->bits == 8   ? KVT_GPU_CODEC_INT8
		   : d->gpu->bits == 4 ? KVT_GPU_CODEC_INT4
				       : KVT_GPU_CODEC_RAW;
	r->capacity = d->gpu->desc.bytes;
	d->gpu->st.attaches++;
	return 0;
}

/* Registers tenant t's arena with CUDA once, so that the tier can DMA to and from it. */
static int arena_ready(struct kvtd *d, const struct tenant *t, uint32_t ti)
{
	struct kvtd_gpu *g = d->gpu;
	int ret;

	if (ti >= g->nreg) {
		void **n = realloc(g->reg, (size_t)(ti + 1) * sizeof(*n));
		if (!n)
			return -ENOMEM;
		memset(n + g->nreg, 0, (size_t)(ti + 1 - g->nreg) * sizeof(*n));
		g->reg = n;
		g->nreg = ti + 1;
	}
	if (g->reg[ti])
		return 0;
	ret = kvt_tier_gpu_register(g->t, t->base, t->size);
	if (ret < 0) {
		kvtd_log(KVTD_LOG_ERR, "gpu tier: cannot register the arena of uid %u: %s", t->uid,
			 strerror(-ret));
		return ret;
	}
	g->reg[ti] = t->base;
	d->tenants[ti]->gpu_reg = true;
	return 0;
}

/* Synchronous copy between pool entry e and host memory at p (dir D2H: pool -> host). */
static int pool_move(struct kvtd *d, uint32_t e, void *p, bool down)
{
	struct kvtd_gpu *g = d->gpu;
	struct kvt_tier_io io = {0};
	int ret;

	io.loc = E(g, e)->loc;
	io.buf = p;
	io.len = E(g, e)->len;
	ret = down ? kvt_tier_gpu_ops.read(g->t, &io) : kvt_tier_gpu_ops.write(g->t, &io);
	if (ret < 0)
		return ret;
	kvt_tier_gpu_ops.complete(g->t);
	return io.res < 0 ? io.res : 0;
}

/* Dequantizes pool entry e into the staging buffer and copies the raw block to host p. */
static int dequant_down(struct kvtd *d, uint32_t e, void *p)
{
	struct kvtd_gpu *g = d->gpu;
	struct gpu_ent *x = E(g, e);
	uint64_t base = (uint64_t)(uintptr_t)kvt_tier_gpu_base(g->t) + x->loc.off;
	size_t n = (size_t)x->q.n_layers * 2 * x->q.pages_per_block, k = 0;
	void *stream = kvt_tier_gpu_stream(g->t);
	struct kvt_gpu_seg seg;
	int ret;

	if (g->staging_len < x->q.raw_bytes) {
		kvt_gpu_dev_free(g->staging);
		g->staging = NULL;
		g->staging_len = 0;
		ret = kvt_gpu_dev_alloc(kvt_tier_gpu_device(g->t), x->q.raw_bytes, &g->staging);
		if (ret < 0)
			return ret;
		g->staging_len = x->q.raw_bytes;
	}
	if (g->njobs < n) {
		struct kvt_gpu_qjob *j = realloc(g->jobs, n * sizeof(*j));
		if (!j)
			return -ENOMEM;
		g->jobs = j;
		g->njobs = n;
	}
	for (unsigned l = 0; l < x->q.n_layers; l++) {
		for (unsigned kv = 0; kv < 2; kv++) {
			for (unsigned j = 0; j < x->q.pages_per_block; j++, k++) {
				g->jobs[k].src = base + kvt_gpu_kvq_offset(&x->q, l, kv, j);
				g->jobs[k].dst =
				    (uint64_t)(uintptr_t)g->staging +
				    ((uint64_t)(l * 2 + kv) * x->q.pages_per_block + j) *
					x->q.raw_tile;
				g->jobs[k].kind = kv ? KVT_GPU_VALUES : KVT_GPU_KEYS;
				g->jobs[k].reserved = 0;
			}
		}
	}
	ret = kvt_gpu_dequantize(kvt_tier_gpu_engine(g->t), &x->q.qp, g->jobs, n, stream);
	if (ret < 0)
		return ret;
	seg = (struct kvt_gpu_seg){(uint64_t)(uintptr_t)g->staging, (uint64_t)(uintptr_t)p,
				   x->q.raw_bytes};
	ret = kvt_gpu_copy(kvt_tier_gpu_engine(g->t), &seg, 1, KVT_GPU_D2H, KVT_GPU_DMA, stream);
	if (ret < 0)
		return ret;
	return kvt_gpu_stream_sync(stream);
}

/* Gives block i (only in the pool, entry e) a host copy.  0 or -errno. */
static int copy_down(struct kvtd *d, uint32_t i, uint32_t e)
{
	struct kvtd_blk *b = kvtd_blk(&d->ix, i);
	struct tenant *t = kvtd_tenant_of(d, b);
	uint32_t gen = b->gen, len = b->len;
	int64_t off;
	int ret;

	ret = arena_ready(d, t, b->tenant);
	if (ret < 0)
		return ret;
	/* Host eviction may run here; it never sees this block (no host copy, so in no host
	 * LRU), but check anyway before writing into the room it made. */
	off = kvtd_host_alloc(d, t, len);
	b = kvtd_blk(&d->ix, i);
	if (off < 0)
		return (int)off;
	if (b->gen != gen) {
		kvtd_host_unalloc(d, t, (uint64_t)off, len);
		return -ESTALE;
	}
	if (E(d->gpu, e)->q.qp.bits)
		ret = dequant_down(d, e, t->base + off);
	else
		ret = pool_move(d, e, t->base + off, true);
	if (ret < 0) {
		kvtd_host_unalloc(d, t, (uint64_t)off, len);
		return ret;
	}
	b->off = (uint64_t)off;
	b->on_host = 1;
	b->tier = KVTD_TIER_HOST;
	kvtd_blk_account(d, i); /* a READY block gained its host copy */
	kvtd_blk_lru_update(d, i);
	d->gpu->st.demoted_bytes += b->len;
	d->gpu->st.demotions++;
	return 0;
}

/* Makes the least recently used pool copy leave the GPU.  0 or -ENOSPC. */
static int evict_one(struct kvtd *d)
{
	struct kvtd_gpu *g = d->gpu;
	uint32_t e = g->lru_tail;
	uint32_t i;
	int ret;

	if (e == KVTD_NIL)
		return -ENOSPC;
	i = E(g, e)->blk;
	if (ent_of(d, i) != e)
		return 0; /* stale: freed now, which made room */
	g->st.evictions++;
	if (!kvtd_blk(&d->ix, i)->on_host && !kvtd_blk(&d->ix, i)->on_nvme) {
		ret = copy_down(d, i, e);
		if (ret < 0 && ent_of(d, i) == e) {
			/* The host tier cannot take it: the block is lost, as host eviction
			 * without NVMe loses blocks. */
			kvtd_log(KVTD_LOG_DEBUG, "gpu tier: demotion failed (%s), block dropped",
				 strerror(-ret));
			g->st.demote_failures++;
			ent_free(d, e);
			kvtd_blk_drop(d, i);
			return 0;
		}
	}
	if (ent_of(d, i) == e)
		ent_free(d, e);
	return 0;
}

static uint64_t high_mark(const struct kvtd *d)
{
	return (uint64_t)(d->cfg.gpu_high * (double)d->gpu->desc.bytes);
}

void kvtd_gpu_watermarks(struct kvtd *d)
{
	struct kvt_tier_stats st;

	if (!d->gpu)
		return;
	kvtd_gpu_sweep(d);
	kvt_tier_gpu_ops.stats(d->gpu->t, &st);
	if (st.used_bytes <= high_mark(d))
		return;
	uint64_t low = (uint64_t)(d->cfg.gpu_low * (double)d->gpu->desc.bytes);
	while (st.used_bytes > low) {
		if (evict_one(d) < 0)
			break;
		kvt_tier_gpu_ops.stats(d->gpu->t, &st);
	}
}

void kvtd_gpu_sweep(struct kvtd *d)
{
	struct kvtd_gpu *g = d->gpu;

	if (!g)
		return;
	for (uint32_t e = 0; e < g->nents; e++) {
		if (E(g, e)->state != ENT_FREE)
			ent_of(d, E(g, e)->blk);
	}
}

int64_t kvtd_gpu_reserve(struct kvtd *d, uint32_t i, uint32_t len, const struct kvt_layout *l,
			 uint32_t tile_tokens, uint32_t *flags)
{
	struct kvtd_gpu *g = d->gpu;
	struct kvt_gpu_kvq q;
	uint32_t e;
	int ret;

	*flags = 0;
	if (!g)
		return -ENODEV;
	memset(&q, 0, sizeof(q));
	/* Quantized when the codec asks for it and the engine's pages fit the kernels; kept
	 * raw otherwise (fp8 pages, odd geometries). */
	if (g->bits && tile_tokens && (l->dtype == KVT_DTYPE_FP16 || l->dtype == KVT_DTYPE_BF16) &&
	    kvt_gpu_kvq_plan(g->bits, l->dtype == KVT_DTYPE_FP16 ? KVT_GPU_FP16 : KVT_GPU_BF16,
			     l->n_kv_heads, l->head_dim, tile_tokens, l->n_layers, len, &q) == 0) {
		len = (uint32_t)q.enc_bytes;
		*flags = KVT_GPU_F_INT8 | tile_tokens << 16;
	} else {
		memset(&q, 0, sizeof(q));
	}
	if (len > g->desc.bytes)
		return -E2BIG;
	ent_of(d, i);
	for (;;) {
		ret = ent_new(d, i, len, &e);
		if (ret != -ENOSPC)
			break;
		kvtd_gpu_sweep(d);
		ret = ent_new(d, i, len, &e);
		if (ret != -ENOSPC)
			break;
		/* Full: the coldest copies go down to the host tier to make room. */
		if (evict_one(d) < 0)
			return -ENOSPC;
	}
	if (ret < 0)
		return ret;
	E(g, e)->state = ENT_RESERVED;
	E(g, e)->q = q;
	return (int64_t)E(g, e)->loc.off;
}

void kvtd_gpu_commit(struct kvtd *d, uint32_t i)
{
	uint32_t e = ent_of(d, i);

	if (e == KVTD_NIL)
		return;
	E(d->gpu, e)->state = ENT_READY;
	d->gpu->st.blocks++;
	d->gpu->st.put_bytes += E(d->gpu, e)->len;
	lru_fix(d, e);
}

bool kvtd_gpu_has(struct kvtd *d, uint32_t i)
{
	uint32_t e = ent_of(d, i);

	return e != KVTD_NIL && E(d->gpu, e)->state == ENT_READY;
}

static void promo_queue(struct kvtd *d, uint32_t i)
{
	struct kvtd_gpu *g = d->gpu;

	if (!d->cfg.gpu_promote || g->promo_tail - g->promo_head == PROMO_CAP)
		return;
	g->promo[g->promo_tail % PROMO_CAP].blk = i;
	g->promo[g->promo_tail % PROMO_CAP].gen = kvtd_blk(&d->ix, i)->gen;
	g->promo_tail++;
}

int64_t kvtd_gpu_lease(struct kvtd *d, uint32_t i, uint32_t *flags)
{
	uint32_t e = ent_of(d, i);

	*flags = 0;
	if (!d->gpu)
		return -ENODEV;
	if (e == KVTD_NIL || E(d->gpu, e)->state != ENT_READY) {
		d->gpu->st.misses++;
		promo_queue(d, i);
		return -EXDEV;
	}
	d->gpu->st.hits++;
	d->gpu->st.get_bytes += E(d->gpu, e)->len;
	E(d->gpu, e)->leases++;
	lru_unlink(d->gpu, e);
	if (E(d->gpu, e)->q.qp.bits)
		*flags = KVT_GPU_F_INT8 | (uint32_t)E(d->gpu, e)->q.qp.tokens << 16;
	return (int64_t)E(d->gpu, e)->loc.off;
}

void kvtd_gpu_unlease(struct kvtd *d, uint32_t i)
{
	uint32_t e = ent_of(d, i);

	if (e == KVTD_NIL || !E(d->gpu, e)->leases)
		return;
	E(d->gpu, e)->leases--;
	lru_fix(d, e);
	/* Most recently used now: move to the head. */
	if (E(d->gpu, e)->in_lru)
		lru_push(d->gpu, e);
}

int kvtd_gpu_to_host(struct kvtd *d, uint32_t i)
{
	uint32_t e = ent_of(d, i);
	int ret;

	if (e == KVTD_NIL || E(d->gpu, e)->state != ENT_READY)
		return -ENOENT;
	ret = copy_down(d, i, e);
	if (ret == -ESTALE)
		return -ENOENT;
	return ret;
}

void kvtd_gpu_pump(struct kvtd *d)
{
	struct kvtd_gpu *g = d->gpu;

	if (!g)
		return;
	for (unsigned n = 0; g->promo_head != g->promo_tail && n < 64; n++) {
		uint32_t i = g->promo[g->promo_head % PROMO_CAP].blk;
		uint32_t gen = g->promo[g->promo_head % PROMO_CAP].gen;
		struct kvtd_blk *b;
		struct tenant *t;
		uint32_t e;

		g->promo_head++;
		if (i >= d->ix.used)
			continue;
		b = kvtd_blk(&d->ix, i);
		if (b->gen != gen || b->state != KVTD_BLK_READY || !b->on_host ||
		    ent_of(d, i) != KVTD_NIL)
			continue;
		t = kvtd_tenant_of(d, b);
		if (arena_ready(d, t, b->tenant) < 0)
			continue;
		/* A promotion takes free room only: it never pushes other blocks out. */
		if (ent_new(d, i, b->len, &e) < 0)
			continue;
		if (pool_move(d, e, t->base + b->off, false) < 0) {
			ent_free(d, e);
			continue;
		}
		E(g, e)->state = ENT_READY;
		g->st.blocks++;
		g->st.promoted_bytes += b->len;
		g->st.promotions++;
		lru_fix(d, e);
	}
}

void kvtd_gpu_stats(struct kvtd *d, struct kvtd_gpu_stats *st, const char **uuid)
{
	struct kvt_tier_stats ts;

	memset(st, 0, sizeof(*st));
	*uuid = "";
	if (!d->gpu)
		return;
	*st = d->gpu->st;
	kvt_tier_gpu_ops.stats(d->gpu->t, &ts);
	st->capacity = d->gpu->desc.bytes;
	st->used = ts.used_bytes;
	*uuid = d->gpu->uuid;
}
