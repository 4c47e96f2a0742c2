/* SPDX-License-Identifier: MIT */
/*
 * The host tier (tiers/tier_host.c) through its ops table alone: files attached from memfds,
 * one capacity over all of them, lowest-address allocation, addr/read/write on allocated
 * ranges only, completions from complete() only, discard punching freed pages, and free() of
 * a range not in use aborting.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "tier_host.h"

#define PG 4096u

static const struct kvt_tier_ops *ops = &kvt_tier_host_ops;

struct arena {
	int fd;
	uint8_t *base;
	uint64_t size;
};

static void arena_new(struct arena *a, uint64_t size)
{
	a->fd = memfd_create("test-arena", MFD_CLOEXEC);
	assert_true(a->fd >= 0);
	assert_int_equal(ftruncate(a->fd, (off_t)size), 0);
	a->base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, a->fd, 0);
	assert_true(a->base != MAP_FAILED);
	a->size = size;
}

static void arena_free(struct arena *a)
{
	munmap(a->base, a->size);
	close(a->fd);
}

static struct kvt_tier *open_tier(uint64_t capacity)
{
	struct kvt_tier_conf c = {0};
	struct kvt_tier *t;

	c.name = "host";
	c.capacity_bytes = capacity;
	assert_int_equal(ops->open(&c, &t), 0);
	return t;
}

static int alloc_in(struct kvt_tier *t, uint16_t file, uint32_t len, struct kvt_tier_loc *loc)
{
	memset(loc, 0, sizeof(*loc));
	loc->file = file;
	return ops->alloc(t, len, loc);
}

static void test_open_checks(void **state)
{
	struct kvt_tier_conf c = {0};
	struct kvt_tier *t = (void *)1;

	(void)state;
	assert_int_equal(ops->open(&c, &t), -EINVAL); /* no capacity */
	assert_null(t);
	assert_non_null(ops->attach);
	assert_non_null(ops->addr);
	assert_non_null(ops->discard);
	assert_string_equal(ops->name, "host");
}

static void test_capacity_over_files(void **state)
{
	struct arena a, b;
	struct kvt_tier *t = open_tier(10 * PG);
	struct kvt_tier_loc l1, l2, l3;
	struct kvt_tier_stats st;
	int fa, fb;

	(void)state;
	arena_new(&a, 8 * PG);
	arena_new(&b, 8 * PG);
	fa = ops->attach(t, a.fd, a.base, a.size);
	fb = ops->attach(t, b.fd, b.base, b.size);
	assert_true(fa >= 0 && fb >= 0 && fa != fb);
	/* Larger than the file: never fits. */
	assert_int_equal(alloc_in(t, (uint16_t)fa, 9 * PG, &l1), -E2BIG);
	/* A file that is not attached. */
	assert_int_equal(alloc_in(t, 7, PG, &l1), -EINVAL);
	assert_int_equal(alloc_in(t, (uint16_t)fa, 8 * PG, &l1), 0);
	assert_int_equal(l1.file, fa);
	assert_int_equal(l1.off, 0);
	assert_int_equal(l1.len, 8 * PG);
	/* 8 + 3 pages > 10: the capacity is over both files, though file b is empty. */
	assert_int_equal(alloc_in(t, (uint16_t)fb, 3 * PG, &l2), -ENOSPC);
	/* A partial page is a whole page. */
	assert_int_equal(alloc_in(t, (uint16_t)fb, PG + 1, &l2), 0);
	assert_int_equal(l2.len, 2 * PG);
	assert_int_equal(l2.file, fb);
	ops->stats(t, &st);
	assert_int_equal(st.capacity_bytes, 10 * PG);
	assert_int_equal(st.used_bytes, 10 * PG);
	assert_int_equal(st.records, 2);
	assert_int_equal(st.files, 2);
	assert_int_equal(alloc_in(t, (uint16_t)fb, 1, &l3), -ENOSPC);
	ops->free(t, &l1);
	ops->stats(t, &st);
	assert_int_equal(st.used_bytes, 2 * PG);
	assert_int_equal(st.records, 1);
	/* Detaching a file forgets its ranges (and their bytes). */
	ops->detach(t, (uint16_t)fb);
	ops->stats(t, &st);
	assert_int_equal(st.used_bytes, 0);
	assert_int_equal(st.files, 1);
	assert_int_equal(alloc_in(t, (uint16_t)fb, PG, &l3), -EINVAL);
	ops->close(t);
	arena_free(&a);
	arena_free(&b);
}

static void test_lowest_first(void **state)
{
	struct arena a;
	struct kvt_tier *t = open_tier(64 * PG);
	struct kvt_tier_loc x, y, z;
	int f;

	(void)state;
	arena_new(&a, 64 * PG);
	f = ops->attach(t, a.fd, a.base, a.size);
	assert_true(f >= 0);
	assert_int_equal(alloc_in(t, (uint16_t)f, 4 * PG, &x), 0);
	assert_int_equal(alloc_in(t, (uint16_t)f, 4 * PG, &y), 0);
	assert_int_equal(y.off, 4 * PG);
	ops->free(t, &x);
	/* The freed range at the front is reused before untouched pages. */
	assert_int_equal(alloc_in(t, (uint16_t)f, 3 * PG, &z), 0);
	assert_int_equal(z.off, 0);
	ops->close(t);
	arena_free(&a);
}

