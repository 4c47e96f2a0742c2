/* SPDX-License-Identifier: MIT */
/*
 * admin.c - the admin commands (ADMIN messages, kvtierctl): who may run which
 * (evict and writeback need an admin; daemon.user_admin_rate for the other users), the
 * `blocks` listing as a job over several loop turns, evict and writeback, and the reply
 * split into packets.  The reports themselves are rendered by render.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include "admin.h"
#include "codec_auto.h"
#include "daemon.h"
#include "networking.h"
#include "render.h"

/*
 * `blocks` walks the whole index (pinned and leased blocks are outside the LRU lists), so it
 * runs as a job of ADMIN_SCAN_BATCH entries per event-loop turn: the rings of every client
 * are served in between, however large the index.  The reply goes when the walk is done.
 */
#define ADMIN_SCAN_BATCH 4096u

struct admin_job {
	struct sbuf b;
	uint32_t next; /* the index entry to look at next */
	uint64_t n, limit, now;
	bool json;
};

static void admin_send(struct kvtd *d, struct client *c, struct sbuf *b, int ret);

void admin_job_free(struct client *c)
{
	if (!c->job)
		return;
	free(c->job->b.p);
	free(c->job);
	c->job = NULL;
}

/* Runs one batch of c's listing; sends the reply when it is done.  Returns entries seen. */
int admin_job_step(struct kvtd *d, struct client *c)
{
	struct admin_job *j = c->job;
	struct sbuf *b = &j->b;
	uint32_t end =
	    d->ix.used - j->next > ADMIN_SCAN_BATCH ? j->next + ADMIN_SCAN_BATCH : d->ix.used;
	int seen = (int)(end - j->next);

	for (uint32_t i = j->next; i < end && j->n < j->limit; i++) {
		struct kvtd_blk *k = kvtd_blk(&d->ix, i);
		struct tenant *t;
		uint64_t now = j->now;
		bool json = j->json;
		uint64_t n = j->n;

		if (k->state != KVTD_BLK_READY)
			continue;
		t = kvtd_tenant_of(d, k);
		if (!c->admin && t->uid != c->uid)
			continue;
		if (json)
			sb_printf(b,
				  "%s{\"key\":\"%016" PRIx64 "%016" PRIx64 "\",\"tier\":\"%s\","
				  "\"bytes\":%u,\"age_s\":%" PRIu64 ",\"leases\":%u,\"pins\":%u,"
				  "\"hits\":%" PRIu64 ",\"uid\":%u}",
				  n ? "," : "", k->key_hi, k->key_lo, blk_tier_name(k), k->len,
				  (now - k->atime) / 1000, k->leases, k->pins, k->hits, t->uid);
		else
			sb_printf(b,
				  "%016" PRIx64 "%016" PRIx64 " %-5s %10u %8" PRIu64
				  " %6u %5u %8" PRIu64 " %6u\n",
				  k->key_hi, k->key_lo, blk_tier_name(k), k->len,
				  (now - k->atime) / 1000, k->leases, k->pins, k->hits, t->uid);
		j->n++;
	}
	j->next = end;
	if (j->next < d->ix.used && j->n < j->limit)
		return seen ? seen : 1;
	if (j->json)
		sb_printf(b, "]\n");
	c->job = NULL;
	admin_send(d, c, b, 0);
	free(b->p);
	free(j);
	if (!c->dead) {
		struct epoll_event ee = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = &c->sock_ev};
		epoll_ctl(d->ep, EPOLL_CTL_MOD, c->sock, &ee);
	}
	return seen ? seen : 1;
}

/* Starts c's `blocks` listing (first batch now).  False when out of memory. */
static bool render_blocks(struct kvtd *d, struct client *c, bool json, uint64_t limit)
{
	struct admin_job *j = calloc(1, sizeof(*j));
	struct epoll_event ee = {.events = EPOLLRDHUP, .data.ptr = &c->sock_ev};

	if (!j)
		return false;
	/* 0: the default; UINT64_MAX (kvtierctl --limit 0): every block. */
	j->limit = limit ? limit : 100;
	j->json = json;
	j->now = kvtd_now_ms();
	if (json)
		sb_printf(&j->b, "[");
	else
		sb_printf(&j->b, "%-32s %-5s %10s %8s %6s %5s %8s %6s\n", "key", "tier", "bytes",
			  "age_s", "leases", "pins", "hits", "uid");
	/* Its next request waits for this reply: no reading from it meanwhile. */
	epoll_ctl(d->ep, EPOLL_CTL_MOD, c->sock, &ee);
	c->job = j;
	admin_job_step(d, c);
	return true;
}

