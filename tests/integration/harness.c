/* SPDX-License-Identifier: MIT */
/*
 * harness.c - see harness.h.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* pipe2; the targets that link it pass it too */
#endif
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "kvtier.h"

pid_t kvt_test_daemon_start(const char *const argv[], void (*setup)(void *), void *arg)
{
	const char *args[64];
	char fdarg[16];
	int pfd[2], argc = 0, r;
	pid_t pid;
	char c;

	/* The write end is >= 3 (0-2 are open) and stays open across exec in the child only. */
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -1;
	snprintf(fdarg, sizeof(fdarg), "%d", pfd[1]);
	while (argv[argc] && argc < 60) {
		args[argc] = argv[argc];
		argc++;
	}
	args[argc++] = "--ready-fd";
	args[argc++] = fdarg;
	args[argc] = NULL;
	pid = fork();
	if (pid < 0) {
		close(pfd[0]);
		close(pfd[1]);
		return -1;
	}
	if (pid == 0) {
		if (setup)
			setup(arg);
		fcntl(pfd[1], F_SETFD, 0);
		execv(args[0], (char **)args);
		_exit(127);
	}
	close(pfd[1]);
	/* Serving ("R"), or gone (EOF): an event either way, however slow the machine.  The
	 * 10-minute bound only turns a hung start into a failure instead of a hung test. */
	struct pollfd p = {pfd[0], POLLIN, 0};
	do
		r = poll(&p, 1, 600000);
	while (r < 0 && errno == EINTR);
	r = r > 0 ? (int)read(pfd[0], &c, 1) : -2;
	close(pfd[0]);
	if (r == 1)
		return pid;
	if (r == -2) {
		fprintf(stderr, "kvtierd (pid %d) neither served nor exited\n", (int)pid);
		kill(pid, SIGKILL);
	}
	waitpid(pid, NULL, 0);
	return -1;
}

pid_t kvt_test_daemon_startv(pid_t *cur, const char *kvtierd, const char *sock,
			     const char *capacity, void (*setup)(void *), va_list ap)
{
	const char *argv[40] = {kvtierd, "-f", "-s", sock, "-o", NULL};
	char cap[64];
	int argc = 5;
	pid_t pid;

	snprintf(cap, sizeof(cap), "host.capacity=%s", capacity);
	argv[argc++] = cap;
	argv[argc++] = "-o";
	argv[argc++] = "daemon.log_level=warn";
	for (const char *a; (a = va_arg(ap, const char *)) && argc < 38;)
		argv[argc++] = a;
	argv[argc] = NULL;
	unlink(sock);
	pid = kvt_test_daemon_start(argv, setup, NULL);
	*cur = pid > 0 ? pid : 0;
	return pid;
}

