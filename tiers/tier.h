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
 * Optional (NULL when absent): event_fd, complete, submit, recover, flush, buf_alloc/buf_free,
 * settle, recovering, recover_start; for memory tiers attach/detach, addr, discard; for
 * device tiers mem_register/mem_unregister, export_desc.  The daemon keeps its tiers in one
 * ordered list (daemon/tierlist.h, tiers.order) and reaches every tier through this table.
 *
 * Threading: a tier instance is driven from one thread (the event loop); it may run workers
 * of its own, but every callback it makes (done, recover's cb) runs on that thread.
 * Errors: >= 0 success, -errno failure.  Bad arguments (unknown loc, len too big, misaligned
 * buffer) give -EINVAL and change nothing.
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

/*
 * One asynchronous request.  The caller fills loc, buf, len, flags, done, arg; from a
 * successful read()/write() until done() has run, the request AND its buffer belong to the
 * tier (the tier may touch the buffer, e.g. to pad it; it restores what it changed).
 */
struct kvt_tier_io {
	struct kvt_tier_loc loc;
	void *buf;    /* write: source; read: destination (buf_alloc'd when the tier needs it) */
	uint32_t len; /* bytes to move, <= loc.len */
	int res;      /* on completion: bytes moved or -errno */
	void (*done)(struct kvt_tier_io *io);
	void *arg;		/* caller's */
	unsigned flags;		/* KVT_TIER_IO_* */
	uintptr_t tier_priv[2]; /* the tier's, while it owns the request */
	/* read(): how the tier decodes what it stores on the way out, in a form only that tier
	 * knows (GPU tier: a struct kvt_gpu_kvq of a quantized block, dequantized on the device
	 * into io->len raw bytes); NULL = the bytes as stored.  Tiers without it ignore it. */
	const void *xform;
};

/* More requests follow at once: the tier may hold this one back until a request without
 * this flag, submit() or complete() (batched submission, like MSG_MORE). */
#define KVT_TIER_IO_MORE 0x1u
/* read(), NVMe: the tier does not check the record's CRC (it still takes its salt off the
 * header's crc field): the caller checks it, e.g. while it copies the payload
 * (kvt_crc32c_copy), and treats a mismatch as corruption.  One pass over the payload
 * instead of two. */
#define KVT_TIER_IO_NOVERIFY 0x2u

/* Operations passed to kvt_tier_conf.io_hook. */
enum kvt_tier_op {
	KVT_TIER_OP_READ = 1,
	KVT_TIER_OP_WRITE = 2,
	KVT_TIER_OP_FSYNC = 3,	     /* fdatasync after a write (KVT_TIER_F_FSYNC) */
	KVT_TIER_OP_FALLOCATE = 4,   /* preallocation at open */
	KVT_TIER_OP_URING_SETUP = 5, /* io_uring setup at open; fail it to force the workers */
	KVT_TIER_OP_OPEN_DIRECT = 6, /* O_DIRECT open; -EINVAL mimics a filesystem without it */
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
	uint32_t io_flags;	    /* KVT_TIER_ST_*: how the tier is doing its I/O right now */
	uint64_t records;	    /* records stored (written or recovered, not yet freed) */
	uint64_t recovered;	    /* valid records found at open */
	uint64_t stale;		    /* older copies of a key dropped at open (a newer seq won) */
	uint64_t quarantined_bytes; /* space withheld after a failed invalidation write */
	uint64_t reads;
	uint64_t writes;
	/* Why records found at open were not recovered (besides stale): */
	uint64_t scan_corrupt;	  /* failed a check (also in corrupt_records) */
	uint64_t scan_unreadable; /* a read error at open (also in read_errors) */
	uint64_t cut_records;	  /* their end was cut off a truncated file */
	uint64_t lost_bytes;	  /* record area missing from a truncated file (records unknown) */
	/* Reads merged into the read of the record before them on disk (one request for both),
	 * and reads done again on their own after a merged read failed or came back short. */
	uint64_t merged_reads;
	uint64_t merged_retries;
};

#define KVT_TIER_ST_URING	0x1u /* io_uring; else pread/pwrite workers */
#define KVT_TIER_ST_DIRECT	0x2u /* O_DIRECT on every file */
#define KVT_TIER_ST_FIXED_BUFS	0x4u /* buf_alloc() memory is registered with io_uring */
#define KVT_TIER_ST_FIXED_FILES 0x8u /* files are registered with io_uring */

/* Configuration handed to open(); each tier reads what it understands. */
struct kvt_tier_conf {
	const char *name;
	uint64_t capacity_bytes;
	const char *const *paths; /* files or devices (NVMe); NULL-terminated */
	unsigned queue_depth;
	unsigned flags; /* KVT_TIER_F_* */
	/*
	 * Fault injection; NULL in production.  Called before each operation (op is a
	 * kvt_tier_op, off/len within the file).  Return 0 to proceed, -errno to fail the
	 * operation with that error instead of doing it, or for KVT_TIER_OP_WRITE a positive
	 * n < len to tear the write: only the first n bytes (rounded down to 4 KiB) reach the
	 * medium and the request fails with -EIO.
	 */
	int (*io_hook)(int op, uint64_t off, uint32_t len);
	uint64_t buf_bytes; /* memory buf_alloc() serves from a preallocated, registered arena
			       (0 = tier default); larger requests fall back to plain memory */
	void (*log)(void *arg, int level, const char *msg); /* NULL = stderr; level as syslog */
	void *log_arg;
	unsigned verify_threads; /* NVMe: threads that check read records off the caller's
				    thread (0 = one per 4 CPUs, 1 to 4) */
	uint64_t epoch; /* GPU: goes into the exported descriptor (clients notice a new pool) */
};

#define KVT_TIER_F_NO_URING  0x1u /* use the pread/pwrite workers even if io_uring works */
#define KVT_TIER_F_NO_DIRECT 0x2u
#define KVT_TIER_F_FSYNC     0x4u /* fdatasync before a write completes */
#define KVT_TIER_F_VERIFY_INLINE                                                                   \
	0x8u /* check read records on the thread that calls complete() (benchmarks) */
#define KVT_TIER_F_BG_RECOVER                                                                      \
	0x10u /* open() returns before the recovery scan: it runs on a thread (recovering()) */

/*
 * recover() calls cb once per valid record found on the medium.  cb returns 0 to keep the
 * record (the caller now owns loc, as if it had alloc()ed and written it), > 0 to drop it
 * (the tier frees the slot), < 0 to stop: recover() then returns that value and the records
 * not yet delivered are released.
 */
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
	int (*submit)(struct kvt_tier *t);   /* pushes requests held back by KVT_TIER_IO_MORE */
	int (*recover)(struct kvt_tier *t, kvt_tier_recover_cb cb, void *arg);
	int (*flush)(struct kvt_tier *t);
	void *(*buf_alloc)(struct kvt_tier *t,
			   uint32_t len); /* I/O-capable (aligned, registered) */
	void (*buf_free)(struct kvt_tier *t, void *buf);
	/*
	 * Returns once no freed record of this key can come back at recovery: invalidations
	 * still queued or in flight for it are done now, synchronously (blocking), to the
	 * durability of a write (fdatasync'd with KVT_TIER_F_FSYNC).  0, or -errno when one
	 * failed (that record may come back).
	 */
	int (*settle)(struct kvt_tier *t, uint64_t key_lo, uint64_t key_hi);
	/* 1 while the recovery scan of a KVT_TIER_F_BG_RECOVER open is running, else 0; done
	 * and total (may be NULL): bytes scanned and to scan.  The event fd fires when it ends. */
	int (*recovering)(struct kvt_tier *t, uint64_t *done, uint64_t *total);
	/* KVT_TIER_F_BG_RECOVER: starts the scan thread (after open(), so that a fork() may
	 * come in between).  1 when it runs, 0 when there is nothing to scan, or -errno. */
	int (*recover_start)(struct kvt_tier *t);

	/*
	 * Memory tiers (host RAM), whose bytes the daemon and its clients address directly.
	 * attach(): a mapping of size bytes at base (fd: its memfd, or -1) becomes one file of
	 * the tier, which alloc() then places ranges in: alloc() reads out->file on entry as
	 * the file to allocate in (tiers without attach() choose the file themselves).  Returns
	 * the file number or -errno.  detach(): the file's ranges are forgotten (the caller
	 * unmaps it).  addr(): the address of loc's bytes, NULL for a loc not allocated.
	 * discard(): gives the memory behind free ranges back to the system: the range loc if
	 * loc->len (it must be free), else every free range of file loc->file.
	 */
	int (*attach)(struct kvt_tier *t, int fd, void *base, uint64_t size);
	void (*detach)(struct kvt_tier *t, uint16_t file);
	void *(*addr)(struct kvt_tier *t, const struct kvt_tier_loc *loc);
	void (*discard)(struct kvt_tier *t, const struct kvt_tier_loc *loc);

	/*
	 * Device tiers (GPU).  mem_register(): host memory that read()/write() may move bytes
	 * to and from directly (DMA), once per mapping; 0 or -errno.  export_desc(): the
	 * descriptor other processes map the tier's memory with (GPU: struct kvt_gpu_ipc_desc,
	 * len its size); 0 or -errno.
	 */
	int (*mem_register)(struct kvt_tier *t, void *base, uint64_t len);
	void (*mem_unregister)(struct kvt_tier *t, void *base);
	int (*export_desc)(struct kvt_tier *t, void *desc, size_t len);
};

