/* SPDX-License-Identifier: MIT */
/*
 * redis_conn.c - the remote tier's connections to Redis nodes: non-blocking connect, the
 * output queue, the reply FIFO, the circuit breaker and the one poll() loop (redis_cluster.h
 * is the contract, redis_internal.h the shared state).
 *
 * hiredis 0.14 gives the reply parser; sockets, connect, pipelining and waiting are ours so
 * that every wait is one poll() bounded by the caller's deadline (hiredis's blocking
 * context would block in connect() and read()).  Commands are written with sendmsg() from
 * the caller's buffers (small pieces copied into a per-node arena, large ones borrowed), so
 * a 1 MiB value is never copied on the way out.
 */
#define _GNU_SOURCE
#include "redis_internal.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

uint64_t kvt_rc_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void kvt_rcn_seterr(struct kvt_rc *rc, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(rc->err, sizeof(rc->err), fmt, ap);
	va_end(ap);
}

const char *kvt_rc_errstr(const struct kvt_rc *rc)
{
	return rc ? rc->err : "no client";
}

/* ---- nodes ---- */

int kvt_rcn_find(struct kvt_rc *rc, const char *host, int port, bool create)
{
	struct rc_node *n;

	for (unsigned i = 0; i < rc->nnodes; i++)
		if (rc->nodes[i].port == port && !strcmp(rc->nodes[i].host, host))
			return (int)i;
	if (!create)
		return -ENOENT;
	if (rc->nnodes >= RC_MAX_NODES || strlen(host) >= sizeof(n->host) || port <= 0 ||
	    port > 65535)
		return -EINVAL;
	n = &rc->nodes[rc->nnodes];
	memset(n, 0, sizeof(*n));
	strcpy(n->host, host);
	n->port = port;
	snprintf(n->addr, sizeof(n->addr), "%s:%d", host, port);
	n->fd = -1;
	n->state = RC_DOWN;
	rc->st.nodes = ++rc->nnodes;
	return (int)(rc->nnodes - 1);
}

bool kvt_rcn_breaker_open(const struct rc_node *n, uint64_t now)
{
	return n->fails >= 1 && n->open_until > now;
}

static void rc_node_reset_out(struct rc_node *n)
{
	n->nseg = n->seg_head = 0;
	n->seg_off = 0;
	n->arena_len = 0;
	n->borrowed = false;
}

/* One failure of the node (refused, reset, timed out, garbage); enough in a row open its
 * breaker for breaker_open_ms.  A half-open breaker that fails again reopens at once. */
void kvt_rcn_count_fail(struct kvt_rc *rc, struct rc_node *n)
{
	uint64_t now = kvt_rc_now_ns();

	n->errors++;
	n->fails++;
	if (n->fails >= rc->conf.breaker_failures) {
		if (!kvt_rcn_breaker_open(n, now))
			n->trips++;
		n->open_until = now + (uint64_t)rc->conf.breaker_open_ms * 1000000u;
	}
}

/*
 * Drops the connection: every reply still owed fails with err (commands of the current call
 * are retried by exec), the output queue is discarded.  counts = a failure of the node (the
 * breaker counts it); a breaker that reaches breaker_failures opens.
 */
void kvt_rcn_drop(struct kvt_rc *rc, struct rc_node *n, int err, bool counts)
{
	for (unsigned i = 0; i < n->pend_n; i++) {
		struct rc_pend *p = &n->pend[(n->pend_head + i) % n->pend_cap];

		if (p->gen != rc->gen)
			continue;
		if (p->kind == PEND_CMD && p->cmd >= 0) {
			struct kvt_rc_cmd *c = &rc->cmds[p->cmd];

			c->res = err;
			c->state = CS_BACKOFF;
			rc->active--;
		} else if (p->kind == PEND_SLOTS) {
			rc->slots_err = err;
			rc->slots_active--;
		}
	}
	n->pend_n = n->pend_head = 0;
	if (n->fd >= 0)
		close(n->fd);
	n->fd = -1;
	n->state = RC_DOWN;
	if (n->rd)
		redisReaderFree(n->rd);
	n->rd = NULL;
	rc_node_reset_out(n);
	if (counts)
		kvt_rcn_count_fail(rc, n);
	rc->need_refresh = true;
}

