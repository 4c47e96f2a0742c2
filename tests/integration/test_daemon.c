/* SPDX-License-Identifier: MIT */
/*
 * Integration tests: a real kvtierd in a temporary directory, driven through libkvtier,
 * raw sockets, hand-mapped rings and kvtierctl.
 *
 * usage: test_daemon KVTIERD KVTIERCTL [--seed N] [TEST...]
 */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "harness.h"
#include "kvd.h"
#include "kvt_proto.h"
#include "kvt_ring.h"
#include "kvtier.h"

static const char *kvtierd, *kvtierctl;
static char dir[256], sock[300];
static unsigned seed;
static pid_t cur_daemon;

/* When set, the next daemon_start() runs kvtierd as this user, with this RLIMIT_MEMLOCK,
 * and its stderr in this file. */
static struct {
	bool on;
	uid_t uid;
	gid_t gid;
	rlim_t memlock;
	char log[400];
} drop;

#define ctl(rc, ...) kvt_test_ctl(rc, kvtierctl, sock, __VA_ARGS__)

static long long status_metric(const char *name)
{
	return kvt_test_ctl_num(kvtierctl, sock, "status", NULL, name);
}

static void drop_setup(void *arg)
{
	struct rlimit rl = {drop.memlock, drop.memlock};
	int fd = open(drop.log, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	(void)arg;
	if (fd < 0 || dup2(fd, 2) < 0 || setrlimit(RLIMIT_MEMLOCK, &rl) < 0 ||
	    setgroups(0, NULL) < 0 || setgid(drop.gid) < 0 || setuid(drop.uid) < 0)
		_exit(126);
}

static pid_t daemon_start(const char *capacity, ...)
{
	va_list ap;
	pid_t pid;

	va_start(ap, capacity);
	pid = kvt_test_daemon_startv(&cur_daemon, kvtierd, sock, capacity,
				     drop.on ? drop_setup : NULL, ap);
	va_end(ap);
	/* Ready means serving; the NVMe records (the tests expect them) come a moment later:
	 * until then they are misses and puts are refused. */
	while (pid > 0 && status_metric("nvme_recovering") == 1)
		usleep(2000);
	return pid;
}

static int daemon_stop(pid_t pid)
{
	cur_daemon = 0;
	return kvt_test_daemon_stop(pid);
}

static struct kvt_client *connect_ok(void)
{
	return kvt_test_connect(sock, "test", 5000);
}

static struct kvt_layout small_layout(void)
{
	/* 4 layers x 2 heads x 16 tokens x 128 dims x K,V x fp16 = 64 KiB blocks */
	struct kvt_layout l = {sizeof(l), 4, 2, 128, 16, KVT_DTYPE_FP16, 0, 0, 1, "test-model"};
	return l;
}

/*
 * Waits for the daemon's metric name to reach at least (ge) or at most (!ge) v: on the event
 * itself, however slow the machine (ctest's TIMEOUT bounds a hang).  Returns the last value,
 * or -2 when kvtierctl cannot get it (the daemon is gone).
 */
static long long wait_metric(const char *name, bool ge, long long v)
{
	long long x;

	while ((x = status_metric(name)) >= 0 && (ge ? x < v : x > v))
		usleep(5000);
	return x;
}

/*
 * Waits until only the test's own client (and the kvtierctl that asks) is connected, then
 * checks that no reservation, lease or pin is left and, if used0 >= 0, that the host tier
 * uses used0 bytes again.  Returns 0, or -1 after printing what differs.
 */
static int back_to_baseline(long long used0)
{
	static const char *const zero[] = {"reservations", "leases", "pins"};
	long long v;

	if ((v = wait_metric("clients", false, 2)) != 2) {
		fprintf(stderr, "baseline: clients %lld, expected 2\n", v);
		return -1;
	}
	for (size_t k = 0; k < sizeof(zero) / sizeof(zero[0]); k++) {
		if ((v = status_metric(zero[k])) != 0) {
			fprintf(stderr, "baseline: %s %lld, expected 0\n", zero[k], v);
			return -1;
		}
	}
	if (used0 >= 0 && (v = status_metric("used_bytes")) != used0) {
		fprintf(stderr, "baseline: used_bytes %lld, expected %lld\n", v, used0);
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------------------------- */

static void test_basic(void)
{
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	struct kvt_key keys[8];
	uint8_t *a = malloc(bb), *b = malloc(bb);
	struct kvt_client *c;
	struct kvt_lease ls;
	struct kvt_reservation r;
	int lay;
	pid_t pid = daemon_start("64MiB", NULL);

	CHECK(pid > 0);
	c = connect_ok();
	CHECK(c);
	lay = kvt_register_layout(c, &l);
	CHECK_EQ(lay, 0);
	CHECK_EQ(kvt_register_layout(c, &l), 0); /* same layout, same id */
	kvt_test_make_keys(&l, 1, keys, 8);
	CHECK_EQ(kvt_lookup(c, lay, keys, 8), 0);
	for (int i = 0; i < 8; i++) {
		kvt_test_fill(a, bb, (uint64_t)i);
		CHECK_EQ(kvt_put(c, lay, &keys[i], a, bb), 0);
	}
	CHECK_EQ(kvt_put(c, lay, &keys[0], a, bb), 1); /* already stored */
	CHECK_EQ(kvt_lookup(c, lay, keys, 8), 8);
	for (int i = 0; i < 8; i++) {
		kvt_test_fill(a, bb, (uint64_t)i);
		CHECK_EQ(kvt_get(c, lay, &keys[i], b, bb), bb);
		CHECK(memcmp(a, b, bb) == 0);
	}
	CHECK_EQ(kvt_get(c, lay, &keys[0], b, bb - 1), -ENOBUFS);
	CHECK_EQ(kvt_get(c, 7, &keys[0], b, bb), -KVT_ENOLAYOUT);
	/* Zero-copy put: invisible until committed, gone when aborted. */
	struct kvt_key extra[9];
	kvt_test_make_keys(&l, 2, extra, 9);
	CHECK_EQ(kvt_put_reserve(c, lay, &extra[0], bb, &r), 0);
	CHECK_EQ(kvt_lookup(c, lay, &extra[0], 1), 0);
	CHECK_EQ(kvt_put_reserve(c, lay, &extra[0], bb, &(struct kvt_reservation){0}), -EEXIST);
	kvt_test_fill(r.data, bb, 99);
	CHECK_EQ(kvt_put_commit(c, &r), 0);
	CHECK_EQ(kvt_lookup(c, lay, &extra[0], 1), 1);
	CHECK_EQ(kvt_put_reserve(c, lay, &extra[1], bb, &r), 0);
	CHECK_EQ(kvt_put_abort(c, &r), 0);
	CHECK_EQ(kvt_lookup(c, lay, &extra[1], 1), 0);
	CHECK_EQ(kvt_put_reserve(c, lay, &extra[2], bb + 1, &r), -EINVAL); /* longer than a block */
	/* A lease stays valid across a delete; the block disappears for lookups at once. */
	CHECK_EQ(kvt_get_lease(c, lay, &keys[2], &ls), 0);
	CHECK_EQ(kvt_delete(c, lay, &keys[2]), 0);
	CHECK_EQ(kvt_lookup(c, lay, keys, 8), 2);
	kvt_test_fill(a, bb, 2);
	CHECK(memcmp(ls.data, a, bb) == 0);
	CHECK_EQ(kvt_lease_release(c, &ls), 0);
	CHECK_EQ(kvt_delete(c, lay, &keys[2]), -ENOENT);
	CHECK_EQ(kvt_get(c, lay, &keys[2], b, bb), -ENOENT);
	CHECK_EQ(kvt_unpin(c, lay, &keys[3]), -EINVAL); /* not pinned */
	CHECK_EQ(kvt_pin(c, lay, &keys[3]), 0);
	CHECK_EQ(kvt_unpin(c, lay, &keys[3]), 0);
	struct kvt_stats st = {.size = sizeof(st)};
	CHECK_EQ(kvt_stats(c, &st), 0);
	CHECK_EQ(st.puts, 9);
	CHECK_EQ(st.host_blocks, 8);
	CHECK(st.hits >= 8 && st.misses >= 1);
	kvt_close(c);
	kvt_close(NULL);
	CHECK_EQ(daemon_stop(pid), 0);
	free(a);
	free(b);
}

static void test_eviction(void)
{
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	enum { N = 200 };
	struct kvt_key keys[N];
	uint8_t *a = malloc(bb), *b = malloc(bb);
	struct kvt_client *c;
	int lay, present = 0;
	/* One tenant holding the whole tier: the per-tenant quota is lifted for that. */
	pid_t pid = daemon_start("4MiB", "-o", "host.tenant_hold_max=1", NULL); /* 64 x 64 KiB */

	CHECK(pid > 0);
	c = connect_ok();
	CHECK(c);
	lay = kvt_register_layout(c, &l);
	kvt_test_make_keys(&l, 3, keys, N);
	kvt_test_fill(a, bb, 0);
	CHECK_EQ(kvt_put(c, lay, &keys[0], a, bb), 0);
	CHECK_EQ(kvt_pin(c, lay, &keys[0]), 0);
	for (int i = 1; i < N; i++) {
		kvt_test_fill(a, bb, (uint64_t)i);
		CHECK_EQ(kvt_put(c, lay, &keys[i], a, bb), 0);
	}
	/* The pinned block survived; the most recent ones are there; all served bit-exact. */
	CHECK_EQ(kvt_lookup(c, lay, keys, 1), 1);
	CHECK_EQ(kvt_lookup(c, lay, &keys[N - 10], 10), 10);
	for (int i = 0; i < N; i++) {
		ssize_t g = kvt_get(c, lay, &keys[i], b, bb);
		if (g == -ENOENT)
			continue;
		CHECK_EQ(g, bb);
		kvt_test_fill(a, bb, (uint64_t)i);
		CHECK(memcmp(a, b, bb) == 0);
		present++;
	}
	CHECK(present > 20 && present <= 64);
	CHECK(status_metric("evictions_total") >= N - 64);
	CHECK(status_metric("used_bytes") <= 4 << 20);
	/* Everything leased or pinned: a put gets a clear ENOSPC, nothing breaks. */
	struct kvt_lease ls[200];
	uint64_t tags[200];
	struct kvt_key more[80];
	int nl = 0, r = 0;
	for (int i = 1; i < N && nl < 64; i++) {
		if (kvt_get_lease(c, lay, &keys[i], &ls[nl]) == 0)
			tags[nl++] = (uint64_t)i;
	}
	kvt_test_make_keys(&l, 4, more, 80);
	for (int i = 0; i < 80; i++) {
		kvt_test_fill(a, bb, (uint64_t)(1000 + i));
		r = kvt_put(c, lay, &more[i], a, bb);
		if (r < 0)
			break;
		CHECK_EQ(kvt_get_lease(c, lay, &more[i], &ls[nl]), 0);
		tags[nl++] = (uint64_t)(1000 + i);
	}
	CHECK_EQ(r, -ENOSPC);
	CHECK(status_metric("enospc_total") >= 1);
	/* Leased blocks were neither evicted nor overwritten by the pressure. */
	for (int i = 0; i < nl; i++) {
		kvt_test_fill(a, bb, tags[i]);
		CHECK(memcmp(ls[i].data, a, bb) == 0);
	}
	for (int i = 0; i < nl; i++)
		CHECK_EQ(kvt_lease_release(c, &ls[i]), 0);
	CHECK_EQ(kvt_put(c, lay, &more[79], a, bb), 0);
	/* kvtierctl evict empties the tier except the pinned block. */
	int rc;
	char *out = ctl(&rc, "evict --all");
	CHECK_EQ(rc, 0);
	CHECK(out && strstr(out, "evicted"));
	free(out);
	CHECK_EQ(kvt_lookup(c, lay, keys, 1), 1);
	CHECK_EQ(kvt_lookup(c, lay, &more[79], 1), 0);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
	free(a);
	free(b);
}

static void test_many_processes(void)
{
	enum { PROCS = 4, PER = 40 };
	pid_t pid = daemon_start("64MiB", NULL), kids[PROCS];
	int ok = 1;

	CHECK(pid > 0);
	for (int p = 0; p < PROCS; p++) {
		kids[p] = fork();
		if (kids[p] == 0) {
			struct kvt_layout l = small_layout();
			size_t bb = kvt_layout_block_bytes(&l);
			struct kvt_key keys[PER], shared[PER];
			uint8_t *a = malloc(bb), *b = malloc(bb);
			struct kvt_client *c = connect_ok();
			int lay, bad = 0;

			if (!c)
				_exit(2);
			lay = kvt_register_layout(c, &l);
			kvt_test_make_keys(&l, 100 + (uint32_t)p, keys, PER);
			kvt_test_make_keys(&l, 7, shared,
					   PER); /* every process puts the same prompt */
			for (int round = 0; round < 5; round++) {
				for (int i = 0; i < PER; i++) {
					kvt_test_fill(a, bb, (uint64_t)(p * 1000 + i));
					int r = kvt_put(c, lay, &keys[i], a, bb);
					bad += r < 0;
					kvt_test_fill(a, bb, (uint64_t)(7000 + i));
					r = kvt_put(c, lay, &shared[i], a, bb);
					bad += r < 0;
				}
				for (int i = 0; i < PER; i++) {
					kvt_test_fill(a, bb, (uint64_t)(p * 1000 + i));
					if (kvt_get(c, lay, &keys[i], b, bb) != (ssize_t)bb ||
					    memcmp(a, b, bb))
						bad++;
					kvt_test_fill(a, bb, (uint64_t)(7000 + i));
					ssize_t g = kvt_get(c, lay, &shared[i], b, bb);
					if (g != (ssize_t)bb || memcmp(a, b, bb))
						bad++;
				}
			}
			kvt_close(c);
			_exit(bad ? 1 : 0);
		}
	}
	for (int p = 0; p < PROCS; p++) {
		int st;
		waitpid(kids[p], &st, 0);
		ok &= WIFEXITED(st) && WEXITSTATUS(st) == 0;
	}
	CHECK(ok);
	CHECK_EQ(status_metric("puts_total"), PROCS * PER + PER);
	CHECK_EQ(daemon_stop(pid), 0);
}

/* A client killed holding a reservation, a lease and a pin leaves nothing behind. */
static void test_client_sigkill(void)
{
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	struct kvt_key keys[4];
	uint8_t *a = malloc(bb);
	int pfd[2];
	pid_t pid = daemon_start("64MiB", NULL), kid;
	long long used0;

	CHECK(pid > 0);
	kvt_test_make_keys(&l, 9, keys, 4);
	struct kvt_client *c = connect_ok();
	CHECK(c);
	int lay = kvt_register_layout(c, &l);
	kvt_test_fill(a, bb, 1);
	CHECK_EQ(kvt_put(c, lay, &keys[1], a, bb), 0);
	used0 = status_metric("used_bytes");
	for (int round = 0; round < 20; round++) {
		CHECK(pipe(pfd) == 0);
		kid = fork();
		if (kid == 0) {
			struct kvt_client *k = connect_ok();
			struct kvt_reservation r;
			struct kvt_lease ls;
			int kl = kvt_register_layout(k, &l);
			if (kvt_put_reserve(k, kl, &keys[0], bb, &r) < 0 ||
			    kvt_get_lease(k, kl, &keys[1], &ls) < 0 || kvt_pin(k, kl, &keys[1]) < 0)
				_exit(1);
			memset(r.data, 0xab, bb / 2); /* half-written block */
			ssize_t w = write(pfd[1], "x", 1);
			(void)w;
			pause();
			_exit(0);
		}
		char x;
		close(pfd[1]);
		CHECK_EQ(read(pfd[0], &x, 1), 1);
		close(pfd[0]);
		/* Meanwhile the half-written block is invisible to everyone. */
		CHECK_EQ(kvt_lookup(c, lay, keys, 1), 0);
		CHECK_EQ(status_metric("reservations"), 1);
		kill(kid, SIGKILL);
		waitpid(kid, NULL, 0);
		CHECK_EQ(back_to_baseline(used0), 0);
		CHECK_EQ(kvt_lookup(c, lay, keys, 1), 0);
	}
	/* The key the dead client reserved can be stored by someone else. */
	kvt_test_fill(a, bb, 0);
	CHECK_EQ(kvt_put(c, lay, &keys[0], a, bb), 0);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
	free(a);
}

static int raw_connect(void)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);

	strcpy(sa.sun_path, sock);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	struct timeval tv = {5, 0};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static int raw_result(int fd)
{
	uint8_t buf[4096];
	ssize_t n = recv(fd, buf, sizeof(buf), 0);
	struct kvt_msg_result r;

	if (n < (ssize_t)sizeof(r))
		return n == 0 ? -ECONNRESET : -EBADMSG;
	memcpy(&r, buf, sizeof(r));
	return r.res;
}

static void test_bad_messages(void)
{
	pid_t pid = daemon_start("16MiB", NULL);
	struct kvt_msg_hello h;
	uint8_t *big = calloc(1, 70000);
	int fd;

	CHECK(pid > 0);
	struct kvt_client *good = connect_ok();
	CHECK(good);
	struct kvt_layout l = small_layout();
	int lay = kvt_register_layout(good, &l);
	struct kvt_key k[1];
	kvt_test_make_keys(&l, 11, k, 1);
	uint8_t *blk = calloc(1, kvt_layout_block_bytes(&l));
	CHECK_EQ(kvt_put(good, lay, k, blk, kvt_layout_block_bytes(&l)), 0);

	fd = raw_connect();
	CHECK(fd >= 0);
	CHECK_EQ(send(fd, "abc", 3, 0), 3); /* truncated */
	CHECK_EQ(raw_result(fd), -KVT_EPROTOCOL);
	kvt_msg_init((struct kvt_msg_hdr *)big, KVT_MSG_HELLO, 70000); /* oversized */
	CHECK_EQ(send(fd, big, 70000, 0), 70000);
	CHECK_EQ(raw_result(fd), -EMSGSIZE);
	memset(&h, 0, sizeof(h));
	kvt_msg_init(&h.h, 77, sizeof(h)); /* unknown type */
	CHECK_EQ(send(fd, &h, sizeof(h), 0), (ssize_t)sizeof(h));
	CHECK_EQ(raw_result(fd), -KVT_EPROTOCOL);
	kvt_msg_init(&h.h, KVT_MSG_LAYOUT, sizeof(struct kvt_msg_layout)); /* before HELLO */
	struct kvt_msg_layout lm;
	memset(&lm, 0, sizeof(lm));
	lm.h = h.h;
	CHECK_EQ(send(fd, &lm, sizeof(lm), 0), (ssize_t)sizeof(lm));
	CHECK_EQ(raw_result(fd), -KVT_EPROTOCOL);
	/* A library of another major version is refused and disconnected. */
	kvt_msg_init(&h.h, KVT_MSG_HELLO, sizeof(h));
	h.lib_version = 90000;
	CHECK_EQ(send(fd, &h, sizeof(h), 0), (ssize_t)sizeof(h));
	CHECK_EQ(raw_result(fd), -KVT_EVERSION);
	close(fd);
	/* A message header of another protocol version: refused too. */
	fd = raw_connect();
	kvt_msg_init(&h.h, KVT_MSG_HELLO, sizeof(h));
	h.h.version = 9;
	CHECK_EQ(send(fd, &h, sizeof(h), 0), (ssize_t)sizeof(h));
	CHECK_EQ(raw_result(fd), -KVT_EVERSION);
	close(fd);
	/* An invalid layout gets EINVAL. */
	struct kvt_layout bad = l;
	bad.head_dim = 0;
	CHECK_EQ(kvt_register_layout(good, &bad), -EINVAL);
	/* The good client was never disturbed. */
	CHECK_EQ(kvt_lookup(good, lay, k, 1), 1);
	CHECK(status_metric("protocol_errors_total") >= 4);
	kvt_close(good);
	CHECK_EQ(daemon_stop(pid), 0);
	free(big);
	free(blk);
}

/* A hostile client writes garbage into its own rings: it may hurt itself, nobody else. */
static void test_garbage_rings(void)
{
	pid_t pid = daemon_start("16MiB", NULL);
	struct kvt_msg_hello h;
	struct kvt_msg_hello_reply r;
	int fds[KVT_HELLO_NFDS];
	union {
		char buf[CMSG_SPACE(sizeof(fds))];
		struct cmsghdr a;
	} u;
	struct iovec iov = {&r, sizeof(r)};
	struct msghdr mh = {.msg_iov = &iov,
			    .msg_iovlen = 1,
			    .msg_control = u.buf,
			    .msg_controllen = sizeof(u.buf)};

	CHECK(pid > 0);
	struct kvt_client *good = connect_ok();
	CHECK(good);
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	int lay = kvt_register_layout(good, &l);
	struct kvt_key k[4];
	kvt_test_make_keys(&l, 12, k, 4);
	uint8_t *a = malloc(bb), *b = malloc(bb);
	for (int i = 0; i < 4; i++) {
		kvt_test_fill(a, bb, (uint64_t)i);
		CHECK_EQ(kvt_put(good, lay, &k[i], a, bb), 0);
	}

	srand(seed);
	for (int round = 0; round < 30; round++) {
		int fd = raw_connect();
		CHECK(fd >= 0);
		memset(&h, 0, sizeof(h));
		kvt_msg_init(&h.h, KVT_MSG_HELLO, sizeof(h));
		h.lib_version = KVT_VERSION_NUMBER;
		CHECK_EQ(send(fd, &h, sizeof(h), 0), (ssize_t)sizeof(h));
		mh.msg_controllen = sizeof(u.buf);
		CHECK_EQ(recvmsg(fd, &mh, 0), (ssize_t)sizeof(r));
		memcpy(fds, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(fds));
		uint8_t *ring =
		    mmap(NULL, r.ring_size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
		CHECK(ring != MAP_FAILED);
		struct kvt_shm_hdr *sh = (struct kvt_shm_hdr *)ring;
		struct kvt_ring_ctl *sq = (struct kvt_ring_ctl *)(ring + sh->sq_off);
		struct kvt_sqe *e = (struct kvt_sqe *)(ring + sh->sq_off + sizeof(*sq));
		uint32_t n = sh->sq_entries;
		/* Random entries: random ops, forged handles, offsets and lengths. */
		for (uint32_t i = 0; i < n; i++) {
			uint8_t *p = (uint8_t *)&e[i];
			for (size_t j = 0; j < sizeof(*e); j++)
				p[j] = (uint8_t)rand();
			if (rand() % 2)
				e[i].op = (uint8_t)(rand() % KVT_OP_MAX);
			if (rand() % 4 == 0)
				e[i].flags = 0;
		}
		uint32_t tail;
		if (round % 3 == 0)
			tail = (uint32_t)rand(); /* indices out of range: the daemon drops us */
		else
			tail = (uint32_t)(rand() % (int)n);
		/* A ring header scribbled over too. */
		if (round % 5 == 0)
			memset(sh, 0xff, 64);
		kvt_ring_publish(sq, tail);
		uint64_t one = 1;
		ssize_t w = write(fds[2], &one, sizeof(one));
		(void)w;
		usleep(2000);
		munmap(ring, r.ring_size);
		for (int i = 0; i < KVT_HELLO_NFDS; i++)
			close(fds[i]);
		close(fd);
		/* After each round, the good client's blocks are all there and intact. */
		for (int i = 0; i < 4; i++) {
			kvt_test_fill(a, bb, (uint64_t)i);
			CHECK_EQ(kvt_get(good, lay, &k[i], b, bb), bb);
			CHECK(memcmp(a, b, bb) == 0);
		}
	}
	/* The hostile clients' reservations and leases are gone with them. */
	CHECK_EQ(back_to_baseline(-1), 0);
	kvt_close(good);
	CHECK_EQ(daemon_stop(pid), 0);
	free(a);
	free(b);
}

static int run_kvtierd(const char *args, char **err_out)
{
	char cmd[1024], *out = NULL;
	size_t len = 0;
	FILE *p, *m;
	int c, st;

	snprintf(cmd, sizeof(cmd), "%s %s 2>&1", kvtierd, args);
	p = popen(cmd, "r");
	m = open_memstream(&out, &len);
	while ((c = fgetc(p)) != EOF)
		fputc(c, m);
	fclose(m);
	st = pclose(p);
	*err_out = out;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_config_errors(void)
{
	char *out, path[512];
	FILE *f;

	CHECK_EQ(run_kvtierd("-f -o host.capacity=lots", &out), 1);
	CHECK(strstr(out, "host.capacity"));
	free(out);
	CHECK_EQ(run_kvtierd("-f -o host.low_watermark=0.99 -o host.high_watermark=0.5", &out), 1);
	CHECK(strstr(out, "watermark"));
	free(out);
	CHECK_EQ(run_kvtierd("-f -c /nonexistent/kvtierd.conf", &out), 1);
	free(out);
	CHECK_EQ(run_kvtierd("--bogus", &out), 2);
	free(out);
	snprintf(path, sizeof(path), "%s/bad.conf", dir);
	f = fopen(path, "w");
	fprintf(f, "[host]\ncapacity = 1GiB\n[daemon]\ntick_ms = -5\n");
	fclose(f);
	char args[600];
	snprintf(args, sizeof(args), "-f -c %s", path);
	CHECK_EQ(run_kvtierd(args, &out), 1);
	CHECK(strstr(out, "daemon.tick_ms") && strstr(out, ":4"));
	free(out);
	/* --print-config prints what a config file can hold, and reads it back. */
	snprintf(args, sizeof(args), "--print-config -o host.capacity=3GiB");
	CHECK_EQ(run_kvtierd(args, &out), 0);
	CHECK(strstr(out, "[host]") && strstr(out, "capacity = 3221225472"));
	f = fopen(path, "w");
	fputs(out, f);
	fclose(f);
	free(out);
	snprintf(args, sizeof(args), "--print-config -c %s", path);
	CHECK_EQ(run_kvtierd(args, &out), 0);
	CHECK(strstr(out, "capacity = 3221225472"));
	free(out);
}

static void test_kvtierctl(void)
{
	pid_t pid = daemon_start("32MiB", NULL);
	char *out;
	int rc;

	CHECK(pid > 0);
	struct kvt_client *c = connect_ok();
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	int lay = kvt_register_layout(c, &l);
	struct kvt_key k[3];
	uint8_t *a = calloc(1, bb);
	kvt_test_make_keys(&l, 13, k, 3);
	for (int i = 0; i < 3; i++)
		CHECK_EQ(kvt_put(c, lay, &k[i], a, bb), 0);
	CHECK_EQ(kvt_get(c, lay, &k[0], a, bb), bb);

	out = ctl(&rc, "--json status");
	CHECK_EQ(rc, 0);
	CHECK(strstr(out, "\"name\":\"host\"") && strstr(out, "\"capacity_bytes\":33554432"));
	CHECK_EQ(kvt_test_json_num(out, "blocks"), 3);
	CHECK_EQ(kvt_test_json_num(out, "used_bytes"), 3 * bb);
	CHECK(kvt_test_json_num(out, "hits") >= 1 && kvt_test_json_num(out, "misses") == 0);
	CHECK(strstr(out, "\"codec\":\"raw\""));
	free(out);
	out = ctl(&rc, "status");
	CHECK(rc == 0 && strstr(out, "host") && strstr(out, "32.0 MiB"));
	free(out);
	out = ctl(&rc, "tiers");
	CHECK(rc == 0 && strstr(out, "watermarks"));
	free(out);
	out = ctl(&rc, "--json blocks --limit 2");
	CHECK(rc == 0 && out[0] == '[' && strstr(out, "\"bytes\":65536"));
	free(out);
	out = ctl(&rc, "clients");
	CHECK(rc == 0 && strstr(out, "test"));
	free(out);
	out = ctl(&rc, "--json clients");
	CHECK(rc == 0 && strstr(out, "\"name\":\"test\""));
	free(out);
	out = ctl(&rc, "metrics");
	CHECK(rc == 0 && strstr(out, "# TYPE kvtier_puts_total counter") &&
	      strstr(out, "kvtier_puts_total 3") &&
	      strstr(out, "kvtier_tier_blocks{tier=\"host\"} 3"));
	/* promtool (Debian's prometheus package) judges the format when it is installed. */
	if (access("/usr/bin/promtool", X_OK) == 0) {
		char path[512];
		snprintf(path, sizeof(path), "%s/metrics.txt", dir);
		FILE *f = fopen(path, "w");
		fputs(out, f);
		fclose(f);
		char cmd[700];
		snprintf(cmd, sizeof(cmd), "promtool check metrics < %s", path);
		CHECK_EQ(system(cmd), 0);
	} else {
		printf("promtool not installed: metrics format checked by substring only\n");
	}
	free(out);
	out = ctl(&rc, "writeback");
	CHECK_EQ(rc, 0);
	free(out);
	out = ctl(&rc, "bogus");
	CHECK_EQ(rc, 2);
	free(out);
	out = ctl(&rc, "evict");
	CHECK_EQ(rc, 2); /* needs --bytes or --all */
	free(out);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
	/* No daemon: a clear error, exit 1. */
	out = ctl(&rc, "status 2>/dev/null");
	CHECK_EQ(rc, 1);
	free(out);
	free(a);
}

/* ------------------------------------------------------------------------------------- */
/* NVMe tier through the daemon: spill, promotion, restart, crash, corruption, faults.   */

static char nvme_path_opt[400];

static const char *nvme_paths(void)
{
	snprintf(nvme_path_opt, sizeof(nvme_path_opt), "nvme.paths=%s/nvme0.slots", dir);
	return nvme_path_opt;
}

#define NVME_ARGS "-o", "nvme.enabled=true", "-o", nvme_paths(), "-o", "nvme.capacity=64MiB"

/* Gets every key; each must be a miss or bit-exact. Returns how many were served. */
static int check_all(struct kvt_client *c, int lay, const struct kvt_key *keys, int n, size_t bb,
		     uint64_t tag0, int *wrong)
{
	uint8_t *a = malloc(bb), *b = malloc(bb);
	int served = 0;

	*wrong = 0;
	for (int i = 0; i < n; i++) {
		ssize_t g = kvt_get(c, lay, &keys[i], b, bb);
		if (g == -ENOENT)
			continue;
		kvt_test_fill(a, bb, tag0 + (uint64_t)i);
		if (g != (ssize_t)bb || memcmp(a, b, bb) != 0) {
			fprintf(stderr, "block %d: get %zd, content %s\n", i, g,
				g == (ssize_t)bb ? "WRONG" : "-");
			(*wrong)++;
		} else {
			served++;
		}
	}
	free(a);
	free(b);
	return served;
}

static void put_all(struct kvt_client *c, int lay, const struct kvt_key *keys, int n, size_t bb,
		    uint64_t tag0)
{
	uint8_t *a = malloc(bb);

	for (int i = 0; i < n; i++) {
		kvt_test_fill(a, bb, tag0 + (uint64_t)i);
		kvt_put(c, lay, &keys[i], a, bb);
	}
	free(a);
}

static void test_nvme_spill_restart(void)
{
	enum { N = 300 }; /* 19 MiB of blocks, 4 MiB of host */
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	struct kvt_key keys[N];
	int wrong, rc;
	char *out;
	pid_t pid = daemon_start("4MiB", NVME_ARGS, NULL);

	CHECK(pid > 0);
	struct kvt_client *c = connect_ok();
	CHECK(c);
	int lay = kvt_register_layout(c, &l);
	kvt_test_make_keys(&l, 21, keys, N);
	put_all(c, lay, keys, N, bb, 5000);
	/* The whole prompt is still cached: the host holds the tail, NVMe the rest. */
	CHECK_EQ(kvt_lookup(c, lay, keys, N), N);
	CHECK_EQ(check_all(c, lay, keys, N, bb, 5000, &wrong), N);
	CHECK_EQ(wrong, 0);
	CHECK(status_metric("demotions_total") > 0);
	CHECK(status_metric("promotions_total") > 0);
	out = ctl(&rc, "tiers");
	CHECK(rc == 0 && strstr(out, "nvme") && strstr(out, "files 1"));
	free(out);
	out = ctl(&rc, "--json status");
	CHECK(rc == 0 && strstr(out, "\"name\":\"nvme\""));
	free(out);
	out = ctl(&rc, "writeback");
	CHECK(rc == 0 && strstr(out, "queued"));
	free(out);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);

	/* A new daemon on the same files serves every block again. */
	pid = daemon_start("4MiB", NVME_ARGS, NULL);
	CHECK(pid > 0);
	c = connect_ok();
	lay = kvt_register_layout(c, &l);
	CHECK(status_metric("nvme_recovered_total") >= N - 70);
	CHECK_EQ(kvt_lookup(c, lay, keys, N), N);
	CHECK_EQ(check_all(c, lay, keys, N, bb, 5000, &wrong), N);
	CHECK_EQ(wrong, 0);
	/* Deleted blocks stay deleted across a restart. */
	CHECK_EQ(kvt_delete(c, lay, &keys[0]), 0);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
	pid = daemon_start("4MiB", NVME_ARGS, NULL);
	c = connect_ok();
	lay = kvt_register_layout(c, &l);
	CHECK_EQ(kvt_lookup(c, lay, keys, 1), 0);
	CHECK_EQ(kvt_lookup(c, lay, keys + 1, N - 1), N - 1);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
	unlink(nvme_path_opt + strlen("nvme.paths="));
}

/* kvtierd SIGKILLed in the middle of heavy writes: no wrong or partial block, ever. */
static void test_nvme_crash_loop(void)
{
	enum { N = 400, ROUNDS = 6 };
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	struct kvt_key keys[N];
	int total_served = 0;

	kvt_test_make_keys(&l, 31, keys, N);
	srand(seed);
	for (int round = 0; round < ROUNDS; round++) {
		pid_t pid = daemon_start("4MiB", NVME_ARGS, "-o", "nvme.fsync=false", NULL);
		CHECK(pid > 0);
		pid_t kid = fork();
		if (kid == 0) {
			struct kvt_client *k = connect_ok();
			int kl = kvt_register_layout(k, &l);
			for (int rep = 0; rep < 50; rep++)
				put_all(k, kl, keys, N, bb, 9000);
			_exit(0);
		}
		usleep(100000 + (useconds_t)(rand() % 400000));
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		cur_daemon = 0;
		kill(kid, SIGKILL);
		waitpid(kid, NULL, 0);
		pid = daemon_start("4MiB", NVME_ARGS, NULL);
		CHECK(pid > 0);
		struct kvt_client *c = connect_ok();
		CHECK(c);
		int lay = kvt_register_layout(c, &l), wrong;
		total_served += check_all(c, lay, keys, N, bb, 9000, &wrong);
		CHECK_EQ(wrong, 0);
		kvt_close(c);
		CHECK_EQ(daemon_stop(pid), 0);
	}
	printf("crash loop: %d rounds, %d blocks served after restarts, none wrong\n", ROUNDS,
	       total_served);
	CHECK(total_served > 0);
	unlink(nvme_path_opt + strlen("nvme.paths="));
}

static void test_nvme_corruption(void)
{
	enum { N = 200 };
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	struct kvt_key keys[N];
	int wrong, rc;
	pid_t pid = daemon_start("4MiB", NVME_ARGS, NULL);

	CHECK(pid > 0);
	struct kvt_client *c = connect_ok();
	int lay = kvt_register_layout(c, &l);
	kvt_test_make_keys(&l, 41, keys, N);
	put_all(c, lay, keys, N, bb, 7000);
	free(ctl(&rc, "writeback"));
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);

	/* Flip bytes all over the slot file's data. */
	const char *path = nvme_path_opt + strlen("nvme.paths=");
	int fd = open(path, O_RDWR);
	struct stat st;
	CHECK(fd >= 0 && fstat(fd, &st) == 0);
	srand(seed);
	/* Slots are handed out from the front of the file: aim at the part in use. */
	off_t span = (off_t)N * (off_t)(bb + 4096);
	if (span > st.st_size - 65536)
		span = st.st_size - 65536;
	for (int k = 0; k < 40; k++) {
		off_t off = 65536 + (off_t)((unsigned)rand() % (unsigned)span);
		uint8_t x;
		CHECK_EQ(pread(fd, &x, 1, off), 1);
		x ^= 0x5a;
		CHECK_EQ(pwrite(fd, &x, 1, off), 1);
	}
	fsync(fd);
	close(fd);

	pid = daemon_start("4MiB", NVME_ARGS, NULL);
	CHECK(pid > 0);
	c = connect_ok();
	lay = kvt_register_layout(c, &l);
	int served = check_all(c, lay, keys, N, bb, 7000, &wrong);
	CHECK_EQ(wrong, 0);
	char *out = ctl(&rc, "--json tiers");
	long long corrupt = kvt_test_json_num(out, "corrupt_records");
	free(out);
	printf("corruption: %d of %d blocks served intact, %lld records caught as corrupt\n",
	       served, N, corrupt);
	CHECK(corrupt > 0);
	CHECK(served < N);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
	unlink(path);
}

static void test_nvme_faults(void)
{
	static const char *const faults[] = {"write:EIO:3", "write:ENOSPC:2", "read:EIO:2"};
	enum { N = 200 };
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	struct kvt_key keys[N];

	kvt_test_make_keys(&l, 51, keys, N);
	for (size_t f = 0; f < sizeof(faults) / sizeof(faults[0]); f++) {
		setenv("KVTIER_TEST_NVME_FAULT", faults[f], 1);
		pid_t pid = daemon_start("4MiB", NVME_ARGS, NULL);
		unsetenv("KVTIER_TEST_NVME_FAULT");
		CHECK(pid > 0);
		struct kvt_client *c = connect_ok();
		CHECK(c);
		int lay = kvt_register_layout(c, &l), wrong;
		put_all(c, lay, keys, N, bb, 3000);
		int served = check_all(c, lay, keys, N, bb, 3000, &wrong);
		CHECK_EQ(wrong, 0);
		long long we = status_metric("nvme_write_errors_total");
		long long re = status_metric("nvme_read_errors_total");
		printf("fault %s: %d of %d served, write errors %lld, read errors %lld\n",
		       faults[f], served, N, we, re);
		CHECK(faults[f][0] == 'w' ? we > 0 : re > 0);
		CHECK(served > 0 && served < N);
		kvt_close(c);
		CHECK_EQ(daemon_stop(pid), 0); /* and it never crashed */
		unlink(nvme_path_opt + strlen("nvme.paths="));
	}
}

/*
 * An engine's signals (a profiler's SIGALRM every 100 us, no SA_RESTART) interrupt the
 * library's socket calls: none may fail or hang because of it.
 */
static volatile sig_atomic_t alarms;
static void on_alarm(int sig)
{
	(void)sig;
	alarms++;
}

static void test_signals(void)
{
	enum { N = 64 };
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	struct kvt_key keys[N];
	uint8_t *a = malloc(bb), *b = malloc(bb);
	struct sigaction sa = {.sa_handler = on_alarm}, old;
	struct itimerval it = {{0, 100}, {0, 100}}, off = {{0, 0}, {0, 0}};
	int errors = 0;
	pid_t pid = daemon_start("16MiB", NULL);

	CHECK(pid > 0);
	kvt_test_make_keys(&l, 98, keys, N);
	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, &old);
	setitimer(ITIMER_REAL, &it, NULL);
	for (int round = 0; round < 40; round++) {
		struct kvt_client *c = connect_ok();
		int lay;

		if (!c) {
			errors++;
			continue;
		}
		lay = kvt_register_layout(c, &l);
		errors += lay < 0;
		for (int i = 0; i < N; i++) {
			kvt_test_fill(a, bb, 9800 + (uint64_t)i);
			int r = kvt_put(c, lay, &keys[i], a, bb);
			errors += r < 0;
			errors +=
			    kvt_get(c, lay, &keys[i], b, bb) != (ssize_t)bb || memcmp(a, b, bb);
			errors += kvt_lookup(c, lay, keys, N) < 0;
		}
		struct kvt_stats st;

		memset(&st, 0, sizeof(st));
		st.size = sizeof(st);
		errors += kvt_stats(c, &st) < 0;
		kvt_close(c);
	}
	setitimer(ITIMER_REAL, &off, NULL);
	sigaction(SIGALRM, &old, NULL);
	printf("signals: %d alarms during 40 connections x %d put/get/lookup, %d errors\n",
	       (int)alarms, N, errors);
	CHECK(alarms > 100);
	CHECK_EQ(errors, 0);
	CHECK_EQ(daemon_stop(pid), 0);
	free(a);
	free(b);
}

/*
 * Blocks shorter than their layout's block (the last, partial block of a prompt) spill to
 * NVMe and come back bit-exact like whole ones; a length no record geometry can describe
 * (not a multiple of 8 bytes) is dropped on eviction, counted, and never served wrong.
 */
static void test_nvme_partial_blocks(void)
{
	enum { N = 200 };
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	struct kvt_key keys[N];
	uint8_t *a = malloc(bb), *b = malloc(bb);
	int served = 0, odd_served = 0;
	pid_t pid = daemon_start("1MiB", NVME_ARGS, NULL);

	CHECK(pid > 0);
	struct kvt_client *c = connect_ok();
	CHECK(c);
	int lay = kvt_register_layout(c, &l);
	kvt_test_make_keys(&l, 97, keys, N);
	/* Every 10th block has an odd length; the others are half or 1000 bytes. */
#define PLEN(i) ((i) % 10 == 9 ? 1001 : (i) % 2 ? bb / 2 : 1000)
	for (int i = 0; i < N; i++) {
		kvt_test_fill(a, PLEN(i), 9700 + (uint64_t)i);
		CHECK_EQ(kvt_put(c, lay, &keys[i], a, PLEN(i)), 0);
	}
	for (int i = 0; i < N; i++) {
		ssize_t g = kvt_get(c, lay, &keys[i], b, bb);

		kvt_test_fill(a, PLEN(i), 9700 + (uint64_t)i);
		if (g == -ENOENT && i % 10 == 9)
			continue;
		CHECK_EQ(g, (ssize_t)PLEN(i));
		CHECK(memcmp(a, b, PLEN(i)) == 0);
		if (i % 10 == 9)
			odd_served++;
		else
			served++;
	}
#undef PLEN
	printf("nvme_partial_blocks: %d of %d partial blocks back, %d of %d odd-length ones, "
	       "demotions %lld, demote failures %lld\n",
	       served, N - N / 10, odd_served, N / 10, status_metric("demotions_total"),
	       status_metric("demote_failures_total"));
	CHECK_EQ(served, N - N / 10);
	CHECK(status_metric("demotions_total") > 0);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
	unlink(nvme_path_opt + strlen("nvme.paths="));
	free(a);
	free(b);
}

/*
 * A compressing NVMe chain runs on codec threads: background demotion between the
 * watermarks encodes off the event loop, promotions decode off it.  Deletes race with the
 * encodings; every block comes back bit-exact and every deleted one stays gone.
 */
static void test_nvme_codec_threads(void)
{
	enum { N = 240 };
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	struct kvt_key keys[N];
	uint8_t *a = malloc(bb), *b = malloc(bb);
	int wrong = 0, served = 0, deleted = 0;
	pid_t pid = daemon_start("4MiB", NVME_ARGS, "-o", "nvme.codec=shuffle+zstd:1", "-o",
				 "nvme.codec_threads=2", "-o", "daemon.tick_ms=2", "-o",
				 "host.high_watermark=0.5", "-o", "host.low_watermark=0.25", NULL);

	CHECK(pid > 0);
	struct kvt_client *c = connect_ok();
	CHECK(c);
	int lay = kvt_register_layout(c, &l);
	kvt_test_make_keys(&l, 95, keys, N);
	for (int i = 0; i < N; i++) {
		kvt_test_fill(a, bb, 9500 + (uint64_t)i);
		CHECK_EQ(kvt_put(c, lay, &keys[i], a, bb), 0);
		/* Give the ticks room to demote in the background now and then. */
		if (i % 16 == 15)
			usleep(20000);
		/* Delete some blocks while they are likely being encoded. */
		if (i % 9 == 4 && kvt_delete(c, lay, &keys[i - 2]) == 0)
			deleted++;
	}
	for (int i = 0; i < N; i++) {
		ssize_t g = kvt_get(c, lay, &keys[i], b, bb);
		bool gone = i % 9 == 2 && i + 2 < N;

		if (gone) {
			CHECK_EQ(g, -ENOENT);
			continue;
		}
		kvt_test_fill(a, bb, 9500 + (uint64_t)i);
		if (g == (ssize_t)bb && !memcmp(a, b, bb))
			served++;
		else
			wrong++;
	}
	long long enc = status_metric("codec_offloop_encodes_total");
	long long dec = status_metric("codec_offloop_decodes_total");
	printf("nvme_codec_threads: %d served, %d wrong, %d deleted, %lld encodes and %lld decodes "
	       "off the loop, %lld demotions in all\n",
	       served, wrong, deleted, enc, dec, status_metric("demotions_total"));
	CHECK_EQ(wrong, 0);
	CHECK_EQ(served + deleted, N);
	CHECK(enc > 0);
	CHECK(dec > 0);
	CHECK_EQ(back_to_baseline(-1), 0);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
	unlink(nvme_path_opt + strlen("nvme.paths="));

	/* A burst with no background demotion at all (the tick never comes): every block past
	 * the host capacity needs space at once, goes down raw instead of being encoded on the
	 * loop, and comes back bit-exact.  Deterministic: it does not race the codec threads. */
	pid = daemon_start("4MiB", NVME_ARGS, "-o", "nvme.codec=shuffle+zstd:1", "-o",
			   "nvme.codec_threads=2", "-o", "daemon.tick_ms=60000", NULL);
	CHECK(pid > 0);
	c = connect_ok();
	CHECK(c);
	lay = kvt_register_layout(c, &l);
	struct kvt_key burst[N];
	kvt_test_make_keys(&l, 96, burst, N);
	for (int i = 0; i < N; i++) {
		kvt_test_fill(a, bb, 9600 + (uint64_t)i);
		CHECK_EQ(kvt_put(c, lay, &burst[i], a, bb), 0);
	}
	int bserved = check_all(c, lay, burst, N, bb, 9600, &wrong);
	long long raw = status_metric("demotions_raw_fallback_total");
	printf("burst: %d of %d served, %lld stored raw under pressure; demote failures %lld, "
	       "nvme write errors %lld, nvme evictions %lld, admission rejects %lld\n",
	       bserved, N, raw, status_metric("demote_failures_total"),
	       status_metric("nvme_write_errors_total"), status_metric("nvme_evictions_total"),
	       status_metric("nvme_admission_rejects_total"));
	CHECK_EQ(wrong, 0);
	CHECK_EQ(bserved, N);
	/* 4 MiB hold 64 blocks of 64 KiB: at least N - 64 had to make room. */
	CHECK(raw >= N - 64);
	CHECK_EQ(status_metric("codec_offloop_encodes_total"), 0);
	CHECK_EQ(back_to_baseline(-1), 0);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
	unlink(nvme_path_opt + strlen("nvme.paths="));
	free(a);
	free(b);
}

/*
 * A chain with a dictionary on NVMe (uq:kb=1, nvme.codec_dict), on real KV: blocks that went
 * down come back exactly as the chain decodes them here at their positions (the same code, so
 * bit for bit: kvt_put_at's position reached the encoder), across a restart; without the
 * dictionary the daemon refuses to start; with another dictionary the old records are dropped
 * at recovery, never served wrong.
 */
static void test_nvme_codec_dict(void)
{
	const char *data = getenv("KVT_TEST_DATA");
	const char *spec = "uq:k=0.3,v=0.1,dq=0.4,cx=1,kb=1";
	char path[400], dict_a[400], dict_b[400], opt_a[420], opt_b[420];
	struct kvd kd;

	snprintf(path, sizeof(path), "%s/sympy_head640.kvd", data ? data : "tests/data");
	if (kvd_load(path, &kd)) {
		printf("nvme_codec_dict: no %s, skipped\n", path);
		return;
	}
	enum { T = 16 };
	const uint32_t NB = kd.n_tokens / T;
	struct kvt_layout l = {
	    sizeof(l), kd.n_layers, kd.n_kv_heads, kd.head_dim, T, KVT_DTYPE_FP16, 0,
	    0,	       1,	    "test-model"};
	struct kvt_codec_geom g = {kd.n_layers, kd.n_kv_heads, kd.head_dim, T, KVT_DTYPE_FP16, 0};
	size_t bb = kvt_layout_block_bytes(&l);
	CHECK_EQ(bb, kvt_geom_block_bytes(&g));
	uint16_t *blk = malloc(bb * NB), *b = malloc(bb);
	for (uint32_t i = 0; i < NB; i++)
		kvd_block_io(&kd, kd.k, kd.v, i * T, T, blk + i * bb / 2, 1);
	kvd_free(&kd);
	/* two dictionaries: one on the first half of the blocks, one on the second */
	struct kvt_dict *da = NULL;
	for (int k = 0; k < 2; k++) {
		struct kvt_dict_trainer *t;
		void *buf;
		size_t len;
		char *p = k ? dict_b : dict_a;
		snprintf(p, sizeof(dict_a), "%s/%c.kvdict", dir, "ab"[k]);
		CHECK_EQ(kvt_dict_trainer_new(&g, 10000, &t), 0);
		for (uint32_t i = k * NB / 2; i < (k + 1) * NB / 2; i++)
			CHECK_EQ(kvt_dict_trainer_add(t, &g, blk + i * bb / 2, bb), 0);
		CHECK_EQ(kvt_dict_trainer_finish(t, &buf, &len), 0);
		kvt_dict_trainer_free(t);
		FILE *f = fopen(p, "wb");
		CHECK(f && fwrite(buf, 1, len, f) == len);
		fclose(f);
		if (!k)
			CHECK_EQ(kvt_dict_parse(buf, len, &da), 0);
		free(buf);
	}
	snprintf(opt_a, sizeof(opt_a), "nvme.codec_dict=%s", dict_a);
	snprintf(opt_b, sizeof(opt_b), "nvme.codec_dict=%s", dict_b);
	/* what each block is once through the chain */
	struct kvt_chain *c;
	CHECK_EQ(kvt_chain_parse(spec, &c), 0);
	CHECK_EQ(kvt_chain_set_dict(c, da), 0);
	size_t cap = kvt_chain_max_encoded_size(c, &g);
	uint8_t *enc = malloc(cap);
	uint16_t *lossy = malloc(bb * NB);
	for (uint32_t i = 0; i < NB; i++) {
		g.first_token = i * T; /* the daemon is told (kvt_put_at) */
		ssize_t n = kvt_chain_encode(c, &g, blk + i * bb / 2, bb, enc, cap);
		CHECK(n > 0);
		CHECK_EQ(kvt_chain_decode(c, enc, (size_t)n, lossy + i * bb / 2, bb, NULL),
			 (ssize_t)bb);
	}
	char codec_opt[100];
	snprintf(codec_opt, sizeof(codec_opt), "nvme.codec=%s", spec);
	struct kvt_key keys[64];
	CHECK(NB <= 64);
	kvt_test_make_keys(&l, 77, keys, (int)NB);
	for (int round = 0; round < 2; round++) {
		pid_t pid = daemon_start("1MiB", NVME_ARGS, "-o", codec_opt, "-o", opt_a, "-o",
					 "nvme.codec_threads=0", NULL);
		CHECK(pid > 0);
		struct kvt_client *cl = connect_ok();
		CHECK(cl);
		int lay = kvt_register_layout(cl, &l);
		if (!round)
			for (uint32_t i = 0; i < NB; i++)
				CHECK_EQ(kvt_put_at(cl, lay, &keys[i], i * T, blk + i * bb / 2, bb),
					 0);
		int exact = 0, coded = 0, wrong = 0, miss = 0;
		for (uint32_t i = 0; i < NB; i++) {
			ssize_t n = kvt_get(cl, lay, &keys[i], b, bb);
			if (n == -ENOENT && round)
				miss++; /* in host memory only when the first daemon stopped */
			else if (n == (ssize_t)bb && !memcmp(b, blk + i * bb / 2, bb))
				exact++;
			else if (n == (ssize_t)bb && !memcmp(b, lossy + i * bb / 2, bb))
				coded++;
			else
				wrong++;
		}
		printf(
		    "nvme_codec_dict: round %d: %d blocks exact (host), %d through the chain, %d "
		    "missing, %d wrong; %lld recovered\n",
		    round, exact, coded, miss, wrong, status_metric("nvme_recovered_total"));
		CHECK_EQ(wrong, 0);
		CHECK(coded >= (int)NB - 20); /* 1 MiB of host holds 16 blocks */
		CHECK(round || status_metric("demotions_total") > 0);
		/* the operator sees which dictionary the tier uses */
		char idhex[24], *out;
		int rc;
		snprintf(idhex, sizeof(idhex), "%016llx", (unsigned long long)kvt_dict_id(da));
		out = ctl(&rc, "--json tiers");
		CHECK(rc == 0 && out && strstr(out, idhex) && strstr(out, "\"codec_dict\""));
		free(out);
		out = ctl(&rc, "tiers");
		CHECK(rc == 0 && out && strstr(out, idhex) && strstr(out, dict_a));
		free(out);
		kvt_close(cl);
		CHECK_EQ(daemon_stop(pid), 0);
	}
	/* the chain without its dictionary: a configuration error */
	CHECK_EQ(daemon_start("1MiB", NVME_ARGS, "-o", codec_opt, NULL), -1);
	/* another dictionary: the records of the first are dropped, none served */
	pid_t pid = daemon_start("1MiB", NVME_ARGS, "-o", codec_opt, "-o", opt_b, NULL);
	CHECK(pid > 0);
	struct kvt_client *cl = connect_ok();
	int lay = kvt_register_layout(cl, &l);
	CHECK_EQ(status_metric("nvme_recovered_total"), 0);
	for (uint32_t i = 0; i < NB; i++)
		CHECK_EQ(kvt_get(cl, lay, &keys[i], b, bb), -ENOENT);
	kvt_close(cl);
	CHECK_EQ(daemon_stop(pid), 0);
	/* the same with codec threads (last: under a slow machine some blocks go down raw,
	 * which any dictionary reads back): background demotion encodes off the loop (the
	 * chain and its dictionary shared by the threads), sync evictions go down raw; every
	 * block comes back exact or as the chain decodes it */
	{
		unlink(nvme_path_opt + strlen("nvme.paths="));
		pid =
		    daemon_start("1MiB", NVME_ARGS, "-o", codec_opt, "-o", opt_a, "-o",
				 "nvme.codec_threads=2", "-o", "daemon.tick_ms=2", "-o",
				 "host.high_watermark=0.5", "-o", "host.low_watermark=0.25", NULL);
		CHECK(pid > 0);
		cl = connect_ok();
		CHECK(cl);
		lay = kvt_register_layout(cl, &l);
		for (uint32_t i = 0; i < NB; i++) {
			CHECK_EQ(kvt_put_at(cl, lay, &keys[i], i * T, blk + i * bb / 2, bb), 0);
			if (i % 4 == 3)
				usleep(20000);
		}
		int exact = 0, coded = 0, wrong = 0;
		for (uint32_t i = 0; i < NB; i++) {
			ssize_t n = kvt_get(cl, lay, &keys[i], b, bb);
			if (n == (ssize_t)bb && !memcmp(b, blk + i * bb / 2, bb))
				exact++;
			else if (n == (ssize_t)bb && !memcmp(b, lossy + i * bb / 2, bb))
				coded++;
			else
				wrong++;
		}
		printf("nvme_codec_dict: threads: %d exact (host or raw), %d through the chain, %d "
		       "wrong; %lld encodes off the loop\n",
		       exact, coded, wrong, status_metric("codec_offloop_encodes_total"));
		CHECK_EQ(wrong, 0);
		CHECK(coded > 0);
		CHECK(status_metric("codec_offloop_encodes_total") > 0);
		kvt_close(cl);
		CHECK_EQ(daemon_stop(pid), 0);
	}
	unlink(nvme_path_opt + strlen("nvme.paths="));
	unlink(dict_a);
	unlink(dict_b);
	kvt_chain_free(c);
	kvt_dict_free(da);
	free(enc);
	free(lossy);
	free(blk);
	free(b);
}

/* kvtierd SIGKILLed and restarted under clients that keep working: they reconnect by
 * themselves and never see a wrong block (issue: reliability, crash loop). */
static void test_daemon_crash_loop(void)
{
	enum { PROCS = 2, N = 64 };
	/* KVT_TEST_RESTARTS for longer runs than CI's 20. */
	const char *env = getenv("KVT_TEST_RESTARTS");
	int restarts = env ? atoi(env) : 20;
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	pid_t kids[PROCS];
	pid_t pid = daemon_start("4MiB", NVME_ARGS, NULL);

	CHECK(pid > 0);
	for (int p = 0; p < PROCS; p++) {
		kids[p] = fork();
		if (kids[p] == 0) {
			struct kvt_key keys[N];
			uint8_t *a = malloc(bb), *b = malloc(bb);
			struct kvt_client *c = NULL;
			long ok_ops = 0, wrong = 0, errors = 0;
			int lay;

			/* The first kill may land during our handshake: a user retries connect. */
			for (int tries = 0; !c && tries < 200; tries++) {
				c = connect_ok();
				if (!c)
					usleep(50000);
			}
			if (!c)
				_exit(2);
			lay = kvt_register_layout(c, &l);
			for (int tries = 0; lay < 0 && tries < 200; tries++) {
				usleep(50000);
				lay = kvt_register_layout(c, &l);
			}
			if (lay < 0)
				_exit(4);
			kvt_test_make_keys(&l, 60 + (uint32_t)p, keys, N);
			char stop[300];
			snprintf(stop, sizeof(stop), "%s/stop", dir);
			for (long it = 0; it < 4000000; it++) {
				int i = (int)(it % N);
				kvt_test_fill(a, bb, (uint64_t)(p * 100000 + i));
				int r = kvt_put(c, lay, &keys[i], a, bb);
				ssize_t g = kvt_get(c, lay, &keys[(i * 7) % N], b, bb);
				if (g == (ssize_t)bb) {
					kvt_test_fill(a, bb, (uint64_t)(p * 100000 + (i * 7) % N));
					if (memcmp(a, b, bb))
						wrong++;
					else
						ok_ops++;
				} else if (g != -ENOENT) {
					errors++;
				}
				errors += r < 0;
				/* No daemon right now: don't spin on connection attempts. */
				if (r == -KVT_EDAEMON)
					usleep(2000);
				/* The parent drops a file named stop when it is done killing. */
				if ((it & 63) == 0 && access(stop, F_OK) == 0)
					break;
			}
			/* After the last restart the client works again on its own. */
			kvt_test_fill(a, bb, 424242);
			int final_put = kvt_put(c, lay, &keys[0], a, bb);
			printf(
			    "client %d: %ld verified gets, %ld wrong, %ld errors while the daemon "
			    "died, final put %d\n",
			    p, ok_ops, wrong, errors, final_put);
			fflush(stdout);
			kvt_close(c);
			_exit(wrong ? 1 : (final_put < 0 ? 3 : 0));
		}
	}
	srand(seed);
	for (int r = 0; r < restarts; r++) {
		usleep(50000 + (useconds_t)(rand() % 150000));
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		cur_daemon = 0;
		pid = daemon_start("4MiB", NVME_ARGS, NULL);
		CHECK(pid > 0);
	}
	usleep(300000);
	char path[300];
	snprintf(path, sizeof(path), "%s/stop", dir);
	FILE *f = fopen(path, "w");
	if (f)
		fclose(f);
	int ok = 1;
	for (int p = 0; p < PROCS; p++) {
		int st;
		waitpid(kids[p], &st, 0);
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(stderr, "client %d exited %d\n", p,
				WIFEXITED(st) ? WEXITSTATUS(st) : -1);
			ok = 0;
		}
	}
	unlink(path);
	CHECK(ok);
	CHECK_EQ(daemon_stop(pid), 0);
	unlink(nvme_path_opt + strlen("nvme.paths="));
}

