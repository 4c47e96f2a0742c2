/* SPDX-License-Identifier: MIT */
/*
 * Module tests for the NVMe tier (tiers/tier_nvme.c) and its slot allocator.
 * Slot files live in a fresh directory under $KVT_NVME_TEST_DIR, $TMPDIR or /var/tmp.
 * Randomized parts print their seed; KVT_SEED=<n> replays one.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "tier.h"
#include "kvt_record.h"
#include "nvme_alloc.h"

static const struct kvt_tier_ops *ops = &kvt_tier_nvme_ops;
static char dir[256];
static unsigned seed;

/* ---------- slot allocator ---------- */

static void test_alloc_basic(void **state)
{
	struct nv_alloc a;

	assert_int_equal(nv_alloc_init(&a, 100), 0);
	assert_int_equal(nv_alloc_get(&a, 0), -EINVAL);
	assert_int_equal(nv_alloc_get(&a, 101), -ENOSPC);
	assert_int_equal(nv_alloc_get(&a, 10), 0);
	assert_int_equal(nv_alloc_get(&a, 10), 10); /* next-fit: sequential on a fresh file */
	assert_int_equal(nv_alloc_get(&a, 80), 20);
	assert_int_equal(a.nfree, 0);
	assert_int_equal(nv_alloc_get(&a, 1), -ENOSPC);
	assert_int_equal(nv_alloc_put(&a, 10, 10), 0);
	assert_int_equal(nv_alloc_put(&a, 10, 10), -EINVAL); /* double free refused */
	assert_int_equal(nv_alloc_put(&a, 5, 10), -EINVAL);  /* partly free range refused */
	assert_int_equal(a.nfree, 10);
	assert_int_equal(nv_alloc_get(&a, 11), -ENOSPC); /* 10 free pages, but not 11 */
	assert_int_equal(nv_alloc_get(&a, 4), 10);	 /* wraps to the hole */
	assert_int_equal(nv_alloc_mark(&a, 12, 3), -EEXIST);
	assert_int_equal(nv_alloc_mark(&a, 14, 6), 0);
	assert_int_equal(nv_alloc_mark(&a, 99, 2), -EINVAL);
	assert_int_equal(nv_alloc_state(&a, 14, 6), 1);
	assert_int_equal(nv_alloc_put(&a, 0, 100), 0);
	assert_int_equal(a.nfree, 100);
	nv_alloc_destroy(&a);
}

/* Random alloc/free against a byte-per-page model: no overlap, no lost page, counts exact. */
static void test_alloc_random(void **state)
{
	enum { N = 1000, OPS = 20000 };
	struct nv_alloc a;
	unsigned char model[N] = {0};
	int64_t start[256];
	uint32_t len[256];
	unsigned s = seed;
	uint64_t used = 0;

	memset(start, -1, sizeof(start));
	assert_int_equal(nv_alloc_init(&a, N), 0);
	for (int op = 0; op < OPS; op++) {
		unsigned k = (unsigned)rand_r(&s) % 256;

		if (start[k] < 0) {
			uint32_t n = 1 + (uint32_t)rand_r(&s) % 40;
			int64_t p = nv_alloc_get(&a, n);

			if (p == -ENOSPC)
				continue;
			assert_true(p >= 0 && p + n <= N);
			for (uint32_t i = 0; i < n; i++) {
				assert_int_equal(model[p + i], 0);
				model[p + i] = 1;
			}
			start[k] = p;
			len[k] = n;
			used += n;
		} else {
			assert_int_equal(nv_alloc_put(&a, (uint64_t)start[k], len[k]), 0);
			for (uint32_t i = 0; i < len[k]; i++)
				model[start[k] + i] = 0;
			used -= len[k];
			start[k] = -1;
		}
		assert_int_equal(a.nfree, N - used);
	}
	for (int i = 0; i < N; i++)
		assert_int_equal(nv_alloc_state(&a, (uint64_t)i, 1), model[i]);
	nv_alloc_destroy(&a);
}

/* ---------- helpers ---------- */

struct waiter {
	struct kvt_tier_io io;
	int finished;
};

static void on_done(struct kvt_tier_io *io)
{
	((struct waiter *)io)->finished = 1;
}

static void wait_all(struct kvt_tier *t, struct waiter *w, int n)
{
	for (int spins = 0; spins < 500; spins++) {
		int left = 0;
		struct pollfd p = {.fd = ops->event_fd(t), .events = POLLIN};

		for (int i = 0; i < n; i++)
			left += !w[i].finished;
		if (!left)
			return;
		poll(&p, 1, 20);
		ops->complete(t);
	}
	fail_msg("I/O did not complete");
}

static uint64_t key_of(unsigned i)
{
	return 0x9e3779b97f4a7c15ull * (i + 1);
}

/* A sealed record of payload plen with deterministic content, in a tier buffer. */
static void *make_rec(struct kvt_tier *t, unsigned id, uint64_t seq, uint32_t plen)
{
	struct kvt_record_hdr *h = ops->buf_alloc(t, KVT_RECORD_HDR_SIZE + plen);
	unsigned char *p = (unsigned char *)(h + 1);

	assert_non_null(h);
	memset(h, 0, sizeof(*h));
	h->magic = KVT_RECORD_MAGIC;
	h->version = KVT_RECORD_VERSION;
	h->hdr_size = KVT_RECORD_HDR_SIZE;
	h->key_lo = key_of(id);
	h->key_hi = id;
	h->fingerprint = 77;
	h->seq = seq;
	h->raw_len = plen;
	h->payload_len = plen;
	h->tenant = 1000;
	for (uint32_t i = 0; i < plen; i++)
		p[i] = (unsigned char)((id * 131 + seq * 17 + i * 7) ^ (i >> 8));
	kvt_record_seal(h, p);
	return h;
}

/* Allocs and writes one record synchronously; returns done()'s result. */
static int put_rec(struct kvt_tier *t, unsigned id, uint64_t seq, uint32_t plen,
		   struct kvt_tier_loc *loc)
{
	struct waiter w = {0};
	void *b = make_rec(t, id, seq, plen);
	int r;

	r = ops->alloc(t, KVT_RECORD_HDR_SIZE + plen, loc);
	if (r < 0) {
		ops->buf_free(t, b);
		return r;
	}
	w.io.loc = *loc;
	w.io.buf = b;
	w.io.len = KVT_RECORD_HDR_SIZE + plen;
	w.io.done = on_done;
	assert_int_equal(ops->write(t, &w.io), 0);
	wait_all(t, &w, 1);
	ops->buf_free(t, b);
	return w.io.res;
}

/* Reads a record and compares it with what make_rec() builds; returns done()'s result. */
static int get_rec(struct kvt_tier *t, const struct kvt_tier_loc *loc, unsigned id, uint64_t seq,
		   uint32_t plen)
{
	struct waiter w = {0};
	void *b = ops->buf_alloc(t, loc->len);
	void *want = make_rec(t, id, seq, plen);
	int r;

	w.io.loc = *loc;
	w.io.buf = b;
	w.io.len = loc->len;
	w.io.done = on_done;
	r = ops->read(t, &w.io);
	if (r == 0) {
		wait_all(t, &w, 1);
		r = w.io.res;
		if (r >= 0)
			assert_memory_equal(b, want, KVT_RECORD_HDR_SIZE + plen);
	}
	ops->buf_free(t, want);
	ops->buf_free(t, b);
	return r;
}

static char path_a[300], path_b[300], path_c[300];

static unsigned verify_threads; /* conf.verify_threads of the next open_tier() */

static struct kvt_tier *open_tier(unsigned flags, uint64_t cap, int (*hk)(int, uint64_t, uint32_t))
{
	const char *paths[] = {path_a, NULL};
	struct kvt_tier_conf c = {
	    .name = "nvme",
	    .capacity_bytes = cap,
	    .paths = paths,
	    .queue_depth = 8,
	    .flags = flags,
	    .io_hook = hk,
	    .buf_bytes = 16 << 20,
	    .verify_threads = verify_threads,
	};
	struct kvt_tier *t = NULL;

	assert_int_equal(ops->open(&c, &t), 0);
	return t;
}

struct seen {
	int n;
	uint64_t key_lo[512], key_hi[512], seq[512];
	uint32_t plen[512];
	struct kvt_tier_loc loc[512];
};

