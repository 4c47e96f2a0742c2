/* SPDX-License-Identifier: MIT */
/*
 * kvtier.h - the client library of kvtier, the compressed tiered KV-cache store.
 *
 * An inference engine links libkvtier, connects to the host's kvtierd and stores blocks of
 * its KV cache under 128-bit keys.  Data never crosses the socket: it is copied straight
 * into (put) and out of (get) a shared-memory arena that the daemon maps into the process.
 *
 *   struct kvt_client *c;
 *   kvt_connect(NULL, &c);                          // $KVTIER_SOCKET or the default socket
 *   int lay = kvt_register_layout(c, &layout);      // the engine's KV geometry
 *   int nkeys = kvt_key_chain(kvt_layout_fingerprint(&layout), layout.block_tokens,
 *                             NULL, tokens, n_tokens, keys, max_keys); // one per full block
 *   int hit = kvt_lookup(c, lay, keys, nkeys);      // how many leading blocks are cached
 *   kvt_get(c, lay, &keys[i], buf, len);            // copy a cached block out
 *   kvt_put(c, lay, &keys[i], buf, len);            // store a block
 *   kvt_get_batch(c, lay, keys, bufs, len, nkeys, status); // many blocks, one round trip
 *   kvt_close(c);
 *
 * Error model: every function returning int returns >= 0 on success and -errno on failure;
 * codes specific to kvtier are in [KVT_ERRNO_BASE, KVT_ERRNO_BASE + 100) and kvt_strerror()
 * names every code.  No function touches the global errno on purpose.
 *
 * Thread safety: a struct kvt_client may be used from several threads at once; requests on
 * one client are serialized by an internal lock held only while a request is in flight
 * (the bulk copies of kvt_put/kvt_get run outside it).  For parallel request throughput,
 * open one client per thread.  Functions that take no client are pure and thread-safe.
 *
 * Ownership: the library never keeps pointers passed to it after the call returns, except
 * where a function says so.  Memory returned through a reservation or a lease belongs to
 * the arena and is valid until kvt_put_commit/kvt_put_abort or kvt_lease_release.
 *
 * Daemon restarts: a request that finds the daemon gone returns -KVT_EDAEMON (lookups, gets
 * and reservations are first retried once against a restarted daemon); the next call
 * reconnects by itself and registers the client's layouts again under the same ids.
 * Reservations and leases of the old daemon are void (their commit/release return
 * -KVT_EDAEMON), but their memory stays mapped until kvt_close(), so a reader is never
 * left with a dangling pointer.  Blocks on NVMe survive the restart; host-only ones do not.
 *
 * Environment: KVTIER_SOCKET (the socket, see kvt_connect), KVTIER_SPIN_US (how long a
 * request spins for its completion before it sleeps; default 50).
 */
#ifndef KVTIER_H
#define KVTIER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h> /* ssize_t */

/* The types that cross process boundaries (layout, key, dtype, error codes, version) and
 * the functions both sides compute from them (kvt_strerror, kvt_layout_*, kvt_key_chain). */
#include "kvt_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------
 * Connection
 */
struct kvt_client;

struct kvt_connect_opts {
	uint32_t size;		 /* sizeof(struct kvt_connect_opts): lets the struct grow */
	const char *socket_path; /* NULL: $KVTIER_SOCKET, /run/kvtier/kvtier.sock, then
				  * $XDG_RUNTIME_DIR/kvtier/kvtier.sock (first that exists) */
	const char *name;	 /* shown by `kvtierctl clients`; NULL: the program name */
	int timeout_ms;		 /* per request; 0: 10000; -1: wait forever */
	/* Since 0.1 (KVTIER_0.4); a caller built with the older, shorter struct gets 0s. */
	uint32_t flags;	     /* KVT_CONNECT_*; 0: none */
	uint32_t daemon_uid; /* with KVT_CONNECT_CHECK_UID: the uid kvtierd is expected to run as */
};

/*
 * Check who serves the socket (SO_PEERCRED: the uid of the process that listens on it), on
 * every connection and reconnection: it must be root, this process's effective uid, or
 * daemon_uid (the packaged service runs as user "kvtier"; under systemd socket activation
 * the listener is root).  Anyone else is refused with -EPERM before any data is sent: a
 * user who got to create the socket path first would otherwise receive every block.
 * Off by default (the socket's directory permissions are the first line of defence).
 */
