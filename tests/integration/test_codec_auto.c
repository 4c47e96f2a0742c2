/* SPDX-License-Identifier: MIT */
/*
 * test_codec_auto.c - `codec = auto` (daemon/codec_auto.c) against a real kvtierd, on real KV
 * (tests/data/sympy_l1h0_q128.kvd: 64 blocks of 64 tokens, with the queries of the last 128
 * positions): `kvtierctl calibrate` on blocks the daemon holds; the NVMe choice meets
 * nvme.max_err on blocks the calibration never saw, measured with the dump's real queries
 * after the round trip through NVMe; a tighter budget picks a larger chain; the calibration
 * survives a restart; a damaged or misnamed calibration file is refused with a message and
 * left in place; too few blocks is a clear error.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "codec.h"
#include "harness.h"
#include "kvd.h"
#include "kveval.h"
#include "kvtier.h"

static const char *kvtierd, *kvtierctl;
static char dir[256], sock[300], state[300], nvme_opt[320], state_opt[320];
static pid_t cur_daemon;

#define T 64 /* tokens a block */

static struct kvd kd;
static uint32_t nb;    /* blocks of the dump */
static size_t bb;      /* bytes of one */
static uint16_t *blks; /* the dump's blocks, page-first */
static struct kvt_layout lay_model = {
    sizeof(struct kvt_layout), 0, 0, 0, T, KVT_DTYPE_FP16, 0, 0, 1, "sympy-l1h0"};
static struct kvt_key keys[64];

static pid_t daemon_start(const char *capacity, ...)
{
	va_list ap;
	pid_t pid;

	va_start(ap, capacity);
	pid = kvt_test_daemon_startv(&cur_daemon, kvtierd, sock, capacity, NULL, ap);
	va_end(ap);
	/* serving; then the NVMe records are in (the recovery scan ends: an event) */
	while (pid > 0 && kvt_test_ctl_num(kvtierctl, sock, "status", NULL, "nvme_recovering") == 1)
		usleep(1000);
	return pid;
}

static int daemon_stop(pid_t pid)
{
	int st = kvt_test_daemon_stop(pid);

	cur_daemon = 0;
	return st;
}

#define ctl(rc, ...) kvt_test_ctl(rc, kvtierctl, sock, __VA_ARGS__)

/* The number after "name": in js (after the text within, when given), or NAN. */
static double json_dbl(const char *js, const char *within, const char *name)
{
	char pat[128];
	const char *p = js && within ? strstr(js, within) : js;

	snprintf(pat, sizeof(pat), "\"%s\":", name);
	p = p ? strstr(p, pat) : NULL;
	return p ? strtod(p + strlen(pat), NULL) : NAN;
}

/* The string after "name":" in js (after within), copied to out; false when absent. */
static bool json_str(const char *js, const char *within, const char *name, char *out, size_t n)
{
	char pat[128];
	const char *p = js && within ? strstr(js, within) : js, *e;

	snprintf(pat, sizeof(pat), "\"%s\":\"", name);
	p = p ? strstr(p, pat) : NULL;
	if (!p)
		return false;
	p += strlen(pat);
	e = strchr(p, '"');
	if (!e || (size_t)(e - p) >= n)
		return false;
	memcpy(out, p, (size_t)(e - p));
	out[e - p] = 0;
	return true;
}

/* Puts blocks [a, b) at their positions. */
static void put_range(struct kvt_client *c, int lay, uint32_t a, uint32_t b)
{
	for (uint32_t i = a; i < b; i++)
		CHECK_EQ(kvt_put_at(c, lay, &keys[i], i * T, blks + i * bb / 2, bb), 0);
}

/*
 * The metric of `kvtier-eval codec` with the dump's queries: the causal attention of the last
 * 128 positions over all 4096 tokens, blocks [a, b) taken from dec (as read back), the others
 * exact.
 */