/* Runs fn as uid/gid in a child; returns its exit status (0 = every check held). */
struct tenant_arg {
	struct kvt_key key;
	uint64_t tag;
	int expect_get; /* 1: the block must read back as tag; 0: must be a miss */
};

static int tenant_put(void *p)
{
	struct tenant_arg *a = p;
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	uint8_t *buf = malloc(bb), *got = malloc(bb);
	struct kvt_client *c = connect_ok();
	int lay, bad = 0;

	if (!c)
		return 10;
	lay = kvt_register_layout(c, &l);
	if (a->expect_get) {
		kvt_test_fill(buf, bb, a->tag);
		bad |= kvt_get(c, lay, &a->key, got, bb) != (ssize_t)bb || memcmp(buf, got, bb);
	} else {
		/* Another tenant's key: invisible to every API. */
		bad |= kvt_lookup(c, lay, &a->key, 1) != 0;
		bad |= kvt_get(c, lay, &a->key, got, bb) != -ENOENT;
		bad |= kvt_delete(c, lay, &a->key) != -ENOENT;
		bad |= kvt_pin(c, lay, &a->key) != -ENOENT;
		struct kvt_lease ls;
		bad |= kvt_get_lease(c, lay, &a->key, &ls) != -ENOENT;
		/* ...and the same key is free to use in our own namespace. */
		kvt_test_fill(buf, bb, a->tag);
		bad |= kvt_put(c, lay, &a->key, buf, bb) != 0;
		bad |= kvt_get(c, lay, &a->key, got, bb) != (ssize_t)bb || memcmp(buf, got, bb);
		/* Admin commands need root or the admin group. */
		int rc;
		char *out = ctl(&rc, "evict --all 2>&1");
		bad |= rc != 1 || !out || !strstr(out, "permission denied");
		free(out);
		out = ctl(&rc, "writeback 2>&1");
		bad |= rc != 1;
		free(out);
		/* blocks and clients list only our own. */
		out = ctl(&rc, "--json blocks");
		char own[32];
		snprintf(own, sizeof(own), "\"uid\":%u", (unsigned)getuid());
		bad |= rc != 0 || !out || !strstr(out, own) || strstr(out, "\"uid\":0,") ||
		       strstr(out, "\"uid\":0}");
		free(out);
		out = ctl(&rc, "--json clients");
		bad |= rc != 0 || !out || strstr(out, "\"uid\":0,") != NULL;
		free(out);
	}
	kvt_close(c);
	free(buf);
	free(got);
	return bad ? 1 : 0;
}

