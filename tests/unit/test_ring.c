/* SPDX-License-Identifier: MIT */
/*
 * The SPSC ring discipline of kvt_ring.h between two threads: every entry arrives once, in
 * order, intact; the NEED_WAKEUP handshake never loses a wake-up (a lost one would hang and
 * trip the alarm); a full ring is never overrun.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <cmocka.h>

#include "kvt_ring.h"

#define ENTRIES 64
#define COUNT	2000000u

static struct {
	struct kvt_ring_ctl ctl;
	struct kvt_sqe e[ENTRIES];
} ring;
static int efd;
static uint64_t wakeups_sent;

static void *producer(void *arg)
{
	uint32_t tail = 0;

	for (uint32_t i = 0; i < COUNT; i++) {
		while (kvt_ring_pending(&ring.ctl, tail) == ENTRIES)
			kvt_cpu_relax();
		struct kvt_sqe *s = &ring.e[tail & (ENTRIES - 1)];
		s->user_data = i;
		s->key_lo = (uint64_t)i * 0x9e3779b97f4a7c15ull;
		s->key_hi = ~s->key_lo;
		tail++;
		kvt_ring_publish(&ring.ctl, tail);
		if (kvt_ring_needs_wakeup(&ring.ctl)) {
			uint64_t one = 1;
			ssize_t w = write(efd, &one, sizeof(one));
			(void)w;
			wakeups_sent++;
		}
		/* Bursts and pauses so the consumer really goes to sleep now and then. */
		if ((i & 4095) == 0)
			usleep(50);
	}
	return NULL;
}

static void test_spsc(void **state)
{
	pthread_t th;
	uint32_t head = 0, expect = 0;
	unsigned sleeps = 0;

	efd = eventfd(0, EFD_NONBLOCK);
	assert_true(efd >= 0);
	alarm(120);
	assert_int_equal(pthread_create(&th, NULL, producer, NULL), 0);
	while (expect < COUNT) {
		uint32_t tail = kvt_ring_tail(&ring.ctl);

		if (tail == head) {
			/* Sleep protocol: announce, re-check, then block. */
			if (kvt_ring_prepare_sleep(&ring.ctl) == head) {
				struct pollfd p = {efd, POLLIN, 0};
				uint64_t v;
				poll(&p, 1, -1);
				ssize_t r = read(efd, &v, sizeof(v));
				(void)r;
				sleeps++;
			}
			kvt_ring_awake(&ring.ctl);
			continue;
		}
		assert_true(tail - head <= ENTRIES);
		while (head != tail) {
			struct kvt_sqe s;
			memcpy(&s, &ring.e[head & (ENTRIES - 1)], sizeof(s));
			head++;
			kvt_ring_consume(&ring.ctl, head);
			assert_int_equal(s.user_data, expect);
			assert_true(s.key_lo == (uint64_t)expect * 0x9e3779b97f4a7c15ull);
			assert_true(s.key_hi == ~s.key_lo);
			expect++;
		}
	}
	pthread_join(th, NULL);
	alarm(0);
	printf("consumer slept %u times, producer sent %llu wake-ups\n", sleeps,
	       (unsigned long long)wakeups_sent);
	assert_true(sleeps > 0);
	close(efd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_spsc),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