static double real_err(const uint16_t *dec, uint32_t a, uint32_t b)
{
	size_t n = kvd_kv_elems(&kd), nq = (size_t)kd.n_q_pos * kd.head_dim;
	uint16_t *k = malloc(n * 2), *v = malloc(n * 2);
	float *kf = malloc(n * 4), *vf = malloc(n * 4), *kx = malloc(n * 4), *vx = malloc(n * 4);
	float *q = malloc(nq * 4), *o = malloc(nq * 4), *o2 = malloc(nq * 4);
	uint32_t *ctx = malloc(kd.n_q_pos * 4), grp = kd.n_q_heads / kd.n_kv_heads;
	double sum = 0;
	size_t cnt = 0;

	memcpy(k, kd.k, n * 2);
	memcpy(v, kd.v, n * 2);
	for (uint32_t i = a; i < b; i++)
		kvd_block_io(&kd, k, v, i * T, T, (uint16_t *)(dec + i * bb / 2), -1);
	for (size_t i = 0; i < n; i++) {
		kx[i] = kvd_half_to_float(kd.k[i]);
		vx[i] = kvd_half_to_float(kd.v[i]);
		kf[i] = kvd_half_to_float(k[i]);
		vf[i] = kvd_half_to_float(v[i]);
	}
	for (uint32_t p = 0; p < kd.n_q_pos; p++)
		ctx[p] = kd.n_tokens - kd.n_q_pos + p + 1; /* causal */
	for (uint32_t l = 0; l < kd.n_layers; l++)
		for (uint32_t j = 0; j < kd.n_q_heads; j++) {
			size_t so =
			    ((size_t)l * kd.n_kv_heads + j / grp) * kd.n_tokens * kd.head_dim;
			const uint16_t *qq = kd.q + ((size_t)l * kd.n_q_heads + j) * nq;

			for (size_t e = 0; e < nq; e++)
				q[e] = kvd_half_to_float(qq[e]);
			kvt_eval_attention(q, kd.n_q_pos, ctx, kx + so, vx + so, kd.n_tokens,
					   kd.head_dim, o);
			kvt_eval_attention(q, kd.n_q_pos, ctx, kf + so, vf + so, kd.n_tokens,
					   kd.head_dim, o2);
			sum += kvt_eval_rel_err_sum(o, o2, kd.n_q_pos, kd.head_dim);
			cnt += kd.n_q_pos;
		}
	free(k);
	free(v);
	free(kf);
	free(vf);
	free(kx);
	free(vx);
	free(q);
	free(o);
	free(o2);
	free(ctx);
	return cnt ? sum / (double)cnt : NAN;
}

static void state_file(char *buf, size_t n, uint64_t fp)
{
	snprintf(buf, n, "%s/calib-%016llx.kvcal", state, (unsigned long long)fp);
}

/* Too few blocks, or none: a clear error, exit status 1, and the daemon goes on serving. */
static void test_too_few(void)
{
	pid_t pid = daemon_start("8MiB", "-o", state_opt, NULL);
	int rc;
	char *out;

	CHECK(pid > 0);
	out = ctl(&rc, "calibrate 2>&1");
	CHECK(rc == 1 && out && strstr(out, "nothing to calibrate on"));
	free(out);
	struct kvt_client *c = kvt_test_connect(sock, "test", 5000);
	CHECK(c);
	int lay = kvt_register_layout(c, &lay_model);
	CHECK(lay >= 0);
	put_range(c, lay, 0, 5);
	out = ctl(&rc, "calibrate 2>&1");
	CHECK(rc == 1 && out && strstr(out, "too few blocks") && strstr(out, "holds 5 whole"));
	free(out);
	/* a fingerprint no block has */
	out = ctl(&rc, "calibrate 0123456789abcdef 2>&1");
	CHECK(rc == 1 && out && strstr(out, "0123456789abcdef") && strstr(out, "holds 0 whole"));
	free(out);
	out = ctl(&rc, "calibrate no-such-model 2>&1");
	CHECK(rc == 1 && out && strstr(out, "of model 'no-such-model'"));
	free(out);
	CHECK_EQ(kvt_lookup(c, lay, keys, 5), 5);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
}

/*
 * Calibrate on blocks 0..31, then blocks 32..63 (never seen by the calibration) go through
 * NVMe under nvme.codec = auto: what comes back meets nvme.max_err with the real queries.
 * A restart keeps the calibration; a tighter budget then picks a larger chain.
 */
