/* SPDX-License-Identifier: MIT */
/*
 * gpu_host.c - the host-only parts of kvt_gpu.h: UUIDs, completion flags, page layouts and
 * quantization sizes.  Built in both the CUDA and the stub library.
 */
#include "kvt_gpu.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int kvt_gpu_uuid_parse(const char *s, uint8_t uuid[KVT_GPU_UUID_LEN])
{
	uint8_t tmp[KVT_GPU_UUID_LEN];
	int n = 0;

	if (!s || !uuid)
		return -EINVAL;
	if (!strncmp(s, "GPU-", 4))
		s += 4;
	for (; *s; s++) {
		int v;

		if (*s == '-')
			continue;
		v = hexval((unsigned char)*s);
		if (v < 0 || n >= 2 * KVT_GPU_UUID_LEN)
			return -EINVAL;
		if (n & 1)
			tmp[n / 2] = (uint8_t)(tmp[n / 2] << 4 | v);
		else
			tmp[n / 2] = (uint8_t)v;
		n++;
	}
	if (n != 2 * KVT_GPU_UUID_LEN)
		return -EINVAL;
	memcpy(uuid, tmp, sizeof(tmp));
	return 0;
}

void kvt_gpu_uuid_format(const uint8_t u[KVT_GPU_UUID_LEN], char out[41])
{
	snprintf(out, 41,
		 "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
		 u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
		 u[14], u[15]);
}

