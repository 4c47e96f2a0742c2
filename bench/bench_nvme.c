/* SPDX-License-Identifier: MIT */
/*
 * bench_nvme.c - `kvtier-bench --nvme`: NVMe tier throughput against fio on the same file.
 *
 * For each block size and queue depth it writes, then reads back, a slot file through the
 * tier (records of exactly block_bytes, sequential slots, at most iodepth requests in flight,
 * every read CRC-verified as in production), then runs fio with the io_uring engine,
 * direct=1, on the same file, offsets, block size and depth.  The pread/pwrite fallback is
 * measured at depth 1 against fio's psync engine.  Both sides are timed in the same run, so
 * the ratios hold on whatever disk backs --dir.  GB/s are 10^9 bytes per second.
 */
#define _GNU_SOURCE
#include "tier.h"
#include "kvt_record.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <poll.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

int bench_nvme_main(int argc, char **argv);

#define FB_DEPTHS 2
static bool fio_tuned;	   /* --fio-tuned: give fio the tier's submission tricks */
static bool verify_inline; /* --verify-inline: CRC of reads on the completing thread */
static const unsigned fb_depth[FB_DEPTHS] = {1, 4};

struct bopts {
	const char *dir;
	uint64_t size;
	unsigned bs[16], nbs;
	unsigned qd[16], nqd;
	bool json, quick, no_fio;
	unsigned reps;
};

struct bctx;
struct bslot {
	struct kvt_tier_io io;
	struct bctx *c;
};

struct bctx {
	const struct kvt_tier_ops *o;
	struct kvt_tier *t;
	struct kvt_tier_loc *locs;
	void **bufs; /* one sealed record per slot: every key distinct, as in production */
	uint64_t n, next, done;
	bool wr;
	int err;
};

