/* SPDX-License-Identifier: MIT */
/*
 * The GPU tier: one cudaMalloc'd pool on the device the operator named by UUID, shared with
 * the clients once over CUDA IPC.  Clients copy device to device into and out of it on their
 * own streams; this file only hands out pool offsets and moves bytes between the pool and
 * host memory for the daemon (demotion to the host tier, promotion from it).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nvme_alloc.h"
#include "tier_common.h"
#include "tier_gpu.h"

#define GPU_TIER_MAGIC 0x55504754u /* "TGPU" */
#define GPU_PAGE_SHIFT 12

struct kvt_tier {
	uint32_t magic;
	int dev;
	uint8_t uuid[KVT_GPU_UUID_LEN];
	struct kvt_gpu_pool *pool;
	struct kvt_gpu_engine *eng;
	void *stream;
	struct nv_alloc al;
	uint64_t capacity;
	struct kvt_tier_stats st;
	struct kvt_tier_doneq done; /* completed, done() not yet run */
	void (*log)(void *arg, int level, const char *msg);
	void *log_arg;
	void *staging; /* device memory a quantized block is dequantized into on its way out */
	uint64_t staging_len;
	struct kvt_gpu_qjob *jobs;
	size_t njobs;
};

#define tlog(t, level, ...) kvt_tier_log((t)->log, (t)->log_arg, "gpu", level, __VA_ARGS__)

/* Ordinal of the device the operator named, or -ENODEV. */
static int pick_device(const char *device)
{
	uint8_t uuid[KVT_GPU_UUID_LEN];
	int n = kvt_gpu_available();
	char *end;
	long v;

	if (n <= 0)
		return -ENODEV;
	if (!device || !*device)
		return 0;
	if (kvt_gpu_uuid_parse(device, uuid) == 0)
		return kvt_gpu_device_by_uuid(uuid);
	v = strtol(device, &end, 10);
	if (*end || v < 0 || v >= n)
		return -ENODEV;
	return (int)v;
}

static void gpu_close(struct kvt_tier *t)
{
	if (!t)
		return;
	if (t->stream)
		kvt_gpu_stream_sync(t->stream);
	kvt_gpu_dev_free(t->staging);
	free(t->jobs);
	kvt_gpu_engine_destroy(t->eng);
	kvt_gpu_stream_destroy(t->stream);
	kvt_gpu_pool_close(t->pool);
	nv_alloc_destroy(&t->al);
	t->magic = 0;
	free(t);
}

/* conf->paths[0]: the device ("GPU-<uuid>", an ordinal, or NULL/"" for device 0). */
static int gpu_open(const struct kvt_tier_conf *conf, struct kvt_tier **out)
{
	const char *device = conf && conf->paths ? conf->paths[0] : NULL;
	struct kvt_gpu_engine_opts eo = {sizeof(eo), -1, 32ull << 20, 0, 0};
	struct kvt_gpu_pool_opts po = {sizeof(po), 0, NULL, 0, conf ? conf->epoch : 0};
	struct kvt_tier *t;
	int ret;

	*out = NULL;
	if (!conf || !conf->capacity_bytes)
		return -EINVAL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->magic = GPU_TIER_MAGIC;
	t->log = conf->log;
	t->log_arg = conf->log_arg;
	/* Whole pages, so that every block starts 4 KiB (hence 16-byte) aligned. */
	t->capacity = conf->capacity_bytes >> GPU_PAGE_SHIFT << GPU_PAGE_SHIFT;
	ret = pick_device(device);
	if (ret < 0)
		goto fail;
	t->dev = ret;
	ret = kvt_gpu_device_uuid(t->dev, t->uuid);
	if (ret < 0)
		goto fail;
	ret = kvt_gpu_set_device(t->dev);
	if (ret < 0)
		goto fail;
	po.uuid = t->uuid;
	po.bytes = t->capacity;
	ret = kvt_gpu_pool_create(&po, &t->pool);
	if (ret < 0)
		goto fail;
	ret = kvt_gpu_stream_create(&t->stream);
	if (ret < 0)
		goto fail;
	eo.device = t->dev;
	ret = kvt_gpu_engine_create(&eo, &t->eng);
	if (ret < 0)
		goto fail;
	ret = nv_alloc_init(&t->al, t->capacity >> GPU_PAGE_SHIFT);
	if (ret < 0)
		goto fail;
	t->st.capacity_bytes = t->capacity;
	*out = t;
	return 0;
fail:
	if (ret != -ENODEV)
		tlog(t, 3, "cannot open the GPU tier: %s", strerror(-ret));
	gpu_close(t);
	return ret;
}

static int gpu_export(struct kvt_tier *t, void *desc, size_t len)
{
	if (len != sizeof(struct kvt_gpu_ipc_desc))
		return -EINVAL;
	return kvt_gpu_pool_export(t->pool, desc);
}

static int gpu_register(struct kvt_tier *t, void *base, uint64_t len)
{
	(void)t;
	return kvt_gpu_host_register(base, len);
}

static void gpu_unregister(struct kvt_tier *t, void *base)
{
	(void)t;
	kvt_gpu_host_unregister(base);
}

static int gpu_alloc(struct kvt_tier *t, uint32_t len, struct kvt_tier_loc *out)
{
	uint64_t np = ((uint64_t)len + (1u << GPU_PAGE_SHIFT) - 1) >> GPU_PAGE_SHIFT;
	int64_t p;

	if (!len)
		return -EINVAL;
	p = nv_alloc_get(&t->al, np);
	if (p < 0)
		return (int)p;
	out->off = (uint64_t)p << GPU_PAGE_SHIFT;
	out->len = (uint32_t)(np << GPU_PAGE_SHIFT);
	out->file = 0;
	out->flags = 0;
	t->st.used_bytes += np << GPU_PAGE_SHIFT;
	t->st.records++;
	return 0;
}

