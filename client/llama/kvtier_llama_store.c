/* SPDX-License-Identifier: MIT */
/*
 * kvtier_llama_store.c - storing: the sequence's state -> blocks by position -> puts.
 */
#include "kvtier_llama_int.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ggml-backend.h>
/* ---------------------------------------------------------------------------------------
 * Storing: the sequence's state -> blocks [from, to) by position.  Each block is filled in
 * place in the host arena (kvt_put_reserve, zero copy), or, where the host tier codes the
 * layout's blocks (host.codec), in a buffer handed to kvt_put_at, which encodes it in this
 * thread: a reservation is always stored raw.  The blocks are split between
 * kvt_llama_opts.restore_threads threads (each its own blocks and buffer).
 */

/* What one store thread needs: blocks [from, to) of the state view. */
struct store_slice {
	struct kvt_llama *kl;
	const struct state_view *sv;
	const uint32_t *cell_of;
	const struct kvt_key *keys;
	uint32_t from, to;
	bool enc;
	uint32_t stored;
	uint32_t fail; /* the block that failed, or to */
	int rc;
	pthread_t th;
	bool started;
};

/* Writes block b of the state view into dst (the layout's page-first order). */
static void fill_block(const struct kvt_llama *kl, const struct state_view *sv,
		       const uint32_t *cell_of, uint32_t b, uint8_t *dst)
{
	const uint32_t hd = kl->hd, nkv = kl->n_kv;
	const size_t hb = (size_t)hd * kl->el, half = kl->layer_bytes / 2;

	for (uint32_t l = 0; l < sv->n_layer; l++) {
		uint8_t *k = dst + l * kl->layer_bytes, *v = k + half;
		for (uint32_t t = 0; t < BT; t++) {
			const uint32_t c = cell_of[b * BT + t];
			for (uint32_t h = 0; h < nkv; h++) {
				memcpy(k + ((size_t)h * BT + t) * hb,
				       sv->k[l] + c * sv->k_row + h * hb, hb);
				if (!sv->v_trans)
					memcpy(v + ((size_t)h * BT + t) * hb,
					       sv->v[l] + c * sv->v_row + h * hb, hb);
			}
		}
		if (sv->v_trans) {
			uint16_t *vd = (uint16_t *)(void *)v;
			const uint16_t *vs = (const uint16_t *)(const void *)sv->v[l];
			for (uint32_t h = 0; h < nkv; h++)
				for (uint32_t t = 0; t < BT; t++) {
					const uint32_t c = cell_of[b * BT + t];
					for (uint32_t d = 0; d < hd; d++)
						vd[((size_t)h * BT + t) * hd + d] =
						    vs[((size_t)h * hd + d) * sv->cells + c];
				}
		}
	}
}

static void *store_run(void *arg)
{
	struct store_slice *sl = arg;
	struct kvt_llama *kl = sl->kl;
	uint8_t *blk = NULL;

	sl->fail = sl->to;
	if (sl->enc && !(blk = malloc(kl->block_bytes))) {
		sl->fail = sl->from;
		sl->rc = -ENOMEM;
		return NULL;
	}
	for (uint32_t b = sl->from; b < sl->to; b++) {
		struct kvt_reservation r;
		uint8_t *dst = blk;
		int rc;

		if (!sl->enc) {
			rc = kvt_put_reserve(kl->c, kl->lay, &sl->keys[b], kl->block_bytes, &r);
			if (rc == -EEXIST)
				continue;
			if (rc < 0) {
				sl->fail = b;
				sl->rc = rc;
				break;
			}
			dst = r.data;
		}
		fill_block(kl, sl->sv, sl->cell_of, b, dst);
		rc = sl->enc
			 ? kvt_put_at(kl->c, kl->lay, &sl->keys[b], b * BT, blk, kl->block_bytes)
			 : kvt_put_commit_at(kl->c, &r, b * BT);
		if (rc < 0 && rc != -EEXIST) {
			sl->fail = b;
			sl->rc = rc;
			break;
		}
		if (rc == 0)
			sl->stored++; /* else stored meanwhile (kvt_put_at: 1) */
	}
	free(blk);
	return NULL;
}

