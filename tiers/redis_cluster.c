/* SPDX-License-Identifier: MIT */
/*
 * redis_cluster.c - Redis Cluster routing over hiredis's RESP reader (contract in
 * redis_cluster.h).
 *
 * hiredis 0.14 gives the reply parser; sockets, connect, pipelining and waiting are ours so
 * that every wait is one poll() bounded by the caller's deadline (hiredis's blocking
 * context would block in connect() and read()).  Commands are written with sendmsg() from
 * the caller's buffers (small pieces copied into a per-node arena, large ones borrowed), so
 * a 1 MiB value is never copied on the way out.
 *
 * Replies come back in order per connection: each node keeps a FIFO of what it owes
 * (a command of the current call, an ASKING, the AUTH, a CLUSTER SLOTS).  When a call returns
 * with replies still owed, the entries become orphans whose replies are dropped on arrival,
 * so a late reply can never be taken for another command's.
 */
#define _GNU_SOURCE
#include "redis_cluster.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define RC_MAGIC       0x4b52434cu /* "LCRK" */
#define RC_MAX_NODES   256u
#define RC_BORROW_MIN  4096u /* argument pieces at least this long are sent from the caller */
#define RC_RBUF	       (256u * 1024u)
#define RC_MAX_ORPHANS 4096u
#define RC_IOV	       64

enum { RC_DOWN, RC_CONNECTING, RC_UP };
enum { PEND_CMD, PEND_ASKING, PEND_AUTH, PEND_SLOTS };
/* Command states inside one exec. */
enum { CS_READY, CS_SENT, CS_DONE, CS_BACKOFF };

struct rc_seg {
	const char *ptr; /* borrowed, or NULL: arena + off */
	size_t off, len;
};

struct rc_pend {
	uint8_t kind;
	int32_t cmd; /* PEND_CMD: index in the current call's array, -1 = orphan */
	uint64_t gen;
};

struct rc_node {
	char host[48];
	int port;
	char addr[64];
	int fd, state;
	redisReader *rd;
	char *arena;
	size_t arena_len, arena_cap;
	struct rc_seg *segs;
	unsigned nseg, seg_cap, seg_head;
	size_t seg_off;
	bool borrowed; /* unsent segments point at caller memory */
	struct rc_pend *pend;
	unsigned pend_head, pend_n, pend_cap;
	unsigned fails;
	uint64_t open_until;
	unsigned slots;
	uint64_t bytes_out, bytes_in, errors, trips;
};

struct kvt_rc {
	uint32_t magic;
	struct kvt_rc_conf conf;
	char *user, *pass;
	struct rc_node *nodes;
	unsigned nnodes;
	unsigned nseeds;
	int seeds[16];
	uint16_t map[KVT_RC_SLOTS];    /* node index + 1, 0 = unknown */
	uint16_t newmap[KVT_RC_SLOTS]; /* CLUSTER SLOTS being parsed */
	bool have_map, need_refresh, standalone;
	uint64_t last_refresh;
	int refresh_err; /* the last refresh's result */
	unsigned refresh_rr;
	uint64_t gen;
	/* current call */
	struct kvt_rc_cmd *cmds;
	unsigned ncmds;
	unsigned active; /* PEND_CMD entries of this call not yet answered */
	/* current refresh */
	redisReply *slots_reply;
	int slots_node;
	unsigned slots_active;
	int slots_err;
	char *rbuf;
	struct kvt_rc_stats st;
	char err[256];
};

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

uint64_t kvt_rc_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

__attribute__((format(printf, 2, 3))) static void rc_seterr(struct kvt_rc *rc, const char *fmt, ...)
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

static int rc_node_find(struct kvt_rc *rc, const char *host, int port, bool create)
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

static bool rc_breaker_open(const struct rc_node *n, uint64_t now)
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
static void rc_node_count_fail(struct kvt_rc *rc, struct rc_node *n)
{
	uint64_t now = kvt_rc_now_ns();

	n->errors++;
	n->fails++;
	if (n->fails >= rc->conf.breaker_failures) {
		if (!rc_breaker_open(n, now))
			n->trips++;
		n->open_until = now + (uint64_t)rc->conf.breaker_open_ms * 1000000u;
	}
}

/*
 * Drops the connection: every reply still owed fails with err (commands of the current call
 * are retried by exec), the output queue is discarded.  counts = a failure of the node (the
 * breaker counts it); a breaker that reaches breaker_failures opens.
 */
