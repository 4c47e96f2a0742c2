/* SPDX-License-Identifier: MIT */
/*
 * Placement and the tier list without a daemon process: a struct kvtd built here, with the
 * host tier and a real NVMe tier on a slot file in a temporary directory, driven through
 * placement's own functions (kvtd_host_alloc, kvtd_blk_committed, kvtd_watermarks,
 * kvtd_promote, kvtd_evict_host_one) and checked on what they did to the blocks, the tiers'
 * counters and the bytes.  NVMe completions are waited for on the tier's event fd.
 */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include "daemon.h"
#include "server.h"

#define BLK   (64u << 10)
#define NBLKS 16u /* host.capacity = 1 MiB = 16 blocks */

struct fx {
	struct kvtd *d;
	char dir[64];
	char path[96];
};

/* A struct kvtd as kvtd_create() makes it, less the sockets, with tiers.order = order. */
static struct kvtd *make(struct fx *f, const char *order, bool nvme)
{
	struct kvtd *d = calloc(1, sizeof(*d));

	assert_non_null(d);
	kvtd_log_level = KVTD_LOG_WARN;
	kvtd_config_defaults(&d->cfg);
	d->cfg.host_capacity = NBLKS * BLK;
	d->cfg.nvme_enabled = nvme;
	d->cfg.nvme_capacity = 16u << 20;
	d->cfg.nvme_direct = false; /* the temporary directory may be tmpfs */
	snprintf(d->cfg.nvme_paths, sizeof(d->cfg.nvme_paths), "%s", f->path);
	snprintf(d->cfg.tiers_order, sizeof(d->cfg.tiers_order), "%s", order);
	d->lsock = d->tfd = d->sfd = -1;
	d->epoch = 1;
	d->check_counts = true;
	assert_int_equal(kvtd_index_init(&d->ix, 4096), 0);
	d->ep = epoll_create1(EPOLL_CLOEXEC);
	assert_true(d->ep >= 0);
	f->d = d;
	return d;
}

