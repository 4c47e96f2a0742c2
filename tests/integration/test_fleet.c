/* SPDX-License-Identifier: MIT */
/*
 * test_fleet - two kvtierd as two hosts of a fleet sharing a remote tier (issue 14): a real
 * 6-node Redis Cluster on loopback (redis_harness.c) and two daemons with their own sockets
 * and host tiers, both with remote.nodes set.  One scenario per run:
 *
 *   test_fleet KVTIERD KVTIERCTL fleet    a prompt's blocks put through host A are served
 *                                         bit-exact through host B (lookup: all of them;
 *                                         gets: the same bytes), then from B's host tier
 *   test_fleet KVTIERD KVTIERCTL corrupt  a value overwritten with a redis client (one byte
 *                                         of its payload flipped) is a miss on B, never served
 *   test_fleet KVTIERD KVTIERCTL down     every cluster node killed: B's lookups and gets of
 *                                         A's blocks are misses, each within its deadline
 *   test_fleet KVTIERD KVTIERCTL failover a master SIGKILLed after A's blocks replicated:
 *                                         B's gets are exact or misses while it fails over,
 *                                         and every block is served within 5 s of the
 *                                         cluster's recovery
 *   test_fleet KVTIERD KVTIERCTL delete   a block written behind to the cluster, deleted on
 *                                         host A: A's get is a miss at once (never fetched
 *                                         back), B's once A's DEL is acknowledged; a delete
 *                                         on B of a block only remote there removes it too;
 *                                         a re-put with other bytes is what B serves
 *   test_fleet KVTIERD KVTIERCTL delete_down  the same delete while every node is stopped:
 *                                         the DEL fails, A still never serves the key (it
 *                                         stays fenced after the cluster is back), while B,
 *                                         told nothing, is served the copy (put back as
 *                                         if the DEL had missed it)
 *   test_fleet KVTIERD KVTIERCTL stop     the master holding most of A's blocks SIGSTOPped
 *                                         while B serves them: misses, each call within its
 *                                         deadline; every block served within 5 s of SIGCONT
 *   test_fleet KVTIERD KVTIERCTL reshard  redis-cli --cluster reshard moves 2000 slots of
 *                                         a master while A writes and B gets (each new block
 *                                         through a lookup, then a remote get): no wrong
 *                                         block, none late; after it, every block served
 *   test_fleet KVTIERD KVTIERCTL auth     one plain Redis with a password: hosts with
 *                                         remote.auth_file share blocks; a host without it
 *                                         misses, never fails
 *   test_fleet KVTIERD KVTIERCTL queue    (no cluster) a node that accepts connections and
 *                                         never answers: puts are not held up, the write-behind
 *                                         queue keeps remote.queue_max blocks and drops the rest,
 *                                         counted; lookups of the rest are misses
 *   test_fleet KVTIERD KVTIERCTL demo     the fleet scenario, saying what it does
 *   test_fleet KVTIERD KVTIERCTL latency  (a measurement, not a ctest) lookups of a 64-block
 *                                         prefix through host B with every block remote,
 *                                         beside the same lookups answered locally by host A:
 *                                         p50 and p99 of each
 *
 * The demotion is asynchronous: the tests poll B's lookup (an event: the blocks became
 * visible), bounded, never sleep a fixed time.  Exit 77 without redis-server.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "kvtier.h"
#include "redis_harness.h"

#define NBLK	     16
#define VISIBLE_MS   20000 /* bound on write-behind reaching the cluster (a 2-core CI) */
#define GET_US	     50000 /* remote.get_timeout_us in host_start() */
#define LOOKUP_US    2000  /* remote.lookup_timeout_us in host_start() */
#define ALLOWANCE_MS 400
#define RECOVERY_MS  5000 /* service back after the cluster recovered (issue 14) */
#define FAULT_MAX_MS                                                                               \
	30000 /* bound on the cluster's own failover */ /* scheduling on a shared 2-core machine,  \
							   over a deadline */

static const char *kvtierd, *kvtierctl;
static char dir[] = "/tmp/kvt-fleet-XXXXXX";
static char sock[2][300], logp[2][300];
static pid_t dpid[2];
static struct rh_cluster cl;
static bool verbose;

static void say(const char *fmt, ...)
{
	va_list ap;

	if (!verbose)
		return;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fflush(stdout);
}

static void log_setup(void *arg)
{
	kvt_test_stderr_to(arg);
}

/* Host h (0 = A, 1 = B): kvtierd on its own socket and arena, the cluster as its remote. */
/* Host h (0 = A, 1 = B): kvtierd on its own socket and arena, the cluster (or seeds) as its
 * remote, and more "-o" options from extra (NULL-terminated, 8 at most). */
static pid_t host_startx(int h, const char *codec, const char *seeds, const char *const *extra)
{
	char nodes[300], codec_opt[64];
	const char *argv[40] = {
	    kvtierd, "-f",
	    "-s",    sock[h],
	    "-o",    "host.capacity=64MiB",
	    "-o",    "daemon.log_level=warn",
	    "-o",    "daemon.tenant_salt=5eed5eed", /* the fleet's: keys match */
	    "-o",    nodes,
	    "-o",    codec_opt,
	    "-o",    "remote.lookup_timeout_us=2000",
	    "-o",    "remote.get_timeout_us=50000"};
	size_t k = 18;

	for (; extra && *extra && k < 34; extra++) {
		argv[k++] = "-o";
		argv[k++] = *extra;
	}
	argv[k] = NULL;
	snprintf(nodes, sizeof(nodes), "remote.nodes=%s", seeds ? seeds : cl.seeds);
	snprintf(codec_opt, sizeof(codec_opt), "remote.codec=%s", codec);
	unlink(sock[h]);
	dpid[h] = kvt_test_daemon_start(argv, log_setup, logp[h]);
	if (dpid[h] < 0)
		dpid[h] = 0;
	return dpid[h];
}

