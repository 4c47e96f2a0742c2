/* SPDX-License-Identifier: MIT */
/* codec_zstd.c - "zstd:L", zstd at level L (default 3; negative levels are the fast ones). */
#include <zstd.h>
#include <zstd_errors.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "codec_internal.h"

/*
 * One compression and one decompression context per thread, made on first use and freed
 * when the thread exits: a context costs ~100-200 KiB, too much to make per block.
 */
static pthread_key_t cctx_key, dctx_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

static void free_cctx(void *p)
{
	ZSTD_freeCCtx(p);
}

static void free_dctx(void *p)
{
	ZSTD_freeDCtx(p);
}

static void make_keys(void)
{
	if (pthread_key_create(&cctx_key, free_cctx) || pthread_key_create(&dctx_key, free_dctx))
		abort();
}

ZSTD_CCtx *kvt_zstd_cctx(void)
{
	pthread_once(&key_once, make_keys);
	ZSTD_CCtx *c = pthread_getspecific(cctx_key);
	if (!c) {
		c = ZSTD_createCCtx();
		if (c && pthread_setspecific(cctx_key, c)) {
			ZSTD_freeCCtx(c);
			c = NULL;
		}
	}
	return c;
}

ZSTD_DCtx *kvt_zstd_dctx(void)
{
	pthread_once(&key_once, make_keys);
	ZSTD_DCtx *c = pthread_getspecific(dctx_key);
	if (!c) {
		c = ZSTD_createDCtx();
		if (c && pthread_setspecific(dctx_key, c)) {
			ZSTD_freeDCtx(c);
			c = NULL;
		}
	}
	return c;
}

static const struct kvt_argdef zstd_args[] = {{"level", 3, -7, 22, 1}};

static int zstd_parse(struct kvt_stage *st, const char *a)
{
	return kvt_args_parse(st, zstd_args, 1, a);
}

static int zstd_canon(const struct kvt_stage *st, char *b, size_t l)
{
	/* the level is always written: "zstd" and "zstd:3" are one chain, named "zstd:3" */
	int w = snprintf(b, l, "%d", (int)st->arg[0]);
	return w < 0 || (size_t)w >= l ? -EINVAL : 0;
}

static size_t zstd_bound(const struct kvt_stage *st, const struct kvt_codec_geom *g, size_t n)
{
	return KVT_BYTE_HDR + ZSTD_compressBound(n);
}

static ssize_t zstd_enc(const struct kvt_stage *st, const struct kvt_codec_geom *g,
			const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	if (cap < KVT_BYTE_HDR)
		return -ENOSPC;
	if (n > UINT32_MAX)
		return -EINVAL;
	st32(dst, (uint32_t)n);
	ZSTD_CCtx *c = kvt_zstd_cctx();
	if (!c)
		return -ENOMEM;
	size_t r =
	    ZSTD_compressCCtx(c, dst + KVT_BYTE_HDR, cap - KVT_BYTE_HDR, src, n, (int)st->arg[0]);
	if (ZSTD_isError(r))
		return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall ? -ENOSPC : -EINVAL;
	return (ssize_t)(KVT_BYTE_HDR + r);
}

static ssize_t zstd_dec(const struct kvt_stage *st, const struct kvt_codec_geom *g,
			const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	if (n < KVT_BYTE_HDR)
		return -EBADMSG;
	uint32_t raw = ld32(src);
	if (raw > cap)
		return -EBADMSG;
	ZSTD_DCtx *c = kvt_zstd_dctx();
	if (!c)
		return -ENOMEM;
	size_t r = ZSTD_decompressDCtx(c, dst, raw, src + KVT_BYTE_HDR, n - KVT_BYTE_HDR);
	if (ZSTD_isError(r) || r != raw)
		return -EBADMSG;
	return (ssize_t)r;
}

const struct kvt_codec_ops kvt_codec_zstd = {
    .name = "zstd",
    .flags = KVT_CODEC_LOSSLESS,
    .parse = zstd_parse,
    .canon = zstd_canon,
    .max_encoded_size = zstd_bound,
    .encode = zstd_enc,
    .decode = zstd_dec,
};