static void test_calibrate_pick(void)
{
	const double budget = 0.03;
	char err_opt[64], spec[200], host[200], row[260], tier_spec[200];
	uint16_t *got = malloc(bb * nb);
	int rc;
	char *out;

	snprintf(err_opt, sizeof(err_opt), "nvme.max_err=%g", budget);
	/* host.capacity 4 MiB holds the 64 blocks of 32 KiB; nvme.bandwidth 1K: every chain is
	 * fast enough for that disk (the speed rule has its unit test), so that the choice
	 * does not depend on this machine's speed; codec_threads 0: evict encodes with the
	 * chosen chain at once */
	pid_t pid = daemon_start("4MiB", "-o", state_opt, "-o", "nvme.enabled=true", "-o", nvme_opt,
				 "-o", "nvme.capacity=64MiB", "-o", "nvme.codec=auto", "-o",
				 "host.codec=auto", "-o", "host.max_err=0.03", "-o", err_opt, "-o",
				 "nvme.bandwidth=1K", "-o", "nvme.codec_threads=0", NULL);
	CHECK(pid > 0);
	out = ctl(&rc, "tiers");
	CHECK(rc == 0 && out && strstr(out, "uncalibrated models: fpx"));
	free(out);
	struct kvt_client *c = kvt_test_connect(sock, "test", 5000);
	CHECK(c);
	int lay = kvt_register_layout(c, &lay_model);
	CHECK(lay >= 0);
	put_range(c, lay, 0, 32);
	out = ctl(&rc, "--json calibrate sympy-l1h0");
	CHECK(rc == 0 && out);
	printf("%s", out);
	CHECK(json_str(out, NULL, "nvme_pick", spec, sizeof(spec)));
	CHECK(json_str(out, NULL, "host_pick", host, sizeof(host)));
	snprintf(row, sizeof(row), "{\"codec\":\"%s\"", spec);
	double ratio = json_dbl(out, row, "ratio"), err = json_dbl(out, row, "err");
	double fpx = json_dbl(out, "{\"codec\":\"fpx\"", "ratio");
	/* the smallest chain within the budget: lossy here, smaller than the lossless ones */
	CHECK(err > 0 && err <= budget);
	CHECK(ratio > fpx && fpx > 1);
	/* the host takes a GPU-speed chain within its budget */
	snprintf(row, sizeof(row), "{\"codec\":\"%s\"", host);
	CHECK(json_dbl(out, row, "err") <= 0.03);
	CHECK(strstr(out + (strstr(out, row) - out), "\"gpu\":true") != NULL);
	free(out);
	/* valid JSON, both */
	out = kvt_test_sh(&rc,
			  "%s --socket %s --json tiers | /usr/bin/python3 -c 'import json,sys; "
			  "t = json.load(sys.stdin); print(t[1][\"models\"][0][\"codec\"])'",
			  kvtierctl, sock);
	CHECK(rc == 0 && out && !strncmp(out, spec, strlen(spec)));
	free(out);
	/* kvtierctl tiers: the choice and its err under each tier */
	out = ctl(&rc, "--json tiers");
	CHECK(rc == 0 && out);
	CHECK(json_str(out, "\"name\":\"nvme\"", "codec", tier_spec, sizeof(tier_spec)));
	CHECK(json_str(out, "\"models\":[{", "codec", tier_spec, sizeof(tier_spec)));
	CHECK(strstr(out, spec) && strstr(out, host));
	free(out);
	/* the held-out blocks go down to NVMe, encoded with the choice, and come back */
	put_range(c, lay, 32, nb);
	out = ctl(&rc, "evict --all");
	CHECK(rc == 0);
	free(out);
	CHECK(kvt_test_ctl_num(kvtierctl, sock, "status", "\"name\":\"host\"", "blocks") == 0);
	int lossy = 0;
	for (uint32_t i = 0; i < nb; i++) {
		CHECK_EQ(kvt_get(c, lay, &keys[i], got + i * bb / 2, bb), (ssize_t)bb);
		lossy += !!memcmp(got + i * bb / 2, blks + i * bb / 2, bb);
	}
	CHECK(lossy > (int)nb / 2); /* the lossy choice, not the lossless default */
	double held_out = real_err(got, 32, nb), all = real_err(got, 0, nb);
	printf("nvme auto %s: calibration err %.5f; %d of %u blocks lossy after NVMe; with the "
	       "dump's queries: held-out blocks %.7f, all blocks %.7f (budget %g)\n",
	       spec, err, lossy, nb, held_out, all, budget);
	CHECK(held_out <= budget);
	CHECK(all <= budget);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);

	/* A restart keeps the calibration; a tighter budget picks a larger chain. */
	pid = daemon_start("4MiB", "-o", state_opt, "-o", "nvme.enabled=true", "-o", nvme_opt, "-o",
			   "nvme.capacity=64MiB", "-o", "nvme.codec=auto", "-o",
			   "nvme.max_err=0.002", "-o", "nvme.bandwidth=1K", NULL);
	CHECK(pid > 0);
	out = ctl(&rc, "--json tiers");
	CHECK(rc == 0 && out);
	char tight[200];
	const char *nv = strstr(out, "\"name\":\"nvme\"");
	CHECK(nv && json_str(nv, "\"models\":[", "codec", tight, sizeof(tight)));
	double terr = json_dbl(nv, "\"models\":[", "err");
	CHECK(terr <= 0.002);
	CHECK(strcmp(tight, spec) != 0);
	free(out);
	/* the records written under the first budget are still served: their chain is known */
	c = kvt_test_connect(sock, "test", 5000);
	CHECK(c);
	lay = kvt_register_layout(c, &lay_model);
	CHECK(kvt_test_ctl_num(kvtierctl, sock, "status", NULL, "nvme_recovered_total") > 0);
	CHECK_EQ(kvt_lookup(c, lay, keys, nb), (int)nb);
	/* the blocks come back as the first daemon's chain decoded them */
	uint16_t *b = malloc(bb);
	for (uint32_t i = 0; i < nb; i++) {
		CHECK_EQ(kvt_get(c, lay, &keys[i], b, bb), (ssize_t)bb);
		CHECK(!memcmp(b, got + i * bb / 2, bb));
	}
	free(b);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
	free(got);
}

