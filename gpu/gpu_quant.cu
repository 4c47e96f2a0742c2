/* SPDX-License-Identifier: MIT */
/*
 * gpu_quant.cu - KIVI-style quantize-on-copy and dequantize-on-copy kernels (layout: GPU.md).
 *
 * Keys: one thread owns CPT adjacent channels of one token group and keeps the group's G rows
 * in registers (G * CPT * 2 = 256 bytes for G <= 64), so the input is read from memory exactly
 * once; CPT shrinks as G grows to keep that budget, and two blocks fit an SM.  Values: one thread
 * owns 8 channels (one 16-byte load) of one token, and the v_group / 8 threads of a group meet with
 * warp shuffles. The arithmetic is the CPU reference's (gpu_ref.c), operation for operation, in
 * IEEE fp32 (no fast-math: division and reciprocal are correctly rounded), so the bytes match it.
 */
#include "gpu_internal.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#define KVT_QJOB_MAX 1300 /* jobs per launch, passed by value (31 KB of parameters) */
#define KVT_QTHREADS 256

struct kvt_qbatch {
	uint32_t n;
	uint32_t pad;
	struct kvt_gpu_qjob j[KVT_QJOB_MAX];
};

template <int DT> __device__ __forceinline__ float to_f(uint16_t b)
{
	if (DT == KVT_GPU_BF16)
		return __uint_as_float((uint32_t)b << 16);
	return __half2float(__ushort_as_half(b));
}

template <int DT> __device__ __forceinline__ uint16_t from_f(float v)
{
	if (DT == KVT_GPU_BF16)
		return __bfloat16_as_ushort(__float2bfloat16_rn(v));
	return __half_as_ushort(__float2half_rn(v));
}

struct kvt_qm {
	float s, z, inv;
	uint32_t packed; /* fp16 scale in the low half, fp16 zero in the high half */
};

template <int BITS> __device__ __forceinline__ kvt_qm qmeta(float mn, float mx)
{
	kvt_qm m;
	float scale;
	__half sh, zh;

	/* + 0.0f turns -0 into +0 so that min/max order never shows in the bytes */
	mn = mn + 0.0f;
	mx = mx + 0.0f;
	scale = (mx - mn) / (float)((1 << BITS) - 1);
	scale = fminf(scale, 65504.0f);
	mn = fminf(fmaxf(mn, -65504.0f), 65504.0f);
	sh = __float2half_rn(scale);
	zh = __float2half_rn(mn);
	m.s = __half2float(sh);
	m.z = __half2float(zh);
	m.inv = m.s > 0.0f ? 1.0f / m.s : 0.0f;
	m.packed = (uint32_t)__half_as_ushort(sh) | (uint32_t)__half_as_ushort(zh) << 16;
	return m;
}

template <int BITS> __device__ __forceinline__ uint32_t quant(float x, const kvt_qm &m)
{
	uint32_t q;

	/* rint, then clamp to [0, 255] in one instruction (NaN -> 0, as fmaxf in the
	 * reference); 4-bit codes clamp further to 15 */
	asm("cvt.rni.sat.u8.f32 %0, %1;" : "=r"(q) : "f"((x - m.z) * m.inv));
	return BITS == 8 ? q : min(q, 15u);
}

/* N bytes moved as one access. */
template <int N> struct kvt_raw;
template <> struct kvt_raw<1> {
	typedef uint8_t t;
};
template <> struct kvt_raw<2> {
	typedef uint16_t t;
};
template <> struct kvt_raw<4> {
	typedef uint32_t t;
};
template <> struct kvt_raw<8> {
	typedef uint2 t;
};
template <> struct kvt_raw<16> {
	typedef uint4 t;
};

template <int N> union kvt_bytes {
	typename kvt_raw<N>::t v;
	uint8_t b[N];
	uint16_t h[N / 2 ? N / 2 : 1];
	uint32_t w[N / 4 ? N / 4 : 1];
};

/* Exact min/max of two packed elements without converting them (fp16/bf16 min and max are
 * exact, as fminf/fmaxf are on their fp32 images). */
