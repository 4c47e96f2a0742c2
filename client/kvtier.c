/* SPDX-License-Identifier: MIT */
/*
 * libkvtier: the client side.  A request is one 64-byte ring entry; the library waits for
 * its completion by spinning briefly and then sleeping on an eventfd (the daemon only
 * signals it when we said we sleep).  Block bytes move by memcpy between the caller's
 * memory and the shared arena; nothing large crosses the socket.
 *
 * This file: the requests on the rings and the one-block calls.  The connection is in
 * kvtier_conn.c, batches in kvtier_batch.c (kvtier_internal.h lists the parts).
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvtier_internal.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* ---------------------------------------------------------------------------------------
 * Requests
 */
/*
 * Waits until the CQ holds a completion: spins for spin_us after *start, then sleeps on the
 * eventfd with NEED_WAKEUP set (*asleep tells the caller to clear it once served).  Returns
 * 0, -ETIMEDOUT (timeout_ms after *start) or -KVT_EDAEMON (the socket hung up).
 */
int kvtc_cq_wait(struct kvt_client *c, uint64_t start, bool *asleep)
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
		ret = kvtc_cq_wait(c, start, &asleep);
		if (ret < 0)
			return ret;
	}
}

/*
 * Submits one entry and, unless it carries KVT_SQE_F_NO_CQE, waits for its completion.
 * Called with c->lock held.
 */
static void sq_publish_locked(struct kvt_client *c)
{
	kvt_ring_publish(c->sq, c->sq_tail);
	if (kvt_ring_needs_wakeup(c->sq)) {
		uint64_t one = 1;
		ssize_t w = write(c->sq_efd, &one, sizeof(one));
		(void)w;
	}
}

/* Puts one request on the ring; publish: the daemon sees it now (else at the next publish;
 * kvt_prefetch publishes a whole prefix at once, so that its reads arrive together). */
static int sq_put_locked(struct kvt_client *c, struct kvt_sqe *s, bool publish)
{
	uint64_t start = mono_us();

	/* Handles from before a reconnect name nothing in the new daemon. */
	if (c->broken &&
	    (s->op == KVT_OP_COMMIT || s->op == KVT_OP_ABORT || s->op == KVT_OP_RELEASE))
		return -KVT_EDAEMON;
	if (c->broken && kvtc_reattach_locked(c) < 0)
		return -KVT_EDAEMON;
	s->user_data = ++c->next_ud;
	/* The ring is full only when the daemon lags behind fire-and-forget releases. */
	while (kvt_ring_pending(c->sq, c->sq_tail) >= c->sq_entries) {
		if (kvt_ring_pending(c->sq, c->sq_tail) > c->sq_entries) {
			c->broken = true;
			return -KVT_EPROTOCOL;
		}
		kvt_ring_publish(c->sq, c->sq_tail); /* what is queued unpublished, first */
		uint64_t one = 1;
		ssize_t w = write(c->sq_efd, &one, sizeof(one));
		(void)w;
		if (c->timeout_ms >= 0 && mono_us() - start > (uint64_t)c->timeout_ms * 1000)
			return -ETIMEDOUT;
		sched_yield();
	}
	memcpy(&c->sqes[c->sq_tail & (c->sq_entries - 1)], s, sizeof(*s));
	c->sq_tail++;
	if (publish)
		sq_publish_locked(c);
	return 0;
}

