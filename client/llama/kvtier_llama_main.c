/* SPDX-License-Identifier: MIT */
/*
 * kvtier-llama - evaluates prompts with llama.cpp, their KV cache in kvtier.
 *
 *   kvtier-llama [options] MODEL.gguf PROMPT-FILE...
 *
 * For each prompt file: restores its longest cached prefix from kvtierd, evaluates the rest,
 * stores the new 64-token blocks, picks the first token (greedy) and reports the time to it;
 * with --predict N, N tokens in all are generated greedily after the prompt and printed (ids),
 * so that a run with a restored cache can be compared with one that evaluated everything.
 * A first run prefills and stores; a second run with the same prefix restores.  A model
 * without a vocabulary (tokenizer "none", as client/llama/gguf_writer.py writes) reads the
 * file's bytes as token ids; a model with one tokenizes the text.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvtier.h"
#include "kvtier_llama.h"

static int verbose;

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: kvtier-llama [options] MODEL.gguf PROMPT-FILE...\n"
	    "  -s, --socket PATH    kvtierd's socket (default: $KVTIER_SOCKET, then the system "
	    "one)\n"
	    "  -c, --ctx N          context size in tokens (default: prompt length, rounded up)\n"
	    "  -b, --batch N        tokens per llama_decode (default 512)\n"
	    "  -t, --threads N      CPU threads (default: one per CPU)\n"
	    "      --no-kvtier      evaluate everything, use no kvtier (the baseline)\n"
	    "      --no-store       restore only, store nothing\n"
	    "  -n, --predict N      generate N tokens (greedy) after each prompt, print their ids\n"
	    "  -v, --verbose        llama.cpp's own log\n"
	    "  -h, --help\n");
}

/* The greedy choice: the token of the highest logit of the last evaluated position. */
static int argmax_last(struct llama_context *ctx, int n_vocab)
{
	const float *lg = llama_get_logits_ith(ctx, -1);
	int best = 0;

	for (int v = 1; v < n_vocab; v++)
		if (lg[v] > lg[best])
			best = v;
	return best;
}

/* Greedy generation after a prompt of n tokens whose next token is first: n_gen tokens in
 * all, printed as ids; the generated tokens are then dropped from the sequence. */
static int generate(struct llama_context *ctx, llama_token first, size_t n, uint32_t n_gen,
		    int n_vocab, uint32_t n_batch, const char *name)
{
	llama_token t = first;
	int rc = 0;

	printf("%s: generated %u:", name, n_gen);
	for (uint32_t j = 0; j < n_gen; j++) {
		printf(" %d", t);
		if (j + 1 == n_gen)
			break;
		if ((rc = kvt_llama_eval(ctx, 0, &t, 1, (llama_pos)(n + j), n_batch)) < 0) {
			fprintf(stderr, "\nkvtier-llama: %s: generation failed: %s\n", name,
				kvt_strerror(rc));
			break;
		}
		t = argmax_last(ctx, n_vocab);
	}
	printf("\n");
	llama_memory_seq_rm(llama_get_memory(ctx), 0, (llama_pos)n, -1);
	return rc;
}

