/* SPDX-License-Identifier: MIT */
/*
 * gpu_runtime.cu - devices, IPC pools, host registration and the copy engine of kvt_gpu.h.
 *
 * Copy paths (measured side by side by bench/gpu_bench.sh):
 *  - DMA: one cudaMemcpyAsync per coalesced run; each call costs ~2.5 us of submission, so
 *    1 MiB runs reach 0.88 of the bus and 64 KiB pages stall near 17 GB/s.
 *  - DMA_BATCH: cudaMemcpyBatchAsync, no gap between the copies of a batch.
 *  - STAGED: a gather kernel packs the pages into a device staging half at HBM speed, then
 *    one batched DMA call sends the round's contiguous host runs over the bus; the next half
 *    is gathered while the previous one is in flight (an internal stream and two event
 *    pairs).
 *  - KERNEL: thread blocks load pages and store straight into mapped host memory (or the
 *    reverse): no copy engine at all, at the price of SMs busy for the whole transfer.
 */
#include "gpu_internal.h"

#include <stdlib.h>
#include <string.h>

#define KVT_POOL_MAGIC 0x4c4f4f50u /* "POOL" */

/* Copy kernel descriptors travel as one by-value kernel parameter (up to 32 KiB on sm_70+
 * with CUDA >= 12.1), so a launch needs no descriptor upload and no descriptor memory whose
 * reuse would have to be tracked. */
#define KVT_DESC_MAX 1000
#define KVT_CHUNK    (64u << 10) /* bytes per descriptor: one thread block's share */
#define KVT_DIRECT_MIN                                                                             \
	(8u << 20)		 /* runs this long go straight to DMA: the ~2.5 us each            \
				  * cudaMemcpyAsync costs is < 3 % of them */
#define KVT_RUN_MIN (256u << 10) /* staged pays off when host runs average this much */
#define KVT_THREADS 512

struct kvt_desc {
	uint64_t src;
	uint64_t dst;
	uint32_t len;
	uint32_t pad;
};

struct kvt_copy_batch {
	uint32_t n;
	uint32_t pad;
	struct kvt_desc d[KVT_DESC_MAX];
};

struct kvt_gpu_pool {
	uint32_t magic;
	int device;
	int opened; /* mapped from another process's handle */
	void *base;
	uint64_t bytes;
	uint64_t epoch;
	uint8_t uuid[KVT_GPU_UUID_LEN];
};

int kvt_gpu_err(cudaError_t err, const char *what, const char *file, int line)
{
	fprintf(stderr, "kvt_gpu: %s:%d: %s: %s\n", file, line, what, cudaGetErrorString(err));
	/* Clear the sticky-less error so that the next call starts clean. */
	cudaGetLastError();
	switch (err) {
	case cudaErrorMemoryAllocation:
		return -ENOMEM;
	case cudaErrorInvalidValue:
	case cudaErrorInvalidDevicePointer:
		return -EINVAL;
	case cudaErrorNoDevice:
	case cudaErrorInsufficientDriver:
		return -ENODEV;
	default:
		return -EIO;
	}
}

int kvt_gpu_available(void)
{
	static int cached = -1;
	int n = 0;

	if (cached >= 0)
		return cached;
	if (cudaGetDeviceCount(&n) != cudaSuccess || n < 0) {
		cudaGetLastError();
		n = 0;
	}
	cached = n;
	return n;
}

int kvt_gpu_device_uuid(int ordinal, uint8_t uuid[KVT_GPU_UUID_LEN])
{
	cudaDeviceProp prop;
	int ret = 0;

	if (!uuid || ordinal < 0)
		return -EINVAL;
	if (ordinal >= kvt_gpu_available())
		return -ENODEV;
	KVT_CU(cudaGetDeviceProperties(&prop, ordinal));
	memcpy(uuid, prop.uuid.bytes, KVT_GPU_UUID_LEN);
out:
	return ret;
}

