/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for the remote tier's value parser (kvt_remote_parse_value in
 * tiers/tier_remote.c), i.e. what a Redis node hands back for a block's key.
 *
 * Input: one mode byte, then the bytes.  Mode bit 0: the bytes are the value itself, or a
 * RESP stream (hiredis's reader parses it, as the cluster client does, and every string
 * reply in it is taken as a value).  Mode bit 1: the key asked for is the one in the
 * value's own header (so valid records are reachable), or a fixed other key (so every
 * record must be refused).
 * Invariants: nothing reads past the input; an accepted value is exactly header +
 * payload_len bytes, its payload points inside it, its CRC reseals the same, its key and
 * fingerprint are those asked for; the same value one byte shorter, or with one bit
 * flipped, is refused.
 *
 * Linked with replay_main.c it is the ctest driver over tests/fuzz/corpus/remote_value;
 * -DKVT_FUZZ_MAKE_SEEDS builds the seed writer at the end.
 */
#include <hiredis/hiredis.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvt_record.h"
#include "tier_remote.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static unsigned accepted;

static void check_value(const uint8_t *data, size_t size, int own_key)
{
	struct kvt_remote_key want = {1, 2, 3};
	struct kvt_record_hdr h, c;
	const void *payload;
	uint8_t *copy;
	size_t bit;

	/* An exact-size private copy, so ASan sees any overread. */
	copy = malloc(size ? size : 1);
	if (!copy)
		return;
	memcpy(copy, data, size);
	if (own_key && size >= sizeof(h)) {
		memcpy(&h, copy, sizeof(h));
		want.key_lo = h.key_lo;
		want.key_hi = h.key_hi;
		want.fingerprint = h.fingerprint;
	}
	if (kvt_remote_parse_value(copy, size, &want, &h, &payload) == 0) {
		accepted++;
		if (size != sizeof(h) + h.payload_len || payload != copy + sizeof(h))
			abort();
		if (h.key_lo != want.key_lo || h.key_hi != want.key_hi ||
		    h.fingerprint != want.fingerprint)
			abort();
		c = h;
		kvt_record_seal(&c, payload);
		if (c.crc != h.crc)
			abort();
		if (kvt_remote_parse_value(copy, size - 1, &want, &c, &payload) == 0)
			abort();
		bit = h.crc % (size * 8);
		copy[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		if (kvt_remote_parse_value(copy, size, &want, &c, &payload) == 0)
			abort();
	}
	free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	redisReader *rd;
	void *reply;
	uint8_t mode;

	if (size < 1)
		return 0;
	mode = data[0];
	data++;
	size--;
	if (!(mode & 1)) {
		check_value(data, size, mode & 2);
		return 0;
	}
	rd = redisReaderCreate();
	if (!rd)
		return 0;
	if (redisReaderFeed(rd, (const char *)data, size) == REDIS_OK) {
		while (redisReaderGetReply(rd, &reply) == REDIS_OK && reply) {
			redisReply *r = reply;

			if (r->type == REDIS_REPLY_STRING)
				check_value((const uint8_t *)r->str, r->len, mode & 2);
			freeReplyObject(r);
		}
	}
	redisReaderFree(rd);
	return 0;
}

/* The replay wants the corpus to reach the accepting path. */
int kvt_fuzz_replay_check(void);

int kvt_fuzz_replay_check(void)
{
	return accepted ? 0 : -1;
}

#ifdef KVT_FUZZ_MAKE_SEEDS
/*
 * Writes the seeds of tests/fuzz/corpus/remote_value into DIR: valid values (raw and as a
 * RESP bulk string) of a few payload sizes, and truncated, extended, bit-flipped and
 * foreign-key copies.  Build by hand, e.g.
 *   cc -DKVT_FUZZ_MAKE_SEEDS -Iproto -Iclient -Itiers tests/fuzz/fuzz_remote_value.c \
 *      build/tiers/libkvt_tier_remote.a build/proto/libkvt_proto.a -lhiredis -lxxhash \
 *      -o seeds && ./seeds DIR
 */
static void put(const char *dir, const char *name, uint8_t mode, const void *p, size_t n)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f)
		exit(1);
	fputc(mode, f);
	fwrite(p, 1, n, f);
	fclose(f);
}

int main(int argc, char **argv)
{
	static const unsigned sizes[] = {0, 1, 100, 4096};
	static uint8_t v[64 + 4096 + 1], resp[64 + 4096 + 64];

	if (argc != 2)
		return 2;
	for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct kvt_record_hdr h = {.magic = KVT_RECORD_MAGIC,
					   .version = KVT_RECORD_VERSION,
					   .hdr_size = KVT_RECORD_HDR_SIZE,
					   .key_lo = 0x1111 * (i + 1),
					   .key_hi = 0x2222,
					   .fingerprint = 0x3333,
					   .raw_len = sizes[i] * 2,
					   .payload_len = sizes[i],
					   .chain_id = i,
					   .tenant = 1000};
		size_t n = 64 + sizes[i];
		char name[64];
		int hl;

		for (unsigned k = 0; k < sizes[i]; k++)
			v[64 + k] = (uint8_t)(k * 7 + i);
		kvt_record_seal(&h, v + 64);
		memcpy(v, &h, 64);
		snprintf(name, sizeof(name), "valid_%u", sizes[i]);
		put(argv[1], name, 2, v, n);
		snprintf(name, sizeof(name), "foreign_%u", sizes[i]);
		put(argv[1], name, 0, v, n);
		snprintf(name, sizeof(name), "truncated_%u", sizes[i]);
		put(argv[1], name, 2, v, n - 1);
		v[n] = 0;
		snprintf(name, sizeof(name), "longer_%u", sizes[i]);
		put(argv[1], name, 2, v, n + 1);
		hl = snprintf((char *)resp, sizeof(resp), "$%zu\r\n", n);
		memcpy(resp + hl, v, n);
		memcpy(resp + hl + n, "\r\n$-1\r\n", 7);
		snprintf(name, sizeof(name), "resp_valid_%u", sizes[i]);
		put(argv[1], name, 3, resp, (size_t)hl + n + 7);
		v[10] ^= 4;
		snprintf(name, sizeof(name), "flipped_%u", sizes[i]);
		put(argv[1], name, 2, v, n);
	}
	put(argv[1], "resp_garbage", 3, "*2\r\n$3\r\nabc\r\n:5\r\n+OK\r\n-ERR x\r\n", 30);
	put(argv[1], "empty", 2, "", 0);
	return 0;
}
#endif