#define KVT_CONNECT_CHECK_UID 0x1u

/*
 * Connects to kvtierd, maps the shared arena and the request rings.  o may be NULL.
 * On success *out is a new client that the caller frees with kvt_close().
 * Returns 0, -ENOENT/-ECONNREFUSED (no daemon), -KVT_EVERSION, -EPERM (refused by the
 * daemon, or by KVT_CONNECT_CHECK_UID), -EINVAL (unknown flags), -ENOMEM, -KVT_ELIMIT (a
 * connection limit: daemon.max_clients, max_clients_per_uid, or the places kept for admins;
 * the daemon's log names it), ...
 */
KVT_API int kvt_connect(const struct kvt_connect_opts *o, struct kvt_client **out);

/* Releases every lease, pin and unfinished reservation of c and frees it. NULL is a no-op. */
KVT_API void kvt_close(struct kvt_client *c);

/* ---------------------------------------------------------------------------------------
 * Layouts (struct kvt_layout, its checks and fingerprint, and kvt_key_chain() are in kvt_abi.h)
 */
/*
 * Registers l with the daemon for this client.  Returns a layout id (>= 0) to pass to the
 * other calls, -EINVAL for a bad layout, -KVT_ELIMIT when the client has too many layouts.
 * Registering the same layout twice returns the same id.
 */
KVT_API int kvt_register_layout(struct kvt_client *c, const struct kvt_layout *l);

/* ---------------------------------------------------------------------------------------
 * Storing blocks
 *
 * A block becomes visible to lookups and gets only once committed (two-phase put), so a
 * reader never sees a partial block, and a client that dies before commit leaves nothing.
 */
struct kvt_reservation {
	void *data;	 /* arena memory to fill: len bytes, 64-byte aligned */
	size_t len;	 /* the block's length */
	uint64_t handle; /* opaque */
	int layout;
	struct kvt_key key;
};

/*
 * Block lengths, for every call that stores: 0 < len <= kvt_layout_block_bytes() of the
 * layout, else -EINVAL.  A block shorter than the layout's (the last, partial block of a
 * prompt) is stored as it is and a get returns its own length; on NVMe it is kept only when
 * its length is a multiple of 8 bytes (else it is dropped when evicted, and counted).
 *
 * Compressed host tier (host.codec = bq...; README "Compressed host tier"): kvt_put,
 * kvt_put_at and kvt_put_batch encode a whole block (len == kvt_layout_block_bytes()) with
 * the chain the daemon names for the layout, in the calling thread, and store that record;
 * kvt_get and kvt_get_batch decode it into the caller's buffer and return the raw length,
 * err within the chain's bound (the values are the chain's own decode of the block,
 * bit for bit, whoever decodes it).  A partial block, a layout the chain cannot code, and
 * every kvt_put_reserve() are stored raw: the host tier may hold both, each block keeps
 * its own form, and reads never confuse them.
 *
 * "Already stored": a key that is stored (or being stored) is success with nothing written
 * for the calls that store data (kvt_put returns 1, kvt_put_batch reports 1); the data is
 * not compared.  kvt_put_reserve() returns -EEXIST instead, because it has no reservation to
 * hand out and its caller must not fill one.
 */

/*
 * Reserves len bytes of arena for key.  The caller fills r->data (from CPU memory, or by a
 * DMA from the GPU since the arena may be registered with cudaHostRegister) and then calls
 * kvt_put_commit() or kvt_put_abort().  Returns 0; -EEXIST when the key is already stored
 * or being stored (nothing to do); -ENOSPC when the host tier cannot make room (everything
 * is leased or pinned); -E2BIG when len exceeds the tier; -EINVAL for a len of 0 or longer
 * than the layout's block; -EAGAIN while the daemon is still recovering its NVMe records
 * after a start (kvtierctl status: recovering); -KVT_ENOLAYOUT.
 *
 * The reservation is always of the raw block, which is stored raw whatever host.codec says
 * (zero copy leaves the library nothing to encode from): to store it compressed use
 * kvt_put/kvt_put_batch, or kvt_dev_put from the GPU (encoded there).
 */
