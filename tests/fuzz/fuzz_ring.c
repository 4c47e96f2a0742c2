/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for ring entries: what a hostile client can write into its own submission ring.
 *
 * A real kvtierd runs in this process (its event loop on a thread, so that libFuzzer sees the
 * daemon's coverage and ASan checks it), with a well-behaved client that put and pinned four
 * canary blocks.  A raw client does the handshake by hand, maps its ring and, per input,
 * writes the input as submission entries (forged ops, flags, layouts, handles, offsets,
 * lengths, lookup counts), optionally scribbles the scratch area and publishes a forged tail,
 * then rings the doorbell and waits until the daemon has consumed the ring or dropped the
 * connection.  Invariants: the daemon never crashes or hangs, and the canaries stay present
 * and bit-exact (a hostile client may hurt itself, nobody else).
 *
 * Input: byte 0 = mode (bit 0: publish the 32-bit tail found in bytes 1-4 as is; bit 1: fill
 * the scratch area with the input; bit 2: reconnect first), then 64-byte entries.
 *
 * Linked with replay_main.c it is the ctest driver that replays tests/fuzz/corpus/ring/.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "kvt_proto.h"
#include "kvt_ring.h"
#include "kvt_shm.h"
#include "kvtier.h"
#include "server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int kvt_fuzz_replay_check(void);

#define NCANARY 4

static struct {
	char dir[64], sock[100];
	struct kvtd *d;
	pthread_t loop;
	struct kvt_client *good;
	int lay;
	struct kvt_key keys[NCANARY];
	size_t bb;
	uint8_t *want, *got;
	/* the hostile side */
	int fd, fds[KVT_HELLO_NFDS];
	uint8_t *ring;
	uint32_t ring_size, tail, inputs;
	unsigned checks;
} F = {.fd = -1};

static void die(const char *what)
{
	fprintf(stderr, "fuzz_ring: %s\n", what);
	abort();
}

static void *loop_main(void *arg)
{
	int r = kvtd_run(arg);

	if (r < 0)
		die("the daemon's loop failed");
	return NULL;
}

static struct kvt_layout layout(void)
{
	struct kvt_layout l = {sizeof(l), 2, 2, 64, 16, KVT_DTYPE_FP16, 0, 0, 1, "fuzz-ring"};
	return l;
}

static void fill(uint8_t *p, size_t n, uint64_t tag)
{
	uint64_t x = tag * 0x9e3779b97f4a7c15ull + 1;

	for (size_t i = 0; i < n; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		p[i] = (uint8_t)x;
	}
}

static void hostile_close(void)
{
	if (F.ring)
		munmap(F.ring, F.ring_size);
	F.ring = NULL;
	for (int i = 0; i < KVT_HELLO_NFDS; i++) {
		if (F.fd >= 0 && F.fds[i] >= 0)
			close(F.fds[i]);
		F.fds[i] = -1;
	}
	if (F.fd >= 0)
		close(F.fd);
	F.fd = -1;
}

/* Handshake by hand, a layout registered as id 0: entries can reach deep into the ops. */
static void hostile_open(void)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct kvt_msg_hello h;
	struct kvt_msg_hello_reply r;
	struct kvt_msg_layout m;
	uint8_t res[256];
	union {
		char buf[CMSG_SPACE(sizeof(int) * KVT_HELLO_NFDS)];
		struct cmsghdr a;
	} u;
	struct iovec iov = {&r, sizeof(r)};
	struct msghdr mh = {.msg_iov = &iov,
			    .msg_iovlen = 1,
			    .msg_control = u.buf,
			    .msg_controllen = sizeof(u.buf)};
	struct kvt_layout l = layout();

	F.fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", F.sock);
	if (F.fd < 0 || connect(F.fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("cannot connect");
	memset(&h, 0, sizeof(h));
	kvt_msg_init(&h.h, KVT_MSG_HELLO, sizeof(h));
	h.lib_version = KVT_VERSION_NUMBER;
	if (send(F.fd, &h, sizeof(h), MSG_NOSIGNAL) != (ssize_t)sizeof(h) ||
	    recvmsg(F.fd, &mh, 0) != (ssize_t)sizeof(r) || r.res < 0 || !CMSG_FIRSTHDR(&mh))
		die("handshake failed");
	memcpy(F.fds, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(F.fds));
	F.ring_size = r.ring_size;
	F.ring = mmap(NULL, r.ring_size, PROT_READ | PROT_WRITE, MAP_SHARED, F.fds[0], 0);
	if (F.ring == MAP_FAILED)
		die("cannot map the ring");
	F.tail = 0;
	memset(&m, 0, sizeof(m));
	kvt_msg_init(&m.h, KVT_MSG_LAYOUT, sizeof(m));
	memcpy(&m.layout, &l, sizeof(l));
	if (send(F.fd, &m, sizeof(m), MSG_NOSIGNAL) != (ssize_t)sizeof(m) ||
	    recv(F.fd, res, sizeof(res), 0) <= 0)
		die("layout registration failed");
}

static void setup(void)
{
	struct kvtd_config cfg;
	char opt[256];
	struct kvt_layout l = layout();

	snprintf(F.dir, sizeof(F.dir), "/tmp/kvt-fuzz-ring.XXXXXX");
	if (!mkdtemp(F.dir))
		die("mkdtemp");
	snprintf(F.sock, sizeof(F.sock), "%s/s", F.dir);
	kvtd_config_defaults(&cfg);
	snprintf(opt, sizeof(opt), "daemon.socket=%s", F.sock);
	if (kvtd_config_set(&cfg, opt, stderr) < 0 ||
	    kvtd_config_set(&cfg, "host.capacity=8MiB", stderr) < 0 ||
	    kvtd_config_set(&cfg, "daemon.spin_us=0", stderr) < 0 ||
	    kvtd_config_set(&cfg, "daemon.log_level=error", stderr) < 0 ||
	    kvtd_config_validate(&cfg, stderr) < 0)
		die("config");
	if (kvtd_create(&cfg, &F.d) < 0)
		die("kvtd_create");
	if (pthread_create(&F.loop, NULL, loop_main, F.d))
		die("pthread_create");

	struct kvt_connect_opts o = {sizeof(o), F.sock, "fuzz-good", 5000};
	uint32_t tok[NCANARY * 16];

	if (kvt_connect(&o, &F.good) < 0)
		die("good client cannot connect");
	F.lay = kvt_register_layout(F.good, &l);
	F.bb = kvt_layout_block_bytes(&l);
	F.want = malloc(F.bb);
	F.got = malloc(F.bb);
	for (unsigned i = 0; i < NCANARY * 16; i++)
		tok[i] = i * 2654435761u + 7;
	if (F.lay < 0 || !F.want || !F.got ||
	    kvt_key_chain(kvt_layout_fingerprint(&l), 16, NULL, tok, NCANARY * 16, F.keys,
			  NCANARY) < 0)
		die("good client setup");
	for (unsigned i = 0; i < NCANARY; i++) {
		fill(F.want, F.bb, i);
		if (kvt_put(F.good, F.lay, &F.keys[i], F.want, F.bb) < 0 ||
		    kvt_pin(F.good, F.lay, &F.keys[i]) < 0)
			die("canary put/pin");
	}
	for (int i = 0; i < KVT_HELLO_NFDS; i++)
		F.fds[i] = -1;
	hostile_open();
}

/* The pinned canaries are all there, byte for byte. */
static void check_canaries(void)
{
	for (unsigned i = 0; i < NCANARY; i++) {
		ssize_t n = kvt_get(F.good, F.lay, &F.keys[i], F.got, F.bb);

		fill(F.want, F.bb, i);
		if (n != (ssize_t)F.bb || memcmp(F.want, F.got, F.bb))
			die("a canary block changed or vanished");
	}
	F.checks++;
}

/* Waits until the daemon consumed everything published, or dropped the connection. */
static void wait_consumed(void)
{
	struct kvt_shm_hdr *sh = (struct kvt_shm_hdr *)F.ring;
	struct kvt_ring_ctl *sq = (struct kvt_ring_ctl *)(F.ring + sh->sq_off);
	struct timespec t0, t1;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		struct pollfd p = {.fd = F.fd, .events = POLLIN};
		uint8_t junk[512];

		if (atomic_load(&sq->head) == F.tail)
			return;
		if (poll(&p, 1, 1) > 0 && recv(F.fd, junk, sizeof(junk), MSG_DONTWAIT) == 0) {
			hostile_close(); /* the daemon dropped us: fine, it was hostile */
			return;
		}
		clock_gettime(CLOCK_MONOTONIC, &t1);
		/* A forged tail or header may leave the ring unconsumable; the connection must
		 * then be dropped, or the entries simply never looked at: neither may take the
		 * daemon down, which the canary check after this proves. */
		if ((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 > 50) {
			hostile_close();
			return;
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kvt_shm_hdr *sh;
	struct kvt_ring_ctl *sq, *cq;
	struct kvt_sqe *e;
	uint32_t n, mode, cnt;
	uint64_t one = 1;

	if (!F.d)
		setup();
	if (!size)
		return 0;
	mode = data[0];
	if ((mode & 4) || ++F.inputs % 512 == 0)
		hostile_close(); /* also bounds what one connection holds */
	if (F.fd < 0)
		hostile_open();
	sh = (struct kvt_shm_hdr *)F.ring;
	sq = (struct kvt_ring_ctl *)(F.ring + sh->sq_off);
	cq = (struct kvt_ring_ctl *)(F.ring + sh->cq_off);
	e = (struct kvt_sqe *)(F.ring + sh->sq_off + sizeof(*sq));
	n = sh->sq_entries;
	cnt = (uint32_t)((size - 1) / sizeof(*e));
	if (cnt > n)
		cnt = n;
	for (uint32_t i = 0; i < cnt; i++)
		memcpy(&e[(F.tail + i) & (n - 1)], data + 1 + i * sizeof(*e), sizeof(*e));
	if ((mode & 2) && sh->scratch_off && sh->scratch_off < F.ring_size) {
		uint8_t *s = F.ring + sh->scratch_off;
		size_t room = F.ring_size - sh->scratch_off;

		for (size_t i = 0; i < room; i++)
			s[i] = data[i % size];
	}
	if ((mode & 1) && size >= 5)
		memcpy(&F.tail, data + 1, 4);
	else
		F.tail += cnt;
	/* Completions are never read: a full completion ring is part of the game, but the
	 * head moves now and then so that long runs exercise the normal path too. */
	if (!(F.inputs & 1))
		kvt_ring_consume(cq, kvt_ring_tail(cq));
	kvt_ring_publish(sq, F.tail);
	if (write(F.fds[2], &one, sizeof(one)) < 0) {
	}
	wait_consumed();
	check_canaries();
	return 0;
}

int kvt_fuzz_replay_check(void)
{
	/* The replay ran at least one input through the daemon and checked the canaries. */
	return F.checks ? 0 : 1;
}
