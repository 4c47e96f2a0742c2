/* SPDX-License-Identifier: MIT */
/*
 * kvtier-replay - replays a real KV-cache dump (.kvd) against kvtierd the way an inference
 * engine uses it, and checks every byte that comes back.
 *
 * Request 1 is a prefill of the dump's prompt: lookup (nothing cached on a fresh daemon),
 * then every block is put, half through the zero-copy path (reserve, fill the arena, commit)
 * and half through kvt_put().  Each later request sends the same prompt again: the longest
 * cached prefix is read back (kvt_get and leases alternately) and compared with the dump;
 * blocks the daemon evicted are put again, as an engine recomputes them.  Blocks that are
 * still stored after the first miss are verified too (found with one-key lookups, which do
 * not change LRU order), so a host tier smaller than the prompt still checks data.
 */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvd.h"
#include "kvtier.h"

#define LOOKUP_MAX 4096

struct replay {
	struct kvd d;
	struct kvt_client *c;
	struct kvt_layout lay;
	int lid;
	uint32_t bt;   /* tokens per block */
	uint32_t nblk; /* full blocks of the prompt */
	size_t bb;     /* bytes per block */
	struct kvt_key *keys;
	uint8_t *stage; /* one block, for kvt_put and kvt_get */
	bool *stored;	/* per block: ever stored by this run */
	/* totals */
	uint64_t puts, puts_zc, already, bytes_put, bytes_read;
	uint64_t prefix_hits, extra_hits, misses, evicted, verified, mismatches;
	uint32_t last_hit; /* prefix hit of the last request */
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Block b of the dump in the layout's page-first order: per layer, K[head][tok][dim], then V. */
static void pack_block(const struct replay *rp, uint32_t b, uint8_t *out)
{
	kvd_block_io(&rp->d, rp->d.k, rp->d.v, b * rp->bt, rp->bt, (uint16_t *)out, 1);
}

/* First differing byte offset of block b against the dump, or -1 when equal. */
static long check_block(struct replay *rp, uint32_t b, const uint8_t *got, size_t len,
			uint8_t *scratch)
{
	if (len != rp->bb)
		return 0;
	pack_block(rp, b, scratch);
	if (!memcmp(scratch, got, len))
		return -1;
	for (size_t i = 0; i < len; i++)
		if (scratch[i] != got[i])
			return (long)i;
	return 0;
}

static int lookup_all(struct replay *rp, uint32_t from, uint32_t n)
{
	uint32_t hit = 0;

	while (hit < n) {
		uint32_t chunk = n - hit < LOOKUP_MAX ? n - hit : LOOKUP_MAX;
		int r = kvt_lookup(rp->c, rp->lid, rp->keys + from + hit, chunk);

		if (r < 0)
			return r;
		hit += (uint32_t)r;
		if ((uint32_t)r < chunk)
			break;
	}
	return (int)hit;
}

static int put_block(struct replay *rp, uint32_t b)
{
	struct kvt_reservation res;
	int ret;

	if (b % 2 == 0) {
		/* Zero-copy path: the "engine" writes the block straight into the arena. */
		ret = kvt_put_reserve(rp->c, rp->lid, &rp->keys[b], rp->bb, &res);
		if (ret == -EEXIST) {
			rp->already++;
			return 0;
		}
		if (ret < 0)
			return ret;
		pack_block(rp, b, res.data);
		ret = kvt_put_commit(rp->c, &res);
		if (ret < 0)
			return ret;
		rp->puts_zc++;
	} else {
		pack_block(rp, b, rp->stage);
		ret = kvt_put(rp->c, rp->lid, &rp->keys[b], rp->stage, rp->bb);
		if (ret < 0)
			return ret;
		if (ret == 1) {
			rp->already++;
			return 0;
		}
	}
	rp->puts++;
	rp->bytes_put += rp->bb;
	rp->stored[b] = true;
	return 0;
}

/* Reads block b back (kvt_get for even blocks, a lease for odd ones) and compares it. */
static int read_and_verify(struct replay *rp, uint32_t b, uint8_t *scratch, bool *missing)
{
	struct kvt_lease lease;
	long bad;
	int ret;

	*missing = false;
	if (b % 2 == 0) {
		ssize_t n = kvt_get(rp->c, rp->lid, &rp->keys[b], rp->stage, rp->bb);

		if (n == -ENOENT) {
			*missing = true;
			return 0;
		}
		if (n < 0)
			return (int)n;
		bad = check_block(rp, b, rp->stage, (size_t)n, scratch);
	} else {
		ret = kvt_get_lease(rp->c, rp->lid, &rp->keys[b], &lease);
		if (ret == -ENOENT) {
			*missing = true;
			return 0;
		}
		if (ret < 0)
			return ret;
		bad = check_block(rp, b, lease.data, lease.len, scratch);
		ret = kvt_lease_release(rp->c, &lease);
		if (ret < 0)
			return ret;
	}
	rp->bytes_read += rp->bb;
	if (bad >= 0) {
		fprintf(stderr, "kvtier-replay: block %u differs from the dump at byte %ld\n", b,
			bad);
		rp->mismatches++;
	} else {
		rp->verified++;
	}
	return 0;
}

static int run_request(struct replay *rp, unsigned req, uint8_t *scratch, bool verbose)
{
	uint32_t b, hit, extra = 0, reput = 0, lost = 0;
	bool missing;
	int ret;

	ret = lookup_all(rp, 0, rp->nblk);
	if (ret < 0) {
		fprintf(stderr, "kvtier-replay: lookup: %s\n", kvt_strerror(ret));
		return ret;
	}
	hit = (uint32_t)ret;
	if (req == 0 && hit)
		printf("note: %u blocks of this prompt were already cached (daemon not fresh)\n",
		       hit);

	/* The engine reuses the cached prefix. A block evicted between lookup and get ends it. */
	for (b = 0; b < hit; b++) {
		ret = read_and_verify(rp, b, scratch, &missing);
		if (ret < 0)
			goto err;
		if (missing)
			break;
		rp->prefix_hits++;
	}
	hit = b;

	/* Blocks still stored past the first miss: not usable by the engine, but checkable. */
	for (b = hit + 1; b < rp->nblk; b++) {
		if (!rp->stored[b])
			continue;
		ret = kvt_lookup(rp->c, rp->lid, &rp->keys[b], 1);
		if (ret < 0)
			goto err;
		if (ret == 0)
			continue;
		ret = read_and_verify(rp, b, scratch, &missing);
		if (ret < 0)
			goto err;
		if (!missing) {
			rp->extra_hits++;
			extra++;
		}
	}

	/* Recompute and store the rest, as the engine's prefill does. */
	for (b = hit; b < rp->nblk; b++) {
		bool was = rp->stored[b];
		uint64_t before = rp->puts;

		ret = put_block(rp, b);
		if (ret < 0)
			goto err;
		if (rp->puts != before) {
			reput++;
			if (was)
				lost++;
		}
	}
	rp->misses += rp->nblk - hit;
	rp->last_hit = hit;
	rp->evicted += lost;
	if (verbose)
		printf("request %u: prefix hit %u/%u blocks, %u more still stored and verified, "
		       "%u put (%u of them evicted since last stored)\n",
		       req + 1, hit, rp->nblk, extra, reput, lost);
	return 0;
err:
	fprintf(stderr, "kvtier-replay: request %u, block %u: %s\n", req + 1, b, kvt_strerror(ret));
	return ret;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: kvtier-replay [--socket PATH] [--block TOKENS] [--requests N] "
		   "[--quiet]\n"
		   "                     [--expect-evictions] [--expect-full-hit] DUMP.kvd\n"
		   "  replays the dump's prompt N times (default 2) against kvtierd as an engine\n"
		   "  would, and verifies every block read back bit for bit\n"
		   "  --expect-evictions  fail unless the daemon evicted some of the blocks\n"
		   "  --expect-full-hit   fail unless the last request found the whole prompt\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"socket", required_argument, NULL, 's'},
	    {"block", required_argument, NULL, 'b'},
	    {"requests", required_argument, NULL, 'n'},
	    {"quiet", no_argument, NULL, 'q'},
	    {"help", no_argument, NULL, 'h'},
	    {"expect-evictions", no_argument, NULL, 'E'},
	    {"expect-full-hit", no_argument, NULL, 'F'},
	    {NULL, 0, NULL, 0},
	};
	struct kvt_connect_opts co = {.size = sizeof(co), .name = "kvtier-replay"};
	struct replay rp = {.bt = 64};
	struct kvt_stats st = {.size = sizeof(st)};
	unsigned requests = 2, req;
	uint32_t *tokens = NULL;
	uint8_t *scratch = NULL;
	bool verbose = true, expect_evict = false, expect_full = false;
	double t0, t1;
	int ret, opt, status = 1;

