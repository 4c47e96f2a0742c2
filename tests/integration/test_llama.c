/* SPDX-License-Identifier: MIT */
/*
 * test_llama.c - kvtier inside llama.cpp (client/llama), on the real libllama and a real
 * kvtierd with an NVMe tier, on small random-weight Llama GGUFs written at test time by
 * client/llama/gguf_writer.py.
 *
 *   test_llama KVTIERD KVTIERCTL PYTHON3 GGUF_WRITER.py [--seed N]
 *
 * What a user relies on, checked for a full hit, a partial hit and after a daemon restart
 * with the blocks on NVMe:
 *   - next-token logits with a restored prefix are BIT-IDENTICAL to evaluating the same
 *     prompt without kvtier in the same batches (the prefix, then the rest: kvt_llama_eval);
 *   - and within TOL_ABS of one full prefill of the whole prompt in one batch (a different
 *     batch split sums in another order: float rounding, nothing more);
 * and that nothing wrong is ever restored: a block evicted between lookup and get, a block of
 * the wrong size, another geometry, a daemon that is down; a libllama of another version and
 * a cache type the library cannot store are refused with a clear message.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "kvtier.h"
#include "kvtier_llama.h"

/* One full prefill vs the restored prefix + rest: largest allowed |logit difference|, relative
 * to the largest |logit|.  Seen: up to 0.0015 (ggml's batch of 44 tokens and its batch of 300
 * convert and sum in different orders); the same batches are bit-identical. */
#define TOL_REL 1e-2f
/* A restore from a compressed (bq) host tier, of one full prefill: bq's error moves the logits
 * (seen: 0.008). */
#define TOL_BQ	5e-2f
#define N_BATCH 512

static const char *kvtierd, *kvtierctl, *python, *writer;
static char dir[256], sock[300], nvme_opt[320];
static pid_t daemon_pid;
static const char *daemon_extra; /* one more -o option of the daemon, or NULL */

static pid_t daemon_start(void)
{
	const char *argv[] = {kvtierd, "-f",
			      "-s",    sock,
			      "-o",    "host.capacity=64MiB",
			      "-o",    "daemon.log_level=warn",
			      "-o",    "nvme.enabled=true",
			      "-o",    nvme_opt,
			      "-o",    "nvme.capacity=64MiB",
			      NULL,    NULL,
			      NULL};
	const size_t n = sizeof(argv) / sizeof(argv[0]);
	pid_t pid;

	if (daemon_extra) {
		argv[n - 3] = "-o";
		argv[n - 2] = daemon_extra;
	}
	unlink(sock);
	pid = kvt_test_daemon_start(argv, NULL, NULL); /* serving: kvtierd --ready-fd */
	daemon_pid = pid > 0 ? pid : 0;
	return pid;
}

static void daemon_stop(void)
{
	if (daemon_pid > 0)
		kvt_test_daemon_stop(daemon_pid);
	daemon_pid = 0;
}

/* The value of metric name in `kvtierctl --json status`, or -1. */
static long long ctl_metric(const char *name)
{
	char cmd[600];
	int rc;
	snprintf(cmd, sizeof(cmd), "%s -s %s --json status", kvtierctl, sock);
	char *out = kvt_test_run(&rc, cmd);
	long long v = rc == 0 ? kvt_test_json_num(out, name) : -1;
	free(out);
	return v;
}

/* Waits until kvtierd has read its NVMe tier back (`kvtierctl ping` says "ok", not
 * "recovering"): it serves at once, and its NVMe blocks appear as recovery reaches them. */
static int wait_recovered(void)
{
	char cmd[600];
	int rc;
	snprintf(cmd, sizeof(cmd), "%s -s %s ping 2>&1", kvtierctl, sock);
	for (int i = 0; i < 6000; i++) {
		char *out = kvt_test_run(&rc, cmd);
		int ok = rc == 0 && out && strstr(out, "ok") && !strstr(out, "recovering");
		free(out);
		if (ok)
			return 0;
		usleep(10000);
	}
	return -1;
}

