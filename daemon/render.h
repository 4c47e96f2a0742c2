/* SPDX-License-Identifier: MIT */
/*
 * render.h - the admin reports, text or JSON (render.c).
 */
#ifndef KVTD_RENDER_H
#define KVTD_RENDER_H

#include <stdbool.h>
#include <stddef.h>

struct kvtd;
struct client;
struct kvtd_blk;

/* A growing text buffer; oom: a printf failed, the report is lost (ENOMEM). */
struct sbuf {
	char *p;
	size_t len, cap;
	bool oom;
};

void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void render_status(struct kvtd *d, struct sbuf *b, bool json);
/* The tiers' rows (JSON: objects, comma-separated); detail: kvtierctl tiers. */
void render_tiers(struct kvtd *d, struct sbuf *b, bool json, bool detail);
/* Prometheus text exposition. */
void render_metrics(struct kvtd *d, struct sbuf *b);
/* kvtierctl --json metrics: the counters, tiers, build facts and histograms as one object. */
void render_metrics_json(struct kvtd *d, struct sbuf *b);
/* The connections self may see (an admin sees all, a user its own uid's). */
void render_clients(struct kvtd *d, struct client *self, struct sbuf *b, bool json);
void render_config(struct kvtd *d, struct sbuf *b, bool json);
/* The fastest tier holding the block; a block in neither host nor NVMe is in the pool. */
const char *blk_tier_name(const struct kvtd_blk *k);

#endif
