/* SPDX-License-Identifier: MIT */
/*
 * server.h - kvtierd as kvtierd.c (main) sees it: create, run and destroy the daemon, and
 * the hooks main sets.  The daemon's parts have their own headers (daemon.h and the ones
 * it names).
 */
#ifndef KVTD_SERVER_H
#define KVTD_SERVER_H

#include "config.h"
#include "log.h"

struct kvtd;

/* Creates the daemon: binds the socket (or takes it from systemd), allocates the index.
 * Returns 0 or -errno (message logged). */
int kvtd_create(const struct kvtd_config *cfg, struct kvtd **out);
/* Runs until SIGTERM/SIGINT. Returns 0 or -errno. */
int kvtd_run(struct kvtd *d);
void kvtd_destroy(struct kvtd *d);

/* Called once when kvtierd serves (where READY=1 goes to systemd): kvtierd.c's readiness
 * pipe.  NULL: nothing. */
extern void (*kvtd_on_ready)(void);
/* SIGHUP: fills cfg with the configuration read again (0), or logs why not (-errno).  The
 * daemon applies what can change live and logs the rest.  NULL: SIGHUP is ignored. */
extern int (*kvtd_reload)(struct kvtd_config *cfg);

#endif
