/* SPDX-License-Identifier: MIT */
/*
 * nvme_place.c - the NVMe tier inside kvtierd: opening it from the configuration (codec
 * chain, dictionary, slot files), its space (slots, eviction of its LRU tail), recovery of
 * the records it holds at start, its events and statistics, and its entry in the tier list.
 *
 * Moves into and out of it are in demote.c and promote.c.  While the recovery scan runs the
 * tier is open but not usable (nvme_on() is false): blocks are neither placed in it nor
 * found in it, and puts are refused (kvtd_host_alloc) so that a crash cannot bring an older
 * record of a new block back.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "codec_auto.h"
#include "kvt_record.h"
#include "place_int.h"
#include "log.h"

#ifdef KVT_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

static void recovery_poll(struct kvtd *d);

void kvtd_nvme_free_copy(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);
	struct kvt_tier_loc loc = {b->nvme_off, b->nvme_len, b->nvme_file, b->nvme_flags};

	if (!b->on_nvme)
		return;
	d->nvme_ops->free(d->nvme, &loc);
	kvtd_set_nvme(d, b, false);
	kvtd_lru_unlink(&d->ix, KVTD_TIER_NVME, i);
	kvtd_fix_tier(b);
}

/* ---------------------------------------------------------------------------------------
 * NVMe space
 */
/*
 * The NVMe LRU tail leaves.  NVMe is the bottom of the list: the block keeps its host copy
 * if it has one, else it is dropped, a GPU-pool copy included (the rule from before the tier
 * list, kept as it was: kvtd_copy_elsewhere would keep the pool copy).
 */
static int nvme_evict_one(struct kvtd *d)
{
	uint32_t i = d->ix.lru_tail[KVTD_TIER_NVME];
	struct kvtd_blk *b;

	if (i == KVTD_NIL)
		return -ENOSPC;
	b = B(d, i);
	d->m.nvme_evictions_total++;
	if (b->on_host) {
		kvtd_nvme_free_copy(d, i);
		kvtd_blk_lru_update(d, i);
	} else {
		kvtd_blk_drop(d, i);
	}
	return 0;
}

int kvtd_nvme_alloc(struct kvtd *d, uint32_t len, struct kvt_tier_loc *loc)
{
	for (;;) {
		int ret = d->nvme_ops->alloc(d->nvme, len, loc);

		if (ret != -ENOSPC)
			return ret;
		if (nvme_evict_one(d) < 0)
			return -ENOSPC;
	}
}

/* ---------------------------------------------------------------------------------------
 * Setup, recovery, events
 */
static int recover_cb(void *arg, const struct kvt_record_hdr *h, const struct kvt_tier_loc *loc)
{
	struct kvtd *d = arg;
	const struct kvt_chain *hc;
	struct tenant *t;
	struct kvtd_blk *b;
	uint32_t i;

	if (kvtd_index_find(&d->ix, h->key_lo, h->key_hi) != KVTD_NIL) {
		d->m.nvme_recovery_dropped_unplaceable_total++;
		return 1;
	}
	/* written by a codec chain (or dictionary) this configuration does not have: no
	 * decoder for it, drop it now rather than at its first read */
	hc = kvtd_host_chain_by_id(d, h->chain_id);
	if (h->chain_id && h->chain_id != kvt_chain_id(d->nvme_chain) && !hc &&
	    !kvtd_auto_chain_by_id(d, h->chain_id)) {
		d->m.nvme_recovery_dropped_foreign_total++;
		return 1;
	}
	t = kvtd_tenant_get(d, h->tenant);
	if (!t || h->raw_len > t->size || h->payload_len > t->size) {
		d->m.nvme_recovery_dropped_unplaceable_total++;
		return 1;
	}
	i = kvtd_index_insert(&d->ix, h->key_lo, h->key_hi);
	if (i == KVTD_NIL) {
		d->m.nvme_recovery_dropped_unplaceable_total++;
		return 1;
	}
	b = B(d, i);
	for (uint32_t k = 0; k < d->ntenants; k++) {
		if (d->tenants[k] == t)
			b->tenant = k;
	}
	b->state = KVTD_BLK_READY;
	/* A record of a host chain is the block's stored form (demote.c): it stays encoded.
	 * (With nvme.codec the host chain, a block put raw comes back encoded: the same.) */
	b->len = hc ? h->payload_len : h->raw_len;
	b->hchain = hc ? h->chain_id : 0;
	b->raw_len = h->raw_len;
	b->fingerprint = h->fingerprint;
	b->atime = kvtd_now_ms();
	b->nvme_off = loc->off;
	b->nvme_len = loc->len;
	b->nvme_file = loc->file;
	b->nvme_flags = loc->flags;
	kvtd_set_nvme(d, b, true);
	kvtd_fix_tier(b);
	t->blocks++;
	if (h->seq > d->seq)
		d->seq = h->seq;
	d->m.nvme_recovered_total++;
	kvtd_blk_lru_update(d, i);
	return 0;
}

