/* SPDX-License-Identifier: MIT */
/*
 * Integration tests of the GPU tier: a real kvtierd with gpu.capacity set, driven through
 * libkvtier's device API (kvt_dev_*), raw GPU_* messages and kvtierctl.
 *
 * usage: gpu_tier_test KVTIERD KVTIERCTL nogpu|gpu [--seed N] [TEST...]
 *   nogpu: what must hold on any machine (config keys, the daemon without a GPU, -ENODEV);
 *   gpu:   device put/get through the pool and the host arena; exits 77 without a GPU.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvt_gpu.h"
#include "kvt_proto.h"
#define KVT_CHECK_FAIL goto out
#include "harness.h"
#include "kvtier.h"

static const char *kvtierd, *kvtierctl;
static char dir[256], sock[300];
static unsigned seed;
static pid_t cur_daemon;

static pid_t daemon_start(const char *host_cap, const char *gpu_cap, ...)
{
	const char *argv[32] = {kvtierd, "-f", "-s", sock, "-o", NULL};
	char cap[64], gcap[64];
	int argc = 5;
	va_list ap;
	pid_t pid;

	snprintf(cap, sizeof(cap), "host.capacity=%s", host_cap);
	snprintf(gcap, sizeof(gcap), "gpu.capacity=%s", gpu_cap);
	argv[argc++] = cap;
	argv[argc++] = "-o";
	argv[argc++] = gcap;
	argv[argc++] = "-o";
	argv[argc++] = "daemon.log_level=warn";
	argv[argc++] = "-o";
	argv[argc++] = "daemon.tick_ms=20";
	va_start(ap, gpu_cap);
	for (const char *a; (a = va_arg(ap, const char *)) && argc < 30;)
		argv[argc++] = a;
	va_end(ap);
	argv[argc] = NULL;
	unlink(sock);
	pid = kvt_test_daemon_start(argv, NULL, NULL);
	cur_daemon = pid > 0 ? pid : 0;
	if (pid < 0)
		fprintf(stderr, "kvtierd refused to start\n");
	return pid;
}

static int daemon_stop(pid_t pid)
{
	cur_daemon = 0;
	return kvt_test_daemon_stop(pid);
}

static struct kvt_client *connect_ok(void)
{
	return kvt_test_connect(sock, "gpu-test", 10000);
}

/* A number of the GPU tier's row of `kvtierctl --json tiers` (-1: none, -2: no answer). */
static long long gpu_num(const char *name)
{
	return kvt_test_ctl_num(kvtierctl, sock, "tiers", "\"name\":\"gpu\"", name);
}

static long long status_num(const char *name)
{
	return kvt_test_ctl_num(kvtierctl, sock, "status", "\"metrics\"", name);
}

static struct kvt_layout test_layout(void)
{
	/* 4 layers x 8 heads x 16 tokens x 128 dims x K,V x fp16: 32 KiB pages, 256 KiB blocks */
	struct kvt_layout l = {sizeof(l), 4, 8, 128, 16, KVT_DTYPE_FP16, 0, 0, 1, "gpu-test-model"};
	return l;
}

static void make_keys(uint32_t tag, struct kvt_key *keys, int n)
{
	for (int i = 0; i < n; i++) {
		keys[i].lo = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1) ^ tag;
		keys[i].hi = (uint64_t)tag << 32 | (uint32_t)i;
	}
}

static uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* ---- no GPU needed ------------------------------------------------------------------------ */

static void test_config_keys(void)
{
	int rc;
	char *out =
	    kvt_test_sh(&rc,
			"%s --print-config -o gpu.capacity=2GiB -o gpu.device=GPU-0123abcd-0000-"
			"1111-2222-333344445555 -o gpu.promote_on_get=false 2>&1",
			kvtierd);

	CHECK_EQ(rc, 0);
	CHECK(strstr(out, "[gpu]"));
	CHECK(strstr(out, "capacity = 2147483648"));
	CHECK(strstr(out, "device = GPU-0123abcd-0000-1111-2222-333344445555"));
	CHECK(strstr(out, "promote_on_get = false"));
	CHECK(strstr(out, "high_watermark = 0.95"));
	free(out);
	out = kvt_test_sh(&rc, "%s --print-config 2>&1", kvtierd);
	CHECK_EQ(rc, 0);
	CHECK(strstr(out, "[gpu]") && strstr(strstr(out, "[gpu]"), "capacity = 0"));
	free(out);
	out = kvt_test_sh(&rc, "%s --print-config -o gpu.codec=int8 2>&1", kvtierd);
	CHECK(rc == 0 && strstr(out, "codec = int8"));
	free(out);
	out = kvt_test_sh(&rc, "%s --print-config -o gpu.codec=fp8 2>&1", kvtierd);
	CHECK(rc != 0 && strstr(out, "gpu.codec"));
	free(out);
	out = kvt_test_sh(
	    &rc, "%s --print-config -o gpu.low_watermark=0.9 -o gpu.high_watermark=0.5 2>&1",
	    kvtierd);
	CHECK(rc != 0 && strstr(out, "gpu.low_watermark"));
	free(out);
	out = kvt_test_sh(&rc, "%s --print-config -o gpu.capacity=1000 2>&1", kvtierd);
	CHECK(rc != 0 && strstr(out, "gpu.capacity"));
out:
	free(out);
}

