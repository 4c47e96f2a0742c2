/* SPDX-License-Identifier: MIT */
/* Unit tests for the record format (proto/kvt_record.c, proto/RECORD.md). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <cmocka.h>

#include "kvt_record.h"

uint32_t kvt_crc32c_sw(uint32_t crc, const void *buf, size_t len);
uint32_t kvt_crc32c_hw(uint32_t crc, const void *buf, size_t len);
int kvt_crc32c_hw_available(void);

static void test_crc_vectors(void **state)
{
	unsigned char z[32] = {0}, ff[32];

	memset(ff, 0xff, sizeof(ff));
	/* RFC 3720 B.4 test vectors and the customary check value. */
	assert_int_equal(kvt_crc32c(0, "123456789", 9), 0xe3069283u);
	assert_int_equal(kvt_crc32c(0, z, 32), 0x8a9136aau);
	assert_int_equal(kvt_crc32c(0, ff, 32), 0x62a8ab43u);
	assert_int_equal(kvt_crc32c_sw(0, "123456789", 9), 0xe3069283u);
	assert_int_equal(kvt_crc32c(0, NULL, 0), 0);
}

static void test_crc_hw_equals_sw(void **state)
{
	unsigned char *buf = malloc(70000);
	unsigned seed = 12345;

	assert_non_null(buf);
	for (size_t i = 0; i < 70000; i++)
		buf[i] = (unsigned char)rand_r(&seed);
	if (!kvt_crc32c_hw_available()) {
		free(buf);
		skip();
	}
	for (int i = 0; i < 2000; i++) {
		/* Short inputs take the single chain; long ones the three-chain path, with
		 * every possible tail after the last 6 KiB triple. */
		size_t off = (size_t)rand_r(&seed) % 64,
		       len = (size_t)rand_r(&seed) % (i < 300 ? 69000 : 4100);
		uint32_t init = (uint32_t)rand_r(&seed);

		if (i == 0)
			len = 65536;
		assert_int_equal(kvt_crc32c_hw(init, buf + off, len),
				 kvt_crc32c_sw(init, buf + off, len));
	}
	/* Chaining: crc(a||b) == crc(crc(a), b). */
	assert_int_equal(kvt_crc32c(kvt_crc32c(0, buf, 1000), buf + 1000, 3000),
			 kvt_crc32c(0, buf, 4000));
	free(buf);
}

/* kvt_crc32c_copy: the CRC of kvt_crc32c_sw and an exact copy, not a byte more, for any
 * length and alignment of source and destination (both paths of the three-chain loop). */
static void test_crc_copy(void **state)
{
	unsigned char *src = malloc(70000), *dst = malloc(70100);
	unsigned seed = 777;

	assert_non_null(src);
	assert_non_null(dst);
	for (size_t i = 0; i < 70000; i++)
		src[i] = (unsigned char)rand_r(&seed);
	for (int i = 0; i < 1000; i++) {
		size_t so = (size_t)rand_r(&seed) % 64, doff = (size_t)rand_r(&seed) % 64,
		       len = (size_t)rand_r(&seed) % (i < 200 ? 69000 : 4100);
		uint32_t init = (uint32_t)rand_r(&seed);

		if (i == 0)
			len = 65536;
		memset(dst, 0xa5, 70100);
		assert_int_equal(kvt_crc32c_copy(init, dst + doff, src + so, len),
				 kvt_crc32c_sw(init, src + so, len));
		assert_memory_equal(dst + doff, src + so, len);
		for (size_t k = 0; k < doff; k++)
			assert_int_equal(dst[k], 0xa5);
		for (size_t k = doff + len; k < 70100; k++)
			assert_int_equal(dst[k], 0xa5);
	}
	free(src);
	free(dst);
}

/* Merged CRCs of pieces equal the CRC of the whole, for any split (including empty pieces). */
static void test_crc_combine(void **state)
{
	static unsigned char buf[300000];
	uint64_t x = 0x9e3779b97f4a7c15ull;
	size_t cuts[] = {0, 1, 7, 8, 63, 64, 4096, 6143, 6144, 131072, 299999, 300000};

	(void)state;
	for (size_t i = 0; i < sizeof(buf); i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		buf[i] = (unsigned char)x;
	}
	for (size_t k = 0; k < sizeof(cuts) / sizeof(cuts[0]); k++) {
		size_t a = cuts[k];
		uint32_t whole = kvt_crc32c(0, buf, sizeof(buf));
		uint32_t ca = kvt_crc32c(0, buf, a), cb = kvt_crc32c(0, buf + a, sizeof(buf) - a);

		assert_int_equal(kvt_crc32c_combine(ca, cb, sizeof(buf) - a), whole);
	}
	/* Three pieces merged left to right, as the NVMe tier's verifiers do. */
	uint32_t c = kvt_crc32c(0, buf, 1000);
	c = kvt_crc32c_combine(c, kvt_crc32c(0, buf + 1000, 150000), 150000);
	c = kvt_crc32c_combine(c, kvt_crc32c(0, buf + 151000, 149000), 149000);
	assert_int_equal(c, kvt_crc32c(0, buf, sizeof(buf)));
	/* A wrong length must not merge to the right value. */
	assert_int_not_equal(
	    kvt_crc32c_combine(kvt_crc32c(0, buf, 1000), kvt_crc32c(0, buf + 1000, 5000), 4999),
	    kvt_crc32c(0, buf, 6000));
}

