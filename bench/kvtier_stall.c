/* SPDX-License-Identifier: MIT */
/*
 * kvtier-stall-bench - what a compressing NVMe chain costs the other clients.
 *
 * Runs kvtierd twice on the same workload, side by side: nvme.codec_threads=0 (the chain runs
 * on the event loop) and =N (codec threads).  A writer client puts 1 MiB blocks of fp16
 * values far beyond the host tier, so blocks keep being demoted through the chain; a reader
 * client meanwhile times one lookup per millisecond.  Prints the lookup latency percentiles
 * and the writer's throughput for both runs (--json: one object).
 *
 *   kvtier-stall-bench [--daemon PATH] [--codec CHAIN] [--threads N] [--seconds S]
 *                      [--rate-mbps R] [--json]
 *
 * The writer is paced (default 16 MB/s) below what the chain encodes, as in a steady state:
 * a writer faster than its NVMe chain can only be slowed down, threads or not.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvtier.h"

#define MAX_SAMPLES 200000

struct run {
	const char *sock;
	struct kvt_layout l;
	double seconds;
	double rate; /* writer bytes per second, 0 = as fast as it can */
	volatile bool stop;
	uint64_t puts;
	float *lat_us;
	size_t nlat;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *msg) __attribute__((noreturn));
static void die(const char *msg)
{
	fprintf(stderr, "kvtier-stall-bench: %s\n", msg);
	exit(1);
}

static struct kvt_client *connect_retry(const char *sock)
{
	struct kvt_connect_opts o = {
	    .size = sizeof(o), .socket_path = sock, .name = "stall-bench", .timeout_ms = 5000};
	struct kvt_client *c = NULL;

	for (int i = 0; i < 500; i++) {
		if (kvt_connect(&o, &c) == 0)
			return c;
		usleep(10000);
	}
	die("cannot connect to kvtierd");
}

static struct kvt_key key_of(uint64_t i)
{
	struct kvt_key k = {i * 0x9e3779b97f4a7c15ull + 1, i ^ 0x5bd1e995ull};
	return k;
}

/* Puts distinct blocks of plausible fp16 KV values (small normals) until stopped. */
static void *writer(void *arg)
{
	struct run *r = arg;
	struct kvt_client *c = connect_retry(r->sock);
	int lay = kvt_register_layout(c, &r->l);
	size_t bb = kvt_layout_block_bytes(&r->l);
	uint16_t *buf = malloc(bb);
	uint64_t x = 88172645463325252ull;

	double t0 = now_s();

	if (lay < 0 || !buf)
		die("writer setup");
	for (uint64_t i = 1; !r->stop; i++) {
		/* Paced: the chain can keep up in the background, as it must in a steady state. */
		while (r->rate > 0 && !r->stop &&
		       (double)(i - 1) * (double)bb > r->rate * (now_s() - t0))
			usleep(1000);
		for (size_t k = 0; k < bb / 2; k++) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			/* sign, exponent 10..16 (|v| in [2^-5, 2^2)), random mantissa */
			buf[k] = (uint16_t)((x & 0x8000) | ((10 + (x >> 16) % 7) << 10) |
					    ((x >> 24) & 0x3ff));
		}
		struct kvt_key k = key_of(i);
		if (kvt_put(c, lay, &k, buf, bb) == 0)
			r->puts++;
	}
	kvt_close(c);
	free(buf);
	return NULL;
}

/* One lookup of a key that is always resident (pinned), once per millisecond. */
static void *reader(void *arg)
{
	struct run *r = arg;
	struct kvt_client *c = connect_retry(r->sock);
	int lay = kvt_register_layout(c, &r->l);
	size_t bb = kvt_layout_block_bytes(&r->l);
	void *buf = calloc(1, bb);
	struct kvt_key k = key_of(0);

	if (lay < 0 || !buf || kvt_put(c, lay, &k, buf, bb) < 0 || kvt_pin(c, lay, &k) < 0)
		die("reader setup");
	while (!r->stop && r->nlat < MAX_SAMPLES) {
		double t0 = now_s();
		int n = kvt_lookup(c, lay, &k, 1);
		double dt = now_s() - t0;

		if (n != 1)
			die("the pinned block went missing");
		r->lat_us[r->nlat++] = (float)(dt * 1e6);
		usleep(1000);
	}
	kvt_close(c);
	free(buf);
	return NULL;
}

static int cmpf(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return (x > y) - (x < y);
}

static double pct(const float *v, size_t n, double p)
{
	size_t i = (size_t)(p * (double)(n - 1) + 0.5);
	return n ? v[i < n ? i : n - 1] : -1;
}

struct result {
	unsigned threads;
	double p50, p99, p999, max, put_gbps;
	size_t samples;
};