/* The quantized block format both sides derive (gpu/kvt_gpu.h): sizes, groups, offsets. */
static void test_kvq_plan(void)
{
	struct kvt_gpu_kvq q, q4, q2;

	/* 4 layers, 8 heads x 128, 16-token pages, one page per block: 256 KiB raw */
	CHECK_EQ(kvt_gpu_kvq_plan(8, KVT_GPU_FP16, 8, 128, 16, 4, 256 << 10, &q), 0);
	CHECK_EQ(q.qp.k_group, 16);
	CHECK_EQ(q.qp.v_group, 32);
	CHECK_EQ(q.pages_per_block, 1);
	CHECK_EQ(q.raw_tile, 32 << 10);
	CHECK_EQ(q.k_bytes, 16 * 1024 + 4 * 1024);    /* codes + one group per channel */
	CHECK_EQ(q.v_bytes, 16 * 1024 + 4 * 16 * 32); /* codes + 32 groups per token */
	CHECK_EQ(q.enc_bytes, 4 * (q.k_bytes + q.v_bytes));
	CHECK_EQ(kvt_gpu_kvq_offset(&q, 0, 1, 0), q.k_bytes);
	CHECK_EQ(kvt_gpu_kvq_offset(&q, 2, 0, 0), 2 * (q.k_bytes + q.v_bytes));
	/* int4: half the codes; two pages per block: tiles of one layer's K side by side */
	CHECK_EQ(kvt_gpu_kvq_plan(4, KVT_GPU_BF16, 8, 128, 16, 4, 512 << 10, &q4), 0);
	CHECK_EQ(q4.pages_per_block, 2);
	CHECK_EQ(q4.k_bytes, 8 * 1024 + 4 * 1024);
	CHECK_EQ(kvt_gpu_kvq_offset(&q4, 1, 1, 1),
		 2 * (q4.k_bytes + q4.v_bytes) + 2 * q4.k_bytes + q4.v_bytes);
	CHECK_EQ(kvt_gpu_kvq_offset(&q4, 1, 1, 1) % 16, 0);
	/* 32-token pages: k_group 32; a 96-dim head: v_group 32 */
	CHECK_EQ(kvt_gpu_kvq_plan(8, KVT_GPU_FP16, 2, 96, 32, 1, 2 * 32 * 2 * 96 * 2, &q2), 0);
	CHECK_EQ(q2.qp.k_group, 32);
	CHECK_EQ(q2.qp.v_group, 32);
	/* What the kernels cannot take stays raw: the plan refuses it. */
	CHECK(kvt_gpu_kvq_plan(8, KVT_GPU_FP16, 8, 128, 12, 4, 4 * 2 * 12 * 8 * 128 * 2, &q2) < 0);
	CHECK(kvt_gpu_kvq_plan(8, KVT_GPU_FP16, 8, 100, 16, 4, 4 * 2 * 16 * 8 * 100 * 2, &q2) < 0);
	CHECK(kvt_gpu_kvq_plan(8, KVT_GPU_FP16, 8, 128, 16, 4, (256 << 10) + 4096, &q2) < 0);
	CHECK(kvt_gpu_kvq_plan(3, KVT_GPU_FP16, 8, 128, 16, 4, 256 << 10, &q2) < 0);
out:
	return;
}

/* Raw device connection: HELLO (device), then GPU_ATTACH.  Returns the fd or -1. */
static int raw_device(int *attach_res, struct kvt_gpu_ipc_desc *desc)
{
	struct kvt_msg_hello m;
	union {
		struct kvt_msg_hello_reply h;
		struct kvt_msg_gpu_attach_reply g;
		uint8_t raw[512];
	} r;
	struct kvt_msg_hdr a;
	int fd;

	if (kvt_sock_open(sock, &fd) < 0)
		return -1;
	memset(&m, 0, sizeof(m));
	kvt_msg_init(&m.h, KVT_MSG_HELLO, sizeof(m));
	m.lib_version = KVT_VERSION_NUMBER;
	m.want_admin = KVT_HELLO_DEVICE;
	if (send(fd, &m, sizeof(m), 0) != sizeof(m) || recv(fd, &r, sizeof(r), 0) <= 0 ||
	    r.h.h.type != KVT_MSG_HELLO_REPLY || r.h.res < 0)
		goto fail;
	kvt_msg_init(&a, KVT_MSG_GPU_ATTACH, sizeof(a));
	if (send(fd, &a, sizeof(a), 0) != sizeof(a) ||
	    recv(fd, &r, sizeof(r), 0) != sizeof(struct kvt_msg_gpu_attach_reply) ||
	    r.g.h.type != KVT_MSG_GPU_ATTACH_REPLY)
		goto fail;
	*attach_res = r.g.res;
	if (desc)
		memcpy(desc, r.g.desc, sizeof(*desc));
	return fd;
fail:
	close(fd);
	return -1;
}

/* One raw GPU_OP with n entries; results into res.  Returns the message-level res. */
static int raw_op(int fd, uint32_t op, const struct kvt_layout *l, uint32_t len,
		  const struct kvt_gpu_op_req *req, uint32_t n, struct kvt_gpu_op_res *res)
{
	static uint8_t buf[65536], rep[65536];
	struct kvt_msg_gpu_op *m = (struct kvt_msg_gpu_op *)buf;
	struct kvt_msg_gpu_op_reply r;
	size_t mlen = sizeof(*m) + n * sizeof(*req);
	ssize_t got;

	memset(m, 0, sizeof(*m));
	kvt_msg_init(&m->h, KVT_MSG_GPU_OP, (uint32_t)mlen);
	m->op = op;
	m->n = n;
	m->len = len;
	if (l)
		m->layout = *l;
	memcpy(m + 1, req, n * sizeof(*req));
	if (send(fd, buf, mlen, 0) != (ssize_t)mlen)
		return -EPIPE;
	got = recv(fd, rep, sizeof(rep), 0);
	if (got < (ssize_t)sizeof(r))
		return -EPIPE;
	memcpy(&r, rep, sizeof(r));
	if (r.res == 0)
		memcpy(res, rep + sizeof(r), n * sizeof(*res));
	return r.res;
}