static int collect(void *arg, const struct kvt_record_hdr *h, const struct kvt_tier_loc *loc)
{
	struct seen *s = arg;

	assert_true(s->n < 512);
	s->key_lo[s->n] = h->key_lo;
	s->key_hi[s->n] = h->key_hi;
	s->seq[s->n] = h->seq;
	s->plen[s->n] = h->payload_len;
	s->loc[s->n] = *loc;
	s->n++;
	return 0;
}

static int find_seen(const struct seen *s, unsigned id)
{
	for (int i = 0; i < s->n; i++)
		if (s->key_hi[i] == id && s->key_lo[i] == key_of(id))
			return i;
	return -1;
}

static int setup(void **state)
{
	const char *base = getenv("KVT_NVME_TEST_DIR");

	if (!base)
		base = getenv("TMPDIR");
	if (!base)
		base = "/var/tmp";
	snprintf(dir, sizeof(dir), "%s/kvt-nvme-test-XXXXXX", base);
	if (!mkdtemp(dir))
		return -1;
	snprintf(path_a, sizeof(path_a), "%s/a.slots", dir);
	snprintf(path_b, sizeof(path_b), "%s/b.slots", dir);
	snprintf(path_c, sizeof(path_c), "%s/c.slots", dir);
	return 0;
}

static int teardown(void **state)
{
	unlink(path_a);
	unlink(path_b);
	unlink(path_c);
	return 0;
}

static int teardown_all(void **state)
{
	teardown(state);
	rmdir(dir);
	return 0;
}

/* ---------- write, close, reopen, recover: bit-exact ---------- */

static void roundtrip(unsigned flags)
{
	enum { N = 40 };
	struct kvt_tier_loc loc[N];
	uint32_t plen[N];
	struct seen *s = calloc(1, sizeof(*s));
	struct kvt_tier_stats st;
	struct kvt_tier *t = open_tier(flags, 64 << 20, NULL);
	unsigned rs = seed;

	assert_non_null(s);
	for (unsigned i = 0; i < N; i++) {
		plen[i] = (uint32_t)(rand_r(&rs) % (300 << 10));
		assert_int_equal(put_rec(t, i, 1, plen[i], &loc[i]), KVT_RECORD_HDR_SIZE + plen[i]);
		assert_int_equal(get_rec(t, &loc[i], i, 1, plen[i]), (int)loc[i].len);
	}
	ops->stats(t, &st);
	assert_int_equal(st.records, N);
	assert_int_equal(st.writes, N);
	assert_int_equal(!!(st.io_flags & KVT_TIER_ST_URING), !(flags & KVT_TIER_F_NO_URING));
	ops->close(t);

	t = open_tier(flags, 64 << 20, NULL);
	ops->stats(t, &st);
	assert_int_equal(st.recovered, N);
	assert_int_equal(st.corrupt_records, 0);
	assert_int_equal(ops->recover(t, collect, s), N);
	assert_int_equal(s->n, N);
	for (unsigned i = 0; i < N; i++) {
		int k = find_seen(s, i);

		assert_true(k >= 0);
		assert_int_equal(s->plen[k], plen[i]);
		assert_int_equal(s->loc[k].off, loc[i].off);
		assert_int_equal(get_rec(t, &s->loc[k], i, 1, plen[i]), (int)loc[i].len);
	}
	/* The allocator knows the recovered slots: new records never overlap them. */
	for (unsigned i = 0; i < 10; i++) {
		struct kvt_tier_loc l;

		assert_int_equal(put_rec(t, 100 + i, 1, 5000, &l), KVT_RECORD_HDR_SIZE + 5000);
		for (unsigned j = 0; j < N; j++)
			assert_true(l.off + l.len <= loc[j].off ||
				    loc[j].off + loc[j].len <= l.off);
	}
	for (unsigned i = 0; i < N; i++)
		assert_int_equal(get_rec(t, &s->loc[find_seen(s, i)], i, 1, plen[i]),
				 (int)loc[i].len);
	ops->close(t);
	free(s);
}

/* Recovery across scan windows (8 MiB): odd-sized records that straddle window boundaries,
 * and records larger than a window. */
static void test_recover_large(void **state)
{
	enum { N = 24 };
	static const uint32_t big[] = {9u << 20, (12u << 20) + 4000};
	struct kvt_tier *t = open_tier(0, 96 << 20, NULL);
	struct seen *s = calloc(1, sizeof(*s));
	struct kvt_tier_loc loc[N + 2];
	uint32_t plen[N + 2];

	assert_non_null(s);
	for (unsigned i = 0; i < N + 2; i++) {
		plen[i] = i < N ? (1300u << 10) + i * 4099u : big[i - N];
		assert_int_equal(put_rec(t, i, 1, plen[i], &loc[i]), KVT_RECORD_HDR_SIZE + plen[i]);
	}
	ops->close(t);
	t = open_tier(0, 96 << 20, NULL);
	assert_int_equal(ops->recover(t, collect, s), N + 2);
	for (unsigned i = 0; i < N + 2; i++) {
		int k = find_seen(s, i);

		assert_true(k >= 0);
		assert_int_equal(s->loc[k].off, loc[i].off);
		assert_int_equal(get_rec(t, &s->loc[k], i, 1, plen[i]), (int)loc[i].len);
	}
	ops->close(t);
	free(s);
}

/* A process killed with I/O in flight: the next open (waiting out the dead owner's lock)
 * recovers every record whose done() reported success, bit-exact. */
static void test_killed_owner(void **state)
{
	int pfd[2];
	pid_t pid;
	unsigned acked = 0;
	struct seen *s = calloc(1, sizeof(*s));
	struct kvt_tier_stats st;
	struct kvt_tier *t;

	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct kvt_tier *c = open_tier(0, 32 << 20, NULL);
		struct kvt_tier_loc l;

		close(pfd[0]);
		for (unsigned i = 0;; i++) {
			if (put_rec(c, i, 1, 150000, &l) < 0)
				_exit(0);
			if (write(pfd[1], &i, sizeof(i)) != sizeof(i))
				_exit(1);
		}
	}
	close(pfd[1]);
	while (acked < 40 && read(pfd[0], &acked, sizeof(acked)) == sizeof(acked))
		;
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	close(pfd[0]);
	t = open_tier(0, 32 << 20, NULL);
	assert_true(ops->recover(t, collect, s) >= (int)acked);
	for (unsigned i = 0; i <= acked; i++) {
		int k = find_seen(s, i);

		if (i < acked)
			assert_true(k >= 0);
		if (k >= 0)
			assert_int_equal(get_rec(t, &s->loc[k], i, 1, 150000), (int)s->loc[k].len);
	}
	/* At most the one write in flight at the kill can be torn, and it is never served. */
	ops->stats(t, &st);
	assert_true(st.corrupt_records <= 1);
	ops->close(t);
	free(s);
}

static void test_roundtrip_uring(void **state)
{
	roundtrip(0);
}

static void test_roundtrip_workers(void **state)
{
	roundtrip(KVT_TIER_F_NO_URING);
}

static void test_roundtrip_fsync(void **state)
{
	roundtrip(KVT_TIER_F_FSYNC);
	teardown(state);
	roundtrip(KVT_TIER_F_FSYNC | KVT_TIER_F_NO_URING);
}

/* Batched submission with KVT_TIER_IO_MORE and more requests than the queue depth. */
static void test_batch_deep(void **state)
{
	enum { N = 64 };
	struct waiter *w = calloc(N, sizeof(*w));
	struct kvt_tier *t = open_tier(0, 64 << 20, NULL);
	struct kvt_tier_stats st;

	assert_non_null(w);
	for (unsigned i = 0; i < N; i++) {
		w[i].io.buf = make_rec(t, i, 3, 60000);
		w[i].io.len = KVT_RECORD_HDR_SIZE + 60000;
		assert_int_equal(ops->alloc(t, w[i].io.len, &w[i].io.loc), 0);
		w[i].io.done = on_done;
		w[i].io.flags = i + 1 < N ? KVT_TIER_IO_MORE : 0;
		assert_int_equal(ops->write(t, &w[i].io), 0);
	}
	wait_all(t, w, N);
	for (unsigned i = 0; i < N; i++) {
		assert_int_equal(w[i].io.res, (int)w[i].io.len);
		/* The caller's buffer comes back unchanged (the tier salts the crc in flight). */
		assert_int_equal(kvt_record_check(w[i].io.buf, (char *)w[i].io.buf + 64, 60000), 0);
		assert_int_equal(get_rec(t, &w[i].io.loc, i, 3, 60000), (int)w[i].io.loc.len);
		ops->buf_free(t, w[i].io.buf);
	}
	ops->stats(t, &st);
	assert_int_equal(st.bytes_written, (uint64_t)N * (KVT_RECORD_HDR_SIZE + 60000));
	ops->close(t);
	free(w);
}

