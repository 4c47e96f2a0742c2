/* SPDX-License-Identifier: MIT */
/* index.c - the block index and its per-tier LRU lists (index.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "index.h"

static inline uint32_t slot_of(const struct kvtd_index *ix, uint64_t lo, uint64_t hi)
{
	/* Keys are hash outputs already; fold both halves so either may be engine-made. */
	uint64_t h = (lo ^ (hi * 0x9e3779b97f4a7c15ull));

	return (uint32_t)(h ^ (h >> 32)) & ix->mask;
}

int kvtd_index_init(struct kvtd_index *ix, uint32_t max_blocks)
{
	uint32_t nb = 1024;

	memset(ix, 0, sizeof(*ix));
	while (nb < max_blocks && nb < (1u << 31))
		nb <<= 1;
	ix->bucket = malloc((size_t)nb * sizeof(uint32_t));
	if (!ix->bucket)
		return -ENOMEM;
	memset(ix->bucket, 0xff, (size_t)nb * sizeof(uint32_t));
	ix->mask = nb - 1;
	ix->max = max_blocks;
	ix->free_head = KVTD_NIL;
	for (int l = 0; l < KVTD_NTIERS; l++)
		ix->lru_head[l] = ix->lru_tail[l] = KVTD_NIL;
	return 0;
}

void kvtd_index_fini(struct kvtd_index *ix)
{
	free(ix->bucket);
	free(ix->blk);
	memset(ix, 0, sizeof(*ix));
}

uint32_t kvtd_index_find(const struct kvtd_index *ix, uint64_t lo, uint64_t hi)
{
	for (uint32_t i = ix->bucket[slot_of(ix, lo, hi)]; i != KVTD_NIL; i = ix->blk[i].next) {
		if (ix->blk[i].key_lo == lo && ix->blk[i].key_hi == hi)
			return i;
	}
	return KVTD_NIL;
}

static uint32_t entry_alloc(struct kvtd_index *ix)
{
	uint32_t i;

	if (ix->free_head != KVTD_NIL) {
		i = ix->free_head;
		ix->free_head = ix->blk[i].next;
		return i;
	}
	if (ix->used == ix->cap) {
		uint32_t ncap = ix->cap ? ix->cap * 2 : 4096;
		struct kvtd_blk *n;

		if (ix->cap >= ix->max)
			return KVTD_NIL;
		if (ncap > ix->max)
			ncap = ix->max;
		n = realloc(ix->blk, (size_t)ncap * sizeof(*n));
		if (!n)
			return KVTD_NIL;
		memset(n + ix->cap, 0, (size_t)(ncap - ix->cap) * sizeof(*n));
		ix->blk = n;
		ix->cap = ncap;
	}
	return ix->used++;
}

uint32_t kvtd_index_insert(struct kvtd_index *ix, uint64_t lo, uint64_t hi)
{
	uint32_t i = entry_alloc(ix), s, gen;
	struct kvtd_blk *b;

	if (i == KVTD_NIL)
		return KVTD_NIL;
	b = &ix->blk[i];
	gen = b->gen;
	memset(b, 0, sizeof(*b));
	b->gen = gen;
	b->key_lo = lo;
	b->key_hi = hi;
	for (int l = 0; l < KVTD_NTIERS; l++)
		b->lru_prev[l] = b->lru_next[l] = KVTD_NIL;
	b->waiters = KVTD_NIL;
	b->geom = KVTD_NIL;
	s = slot_of(ix, lo, hi);
	b->next = ix->bucket[s];
	ix->bucket[s] = i;
	b->hashed = 1;
	ix->count++;
	return i;
}

void kvtd_index_unhash(struct kvtd_index *ix, uint32_t i)
{
	struct kvtd_blk *b = &ix->blk[i];
	uint32_t *pp;

	if (!b->hashed)
		return;
	for (pp = &ix->bucket[slot_of(ix, b->key_lo, b->key_hi)]; *pp != KVTD_NIL;
	     pp = &ix->blk[*pp].next) {
		if (*pp == i) {
			*pp = b->next;
			b->hashed = 0;
			ix->count--;
			return;
		}
	}
}

void kvtd_lru_unlink(struct kvtd_index *ix, int l, uint32_t i)
{
	struct kvtd_blk *b = &ix->blk[i];

	if (!b->in_lru[l])
		return;
	if (b->lru_prev[l] != KVTD_NIL)
		ix->blk[b->lru_prev[l]].lru_next[l] = b->lru_next[l];
	else
		ix->lru_head[l] = b->lru_next[l];
	if (b->lru_next[l] != KVTD_NIL)
		ix->blk[b->lru_next[l]].lru_prev[l] = b->lru_prev[l];
	else
		ix->lru_tail[l] = b->lru_prev[l];
	b->lru_prev[l] = b->lru_next[l] = KVTD_NIL;
	b->in_lru[l] = 0;
}

void kvtd_lru_push(struct kvtd_index *ix, int l, uint32_t i)
{
	struct kvtd_blk *b = &ix->blk[i];

	kvtd_lru_unlink(ix, l, i);
	b->lru_prev[l] = KVTD_NIL;
	b->lru_next[l] = ix->lru_head[l];
	if (ix->lru_head[l] != KVTD_NIL)
		ix->blk[ix->lru_head[l]].lru_prev[l] = i;
	else
		ix->lru_tail[l] = i;
	ix->lru_head[l] = i;
	b->in_lru[l] = 1;
}

void kvtd_index_remove(struct kvtd_index *ix, uint32_t i)
{
	struct kvtd_blk *b = &ix->blk[i];

	kvtd_index_unhash(ix, i);
	for (int l = 0; l < KVTD_NTIERS; l++)
		kvtd_lru_unlink(ix, l, i);
	b->state = KVTD_BLK_FREE;
	b->gen++;
	b->next = ix->free_head;
	ix->free_head = i;
}
