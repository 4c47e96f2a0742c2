/* SPDX-License-Identifier: MIT */
/*
 * libkvtier's device API: engine pages on the GPU <-> the daemon's GPU pool (device to
 * device) or the host arena (DMA), through gpu/'s copy engine.
 *
 * The GPU tier is reached over a connection of its own (KVT_HELLO_DEVICE): GPU_ATTACH gives
 * the pool's descriptor, batched GPU_OP messages reserve, commit, lease and release pool
 * blocks.  The host tier is reached through the client's public calls (reserve/commit,
 * lease/release), whose arena memory the library registers with CUDA once per mapping.
 *
 * This file: the device connection, the arena registration, open and close; put and get are
 * in kvtier_gpu_copy.c (kvtier_gpu_internal.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "kvtier_gpu_internal.h"

KVT_API int kvt_dev_available(void)
{
	return kvt_gpu_available();
}

/* ---- the device connection ------------------------------------------------------------- */

static void sock_close(struct kvt_dev *d)
{
	if (d->sock >= 0)
		close(d->sock);
	d->sock = -1;
}

/* One request, one reply of type want.  -KVT_EDAEMON when the daemon is gone. */
static int call(struct kvt_dev *d, const void *req, size_t len, void *rep, size_t cap,
		uint16_t want)
{
	struct pollfd p = {d->sock, POLLIN, 0};
	struct kvt_msg_hdr h;
	struct timespec t0, t1;
	ssize_t n;
	int pr, left = DEV_TIMEOUT;

	if (d->sock < 0)
		return -KVT_EDAEMON;
	/* Signals (the engine's, a profiler's) are retried, within the same timeout. */
	do
		n = send(d->sock, req, len, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)len)
		goto gone;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while ((pr = poll(&p, 1, left)) < 0 && errno == EINTR) {
		clock_gettime(CLOCK_MONOTONIC, &t1);
		left = DEV_TIMEOUT -
		       (int)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
		if (left < 0)
			left = 0;
	}
	if (pr <= 0)
		goto gone;
	do
		n = recv(d->sock, rep, cap, MSG_TRUNC | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		goto gone;
	if ((size_t)n > cap || kvt_msg_check(rep, (size_t)n) < 0)
		return -KVT_EPROTOCOL;
	memcpy(&h, rep, sizeof(h));
	if (h.type == KVT_MSG_RESULT)
		return ((struct kvt_msg_result *)rep)->res < 0 ? ((struct kvt_msg_result *)rep)->res
							       : -KVT_EPROTOCOL;
	return h.type == want ? (int)n : -KVT_EPROTOCOL;
gone:
	sock_close(d);
	return -KVT_EDAEMON;
}

/*
 * (Re)connects and maps the daemon's pool.  A pool of another epoch (a restarted daemon)
 * replaces the old mapping, once the copies queued on it are done.  Returns 0 with
 * d->gpu_tier telling whether the GPU tier can be used, or -errno when the daemon is gone.
 */