struct bres {
	double w, r, fw, fr; /* GB/s; fio < 0 = not measured */
	double wx, rx;	     /* after reduce(): median of the per-run tier/fio ratios */
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void issue(struct bctx *c, struct bslot *s)
{
	int r;

	s->io.buf = c->bufs[c->next];
	s->io.loc = c->locs[c->next++];
	s->io.flags = KVT_TIER_IO_MORE;
	r = c->wr ? c->o->write(c->t, &s->io) : c->o->read(c->t, &s->io);
	if (r < 0) {
		c->err = r;
		c->done++;
	}
}

static void on_done(struct kvt_tier_io *io)
{
	struct bslot *s = (struct bslot *)io;
	struct bctx *c = s->c;

	c->done++;
	if (io->res < 0 && !c->err)
		c->err = io->res;
	if (c->next < c->n && !c->err)
		issue(c, s);
}

/* Moves all slots once, at most qd in flight; returns GB/s or -errno. */
static double run_pass(struct bctx *c, struct bslot *slots, unsigned qd, uint32_t bs, bool wr)
{
	int efd = c->o->event_fd(c->t);
	double t0, t1;

	c->wr = wr;
	c->next = c->done = 0;
	c->err = 0;
	t0 = now_s();
	for (unsigned i = 0; i < qd && c->next < c->n; i++)
		issue(c, &slots[i]);
	c->o->submit(c->t);
	while (c->done < c->n && !(c->err && c->done >= c->next)) {
		struct pollfd p = {.fd = efd, .events = POLLIN};

		poll(&p, 1, 1000);
		c->o->complete(c->t);
		c->o->submit(c->t);
	}
	/* Let stragglers of a failed pass finish before their buffers go away. */
	while (c->done < c->next) {
		struct pollfd p = {.fd = efd, .events = POLLIN};

		poll(&p, 1, 100);
		c->o->complete(c->t);
	}
	t1 = now_s();
	if (c->err)
		return c->err;
	return (double)c->n * bs / (t1 - t0) / 1e9;
}

static void quiet_log(void *arg, int level, const char *msg)
{
	if (level <= 4) /* LOG_WARNING and worse */
		fprintf(stderr, "kvtier nvme: %s\n", msg);
}

/* One slot file measured at several depths: opened, filled once (untimed), then rewritten
 * and read back per measurement. */
struct session {
	const struct kvt_tier_ops *o;
	struct bctx c;
	struct bslot *slots;
	unsigned maxqd;
	uint32_t bs;
	unsigned io_flags;
};

static void session_close(struct session *s)
{
	if (s->c.bufs)
		for (uint64_t i = 0; i < s->c.n; i++)
			s->o->buf_free(s->c.t, s->c.bufs[i]);
	free(s->c.bufs);
	free(s->slots);
	free(s->c.locs);
	s->o->close(s->c.t);
	memset(s, 0, sizeof(*s));
}

/* Frees every slot, waits for the invalidations, allocates them again (same layout: the
 * allocator is empty, so it starts over at the front). */
static int session_recycle(struct session *s)
{
	const struct kvt_tier_ops *o = s->o;
	struct kvt_tier_stats st;
	int r;

	for (uint64_t i = 0; i < s->c.n; i++)
		o->free(s->c.t, &s->c.locs[i]);
	for (int spins = 0; spins < 10000; spins++) {
		struct pollfd p = {.fd = o->event_fd(s->c.t), .events = POLLIN};

		o->stats(s->c.t, &st);
		if (!st.used_bytes)
			break;
		poll(&p, 1, 10);
		o->complete(s->c.t);
	}
	for (uint64_t i = 0; i < s->c.n; i++) {
		r = o->alloc(s->c.t, s->bs, &s->c.locs[i]);
		if (r < 0)
			return r;
	}
	return 0;
}

static int session_open(struct session *s, const char *path, uint64_t size, uint32_t bs,
			unsigned maxqd, unsigned flags)
{
	const char *paths[] = {path, NULL};
	struct kvt_tier_conf conf = {
	    .name = "nvme",
	    .capacity_bytes = size + 4096,
	    .paths = paths,
	    .queue_depth = maxqd,
	    .flags = flags | (verify_inline ? KVT_TIER_F_VERIFY_INLINE : 0),
	    .buf_bytes = size,
	    .log = quiet_log,
	};
	struct kvt_tier_stats st;
	double w;
	int r;

	memset(s, 0, sizeof(*s));
	s->o = &kvt_tier_nvme_ops;
	s->c.o = s->o;
	s->maxqd = maxqd;
	s->bs = bs;
	unlink(path);
	r = s->o->open(&conf, &s->c.t);
	if (r < 0)
		return r;
	s->c.n = size / bs;
	s->c.locs = calloc(s->c.n, sizeof(*s->c.locs));
	s->slots = calloc(maxqd, sizeof(*s->slots));
	if (!s->c.locs || !s->slots) {
		r = -ENOMEM;
		goto fail;
	}
	for (uint64_t i = 0; i < s->c.n; i++) {
		r = s->o->alloc(s->c.t, bs, &s->c.locs[i]);
		if (r < 0)
			goto fail;
	}
	s->c.bufs = calloc(s->c.n, sizeof(void *));
	if (!s->c.bufs) {
		r = -ENOMEM;
		goto fail;
	}
	for (uint64_t i = 0; i < s->c.n; i++) {
		struct kvt_record_hdr *h = s->o->buf_alloc(s->c.t, bs);
		unsigned char *p = (unsigned char *)(h + 1);

		if (!h) {
			r = -ENOMEM;
			goto fail;
		}
		s->c.bufs[i] = h;
		memset(h, 0, sizeof(*h));
		h->magic = KVT_RECORD_MAGIC;
		h->version = KVT_RECORD_VERSION;
		h->hdr_size = KVT_RECORD_HDR_SIZE;
		h->key_lo = i + 1;
		h->key_hi = bs;
		h->seq = 1;
		h->payload_len = h->raw_len = bs - KVT_RECORD_HDR_SIZE;
		for (uint32_t k = 0; k < h->payload_len; k += 8) {
			uint64_t v = (i * 0x9e3779b97f4a7c15ull) ^ (k * 0xff51afd7ed558ccdull);

			memcpy(p + k, &v, h->payload_len - k < 8 ? h->payload_len - k : 8);
		}
		kvt_record_seal(h, p);
	}
	for (unsigned i = 0; i < maxqd; i++) {
		s->slots[i].c = &s->c;
		s->slots[i].io.len = bs;
		s->slots[i].io.done = on_done;
	}
	/*
	 * Fill once, untimed: a fresh fallocate'd file has unwritten extents whose first write
	 * costs the filesystem an extent conversion.  The tier's files live long, so the steady
	 * state (and the state fio meets after us) is a file written before.
	 */
	w = run_pass(&s->c, s->slots, maxqd, bs, true);
	if (w < 0) {
		r = (int)w;
		goto fail;
	}
	s->o->stats(s->c.t, &st);
	s->io_flags = st.io_flags;
	return 0;
fail:
	session_close(s);
	return r;
}

/* Timed rewrite and read-back of the whole file at depth qd. */
static int session_measure(struct session *s, unsigned qd, struct bres *out)
{
	double w, r;
	int e = session_recycle(s);

	if (e < 0)
		return e;
	w = run_pass(&s->c, s->slots, qd, s->bs, true);
	r = w < 0 ? w : run_pass(&s->c, s->slots, qd, s->bs, false);
	if (w < 0 || r < 0)
		return (int)(w < 0 ? w : r);
	out->w = w;
	out->r = r;
	return 0;
}

static int count_cb(void *arg, const struct kvt_record_hdr *h, const struct kvt_tier_loc *loc)
{
	(*(uint64_t *)arg)++;
	return 0;
}

/* Startup recovery of a full file: open() scans and verifies every record.  GB/s of file
 * scanned, or -errno; *nrec gets the records recovered. */
static double recovery_run(const char *path, uint64_t size, uint64_t *nrec)
{
	const char *paths[] = {path, NULL};
	struct kvt_tier_conf conf = {
	    .name = "nvme",
	    .capacity_bytes = size + 4096,
	    .paths = paths,
	    .queue_depth = 4,
	    .buf_bytes = 1 << 20,
	    .log = quiet_log,
	};
	const struct kvt_tier_ops *o = &kvt_tier_nvme_ops;
	struct kvt_tier *t;
	double t0 = now_s(), t1;
	int r = o->open(&conf, &t);

	if (r < 0)
		return r;
	*nrec = 0;
	r = o->recover(t, count_cb, nrec);
	t1 = now_s();
	o->close(t);
	return r < 0 ? r : (double)size / (t1 - t0) / 1e9;
}

/* Runs fio and returns bw in GB/s for the given direction, or -1. */
/* jobs > 1 (synchronous engines): that many fio jobs, each on its own 1/jobs of the range,
 * reported as one group. */
static double fio_run(const char *path, uint64_t size, uint32_t bs, unsigned qd, const char *engine,
		      bool wr, unsigned jobs)
{
	char a_file[4200], a_bs[64], a_qd[64], a_size[64], a_eng[64], a_jobs[64], a_inc[64];
	char a_bsub[64], a_bcmp[64];
	char *args[24];
	unsigned na = 0;
	posix_spawn_file_actions_t fa;
	char *out = NULL, *p;
	size_t cap = 0, len = 0;
	int pfd[2], status;
	pid_t pid;
	double bw = -1;

	snprintf(a_file, sizeof(a_file), "--filename=%s", path);
	snprintf(a_eng, sizeof(a_eng), "--ioengine=%s", engine);
	snprintf(a_bs, sizeof(a_bs), "--bs=%u", bs);
	snprintf(a_qd, sizeof(a_qd), "--iodepth=%u", qd);
	args[na++] = "fio";
	args[na++] = "--name=kvtier";
	args[na++] = a_file;
	args[na++] = a_eng;
	args[na++] = "--direct=1";
	args[na++] = wr ? "--rw=write" : "--rw=read";
	args[na++] = a_bs;
	args[na++] = a_qd;
	args[na++] = a_size;
	args[na++] = "--offset=4096";
	args[na++] = "--output-format=json";
	if (jobs > 1) {
		uint64_t part = size / jobs / bs * bs;

		snprintf(a_jobs, sizeof(a_jobs), "--numjobs=%u", jobs);
		snprintf(a_inc, sizeof(a_inc), "--offset_increment=%llu", (unsigned long long)part);
		size = part;
		args[na++] = a_jobs;
		args[na++] = a_inc;
		args[na++] = "--group_reporting";
	}
	if (fio_tuned && !strcmp(engine, "io_uring")) {
		/* What the tier does too: batched submission, registered buffers and files. */
		snprintf(a_bsub, sizeof(a_bsub), "--iodepth_batch_submit=%u", qd);
		snprintf(a_bcmp, sizeof(a_bcmp), "--iodepth_batch_complete_max=%u", qd);
		args[na++] = a_bsub;
		args[na++] = a_bcmp;
		args[na++] = "--fixedbufs";
		args[na++] = "--registerfiles";
	}
	args[na] = NULL;
	snprintf(a_size, sizeof(a_size), "--size=%llu", (unsigned long long)size);
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -1;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
	posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
	if (posix_spawnp(&pid, "fio", &fa, NULL, args, environ) != 0) {
		posix_spawn_file_actions_destroy(&fa);
		close(pfd[0]);
		close(pfd[1]);
		return -1;
	}
	posix_spawn_file_actions_destroy(&fa);
	close(pfd[1]);
	for (;;) {
		ssize_t r;

		if (len + 4096 > cap) {
			char *n = realloc(out, cap + 65536);

			if (!n)
				break;
			out = n;
			cap += 65536;
		}
		r = read(pfd[0], out + len, cap - len - 1);
		if (r <= 0)
			break;
		len += (size_t)r;
	}
	close(pfd[0]);
	waitpid(pid, &status, 0);
	if (!out)
		return -1;
	out[len] = 0;
	/* jobs[0].read / jobs[0].write: the first "bw_bytes" after the direction's key. */
	p = strstr(out, wr ? "\"write\" :" : "\"read\" :");
	if (p)
		p = strstr(p, "\"bw_bytes\" :");
	if (p && WIFEXITED(status) && WEXITSTATUS(status) == 0)
		bw = strtod(p + strlen("\"bw_bytes\" :"), NULL) / 1e9;
	free(out);
	return bw;
}

static bool have_fio(void)
{
	return system("fio --version >/dev/null 2>&1") == 0;
}

static int parse_list(const char *s, unsigned *v, unsigned max, bool kib)
{
	unsigned n = 0;

	while (*s && n < max) {
		char *e;
		unsigned long x = strtoul(s, &e, 10);

		if (e == s)
			return -EINVAL;
		if (*e == 'k' || *e == 'K')
			x <<= 10, e++;
		else if (*e == 'm' || *e == 'M')
			x <<= 20, e++;
		else if (kib)
			x <<= 10;
		v[n++] = (unsigned)x;
		s = *e == ',' ? e + 1 : e;
		if (*e && *e != ',')
			return -EINVAL;
	}
	return (int)n;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: kvtier-bench --nvme [--json] [--quick] [--dir DIR] [--size MiB]\n"
		"       [--bs 64k,256k,1m,4m] [--qd 1,4,16,64] [--reps N] [--no-fio]\n"
		"       [--fio-tuned]  (fio io_uring with batched submission, fixedbufs,\n"
		"                       registerfiles; default: the plain command of DESIGN §9)\n"
		"       [--verify-inline]  (check read CRCs on the completing thread, not on the\n"
		"                       tier's verifier threads: the cost of checking, side by "
		"side)\n");
}

