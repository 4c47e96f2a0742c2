/* SPDX-License-Identifier: MIT */
/*
 * Token-major engine pages through the device API (kvt_dev_pages.page_heads), through a real
 * kvtierd: vLLM pages [block_size][heads][dim] put by kvt_dev_put with page_heads = heads must
 * be stored in the layout's order ([layer][K, V][head][token][dim]), which a CPU kvt_get
 * returns (compared with a plain transposition written here), and kvt_dev_get must restore the
 * pages: byte for byte from the raw host tier and the GPU pool, as the CPU decoder gives from
 * the compressed host tier (host.codec = bq), whose records must be the CPU encoder's bytes of
 * the transposed block.  Blocks of one page and of two pages per layer and K/V; blocks a CPU
 * put restored into pages; page_heads 0, and a caller's older struct size, store the pages as
 * they are (as before); page_heads that do not fit the layout are -EINVAL; pages only 2-byte
 * aligned (the bq get then decodes into a slot and scatters it).  Exits 77
 * (skipped) without a GPU.
 *
 * usage: gpu_pageorder_test KVTIERD [KVTIERCTL] [TEST...]
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "codec.h"
#include "harness.h"
#include "kvt_gpu.h"
#include "kvt_half.h"
#include "kvtier.h"

#include "gpu_test_geom.h"
#define ROW   ((size_t)D * 2)
#define BLOCK ((size_t)L * 2 * H * T * ROW)

enum mode { RAW, BQ, POOL };

static const char *kvtierd;
static char dir[256], sock[300];
static pid_t cur;
/* host mirrors: the engine's pages (vLLM [L][2][NE][page]), blocks */
static uint8_t *eng, *eng2, *want, *got;
static uint32_t ne, ppb, pt; /* engine blocks per layer, pages a block, tokens a page */
static uint64_t page;

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
	rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
	return rs;
}

/* KV-like fp16 values (smooth in tokens and channels), so that bq codes them as it would. */
static void fill_engine(uint8_t *e, unsigned tag)
{
	size_t n = (size_t)L * 2 * ne * page / 2;
	uint16_t *v = (uint16_t *)e;

	for (size_t i = 0; i < n; i++) {
		unsigned d = (unsigned)(i % D), h = (unsigned)(i / D % H);
		unsigned t = (unsigned)(i / ((size_t)H * D) % pt);
		float x = sinf(0.05f * (float)(t + 3 * tag) + (float)(d % 17) * 0.11f + (float)h) *
			      (0.5f + (float)(d % 7)) +
			  0.002f * (float)((int)(rnd() % 101) - 50);

		v[i] = kvt_float_to_half(x);
	}
}

static uint8_t *page_at(uint8_t *e, unsigned l, unsigned kv, uint32_t id)
{
	return e + (((size_t)l * 2 + kv) * ne + id) * page;
}

/* The layout's order: block row (l, kv, h, t) is token t % pt, head h of page ids[t / pt]. */
static void to_block(uint8_t *e, const uint32_t *id, uint8_t *blk)
{
	for (unsigned l = 0; l < L; l++)
		for (unsigned kv = 0; kv < 2; kv++)
			for (unsigned h = 0; h < H; h++)
				for (unsigned t = 0; t < T; t++)
					memcpy(blk + ((((size_t)l * 2 + kv) * H + h) * T + t) * ROW,
					       page_at(e, l, kv, id[t / pt]) +
						   ((size_t)(t % pt) * H + h) * ROW,
					       ROW);
}

static void to_pages(const uint8_t *blk, const uint32_t *id, uint8_t *e)
{
	for (unsigned l = 0; l < L; l++)
		for (unsigned kv = 0; kv < 2; kv++)
			for (unsigned h = 0; h < H; h++)
				for (unsigned t = 0; t < T; t++)
					memcpy(page_at(e, l, kv, id[t / pt]) +
						   ((size_t)(t % pt) * H + h) * ROW,
					       blk + ((((size_t)l * 2 + kv) * H + h) * T + t) * ROW,
					       ROW);
}

/* As the device API stores pages without page_heads: pages one after the other. */
static void concat(uint8_t *e, const uint32_t *id, uint8_t *blk)
{
	for (unsigned l = 0; l < L; l++)
		for (unsigned kv = 0; kv < 2; kv++)
			for (unsigned j = 0; j < ppb; j++)
				memcpy(blk + (((size_t)l * 2 + kv) * ppb + j) * page,
				       page_at(e, l, kv, id[j]), page);
}

