/* SPDX-License-Identifier: MIT */
/* rans.c - interleaved rANS coder, adaptive and static parametric tables (see rans.h). */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>

#include "codec_internal.h"
#include "rans.h"

#define RANS_L (1u << 23) /* lower bound of a normalised state */

static void table_finish(struct rans_table *t)
{
	uint32_t c = 0;
	for (unsigned s = 0; s < t->nsym; s++) {
		t->cum[s] = (uint16_t)c;
		for (uint32_t k = 0; k < t->freq[s]; k++)
			t->slot[c + k] = (uint8_t)s;
		c += t->freq[s];
	}
	t->cum[t->nsym] = (uint16_t)c;
}

int rans_table_from_counts(struct rans_table *t, const uint32_t *counts, unsigned nsym)
{
	uint64_t total = 0;
	uint32_t sum = 0;
	unsigned used = 0;

	if (!nsym || nsym > RANS_MAXSYM)
		return -EINVAL;
	for (unsigned s = 0; s < nsym; s++) {
		total += counts[s];
		used += counts[s] != 0;
	}
	if (!total || used > RANS_M)
		return -EINVAL;
	t->nsym = (uint16_t)nsym;
	for (unsigned s = 0; s < nsym; s++) {
		uint32_t f = 0;
		if (counts[s]) {
			f = (uint32_t)((uint64_t)counts[s] * RANS_M / total);
			if (!f)
				f = 1;
		}
		t->freq[s] = (uint16_t)f;
		sum += f;
	}
	/* Give the rounding difference to (or take it from) the most frequent symbols. */
	while (sum != RANS_M) {
		unsigned best = 0;
		for (unsigned s = 1; s < nsym; s++)
			if (t->freq[s] > t->freq[best])
				best = s;
		if (sum < RANS_M) {
			t->freq[best] = (uint16_t)(t->freq[best] + (RANS_M - sum));
			sum = RANS_M;
		} else {
			uint32_t take = sum - RANS_M, room = t->freq[best] - 1u;
			if (!room)
				return -EINVAL; /* cannot happen: used <= RANS_M */
			if (take > room / 2 + 1)
				take = room / 2 + 1;
			t->freq[best] = (uint16_t)(t->freq[best] - take);
			sum -= take;
		}
	}
	table_finish(t);
	return 0;
}

/* -log2(f / M) in 1/256 bits, for f in 1..M. */
static uint16_t cost_lut[RANS_M + 1];
static pthread_once_t cost_once = PTHREAD_ONCE_INIT;

static void cost_init(void)
{
	for (unsigned f = 1; f <= RANS_M; f++)
		cost_lut[f] = (uint16_t)lrint(256.0 * (RANS_PROB_BITS - log2((double)f)));
	cost_lut[0] = 256 * 30;
}

uint64_t rans_table_cost(const struct rans_table *t, const uint32_t *counts)
{
	uint64_t c = 0;
	pthread_once(&cost_once, cost_init);
	for (unsigned s = 0; s < t->nsym; s++)
		if (counts[s])
			c += (uint64_t)counts[s] * cost_lut[t->freq[s]];
	return c;
}

void rans_table_write(struct wbuf *w, const struct rans_table *t)
{
	wb_u16(w, t->nsym);
	for (unsigned s = 0; s < t->nsym; s++) {
		uint16_t f = t->freq[s];
		if (f < 128) {
			wb_u8(w, (uint8_t)f);
		} else {
			wb_u8(w, (uint8_t)(0x80 | (f & 0x7f)));
			wb_u8(w, (uint8_t)(f >> 7));
		}
	}
}

int rans_table_read(struct rbuf *r, struct rans_table *t, unsigned max_nsym)
{
	uint32_t sum = 0;
	unsigned n = rb_u16(r);

	if (r->err || !n || n > max_nsym || n > RANS_MAXSYM)
		return -EBADMSG;
	t->nsym = (uint16_t)n;
	for (unsigned s = 0; s < n; s++) {
		uint32_t f = rb_u8(r);
		if (f & 0x80)
			f = (f & 0x7f) | (uint32_t)rb_u8(r) << 7;
		if (r->err || f > RANS_M)
			return -EBADMSG;
		t->freq[s] = (uint16_t)f;
		sum += f;
	}
	if (sum != RANS_M)
		return -EBADMSG;
	table_finish(t);
	return 0;
}