static void test_daemon_without_gpu(void)
{
	struct kvt_layout l = test_layout();
	struct kvt_client *c = NULL;
	struct kvt_dev *dv = NULL;
	uint8_t *buf = malloc(256 << 10), *back = malloc(256 << 10);
	struct kvt_key k = {1, 2};
	struct kvt_gpu_op_req rq = {1, 2, 0};
	struct kvt_gpu_op_res rs;
	pid_t pid = -1;
	int rc, lay, ares = 0, fd = -1;
	char *out = NULL;

	/* A GPU that is not there: the daemon says so and serves the host tier. */
	pid = daemon_start("64MiB", "1GiB", "-o",
			   "gpu.device=GPU-00000000-1111-2222-3333-444444444444", NULL);
	CHECK(pid > 0);
	out = kvt_test_sh(&rc, "%s --socket %s tiers", kvtierctl, sock);
	CHECK_EQ(rc, 0);
	CHECK(strstr(out, "gpu") && strstr(out, "unavailable"));
	CHECK_EQ(gpu_num("capacity_bytes"), 0);
	free(out);
	out = kvt_test_sh(&rc, "%s --socket %s --json tiers", kvtierctl, sock);
	CHECK(strstr(out, "\"available\":false"));
	free(out);
	out = kvt_test_sh(&rc, "%s --socket %s metrics", kvtierctl, sock);
	CHECK(strstr(out, "kvtier_gpu_available 0"));
	CHECK(strstr(out, "kvtier_tier_capacity_bytes{tier=\"gpu\"} 0"));
	c = connect_ok();
	CHECK(c);
	lay = kvt_register_layout(c, &l);
	CHECK(lay >= 0);
	for (size_t i = 0; i < 256 << 10; i++)
		buf[i] = (uint8_t)(i * 7 + 3);
	CHECK_EQ(kvt_put(c, lay, &k, buf, 256 << 10), 0);
	CHECK_EQ(kvt_get(c, lay, &k, back, 256 << 10), 256 << 10);
	CHECK(!memcmp(buf, back, 256 << 10));
	/* The device connection: GPU_ATTACH and GPU_OP answer -ENODEV, nothing breaks. */
	fd = raw_device(&ares, NULL);
	CHECK(fd >= 0);
	CHECK_EQ(ares, -ENODEV);
	CHECK_EQ(raw_op(fd, KVT_GPU_OP_LEASE, &l, 0, &rq, 1, &rs), -ENODEV);
	/* A malformed GPU_OP (n beyond the packet) is refused, and the daemon lives on. */
	CHECK_EQ(raw_op(fd, KVT_GPU_OP_MAX, &l, 0, &rq, 1, &rs), -KVT_EPROTOCOL);
	CHECK_EQ(kvt_get(c, lay, &k, back, 256 << 10), 256 << 10);
	if (!kvt_gpu_available()) {
		CHECK_EQ(kvt_dev_available(), 0);
		CHECK_EQ(kvt_dev_open(c, NULL, &dv), -ENODEV);
		CHECK(dv == NULL);
	}
	CHECK_EQ(daemon_stop(pid), 0);
	pid = -1;
out:
	if (fd >= 0)
		close(fd);
	kvt_close(c);
	if (pid > 0)
		daemon_stop(pid);
	free(out);
	free(buf);
	free(back);
}

/* ---- with a GPU --------------------------------------------------------------------------- */

#define NUM_BLOCKS 512u /* engine blocks per layer tensor */

/* vLLM-style pages: per layer one [2, NUM_BLOCKS, 16, 8, 128] fp16 tensor. */
struct pages {
	struct kvt_layout l;
	uint64_t base[4];
	uint8_t *dev; /* one allocation for the 4 layers */
	uint64_t page, layer_bytes;
	struct kvt_dev_pages p;
};

static int pages_init(struct pages *pg)
{
	pg->l = test_layout();
	pg->page = 16 * 8 * 128 * 2;
	pg->layer_bytes = 2ull * NUM_BLOCKS * pg->page;
	if (kvt_gpu_dev_alloc(-1, 4 * pg->layer_bytes, (void **)&pg->dev) < 0)
		return -1;
	for (int i = 0; i < 4; i++)
		pg->base[i] = (uint64_t)(uintptr_t)pg->dev + (uint64_t)i * pg->layer_bytes;
	pg->p = (struct kvt_dev_pages){sizeof(pg->p),	      4, pg->base, pg->page, pg->page,
				       NUM_BLOCKS * pg->page, 2, 1,	   0};
	return kvt_gpu_memset(pg->dev, 0, 4 * pg->layer_bytes);
}

/* Fills the pages with a pattern of tag and returns a host copy of all of them. */
static uint8_t *pages_fill(struct pages *pg, uint64_t tag)
{
	size_t n = 4 * pg->layer_bytes;
	uint8_t *h = malloc(n);
	uint64_t s = tag * 0x2545f4914f6cdd1dull + 1;

	for (size_t i = 0; i < n; i += 8) {
		uint64_t v = rng(&s);
		memcpy(h + i, &v, 8);
	}
	kvt_gpu_memcpy(pg->dev, h, n);
	return h;
}

