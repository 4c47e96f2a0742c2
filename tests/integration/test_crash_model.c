/* SPDX-License-Identifier: MIT */
/*
 * test_crash_model.c - a model-based crash test of kvtierd and libkvtier.
 *
 * Several clients (threads, one libkvtier connection each) run seeded random sequences of
 * put, delete, get, lookup, lease/release and reserve/commit/abort against a real kvtierd
 * with a small host tier and an NVMe tier, while the supervisor SIGKILLs and restarts the
 * daemon at random points (and sometimes asks it to write everything back to NVMe first,
 * so that blocks survive the kill).  Every answer is checked against a model of what may be
 * served:
 *
 *  - a get or a lease returns, for key k, a block of k (blocks say whose they are: magic,
 *    key, version, and a checksum; the rest is a function of key and version) whose version
 *    was written by a put not superseded by an acknowledged put or delete of k before the
 *    call began, or a miss (always allowed: the store is a cache, and puts in flight at a
 *    kill may or may not survive).  Never a deleted or older version, another key's block,
 *    or bytes that are no block at all;
 *  - a lookup counts only keys that could be stored during the call;
 *  - a leased block's bytes do not change while the lease is held, across restarts too;
 *  - a reservation or lease of a daemon that has since died is void: its commit, abort or
 *    release returns -KVT_EDAEMON (client/kvtier.h) and never acts on the new daemon;
 *  - gets, leases, lookups, reservations and puts are retried once against a restarted
 *    daemon (kvtier.h), so they never fail with -KVT_EDAEMON while one is up throughout;
 *  - every call is answered (CLIENT_TIMEOUT_MS bounds a hung one: reported, the run stops);
 *    error codes are those kvtier.h documents for the call (-EAGAIN: puts and deletes while
 *    the daemon recovers its NVMe records; a refused delete deletes nothing).
 * At the end every key is read once more after the recovery, then again across a clean
 * restart (SIGTERM).
 *
 * Only the owner of a key (key i belongs to client i % clients) puts and deletes it, so its
 * writes are ordered; any client reads any key, and some keys are never written.
 * The model per key is a window of versions [floor, ceiling]: versions are numbered per key
 * in the order the owner writes them; an acknowledged put of v raises floor to v, an
 * acknowledged delete (0 or -ENOENT) above every version handed out; ceiling is the highest
 * version that may have been written (lowered again when a put is known not to have been).
 * A read that began at floor f and ended at ceiling c may return versions f..c.
 * Whether an answer is certain depends on the daemon being the same one from the start of a
 * call to its end: the supervisor publishes (generation, up) in one atomic word, marks the
 * daemon down before it kills it and bumps the generation once it has reaped it, so a
 * client that reads the same "up" word before and after a call knows one daemon answered.
 *
 * Reproducible: the seed (printed; KVT_TEST_SEED to replay) fixes each client's operation
 * sequence and the kill points, counted in operations; thread interleavings vary.
 *
 * usage: test_crash_model KVTIERD KVTIERCTL [--seed N]
 * env:   KVT_TEST_SEED (as --seed), KVT_TEST_OPS (default 3000), KVT_TEST_RESTARTS (default 15),
 *        KVT_TEST_CLIENTS (default 4), KVT_TEST_SKIP (operations to leave out, e.g.
 *        "lookup,lease": to look at one broken rule at a time), KVT_TEST_DAEMON_OPTS
 *        (space-separated kvtierd options, e.g. "nvme.queue_depth=32", over the drawn ones)
 *
 * Each daemon starts with a 1 MiB host tier, a 2 MiB NVMe tier and, drawn from the seed,
 * nvme.fsync, nvme.queue_depth (1, 4, 32) and nvme.io_uring.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "kvtier.h"

enum {
	MAX_CLIENTS = 16,
	KEYS_PER_CLIENT = 32,
	ABSENT_KEYS = 16, /* never written by anyone */
	MAX_LEASES = 2,	  /* per client, held across operations (and restarts) */
	MAX_PENDING = 2,  /* reservations per client, filled but not yet committed */
	LOOKUP_MAX = 8,
	HDR_MAGIC_LO = 0x6873617263747620ull, /* " vtcrash" */
	PRINT_MAX = 8,			      /* lines printed per broken rule */
	/* Only a bound on a hung call (reported, then the run stops), never a pace: calls on
	 * a 2-core machine under ASan answer in milliseconds. */
	CLIENT_TIMEOUT_MS = 30000,
};

/* The rules; a count of breaks is kept for each. */
enum rule {
	R_WRONG,      /* a served block that may not be served (bytes, key or version) */
	R_LEASE,      /* a leased block's bytes changed while held */
	R_STALE,      /* a handle of a dead daemon did not return -KVT_EDAEMON */
	R_LOOKUP,     /* a lookup counted a key that could not be stored */
	R_RETRY,      /* -KVT_EDAEMON from a retried call while one daemon was up throughout */
	R_UNEXPECTED, /* an error code the API does not document for that call */
	R_HANG,	      /* a call not answered in CLIENT_TIMEOUT_MS (the run stops there) */
	R_COUNT
};
static const char *const rule_name[R_COUNT] = {
    "wrong", "lease-changed", "stale-handle", "lookup", "no-retry", "unexpected", "hang"};

/* The first 64 bytes of every block; the rest is fill(key, version). */
struct blkhdr {
	uint64_t magic;
	uint64_t key_lo, key_hi;
	uint64_t version;
	uint32_t owner;
	uint32_t gen; /* daemon generation when the put began */
	uint64_t sum; /* FNV-1a of the bytes after the header */
	uint64_t pad[2];
};

struct keyst {
	pthread_mutex_t mu;
	struct kvt_key key;
	int owner;	   /* -1: never written */
	uint64_t next_ver; /* owner only */
	uint64_t floor;	   /* versions below are superseded */
	uint64_t ceiling;  /* the highest version that may have been written */
	uint64_t amb_ver;  /* a version whose put spanned a restart (not counted as recovered) */
	const char *why;   /* what set floor last, and under which daemon generation */
	unsigned why_gen;
	bool busy; /* a reservation of the owner is pending: no other write */
};

