/* SPDX-License-Identifier: MIT */
/* The block index: a million keys in, found, removed; LRU order; entry reuse bumps gen. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include "index.h"

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	return x;
}

static void test_million(void **state)
{
	const uint32_t n = 1u << 20;
	struct kvtd_index ix;

	assert_int_equal(kvtd_index_init(&ix, n), 0);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t e = kvtd_index_insert(&ix, mix(i), mix(i + 0x1000000));
		assert_int_not_equal(e, KVTD_NIL);
	}
	/* Full: the configured maximum is a hard limit. */
	assert_int_equal(kvtd_index_insert(&ix, 1, 2), KVTD_NIL);
	assert_int_equal(ix.count, n);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t e = kvtd_index_find(&ix, mix(i), mix(i + 0x1000000));
		assert_int_not_equal(e, KVTD_NIL);
		assert_true(kvtd_blk(&ix, e)->key_lo == mix(i));
	}
	assert_int_equal(kvtd_index_find(&ix, mix(n + 5), 0), KVTD_NIL);
	for (uint32_t i = 0; i < n; i += 2)
		kvtd_index_remove(&ix, kvtd_index_find(&ix, mix(i), mix(i + 0x1000000)));
	for (uint32_t i = 0; i < n; i++) {
		uint32_t e = kvtd_index_find(&ix, mix(i), mix(i + 0x1000000));
		assert_true((e == KVTD_NIL) == !(i & 1));
	}
	kvtd_index_fini(&ix);
}

static void test_lru_and_gen(void **state)
{
	struct kvtd_index ix;
	uint32_t a, b, c, gen;

	assert_int_equal(kvtd_index_init(&ix, 1024), 0);
	a = kvtd_index_insert(&ix, 1, 1);
	b = kvtd_index_insert(&ix, 2, 2);
	c = kvtd_index_insert(&ix, 3, 3);
	kvtd_lru_push(&ix, 0, a);
	kvtd_lru_push(&ix, 0, b);
	kvtd_lru_push(&ix, 0, c);
	assert_int_equal(ix.lru_tail[0], a);
	kvtd_lru_push(&ix, 0, a); /* touched: now most recent */
	assert_int_equal(ix.lru_tail[0], b);
	assert_int_equal(ix.lru_head[0], a);
	kvtd_lru_unlink(&ix, 0, b);
	assert_int_equal(ix.lru_tail[0], c);
	gen = kvtd_blk(&ix, c)->gen;
	kvtd_index_remove(&ix, c);
	assert_int_equal(ix.lru_tail[0], a);
	assert_int_equal(kvtd_index_find(&ix, 3, 3), KVTD_NIL);
	/* The freed entry is reused with a new generation, so stale handles fail. */
	assert_int_equal(kvtd_index_insert(&ix, 4, 4), c);
	assert_int_not_equal(kvtd_blk(&ix, c)->gen, gen);
	/* Unhash keeps the entry but hides the key. */
	kvtd_index_unhash(&ix, a);
	assert_int_equal(kvtd_index_find(&ix, 1, 1), KVTD_NIL);
	assert_int_equal(ix.count, 2);
	kvtd_index_fini(&ix);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_million),
	    cmocka_unit_test(test_lru_and_gen),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