static double ratio(double a, double b)
{
	return b > 0 && a > 0 ? a / b : -1;
}

static void jnum(const char *k, double v, bool comma)
{
	if (v < 0)
		printf("\"%s\": null%s", k, comma ? ", " : "");
	else
		printf("\"%s\": %.3f%s", k, v, comma ? ", " : "");
}

static int dcmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Median of n runs: the disk behind a VM is bimodal at times (host cache), and the median
 * of interleaved runs is what both sides get on a typical run. */
static double median(double *v, unsigned n)
{
	unsigned k = 0;

	for (unsigned i = 0; i < n; i++)
		if (v[i] >= 0)
			v[k++] = v[i];
	if (!k)
		return -1;
	qsort(v, k, sizeof(*v), dcmp);
	return k & 1 ? v[k / 2] : (v[k / 2 - 1] + v[k / 2]) / 2;
}

static void reduce(struct bres *out, const struct bres *x, unsigned n)
{
	double w[64], r[64], fw[64], fr[64];

	for (unsigned i = 0; i < n; i++) {
		w[i] = x[i].w;
		r[i] = x[i].r;
		fw[i] = x[i].fw;
		fr[i] = x[i].fr;
	}
	out->w = median(w, n);
	out->r = median(r, n);
	out->fw = median(fw, n);
	out->fr = median(fr, n);
	/* Ratios pair each tier run with the fio run next to it in time, so that the disk's
	 * slow spells (a VM's virtual disk drifts by 2x over minutes) cancel in each pair. */
	for (unsigned i = 0; i < n; i++) {
		w[i] = ratio(x[i].w, x[i].fw);
		r[i] = ratio(x[i].r, x[i].fr);
	}
	out->wx = median(w, n);
	out->rx = median(r, n);
}