size_t rans_bound(size_t n)
{
	/* a symbol of freq 1 costs 12 bits; states take 16 bytes */
	return n * 3 / 2 + 32;
}

/*
 * x / f for every state the encoder divides (x < 2^31) and every frequency (1..4096), as one
 * multiply: q = (x * m_f) >> 44 with m_f = floor(2^44 / f) + 1.  The product overshoots x / f
 * by less than x / 2^44 < 2^-13 <= 1 / (2 f), which never crosses to the next integer, so q is
 * exactly floor(x / f) and the stream is the same as with a division.
 */
static uint64_t rcp_lut[RANS_M + 1];
static pthread_once_t rcp_once = PTHREAD_ONCE_INIT;

static void rcp_init(void)
{
	for (uint64_t f = 1; f <= RANS_M; f++)
		rcp_lut[f] = (1ull << 44) / f + 1;
}

static inline uint32_t enc_put(uint32_t v, uint32_t f, uint32_t c, uint8_t **pp)
{
	uint32_t xmax = ((RANS_L >> RANS_PROB_BITS) << 8) * f;
	uint8_t *p = *pp;
	while (v >= xmax) {
		*--p = (uint8_t)v;
		v >>= 8;
	}
	*pp = p;
	uint32_t q = (uint32_t)(((unsigned __int128)v * rcp_lut[f]) >> 44);
	return (q << RANS_PROB_BITS) + (v - q * f) + c;
}

long rans_encode(const uint16_t *sym, const uint8_t *ti, size_t n,
		 const struct rans_table *const *tabs, uint8_t *dst, size_t cap)
{
	uint32_t x[4] = {RANS_L, RANS_L, RANS_L, RANS_L};
	uint8_t *end = dst + cap, *p = end;

	pthread_once(&rcp_once, rcp_init);
	if (cap < 16)
		return -ENOSPC;
	/*
	 * Backwards, four symbols a turn once i + 1 is a multiple of 4, so that each state
	 * stays in a register and the four dependency chains overlap.  A symbol writes at most
	 * 2 bytes (x < 2^31 after renormalisation).
	 */
	size_t i = n;
	for (; i % 4; i--) {
		if (p - dst < 16 + 2)
			return -ENOSPC;
		const struct rans_table *t = tabs[ti ? ti[i - 1] : 0];
		uint32_t s = sym[i - 1];
		x[(i - 1) & 3] = enc_put(x[(i - 1) & 3], t->freq[s], t->cum[s], &p);
	}
	uint32_t x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3];
	for (; i; i -= 4) {
		if (p - dst < 16 + 8)
			return -ENOSPC;
		const struct rans_table *t3 = tabs[ti ? ti[i - 1] : 0],
					*t2 = tabs[ti ? ti[i - 2] : 0],
					*t1 = tabs[ti ? ti[i - 3] : 0],
					*t0 = tabs[ti ? ti[i - 4] : 0];
		uint32_t s3 = sym[i - 1], s2 = sym[i - 2], s1 = sym[i - 3], s0 = sym[i - 4];
		x3 = enc_put(x3, t3->freq[s3], t3->cum[s3], &p);
		x2 = enc_put(x2, t2->freq[s2], t2->cum[s2], &p);
		x1 = enc_put(x1, t1->freq[s1], t1->cum[s1], &p);
		x0 = enc_put(x0, t0->freq[s0], t0->cum[s0], &p);
	}
	x[0] = x0;
	x[1] = x1;
	x[2] = x2;
	x[3] = x3;
	p -= 16;
	for (int k = 0; k < 4; k++)
		st32(p + 4 * k, x[k]);
	size_t len = (size_t)(end - p);
	memmove(dst, p, len);
	return (long)len;
}

