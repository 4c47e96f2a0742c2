/* SPDX-License-Identifier: MIT */
/*
 * rans.h - the project's range-variant asymmetric numeral system coder (rANS).
 *
 * 32-bit states, byte-wise renormalisation, probabilities in RANS_PROB_BITS bits, four states
 * interleaved over one byte stream (symbol i uses state i % 4) so that a decoder keeps four
 * independent dependency chains in flight.  Each symbol names its table (a context), so one
 * stream can mix per-channel or per-layer statistics.
 *
 * Tables come two ways: adaptive ones built from counts and serialised with the data
 * (rans_table_from_counts / _write / _read), and the static parametric families of
 * rans_param_table() (discrete Laplace and Gaussian shapes over zig-zag symbols, built with
 * integer arithmetic only so that every machine builds the same tables).
 */
#ifndef KVT_RANS_H
#define KVT_RANS_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#define RANS_PROB_BITS 12
#define RANS_M	       (1u << RANS_PROB_BITS)
#define RANS_MAXSYM    256

struct rans_table {
	uint16_t nsym;
	uint16_t freq[RANS_MAXSYM];
	uint16_t cum[RANS_MAXSYM + 1];
	uint8_t slot[RANS_M]; /* slot -> symbol */
};

/* Normalises counts[nsym] (any scale) into t; every symbol gets freq >= 1.  0 or -EINVAL. */
int rans_table_from_counts(struct rans_table *t, const uint32_t *counts, unsigned nsym);
/* Cost in 1/256 bits of coding counts[] with t (for choosing a table). */
uint64_t rans_table_cost(const struct rans_table *t, const uint32_t *counts);

struct wbuf;
struct rbuf;
/* Serialised table: nsym (u16 LE) then each freq as a 1- or 2-byte varint. */
void rans_table_write(struct wbuf *w, const struct rans_table *t);
int rans_table_read(struct rbuf *r, struct rans_table *t, unsigned max_nsym);

/*
 * Encodes n symbols; symbol i is coded with tabs[ti ? ti[i] : 0].  Writes the stream to dst
 * (at most cap bytes) and returns its length, or -ENOSPC.  Every symbol must be < its
 * table's nsym (callers guarantee it).
 */
long rans_encode(const uint16_t *sym, const uint8_t *ti, size_t n,
		 const struct rans_table *const *tabs, uint8_t *dst, size_t cap);
/* Upper bound of rans_encode's output for n symbols. */
size_t rans_bound(size_t n);
/*
 * Decodes n symbols from src[len] into sym; ti as for encoding (nt tables).  Returns 0, or
 * -EBADMSG if the stream is truncated, a table index is out of range, or the final states
 * are not the initial ones (corruption).
 */
int rans_decode(const uint8_t *src, size_t len, size_t n, const uint8_t *ti, unsigned nt,
		const struct rans_table *const *tabs, uint16_t *sym);

/*
 * Incremental decoding, for streams whose next table depends on symbols already decoded:
 * init, one rans_dec_sym() per symbol in encoding order, then rans_dec_finish() (0, or
 * -EBADMSG if the stream is not exactly consumed back to the initial states).
 */
struct rans_dec {
	const uint8_t *p;
	size_t len, pos, i;
	uint32_t x[4];
	int err;
};
int rans_dec_init(struct rans_dec *d, const uint8_t *src, size_t len);
int rans_dec_finish(const struct rans_dec *d);

/* State k after decoding symbol s of table t from slot: renormalized; symbol s, or 0 with
 * d->err set on a truncated stream. */
static inline unsigned rans_dec_step(struct rans_dec *d, uint32_t k, uint32_t v, uint32_t slot,
				     const struct rans_table *t, unsigned s)
{
	v = t->freq[s] * (v >> RANS_PROB_BITS) + slot - t->cum[s];
	while (v < (1u << 23)) {
		if (d->pos >= d->len) {
			d->err = -EBADMSG;
			return 0;
		}
		v = v << 8 | d->p[d->pos++];
	}
	d->x[k] = v;
	return s;
}

/* Next symbol with table t; on a truncated stream sets d->err and returns 0. */
static inline unsigned rans_dec_sym(struct rans_dec *d, const struct rans_table *t)
{
	uint32_t k = (uint32_t)(d->i++ & 3), v = d->x[k], slot = v & (RANS_M - 1);
	return rans_dec_step(d, k, v, slot, t, t->slot[slot]);
}

/*
 * Next symbol with table sel ? t1 : t0.  Both tables' slots are looked up before the choice,
 * so a caller whose choice depends on the previous symbol (a trellis state) does not wait
 * for the lookup; the same result as rans_dec_sym() with the chosen table.
 */
static inline unsigned rans_dec_sym2(struct rans_dec *d, const struct rans_table *t0,
				     const struct rans_table *t1, unsigned sel)
{
	uint32_t k = (uint32_t)(d->i++ & 3), v = d->x[k], slot = v & (RANS_M - 1);
	unsigned s0 = t0->slot[slot], s1 = t1->slot[slot];
	return rans_dec_step(d, k, v, slot, sel ? t1 : t0, sel ? s1 : s0);
}

/*
 * Static parametric tables over zig-zag coded integers (0, -1, 1, -2, 2, ...): symbols
 * 0..RANS_PNSYM-2 are values, RANS_PNSYM-1 is the escape (value sent elsewhere).  Class c
 * in 0..RANS_PCLASSES-1: c < RANS_PSCALES is a Laplace shape, else a Gaussian shape, each
 * with its scale growing geometrically with c % RANS_PSCALES.
 */
#define RANS_PNSYM    128
#define RANS_PSCALES  40
#define RANS_PCLASSES (2 * RANS_PSCALES)
const struct rans_table *rans_param_table(unsigned c);
/* -log2 p of each symbol of class c, in 1/256 bits. */
const uint16_t *rans_param_cost(unsigned c);
/* Best class for a histogram of zig-zag symbols hist[RANS_PNSYM] (search near its scale). */
unsigned rans_param_choose(const uint32_t *hist, uint64_t *cost);

static inline uint32_t zz_enc(int32_t v)
{
	return v >= 0 ? (uint32_t)v << 1 : ((uint32_t)(-(v + 1)) << 1) | 1;
}

static inline int32_t zz_dec(uint32_t z)
{
	return (z & 1) ? -(int32_t)(z >> 1) - 1 : (int32_t)(z >> 1);
}

#endif
