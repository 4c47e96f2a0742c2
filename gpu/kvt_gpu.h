/* SPDX-License-Identifier: MIT */
/*
 * kvt_gpu.h - the device side of kvtier (DESIGN §2 "GPU tier"): device pools shared over CUDA
 * IPC, a copy engine that moves KV pages between GPU memory and pinned host memory or a pool,
 * and KIVI-style quantize/dequantize kernels.  Plain C; the same header whether the library
 * was built with CUDA (gpu_*.cu) or without (gpu_stub.c, where everything that needs a device
 * returns -ENODEV).
 *
 * Conventions
 *  - Functions return >= 0 on success or -errno.  -ENODEV: no usable GPU or no CUDA build.
 *    -EIO: a CUDA call failed (the CUDA error is logged to stderr once per call site).
 *  - Addresses are plain 64-bit virtual addresses.  CUDA unified addressing makes device
 *    pointers, pool pointers and host memory registered with kvt_gpu_host_register() (or
 *    allocated with kvt_gpu_host_alloc()) valid in the same space, so a kernel reads and
 *    writes registered host memory directly ("zero-copy", over PCIe or C2C).
 *  - A stream argument is a cudaStream_t passed as void *; NULL is the legacy default stream.
 *    Work is enqueued on it and the call returns without waiting, unless it says otherwise.
 *  - Option structs start with a size field (set it to sizeof) so they can grow.
 *  - Thread safety: pools and host registration are thread-safe (CUDA's own locking).  An
 *    engine is not: use one engine per thread and per stream (it owns one staging buffer).
 *  - Functions marked [host] need no GPU and work in the stub build too.
 *
 * Quantized byte layout (the contract with the CPU codecs): gpu/GPU.md.
 */
#ifndef KVT_GPU_H
#define KVT_GPU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- devices -------------------------------------------------------------------------- */

/* Number of CUDA devices this process can use; 0 when none, when the driver refuses, or in the
 * stub build.  Never fails; cheap after the first call. */
int kvt_gpu_available(void);

#define KVT_GPU_UUID_LEN 16

/* The 16-byte UUID of device `ordinal` (as nvidia-smi -L prints it). 0 or -ENODEV/-EINVAL. */
int kvt_gpu_device_uuid(int ordinal, uint8_t uuid[KVT_GPU_UUID_LEN]);

/* Ordinal (>= 0) of the device whose UUID is `uuid`, or -ENODEV. */
int kvt_gpu_device_by_uuid(const uint8_t uuid[KVT_GPU_UUID_LEN]);

/* [host] Parses "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (the "GPU-" prefix and dashes are
 * optional, hex digits in either case).  0 or -EINVAL. */
int kvt_gpu_uuid_parse(const char *s, uint8_t uuid[KVT_GPU_UUID_LEN]);

/* [host] Formats as "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (41 bytes with the NUL). */
void kvt_gpu_uuid_format(const uint8_t uuid[KVT_GPU_UUID_LEN], char out[41]);

/* ---- device memory pools, shared once over CUDA IPC ----------------------------------------
 * The daemon creates a pool (one cudaMalloc) and exports it once; each client opens the
 * descriptor once and copies device-to-device into it on its own stream.  The daemon manages
 * offsets inside the pool; this module only maps the bytes.  A daemon restart makes a new
 * pool with a higher epoch: clients close the old mapping and open the new descriptor. */

struct kvt_gpu_pool;

#define KVT_GPU_IPC_MAGIC   0x5047564bu /* "KVGP" */
#define KVT_GPU_IPC_VERSION 1u

/* What travels over the control socket (128 bytes, little-endian, no pointers). */
struct kvt_gpu_ipc_desc {
	uint32_t magic;	  /* KVT_GPU_IPC_MAGIC */
	uint16_t version; /* KVT_GPU_IPC_VERSION */
	uint16_t size;	  /* sizeof(struct kvt_gpu_ipc_desc) */
	uint8_t uuid[KVT_GPU_UUID_LEN];
	uint64_t bytes;	      /* pool length */
	uint64_t epoch;	      /* daemon epoch the pool belongs to */
	uint8_t handle[64];   /* cudaIpcMemHandle_t */
	uint8_t reserved[24]; /* zero */
};

