/* SPDX-License-Identifier: MIT */
/*
 * gpu_place.c - the GPU tier inside kvtierd: which blocks live in the device pool, where,
 * and how they move between the pool and the host tier.
 *
 * The block index (index.c) stays the one truth about a block; this file keeps a side table
 * of pool copies, one entry per block with a copy, validated by the block's generation (a
 * dropped block bumps it, and the entry is then freed by the next sweep or lookup).  The
 * copies that may leave the GPU are on the index's GPU LRU list (KVTD_TIER_GPU), the one LRU
 * implementation every tier uses.  The tier itself (tiers/tier_gpu.c) is reached through its
 * ops table only; this file is its entry in the tier list (kvtd_gpu_class), at the top.
 *
 * A block put by a device client lands in the pool only (on_host = 0, on_nvme = 0: placement.c
 * never sees it in its LRU lists).  Above gpu.high_watermark the least recently used copies
 * go down the tier list (the host tier takes them: kvtd_gpu_copy_down), on the tier's own
 * stream, until gpu.low_watermark; a block with a copy in another tier just loses its pool
 * copy.  A device get of a block that is only on
 * the host is served from the host and queues a copy up to the pool (promotion).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "place_int.h"
#include "tier_gpu.h"

enum { ENT_FREE = 0, ENT_RESERVED, ENT_READY };

struct gpu_ent {
	uint32_t blk, gen;
	struct kvt_tier_loc loc;
	uint32_t len;	      /* bytes in the pool (encoded when quantized) */
	struct kvt_gpu_kvq q; /* q.qp.bits = 0: raw */
	uint32_t leases;
	uint32_t next; /* free list */
	uint8_t state;
};

#define PROMO_CAP 4096u

struct kvtd_gpu {
	const struct kvt_tier_ops *ops;
	struct kvt_tier *t;
	struct kvt_gpu_ipc_desc desc;
	char uuid[41];
	struct gpu_ent *ents;
	uint32_t nents, cap, free_head;
	uint32_t *of_blk; /* block index -> entry, KVTD_NIL when none */
	void **reg;	  /* registered tenant arenas, by tenant index */
	uint32_t nreg;
	struct {
		uint32_t blk, gen;
	} promo[PROMO_CAP];
	uint32_t promo_head, promo_tail;
	unsigned bits; /* gpu.codec: 0 raw, 8 int8, 4 int4 */
	struct kvtd_gpu_stats st;
};

static struct gpu_ent *E(struct kvtd_gpu *g, uint32_t e)
{
	return &g->ents[e];
}

/* Entry e leaves the GPU LRU list, where its block stands for it (when e is the block's). */
static void lru_unlink(struct kvtd *d, uint32_t e)
{
	const struct gpu_ent *x = E(d->gpu, e);

	if (x->blk < d->ix.max && d->gpu->of_blk[x->blk] == e)
		kvtd_lru_unlink(&d->ix, KVTD_TIER_GPU, x->blk);
}

/* Entry e (its block's live one) becomes the most recently used. */
static void lru_push(struct kvtd *d, uint32_t e)
{
	kvtd_lru_push(&d->ix, KVTD_TIER_GPU, E(d->gpu, e)->blk);
}

static bool in_lru(struct kvtd *d, uint32_t e)
{
	return kvtd_blk(&d->ix, E(d->gpu, e)->blk)->in_lru[KVTD_TIER_GPU];
}

/* Puts the entry where it belongs: in the LRU when its copy may leave the GPU. */
static void lru_fix(struct kvtd *d, uint32_t e)
{
	struct kvtd_gpu *g = d->gpu;
	struct gpu_ent *x = E(g, e);
	const struct kvtd_blk *b = kvtd_blk(&d->ix, x->blk);

	if (x->state == ENT_READY && !x->leases && !b->pins && b->state == KVTD_BLK_READY)
		lru_push(d, e);
	else
		lru_unlink(d, e);
}

static void ent_free(struct kvtd *d, uint32_t e)
{
	struct kvtd_gpu *g = d->gpu;
	struct gpu_ent *x = E(g, e);

	lru_unlink(d, e);
	g->ops->free(g->t, &x->loc);
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

	ret = g->ops->alloc(g->t, len, &loc);
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
				g->ops->free(g->t, &loc);
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
	E(g, e)->next = KVTD_NIL;
	g->of_blk[i] = e;
	*out = e;
	return 0;
}

