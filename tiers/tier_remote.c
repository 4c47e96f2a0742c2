/* SPDX-License-Identifier: MIT */
/*
 * tier_remote.c - the remote tier over a Redis Cluster (contract in tier_remote.h; routing,
 * deadlines and breakers in redis_cluster.c).
 */
#define _GNU_SOURCE
#include "tier_remote.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_cluster.h"

#define REMOTE_MAGIC 0x544d524bu /* "KRMT" */
#define REMOTE_BATCH 256u	 /* commands per kvt_rc_exec */

struct kvt_remote {
	uint32_t magic;
	struct kvt_rc *rc;
	uint32_t ttl_s;
	char ttl[16];
	struct kvt_rc_cmd cmds[REMOTE_BATCH];
	char names[REMOTE_BATCH][KVT_REMOTE_KEY_NAME];
	struct kvt_record_hdr hdrs[REMOTE_BATCH];
	struct kvt_remote_stats st;
};

uint64_t kvt_remote_now_ns(void)
{
	return kvt_rc_now_ns();
}

void kvt_remote_key_name(const struct kvt_remote_key *k, char out[KVT_REMOTE_KEY_NAME])
{
	snprintf(out, KVT_REMOTE_KEY_NAME, "kvt:%016llx%016llx:%016llx",
		 (unsigned long long)k->key_hi, (unsigned long long)k->key_lo,
		 (unsigned long long)k->fingerprint);
}

int kvt_remote_parse_value(const void *val, size_t len, const struct kvt_remote_key *want,
			   struct kvt_record_hdr *hdr, const void **payload)
{
	const unsigned char *v = val;

	if (!val || len < sizeof(*hdr))
		return -EBADMSG;
	memcpy(hdr, v, sizeof(*hdr));
	/* Exactly one record: a value with bytes past its payload is not one we wrote. */
	if (kvt_record_check_hdr(hdr, len - sizeof(*hdr)) < 0 ||
	    hdr->payload_len != len - sizeof(*hdr))
		return -EBADMSG;
	if (kvt_record_check(hdr, v + sizeof(*hdr), len - sizeof(*hdr)) < 0)
		return -EBADMSG;
	if (hdr->key_lo != want->key_lo || hdr->key_hi != want->key_hi ||
	    hdr->fingerprint != want->fingerprint)
		return -EBADMSG;
	*payload = v + sizeof(*hdr);
	return 0;
}

/* kvt_remote_parse_value() for a value whose header and payload were stored apart. */
static int parse_split(const struct kvt_record_hdr *h, const void *payload, size_t len,
		       const struct kvt_remote_key *want)
{
	size_t avail = len - sizeof(*h); /* len >= header: the split guaranteed it */

	if (kvt_record_check_hdr(h, avail) < 0 || h->payload_len != avail ||
	    kvt_record_check(h, payload, avail) < 0)
		return -EBADMSG;
	if (h->key_lo != want->key_lo || h->key_hi != want->key_hi ||
	    h->fingerprint != want->fingerprint)
		return -EBADMSG;
	return 0;
}

int kvt_remote_open(const struct kvt_remote_conf *conf, struct kvt_remote **out)
{
	struct kvt_rc_conf rcc = {.size = sizeof(rcc)};
	struct kvt_remote *r;
	int ret;

	*out = NULL;
	if (!conf || conf->size < sizeof(*conf))
		return -EINVAL;
	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	rcc.seeds = conf->seeds;
	rcc.auth_file = conf->auth_file;
	rcc.breaker_failures = conf->breaker_failures;
	rcc.breaker_open_ms = conf->breaker_open_ms;
	ret = kvt_rc_open(&rcc, &r->rc);
	if (ret < 0) {
		free(r);
		return ret;
	}
	r->magic = REMOTE_MAGIC;
	r->ttl_s = conf->ttl_s;
	snprintf(r->ttl, sizeof(r->ttl), "%u", conf->ttl_s);
	*out = r;
	return 0;
}

void kvt_remote_close(struct kvt_remote *r)
{
	if (!r)
		return;
	kvt_rc_close(r->rc);
	r->magic = 0;
	free(r);
}

struct kvt_rc *kvt_remote_cluster(struct kvt_remote *r)
{
	return r ? r->rc : NULL;
}

static void arg_set(struct kvt_rc_arg *a, const void *p, size_t len)
{
	a->p[0] = p;
	a->len[0] = len;
	a->p[1] = NULL;
	a->len[1] = 0;
}

