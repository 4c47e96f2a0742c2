/* SPDX-License-Identifier: MIT */
/*
 * predict.h - sparse-attention block predictor of libkvtier (DESIGN §6, docs/PREDICTOR.md).
 *
 * The predictor follows ONE sequence: block b covers tokens [b*T, (b+1)*T) where T is
 * opts.block_tokens.  When the engine puts a block it hands the block's post-RoPE keys to
 * kvt_pred_add_block(); the predictor keeps a small digest per (block, layer, kv head) in RAM
 * (at most 6.25 % of that slice's K+V fp16 bytes by default), also after the block itself has
 * been evicted to NVMe, so evicted blocks can still be scored.  At each decode step the engine
 * passes a layer's queries to kvt_pred_select(), which returns the blocks that sparse attention
 * should read, always including the sink and recent blocks; kvt_pred_predict_next() turns the
 * same queries into the set predicted for the next step, and kvt_pred_prefetch_plan() into the
 * blocks to ask the daemon for, best first, within a budget against the room of the host tier
 * (kvt_pred_set_room()): prefetches hold a share of it, the rest stays with the blocks read
 * (kvt_pred_prefetch_list(): every predicted block, no budget).
 *
 * Rows.  By default one selection is made per (layer, kv head) and shared by the query heads of
 * its GQA group (a fetched block serves all of them); with KVT_PRED_PER_Q_HEAD one selection is
 * made per query head.  kvt_pred_rows() says which.  Outputs are arrays [row][n]: each row lists
 * its forced blocks first (sink blocks, then recent blocks, ascending), then the chosen blocks in
 * order of decreasing estimated attention mass, so a prefix of a row is the best smaller set.
 *
 * Errors: functions return >= 0 on success and -errno on failure; nothing is changed on
 * failure.  kvt_pred_errmsg() gives a sentence about the last failure on a handle.
 *
 * Thread safety: a handle is not thread-safe; calls on one handle must be serialized by the
 * caller.  Distinct handles share nothing and may be used from different threads.
 */
#ifndef KVT_PREDICT_H
#define KVT_PREDICT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define KVT_PRED_API __attribute__((visibility("default")))
#else
#define KVT_PRED_API
#endif

/* Digest kinds (opts.digest). */
enum kvt_pred_digest {
	/* QKEYS if it fits opts.digest_bytes with at least one bit per token for half the
	 * dimensions, else MEANSTD, else CENTROID. */
	KVT_PRED_DIGEST_AUTO = 0,
	/* Every key of the block quantized to 0, 1 or 2 bits per dimension (the dimensions of
	 * largest spread get 2 bits) with per-block per-dimension levels, plus the mean key.
	 * Scored as a log-sum-exp over the reconstructed keys: an estimate of the block's softmax
	 * mass, not of its best key. */
	KVT_PRED_DIGEST_QKEYS = 1,
	/* Mean key; block log-mass estimated as log(n) + q.mean/sqrt(D). */
	KVT_PRED_DIGEST_CENTROID = 2,
	/* Mean and per-dimension standard deviation; Gaussian log-sum-exp estimate
	 * log(n) + q.mean/sqrt(D) + sum_d q_d^2 std_d^2 / (2D). */
	KVT_PRED_DIGEST_MEANSTD = 3,
	/* Per-dimension min and max (Quest); score = upper bound of q.k/sqrt(D). */
	KVT_PRED_DIGEST_MINMAX = 4,
};

/* opts.flags */
#define KVT_PRED_PER_Q_HEAD 0x1u /* one selection per query head instead of per kv head */
#define KVT_PRED_NO_SINK    0x2u /* do not force the sink blocks (sink_blocks ignored) */
#define KVT_PRED_NO_RECENT  0x4u /* do not force the recent blocks (recent_blocks ignored) */
/* RoPE rotates pairs (2i, 2i+1) (GPT-J, llama.cpp's normal mode) instead of (i, i + D/2)
 * (Hugging Face's rotate_half, NeoX) */
#define KVT_PRED_ROPE_INTERLEAVED 0x8u