	while ((opt = getopt_long(argc, argv, "s:b:n:qh", opts, NULL)) != -1) {
		switch (opt) {
		case 's':
			co.socket_path = optarg;
			break;
		case 'b':
			rp.bt = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		case 'n':
			requests = (unsigned)strtoul(optarg, NULL, 0);
			break;
		case 'q':
			verbose = false;
			break;
		case 'E':
			expect_evict = true;
			break;
		case 'F':
			expect_full = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc - 1 || !rp.bt || !requests) {
		usage(stderr);
		return 2;
	}

	ret = kvd_load(argv[optind], &rp.d);
	if (ret < 0) {
		fprintf(stderr, "kvtier-replay: %s: %s\n", argv[optind], strerror(-ret));
		return 1;
	}
	rp.lay = (struct kvt_layout){
	    .size = sizeof(rp.lay),
	    .n_layers = rp.d.n_layers,
	    .n_kv_heads = rp.d.n_kv_heads,
	    .head_dim = rp.d.head_dim,
	    .block_tokens = rp.bt,
	    .dtype = KVT_DTYPE_FP16,
	    .kv_order = KVT_ORDER_K_THEN_V,
	    .rank = 0,
	    .world = 1,
	};
	/* The source name may fill all 64 bytes; the model id keeps room for its NUL. */
	memcpy(rp.lay.model_id, rp.d.source, sizeof(rp.lay.model_id) - 1);
	rp.bb = kvt_layout_block_bytes(&rp.lay);
	rp.nblk = rp.d.n_tokens / rp.bt;
	if (!rp.bb || !rp.nblk ||
	    rp.bb != (size_t)rp.d.n_layers * 2 * rp.d.n_kv_heads * rp.bt * rp.d.head_dim * 2) {
		fprintf(stderr,
			"kvtier-replay: layout rejected or too few tokens (%u tokens, %u per "
			"block, block bytes %zu)\n",
			rp.d.n_tokens, rp.bt, rp.bb);
		goto out;
	}

	tokens = malloc(sizeof(*tokens) * rp.d.n_tokens);
	rp.keys = calloc(rp.nblk, sizeof(*rp.keys));
	rp.stored = calloc(rp.nblk, sizeof(*rp.stored));
	rp.stage = aligned_alloc(64, (rp.bb + 63) & ~(size_t)63);
	scratch = aligned_alloc(64, (rp.bb + 63) & ~(size_t)63);
	if (!tokens || !rp.keys || !rp.stored || !rp.stage || !scratch) {
		fprintf(stderr, "kvtier-replay: out of memory\n");
		goto out;
	}
	/* The model is byte-level: token ids are the prompt's bytes. */
	for (uint32_t i = 0; i < rp.d.n_tokens; i++)
		tokens[i] = rp.d.tokens[i];
	ret = kvt_key_chain(kvt_layout_fingerprint(&rp.lay), rp.bt, NULL, tokens, rp.d.n_tokens,
			    rp.keys, rp.nblk);
	if (ret != (int)rp.nblk) {
		fprintf(stderr, "kvtier-replay: kvt_key_chain returned %d for %u blocks\n", ret,
			rp.nblk);
		goto out;
	}

	ret = kvt_connect(&co, &rp.c);
	if (ret < 0) {
		fprintf(stderr, "kvtier-replay: connect: %s\n", kvt_strerror(ret));
		goto out;
	}
	rp.lid = kvt_register_layout(rp.c, &rp.lay);
	if (rp.lid < 0) {
		fprintf(stderr, "kvtier-replay: register layout: %s\n", kvt_strerror(rp.lid));
		goto out;
	}
	if (verbose)
		printf("%s: %u tokens, %u layers x %u kv heads x %u dims fp16; %u blocks of %u "
		       "tokens, %zu bytes each\n",
		       rp.lay.model_id, rp.d.n_tokens, rp.d.n_layers, rp.d.n_kv_heads,
		       rp.d.head_dim, rp.nblk, rp.bt, rp.bb);

	t0 = now_s();
	for (req = 0; req < requests; req++)
		if (run_request(&rp, req, scratch, verbose) < 0)
			goto out;
	t1 = now_s();
	ret = kvt_stats(rp.c, &st);
	if (ret < 0) {
		fprintf(stderr, "kvtier-replay: stats: %s\n", kvt_strerror(ret));
		goto out;
	}

	printf("blocks %u x %zu B, requests %u, put %llu (%llu zero-copy, %llu already stored), "
	       "%.1f MiB put, %.1f MiB read\n",
	       rp.nblk, rp.bb, requests, (unsigned long long)rp.puts,
	       (unsigned long long)rp.puts_zc, (unsigned long long)rp.already,
	       rp.bytes_put / 1048576.0, rp.bytes_read / 1048576.0);
	printf("hits %llu (prefix) + %llu (past the first miss), misses %llu, evicted %llu "
	       "(daemon: %llu evictions, host tier %llu/%llu B), %.3f s\n",
	       (unsigned long long)rp.prefix_hits, (unsigned long long)rp.extra_hits,
	       (unsigned long long)rp.misses, (unsigned long long)rp.evicted,
	       (unsigned long long)st.evictions, (unsigned long long)st.host_used_bytes,
	       (unsigned long long)st.host_capacity_bytes, t1 - t0);
	if (rp.mismatches) {
		printf("verify FAILED: %llu of %llu blocks differ from the dump\n",
		       (unsigned long long)rp.mismatches,
		       (unsigned long long)(rp.mismatches + rp.verified));
		goto out;
	}
	/* After a put the last blocks stored must be readable: zero verified means lost data. */
	if (requests > 1 && !rp.verified) {
		printf("verify FAILED: no block came back from the daemon\n");
		goto out;
	}
	printf("verify OK: %llu blocks bit-exact\n", (unsigned long long)rp.verified);
	if (expect_evict && !rp.evicted) {
		printf("FAILED: --expect-evictions, but no block was evicted\n");
		goto out;
	}
	if (expect_full && rp.last_hit != rp.nblk) {
		printf("FAILED: --expect-full-hit, but the last request found %u of %u blocks\n",
		       rp.last_hit, rp.nblk);
		goto out;
	}
	status = 0;
out:
	kvt_close(rp.c);
	free(scratch);
	free(rp.stage);
	free(rp.stored);
	free(rp.keys);
	free(tokens);
	kvd_free(&rp.d);
	return status;
}
