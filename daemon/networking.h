/* SPDX-License-Identifier: MIT */
/*
 * networking.h - connections: listener, accept, handshake, replies, the end of a
 * connection (networking.c).
 */
#ifndef KVTD_NETWORKING_H
#define KVTD_NETWORKING_H

#include <stddef.h>
#include <stdint.h>

struct kvtd;
struct client;
struct kvt_msg_hello;
struct kvt_msg_layout;

/* Binds and listens on the socket path (or takes systemd's socket): 0 or -errno. */
int open_listener(struct kvtd *d);
/* Takes every pending connection (refused ones too: they are told why on their HELLO). */
void accept_clients(struct kvtd *d);
/* Back to polling the listener after accept() ran out of descriptors. */
void accept_resume(struct kvtd *d);
void handle_hello(struct kvtd *d, struct client *c, const struct kvt_msg_hello *m);
void handle_layout(struct kvtd *d, struct client *c, const struct kvt_msg_layout *m);
void handle_chain(struct kvtd *d, struct client *c, const struct kvt_msg_chain *m);
void handle_stats(struct kvtd *d, struct client *c);
/* Sends one message (with nfds descriptors) without blocking: 0 or -errno. */
int sock_send(int fd, const void *buf, size_t len, const int *fds, int nfds);
/* Sends a RESULT message carrying res. */
int send_result(int fd, int res);
/* Ends c's connection (why: logged as a warning; NULL: it hung up) and returns all it held;
 * c is freed by client_free at the end of the loop turn. */
void client_kill(struct kvtd *d, struct client *c, const char *why);
/* Frees a connection ended by client_kill (its admin job goes first: admin_job_free). */
void client_free(struct kvtd *d, struct client *c);
/* Counts the deaths of peers whose connections ended holding something (at a tick). */
void death_tick(struct kvtd *d);
/* Closes connections that said no HELLO within daemon.handshake_timeout_ms. */
void handshake_timeouts(struct kvtd *d);

#endif
