/* SPDX-License-Identifier: MIT */
/*
 * chain.c - codec registry, chain spec parsing, chain id, and the record framing.
 *
 * Record = 32-byte header, then the last stage's output:
 *   0 magic "KVC1"   4 chain id   8 raw length   12 payload length (after the header)
 *  16 n_layers u16  18 n_kv_heads u16  20 head_dim u16  22 block_tokens u16
 *  24 dtype u8  25 stage count u8  26 reserved u16 (0)  28 first_token u32
 */
#include <stdio.h>
#include <stdlib.h>

#include "codec_internal.h"
#include "kvt_check.h"

const struct kvt_codec_ops *const kvt_codecs[] = {
    &kvt_codec_raw,
    &kvt_codec_lz4,
    &kvt_codec_lz4hc,
    &kvt_codec_zstd,
    &kvt_codec_shuffle,
    &kvt_codec_rans,
    &kvt_codec_kivi,
    &kvt_codec_fp8,
    &kvt_codec_uq,
    &kvt_codec_fpx,
    &kvt_codec_lowrank,
    &kvt_codec_lsh,
    &kvt_codec_bq,
    NULL,
};

struct kvt_chain {
	uint32_t magic;
	uint32_t id;
	unsigned flags;
	unsigned nst;
	struct kvt_stage st[KVT_CHAIN_MAX_STAGES];
	char name[512];
};

#define CHAIN_MAGIC 0x4e484341u /* "ACHN": a live struct kvt_chain */

const struct kvt_codec_ops *kvt_codec_find(const char *name, size_t len)
{
	for (size_t i = 0; kvt_codecs[i]; i++)
		if (strlen(kvt_codecs[i]->name) == len && !memcmp(kvt_codecs[i]->name, name, len))
			return kvt_codecs[i];
	return NULL;
}

static uint32_t fnv1a(const char *s)
{
	uint32_t h = 0x811c9dc5u;
	for (; *s; s++) {
		h ^= (uint8_t)*s;
		h *= 0x01000193u;
	}
	return h;
}

static int append(char *buf, size_t len, size_t *o, const char *s)
{
	size_t n = strlen(s);
	if (n >= len - *o)
		return -EINVAL;
	memcpy(buf + *o, s, n + 1);
	*o += n;
	return 0;
}

