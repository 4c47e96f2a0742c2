/* SPDX-License-Identifier: MIT */
/*
 * Round trips of every codec on random and real KV data: lossless chains bit-exact, lossy
 * ones within the bound each codec documents (codecs/CODECS.md).  Real data: the 640-token
 * excerpt of the shared dump in $KVT_TEST_DATA.  Randomized: --seed N (default 1).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec.h"
#include "kvd.h"
#include "realblk.h"

static uint64_t seed = 1;

static uint64_t rnd(void)
{
	seed ^= seed << 13;
	seed ^= seed >> 7;
	seed ^= seed << 17;
	return seed;
}

static double gauss(void)
{
	double u = ((rnd() >> 11) + 0.5) / 9007199254740992.0,
	       v = (rnd() >> 11) / 9007199254740992.0;
	return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

/* K-like (per-channel offsets and scales) and V-like (Gaussian, a few repeated rows). */
static struct blk make_random(uint32_t L, uint32_t H, uint32_t D, uint32_t T, uint32_t first)
{
	struct blk b = {{L, H, D, T, KVT_DTYPE_FP16, first}, NULL, 0};
	b.n = kvt_geom_block_bytes(&b.g);
	b.raw = malloc(b.n);
	assert_non_null(b.raw);
	size_t slab = (size_t)T * D;
	for (size_t s = 0; s < (size_t)L * 2 * H; s++) {
		int isv = (s / H) & 1;
		uint16_t *p = b.raw + s * slab;
		for (uint32_t t = 0; t < T; t++)
			for (uint32_t d = 0; d < D; d++) {
				double v =
				    isv ? gauss() : (int)(d % 7) - 3 + gauss() * (0.2 + (d % 5));
				if (isv && t > 2 && rnd() % 3 == 0) {
					p[(size_t)t * D + d] = p[(size_t)(t - 2) * D + d];
					continue;
				}
				p[(size_t)t * D + d] = kvd_float_to_half((float)v);
			}
	}
	return b;
}

/* Encodes and decodes b with spec; returns the decoded block (caller frees). */
static uint16_t *roundtrip(const char *spec, const struct blk *b, double *ratio)
{
	struct kvt_chain *c;
	assert_int_equal(kvt_chain_parse(spec, &c), 0);
	size_t cap = kvt_chain_max_encoded_size(c, &b->g);
	assert_true(cap > 0);
	uint8_t *enc = malloc(cap);
	uint16_t *dec = malloc(b->n);
	ssize_t l = kvt_chain_encode(c, &b->g, b->raw, b->n, enc, cap);
	if (l < 0)
		fail_msg("%s: encode: %zd", spec, l);
	struct kvt_codec_geom g2;
	ssize_t r = kvt_chain_decode(c, enc, (size_t)l, dec, b->n, &g2);
	if (r != (ssize_t)b->n)
		fail_msg("%s: decode: %zd", spec, r);
	assert_memory_equal(&g2, &b->g, sizeof(g2));
	/* decoding is deterministic */
	uint16_t *dec2 = malloc(b->n);
	assert_int_equal(kvt_chain_decode(c, enc, (size_t)l, dec2, b->n, NULL), (ssize_t)b->n);
	assert_memory_equal(dec, dec2, b->n);
	free(dec2);
	if (ratio)
		*ratio = (double)b->n / (double)l;
	free(enc);
	kvt_chain_free(c);
	return dec;
}

static const char *const lossless[] = {"raw",
				       "lz4",
				       "lz4hc:9",
				       "zstd:1",
				       "zstd:-3",
				       "shuffle+lz4",
				       "shuffle+zstd:3",
				       "shuffle+rans",
				       "rans",
				       "fpx",
				       "fpx:level=5,split=0",
				       "fpx+lz4",
				       NULL};

static void check_lossless(const struct blk *b)
{
	for (size_t i = 0; lossless[i]; i++) {
		double ratio;
		uint16_t *d = roundtrip(lossless[i], b, &ratio);
		if (memcmp(d, b->raw, b->n))
			fail_msg("%s is not bit-exact", lossless[i]);
		free(d);
	}
}

