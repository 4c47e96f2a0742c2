/* SPDX-License-Identifier: MIT */
/*
 * codec_shuffle.c - "shuffle": byte-plane transpose of 16-bit elements (fp16/bf16), low bytes
 * first then high bytes, so that a following lz4/zstd/rans sees the sign/exponent bytes
 * together.  Output = input length (u32) then the planes; an odd trailing byte stays last.
 */
#include "codec_internal.h"

static size_t shuf_bound(const struct kvt_stage *st, const struct kvt_codec_geom *g, size_t n)
{
	return KVT_BYTE_HDR + n;
}

static ssize_t shuf_enc(const struct kvt_stage *st, const struct kvt_codec_geom *g,
			const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	size_t h = n / 2;
	if (cap < KVT_BYTE_HDR + n)
		return -ENOSPC;
	if (n > UINT32_MAX)
		return -EINVAL;
	st32(dst, (uint32_t)n);
	uint8_t *lo = dst + KVT_BYTE_HDR, *hi = lo + h;
	for (size_t i = 0; i < h; i++) {
		lo[i] = src[2 * i];
		hi[i] = src[2 * i + 1];
	}
	if (n & 1)
		dst[KVT_BYTE_HDR + n - 1] = src[n - 1];
	return (ssize_t)(KVT_BYTE_HDR + n);
}

static ssize_t shuf_dec(const struct kvt_stage *st, const struct kvt_codec_geom *g,
			const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	if (n < KVT_BYTE_HDR || ld32(src) != n - KVT_BYTE_HDR || n - KVT_BYTE_HDR > cap)
		return -EBADMSG;
	n -= KVT_BYTE_HDR;
	size_t h = n / 2;
	const uint8_t *lo = src + KVT_BYTE_HDR, *hi = lo + h;
	for (size_t i = 0; i < h; i++) {
		dst[2 * i] = lo[i];
		dst[2 * i + 1] = hi[i];
	}
	if (n & 1)
		dst[n - 1] = src[KVT_BYTE_HDR + n - 1];
	return (ssize_t)n;
}

const struct kvt_codec_ops kvt_codec_shuffle = {
    .name = "shuffle",
    .flags = KVT_CODEC_LOSSLESS,
    .max_encoded_size = shuf_bound,
    .encode = shuf_enc,
    .decode = shuf_dec,
};