static pid_t host_start(int h, const char *codec)
{
	return host_startx(h, codec, NULL, NULL);
}

/* Both daemons stopped by SIGTERM must exit 0 (a sanitizer's report makes it fail). */
static void hosts_stop(void)
{
	for (int h = 0; h < 2; h++) {
		int st = dpid[h] > 0 ? kvt_test_daemon_stop(dpid[h]) : 0;

		dpid[h] = 0;
		if (st != 0) {
			fprintf(stderr, "host %c: kvtierd exited with status %d\n", 'A' + h, st);
			kvt_test_failures++;
		}
	}
}

static void dump_logs(void)
{
	for (int h = 0; h < 2; h++) {
		char *out;
		int rc;

		out = kvt_test_sh(&rc, "cat %s 2>/dev/null", logp[h]);
		if (out && *out)
			fprintf(stderr, "--- host %c log:\n%s", 'A' + h, out);
		free(out);
	}
}

static uint64_t now_ms(void)
{
	return rh_now_ms();
}

static const struct kvt_layout layout = {.size = sizeof(struct kvt_layout),
					 .n_layers = 2,
					 .n_kv_heads = 2,
					 .head_dim = 64,
					 .block_tokens = 16,
					 .dtype = KVT_DTYPE_FP16,
					 .kv_order = KVT_ORDER_K_THEN_V,
					 .world = 1,
					 .model_id = "fleet-test"};

struct host {
	struct kvt_client *c;
	int lay;
	size_t bb;
};

static int host_open(struct host *x, int h)
{
	x->c = kvt_test_connect(sock[h], h ? "host-B" : "host-A", 5000);
	if (!x->c)
		return -1;
	x->lay = kvt_register_layout(x->c, &layout);
	x->bb = kvt_layout_block_bytes(&layout);
	return x->lay < 0 ? -1 : 0;
}

static long long status_num(int h, const char *name)
{
	return kvt_test_ctl_num(kvtierctl, sock[h], "status", "\"metrics\"", name);
}

/* Puts the prompt's NBLK blocks through host A. */
static int put_prompt(struct host *a, const struct kvt_key *keys, uint64_t tag)
{
	uint8_t *buf = malloc(a->bb);

	for (int i = 0; i < NBLK; i++) {
		kvt_test_fill(buf, a->bb, tag + (uint64_t)i);
		if (kvt_put(a->c, a->lay, &keys[i], buf, a->bb) != 0) {
			free(buf);
			return -1;
		}
	}
	free(buf);
	return 0;
}

/* Polls B's lookup until it finds want blocks (the write-behind reached the cluster). */
static int wait_visible(struct host *b, const struct kvt_key *keys, int want)
{
	uint64_t t0 = now_ms();
	int got;

	while ((got = kvt_lookup(b->c, b->lay, keys, NBLK)) < want && now_ms() - t0 < VISIBLE_MS)
		;
	return got;
}

static int cluster_up(void)
{
	if (!rh_available()) {
		printf("redis-server not installed: skipped\n");
		exit(77);
	}
	return rh_start(&cl, 6, true, NULL);
}

static void test_fleet_case(const char *codec)
{
	struct host a = {0}, b = {0};
	struct kvt_key keys[NBLK];
	uint8_t *want = NULL, *got = NULL;
	int n;

	say("starting two kvtierd (host A: %s, host B: %s), remote.nodes = %s, remote.codec = "
	    "%s\n",
	    sock[0], sock[1], cl.seeds, codec);
	CHECK(host_start(0, codec) > 0);
	CHECK(host_start(1, codec) > 0);
	CHECK(host_open(&a, 0) == 0);
	CHECK(host_open(&b, 1) == 0);
	kvt_test_make_keys(&layout, 42, keys, NBLK);
	CHECK_EQ(kvt_lookup(b.c, b.lay, keys, NBLK), 0);
	say("host B before: lookup of the %d-block prompt finds 0 blocks\n", NBLK);
	CHECK(put_prompt(&a, keys, 1000) == 0);
	say("host A: put %d blocks of %zu bytes (committed to its host tier, written behind to "
	    "the cluster)\n",
	    NBLK, a.bb);
	n = wait_visible(&b, keys, NBLK);
	say("host B: lookup finds %d of %d blocks\n", n, NBLK);
	CHECK_EQ(n, NBLK);
	want = malloc(a.bb);
	got = malloc(a.bb);
	for (int i = 0; i < NBLK; i++) {
		kvt_test_fill(want, a.bb, 1000 + (uint64_t)i);
		memset(got, 0, a.bb);
		CHECK_EQ(kvt_get(b.c, b.lay, &keys[i], got, a.bb), (long long)a.bb);
		CHECK(memcmp(got, want, a.bb) == 0);
	}
	say("host B: got all %d blocks, bit-exact (fetched from the cluster, checked, decoded, "
	    "installed in B's host tier)\n",
	    NBLK);
	CHECK_EQ(status_num(1, "remote_hits_total"), NBLK);
	CHECK_EQ(status_num(1, "remote_corrupt_total"), 0);
	/* Now local on B: served from its host tier without asking the cluster again. */
	CHECK_EQ(kvt_lookup(b.c, b.lay, keys, NBLK), NBLK);
	for (int i = 0; i < NBLK; i++)
		CHECK_EQ(kvt_get(b.c, b.lay, &keys[i], got, a.bb), (long long)a.bb);
	CHECK_EQ(status_num(1, "remote_gets_total"), NBLK);
	say("host B: the same prompt again is served from its host tier (remote gets still "
	    "%d)\n",
	    NBLK);
	if (verbose) {
		int rc;
		char *t = kvt_test_ctl(&rc, kvtierctl, sock[1], "tiers");

		printf("kvtierctl tiers on host B:\n%s", t ? t : "");
		free(t);
	}
	free(want);
	free(got);
	kvt_close(a.c);
	kvt_close(b.c);
}