int kvtl_store(struct kvt_llama *kl, const struct kvt_key *keys, uint32_t from, uint32_t to,
	       uint32_t n_tokens, uint32_t *stored)
{
	const bool enc = kvt_put_encodes(kl->c, kl->lay) == 1;
	struct state_view sv;
	uint32_t *cell_of = NULL;
	uint8_t *st;
	size_t len = 0;
	int rc;

	/* All there already (a full hit of a prompt of whole blocks stores only its last one):
	 * spare the copy of the whole sequence's state. */
	if (kvt_lookup(kl->c, kl->lay, keys + from, to - from) == (int)(to - from))
		return 0;
	len = llama_state_seq_get_size(kl->ctx, kl->seq);
	if (kvtl_kbuf_reserve(&kl->state, len, kvtl_state_bytes(kl, llama_n_ctx(kl->ctx))) < 0)
		return -ENOMEM;
	st = kl->state.p;
	if (!len || llama_state_seq_get_data(kl->ctx, st, len, kl->seq) != len) {
		kvtl_fmt_err(kl->msg, sizeof(kl->msg), "llama_state_seq_get_data failed");
		rc = -EIO;
		goto out_st;
	}
	if ((rc = kvtl_parse_state(st, len, &sv, kl->msg, sizeof(kl->msg))) < 0)
		goto out_st;
	if (sv.cells != n_tokens || sv.n_layer != kl->fmt.n_layer || sv.k_type != kl->fmt.k_type ||
	    sv.v_type != kl->fmt.v_type || sv.k_row != kl->fmt.k_row || sv.v_row != kl->fmt.v_row ||
	    sv.v_trans != kl->fmt.v_trans) {
		kvtl_fmt_err(kl->msg, sizeof(kl->msg),
			     "sequence state of %u cells differs from the one learned at open",
			     sv.cells);
		rc = -EBADMSG;
		goto out;
	}
	if (!(cell_of = malloc(n_tokens * sizeof(*cell_of)))) {
		rc = -ENOMEM;
		goto out;
	}
	memset(cell_of, 0xff, n_tokens * sizeof(*cell_of));
	for (uint32_t i = 0; i < sv.cells; i++) {
		int32_t pos;
		memcpy(&pos, sv.meta + (size_t)i * 12, 4);
		if (pos < 0 || (uint32_t)pos >= n_tokens || cell_of[pos] != UINT32_MAX) {
			kvtl_fmt_err(kl->msg, sizeof(kl->msg),
				     "sequence state: position %d out of place", pos);
			rc = -EBADMSG;
			goto out;
		}
		cell_of[pos] = i;
	}
	{
		struct store_slice sl[KVTL_RESTORE_THREADS];
		uint32_t n = to - from, nt = kl->restore_threads;

		nt = nt < 1 ? 1 : nt > n ? n : nt;
		for (uint32_t t = 0; t < nt; t++) {
			sl[t] = (struct store_slice){kl,
						     &sv,
						     cell_of,
						     keys,
						     from + (uint32_t)((uint64_t)n * t / nt),
						     from + (uint32_t)((uint64_t)n * (t + 1) / nt),
						     enc,
						     0,
						     0,
						     0,
						     0,
						     false};
			if (t)
				sl[t].started =
				    pthread_create(&sl[t].th, NULL, store_run, &sl[t]) == 0;
		}
		for (uint32_t t = 0; t < nt; t++)
			if (t == 0 || !sl[t].started)
				store_run(&sl[t]);
		rc = 0;
		for (uint32_t t = 0; t < nt; t++) {
			if (t && sl[t].started)
				pthread_join(sl[t].th, NULL);
			*stored += sl[t].stored;
			if (sl[t].fail < sl[t].to && !rc) { /* the first in block order */
				rc = sl[t].rc;
				kvtl_fmt_err(kl->msg, sizeof(kl->msg), "store block %u: %s",
					     sl[t].fail, kvt_strerror(rc));
			}
		}
		if (rc < 0)
			goto out;
	}
	rc = 0;
out:
	free(cell_of);
	kvtl_view_free(&sv);
out_st:
	return rc;
}
