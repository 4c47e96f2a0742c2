/* SPDX-License-Identifier: MIT */
/*
 * codec_auto.c - `codec = auto`: calibration of a model on the blocks the daemon holds, the
 * calibration files in daemon.state_dir, and each tier's choice per model (codec_auto.h).
 *
 * A calibration copies up to CAL_MAX_BYTES of the model's whole blocks out of the host arena
 * on the loop thread (a memcpy), then everything else runs on a thread of its own: the
 * dictionary is fitted on every other block, each candidate chain encodes and decodes the
 * other blocks (its ratio, its err through codecs/kveval.c, its speed on this core), the NVMe
 * read bandwidth is measured, and the file is written (a temporary renamed in place).  The
 * loop takes the result back (EV_CODEC) and applies it.
 *
 * Calibration file (little-endian): struct cal_hdr, nrows struct cal_row, the dictionary's
 * file (codecs/CODECS.md), then the XXH64 of all of it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "admin.h"
#include "codec_auto.h"
#include "codec_bq.h"
#include "daemon.h"
#include "kveval.h"
#include "kvt_record.h"
#include "place_int.h"
#include "render.h"

/* uq's depth profile of docs/CODECS.md: a shape over relative depth, for any layer count. */
#define UQ_PROF "kl=-.45:-.05:.4:-.3,vl=-.5:-1.1:.1:.35"

/*
 * The candidates, lossless first.  A new chain is one more line: whether a GPU runs it
 * (kvt_bq_chain_is), whether it needs the dictionary (kvt_chain_flags) and everything
 * measured come from the chain itself.
 */
static const char *const candidates[] = {
    "raw",
    "fpx",
    "shuffle+zstd:1",
    "bq:k=0.02,v=0.01",
    "bq:k=0.04,v=0.02",
    "bq:k=0.05,v=0.03",
    "bq",
    "bq:k=0.15,v=0.08",
    /* keys coded before RoPE (half-split pairs, base 10000: Llama 2 and the like; another
     * model's base only costs ratio, which calibration measures) */
    "bq:k=0.035,v=0.018,dup=4,rope=10000",
    "bq:k=0.1,v=0.038,dup=4,rope=10000",
    "fp8",
    "kivi:k=8,v=8,g=32+rans",
    "kivi+rans",
    "uq",
    "uq:k=.1,v=.042,dq=.4,cx=1,kb=1," UQ_PROF,
    "uq:k=.17,v=.072,dq=.4,cx=1,kb=1," UQ_PROF,
    "uq:k=.3,v=.127,dq=.4,cx=1,kb=1," UQ_PROF,
    "uq:k=.43,v=.18,dq=.4,cx=1,kb=1," UQ_PROF,
    "uq:k=.6,v=.25,dq=.4,cx=1,kb=1," UQ_PROF,
};
#define NCAND (sizeof(candidates) / sizeof(candidates[0]))

/* Fewest whole blocks a calibration takes (half fit the dictionary, half measure). */
#define CAL_MIN_BLOCKS 8u
/* Bytes of blocks copied out for one calibration, at most (fewer blocks, not smaller). */
#define CAL_MAX_BYTES (32u << 20)
/* The NVMe read-bandwidth measurement: at most this much, for at most this long. */
#define BW_MAX_BYTES (256ull << 20)
#define BW_MAX_NS    250000000ull
#define BW_CHUNK     (1u << 20)

#define CAL_MAGIC   "KVTCAL01"
#define CAL_VERSION 1u

struct cal_hdr {
	char magic[8];
	uint32_t version, hdr_size;
	uint64_t fp;
	char model[64];
	uint32_t n_layers, n_kv_heads, head_dim, block_tokens, dtype;
	uint32_t ntrain, neval;
	uint32_t nrows;
	uint64_t dict_len;
	uint64_t when; /* unix seconds */
	double bw;     /* measured NVMe read bandwidth, bytes/s (0: none) */
};

struct cal_row {
	char spec[200];
	double ratio, err, enc_gbps, dec_gbps;
	uint32_t flags, pad;
};

struct auto_model {
	uint64_t fp;
	char model[64];
	struct kvt_codec_geom g;
	uint32_t ntrain, neval;
	uint64_t when;
	double bw;
	struct kvtd_auto_row *rows;
	unsigned nrows;
	struct kvt_dict *dict;
	int pick[KVTD_NTIERS];	  /* row per tier, -1: the default */
	struct kvt_chain **chain; /* each row's chain, dictionary attached (NULL: unusable) */
	struct kvt_chain *nvme;	  /* chain[the NVMe pick] (NULL: the default) */
	uint32_t dict_id_lo;	  /* for display */
	size_t dict_len;
};

/* A block of the sample that only NVMe holds: its record, read and decoded on the thread. */
struct cal_rec {
	uint64_t key_lo, key_hi, off;
	uint32_t len, idx; /* the record's slot bytes; its place in the sample */
	uint16_t file;
};

#define CAL_MAX_CHAINS 64

struct cal_job {
	struct kvt_pool_job pj;
	uint32_t client_id;
	bool json;
	/* in */
	uint64_t fp;
	char model[64];
	struct kvt_codec_geom g;
	size_t raw;
	uint8_t *blocks; /* ntrain + neval blocks, train and eval alternating */
	uint32_t *first; /* their first_token */
	uint32_t ntrain, neval;
	char bw_path[1024]; /* first NVMe file ("" none) */
	/* blocks read from NVMe: the files (nvme.paths, in order), the records, and the
	 * chains that may have written them (alive until the daemon stops) */
	char nv_paths[KVTD_MAX_NVME_PATHS][256];
	struct cal_rec *recs;
	uint32_t nrecs;
	const struct kvt_chain *chains[CAL_MAX_CHAINS];
	unsigned nchains;
	bool bw_direct;
	char file[512];
	/* progress, read by the loop */
	atomic_uint step, steps;
	atomic_bool cancel;
	/* out */
	int err;
	char msg[600];
	struct kvtd_auto_row rows[NCAND];
	unsigned nrows;
	void *dict_buf;
	size_t dict_len;
	double bw;
	uint64_t when;
};

struct kvtd_auto {
	struct auto_model *m;
	unsigned n;
	/* calibrations replaced since the start: their records on NVMe stay readable until
	 * the daemon stops */
	struct auto_model *old;
	unsigned nold;
	struct kvt_pool *pool;
	struct ev ev;
	struct cal_job *job;
	char bad[2048]; /* the calibration files refused at start ("" none) */
};

bool kvtd_auto_is(const char *spec)
{
	return spec && !strcmp(spec, "auto");
}

/* A model name as shown (text and JSON): a client chose it, so only printable ASCII other
 * than '"' and '\\' is kept as it is; anything else becomes '?'. */
static void model_clean(char *s)
{
	for (; *s; s++) {
		if (*s < 0x20 || *s > 0x7e || *s == '"' || *s == '\\')
			*s = '?';
	}
}