static void test_tenant_isolation(void)
{
	uid_t ua, ub;
	gid_t ga, gb;

	if (geteuid() != 0 || kvt_test_user_id("kvtier-test-a", &ua, &ga) < 0 ||
	    kvt_test_user_id("kvtier-test-b", &ub, &gb) < 0) {
		printf("tenant_isolation: skipped (needs root and useradd)\n");
		return;
	}
	chmod(dir, 0755);
	pid_t pid = daemon_start("16MiB", NULL);
	CHECK(pid > 0);
	struct kvt_layout l = small_layout();
	struct tenant_arg a;
	kvt_test_make_keys(&l, 70, &a.key, 1);
	/* Root (an admin tenant of its own) stores the block. */
	struct kvt_client *c = connect_ok();
	int lay = kvt_register_layout(c, &l);
	size_t bb = kvt_layout_block_bytes(&l);
	uint8_t *buf = malloc(bb);
	kvt_test_fill(buf, bb, 111);
	CHECK_EQ(kvt_put(c, lay, &a.key, buf, bb), 0);
	/* Tenants A and B each see nothing of root's block and of each other's. */
	a.tag = 222;
	a.expect_get = 0;
	CHECK_EQ(kvt_test_as_user(ua, ga, tenant_put, &a), 0);
	a.tag = 333;
	CHECK_EQ(kvt_test_as_user(ub, gb, tenant_put, &a), 0);
	/* Each one's block is its own. */
	a.expect_get = 1;
	a.tag = 222;
	CHECK_EQ(kvt_test_as_user(ua, ga, tenant_put, &a), 0);
	a.tag = 333;
	CHECK_EQ(kvt_test_as_user(ub, gb, tenant_put, &a), 0);
	/* Root's block is untouched by all that. */
	uint8_t *got = malloc(bb);
	CHECK_EQ(kvt_get(c, lay, &a.key, got, bb), bb);
	CHECK(memcmp(buf, got, bb) == 0);
	CHECK_EQ(status_metric("tenants"), 3);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
	free(buf);
	free(got);
	chmod(dir, 0700);
}

