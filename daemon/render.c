/* SPDX-License-Identifier: MIT */
/*
 * render.c - the reports of the admin commands (kvtierctl), text or JSON: status, tiers,
 * metrics (Prometheus text from the one metric table, proto/kvt_metrics.h), clients and the
 * running configuration, rendered inside the daemon so that kvtierctl stays a thin printer.
 * Reading the daemon's state only; which command runs when, and the replies, are admin.c's.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_auto.h"
#include "daemon.h"
#include "ops.h"
#include "render.h"

void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->oom)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->oom = true;
			return;
		}
		if (b->p && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		size_t ncap = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
		char *np = realloc(b->p, ncap);
		if (!np) {
			b->oom = true;
			return;
		}
		b->p = np;
		b->cap = ncap;
	}
}

static const char *tier_name[KVTD_NTIERS] = {"host", "nvme"};

static void fmt_bytes(char *out, size_t n, uint64_t v)
{
	static const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	double x = (double)v;
	int i = 0;

	while (x >= 1024 && i < 4) {
		x /= 1024;
		i++;
	}
	snprintf(out, n, i ? "%.1f %s" : "%.0f %s", x, u[i]);
}

/*
 * s (at most max bytes) as a JSON string: quotes, backslashes and control characters
 * escaped, bytes that are not UTF-8 replaced by U+FFFD.  Client names are whatever a client
 * sent: unescaped, one could forge fields of the report or break it.
 */
static void sb_json_str(struct sbuf *b, const char *s, size_t max)
{
	const unsigned char *p = (const unsigned char *)s, *e = p + strnlen(s, max);

	sb_printf(b, "\"");
	while (p < e) {
		unsigned c = *p;
		int n = c < 0x80	     ? 0
			: (c & 0xe0) == 0xc0 ? 1
			: (c & 0xf0) == 0xe0 ? 2
			: (c & 0xf8) == 0xf0 ? 3
					     : -1;
		bool ok = n >= 0 && e - p > n && !(n == 1 && c < 0xc2) && !(n == 3 && c > 0xf4);

		for (int k = 1; ok && k <= n; k++)
			ok = (p[k] & 0xc0) == 0x80;
		/* Overlong forms, surrogates and code points above U+10FFFF. */
		if (ok && n == 2)
			ok = !(c == 0xe0 && p[1] < 0xa0) && !(c == 0xed && p[1] > 0x9f);
		if (ok && n == 3)
			ok = !(c == 0xf0 && p[1] < 0x90) && !(c == 0xf4 && p[1] > 0x8f);
		if (!ok) {
			sb_printf(b, "\\ufffd");
			p++;
		} else if (n > 0) {
			sb_printf(b, "%.*s", n + 1, (const char *)p);
			p += n + 1;
		} else if (c == '"' || c == '\\') {
			sb_printf(b, "\\%c", c);
			p++;
		} else if (c < 0x20 || c == 0x7f) {
			sb_printf(b, "\\u%04x", c);
			p++;
		} else {
			sb_printf(b, "%c", c);
			p++;
		}
	}
	sb_printf(b, "\"");
}