int kvt_chain_parse(const char *spec, struct kvt_chain **out)
{
	struct kvt_chain *c;
	const char *p = spec;
	size_t o = 0;
	int rc = -EINVAL;

	*out = NULL;
	if (!spec || !*spec || strlen(spec) > 400)
		return -EINVAL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	while (*p) {
		const char *end = strchr(p, '+');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		const char *colon = memchr(p, ':', len);
		size_t nlen = colon ? (size_t)(colon - p) : len;
		char args[128];
		const struct kvt_codec_ops *ops = kvt_codec_find(p, nlen);

		if (!ops || (colon && !ops->parse))
			goto fail;
		args[0] = 0;
		if (colon) {
			size_t al = len - nlen - 1;
			if (al >= sizeof(args))
				goto fail;
			memcpy(args, colon + 1, al);
			args[al] = 0;
		}
		/* A KV codec reads a block: only the first stage can be one. */
		if ((ops->flags & KVT_CODEC_KV) && c->nst)
			goto fail;
		/* "rans" right after a codec that can feed it codes that codec's symbols. */
		if (ops == &kvt_codec_rans && c->nst && !colon &&
		    (c->st[c->nst - 1].ops->flags & KVT_CODEC_FUSE) && !c->st[c->nst - 1].entropy) {
			c->st[c->nst - 1].entropy = 1;
		} else {
			struct kvt_stage *st;
			if (c->nst == KVT_CHAIN_MAX_STAGES)
				goto fail;
			st = &c->st[c->nst++];
			st->ops = ops;
			if (ops->parse && ops->parse(st, colon ? args : NULL))
				goto fail;
		}
		p += len;
		if (*p == '+' && !*++p)
			goto fail; /* trailing '+' */
	}
	/* "raw" adds nothing to any chain: drop it unless it is the whole chain. */
	unsigned k = 0;
	for (unsigned i = 0; i < c->nst; i++)
		if (c->st[i].ops != &kvt_codec_raw || c->nst == 1)
			c->st[k++] = c->st[i];
	if (!k)
		c->st[k++].ops = &kvt_codec_raw;
	c->nst = k;
	/* the canonical name, from the stages that remain */
	o = 0;
	c->name[0] = 0;
	for (unsigned i = 0; i < c->nst; i++) {
		char canon[160];
		canon[0] = 0;
		if (c->st[i].ops->canon && c->st[i].ops->canon(&c->st[i], canon, sizeof(canon)))
			goto fail;
		if ((i && append(c->name, sizeof(c->name), &o, "+")) ||
		    append(c->name, sizeof(c->name), &o, c->st[i].ops->name) ||
		    (canon[0] && (append(c->name, sizeof(c->name), &o, ":") ||
				  append(c->name, sizeof(c->name), &o, canon))) ||
		    (c->st[i].entropy && append(c->name, sizeof(c->name), &o, "+rans")))
			goto fail;
	}
	c->flags = KVT_CODEC_LOSSLESS;
	for (unsigned i = 0; i < c->nst; i++) {
		if (c->st[i].ops->flags & KVT_CODEC_LOSSY)
			c->flags = (c->flags & ~KVT_CODEC_LOSSLESS) | KVT_CODEC_LOSSY;
		if (c->st[i].ops->flags & KVT_CODEC_KV)
			c->flags |= KVT_CODEC_KV;
		if (c->st[i].needs_dict)
			c->flags |= KVT_CODEC_DICT;
	}
	c->id = strcmp(c->name, "raw") ? fnv1a(c->name) : 0;
	if (!c->id && strcmp(c->name, "raw"))
		c->id = 1;
	c->magic = CHAIN_MAGIC;
	*out = c;
	return 0;
fail:
	free(c);
	return rc;
}

void kvt_chain_free(struct kvt_chain *c)
{
	if (!c)
		return;
	KVT_CHECK_MAGIC(c, CHAIN_MAGIC);
	c->magic = 0;
	free(c);
}

const char *kvt_chain_name(const struct kvt_chain *c)
{
	KVT_CHECK_MAGIC(c, CHAIN_MAGIC);
	return c->name;
}

uint32_t kvt_chain_id(const struct kvt_chain *c)
{
	KVT_CHECK_MAGIC(c, CHAIN_MAGIC);
	return c->id;
}

unsigned kvt_chain_flags(const struct kvt_chain *c)
{
	KVT_CHECK_MAGIC(c, CHAIN_MAGIC);
	return c->flags;
}

const struct kvt_stage *kvt_chain_stage(const struct kvt_chain *c, unsigned i)
{
	return c && c->magic == CHAIN_MAGIC && i < c->nst ? &c->st[i] : NULL;
}

int kvt_chain_set_dict(struct kvt_chain *c, const struct kvt_dict *d)
{
	KVT_CHECK_MAGIC(c, CHAIN_MAGIC);
	if (!c || c->magic != CHAIN_MAGIC || !(c->flags & KVT_CODEC_DICT))
		return -EINVAL;
	for (unsigned i = 0; i < c->nst; i++)
		c->st[i].dict = d;
	/* records of one dictionary are another chain's to every other dictionary */
	c->id = fnv1a(c->name);
	if (d) {
		uint64_t k = kvt_dict_id(d);
		for (int b = 0; b < 8; b++)
			c->id = (c->id ^ (uint8_t)(k >> (8 * b))) * 16777619u;
	}
	if (!c->id)
		c->id = 1;
	return 0;
}

