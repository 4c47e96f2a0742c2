/* SPDX-License-Identifier: MIT */
/*
 * kvtierctl: the admin CLI.  The daemon renders every report (text or JSON) from its one
 * metric table; this program sends the command and prints what comes back.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kvt_proto.h"
#include "kvtier.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: kvtierctl [--socket PATH] [--json] COMMAND [ARGS]\n"
		   "commands:\n"
		   "  ping                is kvtierd serving? (ok, or recovering)\n"
		   "  status              daemon and per-tier summary\n"
		   "  tiers               per-tier detail\n"
		   "  blocks [--limit N]  stored blocks (default 100; 0: all)\n"
		   "  clients             connected clients\n"
		   "  metrics             Prometheus text format (--json: one JSON object)\n"
		   "  config              the running configuration\n"
		   "  evict [--bytes SIZE | --all]   evict from the host tier (admin);\n"
		   "                      SIZE as in the configuration: 1MiB, 64K, 4096\n"
		   "  writeback           copy host blocks down to NVMe; deletes nothing (admin)\n"
		   "  flush               deprecated name of writeback\n"
		   "  calibrate [LAYOUT | MODEL]   (admin) fit a model's dictionary and\n"
		   "                      measure the codec chains on blocks the daemon holds,\n"
		   "                      for codec = auto; LAYOUT: a fingerprint (16 hex\n"
		   "                      digits), MODEL: a model_id; default: the layout with\n"
		   "                      the most host blocks.  Waits for the table\n"
		   "options:\n"
		   "  -s, --socket PATH   daemon socket (default: $KVTIER_SOCKET, "
		   "/run/kvtier/kvtier.sock,\n"
		   "                      $XDG_RUNTIME_DIR/kvtier/kvtier.sock)\n"
		   "  -j, --json          JSON output, errors included\n"
		   "  -V, --version       print the version\n"
		   "exit status: 0 ok, 1 error, 2 usage\n");
}

/* A whole decimal number, nothing after it. */
static int parse_u64(const char *s, uint64_t *out)
{
	char *end;

	return kvt_parse_num(s, out, &end) < 0 || *end ? -EINVAL : 0;
}

static int json;