static int ctl(const char *args)
{
	char cmd[600];
	int rc;
	snprintf(cmd, sizeof(cmd), "%s -s %s %s", kvtierctl, sock, args);
	free(kvt_test_run(&rc, cmd));
	return rc;
}

/* ---------------------------------------------------------------------------------------
 * Models and contexts
 */
struct model {
	char path[300];
	struct llama_model *m;
};

static int make_model(struct model *md, const char *name, const char *geometry, unsigned seed)
{
	char cmd[1200];
	int rc;

	snprintf(md->path, sizeof(md->path), "%s/%s.gguf", dir, name);
	snprintf(cmd, sizeof(cmd), "%s %s random %s %s --seed %u --ctx 2048 2>&1", python, writer,
		 md->path, geometry, seed);
	char *out = kvt_test_run(&rc, cmd);
	if (rc != 0) {
		fprintf(stderr, "gguf_writer failed (%d): %s\n", rc, out ? out : "");
		free(out);
		return -1;
	}
	free(out);
	md->m = llama_model_load_from_file(md->path, llama_model_default_params());
	return md->m ? 0 : -1;
}

static struct llama_context *new_ctx_fa(struct llama_model *m, int type_k, int fa)
{
	struct llama_context_params cp = llama_context_default_params();
	cp.n_ctx = 1024;
	cp.n_batch = cp.n_ubatch = N_BATCH;
	cp.n_seq_max = 1;
	cp.n_threads = cp.n_threads_batch = 2;
	if (type_k >= 0) {
		cp.type_k = cp.type_v = (enum ggml_type)type_k;
		cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
	}
	if (fa == 0)
		cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
	return llama_init_from_model(m, cp);
}

static struct llama_context *new_ctx(struct llama_model *m, int type_k)
{
	return new_ctx_fa(m, type_k, -1);
}

static struct kvt_llama *open_kl(struct llama_context *ctx, const struct model *md,
				 const char *model_id, char *err, size_t el, int *rc)
{
	struct kvt_llama_opts o = {.size = sizeof(o),
				   .socket_path = sock,
				   .model_path = md->path,
				   .model_id = model_id,
				   .n_batch = N_BATCH,
				   .timeout_ms = 20000,
				   .err = err,
				   .err_len = el};
	struct kvt_llama *kl = NULL;
	*rc = kvt_llama_open(ctx, &o, &kl);
	return kl;
}

static float *logits_copy(struct llama_context *ctx, int n_vocab)
{
	float *l = malloc((size_t)n_vocab * sizeof(float));
	if (l)
		memcpy(l, llama_get_logits_ith(ctx, -1), (size_t)n_vocab * sizeof(float));
	return l;
}

/* Logits of evaluating p without kvtier: p[0..split) then p[split..n) (split 0: one go). */
static float *reference(struct llama_context *ref, const llama_token *p, size_t n, size_t split,
			int n_vocab)
{
	llama_memory_seq_rm(llama_get_memory(ref), 0, -1, -1);
	if (split && kvt_llama_eval(ref, 0, p, split, 0, N_BATCH) < 0)
		return NULL;
	if (kvt_llama_eval(ref, 0, p + split, n - split, (llama_pos)split, N_BATCH) < 0)
		return NULL;
	return logits_copy(ref, n_vocab);
}

static float max_diff(const float *a, const float *b, int n)
{
	float m = 0;
	for (int i = 0; i < n; i++)
		if (fabsf(a[i] - b[i]) > m)
			m = fabsf(a[i] - b[i]);
	return m;
}

static struct model mA, mB;
static int n_vocab;
static llama_token P[300], Q[350], R[200];
static unsigned seed;

static void fill(llama_token *t, size_t n, unsigned s)
{
	for (size_t i = 0; i < n; i++) {
		s = s * 1103515245u + 12345u;
		t[i] = (llama_token)((s >> 16) % (unsigned)n_vocab);
	}
}

