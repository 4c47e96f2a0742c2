/* SPDX-License-Identifier: MIT */
/*
 * inproc.h - a kvtierd inside a fuzzer's process, for the targets that attack the daemon
 * through its socket and rings (fuzz_ring, fuzz_ctl).  The event loop runs on a thread, so
 * libFuzzer's coverage and ASan see the daemon; a well-behaved client holds pinned canary
 * blocks that kvt_inproc_check() reads back after every input.
 */
#ifndef KVT_FUZZ_INPROC_H
#define KVT_FUZZ_INPROC_H

#include <stdint.h>

#include "kvt_proto.h"
#include "kvtier.h"

/* Starts the daemon and the canaries once; later calls do nothing. Aborts on failure. */
void kvt_inproc_start(void);

/* The daemon's socket path. */
const char *kvt_inproc_sock(void);

/* The layout the canaries use (registered as id 0 by kvt_inproc_hello()). */
struct kvt_layout kvt_inproc_layout(void);

/* Aborts unless every canary block reads back present and bit-exact. */
void kvt_inproc_check(void);

/* How many times kvt_inproc_check() passed. */
unsigned kvt_inproc_checks(void);

/*
 * A raw connection: socket, handshake by hand (fds[] gets the ring memfd, arena memfd, sq and
 * cq eventfds; *r the reply), and the canaries' layout registered as id 0.  Returns the socket.
 */
int kvt_inproc_hello(int fds[KVT_HELLO_NFDS], struct kvt_msg_hello_reply *r);

void kvt_inproc_die(const char *what) __attribute__((noreturn));

#endif
