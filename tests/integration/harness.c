/* SPDX-License-Identifier: MIT */
/*
 * harness.c - see harness.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"

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
