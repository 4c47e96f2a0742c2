// SPDX-License-Identifier: MIT
// gpu/emu/bq_enc_emu.cpp - see run_emu.sh: gpu_bq.cu's encoder kernels on the CPU, a host thread
// per CUDA thread, against the CPU codec's records byte for byte.
#include <barrier>
#include <thread>
#include <vector>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cerrno>
extern "C" {
#include "codec.h"
#include "codec_bq.h"
#define _Static_assert static_assert
#include "codec_internal.h"
#include "kvd.h"
}
#include "bq_format.h"
using std::isfinite;
#define BQ_THREADS     256
#define BQ_ENC_THREADS 128
#define BQ_STAGE_HEAD  8u
struct dim3e {
	unsigned x, y;
};
static thread_local dim3e threadIdx, blockIdx;
static dim3e blockDim;
static std::barrier<> *cta_bar;
static std::barrier<> *wbar[8];
static uint64_t xch[8][32];
static uint8_t g_smem[240000];
#define __global__
#define __shared__ static
struct float4 {
	float x, y, z, w;
};
static float __int_as_float(int i)
{
	float f;
	memcpy(&f, &i, 4);
	return f;
}
static int atomicMin(int32_t *p, int32_t v)
{
	int32_t o = __atomic_load_n(p, __ATOMIC_SEQ_CST);
	while (v < o &&
	       !__atomic_compare_exchange_n(p, &o, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
	}
	return o;
}
static void __syncthreads()
{
	cta_bar->arrive_and_wait();
}
static unsigned W()
{
	return threadIdx.x >> 5;
}
template <class T> static T __shfl_sync(unsigned, T v, unsigned src)
{
	unsigned l = threadIdx.x & 31, w = W();
	xch[w][l] = (uint64_t)v;
	wbar[w]->arrive_and_wait();
	T r = (T)xch[w][src];
	wbar[w]->arrive_and_wait();
	return r;
}
template <class T> static T __shfl_up_sync(unsigned, T v, unsigned k)
{
	unsigned l = threadIdx.x & 31, w = W();
	xch[w][l] = (uint64_t)v;
	wbar[w]->arrive_and_wait();
	T r = l >= k ? (T)xch[w][l - k] : v;
	wbar[w]->arrive_and_wait();
	return r;
}
static inline uint32_t d_ld16(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}
static inline uint32_t d_ld32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline void d_st16(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}
static inline void d_st32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}
struct bq_kargs {
	uint32_t L, H, D, T, ns, bf16;
	uint64_t slot, head, bound, raw;
	struct kvt_bq_params p;
};
static inline int d_rope_slab(const struct bq_kargs &a, uint32_t s)
{
	return a.p.rope_r > 0 && !((s / a.H) & 1);
}
static inline uint32_t d_sink_rows(uint32_t sink, uint32_t first, uint32_t T)
{
	if (sink <= first)
		return 0;
	uint32_t n = sink - first;
	return n >= T ? T : n;
}
#include ENC_EXTRACT

static uint64_t rs = 0x1234567887654321ull;
static uint64_t rnd()
{
	rs ^= rs << 13;
	rs ^= rs >> 7;
	rs ^= rs << 17;
	return rs;
}
static int fails = 0, checked = 0;

