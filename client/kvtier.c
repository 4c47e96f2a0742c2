/* SPDX-License-Identifier: MIT */
/*
 * libkvtier: the client side.  A request is one 64-byte ring entry; the library waits for
 * its completion by spinning briefly and then sleeping on an eventfd (the daemon only
 * signals it when we said we sleep).  Block bytes move by memcpy between the caller's
 * memory and the shared arena; nothing large crosses the socket.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "kvt_proto.h"
#include "kvt_ring.h"
#include "kvtier.h"

#define CLIENT_MAGIC   0x4b56434cu /* "KVCL" */
#define POPULATE_CHUNK (2u << 20)

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

struct old_map {
	void *p;
	size_t n;
	struct old_map *next;
};

struct kvt_client {
	uint32_t magic;
	int sock, sq_efd, cq_efd;
	uint8_t *ring;
	size_t ring_size;
	uint8_t *arena;
	size_t arena_size;
	struct kvt_ring_ctl *sq, *cq;
	struct kvt_sqe *sqes;
	struct kvt_cqe *cqes;
	uint8_t *scratch;
	uint32_t sq_entries, cq_entries;
	uint32_t sq_tail, cq_head;
	uint64_t next_ud;
	pthread_mutex_t lock;
	int timeout_ms;
	unsigned spin_us;
	bool broken;
	_Atomic uint64_t *populated; /* one bit per POPULATE_CHUNK of arena mapped here */
	struct kvt_layout layouts[64];
	uint32_t nlayouts;
	char path[108];
	char name[64];
	uint64_t epoch;
	unsigned reconnects;
	int64_t expect_uid; /* kvt_connect_opts.daemon_uid */
	struct old_map *old_maps;
	struct old_map *spare_map; /* for detach(), which must not fail to keep the arena */
};

static uint64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

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
static int reattach_locked(struct kvt_client *c)
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
	pthread_mutex_destroy(&c->lock);
	c->magic = 0;
	free(c);
}

/* ---------------------------------------------------------------------------------------
 * Requests
 */
/* Takes the next completion off the CQ into *q.  Returns 1, 0 when there is none, or
 * -KVT_EPROTOCOL when the daemon's tail is out of range. */
static int cq_pop(struct kvt_client *c, struct kvt_cqe *q)
{
	uint32_t tail = kvt_ring_tail(c->cq);

	if (tail == c->cq_head)
		return 0;
	if (tail - c->cq_head > c->cq_entries) {
		c->broken = true;
		return -KVT_EPROTOCOL;
	}
	memcpy(q, &c->cqes[c->cq_head & (c->cq_entries - 1)], sizeof(*q));
	c->cq_head++;
	kvt_ring_consume(c->cq, c->cq_head);
	return 1;
}

/*
 * Waits until the CQ holds a completion: spins for spin_us after *start, then sleeps on the
 * eventfd with NEED_WAKEUP set (*asleep tells the caller to clear it once served).  Returns
 * 0, -ETIMEDOUT (timeout_ms after *start) or -KVT_EDAEMON (the socket hung up).
 */
static int cq_wait(struct kvt_client *c, uint64_t start, bool *asleep)
{
	for (;;) {
		if (kvt_ring_tail(c->cq) != c->cq_head)
			return 0;
		uint64_t spun = mono_us() - start;
		if (spun < c->spin_us) {
			/* Pause-spin briefly; then yield, so that a daemon sharing our core (a
			 * busy 2-core host) gets to run instead of waiting out our time slice. */
			if (spun < 4)
				kvt_cpu_relax();
			else
				sched_yield();
			continue;
		}
		if (!*asleep) {
			*asleep = true;
			if (kvt_ring_prepare_sleep(c->cq) != c->cq_head)
				return 0;
		}
		struct pollfd p[2] = {{c->cq_efd, POLLIN, 0}, {c->sock, POLLRDHUP, 0}};
		int left = -1;
		if (c->timeout_ms >= 0) {
			uint64_t el = (mono_us() - start) / 1000;
			if (el >= (uint64_t)c->timeout_ms)
				return -ETIMEDOUT;
			left = c->timeout_ms - (int)el;
		}
		int pr = poll(p, 2, left);
		if (pr < 0 && errno != EINTR)
			return -errno;
		if (pr > 0 && (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR)) &&
		    kvt_ring_tail(c->cq) == c->cq_head) {
			c->broken = true;
			return -KVT_EDAEMON;
		}
		if (pr > 0 && (p[0].revents & POLLIN)) {
			uint64_t v;
			ssize_t rr = read(c->cq_efd, &v, sizeof(v));
			(void)rr;
		}
	}
}

static int wait_cqe(struct kvt_client *c, uint64_t ud, struct kvt_cqe *out)
{
	uint64_t start = mono_us();
	bool asleep = false;
	int ret;

	for (;;) {
		struct kvt_cqe q;

		while ((ret = cq_pop(c, &q)) > 0) {
			if (q.user_data == ud) {
				if (asleep)
					kvt_ring_awake(c->cq);
				*out = q;
				return 0;
			}
			/* A completion of a request that timed out earlier: drop it. */
		}
		if (ret < 0)
			return ret;
		ret = cq_wait(c, start, &asleep);
		if (ret < 0)
			return ret;
	}
}

