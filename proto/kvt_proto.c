/* SPDX-License-Identifier: MIT */
/* Message checks, layouts, fingerprints and the key chain: code both sides must agree on. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kvt_proto.h"

size_t kvt_msg_size(uint16_t type)
{
	switch (type) {
	case KVT_MSG_HELLO:
		return sizeof(struct kvt_msg_hello);
	case KVT_MSG_LAYOUT:
		return sizeof(struct kvt_msg_layout);
	case KVT_MSG_STATS:
		return sizeof(struct kvt_msg_hdr);
	case KVT_MSG_ADMIN:
		return sizeof(struct kvt_msg_admin);
	case KVT_MSG_RESULT:
		return sizeof(struct kvt_msg_result);
	case KVT_MSG_HELLO_REPLY:
		return sizeof(struct kvt_msg_hello_reply);
	case KVT_MSG_GPU_ATTACH:
		return sizeof(struct kvt_msg_hdr);
	case KVT_MSG_GPU_ATTACH_REPLY:
		return sizeof(struct kvt_msg_gpu_attach_reply);
	case KVT_MSG_GPU_OP:
		return sizeof(struct kvt_msg_gpu_op);
	case KVT_MSG_GPU_OP_REPLY:
		return sizeof(struct kvt_msg_gpu_op_reply);
	case KVT_MSG_LAYOUT_REPLY:
		return sizeof(struct kvt_msg_layout_reply);
	case KVT_MSG_CHAIN:
		return sizeof(struct kvt_msg_chain);
	default:
		return 0;
	}
}

int kvt_msg_check(const void *buf, size_t n)
{
	struct kvt_msg_hdr h;
	size_t need;

	if (n < sizeof(h))
		return -KVT_EPROTOCOL;
	memcpy(&h, buf, sizeof(h));
	if (h.magic != KVT_MSG_MAGIC)
		return -KVT_EPROTOCOL;
	if (h.version != KVT_PROTO_VERSION)
		return -KVT_EVERSION;
	need = kvt_msg_size(h.type);
	if (!need || h.len != n || n < need || n > KVT_MSG_MAX)
		return -KVT_EPROTOCOL;
	return 0;
}

uint64_t kvt_hash64(const void *p, size_t n, uint64_t seed)
{
	return XXH3_64bits_withSeed(p, n, seed);
}

static unsigned dtype_bytes(uint32_t dtype)
{
	switch (dtype) {
	case KVT_DTYPE_FP16:
	case KVT_DTYPE_BF16:
		return 2;
	case KVT_DTYPE_FP8_E4M3:
		return 1;
	default:
		return 0;
	}
}

KVT_API int kvt_layout_check(const struct kvt_layout *l)
{
	uint64_t bytes;

	if (!l || l->size < sizeof(*l))
		return -EINVAL;
	if (!l->n_layers || l->n_layers > 1024 || !l->n_kv_heads || l->n_kv_heads > 1024 ||
	    !l->head_dim || l->head_dim > 4096 || !l->block_tokens || l->block_tokens > 65536)
		return -EINVAL;
	if (!dtype_bytes(l->dtype) || l->kv_order > KVT_ORDER_V_THEN_K)
		return -EINVAL;
	if (!l->world || l->rank >= l->world)
		return -EINVAL;
	if (!memchr(l->model_id, 0, sizeof(l->model_id)))
		return -EINVAL;
	bytes = (uint64_t)l->n_layers * 2 * l->n_kv_heads * l->block_tokens * l->head_dim *
		dtype_bytes(l->dtype);
	/* Block lengths travel as u32 and live in one arena extent. */
	if (bytes > (1ull << 30))
		return -EINVAL;
	return 0;
}

KVT_API size_t kvt_layout_layer_bytes(const struct kvt_layout *l)
{
	if (kvt_layout_check(l) < 0)
		return 0;
	return (size_t)2 * l->n_kv_heads * l->block_tokens * l->head_dim * dtype_bytes(l->dtype);
}

KVT_API size_t kvt_layout_block_bytes(const struct kvt_layout *l)
{
	return kvt_layout_layer_bytes(l) * (l ? l->n_layers : 0);
}

static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

KVT_API uint64_t kvt_layout_fingerprint(const struct kvt_layout *l)
{
	/* Serialized field by field so padding and host byte order never enter the hash. */
	uint8_t buf[9 * 4 + 64] = {0};
	const uint32_t f[9] = {KVT_VERSION_MAJOR,   l ? l->n_layers : 0,     l ? l->n_kv_heads : 0,
			       l ? l->head_dim : 0, l ? l->block_tokens : 0, l ? l->dtype : 0,
			       l ? l->kv_order : 0, l ? l->rank : 0,	     l ? l->world : 0};
	size_t n;
	uint64_t fp;

	if (kvt_layout_check(l) < 0)
		return 0;
	for (int i = 0; i < 9; i++)
		put_le32(buf + 4 * i, f[i]);
	n = strnlen(l->model_id, sizeof(l->model_id));
	memcpy(buf + 36, l->model_id, n);
	fp = XXH3_64bits(buf, 36 + n);
	return fp ? fp : 1; /* 0 means "invalid layout" */
}

