/* SPDX-License-Identifier: MIT */
/*
 * redis_cluster.c - Redis Cluster routing for the remote tier (contract in redis_cluster.h):
 * key slots, the slot map and its refresh, and the calls (routing, redirections, retries,
 * deadlines).  Connections, replies and I/O are redis_conn.c's.
 */
#define _GNU_SOURCE
#include "redis_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const uint16_t crc16tab[256] = {
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50a5, 0x60c6, 0x70e7, 0x8108, 0x9129, 0xa14a, 0xb16b,
    0xc18c, 0xd1ad, 0xe1ce, 0xf1ef, 0x1231, 0x0210, 0x3273, 0x2252, 0x52b5, 0x4294, 0x72f7, 0x62d6,
    0x9339, 0x8318, 0xb37b, 0xa35a, 0xd3bd, 0xc39c, 0xf3ff, 0xe3de, 0x2462, 0x3443, 0x0420, 0x1401,
    0x64e6, 0x74c7, 0x44a4, 0x5485, 0xa56a, 0xb54b, 0x8528, 0x9509, 0xe5ee, 0xf5cf, 0xc5ac, 0xd58d,
    0x3653, 0x2672, 0x1611, 0x0630, 0x76d7, 0x66f6, 0x5695, 0x46b4, 0xb75b, 0xa77a, 0x9719, 0x8738,
    0xf7df, 0xe7fe, 0xd79d, 0xc7bc, 0x48c4, 0x58e5, 0x6886, 0x78a7, 0x0840, 0x1861, 0x2802, 0x3823,
    0xc9cc, 0xd9ed, 0xe98e, 0xf9af, 0x8948, 0x9969, 0xa90a, 0xb92b, 0x5af5, 0x4ad4, 0x7ab7, 0x6a96,
    0x1a71, 0x0a50, 0x3a33, 0x2a12, 0xdbfd, 0xcbdc, 0xfbbf, 0xeb9e, 0x9b79, 0x8b58, 0xbb3b, 0xab1a,
    0x6ca6, 0x7c87, 0x4ce4, 0x5cc5, 0x2c22, 0x3c03, 0x0c60, 0x1c41, 0xedae, 0xfd8f, 0xcdec, 0xddcd,
    0xad2a, 0xbd0b, 0x8d68, 0x9d49, 0x7e97, 0x6eb6, 0x5ed5, 0x4ef4, 0x3e13, 0x2e32, 0x1e51, 0x0e70,
    0xff9f, 0xefbe, 0xdfdd, 0xcffc, 0xbf1b, 0xaf3a, 0x9f59, 0x8f78, 0x9188, 0x81a9, 0xb1ca, 0xa1eb,
    0xd10c, 0xc12d, 0xf14e, 0xe16f, 0x1080, 0x00a1, 0x30c2, 0x20e3, 0x5004, 0x4025, 0x7046, 0x6067,
    0x83b9, 0x9398, 0xa3fb, 0xb3da, 0xc33d, 0xd31c, 0xe37f, 0xf35e, 0x02b1, 0x1290, 0x22f3, 0x32d2,
    0x4235, 0x5214, 0x6277, 0x7256, 0xb5ea, 0xa5cb, 0x95a8, 0x8589, 0xf56e, 0xe54f, 0xd52c, 0xc50d,
    0x34e2, 0x24c3, 0x14a0, 0x0481, 0x7466, 0x6447, 0x5424, 0x4405, 0xa7db, 0xb7fa, 0x8799, 0x97b8,
    0xe75f, 0xf77e, 0xc71d, 0xd73c, 0x26d3, 0x36f2, 0x0691, 0x16b0, 0x6657, 0x7676, 0x4615, 0x5634,
    0xd94c, 0xc96d, 0xf90e, 0xe92f, 0x99c8, 0x89e9, 0xb98a, 0xa9ab, 0x5844, 0x4865, 0x7806, 0x6827,
    0x18c0, 0x08e1, 0x3882, 0x28a3, 0xcb7d, 0xdb5c, 0xeb3f, 0xfb1e, 0x8bf9, 0x9bd8, 0xabbb, 0xbb9a,
    0x4a75, 0x5a54, 0x6a37, 0x7a16, 0x0af1, 0x1ad0, 0x2ab3, 0x3a92, 0xfd2e, 0xed0f, 0xdd6c, 0xcd4d,
    0xbdaa, 0xad8b, 0x9de8, 0x8dc9, 0x7c26, 0x6c07, 0x5c64, 0x4c45, 0x3ca2, 0x2c83, 0x1ce0, 0x0cc1,
    0xef1f, 0xff3e, 0xcf5d, 0xdf7c, 0xaf9b, 0xbfba, 0x8fd9, 0x9ff8, 0x6e17, 0x7e36, 0x4e55, 0x5e74,
    0x2e93, 0x3eb2, 0x0ed1, 0x1ef0,
};