template <int DT> struct kvt_pair;
template <> struct kvt_pair<KVT_GPU_FP16> {
	static __device__ __forceinline__ uint32_t min(uint32_t a, uint32_t b)
	{
		__half2 r = __hmin2(*(const __half2 *)&a, *(const __half2 *)&b);
		return *(const uint32_t *)&r;
	}
	static __device__ __forceinline__ uint32_t max(uint32_t a, uint32_t b)
	{
		__half2 r = __hmax2(*(const __half2 *)&a, *(const __half2 *)&b);
		return *(const uint32_t *)&r;
	}
};
template <> struct kvt_pair<KVT_GPU_BF16> {
	static __device__ __forceinline__ uint32_t min(uint32_t a, uint32_t b)
	{
		__nv_bfloat162 r =
		    __hmin2(*(const __nv_bfloat162 *)&a, *(const __nv_bfloat162 *)&b);
		return *(const uint32_t *)&r;
	}
	static __device__ __forceinline__ uint32_t max(uint32_t a, uint32_t b)
	{
		__nv_bfloat162 r =
		    __hmax2(*(const __nv_bfloat162 *)&a, *(const __nv_bfloat162 *)&b);
		return *(const uint32_t *)&r;
	}
};

template <int BITS, int CPT>
__device__ __forceinline__ void store_codes(uint8_t *p, const uint32_t *q)
{
	constexpr int NB = CPT * BITS / 8;
	kvt_bytes<NB> o;

#pragma unroll
	for (int k = 0; k < NB; k++)
		o.b[k] = BITS == 8 ? (uint8_t)q[k] : (uint8_t)(q[2 * k] | q[2 * k + 1] << 4);
	*(typename kvt_raw<NB>::t *)p = o.v;
}

template <int BITS, int CPT>
__device__ __forceinline__ void load_codes(const uint8_t *p, uint32_t *q)
{
	constexpr int NB = CPT * BITS / 8;
	kvt_bytes<NB> in;

	in.v = *(const typename kvt_raw<NB>::t *)p;
#pragma unroll
	for (int k = 0; k < NB; k++) {
		if (BITS == 8) {
			q[k] = in.b[k];
		} else {
			q[2 * k] = in.b[k] & 15u;
			q[2 * k + 1] = in.b[k] >> 4;
		}
	}
}

/* Grids are 2-D: blockIdx.y is the tile, x covers the tile's units, so no unit needs a 64-bit
 * division to find its tile. */

/* Unit r of a tile: token group g, channels [c0, c0 + CPT).  Two blocks per SM at most 128
 * registers each keep loads of one block in flight while the other computes. */
template <int DT, int BITS, int G, int CPT>
__global__ void __launch_bounds__(KVT_QTHREADS, G <= 64 ? 2 : 1)
    kvt_qkeys(const __grid_constant__ kvt_qbatch b, uint32_t T, uint32_t C, uint32_t codes_bytes)
{
	const uint32_t cchunks = C / CPT, per_tile = (T / G) * cchunks;
	const uint8_t *srcb = (const uint8_t *)b.j[blockIdx.y].src;
	uint8_t *dst = (uint8_t *)b.j[blockIdx.y].dst;

	for (uint32_t r = blockIdx.x * blockDim.x + threadIdx.x; r < per_tile;
	     r += gridDim.x * blockDim.x) {
		const uint32_t g = r / cchunks, c0 = (r - g * cchunks) * CPT;
		const uint16_t *src = (const uint16_t *)srcb + (size_t)g * G * C + c0;
		kvt_bytes<2 * CPT> x[G];
		uint32_t mn2[CPT / 2], mx2[CPT / 2], packed[CPT];
		kvt_qm m[CPT];

#pragma unroll
		for (int t = 0; t < G; t++)
			x[t].v = *(const typename kvt_raw<2 * CPT>::t *)(src + (size_t)t * C);
#pragma unroll
		for (int k = 0; k < CPT / 2; k++)
			mn2[k] = mx2[k] = x[0].w[k];
#pragma unroll
		for (int t = 1; t < G; t++) {
#pragma unroll
			for (int k = 0; k < CPT / 2; k++) {
				mn2[k] = kvt_pair<DT>::min(mn2[k], x[t].w[k]);
				mx2[k] = kvt_pair<DT>::max(mx2[k], x[t].w[k]);
			}
		}
#pragma unroll
		for (int k = 0; k < CPT; k++) {
			const int sh = (k & 1) * 16;

			m[k] = qmeta<BITS>(to_f<DT>((uint16_t)(mn2[k / 2] >> sh)),
					   to_f<DT>((uint16_t)(mx2[k / 2] >> sh)));
			packed[k] = m[k].packed;
		}
#pragma unroll
		for (int t = 0; t < G; t++) {
			uint32_t q[CPT];

#pragma unroll
			for (int k = 0; k < CPT; k++)
				q[k] = quant<BITS>(to_f<DT>(x[t].h[k]), m[k]);
			store_codes<BITS, CPT>(dst + ((size_t)(g * G + t) * C + c0) * BITS / 8, q);
		}
		{
			uint8_t *mp = dst + codes_bytes + ((size_t)g * C + c0) * 4;

#pragma unroll
			for (int k = 0; k < CPT; k += 2)
				*(uint2 *)(mp + 4 * k) = make_uint2(packed[k], packed[k + 1]);
		}
	}
}