static int rc_arena_put(struct rc_node *n, const void *p, size_t len, size_t *off)
{
	if (n->arena_len + len > n->arena_cap) {
		size_t cap = n->arena_cap ? n->arena_cap : 4096;
		char *a;

		while (cap < n->arena_len + len)
			cap *= 2;
		a = realloc(n->arena, cap);
		if (!a)
			return -ENOMEM;
		n->arena = a;
		n->arena_cap = cap;
	}
	memcpy(n->arena + n->arena_len, p, len);
	*off = n->arena_len;
	n->arena_len += len;
	return 0;
}

/* Appends bytes to the output queue: copied into the arena (merged with the previous arena
 * segment) or borrowed. */
static int rc_out(struct rc_node *n, const void *p, size_t len, bool borrow)
{
	struct rc_seg *s;
	size_t off;

	if (!len)
		return 0;
	if (!borrow) {
		if (rc_arena_put(n, p, len, &off) < 0)
			return -ENOMEM;
		s = n->nseg > n->seg_head ? &n->segs[n->nseg - 1] : NULL;
		if (s && !s->ptr && s->off + s->len == off) {
			s->len += len;
			return 0;
		}
	}
	if (n->nseg == n->seg_cap) {
		unsigned cap = n->seg_cap ? n->seg_cap * 2 : 64;
		struct rc_seg *segs = realloc(n->segs, cap * sizeof(*segs));

		if (!segs)
			return -ENOMEM;
		n->segs = segs;
		n->seg_cap = cap;
	}
	s = &n->segs[n->nseg++];
	s->ptr = borrow ? p : NULL;
	s->off = borrow ? 0 : off;
	s->len = len;
	if (borrow)
		n->borrowed = true;
	return 0;
}

int kvt_rcn_pend_push(struct rc_node *n, uint8_t kind, int32_t cmd, uint64_t gen)
{
	if (n->pend_n == n->pend_cap) {
		unsigned cap = n->pend_cap ? n->pend_cap * 2 : 64;
		struct rc_pend *p = malloc(cap * sizeof(*p));

		if (!p)
			return -ENOMEM;
		for (unsigned i = 0; i < n->pend_n; i++)
			p[i] = n->pend[(n->pend_head + i) % n->pend_cap];
		free(n->pend);
		n->pend = p;
		n->pend_cap = cap;
		n->pend_head = 0;
	}
	n->pend[(n->pend_head + n->pend_n) % n->pend_cap] =
	    (struct rc_pend){.kind = kind, .cmd = cmd, .gen = gen};
	n->pend_n++;
	return 0;
}

/* Queues one command in RESP: "*argc\r\n" then "$len\r\n" data "\r\n" per argument. */
int kvt_rcn_queue_args(struct rc_node *n, unsigned argc, const struct kvt_rc_arg *arg)
{
	char hdr[32];
	int len, ret;

	len = snprintf(hdr, sizeof(hdr), "*%u\r\n", argc);
	ret = rc_out(n, hdr, (size_t)len, false);
	for (unsigned i = 0; i < argc && !ret; i++) {
		len = snprintf(hdr, sizeof(hdr), "$%zu\r\n", arg[i].len[0] + arg[i].len[1]);
		ret = rc_out(n, hdr, (size_t)len, false);
		for (int j = 0; j < 2 && !ret; j++)
			ret = rc_out(n, arg[i].p[j], arg[i].len[j], arg[i].len[j] >= RC_BORROW_MIN);
		if (!ret)
			ret = rc_out(n, "\r\n", 2, false);
	}
	return ret;
}

int kvt_rcn_queue_strs(struct rc_node *n, unsigned argc, const char *const *argv)
{
	struct kvt_rc_arg a[KVT_RC_MAX_ARGS];

	memset(a, 0, sizeof(a));
	for (unsigned i = 0; i < argc; i++) {
		a[i].p[0] = argv[i];
		a[i].len[0] = strlen(argv[i]);
	}
	return kvt_rcn_queue_args(n, argc, a);
}

