/* SPDX-License-Identifier: MIT */
/*
 * kvtier-llama-bench - time to first token in llama.cpp with a prefix restored from kvtier's
 * NVMe tier, against recomputing it and against llama.cpp's own way (the whole sequence's
 * state saved with llama_state_seq_save_file and loaded with llama_state_seq_load_file from
 * the same disk), side by side in one run.
 *
 *   kvtier-llama-bench --kvtierd PATH --kvtierctl PATH --dir DIR [--tokens 2048,8192]
 *                      [--reps 3] [--warmup 1] [--threads N] [--host-codec CHAIN]
 *                      [--restore-threads N] MODEL.gguf...
 *
 * Per model and prompt length N (random token ids):
 *   recompute  prefill of all N tokens (no cache), in batches of 512: the TTFT to beat;
 *              kvtier stores the prompt's blocks meanwhile (not timed);
 *   kvtier     host tier flushed to NVMe and emptied (kvtierctl flush, evict --all), then
 *              lookup + restore of the cached prefix (the whole blocks that leave a token to
 *              evaluate) + evaluation of the rest;
 *   llama.cpp  the same prefix's sequence state in a file in DIR (dropped from the page
 *              cache: kvtier's NVMe reads bypass it too), load_file + evaluation of the rest;
 *   partial    a prompt sharing only the first half: kvtier restores that half (llama.cpp's
 *              file is of one whole sequence: it serves no other prompt).
 * Restore rows are medians of --reps runs after --warmup runs that are not counted (the
 * first restore of a process and of a daemon touches memory for the first time: the
 * daemon's writable mapping of its arena, the client's batch buffers; printed apart, on
 * stderr); ratios are recompute TTFT / restore TTFT, and
 * (cache ready) llama.cpp's load_file time / kvtier's lookup + restore time.  Where kvtier's
 * restore went (kvt_llama_result: waiting for the blocks, copying them into llama.cpp's
 * state, llama_state_seq_set_data) and kvtierd's CPU time during it are printed on stderr.
 * DIR must be on the disk to measure (not tmpfs: the NVMe tier opens O_DIRECT).
 * --host-codec CHAIN: the daemon's host.codec (a bq chain): llama.cpp's blocks are stored as
 * its records (kvt_put_encodes), demoted to NVMe as they are and decoded on the restore, so
 * that the restore reads the chain's ratio fewer bytes (lossy: the tokens are compared in
 * bench/llama_greedy.py).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "bench_time.h"
#include "kvtier.h"
#include "kvtier_llama.h"

static const char *kvtierd, *kvtierctl, *dir;
static const char *host_codec = "raw"; /* --host-codec: the daemon's host.codec */
static uint32_t restore_threads;       /* --restore-threads: kvt_llama_opts' (0: default) */
static char sock[512];
static pid_t daemon_pid;

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* CPU time kvtierd has used so far, all its threads (ms), or 0. */
static double daemon_cpu_ms(void)
{
	char path[300];
	unsigned long long ns, total = 0;
	struct dirent *e;
	DIR *td;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)daemon_pid);
	if (daemon_pid <= 0 || !(td = opendir(path)))
		return 0;
	while ((e = readdir(td))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%.20s/schedstat", (int)daemon_pid,
			 e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		if (fscanf(f, "%llu", &ns) == 1)
			total += ns;
		fclose(f);
	}
	closedir(td);
	return (double)total / 1e6;
}

static void daemon_stop(void)
{
	if (daemon_pid > 0)
		kvt_test_daemon_stop(daemon_pid);
	daemon_pid = 0;
}

