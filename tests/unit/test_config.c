/* SPDX-License-Identifier: MIT */
/* kvtierd configuration: defaults, sizes, bad values rejected with a message, round trip. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"

static void test_defaults(void **state)
{
	struct kvtd_config c;

	kvtd_config_defaults(&c);
	assert_int_equal(c.host_capacity, 1ull << 30);
	assert_int_equal(c.tick_ms, 100);
	assert_int_equal(c.max_blocks, 1048576);
	assert_false(c.nvme_enabled);
	assert_string_equal(c.host_codec, "raw");
	assert_int_equal(kvtd_config_validate(&c, NULL), 0);
}

static void test_sizes(void **state)
{
	uint64_t v;

	assert_int_equal(kvtd_parse_size("64MiB", &v), 0);
	assert_int_equal(v, 64ull << 20);
	assert_int_equal(kvtd_parse_size("2G", &v), 0);
	assert_int_equal(v, 2ull << 30);
	assert_int_equal(kvtd_parse_size("4096", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(kvtd_parse_size("1 KiB", &v), 0);
	assert_int_equal(v, 1024);
	assert_int_equal(kvtd_parse_size("abc", &v), -EINVAL);
	assert_int_equal(kvtd_parse_size("-1G", &v), -EINVAL);
	assert_int_equal(kvtd_parse_size("12Q", &v), -EINVAL);
	assert_int_equal(kvtd_parse_size("99999999999T", &v), -ERANGE);
}

static void test_bad_values(void **state)
{
	struct kvtd_config c, before;
	char *msg = NULL;
	size_t len = 0;
	FILE *err = open_memstream(&msg, &len);

	kvtd_config_defaults(&c);
	before = c;
	assert_int_equal(kvtd_config_set(&c, "host.capacity=lots", err), -EINVAL);
	assert_int_equal(kvtd_config_set(&c, "host.capacity=1KiB", err), -EINVAL); /* < 1 MiB */
	assert_int_equal(kvtd_config_set(&c, "daemon.tick_ms=0", err), -EINVAL);
	assert_int_equal(kvtd_config_set(&c, "host.high_watermark=1.5", err), -EINVAL);
	assert_int_equal(kvtd_config_set(&c, "nvme.enabled=maybe", err), -EINVAL);
	assert_int_equal(kvtd_config_set(&c, "daemon.log_level=loud", err), -EINVAL);
	assert_int_equal(kvtd_config_set(&c, "host.nonsense=1", err), -EINVAL);
	assert_int_equal(kvtd_config_set(&c, "novalue", err), -EINVAL);
	fclose(err);
	/* A rejected value changes nothing, and the message names the key. */
	assert_memory_equal(&c, &before, sizeof(c));
	assert_non_null(strstr(msg, "host.capacity"));
	assert_non_null(strstr(msg, "unknown configuration key host.nonsense"));
	free(msg);

	assert_int_equal(kvtd_config_set(&c, "host.low_watermark=0.99", NULL), 0);
	assert_int_equal(kvtd_config_validate(&c, NULL), -EINVAL);
	kvtd_config_defaults(&c);
	assert_int_equal(kvtd_config_set(&c, "daemon.ring_entries=100", NULL), 0);
	assert_int_equal(kvtd_config_validate(&c, NULL), -EINVAL);
	kvtd_config_defaults(&c);
	assert_int_equal(kvtd_config_set(&c, "host.codec=zstd", NULL), 0);
	assert_int_equal(kvtd_config_validate(&c, NULL), -EINVAL);
}

/* remote.*: off by default; values checked by the table; remote in tiers.order needs nodes. */
static void test_remote(void **state)
{
	struct kvtd_config c;
	char *msg = NULL;
	size_t len = 0;
	FILE *err = open_memstream(&msg, &len);

	(void)state;
	kvtd_config_defaults(&c);
	assert_string_equal(c.remote_nodes, "");
	assert_int_equal(c.remote_lookup_timeout_us, 2000);
	assert_string_equal(c.remote_codec, "raw");
	assert_int_equal(kvtd_config_set(&c, "remote.threads=0", err), -EINVAL);
	assert_int_equal(kvtd_config_set(&c, "remote.threads=17", err), -EINVAL);
	assert_int_equal(kvtd_config_set(&c, "remote.queue_max=0", err), -EINVAL);
	assert_int_equal(kvtd_config_set(&c, "remote.lookup_timeout_us=10", err), -EINVAL);
	assert_int_equal(kvtd_config_set(&c, "remote.ttl=soon", err), -EINVAL);
	assert_int_equal(kvtd_config_set(&c, "tiers.order=gpu,host,nvme,remote", err), 0);
	assert_int_equal(kvtd_config_validate(&c, err), -EINVAL); /* no remote.nodes */
	fclose(err);
	assert_non_null(strstr(msg, "remote.threads"));
	assert_non_null(strstr(msg, "remote.nodes is empty"));
	free(msg);
	assert_int_equal(kvtd_config_set(&c, "remote.nodes=127.0.0.1:7000,127.0.0.1:7001", NULL),
			 0);
	assert_int_equal(kvtd_config_validate(&c, NULL), 0);
}

