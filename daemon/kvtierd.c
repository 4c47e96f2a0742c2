/* SPDX-License-Identifier: MIT */
/* kvtierd: the kvtier daemon.  See kvtierd(8). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "kvt_abi.h" /* kvt_version, kvt_strerror */
#include "server.h"

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: kvtierd [-f] [-c FILE] [-s SOCKET] [-o SECTION.KEY=VALUE]... [--print-config]\n"
	    "               [--ready-fd N]\n"
	    "  -f, --foreground      stay in the foreground (as under systemd); without -f,\n"
	    "                        kvtierd returns once the daemon serves (0) or failed (1)\n"
	    "  -c, --config FILE     configuration file (default " KVTD_DEFAULT_CONFIG ")\n"
	    "  -s, --socket PATH     listen on PATH (same as -o daemon.socket=PATH)\n"
	    "  -o SECTION.KEY=VALUE  override one configuration key (repeatable)\n"
	    "      --print-config    print the effective configuration and exit\n"
	    "      --ready-fd N      with -f: write one byte to fd N, then close it, once serving\n"
	    "  -V, --version         print the version and exit\n"
	    "  -h, --help            this help\n");
}

/*
 * Readiness: what the parent of a daemonizing kvtierd, or a supervisor given --ready-fd,
 * waits on.  One byte "R" is written to ready_fd when kvtierd serves, then the fd is closed.
 * A kvtierd that fails to start closes it (by exiting) without writing: EOF means "failed".
 */
static int ready_fd = -1;
static bool detach_stderr;

static void on_ready(void)
{
	if (ready_fd >= 0) {
		ssize_t r;

		do
			r = write(ready_fd, "R", 1);
		while (r < 0 && errno == EINTR);
		close(ready_fd);
		ready_fd = -1;
	}
	/* Startup errors went to the terminal; from here on the daemon has none.  A stderr that
	 * is no terminal (kvtierd 2>>FILE, a pipe to a logger) keeps the log. */
	if (detach_stderr && isatty(2)) {
		int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);

		if (fd >= 0) {
			fflush(stderr);
			dup2(fd, 2);
			close(fd);
		}
		detach_stderr = false;
	}
}

/*
 * Goes into the background before any thread, io_uring, signalfd or CUDA context exists
 * (none of them survives fork()): fork, setsid, fork again, so the daemon is no session
 * leader and can never take a controlling terminal.  The first process waits for the
 * daemon's readiness byte and exits 0 only then; 1 when the daemon exits first (its
 * error is already on stderr).  Returns 0 in the daemon, or -errno before any fork.
 */
static int daemonize(void)
{
	int pfd[2], fd;
	pid_t pid;
	char c;
	ssize_t r;

	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -errno;
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		int e = errno;

		close(pfd[0]);
		close(pfd[1]);
		return -e;
	}
	if (pid > 0) {
		close(pfd[1]);
		do
			r = read(pfd[0], &c, 1);
		while (r < 0 && errno == EINTR);
		waitpid(pid, NULL, 0); /* the intermediate child, gone at once */
		_exit(r == 1 ? 0 : 1);
	}
	close(pfd[0]);
	if (setsid() < 0)
		_exit(1);
	pid = fork();
	if (pid < 0)
		_exit(1);
	if (pid > 0)
		_exit(0);
	ready_fd = pfd[1];
	detach_stderr = true; /* once ready: see on_ready() */
	fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (fd >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		if (fd > 2)
			close(fd);
	}
	return 0;
}

static const char *conf_path = KVTD_DEFAULT_CONFIG;
static bool explicit_conf;
static const char *overrides[128];
static int noverrides;