/*
 * Blocks that only NVMe holds are calibrated on too (their records read and decoded), also
 * after a restart, when the daemon knows their positions only from the records.
 */
static void test_from_nvme(void)
{
	const char *args[] = {"-o", state_opt,	      "-o", "nvme.enabled=true",
			      "-o", nvme_opt,	      "-o", "nvme.capacity=64MiB",
			      "-o", "nvme.codec=fpx", "-o", "nvme.codec_threads=0"};
	int rc;
	char *out;

	unlink(nvme_opt + strlen("nvme.paths="));
	pid_t pid = daemon_start("4MiB", args[0], args[1], args[2], args[3], args[4], args[5],
				 args[6], args[7], args[8], args[9], args[10], args[11], NULL);
	CHECK(pid > 0);
	struct kvt_client *c = kvt_test_connect(sock, "test", 5000);
	CHECK(c);
	int lay = kvt_register_layout(c, &lay_model);
	put_range(c, lay, 0, 16);
	out = ctl(&rc, "evict --all");
	free(out);
	CHECK_EQ(kvt_test_ctl_num(kvtierctl, sock, "status", "\"name\":\"host\"", "blocks"), 0);
	out = ctl(&rc, "--json calibrate");
	CHECK(rc == 0 && out && strstr(out, "\"blocks_dict\":8,\"blocks_measured\":8"));
	/* uq undoes RoPE at each block's position: its ratio tells whether positions held */
	double uq1 = json_dbl(out, "{\"codec\":\"uq\"", "ratio");
	free(out);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
	/* again after a restart: the records are recovered; a client registers the layout */
	pid = daemon_start("4MiB", args[0], args[1], args[2], args[3], args[4], args[5], args[6],
			   args[7], args[8], args[9], args[10], args[11], NULL);
	CHECK(pid > 0);
	c = kvt_test_connect(sock, "test", 5000);
	CHECK(c);
	lay = kvt_register_layout(c, &lay_model);
	CHECK_EQ(kvt_lookup(c, lay, keys, 16), 16);
	out = ctl(&rc, "--json calibrate sympy-l1h0");
	CHECK(rc == 0 && out && strstr(out, "\"blocks_dict\":8,\"blocks_measured\":8"));
	/* the same blocks at the positions their records tell: the same ratio */
	double uq2 = json_dbl(out, "{\"codec\":\"uq\"", "ratio");
	printf("uq ratio on the NVMe blocks: %.4f, after a restart %.4f\n", uq1, uq2);
	CHECK(uq1 > 1 && uq1 == uq2);
	free(out);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
}