/*
 * An unprivileged kvtierd with RLIMIT_MEMLOCK at 0: io_uring cannot pin its buffer arena (or
 * cannot start).  The daemon says so in its log, falls back, and every block demoted to NVMe
 * comes back bit-exact (issue: reliability, limits).
 */
static void memlock_round(rlim_t memlock)
{
	enum { N = 200 };
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	struct kvt_key keys[N];
	char *log = NULL;
	size_t cap = 0;
	int wrong;

	chmod(dir, 01777);
	snprintf(drop.log, sizeof(drop.log), "%s/memlock.log", dir);
	drop.memlock = memlock;
	drop.on = true;
	pid_t pid = daemon_start("4MiB", NVME_ARGS, NULL);
	drop.on = false;
	CHECK(pid > 0);
	struct kvt_client *c = connect_ok();
	CHECK(c);
	int lay = kvt_register_layout(c, &l);
	kvt_test_make_keys(&l, 90, keys, N);
	put_all(c, lay, keys, N, bb, 9000);
	CHECK(status_metric("demotions_total") > 0);
	CHECK_EQ(check_all(c, lay, keys, N, bb, 9000, &wrong), N);
	CHECK_EQ(wrong, 0);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
	FILE *f = fopen(drop.log, "r");
	CHECK(f);
	CHECK(getdelim(&log, &cap, 0, f) > 0);
	fclose(f);
	/* Either io_uring started without its pinned arena, or it did not start at all. */
	CHECK(strstr(log, "RLIMIT_MEMLOCK") || strstr(log, "io_uring unavailable"));
	printf("memlock_nonroot: limit %llu: %d blocks back through NVMe; log: %s",
	       (unsigned long long)memlock, N, strstr(log, "nvme:") ? strstr(log, "nvme:") : log);
	free(log);
	unlink(drop.log);
	unlink(nvme_path_opt + strlen("nvme.paths="));
	chmod(dir, 0700);
}