int kvt_chain_usable(const struct kvt_chain *c, const struct kvt_codec_geom *g)
{
	int rc;
	KVT_CHECK_MAGIC(c, CHAIN_MAGIC);
	if (!c || c->magic != CHAIN_MAGIC)
		return -EINVAL;
	if ((c->flags & KVT_CODEC_KV) && kvt_geom_check(g))
		return -EINVAL;
	for (unsigned i = 0; i < c->nst; i++)
		if (c->st[i].ops->usable && (rc = c->st[i].ops->usable(&c->st[i], g)))
			return rc;
	return 0;
}

/* bound[i] = largest input of stage i (bound[0] = raw), bound[nst] = largest payload. */
static int chain_bounds(const struct kvt_chain *c, const struct kvt_codec_geom *g, size_t raw,
			size_t *bound)
{
	bound[0] = raw;
	for (unsigned i = 0; i < c->nst; i++) {
		bound[i + 1] = c->st[i].ops->max_encoded_size(&c->st[i], g, bound[i]);
		if (!bound[i + 1] || bound[i + 1] > (1ull << 31))
			return -EINVAL;
	}
	return 0;
}

size_t kvt_chain_max_encoded_size(const struct kvt_chain *c, const struct kvt_codec_geom *g)
{
	size_t bound[KVT_CHAIN_MAX_STAGES + 1], raw = kvt_geom_block_bytes(g);

	KVT_CHECK_MAGIC(c, CHAIN_MAGIC);
	if (!raw || chain_bounds(c, g, raw, bound))
		return 0;
	return KVT_CHAIN_HDR_SIZE + bound[c->nst];
}

static void put_hdr(uint8_t *d, const struct kvt_chain *c, const struct kvt_codec_geom *g,
		    size_t raw, size_t payload)
{
	st32(d, KVT_CHAIN_MAGIC);
	st32(d + 4, c->id);
	st32(d + 8, (uint32_t)raw);
	st32(d + 12, (uint32_t)payload);
	st16(d + 16, (uint16_t)g->n_layers);
	st16(d + 18, (uint16_t)g->n_kv_heads);
	st16(d + 20, (uint16_t)g->head_dim);
	st16(d + 22, (uint16_t)g->block_tokens);
	d[24] = (uint8_t)g->dtype;
	d[25] = (uint8_t)c->nst;
	st16(d + 26, 0);
	st32(d + 28, g->first_token);
}

ssize_t kvt_chain_encode(const struct kvt_chain *c, const struct kvt_codec_geom *g, const void *src,
			 size_t n, void *dst, size_t cap)
{
	size_t bound[KVT_CHAIN_MAX_STAGES + 1], raw = kvt_geom_block_bytes(g), maxb = 0;
	uint8_t *buf[2] = {NULL, NULL}, *out = dst;
	const uint8_t *in = src;
	ssize_t len = (ssize_t)n, rc;

	KVT_CHECK_MAGIC(c, CHAIN_MAGIC);
	if (!c || c->magic != CHAIN_MAGIC || !raw || n != raw)
		return -EINVAL;
	if (g->n_layers > 0xffff || g->n_kv_heads > 0xffff || g->block_tokens > 0xffff)
		return -EINVAL;
	if (chain_bounds(c, g, raw, bound))
		return -EINVAL;
	if (cap < KVT_CHAIN_HDR_SIZE)
		return -ENOSPC;
	for (unsigned i = 1; i < c->nst; i++)
		maxb = bound[i] > maxb ? bound[i] : maxb;
	for (int i = 0; i < 2 && maxb; i++) {
		buf[i] = malloc(maxb);
		if (!buf[i]) {
			rc = -ENOMEM;
			goto out;
		}
	}
	for (unsigned i = 0; i < c->nst; i++) {
		int last = i + 1 == c->nst;
		uint8_t *o = last ? out + KVT_CHAIN_HDR_SIZE : buf[i & 1];
		size_t ocap = last ? cap - KVT_CHAIN_HDR_SIZE : bound[i + 1];
		len = c->st[i].ops->encode(&c->st[i], g, in, (size_t)len, o, ocap);
		if (len < 0) {
			rc = len;
			goto out;
		}
		in = o;
	}
	put_hdr(out, c, g, raw, (size_t)len);
	rc = len + KVT_CHAIN_HDR_SIZE;
out:
	free(buf[0]);
	free(buf[1]);
	return rc;
}

