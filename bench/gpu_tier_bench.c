/* SPDX-License-Identifier: MIT */
/*
 * kvtier-gpu-tier-bench: device put and get through a real kvtierd (libkvtier's device API),
 * against pinned cudaMemcpy measured in the same run (DESIGN §9: >= 0.9x for >= 1 MiB blocks,
 * >= 0.8x for 64 KiB pages batched).
 *
 * usage: kvtier-gpu-tier-bench KVTIERD OUT.json [--mib N] [--reps R]
 *
 * Workloads (N MiB per repetition, engine blocks at shuffled ids):
 *   blocks_1mib   one 1 MiB device buffer per kvtier block (n_layers = n_kv = 1)
 *   pages_64kib   vLLM pages of 64 KiB ([2, num_blocks, 32, 8, 128] fp16 per layer, 16
 *                 layers): 32 scattered pages per 2 MiB kvtier block
 * Paths: "host" (KVT_DEV_HOST_ONLY: GPU pages <-> the shared host arena, the DESIGN target)
 * and "gpu" (pages <-> the daemon's GPU pool, device to device).  A put is timed from the
 * call to its return (all blocks committed), a get likewise (all pages written, leases
 * returned).  Median of R repetitions after one warm-up.
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

#include "kvt_gpu.h"
#include "kvtier.h"

static char sock[300];

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_d);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static pid_t daemon_start(const char *kvtierd, uint64_t host, uint64_t gpu)
{
	char h[64], g[64];
	pid_t pid;

	snprintf(h, sizeof(h), "host.capacity=%llu", (unsigned long long)host);
	snprintf(g, sizeof(g), "gpu.capacity=%llu", (unsigned long long)gpu);
	unlink(sock);
	pid = fork();
	if (pid == 0) {
		execl(kvtierd, kvtierd, "-f", "-s", sock, "-o", h, "-o", g, "-o",
		      "daemon.log_level=warn", "-o", "gpu.promote_on_get=false", (char *)NULL);
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

struct work {
	const char *name;
	struct kvt_layout l;
	struct kvt_dev_pages p;
	uint64_t layer_base[16];
	uint8_t *dev;
	uint64_t block_bytes;
	uint32_t nblocks;
	uint32_t *ids;
};

static int work_init(struct work *w, const char *name, uint64_t total, bool pages)
{
	uint64_t s = 88172645463325252ull;

	memset(w, 0, sizeof(*w));
	w->name = name;
	if (pages) {
		/* 16 layers x 8 heads x 128 dims x 32 tokens fp16: 64 KiB pages, 2 MiB blocks */
		w->l = (struct kvt_layout){sizeof(w->l),   16, 8, 128, 32,
					   KVT_DTYPE_FP16, 0,  0, 1,   "bench-64k"};
		w->block_bytes = 2u << 20;
		w->nblocks = (uint32_t)(total / w->block_bytes);
		uint64_t page = 64u << 10, layer = 2ull * w->nblocks * page;
		if (kvt_gpu_dev_alloc(-1, 16 * layer, (void **)&w->dev) < 0)
			return -1;
		for (int i = 0; i < 16; i++)
			w->layer_base[i] = (uint64_t)(uintptr_t)w->dev + (uint64_t)i * layer;
		w->p = (struct kvt_dev_pages){
		    sizeof(w->p), 16, w->layer_base, page, page, w->nblocks * page, 2, 1};
	} else {
		/* 16 layers x 8 heads x 128 dims x 16 tokens fp16: 1 MiB blocks, one buffer each */
		w->l = (struct kvt_layout){sizeof(w->l),   16, 8, 128, 16,
					   KVT_DTYPE_FP16, 0,  0, 1,   "bench-1m"};
		w->block_bytes = 1u << 20;
		w->nblocks = (uint32_t)(total / w->block_bytes);
		if (kvt_gpu_dev_alloc(-1, total, (void **)&w->dev) < 0)
			return -1;
		w->layer_base[0] = (uint64_t)(uintptr_t)w->dev;
		w->p = (struct kvt_dev_pages){
		    sizeof(w->p), 1, w->layer_base, w->block_bytes, w->block_bytes, 0, 1, 1};
	}
	kvt_gpu_memset(w->dev, 0x5a, w->block_bytes * w->nblocks);
	w->ids = malloc(w->nblocks * sizeof(*w->ids));
	for (uint32_t i = 0; i < w->nblocks; i++)
		w->ids[i] = i;
	for (uint32_t i = w->nblocks - 1; i > 0; i--) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		uint32_t j = (uint32_t)(s % (i + 1)), t = w->ids[i];
		w->ids[i] = w->ids[j];
		w->ids[j] = t;
	}
	return 0;
}