static void test_fleet(void)
{
	test_fleet_case("fpx");
}

/* The one kvt:* key of the cluster (after one put): its master's port, its name. */
static int find_key(char *name, size_t n)
{
	for (unsigned s = 0; s < cl.n; s++) {
		redisReply *r = rh_cmd(cl.port[s], "KEYS kvt:*");
		bool found = false;

		if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1 && rh_is_master(&cl, s)) {
			snprintf(name, n, "%s", r->element[0]->str);
			found = true;
		}
		if (r)
			freeReplyObject(r);
		if (found)
			return cl.port[s];
	}
	return -1;
}

static void test_corrupt(void)
{
	struct host a = {0}, b = {0};
	struct kvt_key keys[NBLK];
	uint8_t *buf = NULL;
	char name[128];
	redisReply *r;
	int port;

	CHECK(host_start(0, "raw") > 0);
	CHECK(host_start(1, "raw") > 0);
	CHECK(host_open(&a, 0) == 0);
	CHECK(host_open(&b, 1) == 0);
	kvt_test_make_keys(&layout, 7, keys, NBLK);
	buf = malloc(a.bb);
	kvt_test_fill(buf, a.bb, 77);
	CHECK_EQ(kvt_put(a.c, a.lay, &keys[0], buf, a.bb), 0);
	CHECK_EQ(wait_visible(&b, keys, 1), 1);
	port = find_key(name, sizeof(name));
	CHECK(port > 0);
	/* One payload byte flipped in place (the record header is 64 bytes). */
	r = rh_cmd(port, "GET %s", name);
	CHECK(r && r->type == REDIS_REPLY_STRING && r->len > 100);
	r->str[100] ^= 0x40;
	{
		const char *argv[] = {"SET", name, r->str};
		size_t len[] = {3, strlen(name), r->len};
		redisReply *w = rh_cmdargv(port, 3, argv, len);

		CHECK(w && w->type == REDIS_REPLY_STATUS);
		freeReplyObject(w);
	}
	freeReplyObject(r);
	/* EXISTS does not read the value: the lookup finds it, the get must not serve it.  A
	 * get that ran out of its deadline on a loaded machine is a miss too, without having
	 * read the value: asked again (bounded) until one read and refused it. */
	for (int tries = 0; tries < 50 && status_num(1, "remote_corrupt_total") == 0; tries++)
		CHECK_EQ(kvt_get(b.c, b.lay, &keys[0], buf, a.bb), -ENOENT);
	CHECK(status_num(1, "remote_corrupt_total") >= 1);
	CHECK_EQ(status_num(1, "remote_hits_total"), 0);
	/* Host A still has its own copy: unaffected. */
	CHECK_EQ(kvt_get(a.c, a.lay, &keys[0], buf, a.bb), (long long)a.bb);
	free(buf);
	kvt_close(a.c);
	kvt_close(b.c);
}

static void test_down(void)
{
	struct host a = {0}, b = {0};
	struct kvt_key keys[NBLK];
	uint8_t *buf = NULL;
	uint64_t t0, dt, worst = 0;

	CHECK(host_start(0, "raw") > 0);
	CHECK(host_start(1, "raw") > 0);
	CHECK(host_open(&a, 0) == 0);
	CHECK(host_open(&b, 1) == 0);
	kvt_test_make_keys(&layout, 9, keys, NBLK);
	CHECK(put_prompt(&a, keys, 5000) == 0);
	CHECK_EQ(wait_visible(&b, keys, NBLK), NBLK);
	for (unsigned s = 0; s < cl.n; s++)
		rh_node_signal(&cl, s, SIGKILL);
	/* Every request of B now meets dead nodes, then open breakers: misses, each within
	 * its deadline (plus a scheduling allowance). */
	buf = malloc(a.bb);
	for (int round = 0; round < 4; round++) {
		t0 = now_ms();
		CHECK_EQ(kvt_lookup(b.c, b.lay, keys, NBLK), 0);
		dt = now_ms() - t0;
		worst = dt > worst ? dt : worst;
		CHECK(dt <= LOOKUP_US / 1000 + ALLOWANCE_MS);
		for (int i = 0; i < NBLK; i++) {
			t0 = now_ms();
			CHECK_EQ(kvt_get(b.c, b.lay, &keys[i], buf, a.bb), -ENOENT);
			dt = now_ms() - t0;
			worst = dt > worst ? dt : worst;
			CHECK(dt <= GET_US / 1000 + ALLOWANCE_MS);
		}
	}
	/* Host A serves its own blocks as before; a put there is not held up by the cluster. */
	CHECK_EQ(kvt_lookup(a.c, a.lay, keys, NBLK), NBLK);
	kvt_test_fill(buf, a.bb, 1);
	{
		struct kvt_key more[NBLK + 1];

		kvt_test_make_keys(&layout, 10, more, NBLK + 1);
		CHECK_EQ(kvt_put(a.c, a.lay, &more[NBLK], buf, a.bb), 0);
	}
	CHECK_EQ(status_num(1, "remote_hits_total"), 0);
	CHECK(status_num(1, "remote_misses_total") >= 4 * NBLK);
	printf("cluster down: every lookup and get of host B a miss, slowest %llu ms\n",
	       (unsigned long long)worst);
	free(buf);
	kvt_close(a.c);
	kvt_close(b.c);
}

/* Polls host h's acknowledged remote DELs until there are want. */
static long long wait_deletes(int h, long long want)
{
	uint64_t t0 = now_ms();
	long long n;

	while ((n = status_num(h, "remote_deletes_total")) < want && now_ms() - t0 < VISIBLE_MS)
		;
	return n;
}

