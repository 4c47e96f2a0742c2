/* SPDX-License-Identifier: MIT */
/*
 * kvt_shm.h - the shared-memory ABI between kvtierd and a client (spec: proto/SHM.md).
 *
 * Each client gets two memfds from the daemon at the handshake:
 *   - its ring memfd (private to that client): a header, the submission ring (client →
 *     daemon), the completion ring (daemon → client) and a scratch area for request
 *     arguments larger than a ring entry (lookup key lists);
 *   - its tenant's arena memfd (shared by the clients of one uid): block data.
 * Everything is little-endian, fixed width, addressed by offsets, never pointers.  The
 * daemon validates every value it reads from shared memory: a client may be hostile.
 */
#ifndef KVT_SHM_H
#define KVT_SHM_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define KVT_SHM_MAGIC	 0x53545659u /* "YVTS" on disk: 'Y','V','T','S' little-endian */
#define KVT_SHM_VERSION	 2u	     /* 2: RESERVE names the chain of the bytes; LEASE answers it */
#define KVT_SHM_COMPAT	 2u	     /* oldest version a reader of this layout must understand */
#define KVT_SHM_HDR_SIZE 256u
#define KVT_CACHELINE	 64u

/* Feature bits in kvt_shm_hdr.features. */
#define KVT_SHM_F_NEED_WAKEUP 0x1u /* rings use the NEED_WAKEUP protocol below */

struct kvt_shm_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t compat;
	uint32_t hdr_size;
	uint32_t features;
	uint32_t total_size; /* bytes of the ring memfd */
	uint32_t sq_off;     /* struct kvt_ring_ctl, then sq_entries × struct kvt_sqe */
	uint32_t sq_entries; /* power of two */
	uint32_t sqe_size;
	uint32_t cq_off; /* struct kvt_ring_ctl, then cq_entries × struct kvt_cqe */
	uint32_t cq_entries;
	uint32_t cqe_size;
	uint32_t scratch_off; /* request arguments, e.g. lookup keys */
	uint32_t scratch_size;
	uint32_t pad;
	uint64_t arena_size; /* bytes of the arena memfd */
	uint64_t epoch;	     /* daemon instance; changes on every daemon start */
	uint8_t reserved[KVT_SHM_HDR_SIZE - 72];
};
_Static_assert(sizeof(struct kvt_shm_hdr) == KVT_SHM_HDR_SIZE, "shm header is an ABI");
_Static_assert(offsetof(struct kvt_shm_hdr, hdr_size) == 8 &&
		   offsetof(struct kvt_shm_hdr, total_size) == 16 &&
		   offsetof(struct kvt_shm_hdr, sq_off) == 20 &&
		   offsetof(struct kvt_shm_hdr, cq_off) == 32 &&
		   offsetof(struct kvt_shm_hdr, scratch_off) == 44 &&
		   offsetof(struct kvt_shm_hdr, arena_size) == 56 &&
		   offsetof(struct kvt_shm_hdr, epoch) == 64 &&
		   offsetof(struct kvt_shm_hdr, reserved) == 72,
	       "shm header is an ABI");

/*
 * Ring control block: producer index, consumer index and flags on separate cache lines so
 * the two sides never false-share.  Indices are free-running u32, masked by entries - 1.
 */
struct kvt_ring_ctl {
	_Alignas(KVT_CACHELINE) _Atomic uint32_t tail; /* written by the producer */
	_Alignas(KVT_CACHELINE) _Atomic uint32_t head; /* written by the consumer */
	_Alignas(KVT_CACHELINE) _Atomic uint32_t flags;
};
_Static_assert(sizeof(struct kvt_ring_ctl) == 3 * KVT_CACHELINE, "ring control is an ABI");
_Static_assert(offsetof(struct kvt_ring_ctl, tail) == 0 &&
		   offsetof(struct kvt_ring_ctl, head) == KVT_CACHELINE &&
		   offsetof(struct kvt_ring_ctl, flags) == 2 * KVT_CACHELINE,
	       "ring control is an ABI");

/*
 * flags: KVT_RING_NEED_WAKEUP is set by the consumer before it sleeps; a producer that sees
 * it after publishing tail (with a full fence between the two) signals the ring's eventfd.
 */