/* Limits checked by kvt_pred_create() and kvt_pred_add_block*(). */
#define KVT_PRED_MAX_HEAD_DIM	  1024u
#define KVT_PRED_MAX_HEADS	  1024u
#define KVT_PRED_MAX_LAYERS	  4096u
#define KVT_PRED_MAX_BLOCK_TOKENS 4096u
#define KVT_PRED_MAX_BLOCKS	  (1u << 22)

struct kvt_pred_opts {
	size_t size;	       /* sizeof(struct kvt_pred_opts): lets the struct grow */
	uint32_t n_layers;     /* >= 1 */
	uint32_t n_kv_heads;   /* >= 1 */
	uint32_t n_q_heads;    /* multiple of n_kv_heads; q head j uses kv head j/(n_q/n_kv) */
	uint32_t head_dim;     /* D, 1..KVT_PRED_MAX_HEAD_DIM */
	uint32_t block_tokens; /* T, 1..KVT_PRED_MAX_BLOCK_TOKENS */
	uint32_t digest;       /* enum kvt_pred_digest */
	/* Bytes allowed per (block, layer, kv head) digest; 0 = 6.25 % of the slice's K+V fp16
	 * bytes, i.e. T*D/4.  -ENOSPC from create if the chosen kind does not fit. */
	uint32_t digest_bytes;
	uint32_t sink_blocks;	/* blocks 0..sink_blocks-1 always selected; 0 = 1 */
	uint32_t recent_blocks; /* last recent_blocks causal blocks always selected; 0 = 1 */
	uint32_t flags;		/* KVT_PRED_* flags */
	/* Two-stage scoring: blocks are first ranked by their mean key, and only the best
	 * shortlist x (budget - forced) of them are scored with the full digest.  0 = score
	 * every block with the full digest. */
	uint32_t shortlist;
	/* RoPE base of the model (Llama: 10000), 0 = unknown.  Keys are post-RoPE, so a query
	 * scores keys by relative position; kvt_pred_predict_next() with queries rotates them one
	 * position further, as the next step's queries will be, before scoring. */
	float rope_theta;
};

/* Counters, summed over layers and rows since creation or kvt_pred_reset_counters().  One
 * "entry" is one block in one (layer, row) set. */
struct kvt_pred_counters {
	uint64_t predicted; /* entries in the sets made by kvt_pred_predict_next() */
	uint64_t
	    selected;  /* entries returned by kvt_pred_select() for a step that had a prediction */
	uint64_t hit;  /* of those, entries that the prediction contained */
	uint64_t late; /* of the hits, entries whose block was not resident at selection */
	uint64_t wasted;    /* predicted entries that the step's selection did not contain */
	uint64_t requested; /* blocks handed out by kvt_pred_prefetch_list() and _plan() */
	/* kvt_pred_prefetch_plan(): blocks it held back because the budget was full (once per
	 * call that held them), and requests it handed out that were still outstanding when the
	 * last layer they were predicted for passed (never marked by kvt_pred_set_resident()) */
	uint64_t deferred;
	uint64_t expired;
};

struct kvt_pred;

/*
 * Creates a predictor.  o->size must be at least the size of the first version of the struct
 * (up to and including `flags`); bytes past sizeof(struct kvt_pred_opts) must be zero.
 * Returns 0 and stores the handle in *out (owned by the caller, freed by kvt_pred_destroy()),
 * or -EINVAL (bad or inconsistent field), -E2BIG (unknown non-zero trailing bytes), -ENOSPC
 * (digest does not fit digest_bytes), -ENOMEM.  *out is set to NULL on failure.
 */
KVT_PRED_API int kvt_pred_create(const struct kvt_pred_opts *o, struct kvt_pred **out);

/* Frees the predictor and all its digests.  NULL is a no-op. */
KVT_PRED_API void kvt_pred_destroy(struct kvt_pred *p);

/* Digest kind actually used (AUTO resolved) and its size in bytes per (block, layer, kv head). */
KVT_PRED_API enum kvt_pred_digest kvt_pred_digest_kind(const struct kvt_pred *p);
KVT_PRED_API size_t kvt_pred_digest_bytes(const struct kvt_pred *p);

/* Number of rows of every output: n_kv_heads, or n_q_heads with KVT_PRED_PER_Q_HEAD. */
KVT_PRED_API uint32_t kvt_pred_rows(const struct kvt_pred *p);

