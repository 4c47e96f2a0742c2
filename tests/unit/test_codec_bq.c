/* SPDX-License-Identifier: MIT */
/*
 * The "bq" codec: its AVX2 decoder gives the scalar reference's bits on real KV blocks and on
 * edge cases (all zero, constant, inf/NaN, huge bf16, odd geometries); the error stays within
 * the documented bound; inf/NaN come back exact; malformed records are refused and random
 * corruption never reads or writes out of bounds.  rope=theta (keys in the pre-RoPE frame): the
 * same, with the bound per rotated pair, its angles against libm, and smaller records.  Randomized
 * parts print their seed and take
 * --seed N.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bq_format.h"
#include "codec.h"
#include "codec_bq.h"
#include "codec_internal.h"
#include "realblk.h"

static uint64_t seed = 0x9e3779b97f4a7c15ull, rs;

static uint64_t rnd(void)
{
	rs ^= rs << 13;
	rs ^= rs >> 7;
	rs ^= rs << 17;
	return rs;
}

/* Gaussian-ish: sum of four uniforms. */
static float rndf(void)
{
	float a = 0;
	for (int i = 0; i < 4; i++)
		a += (float)(rnd() % 20001) / 10000.0f - 1.0f;
	return a;
}

struct rt {
	uint8_t *enc, *dec_s, *dec_v;
	ssize_t elen, dlen_s, dlen_v;
};

/* Encodes raw with spec and decodes it with the scalar and the AVX2 paths. */
static struct rt roundtrip(const char *spec, const struct kvt_codec_geom *g, const void *raw,
			   size_t n)
{
	struct kvt_chain *c;
	struct rt r;
	assert_int_equal(kvt_chain_parse(spec, &c), 0);
	size_t cap = kvt_chain_max_encoded_size(c, g);
	assert_true(cap > 0);
	r.enc = malloc(cap);
	r.dec_s = malloc(n);
	r.dec_v = malloc(n);
	assert_non_null(r.enc);
	r.elen = kvt_chain_encode(c, g, raw, n, r.enc, cap);
	assert_true(r.elen > 0);
	kvt_simd_force_scalar(1);
	r.dlen_s = kvt_chain_decode(c, r.enc, (size_t)r.elen, r.dec_s, n, NULL);
	kvt_simd_force_scalar(0);
	r.dlen_v = kvt_chain_decode(c, r.enc, (size_t)r.elen, r.dec_v, n, NULL);
	assert_int_equal(r.dlen_s, (ssize_t)n);
	assert_int_equal(r.dlen_v, (ssize_t)n);
	/* AVX2 (where the CPU has it) and scalar: the same bits */
	assert_memory_equal(r.dec_s, r.dec_v, n);
	/* the encoder's bytes do not depend on the conversion path either */
	kvt_simd_force_scalar(1);
	uint8_t *e2 = malloc(cap);
	assert_int_equal(kvt_chain_encode(c, g, raw, n, e2, cap), r.elen);
	kvt_simd_force_scalar(0);
	assert_memory_equal(e2, r.enc, (size_t)r.elen);
	free(e2);
	kvt_chain_free(c);
	return r;
}

static void rt_free(struct rt *r)
{
	free(r->enc);
	free(r->dec_s);
	free(r->dec_v);
}

static float ld(const uint8_t *p, size_t i, uint32_t dtype)
{
	uint16_t h = ld16(p + 2 * i);
	return dtype == KVT_DTYPE_BF16 ? kvt_bf2f(h) : kvt_h2f(h);
}

/* The step of slab s of a one-stage bq record (its first field). */
static float slab_delta(const uint8_t *rec, size_t s)
{
	const uint8_t *p = rec + KVT_CHAIN_HDR_SIZE;
	return bq_bitsf(ld32(p + ld32(p + 8 + 4 * s)));
}

/*
 * Every element within the bound of CODECS.md: (1 + dup) * delta / 2 of its slab plus half an
 * output ulp; non-finite and exact elements bit for bit.  rope: in key slabs the pair (c, c +
 * D/2) is coded rotated, so sqrt(2) times that plus the rotations' rounding, and a pair with an
 * element that cannot be rotated comes back exact.  Returns the largest error / delta.
 */