/* prefill with kvtier, then compare with the reference split at what was restored. */
static int check_prefill(struct kvt_llama *kl, struct llama_context *ctx, struct llama_context *ref,
			 const llama_token *p, size_t n, uint32_t want_restored, const char *what)
{
	struct kvt_llama_result r = {.size = sizeof(r)};
	int rc = kvt_llama_prefill(kl, p, n, &r);
	if (rc < 0) {
		fprintf(stderr, "%s: kvt_llama_prefill: %s\n", what, kvt_strerror(rc));
		return -1;
	}
	printf("%s: %u tokens, restored %u, evaluated %u, stored %u blocks%s%s\n", what, r.n_tokens,
	       r.n_restored, r.n_evaluated, r.blocks_stored, r.kvtier ? " -- kvtier: " : "",
	       r.kvtier ? kvt_llama_last_message(kl) : "");
	if (r.n_restored != want_restored) {
		fprintf(stderr, "%s: restored %u tokens, expected %u\n", what, r.n_restored,
			want_restored);
		return -1;
	}
	float *got = logits_copy(ctx, n_vocab);
	float *same = reference(ref, p, n, r.n_restored, n_vocab);
	float *full = reference(ref, p, n, 0, n_vocab);
	int bad = !got || !same || !full;
	if (!bad && memcmp(got, same, (size_t)n_vocab * sizeof(float)) != 0) {
		fprintf(stderr, "%s: logits differ from the same batches without kvtier (max %g)\n",
			what, (double)max_diff(got, same, n_vocab));
		bad = 1;
	}
	if (!bad) {
		float d = max_diff(got, full, n_vocab), scale = 0;
		for (int i = 0; i < n_vocab; i++)
			scale = fabsf(full[i]) > scale ? fabsf(full[i]) : scale;

		printf("%s: bit-identical to prefix+rest without kvtier; max |diff| to one full "
		       "prefill %.3g = %.2g of max |logit| (tolerance %.0e)\n",
		       what, (double)d, (double)(d / scale), (double)TOL_REL);
		if (!(d <= TOL_REL * scale)) {
			fprintf(stderr, "%s: %g from one full prefill\n", what, (double)d);
			bad = 1;
		}
	}
	free(got);
	free(same);
	free(full);
	return bad ? -1 : 0;
}

/* ---------------------------------------------------------------------------------------
 * Tests
 */
static void test_version_refused(void)
{
	char err[512] = "";
	CHECK_EQ(
	    kvt_llama_check_version(llama_version(), LLAMA_STATE_SEQ_VERSION, err, sizeof(err)), 0);
	CHECK_EQ(kvt_llama_check_version("0.3.9", LLAMA_STATE_SEQ_VERSION, err, sizeof(err)),
		 -KVT_EVERSION);
	printf("version 0.3.9 refused: %s\n", err);
	CHECK(strstr(err, "0.3.9") && strstr(err, kvt_llama_supported_version()));
	CHECK_EQ(kvt_llama_check_version(llama_version(), 4, err, sizeof(err)), -KVT_EVERSION);
	CHECK(strstr(err, "format 4"));
}

static void test_quantized_cache_refused(void)
{
	char err[512] = "";
	int rc;
	struct llama_context *ctx = new_ctx(mA.m, 8 /* GGML_TYPE_Q8_0 */);
	CHECK(ctx);
	struct kvt_llama *kl = open_kl(ctx, &mA, NULL, err, sizeof(err), &rc);
	printf("q8_0 cache refused: %s\n", err);
	llama_free(ctx);
	CHECK(kl == NULL);
	CHECK_EQ(rc, -ENOTSUP);
	CHECK(strstr(err, "f16"));
}

static struct llama_context *ctx, *ref;
static struct kvt_llama *kl;

