/* SPDX-License-Identifier: MIT */
/*
 * admin.h - the admin commands (admin.c).
 */
#ifndef KVTD_ADMIN_H
#define KVTD_ADMIN_H

struct kvtd;
struct client;
struct kvt_msg_admin;
struct sbuf;

/* Runs admin command m of c and replies (a `blocks` listing replies when its job ends). */
void handle_admin(struct kvtd *d, struct client *c, const struct kvt_msg_admin *m);
/* Runs one batch of c's listing (c->job); sends the reply when it is done.  Returns entries
 * seen. */
int admin_job_step(struct kvtd *d, struct client *c);
/* Frees c's listing, if any (a connection that ended). */
void admin_job_free(struct client *c);
/* Sends c the reply b (ret: its result) of a command that answers later (calibrate), and
 * reads c's socket again. */
void admin_reply(struct kvtd *d, struct client *c, struct sbuf *b, int ret);
/* Reads the sockets of connections held back by daemon.user_admin_rate again (a tick). */
void admin_unthrottle(struct kvtd *d);

#endif