int kvt_gpu_device_by_uuid(const uint8_t uuid[KVT_GPU_UUID_LEN])
{
	int n = kvt_gpu_available();

	if (!uuid)
		return -EINVAL;
	for (int i = 0; i < n; i++) {
		uint8_t u[KVT_GPU_UUID_LEN];

		if (!kvt_gpu_device_uuid(i, u) && !memcmp(u, uuid, KVT_GPU_UUID_LEN))
			return i;
	}
	return -ENODEV;
}

/* ---- pools ------------------------------------------------------------------------------- */

int kvt_gpu_pool_create(const struct kvt_gpu_pool_opts *o, struct kvt_gpu_pool **out)
{
	struct kvt_gpu_pool *p = NULL;
	int ret = 0, dev = 0;

	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!o || o->size < sizeof(*o) || !o->bytes)
		return -EINVAL;
	if (!kvt_gpu_available())
		return -ENODEV;
	if (o->uuid) {
		dev = kvt_gpu_device_by_uuid(o->uuid);
		if (dev < 0)
			return dev;
	}
	p = (struct kvt_gpu_pool *)calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->device = dev;
	p->bytes = o->bytes;
	p->epoch = o->epoch;
	{
		kvt_dev_guard g(dev);

		ret = kvt_gpu_device_uuid(dev, p->uuid);
		if (ret)
			goto out;
		KVT_CU(cudaMalloc(&p->base, o->bytes));
	}
	p->magic = KVT_POOL_MAGIC;
	*out = p;
	p = NULL;
out:
	free(p);
	return ret;
}

int kvt_gpu_pool_export(const struct kvt_gpu_pool *p, struct kvt_gpu_ipc_desc *d)
{
	cudaIpcMemHandle_t h;
	int ret = 0;

	if (!p || p->magic != KVT_POOL_MAGIC || p->opened || !d)
		return -EINVAL;
	{
		kvt_dev_guard g(p->device);

		KVT_CU(cudaIpcGetMemHandle(&h, p->base));
	}
	static_assert(sizeof(h) == sizeof(d->handle), "cudaIpcMemHandle_t is 64 bytes");
	memset(d, 0, sizeof(*d));
	d->magic = KVT_GPU_IPC_MAGIC;
	d->version = KVT_GPU_IPC_VERSION;
	d->size = sizeof(*d);
	memcpy(d->uuid, p->uuid, sizeof(d->uuid));
	d->bytes = p->bytes;
	d->epoch = p->epoch;
	memcpy(d->handle, &h, sizeof(h));
out:
	return ret;
}

int kvt_gpu_pool_open(const struct kvt_gpu_ipc_desc *d, struct kvt_gpu_pool **out)
{
	struct kvt_gpu_pool *p = NULL;
	cudaIpcMemHandle_t h;
	int ret = 0, dev;

	if (!out)
		return -EINVAL;
	*out = NULL;
	/* The descriptor comes from another process: check every field before use. */
	if (!d || d->magic != KVT_GPU_IPC_MAGIC || d->version != KVT_GPU_IPC_VERSION ||
	    d->size != sizeof(*d) || !d->bytes)
		return -EINVAL;
	for (size_t i = 0; i < sizeof(d->reserved); i++)
		if (d->reserved[i])
			return -EINVAL;
	if (!kvt_gpu_available())
		return -ENODEV;
	dev = kvt_gpu_device_by_uuid(d->uuid);
	if (dev < 0)
		return dev;
	p = (struct kvt_gpu_pool *)calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	memcpy(&h, d->handle, sizeof(h));
	{
		kvt_dev_guard g(dev);

		KVT_CU(cudaIpcOpenMemHandle(&p->base, h, cudaIpcMemLazyEnablePeerAccess));
	}
	p->device = dev;
	p->opened = 1;
	p->bytes = d->bytes;
	p->epoch = d->epoch;
	memcpy(p->uuid, d->uuid, sizeof(p->uuid));
	p->magic = KVT_POOL_MAGIC;
	*out = p;
	p = NULL;
out:
	free(p);
	return ret;
}

void kvt_gpu_pool_close(struct kvt_gpu_pool *p)
{
	if (!p || p->magic != KVT_POOL_MAGIC)
		return;
	{
		kvt_dev_guard g(p->device);

		if (p->opened)
			cudaIpcCloseMemHandle(p->base);
		else
			cudaFree(p->base);
	}
	p->magic = 0;
	free(p);
}