static void test_full_and_partial_hit(void)
{
	char err[512] = "";
	int rc;
	struct kvt_llama_result r = {.size = sizeof(r)};

	kl = open_kl(ctx, &mA, NULL, err, sizeof(err), &rc);
	if (!kl)
		fprintf(stderr, "kvt_llama_open: %s\n", err);
	CHECK(kl);
	/* First time: nothing cached; everything evaluated, 4 full blocks stored. */
	CHECK_EQ(kvt_llama_prefill(kl, P, 300, &r), 0);
	CHECK_EQ(r.n_restored, 0);
	CHECK_EQ(r.blocks_stored, 4);
	CHECK_EQ(r.kvtier, 0);
	float *got = logits_copy(ctx, n_vocab), *full = reference(ref, P, 300, 0, n_vocab);
	CHECK(got && full && memcmp(got, full, (size_t)n_vocab * 4) == 0);
	free(got);
	free(full);
	/* Full hit: the 4 blocks (256 tokens) restored, 44 evaluated. */
	CHECK_EQ(check_prefill(kl, ctx, ref, P, 300, 256, "full hit"), 0);
	/* A prompt of exactly 4 blocks restores 3 (one token at least is evaluated). */
	CHECK_EQ(check_prefill(kl, ctx, ref, P, 256, 192, "full hit, whole blocks"), 0);
	/* Partial hit: Q shares P's first 200 tokens, i.e. 3 whole blocks. */
	memcpy(Q, P, 200 * sizeof(*Q));
	fill(Q + 200, 150, seed + 7);
	CHECK_EQ(check_prefill(kl, ctx, ref, Q, 350, 192, "partial hit"), 0);
	/* Q's new blocks 3 and 4 were stored by that call: now a full hit of 5 blocks. */
	CHECK_EQ(check_prefill(kl, ctx, ref, Q, 350, 320, "partial hit, second time"), 0);
}

/* A block evicted between the lookup and the gets: the restore stops before it. */
static int evict_block;
static struct kvt_layout evict_lay;
static void evict_after_lookup(void *arg, uint32_t n)
{
	struct kvt_client *c = kvt_test_connect(sock, "evictor", 5000);
	struct kvt_layout lay = evict_lay;
	struct kvt_key keys[8];
	(void)arg;
	(void)n;
	kvt_key_chain(kvt_layout_fingerprint(&lay), KVT_LLAMA_BLOCK_TOKENS, NULL,
		      (const uint32_t *)P, 256, keys, 4);
	if (c) {
		int l = kvt_register_layout(c, &lay);
		evict_block = kvt_delete(c, l, &keys[2]) == 0 ? 2 : -1;
		kvt_close(c);
	}
}

static void test_evicted_between_lookup_and_get(void)
{
	char err[512] = "";
	int rc;
	struct kvt_llama_opts o = {.size = sizeof(o),
				   .socket_path = sock,
				   .model_path = mA.path,
				   .n_batch = N_BATCH,
				   .err = err,
				   .err_len = sizeof(err),
				   .after_lookup = evict_after_lookup};
	struct kvt_llama *k2 = NULL;
	kvt_llama_layout(kl, &evict_lay);
	kvt_llama_close(kl);
	kl = NULL;
	llama_memory_seq_rm(llama_get_memory(ctx), 0, -1, -1);
	CHECK_EQ(kvt_llama_open(ctx, &o, &k2), 0);
	/* Lookup finds 4 blocks; block 2 is then deleted: blocks 0 and 1 restored. */
	rc = check_prefill(k2, ctx, ref, P, 300, 128, "block 2 evicted after the lookup");
	CHECK_EQ(evict_block, 2);
	kvt_llama_close(k2);
	CHECK_EQ(rc, 0);
	llama_memory_seq_rm(llama_get_memory(ctx), 0, -1, -1);
	kl = open_kl(ctx, &mA, NULL, err, sizeof(err), &rc);
	if (!kl)
		fprintf(stderr, "kvt_llama_open: %s\n", err);
	CHECK(kl);
	/* That prefill stored block 2 again (and the blocks after it were there). */
	CHECK_EQ(check_prefill(kl, ctx, ref, P, 300, 256, "after re-store"), 0);
}