static double check_bound(const struct kvt_codec_geom *g, const uint8_t *raw, const struct rt *r,
			  double dup, int rope)
{
	size_t ns = (size_t)g->n_layers * 2 * g->n_kv_heads,
	       slab = (size_t)g->block_tokens * g->head_dim;
	double worst = 0;
	for (size_t s = 0; s < ns; s++) {
		float delta = slab_delta(r->enc, s);
		int rot = rope && !slab_is_v(g, s);
		uint32_t D = g->head_dim, h = D / 2;
		for (size_t i = s * slab; i < (s + 1) * slab; i++) {
			float x = ld(raw, i, g->dtype), y = ld(r->dec_s, i, g->dtype);
			size_t c = (i - s * slab) % D, pi = c < h ? i + h : i - h;
			float xp = ld(raw, pi, g->dtype);
			if (!isfinite(x) || fabsf(x) >= 0x1p56f ||
			    (rot && !bq_pair_codable(x, xp, g->dtype == KVT_DTYPE_BF16))) {
				assert_int_equal(ld16(raw + 2 * i), ld16(r->dec_s + 2 * i));
				continue;
			}
			double e = fabs((double)x - y);
			double ulp = g->dtype == KVT_DTYPE_BF16 ? fabs(y) * 0x1p-8
								: fmax(fabs(y) * 0x1p-11, 0x1p-24);
			double lim = (1 + dup) * delta / 2;
			if (rot)
				lim = lim * sqrt(2.0) + (fabs(x) + fabs(xp)) * 0x1p-20;
			if (e > lim + ulp)
				fail_msg("slab %zu element %zu: %g decoded %g, step %g", s,
					 i - s * slab, x, y, delta);
			if (delta > 0)
				worst = fmax(worst, e / delta);
		}
	}
	return worst;
}

static const char *const chains[] = {
    "bq",
    "bq:k=0.02,v=0.02",
    "bq:k=0.5,v=0.3",
    "bq:dup=0",
    "bq:outl=0",
    "bq:sink=100,dup=2",
    "bq:k=0.1,v=0.05,kl=-0.5:0.5,vl=0.3:-0.3",
    "bq:rope=10000",
    "bq:k=0.04,v=0.02,dup=2,rope=10000",
    "bq:sink=0,rope=500000",
};

static void test_real_blocks(void **state)
{
	(void)state;
	size_t plain = 0, rope = 0;
	for (uint32_t b = 0; b < 10; b++) {
		struct blk k = real_block(b);
		if (!k.raw)
			fail_msg("tests/data/sympy_head640.kvd missing (KVT_TEST_DATA)");
		for (size_t i = 0; i < sizeof(chains) / sizeof(chains[0]); i++) {
			struct rt r = roundtrip(chains[i], &k.g, k.raw, k.n);
			double dup = strstr(chains[i], "dup=0")	  ? 0
				     : strstr(chains[i], "dup=2") ? 2
								  : 1;
			check_bound(&k.g, (const uint8_t *)k.raw, &r, dup,
				    strstr(chains[i], "rope=") != NULL);
			/* compresses real KV */
			if (!strcmp(chains[i], "bq"))
				assert_true((double)k.n / (double)r.elen > 3.0);
			plain += strcmp(chains[i], "bq") ? 0 : (size_t)r.elen;
			rope += strcmp(chains[i], "bq:rope=10000") ? 0 : (size_t)r.elen;
			rt_free(&r);
		}
		free(k.raw);
	}
	/* keys in their pre-RoPE frame: records at least 8 % smaller at the same steps (the
	 * model's theta is 10000; measured 11 % on these blocks) */
	assert_true((double)rope < 0.92 * (double)plain);
}

/* rope's cosines and sines against libm's of the same double angle: the polynomials up to
 * 2^32 + 2^16, and the recurrence over 65536 positions from there. */
