/* SPDX-License-Identifier: MIT */
/*
 * test_gpu_ref.c - the host-only half of gpu/ (no GPU needed): fp16/bf16 conversions, the CPU
 * reference of the KIVI quantizer (error bounds, byte layout), page layouts, UUIDs, flags and
 * the stub's "no GPU" answers.  Randomized: prints its seed, takes --seed N.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kvt_gpu.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float rnd_val(void)
{
	return (float)((double)(rng() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void test_f16_roundtrip(void **state)
{
	/* every half that is not NaN survives half -> float -> half */
	for (uint32_t h = 0; h < 0x10000; h++) {
		float f = kvt_f16_to_f32((uint16_t)h);

		if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
			assert_true(isnan(f));
		else
			assert_int_equal(kvt_f32_to_f16(f), h);
	}
	for (uint32_t h = 0; h < 0x10000; h++) {
		float f = kvt_bf16_to_f32((uint16_t)h);

		if (!isnan(f))
			assert_int_equal(kvt_f32_to_bf16(f), h);
	}
}

static void test_f16_rounding(void **state)
{
	assert_int_equal(kvt_f32_to_f16(1.0f), 0x3c00);
	assert_int_equal(kvt_f32_to_f16(-2.0f), 0xc000);
	assert_int_equal(kvt_f32_to_f16(65504.0f), 0x7bff);
	assert_int_equal(kvt_f32_to_f16(65519.0f), 0x7bff);
	assert_int_equal(kvt_f32_to_f16(65520.0f), 0x7c00); /* ties to even: overflows */
	assert_int_equal(kvt_f32_to_f16(1e9f), 0x7c00);
	/* 1 + 2^-11 is halfway between 1 and 1 + 2^-10: even (1.0) wins */
	assert_int_equal(kvt_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);
	assert_int_equal(kvt_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);
	assert_int_equal(kvt_f32_to_f16(0x1p-24f), 0x0001);	/* smallest subnormal */
	assert_int_equal(kvt_f32_to_f16(0x1p-25f), 0x0000);	/* tie to even: zero */
	assert_int_equal(kvt_f32_to_f16(0x1.8p-25f), 0x0001);	/* above the tie */
	assert_int_equal(kvt_f32_to_f16(3 * 0x1p-25f), 0x0002); /* 1.5 units: tie to even 2 */
	assert_int_equal(kvt_f32_to_f16(0x1.ffcp-15f), 0x0400); /* rounds up into the normals */
	assert_int_equal(kvt_f32_to_f16(-0.0f), 0x8000);
	assert_int_equal(kvt_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80); /* tie to even */
	assert_int_equal(kvt_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
	assert_true(isnan(kvt_f16_to_f32(kvt_f32_to_f16(NAN))));
	assert_true(isnan(kvt_bf16_to_f32(kvt_f32_to_bf16(NAN))));
}

static void fill_tile(uint16_t *x, size_t elems, size_t C, int dtype, int outliers)
{
	float amp = 0.5f + 8.0f * (float)(rng() % 1000) / 1000.0f;

	for (size_t i = 0; i < elems; i++) {
		/* a few outlier channels, as post-RoPE keys have (per-channel groups absorb them)
		 */
		float v = rnd_val() * amp * (outliers && (i % C) % 37 == 5 ? 20.0f : 1.0f);

		x[i] = dtype == KVT_GPU_BF16 ? kvt_f32_to_bf16(v) : kvt_f32_to_f16(v);
	}
}

static float to_f(uint16_t v, int dtype)
{
	return dtype == KVT_GPU_BF16 ? kvt_bf16_to_f32(v) : kvt_f16_to_f32(v);
}

/* Per element: |x - x'| <= scale / 2 plus the output rounding (one ulp of the dtype at |x'|)
 * plus the fp16 rounding of the zero.  Per tile: relative Frobenius error under a bound that
 * a wrong layout or off-by-one group would blow far past. */
static void check_bounds(const struct kvt_gpu_qparams *p, enum kvt_gpu_kv kind, const uint16_t *x,
			 const uint8_t *enc, const uint16_t *y)
{
	size_t T = p->tokens, C = (size_t)p->heads * p->head_dim, elems = T * C;
	const uint8_t *meta = enc + elems * p->bits / 8;
	double num = 0, den = 0;

	for (size_t i = 0; i < elems; i++) {
		size_t gi =
		    kind == KVT_GPU_KEYS ? (i / C / p->k_group) * C + i % C : i / p->v_group;
		float s = kvt_f16_to_f32((uint16_t)(meta[gi * 4] | meta[gi * 4 + 1] << 8));
		float a = to_f(x[i], p->dtype), b = to_f(y[i], p->dtype);
		float ulp = p->dtype == KVT_GPU_BF16 ? 0x1p-7f : 0x1p-10f;
		float tol = s * 0.5f + (fabsf(a) + s) * ulp * 1.01f + 1e-6f;

		if (fabsf(a - b) > tol) {
			fprintf(stderr, "elem %zu: x %g x' %g scale %g tol %g\n", i, a, b, s, tol);
			fail();
		}
		num += (double)(a - b) * (a - b);
		den += (double)a * a;
	}
	/* uniform data: int8 error ~ range/255/sqrt(12) per value, int4 ~ range/15/sqrt(12) */
	assert_true(sqrt(num / den) < (p->bits == 8 ? 0.01 : 0.15));
}

static void test_ref_quant_bounds(void **state)
{
	static const uint16_t kgs[] = {8, 16, 32, 64, 128}, vgs[] = {8, 32, 64, 128};

	for (int dtype = KVT_GPU_FP16; dtype <= KVT_GPU_BF16; dtype++) {
		for (int bits = 4; bits <= 8; bits += 4) {
			for (size_t gi = 0; gi < 5; gi++) {
				struct kvt_gpu_qparams p = {
				    .size = sizeof(p),
				    .bits = (uint8_t)bits,
				    .dtype = (uint8_t)dtype,
				    .tokens = 128,
				    .heads = 2,
				    .head_dim = 128,
				    .k_group = kgs[gi],
				    .v_group = vgs[gi % 4],
				};
				size_t raw = kvt_gpu_q_raw_bytes(&p);
				uint16_t *x = malloc(raw), *y = malloc(raw);

				assert_non_null(x);
				assert_non_null(y);
				for (int kind = KVT_GPU_KEYS; kind <= KVT_GPU_VALUES; kind++) {
					size_t eb = kvt_gpu_q_bytes(&p, kind);
					uint8_t *enc = malloc(eb);

					assert_non_null(enc);
					assert_true(eb > 0 && eb < raw);
					fill_tile(x, raw / 2, 256, dtype, kind == KVT_GPU_KEYS);
					memset(enc, 0xa5, eb);
					memset(y, 0x5a, raw);
					assert_int_equal(kvt_gpu_ref_quantize(&p, kind, x, enc), 0);
					assert_int_equal(kvt_gpu_ref_dequantize(&p, kind, enc, y),
							 0);
					check_bounds(&p, kind, x, enc, y);
					free(enc);
				}
				free(x);
				free(y);
			}
		}
	}
}

/* The byte layout GPU.md promises, checked on a hand-made tile. */
static void test_ref_layout(void **state)
{
	struct kvt_gpu_qparams p = {
	    .size = sizeof(p),
	    .bits = 4,
	    .dtype = KVT_GPU_FP16,
	    .tokens = 8,
	    .heads = 1,
	    .head_dim = 8,
	    .k_group = 8,
	    .v_group = 8,
	};
	uint16_t x[64];
	uint8_t enc[64 / 2 + 8 * 4];

	assert_int_equal(kvt_gpu_q_bytes(&p, KVT_GPU_KEYS), sizeof(enc));
	assert_int_equal(kvt_gpu_q_bytes(&p, KVT_GPU_VALUES), sizeof(enc));
	/* x[t][c] = t * (c + 1): channel c ranges over 0..7(c + 1) along tokens */
	for (int t = 0; t < 8; t++)
		for (int c = 0; c < 8; c++)
			x[t * 8 + c] = kvt_f32_to_f16((float)t * (c + 1));
	assert_int_equal(kvt_gpu_ref_quantize(&p, KVT_GPU_KEYS, x, enc), 0);
	/* channel c: min 0, max 7(c+1), scale 7(c+1)/15; token t -> q = rint(t * 15 / 7) */
	for (int t = 0; t < 8; t++) {
		for (int c = 0; c < 8; c++) {
			int i = t * 8 + c;
			unsigned q = (i & 1) ? enc[i / 2] >> 4 : enc[i / 2] & 15;

			assert_int_equal(q, (unsigned)rint(t * 15.0 / 7.0));
		}
	}
	for (int c = 0; c < 8; c++) {
		uint16_t s = (uint16_t)(enc[32 + c * 4] | enc[33 + c * 4] << 8);
		uint16_t z = (uint16_t)(enc[34 + c * 4] | enc[35 + c * 4] << 8);

		assert_int_equal(s, kvt_f32_to_f16(7.0f * (c + 1) / 15.0f));
		assert_int_equal(z, 0);
	}
	/* values: token t ranges over t*(1..8) along channels, one group per token */
	assert_int_equal(kvt_gpu_ref_quantize(&p, KVT_GPU_VALUES, x, enc), 0);
	for (int t = 1; t < 8; t++) {
		uint16_t s = (uint16_t)(enc[32 + t * 4] | enc[33 + t * 4] << 8);
		uint16_t z = (uint16_t)(enc[34 + t * 4] | enc[35 + t * 4] << 8);

		assert_int_equal(s, kvt_f32_to_f16(7.0f * t / 15.0f));
		assert_int_equal(z, kvt_f32_to_f16((float)t));
		assert_int_equal(enc[t * 4] & 15, 0);	   /* channel 0 is the minimum */
		assert_int_equal(enc[t * 4 + 3] >> 4, 15); /* channel 7 is the maximum */
	}
	/* a constant group: scale 0, every code 0, decodes exactly */
	for (int i = 0; i < 64; i++)
		x[i] = kvt_f32_to_f16(-3.25f);
	assert_int_equal(kvt_gpu_ref_quantize(&p, KVT_GPU_KEYS, x, enc), 0);
	for (int i = 0; i < 32; i++)
		assert_int_equal(enc[i], 0);
	{
		uint16_t y[64];

		assert_int_equal(kvt_gpu_ref_dequantize(&p, KVT_GPU_KEYS, enc, y), 0);
		for (int i = 0; i < 64; i++)
			assert_int_equal(y[i], x[i]);
	}
}

static void test_q_params(void **state)
{
	struct kvt_gpu_qparams p = {
	    .size = sizeof(p),
	    .bits = 4,
	    .dtype = KVT_GPU_FP16,
	    .tokens = 64,
	    .heads = 8,
	    .head_dim = 128,
	    .k_group = 32,
	    .v_group = 32,
	};
	size_t raw = kvt_gpu_q_raw_bytes(&p);

	assert_int_equal(kvt_gpu_q_check(&p), 0);
	assert_int_equal(raw, 64 * 8 * 128 * 2);
	/* KIVI 4-bit g32: half a byte per value plus 4 bytes per 32 values = 3.2x */
	assert_int_equal(kvt_gpu_q_bytes(&p, KVT_GPU_KEYS) * 32, raw * 10);
	assert_int_equal(kvt_gpu_q_bytes(&p, KVT_GPU_VALUES) * 32, raw * 10);
	p.bits = 3;
	assert_int_equal(kvt_gpu_q_check(&p), -EINVAL);
	assert_int_equal(kvt_gpu_q_bytes(&p, KVT_GPU_KEYS), 0);
	p.bits = 8;
	p.k_group = 48;
	assert_int_equal(kvt_gpu_q_check(&p), -EINVAL);
	p.k_group = 128; /* does not divide 64 tokens */
	assert_int_equal(kvt_gpu_q_check(&p), -EINVAL);
	p.k_group = 64;
	p.head_dim = 100;
	assert_int_equal(kvt_gpu_q_check(&p), -EINVAL);
	p.head_dim = 128;
	p.v_group = 512;
	assert_int_equal(kvt_gpu_q_check(&p), -EINVAL);
	p.v_group = 128;
	p.dtype = 7;
	assert_int_equal(kvt_gpu_q_check(&p), -EINVAL);
	assert_int_equal(kvt_gpu_ref_quantize(&p, KVT_GPU_KEYS, &p, &p), -EINVAL);
	p.dtype = KVT_GPU_BF16;
	assert_int_equal(kvt_gpu_q_check(&p), 0);
	p.size = 4;
	assert_int_equal(kvt_gpu_q_check(&p), -EINVAL);
}

static void test_paged_segments(void **state)
{
	/* vLLM: [2, num_blocks, block_size, heads, dim] per layer */
	const uint64_t page = 16 * 8 * 128 * 2, nb = 100;
	uint64_t bases[3] = {0x100000000ull, 0x200000000ull, 0x300000000ull};
	struct kvt_gpu_paged_layout l = {
	    .size = sizeof(l),
	    .n_layers = 3,
	    .layer_base = bases,
	    .page_bytes = page,
	    .block_stride = page,
	    .kv_stride = nb * page,
	    .n_kv = 2,
	    .pages_per_block = 4,
	};
	uint32_t ids[8] = {7, 3, 50, 51, 10, 11, 12, 13};
	uint64_t addr[2] = {0x7f0000000000ull, 0x7f0001000000ull};
	struct kvt_gpu_seg segs[64];
	uint64_t bb = kvt_gpu_paged_block_bytes(&l);
	long n;

	assert_int_equal(bb, 3 * 2 * 4 * page);
	n = kvt_gpu_paged_segments(&l, ids, addr, 2, KVT_GPU_D2H, segs, 64);
	/* block 0: pages 7, 3, 50-51 (merged) -> 3 segments per (layer, kv); block 1: 10-13 -> 1 */
	assert_int_equal(n, 3 * 2 * 3 + 3 * 2 * 1);
	/* block 0, layer 1, V, page index 0 (engine block 7) */
	assert_int_equal(segs[(1 * 2 + 1) * 3].src, bases[1] + nb * page + 7 * page);
	assert_int_equal(segs[(1 * 2 + 1) * 3].dst, addr[0] + (1 * 2 + 1) * 4 * page);
	assert_int_equal(segs[(1 * 2 + 1) * 3 + 2].len, 2 * page);
	/* block 1, layer 2, K: all four pages in one piece */
	assert_int_equal(segs[18 + 4].src, bases[2] + 10 * page);
	assert_int_equal(segs[18 + 4].dst, addr[1] + 4 * 4 * page);
	assert_int_equal(segs[18 + 4].len, 4 * page);
	{
		uint64_t total = 0;

		for (long i = 0; i < n; i++)
			total += segs[i].len;
		assert_int_equal(total, 2 * bb);
	}
	/* H2D swaps the sides */
	n = kvt_gpu_paged_segments(&l, ids, addr, 2, KVT_GPU_H2D, segs, 64);
	assert_int_equal(segs[0].src, addr[0]);
	assert_int_equal(segs[0].dst, bases[0] + 7 * page);
	assert_int_equal(kvt_gpu_paged_segments(&l, ids, addr, 2, KVT_GPU_D2H, segs, 47), -ENOSPC);
	l.n_kv = 3;
	assert_int_equal(kvt_gpu_paged_segments(&l, ids, addr, 2, KVT_GPU_D2H, segs, 64), -EINVAL);
	assert_int_equal(kvt_gpu_paged_block_bytes(&l), 0);
}

/* Token-major pages -> ABI-order blocks (kvt_gpu_xpose_jobs + kvt_gpu_ref_xpose) against the
 * layout's definition, element by element; then back; and the parameters refused. */
static void test_xpose_ref(void **state)
{
	enum { L = 2, H = 3, D = 5, P = 3, PPB = 2, NE = 6, NB = 2, T = P * PPB };
	static uint16_t eng[L][2][NE][P][H][D], blk[NB][L][2][H][T][D], back[L][2][NE][P][H][D];
	uint64_t bases[L], addr[NB];
	uint32_t ids[NB * PPB] = {4, 1, 0, 5};
	struct kvt_gpu_paged_layout l = {sizeof(l),	     L, bases, P * H * D * 2, P * H * D * 2,
					 NE * P * H * D * 2, 2, PPB};
	struct kvt_gpu_xjob jobs[NB * L * 2 * PPB];
	struct kvt_gpu_xgeom x;
	uint16_t v = 1;

	for (int i = 0; i < L; i++)
		bases[i] = (uint64_t)(uintptr_t)eng[i];
	for (int i = 0; i < NB; i++)
		addr[i] = (uint64_t)(uintptr_t)blk[i];
	for (size_t i = 0; i < sizeof(eng) / 2; i++)
		(&eng[0][0][0][0][0][0])[i] = v++;
	assert_int_equal(kvt_gpu_xpose_jobs(&l, H, D * 2, ids, addr, NB, &x, jobs, 15), -ENOSPC);
	assert_int_equal(kvt_gpu_xpose_jobs(&l, H, D * 2, ids, addr, NB, &x, jobs, 16), 16);
	assert_int_equal(x.tokens, P);
	assert_int_equal(x.head_stride, T * D * 2);
	assert_int_equal(kvt_gpu_xpose_unit(&x, jobs, 16), 2);
	assert_int_equal(kvt_gpu_ref_xpose(&x, jobs, 16, 0), 0);
	for (int b = 0; b < NB; b++)
		for (int i = 0; i < L; i++)
			for (int k = 0; k < 2; k++)
				for (int h = 0; h < H; h++)
					for (int t = 0; t < T; t++)
						for (int d = 0; d < D; d++)
							assert_int_equal(
							    blk[b][i][k][h][t][d],
							    eng[i][k][ids[b * PPB + t / P]][t % P]
							       [h][d]);
	for (int i = 0; i < L; i++)
		bases[i] = (uint64_t)(uintptr_t)back[i];
	assert_int_equal(kvt_gpu_xpose_jobs(&l, H, D * 2, ids, addr, NB, &x, jobs, 16), 16);
	assert_int_equal(kvt_gpu_ref_xpose(&x, jobs, 16, 1), 0);
	for (int b = 0; b < NB * PPB; b++)
		for (int i = 0; i < L; i++)
			for (int k = 0; k < 2; k++)
				assert_memory_equal(back[i][k][ids[b]], eng[i][k][ids[b]],
						    sizeof(back[0][0][0]));
	/* pages that do not split into heads x rows; bad parameters */
	assert_int_equal(kvt_gpu_xpose_jobs(&l, 4, D * 2, ids, addr, NB, &x, jobs, 16), -EINVAL);
	assert_int_equal(kvt_gpu_xpose_jobs(&l, H, 0, ids, addr, NB, &x, jobs, 16), -EINVAL);
	x.reserved = 1;
	assert_int_equal(kvt_gpu_xpose_unit(&x, jobs, 16), -EINVAL);
	x.reserved = 0;
	x.head_stride = P * D * 2 - 1;
	assert_int_equal(kvt_gpu_ref_xpose(&x, jobs, 16, 0), -EINVAL);
	x.head_stride = T * D * 2;
	jobs[3].blk = 0;
	assert_int_equal(kvt_gpu_xpose_unit(&x, jobs, 16), -EINVAL);
	/* the access width follows the addresses */
	jobs[3].blk = 0x1008;
	x.row_bytes = 32;
	x.head_stride = 4096;
	assert_int_equal(kvt_gpu_xpose_unit(&x, &jobs[3], 1), jobs[3].page % 8 ? 2 : 8);
	/* no engine: the stub's -ENODEV, the CUDA build's -EINVAL */
	assert_true(kvt_gpu_xpose(NULL, &x, jobs, 1, 0, NULL) < 0);
	(void)state;
}

static void test_coalesce(void **state)
{
	struct kvt_gpu_seg s[] = {
	    {100, 1000, 10}, {110, 1010, 5}, {115, 2000, 5}, {120, 2005, 0}, {120, 2005, 7},
	};

	assert_int_equal(kvt_gpu_seg_coalesce(s, 5), 2);
	assert_int_equal(s[0].len, 15);
	assert_int_equal(s[1].src, 115);
	assert_int_equal(s[1].len, 12);
}

static void test_uuid(void **state)
{
	uint8_t u[16], v[16];
	char buf[41];

	assert_int_equal(kvt_gpu_uuid_parse("GPU-0123abcd-4567-89ef-0011-2233445566FF", u), 0);
	assert_int_equal(u[0], 0x01);
	assert_int_equal(u[15], 0xff);
	kvt_gpu_uuid_format(u, buf);
	assert_string_equal(buf, "GPU-0123abcd-4567-89ef-0011-2233445566ff");
	assert_int_equal(kvt_gpu_uuid_parse("0123abcd456789ef00112233445566ff", v), 0);
	assert_memory_equal(u, v, 16);
	assert_int_equal(kvt_gpu_uuid_parse("GPU-0123", v), -EINVAL);
	assert_int_equal(kvt_gpu_uuid_parse("GPU-0123abcd-4567-89ef-0011-2233445566FFx", v),
			 -EINVAL);
	assert_int_equal(kvt_gpu_uuid_parse("GPU-0123abcd-4567-89ef-0011-2233445566FF00", v),
			 -EINVAL);
}

static void test_flags(void **state)
{
	uint64_t flag = 5;

	assert_int_equal(kvt_gpu_flag_done(&flag, 5), 1);
	assert_int_equal(kvt_gpu_flag_done(&flag, 6), 0);
	assert_int_equal(kvt_gpu_flag_wait(&flag, 4, 0), 0);
	assert_int_equal(kvt_gpu_flag_wait(&flag, 6, 1000000), -ETIMEDOUT);
}

/* Without a GPU every device call says so, and nothing crashes on NULL. */
static void test_no_gpu(void **state)
{
	struct kvt_gpu_engine *e = (struct kvt_gpu_engine *)&e;
	struct kvt_gpu_pool *p = (struct kvt_gpu_pool *)&p;
	struct kvt_gpu_pool_opts po = {.size = sizeof(po), .bytes = 1 << 20};

	if (kvt_gpu_available() > 0)
		skip();
	assert_int_equal(kvt_gpu_engine_create(NULL, &e), -ENODEV);
	assert_null(e);
	assert_int_equal(kvt_gpu_pool_create(&po, &p), -ENODEV);
	assert_null(p);
	kvt_gpu_engine_destroy(NULL);
	kvt_gpu_pool_close(NULL);
	assert_true(kvt_gpu_host_register(&po, sizeof(po)) < 0);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_f16_roundtrip),
	    cmocka_unit_test(test_f16_rounding),
	    cmocka_unit_test(test_ref_quant_bounds),
	    cmocka_unit_test(test_ref_layout),
	    cmocka_unit_test(test_q_params),
	    cmocka_unit_test(test_paged_segments),
	    cmocka_unit_test(test_coalesce),
	    cmocka_unit_test(test_xpose_ref),
	    cmocka_unit_test(test_uuid),
	    cmocka_unit_test(test_flags),
	    cmocka_unit_test(test_no_gpu),
	};
	uint64_t seed = 0x5eed;

	for (int i = 1; i + 1 < argc; i++)
		if (!strcmp(argv[i], "--seed"))
			seed = strtoull(argv[i + 1], NULL, 0);
	rng_state ^= seed;
	printf("test_gpu_ref: seed %llu\n", (unsigned long long)seed);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
