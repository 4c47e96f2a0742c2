/* SPDX-License-Identifier: MIT */
/*
 * tierlist.c - the tier list: the known tier classes, the list built from tiers.order, the
 * walk down it (kvtd_tier_below) and the watermark pass over it.
 *
 * Adding a tier: its storage in tiers/tier_NAME.c behind struct kvt_tier_ops, its daemon
 * side as a struct kvtd_tier_class (NAME_place.c), one line in classes[] below, and its name
 * in tiers.order.  docs/ARCHITECTURE.md ("Adding a tier") says what else a tier may need.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "place_int.h"
#include "log.h"

/* Every tier placement knows, whether tiers.order lists it or not. */
static const struct kvtd_tier_class *const classes[] = {
    &kvtd_gpu_class,
    &kvtd_host_class,
    &kvtd_nvme_class,
};

const struct kvtd_tier_class *kvtd_tier_class_find(const char *name, size_t len)
{
	for (size_t k = 0; k < sizeof(classes) / sizeof(classes[0]); k++) {
		if (strlen(classes[k]->name) == len && !memcmp(classes[k]->name, name, len))
			return classes[k];
	}
	return NULL;
}

/* Parses tiers.order (its syntax checked by kvtd_config_validate) into d->tiers. */
static int parse_order(struct kvtd *d)
{
	const char *p = d->cfg.tiers_order;

	d->ntiers = 0;
	memset(d->tier_at, 0, sizeof(d->tier_at));
	while (*p) {
		size_t len = strcspn(p, ",");
		size_t n = len;
		const struct kvtd_tier_class *c;
		struct kvtd_tier *x;

		while (n && p[n - 1] == ' ')
			n--;
		/* The remote tier is keyed, not a class of the list (remote_place.c): it is
		 * the bottom whenever remote.nodes is set, so it may only be named last. */
		if (n == 6 && !memcmp(p, "remote", 6)) {
			if (p[len]) {
				kvtd_log(KVTD_LOG_ERR,
					 "tiers.order = %s: remote must be the last tier",
					 d->cfg.tiers_order);
				return -EINVAL;
			}
			break;
		}
		c = kvtd_tier_class_find(p, n);
		if (!c) {
			kvtd_log(KVTD_LOG_ERR,
				 "tiers.order = %s: no tier called %.*s (known: gpu, "
				 "host, nvme, remote)",
				 d->cfg.tiers_order, (int)n, p);
			return -EINVAL;
		}
		if (d->tier_at[c->id] || d->ntiers == KVTD_NTIERS) {
			kvtd_log(KVTD_LOG_ERR, "tiers.order = %s: %s listed twice",
				 d->cfg.tiers_order, c->name);
			return -EINVAL;
		}
		x = &d->tiers[d->ntiers];
		memset(x, 0, sizeof(*x));
		x->cls = c;
		x->level = d->ntiers++;
		d->tier_at[c->id] = x;
		p += len;
		while (*p == ',' || *p == ' ')
			p++;
	}
	return 0;
}

/*
 * Blocks move down the list by the lower tier's take(), which knows the one tier it takes
 * from: so each tier below the first must take from the tier listed right above it, and the
 * host tier must be listed (puts land there).
 */
static int check_moves(struct kvtd *d)
{
	if (!d->tier_at[KVTD_TIER_HOST]) {
		kvtd_log(KVTD_LOG_ERR, "tiers.order = %s: the host tier must be listed",
			 d->cfg.tiers_order);
		return -EINVAL;
	}
	for (uint32_t k = 1; k < d->ntiers; k++) {
		const struct kvtd_tier_class *up = d->tiers[k - 1].cls, *c = d->tiers[k].cls;

		if (!c->take || c->take_from != (int)up->id) {
			kvtd_log(KVTD_LOG_ERR,
				 "tiers.order = %s: blocks cannot move from %s down to %s (orders "
				 "placement can move along: gpu,host,nvme and any part of it that "
				 "keeps host)",
				 d->cfg.tiers_order, up->name, c->name);
			return -EINVAL;
		}
	}
	return 0;
}

int kvtd_tiers_init(struct kvtd *d)
{
	int ret = parse_order(d);

	if (ret == 0)
		ret = check_moves(d);
	for (uint32_t k = 0; ret == 0 && k < d->ntiers; k++) {
		struct kvtd_tier *x = &d->tiers[k];

		if (x->cls->open)
			ret = x->cls->open(d, x);
	}
	return ret;
}

void kvtd_tiers_fini(struct kvtd *d)
{
	for (uint32_t k = d->ntiers; k-- > 0;) {
		struct kvtd_tier *x = &d->tiers[k];

		if (x->t && x->cls->close)
			x->cls->close(d, x);
	}
}

struct kvtd_tier *kvtd_tier_get(struct kvtd *d, enum kvtd_tier_id id)
{
	return (unsigned)id < KVTD_NTIERS ? d->tier_at[id] : NULL;
}

struct kvtd_tier *kvtd_tier_below(struct kvtd *d, const struct kvtd_tier *x)
{
	for (uint32_t k = x->level + 1; k < d->ntiers; k++) {
		struct kvtd_tier *y = &d->tiers[k];

		if (y->t && (!y->cls->usable || y->cls->usable(d)))
			return y;
	}
	return NULL;
}

bool kvtd_copy_elsewhere(struct kvtd *d, uint32_t i, const struct kvtd_tier *x)
{
	for (uint32_t k = 0; k < d->ntiers; k++) {
		const struct kvtd_tier *y = &d->tiers[k];

		if (y != x && y->t && y->cls->has(d, i))
			return true;
	}
	return false;
}

void kvtd_tier_log(void *arg, int level, const char *msg)
{
	kvtd_log(level <= 3   ? KVTD_LOG_ERR
		 : level == 4 ? KVTD_LOG_WARN
			      : KVTD_LOG_INFO,
		 "%s: %s", (const char *)arg, msg);
}

static double cfg_ratio(const struct kvtd *d, size_t off)
{
	double r;

	memcpy(&r, (const char *)&d->cfg + off, sizeof(r));
	return r;
}

/* Above its high watermark, a tier's least recently used blocks leave until it is at its low
 * one (those already on their way out count as gone). */
static void watermark_pass(struct kvtd *d, const struct kvtd_tier *x)
{
	uint64_t used, leaving, cap, high, low;

	x->cls->usage(d, &used, &leaving, &cap);
	high = (uint64_t)(cfg_ratio(d, x->cls->high_off) * (double)cap);
	low = (uint64_t)(cfg_ratio(d, x->cls->low_off) * (double)cap);
	if (used <= high)
		return;
	while (used - leaving > low) {
		if (x->cls->evict_one(d, true) < 0)
			break;
		x->cls->usage(d, &used, &leaving, &cap);
	}
}

void kvtd_watermarks(struct kvtd *d)
{
	/* Top down: what a tier sends down is in the tier below before its own pass. */
	for (uint32_t k = 0; k < d->ntiers; k++) {
		const struct kvtd_tier *x = &d->tiers[k];

		if (!x->t)
			continue;
		if (x->cls->tick)
			x->cls->tick(d);
		if (x->cls->usable && !x->cls->usable(d))
			continue;
		watermark_pass(d, x);
	}
}
