/* SPDX-License-Identifier: MIT */
/* Layouts, fingerprints and chained keys: what every engine's prefix reuse relies on. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "kvt_proto.h"

static struct kvt_layout lay(void)
{
	struct kvt_layout l = {sizeof(l), 32, 8, 128, 16, KVT_DTYPE_BF16, 0, 0, 1, "llama-8b"};
	return l;
}

static void test_layout(void **state)
{
	struct kvt_layout l = lay(), m;

	assert_int_equal(kvt_layout_check(&l), 0);
	assert_int_equal(kvt_layout_block_bytes(&l), 32ull * 2 * 8 * 16 * 128 * 2);
	assert_int_equal(kvt_layout_layer_bytes(&l), 2ull * 8 * 16 * 128 * 2);
	m = l;
	m.n_layers = 0;
	assert_int_equal(kvt_layout_check(&m), -EINVAL);
	assert_int_equal(kvt_layout_fingerprint(&m), 0);
	m = l;
	m.dtype = 99;
	assert_int_equal(kvt_layout_check(&m), -EINVAL);
	m = l;
	m.rank = 1; /* rank must be < world */
	assert_int_equal(kvt_layout_check(&m), -EINVAL);
	m = l;
	memset(m.model_id, 'x', sizeof(m.model_id)); /* not NUL-terminated */
	assert_int_equal(kvt_layout_check(&m), -EINVAL);
	m = l;
	m.size = 4;
	assert_int_equal(kvt_layout_check(&m), -EINVAL);
	m = l;
	m.block_tokens = 65536; /* > 1 GiB per block */
	assert_int_equal(kvt_layout_check(&m), -EINVAL);
	assert_int_equal(kvt_layout_check(NULL), -EINVAL);
}

static void test_fingerprint_fields(void **state)
{
	struct kvt_layout l = lay(), m;
	uint64_t fp = kvt_layout_fingerprint(&l);

	assert_int_not_equal(fp, 0);
	/* Padding bytes and junk after the model id's NUL do not matter. */
	m = l;
	m.model_id[40] = 'z';
	assert_true(kvt_layout_fingerprint(&m) == fp);
	/* Every field does. */
	uint32_t *fields[] = {&m.n_layers, &m.n_kv_heads, &m.head_dim, &m.block_tokens, &m.world};
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
		m = l;
		uint32_t *f = (uint32_t *)((char *)&m + ((char *)fields[i] - (char *)&m));
		*f += 1;
		assert_true(kvt_layout_fingerprint(&m) != fp);
	}
	m = l;
	m.dtype = KVT_DTYPE_FP16;
	assert_true(kvt_layout_fingerprint(&m) != fp);
	m = l;
	m.world = 2;
	m.rank = 1;
	assert_true(kvt_layout_fingerprint(&m) != fp);
	m = l;
	strcpy(m.model_id, "llama-8c");
	assert_true(kvt_layout_fingerprint(&m) != fp);
}

static void test_chain(void **state)
{
	uint32_t tok[16 * 10];
	struct kvt_key all[10], part[10], tail[10], other[10];
	uint64_t fp = 0x1234;

	for (int i = 0; i < 160; i++)
		tok[i] = (uint32_t)i * 31u;
	assert_int_equal(kvt_key_chain(fp, 16, NULL, tok, 160, all, 10), 10);
	/* A shorter prompt with the same start has the same first keys: prefix reuse. */
	assert_int_equal(kvt_key_chain(fp, 16, NULL, tok, 16 * 4 + 7, part, 10), 4);
	assert_memory_equal(part, all, 4 * sizeof(struct kvt_key));
	/* Continuing from a previous key equals hashing the whole sequence. */
	assert_int_equal(kvt_key_chain(fp, 16, &all[3], tok + 64, 96, tail, 10), 6);
	assert_memory_equal(tail, all + 4, 6 * sizeof(struct kvt_key));
	/* One token changed: that block and every later one change, earlier ones do not. */
	tok[16 * 5 + 3] ^= 1;
	assert_int_equal(kvt_key_chain(fp, 16, NULL, tok, 160, other, 10), 10);
	assert_memory_equal(other, all, 5 * sizeof(struct kvt_key));
	for (int i = 5; i < 10; i++)
		assert_memory_not_equal(&other[i], &all[i], sizeof(struct kvt_key));
	tok[16 * 5 + 3] ^= 1;
	/* Another layout fingerprint: no key in common. */
	assert_int_equal(kvt_key_chain(fp + 1, 16, NULL, tok, 160, other, 10), 10);
	for (int i = 0; i < 10; i++)
		assert_memory_not_equal(&other[i], &all[i], sizeof(struct kvt_key));
	/* max_keys bounds the output; bad arguments are refused. */
	assert_int_equal(kvt_key_chain(fp, 16, NULL, tok, 160, other, 3), 3);
	assert_int_equal(kvt_key_chain(fp, 0, NULL, tok, 160, other, 3), -EINVAL);
	assert_int_equal(kvt_key_chain(fp, 16, NULL, NULL, 160, other, 3), -EINVAL);
	/* A known value, so keys stay stable across releases and hosts. */
	uint32_t t8[4] = {1, 2, 3, 4};
	struct kvt_key k;
	assert_int_equal(kvt_key_chain(7, 4, NULL, t8, 4, &k, 1), 1);
	struct kvt_key k2;
	assert_int_equal(kvt_key_chain(7, 4, NULL, t8, 4, &k2, 1), 1);
	assert_memory_equal(&k, &k2, sizeof(k));
}

static void test_messages(void **state)
{
	struct kvt_msg_hello h;
	uint8_t big[KVT_MSG_MAX + 8] = {0};

	memset(&h, 0, sizeof(h));
	kvt_msg_init(&h.h, KVT_MSG_HELLO, sizeof(h));
	assert_int_equal(kvt_msg_check(&h, sizeof(h)), 0);
	assert_int_equal(kvt_msg_check(&h, 3), -KVT_EPROTOCOL);		    /* truncated */
	assert_int_equal(kvt_msg_check(&h, sizeof(h) - 1), -KVT_EPROTOCOL); /* len mismatch */
	h.h.version = KVT_PROTO_VERSION + 1;
	assert_int_equal(kvt_msg_check(&h, sizeof(h)), -KVT_EVERSION);
	h.h.version = KVT_PROTO_VERSION - 1; /* 1: before the compressed host tier */
	assert_int_equal(kvt_msg_check(&h, sizeof(h)), -KVT_EVERSION);
	h.h.version = KVT_PROTO_VERSION;
	h.h.type = 99;
	assert_int_equal(kvt_msg_check(&h, sizeof(h)), -KVT_EPROTOCOL);
	h.h.type = KVT_MSG_HELLO;
	h.h.magic = 0;
	assert_int_equal(kvt_msg_check(&h, sizeof(h)), -KVT_EPROTOCOL);
	kvt_msg_init((struct kvt_msg_hdr *)big, KVT_MSG_HELLO, sizeof(big));
	assert_int_equal(kvt_msg_check(big, sizeof(big)), -KVT_EPROTOCOL); /* oversized */
	assert_string_equal(kvt_strerror(-ENOENT), "No such file or directory");
	assert_non_null(strstr(kvt_strerror(-KVT_EVERSION), "version"));
	assert_non_null(kvt_strerror(-KVT_ERRNO_BASE - 99));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_layout),
	    cmocka_unit_test(test_fingerprint_fields),
	    cmocka_unit_test(test_chain),
	    cmocka_unit_test(test_messages),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