void *kvt_gpu_pool_base(const struct kvt_gpu_pool *p)
{
	return p && p->magic == KVT_POOL_MAGIC ? p->base : NULL;
}

uint64_t kvt_gpu_pool_bytes(const struct kvt_gpu_pool *p)
{
	return p && p->magic == KVT_POOL_MAGIC ? p->bytes : 0;
}

int kvt_gpu_pool_device(const struct kvt_gpu_pool *p)
{
	return p && p->magic == KVT_POOL_MAGIC ? p->device : -EINVAL;
}

/* ---- host and device memory ---------------------------------------------------------------- */

int kvt_gpu_host_register(void *addr, size_t len)
{
	int ret = 0;

	if (!addr || !len)
		return -EINVAL;
	if (!kvt_gpu_available())
		return -ENODEV;
	KVT_CU(cudaHostRegister(addr, len, cudaHostRegisterMapped | cudaHostRegisterPortable));
out:
	return ret;
}

int kvt_gpu_host_unregister(void *addr)
{
	int ret = 0;

	if (!addr)
		return -EINVAL;
	KVT_CU(cudaHostUnregister(addr));
out:
	return ret;
}

int kvt_gpu_host_alloc(size_t len, void **out)
{
	int ret = 0;

	if (!out || !len)
		return -EINVAL;
	*out = NULL;
	if (!kvt_gpu_available())
		return -ENODEV;
	KVT_CU(cudaHostAlloc(out, len, cudaHostAllocMapped | cudaHostAllocPortable));
out:
	return ret;
}

void kvt_gpu_host_free(void *p)
{
	if (p)
		cudaFreeHost(p);
}

int kvt_gpu_dev_alloc(int device, size_t len, void **out)
{
	int ret = 0;

	if (!out || !len)
		return -EINVAL;
	*out = NULL;
	if (!kvt_gpu_available())
		return -ENODEV;
	{
		kvt_dev_guard g(device);

		KVT_CU(cudaMalloc(out, len));
	}
out:
	return ret;
}

void kvt_gpu_dev_free(void *p)
{
	if (p)
		cudaFree(p);
}

int kvt_gpu_memcpy(void *dst, const void *src, size_t len)
{
	int ret = 0;

	KVT_CU(cudaMemcpy(dst, src, len, cudaMemcpyDefault));
out:
	return ret;
}

int kvt_gpu_memset(void *dst, int byte, size_t len)
{
	cudaPointerAttributes a;
	int ret = 0;

	KVT_CU(cudaPointerGetAttributes(&a, dst));
	if (a.type == cudaMemoryTypeHost || a.type == cudaMemoryTypeUnregistered) {
		memset(dst, byte, len);
		goto out;
	}
	KVT_CU(cudaMemset(dst, byte, len));
	KVT_CU(cudaDeviceSynchronize());
out:
	return ret;
}

int kvt_gpu_stream_create(void **out)
{
	cudaStream_t s = NULL;
	int ret = 0;

	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!kvt_gpu_available())
		return -ENODEV;
	KVT_CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
	*out = (void *)s;
out:
	return ret;
}

void kvt_gpu_stream_destroy(void *stream)
{
	if (stream)
		cudaStreamDestroy((cudaStream_t)stream);
}

int kvt_gpu_stream_sync(void *stream)
{
	int ret = 0;

	KVT_CU(cudaStreamSynchronize((cudaStream_t)stream));
out:
	return ret;
}

int kvt_gpu_set_device(int ordinal)
{
	int ret = 0;

	if (ordinal < 0 || ordinal >= kvt_gpu_available())
		return -ENODEV;
	KVT_CU(cudaSetDevice(ordinal));
out:
	return ret;
}

int kvt_gpu_event_create(void **out)
{
	cudaEvent_t ev = NULL;
	int ret = 0;

	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!kvt_gpu_available())
		return -ENODEV;
	KVT_CU(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
	*out = (void *)ev;
out:
	return ret;
}

void kvt_gpu_event_destroy(void *ev)
{
	if (ev)
		cudaEventDestroy((cudaEvent_t)ev);
}