/* s as a JSON string (control characters escaped; the daemon's texts are UTF-8 or ASCII). */
static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(f, "\\u%04x", *p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

/* An error: "kvtierctl: MSG" on stderr, or under --json {"error": MSG, "code": -errno} on
 * stdout (what a script parses).  Returns status. */
static int fail(int status, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(int status, int code, const char *fmt, ...)
{
	char msg[2048];
	va_list ap;
	size_t n;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	n = strlen(msg);
	while (n && msg[n - 1] == '\n')
		msg[--n] = 0;
	if (json) {
		printf("{\"error\":");
		json_str(stdout, msg);
		printf(",\"code\":%d}\n", code);
	} else {
		fprintf(stderr, "kvtierctl: %s\n", msg);
	}
	return status;
}

/*
 * Sends one admin command and collects the whole reply (malloc'd, NUL-terminated) in *out.
 * Returns 0, or 1 after reporting a failure to talk to it or the daemon's refusal (its
 * message, or its error's).
 */
static int admin(const char *path, uint32_t cmd, uint64_t arg, uint32_t aflags, const char *extra,
		 char **out)
{
	char msg[sizeof(struct kvt_msg_admin) + 64];
	size_t elen = extra ? strlen(extra) + 1 : 0, mlen = sizeof(struct kvt_msg_admin) + elen;
	static char buf[KVT_MSG_MAX + 64];
	struct kvt_msg_hello h;
	struct kvt_msg_admin a;
	size_t len = 0;
	FILE *m;
	ssize_t n;
	int fd, ret, res = 0;

	*out = NULL;
	ret = kvt_sock_open(path, &fd);
	if (ret < 0)
		return fail(1, ret, "cannot connect to kvtierd at %s: %s", path, kvt_strerror(ret));
	memset(&h, 0, sizeof(h));
	kvt_msg_init(&h.h, KVT_MSG_HELLO, sizeof(h));
	h.lib_version = KVT_VERSION_NUMBER;
	h.pid = (uint32_t)getpid();
	h.want_admin = 1;
	snprintf(h.name, sizeof(h.name), "kvtierctl");
	if (elen > 64) {
		close(fd);
		return fail(2, -EINVAL, "'%s': a model name has at most 63 bytes", extra);
	}
	memset(&a, 0, sizeof(a));
	kvt_msg_init(&a.h, KVT_MSG_ADMIN, (uint32_t)mlen);
	a.cmd = cmd;
	a.aflags = aflags;
	a.arg = arg;
	memcpy(msg, &a, sizeof(a));
	if (elen)
		memcpy(msg + sizeof(a), extra, elen);
	if (send(fd, &h, sizeof(h), MSG_NOSIGNAL) != sizeof(h) ||
	    send(fd, msg, mlen, MSG_NOSIGNAL) != (ssize_t)mlen) {
		ret = -errno;
		close(fd);
		return fail(1, ret, "send: %s", strerror(-ret));
	}
	m = open_memstream(out, &len);
	if (!m) {
		close(fd);
		return fail(1, -ENOMEM, "out of memory");
	}
	/* First the handshake's reply, then the report in one or more packets. */
	for (int first = 1;; first = 0) {
		struct pollfd p = {fd, POLLIN, 0};
		struct kvt_msg_hdr mh;

		/* a calibration answers when it is done (its progress: kvtierctl tiers) */
		if (poll(&p, 1, cmd == KVT_ADMIN_CALIBRATE ? -1 : 10000) <= 0) {
			ret = fail(1, -ETIMEDOUT, "no answer from kvtierd");
			goto out;
		}
		n = recv(fd, buf, sizeof(buf), 0);
		if (n <= 0 || kvt_msg_check(buf, (size_t)n) < 0) {
			ret = fail(1, -KVT_EPROTOCOL, "bad or no reply from kvtierd");
			goto out;
		}
		memcpy(&mh, buf, sizeof(mh));
		if (first) {
			const struct kvt_msg_hello_reply *r = (const void *)buf;
			int hres = mh.type == KVT_MSG_HELLO_REPLY
				       ? r->res
				       : ((const struct kvt_msg_result *)(const void *)buf)->res;
			if (hres < 0) {
				ret = fail(1, hres, "kvtierd refused: %s", kvt_strerror(hres));
				goto out;
			}
			if (mh.type == KVT_MSG_HELLO_REPLY)
				continue;
		}
		const struct kvt_msg_result *r = (const void *)buf;
		fwrite(r + 1, 1, (size_t)n - sizeof(*r), m);
		if (!(mh.flags & KVT_MSG_F_MORE)) {
			res = r->res;
			ret = 0;
			break;
		}
	}
out:
	fclose(m);
	close(fd);
	if (ret == 0 && res < 0)
		ret = fail(1, res, "%s", *out && **out ? *out : kvt_strerror(res));
	if (ret) {
		free(*out);
		*out = NULL;
	}
	return ret;
}

/* The value of "name":VALUE in JSON text: its start, or NULL. */
static const char *json_field(const char *js, const char *name)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", name);
	p = js ? strstr(js, pat) : NULL;
	return p ? p + strlen(pat) : NULL;
}

/* ping: kvtierd answers, and says whether it still recovers its NVMe tier. */
static int ping(const char *path)
{
	char *out;
	const char *rec, *up, *ver;
	int ret = admin(path, KVT_ADMIN_STATUS, 0, KVT_ADMIN_F_JSON, NULL, &out);
	bool recovering;
	char version[64] = "";

	if (ret)
		return ret;
	rec = json_field(out, "recovering");
	recovering = rec && !strncmp(rec, "true", 4);
	up = json_field(out, "uptime_s");
	ver = json_field(out, "version");
	if (ver && *ver == '"')
		sscanf(ver + 1, "%63[^\"]", version);
	if (json)
		printf("{\"status\":\"%s\",\"version\":\"%s\",\"uptime_s\":%lld}\n",
		       recovering ? "recovering" : "ok", version, up ? atoll(up) : 0);
	else
		printf("%s (kvtierd %s, up %llds)\n", recovering ? "recovering" : "ok", version,
		       up ? atoll(up) : 0);
	free(out);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"socket", required_argument, NULL, 's'}, {"json", no_argument, NULL, 'j'},
	    {"limit", required_argument, NULL, 'l'},  {"bytes", required_argument, NULL, 'b'},
	    {"all", no_argument, NULL, 'a'},	      {"version", no_argument, NULL, 'V'},
	    {"help", no_argument, NULL, 'h'},	      {NULL, 0, NULL, 0}};
	static const struct {
		const char *name;
		uint32_t cmd;
	} cmds[] = {
	    {"status", KVT_ADMIN_STATUS},	{"tiers", KVT_ADMIN_TIERS},
	    {"blocks", KVT_ADMIN_BLOCKS},	{"clients", KVT_ADMIN_CLIENTS},
	    {"metrics", KVT_ADMIN_METRICS},	{"evict", KVT_ADMIN_EVICT},
	    {"writeback", KVT_ADMIN_FLUSH},	{"flush", KVT_ADMIN_FLUSH},
	    {"config", KVT_ADMIN_CONFIG},	{"ping", 0},
	    {"calibrate", KVT_ADMIN_CALIBRATE},
	};
	const char *sock_opt = NULL, *name;
	char path[108], *out = NULL;
	uint64_t arg = 0;
	const char *extra = NULL;
	int opt, ret, found = -1;
	bool have_limit = false, have_bytes = false, all = false;

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
			if (parse_u64(optarg, &arg) < 0)
				return fail(2, -EINVAL, "--limit '%s' is not a number", optarg);
			have_limit = true;
			break;
		case 'b':
			if (kvt_parse_size(optarg, &arg) < 0 || !arg)
				return fail(2, -EINVAL,
					    "--bytes '%s' is not a size such as 1MiB, 64K or 4096 "
					    "(above 0)",
					    optarg);
			have_bytes = true;
			break;
		case 'a':
			all = true;
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
	if (optind != argc - 1 && !(optind == argc - 2 && !strcmp(argv[optind], "calibrate"))) {
		usage(stderr);
		return 2;
	}
	name = argv[optind];
	if (optind == argc - 2) {
		const char *t = argv[optind + 1];

		/* 16 hex digits: a layout fingerprint, as kvtierctl tiers shows it */
		if (strlen(t) == 16 && strspn(t, "0123456789abcdefABCDEF") == 16)
			arg = strtoull(t, NULL, 16);
		else
			extra = t;
	}
	for (int i = 0; i < (int)(sizeof(cmds) / sizeof(cmds[0])); i++) {
		if (!strcmp(name, cmds[i].name))
			found = i;
	}
	if (found < 0) {
		usage(stderr);
		return fail(2, -EINVAL, "unknown command '%s'", name);
	}
	if (have_limit && cmds[found].cmd != KVT_ADMIN_BLOCKS)
		return fail(2, -EINVAL, "--limit is an option of blocks");
	if ((have_bytes || all) && cmds[found].cmd != KVT_ADMIN_EVICT)
		return fail(2, -EINVAL, "--bytes and --all are options of evict");
	if (cmds[found].cmd == KVT_ADMIN_EVICT) {
		if (have_bytes == all)
			return fail(2, -EINVAL, "evict needs --bytes SIZE or --all");
		if (all)
			arg = 0;
	}
	if (cmds[found].cmd == KVT_ADMIN_BLOCKS && have_limit && !arg)
		arg = UINT64_MAX; /* --limit 0: every block */
	if (!strcmp(name, "flush"))
		fprintf(stderr, "kvtierctl: 'flush' is deprecated: it is 'writeback' (copies host "
				"blocks down to NVMe; nothing is deleted)\n");
	ret = kvt_socket_path(sock_opt, path, sizeof(path));
	if (ret < 0)
		return fail(1, ret, "no socket path: %s", kvt_strerror(ret));
	if (!cmds[found].cmd)
		return ping(path);
	ret = admin(path, cmds[found].cmd, arg, json ? KVT_ADMIN_F_JSON : 0, extra, &out);
	if (ret)
		return ret;
	fputs(out ? out : "", stdout);
	free(out);
	return 0;
}
