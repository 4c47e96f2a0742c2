/* SPDX-License-Identifier: MIT */
/*
 * gpu_host_emu.c - kvt_gpu.h and kvt_gpu_bq.h on host memory, for running the device API's
 * own logic (client/kvtier_gpu*.c: rounds, slots, staging, batch arrays, which blocks go
 * where) through a real kvtierd on a machine without a GPU.  "Device" memory is malloc'd,
 * every queued operation runs when it is queued (so a wrong order of queued work shows), the
 * copy engine is memcpy, kvt_gpu_xpose() is kvt_gpu_ref_xpose() (the kernel itself is checked
 * against it by xpose_emu.cpp), and the bq plan is the CPU codec (records of the chain "bq"
 * only; its GPU kernels are checked by bq_dec_emu.cpp and bq_enc_emu.cpp).  No GPU tier: a
 * daemon cannot share this memory, so pools are -ENODEV.  Linked into the *_emu tests only
 * (tests/integration/gpu_tier.cmake), never into libkvtier.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "codec_bq.h"
#include "kvt_gpu.h"
#include "kvt_gpu_bq.h"

static int dummy;

int kvt_gpu_available(void)
{
	return 1;
}

int kvt_gpu_device_uuid(int ordinal, uint8_t uuid[KVT_GPU_UUID_LEN])
{
	(void)ordinal;
	memset(uuid, 0xee, KVT_GPU_UUID_LEN);
	return 0;
}

int kvt_gpu_device_by_uuid(const uint8_t uuid[KVT_GPU_UUID_LEN])
{
	(void)uuid;
	return -ENODEV;
}

int kvt_gpu_pool_create(const struct kvt_gpu_pool_opts *o, struct kvt_gpu_pool **out)
{
	(void)o;
	if (out)
		*out = NULL;
	return -ENODEV;
}

int kvt_gpu_pool_export(const struct kvt_gpu_pool *p, struct kvt_gpu_ipc_desc *d)
{
	(void)p, (void)d;
	return -ENODEV;
}

int kvt_gpu_pool_open(const struct kvt_gpu_ipc_desc *d, struct kvt_gpu_pool **out)
{
	(void)d;
	if (out)
		*out = NULL;
	return -ENODEV;
}

void kvt_gpu_pool_close(struct kvt_gpu_pool *p)
{
	(void)p;
}

void *kvt_gpu_pool_base(const struct kvt_gpu_pool *p)
{
	(void)p;
	return NULL;
}

uint64_t kvt_gpu_pool_bytes(const struct kvt_gpu_pool *p)
{
	(void)p;
	return 0;
}

int kvt_gpu_pool_device(const struct kvt_gpu_pool *p)
{
	(void)p;
	return -ENODEV;
}

int kvt_gpu_host_register(void *addr, size_t len)
{
	(void)addr, (void)len;
	return 0;
}

int kvt_gpu_host_unregister(void *addr)
{
	(void)addr;
	return 0;
}

int kvt_gpu_host_alloc(size_t len, void **out)
{
	*out = malloc(len ? len : 1);
	return *out ? 0 : -ENOMEM;
}

void kvt_gpu_host_free(void *p)
{
	free(p);
}

int kvt_gpu_dev_alloc(int device, size_t len, void **out)
{
	(void)device;
	/* cudaMalloc's alignment, and garbage in it as there */
	*out = aligned_alloc(256, (len + 255) & ~(size_t)255);
	if (*out)
		memset(*out, 0xcd, len);
	return *out ? 0 : -ENOMEM;
}

void kvt_gpu_dev_free(void *p)
{
	free(p);
}

int kvt_gpu_memcpy(void *dst, const void *src, size_t len)
{
	memcpy(dst, src, len);
	return 0;
}

int kvt_gpu_memset(void *dst, int byte, size_t len)
{
	memset(dst, byte, len);
	return 0;
}