static int ctl(const char *args)
{
	char cmd[1200];
	snprintf(cmd, sizeof(cmd), "%s -s %s %s >/dev/null 2>&1", kvtierctl, sock, args);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* kvtierd with a 2 GiB host tier and a 4 GiB NVMe tier in dir, fresh each model. */
static int daemon_start(void)
{
	char nvme[600], hc[300];
	snprintf(sock, sizeof(sock), "%s/kvtier.sock", dir);
	snprintf(hc, sizeof(hc), "host.codec=%s", host_codec);
	snprintf(nvme, sizeof(nvme), "nvme.paths=%s/kvtier-bench.slots", dir);
	const char *argv[] = {kvtierd, "-f",
			      "-s",    sock,
			      "-o",    "host.capacity=2GiB",
			      "-o",    "daemon.log_level=warn",
			      "-o",    "nvme.enabled=true",
			      "-o",    nvme,
			      "-o",    "nvme.capacity=4GiB",
			      "-o",    hc,
			      NULL};

	unlink(sock);
	unlink(nvme + strlen("nvme.paths="));
	daemon_pid = kvt_test_daemon_start(argv, NULL, NULL); /* serving: kvtierd --ready-fd */
	if (daemon_pid <= 0) {
		fprintf(stderr, "kvtier-llama-bench: kvtierd did not start\n");
		daemon_pid = 0;
		return -1;
	}
	/* done reading its (empty) NVMe tier: puts are refused until then */
	while (ctl("ping | grep -q \"^ok\"") != 0) {
		if (waitpid(daemon_pid, NULL, WNOHANG) == daemon_pid) {
			fprintf(stderr, "kvtier-llama-bench: kvtierd exited\n");
			daemon_pid = 0;
			return -1;
		}
		usleep(10000);
	}
	return 0;
}

/* Blocks in the host tier (the first tier of `kvtierctl --json status`), or -1. */
static int host_blocks(void)
{
	char cmd[1200], buf[8192];
	snprintf(cmd, sizeof(cmd), "%s -s %s --json status", kvtierctl, sock);
	FILE *p = popen(cmd, "r");
	if (!p)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, p);
	pclose(p);
	buf[n] = 0;
	const char *h = strstr(buf, "\"name\":\"host\""), *b = h ? strstr(h, "\"blocks\":") : NULL;
	return b ? atoi(b + strlen("\"blocks\":")) : -1;
}

/* Everything down to NVMe, nothing left in the host tier. */
static int empty_host(void)
{
	int f = ctl("flush"), e = ctl("evict --all"), h = host_blocks();
	if (f != 0 || e != 0 || h != 0)
		fprintf(stderr, "kvtier-llama-bench: flush %d, evict %d, host blocks left %d\n", f,
			e, h);
	return f == 0 && e == 0 && h == 0 ? 0 : -1;
}

static void on_signal(int sig)
{
	if (daemon_pid > 0)
		kill(daemon_pid, SIGTERM);
	signal(sig, SIG_DFL);
	raise(sig);
}

/* Drops a file from the page cache, so that loading it reads the disk. */
static void drop_cache(const char *path)
{
	int fd = open(path, O_RDONLY);
	if (fd >= 0) {
		fdatasync(fd);
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		close(fd);
	}
}

