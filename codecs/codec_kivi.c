/* SPDX-License-Identifier: MIT */
/*
 * codec_kivi.c - "kivi": asymmetric integer quantization after KIVI (Liu et al. 2024).
 *
 *   kivi:k=BITS,v=BITS,g=GROUP,rot=0|1,sink=N,outl=FRACTION   [+rans]
 *
 * Keys are quantized per channel in groups of g consecutive tokens, values per token in
 * groups of g channels, with b in 1..8 bits, scale and zero point in fp16 per group.
 * rot=1 applies an orthonormal Hadamard transform to every token vector first (spreads
 * outliers over the channels).  sink=N keeps the first N tokens of the sequence exact.
 * outl=F keeps the fraction F of each slab's entries farthest from their channel mean exact
 * (a sparse list of position and fp16 value).  With "+rans" the codes are entropy-coded with
 * a per-slab adaptive table instead of being bit-packed.
 *
 * Error bound (per element, before rotation and fp16 output rounding): |x - x^| <= scale/2
 * of the element's group, scale = (max - min) / (2^b - 1) rounded up to fp16.
 *
 * Per slab: sink rows (fp16), outliers, then per group fp16 scale and zero, then the codes.
 */
#include <math.h>
#include <stdlib.h>

#include "kvslab.h"
#include "rans.h"

enum { A_K, A_V, A_G, A_ROT, A_SINK, A_OUTL, A_N };

static const struct kvt_argdef kivi_args[A_N] = {
    {"k", 4, 1, 8, 1},	 {"v", 4, 1, 8, 1},	 {"g", 32, 1, 4096, 1},
    {"rot", 0, 0, 1, 1}, {"sink", 0, 0, 1e9, 1}, {"outl", 0, 0, 0.5, 0},
};

static int kivi_parse(struct kvt_stage *st, const char *a)
{
	return kvt_args_parse(st, kivi_args, A_N, a);
}

static int kivi_canon(const struct kvt_stage *st, char *b, size_t l)
{
	return kvt_args_canon(st, kivi_args, A_N, b, l);
}

static size_t n_outl(const struct kvt_stage *st, size_t n)
{
	return (size_t)ceil(st->arg[A_OUTL] * (double)n);
}

static size_t kivi_bound(const struct kvt_stage *st, const struct kvt_codec_geom *g, size_t n)
{
	if (kvt_geom_check(g))
		return 0;
	size_t slab = geom_slab(g), groups = slab / 1 + g->block_tokens + g->head_dim;
	/* worst case per slab: sinks raw, every outlier, every group, 8-bit codes or rans */
	size_t per =
	    slab * 2 + 10 + n_outl(st, slab) * 7 + groups * 4 + rans_bound(slab) + 2 + 2 * 256 + 8;
	return geom_nslabs(g) * per;
}

struct kivi_ctx {
	const struct kvt_stage *st;
	const struct kvt_codec_geom *g;
	uint32_t T, D, nsink, rows, gs;
	float *x;
	uint8_t *q;
	uint16_t *sym;
	uint32_t *oidx;
};

/* Groups of a slab: keys per (channel, token group), values per (token, channel group). */
static size_t n_groups(const struct kivi_ctx *c, int isv)
{
	if (isv)
		return (size_t)c->rows * ((c->D + c->gs - 1) / c->gs);
	return (size_t)c->D * ((c->rows + c->gs - 1) / c->gs);
}

/* Calls fn(ctx, group, element index) for every element of every group, in group order. */
#define FOR_GROUPS(c, isv, gi, i, ...)                                                             \
	do {                                                                                       \
		size_t gi = 0;                                                                     \
		if (isv) {                                                                         \
			for (uint32_t t = (c)->nsink; t < (c)->T; t++)                             \
				for (uint32_t d0 = 0; d0 < (c)->D; d0 += (c)->gs, gi++)            \
					for (uint32_t d = d0; d < d0 + (c)->gs && d < (c)->D;      \
					     d++) {                                                \
						size_t i = (size_t)t * (c)->D + d;                 \
						__VA_ARGS__;                                       \
					}                                                          \
		} else {                                                                           \
			for (uint32_t d = 0; d < (c)->D; d++)                                      \
				for (uint32_t t0 = (c)->nsink; t0 < (c)->T; t0 += (c)->gs, gi++)   \
					for (uint32_t t = t0; t < t0 + (c)->gs && t < (c)->T;      \
					     t++) {                                                \
						size_t i = (size_t)t * (c)->D + d;                 \
						__VA_ARGS__;                                       \
					}                                                          \
		}                                                                                  \
	} while (0)

