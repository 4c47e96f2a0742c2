// SPDX-License-Identifier: MIT
// gpu/emu/bq_dec_emu.cpp - see run_emu.sh: gpu_bq.cu's warp decoder (dec_warp_slab) on the CPU, 32
// host threads a warp, against the CPU codec; also paged output and randomly damaged records.
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
struct dim {
	unsigned x;
};
static thread_local dim threadIdx;
static std::barrier<> *bar;
static uint64_t xch[32];
#define FULLM 0xffffffffu
static void __syncwarp()
{
	bar->arrive_and_wait();
}
template <class T> static T __shfl_sync(unsigned, T v, unsigned src)
{
	unsigned l = threadIdx.x & 31;
	xch[l] = (uint64_t)v;
	bar->arrive_and_wait();
	T r = (T)xch[src];
	bar->arrive_and_wait();
	return r;
}
template <class T> static T __shfl_up_sync(unsigned, T v, unsigned k)
{
	unsigned l = threadIdx.x & 31;
	xch[l] = (uint64_t)v;
	bar->arrive_and_wait();
	T r = l >= k ? (T)xch[l - k] : v;
	bar->arrive_and_wait();
	return r;
}
static unsigned __ballot_sync(unsigned, int p)
{
	unsigned l = threadIdx.x & 31;
	xch[l] = p != 0;
	bar->arrive_and_wait();
	unsigned m = 0;
	for (int i = 0; i < 32; i++)
		m |= (unsigned)xch[i] << i;
	bar->arrive_and_wait();
	return m;
}
static int __any_sync(unsigned m, int p)
{
	return __ballot_sync(m, p) != 0;
}
static unsigned __reduce_add_sync(unsigned, unsigned v)
{
	unsigned l = threadIdx.x & 31;
	xch[l] = v;
	bar->arrive_and_wait();
	unsigned s = 0;
	for (int i = 0; i < 32; i++)
		s += (unsigned)xch[i];
	bar->arrive_and_wait();
	return s;
}
static int __popc(unsigned v)
{
	return __builtin_popcount(v);
}
static uint32_t __ldg(const uint32_t *p)
{
	return *p;
}
static uint32_t __funnelshift_r(uint32_t lo, uint32_t hi, uint32_t sh)
{
	return (uint32_t)((((uint64_t)hi << 32) | lo) >> (sh & 31));
}
static inline uint32_t d_ld16(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}
static inline uint32_t d_ld32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
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
#include DEC_EXTRACT

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static uint64_t rnd()
{
	rs ^= rs << 13;
	rs ^= rs >> 7;
	rs ^= rs << 17;
	return rs;
}

/* decode one record with the emulated warp; returns bad flag */
static int emu_decode(const bq_kargs &a, const uint8_t *rec, uint32_t n, uint8_t *out, uint32_t ppb)
{
	std::vector<uint16_t> tab(2 * a.T);
	int bad = 0;
	size_t np = (size_t)a.L * 2 * (ppb ? ppb : 1);
	std::vector<void *> pages(np);
	uint32_t P = ppb ? a.T / ppb : 0;
	std::vector<uint8_t> pg(ppb ? (size_t)np * P * a.H * a.D * 2 : 0);
	for (size_t j = 0; j < np; j++)
		pages[j] = pg.data() + (np - 1 - j) * (size_t)P * a.H * a.D * 2;
	void *dst[1] = {out};
	dec_dst o;
	o.ptrs = ppb ? pages.data() : dst;
	o.ppb = ppb;
	for (uint32_t s = 0; s < a.ns; s++) {
		std::barrier<> b(32);
		bar = &b;
		int okv[32];
		std::vector<std::thread> th;
		for (int l = 0; l < 32; l++)
			th.emplace_back([&, l] {
				threadIdx.x = l;
				okv[l] =
				    dec_warp_slab(a, rec, n, o, 0, s, tab.data(), tab.data() + a.T);
			});
		for (auto &t : th)
			t.join();
		for (int l = 1; l < 32; l++)
			if (okv[l] != okv[0]) {
				fprintf(stderr, "non-uniform result\n");
				exit(1);
			}
		if (!okv[0])
			bad = 1;
	}
	if (ppb && !bad) {
		for (uint32_t lk = 0; lk < 2 * a.L; lk++)
			for (uint32_t h = 0; h < a.H; h++)
				for (uint32_t t = 0; t < a.T; t++) {
					size_t j = (size_t)lk * ppb + t / P;
					memcpy(out + (((size_t)lk * a.H + h) * a.T + t) * a.D * 2,
					       (uint8_t *)pages[j] +
						   ((size_t)(t % P) * a.H + h) * a.D * 2,
					       a.D * 2);
				}
	}
	return bad;
}

