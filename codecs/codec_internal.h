/* SPDX-License-Identifier: MIT */
/* codec_internal.h - helpers shared by the codecs: byte I/O, fp16, arguments, transforms. */
#ifndef KVT_CODEC_INTERNAL_H
#define KVT_CODEC_INTERNAL_H

#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "codec.h"

/* ---- bounded little-endian writer and reader ------------------------------------------ */

struct wbuf {
	uint8_t *p;
	size_t cap, len;
	int err; /* -ENOSPC once a write did not fit; later writes are dropped */
};

static inline void wb_init(struct wbuf *w, uint8_t *p, size_t cap)
{
	w->p = p;
	w->cap = cap;
	w->len = 0;
	w->err = 0;
}

static inline uint8_t *wb_reserve(struct wbuf *w, size_t n)
{
	if (w->err || n > w->cap - w->len) {
		w->err = -ENOSPC;
		return NULL;
	}
	w->len += n;
	return w->p + w->len - n;
}

static inline void wb_bytes(struct wbuf *w, const void *s, size_t n)
{
	uint8_t *d = wb_reserve(w, n);
	if (d && n)
		memcpy(d, s, n);
}

static inline void wb_u8(struct wbuf *w, uint8_t v)
{
	wb_bytes(w, &v, 1);
}

static inline void wb_u16(struct wbuf *w, uint16_t v)
{
	uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
	wb_bytes(w, b, 2);
}

static inline void wb_u32(struct wbuf *w, uint32_t v)
{
	uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
	wb_bytes(w, b, 4);
}

static inline void wb_f32(struct wbuf *w, float f)
{
	uint32_t v;
	memcpy(&v, &f, 4);
	wb_u32(w, v);
}

struct rbuf {
	const uint8_t *p;
	size_t len, pos;
	int err; /* -EBADMSG once a read ran past the end; later reads return zeros */
};

static inline void rb_init(struct rbuf *r, const uint8_t *p, size_t len)
{
	r->p = p;
	r->len = len;
	r->pos = 0;
	r->err = 0;
}

static inline const uint8_t *rb_take(struct rbuf *r, size_t n)
{
	if (r->err || n > r->len - r->pos) {
		r->err = -EBADMSG;
		return NULL;
	}
	r->pos += n;
	return r->p + r->pos - n;
}

static inline uint8_t rb_u8(struct rbuf *r)
{
	const uint8_t *b = rb_take(r, 1);
	return b ? b[0] : 0;
}

static inline uint16_t rb_u16(struct rbuf *r)
{
	const uint8_t *b = rb_take(r, 2);
	return b ? (uint16_t)(b[0] | b[1] << 8) : 0;
}