static void test_lossless_random(void **state)
{
	struct blk b = make_random(2, 2, 64, 32, 0);
	check_lossless(&b);
	/* any 16-bit pattern, NaNs and infinities included */
	for (size_t i = 0; i < b.n / 2; i++)
		b.raw[i] = (uint16_t)rnd();
	check_lossless(&b);
	free(b.raw);
}

static void test_lossless_real(void **state)
{
	struct blk b = real_block(3);
	if (!b.raw)
		skip();
	check_lossless(&b);
	double r;
	free(roundtrip("fpx", &b, &r));
	assert_true(r > 1.2); /* real KV: the dedup + plane split must pay */
	free(b.raw);
}

static float h2f(uint16_t h)
{
	return kvd_half_to_float(h);
}

/* fp16 rounding of the output: half an ulp of the value. */
static double ulp_half(double v)
{
	return fabs(v) * (1.0 / 2048) + 6e-8;
}

/* kivi, rot=0: each element within half a step of its group (steps from group min/max). */
static void check_kivi(const struct blk *b, unsigned kb, unsigned vb, uint32_t gs)
{
	char spec[64];
	snprintf(spec, sizeof(spec), "kivi:k=%u,v=%u,g=%u", kb, vb, gs);
	uint16_t *d = roundtrip(spec, b, NULL);
	uint32_t T = b->g.block_tokens, D = b->g.head_dim, H = b->g.n_kv_heads;
	size_t slab = (size_t)T * D;
	for (size_t s = 0; s < (size_t)b->g.n_layers * 2 * H; s++) {
		int isv = (s / H) & 1;
		unsigned bits = isv ? vb : kb;
		const uint16_t *x = b->raw + s * slab, *y = d + s * slab;
		/* group of element (t, d): keys (d, t / gs), values (t, d / gs) */
		for (uint32_t t = 0; t < T; t++)
			for (uint32_t c = 0; c < D; c++) {
				double mn = INFINITY, mx = -INFINITY;
				for (uint32_t u = 0; u < (isv ? D : T); u++) {
					uint32_t tt = isv ? t : u, cc = isv ? u : c;
					if ((isv ? cc / gs != c / gs : tt / gs != t / gs))
						continue;
					double v = h2f(x[(size_t)tt * D + cc]);
					mn = v < mn ? v : mn;
					mx = v > mx ? v : mx;
				}
				double step = (mx - mn) / ((1u << bits) - 1);
				double e =
				    fabs(h2f(x[(size_t)t * D + c]) - h2f(y[(size_t)t * D + c]));
				double bound =
				    step * 0.5 * 1.002 + ulp_half(mx) + ulp_half(mn) + 1e-6;
				if (e > bound)
					fail_msg("%s: slab %zu (%u,%u): err %g > %g", spec, s, t, c,
						 e, bound);
			}
	}
	free(d);
}

static void test_kivi_bound(void **state)
{
	struct blk b = make_random(1, 2, 64, 64, 0);
	check_kivi(&b, 4, 4, 32);
	check_kivi(&b, 2, 8, 16);
	check_kivi(&b, 8, 3, 64);
	free(b.raw);
	b = real_block(1);
	if (b.raw) {
		check_kivi(&b, 4, 4, 32);
		free(b.raw);
	}
}

