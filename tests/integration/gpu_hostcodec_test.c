/* SPDX-License-Identifier: MIT */
/*
 * The device API over the compressed host tier (host.codec = bq, no GPU tier), through a real
 * kvtierd: kvt_dev_get of blocks the CPU put encoded moves the records and decodes them on
 * the GPU into the engine's pages, which must equal the CPU's decode (kvt_get) bit for bit;
 * kvt_dev_put encodes on the GPU, and the stored records must be the CPU encoder's bytes, and
 * read back (GPU and CPU) to the same values; with vLLM pages of a whole block and of half a
 * block (decoded into staging, then copied into the pages), and with one buffer per block
 * (decoded in place).  Exits
 * 77 (skipped) without a GPU.
 *
 * usage: gpu_hostcodec_test KVTIERD KVTIERCTL
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
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
#define PAGE  ((uint64_t)T * H * D * 2)
#define BLOCK ((size_t)L * 2 * PAGE)

static const char *kvtierd, *kvtierctl;
static char dir[256], sock[300];
static pid_t cur;

static void make_block(uint16_t *b, unsigned k)
{
	uint64_t s = 0x9e3779b97f4a7c15ull * (k + 1);

	for (size_t i = 0; i < BLOCK / 2; i++) {
		unsigned d = (unsigned)(i % D), t = (unsigned)(i / (H * D) % T);
		float v;

		s ^= s << 13, s ^= s >> 7, s ^= s << 17;
		v = sinf(0.05f * (float)(t + T * k) + (float)(d % 17) * 0.11f) *
			(0.5f + (float)(d % 7)) +
		    0.002f * (float)(int)(s % 101 - 50);
		b[i] = kvt_float_to_half(v);
	}
}

static pid_t start(void)
{
	const char *argv[] = {kvtierd, "-f",
			      "-s",    sock,
			      "-o",    "host.codec=bq",
			      "-o",    "host.capacity=256MiB",
			      "-o",    "gpu.capacity=0",
			      NULL};
	pid_t pid;

	unlink(sock);
	pid = kvt_test_daemon_start(argv, NULL, NULL);
	cur = pid > 0 ? pid : 0;
	return pid;
}

/* Engine pages: NB * ppb engine blocks per layer, vLLM order [2][NB * ppb][page], ppb pages
 * a kvtier block; or (onebuf) one buffer per block, which the kernels decode into and encode
 * from in place. */
struct pages {
	uint8_t *dev;
	uint64_t base[L];
	struct kvt_dev_pages p;
	bool onebuf;
	uint32_t ppb;
};

static int pages_init(struct pages *pg)
{
	uint64_t layer = 2ull * NB * PAGE;

	if (pg->onebuf) {
		if (kvt_gpu_dev_alloc(-1, NB * BLOCK, (void **)&pg->dev) < 0)
			return -1;
		pg->base[0] = (uint64_t)(uintptr_t)pg->dev;
		pg->p =
		    (struct kvt_dev_pages){sizeof(pg->p), 1, pg->base, BLOCK, BLOCK, 0, 1, 1, 0};
		return kvt_gpu_memset(pg->dev, 0, NB * BLOCK);
	}

	if (kvt_gpu_dev_alloc(-1, L * layer, (void **)&pg->dev) < 0)
		return -1;
	for (int i = 0; i < L; i++)
		pg->base[i] = (uint64_t)(uintptr_t)pg->dev + (uint64_t)i * layer;
	pg->p = (struct kvt_dev_pages){
	    sizeof(pg->p), L, pg->base, PAGE / pg->ppb, PAGE / pg->ppb, NB * PAGE, 2, pg->ppb, 0};
	return kvt_gpu_memset(pg->dev, 0, L * layer);
}

/* The pages of engine blocks id[0 .. ppb - 1] <-> a kvtier block (page-first) in host memory. */
static int pages_io(struct pages *pg, const uint32_t *id, uint8_t *blk, bool up)
{
	uint64_t pb = PAGE / pg->ppb;

	if (pg->onebuf)
		return up ? kvt_gpu_memcpy(pg->dev + (size_t)id[0] * BLOCK, blk, BLOCK)
			  : kvt_gpu_memcpy(blk, pg->dev + (size_t)id[0] * BLOCK, BLOCK);
	for (int l = 0; l < L; l++)
		for (int kv = 0; kv < 2; kv++)
			for (uint32_t j = 0; j < pg->ppb; j++) {
				uint8_t *dv = (uint8_t *)(uintptr_t)(pg->base[l] + kv * NB * PAGE +
								     id[j] * pb);
				uint8_t *h = blk + ((size_t)l * 2 + kv) * PAGE + j * pb;
				int r = up ? kvt_gpu_memcpy(dv, h, pb) : kvt_gpu_memcpy(h, dv, pb);

				if (r < 0)
					return r;
			}
	return 0;
}

