/* SPDX-License-Identifier: MIT */
/*
 * dict.c - codec dictionaries: for every (layer, K or V, kv head) of a model, an orthonormal
 * basis of the head_dim space, the Karhunen-Loeve transform of that slab's keys or values.
 *
 * The keys and values of one head are far from white: a few directions carry most of the
 * energy, and which ones is a property of the model's weights, not of the text.  "uq:kb=1"
 * quantizes coordinates in this basis instead of channels, which needs fewer bits for the
 * same error; the basis is calibrated once per model (kvt_dict_trainer, on real KV) and kept
 * by the tier, and every record made with it names it by id.
 *
 * File (little-endian): "KVTDICT1", u32 version 1, n_layers, n_kv_heads, head_dim,
 * block_tokens and blocks of the calibration, f64 RoPE theta of the key frame, 8 bytes zero;
 * then per slab, in block order (layer, K then V, kv head): head_dim f32 column scales, the
 * slab's mean row (head_dim f32, pre-RoPE frame for keys), then the basis as int8 [d][j],
 * column j the j-th direction by decreasing variance; then the XXH64 of all of the above,
 * which is the dictionary's id.
 * Eight bits are plenty: any orthonormal basis decodes exactly (both sides rebuild the same
 * one from the file, Gram-Schmidt in double), and one near the KLT compacts as well as the
 * KLT (on nx_gml_2k: 7.845 x with 8 bits against 7.847 x with fp16).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "codec_internal.h"
#include "kvslab.h"

#define DICT_MAGIC "KVTDICT1"
#define DICT_HDR   48u

struct kvt_dict {
	uint64_t id;
	uint32_t n_layers, n_kv_heads, head_dim, block_tokens, n_blocks;
	double rope_theta;
	size_t bytes;
	float *basis;  /* [slab][d][j] */
	float *tbasis; /* [slab][j][d]: the transpose, for the inverse transform */
	float *cmean;  /* [slab][j]: the mean row in the basis' coordinates */
};

static size_t dict_slabs(uint32_t L, uint32_t H)
{
	return (size_t)2 * L * H;
}

/* Bytes of one slab in the file: column scales, mean row, then the basis' entries. */
static size_t slab_bytes(uint32_t D)
{
	return (size_t)D * 8 + (size_t)D * D;
}

static uint64_t ld64(const uint8_t *p)
{
	return (uint64_t)ld32(p) | (uint64_t)ld32(p + 4) << 32;
}

/*
 * Gram-Schmidt (modified, in double) on the columns of b[D][D]: fp16 storage leaves them
 * orthonormal to about 1e-3 only, and the inverse transform is the transpose.
 */
static void orthonormalize(float *b, uint32_t D, double *col)
{
	for (uint32_t j = 0; j < D; j++) {
		for (uint32_t d = 0; d < D; d++)
			col[d] = b[(size_t)d * D + j];
		for (int pass = 0; pass < 2; pass++)
			for (uint32_t k = 0; k < j; k++) {
				double dot = 0;
				for (uint32_t d = 0; d < D; d++)
					dot += col[d] * b[(size_t)d * D + k];
				for (uint32_t d = 0; d < D; d++)
					col[d] -= dot * b[(size_t)d * D + k];
			}
		double nn = 0;
		for (uint32_t d = 0; d < D; d++)
			nn += col[d] * col[d];
		nn = nn > 0 ? 1.0 / sqrt(nn) : 0;
		for (uint32_t d = 0; d < D; d++)
			b[(size_t)d * D + j] = (float)(col[d] * nn);
	}
}