static void test_memlock_nonroot(void)
{
	if (geteuid() != 0 || kvt_test_user_id("kvtier-test-a", &drop.uid, &drop.gid) < 0) {
		printf("memlock_nonroot: skipped (needs root and useradd)\n");
		return;
	}
	/* 0: io_uring cannot even start; 2 MiB: it starts, its 64 MiB arena cannot be pinned. */
	memlock_round(0);
	memlock_round(2 << 20);
}

static long long nvme_tier_num(const char *name)
{
	return kvt_test_ctl_num(kvtierctl, sock, "tiers", "\"name\":\"nvme\"", name);
}

/* Prefetch brings NVMe blocks up ahead of gets; useful and wasted ones are counted. */
static void test_nvme_prefetch(void)
{
	enum { N = 200 };
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	struct kvt_key keys[N], unknown[4];
	int wrong, rc;
	pid_t pid = daemon_start("8MiB", NVME_ARGS, NULL);

	CHECK(pid > 0);
	struct kvt_client *c = connect_ok();
	int lay = kvt_register_layout(c, &l);
	kvt_test_make_keys(&l, 81, keys, N);
	kvt_test_make_keys(&l, 82, unknown, 4);
	put_all(c, lay, keys, N, bb, 8000);
	free(ctl(&rc, "writeback"));
	wait_metric("demotions_total", true, N);
	free(ctl(&rc, "evict --all"));
	CHECK_EQ(status_metric("blocks"), 0); /* host tier empty, all on NVMe */
	long long prom0 = status_metric("promotions_total");
	CHECK_EQ(kvt_prefetch(c, lay, keys, 20, 3, 0), 20);
	CHECK_EQ(kvt_prefetch(c, lay, unknown, 4, 1, 0), 4); /* not stored: ignored */
	wait_metric("promotions_total", true, prom0 + 20);
	CHECK_EQ(status_metric("prefetch_issued_total"), 20);
	CHECK_EQ(status_metric("promotions_total"), prom0 + 20);
	/* Now served from the host, bit-exact, and counted as useful. */
	CHECK_EQ(check_all(c, lay, keys, 20, bb, 8000, &wrong), 20);
	CHECK_EQ(wrong, 0);
	CHECK_EQ(status_metric("promotions_total"), prom0 + 20); /* no second read */
	CHECK_EQ(status_metric("prefetch_useful_total"), 20);
	CHECK(status_metric("prefetch_dropped_total") >= 4);
	/* Prefetched and never read, then evicted: wasted. */
	CHECK_EQ(kvt_prefetch(c, lay, keys + 100, 10, 0, 0), 10);
	wait_metric("promotions_total", true, prom0 + 30);
	free(ctl(&rc, "evict --all"));
	CHECK_EQ(status_metric("prefetch_wasted_total"), 10);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
	unlink(nvme_path_opt + strlen("nvme.paths="));
}

