/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <ini.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "codec_bq.h"
#include "config.h"
#include "kvt_proto.h"

enum ktype { K_STR, K_U32, K_U64, K_SIZE, K_BOOL, K_RATIO, K_LOGLEVEL };

/* The one table of keys: parsing, printing, defaults and docs all come from it. */
struct key {
	const char *section, *name;
	enum ktype type;
	size_t off, len;
	const char *def;
	uint64_t min, max;
};

#define F(field) offsetof(struct kvtd_config, field), sizeof(((struct kvtd_config *)0)->field)
static const struct key keys[] = {
    {"daemon", "socket", K_STR, F(socket), "", 0, 0},
    {"daemon", "tick_ms", K_U32, F(tick_ms), "100", 1, 60000},
    {"daemon", "spin_us", K_U32, F(spin_us), "50", 0, 1000000},
    {"daemon", "max_clients", K_U32, F(max_clients), "256", 1, 65536},
    {"daemon", "max_clients_per_uid", K_U32, F(max_clients_per_uid), "128", 1, 65536},
    {"daemon", "admin_reserved_clients", K_U32, F(admin_reserved), "4", 0, 65535},
    {"daemon", "handshake_timeout_ms", K_U32, F(handshake_timeout_ms), "5000", 1, 600000},
    {"daemon", "user_admin_rate", K_U32, F(user_admin_rate), "20", 0, 1000000},
    {"daemon", "ring_entries", K_U32, F(ring_entries), "256", 8, 65536},
    {"daemon", "log_level", K_LOGLEVEL, F(log_level), "info", 0, 0},
    {"daemon", "admin_group", K_STR, F(admin_group), "kvtier-admin", 0, 0},
    {"daemon", "tenant_salt", K_STR, F(tenant_salt), "", 0, 0},
    /* calibrations of codec = auto (daemon/codec_auto.c) */
    {"daemon", "state_dir", K_STR, F(state_dir), "/var/lib/kvtier", 0, 0},
    {"host", "capacity", K_SIZE, F(host_capacity), "1GiB", 1u << 20, 1ull << 46},
    {"host", "high_watermark", K_RATIO, F(host_high), "0.95", 0, 0},
    {"host", "low_watermark", K_RATIO, F(host_low), "0.85", 0, 0},
    {"host", "codec", K_STR, F(host_codec), "raw", 0, 0},
    {"host", "max_err", K_RATIO, F(host_max_err), "0.02", 0, 0}, /* codec = auto's budget */
    {"host", "tenant_hold_max", K_RATIO, F(host_hold_max), "0.5", 0, 0},
    /* The index numbers blocks with 32 bits and sizes its hash table in powers of two. */
    {"index", "max_blocks", K_U64, F(max_blocks), "1048576", 1024, 1ull << 31},
    {"index", "max_layouts_per_tenant", K_U32, F(max_layouts_per_tenant), "1024", 1, 1u << 20},
    {"nvme", "enabled", K_BOOL, F(nvme_enabled), "false", 0, 0},
    {"nvme", "paths", K_STR, F(nvme_paths), "/var/lib/kvtier/nvme0.slots", 0, 0},
    {"nvme", "capacity", K_SIZE, F(nvme_capacity), "16GiB", 1u << 20, 1ull << 50},
    {"nvme", "queue_depth", K_U32, F(nvme_queue_depth), "32", 1, 4096},
    {"nvme", "direct", K_BOOL, F(nvme_direct), "true", 0, 0},
    {"nvme", "io_uring", K_BOOL, F(nvme_io_uring), "true", 0, 0},
    {"nvme", "fsync", K_BOOL, F(nvme_fsync), "false", 0, 0},
    {"nvme", "admit_on_second_use", K_BOOL, F(nvme_admit_second), "false", 0, 0},
    {"nvme", "codec", K_STR, F(nvme_codec), "raw", 0, 0},
    {"nvme", "codec_threads", K_U32, F(nvme_codec_threads), "2", 0, 8},
    {"nvme", "codec_dict", K_STR, F(nvme_codec_dict), "", 0, 0},
    {"nvme", "max_err", K_RATIO, F(nvme_max_err), "0.02", 0, 0}, /* codec = auto's budget */
    /* the disk's read bandwidth for codec = auto's speed rule (0: measured at calibration) */
    {"nvme", "bandwidth", K_SIZE, F(nvme_bandwidth), "0", 0, 1ull << 40},
    {"nvme", "high_watermark", K_RATIO, F(nvme_high), "0.95", 0, 0},
    {"nvme", "low_watermark", K_RATIO, F(nvme_low), "0.85", 0, 0},
    {"gpu", "device", K_STR, F(gpu_device), "", 0, 0},
    {"gpu", "capacity", K_SIZE, F(gpu_capacity), "0", 0, 1ull << 46},
    {"gpu", "codec", K_STR, F(gpu_codec), "raw", 0, 0},
    {"gpu", "high_watermark", K_RATIO, F(gpu_high), "0.95", 0, 0},
    {"gpu", "low_watermark", K_RATIO, F(gpu_low), "0.85", 0, 0},
    {"gpu", "promote_on_get", K_BOOL, F(gpu_promote), "true", 0, 0},
    {"tiers", "order", K_STR, F(tiers_order), "gpu,host,nvme", 0, 0},
    {"remote", "nodes", K_STR, F(remote_nodes), "", 0, 0},
    {"remote", "auth_file", K_STR, F(remote_auth_file), "", 0, 0},
    {"remote", "ttl", K_U32, F(remote_ttl), "86400", 0, 1u << 30},
    {"remote", "codec", K_STR, F(remote_codec), "raw", 0, 0},
    {"remote", "lookup_timeout_us", K_U32, F(remote_lookup_timeout_us), "2000", 100, 10000000},
    {"remote", "get_timeout_us", K_U32, F(remote_get_timeout_us), "50000", 100, 10000000},
    {"remote", "put_timeout_ms", K_U32, F(remote_put_timeout_ms), "1000", 1, 600000},
    {"remote", "threads", K_U32, F(remote_threads), "2", 1, 16},
    {"remote", "queue_max", K_U32, F(remote_queue_max), "64", 1, 65536},
};
#undef F

