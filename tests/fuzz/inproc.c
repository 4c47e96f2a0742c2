/* SPDX-License-Identifier: MIT */
/*
 * inproc.c - see inproc.h.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"
#include "inproc.h"
#include "server.h"

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
	unsigned checks;
} G;

void kvt_inproc_die(const char *what)
{
	fprintf(stderr, "fuzz (in-process kvtierd): %s\n", what);
	abort();
}

static void *loop_main(void *arg)
{
	if (kvtd_run(arg) < 0)
		kvt_inproc_die("the daemon's loop failed");
	return NULL;
}

struct kvt_layout kvt_inproc_layout(void)
{
	struct kvt_layout l = {sizeof(l), 2, 2, 64, 16, KVT_DTYPE_FP16, 0, 0, 1, "fuzz-inproc"};
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

const char *kvt_inproc_sock(void)
{
	return G.sock;
}

unsigned kvt_inproc_checks(void)
{
	return G.checks;
}

void kvt_inproc_start(void)
{
	struct kvtd_config cfg;
	char opt[256];
	struct kvt_layout l = kvt_inproc_layout();
	struct kvt_connect_opts o = {
	    .size = sizeof(o), .socket_path = G.sock, .name = "fuzz-good", .timeout_ms = 5000};
	uint32_t tok[NCANARY * 16];

	if (G.d)
		return;
	snprintf(G.dir, sizeof(G.dir), "/tmp/kvt-fuzz.XXXXXX");
	if (!mkdtemp(G.dir))
		kvt_inproc_die("mkdtemp");
	snprintf(G.sock, sizeof(G.sock), "%s/s", G.dir);
	kvtd_config_defaults(&cfg);
	snprintf(opt, sizeof(opt), "daemon.socket=%s", G.sock);
	if (kvtd_config_set(&cfg, opt, stderr) < 0 ||
	    kvtd_config_set(&cfg, "host.capacity=8MiB", stderr) < 0 ||
	    kvtd_config_set(&cfg, "daemon.spin_us=0", stderr) < 0 ||
	    kvtd_config_set(&cfg, "daemon.log_level=error", stderr) < 0 ||
	    kvtd_config_validate(&cfg, stderr) < 0)
		kvt_inproc_die("config");
	if (kvtd_create(&cfg, &G.d) < 0)
		kvt_inproc_die("kvtd_create");
	if (pthread_create(&G.loop, NULL, loop_main, G.d))
		kvt_inproc_die("pthread_create");
	if (kvt_connect(&o, &G.good) < 0)
		kvt_inproc_die("the good client cannot connect");
	G.lay = kvt_register_layout(G.good, &l);
	G.bb = kvt_layout_block_bytes(&l);
	G.want = malloc(G.bb);
	G.got = malloc(G.bb);
	for (unsigned i = 0; i < NCANARY * 16; i++)
		tok[i] = i * 2654435761u + 7;
	if (G.lay < 0 || !G.want || !G.got ||
	    kvt_key_chain(kvt_layout_fingerprint(&l), 16, NULL, tok, NCANARY * 16, G.keys,
			  NCANARY) < 0)
		kvt_inproc_die("good client setup");
	for (unsigned i = 0; i < NCANARY; i++) {
		fill(G.want, G.bb, i);
		if (kvt_put(G.good, G.lay, &G.keys[i], G.want, G.bb) < 0 ||
		    kvt_pin(G.good, G.lay, &G.keys[i]) < 0)
			kvt_inproc_die("canary put/pin");
	}
}

void kvt_inproc_check(void)
{
	for (unsigned i = 0; i < NCANARY; i++) {
		ssize_t n = kvt_get(G.good, G.lay, &G.keys[i], G.got, G.bb);

		fill(G.want, G.bb, i);
		if (n != (ssize_t)G.bb || memcmp(G.want, G.got, G.bb))
			kvt_inproc_die("a canary block changed or vanished");
	}
	G.checks++;
}

int kvt_inproc_hello(int fds[KVT_HELLO_NFDS], struct kvt_msg_hello_reply *r)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct kvt_msg_hello h;
	struct kvt_msg_layout m;
	struct kvt_layout l = kvt_inproc_layout();
	uint8_t res[256];
	union {
		char buf[CMSG_SPACE(sizeof(int) * KVT_HELLO_NFDS)];
		struct cmsghdr a;
	} u;
	struct iovec iov = {r, sizeof(*r)};
	struct msghdr mh = {.msg_iov = &iov,
			    .msg_iovlen = 1,
			    .msg_control = u.buf,
			    .msg_controllen = sizeof(u.buf)};
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", G.sock);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		kvt_inproc_die("cannot connect");
	memset(&h, 0, sizeof(h));
	kvt_msg_init(&h.h, KVT_MSG_HELLO, sizeof(h));
	h.lib_version = KVT_VERSION_NUMBER;
	ssize_t n;

	/* libFuzzer's -timeout alarm interrupts blocking calls: retried. */
	while ((n = send(fd, &h, sizeof(h), MSG_NOSIGNAL)) < 0 && errno == EINTR)
		;
	if (n == (ssize_t)sizeof(h))
		while ((n = recvmsg(fd, &mh, 0)) < 0 && errno == EINTR)
			;
	if (n != (ssize_t)sizeof(*r) || r->res < 0 || !CMSG_FIRSTHDR(&mh)) {
		fprintf(stderr, "fuzz: handshake: reply %zd bytes, res %d (%s), errno %d\n", n,
			n >= (ssize_t)sizeof(struct kvt_msg_result)
			    ? ((struct kvt_msg_result *)(void *)r)->res
			    : 0,
			kvt_strerror(n >= (ssize_t)sizeof(struct kvt_msg_result)
					 ? ((struct kvt_msg_result *)(void *)r)->res
					 : 0),
			errno);
		kvt_inproc_die("handshake failed");
	}
	memcpy(fds, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(int) * KVT_HELLO_NFDS);
	memset(&m, 0, sizeof(m));
	kvt_msg_init(&m.h, KVT_MSG_LAYOUT, sizeof(m));
	memcpy(&m.layout, &l, sizeof(l));
	while ((n = send(fd, &m, sizeof(m), MSG_NOSIGNAL)) < 0 && errno == EINTR)
		;
	if (n == (ssize_t)sizeof(m))
		while ((n = recv(fd, res, sizeof(res), 0)) < 0 && errno == EINTR)
			;
	if (n <= 0)
		kvt_inproc_die("layout registration failed");
	return fd;
}
