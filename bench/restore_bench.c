/*
 * kvtier-restore-bench SOCKET KVTIERCTL [N] [LAYERS]
 *
 * Puts N blocks (default 100; 64 tokens x 4 KV heads x 32 dims x LAYERS layers, fp16 K and V:
 * 512 KiB at the default 16 layers), then twice: gets them all as host-tier hits
 * (kvt_get_batch), writes them back and empties the host tier (`KVTIERCTL writeback`,
 * `evict --all`) and gets them with one kvt_get_batch, then again with one kvt_get each.
 * One client throughout: a fresh process would pay for mapping the arena's pages, which is
 * not the daemon's cost.  Prints time, MB/s, this process's CPU time and page faults.
 */
#include "kvtier.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double cpu_s(const struct rusage *r)
{
	return (double)(r->ru_utime.tv_sec + r->ru_stime.tv_sec) +
	       (double)(r->ru_utime.tv_usec + r->ru_stime.tv_usec) * 1e-6;
}

int main(int argc, char **argv)
{
	struct kvt_connect_opts o = {.size = sizeof(o), .timeout_ms = -1};
	struct kvt_layout l = {.size = sizeof(l),
			       .n_kv_heads = 4,
			       .head_dim = 32,
			       .block_tokens = 64,
			       .dtype = KVT_DTYPE_FP16,
			       .world = 1,
			       .model_id = "restore-bench"};
	struct kvt_client *c;
	struct kvt_key *keys;
	void **bufs;
	int *st, n, lay;
	size_t bs;
	char cmd[1024];

	if (argc < 3) {
		fprintf(stderr, "usage: kvtier-restore-bench SOCKET KVTIERCTL [N] [LAYERS]\n");
		return 2;
	}
	o.socket_path = argv[1];
	n = argc > 3 ? atoi(argv[3]) : 100;
	l.n_layers = argc > 4 ? (uint32_t)atoi(argv[4]) : 16;
	if (n <= 0 || !l.n_layers || kvt_connect(&o, &c) < 0) {
		fprintf(stderr, "kvtier-restore-bench: bad arguments or no daemon at %s\n",
			argv[1]);
		return 1;
	}
	lay = kvt_register_layout(c, &l);
	bs = kvt_layout_block_bytes(&l);
	keys = calloc((size_t)n, sizeof(*keys));
	bufs = calloc((size_t)n, sizeof(*bufs));
	st = calloc((size_t)n, sizeof(*st));
	if (lay < 0 || !keys || !bufs || !st)
		return 1;
	for (int i = 0; i < n; i++) {
		keys[i] = (struct kvt_key){.lo = (uint64_t)i + 1, .hi = 0x7265737475ull};
		if (!(bufs[i] = malloc(bs)))
			return 1;
		memset(bufs[i], i, bs);
		if (kvt_put(c, lay, &keys[i], bufs[i], bs) < 0) {
			fprintf(stderr, "kvtier-restore-bench: put failed\n");
			return 1;
		}
	}
	snprintf(cmd, sizeof(cmd),
		 "'%s' --socket '%s' writeback >/dev/null && '%s' --socket '%s' evict --all "
		 ">/dev/null",
		 argv[2], argv[1], argv[2], argv[1]);
	for (int rep = 0; rep < 6; rep++) {
		const char *what = rep % 3 == 0	  ? "host, batch"
				   : rep % 3 == 1 ? "nvme, batch"
						  : "nvme, serial";
		struct rusage ra, rb;
		int hits = 0;
		double t;

		if (rep % 3 && system(cmd) != 0) {
			fprintf(stderr, "kvtier-restore-bench: %s failed\n", cmd);
			return 1;
		}
		getrusage(RUSAGE_SELF, &ra);
		t = now_s();
		if (rep % 3 != 2)
			hits = kvt_get_batch(c, lay, keys, bufs, bs, (size_t)n, st);
		else
			for (int i = 0; i < n; i++)
				hits += kvt_get(c, lay, &keys[i], bufs[i], bs) == (int)bs;
		t = now_s() - t;
		getrusage(RUSAGE_SELF, &rb);
		printf("%-12s %d/%d blocks of %zu KiB: %8.2f ms, %6.0f MB/s, client cpu %.1f ms, "
		       "faults %ld\n",
		       what, hits, n, bs >> 10, t * 1e3, (double)n * (double)bs / t / 1e6,
		       (cpu_s(&rb) - cpu_s(&ra)) * 1e3, rb.ru_minflt - ra.ru_minflt);
	}
	for (int i = 0; i < n; i++)
		free(bufs[i]);
	free(bufs);
	free(keys);
	free(st);
	kvt_close(c);
	return 0;
}