KVT_API int kvt_key_chain(uint64_t fingerprint, uint32_t block_tokens, const struct kvt_key *prev,
			  const uint32_t *tokens, size_t n_tokens, struct kvt_key *keys,
			  size_t max_keys)
{
	XXH3_state_t st;
	struct kvt_key k = {0, 0};
	uint8_t kb[16], tb[256 * 4];
	size_t nblk, i, t, j;

	if (!block_tokens || (!tokens && n_tokens) || (!keys && max_keys))
		return -EINVAL;
	if (prev)
		k = *prev;
	nblk = n_tokens / block_tokens;
	if (nblk > max_keys)
		nblk = max_keys;
	if (nblk > INT32_MAX)
		return -E2BIG;
	for (i = 0; i < nblk; i++) {
		XXH3_128bits_reset_withSeed(&st, fingerprint);
		for (j = 0; j < 8; j++) {
			kb[j] = (uint8_t)(k.lo >> (8 * j));
			kb[8 + j] = (uint8_t)(k.hi >> (8 * j));
		}
		XXH3_128bits_update(&st, kb, sizeof(kb));
		/* Tokens hashed as little-endian u32 so keys agree across hosts. */
		for (t = 0; t < block_tokens;) {
			size_t m = block_tokens - t < 256 ? block_tokens - t : 256;
			for (j = 0; j < m; j++)
				put_le32(tb + 4 * j, tokens[i * block_tokens + t + j]);
			XXH3_128bits_update(&st, tb, 4 * m);
			t += m;
		}
		XXH128_hash_t h = XXH3_128bits_digest(&st);
		k.lo = h.low64;
		k.hi = h.high64;
		keys[i] = k;
	}
	return (int)nblk;
}

#define KVT_STR2(x) #x
#define KVT_STR(x)  KVT_STR2(x)

KVT_API const char *kvt_version(void)
{
	return KVT_STR(KVT_VERSION_MAJOR) "." KVT_STR(KVT_VERSION_MINOR) "." KVT_STR(
	    KVT_VERSION_PATCH);
}

KVT_API unsigned kvt_version_number(void)
{
	return KVT_VERSION_NUMBER;
}

KVT_API const char *kvt_strerror(int err)
{
	if (err < 0)
		err = -err;
	switch (err) {
	case 0:
		return "success";
	case KVT_EVERSION:
		return "kvtierd speaks an incompatible protocol version";
	case KVT_ECORRUPT:
		return "stored block failed its integrity check";
	case KVT_ENOLAYOUT:
		return "layout is not registered on this client";
	case KVT_EDAEMON:
		return "kvtierd went away (restarted or stopped); reconnect";
	case KVT_EPROTOCOL:
		return "malformed message or ring entry";
	case KVT_ELIMIT:
		return "a configured limit was reached";
	default:
		if (err >= KVT_ERRNO_BASE)
			return "unknown kvtier error";
		/* strerror() is not thread-safe everywhere; strerrordesc_np is. */
		return strerrordesc_np(err) ? strerrordesc_np(err) : "unknown error";
	}
}

int kvt_parse_num(const char *s, uint64_t *out, char **end)
{
	unsigned long long v;

	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, end, 10);
	if (errno)
		return -ERANGE;
	*out = v;
	return 0;
}

int kvt_parse_size(const char *s, uint64_t *out)
{
	static const struct {
		const char *sfx;
		unsigned shift;
	} sfx[] = {{"", 0},	{"B", 0},   {"K", 10},	 {"KB", 10}, {"KiB", 10},
		   {"M", 20},	{"MB", 20}, {"MiB", 20}, {"G", 30},  {"GB", 30},
		   {"GiB", 30}, {"T", 40},  {"TB", 40},	 {"TiB", 40}};
	char *end;
	uint64_t v;
	int ret = kvt_parse_num(s, &v, &end);

	if (ret < 0)
		return ret;
	while (*end == ' ')
		end++;
	for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++) {
		if (strcasecmp(end, sfx[i].sfx) != 0)
			continue;
		if (sfx[i].shift && v > (UINT64_MAX >> sfx[i].shift))
			return -ERANGE;
		*out = v << sfx[i].shift;
		return 0;
	}
	return -EINVAL;
}
