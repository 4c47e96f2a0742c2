/* SPDX-License-Identifier: MIT */
/*
 * kvtier-bench - host-tier throughput and latency of kvtierd, side by side with memcpy and
 * Redis in the same run (DESIGN §9).
 *
 * For each block size, N workers (threads, or processes with --procs; each its own client)
 * own equal slices of a working set of random bytes.  Every pass runs, with a barrier
 * between phases so that workers never overlap different phases:
 *
 *   memcpy  src -> dst   the put's copy without kvtier: same bytes, same blocks, same order,
 *                        into a shared-memory buffer of the working set's size (like the arena)
 *   put     src -> kvtier
 *   memcpy  dst -> out   the get's copy without kvtier
 *   get     kvtier -> out
 *   delete  (untimed) so that the next pass stores again
 *
 * after untimed warm-up passes (they cycle puts through the whole host tier so that every
 * arena page is mapped, fault the memcpy buffers in, and check every byte that comes back;
 * the very first put pass is reported apart as put_cold_gbps).  Throughput is bytes / wall time of
 * the phase; latency percentiles are per call. Then one key is looked up many times (round-trip
 * latency), and one Redis client SETs and GETs the same blocks over loopback TCP (pipelining off,
 * like redis-benchmark's default).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <malloc.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "kvtier.h"

#ifdef KVT_HAVE_BENCH_REMOTE
int bench_remote_main(int argc, char **argv);
#endif
#ifdef KVT_HAVE_BENCH_NVME
int bench_nvme_main(int argc, char **argv);
#endif

#define MAX_SIZES   16
#define MAX_WORKERS 64
#define MAX_PASSES  100
#define SAMPLE_CAP  (1u << 17) /* latency samples kept per worker and phase (a ring) */
#define MAX_BATCH   1024

enum { PH_MC_PUT, PH_PUT, PH_MC_GET, PH_GET, NPH };

struct opts {
	const char *daemon, *socket, *redis_bin;
	size_t sizes[MAX_SIZES];
	int nsizes;
	int threads;
	bool procs, quick, json, no_redis, check;
	size_t ws;	  /* working set per block size, bytes */
	double seconds;	  /* time budget of the timed passes, per block size and worker count */
	int lookup_iters; /* lookups of one key */
	int repeat;	  /* runs per block size; each figure is the best of them */
	int batch;	  /* blocks per kvt_put_batch/kvt_get_batch call; 1: kvt_put/kvt_get */
};

/* Lives in MAP_SHARED memory so that forked workers report like threads do. */
struct shared {
	pthread_barrier_t bar;
	int abort;
	int passes;
	char err[256];
	double warm_s[MAX_WORKERS];
	double cold_t0[MAX_WORKERS], cold_t1[MAX_WORKERS];
	double t0[MAX_PASSES][NPH][MAX_WORKERS];
	double t1[MAX_PASSES][NPH][MAX_WORKERS];
	uint64_t nsamp[NPH][MAX_WORKERS];
	uint64_t nlookup;
};

struct run {
	const struct opts *o;
	struct shared *sh;
	float *samples; /* [NPH][worker][SAMPLE_CAP], shared */
	float *lookup;	/* [lookup_iters], shared */
	uint8_t *src, *dst, *out;
	size_t bs;	   /* block bytes */
	uint32_t nb;	   /* blocks per worker */
	int nw;		   /* workers */
	uint64_t nonce;	   /* keeps keys of this run apart from anything already stored */
	uint64_t capacity; /* of the host tier */
	const char *sock;
};

struct result {
	size_t bs;
	int workers;
	double gbps[NPH];
	double p50[NPH], p99[NPH];
	double lookup_p50, lookup_p99;
	double put_cold_gbps; /* first pass of a new client over arena it never touched */
	bool redis;
	double redis_set_gbps, redis_get_gbps, redis_set_p50, redis_set_p99, redis_get_p50,
	    redis_get_p99;
};

static pid_t daemon_pid = -1, redis_pid = -1;
static char tmpdir[PATH_MAX];

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void stop_children(void)
{
	if (redis_pid > 0) {
		kill(redis_pid, SIGTERM);
		waitpid(redis_pid, NULL, 0);
		redis_pid = -1;
	}
	if (daemon_pid > 0) {
		kill(daemon_pid, SIGTERM);
		waitpid(daemon_pid, NULL, 0);
		daemon_pid = -1;
	}
}

static void remove_tmpdir(void)
{
	char p[PATH_MAX + 32];
	static const char *const files[] = {"kvtierd.log", "redis.log", "kvtier.sock"};

	if (!tmpdir[0])
		return;
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", tmpdir, files[i]);
		unlink(p);
	}
	rmdir(tmpdir);
	tmpdir[0] = 0;
}

static void print_log(const char *name)
{
	char p[PATH_MAX + 32], line[512];
	FILE *f;

	snprintf(p, sizeof(p), "%s/%s", tmpdir, name);
	f = fopen(p, "r");
	if (!f)
		return;
	fprintf(stderr, "--- %s:\n", name);
	while (fgets(line, sizeof(line), f))
		fputs(line, stderr);
	fclose(f);
}

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("kvtier-bench: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	stop_children();
	if (tmpdir[0])
		print_log("kvtierd.log");
	remove_tmpdir();
	exit(1);
}

static void on_signal(int sig)
{
	/* Children first: a bench interrupted by ^C must not leave daemons behind. */
	if (redis_pid > 0)
		kill(redis_pid, SIGTERM);
	if (daemon_pid > 0)
		kill(daemon_pid, SIGTERM);
	signal(sig, SIG_DFL);
	raise(sig);
}

/* ---------------------------------------------------------------------------------------
 * Statistics
 */
static int cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;

	return (x > y) - (x < y);
}

/* p in [0, 1]: nearest-rank percentile of v[0..n) (sorts v). */
static double percentile(float *v, size_t n, double p)
{
	size_t i;

	if (!n)
		return NAN;
	qsort(v, n, sizeof(*v), cmp_float);
	i = (size_t)ceil(p * (double)n);
	if (i > 0)
		i--;
	if (i >= n)
		i = n - 1;
	return v[i];
}

/* ---------------------------------------------------------------------------------------
 * Workers
 */