/*
 * Requests are driven as the daemon drives them: complete() only when the event fd says
 * so.  At queue depth qd, qd frees (their invalidation writes take every slot) and then
 * more reads than slots: every read must complete.  The invalidations were once held back
 * as if KVT_TIER_IO_MORE were set, never submitted, and the reads waited behind them with
 * the event fd silent (kvtierd idle with gets pending).  by_recover: the records are freed
 * by recover() instead, as kvtierd's callback declines them (a key deleted meanwhile, no
 * room) after a restart.  A bound of 20 s only turns a hang into a failure.
 */
static int drop_gone(void *arg, const struct kvt_record_hdr *h, const struct kvt_tier_loc *loc)
{
	return h->key_hi < 100; /* the records of gone[] */
}

static void free_then_read(unsigned flags, unsigned qd, bool by_recover)
{
	enum { PLEN = 5000, MAXQ = 8 };
	const char *paths[] = {path_a, NULL};
	struct kvt_tier_conf c = {.name = "nvme",
				  .capacity_bytes = 16 << 20,
				  .paths = paths,
				  .queue_depth = qd,
				  .flags = flags,
				  .buf_bytes = 4 << 20};
	struct kvt_tier_loc gone[MAXQ], keep[2 * MAXQ];
	struct waiter w[2 * MAXQ];
	struct kvt_tier *t = NULL;
	unsigned nr = 2 * qd, left = nr;

	assert_true(qd <= MAXQ);
	assert_int_equal(ops->open(&c, &t), 0);
	for (unsigned i = 0; i < qd; i++)
		assert_int_equal(put_rec(t, i, 1, PLEN, &gone[i]), KVT_RECORD_HDR_SIZE + PLEN);
	for (unsigned i = 0; i < nr; i++)
		assert_int_equal(put_rec(t, 100 + i, 1, PLEN, &keep[i]),
				 KVT_RECORD_HDR_SIZE + PLEN);
	/* Let the event fd quiet down: nothing is in flight now. */
	ops->complete(t);
	if (by_recover) {
		ops->close(t);
		t = NULL;
		assert_int_equal(ops->open(&c, &t), 0);
		assert_int_equal(ops->recover(t, drop_gone, NULL), (int)nr);
	} else {
		for (unsigned i = 0; i < qd; i++)
			ops->free(t, &gone[i]);
	}
	memset(w, 0, sizeof(w));
	for (unsigned i = 0; i < nr; i++) {
		w[i].io.loc = keep[i];
		w[i].io.buf = ops->buf_alloc(t, keep[i].len);
		w[i].io.len = keep[i].len;
		w[i].io.done = on_done;
		assert_non_null(w[i].io.buf);
		assert_int_equal(ops->read(t, &w[i].io), 0);
	}
	while (left) {
		struct pollfd p = {.fd = ops->event_fd(t), .events = POLLIN};

		if (poll(&p, 1, 20000) != 1)
			fail_msg("queue depth %u%s%s: %u of %u reads pending, the event fd silent",
				 qd, flags & KVT_TIER_F_NO_URING ? " (workers)" : " (io_uring)",
				 by_recover ? ", freed by recover()" : "", left, nr);
		ops->complete(t);
		left = 0;
		for (unsigned i = 0; i < nr; i++)
			left += !w[i].finished;
	}
	for (unsigned i = 0; i < nr; i++) {
		assert_int_equal(w[i].io.res, (int)keep[i].len);
		ops->buf_free(t, w[i].io.buf);
	}
	ops->close(t);
	teardown(NULL);
}

static void test_free_then_read_small_qd(void **state)
{
	for (int r = 0; r < 2; r++) {
		free_then_read(0, 1, r);
		free_then_read(0, 4, r);
		free_then_read(KVT_TIER_F_NO_URING, 1, r);
		free_then_read(KVT_TIER_F_NO_URING, 4, r);
	}
}

/* ---------- visibility, dedupe, free ---------- */

static void test_visibility(void **state)
{
	struct kvt_tier *t = open_tier(0, 16 << 20, NULL);
	struct waiter w = {0}, r = {0};
	struct kvt_tier_loc loc;
	void *b = make_rec(t, 1, 1, 9000), *rb = ops->buf_alloc(t, 16384);

	assert_int_equal(ops->alloc(t, KVT_RECORD_HDR_SIZE + 9000, &loc), 0);
	r.io.loc = loc;
	r.io.buf = rb;
	r.io.len = loc.len;
	r.io.done = on_done;
	assert_int_equal(ops->read(t, &r.io), -ENODATA); /* reserved, never written */
	w.io.loc = loc;
	w.io.buf = b;
	w.io.len = KVT_RECORD_HDR_SIZE + 9000;
	w.io.done = on_done;
	assert_int_equal(ops->write(t, &w.io), 0);
	assert_int_equal(ops->read(t, &r.io), -ENODATA); /* write in flight */
	assert_int_equal(w.finished, 0);		 /* done() only from complete() */
	wait_all(t, &w, 1);
	assert_int_equal(ops->write(t, &w.io), -EBUSY); /* written once */
	assert_int_equal(ops->read(t, &r.io), 0);
	wait_all(t, &r, 1);
	assert_int_equal(r.io.res, (int)loc.len);
	ops->buf_free(t, b);
	ops->buf_free(t, rb);
	ops->close(t);
}

static void test_newest_seq_wins(void **state)
{
	struct kvt_tier *t = open_tier(0, 16 << 20, NULL);
	struct seen *s = calloc(1, sizeof(*s));
	struct kvt_tier_loc l1, l2, l3;
	struct kvt_tier_stats st;

	assert_int_equal(put_rec(t, 5, 10, 4000, &l1), KVT_RECORD_HDR_SIZE + 4000);
	assert_int_equal(put_rec(t, 5, 12, 5000, &l2), KVT_RECORD_HDR_SIZE + 5000);
	assert_int_equal(put_rec(t, 5, 11, 6000, &l3), KVT_RECORD_HDR_SIZE + 6000);
	ops->close(t);
	t = open_tier(0, 16 << 20, NULL);
	assert_int_equal(ops->recover(t, collect, s), 1);
	assert_int_equal(s->seq[0], 12);
	assert_int_equal(s->loc[0].off, l2.off);
	ops->stats(t, &st);
	assert_int_equal(st.stale, 2);
	ops->close(t);
	/* The losers were invalidated: a second restart sees one record and no stale ones. */
	memset(s, 0, sizeof(*s));
	t = open_tier(0, 16 << 20, NULL);
	assert_int_equal(ops->recover(t, collect, s), 1);
	ops->stats(t, &st);
	assert_int_equal(st.stale, 0);
	assert_int_equal(st.corrupt_records, 0);
	ops->close(t);
	free(s);
}

static int drop_odd(void *arg, const struct kvt_record_hdr *h, const struct kvt_tier_loc *loc)
{
	return (int)(h->key_hi & 1);
}

static void test_free_is_final(void **state)
{
	struct kvt_tier *t = open_tier(0, 16 << 20, NULL);
	struct seen *s = calloc(1, sizeof(*s));
	struct kvt_tier_loc loc[6], l;
	struct kvt_tier_stats st;
	int r;

	for (unsigned i = 0; i < 6; i++)
		assert_int_equal(put_rec(t, i, 1, 20000, &loc[i]), KVT_RECORD_HDR_SIZE + 20000);
	ops->free(t, &loc[1]);
	ops->free(t, &loc[1]); /* double free: logged, ignored */
	r = get_rec(t, &loc[1], 1, 1, 20000);
	assert_true(r == -EINVAL || r == -ENODATA);
	ops->free(t, &loc[4]);
	/* Reuse the freed space with a smaller record. */
	assert_int_equal(put_rec(t, 9, 1, 100, &l), KVT_RECORD_HDR_SIZE + 100);
	ops->close(t);

	t = open_tier(0, 16 << 20, NULL);
	/* Alive: 0 2 3 5 9.  drop_odd drops 3, 5 and 9: they must not come back either. */
	assert_int_equal(ops->recover(t, drop_odd, NULL), 2);
	ops->close(t);
	t = open_tier(0, 16 << 20, NULL);
	assert_int_equal(ops->recover(t, collect, s), 2);
	for (unsigned i = 0; i < 6; i++)
		assert_int_equal(find_seen(s, i) >= 0, i == 0 || i == 2);
	assert_true(find_seen(s, 9) < 0);
	ops->stats(t, &st);
	assert_int_equal(st.corrupt_records, 0);
	ops->close(t);
	free(s);
}