static const char *const levels[] = {"error", "warn", "info", "debug"};

int kvtd_parse_size(const char *s, uint64_t *out)
{
	return kvt_parse_size(s, out);
}

static int parse_bool(const char *s, bool *out)
{
	if (!strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on") ||
	    !strcmp(s, "1")) {
		*out = true;
		return 0;
	}
	if (!strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "off") ||
	    !strcmp(s, "0")) {
		*out = false;
		return 0;
	}
	return -EINVAL;
}

static int set_key(struct kvtd_config *c, const struct key *k, const char *v, FILE *err)
{
	char *p = (char *)c + k->off, *end;
	uint64_t u;
	uint64_t sz;
	double d;
	bool b;

	switch (k->type) {
	case K_STR:
		if (strlen(v) >= k->len)
			goto bad;
		/* Whole field rewritten: no bytes of an older, longer value survive. */
		memset(p, 0, k->len);
		memcpy(p, v, strlen(v));
		return 0;
	case K_U32:
	case K_U64:
		if (kvt_parse_num(v, &u, &end) < 0 || *end || u < k->min || u > k->max)
			goto bad;
		if (k->type == K_U32)
			*(uint32_t *)(void *)p = (uint32_t)u;
		else
			*(uint64_t *)(void *)p = u;
		return 0;
	case K_SIZE:
		if (kvtd_parse_size(v, &sz) < 0 || sz < k->min || sz > k->max)
			goto bad;
		*(uint64_t *)(void *)p = sz;
		return 0;
	case K_BOOL:
		if (parse_bool(v, &b) < 0)
			goto bad;
		*(bool *)p = b;
		return 0;
	case K_RATIO:
		errno = 0;
		d = strtod(v, &end);
		if (errno || end == v || *end || !(d > 0.0 && d <= 1.0))
			goto bad;
		*(double *)(void *)p = d;
		return 0;
	case K_LOGLEVEL:
		for (int i = 0; i < 4; i++) {
			if (!strcasecmp(v, levels[i])) {
				*(int *)(void *)p = i;
				return 0;
			}
		}
		goto bad;
	}
bad:
	if (err) {
		const char *what = k->type == K_SIZE	   ? "a size such as 64MiB"
				   : k->type == K_BOOL	   ? "true or false"
				   : k->type == K_RATIO	   ? "a ratio in (0, 1]"
				   : k->type == K_LOGLEVEL ? "error, warn, info or debug"
				   : k->type == K_STR	   ? "a shorter string"
							   : "an integer in range";
		fprintf(err, "kvtierd: invalid value '%s' for %s.%s: expected %s", v, k->section,
			k->name, what);
		if (k->type == K_U32 || k->type == K_U64 || k->type == K_SIZE)
			fprintf(err, " [%llu, %llu]", (unsigned long long)k->min,
				(unsigned long long)k->max);
		fputc('\n', err);
	}
	return -EINVAL;
}

void kvtd_config_defaults(struct kvtd_config *c)
{
	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		int ret = set_key(c, &keys[i], keys[i].def, stderr);
		(void)ret;
	}
}

