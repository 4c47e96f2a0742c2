/* SPDX-License-Identifier: MIT */
/*
 * bench_remote.c - `kvtier-bench --remote`: the remote tier (tiers/tier_remote.c) against
 * redis-benchmark on the same Redis Cluster, in the same run.
 *
 * It starts a 6-node cluster on loopback (3 masters, 3 replicas: tests/integration/
 * redis_harness.c) unless --cluster names one, then per round: the remote tier puts N blocks
 * of block_bytes with C requests in flight (C clients of the tier, one request each, as
 * redis-benchmark's C clients; --pipeline: one client, C per pipelined call), gets them back (each
 * checked: record header, length, CRC-32C), and `redis-benchmark --cluster` runs SET and GET with
 * -c C -n N -d block_bytes.  Each figure is the best of --repeat rounds; the masters are flushed
 * between rounds.  Then a lookup of a 64-block prefix whose blocks are all remote (pipelined
 * EXISTS) is timed --lookups times. GB/s are 10^9 payload bytes per second (the tier's 64-byte
 * record header is not counted). The load average before and after is reported: the cluster shares
 * the machine with both clients.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kvt_proto.h"
#include "redis_cluster.h"
#include "redis_harness.h"
#include "tier_remote.h"

int bench_remote_main(int argc, char **argv);

struct ropts {
	const char *cluster; /* host:port of a running cluster, or NULL: start one */
	size_t bs;
	unsigned clients, requests, lookups, repeat;
	bool json, quick, pipeline;
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

/*
 * redis-benchmark --csv: "SET","1234.56",... -> requests per second of test.  SET runs with
 * -r (a random key each time): blocks are immutable, every put of the tier creates a key,
 * and creating a 1 MiB key costs the server several times what overwriting one does.  GET
 * runs after a SET pass without -r, so that it reads the keys that pass wrote (with -r it
 * would mostly read missing keys: nil replies, no payload).
 */
static double redis_bench(const char *host, int port, const struct ropts *o, const char *test)
{
	char cmd[512], line[512];
	bool set = !strcmp(test, "SET");
	double rps = -1;
	FILE *p;

	snprintf(
	    cmd, sizeof(cmd),
	    "redis-benchmark --cluster -h %s -p %d -c %u -n %u -d %zu -t %s %s --csv 2>/dev/null",
	    host, port, o->clients, o->requests, o->bs, set ? "set" : "set,get",
	    set ? "-r 1000000000" : "");
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

/* A block size (kvt_parse_size's suffixes) of 1 byte to 256 MiB. */
static int parse_size(const char *s, size_t *out)
{
	uint64_t v;

	if (kvt_parse_size(s, &v) < 0 || v == 0 || v > (256u << 20))
		return -1;
	*out = (size_t)v;
	return 0;
}

/*
 * One client of the tier: its own struct kvt_remote (connections), depth requests in flight
 * per call.  --pipeline: one worker, depth = clients; default: clients workers (threads),
 * depth 1 each, like redis-benchmark's clients.  Worker k takes requests k, k + W, ...
 */
struct worker {
	pthread_t th;
	struct kvt_remote *r;
	unsigned id, nw, depth, kbase, errors;
	int op; /* 0 put, 1 get */
	const struct ropts *o;
	const uint8_t *src;
	struct kvt_remote_put *pv;
	struct kvt_remote_get *gv;
	uint8_t **dst;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	const struct ropts *o = w->o;
	unsigned idx[256];

	for (unsigned b = w->id; b < o->requests;) {
		unsigned m = 0;

		for (; m < w->depth && b < o->requests; b += w->nw)
			idx[m++] = w->kbase + b;
		for (unsigned j = 0; j < m; j++) {
			struct kvt_remote_key k;

			mk_key(idx[j], &k);
			if (w->op == 0) {
				memset(&w->pv[j], 0, sizeof(w->pv[j]));
				w->pv[j].hdr.key_lo = k.key_lo;
				w->pv[j].hdr.key_hi = k.key_hi;
				w->pv[j].hdr.fingerprint = k.fingerprint;
				w->pv[j].hdr.raw_len = w->pv[j].hdr.payload_len = (uint32_t)o->bs;
				w->pv[j].payload = w->src;
			} else {
				memset(&w->gv[j], 0, sizeof(w->gv[j]));
				w->gv[j].key = k;
				w->gv[j].buf = w->dst[j];
				w->gv[j].cap = o->bs;
			}
		}
		if (w->op == 0 &&
		    kvt_remote_put(w->r, w->pv, m, kvt_remote_now_ns() + 30000000000ull) != (int)m)
			w->errors++;
		if (w->op == 1) {
			if (kvt_remote_get(w->r, w->gv, m, kvt_remote_now_ns() + 30000000000ull) !=
			    (int)m)
				w->errors++;
			for (unsigned j = 0; j < m; j++)
				if (w->gv[j].res == (int)o->bs && memcmp(w->dst[j], w->src, o->bs))
					w->errors++;
		}
	}
	return NULL;
}

/* One timed pass of every worker: payload GB/s, or -1 on any failed request. */
static double run_pass(struct worker *w, unsigned nw, int op, unsigned kbase, const struct ropts *o)
{
	uint64_t t0 = kvt_remote_now_ns(), t1;
	unsigned errors = 0;

	for (unsigned i = 0; i < nw; i++) {
		w[i].op = op;
		w[i].kbase = kbase;
		w[i].errors = 0;
		if (pthread_create(&w[i].th, NULL, worker_main, &w[i]) != 0)
			return -1;
	}
	for (unsigned i = 0; i < nw; i++) {
		pthread_join(w[i].th, NULL);
		errors += w[i].errors;
	}
	t1 = kvt_remote_now_ns();
	return errors ? -1 : (double)o->requests * (double)o->bs / (double)(t1 - t0);
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
	    "  --pipeline           one tier client with C requests in flight per call\n"
	    "                       (default: C clients, one request each, like redis-benchmark)\n"
	    "  --quick              CI-size run (64 KiB blocks, few requests)\n"
	    "  --json               one JSON object\n");
}