static int bench_one(const char *path, struct llama_model *m, int n, int reps, int warmup,
		     int threads)
{
	const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(m));
	const uint32_t prefix =
	    (uint32_t)((n - 1) / KVT_LLAMA_BLOCK_TOKENS * KVT_LLAMA_BLOCK_TOKENS);
	struct llama_context_params cp = llama_context_default_params();
	struct kvt_llama_result r = {.size = sizeof(r)};
	struct kvt_llama *kl = NULL;
	llama_token *tok = malloc((size_t)n * sizeof(*tok) * 2), *half = tok + n;
	double t_kv[17], t_ll[17], t_part[17], r_kv[17], r_ll[17], t_re, state_mib = 0;
	double ph[5][17]; /* kvtier's restore: lookup, wait, copy, set_data, daemon CPU */
	double cold_kv = 0, cold_ll = 0;
	char err[300] = "", file[600] = "";
	int rc = -1;

	cp.n_ctx = (uint32_t)(n + 256);
	cp.n_batch = cp.n_ubatch = 512;
	cp.n_seq_max = 1;
	cp.n_threads = cp.n_threads_batch = threads;
	struct llama_context *ctx = llama_init_from_model(m, cp);
	if (!ctx || !tok)
		goto out;
	unsigned s = 12345u + (unsigned)n;
	for (int i = 0; i < n; i++) {
		s = s * 1103515245u + 12345u;
		tok[i] = (llama_token)((s >> 16) % (unsigned)n_vocab);
	}
	memcpy(half, tok, (size_t)n * sizeof(*tok));
	for (int i = n / 2; i < n; i++)
		half[i] = (half[i] + 1) % n_vocab;
	struct kvt_llama_opts o = {.size = sizeof(o),
				   .socket_path = sock,
				   .model_path = path,
				   .n_batch = 512,
				   .timeout_ms = 60000,
				   .err = err,
				   .err_len = sizeof(err),
				   .restore_threads = restore_threads};
	if (kvt_llama_open(ctx, &o, &kl) < 0) {
		fprintf(stderr, "kvtier-llama-bench: %s\n", err);
		goto out;
	}
	/* Recompute (and store, after the first token). */
	if (kvt_llama_prefill(kl, tok, (size_t)n, &r) < 0 || r.n_restored != 0) {
		fprintf(stderr, "kvtier-llama-bench: prefill failed (restored %u)\n", r.n_restored);
		goto out;
	}
	t_re = r.lookup_ms + r.eval_ms;
	/* llama.cpp's own way: the state of the same prefix in a file of dir. */
	snprintf(file, sizeof(file), "%s/llama-seq-%d.state", dir, n);
	llama_memory_seq_rm(llama_get_memory(ctx), 0, (llama_pos)prefix, -1);
	size_t fsz = llama_state_seq_save_file(ctx, file, 0, tok, prefix);
	if (!fsz) {
		fprintf(stderr, "kvtier-llama-bench: llama_state_seq_save_file failed\n");
		goto out;
	}
	state_mib = (double)fsz / (1 << 20);
	for (int i = -warmup; i < reps; i++) {
		/* warm-up runs land in the last slot, not counted */
		const int j = i < 0 ? 16 : i;
		/* kvtier, from NVMe */
		if (empty_host() < 0) {
			fprintf(stderr, "kvtier-llama-bench: cannot empty the host tier\n");
			goto out;
		}
		double dcpu = daemon_cpu_ms();
		if (kvt_llama_prefill(kl, tok, (size_t)n, &r) < 0 || r.n_restored != prefix) {
			fprintf(stderr, "kvtier-llama-bench: restored %u of %u (%s)\n",
				r.n_restored, prefix, kvt_llama_last_message(kl));
			goto out;
		}
		t_kv[j] = r.lookup_ms + r.restore_ms + r.eval_ms;
		r_kv[j] = r.lookup_ms + r.restore_ms;
		ph[0][j] = r.lookup_ms;
		ph[1][j] = r.restore_wait_ms;
		ph[2][j] = r.restore_copy_ms;
		ph[3][j] = r.restore_set_ms;
		ph[4][j] = daemon_cpu_ms() - dcpu;
		/* llama.cpp's file, from the disk */
		llama_token *back = malloc((size_t)n * sizeof(*back));
		size_t cnt = 0;
		llama_memory_seq_rm(llama_get_memory(ctx), 0, -1, -1);
		drop_cache(file);
		double t0 = now_ms();
		size_t got =
		    back ? llama_state_seq_load_file(ctx, file, 0, back, (size_t)n, &cnt) : 0;
		r_ll[j] = now_ms() - t0;
		int ev = got && cnt == prefix
			     ? kvt_llama_eval(ctx, 0, tok + prefix, (size_t)(n - (int)prefix),
					      (llama_pos)prefix, 512)
			     : -1;
		t_ll[j] = now_ms() - t0;
		free(back);
		if (ev < 0) {
			fprintf(stderr, "kvtier-llama-bench: llama_state_seq_load_file failed\n");
			goto out;
		}
		/* kvtier, a prompt sharing half of it */
		if (empty_host() < 0)
			goto out;
		if (kvt_llama_prefill(kl, half, (size_t)n, &r) < 0) {
			fprintf(stderr, "kvtier-llama-bench: partial prefill failed\n");
			goto out;
		}
		t_part[j] = r.lookup_ms + r.restore_ms + r.eval_ms;
		if (i == -warmup) {
			cold_kv = r_kv[j];
			cold_ll = r_ll[j];
		}
		/* the half prompt's own new blocks out again, so that each rep restores the same */
		struct kvt_connect_opts co = {.size = sizeof(co), .socket_path = sock};
		struct kvt_client *c;
		struct kvt_layout lay;
		if (kvt_connect(&co, &c) == 0) {
			int nb = n / KVT_LLAMA_BLOCK_TOKENS;
			struct kvt_key *keys = malloc((size_t)nb * sizeof(*keys));
			kvt_llama_layout(kl, &lay);
			int l = kvt_register_layout(c, &lay);
			if (keys && l >= 0) {
				kvt_key_chain(kvt_layout_fingerprint(&lay), KVT_LLAMA_BLOCK_TOKENS,
					      NULL, (const uint32_t *)(const void *)half,
					      (size_t)nb * KVT_LLAMA_BLOCK_TOKENS, keys,
					      (size_t)nb);
				for (int b = n / 2 / KVT_LLAMA_BLOCK_TOKENS; b < nb; b++)
					kvt_delete(c, l, &keys[b]);
			}
			free(keys);
			kvt_close(c);
		}
	}
	double kv = kvt_bench_median(t_kv, reps), ll = kvt_bench_median(t_ll, reps),
	       pa = kvt_bench_median(t_part, reps);
	double rkv = kvt_bench_median(r_kv, reps), rll = kvt_bench_median(r_ll, reps);
	double phm[5];
	for (int p = 0; p < 5; p++)
		phm[p] = kvt_bench_median(ph[p], reps);
	char name[64] = "";
	llama_model_meta_val_str(m, "general.name", name, sizeof(name));
	printf("| %s (%.0f M) | %d | %u | %.1f | **%.1f x** | %.1f x | **%.2f x** | %.1f x (%d of "
	       "%d) |\n",
	       name, (double)llama_model_n_params(m) / 1e6, n, prefix, state_mib, t_re / kv,
	       t_re / ll, rll / rkv, t_re / pa,
	       n / 2 / KVT_LLAMA_BLOCK_TOKENS * KVT_LLAMA_BLOCK_TOKENS, n);
	fprintf(
	    stderr,
	    "  [%s N=%d: recompute %.0f ms; TTFT kvtier %.1f ms, llama.cpp file %.1f ms; cache "
	    "ready kvtier %.1f ms, llama.cpp file %.1f ms; partial %.1f ms; medians of %d; first "
	    "(warm-up, not counted): cache ready kvtier %.1f ms, llama.cpp file %.1f ms]\n",
	    name, n, t_re, kv, ll, rkv, rll, pa, reps, cold_kv, cold_ll);
	fprintf(stderr,
		"  [%s N=%d: kvtier restore phases, medians: lookup %.1f ms, waiting for the "
		"blocks %.1f ms, copying them into the state %.1f ms, llama_state_seq_set_data "
		"%.1f ms; kvtierd's CPU time during the prefill %.1f ms]\n",
		name, n, phm[0], phm[1], phm[2], phm[3], phm[4]);
	fflush(stdout);
	rc = 0;
