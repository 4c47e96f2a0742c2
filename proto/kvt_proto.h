/* SPDX-License-Identifier: MIT */
/*
 * kvt_proto.h - control messages on the daemon's SOCK_SEQPACKET Unix socket (spec:
 * proto/PROTOCOL.md).  One message per packet; every message starts with kvt_msg_hdr.
 * Data-path requests travel on the shared-memory rings (kvt_shm.h); the socket carries the
 * handshake, layout registration, statistics and the admin commands of kvtierctl, and its
 * hang-up tells the daemon that a client died.
 */
#ifndef KVT_PROTO_H
#define KVT_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "kvt_abi.h"

#define KVT_MSG_MAGIC	  0x4d54564bu /* "KVTM" */
#define KVT_PROTO_VERSION 2u	      /* 2: LAYOUT answered with the host chain; CHAIN */
#define KVT_MSG_MAX	  65536u      /* largest request; replies may be split (KVT_MSG_F_MORE) */

enum kvt_msg_type {
	KVT_MSG_HELLO = 1,	 /* c→d kvt_msg_hello;  d→c kvt_msg_hello_reply (+ 4 fds) */
	KVT_MSG_LAYOUT = 2,	 /* c→d kvt_msg_layout; d→c kvt_msg_layout_reply (res = id) */
	KVT_MSG_STATS = 3,	 /* c→d header only;    d→c kvt_msg_stats */
	KVT_MSG_ADMIN = 4,	 /* c→d kvt_msg_admin;  d→c text, split with KVT_MSG_F_MORE */
	KVT_MSG_RESULT = 5,	 /* d→c kvt_msg_result */
	KVT_MSG_HELLO_REPLY = 6, /* d→c kvt_msg_hello_reply */
	KVT_MSG_GPU_ATTACH = 7,	 /* c→d header only;    d→c kvt_msg_gpu_attach_reply */
	KVT_MSG_GPU_ATTACH_REPLY = 8,
	KVT_MSG_GPU_OP = 9, /* c→d kvt_msg_gpu_op + n kvt_gpu_op_req; d→c kvt_msg_gpu_op_reply */
	KVT_MSG_GPU_OP_REPLY = 10, /* d→c kvt_msg_gpu_op_reply + n kvt_gpu_op_res */
	KVT_MSG_LAYOUT_REPLY = 11, /* d→c kvt_msg_layout_reply */
	KVT_MSG_CHAIN = 12,	   /* c→d kvt_msg_chain;  d→c kvt_msg_layout_reply (res = 0) */
	KVT_MSG_TYPE_MAX
};

#define KVT_MSG_F_MORE 0x1u /* reply continues in the next packet */

struct kvt_msg_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	uint32_t len; /* whole packet, header included */
	uint32_t flags;
};

/* kvt_msg_hello.want_admin: what the connection is for. */
#define KVT_HELLO_DATA	 0u /* a client: rings and arena */
#define KVT_HELLO_ADMIN	 1u /* kvtierctl: no rings, no arena */
#define KVT_HELLO_DEVICE 2u /* libkvtier's GPU-tier connection: GPU_* messages only */

struct kvt_msg_hello {
	struct kvt_msg_hdr h;
	uint32_t lib_version; /* KVT_VERSION_NUMBER */
	uint32_t pid;
	uint32_t want_admin; /* KVT_HELLO_* */
	uint32_t pad;
	char name[64];
};

struct kvt_msg_hello_reply {
	struct kvt_msg_hdr h;
	int32_t res; /* >= 0, or -errno (no fds then) */
	uint32_t client_id;
	uint64_t epoch;
	uint64_t arena_size;
	uint32_t ring_size; /* bytes of the ring memfd */
	uint32_t daemon_version;
	/* fds: [0] ring memfd, [1] arena memfd, [2] sq eventfd (client → daemon),
	 * [3] cq eventfd (daemon → client) */
};
#define KVT_HELLO_NFDS 4

struct kvt_msg_layout {
	struct kvt_msg_hdr h;
	struct kvt_layout layout;
};

struct kvt_msg_result {
	struct kvt_msg_hdr h;
	int32_t res;
	uint32_t pad;
};