int kvt_dict_parse(const void *buf, size_t n, struct kvt_dict **out)
{
	const uint8_t *p = buf;
	struct kvt_dict *d;

	*out = NULL;
	if (n < DICT_HDR + 8 || memcmp(p, DICT_MAGIC, 8) || ld32(p + 8) != 1)
		return -EBADMSG;
	uint32_t L = ld32(p + 12), H = ld32(p + 16), D = ld32(p + 20);
	if (!L || !H || !D || L > 4096 || H > 1024 || D > 1024 || D % 2)
		return -EBADMSG;
	size_t ns = dict_slabs(L, H), mat = (size_t)D * D;
	if (n != DICT_HDR + ns * slab_bytes(D) + 8)
		return -EBADMSG;
	if (XXH64(p, n - 8, 0) != ld64(p + n - 8))
		return -EBADMSG;
	double theta;
	memcpy(&theta, p + 32, 8);
	if (!isfinite(theta) || theta < 0)
		return -EBADMSG;
	d = calloc(1, sizeof(*d));
	double *col = malloc(D * sizeof(double));
	if (!d || !col || !(d->basis = malloc(ns * mat * sizeof(float))) ||
	    !(d->tbasis = malloc(ns * mat * sizeof(float))) ||
	    !(d->cmean = malloc(ns * D * sizeof(float)))) {
		free(col);
		kvt_dict_free(d);
		return -ENOMEM;
	}
	if (!ld32(p + 24) || ld32(p + 24) > 0xffff) {
		free(col);
		kvt_dict_free(d);
		return -EBADMSG;
	}
	d->id = ld64(p + n - 8);
	d->n_layers = L;
	d->n_kv_heads = H;
	d->head_dim = D;
	d->block_tokens = ld32(p + 24);
	d->n_blocks = ld32(p + 28);
	d->rope_theta = theta;
	d->bytes = n;
	for (size_t s = 0; s < ns; s++) {
		float *b = d->basis + s * mat, *t = d->tbasis + s * mat;
		const uint8_t *sp = p + DICT_HDR + s * slab_bytes(D);
		const int8_t *q = (const int8_t *)(sp + (size_t)D * 8);
		for (uint32_t j = 0; j < D; j++) {
			float sc, m;
			memcpy(&sc, sp + (size_t)j * 4, 4);
			memcpy(&m, sp + (size_t)(D + j) * 4, 4);
			/* a mean row of fp16 data is within the fp16 range */
			if (!isfinite(sc) || !(sc > 0) || sc > 1 || !(fabsf(m) <= 65504.0f)) {
				free(col);
				kvt_dict_free(d);
				return -EBADMSG;
			}
			col[j] = sc;
		}
		for (size_t i = 0; i < mat; i++)
			b[i] = (float)(q[i] * col[i % D]);
		orthonormalize(b, D, col);
		for (uint32_t i = 0; i < D; i++)
			for (uint32_t j = 0; j < D; j++)
				t[(size_t)j * D + i] = b[(size_t)i * D + j];
		/* the mean row in coordinates, once: uq codes block means relative to it */
		for (uint32_t j = 0; j < D; j++) {
			double a = 0;
			for (uint32_t i = 0; i < D; i++) {
				float m;
				memcpy(&m, sp + (size_t)(D + i) * 4, 4);
				a += (double)m * b[(size_t)i * D + j];
			}
			d->cmean[(size_t)s * D + j] = (float)a;
		}
	}
	free(col);
	*out = d;
	return 0;
}

int kvt_dict_load(const char *path, struct kvt_dict **out)
{
	FILE *f = fopen(path, "rb");
	long len;
	uint8_t *buf;
	int rc;

	*out = NULL;
	if (!f)
		return -errno;
	if (fseek(f, 0, SEEK_END) || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
		rc = -errno;
		fclose(f);
		return rc;
	}
	if (len > (1l << 31)) {
		fclose(f);
		return -EFBIG;
	}
	buf = malloc((size_t)len + 1);
	if (!buf) {
		fclose(f);
		return -ENOMEM;
	}
	rc = fread(buf, 1, (size_t)len, f) == (size_t)len ? kvt_dict_parse(buf, (size_t)len, out)
							  : -EIO;
	fclose(f);
	free(buf);
	return rc;
}

void kvt_dict_free(struct kvt_dict *d)
{
	if (!d)
		return;
	free(d->basis);
	free(d->tbasis);
	free(d->cmean);
	free(d);
}

uint64_t kvt_dict_id(const struct kvt_dict *d)
{
	return d->id;
}

size_t kvt_dict_bytes(const struct kvt_dict *d)
{
	return d->bytes;
}

int kvt_dict_fits(const struct kvt_dict *d, const struct kvt_codec_geom *g, double rope_theta)
{
	if (!d)
		return -ENOKEY;
	if (d->n_layers != g->n_layers || d->n_kv_heads != g->n_kv_heads ||
	    d->head_dim != g->head_dim || d->rope_theta != rope_theta)
		return -EINVAL;
	return 0;
}

void kvt_dict_geom(const struct kvt_dict *d, struct kvt_codec_geom *g, double *rope_theta)
{
	*g = (struct kvt_codec_geom){d->n_layers,     d->n_kv_heads,  d->head_dim,
				     d->block_tokens, KVT_DTYPE_FP16, 0};
	*rope_theta = d->rope_theta;
}

const float *kvt_dict_mean(const struct kvt_dict *d, size_t slab)
{
	return d->cmean + slab * d->head_dim;
}

const float *kvt_dict_basis(const struct kvt_dict *d, size_t slab, int transpose)
{
	size_t mat = (size_t)d->head_dim * d->head_dim;
	return (transpose ? d->tbasis : d->basis) + slab * mat;
}

/* ---------------------------------------------------------------------------------------
 * Calibration
 */

