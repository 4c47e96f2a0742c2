/* SPDX-License-Identifier: MIT */
/*
 * harness.c - see harness.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
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

static long long mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

pid_t kvt_test_daemon_spawn(char *const argv[], const char *sock, const char *log, int timeout_ms,
			    int *status)
{
	char dir[PATH_MAX];
	const char *slash = strrchr(sock, '/');
	long long deadline = timeout_ms < 0 ? -1 : mono_ms() + timeout_ms;
	int ino = -1, pidfd = -1, st = -1;
	struct stat sb;
	pid_t pid;

	if (status)
		*status = -1;
	snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - sock) : 1, slash ? sock : ".");
	if (!dir[0])
		snprintf(dir, sizeof(dir), "/");
	/* Watch before unlinking and starting: no rename can slip between check and wait. */
	ino = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
	if (ino < 0 || inotify_add_watch(ino, dir, IN_CREATE | IN_MOVED_TO) < 0) {
		perror("inotify");
		goto fail;
	}
	unlink(sock);
	pid = fork();
	if (pid < 0)
		goto fail;
	if (pid == 0) {
		/* A test that crashes must not leave its daemon behind. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (log) {
			int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
			if (fd < 0 || dup2(fd, 2) < 0)
				_exit(126);
		}
		execv(argv[0], argv);
		_exit(127);
	}
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	for (;;) {
		struct pollfd p[2] = {{ino, POLLIN, 0}, {pidfd, POLLIN, 0}};
		char evbuf[4096];
		int left = -1, ws;

		if (stat(sock, &sb) == 0)
			break;
		if (waitpid(pid, &ws, WNOHANG) == pid) {
			st = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
			goto gone;
		}
		if (deadline >= 0) {
			left = (int)(deadline - mono_ms());
			if (left <= 0) {
				fprintf(stderr, "kvtierd did not create %s\n", sock);
				kill(pid, SIGKILL);
				waitpid(pid, NULL, 0);
				goto gone;
			}
		}
		/* Without pidfds (Linux < 5.3) an exit is seen on the next directory event or
		 * after a second at the latest. */
		if (pidfd < 0 && (left < 0 || left > 1000))
			left = 1000;
		if (poll(p, pidfd >= 0 ? 2 : 1, left) < 0 && errno != EINTR)
			goto fail_kill;
		while (read(ino, evbuf, sizeof(evbuf)) > 0)
			;
	}
	if (pidfd >= 0)
		close(pidfd);
	close(ino);
	return pid;
fail_kill:
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
gone:
	if (status)
		*status = st;
fail:
	if (pidfd >= 0)
		close(pidfd);
	if (ino >= 0)
		close(ino);
	return -1;
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