/* Unit r: 8 channels of TS tokens of one group (dequantization holds nothing across tokens,
 * so it always takes 16-byte stores, and splits long groups for more threads in flight). */
template <int DT, int BITS, int G>
__global__ void __launch_bounds__(KVT_QTHREADS)
    kvt_dqkeys(const __grid_constant__ kvt_qbatch b, uint32_t T, uint32_t C, uint32_t codes_bytes)
{
	constexpr int TS = G < 16 ? G : 16;
	const uint32_t cchunks = C / 8, per_tile = (T / TS) * cchunks;
	const uint8_t *src = (const uint8_t *)b.j[blockIdx.y].src;
	uint16_t *dst = (uint16_t *)b.j[blockIdx.y].dst;

	for (uint32_t r = blockIdx.x * blockDim.x + threadIdx.x; r < per_tile;
	     r += gridDim.x * blockDim.x) {
		const uint32_t tb = r / cchunks, c0 = (r - tb * cchunks) * 8, t0 = tb * TS;
		const uint32_t g = t0 / G;
		const uint4 *mp = (const uint4 *)(src + codes_bytes + ((size_t)g * C + c0) * 4);
		const uint4 m0 = mp[0], m1 = mp[1];
		const uint32_t mw[8] = {m0.x, m0.y, m0.z, m0.w, m1.x, m1.y, m1.z, m1.w};
		float s[8], z[8];

#pragma unroll
		for (int k = 0; k < 8; k++) {
			s[k] = __half2float(__ushort_as_half((uint16_t)mw[k]));
			z[k] = __half2float(__ushort_as_half((uint16_t)(mw[k] >> 16)));
		}
#pragma unroll
		for (int t = 0; t < TS; t++) {
			const size_t e = (size_t)(t0 + t) * C + c0;
			uint32_t q[8];
			kvt_bytes<16> o;

			load_codes<BITS, 8>(src + e * BITS / 8, q);
#pragma unroll
			for (int k = 0; k < 8; k++)
				o.h[k] = from_f<DT>(__fmaf_rn((float)q[k], s[k], z[k]));
			*(uint4 *)(dst + e) = o.v;
		}
	}
}

#define KVT_VUNROLL 2 /* units per thread per iteration: loads in flight before the shuffles */

/* Unit r: 8 channels of one token; v_group / 8 consecutive units form a group. */
template <int DT, int BITS>
__global__ void __launch_bounds__(KVT_QTHREADS)
    kvt_qvals(const __grid_constant__ kvt_qbatch b, uint32_t elems, uint32_t gshift,
	      uint32_t codes_bytes)
{
	const uint32_t chunks = elems / 8, lanes = (1u << gshift) / 8;
	const uint32_t stride = gridDim.x * blockDim.x;
	const uint16_t *src = (const uint16_t *)b.j[blockIdx.y].src;
	uint8_t *dst = (uint8_t *)b.j[blockIdx.y].dst;

	/* every lane of a warp runs the same iterations: the shuffles need them all */
	for (uint32_t base = blockIdx.x * blockDim.x; base < chunks; base += KVT_VUNROLL * stride) {
		kvt_bytes<16> x[KVT_VUNROLL];
		uint32_t mn[KVT_VUNROLL], mx[KVT_VUNROLL];

#pragma unroll
		for (int u = 0; u < KVT_VUNROLL; u++) {
			const uint32_t r = base + threadIdx.x + u * stride;

			x[u].v = r < chunks ? *(const uint4 *)(src + (size_t)r * 8)
					    : *(const uint4 *)src; /* any valid value */
		}
#pragma unroll
		for (int u = 0; u < KVT_VUNROLL; u++) {
			uint32_t a = kvt_pair<DT>::min(x[u].w[0], x[u].w[1]);
			uint32_t c = kvt_pair<DT>::max(x[u].w[0], x[u].w[1]);

			a = kvt_pair<DT>::min(a, kvt_pair<DT>::min(x[u].w[2], x[u].w[3]));
			c = kvt_pair<DT>::max(c, kvt_pair<DT>::max(x[u].w[2], x[u].w[3]));
			a = kvt_pair<DT>::min(a, a >> 16 | a << 16);
			c = kvt_pair<DT>::max(c, c >> 16 | c << 16);
			/* one shuffle per step: min in the low half, -max in the high half
			 * (negation is exact, and min(-x, -y) = -max(x, y)) */
			a = (a & 0xffffu) | ((c ^ 0x8000u) << 16);
			for (uint32_t off = lanes / 2; off; off >>= 1)
				a = kvt_pair<DT>::min(a, __shfl_xor_sync(0xffffffffu, a, off));
			mn[u] = a & 0xffffu;
			mx[u] = (a >> 16) ^ 0x8000u;
		}
#pragma unroll
		for (int u = 0; u < KVT_VUNROLL; u++) {
			const uint32_t r = base + threadIdx.x + u * stride, e0 = r * 8;
			kvt_qm m;
			uint32_t q[8];

			if (r >= chunks)
				continue;
			m = qmeta<BITS>(to_f<DT>((uint16_t)mn[u]), to_f<DT>((uint16_t)mx[u]));
#pragma unroll
			for (int k = 0; k < 8; k++)
				q[k] = quant<BITS>(to_f<DT>(x[u].h[k]), m);
			store_codes<BITS, 8>(dst + (size_t)e0 * BITS / 8, q);
			if (!(e0 & ((1u << gshift) - 1)))
				*(uint32_t *)(dst + codes_bytes + (size_t)(e0 >> gshift) * 4) =
				    m.packed;
		}
	}
}