/* s for a terminal: control characters (escape sequences among them) become '?'. */
static void safe_text(char *out, size_t n, const char *s, size_t max)
{
	size_t i = 0;

	for (; i + 1 < n && i < max && s[i]; i++) {
		unsigned char c = (unsigned char)s[i];

		out[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
	}
	out[i] = 0;
}

/* Blocks with a copy in the tier (a promoted block counts in both): a counter, not a scan,
 * so that polling metrics costs the clients nothing (kvtd_blk_account keeps it exact). */
static uint64_t tier_blocks(struct kvtd *d, int tier)
{
	return d->tier_nblocks[tier];
}

/* The GPU tier's row, when gpu.capacity asks for one (also when no GPU could serve it). */
static void render_gpu(struct kvtd *d, struct sbuf *b, bool json, bool detail)
{
	struct kvtd_gpu_stats g;
	const char *uuid;
	char c1[32], c2[32];

	if (!d->cfg.gpu_capacity)
		return;
	kvtd_gpu_stats(d, &g, &uuid);
	if (json) {
		sb_printf(b,
			  ",{\"name\":\"gpu\",\"capacity_bytes\":%" PRIu64
			  ",\"used_bytes\":%" PRIu64 ",\"blocks\":%" PRIu64 ",\"hits\":%" PRIu64
			  ",\"misses\":%" PRIu64 ",\"codec\":\"%s\",\"available\":%s",
			  g.capacity, g.used, g.blocks, g.hits, g.misses, d->cfg.gpu_codec,
			  kvtd_gpu_on(d) ? "true" : "false");
		if (detail)
			sb_printf(
			    b,
			    ",\"device\":\"%s\",\"epoch\":%" PRIu64
			    ",\"high_watermark\":%.3f,\"low_watermark\":%.3f"
			    ",\"put_bytes\":%" PRIu64 ",\"get_bytes\":%" PRIu64
			    ",\"demoted_bytes\":%" PRIu64 ",\"promoted_bytes\":%" PRIu64
			    ",\"demotions\":%" PRIu64 ",\"promotions\":%" PRIu64
			    ",\"evictions\":%" PRIu64 ",\"attaches\":%" PRIu64 ",\"error\":\"%s\"",
			    uuid, kvtd_gpu_on(d) ? d->epoch : 0, d->cfg.gpu_high, d->cfg.gpu_low,
			    g.put_bytes, g.get_bytes, g.demoted_bytes, g.promoted_bytes,
			    g.demotions, g.promotions, g.evictions, g.attaches,
			    kvtd_gpu_on(d) ? "" : strerror(-(d->gpu_err ? d->gpu_err : ENODEV)));
		sb_printf(b, "}");
		return;
	}
	if (!kvtd_gpu_on(d)) {
		fmt_bytes(c1, sizeof(c1), d->cfg.gpu_capacity);
		sb_printf(b, "%-6s %12s %12s %10s %10s %10s  %s\n", "gpu", "0 B", "0 B", "-", "-",
			  "-", d->cfg.gpu_codec);
		if (detail)
			sb_printf(b, "       unavailable: gpu.capacity = %s but no GPU (%s)\n", c1,
				  strerror(-(d->gpu_err ? d->gpu_err : ENODEV)));
		return;
	}
	fmt_bytes(c1, sizeof(c1), g.capacity);
	fmt_bytes(c2, sizeof(c2), g.used);
	sb_printf(b, "%-6s %12s %12s %10" PRIu64 " %10" PRIu64 " %10" PRIu64 "  %s\n", "gpu", c1,
		  c2, g.blocks, g.hits, g.misses, d->cfg.gpu_codec);
	if (!detail)
		return;
	sb_printf(b, "       device %s  epoch %" PRIu64 "  watermarks %.2f/%.2f\n", uuid, d->epoch,
		  d->cfg.gpu_low, d->cfg.gpu_high);
	fmt_bytes(c1, sizeof(c1), g.put_bytes);
	fmt_bytes(c2, sizeof(c2), g.get_bytes);
	sb_printf(b, "       clients put %s  got %s", c1, c2);
	fmt_bytes(c1, sizeof(c1), g.demoted_bytes);
	fmt_bytes(c2, sizeof(c2), g.promoted_bytes);
	sb_printf(b,
		  "  demoted %s (%" PRIu64 ")  promoted %s (%" PRIu64 ")  evictions %" PRIu64
		  "  attaches %" PRIu64 "\n",
		  c1, g.demotions, c2, g.promotions, g.evictions, g.attaches);
}

/* The counters of KVT_METRICS as JSON fields "name":value, comma-separated. */
/* The remote tier: one row, then (detail) its nodes as every I/O thread's connections
 * see them. */
static void render_remote(struct kvtd *d, struct sbuf *b, bool json, bool detail)
{
	struct kvtd_remote_view *v = malloc(sizeof(*v));
	uint64_t bin = 0, bout = 0;
	unsigned up = 0, open = 0;

	if (!v || !kvtd_remote_view(d, v)) {
		free(v);
		return;
	}
	for (unsigned k = 0; k < v->nnodes; k++) {
		bin += v->nodes[k].bytes_in;
		bout += v->nodes[k].bytes_out;
		up += v->nodes[k].connected;
		open += v->nodes[k].breaker_open;
	}
	if (json) {
		sb_printf(
		    b,
		    ",{\"name\":\"remote\",\"nodes\":%u,\"connected\":%u,\"breakers_open\":%u,"
		    "\"standalone\":%s,\"hits\":%" PRIu64 ",\"misses\":%" PRIu64
		    ",\"codec\":\"%s\",\"puts\":%" PRIu64 ",\"put_dropped\":%" PRIu64
		    ",\"queued\":%" PRIu64 ",\"bytes_out\":%" PRIu64 ",\"bytes_in\":%" PRIu64
		    ",\"errors\":%" PRIu64 ",\"corrupt\":%" PRIu64,
		    v->nnodes, up, open, v->standalone ? "true" : "false", d->m.remote_hits_total,
		    d->m.remote_misses_total, d->cfg.remote_codec, d->m.remote_puts_total,
		    d->m.remote_put_dropped_total, v->queued, bout, bin, d->m.remote_errors_total,
		    d->m.remote_corrupt_total);
		if (detail) {
			sb_printf(b,
				  ",\"seeds\":\"%s\",\"threads\":%u,\"ttl\":%u,"
				  "\"lookup_timeout_us\":%u,\"moved\":%" PRIu64 ",\"ask\":%" PRIu64
				  ",\"refreshes\":%" PRIu64 ",\"timeouts\":%" PRIu64
				  ",\"io_errors\":%" PRIu64 ",\"proto_errors\":%" PRIu64
				  ",\"breaker_fast_fails\":%" PRIu64 ",\"node_list\":[",
				  d->cfg.remote_nodes, v->threads, d->cfg.remote_ttl,
				  d->cfg.remote_lookup_timeout_us, v->moved, v->ask, v->refreshes,
				  v->timeouts, v->io_errors, v->proto_errors,
				  v->breaker_fast_fails);
			for (unsigned k = 0; k < v->nnodes; k++) {
				const struct kvtd_remote_node *n = &v->nodes[k];

				sb_printf(b,
					  "%s{\"addr\":\"%s\",\"slots\":%u,\"state\":\"%s\","
					  "\"breaker\":\"%s\",\"bytes_out\":%" PRIu64
					  ",\"bytes_in\":%" PRIu64 ",\"errors\":%" PRIu64
					  ",\"breaker_trips\":%" PRIu64 "}",
					  k ? "," : "", n->addr, n->slots,
					  n->connected ? "connected" : "idle",
					  n->breaker_open ? "open" : "closed", n->bytes_out,
					  n->bytes_in, n->errors, n->breaker_trips);
			}
			sb_printf(b, "]");
		}
		sb_printf(b, "}");
	} else {
		char c1[32], c2[32];

		sb_printf(b, "%-6s %12s %12s %10s %10" PRIu64 " %10" PRIu64 "  %s\n", "remote", "-",
			  "-", "-", d->m.remote_hits_total, d->m.remote_misses_total,
			  d->cfg.remote_codec);
		if (detail) {
			fmt_bytes(c1, sizeof(c1), bout);
			fmt_bytes(c2, sizeof(c2), bin);
			sb_printf(b,
				  "       %s %u nodes (%u connected, %u breakers open), %u I/O "
				  "threads  sent %s  received %s\n"
				  "       puts %" PRIu64 "  dropped %" PRIu64 "  queued %" PRIu64
				  "  errors %" PRIu64 "  corrupt %" PRIu64 "  moved %" PRIu64
				  "  ask %" PRIu64 "  timeouts %" PRIu64 "\n",
				  v->standalone ? "standalone," : "cluster,", v->nnodes, up, open,
				  v->threads, c1, c2, d->m.remote_puts_total,
				  d->m.remote_put_dropped_total, v->queued,
				  d->m.remote_errors_total, d->m.remote_corrupt_total, v->moved,
				  v->ask, v->timeouts);
			for (unsigned k = 0; k < v->nnodes; k++) {
				const struct kvtd_remote_node *n = &v->nodes[k];

				fmt_bytes(c1, sizeof(c1), n->bytes_out);
				fmt_bytes(c2, sizeof(c2), n->bytes_in);
				sb_printf(b,
					  "       node %-21s slots %5u  %-9s breaker %-6s sent %s  "
					  "received %s  errors %" PRIu64 "\n",
					  n->addr, n->slots, n->connected ? "connected" : "idle",
					  n->breaker_open ? "open" : "closed", c1, c2, n->errors);
			}
			if (!v->nnodes)
				sb_printf(b,
					  "       node list empty: no request has reached the "
					  "cluster yet (seeds %s)\n",
					  d->cfg.remote_nodes);
		}
	}
	free(v);
}

static void render_metric_fields(struct kvtd *d, struct sbuf *b)
{
	int first = 1;

	kvtd_remote_sync(d);

#define X(name, type, help)                                                                        \
	sb_printf(b, "%s\"%s\":%" PRIu64, first ? "" : ",", #name, d->m.name);                     \
	first = 0;
	KVT_METRICS(X)
#undef X
}

/* What the NVMe recovery dropped, by reason, and the bytes lost: JSON fields or a line. */
static void render_recovery(struct kvtd *d, struct sbuf *b, bool json, uint64_t lost)
{
	const struct {
		const char *json, *text;
		uint64_t n;
	} drop[] = {
	    {"corrupt", "corrupt", d->m.nvme_recovery_dropped_corrupt_total},
	    {"unreadable", "unreadable", d->m.nvme_recovery_dropped_unreadable_total},
	    {"cut", "cut off", d->m.nvme_recovery_dropped_cut_total},
	    {"stale", "stale", d->m.nvme_recovery_dropped_stale_total},
	    {"foreign", "foreign", d->m.nvme_recovery_dropped_foreign_total},
	    {"unplaceable", "without room", d->m.nvme_recovery_dropped_unplaceable_total},
	};

	if (json)
		sb_printf(b, ",\"recovering\":%s,\"recovery_dropped\":{",
			  d->nvme_recovering ? "true" : "false");
	else
		sb_printf(b, "       %s: dropped ", d->nvme_recovering ? "recovering" : "recovery");
	for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++) {
		if (json)
			sb_printf(b, "%s\"%s\":%" PRIu64, i ? "," : "", drop[i].json, drop[i].n);
		else
			sb_printf(b, "%s%" PRIu64 " %s", i ? ", " : "", drop[i].n, drop[i].text);
	}
	if (json)
		sb_printf(b, "},\"lost_bytes\":%" PRIu64, lost);
	else
		sb_printf(b, "; %" PRIu64 " bytes lost\n", lost);
}

void render_tiers(struct kvtd *d, struct sbuf *b, bool json, bool detail)
{
	int ntiers = d->nvme ? 2 : 1;
	struct kvt_tier_stats ns;

	kvtd_nvme_stats(d, &ns);
	if (!json)
		sb_printf(b, "%-6s %12s %12s %10s %10s %10s  %s\n", "tier", "capacity", "used",
			  "blocks", "hits", "misses", "codec");
	for (int t = 0; t < ntiers; t++) {
		bool host = t == KVTD_TIER_HOST;
		uint64_t cap = host ? d->cfg.host_capacity : ns.capacity_bytes;
		uint64_t used = host ? d->host_used : ns.used_bytes;
		const char *codec = host ? d->cfg.host_codec : kvt_chain_name(d->nvme_chain);
		double hi = host ? d->cfg.host_high : d->cfg.nvme_high;
		double lo = host ? d->cfg.host_low : d->cfg.nvme_low;
		const struct tier_stats *ts = &d->tier[t];
		uint64_t rd = host ? ts->bytes_read : ns.bytes_read;
		uint64_t wr = host ? ts->bytes_written : ns.bytes_written;
		uint64_t ev = host ? d->m.evictions_total : d->m.nvme_evictions_total;

		if (json) {
			sb_printf(b,
				  "%s{\"name\":\"%s\",\"capacity_bytes\":%" PRIu64
				  ",\"used_bytes\":%" PRIu64 ",\"blocks\":%" PRIu64
				  ",\"hits\":%" PRIu64 ",\"misses\":%" PRIu64 ",\"codec\":\"%s\"",
				  t ? "," : "", tier_name[t], cap, used, tier_blocks(d, t),
				  ts->hits, ts->misses, codec);
			if (detail)
				sb_printf(b,
					  ",\"high_watermark\":%.3f,\"low_watermark\":%.3f,"
					  "\"bytes_read\":%" PRIu64 ",\"bytes_written\":%" PRIu64
					  ",\"evictions\":%" PRIu64,
					  hi, lo, rd, wr, ev);
			if (detail && host)
				sb_printf(b,
					  ",\"tenants\":%u,\"encoded_blocks\":%" PRIu64
					  ",\"raw_bytes\":%" PRIu64 ",\"stored_bytes\":%" PRIu64,
					  d->ntenants, d->m.host_encoded_blocks,
					  d->m.host_raw_bytes, d->m.host_stored_bytes);
			if (detail && !host)
				sb_printf(b,
					  ",\"files\":%u,\"paths\":\"%s\",\"io_uring\":%s,"
					  "\"direct\":%s,\"corrupt_records\":%" PRIu64
					  ",\"read_errors\":%" PRIu64 ",\"write_errors\":%" PRIu64
					  ",\"recovered\":%" PRIu64,
					  ns.files, d->cfg.nvme_paths,
					  ns.io_flags & KVT_TIER_ST_URING ? "true" : "false",
					  ns.io_flags & KVT_TIER_ST_DIRECT ? "true" : "false",
					  ns.corrupt_records + d->nvme_install_bad, ns.read_errors,
					  ns.write_errors, d->m.nvme_recovered_total);
			if (detail && !host)
				render_recovery(d, b, true, ns.lost_bytes);
			if (detail && !host)
				sb_printf(b, ",\"merged_reads\":%" PRIu64, ns.merged_reads);
			if (detail && !host && d->nvme_dict)
				sb_printf(b, ",\"codec_dict\":\"%016" PRIx64 "\"",
					  kvt_dict_id(d->nvme_dict));
			if (detail)
				kvtd_auto_render(d, b, true, t);
			sb_printf(b, "}");
		} else {
			char c1[32], c2[32];

			fmt_bytes(c1, sizeof(c1), cap);
			fmt_bytes(c2, sizeof(c2), used);
			sb_printf(
			    b, "%-6s %12s %12s %10" PRIu64 " %10" PRIu64 " %10" PRIu64 "  %s\n",
			    tier_name[t], c1, c2, tier_blocks(d, t), ts->hits, ts->misses, codec);
			if (detail) {
				fmt_bytes(c1, sizeof(c1), rd);
				fmt_bytes(c2, sizeof(c2), wr);
				sb_printf(b,
					  "       watermarks %.2f/%.2f  read %s  written %s  "
					  "evictions %" PRIu64 "\n",
					  lo, hi, c1, c2, ev);
			}
			if (detail && host) {
				fmt_bytes(c1, sizeof(c1), d->m.host_raw_bytes);
				fmt_bytes(c2, sizeof(c2), d->m.host_stored_bytes);
				sb_printf(b,
					  "       encoded blocks %" PRIu64 "  raw %s stored in %s"
					  "  ratio %.2f\n",
					  d->m.host_encoded_blocks, c1, c2,
					  d->m.host_stored_bytes
					      ? (double)d->m.host_raw_bytes /
						    (double)d->m.host_stored_bytes
					      : 1.0);
			}
			if (detail && !host)
				sb_printf(
				    b,
				    "       files %u (%s)  %s%s  corrupt records %" PRIu64
				    "  read errors %" PRIu64 "  write errors %" PRIu64
				    "  recovered %" PRIu64 "\n",
				    ns.files, d->cfg.nvme_paths,
				    ns.io_flags & KVT_TIER_ST_URING ? "io_uring" : "pread/pwrite",
				    ns.io_flags & KVT_TIER_ST_DIRECT ? " O_DIRECT" : " buffered",
				    ns.corrupt_records + d->nvme_install_bad, ns.read_errors,
				    ns.write_errors, d->m.nvme_recovered_total);
			if (detail && !host)
				render_recovery(d, b, false, ns.lost_bytes);
			if (detail && !host && d->nvme_dict)
				sb_printf(b, "       dictionary %016" PRIx64 " (%s)\n",
					  kvt_dict_id(d->nvme_dict), d->cfg.nvme_codec_dict);
			if (detail)
				kvtd_auto_render(d, b, false, t);
		}
	}
	if (!d->nvme && !json && detail)
		sb_printf(b, "(no NVMe tier configured: [nvme] enabled = false)\n");
	render_gpu(d, b, json, detail);
	render_remote(d, b, json, detail);
}

void render_status(struct kvtd *d, struct sbuf *b, bool json)
{
	uint64_t up = (kvtd_now_ms() - d->start_ms) / 1000;

	if (json) {
		sb_printf(b,
			  "{\"version\":\"%s\",\"uptime_s\":%" PRIu64
			  ",\"recovering\":%s,\"clients\":%u,\"tenants\":%u,"
			  "\"epoch\":%" PRIu64 ",\"tiers\":[",
			  kvt_version(), up, d->nvme_recovering ? "true" : "false", d->nclients,
			  d->ntenants, d->epoch);
		render_tiers(d, b, true, false);
		sb_printf(b, "],\"metrics\":{");
		render_metric_fields(d, b);
		sb_printf(b, "}}\n");
		return;
	}
	sb_printf(b, "kvtierd %s  uptime %" PRIu64 "s  clients %u  tenants %u%s\n", kvt_version(),
		  up, d->nclients, d->ntenants,
		  d->nvme_recovering ? "  recovering NVMe records (misses until done)" : "");
	render_tiers(d, b, false, false);
}

#ifndef KVTD_BUILD_CUDA
#define KVTD_BUILD_CUDA "no"
#endif
#ifndef KVTD_BUILD_SYSTEMD
#define KVTD_BUILD_SYSTEMD "no"
#endif
#ifndef KVTD_BUILD_TYPE
#define KVTD_BUILD_TYPE ""
#endif
static const char *const lat_op_name[KVTD_LAT_OPS] = {"put_reserve", "put_commit", "get", "lookup"};

/* Build facts, start time and the latency histograms (Prometheus text or JSON members). */
static void render_ops_metrics(struct kvtd *d, struct sbuf *b, bool json)
{
	if (json) {
		sb_printf(b,
			  ",\"build_info\":{\"version\":\"%s\",\"cuda\":\"%s\",\"systemd\":\"%s\","
			  "\"build_type\":\"%s\"},\"start_time_seconds\":%" PRIu64
			  ",\"request_duration_seconds\":{",
			  kvt_version(), KVTD_BUILD_CUDA, KVTD_BUILD_SYSTEMD, KVTD_BUILD_TYPE,
			  d->start_unix);
		for (int op = 0; op < KVTD_LAT_OPS; op++) {
			uint64_t cum = 0;

			sb_printf(b, "%s\"%s\":{\"count\":%" PRIu64 ",\"sum\":%.9f,\"buckets\":[",
				  op ? "," : "", lat_op_name[op], d->lat_count[op],
				  (double)d->lat_sum_ns[op] / 1e9);
			for (int k = 0; k < KVTD_LAT_BUCKETS; k++) {
				cum += d->lat_bucket[op][k];
				if (k < KVTD_LAT_BUCKETS - 1)
					sb_printf(b, "%s[%g,%" PRIu64 "]", k ? "," : "",
						  (double)kvtd_lat_le_ns[k] / 1e9, cum);
				else
					sb_printf(b, ",[\"+Inf\",%" PRIu64 "]", cum);
			}
			sb_printf(b, "]}");
		}
		sb_printf(b, "}");
		return;
	}
	sb_printf(
	    b,
	    "# HELP kvtier_build_info Version and build options of kvtierd (always 1).\n"
	    "# TYPE kvtier_build_info gauge\n"
	    "kvtier_build_info{version=\"%s\",cuda=\"%s\",systemd=\"%s\",build_type=\"%s\"} 1\n"
	    "# HELP kvtier_start_time_seconds Start time of kvtierd since the Unix epoch.\n"
	    "# TYPE kvtier_start_time_seconds gauge\n"
	    "kvtier_start_time_seconds %" PRIu64 "\n"
	    "# HELP kvtier_request_duration_seconds Service time of requests answered at once "
	    "(a get waiting for an NVMe read is not in it).\n"
	    "# TYPE kvtier_request_duration_seconds histogram\n",
	    kvt_version(), KVTD_BUILD_CUDA, KVTD_BUILD_SYSTEMD, KVTD_BUILD_TYPE, d->start_unix);
	for (int op = 0; op < KVTD_LAT_OPS; op++) {
		uint64_t cum = 0;

		for (int k = 0; k < KVTD_LAT_BUCKETS; k++) {
			cum += d->lat_bucket[op][k];
			if (k < KVTD_LAT_BUCKETS - 1)
				sb_printf(
				    b,
				    "kvtier_request_duration_seconds_bucket{op=\"%s\",le=\"%g\"} "
				    "%" PRIu64 "\n",
				    lat_op_name[op], (double)kvtd_lat_le_ns[k] / 1e9, cum);
			else
				sb_printf(
				    b,
				    "kvtier_request_duration_seconds_bucket{op=\"%s\",le=\"+Inf\"} "
				    "%" PRIu64 "\n",
				    lat_op_name[op], cum);
		}
		sb_printf(b,
			  "kvtier_request_duration_seconds_sum{op=\"%s\"} %.9f\n"
			  "kvtier_request_duration_seconds_count{op=\"%s\"} %" PRIu64 "\n",
			  lat_op_name[op], (double)d->lat_sum_ns[op] / 1e9, lat_op_name[op],
			  d->lat_count[op]);
	}
}

/* kvtierctl --json metrics: the counters, tiers, build facts and histograms as one object. */
void render_metrics_json(struct kvtd *d, struct sbuf *b)
{
	sb_printf(b, "{\"metrics\":{");
	render_metric_fields(d, b);
	sb_printf(b, "},\"tiers\":[");
	render_tiers(d, b, true, true);
	sb_printf(b, "]");
	render_ops_metrics(d, b, true);
	sb_printf(b, "}\n");
}

void render_metrics(struct kvtd *d, struct sbuf *b)
{
	int ntiers = d->nvme ? 2 : 1;
	struct kvt_tier_stats ns;
	struct kvtd_gpu_stats g;
	const char *uuid;

	kvtd_remote_sync(d);
	kvtd_gpu_stats(d, &g, &uuid);

	kvtd_nvme_stats(d, &ns);
#define X(name, type, help)                                                                        \
	sb_printf(b, "# HELP kvtier_%s %s.\n# TYPE kvtier_%s %s\nkvtier_%s %" PRIu64 "\n", #name,  \
		  help, #name, #type, #name, d->m.name);
	KVT_METRICS(X)
#undef X
	render_ops_metrics(d, b, false);
	static const struct {
		const char *name, *type, *help;
	} tm[] = {
	    {"tier_capacity_bytes", "gauge", "Capacity of the tier in bytes"},
	    {"tier_used_bytes", "gauge", "Bytes in use in the tier"},
	    {"tier_blocks", "gauge", "Blocks stored in the tier"},
	    {"tier_hits_total", "counter", "Gets served by the tier"},
	    {"tier_misses_total", "counter", "Gets the tier could not serve"},
	    {"tier_read_bytes_total", "counter", "Bytes read from the tier"},
	    {"tier_written_bytes_total", "counter", "Bytes written to the tier"},
	};
	for (size_t k = 0; k < sizeof(tm) / sizeof(tm[0]); k++) {
		sb_printf(b, "# HELP kvtier_%s %s.\n# TYPE kvtier_%s %s\n", tm[k].name, tm[k].help,
			  tm[k].name, tm[k].type);
		for (int t = 0; t < ntiers; t++) {
			const struct tier_stats *ts = &d->tier[t];
			uint64_t v[] = {t ? ns.capacity_bytes : d->cfg.host_capacity,
					t ? ns.used_bytes : d->host_used,
					tier_blocks(d, t),
					ts->hits,
					ts->misses,
					t ? ns.bytes_read : ts->bytes_read,
					t ? ns.bytes_written : ts->bytes_written};
			sb_printf(b, "kvtier_%s{tier=\"%s\"} %" PRIu64 "\n", tm[k].name,
				  tier_name[t], v[k]);
		}
		if (d->cfg.gpu_capacity) {
			uint64_t v[] = {g.capacity, g.used,	 g.blocks,   g.hits,
					g.misses,   g.get_bytes, g.put_bytes};
			sb_printf(b, "kvtier_%s{tier=\"gpu\"} %" PRIu64 "\n", tm[k].name, v[k]);
		}
	}
	if (!d->cfg.gpu_capacity)
		return;
	static const struct {
		const char *name, *type, *help;
	} gm[] = {
	    {"gpu_available", "gauge", "1 when the GPU tier runs (gpu.capacity > 0 and a GPU)"},
	    {"gpu_epoch", "gauge",
	     "Epoch of the exported pool (clients re-attach when it changes)"},
	    {"gpu_demoted_bytes_total", "counter",
	     "Bytes moved from the GPU pool to the host tier"},
	    {"gpu_promoted_bytes_total", "counter",
	     "Bytes moved from the host tier to the GPU pool"},
	    {"gpu_demotions_total", "counter", "Blocks moved from the GPU pool to the host tier"},
	    {"gpu_promotions_total", "counter", "Blocks moved from the host tier to the GPU pool"},
	    {"gpu_evictions_total", "counter", "Blocks that left the GPU pool to make room"},
	    {"gpu_attaches_total", "counter", "Device connections that mapped the pool"},
	};
	uint64_t gv[] = {kvtd_gpu_on(d),  kvtd_gpu_on(d) ? d->epoch : 0,
			 g.demoted_bytes, g.promoted_bytes,
			 g.demotions,	  g.promotions,
			 g.evictions,	  g.attaches};
	for (size_t k = 0; k < sizeof(gm) / sizeof(gm[0]); k++)
		sb_printf(b, "# HELP kvtier_%s %s.\n# TYPE kvtier_%s %s\nkvtier_%s %" PRIu64 "\n",
			  gm[k].name, gm[k].help, gm[k].name, gm[k].type, gm[k].name, gv[k]);
}

/* The fastest tier holding the block; a block in neither host nor NVMe is in the pool. */
const char *blk_tier_name(const struct kvtd_blk *k)
{
	return !k->on_host && !k->on_nvme ? "gpu" : tier_name[k->tier];
}

void render_clients(struct kvtd *d, struct client *self, struct sbuf *b, bool json)
{
	uint64_t now = kvtd_now_ms();
	int n = 0;

	if (json)
		sb_printf(b, "[");
	else
		sb_printf(b, "%6s %8s %6s %-20s %7s %7s %5s %10s %10s %8s\n", "id", "pid", "uid",
			  "name", "leases", "reserv", "pins", "puts", "gets", "age_s");
	for (struct client *c = d->clients; c; c = c->next) {
		if (c->dead || c->refused || (!self->admin && c->uid != self->uid))
			continue;
		if (json) {
			sb_printf(b, "%s{\"id\":%u,\"pid\":%d,\"uid\":%u,\"name\":", n ? "," : "",
				  c->id, (int)c->pid, (unsigned)c->uid);
			sb_json_str(b, c->name, sizeof(c->name));
			sb_printf(b,
				  ",\"admin\":%s,"
				  "\"leases\":%u,\"reservations\":%u,\"pins\":%u,\"puts\":%" PRIu64
				  ",\"gets\":%" PRIu64 ",\"hits\":%" PRIu64 ",\"age_s\":%" PRIu64
				  "}",
				  c->data ? "false" : "true", c->n_leases, c->n_reserves, c->n_pins,
				  c->puts, c->gets, c->hits, (now - c->connected_ms) / 1000);
		} else {
			char name[sizeof(c->name) + 1];

			safe_text(name, sizeof(name), c->name, sizeof(c->name));
			sb_printf(b,
				  "%6u %8d %6u %-20.20s %7u %7u %5u %10" PRIu64 " %10" PRIu64
				  " %8" PRIu64 "\n",
				  c->id, (int)c->pid, (unsigned)c->uid, name[0] ? name : "-",
				  c->n_leases, c->n_reserves, c->n_pins, c->puts, c->gets,
				  (now - c->connected_ms) / 1000);
		}
		n++;
	}
	if (json)
		sb_printf(b, "]\n");
}

/* The running configuration (kvtierctl config); the tenant salt is a secret, never shown. */
void render_config(struct kvtd *d, struct sbuf *b, bool json)
{
	const char *sec = "", *section, *name;
	char val[1100];

	sb_printf(b, json ? "{" : "# running configuration of kvtierd %s\n", kvt_version());
	for (size_t i = 0; i < kvtd_config_nkeys(); i++) {
		bool secret;

		kvtd_config_value(&d->cfg, i, &section, &name, val, sizeof(val));
		secret = !strcmp(section, "daemon") && !strcmp(name, "tenant_salt") && val[0];
		if (json) {
			sb_printf(b, "%s\"%s.%s\":", i ? "," : "", section, name);
			sb_json_str(b, secret ? "(set, not shown)" : val, sizeof(val));
			continue;
		}
		if (strcmp(sec, section)) {
			sb_printf(b, "%s[%s]\n", i ? "\n" : "", section);
			sec = section;
		}
		if (secret)
			sb_printf(b, "# %s = (set, not shown)\n", name);
		else
			sb_printf(b, "%s = %s\n", name, val);
	}
	sb_printf(b, json ? "}\n" : "");
}
