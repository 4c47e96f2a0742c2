/* SPDX-License-Identifier: MIT */
/*
 * bench_remote.c - `kvtier-bench --remote`: the remote tier (tiers/tier_remote.c) against
 * redis-benchmark on the same Redis Cluster, in the same run.
 *
 * It starts a 6-node cluster on loopback (3 masters, 3 replicas: tests/integration/
 * redis_harness.c) unless --cluster names one, then per round: the remote tier puts N blocks
 * of block_bytes with C requests in flight (one I/O thread, pipelined over the nodes, as the
 * tier runs), gets them back (each checked: record header, length, CRC-32C), and
 * `redis-benchmark --cluster` runs SET and GET with -c C -n N -d block_bytes.  Each figure is
 * the best of --repeat rounds; the masters are flushed between rounds.  Then a lookup of a
 * 64-block prefix whose blocks are all remote (pipelined EXISTS) is timed --lookups times.
 * GB/s are 10^9 payload bytes per second (the tier's 64-byte record header is not counted).
 * The load average before and after is reported: the cluster shares the machine with both
 * clients.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "redis_cluster.h"
#include "redis_harness.h"
#include "tier_remote.h"

int bench_remote_main(int argc, char **argv);

struct ropts {
	const char *cluster; /* host:port of a running cluster, or NULL: start one */
	size_t bs;
	unsigned clients, requests, lookups, repeat;
	bool json, quick;
};

static int cmpd(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double loadavg(void)
{
	double l = -1;
	FILE *f = fopen("/proc/loadavg", "r");

	if (f) {
		if (fscanf(f, "%lf", &l) != 1)
			l = -1;
		fclose(f);
	}
	return l;
}

static void mk_key(unsigned i, struct kvt_remote_key *k)
{
	k->key_lo = 0x9e3779b97f4a7c15ull * (i + 1);
	k->key_hi = 0xbf58476d1ce4e5b9ull ^ i;
	k->fingerprint = 0xbe1c;
}

/* redis-benchmark --csv: "SET","1234.56",... -> requests per second of test. */
static double redis_bench(const char *host, int port, const struct ropts *o, const char *test)
{
	char cmd[512], line[512];
	double rps = -1;
	FILE *p;

	snprintf(cmd, sizeof(cmd),
		 "redis-benchmark --cluster -h %s -p %d -c %u -n %u -d %zu -t %s --csv 2>/dev/null",
		 host, port, o->clients, o->requests, o->bs, test);
	p = popen(cmd, "r");
	if (!p)
		return -1;
	while (fgets(line, sizeof(line), p)) {
		char name[32];
		double v;

		if (sscanf(line, "\"%31[^\"]\",\"%lf\"", name, &v) == 2 && !strcasecmp(name, test))
			rps = v;
	}
	pclose(p);
	return rps;
}

static void flush_masters(const char *host, int port)
{
	char cmd[256];

	/* FLUSHALL on every master (redis-cli --cluster call reaches each node). */
	snprintf(cmd, sizeof(cmd), "redis-cli --cluster call %s:%d FLUSHALL >/dev/null 2>&1", host,
		 port);
	if (system(cmd) != 0)
		fprintf(stderr, "bench: FLUSHALL failed\n");
}

static int parse_size(const char *s, size_t *out)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);

	if (end == s)
		return -1;
	if (*end == 'K' || *end == 'k')
		v <<= 10, end++;
	else if (*end == 'M' || *end == 'm')
		v <<= 20, end++;
	if (*end || v == 0 || v > (256u << 20))
		return -1;
	*out = (size_t)v;
	return 0;
}

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: kvtier-bench --remote [options]\n"
	    "  --cluster HOST:PORT  a running Redis Cluster (default: start 6 nodes on loopback)\n"
	    "  --block-size SZ      bytes per block (default 1M)\n"
	    "  --clients C          requests in flight, ours and redis-benchmark's -c (default 4)\n"
	    "  --requests N         blocks per put/get pass, redis-benchmark's -n (default 256)\n"
	    "  --lookups N          timed 64-block prefix lookups (default 2000)\n"
	    "  --repeat R           rounds; each figure is the best (default 3)\n"
	    "  --quick              CI-size run (64 KiB blocks, few requests)\n"
	    "  --json               one JSON object\n");
}