int kvt_gpu_event_record(void *ev, void *stream)
{
	int ret = 0;

	if (!ev)
		return -EINVAL;
	KVT_CU(cudaEventRecord((cudaEvent_t)ev, (cudaStream_t)stream));
out:
	return ret;
}

int kvt_gpu_stream_wait(void *stream, void *ev)
{
	int ret = 0;

	if (!ev)
		return -EINVAL;
	KVT_CU(cudaStreamWaitEvent((cudaStream_t)stream, (cudaEvent_t)ev, 0));
out:
	return ret;
}

/* ---- engine ----------------------------------------------------------------------------- */

void kvt_gpu_engine_destroy(struct kvt_gpu_engine *e)
{
	if (!kvt_engine_ok(e))
		return;
	{
		kvt_dev_guard g(e->device);

		if (e->side) {
			cudaStreamSynchronize(e->side);
			cudaStreamDestroy(e->side);
		}
		if (e->ev_start)
			cudaEventDestroy(e->ev_start);
		for (int i = 0; i < 2; i++) {
			if (e->ev_k[i])
				cudaEventDestroy(e->ev_k[i]);
			if (e->ev_c[i])
				cudaEventDestroy(e->ev_c[i]);
		}
		if (e->staging)
			cudaFree(e->staging);
	}
	free(e->tmp);
	free(e->runs);
	free(e->b_dst);
	free(e->b_src);
	free(e->b_len);
	e->magic = 0;
	free(e);
}

int kvt_gpu_engine_create(const struct kvt_gpu_engine_opts *o, struct kvt_gpu_engine **out)
{
	struct kvt_gpu_engine *e = NULL;
	cudaDeviceProp prop;
	int ret = 0, dev;

	if (!out)
		return -EINVAL;
	*out = NULL;
	if (o && o->size < sizeof(*o))
		return -EINVAL;
	if (!kvt_gpu_available())
		return -ENODEV;
	dev = o ? o->device : -1;
	if (dev < 0 && cudaGetDevice(&dev) != cudaSuccess)
		return -ENODEV;
	if (dev >= kvt_gpu_available())
		return -ENODEV;
	e = (struct kvt_gpu_engine *)calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->magic = KVT_GPU_ENGINE_MAGIC;
	e->device = dev;
	e->flags = o ? o->flags : 0;
	e->staging_bytes = o && o->staging_bytes ? o->staging_bytes : (64ull << 20);
	/* each half must hold any run that is not sent directly */
	if (e->staging_bytes < 4 * (uint64_t)KVT_DIRECT_MIN)
		e->staging_bytes = 4 * (uint64_t)KVT_DIRECT_MIN;
	e->staging_bytes &= ~(uint64_t)511;
	{
		kvt_dev_guard g(dev);

		KVT_CU(cudaGetDeviceProperties(&prop, dev));
		e->sms = prop.multiProcessorCount;
		e->host_ptr_ok = prop.canUseHostPointerForRegisteredMem;
		e->ctas_bus =
		    o && o->max_ctas ? o->max_ctas : (uint32_t)(e->sms / 4 ? e->sms / 4 : 1);
		e->ctas_dev =
		    o && o->max_ctas
			? o->max_ctas
			: (uint32_t)(e->sms * (prop.maxThreadsPerMultiProcessor / KVT_THREADS));
		KVT_CU(cudaMalloc(&e->staging, e->staging_bytes));
		KVT_CU(cudaStreamCreateWithFlags(&e->side, cudaStreamNonBlocking));
		KVT_CU(cudaEventCreateWithFlags(&e->ev_start, cudaEventDisableTiming));
		for (int i = 0; i < 2; i++) {
			KVT_CU(cudaEventCreateWithFlags(&e->ev_k[i], cudaEventDisableTiming));
			KVT_CU(cudaEventCreateWithFlags(&e->ev_c[i], cudaEventDisableTiming));
		}
	}
	*out = e;
	e = NULL;
out:
	kvt_gpu_engine_destroy(e);
	return ret;
}