/* ---------------------------------------------------------------------------------------
 * The choice
 */
int kvtd_auto_choose(const struct kvtd_auto_row *rows, unsigned n, enum kvtd_tier_id tier,
		     double max_err, double bw, unsigned threads)
{
	int best = -1;

	if (!threads)
		threads = 1;
	for (unsigned i = 0; i < n; i++) {
		const struct kvtd_auto_row *r = &rows[i];
		double speed = r->enc_gbps < r->dec_gbps ? r->enc_gbps : r->dec_gbps;

		if (!(r->err <= max_err) || !(r->ratio > 0))
			continue;
		if (tier != KVTD_TIER_NVME &&
		    (!(r->flags & KVTD_AUTO_GPU) || (r->flags & KVTD_AUTO_DICT)))
			continue;
		/* raw is a copy, not a codec job: it keeps up with any disk */
		if (tier == KVTD_TIER_NVME && bw > 0 && strcmp(r->spec, "raw") &&
		    speed * 1e9 * threads < bw * r->ratio)
			continue;
		if (best < 0 || r->ratio > rows[best].ratio ||
		    (r->ratio == rows[best].ratio && r->err < rows[best].err))
			best = (int)i;
	}
	return best;
}

static double tier_max_err(const struct kvtd *d, enum kvtd_tier_id tier)
{
	return tier == KVTD_TIER_NVME ? d->cfg.nvme_max_err : d->cfg.host_max_err;
}

static double nvme_bw(const struct kvtd *d, const struct auto_model *m)
{
	return d->cfg.nvme_bandwidth ? (double)d->cfg.nvme_bandwidth : m->bw;
}

/*
 * Parses every row's chain with m's dictionary (any of them may have written records: the
 * choice moves with max_err), then makes m's choices.  0 or -ENOMEM.
 */
static int model_pick(struct kvtd *d, struct auto_model *m)
{
	unsigned thr = d->cfg.nvme_codec_threads;

	if (!m->chain) {
		m->chain = calloc(m->nrows ? m->nrows : 1, sizeof(*m->chain));
		if (!m->chain)
			return -ENOMEM;
		for (unsigned i = 0; i < m->nrows; i++) {
			struct kvt_chain *c;

			if (kvt_chain_parse(m->rows[i].spec, &c) < 0)
				continue;
			if ((kvt_chain_flags(c) & KVT_CODEC_DICT) &&
			    (!m->dict || kvt_chain_set_dict(c, m->dict) < 0 ||
			     kvt_chain_usable(c, &m->g) < 0)) {
				kvt_chain_free(c);
				continue;
			}
			m->chain[i] = c;
		}
	}

	m->pick[KVTD_TIER_HOST] = kvtd_auto_choose(m->rows, m->nrows, KVTD_TIER_HOST,
						   tier_max_err(d, KVTD_TIER_HOST), 0, 1);
	m->pick[KVTD_TIER_GPU] = kvtd_auto_choose(m->rows, m->nrows, KVTD_TIER_GPU,
						  tier_max_err(d, KVTD_TIER_GPU), 0, 1);
	m->pick[KVTD_TIER_NVME] = kvtd_auto_choose(
	    m->rows, m->nrows, KVTD_TIER_NVME, tier_max_err(d, KVTD_TIER_NVME), nvme_bw(d, m), thr);
	m->nvme = m->pick[KVTD_TIER_NVME] >= 0 ? m->chain[m->pick[KVTD_TIER_NVME]] : NULL;
	if (!m->nvme)
		m->pick[KVTD_TIER_NVME] = -1;
	return 0;
}

static struct auto_model *model_find(struct kvtd *d, uint64_t fp)
{
	struct kvtd_auto *a = d->autoc;

	for (unsigned i = 0; a && i < a->n; i++) {
		if (a->m[i].fp == fp)
			return &a->m[i];
	}
	return NULL;
}

static void model_free(struct auto_model *m)
{
	for (unsigned i = 0; m->chain && i < m->nrows; i++)
		kvt_chain_free(m->chain[i]);
	free(m->chain);
	kvt_dict_free(m->dict);
	free(m->rows);
	memset(m, 0, sizeof(*m));
}

/* Puts m (taken whole) in the table, replacing the model of the same fingerprint: its chain
 * and dictionary are kept so that its NVMe records stay readable.  0 or -ENOMEM. */
static int model_install(struct kvtd *d, struct auto_model *m)
{
	struct kvtd_auto *a = d->autoc;
	struct auto_model *old = model_find(d, m->fp);

	if (old) {
		struct auto_model *o = realloc(a->old, (a->nold + 1) * sizeof(*o));

		if (!o)
			return -ENOMEM;
		a->old = o;
		a->old[a->nold++] = *old;
		*old = *m;
		return 0;
	}
	struct auto_model *n = realloc(a->m, (a->n + 1) * sizeof(*n));

	if (!n)
		return -ENOMEM;
	a->m = n;
	a->m[a->n++] = *m;
	return 0;
}

const struct kvt_chain *kvtd_auto_nvme_chain(struct kvtd *d, uint64_t fp)
{
	struct auto_model *m;

	if (!kvtd_auto_is(d->cfg.nvme_codec))
		return NULL;
	m = model_find(d, fp);
	return m ? m->nvme : NULL;
}

static const struct kvt_chain *model_chain_by_id(const struct auto_model *m, uint32_t id)
{
	for (unsigned r = 0; m->chain && r < m->nrows; r++) {
		if (m->chain[r] && kvt_chain_id(m->chain[r]) == id)
			return m->chain[r];
	}
	return NULL;
}

const struct kvt_chain *kvtd_auto_chain_by_id(struct kvtd *d, uint32_t id)
{
	struct kvtd_auto *a = d->autoc;
	const struct kvt_chain *c = NULL;

	for (unsigned i = 0; a && !c && i < a->n; i++)
		c = model_chain_by_id(&a->m[i], id);
	for (unsigned i = 0; a && !c && i < a->nold; i++)
		c = model_chain_by_id(&a->old[i], id);
	return c;
}

const struct kvt_chain *kvtd_auto_chain_for(struct kvtd *d, enum kvtd_tier_id tier, uint64_t fp)
{
	struct auto_model *m = model_find(d, fp);

	if (!m || !m->chain || m->pick[tier] < 0)
		return NULL;
	return m->chain[m->pick[tier]];
}

int kvtd_codec_auto_pick(struct kvtd *d, enum kvtd_tier_id tier, const struct kvt_layout *l,
			 char *spec, size_t cap, double *err)
{
	struct auto_model *m = model_find(d, kvt_layout_fingerprint(l));
	const char *s = KVTD_AUTO_HOST_DEFAULT;
	int ret = 1;

	*err = 0;
	if (m && m->pick[tier] >= 0) {
		s = m->rows[m->pick[tier]].spec;
		*err = m->rows[m->pick[tier]].err;
		ret = 0;
	}
	if (strlen(s) >= cap)
		return -ENOSPC;
	memcpy(spec, s, strlen(s) + 1);
	return ret;
}

