/* SPDX-License-Identifier: MIT */
/*
 * gpu_bq.cu - the "bq" codec on the GPU (kvt_gpu_bq.h), bit-exact with codecs/codec_bq.c.
 *
 * The arithmetic is bq_format.h's, shared with the CPU code: IEEE operations one at a time (no
 * FMA contraction), statistics that do not depend on an order (extremes, integer sums) or that
 * one thread sums in channel order (the step).
 *
 * Encode, one CTA per (slab, block): the slab is staged in shared memory as float; a thread per
 * channel finds its extremes, a thread per pair of rows decides the duplicates, a thread per
 * channel its bits and outliers, block scans place them, a thread per 32-bit word of the coded
 * rows packs the codes.  Each slab lands in a fixed slot of the scratch; a second kernel (a
 * warp a block) sums the slab sizes into the record's offset table and header, a third moves
 * the slabs into place.
 * Decode, a warp per slab (bq_dec_warp_kernel, described above it): checks as codec_bq.c's
 * parse_slab(), then each lane decodes a pair of channels down the rows (coalesced stores),
 * then the exact list and the duplicate rows; into contiguous blocks or engine pages.  The
 * previous one-CTA-a-slab decoder (bq_dec_slab_kernel) is kept as the bench's baseline.
 * Malformed records are flagged, and nothing is read or written outside the record and the
 * block.  rope (p.rope_r > 0): in a key slab codec_bq.c's angle recurrence runs down the rows,
 * a thread (encoder) or a lane (decoder) per frequency; the encoder rotates the staged keys
 * back, the decoder rotates each decoded pair (i, i + D/2) forward.
 */
#include <cuda_runtime.h>
#include <cub/block/block_scan.cuh>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bq_format.h"
#include "kvt_gpu_bq.h"

/* the encoder's CTA: a small slab (16 x 128) keeps 128 threads busy, and twice the CTAs of
 * 256 fit an SM; BQ_THREADS: the other kernels' */
#define BQ_ENC_THREADS 128
#define BQ_THREADS     256
#define BQ_MAX_ELEMS   24576u /* T x D of a slab the encoder stages in shared memory */
#define BQ_MAX_D       1024u
#define BQ_STAGE_HEAD  8u      /* magic, slab count; then slab offsets */
#define BQ_SMEM_MAX    232448u /* shared memory a CTA may have on sm_90 (227 KiB) */

struct kvt_gpu_bq {
	struct kvt_codec_geom g;
	struct kvt_bq_params p;
	uint32_t ns;
	uint64_t slot;	 /* scratch bytes of one slab */
	uint64_t head;	 /* stage head: magic, count, offsets */
	uint64_t bound;	 /* largest record */
	size_t enc_smem; /* dynamic shared memory of the encoder */
	size_t dec_smem;
};

/* Kernel arguments, by value. */
struct bq_kargs {
	uint32_t L, H, D, T, ns, bf16;
	uint64_t slot, head, bound, raw;
	struct kvt_bq_params p;
};

