/* SPDX-License-Identifier: MIT */
/*
 * kvtier_llama_state.c - llama.cpp's sequence state: parsing it, and building one of n cells.
 *
 * llama.cpp's per-sequence state, as llama_state_seq_get_data() writes it in the pinned build
 * (src/llama-context.cpp state_seq_get_data, src/llama-kv-cache.cpp state_write*), all fields
 * little-endian, no padding:
 *
 *   u32 io magic 0xaf143cd8 | i32 seq id | u32 n_stream
 *   per stream: u32 cell_count, and when it is not 0:
 *     per cell:  i32 pos | u32 n_seq_id (1) | i32 seq id       (no cell ext: not M-RoPE)
 *     u32 v_trans | u32 n_layer
 *     per layer: i32 k type | u64 k row bytes | cell_count rows of K ([kv head][dim])
 *     v_trans 0: per layer: i32 v type | u64 v row bytes | cell_count rows of V
 *     v_trans 1: per layer: i32 v type | u32 element bytes | u32 n_embd_v |
 *                n_embd_v rows of cell_count elements (V transposed)
 *
 * Cells come in the cache's cell order, not necessarily position order: blocks are cut by
 * position.  A kvtier block is, per layer, K then V, each [kv head][token][head dim].
 */
#include "kvtier_llama_int.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ggml-backend.h>
/* ---------------------------------------------------------------------------------------
 * The sequence state
 */
struct rd {
	const uint8_t *p;
	size_t len, off;
};

static int rd_get(struct rd *r, void *dst, size_t n)
{
	if (r->len - r->off < n)
		return -1;
	memcpy(dst, r->p + r->off, n);
	r->off += n;
	return 0;
}

static const uint8_t *rd_skip(struct rd *r, uint64_t n)
{
	const uint8_t *p = r->p + r->off;
	if (r->len - r->off < n)
		return NULL;
	r->off += n;
	return p;
}

/* Parses a state blob; sv->k and sv->v are allocated (n_layer each; free with
 * view_free).  Exactly one stream may hold cells.  Returns 0 or -EBADMSG (why in msg). */
int kvtl_parse_state(const uint8_t *p, size_t len, struct state_view *sv, char *msg, size_t ml)
{
	struct rd r = {p, len, 0};
	uint32_t magic = 0, n_stream = 0, cells;
	int32_t seq;

	memset(sv, 0, sizeof(*sv));
	if (rd_get(&r, &magic, 4) || rd_get(&r, &seq, 4) || rd_get(&r, &n_stream, 4) ||
	    magic != STATE_IO_MAGIC || n_stream == 0 || n_stream > 65536) {
		kvtl_fmt_err(msg, ml, "sequence state: bad header (magic %08x)", magic);
		return -EBADMSG;
	}
	sv->n_stream = n_stream;
	for (uint32_t s = 0; s < n_stream; s++) {
		if (rd_get(&r, &cells, 4))
			goto trunc;
		if (cells == 0)
			continue;
		if (sv->cells) {
			kvtl_fmt_err(msg, ml, "sequence state: cells in two streams");
			goto bad;
		}
		sv->cells = cells;
		if (!(sv->meta = rd_skip(&r, (uint64_t)cells * 12)))
			goto trunc;
		for (uint32_t i = 0; i < cells; i++) {
			uint32_t nsid;
			memcpy(&nsid, sv->meta + (size_t)i * 12 + 4, 4);
			if (nsid != 1) {
				kvtl_fmt_err(msg, ml, "sequence state: cell %u has %u sequence ids",
					     i, nsid);
				goto bad;
			}
		}
		if (rd_get(&r, &sv->v_trans, 4) || rd_get(&r, &sv->n_layer, 4))
			goto trunc;
		if (sv->n_layer == 0 || sv->n_layer > 4096 || sv->v_trans > 1) {
			kvtl_fmt_err(msg, ml, "sequence state: %u layers, v_trans %u", sv->n_layer,
				     sv->v_trans);
			goto bad;
		}
		sv->k = calloc(sv->n_layer, sizeof(*sv->k));
		sv->v = calloc(sv->n_layer, sizeof(*sv->v));
		if (!sv->k || !sv->v) {
			free(sv->k);
			free(sv->v);
			sv->k = sv->v = NULL;
			return -ENOMEM;
		}
		for (uint32_t l = 0; l < sv->n_layer; l++) {
			int32_t t;
			uint64_t row;
			if (rd_get(&r, &t, 4) || rd_get(&r, &row, 8))
				goto trunc;
			if (l && (t != sv->k_type || row != sv->k_row)) {
				kvtl_fmt_err(msg, ml,
					     "sequence state: layer %u's K differs from layer 0's",
					     l);
				goto bad;
			}
			sv->k_type = t;
			sv->k_row = row;
			if (row == 0 || row > (1u << 24) || !(sv->k[l] = rd_skip(&r, row * cells)))
				goto trunc;
		}
		for (uint32_t l = 0; l < sv->n_layer; l++) {
			int32_t t;
			uint64_t row;
			uint32_t el = 0, embd;
			if (rd_get(&r, &t, 4))
				goto trunc;
			if (!sv->v_trans) {
				if (rd_get(&r, &row, 8))
					goto trunc;
			} else {
				if (rd_get(&r, &el, 4) || rd_get(&r, &embd, 4))
					goto trunc;
				row = (uint64_t)el * embd;
			}
			if (l && (t != sv->v_type || row != sv->v_row || el != sv->v_el)) {
				kvtl_fmt_err(msg, ml,
					     "sequence state: layer %u's V differs from layer 0's",
					     l);
				goto bad;
			}
			sv->v_type = t;
			sv->v_row = row;
			sv->v_el = el;
			if (row == 0 || row > (1u << 24) || !(sv->v[l] = rd_skip(&r, row * cells)))
				goto trunc;
		}
	}
	if (r.off != len) {
		kvtl_fmt_err(msg, ml, "sequence state: %zu bytes left over", len - r.off);
		goto bad;
	}
	return 0;
trunc:
	kvtl_fmt_err(msg, ml, "sequence state: truncated or absurd field at byte %zu", r.off);
bad:
	free(sv->k);
	free(sv->v);
	sv->k = sv->v = NULL;
	return -EBADMSG;
}