/*
 * A prefix prefetched at once is read as one request: 40 blocks written back one after the
 * other (kvtierctl writeback: in the order they were stored) are read in one merged read.
 * Prefetches in flight are limited by requests at the device, not by records; it was 8
 * records (a quarter of the queue depth) at a time: 35 merged at most.
 */
static void test_nvme_prefetch_merged(void)
{
	enum { N = 40 };
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	struct kvt_key keys[N];
	int wrong, rc;
	pid_t pid = daemon_start("16MiB", NVME_ARGS, NULL);

	CHECK(pid > 0);
	struct kvt_client *c = connect_ok();
	int lay = kvt_register_layout(c, &l);
	kvt_test_make_keys(&l, 83, keys, N);
	put_all(c, lay, keys, N, bb, 8100); /* 2.5 MiB: no demotion before the writeback */
	free(ctl(&rc, "writeback"));
	wait_metric("demotions_total", true, N);
	free(ctl(&rc, "evict --all"));
	CHECK_EQ(status_metric("blocks"), 0);
	long long prom0 = status_metric("promotions_total");
	long long merged0 = nvme_tier_num("merged_reads");
	CHECK_EQ(kvt_prefetch(c, lay, keys, N, 3, 0), N);
	wait_metric("promotions_total", true, prom0 + N);
	CHECK_EQ(nvme_tier_num("merged_reads") - merged0, N - 1);
	CHECK_EQ(check_all(c, lay, keys, N, bb, 8100, &wrong), N);
	CHECK_EQ(wrong, 0);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
	unlink(nvme_path_opt + strlen("nvme.paths="));
}

