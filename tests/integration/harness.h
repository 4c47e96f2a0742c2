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

/*
 * Starts kvtierd (argv[0] is its path; argv NULL-terminated, with -f) and waits for the
 * event that ends its start: readiness (it serves: returns its pid) or its exit (a refusal,
 * reaped: returns -1).  Never a timeout: kvtierd --ready-fd says which.  setup(arg), when
 * given, runs in the child before exec (a uid to drop to, a log file...).
 */
pid_t kvt_test_daemon_start(const char *const argv[], void (*setup)(void *), void *arg);

/* SIGTERM to a kvtierd and its exit: its exit status, 128 + the signal that ended it, or -1. */
int kvt_test_daemon_stop(pid_t pid);

/* A client on sock named name, or NULL (the error printed). */
struct kvt_client *kvt_test_connect(const char *sock, const char *name, int timeout_ms);

#endif
