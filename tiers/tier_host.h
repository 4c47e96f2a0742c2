/* SPDX-License-Identifier: MIT */
/*
 * tier_host.h - the host tier (tier_host.c): ranges of host memory the daemon shares with its
 * clients, behind the common tier interface (tier.h).
 *
 * The memory is not the tier's: the daemon maps each tenant's arena (a memfd) and attach()es
 * it as one file of the tier; alloc() places a range in the file named by out->file on entry,
 * lowest address first (pagemap.h), within conf->capacity_bytes over all files together
 * (-ENOSPC past it, or when the file has no run of free pages long enough: the daemon tells
 * the two apart by stats().used_bytes).  Ranges are whole 4 KiB pages: loc->len is the
 * rounded size.  addr() is the address of a range, for the daemon's codecs and copies, which
 * work on the memory in place; read() and write() copy between a range and io->buf and
 * complete at once (done() from the next complete()).  free() of a range not in use is a
 * broken invariant (one range handed to two blocks): logged, then abort().  discard() punches
 * freed pages out of the memfd (FALLOC_FL_PUNCH_HOLE) so that the memory returns to the host;
 * the daemon decides when (never in an arena registered with CUDA).  The tier knows nothing of
 * tenants, clients, keys or eviction.  One thread drives it (the daemon's event loop).
 */
#ifndef KVT_TIER_HOST_H
#define KVT_TIER_HOST_H

#include "tier.h"

#ifdef __cplusplus
extern "C" {
#endif

extern const struct kvt_tier_ops kvt_tier_host_ops;

#ifdef __cplusplus
}
#endif
#endif