/*
 * Replies copied straight into the caller's buffer.  hiredis builds a reply with its
 * createString hook while the bytes are still in its read buffer; ours copies a bulk string
 * into the destination of the command at the head of the node's FIFO (the reply being parsed
 * is always that one's), saving the reply's own copy and the caller's copy out of it.  The
 * command is passed through a thread-local: the hook has no argument of ours.
 */
static __thread struct kvt_rc_cmd *rc_dst_cmd;
static redisReplyObjectFunctions rc_fns;
static void *(*rc_default_string)(const redisReadTask *, char *, size_t);
static pthread_once_t rc_fns_once = PTHREAD_ONCE_INIT;

static void *rc_create_string(const redisReadTask *task, char *str, size_t len)
{
	struct kvt_rc_cmd *c = rc_dst_cmd;
	redisReply *r;

	if (task->parent || task->type != REDIS_REPLY_STRING || !c || len < c->dst_len[0] ||
	    len > c->dst_len[0] + c->dst_len[1])
		return rc_default_string(task, str, len);
	r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->type = REDIS_REPLY_STRING;
	r->len = len;
	memcpy(c->dst[0], str, c->dst_len[0]);
	if (len > c->dst_len[0])
		memcpy(c->dst[1], str + c->dst_len[0], len - c->dst_len[0]);
	return r;
}

static void rc_fns_init(void)
{
	redisReader *rd = redisReaderCreate();

	/* hiredis's own functions (its table is not exported), with our string hook. */
	if (!rd)
		abort();
	rc_fns = *rd->fn;
	rc_default_string = rc_fns.createString;
	rc_fns.createString = rc_create_string;
	redisReaderFree(rd);
}

/* Starts a non-blocking connect (numeric addresses first; a name is resolved here). */
int kvt_rcn_connect(struct kvt_rc *rc, struct rc_node *n)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
	char port[8];
	int fd = -1, ret, one = 1;

	snprintf(port, sizeof(port), "%d", n->port);
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
	ret = getaddrinfo(n->host, port, &hints, &ai);
	if (ret == EAI_NONAME) {
		hints.ai_flags = AI_NUMERICSERV;
		ret = getaddrinfo(n->host, port, &hints, &ai);
	}
	if (ret) {
		kvt_rcn_seterr(rc, "%s: cannot resolve: %s", n->addr, gai_strerror(ret));
		return -EHOSTUNREACH;
	}
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		ret = -errno;
		goto out;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
		ret = -errno;
		kvt_rcn_seterr(rc, "%s: connect: %s", n->addr, strerror(errno));
		close(fd);
		goto out;
	}
	pthread_once(&rc_fns_once, rc_fns_init);
	n->rd = redisReaderCreate();
	if (n->rd)
		n->rd->fn = &rc_fns;
	if (!n->rd) {
		close(fd);
		ret = -ENOMEM;
		goto out;
	}
	/* Keep the reader's buffer between replies: with the default (free it above 16 KiB
	 * idle) every 1 MiB value regrows it from nothing, copy after copy. */
	n->rd->maxbuf = 0;
	n->fd = fd;
	n->state = RC_CONNECTING;
	rc_node_reset_out(n);
	ret = 0;
	if (rc->pass) {
		const char *argv[3] = {"AUTH", rc->user ? rc->user : rc->pass, rc->pass};

		ret = kvt_rcn_queue_strs(n, rc->user ? 3 : 2, argv);
		if (!ret)
			ret = kvt_rcn_pend_push(n, PEND_AUTH, -1, rc->gen);
	}
out:
	freeaddrinfo(ai);
	return ret;
}

/* ---- reply handling ---- */

bool kvt_rcn_prefix(const redisReply *r, const char *p)
{
	size_t n = strlen(p);

	return r->len >= n && !memcmp(r->str, p, n) && (r->len == n || r->str[n] == ' ');
}

