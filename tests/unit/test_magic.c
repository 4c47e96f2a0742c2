/* SPDX-License-Identifier: MIT */
/*
 * Object checks (proto/kvt_check.h): a handle that is not a live object - here memory that
 * never was one - handed to the client API, the device API or a codec chain.  With the
 * checks built in (Debug, or -DKVT_DEBUG=ON, which the sanitizer build sets) the call must
 * abort with a message naming the object; without them it must answer -EINVAL as before.
 * Each call runs in a child process, so an abort is an outcome to look at.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "codec.h"
#include "kvt_check.h"
#include "kvtier.h"

/* Not an object of the library: no magic of ours anywhere in it. */
static _Alignas(64) unsigned char junk[1 << 16];

/* Runs fn in a child with its stderr captured; returns the wait status. */
static int run_child(int (*fn)(void), char *err, size_t cap)
{
	int pfd[2], status = 0;
	size_t got = 0;
	ssize_t n;
	pid_t pid;

	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(pfd[0]);
		dup2(pfd[1], STDERR_FILENO);
		_exit(fn() == -EINVAL ? 0 : 1);
	}
	close(pfd[1]);
	while (got + 1 < cap && (n = read(pfd[0], err + got, cap - 1 - got)) > 0)
		got += (size_t)n;
	err[got] = 0;
	close(pfd[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	return status;
}

static void expect_checked(int (*fn)(void), const char *func)
{
	char err[4096];
	int status = run_child(fn, err, sizeof(err));

	if (KVT_CHECKS) {
		assert_true(WIFSIGNALED(status));
		assert_int_equal(WTERMSIG(status), SIGABRT);
		assert_non_null(strstr(err, "is not a live object"));
		assert_non_null(strstr(err, func));
	} else {
		assert_true(WIFEXITED(status));
		assert_int_equal(WEXITSTATUS(status), 0); /* -EINVAL, as before */
	}
}

static int client_stats(void)
{
	struct kvt_stats st = {.size = sizeof(st)};

	return kvt_stats((struct kvt_client *)junk, &st);
}

static int client_lookup(void)
{
	struct kvt_key k = {1, 2};

	return kvt_lookup((struct kvt_client *)junk, 0, &k, 1);
}

static int client_put(void)
{
	struct kvt_key k = {1, 2};
	char b[64] = {0};

	return kvt_put((struct kvt_client *)junk, 0, &k, b, sizeof(b));
}

static int client_batch(void)
{
	struct kvt_key k = {1, 2};
	uint8_t present;

	return kvt_lookup_batch((struct kvt_client *)junk, 0, &k, 1, &present);
}

static int dev_info(void)
{
	struct kvt_dev_info i = {.size = sizeof(i)};

	return kvt_dev_info((struct kvt_dev *)junk, &i);
}

static int chain_usable(void)
{
	struct kvt_codec_geom g = {2, 2, 64, 16, KVT_DTYPE_FP16, 0};

	return kvt_chain_usable((const struct kvt_chain *)junk, &g);
}

static int chain_encode(void)
{
	struct kvt_codec_geom g = {2, 2, 64, 16, KVT_DTYPE_FP16, 0};
	static unsigned char src[2 * 2 * 2 * 64 * 16 * 2], dst[1 << 16];

	return (int)kvt_chain_encode((const struct kvt_chain *)junk, &g, src, sizeof(src), dst,
				     sizeof(dst));
}

static void test_client(void **state)
{
	(void)state;
	memset(junk, 0xa5, sizeof(junk));
	expect_checked(client_stats, "kvt_stats");
	expect_checked(client_lookup, "kvt_lookup");
	expect_checked(client_put, "kvt_put");
	expect_checked(client_batch, "kvt_lookup_batch");
}

static void test_dev(void **state)
{
	(void)state;
	memset(junk, 0xa5, sizeof(junk));
	expect_checked(dev_info, "kvt_dev_info");
}

static void test_chain(void **state)
{
	struct kvt_codec_geom g = {2, 2, 64, 16, KVT_DTYPE_FP16, 0};
	struct kvt_chain *c;

	(void)state;
	memset(junk, 0xa5, sizeof(junk));
	expect_checked(chain_usable, "kvt_chain_usable");
	expect_checked(chain_encode, "kvt_chain_encode");
	/* A live chain passes the checks. */
	assert_int_equal(kvt_chain_parse("shuffle+zstd:3", &c), 0);
	assert_int_equal(kvt_chain_usable(c, &g), 0);
	assert_non_null(kvt_chain_name(c));
	kvt_chain_free(c);
}

/* NULL is not a stray handle: the functions answer it as they always did. */
static void test_null(void **state)
{
	struct kvt_stats st = {.size = sizeof(st)};
	struct kvt_dev_info i = {.size = sizeof(i)};

	(void)state;
	assert_int_equal(kvt_stats(NULL, &st), -EINVAL);
	assert_int_equal(kvt_dev_info(NULL, &i), -EINVAL);
	kvt_close(NULL);
	kvt_dev_close(NULL);
	kvt_chain_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_client),
	    cmocka_unit_test(test_dev),
	    cmocka_unit_test(test_chain),
	    cmocka_unit_test(test_null),
	};

	printf("object checks %s\n", KVT_CHECKS ? "built in (abort expected)" : "off (-EINVAL)");
	return cmocka_run_group_tests(tests, NULL, NULL);
}