KVT_API int kvt_put_reserve(struct kvt_client *c, int layout, const struct kvt_key *key, size_t len,
			    struct kvt_reservation *r);
/* Makes the reserved block visible. Returns 0 or -errno; r is spent either way.  A
 * reservation of a daemon that has since restarted returns -KVT_EDAEMON (and so does
 * kvt_put_abort): it never acts on the new daemon. */
KVT_API int kvt_put_commit(struct kvt_client *c, struct kvt_reservation *r);
/*
 * The same, telling where the block stands in its sequence: first_token is the position of
 * its first token (block i of a prompt: i * block_tokens).  Codecs that undo RoPE before
 * coding keys (uq, above all with a dictionary) code such blocks smaller; the data is the
 * same either way.  kvt_put_commit() is kvt_put_commit_at(c, r, KVT_POS_UNKNOWN).
 */
#define KVT_POS_UNKNOWN UINT32_MAX
KVT_API int kvt_put_commit_at(struct kvt_client *c, struct kvt_reservation *r,
			      uint32_t first_token);
/* Drops the reservation; nothing becomes visible. Returns 0 or -errno. */
KVT_API int kvt_put_abort(struct kvt_client *c, struct kvt_reservation *r);

/*
 * Stores len bytes from data under key: reserve, copy, commit.  Returns 0 when stored, 1 when
 * the key was already stored (nothing written), -errno otherwise (-EINVAL: see "Block
 * lengths" above; -KVT_ELIMIT: the daemon's index.max_blocks are all held, leased, pinned or
 * being written, so none could be evicted).
 */
KVT_API int kvt_put(struct kvt_client *c, int layout, const struct kvt_key *key, const void *data,
		    size_t len);
/* kvt_put() of a block whose first token stands at first_token (see kvt_put_commit_at). */
KVT_API int kvt_put_at(struct kvt_client *c, int layout, const struct kvt_key *key,
		       uint32_t first_token, const void *data, size_t len);

/* ---------------------------------------------------------------------------------------
 * Finding and reading blocks
 */

/*
 * The first question an engine asks: how many of keys[0..n) are stored, counted from the
 * front and stopping at the first miss (the longest cached prefix).  Returns that count.
 * Does not change LRU order.  Any n: the library asks in rounds of 4096 keys.  Asked once
 * more of a restarted daemon, like kvt_get and kvt_put_reserve.
 */
KVT_API int kvt_lookup(struct kvt_client *c, int layout, const struct kvt_key *keys, size_t n);

/*
 * Copies the block of key into buf (cap bytes), decoded when it is stored encoded (see
 * "Compressed host tier"; -EBADMSG for a record that fails to decode).  A block that lives only on
 * NVMe is first brought back to the host tier (the call then takes the time of that read).  Returns
 * the block's length; -ENOENT on a miss (also when a stored record failed its integrity check: it
 * is counted and never served); -ENOBUFS (nothing copied) when cap is smaller than the block;
 * -ENOSPC when the block is on NVMe and the host tier has no room it can free for it (everything
 * there leased or pinned): retry after releasing leases; -KVT_ELIMIT when this tenant (uid) holds
 * host.tenant_hold_max of the host tier pinned or leased already.
 */
KVT_API ssize_t kvt_get(struct kvt_client *c, int layout, const struct kvt_key *key, void *buf,
			size_t cap);

/* A read lease: the block stays in place and unchanged until released. */
struct kvt_lease {
	const void *data; /* the block as stored in the arena, len bytes; read-only */
	size_t len;
	uint64_t handle; /* opaque */
	/* Since 0.2 (the compressed host tier): chain_id 0, data is the raw block (raw_len ==
	 * len); else data is a record of that codec chain (codecs/CODECS.md "Record") and
	 * raw_len the block's length once decoded: kvt_lease_decode() turns it into the
	 * block. */
	size_t raw_len;
	uint32_t chain_id;
	uint32_t reserved;
};

/*
 * Borrows the block of key in place (no copy): it cannot be evicted, moved or overwritten
 * while the lease is held (a delete hides it from lookups at once and frees it on the last
 * release).  Release with kvt_lease_release().  Returns 0, or the errors of kvt_get().
 */
KVT_API int kvt_get_lease(struct kvt_client *c, int layout, const struct kvt_key *key,
			  struct kvt_lease *l);
