/* SPDX-License-Identifier: MIT */
/*
 * kvtier_llama.h - kvtier inside llama.cpp: a prompt's KV cache stored in kvtier per
 * 64-token block, and a cached prefix restored into a llama.cpp sequence instead of being
 * evaluated again.
 *
 *   struct kvt_llama *kl;
 *   kvt_llama_open(ctx, &opts, &kl);             // binds a llama_context's sequence to kvtierd
 *   kvt_llama_prefill(kl, tokens, n, &res);      // restore the cached prefix, evaluate the
 *                                                // rest, store the new blocks
 *   float *logits = llama_get_logits_ith(ctx, -1);
 *   kvt_llama_close(kl);
 *
 * What is stored: after a prompt is evaluated, every full 64-token block of it that kvtier
 * does not hold yet, as one kvtier block (struct kvt_layout, page-first: per layer K then V,
 * each [kv head][token][head dim], fp16 or bf16 as llama.cpp's cache holds it) under the
 * chained key of the token ids (kvt_key_chain).  The layout's model_id names the model
 * (general.name and a digest of the GGUF file), llama.cpp's cache type and whether V is
 * transposed (flash attention off), so two models, or one model with two cache types, never
 * share a block.
 *
 * What is restored: before a prompt is evaluated, the longest cached prefix of whole blocks
 * that leaves at least one token to evaluate (the next token's logits come from evaluating
 * it).  The blocks are turned into llama.cpp's per-sequence state and loaded with
 * llama_state_seq_set_data().  That state's format belongs to one llama.cpp build:
 * kvt_llama_open() refuses any other build (-KVT_EVERSION), and every state it reads is
 * checked field by field against what the context's own state looked like.
 *
 * Never a wrong cache: a block missing (evicted between the lookup and the get), of the
 * wrong size, or a daemon that is down or goes away, shortens the restored prefix to the
 * blocks read whole before it (possibly none); the rest is evaluated.  kvtier being
 * unavailable is reported in the result, not as an error of kvt_llama_prefill().
 *
 * The library is built against llama.cpp's llama.h of the pinned build (scripts/common.sh);
 * with another llama.h it does not compile.  Error model as in kvtier.h (>= 0 success,
 * -errno failure).  Thread safety: one struct kvt_llama at a time per llama_context, like
 * llama.cpp's own calls on a context.
 */
#ifndef KVTIER_LLAMA_H
#define KVTIER_LLAMA_H

#include <stddef.h>
#include <stdint.h>

#include <llama.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Tokens per kvtier block. */
#define KVT_LLAMA_BLOCK_TOKENS 64

struct kvt_llama;

/*
 * Loads ggml's CPU backend from the folder libllama was loaded from (the prebuilt build
 * keeps its backends beside it, one per CPU generation, and picks the best the CPU runs),
 * then calls llama_backend_init().  Call it once before loading a model, instead of
 * ggml_backend_load_all(), which looks beside the executable.  Returns the number of
 * devices ggml has, or -ENODEV when it has none.
 */
int kvt_llama_backend_init(void);

/* Routes libllama's and ggml's log: with verbose 0 only their errors reach stderr (loading
 * a model otherwise prints hundreds of lines), with 1 everything. */
void kvt_llama_log_errors_only(int verbose);

struct kvt_llama_opts {
	uint32_t size;		 /* sizeof(struct kvt_llama_opts) */
	const char *socket_path; /* kvtierd's socket; NULL: kvt_connect's default */
	const char *model_path;	 /* the GGUF the context's model came from: its digest goes into
				  * the model id; NULL only together with model_id */
	const char *model_id;	 /* overrides the model part of the layout's model_id (max 33
				  * bytes); NULL: general.name (24 bytes of it) + a digest of
				  * model_path */
	llama_seq_id seq_id;	 /* the sequence to fill (0 for a plain context) */
	uint32_t n_batch;	 /* tokens per llama_decode; 0: llama_n_batch(ctx) */
	int timeout_ms;		 /* per kvtier request, as in kvt_connect_opts (0: 10000) */
	uint32_t flags;		 /* KVT_LLAMA_* */
	char *err;		 /* where kvt_llama_open() writes why it failed (may be NULL) */
	size_t err_len;
	/* Optional: called between the lookup and the gets with the number of blocks found
	 * (tests evict a block there, to see the restore fall back). */
	void (*after_lookup)(void *arg, uint32_t n_blocks);
	void *after_lookup_arg;
	/* Blocks per batch of leases of a restore (one round trip each; the daemon reads the
	 * next 8 MiB from NVMe while a batch is copied into the sequence's state).  0: 4 MiB of
	 * blocks (at most 256). */
	uint32_t restore_batch;
	/* Threads that copy (and, from a compressed host tier, decode) a restore's blocks into
	 * the state, and fill (and encode) a store's, the calling one included; llama.cpp
	 * computes nothing meanwhile.  0: one per online CPU, at most 8; 1: the calling thread
	 * alone. */
	uint32_t restore_threads;
};