/* "MOVED 3999 127.0.0.1:6381" / "ASK ...": the target node index, or < 0. */
static int rc_redirect_target(struct kvt_rc *rc, const redisReply *r, unsigned *slot)
{
	char buf[128], *sp, *colon, *end;
	unsigned long s, port;

	if (r->len >= sizeof(buf))
		return -EPROTO;
	memcpy(buf, r->str, r->len);
	buf[r->len] = 0;
	sp = strchr(buf, ' ');
	if (!sp)
		return -EPROTO;
	errno = 0;
	s = strtoul(sp + 1, &end, 10);
	if (errno || end == sp + 1 || *end != ' ' || s >= KVT_RC_SLOTS)
		return -EPROTO;
	colon = strrchr(end + 1, ':');
	if (!colon)
		return -EPROTO;
	*colon = 0;
	port = strtoul(colon + 1, &sp, 10);
	if (*sp || port == 0 || port > 65535)
		return -EPROTO;
	*slot = (unsigned)s;
	/* An empty host means "the host you are talking to" (announce-ip unset); ours are
	 * given by address, so fall back to the first seed's host. */
	if (!end[1] && rc->nnodes)
		return kvt_rcn_find(rc, rc->nodes[rc->seeds[0]].host, (int)port, true);
	return kvt_rcn_find(rc, end + 1, (int)port, true);
}

static void rc_cmd_reply(struct kvt_rc *rc, struct rc_node *n, struct kvt_rc_cmd *c, redisReply *r)
{
	int node;
	unsigned slot;

	rc->active--;
	if (r->type != REDIS_REPLY_ERROR) {
		c->reply = r;
		c->res = 0;
		c->state = CS_DONE;
		rc->st.commands++;
		return;
	}
	if (kvt_rcn_prefix(r, "MOVED") || kvt_rcn_prefix(r, "ASK")) {
		bool ask = r->str[0] == 'A';

		node = rc_redirect_target(rc, r, &slot);
		if (node < 0) {
			kvt_rcn_seterr(rc, "%s: bad redirection \"%.*s\"", n->addr, (int)r->len,
				       r->str);
			c->res = -EPROTO;
			c->state = CS_DONE;
			rc->st.proto_errors++;
		} else if (++c->hops > rc->conf.max_redirects) {
			kvt_rcn_seterr(rc, "slot %u: too many redirections", slot);
			c->res = -EAGAIN;
			c->state = CS_DONE;
		} else if (ask) {
			rc->st.ask++;
			c->ask_node = node;
			c->state = CS_READY;
		} else {
			rc->st.moved++;
			rc->map[slot] = (uint16_t)(node + 1);
			/* One moved slot usually means a reshard: learn the rest lazily. */
			rc->need_refresh = true;
			c->state = CS_READY;
		}
	} else if (kvt_rcn_prefix(r, "TRYAGAIN") || kvt_rcn_prefix(r, "CLUSTERDOWN") ||
		   kvt_rcn_prefix(r, "LOADING") || kvt_rcn_prefix(r, "MASTERDOWN")) {
		rc->st.retry_errors++;
		kvt_rcn_seterr(rc, "%s: %.*s", n->addr, (int)(r->len > 120 ? 120 : r->len), r->str);
		c->res = -EAGAIN;
		c->state = CS_BACKOFF;
		rc->need_refresh = true;
	} else {
		kvt_rcn_seterr(rc, "%s: %.*s", n->addr, (int)(r->len > 160 ? 160 : r->len), r->str);
		c->res = kvt_rcn_prefix(r, "NOAUTH") || kvt_rcn_prefix(r, "NOPERM") ||
				 kvt_rcn_prefix(r, "WRONGPASS")
			     ? -EACCES
			     : -EREMOTEIO;
		c->state = CS_DONE;
	}
	freeReplyObject(r);
}