/* Sinks and outliers exact; rotation keeps a bound in L2 per row. */
static void test_kivi_sparse(void **state)
{
	struct blk b = make_random(1, 1, 64, 32, 0);
	/* plant outliers */
	b.raw[5 * 64 + 3] = kvd_float_to_half(300.0f);
	b.raw[32 * 64 + 20 * 64 + 7] = kvd_float_to_half(-250.0f);
	uint16_t *d = roundtrip("kivi:k=4,v=4,g=32,sink=4,outl=0.01", &b, NULL);
	assert_memory_equal(d, b.raw, 4 * 64 * 2);		       /* K sinks */
	assert_memory_equal(d + 32 * 64, b.raw + 32 * 64, 4 * 64 * 2); /* V sinks */
	assert_int_equal(d[5 * 64 + 3], b.raw[5 * 64 + 3]);
	assert_int_equal(d[32 * 64 + 20 * 64 + 7], b.raw[32 * 64 + 20 * 64 + 7]);
	free(d);
	/* a later block has no sinks: first_token past them */
	b.g.first_token = 64;
	d = roundtrip("kivi:k=4,v=4,g=32,sink=4", &b, NULL);
	free(d);
	/* rotation: per row, L2 error <= sqrt(D) * max half-step (orthonormal transform) */
	d = roundtrip("kivi:k=8,v=8,g=32,rot=1", &b, NULL);
	for (size_t r = 0; r < 64; r++) {
		double e = 0, nn = 0;
		for (int c = 0; c < 64; c++) {
			double x = h2f(b.raw[r * 64 + c]), y = h2f(d[r * 64 + c]);
			e += (x - y) * (x - y);
			nn += x * x;
		}
		assert_true(sqrt(e) <= 0.02 * sqrt(nn) + 0.05);
	}
	free(d);
	free(b.raw);
}

/* uq with rope=0: |x - x^| <= step/2 + fp16 rounding, step = rel * slab RMS. */
static void check_uq(const struct blk *b, const char *extra, double kr, double vr)
{
	char spec[128];
	snprintf(spec, sizeof(spec), "uq:k=%g,v=%g,rope=0%s", kr, vr, extra);
	uint16_t *d = roundtrip(spec, b, NULL);
	uint32_t T = b->g.block_tokens, D = b->g.head_dim, H = b->g.n_kv_heads;
	size_t slab = (size_t)T * D;
	for (size_t s = 0; s < (size_t)b->g.n_layers * 2 * H; s++) {
		int isv = (s / H) & 1;
		const uint16_t *x = b->raw + s * slab, *y = d + s * slab;
		double ss = 0;
		for (uint32_t c = 0; c < D; c++) {
			double mu = 0;
			for (uint32_t t = 0; t < T; t++)
				mu += h2f(x[(size_t)t * D + c]);
			mu = isv ? 0 : mu / T;
			for (uint32_t t = 0; t < T; t++) {
				double v = h2f(x[(size_t)t * D + c]) - mu;
				ss += v * v;
			}
		}
		double step = (isv ? vr : kr) * sqrt(ss / slab);
		const char *qw = strstr(extra, "qw=");
		if (!isv && !(qw && !strcmp(qw, "qw=0")))
			step *= 11.32; /* per-pair steps reach 2^3.5 slab steps */
		/* dq: the trellis may pick the second nearest level of its quantizer */
		double bound = strstr(extra, "dq=") ? 1.0 : 0.5;
		for (size_t i = 0; i < slab; i++) {
			double e = fabs(h2f(x[i]) - h2f(y[i]));
			if (e > step * bound * 1.001 + ulp_half(h2f(x[i])) * 2 + 1e-6)
				fail_msg("%s: slab %zu elem %zu: err %g step %g", spec, s, i, e,
					 step);
		}
	}
	free(d);
}

static void test_uq_bound(void **state)
{
	struct blk b = make_random(2, 1, 64, 64, 0);
	check_uq(&b, "", 0.1, 0.05);
	check_uq(&b, ",qw=0", 0.1, 0.05);
	check_uq(&b, ",lsh=0,qw=0", 0.3, 0.3);
	check_uq(&b, ",lsh=2", 1.0, 0.5);
	free(b.raw);
	b = real_block(2);
	if (!b.raw)
		skip();
	check_uq(&b, "", 0.18, 0.058);
	check_uq(&b, ",qw=0", 0.14, 0.06);
	check_uq(&b, ",lsh=3", 0.36, 0.15);
	check_uq(&b, ",qw=0.5", 0.44, 0.145);
	free(b.raw);
}

