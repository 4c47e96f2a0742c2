/* SPDX-License-Identifier: MIT */
/*
 * kvtier_llama_restore.c - restoring: leased blocks -> a sequence state -> set_data.
 */
#include "kvtier_llama_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * The blocks are leased in batches of at most RESTORE_BATCH_BYTES (kvt_get_lease_batch: one
 * round trip, no copy) and copied from the daemon's arena straight to their places in the
 * state, then given back.  Ahead of each batch the daemon is asked to read the next
 * RESTORE_AHEAD_BYTES from NVMe (kvt_prefetch, fire and forget): its disk and its checks run
 * while this process copies.  Not the whole prefix at once: reads in flight together finish
 * together, and the first batch would wait for the last one's (README "llama.cpp" has the
 * measurements).
 */
#define RESTORE_BATCH_BYTES  (4u << 20)
#define RESTORE_BATCH_BLOCKS 256u
#define RESTORE_AHEAD_BYTES  (8u << 20)

/* Asks the daemon to read the blocks of [from, upto) not asked for yet (those before
 * *asked were); *asked moves to upto. */
static void read_ahead(struct kvt_llama *kl, const struct kvt_key *keys, uint32_t *asked,
		       uint32_t from, uint32_t upto)
{
	if (*asked < from)
		*asked = from;
	if (upto > *asked) {
		kvt_prefetch(kl->c, kl->lay, keys + *asked, upto - *asked, 3, 0);
		*asked = upto;
	}
}

/* Gives back the leases of l[0..m) that are held. */
static void release_all(struct kvt_llama *kl, struct kvt_lease *l, uint32_t m)
{
	for (uint32_t i = 0; i < m; i++) {
		if (l[i].data)
			kvt_lease_release(kl->c, &l[i]);
	}
}

/* The raw block of a held lease: its bytes in the arena, or (compressed host tier) decoded
 * into stage.  NULL, with kl->msg (when msg) and *why set, for a block that is not the
 * layout's. */
static const uint8_t *lease_block(struct kvt_llama *kl, struct kbuf *stage, bool msg,
				  const struct kvt_lease *l, uint32_t b, int *why)
{
	ssize_t got;

	if (l->raw_len != kl->block_bytes) {
		if (msg)
			kvtl_fmt_err(kl->msg, sizeof(kl->msg),
				     "block %u: %zu bytes, the layout's blocks have %zu: not used",
				     b, l->raw_len, kl->block_bytes);
		*why = -EBADMSG;
		return NULL;
	}
	if (l->chain_id == 0)
		return l->data;
	if (kvtl_kbuf_reserve(stage, kl->block_bytes, kl->block_bytes) < 0) {
		*why = -ENOMEM;
		return NULL;
	}
	got = kvt_lease_decode(kl->c, l, stage->p, kl->block_bytes);
	if (got != (ssize_t)kl->block_bytes) {
		if (msg)
			kvtl_fmt_err(kl->msg, sizeof(kl->msg), "block %u: %s", b,
				     got < 0 ? kvt_strerror((int)got) : "decoded to another size");
		*why = got < 0 ? (int)got : -EBADMSG;
		return NULL;
	}
	return stage->p;
}

/* A slice of a batch copied (decoded) into the state by one thread. */
struct slice {
	struct kvt_llama *kl;
	struct kbuf *stage;
	const struct kvt_lease *l;
	uint32_t first, from, to, cells;
	uint32_t fail; /* the first block of the slice that failed, or to */
	int why;
	pthread_t th;
	bool started;
};

static void *slice_run(void *arg)
{
	struct slice *sl = arg;

	for (sl->fail = sl->from; sl->fail < sl->to; sl->fail++) {
		const uint8_t *src = lease_block(sl->kl, sl->stage, false, &sl->l[sl->fail],
						 sl->first + sl->fail, &sl->why);
		if (!src)
			break;
		kvtl_state_put_block(sl->kl, sl->kl->state.p, sl->cells, sl->first + sl->fail, src);
	}
	return NULL;
}

/* Copies blocks [0, n) of a batch (leases l, the first one block `first`) into the state,
 * on up to kl->restore_threads threads (each block's place is its own); returns how many
 * lead without a failure, kl->msg and *why set for the first that failed. */
