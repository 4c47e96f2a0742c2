/* SPDX-License-Identifier: MIT */
/* The arena allocator against a byte-per-page reference model, with random sequences. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "pagemap.h"

static unsigned seed = 1;

static void test_basic(void **state)
{
	struct kvtd_pagemap m;

	assert_int_equal(kvtd_pagemap_init(&m, 100), 0);
	assert_int_equal(kvtd_pagemap_alloc(&m, 64), 0);
	assert_int_equal(kvtd_pagemap_alloc(&m, 36), 64);
	assert_int_equal(kvtd_pagemap_alloc(&m, 1), -ENOSPC);
	assert_int_equal(m.nfree, 0);
	assert_int_equal(kvtd_pagemap_free(&m, 10, 5), 0);
	/* A double free is refused and changes nothing. */
	assert_int_equal(kvtd_pagemap_free(&m, 12, 2), -EINVAL);
	assert_int_equal(m.nfree, 5);
	assert_int_equal(kvtd_pagemap_alloc(&m, 6), -ENOSPC);
	assert_int_equal(kvtd_pagemap_alloc(&m, 5), 10);
	/* Out of range frees are refused. */
	assert_int_equal(kvtd_pagemap_free(&m, 99, 2), -EINVAL);
	assert_int_equal(kvtd_pagemap_free(&m, 100, 1), -EINVAL);
	assert_int_equal(kvtd_pagemap_alloc(&m, 0), -ENOSPC);
	kvtd_pagemap_fini(&m);
}

static void test_lowest_first(void **state)
{
	struct kvtd_pagemap m;

	assert_int_equal(kvtd_pagemap_init(&m, 256), 0);
	assert_int_equal(kvtd_pagemap_alloc(&m, 128), 0);
	assert_int_equal(kvtd_pagemap_alloc(&m, 100), 128);
	assert_int_equal(kvtd_pagemap_free(&m, 0, 128), 0);
	/* Freed pages at the front are reused before the untouched tail. */
	assert_int_equal(kvtd_pagemap_alloc(&m, 20), 0);
	/* [20, 128) and [228, 256) are free: 120 pages fit in neither. */
	assert_int_equal(kvtd_pagemap_alloc(&m, 120), -ENOSPC);
	assert_int_equal(kvtd_pagemap_alloc(&m, 100), 20);
	assert_int_equal(kvtd_pagemap_alloc(&m, 28), 228);
	assert_int_equal(kvtd_pagemap_free(&m, 20, 100), 0);
	assert_int_equal(kvtd_pagemap_alloc(&m, 8), 20);
	kvtd_pagemap_fini(&m);
}

struct ext {
	int64_t first;
	uint64_t n;
};

static void test_random_against_model(void **state)
{
	const uint64_t np = 5000;
	struct kvtd_pagemap m;
	uint8_t *model = calloc(np, 1);
	struct ext *live = calloc(np, sizeof(*live));
	size_t nlive = 0;

	srand(seed);
	assert_int_equal(kvtd_pagemap_init(&m, np), 0);
	for (int step = 0; step < 200000; step++) {
		if (nlive && (rand() % 2 || nlive == np)) {
			size_t k = (size_t)rand() % nlive;
			assert_int_equal(kvtd_pagemap_free(&m, (uint64_t)live[k].first, live[k].n),
					 0);
			memset(model + live[k].first, 0, live[k].n);
			live[k] = live[--nlive];
		} else {
			uint64_t n = 1 + (uint64_t)rand() % (rand() % 8 ? 8 : 300);
			int64_t at = kvtd_pagemap_alloc(&m, n);
			if (at == -ENOSPC) {
				/* Then no run of n free pages may exist in the model. */
				uint64_t run = 0;
				for (uint64_t i = 0; i < np; i++) {
					run = model[i] ? 0 : run + 1;
					assert_true(run < n);
				}
				continue;
			}
			assert_true(at >= 0 && (uint64_t)at + n <= np);
			for (uint64_t i = 0; i < n; i++) {
				assert_int_equal(model[at + i], 0); /* never hands out used pages */
				model[at + i] = 1;
			}
			live[nlive].first = at;
			live[nlive].n = n;
			nlive++;
		}
		if (step % 1000 == 0) {
			uint64_t freep = 0;
			for (uint64_t i = 0; i < np; i++)
				freep += !model[i];
			assert_int_equal(freep, m.nfree);
		}
	}
	kvtd_pagemap_fini(&m);
	free(model);
	free(live);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_basic),
	    cmocka_unit_test(test_lowest_first),
	    cmocka_unit_test(test_random_against_model),
	};

	for (int i = 1; i + 1 < argc; i++) {
		if (!strcmp(argv[i], "--seed"))
			seed = (unsigned)strtoul(argv[i + 1], NULL, 0);
	}
	printf("seed %u (rerun with --seed %u)\n", seed, seed);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
