/* SPDX-License-Identifier: MIT */
/*
 * pagemap.c - the host tier's page allocator (pagemap.h): one bit per 4 KiB page, lowest
 * address first.
 */
#include <errno.h>
#include <stdlib.h>

#include "pagemap.h"

/* Sets (val 1) or clears (val 0) bits [i, i + n). */
static void set_range(uint64_t *b, uint64_t i, uint64_t n, int val)
{
	while (n) {
		unsigned sh = (unsigned)(i & 63);
		uint64_t cnt = 64 - sh < n ? 64 - sh : n;
		uint64_t mask = (cnt == 64 ? ~0ull : ((1ull << cnt) - 1)) << sh;

		if (val)
			b[i >> 6] |= mask;
		else
			b[i >> 6] &= ~mask;
		i += cnt;
		n -= cnt;
	}
}

/* All bits [i, i + n) equal to val? */
static int range_is(const uint64_t *b, uint64_t i, uint64_t n, int val)
{
	while (n) {
		unsigned sh = (unsigned)(i & 63);
		uint64_t cnt = 64 - sh < n ? 64 - sh : n;
		uint64_t mask = (cnt == 64 ? ~0ull : ((1ull << cnt) - 1)) << sh;
		uint64_t w = b[i >> 6] & mask;

		if (val ? w != mask : w != 0)
			return 0;
		i += cnt;
		n -= cnt;
	}
	return 1;
}

int kvtd_pagemap_init(struct kvtd_pagemap *m, uint64_t npages)
{
	uint64_t words = (npages + 63) / 64;

	m->bits = calloc(words ? words : 1, sizeof(uint64_t));
	if (!m->bits)
		return -ENOMEM;
	m->npages = npages;
	m->nfree = npages;
	m->cursor = 0;
	if (npages & 63)
		set_range(m->bits, npages, words * 64 - npages, 1);
	return 0;
}

void kvtd_pagemap_fini(struct kvtd_pagemap *m)
{
	free(m->bits);
	m->bits = NULL;
	m->npages = m->nfree = 0;
}

/* First run of n clear bits inside [start, end), or -1. */
static int64_t find_run(const uint64_t *b, uint64_t start, uint64_t end, uint64_t n)
{
	uint64_t p = start, run = 0, first = start;

	while (p < end) {
		uint64_t w = b[p >> 6];

		if (!(p & 63) && p + 64 <= end && (w == ~0ull || w == 0)) {
			/* Whole words at a time: a full word ends a run, an empty one extends it.
			 */
			if (w) {
				run = 0;
			} else {
				if (!run)
					first = p;
				run += 64;
			}
			p += 64;
		} else {
			if ((w >> (p & 63)) & 1) {
				run = 0;
			} else {
				if (!run)
					first = p;
				run++;
			}
			p++;
		}
		if (run >= n)
			return (int64_t)first;
	}
	return -1;
}

int64_t kvtd_pagemap_alloc(struct kvtd_pagemap *m, uint64_t n)
{
	int64_t at;

	if (!n || n > m->nfree)
		return -ENOSPC;
	/*
	 * Lowest address first: freed extents are reused before untouched ones, so the arena
	 * pages that clients have already mapped stay the ones in use (a fresh 2 MiB of
	 * shared memory costs a client a millisecond or more on first touch).  The search
	 * starts at the first word that may hold a free page.
	 */
	at = find_run(m->bits, m->cursor & ~(uint64_t)63, m->npages, n);
	if (at < 0)
		return -ENOSPC;
	set_range(m->bits, (uint64_t)at, n, 1);
	m->nfree -= n;
	if ((uint64_t)at == m->cursor)
		m->cursor = (uint64_t)at + n;
	return at;
}

int kvtd_pagemap_free(struct kvtd_pagemap *m, uint64_t first, uint64_t n)
{
	if (!n || first >= m->npages || n > m->npages - first)
		return -EINVAL;
	/* Always on: a double free here would hand one extent to two blocks. */
	if (!range_is(m->bits, first, n, 1))
		return -EINVAL;
	set_range(m->bits, first, n, 0);
	m->nfree += n;
	if (first < m->cursor)
		m->cursor = first;
	return 0;
}

int kvtd_pagemap_state(const struct kvtd_pagemap *m, uint64_t first, uint64_t n)
{
	if (!n || first >= m->npages || n > m->npages - first)
		return -1;
	if (range_is(m->bits, first, n, 1))
		return 1;
	return range_is(m->bits, first, n, 0) ? 0 : -1;
}