static ssize_t kivi_enc(const struct kvt_stage *st, const struct kvt_codec_geom *g,
			const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	struct kivi_ctx c = {.st = st, .g = g, .T = g->block_tokens, .D = g->head_dim};
	size_t slab = geom_slab(g), ns = geom_nslabs(g), maxo = n_outl(st, slab);
	float *mn = NULL, *mx = NULL, *mean = NULL;
	struct rans_table *tab = NULL;
	struct wbuf w;
	ssize_t rc = -ENOMEM;

	if (kvt_geom_check(g) || n != kvt_geom_block_bytes(g))
		return -EINVAL;
	if (st->arg[A_ROT] && !is_pow2(c.D))
		return -EINVAL;
	c.nsink = sink_rows(g, st->arg[A_SINK]);
	c.rows = c.T - c.nsink;
	c.gs = (uint32_t)st->arg[A_G];
	size_t ng = (size_t)c.T * c.D; /* >= groups of either kind */
	c.x = malloc(slab * sizeof(float));
	c.q = malloc(slab);
	c.sym = malloc(slab * sizeof(uint16_t));
	c.oidx = malloc((maxo + 1) * sizeof(uint32_t));
	mn = malloc(ng * sizeof(float));
	mx = malloc(ng * sizeof(float));
	mean = malloc(c.D * sizeof(float));
	tab = malloc(sizeof(*tab));
	if (!c.x || !c.q || !c.sym || !c.oidx || !mn || !mx || !mean || !tab)
		goto out;
	wb_init(&w, dst, cap);
	for (size_t s = 0; s < ns; s++) {
		const uint8_t *in = src + s * slab * 2;
		int isv = slab_is_v(g, s);
		unsigned bits = (unsigned)st->arg[isv ? A_V : A_K], lv = (1u << bits) - 1;
		size_t rs = (size_t)c.nsink * c.D, cnt = 0, groups = n_groups(&c, isv);

		kvt_load_f32(c.x, in, slab, g->dtype);
		kv_sanitize(c.x, slab);
		wb_bytes(&w, in, rs * 2);
		/* outliers: replaced by their channel mean so they stretch no group */
		for (uint32_t d = 0; d < c.D; d++) {
			double a = 0;
			for (uint32_t t = c.nsink; t < c.T; t++)
				a += c.x[(size_t)t * c.D + d];
			mean[d] = c.rows ? (float)(a / c.rows) : 0;
		}
		if (maxo && c.rows) {
			size_t want = n_outl(st, (size_t)c.rows * c.D);
			cnt = kv_pick_outliers(c.x + rs, slab - rs, mean, c.D, want, c.oidx);
			for (size_t i = 0; i < cnt; i++) {
				c.oidx[i] += (uint32_t)rs;
				c.x[c.oidx[i]] = mean[c.oidx[i] % c.D];
			}
		}
		kv_write_outliers(&w, c.oidx, cnt, in);
		if (st->arg[A_ROT])
			for (uint32_t t = c.nsink; t < c.T; t++)
				kvt_hadamard(c.x + (size_t)t * c.D, c.D);
		for (size_t k = 0; k < groups; k++) {
			mn[k] = INFINITY;
			mx[k] = -INFINITY;
		}
		FOR_GROUPS(&c, isv, gi, i, {
			if (c.x[i] < mn[gi])
				mn[gi] = c.x[i];
			if (c.x[i] > mx[gi])
				mx[gi] = c.x[i];
		});
		for (size_t k = 0; k < groups; k++) {
			/* rotated values can leave the fp16 range: those clip */
			mn[k] = mn[k] < -65504.0f ? -65504.0f : mn[k] > 65504.0f ? 65504.0f : mn[k];
			uint16_t zh = kvt_f2h(mn[k]);
			float z = kvt_h2f(zh);
			if (z > mn[k]) { /* zero rounded up: step down so every value is >= z */
				if (!(zh & 0x7fff))
					zh = 0x8001;
				else if (zh != 0xfbff)
					zh = (uint16_t)(zh & 0x8000 ? zh + 1 : zh - 1);
				z = kvt_h2f(zh);
			}
			float span = (mx[k] - z) / (float)lv;
			uint16_t sh = f2h_up(span < 65504.0f ? span : 65504.0f);
			wb_u16(&w, zh);
			wb_u16(&w, sh);
			mn[k] = z;
			mx[k] = kvt_h2f(sh); /* mx now holds the scale */
		}
		size_t nq = 0;
		FOR_GROUPS(&c, isv, gi, i, {
			float sc = mx[gi], v = sc > 0 ? (c.x[i] - mn[gi]) / sc : 0;
			long qv = lrintf(v);
			c.q[nq++] = (uint8_t)(qv < 0 ? 0 : qv > (long)lv ? lv : (unsigned long)qv);
		});
		if (st->entropy) {
			uint32_t counts[256] = {0};
			for (size_t i = 0; i < nq; i++)
				counts[c.q[i]]++;
			counts[0] += !nq;
			for (size_t i = 0; i < nq; i++)
				c.sym[i] = c.q[i];
			rans_table_from_counts(tab, counts, lv + 1);
			rans_table_write(&w, tab);
			uint8_t *lp = wb_reserve(&w, 4);
			if (w.err)
				break;
			const struct rans_table *tabs[1] = {tab};
			long l = rans_encode(c.sym, NULL, nq, tabs, w.p + w.len, w.cap - w.len);
			if (l < 0) {
				w.err = (int)l;
				break;
			}
			st32(lp, (uint32_t)l);
			w.len += (size_t)l;
		} else {
			uint8_t *p = wb_reserve(&w, packed_len(nq, bits));
			if (p)
				pack_bits(p, c.q, nq, bits);
		}
	}
	rc = w.err ? w.err : (ssize_t)w.len;
out:
	free(c.x);
	free(c.q);
	free(c.sym);
	free(c.oidx);
	free(mn);
	free(mx);
	free(mean);
	free(tab);
	return rc;
}

