/* SPDX-License-Identifier: MIT */
/*
 * codec.h - block codecs and codec chains (DESIGN §5).  Grammar and formats: codecs/CODECS.md.
 *
 * A *block* is block_tokens tokens of K and V for all layers, page-first:
 *   for l in 0..L-1:  K_l as [kv_head][token][dim], then V_l as [kv_head][token][dim]
 * (fp16 or bf16, little-endian), i.e. the layer-l slice starts at l*2*H*T*D elements.
 *
 * A *codec* is one stage behind struct kvt_codec_ops.  A *chain* is a list of stages written
 * as a spec string, e.g. "raw", "lz4", "shuffle+zstd:3", "kivi:k=4,v=4,g=32+rans",
 * "uq:k=0.08,v=0.08".  The first stage may be a KV codec (it needs the geometry and reads a
 * block); every later stage is a byte codec (lz4, zstd, shuffle, rans).  Each tier of the
 * daemon names its chain in the config (e.g. [nvme] codec = ...); kvt_chain_parse() turns it
 * into a struct kvt_chain.
 *
 * An encoded record is self-describing: a 32-byte chain header (magic, chain id, geometry,
 * lengths) followed by the stages' output, each of which carries its own metadata (scales,
 * zero points, outlier lists, tables).  kvt_chain_decode() refuses a record whose chain id is
 * not the chain's own, and every decoder bounds-checks its input: corrupt or truncated input
 * gives -EBADMSG, never an out-of-bounds access.
 *
 * Errors: functions return >= 0 or -errno.  A parsed chain is immutable: one chain may be
 * used by several threads at once (each call allocates its own scratch).
 */
#ifndef KVT_CODEC_H
#define KVT_CODEC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* enum kvt_dtype: the element types, one definition for the codecs and the API. */
#include "kvt_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVT_DTYPE_FP8 KVT_DTYPE_FP8_E4M3

/* Geometry of a block.  Byte codecs ignore it; KV codecs require it. */
struct kvt_codec_geom {
	uint32_t n_layers, n_kv_heads, head_dim, block_tokens;
	uint32_t dtype; /* enum kvt_dtype */
	uint32_t
	    first_token; /* position in the sequence of the block's first token (sinks, RoPE) */
};

/* Bytes of one raw block of geometry g (0 if g is invalid or too large). */
size_t kvt_geom_block_bytes(const struct kvt_codec_geom *g);
/* 0 if g is usable by KV codecs (sizes in range, head_dim even, dtype fp16/bf16), else -EINVAL. */
int kvt_geom_check(const struct kvt_codec_geom *g);

#define KVT_CODEC_LOSSLESS 0x1u	 /* decode(encode(x)) == x bit for bit */
#define KVT_CODEC_LOSSY	   0x2u	 /* bounded error, documented per codec in CODECS.md */
#define KVT_CODEC_KV	   0x4u	 /* reads a KV block and needs its geometry (first stage only) */
#define KVT_CODEC_FUSE	   0x8u	 /* a following "rans" stage entropy-codes this stage's symbols */
#define KVT_CODEC_DICT	   0x10u /* kvt_chain_flags(): the chain needs a dictionary */

#define KVT_CODEC_MAX_ARGS 24

struct kvt_dict;

/* One stage of a chain: its codec and the parsed arguments. */
struct kvt_stage {
	const struct kvt_codec_ops *ops;
	double arg[KVT_CODEC_MAX_ARGS]; /* codec-defined; filled by ops->parse */
	int entropy;			/* a following "rans" stage was fused into this one */
	int needs_dict;			/* set by ops->parse when the arguments ask for one */
	const struct kvt_dict *dict;	/* kvt_chain_set_dict() */
};

/*
 * The codec ops table.  name, flags, encode, decode and max_encoded_size are required; parse
 * is optional (a codec without it takes no arguments).
 *
 * parse:   args is the text after ':' (NULL if none), e.g. "k=4,v=4,g=32"; fills st->arg.
 *          Returns 0 or -EINVAL.  canon(): writes the canonical argument text used in the
 *          chain name (so that "zstd:03" and "zstd:3" are one chain with one id).
 * encode:  src/n is a block (KV codec) or bytes; writes at most cap bytes to dst and returns
 *          the encoded length, or -errno (-ENOSPC if cap is too small).
 * decode:  the inverse; returns the decoded length, or -EBADMSG for anything malformed.
 *          For a KV codec the output must be exactly kvt_geom_block_bytes(g).
 */
struct kvt_codec_ops {
	const char *name;
	unsigned flags;
	int (*parse)(struct kvt_stage *st, const char *args);
	int (*canon)(const struct kvt_stage *st, char *buf, size_t len);
	size_t (*max_encoded_size)(const struct kvt_stage *st, const struct kvt_codec_geom *g,
				   size_t n);
	ssize_t (*encode)(const struct kvt_stage *st, const struct kvt_codec_geom *g,
			  const uint8_t *src, size_t n, uint8_t *dst, size_t cap);
	ssize_t (*decode)(const struct kvt_stage *st, const struct kvt_codec_geom *g,
			  const uint8_t *src, size_t n, uint8_t *dst, size_t cap);
	/* optional: 0 if blocks of geometry g can be encoded (e.g. the attached dictionary
	 * fits them), else -errno */
	int (*usable)(const struct kvt_stage *st, const struct kvt_codec_geom *g);
};

/* The registered codecs, NULL-terminated; and lookup by name (NULL if unknown). */
extern const struct kvt_codec_ops *const kvt_codecs[];
const struct kvt_codec_ops *kvt_codec_find(const char *name, size_t len);

struct kvt_chain;

