/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: control messages as the daemon receives them, layouts inside them, and the
 * key chain over arbitrary token bytes.  Invariants: the checks never read past the input;
 * an accepted LAYOUT has a consistent size and fingerprint; key chains are deterministic.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvt_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A private copy exactly as long as the input, so ASan sees any overread. */
	uint8_t *copy = malloc(size ? size : 1);
	struct kvt_msg_hdr h;

	if (!copy)
		return 0;
	memcpy(copy, data, size);
	if (kvt_msg_check(copy, size) == 0) {
		memcpy(&h, copy, sizeof(h));
		if (h.len != size || size < kvt_msg_size(h.type))
			abort();
		if (h.type == KVT_MSG_LAYOUT) {
			struct kvt_msg_layout m;
			memcpy(&m, copy, sizeof(m));
			if (kvt_layout_check(&m.layout) == 0) {
				size_t bb = kvt_layout_block_bytes(&m.layout);
				if (!bb || bb > (1u << 30) ||
				    bb != kvt_layout_layer_bytes(&m.layout) * m.layout.n_layers ||
				    kvt_layout_fingerprint(&m.layout) == 0)
					abort();
			} else if (kvt_layout_fingerprint(&m.layout) != 0) {
				abort();
			}
		}
	}
	/* The rest of the input as tokens: chains are pure functions of their input. */
	if (size >= 8) {
		size_t n = (size - 8) / 4;
		uint32_t bt = (uint32_t)(data[0] % 16) + 1;
		uint32_t *tok = malloc(n ? n * 4 : 4);
		struct kvt_key a[64], b[64];
		uint64_t fp;
		int ka, kb;

		if (tok) {
			memcpy(&fp, data, 8);
			memcpy(tok, data + 8, n * 4);
			ka = kvt_key_chain(fp, bt, NULL, tok, n, a, 64);
			kb = kvt_key_chain(fp, bt, NULL, tok, n, b, 64);
			if (ka != kb || (ka > 0 && memcmp(a, b, (size_t)ka * sizeof(a[0]))))
				abort();
			if (ka != (int)(n / bt < 64 ? n / bt : 64))
				abort();
			free(tok);
		}
	}
	free(copy);
	return 0;
}
