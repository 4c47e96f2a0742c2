/* SPDX-License-Identifier: MIT */
/* kvslab.h - pieces shared by the KV codecs: slab walk, sinks, outliers, bit packing. */
#ifndef KVT_KVSLAB_H
#define KVT_KVSLAB_H

#include "codec_internal.h"

/* Tokens of the block that are sink tokens kept exact: positions < sink in the sequence. */
static inline uint32_t sink_rows(const struct kvt_codec_geom *g, double sink)
{
	if (sink <= g->first_token)
		return 0;
	double n = sink - g->first_token;
	return n >= g->block_tokens ? g->block_tokens : (uint32_t)n;
}

/* fp16 at or above v (v >= 0): scales rounded up so that every value stays in range. */
static inline uint16_t f2h_up(float v)
{
	uint16_t h = kvt_f2h(v);
	if (kvt_h2f(h) < v)
		h++;
	return h;
}

/* Lossy codecs code finite values: NaN becomes 0, +-inf the largest fp16. */
static inline void kv_sanitize(float *x, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!(x[i] >= -65504.0f && x[i] <= 65504.0f))
			x[i] = x[i] != x[i] ? 0.0f : x[i] > 0 ? 65504.0f : -65504.0f;
}

/* Power of two? (Hadamard needs it.) */
static inline int is_pow2(uint32_t v)
{
	return v && !(v & (v - 1));
}

/*
 * Packs n values of b bits (b in 1..8) LSB-first into dst; returns bytes written.
 * Unpack reads exactly that many bytes.
 */
static inline size_t pack_bits(uint8_t *dst, const uint8_t *v, size_t n, unsigned b)
{
	uint64_t acc = 0;
	unsigned nb = 0;
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		acc |= (uint64_t)v[i] << nb;
		nb += b;
		while (nb >= 8) {
			dst[o++] = (uint8_t)acc;
			acc >>= 8;
			nb -= 8;
		}
	}
	if (nb)
		dst[o++] = (uint8_t)acc;
	return o;
}

static inline size_t packed_len(size_t n, unsigned b)
{
	return (n * b + 7) / 8;
}

static inline void unpack_bits(uint8_t *v, const uint8_t *src, size_t n, unsigned b)
{
	uint64_t acc = 0;
	unsigned nb = 0;
	size_t o = 0;
	uint8_t mask = (uint8_t)((1u << b) - 1);
	for (size_t i = 0; i < n; i++) {
		while (nb < b) {
			acc |= (uint64_t)src[o++] << nb;
			nb += 8;
		}
		v[i] = (uint8_t)(acc & mask);
		acc >>= b;
		nb -= b;
	}
}

/* LEB128 varints: 7 bits a byte, low first; a reader sets r->err past 5 bytes. */
void kv_put_varint(struct wbuf *w, uint32_t v);
uint32_t kv_get_varint(struct rbuf *r);

/*
 * References between token rows of a slab (duplicates stored once, predictions): ref[t] = 0
 * for none, else 1 + the earlier row.  Written as a bitmap of the rows that have one, then
 * ref - 1 of each packed in ceil(log2 T) bits.  kv_read_refs() checks every reference names
 * an earlier row; 0 or -EBADMSG.
 */
void kv_write_refs(struct wbuf *w, const uint16_t *ref, uint32_t T);
int kv_read_refs(struct rbuf *r, uint16_t *ref, uint32_t T);

/*
 * Outliers: the cnt entries of x[n] largest in |x - center[i % d]| (center may be NULL) are
 * listed in idx (ascending).  Returns the count (<= max).
 */
size_t kv_pick_outliers(const float *x, size_t n, const float *center, uint32_t d, size_t max,
			uint32_t *idx);
/* Writes count (u32) then (index u32, fp16 value) per outlier. */
void kv_write_outliers(struct wbuf *w, const uint32_t *idx, size_t cnt, const uint8_t *slab);
/* Reads the list written above and patches them into the fp16 slab out[n]; 0 or -EBADMSG. */
int kv_read_outliers(struct rbuf *r, uint8_t *out, size_t n, size_t max);

#endif
