/* SPDX-License-Identifier: MIT */
/*
 * Integration tests of libkvtier's client side against a real kvtierd: handles and lookups
 * across a daemon killed with SIGKILL and restarted, and the batched calls.
 *
 * usage: test_client KVTIERD KVTIERCTL [TEST...]
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define KVT_CHECK_FAIL goto out
#include "harness.h"
#include "kvtier.h"

static const char *kvtierd, *kvtierctl;
static char dir[256], sock[300];

/* Starts kvtierd on sock and returns its pid once a client can connect (-1 if it exits). */
static pid_t daemon_start(void)
{
	const char *argv[] = {
	    kvtierd, "-f", "-s", sock, "-o", "host.capacity=64MiB", "-o", "daemon.log_level=warn",
	    NULL};
	pid_t pid = fork();

	if (pid == 0) {
		execv(kvtierd, (char **)argv);
		_exit(127);
	}
	/* Ready is when a client gets in: after a SIGKILL the old socket file is still there
	 * until the new daemon replaces it.  Bounded only so that a hang fails the test. */
	for (int i = 0; i < 2000; i++) {
		struct kvt_connect_opts o = {.size = sizeof(o), .socket_path = sock};
		struct kvt_client *c;
		int ws;

		if (kvt_connect(&o, &c) == 0) {
			kvt_close(c);
			return pid;
		}
		if (waitpid(pid, &ws, WNOHANG) == pid)
			return -1;
		usleep(5000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

/* kill -9 and a new daemon in its place. */
static pid_t daemon_crash_restart(pid_t pid)
{
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return daemon_start();
}

static struct kvt_layout small_layout(void)
{
	/* 4 layers x 2 heads x 16 tokens x 128 dims x K,V x fp16 = 64 KiB blocks */
	struct kvt_layout l = {.size = sizeof(l),
			       .n_layers = 4,
			       .n_kv_heads = 2,
			       .head_dim = 128,
			       .block_tokens = 16,
			       .dtype = KVT_DTYPE_FP16,
			       .world = 1,
			       .model_id = "test-client"};
	return l;
}

static struct kvt_key key(uint64_t i)
{
	return (struct kvt_key){.lo = i * 0x9e3779b97f4a7c15ull + 7, .hi = 0xc11e47 + i};
}

static long long status_metric(const char *name)
{
	return kvt_test_ctl_num(kvtierctl, sock, "status", NULL, name);
}

static struct kvt_client *client(int *lay)
{
	struct kvt_layout l = small_layout();
	struct kvt_client *c = kvt_test_connect(sock, "test-client", 5000);

	*lay = c ? kvt_register_layout(c, &l) : -1;
	if (c && *lay < 0) {
		kvt_close(c);
		c = NULL;
	}
	return c;
}

/*
 * Issue 11.1: a reservation and a lease of a daemon that died must not act on its
 * successor, whose holds are numbered from scratch: the first hold of a fresh connection
 * gets the same handle on every daemon.
 */
/* The daemon is SIGKILLed while a lease is held, and the client has made no call since:
 * the release must still say the lease is void (-KVT_EDAEMON), not succeed on a ring that
 * nobody reads; and so must a release while no daemon runs at all.  (Found by
 * integration_crash_model: release is fire-and-forget, so it did not notice the hang-up.) */
static void test_release_after_crash(void)
{
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	uint8_t *a = malloc(bb);
	struct kvt_client *c = NULL;
	struct kvt_lease l1, l2;
	int lay;
	pid_t pid = daemon_start();

	CHECK(pid > 0 && a);
	c = client(&lay);
	CHECK(c);
	kvt_test_fill(a, bb, 21);
	CHECK_EQ(kvt_put(c, lay, &(struct kvt_key){21, 21}, a, bb), 0);
	CHECK_EQ(kvt_get_lease(c, lay, &(struct kvt_key){21, 21}, &l1), 0);
	pid = daemon_crash_restart(pid);
	CHECK(pid > 0);
	CHECK_EQ(kvt_lease_release(c, &l1), -KVT_EDAEMON);
	/* The client goes on with the new daemon. */
	CHECK_EQ(kvt_put(c, lay, &(struct kvt_key){22, 22}, a, bb), 0);
	CHECK_EQ(kvt_get_lease(c, lay, &(struct kvt_key){22, 22}, &l2), 0);
	CHECK_EQ(kill(pid, SIGKILL), 0);
	CHECK_EQ(waitpid(pid, NULL, 0), pid);
	pid = -1;
	CHECK_EQ(kvt_lease_release(c, &l2), -KVT_EDAEMON);
out:
	kvt_close(c);
	free(a);
	if (pid > 0)
		kvt_test_daemon_stop(pid);
}

static void test_restart_holds(void)
{
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	uint8_t *a = malloc(bb), *b = malloc(bb);
	struct kvt_client *c = NULL, *other = NULL, *reader = NULL;
	struct kvt_reservation ra, rb;
	struct kvt_lease l1, l2;
	int lay, olay, rlay;
	pid_t pid = daemon_start();

	CHECK(pid > 0 && a && b);
	c = client(&lay);
	CHECK(c);
	/* Reserve A and fill it; the daemon dies; reserve B on its successor; commit A. */
	CHECK_EQ(kvt_put_reserve(c, lay, &(struct kvt_key){1, 1}, bb, &ra), 0);
	kvt_test_fill(ra.data, bb, 1);
	pid = daemon_crash_restart(pid);
	CHECK(pid > 0);
	CHECK_EQ(kvt_put_reserve(c, lay, &(struct kvt_key){2, 2}, bb, &rb), 0);
	kvt_test_fill(rb.data, bb, 2);
	CHECK_EQ(kvt_put_commit(c, &ra), -KVT_EDAEMON);
	CHECK_EQ(kvt_put_commit(c, &rb), 0);
	CHECK_EQ(kvt_get(c, lay, &(struct kvt_key){2, 2}, a, bb), (ssize_t)bb);
	kvt_test_fill(b, bb, 2);
	CHECK(memcmp(a, b, bb) == 0);
	CHECK_EQ(kvt_get(c, lay, &(struct kvt_key){1, 1}, a, bb), -ENOENT);
	/* An old reservation can't be aborted onto a new one either. */
	CHECK_EQ(kvt_put_reserve(c, lay, &(struct kvt_key){3, 3}, bb, &ra), 0);
	pid = daemon_crash_restart(pid);
	CHECK(pid > 0);
	CHECK_EQ(kvt_put_reserve(c, lay, &(struct kvt_key){4, 4}, bb, &rb), 0);
	CHECK_EQ(kvt_put_abort(c, &ra), -KVT_EDAEMON);
	kvt_test_fill(rb.data, bb, 4);
	CHECK_EQ(kvt_put_commit(c, &rb), 0);
	CHECK_EQ(kvt_lookup(c, lay, &(struct kvt_key){4, 4}, 1), 1);

	/* A lease of the old daemon: releasing it must not drop a new lease of the reader. */
	other = client(&olay);
	reader = client(&rlay);
	CHECK(other && reader);
	kvt_test_fill(a, bb, 10);
	CHECK_EQ(kvt_put(other, olay, &(struct kvt_key){10, 10}, a, bb), 0);
	CHECK_EQ(kvt_get_lease(reader, rlay, &(struct kvt_key){10, 10}, &l1), 0);
	pid = daemon_crash_restart(pid);
	CHECK(pid > 0);
	kvt_close(other);
	other = client(&olay);
	CHECK(other);
	kvt_test_fill(a, bb, 11);
	CHECK_EQ(kvt_put(other, olay, &(struct kvt_key){11, 11}, a, bb), 0);
	CHECK_EQ(kvt_get_lease(reader, rlay, &(struct kvt_key){11, 11}, &l2), 0);
	CHECK_EQ(kvt_lease_release(reader, &l1), -KVT_EDAEMON);
	/* A request after the release: the ring keeps order, so it would have been seen. */
	CHECK_EQ(kvt_lookup(reader, rlay, &(struct kvt_key){11, 11}, 1), 1);
	CHECK_EQ(status_metric("leases"), 1);
	/* The new lease still holds its block: a delete only hides it. */
	CHECK_EQ(kvt_delete(other, olay, &(struct kvt_key){11, 11}), 0);
	kvt_test_fill(b, bb, 12);
	CHECK_EQ(kvt_put(other, olay, &(struct kvt_key){11, 11}, b, bb), 0);
	CHECK(memcmp(l2.data, a, bb) == 0);
	CHECK_EQ(kvt_lease_release(reader, &l2), 0);
	CHECK_EQ(kvt_lookup(reader, rlay, &(struct kvt_key){11, 11}, 1), 1);
	CHECK_EQ(status_metric("leases"), 0);
out:
	kvt_close(reader);
	kvt_close(other);
	kvt_close(c);
	if (pid > 0)
		kvt_test_daemon_stop(pid);
	free(a);
	free(b);
}

/*
 * Issue 11.3: kvt_lookup right after a restart.  The keys must go into the ring the request
 * is sent on, and a lookup that finds the daemon gone is asked once more.
 */
static void test_restart_lookup(void)
{
	enum { N = 8 };
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	uint8_t *a = calloc(1, bb);
	struct kvt_key keys[N], absent[N];
	struct kvt_client *c = NULL, *w = NULL;
	int lay, wlay;
	pid_t pid = daemon_start();

	CHECK(pid > 0 && a);
	for (int i = 0; i < N; i++) {
		keys[i] = key((uint64_t)i + 100);
		absent[i] = key((uint64_t)i + 200);
	}
	c = client(&lay);
	CHECK(c);
	/* The first call after a restart: the documented single retry. */
	pid = daemon_crash_restart(pid);
	CHECK(pid > 0);
	w = client(&wlay);
	CHECK(w);
	for (int i = 0; i < N; i++)
		CHECK_EQ(kvt_put(w, wlay, &keys[i], a, bb), 0);
	CHECK_EQ(kvt_lookup(c, lay, keys, N), N);
	CHECK_EQ(kvt_lookup(c, lay, absent, N), 0);

	/* The call after one that found the daemon gone (a delete is not retried). */
	pid = daemon_crash_restart(pid);
	CHECK(pid > 0);
	kvt_close(w);
	w = client(&wlay);
	CHECK(w);
	for (int i = 0; i < N; i++)
		CHECK_EQ(kvt_put(w, wlay, &keys[i], a, bb), 0);
	CHECK_EQ(kvt_delete(c, lay, &absent[0]), -KVT_EDAEMON);
	CHECK_EQ(kvt_lookup(c, lay, keys, N), N);

	/* Absent keys while key {0,0} is stored: a lookup of zeroed scratch would say N. */
	pid = daemon_crash_restart(pid);
	CHECK(pid > 0);
	kvt_close(w);
	w = client(&wlay);
	CHECK(w);
	CHECK_EQ(kvt_put(w, wlay, &(struct kvt_key){0, 0}, a, bb), 0);
	CHECK_EQ(kvt_delete(c, lay, &absent[0]), -KVT_EDAEMON);
	CHECK_EQ(kvt_lookup(c, lay, absent, N), 0);
	CHECK_EQ(kvt_lookup(c, lay, &(struct kvt_key){0, 0}, 1), 1);
out:
	kvt_close(w);
	kvt_close(c);
	if (pid > 0)
		kvt_test_daemon_stop(pid);
	free(a);
}

/*
 * Batches: mixed hits and misses, duplicates, per-block errors, more entries than the ring
 * holds, and the same results as the one-block calls.
 */
static void test_batch(void)
{
	enum { N = 600 }; /* more than the 256 ring entries */
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	uint8_t *src = malloc(N * bb), *dst = malloc(N * bb), *one = malloc(bb);
	const void **dp = malloc(N * sizeof(*dp));
	void **bp = malloc(N * sizeof(*bp));
	struct kvt_key *keys = malloc(N * sizeof(*keys));
	int *st = malloc(N * sizeof(*st)), lay, n;
	uint8_t *present = malloc(N);
	struct kvt_lease *ls = calloc(N, sizeof(*ls));
	struct kvt_client *c = NULL;
	pid_t pid = daemon_start();

	CHECK(pid > 0 && src && dst && one && dp && bp && keys && st && present);
	c = client(&lay);
	CHECK(c);
	for (int i = 0; i < N; i++) {
		keys[i] = key((uint64_t)i);
		kvt_test_fill(src + (size_t)i * bb, bb, (uint64_t)i + 1000);
		dp[i] = src + (size_t)i * bb;
		bp[i] = dst + (size_t)i * bb;
	}
	/* Block 5 stored before; block 7 twice in the batch (the second is "already"). */
	CHECK_EQ(kvt_put(c, lay, &keys[5], src + 5 * bb, bb), 0);
	keys[8] = keys[7];
	dp[8] = dp[7];
	CHECK_EQ(kvt_put_batch(c, lay, keys, dp, NULL, bb, N, st), N);
	for (int i = 0; i < N; i++)
		CHECK_EQ(st[i], i == 5 || i == 8 ? 1 : 0);
	CHECK_EQ(kvt_put_batch(c, lay, keys, dp, NULL, bb, 3, NULL), 3);
	/* Lookups: every key on its own, misses in between. */
	struct kvt_key mixed[6] = {keys[0], key(99999), keys[1], keys[7], key(99998), keys[8]};
	CHECK_EQ(kvt_lookup_batch(c, lay, mixed, 6, present), 4);
	CHECK(present[0] && !present[1] && present[2] && present[3] && !present[4] && present[5]);
	CHECK_EQ(kvt_lookup_batch(c, lay, keys, N, present), N);
	for (int i = 0; i < N; i++)
		CHECK_EQ(present[i], 1);
	/* Gets: every block back bit-exact, misses reported per block. */
	memset(dst, 0, N * bb);
	keys[8] = key(8); /* never stored */
	CHECK_EQ(kvt_get_batch(c, lay, keys, bp, bb, N, st), N - 1);
	for (int i = 0; i < N; i++) {
		if (i == 8) {
			CHECK_EQ(st[i], -ENOENT);
			continue;
		}
		CHECK_EQ(st[i], (int)bb);
		CHECK(memcmp(dst + (size_t)i * bb, src + (size_t)i * bb, bb) == 0);
	}
	/* Leases for one round trip (of 100 blocks: the test daemon's host.tenant_hold_max
	 * is less than all): each block in place and bit-exact, a miss on its own (no lease),
	 * each held until given back. */
	CHECK(ls);
	CHECK_EQ(kvt_get_lease_batch(c, lay, keys, ls, 100, st), 99);
	CHECK_EQ(status_metric("leases"), 99);
	for (int i = 0; i < 100; i++) {
		if (i == 8) {
			CHECK(st[i] == -ENOENT && ls[i].data == NULL);
			continue;
		}
		CHECK_EQ(st[i], 0);
		CHECK(ls[i].data && ls[i].len == bb && ls[i].raw_len == bb && ls[i].chain_id == 0);
		CHECK(ls[i].data && memcmp(ls[i].data, src + (size_t)i * bb, bb) == 0);
	}
	for (int i = 0; i < 100; i++) {
		if (ls[i].data)
			CHECK_EQ(kvt_lease_release(c, &ls[i]), 0);
	}
	CHECK_EQ(kvt_get_lease_batch(c, lay + 1, keys, ls, 2, st), -KVT_ENOLAYOUT);
	CHECK_EQ(kvt_get_lease_batch(c, lay, keys, NULL, 2, st), -EINVAL);
	/* The same key twice in one get batch, and a buffer too small: -ENOBUFS, nothing
	 * copied, the other blocks served. */
	struct kvt_key two[3] = {keys[3], keys[3], keys[4]};
	memset(dst, 0xee, 3 * bb);
	CHECK_EQ(kvt_get_batch(c, lay, two, bp, bb, 3, st), 3);
	CHECK(!memcmp(dst, src + 3 * bb, bb) && !memcmp(dst + bb, src + 3 * bb, bb));
	memset(dst, 0xee, 3 * bb);
	CHECK_EQ(kvt_get_batch(c, lay, two, bp, bb - 1, 3, st), 0);
	CHECK(st[0] == -ENOBUFS && st[1] == -ENOBUFS && st[2] == -ENOBUFS);
	for (size_t i = 0; i < 3 * bb; i++)
		CHECK(dst[i] == 0xee);
	/* A partial block (shorter than the layout's) comes back with its own length. */
	struct kvt_key pk = key(5000);
	const void *pd = src;
	CHECK_EQ(kvt_put_batch(c, lay, &pk, &pd, NULL, bb / 2, 1, st), 1);
	CHECK_EQ(kvt_get_batch(c, lay, &pk, bp, bb, 1, st), 1);
	CHECK_EQ(st[0], (int)(bb / 2));
	/* Refused as a whole: a block longer than the layout's, a bad layout, NULL data. */
	CHECK_EQ(kvt_put_batch(c, lay, keys, dp, NULL, bb + 1, 2, st), -EINVAL);
	CHECK_EQ(kvt_put_batch(c, lay, keys, dp, NULL, 0, 2, st), -EINVAL);
	CHECK_EQ(kvt_put_batch(c, lay + 1, keys, dp, NULL, bb, 2, st), -KVT_ENOLAYOUT);
	CHECK_EQ(kvt_get_batch(c, lay, keys, NULL, bb, 2, st), -EINVAL);
	CHECK_EQ(kvt_lookup_batch(c, lay, keys, 0, present), 0);
	/* No lease or reservation left behind (the releases travel without completions). */
	CHECK_EQ(kvt_lookup(c, lay, keys, 1), 1);
	CHECK_EQ(status_metric("leases"), 0);
	CHECK_EQ(status_metric("reservations"), 0);
	/* The single calls agree with the batch. */
	n = (int)kvt_get(c, lay, &keys[9], one, bb);
	CHECK_EQ(n, (int)bb);
	CHECK(!memcmp(one, src + 9 * bb, bb));
	/* A batch after a restart reconnects first instead of failing. */
	pid = daemon_crash_restart(pid);
	CHECK(pid > 0);
	CHECK_EQ(kvt_put_batch(c, lay, keys, dp, NULL, bb, 4, st), 4);
	CHECK_EQ(kvt_get_batch(c, lay, keys, bp, bb, 4, st), 4);
	CHECK_EQ(kvt_lookup_batch(c, lay, keys, 4, present), 4);
	/* So do a get batch, a lease batch and a batch too large for the stack as the first
	 * call after a restart (they learn of it from a batch nothing of which came back):
	 * the blocks died with the host tier, so each entry is a miss, not a lost daemon. */
	pid = daemon_crash_restart(pid);
	CHECK(pid > 0);
	CHECK_EQ(kvt_get_batch(c, lay, keys, bp, bb, 4, st), 0);
	for (int i = 0; i < 4; i++)
		CHECK_EQ(st[i], -ENOENT);
	pid = daemon_crash_restart(pid);
	CHECK(pid > 0);
	CHECK_EQ(kvt_get_lease_batch(c, lay, keys, ls, 4, st), 0);
	for (int i = 0; i < 4; i++)
		CHECK_EQ(st[i], -ENOENT);
	pid = daemon_crash_restart(pid);
	CHECK(pid > 0);
	CHECK_EQ(kvt_put_batch(c, lay, keys, dp, NULL, bb, N, st), N);
	CHECK_EQ(kvt_get_batch(c, lay, keys, bp, bb, N, st), N);
	CHECK(!memcmp(dst + 9 * bb, src + 9 * bb, bb));
	CHECK(!memcmp(dst + (N - 1) * bb, src + (N - 1) * bb, bb));
out:
	kvt_close(c);
	if (pid > 0)
		kvt_test_daemon_stop(pid);
	free(src);
	free(dst);
	free(one);
	free(ls);
	free(dp);
	free(bp);
	free(keys);
	free(st);
	free(present);
}

/* KVT_CONNECT_CHECK_UID: a daemon of our own uid is accepted whatever daemon_uid says;
 * unknown flags are refused. */
static void test_peer_uid(void)
{
	struct kvt_client *c = NULL;
	pid_t pid = daemon_start();

	CHECK(pid > 0);
	struct kvt_connect_opts o = {.size = sizeof(o),
				     .socket_path = sock,
				     .flags = KVT_CONNECT_CHECK_UID,
				     .daemon_uid = 4242};
	CHECK_EQ(kvt_connect(&o, &c), 0);
	kvt_close(c);
	c = NULL;
	o.flags = 0x80;
	CHECK_EQ(kvt_connect(&o, &c), -EINVAL);
	CHECK(!c);
out:
	if (pid > 0)
		kvt_test_daemon_stop(pid);
}

/* The usage sketch of kvtier.h (header_sketch.c, compiled with kvtier.h alone) runs. */
int kvt_test_sketch(const char *socket, const uint32_t *tokens, size_t n_tokens);

static void test_header_sketch(void)
{
	uint32_t tok[40];
	pid_t pid = daemon_start();

	CHECK(pid > 0);
	for (int i = 0; i < 40; i++)
		tok[i] = (uint32_t)i * 7 + 1;
	CHECK_EQ(kvt_test_sketch(sock, tok, 40), 2);
out:
	if (pid > 0)
		kvt_test_daemon_stop(pid);
}

static const struct kvt_test_case tests[] = {
    {"header_sketch", test_header_sketch},
    {"restart_holds", test_restart_holds},
    {"release_after_crash", test_release_after_crash},
    {"restart_lookup", test_restart_lookup},
    {"batch", test_batch},
    {"peer_uid", test_peer_uid},
};

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s KVTIERD KVTIERCTL [TEST...]\n", argv[0]);
		return 2;
	}
	kvtierd = argv[1];
	kvtierctl = argv[2];
	signal(SIGPIPE, SIG_IGN);
	snprintf(dir, sizeof(dir), "/tmp/kvt-client-XXXXXX");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(sock, sizeof(sock), "%s/kvtier.sock", dir);
	return kvt_test_finish(dir, kvt_test_run_cases(tests, sizeof(tests) / sizeof(tests[0]),
						       argv + 3, argc - 3, NULL, NULL));
}