int kvt_gpu_stream_create(void **out)
{
	*out = &dummy;
	return 0;
}

void kvt_gpu_stream_destroy(void *stream)
{
	(void)stream;
}

int kvt_gpu_stream_sync(void *stream)
{
	(void)stream;
	return 0;
}

int kvt_gpu_set_device(int ordinal)
{
	(void)ordinal;
	return 0;
}

/* Work is done as it is queued: every event has happened. */
int kvt_gpu_event_create(void **out)
{
	*out = &dummy;
	return 0;
}

void kvt_gpu_event_destroy(void *ev)
{
	(void)ev;
}

int kvt_gpu_event_record(void *ev, void *stream)
{
	(void)ev, (void)stream;
	return 0;
}

int kvt_gpu_stream_wait(void *stream, void *ev)
{
	(void)stream, (void)ev;
	return 0;
}

int kvt_gpu_engine_create(const struct kvt_gpu_engine_opts *o, struct kvt_gpu_engine **out)
{
	(void)o;
	*out = (struct kvt_gpu_engine *)&dummy;
	return 0;
}

void kvt_gpu_engine_destroy(struct kvt_gpu_engine *e)
{
	(void)e;
}

int kvt_gpu_copy(struct kvt_gpu_engine *e, const struct kvt_gpu_seg *segs, size_t n,
		 enum kvt_gpu_dir dir, enum kvt_gpu_mode mode, void *stream)
{
	(void)stream, (void)mode;
	if (!e || (n && !segs) || (dir != KVT_GPU_D2H && dir != KVT_GPU_H2D && dir != KVT_GPU_D2D))
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		/* the engine's rule: destinations never overlap (memcpy's, sources too) */
		for (size_t j = 0; j < i; j++)
			if (segs[i].dst < segs[j].dst + segs[j].len &&
			    segs[j].dst < segs[i].dst + segs[i].len)
				abort();
		memcpy((void *)(uintptr_t)segs[i].dst, (const void *)(uintptr_t)segs[i].src,
		       segs[i].len);
	}
	return n ? 1 : 0;
}

int kvt_gpu_signal(struct kvt_gpu_engine *e, void *stream, uint64_t *flag, uint64_t value)
{
	(void)e, (void)stream;
	__atomic_store_n(flag, value, __ATOMIC_RELEASE);
	return 0;
}

int kvt_gpu_quantize(struct kvt_gpu_engine *e, const struct kvt_gpu_qparams *p,
		     const struct kvt_gpu_qjob *jobs, size_t n, void *stream)
{
	(void)e, (void)p, (void)jobs, (void)n, (void)stream;
	return -ENODEV;
}

int kvt_gpu_dequantize(struct kvt_gpu_engine *e, const struct kvt_gpu_qparams *p,
		       const struct kvt_gpu_qjob *jobs, size_t n, void *stream)
{
	(void)e, (void)p, (void)jobs, (void)n, (void)stream;
	return -ENODEV;
}

int kvt_gpu_xpose(struct kvt_gpu_engine *e, const struct kvt_gpu_xgeom *x,
		  const struct kvt_gpu_xjob *jobs, size_t n, int to_pages, void *stream)
{
	(void)stream;
	if (!e)
		return -EINVAL;
	return kvt_gpu_ref_xpose(x, jobs, n, to_pages) < 0 ? -EINVAL : n ? 1 : 0;
}

/* ---- bq: the CPU codec ---------------------------------------------------------------------- */

struct kvt_gpu_bq {
	struct kvt_chain *chain;
	struct kvt_codec_geom g;
	size_t bb, bound;
};

int kvt_gpu_bq_new(const struct kvt_codec_geom *g, const struct kvt_bq_params *p,
		   struct kvt_gpu_bq **out)
{
	struct kvt_gpu_bq *b = calloc(1, sizeof(*b));

