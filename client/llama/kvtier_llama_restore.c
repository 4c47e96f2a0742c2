/* SPDX-License-Identifier: MIT */
/*
 * kvtier_llama_restore.c - restoring: batched gets of blocks -> a sequence state -> set_data.
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
/*
 * The gets run in batches of at most RESTORE_BATCH_BYTES (one round trip each), on a thread
 * of their own up to RESTORE_SLOTS batches ahead of the copies into the state; before the
 * first, the whole prefix is prefetched (one call), so that the daemon keeps its disk
 * reading ahead of the batches even while this process waits for a core on a loaded
 * machine (README "llama.cpp" has the measurements).
 */
#define RESTORE_BATCH_BYTES  (4u << 20)
#define RESTORE_BATCH_BLOCKS 256u
#define RESTORE_SLOTS	     3

struct fetch {
	struct kvt_llama *kl;
	const struct kvt_key *keys;
	uint32_t nb, win, nwin;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint32_t fetched;  /* batches whose gets are done */
	uint32_t consumed; /* batches copied into the state (their slot is free again) */
	bool stop;	   /* the copies stopped: fetch no more */
	int rc[RESTORE_SLOTS];
	int *status; /* RESTORE_SLOTS * win */
};

static uint8_t *fetch_slot(const struct fetch *f, uint32_t k, uint32_t i)
{
	return f->kl->stage.p + ((size_t)(k % RESTORE_SLOTS) * f->win + i) * f->kl->block_bytes;
}

/* Gets batch k into its slot. */
static void fetch_batch(struct fetch *f, uint32_t k)
{
	struct kvt_llama *kl = f->kl;
	const uint32_t first = k * f->win, m = f->nb - first < f->win ? f->nb - first : f->win;
	void *bufs[RESTORE_BATCH_BLOCKS];

	for (uint32_t i = 0; i < m; i++)
		bufs[i] = fetch_slot(f, k, i);
	f->rc[k % RESTORE_SLOTS] =
	    kvt_get_batch(kl->c, kl->lay, f->keys + first, bufs, kl->block_bytes, m,
			  f->status + (size_t)(k % RESTORE_SLOTS) * f->win);
}

static void *fetch_thread(void *arg)
{
	struct fetch *f = arg;

	for (uint32_t k = 0; k < f->nwin; k++) {
		pthread_mutex_lock(&f->mu);
		while (!f->stop && k >= f->consumed + RESTORE_SLOTS)
			pthread_cond_wait(&f->cv, &f->mu);
		bool stop = f->stop;
		pthread_mutex_unlock(&f->mu);
		if (stop)
			break;
		fetch_batch(f, k);
		pthread_mutex_lock(&f->mu);
		f->fetched = k + 1;
		pthread_cond_broadcast(&f->cv);
		pthread_mutex_unlock(&f->mu);
	}
	return NULL;
}

/* Restores up to nb leading blocks; returns how many it did (the sequence then holds that
 * many * 64 cells), 0 on any failure (the sequence is empty then), with kl->msg and *why set.
 * Each block is copied to its place in the state as its batch comes in, in order, up to the
 * first that failed: the state describes exactly the blocks read whole. */