/*
 * nvme.codec_dict: loaded and attached when the chain needs a dictionary; a chain that needs
 * one without it, an unreadable file, or one the chain cannot use is a configuration error.
 */
static int nvme_dict_setup(struct kvtd *d)
{
	const char *path = d->cfg.nvme_codec_dict;
	struct kvt_codec_geom g;
	double theta;
	int ret;

	if (!(kvt_chain_flags(d->nvme_chain) & KVT_CODEC_DICT)) {
		if (*path)
			kvtd_log(KVTD_LOG_WARN,
				 "nvme.codec_dict ignored: nvme.codec = %s needs none",
				 kvt_chain_name(d->nvme_chain));
		return 0;
	}
	if (!*path) {
		kvtd_log(KVTD_LOG_ERR,
			 "nvme.codec = %s needs a dictionary: set nvme.codec_dict (make one with "
			 "kvtier-eval dict)",
			 kvt_chain_name(d->nvme_chain));
		return -EINVAL;
	}
	ret = kvt_dict_load(path, &d->nvme_dict);
	if (ret < 0) {
		kvtd_log(KVTD_LOG_ERR, "nvme.codec_dict = %s: %s", path,
			 ret == -EBADMSG ? "not a kvtier dictionary, or damaged"
					 : kvt_strerror(ret));
		return -EINVAL;
	}
	kvt_chain_set_dict(d->nvme_chain, d->nvme_dict);
	/* the dictionary's own geometry must pass: else its RoPE frame is not the chain's */
	kvt_dict_geom(d->nvme_dict, &g, &theta);
	if (kvt_chain_usable(d->nvme_chain, &g)) {
		kvtd_log(KVTD_LOG_ERR,
			 "nvme.codec_dict = %s: calibrated with RoPE base %g, not the one of "
			 "nvme.codec = %s",
			 path, theta, kvt_chain_name(d->nvme_chain));
		return -EINVAL;
	}
	kvtd_log(KVTD_LOG_INFO,
		 "nvme.codec_dict = %s: %u layers x %u kv heads x %u dims, id %016llx; blocks of "
		 "other models are stored raw",
		 path, g.n_layers, g.n_kv_heads, g.head_dim,
		 (unsigned long long)kvt_dict_id(d->nvme_dict));
	return 0;
}

/* Test hook: KVTIER_TEST_NVME_FAULT="read:EIO:N" fails every Nth read (or write) with EIO or
 * ENOSPC.  Never set in production; documented for the tests only. */
static int fault_op, fault_err;
static unsigned fault_every, fault_count;
/* KVTIER_TEST_NVME_SCAN_GATE=FILE: the recovery scan's first read waits until FILE exists,
 * so that a test sees the daemon recovering for as long as it needs (an event, no timing). */
static const char *scan_gate;

