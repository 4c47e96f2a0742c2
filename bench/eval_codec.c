/* SPDX-License-Identifier: MIT */
/*
 * eval_codec.c - "kvtier-eval codec": ratio, attention-output error and speed of codec
 * chains on a real KV dump (DESIGN §5).
 *
 * The dump is cut into consecutive blocks of --block tokens (default 64), each block laid out
 * page-first as the daemon stores it, encoded, decoded, and the decoded K/V compared with the
 * original through the attention outputs of the dump's queries:
 *   err = mean over (layer, query head, query position) of ||o - o^|| / ||o||,
 *   o = softmax(q K^T / sqrt(d)) V over the causal prefix, query head j on kv head j/(QH/H).
 * ratio = raw fp16 bytes / all encoded bytes (record headers included).  Speeds are per core
 * (thread CPU time).  zstd -1 and LZ4 run on the same blocks in the same run as references.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "codec_bq.h"
#include "kvd.h"
#include "kveval.h"

int eval_codec_main(int argc, char **argv);
int eval_dict_main(int argc, char **argv);

/*
 * uq's step profile over depth (octaves, keys then values), fitted on the per-layer error and
 * size of nx_gml_2k (a held-out dump of networkx source, not the shared one) for this
 * 4-layer model: equal marginal error per bit across layers and K/V.
 */
#define UQ_PROFILE "kl=-0.45:-0.05:0.4:-0.3,vl=-0.5:-1.1:0.1:0.35"

/* The chains evaluated when no --codec is given: every family, a few operating points. */
static const char *const default_chains[] = {
    "raw",
    "lz4",
    "zstd:1",
    "zstd:9",
    "shuffle+lz4",
    "shuffle+zstd:1",
    "shuffle+zstd:9",
    "shuffle+rans",
    "fpx",
    "fpx:level=9",
    "fp8",
    "kivi:k=8,v=8,g=32",
    "kivi:k=8,v=8,g=32+rans",
    "kivi:k=4,v=4,g=32",
    "kivi:k=4,v=4,g=32+rans",
    "kivi:k=4,v=4,g=32,rot=1",
    "kivi:k=4,v=4,g=32,sink=4,outl=0.01",
    "kivi:k=2,v=2,g=32",
    "lowrank:r=16,b=4",
    "lowrank:r=32,b=0",
    "lsh:thr=0.05",
    "lsh:thr=0.2",
    "uq:qw=0",
    "uq:k=0.08,v=0.028",
    "uq:k=0.12,v=0.042",
    "uq",
    "uq:k=0.26,v=0.08",
    "uq:k=0.34,v=0.11",
    "uq:k=0.44,v=0.148",
    "uq:k=0.6,v=0.2",
    "uq:k=0.85,v=0.3",
    "uq:k=1.2,v=0.45",
    /* dependent quantization, and with the depth profile of docs/CODECS.md */
    "uq:dq=0.4",
    "uq:k=0.22,v=0.074,dq=0.4," UQ_PROFILE,
    "uq:k=0.3,v=0.1,dq=0.4," UQ_PROFILE,
    "uq:k=0.4,v=0.135,dq=0.4," UQ_PROFILE,
    "uq:k=0.5,v=0.168,dq=0.4," UQ_PROFILE,
    "uq:k=0.55,v=0.185,dq=0.4," UQ_PROFILE,
    "uq:k=0.7,v=0.235,dq=0.4," UQ_PROFILE,
    "uq:k=1,v=0.34,dq=0.4," UQ_PROFILE,
    /* in a calibrated basis (a dictionary: --dict, else calibrated on the dump's first
     * quarter), with channel contexts */
    "uq:k=0.17,v=0.072,dq=0.4,cx=1,kb=1," UQ_PROFILE,
    "uq:k=0.3,v=0.127,dq=0.4,cx=1,kb=1," UQ_PROFILE,
    "uq:k=0.43,v=0.18,dq=0.4,cx=1,kb=1," UQ_PROFILE,
    "uq:k=0.6,v=0.25,dq=0.4,cx=1,kb=1," UQ_PROFILE,
    /* fixed rate, decodes on a GPU (gpu/gpu_bq.cu) and at memory speed on a core */
    "bq:k=0.02,v=0.01",
    "bq:k=0.04,v=0.02",
    "bq",
    "bq:k=0.15,v=0.08",
    "bq:k=0.3,v=0.15",
    NULL,
};