int kvtd_config_set_kv(struct kvtd_config *c, const char *section, const char *key,
		       const char *value, FILE *err)
{
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		if (!strcmp(keys[i].section, section) && !strcmp(keys[i].name, key))
			return set_key(c, &keys[i], value, err);
	}
	if (err)
		fprintf(err, "kvtierd: unknown configuration key %s.%s\n", section, key);
	return -EINVAL;
}

int kvtd_config_set(struct kvtd_config *c, const char *a, FILE *err)
{
	char sec[64], key[64];
	const char *dot = strchr(a, '.'), *eq = strchr(a, '=');

	if (!dot || !eq || dot > eq || (size_t)(dot - a) >= sizeof(sec) ||
	    (size_t)(eq - dot - 1) >= sizeof(key)) {
		if (err)
			fprintf(err, "kvtierd: bad override '%s': expected section.key=value\n", a);
		return -EINVAL;
	}
	memcpy(sec, a, (size_t)(dot - a));
	sec[dot - a] = 0;
	memcpy(key, dot + 1, (size_t)(eq - dot - 1));
	key[eq - dot - 1] = 0;
	return kvtd_config_set_kv(c, sec, key, eq + 1, err);
}

struct load_ctx {
	struct kvtd_config *c;
	FILE *err;
	const char *path;
	int bad;
};

static int ini_cb(void *user, const char *section, const char *name, const char *value)
{
	struct load_ctx *x = user;

	if (kvtd_config_set_kv(x->c, section, name, value, x->err) < 0) {
		x->bad = 1;
		return 0; /* inih reports the line */
	}
	return 1;
}

int kvtd_config_load(struct kvtd_config *c, const char *path, FILE *err)
{
	struct load_ctx x = {c, err, path, 0};
	FILE *f = fopen(path, "r");
	int line;

	if (!f)
		return -errno;
	line = ini_parse_file(f, ini_cb, &x);
	fclose(f);
	if (line != 0) {
		if (err)
			fprintf(err, "kvtierd: %s:%d: configuration error\n", path, line);
		return -EINVAL;
	}
	return 0;
}

/*
 * tiers.order: names of lower-case letters, digits and '_', comma-separated, each once, host
 * among them (clients' blocks land there).  Which names are tiers, and which orders placement
 * can move blocks along, the daemon checks when it builds the list (kvtd_tiers_init).
 */
static int check_order(const char *order, FILE *err)
{
	char seen[8][32];
	unsigned n = 0;
	bool host = false;

	for (const char *p = order;;) {
		size_t len = strcspn(p, ",");
		const char *why = NULL;

		while (len && p[len - 1] == ' ')
			len--;
		if (!len || len >= sizeof(seen[0]))
			why = "an empty or overlong name";
		for (size_t k = 0; !why && k < len; k++) {
			if (!(p[k] >= 'a' && p[k] <= 'z') && !(p[k] >= '0' && p[k] <= '9') &&
			    p[k] != '_')
				why = "a name with a character other than a-z, 0-9, _";
		}
		for (unsigned k = 0; !why && k < n; k++) {
			if (strlen(seen[k]) == len && !memcmp(seen[k], p, len))
				why = "a tier named twice";
		}
		if (!why && n == sizeof(seen) / sizeof(seen[0]))
			why = "more than 8 tiers";
		if (why) {
			if (err)
				fprintf(
				    err,
				    "kvtierd: tiers.order = %s: %s (expected tier names, fastest "
				    "first, e.g. gpu,host,nvme)\n",
				    order, why);
			return -EINVAL;
		}
		memcpy(seen[n], p, len);
		seen[n][len] = 0;
		host |= !strcmp(seen[n], "host");
		n++;
		p += strcspn(p, ",");
		if (!*p)
			break;
		p++;
		while (*p == ' ')
			p++;
	}
	if (!host) {
		if (err)
			fprintf(err, "kvtierd: tiers.order = %s: the host tier must be listed\n",
				order);
		return -EINVAL;
	}
	return 0;
}

