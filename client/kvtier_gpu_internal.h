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
#define DEV_SLOTS    (2u * HOST_CHUNK) /* device staging slots: 2 rounds in flight */
#define DEV_ROUND    64u	       /* blocks of one GPU_OP round (the pool part) */
#define DEV_TIMEOUT  10000
#define FLAG_TIMEOUT (30ll * 1000000000ll)

struct dev_reg {
	void *base;
	size_t len;
};

/* One block of a call: where it is and what holds it.  B_HOSTE: on the host as a record of
 * the compressed host tier, moved over PCIe as it is and coded on the GPU (kvtier_gpu_codec.c). */
enum { B_NONE = 0, B_GPU, B_GPUQ /* quantized in the pool */, B_HOST, B_DONE, B_HOSTE };

static inline bool in_pool(uint8_t where)
{
	return where == B_GPU || where == B_GPUQ;
}

struct dev_blk {
	uint8_t where;
	uint32_t qi;	 /* B_HOSTE: its index in the round's codec batch (kvtier_gpu_codec.c) */
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
	uint64_t wait_ns;	      /* in the waits below */
	uint64_t daemon_ns, queue_ns; /* kvt_dev_info's */
	/* The call's token-major pages (kvt_dev_pages.page_heads > 1; xp_heads 0 otherwise): its
	 * blocks are moved by gpu/'s transposing kernel (kvt_gpu_xpose), host blocks through the
	 * device slots q_raw. */
	uint32_t xp_heads, xp_row;
	struct kvt_gpu_xjob *xjobs; /* DEV_ROUND blocks' worth */
	size_t xjcap;
	/* The compressed host tier on the GPU (kvtier_gpu_codec.c): a bq plan per layout, and
	 * staging for 2 rounds of HOST_CHUNK blocks (records, raw blocks, the batch arrays). */
	struct kvt_gpu_bq *bq[DEV_LAYOUTS];
	uint32_t bq_id[DEV_LAYOUTS];
	bool bq_tried[DEV_LAYOUTS];
	size_t q_bb, q_bound;	/* raw block and record bytes the staging was made for */
	uint8_t *q_raw, *q_enc; /* device: 2 * HOST_CHUNK slots each */
	void *q_scratch;	/* device: the encoder's */
	size_t q_scratch_len;
	uint64_t *q_arr;	      /* device: the batch arrays (struct q_arrays) */
	uint64_t *q_harr;	      /* pinned host mirror of q_arr */
	uint8_t *q_hraw;	      /* pinned host: CPU-decoded blocks (no GPU plan) */
	uint64_t *q_pages, *q_hpages; /* device, pinned mirror: kvt_gpu_bq_decode_paged's page
				       * pointers, q_per a slot (token-major pages) */
	size_t q_per;
	/* The codec stream: the encoder and the decoder run on it beside the call's stream,
	 * which moves the records over PCIe, so that one round's coding overlaps another
	 * round's copy.  Rounds alternate between two sets of slots (parity p = round % 2):
	 * q_ev_s[p] is recorded on the call's stream after the copies of the last round of
	 * parity p (a put encodes the round after next while they may still run), q_ev_h after
	 * a get round's records are up; the codec stream's fence is d->flag[1], whose value
	 * q_v[p] says that round p's coding is done.  (A get round's decode needs no event
	 * before the round after next reuses its slots: the host waits for each round before it
	 * queues the round after the next.)  q_chain, q_m: a put round's chain and blocks
	 * encoded. */
	void *q_stream, *q_ev_s[2], *q_ev_h;
	uint64_t q_v[2], q_seq;
	const struct kvt_chain *q_chain[2];
	uint32_t q_m[2];
	uint64_t gpu_encodes, gpu_decodes, cpu_decodes;
};

/* kvtier_gpu.c */
void kvtc_dev_ensure_attached(struct kvt_dev *d);
int kvtc_dev_gpu_op(struct kvt_dev *d, uint32_t op, const struct kvt_layout *l, uint32_t len,
		    uint32_t tile_tokens, const struct kvt_gpu_op_req *req, uint32_t n,
		    struct kvt_gpu_op_res *res);