struct result {
	char codec[160];
	int lossless, ok, gpu;
	double ratio, err, kcos, vcos, enc_gbps, dec_gbps;
	size_t dict_bytes; /* the chain's dictionary (0: none) */
	double ratio_dict; /* raw / (records + the dictionary once) */
};

struct evalctx {
	const struct kvd *d;
	uint32_t bt;		     /* block tokens */
	float *kf, *vf;		     /* original K, V as float, dump layout */
	float *o;		     /* reference attention outputs [L][QH][P][D] */
	uint16_t *kdec, *vdec;	     /* decoded K, V (dump layout, fp16 bits) */
	int layer_err;		     /* print err per layer, with decoded K only and V only */
	const struct kvt_dict *dict; /* for chains that need one */
};

static double cpu_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void to_float(float *dst, const uint16_t *src, size_t n)
{
	for (size_t i = 0; i < n; i++)
		dst[i] = kvd_half_to_float(src[i]);
}

/* Attention outputs of every (layer, query head, query position) with keys k and values v
 * (the metric's code is codecs/kveval.c, shared with the daemon's calibration). */
static void attention(const struct kvd *d, const float *k, const float *v, float *o)
{
	uint32_t D = d->head_dim, T = d->n_tokens, P = d->n_q_pos,
		 grp = d->n_q_heads / d->n_kv_heads;
	float *q = malloc((size_t)P * D * sizeof(float));
	uint32_t *ctx = malloc(P * sizeof(uint32_t));

	if (!q || !ctx)
		goto out;
	for (uint32_t p = 0; p < P; p++)
		ctx[p] = T - P + p + 1; /* causal */
	for (uint32_t l = 0; l < d->n_layers; l++)
		for (uint32_t j = 0; j < d->n_q_heads; j++) {
			uint32_t h = j / grp;
			const float *kb = k + ((size_t)l * d->n_kv_heads + h) * T * D;
			const float *vb = v + ((size_t)l * d->n_kv_heads + h) * T * D;
			const uint16_t *qq = d->q + ((size_t)l * d->n_q_heads + j) * P * D;

			for (size_t i = 0; i < (size_t)P * D; i++)
				q[i] = kvd_half_to_float(qq[i]);
			kvt_eval_attention(q, P, ctx, kb, vb, T, D,
					   o + ((size_t)l * d->n_q_heads + j) * P * D);
		}
out:
	free(q);
	free(ctx);
}

/* err of the whole dump; per_layer (if not NULL) receives each layer's share of the mean. */
static double attn_err(const struct evalctx *e, const float *k, const float *v, double *per_layer)
{
	const struct kvd *d = e->d;
	size_t no = (size_t)d->n_layers * d->n_q_heads * d->n_q_pos;
	float *o = malloc(no * d->head_dim * sizeof(float));
	double tot = 0;

	if (!o)
		return NAN;
	attention(d, k, v, o);
	size_t per = no / d->n_layers;
	for (size_t i = 0; i < no; i++) {
		double a = 0, b = 0;
		for (uint32_t c = 0; c < d->head_dim; c++) {
			double x = e->o[i * d->head_dim + c], y = o[i * d->head_dim + c];
			a += (x - y) * (x - y);
			b += x * x;
		}
		double r = b > 0 ? sqrt(a / b) : 0;
		tot += r;
		if (per_layer)
			per_layer[i / per] += r / (double)per;
	}
	free(o);
	return tot / (double)no;
}

static double mean_cos(const float *a, const float *b, size_t nvec, uint32_t D)
{
	double tot = 0;
	for (size_t i = 0; i < nvec; i++) {
		double ab = 0, aa = 0, bb = 0;
		for (uint32_t c = 0; c < D; c++) {
			double x = a[i * D + c], y = b[i * D + c];
			ab += x * y;
			aa += x * x;
			bb += y * y;
		}
		tot += (aa > 0 && bb > 0) ? ab / sqrt(aa * bb) : (aa == bb ? 1 : 0);
	}
	return tot / (double)nvec;
}

