/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for the record parser (proto/kvt_record.c): input = header bytes followed by
 * payload bytes, exactly as the NVMe tier reads them.  Invariants: the check never reads
 * past the input, an accepted record reseals to the same crc, and any single flipped bit of
 * an accepted record is rejected.
 *
 * Built with -DKVT_FUZZ_REPLAY_MAIN it becomes the ctest driver that replays a corpus
 * directory (or files) without libFuzzer.
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

#ifdef KVT_FUZZ_REPLAY_MAIN
#include <dirent.h>
#include <stdio.h>
#include <sys/stat.h>

static int replay_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf;
	long n;

	if (!f)
		return -1;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc(n > 0 ? (size_t)n : 1);
	if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
		free(buf);
		fclose(f);
		return -1;
	}
	fclose(f);
	LLVMFuzzerTestOneInput(buf, (size_t)n);
	free(buf);
	return 0;
}

int main(int argc, char **argv)
{
	int files = 0;

	for (int i = 1; i < argc; i++) {
		struct stat st;
		DIR *d;
		struct dirent *e;

		if (stat(argv[i], &st) < 0) {
			perror(argv[i]);
			return 1;
		}
		if (!S_ISDIR(st.st_mode)) {
			if (replay_file(argv[i]) < 0)
				return 1;
			files++;
			continue;
		}
		d = opendir(argv[i]);
		if (!d)
			return 1;
		while ((e = readdir(d))) {
			char p[4096];

			if (e->d_name[0] == '.')
				continue;
			snprintf(p, sizeof(p), "%s/%s", argv[i], e->d_name);
			if (replay_file(p) < 0) {
				closedir(d);
				return 1;
			}
			files++;
		}
		closedir(d);
	}
	printf("replayed %d inputs, %u valid records\n", files, accepted);
	/* A corpus without valid records would never reach the round-trip invariants. */
	return files && accepted ? 0 : 1;
}
#endif