static void rc_node_drop(struct kvt_rc *rc, struct rc_node *n, int err, bool counts)
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
		rc_node_count_fail(rc, n);
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

static int rc_pend_push(struct rc_node *n, uint8_t kind, int32_t cmd, uint64_t gen)
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
static int rc_queue_args(struct rc_node *n, unsigned argc, const struct kvt_rc_arg *arg)
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

static int rc_queue_strs(struct rc_node *n, unsigned argc, const char *const *argv)
{
	struct kvt_rc_arg a[KVT_RC_MAX_ARGS];

	memset(a, 0, sizeof(a));
	for (unsigned i = 0; i < argc; i++) {
		a[i].p[0] = argv[i];
		a[i].len[0] = strlen(argv[i]);
	}
	return rc_queue_args(n, argc, a);
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
static int rc_node_connect(struct kvt_rc *rc, struct rc_node *n)
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
		rc_seterr(rc, "%s: cannot resolve: %s", n->addr, gai_strerror(ret));
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
		rc_seterr(rc, "%s: connect: %s", n->addr, strerror(errno));
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

		ret = rc_queue_strs(n, rc->user ? 3 : 2, argv);
		if (!ret)
			ret = rc_pend_push(n, PEND_AUTH, -1, rc->gen);
	}
out:
	freeaddrinfo(ai);
	return ret;
}

/* ---- reply handling ---- */