void kvtl_view_free(struct state_view *sv)
{
	free(sv->k);
	free(sv->v);
	sv->k = sv->v = NULL;
}

/* Gets the sequence's state into a malloc'd buffer. */
uint8_t *kvtl_get_state(struct kvt_llama *kl, size_t *len)
{
	size_t n = llama_state_seq_get_size(kl->ctx, kl->seq);
	uint8_t *buf = n ? malloc(n) : NULL;
	if (!buf)
		return NULL;
	if (llama_state_seq_get_data(kl->ctx, buf, n, kl->seq) != n) {
		free(buf);
		return NULL;
	}
	*len = n;
	return buf;
}

/* ---------------------------------------------------------------------------------------
 * Restoring: blocks -> a sequence state of nb * 64 cells at positions 0.. -> set_data.
 *
 * The state of `cells` cells (all in one stream) is a header with the cells' metadata, then
 * per layer a 12-byte header and the K rows of all cells, then the same for V.  Each block
 * read is copied to its place at once (the state's size is known from the lookup); when a
 * block is missing the blocks before it are moved down to the state of fewer cells.
 */
static size_t state_hdr_bytes(uint32_t cells)
{
	return 12 + 4 + (size_t)cells * 12 + 8;
}

size_t kvtl_state_bytes(const struct kvt_llama *kl, uint32_t cells)
{
	const struct state_view *f = &kl->fmt;
	/* a V header is 12 bytes either way: type + row bytes, or type + element + n_embd */
	size_t per_layer = 12 + cells * f->k_row + 12 + cells * f->v_row;
	return state_hdr_bytes(cells) + 4 * ((size_t)f->n_stream - 1) + f->n_layer * per_layer;
}

/* Where layer l's K (kv 0) or V (kv 1) data starts in a state of `cells` cells. */
static size_t state_data_off(const struct kvt_llama *kl, uint32_t cells, int kv, uint32_t l)
{
	const struct state_view *f = &kl->fmt;
	size_t off = state_hdr_bytes(cells);
	if (kv)
		off += f->n_layer * (12 + (size_t)cells * f->k_row);
	return off + l * (12 + (size_t)cells * (kv ? f->v_row : f->k_row)) + 12;
}

static uint8_t *put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
	return p + 4;
}

static uint8_t *put64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
	return p + 8;
}