/* ---------------------------------------------------------------------------------------
 * Calibration files
 */
static void cal_path(const struct kvtd *d, uint64_t fp, char *buf, size_t n)
{
	snprintf(buf, n, "%s/calib-%016" PRIx64 ".kvcal", d->cfg.state_dir, fp);
}

/* Writes the file of job j whole or not at all.  0, or -errno with j->msg set. */
static int cal_write(struct cal_job *j)
{
	struct cal_hdr h;
	char tmp[600];
	XXH64_state_t *x = XXH64_createState();
	uint64_t sum;
	int fd = -1, ret = -ENOMEM;
	FILE *f = NULL;

	if (!x)
		goto fail;
	memset(&h, 0, sizeof(h));
	memcpy(h.magic, CAL_MAGIC, 8);
	h.version = CAL_VERSION;
	h.hdr_size = sizeof(h);
	h.fp = j->fp;
	memcpy(h.model, j->model, sizeof(h.model));
	h.n_layers = j->g.n_layers;
	h.n_kv_heads = j->g.n_kv_heads;
	h.head_dim = j->g.head_dim;
	h.block_tokens = j->g.block_tokens;
	h.dtype = j->g.dtype;
	h.ntrain = j->ntrain;
	h.neval = j->neval;
	h.nrows = j->nrows;
	h.dict_len = j->dict_len;
	h.when = j->when;
	h.bw = j->bw;
	snprintf(tmp, sizeof(tmp), "%s.tmp", j->file);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0 || !(f = fdopen(fd, "w"))) {
		ret = -errno;
		if (fd >= 0)
			close(fd);
		goto fail;
	}
	XXH64_reset(x, 0);
	XXH64_update(x, &h, sizeof(h));
	fwrite(&h, sizeof(h), 1, f);
	for (unsigned i = 0; i < j->nrows; i++) {
		struct cal_row r;

		memset(&r, 0, sizeof(r));
		snprintf(r.spec, sizeof(r.spec), "%s", j->rows[i].spec);
		r.ratio = j->rows[i].ratio;
		r.err = j->rows[i].err;
		r.enc_gbps = j->rows[i].enc_gbps;
		r.dec_gbps = j->rows[i].dec_gbps;
		r.flags = j->rows[i].flags;
		XXH64_update(x, &r, sizeof(r));
		fwrite(&r, sizeof(r), 1, f);
	}
	XXH64_update(x, j->dict_buf, j->dict_len);
	fwrite(j->dict_buf, 1, j->dict_len, f);
	sum = XXH64_digest(x);
	fwrite(&sum, sizeof(sum), 1, f);
	ret = fflush(f) || fsync(fileno(f)) ? -errno : 0;
	if (fclose(f) && !ret)
		ret = -errno;
	if (!ret && rename(tmp, j->file) < 0)
		ret = -errno;
	if (ret)
		unlink(tmp);
fail:
	XXH64_freeState(x);
	if (ret)
		snprintf(j->msg, sizeof(j->msg), "cannot write %s: %s (daemon.state_dir)", j->file,
			 strerror(-ret));
	return ret;
}

/* Reads calibration file path into m.  0, or -EBADMSG / -errno with why set. */
static int cal_read(const char *path, uint64_t fp, struct auto_model *m, char *why, size_t wn)
{
	struct cal_hdr h;
	uint8_t *buf = NULL;
	struct stat st;
	size_t n, rows_len;
	uint64_t sum;
	int fd, ret;

	memset(m, 0, sizeof(*m));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		ret = -errno;
		snprintf(why, wn, "%s", strerror(-ret));
		goto out;
	}
	ret = -EBADMSG;
	n = (size_t)st.st_size;
	if (st.st_size < (off_t)(sizeof(h) + 8) || st.st_size > (64 << 20)) {
		snprintf(why, wn, "not a calibration file (size %lld)", (long long)st.st_size);
		goto out;
	}
	buf = malloc(n);
	if (!buf || read(fd, buf, n) != (ssize_t)n) {
		ret = buf ? -EIO : -ENOMEM;
		snprintf(why, wn, "cannot read it");
		goto out;
	}
	memcpy(&h, buf, sizeof(h));
	memcpy(&sum, buf + n - 8, 8);
	if (memcmp(h.magic, CAL_MAGIC, 8) || h.hdr_size != sizeof(h)) {
		snprintf(why, wn, "not a calibration file (bad magic)");
		goto out;
	}
	if (h.version != CAL_VERSION) {
		snprintf(why, wn, "calibration format version %u, this kvtierd reads %u", h.version,
			 CAL_VERSION);
		goto out;
	}
	rows_len = (size_t)h.nrows * sizeof(struct cal_row);
	if (h.nrows > 1024 || h.dict_len > n || sizeof(h) + rows_len + h.dict_len + 8 != n) {
		snprintf(why, wn, "truncated or damaged (sizes do not add up)");
		goto out;
	}
	if (XXH64(buf, n - 8, 0) != sum) {
		snprintf(why, wn, "damaged (checksum mismatch)");
		goto out;
	}
	if (h.fp != fp) {
		snprintf(why, wn, "holds layout %016" PRIx64 ", not the one of its name", h.fp);
		goto out;
	}
	m->fp = h.fp;
	memcpy(m->model, h.model, sizeof(m->model));
	m->model[sizeof(m->model) - 1] = 0;
	model_clean(m->model);
	m->g = (struct kvt_codec_geom){h.n_layers,     h.n_kv_heads, h.head_dim,
				       h.block_tokens, h.dtype,	     0};
	m->ntrain = h.ntrain;
	m->neval = h.neval;
	m->when = h.when;
	m->bw = h.bw;
	if (kvt_geom_check(&m->g) < 0) {
		snprintf(why, wn, "damaged (bad geometry)");
		goto out;
	}
	if (h.dict_len) {
		struct kvt_codec_geom dg;
		double theta;

		ret = kvt_dict_parse(buf + sizeof(h) + rows_len, h.dict_len, &m->dict);
		if (ret < 0) {
			snprintf(why, wn, "its dictionary is damaged");
			goto out;
		}
		kvt_dict_geom(m->dict, &dg, &theta);
		ret = -EBADMSG;
		if (dg.n_layers != m->g.n_layers || dg.n_kv_heads != m->g.n_kv_heads ||
		    dg.head_dim != m->g.head_dim) {
			snprintf(why, wn, "its dictionary is of another geometry");
			goto out;
		}
		m->dict_len = h.dict_len;
		m->dict_id_lo = (uint32_t)kvt_dict_id(m->dict);
	}
	ret = -ENOMEM;
	m->rows = calloc(h.nrows ? h.nrows : 1, sizeof(*m->rows));
	if (!m->rows)
		goto out;
	for (uint32_t i = 0; i < h.nrows; i++) {
		struct cal_row r;
		struct kvt_chain *c;

		memcpy(&r, buf + sizeof(h) + i * sizeof(r), sizeof(r));
		r.spec[sizeof(r.spec) - 1] = 0;
		/* a chain this build does not know (a newer kvtierd wrote it) is left out */
		if (kvt_chain_parse(r.spec, &c) < 0)
			continue;
		kvt_chain_free(c);
		struct kvtd_auto_row *o = &m->rows[m->nrows++];
		snprintf(o->spec, sizeof(o->spec), "%s", r.spec);
		o->ratio = r.ratio;
		o->err = r.err;
		o->enc_gbps = r.enc_gbps;
		o->dec_gbps = r.dec_gbps;
		o->flags = r.flags;
	}
	ret = 0;
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	if (ret)
		model_free(m);
	return ret;
}

