/* SPDX-License-Identifier: MIT */
/*
 * redis_harness.c - redis-server processes on loopback for tests and bench (see the header).
 */
#define _GNU_SOURCE
#include "redis_harness.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static struct rh_cluster *live[4];

uint64_t rh_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* A short pause between polls of a condition (not a wait for an event by itself). */
static void rh_pause(void)
{
	struct timespec ts = {0, 20 * 1000 * 1000};

	nanosleep(&ts, NULL);
}

static bool in_path(const char *prog)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", prog);
	return system(cmd) == 0;
}

bool rh_available(void)
{
	return in_path("redis-server") && in_path("redis-cli");
}

pid_t rh_spawn(const char *const *argv, const char *log)
{
	pid_t parent = getpid(), pid = fork();

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		int fd =
		    open(log ? log : "/dev/null", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

		/* Dies with the test, even if the test crashes. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	return pid;
}

int rh_run(const char *const *argv)
{
	pid_t pid = rh_spawn(argv, NULL);
	int st;

	if (pid < 0)
		return pid;
	if (waitpid(pid, &st, 0) < 0)
		return -errno;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static bool port_free(int port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool ok;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

redisReply *rh_cmdargv(int port, int argc, const char **argv, const size_t *len)
{
	struct timeval tv = {2, 0};
	redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
	redisReply *r = NULL;

	if (!c || c->err)
		goto out;
	redisSetTimeout(c, tv);
	r = redisCommandArgv(c, argc, argv, len);
out:
	if (c)
		redisFree(c);
	return r;
}

redisReply *rh_cmd(int port, const char *fmt, ...)
{
	struct timeval tv = {2, 0};
	redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
	redisReply *r = NULL;
	va_list ap;

	if (!c || c->err)
		goto out;
	redisSetTimeout(c, tv);
	va_start(ap, fmt);
	r = redisvCommand(c, fmt, ap);
	va_end(ap);
out:
	if (c)
		redisFree(c);
	return r;
}

int rh_index(const struct rh_cluster *c, int port)
{
	for (unsigned i = 0; i < c->n; i++)
		if (c->port[i] == port)
			return (int)i;
	return -1;
}

static bool running(const struct rh_cluster *c, unsigned i)
{
	return c->pid[i] > 0 && !c->stopped[i];
}

bool rh_is_master(const struct rh_cluster *c, unsigned i)
{
	redisReply *r = rh_cmd(c->port[i], "ROLE");
	bool m = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
		 r->element[0]->type == REDIS_REPLY_STRING && !strcmp(r->element[0]->str, "master");

	if (r)
		freeReplyObject(r);
	return m;
}

/* slot -> owner port per server i's CLUSTER SLOTS; false if it did not answer sensibly. */
static bool slot_map(const struct rh_cluster *c, unsigned i, int *owner)
{
	redisReply *r = rh_cmd(c->port[i], "CLUSTER SLOTS");
	bool ok = r && r->type == REDIS_REPLY_ARRAY;

	for (unsigned s = 0; s < 16384; s++)
		owner[s] = -1;
	for (size_t k = 0; ok && k < r->elements; k++) {
		redisReply *e = r->element[k];

		if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
		    e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2) {
			ok = false;
			break;
		}
		for (long long s = e->element[0]->integer; s <= e->element[1]->integer; s++)
			owner[s] = (int)e->element[2]->element[1]->integer;
	}
	if (r)
		freeReplyObject(r);
	return ok;
}

int rh_slot_owner(const struct rh_cluster *c, unsigned from, unsigned slot)
{
	static int owner[16384];

	if (!slot_map(c, from, owner) || slot >= 16384)
		return -1;
	return rh_index(c, owner[slot]);
}

static bool info_has(int port, const char *section, const char *needle)
{
	redisReply *r = rh_cmd(port, "INFO %s", section);
	bool ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, needle);

	if (r)
		freeReplyObject(r);
	return ok;
}

static bool healthy(struct rh_cluster *c)
{
	static int ref[16384], owner[16384];
	bool have_ref = false;

	for (unsigned i = 0; i < c->n; i++) {
		redisReply *r;
		bool ok;

		if (!running(c, i))
			continue;
		if (!c->cluster)
			return info_has(c->port[i], "server", "redis_version");
		r = rh_cmd(c->port[i], "CLUSTER INFO");
		ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, "cluster_state:ok");
		if (r)
			freeReplyObject(r);
		if (!ok || !slot_map(c, i, owner))
			return false;
		for (unsigned s = 0; s < 16384; s++) {
			int o = rh_index(c, owner[s]);

			if (o < 0 || !running(c, (unsigned)o))
				return false;
			if (have_ref && owner[s] != ref[s])
				return false;
		}
		if (!have_ref) {
			memcpy(ref, owner, sizeof(ref));
			have_ref = true;
		}
		if (!rh_is_master(c, i) &&
		    !info_has(c->port[i], "replication", "master_link_status:up"))
			return false;
	}
	return true;
}

