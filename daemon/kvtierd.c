/* SPDX-License-Identifier: MIT */
/* kvtierd: the kvtier daemon.  See kvtierd(8). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "kvtier.h"
#include "server.h"

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: kvtierd [-f] [-c FILE] [-s SOCKET] [-o SECTION.KEY=VALUE]... [--print-config]\n"
	    "  -f, --foreground      stay in the foreground (as under systemd)\n"
	    "  -c, --config FILE     configuration file (default " KVTD_DEFAULT_CONFIG ")\n"
	    "  -s, --socket PATH     listen on PATH (same as -o daemon.socket=PATH)\n"
	    "  -o SECTION.KEY=VALUE  override one configuration key (repeatable)\n"
	    "      --print-config    print the effective configuration and exit\n"
	    "  -V, --version         print the version and exit\n"
	    "  -h, --help            this help\n");
}

static int daemonize(void)
{
	pid_t pid = fork();
	int fd;

	if (pid < 0)
		return -errno;
	if (pid > 0)
		_exit(0);
	if (setsid() < 0)
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0)
		_exit(0);
	fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (fd >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		if (fd > 2)
			close(fd);
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"foreground", no_argument, NULL, 'f'},
					     {"config", required_argument, NULL, 'c'},
					     {"socket", required_argument, NULL, 's'},
					     {"print-config", no_argument, NULL, 'P'},
					     {"version", no_argument, NULL, 'V'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	const char *conf_path = KVTD_DEFAULT_CONFIG;
	const char *overrides[128];
	int noverrides = 0, opt, ret;
	bool foreground = false, print = false, explicit_conf = false;
	struct kvtd_config cfg;
	struct kvtd *d;

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
	kvtd_config_defaults(&cfg);
	ret = kvtd_config_load(&cfg, conf_path, stderr);
	if (ret == -ENOENT && !explicit_conf)
		ret = 0; /* no file: the built-in defaults */
	if (ret < 0) {
		if (ret != -EINVAL)
			fprintf(stderr, "kvtierd: cannot read %s: %s\n", conf_path, strerror(-ret));
		return 1;
	}
	for (int i = 0; i < noverrides; i++) {
		if (kvtd_config_set(&cfg, overrides[i], stderr) < 0)
			return 1;
	}
	if (kvtd_config_validate(&cfg, stderr) < 0)
		return 1;
	if (print) {
		kvtd_config_print(&cfg, stdout);
		return 0;
	}
	ret = kvtd_create(&cfg, &d);
	if (ret < 0) {
		fprintf(stderr, "kvtierd: cannot start: %s\n", kvt_strerror(ret));
		return 1;
	}
	if (!foreground && daemonize() < 0) {
		kvtd_destroy(d);
		return 1;
	}
	ret = kvtd_run(d);
	kvtd_destroy(d);
	if (ret < 0) {
		fprintf(stderr, "kvtierd: %s\n", kvt_strerror(ret));
		return 1;
	}
	return 0;
}
