/* SPDX-License-Identifier: MIT */
/*
 * kvtier_llama.c - llama.cpp's KV cache in kvtier (see kvtier_llama.h).
 *
 * llama.cpp's per-sequence state, as llama_state_seq_get_data() writes it in the pinned build
 * (src/llama-context.cpp state_seq_get_data, src/llama-kv-cache.cpp state_write*), all fields
 * little-endian, no padding:
 *
 *   u32 io magic 0xaf143cd8 | i32 seq id | u32 n_stream
 *   per stream: u32 cell_count, and when it is not 0:
 *     per cell:  i32 pos | u32 n_seq_id (1) | i32 seq id       (no cell ext: not M-RoPE)
 *     u32 v_trans | u32 n_layer
 *     per layer: i32 k type | u64 k row bytes | cell_count rows of K ([kv head][dim])
 *     v_trans 0: per layer: i32 v type | u64 v row bytes | cell_count rows of V
 *     v_trans 1: per layer: i32 v type | u32 element bytes | u32 n_embd_v |
 *                n_embd_v rows of cell_count elements (V transposed)
 *
 * Cells come in the cache's cell order, not necessarily position order: blocks are cut by
 * position.  A kvtier block is, per layer, K then V, each [kv head][token][head dim].
 */
#include "kvtier_llama.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ggml-backend.h>

#include "kvtier.h"

/* The parser below is written for exactly this format. */
#if LLAMA_STATE_SEQ_VERSION != 3
#error "kvtier_llama.c parses llama.cpp's sequence state of LLAMA_STATE_SEQ_VERSION 3 only"
#endif
#define SUPPORTED_VERSION   "0.4.0-dev"
#define SUPPORTED_STATE_SEQ 3
#define STATE_IO_MAGIC	    0xaf143cd8u
#define GGML_TYPE_F16_	    1
#define GGML_TYPE_BF16_	    30
#define BT		    KVT_LLAMA_BLOCK_TOKENS

/* The shape of one stream of a sequence state, with pointers into the blob. */
struct state_view {
	uint32_t n_stream;
	uint32_t cells;
	const uint8_t *meta; /* cells * 12 bytes */
	uint32_t v_trans, n_layer;
	int32_t k_type, v_type;
	uint64_t k_row;	   /* bytes of one cell's K of one layer */
	uint64_t v_row;	   /* bytes of one cell's V of one layer */
	uint32_t v_el;	   /* v_trans: bytes of one element */
	const uint8_t **k; /* n_layer: first K row */
	const uint8_t **v; /* n_layer: first V row (element row 0 when v_trans) */
};

/* A buffer kept between calls (see kbuf_reserve). */
struct kbuf {
	uint8_t *p;
	size_t cap;
};