int rh_wait_healthy(struct rh_cluster *c, unsigned timeout_ms)
{
	uint64_t end = rh_now_ms() + timeout_ms;

	while (!healthy(c)) {
		if (rh_now_ms() >= end)
			return -ETIMEDOUT;
		rh_pause();
	}
	return 0;
}

static bool synced(struct rh_cluster *c)
{
	for (unsigned i = 0; i < c->n; i++) {
		redisReply *r;
		const char *p;
		long long off;
		bool ok = true;

		if (!running(c, i) || !rh_is_master(c, i))
			continue;
		r = rh_cmd(c->port[i], "INFO replication");
		if (!r || r->type != REDIS_REPLY_STRING ||
		    !(p = strstr(r->str, "master_repl_offset:"))) {
			if (r)
				freeReplyObject(r);
			return false;
		}
		off = atoll(p + strlen("master_repl_offset:"));
		for (p = strstr(r->str, "slave0:"); p && ok; p = strstr(p + 1, "\nslave")) {
			const char *o = strstr(p, "offset=");

			ok = o && atoll(o + 7) == off && strstr(p, "state=online");
		}
		freeReplyObject(r);
		if (!ok)
			return false;
	}
	return true;
}

int rh_wait_synced(struct rh_cluster *c, unsigned timeout_ms)
{
	uint64_t end = rh_now_ms() + timeout_ms;

	while (!synced(c)) {
		if (rh_now_ms() >= end)
			return -ETIMEDOUT;
		rh_pause();
	}
	return 0;
}

static const char *const *extra_args;

int rh_node_start(struct rh_cluster *c, unsigned i)
{
	char port[16], conf[320], log[320], dir[300];
	const char *argv[64];
	unsigned a = 0;
	uint64_t end;

	snprintf(port, sizeof(port), "%d", c->port[i]);
	snprintf(conf, sizeof(conf), "%s/nodes-%d.conf", c->dir, c->port[i]);
	snprintf(log, sizeof(log), "%s/redis-%d.log", c->dir, c->port[i]);
	/* A directory per server: a replica's dump.rdb must never be loaded by another. */
	snprintf(dir, sizeof(dir), "%s/%d", c->dir, c->port[i]);
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return -errno;
	argv[a++] = "redis-server";
	argv[a++] = "--port";
	argv[a++] = port;
	argv[a++] = "--bind";
	argv[a++] = "127.0.0.1";
	argv[a++] = "--dir";
	argv[a++] = dir;
	argv[a++] = "--save";
	argv[a++] = "";
	argv[a++] = "--appendonly";
	argv[a++] = "no";
	argv[a++] = "--daemonize";
	argv[a++] = "no";
	argv[a++] = "--repl-diskless-sync-delay";
	argv[a++] = "0";
	if (c->cluster) {
		argv[a++] = "--cluster-enabled";
		argv[a++] = "yes";
		argv[a++] = "--cluster-config-file";
		argv[a++] = conf;
		argv[a++] = "--cluster-node-timeout";
		argv[a++] = "1000";
		argv[a++] = "--cluster-require-full-coverage";
		argv[a++] = "no";
	}
	for (unsigned k = 0; extra_args && extra_args[k] && a < 62; k++)
		argv[a++] = extra_args[k];
	argv[a] = NULL;
	c->pid[i] = rh_spawn(argv, log);
	c->stopped[i] = false;
	if (c->pid[i] < 0)
		return c->pid[i];
	end = rh_now_ms() + 10000;
	for (;;) {
		redisReply *r = rh_cmd(c->port[i], "PING");
		bool up = r && r->type == REDIS_REPLY_STATUS;
		int st;

		if (r)
			freeReplyObject(r);
		if (up)
			return 0;
		if (waitpid(c->pid[i], &st, WNOHANG) == c->pid[i]) {
			c->pid[i] = -1;
			return -EADDRINUSE; /* most likely: someone took the port meanwhile */
		}
		if (rh_now_ms() >= end)
			return -ETIMEDOUT;
		rh_pause();
	}
}

void rh_node_signal(struct rh_cluster *c, unsigned i, int sig)
{
	if (c->pid[i] <= 0)
		return;
	kill(c->pid[i], sig);
	if (sig == SIGSTOP)
		c->stopped[i] = true;
	if (sig == SIGCONT)
		c->stopped[i] = false;
	if (sig == SIGKILL) {
		waitpid(c->pid[i], NULL, 0);
		c->pid[i] = -1;
		c->stopped[i] = false;
	}
}

