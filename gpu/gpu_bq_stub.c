/* SPDX-License-Identifier: MIT */
/* gpu_bq_stub.c - kvt_gpu_bq.h without CUDA: plans can be made, the kernels answer -ENODEV. */
#include <errno.h>
#include <stdlib.h>

#include "kvt_gpu_bq.h"

struct kvt_gpu_bq {
	int unused;
};

int kvt_gpu_bq_new(const struct kvt_codec_geom *g, const struct kvt_bq_params *p,
		   struct kvt_gpu_bq **out)
{
	(void)g;
	(void)p;
	*out = NULL;
	return -ENODEV;
}

void kvt_gpu_bq_free(struct kvt_gpu_bq *b)
{
	free(b);
}

size_t kvt_gpu_bq_record_bound(const struct kvt_gpu_bq *b)
{
	(void)b;
	return 0;
}

size_t kvt_gpu_bq_scratch_bytes(const struct kvt_gpu_bq *b, uint32_t n)
{
	(void)b;
	(void)n;
	return 0;
}

int kvt_gpu_bq_encode(const struct kvt_gpu_bq *b, const void *const *src,
		      const uint32_t *first_token, uint32_t n, void *const *dst, uint32_t *len,
		      void *scratch, void *stream)
{
	(void)b, (void)src, (void)first_token, (void)n, (void)dst, (void)len, (void)scratch,
	    (void)stream;
	return -ENODEV;
}

int kvt_gpu_bq_decode(const struct kvt_gpu_bq *b, const void *const *src, const uint32_t *len,
		      uint32_t n, void *const *dst, uint32_t *bad, void *stream)
{
	(void)b, (void)src, (void)len, (void)n, (void)dst, (void)bad, (void)stream;
	return -ENODEV;
}

int kvt_gpu_bq_decode_paged(const struct kvt_gpu_bq *b, const void *const *src, const uint32_t *len,
			    uint32_t n, void *const *pages, uint32_t ppb, uint32_t *bad,
			    void *stream)
{
	(void)b, (void)src, (void)len, (void)n, (void)pages, (void)ppb, (void)bad, (void)stream;
	return -ENODEV;
}

int kvt_gpu_bq_decode_cta(const struct kvt_gpu_bq *b, const void *const *src, const uint32_t *len,
			  uint32_t n, void *const *dst, uint32_t *bad, void *stream)
{
	(void)b, (void)src, (void)len, (void)n, (void)dst, (void)bad, (void)stream;
	return -ENODEV;
}