int kvtd_auto_init(struct kvtd *d)
{
	struct kvtd_auto *a = calloc(1, sizeof(*a));
	struct dirent *e;
	DIR *dir;

	if (!a)
		return -ENOMEM;
	d->autoc = a;
	dir = opendir(d->cfg.state_dir);
	if (!dir) {
		if (kvtd_auto_is(d->cfg.nvme_codec) || kvtd_auto_is(d->cfg.host_codec))
			kvtd_log(KVTD_LOG_WARN,
				 "daemon.state_dir = %s: %s; no model is calibrated (codec = auto "
				 "uses the defaults until kvtierctl calibrate)",
				 d->cfg.state_dir, strerror(errno));
		return 0;
	}
	while ((e = readdir(dir))) {
		char path[600], why[200] = "";
		struct auto_model m;
		uint64_t fp;
		int len = 0, ret;

		if (sscanf(e->d_name, "calib-%16" SCNx64 ".kvcal%n", &fp, &len) != 1 ||
		    e->d_name[len] || strlen(e->d_name) != 28)
			continue;
		cal_path(d, fp, path, sizeof(path));
		ret = cal_read(path, fp, &m, why, sizeof(why));
		if (ret == 0)
			ret = model_pick(d, &m);
		if (ret == 0)
			ret = model_install(d, &m);
		if (ret < 0) {
			if (!why[0])
				snprintf(why, sizeof(why), "%s", strerror(-ret));
			model_free(&m);
			/* The file stays as it is: an operator may look at it; calibrate
			 * replaces it. */
			kvtd_log(KVTD_LOG_ERR,
				 "%s: %s; ignored: layout %016" PRIx64
				 " is uncalibrated (run kvtierctl calibrate again)",
				 path, why, fp);
			{
				size_t l = strlen(a->bad);

				/* every refused file, as long as the line holds them */
				snprintf(a->bad + l, sizeof(a->bad) - l, "%s%s: %s", l ? "; " : "",
					 path, why);
			}
			continue;
		}
		kvtd_log(KVTD_LOG_INFO, "calibration of %s (layout %016" PRIx64 ") loaded from %s",
			 m.model[0] ? m.model : "?", fp, path);
	}
	closedir(dir);
	return 0;
}

/* ---------------------------------------------------------------------------------------
 * The calibration job (its own thread)
 */
static uint64_t mono_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * Read bandwidth of an NVMe slot file: sequential 1 MiB reads (O_DIRECT when nvme.direct)
 * from its start, at most BW_MAX_BYTES or BW_MAX_NS.  Bytes a second, 0 when it cannot read.
 */
static double measure_bw(const char *path, bool direct)
{
	void *buf = NULL;
	uint64_t t0, t, got = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));

	if (fd < 0 || posix_memalign(&buf, 4096, BW_CHUNK)) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	t0 = mono_ns(CLOCK_MONOTONIC);
	do {
		ssize_t n = pread(fd, buf, BW_CHUNK, (off_t)got);

		if (n <= 0)
			break;
		got += (uint64_t)n;
		t = mono_ns(CLOCK_MONOTONIC);
	} while (got < BW_MAX_BYTES && t - t0 < BW_MAX_NS);
	t = mono_ns(CLOCK_MONOTONIC);
	close(fd);
	free(buf);
	return got && t > t0 ? (double)got * 1e9 / (double)(t - t0) : 0;
}

static uint8_t *blk_at(struct cal_job *j, unsigned i)
{
	return j->blocks + (size_t)i * j->raw;
}

/* Block i of the training half, or of the evaluation half. */
static unsigned train_i(unsigned i)
{
	return 2 * i;
}

static unsigned eval_i(unsigned i)
{
	return 2 * i + 1;
}

/* One candidate on the evaluation blocks: fills r.  0, 1 (not usable here), or -errno. */
static int cal_chain(struct cal_job *j, const char *spec, const struct kvt_dict *dict,
		     struct kvtd_auto_row *r)
{
	struct kvt_chain *c;
	struct kvt_codec_geom g = j->g;
	size_t cap;
	uint8_t *enc = NULL, *dec = NULL;
	uint64_t tenc = 0, tdec = 0, tot = 0, t0;
	double sum = 0;
	size_t nq = 0;
	int ret = kvt_chain_parse(spec, &c);

	if (ret < 0)
		return 1;
	memset(r, 0, sizeof(*r));
	snprintf(r->spec, sizeof(r->spec), "%s", kvt_chain_name(c));
	if (kvt_chain_flags(c) & KVT_CODEC_DICT) {
		r->flags |= KVTD_AUTO_DICT;
		if (!dict || kvt_chain_set_dict(c, dict) < 0) {
			ret = 1;
			goto out;
		}
	}
	if (kvt_chain_usable(c, &g) < 0) {
		ret = 1;
		goto out;
	}
	if (kvt_chain_flags(c) & KVT_CODEC_LOSSLESS)
		r->flags |= KVTD_AUTO_LOSSLESS;
	if (kvt_bq_chain_is(c) || !kvt_chain_id(c))
		r->flags |= KVTD_AUTO_GPU;
	cap = kvt_chain_max_encoded_size(c, &g);
	enc = malloc(cap);
	dec = malloc(j->raw);
	ret = -ENOMEM;
	if (!enc || !dec || !cap)
		goto out;
	for (unsigned i = 0; i < j->neval; i++) {
		const uint8_t *src = blk_at(j, eval_i(i));
		ssize_t n, m;

		if (atomic_load(&j->cancel)) {
			ret = -ECANCELED;
			goto out;
		}
		g.first_token = j->first[eval_i(i)];
		t0 = mono_ns(CLOCK_THREAD_CPUTIME_ID);
		n = kvt_chain_encode(c, &g, src, j->raw, enc, cap);
		tenc += mono_ns(CLOCK_THREAD_CPUTIME_ID) - t0;
		if (n < 0) {
			ret = 1; /* refuses these blocks: not a candidate for this model */
			goto out;
		}
		t0 = mono_ns(CLOCK_THREAD_CPUTIME_ID);
		m = kvt_chain_decode(c, enc, (size_t)n, dec, j->raw, NULL);
		tdec += mono_ns(CLOCK_THREAD_CPUTIME_ID) - t0;
		if (m != (ssize_t)j->raw) {
			ret = -EBADMSG;
			snprintf(j->msg, sizeof(j->msg), "%s does not decode its own record",
				 r->spec);
			goto out;
		}
		tot += (uint64_t)n;
		if (r->flags & KVTD_AUTO_LOSSLESS) {
			if (memcmp(src, dec, j->raw)) {
				ret = -EBADMSG;
				snprintf(j->msg, sizeof(j->msg), "%s is not lossless", r->spec);
				goto out;
			}
		} else {
			ret = kvt_eval_block_err(&g, src, dec, &sum, &nq);
			if (ret < 0)
				goto out;
		}
	}
	r->ratio = (double)j->raw * j->neval / (double)tot;
	r->err = nq ? sum / (double)nq : 0;
	/* at least 1 ns a block: a clock too coarse must not give infinite speed */
	r->enc_gbps = (double)j->raw * j->neval / (double)(tenc ? tenc : 1);
	r->dec_gbps = (double)j->raw * j->neval / (double)(tdec ? tdec : 1);
	ret = 0;
out:
	free(enc);
	free(dec);
	kvt_chain_free(c);
	return ret;
}