static uint32_t copy_batch(struct kvt_llama *kl, const struct kvt_lease *l, uint32_t first,
			   uint32_t n, uint32_t cells, int *why)
{
	struct slice sl[KVTL_RESTORE_THREADS];
	uint32_t nt = kl->restore_threads, ok = n;

	nt = nt < 1 ? 1 : nt > n ? n : nt;
	for (uint32_t t = 0; t < nt; t++) {
		sl[t] = (struct slice){kl,
				       t ? &kl->stages[t - 1] : &kl->stage,
				       l,
				       first,
				       (uint32_t)((uint64_t)n * t / nt),
				       (uint32_t)((uint64_t)n * (t + 1) / nt),
				       cells,
				       0,
				       0,
				       0,
				       false};
		if (t)
			sl[t].started = pthread_create(&sl[t].th, NULL, slice_run, &sl[t]) == 0;
	}
	for (uint32_t t = 0; t < nt; t++) {
		if (t == 0 || !sl[t].started)
			slice_run(
			    &sl[t]); /* this thread's slice, and any a thread was not had for */
	}
	for (uint32_t t = 1; t < nt; t++) {
		if (sl[t].started)
			pthread_join(sl[t].th, NULL);
	}
	for (uint32_t t = 0; t < nt && ok == n; t++) {
		if (sl[t].fail < sl[t].to) {
			ok = sl[t].fail;
			/* again on this thread, for its message */
			lease_block(kl, &kl->stage, true, &l[ok], first + ok, why);
			*why = sl[t].why;
		}
	}
	return ok;
}

/* Restores up to nb leading blocks; returns how many it did (the sequence then holds that
 * many * 64 cells), 0 on any failure (the sequence is empty then), with kl->msg and *why set.
 * Each block is copied to its place in the state as its batch comes in, in order, up to the
 * first that failed: the state describes exactly the blocks read whole. */
uint32_t kvtl_restore(struct kvt_llama *kl, const struct kvt_key *keys, uint32_t nb, int *why)
{
	const uint32_t cells = nb * BT;
	const size_t max = kvtl_state_bytes(kl, llama_n_ctx(kl->ctx));
	uint32_t win, ahead, asked = 0, got = 0;
	struct kvt_lease *l;
	int *st;
	size_t len;

	win = kl->restore_batch ? kl->restore_batch
				: (uint32_t)(RESTORE_BATCH_BYTES / kl->block_bytes);
	win = win < 1 ? 1 : win > RESTORE_BATCH_BLOCKS ? RESTORE_BATCH_BLOCKS : win;
	win = win > nb ? nb : win;
	ahead = (uint32_t)(RESTORE_AHEAD_BYTES / kl->block_bytes);
	l = calloc(win, sizeof(*l));
	st = calloc(win, sizeof(*st));
	if (!l || !st || kvtl_kbuf_reserve(&kl->state, kvtl_state_bytes(kl, cells), max) < 0) {
		free(l);
		free(st);
		*why = -ENOMEM;
		return 0;
	}
	kvtl_state_headers(kl, kl->state.p, cells);
	for (uint32_t first = 0; first < nb; first += win) {
		const uint32_t m = nb - first < win ? nb - first : win;
		const uint32_t upto = first + m + ahead;
		uint32_t ok = 0;
		double t0;
		int rc;

		/* This batch is asked for as it is, the ones after it are read ahead. */
		read_ahead(kl, keys, &asked, first + m, upto < nb ? upto : nb);
		t0 = kvtl_now_ms();
		rc = kvt_get_lease_batch(kl->c, kl->lay, keys + first, l, m, st);
		kl->ph_wait += kvtl_now_ms() - t0;
		if (rc < 0) {
			kvtl_fmt_err(kl->msg, sizeof(kl->msg), "blocks %u-%u of %u: %s", first,
				     first + m - 1, nb, kvt_strerror(rc));
			*why = rc;
			break;
		}
		t0 = kvtl_now_ms();
		while (ok < m && st[ok] == 0) /* the leading blocks leased */
			ok++;
		if (ok)
			ok = copy_batch(kl, l, first, ok, cells, why);
		kl->ph_copy += kvtl_now_ms() - t0;
		release_all(kl, l, m);
		got += ok;
		if (ok < m) {
			if (st[ok] < 0) {
				kvtl_fmt_err(kl->msg, sizeof(kl->msg), "block %u of %u: %s", got,
					     nb, kvt_strerror(st[ok]));
				*why = st[ok];
			}
			break;
		}
	}
	free(l);
	free(st);
	if (got == 0)
		return 0;
	if (got < nb)
		kvtl_state_shrink(kl, kl->state.p, cells, got * BT);
	len = kvtl_state_bytes(kl, got * BT);
	double t0 = kvtl_now_ms();
	size_t set = llama_state_seq_set_data(kl->ctx, kl->state.p, len, kl->seq);
	kl->ph_set = kvtl_now_ms() - t0;
	if (set != len || llama_memory_seq_pos_max(llama_get_memory(kl->ctx), kl->seq) !=
			      (llama_pos)(got * BT - 1)) {
		llama_memory_seq_rm(llama_get_memory(kl->ctx), kl->seq, -1, -1);
		kvtl_fmt_err(kl->msg, sizeof(kl->msg), "llama_state_seq_set_data refused %u blocks",
			     got);
		*why = -EIO;
		got = 0;
	}
	return got;
}
