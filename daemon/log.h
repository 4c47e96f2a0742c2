/* SPDX-License-Identifier: MIT */
/*
 * log.h - kvtierd's log and clock (log.c), the bottom of the daemon: every layer calls them,
 * they call nothing of the daemon.
 */
#ifndef KVTD_LOG_H
#define KVTD_LOG_H

#include <stdint.h>

enum { KVTD_LOG_ERR = 0, KVTD_LOG_WARN, KVTD_LOG_INFO, KVTD_LOG_DEBUG };
extern int kvtd_log_level;
void kvtd_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* CLOCK_MONOTONIC in milliseconds: the daemon's clock (block atime, timeouts, rates). */
uint64_t kvtd_now_ms(void);

#endif
