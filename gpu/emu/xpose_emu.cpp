// SPDX-License-Identifier: MIT
// gpu/emu/xpose_emu.cpp - see run_emu.sh: gpu_xpose.cu (the transposing gather/scatter of
// token-major pages, its launch loop included) on the CPU, every thread of every thread block
// in turn (the kernel has no barriers or shuffles), against a plain reference written from the
// layout ABI's definition ([layer][K, V][head][token][dim]) and against kvt_gpu_ref_xpose():
// odd sizes (1-byte rows, rows of 6 and 10 bytes, 5 heads, 3-token pages), misaligned bases
// (every access width), vLLM and FlashInfer strides, more jobs than one launch takes, grids
// of 1 to 1000 thread blocks.  Checks whole buffers, so a byte written out of place shows.
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
extern "C" {
#include "kvt_gpu.h"
}
struct dim3e {
	unsigned x;
};
static dim3e blockIdx, gridDim, threadIdx, blockDim;
struct uint4 {
	uint32_t x, y, z, w;
};
struct uint2 {
	uint32_t x, y;
};
typedef void *cudaStream_t;
struct kvt_gpu_engine {
	uint32_t ctas_dev;
	int device;
};
static bool kvt_engine_ok(const kvt_gpu_engine *e)
{
	return e != nullptr;
}
struct kvt_dev_guard {
	explicit kvt_dev_guard(int)
	{
	}
};
#define KVT_CU(call)                                                                               \
	do {                                                                                       \
		if (0)                                                                             \
			goto out;                                                                  \
	} while (0)
#define __device__
#define __forceinline__ inline
#define __global__
#define __grid_constant__
#define __launch_bounds__(n)
static unsigned launches, max_grid;
template <class U, class B> static void emu_launch(uint32_t grid, uint32_t threads, const B &b);
#include XPOSE_EXTRACT
template <class U, class B> static void emu_launch(uint32_t grid, uint32_t threads, const B &b)
{
	launches++;
	if (grid > max_grid)
		max_grid = grid;
	gridDim.x = grid;
	blockDim.x = threads;
	for (unsigned bx = 0; bx < grid; bx++)
		for (unsigned tx = 0; tx < threads; tx++) {
			blockIdx.x = bx;
			threadIdx.x = tx;
			kvt_xpose_kernel<U>(b);
		}
}

static uint64_t rs = 88172645463325252ull;
static uint64_t rnd()
{
	rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
	return rs;
}
static int fails;
#define CHECK(c)                                                                                   \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "xpose_emu: %s:%d: %s\n", __FILE__, __LINE__, #c);         \
			fails++;                                                                   \
			return;                                                                    \
		}                                                                                  \
	} while (0)

struct geo {
	uint32_t L, n_kv, H, D, elt, P, ppb, NB;
	bool flashinfer;
	unsigned mis_pages, mis_blk; // byte offsets of the engine buffer and of the blocks
};