/*
 * A calibration runs beside the daemon's work: while it is held (test hook), clients are
 * served, tiers shows it, a second one is refused as busy; then it ends and answers.
 */
static void test_in_background(void)
{
	char gate[300], outf[300];
	int rc;
	char *out;

	snprintf(gate, sizeof(gate), "%s/cal.gate", dir);
	snprintf(outf, sizeof(outf), "%s/cal.out", dir);
	unlink(gate);
	unlink(outf);
	setenv("KVTIER_TEST_CALIBRATE_GATE", gate, 1);
	pid_t pid = daemon_start("8MiB", "-o", state_opt, NULL);
	unsetenv("KVTIER_TEST_CALIBRATE_GATE");
	CHECK(pid > 0);
	struct kvt_client *c = kvt_test_connect(sock, "test", 5000);
	CHECK(c);
	int lay = kvt_register_layout(c, &lay_model);
	put_range(c, lay, 0, 16);
	/* in the background, its output in a file (not this shell's pipe, which would wait) */
	out = kvt_test_sh(&rc,
			  "(%s --socket %s calibrate > %s 2>&1; echo \"exit $?\" >> %s) "
			  "</dev/null >/dev/null 2>&1 &",
			  kvtierctl, sock, outf, outf);
	free(out);
	/* it has started once tiers shows it */
	for (;;) {
		out = ctl(&rc, "tiers");
		CHECK(rc == 0 && out);
		if (strstr(out, "calibrating layout"))
			break;
		free(out);
		usleep(1000);
	}
	free(out);
	/* the loop serves meanwhile */
	uint16_t *b = malloc(bb);
	put_range(c, lay, 16, 20);
	for (uint32_t i = 0; i < 20; i++) {
		CHECK_EQ(kvt_get(c, lay, &keys[i], b, bb), (ssize_t)bb);
		CHECK(!memcmp(b, blks + i * bb / 2, bb));
	}
	free(b);
	out = ctl(&rc, "calibrate 2>&1");
	CHECK(rc == 1 && out && strstr(out, "is running"));
	free(out);
	/* released: the first one answers with its table */
	FILE *g = fopen(gate, "w");
	CHECK(g);
	fclose(g);
	for (;;) {
		out = kvt_test_sh(&rc, "cat %s", outf);
		if (out && strstr(out, "exit "))
			break;
		free(out);
		usleep(1000);
	}
	CHECK(strstr(out, "exit 0") && strstr(out, "nvme auto (max_err"));
	free(out);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
}

/* Copies src to dst; 0 or -1. */
/*
 * host.codec = auto: blocks stay raw until the model is calibrated; a layout registered after
 * kvtierctl calibrate gets the host pick (a GPU-speed chain within host.max_err), its puts are
 * stored encoded with it and read back within the budget, and the raw blocks of before are
 * still served as they were.
 */
