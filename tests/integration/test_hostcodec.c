/* SPDX-License-Identifier: MIT */
/*
 * Integration tests of the compressed host tier (issue 15 item 2, README "Compressed host
 * tier"), each against a real kvtierd in a temporary directory:
 *   roundtrip    kvt_put/kvt_put_at/kvt_get, the batches, leases and kvt_lease_decode
 *                through host.codec = bq: every value is the chain's own decode of the same
 *                block (bit for bit), within bq's bound of the original; the lease names the
 *                chain and holds the record; kvtierctl tiers counts the encoded blocks
 *   mixed        partial blocks and kvt_put_reserve blocks (raw) beside encoded ones: each
 *                read back as it was stored, also from NVMe and after a daemon restart
 *   capacity     the same host.capacity holds about ratio times more bq blocks than raw ones
 *   corrupt      a record damaged in the arena is -EBADMSG for kvt_get, kvt_get_batch and
 *                kvt_lease_decode, never wrong data
 *   config       host.codec that is no chain, or not a GPU-speed one, stops the daemon with
 *                a message that says so
 *   raw_ring     a client of its own rings: a reservation naming a chain the daemon did not
 *                name is -ESTALE, a commit of bytes that are not the announced record is
 *                -EBADMSG and stores nothing, a true record is served
 *
 * usage: test_hostcodec KVTIERD KVTIERCTL [TEST...]
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "codec.h"
#include "harness.h"
#include "kvt_half.h"
#include "kvt_proto.h"
#include "kvt_ring.h"
#include "kvtier.h"

static const char *kvtierd, *kvtierctl;
static char dir[256], sock[300], slots[300], logpath[300];
static int last_exit;
static pid_t cur;

/* 4 layers x 4 KV heads x 32 tokens x 128: 256 KiB blocks, large against a 4 KiB page. */
static const struct kvt_layout lay_def = {
    sizeof(struct kvt_layout), 4, 4, 128, 32, KVT_DTYPE_FP16, 0, 0, 1, "hostcodec-test"};
#define BLOCK (4u * 2 * 4 * 32 * 128 * 2)
#define BQ    "bq"

static void kill9(pid_t pid)
{
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	cur = 0;
}

/* kvtierd with the given -o options (NULL-terminated), stderr in logpath: its pid once it
 * answers, or -1 when it exited (last_exit: its status). */
static pid_t start(const char *first, ...)
{
	const char *argv[40] = {kvtierd, "-f", "-s", sock, "-o", "daemon.log_level=info"};
	int argc = 6;
	va_list ap;
	pid_t pid;

	if (cur > 0)
		kill9(cur);
	va_start(ap, first);
	for (const char *a = first; a && argc < 36; a = va_arg(ap, const char *)) {
		argv[argc++] = "-o";
		argv[argc++] = a;
	}
	va_end(ap);
	argv[argc] = NULL;
	unlink(sock);
	pid = fork();
	if (pid == 0) {
		kvt_test_stderr_to(logpath);
		execv(kvtierd, (char **)argv);
		_exit(127);
	}
	for (;;) {
		struct stat st;
		int ws;

		if (waitpid(pid, &ws, WNOHANG) == pid) {
			last_exit = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
			return -1;
		}
		if (stat(sock, &st) == 0 &&
		    kvt_test_ctl_num(kvtierctl, sock, "status", NULL, "nvme_recovering") >= -1 &&
		    kvt_test_ctl_num(kvtierctl, sock, "status", NULL, "nvme_recovering") <= 0)
			return cur = pid;
		usleep(5000);
	}
}

static int stop(pid_t pid)
{
	cur = 0;
	return kvt_test_daemon_stop(pid);
}

static bool log_has(const char *s)
{
	char cmd[400];
	int rc;
	char *t;
	bool r;

	snprintf(cmd, sizeof(cmd), "cat %s", logpath);
	t = kvt_test_run(&rc, cmd);
	r = t && strstr(t, s);
	if (!r)
		fprintf(stderr, "log lacks \"%s\":\n%s\n", s, t ? t : "(none)");
	free(t);
	return r;
}