struct kvt_gpu_pool_opts {
	uint32_t size;	     /* sizeof(struct kvt_gpu_pool_opts) */
	uint32_t flags;	     /* 0 */
	const uint8_t *uuid; /* device to allocate on; NULL: device 0 */
	uint64_t bytes;	     /* pool length, > 0 */
	uint64_t epoch;	     /* copied into the descriptor */
};

/* Daemon side: allocates the pool.  The memory is not cleared.  0 or -ENODEV/-EINVAL/-ENOMEM. */
int kvt_gpu_pool_create(const struct kvt_gpu_pool_opts *o, struct kvt_gpu_pool **out);

/* Daemon side: fills *d for a pool made by kvt_gpu_pool_create.  -EINVAL on an opened pool. */
int kvt_gpu_pool_export(const struct kvt_gpu_pool *p, struct kvt_gpu_ipc_desc *d);

/* Client side (another process): maps a pool from its descriptor, on the device that has the
 * descriptor's UUID.  Every field is checked before use (-EINVAL, -ENODEV when no device has
 * that UUID, -EIO when CUDA refuses the handle).  Opening in the exporting process fails. */
int kvt_gpu_pool_open(const struct kvt_gpu_ipc_desc *d, struct kvt_gpu_pool **out);

/* Frees a created pool or unmaps an opened one.  NULL is a no-op.  Work still queued on the
 * pool must be finished first. */
void kvt_gpu_pool_close(struct kvt_gpu_pool *p);

void *kvt_gpu_pool_base(const struct kvt_gpu_pool *p);
uint64_t kvt_gpu_pool_bytes(const struct kvt_gpu_pool *p);
int kvt_gpu_pool_device(const struct kvt_gpu_pool *p); /* device ordinal in this process */

/* ---- host memory --------------------------------------------------------------------------- */

/* Pins and maps [addr, addr+len) for DMA and zero-copy kernels (cudaHostRegister, mapped,
 * portable).  Works on a MAP_SHARED memfd mapping (the host arena).  Do it once per mapping,
 * never per request: it costs milliseconds per GiB. */
int kvt_gpu_host_register(void *addr, size_t len);
int kvt_gpu_host_unregister(void *addr);

/* Pinned, mapped host memory (cudaHostAlloc); for tests, benchmarks and completion flags. */
int kvt_gpu_host_alloc(size_t len, void **out);
void kvt_gpu_host_free(void *p);

/* Plain device memory on `device` (-1: current).  The memory is not cleared. */
int kvt_gpu_dev_alloc(int device, size_t len, void **out);
void kvt_gpu_dev_free(void *p);

/* Synchronous copy in any direction (unified addressing); for tests and set-up, not hot paths. */
int kvt_gpu_memcpy(void *dst, const void *src, size_t len);
/* Synchronous byte fill of device or registered memory. */
int kvt_gpu_memset(void *dst, int byte, size_t len);

int kvt_gpu_stream_create(void **out); /* non-blocking stream on the current device */
void kvt_gpu_stream_destroy(void *stream);
int kvt_gpu_stream_sync(void *stream);
int kvt_gpu_set_device(int ordinal);
/* Order between two streams without a host wait: kvt_gpu_stream_wait(s, ev) makes the work
 * queued on s afterwards wait for the work queued before the last kvt_gpu_event_record(ev, ...)
 * (an event never recorded: no wait).  Events are made without timing, on the current device. */
int kvt_gpu_event_create(void **out);
void kvt_gpu_event_destroy(void *ev);
int kvt_gpu_event_record(void *ev, void *stream);
int kvt_gpu_stream_wait(void *stream, void *ev);

/* ---- copy engine --------------------------------------------------------------------------- */

struct kvt_gpu_engine;

struct kvt_gpu_engine_opts {
	uint32_t size;		/* sizeof(struct kvt_gpu_engine_opts) */
	int32_t device;		/* ordinal; -1: the current device */
	uint64_t staging_bytes; /* device staging buffer of the staged path; 0: 64 MiB;
				 * at least 32 MiB */
	uint32_t max_ctas;	/* cap on thread blocks of the copy kernels; 0: SMs / 4 for
				 * transfers over the bus (more only contend for it), 4 per SM
				 * device to device */
	uint32_t flags;		/* KVT_GPU_ENGINE_* */
};