/* Client death at random points, many times: arena space, leases, pins and reservations
 * all come back (`kvtierctl status` returns to its baseline).  KVT_TEST_KILLS sets the count
 * (default 1000). */
static void test_client_kill_storm(void)
{
	struct kvt_layout l = small_layout();
	size_t bb = kvt_layout_block_bytes(&l);
	enum { K = 32 };
	struct kvt_key keys[K];
	const char *env = getenv("KVT_TEST_KILLS");
	int kills = env ? atoi(env) : 1000;
	pid_t pid = daemon_start("16MiB", NULL);

	CHECK(pid > 0);
	kvt_test_make_keys(&l, 90, keys, K);
	struct kvt_client *c = connect_ok();
	int lay = kvt_register_layout(c, &l);
	put_all(c, lay, keys, K / 2, bb, 600);
	long long used0 = status_metric("used_bytes");
	srand(seed);
	for (int k = 0; k < kills; k++) {
		unsigned delay = (unsigned)rand() % 3000;
		pid_t kid = fork();
		if (kid == 0) {
			struct kvt_client *m = connect_ok();
			struct kvt_reservation r;
			struct kvt_lease ls;
			if (!m)
				_exit(1);
			int ml = kvt_register_layout(m, &l);
			for (unsigned it = 0;; it++) {
				int i = (int)((it * 7 + (unsigned)getpid()) % K);
				switch (it % 4) {
				case 0:
					if (kvt_put_reserve(m, ml, &keys[i], bb, &r) == 0)
						memset(r.data, 0x5a, bb / 3); /* never committed */
					break;
				case 1:
					kvt_get_lease(m, ml, &keys[i % (K / 2)], &ls);
					break;
				case 2:
					kvt_pin(m, ml, &keys[i % (K / 2)]);
					break;
				default:
					kvt_lookup(m, ml, keys, K);
					break;
				}
			}
		}
		usleep(delay);
		kill(kid, SIGKILL);
		waitpid(kid, NULL, 0);
	}
	/* Everything the dead held comes back; the blocks put before are intact. */
	CHECK_EQ(back_to_baseline(used0), 0);
	int wrong;
	CHECK_EQ(check_all(c, lay, keys, K / 2, bb, 600, &wrong), K / 2);
	CHECK_EQ(wrong, 0);
	CHECK_EQ(kvt_lookup(c, lay, keys + K / 2, 1), 0); /* no reservation became visible */
	printf("client kill storm: %d clients SIGKILLed, all state back to baseline\n", kills);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
}