int bench_nvme_main(int argc, char **argv)
{
	struct bopts o = {.reps = 0};
	char path[4096];
	struct statfs sfs;
	bool tmpfs = false, fio;
	unsigned io_flags = 0;
	struct bres res[16][16], fb[16][FB_DEPTHS];
	double recov[16];
	uint64_t recov_n[16];
	double min_read_ratio = -1, min_write_ratio = -1;
	int ret = 0;

	o.dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/var/tmp";
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--nvme"))
			continue;
		if (!strcmp(a, "--json")) {
			o.json = true;
		} else if (!strcmp(a, "--quick")) {
			o.quick = true;
		} else if (!strcmp(a, "--no-fio")) {
			o.no_fio = true;
		} else if (!strcmp(a, "--fio-tuned")) {
			fio_tuned = true;
		} else if (!strcmp(a, "--verify-inline")) {
			verify_inline = true;
		} else if (!strcmp(a, "--dir") && v) {
			o.dir = v;
			i++;
		} else if (!strcmp(a, "--size") && v) {
			o.size = strtoull(v, NULL, 10) << 20;
			i++;
		} else if (!strcmp(a, "--reps") && v) {
			o.reps = (unsigned)atoi(v);
			i++;
		} else if (!strcmp(a, "--bs") && v) {
			int n = parse_list(v, o.bs, 16, true);

			if (n <= 0)
				goto bad;
			o.nbs = (unsigned)n;
			i++;
		} else if (!strcmp(a, "--qd") && v) {
			int n = parse_list(v, o.qd, 16, false);

			if (n <= 0)
				goto bad;
			o.nqd = (unsigned)n;
			i++;
		} else {
			goto bad;
		}
	}
	if (!o.nbs) {
		static const unsigned def[] = {64 << 10, 256 << 10, 1 << 20, 4 << 20};
		static const unsigned quick[] = {64 << 10, 1 << 20};

		o.nbs = o.quick ? 2 : 4;
		memcpy(o.bs, o.quick ? quick : def, o.nbs * sizeof(unsigned));
	}
	if (!o.nqd) {
		static const unsigned def[] = {1, 4, 16, 64};
		static const unsigned quick[] = {1, 16};

		o.nqd = o.quick ? 2 : 4;
		memcpy(o.qd, o.quick ? quick : def, o.nqd * sizeof(unsigned));
	}
	if (!o.size)
		o.size = o.quick ? (64ull << 20) : (128ull << 20);
	if (!o.reps)
		o.reps = o.quick ? 1 : 5;
	if (o.reps > 64)
		goto bad;
	for (unsigned b = 0; b < o.nbs; b++)
		if (o.bs[b] < 4096 || o.bs[b] % 4096 || o.bs[b] > (64u << 20) || o.size < o.bs[b])
			goto bad;
	for (unsigned q = 0; q < o.nqd; q++)
		if (!o.qd[q] || o.qd[q] > 256)
			goto bad;

	snprintf(path, sizeof(path), "%s/kvtier-bench-nvme.%d.slots", o.dir, (int)getpid());
	if (statfs(o.dir, &sfs) == 0 && sfs.f_type == TMPFS_MAGIC) {
		tmpfs = true;
		fprintf(stderr, "bench nvme: %s is tmpfs, not a disk: figures measure RAM\n",
			o.dir);
	}
	fio = !o.no_fio && have_fio();
	if (!o.no_fio && !fio)
		fprintf(stderr, "bench nvme: fio not found, tier figures only\n");

	for (unsigned b = 0; b < o.nbs; b++) {
		uint64_t size = o.size / o.bs[b] * o.bs[b];
		unsigned maxqd = 1;
		struct session ss;
		struct bres x[64];
		int e;

		for (unsigned q = 0; q < o.nqd; q++)
			if (o.qd[q] > maxqd)
				maxqd = o.qd[q];
		e = session_open(&ss, path, size, o.bs[b], maxqd, 0);
		if (e < 0) {
			fprintf(stderr, "bench nvme: open %s: %s\n", path, strerror(-e));
			return 1;
		}
		io_flags = ss.io_flags;
		for (unsigned q = 0; q < o.nqd; q++) {
			struct bres *r = &res[b][q];

			/*
			 * fio and tier alternate so that a slow spell of the disk hits both.  The
			 * tier goes last: its records are then on disk for the recovery scan.
			 */
			for (unsigned k = 0; k < o.reps; k++) {
				x[k].w = x[k].r = x[k].fw = x[k].fr = -1;
				/* Odd runs put the tier first: neither side always follows.
				 * The last run keeps the tier last (the recovery scan reads it). */
				bool tier_first = (k & 1) && k + 1 < o.reps;

				if (tier_first)
					e = session_measure(&ss, o.qd[q], &x[k]);
				if (fio) {
					x[k].fw = fio_run(path, size, o.bs[b], o.qd[q], "io_uring",
							  true, 1);
					x[k].fr = fio_run(path, size, o.bs[b], o.qd[q], "io_uring",
							  false, 1);
				}
				if (!tier_first)
					e = session_measure(&ss, o.qd[q], &x[k]);
				if (e < 0) {
					fprintf(stderr, "bench nvme: tier bs=%u qd=%u: %s\n",
						o.bs[b], o.qd[q], strerror(-e));
					ret = 1;
				}
			}
			reduce(r, x, o.reps);
			if (r->rx >= 0 && (min_read_ratio < 0 || r->rx < min_read_ratio))
				min_read_ratio = r->rx;
			if (r->wx >= 0 && (min_write_ratio < 0 || r->wx < min_write_ratio))
				min_write_ratio = r->wx;
			if (!o.json)
				printf("io_uring bs=%7u qd=%2u  write %6.3f GB/s (fio %6.3f, "
				       "x%.2f)  read "
				       "%6.3f GB/s (fio %6.3f, x%.2f)\n",
				       o.bs[b], o.qd[q], r->w, r->fw, r->wx, r->r, r->fr, r->rx);
		}
		session_close(&ss);
		recov[b] = recovery_run(path, size, &recov_n[b]);
		if (recov_n[b] != size / o.bs[b]) {
			fprintf(stderr, "bench nvme: recovery found %llu of %llu records\n",
				(unsigned long long)recov_n[b],
				(unsigned long long)(size / o.bs[b]));
			ret = 1;
		}
		if (!o.json)
			printf("recovery bs=%7u        scan+verify %6.3f GB/s (%llu records)\n",
			       o.bs[b], recov[b], (unsigned long long)recov_n[b]);

		/*
		 * Fallback: n pread/pwrite workers at depth n against n fio psync jobs (a
		 * synchronous engine has no queue depth; its parallelism is its job count).
		 */
		for (unsigned d = 0; d < FB_DEPTHS; d++) {
			unsigned n = fb_depth[d];

			e = session_open(&ss, path, size, o.bs[b], n, KVT_TIER_F_NO_URING);
			for (unsigned k = 0; k < o.reps; k++) {
				x[k].w = x[k].r = x[k].fw = x[k].fr = -1;
				if (fio) {
					x[k].fw = fio_run(path, size, o.bs[b], 1, "psync", true, n);
					x[k].fr =
					    fio_run(path, size, o.bs[b], 1, "psync", false, n);
				}
				if (e >= 0)
					e = session_measure(&ss, n, &x[k]);
				if (e < 0) {
					fprintf(stderr, "bench nvme: pread bs=%u: %s\n", o.bs[b],
						strerror(-e));
					ret = 1;
				}
			}
			if (ss.c.t)
				session_close(&ss);
			reduce(&fb[b][d], x, o.reps);
			if (!o.json)
				printf("pread    bs=%7u qd=%2u  write %6.3f GB/s (psync %6.3f, "
				       "x%.2f)  "
				       "read %6.3f GB/s (psync %6.3f, x%.2f)\n",
				       o.bs[b], n, fb[b][d].w, fb[b][d].fw, fb[b][d].wx, fb[b][d].r,
				       fb[b][d].fr, fb[b][d].rx);
		}
	}
	unlink(path);

	if (o.json) {
		printf(
		    "{\"bench\": \"nvme\", \"dir\": \"%s\", \"file_bytes\": %llu, \"tmpfs\": %s, "
		    "\"fio\": %s, \"fio_tuned\": %s, \"reps\": %u, \"o_direct\": %s, "
		    "\"fixed_bufs\": %s, \"verify\": \"%s\",\n",
		    o.dir, (unsigned long long)o.size, tmpfs ? "true" : "false",
		    fio ? "true" : "false", fio_tuned ? "true" : "false", o.reps,
		    io_flags & KVT_TIER_ST_DIRECT ? "true" : "false",
		    io_flags & KVT_TIER_ST_FIXED_BUFS ? "true" : "false",
		    verify_inline ? "inline" : "threads");
		printf(" \"results\": [\n");
		for (unsigned b = 0; b < o.nbs; b++)
			for (unsigned q = 0; q < o.nqd; q++) {
				struct bres *r = &res[b][q];

				printf("  {\"block_bytes\": %u, \"iodepth\": %u, \"engine\": "
				       "\"io_uring\", ",
				       o.bs[b], o.qd[q]);
				jnum("read_gbps", r->r, true);
				jnum("write_gbps", r->w, true);
				jnum("fio_read_gbps", r->fr, true);
				jnum("fio_write_gbps", r->fw, true);
				jnum("read_ratio", r->rx, true);
				jnum("write_ratio", r->wx, false);
				printf("}%s\n", b + 1 == o.nbs && q + 1 == o.nqd ? "" : ",");
			}
		printf(" ],\n \"recovery\": [\n");
		for (unsigned b = 0; b < o.nbs; b++) {
			printf("  {\"block_bytes\": %u, \"records\": %llu, ", o.bs[b],
			       (unsigned long long)recov_n[b]);
			jnum("scan_gbps", recov[b], false);
			printf("}%s\n", b + 1 == o.nbs ? "" : ",");
		}
		printf(" ],\n \"fallback\": [\n");
		for (unsigned b = 0; b < o.nbs; b++)
			for (unsigned d = 0; d < FB_DEPTHS; d++) {
				struct bres *r = &fb[b][d];

				printf("  {\"block_bytes\": %u, \"iodepth\": %u, \"engine\": "
				       "\"pread\", "
				       "\"fio_engine\": \"psync\", \"fio_numjobs\": %u, ",
				       o.bs[b], fb_depth[d], fb_depth[d]);
				jnum("read_gbps", r->r, true);
				jnum("write_gbps", r->w, true);
				jnum("fio_read_gbps", r->fr, true);
				jnum("fio_write_gbps", r->fw, true);
				jnum("read_ratio", r->rx, true);
				jnum("write_ratio", r->wx, false);
				printf("}%s\n", b + 1 == o.nbs && d + 1 == FB_DEPTHS ? "" : ",");
			}
		printf(" ],\n \"target_read_ratio\": 0.9, ");
		jnum("min_read_ratio", min_read_ratio, true);
		jnum("min_write_ratio", min_write_ratio, false);
		printf("}\n");
	} else if (min_read_ratio >= 0) {
		printf("min read ratio x%.2f (target 0.9), min write ratio x%.2f\n", min_read_ratio,
		       min_write_ratio);
	}
	return ret;
bad:
	usage();
	return 2;
}