/* The copies that write kvtier block blk (page-first, host memory) into the pages of engine
 * blocks id[0 .. ppb - 1], into segs; returns their number. */
static size_t pages_segs(const struct pages *pg, const uint32_t *id, const uint8_t *blk,
			 struct kvt_gpu_seg *segs)
{
	uint64_t pb = PAGE / pg->ppb;
	size_t n = 0;

	if (pg->onebuf) {
		segs[0] = (struct kvt_gpu_seg){
		    (uint64_t)(uintptr_t)blk,
		    (uint64_t)(uintptr_t)(pg->dev + (size_t)id[0] * BLOCK), BLOCK};
		return 1;
	}
	for (int l = 0; l < L; l++)
		for (int kv = 0; kv < 2; kv++)
			for (uint32_t j = 0; j < pg->ppb; j++)
				segs[n++] = (struct kvt_gpu_seg){
				    (uint64_t)(uintptr_t)(blk + ((size_t)l * 2 + kv) * PAGE +
							  j * pb),
				    pg->base[l] + kv * NB * PAGE + id[j] * pb, pb};
	return n;
}

static struct kvt_key key_of(unsigned i)
{
	return (struct kvt_key){0xd00d000000000000ull + i, 0x1234ull * (i + 7)};
}

static void run_pages(bool onebuf, uint32_t ppb)
{
	static uint16_t raw[BLOCK / 2], cpu[BLOCK / 2], gpu[BLOCK / 2];
	static uint8_t rec[2 * BLOCK];
	struct kvt_layout l = {sizeof(l), L, H, D, T, KVT_DTYPE_FP16, 0, 0, 1, "gpu-hostcodec"};
	struct kvt_connect_opts co = {sizeof(co), sock, "gpu_hostcodec_test", 0, 0, 0};
	struct kvt_dev_opts dopt = {sizeof(dopt), -1, sock, KVT_DEV_HOST_ONLY};
	struct kvt_codec_geom g = {L, H, D, T, KVT_DTYPE_FP16, 0};
	struct kvt_client *c = NULL;
	struct kvt_dev *dv = NULL;
	struct kvt_chain *ch = NULL;
	struct kvt_key keys[NB];
	struct pages pg = {.onebuf = onebuf, .ppb = ppb};
	uint32_t ids[NB * 2];
	int lay, dl;
	pid_t pid;

	CHECK_EQ(kvt_chain_parse("bq", &ch), 0);
	pid = start();
	CHECK(pid > 0);
	CHECK_EQ(kvt_connect(&co, &c), 0);
	lay = kvt_register_layout(c, &l);
	CHECK(lay >= 0);
	CHECK_EQ(kvt_dev_open(c, &dopt, &dv), 0);
	dl = kvt_dev_layout(dv, &l);
	CHECK(dl >= 0);
	CHECK_EQ(pages_init(&pg), 0);
	/* get: blocks the CPU put (records of bq), restored into shuffled engine blocks */
	for (unsigned k = 0; k < NB; k++) {
		keys[k] = key_of(k);
		for (uint32_t j = 0; j < ppb; j++) /* shuffled engine blocks */
			ids[k * ppb + j] = ((k * ppb + j) * 7 + 3) % (NB * ppb);
		make_block(raw, k);
		CHECK_EQ(kvt_put(c, lay, &keys[k], raw, BLOCK), 0);
	}
	CHECK_EQ(kvt_dev_get(dv, dl, &pg.p, keys, ids, NB, 0, NULL), NB);
	for (unsigned k = 0; k < NB; k++) {
		CHECK_EQ(kvt_get(c, lay, &keys[k], cpu, BLOCK), (ssize_t)BLOCK);
		CHECK_EQ(pages_io(&pg, &ids[k * ppb], (uint8_t *)gpu, false), 0);
		CHECK(memcmp(cpu, gpu, BLOCK) == 0);
	}
	/* put: encoded on the GPU; the records are the CPU encoder's, byte for byte.  The pages
	 * are written by copies queued on the caller's stream just before the call, as an
	 * engine's kernels would: the put must read them after those copies. */
	{
		struct kvt_gpu_engine *eng = NULL;
		void *st = NULL;
		uint8_t *host = NULL;
		struct kvt_gpu_seg *segs = calloc((size_t)NB * L * 2 * ppb, sizeof(*segs));
		size_t ns = 0;

		CHECK(segs);
		CHECK_EQ(kvt_gpu_engine_create(NULL, &eng), 0);
		CHECK_EQ(kvt_gpu_stream_create(&st), 0);
		CHECK_EQ(kvt_gpu_host_alloc((size_t)NB * BLOCK, (void **)&host), 0);
		for (unsigned k = 0; segs && host && k < NB; k++) {
			keys[k] = key_of(1000 + k);
			make_block((uint16_t *)(void *)(host + (size_t)k * BLOCK), 1000 + k);
			ns += pages_segs(&pg, &ids[k * ppb], host + (size_t)k * BLOCK, segs + ns);
		}
		CHECK(kvt_gpu_copy(eng, segs, ns, KVT_GPU_H2D, KVT_GPU_DMA, st) >= 0);
		CHECK_EQ(kvt_dev_put(dv, dl, &pg.p, keys, ids, NB, 0, st), NB);
		CHECK_EQ(kvt_gpu_stream_sync(st), 0);
		kvt_gpu_host_free(host);
		kvt_gpu_stream_destroy(st);
		kvt_gpu_engine_destroy(eng);
		free(segs);
	}
	for (unsigned k = 0; k < NB; k++) {
		struct kvt_lease ls;
		ssize_t n;

		make_block(raw, 1000 + k);
		n = kvt_chain_encode(ch, &g, raw, BLOCK, rec, sizeof(rec));
		CHECK(n > 0);
		CHECK_EQ(kvt_get_lease(c, lay, &keys[k], &ls), 0);
		CHECK_EQ(ls.chain_id, kvt_chain_id(ch));
		CHECK_EQ(ls.len, n);
		CHECK(memcmp(ls.data, rec, (size_t)n) == 0);
		CHECK_EQ(kvt_lease_release(c, &ls), 0);
	}
	/* and back through the GPU decoder: the CPU's values */
	CHECK_EQ(kvt_gpu_memset(pg.dev, 0, onebuf ? NB * BLOCK : L * 2ull * NB * PAGE), 0);
	CHECK_EQ(kvt_dev_get(dv, dl, &pg.p, keys, ids, NB, 0, NULL), NB);
	for (unsigned k = 0; k < NB; k++) {
		CHECK_EQ(kvt_get(c, lay, &keys[k], cpu, BLOCK), (ssize_t)BLOCK);
		CHECK_EQ(pages_io(&pg, &ids[k * ppb], (uint8_t *)gpu, false), 0);
		CHECK(memcmp(cpu, gpu, BLOCK) == 0);
	}
	/* a missing key in the second round: the get stops there (the round's leases past it
	 * are given back), the blocks before it are decoded, nothing stays leased */
	CHECK_EQ(kvt_gpu_memset(pg.dev, 0, onebuf ? NB * BLOCK : L * 2ull * NB * PAGE), 0);
	keys[40] = key_of(5000);
	CHECK_EQ(kvt_dev_get(dv, dl, &pg.p, keys, ids, NB, 0, NULL), 40);
	for (unsigned k = 0; k < 40; k++) {
		CHECK_EQ(kvt_get(c, lay, &keys[k], cpu, BLOCK), (ssize_t)BLOCK);
		CHECK_EQ(pages_io(&pg, &ids[k * ppb], (uint8_t *)gpu, false), 0);
		CHECK(memcmp(cpu, gpu, BLOCK) == 0);
	}
	if (kvtierctl) {
		long long held = -1;

		for (int i = 0; i < 200 && held; i++, usleep(10000))
			held = kvt_test_ctl_num(kvtierctl, sock, "status", "\"metrics\"", "leases");
		CHECK_EQ(held, 0);
	}
	kvt_gpu_dev_free(pg.dev);
	kvt_dev_close(dv);
	kvt_close(c);
	kvt_chain_free(ch);
	CHECK_EQ(kvt_test_daemon_stop(pid), 0);
	cur = 0;
}