int bench_remote_main(int argc, char **argv)
{
	enum { O_CLUSTER = 256, O_BS, O_CLIENTS, O_REQ, O_LOOKUPS, O_REPEAT, O_QUICK, O_JSON };
	static const struct option lopts[] = {
	    {"remote", no_argument, NULL, 'r'},
	    {"cluster", required_argument, NULL, O_CLUSTER},
	    {"block-size", required_argument, NULL, O_BS},
	    {"clients", required_argument, NULL, O_CLIENTS},
	    {"requests", required_argument, NULL, O_REQ},
	    {"lookups", required_argument, NULL, O_LOOKUPS},
	    {"repeat", required_argument, NULL, O_REPEAT},
	    {"quick", no_argument, NULL, O_QUICK},
	    {"json", no_argument, NULL, O_JSON},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct ropts o = {
	    .bs = 1u << 20, .clients = 4, .requests = 256, .lookups = 2000, .repeat = 3};
	struct rh_cluster cl;
	struct kvt_remote_conf rconf = {.size = sizeof(rconf), .ttl_s = 3600};
	struct kvt_remote *r = NULL;
	struct kvt_remote_put *pv = NULL;
	struct kvt_remote_get *gv = NULL;
	struct kvt_remote_key keys[64];
	uint8_t *src = NULL, **dst = NULL;
	double best[4] = {0}, *lat = NULL, load0, load1, p50, p99;
	char host[64] = "127.0.0.1";
	bool started = false;
	unsigned short_lookups = 0, errors = 0;
	int port = 0, opt, ret = 1;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
		switch (opt) {
		case 'r':
			break;
		case O_CLUSTER: {
			const char *colon = strrchr(optarg, ':');

			if (!colon || (size_t)(colon - optarg) >= sizeof(host) ||
			    (port = atoi(colon + 1)) <= 0) {
				fprintf(stderr, "bench: --cluster HOST:PORT\n");
				return 2;
			}
			memcpy(host, optarg, (size_t)(colon - optarg));
			host[colon - optarg] = 0;
			o.cluster = optarg;
			break;
		}
		case O_BS:
			if (parse_size(optarg, &o.bs) < 0) {
				fprintf(stderr, "bench: bad --block-size %s\n", optarg);
				return 2;
			}
			break;
		case O_CLIENTS:
			o.clients = (unsigned)atoi(optarg);
			break;
		case O_REQ:
			o.requests = (unsigned)atoi(optarg);
			break;
		case O_LOOKUPS:
			o.lookups = (unsigned)atoi(optarg);
			break;
		case O_REPEAT:
			o.repeat = (unsigned)atoi(optarg);
			break;
		case O_QUICK:
			o.quick = true;
			break;
		case O_JSON:
			o.json = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (o.quick) {
		o.bs = 64u << 10;
		o.requests = 64;
		o.lookups = 200;
		o.repeat = 1;
	}
	if (!o.clients || o.clients > 256 || o.requests < o.clients || o.requests < 64 ||
	    !o.repeat || !o.lookups) {
		fprintf(stderr, "bench: need 1 <= clients <= 256, requests >= max(clients, 64)\n");
		return 2;
	}
	if (!o.cluster) {
		if (!rh_available()) {
			fprintf(stderr, "bench: redis-server/redis-cli not installed\n");
			return 77;
		}
		if (rh_start(&cl, 6, true, NULL) < 0)
			return 1;
		started = true;
		port = cl.port[0];
		rconf.seeds = cl.seeds;
	} else {
		rconf.seeds = o.cluster;
	}
	load0 = loadavg();
	if (kvt_remote_open(&rconf, &r) < 0) {
		fprintf(stderr, "bench: cannot open the remote tier\n");
		goto out;
	}
	src = malloc(o.bs);
	pv = calloc(o.clients, sizeof(*pv));
	gv = calloc(o.clients, sizeof(*gv));
	dst = calloc(o.clients, sizeof(*dst));
	lat = calloc(o.lookups, sizeof(*lat));
	if (!src || !pv || !gv || !dst || !lat)
		goto out;
	for (unsigned i = 0; i < o.clients; i++)
		if (!(dst[i] = malloc(o.bs)))
			goto out;
	for (size_t i = 0; i < o.bs; i++)
		src[i] = (uint8_t)(i * 131 + (i >> 12));

	for (unsigned round = 0; round < o.repeat; round++) {
		unsigned kbase = started ? 0 : round * o.requests;
		uint64_t t0, t1;
		double rps;

		/* Our cluster is flushed between rounds; someone else's is never touched:
		 * each round puts keys of its own there. */
		if (started && round)
			flush_masters(host, port);
		t0 = kvt_remote_now_ns();
		for (unsigned b = 0; b < o.requests; b += o.clients) {
			unsigned m = o.requests - b < o.clients ? o.requests - b : o.clients;

			for (unsigned j = 0; j < m; j++) {
				struct kvt_remote_key k;

				mk_key(kbase + b + j, &k);
				memset(&pv[j], 0, sizeof(pv[j]));
				pv[j].hdr.key_lo = k.key_lo;
				pv[j].hdr.key_hi = k.key_hi;
				pv[j].hdr.fingerprint = k.fingerprint;
				pv[j].hdr.raw_len = pv[j].hdr.payload_len = (uint32_t)o.bs;
				pv[j].payload = src;
			}
			if (kvt_remote_put(r, pv, m, kvt_remote_now_ns() + 10000000000ull) !=
			    (int)m)
				errors++;
		}
		t1 = kvt_remote_now_ns();
		if ((double)o.requests * (double)o.bs / (double)(t1 - t0) > best[0])
			best[0] = (double)o.requests * (double)o.bs / (double)(t1 - t0);
		t0 = kvt_remote_now_ns();
		for (unsigned b = 0; b < o.requests; b += o.clients) {
			unsigned m = o.requests - b < o.clients ? o.requests - b : o.clients;

			for (unsigned j = 0; j < m; j++) {
				memset(&gv[j], 0, sizeof(gv[j]));
				mk_key(kbase + b + j, &gv[j].key);
				gv[j].buf = dst[j];
				gv[j].cap = o.bs;
			}
			if (kvt_remote_get(r, gv, m, kvt_remote_now_ns() + 10000000000ull) !=
			    (int)m)
				errors++;
		}
		t1 = kvt_remote_now_ns();
		if (memcmp(dst[0], src, o.bs))
			errors++;
		if ((double)o.requests * (double)o.bs / (double)(t1 - t0) > best[1])
			best[1] = (double)o.requests * (double)o.bs / (double)(t1 - t0);
		rps = redis_bench(host, port, &o, "SET");
		if (rps * (double)o.bs / 1e9 > best[2])
			best[2] = rps * (double)o.bs / 1e9;
		rps = redis_bench(host, port, &o, "GET");
		if (rps * (double)o.bs / 1e9 > best[3])
			best[3] = rps * (double)o.bs / 1e9;
	}
	/* The last round's first 64 blocks are stored: a 64-block prefix, all remote. */
	for (unsigned i = 0; i < 64; i++)
		mk_key((started ? 0 : (o.repeat - 1) * o.requests) + i, &keys[i]);
	for (unsigned i = 0; i < o.lookups; i++) {
		uint64_t t0 = kvt_remote_now_ns();
		int n = kvt_remote_lookup(r, keys, 64, t0 + 1000000000ull);

		lat[i] = (double)(kvt_remote_now_ns() - t0) / 1000.0;
		short_lookups += n != 64;
	}
	qsort(lat, o.lookups, sizeof(*lat), cmpd);
	p50 = lat[o.lookups / 2];
	p99 = lat[(size_t)((double)o.lookups * 0.99)];
	load1 = loadavg();
	if (o.json) {
		printf("[{\"block_bytes\": %zu, \"clients\": %u, \"requests\": %u, \"repeat\": %u, "
		       "\"remote_put_gbps\": %.3f, \"remote_get_gbps\": %.3f, "
		       "\"redis_bench_set_gbps\": %.3f, \"redis_bench_get_gbps\": %.3f, "
		       "\"put_ratio\": %.3f, \"get_ratio\": %.3f, \"lookup_blocks\": 64, "
		       "\"remote_lookup_p50_us\": %.1f, \"remote_lookup_p99_us\": %.1f, "
		       "\"lookup_short\": %u, \"errors\": %u, \"load1_before\": %.2f, "
		       "\"load1_after\": %.2f, \"cpus\": %ld}]\n",
		       o.bs, o.clients, o.requests, o.repeat, best[0], best[1], best[2], best[3],
		       best[2] > 0 ? best[0] / best[2] : 0, best[3] > 0 ? best[1] / best[3] : 0,
		       p50, p99, short_lookups, errors, load0, load1,
		       sysconf(_SC_NPROCESSORS_ONLN));
	} else {
		printf(
		    "remote tier vs redis-benchmark --cluster, %zu-byte blocks, %u in flight, %u "
		    "requests, best of %u\n",
		    o.bs, o.clients, o.requests, o.repeat);
		printf("  put %.3f GB/s vs SET %.3f GB/s: %.2f x\n", best[0], best[2],
		       best[2] > 0 ? best[0] / best[2] : 0);
		printf("  get %.3f GB/s vs GET %.3f GB/s: %.2f x\n", best[1], best[3],
		       best[3] > 0 ? best[1] / best[3] : 0);
		printf("  64-block remote lookup: p50 %.1f us, p99 %.1f us (%u short)\n", p50, p99,
		       short_lookups);
		printf("  load average %.2f before, %.2f after, %ld CPUs; %u errors\n", load0,
		       load1, sysconf(_SC_NPROCESSORS_ONLN), errors);
	}
	/* A run where redis-benchmark failed, or blocks did not come back, is no measurement. */
	ret = errors || short_lookups || best[2] <= 0 || best[3] <= 0 ? 1 : 0;
out:
	kvt_remote_close(r);
	if (dst)
		for (unsigned i = 0; i < o.clients; i++)
			free(dst[i]);
	free(dst);
	free(src);
	free(pv);
	free(gv);
	free(lat);
	if (started)
		rh_stop(&cl);
	return ret;
}
