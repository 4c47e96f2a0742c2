/* SPDX-License-Identifier: MIT */
/*
 * kvt_gpu_bq.h - the "bq" codec on the GPU (gpu/gpu_bq.cu): encode KV blocks in device memory
 * into records, and records into blocks, byte for byte and value for value what the CPU codec
 * (codecs/codec_bq.c) makes and decodes.  Format: codecs/CODECS.md ("bq").
 *
 * A plan holds one chain's parameters for one block geometry.  Work is batched: n blocks, each
 * named by a device pointer in a device array; every call is asynchronous on `stream` (a
 * cudaStream_t, NULL for the default stream) and returns 0 or -errno for what it can tell at
 * launch (-EINVAL, -ENODEV without CUDA, -EIO for a CUDA error).  Plans are immutable and may
 * be used from several threads at once.
 */
#ifndef KVT_GPU_BQ_H
#define KVT_GPU_BQ_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "codec_bq.h"

#ifdef __cplusplus
extern "C" {
#endif

struct kvt_gpu_bq;

/*
 * A plan for blocks of geometry g (fp16 or bf16; first_token per call) and the chain
 * parameters p (kvt_bq_chain_params()).  -EINVAL if a slab does not fit the kernels (T x D
 * above 24576 elements, head_dim above 1024, or the encoder's shared memory above 227 KiB:
 * thousands of tokens of a small head_dim), -ENOMEM.  Free with kvt_gpu_bq_free().
 */
int kvt_gpu_bq_new(const struct kvt_codec_geom *g, const struct kvt_bq_params *p,
		   struct kvt_gpu_bq **out);
void kvt_gpu_bq_free(struct kvt_gpu_bq *b); /* NULL is a no-op */

/* Largest record of one block (the destination each dst[i] must hold). */
size_t kvt_gpu_bq_record_bound(const struct kvt_gpu_bq *b);
/* Device scratch kvt_gpu_bq_encode() needs for n blocks. */
size_t kvt_gpu_bq_scratch_bytes(const struct kvt_gpu_bq *b, uint32_t n);

/*
 * Encodes the n blocks src[i] (device pointers, in a device array) at sequence positions
 * first_token[i] (device array) into the records dst[i] (each kvt_gpu_bq_record_bound()
 * bytes); len[i] (device array) receives each record's length.  scratch: device memory of
 * kvt_gpu_bq_scratch_bytes(n), 16-byte aligned.
 */
int kvt_gpu_bq_encode(const struct kvt_gpu_bq *b, const void *const *src,
		      const uint32_t *first_token, uint32_t n, void *const *dst, uint32_t *len,
		      void *scratch, void *stream);

/*
 * Decodes the n records src[i] of len[i] bytes (device arrays) into the blocks dst[i]
 * (4-byte aligned; source blocks of kvt_gpu_bq_encode() likewise).
 * bad[i] (device array) is set to 0, or to 1 for a record that is malformed or not this
 * plan's chain and geometry (its block is then undefined; nothing outside it is written).
 */
int kvt_gpu_bq_decode(const struct kvt_gpu_bq *b, const void *const *src, const uint32_t *len,
		      uint32_t n, void *const *dst, uint32_t *bad, void *stream);

/*
 * kvt_gpu_bq_decode() straight into engine pages, without a staging block: the rows of layer
 * l, K (kv 0) or V (kv 1), of block i go to the ppb pages
 *   pages[((i * L + l) * 2 + kv) * ppb + j],  j = 0 .. ppb - 1  (a device array)
 * of P = T / ppb tokens each, laid out [P][H][head_dim] (kvt_gpu_paged_layout's pages):
 * token t, head h, channel d at element ((t % P) * H + h) * head_dim + d of page t / P.  ppb
 * must divide T (-EINVAL); pages 4-byte aligned.  A bad record's pages are undefined, nothing
 * else is written.  The values are kvt_gpu_bq_decode()'s.
 */
int kvt_gpu_bq_decode_paged(const struct kvt_gpu_bq *b, const void *const *src, const uint32_t *len,
			    uint32_t n, void *const *pages, uint32_t ppb, uint32_t *bad,
			    void *stream);

/* The previous decoder (one CTA a slab), the same results: the baseline that
 * kvtier-gpu-bq-bench times beside kvt_gpu_bq_decode(), and test_gpu_bq checks. */
int kvt_gpu_bq_decode_cta(const struct kvt_gpu_bq *b, const void *const *src, const uint32_t *len,
			  uint32_t n, void *const *dst, uint32_t *bad, void *stream);

#ifdef __cplusplus
}
#endif
#endif