static void test_rope_angles(void **state)
{
	(void)state;
	static const double thetas[] = {10000, 500000, 1e6, 2};
	for (size_t k = 0; k < sizeof(thetas) / sizeof(thetas[0]); k++) {
		double r = pow(thetas[k], -2.0 / 128);
		for (unsigned i = 0; i < 64; i++) {
			double f = bq_rope_freq(r, i), c, sn, c1, s1;
			assert_true(fabs(f - pow(thetas[k], -2.0 * i / 128)) <= 1e-12 * f);
			for (uint64_t pos = 0; pos < (1ull << 32) + 65536; pos = pos * 3 + 1 + i) {
				double a = (double)pos * f;
				bq_rope_cs((double)pos, f, &c, &sn);
				if (fabs(c - cos(a)) > 1e-6 || fabs(sn - sin(a)) > 1e-6)
					fail_msg("theta %g pair %u pos %" PRIu64
						 ": %.9g %.9g, libm "
						 "%.9g %.9g",
						 thetas[k], i, pos, c, sn, cos(a), sin(a));
			}
			uint32_t first = 4294900000u;
			bq_rope_cs((double)first, f, &c, &sn);
			bq_rope_cs(1.0, f, &c1, &s1);
			for (uint32_t t = 0; t < 65536; t++) {
				double a = ((double)first + t) * f;
				if (fabs(c - cos(a)) > 1e-6 || fabs(sn - sin(a)) > 1e-6)
					fail_msg(
					    "theta %g pair %u row %u: %.9g %.9g, libm %.9g %.9g",
					    thetas[k], i, t, c, sn, cos(a), sin(a));
				bq_rope_step(&c, &sn, c1, s1);
			}
		}
	}
}

/* sink=N keeps the first N tokens of the sequence exact, wherever the block starts. */
static void test_sinks_exact(void **state)
{
	(void)state;
	struct blk k = real_block(0);
	assert_non_null(k.raw);
	struct rt r = roundtrip("bq:sink=5", &k.g, k.raw, k.n);
	size_t slab = (size_t)k.g.block_tokens * k.g.head_dim;
	for (size_t s = 0; s < (size_t)k.g.n_layers * 2 * k.g.n_kv_heads; s++)
		assert_memory_equal((uint8_t *)k.raw + s * slab * 2, r.dec_s + s * slab * 2,
				    5 * k.g.head_dim * 2);
	rt_free(&r);
	free(k.raw);
}

static uint8_t *make_block(const struct kvt_codec_geom *g, size_t *n, int kind)
{
	*n = kvt_geom_block_bytes(g);
	uint8_t *p = malloc(*n);
	assert_non_null(p);
	for (size_t i = 0; i < *n / 2; i++) {
		float v = kind == 0   ? 0.0f
			  : kind == 1 ? 1.5f
				      : rndf() * (1 + (i % 7)) + (float)(i % 3);
		st16(p + 2 * i, g->dtype == KVT_DTYPE_BF16 ? kvt_f2bf(v) : kvt_f2h(v));
	}
	return p;
}

static void test_edge_cases(void **state)
{
	(void)state;
	static const struct kvt_codec_geom geoms[] = {
	    {2, 2, 128, 64, KVT_DTYPE_FP16, 0}, /* the usual */
	    {1, 1, 6, 3, KVT_DTYPE_FP16, 0},	/* head_dim not a multiple of 8: scalar tail */
	    {1, 3, 10, 1, KVT_DTYPE_FP16, 7},	/* one token */
	    {1, 1, 64, 300, KVT_DTYPE_FP16, 0}, /* > 256 rows: 2-byte references */
	    {2, 1, 128, 16, KVT_DTYPE_BF16, 3}, /* bf16 */
	    {1, 1, 2, 2, KVT_DTYPE_BF16, 0},
	    {1, 2, 128, 64, KVT_DTYPE_FP16, 4294967000u}, /* positions past 2^32 */
	    {1, 1, 24, 5, KVT_DTYPE_BF16, 1},		  /* D/2 = 12: scalar rope tail */
	};
	for (size_t gi = 0; gi < sizeof(geoms) / sizeof(geoms[0]); gi++)
		for (int kind = 0; kind < 3; kind++)
			for (int rope = 0; rope < 2; rope++) {
				size_t n;
				uint8_t *raw = make_block(&geoms[gi], &n, kind);
				struct rt r =
				    roundtrip(rope ? "bq:rope=10000" : "bq", &geoms[gi], raw, n);
				check_bound(&geoms[gi], raw, &r, 1, rope);
				if (kind < 2 && !rope) /* constant blocks come back exact */
					assert_memory_equal(raw, r.dec_s, n);
				rt_free(&r);
				free(raw);
			}
}

