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
	struct old_map *old_maps;
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
		struct old_map *om = malloc(sizeof(*om));
		if (om) {
			om->p = c->arena;
			om->n = c->arena_size;
			om->next = c->old_maps;
			c->old_maps = om;
		} else {
			munmap(c->arena, c->arena_size);
		}
	}
	c->arena = NULL;
	free((void *)c->populated);
	c->populated = NULL;
}

/* Connects, says hello and maps the rings and the arena. Returns 0 or -errno. */
static int attach(struct kvt_client *c)
{
	struct kvt_msg_hello m;
	struct kvt_msg_hello_reply r;
	int fds[KVT_HELLO_NFDS], nfds = 0, ret;
	ssize_t n;
	struct stat st;

	ret = kvt_sock_open(c->path, &c->sock);
	if (ret < 0)
		return ret;
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
	struct kvt_connect_opts opts = {sizeof(opts), NULL, NULL, 0};
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
	pthread_mutex_destroy(&c->lock);
	c->magic = 0;
	free(c);
}

/* ---------------------------------------------------------------------------------------
 * Requests
 */
static int wait_cqe(struct kvt_client *c, uint64_t ud, struct kvt_cqe *out)
{
	uint64_t start = mono_us();
	bool asleep = false;

	for (;;) {
		uint32_t tail = kvt_ring_tail(c->cq);

		while (tail != c->cq_head) {
			struct kvt_cqe q;

			if (tail - c->cq_head > c->cq_entries) {
				c->broken = true;
				return -KVT_EPROTOCOL;
			}
			memcpy(&q, &c->cqes[c->cq_head & (c->cq_entries - 1)], sizeof(q));
			c->cq_head++;
			kvt_ring_consume(c->cq, c->cq_head);
			if (q.user_data == ud) {
				if (asleep)
					kvt_ring_awake(c->cq);
				*out = q;
				return 0;
			}
			/* A completion of a request that timed out earlier: drop it. */
		}
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
		if (!asleep) {
			asleep = true;
			if (kvt_ring_prepare_sleep(c->cq) != c->cq_head)
				continue;
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
	if (!r || !len)
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
	ret = submit(c, &s, &q);
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
	ret = submit(c, &s, NULL);
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
		/* The scratch area belongs to the request in flight, which the lock owns. */
		memcpy(c->scratch, keys + done, m * sizeof(*keys));
		ret = submit_locked(c, &s, &q);
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
