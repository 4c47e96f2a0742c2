/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for control messages as the daemon handles them (fuzz_msg covers only their
 * parser): every input becomes one message on a control connection of an in-process kvtierd
 * (inproc.c), after a handshake, so that the handlers of HELLO, LAYOUT, STATS, ADMIN (every
 * command, as an admin), GPU_ATTACH and GPU_OP run on forged fields.  Invariants: the daemon
 * never crashes or hangs, every message gets its answer or the connection is dropped, and
 * another client's pinned canary blocks stay present and bit-exact.
 *
 * Input: byte 0 = type (taken modulo 12: known types, RESULT and replies the daemon must
 * refuse, unknowns), byte 1 bit 0 = send the input raw (no header fix-up), bit 1 = a fresh
 * connection first; the rest is the message after its header.  With the fix-up, magic,
 * version, type and length are made right, so the handlers see the forged body.
 *
 * Linked with replay_main.c it is the ctest driver that replays tests/fuzz/corpus/ctl/.
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "inproc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int kvt_fuzz_replay_check(void);

static int conn = -1, conn_fds[KVT_HELLO_NFDS];

static void conn_close(void)
{
	if (conn < 0)
		return;
	for (int i = 0; i < KVT_HELLO_NFDS; i++)
		close(conn_fds[i]);
	close(conn);
	conn = -1;
}

/* Reads every reply part until a pause; false when the daemon dropped the connection. */
static int drain_replies(void)
{
	static uint8_t buf[KVT_MSG_MAX + 4096];
	int got = 0;

	for (;;) {
		struct pollfd p = {.fd = conn, .events = POLLIN};
		union {
			char b[CMSG_SPACE(sizeof(int) * 8)];
			struct cmsghdr a;
		} u;
		struct iovec iov = {buf, sizeof(buf)};
		struct msghdr mh = {.msg_iov = &iov,
				    .msg_iovlen = 1,
				    .msg_control = u.b,
				    .msg_controllen = sizeof(u.b)};
		ssize_t n;

		/* The first answer may take a moment; more parts follow at once.  libFuzzer's
		 * -timeout alarm may interrupt the wait: waited again. */
		int pr;

		while ((pr = poll(&p, 1, got ? 5 : 2000)) < 0 && errno == EINTR)
			;
		if (pr <= 0)
			return got ? 1 : -1;
		n = recvmsg(conn, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n <= 0)
			return 0;
		/* A forged second HELLO may be answered with descriptors: close them. */
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
				int *fds = (int *)CMSG_DATA(c);
				size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);

				for (size_t i = 0; i < k; i++)
					close(fds[i]);
			}
		}
		got = 1;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t msg[KVT_MSG_MAX];
	struct kvt_msg_hello_reply r;
	size_t len;
	ssize_t sent;
	int ans;

	kvt_inproc_start();
	if (size < 2)
		return 0;
	if ((data[1] & 2) || conn < 0) {
		conn_close();
		conn = kvt_inproc_hello(conn_fds, &r);
	}
	if (data[1] & 1) {
		len = size - 2 < sizeof(msg) ? size - 2 : sizeof(msg);
		memcpy(msg, data + 2, len);
	} else {
		size_t body = size - 2;

		len = sizeof(struct kvt_msg_hdr) + body;
		if (len > sizeof(msg))
			len = sizeof(msg);
		memset(msg, 0, sizeof(struct kvt_msg_hdr));
		memcpy(msg + sizeof(struct kvt_msg_hdr), data + 2,
		       len - sizeof(struct kvt_msg_hdr));
		kvt_msg_init((struct kvt_msg_hdr *)msg, (uint16_t)(data[0] % 12), (uint32_t)len);
	}
	while ((sent = send(conn, msg, len, MSG_NOSIGNAL)) < 0 && errno == EINTR)
		;
	if (!len || sent != (ssize_t)len) {
		conn_close();
		kvt_inproc_check();
		return 0;
	}
	ans = drain_replies();
	if (ans < 0)
		kvt_inproc_die("a control message got no answer within 2 s");
	if (ans == 0)
		conn_close(); /* dropped: fine for a hostile client */
	kvt_inproc_check();
	return 0;
}

int kvt_fuzz_replay_check(void)
{
	return kvt_inproc_checks() ? 0 : 1;
}
