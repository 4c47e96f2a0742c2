/* SPDX-License-Identifier: MIT */
#include "nvme_alloc.h"

#include <errno.h>
#include <stdlib.h>

/* Sets or clears [i, i+n) a word at a time. */
static void bits_fill(struct nv_alloc *a, uint64_t i, uint64_t n, int set)
{
	while (n) {
		uint64_t b = i & 63, take = 64 - b;
		uint64_t m;

		if (take > n)
			take = n;
		m = (take == 64 ? ~0ull : ((1ull << take) - 1)) << b;
		if (set)
			a->bits[i >> 6] |= m;
		else
			a->bits[i >> 6] &= ~m;
		i += take;
		n -= take;
	}
}

/* First index in [i, lim) whose bit equals want, or lim. */
static uint64_t bits_find(const struct nv_alloc *a, uint64_t i, uint64_t lim, int want)
{
	while (i < lim) {
		uint64_t w = a->bits[i >> 6];

		if (!want)
			w = ~w;
		w &= ~0ull << (i & 63);
		if (w) {
			uint64_t r = (i & ~63ull) + (uint64_t)__builtin_ctzll(w);

			return r < lim ? r : lim;
		}
		i = (i & ~63ull) + 64;
	}
	return lim;
}

int nv_alloc_init(struct nv_alloc *a, uint64_t npages)
{
	uint64_t words = (npages + 63) / 64;

	a->bits = calloc(words ? words : 1, sizeof(uint64_t));
	if (!a->bits)
		return -ENOMEM;
	a->npages = npages;
	a->nfree = npages;
	a->cursor = 0;
	/* Bits past npages stay set so that no search ever returns them. */
	if (npages & 63)
		a->bits[words - 1] |= ~0ull << (npages & 63);
	return 0;
}

void nv_alloc_destroy(struct nv_alloc *a)
{
	free(a->bits);
	a->bits = NULL;
	a->npages = a->nfree = a->cursor = 0;
}

static int64_t find_run(const struct nv_alloc *a, uint64_t start, uint64_t end, uint64_t n)
{
	uint64_t i = start;

	while (i < end && end - i >= n) {
		uint64_t used;

		i = bits_find(a, i, end, 0);
		if (i >= end || end - i < n)
			break;
		used = bits_find(a, i, i + n, 1);
		if (used == i + n)
			return (int64_t)i;
		i = used;
	}
	return -ENOSPC;
}

int64_t nv_alloc_get(struct nv_alloc *a, uint64_t n)
{
	int64_t r;
	uint64_t lim;

	if (!n || n > a->npages)
		return n ? -ENOSPC : -EINVAL;
	if (n > a->nfree)
		return -ENOSPC;
	r = find_run(a, a->cursor, a->npages, n);
	if (r < 0) {
		/* Wrapped search: runs may start before the cursor and cross it. */
		lim = a->cursor + n - 1;
		if (lim > a->npages)
			lim = a->npages;
		r = find_run(a, 0, lim, n);
	}
	if (r < 0)
		return r;
	bits_fill(a, (uint64_t)r, n, 1);
	a->nfree -= n;
	a->cursor = (uint64_t)r + n;
	if (a->cursor >= a->npages)
		a->cursor = 0;
	return r;
}

int nv_alloc_state(const struct nv_alloc *a, uint64_t page, uint64_t n)
{
	uint64_t f;

	if (!n || page >= a->npages || n > a->npages - page)
		return -1;
	f = bits_find(a, page, page + n, 0);
	if (f == page + n)
		return 1;
	if (f == page && bits_find(a, page, page + n, 1) == page + n)
		return 0;
	return -1;
}

int nv_alloc_mark(struct nv_alloc *a, uint64_t page, uint64_t n)
{
	int s = nv_alloc_state(a, page, n);

	if (!n || page >= a->npages || n > a->npages - page)
		return -EINVAL;
	if (s != 0)
		return -EEXIST;
	bits_fill(a, page, n, 1);
	a->nfree -= n;
	return 0;
}

int nv_alloc_put(struct nv_alloc *a, uint64_t page, uint64_t n)
{
	if (nv_alloc_state(a, page, n) != 1)
		return -EINVAL;
	bits_fill(a, page, n, 0);
	a->nfree += n;
	return 0;
}
