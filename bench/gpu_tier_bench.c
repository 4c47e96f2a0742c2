/* SPDX-License-Identifier: MIT */
/*
 * kvtier-gpu-tier-bench: device put and get through a real kvtierd (libkvtier's device API),
 * against pinned cudaMemcpy measured in the same run (DESIGN §9: >= 0.9x for >= 1 MiB blocks,
 * >= 0.8x for 64 KiB pages batched).
 *
 * usage: kvtier-gpu-tier-bench KVTIERD OUT.json [--mib N] [--reps R] [--host-codec CHAIN]
 *                              [--llama32k [--kvd FILE] [--page-heads] [--ppb N]]
 *
 * --host-codec CHAIN  the daemon's host.codec (e.g. bq): the host path then moves records
 *                     over PCIe and codes them on the GPU (issue 15's restore target); the
 *                     GB/s are fp16 bytes delivered (block bytes / time), the ratios against
 *                     pinned cudaMemcpy of the same bytes in the same run
 * --llama32k          one workload instead: a 32K-token prefix of Llama-3-8B geometry (32
 *                     layers, 8 KV heads, head_dim 128, fp16: 4 GiB) in vLLM pages of 16
 *                     tokens, one page (2 MiB over all layers) per kvtier block
 * --kvd FILE          with --llama32k: the pages hold real K/V, the dump's slabs tiled (else
 *                     a byte pattern, which a codec would compress beyond any real ratio)
 * --page-heads        with --llama32k: the pages are token-major as vLLM's ([16][8][128])
 *                     and kvt_dev_pages.page_heads = 8 stores blocks in the layout's order
 *                     (the transposing path); without it the pages are filled head-major
 *                     and stored as they are
 * --ppb N             with --llama32k --page-heads: N vLLM pages (16 tokens each) per kvtier
 *                     block, i.e. blocks of 16 N tokens (2 N MiB), as an engine with 16-token
 *                     pages and kvtier blocks of 64 tokens (N = 4) runs; default 1. A block's
 *                     pages are N pages at shuffled ids, so its rows are N windows of the
 *                     dump, not one run of 16 N tokens
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
#include <math.h>
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
#include "kvt_gpu.h"
#include "bench_time.h"
#include "kvtier.h"

static char sock[300];

static pid_t daemon_start(const char *kvtierd, uint64_t host, uint64_t gpu, const char *codec)
{
	char h[64], g[64], hc[128];
	pid_t pid;

	snprintf(h, sizeof(h), "host.capacity=%llu", (unsigned long long)host);
	snprintf(g, sizeof(g), "gpu.capacity=%llu", (unsigned long long)gpu);
	snprintf(hc, sizeof(hc), "host.codec=%s", codec);
	unlink(sock);
	pid = fork();
	if (pid == 0) {
		execl(kvtierd, kvtierd, "-f", "-s", sock, "-o", h, "-o", g, "-o", hc, "-o",
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

static uint32_t page_heads; /* --page-heads: kvt_dev_pages.page_heads of --llama32k */
static uint32_t ppb = 1;    /* --ppb: vLLM pages per kvtier block of --llama32k */

struct work {
	const char *name;
	struct kvt_layout l;
	struct kvt_dev_pages p;
	uint64_t layer_base[32];
	uint8_t *dev;
	uint64_t block_bytes;
	uint32_t nblocks;
	uint32_t npages; /* engine blocks: nblocks * pages_per_block */
	uint32_t *ids;
};

/* Fills w's pages with the dump's K and V: page (layer l, K or V) of engine block b holds the
 * dump's [head][token][dim] slabs of layer l % its layers, heads and windows of tokens tiled. */
