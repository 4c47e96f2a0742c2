/* SPDX-License-Identifier: MIT */
/*
 * nvme_super.c - the NVMe tier's slot files: open (O_DIRECT where the filesystem takes it),
 * the owner's flock, the superblock (page 0, two copies, the file's salt and high-water
 * mark), preallocation, and the synchronous I/O helper that open, recovery and the pread
 * engine share.  Format: proto/RECORD.md.
 */
#define _GNU_SOURCE
#include "nvme_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

/* ---- synchronous helpers (open, recovery, close) ---- */

int nv_pio_full(int fd, void *buf, size_t len, uint64_t off, bool wr)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = wr ? pwrite(fd, (char *)buf + done, len - done, (off_t)(off + done))
			       : pread(fd, (char *)buf + done, len - done, (off_t)(off + done));

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return wr ? -EIO : (int)done;
		done += (size_t)r;
	}
	return (int)done;
}

static void sb_fill(const struct nv_file *f, void *page)
{
	struct nv_sb sb;

	memset(&sb, 0, sizeof(sb));
	sb.magic = NV_SB_MAGIC;
	sb.version = NV_SB_VERSION;
	sb.sb_size = sizeof(sb);
	sb.page_size = NV_PAGE;
	sb.salt = f->salt;
	sb.data_off = NV_DATA_OFF;
	sb.data_bytes = f->data_bytes;
	sb.hwm = f->hwm;
	sb.created_ns = f->created_ns;
	sb.crc = kvt_crc32c(0, &sb, offsetof(struct nv_sb, crc));
	memset(page, 0, NV_PAGE);
	memcpy(page, &sb, sizeof(sb));
	/* A second copy in the same page: one damaged byte must not cost the whole file. */
	memcpy((char *)page + NV_SB_COPY, &sb, sizeof(sb));
}

int nv_sb_write(struct kvt_tier *t, struct nv_file *f)
{
	int r;

	sb_fill(f, t->sb_buf);
	r = hook(t, KVT_TIER_OP_WRITE, 0, NV_PAGE);
	if (r >= 0)
		r = nv_pio_full(f->fd, t->sb_buf, NV_PAGE, 0, true);
	if (r >= 0) {
		r = hook(t, KVT_TIER_OP_FSYNC, 0, NV_PAGE);
		if (r >= 0 && fdatasync(f->fd) < 0)
			r = -errno;
	}
	return r < 0 ? r : 0;
}

static int sb_parse_one(const void *p, struct nv_sb *out)
{
	memcpy(out, p, sizeof(*out));
	if (out->magic != NV_SB_MAGIC || out->version != NV_SB_VERSION ||
	    out->sb_size != sizeof(*out) || out->page_size != NV_PAGE ||
	    out->data_off != NV_DATA_OFF || out->data_bytes % NV_PAGE ||
	    out->crc != kvt_crc32c(0, out, offsetof(struct nv_sb, crc)))
		return -EBADMSG;
	if (out->hwm > out->data_bytes)
		out->hwm = out->data_bytes;
	return 0;
}

/*
 * Page 0 of a slot file: 0 (superblock valid), 1 (only its copy is), -EBADMSG (a kvtier
 * superblock, both copies damaged), -ENOENT (no kvtier magic at all).
 */
static int sb_parse(const void *page, struct nv_sb *out)
{
	uint32_t m0, m1;

	if (sb_parse_one(page, out) == 0)
		return 0;
	if (sb_parse_one((const char *)page + NV_SB_COPY, out) == 0)
		return 1;
	memcpy(&m0, page, sizeof(m0));
	memcpy(&m1, (const char *)page + NV_SB_COPY, sizeof(m1));
	return m0 == NV_SB_MAGIC || m1 == NV_SB_MAGIC ? -EBADMSG : -ENOENT;
}

static bool page_zero(const void *page)
{
	const uint64_t *w = page;

	for (size_t i = 0; i < NV_PAGE / sizeof(*w); i++)
		if (w[i])
			return false;
	return true;
}

static int zero_fill(struct kvt_tier *t, int fd, uint64_t size)
{
	const size_t chunk = 1u << 20;
	void *z = NULL;
	int r = 0;

	if (posix_memalign(&z, NV_PAGE, chunk))
		return -ENOMEM;
	memset(z, 0, chunk);
	for (uint64_t off = 0; off < size; off += chunk) {
		size_t n = size - off < chunk ? (size_t)(size - off) : chunk;

		r = nv_pio_full(fd, z, n, off, true);
		if (r < 0)
			break;
	}
	free(z);
	return r < 0 ? r : 0;
}

