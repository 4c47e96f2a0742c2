/* SPDX-License-Identifier: MIT */
/*
 * gpu_stub.c - kvt_gpu.h without CUDA: no device exists, so everything that needs one
 * returns -ENODEV and kvt_gpu_available() says 0.  The host-only parts (gpu_host.c,
 * gpu_ref.c) are the real ones in this build too.
 */
#include "kvt_gpu.h"

#include <errno.h>

int kvt_gpu_available(void)
{
	return 0;
}

int kvt_gpu_device_uuid(int ordinal, uint8_t uuid[KVT_GPU_UUID_LEN])
{
	return -ENODEV;
}

int kvt_gpu_device_by_uuid(const uint8_t uuid[KVT_GPU_UUID_LEN])
{
	return -ENODEV;
}

int kvt_gpu_pool_create(const struct kvt_gpu_pool_opts *o, struct kvt_gpu_pool **out)
{
	if (out)
		*out = NULL;
	return -ENODEV;
}

int kvt_gpu_pool_export(const struct kvt_gpu_pool *p, struct kvt_gpu_ipc_desc *d)
{
	return -ENODEV;
}

int kvt_gpu_pool_open(const struct kvt_gpu_ipc_desc *d, struct kvt_gpu_pool **out)
{
	if (out)
		*out = NULL;
	return -ENODEV;
}

void kvt_gpu_pool_close(struct kvt_gpu_pool *p)
{
}

void *kvt_gpu_pool_base(const struct kvt_gpu_pool *p)
{
	return NULL;
}

uint64_t kvt_gpu_pool_bytes(const struct kvt_gpu_pool *p)
{
	return 0;
}

int kvt_gpu_pool_device(const struct kvt_gpu_pool *p)
{
	return -ENODEV;
}

int kvt_gpu_host_register(void *addr, size_t len)
{
	return -ENODEV;
}

int kvt_gpu_host_unregister(void *addr)
{
	return -ENODEV;
}

int kvt_gpu_host_alloc(size_t len, void **out)
{
	if (out)
		*out = NULL;
	return -ENODEV;
}

void kvt_gpu_host_free(void *p)
{
}

int kvt_gpu_dev_alloc(int device, size_t len, void **out)
{
	if (out)
		*out = NULL;
	return -ENODEV;
}

void kvt_gpu_dev_free(void *p)
{
}

int kvt_gpu_memcpy(void *dst, const void *src, size_t len)
{
	return -ENODEV;
}

int kvt_gpu_memset(void *dst, int byte, size_t len)
{
	return -ENODEV;
}

int kvt_gpu_stream_create(void **out)
{
	if (out)
		*out = NULL;
	return -ENODEV;
}

void kvt_gpu_stream_destroy(void *stream)
{
}

int kvt_gpu_stream_sync(void *stream)
{
	return -ENODEV;
}

int kvt_gpu_set_device(int ordinal)
{
	return -ENODEV;
}

int kvt_gpu_event_create(void **out)
{
	if (out)
		*out = NULL;
	return -ENODEV;
}

void kvt_gpu_event_destroy(void *ev)
{
}

int kvt_gpu_event_record(void *ev, void *stream)
{
	return -ENODEV;
}

int kvt_gpu_stream_wait(void *stream, void *ev)
{
	return -ENODEV;
}

int kvt_gpu_engine_create(const struct kvt_gpu_engine_opts *o, struct kvt_gpu_engine **out)
{
	if (out)
		*out = NULL;
	return -ENODEV;
}

void kvt_gpu_engine_destroy(struct kvt_gpu_engine *e)
{
}

int kvt_gpu_copy(struct kvt_gpu_engine *e, const struct kvt_gpu_seg *segs, size_t n,
		 enum kvt_gpu_dir dir, enum kvt_gpu_mode mode, void *stream)
{
	return -ENODEV;
}

int kvt_gpu_signal(struct kvt_gpu_engine *e, void *stream, uint64_t *flag, uint64_t value)
{
	return -ENODEV;
}

int kvt_gpu_quantize(struct kvt_gpu_engine *e, const struct kvt_gpu_qparams *p,
		     const struct kvt_gpu_qjob *jobs, size_t n, void *stream)
{
	return -ENODEV;
}

int kvt_gpu_dequantize(struct kvt_gpu_engine *e, const struct kvt_gpu_qparams *p,
		       const struct kvt_gpu_qjob *jobs, size_t n, void *stream)
{
	return -ENODEV;
}

int kvt_gpu_xpose(struct kvt_gpu_engine *e, const struct kvt_gpu_xgeom *x,
		  const struct kvt_gpu_xjob *jobs, size_t n, int to_pages, void *stream)
{
	return -ENODEV;
}
