/* SPDX-License-Identifier: MIT */
/*
 * test_remote - the remote tier (tiers/tier_remote.c, tiers/redis_cluster.c) against real
 * redis-server processes on loopback, started here (redis_harness.c), one scenario per run:
 *
 *   test_remote standalone   one plain Redis: put/get/lookup, NX, TTL, corrupt, truncated and
 *                            foreign values, wrong type, AUTH (password and ACL user)
 *   test_remote malformed    a fake node replying garbage: clear errors, within the deadline
 *   test_remote slots        6-node cluster: slots match CLUSTER KEYSLOT, routing is right
 *   test_remote reshard      redis-cli --cluster reshard during traffic (MOVED, ASK)
 *   test_remote ask          a migrating slot, step by step (ASK, ASKING, then MOVED)
 *   test_remote kill         a master SIGKILLed, failed over, restarted
 *   test_remote stop         a master SIGSTOPped, failed over, continued
 *   test_remote alldown      every master killed, then restarted
 *   test_remote proxy        one master behind a fault-injecting TCP proxy (announced with
 *                            cluster-announce-port): dropped, delayed, then healthy
 *
 * In every case: no wrong block ever (each block's bytes derive from its key and are compared
 * in full), misses only while the fault lasts, every block served again within 5 s of the
 * cluster's recovery (which is polled for, with a bound), and no call longer than its
 * deadline plus a scheduling allowance.  Exit 77 when redis-server is not installed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "redis_cluster.h"
#include "redis_harness.h"
#include "tier_remote.h"

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)

/* Scheduling allowance over a call's deadline: the machine is shared (2 cores, other
 * builds); a call that blocked on a dead node would overshoot by seconds, not this. */
#define OVER_MS	     400
#define RECOVERY_MS  5000
#define BLK	     8192u
#define BATCH	     16u
#define MAX_BLOCKS   4096u
#define FAULT_MAX_MS 30000

static struct rh_cluster cl;
static uint64_t salt;

struct traffic {
	struct kvt_remote *r;
	unsigned deadline_ms;
	size_t blk;
	uint64_t hits, misses, wrong, over, calls, max_call_ms;
};

static void mk_key(unsigned i, struct kvt_remote_key *k)
{
	uint64_t x = salt ^ ((uint64_t)i * 0x9e3779b97f4a7c15ull);

	x ^= x >> 31;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 29;
	k->key_lo = x;
	k->key_hi = x * 0x94d049bb133111ebull + i;
	k->fingerprint = 0x1234abcd00000000ull | (salt & 0xffff);
}

static void fill(const struct kvt_remote_key *k, uint8_t *p, size_t len)
{
	uint64_t s = k->key_lo ^ k->key_hi;

	for (size_t i = 0; i < len; i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		p[i] = (uint8_t)s;
	}
}

static uint64_t deadline_of(unsigned ms)
{
	return kvt_remote_now_ns() + (uint64_t)ms * 1000000u;
}

static void timed(struct traffic *t, uint64_t t0)
{
	uint64_t ms = (kvt_remote_now_ns() - t0) / 1000000u;

	t->calls++;
	if (ms > t->max_call_ms)
		t->max_call_ms = ms;
	if (ms > t->deadline_ms + OVER_MS) {
		fprintf(stderr, "call took %llu ms, deadline %u ms\n", (unsigned long long)ms,
			t->deadline_ms);
		t->over++;
	}
}

/* Puts blocks [first, first + n); returns how many are stored (or were there). */
static unsigned put_range(struct traffic *t, unsigned first, unsigned n)
{
	struct kvt_remote_put v[BATCH];
	static uint8_t *pl[BATCH];
	unsigned stored = 0;

	for (unsigned b = 0; b < BATCH; b++)
		if (!pl[b])
			CHECK((pl[b] = malloc(1u << 20)));
	for (unsigned base = 0; base < n; base += BATCH) {
		unsigned m = n - base < BATCH ? n - base : BATCH;
		uint64_t t0;

		for (unsigned j = 0; j < m; j++) {
			struct kvt_remote_key k;

			CHECK(t->blk <= (1u << 20));
			mk_key(first + base + j, &k);
			fill(&k, pl[j], t->blk);
			memset(&v[j], 0, sizeof(v[j]));
			v[j].hdr.key_lo = k.key_lo;
			v[j].hdr.key_hi = k.key_hi;
			v[j].hdr.fingerprint = k.fingerprint;
			v[j].hdr.raw_len = (uint32_t)t->blk;
			v[j].hdr.payload_len = (uint32_t)t->blk;
			v[j].hdr.chain_id = 0;
			v[j].hdr.tenant = 1000;
			v[j].payload = pl[j];
		}
		t0 = kvt_remote_now_ns();
		kvt_remote_put(t->r, v, m, deadline_of(t->deadline_ms));
		timed(t, t0);
		for (unsigned j = 0; j < m; j++)
			stored += v[j].res >= 0;
	}
	return stored;
}

/* Gets blocks [first, first + n), checking every byte; returns the hits. */
static unsigned get_range(struct traffic *t, unsigned first, unsigned n)
{
	struct kvt_remote_get g[BATCH];
	static uint8_t *bufs[BATCH], *want;
	unsigned hits = 0;

	for (unsigned b = 0; b < BATCH; b++)
		if (!bufs[b])
			CHECK((bufs[b] = malloc(1u << 20)));
	if (!want)
		CHECK((want = malloc(1u << 20)));
	for (unsigned base = 0; base < n; base += BATCH) {
		unsigned m = n - base < BATCH ? n - base : BATCH;
		uint64_t t0;

		for (unsigned j = 0; j < m; j++) {
			memset(&g[j], 0, sizeof(g[j]));
			mk_key(first + base + j, &g[j].key);
			g[j].buf = bufs[j];
			g[j].cap = 1u << 20;
		}
		t0 = kvt_remote_now_ns();
		kvt_remote_get(t->r, g, m, deadline_of(t->deadline_ms));
		timed(t, t0);
		for (unsigned j = 0; j < m; j++) {
			if (g[j].res < 0) {
				t->misses++;
				continue;
			}
			fill(&g[j].key, want, t->blk);
			if ((size_t)g[j].res != t->blk || g[j].hdr.raw_len != t->blk ||
			    g[j].hdr.tenant != 1000 || memcmp(bufs[j], want, t->blk)) {
				fprintf(stderr, "WRONG BLOCK %u\n", first + base + j);
				t->wrong++;
				continue;
			}
			t->hits++;
			hits++;
		}
	}
	return hits;
}

