/* SPDX-License-Identifier: MIT */
/*
 * codec_fpx.c - "fpx": lossless KV codec for 16-bit floats.
 *
 *   fpx:level=L,split=0|1
 *
 * 1. Exact duplicate token vectors inside a slab (one layer, K or V, one kv head) are stored
 *    once: a later copy becomes a reference to the first.  Layer-0 values depend on the token
 *    alone, so every repeated token of a block repeats its layer-0 value vector bit for bit.
 * 2. The remaining 16-bit elements are split into byte planes: the high bytes (sign, exponent,
 *    top mantissa bits: skewed, compressible) go through zstd at level L with its Huffman
 *    literals, one frame per layer and K/V (split=1) so that each has its own statistics;
 *    the low bytes (mantissa noise, about 7.9 bits of entropy) are stored as they are.
 * Decoding is one zstd pass over half of the block plus copies, hence faster than zstd over
 * the whole block.
 *
 * Format: per slab, a bitmap of duplicate rows and the packed references of those rows; then
 * per group of slabs the hi-plane frame's length u32 and the frame; then the low plane.
 */
#include <stdlib.h>
#include <zstd.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "kvslab.h"

enum { A_LEVEL, A_SPLIT, A_N };

static const struct kvt_argdef fpx_args[A_N] = {{"level", 1, -7, 22, 1}, {"split", 1, 0, 1, 1}};

static int fpx_parse(struct kvt_stage *st, const char *a)
{
	return kvt_args_parse(st, fpx_args, A_N, a);
}

static int fpx_canon(const struct kvt_stage *st, char *b, size_t l)
{
	return kvt_args_canon(st, fpx_args, A_N, b, l);
}

static size_t fpx_bound(const struct kvt_stage *st, const struct kvt_codec_geom *g, size_t n)
{
	if (kvt_geom_check(g))
		return 0;
	size_t ns = geom_nslabs(g), T = g->block_tokens, half = n / 2;
	return ns * ((T + 7) / 8 + packed_len(T, 16)) + 8 + ZSTD_compressBound(half) * 2;
}

static uint64_t row_hash(const uint8_t *p, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = 0;
		memcpy(&v, p + i, len - i < 8 ? len - i : 8);
		h = (h ^ v) * 0x100000001b3ull;
		h ^= h >> 29;
	}
	return h;
}

static ssize_t fpx_enc(const struct kvt_stage *st, const struct kvt_codec_geom *g,
		       const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	size_t slab = geom_slab(g), ns = geom_nslabs(g), rowb = (size_t)g->head_dim * 2;
	uint32_t T = g->block_tokens, D = g->head_dim;
	uint64_t *h = malloc(T * sizeof(uint64_t));
	uint16_t *ref = malloc(T * sizeof(uint16_t));
	uint8_t *hi = malloc(n / 2 + 1), *lo = malloc(n / 2 + 1);
	size_t nu = 0, *su = malloc((geom_nslabs(g) + 1) * sizeof(size_t)); /* unique elements */
	ssize_t rc = -ENOMEM;
	struct wbuf w;
	ZSTD_CCtx *cctx = kvt_zstd_cctx();

	if (kvt_geom_check(g) || n != kvt_geom_block_bytes(g)) {
		rc = -EINVAL;
		goto out;
	}
	if (!h || !ref || !hi || !lo || !su || !cctx)
		goto out;
	wb_init(&w, dst, cap);
	su[0] = 0;
	for (size_t s = 0; s < ns && !w.err; s++) {
		const uint8_t *in = src + s * slab * 2;
		for (uint32_t t = 0; t < T; t++) {
			const uint8_t *row = in + t * rowb;
			h[t] = row_hash(row, rowb);
			ref[t] = 0;
			for (uint32_t r = 0; r < t; r++)
				if (h[r] == h[t] && !ref[r] && !memcmp(in + r * rowb, row, rowb)) {
					ref[t] = (uint16_t)(r + 1);
					break;
				}
			if (ref[t])
				continue;
			for (uint32_t d = 0; d < D; d++) {
				lo[nu] = row[2 * d];
				hi[nu++] = row[2 * d + 1];
			}
		}
		su[s + 1] = nu;
		kv_write_refs(&w, ref, T);
	}
	/* split=1: one frame (one Huffman table) per layer and K/V; else one for all */
	size_t grp = st->arg[A_SPLIT] ? g->n_kv_heads : ns;
	for (size_t s0 = 0; s0 < ns && !w.err; s0 += grp) {
		size_t a = su[s0], b = su[s0 + grp];
		uint8_t *lp = wb_reserve(&w, 4);
		if (!lp)
			break;
		size_t z = ZSTD_compressCCtx(cctx, w.p + w.len, w.cap - w.len, hi + a, b - a,
					     (int)st->arg[A_LEVEL]);
		if (ZSTD_isError(z)) {
			w.err = -ENOSPC;
			break;
		}
		st32(lp, (uint32_t)z);
		w.len += z;
	}
	wb_bytes(&w, lo, nu);
	rc = w.err ? w.err : (ssize_t)w.len;
out:
	free(h);
	free(ref);
	free(hi);
	free(lo);
	free(su);
	return rc;
}