static int fault_hook(int op, uint64_t off, uint32_t len)
{
	if (scan_gate && op == KVT_TIER_OP_READ) {
		/* Only the scan reads before the recovery ends; it reads on its own thread. */
		while (access(scan_gate, F_OK) != 0)
			usleep(1000);
		scan_gate = NULL;
	}
	if (op != fault_op || !fault_every)
		return 0;
	return ++fault_count % fault_every == 0 ? -fault_err : 0;
}

static void fault_setup(struct kvt_tier_conf *tc)
{
	const char *f = getenv("KVTIER_TEST_NVME_FAULT");
	char op[16], err[16];

	scan_gate = getenv("KVTIER_TEST_NVME_SCAN_GATE");
	if (scan_gate && *scan_gate) {
		tc->io_hook = fault_hook;
		kvtd_log(KVTD_LOG_WARN, "NVMe recovery waits for %s (test hook)", scan_gate);
	} else {
		scan_gate = NULL;
	}
	if (!f || sscanf(f, "%15[a-z]:%15[A-Z]:%u", op, err, &fault_every) != 3)
		return;
	fault_op = !strcmp(op, "read") ? KVT_TIER_OP_READ : KVT_TIER_OP_WRITE;
	fault_err = !strcmp(err, "ENOSPC") ? ENOSPC : EIO;
	tc->io_hook = fault_hook;
	kvtd_log(KVTD_LOG_WARN, "NVMe fault injection on: %s", f);
}

