/* SPDX-License-Identifier: MIT */
/*
 * kvtier-hostcodec-bench: the compressed host tier against the raw one and memcpy, side by
 * side in one run, on real K/V (a .kvd dump's blocks, tiled to the working set).
 *
 * usage: kvtier-hostcodec-bench KVTIERD DUMP.kvd [--chain C] [--mib N] [--tokens T]
 *                               [--reps R] [--out FILE.json]
 *
 * For host.codec = raw and host.codec = C (default bq), a kvtierd of its own is started with
 * a host tier larger than the working set; one client (this thread) then puts every block
 * (kvt_put_at: the library encodes), gets every block (kvt_get: it decodes), and the memcpy
 * of the same blocks (src -> dst, dst -> out) is timed in between; one warm-up pass (arena
 * pages mapped), then R repetitions alternated between the two daemons, medians reported.  GB/s are
 * raw block bytes a second, whatever crosses.  The tier's own account (kvtierctl's raw_bytes /
 * stored_bytes) gives how many more blocks the same bytes of RAM hold.  Single-threaded: a put's
 * encode and a get's decode run in the caller's thread.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvd.h"
#include "bench_time.h"
#include "kvtier.h"

static char socks[2][300];

static pid_t daemon_start(const char *kvtierd, const char *sock, uint64_t cap, const char *chain)
{
	char h[64], c[160];
	pid_t pid;

	snprintf(h, sizeof(h), "host.capacity=%llu", (unsigned long long)cap);
	snprintf(c, sizeof(c), "host.codec=%s", chain);
	unlink(sock);
	pid = fork();
	if (pid == 0) {
		execl(kvtierd, kvtierd, "-f", "-s", sock, "-o", h, "-o", c, "-o",
		      "daemon.log_level=warn", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 3000; i++) {
		struct stat st;

		if (stat(sock, &st) == 0)
			return pid;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	return -1;
}

struct res {
	double put, get, mput, mget; /* GB/s of raw bytes */
	uint64_t used;		     /* the tenant's host bytes after the puts */
};

