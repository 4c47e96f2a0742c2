/* SPDX-License-Identifier: MIT */
/*
 * kvt_abi.h - the ABI under kvtier's API: the types and constants that cross a process
 * boundary (the control socket, the shared memory, the record on NVMe) and that an engine
 * also uses through client/kvtier.h, which includes this header, as liburing.h includes
 * io_uring.h.  Installed beside kvtier.h; include kvtier.h, not this file.
 *
 * What is here: the version, the error codes, the block key, the element types and the
 * layout, and the pure functions of them that every process must compute alike (the layout
 * checks and fingerprint, the key chain: proto/PROTOCOL.md "Tenants and keys"), with
 * kvt_strerror() and kvt_version().  The daemon needs them too, so they are defined in
 * proto/ (kvt_proto.c) and linked into both kvtierd and libkvtier, which exports them.
 * Everything about a connection (struct kvt_client and its calls) is in kvtier.h.
 *
 * Dependencies: nothing in proto/ includes client/; the wire messages (kvt_proto.h), the
 * ring memfd (kvt_shm.h) and the record header (kvt_record.h) embed these types by value,
 * and each of those headers asserts the size and the offsets of what it defines.
 */
#ifndef KVT_ABI_H
#define KVT_ABI_H

#include <errno.h> /* the -E... codes this API returns */
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(KVT_BUILDING_LIB)
#define KVT_API __attribute__((visibility("default")))
#else
#define KVT_API
#endif

/* A layout check that fails the build, in C and in C++ (kvtier.h is for C++ engines too). */
#ifdef __cplusplus
#define KVT_ABI_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define KVT_ABI_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

#define KVT_VERSION_MAJOR  0
#define KVT_VERSION_MINOR  2
#define KVT_VERSION_PATCH  0
#define KVT_VERSION_NUMBER (KVT_VERSION_MAJOR * 10000 + KVT_VERSION_MINOR * 100 + KVT_VERSION_PATCH)

/* Returns the library's version string, e.g. "0.1.0". */
KVT_API const char *kvt_version(void);
/* Returns KVT_VERSION_NUMBER of the library actually loaded. */
KVT_API unsigned kvt_version_number(void);

/* kvtier's own error codes, returned negated like errno values. */
#define KVT_ERRNO_BASE 4096
enum {
	KVT_EVERSION = KVT_ERRNO_BASE, /* daemon speaks an incompatible protocol version */
	KVT_ECORRUPT,		       /* a stored record failed its integrity check */
	KVT_ENOLAYOUT,		       /* layout id not registered on this client */
	KVT_EDAEMON,		       /* the daemon went away; reconnect */
	KVT_EPROTOCOL,		       /* malformed message or ring entry */
	KVT_ELIMIT,		       /* a configured limit was reached (clients, layouts, ...) */
};

/* Message for an error code (negative or positive). Never NULL; static storage. */
KVT_API const char *kvt_strerror(int err);

/* A block key: 128 bits, as computed by kvt_key_chain() or supplied by the engine. */
struct kvt_key {
	uint64_t lo, hi;
};
KVT_ABI_ASSERT(sizeof(struct kvt_key) == 16, "struct kvt_key is an ABI");
KVT_ABI_ASSERT(offsetof(struct kvt_key, lo) == 0 && offsetof(struct kvt_key, hi) == 8,
	       "struct kvt_key is an ABI");

/* ---------------------------------------------------------------------------------------
 * Layouts and keys
 */

/* Element types of a block (also the codecs' element types, codecs/codec.h). */
enum kvt_dtype {
	KVT_DTYPE_FP16 = 1,
	KVT_DTYPE_BF16 = 2,
	KVT_DTYPE_FP8_E4M3 = 3, /* one byte an element */
};

/* Order of a block's bytes: per layer, K then V ([head][token][dim] each), or V then K. */
enum kvt_kv_order {
	KVT_ORDER_K_THEN_V = 0,
	KVT_ORDER_V_THEN_K = 1,
};

/*
 * One engine's KV geometry.  A block holds block_tokens tokens of K and V for all layers,
 * page-first: layer l's slice starts at l * kvt_layout_layer_bytes().  Blocks of layouts
 * with different fingerprints never share a key, so models and parallel ranks never mix.
 */
struct kvt_layout {
	uint32_t size; /* sizeof(struct kvt_layout) */
	uint32_t n_layers;
	uint32_t n_kv_heads;
	uint32_t head_dim;
	uint32_t block_tokens;
	uint32_t dtype;	   /* enum kvt_dtype */
	uint32_t kv_order; /* enum kvt_kv_order */
	uint32_t rank;	   /* tensor/pipeline parallel rank of this process */
	uint32_t world;	   /* number of ranks (1 when not parallel) */
	char model_id[64]; /* NUL-terminated name of the model, e.g. "meta-llama/Llama-3.1-8B" */
};
/* Travels whole in LAYOUT and GPU_OP messages (proto/PROTOCOL.md). */
KVT_ABI_ASSERT(sizeof(struct kvt_layout) == 100, "struct kvt_layout is an ABI");
KVT_ABI_ASSERT(offsetof(struct kvt_layout, n_layers) == 4 &&
		   offsetof(struct kvt_layout, block_tokens) == 16 &&
		   offsetof(struct kvt_layout, dtype) == 20 &&
		   offsetof(struct kvt_layout, world) == 32 &&
		   offsetof(struct kvt_layout, model_id) == 36,
	       "struct kvt_layout is an ABI");

/* Checks l; returns 0 or -EINVAL (zero or absurd dimensions, unknown dtype, bad size). */
KVT_API int kvt_layout_check(const struct kvt_layout *l);
/* Bytes of one block of l (0 if l is invalid). */
KVT_API size_t kvt_layout_block_bytes(const struct kvt_layout *l);
/* Bytes of one layer's K+V slice of a block (0 if l is invalid). */
KVT_API size_t kvt_layout_layer_bytes(const struct kvt_layout *l);
/* 64-bit fingerprint of every field of l (model id and rank included). 0 if invalid. */
KVT_API uint64_t kvt_layout_fingerprint(const struct kvt_layout *l);

/*
 * Chained block keys of a token sequence: key_i = H(key_{i-1}, tokens of block i,
 * fingerprint).  Writes one key per FULL block (n_tokens / block_tokens of them, at most
 * max_keys) and returns how many it wrote.  prev is the key of the block before tokens[0]
 * (NULL when tokens start the sequence).  Pure function of its inputs; same keys in every
 * process of every host for the same layout.
 */
KVT_API int kvt_key_chain(uint64_t fingerprint, uint32_t block_tokens, const struct kvt_key *prev,
			  const uint32_t *tokens, size_t n_tokens, struct kvt_key *keys,
			  size_t max_keys);

#ifdef __cplusplus
}
#endif

#endif /* KVT_ABI_H */
