/* SPDX-License-Identifier: MIT */
/*
 * bq_basis_speed.c - how fast a CPU core could decode bq slabs through a calibrated
 * block-diagonal basis (codecs/CODECS.md "bq", issue 15 screening): a speed model, not a codec.
 *
 * Synthetic slabs (T = 64 rows, D = 128, RoPE pairs (i, i + 64), bit counts 2..6 a channel,
 * packed as bq packs them), on one core, memcpy of 64 MiB in the same run as the yardstick:
 *   today    bq's AVX2 paths (codec_bq.c dec_rows_rope_avx2 for key slabs: gather, shift,
 *            mask, q*s + a, rotate the pair, fp16; dec_rows_avx2 for value slabs: no rotation);
 *   basis N  the same codes as integer coordinates z = LO + S*q (int32, then int16), times an
 *            int16 block-diagonal basis (N x N blocks; vpmaddwd, int32 sums, exact on any
 *            machine), y = acc * scale + bias (two IEEE operations), (rotated,) fp16;
 *   encode   the encoder's extra work, the forward product alone: fp16 rows to float times a
 *            float N x N block basis, or the rows in int16 (a fixed power-of-two unit here)
 *            times an int16 basis, as the decoder does.
 * Eight (layer, head) bases in turn, as the eight key slabs of a block have.
 *
 * Run (built as build/bench/bq-basis-speed; it prints GB/s and the ratio to memcpy of the same
 * run):  build/bench/bq-basis-speed
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define T  64
#define D  128
#define H  (D / 2)
#define NB 8 /* bases (slabs) in turn */

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

struct slab {
	uint8_t codes[T * D + 64];
	int32_t byteoff[D], shift[D], mask[D], S[D], LO[D];
	float cs[D], ca[D];
	uint32_t rb;
};

static float rc[T * H], rs[T * H];
static int16_t W[NB][D * D]; /* per group g: [j/2][c][2] pair-interleaved */
static float cscale[NB][D], bias[NB][D], F[NB][D * D];

static void make_slab(struct slab *s)
{
	uint32_t off = 0;
	for (int c = 0; c < D; c++) {
		int b = 2 + rand() % 5;
		s->byteoff[c] = off >> 3;
		s->shift[c] = off & 7;
		s->mask[c] = (1 << b) - 1;
		s->S[c] = 1 + rand() % 60;
		s->LO[c] = -(s->S[c] << (b - 1));
		s->cs[c] = 0.01f;
		s->ca[c] = -0.1f;
		off += b;
	}
	s->rb = (off + 7) / 8;
	for (size_t i = 0; i < sizeof s->codes; i++)
		s->codes[i] = rand();
}

__attribute__((target("avx2,f16c"))) static void dec_today(const struct slab *s, uint16_t *out)
{
	for (int t = 0; t < T; t++) {
		const int *row = (const int *)(s->codes + (size_t)t * s->rb);
		for (int i = 0; i < H; i += 8) {
			__m256 v[2];
			for (int k = 0; k < 2; k++) {
				int c = i + k * H;
				__m256i q = _mm256_i32gather_epi32(
				    row, _mm256_loadu_si256((const __m256i *)(s->byteoff + c)), 1);
				q = _mm256_and_si256(
				    _mm256_srlv_epi32(
					q, _mm256_loadu_si256((const __m256i *)(s->shift + c))),
				    _mm256_loadu_si256((const __m256i *)(s->mask + c)));
				v[k] = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q),
								   _mm256_loadu_ps(s->cs + c)),
						     _mm256_loadu_ps(s->ca + c));
			}
			__m256 c8 = _mm256_loadu_ps(rc + t * H + i),
			       s8 = _mm256_loadu_ps(rs + t * H + i);
			__m256 ra = _mm256_sub_ps(_mm256_mul_ps(v[0], c8), _mm256_mul_ps(v[1], s8));
			__m256 rb = _mm256_add_ps(_mm256_mul_ps(v[1], c8), _mm256_mul_ps(v[0], s8));
			_mm_storeu_si128((__m128i *)(out + t * D + i), _mm256_cvtps_ph(ra, 0));
			_mm_storeu_si128((__m128i *)(out + t * D + i + H), _mm256_cvtps_ph(rb, 0));
		}
	}
}