static struct kvt_remote *open_remote(const char *seeds, const char *auth)
{
	struct kvt_remote_conf rc = {.size = sizeof(rc), .seeds = seeds, .ttl_s = 3600};
	struct kvt_remote *r;

	rc.auth_file = auth;
	CHECK(kvt_remote_open(&rc, &r) == 0);
	return r;
}

static void report(const char *what, const struct traffic *t)
{
	struct kvt_rc_stats st;

	kvt_rc_get_stats(kvt_remote_cluster(t->r), &st);
	printf("%s: calls %llu (max %llu ms, deadline %u ms, over %llu), hits %llu, misses %llu, "
	       "wrong %llu; moved %llu ask %llu retry %llu refresh %llu/%llu fail, timeouts %llu, "
	       "io %llu, breaker fast-fails %llu\n",
	       what, (unsigned long long)t->calls, (unsigned long long)t->max_call_ms,
	       t->deadline_ms, (unsigned long long)t->over, (unsigned long long)t->hits,
	       (unsigned long long)t->misses, (unsigned long long)t->wrong,
	       (unsigned long long)st.moved, (unsigned long long)st.ask,
	       (unsigned long long)st.retry_errors, (unsigned long long)st.refreshes,
	       (unsigned long long)st.refresh_fails, (unsigned long long)st.timeouts,
	       (unsigned long long)st.io_errors, (unsigned long long)st.breaker_fast_fails);
	fflush(stdout);
}

static void start_cluster(void)
{
	int ret = rh_start(&cl, 6, true, NULL);

	if (ret < 0) {
		fprintf(stderr, "could not start the cluster: %s\n", strerror(-ret));
		exit(1);
	}
}

static int master_index(unsigned nth)
{
	for (unsigned i = 0, k = 0; i < cl.n; i++)
		if (cl.pid[i] > 0 && rh_is_master(&cl, i) && k++ == nth)
			return (int)i;
	return -1;
}

/* ---- standalone ---- */

static void set_raw(int port, const struct kvt_remote_key *k, const void *v, size_t len)
{
	char name[KVT_REMOTE_KEY_NAME];
	const char *argv[3] = {"SET", name, v};
	size_t lens[3] = {3, 0, len};
	redisReply *r;

	kvt_remote_key_name(k, name);
	lens[1] = strlen(name);
	r = rh_cmdargv(port, 3, argv, lens);
	CHECK(r && r->type == REDIS_REPLY_STATUS);
	freeReplyObject(r);
}

static redisReply *get_raw(int port, const struct kvt_remote_key *k)
{
	char name[KVT_REMOTE_KEY_NAME];

	kvt_remote_key_name(k, name);
	return rh_cmd(port, "GET %s", name);
}

static int get_one(struct kvt_remote *r, unsigned i, void *buf, size_t cap)
{
	struct kvt_remote_get g = {.buf = buf, .cap = cap};

	mk_key(i, &g.key);
	CHECK(kvt_remote_get(r, &g, 1, deadline_of(2000)) >= 0);
	return g.res;
}

static char *write_file(const char *dir, const char *name, const char *text)
{
	static char path[2][300];
	static int k;
	char *p = path[k++ & 1];
	FILE *f;

	snprintf(p, 300, "%s/%s", dir, name);
	f = fopen(p, "w");
	CHECK(f);
	fputs(text, f);
	fclose(f);
	return p;
}