uint32_t kvtl_restore(struct kvt_llama *kl, const struct kvt_key *keys, uint32_t nb, int *why)
{
	const uint32_t cells = nb * BT;
	const size_t max = kvtl_state_bytes(kl, llama_n_ctx(kl->ctx));
	struct fetch f = {.kl = kl, .keys = keys, .nb = nb};
	uint32_t got = 0;
	pthread_t th;
	bool threaded = false;
	size_t len;

	f.win = kl->restore_batch ? kl->restore_batch
				  : (uint32_t)(RESTORE_BATCH_BYTES / kl->block_bytes);
	if (f.win == 0)
		f.win = 1;
	if (f.win > RESTORE_BATCH_BLOCKS)
		f.win = RESTORE_BATCH_BLOCKS;
	if (f.win > nb)
		f.win = nb;
	f.nwin = (nb + f.win - 1) / f.win;
	const uint32_t slots = f.nwin < RESTORE_SLOTS ? f.nwin : RESTORE_SLOTS;
	f.status = calloc((size_t)RESTORE_SLOTS * f.win, sizeof(*f.status));
	if (!f.status || kvtl_kbuf_reserve(&kl->state, kvtl_state_bytes(kl, cells), max) < 0 ||
	    kvtl_kbuf_reserve(&kl->stage, (size_t)slots * f.win * kl->block_bytes,
			      (size_t)RESTORE_SLOTS * f.win * kl->block_bytes) < 0) {
		free(f.status);
		*why = -ENOMEM;
		return 0;
	}
	kvtl_state_headers(kl, kl->state.p, cells);
	pthread_mutex_init(&f.mu, NULL);
	pthread_cond_init(&f.cv, NULL);
	/* One batch: no thread.  Without a thread (it could not start) the batches take turns
	 * with the copies.  Several: the daemon reads the whole prefix ahead of the batches, so
	 * its disk goes on while this process waits for a core (fire and forget). */
	if (f.nwin > 1) {
		kvt_prefetch(kl->c, kl->lay, keys, nb, 3, 0);
		threaded = pthread_create(&th, NULL, fetch_thread, &f) == 0;
	}
	for (uint32_t k = 0; k < f.nwin; k++) {
		const uint32_t first = k * f.win, m = nb - first < f.win ? nb - first : f.win;
		const int *st = f.status + (size_t)(k % RESTORE_SLOTS) * f.win;
		uint32_t ok = 0;
		int rc;

		if (threaded) {
			pthread_mutex_lock(&f.mu);
			while (f.fetched <= k)
				pthread_cond_wait(&f.cv, &f.mu);
			pthread_mutex_unlock(&f.mu);
		} else {
			fetch_batch(&f, k);
		}
		rc = f.rc[k % RESTORE_SLOTS];
		if (rc < 0) {
			kvtl_fmt_err(kl->msg, sizeof(kl->msg), "blocks %u-%u of %u: %s", first,
				     first + m - 1, nb, kvt_strerror(rc));
			*why = rc;
			break;
		}
		for (; ok < m && st[ok] == (int)kl->block_bytes; ok++)
			kvtl_state_put_block(kl, kl->state.p, cells, first + ok,
					     fetch_slot(&f, k, ok));
		got += ok;
		if (ok < m) {
			if (st[ok] >= 0 || st[ok] == -ENOBUFS) {
				kvtl_fmt_err(
				    kl->msg, sizeof(kl->msg),
				    "block %u: %s%d bytes, the layout's blocks have %zu: not used",
				    got, st[ok] < 0 ? "more than " : "",
				    st[ok] < 0 ? (int)kl->block_bytes : st[ok], kl->block_bytes);
				*why = -EBADMSG;
			} else {
				kvtl_fmt_err(kl->msg, sizeof(kl->msg), "block %u of %u: %s", got,
					     nb, kvt_strerror(st[ok]));
				*why = st[ok];
			}
			break;
		}
		pthread_mutex_lock(&f.mu);
		f.consumed = k + 1;
		pthread_cond_broadcast(&f.cv);
		pthread_mutex_unlock(&f.mu);
	}
	if (threaded) {
		pthread_mutex_lock(&f.mu);
		f.stop = true;
		pthread_cond_broadcast(&f.cv);
		pthread_mutex_unlock(&f.mu);
		pthread_join(th, NULL);
	}
	pthread_cond_destroy(&f.cv);
	pthread_mutex_destroy(&f.mu);
	free(f.status);
	if (got == 0)
		return 0;
	if (got < nb)
		kvtl_state_shrink(kl, kl->state.p, cells, got * BT);
	len = kvtl_state_bytes(kl, got * BT);
	if (llama_state_seq_set_data(kl->ctx, kl->state.p, len, kl->seq) != len ||
	    llama_memory_seq_pos_max(llama_get_memory(kl->ctx), kl->seq) !=
		(llama_pos)(got * BT - 1)) {
		llama_memory_seq_rm(llama_get_memory(kl->ctx), kl->seq, -1, -1);
		kvtl_fmt_err(kl->msg, sizeof(kl->msg), "llama_state_seq_set_data refused %u blocks",
			     got);
		*why = -EIO;
		got = 0;
	}
	return got;
}