/* One reply off n's FIFO.  Returns < 0 when the connection must be dropped. */
static int rc_dispatch(struct kvt_rc *rc, struct rc_node *n, redisReply *r)
{
	struct rc_pend p;

	if (!n->pend_n) {
		kvt_rcn_seterr(rc, "%s: protocol error: reply nobody asked for", n->addr);
		freeReplyObject(r);
		return -EPROTO;
	}
	p = n->pend[n->pend_head];
	n->pend_head = (n->pend_head + 1) % n->pend_cap;
	n->pend_n--;
	n->fails = 0; /* it answers: the breaker closes */
	if (p.kind == PEND_AUTH) {
		if (r->type == REDIS_REPLY_ERROR) {
			kvt_rcn_seterr(rc, "%s: AUTH failed: %.*s", n->addr, (int)r->len, r->str);
			freeReplyObject(r);
			return -EACCES;
		}
		freeReplyObject(r);
		return 0;
	}
	if (p.gen != rc->gen || (p.kind == PEND_CMD && p.cmd < 0)) {
		freeReplyObject(r); /* an orphan: its call has returned */
		return 0;
	}
	switch (p.kind) {
	case PEND_CMD:
		rc_cmd_reply(rc, n, &rc->cmds[p.cmd], r);
		return 0;
	case PEND_SLOTS:
		rc->slots_active--;
		if (!rc->slots_reply) {
			rc->slots_reply = r;
			rc->slots_node = (int)(n - rc->nodes);
			return 0;
		}
		break;
	default: /* ASKING: a failure shows in the command that follows it */
		break;
	}
	freeReplyObject(r);
	return 0;
}

/* ---- I/O ---- */

static int rc_node_write(struct kvt_rc *rc, struct rc_node *n)
{
	while (n->seg_head < n->nseg) {
		struct iovec iov[RC_IOV];
		struct msghdr mh = {.msg_iov = iov};
		unsigned k = 0;
		ssize_t w;

		for (unsigned i = n->seg_head; i < n->nseg && k < RC_IOV; i++, k++) {
			struct rc_seg *s = &n->segs[i];
			const char *base = s->ptr ? s->ptr : n->arena + s->off;
			size_t skip = i == n->seg_head ? n->seg_off : 0;

			iov[k].iov_base = (void *)(base + skip);
			iov[k].iov_len = s->len - skip;
		}
		mh.msg_iovlen = k;
		w = sendmsg(n->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return 0;
			kvt_rcn_seterr(rc, "%s: send: %s", n->addr, strerror(errno));
			return -errno;
		}
		n->bytes_out += (uint64_t)w;
		while (w > 0) {
			struct rc_seg *s = &n->segs[n->seg_head];
			size_t left = s->len - n->seg_off;

			if ((size_t)w < left) {
				n->seg_off += (size_t)w;
				break;
			}
			w -= (ssize_t)left;
			n->seg_head++;
			n->seg_off = 0;
		}
	}
	rc_node_reset_out(n);
	return 0;
}

static struct kvt_rc_cmd *rc_head_dst(struct kvt_rc *rc, struct rc_node *n)
{
	const struct rc_pend *p;

	if (!n->pend_n)
		return NULL;
	p = &n->pend[n->pend_head];
	if (p->kind != PEND_CMD || p->cmd < 0 || p->gen != rc->gen || !rc->cmds[p->cmd].dst[0])
		return NULL;
	return &rc->cmds[p->cmd];
}

static int rc_node_read(struct kvt_rc *rc, struct rc_node *n)
{
	for (;;) {
		ssize_t r = recv(n->fd, rc->rbuf, RC_RBUF, MSG_DONTWAIT);
		void *reply;
		int ret;

		if (r == 0) {
			kvt_rcn_seterr(rc, "%s: connection closed by the node", n->addr);
			return -ECONNRESET;
		}
		if (r < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return 0;
			kvt_rcn_seterr(rc, "%s: recv: %s", n->addr, strerror(errno));
			return -errno;
		}
		n->bytes_in += (uint64_t)r;
		if (redisReaderFeed(n->rd, rc->rbuf, (size_t)r) != REDIS_OK)
			return -ENOMEM;
		for (;;) {
			reply = NULL;
			rc_dst_cmd = rc_head_dst(rc, n);
			ret = redisReaderGetReply(n->rd, &reply);
			rc_dst_cmd = NULL;
			if (ret != REDIS_OK) {
				kvt_rcn_seterr(rc, "%s: protocol error: %s", n->addr,
					       n->rd->errstr);
				rc->st.proto_errors++;
				return -EPROTO;
			}
			if (!reply)
				break;
			ret = rc_dispatch(rc, n, reply);
			if (ret < 0)
				return ret;
		}
		if ((size_t)r < RC_RBUF)
			return 0;
	}
}