/* Writes everything of a state of `cells` cells but the K and V data. */
void kvtl_state_headers(const struct kvt_llama *kl, uint8_t *buf, uint32_t cells)
{
	const struct state_view *f = &kl->fmt;
	uint8_t *p = buf;

	p = put32(p, STATE_IO_MAGIC);
	p = put32(p, (uint32_t)kl->seq);
	p = put32(p, f->n_stream);
	p = put32(p, cells);
	for (uint32_t i = 0; i < cells; i++) {
		p = put32(p, i);
		p = put32(p, 1);
		p = put32(p, (uint32_t)kl->seq);
	}
	p = put32(p, f->v_trans);
	p = put32(p, f->n_layer);
	for (int kv = 0; kv < 2; kv++) {
		for (uint32_t l = 0; l < f->n_layer; l++) {
			p = buf + state_data_off(kl, cells, kv, l) - 12;
			p = put32(p, (uint32_t)(kv ? f->v_type : f->k_type));
			if (kv && f->v_trans) {
				p = put32(p, kl->el);
				put32(p, kl->n_kv * kl->hd);
			} else {
				put64(p, kv ? f->v_row : f->k_row);
			}
		}
	}
	/* the sequence's cells all go to its own stream; the others hold none */
	p = buf + kvtl_state_bytes(kl, cells) - 4 * ((size_t)f->n_stream - 1);
	for (uint32_t s = 1; s < f->n_stream; s++)
		p = put32(p, 0);
}

/* Copies block b (block_bytes, page-first) to its place in a state of `cells` cells. */
/* [head][token][dim] rows of one block -> per cell [head][dim]; hb: bytes of one head's
 * row.  Inlined for the common head sizes: a constant-size memcpy becomes a few vector
 * moves instead of a call per 64-256 bytes. */
static inline __attribute__((always_inline)) void rows_to_cells(uint8_t *dst, const uint8_t *src,
								uint32_t nkv, size_t row, size_t hb)
{
	for (uint32_t t = 0; t < BT; t++)
		for (uint32_t h = 0; h < nkv; h++)
			memcpy(dst + t * row + h * hb, src + ((size_t)h * BT + t) * hb, hb);
}

void kvtl_state_put_block(const struct kvt_llama *kl, uint8_t *buf, uint32_t cells, uint32_t b,
			  const uint8_t *blk)
{
	const struct state_view *f = &kl->fmt;
	const uint32_t hd = kl->hd, nkv = kl->n_kv;
	const size_t hb = (size_t)hd * kl->el, half = kl->layer_bytes / 2;

	for (int kv = 0; kv < 2; kv++) {
		for (uint32_t l = 0; l < f->n_layer; l++) {
			const uint8_t *src = blk + l * kl->layer_bytes + kv * half;
			uint8_t *p = buf + state_data_off(kl, cells, kv, l);
			if (kv && f->v_trans) {
				/* [head][token][dim] -> row (head*hd + dim) of cells elements */
				for (uint32_t h = 0; h < nkv; h++)
					for (uint32_t d = 0; d < hd; d++) {
						uint16_t *dst =
						    (uint16_t *)(void *)(p + (((size_t)h * hd + d) *
										  cells +
									      (size_t)b * BT) *
										 2);
						const uint16_t *s =
						    (const uint16_t *)(const void *)src +
						    (size_t)h * BT * hd + d;
						for (uint32_t t = 0; t < BT; t++)
							dst[t] = s[(size_t)t * hd];
					}
			} else {
				/* [head][token][dim] -> per cell [head][dim] */
				uint8_t *dst = p + (size_t)b * BT * f->k_row;
				switch (hb) {
				case 64:
					rows_to_cells(dst, src, nkv, f->k_row, 64);
					break;
				case 128:
					rows_to_cells(dst, src, nkv, f->k_row, 128);
					break;
				case 256:
					rows_to_cells(dst, src, nkv, f->k_row, 256);
					break;
				default:
					rows_to_cells(dst, src, nkv, f->k_row, hb);
				}
			}
		}
	}
}

/* Turns a state of `cells` cells whose first `keep` cells are filled into the state of
 * those `keep` cells.  Every part moves down (or stays), in ascending order: no part is
 * overwritten before it moved. */
void kvtl_state_shrink(const struct kvt_llama *kl, uint8_t *buf, uint32_t cells, uint32_t keep)
{
	const struct state_view *f = &kl->fmt;

	for (int kv = 0; kv < 2; kv++) {
		const size_t row = kv ? f->v_row : f->k_row;
		for (uint32_t l = 0; l < f->n_layer; l++) {
			uint8_t *from = buf + state_data_off(kl, cells, kv, l),
				*to = buf + state_data_off(kl, keep, kv, l);
			if (kv && f->v_trans) {
				/* rows of `cells` elements: the first `keep` of each */
				for (uint32_t r = 0; r < kl->n_kv * kl->hd; r++)
					memmove(to + (size_t)r * keep * kl->el,
						from + (size_t)r * cells * kl->el,
						(size_t)keep * kl->el);
			} else {
				memmove(to, from, (size_t)keep * row);
			}
		}
	}
	kvtl_state_headers(kl, buf, keep);
}