/*
 * The NVMe tier (tier_nvme.c; on-medium format in proto/RECORD.md).
 *
 * conf: paths = slot files or block devices (several: capacity_bytes is split evenly and
 * alloc() round-robins over them); capacity_bytes = 0 reuses existing files at their size;
 * queue_depth (default 32) bounds requests in flight, more wait inside the tier; flags
 * KVT_TIER_F_NO_URING / NO_DIRECT / FSYNC; buf_bytes = registered buffer arena (default
 * 64 MiB).  open() falls back (and logs it) to pread/pwrite workers when io_uring is refused
 * and to buffered I/O when the filesystem refuses O_DIRECT; stats().io_flags says which.
 * open() fails with -EBUSY when another process holds a slot file (flock; a just-killed
 * owner's lock lingers while the kernel tears its io_uring down: open waits up to 3 s for
 * it), with -ENOSPC/-EFBIG when the filesystem cannot hold the preallocation.  Ignore
 * SIGXFSZ in the daemon.
 *
 * Records only: write() takes a sealed record (kvt_record_seal) of io->len = 64 +
 * payload_len bytes into a slot from alloc(io->len).  Buffers must be 4 KiB aligned and hold
 * round_up(len, 4 KiB) bytes (buf_alloc() gives that); the tier zeroes the pad and, while it
 * owns the buffer, keeps a salted crc in the header.  A slot is written once: a new version
 * of a block goes to a new slot with a higher seq, and the old slot is freed.
 * read(): io->loc as alloc()/recover() gave it, io->len = loc.len (or the record's exact
 * length).  The tier verifies the record: done() sees io->res = len, or -EBADMSG (corrupt,
 * counted in corrupt_records), or -EIO etc.  The caller still compares key and fingerprint.
 * read() returns -ENODATA, and nothing is queued, for a slot whose write has not completed
 * successfully.
 * free(): releases the slot once in-flight I/O on it is done; a written slot's first page is
 * zeroed before reuse so the record never comes back at recovery.  So that "evict one, then
 * alloc() again" works, an alloc() that finds no room while freed slots are still being
 * invalidated waits for those writes (briefly blocking); completions it reaps meanwhile have
 * their done() run by the next complete(), never inside alloc().
 * recover(): right after open(), before any alloc(): one call per surviving record, newest
 * seq per key only (the tier dedupes), in ascending seq.  alloc() before recover() drops
 * the recovered records.  With KVT_TIER_F_BG_RECOVER, open() only reads the superblocks;
 * recover_start() runs the scan on a thread, recovering() reports it, and alloc() returns
 * -EAGAIN until recover() (which waits for the scan, or scans itself) has run.
 * open() never overwrites a file that is not a kvtier slot file (-EEXIST) or whose
 * superblock is damaged in both of its copies (-EBADMSG), and refuses a capacity smaller
 * than the file's (-EINVAL): each is logged with the path and what to do.  A larger
 * capacity grows the file, records kept.
 * settle(): see the op; free() alone makes a record's invalidation durable only later.
 * stats(): used_bytes counts allocated and quarantined slots, not those being invalidated.
 * flush(): fdatasync of every file (blocking).  close(): drains outstanding requests (their
 * done() callbacks run inside close()), then fdatasyncs.
 */
extern const struct kvt_tier_ops kvt_tier_nvme_ops;

#ifdef __cplusplus
}
#endif
#endif