/* One symbol of a one-table stream; the caller checks the stream bound. */
#define DEC_ONE(xk, out)                                                                           \
	do {                                                                                       \
		uint32_t sl_ = (xk) & (RANS_M - 1), s_ = t->slot[sl_];                             \
		(xk) = t->freq[s_] * ((xk) >> RANS_PROB_BITS) + sl_ - t->cum[s_];                  \
		while ((xk) < RANS_L && pos < len)                                                 \
			(xk) = (xk) << 8 | src[pos++];                                             \
		(out) = (uint16_t)s_;                                                              \
	} while (0)

int rans_decode(const uint8_t *src, size_t len, size_t n, const uint8_t *ti, unsigned nt,
		const struct rans_table *const *tabs, uint16_t *sym)
{
	uint32_t x[4];
	size_t pos = 16, i = 0;

	if (len < 16)
		return -EBADMSG;
	for (int k = 0; k < 4; k++)
		x[k] = ld32(src + 4 * k);
	if (!ti) {
		/* one table: four states in registers, four symbols a turn */
		const struct rans_table *t = tabs[0];
		uint32_t x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3];
		for (; i + 4 <= n; i += 4) {
			DEC_ONE(x0, sym[i]);
			DEC_ONE(x1, sym[i + 1]);
			DEC_ONE(x2, sym[i + 2]);
			DEC_ONE(x3, sym[i + 3]);
			/* a state still below RANS_L ran out of input: truncated */
			if ((x0 | x1 | x2 | x3) < RANS_L &&
			    (x0 < RANS_L || x1 < RANS_L || x2 < RANS_L || x3 < RANS_L))
				return -EBADMSG;
		}
		x[0] = x0;
		x[1] = x1;
		x[2] = x2;
		x[3] = x3;
	}
	for (; i < n; i++) {
		unsigned tix = ti ? ti[i] : 0;
		if (tix >= nt)
			return -EBADMSG;
		const struct rans_table *t = tabs[tix];
		uint32_t k = i & 3, v = x[k], slot = v & (RANS_M - 1), s = t->slot[slot];
		v = t->freq[s] * (v >> RANS_PROB_BITS) + slot - t->cum[s];
		while (v < RANS_L) {
			if (pos >= len)
				return -EBADMSG;
			v = v << 8 | src[pos++];
		}
		x[k] = v;
		sym[i] = (uint16_t)s;
	}
	if (pos != len || x[0] != RANS_L || x[1] != RANS_L || x[2] != RANS_L || x[3] != RANS_L)
		return -EBADMSG;
	return 0;
}

int rans_dec_init(struct rans_dec *d, const uint8_t *src, size_t len)
{
	d->p = src;
	d->len = len;
	d->pos = 16;
	d->i = 0;
	d->err = 0;
	if (len < 16)
		return -EBADMSG;
	for (int k = 0; k < 4; k++)
		d->x[k] = ld32(src + 4 * k);
	return 0;
}

int rans_dec_finish(const struct rans_dec *d)
{
	if (d->err || d->pos != d->len)
		return -EBADMSG;
	for (int k = 0; k < 4; k++)
		if (d->x[k] != RANS_L)
			return -EBADMSG;
	return 0;
}

/* ---- static parametric tables --------------------------------------------------------- */

static struct rans_table *ptabs;
static uint16_t (*pcost)[RANS_PNSYM]; /* -log2 p in 1/256 bits, per class and symbol */
static uint32_t pmean[RANS_PCLASSES]; /* mean magnitude of each class, Q8 */
static pthread_once_t ptab_once = PTHREAD_ONCE_INIT;

/* Q32 fixed-point multiply. */
static inline uint64_t qmul(uint64_t a, uint64_t b)
{
	return (uint64_t)(((unsigned __int128)a * b) >> 32);
}