/* dq (trellis quantization): within one step; a depth profile scales each layer's step. */
static void test_uq_dq_profile(void **state)
{
	struct blk b = make_random(2, 1, 64, 64, 0);
	check_uq(&b, ",dq=0.4", 0.1, 0.05);
	check_uq(&b, ",dq=0.4,qw=0", 0.2, 0.1);
	check_uq(&b, ",dq=4,lsh=2,qw=0", 1.0, 0.5);
	check_uq(&b, ",dq=0.01,lsh=0", 0.3, 0.3);
	free(b.raw);
	b = make_random(1, 2, 128, 32, 7);
	check_uq(&b, ",dq=0.5,sink=9", 0.5, 0.2);
	free(b.raw);
	b = real_block(3);
	if (!b.raw)
		skip();
	check_uq(&b, ",dq=0.4", 0.44, 0.148);
	check_uq(&b, ",dq=0.4,qw=0", 0.3, 0.1);
	/*
	 * At the same steps, dq codes the same rate at a lower error than uniform rounding:
	 * the point of it.  Measured on real keys and values (mean squared error, whole block).
	 */
	double r0, r1, e0 = 0, e1 = 0;
	uint16_t *d0 = roundtrip("uq:k=0.44,v=0.148", &b, &r0);
	uint16_t *d1 = roundtrip("uq:k=0.44,v=0.148,dq=0.4", &b, &r1);
	for (size_t i = 0; i < b.n / 2; i++) {
		double x = h2f(b.raw[i]);
		e0 += (x - h2f(d0[i])) * (x - h2f(d0[i]));
		e1 += (x - h2f(d1[i])) * (x - h2f(d1[i]));
	}
	assert_true(r1 > r0 * 0.97);
	assert_true(e1 < e0 * 0.85);
	free(d0);
	free(d1);
	/*
	 * kl/vl: 2^profile times the step.  kl=1 doubles every key step, exactly as k twice as
	 * large does (same payload; the record headers differ by the chain id).
	 */
	struct kvt_chain *c0, *c1;
	assert_int_equal(kvt_chain_parse("uq:k=0.36,v=0.029", &c0), 0);
	assert_int_equal(kvt_chain_parse("uq:kl=1,vl=-1", &c1), 0);
	size_t cap = kvt_chain_max_encoded_size(c0, &b.g);
	uint8_t *p0 = malloc(cap), *p1 = malloc(cap);
	ssize_t l0 = kvt_chain_encode(c0, &b.g, b.raw, b.n, p0, cap);
	ssize_t l1 = kvt_chain_encode(c1, &b.g, b.raw, b.n, p1, cap);
	assert_true(l0 > 32);
	assert_int_equal(l0, l1);
	assert_memory_equal(p0 + 32, p1 + 32, (size_t)l0 - 32);
	/* a profile that coarsens only the deepest layer shrinks the record */
	kvt_chain_free(c1);
	assert_int_equal(kvt_chain_parse("uq:k=0.36,v=0.029,kl=0:0:0:1", &c1), 0);
	l1 = kvt_chain_encode(c1, &b.g, b.raw, b.n, p1, cap);
	assert_true(l1 > 32 && l1 < l0);
	free(p0);
	free(p1);
	kvt_chain_free(c0);
	kvt_chain_free(c1);
	free(b.raw);
}

/* uq with RoPE: the bound holds per rotated pair: |e_i|^2 + |e_{i+D/2}|^2 <= step^2 / 2. */
static void test_uq_rope_sink(void **state)
{
	struct blk b = real_block(0);
	if (!b.raw)
		skip();
	double r;
	uint16_t *d = roundtrip("uq:sink=4", &b, &r);
	uint32_t D = b.g.head_dim;
	size_t slab = (size_t)64 * D;
	for (size_t s = 0; s < (size_t)b.g.n_layers * 2 * b.g.n_kv_heads; s++)
		assert_memory_equal(d + s * slab, b.raw + s * slab, 4 * D * 2);
	assert_true(r > 3.0);
	/* K cosine on real keys stays high */
	double cs = 0;
	size_t nv = 0;
	for (size_t s = 0; s < (size_t)b.g.n_layers * 2 * b.g.n_kv_heads; s++)
		for (uint32_t t = 0; t < 64; t++) {
			double ab = 0, aa = 0, bb = 0;
			for (uint32_t c = 0; c < D; c++) {
				double x = h2f(b.raw[s * slab + t * D + c]),
				       y = h2f(d[s * slab + t * D + c]);
				ab += x * y;
				aa += x * x;
				bb += y * y;
			}
			cs += ab / sqrt(aa * bb + 1e-30);
			nv++;
		}
	assert_true(cs / nv > 0.999);
	free(d);
	free(b.raw);
}