static struct kvt_client *client(int *lay)
{
	struct kvt_connect_opts o = {sizeof(o), sock, "test_hostcodec", 0, 0, 0};
	struct kvt_client *c = NULL;

	if (kvt_connect(&o, &c) < 0)
		return NULL;
	*lay = kvt_register_layout(c, &lay_def);
	return c;
}

/* Block k: smooth K/V-like fp16 values (per channel a scale and an offset, a slow walk over
 * tokens), the same for the same k. */
static void make_block(uint16_t *b, unsigned k)
{
	size_t n = BLOCK / 2, i = 0;
	uint64_t s = 0x9e3779b97f4a7c15ull * (k + 1);

	for (unsigned l = 0; l < 4; l++)
		for (unsigned kv = 0; kv < 2; kv++)
			for (unsigned h = 0; h < 4; h++)
				for (unsigned t = 0; t < 32; t++)
					for (unsigned d = 0; d < 128; d++) {
						float ch =
						    (float)(d % 17) * 0.11f + 0.2f * (float)h;
						float v;

						s ^= s << 13, s ^= s >> 7, s ^= s << 17;
						v = sinf(0.05f * (float)(t + 32 * k) + ch) *
							(0.5f + (float)(d % 7)) +
						    0.02f * (float)(int)(s % 101 - 50) * 0.1f;
						b[i++] = kvt_float_to_half(kv ? v * 0.3f : v);
					}
	(void)n;
}

static struct kvt_key key_of(unsigned i)
{
	return (struct kvt_key){0x5151000000000000ull + i, 0x77770000ull ^ (i * 2654435761u)};
}

/* What the chain gives back for block k at first_token pos: encode, then decode, here. */
static void expect_block(const struct kvt_chain *ch, unsigned k, uint32_t pos, uint16_t *out)
{
	static uint8_t rec[2 * BLOCK];
	uint16_t raw[BLOCK / 2];
	struct kvt_codec_geom g = {4, 4, 128, 32, KVT_DTYPE_FP16, pos == KVT_POS_UNKNOWN ? 0 : pos};
	ssize_t n;

	make_block(raw, k);
	n = kvt_chain_encode(ch, &g, raw, BLOCK, rec, sizeof(rec));
	if (n < 0 || kvt_chain_decode(ch, rec, (size_t)n, out, BLOCK, NULL) != BLOCK)
		memset(out, 0xff, BLOCK);
}

/* Max |decoded - original| of block k relative to its largest |value|. */
static double rel_err(const uint16_t *dec, unsigned k)
{
	uint16_t raw[BLOCK / 2];
	double mx = 0, amax = 0;

	make_block(raw, k);
	for (size_t i = 0; i < BLOCK / 2; i++) {
		double a = kvt_half_to_float(raw[i]), e = fabs(kvt_half_to_float(dec[i]) - a);

		mx = e > mx ? e : mx;
		amax = fabs(a) > amax ? fabs(a) : amax;
	}
	return mx / amax;
}

static long long host_num(const char *name)
{
	return kvt_test_ctl_num(kvtierctl, sock, "tiers", "\"name\":\"host\"", name);
}

/* ------------------------------------------------------------------------------------- */