/* Returns the lease. Returns 0, or -EINVAL for a lease that is not held, -KVT_EDAEMON for a
 * lease of a daemon that has since restarted (it never acts on the new daemon). */
KVT_API int kvt_lease_release(struct kvt_client *c, struct kvt_lease *l);
/*
 * Decodes a held lease's block into buf (cap bytes): a copy of a raw block, or the decode of
 * an encoded one (with the chain the lease names; thread-safe, CPU).  Returns the raw length,
 * -ENOBUFS (nothing written) when cap < l->raw_len, -EBADMSG for a record that is malformed
 * or of a chain this library does not know (never wrong data), -EINVAL for a lease not held.
 */
KVT_API ssize_t kvt_lease_decode(struct kvt_client *c, const struct kvt_lease *l, void *buf,
				 size_t cap);
/*
 * Does the host tier code this layout's whole blocks (host.codec names a chain for it)?
 * Returns 1 when kvt_put, kvt_put_at and kvt_put_batch of a whole block store a record (as
 * the library last learnt from the daemon), 0 when they store the raw block, -EINVAL for a
 * layout id not registered.  An engine that fills blocks in place with kvt_put_reserve
 * (always raw) asks this to hand whole blocks to kvt_put_at instead, so that its host tier
 * holds them compressed.
 */
KVT_API int kvt_put_encodes(struct kvt_client *c, int layout);

/* Deletes key from every tier.  Returns 0 or -ENOENT (either: no version of key is served
 * again, across daemon restarts too), or -EAGAIN (nothing deleted; retry later) while the
 * daemon still recovers its NVMe records (`kvtierctl ping` says "recovering").  A leased
 * block disappears from lookups at once; its memory is freed when the last lease is
 * returned.  With a remote tier (remote.nodes) the remote copy is deleted too and this
 * daemon never fetches the key remotely until that is done; other hosts of the fleet are
 * not told, and a restart within remote.ttl of a failed remote delete forgets it (README,
 * "Remote tier"). */
KVT_API int kvt_delete(struct kvt_client *c, int layout, const struct kvt_key *key);

/*
 * Pins key: it is never evicted until unpinned (or this client closes).  Pins nest.
 * Returns 0, -ENOENT, or -KVT_ELIMIT when this tenant (uid) holds host.tenant_hold_max of the
 * host tier pinned or leased already.
 */
KVT_API int kvt_pin(struct kvt_client *c, int layout, const struct kvt_key *key);
/* Undoes one kvt_pin() of this client. Returns 0, -ENOENT, -EINVAL when not pinned by c. */
KVT_API int kvt_unpin(struct kvt_client *c, int layout, const struct kvt_key *key);

/*
 * Asks the daemon to bring keys[0..n) up to the host tier ahead of a get (the blocks a
 * predictor expects the next decode step to read).  Fire and forget: returns how many
 * requests were queued, never waits for I/O.  priority 0..3 (3 first); deadline_us > 0
 * drops a request not started within that many microseconds.  Prefetches only use NVMe
 * queue depth that demand gets leave free, and a miss is never an error: a get of a block
 * not prefetched in time simply reads it then.  Keys not stored are ignored.
 */
KVT_API int kvt_prefetch(struct kvt_client *c, int layout, const struct kvt_key *keys, size_t n,
			 unsigned priority, uint32_t deadline_us);

/* ---------------------------------------------------------------------------------------
 * Batches: many blocks for the cost of one round trip to the daemon.
 *
 * Engines move many small pages per request.  These calls push one ring entry per block
 * and wake the daemon once; a put copies each block while the daemon works through the
 * batch and commits it, a get copies each block as its lease comes back.  They cost one
 * round trip per batch, not per block, and any n (the library feeds the ring as it drains).
 *
 * Each block gets its own result in status[i] (status may be NULL when only the count
 * matters); the return value is the number of blocks with status[i] >= 0, or -errno when
 * the call as a whole was refused (-EINVAL, -KVT_ENOLAYOUT, -ENOMEM, -KVT_EDAEMON: no
 * daemon to reconnect to).  Blocks are independent: one failing does not stop the others,
 * and the same key may appear twice.  A daemon that goes away in the middle fails the
 * blocks not finished with -KVT_EDAEMON (a batch is not retried: part of it was done); the
 * next call reconnects.  The client's lock is held for the whole batch, copies included.
 */