static void gpu_free(struct kvt_tier *t, const struct kvt_tier_loc *loc)
{
	uint64_t np = (uint64_t)loc->len >> GPU_PAGE_SHIFT;

	if (nv_alloc_put(&t->al, loc->off >> GPU_PAGE_SHIFT, np) < 0) {
		/* A double free would hand the same pool bytes to two blocks. */
		tlog(t, 2, "free of a pool range not in use (offset %llu)",
		     (unsigned long long)loc->off);
		return;
	}
	t->st.used_bytes -= np << GPU_PAGE_SHIFT;
	t->st.records--;
}

/* Dequantizes the block at dev (encoded as q says) into the staging buffer and copies the
 * raw block to host memory at p. */
static int dequant_down(struct kvt_tier *t, const struct kvt_gpu_kvq *q, uint64_t dev, void *p)
{
	size_t n = (size_t)q->n_layers * 2 * q->pages_per_block, k = 0;
	struct kvt_gpu_seg seg;
	int ret;

	if (t->staging_len < q->raw_bytes) {
		kvt_gpu_dev_free(t->staging);
		t->staging = NULL;
		t->staging_len = 0;
		ret = kvt_gpu_dev_alloc(t->dev, q->raw_bytes, &t->staging);
		if (ret < 0)
			return ret;
		t->staging_len = q->raw_bytes;
	}
	if (t->njobs < n) {
		struct kvt_gpu_qjob *j = realloc(t->jobs, n * sizeof(*j));
		if (!j)
			return -ENOMEM;
		t->jobs = j;
		t->njobs = n;
	}
	for (unsigned l = 0; l < q->n_layers; l++) {
		for (unsigned kv = 0; kv < 2; kv++) {
			for (unsigned j = 0; j < q->pages_per_block; j++, k++) {
				t->jobs[k].src = dev + kvt_gpu_kvq_offset(q, l, kv, j);
				t->jobs[k].dst =
				    (uint64_t)(uintptr_t)t->staging +
				    ((uint64_t)(l * 2 + kv) * q->pages_per_block + j) * q->raw_tile;
				t->jobs[k].kind = kv ? KVT_GPU_VALUES : KVT_GPU_KEYS;
				t->jobs[k].reserved = 0;
			}
		}
	}
	ret = kvt_gpu_dequantize(t->eng, &q->qp, t->jobs, n, t->stream);
	if (ret < 0)
		return ret;
	seg = (struct kvt_gpu_seg){(uint64_t)(uintptr_t)t->staging, (uint64_t)(uintptr_t)p,
				   q->raw_bytes};
	return kvt_gpu_copy(t->eng, &seg, 1, KVT_GPU_D2H, KVT_GPU_DMA, t->stream);
}

static int move(struct kvt_tier *t, struct kvt_tier_io *io, enum kvt_gpu_dir dir)
{
	const struct kvt_gpu_kvq *q = dir == KVT_GPU_D2H ? io->xform : NULL;
	uint64_t dev = (uint64_t)(uintptr_t)kvt_gpu_pool_base(t->pool) + io->loc.off;
	struct kvt_gpu_seg s = {0, 0, io->len};
	int ret;

	if (!io->len || (!q && io->len > io->loc.len) || (q && io->len != q->raw_bytes) ||
	    io->loc.off + io->loc.len > t->capacity ||
	    nv_alloc_state(&t->al, io->loc.off >> GPU_PAGE_SHIFT, io->loc.len >> GPU_PAGE_SHIFT) !=
		1)
		return -EINVAL;
	if (q) {
		ret = dequant_down(t, q, dev, io->buf);
	} else {
		if (dir == KVT_GPU_D2H) {
			s.src = dev;
			s.dst = (uint64_t)(uintptr_t)io->buf;
		} else {
			s.src = (uint64_t)(uintptr_t)io->buf;
			s.dst = dev;
		}
		ret = kvt_gpu_copy(t->eng, &s, 1, dir, KVT_GPU_DMA, t->stream);
	}
	if (ret >= 0)
		ret = kvt_gpu_stream_sync(t->stream);
	io->res = ret < 0 ? ret : (int)io->len;
	if (ret < 0) {
		if (dir == KVT_GPU_D2H)
			t->st.read_errors++;
		else
			t->st.write_errors++;
	} else if (dir == KVT_GPU_D2H) {
		t->st.bytes_read += io->len;
		t->st.reads++;
	} else {
		t->st.bytes_written += io->len;
		t->st.writes++;
	}
	kvt_tier_doneq_push(&t->done, io);
	return 0;
}

static int gpu_read(struct kvt_tier *t, struct kvt_tier_io *io)
{
	return move(t, io, KVT_GPU_D2H);
}

static int gpu_write(struct kvt_tier *t, struct kvt_tier_io *io)
{
	return move(t, io, KVT_GPU_H2D);
}

static int gpu_complete(struct kvt_tier *t)
{
	return kvt_tier_doneq_run(&t->done);
}

static void gpu_stats(struct kvt_tier *t, struct kvt_tier_stats *st)
{
	*st = t->st;
	st->files = 1;
}

const struct kvt_tier_ops kvt_tier_gpu_ops = {
    .name = "gpu",
    .open = gpu_open,
    .close = gpu_close,
    .alloc = gpu_alloc,
    .free = gpu_free,
    .write = gpu_write,
    .read = gpu_read,
    .stats = gpu_stats,
    .complete = gpu_complete,
    .mem_register = gpu_register,
    .mem_unregister = gpu_unregister,
    .export_desc = gpu_export,
};