static int admin_evict(struct kvtd *d, struct sbuf *b, bool json, uint64_t bytes)
{
	uint64_t before = d->m.evicted_bytes_total, nb = d->m.evictions_total;

	while (!bytes || d->m.evicted_bytes_total - before < bytes) {
		if (kvtd_evict_host_one(d, NULL) < 0)
			break;
	}
	nb = d->m.evictions_total - nb;
	if (json)
		sb_printf(b, "{\"evicted_blocks\":%" PRIu64 ",\"evicted_bytes\":%" PRIu64 "}\n", nb,
			  d->m.evicted_bytes_total - before);
	else
		sb_printf(b, "evicted %" PRIu64 " blocks, %" PRIu64 " bytes\n", nb,
			  d->m.evicted_bytes_total - before);
	return 0;
}

/*
 * daemon.user_admin_rate: a user other than root or admin_group may send this many admin
 * commands a second, over all of its connections (a bucket of as many per uid, refilled
 * continuously), so that one user polling status or metrics, e.g. kvtierctl in a loop, cannot
 * take the event loop from the other clients.  Buckets live in a small table; when it is
 * full, the one used least recently is given to the new uid.  true when c may run one more.
 */
static bool admin_budget(struct kvtd *d, struct client *c)
{
	double rate = d->cfg.user_admin_rate;
	uint64_t now = kvtd_now_ms();
	struct kvtd_admin_bucket *bk = NULL, *old = &d->admin_rate[0];

	if (c->admin || rate <= 0)
		return true;
	for (size_t i = 0; i < KVTD_ADMIN_BUCKETS && !bk; i++) {
		struct kvtd_admin_bucket *e = &d->admin_rate[i];

		if (e->ms && e->uid == c->uid)
			bk = e;
		else if (e->ms < old->ms)
			old = e;
	}
	if (!bk) {
		bk = old;
		bk->uid = c->uid;
		bk->tokens = rate;
	} else {
		bk->tokens += (double)(now - bk->ms) * rate / 1000.0;
		if (bk->tokens > rate)
			bk->tokens = rate;
	}
	bk->ms = now ? now : 1;
	if (bk->tokens < 1.0)
		return false;
	bk->tokens -= 1.0;
	return true;
}