static uint16_t crc16(const unsigned char *p, size_t n)
{
	uint16_t crc = 0;

	while (n--)
		crc = (uint16_t)((crc << 8) ^ crc16tab[((crc >> 8) ^ *p++) & 0xff]);
	return crc;
}

unsigned kvt_rc_keyslot(const void *key, size_t len)
{
	const unsigned char *k = key;
	size_t s, e;

	/* Redis's rule: the first '{' and the first '}' after it; an empty tag hashes the
	 * whole key. */
	for (s = 0; s < len && k[s] != '{'; s++)
		;
	if (s < len) {
		for (e = s + 1; e < len && k[e] != '}'; e++)
			;
		if (e < len && e != s + 1)
			return crc16(k + s + 1, e - s - 1) & (KVT_RC_SLOTS - 1);
	}
	return crc16(k, len) & (KVT_RC_SLOTS - 1);
}

/* ---- slot map ---- */

static bool rc_slots_stop(const struct kvt_rc *rc)
{
	return rc->slots_reply || !rc->slots_active;
}

static int rc_apply_slots(struct kvt_rc *rc, const redisReply *r, int from)
{
	uint16_t *map = rc->newmap;
	struct rc_node *src = &rc->nodes[from];

	if (r->type == REDIS_REPLY_ERROR) {
		if (r->len && memmem(r->str, r->len, "cluster support disabled", 24)) {
			/* A plain Redis: it serves every slot. */
			for (unsigned s = 0; s < KVT_RC_SLOTS; s++)
				rc->map[s] = (uint16_t)(from + 1);
			rc->standalone = true;
			return 0;
		}
		kvt_rcn_seterr(rc, "%s: CLUSTER SLOTS: %.*s", src->addr,
			       (int)(r->len > 160 ? 160 : r->len), r->str);
		return r->len && (kvt_rcn_prefix(r, "NOAUTH") || kvt_rcn_prefix(r, "NOPERM"))
			   ? -EACCES
			   : -EREMOTEIO;
	}
	if (r->type != REDIS_REPLY_ARRAY)
		goto bad;
	memset(map, 0, sizeof(rc->newmap));
	for (size_t i = 0; i < r->elements; i++) {
		const redisReply *e = r->element[i], *m;
		char host[48];
		int node;

		if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
		    e->element[0]->type != REDIS_REPLY_INTEGER ||
		    e->element[1]->type != REDIS_REPLY_INTEGER)
			goto bad;
		m = e->element[2];
		if (m->type != REDIS_REPLY_ARRAY || m->elements < 2 ||
		    m->element[0]->type != REDIS_REPLY_STRING ||
		    m->element[1]->type != REDIS_REPLY_INTEGER ||
		    m->element[0]->len >= sizeof(host))
			goto bad;
		if (e->element[0]->integer < 0 ||
		    e->element[1]->integer >= (long long)KVT_RC_SLOTS ||
		    e->element[0]->integer > e->element[1]->integer)
			goto bad;
		if (m->element[1]->integer <= 0 || m->element[1]->integer > 65535)
			goto bad;
		memcpy(host, m->element[0]->str, m->element[0]->len);
		host[m->element[0]->len] = 0;
		/* "" or "?": the node we asked knows no better address than its own */
		if (!host[0] || !strcmp(host, "?"))
			strcpy(host, src->host);
		node = kvt_rcn_find(rc, host, (int)m->element[1]->integer, true);
		if (node < 0)
			goto bad;
		for (long long s = e->element[0]->integer; s <= e->element[1]->integer; s++)
			map[s] = (uint16_t)(node + 1);
	}
	memcpy(rc->map, map, sizeof(rc->map));
	rc->standalone = false;
	return 0;