/* Encodes and decodes the whole dump with spec; fills r.  Decoded K/V land in e->kdec/vdec. */
static int run_chain(struct evalctx *e, const char *spec, struct result *r, int want_err)
{
	const struct kvd *d = e->d;
	struct kvt_chain *c;
	struct kvt_codec_geom g = {d->n_layers, d->n_kv_heads,	d->head_dim,
				   e->bt,	KVT_DTYPE_FP16, 0};
	uint32_t nb = d->n_tokens / e->bt;
	size_t raw = kvt_geom_block_bytes(&g), bound, tot = 0;
	uint16_t *blk = NULL, *dec = NULL;
	uint8_t *enc = NULL;
	size_t *elen = NULL;
	int rc = kvt_chain_parse(spec, &c);

	memset(r, 0, sizeof(*r));
	snprintf(r->codec, sizeof(r->codec), "%s", spec);
	if (rc) {
		fprintf(stderr, "kvtier-eval codec: bad chain '%s': %s\n", spec, strerror(-rc));
		return rc;
	}
	snprintf(r->codec, sizeof(r->codec), "%s", kvt_chain_name(c));
	r->gpu = kvt_bq_chain_is(c); /* a GPU encoder and decoder: gpu/kvt_gpu_bq.h */
	r->lossless = !!(kvt_chain_flags(c) & KVT_CODEC_LOSSLESS);
	if (kvt_chain_flags(c) & KVT_CODEC_DICT) {
		if (!e->dict) {
			fprintf(stderr, "kvtier-eval codec: %s needs a dictionary\n", spec);
			rc = -ENOKEY;
			goto out;
		}
		kvt_chain_set_dict(c, e->dict);
		r->dict_bytes = kvt_dict_bytes(e->dict);
		g.first_token = 0;
		if (kvt_chain_usable(c, &g)) {
			fprintf(stderr,
				"kvtier-eval codec: %s: the dictionary does not fit this dump "
				"(another model, or another RoPE base than the chain's)\n",
				spec);
			rc = -EINVAL;
			goto out;
		}
	}
	bound = kvt_chain_max_encoded_size(c, &g);
	blk = malloc(raw);
	dec = malloc(raw);
	elen = calloc(nb, sizeof(*elen));
	enc = malloc(bound * nb);
	rc = -ENOMEM;
	if (!blk || !dec || !enc || !elen || !bound)
		goto out;
	/* Encode: repeat until at least 0.3 s of CPU time so fast codecs are timed fairly. */
	double t_enc = 0, t_dec = 0;
	int reps = 0;
	do {
		tot = 0;
		for (uint32_t b = 0; b < nb; b++) {
			kvd_block_io(d, d->k, d->v, b * e->bt, e->bt, blk, 1);
			g.first_token = b * e->bt;
			double t0 = cpu_now();
			ssize_t l = kvt_chain_encode(c, &g, blk, raw, enc + b * bound, bound);
			t_enc += cpu_now() - t0;
			if (l < 0) {
				fprintf(stderr, "kvtier-eval codec: %s: encode: %s\n", spec,
					strerror((int)-l));
				rc = (int)l;
				goto out;
			}
			elen[b] = (size_t)l;
			tot += (size_t)l;
		}
		reps++;
	} while (t_enc < 0.3 && reps < 50);
	r->enc_gbps = (double)raw * nb * reps / t_enc / 1e9;
	r->ratio = (double)raw * nb / (double)tot;
	r->ratio_dict = (double)raw * nb / (double)(tot + r->dict_bytes);
	reps = 0;
	do {
		for (uint32_t b = 0; b < nb; b++) {
			double t0 = cpu_now();
			ssize_t l = kvt_chain_decode(c, enc + b * bound, elen[b], dec, raw, NULL);
			t_dec += cpu_now() - t0;
			if (l != (ssize_t)raw) {
				fprintf(stderr, "kvtier-eval codec: %s: decode of block %u: %s\n",
					spec, b, strerror(l < 0 ? (int)-l : EBADMSG));
				rc = -EBADMSG;
				goto out;
			}
			if (!reps)
				kvd_block_io(d, e->kdec, e->vdec, b * e->bt, e->bt, dec, -1);
		}
		reps++;
	} while (t_dec < 0.3 && reps < 50);
	r->dec_gbps = (double)raw * nb * reps / t_dec / 1e9;
	if (r->lossless) {
		size_t n = (size_t)d->n_layers * d->n_kv_heads * nb * e->bt * d->head_dim;
		/* claimed lossless: verify it (tokens past the last whole block are not coded) */
		for (uint32_t l = 0; l < d->n_layers; l++)
			for (uint32_t h = 0; h < d->n_kv_heads; h++) {
				size_t off =
				    ((size_t)l * d->n_kv_heads + h) * d->n_tokens * d->head_dim;
				size_t len = (size_t)nb * e->bt * d->head_dim * 2;
				if (memcmp(d->k + off, e->kdec + off, len) ||
				    memcmp(d->v + off, e->vdec + off, len)) {
					fprintf(stderr, "kvtier-eval codec: %s is not lossless!\n",
						spec);
					rc = -EBADMSG;
					goto out;
				}
			}
		(void)n;
		r->err = 0;
		r->kcos = r->vcos = 1;
	} else if (want_err) {
		size_t n = kvd_kv_elems(d);
		float *kf = malloc(n * sizeof(float)), *vf = malloc(n * sizeof(float));
		if (!kf || !vf) {
			free(kf);
			free(vf);
			goto out;
		}
		to_float(kf, e->kdec, n);
		to_float(vf, e->vdec, n);
		r->err = attn_err(e, kf, vf, NULL);
		if (e->layer_err) {
			/* where the error comes from: each layer, keys alone, values alone */
			double pl[3][256] = {{0}};
			attn_err(e, kf, vf, pl[0]);
			attn_err(e, kf, e->vf, pl[1]);
			attn_err(e, e->kf, vf, pl[2]);
			for (uint32_t l = 0; l < d->n_layers && l < 256; l++)
				printf(
				    "#   layer %u: err %.5f (decoded K only %.5f, V only %.5f)\n",
				    l, pl[0][l], pl[1][l], pl[2][l]);
		}
		r->kcos = mean_cos(e->kf, kf, n / d->head_dim, d->head_dim);
		r->vcos = mean_cos(e->vf, vf, n / d->head_dim, d->head_dim);
		free(kf);
		free(vf);
	}
	r->ok = 1;
	rc = 0;
out:
	free(blk);
	free(dec);
	free(enc);
	free(elen);
	kvt_chain_free(c);
	return rc;
}