/* inf, NaN (payload kept) and bf16 values past 2^56 come back bit for bit. */
static void test_nonfinite_exact(void **state)
{
	(void)state;
	for (int bf = 0; bf < 2; bf++) {
		struct kvt_codec_geom g = {1, 1, 16, 8, bf ? KVT_DTYPE_BF16 : KVT_DTYPE_FP16, 0};
		size_t n;
		uint8_t *raw = make_block(&g, &n, 2);
		const uint16_t special[] = {bf ? 0x7f80 : 0x7c00, bf ? 0xff80 : 0xfc00,
					    bf ? 0x7fc1 : 0x7e01, bf ? 0xffa3 : 0xfd23,
					    bf ? 0x7f00 : 0x7bff, bf ? 0x5f80 : 0xfbff};
		for (size_t i = 0; i < sizeof(special) / 2; i++)
			st16(raw + 2 * (i * 37 % (n / 2)), special[i]);
		/* a whole channel of NaN */
		for (uint32_t t = 0; t < g.block_tokens; t++)
			st16(raw + 2 * (t * g.head_dim + 5), bf ? 0x7fc0 : 0x7e00);
		for (int rope = 0; rope < 2; rope++) {
			struct rt r = roundtrip(rope ? "bq:rope=10000" : "bq", &g, raw, n);
			check_bound(&g, raw, &r, 1, rope);
			for (size_t i = 0; i < sizeof(special) / 2; i++) {
				size_t e = i * 37 % (n / 2);
				if (!(fabsf(ld(raw, e, g.dtype)) < 0x1p56f))
					assert_int_equal(ld16(r.dec_s + 2 * e), ld16(raw + 2 * e));
			}
			rt_free(&r);
		}
		free(raw);
	}
}