bool kvt_rcn_busy(const struct kvt_rc *rc, const struct rc_node *n)
{
	if (n->fd < 0)
		return false;
	if (n->seg_head < n->nseg)
		return true;
	for (unsigned i = 0; i < n->pend_n; i++) {
		const struct rc_pend *p = &n->pend[(n->pend_head + i) % n->pend_cap];

		if (p->gen == rc->gen && !(p->kind == PEND_CMD && p->cmd < 0))
			return true;
	}
	return false;
}

static void rc_node_fail(struct kvt_rc *rc, struct rc_node *n, int err)
{
	if (err == -EPROTO || err == -EACCES) {
		/* Not worth retrying on this node: fail what it owes for good. */
		for (unsigned i = 0; i < n->pend_n; i++) {
			struct rc_pend *p = &n->pend[(n->pend_head + i) % n->pend_cap];

			if (p->gen == rc->gen && p->kind == PEND_CMD && p->cmd >= 0) {
				rc->cmds[p->cmd].res = err;
				rc->cmds[p->cmd].state = CS_DONE;
				rc->active--;
				p->cmd = -1;
			}
		}
	}
	if (err != -EPROTO && err != -EACCES)
		rc->st.io_errors++;
	kvt_rcn_drop(rc, n, err, true);
}

/* Drives every busy connection until stop(rc) or the deadline.  0, or -ETIMEDOUT. */
int kvt_rcn_io(struct kvt_rc *rc, uint64_t deadline, bool (*stop)(const struct kvt_rc *))
{
	struct pollfd pfd[RC_MAX_NODES];
	unsigned idx[RC_MAX_NODES];

	while (!stop(rc)) {
		uint64_t now = kvt_rc_now_ns();
		struct timespec ts;
		unsigned k = 0;
		int ret;

		if (now >= deadline)
			return -ETIMEDOUT;
		for (unsigned i = 0; i < rc->nnodes; i++) {
			struct rc_node *n = &rc->nodes[i];

			if (!kvt_rcn_busy(rc, n))
				continue;
			pfd[k].fd = n->fd;
			pfd[k].events = POLLIN;
			if (n->state == RC_CONNECTING || n->seg_head < n->nseg)
				pfd[k].events |= POLLOUT;
			pfd[k].revents = 0;
			idx[k++] = i;
		}
		if (!k)
			return 0; /* nothing left that could make progress */
		ts.tv_sec = (time_t)((deadline - now) / 1000000000u);
		ts.tv_nsec = (long)((deadline - now) % 1000000000u);
		ret = ppoll(pfd, k, &ts, NULL);
		if (ret < 0 && errno != EINTR)
			return -errno;
		for (unsigned j = 0; ret > 0 && j < k; j++) {
			struct rc_node *n = &rc->nodes[idx[j]];
			int err = 0;

			if (!pfd[j].revents)
				continue;
			if (n->state == RC_CONNECTING) {
				int soerr = 0;
				socklen_t sl = sizeof(soerr);

				if (getsockopt(n->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
					soerr = errno;
				if (soerr) {
					kvt_rcn_seterr(rc, "%s: connect: %s", n->addr,
						       strerror(soerr));
					rc_node_fail(rc, n, -soerr);
					continue;
				}
				n->state = RC_UP;
			}
			if (pfd[j].revents & (POLLOUT | POLLERR | POLLHUP))
				err = rc_node_write(rc, n);
			if (!err && (pfd[j].revents & (POLLIN | POLLERR | POLLHUP)))
				err = rc_node_read(rc, n);
			if (err)
				rc_node_fail(rc, n, err);
		}
	}
	return 0;
}