/*
 * Calibrates a dictionary on the whole blocks of tokens [t0, t1) of d (blocks of bt tokens,
 * keys in the RoPE frame theta) into t; returns the number of blocks added or -errno.
 */
static int dict_add_dump(struct kvt_dict_trainer *t, const struct kvd *d, uint32_t bt, uint32_t t0,
			 uint32_t t1)
{
	struct kvt_codec_geom g = {d->n_layers, d->n_kv_heads, d->head_dim, bt, KVT_DTYPE_FP16, 0};
	size_t raw = kvt_geom_block_bytes(&g);
	uint16_t *blk = malloc(raw);
	int nb = 0, rc = 0;

	if (!blk)
		return -ENOMEM;
	t1 = t1 > d->n_tokens ? d->n_tokens : t1;
	for (uint32_t b = t0 / bt; (b + 1) * bt <= t1 && !rc; b++, nb++) {
		kvd_block_io(d, d->k, d->v, b * bt, bt, blk, 1);
		g.first_token = b * bt;
		rc = kvt_dict_trainer_add(t, &g, blk, raw);
	}
	free(blk);
	return rc ? rc : nb;
}

static void dict_usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: kvtier-eval dict -o OUT.kvdict [options] DUMP.kvd...\n"
	    "  calibrates a dictionary (for \"uq:kb=1\" chains) on the K/V of the dumps,\n"
	    "  which must come from one model\n"
	    "  -o, --out FILE       where to write it (replaced whole)\n"
	    "  --block N            tokens per block (default 64)\n"
	    "  --tokens A:B         only tokens A..B-1 of each dump (default: all)\n"
	    "  --rope THETA         RoPE base of the keys, as the chain's rope= (default 10000;\n"
	    "                       0: keys without RoPE)\n");
}