static void worker_fail(struct run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void worker_fail(struct run *r, const char *fmt, ...)
{
	va_list ap;

	if (__atomic_exchange_n(&r->sh->abort, 1, __ATOMIC_ACQ_REL))
		return;
	va_start(ap, fmt);
	vsnprintf(r->sh->err, sizeof(r->sh->err), fmt, ap);
	va_end(ap);
}

static bool aborted(const struct run *r)
{
	return __atomic_load_n(&r->sh->abort, __ATOMIC_ACQUIRE);
}

static void barrier(struct run *r)
{
	pthread_barrier_wait(&r->sh->bar);
}

static float *samples_of(struct run *r, int ph, int w)
{
	return r->samples + ((size_t)ph * r->nw + w) * SAMPLE_CAP;
}

static void record(struct run *r, int ph, int w, double dt)
{
	uint64_t n = r->sh->nsamp[ph][w]++;

	samples_of(r, ph, w)[n % SAMPLE_CAP] = (float)(dt * 1e6);
}

/* Geometry whose block is exactly bs bytes: fp16, head_dim 128, one head, K and V. */
static int bench_layout(size_t bs, struct kvt_layout *l)
{
	size_t tl; /* token-layers */
	uint32_t layers = 1;

	if (bs % 512)
		return -EINVAL;
	tl = bs / 512;
	while (tl / layers > 256 && tl % (layers * 2) == 0 && layers < 64)
		layers *= 2;
	*l = (struct kvt_layout){
	    .size = sizeof(*l),
	    .n_layers = layers,
	    .n_kv_heads = 1,
	    .head_dim = 128,
	    .block_tokens = (uint32_t)(tl / layers),
	    .dtype = KVT_DTYPE_FP16,
	    .kv_order = KVT_ORDER_K_THEN_V,
	    .world = 1,
	};
	snprintf(l->model_id, sizeof(l->model_id), "kvtier-bench/%zu", bs);
	return kvt_layout_block_bytes(l) == bs ? 0 : -EINVAL;
}

static struct kvt_key bench_key(const struct run *r, int w, uint32_t i)
{
	/* Engine-provided keys (DESIGN §3): unique per run, worker and block. */
	return (struct kvt_key){.lo = ((uint64_t)w << 32) | i, .hi = r->nonce ^ r->bs};
}

static void delete_all(struct run *r, struct kvt_client *c, int lid, int w)
{
	for (uint32_t i = 0; i < r->nb && !aborted(r); i++) {
		struct kvt_key k = bench_key(r, w, i);
		int ret = kvt_delete(c, lid, &k);

		if (ret < 0)
			worker_fail(r, "worker %d: delete: %s", w, kvt_strerror(ret));
	}
}

#define PASS_WARM (-1)
#define PASS_COLD (-2)

/*
 * Blocks [i, i + n) of worker w in one kvt_put_batch or kvt_get_batch (--batch): the same
 * bytes, blocks and order as the per-block phases.
 */
static void batch_phase(struct run *r, struct kvt_client *c, int lid, int w, int ph, uint32_t i,
			uint32_t n)
{
	struct kvt_key k[MAX_BATCH];
	const void *src[MAX_BATCH];
	void *out[MAX_BATCH];
	int st[MAX_BATCH], ret;

	for (uint32_t j = 0; j < n; j++) {
		size_t off = ((size_t)w * r->nb + i + j) * r->bs;

		k[j] = bench_key(r, w, i + j);
		src[j] = r->src + off;
		out[j] = r->out + off;
	}
	if (ph == PH_PUT)
		ret = kvt_put_batch(c, lid, k, src, NULL, r->bs, n, st);
	else
		ret = kvt_get_batch(c, lid, k, out, r->bs, n, st);
	for (uint32_t j = 0; j < n && !aborted(r); j++) {
		if (ret < 0 || st[j] != (ph == PH_PUT ? 0 : (int)r->bs))
			worker_fail(r, "worker %d: batched %s of block %u: %s", w,
				    ph == PH_PUT ? "put" : "get", i + j,
				    kvt_strerror(ret < 0     ? ret
						 : st[j] < 0 ? st[j]
							     : -EEXIST));
	}
}

/* n blocks of bs bytes, one memcpy each (as kvtier copies them). */
static void memcpy_blocks(uint8_t *dst, const uint8_t *src, size_t bs, uint32_t n)
{
	for (uint32_t j = 0; j < n; j++)
		memcpy(dst + (size_t)j * bs, src + (size_t)j * bs, bs);
}

static void do_phase(struct run *r, struct kvt_client *c, int lid, int w, int ph, int pass)
{
	size_t off0 = (size_t)w * r->nb * r->bs;
	double t, t0, t1;
	int ret;

	barrier(r);
	t0 = now_s();
	if (r->o->batch > 1) {
		/* The memcpy phases too are timed a batch at a time: a clock read around each
		 * block would slow the yardstick and flatter kvtier. */
		for (uint32_t i = 0; i < r->nb && !aborted(r); i += (uint32_t)r->o->batch) {
			uint32_t n =
			    r->nb - i < (uint32_t)r->o->batch ? r->nb - i : (uint32_t)r->o->batch;
			size_t off = off0 + (size_t)i * r->bs;

			t = now_s();
			if (ph == PH_MC_PUT)
				memcpy_blocks(r->dst + off, r->src + off, r->bs, n);
			else if (ph == PH_MC_GET)
				memcpy_blocks(r->out + off, r->dst + off, r->bs, n);
			else
				batch_phase(r, c, lid, w, ph, i, n);
			record(r, ph, w, now_s() - t); /* latency of one batch */
		}
	}
	for (uint32_t i = 0; i < r->nb && !aborted(r) && r->o->batch == 1; i++) {
		size_t off = off0 + (size_t)i * r->bs;
		struct kvt_key k = bench_key(r, w, i);
		ssize_t n;

		t = now_s();
		switch (ph) {
		case PH_MC_PUT:
			memcpy(r->dst + off, r->src + off, r->bs);
			break;
		case PH_PUT:
			ret = kvt_put(c, lid, &k, r->src + off, r->bs);
			if (ret != 0)
				worker_fail(r, "worker %d: put of block %u: %s", w, i,
					    ret == 1 ? "already stored" : kvt_strerror(ret));
			break;
		case PH_MC_GET:
			memcpy(r->out + off, r->dst + off, r->bs);
			break;
		case PH_GET:
			n = kvt_get(c, lid, &k, r->out + off, r->bs);
			if (n != (ssize_t)r->bs)
				worker_fail(r, "worker %d: get of block %u: %s", w, i,
					    n < 0 ? kvt_strerror((int)n) : "short block");
			break;
		}
		record(r, ph, w, now_s() - t);
	}
	t1 = now_s();
	if (pass == PASS_COLD) {
		r->sh->cold_t0[w] = t0;
		r->sh->cold_t1[w] = t1;
	} else if (pass >= 0) {
		r->sh->t0[pass][ph][w] = t0;
		r->sh->t1[pass][ph][w] = t1;
	}
}

static void verify_out(struct run *r, int w, const char *when)
{
	size_t off0 = (size_t)w * r->nb * r->bs;

	for (uint32_t i = 0; i < r->nb && !aborted(r); i++) {
		size_t off = off0 + (size_t)i * r->bs;

		if (memcmp(r->out + off, r->src + off, r->bs))
			worker_fail(r, "worker %d: block %u read back wrong (%s)", w, i, when);
	}
}

static void worker(struct run *r, int w)
{
	struct kvt_connect_opts co = {
	    .size = sizeof(co), .socket_path = r->sock, .name = "kvtier-bench"};
	struct kvt_client *c = NULL;
	struct kvt_layout lay;
	int lid = -1, ret, passes;
	double t;

	ret = kvt_connect(&co, &c);
	if (ret < 0) {
		worker_fail(r, "worker %d: connect: %s", w, kvt_strerror(ret));
	} else {
		ret = bench_layout(r->bs, &lay);
		if (!ret)
			ret = lid = kvt_register_layout(c, &lay);
		if (ret < 0)
			worker_fail(r, "worker %d: layout for %zu-byte blocks: %s", w, r->bs,
				    kvt_strerror(ret));
	}

	/*
	 * The first puts of a new client map arena pages into it (and the daemon's allocator
	 * moves a cursor through the whole arena, so that lasts until the cursor wraps).  A
	 * long-running engine has paid that long ago: cycle puts through the whole host tier
	 * before timing, and report the first pass apart as the cold figure.
	 */
	do_phase(r, c, lid, w, PH_PUT, PASS_COLD);
	barrier(r);
	delete_all(r, c, lid, w);
	for (uint64_t done = (uint64_t)r->nb * r->bs * (uint64_t)r->nw; done < r->capacity + r->bs;
	     done += (uint64_t)r->nb * r->bs * (uint64_t)r->nw) {
		do_phase(r, c, lid, w, PH_PUT, PASS_WARM);
		barrier(r);
		delete_all(r, c, lid, w);
	}

	/* Warm-up pass: faults the memcpy buffers in too, and checks the data path. */
	t = now_s();
	do_phase(r, c, lid, w, PH_MC_PUT, PASS_WARM);
	do_phase(r, c, lid, w, PH_PUT, PASS_WARM);
	do_phase(r, c, lid, w, PH_MC_GET, PASS_WARM);
	memset(r->out + (size_t)w * r->nb * r->bs, 0, (size_t)r->nb * r->bs);
	do_phase(r, c, lid, w, PH_GET, PASS_WARM);
	r->sh->warm_s[w] = now_s() - t;
	verify_out(r, w, "warm-up");
	barrier(r);
	delete_all(r, c, lid, w);
	for (int ph = 0; ph < NPH; ph++)
		r->sh->nsamp[ph][w] = 0;
	barrier(r);
	if (w == 0) {
		double warm = 0;

		for (int i = 0; i < r->nw; i++)
			warm = r->sh->warm_s[i] > warm ? r->sh->warm_s[i] : warm;
		passes = (int)(r->o->seconds / (warm > 1e-4 ? warm : 1e-4));
		r->sh->passes = passes < 1 ? 1 : passes > MAX_PASSES ? MAX_PASSES : passes;
	}
	barrier(r);
	passes = r->sh->passes;

	for (int p = 0; p < passes; p++) {
		for (int ph = 0; ph < NPH; ph++)
			do_phase(r, c, lid, w, ph, p);
		barrier(r);
		if (p == passes - 1) {
			verify_out(r, w, "last pass");
			/* Round trip of one lookup while the other workers wait. */
			if (w == 0 && !aborted(r)) {
				struct kvt_key k = bench_key(r, 0, 0);
				int n = r->o->lookup_iters;

				for (int i = 0; i < n / 10 + 1; i++)
					kvt_lookup(c, lid, &k, 1);
				for (int i = 0; i < n && !aborted(r); i++) {
					t = now_s();
					ret = kvt_lookup(c, lid, &k, 1);
					r->lookup[i] = (float)((now_s() - t) * 1e6);
					if (ret != 1)
						worker_fail(r, "lookup of a stored key returned %d",
							    ret);
				}
				r->sh->nlookup = (uint64_t)n;
			}
			barrier(r);
		}
		delete_all(r, c, lid, w);
	}
	barrier(r);
	kvt_close(c);
}

struct thread_arg {
	struct run *r;
	int w;
};

static void *thread_main(void *p)
{
	struct thread_arg *a = p;

	worker(a->r, a->w);
	return NULL;
}

static void *shared_alloc(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die("mmap %zu bytes: %s", len, strerror(errno));
	return p;
}

/* Runs nw workers over block size bs and fills res (all but the Redis part). */
static void run_kvtier(const struct opts *o, const char *sock, uint64_t capacity, uint8_t *src,
		       uint8_t *dst, uint8_t *out, size_t bs, int nw, struct result *res)
{
	struct run r = {.o = o,
			.src = src,
			.dst = dst,
			.out = out,
			.bs = bs,
			.nw = nw,
			.sock = sock,
			.capacity = capacity};
	size_t slen = sizeof(float) * NPH * (size_t)nw * SAMPLE_CAP;
	size_t llen = sizeof(float) * (size_t)(o->lookup_iters + 1);
	pthread_barrierattr_t ba;
	struct timespec ts;
	float *all;
	size_t n;

	clock_gettime(CLOCK_REALTIME, &ts);
	r.nonce = ((uint64_t)getpid() << 40) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20);
	r.nb = (uint32_t)(o->ws / bs / (size_t)nw);
	if (!r.nb)
		r.nb = 1;
	r.sh = shared_alloc(sizeof(*r.sh));
	r.samples = shared_alloc(slen);
	r.lookup = shared_alloc(llen);
	pthread_barrierattr_init(&ba);
	pthread_barrierattr_setpshared(&ba, PTHREAD_PROCESS_SHARED);
	pthread_barrier_init(&r.sh->bar, &ba, (unsigned)nw);
	pthread_barrierattr_destroy(&ba);

	if (o->procs) {
		pid_t pids[MAX_WORKERS];

		fflush(NULL);
		for (int w = 0; w < nw; w++) {
			pids[w] = fork();
			if (pids[w] < 0)
				die("fork: %s", strerror(errno));
			if (pids[w] == 0) {
				worker(&r, w);
				_exit(0);
			}
		}
		for (int w = 0; w < nw; w++) {
			int st;

			waitpid(pids[w], &st, 0);
			if (!WIFEXITED(st) || WEXITSTATUS(st))
				die("worker process %d died (status 0x%x)", w, st);
		}
	} else {
		pthread_t th[MAX_WORKERS];
		struct thread_arg ta[MAX_WORKERS];

		for (int w = 0; w < nw; w++) {
			ta[w] = (struct thread_arg){&r, w};
			if (pthread_create(&th[w], NULL, thread_main, &ta[w]))
				die("pthread_create failed");
		}
		for (int w = 0; w < nw; w++)
			pthread_join(th[w], NULL);
	}
	if (r.sh->abort)
		die("%zu-byte blocks, %d workers: %s", bs, nw, r.sh->err);

	memset(res, 0, sizeof(*res));
	res->bs = bs;
	res->workers = nw;
	all = malloc(sizeof(float) * (size_t)nw * SAMPLE_CAP);
	if (!all)
		die("out of memory");
	for (int ph = 0; ph < NPH; ph++) {
		double wall = 0;

		for (int p = 0; p < r.sh->passes; p++) {
			double a = INFINITY, b = 0;

			for (int w = 0; w < nw; w++) {
				a = r.sh->t0[p][ph][w] < a ? r.sh->t0[p][ph][w] : a;
				b = r.sh->t1[p][ph][w] > b ? r.sh->t1[p][ph][w] : b;
			}
			wall += b - a;
		}
		res->gbps[ph] = (double)bs * r.nb * nw * r.sh->passes / wall / 1e9;
		n = 0;
		for (int w = 0; w < nw; w++) {
			uint64_t k = r.sh->nsamp[ph][w];

			k = k < SAMPLE_CAP ? k : SAMPLE_CAP;
			memcpy(all + n, samples_of(&r, ph, w), sizeof(float) * k);
			n += k;
		}
		res->p50[ph] = percentile(all, n, 0.50);
		res->p99[ph] = percentile(all, n, 0.99);
	}
	{
		double a = INFINITY, b = 0;

		for (int w = 0; w < nw; w++) {
			a = r.sh->cold_t0[w] < a ? r.sh->cold_t0[w] : a;
			b = r.sh->cold_t1[w] > b ? r.sh->cold_t1[w] : b;
		}
		res->put_cold_gbps = (double)bs * r.nb * nw / (b - a) / 1e9;
	}
	res->lookup_p50 = percentile(r.lookup, r.sh->nlookup, 0.50);
	res->lookup_p99 = percentile(r.lookup, r.sh->nlookup, 0.99);
	if (!o->json)
		fprintf(stderr, "  %zu B x %u blocks x %d workers, %d timed passes\n", bs, r.nb, nw,
			r.sh->passes);
	free(all);
	pthread_barrier_destroy(&r.sh->bar);
	munmap(r.sh, sizeof(*r.sh));
	munmap(r.samples, slen);
	munmap(r.lookup, llen);
}