/* Reads and decodes record r into its sample slot.  0, or -errno (the block is left out). */
static int cal_read_rec(struct cal_job *j, const struct cal_rec *r)
{
	struct kvt_record_hdr h;
	const struct kvt_chain *c = NULL;
	uint8_t *buf = malloc(r->len);
	int fd = -1, ret = -ENOMEM;

	if (!buf)
		goto out;
	ret = -EIO;
	if (r->file >= KVTD_MAX_NVME_PATHS || !j->nv_paths[r->file][0])
		goto out;
	fd = open(j->nv_paths[r->file], O_RDONLY | O_CLOEXEC);
	if (fd < 0 || pread(fd, buf, r->len, (off_t)r->off) != (ssize_t)r->len)
		goto out;
	/*
	 * The slot may have been freed and written again since: the record must be this
	 * block's and decode.  Its CRC is salted per file by the tier (tiers/nvme_super.c), so
	 * only the header is checked here: a torn record that still decoded would skew the
	 * sample a little, and nothing read here is ever served.
	 */
	ret = -EBADMSG;
	memcpy(&h, buf, sizeof(h));
	if (r->len < sizeof(h) || kvt_record_check_hdr(&h, r->len - sizeof(h)) < 0 ||
	    h.key_lo != r->key_lo || h.key_hi != r->key_hi || h.fingerprint != j->fp ||
	    h.raw_len != j->raw)
		goto out;
	for (unsigned i = 0; i < j->nchains && !c; i++) {
		if (kvt_chain_id(j->chains[i]) == h.chain_id)
			c = j->chains[i];
	}
	struct kvt_codec_geom rg;

	if (!c || kvt_chain_decode(c, buf + sizeof(h), h.payload_len, blk_at(j, r->idx), j->raw,
				   &rg) != (ssize_t)j->raw)
		goto out;
	/* after a restart the daemon no longer knows where the block stood; its record does */
	j->first[r->idx] = rg.first_token;
	ret = 0;
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	return ret;
}

/* Reads the sample's NVMe blocks; those that cannot be read are left out (the sample is
 * compacted).  0, or -ENODATA when fewer than CAL_MIN_BLOCKS remain. */
static int cal_read_nvme(struct cal_job *j)
{
	uint32_t n = j->ntrain + j->neval, keep = 0;
	uint8_t *bad = calloc(n ? n : 1, 1);

	if (!bad)
		return -ENOMEM;
	for (uint32_t i = 0; i < j->nrecs && !atomic_load(&j->cancel); i++)
		bad[j->recs[i].idx] = cal_read_rec(j, &j->recs[i]) < 0;
	for (uint32_t i = 0; i < n; i++) {
		if (bad[i])
			continue;
		if (keep != i) {
			memcpy(blk_at(j, keep), blk_at(j, i), j->raw);
			j->first[keep] = j->first[i];
		}
		keep++;
	}
	free(bad);
	j->ntrain = j->neval = keep / 2;
	if (keep < CAL_MIN_BLOCKS) {
		snprintf(j->msg, sizeof(j->msg),
			 "too few blocks: %u of the records read from NVMe could not be used, %u "
			 "blocks remain, at least %u are needed",
			 n - keep, keep, CAL_MIN_BLOCKS);
		return -ENODATA;
	}
	return 0;
}

static int cal_run(struct kvt_pool_job *pj)
{
	struct cal_job *j = (struct cal_job *)pj;
	struct kvt_dict_trainer *t = NULL;
	struct kvt_dict *dict = NULL;
	struct kvt_codec_geom g = j->g;
	int ret;

	atomic_store(&j->steps, (unsigned)NCAND + 2);
	/* Test hook: KVTIER_TEST_CALIBRATE_GATE=FILE holds the calibration here until FILE
	 * exists, so that a test sees the daemon serve while one runs (an event, no timing). */
	const char *gate = getenv("KVTIER_TEST_CALIBRATE_GATE");

	while (gate && *gate && access(gate, F_OK) != 0 && !atomic_load(&j->cancel))
		usleep(1000);
	ret = j->nrecs ? cal_read_nvme(j) : 0;
	if (ret)
		goto out;
	ret = kvt_dict_trainer_new(&g, 10000, &t);
	for (unsigned i = 0; !ret && i < j->ntrain; i++) {
		g.first_token = j->first[train_i(i)];
		ret = kvt_dict_trainer_add(t, &g, blk_at(j, train_i(i)), j->raw);
	}
	if (!ret)
		ret = kvt_dict_trainer_finish(t, &j->dict_buf, &j->dict_len);
	kvt_dict_trainer_free(t);
	if (!ret)
		ret = kvt_dict_parse(j->dict_buf, j->dict_len, &dict);
	if (ret) {
		snprintf(j->msg, sizeof(j->msg), "the dictionary cannot be fitted: %s",
			 strerror(-ret));
		goto out;
	}
	atomic_store(&j->step, 1);
	for (unsigned i = 0; i < NCAND; i++) {
		ret = cal_chain(j, candidates[i], dict, &j->rows[j->nrows]);
		if (ret < 0) {
			if (!j->msg[0])
				snprintf(j->msg, sizeof(j->msg), "%s: %s", candidates[i],
					 strerror(-ret));
			goto out;
		}
		if (ret == 0)
			j->nrows++;
		atomic_store(&j->step, i + 2);
	}
	if (j->bw_path[0])
		j->bw = measure_bw(j->bw_path, j->bw_direct);
	j->when = (uint64_t)time(NULL);
	ret = cal_write(j);
out:
	kvt_dict_free(dict);
	j->err = ret;
	atomic_store(&j->step, (unsigned)NCAND + 2);
	return KVT_POOL_DONE;
}