static int preallocate(struct kvt_tier *t, struct nv_file *f, const char *path, uint64_t size,
		       bool fresh)
{
	int r = hook(t, KVT_TIER_OP_FALLOCATE, 0, 0);

	if (r >= 0 && fallocate(f->fd, 0, 0, (off_t)size) < 0)
		r = -errno;
	if (r == -EOPNOTSUPP || r == -ENOSYS) {
		nv_log(t, LOG_NOTICE, "%s: fallocate unsupported, zero-filling %llu bytes", path,
		       (unsigned long long)size);
		r = zero_fill(t, f->fd, size);
	}
	if (r < 0) {
		nv_log(t, LOG_ERR, "%s: cannot preallocate %llu bytes: %s", path,
		       (unsigned long long)size, strerror(-r));
		/* Give the space back: a half-allocated new file helps nobody.  An existing
		 * one keeps its size (and records). */
		if (fresh && !f->blockdev && ftruncate(f->fd, 0) < 0) {
		}
	}
	return r;
}

/*
 * Two daemons on one slot file would destroy each other's records (and a second one
 * re-initialising the file would wipe it): one owner at a time.  A killed owner's lock
 * outlives it by a moment (its io_uring still holds the file until the kernel tears the
 * ring down), so a restart waits up to NV_LOCK_WAIT_MS before calling the file busy.
 */
#define NV_LOCK_WAIT_MS 3000

static int lock_file(struct kvt_tier *t, int fd, const char *path)
{
	for (int waited = 0;; waited += 20) {
		struct timespec ts = {0, 20 * 1000 * 1000};

		if (flock(fd, LOCK_EX | LOCK_NB) == 0)
			return 0;
		if (errno != EWOULDBLOCK)
			return -errno;
		if (waited >= NV_LOCK_WAIT_MS) {
			nv_log(t, LOG_ERR, "%s is in use by another process", path);
			return -EBUSY;
		}
		nanosleep(&ts, NULL);
	}
}

