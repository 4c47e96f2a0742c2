/* SPDX-License-Identifier: MIT */
/*
 * kvt_record.c - CRC-32C and the persisted record header (proto/RECORD.md).
 *
 * The CRC runs on every NVMe read and write, so the SSE4.2 instruction is used when the CPU
 * has it (about 20 GB/s per core against ~1 GB/s for the table); the choice is made once, at
 * first use, because the daemon may be built on one machine and run on another.
 */
#include "kvt_record.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#define CRC32C_POLY_REV 0x82f63b78u

static uint32_t crc_table[8][256];
static bool crc_table_ready;

static void crc_table_init(void)
{
	for (unsigned i = 0; i < 256; i++) {
		uint32_t c = i;

		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (CRC32C_POLY_REV & (0u - (c & 1)));
		crc_table[0][i] = c;
	}
	for (unsigned i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc_table[t][i] =
			    (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
	crc_table_ready = true;
}

/* Slicing-by-8: the portable path, also the reference the hardware path is tested against. */
uint32_t kvt_crc32c_sw(uint32_t crc, const void *buf, size_t len);
uint32_t kvt_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
	const unsigned char *p = buf;

	if (!crc_table_ready)
		crc_table_init();
	crc = ~crc;
	while (len && ((uintptr_t)p & 7)) {
		crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
		len--;
	}
	while (len >= 8) {
		uint64_t v;

		memcpy(&v, p, 8);
		v ^= crc; /* little-endian hosts only (x86-64, aarch64) */
		crc = crc_table[7][v & 0xff] ^ crc_table[6][(v >> 8) & 0xff] ^
		      crc_table[5][(v >> 16) & 0xff] ^ crc_table[4][(v >> 24) & 0xff] ^
		      crc_table[3][(v >> 32) & 0xff] ^ crc_table[2][(v >> 40) & 0xff] ^
		      crc_table[1][(v >> 48) & 0xff] ^ crc_table[0][v >> 56];
		p += 8;
		len -= 8;
	}
	while (len--)
		crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

#if defined(__x86_64__)
/*
 * One crc32 instruction chain is latency-bound (3 cycles per 8 bytes).  Three independent
 * chains over consecutive HW_STRIDE-byte blocks keep the unit busy every cycle; their states
 * are merged with the linear map "advance a CRC state over HW_STRIDE zero bytes", applied by
 * table (4 byte-indexed tables per distance).  That is what makes verifying every NVMe read
 * cheap next to the I/O itself.
 */
#define HW_STRIDE 2048u
static uint32_t hw_shift1[4][256], hw_shift2[4][256]; /* over STRIDE and 2*STRIDE zeros */
static int hw_tables_state; /* 0 none, 1 being built, 2 ready (release/acquire) */

__attribute__((target("sse4.2"))) static uint64_t hw_run(uint64_t c, const unsigned char *p,
							 size_t len)
{
	while (len >= 8) {
		uint64_t a;

		memcpy(&a, p, 8);
		c = _mm_crc32_u64(c, a);
		p += 8;
		len -= 8;
	}
	while (len--)
		c = _mm_crc32_u8((uint32_t)c, *p++);
	return c;
}

static uint32_t hw_shift(const uint32_t t[4][256], uint32_t c)
{
	return t[0][c & 0xff] ^ t[1][(c >> 8) & 0xff] ^ t[2][(c >> 16) & 0xff] ^ t[3][c >> 24];
}

static void hw_tables_build(void)
{
	static const unsigned char zeros[2 * HW_STRIDE];
	uint32_t b1[32], b2[32];

	/* The zero-advance map is linear: build it from the 32 single-bit states. */
	for (int i = 0; i < 32; i++) {
		b1[i] = (uint32_t)hw_run(1u << i, zeros, HW_STRIDE);
		b2[i] = (uint32_t)hw_run(1u << i, zeros, 2 * HW_STRIDE);
	}
	for (int k = 0; k < 4; k++)
		for (unsigned v = 0; v < 256; v++) {
			uint32_t x = 0, y = 0;

			for (int bit = 0; bit < 8; bit++)
				if (v & (1u << bit)) {
					x ^= b1[8 * k + bit];
					y ^= b2[8 * k + bit];
				}
			hw_shift1[k][v] = x;
			hw_shift2[k][v] = y;
		}
}

static bool hw_tables_ready(void)
{
	int s = __atomic_load_n(&hw_tables_state, __ATOMIC_ACQUIRE); /* pairs with the release */

	if (s == 2)
		return true;
	/* One builder; concurrent first callers take the single-chain path meanwhile. */
	if (s == 0 && __atomic_compare_exchange_n(&hw_tables_state, &s, 1, false, __ATOMIC_ACQ_REL,
						  __ATOMIC_ACQUIRE)) {
		hw_tables_build();
		__atomic_store_n(&hw_tables_state, 2, __ATOMIC_RELEASE);
		return true;
	}
	return false;
}

/* The hardware CRC over src, storing what it reads to dst too when dst is not NULL (inlined
 * into both callers below, so the test on dst costs nothing). */
__attribute__((target("sse4.2"), always_inline)) static inline uint32_t
hw_crc(uint32_t crc, unsigned char *q, const unsigned char *p, size_t len)
{
	uint64_t c = ~crc;

	while (len && ((uintptr_t)p & 7)) {
		if (q)
			*q++ = *p;
		c = _mm_crc32_u8((uint32_t)c, *p++);
		len--;
	}
	if (len >= 3 * HW_STRIDE && hw_tables_ready()) {
		while (len >= 3 * HW_STRIDE) {
			uint64_t c1 = 0, c2 = 0;
			const unsigned char *p1 = p + HW_STRIDE, *p2 = p + 2 * HW_STRIDE;

			for (unsigned i = 0; i < HW_STRIDE; i += 8) {
				uint64_t a, b, d;

				memcpy(&a, p + i, 8);
				memcpy(&b, p1 + i, 8);
				memcpy(&d, p2 + i, 8);
				if (q) {
					memcpy(q + i, &a, 8);
					memcpy(q + HW_STRIDE + i, &b, 8);
					memcpy(q + 2 * HW_STRIDE + i, &d, 8);
				}
				c = _mm_crc32_u64(c, a);
				c1 = _mm_crc32_u64(c1, b);
				c2 = _mm_crc32_u64(c2, d);
			}
			c = hw_shift(hw_shift2, (uint32_t)c) ^ hw_shift(hw_shift1, (uint32_t)c1) ^
			    (uint32_t)c2;
			p += 3 * HW_STRIDE;
			if (q)
				q += 3 * HW_STRIDE;
			len -= 3 * HW_STRIDE;
		}
	}
	if (q)
		memcpy(q, p, len);
	return ~(uint32_t)hw_run(c, p, len);
}

uint32_t kvt_crc32c_hw(uint32_t crc, const void *buf, size_t len);
__attribute__((target("sse4.2"))) uint32_t kvt_crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
	return hw_crc(crc, NULL, buf, len);
}

/* kvt_crc32c_hw that also stores what it reads to dst. */
uint32_t kvt_crc32c_copy_hw(uint32_t crc, void *dst, const void *src, size_t len);
__attribute__((target("sse4.2"))) uint32_t kvt_crc32c_copy_hw(uint32_t crc, void *dst,
							      const void *src, size_t len)
{
	return hw_crc(crc, dst, src, len);
}
#endif

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);
static crc_fn crc_impl;