/* A sentence about the last failure on p ("" if none).  Valid until the next call on p. */
KVT_PRED_API const char *kvt_pred_errmsg(const struct kvt_pred *p);

/*
 * Digests one layer of block `block` from its keys: fp16 bits, post-RoPE as the engine's cache
 * holds them; key (kv head h, token s) is the head_dim values at k + h*head_stride +
 * s*token_stride (strides in elements; dimensions contiguous).  n_tokens (1..T) is the number
 * of tokens the block holds; a block with n_tokens < T may be digested again when it fills up:
 * a new digest replaces the old.  The keys are read during the call only.
 * A block is scored at a step only when its digest covers no token past that step's context.
 * Returns 0, -EINVAL, -ERANGE (block >= KVT_PRED_MAX_BLOCKS), -ENOMEM.
 */
KVT_PRED_API int kvt_pred_add_block_layer(struct kvt_pred *p, uint32_t block, uint32_t layer,
					  const uint16_t *k, uint32_t n_tokens, size_t head_stride,
					  size_t token_stride);

/* Same for all layers of a block laid out [layer][kv_head][token][dim] with exactly n_tokens
 * tokens per (layer, kv head), as one page of the store holds a block's K. */
KVT_PRED_API int kvt_pred_add_block(struct kvt_pred *p, uint32_t block, const uint16_t *k,
				    uint32_t n_tokens);

/* Forgets the digests of blocks >= n_blocks (sequence truncated, speculative tokens rejected),
 * any pending prediction and the requests of kvt_pred_prefetch_plan() (decode order starts
 * again).  Returns 0. */
KVT_PRED_API int kvt_pred_truncate(struct kvt_pred *p, uint32_t n_blocks);

/*
 * The digest's estimate, for each query head j, of log sum_s exp(q_j . k_s / sqrt(D)) over the
 * keys of `block` (layer `layer`, kv head of j): what the scoring ranks blocks by (MINMAX: the
 * Quest bound instead).  q: [n_q_heads][head_dim] fp16; out: n_q_heads floats.  For tests and
 * diagnostics.  Returns 0, -EINVAL, -ENOENT (no digest of that block and layer).
 */
KVT_PRED_API int kvt_pred_block_logmass(struct kvt_pred *p, uint32_t block, uint32_t layer,
					const uint16_t *q, float *out);

/* Budget rule of the evaluation: ceil(fraction * n_blocks) blocks, computed so that e.g.
 * 0.1 * 60 gives 6.  Returns 0 for fraction <= 0 and n_blocks for fraction >= 1. */
KVT_PRED_API uint32_t kvt_pred_budget(uint32_t n_blocks, double fraction);

/* Number of blocks per row that kvt_pred_select() returns for this context and budget:
 * min(ceil(n_tokens/T), max(budget, forced)), where forced is the number of distinct sink and
 * recent blocks.  Size `out` as kvt_pred_rows(p) times this. */
KVT_PRED_API uint32_t kvt_pred_select_count(const struct kvt_pred *p, uint32_t n_tokens,
					    uint32_t budget);

/*
 * Selects the blocks that the queries q of layer `layer` should attend to.  q: fp16 bits,
 * [n_q_heads][head_dim], post-RoPE, for the token at position n_tokens-1 (so n_tokens tokens
 * are visible: blocks 0 .. ceil(n_tokens/T)-1, the last one possibly partial).  budget: blocks
 * per row, forced ones included; forced blocks are returned even if budget is smaller.
 * Blocks without a usable digest are never chosen by score, so a row may come back shorter
 * than kvt_pred_select_count(); unused slots are set to UINT32_MAX.
 * Writes rows x n block indices to out (out_cap entries available) and returns n, or -EINVAL,
 * -ENOSPC (out_cap < rows * n).  If kvt_pred_predict_next() predicted this step for this
 * layer, the counters are updated and that prediction is consumed.
 */
KVT_PRED_API int kvt_pred_select(struct kvt_pred *p, uint32_t layer, const uint16_t *q,
				 uint32_t n_tokens, uint32_t budget, uint32_t *out, size_t out_cap);