/* DMA_BATCH asks the driver to prefer overlap with compute
 * (cudaMemcpyFlagPreferOverlapWithCompute). */
#define KVT_GPU_ENGINE_BATCH_OVERLAP 1u

/* o may be NULL (defaults, current device).  Allocates the staging buffer and an internal
 * stream; 0 or -ENODEV/-EINVAL/-ENOMEM/-EIO. */
int kvt_gpu_engine_create(const struct kvt_gpu_engine_opts *o, struct kvt_gpu_engine **out);
/* Waits for the engine's internal stream and frees it.  NULL is a no-op. */
void kvt_gpu_engine_destroy(struct kvt_gpu_engine *e);

/* One contiguous piece: len bytes from src to dst. */
struct kvt_gpu_seg {
	uint64_t src;
	uint64_t dst;
	uint64_t len;
};

enum kvt_gpu_dir {
	KVT_GPU_D2H = 1, /* device (pages, pool) -> registered host memory */
	KVT_GPU_H2D = 2, /* registered host memory -> device */
	KVT_GPU_D2D = 3, /* device -> device (a pool, or pages of the same process) */
};

enum kvt_gpu_mode {
	/* Picks per batch (thresholds measured on an H200, see gpu/GPU.md): runs >= 8 MiB as
	 * plain DMA; small device pages whose host side forms runs >= 256 KiB through the staging
	 * buffer; other batches with one cudaMemcpyBatchAsync where the CUDA runtime has it and
	 * the stream is not NULL, else the zero-copy kernel; D2D with the device copy kernel. */
	KVT_GPU_AUTO = 0,
	/* Thread blocks read device pages and write host memory directly (or the reverse): no
	 * copy engine, but SMs stay busy for the whole transfer. */
	KVT_GPU_KERNEL = 1,
	/* Gather kernel into a device staging buffer + DMA of each contiguous host run (one
	 * batched call per round where available; double-buffered on an internal stream); H2D is
	 * the mirror image.  Runs >= 8 MiB go straight to DMA. */
	KVT_GPU_STAGED = 2,
	/* One cudaMemcpyAsync per run after coalescing (the baseline). */
	KVT_GPU_DMA = 3,
	/* cudaMemcpyBatchAsync (CUDA >= 13); -EOPNOTSUPP where absent.  Not on the NULL stream. */
	KVT_GPU_DMA_BATCH = 4,
};

/*
 * Enqueues the copies on `stream`.  Segments must not overlap each other's destination.  The
 * kernel paths move 16 bytes per access where src, dst and len are multiples of 16 (bytewise
 * otherwise).  Host addresses must lie in registered or kvt_gpu_host_alloc'd memory.  The
 * copies are complete when work enqueued afterwards on `stream` runs (kvt_gpu_signal).  The
 * segment array is read before the call returns.  Returns the number of device operations
 * enqueued (kernel launches and memcpys, >= 0) or -EINVAL/-EOPNOTSUPP/-EIO.
 */
int kvt_gpu_copy(struct kvt_gpu_engine *e, const struct kvt_gpu_seg *segs, size_t n,
		 enum kvt_gpu_dir dir, enum kvt_gpu_mode mode, void *stream);

/*
 * Completion without CUDA events: enqueues on `stream` a write of `value` to *flag, which
 * lands after all work enqueued before it on that stream (copies included) is complete and
 * visible to the host.  flag: 8-byte aligned, in registered/pinned host memory (e.g. inside
 * the shared arena, so the daemon sees it too) or in device memory.  Use increasing values
 * and kvt_gpu_flag_wait().
 */
int kvt_gpu_signal(struct kvt_gpu_engine *e, void *stream, uint64_t *flag, uint64_t value);

/* [host] Polls until *flag >= value (acquire), then returns 0; -ETIMEDOUT after timeout_ns
 * (< 0: forever).  Works in any process that maps the flag. */