int eval_dict_main(int argc, char **argv)
{
	const char *out = NULL, *paths[64];
	size_t np = 0;
	uint32_t bt = 64, t0 = 0, t1 = UINT32_MAX;
	double theta = 10000;
	struct kvt_dict_trainer *t = NULL;
	int rc = 1, nb = 0;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if ((!strcmp(a, "-o") || !strcmp(a, "--out")) && i + 1 < argc) {
			out = argv[++i];
		} else if (!strcmp(a, "--block") && i + 1 < argc) {
			bt = (uint32_t)strtoul(argv[++i], NULL, 10);
		} else if (!strcmp(a, "--tokens") && i + 1 < argc) {
			if (kvd_parse_range(argv[++i], &t0, &t1)) {
				fprintf(stderr, "kvtier-eval dict: bad --tokens '%s'\n", argv[i]);
				return 2;
			}
		} else if (!strcmp(a, "--rope") && i + 1 < argc) {
			theta = strtod(argv[++i], NULL);
		} else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			dict_usage(stdout);
			return 0;
		} else if (a[0] == '-' || np == 64) {
			dict_usage(stderr);
			return 2;
		} else {
			paths[np++] = a;
		}
	}
	if (!out || !np || !bt) {
		dict_usage(stderr);
		return 2;
	}
	for (size_t i = 0; i < np; i++) {
		struct kvd d;
		int err = kvd_load(paths[i], &d);
		if (err) {
			fprintf(stderr, "kvtier-eval dict: %s: %s\n", paths[i], strerror(-err));
			goto out;
		}
		struct kvt_codec_geom g = {d.n_layers, d.n_kv_heads,   d.head_dim,
					   bt,	       KVT_DTYPE_FP16, 0};
		if (d.dtype != 1 || (!t && (err = kvt_dict_trainer_new(&g, theta, &t)))) {
			fprintf(stderr, "kvtier-eval dict: %s: %s\n", paths[i],
				d.dtype != 1 ? "not fp16" : strerror(-err));
			kvd_free(&d);
			goto out;
		}
		err = dict_add_dump(t, &d, bt, t0, t1);
		kvd_free(&d);
		if (err < 0) {
			fprintf(stderr, "kvtier-eval dict: %s: %s (another model?)\n", paths[i],
				strerror(-err));
			goto out;
		}
		nb += err;
	}
	void *buf;
	size_t len;
	int err = kvt_dict_trainer_finish(t, &buf, &len);
	if (!err) {
		const void *parts[] = {buf};
		err = kvd_write_file(out, parts, &len, 1);
		free(buf);
	}
	if (err) {
		fprintf(stderr, "kvtier-eval dict: %s: %s\n", out,
			err == -ENODATA ? "no whole block in the dumps" : strerror(-err));
		goto out;
	}
	printf("%s: %d blocks of %u tokens, %zu bytes\n", out, nb, bt, len);
	rc = 0;
out:
	kvt_dict_trainer_free(t);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: kvtier-eval codec [options] DUMP.kvd\n"
	    "  --codec SPEC         evaluate this chain (repeatable); default: the built-in list\n"
	    "  --block N            tokens per block (default 64)\n"
	    "  --pareto             print only the Pareto frontier (ratio up, err down); chains\n"
	    "                       a GPU decodes (\"gpu\") have their own frontier as well\n"
	    "  --layer-err          also print each layer's err\n"
	    "  --layer-err-kv       ... and each layer's err with decoded K alone, V alone\n"
	    "  --json               JSON array of objects instead of a table\n"
	    "  --quiet              no progress lines on stderr (with --json or --pareto)\n"
	    "  --write-decoded OUT  with one --codec: write the decoded K/V as a .kvd\n"
	    "  --list               print the built-in chain list and exit\n"
	    "  --dict FILE          dictionary for chains that need one (kvtier-eval dict)\n"
	    "  --calibrate A:B      ... or calibrate one on tokens A..B-1 of this dump\n"
	    "                       (default for such chains: its first quarter)\n"
	    "Chain grammar: codecs/CODECS.md.  err: DESIGN §5.\n");
}

/* Seconds since start (CLOCK_MONOTONIC), for the progress lines. */
static double since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

static void print_header(void)
{
	printf("%-44s %8s %9s %8s %8s %9s %9s %s\n", "codec", "ratio", "err", "K cos", "V cos",
	       "enc GB/s", "dec GB/s", "lossless (gpu: also decodes on a GPU)");
}