template <int DT, int BITS>
__global__ void __launch_bounds__(KVT_QTHREADS)
    kvt_dqvals(const __grid_constant__ kvt_qbatch b, uint32_t elems, uint32_t gshift,
	       uint32_t codes_bytes)
{
	const uint32_t chunks = elems / 8, stride = gridDim.x * blockDim.x;
	const uint8_t *src = (const uint8_t *)b.j[blockIdx.y].src;
	uint16_t *dst = (uint16_t *)b.j[blockIdx.y].dst;

	for (uint32_t base = blockIdx.x * blockDim.x + threadIdx.x; base < chunks;
	     base += KVT_VUNROLL * stride) {
		uint32_t q[KVT_VUNROLL][8], w[KVT_VUNROLL];

#pragma unroll
		for (int u = 0; u < KVT_VUNROLL; u++) {
			const uint32_t r = base + u * stride < chunks ? base + u * stride : base;
			const uint32_t e0 = r * 8;

			load_codes<BITS, 8>(src + (size_t)e0 * BITS / 8, q[u]);
			w[u] = *(const uint32_t *)(src + codes_bytes + (size_t)(e0 >> gshift) * 4);
		}
#pragma unroll
		for (int u = 0; u < KVT_VUNROLL; u++) {
			const uint32_t r = base + u * stride;
			const float s = __half2float(__ushort_as_half((uint16_t)w[u]));
			const float z = __half2float(__ushort_as_half((uint16_t)(w[u] >> 16)));
			kvt_bytes<16> o;

			if (r >= chunks)
				continue;
#pragma unroll
			for (int k = 0; k < 8; k++)
				o.h[k] = from_f<DT>(__fmaf_rn((float)q[u][k], s, z));
			*(uint4 *)(dst + (size_t)r * 8) = o.v;
		}
	}
}

/* ---- launch ---------------------------------------------------------------------------- */

struct kvt_qlaunch {
	const struct kvt_gpu_qparams *p;
	struct kvt_gpu_engine *e;
	cudaStream_t stream;
	bool dequant;
	uint32_t kind;
	kvt_qbatch b;
	int ops;
};

/* x-extent of a 2-D grid: enough blocks for each thread to take `per_thread` units of a
 * tile, capped near 32 blocks per SM over all tiles (several waves, so the last one's idle
 * tail stays small). */
static dim3 qgrid(const kvt_qlaunch *l, uint32_t units, uint32_t per_thread)
{
	uint32_t x = (units + KVT_QTHREADS * per_thread - 1) / (KVT_QTHREADS * per_thread);
	uint32_t cap = (uint32_t)l->e->sms * 32 / l->b.n;

	if (x > cap)
		x = cap;
	return dim3(x ? x : 1, l->b.n);
}

template <int DT, int BITS, int G>
static void launch_keys(const kvt_qlaunch *l, uint32_t T, uint32_t C, uint32_t codes)
{
	constexpr int CPT = G <= 16 ? 8 : G == 32 ? 4 : 2;

	if (l->dequant)
		kvt_dqkeys<DT, BITS, G><<<qgrid(l, (T / (G < 16 ? G : 16)) * (C / 8), 1),
					  KVT_QTHREADS, 0, l->stream>>>(l->b, T, C, codes);
	else
		kvt_qkeys<DT, BITS, G, CPT>
		    <<<qgrid(l, (T / G) * (C / CPT), 1), KVT_QTHREADS, 0, l->stream>>>(l->b, T, C,
										       codes);
}