static void run(const geo &g, uint32_t ctas)
{
	const uint64_t row = (uint64_t)g.D * g.elt, page = g.P * g.H * row;
	const uint32_t NE = g.NB * g.ppb + 3; // engine blocks, some never used
	const uint64_t bb = (uint64_t)g.L * g.n_kv * g.ppb * page, T = (uint64_t)g.P * g.ppb;
	const uint64_t layer = (uint64_t)g.n_kv * NE * page;
	std::vector<uint8_t> eng(g.L * layer + 64), blk(g.NB * bb + 64), want(blk.size());
	std::vector<uint8_t> eng0, ref(blk.size());
	std::vector<uint64_t> base(g.L), addr(g.NB);
	std::vector<uint32_t> ids(g.NB * g.ppb), perm(NE);
	kvt_gpu_paged_layout pl;
	kvt_gpu_xgeom x;
	kvt_gpu_engine e = {ctas, -1};
	uint8_t *E = eng.data() + g.mis_pages, *B = blk.data() + g.mis_blk;

	for (uint32_t i = 0; i < NE; i++)
		perm[i] = i;
	for (uint32_t i = NE - 1; i > 0; i--)
		std::swap(perm[i], perm[rnd() % (i + 1)]);
	for (uint32_t i = 0; i < g.NB * g.ppb; i++)
		ids[i] = perm[i];
	for (auto &b : eng)
		b = (uint8_t)rnd();
	eng0 = eng;
	for (uint32_t l = 0; l < g.L; l++)
		base[l] = (uint64_t)(uintptr_t)(E + l * layer);
	for (uint32_t i = 0; i < g.NB; i++)
		addr[i] = (uint64_t)(uintptr_t)(B + i * bb);
	memset(&pl, 0, sizeof(pl));
	pl.size = sizeof(pl);
	pl.n_layers = g.L;
	pl.layer_base = base.data();
	pl.page_bytes = page;
	pl.block_stride = g.flashinfer ? g.n_kv * page : page;
	pl.kv_stride = g.flashinfer ? page : NE * page;
	pl.n_kv = g.n_kv;
	pl.pages_per_block = g.ppb;

	// The ABI's order, element by element: block i, layer l, kv k, head h, token t, dim d.
	memset(want.data(), 0xa5, want.size());
	for (uint32_t i = 0; i < g.NB; i++)
		for (uint32_t l = 0; l < g.L; l++)
			for (uint32_t k = 0; k < g.n_kv; k++)
				for (uint32_t h = 0; h < g.H; h++)
					for (uint64_t t = 0; t < T; t++) {
						uint32_t id = ids[i * g.ppb + t / g.P];
						const uint8_t *src = E + l * layer +
								     k * pl.kv_stride +
								     id * pl.block_stride +
								     ((t % g.P) * g.H + h) * row;
						uint8_t *dst =
						    want.data() + g.mis_blk + i * bb +
						    (((uint64_t)l * g.n_kv + k) * g.H + h) * T *
							row +
						    t * row;
						memcpy(dst, src, row);
					}

	size_t cap = (size_t)g.NB * g.L * g.n_kv * g.ppb;
	std::vector<kvt_gpu_xjob> jobs(cap);
	long nj = kvt_gpu_xpose_jobs(&pl, g.H, (uint32_t)row, ids.data(), addr.data(), g.NB, &x,
				     jobs.data(), cap);
	CHECK(nj == (long)cap);
	CHECK(kvt_gpu_xpose_jobs(&pl, g.H, (uint32_t)row, ids.data(), addr.data(), g.NB, &x,
				 jobs.data(), cap - 1) == -ENOSPC);
	CHECK(x.tokens == g.P && x.heads == g.H && x.head_stride == T * row);

	// gather: the kernel, then the library's reference, against the ABI
	memset(blk.data(), 0xa5, blk.size());
	launches = 0;
	int r = emu_gpu_xpose(&e, &x, jobs.data(), (size_t)nj, 0, nullptr);
	CHECK(r == (int)((nj + KVT_XJOB_MAX - 1) / KVT_XJOB_MAX) && launches == (unsigned)r);
	CHECK(memcmp(blk.data(), want.data(), blk.size()) == 0);
	CHECK(eng == eng0);
	memset(ref.data(), 0xa5, ref.size());
	std::vector<kvt_gpu_xjob> rj(jobs);
	for (auto &j : rj)
		j.blk = j.blk - (uint64_t)(uintptr_t)blk.data() + (uint64_t)(uintptr_t)ref.data();
	CHECK(kvt_gpu_ref_xpose(&x, rj.data(), rj.size(), 0) == 0);
	CHECK(memcmp(ref.data(), want.data(), ref.size()) == 0);

	// scatter: pages cleared, restored from the blocks; unused engine blocks untouched
	std::vector<uint8_t> cleared(eng0);
	for (uint32_t q = 0; q < g.NB * g.ppb; q++)
		for (uint32_t l = 0; l < g.L; l++)
			for (uint32_t k = 0; k < g.n_kv; k++)
				memset(E - eng.data() + cleared.data() + l * layer +
					   k * pl.kv_stride + ids[q] * pl.block_stride,
				       0x5a, page);
	eng = cleared;
	r = emu_gpu_xpose(&e, &x, jobs.data(), (size_t)nj, 1, nullptr);
	CHECK(r >= 1);
	CHECK(eng == eng0);
	CHECK(memcmp(blk.data(), want.data(), blk.size()) == 0);
}

int main()
{
	static const geo gs[] = {
	    // L n_kv H   D elt  P ppb NB  fi  mis
	    {1, 1, 1, 1, 1, 1, 1, 1, false, 0, 0},	// all ones: 1-byte rows
	    {2, 2, 3, 5, 2, 7, 3, 4, false, 0, 0},	// 10-byte rows: 2-byte accesses
	    {1, 2, 5, 6, 1, 3, 2, 3, true, 0, 0},	// fp8, 6-byte rows, FlashInfer
	    {3, 2, 8, 128, 2, 16, 1, 5, false, 0, 0},	// Llama-like, 16-byte accesses
	    {2, 2, 8, 128, 2, 16, 1, 5, false, 16, 48}, // offset by 16: still 16 bytes
	    {2, 2, 4, 64, 2, 16, 4, 3, false, 8, 0},	// 8-byte accesses
	    {2, 2, 4, 64, 2, 16, 4, 3, true, 0, 4},	// 4-byte accesses
	    {2, 2, 4, 64, 2, 16, 4, 3, false, 2, 0},	// 2-byte accesses
	    {1, 2, 4, 64, 1, 16, 4, 3, false, 1, 0},	// 1-byte accesses
	    {2, 2, 1, 128, 2, 1, 5, 3, false, 0, 0},	// one head, one-token pages
	    {2, 2, 32, 64, 2, 2, 2, 2, true, 0, 0},	// many heads
	    {32, 2, 2, 4, 2, 2, 2, 32, false, 0, 0},	// 4096 jobs: 3 launches
	    {3, 1, 3, 96, 2, 5, 3, 4, false, 0, 0},	// one kv tensor
	};
	for (const geo &g : gs)
		for (uint32_t ctas : {1u, 3u, 1000u})
			run(g, ctas);
	if (max_grid != 1000)
		fails++;
	printf("xpose_emu: %zu geometries x 3 grids: %s\n", sizeof(gs) / sizeof(gs[0]),
	       fails ? "FAILED" : "ok");
	return fails ? 1 : 0;
}