/*
 * Predicts the selection of layer `layer` at the next step (context n_tokens + 1) from the
 * queries of the current step (context n_tokens): the next step's forced blocks, then the
 * best budget + margin - forced blocks by score.  q == NULL reuses the scores of the last
 * kvt_pred_select() of this layer, which must have had the same n_tokens (else -EINVAL).
 * The prediction is kept until the next step's kvt_pred_select() of this layer, which scores
 * it, and is what kvt_pred_prefetch_plan() and _list() ask for.  If out is not NULL, the rows are
 * written as by kvt_pred_select() (out_cap entries available).  Returns n per row, or -EINVAL,
 * -ENOSPC.
 */
KVT_PRED_API int kvt_pred_predict_next(struct kvt_pred *p, uint32_t layer, const uint16_t *q,
				       uint32_t n_tokens, uint32_t budget, uint32_t margin,
				       uint32_t *out, size_t out_cap);

/*
 * The prefetch request: blocks in any pending prediction (all layers, all rows) that are
 * neither resident nor already requested, ascending.  With out == NULL only counts them.
 * Otherwise writes them to out and marks them requested until kvt_pred_set_resident() is
 * called for them.  Returns the count, or -ENOSPC (out_cap too small; nothing is marked).
 */
KVT_PRED_API int kvt_pred_prefetch_list(struct kvt_pred *p, uint32_t *out, size_t out_cap);

/*
 * Sets the budget of kvt_pred_prefetch_plan() from the room of the tier that prefetches fill
 * (the daemon's host tier): room_bytes that this sequence may use there (kvt_stats()'s
 * host_capacity_bytes, or this sequence's share of it when several share the tier),
 * block_bytes that one block takes there (kvt_layout_block_bytes()), and the share of the room
 * that outstanding prefetches may hold, 0 < fraction <= 1 (0 = KVT_PRED_ROOM_DEFAULT, 0.75; keep
 * it below the host tier's host.low_watermark, down to which the daemon evicts).  The rest of
 * the room stays with the blocks that the current steps read: blocks prefetched on a
 * prediction that turns out wrong displace at most that share of it.
 * At most floor(fraction * room_bytes / block_bytes) blocks (at least 1) are outstanding at
 * once; room_bytes = 0 removes the limit (the default).
 * Returns 0, or -EINVAL (block_bytes 0 with room_bytes > 0, fraction outside [0, 1]).
 */
#define KVT_PRED_ROOM_DEFAULT 0.75
KVT_PRED_API int kvt_pred_set_room(struct kvt_pred *p, uint64_t room_bytes, uint64_t block_bytes,
				   double fraction);

/*
 * The prefetch request under the budget of kvt_pred_set_room(), best first.  Candidates are
 * the blocks of the pending predictions of layers still to come, neither resident nor
 * requested; a prediction whose layer has passed (a kvt_pred_select() of a later layer or
 * step came since) is dropped.  They are ordered by their best rank in a predicted row
 * (forced blocks first, then the chosen ones by decreasing score), then by layer distance
 * from the last select (the nearest layer first: layer l of the step with context c is
 * c * n_layers + l in decode order), then by block index.
 * A block handed out is outstanding until kvt_pred_set_resident() is called for it or the
 * last layer it was predicted for passes (then the step has read it, or does without it);
 * the call hands out at most (limit - outstanding) blocks, and at most out_cap, marking them
 * requested.  With out == NULL it only counts them.  Returns the count (0 when the budget
 * is full), or -EINVAL.
 * Call it after the kvt_pred_predict_next() of each layer, or once per step after the last.
 */
KVT_PRED_API int kvt_pred_prefetch_plan(struct kvt_pred *p, uint32_t *out, size_t out_cap);

/* Tells the predictor whether a block is in the fastest tier (resident != 0) or not, and
 * clears its requested mark.  Blocks start non-resident.  Returns 0, -ERANGE. */
KVT_PRED_API int kvt_pred_set_resident(struct kvt_pred *p, uint32_t block, int resident);

/* Copies the counters (min(size, sizeof) bytes).  Returns 0 or -EINVAL. */
KVT_PRED_API int kvt_pred_get_counters(const struct kvt_pred *p, struct kvt_pred_counters *c,
				       size_t size);
KVT_PRED_API void kvt_pred_reset_counters(struct kvt_pred *p);

#ifdef __cplusplus
}
#endif

#endif