static void one_run(const char *daemon, const char *dir, const char *codec, unsigned threads,
		    double seconds, double rate, struct result *out)
{
	char sock[PATH_MAX], paths[PATH_MAX + 32], cod[128], thr[64], log[PATH_MAX];
	struct run r = {.sock = sock, .seconds = seconds, .rate = rate};
	pthread_t tw, tr;
	pid_t pid;
	int st;
	double t0;

	snprintf(sock, sizeof(sock), "%s/kvtier.sock", dir);
	snprintf(paths, sizeof(paths), "nvme.paths=%s/nvme.slots", dir);
	snprintf(cod, sizeof(cod), "nvme.codec=%s", codec);
	snprintf(thr, sizeof(thr), "nvme.codec_threads=%u", threads);
	snprintf(log, sizeof(log), "%s/kvtierd.log", dir);
	unlink(sock);
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		if (!freopen(log, "w", stderr))
			_exit(126);
		execl(daemon, daemon, "-f", "-s", sock, "-o", "host.capacity=16MiB", "-o",
		      "nvme.enabled=true", "-o", paths, "-o", "nvme.capacity=2GiB", "-o", cod, "-o",
		      thr, "-o", "daemon.tick_ms=10", (char *)NULL);
		_exit(127);
	}
	/* 4 layers x K,V x 8 heads x 64 tokens x 128 dims x fp16 = 1 MiB blocks */
	r.l =
	    (struct kvt_layout){sizeof(r.l), 4, 8, 128, 64, KVT_DTYPE_FP16, 0, 0, 1, "stall-bench"};
	r.lat_us = malloc(sizeof(float) * MAX_SAMPLES);
	if (!r.lat_us)
		die("memory");
	pthread_create(&tr, NULL, reader, &r);
	usleep(100000);
	pthread_create(&tw, NULL, writer, &r);
	t0 = now_s();
	while (now_s() - t0 < seconds)
		usleep(10000);
	r.stop = true;
	pthread_join(tw, NULL);
	pthread_join(tr, NULL);
	out->put_gbps =
	    (double)r.puts * (double)kvt_layout_block_bytes(&r.l) / (now_s() - t0) / 1e9;
	kill(pid, SIGTERM);
	waitpid(pid, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st)) {
		char cmd[PATH_MAX + 16];

		fprintf(stderr, "kvtier-stall-bench: kvtierd did not stop cleanly; its log:\n");
		snprintf(cmd, sizeof(cmd), "cat '%s' >&2", log);
		if (system(cmd) < 0) {
		}
		exit(1);
	}
	unlink(log);
	qsort(r.lat_us, r.nlat, sizeof(float), cmpf);
	out->threads = threads;
	out->samples = r.nlat;
	out->p50 = pct(r.lat_us, r.nlat, 0.50);
	out->p99 = pct(r.lat_us, r.nlat, 0.99);
	out->p999 = pct(r.lat_us, r.nlat, 0.999);
	out->max = r.nlat ? r.lat_us[r.nlat - 1] : -1;
	free(r.lat_us);
	unlink(paths + strlen("nvme.paths="));
}

int main(int argc, char **argv)
{
	const char *daemon = NULL, *codec = "uq";
	unsigned threads = 2;
	double seconds = 5, rate = 16e6;
	bool json = false;
	char self[PATH_MAX], dbuf[PATH_MAX], dir[] = "/var/tmp/kvt-stall.XXXXXX";
	struct result res[2];
	ssize_t n;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--daemon") && i + 1 < argc)
			daemon = argv[++i];
		else if (!strcmp(argv[i], "--codec") && i + 1 < argc)
			codec = argv[++i];
		else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
			threads = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
			seconds = atof(argv[++i]);
		else if (!strcmp(argv[i], "--rate-mbps") && i + 1 < argc)
			rate = atof(argv[++i]) * 1e6;
		else if (!strcmp(argv[i], "--json"))
			json = true;
		else {
			fprintf(stderr, "usage: kvtier-stall-bench [--daemon PATH] [--codec CHAIN] "
					"[--threads N] [--seconds S] [--rate-mbps R] [--json]\n");
			return 2;
		}
	}
	if (!daemon) {
		n = readlink("/proc/self/exe", self, sizeof(self) - 1);
		if (n <= 0)
			die("no --daemon and no /proc/self/exe");
		self[n] = 0;
		*strrchr(self, '/') = 0;
		snprintf(dbuf, sizeof(dbuf), "%.*s/../daemon/kvtierd", PATH_MAX - 32, self);
		daemon = dbuf;
	}
	if (!mkdtemp(dir))
		die("mkdtemp");
	signal(SIGPIPE, SIG_IGN);
	one_run(daemon, dir, codec, 0, seconds, rate, &res[0]);
	one_run(daemon, dir, codec, threads, seconds, rate, &res[1]);
	rmdir(dir);
	if (json) {
		printf("{\"bench\": \"stall\", \"codec\": \"%s\", \"block_bytes\": 1048576, "
		       "\"host_bytes\": 16777216, \"writer_rate_mbps\": %.1f, \"runs\": [",
		       codec, rate / 1e6);
		for (int k = 0; k < 2; k++)
			printf(
			    "%s{\"codec_threads\": %u, \"lookup_p50_us\": %.1f, \"lookup_p99_us\": "
			    "%.1f, \"lookup_p999_us\": %.1f, \"lookup_max_us\": %.1f, "
			    "\"samples\": %zu, \"put_gbps\": %.3f}",
			    k ? ", " : "", res[k].threads, res[k].p50, res[k].p99, res[k].p999,
			    res[k].max, res[k].samples, res[k].put_gbps);
		printf("], \"p99_ratio_inline_over_threads\": %.1f}\n",
		       res[1].p99 > 0 ? res[0].p99 / res[1].p99 : -1);
	} else {
		for (int k = 0; k < 2; k++)
			printf("codec %s, codec_threads=%u: lookup p50 %.1f us, p99 %.1f us, p99.9 "
			       "%.1f us, max %.1f us (%zu samples); writer %.3f GB/s\n",
			       codec, res[k].threads, res[k].p50, res[k].p99, res[k].p999,
			       res[k].max, res[k].samples, res[k].put_gbps);
	}
	return 0;
}