/* Batches of one block (restore_batch 1): the gets run on a thread of their own, batches
 * ahead of the copies into the state.  A full hit; then block 2 evicted after the lookup:
 * the blocks read after it are not used, and the state shrinks to the two before it. */
static void test_batches_of_one(void)
{
	char err[512] = "";
	struct kvt_llama_opts o = {.size = sizeof(o),
				   .socket_path = sock,
				   .model_path = mA.path,
				   .n_batch = N_BATCH,
				   .err = err,
				   .err_len = sizeof(err),
				   .restore_batch = 1};
	struct kvt_llama *k2 = NULL;
	int rc;

	kvt_llama_layout(kl, &evict_lay);
	kvt_llama_close(kl);
	kl = NULL;
	llama_memory_seq_rm(llama_get_memory(ctx), 0, -1, -1);
	CHECK_EQ(kvt_llama_open(ctx, &o, &k2), 0);
	CHECK_EQ(check_prefill(k2, ctx, ref, P, 300, 256, "batches of one block"), 0);
	kvt_llama_close(k2);
	k2 = NULL;
	llama_memory_seq_rm(llama_get_memory(ctx), 0, -1, -1);
	o.after_lookup = evict_after_lookup;
	evict_block = -1;
	CHECK_EQ(kvt_llama_open(ctx, &o, &k2), 0);
	CHECK_EQ(check_prefill(k2, ctx, ref, P, 300, 128,
			       "batches of one block, block 2 evicted after the lookup"),
		 0);
	CHECK_EQ(evict_block, 2);
	kvt_llama_close(k2);
	llama_memory_seq_rm(llama_get_memory(ctx), 0, -1, -1);
	kl = open_kl(ctx, &mA, NULL, err, sizeof(err), &rc);
	if (!kl)
		fprintf(stderr, "kvt_llama_open: %s\n", err);
	CHECK(kl);
}

/* A block of the wrong size under a key of the layout: refused, never restored. */
static void test_wrong_block_refused(void)
{
	struct kvt_layout lay;
	struct kvt_key keys[3];
	struct kvt_client *c = kvt_test_connect(sock, "forger", 5000);
	struct kvt_llama_result r = {.size = sizeof(r)};
	CHECK(c);
	kvt_llama_layout(kl, &lay);
	fill(R, 200, seed + 99);
	kvt_key_chain(kvt_layout_fingerprint(&lay), KVT_LLAMA_BLOCK_TOKENS, NULL,
		      (const uint32_t *)R, 192, keys, 3);
	int l = kvt_register_layout(c, &lay);
	size_t half = kvt_layout_block_bytes(&lay) / 2;
	void *junk = calloc(1, half);
	CHECK(junk);
	CHECK_EQ(kvt_put(c, l, &keys[0], junk, half), 0);
	free(junk);
	kvt_close(c);
	CHECK_EQ(kvt_llama_prefill(kl, R, 200, &r), 0);
	printf("wrong-size block: restored %u, kvtier %d: %s\n", r.n_restored, r.kvtier,
	       kvt_llama_last_message(kl));
	CHECK_EQ(r.n_cached, 64);
	CHECK_EQ(r.n_restored, 0);
	CHECK_EQ(r.kvtier, -EBADMSG);
	CHECK(strstr(kvt_llama_last_message(kl), "bytes"));
	float *got = logits_copy(ctx, n_vocab), *full = reference(ref, R, 200, 0, n_vocab);
	CHECK(got && full && memcmp(got, full, (size_t)n_vocab * 4) == 0);
	free(got);
	free(full);
}