static void test_host_auto(void)
{
	const double budget = 0.05;
	uint16_t *got = malloc(bb * nb);
	char host[200];
	int rc;
	char *out;
	struct kvt_lease le;
	char cal[600];

	/* the model uncalibrated (the cases before leave their calibration in the state dir) */
	state_file(cal, sizeof(cal), kvt_layout_fingerprint(&lay_model));
	unlink(cal);
	pid_t pid = daemon_start("8MiB", "-o", state_opt, "-o", "host.codec=auto", "-o",
				 "host.max_err=0.05", NULL);
	CHECK(pid > 0);
	struct kvt_client *c = kvt_test_connect(sock, "test", 5000);
	CHECK(c);
	int lay = kvt_register_layout(c, &lay_model);
	CHECK(lay >= 0);
	put_range(c, lay, 0, 32);
	CHECK_EQ(kvt_get_lease(c, lay, &keys[0], &le), 0);
	CHECK_EQ(le.chain_id, 0u); /* not calibrated: raw */
	CHECK_EQ(kvt_lease_release(c, &le), 0);
	out = ctl(&rc, "--json calibrate sympy-l1h0");
	CHECK(rc == 0 && out);
	CHECK(json_str(out, NULL, "host_pick", host, sizeof(host)));
	CHECK(strncmp(host, "bq", 2) == 0);
	free(out);
	kvt_close(c);

	/* a layout registered after the calibration: its puts are coded with the host pick */
	c = kvt_test_connect(sock, "test", 5000);
	CHECK(c);
	lay = kvt_register_layout(c, &lay_model);
	CHECK(lay >= 0);
	put_range(c, lay, 32, nb);
	CHECK_EQ(kvt_get_lease(c, lay, &keys[40], &le), 0);
	CHECK(le.chain_id != 0);
	CHECK_EQ(le.raw_len, bb);
	CHECK(le.len < bb);
	CHECK_EQ(kvt_lease_release(c, &le), 0);
	int lossy = 0;
	for (uint32_t i = 0; i < nb; i++) {
		CHECK_EQ(kvt_get(c, lay, &keys[i], got + i * bb / 2, bb), (ssize_t)bb);
		if (i < 32) /* stored raw before the calibration: exact */
			CHECK(!memcmp(got + i * bb / 2, blks + i * bb / 2, bb));
		else
			lossy += !!memcmp(got + i * bb / 2, blks + i * bb / 2, bb);
	}
	CHECK(lossy > (int)(nb - 32) / 2);
	double held_out = real_err(got, 32, nb);
	printf("host auto %s: %d of %u blocks lossy; err with the dump's queries %.5f (budget "
	       "%g)\n",
	       host, lossy, nb - 32, held_out, budget);
	CHECK(held_out <= budget);
	out = ctl(&rc, "tiers");
	CHECK(rc == 0 && out && strstr(out, host));
	free(out);
	kvt_close(c);
	CHECK_EQ(daemon_stop(pid), 0);
	free(got);
}

static int copy_file(const char *src, const char *dst, long flip_at)
{
	FILE *a = fopen(src, "rb"), *b = fopen(dst, "wb");
	int ch, ret = a && b ? 0 : -1;

	for (long i = 0; !ret && (ch = fgetc(a)) != EOF; i++)
		fputc(i == flip_at ? ch ^ 0x40 : ch, b);
	if (a)
		fclose(a);
	if (b)
		fclose(b);
	return ret;
}

/* A damaged or misnamed calibration file: the daemon starts, says why, uses the default,
 * and leaves the file as it is. */