int kvt_chain_peek(const void *src, size_t n, uint32_t *chain_id, struct kvt_codec_geom *g,
		   uint32_t *raw_len)
{
	const uint8_t *s = src;
	struct kvt_codec_geom gg;

	if (n < KVT_CHAIN_HDR_SIZE || ld32(s) != KVT_CHAIN_MAGIC || ld16(s + 26))
		return -EBADMSG;
	gg.n_layers = ld16(s + 16);
	gg.n_kv_heads = ld16(s + 18);
	gg.head_dim = ld16(s + 20);
	gg.block_tokens = ld16(s + 22);
	gg.dtype = s[24];
	gg.first_token = ld32(s + 28);
	/* An invalid geometry has 0 block bytes, which a raw_len of 0 would match: a record
	 * that encode() could never have made must not decode to an empty block. */
	if (kvt_geom_check(&gg) || kvt_geom_block_bytes(&gg) != ld32(s + 8))
		return -EBADMSG;
	if (ld32(s + 12) > n - KVT_CHAIN_HDR_SIZE)
		return -EBADMSG;
	if (chain_id)
		*chain_id = ld32(s + 4);
	if (g)
		*g = gg;
	if (raw_len)
		*raw_len = ld32(s + 8);
	return 0;
}

ssize_t kvt_chain_decode(const struct kvt_chain *c, const void *src, size_t n, void *dst,
			 size_t cap, struct kvt_codec_geom *gout)
{
	size_t bound[KVT_CHAIN_MAX_STAGES + 1], maxb = 0;
	struct kvt_codec_geom g;
	uint32_t id, raw;
	uint8_t *buf[2] = {NULL, NULL};
	const uint8_t *in;
	ssize_t len, rc;

	KVT_CHECK_MAGIC(c, CHAIN_MAGIC);
	if (!c || c->magic != CHAIN_MAGIC)
		return -EINVAL;
	if (kvt_chain_peek(src, n, &id, &g, &raw) || id != c->id ||
	    ((const uint8_t *)src)[25] != c->nst)
		return -EBADMSG;
	if (cap < raw)
		return -ENOSPC;
	if (chain_bounds(c, &g, raw, bound))
		return -EBADMSG;
	for (unsigned i = 1; i < c->nst; i++)
		maxb = bound[i] > maxb ? bound[i] : maxb;
	for (int i = 0; i < 2 && maxb; i++) {
		buf[i] = malloc(maxb);
		if (!buf[i]) {
			rc = -ENOMEM;
			goto out;
		}
	}
	in = (const uint8_t *)src + KVT_CHAIN_HDR_SIZE;
	len = (ssize_t)ld32((const uint8_t *)src + 12);
	for (unsigned i = c->nst; i-- > 0;) {
		uint8_t *o = i ? buf[i & 1] : dst;
		size_t ocap = i ? bound[i] : raw;
		len = c->st[i].ops->decode(&c->st[i], &g, in, (size_t)len, o, ocap);
		if (len < 0) {
			rc = len == -ENOMEM || len == -ENOKEY ? len : -EBADMSG;
			goto out;
		}
		in = o;
	}
	if ((size_t)len != raw) {
		rc = -EBADMSG;
		goto out;
	}
	if (gout)
		*gout = g;
	rc = len;
out:
	free(buf[0]);
	free(buf[1]);
	return rc;
}
