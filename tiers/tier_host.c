/* SPDX-License-Identifier: MIT */
/*
 * tier_host.c - the host tier: page ranges inside mappings the caller attaches (the daemon's
 * tenant arenas), one pagemap per mapping, one capacity over all of them.  tier_host.h has
 * the contract.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "pagemap.h"
#include "tier_common.h"
#include "tier_host.h"

#define HOST_TIER_MAGIC 0x54534f48u /* "HOST" */
#define HOST_MAX_FILES	65535u

struct host_file {
	int fd;
	uint8_t *base;
	uint64_t size;
	struct kvtd_pagemap pm;
	uint64_t used;
	bool live;
};

struct kvt_tier {
	uint32_t magic;
	uint64_t capacity;
	struct host_file *f;
	uint32_t nfiles;
	struct kvt_tier_stats st;
	struct kvt_tier_doneq done; /* completed, done() not yet run */
	void (*log)(void *arg, int level, const char *msg);
	void *log_arg;
};

#define tlog(t, level, ...) kvt_tier_log((t)->log, (t)->log_arg, "host", level, __VA_ARGS__)

static int host_open(const struct kvt_tier_conf *conf, struct kvt_tier **out)
{
	struct kvt_tier *t;

	*out = NULL;
	if (!conf || !conf->capacity_bytes)
		return -EINVAL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->magic = HOST_TIER_MAGIC;
	t->capacity = conf->capacity_bytes;
	t->log = conf->log;
	t->log_arg = conf->log_arg;
	t->st.capacity_bytes = t->capacity;
	*out = t;
	return 0;
}

static void host_close(struct kvt_tier *t)
{
	if (!t)
		return;
	for (uint32_t k = 0; k < t->nfiles; k++)
		kvtd_pagemap_fini(&t->f[k].pm);
	free(t->f);
	t->magic = 0;
	free(t);
}

static int host_attach(struct kvt_tier *t, int fd, void *base, uint64_t size)
{
	uint32_t k;
	int ret;

	if (!base || size < KVTD_PAGE_SIZE)
		return -EINVAL;
	for (k = 0; k < t->nfiles && t->f[k].live; k++)
		;
	if (k == t->nfiles) {
		struct host_file *n;

		if (t->nfiles == HOST_MAX_FILES)
			return -EMFILE;
		n = realloc(t->f, (t->nfiles + 1) * sizeof(*n));
		if (!n)
			return -ENOMEM;
		t->f = n;
		t->nfiles++;
	}
	memset(&t->f[k], 0, sizeof(t->f[k]));
	ret = kvtd_pagemap_init(&t->f[k].pm, size >> KVTD_PAGE_SHIFT);
	if (ret < 0)
		return ret;
	t->f[k].fd = fd;
	t->f[k].base = base;
	t->f[k].size = size >> KVTD_PAGE_SHIFT << KVTD_PAGE_SHIFT;
	t->f[k].live = true;
	t->st.files++;
	return (int)k;
}

static struct host_file *file_of(struct kvt_tier *t, uint16_t file)
{
	return file < t->nfiles && t->f[file].live ? &t->f[file] : NULL;
}

static void host_detach(struct kvt_tier *t, uint16_t file)
{
	struct host_file *f = file_of(t, file);

	if (!f)
		return;
	t->st.used_bytes -= f->used;
	kvtd_pagemap_fini(&f->pm);
	f->live = false;
	t->st.files--;
}

static int host_alloc(struct kvt_tier *t, uint32_t len, struct kvt_tier_loc *out)
{
	struct host_file *f = file_of(t, out->file);
	uint64_t np = kvtd_pages(len), bytes = np << KVTD_PAGE_SHIFT;
	int64_t p;

	if (!f || !len)
		return -EINVAL;
	if (bytes > f->size)
		return -E2BIG;
	if (t->st.used_bytes + bytes > t->capacity)
		return -ENOSPC;
	p = kvtd_pagemap_alloc(&f->pm, np);
	if (p < 0)
		return (int)p;
	out->off = (uint64_t)p << KVTD_PAGE_SHIFT;
	out->len = (uint32_t)bytes;
	out->flags = 0;
	f->used += bytes;
	t->st.used_bytes += bytes;
	t->st.records++;
	return 0;
}

