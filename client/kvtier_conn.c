/* SPDX-License-Identifier: MIT */
/*
 * libkvtier: the connection.  kvt_connect() opens the control socket, says HELLO and maps
 * the ring memfd and the arena memfd the daemon passes back (checking every offset of the
 * ring header before use); a daemon found gone is replaced on the next call by a new
 * connection that registers the client's layouts again under the same ids.  The socket also
 * carries the requests that are not on the rings: layout registration and statistics.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvtier_internal.h"

/* ---------------------------------------------------------------------------------------
 * Connection
 */
/* Receives one packet (and up to nfds descriptors) with a timeout. Returns its length. */
/* One message out; a signal during send() is no failure. 0 or -errno. */
static int send_all(int fd, const void *buf, size_t len)
{
	ssize_t n;

	do
		n = send(fd, buf, len, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	return n == (ssize_t)len ? 0 : n < 0 ? -errno : -EIO;
}

static ssize_t sock_recv(int fd, void *buf, size_t cap, int *fds, int nfds, int *got_fds,
			 int timeout_ms)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * KVT_HELLO_NFDS)];
		struct cmsghdr align;
	} u;
	struct iovec iov = {buf, cap};
	struct msghdr mh = {.msg_iov = &iov,
			    .msg_iovlen = 1,
			    .msg_control = u.buf,
			    .msg_controllen = sizeof(u.buf)};
	struct pollfd p = {fd, POLLIN, 0};
	ssize_t n;

	uint64_t start = mono_us();
	int pr;

	if (got_fds)
		*got_fds = 0;
	/* A signal (an engine's own, a profiler's) must neither fail the call nor make it wait
	 * past its timeout: poll again for what is left. */
	do {
		int left = timeout_ms;

		if (timeout_ms >= 0) {
			uint64_t el = (mono_us() - start) / 1000;
			left = el >= (uint64_t)timeout_ms ? 0 : timeout_ms - (int)el;
		}
		pr = poll(&p, 1, left);
	} while (pr < 0 && errno == EINTR);
	if (pr == 0)
		return -ETIMEDOUT;
	if (pr < 0)
		return -errno;
	do
		n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if (n == 0)
		return -KVT_EDAEMON;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		int tmp[KVT_HELLO_NFDS];
		if (k > KVT_HELLO_NFDS)
			k = KVT_HELLO_NFDS;
		memcpy(tmp, CMSG_DATA(cm), sizeof(int) * (size_t)k);
		for (int i = 0; i < k; i++) {
			if (fds && i < nfds && got_fds)
				fds[(*got_fds)++] = tmp[i];
			else
				close(tmp[i]);
		}
	}
	if (mh.msg_flags & MSG_TRUNC)
		return -KVT_EPROTOCOL;
	return n;
}