static void job_free(struct cal_job *j)
{
	if (!j)
		return;
	free(j->blocks);
	free(j->first);
	free(j->recs);
	free(j->dict_buf);
	free(j);
}

/* ---------------------------------------------------------------------------------------
 * Starting it, and its end (loop thread)
 */
struct fp_count {
	uint64_t fp;
	uint32_t n;
};

/* Is block i a whole block of a known geometry, in RAM or in an NVMe record not being
 * moved? */
static const struct kvt_codec_geom *usable_blk(struct kvtd *d, uint32_t i)
{
	struct kvtd_blk *b = B(d, i);
	const struct kvt_codec_geom *g;

	if (b->state != KVTD_BLK_READY ||
	    !(b->on_host || (b->on_nvme && b->io == KVTD_IO_NONE && nvme_on(d))))
		return NULL;
	g = kvtd_geom_of(d, i);
	if (!g || kvt_geom_check(g) < 0 || kvt_geom_block_bytes(g) != b->len)
		return NULL;
	return g;
}

static const char *blk_model(struct kvtd *d, uint32_t i)
{
	uint32_t g = B(d, i)->geom;

	return g != KVTD_NIL && d->geoms ? d->geoms[g].model : "";
}

/* What the thread needs to read records: the files, and every chain that may have written one
 * (they live until the daemon stops). */
static void cal_nvme_setup(struct kvtd *d, struct cal_job *j)
{
	struct kvtd_auto *a = d->autoc;
	char buf[sizeof(d->cfg.nvme_paths)], *save, *tok;
	unsigned n = 0;

	snprintf(buf, sizeof(buf), "%s", d->cfg.nvme_paths);
	for (tok = strtok_r(buf, ",", &save); tok && n < KVTD_MAX_NVME_PATHS;
	     tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ')
			tok++;
		if (*tok)
			snprintf(j->nv_paths[n++], sizeof(j->nv_paths[0]), "%s", tok);
	}
	j->chains[j->nchains++] = d->raw_chain;
	if (d->nvme_chain)
		j->chains[j->nchains++] = d->nvme_chain;
	for (unsigned i = 0; i < a->n + a->nold; i++) {
		const struct auto_model *m = i < a->n ? &a->m[i] : &a->old[i - a->n];

		for (unsigned r = 0; m->chain && r < m->nrows && j->nchains < CAL_MAX_CHAINS; r++) {
			if (m->chain[r])
				j->chains[j->nchains++] = m->chain[r];
		}
	}
}

/* The layout of model ("": any) with the most usable blocks (0: none); *count its count. */
static uint64_t busiest_layout(struct kvtd *d, const char *model, uint32_t *count)
{
	struct fp_count c[64];
	unsigned nc = 0, best = 0;

	*count = 0;
	for (uint32_t i = 0; i < d->ix.used; i++) {
		unsigned k;

		if (!usable_blk(d, i) || (model[0] && strcmp(blk_model(d, i), model)))
			continue;
		for (k = 0; k < nc && c[k].fp != B(d, i)->fingerprint; k++)
			;
		if (k == nc && nc < 64)
			c[nc++] = (struct fp_count){B(d, i)->fingerprint, 0};
		if (k < nc)
			c[k].n++;
	}
	for (unsigned k = 0; k < nc; k++) {
		if (c[k].n > c[best].n)
			best = k;
	}
	if (!nc)
		return 0;
	*count = c[best].n;
	return c[best].fp;
}

static void pool_ev_setup(struct kvtd *d)
{
	struct kvtd_auto *a = d->autoc;
	struct epoll_event ee = {.events = EPOLLIN};

	if (a->pool)
		return;
	if (kvt_pool_create(1, -1, &a->pool) < 0) {
		a->pool = NULL;
		return;
	}
	/* The codec workers' event kind: kvtd_cpool_event reaps this pool too. */
	a->ev.kind = EV_CODEC;
	a->ev.p = a;
	ee.data.ptr = &a->ev;
	if (epoll_ctl(d->ep, EPOLL_CTL_ADD, kvt_pool_event_fd(a->pool), &ee) < 0) {
		kvt_pool_destroy(a->pool);
		a->pool = NULL;
	}
}

int kvtd_auto_calibrate(struct kvtd *d, struct client *c, uint64_t fp, const char *model, bool json,
			struct sbuf *b)
{
	struct kvtd_auto *a = d->autoc;
	struct cal_job *j;
	const struct kvt_codec_geom *g = NULL;
	uint32_t have = 0, take, k = 0, stride, idx = 0;
	size_t raw;

	if (!a) {
		sb_printf(b, "calibration is not available\n");
		return -ENOMEM;
	}
	if (a->job) {
		sb_printf(b,
			  "a calibration of layout %016" PRIx64
			  " is running (step %u of %u): wait for it (kvtierctl tiers shows it)\n",
			  a->job->fp, atomic_load(&a->job->step), atomic_load(&a->job->steps));
		return -EBUSY;
	}
	if (!fp) {
		fp = busiest_layout(d, model, &have);
		if (!fp) {
			sb_printf(
			    b,
			    "nothing to calibrate on: no layout%s%s%s of a registered model has "
			    "whole blocks in RAM or on NVMe (the calibration reads blocks the "
			    "daemon holds)\n",
			    model[0] ? " of model '" : "", model, model[0] ? "'" : "");
			return -ENODATA;
		}
	} else {
		for (uint32_t i = 0; i < d->ix.used; i++) {
			if (usable_blk(d, i) && B(d, i)->fingerprint == fp)
				have++;
		}
	}
	if (have < CAL_MIN_BLOCKS) {
		sb_printf(b,
			  "too few blocks to calibrate layout %016" PRIx64
			  ": the daemon holds %u whole blocks of it (in RAM or on NVMe), at least "
			  "%u are needed (half fit the dictionary, half measure the chains); put "
			  "more of the model's blocks first\n",
			  fp, have, CAL_MIN_BLOCKS);
		return -ENODATA;
	}
	for (uint32_t i = 0; i < d->ix.used && !g; i++) {
		if (usable_blk(d, i) && B(d, i)->fingerprint == fp)
			g = usable_blk(d, i), idx = i;
	}
	raw = kvt_geom_block_bytes(g);
	take = (uint32_t)(CAL_MAX_BYTES / raw);
	take = take < CAL_MIN_BLOCKS ? CAL_MIN_BLOCKS : take;
	take = take > have ? have : take;
	take &= ~1u; /* as many to fit as to measure */
	stride = have / take;
	j = calloc(1, sizeof(*j));
	if (!j || !(j->blocks = malloc(raw * take)) || !(j->first = calloc(take, 4)) ||
	    !(j->recs = calloc(take, sizeof(*j->recs)))) {
		job_free(j);
		sb_printf(b, "out of memory for %u blocks of %zu bytes\n", take, raw);
		return -ENOMEM;
	}
	j->pj.run = cal_run;
	j->client_id = c->id;
	j->json = json;
	j->fp = fp;
	j->g = *g;
	j->g.first_token = 0;
	j->raw = raw;
	snprintf(j->model, sizeof(j->model), "%s", blk_model(d, idx));
	model_clean(j->model);
	/* every stride-th usable block, spread over the index */
	for (uint32_t i = 0, seen = 0; i < d->ix.used && k < take; i++) {
		struct kvtd_blk *bk = B(d, i);

		if (!usable_blk(d, i) || bk->fingerprint != fp)
			continue;
		if (seen++ % stride)
			continue;
		j->first[k] = bk->first_token;
		if (bk->on_host) {
			memcpy(blk_at(j, k++), kvtd_host_at(d, kvtd_tenant_of(d, bk), bk->off),
			       raw);
			continue;
		}
		/* only on NVMe: its record is read and decoded on the calibration thread */
		j->recs[j->nrecs++] = (struct cal_rec){bk->key_lo,   bk->key_hi, bk->nvme_off,
						       bk->nvme_len, k++,	 bk->nvme_file};
	}
	j->ntrain = j->neval = k / 2;
	if (j->nrecs)
		cal_nvme_setup(d, j);
	if (d->nvme && !d->cfg.nvme_bandwidth) {
		snprintf(j->bw_path, sizeof(j->bw_path), "%s", d->cfg.nvme_paths);
		j->bw_path[strcspn(j->bw_path, ",")] = 0;
		j->bw_direct = d->cfg.nvme_direct;
	}
	cal_path(d, fp, j->file, sizeof(j->file));
	pool_ev_setup(d);
	if (!a->pool) {
		job_free(j);
		sb_printf(b, "cannot start the calibration thread\n");
		return -EAGAIN;
	}
	a->job = j;
	kvtd_log(KVTD_LOG_INFO, "calibrating layout %016" PRIx64 " (%s) on %u blocks", fp,
		 j->model[0] ? j->model : "?", k);
	kvt_pool_submit(a->pool, &j->pj);
	return 1;
}