/* Every numeric key: the largest value it accepts must survive as that value (no wrap), and
 * one more is refused.  index.max_blocks=2^32 gave an index of size 0. */
static void test_ranges(void **state)
{
	struct kvtd_config c;
	const char *sec, *name;
	char val[64], a[160];

	(void)state;
	kvtd_config_defaults(&c);
	assert_int_equal(kvtd_config_set(&c, "index.max_blocks=4294967296", NULL), -EINVAL);
	assert_int_equal(kvtd_config_set(&c, "index.max_blocks=2147483649", NULL), -EINVAL);
	assert_int_equal(kvtd_config_set(&c, "index.max_blocks=2147483648", NULL), 0);
	assert_int_equal(c.max_blocks, 2147483648u);
	assert_int_equal((uint32_t)c.max_blocks, c.max_blocks); /* what kvtd_index_init takes */
	assert_int_equal(kvtd_config_set(&c, "daemon.max_clients=4294967297", NULL), -EINVAL);
	assert_int_equal(kvtd_config_set(&c, "daemon.tick_ms=18446744073709551616", NULL), -EINVAL);
	assert_int_equal(kvtd_config_set(&c, "host.capacity=16777216TiB", NULL), -EINVAL);
	/* The value each key prints is what it was set to. */
	kvtd_config_defaults(&c);
	for (size_t i = 0; i < kvtd_config_nkeys(); i++) {
		struct kvtd_config d;

		assert_int_equal(kvtd_config_value(&c, i, &sec, &name, val, sizeof(val)), 0);
		snprintf(a, sizeof(a), "%s.%s=%s", sec, name, val);
		kvtd_config_defaults(&d);
		assert_int_equal(kvtd_config_set(&d, a, NULL), 0);
		assert_memory_equal(&c, &d, sizeof(c));
	}
	assert_int_equal(kvtd_config_value(&c, kvtd_config_nkeys(), &sec, &name, val, sizeof(val)),
			 -EINVAL);
}

static void test_file_round_trip(void **state)
{
	char path[] = "/tmp/kvtier-conf-XXXXXX";
	int fd = mkstemp(path);
	struct kvtd_config a, b;
	FILE *f;

	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	fprintf(f,
		"; comment\n[host]\ncapacity = 3GiB\nlow_watermark = 0.5\n[nvme]\nenabled = yes\n"
		"paths = /a,/b\n");
	fclose(f);
	kvtd_config_defaults(&a);
	assert_int_equal(kvtd_config_load(&a, path, NULL), 0);
	assert_int_equal(a.host_capacity, 3ull << 30);
	assert_true(a.nvme_enabled);
	assert_string_equal(a.nvme_paths, "/a,/b");
	/* What --print-config prints reads back to the same configuration. */
	f = fopen(path, "w");
	kvtd_config_print(&a, f);
	fclose(f);
	kvtd_config_defaults(&b);
	assert_int_equal(kvtd_config_load(&b, path, NULL), 0);
	assert_memory_equal(&a, &b, sizeof(a));
	/* A bad line is an error. */
	f = fopen(path, "w");
	fprintf(f, "[host]\ncapacity = 3GiB\ncapacity = nope\n");
	fclose(f);
	assert_int_equal(kvtd_config_load(&b, path, NULL), -EINVAL);
	unlink(path);
	assert_int_equal(kvtd_config_load(&b, "/nonexistent/kvtierd.conf", NULL), -ENOENT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_defaults),	    cmocka_unit_test(test_sizes),
	    cmocka_unit_test(test_bad_values),	    cmocka_unit_test(test_ranges),
	    cmocka_unit_test(test_file_round_trip), cmocka_unit_test(test_remote),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