static uint8_t *pages_read(struct pages *pg)
{
	uint8_t *h = malloc(4 * pg->layer_bytes);

	kvt_gpu_memcpy(h, pg->dev, 4 * pg->layer_bytes);
	return h;
}

/* Compares engine block id of every layer, K and V, between two host copies of the pages. */
static bool same_pages(const struct pages *pg, const uint8_t *a, const uint8_t *b, uint32_t ida,
		       uint32_t idb)
{
	for (int l = 0; l < 4; l++) {
		for (int kv = 0; kv < 2; kv++) {
			uint64_t oa =
			    l * pg->layer_bytes + kv * NUM_BLOCKS * pg->page + ida * pg->page;
			uint64_t ob =
			    l * pg->layer_bytes + kv * NUM_BLOCKS * pg->page + idb * pg->page;
			if (memcmp(a + oa, b + ob, pg->page))
				return false;
		}
	}
	return true;
}

static void shuffle_ids(uint32_t *ids, uint32_t n, uint64_t s)
{
	for (uint32_t i = 0; i < NUM_BLOCKS; i++)
		ids[i] = i;
	for (uint32_t i = NUM_BLOCKS - 1; i > 0; i--) {
		uint32_t j = (uint32_t)(rng(&s) % (i + 1)), t = ids[i];
		ids[i] = ids[j];
		ids[j] = t;
	}
	(void)n;
}

static struct kvt_dev *dev_open_ok(struct kvt_client *c)
{
	struct kvt_dev_opts o = {sizeof(o), 0, sock, 0};
	struct kvt_dev *dv = NULL;
	int ret = kvt_dev_open(c, &o, &dv);

	if (ret < 0)
		fprintf(stderr, "kvt_dev_open: %s\n", kvt_strerror(ret));
	return dv;
}

/*
 * Gets n blocks into a shuffled set of engine blocks and checks every page against the
 * pattern tag put them with (from the engine blocks shuffle_ids(tag)).  The pages are wiped
 * first.  Returns 0 or -1.
 */
static int verify_get(struct kvt_dev *dv, int lay, struct pages *pg, const struct kvt_key *keys,
		      uint32_t n, unsigned flags, uint64_t tag)
{
	uint32_t ids_put[NUM_BLOCKS], ids_get[NUM_BLOCKS];
	uint8_t *src = pages_fill(pg, tag), *dst = NULL;
	int ret, bad = 0;

	shuffle_ids(ids_put, n, tag);
	shuffle_ids(ids_get, n, tag + 99);
	kvt_gpu_memset(pg->dev, 0xa5, 4 * pg->layer_bytes);
	ret = kvt_dev_get(dv, lay, &pg->p, keys, ids_get, n, flags, NULL);
	if (ret != (int)n) {
		fprintf(stderr, "kvt_dev_get: %d (%s), expected %u\n", ret,
			ret < 0 ? kvt_strerror(ret) : "short", n);
		bad = 1;
		goto out;
	}
	dst = pages_read(pg);
	for (uint32_t i = 0; i < n; i++) {
		if (!same_pages(pg, src, dst, ids_put[i], ids_get[i])) {
			fprintf(stderr, "block %u: pages differ\n", i);
			bad = 1;
			break;
		}
	}
out:
	free(src);
	free(dst);
	return bad ? -1 : 0;
}

/* Puts n blocks (batch at a time) from the engine blocks shuffle_ids(tag), then verify_get. */
static int roundtrip_b(struct kvt_dev *dv, int lay, struct pages *pg, const struct kvt_key *keys,
		       uint32_t n, uint32_t batch, unsigned flags, uint64_t tag)
{
	uint32_t ids_put[NUM_BLOCKS];
	uint8_t *src = pages_fill(pg, tag);
	int ret;

	free(src);
	shuffle_ids(ids_put, n, tag);
	for (uint32_t k = 0; k < n; k += batch) {
		uint32_t m = n - k < batch ? n - k : batch;

		ret = kvt_dev_put(dv, lay, &pg->p, keys + k, ids_put + k, m, flags, NULL);
		if (ret != (int)m) {
			fprintf(stderr, "kvt_dev_put: %d (%s), expected %u\n", ret,
				ret < 0 ? kvt_strerror(ret) : "short", m);
			return -1;
		}
	}
	return verify_get(dv, lay, pg, keys, n, flags, tag);
}

static int roundtrip(struct kvt_dev *dv, int lay, struct pages *pg, const struct kvt_key *keys,
		     uint32_t n, unsigned flags, uint64_t tag)
{
	return roundtrip_b(dv, lay, pg, keys, n, n, flags, tag);
}