static struct kvt_key key_of(unsigned i)
{
	return (struct kvt_key){0x9a9e000000000000ull + i, 0x5151ull * (i + 3)};
}

static pid_t start(enum mode m)
{
	const char *argv[] = {kvtierd, "-f",
			      "-s",    sock,
			      "-o",    m == BQ ? "host.codec=bq" : "host.codec=raw",
			      "-o",    "host.capacity=256MiB",
			      "-o",    m == POOL ? "gpu.capacity=64MiB" : "gpu.capacity=0",
			      "-o",    "daemon.log_level=warn",
			      NULL};
	pid_t pid;

	unlink(sock);
	pid = kvt_test_daemon_start(argv, NULL, NULL);
	cur = pid > 0 ? pid : 0;
	return pid;
}

/* mis: bytes the engine's tensors start past an aligned address (2: pages only 2-byte
 * aligned, so the bq get decodes into a slot and scatters instead of the paged decoder) */
static void run(enum mode m, uint32_t pages_per_block, unsigned mis)
{
	struct kvt_layout l = {sizeof(l), L, H, D, T, KVT_DTYPE_FP16, 0, 0, 1, "gpu-pageorder"};
	struct kvt_connect_opts co = {sizeof(co), sock, "gpu_pageorder_test", 0, 0, 0};
	struct kvt_dev_opts dopt = {sizeof(dopt), -1, sock, m == POOL ? 0 : KVT_DEV_HOST_ONLY};
	struct kvt_codec_geom g = {L, H, D, T, KVT_DTYPE_FP16, 0};
	struct kvt_dev_info info = {.size = sizeof(info)};
	static uint8_t rec[2 * BLOCK];
	static struct kvt_key keys[NB];
	static uint32_t ids[NB * 2], perm[NB * 2 + 5];
	struct kvt_client *c = NULL;
	struct kvt_dev *dv = NULL;
	struct kvt_chain *ch = NULL;
	struct kvt_dev_pages p;
	uint64_t base[L], layer;
	uint8_t *dev = NULL, *pgs;
	int lay, dl;
	pid_t pid;

	ppb = pages_per_block;
	pt = T / ppb;
	page = (uint64_t)pt * H * ROW;
	ne = NB * ppb + 5; /* some engine blocks no block uses: they must stay as they are */
	layer = 2ull * ne * page;
	for (uint32_t i = 0; i < ne; i++)
		perm[i] = i;
	for (uint32_t i = ne - 1; i > 0; i--) {
		uint32_t j = (uint32_t)(rnd() % (i + 1)), x = perm[i];

		perm[i] = perm[j];
		perm[j] = x;
	}
	memcpy(ids, perm, (size_t)NB * ppb * sizeof(*ids));
	CHECK_EQ(kvt_chain_parse("bq", &ch), 0);
	pid = start(m);
	CHECK(pid > 0);
	CHECK_EQ(kvt_connect(&co, &c), 0);
	lay = kvt_register_layout(c, &l);
	CHECK(lay >= 0);
	CHECK_EQ(kvt_dev_open(c, &dopt, &dv), 0);
	dl = kvt_dev_layout(dv, &l);
	CHECK(dl >= 0);
	CHECK_EQ(kvt_gpu_dev_alloc(-1, L * layer + 16, (void **)&dev), 0);
	pgs = dev + mis;
	for (int i = 0; i < L; i++)
		base[i] = (uint64_t)(uintptr_t)pgs + i * layer;
	p = (struct kvt_dev_pages){sizeof(p), L, base, page, page, ne * page, 2, ppb, H};

	/* put: stored in the layout's order */
	fill_engine(eng, 1);
	CHECK_EQ(kvt_gpu_memcpy(pgs, eng, L * layer), 0);
	for (unsigned k = 0; k < NB; k++)
		keys[k] = key_of(k);
	CHECK_EQ(kvt_dev_put(dv, dl, &p, keys, ids, NB, 0, NULL), NB);
	CHECK_EQ(kvt_dev_info(dv, &info), 0);
	CHECK_EQ(m == POOL ? info.gpu_puts : info.host_puts, NB);
	CHECK_EQ(info.gpu_encodes, m == BQ ? NB : 0); /* bq: every block coded on the GPU */
	CHECK(m == POOL || (info.daemon_ns > 0 && info.queue_ns > 0)); /* the host path's time */
	for (unsigned k = 0; k < NB; k++) {
		uint8_t *w = want + k * BLOCK;

		to_block(eng, &ids[k * ppb], w);
		CHECK_EQ(kvt_get(c, lay, &keys[k], got + k * BLOCK, BLOCK), (ssize_t)BLOCK);
		if (m != BQ) {
			CHECK(memcmp(got + k * BLOCK, w, BLOCK) == 0);
		} else {
			struct kvt_lease ls;
			ssize_t n = kvt_chain_encode(ch, &g, w, BLOCK, rec, sizeof(rec));

			/* the GPU's record is the CPU encoder's, of the transposed block */
			CHECK(n > 0);
			CHECK_EQ(kvt_get_lease(c, lay, &keys[k], &ls), 0);
			CHECK_EQ(ls.chain_id, kvt_chain_id(ch));
			CHECK_EQ(ls.len, n);
			CHECK(memcmp(ls.data, rec, (size_t)n) == 0);
			CHECK_EQ(kvt_lease_release(c, &ls), 0);
		}
	}

	/* get: the pages back (bq: the CPU decoder's values, got); other engine blocks kept */
	CHECK_EQ(kvt_gpu_memset(pgs, 0, L * layer), 0);
	CHECK_EQ(kvt_dev_get(dv, dl, &p, keys, ids, NB, 0, NULL), NB);
	CHECK_EQ(kvt_dev_info(dv, &info), 0);
	CHECK_EQ(m == POOL ? info.gpu_gets : info.host_gets, NB);
	CHECK_EQ(info.gpu_decodes, m == BQ ? NB : 0);
	CHECK_EQ(info.cpu_decodes, 0);
	memset(eng2, 0, L * layer);
	for (unsigned k = 0; k < NB; k++)
		to_pages(m == BQ ? got + k * BLOCK : want + k * BLOCK, &ids[k * ppb], eng2);
	if (m != BQ) { /* the transposition of the transposition: the pages put */
		for (unsigned i = 0; i < NB * ppb; i++)
			for (unsigned x = 0; x < L * 2; x++)
				CHECK(!memcmp(page_at(eng2, x / 2, x % 2, ids[i]),
					      page_at(eng, x / 2, x % 2, ids[i]), page));
	}
	CHECK_EQ(kvt_gpu_memcpy(eng, pgs, L * layer), 0);
	CHECK(memcmp(eng, eng2, L * layer) == 0);

	/* blocks a CPU put (in the layout's order) come back into the pages */
	fill_engine(eng, 2);
	for (unsigned k = 0; k < NB; k++) {
		keys[k] = key_of(100 + k);
		to_block(eng, &ids[k * ppb], want + k * BLOCK);
		CHECK_EQ(kvt_put(c, lay, &keys[k], want + k * BLOCK, BLOCK), 0);
		CHECK_EQ(kvt_get(c, lay, &keys[k], got + k * BLOCK, BLOCK), (ssize_t)BLOCK);
	}
	CHECK_EQ(kvt_gpu_memset(pgs, 0, L * layer), 0);
	CHECK_EQ(kvt_dev_get(dv, dl, &p, keys, ids, NB, 0, NULL), NB);
	memset(eng2, 0, L * layer);
	for (unsigned k = 0; k < NB; k++)
		to_pages(got + k * BLOCK, &ids[k * ppb], eng2);
	CHECK_EQ(kvt_gpu_memcpy(eng, pgs, L * layer), 0);
	CHECK(memcmp(eng, eng2, L * layer) == 0);

	/* page_heads 0, and the struct's former size: the pages as they are, as before */
	fill_engine(eng, 3);
	CHECK_EQ(kvt_gpu_memcpy(pgs, eng, L * layer), 0);
	for (unsigned k = 0; k < NB; k++)
		keys[k] = key_of(200 + k);
	p.page_heads = 0;
	CHECK_EQ(kvt_dev_put(dv, dl, &p, keys, ids, NB / 2, 0, NULL), NB / 2);
	p.page_heads = H;
	p.size = offsetof(struct kvt_dev_pages, page_heads);
	CHECK_EQ(kvt_dev_put(dv, dl, &p, keys + NB / 2, ids + NB / 2 * ppb, NB - NB / 2, 0, NULL),
		 NB - NB / 2);
	p.size = sizeof(p);
	for (unsigned k = 0; k < NB; k++) {
		concat(eng, &ids[k * ppb], want);
		if (m != BQ) {
			CHECK_EQ(kvt_get(c, lay, &keys[k], got, BLOCK), (ssize_t)BLOCK);
			CHECK(memcmp(got, want, BLOCK) == 0);
		} else {
			struct kvt_lease ls;
			ssize_t n = kvt_chain_encode(ch, &g, want, BLOCK, rec, sizeof(rec));

			CHECK(n > 0);
			CHECK_EQ(kvt_get_lease(c, lay, &keys[k], &ls), 0);
			CHECK_EQ(ls.len, n);
			CHECK(memcmp(ls.data, rec, (size_t)n) == 0);
			CHECK_EQ(kvt_lease_release(c, &ls), 0);
		}
	}

	/* page_heads that do not fit the layout */
	p.page_heads = H / 2;
	CHECK_EQ(kvt_dev_put(dv, dl, &p, keys, ids, 1, 0, NULL), -EINVAL);
	CHECK_EQ(kvt_dev_get(dv, dl, &p, keys, ids, 1, 0, NULL), -EINVAL);
	p.page_heads = H;
	p.page_bytes = page / 2; /* half the layout's tokens */
	p.block_stride = page / 2;
	CHECK_EQ(kvt_dev_put(dv, dl, &p, keys, ids, 1, 0, NULL), -EINVAL);
	p.page_bytes = p.block_stride = page;
	p.n_kv = 1;
	CHECK_EQ(kvt_dev_get(dv, dl, &p, keys, ids, 1, 0, NULL), -EINVAL);

	kvt_gpu_dev_free(dev);
	kvt_dev_close(dv);
	kvt_close(c);
	kvt_chain_free(ch);
	CHECK_EQ(kvt_test_daemon_stop(pid), 0);
	cur = 0;
}