/* Model B: another geometry under the same model id: its keys differ, nothing restored. */
static void test_other_geometry(void)
{
	char err[512] = "";
	int rc;
	struct kvt_llama_result r = {.size = sizeof(r)};
	struct llama_context *cb = new_ctx(mB.m, -1), *cr = new_ctx(mB.m, -1), *ca = ctx;
	CHECK(cb && cr);
	struct kvt_llama *ka = open_kl(NULL, &mA, "same-name", err, sizeof(err), &rc);
	CHECK(ka == NULL && rc == -EINVAL);
	llama_memory_seq_rm(llama_get_memory(ca), 0, -1, -1);
	ka = open_kl(ca, &mA, "same-name", err, sizeof(err), &rc);
	struct kvt_llama *kb = open_kl(cb, &mB, "same-name", err, sizeof(err), &rc);
	CHECK(ka && kb);
	CHECK_EQ(kvt_llama_prefill(ka, P, 300, &r), 0);
	CHECK_EQ(r.blocks_stored, 4);
	CHECK_EQ(kvt_llama_prefill(kb, P, 300, &r), 0);
	printf("other geometry, same model id: restored %u\n", r.n_restored);
	CHECK_EQ(r.n_restored, 0);
	CHECK_EQ(r.blocks_stored, 4);
	float *got = logits_copy(cb, llama_vocab_n_tokens(llama_model_get_vocab(mB.m)));
	float *full = reference(cr, P, 300, 0, llama_vocab_n_tokens(llama_model_get_vocab(mB.m)));
	CHECK(got && full &&
	      memcmp(got, full, (size_t)llama_vocab_n_tokens(llama_model_get_vocab(mB.m)) * 4) ==
		  0);
	free(got);
	free(full);
	kvt_llama_close(ka);
	kvt_llama_close(kb);
	llama_free(cb);
	llama_free(cr);
}

/* Flash attention off: llama.cpp keeps V transposed; its own blocks, restored bit-identical. */
static void test_v_transposed(void)
{
	char err[512] = "";
	int rc;
	struct kvt_llama_result r = {.size = sizeof(r)};
	struct llama_context *c2 = new_ctx_fa(mA.m, -1, 0), *r2 = new_ctx_fa(mA.m, -1, 0);
	CHECK(c2 && r2);
	struct kvt_llama *k2 = open_kl(c2, &mA, NULL, err, sizeof(err), &rc);
	if (!k2)
		fprintf(stderr, "kvt_llama_open: %s\n", err);
	CHECK(k2);
	struct kvt_layout la, lb;
	kvt_llama_layout(kl, &la);
	kvt_llama_layout(k2, &lb);
	printf("flash attention on: \"%s\"; off: \"%s\"\n", la.model_id, lb.model_id);
	rc = strcmp(la.model_id, lb.model_id) != 0;
	if (rc) {
		/* Not the flash-attention context's blocks: P is evaluated and stored anew. */
		rc = kvt_llama_prefill(k2, P, 300, &r) == 0 && r.n_restored == 0 &&
		     r.blocks_stored == 4;
		rc = rc && check_prefill(k2, c2, r2, P, 300, 256, "V transposed, full hit") == 0;
		rc = rc && check_prefill(k2, c2, r2, Q, 350, 192, "V transposed, partial hit") == 0;
	}
	kvt_llama_close(k2);
	llama_free(c2);
	llama_free(r2);
	CHECK(rc);
}

/* Blocks flushed to NVMe, the daemon restarted: restored from NVMe, bit-identical. */
static void test_restart_nvme(void)
{
	struct kvt_stats st = {.size = sizeof(st)};
	CHECK_EQ(ctl("flush"), 0);
	daemon_stop();
	CHECK(daemon_start() > 0);
	CHECK_EQ(wait_recovered(), 0);
	long long rec = ctl_metric("nvme_recovered_total");
	printf("after restart: nvme_recovered_total %lld\n", rec);
	/* The same kvt_llama: libkvtier reconnects by itself. */
	CHECK_EQ(check_prefill(kl, ctx, ref, Q, 350, 320, "after restart, from NVMe"), 0);
	struct kvt_client *c = kvt_test_connect(sock, "stats", 5000);
	CHECK(c);
	CHECK_EQ(kvt_stats(c, &st), 0);
	kvt_close(c);
	printf("after restart: %llu blocks promoted from NVMe\n",
	       (unsigned long long)st.promotions);
	CHECK(st.promotions >= 5);
}