/*
 * Stores n blocks of len bytes each (the rules of kvt_put: 0 < len <= the layout's block
 * bytes): block i from data[i] under keys[i].  first_token: NULL, or each block's first
 * token position (see kvt_put_commit_at; KVT_POS_UNKNOWN for one not known).
 * status[i]: 0 stored, 1 already stored (nothing written, as kvt_put), or -errno (-ENOSPC,
 * -KVT_ELIMIT, ... as kvt_put_reserve).  Returns how many are stored or were already.
 */
KVT_API int kvt_put_batch(struct kvt_client *c, int layout, const struct kvt_key *keys,
			  const void *const *data, const uint32_t *first_token, size_t len,
			  size_t n, int *status);

/*
 * Copies the blocks of keys[0..n) into bufs[i] (cap bytes each), wherever they are stored
 * (a block on NVMe is read back first, as kvt_get).  status[i]: the block's length, or
 * -ENOENT (a miss), -ENOBUFS (longer than cap; nothing copied), -ENOSPC (as kvt_get).
 * Returns how many blocks were copied (the hits).  Order and gaps do not matter: this is
 * not a prefix lookup.
 */
KVT_API int kvt_get_batch(struct kvt_client *c, int layout, const struct kvt_key *keys,
			  void *const *bufs, size_t cap, size_t n, int *status);

/*
 * Leases the blocks of keys[0..n), as kvt_get_lease does each (no copy: leases[i].data points
 * into the arena), for one round trip: status[i] is 0 with leases[i] held, or the error of
 * kvt_get_lease (-ENOENT, -ENOSPC, ...) with leases[i].data NULL.  Returns how many are
 * leased; each of them must be given back with kvt_lease_release (also when others failed).
 * Since 0.2 (symbol version KVTIER_0.7).
 */
KVT_API int kvt_get_lease_batch(struct kvt_client *c, int layout, const struct kvt_key *keys,
				struct kvt_lease *leases, size_t n, int *status);

/*
 * Which of keys[0..n) are stored: present[i] = 1 or 0, each key on its own (kvt_lookup
 * stops at the first miss).  Returns how many are present, or -errno (then present[] is
 * partly written).  Does not change LRU order.
 */
KVT_API int kvt_lookup_batch(struct kvt_client *c, int layout, const struct kvt_key *keys, size_t n,
			     uint8_t *present);

/* ---------------------------------------------------------------------------------------
 * Statistics
 */
struct kvt_stats {
	uint32_t size; /* sizeof(struct kvt_stats), set by the caller */
	uint32_t pad;
	/* this client */
	uint64_t puts, gets, hits, misses, lookups;
	/* the host tier, this tenant's view of the daemon */
	uint64_t host_capacity_bytes;
	uint64_t host_used_bytes;
	uint64_t host_blocks;
	uint64_t evictions;
	/* the daemon as a whole, all tenants */
	uint64_t host_hits;	  /* gets served from the host tier */
	uint64_t host_misses;	  /* gets that had to read NVMe, or missed */
	uint64_t promotions;	  /* blocks read back from NVMe */
	uint64_t prefetch_useful; /* prefetched blocks a get then read */
	uint64_t prefetch_late;	  /* gets that waited on their block's prefetch */
};

/* Fills st (st->size must be set). Returns 0 or -errno. */
KVT_API int kvt_stats(struct kvt_client *c, struct kvt_stats *st);