static void test_delete(void)
{
	struct host a = {0}, b = {0};
	struct kvt_key keys[NBLK];
	uint8_t *buf = NULL, *want = NULL;
	char name[128];

	CHECK(host_start(0, "raw") > 0);
	CHECK(host_start(1, "raw") > 0);
	CHECK(host_open(&a, 0) == 0);
	CHECK(host_open(&b, 1) == 0);
	kvt_test_make_keys(&layout, 21, keys, NBLK);
	buf = malloc(a.bb);
	want = malloc(a.bb);
	kvt_test_fill(want, a.bb, 2100);
	CHECK_EQ(kvt_put(a.c, a.lay, &keys[0], want, a.bb), 0);
	CHECK_EQ(wait_visible(&b, keys, 1), 1); /* written behind: B's lookup sees it */
	CHECK(find_key(name, sizeof(name)) > 0);

	/* Deleted on A: never served again there, not even from the cluster. */
	CHECK_EQ(kvt_delete(a.c, a.lay, &keys[0]), 0);
	CHECK_EQ(kvt_get(a.c, a.lay, &keys[0], buf, a.bb), -ENOENT);
	CHECK_EQ(kvt_lookup(a.c, a.lay, keys, 1), 0);
	/* Once A's DEL is acknowledged, no host finds it. */
	CHECK_EQ(wait_deletes(0, 1), 1);
	CHECK_EQ(status_num(0, "remote_deleted_keys"), 0);
	CHECK_EQ(kvt_lookup(b.c, b.lay, keys, 1), 0);
	CHECK_EQ(kvt_get(b.c, b.lay, &keys[0], buf, b.bb), -ENOENT);
	CHECK_EQ(kvt_get(a.c, a.lay, &keys[0], buf, a.bb), -ENOENT);
	CHECK(find_key(name, sizeof(name)) < 0);
	CHECK_EQ(status_num(1, "remote_hits_total"), 0);

	/* Put again with other bytes: that is what B serves. */
	kvt_test_fill(want, a.bb, 2200);
	CHECK_EQ(kvt_put(a.c, a.lay, &keys[0], want, a.bb), 0);
	CHECK_EQ(wait_visible(&b, keys, 1), 1);
	CHECK_EQ(kvt_get(b.c, b.lay, &keys[0], buf, b.bb), (long long)b.bb);
	CHECK(memcmp(buf, want, b.bb) == 0);

	/* A delete on B of a key only the cluster holds for B: gone from the cluster too
	 * (A still has its own copy: a delete is one host's, the fleet has no delete). */
	kvt_test_fill(want, a.bb, 2300);
	CHECK_EQ(kvt_put(a.c, a.lay, &keys[1], want, a.bb), 0);
	CHECK_EQ(wait_visible(&b, keys, 2), 2);
	CHECK_EQ(kvt_delete(b.c, b.lay, &keys[1]), -ENOENT);
	CHECK_EQ(kvt_get(b.c, b.lay, &keys[1], buf, b.bb), -ENOENT);
	CHECK_EQ(wait_deletes(1, 1), 1);
	CHECK_EQ(kvt_get(b.c, b.lay, &keys[1], buf, b.bb), -ENOENT);
	CHECK_EQ(kvt_get(a.c, a.lay, &keys[1], buf, a.bb), (long long)a.bb);
	CHECK_EQ(status_num(0, "remote_delete_errors_total"), 0);
	CHECK_EQ(status_num(1, "remote_delete_errors_total"), 0);
	free(buf);
	free(want);
	kvt_close(a.c);
	kvt_close(b.c);
}

static void test_delete_down(void)
{
	static const char *const extra[] = {"remote.put_timeout_ms=200", NULL};
	struct host a = {0}, b = {0};
	struct kvt_key keys[NBLK];
	uint8_t *buf = NULL, *want = NULL;
	uint64_t t0;
	long long r;
	char name[128];
	redisReply *val;
	int port;

	CHECK(host_startx(0, "raw", NULL, extra) > 0);
	CHECK(host_start(1, "raw") > 0);
	CHECK(host_open(&a, 0) == 0);
	CHECK(host_open(&b, 1) == 0);
	kvt_test_make_keys(&layout, 23, keys, NBLK);
	buf = malloc(a.bb);
	want = malloc(a.bb);
	kvt_test_fill(want, a.bb, 2400);
	CHECK_EQ(kvt_put(a.c, a.lay, &keys[0], want, a.bb), 0);
	CHECK_EQ(wait_visible(&b, keys, 1), 1);
	CHECK(rh_wait_synced(&cl, 20000) == 0);
	port = find_key(name, sizeof(name));
	CHECK(port > 0);
	val = rh_cmd(port, "GET %s", name);
	CHECK(val && val->type == REDIS_REPLY_STRING);
	for (unsigned s = 0; s < cl.n; s++)
		rh_node_signal(&cl, s, SIGSTOP);
	CHECK_EQ(kvt_delete(a.c, a.lay, &keys[0]), 0);
	CHECK_EQ(kvt_get(a.c, a.lay, &keys[0], buf, a.bb), -ENOENT);
	/* The DEL fails (every node silent past remote.put_timeout_ms). */
	t0 = now_ms();
	while (status_num(0, "remote_delete_errors_total") < 1)
		CHECK(now_ms() - t0 < VISIBLE_MS);
	CHECK_EQ(status_num(0, "remote_deletes_total"), 0);
	for (unsigned s = 0; s < cl.n; s++)
		rh_node_signal(&cl, s, SIGCONT);
	CHECK(rh_wait_healthy(&cl, FAULT_MAX_MS) == 0);
	/* A DEL that timed out may still land when the node resumes: put the copy back as one
	 * that it missed would be (the key's master may have changed: ask its node). */
	{
		const char *argv[] = {"SET", name, val->str};
		size_t len[] = {3, strlen(name), val->len};
		redisReply *w = NULL;

		for (unsigned s = 0; s < cl.n && !(w && w->type == REDIS_REPLY_STATUS); s++) {
			if (w)
				freeReplyObject(w);
			w = rh_is_master(&cl, s) ? rh_cmdargv(cl.port[s], 3, argv, len) : NULL;
		}
		CHECK(w && w->type == REDIS_REPLY_STATUS);
		freeReplyObject(w);
	}
	freeReplyObject(val);
	/* B (told nothing) is served the copy once its breakers close... */
	t0 = now_ms();
	while ((r = kvt_get(b.c, b.lay, &keys[0], buf, b.bb)) == -ENOENT)
		CHECK(now_ms() - t0 <= RECOVERY_MS);
	CHECK_EQ(r, (long long)b.bb);
	CHECK(memcmp(buf, want, b.bb) == 0);
	/* ...but A, which deleted it, never: fenced until remote.ttl after the delete. */
	CHECK_EQ(kvt_get(a.c, a.lay, &keys[0], buf, a.bb), -ENOENT);
	CHECK_EQ(kvt_lookup(a.c, a.lay, keys, 1), 0);
	CHECK_EQ(status_num(0, "remote_deleted_keys"), 1);
	CHECK(status_num(0, "remote_fenced_total") >= 2);
	CHECK_EQ(status_num(0, "remote_hits_total"), 0);
	free(buf);
	free(want);
	kvt_close(a.c);
	kvt_close(b.c);
}