/* Maps the ring memfd and checks the header the daemon wrote (we trust no offset blindly). */
static int map_rings(struct kvt_client *c, int ringfd, uint32_t ring_size)
{
	struct kvt_shm_hdr h;
	struct stat st;

	if (fstat(ringfd, &st) < 0)
		return -errno;
	if ((uint64_t)st.st_size != ring_size || ring_size < KVT_SHM_HDR_SIZE)
		return -KVT_EPROTOCOL;
	c->ring =
	    mmap(NULL, ring_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ringfd, 0);
	if (c->ring == MAP_FAILED) {
		c->ring = NULL;
		return -errno;
	}
	c->ring_size = ring_size;
	memcpy(&h, c->ring, sizeof(h));
	if (h.magic != KVT_SHM_MAGIC || h.compat > KVT_SHM_VERSION)
		return -KVT_EVERSION;
	if (h.sqe_size != sizeof(struct kvt_sqe) || h.cqe_size != sizeof(struct kvt_cqe) ||
	    !h.sq_entries || (h.sq_entries & (h.sq_entries - 1)) || !h.cq_entries ||
	    (h.cq_entries & (h.cq_entries - 1)) || h.total_size != ring_size)
		return -KVT_EPROTOCOL;
	if ((uint64_t)h.sq_off + sizeof(struct kvt_ring_ctl) + (uint64_t)h.sq_entries * h.sqe_size >
		ring_size ||
	    (uint64_t)h.cq_off + sizeof(struct kvt_ring_ctl) + (uint64_t)h.cq_entries * h.cqe_size >
		ring_size ||
	    (uint64_t)h.scratch_off + h.scratch_size > ring_size ||
	    h.scratch_size < KVT_SCRATCH_SIZE || h.sq_off % KVT_CACHELINE ||
	    h.cq_off % KVT_CACHELINE)
		return -KVT_EPROTOCOL;
	c->sq = (struct kvt_ring_ctl *)(c->ring + h.sq_off);
	c->sqes = (struct kvt_sqe *)(c->ring + h.sq_off + sizeof(struct kvt_ring_ctl));
	c->cq = (struct kvt_ring_ctl *)(c->ring + h.cq_off);
	c->cqes = (struct kvt_cqe *)(c->ring + h.cq_off + sizeof(struct kvt_ring_ctl));
	c->scratch = c->ring + h.scratch_off;
	c->sq_entries = h.sq_entries;
	c->cq_entries = h.cq_entries;
	c->sq_tail = atomic_load_explicit(&c->sq->tail, memory_order_relaxed);
	c->cq_head = atomic_load_explicit(&c->cq->head, memory_order_relaxed);
	return 0;
}

/* Closes the connection and the rings.  The old arena stays mapped (and is unmapped by
 * kvt_close) because the caller may still read a lease or write a reservation in it. */
static void detach(struct kvt_client *c)
{
	if (c->sock >= 0)
		close(c->sock);
	if (c->sq_efd >= 0)
		close(c->sq_efd);
	if (c->cq_efd >= 0)
		close(c->cq_efd);
	c->sock = c->sq_efd = c->cq_efd = -1;
	if (c->ring)
		munmap(c->ring, c->ring_size);
	c->ring = NULL;
	if (c->arena) {
		/* Never unmapped before kvt_close(): a reservation or lease of this arena is told
		 * from a current one by its address (hold_current), so no later mapping may ever
		 * reuse these addresses.  attach() set spare_map aside for this. */
		struct old_map *om = c->spare_map;
		c->spare_map = NULL;
		om->p = c->arena;
		om->n = c->arena_size;
		om->next = c->old_maps;
		c->old_maps = om;
	}
	c->arena = NULL;
	free((void *)c->populated);
	c->populated = NULL;
}

/* With KVT_CONNECT_CHECK_UID: the socket's owner (the process that listens on it, as the
 * kernel recorded it at listen time) must be root, ourselves, or the uid the caller named;
 * anyone else could be a stand-in that reads every block we store. */
static int check_peer(const struct kvt_client *c)
{
	struct ucred cr;
	socklen_t n = sizeof(cr);

	if (c->expect_uid < 0)
		return 0;
	if (getsockopt(c->sock, SOL_SOCKET, SO_PEERCRED, &cr, &n) < 0)
		return -errno;
	if (cr.uid == 0 || cr.uid == geteuid() || (int64_t)cr.uid == c->expect_uid)
		return 0;
	return -EPERM;
}