static void destroy(struct kvtd *d)
{
	kvtd_place_fini(d);
	kvtd_waiters_fini(d);
	for (uint32_t k = 0; k < d->ntenants; k++) {
		munmap(d->tenants[k]->base, d->tenants[k]->size);
		close(d->tenants[k]->memfd);
		free(d->tenants[k]);
	}
	free(d->tenants);
	kvtd_index_fini(&d->ix);
	close(d->ep);
	free(d);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	snprintf(f->dir, sizeof(f->dir), "/tmp/kvt-tierlist-XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(f->path, sizeof(f->path), "%s/nvme0.slots", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	if (f->d)
		destroy(f->d);
	unlink(f->path);
	rmdir(f->dir);
	free(f);
	return 0;
}

/* Opens the tiers and ends the (empty) NVMe recovery, as kvtd_run does. */
static void start(struct kvtd *d)
{
	kvtd_waiters_init(d);
	assert_int_equal(kvtd_place_init(d), 0);
	assert_int_equal(kvtd_nvme_recover_start(d), 0);
	assert_false(d->nvme_recovering);
}

/* A put of key k as op_reserve + op_commit do it: bytes all equal to (k & 0xff). */
static uint32_t put(struct kvtd *d, struct tenant *t, uint64_t k)
{
	int64_t off = kvtd_host_alloc(d, t, BLK);
	struct kvtd_blk *b;
	uint32_t i;

	assert_true(off >= 0);
	i = kvtd_blk_insert(d, k, ~k);
	assert_true(i != KVTD_NIL);
	b = kvtd_blk(&d->ix, i);
	b->state = KVTD_BLK_RESERVED;
	b->tier = KVTD_TIER_HOST;
	b->len = BLK;
	b->off = (uint64_t)off;
	b->tenant = 0;
	b->fingerprint = 42;
	b->on_host = 1;
	memset(t->base + off, (int)(k & 0xff), BLK);
	b->atime = kvtd_now_ms();
	kvtd_blk_committed(d, i);
	return i;
}

static struct kvtd_blk *blk_of(struct kvtd *d, uint64_t k)
{
	uint32_t i = kvtd_index_find(&d->ix, k, ~k);

	return i == KVTD_NIL ? NULL : kvtd_blk(&d->ix, i);
}

/* Runs NVMe completions until no block has I/O in flight (an event, not a delay). */
static void settle(struct kvtd *d)
{
	for (;;) {
		bool busy = false;
		struct pollfd p;

		for (uint32_t i = 0; i < d->ix.used; i++)
			busy |= kvtd_blk(&d->ix, i)->state != KVTD_BLK_FREE &&
				kvtd_blk(&d->ix, i)->io != KVTD_IO_NONE;
		if (!busy)
			return;
		kvtd_nvme_submit(d); /* what the loop does at the end of each pass (server.c) */
		p.fd = d->nvme_ops->event_fd(d->nvme);
		p.events = POLLIN;
		assert_int_equal(poll(&p, 1, 30000), 1); /* 30 s: a hang fails, never a race */
		kvtd_nvme_event(d);
	}
}

static void test_order(void **state)
{
	struct fx *f = *state;
	struct kvtd *d;
	const char *bad[] = {"nvme,host", "host,gpu", "gpu,nvme,host", "host,disk"};

	/* The default list: gpu (off: no capacity) above host above nvme. */
	d = make(f, "gpu,host,nvme", true);
	start(d);
	assert_int_equal(d->ntiers, 3);
	assert_string_equal(d->tiers[0].cls->name, "gpu");
	assert_string_equal(d->tiers[1].cls->name, "host");
	assert_string_equal(d->tiers[2].cls->name, "nvme");
	assert_ptr_equal(kvtd_tier_get(d, KVTD_TIER_HOST), &d->tiers[1]);
	assert_null(d->tiers[0].t);	/* gpu.capacity = 0 */
	assert_non_null(d->tiers[1].t); /* host */
	assert_ptr_equal(d->tiers[2].t, d->nvme);
	assert_ptr_equal(kvtd_tier_below(d, &d->tiers[0]), &d->tiers[1]);
	assert_ptr_equal(kvtd_tier_below(d, &d->tiers[1]), &d->tiers[2]);
	assert_null(kvtd_tier_below(d, &d->tiers[2]));
	destroy(d);
	f->d = NULL;
	/* A listed tier that is off is skipped on the way down. */
	d = make(f, "gpu,host,nvme", false);
	start(d);
	assert_null(kvtd_tier_below(d, &d->tiers[1]));
	destroy(d);
	f->d = NULL;
	/* Orders blocks cannot move along, and unknown names, stop the daemon at start. */
	for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
		d = make(f, bad[k], true);
		assert_int_equal(kvtd_place_init(d), -EINVAL);
		destroy(d);
		f->d = NULL;
	}
	/* The configuration refuses a list without host, or with a name twice. */
	{
		struct kvtd_config c;

		kvtd_config_defaults(&c);
		assert_int_equal(kvtd_config_validate(&c, NULL), 0);
		snprintf(c.tiers_order, sizeof(c.tiers_order), "gpu,nvme");
		assert_int_equal(kvtd_config_validate(&c, NULL), -EINVAL);
		snprintf(c.tiers_order, sizeof(c.tiers_order), "host,host");
		assert_int_equal(kvtd_config_validate(&c, NULL), -EINVAL);
		snprintf(c.tiers_order, sizeof(c.tiers_order), "host, nvme");
		assert_int_equal(kvtd_config_validate(&c, NULL), 0);
	}
}

static void check_bytes(struct kvtd *d, uint64_t k)
{
	struct kvtd_blk *b = blk_of(d, k);
	const uint8_t *p;

	assert_non_null(b);
	assert_true(b->on_host);
	p = d->tenants[b->tenant]->base + b->off;
	for (uint32_t n = 0; n < BLK; n++) {
		if (p[n] != (uint8_t)k)
			fail_msg("block %llu byte %u is %u", (unsigned long long)k, n, p[n]);
	}
}

/* Down the list: the watermark pass moves the coldest host blocks to NVMe; up again: a get
 * reads one back; a block with an NVMe copy leaves the host without a second write. */