/*
 * Reply to LAYOUT (res: the layout id, or -errno) and to CHAIN (res: 0 or -ENOENT): the codec
 * chain of the host tier for that layout, which the client encodes its puts with (README
 * "Compressed host tier").  chain_id 0 is raw (store blocks as they are); otherwise `chain`
 * is the chain's spec (NUL-terminated, kvt_chain_parse() grammar) and chain_id its
 * kvt_chain_id().  The daemon may name another chain for the same layout later (a reserve
 * with a chain it no longer takes answers -ESTALE: ask again with LAYOUT); blocks keep the
 * chain they were stored with, which a lease's completion names (kvt_shm.h), and CHAIN turns
 * such an id back into its spec.
 */
#define KVT_CHAIN_SPEC_MAX 64u
struct kvt_msg_layout_reply {
	struct kvt_msg_hdr h;
	int32_t res;
	uint32_t chain_id;
	char chain[KVT_CHAIN_SPEC_MAX];
};

/* CHAIN: the spec of a host chain by its id (one a lease named). */
struct kvt_msg_chain {
	struct kvt_msg_hdr h;
	uint32_t chain_id;
	uint32_t pad;
};

struct kvt_msg_stats {
	struct kvt_msg_hdr h;
	int32_t res;
	uint32_t pad;
	uint64_t puts, gets, hits, misses, lookups;
	uint64_t host_capacity_bytes, host_used_bytes, host_blocks, evictions;
	uint64_t host_hits, host_misses, promotions, prefetch_useful, prefetch_late;
};

/* ---- GPU tier (PROTOCOL.md "GPU tier") ---------------------------------------------------- */

/* Reply to GPU_ATTACH: res = 0 and the pool's descriptor (the bytes of struct
 * kvt_gpu_ipc_desc, gpu/kvt_gpu.h), or res = -ENODEV when the daemon runs no GPU tier. */
struct kvt_msg_gpu_attach_reply {
	struct kvt_msg_hdr h;
	int32_t res;
	uint32_t codec; /* KVT_GPU_CODEC_*: how blocks are kept in the pool */
	uint64_t capacity;
	uint8_t desc[128]; /* struct kvt_gpu_ipc_desc */
};

#define KVT_GPU_CODEC_RAW  0u /* blocks as the engine wrote them */
#define KVT_GPU_CODEC_INT8 1u /* KIVI int8 tiles (gpu/kvt_gpu.h "quantized kvtier blocks") */
#define KVT_GPU_CODEC_INT4 2u /* the same with 4-bit codes */

enum kvt_gpu_op {
	KVT_GPU_OP_RESERVE = 1, /* key, len → res = len, off (in the pool), handle */
	KVT_GPU_OP_COMMIT = 2,	/* handle → 0 */
	KVT_GPU_OP_ABORT = 3,	/* handle → 0 */
	KVT_GPU_OP_LEASE = 4,	/* key → res = len, off, handle; -EXDEV: stored, not on the GPU */
	KVT_GPU_OP_RELEASE = 5, /* handle → 0 */
	KVT_GPU_OP_MAX
};

#define KVT_GPU_OP_BATCH 1024u /* entries per GPU_OP message */

struct kvt_gpu_op_req {
	uint64_t key_lo, key_hi;
	uint64_t handle;
};

/* One operation on n blocks of one layout.  The layout travels whole (the daemon computes
 * the fingerprint itself), so the device connection needs no registration of its own. */
struct kvt_msg_gpu_op {
	struct kvt_msg_hdr h;
	uint32_t op;	      /* enum kvt_gpu_op */
	uint32_t n;	      /* entries that follow, 1..KVT_GPU_OP_BATCH; h.len must match */
	uint32_t len;	      /* RESERVE: bytes of each block (as readers see it) */
	uint32_t tile_tokens; /* RESERVE: tokens of one engine page (0: keep the block raw) */
	struct kvt_layout layout;
	/* struct kvt_gpu_op_req req[n] */
};

/* kvt_gpu_op_res.flags: the pool block is quantized (the attach reply's codec says to how
 * many bits); bits 16..31 carry the tile_tokens it was quantized with. */
#define KVT_GPU_F_INT8 0x1u

struct kvt_gpu_op_res {
	int32_t res;
	uint32_t flags; /* RESERVE, LEASE: KVT_GPU_F_* */
	uint64_t off;
	uint64_t handle;
};