static void make(struct kvt_record_hdr *h, unsigned char *payload, uint32_t len)
{
	memset(h, 0, sizeof(*h));
	h->magic = KVT_RECORD_MAGIC;
	h->version = KVT_RECORD_VERSION;
	h->hdr_size = KVT_RECORD_HDR_SIZE;
	h->key_lo = 0x0123456789abcdefull;
	h->key_hi = 0xfedcba9876543210ull;
	h->fingerprint = 42;
	h->seq = 7;
	h->raw_len = len;
	h->payload_len = len;
	h->tenant = 1000;
	for (uint32_t i = 0; i < len; i++)
		payload[i] = (unsigned char)(i * 31 + 7);
	kvt_record_seal(h, payload);
}

static void test_seal_check(void **state)
{
	struct kvt_record_hdr h;
	unsigned char p[300];

	make(&h, p, sizeof(p));
	assert_int_equal(offsetof(struct kvt_record_hdr, crc), 60);
	assert_int_equal(kvt_record_check(&h, p, sizeof(p)), 0);
	assert_int_equal(kvt_record_check(&h, p, sizeof(p) + 100), 0);
	/* Truncated payload, NULL header or payload. */
	assert_int_equal(kvt_record_check(&h, p, sizeof(p) - 1), -EBADMSG);
	assert_int_equal(kvt_record_check(NULL, p, sizeof(p)), -EBADMSG);
	assert_int_equal(kvt_record_check(&h, NULL, sizeof(p)), -EBADMSG);
	/* Zero-length payload is a valid record. */
	make(&h, p, 0);
	assert_int_equal(kvt_record_check(&h, NULL, 0), 0);
}

static void test_every_bit_flip_detected(void **state)
{
	struct kvt_record_hdr h, c;
	unsigned char p[200];

	make(&h, p, sizeof(p));
	for (unsigned bit = 0; bit < 64 * 8; bit++) {
		memcpy(&c, &h, sizeof(c));
		((unsigned char *)&c)[bit / 8] ^= (unsigned char)(1u << (bit % 8));
		assert_int_equal(kvt_record_check(&c, p, sizeof(p)), -EBADMSG);
	}
	for (unsigned bit = 0; bit < sizeof(p) * 8; bit++) {
		p[bit / 8] ^= (unsigned char)(1u << (bit % 8));
		assert_int_equal(kvt_record_check(&h, p, sizeof(p)), -EBADMSG);
		p[bit / 8] ^= (unsigned char)(1u << (bit % 8));
	}
	assert_int_equal(kvt_record_check(&h, p, sizeof(p)), 0);
}

static void test_fields_checked_before_crc(void **state)
{
	struct kvt_record_hdr h;
	unsigned char p[64];

	/* Each field below is resealed so only the field check can reject it. */
	make(&h, p, sizeof(p));
	h.version = 2;
	kvt_record_seal(&h, p);
	assert_int_equal(kvt_record_check(&h, p, sizeof(p)), -EBADMSG);
	make(&h, p, sizeof(p));
	h.hdr_size = 128;
	kvt_record_seal(&h, p);
	assert_int_equal(kvt_record_check(&h, p, sizeof(p)), -EBADMSG);
	make(&h, p, sizeof(p));
	h.flags = 1;
	kvt_record_seal(&h, p);
	assert_int_equal(kvt_record_check(&h, p, sizeof(p)), -EBADMSG);
	make(&h, p, sizeof(p));
	h.magic = 0x5254564cu;
	kvt_record_seal(&h, p);
	assert_int_equal(kvt_record_check(&h, p, sizeof(p)), -EBADMSG);
	/* A huge payload_len must be rejected by the avail check, not read past. */
	make(&h, p, sizeof(p));
	h.payload_len = 0xffffffffu;
	assert_int_equal(kvt_record_check(&h, p, sizeof(p)), -EBADMSG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_crc_vectors),
	    cmocka_unit_test(test_crc_hw_equals_sw),
	    cmocka_unit_test(test_crc_copy),
	    cmocka_unit_test(test_crc_combine),
	    cmocka_unit_test(test_seal_check),
	    cmocka_unit_test(test_every_bit_flip_detected),
	    cmocka_unit_test(test_fields_checked_before_crc),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