/* One thread block copies one descriptor at a time, 16 bytes per access, four loads in
 * flight per thread before the first store (latency of host memory is microseconds). */
__global__ void __launch_bounds__(KVT_THREADS)
    kvt_copy_kernel(const __grid_constant__ kvt_copy_batch b)
{
	for (uint32_t i = blockIdx.x; i < b.n; i += gridDim.x) {
		const uint64_t src = b.d[i].src, dst = b.d[i].dst;
		const uint32_t len = b.d[i].len;

		if (((src | dst | len) & 15) == 0) {
			const uint4 *s = (const uint4 *)src;
			uint4 *t = (uint4 *)dst;
			const uint32_t nv = len / 16, bd = blockDim.x;
			uint32_t v = threadIdx.x;

			for (; v + 3 * bd < nv; v += 4 * bd) {
				uint4 a0 = s[v], a1 = s[v + bd], a2 = s[v + 2 * bd],
				      a3 = s[v + 3 * bd];

				t[v] = a0;
				t[v + bd] = a1;
				t[v + 2 * bd] = a2;
				t[v + 3 * bd] = a3;
			}
			for (; v < nv; v += bd)
				t[v] = s[v];
		} else {
			const uint8_t *s = (const uint8_t *)src;
			uint8_t *t = (uint8_t *)dst;

			for (uint32_t v = threadIdx.x; v < len; v += blockDim.x)
				t[v] = s[v];
		}
	}
}

__global__ void kvt_signal_kernel(unsigned long long *flag, unsigned long long value)
{
	/* Everything before this kernel on the stream has completed; the fence orders this
	 * write after it for observers outside the GPU (pairs with the host's acquire load). */
	__threadfence_system();
	*(volatile unsigned long long *)flag = value;
	__threadfence_system();
}

/* Builds kernel descriptors from segments (split into KVT_CHUNK pieces) and launches as
 * many kernels as they need.  stage_off: when not NULL, the device side is replaced by
 * staging + running offset (gather: dst; scatter: src). */
struct kvt_launcher {
	struct kvt_gpu_engine *e;
	cudaStream_t stream;
	uint32_t ctas; /* grid cap */
	kvt_copy_batch b;
	int ops;
};

static int launcher_flush(struct kvt_launcher *l)
{
	int ret = 0;
	uint32_t grid;

	if (!l->b.n)
		return 0;
	grid = l->b.n < l->ctas ? l->b.n : l->ctas;
	kvt_copy_kernel<<<grid, KVT_THREADS, 0, l->stream>>>(l->b);
	KVT_CU(cudaGetLastError());
	l->ops++;
	l->b.n = 0;
out:
	return ret;
}

static int launcher_add(struct kvt_launcher *l, uint64_t src, uint64_t dst, uint64_t len)
{
	int ret;

	while (len) {
		uint32_t c = len < KVT_CHUNK ? (uint32_t)len : KVT_CHUNK;

		if (l->b.n == KVT_DESC_MAX) {
			ret = launcher_flush(l);
			if (ret)
				return ret;
		}
		l->b.d[l->b.n].src = src;
		l->b.d[l->b.n].dst = dst;
		l->b.d[l->b.n].len = c;
		l->b.n++;
		src += c;
		dst += c;
		len -= c;
	}
	return 0;
}

static int copy_kernel_path(struct kvt_gpu_engine *e, const struct kvt_gpu_seg *s, size_t n,
			    cudaStream_t stream, struct kvt_launcher *l)
{
	int ret = 0;

	for (size_t i = 0; i < n && !ret; i++)
		ret = launcher_add(l, s[i].src, s[i].dst, s[i].len);
	if (!ret)
		ret = launcher_flush(l);
	return ret ? ret : l->ops;
}

static int copy_dma(const struct kvt_gpu_seg *s, size_t n, cudaStream_t stream)
{
	int ret = 0;

	for (size_t i = 0; i < n; i++)
		KVT_CU(cudaMemcpyAsync((void *)s[i].dst, (const void *)s[i].src, s[i].len,
				       cudaMemcpyDefault, stream));
	ret = (int)n;
out:
	return ret;
}