static void test_device_roundtrip(void)
{
	struct kvt_client *c = NULL;
	struct kvt_dev *dv = NULL;
	struct kvt_dev_info info = {.size = sizeof(info)};
	struct pages pg = {0};
	struct kvt_key keys[64], miss[2];
	uint32_t ids[NUM_BLOCKS];
	uint8_t *host = malloc(256 << 10), *src = NULL;
	pid_t pid;
	int lay;

	pid = daemon_start("256MiB", "64MiB", NULL);
	CHECK(pid > 0);
	CHECK_EQ(pages_init(&pg), 0);
	c = connect_ok();
	CHECK(c);
	dv = dev_open_ok(c);
	CHECK(dv);
	CHECK_EQ(kvt_dev_info(dv, &info), 0);
	CHECK_EQ(info.gpu_tier, 1);
	CHECK(info.epoch != 0);
	CHECK_EQ(info.pool_bytes, 64 << 20);
	CHECK(!strncmp(info.uuid, "GPU-", 4));
	lay = kvt_dev_layout(dv, &pg.l);
	CHECK(lay >= 0);
	make_keys(1, keys, 64);
	/* Through the GPU pool: bit-exact, and every block lives in the pool. */
	CHECK_EQ(roundtrip(dv, lay, &pg, keys, 64, 0, 11), 0);
	CHECK_EQ(kvt_dev_info(dv, &info), 0);
	CHECK_EQ(info.gpu_puts, 64);
	CHECK_EQ(info.gpu_gets, 64);
	CHECK_EQ(gpu_num("blocks"), 64);
	CHECK_EQ(gpu_num("used_bytes"), 64 * (256 << 10));
	CHECK(gpu_num("epoch") > 0);
	{
		int rc;
		char *m = kvt_test_sh(&rc, "%s --socket %s metrics", kvtierctl, sock);
		bool ok = m && strstr(m, "kvtier_gpu_available 1") &&
			  strstr(m, "kvtier_tier_blocks{tier=\"gpu\"} 64");
		free(m);
		CHECK(ok);
	}
	/* A second put of the same keys stores nothing new and still says "all stored". */
	shuffle_ids(ids, 64, 5);
	CHECK_EQ(kvt_dev_put(dv, lay, &pg.p, keys, ids, 64, 0, NULL), 64);
	/* A CPU reader of a block that only the pool holds gets the page-first bytes. */
	src = pages_fill(&pg, 12);
	shuffle_ids(ids, 1, 6);
	make_keys(2, miss, 1);
	CHECK_EQ(kvt_dev_put(dv, lay, &pg.p, miss, ids, 1, 0, NULL), 1);
	CHECK_EQ(kvt_get(c, 0, &miss[0], host, 256 << 10), 256 << 10);
	for (int l = 0; l < 4; l++) {
		for (int kv = 0; kv < 2; kv++) {
			uint64_t so =
			    l * pg.layer_bytes + kv * NUM_BLOCKS * pg.page + ids[0] * pg.page;
			CHECK(!memcmp(host + (l * 2 + kv) * pg.page, src + so, pg.page));
		}
	}
	/* Leading hits only: a missing key in the middle stops the get there. */
	make_keys(3, miss, 2);
	{
		struct kvt_key mix[3] = {keys[0], miss[0], keys[1]};
		CHECK_EQ(kvt_dev_get(dv, lay, &pg.p, mix, ids, 3, 0, NULL), 1);
	}
	/* The host-only path: bit-exact too, and nothing more lands in the pool. */
	make_keys(4, keys, 64);
	CHECK_EQ(roundtrip(dv, lay, &pg, keys, 64, KVT_DEV_HOST_ONLY, 13), 0);
	CHECK_EQ(gpu_num("blocks"), 65);
	CHECK_EQ(kvt_dev_info(dv, &info), 0);
	CHECK_EQ(info.host_puts, 64);
	CHECK_EQ(info.host_gets, 64);
	/* A device get of those host blocks promotes them to the pool (gpu.promote_on_get). */
	CHECK_EQ(kvt_dev_get(dv, lay, &pg.p, keys, ids, 64, 0, NULL), 64);
	for (int i = 0; i < 100 && gpu_num("promotions") < 64; i++)
		usleep(10000);
	CHECK_EQ(gpu_num("promotions"), 64);
	CHECK_EQ(gpu_num("blocks"), 129);
	CHECK_EQ(verify_get(dv, lay, &pg, keys, 64, 0, 13), 0);
	CHECK_EQ(kvt_dev_info(dv, &info), 0);
	CHECK_EQ(info.gpu_gets, 64 + 1 + 64); /* the mixed get loaded 1 */
	kvt_dev_close(dv);
	dv = NULL;
	CHECK_EQ(status_num("leases"), 0);
	CHECK_EQ(status_num("reservations"), 0);
	CHECK_EQ(daemon_stop(pid), 0);
	pid = -1;
out:
	kvt_dev_close(dv);
	kvt_close(c);
	if (pid > 0)
		daemon_stop(pid);
	kvt_gpu_dev_free(pg.dev);
	free(src);
	free(host);
}

static void test_overfill_demotes(void)
{
	struct kvt_client *c = NULL;
	struct kvt_dev *dv = NULL;
	struct pages pg = {0};
	struct kvt_key keys[256];
	pid_t pid;
	int lay;

	/* 4 MiB of pool: 16 blocks of 256 KiB; 256 blocks go through it. */
	pid = daemon_start("256MiB", "4MiB", NULL);
	CHECK(pid > 0);
	CHECK_EQ(pages_init(&pg), 0);
	c = connect_ok();
	CHECK(c);
	dv = dev_open_ok(c);
	CHECK(dv);
	lay = kvt_dev_layout(dv, &pg.l);
	CHECK(lay >= 0);
	make_keys(7, keys, 256);
	/* Puts of 8 blocks: each makes room by sending the coldest pool blocks down. */
	CHECK_EQ(roundtrip_b(dv, lay, &pg, keys, 256, 8, 0, 21), 0);
	/* At least 240 left the pool (the tick's watermark pass may send a few more). */
	CHECK(gpu_num("demotions") >= 240 && gpu_num("demotions") <= 256);
	CHECK(gpu_num("blocks") >= 1 && gpu_num("blocks") <= 16);
	CHECK(gpu_num("used_bytes") <= 4 << 20);
	CHECK_EQ(status_num("leases"), 0);
	CHECK_EQ(kvt_lookup(c, 0, keys, 256), 256);
	CHECK_EQ(daemon_stop(pid), 0);
	pid = -1;
out:
	kvt_dev_close(dv);
	kvt_close(c);
	if (pid > 0)
		daemon_stop(pid);
	kvt_gpu_dev_free(pg.dev);
}