static void test_corrupt_file(void)
{
	char good[400], bad[420], other[400], keep[420];
	struct stat st0, st1;
	uint64_t fp = kvt_layout_fingerprint(&lay_model);
	int rc;
	char *out;

	state_file(good, sizeof(good), fp);
	if (access(good, F_OK) != 0) {
		/* calibrate_pick made it; alone, make it now */
		pid_t pid = daemon_start("8MiB", "-o", state_opt, NULL);
		CHECK(pid > 0);
		struct kvt_client *c = kvt_test_connect(sock, "test", 5000);
		CHECK(c);
		int lay = kvt_register_layout(c, &lay_model);
		put_range(c, lay, 0, 16);
		out = ctl(&rc, "calibrate");
		CHECK(rc == 0);
		free(out);
		kvt_close(c);
		CHECK_EQ(daemon_stop(pid), 0);
	}
	snprintf(keep, sizeof(keep), "%s.orig", good);
	CHECK_EQ(copy_file(good, keep, -1), 0);
	/* one bit flipped in the middle */
	CHECK_EQ(stat(good, &st0), 0);
	CHECK_EQ(copy_file(keep, good, (long)st0.st_size / 2), 0);
	snprintf(bad, sizeof(bad), "%s.flipped", good);
	CHECK_EQ(copy_file(good, bad, -1), 0);
	/* the good file under another layout's name */
	state_file(other, sizeof(other), fp ^ 1);
	CHECK_EQ(copy_file(keep, other, -1), 0);
	pid_t pid = daemon_start("8MiB", "-o", state_opt, "-o", "nvme.enabled=true", "-o", nvme_opt,
				 "-o", "nvme.capacity=64MiB", "-o", "nvme.codec=auto", NULL);
	CHECK(pid > 0);
	out = ctl(&rc, "tiers");
	CHECK(rc == 0 && out && strstr(out, "calibration files refused"));
	CHECK(out && strstr(out, "checksum mismatch") && strstr(out, "not the one of its name"));
	CHECK(out && !strstr(out, "model sympy-l1h0"));
	CHECK(out && strstr(out, "uncalibrated models: fpx"));
	printf("%s", out ? out : "");
	free(out);
	/* the same as JSON, valid */
	out = kvt_test_sh(&rc,
			  "%s --socket %s --json tiers | /usr/bin/python3 -c 'import json,sys; "
			  "print(json.load(sys.stdin)[0][\"calibration_error\"])'",
			  kvtierctl, sock);
	CHECK(rc == 0 && out && strstr(out, "not the one of its name") &&
	      strstr(out, "checksum mismatch"));
	free(out);
	/* nothing lost: the files are as they were */
	CHECK_EQ(stat(good, &st1), 0);
	CHECK_EQ(st1.st_size, st0.st_size);
	out = kvt_test_sh(&rc, "cmp %s %s && cmp %s %s && echo same", good, bad, keep, other);
	CHECK(rc == 0 && out && strstr(out, "same"));
	free(out);
	CHECK_EQ(daemon_stop(pid), 0);
	unlink(other);
	unlink(bad);
	CHECK_EQ(rename(keep, good), 0);
}

static const struct kvt_test_case tests[] = {
    {"too_few", test_too_few},		 {"calibrate_pick", test_calibrate_pick},
    {"from_nvme", test_from_nvme},	 {"in_background", test_in_background},
    {"corrupt_file", test_corrupt_file}, {"host_auto", test_host_auto},
};

int main(int argc, char **argv)
{
	const char *data = getenv("KVT_TEST_DATA");
	char path[400];
	int ran;

	if (argc < 3) {
		fprintf(stderr, "usage: test_codec_auto KVTIERD KVTIERCTL [TEST...]\n");
		return 2;
	}
	kvtierd = argv[1];
	kvtierctl = argv[2];
	snprintf(path, sizeof(path), "%s/sympy_l1h0_q128.kvd", data ? data : "tests/data");
	if (kvd_load(path, &kd)) {
		fprintf(stderr, "test_codec_auto: cannot load %s\n", path);
		return 1;
	}
	lay_model.n_layers = kd.n_layers;
	lay_model.n_kv_heads = kd.n_kv_heads;
	lay_model.head_dim = kd.head_dim;
	nb = kd.n_tokens / T;
	bb = kvt_layout_block_bytes(&lay_model);
	if (nb > 64 || !kd.n_q_pos)
		return 1;
	blks = malloc(bb * nb);
	for (uint32_t i = 0; i < nb; i++)
		kvd_block_io(&kd, kd.k, kd.v, i * T, T, blks + i * bb / 2, 1);
	kvt_test_make_keys(&lay_model, 15, keys, (int)nb);
	snprintf(dir, sizeof(dir), "/tmp/kvtier-auto-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	snprintf(sock, sizeof(sock), "%s/kvtier.sock", dir);
	snprintf(state, sizeof(state), "%s/state", dir);
	mkdir(state, 0700);
	snprintf(state_opt, sizeof(state_opt), "daemon.state_dir=%s", state);
	snprintf(nvme_opt, sizeof(nvme_opt), "nvme.paths=%s/nvme.slots", dir);
	ran = kvt_test_run_cases(tests, sizeof(tests) / sizeof(tests[0]), argv + 3, argc - 3,
				 &cur_daemon, NULL);
	free(blks);
	kvd_free(&kd);
	return kvt_test_finish(dir, ran);
}