/* Room for one more entry in the SQ?  -KVT_EPROTOCOL when the daemon's head is absurd. */
static int sq_room(struct kvt_client *c)
{
	uint32_t pending = kvt_ring_pending(c->sq, c->sq_tail);

	if (pending > c->sq_entries) {
		c->broken = true;
		return -KVT_EPROTOCOL;
	}
	return pending < c->sq_entries;
}

/* Writes one entry (its user_data set) without publishing it; the SQ must have room. */
static void sq_push(struct kvt_client *c, const struct kvt_sqe *s)
{
	memcpy(&c->sqes[c->sq_tail & (c->sq_entries - 1)], s, sizeof(*s));
	c->sq_tail++;
}

/* Publishes what sq_push() wrote and wakes the daemon if it sleeps: one wake-up a batch. */
static void sq_publish(struct kvt_client *c)
{
	kvt_ring_publish(c->sq, c->sq_tail);
	if (kvt_ring_needs_wakeup(c->sq)) {
		uint64_t one = 1;
		ssize_t w = write(c->sq_efd, &one, sizeof(one));
		(void)w;
	}
}

/*
 * Submits one entry and, unless it carries KVT_SQE_F_NO_CQE, waits for its completion.
 * Called with c->lock held.
 */
static int submit_locked(struct kvt_client *c, struct kvt_sqe *s, struct kvt_cqe *q)
{
	uint64_t start = mono_us();

	/* Handles from before a reconnect name nothing in the new daemon. */
	if (c->broken &&
	    (s->op == KVT_OP_COMMIT || s->op == KVT_OP_ABORT || s->op == KVT_OP_RELEASE))
		return -KVT_EDAEMON;
	if (c->broken && reattach_locked(c) < 0)
		return -KVT_EDAEMON;
	s->user_data = ++c->next_ud;
	/* The ring is full only when the daemon lags behind fire-and-forget releases. */
	while (kvt_ring_pending(c->sq, c->sq_tail) >= c->sq_entries) {
		if (kvt_ring_pending(c->sq, c->sq_tail) > c->sq_entries) {
			c->broken = true;
			return -KVT_EPROTOCOL;
		}
		uint64_t one = 1;
		ssize_t w = write(c->sq_efd, &one, sizeof(one));
		(void)w;
		if (c->timeout_ms >= 0 && mono_us() - start > (uint64_t)c->timeout_ms * 1000)
			return -ETIMEDOUT;
		sched_yield();
	}
	memcpy(&c->sqes[c->sq_tail & (c->sq_entries - 1)], s, sizeof(*s));
	c->sq_tail++;
	kvt_ring_publish(c->sq, c->sq_tail);
	if (kvt_ring_needs_wakeup(c->sq)) {
		uint64_t one = 1;
		ssize_t w = write(c->sq_efd, &one, sizeof(one));
		(void)w;
	}
	if (s->flags & KVT_SQE_F_NO_CQE)
		return 0;
	return wait_cqe(c, s->user_data, q);
}

/* Requests that can simply be asked again of a restarted daemon. */
static bool retryable(uint8_t op)
{
	return op == KVT_OP_LOOKUP || op == KVT_OP_LEASE || op == KVT_OP_RESERVE ||
	       op == KVT_OP_NOP;
}

static int submit(struct kvt_client *c, struct kvt_sqe *s, struct kvt_cqe *q)
{
	int ret;

	pthread_mutex_lock(&c->lock);
	ret = submit_locked(c, s, q);
	if (ret == -KVT_EDAEMON && retryable(s->op))
		ret = submit_locked(c, s, q);
	pthread_mutex_unlock(&c->lock);
	if (ret < 0)
		return ret;
	return (s->flags & KVT_SQE_F_NO_CQE) ? 0 : q->res;
}

static int check_client(const struct kvt_client *c)
{
	if (!c || c->magic != CLIENT_MAGIC)
		return -EINVAL;
	return 0;
}

static int key_sqe(struct kvt_client *c, uint8_t op, int layout, const struct kvt_key *key,
		   struct kvt_sqe *s)
{
	int ret = check_client(c);

	if (ret < 0)
		return ret;
	if (!key)
		return -EINVAL;
	if (layout < 0 || (uint32_t)layout >= c->nlayouts)
		return -KVT_ENOLAYOUT;
	memset(s, 0, sizeof(*s));
	s->op = op;
	s->layout = (uint16_t)layout;
	s->key_lo = key->lo;
	s->key_hi = key->hi;
	return 0;
}

/* Makes sure the arena pages of [off, off + len) are mapped in this process, so that the
 * copy itself runs without page faults (each 4 KiB fault would cost more than the copy). */