static void print_table(const struct result *r, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		printf("%-44s %8.3f %9.5f %8.5f %8.5f %9.3f %9.3f %s", r[i].codec, r[i].ratio,
		       r[i].err, r[i].kcos, r[i].vcos, r[i].enc_gbps, r[i].dec_gbps,
		       r[i].lossless ? "yes"
		       : r[i].gpu    ? "no, gpu"
				     : "no");
		if (r[i].dict_bytes)
			printf("  (dictionary %zu B: ratio %.3f with it counted once here)",
			       r[i].dict_bytes, r[i].ratio_dict);
		printf("\n");
	}
}

/* memcpy_gbps: memcpy of the same blocks in the same run, per core, the speeds' yardstick */
static void print_json(const struct result *r, size_t n, double memcpy_gbps)
{
	printf("[\n");
	for (size_t i = 0; i < n; i++)
		printf("  {\"codec\": \"%s\", \"ratio\": %.4f, \"err\": %.6f, \"k_cos\": %.6f, "
		       "\"v_cos\": %.6f, \"encode_gbps\": %.4f, \"decode_gbps\": %.4f, "
		       "\"memcpy_gbps\": %.4f, \"lossless\": %s, \"gpu\": %s, \"dict_bytes\": %zu, "
		       "\"ratio_incl_dict\": %.4f}%s\n",
		       r[i].codec, r[i].ratio, r[i].err, r[i].kcos, r[i].vcos, r[i].enc_gbps,
		       r[i].dec_gbps, memcpy_gbps, r[i].lossless ? "true" : "false",
		       r[i].gpu ? "true" : "false", r[i].dict_bytes, r[i].ratio_dict,
		       i + 1 < n ? "," : "");
	printf("]\n");
}

/* memcpy of every block of the dump, per core (thread CPU time), as the chains are timed. */
static double memcpy_gbps(const struct evalctx *e)
{
	const struct kvd *d = e->d;
	struct kvt_codec_geom g = {d->n_layers, d->n_kv_heads,	d->head_dim,
				   e->bt,	KVT_DTYPE_FP16, 0};
	uint32_t nb = d->n_tokens / e->bt;
	size_t raw = kvt_geom_block_bytes(&g);
	uint8_t *blk = malloc(raw * nb), *dst = malloc(raw);
	double t = 0;
	int reps = 0;

	if (!blk || !dst) {
		free(blk);
		free(dst);
		return 0;
	}
	for (uint32_t b = 0; b < nb; b++)
		kvd_block_io(d, d->k, d->v, b * e->bt, e->bt, (uint16_t *)(blk + b * raw), 1);
	do {
		for (uint32_t b = 0; b < nb; b++) {
			double t0 = cpu_now();
			memcpy(dst, blk + b * raw, raw);
			__asm__ volatile("" : : "r"(dst) : "memory");
			t += cpu_now() - t0;
		}
		reps++;
	} while (t < 0.3 && reps < 500);
	free(blk);
	free(dst);
	return (double)raw * nb * reps / t / 1e9;
}

static int cmp_ratio(const void *a, const void *b)
{
	const struct result *x = a, *y = b;
	return x->ratio < y->ratio ? -1 : x->ratio > y->ratio;
}

/*
 * Keeps the results no other result beats on both ratio (higher) and err (lower); a chain a
 * GPU decodes ("gpu") only other such chains can beat, so the GPU frontier stays readable.
 */
static size_t pareto(struct result *r, size_t n)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		int dom = 0;
		for (size_t j = 0; j < n && !dom; j++)
			dom = j != i && (r[j].gpu || !r[i].gpu) && r[j].ratio >= r[i].ratio &&
			      r[j].err <= r[i].err &&
			      (r[j].ratio > r[i].ratio || r[j].err < r[i].err);
		if (!dom)
			r[k++] = r[i];
	}
	qsort(r, k, sizeof(*r), cmp_ratio);
	return k;
}