/* ---------------------------------------------------------------------------------------
 * Redis, over loopback TCP
 */
static int free_tcp_port(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	if (fd < 0)
		return -1;
	if (!bind(fd, (struct sockaddr *)&a, sizeof(a)) &&
	    !getsockname(fd, (struct sockaddr *)&a, &len))
		port = ntohs(a.sin_port);
	close(fd);
	return port;
}

static redisContext *redis_connect(int port)
{
	struct timeval tv = {.tv_sec = 10};
	redisContext *rc = redisConnectWithTimeout("127.0.0.1", port, tv);

	if (rc && rc->err) {
		redisFree(rc);
		return NULL;
	}
	return rc;
}

/* Starts redis-server on a free loopback port; returns the port, or -1 (Redis skipped). */
static int redis_start(const char *bin)
{
	char port_s[16], log[PATH_MAX + 32];
	int port = free_tcp_port();

	if (port < 0)
		return -1;
	snprintf(port_s, sizeof(port_s), "%d", port);
	snprintf(log, sizeof(log), "%s/redis.log", tmpdir);
	redis_pid = fork();
	if (redis_pid < 0)
		return -1;
	if (redis_pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execlp(bin, bin, "--port", port_s, "--bind", "127.0.0.1", "--save", "",
		       "--appendonly", "no", "--dir", tmpdir, (char *)NULL);
		fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		redisContext *rc;
		int st;

		if (waitpid(redis_pid, &st, WNOHANG) == redis_pid) {
			redis_pid = -1;
			print_log("redis.log");
			return -1;
		}
		rc = redis_connect(port);
		if (rc) {
			redisReply *rep = redisCommand(rc, "PING");
			bool ok = rep && rep->type == REDIS_REPLY_STATUS;

			freeReplyObject(rep);
			redisFree(rc);
			if (ok)
				return port;
		}
		usleep(10000);
	}
	return -1;
}