/* ---------- torn and corrupt records ---------- */

static bool tear_next;
static int tear_hook(int op, uint64_t off, uint32_t len)
{
	if (op == KVT_TIER_OP_WRITE && tear_next) {
		tear_next = false;
		return (int)(len / 2);
	}
	return 0;
}

static void corrupt_byte(uint64_t off)
{
	int fd = open(path_a, O_RDWR);
	unsigned char c;

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &c, 1, (off_t)off), 1);
	c ^= 0x5a;
	assert_int_equal(pwrite(fd, &c, 1, (off_t)off), 1);
	close(fd);
}

static void test_torn_and_corrupt(void **state)
{
	struct kvt_tier *t = open_tier(0, 32 << 20, tear_hook);
	struct seen *s = calloc(1, sizeof(*s));
	struct kvt_tier_loc loc[5], torn;
	struct kvt_tier_stats st;

	for (unsigned i = 0; i < 5; i++)
		assert_int_equal(put_rec(t, i, 1, 100000, &loc[i]), KVT_RECORD_HDR_SIZE + 100000);
	/* Torn: the next write puts half the record on disk, then fails. */
	tear_next = true;
	assert_int_equal(put_rec(t, 7, 1, 100000, &torn), -EIO);
	assert_int_equal(get_rec(t, &torn, 7, 1, 100000), -ENODATA);
	/* Corruption while open: one payload byte of record 1 and one header byte of record 3. */
	corrupt_byte(loc[1].off + 64 + 5000);
	corrupt_byte(loc[3].off + 40);
	assert_int_equal(get_rec(t, &loc[1], 1, 1, 100000), -EBADMSG);
	assert_int_equal(get_rec(t, &loc[3], 3, 1, 100000), -EBADMSG);
	ops->stats(t, &st);
	assert_int_equal(st.corrupt_records, 2);
	assert_int_equal(st.write_errors, 1);
	ops->close(t);

	t = open_tier(0, 32 << 20, NULL);
	ops->stats(t, &st);
	assert_int_equal(st.recovered, 3);
	assert_int_equal(st.corrupt_records, 3); /* two corrupted, one torn */
	assert_int_equal(ops->recover(t, collect, s), 3);
	assert_true(find_seen(s, 1) < 0);
	assert_true(find_seen(s, 3) < 0);
	assert_true(find_seen(s, 7) < 0);
	for (unsigned i = 0; i < 5; i += 2)
		assert_int_equal(get_rec(t, &s->loc[find_seen(s, i)], i, 1, 100000),
				 (int)loc[i].len);
	/* Space of the discarded records is reusable. */
	for (unsigned i = 0; i < 20; i++) {
		struct kvt_tier_loc l;

		assert_int_equal(put_rec(t, 50 + i, 1, 100000, &l), KVT_RECORD_HDR_SIZE + 100000);
	}
	ops->close(t);
	free(s);
}

/* Read-time corruption with each engine (the workers verify on their own threads). */
static void test_corrupt_read_engines(void **state)
{
	for (int k = 0; k < 2; k++) {
		struct kvt_tier *t = open_tier(k ? KVT_TIER_F_NO_URING : 0, 16 << 20, NULL);
		struct kvt_tier_loc l;
		struct kvt_tier_stats st;

		assert_int_equal(put_rec(t, 1, 1, 70000, &l), KVT_RECORD_HDR_SIZE + 70000);
		assert_int_equal(get_rec(t, &l, 1, 1, 70000), (int)l.len);
		corrupt_byte(l.off + 64 + 69999); /* the last payload byte */
		assert_int_equal(get_rec(t, &l, 1, 1, 70000), -EBADMSG);
		corrupt_byte(l.off + 64 + 69999);
		assert_int_equal(get_rec(t, &l, 1, 1, 70000), (int)l.len);
		ops->stats(t, &st);
		assert_int_equal(st.corrupt_records, 1);
		assert_int_equal(st.read_errors, 0);
		assert_int_equal(st.bytes_read, 2 * (uint64_t)l.len);
		ops->close(t);
		teardown(state);
	}
}

/*
 * Large records are checked in pieces by the verifier threads (and, with the pread engine, by
 * the worker that read them).  A flipped byte in any piece, at the piece edges, or in the
 * header must fail the read; the restored byte must pass; both engines, inline checking and
 * 1 to 4 verifiers, an odd payload length so that the last piece is short.
 */
static void test_corrupt_read_pieces(void **state)
{
	const uint32_t plen = (1u << 20) + 13;
	const uint64_t spots[] = {0, 1, 262143, 262144, 262145, 524288, 700001, plen - 1};
	const struct {
		unsigned flags, threads;
	} cfg[] = {{0, 1},
		   {0, 4},
		   {KVT_TIER_F_VERIFY_INLINE, 0},
		   {KVT_TIER_F_NO_URING, 1},
		   {KVT_TIER_F_NO_URING, 4}};

	for (size_t c = 0; c < sizeof(cfg) / sizeof(cfg[0]); c++) {
		struct kvt_tier *t;
		struct kvt_tier_loc l;
		struct kvt_tier_stats st;
		uint64_t bad = 0;

		verify_threads = cfg[c].threads;
		t = open_tier(cfg[c].flags, 32 << 20, NULL);
		verify_threads = 0;
		assert_int_equal(put_rec(t, 9, 1, plen, &l), (int)(KVT_RECORD_HDR_SIZE + plen));
		assert_int_equal(get_rec(t, &l, 9, 1, plen), (int)l.len);
		for (size_t k = 0; k < sizeof(spots) / sizeof(spots[0]); k++) {
			corrupt_byte(l.off + 64 + spots[k]);
			assert_int_equal(get_rec(t, &l, 9, 1, plen), -EBADMSG);
			bad++;
			corrupt_byte(l.off + 64 + spots[k]);
			assert_int_equal(get_rec(t, &l, 9, 1, plen), (int)l.len);
		}
		corrupt_byte(l.off + 24); /* the fingerprint field of the header */
		assert_int_equal(get_rec(t, &l, 9, 1, plen), -EBADMSG);
		bad++;
		ops->stats(t, &st);
		assert_int_equal(st.corrupt_records, bad);
		assert_int_equal(st.read_errors, 0);
		ops->close(t);
		teardown(state);
	}
}

/*
 * Reads held back (KVT_TIER_IO_MORE) of records that follow each other on disk go to the
 * device as one request (io_uring engine).  Each record is still checked on its own: records
 * of different sizes (one page, not a page multiple, partial last pages, 1 byte), a corrupt
 * payload byte and a corrupt header in the middle of a merged read fail those two blocks
 * only, never hand out wrong bytes, and the blocks around them are exact.  Buffers that
 * follow each other (one read), buffers with gaps between them (one readv), and reads asked
 * in reverse order (sorted by place before they go).  Then the
 * file is cut in the middle of a record: the merged read comes back short, what it covered
 * is served, each record after the cut is read again on its own and fails alone.  The pread
 * engine (no merging) gives the same answers.
 */