int kvt_remote_put(struct kvt_remote *r, struct kvt_remote_put *v, unsigned n, uint64_t deadline)
{
	int done = 0;

	if (!r || r->magic != REMOTE_MAGIC || (n && !v))
		return -EINVAL;
	for (unsigned base = 0; base < n; base += REMOTE_BATCH) {
		unsigned m = n - base < REMOTE_BATCH ? n - base : REMOTE_BATCH;
		int ret;

		for (unsigned i = 0; i < m; i++) {
			struct kvt_remote_put *p = &v[base + i];
			struct kvt_record_hdr *h = &r->hdrs[i];
			struct kvt_rc_cmd *c = &r->cmds[i];
			struct kvt_remote_key k = {p->hdr.key_lo, p->hdr.key_hi,
						   p->hdr.fingerprint};

			*h = p->hdr;
			h->magic = KVT_RECORD_MAGIC;
			h->version = KVT_RECORD_VERSION;
			h->hdr_size = KVT_RECORD_HDR_SIZE;
			h->seq = 0;
			h->flags = 0;
			kvt_record_seal(h, p->payload);
			kvt_remote_key_name(&k, r->names[i]);
			memset(c, 0, sizeof(*c));
			c->key_arg = 1;
			arg_set(&c->arg[0], "SET", 3);
			arg_set(&c->arg[1], r->names[i], KVT_REMOTE_KEY_NAME - 1);
			c->arg[2].p[0] = h;
			c->arg[2].len[0] = sizeof(*h);
			c->arg[2].p[1] = p->payload;
			c->arg[2].len[1] = h->payload_len;
			c->argc = 3;
			if (!p->replace)
				arg_set(&c->arg[c->argc++], "NX", 2);
			if (r->ttl_s) {
				arg_set(&c->arg[c->argc++], "EX", 2);
				arg_set(&c->arg[c->argc++], r->ttl, strlen(r->ttl));
			}
		}
		ret = kvt_rc_exec(r->rc, r->cmds, m, deadline);
		if (ret < 0)
			return ret;
		for (unsigned i = 0; i < m; i++) {
			struct kvt_rc_cmd *c = &r->cmds[i];
			struct kvt_remote_put *p = &v[base + i];

			r->st.puts++;
			if (c->res < 0) {
				p->res = c->res;
				r->st.put_errors++;
				continue;
			}
			/* OK = stored; nil = NX found it there already. */
			if (c->reply->type == REDIS_REPLY_NIL) {
				p->res = 1;
				r->st.put_exists++;
			} else if (c->reply->type == REDIS_REPLY_STATUS) {
				p->res = 0;
				r->st.put_bytes +=
				    sizeof(struct kvt_record_hdr) + p->hdr.payload_len;
			} else {
				p->res = -EPROTO;
				r->st.put_errors++;
			}
			done += p->res >= 0;
			kvt_rc_cmd_clear(c);
		}
	}
	return done;
}

int kvt_remote_del(struct kvt_remote *r, const struct kvt_remote_key *keys, int *res, unsigned n,
		   uint64_t deadline)
{
	int done = 0;

	if (!r || r->magic != REMOTE_MAGIC || (n && (!keys || !res)))
		return -EINVAL;
	for (unsigned base = 0; base < n; base += REMOTE_BATCH) {
		unsigned m = n - base < REMOTE_BATCH ? n - base : REMOTE_BATCH;
		int ret;

		for (unsigned i = 0; i < m; i++) {
			struct kvt_rc_cmd *c = &r->cmds[i];

			kvt_remote_key_name(&keys[base + i], r->names[i]);
			memset(c, 0, sizeof(*c));
			c->key_arg = 1;
			arg_set(&c->arg[0], "DEL", 3);
			arg_set(&c->arg[1], r->names[i], KVT_REMOTE_KEY_NAME - 1);
			c->argc = 2;
		}
		ret = kvt_rc_exec(r->rc, r->cmds, m, deadline);
		if (ret < 0)
			return ret;
		for (unsigned i = 0; i < m; i++) {
			struct kvt_rc_cmd *c = &r->cmds[i];

			/* An integer: how many it removed (0: not there, as good). */
			res[base + i] = c->res < 0				? c->res
					: c->reply->type == REDIS_REPLY_INTEGER ? 0
										: -EPROTO;
			done += res[base + i] == 0;
			kvt_rc_cmd_clear(c);
		}
	}
	return done;
}