static void test_restart_reattach(void)
{
	struct kvt_client *c = NULL;
	struct kvt_dev *dv = NULL;
	struct kvt_dev_info i1 = {.size = sizeof(i1)}, i2 = {.size = sizeof(i2)};
	struct pages pg = {0};
	struct kvt_key keys[32], keys2[32];
	uint32_t ids[NUM_BLOCKS];
	pid_t pid;
	int lay;

	pid = daemon_start("256MiB", "64MiB", NULL);
	CHECK(pid > 0);
	CHECK_EQ(pages_init(&pg), 0);
	c = connect_ok();
	CHECK(c);
	dv = dev_open_ok(c);
	CHECK(dv);
	lay = kvt_dev_layout(dv, &pg.l);
	CHECK(lay >= 0);
	make_keys(8, keys, 32);
	CHECK_EQ(roundtrip(dv, lay, &pg, keys, 32, 0, 31), 0);
	CHECK_EQ(kvt_dev_info(dv, &i1), 0);
	CHECK_EQ(daemon_stop(pid), 0);
	sleep(1); /* a new epoch: the daemon's epoch has the start time in it */
	pid = daemon_start("256MiB", "64MiB", NULL);
	CHECK(pid > 0);
	/* The old pool's blocks died with their daemon: a miss, not an error. */
	shuffle_ids(ids, 32, 3);
	CHECK_EQ(kvt_dev_get(dv, lay, &pg.p, keys, ids, 32, 0, NULL), 0);
	make_keys(9, keys2, 32);
	CHECK_EQ(roundtrip(dv, lay, &pg, keys2, 32, 0, 32), 0);
	CHECK_EQ(kvt_dev_info(dv, &i2), 0);
	CHECK_EQ(i2.gpu_tier, 1);
	CHECK(i2.epoch != i1.epoch);
	CHECK_EQ(i2.reattaches, 1);
	CHECK_EQ(gpu_num("blocks"), 32);
	CHECK_EQ(gpu_num("epoch"), (long long)i2.epoch);
	CHECK_EQ(daemon_stop(pid), 0);
	pid = -1;
out:
	kvt_dev_close(dv);
	kvt_close(c);
	if (pid > 0)
		daemon_stop(pid);
	kvt_gpu_dev_free(pg.dev);
}