static ssize_t kivi_dec(const struct kvt_stage *st, const struct kvt_codec_geom *g,
			const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
	struct kivi_ctx c = {.st = st, .g = g, .T = g->block_tokens, .D = g->head_dim};
	size_t slab = geom_slab(g), ns = geom_nslabs(g), raw = kvt_geom_block_bytes(g);
	float *zero = NULL, *scale = NULL;
	struct rans_table *tab = NULL;
	uint8_t *ob = NULL;
	struct rbuf r;
	ssize_t rc = -ENOMEM;

	if (!raw || cap < raw || (st->arg[A_ROT] && !is_pow2(c.D)))
		return -EBADMSG;
	c.nsink = sink_rows(g, st->arg[A_SINK]);
	c.rows = c.T - c.nsink;
	c.gs = (uint32_t)st->arg[A_G];
	size_t ng = (size_t)c.T * c.D;
	c.x = malloc(slab * sizeof(float));
	c.q = malloc(slab);
	c.sym = malloc(slab * sizeof(uint16_t));
	zero = malloc(ng * sizeof(float));
	scale = malloc(ng * sizeof(float));
	tab = malloc(sizeof(*tab));
	ob = malloc(slab * 2);
	if (!c.x || !c.q || !c.sym || !zero || !scale || !tab || !ob)
		goto out;
	rc = -EBADMSG;
	rb_init(&r, src, n);
	for (size_t s = 0; s < ns; s++) {
		uint8_t *o = dst + s * slab * 2;
		int isv = slab_is_v(g, s);
		unsigned bits = (unsigned)st->arg[isv ? A_V : A_K], lv = (1u << bits) - 1;
		size_t rs = (size_t)c.nsink * c.D, groups = n_groups(&c, isv), nq = slab - rs;
		const uint8_t *sk = rb_take(&r, rs * 2);
		struct rbuf ol = r; /* outliers are patched after the reconstruction */

		if (!sk || kv_read_outliers(&r, ob, slab, n_outl(st, nq)))
			goto out;
		for (size_t k = 0; k < groups; k++) {
			zero[k] = kvt_h2f(rb_u16(&r));
			scale[k] = kvt_h2f(rb_u16(&r));
			if (!isfinite(zero[k]) || !isfinite(scale[k]))
				goto out;
		}
		if (r.err)
			goto out;
		if (st->entropy) {
			if (rans_table_read(&r, tab, lv + 1) || tab->nsym != lv + 1)
				goto out;
			uint32_t l = rb_u32(&r);
			const uint8_t *p = rb_take(&r, l);
			const struct rans_table *tabs[1] = {tab};
			if (!p || rans_decode(p, l, nq, NULL, 1, tabs, c.sym))
				goto out;
			for (size_t i = 0; i < nq; i++)
				c.q[i] = (uint8_t)c.sym[i];
		} else {
			const uint8_t *p = rb_take(&r, packed_len(nq, bits));
			if (!p)
				goto out;
			unpack_bits(c.q, p, nq, bits);
		}
		size_t k = 0;
		FOR_GROUPS(&c, isv, gi, i, { c.x[i] = zero[gi] + scale[gi] * (float)c.q[k++]; });
		if (st->arg[A_ROT])
			for (uint32_t t = c.nsink; t < c.T; t++)
				kvt_hadamard(c.x + (size_t)t * c.D, c.D);
		memcpy(o, sk, rs * 2);
		kvt_store_f32(o + rs * 2, c.x + rs, nq, g->dtype);
		if (kv_read_outliers(&ol, o, slab, n_outl(st, nq)))
			goto out;
	}
	rc = r.pos == n ? (ssize_t)raw : -EBADMSG;
out:
	free(c.x);
	free(c.q);
	free(c.sym);
	free(zero);
	free(scale);
	free(tab);
	free(ob);
	return rc;
}

const struct kvt_codec_ops kvt_codec_kivi = {
    .name = "kivi",
    .flags = KVT_CODEC_LOSSY | KVT_CODEC_KV | KVT_CODEC_FUSE,
    .parse = kivi_parse,
    .canon = kivi_canon,
    .max_encoded_size = kivi_bound,
    .encode = kivi_enc,
    .decode = kivi_dec,
};