#define KVT_RING_NEED_WAKEUP 0x1u

/* Submission entry: one request. */
enum kvt_op {
	KVT_OP_NOP = 0,
	KVT_OP_RESERVE = 1, /* key, len, chain, raw_len → off, handle */
	KVT_OP_COMMIT = 2,  /* handle */
	KVT_OP_ABORT = 3,   /* handle */
	KVT_OP_LEASE = 4,   /* key → off, len (res), handle, flags = chain id */
	KVT_OP_RELEASE = 5, /* handle */
	KVT_OP_LOOKUP = 6,  /* len keys at scratch + arg → count (res) */
	KVT_OP_DELETE = 7,  /* key */
	KVT_OP_PIN = 8,	    /* key */
	KVT_OP_UNPIN = 9,   /* key */
	KVT_OP_PREFETCH =
	    10, /* key, len = priority 0..3, arg = deadline in µs from now (0: none) */
	KVT_OP_MAX
};

#define KVT_SQE_F_NO_CQE 0x1u /* post no completion (fire and forget: RELEASE) */

struct kvt_sqe {
	uint8_t op;
	uint8_t flags;
	uint16_t layout; /* layout id registered by this client */
	uint32_t len;	 /* RESERVE: block bytes; LOOKUP: number of keys */
	uint64_t user_data;
	uint64_t key_lo;
	uint64_t key_hi;
	uint64_t handle;
	uint64_t arg; /* LOOKUP: byte offset inside scratch */
	/* RESERVE: the codec chain of the len bytes the client will write (0: the raw block;
	 * else the id of the layout's host chain, which the LAYOUT reply named, and the bytes
	 * are that chain's record of a block of raw_len bytes) */
	uint32_t chain;
	uint32_t raw_len; /* RESERVE with a chain: the block's length decoded */
	uint64_t reserved;
};
_Static_assert(sizeof(struct kvt_sqe) == 64, "sqe is an ABI");
_Static_assert(offsetof(struct kvt_sqe, flags) == 1 && offsetof(struct kvt_sqe, layout) == 2 &&
		   offsetof(struct kvt_sqe, len) == 4 && offsetof(struct kvt_sqe, user_data) == 8 &&
		   offsetof(struct kvt_sqe, key_lo) == 16 &&
		   offsetof(struct kvt_sqe, key_hi) == 24 &&
		   offsetof(struct kvt_sqe, handle) == 32 && offsetof(struct kvt_sqe, arg) == 40 &&
		   offsetof(struct kvt_sqe, chain) == 48 && offsetof(struct kvt_sqe, raw_len) == 52,
	       "sqe is an ABI");

struct kvt_cqe {
	uint64_t user_data;
	int32_t res;	 /* >= 0 or -errno */
	uint32_t flags;	 /* LEASE: chain id of the block's bytes (0: raw; else a record of it) */
	uint64_t off;	 /* RESERVE/LEASE: byte offset of the block in the arena */
	uint64_t handle; /* RESERVE/LEASE: handle for COMMIT/ABORT/RELEASE */
};
_Static_assert(sizeof(struct kvt_cqe) == 32, "cqe is an ABI");
_Static_assert(offsetof(struct kvt_cqe, res) == 8 && offsetof(struct kvt_cqe, flags) == 12 &&
		   offsetof(struct kvt_cqe, off) == 16 && offsetof(struct kvt_cqe, handle) == 24,
	       "cqe is an ABI");

#define KVT_LOOKUP_MAX	 4096u /* keys per LOOKUP */
#define KVT_SCRATCH_SIZE (KVT_LOOKUP_MAX * 16u)

/* Byte size of a ring memfd with these ring sizes. */
static inline uint32_t kvt_shm_ring_bytes(uint32_t sq_entries, uint32_t cq_entries)
{
	return KVT_SHM_HDR_SIZE + (uint32_t)sizeof(struct kvt_ring_ctl) +
	       sq_entries * (uint32_t)sizeof(struct kvt_sqe) +
	       (uint32_t)sizeof(struct kvt_ring_ctl) +
	       cq_entries * (uint32_t)sizeof(struct kvt_cqe) + KVT_SCRATCH_SIZE;
}

#endif