int kvt_gpu_flag_wait(const uint64_t *flag, uint64_t value, int64_t timeout_ns);
/* [host] 1 when *flag >= value, else 0 (acquire). */
int kvt_gpu_flag_done(const uint64_t *flag, uint64_t value);

/* ---- layouts: from engine pages to segments [host] ----------------------------------------
 * An engine keeps, per layer, one tensor of pages addressed by engine block id:
 *   vLLM          [2, num_blocks, block_size, heads, dim]: kv_stride = num_blocks * page_bytes,
 *                                                          block_stride = page_bytes
 *   FlashInfer    [num_blocks, 2, block_size, heads, dim]: kv_stride = page_bytes,
 *                                                          block_stride = 2 * page_bytes
 *   one buffer    n_layers = 1, n_kv = 1, page_bytes = block_stride = bytes of one block
 * A kvtier block holds pages_per_block engine blocks of all layers, page-first (DESIGN §3):
 *   offset(layer l, kv k, page j) = ((l * n_kv + k) * pages_per_block + j) * page_bytes
 * so each layer's K (then V) is one contiguous slice of pages_per_block * page_bytes. */
struct kvt_gpu_paged_layout {
	uint32_t size; /* sizeof(struct kvt_gpu_paged_layout) */
	uint32_t n_layers;
	const uint64_t *layer_base; /* n_layers device addresses */
	uint64_t page_bytes;	    /* block_size * heads * dim * element size */
	uint64_t block_stride;	    /* bytes from engine block b to b+1 within one layer's K */
	uint64_t kv_stride;	    /* bytes from a page's K to its V */
	uint32_t n_kv;		    /* 2 (K and V), or 1 (one latent tensor, or one buffer) */
	uint32_t pages_per_block;   /* engine blocks per kvtier block, >= 1 */
};

/* Bytes of one kvtier block in this layout; 0 when the layout is invalid. */
uint64_t kvt_gpu_paged_block_bytes(const struct kvt_gpu_paged_layout *l);

/* Segments for nblocks kvtier blocks: engine block ids ids[i * pages_per_block + j] go to
 * (D2H, D2D) or come from (H2D) the kvtier block at address addr[i]; dir only says which side
 * is the kvtier block (to restore pages from a pool block, pass H2D and copy with D2D).  Writes
 * nblocks * n_layers * n_kv * pages_per_block segments in destination order (D2H) or source
 * order (H2D), adjacent pages merged, into segs (cap entries).  Returns the number written,
 * -ENOSPC when cap is too small, -EINVAL on a bad layout. */
long kvt_gpu_paged_segments(const struct kvt_gpu_paged_layout *l, const uint32_t *ids,
			    const uint64_t *addr, size_t nblocks, enum kvt_gpu_dir dir,
			    struct kvt_gpu_seg *segs, size_t cap);

/* [host] Merges in place each segment whose src and dst both continue the previous one's.
 * Returns the new count. */
size_t kvt_gpu_seg_coalesce(struct kvt_gpu_seg *segs, size_t n);

/* ---- token-major pages <-> blocks in the layout's order ------------------------------------
 * Engines that keep a page token-major, [P tokens][H heads][row bytes] (vLLM, SGLang,
 * FlashInfer; row = head_dim * element size), hold a block's tokens in an order the layout ABI
 * does not declare: per layer, K then V, each [head][token][dim] (proto/kvt_abi.h).  These
 * calls move pages to and from blocks in the ABI's order: page j of a block's K (or V) slab of
 * one layer holds the slab's tokens j*P .. j*P+P-1, and
 *   page byte  (t * H + h) * row + c   <->   slab byte  h * head_stride + (j * P + t) * row + c
 * with head_stride = pages_per_block * P * row.  One job is one page and the place of its
 * first token's head-0 row in the slab (slab + j * P * row). */
struct kvt_gpu_xgeom {
	uint32_t heads;	      /* H, >= 1 */
	uint32_t tokens;      /* P: tokens of one page, >= 1 */
	uint32_t row_bytes;   /* head_dim * element size, >= 1 */
	uint32_t reserved;    /* 0 */
	uint64_t head_stride; /* bytes from head h to h + 1 in the slab, >= tokens * row_bytes */
};

