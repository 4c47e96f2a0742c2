/* SPDX-License-Identifier: MIT */
/*
 * gpu_msgs.c - the GPU tier's messages (PROTOCOL.md "GPU tier") on a KVT_HELLO_DEVICE
 * connection: GPU_ATTACH (the pool's IPC handle) and GPU_OP, a batch of reserve, commit,
 * abort, lease or release of pool blocks, with the holds they take.  The data moves device
 * to device in the client; where blocks live in the pool is gpu_place.c's.
 */
#include <errno.h>
#include <string.h>

#include "daemon.h"
#include "gpu_msgs.h"
#include "holds.h"
#include "networking.h"
#include "ops.h"

void handle_gpu_attach(struct kvtd *d, struct client *c)
{
	struct kvt_msg_gpu_attach_reply r;

	memset(&r, 0, sizeof(r));
	kvt_msg_init(&r.h, KVT_MSG_GPU_ATTACH_REPLY, sizeof(r));
	r.res = c->device ? kvtd_gpu_attach_reply(d, &r) : -EINVAL;
	if (sock_send(c->sock, &r, sizeof(r), NULL, 0) < 0)
		client_kill(d, c, "reply failed");
}

static void gpu_reserve(struct kvtd *d, struct client *c, uint64_t fp,
			const struct kvt_msg_gpu_op *m, const struct kvt_gpu_op_req *q,
			struct kvt_gpu_op_res *r)
{
	uint64_t lo, hi, handle;
	struct kvtd_blk *b;
	int64_t off;
	uint32_t i;
	int ret;

	internal_key(d, c, fp, q->key_lo, q->key_hi, &lo, &hi);
	if (d->nvme_recovering) {
		r->res = -EAGAIN; /* as kvtd_host_alloc(): no puts until NVMe is recovered */
		return;
	}
	if (kvtd_index_find(&d->ix, lo, hi) != KVTD_NIL) {
		d->m.put_exists_total++;
		r->res = -EEXIST;
		return;
	}
	i = kvtd_blk_insert(d, lo, hi);
	if (i == KVTD_NIL) {
		r->res = -KVT_ELIMIT;
		return;
	}
	kvtd_blk_reserved(d, i, c->t, c->id, fp, m->len, -1);
	off = kvtd_gpu_reserve(d, i, m->len, &m->layout, m->tile_tokens, &r->flags);
	if (off < 0) {
		if (off == -ENOSPC)
			d->m.enospc_total++;
		kvtd_blk_drop(d, i);
		r->res = (int32_t)off;
		return;
	}
	b = kvtd_blk(&d->ix, i);
	ret = hold_add(c, i, b->gen, HOLD_GPU_RESERVE, &handle);
	if (ret < 0) {
		kvtd_blk_drop(d, i);
		kvtd_gpu_has(d, i); /* frees the stale pool entry */
		r->res = ret;
		return;
	}
	c->n_reserves++;
	d->m.reservations++;
	r->off = (uint64_t)off;
	r->handle = handle;
	r->res = (int32_t)m->len;
}

static void gpu_commit(struct kvtd *d, struct client *c, const struct kvt_gpu_op_req *q,
		       struct kvt_gpu_op_res *r, bool abort_it)
{
	struct hold *ho = hold_get(c, q->handle, HOLD_GPU_RESERVE);
	struct kvtd_blk *b;
	uint32_t i;

	if (!ho || !hold_valid(d, ho)) {
		r->res = -EINVAL;
		return;
	}
	i = ho->blk;
	b = kvtd_blk(&d->ix, i);
	c->n_reserves--;
	d->m.reservations--;
	hold_put(c, ho);
	if (abort_it) {
		kvtd_blk_drop(d, i);
		kvtd_gpu_has(d, i);
		d->m.aborts_total++;
	} else {
		kvtd_blk_commit_gpu(d, i);
		c->puts++;
		d->m.puts_total++;
		d->m.put_bytes_total += b->len;
	}
	r->res = 0;
}

static void gpu_lease(struct kvtd *d, struct client *c, uint64_t fp, const struct kvt_gpu_op_req *q,
		      struct kvt_gpu_op_res *r)
{
	uint64_t lo, hi, handle;
	struct kvtd_blk *b;
	int64_t off;
	uint32_t i;
	int ret;

	c->gets++;
	d->m.gets_total++;
	internal_key(d, c, fp, q->key_lo, q->key_hi, &lo, &hi);
	i = kvtd_index_find(&d->ix, lo, hi);
	if (i == KVTD_NIL || kvtd_blk(&d->ix, i)->state != KVTD_BLK_READY) {
		count_miss(d, c);
		r->res = -ENOENT;
		return;
	}
	b = kvtd_blk(&d->ix, i);
	ret = hold_quota(d, c, i);
	if (ret < 0) {
		r->res = ret;
		return;
	}
	off = kvtd_gpu_lease(d, i, &r->flags);
	if (off < 0) {
		/* Stored, but not in the pool: the client reads it through the host tier. */
		r->res = (int32_t)off;
		return;
	}
	ret = hold_add(c, i, b->gen, HOLD_GPU_LEASE, &handle);
	if (ret < 0) {
		kvtd_gpu_unlease(d, i);
		r->res = ret;
		return;
	}
	lease_granted(d, c, i);
	r->off = (uint64_t)off;
	r->handle = handle;
	r->res = (int32_t)b->len;
}