struct kvt_msg_gpu_op_reply {
	struct kvt_msg_hdr h;
	int32_t res; /* < 0: the whole message was refused (no entries follow) */
	uint32_t n;
	/* struct kvt_gpu_op_res res[n] */
};

enum kvt_admin_cmd {
	KVT_ADMIN_STATUS = 1,
	KVT_ADMIN_TIERS = 2,
	KVT_ADMIN_BLOCKS = 3,
	KVT_ADMIN_CLIENTS = 4,
	KVT_ADMIN_METRICS = 5,
	KVT_ADMIN_EVICT = 6,
	KVT_ADMIN_FLUSH = 7, /* kvtierctl writeback: copy host blocks down to NVMe */
	KVT_ADMIN_CONFIG = 8,
	KVT_ADMIN_CALIBRATE = 9, /* kvtierctl calibrate: arg = layout fingerprint (0: busiest) */
	KVT_ADMIN_MAX
};

#define KVT_ADMIN_F_JSON 0x1u

struct kvt_msg_admin {
	struct kvt_msg_hdr h;
	uint32_t cmd;
	uint32_t aflags;
	uint64_t arg; /* BLOCKS: limit; EVICT: bytes (0 = all); CALIBRATE: layout (0 = busiest) */
};

/* The messages are an ABI between processes (proto/PROTOCOL.md): sizes and field offsets. */
KVT_ABI_ASSERT(sizeof(struct kvt_msg_hdr) == 16 && offsetof(struct kvt_msg_hdr, version) == 4 &&
		   offsetof(struct kvt_msg_hdr, type) == 6 &&
		   offsetof(struct kvt_msg_hdr, len) == 8 &&
		   offsetof(struct kvt_msg_hdr, flags) == 12,
	       "kvt_msg_hdr is an ABI");
KVT_ABI_ASSERT(sizeof(struct kvt_msg_hello) == 96 &&
		   offsetof(struct kvt_msg_hello, lib_version) == 16 &&
		   offsetof(struct kvt_msg_hello, want_admin) == 24 &&
		   offsetof(struct kvt_msg_hello, name) == 32,
	       "kvt_msg_hello is an ABI");
KVT_ABI_ASSERT(sizeof(struct kvt_msg_hello_reply) == 48 &&
		   offsetof(struct kvt_msg_hello_reply, res) == 16 &&
		   offsetof(struct kvt_msg_hello_reply, epoch) == 24 &&
		   offsetof(struct kvt_msg_hello_reply, arena_size) == 32 &&
		   offsetof(struct kvt_msg_hello_reply, ring_size) == 40 &&
		   offsetof(struct kvt_msg_hello_reply, daemon_version) == 44,
	       "kvt_msg_hello_reply is an ABI");
KVT_ABI_ASSERT(sizeof(struct kvt_msg_layout) == 116 &&
		   offsetof(struct kvt_msg_layout, layout) == 16,
	       "kvt_msg_layout is an ABI");
KVT_ABI_ASSERT(sizeof(struct kvt_msg_result) == 24 && offsetof(struct kvt_msg_result, res) == 16,
	       "kvt_msg_result is an ABI");
KVT_ABI_ASSERT(sizeof(struct kvt_msg_layout_reply) == 88 &&
		   offsetof(struct kvt_msg_layout_reply, res) == 16 &&
		   offsetof(struct kvt_msg_layout_reply, chain_id) == 20 &&
		   offsetof(struct kvt_msg_layout_reply, chain) == 24,
	       "kvt_msg_layout_reply is an ABI");
KVT_ABI_ASSERT(sizeof(struct kvt_msg_chain) == 24 && offsetof(struct kvt_msg_chain, chain_id) == 16,
	       "kvt_msg_chain is an ABI");
KVT_ABI_ASSERT(sizeof(struct kvt_msg_stats) == 136 && offsetof(struct kvt_msg_stats, res) == 16 &&
		   offsetof(struct kvt_msg_stats, puts) == 24 &&
		   offsetof(struct kvt_msg_stats, prefetch_late) == 128,
	       "kvt_msg_stats is an ABI");