template <int DT, int BITS>
static void launch_keys_g(const kvt_qlaunch *l, uint32_t T, uint32_t C, uint32_t codes)
{
	switch (l->p->k_group) {
	case 8:
		launch_keys<DT, BITS, 8>(l, T, C, codes);
		break;
	case 16:
		launch_keys<DT, BITS, 16>(l, T, C, codes);
		break;
	case 32:
		launch_keys<DT, BITS, 32>(l, T, C, codes);
		break;
	case 64:
		launch_keys<DT, BITS, 64>(l, T, C, codes);
		break;
	default:
		launch_keys<DT, BITS, 128>(l, T, C, codes);
		break;
	}
}

template <int DT, int BITS> static void launch_one(const kvt_qlaunch *l)
{
	const struct kvt_gpu_qparams *p = l->p;
	const uint32_t T = p->tokens, C = (uint32_t)p->heads * p->head_dim;
	const uint32_t codes = T * C * BITS / 8;

	if (l->kind == KVT_GPU_KEYS) {
		launch_keys_g<DT, BITS>(l, T, C, codes);
	} else {
		const uint32_t gshift = (uint32_t)__builtin_ctz(p->v_group);
		const dim3 grid = qgrid(l, T * C / 8, KVT_VUNROLL);

		if (l->dequant)
			kvt_dqvals<DT, BITS>
			    <<<grid, KVT_QTHREADS, 0, l->stream>>>(l->b, T * C, gshift, codes);
		else
			kvt_qvals<DT, BITS>
			    <<<grid, KVT_QTHREADS, 0, l->stream>>>(l->b, T * C, gshift, codes);
	}
}

static int qflush(kvt_qlaunch *l)
{
	int ret = 0;

	if (!l->b.n)
		return 0;
	if (l->p->dtype == KVT_GPU_BF16) {
		if (l->p->bits == 8)
			launch_one<KVT_GPU_BF16, 8>(l);
		else
			launch_one<KVT_GPU_BF16, 4>(l);
	} else {
		if (l->p->bits == 8)
			launch_one<KVT_GPU_FP16, 8>(l);
		else
			launch_one<KVT_GPU_FP16, 4>(l);
	}
	KVT_CU(cudaGetLastError());
	l->ops++;
	l->b.n = 0;
out:
	return ret;
}

static int qrun(struct kvt_gpu_engine *e, const struct kvt_gpu_qparams *p,
		const struct kvt_gpu_qjob *jobs, size_t n, void *stream, bool dequant)
{
	kvt_qlaunch *l = NULL;
	int ret = 0;

	if (!kvt_engine_ok(e) || kvt_gpu_q_check(p) || (n && !jobs))
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if ((jobs[i].kind != KVT_GPU_KEYS && jobs[i].kind != KVT_GPU_VALUES) ||
		    ((jobs[i].src | jobs[i].dst) & 15) || jobs[i].reserved)
			return -EINVAL;
	}
	if (!n)
		return 0;
	/* the batch is 31 KB: keep it off the caller's stack */
	l = (kvt_qlaunch *)malloc(sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->p = p;
	l->e = e;
	l->stream = (cudaStream_t)stream;
	l->dequant = dequant;
	l->ops = 0;
	{
		kvt_dev_guard g(e->device);

		/* one launch per kind and per KVT_QJOB_MAX jobs, in the caller's order */
		for (uint32_t kind = KVT_GPU_KEYS; kind <= KVT_GPU_VALUES && !ret; kind++) {
			l->kind = kind;
			l->b.n = 0;
			for (size_t i = 0; i < n && !ret; i++) {
				if (jobs[i].kind != kind)
					continue;
				l->b.j[l->b.n++] = jobs[i];
				if (l->b.n == KVT_QJOB_MAX)
					ret = qflush(l);
			}
			if (!ret)
				ret = qflush(l);
		}
	}
	if (!ret)
		ret = l->ops;
	free(l);
	return ret;
}

int kvt_gpu_quantize(struct kvt_gpu_engine *e, const struct kvt_gpu_qparams *p,
		     const struct kvt_gpu_qjob *jobs, size_t n, void *stream)
{
	return qrun(e, p, jobs, n, stream, false);
}

int kvt_gpu_dequantize(struct kvt_gpu_engine *e, const struct kvt_gpu_qparams *p,
		       const struct kvt_gpu_qjob *jobs, size_t n, void *stream)
{
	return qrun(e, p, jobs, n, stream, true);
}
