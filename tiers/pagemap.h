/* SPDX-License-Identifier: MIT */
/*
 * pagemap.h - the arena allocator: one bit per 4 KiB page, lowest-address first fit.
 *
 * Blocks of one engine mostly share one size, so runs of freed pages are reused whole and
 * fragmentation stays low; the state lives in daemon memory, never in the shared arena, so a
 * client scribbling over the arena cannot corrupt it.
 */
#ifndef KVTD_PAGEMAP_H
#define KVTD_PAGEMAP_H

#include <stdint.h>

#define KVTD_PAGE_SHIFT 12
#define KVTD_PAGE_SIZE	(1u << KVTD_PAGE_SHIFT)

struct kvtd_pagemap {
	uint64_t *bits; /* 1 = used; bits past npages are set */
	uint64_t npages;
	uint64_t nfree;
	uint64_t cursor; /* no free page below it */
};

/* Returns 0 or -ENOMEM. */
int kvtd_pagemap_init(struct kvtd_pagemap *m, uint64_t npages);
void kvtd_pagemap_fini(struct kvtd_pagemap *m);
/* First page of n free consecutive pages, now used; -ENOSPC when no run is long enough. */
int64_t kvtd_pagemap_alloc(struct kvtd_pagemap *m, uint64_t n);
/* Frees pages [first, first + n); they must be in use (checked: returns -EINVAL if not). */
int kvtd_pagemap_free(struct kvtd_pagemap *m, uint64_t first, uint64_t n);
/* 1 when every page of [first, first + n) is in use, 0 when none is, -1 if mixed or out of
 * range. */
int kvtd_pagemap_state(const struct kvtd_pagemap *m, uint64_t first, uint64_t n);

static inline uint64_t kvtd_pages(uint64_t bytes)
{
	return (bytes + KVTD_PAGE_SIZE - 1) >> KVTD_PAGE_SHIFT;
}

#endif