static void run(const char *spec, const kvt_codec_geom &g, const uint8_t *blk)
{
	kvt_chain *c;
	kvt_bq_params p;
	if (kvt_chain_parse(spec, &c) || kvt_bq_chain_params(c, &g, &p)) {
		fprintf(stderr, "parse %s\n", spec);
		exit(1);
	}
	size_t raw = kvt_geom_block_bytes(&g);
	bq_kargs a;
	a.L = g.n_layers;
	a.H = g.n_kv_heads;
	a.D = g.head_dim;
	a.T = g.block_tokens;
	a.ns = 2 * a.L * a.H;
	a.bf16 = g.dtype == KVT_DTYPE_BF16;
	a.head = 8 + 4ull * (a.ns + 1);
	a.raw = raw;
	a.p = p;
	a.slot = (bq_slab_bound(a.T, a.D) + 15) & ~15ull;
	a.bound = 32 + a.head + (uint64_t)a.ns * bq_slab_bound(a.T, a.D);
	if (enc_smem_bytes(a.T, a.D) > sizeof(g_smem)) {
		printf("skip smem\n");
		return;
	}
	std::vector<uint8_t> rec(a.bound), grec(a.bound, 0xee), scratch(a.ns * a.slot, 0xcd);
	std::vector<uint32_t> sizes(a.ns);
	ssize_t l = kvt_chain_encode(c, &g, blk, raw, rec.data(), a.bound);
	const void *srcp[1] = {blk};
	void *dstp[1] = {grec.data()};
	uint32_t ft[1] = {g.first_token}, len[1] = {0};
	blockDim.x = BQ_ENC_THREADS;
	for (uint32_t s = 0; s < a.ns; s++) {
		memset(g_smem, 0x77, sizeof(g_smem));
		std::barrier<> b(BQ_ENC_THREADS);
		cta_bar = &b;
		for (int w = 0; w < 8; w++)
			wbar[w] = new std::barrier<>(32);
		std::vector<std::thread> th;
		for (int t = 0; t < BQ_ENC_THREADS; t++)
			th.emplace_back([&, t] {
				threadIdx.x = t;
				blockIdx.x = s;
				blockIdx.y = 0;
				bq_enc_slab_kernel(a, srcp, ft, scratch.data(), sizes.data());
			});
		for (auto &t : th)
			t.join();
		for (int w = 0; w < 8; w++)
			delete wbar[w];
	}
	{
		blockDim.x = 32;
		std::barrier<> b(32);
		wbar[0] = &b;
		std::vector<std::thread> th;
		for (int t = 0; t < 32; t++)
			th.emplace_back([&, t] {
				threadIdx.x = t;
				blockIdx.x = 0;
				bq_enc_head_kernel(a, ft, sizes.data(), dstp, len, 1);
			});
		for (auto &t : th)
			t.join();
	}
	blockDim.x = BQ_THREADS;
	for (uint32_t s = 0; s < a.ns; s++)
		for (int t = 0; t < BQ_THREADS; t++) {
			threadIdx.x = t;
			blockIdx.x = s;
			blockIdx.y = 0;
			bq_enc_move_kernel(a, scratch.data(), sizes.data(), dstp);
		}
	checked++;
	if ((ssize_t)len[0] != l || memcmp(rec.data(), grec.data(), l)) {
		size_t k = 0;
		while (k < (size_t)l && rec[k] == grec[k])
			k++;
		fprintf(stderr,
			"%s geom %u,%u,%u,%u ft %u: len emu %u cpu %zd, first diff byte %zu (emu "
			"%02x cpu %02x)\n",
			spec, a.L, a.H, a.D, a.T, g.first_token, len[0], l, k, grec[k], rec[k]);
		fails++;
	}
	kvt_chain_free(c);
}

#include "emu_blocks.h"

int main()
{
	const char *chains[] = {"bq",
				"bq:k=0.02,v=0.02",
				"bq:k=0.5,v=0.3,outl=0",
				"bq:sink=100,dup=2",
				"bq:dup=0,outl=1",
				"bq:rope=10000",
				"bq:k=0.04,v=0.02,dup=2,rope=500000",
				"bq:k=0.2,v=0.1,dup=4,outl=2,rope=500000"};
	kvd d;
	if (kvd_load(KVD_PATH, &d)) {
		fprintf(stderr, "kvd\n");
		return 1;
	}
	printf("dump L%u H%u D%u\n", d.n_layers, d.n_kv_heads, d.head_dim);
	uint32_t T = 64;
	for (uint32_t b = 0; b < 2; b++) {
		kvt_codec_geom g = {d.n_layers, d.n_kv_heads, d.head_dim, T, KVT_DTYPE_FP16, b * T};
		std::vector<uint16_t> blk(kvt_geom_block_bytes(&g) / 2);
		kvd_block_io(&d, d.k, d.v, b * T, T, blk.data(), 1);
		for (auto ch : chains)
			run(ch, g, (uint8_t *)blk.data());
	}
	emu_synthetic_blocks(
	    rnd, [](const char *ch, kvt_codec_geom g, uint8_t *b, int) { run(ch, g, b); });
	printf("checked %d encodes, %d failures\n", checked, fails);
	return fails != 0;
}