static int redis_pass(redisContext *rc, const uint8_t *src, uint8_t *out, size_t bs, uint32_t nb,
		      uint64_t nonce, bool get, float *lat, double *wall)
{
	double t0 = now_s();

	for (uint32_t i = 0; i < nb; i++) {
		struct kvt_key k = {.lo = i, .hi = nonce ^ bs};
		double t = now_s();
		redisReply *rep;

		if (!get) {
			rep =
			    redisCommand(rc, "SET %b %b", &k, sizeof(k), src + (size_t)i * bs, bs);
			if (!rep || rep->type != REDIS_REPLY_STATUS) {
				freeReplyObject(rep);
				return -1;
			}
		} else {
			rep = redisCommand(rc, "GET %b", &k, sizeof(k));
			if (!rep || rep->type != REDIS_REPLY_STRING || rep->len != bs) {
				freeReplyObject(rep);
				return -1;
			}
			/* Like kvt_get: the block ends up in the caller's buffer. */
			memcpy(out + (size_t)i * bs, rep->str, bs);
		}
		freeReplyObject(rep);
		if (lat)
			lat[i] = (float)((now_s() - t) * 1e6);
	}
	*wall = now_s() - t0;
	return 0;
}

static void run_redis(int port, const uint8_t *src, uint8_t *out, size_t bs, size_t ws,
		      double budget_s, struct result *res)
{
	uint32_t nb = (uint32_t)(ws / bs);
	double wall, set_s = 0, get_s = 0;
	redisContext *rc;
	redisReply *rep;
	float *lat[2];
	int passes = 0;

	if (!nb)
		nb = 1;
	rc = redis_connect(port);
	lat[0] = malloc(sizeof(float) * nb * 3);
	lat[1] = malloc(sizeof(float) * nb * 3);
	if (!rc || !lat[0] || !lat[1])
		die("redis: cannot connect");
	/*
	 * A warm-up SET (Redis allocates), then SET passes back to back (overwrites: steady
	 * state), then as many GET passes, each checked against the source.
	 */
	if (redis_pass(rc, src, out, bs, nb, 0x5eed, false, NULL, &wall))
		die("redis SET failed: %s", rc->err ? rc->errstr : "bad reply");
	for (int p = 0; p < 3 && (p == 0 || set_s < budget_s / 2); p++) {
		if (redis_pass(rc, src, out, bs, nb, 0x5eed, false, lat[0] + (size_t)p * nb, &wall))
			die("redis SET failed: %s", rc->err ? rc->errstr : "bad reply");
		set_s += wall;
		passes++;
	}
	for (int p = 0; p < passes; p++) {
		memset(out, 0, (size_t)nb * bs);
		if (redis_pass(rc, src, out, bs, nb, 0x5eed, true, lat[1] + (size_t)p * nb, &wall))
			die("redis GET failed: %s", rc->err ? rc->errstr : "bad reply");
		get_s += wall;
		if (memcmp(out, src, (size_t)nb * bs))
			die("redis returned different bytes");
	}
	res->redis_set_gbps = (double)bs * nb * passes / set_s / 1e9;
	res->redis_get_gbps = (double)bs * nb * passes / get_s / 1e9;
	res->redis_set_p50 = percentile(lat[0], (size_t)nb * passes, 0.50);
	res->redis_set_p99 = percentile(lat[0], (size_t)nb * passes, 0.99);
	res->redis_get_p50 = percentile(lat[1], (size_t)nb * passes, 0.50);
	res->redis_get_p99 = percentile(lat[1], (size_t)nb * passes, 0.99);
	res->redis = true;
	rep = redisCommand(rc, "FLUSHALL");
	freeReplyObject(rep);
	redisFree(rc);
	free(lat[0]);
	free(lat[1]);
}