struct held_lease {
	bool on;
	int key;
	unsigned st; /* daemon state word when taken, if one daemon answered; else 0 */
	uint64_t sum;
	struct kvt_lease l;
};

struct pending {
	bool on;
	int key;
	uint64_t v, prev_ceiling;
	unsigned st;
	struct kvt_reservation r;
};

enum op {
	OP_PUT,
	OP_DELETE,
	OP_GET,
	OP_LOOKUP,
	OP_LEASE,
	OP_RELEASE,
	OP_RESERVE,
	OP_COMMIT,
	OP_ABORT,
	OP_N
};
static const char *const op_name[OP_N] = {"put",     "delete",	"get",	  "lookup", "lease",
					  "release", "reserve", "commit", "abort"};

struct counters {
	uint64_t ops[OP_N];
	uint64_t hits, misses, recovered_hits, daemon_gone, nospc, eagain;
};

struct client {
	int id;
	uint64_t rng;
	struct kvt_client *c;
	int lay;
	uint64_t opno;
	struct held_lease leases[MAX_LEASES];
	struct pending pend[MAX_PENDING];
	uint8_t *buf, *exp;
	struct counters n;
	pthread_t th;
};

static const char *kvtierd, *kvtierctl;
static char dir[256], sock[300], slots[300], logpath[300];
static unsigned seed;
static int nclients;
static uint64_t total_ops_goal;
static unsigned restarts_goal;
static struct kvt_layout layout;
static size_t bb;
static struct keyst *keys;
static int nkeys;
static struct client clients[MAX_CLIENTS];
static unsigned skip_ops;     /* 1 << enum op */
static char daemon_opts[200]; /* the randomized options of the daemon now running */

/* (generation << 1) | up.  See the header comment. */
static _Atomic unsigned dstate;
static _Atomic uint64_t ops_done;
static _Atomic uint64_t ops_target = UINT64_MAX;
static _Atomic bool stopping;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static _Atomic uint64_t broken[R_COUNT];
/* Diagnosis only: (generation << 1) | 1 from a put refused with -EAGAIN (the daemon is
 * still recovering) until a put of that generation is acknowledged. */
static _Atomic unsigned recovering_seen;
static pthread_mutex_t print_mu = PTHREAD_MUTEX_INITIALIZER;

#define ST_GEN(s) ((s) >> 1)
#define ST_UP(s)  ((s)&1u)

static unsigned st_now(void)
{
	return atomic_load(&dstate);
}

/* One daemon, up, answered everything between the two reads. */
static bool one_daemon(unsigned s0, unsigned s1)
{
	return s0 == s1 && ST_UP(s0);
}

static void set_state(unsigned s)
{
	pthread_mutex_lock(&g_mu);
	atomic_store(&dstate, s);
	pthread_cond_broadcast(&g_cv);
	pthread_mutex_unlock(&g_mu);
}

/* splitmix64 */
static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static unsigned below(uint64_t *s, unsigned n)
{
	return (unsigned)(rnd(s) % n);
}