/* One repetition through the daemon at sock: put all, memcpy, get all, memcpy, delete. */
static int run(struct kvt_client *c, int lay, uint8_t *const *blk, uint32_t n, size_t bb,
	       uint32_t T, uint8_t *dst, uint8_t *out, uint32_t tag, struct res *r)
{
	struct kvt_stats st = {.size = sizeof(st)};
	double t0, bytes = (double)n * (double)bb;

	t0 = kvt_bench_now_s();
	for (uint32_t i = 0; i < n; i++) {
		struct kvt_key k = {(uint64_t)tag << 32 | i, 0xbeef};

		if (kvt_put_at(c, lay, &k, i * T, blk[i], bb) < 0)
			return -1;
	}
	r->put = bytes / (kvt_bench_now_s() - t0) / 1e9;
	if (kvt_stats(c, &st) < 0)
		return -1;
	r->used = st.host_used_bytes;
	t0 = kvt_bench_now_s();
	for (uint32_t i = 0; i < n; i++)
		memcpy(dst + (size_t)i * bb, blk[i], bb);
	r->mput = bytes / (kvt_bench_now_s() - t0) / 1e9;
	t0 = kvt_bench_now_s();
	for (uint32_t i = 0; i < n; i++) {
		struct kvt_key k = {(uint64_t)tag << 32 | i, 0xbeef};

		if (kvt_get(c, lay, &k, out + (size_t)(i % 64) * bb, bb) != (ssize_t)bb)
			return -1;
	}
	r->get = bytes / (kvt_bench_now_s() - t0) / 1e9;
	t0 = kvt_bench_now_s();
	for (uint32_t i = 0; i < n; i++)
		memcpy(out + (size_t)(i % 64) * bb, dst + (size_t)i * bb, bb);
	r->mget = bytes / (kvt_bench_now_s() - t0) / 1e9;
	for (uint32_t i = 0; i < n; i++) {
		struct kvt_key k = {(uint64_t)tag << 32 | i, 0xbeef};

		kvt_delete(c, lay, &k);
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *chains[2] = {"raw", "bq"}, *outp = NULL;
	uint64_t mib = 256;
	uint32_t T = 16;
	int reps = 5, ret = 1;
	struct kvd d;

	if (argc < 3) {
		fprintf(stderr, "usage: kvtier-hostcodec-bench KVTIERD DUMP.kvd [--chain C] "
				"[--mib N] [--tokens T] [--reps R] [--out FILE.json]\n");
		return 2;
	}
	for (int i = 3; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--chain"))
			chains[1] = argv[i + 1];
		else if (!strcmp(argv[i], "--mib"))
			mib = strtoull(argv[i + 1], NULL, 0);
		else if (!strcmp(argv[i], "--tokens"))
			T = (uint32_t)atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--reps"))
			reps = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--out"))
			outp = argv[i + 1];
		else
			return 2;
	}
	if (reps < 1 || reps > 100 || !T || kvd_load(argv[2], &d) < 0 || d.n_tokens < T ||
	    d.dtype != 1) {
		fprintf(stderr, "bad arguments or dump (fp16, at least %u tokens)\n", T);
		return 2;
	}
	struct kvt_layout l = {
	    sizeof(l), d.n_layers, d.n_kv_heads,     d.head_dim, T, KVT_DTYPE_FP16, 0,
	    0,	       1,	   "hostcodec-bench"};
	size_t bb = kvt_layout_block_bytes(&l);
	uint32_t db = d.n_tokens / T, n = (uint32_t)((mib << 20) / bb);
	uint8_t **blk = calloc(db, sizeof(*blk)), **ring = calloc(n ? n : 1, sizeof(*ring));
	uint8_t *dst = malloc((size_t)n * bb), *out = malloc(64 * bb);
	struct res r[2][100];
	char dir[64] = "/tmp/kvtier-hcbench-XXXXXX";

	if (!n || !blk || !ring || !dst || !out || !mkdtemp(dir))
		return 1;
	for (uint32_t b = 0; b < db; b++) {
		blk[b] = malloc(bb);
		kvd_block_io(&d, d.k, d.v, b * T, T, (uint16_t *)blk[b], 1);
	}
	for (uint32_t i = 0; i < n; i++)
		ring[i] = blk[i % db]; /* the dump's blocks, tiled */
	memset(dst, 1, (size_t)n * bb);
	memset(out, 1, 64 * bb);
	struct kvt_client *cl[2] = {NULL, NULL};
	pid_t pids[2] = {-1, -1};
	int lays[2] = {-1, -1};

	for (int k = 0; k < 2; k++) {
		struct kvt_connect_opts co = {.size = sizeof(co),
					      .socket_path = socks[k],
					      .name = "hostcodec-bench",
					      .timeout_ms = 60000};

		snprintf(socks[k], sizeof(socks[k]), "%s/s%d", dir, k);
		pids[k] =
		    daemon_start(argv[1], socks[k], 2 * (uint64_t)n * bb + (64u << 20), chains[k]);
		if (pids[k] < 0 || kvt_connect(&co, &cl[k]) < 0 ||
		    (lays[k] = kvt_register_layout(cl[k], &l)) < 0)
			goto stop;
	}
	for (int rep = -1; rep < reps; rep++) {
		for (int k = 0; k < 2; k++) {
			struct res x;

			if (run(cl[k], lays[k], ring, n, bb, T, dst, out, (uint32_t)(rep + 2), &x) <
			    0) {
				fprintf(stderr, "%s: a put or get failed\n", chains[k]);
				goto stop;
			}
			if (rep >= 0)
				r[k][rep] = x;
		}
	}
	double v[2][5];
	for (int k = 0; k < 2; k++) {
		double a[100];
		for (int f = 0; f < 5; f++) {
			for (int i = 0; i < reps; i++)
				a[i] = f == 0	? r[k][i].put
				       : f == 1 ? r[k][i].get
				       : f == 2 ? r[k][i].mput
				       : f == 3 ? r[k][i].mget
						: (double)r[k][i].used;
			v[k][f] = kvt_bench_median(a, reps);
		}
		printf("%-24s put %6.2f GB/s (%.3f x memcpy %.2f)  get %6.2f GB/s (%.3f x memcpy "
		       "%.2f)  host bytes %.0f\n",
		       chains[k], v[k][0], v[k][0] / v[k][2], v[k][2], v[k][1], v[k][1] / v[k][3],
		       v[k][3], v[k][4]);
	}
	printf("blocks held at the same bytes of RAM: %.2f x raw\n", v[0][4] / v[1][4]);
	if (outp) {
		FILE *f = fopen(outp, "w");
		if (!f)
			goto stop;
		fprintf(f,
			"{\n  \"bench\": \"kvtier-hostcodec-bench\",\n  \"dump\": \"%s\",\n  "
			"\"geometry\": [%u, %u, %u, %u],\n  \"block_bytes\": %zu,\n  \"blocks\": "
			"%u,\n  "
			"\"reps\": %d,\n  \"results\": [",
			argv[2], d.n_layers, d.n_kv_heads, d.head_dim, T, bb, n, reps);
		for (int k = 0; k < 2; k++)
			fprintf(
			    f,
			    "%s\n    {\"host_codec\": \"%s\", \"put_gbps\": %.3f, \"get_gbps\": "
			    "%.3f, \"memcpy_put_gbps\": %.3f, \"memcpy_get_gbps\": %.3f, "
			    "\"put_vs_memcpy\": %.3f, \"get_vs_memcpy\": %.3f, \"host_bytes\": "
			    "%.0f}",
			    k ? "," : "", chains[k], v[k][0], v[k][1], v[k][2], v[k][3],
			    v[k][0] / v[k][2], v[k][1] / v[k][3], v[k][4]);
		fprintf(f, "\n  ],\n  \"blocks_per_byte_vs_raw\": %.3f\n}\n", v[0][4] / v[1][4]);
		fclose(f);
	}
	ret = 0;
stop:
	for (int k = 0; k < 2; k++) {
		kvt_close(cl[k]);
		if (pids[k] > 0) {
			kill(pids[k], SIGTERM);
			waitpid(pids[k], NULL, 0);
		}
		unlink(socks[k]);
	}
	rmdir(dir);
	for (uint32_t b = 0; b < db; b++)
		free(blk[b]);
	free(blk);
	free(ring);
	free(dst);
	free(out);
	kvd_free(&d);
	return ret;
}
