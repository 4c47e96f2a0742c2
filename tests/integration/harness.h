/* SPDX-License-Identifier: MIT */
/*
 * harness.h - small helpers shared by the integration tests that drive a real kvtierd.
 */
#ifndef KVT_TEST_HARNESS_H
#define KVT_TEST_HARNESS_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

struct kvt_client;
struct kvt_key;
struct kvt_layout;

/* Failed checks so far, of all the tests run. */
extern int kvt_test_failures;

/*
 * CHECK(cond) and CHECK_EQ(a, b): on a failed check, print where and what, count it and
 * leave the test: KVT_CHECK_FAIL, `return` unless the file defines it (e.g. `goto out`)
 * before it includes this header.
 */
#ifndef KVT_CHECK_FAIL
#define KVT_CHECK_FAIL return
#endif

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__,       \
				__func__, #cond);                                                  \
			kvt_test_failures++;                                                       \
			KVT_CHECK_FAIL;                                                            \
		}                                                                                  \
	} while (0)

#define CHECK_EQ(a, b)                                                                             \
	do {                                                                                       \
		long long _a = (long long)(a), _b = (long long)(b);                                \
		if (_a != _b) {                                                                    \
			fprintf(stderr, "%s:%d: %s: %s == %lld, expected %s == %lld\n", __FILE__,  \
				__LINE__, __func__, #a, _a, #b, _b);                               \
			kvt_test_failures++;                                                       \
			KVT_CHECK_FAIL;                                                            \
		}                                                                                  \
	} while (0)

/* A test of a table: its name on the command line, its function. */
struct kvt_test_case {
	const char *name;
	void (*fn)(void);
};

/*
 * Runs the tests of t[0..n) named in names[0..nnames), or all when none is named.  After each:
 * kills the daemon *cur still names (a failed check left early; cur may be NULL), prints the
 * daemon's log when the test failed and log is given, and the test's result.  Returns how many ran.
 */
int kvt_test_run_cases(const struct kvt_test_case *t, size_t n, char *const names[], int nnames,
		       pid_t *cur, const char *log);

/* Removes the tests' directory dir, prints the tally of ran tests; main's exit status. */
int kvt_test_finish(const char *dir, int ran);

/* Runs the shell command line fmt...; its stdout (malloc'd) or NULL, *rc its exit status. */
char *kvt_test_sh(int *rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* `kvtierctl --socket sock ARGS` with ARGS from fmt...; like kvt_test_sh. */
char *kvt_test_ctl(int *rc, const char *kvtierctl, const char *sock, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * The number name of `kvtierctl --socket sock --json cmd`, after the text within (the first
 * one) when within is given: -2 when kvtierctl fails, -1 when there is no such number.
 */
long long kvt_test_ctl_num(const char *kvtierctl, const char *sock, const char *cmd,
			   const char *within, const char *name);

/* The uid and gid of user name, made (a system user) when there is none; 0, or -1. */
int kvt_test_user_id(const char *name, uid_t *uid, gid_t *gid);

/* fn(arg) in a child process running as uid:gid: its exit status, 99 when it could not
 * become that user, 128 when it did not exit, -1 when it could not be waited for. */
int kvt_test_as_user(uid_t uid, gid_t gid, int (*fn)(void *), void *arg);

/* In a child before exec: stderr into the file path (created or truncated), or _exit(126). */
void kvt_test_stderr_to(const char *path);

/* n bytes at p, the same for the same tag (xorshift). */
void kvt_test_fill(uint8_t *p, size_t n, uint64_t tag);

/* The keys of n blocks of l, a chain of tokens salted with salt. */
void kvt_test_make_keys(const struct kvt_layout *l, uint32_t salt, struct kvt_key *keys, int n);

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

/*
 * kvt_test_daemon_start of `kvtierd -f -s sock -o host.capacity=capacity -o
 * daemon.log_level=warn` and the arguments of ap up to a NULL (30 at most); sock is
 * unlinked first.  *cur gets the pid, or 0 when it did not start (-1 returned).
 */
pid_t kvt_test_daemon_startv(pid_t *cur, const char *kvtierd, const char *sock,
			     const char *capacity, void (*setup)(void *), va_list ap);

/* SIGTERM to a kvtierd and its exit: its exit status, 128 + the signal that ended it, or -1. */
int kvt_test_daemon_stop(pid_t pid);

/* A client on sock named name, or NULL (the error printed). */
struct kvt_client *kvt_test_connect(const char *sock, const char *name, int timeout_ms);

#endif
