/* SPDX-License-Identifier: MIT */
/*
 * nvme_alloc.h - page-granular extent allocator used by the NVMe tier for slot files and for
 * its registered I/O-buffer arena.  Internal to tiers/; not thread-safe (the tier calls it
 * from the daemon's event-loop thread only).
 *
 * One bit per page, next-fit: allocations walk forward from the end of the previous one, so
 * a fresh file fills sequentially (the layout fio measures) and freed holes are reused once
 * the cursor wraps.
 */
#ifndef KVT_NVME_ALLOC_H
#define KVT_NVME_ALLOC_H

#include <stdint.h>

struct nv_alloc {
	uint64_t *bits; /* 1 = page in use */
	uint64_t npages;
	uint64_t nfree;
	uint64_t cursor;
};

/* Returns 0 or -ENOMEM. All pages start free. */
int nv_alloc_init(struct nv_alloc *a, uint64_t npages);
void nv_alloc_destroy(struct nv_alloc *a);

/* Reserves n contiguous pages; returns the first page index, or -ENOSPC / -EINVAL (n == 0). */
int64_t nv_alloc_get(struct nv_alloc *a, uint64_t n);

/* Marks [page, page+n) used (recovery). -EINVAL out of range, -EEXIST if any page is in use
 * (nothing changes then). */
int nv_alloc_mark(struct nv_alloc *a, uint64_t page, uint64_t n);

/* Releases [page, page+n). -EINVAL out of range or if any page is not in use (nothing
 * changes then: a double free must never hand the same pages out twice). */
int nv_alloc_put(struct nv_alloc *a, uint64_t page, uint64_t n);

/* 1 if every page of [page, page+n) is in use, 0 if none is, -1 if mixed or out of range. */
int nv_alloc_state(const struct nv_alloc *a, uint64_t page, uint64_t n);

#endif