static int attach(struct kvt_dev *d)
{
	struct kvt_msg_hello m;
	union {
		struct kvt_msg_hello_reply h;
		struct kvt_msg_gpu_attach_reply g;
	} r;
	struct kvt_msg_hdr a;
	struct kvt_gpu_ipc_desc desc;
	struct kvt_gpu_pool *pool = NULL;
	int ret;

	sock_close(d);
	d->gpu_tier = false;
	d->tried = true;
	ret = kvt_sock_open(d->path, &d->sock);
	if (ret < 0)
		return ret == -ENOENT || ret == -ECONNREFUSED ? -KVT_EDAEMON : ret;
	memset(&m, 0, sizeof(m));
	kvt_msg_init(&m.h, KVT_MSG_HELLO, sizeof(m));
	m.lib_version = KVT_VERSION_NUMBER;
	m.pid = (uint32_t)getpid();
	m.want_admin = KVT_HELLO_DEVICE;
	snprintf(m.name, sizeof(m.name), "%s (gpu)", program_invocation_short_name);
	ret = call(d, &m, sizeof(m), &r, sizeof(r), KVT_MSG_HELLO_REPLY);
	if (ret < 0)
		goto fail;
	if (r.h.res < 0) {
		ret = r.h.res;
		goto fail;
	}
	kvt_msg_init(&a, KVT_MSG_GPU_ATTACH, sizeof(a));
	ret = call(d, &a, sizeof(a), &r, sizeof(r), KVT_MSG_GPU_ATTACH_REPLY);
	if (ret < 0)
		goto fail;
	if (r.g.res < 0)
		return 0; /* no GPU tier there: the host tier serves every call */
	memcpy(&desc, r.g.desc, sizeof(desc));
	d->bits = r.g.codec == KVT_GPU_CODEC_INT8 ? 8 : r.g.codec == KVT_GPU_CODEC_INT4 ? 4 : 0;
	if (d->pool && desc.epoch == d->desc.epoch && !memcmp(&desc, &d->desc, sizeof(desc))) {
		d->gpu_tier = true;
		return 0;
	}
	if (kvt_gpu_pool_open(&desc, &pool) < 0)
		return 0; /* a pool on a GPU we cannot reach: host tier only */
	if (d->pool) {
		kvt_gpu_stream_sync(d->own_stream);
		kvt_gpu_pool_close(d->pool);
		d->reattaches++;
	}
	d->pool = pool;
	d->desc = desc;
	d->epoch = desc.epoch;
	d->gpu_tier = true;
	return 0;
fail:
	sock_close(d);
	return ret;
}

/* Makes sure the device connection is up (reconnecting after a daemon restart). */
void kvtc_dev_ensure_attached(struct kvt_dev *d)
{
	if (d->sock < 0)
		attach(d);
}

/*
 * One GPU_OP over n entries of req; results into res.  Returns 0 or the message-level error
 * (-KVT_EDAEMON: the daemon went away, nothing of this message happened in the new one).
 */
int kvtc_dev_gpu_op(struct kvt_dev *d, uint32_t op, const struct kvt_layout *l, uint32_t len,
		    uint32_t tile_tokens, const struct kvt_gpu_op_req *req, uint32_t n,
		    struct kvt_gpu_op_res *res)
{
	struct kvt_msg_gpu_op *m = (struct kvt_msg_gpu_op *)d->msg;
	size_t mlen = sizeof(*m) + (size_t)n * sizeof(*req);
	uint8_t *rep = d->msg + KVT_MSG_MAX;
	struct kvt_msg_gpu_op_reply r;
	int ret;

	memset(m, 0, sizeof(*m));
	kvt_msg_init(&m->h, KVT_MSG_GPU_OP, (uint32_t)mlen);
	m->op = op;
	m->n = n;
	m->len = len;
	m->tile_tokens = tile_tokens;
	if (l)
		m->layout = *l;
	memcpy(m + 1, req, (size_t)n * sizeof(*req));
	ret = call(d, m, mlen, rep, KVT_MSG_MAX, KVT_MSG_GPU_OP_REPLY);
	if (ret < 0)
		return ret;
	memcpy(&r, rep, sizeof(r));
	if (r.res < 0)
		return r.res;
	if (r.n != n || (size_t)ret != sizeof(r) + (size_t)n * sizeof(*res))
		return -KVT_EPROTOCOL;
	memcpy(res, rep + sizeof(r), (size_t)n * sizeof(*res));
	return 0;
}

/* ---- host arena registration ------------------------------------------------------------ */

/* The mapping of this process that contains p, from /proc/self/maps. */
static int find_mapping(const void *p, void **base, size_t *len)
{
	uintptr_t a = (uintptr_t)p;
	char line[512];
	FILE *f = fopen("/proc/self/maps", "re");
	int ret = -ENOENT;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		uintptr_t lo, hi;

		if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR, &lo, &hi) != 2)
			continue;
		if (a >= lo && a < hi) {
			*base = (void *)lo;
			*len = hi - lo;
			ret = 0;
			break;
		}
	}
	fclose(f);
	return ret;
}

