/* SPDX-License-Identifier: MIT */
/*
 * kvd.h - reader and writer of .kvd KV-cache dumps (format: docs/KVD.md).
 *
 * K and V are [layer][kv_head][token][dim] fp16, post-RoPE K; Q is [layer][q_head][p][dim]
 * for the last n_q_pos token positions.  kvd_load() validates every size against the file
 * length before it trusts it.
 */
#ifndef KVT_KVD_H
#define KVT_KVD_H

#include <stddef.h>
#include <stdint.h>

struct kvd {
	uint32_t n_layers, n_kv_heads, n_q_heads, head_dim, n_tokens, n_q_pos, dtype;
	char source[65];
	uint8_t *tokens; /* n_tokens bytes */
	uint16_t *k;	 /* fp16 bits, n_layers*n_kv_heads*n_tokens*head_dim */
	uint16_t *v;
	uint16_t *q; /* n_layers*n_q_heads*n_q_pos*head_dim */
	void *mem;   /* owns all of the above */
	size_t mem_len;
};

/* Returns 0 or -errno (-EINVAL/-EBADMSG for a malformed file); *out is zeroed on error. */
int kvd_load(const char *path, struct kvd *out);
void kvd_free(struct kvd *d);
/* Writes d (with its own k/v/q pointers) in .kvd format, whole or not at all. Returns 0 or
 * -errno. */
int kvd_save(const char *path, const struct kvd *d);
/* Writes the n buffers parts[i] (lens[i] bytes) one after the other to path, whole or not at
 * all (a temporary renamed in place).  Returns 0 or -errno. */
int kvd_write_file(const char *path, const void *const *parts, const size_t *lens, int n);

/*
 * Tokens [t0, t0 + bt) of every layer and kv head as one block in kvtier's page-first order
 * (per layer: K as [head][token][dim], then V), copied from k and v (laid out as d->k and
 * d->v: d's own or decoded copies) into blk when dir > 0, or from blk back into them.
 */
void kvd_block_io(const struct kvd *d, uint16_t *k, uint16_t *v, uint32_t t0, uint32_t bt,
		  uint16_t *blk, int dir);

/* Command-line numbers of the bench tools: a u32 in decimal, and a range "A:B" with A < B.
 * 0, or -1 for malformed text. */
int kvd_parse_u32(const char *s, uint32_t *v);
int kvd_parse_range(const char *s, uint32_t *a, uint32_t *b);

static inline size_t kvd_kv_elems(const struct kvd *d)
{
	return (size_t)d->n_layers * d->n_kv_heads * d->n_tokens * d->head_dim;
}

static inline size_t kvd_q_elems(const struct kvd *d)
{
	return (size_t)d->n_layers * d->n_q_heads * d->n_q_pos * d->head_dim;
}

/* Pointer to K (or V) of (layer, kv head, token). */
static inline const uint16_t *kvd_at(const struct kvd *d, const uint16_t *base, uint32_t layer,
				     uint32_t head, uint32_t tok)
{
	return base + (((size_t)layer * d->n_kv_heads + head) * d->n_tokens + tok) * d->head_dim;
}

float kvd_half_to_float(uint16_t h);
uint16_t kvd_float_to_half(float f);

#endif