/* row[2d] = lo[d], row[2d + 1] = hi[d]: the inverse of the plane split. */
static void interleave(uint8_t *row, const uint8_t *lo, const uint8_t *hi, uint32_t D)
{
	uint32_t d = 0;
#ifdef __SSE2__
	for (; d + 16 <= D; d += 16) {
		__m128i a = _mm_loadu_si128((const __m128i *)(lo + d));
		__m128i b = _mm_loadu_si128((const __m128i *)(hi + d));
		_mm_storeu_si128((__m128i *)(row + 2 * d), _mm_unpacklo_epi8(a, b));
		_mm_storeu_si128((__m128i *)(row + 2 * d + 16), _mm_unpackhi_epi8(a, b));
	}
#endif
	for (; d < D; d++) {
		row[2 * d] = lo[d];
		row[2 * d + 1] = hi[d];
	}
}

static ssize_t fpx_dec(const struct kvt_stage *st, const struct kvt_codec_geom *g,
		       const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	size_t slab = geom_slab(g), ns = geom_nslabs(g), raw = kvt_geom_block_bytes(g);
	size_t rowb = (size_t)g->head_dim * 2, nu = 0;
	size_t grp = st->arg[A_SPLIT] ? g->n_kv_heads : ns, ng = (ns + grp - 1) / grp;
	uint32_t T = g->block_tokens, D = g->head_dim;
	uint16_t *ref = malloc(ns * T * sizeof(uint16_t));
	size_t *su = malloc((ns + 1) * sizeof(size_t));
	const uint8_t **fp = malloc(ng * sizeof(*fp));
	uint32_t *fl = malloc(ng * sizeof(*fl));
	uint8_t *hi = malloc(grp * slab); /* one group's high bytes at a time */
	ZSTD_DCtx *dctx = kvt_zstd_dctx();
	ssize_t rc = -ENOMEM;
	struct rbuf r;

	if (!ref || !su || !fp || !fl || !hi || !dctx)
		goto out;
	rc = -EBADMSG;
	if (!raw || cap < raw)
		goto out;
	su[0] = 0;
	rb_init(&r, src, n);
	for (size_t s = 0; s < ns; s++) {
		uint16_t *rf = ref + s * T;
		if (kv_read_refs(&r, rf, T))
			goto out;
		for (uint32_t t = 0; t < T; t++) {
			if (!rf[t])
				nu += D;
			else if (rf[rf[t] - 1]) /* must name a row that is itself stored */
				goto out;
		}
		su[s + 1] = nu;
	}
	for (size_t k = 0; k < ng; k++) {
		fl[k] = rb_u32(&r);
		fp[k] = rb_take(&r, fl[k]);
		if (!fp[k])
			goto out;
	}
	const uint8_t *lo = rb_take(&r, nu);
	if (!lo || r.pos != n)
		goto out;
	for (size_t k = 0; k < ng; k++) {
		size_t s0 = k * grp, s1 = s0 + grp < ns ? s0 + grp : ns, a = su[s0], b = su[s1];
		size_t z = ZSTD_decompressDCtx(dctx, hi, b - a, fp[k], fl[k]);
		if (ZSTD_isError(z) || z != b - a)
			goto out;
		const uint8_t *h = hi, *l = lo + a;
		for (size_t s = s0; s < s1; s++) {
			uint8_t *o = dst + s * slab * 2;
			const uint16_t *rf = ref + s * T;
			for (uint32_t t = 0; t < T; t++) {
				uint8_t *row = o + t * rowb;
				if (rf[t]) {
					memcpy(row, o + (rf[t] - 1) * rowb, rowb);
					continue;
				}
				interleave(row, l, h, D);
				h += D;
				l += D;
			}
		}
	}
	rc = (ssize_t)raw;
out:
	free(ref);
	free(su);
	free(fp);
	free(fl);
	free(hi);
	return rc;
}

const struct kvt_codec_ops kvt_codec_fpx = {
    .name = "fpx",
    .flags = KVT_CODEC_LOSSLESS | KVT_CODEC_KV,
    .parse = fpx_parse,
    .canon = fpx_canon,
    .max_encoded_size = fpx_bound,
    .encode = fpx_enc,
    .decode = fpx_dec,
};