/* bq's AVX2 value path (codec_bq.c dec_rows_avx2): no rotation */
__attribute__((target("avx2,f16c"))) static void dec_today_v(const struct slab *s, uint16_t *out)
{
	for (int t = 0; t < T; t++) {
		const int *row = (const int *)(s->codes + (size_t)t * s->rb);
		for (int c = 0; c < D; c += 8) {
			__m256i q = _mm256_i32gather_epi32(
			    row, _mm256_loadu_si256((const __m256i *)(s->byteoff + c)), 1);
			q = _mm256_and_si256(
			    _mm256_srlv_epi32(q,
					      _mm256_loadu_si256((const __m256i *)(s->shift + c))),
			    _mm256_loadu_si256((const __m256i *)(s->mask + c)));
			__m256 v = _mm256_add_ps(
			    _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_loadu_ps(s->cs + c)),
			    _mm256_loadu_ps(s->ca + c));
			_mm_storeu_si128((__m128i *)(out + t * D + c), _mm256_cvtps_ph(v, 0));
		}
	}
}

/* integer coordinates of row t into z (int16) */
__attribute__((target("avx2"))) static inline void coords(const struct slab *s, int t, int16_t *z)
{
	const int *row = (const int *)(s->codes + (size_t)t * s->rb);
	for (int c = 0; c < D; c += 16) {
		__m256i q[2];
		for (int k = 0; k < 2; k++) {
			int cc = c + 8 * k;
			__m256i v = _mm256_i32gather_epi32(
			    row, _mm256_loadu_si256((const __m256i *)(s->byteoff + cc)), 1);
			v = _mm256_and_si256(
			    _mm256_srlv_epi32(v,
					      _mm256_loadu_si256((const __m256i *)(s->shift + cc))),
			    _mm256_loadu_si256((const __m256i *)(s->mask + cc)));
			q[k] = _mm256_add_epi32(
			    _mm256_mullo_epi32(v, _mm256_loadu_si256((const __m256i *)(s->S + cc))),
			    _mm256_loadu_si256((const __m256i *)(s->LO + cc)));
		}
		__m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xd8);
		_mm256_storeu_si256((__m256i *)(z + c), p);
	}
}

/* y = z times basis nb (N x N blocks) for two rows: int16, int32 sums, one multiply and add */
__attribute__((target("avx2"))) static inline void mul2(int N, int nb, int16_t z[2][D],
							float y[2][D])
{
	for (int g = 0; g < D / N; g++) {
		const int16_t *B = W[nb] + (size_t)g * N * N;
		for (int c = 0; c < N; c += 16) {
			__m256i a0 = _mm256_setzero_si256(), a1 = a0, b0 = a0, b1 = a0;
			const int16_t *z0 = z[0] + g * N, *z1 = z[1] + g * N;
			for (int j = 0; j < N; j += 2) {
				__m256i w0 = _mm256_loadu_si256(
				    (const __m256i *)(B + (size_t)j * N + 2 * c));
				__m256i w1 = _mm256_loadu_si256(
				    (const __m256i *)(B + (size_t)j * N + 2 * c + 16));
				int32_t p0, p1;
				memcpy(&p0, z0 + j, 4);
				memcpy(&p1, z1 + j, 4);
				__m256i q0 = _mm256_set1_epi32(p0), q1 = _mm256_set1_epi32(p1);
				a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(q0, w0));
				a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(q0, w1));
				b0 = _mm256_add_epi32(b0, _mm256_madd_epi16(q1, w0));
				b1 = _mm256_add_epi32(b1, _mm256_madd_epi16(q1, w1));
			}
			int o = g * N + c;
			__m256 s0 = _mm256_loadu_ps(cscale[nb] + o),
			       s1 = _mm256_loadu_ps(cscale[nb] + o + 8);
			__m256 e0 = _mm256_loadu_ps(bias[nb] + o),
			       e1 = _mm256_loadu_ps(bias[nb] + o + 8);
			_mm256_store_ps(
			    y[0] + o, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a0), s0), e0));
			_mm256_store_ps(
			    y[0] + o + 8,
			    _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a1), s1), e1));
			_mm256_store_ps(
			    y[1] + o, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(b0), s0), e0));
			_mm256_store_ps(
			    y[1] + o + 8,
			    _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(b1), s1), e1));
		}
	}
}