int nv_file_open(struct kvt_tier *t, unsigned fi, const char *path, uint64_t share)
{
	struct nv_file *f = &t->files[fi];
	int oflags = O_RDWR | O_CREAT | O_CLOEXEC;
	bool want_direct = !(t->flags & KVT_TIER_F_NO_DIRECT);
	uint64_t data_bytes = share >= 2 * NV_PAGE ? (share - NV_PAGE) / NV_PAGE * NV_PAGE : 0;
	struct nv_sb sb;
	struct statfs sfs;
	struct stat st;
	bool valid, fresh;
	int sb_read, pr;
	int r;

	f->fd = -1;
	if (want_direct) {
		r = hook(t, KVT_TIER_OP_OPEN_DIRECT, 0, 0);
		f->fd = r < 0 ? (errno = -r, -1) : open(path, oflags | O_DIRECT, 0600);
		if (f->fd < 0 && errno != EINVAL)
			return -errno;
		f->direct = f->fd >= 0;
	}
	if (f->fd < 0) {
		if (want_direct)
			nv_log(t, LOG_WARNING,
			       "%s: filesystem refuses O_DIRECT, using buffered I/O (page cache)",
			       path);
		f->fd = open(path, oflags, 0600);
		if (f->fd < 0)
			return -errno;
	}
	r = lock_file(t, f->fd, path);
	if (r < 0)
		return r;
	if (fstat(f->fd, &st) < 0)
		return -errno;
	f->blockdev = S_ISBLK(st.st_mode);
	if (!f->blockdev && fstatfs(f->fd, &sfs) == 0 && sfs.f_type == TMPFS_MAGIC)
		nv_log(t, LOG_NOTICE, "%s is on tmpfs: the NVMe tier is RAM-backed and not durable",
		       path);

	r = nv_pio_full(f->fd, t->sb_buf, NV_PAGE, 0, false);
	if (r == -EINVAL && f->direct) {
		/* Some filesystems take the flag at open and refuse the I/O. */
		nv_log(t, LOG_WARNING, "%s: O_DIRECT read refused, using buffered I/O", path);
		close(f->fd);
		f->direct = false;
		f->fd = open(path, oflags, 0600);
		if (f->fd < 0)
			return -errno;
		r = lock_file(t, f->fd, path);
		if (r < 0)
			return r;
		r = nv_pio_full(f->fd, t->sb_buf, NV_PAGE, 0, false);
	}
	if (r < 0)
		return r;
	sb_read = r;
	if (sb_read < (int)NV_PAGE)
		memset((char *)t->sb_buf + sb_read, 0, NV_PAGE - (size_t)sb_read);
	pr = sb_parse(t->sb_buf, &sb);
	/* Only an empty file (or a blank device) is ours to initialise: anything else either
	 * carries a kvtier superblock or is someone else's data, never to be overwritten. */
	fresh = f->blockdev ? page_zero(t->sb_buf) : st.st_size == 0;
	if (pr == -EBADMSG && !fresh) {
		nv_log(t, LOG_ERR,
		       "%s: the slot file's superblock is damaged (both copies); refusing to "
		       "start rather than wipe its records: restore the file, or remove it to "
		       "start empty",
		       path);
		return -EBADMSG;
	}
	if (pr == -ENOENT && !fresh) {
		nv_log(t, LOG_ERR,
		       "%s: not a kvtier slot file (%llu bytes, no kvtier superblock); refusing "
		       "to overwrite it: name a new file in nvme.paths",
		       path, (unsigned long long)(f->blockdev ? 0 : st.st_size));
		return -EEXIST;
	}
	valid = pr >= 0;
	if (pr == 1)
		nv_log(t, LOG_WARNING, "%s: superblock damaged, using its second copy", path);

	if (f->blockdev) {
		uint64_t dev = 0;

		if (ioctl(f->fd, BLKGETSIZE64, &dev) < 0)
			return -errno;
		dev = dev / NV_PAGE * NV_PAGE;
		if (dev < 2 * NV_PAGE)
			return -ENOSPC;
		if (!data_bytes || data_bytes > dev - NV_PAGE)
			data_bytes = dev - NV_PAGE;
	}
	if (!data_bytes && valid)
		data_bytes = sb.data_bytes;
	if (!data_bytes) {
		nv_log(t, LOG_ERR, "%s: no capacity configured and no slot file to reuse", path);
		return -EINVAL;
	}
	if (valid && data_bytes < sb.data_bytes) {
		nv_log(t, LOG_ERR,
		       "%s: nvme.capacity gives this file a data region of %llu bytes, less than "
		       "the %llu bytes its records may occupy; refusing to drop them: set "
		       "nvme.capacity back (0 reuses the files at their size), or remove the file "
		       "to start empty",
		       path, (unsigned long long)data_bytes, (unsigned long long)sb.data_bytes);
		return -EINVAL;
	}
	f->data_bytes = data_bytes;
	r = nv_alloc_init(&f->alloc, data_bytes / NV_PAGE);
	if (r < 0)
		return r;

	if (valid) {
		uint64_t avail = data_bytes;

		f->salt = sb.salt;
		f->hwm = sb.hwm;
		f->created_ns = sb.created_ns;
		if (!f->blockdev && (uint64_t)st.st_size < NV_DATA_OFF + sb.data_bytes) {
			/* Cut short behind our back: what lay past the end is gone. */
			avail = (uint64_t)st.st_size > NV_DATA_OFF
				    ? ((uint64_t)st.st_size - NV_DATA_OFF) / NV_PAGE * NV_PAGE
				    : 0;
			if (avail < f->hwm) {
				t->sst.lost_bytes += f->hwm - avail;
				nv_log(t, LOG_ERR,
				       "%s: the file is %llu bytes, its superblock says %llu: the "
				       "last %llu bytes of its records were cut off and are lost",
				       path, (unsigned long long)st.st_size,
				       (unsigned long long)(NV_DATA_OFF + sb.data_bytes),
				       (unsigned long long)(f->hwm - avail));
			}
		}
		f->scan_end = f->hwm < avail ? f->hwm : avail;
		if (data_bytes != sb.data_bytes)
			nv_log(t, LOG_NOTICE,
			       "%s: capacity grows from %llu to %llu bytes, records kept", path,
			       (unsigned long long)sb.data_bytes, (unsigned long long)data_bytes);
		if (!f->blockdev && (uint64_t)st.st_size < NV_DATA_OFF + data_bytes) {
			r = preallocate(t, f, path, NV_DATA_OFF + data_bytes, false);
			if (r < 0)
				return r;
		}
		if (pr == 1 || data_bytes != sb.data_bytes)
			return nv_sb_write(t, f);
		return 0;
	}
	/* A fresh incarnation: new salt, so nothing an older one wrote can be accepted. */
	if (getrandom(&f->salt, sizeof(f->salt), 0) != sizeof(f->salt)) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		f->salt = (uint32_t)(ts.tv_nsec ^ ts.tv_sec ^ getpid());
	}
	{
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		f->created_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	}
	f->hwm = 0;
	f->scan_end = 0;
	/* The superblock first: a crash before the preallocation ends leaves a kvtier file. */
	r = nv_sb_write(t, f);
	if (r < 0)
		return r;
	if (!f->blockdev) {
		r = preallocate(t, f, path, NV_DATA_OFF + data_bytes, true);
		if (r < 0)
			return r;
	}
	return 0;
}