struct kvt_llama {
	struct llama_context *ctx;
	const struct llama_model *model;
	llama_seq_id seq;
	uint32_t n_batch, flags, n_vocab;
	int timeout_ms;
	void (*after_lookup)(void *arg, uint32_t n_blocks);
	void *after_lookup_arg;
	char *sock;
	struct kvt_client *c;
	int lay;
	struct kvt_layout layout;
	uint64_t fp;
	struct state_view fmt; /* the shape learned at open (pointers unused) */
	uint32_t n_kv, hd, el;
	size_t block_bytes, layer_bytes;
	struct kbuf state; /* a sequence state being built (restore) or read (store) */
	struct kbuf stage; /* the batches of blocks being read */
	uint32_t restore_batch;
	char msg[256];
};

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void __attribute__((format(printf, 3, 4))) fmt_err(char *buf, size_t len, const char *f, ...)
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
		fmt_err(err, err_len,
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
static int kbuf_reserve(struct kbuf *b, size_t n, size_t max)
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
 * The sequence state
 */
struct rd {
	const uint8_t *p;
	size_t len, off;
};

static int rd_get(struct rd *r, void *dst, size_t n)
{
	if (r->len - r->off < n)
		return -1;
	memcpy(dst, r->p + r->off, n);
	r->off += n;
	return 0;
}

static const uint8_t *rd_skip(struct rd *r, uint64_t n)
{
	const uint8_t *p = r->p + r->off;
	if (r->len - r->off < n)
		return NULL;
	r->off += n;
	return p;
}

/* Parses a state blob; sv->k and sv->v are allocated (n_layer each; free with
 * view_free).  Exactly one stream may hold cells.  Returns 0 or -EBADMSG (why in msg). */
static int parse_state(const uint8_t *p, size_t len, struct state_view *sv, char *msg, size_t ml)
{
	struct rd r = {p, len, 0};
	uint32_t magic = 0, n_stream = 0, cells;
	int32_t seq;

	memset(sv, 0, sizeof(*sv));
	if (rd_get(&r, &magic, 4) || rd_get(&r, &seq, 4) || rd_get(&r, &n_stream, 4) ||
	    magic != STATE_IO_MAGIC || n_stream == 0 || n_stream > 65536) {
		fmt_err(msg, ml, "sequence state: bad header (magic %08x)", magic);
		return -EBADMSG;
	}
	sv->n_stream = n_stream;
	for (uint32_t s = 0; s < n_stream; s++) {
		if (rd_get(&r, &cells, 4))
			goto trunc;
		if (cells == 0)
			continue;
		if (sv->cells) {
			fmt_err(msg, ml, "sequence state: cells in two streams");
			goto bad;
		}
		sv->cells = cells;
		if (!(sv->meta = rd_skip(&r, (uint64_t)cells * 12)))
			goto trunc;
		for (uint32_t i = 0; i < cells; i++) {
			uint32_t nsid;
			memcpy(&nsid, sv->meta + (size_t)i * 12 + 4, 4);
			if (nsid != 1) {
				fmt_err(msg, ml, "sequence state: cell %u has %u sequence ids", i,
					nsid);
				goto bad;
			}
		}
		if (rd_get(&r, &sv->v_trans, 4) || rd_get(&r, &sv->n_layer, 4))
			goto trunc;
		if (sv->n_layer == 0 || sv->n_layer > 4096 || sv->v_trans > 1) {
			fmt_err(msg, ml, "sequence state: %u layers, v_trans %u", sv->n_layer,
				sv->v_trans);
			goto bad;
		}
		sv->k = calloc(sv->n_layer, sizeof(*sv->k));
		sv->v = calloc(sv->n_layer, sizeof(*sv->v));
		if (!sv->k || !sv->v) {
			free(sv->k);
			free(sv->v);
			sv->k = sv->v = NULL;
			return -ENOMEM;
		}
		for (uint32_t l = 0; l < sv->n_layer; l++) {
			int32_t t;
			uint64_t row;
			if (rd_get(&r, &t, 4) || rd_get(&r, &row, 8))
				goto trunc;
			if (l && (t != sv->k_type || row != sv->k_row)) {
				fmt_err(msg, ml,
					"sequence state: layer %u's K differs from layer 0's", l);
				goto bad;
			}
			sv->k_type = t;
			sv->k_row = row;
			if (row == 0 || row > (1u << 24) || !(sv->k[l] = rd_skip(&r, row * cells)))
				goto trunc;
		}
		for (uint32_t l = 0; l < sv->n_layer; l++) {
			int32_t t;
			uint64_t row;
			uint32_t el = 0, embd;
			if (rd_get(&r, &t, 4))
				goto trunc;
			if (!sv->v_trans) {
				if (rd_get(&r, &row, 8))
					goto trunc;
			} else {
				if (rd_get(&r, &el, 4) || rd_get(&r, &embd, 4))
					goto trunc;
				row = (uint64_t)el * embd;
			}
			if (l && (t != sv->v_type || row != sv->v_row || el != sv->v_el)) {
				fmt_err(msg, ml,
					"sequence state: layer %u's V differs from layer 0's", l);
				goto bad;
			}
			sv->v_type = t;
			sv->v_row = row;
			sv->v_el = el;
			if (row == 0 || row > (1u << 24) || !(sv->v[l] = rd_skip(&r, row * cells)))
				goto trunc;
		}
	}
	if (r.off != len) {
		fmt_err(msg, ml, "sequence state: %zu bytes left over", len - r.off);
		goto bad;
	}
	return 0;
trunc:
	fmt_err(msg, ml, "sequence state: truncated or absurd field at byte %zu", r.off);
bad:
	free(sv->k);
	free(sv->v);
	sv->k = sv->v = NULL;
	return -EBADMSG;
}

static void view_free(struct state_view *sv)
{
	free(sv->k);
	free(sv->v);
	sv->k = sv->v = NULL;
}

/* Gets the sequence's state into a malloc'd buffer. */
static uint8_t *get_state(struct kvt_llama *kl, size_t *len)
{
	size_t n = llama_state_seq_get_size(kl->ctx, kl->seq);
	uint8_t *buf = n ? malloc(n) : NULL;
	if (!buf)
		return NULL;
	if (llama_state_seq_get_data(kl->ctx, buf, n, kl->seq) != n) {
		free(buf);
		return NULL;
	}
	*len = n;
	return buf;
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
		fmt_err(kl->msg, sizeof(kl->msg), "kvtierd: %s", kvt_strerror(rc));
		return rc;
	}
	if ((rc = kvt_register_layout(kl->c, &kl->layout)) < 0) {
		fmt_err(kl->msg, sizeof(kl->msg), "register layout: %s", kvt_strerror(rc));
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
		fmt_err(err, el, "llama.cpp could not evaluate a token (%d)", rc);
		return rc;
	}
	st = get_state(kl, &len);
	llama_memory_seq_rm(mem, kl->seq, -1, -1);
	if (!st) {
		fmt_err(err, el, "llama_state_seq_get_data failed");
		return -EIO;
	}
	rc = parse_state(st, len, &sv, err, el);
	free(st);
	if (rc < 0)
		return rc == -EBADMSG ? -ENOTSUP : rc;
	view_free(&sv);
	if (sv.cells != 1 || sv.n_layer != (uint32_t)llama_model_n_layer(kl->model)) {
		fmt_err(err, el, "sequence state of %u cells and %u layers after one token",
			sv.cells, sv.n_layer);
		return -ENOTSUP;
	}
	if ((sv.k_type != GGML_TYPE_F16_ && sv.k_type != GGML_TYPE_BF16_) ||
	    sv.v_type != sv.k_type || (sv.v_trans && sv.v_el != 2)) {
		fmt_err(err, el, "cache types K %d V %d: only f16 and bf16 caches are stored",
			sv.k_type, sv.v_type);
		return -ENOTSUP;
	}
	if (sv.k_row != sv.v_row || sv.k_row % ((uint64_t)2 * kl->n_kv)) {
		fmt_err(err, el,
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

	if (!ctx || !o || o->size < sizeof(*o) || !out || (!o->model_path && !o->model_id) ||
	    o->seq_id < 0) {
		fmt_err(err, el, "invalid arguments");
		return -EINVAL;
	}
	*out = NULL;
	if ((rc = kvt_llama_check_version(llama_version(), LLAMA_STATE_SEQ_VERSION, err, el)) < 0)
		return rc;
	if (llama_memory_seq_pos_max(llama_get_memory(ctx), o->seq_id) >= 0) {
		fmt_err(err, el, "sequence %d is not empty", o->seq_id);
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
		fmt_err(err, el, "model without KV heads");
		rc = -ENOTSUP;
		goto fail;
	}
	if ((rc = probe_format(kl, err, el)) < 0)
		goto fail;

	if (o->model_id) {
		if (strlen(o->model_id) > 33) {
			fmt_err(err, el, "model_id longer than 33 bytes");
			rc = -EINVAL;
			goto fail;
		}
		snprintf(name, sizeof(name), "%s", o->model_id);
	} else {
		char gname[25] = ""; /* with the digest, the cache type and the build: 63 bytes */
		if ((rc = model_digest(o->model_path, &digest)) < 0) {
			fmt_err(err, el, "%s: %s", o->model_path, strerror(-rc));
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
		fmt_err(err, el, "kvtier refuses the layout: %u layers, %u KV heads of %u",
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

/* ---------------------------------------------------------------------------------------
 * Restoring: blocks -> a sequence state of nb * 64 cells at positions 0.. -> set_data.
 *
 * The state of `cells` cells (all in one stream) is a header with the cells' metadata, then
 * per layer a 12-byte header and the K rows of all cells, then the same for V.  Each block
 * read is copied to its place at once (the state's size is known from the lookup); when a
 * block is missing the blocks before it are moved down to the state of fewer cells.
 */
static size_t state_hdr_bytes(uint32_t cells)
{
	return 12 + 4 + (size_t)cells * 12 + 8;
}

static size_t state_bytes(const struct kvt_llama *kl, uint32_t cells)
{
	const struct state_view *f = &kl->fmt;
	/* a V header is 12 bytes either way: type + row bytes, or type + element + n_embd */
	size_t per_layer = 12 + cells * f->k_row + 12 + cells * f->v_row;
	return state_hdr_bytes(cells) + 4 * ((size_t)f->n_stream - 1) + f->n_layer * per_layer;
}

/* Where layer l's K (kv 0) or V (kv 1) data starts in a state of `cells` cells. */
static size_t state_data_off(const struct kvt_llama *kl, uint32_t cells, int kv, uint32_t l)
{
	const struct state_view *f = &kl->fmt;
	size_t off = state_hdr_bytes(cells);
	if (kv)
		off += f->n_layer * (12 + (size_t)cells * f->k_row);
	return off + l * (12 + (size_t)cells * (kv ? f->v_row : f->k_row)) + 12;
}

static uint8_t *put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
	return p + 4;
}

static uint8_t *put64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
	return p + 8;
}

/* Writes everything of a state of `cells` cells but the K and V data. */
static void state_headers(const struct kvt_llama *kl, uint8_t *buf, uint32_t cells)
{
	const struct state_view *f = &kl->fmt;
	uint8_t *p = buf;

	p = put32(p, STATE_IO_MAGIC);
	p = put32(p, (uint32_t)kl->seq);
	p = put32(p, f->n_stream);
	p = put32(p, cells);
	for (uint32_t i = 0; i < cells; i++) {
		p = put32(p, i);
		p = put32(p, 1);
		p = put32(p, (uint32_t)kl->seq);
	}
	p = put32(p, f->v_trans);
	p = put32(p, f->n_layer);
	for (int kv = 0; kv < 2; kv++) {
		for (uint32_t l = 0; l < f->n_layer; l++) {
			p = buf + state_data_off(kl, cells, kv, l) - 12;
			p = put32(p, (uint32_t)(kv ? f->v_type : f->k_type));
			if (kv && f->v_trans) {
				p = put32(p, kl->el);
				put32(p, kl->n_kv * kl->hd);
			} else {
				put64(p, kv ? f->v_row : f->k_row);
			}
		}
	}
	/* the sequence's cells all go to its own stream; the others hold none */
	p = buf + state_bytes(kl, cells) - 4 * ((size_t)f->n_stream - 1);
	for (uint32_t s = 1; s < f->n_stream; s++)
		p = put32(p, 0);
}

/* Copies block b (block_bytes, page-first) to its place in a state of `cells` cells. */
static void state_put_block(const struct kvt_llama *kl, uint8_t *buf, uint32_t cells, uint32_t b,
			    const uint8_t *blk)
{
	const struct state_view *f = &kl->fmt;
	const uint32_t hd = kl->hd, nkv = kl->n_kv;
	const size_t hb = (size_t)hd * kl->el, half = kl->layer_bytes / 2;

	for (int kv = 0; kv < 2; kv++) {
		for (uint32_t l = 0; l < f->n_layer; l++) {
			const uint8_t *src = blk + l * kl->layer_bytes + kv * half;
			uint8_t *p = buf + state_data_off(kl, cells, kv, l);
			if (kv && f->v_trans) {
				/* [head][token][dim] -> row (head*hd + dim) of cells elements */
				for (uint32_t h = 0; h < nkv; h++)
					for (uint32_t d = 0; d < hd; d++) {
						uint16_t *dst =
						    (uint16_t *)(void *)(p + (((size_t)h * hd + d) *
										  cells +
									      (size_t)b * BT) *
										 2);
						const uint16_t *s =
						    (const uint16_t *)(const void *)src +
						    (size_t)h * BT * hd + d;
						for (uint32_t t = 0; t < BT; t++)
							dst[t] = s[(size_t)t * hd];
					}
			} else {
				/* [head][token][dim] -> per cell [head][dim] */
				uint8_t *dst = p + (size_t)b * BT * f->k_row;
				for (uint32_t t = 0; t < BT; t++)
					for (uint32_t h = 0; h < nkv; h++)
						memcpy(dst + t * f->k_row + h * hb,
						       src + ((size_t)h * BT + t) * hb, hb);
			}
		}
	}
}

/* Turns a state of `cells` cells whose first `keep` cells are filled into the state of
 * those `keep` cells.  Every part moves down (or stays), in ascending order: no part is
 * overwritten before it moved. */
static void state_shrink(const struct kvt_llama *kl, uint8_t *buf, uint32_t cells, uint32_t keep)
{
	const struct state_view *f = &kl->fmt;

	for (int kv = 0; kv < 2; kv++) {
		const size_t row = kv ? f->v_row : f->k_row;
		for (uint32_t l = 0; l < f->n_layer; l++) {
			uint8_t *from = buf + state_data_off(kl, cells, kv, l),
				*to = buf + state_data_off(kl, keep, kv, l);
			if (kv && f->v_trans) {
				/* rows of `cells` elements: the first `keep` of each */
				for (uint32_t r = 0; r < kl->n_kv * kl->hd; r++)
					memmove(to + (size_t)r * keep * kl->el,
						from + (size_t)r * cells * kl->el,
						(size_t)keep * kl->el);
			} else {
				memmove(to, from, (size_t)keep * row);
			}
		}
	}
	state_headers(kl, buf, keep);
}

/*
 * The gets run in batches of at most RESTORE_BATCH_BYTES (one round trip each; the daemon
 * reads a batch's NVMe records at once into its 64 MiB I/O buffer arena, past which it would
 * read into fresh memory), each asking first for the next batch to be prefetched, on a thread
 * of their own up to RESTORE_SLOTS batches ahead of the copies into the state: the disk
 * reads the next batches while one is copied (README "llama.cpp" has the measurements).
 */
#define RESTORE_BATCH_BYTES  (4u << 20)
#define RESTORE_BATCH_BLOCKS 256u
#define RESTORE_SLOTS	     3

struct fetch {
	struct kvt_llama *kl;
	const struct kvt_key *keys;
	uint32_t nb, win, nwin;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint32_t fetched;  /* batches whose gets are done */
	uint32_t consumed; /* batches copied into the state (their slot is free again) */
	bool stop;	   /* the copies stopped: fetch no more */
	int rc[RESTORE_SLOTS];
	int *status; /* RESTORE_SLOTS * win */
};

static uint8_t *fetch_slot(const struct fetch *f, uint32_t k, uint32_t i)
{
	return f->kl->stage.p + ((size_t)(k % RESTORE_SLOTS) * f->win + i) * f->kl->block_bytes;
}

/* Gets batch k into its slot. */
static void fetch_batch(struct fetch *f, uint32_t k)
{
	struct kvt_llama *kl = f->kl;
	const uint32_t first = k * f->win, m = f->nb - first < f->win ? f->nb - first : f->win;
	void *bufs[RESTORE_BATCH_BLOCKS];

	for (uint32_t i = 0; i < m; i++)
		bufs[i] = fetch_slot(f, k, i);
	/* the disk starts on the next batch while the daemon finishes this one */
	if (first + m < f->nb)
		kvt_prefetch(kl->c, kl->lay, f->keys + first + m,
			     f->nb - first - m < f->win ? f->nb - first - m : f->win, 3, 0);
	f->rc[k % RESTORE_SLOTS] =
	    kvt_get_batch(kl->c, kl->lay, f->keys + first, bufs, kl->block_bytes, m,
			  f->status + (size_t)(k % RESTORE_SLOTS) * f->win);
}

static void *fetch_thread(void *arg)
{
	struct fetch *f = arg;

	for (uint32_t k = 0; k < f->nwin; k++) {
		pthread_mutex_lock(&f->mu);
		while (!f->stop && k >= f->consumed + RESTORE_SLOTS)
			pthread_cond_wait(&f->cv, &f->mu);
		bool stop = f->stop;
		pthread_mutex_unlock(&f->mu);
		if (stop)
			break;
		fetch_batch(f, k);
		pthread_mutex_lock(&f->mu);
		f->fetched = k + 1;
		pthread_cond_broadcast(&f->cv);
		pthread_mutex_unlock(&f->mu);
	}
	return NULL;
}

/* Restores up to nb leading blocks; returns how many it did (the sequence then holds that
 * many * 64 cells), 0 on any failure (the sequence is empty then), with kl->msg and *why set.
 * Each block is copied to its place in the state as its batch comes in, in order, up to the
 * first that failed: the state describes exactly the blocks read whole. */
static uint32_t restore(struct kvt_llama *kl, const struct kvt_key *keys, uint32_t nb, int *why)
{
	const uint32_t cells = nb * BT;
	const size_t max = state_bytes(kl, llama_n_ctx(kl->ctx));
	struct fetch f = {.kl = kl, .keys = keys, .nb = nb};
	uint32_t got = 0;
	pthread_t th;
	bool threaded = false;
	size_t len;

	f.win = kl->restore_batch ? kl->restore_batch
				  : (uint32_t)(RESTORE_BATCH_BYTES / kl->block_bytes);
	if (f.win == 0)
		f.win = 1;
	if (f.win > RESTORE_BATCH_BLOCKS)
		f.win = RESTORE_BATCH_BLOCKS;
	if (f.win > nb)
		f.win = nb;
	f.nwin = (nb + f.win - 1) / f.win;
	const uint32_t slots = f.nwin < RESTORE_SLOTS ? f.nwin : RESTORE_SLOTS;
	f.status = calloc((size_t)RESTORE_SLOTS * f.win, sizeof(*f.status));
	if (!f.status || kbuf_reserve(&kl->state, state_bytes(kl, cells), max) < 0 ||
	    kbuf_reserve(&kl->stage, (size_t)slots * f.win * kl->block_bytes,
			 (size_t)RESTORE_SLOTS * f.win * kl->block_bytes) < 0) {
		free(f.status);
		*why = -ENOMEM;
		return 0;
	}
	state_headers(kl, kl->state.p, cells);
	pthread_mutex_init(&f.mu, NULL);
	pthread_cond_init(&f.cv, NULL);
	/* One batch: no thread.  Without a thread (it could not start) the batches take turns
	 * with the copies. */
	if (f.nwin > 1)
		threaded = pthread_create(&th, NULL, fetch_thread, &f) == 0;
	for (uint32_t k = 0; k < f.nwin; k++) {
		const uint32_t first = k * f.win, m = nb - first < f.win ? nb - first : f.win;
		const int *st = f.status + (size_t)(k % RESTORE_SLOTS) * f.win;
		uint32_t ok = 0;
		int rc;

		if (threaded) {
			pthread_mutex_lock(&f.mu);
			while (f.fetched <= k)
				pthread_cond_wait(&f.cv, &f.mu);
			pthread_mutex_unlock(&f.mu);
		} else {
			fetch_batch(&f, k);
		}
		rc = f.rc[k % RESTORE_SLOTS];
		if (rc < 0) {
			fmt_err(kl->msg, sizeof(kl->msg), "blocks %u-%u of %u: %s", first,
				first + m - 1, nb, kvt_strerror(rc));
			*why = rc;
			break;
		}
		for (; ok < m && st[ok] == (int)kl->block_bytes; ok++)
			state_put_block(kl, kl->state.p, cells, first + ok, fetch_slot(&f, k, ok));
		got += ok;
		if (ok < m) {
			if (st[ok] >= 0 || st[ok] == -ENOBUFS) {
				fmt_err(
				    kl->msg, sizeof(kl->msg),
				    "block %u: %s%d bytes, the layout's blocks have %zu: not used",
				    got, st[ok] < 0 ? "more than " : "",
				    st[ok] < 0 ? (int)kl->block_bytes : st[ok], kl->block_bytes);
				*why = -EBADMSG;
			} else {
				fmt_err(kl->msg, sizeof(kl->msg), "block %u of %u: %s", got, nb,
					kvt_strerror(st[ok]));
				*why = st[ok];
			}
			break;
		}
		pthread_mutex_lock(&f.mu);
		f.consumed = k + 1;
		pthread_cond_broadcast(&f.cv);
		pthread_mutex_unlock(&f.mu);
	}
	if (threaded) {
		pthread_mutex_lock(&f.mu);
		f.stop = true;
		pthread_cond_broadcast(&f.cv);
		pthread_mutex_unlock(&f.mu);
		pthread_join(th, NULL);
	}
	pthread_cond_destroy(&f.cv);
	pthread_mutex_destroy(&f.mu);
	free(f.status);
	if (got == 0)
		return 0;
	if (got < nb)
		state_shrink(kl, kl->state.p, cells, got * BT);
	len = state_bytes(kl, got * BT);
	if (llama_state_seq_set_data(kl->ctx, kl->state.p, len, kl->seq) != len ||
	    llama_memory_seq_pos_max(llama_get_memory(kl->ctx), kl->seq) !=
		(llama_pos)(got * BT - 1)) {
		llama_memory_seq_rm(llama_get_memory(kl->ctx), kl->seq, -1, -1);
		fmt_err(kl->msg, sizeof(kl->msg), "llama_state_seq_set_data refused %u blocks",
			got);
		*why = -EIO;
		got = 0;
	}
	return got;
}

/* ---------------------------------------------------------------------------------------
 * Storing: the sequence's state -> blocks [from, to) by position.
 */
static int store(struct kvt_llama *kl, const struct kvt_key *keys, uint32_t from, uint32_t to,
		 uint32_t n_tokens, uint32_t *stored)
{
	const uint32_t hd = kl->hd, nkv = kl->n_kv;
	const size_t hb = (size_t)hd * kl->el, half = kl->layer_bytes / 2;
	struct state_view sv;
	uint32_t *cell_of = NULL;
	uint8_t *st;
	size_t len = 0;
	int rc;

	/* All there already (a full hit of a prompt of whole blocks stores only its last one):
	 * spare the copy of the whole sequence's state. */
	if (kvt_lookup(kl->c, kl->lay, keys + from, to - from) == (int)(to - from))
		return 0;
	len = llama_state_seq_get_size(kl->ctx, kl->seq);
	if (kbuf_reserve(&kl->state, len, state_bytes(kl, llama_n_ctx(kl->ctx))) < 0)
		return -ENOMEM;
	st = kl->state.p;
	if (!len || llama_state_seq_get_data(kl->ctx, st, len, kl->seq) != len) {
		fmt_err(kl->msg, sizeof(kl->msg), "llama_state_seq_get_data failed");
		rc = -EIO;
		goto out_st;
	}
	if ((rc = parse_state(st, len, &sv, kl->msg, sizeof(kl->msg))) < 0)
		goto out_st;
	if (sv.cells != n_tokens || sv.n_layer != kl->fmt.n_layer || sv.k_type != kl->fmt.k_type ||
	    sv.v_type != kl->fmt.v_type || sv.k_row != kl->fmt.k_row || sv.v_row != kl->fmt.v_row ||
	    sv.v_trans != kl->fmt.v_trans) {
		fmt_err(kl->msg, sizeof(kl->msg),
			"sequence state of %u cells differs from the one learned at open",
			sv.cells);
		rc = -EBADMSG;
		goto out;
	}
	if (!(cell_of = malloc(n_tokens * sizeof(*cell_of)))) {
		rc = -ENOMEM;
		goto out;
	}
	memset(cell_of, 0xff, n_tokens * sizeof(*cell_of));
	for (uint32_t i = 0; i < sv.cells; i++) {
		int32_t pos;
		memcpy(&pos, sv.meta + (size_t)i * 12, 4);
		if (pos < 0 || (uint32_t)pos >= n_tokens || cell_of[pos] != UINT32_MAX) {
			fmt_err(kl->msg, sizeof(kl->msg),
				"sequence state: position %d out of place", pos);
			rc = -EBADMSG;
			goto out;
		}
		cell_of[pos] = i;
	}
	for (uint32_t b = from; b < to; b++) {
		struct kvt_reservation r;
		rc = kvt_put_reserve(kl->c, kl->lay, &keys[b], kl->block_bytes, &r);
		if (rc == -EEXIST)
			continue;
		if (rc < 0) {
			fmt_err(kl->msg, sizeof(kl->msg), "store block %u: %s", b,
				kvt_strerror(rc));
			goto out;
		}
		for (uint32_t l = 0; l < sv.n_layer; l++) {
			uint8_t *k = (uint8_t *)r.data + l * kl->layer_bytes, *v = k + half;
			for (uint32_t t = 0; t < BT; t++) {
				const uint32_t c = cell_of[b * BT + t];
				for (uint32_t h = 0; h < nkv; h++) {
					memcpy(k + ((size_t)h * BT + t) * hb,
					       sv.k[l] + c * sv.k_row + h * hb, hb);
					if (!sv.v_trans)
						memcpy(v + ((size_t)h * BT + t) * hb,
						       sv.v[l] + c * sv.v_row + h * hb, hb);
				}
			}
			if (sv.v_trans) {
				uint16_t *vd = (uint16_t *)(void *)v;
				const uint16_t *vs = (const uint16_t *)(const void *)sv.v[l];
				for (uint32_t h = 0; h < nkv; h++)
					for (uint32_t t = 0; t < BT; t++) {
						const uint32_t c = cell_of[b * BT + t];
						for (uint32_t d = 0; d < hd; d++)
							vd[((size_t)h * BT + t) * hd + d] =
							    vs[((size_t)h * hd + d) * sv.cells + c];
					}
			}
		}
		if ((rc = kvt_put_commit_at(kl->c, &r, b * BT)) < 0 && rc != -EEXIST) {
			fmt_err(kl->msg, sizeof(kl->msg), "store block %u: %s", b,
				kvt_strerror(rc));
			goto out;
		}
		(*stored)++;
	}
	rc = 0;
out:
	free(cell_of);
	view_free(&sv);
out_st:
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

	t0 = now_ms();
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
			fmt_err(kl->msg, sizeof(kl->msg), "lookup: %s", kvt_strerror(rc));
			r.kvtier = rc;
		} else {
			hit = nb_max ? (uint32_t)rc : 0;
		}
	}
	r.n_cached = hit * BT;
	r.lookup_ms = now_ms() - t0;

	if (hit && kl->after_lookup)
		kl->after_lookup(kl->after_lookup_arg, hit);
	t0 = now_ms();
	if (hit)
		done = restore(kl, keys, hit, &r.kvtier);
	r.n_restored = done * BT;
	r.restore_ms = now_ms() - t0;
	if (r.kvtier == -KVT_EDAEMON)
		drop_client(kl);

	t0 = now_ms();
	rc = kvt_llama_eval(kl->ctx, kl->seq, tokens + r.n_restored, n - r.n_restored,
			    (llama_pos)r.n_restored, kl->n_batch);
	r.eval_ms = now_ms() - t0;
	if (rc < 0)
		goto out;
	r.n_evaluated = (uint32_t)n - r.n_restored;

	t0 = now_ms();
	if (kl->c && keys && !(kl->flags & KVT_LLAMA_NO_STORE) && nb_all > done) {
		int s = store(kl, keys, done, nb_all, (uint32_t)n, &r.blocks_stored);
		if (s < 0 && r.kvtier == 0)
			r.kvtier = s;
		if (s == -KVT_EDAEMON)
			drop_client(kl);
	}
	r.store_ms = now_ms() - t0;
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