out:
	if (file[0])
		unlink(file);
	kvt_llama_close(kl);
	if (ctx)
		llama_free(ctx);
	free(tok);
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {{"kvtierd", required_argument, NULL, 'd'},
					   {"kvtierctl", required_argument, NULL, 'c'},
					   {"dir", required_argument, NULL, 'D'},
					   {"tokens", required_argument, NULL, 'n'},
					   {"reps", required_argument, NULL, 'r'},
					   {"threads", required_argument, NULL, 't'},
					   {"warmup", required_argument, NULL, 'w'},
					   {"host-codec", required_argument, NULL, 'H'},
					   {"restore-threads", required_argument, NULL, 'R'},
					   {0}};
	char tokens[256] = "2048,8192";
	int reps = 3, warmup = 1, threads = 2, opt, status = 0;

	while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (opt) {
		case 'd':
			kvtierd = optarg;
			break;
		case 'c':
			kvtierctl = optarg;
			break;
		case 'D':
			dir = optarg;
			break;
		case 'n':
			snprintf(tokens, sizeof(tokens), "%s", optarg);
			break;
		case 'r':
			reps = atoi(optarg);
			break;
		case 't':
			threads = atoi(optarg);
			break;
		case 'w':
			warmup = atoi(optarg);
			break;
		case 'H':
			host_codec = optarg;
			break;
		case 'R':
			restore_threads = (uint32_t)atoi(optarg);
			break;
		default:
			return 2;
		}
	}
	if (!kvtierd || !kvtierctl || !dir || optind >= argc || reps < 1 || reps > 16 ||
	    warmup < 0 || warmup > 4 || threads < 1) {
		fprintf(
		    stderr,
		    "usage: kvtier-llama-bench --kvtierd PATH --kvtierctl PATH --dir DIR "
		    "[--tokens 2048,8192] [--reps 3] [--warmup 1] [--threads N] MODEL.gguf...\n");
		return 2;
	}
	kvt_llama_log_errors_only(0);
	if (kvt_llama_backend_init() < 0)
		return 1;
	atexit(daemon_stop);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	char load[128] = "?";
	FILE *la = fopen("/proc/loadavg", "r");
	if (la) {
		if (!fgets(load, sizeof(load), la))
			snprintf(load, sizeof(load), "?\n");
		fclose(la);
	}
	printf("load average at start: %s", load);
	printf("| model | prompt tokens | prefix restored | state MiB | TTFT recompute / kvtier "
	       "(NVMe) | TTFT recompute / llama.cpp file | cache ready: llama.cpp load_file / "
	       "kvtier restore | partial prefix: TTFT recompute / kvtier |\n"
	       "|---|---|---|---|---|---|---|---|\n");
	for (int i = optind; i < argc; i++) {
		struct llama_model *m =
		    llama_model_load_from_file(argv[i], llama_model_default_params());
		if (!m) {
			fprintf(stderr, "kvtier-llama-bench: %s: cannot load\n", argv[i]);
			status = 1;
			continue;
		}
		char list[sizeof(tokens)];
		memcpy(list, tokens, sizeof(list));
		for (char *save = NULL, *t = strtok_r(list, ",", &save); t;
		     t = strtok_r(NULL, ",", &save)) {
			if (daemon_start() < 0 ||
			    bench_one(argv[i], m, atoi(t), reps, warmup, threads) < 0)
				status = 1;
			daemon_stop();
		}
		llama_model_free(m);
	}
	la = fopen("/proc/loadavg", "r");
	if (la) {
		if (fgets(load, sizeof(load), la))
			printf("load average at end: %s", load);
		fclose(la);
	}
	return status;
}
