/* SPDX-License-Identifier: MIT */
/*
 * test_codec_auto.c - the choice rule of codec = auto (daemon/codec_auto.c,
 * kvtd_auto_choose): the smallest chain within the error budget that fits the tier.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "codec_auto.h"

#define G  KVTD_AUTO_GPU
#define L  KVTD_AUTO_LOSSLESS
#define DI KVTD_AUTO_DICT

/* A table like a real calibration's (figures of the shared dump's model, rounded). */
static const struct kvtd_auto_row rows[] = {
    {"raw", 1.0, 0, 7.0, 4.0, L | G},		      /* 0 */
    {"fpx", 1.27, 0, 0.16, 0.7, L},		      /* 1 */
    {"bq:k=0.02,v=0.01", 2.6, 0.016, 0.3, 1.5, G},    /* 2 */
    {"bq:k=0.04,v=0.02", 3.5, 0.031, 0.3, 1.4, G},    /* 3 */
    {"kivi:k=8,v=8+rans", 1.8, 0.0056, 0.13, 0.4, 0}, /* 4 */
    {"uq", 6.0, 0.021, 0.03, 0.14, 0},		      /* 5 */
    {"uq:kb=1,a", 9.8, 0.018, 0.013, 0.067, DI},      /* 6 */
    {"uq:kb=1,b", 12.5, 0.029, 0.014, 0.072, DI},     /* 7 */
};
#define N (sizeof(rows) / sizeof(rows[0]))

static void smallest_within_budget(void **state)
{
	(void)state;
	/* no speed condition (bw 0): the highest ratio whose err meets the budget */
	assert_int_equal(kvtd_auto_choose(rows, N, KVTD_TIER_NVME, 0.03, 0, 1), 7);
	assert_int_equal(kvtd_auto_choose(rows, N, KVTD_TIER_NVME, 0.02, 0, 1), 6);
	/* the budget is inclusive */
	assert_int_equal(kvtd_auto_choose(rows, N, KVTD_TIER_NVME, 0.018, 0, 1), 6);
	assert_int_equal(kvtd_auto_choose(rows, N, KVTD_TIER_NVME, 0.0179, 0, 1), 2);
}

static void tighter_budget_larger_chain(void **state)
{
	(void)state;
	/* 0.01: only kivi-8 among the lossy; 0.001: the best lossless (fpx beats raw) */
	assert_int_equal(kvtd_auto_choose(rows, N, KVTD_TIER_NVME, 0.01, 0, 1), 4);
	assert_int_equal(kvtd_auto_choose(rows, N, KVTD_TIER_NVME, 0.001, 0, 1), 1);
	/* a lossless chain (err 0) meets any budget */
	assert_int_equal(kvtd_auto_choose(rows, N, KVTD_TIER_NVME, 1e-12, 0, 1), 1);
}

static void host_takes_gpu_chains_without_dictionary(void **state)
{
	(void)state;
	assert_int_equal(kvtd_auto_choose(rows, N, KVTD_TIER_HOST, 0.03, 0, 1), 2);
	assert_int_equal(kvtd_auto_choose(rows, N, KVTD_TIER_HOST, 0.05, 0, 1), 3);
	assert_int_equal(kvtd_auto_choose(rows, N, KVTD_TIER_GPU, 0.05, 0, 1), 3);
	/* below every bq's err: raw, never fpx (no GPU decoder) */
	assert_int_equal(kvtd_auto_choose(rows, N, KVTD_TIER_HOST, 0.01, 0, 1), 0);
	/* a GPU chain that needs a dictionary does not go to the host (clients have none) */
	struct kvtd_auto_row r[2] = {rows[0], {"bq:dict", 8.0, 0.01, 1, 1, G | DI}};
	assert_int_equal(kvtd_auto_choose(r, 2, KVTD_TIER_HOST, 0.05, 0, 1), 0);
	assert_int_equal(kvtd_auto_choose(r, 2, KVTD_TIER_NVME, 0.05, 0, 1), 1);
}

static void nvme_speed_fits_the_disk(void **state)
{
	(void)state;
	/*
	 * bw 1 GB/s, budget 0.035: a chain of ratio r must run at r GB/s on the threads.  uq:kb=1,b
	 * (ratio 12.5, 0.014 GB/s a core) would need 893 threads; bq:k=0.04 (3.5, 0.3 GB/s) 12.
	 */
	assert_int_equal(kvtd_auto_choose(rows, N, KVTD_TIER_NVME, 0.035, 1e9, 2), 0);
	/* raw is a copy: it fits a disk faster than its measured memcpy */
	assert_int_equal(kvtd_auto_choose(rows, N, KVTD_TIER_NVME, 0.035, 1e11, 1), 0);
	assert_int_equal(kvtd_auto_choose(rows, N, KVTD_TIER_NVME, 0.035, 1e9, 12), 3);
	/* a slow disk: everything fits */
	assert_int_equal(kvtd_auto_choose(rows, N, KVTD_TIER_NVME, 0.03, 1e6, 1), 7);
	/* 0 threads (codecs on the loop) counts as one */
	assert_int_equal(kvtd_auto_choose(rows, N, KVTD_TIER_NVME, 0.03, 1e6, 0), 7);
	/* 10 MB/s: 12.5 x 10 MB/s = 125 MB/s > 14 MB/s a core; uq:kb=1,a (9.8x at 13 MB/s)
	 * neither; bq:k=0.04 (35 MB/s needed, 300 available) does */
	assert_int_equal(kvtd_auto_choose(rows, N, KVTD_TIER_NVME, 0.035, 1e7, 1), 3);
}

static void nothing_qualifies(void **state)
{
	(void)state;
	struct kvtd_auto_row r[2] = {{"a", 3, 0.5, 1, 1, G}, {"b", 4, NAN, 1, 1, G}};
	assert_int_equal(kvtd_auto_choose(r, 2, KVTD_TIER_HOST, 0.05, 0, 1), -1);
	assert_int_equal(kvtd_auto_choose(r, 0, KVTD_TIER_NVME, 0.05, 0, 1), -1);
	/* a NaN err never qualifies, whatever the budget */
	assert_int_equal(kvtd_auto_choose(r, 2, KVTD_TIER_NVME, 1.0, 0, 1), 0);
}

static void ties_go_to_the_smaller_err(void **state)
{
	(void)state;
	struct kvtd_auto_row r[3] = {
	    {"a", 4, 0.02, 1, 1, G}, {"b", 4, 0.01, 1, 1, G}, {"c", 4, 0.015, 1, 1, G}};
	assert_int_equal(kvtd_auto_choose(r, 3, KVTD_TIER_HOST, 0.05, 0, 1), 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(smallest_within_budget),
	    cmocka_unit_test(tighter_budget_larger_chain),
	    cmocka_unit_test(host_takes_gpu_chains_without_dictionary),
	    cmocka_unit_test(nvme_speed_fits_the_disk),
	    cmocka_unit_test(nothing_qualifies),
	    cmocka_unit_test(ties_go_to_the_smaller_err),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