/* Returns 1 when the hardware path is in use; tests compare both paths. */
int kvt_crc32c_hw_available(void);
int kvt_crc32c_hw_available(void)
{
#if defined(__x86_64__)
	__builtin_cpu_init();
	return __builtin_cpu_supports("sse4.2") ? 1 : 0;
#else
	return 0;
#endif
}

static crc_fn crc_pick(void)
{
	crc_fn f = __atomic_load_n(&crc_impl, __ATOMIC_RELAXED);

	if (!f) {
#if defined(__x86_64__)
		f = kvt_crc32c_hw_available() ? kvt_crc32c_hw : kvt_crc32c_sw;
#else
		f = kvt_crc32c_sw;
#endif
		if (f == kvt_crc32c_sw && !crc_table_ready)
			crc_table_init();
		/* Racing initialisers store the same pointer: harmless. */
		__atomic_store_n(&crc_impl, f, __ATOMIC_RELAXED);
	}
	return f;
}

uint32_t kvt_crc32c(uint32_t crc, const void *buf, size_t len)
{
	return crc_pick()(crc, buf, len);
}

uint32_t kvt_crc32c_copy(uint32_t crc, void *dst, const void *src, size_t len)
{
#if defined(__x86_64__)
	if (crc_pick() == kvt_crc32c_hw)
		return kvt_crc32c_copy_hw(crc, dst, src, len);
#endif
	memcpy(dst, src, len);
	return kvt_crc32c(crc, src, len);
}