struct kvt_gpu_xjob {
	uint64_t page; /* the page: device memory */
	uint64_t blk;  /* head 0, first token of the page, in the slab: device memory */
};

/* [host] The jobs for nblocks kvtier blocks of paged layout l whose pages hold `heads` heads
 * of row_bytes each (page_bytes = P * heads * row_bytes): engine blocks ids[i * ppb + j] <->
 * the block at addr[i], per layer K (kv 0, at layer_base) then V.  Fills *x and writes
 * nblocks * n_layers * n_kv * ppb jobs (page order) into jobs (cap entries).  Returns the
 * number written, -ENOSPC when cap is too small, -EINVAL when the pages do not split so. */
long kvt_gpu_xpose_jobs(const struct kvt_gpu_paged_layout *l, uint32_t heads, uint32_t row_bytes,
			const uint32_t *ids, const uint64_t *addr, size_t nblocks,
			struct kvt_gpu_xgeom *x, struct kvt_gpu_xjob *jobs, size_t cap);

/* Queues the n jobs on stream: to_pages 0 gathers pages into their slabs (token-major ->
 * head-major), 1 scatters slabs into pages.  Jobs must not overlap each other's destination;
 * the jobs array is read before the call returns (passed by value, as the copy kernels' lists).
 * Moves 16, 8, 4, 2 or 1 bytes per access, the widest that row_bytes, head_stride and every
 * address allow.  Returns kernel launches enqueued (>= 0) or -EINVAL/-EIO/-ENODEV. */
int kvt_gpu_xpose(struct kvt_gpu_engine *e, const struct kvt_gpu_xgeom *x,
		  const struct kvt_gpu_xjob *jobs, size_t n, int to_pages, void *stream);

/* [host] The access width kvt_gpu_xpose() uses for these jobs (16, 8, 4, 2 or 1 bytes), or
 * -EINVAL for parameters it refuses (zero sizes, reserved set, head_stride below a page's
 * tokens, a page of 2 GiB or more, jobs without addresses). */
int kvt_gpu_xpose_unit(const struct kvt_gpu_xgeom *x, const struct kvt_gpu_xjob *jobs, size_t n);

/* [host] The same on host memory (the reference of the tests). 0 or -EINVAL. */
int kvt_gpu_ref_xpose(const struct kvt_gpu_xgeom *x, const struct kvt_gpu_xjob *jobs, size_t n,
		      int to_pages);

/* ---- KIVI-style quantization ---------------------------------------------------------------
 * One tile is one page of K or V: [tokens][heads][head_dim] elements of fp16 or bf16.
 * Keys are quantized per channel over groups of k_group tokens, values per token over groups
 * of v_group channels; each group has an fp16 scale and an fp16 zero (its minimum):
 *   q = clamp(rint((x - zero) * (1 / scale)), 0, 2^bits - 1),  x' = fma(q, scale, zero).
 * The exact byte layout is in gpu/GPU.md. */

enum kvt_gpu_dtype {
	KVT_GPU_FP16 = 1,
	KVT_GPU_BF16 = 2,
};

enum kvt_gpu_kv {
	KVT_GPU_KEYS = 0,
	KVT_GPU_VALUES = 1,
};

struct kvt_gpu_qparams {
	uint32_t size;	 /* sizeof(struct kvt_gpu_qparams) */
	uint8_t bits;	 /* 8 or 4 */
	uint8_t dtype;	 /* enum kvt_gpu_dtype of the unquantized side */
	uint16_t tokens; /* tokens per tile, a multiple of k_group */
	uint16_t heads;
	uint16_t head_dim; /* a multiple of 8 and of v_group */
	uint16_t k_group;  /* 8, 16, 32, 64 or 128 tokens */
	uint16_t v_group;  /* 8, 16, 32, 64, 128 or 256 channels */
};

/* [host] 0 when the parameters are supported, else -EINVAL. */
int kvt_gpu_q_check(const struct kvt_gpu_qparams *p);
/* [host] Encoded bytes of one tile (codes + metadata); 0 when the parameters are invalid. */
size_t kvt_gpu_q_bytes(const struct kvt_gpu_qparams *p, enum kvt_gpu_kv kind);
/* [host] Unquantized bytes of one tile. */
size_t kvt_gpu_q_raw_bytes(const struct kvt_gpu_qparams *p);