__attribute__((target("avx2,f16c"))) static void dec_basis(int N, const struct slab *s, int nb,
							   int rope, uint16_t *out)
{
	int16_t z[2][D] __attribute__((aligned(32)));
	float y[2][D] __attribute__((aligned(32)));
	for (int t = 0; t < T; t += 2) {
		coords(s, t, z[0]);
		coords(s, t + 1, z[1]);
		mul2(N, nb, z, y);
		for (int r = 0; r < 2 && !rope; r++)
			for (int c = 0; c < D; c += 8)
				_mm_storeu_si128((__m128i *)(out + (t + r) * D + c),
						 _mm256_cvtps_ph(_mm256_load_ps(y[r] + c), 0));
		for (int r = 0; r < 2 && rope; r++)
			for (int i = 0; i < H; i += 8) {
				__m256 a = _mm256_load_ps(y[r] + i),
				       b = _mm256_load_ps(y[r] + i + H);
				__m256 c8 = _mm256_loadu_ps(rc + (t + r) * H + i),
				       s8 = _mm256_loadu_ps(rs + (t + r) * H + i);
				__m256 ra =
				    _mm256_sub_ps(_mm256_mul_ps(a, c8), _mm256_mul_ps(b, s8));
				__m256 rb =
				    _mm256_add_ps(_mm256_mul_ps(b, c8), _mm256_mul_ps(a, s8));
				_mm_storeu_si128((__m128i *)(out + (t + r) * D + i),
						 _mm256_cvtps_ph(ra, 0));
				_mm_storeu_si128((__m128i *)(out + (t + r) * D + i + H),
						 _mm256_cvtps_ph(rb, 0));
			}
	}
}

/* the encoder's forward transform: fp16 rows to float coordinates (no FMA contraction) */
__attribute__((target("avx2,f16c"))) static void fwd_basis(int N, const uint16_t *in, int nb,
							   float *xo)
{
	float x[2][D] __attribute__((aligned(32)));
	for (int t = 0; t < T; t += 2) {
		for (int r = 0; r < 2; r++)
			for (int c = 0; c < D; c += 8)
				_mm256_store_ps(x[r] + c,
						_mm256_cvtph_ps(_mm_loadu_si128(
						    (const __m128i *)(in + (t + r) * D + c))));
		for (int g = 0; g < D / N; g++) {
			const float *A = F[nb] + (size_t)g * N * N;
			for (int c = 0; c < N; c += 16) {
				__m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
				for (int j = 0; j < N; j++) {
					__m256 w0 = _mm256_loadu_ps(A + (size_t)j * N + c),
					       w1 = _mm256_loadu_ps(A + (size_t)j * N + c + 8);
					__m256 q0 = _mm256_broadcast_ss(x[0] + g * N + j),
					       q1 = _mm256_broadcast_ss(x[1] + g * N + j);
					a0 = _mm256_add_ps(a0, _mm256_mul_ps(q0, w0));
					a1 = _mm256_add_ps(a1, _mm256_mul_ps(q0, w1));
					b0 = _mm256_add_ps(b0, _mm256_mul_ps(q1, w0));
					b1 = _mm256_add_ps(b1, _mm256_mul_ps(q1, w1));
				}
				float *o0 = xo + (size_t)t * D + g * N + c, *o1 = o0 + D;
				_mm256_storeu_ps(o0, a0);
				_mm256_storeu_ps(o0 + 8, a1);
				_mm256_storeu_ps(o1, b0);
				_mm256_storeu_ps(o1 + 8, b1);
			}
		}
	}
}