	*out = NULL;
	if (!b)
		return -ENOMEM;
	if (kvt_chain_parse("bq", &b->chain) < 0 || kvt_chain_id(b->chain) != p->chain_id) {
		kvt_chain_free(b->chain);
		free(b);
		return -EINVAL;
	}
	b->g = *g;
	b->bb = kvt_geom_block_bytes(g);
	b->bound = kvt_chain_max_encoded_size(b->chain, g);
	*out = b;
	return 0;
}

void kvt_gpu_bq_free(struct kvt_gpu_bq *b)
{
	if (b)
		kvt_chain_free(b->chain);
	free(b);
}

size_t kvt_gpu_bq_record_bound(const struct kvt_gpu_bq *b)
{
	return b->bound;
}

size_t kvt_gpu_bq_scratch_bytes(const struct kvt_gpu_bq *b, uint32_t n)
{
	(void)b, (void)n;
	return 16;
}

int kvt_gpu_bq_encode(const struct kvt_gpu_bq *b, const void *const *src,
		      const uint32_t *first_token, uint32_t n, void *const *dst, uint32_t *len,
		      void *scratch, void *stream)
{
	(void)scratch, (void)stream;
	for (uint32_t i = 0; i < n; i++) {
		struct kvt_codec_geom g = b->g;
		ssize_t r;

		g.first_token = first_token[i];
		r = kvt_chain_encode(b->chain, &g, src[i], b->bb, dst[i], b->bound);
		len[i] = r > 0 ? (uint32_t)r : 0;
	}
	return 0;
}

int kvt_gpu_bq_decode(const struct kvt_gpu_bq *b, const void *const *src, const uint32_t *len,
		      uint32_t n, void *const *dst, uint32_t *bad, void *stream)
{
	(void)stream;
	for (uint32_t i = 0; i < n; i++)
		bad[i] = kvt_chain_decode(b->chain, src[i], len[i], dst[i], b->bb, NULL) !=
			 (ssize_t)b->bb;
	return 0;
}

int kvt_gpu_bq_decode_paged(const struct kvt_gpu_bq *b, const void *const *src, const uint32_t *len,
			    uint32_t n, void *const *pages, uint32_t ppb, uint32_t *bad,
			    void *stream)
{
	const uint32_t L = b->g.n_layers, H = b->g.n_kv_heads, T = b->g.block_tokens;
	const size_t row = (size_t)b->g.head_dim * (b->g.dtype == KVT_DTYPE_FP8_E4M3 ? 1 : 2);
	uint8_t *tmp;

	(void)stream;
	if (!ppb || T % ppb)
		return -EINVAL;
	tmp = malloc(b->bb);
	if (!tmp)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		const uint32_t P = T / ppb;

		/* the kernel's rule: pages 4-byte aligned */
		for (uint32_t j = 0; j < L * 2 * ppb; j++)
			if ((uintptr_t)pages[i * L * 2 * ppb + j] % 4)
				abort();
		bad[i] =
		    kvt_chain_decode(b->chain, src[i], len[i], tmp, b->bb, NULL) != (ssize_t)b->bb;
		if (bad[i])
			continue;
		for (uint32_t l = 0; l < L; l++)
			for (uint32_t kv = 0; kv < 2; kv++)
				for (uint32_t h = 0; h < H; h++)
					for (uint32_t t = 0; t < T; t++) {
						uint8_t *pg =
						    pages[((i * L + l) * 2 + kv) * ppb + t / P];

						memcpy(
						    pg + ((size_t)(t % P) * H + h) * row,
						    tmp + (((size_t)(l * 2 + kv) * H + h) * T + t) *
							      row,
						    row);
					}
	}
	free(tmp);
	return 0;
}

int kvt_gpu_bq_decode_cta(const struct kvt_gpu_bq *b, const void *const *src, const uint32_t *len,
			  uint32_t n, void *const *dst, uint32_t *bad, void *stream)
{
	return kvt_gpu_bq_decode(b, src, len, n, dst, bad, stream);
}
