/* SPDX-License-Identifier: MIT */
/*
 * harness.c - see harness.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>

#include "harness.h"
#include "kvtier.h"

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
