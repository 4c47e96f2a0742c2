/* SPDX-License-Identifier: MIT */
/*
 * gpu_xpose.cu - token-major engine pages <-> kvtier blocks in the layout's [head][token][dim]
 * order (kvt_gpu_xpose(), kvt_gpu.h): the transposing gather of the device API's puts and the
 * scatter of its gets.  A thread block moves one page at a time; its threads walk the page in
 * order (its side of the copy is coalesced) and each access lands in the slab row of its token
 * and head, so rows of head_dim * element size stay contiguous on the slab side too.  The
 * jobs travel as one by-value kernel parameter, like the copy kernels' descriptors.
 * Everything below the "gpu/emu" mark also runs on the CPU, launches included
 * (gpu/emu/xpose_emu.cpp).
 */
#include "gpu_internal.h"

#include <errno.h>
#include <stdlib.h>

/* ---- gpu/emu runs what follows on the CPU ---- */
#define KVT_XJOB_MAX   1900 /* jobs per launch: 30 KB of parameters */
#define KVT_XP_THREADS 256

struct kvt_xbatch {
	struct kvt_gpu_xgeom x;
	uint32_t n;
	uint32_t to_pages;
	struct kvt_gpu_xjob j[KVT_XJOB_MAX];
};

/* One page of job (page, blk), U (1 to 16 bytes) at a time, by threads tid, tid + nth, ... */
template <class U>
__device__ __forceinline__ void kvt_xpose_page(const struct kvt_gpu_xgeom &x, uint64_t page,
					       uint64_t blk, uint32_t to_pages, uint32_t tid,
					       uint32_t nth)
{
	const uint32_t ru = x.row_bytes / (uint32_t)sizeof(U), hu = x.heads * ru;
	const uint32_t n = x.tokens * hu;
	const uint64_t hs = x.head_stride / sizeof(U);
	U *p = (U *)page, *b = (U *)blk;

	for (uint32_t i = tid; i < n; i += nth) {
		const uint32_t t = i / hu, r = i - t * hu, h = r / ru, c = r - h * ru;
		const uint64_t o = h * hs + (uint64_t)t * ru + c;

		if (to_pages)
			p[i] = b[o];
		else
			b[o] = p[i];
	}
}

template <class U>
__global__ void __launch_bounds__(KVT_XP_THREADS)
    kvt_xpose_kernel(const __grid_constant__ kvt_xbatch b)
{
	for (uint32_t i = blockIdx.x; i < b.n; i += gridDim.x)
		kvt_xpose_page<U>(b.x, b.j[i].page, b.j[i].blk, b.to_pages, threadIdx.x,
				  blockDim.x);
}

static int xflush(kvt_xbatch *b, unsigned unit, uint32_t ctas, cudaStream_t stream)
{
	uint32_t grid = b->n < ctas ? b->n : ctas;
	int ret = 0;

	switch (unit) {
	case 16:
		kvt_xpose_kernel<uint4><<<grid, KVT_XP_THREADS, 0, stream>>>(*b);
		break;
	case 8:
		kvt_xpose_kernel<uint2><<<grid, KVT_XP_THREADS, 0, stream>>>(*b);
		break;
	case 4:
		kvt_xpose_kernel<uint32_t><<<grid, KVT_XP_THREADS, 0, stream>>>(*b);
		break;
	case 2:
		kvt_xpose_kernel<uint16_t><<<grid, KVT_XP_THREADS, 0, stream>>>(*b);
		break;
	default:
		kvt_xpose_kernel<uint8_t><<<grid, KVT_XP_THREADS, 0, stream>>>(*b);
		break;
	}
	KVT_CU(cudaGetLastError());
	b->n = 0;
out:
	return ret;
}

int kvt_gpu_xpose(struct kvt_gpu_engine *e, const struct kvt_gpu_xgeom *x,
		  const struct kvt_gpu_xjob *jobs, size_t n, int to_pages, void *stream)
{
	int unit = kvt_gpu_xpose_unit(x, jobs, n), ret = 0, ops = 0;
	kvt_xbatch *b;

	if (!kvt_engine_ok(e) || unit < 0)
		return -EINVAL;
	if (!n)
		return 0;
	/* the batch is 30 KB: keep it off the caller's stack */
	b = (kvt_xbatch *)malloc(sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->x = *x;
	b->n = 0;
	b->to_pages = to_pages ? 1 : 0;
	{
		kvt_dev_guard g(e->device);

		for (size_t i = 0; i < n && !ret; i++) {
			b->j[b->n++] = jobs[i];
			if (b->n == KVT_XJOB_MAX || i + 1 == n) {
				ret = xflush(b, (unsigned)unit, e->ctas_dev, (cudaStream_t)stream);
				ops++;
			}
		}
	}
	free(b);
	return ret < 0 ? ret : ops;
}