static void ptab_init(void)
{
	const unsigned nmag = RANS_PNSYM / 2; /* magnitudes 0..63 are symbols */
	uint32_t counts[RANS_PNSYM];
	uint64_t w[256];

	pthread_once(&cost_once, cost_init);
	ptabs = calloc(RANS_PCLASSES, sizeof(*ptabs));
	pcost = calloc(RANS_PCLASSES, sizeof(*pcost));
	if (!ptabs || !pcost)
		abort();
	for (unsigned c = 0; c < RANS_PCLASSES; c++) {
		int gauss = c >= RANS_PSCALES;
		unsigned k = c % RANS_PSCALES;
		/* 1 - r shrinks geometrically with k: d0 and q in Q32. */
		uint64_t d = gauss ? 0xFEF9DB22ull /* 0.996 */ : 0xFAE147AEull /* 0.98 */;
		uint64_t q = gauss ? 0xD645A1CAull /* 0.837 */ : 0xE8F5C28Full /* 0.91 */;
		for (unsigned i = 0; i < k; i++)
			d = qmul(d, q);
		uint64_t r = (1ull << 32) - d, f = r, rr = qmul(r, r);
		w[0] = 1ull << 32;
		for (unsigned m = 1; m < 256; m++) {
			if (gauss) {
				w[m] = qmul(w[m - 1], f);
				f = qmul(f, rr);
			} else {
				w[m] = qmul(w[m - 1], r);
			}
		}
		uint64_t tail = 0, tot = 0, mag = 0;
		for (unsigned m = nmag; m < 256; m++)
			tail += 2 * (w[m] >> 8);
		for (unsigned z = 0; z + 1 < RANS_PNSYM; z++) {
			unsigned m = (z + 1) / 2;
			counts[z] = (uint32_t)(w[m] >> 8) + 1;
			tot += counts[z];
			mag += (uint64_t)counts[z] * m;
		}
		counts[RANS_PNSYM - 1] =
		    (uint32_t)(tail > 0xffffff00ull ? 0xffffff00ull : tail) + 1;
		tot += counts[RANS_PNSYM - 1];
		pmean[c] = (uint32_t)((mag << 8) / tot);
		if (rans_table_from_counts(&ptabs[c], counts, RANS_PNSYM))
			abort();
		for (unsigned z = 0; z < RANS_PNSYM; z++)
			pcost[c][z] = cost_lut[ptabs[c].freq[z]];
	}
}

const struct rans_table *rans_param_table(unsigned c)
{
	pthread_once(&ptab_once, ptab_init);
	return c < RANS_PCLASSES ? &ptabs[c] : NULL;
}

const uint16_t *rans_param_cost(unsigned c)
{
	pthread_once(&ptab_once, ptab_init);
	return c < RANS_PCLASSES ? pcost[c] : NULL;
}

unsigned rans_param_choose(const uint32_t *hist, uint64_t *cost)
{
	uint16_t nz[RANS_PNSYM];
	unsigned nnz = 0, best = 0;
	uint64_t tot = 0, mag = 0, bestc = UINT64_MAX;

	pthread_once(&ptab_once, ptab_init);
	for (unsigned z = 0; z < RANS_PNSYM; z++)
		if (hist[z]) {
			nz[nnz++] = (uint16_t)z;
			tot += hist[z];
			mag += (uint64_t)hist[z] * ((z + 1) / 2);
		}
	if (!tot) {
		if (cost)
			*cost = 0;
		return 0;
	}
	/* Start each family at the class whose mean magnitude is nearest, then walk downhill. */
	uint32_t m8 = (uint32_t)((mag << 8) / tot);
	for (int fam = 0; fam < 2; fam++) {
		unsigned lo = (unsigned)fam * RANS_PSCALES, c = lo;
		for (unsigned k = lo; k < lo + RANS_PSCALES; k++)
			if ((pmean[k] > m8 ? pmean[k] - m8 : m8 - pmean[k]) <
			    (pmean[c] > m8 ? pmean[c] - m8 : m8 - pmean[c]))
				c = k;
		uint64_t cc = 0;
		for (unsigned j = 0; j < nnz; j++)
			cc += (uint64_t)hist[nz[j]] * pcost[c][nz[j]];
		for (int dir = -1; dir <= 1; dir += 2) {
			for (;;) {
				int n = (int)c + dir;
				if (n < (int)lo || n >= (int)(lo + RANS_PSCALES))
					break;
				uint64_t nc = 0;
				for (unsigned j = 0; j < nnz; j++)
					nc += (uint64_t)hist[nz[j]] * pcost[n][nz[j]];
				if (nc >= cc)
					break;
				cc = nc;
				c = (unsigned)n;
			}
		}
		if (cc < bestc) {
			bestc = cc;
			best = c;
		}
	}
	if (cost)
		*cost = bestc;
	return best;
}