static int fails = 0, checked = 0, refused = 0;
static void run(const char *spec, const kvt_codec_geom &g0, const uint8_t *blk, int damage)
{
	kvt_chain *c;
	kvt_bq_params p;
	if (kvt_chain_parse(spec, &c) || kvt_bq_chain_params(c, &g0, &p)) {
		fprintf(stderr, "parse %s\n", spec);
		exit(1);
	}
	size_t raw = kvt_geom_block_bytes(&g0), bound = kvt_chain_max_encoded_size(c, &g0);
	std::vector<uint8_t> rec(bound), dec(raw), out(raw), rec2(bound);
	ssize_t l = kvt_chain_encode(c, &g0, blk, raw, rec.data(), bound);
	if (l <= 0) {
		fprintf(stderr, "encode\n");
		exit(1);
	}
	bq_kargs a;
	a.L = g0.n_layers;
	a.H = g0.n_kv_heads;
	a.D = g0.head_dim;
	a.T = g0.block_tokens;
	a.ns = 2 * a.L * a.H;
	a.bf16 = g0.dtype == KVT_DTYPE_BF16;
	a.head = 8 + 4ull * (a.ns + 1);
	a.raw = raw;
	a.p = p;
	a.slot = a.bound = 0;
	uint32_t ppbs[3] = {0, 1, a.T % 4 == 0 ? 4u : a.T % 2 == 0 ? 2u : a.T};
	for (int r = -1; r < damage; r++) {
		uint32_t n = (uint32_t)l;
		memcpy(rec2.data(), rec.data(), l);
		if (r >= 0) {
			if (rnd() % 16 == 0) {
				n = 32 + (uint32_t)(rnd() % (l - 32));
				st32(rec2.data() + 12, n - 32);
			} else {
				int nb = 1 + rnd() % 3;
				for (int k = 0; k < nb; k++) {
					uint32_t span = rnd() % 2 ? l - 32 : (uint32_t)(l / 8 + 1);
					uint32_t at = 32 + (uint32_t)(rnd() % span) % (l - 32);
					rec2[at] ^= (uint8_t)(1 + rnd() % 255);
				}
			}
		}
		ssize_t cl = kvt_chain_decode(c, rec2.data(), n, dec.data(), raw, NULL);
		int cok = cl == (ssize_t)raw;
		refused += !cok;
		for (int v = 0; v < 3; v++) {
			memset(out.data(), 0xa5, raw);
			int bad = emu_decode(a, rec2.data(), n, out.data(), ppbs[v]);
			checked++;
			if (bad != !cok) {
				fprintf(stderr, "%s r%d v%d: emu bad %d, cpu %zd\n", spec, r, v,
					bad, cl);
				fails++;
				continue;
			}
			if (cok && memcmp(out.data(), dec.data(), raw)) {
				size_t k = 0;
				while (((uint16_t *)out.data())[k] == ((uint16_t *)dec.data())[k])
					k++;
				fprintf(stderr, "%s r%d v%d: element %zu emu %04x cpu %04x\n", spec,
					r, v, k, ((uint16_t *)out.data())[k],
					((uint16_t *)dec.data())[k]);
				fails++;
			}
		}
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
	uint32_t T = 64;
	for (uint32_t b = 0; b < 3; b++) {
		kvt_codec_geom g = {d.n_layers, d.n_kv_heads, d.head_dim, T, KVT_DTYPE_FP16, b * T};
		std::vector<uint16_t> blk(kvt_geom_block_bytes(&g) / 2);
		kvd_block_io(&d, d.k, d.v, b * T, T, blk.data(), 1);
		for (auto ch : chains)
			run(ch, g, (uint8_t *)blk.data(), b == 1 ? 4 : 1);
	}
	emu_synthetic_blocks(
	    rnd, [](const char *ch, kvt_codec_geom g, uint8_t *b, int dmg) { run(ch, g, b, dmg); });
	printf("checked %d decodes (%d refused by the CPU), %d failures\n", checked, refused,
	       fails);
	return fails != 0;
}