static void gpu_hostcodec(void)
{
	run_pages(false, 1);
}

static void gpu_hostcodec_halfpages(void)
{
	run_pages(false, 2);
}

static void gpu_hostcodec_onebuf(void)
{
	run_pages(true, 1);
}

static const struct kvt_test_case tests[] = {{"gpu_hostcodec", gpu_hostcodec},
					     {"gpu_hostcodec_halfpages", gpu_hostcodec_halfpages},
					     {"gpu_hostcodec_onebuf", gpu_hostcodec_onebuf}};

int main(int argc, char **argv)
{
	int ran;

	if (argc < 2) {
		fprintf(stderr, "usage: gpu_hostcodec_test KVTIERD [KVTIERCTL]\n");
		return 2;
	}
	if (kvt_gpu_available() <= 0) {
		fprintf(stderr, "no GPU: skipped\n");
		return 77;
	}
	kvtierd = argv[1];
	kvtierctl = argc > 2 ? argv[2] : NULL;
	signal(SIGPIPE, SIG_IGN);
	snprintf(dir, sizeof(dir), "/tmp/kvt-gpuhc-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	snprintf(sock, sizeof(sock), "%s/kvtier.sock", dir);
	ran = kvt_test_run_cases(tests, 3, argv + 3, argc > 3 ? argc - 3 : 0, &cur, NULL);
	return kvt_test_finish(dir, ran);
}