static uint64_t fnv(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

static uint64_t env_u64(const char *name, uint64_t def)
{
	const char *v = getenv(name);

	return v && *v ? strtoull(v, NULL, 0) : def;
}

static void report(enum rule r, const struct client *w, const char *fmt, ...)
{
	va_list ap;
	unsigned s = st_now();

	if (atomic_fetch_add(&broken[r], 1) >= PRINT_MAX)
		return;
	pthread_mutex_lock(&print_mu);
	fprintf(stderr,
		"RULE BROKEN [%s] seed %u client %d op %" PRIu64 " daemon gen %u%s: ", rule_name[r],
		seed, w ? w->id : -1, w ? w->opno : 0, ST_GEN(s), ST_UP(s) ? "" : " (down)");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	pthread_mutex_unlock(&print_mu);
}

/* ---------------------------------------------------------------------------------------
 * Blocks and the model
 */
static void make_block(uint8_t *p, int ki, uint64_t v, uint32_t owner, uint32_t gen)
{
	struct blkhdr h = {HDR_MAGIC_LO, keys[ki].key.lo, keys[ki].key.hi, v, owner, gen, 0, {0}};
	uint64_t x = (keys[ki].key.lo ^ (keys[ki].key.hi * 31) ^ (v * 0x9e3779b97f4a7c15ull)) | 1;

	for (size_t i = sizeof(h); i < bb; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(p + i, &x, bb - i < 8 ? bb - i : 8);
	}
	h.sum = fnv(p + sizeof(h), bb - sizeof(h));
	memcpy(p, &h, sizeof(h));
}

static uint64_t key_floor(int ki)
{
	pthread_mutex_lock(&keys[ki].mu);
	uint64_t f = keys[ki].floor;
	pthread_mutex_unlock(&keys[ki].mu);
	return f;
}

static uint64_t key_ceiling(int ki, uint64_t *amb)
{
	pthread_mutex_lock(&keys[ki].mu);
	uint64_t c = keys[ki].ceiling;
	if (amb)
		*amb = keys[ki].amb_ver;
	pthread_mutex_unlock(&keys[ki].mu);
	return c;
}

/* The owner starts writing a new version: it may be written from now on. */
static uint64_t key_begin_put(int ki, uint64_t *prev_ceiling)
{
	pthread_mutex_lock(&keys[ki].mu);
	uint64_t v = keys[ki].next_ver++;
	*prev_ceiling = keys[ki].ceiling;
	keys[ki].ceiling = v;
	pthread_mutex_unlock(&keys[ki].mu);
	return v;
}

/* v was acknowledged: older versions may no longer be served. */
static void key_acked(int ki, uint64_t v, const char *why)
{
	pthread_mutex_lock(&keys[ki].mu);
	if (v > keys[ki].floor) {
		keys[ki].floor = v;
		keys[ki].why = why;
		keys[ki].why_gen = ST_GEN(st_now());
	}
	pthread_mutex_unlock(&keys[ki].mu);
}

/* v was certainly not written. */
static void key_not_written(int ki, uint64_t v, uint64_t prev_ceiling)
{
	pthread_mutex_lock(&keys[ki].mu);
	if (keys[ki].ceiling == v)
		keys[ki].ceiling = prev_ceiling;
	pthread_mutex_unlock(&keys[ki].mu);
}

/* v may or may not have been written, by one daemon or another. */
static void key_uncertain(int ki, uint64_t v)
{
	pthread_mutex_lock(&keys[ki].mu);
	keys[ki].amb_ver = v;
	pthread_mutex_unlock(&keys[ki].mu);
}

static void key_deleted(int ki, const char *why)
{
	pthread_mutex_lock(&keys[ki].mu);
	keys[ki].floor = keys[ki].next_ver;
	keys[ki].why = why;
	keys[ki].why_gen = ST_GEN(st_now());
	pthread_mutex_unlock(&keys[ki].mu);
}

/*
 * Checks a block served for key ki by a call that began at floor f0 and state s0.
 * Returns its checksum (for a lease), or 0 after reporting a wrong block.
 */
static uint64_t check_block(struct client *w, const char *op, int ki, const uint8_t *p, size_t len,
			    uint64_t f0, unsigned s0)
{
	struct blkhdr h;
	uint64_t amb, c1 = key_ceiling(ki, &amb);

	if (len != bb) {
		report(R_WRONG, w, "%s key %d: %zu bytes, expected %zu", op, ki, len, bb);
		return 0;
	}
	memcpy(&h, p, sizeof(h));
	if (h.magic != HDR_MAGIC_LO) {
		report(R_WRONG, w,
		       "%s key %d: not a block of this test (first word %016" PRIx64 ")", op, ki,
		       h.magic);
		return 0;
	}
	if (h.key_lo != keys[ki].key.lo || h.key_hi != keys[ki].key.hi) {
		int other = -1;
		for (int i = 0; i < nkeys; i++)
			if (keys[i].key.lo == h.key_lo && keys[i].key.hi == h.key_hi)
				other = i;
		report(R_WRONG, w, "%s key %d: served the block of key %d (version %" PRIu64 ")",
		       op, ki, other, h.version);
		return 0;
	}
	if (h.version < f0 || h.version > c1) {
		pthread_mutex_lock(&keys[ki].mu);
		const char *why = keys[ki].why;
		unsigned why_gen = keys[ki].why_gen;
		pthread_mutex_unlock(&keys[ki].mu);
		report(R_WRONG, w,
		       "%s key %d: served version %" PRIu64 " (put under daemon gen %u), but only "
		       "%" PRIu64 "..%" PRIu64 " may be served (%s%s, gen %u)",
		       op, ki, h.version, h.gen, f0, c1,
		       h.version < f0 ? "superseded: last " : "never written; last ",
		       why ? why : "-", why_gen);
		return 0;
	}
	make_block(w->exp, ki, h.version, h.owner, h.gen);
	if (memcmp(w->exp, p, bb) != 0) {
		size_t at = 0;
		while (at < bb && w->exp[at] == p[at])
			at++;
		report(R_WRONG, w,
		       "%s key %d version %" PRIu64 ": bytes differ from byte %zu on (checksum %s)",
		       op, ki, h.version, at,
		       fnv(p + sizeof(h), bb - sizeof(h)) == h.sum ? "ok" : "bad");
		return 0;
	}
	w->n.hits++;
	if (h.gen < ST_GEN(s0) && h.version != amb)
		w->n.recovered_hits++;
	return fnv(p, bb);
}

/* ---------------------------------------------------------------------------------------
 * Clients
 */

static void stop_all(void)
{
	pthread_mutex_lock(&g_mu);
	atomic_store(&stopping, true);
	pthread_cond_broadcast(&g_cv);
	pthread_mutex_unlock(&g_mu);
}

/* After -KVT_EDAEMON: wait until a daemon is up again (an event the supervisor signals). */
static void wait_up(void)
{
	pthread_mutex_lock(&g_mu);
	while (!ST_UP(atomic_load(&dstate)) && !atomic_load(&stopping))
		pthread_cond_wait(&g_cv, &g_mu);
	pthread_mutex_unlock(&g_mu);
}

static void op_done(struct client *w, enum op op)
{
	w->n.ops[op]++;
	w->opno++;
	if (atomic_fetch_add(&ops_done, 1) + 1 >= atomic_load(&ops_target)) {
		pthread_mutex_lock(&g_mu);
		pthread_cond_broadcast(&g_cv);
		pthread_mutex_unlock(&g_mu);
	}
}

/* Common handling of an error: -KVT_EDAEMON (checked against the retry rule when retried
 * says the call is one that libkvtier retries) and codes outside ok_codes. */
static void on_error(struct client *w, const char *op, int ki, long ret, unsigned s0, unsigned s1,
		     bool retried, const int *ok_codes)
{
	if (ret == -ETIMEDOUT) {
		report(R_HANG, w,
		       "%s key %d: no answer in %d ms (daemon gen %u%s at the start; %s)", op, ki,
		       CLIENT_TIMEOUT_MS, ST_GEN(s0), ST_UP(s0) ? ", up" : ", down", daemon_opts);
		stop_all();
		return;
	}
	if (ret == -KVT_EDAEMON) {
		w->n.daemon_gone++;
		if (ret == -KVT_EDAEMON && retried && one_daemon(s0, s1))
			report(
			    R_RETRY, w,
			    "%s key %d: -KVT_EDAEMON although daemon gen %u was up from start to "
			    "end (the call is documented to retry once)",
			    op, ki, ST_GEN(s0));
		if (!ST_UP(st_now()))
			wait_up();
		return;
	}
	if (ret == -ENOSPC) {
		w->n.nospc++;
		return;
	}
	if (ret == -EAGAIN) {
		w->n.eagain++;
		atomic_store(&recovering_seen, ST_GEN(s1) << 1 | 1);
	}
	for (const int *c = ok_codes; c && *c; c++)
		if (ret == -*c)
			return;
	report(R_UNEXPECTED, w, "%s key %d: %ld (%s)", op, ki, ret, kvt_strerror((int)ret));
}

/* Puts refused while kvtierd scans its slot files (README, "Serving while recovering"). */
static const int recovering[] = {EAGAIN, 0};

static int own_key(struct client *w)
{
	for (int tries = 0; tries < 8; tries++) {
		int ki;
		/* Key 0 ({0,0}) is client 0's, and a hot one: a lookup that sends zeroed keys
		 * by mistake then finds it stored. */
		if (w->id == 0 && below(&w->rng, 4) == 0)
			ki = 0;
		else
			ki = w->id + nclients * (int)below(&w->rng, KEYS_PER_CLIENT);
		pthread_mutex_lock(&keys[ki].mu);
		bool busy = keys[ki].busy;
		pthread_mutex_unlock(&keys[ki].mu);
		if (!busy)
			return ki;
	}
	return -1;
}

static int any_key(struct client *w)
{
	unsigned r = below(&w->rng, 10);

	if (r < 5) {
		int ki = w->id + nclients * (int)below(&w->rng, KEYS_PER_CLIENT);
		return ki;
	}
	return (int)below(&w->rng, (unsigned)nkeys);
}

static void do_put(struct client *w)
{
	int ki = own_key(w);
	uint64_t prev, v;
	unsigned s0, s1;
	int ret;

	if (ki < 0)
		return;
	s0 = st_now();
	v = key_begin_put(ki, &prev);
	make_block(w->buf, ki, v, (uint32_t)w->id, ST_GEN(s0));
	ret = kvt_put(w->c, w->lay, &keys[ki].key, w->buf, bb);
	s1 = st_now();
	if (ret == 0) {
		key_acked(ki, v, "put acknowledged");
		unsigned was = ST_GEN(s1) << 1 | 1;
		atomic_compare_exchange_strong(&recovering_seen, &was, ST_GEN(s1) << 1);
		if (!one_daemon(s0, s1))
			key_uncertain(ki, v);
	} else if (one_daemon(s0, s1) && ret != -KVT_EDAEMON && ret != -ETIMEDOUT) {
		key_not_written(ki, v, prev); /* 1: already stored; -ENOSPC... */
	} else {
		key_uncertain(ki, v);
	}
	if (ret < 0)
		on_error(w, "put", ki, ret, s0, s1, true, recovering);
	op_done(w, OP_PUT);
}

static void do_delete(struct client *w)
{
	static const int ok[] = {ENOENT, EAGAIN, 0};
	int ki = own_key(w);
	unsigned s0, s1;
	int ret;

	if (ki < 0)
		return;
	s0 = st_now();
	ret = kvt_delete(w->c, w->lay, &keys[ki].key);
	s1 = st_now();
	/* An answered delete, wherever the key was, is acknowledged: nothing older may come
	 * back.  -KVT_EDAEMON is allowed (deletes are not retried) and decides nothing. */
	if (ret == 0 || ret == -ENOENT)
		key_deleted(ki, ret == 0 ? "delete returned 0"
				: atomic_load(&recovering_seen) == (ST_GEN(s1) << 1 | 1)
				    ? "delete returned -ENOENT while puts got -EAGAIN (recovering)"
				    : "delete returned -ENOENT");
	else
		on_error(w, "delete", ki, ret, s0, s1, false, ok);
	op_done(w, OP_DELETE);
}

static void do_get(struct client *w)
{
	int ki = any_key(w);
	uint64_t f0 = key_floor(ki);
	unsigned s0 = st_now(), s1;
	ssize_t ret = kvt_get(w->c, w->lay, &keys[ki].key, w->buf, bb);

	s1 = st_now();
	if (ret >= 0)
		check_block(w, "get", ki, w->buf, (size_t)ret, f0, s0);
	else if (ret == -ENOENT)
		w->n.misses++;
	else
		on_error(w, "get", ki, (long)ret, s0, s1, true, NULL);
	op_done(w, OP_GET);
}

static void do_lookup(struct client *w)
{
	struct kvt_key ks[LOOKUP_MAX];
	int kis[LOOKUP_MAX];
	uint64_t f0[LOOKUP_MAX];
	int n = 1 + (int)below(&w->rng, LOOKUP_MAX), ret;
	unsigned s0, s1;

	for (int i = 0; i < n; i++) {
		/* A chain of mostly own keys; sometimes one that is never written. */
		kis[i] =
		    below(&w->rng, 6) ? any_key(w) : nkeys - 1 - (int)below(&w->rng, ABSENT_KEYS);
		ks[i] = keys[kis[i]].key;
		f0[i] = key_floor(kis[i]);
	}
	s0 = st_now();
	ret = kvt_lookup(w->c, w->lay, ks, (size_t)n);
	s1 = st_now();
	if (ret > n) {
		report(R_LOOKUP, w, "lookup of %d keys returned %d", n, ret);
	} else if (ret >= 0) {
		for (int i = 0; i < ret; i++) {
			uint64_t c1 = key_ceiling(kis[i], NULL);
			if (c1 < f0[i]) {
				report(R_LOOKUP, w,
				       "lookup of %d keys returned %d, but key %d (position %d) "
				       "cannot be stored (%s)",
				       n, ret, kis[i], i,
				       c1 == 0 ? "never written" : "deleted, not written since");
				break;
			}
		}
		w->n.hits += (uint64_t)ret;
		w->n.misses += ret < n;
	} else {
		on_error(w, "lookup", -1, ret, s0, s1, true, NULL);
	}
	op_done(w, OP_LOOKUP);
}

static void do_lease(struct client *w)
{
	struct held_lease *hl = NULL;
	int ki = any_key(w), ret;
	uint64_t f0 = key_floor(ki);
	unsigned s0, s1;

	for (int i = 0; i < MAX_LEASES; i++)
		if (!w->leases[i].on)
			hl = &w->leases[i];
	if (!hl)
		return;
	s0 = st_now();
	ret = kvt_get_lease(w->c, w->lay, &keys[ki].key, &hl->l);
	s1 = st_now();
	if (ret == 0) {
		uint64_t sum = check_block(w, "lease", ki, hl->l.data, hl->l.len, f0, s0);
		hl->on = true;
		hl->key = ki;
		hl->st = one_daemon(s0, s1) ? s0 : 0;
		hl->sum = sum ? sum : fnv(hl->l.data, hl->l.len);
	} else if (ret == -ENOENT) {
		w->n.misses++;
	} else {
		on_error(w, "lease", ki, ret, s0, s1, true, NULL);
	}
	op_done(w, OP_LEASE);
}

/* Handles of a daemon that is certainly dead now: taken when one daemon answered (st != 0),
 * and the generation has moved on since. */
static bool stale(unsigned st, unsigned now)
{
	return st && ST_GEN(now) > ST_GEN(st);
}

static void release_lease(struct client *w, struct held_lease *hl)
{
	unsigned s0 = st_now(), s1;
	int ret;

	if (fnv(hl->l.data, hl->l.len) != hl->sum)
		report(R_LEASE, w,
		       "lease of key %d (taken under daemon gen %u): bytes changed while held",
		       hl->key, ST_GEN(hl->st));
	ret = kvt_lease_release(w->c, &hl->l);
	s1 = st_now();
	if (stale(hl->st, s0)) {
		if (ret != -KVT_EDAEMON)
			report(R_STALE, w,
			       "release of a lease of daemon gen %u under gen %u returned %d (%s), "
			       "expected -KVT_EDAEMON",
			       ST_GEN(hl->st), ST_GEN(s0), ret, kvt_strerror(ret));
	} else if (ret < 0) {
		on_error(w, "release", hl->key, ret, s0, s1, false, NULL);
	}
	hl->on = false;
	op_done(w, OP_RELEASE);
}

static void do_release(struct client *w)
{
	int i = (int)below(&w->rng, MAX_LEASES);

	if (w->leases[i].on)
		release_lease(w, &w->leases[i]);
}

static void finish_pending(struct client *w, struct pending *p, bool commit)
{
	unsigned s0 = st_now(), s1;
	int ret = commit ? kvt_put_commit(w->c, &p->r) : kvt_put_abort(w->c, &p->r);
	bool was_stale = stale(p->st, s0);

	s1 = st_now();
	if (was_stale) {
		if (ret != -KVT_EDAEMON)
			report(
			    R_STALE, w,
			    "%s of a reservation (key %d) of daemon gen %u under gen %u returned "
			    "%d (%s), expected -KVT_EDAEMON",
			    commit ? "commit" : "abort", p->key, ST_GEN(p->st), ST_GEN(s0), ret,
			    kvt_strerror(ret));
		/* Whatever it did, it did not store this version on a living daemon; keep it
		 * possible all the same (the model errs on the side of allowing). */
		key_uncertain(p->key, p->v);
	} else if (commit && ret == 0) {
		key_acked(p->key, p->v, "commit acknowledged");
		if (!one_daemon(p->st, s1))
			key_uncertain(p->key, p->v);
	} else if (!commit && ret == 0 && one_daemon(p->st, s1)) {
		key_not_written(p->key, p->v, p->prev_ceiling);
	} else {
		/* A reservation taken while the daemon restarted may be of either daemon: if of
		 * the old one, -EINVAL is as wrong as success, but cannot be told apart. */
		static const int maybe_old[] = {EINVAL, 0};
		key_uncertain(p->key, p->v);
		if (ret < 0)
			on_error(w, commit ? "commit" : "abort", p->key, ret, s0, s1, false,
				 p->st ? NULL : maybe_old);
	}
	pthread_mutex_lock(&keys[p->key].mu);
	keys[p->key].busy = false;
	pthread_mutex_unlock(&keys[p->key].mu);
	p->on = false;
	op_done(w, commit ? OP_COMMIT : OP_ABORT);
}

static void do_reserve(struct client *w)
{
	struct pending *p = NULL;
	int ki, ret;
	unsigned s0, s1;

	for (int i = 0; i < MAX_PENDING; i++)
		if (!w->pend[i].on)
			p = &w->pend[i];
	if (!p) {
		finish_pending(w, &w->pend[below(&w->rng, MAX_PENDING)], below(&w->rng, 5) != 0);
		return;
	}
	ki = own_key(w);
	if (ki < 0)
		return;
	s0 = st_now();
	p->v = key_begin_put(ki, &p->prev_ceiling);
	ret = kvt_put_reserve(w->c, w->lay, &keys[ki].key, bb, &p->r);
	s1 = st_now();
	if (ret == 0) {
		make_block(p->r.data, ki, p->v, (uint32_t)w->id, ST_GEN(s0));
		p->on = true;
		p->key = ki;
		p->st = one_daemon(s0, s1) ? s0 : 0;
		pthread_mutex_lock(&keys[ki].mu);
		keys[ki].busy = true;
		pthread_mutex_unlock(&keys[ki].mu);
	} else if (one_daemon(s0, s1) && ret != -KVT_EDAEMON && ret != -ETIMEDOUT) {
		key_not_written(ki, p->v, p->prev_ceiling);
	}
	if (ret < 0) {
		static const int ok[] = {EEXIST, EAGAIN, 0};
		on_error(w, "reserve", ki, ret, s0, s1, true, ok);
	}
	op_done(w, OP_RESERVE);
	/* Most reservations are committed at once, some later (maybe after a restart). */
	if (ret == 0 && below(&w->rng, 10) < 6)
		finish_pending(w, p, below(&w->rng, 8) != 0);
}

static void *client_main(void *arg)
{
	struct client *w = arg;

	/* Percentages of put, delete, get, lookup, lease, release, reserve (+ commit, abort). */
	static const struct {
		unsigned upto;
		enum op op;
		void (*fn)(struct client *);
	} mix[] = {{26, OP_PUT, do_put},	 {34, OP_DELETE, do_delete},
		   {56, OP_GET, do_get},	 {70, OP_LOOKUP, do_lookup},
		   {80, OP_LEASE, do_lease},	 {88, OP_RELEASE, do_release},
		   {100, OP_RESERVE, do_reserve}};

	while (!atomic_load(&stopping)) {
		unsigned r = below(&w->rng, 100), k = 0;

		while (r >= mix[k].upto)
			k++;
		if (!(skip_ops & 1u << mix[k].op))
			mix[k].fn(w);
	}
	for (int i = 0; i < MAX_LEASES; i++)
		if (w->leases[i].on)
			release_lease(w, &w->leases[i]);
	for (int i = 0; i < MAX_PENDING; i++)
		if (w->pend[i].on)
			finish_pending(w, &w->pend[i], false);
	return NULL;
}

/* ---------------------------------------------------------------------------------------
 * The daemon
 */
static long long mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Starts a kvtierd (argv: its path and arguments; it runs in the foreground and serves path)
 * and returns its pid once path accepts connections: kvtierd renames a listening socket onto
 * the path, so its appearance is the readiness event.  Waits on events (inotify on the
 * socket's directory, a pidfd for an early exit), never on time; timeout_ms only bounds a daemon
 * that hangs, which is then killed.  path is unlinked first (a SIGKILLed daemon leaves its
 * socket behind).  log gets the daemon's stderr appended.  Returns -1 when the daemon exits
 * first (*status: its exit status, 128 + signal) or hangs (*status -1).
 */
static pid_t daemon_spawn(char *const argv[], const char *path, const char *log, int timeout_ms,
			  int *status)
{
	char wdir[PATH_MAX];
	const char *slash = strrchr(path, '/');
	long long deadline = timeout_ms < 0 ? -1 : mono_ms() + timeout_ms;
	int ino = -1, pidfd = -1, st = -1;
	struct stat sb;
	pid_t pid;

	if (status)
		*status = -1;
	snprintf(wdir, sizeof(wdir), "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
	if (!wdir[0])
		snprintf(wdir, sizeof(wdir), "/");
	/* Watch before unlinking and starting: no rename can slip between check and wait. */
	ino = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
	if (ino < 0 || inotify_add_watch(ino, wdir, IN_CREATE | IN_MOVED_TO) < 0) {
		perror("inotify");
		goto fail;
	}
	unlink(path);
	pid = fork();
	if (pid < 0)
		goto fail;
	if (pid == 0) {
		/* A test that crashes must not leave its daemon behind. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (log) {
			int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
			if (fd < 0 || dup2(fd, 2) < 0)
				_exit(126);
		}
		execv(argv[0], argv);
		_exit(127);
	}
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	for (;;) {
		struct pollfd p[2] = {{ino, POLLIN, 0}, {pidfd, POLLIN, 0}};
		char evbuf[4096];
		int left = -1, ws;

		if (stat(path, &sb) == 0)
			break;
		if (waitpid(pid, &ws, WNOHANG) == pid) {
			st = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
			goto gone;
		}
		if (deadline >= 0) {
			left = (int)(deadline - mono_ms());
			if (left <= 0) {
				fprintf(stderr, "kvtierd did not create %s\n", path);
				kill(pid, SIGKILL);
				waitpid(pid, NULL, 0);
				goto gone;
			}
		}
		/* Without pidfds (Linux < 5.3) an exit is seen on the next directory event or
		 * after a second at the latest. */
		if (pidfd < 0 && (left < 0 || left > 1000))
			left = 1000;
		if (poll(p, pidfd >= 0 ? 2 : 1, left) < 0 && errno != EINTR)
			goto fail_kill;
		while (read(ino, evbuf, sizeof(evbuf)) > 0)
			;
	}
	if (pidfd >= 0)
		close(pidfd);
	close(ino);
	return pid;
fail_kill:
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
gone:
	if (status)
		*status = st;
fail:
	if (pidfd >= 0)
		close(pidfd);
	if (ino >= 0)
		close(ino);
	return -1;
}

static pid_t start_daemon(uint64_t *rng)
{
	static const char *const qd[] = {"nvme.queue_depth=1", "nvme.queue_depth=4",
					 "nvme.queue_depth=32"};
	char slots_opt[400];
	const char *argv[32] = {
	    kvtierd, "-f",
	    "-s",    sock,
	    "-o",    "host.capacity=1MiB",
	    "-o",    "daemon.log_level=warn",
	    "-o",    "nvme.enabled=true",
	    "-o",    slots_opt,
	    "-o",    "nvme.capacity=2MiB",
	    "-o",    below(rng, 3) ? "nvme.fsync=false" : "nvme.fsync=true",
	    "-o",    qd[below(rng, 3)],
	    "-o",    below(rng, 4) ? "nvme.io_uring=true" : "nvme.io_uring=false",
	    NULL};
	int status, argc = 20;
	char *extra = NULL, *save = NULL;
	pid_t pid;

	snprintf(slots_opt, sizeof(slots_opt), "nvme.paths=%s", slots);
	/* KVT_TEST_DAEMON_OPTS: more options, which win over the drawn ones. */
	if (getenv("KVT_TEST_DAEMON_OPTS"))
		extra = strdup(getenv("KVT_TEST_DAEMON_OPTS"));
	for (char *o = extra ? strtok_r(extra, " ", &save) : NULL; o && argc < 30;
	     o = strtok_r(NULL, " ", &save)) {
		argv[argc++] = "-o";
		argv[argc++] = o;
	}
	snprintf(daemon_opts, sizeof(daemon_opts), "%s %s %s%s%s", argv[15], argv[17], argv[19],
		 extra ? " + " : "", extra ? getenv("KVT_TEST_DAEMON_OPTS") : "");
	pid = daemon_spawn((char *const *)argv, sock, logpath, 120000, &status);
	if (pid < 0)
		fprintf(stderr, "kvtierd did not start (status %d); its log: %s\n", status,
			logpath);
	free(extra);
	return pid;
}

static int ctl_writeback(void)
{
	char cmd[800];
	int rc;

	snprintf(cmd, sizeof(cmd), "%s --socket %s writeback 2>&1", kvtierctl, sock);
	free(kvt_test_run(&rc, cmd));
	return rc;
}

/* Waits for the end of the NVMe recovery (blocks not yet recovered are misses): polls the
 * daemon's own state, a condition, never a duration. */
static void wait_recovered(void)
{
	char cmd[800];

	snprintf(cmd, sizeof(cmd), "%s --socket %s ping 2>&1", kvtierctl, sock);
	for (;;) {
		int rc;
		char *out = kvt_test_run(&rc, cmd);
		bool busy = rc == 0 && out && strstr(out, "recovering");

		free(out);
		if (!busy)
			return;
		usleep(2000);
	}
}

/* Waits until the clients have done n operations in all (an event they signal). */
static void wait_ops(uint64_t n)
{
	atomic_store(&ops_target, n);
	pthread_mutex_lock(&g_mu);
	while (atomic_load(&ops_done) < n && !atomic_load(&stopping))
		pthread_cond_wait(&g_cv, &g_mu);
	pthread_mutex_unlock(&g_mu);
}

/* Every key once more, from a fresh client, with nothing in flight. */
static int final_check(const char *when)
{
	struct client w = {.id = -1};
	uint64_t served = 0;
	int lay, bad0 = 0;

	for (int r = 0; r < R_COUNT; r++)
		bad0 += (int)atomic_load(&broken[r]);
	wait_recovered();
	w.c = kvt_test_connect(sock, "crash-model-check", CLIENT_TIMEOUT_MS);
	if (!w.c)
		return -1;
	lay = kvt_register_layout(w.c, &layout);
	w.buf = malloc(bb);
	w.exp = malloc(bb);
	for (int ki = 0; ki < nkeys; ki++) {
		uint64_t f0 = key_floor(ki);
		unsigned s0 = st_now();
		int lk = kvt_lookup(w.c, lay, &keys[ki].key, 1);
		ssize_t g = kvt_get(w.c, lay, &keys[ki].key, w.buf, bb);

		if (lk == 1 && key_ceiling(ki, NULL) < f0)
			report(R_LOOKUP, &w, "final lookup %s: key %d cannot be stored", when, ki);
		if (g >= 0 && check_block(&w, "final get", ki, w.buf, (size_t)g, f0, s0))
			served++;
		else if (g < 0 && g != -ENOENT)
			report(R_UNEXPECTED, &w, "final get %s, key %d: %zd", when, ki, g);
	}
	kvt_close(w.c);
	free(w.buf);
	free(w.exp);
	int bad = -bad0;
	for (int r = 0; r < R_COUNT; r++)
		bad += (int)atomic_load(&broken[r]);
	printf("crash_model: %s: %" PRIu64 " of %d keys served, %d wrong\n", when, served, nkeys,
	       bad);
	return bad ? -1 : 0;
}

int main(int argc, char **argv)
{
	uint64_t srng;
	struct counters tot;
	unsigned restarts = 0, flushes = 0;
	int failed = 0;
	pid_t pid;
	char cmd[400];

	if (argc < 3) {
		fprintf(stderr, "usage: test_crash_model KVTIERD KVTIERCTL [--seed N]\n");
		return 2;
	}
	kvtierd = argv[1];
	kvtierctl = argv[2];
	memset(&tot, 0, sizeof(tot));
	seed = (unsigned)env_u64("KVT_TEST_SEED", (uint64_t)time(NULL) ^ (uint64_t)getpid());
	if (argc > 4 && !strcmp(argv[3], "--seed"))
		seed = (unsigned)strtoul(argv[4], NULL, 0);
	total_ops_goal = env_u64("KVT_TEST_OPS", 3000);
	restarts_goal = (unsigned)env_u64("KVT_TEST_RESTARTS", 15);
	nclients = (int)env_u64("KVT_TEST_CLIENTS", 4);
	for (int k = 0; k < OP_N; k++) {
		const char *sk = getenv("KVT_TEST_SKIP"), *at = sk ? strstr(sk, op_name[k]) : NULL;
		if (at && (at == sk || at[-1] == ',') &&
		    (at[strlen(op_name[k])] == ',' || !at[strlen(op_name[k])]))
			skip_ops |= 1u << k;
	}
	unsigned progress = 1u << OP_PUT | 1u << OP_DELETE | 1u << OP_GET | 1u << OP_LOOKUP |
			    1u << OP_LEASE | 1u << OP_RESERVE;
	if ((skip_ops & progress) == progress) {
		fprintf(stderr, "KVT_TEST_SKIP leaves nothing to do\n");
		return 2;
	}
	if (nclients < 1 || nclients > MAX_CLIENTS) {
		fprintf(stderr, "KVT_TEST_CLIENTS: 1..%d\n", MAX_CLIENTS);
		return 2;
	}
	printf("crash_model: seed %u, %" PRIu64 " operations, %u restarts, %d clients (replay: "
	       "KVT_TEST_SEED=%u KVT_TEST_OPS=%" PRIu64 " KVT_TEST_RESTARTS=%u "
	       "KVT_TEST_CLIENTS=%d)\n",
	       seed, total_ops_goal, restarts_goal, nclients, seed, total_ops_goal, restarts_goal,
	       nclients);
	fflush(stdout);
	signal(SIGPIPE, SIG_IGN);
	snprintf(dir, sizeof(dir), "/tmp/kvtier-crash-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	snprintf(sock, sizeof(sock), "%s/kvtier.sock", dir);
	snprintf(slots, sizeof(slots), "%s/nvme0.slots", dir);
	snprintf(logpath, sizeof(logpath), "%s/kvtierd.log", dir);

	/* 1 layer x 2 heads x 16 tokens x 128 dims x K,V x fp16 = 16 KiB blocks: 64 fit the
	 * 1 MiB host tier, about 120 the 2 MiB NVMe tier, for 32 keys per client. */
	layout = (struct kvt_layout){sizeof(layout), 1, 2, 128, 16,
				     KVT_DTYPE_FP16, 0, 0, 1,	"crash-model"};
	bb = kvt_layout_block_bytes(&layout);
	nkeys = KEYS_PER_CLIENT * nclients + ABSENT_KEYS;
	keys = calloc((size_t)nkeys, sizeof(*keys));
	for (int i = 0; i < nkeys; i++) {
		pthread_mutex_init(&keys[i].mu, NULL);
		keys[i].owner = i < KEYS_PER_CLIENT * nclients ? i % nclients : -1;
		keys[i].next_ver = 1;
		keys[i].floor = 1;
		/* Key 0 is {0,0}; the others are as unrelated as hashes. */
		if (i) {
			uint64_t s = (uint64_t)i * 7919;
			keys[i].key.lo = rnd(&s);
			keys[i].key.hi = rnd(&s);
		}
	}

	srng = (uint64_t)seed * 0x2545f4914f6cdd1dull;
	pid = start_daemon(&srng);
	if (pid < 0)
		return 1;
	set_state(1); /* generation 0, up */
	for (int i = 0; i < nclients; i++) {
		struct client *w = &clients[i];
		w->id = i;
		w->rng = (uint64_t)seed << 8 | (uint64_t)i;
		w->buf = malloc(bb);
		w->exp = malloc(bb);
		w->c = kvt_test_connect(sock, "crash-model", CLIENT_TIMEOUT_MS);
		if (!w->c)
			return 1;
		w->lay = kvt_register_layout(w->c, &layout);
		if (w->lay < 0) {
			fprintf(stderr, "kvt_register_layout: %s\n", kvt_strerror(w->lay));
			return 1;
		}
	}
	for (int i = 0; i < nclients; i++)
		pthread_create(&clients[i].th, NULL, client_main, &clients[i]);

	/* Each kill comes after about ops/(restarts+1) operations of the daemon before it,
	 * give or take 40 % (counted from its start, so that slow starts do not bunch kills). */
	for (unsigned r = 1; r <= restarts_goal; r++) {
		uint64_t step = total_ops_goal / (restarts_goal + 1);
		uint64_t at = atomic_load(&ops_done) + step - step * 2 / 5 +
			      (step ? rnd(&srng) % (step * 4 / 5 + 1) : 0);

		/* Mostly write everything back first, then let the clients go on a little
		 * (deletes and new versions racing the write-back) before the kill. */
		bool flushed = false;
		if (below(&srng, 10) < 7) {
			wait_ops(at - (step ? rnd(&srng) % (step / 3 + 1) : 0));
			flushed = ctl_writeback() == 0;
		}
		wait_ops(at);
		if (atomic_load(&stopping)) {
			failed = 1;
			break;
		}
		set_state(ST_GEN(st_now()) << 1); /* down: the kill is coming */
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		set_state((ST_GEN(st_now()) + 1) << 1); /* reaped: handles of it are void */
		pid = start_daemon(&srng);
		if (pid < 0) {
			failed = 1;
			stop_all();
			set_state(st_now() | 1);
			break;
		}
		set_state(st_now() | 1);
		restarts++;
		flushes += flushed;
	}
	if (!failed)
		wait_ops(total_ops_goal);
	failed |= atomic_load(&stopping); /* a client stopped the run */
	stop_all();
	if (failed && pid > 0) {
		/* Clients still waiting on a hung daemon get their answer now. */
		set_state(ST_GEN(st_now()) << 1);
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	for (int i = 0; i < nclients; i++) {
		pthread_join(clients[i].th, NULL);
		kvt_close(clients[i].c);
		for (int k = 0; k < OP_N; k++)
			tot.ops[k] += clients[i].n.ops[k];
		tot.hits += clients[i].n.hits;
		tot.misses += clients[i].n.misses;
		tot.recovered_hits += clients[i].n.recovered_hits;
		tot.daemon_gone += clients[i].n.daemon_gone;
		tot.nospc += clients[i].n.nospc;
		tot.eagain += clients[i].n.eagain;
	}

	if (!failed) {
		/* Once more with nothing in flight, then across a clean restart. */
		failed |= final_check("after the run") < 0;
		int st = kvt_test_daemon_stop(pid);
		if (st != 0) {
			fprintf(stderr, "kvtierd exited %d on SIGTERM\n", st);
			failed = 1;
		}
		set_state((ST_GEN(st_now()) + 1) << 1);
		pid = start_daemon(&srng);
		if (pid > 0) {
			set_state(st_now() | 1);
			failed |= final_check("after a clean restart") < 0;
			if (kvt_test_daemon_stop(pid) != 0)
				failed = 1;
		} else {
			failed = 1;
		}
	}

	uint64_t all = 0, bad = 0;
	for (int k = 0; k < OP_N; k++)
		all += tot.ops[k];
	printf("crash_model: seed %u: %" PRIu64 " operations (", seed, all);
	for (int k = 0; k < OP_N; k++)
		printf("%s%s %" PRIu64, k ? ", " : "", op_name[k], tot.ops[k]);
	printf("), %d clients, %u restarts (%u after a write-back), %" PRIu64 " hits, %" PRIu64
	       " of them blocks that survived a restart, %" PRIu64 " misses, %" PRIu64
	       " calls failed by a dead daemon, %" PRIu64 " ENOSPC, %" PRIu64 " EAGAIN\n",
	       nclients, restarts, flushes, tot.hits, tot.recovered_hits, tot.misses,
	       tot.daemon_gone, tot.nospc, tot.eagain);
	printf("crash_model: seed %u: rules broken:", seed);
	for (int r = 0; r < R_COUNT; r++) {
		uint64_t n = atomic_load(&broken[r]);
		printf(" %s %" PRIu64, rule_name[r], n);
		bad += n;
	}
	printf("\n");
	/* A run that never read a block back after a restart tested nothing of recovery. */
	if (restarts && !tot.recovered_hits) {
		printf("crash_model: no block was served after surviving a restart\n");
		failed = 1;
	}
	if (restarts < restarts_goal || all < total_ops_goal)
		failed = 1;
	failed |= bad != 0;
	printf("crash_model: %s (seed %u)\n", failed ? "FAILED" : "passed", seed);
	if (failed) {
		snprintf(cmd, sizeof(cmd), "tail -n 20 %s >&2", logpath);
		if (system(cmd) != 0)
			fprintf(stderr, "(no daemon log)\n");
	}
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		return 1;
	return failed ? 1 : 0;
}