/* One tile to convert.  kind: enum kvt_gpu_kv.  src and dst 16-byte aligned. */
struct kvt_gpu_qjob {
	uint64_t src;
	uint64_t dst;
	uint32_t kind;
	uint32_t reserved; /* 0 */
};

/* Quantize-on-copy: src tiles in device memory, dst in device memory or registered host
 * memory (then the encoded bytes cross the bus once, compressed).  Enqueued on stream;
 * the jobs array is read before the call returns.  Returns kernel launches enqueued. */
int kvt_gpu_quantize(struct kvt_gpu_engine *e, const struct kvt_gpu_qparams *p,
		     const struct kvt_gpu_qjob *jobs, size_t n, void *stream);
/* Dequantize-on-copy: src encoded tiles in device or registered host memory, dst tiles in
 * device memory. */
int kvt_gpu_dequantize(struct kvt_gpu_engine *e, const struct kvt_gpu_qparams *p,
		       const struct kvt_gpu_qjob *jobs, size_t n, void *stream);

/* ---- quantized kvtier blocks [host] ---------------------------------------------------------
 * How the GPU tier keeps a block with codec int8 (or int4): its tiles are the engine pages
 * (tile_tokens = tokens of one page), quantized one by one and packed in the block's own
 * order -- per layer the K tiles of its pages_per_block pages, then the V tiles -- each tile
 * rounded up to 16 bytes so that every tile starts aligned:
 *   enc_offset(l, kv, j) = l * ppb * (k_bytes + v_bytes) + kv * ppb * k_bytes
 *                          + j * (kv ? v_bytes : k_bytes)
 *   raw_offset(l, kv, j) = ((l * 2 + kv) * ppb + j) * raw_tile
 * Groups: k_group = the largest of 32, 16, 8 dividing tile_tokens; v_group = the largest of
 * 32, 16, 8 dividing head_dim.  Client and daemon both derive the format from these rules. */
struct kvt_gpu_kvq {
	struct kvt_gpu_qparams qp;
	uint32_t n_layers, pages_per_block;
	uint64_t k_bytes, v_bytes; /* one encoded tile, rounded up to 16 */
	uint64_t raw_tile;	   /* bytes of one unquantized tile */
	uint64_t enc_bytes;	   /* the encoded block */
	uint64_t raw_bytes;	   /* the block as readers see it */
};

/* [host] The format of a raw_bytes block of n_layers layers (K and V), dtype fp16 or bf16
 * (enum kvt_gpu_dtype), pages of tile_tokens tokens.  0, or -EINVAL when the geometry does
 * not fit the kernels (then the block is kept raw). */
int kvt_gpu_kvq_plan(unsigned bits, unsigned dtype, unsigned heads, unsigned head_dim,
		     unsigned tile_tokens, unsigned n_layers, uint64_t raw_bytes,
		     struct kvt_gpu_kvq *out);
/* [host] Byte offset of tile (layer, kv, page) in the encoded block. */
uint64_t kvt_gpu_kvq_offset(const struct kvt_gpu_kvq *q, unsigned layer, unsigned kv,
			    unsigned page);

/* ---- CPU reference [host] -----------------------------------------------------------------
 * Plain C, bit-exact with the kernels (same operations in the same order, IEEE fp32): the
 * reference for the tests and a decoder for the CPU codecs. */
int kvt_gpu_ref_quantize(const struct kvt_gpu_qparams *p, enum kvt_gpu_kv kind, const void *src,
			 void *dst);
int kvt_gpu_ref_dequantize(const struct kvt_gpu_qparams *p, enum kvt_gpu_kv kind, const void *src,
			   void *dst);

/* IEEE binary16 / bfloat16 conversions, round to nearest even (NaN kept quiet). */
uint16_t kvt_f32_to_f16(float f);
float kvt_f16_to_f32(uint16_t h);
uint16_t kvt_f32_to_bf16(float f);
float kvt_bf16_to_f32(uint16_t h);

#ifdef __cplusplus
}
#endif
#endif