static void pageorder_raw(void)
{
	run(RAW, 1, 0);
}

static void pageorder_raw_halfpages(void)
{
	run(RAW, 2, 0);
}

static void pageorder_raw_unaligned(void)
{
	run(RAW, 2, 2);
}

static void pageorder_bq(void)
{
	run(BQ, 1, 0);
}

static void pageorder_bq_halfpages(void)
{
	run(BQ, 2, 0);
}

static void pageorder_bq_unaligned(void)
{
	run(BQ, 2, 2);
}

static void pageorder_pool(void)
{
	run(POOL, 1, 0);
}

static void pageorder_pool_halfpages(void)
{
	run(POOL, 2, 0);
}

static const struct kvt_test_case tests[] = {
    {"pageorder_raw", pageorder_raw},
    {"pageorder_raw_halfpages", pageorder_raw_halfpages},
    {"pageorder_raw_unaligned", pageorder_raw_unaligned},
    {"pageorder_bq", pageorder_bq},
    {"pageorder_bq_halfpages", pageorder_bq_halfpages},
    {"pageorder_bq_unaligned", pageorder_bq_unaligned},
    {"pageorder_pool", pageorder_pool},
    {"pageorder_pool_halfpages", pageorder_pool_halfpages}};

int main(int argc, char **argv)
{
	size_t big = (size_t)(NB * 2 + 5) * 2 * L * T * H * ROW; /* the largest engine */
	int ran;

	if (argc < 2) {
		fprintf(stderr, "usage: gpu_pageorder_test KVTIERD [KVTIERCTL] [TEST...]\n");
		return 2;
	}
	if (kvt_gpu_available() <= 0) {
		fprintf(stderr, "no GPU: skipped\n");
		return 77;
	}
	kvtierd = argv[1];
	signal(SIGPIPE, SIG_IGN);
	eng = malloc(big);
	eng2 = malloc(big);
	want = malloc(NB * BLOCK);
	got = malloc(NB * BLOCK);
	if (!eng || !eng2 || !want || !got)
		return 1;
	snprintf(dir, sizeof(dir), "/tmp/kvt-gpupo-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	snprintf(sock, sizeof(sock), "%s/kvtier.sock", dir);
#ifdef KVT_GPU_EMU
	/* gpu/emu/gpu_host_emu.c: no GPU tier (the pool cases come last) */
	ran = kvt_test_run_cases(tests, sizeof(tests) / sizeof(tests[0]) - 2, argv + 3,
				 argc > 3 ? argc - 3 : 0, &cur, NULL);
#else
	ran = kvt_test_run_cases(tests, sizeof(tests) / sizeof(tests[0]), argv + 3,
				 argc > 3 ? argc - 3 : 0, &cur, NULL);
#endif
	free(eng);
	free(eng2);
	free(want);
	free(got);
	return kvt_test_finish(dir, ran);
}