/* The daemon down: everything evaluated, the same logits as without kvtier. */
static void test_daemon_down(void)
{
	struct kvt_llama_result r = {.size = sizeof(r)};
	daemon_stop();
	CHECK_EQ(kvt_llama_prefill(kl, P, 300, &r), 0);
	printf("daemon down: restored %u, evaluated %u, kvtier %d (%s)\n", r.n_restored,
	       r.n_evaluated, r.kvtier, kvt_llama_last_message(kl));
	CHECK_EQ(r.n_restored, 0);
	CHECK_EQ(r.n_evaluated, 300);
	CHECK(r.kvtier < 0);
	float *got = logits_copy(ctx, n_vocab), *full = reference(ref, P, 300, 0, n_vocab);
	CHECK(got && full && memcmp(got, full, (size_t)n_vocab * 4) == 0);
	free(got);
	free(full);
	/* A fresh kvt_llama with no daemon at all opens, and evaluates. */
	char err[256];
	int rc;
	kvt_llama_close(kl);
	llama_memory_seq_rm(llama_get_memory(ctx), 0, -1, -1);
	kl = open_kl(ctx, &mA, NULL, err, sizeof(err), &rc);
	CHECK(kl);
	CHECK_EQ(kvt_llama_prefill(kl, P, 300, &r), 0);
	CHECK_EQ(r.n_evaluated, 300);
	/* The daemon back (blocks on NVMe): the next call reconnects and restores. */
	CHECK(daemon_start() > 0);
	CHECK_EQ(wait_recovered(), 0);
	CHECK_EQ(check_prefill(kl, ctx, ref, P, 300, 256, "daemon back"), 0);
}

/* A compressed host tier (host.codec = bq): the library hands whole blocks to kvt_put_at,
 * which encodes them (a reservation filled in place would be stored raw), and the leased
 * blocks are records, decoded before they go into the state.  bq is lossy: the logits are
 * within its error of one full prefill (copied as they are, the records would be garbage). */
static void test_compressed_host(void)
{
	static llama_token S[300];
	struct kvt_llama_result r = {.size = sizeof(r)};
	int rc;
	char cmd[600];

	daemon_stop();
	daemon_extra = "host.codec=bq";
	CHECK(daemon_start() > 0);
	CHECK_EQ(wait_recovered(), 0);
	fill(S, 300, seed + 9);
	CHECK_EQ(kvt_llama_prefill(kl, S, 300, &r), 0);
	CHECK_EQ(r.blocks_stored, 4);
	snprintf(cmd, sizeof(cmd), "%s -s %s --json tiers", kvtierctl, sock);
	char *out = kvt_test_run(&rc, cmd);
	long long enc = rc == 0 && out ? kvt_test_json_num(out, "encoded_blocks") : -1;
	free(out);
	printf("compressed host tier: %lld blocks encoded\n", enc);
	CHECK_EQ(enc, 4);
	CHECK_EQ(kvt_llama_prefill(kl, S, 300, &r), 0);
	printf("compressed host tier: restored %u, evaluated %u, kvtier %d %s\n", r.n_restored,
	       r.n_evaluated, r.kvtier, kvt_llama_last_message(kl));
	CHECK_EQ(r.n_restored, 256);
	CHECK_EQ(r.kvtier, 0);
	float *got = logits_copy(ctx, n_vocab), *full = reference(ref, S, 300, 0, n_vocab);
	CHECK(got && full);
	if (got && full) {
		float d = max_diff(got, full, n_vocab), scale = 0;
		int nonfinite = 0;
		for (int i = 0; i < n_vocab; i++) {
			scale = fabsf(full[i]) > scale ? fabsf(full[i]) : scale;
			nonfinite += !isfinite(got[i]); /* max_diff passes NaNs over */
		}
		CHECK_EQ(nonfinite, 0);
		printf("compressed host tier: max |diff| to one full prefill %.3g = %.2g of max "
		       "|logit| (tolerance %.0e)\n",
		       (double)d, (double)(d / scale), (double)TOL_BQ);
		CHECK(d <= TOL_BQ * scale);
	}
	free(got);
	free(full);
}

