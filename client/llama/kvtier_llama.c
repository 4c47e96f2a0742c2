/* SPDX-License-Identifier: MIT */
/*
 * kvtier_llama.c - llama.cpp's KV cache in kvtier (see kvtier_llama.h): versions, the
 * backend, kept buffers, opening, evaluating and kvt_llama_prefill.  The state format is
 * described in kvtier_llama_state.c; kvtier_llama_int.h lists the other files.
 */
#include "kvtier_llama_int.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ggml-backend.h>
double kvtl_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

void kvtl_fmt_err(char *buf, size_t len, const char *f, ...)
{
	va_list ap;
	if (!buf || !len)
		return;
	va_start(ap, f);
	vsnprintf(buf, len, f, ap);
	va_end(ap);
}

const char *kvt_llama_supported_version(void)
{
	return SUPPORTED_VERSION;
}

int kvt_llama_check_version(const char *version, int state_seq_version, char *err, size_t err_len)
{
	if (!version || strcmp(version, SUPPORTED_VERSION) != 0 ||
	    state_seq_version != SUPPORTED_STATE_SEQ) {
		kvtl_fmt_err(
		    err, err_len,
		    "libllama %s (state format %d) is not the llama.cpp build whose sequence "
		    "state this library reads and writes (%s, format %d, npm node-llama-cpp "
		    "3.21.1): rebuild kvtier against the libllama you load",
		    version ? version : "(unknown)", state_seq_version, SUPPORTED_VERSION,
		    SUPPORTED_STATE_SEQ);
		return -KVT_EVERSION;
	}
	return 0;
}

int kvt_llama_backend_init(void)
{
	Dl_info info;
	char *dir;

	if (dladdr((void *)llama_backend_init, &info) && info.dli_fname &&
	    (dir = strdup(info.dli_fname))) {
		ggml_backend_load_all_from_path(dirname(dir));
		free(dir);
	}
	if (ggml_backend_dev_count() == 0)
		ggml_backend_load_all();
	llama_backend_init();
	return ggml_backend_dev_count() ? (int)ggml_backend_dev_count() : -ENODEV;
}

static void log_cb(enum ggml_log_level level, const char *text, void *user)
{
	if (user || level == GGML_LOG_LEVEL_ERROR)
		fputs(text, stderr);
}

void kvt_llama_log_errors_only(int verbose)
{
	llama_log_set(log_cb, verbose ? (void *)1 : NULL);
}

/* ---------------------------------------------------------------------------------------
 * Buffers kept between calls.  Memory touched for the first time costs a page fault per
 * 4 KiB page (8 to 50 us each on a VM: more than copying the page), and a sequence state is
 * tens to hundreds of MiB: the buffer a restore builds the state in (and a store reads it
 * into), and the one its gets land in, are mapped once, on 2 MiB pages where the kernel has
 * them, and kept until kvt_llama_close().  The state's grows by doubling, up to the state of
 * the whole context (so at most the size of the context's KV cache).
 */
#define HUGE_PAGE (2u << 20)

static void kbuf_free(struct kbuf *b)
{
	if (b->p)
		munmap(b->p, b->cap);
	b->p = NULL;
	b->cap = 0;
}

/* Makes b hold at least n bytes (at most max, unless n is more); its contents are lost when
 * it grows.  Returns 0 or -ENOMEM. */
