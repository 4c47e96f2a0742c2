/* SPDX-License-Identifier: MIT */
/*
 * kvt_record.h - the persisted block record (DESIGN §8), used by the NVMe tier and by any
 * tier that stores encoded blocks.  Spec with diagram: proto/RECORD.md.
 *
 * A record is a 64-byte header followed by payload_len bytes of payload (the block as its
 * codec chain encoded it), padded with zeros to the tier's alignment.  All fields are
 * little-endian.  crc is CRC-32C over the header (crc field taken as 0) and the payload.
 * A record that fails any check is a miss: it is counted and never served.
 */
#ifndef KVT_RECORD_H
#define KVT_RECORD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KVT_RECORD_MAGIC    0x5254564bu /* "KVTR" */
#define KVT_RECORD_VERSION  1u
#define KVT_RECORD_HDR_SIZE 64u

struct kvt_record_hdr {
	uint32_t magic;	      /*  0: KVT_RECORD_MAGIC */
	uint16_t version;     /*  4: KVT_RECORD_VERSION */
	uint16_t hdr_size;    /*  6: KVT_RECORD_HDR_SIZE */
	uint64_t key_lo;      /*  8: 128-bit block key, tenant salt already mixed in */
	uint64_t key_hi;      /* 16 */
	uint64_t fingerprint; /* 24: layout fingerprint */
	uint64_t seq;	      /* 32: write sequence; the highest valid seq of a key wins */
	uint32_t raw_len;     /* 40: decoded block length */
	uint32_t payload_len; /* 44: encoded bytes after the header */
	uint32_t chain_id;    /* 48: codec chain that made the payload (0 = raw) */
	uint32_t tenant;      /* 52: owner uid */
	uint32_t flags;	      /* 56: reserved, 0 */
	uint32_t crc;	      /* 60: CRC-32C of header (crc = 0) + payload */
};

_Static_assert(sizeof(struct kvt_record_hdr) == KVT_RECORD_HDR_SIZE, "record header is an ABI");
_Static_assert(offsetof(struct kvt_record_hdr, version) == 4 &&
		   offsetof(struct kvt_record_hdr, key_lo) == 8 &&
		   offsetof(struct kvt_record_hdr, fingerprint) == 24 &&
		   offsetof(struct kvt_record_hdr, seq) == 32 &&
		   offsetof(struct kvt_record_hdr, raw_len) == 40 &&
		   offsetof(struct kvt_record_hdr, chain_id) == 48 &&
		   offsetof(struct kvt_record_hdr, tenant) == 52 &&
		   offsetof(struct kvt_record_hdr, crc) == 60,
	       "record header is an ABI");

/* CRC-32C (Castagnoli); hardware instruction where the CPU has it. */
uint32_t kvt_crc32c(uint32_t crc, const void *buf, size_t len);

/* Copies len bytes from src to dst (not overlapping) and returns kvt_crc32c(crc, src, len):
 * one pass over src instead of two (checking a record while it is copied out). */
uint32_t kvt_crc32c_copy(uint32_t crc, void *dst, const void *src, size_t len);

/*
 * CRC-32C of A followed by B, from crc_a = kvt_crc32c(0, A), crc_b = kvt_crc32c(0, B) and the
 * length of B: lets several threads check pieces of one record and merge their results.
 */
uint32_t kvt_crc32c_combine(uint32_t crc_a, uint32_t crc_b, size_t len_b);

/* CRC-32C of a record's header (its crc field taken as 0), to be continued over the payload
 * with kvt_crc32c() or merged with kvt_crc32c_combine(). */
uint32_t kvt_record_hdr_crc(const struct kvt_record_hdr *h);

/* Checks magic, version, hdr_size, flags and payload_len against avail: 0 or -EBADMSG.  The
 * cheap part of kvt_record_check(), for callers that verify the CRC themselves. */
int kvt_record_check_hdr(const struct kvt_record_hdr *h, size_t avail);

/* Fills h->crc for h and payload (h->payload_len bytes). */
void kvt_record_seal(struct kvt_record_hdr *h, const void *payload);

/*
 * Checks magic, version, sizes against avail (bytes present after the header) and the CRC.
 * Returns 0, or -EBADMSG for any failed check (never trusts a field before checking it).
 */
int kvt_record_check(const struct kvt_record_hdr *h, const void *payload, size_t avail);

#ifdef __cplusplus
}
#endif
#endif