static bool batch_api(cudaStream_t stream)
{
#if CUDART_VERSION >= 13000
	return stream != NULL; /* the batch API refuses the legacy stream */
#else
	return false;
#endif
}

/* All segments as DMA: one cudaMemcpyBatchAsync per 4096 where the runtime has it (no
 * submission gap between the copies of a batch), else one cudaMemcpyAsync each.  Returns
 * the calls made. */
static int dma_many(struct kvt_gpu_engine *e, const struct kvt_gpu_seg *s, size_t n,
		    cudaStream_t stream)
{
	if (!batch_api(stream))
		return copy_dma(s, n, stream);
#if CUDART_VERSION >= 13000
	struct cudaMemcpyAttributes attr;
	size_t attr_idx = 0;
	const size_t per_call = 4096;
	int ret = 0, ops = 0;

	if (e->b_cap < n) {
		void **d = (void **)realloc(e->b_dst, n * sizeof(*d));
		void **sr = d ? (void **)realloc(e->b_src, n * sizeof(*sr)) : NULL;
		size_t *len = sr ? (size_t *)realloc(e->b_len, n * sizeof(*len)) : NULL;

		if (d)
			e->b_dst = d;
		if (sr)
			e->b_src = sr;
		if (!len)
			return -ENOMEM;
		e->b_len = len;
		e->b_cap = n;
	}
	for (size_t i = 0; i < n; i++) {
		e->b_dst[i] = (void *)s[i].dst;
		e->b_src[i] = (void *)s[i].src;
		e->b_len[i] = s[i].len;
	}
	memset(&attr, 0, sizeof(attr));
	attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
	if (e->flags & KVT_GPU_ENGINE_BATCH_OVERLAP)
		attr.flags = cudaMemcpyFlagPreferOverlapWithCompute;
	for (size_t i = 0; i < n; i += per_call) {
		size_t c = n - i < per_call ? n - i : per_call;

		KVT_CU(cudaMemcpyBatchAsync(e->b_dst + i, (const void *const *)(e->b_src + i),
					    e->b_len + i, c, &attr, &attr_idx, 1, stream));
		ops++;
	}
	ret = ops;
out:
	return ret;
#else
	return copy_dma(s, n, stream);
#endif
}

static int runs_push(struct kvt_gpu_engine *e, size_t *nruns, uint64_t src, uint64_t dst,
		     uint64_t len)
{
	if (*nruns == e->runs_cap) {
		size_t nc = e->runs_cap ? 2 * e->runs_cap : 256;
		struct kvt_gpu_seg *nr = (struct kvt_gpu_seg *)realloc(e->runs, nc * sizeof(*nr));

		if (!nr)
			return -ENOMEM;
		e->runs = nr;
		e->runs_cap = nc;
	}
	e->runs[*nruns].src = src;
	e->runs[*nruns].dst = dst;
	e->runs[*nruns].len = len;
	(*nruns)++;
	return 0;
}

/*
 * Staged path.  D2H per round: [stream] gather kernel into half h -> ev_k[h];
 * [side] wait ev_k[h], DMA the runs to the host -> ev_c[h]; a later round on the same half
 * first makes the stream wait ev_c[h].  H2D is the mirror: [side] DMA runs into half h ->
 * ev_c[h]; [stream] wait ev_c[h], scatter kernel -> ev_k[h]; the side stream waits ev_k[h]
 * before it reuses the half.  A round fits one half and one kernel launch (an early launch
 * would gather into a half still being sent, or scatter data that has not arrived).  Runs
 * of >= KVT_DIRECT_MIN skip the staging buffer.
 */