/* Connects, says hello and maps the rings and the arena. Returns 0 or -errno. */
static int attach(struct kvt_client *c)
{
	struct kvt_msg_hello m;
	struct kvt_msg_hello_reply r;
	int fds[KVT_HELLO_NFDS], nfds = 0, ret;
	ssize_t n;
	struct stat st;

	if (!c->spare_map) {
		c->spare_map = malloc(sizeof(*c->spare_map));
		if (!c->spare_map)
			return -ENOMEM;
	}
	ret = kvt_sock_open(c->path, &c->sock);
	if (ret < 0)
		return ret;
	ret = check_peer(c);
	if (ret < 0)
		goto fail;
	memset(&m, 0, sizeof(m));
	kvt_msg_init(&m.h, KVT_MSG_HELLO, sizeof(m));
	m.lib_version = KVT_VERSION_NUMBER;
	m.pid = (uint32_t)getpid();
	memcpy(m.name, c->name, sizeof(m.name));
	if (send_all(c->sock, &m, sizeof(m)) < 0) {
		ret = -errno;
		goto fail;
	}
	n = sock_recv(c->sock, &r, sizeof(r), fds, KVT_HELLO_NFDS, &nfds, c->timeout_ms);
	if (n < 0) {
		ret = (int)n;
		goto fail;
	}
	if ((size_t)n >= sizeof(struct kvt_msg_result) && kvt_msg_check(&r, (size_t)n) == 0 &&
	    r.h.type == KVT_MSG_RESULT) {
		ret = ((struct kvt_msg_result *)&r)->res < 0 ? ((struct kvt_msg_result *)&r)->res
							     : -KVT_EPROTOCOL;
		goto fail;
	}
	if (kvt_msg_check(&r, (size_t)n) < 0 || r.h.type != KVT_MSG_HELLO_REPLY) {
		ret = -KVT_EPROTOCOL;
		goto fail;
	}
	if (r.res < 0) {
		ret = r.res;
		goto fail;
	}
	if (nfds != KVT_HELLO_NFDS) {
		ret = -KVT_EPROTOCOL;
		goto fail;
	}
	c->sq_efd = fds[2];
	c->cq_efd = fds[3];
	ret = map_rings(c, fds[0], r.ring_size);
	if (ret < 0)
		goto fail;
	if (fstat(fds[1], &st) < 0 || (uint64_t)st.st_size != r.arena_size || !r.arena_size) {
		ret = -KVT_EPROTOCOL;
		goto fail;
	}
	c->arena = mmap(NULL, r.arena_size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0);
	if (c->arena == MAP_FAILED) {
		c->arena = NULL;
		ret = -errno;
		goto fail;
	}
	c->arena_size = r.arena_size;
	c->populated = calloc((c->arena_size / POPULATE_CHUNK + 64) / 64, sizeof(uint64_t));
	if (!c->populated) {
		ret = -ENOMEM;
		goto fail;
	}
	c->epoch = r.epoch;
	c->broken = false;
	close(fds[0]);
	close(fds[1]);
	return 0;
fail:
	for (int i = 0; i < nfds; i++) {
		if (fds[i] != c->sq_efd && fds[i] != c->cq_efd)
			close(fds[i]);
	}
	detach(c);
	return ret;
}

static int layout_req_locked(struct kvt_client *c, const struct kvt_layout *l);

/*
 * The daemon went away: connect to its successor and register our layouts again, in the
 * same order, so layout ids stay what the caller holds.  Called with c->lock held.
 */
int kvtc_reattach_locked(struct kvt_client *c)
{
	int ret;

	detach(c);
	ret = attach(c);
	if (ret < 0)
		goto fail;
	for (uint32_t k = 0; k < c->nlayouts; k++) {
		ret = layout_req_locked(c, &c->layouts[k]);
		if (ret != (int)k) {
			ret = ret < 0 ? ret : -KVT_EPROTOCOL;
			goto fail;
		}
	}
	c->reconnects++;
	return 0;
fail:
	detach(c);
	c->broken = true;
	return ret == -ENOENT || ret == -ECONNREFUSED ? -KVT_EDAEMON : ret;
}