static void render_row(struct sbuf *b, bool json, const struct kvtd_auto_row *r, bool host,
		       bool nvme, bool first)
{
	if (json)
		sb_printf(b,
			  "%s{\"codec\":\"%s\",\"ratio\":%.4f,\"err\":%.6f,\"encode_gbps\":%.4f,"
			  "\"decode_gbps\":%.4f,\"lossless\":%s,\"gpu\":%s,\"dict\":%s,"
			  "\"host_pick\":%s,\"nvme_pick\":%s}",
			  first ? "" : ",", r->spec, r->ratio, r->err, r->enc_gbps, r->dec_gbps,
			  r->flags & KVTD_AUTO_LOSSLESS ? "true" : "false",
			  r->flags & KVTD_AUTO_GPU ? "true" : "false",
			  r->flags & KVTD_AUTO_DICT ? "true" : "false", host ? "true" : "false",
			  nvme ? "true" : "false");
	else
		sb_printf(b, "  %-64s %7.3f %9.5f %8.3f %8.3f  %-4s %-4s %s%s\n", r->spec, r->ratio,
			  r->err, r->enc_gbps, r->dec_gbps, r->flags & KVTD_AUTO_GPU ? "gpu" : "",
			  r->flags & KVTD_AUTO_LOSSLESS ? "exact" : "", host ? "<- host" : "",
			  nvme ? (host ? ", nvme" : "<- nvme") : "");
}

static const char *pick_name(const struct auto_model *m, enum kvtd_tier_id t)
{
	if (m->pick[t] >= 0)
		return m->rows[m->pick[t]].spec;
	return t == KVTD_TIER_NVME ? KVTD_AUTO_NVME_DEFAULT : KVTD_AUTO_HOST_DEFAULT;
}

static double pick_err(const struct auto_model *m, enum kvtd_tier_id t)
{
	return m->pick[t] >= 0 ? m->rows[m->pick[t]].err : 0;
}

/* s as the inside of a JSON string (paths and messages come from the configuration). */
static void json_esc(struct sbuf *b, const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			sb_printf(b, "\\%c", *p);
		else if (*p < 0x20)
			sb_printf(b, "\\u%04x", *p);
		else
			sb_printf(b, "%c", *p);
	}
}

/* The table of a calibration, as `kvtierctl calibrate` prints it. */
static void render_model(struct kvtd *d, struct sbuf *b, bool json, const struct auto_model *m,
			 const char *file)
{
	double bw = nvme_bw(d, m);

	if (json) {
		sb_printf(b,
			  "{\"layout\":\"%016" PRIx64 "\",\"model\":\"%s\",\"n_layers\":%u,"
			  "\"n_kv_heads\":%u,\"head_dim\":%u,\"block_tokens\":%u,"
			  "\"blocks_dict\":%u,\"blocks_measured\":%u,\"dict_bytes\":%zu,"
			  "\"nvme_bandwidth\":%.0f,\"nvme_bandwidth_measured\":%s,"
			  "\"host_max_err\":%g,\"nvme_max_err\":%g,\"host_pick\":\"%s\","
			  "\"nvme_pick\":\"%s\",\"file\":\"",
			  m->fp, m->model, m->g.n_layers, m->g.n_kv_heads, m->g.head_dim,
			  m->g.block_tokens, m->ntrain, m->neval, m->dict_len, bw,
			  d->cfg.nvme_bandwidth ? "false" : "true", d->cfg.host_max_err,
			  d->cfg.nvme_max_err, pick_name(m, KVTD_TIER_HOST),
			  pick_name(m, KVTD_TIER_NVME));
		json_esc(b, file);
		sb_printf(b, "\",\"chains\":[");
	} else {
		sb_printf(
		    b,
		    "layout %016" PRIx64 " (%s): %u layers x %u kv heads x %u dims, %u "
		    "tokens a block\ndictionary %zu bytes fitted on %u blocks; chains measured "
		    "on %u other blocks; saved in %s\n",
		    m->fp, m->model[0] ? m->model : "model unknown", m->g.n_layers, m->g.n_kv_heads,
		    m->g.head_dim, m->g.block_tokens, m->dict_len, m->ntrain, m->neval, file);
		if (bw > 0)
			sb_printf(b, "NVMe read bandwidth %.3f GB/s (%s), %u codec threads\n",
				  bw / 1e9, d->cfg.nvme_bandwidth ? "nvme.bandwidth" : "measured",
				  d->cfg.nvme_codec_threads ? d->cfg.nvme_codec_threads : 1);
		sb_printf(b, "  %-64s %7s %9s %8s %8s\n", "chain", "ratio", "err", "enc GB/s",
			  "dec GB/s");
	}
	for (unsigned i = 0; i < m->nrows; i++)
		render_row(b, json, &m->rows[i], m->pick[KVTD_TIER_HOST] == (int)i,
			   m->pick[KVTD_TIER_NVME] == (int)i, i == 0);
	if (json) {
		sb_printf(b, "]}\n");
		return;
	}
	sb_printf(b, "host auto (max_err %g): %s, err %.5f\n", d->cfg.host_max_err,
		  pick_name(m, KVTD_TIER_HOST), pick_err(m, KVTD_TIER_HOST));
	sb_printf(b, "nvme auto (max_err %g): %s, err %.5f\n", d->cfg.nvme_max_err,
		  pick_name(m, KVTD_TIER_NVME), pick_err(m, KVTD_TIER_NVME));
}