int kvtc_dev_host_ready(struct kvt_dev *d, const void *p, size_t n);
/* CLOCK_MONOTONIC, ns */
uint64_t kvtc_dev_clock(void);
/* kvt_gpu_flag_wait (FLAG_TIMEOUT) and kvt_gpu_stream_sync, their time counted in wait_ns */
int kvtc_dev_flag_wait(struct kvt_dev *d, const uint64_t *flag, uint64_t v);
int kvtc_dev_stream_sync(struct kvt_dev *d, void *stream);

/* kvtier_gpu_codec.c: the compressed host tier on the device paths */
/* The chain d's puts of layout encode with on the GPU (its plan in *plan), or NULL. */
const struct kvt_chain *kvtc_devq_put_plan(struct kvt_dev *d, int layout, uint32_t bb,
					   struct kvt_gpu_bq **plan);
/* Put round [k0, k1), first half: the B_NONE blocks are copied from their pages and encoded
 * on the codec stream (after the work queued on the call's stream before the call, and after
 * the copies of the round before the last, whose slots it reuses), their records' lengths
 * brought down; they stay B_NONE.  0 or -errno (nothing queued: stored raw). */
int kvtc_devq_put_encode(struct kvt_dev *d, int layout, const struct kvt_gpu_paged_layout *pl,
			 const uint32_t *ids, size_t k0, size_t k1, uint32_t bb, void *stream);
/* Second half, on the call's stream (after put_encode of the same round): waits for the
 * lengths, then the blocks are reserved with them and copied down (B_HOSTE), or found stored
 * (B_DONE); those it cannot do stay B_NONE (stored raw).  0 or -errno. */
int kvtc_devq_put_store(struct kvt_dev *d, int layout, const struct kvt_key *keys, size_t k0,
			size_t k1, uint32_t bb, void *stream);
/* After a round's copies are queued on the call's stream: the codec stream's later rounds
 * of the same parity (which reuse its slots) wait for them. */
int kvtc_devq_round_end(struct kvt_dev *d, size_t k0, void *stream);
/* Waits until the coding of the round at k0 (if any was queued) is done: 0 or -errno. */
int kvtc_devq_wait(struct kvt_dev *d, size_t k0);
/* Get: block k's lease holds a record (chain_id set, raw_len bb): decoded on the GPU
 * (B_HOSTE, queued by kvtc_devq_get_round) or, without a plan, on the CPU into a pinned slot
 * copied up as a raw block (B_HOST, addr set).  0 or -errno (the lease is kept). */
int kvtc_devq_get_prepare(struct kvt_dev *d, int layout, size_t k, uint32_t bb);
/* Queues round [k0, k1)'s B_HOSTE gets: records up on the call's stream, decoded into the
 * pages on the codec stream; kvtc_devq_wait says when that is done (the caller waits for it
 * before it queues the round after the next, which reuses the slots). */
int kvtc_devq_get_round(struct kvt_dev *d, int layout, const struct kvt_gpu_paged_layout *pl,
			const uint32_t *ids, size_t k0, size_t k1, uint32_t bb, void *stream);
/* After round k's fence: 0, or -EBADMSG when the GPU found block k's record malformed. */
int kvtc_devq_get_check(struct kvt_dev *d, size_t k);
void kvtc_devq_free(struct kvt_dev *d);
/* Token-major pages: readies the device slots (and the paged decoder's pointer arrays) for
 * blocks of bb bytes in layout pl, before a call's host part queues anything.  0 or -errno. */
int kvtc_devq_xp_ready(struct kvt_dev *d, const struct kvt_gpu_paged_layout *pl, uint32_t bb);
/* Token-major pages: queues the moves between the pages of the m blocks whose engine ids are
 * at d->ids and the blocks at blk[i] (device memory: a pool block or a staging slot), by the
 * transposing kernel; put: pages -> blocks.  0 or -errno. */
int kvtc_dev_xpose(struct kvt_dev *d, const struct kvt_gpu_paged_layout *pl, const uint64_t *blk,
		   size_t m, bool put, void *stream);

#endif /* KVTIER_GPU_INTERNAL_H */