static void roundtrip(void)
{
	enum { N = 12, NB = 8 };
	static uint16_t raw[BLOCK / 2], got[BLOCK / 2], want[BLOCK / 2], bufs[NB][BLOCK / 2];
	struct kvt_chain *ch = NULL;
	struct kvt_client *c = NULL;
	struct kvt_key keys[NB];
	const void *data[NB];
	void *outs[NB];
	uint32_t pos[NB];
	int st[NB], lay = -1;
	struct kvt_lease l;
	pid_t pid;

	CHECK_EQ(kvt_chain_parse(BQ, &ch), 0);
	pid = start("host.codec=" BQ, "host.capacity=64MiB", NULL);
	CHECK(pid > 0);
	c = client(&lay);
	CHECK(c && lay >= 0);
	for (unsigned k = 0; k < N; k++) {
		struct kvt_key key = key_of(k);

		make_block(raw, k);
		CHECK_EQ(k & 1 ? kvt_put_at(c, lay, &key, 32 * k, raw, BLOCK)
			       : kvt_put(c, lay, &key, raw, BLOCK),
			 0);
	}
	for (unsigned k = 0; k < N; k++) {
		struct kvt_key key = key_of(k);

		expect_block(ch, k, k & 1 ? 32 * k : KVT_POS_UNKNOWN, want);
		memset(got, 0, sizeof(got));
		CHECK_EQ(kvt_get(c, lay, &key, got, sizeof(got)), BLOCK);
		CHECK(memcmp(got, want, BLOCK) == 0);
		CHECK(rel_err(got, k) < 0.05);
		/* too small a buffer: nothing written */
		CHECK_EQ(kvt_get(c, lay, &key, got, BLOCK - 1), -ENOBUFS);
		/* the lease: the record, its chain, the raw length; decoded by the helper */
		CHECK_EQ(kvt_get_lease(c, lay, &key, &l), 0);
		CHECK_EQ(l.chain_id, kvt_chain_id(ch));
		CHECK_EQ(l.raw_len, BLOCK);
		CHECK(l.len < BLOCK / 2);
		memset(got, 0, sizeof(got));
		CHECK_EQ(kvt_lease_decode(c, &l, got, sizeof(got)), BLOCK);
		CHECK(memcmp(got, want, BLOCK) == 0);
		CHECK_EQ(kvt_lease_decode(c, &l, got, 100), -ENOBUFS);
		CHECK_EQ(kvt_lease_release(c, &l), 0);
	}
	/* batches: puts encoded in the library, gets decoded into each buffer */
	for (unsigned i = 0; i < NB; i++) {
		keys[i] = key_of(100 + i);
		make_block(bufs[i], 100 + i);
		data[i] = bufs[i];
		pos[i] = 64 * i;
		outs[i] = bufs[i];
	}
	CHECK_EQ(kvt_put_batch(c, lay, keys, data, pos, BLOCK, NB, st), NB);
	for (unsigned i = 0; i < NB; i++)
		CHECK_EQ(st[i], 0);
	memset(bufs, 0, sizeof(bufs));
	CHECK_EQ(kvt_get_batch(c, lay, keys, outs, BLOCK, NB, st), NB);
	for (unsigned i = 0; i < NB; i++) {
		CHECK_EQ(st[i], BLOCK);
		expect_block(ch, 100 + i, 64 * i, want);
		CHECK(memcmp(bufs[i], want, BLOCK) == 0);
	}
	CHECK_EQ(kvt_get_batch(c, lay, keys, outs, BLOCK - 2, 1, st), 0);
	CHECK_EQ(st[0], -ENOBUFS);
	/* the operator's view: every block encoded, stored smaller than raw */
	CHECK_EQ(host_num("encoded_blocks"), N + NB);
	CHECK_EQ(host_num("raw_bytes"), (long long)(N + NB) * BLOCK);
	CHECK(host_num("stored_bytes") * 2 < host_num("raw_bytes"));
	kvt_close(c);
	c = NULL;
	CHECK_EQ(stop(pid), 0);
	kvt_chain_free(ch);
}

/* Partial and reserved blocks stay raw beside encoded ones, in RAM, on NVMe, after a restart. */
static int check_mixed(struct kvt_client *c, int lay, const struct kvt_chain *ch)
{
	static uint16_t got[BLOCK / 2], want[BLOCK / 2];
	struct kvt_lease l;

	for (unsigned k = 0; k < 24; k++) {
		struct kvt_key key = key_of(k);
		ssize_t n = kvt_get(c, lay, &key, got, sizeof(got));

		if (k % 3 == 0) { /* encoded */
			expect_block(ch, k, KVT_POS_UNKNOWN, want);
			if (n != BLOCK || memcmp(got, want, BLOCK))
				return fprintf(stderr, "block %u (encoded): %zd\n", k, n), -1;
		} else { /* raw: exact */
			size_t len = k % 3 == 1 ? BLOCK / 2 : BLOCK;

			make_block(want, k);
			if (n != (ssize_t)len || memcmp(got, want, len))
				return fprintf(stderr, "block %u (raw): %zd\n", k, n), -1;
			if (kvt_get_lease(c, lay, &key, &l) < 0 || l.chain_id || l.raw_len != len ||
			    l.len != len)
				return fprintf(stderr, "block %u: lease\n", k), -1;
			kvt_lease_release(c, &l);
		}
	}
	return 0;
}