static void populate(struct kvt_client *c, uint64_t off, uint64_t len)
{
	uint64_t first = off / POPULATE_CHUNK, last = (off + len - 1) / POPULATE_CHUNK;

	for (uint64_t k = first; k <= last; k++) {
		uint64_t bit = 1ull << (k & 63);

		if (atomic_load_explicit(&c->populated[k / 64], memory_order_relaxed) & bit)
			continue;
		uint64_t start = k * POPULATE_CHUNK;
		uint64_t n =
		    c->arena_size - start < POPULATE_CHUNK ? c->arena_size - start : POPULATE_CHUNK;
		madvise(c->arena + start, n, MADV_POPULATE_WRITE);
		atomic_fetch_or_explicit(&c->populated[k / 64], bit, memory_order_relaxed);
	}
}

/*
 * Block copies.  Blocks are large and written once, read elsewhere (a GPU DMA, another
 * process): streaming stores skip the read-for-ownership of the destination and the
 * pollution of the cache, which makes a 256 KiB copy 1.3-1.6x faster than memcpy here.
 */
#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx2"))) static void copy_stream_avx2(void *dst, const void *src, size_t n)
{
	uint8_t *d = dst;
	const uint8_t *s = src;
	size_t head = (32 - ((uintptr_t)d & 31)) & 31;

	memcpy(d, s, head);
	d += head;
	s += head;
	n -= head;
	for (; n >= 128; n -= 128, d += 128, s += 128) {
		__m256i a = _mm256_loadu_si256((const __m256i *)s);
		__m256i b = _mm256_loadu_si256((const __m256i *)(s + 32));
		__m256i c = _mm256_loadu_si256((const __m256i *)(s + 64));
		__m256i e = _mm256_loadu_si256((const __m256i *)(s + 96));
		_mm256_stream_si256((__m256i *)d, a);
		_mm256_stream_si256((__m256i *)(d + 32), b);
		_mm256_stream_si256((__m256i *)(d + 64), c);
		_mm256_stream_si256((__m256i *)(d + 96), e);
	}
	memcpy(d, s, n);
	/* Streaming stores are weakly ordered: fence before the commit publishes the block. */
	_mm_sfence();
}
#endif

#define STREAM_MIN (64u << 10)

static void copy_block(void *dst, const void *src, size_t n)
{
#if defined(__x86_64__)
	static int avx2 = -1;

	if (avx2 < 0)
		avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
	if (n >= STREAM_MIN && avx2) {
		copy_stream_avx2(dst, src, n);
		return;
	}
#endif
	memcpy(dst, src, n);
}