/* =======================================================================================
 * Device API: KV pages on the GPU <-> kvtier, without staging through CPU buffers.
 *
 * A struct kvt_dev sits on top of a client.  It copies engine pages (vLLM, FlashInfer or
 * one contiguous buffer per block, described by struct kvt_dev_pages) into and out of
 *   - the daemon's GPU tier: a device pool the daemon exports once over CUDA IPC; the
 *     library maps it once (kvt_dev_open) and copies device to device, and
 *   - the host tier: the shared arena, which the library registers with cudaHostRegister
 *     the first time it sees it (again after a daemon restart gave it a new arena), so the
 *     copy is a DMA.
 * Many small pages are gathered into few large transfers by gpu/'s copy engine, on the
 * stream the caller passes.  Completion never uses CUDA event IPC: the library waits on
 * its own stream (a flag written by the GPU after the copies) before it commits a put or
 * releases a get's lease, so a call returns once the data is in place.
 *
 * Where blocks go: a put goes to the GPU tier when the daemon runs one (gpu.capacity > 0
 * and a GPU), else, or when the pool is full of leased blocks, to the host tier.  The
 * daemon moves cold pool blocks down to the host (gpu.high_watermark) and copies a block a
 * device get found only on the host up to the pool (gpu.promote_on_get).  CPU calls
 * (kvt_get, kvt_lookup...) see every block, wherever it is.
 *
 * Daemon restarts: the next call reconnects, maps the new pool (its descriptor carries a
 * higher epoch) and unmaps the old one; blocks of the old daemon's pool are gone.
 *
 * Block bytes: by default (page_heads 0) a block stored by kvt_dev_put() holds, per layer,
 * the K pages then the V pages of its engine blocks byte for byte as the engine keeps them,
 * i.e. offset(layer l, kv k, page j) = ((l * n_kv + k) * pages_per_block + j) * page_bytes.
 * That is the layout's own order ([head][token][dim] per layer and K/V, proto/kvt_abi.h) only
 * for head-major pages (kvtier.hf passes one page per head).  Token-major pages
 * ([block_size][heads][dim]: vLLM, SGLang, FlashInfer) set page_heads = heads: the library
 * then stores each block in the layout's order (a transposing gather on the GPU before the
 * copy down, the scatter after the copy up), so that CPU readers (kvt_get), the bq host codec
 * and other engines see the bytes the layout declares.  Pages are not transposed in place:
 * the engine's own tensors keep their order.
 *
 * Threads: one struct kvt_dev serializes its calls (an internal lock); open one per thread
 * for parallel copies.  Without CUDA support in the library, or without a GPU, every
 * function returns -ENODEV (kvt_dev_available() returns 0).
 */
struct kvt_dev;

/* Where the engine keeps its pages, per layer one tensor addressed by engine block id:
 *   vLLM        [2, num_blocks, block_size, heads, dim]: kv_stride = num_blocks * page_bytes,
 *                                                        block_stride = page_bytes, n_kv = 2
 *   FlashInfer  [num_blocks, 2, block_size, heads, dim]: kv_stride = page_bytes,
 *                                                        block_stride = 2 * page_bytes
 *   one buffer  n_layers = 1, n_kv = 1, page_bytes = block_stride = bytes of one block */
struct kvt_dev_pages {
	uint32_t size; /* sizeof(struct kvt_dev_pages) */
	uint32_t n_layers;
	const uint64_t *layer_base; /* n_layers device addresses (e.g. tensor.data_ptr()) */
	uint64_t page_bytes;	    /* block_size * heads * dim * element size */
	uint64_t block_stride;	    /* bytes from engine block b to b + 1 within a layer's K */
	uint64_t kv_stride;	    /* bytes from a page's K to its V */
	uint32_t n_kv;		    /* 2 (K and V) or 1 */
	uint32_t pages_per_block;   /* engine blocks per kvtier block, >= 1 */
	/* Added last: a caller built before it passes the smaller size, read as 0.  0 or 1: pages
	 * are stored byte for byte (above); H > 1, a page is [block_size][H][head_dim]
	 * (token-major) and blocks are stored in the layout's [head][token][dim] order.  Then H
	 * must be the layout's n_kv_heads, page_bytes = block_size * H * head_dim * element size,
	 * block_size * pages_per_block = the layout's block_tokens, n_kv = 2 with K at layer_base,
	 * the layout's kv_order K_THEN_V and n_layers its n_layers: -EINVAL otherwise.  A GPU pool
	 * that quantizes (gpu.codec int8/int4) keeps such blocks raw. */
	uint32_t page_heads;
};

struct kvt_dev_opts {
	uint32_t size;		 /* sizeof(struct kvt_dev_opts) */
	int32_t device;		 /* CUDA ordinal of the engine's GPU; -1: the current device */
	const char *socket_path; /* the daemon's socket, as given to kvt_connect (NULL: same
				  * default as kvt_connect) */
	uint32_t flags;		 /* KVT_DEV_* */
};

