/* SPDX-License-Identifier: MIT */
/*
 * log.c - kvtierd's log lines (stderr, or the journal's priorities under systemd) and its
 * clock.  Called from every part of the daemon; calls none.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

int kvtd_log_level = KVTD_LOG_INFO;

void kvtd_log(int level, const char *fmt, ...)
{
	static const char *const names[] = {"error", "warning", "info", "debug"};
	static const int prio[] = {3, 4, 6, 7};
	va_list ap;

	if (level > kvtd_log_level)
		return;
	/* Under journald (JOURNAL_STREAM set) a <N> prefix carries the priority and the
	 * journal adds the time; elsewhere the line has its own (UTC, milliseconds). */
	if (getenv("JOURNAL_STREAM")) {
		fprintf(stderr, "<%d>", prio[level]);
	} else {
		struct timespec ts;
		struct tm tm;
		char when[32];

		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
		fprintf(stderr, "%s.%03ldZ kvtierd[%d]: %s: ", when, ts.tv_nsec / 1000000,
			(int)getpid(), names[level]);
	}
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

uint64_t kvtd_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}