static void test_fp8_bound(void **state)
{
	struct blk b = make_random(1, 2, 32, 16, 0);
	uint16_t *d = roundtrip("fp8", &b, NULL);
	uint32_t D = b.g.head_dim;
	for (size_t r = 0; r < b.n / 2 / D; r++) {
		double amax = 0;
		for (uint32_t c = 0; c < D; c++)
			amax = fmax(amax, fabs(h2f(b.raw[r * D + c])));
		double sc = amax / 448 * 1.001;
		for (uint32_t c = 0; c < D; c++) {
			double x = h2f(b.raw[r * D + c]), y = h2f(d[r * D + c]);
			assert_true(fabs(x - y) <= fabs(x) / 16 + sc * 0x1p-9 + ulp_half(x) + 1e-7);
		}
	}
	free(d);
	free(b.raw);
}

static void test_lsh_lowrank(void **state)
{
	struct blk b = make_random(1, 1, 64, 32, 0);
	uint16_t *d = roundtrip("lsh:thr=0.3,ham=16", &b, NULL);
	uint32_t D = b.g.head_dim;
	for (size_t r = 0; r < b.n / 2 / D; r++) {
		double e = 0, nn = 0;
		for (uint32_t c = 0; c < D; c++) {
			double x = h2f(b.raw[r * D + c]), y = h2f(d[r * D + c]);
			e += (x - y) * (x - y);
			nn += x * x;
		}
		assert_true(sqrt(e) <= 0.3 * sqrt(nn) * 1.0001 + 1e-6);
	}
	free(d);
	/* lowrank b=0: values exact, keys exact if the rank covers the block */
	d = roundtrip("lowrank:r=32,b=0", &b, NULL);
	assert_memory_equal(d + 32 * 64, b.raw + 32 * 64, 32 * 64 * 2);
	for (size_t i = 0; i < 32 * 64; i++)
		assert_true(fabs(h2f(d[i]) - h2f(b.raw[i])) < 0.05 * (1 + fabs(h2f(b.raw[i]))));
	free(d);
	d = roundtrip("lowrank:r=4,b=6", &b, NULL);
	free(d);
	free(b.raw);
}

/* bf16 blocks go through the KV codecs too. */
static void test_bf16(void **state)
{
	struct blk b = make_random(1, 1, 32, 16, 0);
	b.g.dtype = KVT_DTYPE_BF16;
	for (size_t i = 0; i < b.n / 2; i++) { /* the same values as bf16 */
		float f = kvd_half_to_float(b.raw[i]);
		uint32_t u;
		memcpy(&u, &f, 4);
		b.raw[i] = (uint16_t)(u >> 16);
	}
	check_lossless(&b);
	free(roundtrip("uq", &b, NULL));
	free(roundtrip("kivi+rans", &b, NULL));
	free(b.raw);
}

int main(int argc, char **argv)
{
	for (int i = 1; i + 1 < argc; i++)
		if (!strcmp(argv[i], "--seed"))
			seed = strtoull(argv[i + 1], NULL, 0) | 1;
	printf("seed %llu\n", (unsigned long long)seed);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_lossless_random), cmocka_unit_test(test_lossless_real),
	    cmocka_unit_test(test_kivi_bound),	    cmocka_unit_test(test_kivi_sparse),
	    cmocka_unit_test(test_uq_bound),	    cmocka_unit_test(test_uq_rope_sink),
	    cmocka_unit_test(test_uq_dq_profile),   cmocka_unit_test(test_fp8_bound),
	    cmocka_unit_test(test_lsh_lowrank),	    cmocka_unit_test(test_bf16),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