static int ndone;

static void on_done(struct kvt_tier_io *io)
{
	(void)io;
	ndone++;
}

static void test_addr_read_write(void **state)
{
	struct arena a;
	struct kvt_tier *t = open_tier(16 * PG);
	struct kvt_tier_loc l, freed;
	struct kvt_tier_io w = {0}, r = {0};
	uint8_t src[3 * PG], dst[3 * PG];
	struct kvt_tier_stats st;
	int f;

	(void)state;
	arena_new(&a, 16 * PG);
	f = ops->attach(t, a.fd, a.base, a.size);
	assert_int_equal(alloc_in(t, (uint16_t)f, 2 * PG, &freed), 0);
	assert_int_equal(alloc_in(t, (uint16_t)f, 3 * PG, &l), 0);
	ops->free(t, &freed);
	assert_ptr_equal(ops->addr(t, &l), a.base + l.off);
	assert_null(ops->addr(t, &freed)); /* not allocated */
	for (size_t k = 0; k < sizeof(src); k++)
		src[k] = (uint8_t)(k * 7 + 3);
	w.loc = l;
	w.buf = src;
	w.len = sizeof(src);
	w.done = on_done;
	ndone = 0;
	assert_int_equal(ops->write(t, &w), 0);
	assert_int_equal(ndone, 0); /* never from inside write() */
	assert_memory_equal(a.base + l.off, src, sizeof(src));
	r.loc = l;
	r.buf = dst;
	r.len = sizeof(dst);
	r.done = on_done;
	assert_int_equal(ops->read(t, &r), 0);
	assert_int_equal(ndone, 0);
	assert_int_equal(ops->complete(t), 2);
	assert_int_equal(ndone, 2);
	assert_int_equal(w.res, (int)sizeof(src));
	assert_int_equal(r.res, (int)sizeof(dst));
	assert_memory_equal(dst, src, sizeof(src));
	/* Bad requests change nothing and complete nothing. */
	r.loc = freed;
	r.len = PG;
	assert_int_equal(ops->read(t, &r), -EINVAL);
	r.loc = l;
	r.len = l.len + 1;
	assert_int_equal(ops->read(t, &r), -EINVAL);
	assert_int_equal(ops->complete(t), 0);
	ops->stats(t, &st);
	assert_int_equal(st.bytes_written, sizeof(src));
	assert_int_equal(st.bytes_read, sizeof(dst));
	assert_int_equal(st.reads, 1);
	assert_int_equal(st.writes, 1);
	ops->close(t);
	arena_free(&a);
}

/* Whether page p of the memfd is backed (SEEK_DATA finds data in it). */
static int page_backed(int fd, uint64_t p)
{
	off_t o = lseek(fd, (off_t)(p * PG), SEEK_DATA);

	return o >= 0 && (uint64_t)o < (p + 1) * PG;
}

static void test_discard(void **state)
{
	struct arena a;
	struct kvt_tier *t = open_tier(16 * PG);
	struct kvt_tier_loc x, y, z, all = {0};
	int f;

	(void)state;
	arena_new(&a, 16 * PG);
	f = ops->attach(t, a.fd, a.base, a.size);
	assert_int_equal(alloc_in(t, (uint16_t)f, 2 * PG, &x), 0);
	assert_int_equal(alloc_in(t, (uint16_t)f, 2 * PG, &y), 0);
	assert_int_equal(alloc_in(t, (uint16_t)f, 2 * PG, &z), 0);
	memset(a.base, 0xab, 6 * PG);
	assert_true(page_backed(a.fd, 0) && page_backed(a.fd, 2) && page_backed(a.fd, 4));
	/* A range still in use is never discarded. */
	ops->discard(t, &x);
	assert_true(page_backed(a.fd, 0));
	assert_int_equal(a.base[0], 0xab);
	ops->free(t, &x);
	ops->discard(t, &x);
	assert_false(page_backed(a.fd, 0));
	assert_int_equal(a.base[x.off], 0); /* the memory went back: zeros now */
	/* len 0: every free range of the file; ranges in use keep their bytes. */
	ops->free(t, &z);
	all.file = (uint16_t)f;
	ops->discard(t, &all);
	assert_false(page_backed(a.fd, 4));
	assert_true(page_backed(a.fd, 2));
	assert_int_equal(a.base[y.off + PG], 0xab);
	ops->close(t);
	arena_free(&a);
}

static void test_double_free_aborts(void **state)
{
	struct arena a;
	struct kvt_tier *t = open_tier(16 * PG);
	struct kvt_tier_loc x;
	int f, status;
	pid_t pid;

	(void)state;
	arena_new(&a, 16 * PG);
	f = ops->attach(t, a.fd, a.base, a.size);
	assert_int_equal(alloc_in(t, (uint16_t)f, PG, &x), 0);
	ops->free(t, &x);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* The same range twice would be handed to two blocks: the tier stops. */
		ops->free(t, &x);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGABRT);
	ops->close(t);
	arena_free(&a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_open_checks),	 cmocka_unit_test(test_capacity_over_files),
	    cmocka_unit_test(test_lowest_first), cmocka_unit_test(test_addr_read_write),
	    cmocka_unit_test(test_discard),	 cmocka_unit_test(test_double_free_aborts),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