static int scenario_standalone(void)
{
	struct traffic t = {.deadline_ms = 2000, .blk = 1u << 20};
	struct kvt_remote_key keys[24];
	struct kvt_remote_stats st;
	struct kvt_rc_stats rst;
	redisReply *rep;
	uint8_t *buf = malloc(1u << 20), *val;
	size_t vlen;
	int port, ret;

	CHECK(buf);
	ret = rh_start(&cl, 1, false, NULL);
	CHECK(ret == 0);
	port = cl.port[0];
	t.r = open_remote(cl.seeds, NULL);

	/* 1 MiB blocks and small ones round trip bit-exact; the Redis key name is as documented. */
	CHECK(put_range(&t, 0, 8) == 8);
	CHECK(get_range(&t, 0, 8) == 8);
	t.blk = 4096;
	CHECK(put_range(&t, 8, 12) == 12);
	CHECK(get_range(&t, 8, 12) == 12);
	kvt_rc_get_stats(kvt_remote_cluster(t.r), &rst);
	CHECK(rst.standalone);
	{
		struct kvt_remote_key k = {0x1122334455667788ull, 0x99aabbccddeeff00ull, 0x42};
		char name[KVT_REMOTE_KEY_NAME];

		kvt_remote_key_name(&k, name);
		CHECK(!strcmp(name, "kvt:99aabbccddeeff001122334455667788:0000000000000042"));
	}

	/* Lookup: the prefix stops at the first block not stored. */
	for (unsigned i = 0; i < 24; i++)
		mk_key(8 + i, &keys[i]);
	CHECK(kvt_remote_lookup(t.r, keys, 24, deadline_of(2000)) == 12);
	CHECK(kvt_remote_lookup(t.r, keys, 5, deadline_of(2000)) == 5);
	mk_key(5000, &keys[3]);
	CHECK(kvt_remote_lookup(t.r, keys, 12, deadline_of(2000)) == 3);
	CHECK(kvt_remote_lookup(t.r, keys, 0, deadline_of(2000)) == 0);

	/* Immutable: a second put of a key finds it (res 1) and leaves the first value. */
	{
		struct kvt_remote_put v = {0};
		struct kvt_remote_key k;
		uint8_t other[4096];

		mk_key(8, &k);
		memset(other, 0x5a, sizeof(other));
		v.hdr.key_lo = k.key_lo;
		v.hdr.key_hi = k.key_hi;
		v.hdr.fingerprint = k.fingerprint;
		v.hdr.raw_len = v.hdr.payload_len = sizeof(other);
		v.hdr.tenant = 1000;
		v.payload = other;
		CHECK(kvt_remote_put(t.r, &v, 1, deadline_of(2000)) == 1 && v.res == 1);
		CHECK(get_range(&t, 8, 1) == 1);
	}

	/* TTL: SET ... EX 3600. */
	{
		char name[KVT_REMOTE_KEY_NAME];

		mk_key(8, &keys[0]);
		kvt_remote_key_name(&keys[0], name);
		rep = rh_cmd(port, "TTL %s", name);
		CHECK(rep && rep->type == REDIS_REPLY_INTEGER && rep->integer > 3500 &&
		      rep->integer <= 3600);
		freeReplyObject(rep);
	}

	/* A value that fails any check is a miss, counted, never served. */
	mk_key(9, &keys[0]);
	rep = get_raw(port, &keys[0]);
	CHECK(rep && rep->type == REDIS_REPLY_STRING && rep->len == 64 + 4096);
	vlen = rep->len;
	val = malloc(vlen);
	CHECK(val);
	memcpy(val, rep->str, vlen);
	freeReplyObject(rep);
	/* corrupt: one payload bit */
	val[64 + 100] ^= 1;
	set_raw(port, &keys[0], val, vlen);
	CHECK(get_one(t.r, 9, buf, 1u << 20) == -EBADMSG);
	val[64 + 100] ^= 1;
	/* truncated by one byte, then with a byte too many */
	set_raw(port, &keys[0], val, vlen - 1);
	CHECK(get_one(t.r, 9, buf, 1u << 20) == -EBADMSG);
	{
		uint8_t *longer = malloc(vlen + 1);

		CHECK(longer);
		memcpy(longer, val, vlen);
		longer[vlen] = 0;
		set_raw(port, &keys[0], longer, vlen + 1);
		CHECK(get_one(t.r, 9, buf, 1u << 20) == -EBADMSG);
		free(longer);
	}
	/* foreign: block 9's intact record stored under block 10's name */
	mk_key(10, &keys[1]);
	set_raw(port, &keys[1], val, vlen);
	CHECK(get_one(t.r, 10, buf, 1u << 20) == -EBADMSG);
	/* not a record at all, and too short for a header */
	set_raw(port, &keys[1], "hello", 5);
	CHECK(get_one(t.r, 10, buf, 1u << 20) == -EBADMSG);
	/* the intact value back: served again */
	set_raw(port, &keys[0], val, vlen);
	CHECK(get_one(t.r, 9, buf, 1u << 20) == 4096);
	/* buffer too small */
	CHECK(get_one(t.r, 9, buf, 4095) == -ENOSPC);
	/* never stored */
	CHECK(get_one(t.r, 7777, buf, 1u << 20) == -ENOENT);
	/* wrong type: an error reply is a miss with its text */
	{
		char name[KVT_REMOTE_KEY_NAME];

		mk_key(11, &keys[2]);
		kvt_remote_key_name(&keys[2], name);
		rep = rh_cmd(port, "DEL %s", name);
		freeReplyObject(rep);
		rep = rh_cmd(port, "LPUSH %s x", name);
		freeReplyObject(rep);
		CHECK(get_one(t.r, 11, buf, 1u << 20) == -EREMOTEIO);
		CHECK(strstr(kvt_rc_errstr(kvt_remote_cluster(t.r)), "WRONGTYPE"));
	}
	kvt_remote_get_stats(t.r, &st);
	CHECK(st.corrupt == 5);
	free(val);
	CHECK(t.wrong == 0 && t.over == 0);
	report("standalone", &t);
	kvt_remote_close(t.r);

	/* AUTH: refused without or with a wrong password, served with the right one, by
	 * password alone or as an ACL user. */
	rep = rh_cmd(port, "CONFIG SET requirepass s3cret");
	CHECK(rep && rep->type == REDIS_REPLY_STATUS);
	freeReplyObject(rep);
	{
		struct kvt_remote *r = open_remote(cl.seeds, NULL);

		CHECK(get_one(r, 9, buf, 1u << 20) == -EACCES);
		kvt_remote_close(r);
		r = open_remote(cl.seeds, write_file(cl.dir, "bad", "wrong\n"));
		CHECK(get_one(r, 9, buf, 1u << 20) == -EACCES);
		CHECK(strstr(kvt_rc_errstr(kvt_remote_cluster(r)), "AUTH failed"));
		kvt_remote_close(r);
		r = open_remote(cl.seeds, write_file(cl.dir, "good", "s3cret\n"));
		CHECK(get_one(r, 9, buf, 1u << 20) == 4096);
		kvt_remote_close(r);
		struct redisContext *c;
		struct timeval tv = {2, 0};

		c = redisConnectWithTimeout("127.0.0.1", port, tv);
		CHECK(c && !c->err);
		rep = redisCommand(c, "AUTH s3cret");
		freeReplyObject(rep);
		rep = redisCommand(c, "ACL SETUSER kvt on >pw ~kvt:* +@all");
		CHECK(rep && rep->type == REDIS_REPLY_STATUS);
		freeReplyObject(rep);
		redisFree(c);
		r = open_remote(cl.seeds, write_file(cl.dir, "user", "kvt pw\n"));
		CHECK(get_one(r, 9, buf, 1u << 20) == 4096);
		kvt_remote_close(r);
	}
	/* Bad configuration is refused at open. */
	{
		struct kvt_remote_conf rc = {.size = sizeof(rc), .seeds = "nohostport"};
		struct kvt_remote *r;

		CHECK(kvt_remote_open(&rc, &r) == -EINVAL && !r);
		rc.seeds = "127.0.0.1:0";
		CHECK(kvt_remote_open(&rc, &r) == -EINVAL);
		rc.seeds = "127.0.0.1:1";
		rc.auth_file = "/nonexistent/auth";
		CHECK(kvt_remote_open(&rc, &r) == -ENOENT);
	}
	rh_stop(&cl);
	free(buf);
	printf("standalone: ok\n");
	return 0;
}

/* ---- fake node ---- */

enum fake_mode {
	FAKE_GARBAGE,	  /* "!@#..." to everything */
	FAKE_SLOTS_BAD,	  /* CLUSTER SLOTS: an array of the wrong shape */
	FAKE_VALUE_BAD,	  /* plain Redis; GET: a bulk string that is no record */
	FAKE_BULK_BAD,	  /* plain Redis; GET: "$abc" (bad length) */
	FAKE_MOVED_LOOP,  /* cluster of one; GET: MOVED back to itself, forever */
	FAKE_MOVED_BAD,	  /* GET: "-MOVED xyz" */
	FAKE_SILENT,	  /* plain Redis; GET: never answers */
	FAKE_CLOSE,	  /* closes every connection at once */
	FAKE_SLOTS_HUGE,  /* CLUSTER SLOTS: a slot range past 16383 */
	FAKE_EXTRA_REPLY, /* plain Redis; GET: two replies for one request */
};