int eval_codec_main(int argc, char **argv)
{
	const char *specs[64], *path = NULL, *wdec = NULL, *dpath = NULL;
	uint32_t ct0 = 0, ct1 = 0;
	struct kvt_dict *dict = NULL;
	size_t nspec = 0;
	int want_pareto = 0, json = 0, quiet = 0, rc = 1;
	uint32_t bt = 64;
	struct timespec t0;
	struct kvd d;
	struct evalctx e = {0};

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--codec") && i + 1 < argc) {
			if (nspec == 64) {
				fprintf(stderr, "kvtier-eval codec: too many --codec\n");
				return 2;
			}
			specs[nspec++] = argv[++i];
		} else if (!strcmp(a, "--block") && i + 1 < argc) {
			bt = (uint32_t)strtoul(argv[++i], NULL, 10);
		} else if (!strcmp(a, "--pareto")) {
			want_pareto = 1;
		} else if (!strcmp(a, "--layer-err")) {
			e.layer_err = 1;
		} else if (!strcmp(a, "--layer-err-kv")) {
			e.layer_err = 2;
		} else if (!strcmp(a, "--quiet")) {
			quiet = 1;
		} else if (!strcmp(a, "--json")) {
			json = 1;
		} else if (!strcmp(a, "--write-decoded") && i + 1 < argc) {
			wdec = argv[++i];
		} else if (!strcmp(a, "--dict") && i + 1 < argc) {
			dpath = argv[++i];
		} else if (!strcmp(a, "--calibrate") && i + 1 < argc) {
			if (kvd_parse_range(argv[++i], &ct0, &ct1)) {
				fprintf(stderr, "kvtier-eval codec: bad --calibrate '%s'\n",
					argv[i]);
				return 2;
			}
		} else if (!strcmp(a, "--list")) {
			for (size_t k = 0; default_chains[k]; k++)
				printf("%s\n", default_chains[k]);
			return 0;
		} else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			return 0;
		} else if (a[0] == '-' || path) {
			usage(stderr);
			return 2;
		} else {
			path = a;
		}
	}
	if (!path || !bt) {
		usage(stderr);
		return 2;
	}
	if (wdec && nspec != 1) {
		fprintf(stderr, "kvtier-eval codec: --write-decoded needs exactly one --codec\n");
		return 2;
	}
	if (!nspec)
		for (; default_chains[nspec]; nspec++)
			specs[nspec] = default_chains[nspec];
	int err = kvd_load(path, &d);
	if (err) {
		fprintf(stderr, "kvtier-eval codec: %s: %s\n", path, strerror(-err));
		return 1;
	}
	if (d.n_tokens < bt || d.dtype != 1 || !d.n_q_pos || d.head_dim > 1024) {
		fprintf(stderr, "kvtier-eval codec: %s: need fp16, >= %u tokens and queries\n",
			path, bt);
		kvd_free(&d);
		return 1;
	}
	if (d.n_tokens % bt)
		fprintf(stderr,
			"kvtier-eval codec: note: the last %u tokens (not a whole block) "
			"stay uncoded\n",
			d.n_tokens % bt);
	size_t n = kvd_kv_elems(&d), no = (size_t)d.n_layers * d.n_q_heads * d.n_q_pos * d.head_dim;
	struct result *res = calloc(nspec + 2, sizeof(*res));
	e.d = &d;
	e.bt = bt;
	e.kf = malloc(n * sizeof(float));
	e.vf = malloc(n * sizeof(float));
	e.o = malloc(no * sizeof(float));
	e.kdec = malloc(n * 2);
	e.vdec = malloc(n * 2);
	if (!res || !e.kf || !e.vf || !e.o || !e.kdec || !e.vdec) {
		fprintf(stderr, "kvtier-eval codec: out of memory\n");
		goto out;
	}
	/* tokens past the last whole block are not coded: decoded = original there */
	memcpy(e.kdec, d.k, n * 2);
	memcpy(e.vdec, d.v, n * 2);
	to_float(e.kf, d.k, n);
	to_float(e.vf, d.v, n);
	attention(&d, e.kf, e.vf, e.o);

	/* a dictionary, if a chain needs one: from --dict, or calibrated on this dump */
	int need = 0;
	for (size_t i = 0; i < nspec; i++) {
		struct kvt_chain *c;
		if (!kvt_chain_parse(specs[i], &c)) {
			need |= !!(kvt_chain_flags(c) & KVT_CODEC_DICT);
			kvt_chain_free(c);
		}
	}
	char dnote[256] = "";
	if (need && dpath) {
		err = kvt_dict_load(dpath, &dict);
		if (err) {
			fprintf(stderr, "kvtier-eval codec: %s: %s\n", dpath,
				err == -EBADMSG ? "not a kvtier dictionary, or corrupt"
						: strerror(-err));
			goto out;
		}
		snprintf(dnote, sizeof(dnote), "from %s", dpath);
	} else if (need) {
		struct kvt_codec_geom g = {d.n_layers, d.n_kv_heads,   d.head_dim,
					   bt,	       KVT_DTYPE_FP16, 0};
		struct kvt_dict_trainer *t;
		void *buf = NULL;
		size_t len = 0;
		if (!ct1) {
			ct1 = d.n_tokens / 4 / bt * bt;
			ct1 = ct1 < bt ? bt : ct1;
		}
		err = kvt_dict_trainer_new(&g, 10000, &t);
		if (!err) {
			int nb = dict_add_dump(t, &d, bt, ct0, ct1);
			err = nb < 0 ? nb : kvt_dict_trainer_finish(t, &buf, &len);
			kvt_dict_trainer_free(t);
		}
		if (!err) {
			err = kvt_dict_parse(buf, len, &dict);
			free(buf);
		}
		if (err) {
			fprintf(stderr, "kvtier-eval codec: calibration on tokens %u:%u: %s\n", ct0,
				ct1, err == -ENODATA ? "no whole block" : strerror(-err));
			goto out;
		}
		snprintf(dnote, sizeof(dnote), "calibrated on tokens %u..%u of this dump", ct0,
			 ct1 - 1);
	}
	e.dict = dict;

	/* --json and --pareto print only at the end: say on stderr what is being done. */
	int progress = (json || want_pareto) && !quiet;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (progress)
		fprintf(stderr, "kvtier-eval codec: %s: %zu chains; references zstd:1, lz4 first\n",
			path, nspec);
	struct result ref[2];
	if (run_chain(&e, "zstd:1", &ref[0], 0) || run_chain(&e, "lz4", &ref[1], 0))
		goto out;
	double mcpy = memcpy_gbps(&e);
	if (!json && dict)
		printf("# dictionary %016llx: %s, %zu bytes\n",
		       (unsigned long long)kvt_dict_id(dict), dnote, kvt_dict_bytes(dict));
	if (!json)
		printf("# %s: %u layers, %u kv heads, %u tokens, head_dim %u, %u query positions; "
		       "block %u tokens\n# same data, same run: zstd -1 ratio %.3f enc %.3f dec "
		       "%.3f GB/s; lz4 ratio %.3f enc %.3f dec %.3f GB/s; memcpy %.3f GB/s (per "
		       "core)\n",
		       d.source, d.n_layers, d.n_kv_heads, d.n_tokens, d.head_dim, d.n_q_pos, bt,
		       ref[0].ratio, ref[0].enc_gbps, ref[0].dec_gbps, ref[1].ratio,
		       ref[1].enc_gbps, ref[1].dec_gbps, mcpy);
	size_t nr = 0;
	if (!json)
		print_header();
	for (size_t i = 0; i < nspec; i++) {
		if (progress)
			fprintf(stderr, "kvtier-eval codec: [%zu/%zu] %s ...", i + 1, nspec,
				specs[i]);
		if (run_chain(&e, specs[i], &res[nr], 1)) {
			if (progress)
				fprintf(stderr, " failed\n");
			rc = 1;
			goto out;
		}
		if (progress)
			fprintf(stderr, " ratio %.3f err %.5f (%.1f s elapsed)\n", res[nr].ratio,
				res[nr].err, since(&t0));
		if (!json && !want_pareto) {
			print_table(&res[nr], 1);
			fflush(stdout);
		}
		nr++;
	}
	if (want_pareto)
		nr = pareto(res, nr);
	if (json)
		print_json(res, nr, mcpy);
	else if (want_pareto)
		print_table(res, nr);
	if (wdec) {
		struct kvd o = d;
		o.k = e.kdec;
		o.v = e.vdec;
		err = kvd_save(wdec, &o);
		if (err) {
			fprintf(stderr, "kvtier-eval codec: %s: %s\n", wdec, strerror(-err));
			goto out;
		}
	}
	rc = 0;
out:
	free(res);
	free(e.kf);
	free(e.vf);
	free(e.o);
	free(e.kdec);
	free(e.vdec);
	kvt_dict_free(dict);
	kvd_free(&d);
	return rc;
}