/* A client killed while it holds pool leases and reservations leaves nothing behind. */
static void test_killed_client(void)
{
	struct kvt_client *c = NULL;
	struct kvt_dev *dv = NULL;
	struct pages pg = {0};
	struct kvt_key keys[16];
	long long used0, blocks0;
	int pfd[2] = {-1, -1}, lay;
	pid_t pid, child = -1;
	char ok = 0;

	pid = daemon_start("256MiB", "64MiB", NULL);
	CHECK(pid > 0);
	CHECK_EQ(pages_init(&pg), 0);
	c = connect_ok();
	CHECK(c);
	dv = dev_open_ok(c);
	CHECK(dv);
	lay = kvt_dev_layout(dv, &pg.l);
	CHECK(lay >= 0);
	make_keys(10, keys, 16);
	CHECK_EQ(roundtrip(dv, lay, &pg, keys, 16, 0, 41), 0);
	used0 = gpu_num("used_bytes");
	blocks0 = gpu_num("blocks");
	CHECK_EQ(blocks0, 16);
	CHECK(pipe(pfd) == 0);
	fflush(stdout);
	child = fork();
	if (child == 0) {
		struct kvt_gpu_op_req rq[16];
		struct kvt_gpu_op_res rs[16];
		struct kvt_layout l = test_layout();
		int ares = -1, fd = raw_device(&ares, NULL);
		char r = 0;

		for (int i = 0; i < 16; i++)
			rq[i] = (struct kvt_gpu_op_req){keys[i].lo, keys[i].hi, 0};
		if (fd >= 0 && ares == 0 && raw_op(fd, KVT_GPU_OP_LEASE, &l, 0, rq, 16, rs) == 0 &&
		    rs[0].res == 256 << 10) {
			for (int i = 0; i < 16; i++)
				rq[i].key_lo ^= 0x5555; /* new keys: reservations */
			if (raw_op(fd, KVT_GPU_OP_RESERVE, &l, 256 << 10, rq, 16, rs) == 0 &&
			    rs[15].res == 256 << 10)
				r = 1;
		}
		if (write(pfd[1], &r, 1) != 1)
			_exit(2);
		pause();
		_exit(0);
	}
	CHECK(read(pfd[0], &ok, 1) == 1);
	CHECK_EQ(ok, 1);
	CHECK_EQ(status_num("leases"), 16);
	CHECK_EQ(status_num("reservations"), 16);
	CHECK_EQ(gpu_num("used_bytes"), used0 + 16 * (256 << 10));
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	child = -1;
	for (int i = 0; i < 200 && status_num("leases"); i++)
		usleep(10000);
	CHECK_EQ(status_num("leases"), 0);
	CHECK_EQ(status_num("reservations"), 0);
	CHECK_EQ(gpu_num("used_bytes"), used0);
	CHECK_EQ(gpu_num("blocks"), blocks0);
	/* And the blocks the dead client was reading are still whole. */
	CHECK_EQ(verify_get(dv, lay, &pg, keys, 16, 0, 41), 0);
	CHECK_EQ(daemon_stop(pid), 0);
	pid = -1;
out:
	if (child > 0) {
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
	if (pfd[0] >= 0) {
		close(pfd[0]);
		close(pfd[1]);
	}
	kvt_dev_close(dv);
	kvt_close(c);
	if (pid > 0)
		daemon_stop(pid);
	kvt_gpu_dev_free(pg.dev);
}

/* Pages of real-looking fp16 values (roughly normal, some outliers), host copy returned. */
static uint8_t *pages_fill_f16(struct pages *pg, uint64_t tag)
{
	size_t n = 4 * pg->layer_bytes;
	uint16_t *h = malloc(n);
	uint64_t s = tag * 0x2545f4914f6cdd1dull + 7;

	for (size_t i = 0; i < n / 2; i++) {
		double u = 0;
		for (int k = 0; k < 4; k++)
			u += (double)(rng(&s) >> 11) / 9007199254740992.0;
		u = (u - 2.0) * 1.7;
		if ((rng(&s) & 1023) == 0)
			u *= 40; /* an outlier now and then */
		h[i] = kvt_f32_to_f16((float)u);
	}
	kvt_gpu_memcpy(pg->dev, h, n);
	return (uint8_t *)h;
}

/* What a quantized pool block must give back: every page through the CPU reference. */
static void expect_quantized(const struct pages *pg, uint8_t *pages, const uint32_t *ids,
			     uint32_t n, const struct kvt_gpu_kvq *q)
{
	uint8_t *enc = malloc(q->k_bytes > q->v_bytes ? q->k_bytes : q->v_bytes);

	for (uint32_t i = 0; i < n; i++) {
		for (int l = 0; l < 4; l++) {
			for (int kv = 0; kv < 2; kv++) {
				uint8_t *p = pages + l * pg->layer_bytes +
					     kv * NUM_BLOCKS * pg->page + ids[i] * pg->page;
				kvt_gpu_ref_quantize(&q->qp, kv ? KVT_GPU_VALUES : KVT_GPU_KEYS, p,
						     enc);
				kvt_gpu_ref_dequantize(&q->qp, kv ? KVT_GPU_VALUES : KVT_GPU_KEYS,
						       enc, p);
			}
		}
	}
	free(enc);
}

/* Largest |x - x'| over the group's (max - min) / 255: the int8 bound is 0.5 of a step plus
 * fp16 rounding of the zero and of the output. */
static double worst_steps(const struct pages *pg, const uint8_t *a, const uint8_t *b,
			  const uint32_t *ids_a, const uint32_t *ids_b, uint32_t n)
{
	double worst = 0;

	for (uint32_t i = 0; i < n; i++) {
		for (int l = 0; l < 4; l++) {
			/* V pages: groups of 32 channels of one token */
			uint64_t oa =
			    l * pg->layer_bytes + NUM_BLOCKS * pg->page + ids_a[i] * pg->page;
			uint64_t ob =
			    l * pg->layer_bytes + NUM_BLOCKS * pg->page + ids_b[i] * pg->page;
			const uint16_t *x = (const uint16_t *)(a + oa),
				       *y = (const uint16_t *)(b + ob);
			for (size_t g = 0; g < pg->page / 2; g += 32) {
				float mn = 1e30f, mx = -1e30f, e = 0;
				for (int k = 0; k < 32; k++) {
					float v = kvt_f16_to_f32(x[g + k]);
					mn = v < mn ? v : mn;
					mx = v > mx ? v : mx;
					float dv = fabsf(v - kvt_f16_to_f32(y[g + k]));
					e = dv > e ? dv : e;
				}
				float tol = fabsf(mn) * (1.0f / 1024) + fabsf(mx) * (1.0f / 1024);
				double steps = mx > mn ? (e - tol) / ((mx - mn) / 255.0) : 0;
				worst = steps > worst ? steps : worst;
			}
		}
	}
	return worst;
}

static void test_int8_tier(void)
{
	struct kvt_client *c = NULL;
	struct kvt_dev *dv = NULL;
	struct pages pg = {0};
	struct kvt_gpu_kvq q;
	struct kvt_key keys[32];
	uint32_t ids_put[NUM_BLOCKS], ids_get[NUM_BLOCKS];
	uint8_t *src = NULL, *want = NULL, *got = NULL, *host = malloc(256 << 10);
	pid_t pid = -1;
	int lay;

	CHECK_EQ(kvt_gpu_kvq_plan(8, KVT_GPU_FP16, 8, 128, 16, 4, 256 << 10, &q), 0);
	CHECK_EQ(q.qp.k_group, 16);
	CHECK_EQ(q.qp.v_group, 32);
	for (int round = 0; round < 2; round++) {
		/* round 0: a roomy pool; round 1: 1 MiB, so blocks go down to the host (the
		 * daemon dequantizes them on the way) and come back from there. */
		pid =
		    daemon_start("256MiB", round ? "1MiB" : "64MiB", "-o", "gpu.codec=int8", NULL);
		CHECK(pid > 0);
		if (!pg.dev)
			CHECK_EQ(pages_init(&pg), 0);
		c = connect_ok();
		CHECK(c);
		dv = dev_open_ok(c);
		CHECK(dv);
		lay = kvt_dev_layout(dv, &pg.l);
		CHECK(lay >= 0);
		make_keys(50 + round, keys, 32);
		src = pages_fill_f16(&pg, 60 + round);
		want = malloc(4 * pg.layer_bytes);
		memcpy(want, src, 4 * pg.layer_bytes);
		shuffle_ids(ids_put, 32, 70 + round);
		shuffle_ids(ids_get, 32, 80 + round);
		expect_quantized(&pg, want, ids_put, 32, &q);
		for (uint32_t k = 0; k < 32; k += round ? 4 : 32)
			CHECK_EQ(kvt_dev_put(dv, lay, &pg.p, keys + k, ids_put + k, round ? 4 : 32,
					     0, NULL),
				 round ? 4 : 32);
		if (!round) {
			CHECK_EQ(gpu_num("blocks"), 32);
			CHECK_EQ(gpu_num("used_bytes"), 32 * ((q.enc_bytes + 4095) & ~4095ull));
		} else {
			CHECK(gpu_num("demotions") >= 20);
		}
		kvt_gpu_memset(pg.dev, 0xa5, 4 * pg.layer_bytes);
		CHECK_EQ(kvt_dev_get(dv, lay, &pg.p, keys, ids_get, 32, 0, NULL), 32);
		got = pages_read(&pg);
		/* Bit-exact with the CPU reference of the kernels, wherever the block was. */
		for (uint32_t i = 0; i < 32; i++)
			CHECK(same_pages(&pg, want, got, ids_put[i], ids_get[i]));
		/* Within the documented bound: half a quantization step (plus fp16 rounding). */
		double w = worst_steps(&pg, src, got, ids_put, ids_get, 32);
		printf("int8 round %d: worst error %.3f quantization steps\n", round, w);
		CHECK(w <= 0.5 + 1e-3);
		/* A CPU reader gets the same (dequantized) bytes, page-first. */
		CHECK_EQ(kvt_get(c, 0, &keys[3], host, 256 << 10), 256 << 10);
		for (int l = 0; l < 4; l++) {
			for (int kv = 0; kv < 2; kv++) {
				uint64_t so = l * pg.layer_bytes + kv * NUM_BLOCKS * pg.page +
					      ids_put[3] * pg.page;
				CHECK(!memcmp(host + (l * 2 + kv) * pg.page, want + so, pg.page));
			}
		}
		kvt_dev_close(dv);
		dv = NULL;
		kvt_close(c);
		c = NULL;
		CHECK_EQ(daemon_stop(pid), 0);
		pid = -1;
		free(src);
		free(want);
		free(got);
		src = want = got = NULL;
	}
out:
	kvt_dev_close(dv);
	kvt_close(c);
	if (pid > 0)
		daemon_stop(pid);
	kvt_gpu_dev_free(pg.dev);
	free(src);
	free(want);
	free(got);
	free(host);
}

/* Those that run anywhere (nogpu) and those that need a GPU (gpu). */
#define NTESTS(t) (sizeof(t) / sizeof((t)[0]))

static const struct kvt_test_case nogpu_tests[] = {
    {"config_keys", test_config_keys},
    {"kvq_plan", test_kvq_plan},
    {"daemon_without_gpu", test_daemon_without_gpu},
};

static const struct kvt_test_case gpu_tests[] = {
    {"device_roundtrip", test_device_roundtrip},
    {"overfill_demotes", test_overfill_demotes},
    {"restart_reattach", test_restart_reattach},
    {"killed_client", test_killed_client},
    {"int8_tier", test_int8_tier},
};

int main(int argc, char **argv)
{
	int ran = 0, first_name = 4;
	bool gpu;

	if (argc < 4 || (strcmp(argv[3], "gpu") && strcmp(argv[3], "nogpu"))) {
		fprintf(stderr, "usage: gpu_tier_test KVTIERD KVTIERCTL nogpu|gpu [--seed N] "
				"[TEST...]\n");
		return 2;
	}
	kvtierd = argv[1];
	kvtierctl = argv[2];
	gpu = !strcmp(argv[3], "gpu");
	if (gpu && kvt_gpu_available() <= 0) {
		printf("no GPU: skipped\n");
		return 77;
	}
	seed = (unsigned)time(NULL);
	if (argc > 5 && !strcmp(argv[4], "--seed")) {
		seed = (unsigned)strtoul(argv[5], NULL, 0);
		first_name = 6;
	}
	snprintf(dir, sizeof(dir), "/tmp/kvtier-gpu-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	snprintf(sock, sizeof(sock), "%s/kvtier.sock", dir);
	signal(SIGPIPE, SIG_IGN);
	/* Named tests run whichever table they are in; none named: the mode's table. */
	if (argc > first_name || !gpu)
		ran = kvt_test_run_cases(nogpu_tests, NTESTS(nogpu_tests), argv + first_name,
					 argc - first_name, &cur_daemon, NULL);
	if (argc > first_name || gpu)
		ran += kvt_test_run_cases(gpu_tests, NTESTS(gpu_tests), argv + first_name,
					  argc - first_name, &cur_daemon, NULL);
	return kvt_test_finish(dir, ran);
}
