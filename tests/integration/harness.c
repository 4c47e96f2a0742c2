/* SPDX-License-Identifier: MIT */
/*
 * harness.c - see harness.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
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