struct fake {
	int lfd, port;
	enum fake_mode mode;
	pthread_t th;
	volatile bool quit;
};

static void wr(int fd, const char *s)
{
	size_t n = strlen(s);

	while (n) {
		ssize_t w = send(fd, s, n, MSG_NOSIGNAL);

		if (w <= 0)
			return;
		s += w;
		n -= (size_t)w;
	}
}

static unsigned count(const char *hay, size_t n, const char *needle)
{
	unsigned k = 0;
	size_t l = strlen(needle);

	for (size_t i = 0; i + l <= n; i++)
		if (!memcmp(hay + i, needle, l))
			k++;
	return k;
}

static void fake_serve(struct fake *f, int fd)
{
	char buf[65536], reply[256];

	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		unsigned slots, gets, others;

		if (n <= 0 || f->quit)
			break;
		if (f->mode == FAKE_CLOSE)
			break;
		if (f->mode == FAKE_GARBAGE) {
			wr(fd, "!@#garbage\r\n");
			continue;
		}
		slots = count(buf, (size_t)n, "$5\r\nSLOTS");
		gets = count(buf, (size_t)n, "$3\r\nGET");
		others = count(buf, (size_t)n, "$6\r\nASKING");
		for (unsigned i = 0; i < slots; i++) {
			if (f->mode == FAKE_SLOTS_BAD)
				wr(fd, "*1\r\n*2\r\n:0\r\n:16383\r\n");
			else if (f->mode == FAKE_SLOTS_HUGE)
				wr(fd,
				   "*1\r\n*3\r\n:0\r\n:20000\r\n*2\r\n$9\r\n127.0.0.1\r\n:1\r\n");
			else if (f->mode == FAKE_MOVED_LOOP || f->mode == FAKE_MOVED_BAD) {
				snprintf(
				    reply, sizeof(reply),
				    "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:%d\r\n",
				    f->port);
				wr(fd, reply);
			} else
				wr(fd, "-ERR This instance has cluster support disabled\r\n");
		}
		for (unsigned i = 0; i < others; i++)
			wr(fd, "+OK\r\n");
		for (unsigned i = 0; i < gets; i++) {
			switch (f->mode) {
			case FAKE_VALUE_BAD:
				wr(fd, "$5\r\nhello\r\n");
				break;
			case FAKE_BULK_BAD:
				wr(fd, "$abc\r\n");
				break;
			case FAKE_MOVED_LOOP:
				snprintf(reply, sizeof(reply), "-MOVED 1 127.0.0.1:%d\r\n",
					 f->port);
				wr(fd, reply);
				break;
			case FAKE_MOVED_BAD:
				wr(fd, "-MOVED xyz\r\n");
				break;
			case FAKE_EXTRA_REPLY:
				wr(fd, "$-1\r\n$-1\r\n");
				break;
			default: /* FAKE_SILENT */
				break;
			}
		}
	}
	close(fd);
}

