/* SPDX-License-Identifier: MIT */
/* codec_raw.c - "raw": the block as it is (the record format's chain id 0). */
#include "codec_internal.h"

static size_t raw_bound(const struct kvt_stage *st, const struct kvt_codec_geom *g, size_t n)
{
	return n ? n : 1;
}

static ssize_t raw_copy(const struct kvt_stage *st, const struct kvt_codec_geom *g,
			const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	if (n > cap)
		return -ENOSPC;
	memcpy(dst, src, n);
	return (ssize_t)n;
}

const struct kvt_codec_ops kvt_codec_raw = {
    .name = "raw",
    .flags = KVT_CODEC_LOSSLESS,
    .max_encoded_size = raw_bound,
    .encode = raw_copy,
    .decode = raw_copy,
};