#define MR_N 12
static void test_merged_reads(void **state)
{
	static const uint32_t plen[MR_N] = {100000, 4032,  1,	 300000, 8192,	4096 * 3 - 64,
					    12345,  70000, 4033, 65536,	 20000, 777};
	const unsigned bad_payload = 4, bad_header = 7;

	for (int eng = 0; eng < 2; eng++) {
		struct kvt_tier *t = open_tier(eng ? KVT_TIER_F_NO_URING : 0, 32 << 20, NULL);
		struct kvt_tier_loc loc[MR_N];
		struct kvt_tier_stats st;
		struct waiter w[MR_N];
		void *buf[MR_N], *gap[MR_N];

		for (unsigned i = 0; i < MR_N; i++) {
			assert_int_equal(put_rec(t, i, 1, plen[i], &loc[i]),
					 (int)(KVT_RECORD_HDR_SIZE + plen[i]));
			/* one after the other on disk: what makes the reads mergeable */
			if (i)
				assert_int_equal(loc[i].off,
						 loc[i - 1].off +
						     (loc[i - 1].len + 4095) / 4096 * 4096);
		}
		corrupt_byte(loc[bad_payload].off + 64 + plen[bad_payload] / 2);
		corrupt_byte(loc[bad_header].off + 24);
		for (int pass = 0; pass < 3; pass++) {
			/* buffers one after the other, with gaps, then reads asked in reverse */
			const bool gaps = pass == 1, rev = pass == 2;
			uint64_t merged0;

			ops->stats(t, &st);
			merged0 = st.merged_reads;
			memset(w, 0, sizeof(w));
			for (unsigned i = 0; i < MR_N; i++) {
				buf[i] = ops->buf_alloc(t, loc[i].len);
				gap[i] = gaps ? ops->buf_alloc(t, 4096) : NULL;
				assert_non_null(buf[i]);
				memset(buf[i], 0xee, loc[i].len);
				w[i].io.loc = loc[i];
				w[i].io.buf = buf[i];
				w[i].io.len = loc[i].len;
				w[i].io.done = on_done;
				w[i].io.flags = KVT_TIER_IO_MORE;
			}
			for (unsigned k = 0; k < MR_N; k++)
				assert_int_equal(ops->read(t, &w[rev ? MR_N - 1 - k : k].io), 0);
			assert_int_equal(ops->submit(t), 0);
			wait_all(t, w, MR_N);
			for (unsigned i = 0; i < MR_N; i++) {
				if (i == bad_payload || i == bad_header) {
					assert_int_equal(w[i].io.res, -EBADMSG);
				} else {
					void *want = make_rec(t, i, 1, plen[i]);

					assert_int_equal(w[i].io.res, (int)loc[i].len);
					assert_memory_equal(buf[i], want, loc[i].len);
					ops->buf_free(t, want);
				}
				ops->buf_free(t, buf[i]);
				if (gap[i])
					ops->buf_free(t, gap[i]);
			}
			ops->stats(t, &st);
			/* one run, or two: the depth (8) counts requests, not records */
			if (!eng)
				assert_true(st.merged_reads - merged0 >= MR_N - 2);
			else
				assert_int_equal(st.merged_reads, 0);
			assert_int_equal(st.read_errors, 0);
		}
		/* Cut the file in the middle of record 9: a short merged read. */
		assert_int_equal(truncate(path_a, (off_t)(loc[9].off + 4096)), 0);
		memset(w, 0, sizeof(w));
		for (unsigned i = 0; i < MR_N; i++) {
			buf[i] = ops->buf_alloc(t, loc[i].len);
			memset(buf[i], 0xee, loc[i].len);
			w[i].io.loc = loc[i];
			w[i].io.buf = buf[i];
			w[i].io.len = loc[i].len;
			w[i].io.done = on_done;
			w[i].io.flags = KVT_TIER_IO_MORE;
			assert_int_equal(ops->read(t, &w[i].io), 0);
		}
		assert_int_equal(ops->submit(t), 0);
		wait_all(t, w, MR_N);
		for (unsigned i = 0; i < MR_N; i++) {
			if (i == bad_payload || i == bad_header) {
				assert_int_equal(w[i].io.res, -EBADMSG);
			} else if (i >= 9) {
				assert_true(w[i].io.res < 0);
				assert_int_not_equal(w[i].io.res, -EBADMSG);
			} else {
				void *want = make_rec(t, i, 1, plen[i]);

				assert_int_equal(w[i].io.res, (int)loc[i].len);
				assert_memory_equal(buf[i], want, loc[i].len);
				ops->buf_free(t, want);
			}
			ops->buf_free(t, buf[i]);
		}
		ops->stats(t, &st);
		if (!eng)
			assert_true(st.merged_retries >= MR_N - 9);
		assert_int_equal(st.read_errors, MR_N - 9);
		ops->close(t);
		teardown(state);
	}
}

/*
 * The queue depth counts requests at the device, not records (io_uring engine): 48 held
 * reads of records that follow each other on disk, with a depth of 8, go as one merged read
 * (it was 8 records at a time, the rest waiting in the backlog, so that a restore's reads
 * were cut in runs of the depth).  Then reads that merge with nothing (every other record,
 * asked in reverse order): more than the depth of them wait in the tier, go as slots free,
 * and each comes back exact.
 */
#define MQ_N 48
static void test_merged_reads_past_depth(void **state)
{
	struct kvt_tier *t = open_tier(0, 32 << 20, NULL);
	struct kvt_tier_loc loc[MQ_N];
	struct kvt_tier_stats st;
	struct waiter w[MQ_N];
	void *buf[MQ_N];
	uint64_t merged0;

	for (unsigned i = 0; i < MQ_N; i++) {
		assert_int_equal(put_rec(t, i, 1, 4032 - i, &loc[i]),
				 (int)(KVT_RECORD_HDR_SIZE + 4032 - i));
		if (i)
			assert_int_equal(loc[i].off, loc[i - 1].off + 4096);
	}
	for (int pass = 0; pass < 2; pass++) {
		/* pass 0: all, in order; pass 1: every other one, last first */
		unsigned n = pass ? MQ_N / 2 : MQ_N;

		ops->stats(t, &st);
		merged0 = st.merged_reads;
		memset(w, 0, sizeof(w));
		for (unsigned k = 0; k < n; k++) {
			unsigned i = pass ? MQ_N - 2 - 2 * k : k;

			buf[k] = ops->buf_alloc(t, loc[i].len);
			assert_non_null(buf[k]);
			memset(buf[k], 0xee, loc[i].len);
			w[k].io.loc = loc[i];
			w[k].io.buf = buf[k];
			w[k].io.len = loc[i].len;
			w[k].io.done = on_done;
			w[k].io.flags = KVT_TIER_IO_MORE;
			assert_int_equal(ops->read(t, &w[k].io), 0);
		}
		assert_int_equal(ops->submit(t), 0);
		wait_all(t, w, (int)n);
		for (unsigned k = 0; k < n; k++) {
			unsigned i = pass ? MQ_N - 2 - 2 * k : k;
			void *want = make_rec(t, i, 1, 4032 - i);

			assert_int_equal(w[k].io.res, (int)loc[i].len);
			assert_memory_equal(buf[k], want, loc[i].len);
			ops->buf_free(t, want);
			ops->buf_free(t, buf[k]);
		}
		ops->stats(t, &st);
		assert_int_equal(st.merged_reads - merged0, pass ? 0 : MQ_N - 1);
		assert_int_equal(st.read_errors, 0);
	}
	ops->close(t);
	teardown(state);
}

/* A raw block whose payload embeds a well-formed record must never surface as a record,
 * even once its own header is gone (freed, partly overwritten). */
static void test_embedded_record_rejected(void **state)
{
	struct kvt_tier *t = open_tier(0, 16 << 20, NULL);
	struct seen *s = calloc(1, sizeof(*s));
	uint32_t plen = 64 * 1024;
	struct kvt_record_hdr *h = make_rec(t, 1, 1, plen);
	struct kvt_record_hdr forged;
	unsigned char fp[100];
	struct kvt_tier_loc loc, small;
	struct waiter w = {0};

	/* A forged record at every page boundary of the payload. */
	memset(&forged, 0, sizeof(forged));
	forged.magic = KVT_RECORD_MAGIC;
	forged.version = KVT_RECORD_VERSION;
	forged.hdr_size = KVT_RECORD_HDR_SIZE;
	forged.key_lo = key_of(666);
	forged.key_hi = 666;
	forged.seq = 1ull << 60;
	forged.payload_len = sizeof(fp);
	memset(fp, 0xab, sizeof(fp));
	kvt_record_seal(&forged, fp);
	for (uint32_t off = 4096; off + 4096 <= 64 + plen; off += 4096) {
		memcpy((char *)h + off, &forged, sizeof(forged));
		memcpy((char *)h + off + 64, fp, sizeof(fp));
	}
	kvt_record_seal(h, h + 1);
	assert_int_equal(ops->alloc(t, 64 + plen, &loc), 0);
	w.io.loc = loc;
	w.io.buf = h;
	w.io.len = 64 + plen;
	w.io.done = on_done;
	assert_int_equal(ops->write(t, &w.io), 0);
	wait_all(t, &w, 1);
	assert_int_equal(w.io.res, 64 + plen);
	ops->buf_free(t, h);
	ops->free(t, &loc);
	assert_int_equal(put_rec(t, 2, 1, 100, &small), 164);
	ops->close(t);
	t = open_tier(0, 16 << 20, NULL);
	assert_int_equal(ops->recover(t, collect, s), 1);
	assert_true(find_seen(s, 2) >= 0);
	assert_true(find_seen(s, 666) < 0);
	ops->close(t);
	free(s);
}