/* Gets through B of the blocks not served yet: each exact or a miss; how many are served. */
static int get_unserved(struct host *b, const struct kvt_key *keys, bool *served, uint8_t *buf,
			uint8_t *want, int *wrong)
{
	int n = 0;

	for (int i = 0; i < NBLK; i++) {
		ssize_t r;

		if (served[i]) {
			n++;
			continue;
		}
		r = kvt_get(b->c, b->lay, &keys[i], buf, b->bb);
		kvt_test_fill(want, b->bb, 3000 + (uint64_t)i);
		if (r == (ssize_t)b->bb && !memcmp(buf, want, b->bb)) {
			served[i] = true;
			n++;
		} else if (r != -ENOENT) {
			fprintf(stderr, "block %d: get returned %zd%s\n", i, r,
				r == (ssize_t)b->bb ? " with wrong bytes" : "");
			(*wrong)++;
		}
	}
	return n;
}

static void test_failover(void)
{
	struct host a = {0}, b = {0};
	struct kvt_key keys[NBLK];
	bool served[NBLK] = {0};
	uint8_t *buf = NULL, *want = NULL;
	int victim = -1, wrong = 0, during;
	uint64_t t0;

	CHECK(host_start(0, "raw") > 0);
	CHECK(host_start(1, "raw") > 0);
	CHECK(host_open(&a, 0) == 0);
	CHECK(host_open(&b, 1) == 0);
	kvt_test_make_keys(&layout, 13, keys, NBLK);
	CHECK(put_prompt(&a, keys, 3000) == 0);
	CHECK_EQ(wait_visible(&b, keys, NBLK), NBLK);
	CHECK(rh_wait_synced(&cl, 20000) == 0); /* the replicas have them: none is lost */
	for (unsigned s = 0; s < cl.n && victim < 0; s++) {
		if (rh_is_master(&cl, s))
			victim = (int)s;
	}
	CHECK(victim >= 0);
	rh_node_signal(&cl, (unsigned)victim, SIGKILL);
	buf = malloc(b.bb);
	want = malloc(b.bb);
	t0 = now_ms();
	do {
		during = get_unserved(&b, keys, served, buf, want, &wrong);
		CHECK(kvt_lookup(b.c, b.lay, keys, NBLK) >= 0);
		CHECK(now_ms() - t0 < FAULT_MAX_MS);
	} while (rh_wait_healthy(&cl, 0) != 0);
	printf("failover: cluster recovered after %llu ms; host B served %d of %d blocks "
	       "meanwhile\n",
	       (unsigned long long)(now_ms() - t0), during, NBLK);
	t0 = now_ms();
	while (get_unserved(&b, keys, served, buf, want, &wrong) < NBLK)
		CHECK(now_ms() - t0 <= RECOVERY_MS);
	printf("failover: every block served by host B %llu ms after the cluster recovered\n",
	       (unsigned long long)(now_ms() - t0));
	CHECK_EQ(wrong, 0);
	free(buf);
	free(want);
	kvt_close(a.c);
	kvt_close(b.c);
}

/* The master holding most kvt:* keys (its index), or -1. */
static int busiest_master(void)
{
	int best = -1;
	long long most = 0;

	for (unsigned s = 0; s < cl.n; s++) {
		redisReply *r = rh_cmd(cl.port[s], "DBSIZE");

		if (r && r->type == REDIS_REPLY_INTEGER && rh_is_master(&cl, s) &&
		    r->integer > most) {
			most = r->integer;
			best = (int)s;
		}
		if (r)
			freeReplyObject(r);
	}
	return best;
}

/* Gets through B of keys[0..n) not served yet (block i's bytes: tag + i): each exact or a
 * miss, within its deadline (else *over); how many are served. */
static int get_served(struct host *b, const struct kvt_key *keys, int n, uint64_t tag, bool *served,
		      int *wrong, int *over)
{
	uint8_t *buf = malloc(b->bb), *want = malloc(b->bb);
	int got = 0;

	for (int i = 0; i < n; i++) {
		uint64_t t0 = now_ms();
		ssize_t r;

		if (served[i]) {
			got++;
			continue;
		}
		r = kvt_get(b->c, b->lay, &keys[i], buf, b->bb);
		if (now_ms() - t0 > GET_US / 1000 + ALLOWANCE_MS)
			(*over)++;
		kvt_test_fill(want, b->bb, tag + (uint64_t)i);
		if (r == (ssize_t)b->bb && !memcmp(buf, want, b->bb)) {
			served[i] = true;
			got++;
		} else if (r != -ENOENT) {
			fprintf(stderr, "block %d: get returned %zd%s\n", i, r,
				r == (ssize_t)b->bb ? " with wrong bytes" : "");
			(*wrong)++;
		}
	}
	free(buf);
	free(want);
	return got;
}