int kvt_remote_get(struct kvt_remote *r, struct kvt_remote_get *g, unsigned n, uint64_t deadline)
{
	int done = 0;

	if (!r || r->magic != REMOTE_MAGIC || (n && !g))
		return -EINVAL;
	for (unsigned base = 0; base < n; base += REMOTE_BATCH) {
		unsigned m = n - base < REMOTE_BATCH ? n - base : REMOTE_BATCH;
		int ret;

		for (unsigned i = 0; i < m; i++) {
			struct kvt_rc_cmd *c = &r->cmds[i];

			kvt_remote_key_name(&g[base + i].key, r->names[i]);
			memset(c, 0, sizeof(*c));
			c->key_arg = 1;
			c->argc = 2;
			arg_set(&c->arg[0], "GET", 3);
			arg_set(&c->arg[1], r->names[i], KVT_REMOTE_KEY_NAME - 1);
			/* The value lands split: header to our scratch, payload to the caller. */
			c->dst[0] = &r->hdrs[i];
			c->dst_len[0] = sizeof(r->hdrs[i]);
			c->dst[1] = g[base + i].buf;
			c->dst_len[1] = g[base + i].buf ? g[base + i].cap : 0;
		}
		ret = kvt_rc_exec(r->rc, r->cmds, m, deadline);
		if (ret < 0)
			return ret;
		for (unsigned i = 0; i < m; i++) {
			struct kvt_rc_cmd *c = &r->cmds[i];
			struct kvt_remote_get *q = &g[base + i];
			const void *payload;

			r->st.gets++;
			if (c->res < 0) {
				q->res = c->res;
				r->st.get_errors++;
				continue;
			}
			if (c->reply->type == REDIS_REPLY_NIL) {
				q->res = -ENOENT;
				r->st.get_misses++;
			} else if (c->reply->type == REDIS_REPLY_STRING && !c->reply->str) {
				/* Copied in place (redis_cluster.h, dst): check it there. */
				if (parse_split(&r->hdrs[i], q->buf, c->reply->len, &q->key) < 0) {
					q->res = -EBADMSG;
					r->st.corrupt++;
				} else {
					q->hdr = r->hdrs[i];
					q->res = (int)q->hdr.payload_len;
					r->st.get_hits++;
					r->st.get_bytes += q->hdr.payload_len;
					done++;
				}
			} else if (c->reply->type != REDIS_REPLY_STRING ||
				   kvt_remote_parse_value(c->reply->str, c->reply->len, &q->key,
							  &q->hdr, &payload) < 0) {
				q->res = -EBADMSG;
				r->st.corrupt++;
			} else if (q->hdr.payload_len > q->cap) {
				q->res = -ENOSPC;
				r->st.get_errors++;
			} else {
				memcpy(q->buf, payload, q->hdr.payload_len);
				q->res = (int)q->hdr.payload_len;
				r->st.get_hits++;
				r->st.get_bytes += q->hdr.payload_len;
				done++;
			}
			kvt_rc_cmd_clear(c);
		}
	}
	return done;
}

int kvt_remote_lookup(struct kvt_remote *r, const struct kvt_remote_key *keys, unsigned n,
		      uint64_t deadline)
{
	unsigned found = 0;

	if (!r || r->magic != REMOTE_MAGIC || (n && !keys))
		return -EINVAL;
	r->st.lookups++;
	for (unsigned base = 0; base < n; base += REMOTE_BATCH) {
		unsigned m = n - base < REMOTE_BATCH ? n - base : REMOTE_BATCH;
		unsigned i;
		int ret;

		for (i = 0; i < m; i++) {
			struct kvt_rc_cmd *c = &r->cmds[i];

			kvt_remote_key_name(&keys[base + i], r->names[i]);
			memset(c, 0, sizeof(*c));
			c->key_arg = 1;
			c->argc = 2;
			arg_set(&c->arg[0], "EXISTS", 6);
			arg_set(&c->arg[1], r->names[i], KVT_REMOTE_KEY_NAME - 1);
		}
		ret = kvt_rc_exec(r->rc, r->cmds, m, deadline);
		if (ret < 0)
			return ret;
		r->st.lookup_keys += m;
		/* The prefix stops at the first key not stored (or not answered). */
		for (i = 0; i < m; i++) {
			struct kvt_rc_cmd *c = &r->cmds[i];

			if (c->res < 0 || c->reply->type != REDIS_REPLY_INTEGER ||
			    c->reply->integer != 1)
				break;
		}
		for (unsigned j = 0; j < m; j++) {
			if (r->cmds[j].res < 0 && j <= i)
				r->st.lookup_errors++;
			kvt_rc_cmd_clear(&r->cmds[j]);
		}
		found += i;
		if (i < m)
			break;
	}
	return (int)found;
}

void kvt_remote_get_stats(const struct kvt_remote *r, struct kvt_remote_stats *st)
{
	*st = r->st;
}