KVT_ABI_ASSERT(sizeof(struct kvt_msg_gpu_attach_reply) == 160 &&
		   offsetof(struct kvt_msg_gpu_attach_reply, res) == 16 &&
		   offsetof(struct kvt_msg_gpu_attach_reply, codec) == 20 &&
		   offsetof(struct kvt_msg_gpu_attach_reply, capacity) == 24 &&
		   offsetof(struct kvt_msg_gpu_attach_reply, desc) == 32,
	       "kvt_msg_gpu_attach_reply is an ABI");
KVT_ABI_ASSERT(sizeof(struct kvt_gpu_op_req) == 24 &&
		   offsetof(struct kvt_gpu_op_req, key_hi) == 8 &&
		   offsetof(struct kvt_gpu_op_req, handle) == 16,
	       "kvt_gpu_op_req is an ABI");
KVT_ABI_ASSERT(sizeof(struct kvt_msg_gpu_op) == 132 && offsetof(struct kvt_msg_gpu_op, op) == 16 &&
		   offsetof(struct kvt_msg_gpu_op, n) == 20 &&
		   offsetof(struct kvt_msg_gpu_op, len) == 24 &&
		   offsetof(struct kvt_msg_gpu_op, tile_tokens) == 28 &&
		   offsetof(struct kvt_msg_gpu_op, layout) == 32,
	       "kvt_msg_gpu_op is an ABI");
KVT_ABI_ASSERT(sizeof(struct kvt_gpu_op_res) == 24 && offsetof(struct kvt_gpu_op_res, flags) == 4 &&
		   offsetof(struct kvt_gpu_op_res, off) == 8 &&
		   offsetof(struct kvt_gpu_op_res, handle) == 16,
	       "kvt_gpu_op_res is an ABI");
KVT_ABI_ASSERT(sizeof(struct kvt_msg_gpu_op_reply) == 24 &&
		   offsetof(struct kvt_msg_gpu_op_reply, res) == 16 &&
		   offsetof(struct kvt_msg_gpu_op_reply, n) == 20,
	       "kvt_msg_gpu_op_reply is an ABI");
KVT_ABI_ASSERT(sizeof(struct kvt_msg_admin) == 32 && offsetof(struct kvt_msg_admin, cmd) == 16 &&
		   offsetof(struct kvt_msg_admin, aflags) == 20 &&
		   offsetof(struct kvt_msg_admin, arg) == 24,
	       "kvt_msg_admin is an ABI");

static inline void kvt_msg_init(struct kvt_msg_hdr *h, uint16_t type, uint32_t len)
{
	h->magic = KVT_MSG_MAGIC;
	h->version = KVT_PROTO_VERSION;
	h->type = type;
	h->len = len;
	h->flags = 0;
}

/*
 * Checks a received packet of n bytes: magic, version, known type, h->len == n and n at
 * least the size the type needs.  Returns 0, -KVT_EVERSION or -KVT_EPROTOCOL.
 */
int kvt_msg_check(const void *buf, size_t n);

/* Size in bytes a message of this type must have (0 for an unknown type). */
size_t kvt_msg_size(uint16_t type);

/* Internal helpers shared by daemon, library and kvtierctl (not exported). */

/* The socket path: explicit_path, else $KVTIER_SOCKET, else /run/kvtier/kvtier.sock when it
 * exists (or XDG_RUNTIME_DIR is unset), else $XDG_RUNTIME_DIR/kvtier/kvtier.sock. */
int kvt_socket_path(const char *explicit_path, char *out, size_t n);
/* Connects a SOCK_SEQPACKET socket to path. Returns 0 or -errno. */
int kvt_sock_open(const char *path, int *out);
uint64_t kvt_hash64(const void *p, size_t n, uint64_t seed);

/* The decimal number s starts with (a digit first: no sign, no space): 0, *out and *end just
 * after it; -EINVAL when s does not start with a digit, -ERANGE when it is too large. */
int kvt_parse_num(const char *s, uint64_t *out, char **end);
/* A size as kvtierd.conf and kvtierctl write them: a number, spaces, and a suffix B, K, KB,
 * KiB, M... TiB (any case, all powers of 1024) or none.  0, -EINVAL or -ERANGE. */
int kvt_parse_size(const char *s, uint64_t *out);

#endif