int bench_remote_main(int argc, char **argv)
{
	enum {
		O_CLUSTER = 256,
		O_BS,
		O_CLIENTS,
		O_REQ,
		O_LOOKUPS,
		O_REPEAT,
		O_QUICK,
		O_JSON,
		O_PIPE
	};
	static const struct option lopts[] = {
	    {"remote", no_argument, NULL, 'r'},
	    {"cluster", required_argument, NULL, O_CLUSTER},
	    {"block-size", required_argument, NULL, O_BS},
	    {"clients", required_argument, NULL, O_CLIENTS},
	    {"requests", required_argument, NULL, O_REQ},
	    {"lookups", required_argument, NULL, O_LOOKUPS},
	    {"repeat", required_argument, NULL, O_REPEAT},
	    {"quick", no_argument, NULL, O_QUICK},
	    {"pipeline", no_argument, NULL, O_PIPE},
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
	struct worker w[256];
	unsigned nw = 0, depth;
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
		case O_PIPE:
			o.pipeline = true;
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
	depth = o.pipeline ? o.clients : 1;
	for (nw = 0; nw < o.clients / depth; nw++) {
		struct kvt_remote_key k = {0};
		struct worker *x = &w[nw];

		memset(x, 0, sizeof(*x));
		x->id = nw;
		x->nw = o.clients / depth;
		x->depth = depth;
		x->o = &o;
		x->src = src;
		x->pv = pv + nw * depth;
		x->gv = gv + nw * depth;
		x->dst = dst + nw * depth;
		if (kvt_remote_open(&rconf, &x->r) < 0)
			goto out;
		/* Connected (slot map read, a connection per node) before anything is timed. */
		kvt_remote_lookup(x->r, &k, 1, kvt_remote_now_ns() + 5000000000ull);
	}

	for (unsigned round = 0; round < o.repeat; round++) {
		unsigned kbase = started ? 0 : round * o.requests;
		double rps;

		/* Our cluster is flushed between rounds; someone else's is never touched:
		 * each round puts keys of its own there. */
		if (started && round)
			flush_masters(host, port);
		for (int op = 0; op < 2; op++) {
			double gbps = run_pass(w, nw, op, kbase, &o);

			if (gbps < 0)
				errors++;
			else if (gbps > best[op])
				best[op] = gbps;
		}
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
		       "\"mode\": \"%s\", "
		       "\"remote_put_gbps\": %.3f, \"remote_get_gbps\": %.3f, "
		       "\"redis_bench_set_gbps\": %.3f, \"redis_bench_get_gbps\": %.3f, "
		       "\"put_ratio\": %.3f, \"get_ratio\": %.3f, \"lookup_blocks\": 64, "
		       "\"remote_lookup_p50_us\": %.1f, \"remote_lookup_p99_us\": %.1f, "
		       "\"lookup_short\": %u, \"errors\": %u, \"load1_before\": %.2f, "
		       "\"load1_after\": %.2f, \"cpus\": %ld}]\n",
		       o.bs, o.clients, o.requests, o.repeat, o.pipeline ? "pipeline" : "clients",
		       best[0], best[1], best[2], best[3], best[2] > 0 ? best[0] / best[2] : 0,
		       best[3] > 0 ? best[1] / best[3] : 0, p50, p99, short_lookups, errors, load0,
		       load1, sysconf(_SC_NPROCESSORS_ONLN));
	} else {
		printf("remote tier vs redis-benchmark --cluster, %zu-byte blocks, %u in flight "
		       "(%s), %u "
		       "requests, best of %u\n",
		       o.bs, o.clients, o.pipeline ? "one client, pipelined" : "one per client",
		       o.requests, o.repeat);
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
	for (unsigned i = 0; i < nw; i++)
		kvt_remote_close(w[i].r);
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