__device__ __forceinline__ uint32_t d_ld16(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

__device__ __forceinline__ uint32_t d_ld32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

__device__ __forceinline__ void d_st16(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

__device__ __forceinline__ void d_st32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

/* Is slab s of a rope plan a key slab (coded in the pre-RoPE frame)? */
__device__ __forceinline__ int d_rope_slab(const struct bq_kargs &a, uint32_t s)
{
	return a.p.rope_r > 0 && !((s / a.H) & 1);
}

/* The block's cosines and sines, [T][D/2] from first (rope_table() of codec_bq.c): a thread per
 * frequency.  The caller synchronises. */
__device__ static void d_rope_table(float *rc, float *rs, uint32_t T, uint32_t D, uint32_t first,
				    double r)
{
	uint32_t h = D / 2;
	for (uint32_t i = threadIdx.x; i < h; i += blockDim.x) {
		double f = bq_rope_freq(r, i), c, s, c1, s1;
		bq_rope_cs((double)first, f, &c, &s);
		bq_rope_cs(1.0, f, &c1, &s1);
		for (uint32_t t = 0; t < T; t++) {
			rc[(size_t)t * h + i] = BQ_D2F(c);
			rs[(size_t)t * h + i] = BQ_D2F(s);
			bq_rope_step(&c, &s, c1, s1);
		}
	}
}

__device__ __forceinline__ uint32_t d_sink_rows(uint32_t sink, uint32_t first, uint32_t T)
{
	if (sink <= first)
		return 0;
	uint32_t n = sink - first;
	return n >= T ? T : n;
}

/* ---- encode ------------------------------------------------------------------------ */

/* Shared memory of the encoder, carved from one dynamic buffer. */
struct enc_smem {
	float *x;	      /* [T][D] */
	uint8_t *out;	      /* [T][D]: listed exact */
	struct bq_ext *ext;   /* [D] */
	struct bq_choice *ch; /* [D] */
	float *lo, *inv, *r2, *full;
	uint32_t *ooff;	     /* [D]: first outlier of each channel */
	uint32_t *boff;	     /* [D + 1]: bit offset of each channel's code in a row */
	int32_t *ref, *crow; /* [T] */
	uint8_t *first;	     /* [T] */
	uint16_t *tok;	     /* [T]: the token row of each coded row */
};

/* Rows of x and out are D + 1 apart in shared memory: a thread per row then reads its own
 * bank, not the one bank of every row's channel c. */
__device__ static void enc_carve(struct enc_smem *m, uint8_t *b, uint32_t T, uint32_t D)
{
	size_t e = (size_t)T * (D + 1), o = 0;
#define CARVE(f, type, n)                                                                          \
	do {                                                                                       \
		o = (o + 15) & ~(size_t)15;                                                        \
		m->f = (type *)(b + o);                                                            \
		o += sizeof(type) * (n);                                                           \
	} while (0)
	CARVE(x, float, e);
	CARVE(ext, struct bq_ext, D);
	CARVE(ch, struct bq_choice, D);
	CARVE(lo, float, D);
	CARVE(inv, float, D);
	CARVE(r2, float, D);
	CARVE(full, float, D);
	CARVE(ooff, uint32_t, D + 1);
	CARVE(boff, uint32_t, D + 1);
	CARVE(ref, int32_t, T);
	CARVE(crow, int32_t, T);
	CARVE(first, uint8_t, T);
	CARVE(tok, uint16_t, T);
	CARVE(out, uint8_t, e);
#undef CARVE
}

static size_t enc_smem_bytes(uint32_t T, uint32_t D)
{
	size_t e = (size_t)T * (D + 1), o = 0;
#define ADD(type, n) o = ((o + 15) & ~(size_t)15) + sizeof(type) * (n)
	ADD(float, e);
	ADD(struct bq_ext, D);
	ADD(struct bq_choice, D);
	ADD(float, D);
	ADD(float, D);
	ADD(float, D);
	ADD(float, D);
	ADD(uint32_t, D + 1);
	ADD(uint32_t, D + 1);
	ADD(int32_t, T);
	ADD(int32_t, T);
	ADD(uint8_t, T);
	ADD(uint16_t, T);
	ADD(uint8_t, e);
#undef ADD
	return o + 16;
}

/* One thread's channel scan over the rows [t0, T) not marked as duplicates (ref < 0). */
__device__ static void enc_scan(struct bq_ext *e, const float *x, const int32_t *ref, uint32_t c,
				uint32_t t0, uint32_t T, uint32_t LD)
{
	bq_ext_init(e);
	for (uint32_t t = t0; t < T; t++) {
		if (ref[t] >= 0)
			continue;
		float v = x[(size_t)t * LD + c];
		if (!bq_codable(v))
			continue;
		if (e->n >= 3 && v >= e->lo[2] && v < e->hi[2]) {
			e->n++;
			continue;
		}
		bq_ext_add(e, v, (int)t);
	}
}

/* Exclusive prefix sum of v over the CTA's threads in thread order (integers: any order of
 * additions gives the same sums); *total gets the sum of all.  Every thread calls it. */
__device__ static uint32_t blk_scan(uint32_t v, uint32_t *total)
{
	__shared__ uint32_t warp_sum[BQ_ENC_THREADS / 32];
	const uint32_t lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	uint32_t incl = v;
	for (uint32_t k = 1; k < 32; k <<= 1) {
		uint32_t y = __shfl_up_sync(0xffffffffu, incl, k);
		incl += lane >= k ? y : 0;
	}
	if (lane == 31)
		warp_sum[w] = incl;
	__syncthreads();
	uint32_t before = 0, all = 0;
	for (uint32_t i = 0; i < BQ_ENC_THREADS / 32; i++) {
		before += i < w ? warp_sum[i] : 0;
		all += warp_sum[i];
	}
	__syncthreads(); /* warp_sum is the next call's */
	*total = all;
	return before + incl - v;
}

__global__ void __launch_bounds__(BQ_ENC_THREADS)
    bq_enc_slab_kernel(struct bq_kargs a, const void *const *src, const uint32_t *first_token,
		       uint8_t *scratch, uint32_t *sizes)
{
	extern __shared__ __align__(16) uint8_t smem_raw[];
	__shared__ float s_delta;
	__shared__ uint32_t s_ndup, s_nout, s_bits;
	const uint32_t s = blockIdx.x, blk = blockIdx.y, T = a.T, D = a.D, LD = D + 1,
		       tid = threadIdx.x;
	const int bf16 = (int)a.bf16;
	const uint8_t *in = (const uint8_t *)src[blk] + (size_t)s * T * D * 2;
	uint8_t *o = scratch + ((size_t)blk * a.ns + s) * a.slot;
	const uint32_t nsink = d_sink_rows(a.p.sink, first_token[blk], T);
	const int rope = d_rope_slab(a, s);
	struct enc_smem m;

	enc_carve(&m, smem_raw, T, D);
	/* two elements a 32-bit load (blocks are 4-byte aligned, D is even), several in flight */
#pragma unroll 4
	for (uint32_t i = tid; i < T * D / 2; i += blockDim.x) {
		const uint32_t v = ((const uint32_t *)in)[i], t = 2 * i / D, c = 2 * i - t * D;
		m.x[(size_t)t * LD + c] = bq_ld((uint16_t)v, bf16);
		m.x[(size_t)t * LD + c + 1] = bq_ld((uint16_t)(v >> 16), bf16);
		m.out[(size_t)t * LD + c] = 0;
		m.out[(size_t)t * LD + c + 1] = 0;
	}
	for (uint32_t t = tid; t < T; t += blockDim.x)
		m.ref[t] = -1;
	__syncthreads();
	if (rope) {
		/* keys into their pre-RoPE frame, as codec_bq.c (the same angles: a thread per
		 * frequency runs rope_table()'s recurrence down the rows); a pair that cannot be
		 * rotated is NaN here (listed exact) */
		const uint32_t h = D / 2;
		for (uint32_t i = tid; i < h; i += blockDim.x) {
			double f = bq_rope_freq(a.p.rope_r, i), c, sn, c1, s1;
			bq_rope_cs((double)first_token[blk], f, &c, &sn);
			bq_rope_cs(1.0, f, &c1, &s1);
			for (uint32_t t = 0; t < T; t++) {
				float *pa = &m.x[(size_t)t * LD + i],
				      *pb = &m.x[(size_t)t * LD + i + h];
				if (t >= nsink) {
					if (bq_pair_codable(*pa, *pb, bf16)) {
						bq_unrope(pa, pb, BQ_D2F(c), BQ_D2F(sn));
					} else {
						*pa = __int_as_float(0x7fc00000);
						*pb = __int_as_float(0x7fc00000);
					}
				}
				bq_rope_step(&c, &sn, c1, s1);
			}
		}
		__syncthreads();
	}
	const unsigned maxoutl = rope ? 0u : a.p.maxoutl;
	/* 1. the step from every row past the sinks */
	for (uint32_t c = tid; c < D; c += blockDim.x) {
		enc_scan(&m.ext[c], m.x, m.ref, c, nsink, T, LD);
		float r = bq_ext_range(&m.ext[c]);
		m.r2[c] = BQ_MUL(r, r);
		m.full[c] = bq_ext_full(&m.ext[c], bf16);
	}
	__syncthreads();
	if (tid == 0) {
		float sumsq = 0, maxr = 0;
		/* in channel order, as codec_bq.c; four squares a load */
		uint32_t c = 0;
		for (; c + 4 <= D; c += 4) {
			float4 q = *(const float4 *)(m.r2 + c), f = *(const float4 *)(m.full + c);
			sumsq = BQ_ADD(sumsq, q.x);
			sumsq = BQ_ADD(sumsq, q.y);
			sumsq = BQ_ADD(sumsq, q.z);
			sumsq = BQ_ADD(sumsq, q.w);
			maxr = f.x > maxr ? f.x : maxr;
			maxr = f.y > maxr ? f.y : maxr;
			maxr = f.z > maxr ? f.z : maxr;
			maxr = f.w > maxr ? f.w : maxr;
		}
		for (; c < D; c++) {
			sumsq = BQ_ADD(sumsq, m.r2[c]);
			maxr = m.full[c] > maxr ? m.full[c] : maxr;
		}
		s_delta = bq_delta(a.p.f[s / a.H], sumsq, D, maxr); /* layer s / 2H, K or V */
	}
	__syncthreads();
	const float delta = s_delta;
	const float dup = a.p.dup;
	const float eps = BQ_MUL(BQ_MUL(dup, delta), 0.5f);
	/* 2. duplicates, as codec_bq.c: "first" rows match no earlier row; a later row repeats
	 * the earliest first row it matches.  A thread per pair of rows (r < t past the sinks),
	 * twice: first the rows that match an earlier one, then the earliest first row each of
	 * those matches (atomicMin; 0x7fffffff: none, the row is then coded) */
	for (uint32_t t = tid; t < T; t += blockDim.x)
		m.first[t] = 1;
	__syncthreads();
	if (dup > 0) {
		const uint32_t nr = T - nsink, np = nr * nr; /* T <= 12288: no overflow */
		for (uint32_t i = tid; i < np; i += blockDim.x) {
			const uint32_t t = nsink + i / nr, r = nsink + i % nr;
			if (r < t && m.first[t] &&
			    bq_rows_match(m.x + (size_t)r * LD, m.x + (size_t)t * LD, D, eps))
				m.first[t] = 0; /* every writer writes the same */
		}
		__syncthreads();
		for (uint32_t t = nsink + tid; t < T; t += blockDim.x)
			if (!m.first[t])
				m.ref[t] = 0x7fffffff;
		__syncthreads();
		for (uint32_t i = tid; i < np; i += blockDim.x) {
			const uint32_t t = nsink + i / nr, r = nsink + i % nr;
			if (r < t && !m.first[t] && m.first[r] && m.ref[t] > (int32_t)r &&
			    bq_rows_match(m.x + (size_t)r * LD, m.x + (size_t)t * LD, D, eps))
				atomicMin(&m.ref[t], (int32_t)r);
		}
		__syncthreads();
		for (uint32_t t = nsink + tid; t < T; t += blockDim.x)
			if (m.ref[t] == 0x7fffffff)
				m.ref[t] = -1;
		__syncthreads();
	}
	/* coded row indexes and the duplicates' references, by a scan over chunks of rows
	 * (coded count | duplicate count << 16) */
	const uint32_t rbytes = bq_ref_bytes(T);
	const size_t o_dmap = BQ_SLAB_HDR + 3 * (size_t)D + (size_t)nsink * D * 2,
		     o_refs = o_dmap + (T + 7) / 8;
	{
		const uint32_t rpt = (T + BQ_ENC_THREADS - 1) / BQ_ENC_THREADS, t0 = tid * rpt;
		uint32_t cnt = 0, tot;
		for (uint32_t t = t0; t < t0 + rpt && t < T; t++)
			cnt += m.ref[t] >= 0 ? 1u << 16 : t >= nsink;
		uint32_t off = blk_scan(cnt, &tot);
		for (uint32_t t = t0; t < t0 + rpt && t < T; t++) {
			m.crow[t] = -1;
			if (m.ref[t] >= 0) {
				uint32_t nd = off >> 16;
				if (rbytes == 1)
					o[o_refs + nd] = (uint8_t)m.ref[t];
				else
					d_st16(o + o_refs + 2 * (size_t)nd, (uint32_t)m.ref[t]);
				off += 1u << 16;
			} else if (t >= nsink) {
				m.crow[t] = (int32_t)(off & 0xffff);
				m.tok[off & 0xffff] = (uint16_t)t;
				off++;
			}
		}
		if (tid == 0)
			s_ndup = tot >> 16;
	}
	__syncthreads();
	const uint32_t ndup_ = s_ndup, rows = T - nsink - ndup_;
	/* 3. bits and range of each channel over the coded rows; what is listed exact */
	for (uint32_t c = tid; c < D; c += blockDim.x) {
		struct bq_ext *e = &m.ext[c];
		if (ndup_) /* else the first scan's rows were these */
			enc_scan(e, m.x, m.ref, c, nsink, T, LD);
		struct bq_choice ch = bq_choose(e, delta, rows, maxoutl, bf16);
		m.ch[c] = ch;
		m.lo[c] = bq_ld(ch.lo, bf16);
		struct bq_chan cp = bq_chan_params(delta, ch.bm >> 4, m.lo[c]);
		m.inv[c] = cp.s > 0 ? BQ_DIV(1.0f, cp.s) : 0.0f;
		uint32_t cnt = 0;
		for (uint32_t t = nsink; t < T; t++) {
			if (m.ref[t] >= 0)
				continue;
			int ex = !bq_codable(m.x[(size_t)t * LD + c]);
			for (unsigned k = 0; k < ch.i; k++)
				ex |= e->lot[k] == (int)t;
			for (unsigned k = 0; k < ch.j; k++)
				ex |= e->hit[k] == (int)t;
			m.out[(size_t)t * LD + c] = (uint8_t)ex;
			cnt += ex;
		}
		m.ooff[c] = cnt;
	}
	__syncthreads();
	/* each channel's first outlier and code bit: a scan of (outliers | bits << 16) over
	 * chunks of channels (outliers <= 24576 and bits <= 15360 a slab: no carry between) */
	{
		const uint32_t cpt = (D + BQ_ENC_THREADS - 1) / BQ_ENC_THREADS, c0 = tid * cpt;
		uint32_t v = 0, tot;
		for (uint32_t c = c0; c < c0 + cpt && c < D; c++)
			v += m.ooff[c] | (m.ch[c].bm & 15) << 16;
		uint32_t off = blk_scan(v, &tot);
		for (uint32_t c = c0; c < c0 + cpt && c < D; c++) {
			uint32_t x = m.ooff[c] | (m.ch[c].bm & 15) << 16;
			m.ooff[c] = off & 0xffff;
			m.boff[c] = off >> 16;
			off += x;
		}
		if (tid == 0) {
			m.ooff[D] = tot & 0xffff;
			m.boff[D] = tot >> 16;
			s_nout = tot & 0xffff;
			s_bits = tot >> 16;
		}
	}
	__syncthreads();
	const uint32_t ndup = s_ndup, nout = s_nout, rb = (s_bits + 7) / 8;
	/* layout of the slab, as codec_bq.c writes it */
	const size_t o_bm = BQ_SLAB_HDR, o_lo = o_bm + D, o_sink = o_lo + 2 * (size_t)D,
		     o_outl = o_refs + (size_t)ndup * rbytes, o_codes = o_outl + (size_t)nout * 6,
		     total = o_codes + (size_t)rows * rb + BQ_PAD;
	if (tid == 0) {
		d_st32(o, bq_fbits(delta));
		d_st16(o + 4, nsink);
		d_st16(o + 6, ndup);
		d_st32(o + 8, nout);
		sizes[(size_t)blk * a.ns + s] = (uint32_t)total;
		for (uint32_t i = 0; i < BQ_PAD; i++)
			o[total - BQ_PAD + i] = 0;
	}
	for (uint32_t t0 = tid * 8; t0 < T; t0 += blockDim.x * 8) { /* a byte of the map each */
		uint32_t b = 0;
		for (uint32_t t = t0; t < t0 + 8 && t < T; t++)
			b |= (uint32_t)(m.ref[t] >= 0) << (t - t0);
		o[o_dmap + t0 / 8] = (uint8_t)b;
	}
	for (uint32_t c = tid; c < D; c += blockDim.x) {
		o[o_bm + c] = (uint8_t)m.ch[c].bm;
		d_st16(o + o_lo + 2 * (size_t)c, m.ch[c].lo);
		/* this channel's outliers, rows in order; their codes are 0 */
		uint32_t k = m.ooff[c];
		for (uint32_t t = nsink; t < T; t++) {
			size_t i = (size_t)t * D + c;
			if (!m.out[(size_t)t * LD + c])
				continue;
			uint8_t *w = o + o_outl + 6 * (size_t)k++;
			d_st32(w, c * T + t);
			w[4] = in[2 * i];
			w[5] = in[2 * i + 1];
		}
	}
	for (uint32_t i = tid; i < nsink * D * 2; i += blockDim.x)
		o[o_sink + i] = in[i];
	__syncthreads();
	/* codes: a thread per 32-bit word of a coded row (all rows at once): the channels whose
	 * bits fall in the word, found by a binary search of the bit offsets, quantized and
	 * shifted into it; only the row's own bytes are written */
	const uint32_t words = (rb + 3) / 4;
	for (uint32_t i = tid; i < rows * words; i += blockDim.x) {
		const uint32_t cr = i / words, k = i - cr * words, w0 = 32 * k;
		const uint32_t t = m.tok[cr];
		/* the first channel ending past the word's start */
		uint32_t c = 0, hi_c = D;
		while (c < hi_c) {
			uint32_t mid = (c + hi_c) / 2;
			if (m.boff[mid + 1] > w0)
				hi_c = mid;
			else
				c = mid + 1;
		}
		uint32_t word = 0;
		for (; c < D && m.boff[c] < w0 + 32; c++) {
			unsigned b = m.ch[c].bm & 15;
			if (!b)
				continue;
			size_t e = (size_t)t * LD + c;
			float v = m.out[e] ? m.lo[c] : m.x[e];
			uint32_t q = bq_quant(v, m.lo[c], m.inv[c], b);
			int sh = (int)m.boff[c] - (int)w0;
			word |= sh >= 0 ? q << sh : q >> -sh;
		}
		uint8_t *w = o + o_codes + (size_t)cr * rb + 4 * (size_t)k;
		for (uint32_t j = 0; j < 4 && 4 * k + j < rb; j++)
			w[j] = (uint8_t)(word >> 8 * j);
	}
}

/* A warp per block: the slab offsets (a warp scan of the sizes, 32 slabs a round), the stage
 * head and the chain header. */
__global__ void bq_enc_head_kernel(struct bq_kargs a, const uint32_t *first_token,
				   const uint32_t *sizes, void *const *dst, uint32_t *len,
				   uint32_t n)
{
	const uint32_t lane = threadIdx.x & 31,
		       blk = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
	if (blk >= n)
		return; /* the whole warp */
	uint8_t *d = (uint8_t *)dst[blk];
	uint8_t *p = d + KVT_CHAIN_HDR_SIZE;
	uint32_t off = (uint32_t)a.head; /* u32 offsets, as the format has them */
	for (uint32_t s0 = 0; s0 < a.ns; s0 += 32) {
		const uint32_t s = s0 + lane;
		const uint32_t v = s < a.ns ? sizes[(size_t)blk * a.ns + s] : 0;
		uint32_t incl = v;
		for (uint32_t k = 1; k < 32; k <<= 1) {
			uint32_t y = __shfl_up_sync(0xffffffffu, incl, k);
			incl += lane >= k ? y : 0;
		}
		if (s < a.ns)
			d_st32(p + 8 + 4 * (size_t)s, off + incl - v);
		off += __shfl_sync(0xffffffffu, incl, 31);
	}
	if (lane)
		return;
	d_st32(p, a.p.rope_r > 0 ? BQ_MAGIC_ROPE : BQ_MAGIC);
	d_st32(p + 4, a.ns);
	d_st32(p + 8 + 4 * (size_t)a.ns, off);
	d_st32(d, KVT_CHAIN_MAGIC);
	d_st32(d + 4, a.p.chain_id);
	d_st32(d + 8, (uint32_t)a.raw);
	d_st32(d + 12, off);
	d_st16(d + 16, a.L);
	d_st16(d + 18, a.H);
	d_st16(d + 20, a.D);
	d_st16(d + 22, a.T);
	d[24] = a.bf16 ? KVT_DTYPE_BF16 : KVT_DTYPE_FP16;
	d[25] = 1;
	d_st16(d + 26, 0);
	d_st32(d + 28, first_token[blk]);
	len[blk] = off + KVT_CHAIN_HDR_SIZE;
}

/* Moves each slab from its scratch slot to its place in the record. */
__global__ void __launch_bounds__(BQ_THREADS)
    bq_enc_move_kernel(struct bq_kargs a, const uint8_t *scratch, const uint32_t *sizes,
		       void *const *dst)
{
	const uint32_t s = blockIdx.x, blk = blockIdx.y;
	const uint8_t *p = (const uint8_t *)dst[blk] + KVT_CHAIN_HDR_SIZE;
	const uint8_t *from = scratch + ((size_t)blk * a.ns + s) * a.slot;
	uint8_t *to = (uint8_t *)dst[blk] + KVT_CHAIN_HDR_SIZE + d_ld32(p + 8 + 4 * s);
	uint32_t n = sizes[(size_t)blk * a.ns + s];
#pragma unroll 4
	for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
		to[i] = from[i];
}

/* ---- decode ------------------------------------------------------------------------ */

typedef cub::BlockScan<uint32_t, BQ_THREADS> bq_scan;

/* Bytes of the decoder's dynamic shared memory: channel tables, row tables, the codes. */
static size_t dec_smem_bytes(uint32_t T, uint32_t D, int rope)
{
	size_t codes = (size_t)T * ((D * BQ_MAXBITS + 7) / 8) + BQ_PAD;
	return (size_t)D * 16 + 16 + (size_t)T * 8 + ((codes + 15) & ~(size_t)15) + 16 +
	       (rope ? (size_t)T * (D / 2) * 8 : 0);
}

__global__ void __launch_bounds__(BQ_THREADS)
    bq_dec_slab_kernel(struct bq_kargs a, const void *const *src, const uint32_t *len,
		       void *const *dst, uint32_t *bad)
{
	extern __shared__ __align__(16) uint8_t smem_raw[];
	__shared__ typename bq_scan::TempStorage scan_tmp;
	__shared__ int s_bad;
	__shared__ uint32_t s_nsink, s_ndup, s_nout, s_off, s_len, s_bits, s_seen;
	__shared__ float s_delta;
	const uint32_t s = blockIdx.x, blk = blockIdx.y, T = a.T, D = a.D, tid = threadIdx.x;
	const int bf16 = (int)a.bf16;
	const uint8_t *rec = (const uint8_t *)src[blk];
	const uint64_t n = len[blk];
	uint8_t *out = (uint8_t *)dst[blk] + (size_t)s * T * D * 2;
	/* shared: per channel s, a, bit offset, mask; per row ref and coded index; the codes */
	float *cs = (float *)smem_raw, *ca = cs + D;
	uint32_t *boff = (uint32_t *)(ca + D), *mask = boff + D;
	int32_t *ref = (int32_t *)(mask + D + 4), *crow = ref + T;
	uint8_t *codes_sh = (uint8_t *)(crow + T);
	/* rope: the angles after the largest codes (16-byte aligned) */
	const size_t codes_max = (size_t)T * ((D * BQ_MAXBITS + 7) / 8) + BQ_PAD;
	float *rc =
	    (float *)(smem_raw + (((size_t)(codes_sh - smem_raw) + codes_max + 15) & ~(size_t)15));
	float *rs = rc + (size_t)T * (D / 2);
	const int rope = d_rope_slab(a, s);
	const uint8_t *p = rec + KVT_CHAIN_HDR_SIZE;

	/* 1. the record's header, the stage's, this slab's fixed fields */
	if (tid == 0) {
		/* past the length check, every field is read at once ('&', not '&&': the loads
		 * need not wait on each other's compare) */
		int ok = n >= KVT_CHAIN_HDR_SIZE + a.head;
		if (ok)
			ok = (d_ld32(rec) == KVT_CHAIN_MAGIC) & (d_ld32(rec + 4) == a.p.chain_id) &
			     (d_ld32(rec + 8) == a.raw) &
			     (d_ld32(rec + 12) == n - KVT_CHAIN_HDR_SIZE) &
			     (d_ld16(rec + 16) == a.L) & (d_ld16(rec + 18) == a.H) &
			     (d_ld16(rec + 20) == a.D) & (d_ld16(rec + 22) == a.T) &
			     (rec[24] == (a.bf16 ? KVT_DTYPE_BF16 : KVT_DTYPE_FP16)) &
			     (rec[25] == 1) & (d_ld16(rec + 26) == 0) &
			     (d_ld32(p) == (a.p.rope_r > 0 ? BQ_MAGIC_ROPE : BQ_MAGIC)) &
			     (d_ld32(p + 4) == a.ns) & (d_ld32(p + 8) == a.head) &
			     (d_ld32(p + 8 + 4 * a.ns) == n - KVT_CHAIN_HDR_SIZE);
		uint32_t o0 = ok ? d_ld32(p + 8 + 4 * s) : 0, o1 = ok ? d_ld32(p + 12 + 4 * s) : 0;
		ok = ok && o1 >= o0 && o1 <= n - KVT_CHAIN_HDR_SIZE &&
		     o1 - o0 >= BQ_SLAB_HDR + 3 * D;
		s_off = o0;
		s_len = o1 - o0;
		if (ok) {
			const uint8_t *sl = p + o0;
			s_delta = bq_bitsf(d_ld32(sl));
			s_nsink = d_ld16(sl + 4);
			s_ndup = d_ld16(sl + 6);
			s_nout = d_ld32(sl + 8);
			ok = s_nsink <= T && s_ndup <= T - s_nsink && isfinite(s_delta) &&
			     s_delta >= 0 &&
			     (uint64_t)s_nout <= (uint64_t)(T - s_nsink - s_ndup) * D;
		}
		s_bad = !ok;
		s_seen = 0;
	}
	__syncthreads();
	if (s_bad)
		goto fail;
	{
		const uint8_t *sl = p + s_off, *bm = sl + BQ_SLAB_HDR, *lo = bm + D;
		const uint32_t nsink = s_nsink, ndup = s_ndup, nout = s_nout;
		const float delta = s_delta;
		/* 2. channel tables: bit offsets by a block-wide scan, chunks of channels a thread
		 */
		{
			uint32_t cpt = (D + BQ_THREADS - 1) / BQ_THREADS, c0 = tid * cpt, sum = 0,
				 off;
			for (uint32_t c = c0; c < c0 + cpt && c < D; c++)
				sum += bm[c] & 15;
			bq_scan(scan_tmp).ExclusiveSum(sum, off);
			for (uint32_t c = c0; c < c0 + cpt && c < D; c++) {
				uint32_t b = bm[c] & 15;
				float l = bq_ld((uint16_t)d_ld16(lo + 2 * c), bf16);
				if (!bq_codable(l))
					s_bad = 1;
				struct bq_chan cp = bq_chan_params(delta, bm[c] >> 4, l);
				cs[c] = cp.s;
				ca[c] = cp.a;
				boff[c] = off;
				mask[c] = (1u << b) - 1;
				off += b;
			}
			if (c0 < D && c0 + cpt >= D)
				s_bits = off; /* the thread with the last channel */
		}
		__syncthreads();
		const uint32_t rb = (s_bits + 7) / 8, rows = T - nsink - ndup;
		const size_t o_dmap = BQ_SLAB_HDR + 3 * (size_t)D + (size_t)nsink * D * 2,
			     o_refs = o_dmap + (T + 7) / 8,
			     o_outl = o_refs + (size_t)ndup * bq_ref_bytes(T),
			     o_codes = o_outl + (size_t)nout * 6,
			     want = o_codes + (size_t)rows * rb + BQ_PAD;
		if (tid == 0 && want != s_len)
			s_bad = 1;
		__syncthreads();
		if (s_bad)
			goto fail;
		/* 3. rows: coded index and duplicate index by a scan of (coded | dup << 16) */
		{
			const uint8_t *dmap = sl + o_dmap, *refs = sl + o_refs;
			uint32_t rpt = (T + BQ_THREADS - 1) / BQ_THREADS, t0 = tid * rpt, sum = 0,
				 off;
			for (uint32_t t = t0; t < t0 + rpt && t < T; t++) {
				uint32_t d = dmap[t / 8] >> (t % 8) & 1;
				sum += d ? 1u << 16 : t >= nsink;
			}
			bq_scan(scan_tmp).ExclusiveSum(sum, off);
			for (uint32_t t = t0; t < t0 + rpt && t < T; t++) {
				uint32_t d = dmap[t / 8] >> (t % 8) & 1, nd = off >> 16;
				ref[t] = -1;
				crow[t] = -1;
				if (d) {
					if (t < nsink || nd >= ndup) {
						s_bad = 1;
					} else {
						ref[t] =
						    (int32_t)(bq_ref_bytes(T) == 1
								  ? refs[nd]
								  : d_ld16(refs + 2 * (size_t)nd));
						atomicAdd(&s_seen, 1u);
					}
					off += 1u << 16;
				} else if (t >= nsink) {
					crow[t] = (int32_t)(off & 0xffff);
					off++;
				}
			}
			if (tid == 0 && T % 8 && dmap[T / 8] >> (T % 8))
				s_bad = 1;
			if (tid < BQ_PAD && sl[want - BQ_PAD + tid])
				s_bad = 1;
		}
		__syncthreads();
		if (tid == 0 && s_seen != ndup)
			s_bad = 1;
		for (uint32_t t = tid; t < T; t += blockDim.x) {
			int32_t r = ref[t];
			if (r >= 0 && ((uint32_t)r >= t || (uint32_t)r < nsink || ref[r] >= 0))
				s_bad = 1;
		}
		const uint8_t *outl = sl + o_outl;
		for (uint32_t i = tid; i < nout; i += blockDim.x) {
			uint32_t k = d_ld32(outl + 6 * (size_t)i);
			if (k >= T * D || crow[k % T] < 0 ||
			    (i && k <= d_ld32(outl + 6 * (size_t)i - 6)))
				s_bad = 1;
		}
		/* the codes into shared memory (coalesced bytes) */
		const uint8_t *codes = sl + o_codes;
		for (uint32_t i = tid; i < rows * rb + BQ_PAD; i += blockDim.x)
			codes_sh[i] = codes[i];
		if (rope)
			d_rope_table(rc, rs, T, D, d_ld32(rec + 28), a.p.rope_r);
		__syncthreads();
		if (s_bad)
			goto fail;
		if (rope) {
			/* 4'. pairs (i, i + D/2) of every row past the sinks, a duplicate from the
			 * codes of the row it repeats, rotated to the row's position */
			const uint8_t *sink = lo + 2 * (size_t)D;
			const uint32_t h = D / 2;
			for (uint32_t e = tid; e < T * h; e += blockDim.x) {
				uint32_t t = e / h, i = e - t * h, c = i + h;
				uint16_t va, vb;
				if (t < nsink) {
					va = (uint16_t)d_ld16(sink + 2 * ((size_t)t * D + i));
					vb = (uint16_t)d_ld16(sink + 2 * ((size_t)t * D + c));
				} else {
					int32_t cr = crow[t] >= 0 ? crow[t] : crow[ref[t]];
					const uint8_t *w = codes_sh + (size_t)cr * rb;
					uint32_t o0 = boff[i], o1 = boff[c];
					uint32_t q0 = (d_ld32(w + (o0 >> 3)) >> (o0 & 7)) & mask[i];
					uint32_t q1 = (d_ld32(w + (o1 >> 3)) >> (o1 & 7)) & mask[c];
					struct bq_chan c0, c1;
					c0.s = cs[i];
					c0.a = ca[i];
					c1.s = cs[c];
					c1.a = ca[c];
					float fa = bq_dequant(q0, c0), fb = bq_dequant(q1, c1);
					bq_rerope(&fa, &fb, rc[e], rs[e]);
					va = bq_st(fa, bf16);
					vb = bq_st(fb, bf16);
				}
				*(uint16_t *)(out + 2 * ((size_t)t * D + i)) = va;
				*(uint16_t *)(out + 2 * ((size_t)t * D + c)) = vb;
			}
			__syncthreads();
			for (uint32_t i = tid; i < nout; i += blockDim.x) {
				uint32_t k = d_ld32(outl + 6 * (size_t)i);
				size_t e = (size_t)(k % T) * D + k / T;
				*(uint16_t *)(out + 2 * e) =
				    (uint16_t)d_ld16(outl + 6 * (size_t)i + 4);
			}
			return;
		}
		/* 4. two channels a thread: sinks copied, coded rows decoded; 32-bit stores */
		const uint8_t *sink = lo + 2 * (size_t)D;
		for (uint32_t e2 = tid; e2 < T * D / 2; e2 += blockDim.x) {
			uint32_t e = 2 * e2, t = e / D, c = e - t * D;
			uint32_t v;
			if (t < nsink) {
				v = d_ld32(sink + 2 * (size_t)e);
			} else if (crow[t] >= 0) {
				const uint8_t *w = codes_sh + (size_t)crow[t] * rb;
				uint32_t o0 = boff[c], o1 = boff[c + 1];
				uint32_t q0 = (d_ld32(w + (o0 >> 3)) >> (o0 & 7)) & mask[c];
				uint32_t q1 = (d_ld32(w + (o1 >> 3)) >> (o1 & 7)) & mask[c + 1];
				struct bq_chan c0, c1;
				c0.s = cs[c];
				c0.a = ca[c];
				c1.s = cs[c + 1];
				c1.a = ca[c + 1];
				v = (uint32_t)bq_st(bq_dequant(q0, c0), bf16) |
				    (uint32_t)bq_st(bq_dequant(q1, c1), bf16) << 16;
			} else {
				continue;
			}
			*(uint32_t *)(out + 2 * (size_t)e) = v;
		}
		__syncthreads();
		for (uint32_t i = tid; i < nout; i += blockDim.x) {
			uint32_t k = d_ld32(outl + 6 * (size_t)i);
			size_t e = (size_t)(k % T) * D + k / T;
			*(uint16_t *)(out + 2 * e) = (uint16_t)d_ld16(outl + 6 * (size_t)i + 4);
		}
		__syncthreads();
		for (uint32_t e2 = tid; e2 < T * D / 2; e2 += blockDim.x) {
			uint32_t e = 2 * e2, t = e / D, c = e - t * D;
			if (ref[t] >= 0)
				*(uint32_t *)(out + 2 * (size_t)e) =
				    *(const uint32_t *)(out + 2 * ((size_t)ref[t] * D + c));
		}
	}
	return; /* bad[blk] was cleared before the launch; a failing slab sets it */
fail:
	if (tid == 0)
		atomicOr(&bad[blk], 1u);
}

/* ---- decode, a warp per slab ------------------------------------------------------------
 *
 * Each warp decodes whole slabs (a grid-stride loop over every slab of the batch), with no
 * block-wide barrier: lane 0 checks the record's and the stage's headers, the lanes prefetch
 * the slab into L1, then check its channel table and rows (ballots over 32 rows at a time) and
 * its exact list (an entry a lane); only a slab that passes every check of codec_bq.c's
 * parse_slab() is written.  The rows: each lane owns a pair of channels (2p, 2p + 1; with rope
 * the pair (i, i + D/2)) whose parameters and bit offsets (a warp scan of b, in channel order)
 * stay in registers while it walks the rows, so that a warp writes 32 consecutive pairs of a
 * row at once (coalesced 32-bit stores).  A code is read as the aligned 32-bit word holding its
 * first bit and, when it spills over, the next one (only words holding code bits: inside the
 * slab, thanks to the pad), through the read-only cache.  Then the exact list (an entry a
 * lane), then the duplicate rows copy their outlier-patched row (rope: decoded from the codes
 * of the row they repeat and rotated to their own position, as the CPU does).
 *
 * The per-warp shared tables: the code row of each row (0xffff: a sink, or a duplicate when not
 * rope) and the row each duplicate repeats (0xffff: none), u16 each (T <= 12288).
 */
#define BQ_DEC_WARPS 4
#define BQ_DEC_NONE  0xffffu
#define BQ_DEC_GRID  65536u /* CTAs at most: enough to fill any GPU many times over */

/* The w <= 30 bits of a code row from bit P (LSB first); nothing read when w is 0. */
__device__ __forceinline__ uint32_t d_bits(const uint8_t *row, uint32_t P, uint32_t w)
{
	if (!w)
		return 0;
	uintptr_t A = (uintptr_t)row + (P >> 3);
	const uint32_t *W = (const uint32_t *)(A & ~(uintptr_t)3);
	uint32_t sh = (uint32_t)(A & 3) * 8 + (P & 7);
	uint32_t lo = __ldg(W), hi = sh + w > 32 ? __ldg(W + 1) : 0u;
	return __funnelshift_r(lo, hi, sh);
}

/* Where the rows of slab s of block blk go: a contiguous block, or engine pages. */
struct dec_dst {
	void *const *ptrs; /* dst[blk] (contiguous) or the page array (paged) */
	uint32_t ppb;	   /* 0: contiguous; else pages a block ([P][H][D] each, P = T / ppb) */
};

__device__ __forceinline__ uint8_t *d_row(const struct bq_kargs &a, const struct dec_dst &o,
					  uint64_t blk, uint32_t s, uint32_t t)
{
	if (!o.ppb)
		return (uint8_t *)o.ptrs[blk] + ((size_t)s * a.T + t) * a.D * 2;
	const uint32_t P = a.T / o.ppb, lk = s / a.H, h = s - lk * a.H;
	uint8_t *pg = (uint8_t *)o.ptrs[((size_t)blk * 2 * a.L + lk) * o.ppb + t / P];
	return pg + ((size_t)(t % P) * a.H + h) * a.D * 2;
}

/* Slab s of the record rec (n bytes) into o; 1 if it is well formed (warp-uniform), else 0
 * and nothing written.  All 32 lanes call it. */
__device__ static int dec_warp_slab(const struct bq_kargs &a, const uint8_t *rec, uint64_t n,
				    const struct dec_dst &o, uint64_t blk, uint32_t s,
				    uint16_t *tsrc, uint16_t *tref)
{
	const unsigned FULL = 0xffffffffu;
	const uint32_t lane = threadIdx.x & 31, T = a.T, D = a.D;
	const int bf16 = (int)a.bf16;
	const uint8_t *p = rec + KVT_CHAIN_HDR_SIZE;
	uint32_t ok = 0, o0 = 0, o1 = 0;

	/* 1. the record's header, the stage's, this slab's place (lane 0; every load at once) */
	if (lane == 0) {
		ok = n >= KVT_CHAIN_HDR_SIZE + a.head;
		if (ok)
			ok = (d_ld32(rec) == KVT_CHAIN_MAGIC) & (d_ld32(rec + 4) == a.p.chain_id) &
			     (d_ld32(rec + 8) == a.raw) &
			     (d_ld32(rec + 12) == n - KVT_CHAIN_HDR_SIZE) &
			     (d_ld16(rec + 16) == a.L) & (d_ld16(rec + 18) == a.H) &
			     (d_ld16(rec + 20) == a.D) & (d_ld16(rec + 22) == a.T) &
			     (rec[24] == (a.bf16 ? KVT_DTYPE_BF16 : KVT_DTYPE_FP16)) &
			     (rec[25] == 1) & (d_ld16(rec + 26) == 0) &
			     (d_ld32(p) == (a.p.rope_r > 0 ? BQ_MAGIC_ROPE : BQ_MAGIC)) &
			     (d_ld32(p + 4) == a.ns) & (d_ld32(p + 8) == a.head) &
			     (d_ld32(p + 8 + 4 * a.ns) == n - KVT_CHAIN_HDR_SIZE);
		o0 = ok ? d_ld32(p + 8 + 4 * s) : 0;
		o1 = ok ? d_ld32(p + 12 + 4 * s) : 0;
		ok = ok && o1 >= o0 && o1 <= n - KVT_CHAIN_HDR_SIZE &&
		     o1 - o0 >= BQ_SLAB_HDR + 3 * D;
	}
	ok = __shfl_sync(FULL, ok, 0);
	o0 = __shfl_sync(FULL, o0, 0);
	o1 = __shfl_sync(FULL, o1, 0);
	if (!ok)
		return 0;
	const uint8_t *sl = p + o0;
	const uint32_t slen = o1 - o0;
	/* the whole slab into L1 at once: the loads below then wait for one miss, not a chain */
	for (uint32_t i = lane * 128; i < slen; i += 32 * 128)
		asm volatile("prefetch.L1 [%0];" ::"l"(sl + i));

	/* 2. fixed fields, channel table */
	const float delta = bq_bitsf(d_ld32(sl));
	const uint32_t nsink = d_ld16(sl + 4), ndup = d_ld16(sl + 6), nout = d_ld32(sl + 8);
	if (!(nsink <= T && ndup <= T - nsink && isfinite(delta) && delta >= 0 &&
	      (uint64_t)nout <= (uint64_t)(T - nsink - ndup) * D))
		return 0;
	const uint8_t *bm = sl + BQ_SLAB_HDR, *lo = bm + D, *sink = lo + 2 * (size_t)D;
	const uint32_t h = D / 2;
	uint32_t bits = 0, bits_a = 0, badc = 0;
	for (uint32_t c = lane; c < D; c += 32) {
		uint32_t b = bm[c] & 15;
		bits += b;
		bits_a += c < h ? b : 0;
		badc |= !bq_codable(bq_ld((uint16_t)d_ld16(lo + 2 * c), bf16));
	}
	bits = __reduce_add_sync(FULL, bits);
	bits_a = __reduce_add_sync(FULL, bits_a);
	const uint32_t rb = (bits + 7) / 8, rows = T - nsink - ndup, rbytes = bq_ref_bytes(T);
	const size_t o_dmap = BQ_SLAB_HDR + 3 * (size_t)D + (size_t)nsink * D * 2,
		     o_refs = o_dmap + (T + 7) / 8, o_outl = o_refs + (size_t)ndup * rbytes,
		     o_codes = o_outl + (size_t)nout * 6,
		     want = o_codes + (size_t)rows * rb + BQ_PAD;
	if (__any_sync(FULL, badc) || want != slen)
		return 0;
	if (__any_sync(FULL, lane < BQ_PAD && sl[want - BQ_PAD + lane]))
		return 0;

	/* 3. rows, 32 at a time: duplicates (each naming an earlier coded row), coded indexes */
	const uint8_t *dmap = sl + o_dmap, *refs = sl + o_refs;
	const int rope = d_rope_slab(a, s);
	uint32_t nd = 0, nc = 0, badr = 0;
	for (uint32_t t0 = 0; t0 < T; t0 += 32) {
		const uint32_t t = t0 + lane, lt = (1u << lane) - 1;
		const uint32_t d = t < T ? dmap[t / 8] >> (t % 8) & 1 : 0;
		const uint32_t dm = __ballot_sync(FULL, d),
			       cm = __ballot_sync(FULL, t < T && !d && t >= nsink);
		const uint32_t myd = nd + __popc(dm & lt), myc = nc + __popc(cm & lt);
		if (t < T) {
			uint32_t src = BQ_DEC_NONE, r = BQ_DEC_NONE;
			if (d) {
				if (t < nsink || myd >= ndup) {
					badr = 1;
				} else {
					r = rbytes == 1 ? refs[myd]
							: d_ld16(refs + 2 * (size_t)myd);
					if (r >= t || r < nsink || (dmap[r / 8] >> (r % 8) & 1))
						badr = 1;
				}
			} else if (t >= nsink) {
				src = myc;
			}
			tsrc[t] = (uint16_t)src;
			tref[t] = (uint16_t)r;
		}
		nd += __popc(dm);
		nc += __popc(cm);
	}
	if (__any_sync(FULL, badr) || nd != ndup || (T % 8 && dmap[T / 8] >> (T % 8)))
		return 0;
	__syncwarp();
	/* 4. the exact list: keys strictly increasing, each in a coded row */
	const uint8_t *outl = sl + o_outl;
	uint32_t bado = 0;
	for (uint32_t i = lane; i < nout; i += 32) {
		uint32_t k = d_ld32(outl + 6 * (size_t)i), t = k % T;
		bado |= k >= T * D || t < nsink || tref[t] != BQ_DEC_NONE ||
			(i && k <= d_ld32(outl + 6 * (size_t)i - 6));
	}
	if (__any_sync(FULL, bado))
		return 0;
	/* rope: a duplicate is decoded from the codes of the row it repeats */
	if (rope) {
		for (uint32_t t = lane; t < T; t += 32)
			if (tref[t] != BQ_DEC_NONE)
				tsrc[t] = tsrc[tref[t]];
		__syncwarp();
	}

	/* 5. the rows */
	const uint8_t *codes = sl + o_codes;
	if (!rope) {
		uint32_t carry = 0;
		for (uint32_t p0 = 0; p0 < h; p0 += 32) {
			const uint32_t pi = p0 + lane, c = 2 * pi;
			const bool on = pi < h;
			const uint32_t bm0 = on ? bm[c] : 0, bm1 = on ? bm[c + 1] : 0;
			const uint32_t b0 = bm0 & 15, b1 = bm1 & 15, w = b0 + b1;
			uint32_t incl = w;
			for (uint32_t k = 1; k < 32; k <<= 1) {
				uint32_t y = __shfl_up_sync(FULL, incl, k);
				incl += lane >= k ? y : 0;
			}
			const uint32_t P = carry + incl - w;
			carry += __shfl_sync(FULL, incl, 31);
			if (!on)
				continue;
			const struct bq_chan c0 = bq_chan_params(
						 delta, bm0 >> 4,
						 bq_ld((uint16_t)d_ld16(lo + 2 * c), bf16)),
					     c1 = bq_chan_params(
						 delta, bm1 >> 4,
						 bq_ld((uint16_t)d_ld16(lo + 2 * c + 2), bf16));
			const uint32_t m0 = (1u << b0) - 1, m1 = (1u << b1) - 1;
			for (uint32_t t = 0; t < T; t++) {
				uint32_t v;
				if (t < nsink) {
					v = d_ld32(sink + 2 * ((size_t)t * D + c));
				} else {
					const uint32_t cr = tsrc[t];
					if (cr == BQ_DEC_NONE)
						continue; /* a duplicate: copied below */
					uint32_t q = d_bits(codes + (size_t)cr * rb, P, w);
					v = (uint32_t)bq_st(bq_dequant(q & m0, c0), bf16) |
					    (uint32_t)bq_st(bq_dequant(q >> b0 & m1, c1), bf16)
						<< 16;
				}
				*(uint32_t *)(d_row(a, o, blk, s, t) + 4 * (size_t)pi) = v;
			}
		}
	} else {
		const double r = a.p.rope_r;
		const double first = (double)d_ld32(rec + 28);
		uint32_t carry_a = 0, carry_b = bits_a;
		double f = bq_rope_freq(r, lane); /* r^i, i = lane, then 32 more products a round */
		for (uint32_t i0 = 0; i0 < h; i0 += 32) {
			const uint32_t i = i0 + lane, cb = i + h;
			const bool on = i < h;
			if (i0)
				for (int k = 0; k < 32; k++)
					f = BQ_DMUL(f, r);
			const uint32_t bma = on ? bm[i] : 0, bmb = on ? bm[cb] : 0;
			const uint32_t ba = bma & 15, bb = bmb & 15;
			uint32_t ia = ba, ib = bb;
			for (uint32_t k = 1; k < 32; k <<= 1) {
				uint32_t ya = __shfl_up_sync(FULL, ia, k),
					 yb = __shfl_up_sync(FULL, ib, k);
				ia += lane >= k ? ya : 0;
				ib += lane >= k ? yb : 0;
			}
			const uint32_t Pa = carry_a + ia - ba, Pb = carry_b + ib - bb;
			carry_a += __shfl_sync(FULL, ia, 31);
			carry_b += __shfl_sync(FULL, ib, 31);
			if (!on)
				continue;
			const struct bq_chan ca = bq_chan_params(
						 delta, bma >> 4,
						 bq_ld((uint16_t)d_ld16(lo + 2 * i), bf16)),
					     cbp = bq_chan_params(
						 delta, bmb >> 4,
						 bq_ld((uint16_t)d_ld16(lo + 2 * cb), bf16));
			const uint32_t ma = (1u << ba) - 1, mb = (1u << bb) - 1;
			double cs, sn, c1, s1;
			bq_rope_cs(first, f, &cs, &sn);
			bq_rope_cs(1.0, f, &c1, &s1);
			for (uint32_t t = 0; t < T; t++) {
				uint16_t va, vb;
				if (t < nsink) {
					va = (uint16_t)d_ld16(sink + 2 * ((size_t)t * D + i));
					vb = (uint16_t)d_ld16(sink + 2 * ((size_t)t * D + cb));
				} else {
					const uint8_t *row = codes + (size_t)tsrc[t] * rb;
					float xa = bq_dequant(d_bits(row, Pa, ba) & ma, ca),
					      xb = bq_dequant(d_bits(row, Pb, bb) & mb, cbp);
					bq_rerope(&xa, &xb, BQ_D2F(cs), BQ_D2F(sn));
					va = bq_st(xa, bf16);
					vb = bq_st(xb, bf16);
				}
				uint8_t *orow = d_row(a, o, blk, s, t);
				*(uint16_t *)(orow + 2 * (size_t)i) = va;
				*(uint16_t *)(orow + 2 * (size_t)cb) = vb;
				bq_rope_step(&cs, &sn, c1, s1);
			}
		}
	}
	__syncwarp();
	/* 6. the exact list, then (not rope) the duplicates copy their patched rows */
	for (uint32_t i = lane; i < nout; i += 32) {
		uint32_t k = d_ld32(outl + 6 * (size_t)i);
		*(uint16_t *)(d_row(a, o, blk, s, k % T) + 2 * (size_t)(k / T)) =
		    (uint16_t)d_ld16(outl + 6 * (size_t)i + 4);
	}
	if (!rope && ndup) {
		__syncwarp();
		for (uint32_t t = nsink; t < T; t++) {
			const uint32_t r = tref[t];
			if (r == BQ_DEC_NONE)
				continue;
			const uint32_t *from = (const uint32_t *)d_row(a, o, blk, s, r);
			uint32_t *to = (uint32_t *)d_row(a, o, blk, s, t);
			for (uint32_t c2 = lane; c2 < h; c2 += 32)
				to[c2] = from[c2];
		}
	}
	return 1;
}

__global__ void __launch_bounds__(32 * BQ_DEC_WARPS)
    bq_dec_warp_kernel(struct bq_kargs a, const void *const *src, const uint32_t *len,
		       struct dec_dst o, uint32_t *bad, uint64_t nslabs)
{
	extern __shared__ __align__(16) uint8_t smem_raw[];
	const uint32_t wid = threadIdx.x >> 5, wpb = blockDim.x >> 5;
	uint16_t *tsrc = (uint16_t *)smem_raw + (size_t)wid * 2 * a.T, *tref = tsrc + a.T;
	for (uint64_t sid = (uint64_t)blockIdx.x * wpb + wid; sid < nslabs;
	     sid += (uint64_t)gridDim.x * wpb) {
		const uint64_t blk = sid / a.ns;
		const uint32_t s = (uint32_t)(sid - blk * a.ns);
		if (!dec_warp_slab(a, (const uint8_t *)src[blk], len[blk], o, blk, s, tsrc, tref) &&
		    (threadIdx.x & 31) == 0)
			atomicOr(&bad[blk], 1u);
		__syncwarp(); /* the tables are the next slab's */
	}
}

/* ---- host ---------------------------------------------------------------------------- */

static struct bq_kargs kargs(const struct kvt_gpu_bq *b)
{
	struct bq_kargs a;
	a.L = b->g.n_layers;
	a.H = b->g.n_kv_heads;
	a.D = b->g.head_dim;
	a.T = b->g.block_tokens;
	a.ns = b->ns;
	a.bf16 = b->g.dtype == KVT_DTYPE_BF16;
	a.slot = b->slot;
	a.head = b->head;
	a.bound = b->bound;
	a.raw = 4ull * a.L * a.H * a.T * a.D;
	a.p = b->p;
	return a;
}

extern "C" int kvt_gpu_bq_new(const struct kvt_codec_geom *g, const struct kvt_bq_params *p,
			      struct kvt_gpu_bq **out)
{
	*out = NULL;
	/* kvt_geom_check()'s conditions, without linking the codecs */
	if (!g || !g->n_layers || !g->n_kv_heads || !g->head_dim || g->head_dim % 2 ||
	    !g->block_tokens || g->n_layers > 0xffff || g->n_kv_heads > 0xffff ||
	    g->block_tokens > 0xffff ||
	    (g->dtype != KVT_DTYPE_FP16 && g->dtype != KVT_DTYPE_BF16) ||
	    4ull * g->n_layers * g->n_kv_heads * g->block_tokens * g->head_dim > (1ull << 31) ||
	    !p || p->n_layers != g->n_layers || p->n_layers > KVT_BQ_MAX_LAYERS ||
	    (size_t)g->block_tokens * g->head_dim > BQ_MAX_ELEMS || g->head_dim > BQ_MAX_D ||
	    p->maxoutl > BQ_MAXOUTL || !(p->dup >= 0) || !(p->rope_r >= 0) || !isfinite(p->rope_r))
		return -EINVAL;
	struct kvt_gpu_bq *b = (struct kvt_gpu_bq *)calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->g = *g;
	b->g.first_token = 0;
	b->p = *p;
	b->ns = 2 * g->n_layers * g->n_kv_heads;
	b->slot = (bq_slab_bound(g->block_tokens, g->head_dim) + 15) & ~15ull;
	b->head = BQ_STAGE_HEAD + 4ull * (b->ns + 1);
	b->bound = KVT_CHAIN_HDR_SIZE + b->head +
		   (uint64_t)b->ns * bq_slab_bound(g->block_tokens, g->head_dim);
	b->enc_smem = enc_smem_bytes(g->block_tokens, g->head_dim);
	if (b->enc_smem > BQ_SMEM_MAX) { /* many tokens of a small head_dim */
		free(b);
		return -EINVAL;
	}
	b->dec_smem = dec_smem_bytes(g->block_tokens, g->head_dim, p->rope_r > 0);
	*out = b;
	return 0;
}

extern "C" void kvt_gpu_bq_free(struct kvt_gpu_bq *b)
{
	free(b);
}

extern "C" size_t kvt_gpu_bq_record_bound(const struct kvt_gpu_bq *b)
{
	return (size_t)b->bound;
}

extern "C" size_t kvt_gpu_bq_scratch_bytes(const struct kvt_gpu_bq *b, uint32_t n)
{
	/* the slab slots, then each slab's size */
	return (size_t)n * b->ns * b->slot + (size_t)n * b->ns * 4;
}

static int cuda_err(cudaError_t e)
{
	return e == cudaSuccess ? 0 : e == cudaErrorNoDevice ? -ENODEV : -EIO;
}

static int launch_err(void)
{
	return cuda_err(cudaGetLastError());
}

/* The dynamic shared memory a kernel needs: 0 or -errno (the error is also cleared, so that
 * it is reported once, here, and not by the next launch_err()). */
static int set_smem(const void *kernel, size_t bytes)
{
	cudaError_t e =
	    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
	if (e == cudaSuccess)
		return 0;
	(void)cudaGetLastError();
	return cuda_err(e);
}

extern "C" int kvt_gpu_bq_encode(const struct kvt_gpu_bq *b, const void *const *src,
				 const uint32_t *first_token, uint32_t n, void *const *dst,
				 uint32_t *len, void *scratch, void *stream)
{
	if (!b || !src || !first_token || !dst || !len || !scratch || ((uintptr_t)scratch & 15))
		return -EINVAL;
	if (!n)
		return 0;
	if (n > 65535)
		return -EINVAL;
	cudaStream_t st = (cudaStream_t)stream;
	struct bq_kargs a = kargs(b);
	uint8_t *slots = (uint8_t *)scratch;
	uint32_t *sizes = (uint32_t *)(slots + (size_t)n * b->ns * b->slot);
	int ret = set_smem((const void *)bq_enc_slab_kernel, b->enc_smem);
	if (ret < 0)
		return ret;
	bq_enc_slab_kernel<<<dim3(b->ns, n), BQ_ENC_THREADS, b->enc_smem, st>>>(a, src, first_token,
										slots, sizes);
	bq_enc_head_kernel<<<(n + 3) / 4, 128, 0, st>>>(a, first_token, sizes, dst, len, n);
	bq_enc_move_kernel<<<dim3(b->ns, n), BQ_THREADS, 0, st>>>(a, slots, sizes, dst);
	return launch_err();
}

/* The one-CTA-a-slab decoder (kvt_gpu_bq_decode_cta(): the baseline the bench compares with). */
extern "C" int kvt_gpu_bq_decode_cta(const struct kvt_gpu_bq *b, const void *const *src,
				     const uint32_t *len, uint32_t n, void *const *dst,
				     uint32_t *bad, void *stream)
{
	if (!b || !src || !len || !dst || !bad)
		return -EINVAL;
	if (!n)
		return 0;
	if (n > 65535)
		return -EINVAL;
	cudaStream_t st = (cudaStream_t)stream;
	if (cudaMemsetAsync(bad, 0, (size_t)n * 4, st) != cudaSuccess)
		return -EIO;
	int ret = set_smem((const void *)bq_dec_slab_kernel, b->dec_smem);
	if (ret < 0)
		return ret;
	bq_dec_slab_kernel<<<dim3(b->ns, n), BQ_THREADS, b->dec_smem, st>>>(kargs(b), src, len, dst,
									    bad);
	return launch_err();
}

/* The warp-a-slab decoder into contiguous blocks (ppb 0) or engine pages. */
static int dec_warp(const struct kvt_gpu_bq *b, const void *const *src, const uint32_t *len,
		    uint32_t n, void *const *dst, uint32_t ppb, uint32_t *bad, void *stream)
{
	if (!b || !src || !len || !dst || !bad)
		return -EINVAL;
	if (!n)
		return 0;
	if (n > 65535 || (ppb && b->g.block_tokens % ppb))
		return -EINVAL;
	cudaStream_t st = (cudaStream_t)stream;
	if (cudaMemsetAsync(bad, 0, (size_t)n * 4, st) != cudaSuccess)
		return -EIO;
	const size_t smem = (size_t)BQ_DEC_WARPS * 4 * b->g.block_tokens;
	int ret = set_smem((const void *)bq_dec_warp_kernel, smem);
	if (ret < 0)
		return ret;
	const uint64_t nslabs = (uint64_t)n * b->ns;
	uint64_t grid = (nslabs + BQ_DEC_WARPS - 1) / BQ_DEC_WARPS;
	if (grid > BQ_DEC_GRID)
		grid = BQ_DEC_GRID; /* the warps then loop over the slabs */
	struct dec_dst o;
	o.ptrs = dst;
	o.ppb = ppb;
	bq_dec_warp_kernel<<<(unsigned)grid, 32 * BQ_DEC_WARPS, smem, st>>>(kargs(b), src, len, o,
									    bad, nslabs);
	return launch_err();
}

extern "C" int kvt_gpu_bq_decode(const struct kvt_gpu_bq *b, const void *const *src,
				 const uint32_t *len, uint32_t n, void *const *dst, uint32_t *bad,
				 void *stream)
{
	return dec_warp(b, src, len, n, dst, 0, bad, stream);
}

extern "C" int kvt_gpu_bq_decode_paged(const struct kvt_gpu_bq *b, const void *const *src,
				       const uint32_t *len, uint32_t n, void *const *pages,
				       uint32_t ppb, uint32_t *bad, void *stream)
{
	if (!ppb)
		return -EINVAL;
	return dec_warp(b, src, len, n, pages, ppb, bad, stream);
}