struct kvt_dict_trainer {
	struct kvt_codec_geom g;
	double theta;
	uint32_t n_blocks;
	double *cov; /* [slab][D][D]: sums of outer products of block-centred rows */
	double *sum; /* [slab][D]: sums of the rows */
	float *x;
	double *mu;
};

int kvt_dict_trainer_new(const struct kvt_codec_geom *g, double rope_theta,
			 struct kvt_dict_trainer **out)
{
	struct kvt_dict_trainer *t;
	size_t ns, D;

	*out = NULL;
	if (kvt_geom_check(g) || !(rope_theta >= 0) || !isfinite(rope_theta))
		return -EINVAL;
	ns = dict_slabs(g->n_layers, g->n_kv_heads);
	D = g->head_dim;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->g = *g;
	t->g.first_token = 0;
	t->theta = rope_theta;
	t->cov = calloc(ns * D * D, sizeof(double));
	t->sum = calloc(ns * D, sizeof(double));
	t->x = malloc((size_t)g->block_tokens * D * sizeof(float));
	t->mu = malloc(D * sizeof(double));
	if (!t->cov || !t->sum || !t->x || !t->mu) {
		kvt_dict_trainer_free(t);
		return -ENOMEM;
	}
	*out = t;
	return 0;
}

void kvt_dict_trainer_free(struct kvt_dict_trainer *t)
{
	if (!t)
		return;
	free(t->cov);
	free(t->sum);
	free(t->x);
	free(t->mu);
	free(t);
}

int kvt_dict_trainer_add(struct kvt_dict_trainer *t, const struct kvt_codec_geom *g,
			 const void *block, size_t n)
{
	const struct kvt_codec_geom *tg = &t->g;
	uint32_t T = tg->block_tokens, D = tg->head_dim;
	size_t slab = (size_t)T * D, ns = dict_slabs(tg->n_layers, tg->n_kv_heads);

	if (g->n_layers != tg->n_layers || g->n_kv_heads != tg->n_kv_heads || g->head_dim != D ||
	    g->block_tokens != T || g->dtype != tg->dtype || n != kvt_geom_block_bytes(g))
		return -EINVAL;
	for (size_t s = 0; s < ns; s++) {
		float *x = t->x;
		double *c = t->cov + s * D * D;
		kvt_load_f32(x, (const uint8_t *)block + s * slab * 2, slab, g->dtype);
		kv_sanitize(x, slab);
		if (!slab_is_v(g, s) && t->theta > 0)
			for (uint32_t r = 0; r < T; r++)
				kvt_rope(x + (size_t)r * D, D, (double)g->first_token + r, t->theta,
					 -1);
		/* centred per block, as uq codes them: the basis is for what is left */
		for (uint32_t d = 0; d < D; d++) {
			double a = 0;
			for (uint32_t r = 0; r < T; r++)
				a += x[(size_t)r * D + d];
			t->mu[d] = a / T;
			t->sum[s * D + d] += a;
		}
		for (uint32_t r = 0; r < T; r++) {
			float *row = x + (size_t)r * D;
			for (uint32_t d = 0; d < D; d++)
				row[d] = (float)(row[d] - t->mu[d]);
			for (uint32_t i = 0; i < D; i++) {
				double a = row[i];
				double *ci = c + (size_t)i * D;
				for (uint32_t j = i; j < D; j++)
					ci[j] += a * row[j];
			}
		}
	}
	t->n_blocks++;
	return 0;
}

/*
 * Eigenvectors of the symmetric a[n][n] (upper triangle given; destroyed) by cyclic Jacobi
 * rotations, into v[n][n] (column k: eigenvector k) and w[n], sorted by decreasing eigenvalue.
 */
