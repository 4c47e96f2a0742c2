/* SPDX-License-Identifier: MIT */
/*
 * server.h - the kvtierd process: event loop, control socket, clients, tenants' arenas,
 * the host tier with its index, leases, pins and watermark LRU eviction.
 */
#ifndef KVTD_SERVER_H
#define KVTD_SERVER_H

#include <stdarg.h>

#include "config.h"

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

enum { KVTD_LOG_ERR = 0, KVTD_LOG_WARN, KVTD_LOG_INFO, KVTD_LOG_DEBUG };
extern int kvtd_log_level;
void kvtd_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
