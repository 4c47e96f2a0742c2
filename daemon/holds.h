/* SPDX-License-Identifier: MIT */
/*
 * holds.h - a client's holds: reservations, leases and pins (holds.c).
 */
#ifndef KVTD_HOLDS_H
#define KVTD_HOLDS_H

#include <stdbool.h>
#include <stdint.h>

struct kvtd;
struct client;
struct hold;

/* A new hold of kind (HOLD_*) on block blk of generation blk_gen: 0 and its handle in
 * *handle, or -KVT_ELIMIT (MAX_HOLDS) or -ENOMEM. */
int hold_add(struct client *c, uint32_t blk, uint32_t blk_gen, uint8_t kind, uint64_t *handle);
/* c's hold of kind behind handle, or NULL when the handle is not one. */
struct hold *hold_get(struct client *c, uint64_t handle, uint8_t kind);
void hold_put(struct client *c, struct hold *ho);
/* Whether the hold's block is still the one it was taken on. */
bool hold_valid(struct kvtd *d, const struct hold *ho);
/* The accounting of a lease of block i granted to c, whichever tier serves it. */
void lease_granted(struct kvtd *d, struct client *c, uint32_t i);
/* A lease of block i ended (its hold is the caller's). */
void lease_drop(struct kvtd *d, uint32_t i);
/* 0 when c's tenant may pin or lease block i too, or -KVT_ELIMIT (host.tenant_hold_max). */
int hold_quota(struct kvtd *d, struct client *c, uint32_t i);
/* Returns everything c held: unfinished puts vanish, leases and pins are dropped. */
void client_release_all(struct kvtd *d, struct client *c);

#endif