static int copy_staged(struct kvt_gpu_engine *e, const struct kvt_gpu_seg *s, size_t n, bool d2h,
		       cudaStream_t stream, struct kvt_launcher *l)
{
	const uint64_t half = e->staging_bytes / 2;
	size_t nruns = 0, i = 0;
	uint64_t used = 0;
	unsigned round = 0;
	int ret = 0, ops = 0;

	/* The side stream must not run ahead of work already queued on the caller's stream. */
	KVT_CU(cudaEventRecord(e->ev_start, stream));
	KVT_CU(cudaStreamWaitEvent(e->side, e->ev_start, 0));
	while (i <= n) {
		bool flush = i == n;
		uint64_t host = 0, dev = 0, len = 0;

		if (!flush) {
			host = d2h ? s[i].dst : s[i].src;
			dev = d2h ? s[i].src : s[i].dst;
			len = s[i].len;
			if (len >= KVT_DIRECT_MIN) {
				KVT_CU(cudaMemcpyAsync((void *)s[i].dst, (const void *)s[i].src,
						       len, cudaMemcpyDefault, stream));
				ops++;
				i++;
				continue;
			}
			flush = used + len > half ||
				l->b.n + (len + KVT_CHUNK - 1) / KVT_CHUNK > KVT_DESC_MAX;
		}
		if (flush && used) {
			const unsigned h = round & 1;

			if (d2h) {
				if (round >= 2)
					KVT_CU(cudaStreamWaitEvent(stream, e->ev_c[h], 0));
				ret = launcher_flush(l); /* the gather of this round */
				if (ret)
					goto out;
				KVT_CU(cudaEventRecord(e->ev_k[h], stream));
				KVT_CU(cudaStreamWaitEvent(e->side, e->ev_k[h], 0));
				ret = dma_many(e, e->runs, nruns, e->side);
				if (ret < 0)
					goto out;
				ops += ret;
				KVT_CU(cudaEventRecord(e->ev_c[h], e->side));
			} else {
				if (round >= 2)
					KVT_CU(cudaStreamWaitEvent(e->side, e->ev_k[h], 0));
				ret = dma_many(e, e->runs, nruns, e->side);
				if (ret < 0)
					goto out;
				ops += ret;
				KVT_CU(cudaEventRecord(e->ev_c[h], e->side));
				KVT_CU(cudaStreamWaitEvent(stream, e->ev_c[h], 0));
				ret = launcher_flush(l); /* the scatter of this round */
				if (ret)
					goto out;
				KVT_CU(cudaEventRecord(e->ev_k[h], stream));
			}
			round++;
			used = 0;
			nruns = 0;
		}
		if (i == n)
			break;
		{
			const uint64_t stage = (uint64_t)e->staging + (round & 1) * half + used;
			struct kvt_gpu_seg *last = nruns ? &e->runs[nruns - 1] : NULL;

			/* descriptors of the gather (D2H) or scatter (H2D) of this round */
			ret = d2h ? launcher_add(l, dev, stage, len)
				  : launcher_add(l, stage, dev, len);
			if (ret)
				goto out;
			/* consecutive host ranges are also consecutive in staging: one run */
			if (d2h && last && last->dst + last->len == host &&
			    last->src + last->len == stage)
				last->len += len;
			else if (!d2h && last && last->src + last->len == host &&
				 last->dst + last->len == stage)
				last->len += len;
			else if ((ret = d2h ? runs_push(e, &nruns, stage, host, len)
					    : runs_push(e, &nruns, host, stage, len)))
				goto out;
			/* keep every piece 16-byte aligned in staging for the vector copy */
			used += (len + 15) & ~(uint64_t)15;
		}
		i++;
	}
	/* Work queued on the caller's stream after this call must see the D2H copies done. */
	if (d2h && round) {
		KVT_CU(cudaStreamWaitEvent(stream, e->ev_c[(round - 1) & 1], 0));
		if (round >= 2)
			KVT_CU(cudaStreamWaitEvent(stream, e->ev_c[round & 1], 0));
	}
	ret = ops + l->ops;
out:
	return ret;
}

