/* SPDX-License-Identifier: MIT */
/*
 * nvme_verify.c - checking the records the NVMe tier reads.  A record is checked inline
 * (nv_read_verify: salt off, kvt_record_check) when it is small or there are no verifiers;
 * from NV_VERIFY_MIN up its payload is cut in pieces whose CRCs the verifier threads (a
 * kvt_pool) compute in parallel, merged by whichever finishes last (vjob_finish).  In io_uring
 * mode the loop hands a read over (nv_verify_async) and takes the verdict back through the
 * verifier pool; in pread mode the worker that read the record checks a piece itself and the
 * verdict goes back through the worker pool.
 */
#define _GNU_SOURCE
#include "nvme_internal.h"

#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

/* Removes the salt and checks the record just read (KVT_TIER_IO_NOVERIFY: the caller does):
 * io->len or -EBADMSG. */
int nv_read_verify(const struct kvt_tier *t, struct kvt_tier_io *io)
{
	struct kvt_record_hdr *h = io->buf;

	h->crc ^= t->files[io->loc.file].salt;
	if (io->flags & KVT_TIER_IO_NOVERIFY)
		return (int)io->len; /* the caller checks the CRC */
	if (kvt_record_check(h, (char *)io->buf + KVT_RECORD_HDR_SIZE,
			     io->len - KVT_RECORD_HDR_SIZE) < 0)
		return -EBADMSG;
	return (int)io->len;
}

static void vjob_finish(struct kvt_tier *t, struct nv_vjob *j)
{
	struct kvt_tier_io *io = j->io;
	const struct kvt_record_hdr *h = io->buf;
	uint32_t crc = kvt_record_hdr_crc(h);

	for (unsigned k = 0; k < j->npieces; k++)
		crc = kvt_crc32c_combine(crc, j->piece[k].crc, j->piece[k].len);
	io->res = crc == j->want ? (int)io->len : -EBADMSG;
	if (j->wjob) {
		struct kvt_pool_job *w = j->wjob;

		free(j);
		kvt_pool_finish(t->wpool, w);
		return;
	}
	kvt_pool_finish(t->vpool, &j->fin); /* the loop frees j (nv_verify_reap) */
}

void nv_verifiers_start(struct kvt_tier *t, unsigned want)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	if (!want)
		want = ncpu >= 8 ? (unsigned)(ncpu / 4) : 1;
	if (want > NV_MAX_VERIFY)
		want = NV_MAX_VERIFY;
	/* The verdicts wake the loop through the tier's eventfd.  No pool: checked inline. */
	if (kvt_pool_create(want, t->efd, &t->vpool) == 0)
		t->nvthreads = kvt_pool_threads(t->vpool);
}

void nv_verifiers_stop(struct kvt_tier *t)
{
	kvt_pool_destroy(t->vpool); /* every queued piece is checked first */
	t->vpool = NULL;
	t->nvthreads = 0;
}

/*
 * Cuts a read record into at most `hands` pieces (the threads that will check them), after
 * checking its header here (cheap, and the piece sizes depend on it).  Returns NULL when the
 * record is better checked inline: small, no verifiers, a bad header (inline checking
 * reports it), or no memory.  On success the salt is off the header's crc and RQ_VERIFIED
 * is set.
 */
struct nv_vjob *nv_vjob_make(struct kvt_tier *t, struct kvt_tier_io *io, unsigned hands)
{
	struct kvt_record_hdr *h = io->buf;
	struct nv_vjob *j;
	uint32_t plen, step, off = 0;
	unsigned n;

	if (!t->nvthreads || io->len < NV_VERIFY_MIN || (io->flags & KVT_TIER_IO_NOVERIFY))
		return NULL;
	h->crc ^= t->files[io->loc.file].salt;
	if (kvt_record_check_hdr(h, io->len - KVT_RECORD_HDR_SIZE) < 0 ||
	    !(j = calloc(1, sizeof(*j)))) {
		h->crc ^= t->files[io->loc.file].salt;
		return NULL;
	}
	io->tier_priv[0] |= RQ_VERIFIED;
	plen = h->payload_len;
	n = plen / NV_VPIECE;
	n = n < 1 ? 1 : (n > hands ? hands : n);
	step = (plen / n + 63) & ~63u;
	j->t = t;
	j->io = io;
	j->want = h->crc;
	for (unsigned k = 0; k < n && (off < plen || !k); k++) {
		struct nv_vpiece *pc = &j->piece[k];

		pc->job = j;
		pc->off = off;
		pc->len = plen - off < step || k == n - 1 ? plen - off : step;
		off += pc->len;
		j->npieces++;
	}
	j->left = j->npieces;
	return j;
}

/* A piece on a verifier: its verdict travels with the job's last piece (vjob_finish). */
static int vpiece_job(struct kvt_pool_job *pj)
{
	struct nv_vpiece *pc = (struct nv_vpiece *)pj;

	nv_vpiece_run(pc->job->t, pc);
	return KVT_POOL_LATER;
}

/* Queues pieces [from, npieces) of j for the verifiers. */
void nv_vjob_queue(struct kvt_tier *t, struct nv_vjob *j, unsigned from)
{
	if (from >= j->npieces)
		return;
	for (unsigned k = from; k < j->npieces; k++) {
		struct nv_vpiece *pc = &j->piece[k];

		pc->pj.run = vpiece_job;
		pc->pj.next = k + 1 < j->npieces ? &j->piece[k + 1].pj : NULL;
	}
	kvt_pool_submit_list(t->vpool, &j->piece[from].pj);
}

/* Checks one piece; the thread that finishes the last one delivers the verdict. */
void nv_vpiece_run(struct kvt_tier *t, struct nv_vpiece *pc)
{
	const char *payload = (const char *)pc->job->io->buf + KVT_RECORD_HDR_SIZE;

	pc->crc = kvt_crc32c(0, payload + pc->off, pc->len);
	/* acq_rel: the last one sees every other piece's crc. */
	if (__atomic_sub_fetch(&pc->job->left, 1, __ATOMIC_ACQ_REL) == 0)
		vjob_finish(t, pc->job);
}

/*
 * A read came back from the device (loop thread, io_uring).  A large record goes to the
 * verifiers and its device slot is given back at once, so that the queue refills while the
 * CRC runs; the event loop never touches the payload.  Returns true when the request was
 * handed over (its verdict arrives through the verifier pool).
 */
bool nv_verify_async(struct kvt_tier *t, struct kvt_tier_io *io)
{
	struct nv_vjob *j = nv_vjob_make(t, io, t->nvthreads);

	if (!j)
		return false;
	nv_unstart(t, io);
	t->verifying++;
	nv_vjob_queue(t, j, 0);
	return true;
}

/* io_uring mode: the verifiers' verdicts, on the loop thread. */
static void verdict_reaped(struct kvt_pool_job *pj, void *arg)
{
	struct nv_vjob *j = (struct nv_vjob *)((char *)pj - offsetof(struct nv_vjob, fin));
	struct kvt_tier *t = j->t;
	struct kvt_tier_io *io = j->io;

	free(j);
	t->verifying--;
	nv_finish(t, io, io->res);
	(*(int *)arg)++;
}

void nv_verify_reap(struct kvt_tier *t, int *n)
{
	if (t->vpool)
		kvt_pool_reap(t->vpool, verdict_reaped, n);
}