int kvt_gpu_flag_done(const uint64_t *flag, uint64_t value)
{
	/* Pairs with the device's system-scope release in the signal kernel. */
	return __atomic_load_n(flag, __ATOMIC_ACQUIRE) >= value;
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int kvt_gpu_flag_wait(const uint64_t *flag, uint64_t value, int64_t timeout_ns)
{
	int64_t deadline = timeout_ns < 0 ? 0 : now_ns() + timeout_ns;
	unsigned spins = 0;

	while (!kvt_gpu_flag_done(flag, value)) {
		if (timeout_ns >= 0 && now_ns() >= deadline)
			return -ETIMEDOUT;
		/* A DMA of a few MiB takes tens of microseconds: spin briefly, then yield the core
		 * (this machine class has few of them). */
		if (++spins > 1000)
			sched_yield();
	}
	return 0;
}

uint64_t kvt_gpu_paged_block_bytes(const struct kvt_gpu_paged_layout *l)
{
	if (!l || l->size < sizeof(*l) || !l->n_layers || !l->layer_base || !l->page_bytes ||
	    (l->n_kv != 1 && l->n_kv != 2) || !l->pages_per_block)
		return 0;
	return (uint64_t)l->n_layers * l->n_kv * l->pages_per_block * l->page_bytes;
}

size_t kvt_gpu_seg_coalesce(struct kvt_gpu_seg *segs, size_t n)
{
	size_t out = 0;

	for (size_t i = 0; i < n; i++) {
		if (!segs[i].len)
			continue;
		if (out && segs[out - 1].src + segs[out - 1].len == segs[i].src &&
		    segs[out - 1].dst + segs[out - 1].len == segs[i].dst) {
			segs[out - 1].len += segs[i].len;
			continue;
		}
		segs[out++] = segs[i];
	}
	return out;
}

long kvt_gpu_paged_segments(const struct kvt_gpu_paged_layout *l, const uint32_t *ids,
			    const uint64_t *addr, size_t nblocks, enum kvt_gpu_dir dir,
			    struct kvt_gpu_seg *segs, size_t cap)
{
	uint64_t block_bytes = kvt_gpu_paged_block_bytes(l);
	size_t per_block, n = 0;

	if (!block_bytes || (dir != KVT_GPU_D2H && dir != KVT_GPU_H2D && dir != KVT_GPU_D2D) ||
	    (nblocks && (!ids || !addr || !segs)))
		return -EINVAL;
	per_block = (size_t)l->n_layers * l->n_kv * l->pages_per_block;
	if (nblocks > cap / per_block)
		return -ENOSPC;
	for (size_t i = 0; i < nblocks; i++) {
		uint64_t off = 0;

		for (uint32_t layer = 0; layer < l->n_layers; layer++) {
			for (uint32_t k = 0; k < l->n_kv; k++) {
				for (uint32_t j = 0; j < l->pages_per_block; j++) {
					uint64_t page = l->layer_base[layer] + k * l->kv_stride +
							(uint64_t)ids[i * l->pages_per_block + j] *
							    l->block_stride;
					struct kvt_gpu_seg s = {.len = l->page_bytes};

					if (dir == KVT_GPU_H2D) {
						s.src = addr[i] + off;
						s.dst = page;
					} else {
						s.src = page;
						s.dst = addr[i] + off;
					}
					segs[n++] = s;
					off += l->page_bytes;
				}
			}
		}
	}
	return (long)kvt_gpu_seg_coalesce(segs, n);
}

static int is_pow2_in(unsigned v, unsigned lo, unsigned hi)
{
	return v >= lo && v <= hi && !(v & (v - 1));
}

int kvt_gpu_q_check(const struct kvt_gpu_qparams *p)
{
	if (!p || p->size < sizeof(*p))
		return -EINVAL;
	if (p->bits != 4 && p->bits != 8)
		return -EINVAL;
	if (p->dtype != KVT_GPU_FP16 && p->dtype != KVT_GPU_BF16)
		return -EINVAL;
	if (!p->tokens || !p->heads || !p->head_dim || p->head_dim % 8)
		return -EINVAL;
	if (!is_pow2_in(p->k_group, 8, 128) || p->tokens % p->k_group)
		return -EINVAL;
	if (!is_pow2_in(p->v_group, 8, 256) || p->head_dim % p->v_group)
		return -EINVAL;
	return 0;
}

size_t kvt_gpu_q_raw_bytes(const struct kvt_gpu_qparams *p)
{
	if (kvt_gpu_q_check(p))
		return 0;
	return (size_t)p->tokens * p->heads * p->head_dim * 2;
}

size_t kvt_gpu_q_bytes(const struct kvt_gpu_qparams *p, enum kvt_gpu_kv kind)
{
	size_t elems, groups;

	if (kvt_gpu_q_check(p) || (kind != KVT_GPU_KEYS && kind != KVT_GPU_VALUES))
		return 0;
	elems = (size_t)p->tokens * p->heads * p->head_dim;
	if (kind == KVT_GPU_KEYS)
		groups = (size_t)(p->tokens / p->k_group) * p->heads * p->head_dim;
	else
		groups = (size_t)p->tokens * p->heads * (p->head_dim / p->v_group);
	return elems * p->bits / 8 + groups * 4;
}

static unsigned largest_group(unsigned n)
{
	for (unsigned g = 32; g >= 8; g /= 2) {
		if (n % g == 0)
			return g;
	}
	return 0;
}

int kvt_gpu_kvq_plan(unsigned bits, unsigned dtype, unsigned heads, unsigned head_dim,
		     unsigned tile_tokens, unsigned n_layers, uint64_t raw_bytes,
		     struct kvt_gpu_kvq *out)
{
	struct kvt_gpu_kvq q;
	uint64_t per_page;

	memset(&q, 0, sizeof(q));
	if (!out || !n_layers || tile_tokens > UINT16_MAX || heads > UINT16_MAX ||
	    head_dim > UINT16_MAX)
		return -EINVAL;
	q.qp.size = sizeof(q.qp);
	q.qp.bits = (uint8_t)bits;
	q.qp.dtype = (uint8_t)dtype;
	q.qp.tokens = (uint16_t)tile_tokens;
	q.qp.heads = (uint16_t)heads;
	q.qp.head_dim = (uint16_t)head_dim;
	q.qp.k_group = (uint16_t)largest_group(tile_tokens);
	q.qp.v_group = (uint16_t)largest_group(head_dim);
	if (kvt_gpu_q_check(&q.qp) < 0)
		return -EINVAL;
	q.raw_tile = kvt_gpu_q_raw_bytes(&q.qp);
	per_page = 2ull * n_layers * q.raw_tile;
	if (!raw_bytes || raw_bytes % per_page)
		return -EINVAL;
	q.n_layers = n_layers;
	q.pages_per_block = (uint32_t)(raw_bytes / per_page);
	q.k_bytes = (kvt_gpu_q_bytes(&q.qp, KVT_GPU_KEYS) + 15) & ~(uint64_t)15;
	q.v_bytes = (kvt_gpu_q_bytes(&q.qp, KVT_GPU_VALUES) + 15) & ~(uint64_t)15;
	q.enc_bytes = (uint64_t)n_layers * q.pages_per_block * (q.k_bytes + q.v_bytes);
	q.raw_bytes = raw_bytes;
	*out = q;
	return 0;
}

uint64_t kvt_gpu_kvq_offset(const struct kvt_gpu_kvq *q, unsigned layer, unsigned kv, unsigned page)
{
	uint64_t ppb = q->pages_per_block;

	return (uint64_t)layer * ppb * (q->k_bytes + q->v_bytes) + (kv ? ppb * q->k_bytes : 0) +
	       (uint64_t)page * (kv ? q->v_bytes : q->k_bytes);
}

/* ---- token-major pages <-> ABI-order blocks ------------------------------------------------ */

int kvt_gpu_xpose_unit(const struct kvt_gpu_xgeom *x, const struct kvt_gpu_xjob *jobs, size_t n)
{
	uint64_t any;
	unsigned w = 16;

	if (!x || !x->heads || !x->tokens || !x->row_bytes || x->reserved ||
	    x->head_stride < (uint64_t)x->tokens * x->row_bytes ||
	    (uint64_t)x->tokens * x->heads * x->row_bytes >= (1ull << 31) || (n && !jobs))
		return -EINVAL;
	any = x->row_bytes | x->head_stride;
	for (size_t i = 0; i < n; i++) {
		if (!jobs[i].page || !jobs[i].blk)
			return -EINVAL;
		any |= jobs[i].page | jobs[i].blk;
	}
	while (w > 1 && (any & (w - 1)))
		w >>= 1;
	return (int)w;
}

long kvt_gpu_xpose_jobs(const struct kvt_gpu_paged_layout *l, uint32_t heads, uint32_t row_bytes,
			const uint32_t *ids, const uint64_t *addr, size_t nblocks,
			struct kvt_gpu_xgeom *x, struct kvt_gpu_xjob *jobs, size_t cap)
{
	uint64_t block_bytes = kvt_gpu_paged_block_bytes(l), hr = (uint64_t)heads * row_bytes, p;
	size_t per_block, n = 0;

	if (!block_bytes || !hr || !x || l->page_bytes % hr ||
	    (nblocks && (!ids || !addr || !jobs)))
		return -EINVAL;
	p = l->page_bytes / hr;
	if (p > UINT32_MAX)
		return -EINVAL;
	memset(x, 0, sizeof(*x));
	x->heads = heads;
	x->tokens = (uint32_t)p;
	x->row_bytes = row_bytes;
	x->head_stride = (uint64_t)l->pages_per_block * p * row_bytes;
	per_block = (size_t)l->n_layers * l->n_kv * l->pages_per_block;
	if (nblocks > cap / per_block)
		return -ENOSPC;
	for (size_t i = 0; i < nblocks; i++) {
		for (uint32_t layer = 0; layer < l->n_layers; layer++) {
			for (uint32_t k = 0; k < l->n_kv; k++) {
				uint64_t slab = addr[i] + ((uint64_t)layer * l->n_kv + k) *
							      l->pages_per_block * l->page_bytes;

				for (uint32_t j = 0; j < l->pages_per_block; j++) {
					jobs[n].page = l->layer_base[layer] + k * l->kv_stride +
						       (uint64_t)ids[i * l->pages_per_block + j] *
							   l->block_stride;
					jobs[n].blk = slab + (uint64_t)j * p * row_bytes;
					n++;
				}
			}
		}
	}
	return (long)n;
}