/* ---------- injected errors and a full filesystem ---------- */

static int fail_errno;
static uint64_t fail_from = ~0ull;
static int fail_op = KVT_TIER_OP_WRITE;
static int fail_hook(int op, uint64_t off, uint32_t len)
{
	return op == fail_op && off >= fail_from ? -fail_errno : 0;
}

static void injected(unsigned flags, int err)
{
	struct kvt_tier *t = open_tier(flags, 16 << 20, fail_hook);
	struct seen *s = calloc(1, sizeof(*s));
	struct kvt_tier_loc ok, bad[4];
	struct kvt_tier_stats st;

	fail_errno = err;
	fail_op = KVT_TIER_OP_WRITE;
	fail_from = ~0ull;
	assert_int_equal(put_rec(t, 1, 1, 30000, &ok), KVT_RECORD_HDR_SIZE + 30000);
	fail_from = 0;
	for (unsigned i = 0; i < 4; i++) {
		assert_int_equal(put_rec(t, 10 + i, 1, 30000, &bad[i]), -err);
		assert_int_equal(get_rec(t, &bad[i], 10 + i, 1, 30000), -ENODATA);
	}
	/* Free of a failed slot while writes still fail: the invalidation fails, the pages are
	 * withheld rather than reused (the medium may hold the record). */
	ops->free(t, &bad[0]);
	fail_from = ~0ull;
	ops->free(t, &bad[1]);
	ops->complete(t);
	/* Reads fail too, and are counted. */
	fail_op = KVT_TIER_OP_READ;
	fail_from = 0;
	assert_int_equal(get_rec(t, &ok, 1, 1, 30000), -err);
	fail_from = ~0ull;
	assert_int_equal(get_rec(t, &ok, 1, 1, 30000), (int)ok.len);
	ops->stats(t, &st);
	assert_int_equal(st.write_errors, 4 + 1);
	assert_int_equal(st.read_errors, 1);
	assert_int_equal(st.records, 1);
	assert_int_equal(st.quarantined_bytes, bad[0].len);
	ops->close(t);
	t = open_tier(flags, 16 << 20, NULL);
	assert_int_equal(ops->recover(t, collect, s), 1);
	assert_true(find_seen(s, 1) >= 0);
	ops->close(t);
	free(s);
}

static void test_eio(void **state)
{
	injected(0, EIO);
	teardown(state);
	injected(KVT_TIER_F_NO_URING, EIO);
}

static void test_enospc(void **state)
{
	injected(0, ENOSPC);
	teardown(state);
	injected(KVT_TIER_F_NO_URING | KVT_TIER_F_FSYNC, ENOSPC);
}

static int fsync_hook(int op, uint64_t off, uint32_t len)
{
	return op == KVT_TIER_OP_FSYNC && off >= fail_from ? -EIO : 0;
}

static void test_fsync_error(void **state)
{
	for (int k = 0; k < 2; k++) {
		unsigned flags = KVT_TIER_F_FSYNC | (k ? KVT_TIER_F_NO_URING : 0);
		struct kvt_tier *t;
		struct kvt_tier_loc l;

		fail_from = ~0ull;
		t = open_tier(flags, 16 << 20, fsync_hook);
		/* Records only: the superblock (offset 0) must still be writable for alloc(). */
		fail_from = 4096;
		assert_int_equal(put_rec(t, 1, 1, 1000, &l), -EIO);
		assert_int_equal(get_rec(t, &l, 1, 1, 1000), -ENODATA);
		fail_from = ~0ull;
		ops->close(t);
		teardown(state);
	}
}

/* A filesystem too small for the configured capacity: open fails cleanly, gives the space
 * back, and a capacity that fits works.  Uses a 1 MiB tmpfs when this process may mount
 * one, else (or with KVT_TEST_NO_MOUNT set) RLIMIT_FSIZE, EFBIG, as the stand-in. */
static void test_full_filesystem(void **state)
{
	char mnt[300], p[340];
	const char *paths[] = {p, NULL};
	struct kvt_tier_conf c = {.paths = paths, .queue_depth = 4, .buf_bytes = 1 << 20};
	struct kvt_tier *t = NULL;
	struct rlimit old, lim;
	struct kvt_tier_loc l;
	bool mounted;
	struct stat st;
	int r;

	snprintf(mnt, sizeof(mnt), "%s/mnt", dir);
	assert_int_equal(mkdir(mnt, 0700), 0);
	mounted = !getenv("KVT_TEST_NO_MOUNT") && mount("kvt", mnt, "tmpfs", 0, "size=1m") == 0;
	snprintf(p, sizeof(p), "%s/%s", mounted ? mnt : dir, "full.slots");
	getrlimit(RLIMIT_FSIZE, &old);
	if (!mounted) {
		signal(SIGXFSZ, SIG_IGN);
		lim = old;
		lim.rlim_cur = 1 << 20;
		assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	}
	printf("# full filesystem via %s\n", mounted ? "1 MiB tmpfs" : "RLIMIT_FSIZE=1MiB");
	c.capacity_bytes = 4 << 20;
	r = ops->open(&c, &t);
	assert_true(r == -ENOSPC || r == -EFBIG);
	assert_null(t);
	assert_int_equal(stat(p, &st), 0);
	assert_true(st.st_size <= 4096); /* space given back */
	c.capacity_bytes = 512 << 10;
	assert_int_equal(ops->open(&c, &t), 0);
	for (unsigned i = 0; i < 200; i++) {
		r = put_rec(t, i, 1, 30000, &l);
		if (r < 0)
			break;
	}
	assert_int_equal(r, -ENOSPC); /* the tier's own capacity runs out, cleanly */
	ops->close(t);
	if (!mounted)
		setrlimit(RLIMIT_FSIZE, &old);
	unlink(p);
	if (mounted)
		umount2(mnt, MNT_DETACH); /* io_uring may hold the file a moment longer */
	rmdir(mnt);
}

/* ---------- fallbacks and configuration ---------- */

static int refuse_hook(int op, uint64_t off, uint32_t len)
{
	if (op == KVT_TIER_OP_URING_SETUP)
		return -EPERM; /* what a container's seccomp profile does */
	if (op == KVT_TIER_OP_OPEN_DIRECT)
		return -EINVAL; /* what a filesystem without O_DIRECT does */
	if (op == KVT_TIER_OP_FALLOCATE)
		return -EOPNOTSUPP;
	return 0;
}

static void test_fallbacks(void **state)
{
	struct kvt_tier *t = open_tier(0, 8 << 20, refuse_hook);
	struct kvt_tier_stats st;
	struct kvt_tier_loc l;
	struct stat sb;

	ops->stats(t, &st);
	assert_false(st.io_flags & KVT_TIER_ST_URING);
	assert_false(st.io_flags & KVT_TIER_ST_DIRECT);
	assert_int_equal(stat(path_a, &sb), 0);
	assert_int_equal(sb.st_size, 8 << 20); /* zero-filled to full size */
	assert_true(sb.st_blocks * 512 >= (8 << 20) - 4096);
	assert_int_equal(put_rec(t, 1, 1, 12345, &l), KVT_RECORD_HDR_SIZE + 12345);
	assert_int_equal(get_rec(t, &l, 1, 1, 12345), (int)l.len);
	ops->close(t);
	t = open_tier(0, 8 << 20, NULL);
	ops->stats(t, &st);
	assert_true(st.io_flags & KVT_TIER_ST_URING);
	assert_true(st.io_flags & KVT_TIER_ST_DIRECT);
	assert_true(st.io_flags & KVT_TIER_ST_FIXED_BUFS);
	assert_int_equal(st.recovered, 1);
	ops->close(t);
}

