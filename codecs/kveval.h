/* SPDX-License-Identifier: MIT */
/*
 * kveval.h - the error metric of codecs (DESIGN §5), shared by `kvtier-eval codec` (on a dump,
 * with the dump's queries) and the daemon's calibration (daemon/codec_auto.c, on blocks it
 * holds, which carry no queries).
 *
 *   err = mean over queries of ||o - o^|| / ||o||,   o = softmax(q K^T / sqrt(D)) V,
 *
 * o^ the same with the decoded K and V.  Thread-safe; every function allocates its own
 * scratch.
 */
#ifndef KVT_KVEVAL_H
#define KVT_KVEVAL_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Attention outputs o[p][D] of nq queries q[p][D] (unscaled) over keys k[i][D] and values
 * v[i][D]: query p sees keys 0..ctx[p]-1 (all nk when ctx is NULL).  The arithmetic is the
 * one `kvtier-eval codec` has always used (float scores and weights, double sums), so its
 * figures do not move.  0 or -ENOMEM.
 */
int kvt_eval_attention(const float *q, uint32_t nq, const uint32_t *ctx, const float *k,
		       const float *v, uint32_t nk, uint32_t D, float *o);

/* Sum over n vectors of D of ||o[i] - o2[i]|| / ||o[i]|| (0 where o[i] is 0). */
double kvt_eval_rel_err_sum(const float *o, const float *o2, size_t n, uint32_t D);

/*
 * The metric on one block without queries, as the daemon measures it: in every slab (layer,
 * K or V pair, kv head) the block's own keys stand for the queries, each query row t taking
 * the key of row (t + T/2) mod T (so that no query meets its own key, which would make the
 * output that token's value), over all T rows of the block.  Adds each query's relative
 * error to *sum and the count of queries to *n.  ref and dec are blocks of geometry g
 * (fp16 or bf16).  How close this is to the metric with real queries: README "Codec chosen
 * per tier".  0, -EINVAL (geometry) or -ENOMEM.
 */
int kvt_eval_block_err(const struct kvt_codec_geom *g, const void *ref, const void *dec,
		       double *sum, size_t *n);

#ifdef __cplusplus
}
#endif
#endif