int kvt_test_daemon_stop(pid_t pid)
{
	int st;

	kill(pid, SIGTERM);
	if (waitpid(pid, &st, 0) < 0)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

struct kvt_client *kvt_test_connect(const char *sock, const char *name, int timeout_ms)
{
	struct kvt_connect_opts o = {
	    .size = sizeof(o), .socket_path = sock, .name = name, .timeout_ms = timeout_ms};
	struct kvt_client *c = NULL;
	int ret = kvt_connect(&o, &c);

	if (ret < 0)
		fprintf(stderr, "kvt_connect: %s\n", kvt_strerror(ret));
	return c;
}

char *kvt_test_run(int *rc, const char *cmd)
{
	char *out = NULL;
	size_t len = 0;
	FILE *p = popen(cmd, "r"), *m;
	int c, st;

	*rc = -1;
	if (!p)
		return NULL;
	m = open_memstream(&out, &len);
	if (!m) {
		pclose(p);
		return NULL;
	}
	while ((c = fgetc(p)) != EOF)
		fputc(c, m);
	fclose(m);
	st = pclose(p);
	*rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	return out;
}

long long kvt_test_json_num(const char *js, const char *name)
{
	char pat[128];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", name);
	p = js ? strstr(js, pat) : NULL;
	return p ? atoll(p + strlen(pat)) : -1;
}

int kvt_test_failures;

int kvt_test_run_cases(const struct kvt_test_case *t, size_t n, char *const names[], int nnames,
		       pid_t *cur, const char *log)
{
	int ran = 0, rc;

	for (size_t i = 0; i < n; i++) {
		bool want = nnames == 0;

		for (int j = 0; j < nnames; j++)
			want |= !strcmp(names[j], t[i].name);
		if (!want)
			continue;
		int before = kvt_test_failures;
		fflush(stdout); /* children of fork() must not repeat what is buffered */
		t[i].fn();
		if (cur && *cur > 0) {
			/* A failed check returned early: don't leave the daemon behind. */
			kill(*cur, SIGKILL);
			waitpid(*cur, NULL, 0);
			*cur = 0;
		}
		if (kvt_test_failures != before && log) {
			char *out = kvt_test_sh(&rc, "cat %s", log);

			fprintf(stderr, "--- kvtierd log ---\n%s---\n", out ? out : "");
			free(out);
		}
		printf("[%s] %s\n", kvt_test_failures == before ? "  OK  " : "FAILED", t[i].name);
		fflush(stdout);
		ran++;
	}
	return ran;
}

int kvt_test_finish(const char *dir, int ran)
{
	int rc;

	free(kvt_test_sh(&rc, "rm -rf %s", dir));
	if (rc != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	printf("%d tests run, %d failed checks\n", ran, kvt_test_failures);
	return kvt_test_failures || rc != 0 ? 1 : 0;
}

static char *vsh(int *rc, const char *pre, const char *fmt, va_list ap)
{
	char cmd[4096];
	int n = snprintf(cmd, sizeof(cmd), "%s", pre);

	vsnprintf(cmd + n, sizeof(cmd) - (size_t)n, fmt, ap);
	return kvt_test_run(rc, cmd);
}

char *kvt_test_sh(int *rc, const char *fmt, ...)
{
	va_list ap;
	char *out;

	va_start(ap, fmt);
	out = vsh(rc, "", fmt, ap);
	va_end(ap);
	return out;
}

char *kvt_test_ctl(int *rc, const char *kvtierctl, const char *sock, const char *fmt, ...)
{
	char pre[1024];
	va_list ap;
	char *out;

	snprintf(pre, sizeof(pre), "%s --socket %s ", kvtierctl, sock);
	va_start(ap, fmt);
	out = vsh(rc, pre, fmt, ap);
	va_end(ap);
	return out;
}

long long kvt_test_ctl_num(const char *kvtierctl, const char *sock, const char *cmd,
			   const char *within, const char *name)
{
	int rc;
	char *js = kvt_test_ctl(&rc, kvtierctl, sock, "--json %s", cmd);
	const char *p = js && within ? strstr(js, within) : js;
	long long v = rc != 0 ? -2 : p ? kvt_test_json_num(p, name) : -1;

	free(js);
	return v;
}

void kvt_test_fill(uint8_t *p, size_t n, uint64_t tag)
{
	uint64_t x = tag * 0x9e3779b97f4a7c15ull + 1;

	for (size_t i = 0; i < n; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(p + i, &x, n - i < 8 ? n - i : 8);
	}
}

void kvt_test_make_keys(const struct kvt_layout *l, uint32_t salt, struct kvt_key *keys, int n)
{
	uint32_t *tok = malloc(sizeof(uint32_t) * l->block_tokens * (size_t)n);

	for (size_t i = 0; i < (size_t)l->block_tokens * (size_t)n; i++)
		tok[i] = (uint32_t)i * 2654435761u + salt;
	kvt_key_chain(kvt_layout_fingerprint(l), l->block_tokens, NULL, tok,
		      (size_t)l->block_tokens * (size_t)n, keys, (size_t)n);
	free(tok);
}

int kvt_test_user_id(const char *name, uid_t *uid, gid_t *gid)
{
	struct passwd *pw = getpwnam(name);
	char cmd[256];

	if (!pw) {
		snprintf(cmd, sizeof(cmd),
			 "useradd --system --no-create-home --shell /usr/sbin/nologin %s "
			 ">/dev/null 2>&1",
			 name);
		if (system(cmd) != 0)
			return -1;
		pw = getpwnam(name);
	}
	if (!pw)
		return -1;
	*uid = pw->pw_uid;
	*gid = pw->pw_gid;
	return 0;
}

int kvt_test_as_user(uid_t uid, gid_t gid, int (*fn)(void *), void *arg)
{
	pid_t kid;
	int st;

	fflush(stdout); /* the child must not repeat what is buffered */
	kid = fork();
	if (kid == 0) {
		if (setgroups(0, NULL) < 0 || setgid(gid) < 0 || setuid(uid) < 0)
			_exit(99);
		_exit(fn(arg));
	}
	if (kid < 0 || waitpid(kid, &st, 0) < 0)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

void kvt_test_stderr_to(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (fd < 0 || dup2(fd, 2) < 0)
		_exit(126);
	if (fd != 2)
		close(fd);
}