bad:
	kvt_rcn_seterr(rc, "%s: protocol error: malformed CLUSTER SLOTS reply", src->addr);
	rc->st.proto_errors++;
	return -EPROTO;
}

int kvt_rc_refresh(struct kvt_rc *rc, uint64_t deadline)
{
	uint64_t now = kvt_rc_now_ns();
	unsigned cand[3], nc = 0, tried = 0;
	int ret = -EHOSTUNREACH;

	if (!rc || rc->magic != RC_MAGIC)
		return -EINVAL;
	rc->gen++; /* what the last call left in flight is an orphan now */
	rc->slots_reply = NULL;
	rc->slots_active = 0;
	rc->slots_err = 0;
	/* Up to three nodes whose breaker is closed, round robin, seeds included. */
	for (unsigned i = 0; i < rc->nnodes && nc < 3; i++) {
		unsigned j = (rc->refresh_rr + i) % rc->nnodes;

		if (kvt_rcn_breaker_open(&rc->nodes[j], now))
			continue;
		cand[nc++] = j;
	}
	rc->refresh_rr++;
	if (!nc) {
		kvt_rcn_seterr(rc, "no node to ask for the slot map (every breaker open)");
		ret = -EHOSTDOWN;
		goto out;
	}
	for (unsigned i = 0; i < nc; i++) {
		struct rc_node *n = &rc->nodes[cand[i]];
		static const char *const argv[2] = {"CLUSTER", "SLOTS"};

		if (n->fd < 0 && (ret = kvt_rcn_connect(rc, n)) < 0) {
			kvt_rcn_drop(rc, n, ret, true);
			continue;
		}
		if (kvt_rcn_queue_strs(n, 2, argv) < 0 ||
		    kvt_rcn_pend_push(n, PEND_SLOTS, -1, rc->gen) < 0) {
			ret = -ENOMEM;
			goto out;
		}
		tried++;
		rc->slots_active++;
	}
	if (!tried)
		goto out;
	ret = kvt_rcn_io(rc, deadline, rc_slots_stop);
	if (rc->slots_reply) {
		ret = rc_apply_slots(rc, rc->slots_reply, rc->slots_node);
		freeReplyObject(rc->slots_reply);
		rc->slots_reply = NULL;
		if (ret == 0) {
			rc->have_map = true;
			rc->need_refresh = false;
			rc->st.refreshes++;
			rc->st.standalone = rc->standalone;
		}
	} else if (ret == 0) {
		ret = rc->slots_err ? rc->slots_err : -EHOSTUNREACH;
	}
	/* Nodes that did not answer by the deadline count as failed. */
	for (unsigned i = 0; i < nc; i++)
		if (ret == -ETIMEDOUT && kvt_rcn_busy(rc, &rc->nodes[cand[i]]))
			kvt_rcn_drop(rc, &rc->nodes[cand[i]], -ETIMEDOUT, true);
out:
	rc->last_refresh = kvt_rc_now_ns();
	rc->refresh_err = ret < 0 ? ret : 0;
	if (ret < 0)
		rc->st.refresh_fails++;
	for (unsigned i = 0; i < rc->nnodes; i++)
		rc->nodes[i].slots = 0;
	for (unsigned s = 0; s < KVT_RC_SLOTS; s++)
		if (rc->map[s])
			rc->nodes[rc->map[s] - 1].slots++;
	rc->gen++;
	return ret;
}

/* ---- exec ---- */

static bool rc_cmds_stop(const struct kvt_rc *rc)
{
	return rc->active == 0;
}

