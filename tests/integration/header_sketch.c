/* SPDX-License-Identifier: MIT */
/*
 * kvtier.h on its own: it must compile as the first and only include (it brings what its
 * own declarations and constants need: errno.h, stdint.h, ssize_t), and its usage sketch
 * must compile with the real signatures.  Built into test_client; kvt_test_sketch() runs it.
 */
#include "kvtier.h"

int kvt_test_sketch(const char *socket, const uint32_t *tokens, size_t n_tokens);

int kvt_test_sketch(const char *socket, const uint32_t *tokens, size_t n_tokens)
{
	struct kvt_layout layout = {.size = sizeof(layout),
				    .n_layers = 2,
				    .n_kv_heads = 2,
				    .head_dim = 64,
				    .block_tokens = 16,
				    .dtype = KVT_DTYPE_FP16,
				    .world = 1,
				    .model_id = "sketch"};
	struct kvt_connect_opts o = {.size = sizeof(o), .socket_path = socket};
	struct kvt_key keys[8];
	size_t max_keys = 8;
	static unsigned char buf[8][8192];
	void *bufs[8];
	int status[8], ret = -EINVAL;
	size_t len = sizeof(buf[0]);
	int i = 0;

	/* The sketch at the top of kvtier.h, as written there. */
	struct kvt_client *c;
	if (kvt_connect(&o, &c) < 0)
		return -ENOENT;
	int lay = kvt_register_layout(c, &layout);
	int nkeys = kvt_key_chain(kvt_layout_fingerprint(&layout), layout.block_tokens, NULL,
				  tokens, n_tokens, keys, max_keys);
	int hit = kvt_lookup(c, lay, keys, nkeys);
	kvt_get(c, lay, &keys[i], buf, len);
	kvt_put(c, lay, &keys[i], buf, len);
	for (int k = 0; k < 8; k++)
		bufs[k] = buf[k];
	kvt_get_batch(c, lay, keys, bufs, len, nkeys, status);
	kvt_close(c);

	if (lay >= 0 && nkeys == (int)(n_tokens / 16) && hit == 0)
		ret = nkeys;
	return ret;
}