void kvt_dict_eigen(double *a, uint32_t n, double *v, double *w)
{
	for (uint32_t i = 0; i < n; i++)
		for (uint32_t j = 0; j < i; j++)
			a[(size_t)i * n + j] = a[(size_t)j * n + i];
	for (uint32_t i = 0; i < n; i++)
		for (uint32_t j = 0; j < n; j++)
			v[(size_t)i * n + j] = i == j;
	double tr = 0;
	for (uint32_t i = 0; i < n; i++)
		tr += fabs(a[(size_t)i * n + i]);
	for (int sweep = 0; sweep < 60; sweep++) {
		double off = 0;
		for (uint32_t p = 0; p < n; p++)
			for (uint32_t q = p + 1; q < n; q++)
				off += a[(size_t)p * n + q] * a[(size_t)p * n + q];
		if (off <= 1e-30 * tr * tr || off == 0)
			break;
		for (uint32_t p = 0; p < n; p++)
			for (uint32_t q = p + 1; q < n; q++) {
				double apq = a[(size_t)p * n + q];
				if (fabs(apq) < 1e-300)
					continue;
				double app = a[(size_t)p * n + p], aqq = a[(size_t)q * n + q];
				double th = (aqq - app) / (2 * apq);
				double tt = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1));
				double c = 1 / sqrt(tt * tt + 1), s = tt * c;
				for (uint32_t k = 0; k < n; k++) { /* columns p, q */
					double akp = a[(size_t)k * n + p],
					       akq = a[(size_t)k * n + q];
					a[(size_t)k * n + p] = c * akp - s * akq;
					a[(size_t)k * n + q] = s * akp + c * akq;
				}
				for (uint32_t k = 0; k < n; k++) { /* rows p, q */
					double apk = a[(size_t)p * n + k],
					       aqk = a[(size_t)q * n + k];
					a[(size_t)p * n + k] = c * apk - s * aqk;
					a[(size_t)q * n + k] = s * apk + c * aqk;
				}
				for (uint32_t k = 0; k < n; k++) {
					double vkp = v[(size_t)k * n + p],
					       vkq = v[(size_t)k * n + q];
					v[(size_t)k * n + p] = c * vkp - s * vkq;
					v[(size_t)k * n + q] = s * vkp + c * vkq;
				}
			}
	}
	for (uint32_t i = 0; i < n; i++)
		w[i] = a[(size_t)i * n + i];
	/* selection sort, columns swapped along; then each vector's largest entry positive */
	for (uint32_t i = 0; i < n; i++) {
		uint32_t m = i;
		for (uint32_t j = i + 1; j < n; j++)
			if (w[j] > w[m])
				m = j;
		if (m != i) {
			double tw = w[i];
			w[i] = w[m];
			w[m] = tw;
			for (uint32_t k = 0; k < n; k++) {
				double tv = v[(size_t)k * n + i];
				v[(size_t)k * n + i] = v[(size_t)k * n + m];
				v[(size_t)k * n + m] = tv;
			}
		}
		uint32_t big = 0;
		for (uint32_t k = 1; k < n; k++)
			if (fabs(v[(size_t)k * n + i]) > fabs(v[(size_t)big * n + i]))
				big = k;
		if (v[(size_t)big * n + i] < 0)
			for (uint32_t k = 0; k < n; k++)
				v[(size_t)k * n + i] = -v[(size_t)k * n + i];
	}
}

int kvt_dict_trainer_finish(struct kvt_dict_trainer *t, void **out, size_t *out_len)
{
	const struct kvt_codec_geom *g = &t->g;
	uint32_t D = g->head_dim;
	size_t ns = dict_slabs(g->n_layers, g->n_kv_heads), mat = (size_t)D * D;
	size_t n = DICT_HDR + ns * slab_bytes(D) + 8;
	uint8_t *p;
	double *v, *w;
	float *f;

	*out = NULL;
	*out_len = 0;
	if (!t->n_blocks)
		return -ENODATA;
	p = calloc(1, n);
	v = malloc(mat * sizeof(double));
	w = malloc(D * sizeof(double));
	f = malloc(D * sizeof(float));
	if (!p || !v || !w || !f) {
		free(p);
		free(v);
		free(w);
		free(f);
		return -ENOMEM;
	}
	memcpy(p, DICT_MAGIC, 8);
	st32(p + 8, 1);
	st32(p + 12, g->n_layers);
	st32(p + 16, g->n_kv_heads);
	st32(p + 20, D);
	st32(p + 24, g->block_tokens);
	st32(p + 28, t->n_blocks);
	memcpy(p + 32, &t->theta, 8);
	for (size_t s = 0; s < ns; s++) {
		uint8_t *sp = p + DICT_HDR + s * slab_bytes(D);
		int8_t *q = (int8_t *)(sp + (size_t)D * 8);
		for (uint32_t j = 0; j < D; j++) {
			float m =
			    (float)(t->sum[s * D + j] / ((double)t->n_blocks * g->block_tokens));
			memcpy(sp + (size_t)(D + j) * 4, &m, 4);
		}
		kvt_dict_eigen(t->cov + s * mat, D, v, w);
		for (uint32_t j = 0; j < D; j++) {
			double mx = 1e-30;
			for (uint32_t i = 0; i < D; i++)
				mx = fmax(mx, fabs(v[(size_t)i * D + j]));
			f[j] = (float)(mx / 127);
			memcpy(sp + (size_t)j * 4, &f[j], 4);
		}
		for (size_t i = 0; i < mat; i++) {
			double x = rint(v[i] / f[i % D]);
			q[i] = (int8_t)(x > 127 ? 127 : x < -127 ? -127 : x);
		}
	}
	uint64_t id = XXH64(p, n - 8, 0);
	st32(p + n - 8, (uint32_t)id);
	st32(p + n - 4, (uint32_t)(id >> 32));
	free(v);
	free(w);
	free(f);
	*out = p;
	*out_len = n;
	return 0;
}
