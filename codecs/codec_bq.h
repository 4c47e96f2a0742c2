/* SPDX-License-Identifier: MIT */
/*
 * codec_bq.h - what the "bq" codec shares with its GPU kernels (gpu/gpu_bq.cu) and tests:
 * a chain's encoder parameters and the scalar switch.  Format: codecs/CODECS.md ("bq").
 */
#ifndef KVT_CODEC_BQ_H
#define KVT_CODEC_BQ_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A bq chain's encoder parameters, what a GPU encoder needs besides the blocks (gpu/kvt_gpu_bq.h).
 * Plain data: no pointers, copied by value.
 */
#define KVT_BQ_MAX_LAYERS 256 /* layers a GPU plan takes */
struct kvt_bq_params {
	uint32_t chain_id; /* kvt_chain_id(): written in every record */
	uint32_t sink;	   /* sequence positions < sink are kept exact */
	uint32_t maxoutl;  /* extremes per side of a channel that may be listed exact */
	float dup;	   /* duplicate rows within dup * step / 2 (0: none) */
	uint32_t n_layers;
	float f[2 * KVT_BQ_MAX_LAYERS]; /* step factor of layer l's keys (2l) and values (2l + 1) */
	double rope_r; /* keys in the pre-RoPE frame: theta^(-2/head_dim) (rope=theta); 0: off */
};

/*
 * Fills *p for blocks of geometry g (first_token ignored).  Returns 0, or -EINVAL if c is not
 * a bq chain (one stage), g is invalid, or g has more than KVT_BQ_MAX_LAYERS layers.
 */
int kvt_bq_chain_params(const struct kvt_chain *c, const struct kvt_codec_geom *g,
			struct kvt_bq_params *p);
/* Is c a chain of the one stage bq (one a GPU can encode and decode)? */
int kvt_bq_chain_is(const struct kvt_chain *c);

#ifdef __cplusplus
}
#endif
#endif
