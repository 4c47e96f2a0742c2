/* SPDX-License-Identifier: MIT */
/*
 * tier_remote.h - the remote tier: blocks in a Redis Cluster (or one plain Redis), shared by
 * every host of a fleet (issue 14).
 *
 * Why not tiers/tier.h's ops table: that interface is location-based (the daemon alloc()s a
 * place in the tier, writes bytes there and keeps the location in its index).  A remote
 * key-value store has no locations to hand out and nothing to free (TTL and the server's
 * maxmemory-policy evict), and its whole point is that another host, whose index never saw
 * the block, finds it by key.  So this tier is addressed by (key, fingerprint) and has calls
 * of its own: put, get, lookup.  When tiers become one ordered list (issue 13) the list's
 * ops will need a keyed variant; this API is what it will call.
 *
 * Storage: one Redis key per block, "kvt:" + 32 hex digits of the tenant-salted 128-bit key
 * (hi then lo) + ":" + 16 hex digits of the layout fingerprint; the value is a record in the
 * NVMe record format (proto/RECORD.md: 64-byte header with codec chain id, lengths, tenant
 * and CRC-32C, then the payload as the chain encoded it).  A value that is truncated,
 * corrupt, of another version or another key/fingerprint is a miss (counted), never served.
 * Blocks are immutable: SET NX with a TTL; a put that finds the key present succeeds.
 * Encoding with a codec chain is the caller's: the tier stores chain_id and payload as given.
 *
 * Threading: a struct kvt_remote is one I/O thread's (one connection per node); open one per
 * thread.  Every call takes an absolute CLOCK_MONOTONIC deadline (kvt_remote_now_ns()) and
 * returns by it; failures of the cluster are misses (-ENOENT is only "not there").
 */
#ifndef KVT_TIER_REMOTE_H
#define KVT_TIER_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvt_record.h"

#ifdef __cplusplus
extern "C" {
#endif

struct kvt_remote;

struct kvt_remote_conf {
	size_t size;	       /* sizeof(struct kvt_remote_conf) */
	const char *seeds;     /* "host:port[,host:port...]" (remote.nodes) */
	const char *auth_file; /* NULL or the AUTH file: "password" or "user password" */
	uint32_t ttl_s;	       /* TTL of a stored block (0 = none) */
	unsigned breaker_failures, breaker_open_ms; /* 0 = defaults (3, 500 ms) */
};

struct kvt_remote_key {
	uint64_t key_lo, key_hi; /* tenant-salted block key */
	uint64_t fingerprint;	 /* layout fingerprint */
};

/* Bytes of a Redis key name, terminating NUL included. */
#define KVT_REMOTE_KEY_NAME 54

/* One block to store: hdr's key_lo, key_hi, fingerprint, raw_len, payload_len, chain_id and
 * tenant are the caller's (seq and flags are set to 0, the rest by the tier).  res after the
 * call: 0 stored, 1 already present (blocks are immutable), or < 0 (not stored). */
struct kvt_remote_put {
	struct kvt_record_hdr hdr;
	const void *payload;
	int res;
	bool replace; /* SET without NX: overwrites a value stored before (a re-put after a
		       * delete); res is then 0 when stored */
};

/* One block to fetch: key and buf/cap are the caller's (the payload is copied into buf
 * straight from the socket buffer, so buf may be written even on a miss).  res after the
 * call: payload bytes in buf (hdr holds the record header: chain_id, raw_len...), or
 *   -ENOENT    not stored (or expired, evicted)
 *   -EBADMSG   a value was there but failed a check (truncated, corrupt, foreign): counted
 *   -ENOSPC    the payload is larger than cap
 *   other < 0  the cluster failed (see kvt_rc_exec's list): a miss as well */
struct kvt_remote_get {
	struct kvt_remote_key key;
	void *buf;
	size_t cap;
	struct kvt_record_hdr hdr;
	int res;
};

struct kvt_remote_stats {
	uint64_t puts, put_bytes, put_exists, put_errors;
	uint64_t gets, get_hits, get_bytes, get_misses, get_errors, corrupt;
	uint64_t lookups, lookup_keys, lookup_errors;
};

uint64_t kvt_remote_now_ns(void);

/* -EINVAL (no seeds, bad seed list), -errno (auth file), -ENOMEM.  Contacts no node. */
int kvt_remote_open(const struct kvt_remote_conf *conf, struct kvt_remote **out);
void kvt_remote_close(struct kvt_remote *r); /* NULL is a no-op */

/* Stores n blocks, pipelined.  Returns how many have res >= 0, or -EINVAL/-ENOMEM. */
int kvt_remote_put(struct kvt_remote *r, struct kvt_remote_put *v, unsigned n,
		   uint64_t deadline_ns);

/* Fetches n blocks, pipelined.  Returns how many have res >= 0, or -EINVAL/-ENOMEM. */
int kvt_remote_get(struct kvt_remote *r, struct kvt_remote_get *g, unsigned n,
		   uint64_t deadline_ns);

/* Deletes n keys (DEL, pipelined): res[i] 0 when the key is gone (deleted, or was not
 * there), < 0 when the cluster failed (kvt_rc_exec's list).  Returns how many are 0, or
 * -EINVAL/-ENOMEM. */
int kvt_remote_del(struct kvt_remote *r, const struct kvt_remote_key *keys, int *res, unsigned n,
		   uint64_t deadline_ns);

/*
 * How many of keys[0..n) are stored, counted from keys[0] up to the first that is not (EXISTS,
 * pipelined): the suffix of a prefix that the local tiers missed.  A key whose node fails or
 * does not answer by the deadline counts as not stored.  Never < 0 except -EINVAL/-ENOMEM.
 * (EXISTS does not check the value: a get still can miss.)
 */
int kvt_remote_lookup(struct kvt_remote *r, const struct kvt_remote_key *keys, unsigned n,
		      uint64_t deadline_ns);

/*
 * Checks a value read from Redis against the key it was read for: record header, exact
 * length (header + payload_len), CRC-32C, key and fingerprint.  On 0, *hdr is the header and
 * *payload points into val.  -EBADMSG otherwise (never reads past val + len).
 */
int kvt_remote_parse_value(const void *val, size_t len, const struct kvt_remote_key *want,
			   struct kvt_record_hdr *hdr, const void **payload);

/* The Redis key name of a block (KVT_REMOTE_KEY_NAME bytes with the NUL). */
void kvt_remote_key_name(const struct kvt_remote_key *k, char out[KVT_REMOTE_KEY_NAME]);

void kvt_remote_get_stats(const struct kvt_remote *r, struct kvt_remote_stats *st);

/* The cluster client underneath, for node listings and errors (redis_cluster.h). */
struct kvt_rc *kvt_remote_cluster(struct kvt_remote *r);

#ifdef __cplusplus
}
#endif
#endif