static void test_multi_file(void **state)
{
	const char *paths[] = {path_a, path_b, path_c, NULL};
	struct kvt_tier_conf c = {.paths = paths, .capacity_bytes = 24 << 20, .queue_depth = 4};
	struct seen *s = calloc(1, sizeof(*s));
	struct kvt_tier_stats st;
	struct kvt_tier *t;
	unsigned per_file[3] = {0};

	assert_int_equal(ops->open(&c, &t), 0);
	ops->stats(t, &st);
	assert_int_equal(st.files, 3);
	assert_true(st.capacity_bytes >= (24u << 20) - 3 * 4096);
	for (unsigned i = 0; i < 30; i++) {
		struct kvt_tier_loc l;

		assert_int_equal(put_rec(t, i, 1, 50000, &l), KVT_RECORD_HDR_SIZE + 50000);
		per_file[l.file]++;
	}
	for (unsigned f = 0; f < 3; f++)
		assert_int_equal(per_file[f], 10);
	ops->close(t);
	assert_int_equal(ops->open(&c, &t), 0);
	assert_int_equal(ops->recover(t, collect, s), 30);
	for (int i = 0; i < s->n; i++)
		assert_int_equal(get_rec(t, &s->loc[i], (unsigned)s->key_hi[i], 1, 50000),
				 (int)s->loc[i].len);
	ops->close(t);
	free(s);
}

/* Slot bookkeeping under churn: random alloc/free of unwritten slots (no I/O needed) must
 * keep used_bytes exact, never hand out overlapping slots, and accept every valid free. */
static void test_slot_churn(void **state)
{
	enum { K = 300, OPS = 20000 };
	struct kvt_tier *t = open_tier(0, 32 << 20, NULL);
	struct kvt_tier_loc *loc = calloc(K, sizeof(*loc));
	bool *live = calloc(K, sizeof(*live));
	struct kvt_tier_stats st;
	uint64_t used = 0;
	unsigned s = seed;

	assert_non_null(loc);
	assert_non_null(live);
	for (int op = 0; op < OPS; op++) {
		unsigned k = (unsigned)rand_r(&s) % K;

		if (!live[k]) {
			uint32_t len = 64 + (uint32_t)rand_r(&s) % (200 << 10);
			int r = ops->alloc(t, len, &loc[k]);

			if (r == -ENOSPC)
				continue;
			assert_int_equal(r, 0);
			assert_true(loc[k].len >= len && loc[k].len % 4096 == 0);
			for (unsigned j = 0; j < K; j++)
				if (live[j])
					assert_true(loc[k].off + loc[k].len <= loc[j].off ||
						    loc[j].off + loc[j].len <= loc[k].off);
			live[k] = true;
			used += loc[k].len;
		} else {
			ops->free(t, &loc[k]);
			live[k] = false;
			used -= loc[k].len;
		}
		if (op % 97 == 0) {
			ops->stats(t, &st);
			assert_int_equal(st.used_bytes, used);
		}
	}
	for (unsigned k = 0; k < K; k++)
		if (live[k])
			ops->free(t, &loc[k]);
	ops->stats(t, &st);
	assert_int_equal(st.used_bytes, 0);
	assert_int_equal(st.records, 0);
	ops->close(t);
	free(loc);
	free(live);
}

/* The daemon's eviction loop: the tier is full, one record is freed, and the next alloc()
 * of the same size must succeed at once (it waits for the invalidation of the freed slot)
 * without running anyone's done() from inside alloc(). */
static void evict_one(unsigned flags)
{
	struct kvt_tier *t = open_tier(flags, 4 << 20, NULL);
	struct kvt_tier_loc loc[64], l;
	struct waiter rd = {0};
	struct kvt_tier_stats st;
	uint64_t used;
	void *rb;
	unsigned n = 0;
	int r;

	while (n < 64 && (r = put_rec(t, n, 1, 100000, &loc[n])) > 0)
		n++;
	assert_int_equal(r, -ENOSPC);
	assert_true(n >= 30);
	/* A read in flight: if alloc() reaps its completion, done() must wait for complete(). */
	rb = ops->buf_alloc(t, loc[1].len);
	rd.io.loc = loc[1];
	rd.io.buf = rb;
	rd.io.len = loc[1].len;
	rd.io.done = on_done;
	assert_int_equal(ops->read(t, &rd.io), 0);
	ops->stats(t, &st);
	used = st.used_bytes;
	ops->free(t, &loc[0]);
	/* A watermark loop sees the space come back at once. */
	ops->stats(t, &st);
	assert_int_equal(st.used_bytes, used - loc[0].len);
	assert_int_equal(ops->alloc(t, 64 + 100000, &l), 0);
	assert_int_equal(l.off, loc[0].off);
	assert_int_equal(rd.finished, 0);
	wait_all(t, &rd, 1);
	assert_int_equal(rd.io.res, (int)loc[1].len);
	ops->free(t, &l);
	ops->buf_free(t, rb);
	ops->close(t);
}

static void test_full_evict_one(void **state)
{
	evict_one(0);
	teardown(state);
	evict_one(KVT_TIER_F_NO_URING);
}

static void test_bad_input(void **state)
{
	struct kvt_tier *t = open_tier(0, 8 << 20, NULL);
	const char *none[] = {NULL};
	struct kvt_tier_conf c = {.paths = none};
	struct kvt_tier *t2 = NULL;
	struct kvt_tier_loc l, bogus = {.off = 4096 * 7, .len = 4096};
	struct waiter w = {0};
	char *b = ops->buf_alloc(t, 16384);
	struct kvt_tier_stats st;

	assert_int_equal(ops->open(&c, &t2), -EINVAL);
	/* A slot file has one owner: a second open fails and leaves the first intact. */
	c.paths = (const char *const[]){path_a, NULL};
	c.capacity_bytes = 1 << 20; /* would re-initialise the file if it got that far */
	assert_int_equal(ops->open(&c, &t2), -EBUSY);
	assert_null(t2);
	c.paths = NULL;
	assert_int_equal(ops->open(&c, &t2), -EINVAL);
	assert_int_equal(ops->alloc(t, 10, &l), -EINVAL);
	assert_int_equal(ops->alloc(t, 0xffffffffu, &l), -EINVAL);
	ops->free(t, &bogus);
	assert_int_equal(ops->alloc(t, 9000, &l), 0);
	w.io.loc = l;
	w.io.done = on_done;
	w.io.buf = b + 1; /* misaligned for O_DIRECT */
	w.io.len = 9000;
	assert_int_equal(ops->write(t, &w.io), -EINVAL);
	w.io.buf = b;
	w.io.len = l.len + 1;
	assert_int_equal(ops->write(t, &w.io), -EINVAL);
	memset(b, 0, 16384);
	w.io.len = 9000; /* not a record */
	assert_int_equal(ops->write(t, &w.io), -EINVAL);
	w.io.loc = bogus;
	assert_int_equal(ops->read(t, &w.io), -EINVAL);
	ops->stats(t, &st);
	assert_int_equal(st.writes, 0);
	assert_int_equal(st.used_bytes, l.len);
	ops->free(t, &l);
	ops->stats(t, &st);
	assert_int_equal(st.used_bytes, 0);
	ops->buf_free(t, b);
	ops->close(t);
	ops->close(NULL);
}

/* ---------- settle(): a freed record's invalidation, durable before it returns ---------- */

static uint32_t magic_at(const char *path, uint64_t off)
{
	int fd = open(path, O_RDONLY);
	uint32_t m = 0;

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &m, 4, (off_t)off), 4);
	close(fd);
	return m;
}

static void settle_one(unsigned flags)
{
	enum { Q = 24 };
	struct kvt_tier *t = open_tier(flags, 64 << 20, NULL);
	struct waiter w[Q] = {0};
	struct kvt_tier_loc a, b;
	struct seen *s = calloc(1, sizeof(*s));
	void *bufs[Q];

	assert_non_null(s);
	assert_int_equal(put_rec(t, 1, 1, 100000, &a), KVT_RECORD_HDR_SIZE + 100000);
	/* A queue of writes (depth 8): the last one, record 3, waits in the tier's backlog. */
	for (unsigned i = 0; i < Q; i++) {
		unsigned id = i == Q - 1 ? 3 : 100 + i;

		bufs[i] = make_rec(t, id, 2, 200000);
		assert_int_equal(ops->alloc(t, KVT_RECORD_HDR_SIZE + 200000, &w[i].io.loc), 0);
		w[i].io.buf = bufs[i];
		w[i].io.len = KVT_RECORD_HDR_SIZE + 200000;
		w[i].io.done = on_done;
		assert_int_equal(ops->write(t, &w[i].io), 0);
	}
	b = w[Q - 1].io.loc;
	/* free() alone queues A's invalidation behind them; settle() does it now. */
	ops->free(t, &a);
	assert_int_equal(magic_at(path_a, a.off), KVT_RECORD_MAGIC);
	assert_int_equal(ops->settle(t, key_of(1), 1), 0);
	assert_int_equal(magic_at(path_a, a.off), 0);
	/* Record 3's write had not started: cancelled, never on the medium. */
	ops->free(t, &b);
	assert_int_equal(ops->settle(t, key_of(3), 3), 0);
	assert_int_equal(magic_at(path_a, b.off), 0);
	assert_int_equal(ops->settle(t, key_of(1), 1), 0); /* nothing left: a no-op */
	wait_all(t, w, Q);
	assert_int_equal(w[Q - 1].io.res, -ECANCELED);
	for (unsigned i = 0; i + 1 < Q; i++)
		assert_int_equal(w[i].io.res, KVT_RECORD_HDR_SIZE + 200000);
	for (unsigned i = 0; i < Q; i++)
		ops->buf_free(t, bufs[i]);
	ops->close(t);
	t = open_tier(flags, 64 << 20, NULL);
	assert_int_equal(ops->recover(t, collect, s), Q - 1);
	assert_true(find_seen(s, 1) < 0);
	assert_true(find_seen(s, 3) < 0);
	ops->close(t);
	free(s);
}

