/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for ring entries: what a hostile client can write into its own submission ring.
 *
 * A real kvtierd runs in this process (inproc.c: its event loop on a thread, so that libFuzzer
 * sees the daemon's coverage and ASan checks it), with a well-behaved client that put and
 * pinned four canary blocks.  A raw client does the handshake by hand, maps its ring and, per
 * input, writes the input as submission entries (forged ops, flags, layouts, handles, offsets,
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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "inproc.h"
#include "kvt_ring.h"
#include "kvt_shm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int kvt_fuzz_replay_check(void);

/* The hostile side: a hand-made client and its mapped ring. */
static struct {
	int fd, fds[KVT_HELLO_NFDS];
	uint8_t *ring;
	uint32_t ring_size, tail, inputs;
} F = {.fd = -1};

static void hostile_close(void)
{
	if (F.ring)
		munmap(F.ring, F.ring_size);
	F.ring = NULL;
	if (F.fd < 0)
		return;
	for (int i = 0; i < KVT_HELLO_NFDS; i++)
		close(F.fds[i]);
	close(F.fd);
	F.fd = -1;
}

static void hostile_open(void)
{
	struct kvt_msg_hello_reply r;

	F.fd = kvt_inproc_hello(F.fds, &r);
	F.ring_size = r.ring_size;
	F.ring = mmap(NULL, r.ring_size, PROT_READ | PROT_WRITE, MAP_SHARED, F.fds[0], 0);
	if (F.ring == MAP_FAILED)
		kvt_inproc_die("cannot map the ring");
	F.tail = 0;
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

	kvt_inproc_start();
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
	kvt_inproc_check();
	return 0;
}

int kvt_fuzz_replay_check(void)
{
	/* The replay ran at least one input through the daemon and checked the canaries. */
	return kvt_inproc_checks() ? 0 : 1;
}