static enum kvt_gpu_mode pick_mode(const struct kvt_gpu_seg *s, size_t n, enum kvt_gpu_dir dir,
				   cudaStream_t stream)
{
	uint64_t small_bytes = 0, prev_end = 0;
	size_t small_segs = 0, host_runs = 0;

	if (dir == KVT_GPU_D2D)
		return KVT_GPU_KERNEL;
	for (size_t i = 0; i < n; i++) {
		uint64_t host = dir == KVT_GPU_D2H ? s[i].dst : s[i].src;

		if (s[i].len >= KVT_DIRECT_MIN)
			continue;
		small_bytes += s[i].len;
		small_segs++;
		if (!host_runs || host != prev_end)
			host_runs++;
		prev_end = host + s[i].len;
	}
	if (!small_segs)
		return KVT_GPU_DMA;
	/* small device pieces that land in long host runs: gather them, send the runs */
	if (small_bytes / small_segs < KVT_RUN_MIN && small_bytes / host_runs >= KVT_RUN_MIN)
		return KVT_GPU_STAGED;
	if (batch_api(stream))
		return KVT_GPU_DMA_BATCH;
	return small_bytes / host_runs >= KVT_RUN_MIN ? KVT_GPU_STAGED : KVT_GPU_KERNEL;
}

int kvt_gpu_copy(struct kvt_gpu_engine *e, const struct kvt_gpu_seg *segs, size_t n,
		 enum kvt_gpu_dir dir, enum kvt_gpu_mode mode, void *stream)
{
	cudaStream_t st = (cudaStream_t)stream;
	struct kvt_launcher *l = NULL;
	int ret = 0;

	if (!kvt_engine_ok(e) || (n && !segs) ||
	    (dir != KVT_GPU_D2H && dir != KVT_GPU_H2D && dir != KVT_GPU_D2D))
		return -EINVAL;
	if (!n)
		return 0;
	if (e->tmp_cap < n) {
		struct kvt_gpu_seg *t = (struct kvt_gpu_seg *)realloc(e->tmp, n * sizeof(*t));

		if (!t)
			return -ENOMEM;
		e->tmp = t;
		e->tmp_cap = n;
	}
	memcpy(e->tmp, segs, n * sizeof(*segs));
	n = kvt_gpu_seg_coalesce(e->tmp, n);
	if (mode == KVT_GPU_AUTO)
		mode = pick_mode(e->tmp, n, dir, st);
	if (dir == KVT_GPU_D2D && mode == KVT_GPU_STAGED)
		mode = KVT_GPU_KERNEL;
	if (mode == KVT_GPU_KERNEL && dir != KVT_GPU_D2D && !e->host_ptr_ok)
		return -EOPNOTSUPP;
	if (mode == KVT_GPU_DMA_BATCH && !batch_api(st))
		return -EOPNOTSUPP;
	/* the launcher carries a 24 KB descriptor batch: keep it off the caller's stack */
	l = (struct kvt_launcher *)malloc(sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->e = e;
	l->stream = st;
	l->ctas = dir == KVT_GPU_D2D ? e->ctas_dev : e->ctas_bus;
	l->b.n = 0;
	l->ops = 0;
	{
		kvt_dev_guard g(e->device);

		switch (mode) {
		case KVT_GPU_KERNEL:
			ret = copy_kernel_path(e, e->tmp, n, st, l);
			break;
		case KVT_GPU_STAGED:
			ret = copy_staged(e, e->tmp, n, dir == KVT_GPU_D2H, st, l);
			break;
		case KVT_GPU_DMA:
			ret = copy_dma(e->tmp, n, st);
			break;
		case KVT_GPU_DMA_BATCH:
			ret = dma_many(e, e->tmp, n, st);
			break;
		default:
			ret = -EINVAL;
		}
	}
	free(l);
	return ret;
}

int kvt_gpu_signal(struct kvt_gpu_engine *e, void *stream, uint64_t *flag, uint64_t value)
{
	cudaPointerAttributes a;
	unsigned long long *dflag = NULL;
	int ret = 0;

	if (!kvt_engine_ok(e) || !flag || ((uintptr_t)flag & 7))
		return -EINVAL;
	KVT_CU(cudaPointerGetAttributes(&a, flag));
	if (a.type == cudaMemoryTypeUnregistered)
		return -EINVAL; /* plain pageable memory: the GPU cannot write it */
	dflag = (unsigned long long *)a.devicePointer;
	if (!dflag)
		return -EINVAL;
	{
		kvt_dev_guard g(e->device);

		kvt_signal_kernel<<<1, 1, 0, (cudaStream_t)stream>>>(dflag, value);
		KVT_CU(cudaGetLastError());
	}
out:
	return ret;
}
