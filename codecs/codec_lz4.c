/* SPDX-License-Identifier: MIT */
/* codec_lz4.c - "lz4" (fast mode, lz4:A = acceleration) and "lz4hc" (lz4hc:L = level). */
#include <lz4.h>
#include <lz4hc.h>

#include "codec_internal.h"

static const struct kvt_argdef lz4_args[] = {{"accel", 1, 1, 65537, 1}};
static const struct kvt_argdef lz4hc_args[] = {{"level", 9, 1, 12, 1}};

static int lz4_parse(struct kvt_stage *st, const char *a)
{
	return kvt_args_parse(st, lz4_args, 1, a);
}

static int lz4_canon(const struct kvt_stage *st, char *b, size_t l)
{
	return kvt_args_canon(st, lz4_args, 1, b, l);
}

static int lz4hc_parse(struct kvt_stage *st, const char *a)
{
	return kvt_args_parse(st, lz4hc_args, 1, a);
}

static int lz4hc_canon(const struct kvt_stage *st, char *b, size_t l)
{
	return kvt_args_canon(st, lz4hc_args, 1, b, l);
}

static size_t lz4_bound(const struct kvt_stage *st, const struct kvt_codec_geom *g, size_t n)
{
	if (n > LZ4_MAX_INPUT_SIZE)
		return 0;
	return KVT_BYTE_HDR + (size_t)LZ4_compressBound((int)n);
}

static ssize_t lz4_enc_any(const struct kvt_stage *st, const uint8_t *src, size_t n, uint8_t *dst,
			   size_t cap, int hc)
{
	int r;
	if (n > LZ4_MAX_INPUT_SIZE || cap < KVT_BYTE_HDR)
		return n > LZ4_MAX_INPUT_SIZE ? -EINVAL : -ENOSPC;
	size_t room = cap - KVT_BYTE_HDR;
	if (room > INT32_MAX)
		room = INT32_MAX;
	st32(dst, (uint32_t)n);
	if (hc)
		r = LZ4_compress_HC((const char *)src, (char *)dst + KVT_BYTE_HDR, (int)n,
				    (int)room, (int)st->arg[0]);
	else
		r = LZ4_compress_fast((const char *)src, (char *)dst + KVT_BYTE_HDR, (int)n,
				      (int)room, (int)st->arg[0]);
	if (r <= 0 && n)
		return -ENOSPC;
	return KVT_BYTE_HDR + r;
}

static ssize_t lz4_enc(const struct kvt_stage *st, const struct kvt_codec_geom *g,
		       const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	return lz4_enc_any(st, src, n, dst, cap, 0);
}

static ssize_t lz4hc_enc(const struct kvt_stage *st, const struct kvt_codec_geom *g,
			 const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	return lz4_enc_any(st, src, n, dst, cap, 1);
}

static ssize_t lz4_dec(const struct kvt_stage *st, const struct kvt_codec_geom *g,
		       const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	if (n < KVT_BYTE_HDR || n - KVT_BYTE_HDR > INT32_MAX)
		return -EBADMSG;
	uint32_t raw = ld32(src);
	if (raw > cap || raw > LZ4_MAX_INPUT_SIZE)
		return -EBADMSG;
	int r = LZ4_decompress_safe((const char *)src + KVT_BYTE_HDR, (char *)dst,
				    (int)(n - KVT_BYTE_HDR), (int)raw);
	if (r < 0 || (uint32_t)r != raw)
		return -EBADMSG;
	return r;
}

const struct kvt_codec_ops kvt_codec_lz4 = {
    .name = "lz4",
    .flags = KVT_CODEC_LOSSLESS,
    .parse = lz4_parse,
    .canon = lz4_canon,
    .max_encoded_size = lz4_bound,
    .encode = lz4_enc,
    .decode = lz4_dec,
};

const struct kvt_codec_ops kvt_codec_lz4hc = {
    .name = "lz4hc",
    .flags = KVT_CODEC_LOSSLESS,
    .parse = lz4hc_parse,
    .canon = lz4hc_canon,
    .max_encoded_size = lz4_bound,
    .encode = lz4hc_enc,
    .decode = lz4_dec,
};