int main(int argc, char **argv)
{
	char cmd[400];
	int rc;

	if (argc < 5) {
		fprintf(stderr,
			"usage: test_llama KVTIERD KVTIERCTL PYTHON3 GGUF_WRITER.py [--seed N]\n");
		return 2;
	}
	kvtierd = argv[1];
	kvtierctl = argv[2];
	python = argv[3];
	writer = argv[4];
	seed = argc > 6 && !strcmp(argv[5], "--seed") ? (unsigned)strtoul(argv[6], NULL, 0)
						      : (unsigned)time(NULL);
	printf("seed %u (rerun with --seed %u)\n", seed, seed);
	snprintf(cmd, sizeof(cmd), "%s -c 'import numpy' 2>/dev/null", python);
	free(kvt_test_run(&rc, cmd));
	if (rc != 0) {
		printf(
		    "python3 with numpy is missing: gguf_writer.py cannot write the test models\n");
		return 77;
	}
	snprintf(dir, sizeof(dir), "/tmp/kvtier-llama-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	snprintf(sock, sizeof(sock), "%s/kvtier.sock", dir);
	snprintf(nvme_opt, sizeof(nvme_opt), "nvme.paths=%s/nvme0.slots", dir);
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	atexit(daemon_stop); /* also when a check ends the program early */
	kvt_llama_log_errors_only(0);
	if (kvt_llama_backend_init() < 0) {
		fprintf(stderr, "ggml has no backend\n");
		return 1;
	}
	if (make_model(&mA, "a", "--layers 2 --hidden 128 --heads 4 --kv-heads 2 --vocab 256",
		       seed) ||
	    make_model(&mB, "b", "--layers 3 --hidden 128 --heads 4 --kv-heads 1 --vocab 256",
		       seed + 1)) {
		fprintf(stderr, "cannot make the test models\n");
		return 1;
	}
	n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(mA.m));
	fill(P, 300, seed);
	ctx = new_ctx(mA.m, -1);
	ref = new_ctx(mA.m, -1);
	if (!ctx || !ref || daemon_start() <= 0) {
		fprintf(stderr, "cannot start: contexts %p %p, kvtierd at %s\n", (void *)ctx,
			(void *)ref, sock);
		return 1;
	}

	test_version_refused();
	test_quantized_cache_refused();
	/* Each test leaves kl open on ctx for the next; without it the rest cannot run. */
	void (*const seq[])(void) = {test_full_and_partial_hit, test_evicted_between_lookup_and_get,
				     test_batches_of_one,	test_wrong_block_refused,
				     test_other_geometry,	test_v_transposed,
				     test_restart_nvme,		test_daemon_down,
				     test_compressed_host};
	for (size_t i = 0; i < sizeof(seq) / sizeof(seq[0]); i++) {
		if (i && !kl) {
			fprintf(stderr, "no kvt_llama left: the remaining tests cannot run\n");
			kvt_test_failures++;
			break;
		}
		seq[i]();
	}

	kvt_llama_close(kl);
	daemon_stop();
	llama_free(ctx);
	llama_free(ref);
	llama_model_free(mA.m);
	llama_model_free(mB.m);
	llama_backend_free();
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	free(kvt_test_run(&rc, cmd));
	printf("%s: %d failure(s)\n", kvt_test_failures ? "FAIL" : "ok", kvt_test_failures);
	return kvt_test_failures ? 1 : 0;
}