static void mixed(void)
{
	static uint16_t raw[BLOCK / 2];
	struct kvt_chain *ch = NULL;
	struct kvt_client *c = NULL;
	char nv[400];
	int lay = -1, rc;
	char *out;
	pid_t pid;

	CHECK_EQ(kvt_chain_parse(BQ, &ch), 0);
	snprintf(nv, sizeof(nv), "nvme.paths=%s", slots);
	pid = start("host.codec=" BQ, "host.capacity=32MiB", "nvme.enabled=true",
		    "nvme.capacity=64MiB", "nvme.direct=false", nv, NULL);
	CHECK(pid > 0);
	c = client(&lay);
	CHECK(c && lay >= 0);
	/* whole blocks of the layout are coded (kvt_put_reserve's too would not be) */
	CHECK_EQ(kvt_put_encodes(c, lay), 1);
	CHECK_EQ(kvt_put_encodes(c, lay + 7), -EINVAL);
	for (unsigned k = 0; k < 24; k++) {
		struct kvt_key key = key_of(k);
		struct kvt_reservation r;

		make_block(raw, k);
		if (k % 3 == 0) {
			CHECK_EQ(kvt_put(c, lay, &key, raw, BLOCK), 0);
		} else if (k % 3 == 1) { /* a partial block: no chain codes it */
			CHECK_EQ(kvt_put(c, lay, &key, raw, BLOCK / 2), 0);
		} else { /* zero copy: stored raw */
			CHECK_EQ(kvt_put_reserve(c, lay, &key, BLOCK, &r), 0);
			memcpy(r.data, raw, BLOCK);
			CHECK_EQ(kvt_put_commit(c, &r), 0);
		}
	}
	CHECK_EQ(host_num("encoded_blocks"), 8);
	CHECK_EQ(check_mixed(c, lay, ch), 0);
	/* down to NVMe (the records as they are), and back up on a get */
	out = kvt_test_ctl(&rc, kvtierctl, sock, "writeback");
	free(out);
	CHECK_EQ(rc, 0);
	while (kvt_test_ctl_num(kvtierctl, sock, "tiers", "\"name\":\"nvme\"", "blocks") < 24)
		usleep(2000);
	out = kvt_test_ctl(&rc, kvtierctl, sock, "evict --all");
	free(out);
	CHECK_EQ(rc, 0);
	CHECK_EQ(host_num("blocks"), 0);
	CHECK_EQ(check_mixed(c, lay, ch), 0);
	CHECK_EQ(host_num("encoded_blocks"), 8);
	kvt_close(c);
	c = NULL;
	CHECK_EQ(stop(pid), 0);
	/* a new daemon finds every record and serves each in its own form */
	pid = start("host.codec=" BQ, "host.capacity=32MiB", "nvme.enabled=true",
		    "nvme.capacity=64MiB", "nvme.direct=false", nv, NULL);
	CHECK(pid > 0);
	c = client(&lay);
	CHECK(c && lay >= 0);
	CHECK_EQ(kvt_test_ctl_num(kvtierctl, sock, "status", NULL, "nvme_recovered_total"), 24);
	CHECK_EQ(check_mixed(c, lay, ch), 0);
	CHECK_EQ(host_num("encoded_blocks"), 8);
	kvt_close(c);
	c = NULL;
	CHECK_EQ(stop(pid), 0);
	/* host.codec changed to raw: the bq records are of no chain it knows, dropped at start
	 * (misses), the raw ones served */
	pid = start("host.capacity=32MiB", "nvme.enabled=true", "nvme.capacity=64MiB",
		    "nvme.direct=false", nv, NULL);
	CHECK(pid > 0);
	c = client(&lay);
	CHECK(c && lay >= 0);
	CHECK_EQ(kvt_put_encodes(c, lay), 0);
	for (unsigned k = 0; k < 24; k++) {
		static uint16_t got[BLOCK / 2];
		struct kvt_key key = key_of(k);

		CHECK_EQ(kvt_get(c, lay, &key, got, sizeof(got)), k % 3 == 0   ? -ENOENT
								  : k % 3 == 1 ? (int)BLOCK / 2
									       : (int)BLOCK);
	}
	kvt_close(c);
	c = NULL;
	CHECK_EQ(stop(pid), 0);
	unlink(slots);
	kvt_chain_free(ch);
}