uint64_t kvtc_dev_clock(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int kvtc_dev_flag_wait(struct kvt_dev *d, const uint64_t *flag, uint64_t v)
{
	uint64_t t0;
	int ret;

	if (kvt_gpu_flag_done(flag, v))
		return 0;
	t0 = kvtc_dev_clock();
	ret = kvt_gpu_flag_wait(flag, v, FLAG_TIMEOUT);
	d->wait_ns += kvtc_dev_clock() - t0;
	return ret;
}

int kvtc_dev_stream_sync(struct kvt_dev *d, void *stream)
{
	uint64_t t0 = kvtc_dev_clock();
	int ret = kvt_gpu_stream_sync(stream);

	d->wait_ns += kvtc_dev_clock() - t0;
	return ret;
}

/*
 * Makes [p, p + n) DMA-capable: the arena mapping holding it is registered with CUDA once.
 * A new mapping (the arena of a restarted daemon) is registered when first seen.
 */
int kvtc_dev_host_ready(struct kvt_dev *d, const void *p, size_t n)
{
	void *base;
	size_t len;
	int ret;

	for (unsigned k = 0; k < d->nreg; k++) {
		if ((const uint8_t *)p >= (uint8_t *)d->reg[k].base &&
		    (const uint8_t *)p + n <= (uint8_t *)d->reg[k].base + d->reg[k].len)
			return 0;
	}
	ret = find_mapping(p, &base, &len);
	if (ret < 0)
		return ret;
	if (d->nreg == DEV_REGS) {
		/* Oldest first: arenas of daemons long gone hold no live block of ours. */
		kvt_gpu_host_unregister(d->reg[0].base);
		memmove(d->reg, d->reg + 1, (DEV_REGS - 1) * sizeof(d->reg[0]));
		d->nreg--;
	}
	ret = kvt_gpu_host_register(base, len);
	if (ret < 0)
		return ret;
	d->reg[d->nreg].base = base;
	d->reg[d->nreg].len = len;
	d->nreg++;
	return 0;
}

/* ---- open / close ------------------------------------------------------------------------ */

KVT_API void kvt_dev_close(struct kvt_dev *d)
{
	KVT_CHECK_MAGIC(d, DEV_MAGIC);
	if (!d || d->magic != DEV_MAGIC)
		return;
	if (d->own_stream)
		kvt_gpu_stream_sync(d->own_stream);
	sock_close(d);
	kvt_gpu_pool_close(d->pool);
	for (unsigned k = 0; k < d->nreg; k++)
		kvt_gpu_host_unregister(d->reg[k].base);
	kvt_gpu_engine_destroy(d->eng);
	kvt_gpu_stream_destroy(d->own_stream);
	kvt_gpu_host_free(d->flag);
	pthread_mutex_destroy(&d->lock);
	free(d->msg);
	free(d->segs);
	free(d->blk);
	free(d->ids);
	free(d->addrs);
	free(d->jobs);
	free(d->xjobs);
	kvtc_devq_free(d);
	d->magic = 0;
	free(d);
}

KVT_API int kvt_dev_open(struct kvt_client *c, const struct kvt_dev_opts *o, struct kvt_dev **out)
{
	struct kvt_dev_opts opts = {sizeof(opts), -1, NULL, 0};
	struct kvt_gpu_engine_opts eo = {sizeof(eo), -1, 0, 0, 0};
	struct kvt_dev *d;
	int ret;

	if (!out || !c)
		return -EINVAL;
	*out = NULL;
	if (o) {
		if (o->size < sizeof(uint32_t))
			return -EINVAL;
		memcpy(&opts, o, o->size < sizeof(opts) ? o->size : sizeof(opts));
	}
	if (kvt_gpu_available() <= 0)
		return -ENODEV;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->magic = DEV_MAGIC;
	d->c = c;
	d->sock = -1;
	d->flags = opts.flags;
	pthread_mutex_init(&d->lock, NULL);
	ret = kvt_socket_path(opts.socket_path, d->path, sizeof(d->path));
	if (ret < 0)
		goto fail;
	if (opts.device >= 0) {
		ret = kvt_gpu_set_device(opts.device);
		if (ret < 0)
			goto fail;
	}
	d->device = opts.device;
	d->msg = malloc(2 * (size_t)KVT_MSG_MAX);
	if (!d->msg) {
		ret = -ENOMEM;
		goto fail;
	}
	ret = kvt_gpu_stream_create(&d->own_stream);
	if (ret < 0)
		goto fail;
	eo.device = opts.device;
	ret = kvt_gpu_engine_create(&eo, &d->eng);
	if (ret < 0)
		goto fail;
	ret = kvt_gpu_host_alloc(64, (void **)&d->flag);
	if (ret < 0)
		goto fail;
	memset(d->flag, 0, 64); /* flag[0]: the copies' fence, flag[1]: the codec stream's */
	if (!(d->flags & KVT_DEV_HOST_ONLY))
		attach(d); /* no daemon GPU tier is not an error: the host tier serves */
	*out = d;
	return 0;
fail:
	kvt_dev_close(d);
	return ret;
}

KVT_API int kvt_dev_layout(struct kvt_dev *d, const struct kvt_layout *l)
{
	int ret;

	KVT_CHECK_MAGIC(d, DEV_MAGIC);
	if (!d || d->magic != DEV_MAGIC || !l)
		return -EINVAL;
	pthread_mutex_lock(&d->lock);
	for (unsigned k = 0; k < d->nlayouts; k++) {
		if (!memcmp(&d->layouts[k], l, sizeof(*l))) {
			ret = (int)k;
			goto out;
		}
	}
	if (d->nlayouts == DEV_LAYOUTS) {
		ret = -KVT_ELIMIT;
		goto out;
	}
	ret = kvt_register_layout(d->c, l);
	if (ret < 0)
		goto out;
	d->layouts[d->nlayouts] = *l;
	d->host_id[d->nlayouts] = ret;
	ret = (int)d->nlayouts++;
out:
	pthread_mutex_unlock(&d->lock);
	return ret;
}

KVT_API int kvt_dev_info(struct kvt_dev *d, struct kvt_dev_info *st)
{
	struct kvt_dev_info i;

	KVT_CHECK_MAGIC(d, DEV_MAGIC);
	if (!d || d->magic != DEV_MAGIC || !st || st->size < sizeof(uint32_t))
		return -EINVAL;
	memset(&i, 0, sizeof(i));
	i.size = sizeof(i);
	pthread_mutex_lock(&d->lock);
	i.gpu_tier = d->gpu_tier;
	i.epoch = d->pool ? d->epoch : 0;
	i.pool_bytes = d->pool ? d->desc.bytes : 0;
	if (d->pool)
		kvt_gpu_uuid_format(d->desc.uuid, i.uuid);
	i.reattaches = d->reattaches;
	i.gpu_puts = d->gpu_puts;
	i.host_puts = d->host_puts;
	i.gpu_gets = d->gpu_gets;
	i.host_gets = d->host_gets;
	i.wait_ns = d->wait_ns;
	i.gpu_encodes = d->gpu_encodes;
	i.gpu_decodes = d->gpu_decodes;
	i.cpu_decodes = d->cpu_decodes;
	i.daemon_ns = d->daemon_ns;
	i.queue_ns = d->queue_ns;
	pthread_mutex_unlock(&d->lock);
	memcpy(st, &i, st->size < sizeof(i) ? st->size : sizeof(i));
	st->size = i.size < st->size ? i.size : st->size;
	return 0;
}