#define KVT_CHAIN_MAX_STAGES 6
#define KVT_CHAIN_HDR_SIZE   32u
#define KVT_CHAIN_MAGIC	     0x3143564bu /* "KVC1" */

/*
 * Parses spec (grammar in CODECS.md) into *out.  Returns 0, -EINVAL for a bad spec (unknown
 * codec, bad argument, a KV codec that is not first), or -ENOMEM.  The caller frees the chain
 * with kvt_chain_free().
 */
int kvt_chain_parse(const char *spec, struct kvt_chain **out);
void kvt_chain_free(struct kvt_chain *c); /* NULL is a no-op */

/* Canonical spec (the one the id is computed from); valid until kvt_chain_free(). */
const char *kvt_chain_name(const struct kvt_chain *c);
/*
 * Stable 32-bit id of the chain: FNV-1a of the canonical name (mixed with the attached
 * dictionary's id, if any), never 0 except for "raw", whose id is 0 (the record format's
 * "raw").  Stored in every record the chain makes.
 */
uint32_t kvt_chain_id(const struct kvt_chain *c);
/* KVT_CODEC_LOSSLESS if every stage is lossless, else KVT_CODEC_LOSSY; | KVT_CODEC_KV if the
 * first stage needs the geometry. */
unsigned kvt_chain_flags(const struct kvt_chain *c);

/* Upper bound of kvt_chain_encode()'s output for a block of geometry g (0 if g is invalid). */
size_t kvt_chain_max_encoded_size(const struct kvt_chain *c, const struct kvt_codec_geom *g);

/*
 * Encodes the block src (n must be kvt_geom_block_bytes(g)) into dst.  Returns the record
 * length (header included) or -errno: -EINVAL (bad geometry or n), -ENOSPC (cap too small),
 * -ENOMEM.
 */
ssize_t kvt_chain_encode(const struct kvt_chain *c, const struct kvt_codec_geom *g, const void *src,
			 size_t n, void *dst, size_t cap);

/*
 * Decodes a record made by this chain into dst (cap bytes).  Returns the block length, or
 * -EBADMSG (corrupt, truncated, or made by another chain or with another dictionary: the
 * chain id must match), -ENOSPC (cap smaller than the block), -ENOMEM.  If g is not NULL it
 * receives the record's geometry.
 */
ssize_t kvt_chain_decode(const struct kvt_chain *c, const void *src, size_t n, void *dst,
			 size_t cap, struct kvt_codec_geom *g);

/*
 * Dictionaries (codecs/dict.c): per (layer, K or V, kv head) of one model an orthonormal basis
 * of the head space, calibrated once on real KV, which "uq:kb=1" codes coordinates in.  A
 * chain whose flags have KVT_CODEC_DICT encodes only with one attached; the dictionary's id is
 * mixed into the chain id and written in each record, so decoding a record without that
 * dictionary fails (-EBADMSG from the chain, -ENOKEY from the uq stage itself).
 */
int kvt_dict_parse(const void *buf, size_t n, struct kvt_dict **out); /* 0, -EBADMSG, -ENOMEM */
int kvt_dict_load(const char *path, struct kvt_dict **out);	      /* ... or -errno of I/O */
void kvt_dict_free(struct kvt_dict *d);				      /* NULL is a no-op */
uint64_t kvt_dict_id(const struct kvt_dict *d);			      /* XXH64 of its file */
size_t kvt_dict_bytes(const struct kvt_dict *d);		      /* size of its file */
/* 0 if d serves blocks of geometry g with keys in the RoPE frame theta; -EINVAL if not, -ENOKEY
 * if d is NULL. */
int kvt_dict_fits(const struct kvt_dict *d, const struct kvt_codec_geom *g, double rope_theta);
/*
 * Attaches d (NULL detaches) to every stage of c; d must outlive c's use.  Call it before c is
 * shared between threads.  Returns 0, or -EINVAL if c needs no dictionary.
 */
int kvt_chain_set_dict(struct kvt_chain *c, const struct kvt_dict *d);
/* 0 if c can encode blocks of geometry g (kvt_geom_check, and every stage's own conditions,
 * such as a dictionary that fits g), else -EINVAL or -ENOKEY (no dictionary attached). */
int kvt_chain_usable(const struct kvt_chain *c, const struct kvt_codec_geom *g);
/* The geometry a dictionary was calibrated on (block_tokens: the calibration's; first_token 0)
 * and the RoPE base of its key frame. */
void kvt_dict_geom(const struct kvt_dict *d, struct kvt_codec_geom *g, double *rope_theta);

/*
 * Calibration: blocks of one geometry in, a dictionary file out (kvt_dict_parse() reads it).
 * rope_theta: the RoPE base of the keys (0 if they carry none); it must equal the chain's.
 * finish() may be called once; the trainer is freed with kvt_dict_trainer_free().
 */
struct kvt_dict_trainer;
int kvt_dict_trainer_new(const struct kvt_codec_geom *g, double rope_theta,
			 struct kvt_dict_trainer **out);
int kvt_dict_trainer_add(struct kvt_dict_trainer *t, const struct kvt_codec_geom *g,
			 const void *block, size_t n);
int kvt_dict_trainer_finish(struct kvt_dict_trainer *t, void **out, size_t *out_len);
void kvt_dict_trainer_free(struct kvt_dict_trainer *t);

/* Reads a record's header without decoding: chain id, geometry and raw length. 0 or -EBADMSG. */
int kvt_chain_peek(const void *src, size_t n, uint32_t *chain_id, struct kvt_codec_geom *g,
		   uint32_t *raw_len);

#ifdef __cplusplus
}
#endif
#endif