/* kvt_dev_open flags and kvt_dev_put/get flags: leave the GPU tier out, use the host tier. */
#define KVT_DEV_HOST_ONLY 0x1u

/* Number of GPUs the library can use: 0 without a GPU or without CUDA support. */
KVT_API int kvt_dev_available(void);

/*
 * Opens the device API on client c (which must outlive it: close the kvt_dev first).  o may
 * be NULL.  Maps the daemon's GPU pool when it runs a GPU tier on a GPU this process sees;
 * works with the host tier alone otherwise.  Returns 0, -ENODEV (no GPU or no CUDA),
 * -EINVAL, -ENOMEM, -EIO.
 */
KVT_API int kvt_dev_open(struct kvt_client *c, const struct kvt_dev_opts *o, struct kvt_dev **out);
/* Unmaps the pool and the arena registrations.  NULL is a no-op. */
KVT_API void kvt_dev_close(struct kvt_dev *d);

/* Registers a layout for device calls (also on the client).  Returns a device layout id
 * (>= 0) for kvt_dev_put/kvt_dev_get, or the errors of kvt_register_layout(). */
KVT_API int kvt_dev_layout(struct kvt_dev *d, const struct kvt_layout *l);

/*
 * Stores n blocks: block i is made of the engine blocks ids[i * pages_per_block + j] of
 * every layer, stored under keys[i].  stream: a cudaStream_t of the caller (NULL: the
 * library's own stream); the copies are queued on it after the caller's work, so pages the
 * engine just wrote are copied as written.  Returns when the blocks are stored: the number
 * of blocks stored or already present (n when all are), or -errno when none could be
 * (-ENOSPC, -E2BIG, -EINVAL for pages whose block size exceeds the layout's, -KVT_EDAEMON).
 */
KVT_API int kvt_dev_put(struct kvt_dev *d, int layout, const struct kvt_dev_pages *p,
			const struct kvt_key *keys, const uint32_t *ids, size_t n, unsigned flags,
			void *stream);

/*
 * Loads blocks into the engine pages ids (as in kvt_dev_put), wherever they are stored.
 * Returns the number of leading blocks loaded (stops at the first miss; pages of later
 * blocks may have been written too), or -errno.  Returns once the pages hold the data.
 */
KVT_API int kvt_dev_get(struct kvt_dev *d, int layout, const struct kvt_dev_pages *p,
			const struct kvt_key *keys, const uint32_t *ids, size_t n, unsigned flags,
			void *stream);

struct kvt_dev_info {
	uint32_t size;	  /* sizeof(struct kvt_dev_info), set by the caller */
	int32_t gpu_tier; /* 1 when the daemon's pool is mapped */
	uint64_t epoch;	  /* epoch of the mapped pool (0: none) */
	uint64_t pool_bytes;
	char uuid[41];	     /* "GPU-..." of the pool's device ("" when none) */
	uint32_t reattaches; /* pools mapped after a daemon restart */
	uint64_t gpu_puts, host_puts, gpu_gets, host_gets; /* blocks, by where they went */
	/* Time the calls spent waiting for the GPU (copies, coding), ns: against a call's own
	 * time, it tells a call bound by the bus or the GPU from one bound by this process or the
	 * daemon.  Blocks of the compressed host tier encoded and decoded on the GPU, and
	 * decoded on the CPU (a layout the GPU codec does not take). */
	uint64_t wait_ns;
	uint64_t gpu_encodes, gpu_decodes, cpu_decodes;
	/* Of the host tier's part of the calls, ns: asking the daemon (reservations, leases,
	 * commits, releases; a lease's CPU decode where the GPU cannot decode it) and queueing
	 * work on the GPU (copies, coding, with their batch arrays).  The rest of a call beside
	 * wait_ns is the GPU tier's part and bookkeeping. */
	uint64_t daemon_ns, queue_ns;
};

/* Fills st (st->size must be set).  Returns 0 or -EINVAL. */
KVT_API int kvt_dev_info(struct kvt_dev *d, struct kvt_dev_info *st);

#ifdef __cplusplus
}
#endif

/* The sparse-attention prefetch predictor (kvt_pred_*) is part of this API. */
#include "kvtier_predict.h"

#endif /* KVTIER_H */