static void test_settle(void **state)
{
	settle_one(0);
	teardown(state);
	settle_one(KVT_TIER_F_NO_URING);
	teardown(state);
	settle_one(KVT_TIER_F_FSYNC);
}

/* ---------- slot files that must not be overwritten ---------- */

static void flip_byte(const char *path, off_t off)
{
	int fd = open(path, O_RDWR);
	uint8_t x;

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &x, 1, off), 1);
	x ^= 0x40;
	assert_int_equal(pwrite(fd, &x, 1, off), 1);
	close(fd);
}

static void test_slot_file_safety(void **state)
{
	const char *pa[] = {path_a, NULL}, *pb[] = {path_b, NULL};
	struct kvt_tier_conf c = {.paths = pa, .capacity_bytes = 16 << 20, .queue_depth = 4};
	struct kvt_tier *t = open_tier(0, 16 << 20, NULL), *t2 = NULL;
	struct seen *s = calloc(1, sizeof(*s));
	char page[4096], page2[4096];
	struct kvt_tier_loc l;
	struct stat st;
	int fd;

	assert_non_null(s);
	assert_int_equal(put_rec(t, 5, 1, 50000, &l), KVT_RECORD_HDR_SIZE + 50000);
	ops->close(t);
	/* One copy damaged: the other serves (and is written back). */
	flip_byte(path_a, 20);
	assert_int_equal(ops->open(&c, &t2), 0);
	assert_int_equal(ops->recover(t2, collect, s), 1);
	ops->close(t2);
	t2 = NULL;
	/* Both damaged: refused, the file untouched. */
	flip_byte(path_a, 20);
	flip_byte(path_a, 2048 + 20);
	fd = open(path_a, O_RDONLY);
	assert_int_equal(pread(fd, page, sizeof(page), 0), (ssize_t)sizeof(page));
	assert_int_equal(ops->open(&c, &t2), -EBADMSG);
	assert_null(t2);
	assert_int_equal(pread(fd, page2, sizeof(page2), 0), (ssize_t)sizeof(page2));
	assert_memory_equal(page, page2, sizeof(page));
	assert_int_equal(magic_at(path_a, l.off), KVT_RECORD_MAGIC);
	close(fd);
	/* Someone else's file: refused, untouched. */
	fd = open(path_b, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	memset(page, 'x', sizeof(page));
	assert_int_equal(write(fd, page, 100), 100);
	close(fd);
	c.paths = pb;
	assert_int_equal(ops->open(&c, &t2), -EEXIST);
	assert_int_equal(stat(path_b, &st), 0);
	assert_int_equal(st.st_size, 100);
	/* A smaller capacity is refused; a larger one keeps the record. */
	flip_byte(path_a, 20); /* the first copy good again */
	c.paths = pa;
	c.capacity_bytes = 8 << 20;
	assert_int_equal(ops->open(&c, &t2), -EINVAL);
	c.capacity_bytes = 32 << 20;
	assert_int_equal(ops->open(&c, &t2), 0);
	s->n = 0;
	assert_int_equal(ops->recover(t2, collect, s), 1);
	assert_int_equal(get_rec(t2, &s->loc[0], 5, 1, 50000), (int)s->loc[0].len);
	ops->close(t2);
	assert_int_equal(stat(path_a, &st), 0);
	assert_true(st.st_size >= 32 << 20);
	free(s);
}

/* ---------- KVT_TIER_F_BG_RECOVER: the scan on a thread ---------- */

static void test_bg_recover(void **state)
{
	struct kvt_tier *t = open_tier(0, 32 << 20, NULL);
	struct seen *s = calloc(1, sizeof(*s));
	struct kvt_tier_stats st;
	struct kvt_tier_loc l;
	uint64_t done = 0, total = 0;

	assert_non_null(s);
	for (unsigned i = 0; i < 30; i++)
		assert_int_equal(put_rec(t, i, 1, 70000, &l), KVT_RECORD_HDR_SIZE + 70000);
	ops->close(t);
	t = open_tier(KVT_TIER_F_BG_RECOVER, 32 << 20, NULL);
	ops->stats(t, &st);
	assert_int_equal(st.recovered, 0);
	assert_int_equal(ops->alloc(t, 5000, &l), -EAGAIN);
	assert_int_equal(ops->recover_start(t), 1);
	while (ops->recovering(t, &done, &total) == 1) {
		struct pollfd pfd = {.fd = ops->event_fd(t), .events = POLLIN};

		poll(&pfd, 1, 100);
	}
	assert_int_equal(done, total);
	assert_true(total > 0);
	assert_int_equal(ops->recover(t, collect, s), 30);
	ops->stats(t, &st);
	assert_int_equal(st.recovered, 30);
	assert_int_equal(put_rec(t, 99, 1, 5000, &l), KVT_RECORD_HDR_SIZE + 5000);
	ops->close(t);
	free(s);
}

int main(int argc, char **argv)
{
	const char *e = getenv("KVT_SEED");
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_alloc_basic),
	    cmocka_unit_test(test_alloc_random),
	    cmocka_unit_test_teardown(test_roundtrip_uring, teardown),
	    cmocka_unit_test_teardown(test_killed_owner, teardown),
	    cmocka_unit_test_teardown(test_recover_large, teardown),
	    cmocka_unit_test_teardown(test_roundtrip_workers, teardown),
	    cmocka_unit_test_teardown(test_roundtrip_fsync, teardown),
	    cmocka_unit_test_teardown(test_batch_deep, teardown),
	    cmocka_unit_test_teardown(test_free_then_read_small_qd, teardown),
	    cmocka_unit_test_teardown(test_visibility, teardown),
	    cmocka_unit_test_teardown(test_newest_seq_wins, teardown),
	    cmocka_unit_test_teardown(test_free_is_final, teardown),
	    cmocka_unit_test_teardown(test_torn_and_corrupt, teardown),
	    cmocka_unit_test_teardown(test_corrupt_read_engines, teardown),
	    cmocka_unit_test_teardown(test_corrupt_read_pieces, teardown),
	    cmocka_unit_test_teardown(test_merged_reads, teardown),
	    cmocka_unit_test_teardown(test_merged_reads_past_depth, teardown),
	    cmocka_unit_test_teardown(test_embedded_record_rejected, teardown),
	    cmocka_unit_test_teardown(test_eio, teardown),
	    cmocka_unit_test_teardown(test_enospc, teardown),
	    cmocka_unit_test_teardown(test_fsync_error, teardown),
	    cmocka_unit_test_teardown(test_full_filesystem, teardown),
	    cmocka_unit_test_teardown(test_fallbacks, teardown),
	    cmocka_unit_test_teardown(test_multi_file, teardown),
	    cmocka_unit_test_teardown(test_slot_churn, teardown),
	    cmocka_unit_test_teardown(test_full_evict_one, teardown),
	    cmocka_unit_test_teardown(test_bad_input, teardown),
	    cmocka_unit_test_teardown(test_settle, teardown),
	    cmocka_unit_test_teardown(test_slot_file_safety, teardown),
	    cmocka_unit_test_teardown(test_bg_recover, teardown),
	};

	for (int i = 1; i + 1 < argc; i++)
		if (!strcmp(argv[i], "--seed"))
			e = argv[i + 1];
	seed = e ? (unsigned)strtoul(e, NULL, 0) : (unsigned)getpid();
	printf("# seed %u (KVT_SEED or --seed to replay)\n", seed);
	return cmocka_run_group_tests(tests, setup, teardown_all);
}
