/* SPDX-License-Identifier: MIT */
/*
 * kvtier-decode-replay: decode steps of a real KV dump against a daemon whose host tier holds
 * a fraction of the context, with the rest on NVMe, run without and with the prefetch
 * predictor, for each host tier size asked (--host 0.25,0.35,0.5: one daemon each, the runs
 * of one size side by side).  Each step selects its sparse-attention blocks from the dump's
 * real queries (kvt_pred_select, every layer), reads them with kvt_get (a demand get: the
 * "stall"), and in the prefetch run asks the daemon for the blocks predicted for the next step
 * (kvt_pred_predict_next, then kvt_pred_prefetch_plan under the budget that
 * kvt_pred_set_room() takes from the host tier's capacity, then kvt_prefetch) before the
 * simulated compute of the step; --unbudgeted adds a run that asks for every predicted block
 * (kvt_pred_prefetch_list), as before the budget.  Reports the share of demand gets served
 * from the host tier and the stall time, and checks every block it reads bit for bit.
 *
 * usage: kvtier-decode-replay [options] DUMP.kvd   (see --help)
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "kvd.h"
#include "kvtier.h"

#define MAX_HOSTS 8

struct opts {
	const char *daemon, *ctl, *dump;
	const char *host_codec; /* host.codec of the daemons (NULL: raw) */
	uint32_t block;
	double budget, host_frac[MAX_HOSTS], room_frac;
	int n_host;
	uint32_t margin, step_us, steps, deadline_us;
	int json, unbudgeted, deadline_set;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static char tmpdir[128], rundir[160], sockpath[200];

static int ctl(const struct opts *o, const char *cmd)
{
	char line[4600];
	int n =
	    snprintf(line, sizeof(line), "%s --socket %s %s > /dev/null", o->ctl, sockpath, cmd);

	if (n < 0 || (size_t)n >= sizeof(line))
		return -1;
	return system(line);
}