/* The number name in text after `"name":"host"`, or -1. */
static long long num_in(const char *text, const char *name)
{
	char pat[80];
	const char *p = text ? strstr(text, "\"name\":\"host\"") : NULL;

	snprintf(pat, sizeof(pat), "\"%s\":", name);
	p = p ? strstr(p, pat) : NULL;
	return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

/* Blocks the host tier holds after n puts into host.capacity=cap with host.codec=codec. */
static long long resident(const char *codec, unsigned n, double *ratio, long long *used_out)
{
	static uint16_t raw[BLOCK / 2];
	struct kvt_client *c;
	long long blocks = -1;
	int lay = -1;
	pid_t pid = start(codec, "host.capacity=8MiB", NULL);

	if (pid < 0)
		return -1;
	c = client(&lay);
	if (c && lay >= 0) {
		for (unsigned k = 0; k < n; k++) {
			struct kvt_key key = key_of(k);

			make_block(raw, k);
			if (kvt_put(c, lay, &key, raw, BLOCK) < 0)
				break;
		}
		/* The tick's watermark pass may still evict (down to the low watermark) once
		 * use is above the high one: wait until it is not, then read one snapshot. */
		for (;;) {
			int rc;
			char *t = kvt_test_ctl(&rc, kvtierctl, sock, "--json tiers");
			long long used = num_in(t, "used_bytes"), cap = num_in(t, "capacity_bytes");

			if (rc == 0 && used >= 0 && cap > 0 && (double)used <= 0.95 * (double)cap) {
				blocks = num_in(t, "blocks");
				*used_out = used;
				*ratio = (double)num_in(t, "raw_bytes") /
					 (double)num_in(t, "stored_bytes");
				free(t);
				break;
			}
			free(t);
			if (rc != 0)
				break;
			usleep(2000);
		}
		fprintf(stderr, "%s: %lld blocks of %u resident, ratio %.2f\n", codec, blocks, n,
			*ratio);
	}
	kvt_close(c);
	stop(pid);
	return blocks;
}

static void capacity(void)
{
	double r1 = 0, r2 = 0;
	long long u1 = 0, u2 = 0, raw = resident("host.codec=raw", 128, &r1, &u1),
		  bq = resident("host.codec=" BQ, 128, &r2, &u2);

	/* 8 MiB holds at most 32 raw blocks; whether the tick's pass has evicted down to the
	 * low watermark yet or not, the blocks a byte of the tier holds grow by the ratio, less
	 * what rounding records up to whole pages costs (under 1 page of about 20) */
	CHECK(raw > 0 && raw <= 32 && raw < 128 && bq < 128);
	CHECK(r1 == 1.0);
	CHECK(r2 > 2);
	CHECK((double)bq / (double)u2 >= 0.9 * r2 * (double)raw / (double)u1);
	CHECK(bq >= 2 * raw);
}

static void corrupt(void)
{
	static uint16_t raw[BLOCK / 2], got[BLOCK / 2];
	struct kvt_client *c = NULL;
	struct kvt_key key = key_of(7), keys[1] = {key_of(7)};
	void *outs[1] = {got};
	struct kvt_lease l;
	uint8_t *rec;
	int lay = -1, st[1];
	pid_t pid = start("host.codec=" BQ, "host.capacity=16MiB", NULL);

	CHECK(pid > 0);
	c = client(&lay);
	CHECK(c && lay >= 0);
	make_block(raw, 7);
	CHECK_EQ(kvt_put(c, lay, &key, raw, BLOCK), 0);
	CHECK_EQ(kvt_get_lease(c, lay, &key, &l), 0);
	/* another process of the tenant (its arena is writable to it) damages the record:
	 * the slab offsets of bq's stage, then the header's chain id */
	rec = (uint8_t *)(uintptr_t)l.data;
	rec[KVT_CHAIN_HDR_SIZE + 8] ^= 0x5a;
	memset(got, 0, sizeof(got));
	CHECK_EQ(kvt_lease_decode(c, &l, got, sizeof(got)), -EBADMSG);
	CHECK_EQ(kvt_get(c, lay, &key, got, sizeof(got)), -EBADMSG);
	CHECK_EQ(kvt_get_batch(c, lay, keys, outs, BLOCK, 1, st), 0);
	CHECK_EQ(st[0], -EBADMSG);
	rec[KVT_CHAIN_HDR_SIZE + 8] ^= 0x5a;
	CHECK_EQ(kvt_lease_decode(c, &l, got, sizeof(got)), BLOCK);
	rec[4] ^= 1; /* chain id */
	CHECK_EQ(kvt_lease_decode(c, &l, got, sizeof(got)), -EBADMSG);
	CHECK_EQ(kvt_get(c, lay, &key, got, sizeof(got)), -EBADMSG);
	CHECK_EQ(kvt_get_lease(c, lay, &key, &l), -EBADMSG);
	kvt_close(c);
	CHECK_EQ(stop(pid), 0);
}

static void config(void)
{
	CHECK_EQ(start("host.codec=lz4", NULL), -1);
	CHECK(last_exit != 0);
	CHECK(log_has("not a GPU-speed chain"));
	CHECK_EQ(start("host.codec=kivi:k=4,v=4+rans", NULL), -1);
	CHECK(log_has("not a GPU-speed chain"));
	CHECK_EQ(start("host.codec=bq+zstd:1", NULL), -1);
	CHECK(log_has("not a GPU-speed chain"));
	CHECK_EQ(start("host.codec=nosuch", NULL), -1);
	CHECK(log_has("not a codec chain"));
	CHECK_EQ(start("host.codec=bq:k=zz", NULL), -1);
	CHECK(log_has("not a codec chain"));
}

/* A hand-driven client: its socket, rings and arena. */
struct raw {
	int fd, fds[KVT_HELLO_NFDS];
	uint8_t *ring, *arena;
	size_t ring_size, arena_size;
	struct kvt_ring_ctl *sq, *cq;
	struct kvt_sqe *sqe;
	struct kvt_cqe *cqe;
	uint32_t sq_tail, cq_head, sq_n, cq_n;
};

static int raw_open(struct raw *r)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct kvt_msg_hello h;
	struct kvt_msg_hello_reply rep;
	union {
		char buf[CMSG_SPACE(sizeof(int) * KVT_HELLO_NFDS)];
		struct cmsghdr a;
	} u;
	struct iovec iov = {&rep, sizeof(rep)};
	struct msghdr mh = {.msg_iov = &iov,
			    .msg_iovlen = 1,
			    .msg_control = u.buf,
			    .msg_controllen = sizeof(u.buf)};
	struct kvt_shm_hdr *sh;

	memset(r, 0, sizeof(*r));
	r->fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	if (strlen(sock) >= sizeof(sa.sun_path))
		return -1;
	memcpy(sa.sun_path, sock, strlen(sock) + 1);
	if (connect(r->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return -1;
	memset(&h, 0, sizeof(h));
	kvt_msg_init(&h.h, KVT_MSG_HELLO, sizeof(h));
	h.lib_version = KVT_VERSION_NUMBER;
	if (send(r->fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
	    recvmsg(r->fd, &mh, 0) != (ssize_t)sizeof(rep) || rep.res < 0)
		return -1;
	memcpy(r->fds, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(r->fds));
	r->ring_size = rep.ring_size;
	r->arena_size = rep.arena_size;
	r->ring = mmap(NULL, r->ring_size, PROT_READ | PROT_WRITE, MAP_SHARED, r->fds[0], 0);
	r->arena = mmap(NULL, r->arena_size, PROT_READ | PROT_WRITE, MAP_SHARED, r->fds[1], 0);
	if (r->ring == MAP_FAILED || r->arena == MAP_FAILED)
		return -1;
	sh = (struct kvt_shm_hdr *)r->ring;
	r->sq = (struct kvt_ring_ctl *)(r->ring + sh->sq_off);
	r->sqe = (struct kvt_sqe *)(r->ring + sh->sq_off + sizeof(*r->sq));
	r->cq = (struct kvt_ring_ctl *)(r->ring + sh->cq_off);
	r->cqe = (struct kvt_cqe *)(r->ring + sh->cq_off + sizeof(*r->cq));
	r->sq_n = sh->sq_entries;
	r->cq_n = sh->cq_entries;
	return 0;
}

static void raw_close(struct raw *r)
{
	munmap(r->ring, r->ring_size);
	munmap(r->arena, r->arena_size);
	for (int i = 0; i < KVT_HELLO_NFDS; i++)
		close(r->fds[i]);
	close(r->fd);
}

/* One request, its completion waited for (the daemon's CQ tail, an event). */
static int raw_call(struct raw *r, struct kvt_sqe *s, struct kvt_cqe *q)
{
	uint64_t one = 1;

	s->user_data = r->sq_tail + 1;
	r->sqe[r->sq_tail & (r->sq_n - 1)] = *s;
	kvt_ring_publish(r->sq, ++r->sq_tail);
	if (write(r->fds[2], &one, sizeof(one)) != sizeof(one))
		return -1;
	while (kvt_ring_tail(r->cq) == r->cq_head)
		kvt_cpu_relax();
	*q = r->cqe[r->cq_head & (r->cq_n - 1)];
	kvt_ring_consume(r->cq, ++r->cq_head);
	return q->res;
}

static void raw_ring(void)
{
	static uint16_t raw[BLOCK / 2], got[BLOCK / 2], want[BLOCK / 2];
	static uint8_t rec[2 * BLOCK];
	struct kvt_codec_geom g = {4, 4, 128, 32, KVT_DTYPE_FP16, 0};
	struct kvt_msg_layout m;
	struct kvt_msg_layout_reply lr;
	struct kvt_chain *ch = NULL;
	struct kvt_client *c = NULL;
	struct kvt_sqe s;
	struct kvt_cqe q;
	struct kvt_key key = key_of(3);
	struct raw r;
	int lay = -1;
	ssize_t n;
	pid_t pid = start("host.codec=" BQ, "host.capacity=16MiB", NULL);

	CHECK(pid > 0);
	CHECK_EQ(kvt_chain_parse(BQ, &ch), 0);
	CHECK_EQ(raw_open(&r), 0);
	memset(&m, 0, sizeof(m));
	kvt_msg_init(&m.h, KVT_MSG_LAYOUT, sizeof(m));
	m.layout = lay_def;
	CHECK_EQ(send(r.fd, &m, sizeof(m), 0), (ssize_t)sizeof(m));
	CHECK_EQ(recv(r.fd, &lr, sizeof(lr), 0), (ssize_t)sizeof(lr));
	CHECK_EQ(lr.h.type, KVT_MSG_LAYOUT_REPLY);
	CHECK_EQ(lr.res, 0);
	CHECK_EQ(lr.chain_id, kvt_chain_id(ch));
	CHECK(strcmp(lr.chain, kvt_chain_name(ch)) == 0);
	make_block(raw, 3);
	n = kvt_chain_encode(ch, &g, raw, BLOCK, rec, sizeof(rec));
	CHECK(n > 0);
	/* a chain the daemon did not name for this layout */
	memset(&s, 0, sizeof(s));
	s.op = KVT_OP_RESERVE;
	s.key_lo = key.lo;
	s.key_hi = key.hi;
	s.len = (uint32_t)n;
	s.chain = lr.chain_id ^ 1;
	s.raw_len = BLOCK;
	CHECK_EQ(raw_call(&r, &s, &q), -ESTALE);
	/* the right chain, but a record of another length than the block's: refused */
	s.chain = lr.chain_id;
	s.raw_len = BLOCK / 2;
	CHECK_EQ(raw_call(&r, &s, &q), -EINVAL);
	/* reserved for a record, filled with something else: the commit refuses it */
	s.raw_len = BLOCK;
	CHECK_EQ(raw_call(&r, &s, &q), (int)n);
	memset(r.arena + q.off, 0x3c, (size_t)n);
	memset(&s, 0, sizeof(s));
	s.op = KVT_OP_COMMIT;
	s.handle = q.handle;
	CHECK_EQ(raw_call(&r, &s, &q), -EBADMSG);
	c = client(&lay);
	CHECK(c && lay >= 0);
	CHECK_EQ(kvt_get(c, lay, &key, got, sizeof(got)), -ENOENT);
	/* the record of another block's geometry (a foreign header) likewise */
	memset(&s, 0, sizeof(s));
	s.op = KVT_OP_RESERVE;
	s.key_lo = key.lo;
	s.key_hi = key.hi;
	s.len = (uint32_t)n;
	s.chain = lr.chain_id;
	s.raw_len = BLOCK;
	CHECK_EQ(raw_call(&r, &s, &q), (int)n);
	memcpy(r.arena + q.off, rec, (size_t)n);
	r.arena[q.off + 16] ^= 1; /* n_layers */
	memset(&s, 0, sizeof(s));
	s.op = KVT_OP_COMMIT;
	s.handle = q.handle;
	CHECK_EQ(raw_call(&r, &s, &q), -EBADMSG);
	CHECK_EQ(kvt_get(c, lay, &key, got, sizeof(got)), -ENOENT);
	/* the true record: stored, and served as the chain decodes it */
	memset(&s, 0, sizeof(s));
	s.op = KVT_OP_RESERVE;
	s.key_lo = key.lo;
	s.key_hi = key.hi;
	s.len = (uint32_t)n;
	s.chain = lr.chain_id;
	s.raw_len = BLOCK;
	CHECK_EQ(raw_call(&r, &s, &q), (int)n);
	memcpy(r.arena + q.off, rec, (size_t)n);
	memset(&s, 0, sizeof(s));
	s.op = KVT_OP_COMMIT;
	s.handle = q.handle;
	CHECK_EQ(raw_call(&r, &s, &q), 0);
	expect_block(ch, 3, KVT_POS_UNKNOWN, want);
	CHECK_EQ(kvt_get(c, lay, &key, got, sizeof(got)), BLOCK);
	CHECK(memcmp(got, want, BLOCK) == 0);
	raw_close(&r);
	kvt_close(c);
	kvt_chain_free(ch);
	CHECK_EQ(stop(pid), 0);
}

static const struct kvt_test_case tests[] = {
    {"roundtrip", roundtrip}, {"mixed", mixed},	  {"capacity", capacity},
    {"corrupt", corrupt},     {"config", config}, {"raw_ring", raw_ring},
};

int main(int argc, char **argv)
{
	int ran;

	if (argc < 3) {
		fprintf(stderr, "usage: test_hostcodec KVTIERD KVTIERCTL [TEST...]\n");
		return 2;
	}
	kvtierd = argv[1];
	kvtierctl = argv[2];
	signal(SIGPIPE, SIG_IGN);
	snprintf(dir, sizeof(dir), "/tmp/kvt-hostcodec-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	snprintf(sock, sizeof(sock), "%s/kvtier.sock", dir);
	snprintf(slots, sizeof(slots), "%s/nvme0.slots", dir);
	snprintf(logpath, sizeof(logpath), "%s/kvtierd.log", dir);
	ran = kvt_test_run_cases(tests, sizeof(tests) / sizeof(tests[0]), argv + 3, argc - 3, &cur,
				 logpath);
	return kvt_test_finish(dir, ran);
}