static int submit_locked(struct kvt_client *c, struct kvt_sqe *s, struct kvt_cqe *q)
{
	int ret = sq_put_locked(c, s, true);

	if (ret < 0)
		return ret;
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
void kvtc_populate(struct kvt_client *c, uint64_t off, uint64_t len)
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

void kvtc_copy_block(void *dst, const void *src, size_t n)
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

/* ---------------------------------------------------------------------------------------
 * The compressed host tier: puts encode with the layout's host chain, gets decode.
 */
void kvtc_geom(const struct kvt_layout *l, uint32_t pos, struct kvt_codec_geom *g)
{
	memset(g, 0, sizeof(*g));
	g->n_layers = l->n_layers;
	g->n_kv_heads = l->n_kv_heads;
	g->head_dim = l->head_dim;
	g->block_tokens = l->block_tokens;
	g->dtype = l->dtype;
	g->first_token = pos == KVT_POS_UNKNOWN ? 0 : pos;
}

ssize_t kvtc_raw_len(uint32_t id, const void *src, size_t n)
{
	uint32_t cid, raw;

	if (!id)
		return (ssize_t)n;
	if (kvt_chain_peek(src, n, &cid, NULL, &raw) < 0 || cid != id)
		return -EBADMSG;
	return raw;
}

ssize_t kvtc_decode(struct kvt_client *c, uint32_t id, const void *src, size_t n, void *dst,
		    size_t cap, bool locked)
{
	const struct kvt_chain *chain;
	ssize_t raw = kvtc_raw_len(id, src, n), got;

	if (raw < 0)
		return raw;
	if ((size_t)raw > cap)
		return -ENOBUFS;
	if (!id) {
		kvtc_copy_block(dst, src, n);
		return raw;
	}
	if (!locked)
		pthread_mutex_lock(&c->lock);
	chain = kvtc_chain_locked(c, id, NULL);
	if (!locked)
		pthread_mutex_unlock(&c->lock);
	if (!chain)
		return -EBADMSG; /* a chain we cannot decode: never guess */
	got = kvt_chain_decode(chain, src, n, dst, cap, NULL);
	if (got == -ENOMEM)
		return got;
	return got == raw ? got : -EBADMSG;
}

const struct kvt_chain *kvtc_chain_get(struct kvt_client *c, uint32_t id)
{
	const struct kvt_chain *chain;

	pthread_mutex_lock(&c->lock);
	chain = kvtc_chain_locked(c, id, NULL);
	pthread_mutex_unlock(&c->lock);
	return chain;
}

/* The encoding buffer of the calling thread (a put encodes there, then copies the record
 * into the arena once the daemon has said how long it may be): kept between calls so that
 * a put does not fault in a fresh buffer each time; freed when the thread ends. */
static pthread_key_t enc_key;
static pthread_once_t enc_once = PTHREAD_ONCE_INIT;
static int enc_key_err;

struct enc_buf {
	size_t cap;
	uint8_t data[];
};

static void enc_key_make(void)
{
	enc_key_err = pthread_key_create(&enc_key, free);
}

static uint8_t *enc_buf(size_t need)
{
	struct enc_buf *b;

	if (pthread_once(&enc_once, enc_key_make) || enc_key_err)
		return NULL;
	b = pthread_getspecific(enc_key);
	if (b && b->cap >= need)
		return b->data;
	free(b);
	pthread_setspecific(enc_key, NULL);
	b = malloc(sizeof(*b) + need);
	if (!b)
		return NULL;
	b->cap = need;
	pthread_setspecific(enc_key, b);
	return b->data;
}

/* The chain layout's puts of len bytes are encoded with (NULL: stored raw). */
const struct kvt_chain *kvtc_put_chain(struct kvt_client *c, int layout, size_t len)
{
	const struct kvt_chain *chain = NULL;

	pthread_mutex_lock(&c->lock);
	if (layout >= 0 && (uint32_t)layout < c->nlayouts &&
	    len == kvt_layout_block_bytes(&c->layouts[layout]))
		chain = c->put_chain[layout];
	pthread_mutex_unlock(&c->lock);
	return chain;
}

/* A reservation of len bytes: the raw block (chain 0), or a record of chain that decodes to
 * raw_len bytes. */
int kvtc_reserve(struct kvt_client *c, int layout, const struct kvt_key *key, size_t len,
		 uint32_t chain, size_t raw_len, struct kvt_reservation *r)
{
	struct kvt_sqe s;
	struct kvt_cqe q;
	int ret = key_sqe(c, KVT_OP_RESERVE, layout, key, &s);

	if (ret < 0)
		return ret;
	if (!r || !len || (!chain && len > kvt_layout_block_bytes(&c->layouts[layout])))
		return -EINVAL;
	if (len > UINT32_MAX || raw_len > UINT32_MAX)
		return -E2BIG;
	s.len = (uint32_t)len;
	s.chain = chain;
	s.raw_len = (uint32_t)raw_len;
	ret = submit(c, &s, &q);
	if (ret < 0)
		return ret;
	if (check_extent(c, q.off, len) < 0)
		return -KVT_EPROTOCOL;
	kvtc_populate(c, q.off, len);
	r->data = c->arena + q.off;
	r->len = len;
	r->handle = q.handle;
	r->layout = layout;
	r->key = *key;
	return 0;
}

KVT_API int kvt_put_reserve(struct kvt_client *c, int layout, const struct kvt_key *key, size_t len,
			    struct kvt_reservation *r)
{
	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	return kvtc_reserve(c, layout, key, len, 0, 0, r);
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

/*
 * Has the daemon hung up?  A request that waits learns it in kvtc_cq_wait(); one that does
 * not (a release) asks the socket, so that a hold of a daemon that died is void at once and
 * not only after the next waiting call.  Called with c->lock held.
 */
static bool daemon_gone(struct kvt_client *c)
{
	struct pollfd p = {c->sock, POLLRDHUP, 0};

	if (poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)))
		c->broken = true;
	return c->broken;
}