/* ---------------------------------------------------------------------------------------
 * The daemon
 */
static const char *find_daemon(const char *given)
{
	static char path[PATH_MAX];
	char self[PATH_MAX];
	ssize_t n;

	if (given)
		return given;
#ifdef KVT_DAEMON_PATH
	if (!access(KVT_DAEMON_PATH, X_OK))
		return KVT_DAEMON_PATH;
#endif
	/* Next to the build tree: build/bench/kvtier-bench -> build/daemon/kvtierd. */
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n > 0) {
		char *slash;

		self[n] = 0;
		slash = strrchr(self, '/');
		if (slash) {
			*slash = 0;
			snprintf(path, sizeof(path), "%.*s/../daemon/kvtierd", PATH_MAX - 32, self);
			if (!access(path, X_OK))
				return path;
			snprintf(path, sizeof(path), "%.*s/kvtierd", PATH_MAX - 32, self);
			if (!access(path, X_OK))
				return path;
		}
	}
	return "kvtierd"; /* from PATH */
}

static struct kvt_client *connect_retry(const char *sock, double timeout_s)
{
	struct kvt_connect_opts co = {
	    .size = sizeof(co), .socket_path = sock, .name = "kvtier-bench"};
	double end = now_s() + timeout_s;
	struct kvt_client *c;
	int ret;

	for (;;) {
		ret = kvt_connect(&co, &c);
		if (!ret)
			return c;
		if (now_s() > end || (daemon_pid > 0 && waitpid(daemon_pid, NULL, WNOHANG) != 0))
			die("cannot connect to kvtierd at %s: %s", sock, kvt_strerror(ret));
		usleep(20000);
	}
}