/* The file, then the -o overrides, then the cross-key checks; messages to err. */
static int load_config(struct kvtd_config *cfg, FILE *err)
{
	int ret;

	kvtd_config_defaults(cfg);
	ret = kvtd_config_load(cfg, conf_path, err);
	if (ret == -ENOENT && !explicit_conf)
		ret = 0; /* no file: the built-in defaults */
	if (ret < 0) {
		if (ret != -EINVAL)
			fprintf(err, "kvtierd: cannot read %s: %s\n", conf_path, strerror(-ret));
		return ret;
	}
	for (int i = 0; i < noverrides; i++) {
		ret = kvtd_config_set(cfg, overrides[i], err);
		if (ret < 0)
			return ret;
	}
	return kvtd_config_validate(cfg, err);
}

/* SIGHUP: the configuration read again, as at start; errors logged, not fatal. */
static int reload_config(struct kvtd_config *cfg)
{
	char *msg = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&msg, &len);
	int ret;

	if (!m)
		return -ENOMEM;
	ret = load_config(cfg, m);
	fclose(m);
	if (ret < 0) {
		/* One log line per message, without the "kvtierd: " the terminal needs. */
		for (char *line = strtok(msg, "\n"); line; line = strtok(NULL, "\n"))
			kvtd_log(KVTD_LOG_ERR, "reload: %s",
				 strncmp(line, "kvtierd: ", 9) ? line : line + 9);
	}
	free(msg);
	return ret;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"foreground", no_argument, NULL, 'f'},	{"config", required_argument, NULL, 'c'},
	    {"socket", required_argument, NULL, 's'},	{"print-config", no_argument, NULL, 'P'},
	    {"ready-fd", required_argument, NULL, 'R'}, {"version", no_argument, NULL, 'V'},
	    {"help", no_argument, NULL, 'h'},		{NULL, 0, NULL, 0}};
	int opt, ret;
	bool foreground = false, print = false;
	struct kvtd_config cfg;
	struct kvtd *d;
	char *end;
	long v;

	while ((opt = getopt_long(argc, argv, "fc:s:o:Vh", opts, NULL)) != -1) {
		switch (opt) {
		case 'f':
			foreground = true;
			break;
		case 'c':
			conf_path = optarg;
			explicit_conf = true;
			break;
		case 's':
		case 'o':
			if (noverrides == 127) {
				fprintf(stderr, "kvtierd: too many overrides\n");
				return 2;
			}
			if (opt == 's') {
				static char sock_override[160];
				snprintf(sock_override, sizeof(sock_override), "daemon.socket=%s",
					 optarg);
				overrides[noverrides++] = sock_override;
			} else {
				overrides[noverrides++] = optarg;
			}
			break;
		case 'P':
			print = true;
			break;
		case 'R':
			errno = 0;
			v = strtol(optarg, &end, 10);
			if (errno || *end || v < 3 || v > 65535 || fcntl((int)v, F_GETFD) < 0) {
				fprintf(stderr,
					"kvtierd: --ready-fd %s: not an open descriptor >= 3\n",
					optarg);
				return 2;
			}
			ready_fd = (int)v;
			fcntl(ready_fd, F_SETFD, FD_CLOEXEC);
			break;
		case 'V':
			printf("kvtierd %s\n", kvt_version());
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	if (load_config(&cfg, stderr) < 0)
		return 1;
	if (print) {
		kvtd_config_print(&cfg, stdout);
		return 0;
	}
	if (!foreground) {
		if (ready_fd >= 0) {
			fprintf(stderr, "kvtierd: --ready-fd needs -f\n");
			return 2;
		}
		ret = daemonize();
		if (ret < 0) {
			fprintf(stderr, "kvtierd: cannot go into the background: %s\n",
				strerror(-ret));
			return 1;
		}
	}
	kvtd_on_ready = on_ready;
	kvtd_reload = reload_config;
	ret = kvtd_create(&cfg, &d);
	if (ret < 0) {
		fprintf(stderr, "kvtierd: cannot start: %s\n", kvt_strerror(ret));
		return 1;
	}
	ret = kvtd_run(d);
	kvtd_destroy(d);
	if (ret < 0) {
		kvtd_log(KVTD_LOG_ERR, "%s", kvt_strerror(ret));
		return 1;
	}
	return 0;
}