KVT_API int kvt_connect(const struct kvt_connect_opts *o, struct kvt_client **out)
{
	struct kvt_connect_opts opts = {sizeof(opts), NULL, NULL, 0, 0, 0};
	struct kvt_client *c;
	const char *spin;
	int ret;

	if (!out)
		return -EINVAL;
	*out = NULL;
	if (o) {
		if (o->size < sizeof(uint32_t))
			return -EINVAL;
		memcpy(&opts, o, o->size < sizeof(opts) ? o->size : sizeof(opts));
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	ret = kvt_socket_path(opts.socket_path, c->path, sizeof(c->path));
	if (ret < 0) {
		free(c);
		return ret;
	}
	c->magic = CLIENT_MAGIC;
	c->sock = c->sq_efd = c->cq_efd = -1;
	c->timeout_ms = opts.timeout_ms ? opts.timeout_ms : 10000;
	if (opts.flags & ~(uint32_t)KVT_CONNECT_CHECK_UID) {
		free(c);
		return -EINVAL;
	}
	c->expect_uid = opts.flags & KVT_CONNECT_CHECK_UID ? (int64_t)opts.daemon_uid : -1;
	snprintf(c->name, sizeof(c->name), "%s",
		 opts.name ? opts.name : program_invocation_short_name);
	spin = getenv("KVTIER_SPIN_US");
	c->spin_us = spin ? (unsigned)atoi(spin) : 50;
	pthread_mutex_init(&c->lock, NULL);
	ret = attach(c);
	if (ret < 0) {
		kvt_close(c);
		return ret;
	}
	*out = c;
	return 0;
}

KVT_API void kvt_close(struct kvt_client *c)
{
	if (!c)
		return;
	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	/* Closing the socket is the goodbye: the daemon returns every lease, pin and
	 * unfinished reservation of ours. */
	detach(c);
	while (c->old_maps) {
		struct old_map *om = c->old_maps;
		c->old_maps = om->next;
		munmap(om->p, om->n);
		free(om);
	}
	free(c->spare_map);
	for (uint32_t k = 0; k < c->nchains; k++)
		kvt_chain_free(c->chains[k].chain);
	pthread_mutex_destroy(&c->lock);
	c->magic = 0;
	free(c);
}

/* One request/reply on the socket; a dead connection marks the client broken. */
static int sock_call_locked(struct kvt_client *c, const void *req, size_t len, void *rep,
			    size_t cap, uint16_t want_type)
{
	struct kvt_msg_hdr h;
	ssize_t n;

	if (c->sock < 0)
		return -KVT_EDAEMON;
	if (send_all(c->sock, req, len) < 0) {
		c->broken = true;
		return -KVT_EDAEMON;
	}
	n = sock_recv(c->sock, rep, cap, NULL, 0, NULL, c->timeout_ms);
	if (n == -KVT_EDAEMON || n == -ECONNRESET)
		c->broken = true;
	if (n < 0)
		return (int)n;
	if (kvt_msg_check(rep, (size_t)n) < 0)
		return -KVT_EPROTOCOL;
	memcpy(&h, rep, sizeof(h));
	if (h.type == KVT_MSG_RESULT && want_type != KVT_MSG_RESULT)
		return ((struct kvt_msg_result *)rep)->res < 0 ? ((struct kvt_msg_result *)rep)->res
							       : -KVT_EPROTOCOL;
	return h.type == want_type ? 0 : -KVT_EPROTOCOL;
}

const struct kvt_chain *kvtc_chain_locked(struct kvt_client *c, uint32_t id, const char *spec)
{
	struct kvt_msg_layout_reply r;
	struct kvt_chain *chain;

	if (!id)
		return NULL;
	for (uint32_t k = 0; k < c->nchains; k++) {
		if (c->chains[k].id == id)
			return c->chains[k].chain;
	}
	if (!spec) {
		struct kvt_msg_chain m;

		memset(&m, 0, sizeof(m));
		kvt_msg_init(&m.h, KVT_MSG_CHAIN, sizeof(m));
		m.chain_id = id;
		if (sock_call_locked(c, &m, sizeof(m), &r, sizeof(r), KVT_MSG_LAYOUT_REPLY) < 0 ||
		    r.res < 0 || r.chain_id != id)
			return NULL;
		r.chain[sizeof(r.chain) - 1] = 0;
		spec = r.chain;
	}
	if (c->nchains == KVTC_MAX_CHAINS || kvt_chain_parse(spec, &chain) < 0)
		return NULL;
	/* Our codecs must name it as the daemon does: else our records would not be its
	 * chain's (a library and a daemon of different codec versions). */
	if (kvt_chain_id(chain) != id) {
		kvt_chain_free(chain);
		return NULL;
	}
	c->chains[c->nchains++] = (struct kvtc_chain_ent){id, chain};
	return chain;
}

/* Registers l (again) with the daemon: its id, and the chain its puts use from now on. */
static int layout_req_locked(struct kvt_client *c, const struct kvt_layout *l)
{
	struct kvt_msg_layout m;
	struct kvt_msg_layout_reply r;
	int ret;

	memset(&m, 0, sizeof(m));
	kvt_msg_init(&m.h, KVT_MSG_LAYOUT, sizeof(m));
	memcpy(&m.layout, l, sizeof(m.layout));
	m.layout.size = sizeof(m.layout);
	ret = sock_call_locked(c, &m, sizeof(m), &r, sizeof(r), KVT_MSG_LAYOUT_REPLY);
	if (ret < 0)
		return ret;
	if (r.res >= 0 && r.res < 64) {
		r.chain[sizeof(r.chain) - 1] = 0;
		/* A chain we cannot make as the daemon does: our puts stay raw (correct, only
		 * larger). */
		c->put_chain[r.res] = kvtc_chain_locked(c, r.chain_id, r.chain);
	}
	return r.res;
}

int kvtc_layout_refresh(struct kvt_client *c, int layout)
{
	int ret;

	pthread_mutex_lock(&c->lock);
	if (c->broken && kvtc_reattach_locked(c) < 0)
		ret = -KVT_EDAEMON;
	else
		ret = layout_req_locked(c, &c->layouts[layout]);
	pthread_mutex_unlock(&c->lock);
	return ret < 0 ? ret : ret == layout ? 0 : -KVT_EPROTOCOL;
}

KVT_API int kvt_register_layout(struct kvt_client *c, const struct kvt_layout *l)
{
	int ret = check_client(c);

	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	if (ret < 0)
		return ret;
	ret = kvt_layout_check(l);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&c->lock);
	if (c->broken && kvtc_reattach_locked(c) < 0) {
		ret = -KVT_EDAEMON;
		goto out;
	}
	ret = layout_req_locked(c, l);
	if (ret >= 0 && ret < 64) {
		memcpy(&c->layouts[ret], l, sizeof(*l));
		c->layouts[ret].size = sizeof(*l);
		if ((uint32_t)ret >= c->nlayouts)
			c->nlayouts = (uint32_t)ret + 1;
	}
out:
	pthread_mutex_unlock(&c->lock);
	return ret;
}