int kvtd_config_validate(const struct kvtd_config *c, FILE *err)
{
	if (c->admin_reserved >= c->max_clients) {
		if (err)
			fprintf(err, "kvtierd: daemon.admin_reserved_clients must be below "
				     "daemon.max_clients\n");
		return -EINVAL;
	}
	if (c->host_low >= c->host_high) {
		if (err)
			fprintf(err,
				"kvtierd: host.low_watermark must be below host.high_watermark\n");
		return -EINVAL;
	}
	if (c->nvme_low >= c->nvme_high) {
		if (err)
			fprintf(err,
				"kvtierd: nvme.low_watermark must be below nvme.high_watermark\n");
		return -EINVAL;
	}
	if (c->gpu_low >= c->gpu_high) {
		if (err)
			fprintf(err,
				"kvtierd: gpu.low_watermark must be below gpu.high_watermark\n");
		return -EINVAL;
	}
	/* The GPU kernels quantize KIVI-style to 8 or 4 bits (gpu/GPU.md). */
	if (strcmp(c->gpu_codec, "raw") && strcmp(c->gpu_codec, "int8") &&
	    strcmp(c->gpu_codec, "int4")) {
		if (err)
			fprintf(err,
				"kvtierd: gpu.codec = %s: the GPU tier keeps blocks raw, int8 or "
				"int4\n",
				c->gpu_codec);
		return -EINVAL;
	}
	if (c->gpu_capacity && c->gpu_capacity < (1u << 20)) {
		if (err)
			fprintf(err, "kvtierd: gpu.capacity must be 0 (off) or at least 1 MiB\n");
		return -EINVAL;
	}
	if (c->ring_entries & (c->ring_entries - 1)) {
		if (err)
			fprintf(err, "kvtierd: daemon.ring_entries must be a power of two\n");
		return -EINVAL;
	}
	/* Clients code host blocks on the paths an engine waits on (host_place.c): GPU-speed
	 * chains only, i.e. raw or bq (a CUDA and an AVX2 coder, the same bytes). */
	if (strcmp(c->host_codec, "raw") != 0 && strcmp(c->host_codec, "auto") != 0) {
		struct kvt_chain *hc = NULL;
		int r = kvt_chain_parse(c->host_codec, &hc);

		if (r < 0 || kvt_bq_chain_is(hc) <= 0) {
			if (err)
				fprintf(
				    err,
				    "kvtierd: host.codec = %s: %s; the host tier takes raw, auto "
				    "or a "
				    "bq chain such as bq or bq:k=0.04,v=0.02 (GPU-speed: encoded "
				    "and decoded by the clients on the paths an engine waits "
				    "on); slower chains belong in nvme.codec\n",
				    c->host_codec,
				    r < 0 ? "not a codec chain (codecs/CODECS.md)"
					  : "not a GPU-speed chain");
			kvt_chain_free(hc);
			return -EINVAL;
		}
		kvt_chain_free(hc);
	}
	if (check_order(c->tiers_order, err) < 0)
		return -EINVAL;
	if (!c->remote_nodes[0] && strstr(c->tiers_order, "remote")) {
		if (err)
			fprintf(err,
				"kvtierd: tiers.order = %s lists remote, but remote.nodes is "
				"empty (the cluster's seed nodes, host:port,...)\n",
				c->tiers_order);
		return -EINVAL;
	}
	for (const char *p = c->tenant_salt; *p; p++) {
		if (!strchr("0123456789abcdefABCDEF", *p)) {
			if (err)
				fprintf(err, "kvtierd: daemon.tenant_salt must be hexadecimal\n");
			return -EINVAL;
		}
	}
	return 0;
}

size_t kvtd_config_nkeys(void)
{
	return sizeof(keys) / sizeof(keys[0]);
}

int kvtd_config_value(const struct kvtd_config *c, size_t i, const char **section,
		      const char **name, char *val, size_t n)
{
	const struct key *k;
	const char *p;

	if (i >= kvtd_config_nkeys())
		return -EINVAL;
	k = &keys[i];
	p = (const char *)c + k->off;
	*section = k->section;
	*name = k->name;
	switch (k->type) {
	case K_STR:
		snprintf(val, n, "%s", p);
		break;
	case K_U32:
		snprintf(val, n, "%u", *(const uint32_t *)(const void *)p);
		break;
	case K_U64:
	case K_SIZE:
		snprintf(val, n, "%llu", (unsigned long long)*(const uint64_t *)(const void *)p);
		break;
	case K_BOOL:
		snprintf(val, n, "%s", *(const bool *)p ? "true" : "false");
		break;
	case K_RATIO:
		snprintf(val, n, "%.6g", *(const double *)(const void *)p);
		break;
	case K_LOGLEVEL:
		snprintf(val, n, "%s", levels[*(const int *)(const void *)p & 3]);
		break;
	}
	return 0;
}

void kvtd_config_print(const struct kvtd_config *c, FILE *out)
{
	const char *sec = "", *section, *name;
	char val[1100];

	for (size_t i = 0; i < kvtd_config_nkeys(); i++) {
		kvtd_config_value(c, i, &section, &name, val, sizeof(val));
		if (strcmp(sec, section)) {
			fprintf(out, "%s[%s]\n", i ? "\n" : "", section);
			sec = section;
		}
		fprintf(out, "%s = %s\n", name, val);
	}
}