/*
 * Merging CRCs.  A CRC register advanced over n zero bytes is multiplied by x^(8n) modulo the
 * polynomial; with the conditioning used here (~0 in, ~0 out) the two cancel, so
 * crc(A.B) = crc(A) * x^(8|B|) + crc(B) over GF(2).  Bit-reflected arithmetic: bit 31 is x^0.
 */
#define CRC32C_POLY_REFLECTED 0x82f63b78u

static uint32_t gf2_mulmod(uint32_t a, uint32_t b)
{
	uint32_t prod = 0;

	/* For each power x^k of a (bit 31-k), add b * x^k; b steps through b * x^k mod P. */
	for (uint32_t m = 1u << 31; m; m >>= 1) {
		if (a & m)
			prod ^= b;
		b = (b & 1) ? (b >> 1) ^ CRC32C_POLY_REFLECTED : b >> 1;
	}
	return prod;
}

uint32_t kvt_crc32c_combine(uint32_t crc_a, uint32_t crc_b, size_t len_b)
{
	uint32_t sq = 1u << 23; /* x^8: one zero byte */
	uint32_t pw = 1u << 31; /* x^0 */

	/* x^(8 len_b) by squaring: sq runs through x^(8 * 2^k). */
	for (size_t n = len_b; n; n >>= 1) {
		if (n & 1)
			pw = gf2_mulmod(pw, sq);
		sq = gf2_mulmod(sq, sq);
	}
	return gf2_mulmod(pw, crc_a) ^ crc_b;
}

uint32_t kvt_record_hdr_crc(const struct kvt_record_hdr *h)
{
	struct kvt_record_hdr tmp;

	memcpy(&tmp, h, sizeof(tmp));
	tmp.crc = 0;
	return kvt_crc32c(0, &tmp, sizeof(tmp));
}

static uint32_t record_crc(const struct kvt_record_hdr *h, const void *payload, size_t len)
{
	uint32_t crc = kvt_record_hdr_crc(h);

	if (len)
		crc = kvt_crc32c(crc, payload, len);
	return crc;
}

void kvt_record_seal(struct kvt_record_hdr *h, const void *payload)
{
	h->crc = record_crc(h, payload, h->payload_len);
}

int kvt_record_check_hdr(const struct kvt_record_hdr *h, size_t avail)
{
	if (!h)
		return -EBADMSG;
	if (h->magic != KVT_RECORD_MAGIC || h->version != KVT_RECORD_VERSION ||
	    h->hdr_size != KVT_RECORD_HDR_SIZE || h->flags != 0)
		return -EBADMSG;
	if (h->payload_len > avail)
		return -EBADMSG;
	return 0;
}

int kvt_record_check(const struct kvt_record_hdr *h, const void *payload, size_t avail)
{
	if (kvt_record_check_hdr(h, avail) < 0 || (h->payload_len && !payload))
		return -EBADMSG;
	if (record_crc(h, payload, h->payload_len) != h->crc)
		return -EBADMSG;
	return 0;
}