/* Structural damage is refused with -EBADMSG; random damage never crashes (ASan build). */
static void corrupt_one(const char *spec, const char *other)
{
	struct blk k = real_block(3);
	assert_non_null(k.raw);
	struct kvt_chain *c;
	assert_int_equal(kvt_chain_parse(spec, &c), 0);
	size_t cap = kvt_chain_max_encoded_size(c, &k.g);
	uint8_t *enc = malloc(cap), *bad = malloc(cap), *dec = malloc(k.n);
	k.g.first_token = 0; /* sinks present */
	ssize_t len = kvt_chain_encode(c, &k.g, k.raw, k.n, enc, cap);
	assert_true(len > 0);
	assert_int_equal(kvt_chain_decode(c, enc, (size_t)len, dec, k.n, NULL), (ssize_t)k.n);
	const uint8_t *p = enc + KVT_CHAIN_HDR_SIZE;
	size_t s0 = KVT_CHAIN_HDR_SIZE + ld32(p + 8), s1 = KVT_CHAIN_HDR_SIZE + ld32(p + 12);
	uint32_t D = k.g.head_dim;
	struct {
		size_t off;
		uint8_t val;
		const char *what;
	} hits[] = {
	    {KVT_CHAIN_HDR_SIZE, 0x00, "stage magic"},
	    {KVT_CHAIN_HDR_SIZE + 4, 0x07, "slab count"},
	    {KVT_CHAIN_HDR_SIZE + 12, 0xff, "slab offset"},
	    {s0 + 3, 0xbf, "negative step"},
	    {s0 + 4, 0xff, "sink rows"},
	    {s0 + 6, 0x7f, "duplicate rows"},
	    {s0 + 8, 0x55, "outlier count"},
	    {s0 + BQ_SLAB_HDR + 1, 0x0f, "more bits than the slab holds"},
	    {s0 + BQ_SLAB_HDR + D + 1, 0x7c, "range start inf"},
	    {s1 - 1, 0x01, "pad"},
	};
	for (size_t i = 0; i < sizeof(hits) / sizeof(hits[0]); i++) {
		memcpy(bad, enc, (size_t)len);
		if (bad[hits[i].off] == hits[i].val)
			bad[hits[i].off] ^= 0x80;
		else
			bad[hits[i].off] = hits[i].val;
		ssize_t rc = kvt_chain_decode(c, bad, (size_t)len, dec, k.n, NULL);
		if (rc != -EBADMSG)
			fail_msg("%s: decode gave %zd, not -EBADMSG", hits[i].what, rc);
	}
	/* a step of inf */
	memcpy(bad, enc, (size_t)len);
	st32(bad + s0, 0x7f800000u);
	assert_int_equal(kvt_chain_decode(c, bad, (size_t)len, dec, k.n, NULL), -EBADMSG);
	/* a duplicate reference to a later row, an outlier key out of order */
	{
		uint32_t T = k.g.block_tokens;
		const uint8_t *sl = enc + s0;
		uint32_t nsink = ld16(sl + 4), ndup = ld16(sl + 6), nout = ld32(sl + 8);
		size_t dmap = s0 + BQ_SLAB_HDR + 3 * D + (size_t)nsink * D * 2;
		size_t refs = dmap + (T + 7) / 8, outl = refs + ndup;
		if (ndup) {
			memcpy(bad, enc, (size_t)len);
			bad[refs] = (uint8_t)(T - 1);
			assert_int_equal(kvt_chain_decode(c, bad, (size_t)len, dec, k.n, NULL),
					 -EBADMSG);
		}
		if (nout >= 2) {
			memcpy(bad, enc, (size_t)len);
			memcpy(bad + outl, enc + outl + 6, 4);
			memcpy(bad + outl + 6, enc + outl, 4);
			assert_int_equal(kvt_chain_decode(c, bad, (size_t)len, dec, k.n, NULL),
					 -EBADMSG);
		}
	}
	/* truncation at every length */
	for (ssize_t l = 0; l < len; l += 1 + l / 64)
		assert_true(kvt_chain_decode(c, enc, (size_t)l, dec, k.n, NULL) < 0);
	/* random bytes flipped: refused or decoded, never out of bounds */
	rs = seed;
	for (int it = 0; it < 3000; it++) {
		memcpy(bad, enc, (size_t)len);
		int nf = 1 + (int)(rnd() % 4);
		for (int f = 0; f < nf; f++)
			bad[KVT_CHAIN_HDR_SIZE + rnd() % (size_t)(len - KVT_CHAIN_HDR_SIZE)] ^=
			    (uint8_t)(1 + rnd() % 255);
		ssize_t rc = kvt_chain_decode(c, bad, (size_t)len, dec, k.n, NULL);
		assert_true(rc == -EBADMSG || rc == (ssize_t)k.n);
	}
	/* another chain's record */
	struct kvt_chain *c2;
	assert_int_equal(kvt_chain_parse(other, &c2), 0);
	assert_int_equal(kvt_chain_decode(c2, enc, (size_t)len, dec, k.n, NULL), -EBADMSG);
	kvt_chain_free(c2);
	/* the stage's version: "BQ01" records are the plain layout, "BQ02" rope's; the other
	 * magic is refused even where the rest would parse */
	memcpy(bad, enc, (size_t)len);
	st32(bad + KVT_CHAIN_HDR_SIZE,
	     ld32(enc + KVT_CHAIN_HDR_SIZE) == BQ_MAGIC ? BQ_MAGIC_ROPE : BQ_MAGIC);
	assert_int_equal(kvt_chain_decode(c, bad, (size_t)len, dec, k.n, NULL), -EBADMSG);
	kvt_chain_free(c);
	free(enc);
	free(bad);
	free(dec);
	free(k.raw);
}