static inline uint32_t rb_u32(struct rbuf *r)
{
	const uint8_t *b = rb_take(r, 4);
	return b ? (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
		       (uint32_t)b[3] << 24
		 : 0;
}

static inline float rb_f32(struct rbuf *r)
{
	uint32_t v = rb_u32(r);
	float f;
	memcpy(&f, &v, 4);
	return f;
}

static inline uint16_t ld16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static inline void st16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline uint32_t ld32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void st32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

/* ---- half precision ------------------------------------------------------------------- */

float kvt_h2f(uint16_t h);  /* fp16 -> float, exact */
uint16_t kvt_f2h(float f);  /* float -> fp16, round to nearest even, overflow to inf */
float kvt_bf2f(uint16_t h); /* bf16 -> float, exact */
uint16_t kvt_f2bf(float f); /* float -> bf16, round to nearest even (NaN kept quiet) */

/*
 * Array conversions of n little-endian 16-bit elements; dtype KVT_DTYPE_FP16 or _BF16.
 * An AVX2/F16C path is chosen at run time; it gives the same bits as the scalar one
 * (tests/unit/test_codec_simd.c).  kvt_simd_force_scalar(1) turns it off (tests).
 */
void kvt_load_f32(float *dst, const uint8_t *src, size_t n, uint32_t dtype);
void kvt_store_f32(uint8_t *dst, const float *src, size_t n, uint32_t dtype);
void kvt_simd_force_scalar(int on);
int kvt_simd_active(void);

/* ---- transforms ----------------------------------------------------------------------- */

/* In-place orthonormal Walsh-Hadamard transform of x[n], n a power of two (self-inverse). */
void kvt_hadamard(float *x, uint32_t n);
/*
 * Rotary position embedding of one head vector x[d] at position pos, rotate-half pairing
 * (i, i + d/2) with frequency theta^(-2i/d), as Llama-family models apply it; sign -1 undoes
 * it.
 */
void kvt_rope(float *x, uint32_t d, double pos, double theta, int sign);

/* The mean row of one slab of a dictionary, in the basis' coordinates (D floats). */
const float *kvt_dict_mean(const struct kvt_dict *d, size_t slab);
/* Basis of one slab of a dictionary, [d][j] (column j: direction j), or its transpose. */
const float *kvt_dict_basis(const struct kvt_dict *d, size_t slab, int transpose);
/* Eigenvectors (columns of v) and eigenvalues w, decreasing, of the symmetric a[n][n] (upper
 * triangle read; a is destroyed): Jacobi rotations, in dict.c. */
void kvt_dict_eigen(double *a, uint32_t n, double *v, double *w);

/* 16-bit SimHash of x[D]: signs of 16 fixed pseudo-random ±1 projections (codec_lsh.c). */
uint16_t kvt_simhash16(const float *x, uint32_t D);

/* ---- arguments ------------------------------------------------------------------------ */

/*
 * One accepted key of a codec's argument list: its slot in st->arg, range and default.
 * integer: 0 any number, 1 whole numbers, KVT_ARG_LIST a list "a:b:c:d" of up to
 * KVT_ARG_LIST_LEN numbers that fills this slot and the next KVT_ARG_LIST_LEN - 1 (whose defs
 * have key NULL and repeat the range); a shorter list repeats its last value.
 */
#define KVT_ARG_LIST	 2
#define KVT_ARG_LIST_LEN 4
struct kvt_argdef {
	const char *key;
	double def, min, max;
	int integer;
};

/*
 * Parses "key=value,key=value" (or a bare value for the first key, as in "zstd:3") into
 * st->arg following defs[n].  Missing keys take their default.  Returns 0 or -EINVAL.
 */
int kvt_args_parse(struct kvt_stage *st, const struct kvt_argdef *defs, size_t n, const char *args);
/* Canonical text of st->arg: every key that differs from its default, in defs order. */
int kvt_args_canon(const struct kvt_stage *st, const struct kvt_argdef *defs, size_t n, char *buf,
		   size_t len);

/* Stage i of a chain (NULL past the last). */
const struct kvt_stage *kvt_chain_stage(const struct kvt_chain *c, unsigned i);

/* ---- geometry ------------------------------------------------------------------------- */

/* Elements of one (layer, K or V, kv head) slab: block_tokens * head_dim. */
static inline size_t geom_slab(const struct kvt_codec_geom *g)
{
	return (size_t)g->block_tokens * g->head_dim;
}

/* Slabs of a block: n_layers * 2 * n_kv_heads, in memory order (l, kv, h). */
static inline size_t geom_nslabs(const struct kvt_codec_geom *g)
{
	return (size_t)g->n_layers * 2 * g->n_kv_heads;
}

/* Is slab s (memory order) a V slab? */
static inline int slab_is_v(const struct kvt_codec_geom *g, size_t s)
{
	return (s / g->n_kv_heads) & 1;
}

/* The calling thread's zstd contexts (codec_zstd.c); NULL when out of memory. */
struct ZSTD_CCtx_s;
struct ZSTD_DCtx_s;
struct ZSTD_CCtx_s *kvt_zstd_cctx(void);
struct ZSTD_DCtx_s *kvt_zstd_dctx(void);

/* Encoded byte codecs (lz4, zstd, rans) prefix their output with the decoded length. */
#define KVT_BYTE_HDR 4u

extern const struct kvt_codec_ops kvt_codec_raw, kvt_codec_lz4, kvt_codec_lz4hc, kvt_codec_zstd,
    kvt_codec_shuffle, kvt_codec_rans, kvt_codec_kivi, kvt_codec_fp8, kvt_codec_uq, kvt_codec_fpx,
    kvt_codec_lowrank, kvt_codec_lsh, kvt_codec_bq;

#endif