static int fill_kvd(struct work *w, const char *path, uint32_t layers, uint32_t page_tokens)
{
	uint32_t H = w->l.n_kv_heads, D = w->l.head_dim, T = page_tokens;
	uint64_t page = (uint64_t)H * T * D * 2;
	uint16_t *buf = malloc(page);
	struct kvd d;
	int ret = kvd_load(path, &d);

	if (ret < 0 || !buf || d.head_dim != D || d.n_tokens < T) {
		fprintf(stderr, "%s: not a dump of head_dim %u with %u tokens\n", path, D, T);
		free(buf);
		return -1;
	}
	for (uint32_t b = 0; b < w->npages && ret >= 0; b++)
		for (uint32_t l = 0; l < layers && ret >= 0; l++)
			for (uint32_t kv = 0; kv < 2 && ret >= 0; kv++) {
				uint32_t t0 = (b * T) % (d.n_tokens - T + 1);

				for (uint32_t h = 0; h < H; h++)
					for (uint32_t t = 0; t < T; t++)
						memcpy(buf + (page_heads ? (size_t)t * H + h
									 : (size_t)h * T + t) *
								 D,
						       kvd_at(&d, kv ? d.v : d.k, l % d.n_layers,
							      h % d.n_kv_heads, t0 + t),
						       D * 2);
				ret = kvt_gpu_memcpy((uint8_t *)(uintptr_t)(w->layer_base[l] +
									    kv * w->p.kv_stride +
									    b * w->p.block_stride),
						     buf, page);
			}
	free(buf);
	kvd_free(&d);
	return ret < 0 ? -1 : 0;
}

static int work_init(struct work *w, const char *name, uint64_t total, int pages)
{
	uint64_t s = 88172645463325252ull;

	memset(w, 0, sizeof(*w));
	w->name = name;
	if (pages == 2) {
		/* Llama-3-8B: 32 layers x 8 heads x 128 dims, vLLM pages of 16 tokens (32 KiB),
		 * ppb pages of every layer per kvtier block (2 MiB each) */
		w->l = (struct kvt_layout){sizeof(w->l),   32, 8, 128, 16 * ppb,
					   KVT_DTYPE_FP16, 0,  0, 1,   "llama-3-8b"};
		w->block_bytes = (2ull << 20) * ppb;
		w->nblocks = (uint32_t)(total / w->block_bytes);
		w->npages = w->nblocks * ppb;
		uint64_t page = 32u << 10, layer = 2ull * w->npages * page;
		if (kvt_gpu_dev_alloc(-1, 32 * layer, (void **)&w->dev) < 0)
			return -1;
		for (int i = 0; i < 32; i++)
			w->layer_base[i] = (uint64_t)(uintptr_t)w->dev + (uint64_t)i * layer;
		w->p = (struct kvt_dev_pages){sizeof(w->p),	32, w->layer_base, page,      page,
					      w->npages * page, 2,  ppb,	   page_heads};
	} else if (pages) {
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
		    sizeof(w->p), 16, w->layer_base, page, page, w->nblocks * page, 2, 1, 0};
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
		    sizeof(w->p), 1, w->layer_base, w->block_bytes, w->block_bytes, 0, 1, 1, 0};
	}
	if (!w->npages)
		w->npages = w->nblocks;
	kvt_gpu_memset(w->dev, 0x5a, w->block_bytes * w->nblocks);
	w->ids = malloc(w->npages * sizeof(*w->ids));
	for (uint32_t i = 0; i < w->npages; i++)
		w->ids[i] = i;
	for (uint32_t i = w->npages - 1; i > 0; i--) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		uint32_t j = (uint32_t)(s % (i + 1)), t = w->ids[i];
		w->ids[i] = w->ids[j];
		w->ids[j] = t;
	}
	return 0;
}

/* Where the device API's calls spent their time so far, s (kvt_dev_info): waiting for the
 * GPU, asking the daemon, queueing GPU work. */
struct split {
	double wait, daemon, queue;
};

static struct split dev_split(struct kvt_dev *dv)
{
	struct kvt_dev_info i = {.size = sizeof(i)};

	if (kvt_dev_info(dv, &i) < 0)
		return (struct split){0, 0, 0};
	return (struct split){i.wait_ns / 1e9, i.daemon_ns / 1e9, i.queue_ns / 1e9};
}

/* The shares of a call of t s between two splits. */
static struct split split_share(struct split a, struct split b, double t)
{
	return (struct split){(b.wait - a.wait) / t, (b.daemon - a.daemon) / t,
			      (b.queue - a.queue) / t};
}

/* One put + get of every block of w on path (flags); times in *tp, *tg, and the shares of
 * them spent waiting for the GPU, asking the daemon and queueing in *wp, *wg. 0 or -1. */
