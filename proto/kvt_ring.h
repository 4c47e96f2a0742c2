/* SPDX-License-Identifier: MIT */
/*
 * kvt_ring.h - the SPSC ring discipline shared by both sides (layout in kvt_shm.h).
 *
 * One producer and one consumer per ring.  The producer writes an entry, then publishes it
 * with a release store of tail; the consumer reads tail with an acquire load (pairs with
 * that store), copies the entry out, then frees the slot with a release store of head,
 * which the producer reads with an acquire load before reusing the slot.  The sleeping
 * side sets KVT_RING_NEED_WAKEUP, issues a full fence and re-checks the ring; the
 * producing side publishes tail, issues a full fence and then reads the flag, so at least
 * one of the two sees the other (the pattern of io_uring's SQ_NEED_WAKEUP).
 */
#ifndef KVT_RING_H
#define KVT_RING_H

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "kvt_shm.h"

static inline void kvt_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* Producer: entries the consumer has not freed yet (may exceed entries if hostile). */
static inline uint32_t kvt_ring_pending(struct kvt_ring_ctl *r, uint32_t my_tail)
{
	/* acquire: pairs with the consumer's release store of head */
	return my_tail - atomic_load_explicit(&r->head, memory_order_acquire);
}

/* Producer: make entries up to new_tail visible to the consumer. */
static inline void kvt_ring_publish(struct kvt_ring_ctl *r, uint32_t new_tail)
{
	/* release: pairs with the consumer's acquire load of tail */
	atomic_store_explicit(&r->tail, new_tail, memory_order_release);
}

/* Producer, after publishing: does the consumer want a wake-up? */
static inline int kvt_ring_needs_wakeup(struct kvt_ring_ctl *r)
{
	/* full fence: orders our tail store before the flag load (pairs with the consumer's
	 * fence between its flag store and its tail re-check) */
	atomic_thread_fence(memory_order_seq_cst);
	return atomic_load_explicit(&r->flags, memory_order_relaxed) & KVT_RING_NEED_WAKEUP;
}

/* Consumer: current producer tail. */
static inline uint32_t kvt_ring_tail(struct kvt_ring_ctl *r)
{
	/* acquire: pairs with kvt_ring_publish() */
	return atomic_load_explicit(&r->tail, memory_order_acquire);
}

/* Consumer: free the slots before new_head. */
static inline void kvt_ring_consume(struct kvt_ring_ctl *r, uint32_t new_head)
{
	/* release: pairs with the producer's acquire load in kvt_ring_pending() */
	atomic_store_explicit(&r->head, new_head, memory_order_release);
}

/* Consumer, before sleeping: announce it; returns the tail to re-check against. */
static inline uint32_t kvt_ring_prepare_sleep(struct kvt_ring_ctl *r)
{
	atomic_store_explicit(&r->flags, KVT_RING_NEED_WAKEUP, memory_order_relaxed);
	/* full fence: pairs with the one in kvt_ring_needs_wakeup() */
	atomic_thread_fence(memory_order_seq_cst);
	return atomic_load_explicit(&r->tail, memory_order_acquire);
}

static inline void kvt_ring_awake(struct kvt_ring_ctl *r)
{
	atomic_store_explicit(&r->flags, 0, memory_order_relaxed);
}

#endif
