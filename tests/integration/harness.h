/* SPDX-License-Identifier: MIT */
/*
 * harness.h - small helpers shared by the integration tests that drive a real kvtierd.
 */
#ifndef KVT_TEST_HARNESS_H
#define KVT_TEST_HARNESS_H

#include <sys/types.h>

struct kvt_client;

/* Runs a shell command line; returns its stdout (malloc'd) or NULL; *rc gets its exit status
 * (-1 when it did not exit normally). */
char *kvt_test_run(int *rc, const char *cmd);

/* The value of "name":N in JSON text (the first one), or -1. */
long long kvt_test_json_num(const char *js, const char *name);

/* SIGTERM to a kvtierd and its exit: its exit status, 128 + the signal that ended it, or -1. */
int kvt_test_daemon_stop(pid_t pid);

/*
 * Starts a kvtierd (argv: its path and arguments, NULL-terminated; it must run in the
 * foreground and serve sock) and returns its pid once sock accepts connections: kvtierd
 * renames a listening socket onto the path, so its appearance is the readiness event.
 * Waits on events (inotify on sock's directory, a pidfd for an early exit), never on time;
 * timeout_ms (-1: none) only bounds a daemon that hangs, which is then killed.  sock is
 * unlinked first (a SIGKILLed daemon leaves its socket behind).  log: a file that gets the
 * daemon's stderr appended, or NULL to share the caller's.  Returns -1 when the daemon exits
 * first (*status, if not NULL, gets its exit status, 128 + signal) or hangs (*status -1).
 */
pid_t kvt_test_daemon_spawn(char *const argv[], const char *sock, const char *log, int timeout_ms,
			    int *status);

/* A client on sock named name, or NULL (the error printed). */
struct kvt_client *kvt_test_connect(const char *sock, const char *name, int timeout_ms);

#endif