static void gpu_release(struct kvtd *d, struct client *c, const struct kvt_gpu_op_req *q,
			struct kvt_gpu_op_res *r)
{
	struct hold *ho = hold_get(c, q->handle, HOLD_GPU_LEASE);

	if (!ho || !hold_valid(d, ho)) {
		r->res = -EINVAL;
		return;
	}
	c->n_leases--;
	kvtd_gpu_unlease(d, ho->blk);
	lease_drop(d, ho->blk);
	hold_put(c, ho);
	r->res = 0;
}

void handle_gpu_op(struct kvtd *d, struct client *c, const struct kvt_msg_gpu_op *m, size_t n)
{
	/* The reply is built behind the request: both fit in msgbuf. */
	struct kvt_msg_gpu_op_reply *r = (struct kvt_msg_gpu_op_reply *)(d->msgbuf + KVT_MSG_MAX);
	struct kvt_gpu_op_res *res = (struct kvt_gpu_op_res *)(r + 1);
	const struct kvt_gpu_op_req *req = (const struct kvt_gpu_op_req *)(m + 1);
	size_t rlen = sizeof(*r);
	uint64_t fp = 0, block_bytes = 0;
	int64_t geom = -1;
	int ret = 0;

	_Static_assert(sizeof(struct kvt_msg_gpu_op_reply) +
			       KVT_GPU_OP_BATCH * sizeof(struct kvt_gpu_op_res) <=
			   sizeof(struct kvt_msg_result) + ADMIN_CHUNK,
		       "a GPU_OP reply fits behind the request");
	memset(r, 0, sizeof(*r));
	if (!c->device || m->op == 0 || m->op >= KVT_GPU_OP_MAX || !m->n ||
	    m->n > KVT_GPU_OP_BATCH ||
	    n != sizeof(*m) + (size_t)m->n * sizeof(struct kvt_gpu_op_req)) {
		d->m.protocol_errors_total++;
		ret = -KVT_EPROTOCOL;
		goto reply;
	}
	if (!kvtd_gpu_on(d)) {
		ret = d->gpu_err ? d->gpu_err : -ENODEV;
		goto reply;
	}
	if (m->op == KVT_GPU_OP_RESERVE || m->op == KVT_GPU_OP_LEASE) {
		ret = kvt_layout_check(&m->layout);
		if (ret < 0)
			goto reply;
		fp = kvt_layout_fingerprint(&m->layout);
		block_bytes = kvt_layout_block_bytes(&m->layout);
		if (m->op == KVT_GPU_OP_RESERVE && (!m->len || m->len > block_bytes)) {
			ret = -EINVAL;
			goto reply;
		}
		geom = kvtd_geom_note(d, c->t, fp, &m->layout);
		if (geom >= 0)
			kvtd_geom_ref(d,
				      (uint32_t)geom); /* held for the batch; blocks take theirs */
		else if (geom == -KVT_ELIMIT && m->op == KVT_GPU_OP_RESERVE) {
			ret = (int)geom;
			goto reply;
		}
	}
	for (uint32_t k = 0; k < m->n; k++) {
		struct kvt_gpu_op_req q;

		memcpy(&q, &req[k], sizeof(q));
		memset(&res[k], 0, sizeof(res[k]));
		d->m.ring_requests_total++;
		switch (m->op) {
		case KVT_GPU_OP_RESERVE:
			gpu_reserve(d, c, fp, m, &q, &res[k]);
			break;
		case KVT_GPU_OP_COMMIT:
		case KVT_GPU_OP_ABORT:
			gpu_commit(d, c, &q, &res[k], m->op == KVT_GPU_OP_ABORT);
			break;
		case KVT_GPU_OP_LEASE:
			gpu_lease(d, c, fp, &q, &res[k]);
			break;
		case KVT_GPU_OP_RELEASE:
			gpu_release(d, c, &q, &res[k]);
			break;
		}
	}
	r->n = m->n;
	rlen += (size_t)m->n * sizeof(struct kvt_gpu_op_res);
	if (geom >= 0)
		kvtd_geom_unref(d, (uint32_t)geom);
reply:
	kvt_msg_init(&r->h, KVT_MSG_GPU_OP_REPLY, (uint32_t)rlen);
	r->res = ret;
	if (sock_send(c->sock, r, rlen, NULL, 0) < 0)
		client_kill(d, c, "reply failed");
}