static bool rc_prefix(const redisReply *r, const char *p)
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
		return rc_node_find(rc, rc->nodes[rc->seeds[0]].host, (int)port, true);
	return rc_node_find(rc, end + 1, (int)port, true);
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
	if (rc_prefix(r, "MOVED") || rc_prefix(r, "ASK")) {
		bool ask = r->str[0] == 'A';

		node = rc_redirect_target(rc, r, &slot);
		if (node < 0) {
			rc_seterr(rc, "%s: bad redirection \"%.*s\"", n->addr, (int)r->len, r->str);
			c->res = -EPROTO;
			c->state = CS_DONE;
			rc->st.proto_errors++;
		} else if (++c->hops > rc->conf.max_redirects) {
			rc_seterr(rc, "slot %u: too many redirections", slot);
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
	} else if (rc_prefix(r, "TRYAGAIN") || rc_prefix(r, "CLUSTERDOWN") ||
		   rc_prefix(r, "LOADING") || rc_prefix(r, "MASTERDOWN")) {
		rc->st.retry_errors++;
		rc_seterr(rc, "%s: %.*s", n->addr, (int)(r->len > 120 ? 120 : r->len), r->str);
		c->res = -EAGAIN;
		c->state = CS_BACKOFF;
		rc->need_refresh = true;
	} else {
		rc_seterr(rc, "%s: %.*s", n->addr, (int)(r->len > 160 ? 160 : r->len), r->str);
		c->res =
		    rc_prefix(r, "NOAUTH") || rc_prefix(r, "NOPERM") || rc_prefix(r, "WRONGPASS")
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
		rc_seterr(rc, "%s: protocol error: reply nobody asked for", n->addr);
		freeReplyObject(r);
		return -EPROTO;
	}
	p = n->pend[n->pend_head];
	n->pend_head = (n->pend_head + 1) % n->pend_cap;
	n->pend_n--;
	n->fails = 0; /* it answers: the breaker closes */
	if (p.kind == PEND_AUTH) {
		if (r->type == REDIS_REPLY_ERROR) {
			rc_seterr(rc, "%s: AUTH failed: %.*s", n->addr, (int)r->len, r->str);
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
			rc_seterr(rc, "%s: send: %s", n->addr, strerror(errno));
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
			rc_seterr(rc, "%s: connection closed by the node", n->addr);
			return -ECONNRESET;
		}
		if (r < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return 0;
			rc_seterr(rc, "%s: recv: %s", n->addr, strerror(errno));
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
				rc_seterr(rc, "%s: protocol error: %s", n->addr, n->rd->errstr);
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

static bool rc_node_busy(const struct kvt_rc *rc, const struct rc_node *n)
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
	rc_node_drop(rc, n, err, true);
}

/* Drives every busy connection until stop(rc) or the deadline.  0, or -ETIMEDOUT. */
static int rc_io(struct kvt_rc *rc, uint64_t deadline, bool (*stop)(const struct kvt_rc *))
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

			if (!rc_node_busy(rc, n))
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
					rc_seterr(rc, "%s: connect: %s", n->addr, strerror(soerr));
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
		rc_seterr(rc, "%s: CLUSTER SLOTS: %.*s", src->addr,
			  (int)(r->len > 160 ? 160 : r->len), r->str);
		return r->len && (rc_prefix(r, "NOAUTH") || rc_prefix(r, "NOPERM")) ? -EACCES
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
		node = rc_node_find(rc, host, (int)m->element[1]->integer, true);
		if (node < 0)
			goto bad;
		for (long long s = e->element[0]->integer; s <= e->element[1]->integer; s++)
			map[s] = (uint16_t)(node + 1);
	}
	memcpy(rc->map, map, sizeof(rc->map));
	rc->standalone = false;
	return 0;
bad:
	rc_seterr(rc, "%s: protocol error: malformed CLUSTER SLOTS reply", src->addr);
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

		if (rc_breaker_open(&rc->nodes[j], now))
			continue;
		cand[nc++] = j;
	}
	rc->refresh_rr++;
	if (!nc) {
		rc_seterr(rc, "no node to ask for the slot map (every breaker open)");
		ret = -EHOSTDOWN;
		goto out;
	}
	for (unsigned i = 0; i < nc; i++) {
		struct rc_node *n = &rc->nodes[cand[i]];
		static const char *const argv[2] = {"CLUSTER", "SLOTS"};

		if (n->fd < 0 && (ret = rc_node_connect(rc, n)) < 0) {
			rc_node_drop(rc, n, ret, true);
			continue;
		}
		if (rc_queue_strs(n, 2, argv) < 0 || rc_pend_push(n, PEND_SLOTS, -1, rc->gen) < 0) {
			ret = -ENOMEM;
			goto out;
		}
		tried++;
		rc->slots_active++;
	}
	if (!tried)
		goto out;
	ret = rc_io(rc, deadline, rc_slots_stop);
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
		if (ret == -ETIMEDOUT && rc_node_busy(rc, &rc->nodes[cand[i]]))
			rc_node_drop(rc, &rc->nodes[cand[i]], -ETIMEDOUT, true);
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
			rc_seterr(rc, "no node serves slot %u", c->slot);
		return 0;
	}
	n = &rc->nodes[node];
	if (rc_breaker_open(n, now)) {
		c->res = -EHOSTDOWN;
		c->state = CS_DONE;
		rc->st.breaker_fast_fails++;
		rc->need_refresh = true; /* a failover may have moved the slot elsewhere */
		return 0;
	}
	if (n->fd < 0) {
		ret = rc_node_connect(rc, n);
		if (ret < 0) {
			c->res = ret;
			c->state = CS_BACKOFF;
			rc_node_drop(rc, n, ret, true);
			return 0;
		}
	}
	if (c->ask_node >= 0) {
		static const char *const asking[1] = {"ASKING"};

		if (rc_queue_strs(n, 1, asking) < 0 ||
		    rc_pend_push(n, PEND_ASKING, -1, rc->gen) < 0)
			return -ENOMEM;
		c->ask_node = -1;
	}
	if (rc_queue_args(n, c->argc, c->arg) < 0 || rc_pend_push(n, PEND_CMD, (int32_t)i, rc->gen))
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

		if (!rc_node_busy(rc, n))
			continue;
		if (timed_out) {
			rc->st.io_errors++;
			rc_node_count_fail(rc, n);
			rc_seterr(rc, "%s: no reply by the deadline", n->addr);
		}
		if (n->seg_head < n->nseg || n->pend_n > RC_MAX_ORPHANS || rc_breaker_open(n, now))
			rc_node_drop(rc, n, -ETIMEDOUT, false);
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
			ret = rc_io(rc, deadline, rc_cmds_stop);
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
		rc_seterr(rc, "auth file %s: %s", path, strerror(errno));
		return -errno;
	}
	if (!fgets(line, sizeof(line), f)) {
		fclose(f);
		rc_seterr(rc, "auth file %s: empty", path);
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
		rc_seterr(rc, "auth file %s: no password", path);
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
		node = rc_node_find(rc, tok, (int)port, true);
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
		out[i].breaker_open = rc_breaker_open(n, now);
		out[i].bytes_out = n->bytes_out;
		out[i].bytes_in = n->bytes_in;
		out[i].errors = n->errors;
		out[i].breaker_trips = n->trips;
	}
	return rc->nnodes;
}