/* The prompt's tokens: bytes for a vocabulary-less model, else llama_tokenize. */
static llama_token *read_prompt(const struct llama_vocab *vocab, const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	char *text = NULL;
	size_t len = 0, cap = 0;
	llama_token *tok = NULL;

	if (!f) {
		fprintf(stderr, "kvtier-llama: %s: %s\n", path, strerror(errno));
		return NULL;
	}
	for (;;) {
		if (len == cap) {
			char *t = realloc(text, cap = cap ? 2 * cap : 65536);
			if (!t)
				goto out;
			text = t;
		}
		size_t got = fread(text + len, 1, cap - len, f);
		if (got == 0)
			break;
		len += got;
	}
	if (ferror(f) || len == 0) {
		fprintf(stderr, "kvtier-llama: %s: %s\n", path,
			len ? "read error" : "empty prompt");
		goto out;
	}
	if (llama_vocab_type(vocab) == LLAMA_VOCAB_TYPE_NONE) {
		if (!(tok = malloc(len * sizeof(*tok))))
			goto out;
		for (size_t i = 0; i < len; i++)
			tok[i] = (unsigned char)text[i];
		*n = len;
	} else {
		int32_t m = -llama_tokenize(vocab, text, (int32_t)len, NULL, 0, true, false);
		if (m <= 0 || !(tok = malloc((size_t)m * sizeof(*tok))))
			goto out;
		if (llama_tokenize(vocab, text, (int32_t)len, tok, m, true, false) != m) {
			free(tok);
			tok = NULL;
			goto out;
		}
		*n = (size_t)m;
	}
out:
	free(text);
	fclose(f);
	return tok;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
	    {"socket", required_argument, NULL, 's'},  {"ctx", required_argument, NULL, 'c'},
	    {"batch", required_argument, NULL, 'b'},   {"threads", required_argument, NULL, 't'},
	    {"no-kvtier", no_argument, NULL, 'K'},     {"no-store", no_argument, NULL, 'S'},
	    {"predict", required_argument, NULL, 'n'}, {"verbose", no_argument, NULL, 'v'},
	    {"help", no_argument, NULL, 'h'},	       {0}};
	const char *sock = NULL;
	long n_ctx = 0, n_batch = 512, threads = 0, predict = 0;
	int no_kvtier = 0, no_store = 0, opt, status = 0;
	struct llama_model *model = NULL;
	struct llama_context *ctx = NULL;
	struct kvt_llama *kl = NULL;
	llama_token **prompts = NULL;
	size_t *lens = NULL, longest = 0;

	while ((opt = getopt_long(argc, argv, "s:c:b:t:n:vh", lo, NULL)) != -1) {
		switch (opt) {
		case 's':
			sock = optarg;
			break;
		case 'c':
			n_ctx = strtol(optarg, NULL, 10);
			break;
		case 'b':
			n_batch = strtol(optarg, NULL, 10);
			break;
		case 't':
			threads = strtol(optarg, NULL, 10);
			break;
		case 'K':
			no_kvtier = 1;
			break;
		case 'S':
			no_store = 1;
			break;
		case 'n':
			predict = strtol(optarg, NULL, 10);
			break;
		case 'v':
			verbose = 1;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (argc - optind < 2 || n_ctx < 0 || n_batch <= 0 || threads < 0 || predict < 0 ||
	    predict > 65536) {
		usage(stderr);
		return 2;
	}
	kvt_llama_log_errors_only(verbose);
	if (kvt_llama_backend_init() < 0) {
		fprintf(stderr, "kvtier-llama: ggml found no backend beside libllama\n");
		return 1;
	}
	struct llama_model_params mp = llama_model_default_params();
	if (!(model = llama_model_load_from_file(argv[optind], mp))) {
		fprintf(stderr, "kvtier-llama: %s: llama.cpp cannot load this model\n",
			argv[optind]);
		return 1;
	}
	const int np = argc - optind - 1;
	prompts = calloc((size_t)np, sizeof(*prompts));
	lens = calloc((size_t)np, sizeof(*lens));
	if (!prompts || !lens) {
		status = 1;
		goto out;
	}
	for (int i = 0; i < np; i++) {
		if (!(prompts[i] = read_prompt(llama_model_get_vocab(model), argv[optind + 1 + i],
					       &lens[i]))) {
			status = 1;
			goto out;
		}
		if (lens[i] > longest)
			longest = lens[i];
	}
	struct llama_context_params cp = llama_context_default_params();
	cp.n_ctx = (uint32_t)(n_ctx ? n_ctx : (long)(longest + predict + 255) / 256 * 256);
	cp.n_batch = cp.n_ubatch = (uint32_t)n_batch;
	cp.n_seq_max = 1;
	/* ggml's default of 4 threads spins on a 2-core machine: one per core. */
	if (!threads)
		threads = sysconf(_SC_NPROCESSORS_ONLN) > 0 ? sysconf(_SC_NPROCESSORS_ONLN) : 1;
	cp.n_threads = cp.n_threads_batch = (int32_t)threads;
	if (!(ctx = llama_init_from_model(model, cp))) {
		fprintf(stderr, "kvtier-llama: llama.cpp cannot create a context of %u tokens\n",
			cp.n_ctx);
		status = 1;
		goto out;
	}
	if (!no_kvtier) {
		char err[256] = "";
		struct kvt_llama_opts o = {.size = sizeof(o),
					   .socket_path = sock,
					   .model_path = argv[optind],
					   .n_batch = (uint32_t)n_batch,
					   .flags = no_store ? KVT_LLAMA_NO_STORE : 0,
					   .err = err,
					   .err_len = sizeof(err)};
		int rc = kvt_llama_open(ctx, &o, &kl);
		if (rc < 0) {
			fprintf(stderr, "kvtier-llama: kvtier cannot be used: %s (%s)\n", err,
				kvt_strerror(rc));
			status = 1;
			goto out;
		}
	}
	const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
	for (int i = 0; i < np; i++) {
		struct kvt_llama_result r = {.size = sizeof(r)};
		double t0 = now_ms();
		int rc;
		if (kl) {
			rc = kvt_llama_prefill(kl, prompts[i], lens[i], &r);
		} else {
			llama_memory_seq_rm(llama_get_memory(ctx), 0, -1, -1);
			rc = kvt_llama_eval(ctx, 0, prompts[i], lens[i], 0, (uint32_t)n_batch);
			r.n_tokens = r.n_evaluated = (uint32_t)lens[i];
			r.eval_ms = now_ms() - t0;
		}
		if (rc < 0) {
			fprintf(stderr, "kvtier-llama: %s: evaluation failed: %s\n",
				argv[optind + 1 + i], kvt_strerror(rc));
			status = 1;
			break;
		}
		const int best = argmax_last(ctx, n_vocab);
		double ttft = r.lookup_ms + r.restore_ms + r.eval_ms +
			      (now_ms() - t0 - r.lookup_ms - r.restore_ms - r.eval_ms - r.store_ms);
		printf(
		    "%s: %u tokens, restored %u, evaluated %u, stored %u blocks, first token %d, "
		    "TTFT %.1f ms (lookup %.1f, restore %.1f, eval %.1f; store after it %.1f)",
		    argv[optind + 1 + i], r.n_tokens, r.n_restored, r.n_evaluated, r.blocks_stored,
		    best, ttft, r.lookup_ms, r.restore_ms, r.eval_ms, r.store_ms);
		if (kl && r.kvtier)
			printf(" [kvtier: %s]", kvt_llama_last_message(kl));
		printf("\n");
		if (predict > 0 && generate(ctx, best, lens[i], (uint32_t)predict, n_vocab,
					    (uint32_t)n_batch, argv[optind + 1 + i]) < 0) {
			status = 1;
			break;
		}
		fflush(stdout);
	}
out:
	kvt_llama_close(kl);
	if (ctx)
		llama_free(ctx);
	if (model)
		llama_model_free(model);
	for (int i = 0; prompts && i < argc - optind - 1; i++)
		free(prompts[i]);
	free(prompts);
	free(lens);
	llama_backend_free();
	return status;
}