static int rc_send_cmd(struct kvt_rc *rc, struct kvt_rc_cmd *c, unsigned i, uint64_t now)
{
	int node = c->ask_node >= 0 ? c->ask_node : (int)rc->map[c->slot] - 1;
	struct rc_node *n;
	int ret;

	if (node < 0) {
		/* No map yet: the refresh's error says why (and its text stays). */
		c->res = rc->have_map ? -EHOSTUNREACH : rc->refresh_err;
		c->state = CS_BACKOFF;
		rc->need_refresh = true;
		if (rc->have_map)
			kvt_rcn_seterr(rc, "no node serves slot %u", c->slot);
		return 0;
	}
	n = &rc->nodes[node];
	if (kvt_rcn_breaker_open(n, now)) {
		c->res = -EHOSTDOWN;
		c->state = CS_DONE;
		rc->st.breaker_fast_fails++;
		rc->need_refresh = true; /* a failover may have moved the slot elsewhere */
		return 0;
	}
	if (n->fd < 0) {
		ret = kvt_rcn_connect(rc, n);
		if (ret < 0) {
			c->res = ret;
			c->state = CS_BACKOFF;
			kvt_rcn_drop(rc, n, ret, true);
			return 0;
		}
	}
	if (c->ask_node >= 0) {
		static const char *const asking[1] = {"ASKING"};

		if (kvt_rcn_queue_strs(n, 1, asking) < 0 ||
		    kvt_rcn_pend_push(n, PEND_ASKING, -1, rc->gen) < 0)
			return -ENOMEM;
		c->ask_node = -1;
	}
	if (kvt_rcn_queue_args(n, c->argc, c->arg) < 0 ||
	    kvt_rcn_pend_push(n, PEND_CMD, (int32_t)i, rc->gen))
		return -ENOMEM;
	c->state = CS_SENT;
	rc->active++;
	return 0;
}

/* Leaves the connections clean for the next call: a command not fully sent cannot be taken
 * back (and borrows the caller's memory), so that connection goes; replies still owed become
 * orphans, dropped when they come.  A node that owed replies at the deadline failed once. */
static void rc_end_call(struct kvt_rc *rc, bool timed_out)
{
	uint64_t now = kvt_rc_now_ns();

	for (unsigned i = 0; i < rc->nnodes; i++) {
		struct rc_node *n = &rc->nodes[i];

		if (!kvt_rcn_busy(rc, n))
			continue;
		if (timed_out) {
			rc->st.io_errors++;
			kvt_rcn_count_fail(rc, n);
			kvt_rcn_seterr(rc, "%s: no reply by the deadline", n->addr);
		}
		if (n->seg_head < n->nseg || n->pend_n > RC_MAX_ORPHANS ||
		    kvt_rcn_breaker_open(n, now))
			kvt_rcn_drop(rc, n, -ETIMEDOUT, false);
	}
	rc->gen++;
}