static int rep(struct kvt_client *c, struct kvt_dev *dv, int lay, struct work *w, unsigned flags,
	       uint32_t tag, double *tp, double *tg, struct split *wp, struct split *wg)
{
	struct kvt_key *keys = malloc(w->nblocks * sizeof(*keys));
	int ret;
	double t0;
	struct split s0;

	for (uint32_t i = 0; i < w->nblocks; i++)
		keys[i] = (struct kvt_key){(uint64_t)tag << 32 | i, 0x1234 + tag};
	s0 = dev_split(dv);
	t0 = kvt_bench_now_s();
	ret = kvt_dev_put(dv, lay, &w->p, keys, w->ids, w->nblocks, flags, NULL);
	*tp = kvt_bench_now_s() - t0;
	*wp = split_share(s0, dev_split(dv), *tp);
	if (ret != (int)w->nblocks) {
		fprintf(stderr, "%s put: %d (%s)\n", w->name, ret,
			ret < 0 ? kvt_strerror(ret) : "");
		free(keys);
		return -1;
	}
	s0 = dev_split(dv);
	t0 = kvt_bench_now_s();
	ret = kvt_dev_get(dv, lay, &w->p, keys, w->ids, w->nblocks, flags, NULL);
	*tg = kvt_bench_now_s() - t0;
	*wg = split_share(s0, dev_split(dv), *tg);
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
	int reps = 5, nwork = 2;
	bool llama = false;
	const char *kvtierd, *outp, *codec = "raw", *kvd = NULL;
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
	for (int i = 3; i < argc; i++) {
		if (!strcmp(argv[i], "--llama32k"))
			llama = true;
		else if (!strcmp(argv[i], "--page-heads"))
			page_heads = 8;
		else if (i + 1 >= argc)
			return 2;
		else if (!strcmp(argv[i], "--mib"))
			mib = strtoull(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--reps"))
			reps = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--host-codec"))
			codec = argv[++i];
		else if (!strcmp(argv[i], "--kvd"))
			kvd = argv[++i];
		else if (!strcmp(argv[i], "--ppb"))
			ppb = (uint32_t)atoi(argv[++i]);
		else
			return 2;
	}
	if ((page_heads || ppb != 1) && !llama)
		return 2;
	/* several head-major pages in a row are no block of the layout's order */
	if (ppb < 1 || ppb > 16 || 2048 % ppb || (ppb > 1 && !page_heads))
		return 2;
	if (llama) {
		mib = 4096; /* 32768 tokens x 32 layers x 2 x 8 heads x 128 x 2 bytes */
		nwork = 1;
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
		t0 = kvt_bench_now_s();
		kvt_gpu_memcpy(dbuf, hbuf, total);
		ch[r] = (double)total / (kvt_bench_now_s() - t0) / 1e9;
		t0 = kvt_bench_now_s();
		kvt_gpu_memcpy(hbuf, dbuf, total);
		cd[r] = (double)total / (kvt_bench_now_s() - t0) / 1e9;
	}
	h2d_ceil = kvt_bench_median(ch, reps);
	d2h_ceil = kvt_bench_median(cd, reps);
	kvt_gpu_host_free(hbuf);
	kvt_gpu_dev_free(dbuf);
	printf("ceilings: pinned cudaMemcpy H2D %.1f GB/s, D2H %.1f GB/s\n", h2d_ceil, d2h_ceil);

	if (!mkdtemp(dir))
		return 1;
	snprintf(sock, sizeof(sock), "%s/s", dir);
	pid = daemon_start(kvtierd, total + (total / 2), total + (total / 2), codec);
	if (pid < 0)
		return 1;
	struct kvt_connect_opts co = {
	    .size = sizeof(co), .socket_path = sock, .name = "gpu-tier-bench", .timeout_ms = 60000};
	struct kvt_dev_opts dopts = {sizeof(dopts), 0, sock, 0};
	if (kvt_connect(&co, &c) < 0 || kvt_dev_open(c, &dopts, &dv) < 0)
		goto done;
	if (llama ? work_init(&w[0], "llama3_8b_32k", total, 2) < 0
		  : (work_init(&w[0], "blocks_1mib", total, 0) < 0 ||
		     work_init(&w[1], "pages_64kib", total, 1) < 0))
		goto done;
	if (kvd && llama && fill_kvd(&w[0], kvd, 32, 16) < 0)
		goto done;
	out = fopen(outp, "w");
	if (!out)
		goto done;
	fprintf(out,
		"{\n  \"bench\": \"kvtier-gpu-tier-bench\",\n  \"mib_per_rep\": %llu,\n  \"reps\": "
		"%d,\n  \"host_codec\": \"%s\",\n  \"kvd\": \"%s\",\n  \"page_heads\": %u,\n  "
		"\"pages_per_block\": %u,\n  \"ceiling_h2d_gbs\": %.2f,\n  \"ceiling_d2h_gbs\": "
		"%.2f,\n  \"results\": [",
		(unsigned long long)mib, reps, codec, kvd ? kvd : "", page_heads, ppb, h2d_ceil,
		d2h_ceil);
	ret = 0;
	for (int k = 0; k < nwork; k++) {
		int lay = kvt_dev_layout(dv, &w[k].l);
		/* the compressed host tier is a host path: the pool path is raw whatever */
		for (int path = 0; path < (llama ? 1 : 2); path++) {
			unsigned flags = path == 0 ? KVT_DEV_HOST_ONLY : 0;
			double *tp = calloc((size_t)reps, sizeof(double));
			double *tg = calloc((size_t)reps, sizeof(double));
			struct split *wp = calloc((size_t)reps, sizeof(*wp));
			struct split *wg = calloc((size_t)reps, sizeof(*wg));
			double bytes = (double)w[k].nblocks * (double)w[k].block_bytes, p, g;
			struct split pw = {0, 0, 0}, gw = {0, 0, 0};

			for (int r = -1; r < reps; r++) {
				double a, b;
				struct split x, y;
				if (rep(c, dv, lay, &w[k], flags,
					(uint32_t)(k * 1000 + path * 100 + r + 1), &a, &b, &x,
					&y) < 0) {
					ret = 1;
					break;
				}
				if (r >= 0) {
					tp[r] = bytes / a / 1e9;
					tg[r] = bytes / b / 1e9;
					wp[r] = x;
					wg[r] = y;
				}
			}
			/* the shares of the repetitions nearest the medians (which sort tp, tg:
			 * copies first) */
			double *sp = calloc((size_t)reps, sizeof(double));
			double *sg = calloc((size_t)reps, sizeof(double));

			memcpy(sp, tp, (size_t)reps * sizeof(double));
			memcpy(sg, tg, (size_t)reps * sizeof(double));
			p = kvt_bench_median(tp, reps);
			g = kvt_bench_median(tg, reps);
			for (int r = 0, bp = 0, bg = 0; r < reps; r++) {
				if (fabs(sp[r] - p) <= fabs(sp[bp] - p))
					pw = wp[bp = r];
				if (fabs(sg[r] - g) <= fabs(sg[bg] - g))
					gw = wg[bg = r];
			}
			free(sp);
			free(sg);
			/* of each call: waiting for the GPU, asking the daemon (reservations,
			 * leases, commits, releases), queueing GPU work; the rest is bookkeeping */
			printf(
			    "%-12s %-4s put %7.1f GB/s (%.3f x D2H)  get %7.1f GB/s (%.3f x H2D)\n"
			    "  put: waiting %.0f %%, daemon %.0f %%, queueing %.0f %%; get: "
			    "waiting "
			    "%.0f %%, daemon %.0f %%, queueing %.0f %%\n",
			    w[k].name, path ? "gpu" : "host", p, p / d2h_ceil, g, g / h2d_ceil,
			    100 * pw.wait, 100 * pw.daemon, 100 * pw.queue, 100 * gw.wait,
			    100 * gw.daemon, 100 * gw.queue);
			fprintf(
			    out,
			    "%s\n    {\"workload\": \"%s\", \"path\": \"%s\", \"block_bytes\": "
			    "%llu, \"blocks\": %u, \"put_gbs\": %.2f, \"put_ratio\": %.3f, "
			    "\"get_gbs\": %.2f, \"get_ratio\": %.3f, \"put_waiting\": %.3f, "
			    "\"put_daemon\": %.3f, \"put_queueing\": %.3f, \"get_waiting\": %.3f, "
			    "\"get_daemon\": %.3f, \"get_queueing\": %.3f}",
			    k || path ? "," : "", w[k].name, path ? "gpu_pool" : "host_arena",
			    (unsigned long long)w[k].block_bytes, w[k].nblocks, p, p / d2h_ceil, g,
			    g / h2d_ceil, pw.wait, pw.daemon, pw.queue, gw.wait, gw.daemon,
			    gw.queue);
			free(tp);
			free(tg);
			free(wp);
			free(wg);
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