static void test_stop(void)
{
	struct host a = {0}, b = {0};
	struct kvt_key keys[NBLK];
	bool served[NBLK] = {0};
	int victim, wrong = 0, over = 0, during = 0, rounds = 0;
	uint64_t t0;

	CHECK(host_start(0, "raw") > 0);
	CHECK(host_start(1, "raw") > 0);
	CHECK(host_open(&a, 0) == 0);
	CHECK(host_open(&b, 1) == 0);
	kvt_test_make_keys(&layout, 31, keys, NBLK);
	CHECK(put_prompt(&a, keys, 3000) == 0);
	CHECK_EQ(wait_visible(&b, keys, NBLK), NBLK);
	CHECK(rh_wait_synced(&cl, 20000) == 0);
	victim = busiest_master();
	CHECK(victim >= 0);
	rh_node_signal(&cl, (unsigned)victim, SIGSTOP);
	/* Stopped: its blocks are misses (B's gets meet a silent node, then an open breaker),
	 * the others are served; every call within its deadline.  Until B has missed. */
	t0 = now_ms();
	do {
		uint64_t t1 = now_ms();

		during = get_served(&b, keys, NBLK, 3000, served, &wrong, &over);
		CHECK(kvt_lookup(b.c, b.lay, keys, NBLK) >= 0);
		if (now_ms() - t1 > LOOKUP_US / 1000 + ALLOWANCE_MS + NBLK * (GET_US / 1000))
			over++;
		rounds++;
		CHECK(now_ms() - t0 < FAULT_MAX_MS);
	} while (rounds < 3 || status_num(1, "remote_misses_total") == 0);
	CHECK(during < NBLK); /* the stopped master's blocks were missed */
	printf("stop: master %d stopped; host B served %d of %d blocks in %d rounds (%lld "
	       "misses)\n",
	       victim, during, NBLK, rounds, status_num(1, "remote_misses_total"));
	rh_node_signal(&cl, (unsigned)victim, SIGCONT);
	t0 = now_ms();
	while (get_served(&b, keys, NBLK, 3000, served, &wrong, &over) < NBLK)
		CHECK(now_ms() - t0 <= RECOVERY_MS);
	printf("stop: every block served by host B %llu ms after SIGCONT\n",
	       (unsigned long long)(now_ms() - t0));
	CHECK_EQ(wrong, 0);
	CHECK_EQ(over, 0);
	CHECK(rh_wait_healthy(&cl, FAULT_MAX_MS) == 0);
	kvt_close(a.c);
	kvt_close(b.c);
}

#define NRESHARD 1536 /* 24 MiB on each host */

static void test_reshard(void)
{
	static const char *const extra[] = {"remote.queue_max=1024", NULL};
	struct host a = {0}, b = {0};
	struct kvt_key keys[NRESHARD];
	bool served[NRESHARD] = {0};
	char from[64], to[64], addr[32], log[320];
	int src, dst = -1, wrong = 0, over = 0, put = 64, status = 0, rounds = 0;
	long long moved = 0;
	uint8_t *buf;
	pid_t pid;
	uint64_t t0;

	CHECK(host_startx(0, "raw", NULL, extra) > 0);
	CHECK(host_start(1, "raw") > 0);
	CHECK(host_open(&a, 0) == 0);
	CHECK(host_open(&b, 1) == 0);
	kvt_test_make_keys(&layout, 37, keys, NRESHARD);
	buf = malloc(a.bb);
	for (int i = 0; i < put; i++) {
		kvt_test_fill(buf, a.bb, 9000 + (uint64_t)i);
		CHECK_EQ(kvt_put(a.c, a.lay, &keys[i], buf, a.bb), 0);
	}
	t0 = now_ms();
	while (kvt_lookup(b.c, b.lay, keys, put) < put && now_ms() - t0 < VISIBLE_MS)
		;
	src = busiest_master();
	for (unsigned s = 0; s < cl.n && dst < 0; s++) {
		if (rh_is_master(&cl, s) && (int)s != src)
			dst = (int)s;
	}
	CHECK(src >= 0 && dst >= 0);
	{
		redisReply *r = rh_cmd(cl.port[src], "CLUSTER MYID");
		redisReply *w = rh_cmd(cl.port[dst], "CLUSTER MYID");

		CHECK(r && r->type == REDIS_REPLY_STRING && w && w->type == REDIS_REPLY_STRING);
		snprintf(from, sizeof(from), "%s", r->str);
		snprintf(to, sizeof(to), "%s", w->str);
		freeReplyObject(r);
		freeReplyObject(w);
	}
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", cl.port[src]);
	snprintf(log, sizeof(log), "%s/reshard.log", dir);
	{
		/* 2000 of its slots (and their keys) to another master, a few keys per
		 * MIGRATE. */
		const char *argv[] = {"redis-cli",
				      "--cluster",
				      "reshard",
				      addr,
				      "--cluster-from",
				      from,
				      "--cluster-to",
				      to,
				      "--cluster-slots",
				      "2000",
				      "--cluster-yes",
				      "--cluster-pipeline",
				      "4",
				      NULL};

		pid = rh_spawn(argv, log);
		CHECK(pid > 0);
	}
	/* While slots move: A writes 8 more blocks (write-behind meets MOVED/ASK), B's
	 * lookup waits until they are visible and its gets fetch them (bounded). */
	for (t0 = now_ms();; rounds++) {
		int from_blk = put;

		CHECK(now_ms() - t0 < 120000);
		for (int i = put; i < put + 8 && i < NRESHARD; i++) {
			kvt_test_fill(buf, a.bb, 9000 + (uint64_t)i);
			CHECK_EQ(kvt_put(a.c, a.lay, &keys[i], buf, a.bb), 0);
		}
		put = put + 8 < NRESHARD ? put + 8 : NRESHARD;
		for (uint64_t t1 = now_ms();
		     put > from_blk &&
		     kvt_lookup(b.c, b.lay, keys + from_blk, put - from_blk) < put - from_blk &&
		     now_ms() - t1 < VISIBLE_MS;)
			;
		get_served(&b, keys, put, 9000, served, &wrong, &over);
		if (waitpid(pid, &status, WNOHANG) == pid)
			break;
	}
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	/* The hosts' requests met the migration: MOVED or ASK. */
	for (int h = 0; h < 2; h++) {
		moved += kvt_test_ctl_num(kvtierctl, sock[h], "tiers", "\"seeds\"", "moved");
		moved += kvt_test_ctl_num(kvtierctl, sock[h], "tiers", "\"seeds\"", "ask");
	}
	CHECK(moved > 0);
	for (int i = put; i < NRESHARD; i++) {
		kvt_test_fill(buf, a.bb, 9000 + (uint64_t)i);
		CHECK_EQ(kvt_put(a.c, a.lay, &keys[i], buf, a.bb), 0);
	}
	t0 = now_ms();
	while (get_served(&b, keys, NRESHARD, 9000, served, &wrong, &over) < NRESHARD)
		CHECK(now_ms() - t0 <= VISIBLE_MS);
	printf("reshard: %d rounds while 2000 slots of master %d moved (%lld MOVED/ASK met by "
	       "the hosts); all %d blocks served by host B\n",
	       rounds, src, moved, NRESHARD);
	CHECK_EQ(wrong, 0);
	CHECK_EQ(over, 0);
	CHECK_EQ(status_num(0, "remote_put_dropped_total"), 0);
	free(buf);
	kvt_close(a.c);
	kvt_close(b.c);
}