void handle_admin(struct kvtd *d, struct client *c, const struct kvt_msg_admin *m)
{
	struct sbuf b = {0};
	bool json = m->aflags & KVT_ADMIN_F_JSON;
	int ret = 0;

	if (!admin_budget(d, c)) {
		d->m.admin_refused_total++;
		sb_printf(&b,
			  "too many admin commands: users other than root and group '%s' may send "
			  "%u a second (daemon.user_admin_rate)\n",
			  d->cfg.admin_group, d->cfg.user_admin_rate);
		admin_send(d, c, &b, -EAGAIN);
		free(b.p);
		/* Its next message waits for the tick (admin_unthrottle): a user that keeps
		 * asking costs the loop one message a tick, not one per turn. */
		if (!c->dead && !c->job) {
			struct epoll_event ee = {.events = EPOLLRDHUP, .data.ptr = &c->sock_ev};

			if (epoll_ctl(d->ep, EPOLL_CTL_MOD, c->sock, &ee) == 0)
				c->throttled = true;
		}
		return;
	}
	switch (m->cmd) {
	case KVT_ADMIN_STATUS:
		render_status(d, &b, json);
		break;
	case KVT_ADMIN_TIERS:
		if (json)
			sb_printf(&b, "[");
		render_tiers(d, &b, json, true);
		if (json)
			sb_printf(&b, "]\n");
		break;
	case KVT_ADMIN_BLOCKS:
		if (render_blocks(d, c, json, m->arg))
			return; /* replies when its walk is done */
		b.oom = true;
		break;
	case KVT_ADMIN_CLIENTS:
		render_clients(d, c, &b, json);
		break;
	case KVT_ADMIN_METRICS:
		if (json)
			render_metrics_json(d, &b);
		else
			render_metrics(d, &b);
		break;
	case KVT_ADMIN_CONFIG:
		render_config(d, &b, json);
		break;
	case KVT_ADMIN_CALIBRATE:
		if (!c->admin) {
			ret = -EPERM;
			sb_printf(&b, "permission denied: calibrate needs root or group '%s'\n",
				  d->cfg.admin_group);
			break;
		}
		/* a model name may follow the message (kvtierctl calibrate MODEL) */
		char model[64] = "";
		size_t extra = m->h.len - sizeof(*m);

		if (extra && extra < sizeof(model) && !((const char *)(m + 1))[extra - 1])
			memcpy(model, m + 1, extra);
		else if (extra) {
			ret = -EINVAL;
			sb_printf(&b, "calibrate: a model name of 1 to 63 bytes\n");
			break;
		}
		ret = kvtd_auto_calibrate(d, c, m->arg, model, json, &b);
		if (ret == 1) {
			/* Replies when the calibration ends (admin_reply); its next request
			 * waits for that reply: no reading from it meanwhile. */
			struct epoll_event ee = {.events = EPOLLRDHUP, .data.ptr = &c->sock_ev};

			epoll_ctl(d->ep, EPOLL_CTL_MOD, c->sock, &ee);
			free(b.p);
			return;
		}
		break;
	case KVT_ADMIN_EVICT:
	case KVT_ADMIN_FLUSH:
		if (!c->admin) {
			ret = -EPERM;
			sb_printf(&b, "permission denied: %s needs root or group '%s'\n",
				  m->cmd == KVT_ADMIN_EVICT ? "evict" : "writeback",
				  d->cfg.admin_group);
			break;
		}
		if (m->cmd == KVT_ADMIN_EVICT) {
			ret = admin_evict(d, &b, json, m->arg);
		} else {
			int n = kvtd_flush(d);
			/* "flushed_blocks" stays for scripts written before writeback. */
			if (n < 0 && json)
				sb_printf(&b, "{\"written_back_blocks\":0,\"flushed_blocks\":0,"
					      "\"note\":\"no NVMe tier configured\"}\n");
			else if (n < 0)
				sb_printf(&b,
					  "nothing to write back: no NVMe tier is configured\n");
			else if (json)
				sb_printf(&b,
					  "{\"written_back_blocks\":%d,\"flushed_blocks\":%d}\n", n,
					  n);
			else
				sb_printf(&b,
					  "queued %d blocks for writing to NVMe (copies; the host "
					  "tier keeps them)\n",
					  n);
		}
		break;
	default:
		ret = -EINVAL;
		d->m.protocol_errors_total++;
		sb_printf(&b, "unknown admin command %u\n", m->cmd);
		break;
	}
	admin_send(d, c, &b, ret);
	free(b.p);
}

/* Sends an admin reply, split into packets; the last one has no MORE flag. */
static void admin_send(struct kvtd *d, struct client *c, struct sbuf *sb, int ret)
{
	struct sbuf b = *sb;
	size_t off = 0;

	if (b.oom) {
		ret = -ENOMEM;
		b.len = 0;
	}
	do {
		size_t n = b.len - off < ADMIN_CHUNK ? b.len - off : ADMIN_CHUNK;
		size_t plen = sizeof(struct kvt_msg_result) + n;
		struct kvt_msg_result *r = (struct kvt_msg_result *)d->msgbuf;

		memset(r, 0, sizeof(*r));
		kvt_msg_init(&r->h, KVT_MSG_RESULT, (uint32_t)plen);
		r->res = ret;
		if (off + n < b.len)
			r->h.flags = KVT_MSG_F_MORE;
		if (n)
			memcpy(r + 1, b.p + off, n);
		if (sock_send(c->sock, r, plen, NULL, 0) < 0) {
			client_kill(d, c, "admin reply failed");
			break;
		}
		off += n;
	} while (off < b.len);
}

void admin_reply(struct kvtd *d, struct client *c, struct sbuf *b, int ret)
{
	struct epoll_event ee = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = &c->sock_ev};

	admin_send(d, c, b, ret);
	if (!c->dead && !c->job && !c->throttled)
		epoll_ctl(d->ep, EPOLL_CTL_MOD, c->sock, &ee);
}

/* Reads the sockets of connections held back by daemon.user_admin_rate again. */
void admin_unthrottle(struct kvtd *d)
{
	for (struct client *c = d->clients; c; c = c->next) {
		struct epoll_event ee = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = &c->sock_ev};

		if (!c->throttled || c->dead)
			continue;
		c->throttled = false;
		if (!c->job)
			epoll_ctl(d->ep, EPOLL_CTL_MOD, c->sock, &ee);
	}
}
