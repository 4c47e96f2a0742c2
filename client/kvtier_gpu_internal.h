/* SPDX-License-Identifier: MIT */
/*
 * kvtier_gpu_internal.h - the device API's private header (not installed): struct kvt_dev
 * and what its two files share.
 *   kvtier_gpu.c       the device connection (GPU_ATTACH, GPU_OP), the registration of the
 *                      host arena with CUDA, kvt_dev_open/close/layout/info;
 *   kvtier_gpu_copy.c  kvt_dev_put and kvt_dev_get: the pool part, the host part, and the
 *                      copies they queue on gpu/'s copy engine.
 */
#ifndef KVTIER_GPU_INTERNAL_H
#define KVTIER_GPU_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvt_check.h"
#include "kvt_gpu.h"
#include "kvt_proto.h"
#include "kvtier.h"

#define DEV_MAGIC    0x4b564456u /* "KVDV" */
#define DEV_LAYOUTS  64
#define DEV_REGS     8
#define HOST_CHUNK   32u /* host-path blocks per copy round (pipelined with the next) */
#define DEV_TIMEOUT  10000
#define FLAG_TIMEOUT (30ll * 1000000000ll)

struct dev_reg {
	void *base;
	size_t len;
};

/* One block of a call: where it is and what holds it. */
enum { B_NONE = 0, B_GPU, B_GPUQ /* quantized in the pool */, B_HOST, B_DONE };

static inline bool in_pool(uint8_t where)
{
	return where == B_GPU || where == B_GPUQ;
}

struct dev_blk {
	uint8_t where;
	uint64_t addr;	 /* pool or arena address of the kvtier block */
	uint64_t handle; /* pool reservation/lease */
	union {
		struct kvt_reservation r;
		struct kvt_lease l;
	} u;
};

struct kvt_dev {
	uint32_t magic;
	struct kvt_client *c;
	pthread_mutex_t lock;
	int device;
	unsigned flags;
	char path[108];
	int sock;
	bool gpu_tier, tried;
	unsigned bits; /* the pool's codec: 0 raw, 8 or 4 bits */
	struct kvt_gpu_pool *pool;
	uint64_t epoch;
	struct kvt_gpu_ipc_desc desc;
	unsigned reattaches;
	struct kvt_gpu_engine *eng;
	void *own_stream;
	uint64_t *flag; /* pinned; the GPU writes increasing values after each copy round */
	uint64_t seq;
	struct dev_reg reg[DEV_REGS];
	unsigned nreg;
	struct kvt_layout layouts[DEV_LAYOUTS];
	int host_id[DEV_LAYOUTS];
	unsigned nlayouts;
	uint8_t *msg; /* request and reply of one GPU_OP */
	struct kvt_gpu_seg *segs;
	size_t segcap;
	struct dev_blk *blk;
	size_t blkcap;
	uint32_t *ids;
	uint64_t *addrs;
	struct kvt_gpu_qjob *jobs;
	size_t njobs;
	size_t idcap;
	uint64_t gpu_puts, host_puts, gpu_gets, host_gets;
};

/* kvtier_gpu.c */
void kvtc_dev_ensure_attached(struct kvt_dev *d);
int kvtc_dev_gpu_op(struct kvt_dev *d, uint32_t op, const struct kvt_layout *l, uint32_t len,
		    uint32_t tile_tokens, const struct kvt_gpu_op_req *req, uint32_t n,
		    struct kvt_gpu_op_res *res);
int kvtc_dev_host_ready(struct kvt_dev *d, const void *p, size_t n);

#endif /* KVTIER_GPU_INTERNAL_H */