/* the same forward product in integers: fp16 rows to int16 in a power-of-two unit, then mul2 */
__attribute__((target("avx2,f16c"))) static void fwd_basis_i16(int N, const uint16_t *in, int nb,
							       float *xo)
{
	int16_t z[2][D] __attribute__((aligned(32)));
	float y[2][D] __attribute__((aligned(32)));
	__m256 unit = _mm256_set1_ps(4096.0f);
	for (int t = 0; t < T; t += 2) {
		for (int r = 0; r < 2; r++)
			for (int c = 0; c < D; c += 16) {
				__m256 a = _mm256_cvtph_ps(
				    _mm_loadu_si128((const __m128i *)(in + (t + r) * D + c)));
				__m256 b = _mm256_cvtph_ps(
				    _mm_loadu_si128((const __m128i *)(in + (t + r) * D + c + 8)));
				__m256i ia = _mm256_cvtps_epi32(_mm256_mul_ps(a, unit));
				__m256i ib = _mm256_cvtps_epi32(_mm256_mul_ps(b, unit));
				_mm256_store_si256(
				    (__m256i *)(z[r] + c),
				    _mm256_permute4x64_epi64(_mm256_packs_epi32(ia, ib), 0xd8));
			}
		mul2(N, nb, z, y);
		memcpy(xo + (size_t)t * D, y, sizeof y);
	}
}

int main(void)
{
	static struct slab sl[NB];
	static uint16_t out[T * D], in[T * D];
	static float xo[T * D];
	size_t big = 64u << 20;
	uint8_t *m0 = malloc(big), *m1 = malloc(big);
	memset(m0, 1, big);
	memset(m1, 2, big);
	srand(1);
	for (int i = 0; i < NB; i++) {
		make_slab(&sl[i]);
		for (int j = 0; j < D * D; j++) {
			W[i][j] = (int16_t)(rand() % 2048 - 1024);
			F[i][j] = rand() / (float)RAND_MAX - 0.5f;
		}
		for (int c = 0; c < D; c++) {
			cscale[i][c] = 1e-5f;
			bias[i][c] = 0.5f;
		}
	}
	for (int i = 0; i < T * H; i++) {
		rc[i] = 0.6f;
		rs[i] = 0.8f;
	}
	for (int i = 0; i < T * D; i++)
		in[i] = 0x3c00 + (rand() & 0x3ff);
	const double bytes = (double)T * D * 2, dt = 0.5;
	for (int rep = 0; rep < 3; rep++) {
		double t0 = now(), n = 0;
		while (now() - t0 < dt) {
			memcpy(m1, m0, big);
			n += big;
		}
		double mc = n / (now() - t0) / 1e9;
		printf("memcpy %.2f GB/s\n", mc);
		/* key slabs (rotated) and value slabs; a block has as many of each */
		for (int N = 0; N <= 128; N = N ? 2 * N : 32) {
			double gk[2];
			for (int rope = 1; rope >= 0; rope--) {
				t0 = now();
				n = 0;
				while (now() - t0 < dt)
					for (int i = 0; i < NB; i++, n += bytes) {
						if (!N && rope)
							dec_today(&sl[i], out);
						else if (!N)
							dec_today_v(&sl[i], out);
						else
							dec_basis(N, &sl[i], i, rope, out);
					}
				gk[rope] = n / (now() - t0) / 1e9;
			}
			double gb = 2 / (1 / gk[0] + 1 / gk[1]);
			printf(
			    "  decode %-14s K %.2f  V %.2f  block %.2f GB/s out = %.3f x memcpy\n",
			    N == 0    ? "today"
			    : N == 32 ? "basis 32"
			    : N == 64 ? "basis 64"
				      : "basis 128",
			    gk[1], gk[0], gb, gb / mc);
		}
		int Ns[] = {32, 64, 128};
		double g;
		for (int k = 0; k < 3; k++) {
			t0 = now();
			n = 0;
			while (now() - t0 < dt)
				for (int i = 0; i < NB; i++, n += bytes)
					fwd_basis(Ns[k], in, i, xo);
			g = n / (now() - t0) / 1e9;
			printf("  encode product %3d float %.2f GB/s in = %.3f x memcpy\n", Ns[k],
			       g, g / mc);
		}
		for (int k = 0; k < 3; k++) {
			t0 = now();
			n = 0;
			while (now() - t0 < dt)
				for (int i = 0; i < NB; i++, n += bytes)
					fwd_basis_i16(Ns[k], in, i, xo);
			g = n / (now() - t0) / 1e9;
			printf("  encode product %3d int16 %.2f GB/s in = %.3f x memcpy\n", Ns[k],
			       g, g / mc);
		}
	}
	return (out[7] ^ (int)xo[9]) & 1 ? 0 : 0;
}
