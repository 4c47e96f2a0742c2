/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for the record parser (proto/kvt_record.c): input = header bytes followed by
 * payload bytes, exactly as the NVMe tier reads them.  Invariants: the check never reads
 * past the input, an accepted record reseals to the same crc, and any single flipped bit of
 * an accepted record is rejected.
 *
 * Linked with replay_main.c it becomes the ctest driver that replays a corpus directory (or
 * files) without libFuzzer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvt_record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static unsigned accepted; /* inputs that passed the check: the replay wants some */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kvt_record_hdr h, c;
	const uint8_t *payload;
	uint8_t *copy;
	size_t avail;

	if (size < sizeof(h))
		return 0;
	memcpy(&h, data, sizeof(h));
	avail = size - sizeof(h);
	/* A private copy exactly as long as the input, so ASan sees any overread. */
	copy = malloc(avail ? avail : 1);
	if (!copy)
		return 0;
	memcpy(copy, data + sizeof(h), avail);
	payload = copy;
	if (kvt_record_check(&h, payload, avail) == 0) {
		uint32_t bit;

		accepted++;
		if (h.payload_len > avail)
			abort();
		c = h;
		kvt_record_seal(&c, payload);
		if (c.crc != h.crc)
			abort();
		/* One flipped bit anywhere in header or payload must be caught. */
		bit = (uint32_t)(h.crc % ((sizeof(h) + h.payload_len) * 8));
		if (bit < sizeof(h) * 8) {
			((uint8_t *)&c)[bit / 8] ^= (uint8_t)(1u << (bit % 8));
			if (kvt_record_check(&c, payload, avail) == 0)
				abort();
		} else {
			bit -= (uint32_t)sizeof(h) * 8;
			copy[bit / 8] ^= (uint8_t)(1u << (bit % 8));
			if (kvt_record_check(&h, payload, avail) == 0)
				abort();
		}
	}
	free(copy);
	return 0;
}

/* Checked by replay_main.c after a corpus replay: a corpus without valid records would never
 * reach the round-trip invariants. */
int kvt_fuzz_replay_check(void);

int kvt_fuzz_replay_check(void)
{
	return accepted ? 0 : -1;
}