/*
 * Sends COMMIT, ABORT or RELEASE of a hold at ptr, unless it belongs to a previous daemon.
 * ask: a release (no completion to wait for) first asks the socket whether the daemon is
 * still there; kvt_get() does not for the lease it took a moment ago (it ignores the
 * result, and the system call would cost it 40 % at 16 KiB).
 */
static int submit_hold(struct kvt_client *c, const void *ptr, struct kvt_sqe *s, struct kvt_cqe *q,
		       bool ask)
{
	int ret;

	pthread_mutex_lock(&c->lock);
	if (ask && (s->flags & KVT_SQE_F_NO_CQE) && daemon_gone(c))
		ret = -KVT_EDAEMON;
	else
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
	ret = submit_hold(c, r->data, &s, &q, false);
	r->data = NULL;
	return ret < 0 ? ret : 0;
}

KVT_API int kvt_put_commit(struct kvt_client *c, struct kvt_reservation *r)
{
	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	return finish(c, r, KVT_OP_COMMIT, KVT_POS_UNKNOWN);
}

KVT_API int kvt_put_commit_at(struct kvt_client *c, struct kvt_reservation *r, uint32_t first_token)
{
	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	return finish(c, r, KVT_OP_COMMIT, first_token);
}

KVT_API int kvt_put_abort(struct kvt_client *c, struct kvt_reservation *r)
{
	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	return finish(c, r, KVT_OP_ABORT, KVT_POS_UNKNOWN);
}

KVT_API int kvt_put_encodes(struct kvt_client *c, int layout)
{
	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	if (check_client(c) < 0 || layout < 0 || (uint32_t)layout >= c->nlayouts)
		return -EINVAL;
	return kvtc_put_chain(c, layout, kvt_layout_block_bytes(&c->layouts[layout])) != NULL;
}

KVT_API int kvt_put(struct kvt_client *c, int layout, const struct kvt_key *key, const void *data,
		    size_t len)
{
	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	return kvt_put_at(c, layout, key, KVT_POS_UNKNOWN, data, len);
}

KVT_API int kvt_put_at(struct kvt_client *c, int layout, const struct kvt_key *key,
		       uint32_t first_token, const void *data, size_t len)
{
	struct kvt_reservation r;
	bool refreshed = false;
	int ret;

	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	if (!data && len)
		return -EINVAL;
	if (check_client(c) < 0)
		return -EINVAL;
	for (int attempt = 0;;) {
		const struct kvt_chain *chain = kvtc_put_chain(c, layout, len);
		const void *src = data;
		size_t n = len;

		if (chain) {
			/* Encoded here, in the caller's thread: the daemon codes for no client. */
			struct kvt_codec_geom g;
			size_t cap;
			uint8_t *buf;
			ssize_t e;

			kvtc_geom(&c->layouts[layout], first_token, &g);
			cap = kvt_chain_max_encoded_size(chain, &g);
			buf = cap ? enc_buf(cap) : NULL;
			if (!buf)
				return -ENOMEM;
			e = kvt_chain_encode(chain, &g, data, len, buf, cap);
			if (e == -ENOMEM)
				return -ENOMEM;
			if (e > 0) { /* else a block the chain refuses: stored raw */
				src = buf;
				n = (size_t)e;
			}
		}
		ret = kvtc_reserve(c, layout, key, n, src == data ? 0 : kvt_chain_id(chain),
				   src == data ? 0 : len, &r);
		if (ret == -ESTALE && !refreshed) {
			/* The daemon names another chain for this layout now: ask which. */
			refreshed = true;
			ret = kvtc_layout_refresh(c, layout);
			if (ret < 0)
				return ret;
			continue;
		}
		if (ret == -EEXIST)
			return 1;
		if (ret < 0)
			return ret;
		kvtc_copy_block(r.data, src, n);
		ret = kvt_put_commit_at(c, &r, first_token);
		/* The daemon restarted between reserve and commit: once more from the top. */
		if (ret != -KVT_EDAEMON || attempt++)
			return ret;
	}
}

static int lease_release(struct kvt_client *c, struct kvt_lease *l, bool ask);