static const struct kvt_test_case tests[] = {
    {"basic", test_basic},
    {"eviction", test_eviction},
    {"many_processes", test_many_processes},
    {"client_sigkill", test_client_sigkill},
    {"bad_messages", test_bad_messages},
    {"garbage_rings", test_garbage_rings},
    {"config_errors", test_config_errors},
    {"kvtierctl", test_kvtierctl},
    {"nvme_spill_restart", test_nvme_spill_restart},
    {"nvme_crash_loop", test_nvme_crash_loop},
    {"nvme_corruption", test_nvme_corruption},
    {"nvme_faults", test_nvme_faults},
    {"nvme_prefetch", test_nvme_prefetch},
    {"nvme_prefetch_merged", test_nvme_prefetch_merged},
    {"signals", test_signals},
    {"nvme_partial_blocks", test_nvme_partial_blocks},
    {"nvme_codec_threads", test_nvme_codec_threads},
    {"nvme_codec_dict", test_nvme_codec_dict},
    {"daemon_crash_loop", test_daemon_crash_loop},
    {"tenant_isolation", test_tenant_isolation},
    {"memlock_nonroot", test_memlock_nonroot},
    {"client_kill_storm", test_client_kill_storm},
};

int main(int argc, char **argv)
{
	int ran, first_name = 3;

	if (argc < 3) {
		fprintf(stderr, "usage: test_daemon KVTIERD KVTIERCTL [--seed N] [TEST...]\n");
		return 2;
	}
	kvtierd = argv[1];
	kvtierctl = argv[2];
	seed = (unsigned)time(NULL);
	if (argc > 4 && !strcmp(argv[3], "--seed")) {
		seed = (unsigned)strtoul(argv[4], NULL, 0);
		first_name = 5;
	}
	printf("seed %u (rerun with --seed %u)\n", seed, seed);
	fflush(stdout);
	snprintf(dir, sizeof(dir), "/tmp/kvtier-it-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	snprintf(sock, sizeof(sock), "%s/kvtier.sock", dir);
	signal(SIGPIPE, SIG_IGN);
	ran = kvt_test_run_cases(tests, sizeof(tests) / sizeof(tests[0]), argv + first_name,
				 argc - first_name, &cur_daemon, NULL);
	return kvt_test_finish(dir, ran);
}