static void test_demote_promote(void **state)
{
	struct fx *f = *state;
	struct kvtd *d = make(f, "gpu,host,nvme", true);
	struct kvt_tier_stats hs;
	struct tenant *t;
	uint64_t dem;

	start(d);
	t = kvtd_tenant_get(d, 1000);
	assert_non_null(t);
	for (uint64_t k = 1; k <= NBLKS; k++)
		put(d, t, k);
	assert_int_equal(d->host_used, NBLKS * BLK);
	kvtd_watermarks(d); /* above 0.95: down to 0.85 = 13 blocks */
	settle(d);
	kvtd_check_counts(d);
	assert_int_equal(d->host_used, 13 * BLK);
	assert_int_equal(d->tier_nblocks[KVTD_TIER_HOST], 13);
	assert_int_equal(d->tier_nblocks[KVTD_TIER_NVME], 3);
	assert_int_equal(d->m.demotions_total, 3);
	for (uint64_t k = 1; k <= 3; k++) { /* the least recently used */
		assert_false(blk_of(d, k)->on_host);
		assert_true(blk_of(d, k)->on_nvme);
	}
	for (uint64_t k = 4; k <= NBLKS; k++)
		assert_true(blk_of(d, k)->on_host && !blk_of(d, k)->on_nvme);
	/* The host tier and the daemon agree on what is used. */
	d->tiers[1].cls->ops->stats(d->tiers[1].t, &hs);
	assert_int_equal(hs.used_bytes, d->host_used);
	assert_int_equal(hs.records, 13);

	/* Up: a get of block 2 waits for the read, then finds its bytes on the host. */
	assert_int_equal(kvtd_promote(d, 12345, 7, kvtd_index_find(&d->ix, 2, ~2ull)), 1);
	settle(d);
	assert_int_equal(d->m.promotions_total, 1);
	{ /* the waiting get is reported ready, for the operations layer to answer */
		struct waiter w;

		assert_true(kvtd_ready_pop(d, &w));
		assert_int_equal(w.client_id, 12345);
		assert_int_equal(w.user_data, 7);
		assert_int_equal(w.blk, kvtd_index_find(&d->ix, 2, ~2ull));
		assert_int_equal(w.err, 0);
		assert_false(kvtd_ready_pop(d, &w));
	}
	assert_true(blk_of(d, 2)->on_nvme); /* inclusive: the NVMe copy stays */
	check_bytes(d, 2);
	assert_int_equal(kvtd_promote(d, 12345, 8, kvtd_index_find(&d->ix, 2, ~2ull)), 0);

	/* Everything leaves the host: 13 new writes, none for block 2, which has its copy. */
	dem = d->m.demotions_total;
	while (d->host_used)
		assert_int_equal(kvtd_evict_host_one(d, NULL), 0);
	settle(d);
	kvtd_check_counts(d);
	assert_int_equal(d->m.demotions_total - dem, 13);
	assert_int_equal(d->tier_nblocks[KVTD_TIER_HOST], 0);
	assert_int_equal(d->tier_nblocks[KVTD_TIER_NVME], NBLKS);
	/* And every block comes back up whole. */
	for (uint64_t k = 1; k <= NBLKS; k++) {
		int r = kvtd_promote(d, 12345, k, kvtd_index_find(&d->ix, k, ~k));

		assert_true(r == 0 || r == 1);
		settle(d);
		check_bytes(d, k);
	}
}

/* The bottom of the list: NVMe above its watermark drops blocks that have no other copy. */
static void test_nvme_evicts(void **state)
{
	struct fx *f = *state;
	struct kvtd *d = make(f, "host,nvme", true);
	struct tenant *t;
	uint32_t before;

	start(d);
	t = kvtd_tenant_get(d, 1000);
	for (uint64_t k = 1; k <= NBLKS; k++)
		put(d, t, k);
	while (d->host_used > 4 * BLK)
		assert_int_equal(kvtd_evict_host_one(d, NULL), 0);
	settle(d);
	assert_int_equal(d->tier_nblocks[KVTD_TIER_NVME], 12);
	before = d->ix.count;
	/* 12 records of 68 KiB in 16 MiB: lower the marks so that the pass must act. */
	d->cfg.nvme_high = 0.02;
	d->cfg.nvme_low = 0.01;
	kvtd_watermarks(d);
	settle(d);
	kvtd_check_counts(d);
	assert_true(d->m.nvme_evictions_total > 0);
	assert_int_equal(d->ix.count, before - d->m.nvme_evictions_total);
	assert_null(blk_of(d, 1)); /* the coldest went first, and with them the block */
	for (uint64_t k = 13; k <= NBLKS; k++)
		assert_true(blk_of(d, k) && blk_of(d, k)->on_host); /* never on NVMe */
}

/* A list without NVMe (left out, though enabled): host eviction drops, nothing is written. */
static void test_host_only(void **state)
{
	struct fx *f = *state;
	struct kvtd *d = make(f, "host", true);
	struct tenant *t;

	start(d);
	assert_null(d->nvme);
	assert_int_equal(d->ntiers, 1);
	t = kvtd_tenant_get(d, 1000);
	for (uint64_t k = 1; k <= NBLKS; k++)
		put(d, t, k);
	kvtd_watermarks(d);
	kvtd_check_counts(d);
	assert_int_equal(d->ix.count, 13);
	assert_int_equal(d->m.demotions_total, 0);
	assert_int_equal(d->m.evictions_total, 3);
	assert_null(blk_of(d, 1));
	assert_null(blk_of(d, 3));
	check_bytes(d, 4);
	/* A put finding the tier full makes room synchronously, from the LRU tail. */
	put(d, t, 100);
	put(d, t, 101);
	put(d, t, 102);
	put(d, t, 103);
	assert_null(blk_of(d, 4));
	check_bytes(d, 103);
	assert_int_equal(d->host_used, NBLKS * BLK);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_order, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_demote_promote, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_nvme_evicts, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_host_only, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