static void *fake_main(void *arg)
{
	struct fake *f = arg;

	while (!f->quit) {
		struct pollfd p = {.fd = f->lfd, .events = POLLIN};
		int fd;

		if (poll(&p, 1, 50) <= 0)
			continue;
		fd = accept(f->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		/* One connection at a time is all the client opens to one node. */
		fake_serve(f, fd);
	}
	return NULL;
}

static int listen_any(int *port)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	socklen_t al = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	CHECK(fd >= 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CHECK(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
	CHECK(listen(fd, 16) == 0);
	CHECK(getsockname(fd, (struct sockaddr *)&a, &al) == 0);
	*port = ntohs(a.sin_port);
	return fd;
}

static void fake_start(struct fake *f, enum fake_mode mode)
{
	memset(f, 0, sizeof(*f));
	f->mode = mode;
	f->lfd = listen_any(&f->port);
	CHECK(pthread_create(&f->th, NULL, fake_main, f) == 0);
}

static void fake_stop(struct fake *f)
{
	f->quit = true;
	pthread_join(f->th, NULL);
	close(f->lfd);
}

/* One GET against a fake node: its result and the error text, within the deadline. */
static int fake_get(enum fake_mode mode, unsigned deadline_ms, char *err, size_t errlen,
		    struct kvt_remote_stats *st)
{
	struct fake f;
	char seeds[64];
	struct kvt_remote *r;
	struct kvt_remote_get g = {0};
	uint8_t buf[128];
	uint64_t t0;
	unsigned ms;

	fake_start(&f, mode);
	snprintf(seeds, sizeof(seeds), "127.0.0.1:%d", f.port);
	r = open_remote(seeds, NULL);
	mk_key(1, &g.key);
	g.buf = buf;
	g.cap = sizeof(buf);
	t0 = kvt_remote_now_ns();
	CHECK(kvt_remote_get(r, &g, 1, deadline_of(deadline_ms)) >= 0);
	ms = (unsigned)((kvt_remote_now_ns() - t0) / 1000000u);
	CHECK(ms <= deadline_ms + OVER_MS);
	snprintf(err, errlen, "%s", kvt_rc_errstr(kvt_remote_cluster(r)));
	if (st)
		kvt_remote_get_stats(r, st);
	printf("fake mode %d: res %d (%s) in %u ms: %s\n", mode, g.res, strerror(-g.res), ms, err);
	kvt_remote_close(r);
	fake_stop(&f);
	return g.res;
}

static int scenario_malformed(void)
{
	struct kvt_remote_stats st;
	char err[256];

	CHECK(fake_get(FAKE_GARBAGE, 1000, err, sizeof(err), NULL) == -EPROTO);
	CHECK(strstr(err, "protocol error"));
	CHECK(fake_get(FAKE_SLOTS_BAD, 1000, err, sizeof(err), NULL) == -EPROTO);
	CHECK(strstr(err, "malformed CLUSTER SLOTS"));
	CHECK(fake_get(FAKE_SLOTS_HUGE, 1000, err, sizeof(err), NULL) == -EPROTO);
	CHECK(strstr(err, "malformed CLUSTER SLOTS"));
	CHECK(fake_get(FAKE_VALUE_BAD, 1000, err, sizeof(err), &st) == -EBADMSG);
	CHECK(st.corrupt == 1);
	CHECK(fake_get(FAKE_BULK_BAD, 1000, err, sizeof(err), NULL) == -EPROTO);
	CHECK(strstr(err, "protocol error"));
	CHECK(fake_get(FAKE_MOVED_LOOP, 1000, err, sizeof(err), NULL) == -EAGAIN);
	CHECK(strstr(err, "too many redirections"));
	CHECK(fake_get(FAKE_MOVED_BAD, 1000, err, sizeof(err), NULL) == -EPROTO);
	CHECK(strstr(err, "bad redirection"));
	CHECK(fake_get(FAKE_SILENT, 300, err, sizeof(err), NULL) == -ETIMEDOUT);
	CHECK(strstr(err, "no reply by the deadline"));
	{
		int res = fake_get(FAKE_CLOSE, 300, err, sizeof(err), NULL);

		/* refused by the breaker after the resets, or still retrying at the deadline */
		CHECK(res == -ECONNRESET || res == -EHOSTDOWN);
		CHECK(strstr(err, "closed by the node") || strstr(err, "breaker open"));
	}
	CHECK(fake_get(FAKE_EXTRA_REPLY, 1000, err, sizeof(err), NULL) == -ENOENT);

	/* The breaker: a silent node fails three calls by their deadline, then is refused at
	 * once until it half-opens. */
	{
		struct fake f;
		char seeds[64];
		struct kvt_remote *r;
		struct kvt_remote_get g = {0};
		uint8_t buf[16];
		uint64_t t0;

		fake_start(&f, FAKE_SILENT);
		snprintf(seeds, sizeof(seeds), "127.0.0.1:%d", f.port);
		r = open_remote(seeds, NULL);
		mk_key(1, &g.key);
		g.buf = buf;
		g.cap = sizeof(buf);
		for (int i = 0; i < 3; i++) {
			CHECK(kvt_remote_get(r, &g, 1, deadline_of(100)) == 0);
			CHECK(g.res == -ETIMEDOUT);
		}
		t0 = kvt_remote_now_ns();
		CHECK(kvt_remote_get(r, &g, 1, deadline_of(100)) == 0);
		CHECK(g.res == -EHOSTDOWN);
		/* refused without waiting for the deadline */
		CHECK(kvt_remote_now_ns() - t0 < 100000000u);
		kvt_remote_close(r);
		fake_stop(&f);
	}
	/* Nothing listening: refused quickly, a miss. */
	{
		int port, fd = listen_any(&port);
		char seeds[64];
		struct kvt_remote *r;
		struct kvt_remote_get g = {0};
		uint8_t buf[16];

		close(fd);
		snprintf(seeds, sizeof(seeds), "127.0.0.1:%d", port);
		r = open_remote(seeds, NULL);
		mk_key(1, &g.key);
		g.buf = buf;
		g.cap = sizeof(buf);
		CHECK(kvt_remote_get(r, &g, 1, deadline_of(300)) == 0);
		CHECK(g.res < 0 && g.res != -ENOENT);
		kvt_remote_close(r);
	}
	printf("malformed: ok\n");
	return 0;
}

/* ---- cluster scenarios ---- */

static int scenario_slots(void)
{
	struct traffic t = {.deadline_ms = 2000, .blk = 1024};
	const char *odd[] = {"{user1}.following",
			     "{user1}.followers",
			     "foo{}{bar}",
			     "foo{{bar}}zap",
			     "foo{bar}{zap}",
			     "{}",
			     "{",
			     "}",
			     "a{b",
			     "}{c}",
			     "kvt:{x}:y",
			     ""};
	struct kvt_rc_stats st;
	struct kvt_rc *rc;
	unsigned n = 0;

	start_cluster();
	t.r = open_remote(cl.seeds, NULL);
	rc = kvt_remote_cluster(t.r);
	/* Slot of a key = CLUSTER KEYSLOT, for our names and for hash-tag corner cases. */
	for (unsigned i = 0; i < 2000 + sizeof(odd) / sizeof(odd[0]); i++) {
		char name[KVT_REMOTE_KEY_NAME];
		const char *key = name;
		redisReply *r;

		if (i < 2000) {
			struct kvt_remote_key k;

			mk_key(i, &k);
			kvt_remote_key_name(&k, name);
		} else {
			key = odd[i - 2000];
		}
		r = rh_cmd(cl.port[0], "CLUSTER KEYSLOT %b", key, strlen(key));
		CHECK(r && r->type == REDIS_REPLY_INTEGER);
		CHECK((long long)kvt_rc_keyslot(key, strlen(key)) == r->integer);
		freeReplyObject(r);
		n++;
	}
	/* Every block goes straight to its master: no MOVED once the map is read. */
	CHECK(put_range(&t, 0, 256) == 256);
	CHECK(get_range(&t, 0, 256) == 256);
	kvt_rc_get_stats(rc, &st);
	CHECK(st.moved == 0 && st.ask == 0 && !st.standalone);
	for (unsigned i = 0; i < 64; i++) {
		struct kvt_remote_key k;
		char name[KVT_REMOTE_KEY_NAME];
		unsigned slot;
		int owner;
		char want[64];

		mk_key(i, &k);
		kvt_remote_key_name(&k, name);
		slot = kvt_rc_keyslot(name, strlen(name));
		owner = rh_slot_owner(&cl, 0, slot);
		CHECK(owner >= 0);
		snprintf(want, sizeof(want), "127.0.0.1:%d", cl.port[owner]);
		CHECK(kvt_rc_slot_node(rc, slot) && !strcmp(kvt_rc_slot_node(rc, slot), want));
	}
	{
		struct kvt_rc_node_info info[8];
		unsigned total = 0, nn = kvt_rc_nodes(rc, info, 8);

		CHECK(nn >= 3 && nn <= 8);
		for (unsigned i = 0; i < nn && i < 8; i++)
			total += info[i].slots;
		CHECK(total == KVT_RC_SLOTS);
	}
	CHECK(t.wrong == 0 && t.over == 0);
	report("slots", &t);
	printf("slots: %u keys match CLUSTER KEYSLOT\n", n);
	kvt_remote_close(t.r);
	rh_stop(&cl);
	return 0;
}

static const char *node_id(unsigned i)
{
	static char id[RH_MAX][64];
	redisReply *r = rh_cmd(cl.port[i], "CLUSTER MYID");

	CHECK(r && r->type == REDIS_REPLY_STRING && r->len < 64);
	memcpy(id[i], r->str, r->len);
	id[i][r->len] = 0;
	freeReplyObject(r);
	return id[i];
}

static int scenario_reshard(void)
{
	struct traffic t = {.deadline_ms = 3000, .blk = BLK};
	struct kvt_rc_stats st;
	char from[64], to[64], addr[32];
	int a = master_index(0), b = master_index(1), status;
	unsigned next = 400;
	pid_t pid;

	start_cluster();
	a = master_index(0);
	b = master_index(1);
	CHECK(a >= 0 && b >= 0);
	t.r = open_remote(cl.seeds, NULL);
	CHECK(put_range(&t, 0, 400) == 400);
	CHECK(get_range(&t, 0, 400) == 400);
	snprintf(from, sizeof(from), "%s", node_id((unsigned)a));
	snprintf(to, sizeof(to), "%s", node_id((unsigned)b));
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", cl.port[a]);
	{
		const char *argv[] = {"redis-cli",
				      "--cluster",
				      "reshard",
				      addr,
				      "--cluster-from",
				      from,
				      "--cluster-to",
				      to,
				      "--cluster-slots",
				      "3000",
				      "--cluster-yes",
				      "--cluster-pipeline",
				      "4",
				      NULL};
		char log[300];

		snprintf(log, sizeof(log), "%s/reshard.log", cl.dir);
		pid = rh_spawn(argv, log);
		CHECK(pid > 0);
	}
	/* Traffic while slots and keys move: every block must stay readable. */
	for (uint64_t end = rh_now_ms() + 120000;;) {
		CHECK(rh_now_ms() < end);
		CHECK(get_range(&t, 0, 400) == 400);
		if (next < MAX_BLOCKS) {
			CHECK(put_range(&t, next, 16) == 16);
			next += 16;
		}
		if (waitpid(pid, &status, WNOHANG) == pid)
			break;
	}
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK(get_range(&t, 0, next) == next);
	kvt_rc_get_stats(kvt_remote_cluster(t.r), &st);
	report("reshard", &t);
	CHECK(st.moved > 0);
	CHECK(t.wrong == 0 && t.over == 0 && t.misses == 0);
	kvt_remote_close(t.r);
	rh_stop(&cl);
	return 0;
}

static void setslot(unsigned node, unsigned slot, const char *how, const char *id)
{
	redisReply *r = rh_cmd(cl.port[node], "CLUSTER SETSLOT %u %s %s", slot, how, id);

	CHECK(r && r->type == REDIS_REPLY_STATUS);
	freeReplyObject(r);
}

static int scenario_ask(void)
{
	struct traffic t = {.deadline_ms = 2000, .blk = BLK};
	struct kvt_rc_stats st;
	char name1[KVT_REMOTE_KEY_NAME], name2[KVT_REMOTE_KEY_NAME], ida[64], idb[64];
	struct kvt_remote_key k;
	unsigned slot, second = 0;
	int a, b;
	redisReply *r;

	start_cluster();
	t.r = open_remote(cl.seeds, NULL);
	CHECK(put_range(&t, 0, 1) == 1);
	mk_key(0, &k);
	kvt_remote_key_name(&k, name1);
	slot = kvt_rc_keyslot(name1, strlen(name1));
	a = rh_slot_owner(&cl, 0, slot);
	CHECK(a >= 0);
	b = master_index(0) == a ? master_index(1) : master_index(0);
	CHECK(b >= 0);
	/* Another block in the same slot (found by search: our names carry no hash tag). */
	for (unsigned i = 1; i < 1000000 && !second; i++) {
		mk_key(i, &k);
		kvt_remote_key_name(&k, name2);
		if (kvt_rc_keyslot(name2, strlen(name2)) == slot)
			second = i;
	}
	CHECK(second);
	snprintf(ida, sizeof(ida), "%s", node_id((unsigned)a));
	snprintf(idb, sizeof(idb), "%s", node_id((unsigned)b));
	setslot((unsigned)b, slot, "IMPORTING", ida);
	setslot((unsigned)a, slot, "MIGRATING", idb);
	/* A new block of the migrating slot: a answers ASK, the client asks b with ASKING. */
	CHECK(put_range(&t, second, 1) == 1);
	kvt_rc_get_stats(kvt_remote_cluster(t.r), &st);
	CHECK(st.ask >= 1);
	CHECK(get_range(&t, second, 1) == 1);
	CHECK(get_range(&t, 0, 1) == 1); /* still on a */
	/* Move the first block; a now answers ASK for it too. */
	r = rh_cmd(cl.port[a], "MIGRATE 127.0.0.1 %d %s 0 5000 KEYS %s", cl.port[b], "", name1);
	CHECK(r && r->type == REDIS_REPLY_STATUS);
	freeReplyObject(r);
	CHECK(get_range(&t, 0, 1) == 1);
	kvt_rc_get_stats(kvt_remote_cluster(t.r), &st);
	CHECK(st.ask >= 3);
	CHECK(st.moved == 0);
	/* The slot is b's: the client's map still says a, so MOVED. */
	setslot((unsigned)b, slot, "NODE", idb);
	for (unsigned i = 0; i < cl.n; i++)
		if ((int)i != b && rh_is_master(&cl, i))
			setslot(i, slot, "NODE", idb);
	CHECK(get_range(&t, 0, 1) == 1);
	CHECK(get_range(&t, second, 1) == 1);
	kvt_rc_get_stats(kvt_remote_cluster(t.r), &st);
	CHECK(st.moved >= 1);
	report("ask", &t);
	CHECK(t.wrong == 0 && t.over == 0 && t.misses == 0);
	kvt_remote_close(t.r);
	rh_stop(&cl);
	return 0;
}

/*
 * The shape of every fault: blocks stored and replicated, all served; inject(); traffic
 * (gets of the stored blocks, puts of new ones) until recovered() says the cluster is back,
 * under a bound; then every stored block must be served within RECOVERY_MS, and again.
 */
struct fault {
	const char *name;
	void (*inject)(void);
	bool (*recovered)(void); /* polled between traffic rounds */
	void (*heal)(void);	 /* after recovery, may be NULL; another recovery follows */
	bool lost_ok;		 /* stored blocks may be lost (every master died) */
	unsigned deadline_ms;
};

static int victim = -1;
static uint64_t fault_t0;

static bool cluster_ok(void)
{
	return rh_wait_healthy(&cl, 0) == 0;
}

static void await_service(struct traffic *t, unsigned nblocks, bool lost_ok, const char *when)
{
	uint64_t t0 = rh_now_ms(), ms;

	/* The cluster is back (polled): every stored block must be served within RECOVERY_MS
	 * (or, where the stored blocks died with every master, new ones must go in and out). */
	for (;;) {
		bool ok;

		if (lost_ok) {
			get_range(t, 0, nblocks); /* lost ones miss; any hit is checked */
			ok = put_range(t, MAX_BLOCKS - 64, 32) == 32 &&
			     get_range(t, MAX_BLOCKS - 64, 32) == 32;
		} else {
			ok = get_range(t, 0, nblocks) == nblocks;
		}
		if (ok)
			break;
		CHECK(rh_now_ms() - t0 <= RECOVERY_MS);
	}
	ms = rh_now_ms() - t0;
	printf("%s: service back %llu ms after the cluster\n", when, (unsigned long long)ms);
	CHECK(ms <= RECOVERY_MS);
}

static int run_fault(const struct fault *f)
{
	struct traffic t = {.deadline_ms = f->deadline_ms, .blk = BLK};
	const unsigned nblocks = 192;
	unsigned next = nblocks, rounds = 0;
	uint64_t miss_before;

	start_cluster();
	t.r = open_remote(cl.seeds, NULL);
	CHECK(put_range(&t, 0, nblocks) == nblocks);
	CHECK(rh_wait_synced(&cl, 20000) == 0);
	CHECK(get_range(&t, 0, nblocks) == nblocks);
	CHECK(t.misses == 0);

	fault_t0 = rh_now_ms();
	f->inject();
	miss_before = t.misses;
	for (;;) {
		CHECK(rh_now_ms() - fault_t0 < FAULT_MAX_MS);
		get_range(&t, 0, nblocks);
		if (next + 16 < MAX_BLOCKS - 64) {
			put_range(&t, next, 16);
			next += 16;
		}
		rounds++;
		if (f->recovered())
			break;
	}
	printf("%s: cluster recovered %llu ms after the fault, %u rounds, %llu misses meanwhile\n",
	       f->name, (unsigned long long)(rh_now_ms() - fault_t0), rounds,
	       (unsigned long long)(t.misses - miss_before));
	await_service(&t, nblocks, f->lost_ok, f->name);
	if (f->heal) {
		f->heal();
		CHECK(rh_wait_healthy(&cl, FAULT_MAX_MS) == 0);
		await_service(&t, nblocks, f->lost_ok, "after heal");
	}
	/* Nothing missing now, and new blocks go in and come back. */
	miss_before = t.misses;
	if (!f->lost_ok)
		CHECK(get_range(&t, 0, nblocks) == nblocks);
	CHECK(put_range(&t, MAX_BLOCKS - 32, 32) == 32);
	CHECK(get_range(&t, MAX_BLOCKS - 32, 32) == 32);
	if (!f->lost_ok)
		CHECK(t.misses == miss_before);
	report(f->name, &t);
	CHECK(t.wrong == 0);
	CHECK(t.over == 0);
	kvt_remote_close(t.r);
	rh_stop(&cl);
	return 0;
}

static void kill_victim(void)
{
	victim = master_index(0);
	CHECK(victim >= 0);
	rh_node_signal(&cl, (unsigned)victim, SIGKILL);
}

static void restart_victim(void)
{
	CHECK(rh_node_start(&cl, (unsigned)victim) == 0);
}

static void stop_victim(void)
{
	victim = master_index(1);
	CHECK(victim >= 0);
	rh_node_signal(&cl, (unsigned)victim, SIGSTOP);
}

static void cont_victim(void)
{
	rh_node_signal(&cl, (unsigned)victim, SIGCONT);
}

static int masters_killed[3];

static void kill_masters(void)
{
	int m[3];

	for (int i = 0; i < 3; i++)
		CHECK((m[i] = master_index((unsigned)i)) >= 0);
	for (int i = 0; i < 3; i++) {
		masters_killed[i] = m[i];
		rh_node_signal(&cl, (unsigned)m[i], SIGKILL);
	}
}

/* Every master down: no failover is possible (no majority to vote); the fault lasts until
 * the test restarts them, after traffic has seen it for a while. */
static bool masters_back(void)
{
	if (rh_now_ms() - fault_t0 < 3000)
		return false;
	if (cl.pid[masters_killed[0]] < 0)
		for (int i = 0; i < 3; i++)
			CHECK(rh_node_start(&cl, (unsigned)masters_killed[i]) == 0);
	return cluster_ok();
}

/* ---- the fault-injecting proxy ---- */

enum { PX_PASS, PX_DROP, PX_DELAY };

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int mode;
	unsigned delay_ms;
	int lfd, port, target;
	volatile bool quit;
} px = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

struct px_pipe {
	int from, to;
};

static void *px_pump(void *arg)
{
	struct px_pipe p = *(struct px_pipe *)arg;
	char *buf = malloc(1 << 16);

	free(arg);
	while (buf && !px.quit) {
		ssize_t n = recv(p.from, buf, 1 << 16, 0), off = 0;
		unsigned delay;

		if (n <= 0)
			break;
		pthread_mutex_lock(&px.mu);
		while (px.mode == PX_DROP && !px.quit)
			pthread_cond_wait(&px.cv, &px.mu); /* a partition: bytes go nowhere */
		delay = px.mode == PX_DELAY ? px.delay_ms : 0;
		pthread_mutex_unlock(&px.mu);
		if (delay) {
			struct timespec ts = {delay / 1000, (long)(delay % 1000) * 1000000};

			nanosleep(&ts, NULL); /* the injected latency itself */
		}
		while (off < n) {
			ssize_t w = send(p.to, buf + off, (size_t)(n - off), MSG_NOSIGNAL);

			if (w <= 0)
				goto out;
			off += w;
		}
	}
out:
	shutdown(p.from, SHUT_RDWR);
	shutdown(p.to, SHUT_RDWR);
	free(buf);
	return NULL;
}

static void *px_main(void *arg)
{
	(void)arg;
	while (!px.quit) {
		struct pollfd p = {.fd = px.lfd, .events = POLLIN};
		struct sockaddr_in a = {.sin_family = AF_INET};
		struct px_pipe *up, *down;
		pthread_t th;
		int c, s;

		if (poll(&p, 1, 50) <= 0)
			continue;
		c = accept(px.lfd, NULL, NULL);
		if (c < 0)
			continue;
		s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		a.sin_port = htons((uint16_t)px.target);
		if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) < 0) {
			close(c);
			if (s >= 0)
				close(s);
			continue;
		}
		up = malloc(sizeof(*up));
		down = malloc(sizeof(*down));
		CHECK(up && down);
		*up = (struct px_pipe){c, s};
		*down = (struct px_pipe){s, c};
		CHECK(pthread_create(&th, NULL, px_pump, up) == 0);
		pthread_detach(th);
		CHECK(pthread_create(&th, NULL, px_pump, down) == 0);
		pthread_detach(th);
	}
	return NULL;
}