int kvt_rc_exec(struct kvt_rc *rc, struct kvt_rc_cmd *cmds, unsigned n, uint64_t deadline)
{
	bool timed_out = false;
	unsigned ok = 0;
	int ret = 0;

	if (!rc || rc->magic != RC_MAGIC || (n && !cmds))
		return -EINVAL;
	for (unsigned i = 0; i < n; i++) {
		struct kvt_rc_cmd *c = &cmds[i];

		if (c->argc == 0 || c->argc > KVT_RC_MAX_ARGS || c->key_arg >= c->argc)
			return -EINVAL;
		c->reply = NULL;
		c->res = -ETIMEDOUT;
		c->ask_node = -1;
		c->hops = 0;
		c->state = CS_READY;
		/* Keys are one piece: the second is for values. */
		c->slot =
		    (uint16_t)kvt_rc_keyslot(c->arg[c->key_arg].p[0], c->arg[c->key_arg].len[0]);
	}
	for (;;) {
		uint64_t now = kvt_rc_now_ns();
		unsigned sent = 0, backoff = 0;

		if (now >= deadline) {
			timed_out = true;
			break;
		}
		if (!rc->have_map ||
		    (rc->need_refresh &&
		     now - rc->last_refresh >= (uint64_t)rc->conf.refresh_min_ms * 1000000u)) {
			ret = kvt_rc_refresh(rc, deadline);
			if (!rc->have_map &&
			    (ret == -EPROTO || ret == -EACCES || ret == -EHOSTDOWN)) {
				/* No map and retrying cannot help: say why, now. */
				for (unsigned i = 0; i < n; i++)
					if (cmds[i].state != CS_DONE)
						cmds[i].res = ret, cmds[i].state = CS_DONE;
				break;
			}
			now = kvt_rc_now_ns();
		}
		/* Replies of this call are matched by the generation from here on. */
		rc->cmds = cmds;
		rc->ncmds = n;
		rc->active = 0;
		for (unsigned i = 0; i < n; i++) {
			struct kvt_rc_cmd *c = &cmds[i];

			if (c->state == CS_BACKOFF)
				backoff++;
			if (c->state != CS_READY)
				continue;
			if ((ret = rc_send_cmd(rc, c, i, now)) < 0)
				goto out;
			sent += c->state == CS_SENT;
			backoff += c->state == CS_BACKOFF;
		}
		if (sent) {
			ret = kvt_rcn_io(rc, deadline, rc_cmds_stop);
			if (ret == -ETIMEDOUT) {
				timed_out = true;
				break;
			}
			if (ret < 0)
				goto out;
		} else if (backoff) {
			/* CLUSTERDOWN, TRYAGAIN, a refused connect, no map: give the cluster a
			 * moment (never past the deadline), then ask it again. */
			uint64_t wait = 20000000u, left;
			struct timespec ts;

			now = kvt_rc_now_ns();
			if (now >= deadline) {
				timed_out = true;
				break;
			}
			left = deadline - now;
			wait = wait < left ? wait : left;
			ts.tv_sec = 0;
			ts.tv_nsec = (long)wait;
			nanosleep(&ts, NULL);
			rc->need_refresh = true;
			for (unsigned i = 0; i < n; i++)
				if (cmds[i].state == CS_BACKOFF)
					cmds[i].state = CS_READY;
		} else {
			break; /* every command is done */
		}
	}
	ret = 0;
out:
	rc_end_call(rc, timed_out);
	for (unsigned i = 0; i < n; i++) {
		struct kvt_rc_cmd *c = &cmds[i];

		if (c->state != CS_DONE) {
			/* Still owed, or waiting to retry: the deadline decided; a retryable
			 * error seen on the way (-EHOSTUNREACH, -EAGAIN...) says more. */
			if (c->res == 0 || c->state == CS_SENT)
				c->res = -ETIMEDOUT;
			if (c->reply)
				freeReplyObject(c->reply);
			c->reply = NULL;
			c->state = CS_DONE;
		}
		if (c->res == -ETIMEDOUT)
			rc->st.timeouts++;
		if (c->res == 0)
			ok++;
	}
	rc->cmds = NULL;
	rc->active = 0;
	return ret < 0 ? ret : (int)ok;
}

void kvt_rc_cmd_clear(struct kvt_rc_cmd *cmd)
{
	if (cmd->reply)
		freeReplyObject(cmd->reply);
	cmd->reply = NULL;
	cmd->res = 0;
}

/* ---- setup ---- */

static int rc_read_auth(struct kvt_rc *rc, const char *path)
{
	char line[512], *sp, *end;
	FILE *f = fopen(path, "re");

	if (!f) {
		kvt_rcn_seterr(rc, "auth file %s: %s", path, strerror(errno));
		return -errno;
	}
	if (!fgets(line, sizeof(line), f)) {
		fclose(f);
		kvt_rcn_seterr(rc, "auth file %s: empty", path);
		return -EINVAL;
	}
	fclose(f);
	end = line + strcspn(line, "\r\n");
	*end = 0;
	sp = strchr(line, ' ');
	if (sp) {
		*sp = 0;
		rc->user = strdup(line);
		rc->pass = strdup(sp + 1);
	} else {
		rc->pass = strdup(line);
	}
	explicit_bzero(line, sizeof(line));
	if (!rc->pass || (sp && !rc->user) || !rc->pass[0]) {
		kvt_rcn_seterr(rc, "auth file %s: no password", path);
		return -EINVAL;
	}
	return 0;
}

