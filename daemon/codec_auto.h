/* SPDX-License-Identifier: MIT */
/*
 * codec_auto.h - `codec = auto`: the codec chain of a tier chosen per model (issue 15 item 3).
 *
 * `kvtierctl calibrate` makes the daemon calibrate a model (a layout fingerprint) on raw
 * blocks it holds: a dictionary (codecs/dict.c) fitted on half of them, and every candidate
 * chain's ratio, err (codecs/kveval.h, on the other half) and encode/decode speed on the
 * daemon's cores, stored in daemon.state_dir as calib-<fingerprint>.kvcal (it survives a
 * restart).  A tier whose codec is `auto` then uses, for that model's blocks, the chain of
 * highest ratio whose err meets the tier's max_err and whose speed fits the tier: host and GPU
 * take chains a GPU encodes and decodes (raw, bq); NVMe takes chains the codec threads run
 * at the disk's bandwidth.  An uncalibrated model gets the tier's default: raw on the host,
 * KVTD_AUTO_NVME_DEFAULT (lossless) on NVMe.
 *
 * The calibration runs on a thread of its own (proto/kvt_pool); its completion comes back to
 * the loop through the codec workers' event (EV_CODEC, kvtd_cpool_event).
 */
#ifndef KVTD_CODEC_AUTO_H
#define KVTD_CODEC_AUTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "index.h"

struct kvtd;
struct client;
struct sbuf;
struct kvt_chain;
struct kvt_layout;

/* The NVMe chain of an uncalibrated model under nvme.codec = auto: lossless, KV-aware. */
#define KVTD_AUTO_NVME_DEFAULT "fpx"
#define KVTD_AUTO_HOST_DEFAULT "raw"

/* Flags of a row of the table. */
#define KVTD_AUTO_LOSSLESS 0x1u
#define KVTD_AUTO_GPU	   0x2u /* a GPU encodes and decodes it (gpu/kvt_gpu_bq.h), or raw */
#define KVTD_AUTO_DICT	   0x4u /* needs the model's dictionary */

/* One candidate chain measured on a model's blocks. */
struct kvtd_auto_row {
	char spec[200]; /* canonical chain name, without the dictionary */
	double ratio;	/* raw bytes / record bytes (headers counted) */
	double err;	/* codecs/kveval.h kvt_eval_block_err, mean over the held-out blocks */
	double enc_gbps, dec_gbps; /* raw bytes a second on one core (thread CPU time) */
	uint32_t flags;		   /* KVTD_AUTO_* */
};

/*
 * The choice rule, alone (unit-tested): the row of highest ratio (then lowest err) with err
 * <= max_err that fits tier: KVTD_TIER_HOST and KVTD_TIER_GPU: KVTD_AUTO_GPU and not
 * KVTD_AUTO_DICT (a client codes the host tier's blocks and has no dictionary); KVTD_TIER_NVME:
 * threads x min(encode, decode speed) >= bw x ratio, i.e. the codec threads keep up with the
 * disk reading (or writing) records at bw bytes a second (bw <= 0: no speed condition; raw,
 * a copy, always fits).
 * Returns the row's index, or -1 when none qualifies.
 */
int kvtd_auto_choose(const struct kvtd_auto_row *rows, unsigned n, enum kvtd_tier_id tier,
		     double max_err, double bw, unsigned threads);

/* Reads the calibrations of daemon.state_dir (a bad file is logged and skipped: its model is
 * uncalibrated).  0 or -ENOMEM. */
int kvtd_auto_init(struct kvtd *d);
/* Stops a running calibration (its result is dropped) and frees everything. */
void kvtd_auto_fini(struct kvtd *d);
/* EV_CODEC: a finished calibration (loop thread).  Returns how many jobs ended. */
int kvtd_auto_event(struct kvtd *d);

/* Is spec "auto"? */
bool kvtd_auto_is(const char *spec);

/*
 * `kvtierctl calibrate`: starts calibrating layout fp, or the layout of model (a layout's
 * model_id; "": any) with the most whole blocks on the host, for client c.  1: started, c gets the
 * table (JSON when json) when it ends (admin_reply); < 0: refused, the reason written to b.
 */
int kvtd_auto_calibrate(struct kvtd *d, struct client *c, uint64_t fp, const char *model, bool json,
			struct sbuf *b);

/*
 * The chain for a block of layout fp going to NVMe under nvme.codec = auto: the model's
 * calibrated choice (its dictionary attached), or NULL (use d->nvme_chain, the default).
 */
const struct kvt_chain *kvtd_auto_nvme_chain(struct kvtd *d, uint64_t fp);
/* The chain of an NVMe record's chain id among those of the calibrations (also ones replaced
 * by a newer calibration since the start), or NULL. */
const struct kvt_chain *kvtd_auto_chain_by_id(struct kvtd *d, uint32_t id);

/* The chain picked for tier (KVTD_TIER_HOST or _GPU) of the model of layout fingerprint fp,
 * its dictionary attached, or NULL (not calibrated, or the default: raw). */
const struct kvt_chain *kvtd_auto_chain_for(struct kvtd *d, enum kvtd_tier_id tier, uint64_t fp);

/*
 * The host chain for layout l under host.codec = auto (for kvtd_host_chain): writes the
 * chain's spec to spec (cap bytes) and its measured err to *err (0 for raw).  Returns 0 for
 * a calibrated model's choice, 1 for the default (raw: not calibrated, or no GPU-speed chain
 * meets host.max_err), -ENOSPC when spec is too small.  tier: KVTD_TIER_HOST or _GPU.
 */
int kvtd_codec_auto_pick(struct kvtd *d, enum kvtd_tier_id tier, const struct kvt_layout *l,
			 char *spec, size_t cap, double *err);

/* `kvtierctl tiers`: the per-model choices of tier (text lines, or JSON members starting
 * with ','), and under the host tier the calibration in progress. */
void kvtd_auto_render(struct kvtd *d, struct sbuf *b, bool json, enum kvtd_tier_id tier);

#endif