/* A completion's offset and length must lie inside the arena before we touch memory. */
static int check_extent(const struct kvt_client *c, uint64_t off, uint64_t len)
{
	if (off > c->arena_size || len > c->arena_size - off)
		return -KVT_EPROTOCOL;
	return 0;
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

static int layout_req_locked(struct kvt_client *c, const struct kvt_layout *l)
{
	struct kvt_msg_layout m;
	struct kvt_msg_result r;
	int ret;

	memset(&m, 0, sizeof(m));
	kvt_msg_init(&m.h, KVT_MSG_LAYOUT, sizeof(m));
	memcpy(&m.layout, l, sizeof(m.layout));
	m.layout.size = sizeof(m.layout);
	ret = sock_call_locked(c, &m, sizeof(m), &r, sizeof(r), KVT_MSG_RESULT);
	return ret < 0 ? ret : r.res;
}

KVT_API int kvt_register_layout(struct kvt_client *c, const struct kvt_layout *l)
{
	int ret = check_client(c);

	if (ret < 0)
		return ret;
	ret = kvt_layout_check(l);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&c->lock);
	if (c->broken && reattach_locked(c) < 0) {
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

KVT_API int kvt_put_reserve(struct kvt_client *c, int layout, const struct kvt_key *key, size_t len,
			    struct kvt_reservation *r)
{
	struct kvt_sqe s;
	struct kvt_cqe q;
	int ret = key_sqe(c, KVT_OP_RESERVE, layout, key, &s);

	if (ret < 0)
		return ret;
	if (!r || !len || len > kvt_layout_block_bytes(&c->layouts[layout]))
		return -EINVAL;
	if (len > UINT32_MAX)
		return -E2BIG;
	s.len = (uint32_t)len;
	ret = submit(c, &s, &q);
	if (ret < 0)
		return ret;
	if (check_extent(c, q.off, len) < 0)
		return -KVT_EPROTOCOL;
	populate(c, q.off, len);
	r->data = c->arena + q.off;
	r->len = len;
	r->handle = q.handle;
	r->layout = layout;
	r->key = *key;
	return 0;
}

/*
 * Is a reservation or lease at ptr one of the current connection?  Handles are numbered
 * per daemon, so one of a previous daemon would name another client's hold in its
 * successor.  Its memory tells: each connection maps the arena at addresses of its own,
 * and detach() keeps old mappings until kvt_close(), so they are never reused.  Called
 * with c->lock held.
 */
static bool hold_current(const struct kvt_client *c, const void *ptr)
{
	const uint8_t *p = ptr;

	return !c->broken && c->arena && p >= c->arena && p < c->arena + c->arena_size;
}

/* Sends COMMIT, ABORT or RELEASE of a hold at ptr, unless it belongs to a previous daemon. */
static int submit_hold(struct kvt_client *c, const void *ptr, struct kvt_sqe *s, struct kvt_cqe *q)
{
	int ret;

	pthread_mutex_lock(&c->lock);
	ret = hold_current(c, ptr) ? submit_locked(c, s, q) : -KVT_EDAEMON;
	pthread_mutex_unlock(&c->lock);
	if (ret < 0)
		return ret;
	return (s->flags & KVT_SQE_F_NO_CQE) ? 0 : q->res;
}

static int finish(struct kvt_client *c, struct kvt_reservation *r, uint8_t op, uint32_t pos)
{
	struct kvt_sqe s;
	struct kvt_cqe q;
	int ret = check_client(c);

	if (ret < 0)
		return ret;
	if (!r || !r->data)
		return -EINVAL;
	memset(&s, 0, sizeof(s));
	s.op = op;
	s.handle = r->handle;
	s.arg = pos == KVT_POS_UNKNOWN ? 0 : (uint64_t)pos + 1; /* 0: unknown */
	ret = submit_hold(c, r->data, &s, &q);
	r->data = NULL;
	return ret < 0 ? ret : 0;
}

KVT_API int kvt_put_commit(struct kvt_client *c, struct kvt_reservation *r)
{
	return finish(c, r, KVT_OP_COMMIT, KVT_POS_UNKNOWN);
}

KVT_API int kvt_put_commit_at(struct kvt_client *c, struct kvt_reservation *r, uint32_t first_token)
{
	return finish(c, r, KVT_OP_COMMIT, first_token);
}

KVT_API int kvt_put_abort(struct kvt_client *c, struct kvt_reservation *r)
{
	return finish(c, r, KVT_OP_ABORT, KVT_POS_UNKNOWN);
}

KVT_API int kvt_put(struct kvt_client *c, int layout, const struct kvt_key *key, const void *data,
		    size_t len)
{
	return kvt_put_at(c, layout, key, KVT_POS_UNKNOWN, data, len);
}

KVT_API int kvt_put_at(struct kvt_client *c, int layout, const struct kvt_key *key,
		       uint32_t first_token, const void *data, size_t len)
{
	struct kvt_reservation r;
	int ret;

	if (!data && len)
		return -EINVAL;
	for (int attempt = 0;; attempt++) {
		ret = kvt_put_reserve(c, layout, key, len, &r);
		if (ret == -EEXIST)
			return 1;
		if (ret < 0)
			return ret;
		copy_block(r.data, data, len);
		ret = kvt_put_commit_at(c, &r, first_token);
		/* The daemon restarted between reserve and commit: once more from the top. */
		if (ret != -KVT_EDAEMON || attempt)
			return ret;
	}
}

KVT_API int kvt_get_lease(struct kvt_client *c, int layout, const struct kvt_key *key,
			  struct kvt_lease *l)
{
	struct kvt_sqe s;
	struct kvt_cqe q;
	int ret = key_sqe(c, KVT_OP_LEASE, layout, key, &s);

	if (ret < 0)
		return ret;
	if (!l)
		return -EINVAL;
	ret = submit(c, &s, &q);
	if (ret < 0)
		return ret;
	if (check_extent(c, q.off, (uint64_t)ret) < 0)
		return -KVT_EPROTOCOL;
	populate(c, q.off, (uint64_t)ret);
	l->data = c->arena + q.off;
	l->len = (size_t)ret;
	l->handle = q.handle;
	return 0;
}

KVT_API int kvt_lease_release(struct kvt_client *c, struct kvt_lease *l)
{
	struct kvt_sqe s;
	int ret = check_client(c);

	if (ret < 0)
		return ret;
	if (!l || !l->data)
		return -EINVAL;
	memset(&s, 0, sizeof(s));
	s.op = KVT_OP_RELEASE;
	s.flags = KVT_SQE_F_NO_CQE; /* nothing to wait for: the ring keeps our order */
	s.handle = l->handle;
	ret = submit_hold(c, l->data, &s, NULL);
	l->data = NULL;
	return ret;
}

KVT_API ssize_t kvt_get(struct kvt_client *c, int layout, const struct kvt_key *key, void *buf,
			size_t cap)
{
	struct kvt_lease l;
	ssize_t ret;

	if (!buf && cap)
		return -EINVAL;
	ret = kvt_get_lease(c, layout, key, &l);
	if (ret < 0)
		return ret;
	if (l.len > cap) {
		kvt_lease_release(c, &l);
		return -ENOBUFS;
	}
	copy_block(buf, l.data, l.len);
	ret = (ssize_t)l.len;
	kvt_lease_release(c, &l);
	return ret;
}

/*
 * One LOOKUP of s->len keys.  The keys go into the scratch area of the connection the
 * request is sent on: a broken client reconnects first (the old ring is unmapped then), and
 * a daemon found gone is asked once more, keys copied again.  The scratch area belongs to
 * the request in flight, which c->lock owns.
 */
static int lookup_locked(struct kvt_client *c, struct kvt_sqe *s, const struct kvt_key *keys,
			 struct kvt_cqe *q)
{
	int ret = -KVT_EDAEMON;

	for (int attempt = 0; attempt < 2 && ret == -KVT_EDAEMON; attempt++) {
		if (c->broken && reattach_locked(c) < 0)
			return -KVT_EDAEMON;
		memcpy(c->scratch + s->arg, keys, (size_t)s->len * sizeof(*keys));
		ret = submit_locked(c, s, q);
	}
	return ret;
}

KVT_API int kvt_lookup(struct kvt_client *c, int layout, const struct kvt_key *keys, size_t n)
{
	size_t done = 0;
	int ret = check_client(c);

	if (ret < 0)
		return ret;
	if (!keys && n)
		return -EINVAL;
	if (layout < 0 || (uint32_t)layout >= c->nlayouts)
		return -KVT_ENOLAYOUT;
	if (n > INT32_MAX)
		return -E2BIG;
	while (done < n) {
		size_t m = n - done < KVT_LOOKUP_MAX ? n - done : KVT_LOOKUP_MAX;
		struct kvt_sqe s;
		struct kvt_cqe q;

		memset(&s, 0, sizeof(s));
		s.op = KVT_OP_LOOKUP;
		s.layout = (uint16_t)layout;
		s.len = (uint32_t)m;
		s.arg = 0;
		pthread_mutex_lock(&c->lock);
		ret = lookup_locked(c, &s, keys + done, &q);
		pthread_mutex_unlock(&c->lock);
		if (ret < 0)
			return ret;
		if (q.res < 0)
			return q.res;
		if ((size_t)q.res > m)
			return -KVT_EPROTOCOL;
		done += (size_t)q.res;
		if ((size_t)q.res < m)
			break;
	}
	return (int)done;
}

static int key_op(struct kvt_client *c, uint8_t op, int layout, const struct kvt_key *key)
{
	struct kvt_sqe s;
	struct kvt_cqe q;
	int ret = key_sqe(c, op, layout, key, &s);

	if (ret < 0)
		return ret;
	return submit(c, &s, &q);
}

KVT_API int kvt_delete(struct kvt_client *c, int layout, const struct kvt_key *key)
{
	return key_op(c, KVT_OP_DELETE, layout, key);
}

KVT_API int kvt_pin(struct kvt_client *c, int layout, const struct kvt_key *key)
{
	return key_op(c, KVT_OP_PIN, layout, key);
}

KVT_API int kvt_unpin(struct kvt_client *c, int layout, const struct kvt_key *key)
{
	return key_op(c, KVT_OP_UNPIN, layout, key);
}

KVT_API int kvt_prefetch(struct kvt_client *c, int layout, const struct kvt_key *keys, size_t n,
			 unsigned priority, uint32_t deadline_us)
{
	size_t i;
	int ret;

	if (!keys && n)
		return -EINVAL;
	if (n > INT32_MAX)
		return -E2BIG;
	for (i = 0; i < n; i++) {
		struct kvt_sqe s;

		ret = key_sqe(c, KVT_OP_PREFETCH, layout, &keys[i], &s);
		if (ret < 0)
			return i ? (int)i : ret;
		s.flags = KVT_SQE_F_NO_CQE;
		s.len = priority > 3 ? 3 : priority;
		s.arg = deadline_us;
		ret = submit(c, &s, NULL);
		if (ret < 0)
			return i ? (int)i : ret;
	}
	return (int)n;
}

KVT_API int kvt_stats(struct kvt_client *c, struct kvt_stats *st)
{
	struct kvt_msg_hdr m;
	struct kvt_msg_stats r;
	struct kvt_stats out;
	int ret = check_client(c);

	if (ret < 0)
		return ret;
	if (!st || st->size < 8)
		return -EINVAL;
	kvt_msg_init(&m, KVT_MSG_STATS, sizeof(m));
	pthread_mutex_lock(&c->lock);
	if (c->broken && reattach_locked(c) < 0)
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

/* ---------------------------------------------------------------------------------------
 * Batches: many ring entries pushed at once, one wake-up, completions matched by
 * user_data (they may come back out of order: a lease may wait for an NVMe read).
 */
enum { B_TODO, B_SENT, B_COPIED, B_DONE };

struct batch {
	struct kvt_client *c;
	uint64_t ud0;	    /* user_data of entry i of the first phase: ud0 + i */
	size_t n;	    /* entries */
	size_t next;	    /* first entry of the first phase not yet pushed */
	size_t *queue;	    /* entries whose second phase waits for room in the SQ */
	size_t qhead, qlen; /* ring of n over queue */
	size_t left;	    /* entries not B_DONE */
	size_t inflight;    /* requests sent whose completion is still to come */
	uint8_t *state;
	int *status;
};

static int batch_init(struct batch *b, struct kvt_client *c, size_t n, int *status)
{
	memset(b, 0, sizeof(*b));
	b->c = c;
	b->n = b->left = n;
	b->status = status;
	b->state = calloc(n ? n : 1, 1);
	b->queue = malloc((n ? n : 1) * sizeof(*b->queue));
	if (!b->state || !b->queue) {
		free(b->state);
		free(b->queue);
		return -ENOMEM;
	}
	/* Second-phase entries (commit, release) are ud0 + n + i. */
	b->ud0 = c->next_ud + 1;
	c->next_ud += 2 * (uint64_t)n;
	return 0;
}

static void batch_free(struct batch *b)
{
	free(b->state);
	free(b->queue);
}

static void batch_done(struct batch *b, size_t i, int res)
{
	b->status[i] = res;
	b->state[i] = B_DONE;
	b->left--;
}

/* Sends the queued second-phase requests the SQ has room for.  Returns 0 or -errno. */
static int batch_send_second(struct batch *b, const struct kvt_sqe *second)
{
	struct kvt_client *c = b->c;
	bool pushed = false;
	int ret = 0;

	while (b->qlen && (ret = sq_room(c)) > 0) {
		size_t i = b->queue[b->qhead];
		struct kvt_sqe s = second[i];

		b->qhead = (b->qhead + 1) % b->n;
		b->qlen--;
		s.user_data = b->ud0 + b->n + i;
		sq_push(c, &s);
		pushed = true;
		if (s.flags & KVT_SQE_F_NO_CQE)
			batch_done(b, i, b->status[i]);
		else
			b->inflight++;
	}
	if (pushed)
		sq_publish(c);
	return ret < 0 ? ret : 0;
}

/*
 * Runs a batch to the end.  first(b, i, sqe) fills entry i's first request; on its
 * completion, reaped(b, i, cqe, sqe) either finishes the entry (batch_done) or fills a
 * second request into sqe and returns 1 (queued, then sent as room allows; with
 * KVT_SQE_F_NO_CQE the entry is done once sent).  When the daemon goes away or a wait times
 * out, the entries not done get that error.  Called with c->lock held.
 */
static void batch_run(struct batch *b, void (*first)(struct batch *, size_t, struct kvt_sqe *),
		      int (*reaped)(struct batch *, size_t, const struct kvt_cqe *,
				    struct kvt_sqe *),
		      struct kvt_sqe *second)
{
	struct kvt_client *c = b->c;
	uint64_t start = mono_us();
	bool asleep = false;
	int ret = 0;

	while (b->left) {
		bool pushed = false;

		/* Second phases first: they finish entries and free the daemon's holds. */
		ret = batch_send_second(b, second);
		while (ret >= 0 && b->next < b->n && (ret = sq_room(c)) > 0) {
			struct kvt_sqe s;

			memset(&s, 0, sizeof(s));
			first(b, b->next, &s);
			s.user_data = b->ud0 + b->next;
			b->state[b->next++] = B_SENT;
			b->inflight++;
			sq_push(c, &s);
			pushed = true;
		}
		if (pushed)
			sq_publish(c);
		if (ret < 0 || !b->left)
			break;
		struct kvt_cqe q;
		int got = 0;
		while ((ret = cq_pop(c, &q)) > 0) {
			uint64_t k = q.user_data - b->ud0;

			got++;
			if (q.user_data < b->ud0 || k >= 2 * (uint64_t)b->n)
				continue; /* of a request that timed out earlier */
			size_t i = (size_t)(k % b->n);
			/* Only the completion each entry waits for counts (a daemon may be
			 * hostile and answer twice). */
			if (b->state[i] != (k >= b->n ? B_COPIED : B_SENT))
				continue;
			b->inflight--;
			if (k >= b->n) { /* the second phase's completion */
				batch_done(b, i, q.res < 0 ? q.res : b->status[i]);
				continue;
			}
			struct kvt_sqe none, *s2 = second ? &second[i] : &none;
			memset(s2, 0, sizeof(*s2));
			if (reaped(b, i, &q, s2) > 0 && second) {
				b->state[i] = B_COPIED;
				b->queue[(b->qhead + b->qlen++) % b->n] = i;
				/* A commit goes out at once: the daemon commits this block
				 * while we copy the next one.  Releases, which nobody waits
				 * for, go out together once the completions at hand are
				 * reaped (one publish and fence for all). */
				if (!(s2->flags & KVT_SQE_F_NO_CQE) &&
				    (ret = batch_send_second(b, second)) < 0)
					break;
			}
		}
		if (ret < 0)
			break;
		if (got) {
			start = mono_us(); /* the timeout counts from the last progress */
			if (asleep) {
				kvt_ring_awake(c->cq);
				asleep = false;
			}
			continue;
		}
		if ((b->qlen || b->next < b->n) && sq_room(c) > 0)
			continue;
		if (b->inflight) {
			ret = cq_wait(c, start, &asleep);
			if (ret < 0)
				break;
			continue;
		}
		/* The SQ is full of releases, which post no completion to wait for: nudge the
		 * daemon and let it run. */
		uint64_t one = 1;
		ssize_t w = write(c->sq_efd, &one, sizeof(one));
		(void)w;
		if (c->timeout_ms >= 0 && mono_us() - start > (uint64_t)c->timeout_ms * 1000) {
			ret = -ETIMEDOUT;
			break;
		}
		sched_yield();
	}
	if (asleep)
		kvt_ring_awake(c->cq);
	if (ret < 0) {
		for (size_t i = 0; i < b->n; i++) {
			if (b->state[i] != B_DONE)
				batch_done(b, i, ret);
		}
	}
}

struct put_ctx {
	struct batch b;
	int layout;
	const struct kvt_key *keys;
	const void *const *data;
	const uint32_t *pos;
	size_t len;
};

static void put_first(struct batch *b, size_t i, struct kvt_sqe *s)
{
	struct put_ctx *p = (struct put_ctx *)b;

	s->op = KVT_OP_RESERVE;
	s->layout = (uint16_t)p->layout;
	s->len = (uint32_t)p->len;
	s->key_lo = p->keys[i].lo;
	s->key_hi = p->keys[i].hi;
}

static int put_reaped(struct batch *b, size_t i, const struct kvt_cqe *q, struct kvt_sqe *s)
{
	struct put_ctx *p = (struct put_ctx *)b;
	struct kvt_client *c = b->c;

	if (q->res == -EEXIST) {
		batch_done(b, i, 1); /* as kvt_put: already stored, nothing written */
		return 0;
	}
	if (q->res < 0) {
		batch_done(b, i, q->res);
		return 0;
	}
	if ((size_t)q->res != p->len || check_extent(c, q->off, p->len) < 0) {
		c->broken = true; /* a daemon that answers so is not to be trusted further */
		batch_done(b, i, -KVT_EPROTOCOL);
		return 0;
	}
	populate(c, q->off, p->len);
	copy_block(c->arena + q->off, p->data[i], p->len);
	s->op = KVT_OP_COMMIT;
	s->handle = q->handle;
	s->arg = !p->pos || p->pos[i] == KVT_POS_UNKNOWN ? 0 : (uint64_t)p->pos[i] + 1;
	b->status[i] = 0;
	return 1;
}

/* Arguments every batch call checks alike. */
static int batch_args(struct kvt_client *c, int layout, const struct kvt_key *keys,
		      const void *ptrs, size_t n)
{
	int ret = check_client(c);

	if (ret < 0)
		return ret;
	if (n && (!keys || !ptrs))
		return -EINVAL;
	if (n > INT32_MAX)
		return -E2BIG;
	if (layout < 0 || (uint32_t)layout >= c->nlayouts)
		return -KVT_ENOLAYOUT;
	return 0;
}

/* Counts the entries with status >= 0. */
static int batch_count(const int *status, size_t n)
{
	int k = 0;

	for (size_t i = 0; i < n; i++)
		k += status[i] >= 0;
	return k;
}

/*
 * Takes c->lock and reconnects a broken client first, as one request would.  A batch is
 * not asked again of a restarted daemon (part of it may have been done), so a daemon that
 * hung up since the last request is noticed here, before anything is sent.
 */
static int batch_lock(struct kvt_client *c)
{
	pthread_mutex_lock(&c->lock);
	if (!c->broken && c->sock >= 0) {
		struct pollfd p = {c->sock, POLLRDHUP, 0};

		if (poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)))
			c->broken = true;
	}
	if (c->broken && reattach_locked(c) < 0) {
		pthread_mutex_unlock(&c->lock);
		return -KVT_EDAEMON;
	}
	return 0;
}

/*
 * The two-step batch of kvt_put_batch and kvt_get_batch, its arguments checked: n entries
 * into status (or a scratch array when NULL) through b, a batch of c not yet initialized.
 * Returns how many entries succeeded, or a negative error of the batch as a whole.
 */
static int batch_exec(struct kvt_client *c, struct batch *b, size_t n, int *status,
		      void (*first)(struct batch *, size_t, struct kvt_sqe *),
		      int (*reaped)(struct batch *, size_t, const struct kvt_cqe *,
				    struct kvt_sqe *))
{
	struct kvt_sqe *second = NULL;
	int *st = status, ret;

	if (!n)
		return 0;
	if (!st && !(st = malloc(n * sizeof(*st))))
		return -ENOMEM;
	second = malloc(n * sizeof(*second));
	if (!second) {
		ret = -ENOMEM;
		goto out;
	}
	ret = batch_lock(c);
	if (ret < 0)
		goto out;
	ret = batch_init(b, c, n, st);
	if (ret == 0) {
		batch_run(b, first, reaped, second);
		batch_free(b);
	}
	pthread_mutex_unlock(&c->lock);
	if (ret == 0)
		ret = batch_count(st, n);
out:
	free(second);
	if (st != status)
		free(st);
	return ret;
}

KVT_API int kvt_put_batch(struct kvt_client *c, int layout, const struct kvt_key *keys,
			  const void *const *data, const uint32_t *first_token, size_t len,
			  size_t n, int *status)
{
	struct put_ctx p = {
	    .layout = layout, .keys = keys, .data = data, .pos = first_token, .len = len};
	int ret = batch_args(c, layout, keys, data, n);

	if (ret < 0)
		return ret;
	if (!len || len > kvt_layout_block_bytes(&c->layouts[layout]))
		return -EINVAL;
	if (len > UINT32_MAX)
		return -E2BIG;
	for (size_t i = 0; i < n; i++) {
		if (!data[i])
			return -EINVAL;
	}
	return batch_exec(c, &p.b, n, status, put_first, put_reaped);
}

struct get_ctx {
	struct batch b;
	int layout;
	const struct kvt_key *keys;
	void *const *bufs;
	size_t cap;
};

static void get_first(struct batch *b, size_t i, struct kvt_sqe *s)
{
	struct get_ctx *g = (struct get_ctx *)b;

	s->op = KVT_OP_LEASE;
	s->layout = (uint16_t)g->layout;
	s->key_lo = g->keys[i].lo;
	s->key_hi = g->keys[i].hi;
}

static int get_reaped(struct batch *b, size_t i, const struct kvt_cqe *q, struct kvt_sqe *s)
{
	struct get_ctx *g = (struct get_ctx *)b;
	struct kvt_client *c = b->c;

	if (q->res < 0) {
		batch_done(b, i, q->res);
		return 0;
	}
	if (check_extent(c, q->off, (uint64_t)q->res) < 0) {
		c->broken = true;
		batch_done(b, i, -KVT_EPROTOCOL);
		return 0;
	}
	if ((size_t)q->res > g->cap) {
		b->status[i] = -ENOBUFS;
	} else {
		populate(c, q->off, (uint64_t)q->res);
		copy_block(g->bufs[i], c->arena + q->off, (size_t)q->res);
		b->status[i] = q->res;
	}
	/* The lease goes back without a completion: the ring keeps our order. */
	s->op = KVT_OP_RELEASE;
	s->flags = KVT_SQE_F_NO_CQE;
	s->handle = q->handle;
	return 1;
}

KVT_API int kvt_get_batch(struct kvt_client *c, int layout, const struct kvt_key *keys,
			  void *const *bufs, size_t cap, size_t n, int *status)
{
	struct get_ctx g = {.layout = layout, .keys = keys, .bufs = bufs, .cap = cap};
	int ret = batch_args(c, layout, keys, bufs, n);

	if (ret < 0)
		return ret;
	for (size_t i = 0; i < n; i++) {
		if (!bufs[i] && cap)
			return -EINVAL;
	}
	return batch_exec(c, &g.b, n, status, get_first, get_reaped);
}

struct lookup_ctx {
	struct batch b;
	int layout;
	size_t base; /* key index of this round's entry 0 */
};

static void lookup_first(struct batch *b, size_t i, struct kvt_sqe *s)
{
	struct lookup_ctx *l = (struct lookup_ctx *)b;

	s->op = KVT_OP_LOOKUP;
	s->layout = (uint16_t)l->layout;
	s->len = 1;
	s->arg = (uint64_t)i * sizeof(struct kvt_key); /* its key in the scratch area */
}

static int lookup_reaped(struct batch *b, size_t i, const struct kvt_cqe *q, struct kvt_sqe *s)
{
	(void)s;
	batch_done(b, i, q->res < 0 ? q->res : q->res > 1 ? -KVT_EPROTOCOL : q->res);
	return 0;
}

KVT_API int kvt_lookup_batch(struct kvt_client *c, int layout, const struct kvt_key *keys, size_t n,
			     uint8_t *present)
{
	int *st = NULL, ret = batch_args(c, layout, keys, present, n), found = 0;

	if (ret < 0)
		return ret;
	if (!n)
		return 0;
	st = malloc((n < KVT_LOOKUP_MAX ? n : KVT_LOOKUP_MAX) * sizeof(*st));
	if (!st)
		return -ENOMEM;
	ret = batch_lock(c);
	if (ret < 0)
		goto out;
	/* One entry per key, each naming its key in the scratch area: rounds of as many keys
	 * as the scratch area holds. */
	for (size_t done = 0; done < n && ret >= 0;) {
		size_t m = n - done < KVT_LOOKUP_MAX ? n - done : KVT_LOOKUP_MAX;
		struct lookup_ctx l = {.layout = layout, .base = done};

		ret = batch_init(&l.b, c, m, st);
		if (ret < 0)
			break;
		memcpy(c->scratch, keys + done, m * sizeof(*keys));
		batch_run(&l.b, lookup_first, lookup_reaped, NULL);
		batch_free(&l.b);
		for (size_t i = 0; i < m && ret >= 0; i++) {
			if (st[i] < 0) {
				ret = st[i];
			} else {
				present[done + i] = (uint8_t)(st[i] > 0);
				found += st[i] > 0;
			}
		}
		done += m;
	}
	pthread_mutex_unlock(&c->lock);
out:
	free(st);
	return ret < 0 ? ret : found;
}