int kvt_rc_open(const struct kvt_rc_conf *conf, struct kvt_rc **out)
{
	struct kvt_rc *rc;
	char *list = NULL, *save = NULL, *tok;
	int ret = -EINVAL;

	*out = NULL;
	if (!conf || conf->size < sizeof(*conf) || !conf->seeds || !conf->seeds[0])
		return -EINVAL;
	rc = calloc(1, sizeof(*rc));
	if (!rc)
		return -ENOMEM;
	rc->magic = RC_MAGIC;
	rc->conf = *conf;
	if (!rc->conf.breaker_failures)
		rc->conf.breaker_failures = 3;
	if (!rc->conf.breaker_open_ms)
		rc->conf.breaker_open_ms = 500;
	if (!rc->conf.refresh_min_ms)
		rc->conf.refresh_min_ms = 100;
	if (!rc->conf.max_redirects)
		rc->conf.max_redirects = 16;
	rc->conf.seeds = NULL;
	rc->conf.auth_file = NULL;
	rc->nodes = calloc(RC_MAX_NODES, sizeof(*rc->nodes));
	rc->rbuf = malloc(RC_RBUF);
	list = strdup(conf->seeds);
	if (!rc->nodes || !rc->rbuf || !list) {
		ret = -ENOMEM;
		goto fail;
	}
	for (tok = strtok_r(list, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
		char *colon = strrchr(tok, ':'), *end;
		long port;
		int node;

		if (!colon || colon == tok)
			goto bad_seed;
		*colon = 0;
		port = strtol(colon + 1, &end, 10);
		if (*end || port <= 0 || port > 65535)
			goto bad_seed;
		node = kvt_rcn_find(rc, tok, (int)port, true);
		if (node < 0 || rc->nseeds >= 16)
			goto bad_seed;
		rc->seeds[rc->nseeds++] = node;
	}
	if (!rc->nseeds)
		goto bad_seed;
	if (conf->auth_file && (ret = rc_read_auth(rc, conf->auth_file)) < 0)
		goto fail;
	snprintf(rc->err, sizeof(rc->err), "no error");
	free(list);
	*out = rc;
	return 0;
bad_seed:
	ret = -EINVAL;
fail:
	free(list);
	kvt_rc_close(rc);
	return ret;
}

void kvt_rc_close(struct kvt_rc *rc)
{
	if (!rc)
		return;
	for (unsigned i = 0; i < rc->nnodes; i++) {
		struct rc_node *n = &rc->nodes[i];

		if (n->fd >= 0)
			close(n->fd);
		if (n->rd)
			redisReaderFree(n->rd);
		free(n->arena);
		free(n->segs);
		free(n->pend);
	}
	if (rc->pass)
		explicit_bzero(rc->pass, strlen(rc->pass));
	free(rc->user);
	free(rc->pass);
	free(rc->nodes);
	free(rc->rbuf);
	rc->magic = 0;
	free(rc);
}

const char *kvt_rc_slot_node(struct kvt_rc *rc, unsigned slot)
{
	if (!rc || slot >= KVT_RC_SLOTS || !rc->map[slot])
		return NULL;
	return rc->nodes[rc->map[slot] - 1].addr;
}

void kvt_rc_get_stats(const struct kvt_rc *rc, struct kvt_rc_stats *st)
{
	*st = rc->st;
	st->standalone = rc->standalone;
}

unsigned kvt_rc_nodes(const struct kvt_rc *rc, struct kvt_rc_node_info *out, unsigned max)
{
	uint64_t now = kvt_rc_now_ns();

	for (unsigned i = 0; i < rc->nnodes && i < max; i++) {
		const struct rc_node *n = &rc->nodes[i];

		snprintf(out[i].addr, sizeof(out[i].addr), "%s", n->addr);
		out[i].slots = n->slots;
		out[i].connected = n->fd >= 0;
		out[i].breaker_open = kvt_rcn_breaker_open(n, now);
		out[i].bytes_out = n->bytes_out;
		out[i].bytes_in = n->bytes_in;
		out[i].errors = n->errors;
		out[i].breaker_trips = n->trips;
	}
	return rc->nnodes;
}