static void test_auth(void)
{
	char authf[320], opt[340];
	const char *extra[] = {opt, NULL};
	struct host a = {0}, b = {0};
	struct kvt_key keys[NBLK];
	uint8_t *buf = NULL, *want = NULL;
	redisReply *r;
	FILE *f;

	snprintf(authf, sizeof(authf), "%s/auth", dir);
	snprintf(opt, sizeof(opt), "remote.auth_file=%s", authf);
	f = fopen(authf, "w");
	CHECK(f);
	fputs("s3cret\n", f);
	fclose(f);
	r = rh_cmd(cl.port[0], "CONFIG SET requirepass s3cret");
	CHECK(r && r->type == REDIS_REPLY_STATUS);
	freeReplyObject(r);
	CHECK(host_startx(0, "raw", NULL, extra) > 0);
	CHECK(host_startx(1, "raw", NULL, NULL) > 0); /* no password */
	CHECK(host_open(&a, 0) == 0);
	CHECK(host_open(&b, 1) == 0);
	kvt_test_make_keys(&layout, 17, keys, NBLK);
	CHECK(put_prompt(&a, keys, 7000) == 0);
	/* B is refused (NOAUTH): misses, never errors. */
	buf = malloc(a.bb);
	want = malloc(a.bb);
	CHECK_EQ(kvt_lookup(b.c, b.lay, keys, NBLK), 0);
	CHECK_EQ(kvt_get(b.c, b.lay, &keys[0], buf, a.bb), -ENOENT);
	kvt_close(b.c);
	b.c = NULL;
	CHECK_EQ(kvt_test_daemon_stop(dpid[1]), 0);
	dpid[1] = 0;
	/* B with the password: A's blocks, bit-exact. */
	CHECK(host_startx(1, "raw", NULL, extra) > 0);
	CHECK(host_open(&b, 1) == 0);
	CHECK_EQ(wait_visible(&b, keys, NBLK), NBLK);
	for (int i = 0; i < NBLK; i++) {
		kvt_test_fill(want, a.bb, 7000 + (uint64_t)i);
		CHECK_EQ(kvt_get(b.c, b.lay, &keys[i], buf, a.bb), (long long)a.bb);
		CHECK(memcmp(buf, want, a.bb) == 0);
	}
	CHECK_EQ(status_num(1, "remote_hits_total"), NBLK);
	printf("auth: host B without the password missed, with it fetched all %d blocks\n", NBLK);
	free(buf);
	free(want);
	kvt_close(a.c);
	kvt_close(b.c);
}

/*
 * The write-behind never holds up a put: a remote that accepts connections and never answers
 * keeps the put thread in its first request until remote.put_timeout_ms, so the queue holds
 * remote.queue_max blocks and every later one is dropped, counted, while each put is
 * answered at once from the host tier.
 */
