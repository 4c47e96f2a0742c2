/* SPDX-License-Identifier: MIT */
/*
 * uq_internal.h - what the two files of the "uq" codec share (spec at the top of
 * codec_uq.c): the per-call work buffers, the escape symbol, the step levels of qw, the
 * table offsets, and the dependent quantizer's state machine.
 *   codec_uq.c      the codec: arguments, the RoPE and dictionary frames, prediction,
 *                   contexts, the encoder's and the decoder's passes over a block;
 *   codec_uq_fit.c  the encoder's choices: per-pair key steps (qw), each row's table and
 *                   the categories' offsets, the trellis search of dq.
 */
#ifndef KVT_UQ_INTERNAL_H
#define KVT_UQ_INTERNAL_H

#include <stdint.h>

#include "kvslab.h"
#include "rans.h"

#define ESC (RANS_PNSYM - 1)

struct uq_work {
	uint32_t T, D;
	float *x, *xh, *mu, *sc; /* sc: cos/sin table for RoPE */
	int32_t *q, *mq;
	float *stp; /* step of each channel */
	int8_t *qwi;
	uint16_t *sym, *ref, *hash;
	uint8_t *ti, *ra;
	uint32_t *rows;
	uint32_t *hist;
	uint8_t *esc;
	uint8_t *zs;	   /* fit_offsets(): symbols of the coded rows */
	uint8_t *cat;	   /* table category of each symbol of the coded rows: level + 16 x group */
	uint16_t *pairs;   /* fit_offsets(): counts of (category, symbol), then a list of them */
	uint8_t lvd[1024]; /* step level of each channel */
	int32_t *bpk;	   /* trellis back pointers: index and state, [channel][state] */
	uint8_t *bps;
	uint8_t *cx;   /* cx: category of each symbol of the slab (chan_ctx()) */
	uint32_t *acc; /* cx: each channel's sum of |index| over the rows so far */
	float *tr;     /* kb: four rows of scratch */
};

#define QW_MIN (-8) /* channel-pair step exponents, in half octaves: 2^(-4) .. 2^(3.5) */
#define QW_MAX 7

/* Row table a shifted by b scales within its family (the channel's step level's offset). */
static inline uint8_t cls_off(uint8_t a, int b)
{
	int fam = a / RANS_PSCALES, k = a % RANS_PSCALES + b;
	k = k < 0 ? 0 : k >= RANS_PSCALES ? RANS_PSCALES - 1 : k;
	return (uint8_t)(fam * RANS_PSCALES + k);
}

/*
 * dq: dependent quantization (trellis-coded, as VVC's).  Two scalar quantizers of step
 * 2 x dstep, Q0 on the even multiples of dstep, Q1 on the odd ones and zero; a four-state
 * machine driven by the parity of each index picks the quantizer of the next channel, so
 * the decoder needs no side information, and the encoder picks the whole row's indices with
 * a Viterbi search on distortion + lambda x rate.  The union of the two quantizers is twice as
 * dense as either, which buys about 1 dB of distortion at the same rate.  Rows start in state
 * 0.
 */
static const uint8_t dq_next[4][2] = {{0, 2}, {2, 0}, {1, 3}, {3, 1}};

static inline int32_t dq_level(int32_t k, unsigned s)
{
	return s >> 1 ? 2 * k - (k > 0) + (k < 0) : 2 * k;
}

/* codec_uq_fit.c */
void uq_key_weights(const float *x, uint32_t T0, uint32_t T, uint32_t D, double gamma, int8_t *idx);
void uq_dq_search(struct uq_work *w, const uint8_t *lv, const float *u, const uint16_t *const *p,
		  float lam, int32_t *k);
void uq_fit_tables(struct uq_work *w, uint32_t nr, int8_t *off, int qw, int cx, int dq);

#endif /* KVT_UQ_INTERNAL_H */
