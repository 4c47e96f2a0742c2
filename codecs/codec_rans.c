/* SPDX-License-Identifier: MIT */
/*
 * codec_rans.c - "rans": order-0 rANS over bytes, one frequency table per 64 KiB chunk.
 * Used alone (e.g. "shuffle+rans"); after a KV quantizer it is fused into that codec instead
 * and codes its symbols with per-channel statistics (see the chain parser).
 *
 * Format: total length u32; per chunk: table (rans_table_write), stream length u32, stream.
 */
#include <stdlib.h>

#include "codec_internal.h"
#include "rans.h"

#define CHUNK (64u << 10)

static size_t rans_stage_bound(const struct kvt_stage *st, const struct kvt_codec_geom *g, size_t n)
{
	size_t chunks = n / CHUNK + 1;
	return KVT_BYTE_HDR + chunks * (2 + 2 * RANS_MAXSYM + 4) + rans_bound(n) + chunks * 32;
}

static ssize_t rans_stage_enc(const struct kvt_stage *st, const struct kvt_codec_geom *g,
			      const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	struct wbuf w;
	struct rans_table *t = malloc(sizeof(*t));
	uint16_t *sym = malloc(CHUNK * sizeof(*sym));
	ssize_t rc = -ENOMEM;

	if (!t || !sym)
		goto out;
	if (n > UINT32_MAX) {
		rc = -EINVAL;
		goto out;
	}
	wb_init(&w, dst, cap);
	wb_u32(&w, (uint32_t)n);
	for (size_t off = 0; off < n; off += CHUNK) {
		size_t len = n - off < CHUNK ? n - off : CHUNK;
		uint32_t counts[256] = {0};
		for (size_t i = 0; i < len; i++) {
			sym[i] = src[off + i];
			counts[sym[i]]++;
		}
		rans_table_from_counts(t, counts, 256);
		rans_table_write(&w, t);
		uint8_t *lenp = wb_reserve(&w, 4);
		if (w.err) {
			rc = w.err;
			goto out;
		}
		const struct rans_table *tabs[1] = {t};
		long l = rans_encode(sym, NULL, len, tabs, w.p + w.len, w.cap - w.len);
		if (l < 0) {
			rc = l;
			goto out;
		}
		st32(lenp, (uint32_t)l);
		w.len += (size_t)l;
	}
	rc = w.err ? w.err : (ssize_t)w.len;
out:
	free(t);
	free(sym);
	return rc;
}

static ssize_t rans_stage_dec(const struct kvt_stage *st, const struct kvt_codec_geom *g,
			      const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	struct rbuf r;
	struct rans_table *t = malloc(sizeof(*t));
	uint16_t *sym = malloc(CHUNK * sizeof(*sym));
	ssize_t rc = -ENOMEM;

	if (!t || !sym)
		goto out;
	rc = -EBADMSG;
	rb_init(&r, src, n);
	uint32_t raw = rb_u32(&r);
	if (r.err || raw > cap)
		goto out;
	for (size_t off = 0; off < raw; off += CHUNK) {
		size_t len = raw - off < CHUNK ? raw - off : CHUNK;
		if (rans_table_read(&r, t, 256))
			goto out;
		uint32_t sl = rb_u32(&r);
		const uint8_t *s = rb_take(&r, sl);
		const struct rans_table *tabs[1] = {t};
		if (!s || rans_decode(s, sl, len, NULL, 1, tabs, sym))
			goto out;
		for (size_t i = 0; i < len; i++)
			dst[off + i] = (uint8_t)sym[i];
	}
	if (r.pos != n)
		goto out;
	rc = raw;
out:
	free(t);
	free(sym);
	return rc;
}

const struct kvt_codec_ops kvt_codec_rans = {
    .name = "rans",
    .flags = KVT_CODEC_LOSSLESS,
    .max_encoded_size = rans_stage_bound,
    .encode = rans_stage_enc,
    .decode = rans_stage_dec,
};