int kvtd_gpu_init(struct kvtd *d)
{
	struct kvtd_tier *x = d->tier_at[KVTD_TIER_GPU];
	const char *paths[2] = {d->cfg.gpu_device, NULL};
	struct kvt_tier_conf tc = {0};
	struct kvtd_gpu *g;
	int ret;

	if (!d->cfg.gpu_capacity)
		return 0;
	if (!x) {
		kvtd_log(KVTD_LOG_WARN,
			 "gpu.capacity = %llu but tiers.order = %s lists no gpu: no GPU tier",
			 (unsigned long long)d->cfg.gpu_capacity, d->cfg.tiers_order);
		d->gpu_err = -ENODEV;
		return 0;
	}
	g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	g->ops = x->cls->ops;
	g->free_head = KVTD_NIL;
	g->of_blk = malloc((size_t)d->ix.max * sizeof(uint32_t));
	if (!g->of_blk) {
		free(g);
		return -ENOMEM;
	}
	memset(g->of_blk, 0xff, (size_t)d->ix.max * sizeof(uint32_t));
	tc.name = "gpu";
	tc.capacity_bytes = d->cfg.gpu_capacity;
	tc.log = kvtd_tier_log;
	tc.log_arg = (void *)"gpu tier";
	tc.paths = paths;
	tc.epoch = d->epoch;
	ret = g->ops->open(&tc, &g->t);
	if (ret == 0)
		ret = g->ops->export_desc(g->t, &g->desc, sizeof(g->desc));
	if (ret < 0) {
		/* The host and NVMe tiers work without it: say so loudly and go on. */
		kvtd_log(KVTD_LOG_WARN,
			 "gpu.capacity = %llu but %s: running without the GPU tier (%s)",
			 (unsigned long long)d->cfg.gpu_capacity,
			 ret == -ENODEV ? (kvt_gpu_available() ? "no such GPU" : "no GPU")
					: "the GPU pool could not be created",
			 strerror(-ret));
		if (g->t)
			g->ops->close(g->t);
		free(g->of_blk);
		free(g);
		d->gpu_err = ret;
		return 0;
	}
	kvt_gpu_uuid_format(g->desc.uuid, g->uuid);
	g->bits = !strcmp(d->cfg.gpu_codec, "int8") ? 8 : !strcmp(d->cfg.gpu_codec, "int4") ? 4 : 0;
	d->gpu = g;
	x->t = g->t;
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
			g->ops->mem_unregister(g->t, g->reg[k]);
	}
	g->ops->close(g->t);
	d->tier_at[KVTD_TIER_GPU]->t = NULL;
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
	ret = g->ops->mem_register(g->t, t->base, t->size);
	if (ret < 0) {
		kvtd_log(KVTD_LOG_ERR, "gpu tier: cannot register the arena of uid %u: %s", t->uid,
			 strerror(-ret));
		return ret;
	}
	g->reg[ti] = t->base;
	d->tenants[ti]->gpu_reg = true;
	return 0;
}

/* Synchronous copy between pool entry e and host memory at p (down: pool -> host, a
 * quantized copy dequantized on the way). */
static int pool_move(struct kvtd *d, uint32_t e, void *p, bool down)
{
	struct kvtd_gpu *g = d->gpu;
	const struct gpu_ent *x = E(g, e);
	struct kvt_tier_io io = {0};
	int ret;

	io.loc = x->loc;
	io.buf = p;
	io.len = x->len;
	if (down && x->q.qp.bits) {
		io.xform = &x->q;
		io.len = (uint32_t)x->q.raw_bytes;
	}
	ret = down ? g->ops->read(g->t, &io) : g->ops->write(g->t, &io);
	if (ret < 0)
		return ret;
	g->ops->complete(g->t);
	return io.res < 0 ? io.res : 0;
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
	ret = pool_move(d, e, kvtd_host_at(d, t, (uint64_t)off), true);
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
	const struct kvtd_tier *x = d->tier_at[KVTD_TIER_GPU];
	uint32_t i = d->ix.lru_tail[KVTD_TIER_GPU];
	uint32_t e;
	int ret;

	if (i == KVTD_NIL)
		return -ENOSPC;
	e = ent_of(d, i);
	if (e == KVTD_NIL) {
		kvtd_lru_unlink(&d->ix, KVTD_TIER_GPU, i);
		return 0;
	}
	g->st.evictions++;
	if (!kvtd_copy_elsewhere(d, i, x)) {
		/* Down the list: the next tier takes a copy (the host: kvtd_gpu_copy_down). */
		struct kvtd_tier *below = kvtd_tier_below(d, x);

		ret = below && below->cls->take ? below->cls->take(d, i, false) : -ENOSPC;
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
	lru_unlink(d, e);
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
	if (in_lru(d, e))
		lru_push(d, e);
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
		/* a record of the host chain stays on the host: device gets decode it there */
		if (b->gen != gen || b->state != KVTD_BLK_READY || !b->on_host || b->hchain ||
		    ent_of(d, i) != KVTD_NIL)
			continue;
		t = kvtd_tenant_of(d, b);
		if (arena_ready(d, t, b->tenant) < 0)
			continue;
		/* A promotion takes free room only: it never pushes other blocks out. */
		if (ent_new(d, i, b->len, &e) < 0)
			continue;
		if (pool_move(d, e, kvtd_host_at(d, t, b->off), false) < 0) {
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
	d->gpu->ops->stats(d->gpu->t, &ts);
	st->capacity = d->gpu->desc.bytes;
	st->used = ts.used_bytes;
	*uuid = d->gpu->uuid;
}

int kvtd_gpu_copy_down(struct kvtd *d, uint32_t i, bool bg)
{
	uint32_t e = ent_of(d, i);

	(void)bg;
	if (e == KVTD_NIL || E(d->gpu, e)->state != ENT_READY)
		return -ENOENT;
	return copy_down(d, i, e);
}

/* ---------------------------------------------------------------------------------------
 * The GPU tier's entry in the tier list
 */
static bool gpu_has(struct kvtd *d, uint32_t i)
{
	return kvtd_gpu_has(d, i);
}

static void gpu_usage(struct kvtd *d, uint64_t *used, uint64_t *leaving, uint64_t *cap)
{
	struct kvt_tier_stats st;

	d->gpu->ops->stats(d->gpu->t, &st);
	*used = st.used_bytes;
	*leaving = 0;
	*cap = d->gpu->desc.bytes;
}

static int gpu_evict(struct kvtd *d, bool bg)
{
	(void)bg;
	return evict_one(d);
}

const struct kvtd_tier_class kvtd_gpu_class = {
    .name = "gpu",
    .id = KVTD_TIER_GPU,
    .ops = &kvt_tier_gpu_ops,
    .high_off = offsetof(struct kvtd_config, gpu_high),
    .low_off = offsetof(struct kvtd_config, gpu_low),
    .open = NULL, /* kvtd_gpu_init, after the fork: a CUDA context does not survive it */
    .has = gpu_has,
    .tick = kvtd_gpu_sweep,
    .usage = gpu_usage,
    .evict_one = gpu_evict,
    .take_from = -1,
};