/* flags: only restore, never store (a read-only consumer of a shared cache). */
#define KVT_LLAMA_NO_STORE 0x1u

/*
 * Binds sequence o->seq_id of ctx to kvtier.  ctx and its model must outlive *out.  Learns
 * the shape of llama.cpp's sequence state from ctx (the sequence must be empty: one token is
 * evaluated into it and removed again).  Connects to kvtierd; a daemon that is not there is
 * no error (kvt_llama_prefill() evaluates everything and retries the connection on each call).
 * Returns 0, -KVT_EVERSION (libllama is not the build whose state format this library
 * parses), -ENOTSUP (a cache this library cannot store: quantized types, K and V rows of
 * different sizes, per-layer geometry, M-RoPE), -EBUSY (the sequence is not empty), -EINVAL,
 * -ENOMEM, -EIO (llama.cpp failed).  o->err gets the reason.
 */
int kvt_llama_open(struct llama_context *ctx, const struct kvt_llama_opts *o,
		   struct kvt_llama **out);

/* Closes the kvtier connection and frees kl (the sequence keeps its cache). NULL: no-op. */
void kvt_llama_close(struct kvt_llama *kl);

struct kvt_llama_result {
	uint32_t size;		/* sizeof(struct kvt_llama_result), set by the caller */
	uint32_t n_tokens;	/* the prompt's length */
	uint32_t n_cached;	/* leading tokens kvtier held (lookup) */
	uint32_t n_restored;	/* leading tokens restored from kvtier */
	uint32_t n_evaluated;	/* tokens evaluated by llama_decode */
	uint32_t blocks_stored; /* new blocks put into kvtier */
	int kvtier;		/* 0, or why kvtier was (partly) not used: -ECONNREFUSED,
				 * -KVT_EDAEMON, -ENOENT (a block gone between lookup and get),
				 * -EBADMSG (a block or state that failed its checks), ... */
	double lookup_ms, restore_ms, eval_ms, store_ms;
	/* Where restore_ms went (0 without a restore): waiting for the blocks (wait_ms: the
	 * daemon's reads from NVMe that were not done ahead), copying them from the daemon's
	 * arena into llama.cpp's state layout (copy_ms), llama_state_seq_set_data (set_ms). */
	double restore_wait_ms, restore_copy_ms, restore_set_ms;
};

/*
 * Fills the (empty, or emptied: its cells are removed first) sequence with tokens[0..n):
 * restores the cached prefix, evaluates the rest in batches of n_batch tokens with the last
 * token's logits requested, and stores the prompt's new full blocks.  After it returns 0,
 * llama_get_logits_ith(ctx, -1) are the next token's logits.  res may be NULL.  Returns 0, or
 * -errno when llama.cpp could not evaluate (-EIO), the context has no room for n tokens
 * (-ENOSPC) or memory ran out (-ENOMEM), -EINVAL for n == 0 or a token id outside the
 * vocabulary.
 */
int kvt_llama_prefill(struct kvt_llama *kl, const llama_token *tokens, size_t n,
		      struct kvt_llama_result *res);

/*
 * Evaluates tokens[0..n) into sequence seq at positions pos0.. in batches of n_batch tokens
 * (the last token's logits requested): the same batches kvt_llama_prefill() uses, exported
 * so that a caller can evaluate without kvtier exactly as it would with it.  Returns 0, -EIO,
 * -ENOSPC, -ENOMEM or -EINVAL.
 */
int kvt_llama_eval(struct llama_context *ctx, llama_seq_id seq, const llama_token *tokens, size_t n,
		   llama_pos pos0, uint32_t n_batch);

/* The kvtier layout (struct kvt_layout of kvtier.h) kl stores its blocks under.  lay must
 * point to a struct kvt_layout.  Returns 0. */
struct kvt_layout;
int kvt_llama_layout(const struct kvt_llama *kl, struct kvt_layout *lay);

/*
 * Whether this library can read and write the sequence state of libllama version `version`
 * (llama_version()) whose llama.h declares state format `state_seq_version`
 * (LLAMA_STATE_SEQ_VERSION).  Returns 0, or -KVT_EVERSION with the reason in err.
 * kvt_llama_open() checks the loaded library with it.
 */
int kvt_llama_check_version(const char *version, int state_seq_version, char *err, size_t err_len);

/* Why kvtier was last not used (or refused at open), "" when it was: the detail behind
 * kvt_llama_result.kvtier, e.g. "block 3: 98304 bytes, the layout's blocks have 65536".
 * Valid until the next call on kl. */
const char *kvt_llama_last_message(const struct kvt_llama *kl);

/* The llama.cpp build the state format belongs to, e.g. "0.4.0-dev". */
const char *kvt_llama_supported_version(void);

#ifdef __cplusplus
}
#endif

#endif /* KVTIER_LLAMA_H */