/* The NVMe class's open: nvme.enabled, its chain and dictionary, its files. */
static int nvme_open(struct kvtd *d, struct kvtd_tier *x)
{
	struct kvt_tier_conf tc;
	char *paths_buf = NULL, *save, *tok;
	const char *paths[KVTD_MAX_NVME_PATHS + 1] = {0};
	int np = 0, ret;

	if (!d->cfg.nvme_enabled)
		return 0;
	/* auto: the default chain here; a calibrated model's own (codec_auto.c) per block */
	ret = kvt_chain_parse(kvtd_auto_is(d->cfg.nvme_codec) ? KVTD_AUTO_NVME_DEFAULT
							      : d->cfg.nvme_codec,
			      &d->nvme_chain);
	if (ret < 0) {
		kvtd_log(KVTD_LOG_ERR, "nvme.codec = %s: not a codec chain (see codecs/CODECS.md)",
			 d->cfg.nvme_codec);
		return -EINVAL;
	}
	ret = nvme_dict_setup(d);
	if (ret < 0)
		return ret;
	paths_buf = strdup(d->cfg.nvme_paths);
	if (!paths_buf)
		return -ENOMEM;
	for (tok = strtok_r(paths_buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ')
			tok++;
		if (!*tok)
			continue;
		if (np == KVTD_MAX_NVME_PATHS) {
			kvtd_log(KVTD_LOG_ERR, "nvme.paths names more than %d files (from %s on)",
				 KVTD_MAX_NVME_PATHS, tok);
			free(paths_buf);
			return -EINVAL;
		}
		paths[np++] = tok;
	}
	memset(&tc, 0, sizeof(tc));
	tc.name = "nvme";
	tc.capacity_bytes = d->cfg.nvme_capacity;
	tc.paths = paths;
	tc.queue_depth = d->cfg.nvme_queue_depth;
	tc.flags = (d->cfg.nvme_io_uring ? 0 : KVT_TIER_F_NO_URING) |
		   (d->cfg.nvme_direct ? 0 : KVT_TIER_F_NO_DIRECT) |
		   (d->cfg.nvme_fsync ? KVT_TIER_F_FSYNC : 0) | KVT_TIER_F_BG_RECOVER;
	tc.log = kvtd_tier_log;
	tc.log_arg = (void *)"nvme";
	fault_setup(&tc);
	d->nvme_ops = x->cls->ops;
	ret = d->nvme_ops->open(&tc, &d->nvme);
	x->t = d->nvme;
	free(paths_buf);
	if (ret < 0) {
		kvtd_log(KVTD_LOG_ERR, "cannot open the NVMe tier (%s): %s", d->cfg.nvme_paths,
			 kvt_strerror(ret));
		d->nvme = x->t = NULL;
		return ret;
	}
	/* The records come in from kvtd_run on: see kvtd_nvme_recover_start(). */
	d->nvme_recovering = true;
	d->m.nvme_recovering = 1;
	if (d->nvme_ops->event_fd) {
		d->nvme_ev.kind = EV_TIER;
		d->nvme_ev.p = NULL;
		struct epoll_event ee = {.events = EPOLLIN, .data.ptr = &d->nvme_ev};
		if (epoll_ctl(d->ep, EPOLL_CTL_ADD, d->nvme_ops->event_fd(d->nvme), &ee) < 0)
			return -errno;
	}
	/* A raw chain is a copy: no threads for that. */
	if (kvt_chain_id(d->nvme_chain) != kvt_chain_id(d->raw_chain) &&
	    d->cfg.nvme_codec_threads) {
		ret = kvtd_cpool_init(d, d->cfg.nvme_codec_threads);
		if (ret < 0)
			kvtd_log(KVTD_LOG_WARN, "no codec threads (%s): %s runs on the event loop",
				 kvt_strerror(ret), kvt_chain_name(d->nvme_chain));
	}
	return 0;
}

/* The scan is over: hand the records to the index, and report. */
static int recovery_finish(struct kvtd *d)
{
	struct kvt_tier_stats st;
	int ret;

	ret = d->nvme_ops->recover(d->nvme, recover_cb, d);
	d->nvme_recovering = false;
	d->m.nvme_recovering = 0;
	if (ret < 0) {
		kvtd_log(KVTD_LOG_ERR, "NVMe recovery failed: %s", kvt_strerror(ret));
		return ret;
	}
	d->nvme_ops->stats(d->nvme, &st);
	d->m.nvme_recovery_dropped_corrupt_total += st.scan_corrupt;
	d->m.nvme_recovery_dropped_unreadable_total += st.scan_unreadable;
	d->m.nvme_recovery_dropped_cut_total += st.cut_records;
	d->m.nvme_recovery_dropped_stale_total += st.stale;
	d->m.nvme_recovery_scanned_bytes = d->m.nvme_recovery_total_bytes;
	kvtd_log(KVTD_LOG_INFO,
		 "NVMe tier: %llu blocks recovered, codec %s; records dropped: %llu corrupt, "
		 "%llu unreadable, %llu cut off a truncated file, %llu stale copies, %llu of "
		 "another codec or dictionary, %llu without "
		 "room%s",
		 (unsigned long long)d->m.nvme_recovered_total, kvt_chain_name(d->nvme_chain),
		 (unsigned long long)d->m.nvme_recovery_dropped_corrupt_total,
		 (unsigned long long)d->m.nvme_recovery_dropped_unreadable_total,
		 (unsigned long long)d->m.nvme_recovery_dropped_cut_total,
		 (unsigned long long)d->m.nvme_recovery_dropped_stale_total,
		 (unsigned long long)d->m.nvme_recovery_dropped_foreign_total,
		 (unsigned long long)d->m.nvme_recovery_dropped_unplaceable_total,
		 st.lost_bytes ? "; part of a truncated file lost, see above" : "");
#ifdef KVT_HAVE_SYSTEMD
	sd_notifyf(0, "STATUS=serving on %s; %llu NVMe blocks recovered",
		   d->sock_path[0] ? d->sock_path : "systemd socket",
		   (unsigned long long)d->m.nvme_recovered_total);
#endif
	return 0;
}

/* Progress of the recovery scan; finishes it when the scan is over. */
static void recovery_poll(struct kvtd *d)
{
	uint64_t done = 0, total = 0;
	int r = d->nvme_ops->recovering(d->nvme, &done, &total);

	d->m.nvme_recovery_scanned_bytes = done;
	d->m.nvme_recovery_total_bytes = total;
	if (r == 0) {
		if (recovery_finish(d) < 0)
			d->stop = true; /* logged; the tier is unusable */
		return;
	}
#ifdef KVT_HAVE_SYSTEMD
	sd_notifyf(0,
		   "STATUS=serving (NVMe blocks are misses until recovered): recovery %llu of "
		   "%llu MiB scanned",
		   (unsigned long long)(done >> 20), (unsigned long long)(total >> 20));
#endif
}

int kvtd_nvme_recover_start(struct kvtd *d)
{
	uint64_t total = 0;
	int r;

	if (!d->nvme || !d->nvme_recovering)
		return 0;
	r = d->nvme_ops->recover_start(d->nvme);
	if (r < 0) {
		kvtd_log(KVTD_LOG_ERR, "NVMe recovery: %s", kvt_strerror(r));
		return r;
	}
	if (r == 0)
		return recovery_finish(d);
	d->nvme_ops->recovering(d->nvme, NULL, &total);
	d->m.nvme_recovery_total_bytes = total;
	kvtd_log(KVTD_LOG_INFO,
		 "NVMe tier: recovering %llu MiB of records while serving (misses until then)",
		 (unsigned long long)(total >> 20));
	return 0;
}

void kvtd_nvme_event(struct kvtd *d)
{
	if (d->nvme && d->nvme_ops->complete)
		d->nvme_ops->complete(d->nvme);
	if (d->nvme && d->nvme_recovering)
		recovery_poll(d);
}

void kvtd_nvme_submit(struct kvtd *d)
{
	if (d->nvme && d->nvme_ops->submit)
		d->nvme_ops->submit(d->nvme);
}

void kvtd_nvme_stats(struct kvtd *d, struct kvt_tier_stats *st)
{
	memset(st, 0, sizeof(*st));
	if (d->nvme && d->nvme_recovering)
		d->nvme_ops->recovering(d->nvme, &d->m.nvme_recovery_scanned_bytes, NULL);
	if (d->nvme)
		d->nvme_ops->stats(d->nvme, st);
	else
		st->capacity_bytes = d->cfg.nvme_capacity;
}

/* ---------------------------------------------------------------------------------------
 * The NVMe tier's entry in the tier list
 */
static void nvme_close(struct kvtd *d, struct kvtd_tier *x)
{
	x->cls->ops->close(x->t);
	x->t = d->nvme = NULL;
}

static bool nvme_has(struct kvtd *d, uint32_t i)
{
	/* A record being written is a copy: a get is served from it meanwhile. */
	return B(d, i)->on_nvme || B(d, i)->io == KVTD_IO_DEMOTE;
}

static void nvme_drop_copy(struct kvtd *d, uint32_t i)
{
	kvtd_demote_forget(d, B(d, i));
	kvtd_nvme_free_copy(d, i);
}

static bool nvme_usable(const struct kvtd *d)
{
	return nvme_on(d);
}

static void nvme_tick(struct kvtd *d)
{
	if (d->nvme_recovering)
		recovery_poll(d);
}

static void nvme_usage(struct kvtd *d, uint64_t *used, uint64_t *leaving, uint64_t *cap)
{
	struct kvt_tier_stats st;

	d->nvme_ops->stats(d->nvme, &st);
	*used = st.used_bytes;
	*leaving = 0;
	*cap = st.capacity_bytes;
}

static int nvme_evict(struct kvtd *d, bool bg)
{
	(void)bg;
	return nvme_evict_one(d);
}

const struct kvtd_tier_class kvtd_nvme_class = {
    .name = "nvme",
    .id = KVTD_TIER_NVME,
    .ops = &kvt_tier_nvme_ops,
    .high_off = offsetof(struct kvtd_config, nvme_high),
    .low_off = offsetof(struct kvtd_config, nvme_low),
    .open = nvme_open,
    .close = nvme_close,
    .has = nvme_has,
    .drop_copy = nvme_drop_copy,
    .durable = true,
    .usable = nvme_usable,
    .tick = nvme_tick,
    .usage = nvme_usage,
    .evict_one = nvme_evict,
    .take = kvtd_nvme_take,
    .take_from = KVTD_TIER_HOST,
    .promote = kvtd_nvme_promote,
};