static void px_set(int mode, unsigned delay_ms)
{
	pthread_mutex_lock(&px.mu);
	px.mode = mode;
	px.delay_ms = delay_ms;
	pthread_cond_broadcast(&px.cv);
	pthread_mutex_unlock(&px.mu);
}

/* Does every node announce the proxied master on the proxy's port? */
static bool announced(int port)
{
	for (unsigned i = 0; i < cl.n; i++) {
		redisReply *r = rh_cmd(cl.port[i], "CLUSTER NODES");
		char needle[32];
		bool ok;

		snprintf(needle, sizeof(needle), ":%d@", port);
		ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, needle);
		if (r)
			freeReplyObject(r);
		if (!ok)
			return false;
	}
	return true;
}

static int scenario_proxy(void)
{
	struct traffic t = {.deadline_ms = 300, .blk = BLK};
	const unsigned nblocks = 192;
	char seeds[256] = "";
	pthread_t th;
	unsigned hits;
	uint64_t t0, miss0;
	redisReply *r;
	int m;

	start_cluster();
	m = master_index(0);
	CHECK(m >= 0);
	px.lfd = listen_any(&px.port);
	px.target = cl.port[m];
	CHECK(pthread_create(&th, NULL, px_main, NULL) == 0);
	r = rh_cmd(cl.port[m], "CONFIG SET cluster-announce-port %d", px.port);
	CHECK(r && r->type == REDIS_REPLY_STATUS);
	freeReplyObject(r);
	for (t0 = rh_now_ms(); !announced(px.port);)
		CHECK(rh_now_ms() - t0 < 20000);
	/* Seeds without the proxied master: the client reaches it only through the proxy. */
	for (unsigned i = 0; i < cl.n; i++)
		if ((int)i != m)
			snprintf(seeds + strlen(seeds), sizeof(seeds) - strlen(seeds),
				 "%s127.0.0.1:%d", seeds[0] ? "," : "", cl.port[i]);
	t.r = open_remote(seeds, NULL);
	CHECK(put_range(&t, 0, nblocks) == nblocks);
	CHECK(get_range(&t, 0, nblocks) == nblocks);
	{
		struct kvt_rc_node_info info[8];
		unsigned nn = kvt_rc_nodes(kvt_remote_cluster(t.r), info, 8);
		char want[32];
		bool seen = false;

		snprintf(want, sizeof(want), "127.0.0.1:%d", px.port);
		for (unsigned i = 0; i < nn && i < 8; i++)
			seen |= !strcmp(info[i].addr, want) && info[i].slots > 0 &&
				info[i].bytes_in > 0;
		CHECK(seen);
	}

	/* Dropped: that shard's blocks miss within the deadline, the others are served. */
	px_set(PX_DROP, 0);
	miss0 = t.misses;
	for (int round = 0; round < 6; round++) {
		hits = get_range(&t, 0, nblocks);
		CHECK(hits > 0 && hits < nblocks);
	}
	CHECK(t.misses > miss0);
	px_set(PX_PASS, 0);
	await_service(&t, nblocks, false, "proxy drop healed");

	/* Delayed past the deadline: misses again; a short delay is served. */
	px_set(PX_DELAY, 2 * t.deadline_ms);
	for (int round = 0; round < 4; round++) {
		hits = get_range(&t, 0, nblocks);
		CHECK(hits < nblocks);
	}
	px_set(PX_DELAY, 5);
	await_service(&t, nblocks, false, "proxy short delay");
	px_set(PX_PASS, 0);
	await_service(&t, nblocks, false, "proxy delay healed");
	CHECK(put_range(&t, 1000, 32) == 32);
	CHECK(get_range(&t, 1000, 32) == 32);
	report("proxy", &t);
	CHECK(t.wrong == 0 && t.over == 0);
	kvt_remote_close(t.r);
	px.quit = true;
	px_set(PX_PASS, 0);
	pthread_join(th, NULL);
	close(px.lfd);
	rh_stop(&cl);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct fault kill_f = {"kill",	    kill_victim, cluster_ok,
					    restart_victim, false,	 500};
	static const struct fault stop_f = {"stop",	 stop_victim, cluster_ok,
					    cont_victim, false,	      500};
	static const struct fault alldown_f = {"alldown", kill_masters, masters_back,
					       NULL,	  true,		500};
	const char *s = argc > 1 ? argv[1] : "";

	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	salt = ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL);
	if (argc > 2)
		salt = strtoull(argv[2], NULL, 0);
	printf("test_remote %s, salt 0x%llx (pass it as the second argument to repeat)\n", s,
	       (unsigned long long)salt);
	if (!strcmp(s, "malformed"))
		return scenario_malformed();
	if (!rh_available()) {
		printf("redis-server or redis-cli not installed: skipped\n");
		return 77;
	}
	if (!strcmp(s, "standalone"))
		return scenario_standalone();
	if (!strcmp(s, "slots"))
		return scenario_slots();
	if (!strcmp(s, "reshard"))
		return scenario_reshard();
	if (!strcmp(s, "ask"))
		return scenario_ask();
	if (!strcmp(s, "kill"))
		return run_fault(&kill_f);
	if (!strcmp(s, "stop"))
		return run_fault(&stop_f);
	if (!strcmp(s, "alldown"))
		return run_fault(&alldown_f);
	if (!strcmp(s, "proxy"))
		return scenario_proxy();
	fprintf(stderr, "usage: test_remote standalone|malformed|slots|reshard|ask|kill|stop|"
			"alldown|proxy [salt]\n");
	return 2;
}
