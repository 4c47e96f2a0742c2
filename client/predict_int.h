/* SPDX-License-Identifier: MIT */
/*
 * predict_int.h - internals shared by the predictor's files (not installed, not API):
 *   predict.c        the handle, its options and storage, and the key digests
 *   predict_score.c  scoring of blocks against queries and the choice of a row's blocks
 *   predict_sched.c  decode steps: selection, next-step prediction, counters, and the
 *                    prefetch request with its budget against the host tier's room
 */
#ifndef KVT_PREDICT_INT_H
#define KVT_PREDICT_INT_H

#include "kvtier_predict.h"
#include "../proto/kvt_half.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define PRED_MAGIC 0x6b767470u /* "kvtp" */
#define PRED_DEAD  0xdeadbeefu

/* First version of the options ends with `flags`. */
#define OPTS_V1_SIZE (offsetof(struct kvt_pred_opts, flags) + sizeof(uint32_t))

#define BITWORDS(n) (((size_t)(n) + 63) / 64)

struct cand {
	float s;
	uint32_t b;
};

struct kvt_pred {
	uint32_t magic;
	uint32_t L, H, QH, D, T, G; /* G = query heads per kv head */
	uint32_t kind, flags, shortlist;
	uint32_t sink, recent; /* 0 when disabled by flags */
	uint32_t rows;
	size_t dbytes;	   /* digest bytes per (block, layer, kv head) */
	uint32_t n1, n2;   /* QKEYS: dims with 1 and 2 bits */
	uint32_t rowbytes; /* QKEYS: ceil(T/8) */
	float scale;	   /* 1/sqrt(D) */
	float *rope;	   /* [D/2][2]: cos, sin of one position step; NULL = no rotation */

	uint32_t cap;	     /* blocks with storage */
	size_t words;	     /* BITWORDS(cap) */
	uint8_t *dig;	     /* [cap][L][H][dbytes] */
	uint16_t *ntok;	     /* [cap][L]: tokens digested, 0 = none */
	uint64_t *res, *req; /* [words] bitsets: resident, requested */
	uint64_t *pred;	     /* [L][rows][words]: pending prediction */
	uint32_t *pred_ctx;  /* [L]: context the prediction is for, 0 = none */
	/* the pending predictions in rank order, for kvt_pred_prefetch_plan() */
	uint32_t **plist;     /* [L] -> [rows][plist_n[l]], UINT32_MAX = empty slot */
	uint32_t *plist_n;    /* [L]: blocks per row */
	size_t *plist_cap;    /* [L]: entries allocated */
	uint64_t *req_until;  /* [cap]: a planned request holds room up to this position */
	uint64_t now_pos;     /* position of the last select, 0 = none (see pos_of) */
	uint64_t room_blocks; /* planned requests outstanding at most, 0 = no limit */

	/* scratch */
	float *fkeys;	   /* [T+2][D] + [QH] */
	float *qf;	   /* [QH][D] */
	float *lm;	   /* [QH][cap] log-mass estimates */
	float *rscore;	   /* [rows][cap] row scores of the last scoring */
	uint8_t *state;	   /* [cap]: 0 not usable, 1 usable, 2 to be refined (scratch) */
	uint8_t *full;	   /* [rows][cap]: scored with the full digest (else first stage only) */
	float *acc;	   /* [G+1][rowbytes*8]: per head sums, expanded codes */
	float *base;	   /* [G]: constant term per head */
	struct cand *cand; /* [cap] */
	uint32_t last_layer, last_ctx; /* of rscore; last_ctx 0 = none */

	struct kvt_pred_counters cnt;
	char err[192];
};

/* ---- fp16 ---- */

static inline float h2f(uint16_t h)
{
	return kvt_half_to_float(h);
}

static inline uint16_t f2h(float f)
{
	return kvt_float_to_half(f);
}

static inline float rt16(float f) /* round through fp16, as stored */
{
	return h2f(f2h(f));
}

/* ---- errors ---- */

__attribute__((format(printf, 3, 4))) static inline int fail(struct kvt_pred *p, int err,
							     const char *fmt, ...)
{
	va_list ap;

	if (p) {
		va_start(ap, fmt);
		vsnprintf(p->err, sizeof(p->err), fmt, ap);
		va_end(ap);
	}
	return err;
}

#define CHECK_HANDLE(p)                                                                            \
	do {                                                                                       \
		if (!(p) || (p)->magic != PRED_MAGIC)                                              \
			return -EINVAL;                                                            \
	} while (0)

/* Forced blocks of a context of nb blocks: [0, s) and [r, nb). */
static inline void forced_range(const struct kvt_pred *p, uint32_t nb, uint32_t *s, uint32_t *r)
{
	*s = p->sink < nb ? p->sink : nb;
	*r = p->recent < nb ? nb - p->recent : 0;
	if (*r < *s)
		*r = *s;
}

static inline uint8_t *digest_at(const struct kvt_pred *p, uint32_t block, uint32_t layer,
				 uint32_t h)
{
	return p->dig + (((size_t)block * p->L + layer) * p->H + h) * p->dbytes;
}

static inline uint32_t dclass(const uint8_t *map, uint32_t d)
{
	return (map[d / 4] >> (2 * (d % 4))) & 3;
}

/* Position of (context, layer) in decode order: layer l of the step with context ctx comes
 * after every layer of the step before. */
static inline uint64_t pos_of(const struct kvt_pred *p, uint32_t ctx, uint32_t layer)
{
	return (uint64_t)ctx * p->L + layer;
}

/* predict.c */
int pred_grow(struct kvt_pred *p, uint32_t need);
/* predict_score.c */
void pred_score_layer(struct kvt_pred *p, uint32_t layer, const uint16_t *q, uint32_t ctx,
		      uint32_t kfree, bool next);
void pred_choose(struct kvt_pred *p, uint32_t nb, uint32_t n, uint32_t *out);

#endif
