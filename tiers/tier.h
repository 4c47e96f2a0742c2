/* SPDX-License-Identifier: MIT */
/*
 * tier.h - the one interface every storage tier implements (DESIGN §4).
 *
 * The daemon owns the block index and placement; a tier only stores bytes at locations it
 * hands out.  I/O may complete asynchronously: read() and write() queue a request and
 * return; the request's done() callback runs later from complete(), on the daemon's event
 * loop thread, never from inside read()/write().  A tier that completes synchronously
 * calls nothing from read()/write() either: it queues the completion for complete().
 *
 * Required: open, close, alloc, free, read, write, stats.
 * Optional (NULL when absent): event_fd, complete, recover, flush, buf_alloc/buf_free.
 */
#ifndef KVT_TIER_H
#define KVT_TIER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct kvt_tier;
struct kvt_record_hdr;

/* Where a block lives inside one tier.  Opaque to the daemon except for len. */
struct kvt_tier_loc {
	uint64_t off;  /* byte offset inside file/arena */
	uint32_t len;  /* bytes reserved (tier's own rounding included) */
	uint16_t file; /* which file/device of the tier */
	uint16_t flags;
};

/* One asynchronous request. The caller owns it until done() has run. */
struct kvt_tier_io {
	struct kvt_tier_loc loc;
	void *buf;    /* write: source; read: destination (buf_alloc'd when the tier needs it) */
	uint32_t len; /* bytes to move, <= loc.len */
	int res;      /* on completion: bytes moved or -errno */
	void (*done)(struct kvt_tier_io *io);
	void *arg; /* caller's */
};

struct kvt_tier_stats {
	uint64_t capacity_bytes;
	uint64_t used_bytes;
	uint64_t bytes_read;
	uint64_t bytes_written;
	uint64_t read_errors;
	uint64_t write_errors;
	uint64_t corrupt_records; /* records discarded by a failed check */
	uint32_t files;
};

/* Configuration handed to open(); each tier reads what it understands. */
struct kvt_tier_conf {
	const char *name;
	uint64_t capacity_bytes;
	const char *const *paths; /* files or devices (NVMe); NULL-terminated */
	unsigned queue_depth;
	unsigned flags; /* KVT_TIER_F_* */
	int (*io_hook)(int op, uint64_t off, uint32_t len); /* fault injection; NULL in production */
};

#define KVT_TIER_F_NO_URING 0x1u /* use the pread/pwrite workers even if io_uring works */
#define KVT_TIER_F_NO_DIRECT 0x2u
#define KVT_TIER_F_FSYNC 0x4u /* fdatasync before a write completes */

/* recover() calls cb once per valid record found on the medium. */
typedef int (*kvt_tier_recover_cb)(void *arg, const struct kvt_record_hdr *hdr,
				   const struct kvt_tier_loc *loc);

struct kvt_tier_ops {
	const char *name;
	int (*open)(const struct kvt_tier_conf *conf, struct kvt_tier **out);
	void (*close)(struct kvt_tier *t);
	int (*alloc)(struct kvt_tier *t, uint32_t len, struct kvt_tier_loc *out);
	void (*free)(struct kvt_tier *t, const struct kvt_tier_loc *loc);
	int (*write)(struct kvt_tier *t, struct kvt_tier_io *io);
	int (*read)(struct kvt_tier *t, struct kvt_tier_io *io);
	void (*stats)(struct kvt_tier *t, struct kvt_tier_stats *st);
	/* optional */
	int (*event_fd)(struct kvt_tier *t); /* readable when complete() has work */
	int (*complete)(struct kvt_tier *t); /* runs done() callbacks; returns how many */
	int (*recover)(struct kvt_tier *t, kvt_tier_recover_cb cb, void *arg);
	int (*flush)(struct kvt_tier *t);
	void *(*buf_alloc)(struct kvt_tier *t, uint32_t len); /* I/O-capable (aligned, registered) */
	void (*buf_free)(struct kvt_tier *t, void *buf);
};

extern const struct kvt_tier_ops kvt_tier_nvme_ops;

#ifdef __cplusplus
}
#endif
#endif