/* One put + get of every block of w on path (flags); times in *tp, *tg. 0 or -1. */
static int rep(struct kvt_client *c, struct kvt_dev *dv, int lay, struct work *w, unsigned flags,
	       uint32_t tag, double *tp, double *tg)
{
	struct kvt_key *keys = malloc(w->nblocks * sizeof(*keys));
	int ret;
	double t0;

	for (uint32_t i = 0; i < w->nblocks; i++)
		keys[i] = (struct kvt_key){(uint64_t)tag << 32 | i, 0x1234 + tag};
	t0 = now_s();
	ret = kvt_dev_put(dv, lay, &w->p, keys, w->ids, w->nblocks, flags, NULL);
	*tp = now_s() - t0;
	if (ret != (int)w->nblocks) {
		fprintf(stderr, "%s put: %d (%s)\n", w->name, ret,
			ret < 0 ? kvt_strerror(ret) : "");
		free(keys);
		return -1;
	}
	t0 = now_s();
	ret = kvt_dev_get(dv, lay, &w->p, keys, w->ids, w->nblocks, flags, NULL);
	*tg = now_s() - t0;
	if (ret != (int)w->nblocks) {
		fprintf(stderr, "%s get: %d (%s)\n", w->name, ret,
			ret < 0 ? kvt_strerror(ret) : "");
		free(keys);
		return -1;
	}
	/* Not timed: room for the next repetition (the client's id of the same layout). */
	int hid = kvt_register_layout(c, &w->l);
	for (uint32_t i = 0; i < w->nblocks; i++)
		kvt_delete(c, hid, &keys[i]);
	free(keys);
	return 0;
}