KVT_API int kvt_get_lease(struct kvt_client *c, int layout, const struct kvt_key *key,
			  struct kvt_lease *l)
{
	struct kvt_sqe s;
	struct kvt_cqe q;
	ssize_t raw;
	int ret = key_sqe(c, KVT_OP_LEASE, layout, key, &s);

	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	if (ret < 0)
		return ret;
	if (!l)
		return -EINVAL;
	ret = submit(c, &s, &q);
	if (ret < 0)
		return ret;
	if (check_extent(c, q.off, (uint64_t)ret) < 0)
		return -KVT_EPROTOCOL;
	kvtc_populate(c, q.off, (uint64_t)ret);
	l->data = c->arena + q.off;
	l->len = (size_t)ret;
	l->handle = q.handle;
	l->chain_id = q.flags;
	l->reserved = 0;
	raw = kvtc_raw_len(q.flags, l->data, l->len);
	if (raw < 0) {
		/* Not the record its chain makes: no lease on bytes nobody can read. */
		lease_release(c, l, false);
		return (int)raw;
	}
	l->raw_len = (size_t)raw;
	return 0;
}

static int lease_release(struct kvt_client *c, struct kvt_lease *l, bool ask)
{
	struct kvt_sqe s;
	int ret = check_client(c);

	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	if (ret < 0)
		return ret;
	if (!l || !l->data)
		return -EINVAL;
	memset(&s, 0, sizeof(s));
	s.op = KVT_OP_RELEASE;
	s.flags = KVT_SQE_F_NO_CQE; /* nothing to wait for: the ring keeps our order */
	s.handle = l->handle;
	ret = submit_hold(c, l->data, &s, NULL, ask);
	l->data = NULL;
	return ret;
}

KVT_API int kvt_lease_release(struct kvt_client *c, struct kvt_lease *l)
{
	return lease_release(c, l, true);
}

int kvtc_lease_release_quiet(struct kvt_client *c, struct kvt_lease *l)
{
	return lease_release(c, l, false);
}

KVT_API ssize_t kvt_lease_decode(struct kvt_client *c, const struct kvt_lease *l, void *buf,
				 size_t cap)
{
	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	if (check_client(c) < 0 || !l || !l->data || (!buf && cap))
		return -EINVAL;
	return kvtc_decode(c, l->chain_id, l->data, l->len, buf, cap, false);
}

KVT_API ssize_t kvt_get(struct kvt_client *c, int layout, const struct kvt_key *key, void *buf,
			size_t cap)
{
	struct kvt_lease l;
	ssize_t ret;

	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	if (!buf && cap)
		return -EINVAL;
	ret = kvt_get_lease(c, layout, key, &l);
	if (ret < 0)
		return ret;
	ret = kvtc_decode(c, l.chain_id, l.data, l.len, buf, cap, false);
	lease_release(c, &l, false);
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
		if (c->broken && kvtc_reattach_locked(c) < 0)
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

	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
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
	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	return key_op(c, KVT_OP_DELETE, layout, key);
}

KVT_API int kvt_pin(struct kvt_client *c, int layout, const struct kvt_key *key)
{
	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	return key_op(c, KVT_OP_PIN, layout, key);
}

KVT_API int kvt_unpin(struct kvt_client *c, int layout, const struct kvt_key *key)
{
	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	return key_op(c, KVT_OP_UNPIN, layout, key);
}

KVT_API int kvt_prefetch(struct kvt_client *c, int layout, const struct kvt_key *keys, size_t n,
			 unsigned priority, uint32_t deadline_us)
{
	size_t i;
	int ret;

	KVT_CHECK_MAGIC(c, CLIENT_MAGIC);
	if (!keys && n)
		return -EINVAL;
	if (n > INT32_MAX)
		return -E2BIG;
	/* All on the ring, then published once: the daemon takes the prefix in one pass and
	 * reads the records that follow each other on disk as one. */
	pthread_mutex_lock(&c->lock);
	for (i = 0, ret = 0; i < n; i++) {
		struct kvt_sqe s;

		ret = key_sqe(c, KVT_OP_PREFETCH, layout, &keys[i], &s);
		if (ret < 0)
			break;
		s.flags = KVT_SQE_F_NO_CQE;
		s.len = priority > 3 ? 3 : priority;
		s.arg = deadline_us;
		ret = sq_put_locked(c, &s, false);
		if (ret < 0)
			break;
	}
	if (i)
		sq_publish_locked(c);
	pthread_mutex_unlock(&c->lock);
	return i ? (int)i : (n ? ret : 0);
}
