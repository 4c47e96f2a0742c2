/* SPDX-License-Identifier: MIT */
/*
 * place_int.h - what the placement files share, and nothing else includes: placement.c
 * (block state and accounting, geometries, index room), tierlist.c (the tier list and the
 * watermark pass), host_place.c (the host tier), demote.c (host -> NVMe), promote.c (NVMe ->
 * host, waiters, prefetch), nvme_place.c (the NVMe tier: setup, space, recovery) and
 * gpu_place.c (the GPU tier).
 */
#ifndef KVTD_PLACE_INT_H
#define KVTD_PLACE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "daemon.h"

/* A demotion or promotion in flight: the tier request, the codec job, the record buffer. */
struct pend_io {
	struct kvt_tier_io io;
	struct kvtd_cjob job; /* codec work on a codec_pool worker */
	struct kvtd *d;
	uint32_t blk, gen;
	uint8_t kind; /* KVTD_IO_DEMOTE or KVTD_IO_PROMOTE */
	uint8_t keep_host;
	uint8_t prefetch;  /* a promotion nobody waited for when it started */
	uint8_t loc_freed; /* demotion: the block went, io.loc was freed before the write ended */
	void *buf;
	size_t cap; /* bytes at buf */
	/* The codec job: demotion encodes src into buf, promotion decodes buf into dst. */
	const struct kvt_chain *chain;
	struct kvt_codec_geom g;
	const uint8_t *src;
	uint8_t *dst;
	uint32_t len;	   /* the block's raw bytes */
	uint32_t enc_len;  /* promotion: payload bytes to decode */
	ssize_t n;	   /* the codec's result */
	uint64_t dst_off;  /* promotion: arena extent decoded into */
	struct tenant *t;  /* ...of this tenant */
	uint64_t encoding; /* host bytes counted in d->host_encoding */
	uint32_t hchain;   /* demotion: the block's record of this host chain, written as is */
};

#define PEND_OF_JOB(j) ((struct pend_io *)((char *)(j)-offsetof(struct pend_io, job)))

static inline struct kvtd_blk *B(struct kvtd *d, uint32_t i)
{
	return kvtd_blk(&d->ix, i);
}

/* NVMe usable: open and its records recovered (the recovery scan owns it until then). */
static inline bool nvme_on(const struct kvtd *d)
{
	return d->nvme != NULL && !d->nvme_recovering;
}

/* placement.c */
void kvtd_set_host(struct kvtd *d, struct kvtd_blk *b, bool on);
void kvtd_set_nvme(struct kvtd *d, struct kvtd_blk *b, bool on);
void kvtd_fix_tier(struct kvtd_blk *b);
const struct kvt_codec_geom *kvtd_geom_of(struct kvtd *d, uint32_t i);

/* host_place.c */
extern const struct kvtd_tier_class kvtd_host_class;
/* Frees block i's host copy; punch: its pages may go back to the host (several tenants). */
void kvtd_host_free_copy(struct kvtd *d, uint32_t i, bool punch);
/* The address of t's arena at off. */
uint8_t *kvtd_host_at(struct kvtd *d, const struct tenant *t, uint64_t off);

/* nvme_place.c */
extern const struct kvtd_tier_class kvtd_nvme_class;
void kvtd_nvme_free_copy(struct kvtd *d, uint32_t i);
/* A slot of len bytes, evicting the NVMe LRU tail while it is full.  0 or -errno. */
int kvtd_nvme_alloc(struct kvtd *d, uint32_t len, struct kvt_tier_loc *loc);

/* demote.c */
/* A demotion in flight of a block that goes: its slot is freed now. */
void kvtd_demote_forget(struct kvtd *d, struct kvtd_blk *b);
/* Writes block i to NVMe (see demote.c).  0 or -errno (nothing changed). */
int kvtd_demote(struct kvtd *d, uint32_t i, bool keep_host, bool raw);
/* A geometry whose raw block is exactly len bytes (demote.c), for storing blocks raw that no
 * layout geometry describes.  False when len cannot be split so. */
bool kvtd_raw_geom_for(uint32_t len, struct kvt_codec_geom *g);
/* The NVMe class's take: a block leaving the host tier is written down (or refused). */
int kvtd_nvme_take(struct kvtd *d, uint32_t i, bool bg);
void kvtd_pend_free(struct kvtd *d, struct pend_io *p);

/* promote.c */
/* Finishes every get waiting for block i (err 0: lease it now). */
void kvtd_wake_all(struct kvtd *d, uint32_t i, int err);
/* The NVMe class's promote: a get of a block on NVMe only. */
int kvtd_nvme_promote(struct kvtd *d, uint32_t client_id, uint64_t user_data, uint32_t i);

/* gpu_place.c */
extern const struct kvtd_tier_class kvtd_gpu_class;
/* The host class's take: block i, leaving the GPU pool, gets a host copy.  0 or -errno. */
int kvtd_gpu_copy_down(struct kvtd *d, uint32_t i, bool bg);

#endif