static void job_done(struct kvtd *d, struct cal_job *j)
{
	struct client *c;
	struct sbuf b = {0};
	struct auto_model m;
	int ret = j->err;

	memset(&m, 0, sizeof(m));
	if (!ret) {
		m.fp = j->fp;
		memcpy(m.model, j->model, sizeof(m.model));
		m.g = j->g;
		m.ntrain = j->ntrain;
		m.neval = j->neval;
		m.when = j->when;
		m.bw = j->bw;
		m.nrows = j->nrows;
		m.dict_len = j->dict_len;
		m.rows = calloc(j->nrows ? j->nrows : 1, sizeof(*m.rows));
		ret = m.rows ? kvt_dict_parse(j->dict_buf, j->dict_len, &m.dict) : -ENOMEM;
		if (!ret) {
			memcpy(m.rows, j->rows, j->nrows * sizeof(*m.rows));
			ret = model_pick(d, &m);
		}
		if (!ret)
			ret = model_install(d, &m);
		if (ret) {
			model_free(&m);
			snprintf(j->msg, sizeof(j->msg), "cannot apply it: %s", strerror(-ret));
		}
	}
	if (ret) {
		kvtd_log(KVTD_LOG_ERR, "calibration of layout %016" PRIx64 " failed: %s", j->fp,
			 j->msg);
		sb_printf(&b, "calibration of layout %016" PRIx64 " failed: %s\n", j->fp, j->msg);
	} else {
		const struct auto_model *im = model_find(d, j->fp);

		kvtd_log(KVTD_LOG_INFO,
			 "calibrated layout %016" PRIx64 ": host auto %s, nvme auto %s (%s)", j->fp,
			 pick_name(im, KVTD_TIER_HOST), pick_name(im, KVTD_TIER_NVME), j->file);
		render_model(d, &b, j->json, im, j->file);
	}
	for (c = d->clients; c && c->id != j->client_id; c = c->next)
		;
	if (c && !c->dead)
		admin_reply(d, c, &b, ret < 0 ? ret : 0);
	free(b.p);
}

static void reaped(struct kvt_pool_job *pj, void *arg)
{
	struct kvtd *d = arg;
	struct cal_job *j = (struct cal_job *)pj;

	d->autoc->job = NULL;
	job_done(d, j);
	job_free(j);
}

int kvtd_auto_event(struct kvtd *d)
{
	struct kvtd_auto *a = d->autoc;

	if (!a || !a->pool)
		return 0;
	return (int)kvt_pool_reap(a->pool, reaped, d);
}

void kvtd_auto_fini(struct kvtd *d)
{
	struct kvtd_auto *a = d->autoc;

	if (!a)
		return;
	if (a->job)
		atomic_store(&a->job->cancel, true);
	if (a->pool) {
		if (d->ep >= 0)
			epoll_ctl(d->ep, EPOLL_CTL_DEL, kvt_pool_event_fd(a->pool), NULL);
		kvt_pool_destroy(a->pool); /* waits for the job, which stops early */
		/* a job finished but not reaped is ours to free */
		if (a->job)
			job_free(a->job);
	}
	for (unsigned i = 0; i < a->n; i++)
		model_free(&a->m[i]);
	for (unsigned i = 0; i < a->nold; i++)
		model_free(&a->old[i]);
	free(a->m);
	free(a->old);
	free(a);
	d->autoc = NULL;
}

/* ---------------------------------------------------------------------------------------
 * kvtierctl tiers
 */
void kvtd_auto_render(struct kvtd *d, struct sbuf *b, bool json, enum kvtd_tier_id tier)
{
	struct kvtd_auto *a = d->autoc;
	const char *spec = tier == KVTD_TIER_NVME ? d->cfg.nvme_codec : d->cfg.host_codec;
	bool is_auto = kvtd_auto_is(spec);
	const char *def = tier == KVTD_TIER_NVME ? KVTD_AUTO_NVME_DEFAULT : KVTD_AUTO_HOST_DEFAULT;

	if (!a)
		return;
	if (json) {
		sb_printf(b, ",\"auto\":%s", is_auto ? "true" : "false");
		if (is_auto)
			sb_printf(b, ",\"max_err\":%g,\"default\":\"%s\"", tier_max_err(d, tier),
				  def);
		sb_printf(b, ",\"models\":[");
	} else if (is_auto) {
		sb_printf(b, "       auto: max_err %g; uncalibrated models: %s (the default)\n",
			  tier_max_err(d, tier), def);
	}
	for (unsigned i = 0; i < a->n; i++) {
		const struct auto_model *m = &a->m[i];
		const char *pick = is_auto ? pick_name(m, tier) : spec;
		double err = is_auto ? pick_err(m, tier) : -1;

		/* a fixed chain: its err when the calibration measured it */
		for (unsigned r = 0; !is_auto && r < m->nrows; r++) {
			if (!strcmp(m->rows[r].spec, spec))
				err = m->rows[r].err;
		}
		if (json)
			sb_printf(b,
				  "%s{\"layout\":\"%016" PRIx64
				  "\",\"model\":\"%s\",\"codec\":\"%s\","
				  "\"err\":%.6f,\"calibrated_unix\":%" PRIu64 "}",
				  i ? "," : "", m->fp, m->model, pick, err, m->when);
		else if (err >= 0)
			sb_printf(b, "       model %s (layout %016" PRIx64 "): %s, err %.5f\n",
				  m->model[0] ? m->model : "?", m->fp, pick, err);
		else
			sb_printf(b,
				  "       model %s (layout %016" PRIx64 "): %s, err not measured\n",
				  m->model[0] ? m->model : "?", m->fp, pick);
	}
	if (json)
		sb_printf(b, "]");
	if (tier != KVTD_TIER_HOST)
		return;
	if (a->job) {
		if (json)
			sb_printf(b,
				  ",\"calibrating\":{\"layout\":\"%016" PRIx64
				  "\",\"step\":%u,\"steps\":%u}",
				  a->job->fp, atomic_load(&a->job->step),
				  atomic_load(&a->job->steps));
		else
			sb_printf(b, "       calibrating layout %016" PRIx64 ": step %u of %u\n",
				  a->job->fp, atomic_load(&a->job->step),
				  atomic_load(&a->job->steps));
	}
	if (a->bad[0]) {
		if (json) {
			sb_printf(b, ",\"calibration_error\":\"");
			json_esc(b, a->bad);
			sb_printf(b, "\"");
		} else {
			sb_printf(b, "       calibration files refused: %s\n", a->bad);
		}
	}
}
