/* SPDX-License-Identifier: MIT */
/*
 * bench_time.h - the clock and the median the benches share (header only).
 */
#ifndef KVT_BENCH_TIME_H
#define KVT_BENCH_TIME_H

#include <stdlib.h>
#include <time.h>

/* Seconds on the monotonic clock. */
static inline double kvt_bench_now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline int kvt_bench_cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* The median of v[0..n) (sorts v). */
static inline double kvt_bench_median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), kvt_bench_cmp_d);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#endif