KVT_API int kvt_stats(struct kvt_client *c, struct kvt_stats *st)
{
	struct kvt_msg_hdr m;
	struct kvt_msg_stats r;
	struct kvt_stats out;
	int ret = check_client(c);

	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	if (ret < 0)
		return ret;
	if (!st || st->size < 8)
		return -EINVAL;
	kvt_msg_init(&m, KVT_MSG_STATS, sizeof(m));
	pthread_mutex_lock(&c->lock);
	if (c->broken && kvtc_reattach_locked(c) < 0)
		ret = -KVT_EDAEMON;
	else
		ret = sock_call_locked(c, &m, sizeof(m), &r, sizeof(r), KVT_MSG_STATS);
	pthread_mutex_unlock(&c->lock);
	if (ret < 0)
		return ret;
	memset(&out, 0, sizeof(out));
	out.size = st->size < sizeof(out) ? st->size : (uint32_t)sizeof(out);
	out.puts = r.puts;
	out.gets = r.gets;
	out.hits = r.hits;
	out.misses = r.misses;
	out.lookups = r.lookups;
	out.host_capacity_bytes = r.host_capacity_bytes;
	out.host_used_bytes = r.host_used_bytes;
	out.host_blocks = r.host_blocks;
	out.evictions = r.evictions;
	out.host_hits = r.host_hits;
	out.host_misses = r.host_misses;
	out.promotions = r.promotions;
	out.prefetch_useful = r.prefetch_useful;
	out.prefetch_late = r.prefetch_late;
	memcpy(st, &out, out.size);
	return 0;
}