int kvtl_kbuf_reserve(struct kbuf *b, size_t n, size_t max)
{
	size_t cap = b->cap * 2 > n ? b->cap * 2 : n;
	uint8_t *m, *a;

	if (n <= b->cap)
		return 0;
	if (cap > max)
		cap = max > n ? max : n;
	cap = (cap + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1);
	kbuf_free(b);
	m = mmap(NULL, cap + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return -ENOMEM;
	a = (uint8_t *)(((uintptr_t)m + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
	if (a > m)
		munmap(m, (size_t)(a - m));
	if (m + cap + HUGE_PAGE > a + cap)
		munmap(a + cap, (size_t)(m + cap + HUGE_PAGE - (a + cap)));
	madvise(a, cap, MADV_HUGEPAGE);
	b->p = a;
	b->cap = cap;
	return 0;
}

/* ---------------------------------------------------------------------------------------
 * Opening
 */

/* FNV-1a of the GGUF's size, its first MiB (header, metadata, tensor table) and 64 KiB at
 * 16 places spread over its tensors: tells apart models of one name and geometry (two
 * random seeds) without reading gigabytes. */
static int model_digest(const char *path, uint32_t *out)
{
	struct stat st;
	uint64_t h = 1469598103934665603ull;
	size_t cap = 1 << 20;
	uint8_t *buf;
	int fd = open(path, O_RDONLY | O_CLOEXEC), rc = 0;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || !(buf = malloc(cap))) {
		rc = -errno ? -errno : -ENOMEM;
		close(fd);
		return rc;
	}
	for (int i = 0; i < 8; i++)
		h = (h ^ (uint8_t)((uint64_t)st.st_size >> (8 * i))) * 1099511628211ull;
	for (int part = -1; part < 16; part++) {
		off_t off = part < 0 ? 0 : (off_t)((uint64_t)st.st_size / 16 * (uint64_t)part);
		size_t want = part < 0 ? cap : 65536;
		ssize_t got = pread(fd, buf, want, off);
		if (got < 0) {
			rc = -errno;
			break;
		}
		for (ssize_t j = 0; j < got; j++)
			h = (h ^ buf[j]) * 1099511628211ull;
	}
	free(buf);
	close(fd);
	*out = (uint32_t)(h ^ (h >> 32));
	return rc;
}

static int try_connect(struct kvt_llama *kl)
{
	struct kvt_connect_opts co = {.size = sizeof(co),
				      .socket_path = kl->sock,
				      .name = "kvtier-llama",
				      .timeout_ms = kl->timeout_ms};
	int rc;

	if (kl->c)
		return 0;
	if ((rc = kvt_connect(&co, &kl->c)) < 0) {
		kl->c = NULL;
		kvtl_fmt_err(kl->msg, sizeof(kl->msg), "kvtierd: %s", kvt_strerror(rc));
		return rc;
	}
	if ((rc = kvt_register_layout(kl->c, &kl->layout)) < 0) {
		kvtl_fmt_err(kl->msg, sizeof(kl->msg), "register layout: %s", kvt_strerror(rc));
		kvt_close(kl->c);
		kl->c = NULL;
		return rc;
	}
	kl->lay = rc;
	return 0;
}

/* Forgets a connection whose daemon went away; the next call connects anew. */
static void drop_client(struct kvt_llama *kl)
{
	kvt_close(kl->c);
	kl->c = NULL;
	kl->lay = -1;
}

/* Learns the shape of the context's sequence state: one token evaluated into the empty
 * sequence, its state parsed, the token removed. */
static int probe_format(struct kvt_llama *kl, char *err, size_t el)
{
	llama_memory_t mem = llama_get_memory(kl->ctx);
	llama_token tok = 0;
	struct state_view sv;
	uint8_t *st;
	size_t len = 0;
	int rc;

	if ((rc = kvt_llama_eval(kl->ctx, kl->seq, &tok, 1, 0, 1)) < 0) {
		kvtl_fmt_err(err, el, "llama.cpp could not evaluate a token (%d)", rc);
		return rc;
	}
	st = kvtl_get_state(kl, &len);
	llama_memory_seq_rm(mem, kl->seq, -1, -1);
	if (!st) {
		kvtl_fmt_err(err, el, "llama_state_seq_get_data failed");
		return -EIO;
	}
	rc = kvtl_parse_state(st, len, &sv, err, el);
	free(st);
	if (rc < 0)
		return rc == -EBADMSG ? -ENOTSUP : rc;
	kvtl_view_free(&sv);
	if (sv.cells != 1 || sv.n_layer != (uint32_t)llama_model_n_layer(kl->model)) {
		kvtl_fmt_err(err, el, "sequence state of %u cells and %u layers after one token",
			     sv.cells, sv.n_layer);
		return -ENOTSUP;
	}
	if ((sv.k_type != GGML_TYPE_F16_ && sv.k_type != GGML_TYPE_BF16_) ||
	    sv.v_type != sv.k_type || (sv.v_trans && sv.v_el != 2)) {
		kvtl_fmt_err(err, el, "cache types K %d V %d: only f16 and bf16 caches are stored",
			     sv.k_type, sv.v_type);
		return -ENOTSUP;
	}
	if (sv.k_row != sv.v_row || sv.k_row % ((uint64_t)2 * kl->n_kv)) {
		kvtl_fmt_err(err, el,
			     "K rows of %llu bytes, V rows of %llu, %u KV heads: not one head size",
			     (unsigned long long)sv.k_row, (unsigned long long)sv.v_row, kl->n_kv);
		return -ENOTSUP;
	}
	kl->fmt = sv;
	kl->el = 2;
	kl->hd = (uint32_t)(sv.k_row / 2 / kl->n_kv);
	return 0;
}

int kvt_llama_open(struct llama_context *ctx, const struct kvt_llama_opts *o,
		   struct kvt_llama **out)
{
	struct kvt_llama *kl = NULL;
	char name[40] = "", *err = o ? o->err : NULL;
	size_t el = o ? o->err_len : 0;
	uint32_t digest = 0;
	int rc;

	/* the struct as it was before restore_threads is accepted too */
	if (!ctx || !o || o->size < offsetof(struct kvt_llama_opts, restore_threads) || !out ||
	    (!o->model_path && !o->model_id) || o->seq_id < 0) {
		kvtl_fmt_err(err, el, "invalid arguments");
		return -EINVAL;
	}
	*out = NULL;
	if ((rc = kvt_llama_check_version(llama_version(), LLAMA_STATE_SEQ_VERSION, err, el)) < 0)
		return rc;
	if (llama_memory_seq_pos_max(llama_get_memory(ctx), o->seq_id) >= 0) {
		kvtl_fmt_err(err, el, "sequence %d is not empty", o->seq_id);
		return -EBUSY;
	}
	if (!(kl = calloc(1, sizeof(*kl))))
		return -ENOMEM;
	kl->ctx = ctx;
	kl->model = llama_get_model(ctx);
	kl->seq = o->seq_id;
	kl->n_batch = o->n_batch ? o->n_batch : llama_n_batch(ctx);
	if (kl->n_batch > llama_n_batch(ctx))
		kl->n_batch = llama_n_batch(ctx);
	kl->flags = o->flags;
	kl->restore_batch = o->restore_batch;
	if (o->size >= offsetof(struct kvt_llama_opts, restore_threads) + sizeof(uint32_t) &&
	    o->restore_threads) {
		kl->restore_threads = o->restore_threads;
	} else {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		kl->restore_threads = n > 0 ? (uint32_t)n : 1;
	}
	if (kl->restore_threads > KVTL_RESTORE_THREADS)
		kl->restore_threads = KVTL_RESTORE_THREADS;
	kl->timeout_ms = o->timeout_ms;
	kl->after_lookup = o->after_lookup;
	kl->after_lookup_arg = o->after_lookup_arg;
	kl->n_vocab = (uint32_t)llama_vocab_n_tokens(llama_model_get_vocab(kl->model));
	kl->n_kv = (uint32_t)llama_model_n_head_kv(kl->model);
	kl->lay = -1;
	if (o->socket_path && !(kl->sock = strdup(o->socket_path))) {
		rc = -ENOMEM;
		goto fail;
	}
	if (kl->n_kv == 0) {
		kvtl_fmt_err(err, el, "model without KV heads");
		rc = -ENOTSUP;
		goto fail;
	}
	if ((rc = probe_format(kl, err, el)) < 0)
		goto fail;

	if (o->model_id) {
		if (strlen(o->model_id) > 33) {
			kvtl_fmt_err(err, el, "model_id longer than 33 bytes");
			rc = -EINVAL;
			goto fail;
		}
		snprintf(name, sizeof(name), "%s", o->model_id);
	} else {
		char gname[25] = ""; /* with the digest, the cache type and the build: 63 bytes */
		if ((rc = model_digest(o->model_path, &digest)) < 0) {
			kvtl_fmt_err(err, el, "%s: %s", o->model_path, strerror(-rc));
			goto fail;
		}
		if (llama_model_meta_val_str(kl->model, "general.name", gname, sizeof(gname)) < 0)
			snprintf(gname, sizeof(gname), "llama");
		snprintf(name, sizeof(name), "%s#%08x", gname, digest);
	}
	kl->layout = (struct kvt_layout){
	    .size = sizeof(kl->layout),
	    .n_layers = kl->fmt.n_layer,
	    .n_kv_heads = kl->n_kv,
	    .head_dim = kl->hd,
	    .block_tokens = BT,
	    .dtype = kl->fmt.k_type == GGML_TYPE_BF16_ ? KVT_DTYPE_BF16 : KVT_DTYPE_FP16,
	    .kv_order = KVT_ORDER_K_THEN_V,
	    .rank = 0,
	    .world = 1};
	/* The cache type and the llama.cpp build are part of the model id, hence of every key;
	 * so is V transposed (flash attention off), whose values come from another kernel. */
	snprintf(kl->layout.model_id, sizeof(kl->layout.model_id), "%s llama.cpp-%s %s%s", name,
		 SUPPORTED_VERSION, kl->fmt.k_type == GGML_TYPE_BF16_ ? "bf16" : "f16",
		 kl->fmt.v_trans ? "-vt" : "");
	if (kvt_layout_check(&kl->layout) < 0) {
		kvtl_fmt_err(err, el, "kvtier refuses the layout: %u layers, %u KV heads of %u",
			     kl->fmt.n_layer, kl->n_kv, kl->hd);
		rc = -ENOTSUP;
		goto fail;
	}
	kl->fp = kvt_layout_fingerprint(&kl->layout);
	kl->block_bytes = kvt_layout_block_bytes(&kl->layout);
	kl->layer_bytes = kvt_layout_layer_bytes(&kl->layout);
	try_connect(kl); /* a daemon that is not there yet is no error */
	*out = kl;
	return 0;
fail:
	free(kl->sock);
	free(kl);
	return rc;
}

void kvt_llama_close(struct kvt_llama *kl)
{
	if (!kl)
		return;
	kvt_close(kl->c);
	kbuf_free(&kl->state);
	kbuf_free(&kl->stage);
	for (unsigned i = 0; i < KVTL_RESTORE_THREADS - 1; i++)
		kbuf_free(&kl->stages[i]);
	free(kl->sock);
	free(kl);
}

int kvt_llama_layout(const struct kvt_llama *kl, struct kvt_layout *lay)
{
	*lay = kl->layout;
	return 0;
}

const char *kvt_llama_last_message(const struct kvt_llama *kl)
{
	return kl->msg;
}

/* ---------------------------------------------------------------------------------------
 * Evaluating
 */
int kvt_llama_eval(struct llama_context *ctx, llama_seq_id seq, const llama_token *tokens, size_t n,
		   llama_pos pos0, uint32_t n_batch)
{
	struct llama_batch b;
	int rc = 0;

	if (!ctx || !tokens || n == 0 || n_batch == 0)
		return -EINVAL;
	if (n_batch > llama_n_batch(ctx))
		n_batch = llama_n_batch(ctx);
	b = llama_batch_init((int32_t)n_batch, 0, 1);
	if (!b.token)
		return -ENOMEM;
	for (size_t i = 0; i < n && rc == 0; i += n_batch) {
		size_t m = n - i < n_batch ? n - i : n_batch;
		for (size_t j = 0; j < m; j++) {
			b.token[j] = tokens[i + j];
			b.pos[j] = pos0 + (llama_pos)(i + j);
			b.n_seq_id[j] = 1;
			b.seq_id[j][0] = seq;
			b.logits[j] = i + j == n - 1;
		}
		b.n_tokens = (int32_t)m;
		int d = llama_decode(ctx, b);
		if (d == 1)
			rc = -ENOSPC; /* no room in the KV cache */
		else if (d != 0)
			rc = -EIO;
	}
	llama_batch_free(b);
	return rc;
}

int kvt_llama_prefill(struct kvt_llama *kl, const llama_token *tokens, size_t n,
		      struct kvt_llama_result *res)
{
	struct kvt_llama_result r = {.size = sizeof(r)};
	struct kvt_key *keys = NULL;
	uint32_t nb_all, nb_max, hit = 0, done = 0;
	double t0;
	int rc;

	if (!kl || !tokens || n == 0 || n > INT32_MAX)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (tokens[i] < 0 || (uint32_t)tokens[i] >= kl->n_vocab)
			return -EINVAL;
	kl->msg[0] = 0;
	r.n_tokens = (uint32_t)n;
	nb_all = (uint32_t)(n / BT);
	nb_max = (uint32_t)((n - 1) / BT); /* at least one token left to evaluate */
	llama_memory_seq_rm(llama_get_memory(kl->ctx), kl->seq, -1, -1);

	t0 = kvtl_now_ms();
	if ((rc = try_connect(kl)) < 0) {
		r.kvtier = rc;
	} else if (nb_all) {
		if (!(keys = malloc(nb_all * sizeof(*keys))))
			return -ENOMEM;
		/* llama_token is int32_t; the ids were checked non-negative above. */
		kvt_key_chain(kl->fp, BT, NULL, (const uint32_t *)(const void *)tokens,
			      (size_t)nb_all * BT, keys, nb_all);
		rc = nb_max ? kvt_lookup(kl->c, kl->lay, keys, nb_max) : 0;
		if (rc == -KVT_EDAEMON) {
			/* The daemon went away (and maybe came back): ask again on a new
			 * connection.  Not libkvtier's own reconnection: a kvt_lookup that
			 * reconnects by itself has copied its keys into the old daemon's ring and
			 * finds nothing, and one on a client whose reconnection failed crashes. */
			drop_client(kl);
			rc = try_connect(kl);
			if (rc == 0)
				rc = kvt_lookup(kl->c, kl->lay, keys, nb_max);
		}
		if (rc < 0) {
			kvtl_fmt_err(kl->msg, sizeof(kl->msg), "lookup: %s", kvt_strerror(rc));
			r.kvtier = rc;
		} else {
			hit = nb_max ? (uint32_t)rc : 0;
		}
	}
	r.n_cached = hit * BT;
	r.lookup_ms = kvtl_now_ms() - t0;

	if (hit && kl->after_lookup)
		kl->after_lookup(kl->after_lookup_arg, hit);
	t0 = kvtl_now_ms();
	kl->ph_wait = kl->ph_copy = kl->ph_set = 0;
	if (hit)
		done = kvtl_restore(kl, keys, hit, &r.kvtier);
	r.n_restored = done * BT;
	r.restore_ms = kvtl_now_ms() - t0;
	r.restore_wait_ms = kl->ph_wait;
	r.restore_copy_ms = kl->ph_copy;
	r.restore_set_ms = kl->ph_set;
	if (r.kvtier == -KVT_EDAEMON)
		drop_client(kl);

	t0 = kvtl_now_ms();
	rc = kvt_llama_eval(kl->ctx, kl->seq, tokens + r.n_restored, n - r.n_restored,
			    (llama_pos)r.n_restored, kl->n_batch);
	r.eval_ms = kvtl_now_ms() - t0;
	if (rc < 0)
		goto out;
	r.n_evaluated = (uint32_t)n - r.n_restored;

	t0 = kvtl_now_ms();
	if (kl->c && keys && !(kl->flags & KVT_LLAMA_NO_STORE) && nb_all > done) {
		int s = kvtl_store(kl, keys, done, nb_all, (uint32_t)n, &r.blocks_stored);
		if (s < 0 && r.kvtier == 0)
			r.kvtier = s;
		if (s == -KVT_EDAEMON)
			drop_client(kl);
	}
	r.store_ms = kvtl_now_ms() - t0;
	rc = 0;
out:
	free(keys);
	if (res) {
		uint32_t sz = res->size < sizeof(r) ? res->size : (uint32_t)sizeof(r);
		memcpy(res, &r, sz);
		res->size = sz;
	}
	return rc;
}