static pid_t start_daemon(const struct opts *o, uint64_t host_bytes)
{
	char cap[64], paths[300], hc[200];
	pid_t pid;

	snprintf(hc, sizeof(hc), "host.codec=%s", o->host_codec ? o->host_codec : "raw");
	snprintf(cap, sizeof(cap), "host.capacity=%lluMiB",
		 (unsigned long long)((host_bytes + (1 << 20) - 1) >> 20));
	snprintf(paths, sizeof(paths), "nvme.paths=%s/nvme0.slots", rundir);
	pid = fork();
	if (pid == 0) {
		/* Never outlive this program, however it ends. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		execl(o->daemon, o->daemon, "-f", "-s", sockpath, "-o", cap, "-o",
		      "nvme.enabled=true", "-o", paths, "-o", "nvme.capacity=512MiB", "-o",
		      "daemon.log_level=warn", "-o", hc, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		if (access(sockpath, F_OK) == 0)
			return pid;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	return -1;
}

struct run_result {
	const char *mode;
	double host_frac;
	uint64_t host_bytes;
	uint64_t steps, gets, host_hits, promotions, prefetch_useful, prefetch_late, prefetched;
	uint64_t deferred, expired;
	double stall_s, stall_p50_us, stall_p99_us;
	int wrong;
};

enum mode { MODE_NONE, MODE_PLAN, MODE_ALL };
static const char *const mode_name[] = {"no-prefetch", "prefetch", "prefetch-unbudgeted"};

/* The dump, cut into blocks, and what every run of it shares. */
struct replay {
	struct kvd d;
	uint32_t L, H, QH, D, T, nblk, P, steps;
	size_t blk_b;
	uint8_t *blocks; /* [nblk][blk_b] in the store's page-first order */
	/* what a get must return: the blocks, or with a lossy host.codec the chain's own
	 * decode of each (bit for bit) */
	uint8_t *expect;
	size_t stored_b; /* host bytes a block takes (its record's pages with a host.codec) */
	uint16_t *kblk;	 /* [nblk][L][H][T][D]: keys as the predictor digests them */
	uint32_t *tok;
};

/* One run (mode) against the daemon at sockpath: c, lid and keys are connected, registered
 * and stored; pred holds the digests of every block. */
static void run_mode(const struct opts *o, struct replay *rp, struct kvt_client *c, int lid,
		     const struct kvt_key *keys, struct kvt_pred *pred, enum mode mode,
		     struct run_result *r)
{
	const struct kvd *d = &rp->d;
	const uint32_t L = rp->L, QH = rp->QH, D = rp->D, T = rp->T, nblk = rp->nblk, P = rp->P;
	const uint32_t steps = rp->steps;
	const size_t blk_b = rp->blk_b;
	uint32_t rows = kvt_pred_rows(pred);
	size_t sel_cap = (size_t)rows * (nblk + 8);
	uint32_t *sel = malloc(sizeof(uint32_t) * sel_cap),
		 *plist = malloc(sizeof(uint32_t) * (nblk + 64));
	uint8_t *want = malloc(nblk), *buf = malloc(blk_b);
	uint16_t *q = malloc(sizeof(uint16_t) * QH * D);
	double *stalls = malloc(sizeof(double) * steps);
	struct kvt_key *pkeys = malloc(sizeof(*pkeys) * (nblk + 64));
	struct kvt_stats s0 = {.size = sizeof(s0)}, s1 = {.size = sizeof(s1)};
	struct kvt_pred_counters pc = {0};

	r->mode = mode_name[mode];
	/* Start each run with the whole context on NVMe only. */
	ctl(o, "writeback");
	usleep(300000);
	ctl(o, "evict --all");
	kvt_pred_truncate(pred, nblk); /* drops pending predictions and requests */
	kvt_pred_reset_counters(pred);
	kvt_stats(c, &s0);
	for (uint32_t st = 0; st < steps; st++) {
		uint32_t pos = P - steps + st, t = d->n_tokens - P + pos, ntok = t + 1;
		uint32_t ctx_blocks = (ntok + T - 1) / T;
		uint32_t budget = kvt_pred_budget(ctx_blocks, o->budget);
		double stall = 0;

		memset(want, 0, nblk);
		/* Unbudgeted, requests stay until a block is marked; the daemon knows what is
		 * resident, this client does not: every step asks again.  The plan's requests
		 * end by themselves when their layer has passed. */
		if (mode == MODE_ALL)
			for (uint32_t b = 0; b < nblk; b++)
				kvt_pred_set_resident(pred, b, 0);
		for (uint32_t l = 0; l < L; l++) {
			for (uint32_t j = 0; j < QH; j++)
				memcpy(q + (size_t)j * D,
				       d->q + (((size_t)l * QH + j) * P + pos) * D, D * 2);
			int n = kvt_pred_select(pred, l, q, ntok, budget, sel, sel_cap);
			for (int k = 0; n > 0 && k < (int)rows * n; k++) {
				if (sel[k] < nblk)
					want[sel[k]] = 1;
			}
			if (mode != MODE_NONE)
				kvt_pred_predict_next(pred, l, NULL, ntok, budget, o->margin, NULL,
						      0);
		}
		/* The demand gets of this step: what the engine reads before attention. */
		for (uint32_t b = 0; b < nblk; b++) {
			if (!want[b])
				continue;
			double t0 = now_s();
			ssize_t g = kvt_get(c, lid, &keys[b], buf, blk_b);
			stall += now_s() - t0;
			r->gets++;
			if (g != (ssize_t)blk_b || memcmp(buf, rp->expect + b * blk_b, blk_b) != 0)
				r->wrong++;
		}
		if (mode != MODE_NONE) {
			int n = mode == MODE_PLAN ? kvt_pred_prefetch_plan(pred, plist, nblk + 64)
						  : kvt_pred_prefetch_list(pred, plist, nblk + 64),
			    m = 0;
			/* The next step may reach a block the dump has no full copy of. */
			for (int k = 0; k < n; k++) {
				if (plist[k] < nblk)
					pkeys[m++] = keys[plist[k]];
			}
			/* In the plan's order: the daemon starts them first come, first served.
			 * One not started within the step's compute would only compete with the
			 * next step's demand reads: the daemon drops it. */
			if (m > 0)
				kvt_prefetch(c, lid, pkeys, (size_t)m, 3, o->deadline_us);
			r->prefetched += (uint64_t)m;
		}
		stalls[st] = stall * 1e6;
		r->stall_s += stall;
		r->steps++;
		usleep(o->step_us); /* the step's compute, during which prefetches land */
	}
	kvt_stats(c, &s1);
	kvt_pred_get_counters(pred, &pc, sizeof(pc));
	r->deferred = pc.deferred;
	r->expired = pc.expired;
	r->host_hits = s1.host_hits - s0.host_hits;
	r->promotions = s1.promotions - s0.promotions;
	r->prefetch_useful = s1.prefetch_useful - s0.prefetch_useful;
	r->prefetch_late = s1.prefetch_late - s0.prefetch_late;
	qsort(stalls, steps, sizeof(double), cmp_double);
	r->stall_p50_us = stalls[steps / 2];
	r->stall_p99_us = stalls[(size_t)((steps - 1) * 0.99)];
	free(sel);
	free(plist);
	free(want);
	free(buf);
	free(q);
	free(stalls);
	free(pkeys);
}

/* Every mode at one host tier size, on a daemon of its own.  Returns the runs written to res,
 * or -1. */
static int run_host(const struct opts *o, struct replay *rp, int hi, struct run_result *res)
{
	const uint32_t L = rp->L, H = rp->H, D = rp->D, T = rp->T, nblk = rp->nblk;
	const size_t blk_b = rp->blk_b;
	struct kvt_client *c = NULL;
	struct kvt_pred *pred = NULL;
	struct kvt_key *keys = NULL;
	struct kvt_stats st = {.size = sizeof(st)};
	int nres = -1;

	snprintf(rundir, sizeof(rundir), "%s/h%d", tmpdir, hi);
	snprintf(sockpath, sizeof(sockpath), "%s/sock", rundir);
	if (mkdir(rundir, 0700) < 0)
		return -1;
	uint64_t host_bytes = (uint64_t)(o->host_frac[hi] * (double)(blk_b * nblk));
	if (host_bytes < (4u << 20))
		host_bytes = 4u << 20;
	pid_t dpid = start_daemon(o, host_bytes);
	if (dpid < 0) {
		fprintf(stderr, "kvtier-decode-replay: cannot start %s\n", o->daemon);
		return -1;
	}
	struct kvt_connect_opts co = {.size = sizeof(co),
				      .socket_path = sockpath,
				      .name = "decode-replay",
				      .timeout_ms = 10000};
	if (kvt_connect(&co, &c) < 0)
		goto out;
	struct kvt_layout lay = {sizeof(lay), L, H, D, T, KVT_DTYPE_FP16, 0, 0, 1, ""};
	snprintf(lay.model_id, sizeof(lay.model_id), "replay:%.50s", rp->d.source);
	int lid = kvt_register_layout(c, &lay);
	keys = calloc(nblk, sizeof(*keys));
	kvt_key_chain(kvt_layout_fingerprint(&lay), T, NULL, rp->tok, (size_t)nblk * T, keys, nblk);
	for (uint32_t b = 0; b < nblk; b++) {
		if (kvt_put(c, lid, &keys[b], rp->blocks + b * blk_b, blk_b) < 0)
			goto out;
	}

	struct kvt_pred_opts po;
	memset(&po, 0, sizeof(po));
	po.size = sizeof(po);
	po.n_layers = L;
	po.n_kv_heads = H;
	po.n_q_heads = rp->QH;
	po.head_dim = D;
	po.block_tokens = T;
	po.rope_theta = 10000.0f;
	if (kvt_pred_create(&po, &pred) < 0)
		goto out;
	for (uint32_t b = 0; b < nblk; b++)
		kvt_pred_add_block(pred, b, rp->kblk + (size_t)b * L * H * T * D, T);
	/* The budget: the host tier's room as the daemon reports it (one sequence here). */
	if (kvt_stats(c, &st) < 0 ||
	    kvt_pred_set_room(pred, st.host_capacity_bytes, rp->stored_b, o->room_frac) < 0)
		goto out;

	nres = 0;
	for (int m = MODE_NONE; m <= MODE_ALL; m++) {
		if (m == MODE_ALL && !o->unbudgeted)
			continue;
		memset(&res[nres], 0, sizeof(res[nres]));
		res[nres].host_frac = o->host_frac[hi];
		res[nres].host_bytes = host_bytes;
		run_mode(o, rp, c, lid, keys, pred, (enum mode)m, &res[nres]);
		nres++;
	}
out:
	kvt_pred_destroy(pred);
	kvt_close(c);
	free(keys);
	kill(dpid, SIGTERM);
	waitpid(dpid, NULL, 0);
	return nres;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {{"daemon", required_argument, NULL, 'd'},
					   {"ctl", required_argument, NULL, 'c'},
					   {"block", required_argument, NULL, 'b'},
					   {"budget", required_argument, NULL, 'B'},
					   {"host", required_argument, NULL, 'H'},
					   {"room", required_argument, NULL, 'r'},
					   {"unbudgeted", no_argument, NULL, 'u'},
					   {"margin", required_argument, NULL, 'm'},
					   {"step-us", required_argument, NULL, 's'},
					   {"deadline-us", required_argument, NULL, 'D'},
					   {"steps", required_argument, NULL, 'n'},
					   {"json", no_argument, NULL, 'j'},
					   {"host-codec", required_argument, NULL, 'C'},
					   {"help", no_argument, NULL, 'h'},
					   {NULL, 0, NULL, 0}};
	struct opts o = {.block = 64,
			 .budget = 0.10,
			 .host_frac = {0.25},
			 .n_host = 1,
			 .margin = 2,
			 .step_us = 2000};
	static char dpath[4096], cpath[4096];
	struct replay rp;
	struct run_result res[MAX_HOSTS * 3];
	int opt, ret = 1, nres = 0;

	while ((opt = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (opt) {
		case 'd':
			o.daemon = optarg;
			break;
		case 'c':
			o.ctl = optarg;
			break;
		case 'b':
			o.block = (uint32_t)atoi(optarg);
			break;
		case 'B':
			o.budget = atof(optarg);
			break;
		case 'H': {
			char *save = NULL, *tokn;
			o.n_host = 0;
			for (tokn = strtok_r(optarg, ",", &save); tokn;
			     tokn = strtok_r(NULL, ",", &save)) {
				if (o.n_host == MAX_HOSTS) {
					fprintf(stderr, "kvtier-decode-replay: at most %d sizes\n",
						MAX_HOSTS);
					return 2;
				}
				o.host_frac[o.n_host] = atof(tokn);
				if (!(o.host_frac[o.n_host] > 0)) {
					fprintf(stderr, "kvtier-decode-replay: bad --host %s\n",
						tokn);
					return 2;
				}
				o.n_host++;
			}
			break;
		}
		case 'r':
			o.room_frac = atof(optarg);
			break;
		case 'u':
			o.unbudgeted = 1;
			break;
		case 'm':
			o.margin = (uint32_t)atoi(optarg);
			break;
		case 's':
			o.step_us = (uint32_t)atoi(optarg);
			break;
		case 'n':
			o.steps = (uint32_t)atoi(optarg);
			break;
		case 'D':
			o.deadline_us = (uint32_t)atoi(optarg);
			o.deadline_set = 1;
			break;
		case 'j':
			o.json = 1;
			break;
		case 'C':
			o.host_codec = optarg;
			break;
		case 'h':
			printf(
			    "usage: kvtier-decode-replay [options] DUMP.kvd\n"
			    "  --daemon PATH   kvtierd (default: ../daemon/kvtierd next to this "
			    "program)\n"
			    "  --ctl PATH      kvtierctl (default: ../client/kvtierctl)\n"
			    "  --block N       tokens per block (64)\n"
			    "  --budget F      sparse-attention budget, fraction of blocks (0.10)\n"
			    "  --host F[,F..]  host tier sizes, fractions of the dump's KV bytes, "
			    "one "
			    "daemon each (0.25)\n"
			    "  --room F        share of the host tier that outstanding prefetches "
			    "may "
			    "hold (kvt_pred_set_room; 0 = its default)\n"
			    "  --unbudgeted    also run prefetch of every predicted block "
			    "(kvt_pred_prefetch_list)\n"
			    "  --margin N      extra blocks predicted per row (2)\n"
			    "  --step-us N     compute time of a decode step, simulated (2000)\n"
			    "  --deadline-us N prefetches not started within N us are dropped by "
			    "the "
			    "daemon (default: --step-us; 0 = never)\n"
			    "  --steps N       decode steps (default: every query position)\n"
			    "  --host-codec C  the daemons' host.codec (a compressed host tier, "
			    "e.g. "
			    "bq): gets are\n"
			    "                  checked against the chain's own decode of each "
			    "block, "
			    "the\n"
			    "                  prefetch budget counts blocks at their records' "
			    "size\n"
			    "  --json          JSON output\n");
			return 0;
		default:
			return 2;
		}
	}
	if (optind != argc - 1 || !o.block || o.budget <= 0 || !(o.room_frac >= 0) ||
	    o.room_frac > 1) {
		fprintf(stderr, "usage: kvtier-decode-replay [options] DUMP.kvd (--help)\n");
		return 2;
	}
	o.dump = argv[optind];
	if (!o.deadline_set)
		o.deadline_us = o.step_us;
	{
		char self[4000];
		ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
		self[n > 0 ? n : 0] = 0;
		char *slash = strrchr(self, '/');
		if (slash)
			*slash = 0;
		snprintf(dpath, sizeof(dpath), "%s/../daemon/kvtierd", self);
		snprintf(cpath, sizeof(cpath), "%s/../client/kvtierctl", self);
		if (!o.daemon)
			o.daemon = dpath;
		if (!o.ctl)
			o.ctl = cpath;
	}
	memset(&rp, 0, sizeof(rp));
	if (kvd_load(o.dump, &rp.d) < 0) {
		fprintf(stderr, "kvtier-decode-replay: cannot read %s\n", o.dump);
		return 1;
	}
	const struct kvd *d = &rp.d;
	const uint32_t L = d->n_layers, H = d->n_kv_heads, D = d->head_dim;
	const uint32_t T = o.block, nblk = d->n_tokens / T, P = d->n_q_pos;
	const size_t head_b = (size_t)T * D * 2, layer_b = 2 * H * head_b, blk_b = L * layer_b;
	if (!nblk || !P) {
		fprintf(stderr, "kvtier-decode-replay: the dump needs a full block and queries\n");
		kvd_free(&rp.d);
		return 1;
	}
	rp.L = L;
	rp.H = H;
	rp.QH = d->n_q_heads;
	rp.D = D;
	rp.T = T;
	rp.nblk = nblk;
	rp.P = P;
	rp.blk_b = blk_b;
	rp.steps = o.steps && o.steps < P ? o.steps : P;

	/* Blocks in the store's page-first order, and their keys as the predictor digests them. */
	rp.blocks = malloc(blk_b * nblk);
	rp.kblk = malloc((size_t)L * H * T * D * 2 * nblk);
	for (uint32_t b = 0; b < nblk; b++) {
		for (uint32_t l = 0; l < L; l++) {
			for (uint32_t h = 0; h < H; h++) {
				uint8_t *dst = rp.blocks + b * blk_b + l * layer_b + h * head_b;
				memcpy(dst, kvd_at(d, d->k, l, h, b * T), head_b);
				memcpy(dst + H * head_b, kvd_at(d, d->v, l, h, b * T), head_b);
				memcpy(rp.kblk + (((size_t)b * L + l) * H + h) * T * D,
				       kvd_at(d, d->k, l, h, b * T), head_b);
			}
		}
	}
	/* A compressed host tier: a get returns the chain's decode of the block put (at first
	 * token 0, as kvt_put tells none), and a block takes its record's pages. */
	rp.expect = rp.blocks;
	rp.stored_b = blk_b;
	if (o.host_codec && strcmp(o.host_codec, "raw")) {
		struct kvt_codec_geom g = {L, H, D, T, KVT_DTYPE_FP16, 0};
		struct kvt_chain *ch = NULL;
		size_t cap = 0, pages = 0;
		uint8_t *rec = NULL;

		if (kvt_chain_parse(o.host_codec, &ch) < 0 ||
		    !(cap = kvt_chain_max_encoded_size(ch, &g)) || !(rec = malloc(cap)) ||
		    !(rp.expect = malloc(blk_b * nblk))) {
			fprintf(stderr, "kvtier-decode-replay: bad --host-codec %s\n",
				o.host_codec);
			goto out;
		}
		for (uint32_t b = 0; b < nblk; b++) {
			ssize_t n =
			    kvt_chain_encode(ch, &g, rp.blocks + b * blk_b, blk_b, rec, cap);

			if (n < 0 || kvt_chain_decode(ch, rec, (size_t)n, rp.expect + b * blk_b,
						      blk_b, NULL) != (ssize_t)blk_b)
				goto out;
			pages += ((size_t)n + 4095) / 4096;
		}
		rp.stored_b = pages * 4096 / nblk;
		free(rec);
		kvt_chain_free(ch);
	}
	rp.tok = malloc(sizeof(uint32_t) * d->n_tokens);
	for (uint32_t t = 0; t < d->n_tokens; t++)
		rp.tok[t] = d->tokens[t];

	snprintf(tmpdir, sizeof(tmpdir), "/var/tmp/kvtier-decode-XXXXXX");
	if (!mkdtemp(tmpdir))
		goto out;
	ret = 0;
	for (int hi = 0; hi < o.n_host; hi++) {
		int n = run_host(&o, &rp, hi, res + nres);
		if (n < 0) {
			ret = 1;
			break;
		}
		nres += n;
	}

	if (o.json) {
		printf("[");
		for (int m = 0; m < nres; m++) {
			struct run_result *r = &res[m];
			printf(
			    "%s{\"mode\":\"%s\",\"block\":%u,\"budget\":%.3f,\"host_fraction\":%."
			    "3f,\"host_bytes\":%llu,\"room_fraction\":%.3f,\"deadline_us\":%u,"
			    "\"steps\":%llu,\"demand_gets\":%llu,\"served_from_host\":%.4f,"
			    "\"stall_ms_total\":%.3f,\"stall_us_p50\":%.1f,\"stall_us_p99\":%.1f,"
			    "\"nvme_reads\":%llu,\"prefetch_requests\":%llu,\"prefetch_useful\":%"
			    "llu,"
			    "\"prefetch_late\":%llu,\"prefetch_deferred\":%llu,"
			    "\"prefetch_expired\":%llu,\"wrong_blocks\":%d,\"host_codec\":\"%s\","
			    "\"host_block_bytes\":%zu}",
			    m ? "," : "", r->mode, T, o.budget, r->host_frac,
			    (unsigned long long)r->host_bytes, o.room_frac, o.deadline_us,
			    (unsigned long long)r->steps, (unsigned long long)r->gets,
			    r->gets ? (double)r->host_hits / (double)r->gets : 0, r->stall_s * 1e3,
			    r->stall_p50_us, r->stall_p99_us, (unsigned long long)r->promotions,
			    (unsigned long long)r->prefetched,
			    (unsigned long long)r->prefetch_useful,
			    (unsigned long long)r->prefetch_late, (unsigned long long)r->deferred,
			    (unsigned long long)r->expired, r->wrong,
			    o.host_codec ? o.host_codec : "raw", rp.stored_b);
		}
		printf("]\n");
	} else {
		printf("%s: %u blocks of %u tokens (%.1f MiB), budget %.0f%%, %u steps, %u us "
		       "compute per step\n",
		       d->source, nblk, T, (double)(blk_b * nblk) / (1 << 20), o.budget * 100,
		       rp.steps, o.step_us);
		printf("%5s %-20s %8s %10s %12s %10s %10s %8s %8s %8s %6s\n", "host", "mode",
		       "gets", "from host", "stall ms", "p50 us", "p99 us", "nvme rd", "asked",
		       "useful", "wrong");
		for (int m = 0; m < nres; m++) {
			struct run_result *r = &res[m];
			printf("%4.0f%% %-20s %8llu %9.1f%% %12.2f %10.1f %10.1f %8llu %8llu %8llu "
			       "%6d\n",
			       r->host_frac * 100, r->mode, (unsigned long long)r->gets,
			       r->gets ? 100.0 * (double)r->host_hits / (double)r->gets : 0,
			       r->stall_s * 1e3, r->stall_p50_us, r->stall_p99_us,
			       (unsigned long long)r->promotions, (unsigned long long)r->prefetched,
			       (unsigned long long)r->prefetch_useful, r->wrong);
		}
	}
	for (int m = 0; m < nres; m++)
		if (res[m].wrong)
			ret = 1;
	{
		char cmd[300];
		snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
		if (system(cmd) != 0)
			ret = 1;
	}
out:
	if (rp.expect != rp.blocks)
		free(rp.expect);
	free(rp.blocks);
	free(rp.kblk);
	free(rp.tok);
	kvd_free(&rp.d);
	return ret;
}
