/* SPDX-License-Identifier: MIT */
/*
 * The readiness list (daemon/waiters.c), without a daemon: the gets waiting on a block come
 * off the list in the order placement chained them, with the block, its generation at the
 * report and the outcome; reports of several blocks keep their order; entries are reused.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include "daemon.h"

static struct kvtd *new_daemon(void)
{
	struct kvtd *d = calloc(1, sizeof(*d));

	assert_non_null(d);
	assert_int_equal(kvtd_index_init(&d->ix, 64), 0);
	kvtd_waiters_init(d);
	return d;
}

static void free_daemon(struct kvtd *d)
{
	kvtd_waiters_fini(d);
	kvtd_index_fini(&d->ix);
	free(d);
}

/* A block's chain as placement.c's add_waiter() builds it: each new waiter in front. */
static uint32_t chain(struct kvtd *d, uint32_t n, uint32_t first_client)
{
	uint32_t head = KVTD_NIL;

	for (uint32_t k = 0; k < n; k++) {
		head = kvtd_waiter_new(d, head, first_client + k, 1000 + first_client + k);
		assert_int_not_equal(head, KVTD_NIL);
	}
	return head;
}

static void test_order_and_fields(void **state)
{
	struct kvtd *d = new_daemon();
	uint32_t a = kvtd_index_insert(&d->ix, 1, 1), b = kvtd_index_insert(&d->ix, 2, 2);
	uint32_t ga = kvtd_blk(&d->ix, a)->gen, gb = kvtd_blk(&d->ix, b)->gen;
	struct waiter w;

	(void)state;
	assert_false(kvtd_ready_pop(d, &w));
	/* Block a: clients 1, 2, 3 waited (chain 3 -> 2 -> 1); block b: clients 10, 11. */
	kvtd_waiters_ready(d, chain(d, 3, 1), a, 0);
	kvtd_waiters_ready(d, chain(d, 2, 10), b, -ENOENT);
	kvtd_waiters_ready(d, KVTD_NIL, a, 0); /* a block nobody waited for: nothing */
	const struct {
		uint32_t client, blk, gen;
		int err;
	} want[] = {{3, a, ga, 0},
		    {2, a, ga, 0},
		    {1, a, ga, 0},
		    {11, b, gb, -ENOENT},
		    {10, b, gb, -ENOENT}};
	for (size_t k = 0; k < sizeof(want) / sizeof(want[0]); k++) {
		assert_true(kvtd_ready_pop(d, &w));
		assert_int_equal(w.client_id, want[k].client);
		assert_int_equal(w.user_data, 1000 + want[k].client);
		assert_int_equal(w.blk, want[k].blk);
		assert_int_equal(w.gen, want[k].gen);
		assert_int_equal(w.err, want[k].err);
	}
	assert_false(kvtd_ready_pop(d, &w));
	free_daemon(d);
}

/* Popped entries are free again: waiting and answering forever needs no more memory. */
static void test_reuse(void **state)
{
	struct kvtd *d = new_daemon();
	uint32_t a = kvtd_index_insert(&d->ix, 1, 1);
	struct waiter w;

	(void)state;
	for (int round = 0; round < 1000; round++) {
		kvtd_waiters_ready(d, chain(d, 5, 1), a, 0);
		/* Reported, not yet answered: a new get may wait meanwhile. */
		kvtd_waiters_ready(d, chain(d, 1, 7), a, -EIO);
		for (int k = 0; k < 6; k++)
			assert_true(kvtd_ready_pop(d, &w));
		assert_int_equal(w.client_id, 7);
		assert_int_equal(w.err, -EIO);
		assert_false(kvtd_ready_pop(d, &w));
	}
	assert_true(d->nwaiters <= 6);
	free_daemon(d);
}

/* A get of a block that never came to be (a remote fetch that missed: no index entry) is
 * reported with KVTD_NIL: it comes off the list as a miss, generation 0. */
static void test_no_block(void **state)
{
	struct kvtd *d = new_daemon();
	struct waiter w;

	(void)state;
	kvtd_waiters_ready(d, chain(d, 1, 5), KVTD_NIL, -ENOENT);
	assert_true(kvtd_ready_pop(d, &w));
	assert_int_equal(w.client_id, 5);
	assert_int_equal(w.blk, KVTD_NIL);
	assert_int_equal(w.gen, 0);
	assert_int_equal(w.err, -ENOENT);
	assert_false(kvtd_ready_pop(d, &w));
	free_daemon(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_order_and_fields),
	    cmocka_unit_test(test_reuse),
	    cmocka_unit_test(test_no_block),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