static void rh_atexit(void)
{
	for (unsigned k = 0; k < sizeof(live) / sizeof(live[0]); k++)
		if (live[k])
			rh_stop(live[k]);
}

static void rh_on_signal(int sig)
{
	for (unsigned k = 0; k < sizeof(live) / sizeof(live[0]); k++)
		for (unsigned i = 0; live[k] && i < live[k]->n; i++)
			if (live[k]->pid[i] > 0)
				kill(live[k]->pid[i], SIGKILL);
	signal(sig, SIG_DFL);
	raise(sig);
}

void rh_stop(struct rh_cluster *c)
{
	char cmd[300];

	for (unsigned i = 0; i < c->n; i++)
		rh_node_signal(c, i, SIGKILL);
	for (unsigned k = 0; k < sizeof(live) / sizeof(live[0]); k++)
		if (live[k] == c)
			live[k] = NULL;
	if (c->dir[0] && !getenv("RH_KEEP")) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", c->dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", c->dir);
	}
	c->dir[0] = 0;
}

static int try_start(struct rh_cluster *c)
{
	const char *argv[RH_MAX + 8];
	char addr[RH_MAX][32];
	unsigned a = 0;
	int ret;

	for (unsigned i = 0; i < c->n; i++)
		if ((ret = rh_node_start(c, i)) < 0)
			return ret;
	if (!c->cluster)
		return 0;
	argv[a++] = "redis-cli";
	argv[a++] = "--cluster";
	argv[a++] = "create";
	for (unsigned i = 0; i < c->n; i++) {
		snprintf(addr[i], sizeof(addr[i]), "127.0.0.1:%d", c->port[i]);
		argv[a++] = addr[i];
	}
	argv[a++] = "--cluster-replicas";
	argv[a++] = c->n >= 6 ? "1" : "0";
	argv[a++] = "--cluster-yes";
	argv[a] = NULL;
	ret = rh_run(argv);
	if (ret != 0) {
		fprintf(stderr, "redis-cli --cluster create failed (%d)\n", ret);
		return -EIO;
	}
	return 0;
}

int rh_start(struct rh_cluster *c, unsigned n, bool cluster, const char *const *extra)
{
	const char *tmp = getenv("TMPDIR");
	static bool hooked;
	int ret = -EADDRINUSE;

	memset(c, 0, sizeof(*c));
	if (n == 0 || n > RH_MAX)
		return -EINVAL;
	c->n = n;
	c->cluster = cluster;
	extra_args = extra;
	for (unsigned i = 0; i < n; i++)
		c->pid[i] = -1;
	snprintf(c->dir, sizeof(c->dir), "%s/kvt-redis-XXXXXX", tmp ? tmp : "/tmp");
	if (!mkdtemp(c->dir))
		return -errno;
	if (!hooked) {
		atexit(rh_atexit);
		signal(SIGINT, rh_on_signal);
		signal(SIGTERM, rh_on_signal);
		signal(SIGABRT, rh_on_signal);
		hooked = true;
	}
	for (unsigned k = 0; k < sizeof(live) / sizeof(live[0]); k++)
		if (!live[k]) {
			live[k] = c;
			break;
		}
	srand((unsigned)(getpid() ^ rh_now_ms()));
	/* Ports from a range below the ephemeral one (bus ports are +10000), free right now;
	 * a server that still loses its port to a race makes us try another range. */
	for (int attempt = 0; attempt < 6 && ret == -EADDRINUSE; attempt++) {
		int base = 15000 + (rand() % 700) * 10;
		bool free_ = true;

		for (unsigned i = 0; i < n && free_; i++)
			free_ = port_free(base + (int)i) && port_free(base + (int)i + 10000);
		if (!free_)
			continue;
		for (unsigned i = 0; i < n; i++)
			c->port[i] = base + (int)i;
		ret = try_start(c);
		if (ret < 0)
			for (unsigned i = 0; i < n; i++)
				rh_node_signal(c, i, SIGKILL);
	}
	if (ret < 0)
		goto fail;
	c->seeds[0] = 0;
	for (unsigned i = 0; i < n; i++)
		snprintf(c->seeds + strlen(c->seeds), sizeof(c->seeds) - strlen(c->seeds),
			 "%s127.0.0.1:%d", i ? "," : "", c->port[i]);
	ret = rh_wait_healthy(c, 30000);
	if (ret == 0 && cluster)
		ret = rh_wait_synced(c, 30000);
	if (ret < 0)
		goto fail;
	return 0;
fail:
	fprintf(stderr, "redis harness: start failed: %s (logs in %s)\n", strerror(-ret), c->dir);
	rh_stop(c);
	return ret;
}