static void start_daemon(const char *bin, const char *sock, size_t capacity)
{
	char cap[64], log[PATH_MAX + 32];

	snprintf(cap, sizeof(cap), "host.capacity=%zuMiB", (capacity + (1u << 20) - 1) >> 20);
	snprintf(log, sizeof(log), "%s/kvtierd.log", tmpdir);
	daemon_pid = fork();
	if (daemon_pid < 0)
		die("fork: %s", strerror(errno));
	if (daemon_pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execlp(bin, bin, "-f", "-s", sock, "-o", cap, (char *)NULL);
		fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
}

/* ---------------------------------------------------------------------------------------
 * Output
 */
static void json_num(const char *name, double v, bool comma)
{
	if (isfinite(v))
		printf("\"%s\": %.3f%s", name, v, comma ? ", " : "");
	else
		printf("\"%s\": null%s", name, comma ? ", " : "");
}

static void print_json(const struct result *res, int n, const struct opts *o)
{
	printf("[\n");
	for (int i = 0; i < n; i++) {
		const struct result *r = &res[i];

		printf("  {\"block_bytes\": %zu, \"workers\": %d, \"mode\": \"%s\", "
		       "\"batch\": %d, ",
		       r->bs, r->workers, o->procs ? "procs" : "threads", o->batch);
		json_num("put_gbps", r->gbps[PH_PUT], true);
		json_num("get_gbps", r->gbps[PH_GET], true);
		json_num("memcpy_gbps", r->gbps[PH_MC_PUT], true);
		json_num("memcpy_get_gbps", r->gbps[PH_MC_GET], true);
		json_num("redis_set_gbps", r->redis ? r->redis_set_gbps : NAN, true);
		json_num("redis_get_gbps", r->redis ? r->redis_get_gbps : NAN, true);
		json_num("put_cold_gbps", r->put_cold_gbps, true);
		json_num("put_p50_us", r->p50[PH_PUT], true);
		json_num("put_p99_us", r->p99[PH_PUT], true);
		json_num("get_p50_us", r->p50[PH_GET], true);
		json_num("get_p99_us", r->p99[PH_GET], true);
		json_num("memcpy_p50_us", r->p50[PH_MC_PUT], true);
		json_num("memcpy_p99_us", r->p99[PH_MC_PUT], true);
		json_num("redis_set_p50_us", r->redis ? r->redis_set_p50 : NAN, true);
		json_num("redis_set_p99_us", r->redis ? r->redis_set_p99 : NAN, true);
		json_num("redis_get_p50_us", r->redis ? r->redis_get_p50 : NAN, true);
		json_num("redis_get_p99_us", r->redis ? r->redis_get_p99 : NAN, true);
		json_num("lookup_p50_us", r->lookup_p50, true);
		json_num("lookup_p99_us", r->lookup_p99, false);
		printf("}%s\n", i + 1 < n ? "," : "");
	}
	printf("]\n");
}

static void size_str(size_t b, char *s, size_t n)
{
	if (b >= (1 << 20) && b % (1 << 20) == 0)
		snprintf(s, n, "%zuM", b >> 20);
	else if (b >= 1024 && b % 1024 == 0)
		snprintf(s, n, "%zuK", b >> 10);
	else
		snprintf(s, n, "%zu", b);
}

static void print_text(const struct result *res, int n)
{
	printf("%-6s %3s %8s %8s %8s %8s %6s %6s %8s %8s %7s %7s %15s %15s %13s\n", "block", "thr",
	       "put", "get", "memcpy", "mc-get", "put/mc", "get/mc", "redisSET", "redisGET",
	       "put/SET", "get/GET", "put p50/p99", "get p50/p99", "lookup p50/99");
	printf("%-6s %3s %8s %8s %8s %8s %6s %6s %8s %8s %7s %7s %15s %15s %13s\n", "", "", "GB/s",
	       "GB/s", "GB/s", "GB/s", "", "", "GB/s", "GB/s", "", "", "us", "us", "us");
	for (int i = 0; i < n; i++) {
		const struct result *r = &res[i];
		char sz[24], p[2][32], l[32];

		size_str(r->bs, sz, sizeof(sz));
		snprintf(p[0], sizeof(p[0]), "%.1f/%.1f", r->p50[PH_PUT], r->p99[PH_PUT]);
		snprintf(p[1], sizeof(p[1]), "%.1f/%.1f", r->p50[PH_GET], r->p99[PH_GET]);
		snprintf(l, sizeof(l), "%.1f/%.1f", r->lookup_p50, r->lookup_p99);
		printf("%-6s %3d %8.2f %8.2f %8.2f %8.2f %6.2f %6.2f ", sz, r->workers,
		       r->gbps[PH_PUT], r->gbps[PH_GET], r->gbps[PH_MC_PUT], r->gbps[PH_MC_GET],
		       r->gbps[PH_PUT] / r->gbps[PH_MC_PUT], r->gbps[PH_GET] / r->gbps[PH_MC_GET]);
		if (r->redis)
			printf("%8.2f %8.2f %7.1f %7.1f ", r->redis_set_gbps, r->redis_get_gbps,
			       r->gbps[PH_PUT] / r->redis_set_gbps,
			       r->gbps[PH_GET] / r->redis_get_gbps);
		else
			printf("%8s %8s %7s %7s ", "-", "-", "-", "-");
		printf("%15s %15s %13s\n", p[0], p[1], l);
	}
}

/* DESIGN §9 at 256 KiB with one worker; returns how many targets were missed. */
static int check_targets(const struct result *res, int n)
{
	int missed = 0, seen = 0;

	for (int i = 0; i < n; i++) {
		const struct result *r = &res[i];
		struct {
			const char *what;
			double got, need;
		} t[] = {
		    {"put >= 0.8 x memcpy", r->gbps[PH_PUT], 0.8 * r->gbps[PH_MC_PUT]},
		    {"get >= 0.8 x memcpy", r->gbps[PH_GET], 0.8 * r->gbps[PH_MC_GET]},
		    {"put >= 5 x Redis SET", r->gbps[PH_PUT],
		     r->redis ? 5 * r->redis_set_gbps : INFINITY},
		    {"get >= 5 x Redis GET", r->gbps[PH_GET],
		     r->redis ? 5 * r->redis_get_gbps : INFINITY},
		    {"lookup p99 <= 20 us", -r->lookup_p99, -20.0},
		};

		if (r->bs != 256 * 1024 || r->workers != 1)
			continue;
		seen = 1;
		for (size_t j = 0; j < sizeof(t) / sizeof(t[0]); j++) {
			bool ok = t[j].got >= t[j].need;

			if (isinf(t[j].need))
				fprintf(stderr, "target %-22s MISSED (not measured)\n", t[j].what);
			else
				fprintf(stderr, "target %-22s %s (%.2f vs %.2f)\n", t[j].what,
					ok ? "met" : "MISSED", fabs(t[j].got), fabs(t[j].need));
			missed += !ok;
		}
	}
	if (!seen)
		fprintf(stderr, "--check: no 256 KiB single-worker run to check\n");
	return missed + !seen;
}

/* ---------------------------------------------------------------------------------------
 * main
 */
static double maxd(double a, double b)
{
	return isnan(a) ? b : isnan(b) ? a : a > b ? a : b;
}

static double mind(double a, double b)
{
	return isnan(a) ? b : isnan(b) ? a : a < b ? a : b;
}

/* Folds run one into best: each throughput its highest, each latency its lowest. */
static void best_of(struct result *best, const struct result *one, bool first)
{
	if (first) {
		*best = *one;
		return;
	}
	for (int ph = 0; ph < NPH; ph++) {
		best->gbps[ph] = maxd(best->gbps[ph], one->gbps[ph]);
		best->p50[ph] = mind(best->p50[ph], one->p50[ph]);
		best->p99[ph] = mind(best->p99[ph], one->p99[ph]);
	}
	best->put_cold_gbps = maxd(best->put_cold_gbps, one->put_cold_gbps);
	best->lookup_p50 = mind(best->lookup_p50, one->lookup_p50);
	best->lookup_p99 = mind(best->lookup_p99, one->lookup_p99);
	best->redis_set_gbps = maxd(best->redis_set_gbps, one->redis_set_gbps);
	best->redis_get_gbps = maxd(best->redis_get_gbps, one->redis_get_gbps);
	best->redis_set_p50 = mind(best->redis_set_p50, one->redis_set_p50);
	best->redis_set_p99 = mind(best->redis_set_p99, one->redis_set_p99);
	best->redis_get_p50 = mind(best->redis_get_p50, one->redis_get_p50);
	best->redis_get_p99 = mind(best->redis_get_p99, one->redis_get_p99);
}
static int parse_size(const char *s, size_t *out)
{
	char *end;
	double v = strtod(s, &end);
	size_t mul = 1;

	if (end == s || v <= 0)
		return -EINVAL;
	switch (*end) {
	case 'k':
	case 'K':
		mul = 1024;
		end++;
		break;
	case 'm':
	case 'M':
		mul = 1024 * 1024;
		end++;
		break;
	case 'g':
	case 'G':
		mul = 1024 * 1024 * 1024;
		end++;
		break;
	}
	if (!strcmp(end, "iB") || !strcmp(end, "B") || !strcmp(end, "ib"))
		end += strlen(end);
	if (*end)
		return -EINVAL;
	*out = (size_t)(v * (double)mul);
	return 0;
}

static void usage(FILE *f)
{
	fprintf(
	    f, "usage: kvtier-bench [options]\n"
	       "       kvtier-bench --nvme [nvme bench options]\n"
	       "  --daemon PATH     kvtierd to start (default: next to this build, then PATH)\n"
	       "  --socket PATH     use a running kvtierd instead of starting one\n"
	       "  --sizes LIST      block sizes, e.g. 16K,64K,256K,1M,4M (the default)\n"
	       "  --threads N       run with 1, 2, 4, ... N workers, each its own client\n"
	       "  --procs[=N]       workers are processes instead of threads (=N: up to N)\n"
	       "  --working-set SZ  bytes of blocks per size (default 256M; --quick: 32M)\n"
	       "  --seconds S       time of the timed passes per size (default 2; --quick 0.25)\n"
	       "  --lookups N       lookups of one key for the round-trip latency (default 20000)\n"
	       "  --redis-server P  redis-server binary (default: from PATH); --no-redis skips it\n"
	       "  --quick           CI-size run (about 10 s)\n"
	       "  --json            a JSON array, one object per block size and worker count\n"
	       "  --check           exit 3 unless the DESIGN targets at 256 KiB are met\n"
	       "  --batch N         puts and gets N blocks a call (kvt_put_batch, kvt_get_batch;\n"
	       "                    latencies, memcpy's too, are then per N blocks);\n"
	       "                    default 1: kvt_put, kvt_get\n"
	       "  --repeat N        N runs per size; every figure (kvtier, memcpy, Redis alike)\n"
	       "                    is the best of the N: highest GB/s, lowest latency\n"
	       "  --nvme ...        the NVMe tier benchmark (when built)\n"
	       "  --remote ...      the remote tier (Redis Cluster) against redis-benchmark\n");
}

int main(int argc, char **argv)
{
	enum {
		O_DAEMON = 256,
		O_SOCKET,
		O_SIZES,
		O_THREADS,
		O_PROCS,
		O_WS,
		O_SECONDS,
		O_LOOKUPS,
		O_REDIS,
		O_NOREDIS,
		O_QUICK,
		O_JSON,
		O_CHECK,
		O_REPEAT,
		O_BATCH,
		O_NVME
	};
	static const struct option lopts[] = {
	    {"daemon", required_argument, NULL, O_DAEMON},
	    {"socket", required_argument, NULL, O_SOCKET},
	    {"sizes", required_argument, NULL, O_SIZES},
	    {"threads", required_argument, NULL, O_THREADS},
	    {"procs", optional_argument, NULL, O_PROCS},
	    {"working-set", required_argument, NULL, O_WS},
	    {"seconds", required_argument, NULL, O_SECONDS},
	    {"lookups", required_argument, NULL, O_LOOKUPS},
	    {"redis-server", required_argument, NULL, O_REDIS},
	    {"no-redis", no_argument, NULL, O_NOREDIS},
	    {"quick", no_argument, NULL, O_QUICK},
	    {"json", no_argument, NULL, O_JSON},
	    {"check", no_argument, NULL, O_CHECK},
	    {"repeat", required_argument, NULL, O_REPEAT},
	    {"batch", required_argument, NULL, O_BATCH},
	    {"nvme", no_argument, NULL, O_NVME},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct opts o = {.threads = 1,
			 .redis_bin = "redis-server",
			 .lookup_iters = 20000,
			 .repeat = 1,
			 .batch = 1};
	double load[2][3] = {{0}};
	bool ws_set = false, sec_set = false, lookups_set = false;
	struct result res[MAX_SIZES * 8];
	int nres = 0, opt, port = -1, rc = 0;
	size_t max_bs = 0, need, slack;
	uint8_t *src, *dst, *out;
	struct kvt_client *c;
	struct kvt_stats st = {.size = sizeof(st)};
	char sock[PATH_MAX + 32];
	const char *daemon_bin = NULL;

	/* --nvme hands everything after it to the NVMe benchmark, whatever comes before;
	 * --remote likewise to the remote tier's. */
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--remote")) {
#ifdef KVT_HAVE_BENCH_REMOTE
			return bench_remote_main(argc - i, argv + i);
#else
			fprintf(stderr, "kvtier-bench: the remote benchmark is not built\n");
			return 2;
#endif
		}
		if (strcmp(argv[i], "--nvme"))
			continue;
#ifdef KVT_HAVE_BENCH_NVME
		return bench_nvme_main(argc - i, argv + i);
#else
		fprintf(stderr, "kvtier-bench: the NVMe benchmark is not built\n");
		return 2;
#endif
	}

	while ((opt = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
		switch (opt) {
		case O_DAEMON:
			o.daemon = optarg;
			break;
		case O_SOCKET:
			o.socket = optarg;
			break;
		case O_SIZES: {
			char *list = strdup(optarg), *save = NULL, *tok;

			o.nsizes = 0;
			for (tok = strtok_r(list, ",", &save); tok;
			     tok = strtok_r(NULL, ",", &save)) {
				if (o.nsizes == MAX_SIZES || parse_size(tok, &o.sizes[o.nsizes])) {
					fprintf(stderr, "kvtier-bench: bad size list '%s'\n",
						optarg);
					return 2;
				}
				o.nsizes++;
			}
			free(list);
			break;
		}
		case O_THREADS:
			o.threads = atoi(optarg);
			break;
		case O_PROCS:
			o.procs = true;
			if (optarg)
				o.threads = atoi(optarg);
			break;
		case O_WS:
			if (parse_size(optarg, &o.ws)) {
				fprintf(stderr, "kvtier-bench: bad working set '%s'\n", optarg);
				return 2;
			}
			ws_set = true;
			break;
		case O_SECONDS:
			o.seconds = atof(optarg);
			sec_set = true;
			break;
		case O_LOOKUPS:
			o.lookup_iters = atoi(optarg);
			lookups_set = true;
			break;
		case O_REDIS:
			o.redis_bin = optarg;
			break;
		case O_NOREDIS:
			o.no_redis = true;
			break;
		case O_QUICK:
			o.quick = true;
			break;
		case O_JSON:
			o.json = true;
			break;
		case O_REPEAT:
			o.repeat = atoi(optarg);
			break;
		case O_BATCH:
			o.batch = atoi(optarg);
			if (o.batch < 1 || o.batch > MAX_BATCH) {
				fprintf(stderr, "kvtier-bench: --batch is 1..%d\n", MAX_BATCH);
				return 2;
			}
			break;
		case O_CHECK:
			o.check = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc || o.threads < 1 || o.threads > MAX_WORKERS || o.lookup_iters < 1 ||
	    o.repeat < 1) {
		usage(stderr);
		return 2;
	}
	if (!o.nsizes) {
		static const size_t def[] = {16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20};

		memcpy(o.sizes, def, sizeof(def));
		o.nsizes = 5;
	}
	if (!ws_set)
		o.ws = o.quick ? 32u << 20 : 256u << 20;
	if (!sec_set)
		o.seconds = o.quick ? 0.25 : 2.0;
	if (!lookups_set && o.quick)
		o.lookup_iters = 5000;
	for (int i = 0; i < o.nsizes; i++) {
		struct kvt_layout l;

		if (bench_layout(o.sizes[i], &l)) {
			fprintf(stderr, "kvtier-bench: block size %zu is not a multiple of 512\n",
				o.sizes[i]);
			return 2;
		}
		max_bs = o.sizes[i] > max_bs ? o.sizes[i] : max_bs;
	}
	if (o.ws < max_bs * (size_t)o.threads)
		o.ws = max_bs * (size_t)o.threads;

	/*
	 * hiredis builds each command in a fresh malloc'd buffer and each reply in another;
	 * above glibc's mmap threshold (128 KiB) every one is an mmap, page faults and munmap.
	 * That client-side cost made Redis SET of 256 KiB 4-5x slower here (p50 450 vs 105 us)
	 * than Redis itself is: keep such buffers on the heap, so that Redis is what we measure.
	 */
	mallopt(M_MMAP_THRESHOLD, 32 << 20);
	mallopt(M_TRIM_THRESHOLD, 1 << 30);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	snprintf(tmpdir, sizeof(tmpdir), "%s/kvtier-bench.XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(tmpdir)) {
		tmpdir[0] = 0;
		die("mkdtemp: %s", strerror(errno));
	}

	/*
	 * The working set must stay under the low watermark (0.85 by default) so that nothing
	 * of it is evicted, plus slack for allocator rounding; no more, as warming up cycles
	 * through the whole host tier.
	 */
	slack = 2 * max_bs * (size_t)o.threads + (4u << 20);
	need = o.ws + o.ws / 4 + slack;
	if (o.socket) {
		snprintf(sock, sizeof(sock), "%s", o.socket);
	} else {
		daemon_bin = find_daemon(o.daemon);
		snprintf(sock, sizeof(sock), "%s/kvtier.sock", tmpdir);
		start_daemon(daemon_bin, sock, need);
	}
	c = connect_retry(sock, 10.0);
	if (kvt_stats(c, &st) < 0)
		die("kvt_stats failed");
	kvt_close(c); /* no client may be open across the workers' fork() */
	if (st.host_capacity_bytes && st.host_capacity_bytes < need) {
		size_t ws = (size_t)st.host_capacity_bytes * 4 / 5;

		ws = ws > slack + max_bs * (size_t)o.threads ? ws - slack
							     : max_bs * (size_t)o.threads;

		fprintf(stderr, "kvtier-bench: host tier of %llu MiB; working set cut to %zu MiB\n",
			(unsigned long long)(st.host_capacity_bytes >> 20), ws >> 20);
		o.ws = ws;
	}

	src = shared_alloc(o.ws);
	dst = shared_alloc(o.ws);
	out = shared_alloc(o.ws);
	/* Random bytes: a codec gets no help, and no block equals another. */
	{
		uint64_t x = 0x9e3779b97f4a7c15ull;

		for (size_t i = 0; i + 8 <= o.ws; i += 8) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			memcpy(src + i, &x, 8);
		}
	}
	if (!o.no_redis) {
		port = redis_start(o.redis_bin);
		if (port < 0)
			fprintf(stderr,
				"kvtier-bench: redis-server did not start; no Redis figures\n");
	}
	if (!o.json)
		fprintf(stderr,
			"kvtier-bench: %s, working set %zu MiB per size, %s 1..%d, random bytes, "
			"%d block(s) a put/get call\n",
			o.socket ? o.socket : daemon_bin, o.ws >> 20,
			o.procs ? "processes" : "threads", o.threads, o.batch);

	getloadavg(load[0], 3);
	/*
	 * Repeats alternate Redis and kvtier runs so that both meet the same moments of a busy
	 * machine; each figure is then the best of its repeats.
	 */
	for (int i = 0; i < o.nsizes; i++) {
		struct result rr = {0};
		int first = nres;

		for (int k = 0; k < o.repeat; k++) {
			struct result one = {0};
			int nw, j = first;

			if (port > 0)
				run_redis(port, src, out, o.sizes[i], o.ws, o.seconds / 2, &one);
			best_of(&rr, &one, k == 0);
			for (nw = 1;; nw = nw * 2 > o.threads ? o.threads : nw * 2, j++) {
				run_kvtier(&o, sock, st.host_capacity_bytes, src, dst, out,
					   o.sizes[i], nw, &one);
				best_of(&res[j], &one, k == 0);
				if (nw == o.threads)
					break;
			}
			nres = j + 1;
		}
		for (int j = first; j < nres; j++) {
			struct result *r = &res[j];

			r->redis = rr.redis;
			r->redis_set_gbps = rr.redis_set_gbps;
			r->redis_get_gbps = rr.redis_get_gbps;
			r->redis_set_p50 = rr.redis_set_p50;
			r->redis_set_p99 = rr.redis_set_p99;
			r->redis_get_p50 = rr.redis_get_p50;
			r->redis_get_p99 = rr.redis_get_p99;
		}
	}
	if (daemon_pid > 0 && waitpid(daemon_pid, NULL, WNOHANG) != 0) {
		daemon_pid = -1;
		die("kvtierd exited during the benchmark");
	}
	stop_children();
	getloadavg(load[1], 3);
	/* Client and daemon need a core each: other load on a small machine shows in the
	 * figures, so say how busy it was. */
	fprintf(stderr, "kvtier-bench: load average %.2f before, %.2f after (%ld CPUs)\n",
		load[0][0], load[1][0], sysconf(_SC_NPROCESSORS_ONLN));

	if (o.json)
		print_json(res, nres, &o);
	else
		print_text(res, nres);
	if (o.check && check_targets(res, nres))
		rc = 3;
	remove_tmpdir();
	munmap(src, o.ws);
	munmap(dst, o.ws);
	munmap(out, o.ws);
	return rc;
}