static void test_queue(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	char seeds[64];
	const char *extra[] = {"remote.threads=2", "remote.queue_max=2",
			       "remote.put_timeout_ms=10000", NULL};
	struct host a = {0};
	struct kvt_key keys[NBLK];
	uint8_t *buf = NULL;
	uint64_t t0;

	CHECK(ls >= 0);
	CHECK(bind(ls, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	CHECK(listen(ls, 64) == 0); /* connections complete in the backlog, never accepted */
	CHECK(getsockname(ls, (struct sockaddr *)&sa, &sl) == 0);
	snprintf(seeds, sizeof(seeds), "127.0.0.1:%u", ntohs(sa.sin_port));
	CHECK(host_startx(0, "raw", seeds, extra) > 0);
	CHECK(host_open(&a, 0) == 0);
	kvt_test_make_keys(&layout, 11, keys, NBLK);
	buf = malloc(a.bb);
	t0 = now_ms();
	for (int i = 0; i < 6; i++) {
		kvt_test_fill(buf, a.bb, (uint64_t)i);
		CHECK_EQ(kvt_put(a.c, a.lay, &keys[i], buf, a.bb), 0);
	}
	/* Far below the put deadline (10 s) the loop would have waited for. */
	CHECK(now_ms() - t0 < 5000);
	CHECK_EQ(status_num(0, "remote_puts_queued_total"), 2);
	CHECK_EQ(status_num(0, "remote_put_dropped_total"), 4);
	CHECK_EQ(status_num(0, "remote_queue"), 2);
	/* The six are local; the rest of the prompt is asked of the silent node: a miss. */
	CHECK_EQ(kvt_lookup(a.c, a.lay, keys, NBLK), 6);
	CHECK_EQ(kvt_get(a.c, a.lay, &keys[NBLK - 1], buf, a.bb), -ENOENT);
	CHECK_EQ(kvt_get(a.c, a.lay, &keys[0], buf, a.bb), (long long)a.bb);
	free(buf);
	kvt_close(a.c);
	close(ls);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* p50 and p99 of n lookups of keys[0..64) through host x, in us (want: found each time). */
static int lookup_times(struct host *x, const struct kvt_key *keys, int want, double *p50,
			double *p99)
{
	enum { N = 1000 };
	uint64_t *t = malloc(N * sizeof(*t));
	int bad = 0;

	for (int i = 0; i < N; i++) {
		uint64_t t0 = now_ns();

		bad += kvt_lookup(x->c, x->lay, keys, 64) != want;
		t[i] = now_ns() - t0;
	}
	qsort(t, N, sizeof(*t), cmp_u64);
	*p50 = (double)t[N / 2] / 1e3;
	*p99 = (double)t[N * 99 / 100] / 1e3;
	free(t);
	return bad;
}

static void test_latency(void)
{
	struct host a = {0}, b = {0};
	struct kvt_key keys[64];
	uint8_t *buf;
	double a50, a99, b50, b99;
	int bad;

	CHECK(host_start(0, "raw") > 0);
	CHECK(host_start(1, "raw") > 0);
	CHECK(host_open(&a, 0) == 0);
	CHECK(host_open(&b, 1) == 0);
	kvt_test_make_keys(&layout, 64, keys, 64);
	buf = malloc(a.bb);
	for (int i = 0; i < 64; i++) {
		kvt_test_fill(buf, a.bb, (uint64_t)i);
		CHECK_EQ(kvt_put(a.c, a.lay, &keys[i], buf, a.bb), 0);
	}
	free(buf);
	{
		uint64_t t0 = now_ms();

		while (kvt_lookup(b.c, b.lay, keys, 64) < 64 && now_ms() - t0 < VISIBLE_MS)
			;
	}
	bad = lookup_times(&a, keys, 64, &a50, &a99);
	bad += lookup_times(&b, keys, 64, &b50, &b99);
	printf("lookup of a 64-block prefix, 1000 each, remote.lookup_timeout_us = 2000:\n"
	       "  host A (all local):  p50 %.1f us  p99 %.1f us\n"
	       "  host B (all remote): p50 %.1f us  p99 %.1f us  (%d lookups found less)\n",
	       a50, a99, b50, b99, bad);
	kvt_close(a.c);
	kvt_close(b.c);
}

int main(int argc, char **argv)
{
	static const struct kvt_test_case tests[] = {
	    {"fleet", test_fleet},     {"corrupt", test_corrupt},
	    {"down", test_down},       {"failover", test_failover},
	    {"auth", test_auth},       {"queue", test_queue},
	    {"delete", test_delete},   {"delete_down", test_delete_down},
	    {"stop", test_stop},       {"reshard", test_reshard},
	    {"latency", test_latency},
	};
	int fails;

	if (argc < 4) {
		fprintf(stderr, "usage: test_fleet KVTIERD KVTIERCTL "
				"fleet|corrupt|down|failover|auth|queue|delete|delete_down|stop|"
				"reshard|latency|demo\n");
		return 2;
	}
	kvtierd = argv[1];
	kvtierctl = argv[2];
	if (!mkdtemp(dir))
		return 1;
	for (int h = 0; h < 2; h++) {
		snprintf(sock[h], sizeof(sock[h]), "%s/host%c.sock", dir, 'A' + h);
		snprintf(logp[h], sizeof(logp[h]), "%s/host%c.log", dir, 'A' + h);
	}
	if (!strcmp(argv[3], "auth")) {
		if (!rh_available())
			return 77;
		if (rh_start(&cl, 1, false, NULL) < 0) {
			fprintf(stderr, "test_fleet: redis-server did not start\n");
			return 1;
		}
	} else if (strcmp(argv[3], "queue") && cluster_up() < 0) {
		fprintf(stderr, "test_fleet: the 6-node cluster did not start\n");
		return 1;
	}
	if (!strcmp(argv[3], "demo")) {
		verbose = true;
		say("6-node Redis Cluster on loopback (3 masters, 3 replicas): %s\n", cl.seeds);
		test_fleet_case(argc > 4 ? argv[4] : "fpx");
	} else {
		size_t k = 0;

		while (k < sizeof(tests) / sizeof(tests[0]) && strcmp(argv[3], tests[k].name))
			k++;
		if (k == sizeof(tests) / sizeof(tests[0])) {
			fprintf(stderr, "test_fleet: no test called %s\n", argv[3]);
			kvt_test_failures++;
		} else {
			tests[k].fn();
		}
	}
	hosts_stop();
	if (kvt_test_failures)
		dump_logs();
	rh_stop(&cl);
	free(kvt_test_sh(&fails, "rm -rf %s", dir));
	printf("%s: %s\n", argv[3], kvt_test_failures ? "FAILED" : "ok");
	return kvt_test_failures ? 1 : 0;
}