int main(int argc, char **argv)
{
	uint64_t mib = 1024;
	int reps = 5;
	const char *kvtierd, *outp;
	char dir[64] = "/tmp/kvtier-gbench-XXXXXX";
	double h2d_ceil, d2h_ceil, t0;
	void *hbuf = NULL, *dbuf = NULL;
	struct kvt_client *c = NULL;
	struct kvt_dev *dv = NULL;
	struct work w[2];
	FILE *out;
	pid_t pid;
	int ret = 1;

	if (argc < 3) {
		fprintf(stderr,
			"usage: kvtier-gpu-tier-bench KVTIERD OUT.json [--mib N] [--reps R]\n");
		return 2;
	}
	kvtierd = argv[1];
	outp = argv[2];
	for (int i = 3; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--mib"))
			mib = strtoull(argv[i + 1], NULL, 0);
		else if (!strcmp(argv[i], "--reps"))
			reps = atoi(argv[i + 1]);
	}
	if (reps < 1 || reps > 100 || mib < 64)
		return 2;
	if (kvt_gpu_available() <= 0) {
		printf("no GPU: skipped\n");
		return 77;
	}
	uint64_t total = mib << 20;
	/* Ceilings: one pinned cudaMemcpy of the whole volume each way. */
	if (kvt_gpu_host_alloc(total, &hbuf) < 0 || kvt_gpu_dev_alloc(-1, total, &dbuf) < 0)
		return 1;
	memset(hbuf, 1, total);
	kvt_gpu_memcpy(dbuf, hbuf, total);
	kvt_gpu_memcpy(hbuf, dbuf, total);
	double *ch = calloc((size_t)reps, sizeof(double)),
	       *cd = calloc((size_t)reps, sizeof(double));
	for (int r = 0; r < reps; r++) {
		t0 = now_s();
		kvt_gpu_memcpy(dbuf, hbuf, total);
		ch[r] = (double)total / (now_s() - t0) / 1e9;
		t0 = now_s();
		kvt_gpu_memcpy(hbuf, dbuf, total);
		cd[r] = (double)total / (now_s() - t0) / 1e9;
	}
	h2d_ceil = median(ch, reps);
	d2h_ceil = median(cd, reps);
	kvt_gpu_host_free(hbuf);
	kvt_gpu_dev_free(dbuf);
	printf("ceilings: pinned cudaMemcpy H2D %.1f GB/s, D2H %.1f GB/s\n", h2d_ceil, d2h_ceil);

	if (!mkdtemp(dir))
		return 1;
	snprintf(sock, sizeof(sock), "%s/s", dir);
	pid = daemon_start(kvtierd, total + (total / 2), total + (total / 2));
	if (pid < 0)
		return 1;
	struct kvt_connect_opts co = {
	    .size = sizeof(co), .socket_path = sock, .name = "gpu-tier-bench", .timeout_ms = 60000};
	struct kvt_dev_opts dopts = {sizeof(dopts), 0, sock, 0};
	if (kvt_connect(&co, &c) < 0 || kvt_dev_open(c, &dopts, &dv) < 0)
		goto done;
	if (work_init(&w[0], "blocks_1mib", total, false) < 0 ||
	    work_init(&w[1], "pages_64kib", total, true) < 0)
		goto done;
	out = fopen(outp, "w");
	if (!out)
		goto done;
	fprintf(out,
		"{\n  \"bench\": \"kvtier-gpu-tier-bench\",\n  \"mib_per_rep\": %llu,\n  \"reps\": "
		"%d,\n  \"ceiling_h2d_gbs\": %.2f,\n  \"ceiling_d2h_gbs\": %.2f,\n  \"results\": [",
		(unsigned long long)mib, reps, h2d_ceil, d2h_ceil);
	ret = 0;
	for (int k = 0; k < 2; k++) {
		int lay = kvt_dev_layout(dv, &w[k].l);
		for (int path = 0; path < 2; path++) {
			unsigned flags = path == 0 ? KVT_DEV_HOST_ONLY : 0;
			double *tp = calloc((size_t)reps, sizeof(double));
			double *tg = calloc((size_t)reps, sizeof(double));
			double bytes = (double)w[k].nblocks * (double)w[k].block_bytes, p, g;

			for (int r = -1; r < reps; r++) {
				double a, b;
				if (rep(c, dv, lay, &w[k], flags,
					(uint32_t)(k * 1000 + path * 100 + r + 1), &a, &b) < 0) {
					ret = 1;
					break;
				}
				if (r >= 0) {
					tp[r] = bytes / a / 1e9;
					tg[r] = bytes / b / 1e9;
				}
			}
			p = median(tp, reps);
			g = median(tg, reps);
			printf(
			    "%-12s %-4s put %7.1f GB/s (%.3f x D2H)  get %7.1f GB/s (%.3f x H2D)\n",
			    w[k].name, path ? "gpu" : "host", p, p / d2h_ceil, g, g / h2d_ceil);
			fprintf(out,
				"%s\n    {\"workload\": \"%s\", \"path\": \"%s\", \"block_bytes\": "
				"%llu, \"blocks\": %u, \"put_gbs\": %.2f, \"put_ratio\": %.3f, "
				"\"get_gbs\": %.2f, \"get_ratio\": %.3f}",
				k || path ? "," : "", w[k].name, path ? "gpu_pool" : "host_arena",
				(unsigned long long)w[k].block_bytes, w[k].nblocks, p, p / d2h_ceil,
				g, g / h2d_ceil);
			free(tp);
			free(tg);
		}
	}
	fprintf(out, "\n  ]\n}\n");
	fclose(out);
done:
	kvt_dev_close(dv);
	kvt_close(c);
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	unlink(sock);
	rmdir(dir);
	return ret;
}