static void host_free(struct kvt_tier *t, const struct kvt_tier_loc *loc)
{
	struct host_file *f = file_of(t, loc->file);
	uint64_t np = kvtd_pages(loc->len);

	if (!f || (loc->off & (KVTD_PAGE_SIZE - 1)) ||
	    kvtd_pagemap_free(&f->pm, loc->off >> KVTD_PAGE_SHIFT, np) < 0) {
		/* Always on: going on would hand one range to two blocks. */
		tlog(t, 2, "free of a range not in use (file %u, offset %llu): accounting broken",
		     loc->file, (unsigned long long)loc->off);
		abort();
	}
	f->used -= np << KVTD_PAGE_SHIFT;
	t->st.used_bytes -= np << KVTD_PAGE_SHIFT;
	t->st.records--;
}

/* The range at loc, when every page of it is allocated. */
static uint8_t *range_of(struct kvt_tier *t, const struct kvt_tier_loc *loc, uint32_t len)
{
	struct host_file *f = file_of(t, loc->file);

	if (!f || !len || len > loc->len || (loc->off & (KVTD_PAGE_SIZE - 1)) ||
	    kvtd_pagemap_state(&f->pm, loc->off >> KVTD_PAGE_SHIFT, kvtd_pages(loc->len)) != 1)
		return NULL;
	return f->base + loc->off;
}

static void *host_addr(struct kvt_tier *t, const struct kvt_tier_loc *loc)
{
	return range_of(t, loc, loc->len ? loc->len : 1);
}

static int host_read(struct kvt_tier *t, struct kvt_tier_io *io)
{
	uint8_t *p = range_of(t, &io->loc, io->len);

	if (!p || !io->buf)
		return -EINVAL;
	memcpy(io->buf, p, io->len);
	io->res = (int)io->len;
	t->st.bytes_read += io->len;
	t->st.reads++;
	kvt_tier_doneq_push(&t->done, io);
	return 0;
}

static int host_write(struct kvt_tier *t, struct kvt_tier_io *io)
{
	uint8_t *p = range_of(t, &io->loc, io->len);

	if (!p || !io->buf)
		return -EINVAL;
	memcpy(p, io->buf, io->len);
	io->res = (int)io->len;
	t->st.bytes_written += io->len;
	t->st.writes++;
	kvt_tier_doneq_push(&t->done, io);
	return 0;
}

static int host_complete(struct kvt_tier *t)
{
	return kvt_tier_doneq_run(&t->done);
}

static void host_stats(struct kvt_tier *t, struct kvt_tier_stats *st)
{
	*st = t->st;
}

/* Returns pages [first, first + n) of f to the system; their contents become zeros. */
static void punch(struct host_file *f, uint64_t first, uint64_t n)
{
	off_t off = (off_t)(first << KVTD_PAGE_SHIFT), len = (off_t)(n << KVTD_PAGE_SHIFT);

	if (f->fd >= 0)
		fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
	else
		madvise(f->base + off, (size_t)len, MADV_DONTNEED);
}

static void host_discard(struct kvt_tier *t, const struct kvt_tier_loc *loc)
{
	struct host_file *f = file_of(t, loc->file);
	const struct kvtd_pagemap *pm;
	uint64_t p = 0;

	if (!f)
		return;
	pm = &f->pm;
	if (loc->len) {
		uint64_t first = loc->off >> KVTD_PAGE_SHIFT, n = kvtd_pages(loc->len);

		if (!(loc->off & (KVTD_PAGE_SIZE - 1)) && kvtd_pagemap_state(pm, first, n) == 0)
			punch(f, first, n);
		return;
	}
	/* Every run of free pages, a word of the bitmap at a time where it can. */
	while (p < pm->npages) {
		uint64_t start, w = pm->bits[p >> 6] >> (p & 63);

		if (w == (~0ull >> (p & 63))) { /* the rest of this word is in use */
			p = (p | 63) + 1;
			continue;
		}
		if (w & 1) {
			p++;
			continue;
		}
		start = p;
		while (p < pm->npages && !(pm->bits[p >> 6] >> (p & 63) & 1)) {
			if (!(p & 63) && !pm->bits[p >> 6] && p + 64 <= pm->npages)
				p += 64;
			else
				p++;
		}
		punch(f, start, p - start);
	}
}

const struct kvt_tier_ops kvt_tier_host_ops = {
    .name = "host",
    .open = host_open,
    .close = host_close,
    .alloc = host_alloc,
    .free = host_free,
    .write = host_write,
    .read = host_read,
    .stats = host_stats,
    .complete = host_complete,
    .attach = host_attach,
    .detach = host_detach,
    .addr = host_addr,
    .discard = host_discard,
};