static void test_corrupt(void **state)
{
	(void)state;
	corrupt_one("bq:sink=8", "bq:k=0.3");
	corrupt_one("bq:sink=8,rope=10000", "bq:sink=8");
	corrupt_one("bq:sink=8", "bq:sink=8,rope=10000");
}

/* bq_bits_b()'s closed form is its definition: the fewest b with delta * 2^b >= r. */
static void test_bits_closed_form(void **state)
{
	(void)state;
	rs = seed;
	for (long i = 0; i < 2000000; i++) {
		uint32_t a = (uint32_t)rnd() & 0x7fffffff, b = (uint32_t)rnd() & 0x7fffffff;
		if (i % 3 == 0) /* close exponents, mantissas either side */
			b = (a & 0x807fffffu) |
			    ((((a >> 23) & 0xff) + (uint32_t)(rnd() % 20)) & 0xff) << 23;
		float d = bq_bitsf(a), r = bq_bitsf(b);
		if (!(d >= 0) || !(r >= 0) || d > 3e38f || r > 3e38f)
			continue;
		unsigned want = 0;
		while (want <= BQ_MAXBITS && d * (float)(1u << want) < r)
			want++;
		unsigned got = bq_bits_b(d, r);
		if ((got > 16 ? 16 : got) != want)
			fail_msg("delta %a r %a: %u, by definition %u", d, r, got, want);
	}
}

/* The GPU plan's parameters come from the chain; a chain of more stages has none. */
static void test_chain_params(void **state)
{
	(void)state;
	struct kvt_chain *c;
	struct kvt_bq_params p;
	struct kvt_codec_geom g = {4, 2, 128, 64, KVT_DTYPE_FP16, 0};
	assert_int_equal(kvt_chain_parse("bq:k=0.1,v=0.05,kl=-1:1,sink=4,dup=2", &c), 0);
	assert_int_equal(kvt_bq_chain_params(c, &g, &p), 0);
	assert_int_equal(p.n_layers, 4);
	assert_int_equal(p.sink, 4);
	assert_true(p.dup == 2.0f);
	assert_true(p.chain_id == kvt_chain_id(c));
	assert_true(fabsf(p.f[0] - 0.05f) < 1e-6f); /* layer 0 keys: 0.1 * 2^-1 */
	assert_true(fabsf(p.f[1] - 0.05f) < 1e-6f); /* layer 0 values */
	assert_true(fabsf(p.f[6] - 0.2f) < 1e-6f);  /* layer 3 keys: 0.1 * 2^1 */
	assert_true(fabsf(p.f[7] - 0.05f) < 1e-6f); /* layer 3 values */
	assert_true(p.rope_r == 0);
	kvt_chain_free(c);
	assert_int_equal(kvt_chain_parse("bq:rope=10000", &c), 0);
	assert_int_equal(kvt_bq_chain_params(c, &g, &p), 0);
	assert_true(p.rope_r == pow(10000.0, -2.0 / 128));
	assert_true(p.chain_id == kvt_chain_id(c));
	kvt_chain_free(c);
	assert_int_equal(kvt_chain_parse("bq+zstd:1", &c), 0);
	assert_int_equal(kvt_bq_chain_params(c, &g, &p), -EINVAL);
	kvt_chain_free(c);
}

int main(int argc, char **argv)
{
	for (int i = 1; i + 1 < argc; i++)
		if (!strcmp(argv[i], "--seed"))
			seed = strtoull(argv[i + 1], NULL, 0);
	printf("# seed %" PRIu64 "\n", seed);
	rs = seed;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_real_blocks),	     cmocka_unit_test(test_sinks_exact),
	    cmocka_unit_test(test_edge_cases),	     cmocka_unit_test(test_nonfinite_exact),
	    cmocka_unit_test(test_corrupt),	     cmocka_unit_test(test_chain_params),
	    cmocka_unit_test(test_bits_closed_form), cmocka_unit_test(test_rope_angles),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
