/* SPDX-License-Identifier: MIT */
/*
 * kvtierctl: the admin CLI.  The daemon renders every report (text or JSON) from its one
 * metric table; this program sends the command and prints what comes back.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kvt_proto.h"
#include "kvtier.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: kvtierctl [--socket PATH] [--json] COMMAND [ARGS]\n"
		   "commands:\n"
		   "  status              daemon and per-tier summary\n"
		   "  tiers               per-tier detail\n"
		   "  blocks [--limit N]  stored blocks (default 100)\n"
		   "  clients             connected clients\n"
		   "  metrics             Prometheus text format\n"
		   "  evict [--bytes N | --all]   evict from the host tier (admin)\n"
		   "  flush               write host blocks down to the lower tier (admin)\n"
		   "options:\n"
		   "  -s, --socket PATH   daemon socket (default: $KVTIER_SOCKET, "
		   "/run/kvtier/kvtier.sock,\n"
		   "                      $XDG_RUNTIME_DIR/kvtier/kvtier.sock)\n"
		   "  -j, --json          JSON output (read commands)\n"
		   "  -V, --version       print the version\n");
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"socket", required_argument, NULL, 's'}, {"json", no_argument, NULL, 'j'},
	    {"limit", required_argument, NULL, 'l'},  {"bytes", required_argument, NULL, 'b'},
	    {"all", no_argument, NULL, 'a'},	      {"version", no_argument, NULL, 'V'},
	    {"help", no_argument, NULL, 'h'},	      {NULL, 0, NULL, 0}};
	static const char *const names[] = {NULL,      "status",  "tiers", "blocks",
					    "clients", "metrics", "evict", "flush"};
	const char *sock_opt = NULL;
	char path[108];
	uint64_t arg = 0;
	int json = 0, opt, fd, ret, cmd = 0;
	struct kvt_msg_hello h;
	struct kvt_msg_admin a;
	static char buf[KVT_MSG_MAX + 64];
	ssize_t n;

	/* Options may come before or after the command. */
	while ((opt = getopt_long(argc, argv, "s:jVh", opts, NULL)) != -1) {
		switch (opt) {
		case 's':
			sock_opt = optarg;
			break;
		case 'j':
			json = 1;
			break;
		case 'l':
		case 'b':
			if (parse_u64(optarg, &arg) < 0) {
				fprintf(stderr, "kvtierctl: '%s' is not a number\n", optarg);
				return 2;
			}
			break;
		case 'a':
			arg = 0;
			break;
		case 'V':
			printf("kvtierctl %s\n", kvt_version());
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc - 1) {
		usage(stderr);
		return 2;
	}
	for (int i = 1; i < (int)(sizeof(names) / sizeof(names[0])); i++) {
		if (!strcmp(argv[optind], names[i]))
			cmd = i;
	}
	if (!cmd) {
		fprintf(stderr, "kvtierctl: unknown command '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (cmd == KVT_ADMIN_EVICT && !arg) {
		int all = 0;
		for (int i = 1; i < argc; i++)
			all |= !strcmp(argv[i], "--all") || !strncmp(argv[i], "--bytes", 7);
		if (!all) {
			fprintf(stderr, "kvtierctl: evict needs --bytes N or --all\n");
			return 2;
		}
	}
	ret = kvt_socket_path(sock_opt, path, sizeof(path));
	if (ret == 0)
		ret = kvt_sock_open(path, &fd);
	if (ret < 0) {
		fprintf(stderr, "kvtierctl: cannot connect to kvtierd at %s: %s\n", path,
			kvt_strerror(ret));
		return 1;
	}
	memset(&h, 0, sizeof(h));
	kvt_msg_init(&h.h, KVT_MSG_HELLO, sizeof(h));
	h.lib_version = KVT_VERSION_NUMBER;
	h.pid = (uint32_t)getpid();
	h.want_admin = 1;
	snprintf(h.name, sizeof(h.name), "kvtierctl");
	memset(&a, 0, sizeof(a));
	kvt_msg_init(&a.h, KVT_MSG_ADMIN, sizeof(a));
	a.cmd = (uint32_t)cmd;
	a.aflags = json ? KVT_ADMIN_F_JSON : 0;
	a.arg = arg;
	if (send(fd, &h, sizeof(h), MSG_NOSIGNAL) != sizeof(h) ||
	    send(fd, &a, sizeof(a), MSG_NOSIGNAL) != sizeof(a)) {
		fprintf(stderr, "kvtierctl: send: %s\n", strerror(errno));
		return 1;
	}
	/* First the handshake's reply, then the report in one or more packets. */
	for (int first = 1;; first = 0) {
		struct pollfd p = {fd, POLLIN, 0};
		struct kvt_msg_hdr mh;

		if (poll(&p, 1, 10000) <= 0) {
			fprintf(stderr, "kvtierctl: no answer from kvtierd\n");
			return 1;
		}
		n = recv(fd, buf, sizeof(buf), 0);
		if (n <= 0 || kvt_msg_check(buf, (size_t)n) < 0) {
			fprintf(stderr, "kvtierctl: bad or no reply from kvtierd\n");
			return 1;
		}
		memcpy(&mh, buf, sizeof(mh));
		if (first) {
			const struct kvt_msg_hello_reply *r = (const void *)buf;
			int res = mh.type == KVT_MSG_HELLO_REPLY
				      ? r->res
				      : ((const struct kvt_msg_result *)(const void *)buf)->res;
			if (res < 0) {
				fprintf(stderr, "kvtierctl: kvtierd refused: %s\n",
					kvt_strerror(res));
				return 1;
			}
			if (mh.type == KVT_MSG_HELLO_REPLY)
				continue;
		}
		const struct kvt_msg_result *r = (const void *)buf;
		fwrite(r + 1, 1, (size_t)n - sizeof(*r), r->res < 0 ? stderr : stdout);
		if (!(mh.flags & KVT_MSG_F_MORE)) {
			if (r->res < 0) {
				if ((size_t)n == sizeof(*r))
					fprintf(stderr, "kvtierctl: %s\n", kvt_strerror(r->res));
				return 1;
			}
			break;
		}
	}
	close(fd);
	return 0;
}
