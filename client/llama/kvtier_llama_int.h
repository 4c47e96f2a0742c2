/* SPDX-License-Identifier: MIT */
/*
 * kvtier_llama_int.h - what the files of client/llama share (not API; see kvtier_llama.h).
 *
 *   kvtier_llama.c          versions, backend, buffers, opening, evaluating, kvt_llama_prefill
 *   kvtier_llama_state.c    llama.cpp's sequence state: parsing one, building one of n cells
 *   kvtier_llama_restore.c  restoring: leased blocks -> a state -> llama_state_seq_set_data
 *   kvtier_llama_store.c    storing: the sequence's state -> blocks -> puts
 */
#ifndef KVTIER_LLAMA_INT_H
#define KVTIER_LLAMA_INT_H

#include "kvtier_llama.h"

#include <stddef.h>
#include <stdint.h>

#include "kvtier.h"

/* The parser (kvtier_llama_state.c) is written for exactly this format. */
#if LLAMA_STATE_SEQ_VERSION != 3
#error "kvtier_llama_state.c parses llama.cpp's sequence state of LLAMA_STATE_SEQ_VERSION 3 only"
#endif
#define SUPPORTED_VERSION   "0.4.0-dev"
#define SUPPORTED_STATE_SEQ 3
#define STATE_IO_MAGIC	    0xaf143cd8u
#define GGML_TYPE_F16_	    1
#define GGML_TYPE_BF16_	    30
#define BT		    KVT_LLAMA_BLOCK_TOKENS

/* The shape of one stream of a sequence state, with pointers into the blob. */
struct state_view {
	uint32_t n_stream;
	uint32_t cells;
	const uint8_t *meta; /* cells * 12 bytes */
	uint32_t v_trans, n_layer;
	int32_t k_type, v_type;
	uint64_t k_row;	   /* bytes of one cell's K of one layer */
	uint64_t v_row;	   /* bytes of one cell's V of one layer */
	uint32_t v_el;	   /* v_trans: bytes of one element */
	const uint8_t **k; /* n_layer: first K row */
	const uint8_t **v; /* n_layer: first V row (element row 0 when v_trans) */
};

/* Most threads a restore copies with (kvt_llama_opts.restore_threads). */
#define KVTL_RESTORE_THREADS 8u

/* A buffer kept between calls (see kbuf_reserve). */
struct kbuf {
	uint8_t *p;
	size_t cap;
};

struct kvt_llama {
	struct llama_context *ctx;
	const struct llama_model *model;
	llama_seq_id seq;
	uint32_t n_batch, flags, n_vocab;
	int timeout_ms;
	void (*after_lookup)(void *arg, uint32_t n_blocks);
	void *after_lookup_arg;
	char *sock;
	struct kvt_client *c;
	int lay;
	struct kvt_layout layout;
	uint64_t fp;
	struct state_view fmt; /* the shape learned at open (pointers unused) */
	uint32_t n_kv, hd, el;
	size_t block_bytes, layer_bytes;
	struct kbuf state; /* a sequence state being built (restore) or read (store) */
	struct kbuf stage; /* a block decoded (compressed host tier) */
	struct kbuf stages[KVTL_RESTORE_THREADS - 1]; /* the other restore threads' */
	uint32_t restore_batch, restore_threads;
	double ph_wait, ph_copy, ph_set; /* the last restore's phases (ms) */
	char msg[256];
};

/* snprintf into buf (if any). */
void __attribute__((format(printf, 3, 4))) kvtl_fmt_err(char *buf, size_t len, const char *f, ...);

/* kvtier_llama.c: the monotonic clock in milliseconds. */
double kvtl_now_ms(void);

/* kvtier_llama.c: makes b hold at least n bytes (at most max, unless n is more); its contents
 * are lost when it grows.  Returns 0 or -ENOMEM. */
int kvtl_kbuf_reserve(struct kbuf *b, size_t n, size_t max);

/* kvtier_llama_state.c: parses a state blob; sv->k and sv->v are allocated (n_layer each; free
 * with kvtl_view_free).  Exactly one stream may hold cells.  Returns 0 or -EBADMSG (why in
 * msg). */
int kvtl_parse_state(const uint8_t *p, size_t len, struct state_view *sv, char *msg, size_t ml);
void kvtl_view_free(struct state_view *sv);
/* Gets the sequence's state into a malloc'd buffer. */
uint8_t *kvtl_get_state(struct kvt_llama *kl, size_t *len);
/* Bytes of a state of `cells` cells in the shape learned at open. */
size_t kvtl_state_bytes(const struct kvt_llama *kl, uint32_t cells);
/* Writes everything of a state of `cells` cells but the K and V data. */
void kvtl_state_headers(const struct kvt_llama *kl, uint8_t *buf, uint32_t cells);
/* Copies block b (block_bytes, page-first) to its place in a state of `cells` cells. */
void kvtl_state_put_block(const struct kvt_llama *kl, uint8_t *buf, uint32_t cells, uint32_t b,
			  const uint8_t *src);
/* Turns a state of `cells` cells whose first `keep` cells are filled into the state of
 * `keep` cells. */
void kvtl_state_shrink(const struct kvt_llama *kl, uint8_t *buf, uint32_t cells, uint32_t keep);

/* kvtier_llama_restore.c: restores up to nb leading blocks; returns how many it did, 0 on any
 * failure, with kl->msg and *why set. */
uint32_t kvtl_restore(struct kvt_llama *kl, const struct kvt_key *keys, uint32_t nb, int *why);

/* kvtier_llama_store.c: stores blocks [from, to) of the sequence's state by position; *stored
 * counts the blocks put.  Returns 0 or a negative error. */
int kvtl_store(struct kvt_llama *kl, const struct kvt_key *keys, uint32_t from, uint32_t to,
	       uint32_t n_tokens, uint32_t *stored);

#endif
