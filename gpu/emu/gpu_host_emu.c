/* SPDX-License-Identifier: MIT */
/*
 * gpu_host_emu.c - kvt_gpu.h and kvt_gpu_bq.h on host memory, for running the device API's
 * own logic (client/kvtier_gpu*.c: rounds, slots, staging, batch arrays, which blocks go
 * where) through a real kvtierd on a machine without a GPU.  "Device" memory is malloc'd,
 * every queued operation runs when it is queued (so a wrong order of queued work shows), the
 * copy engine is memcpy, kvt_gpu_xpose() is kvt_gpu_ref_xpose() (the kernel itself is checked
 * against it by xpose_emu.cpp), and the bq plan is the CPU codec (records of the chain "bq"
 * only; its GPU kernels are checked by bq_dec_emu.cpp and bq_enc_emu.cpp).  No GPU tier: a
 * daemon cannot share this memory, so pools are -ENODEV.  Linked into the *_emu tests only
 * (tests/integration/gpu_tier.cmake), never into libkvtier.
 *
 * KVT_EMU_ASYNC=SEED in the environment: queued work runs later, on a thread of its own, as a
 * GPU's does: each stream's work in its order, events ordering streams, but between streams
 * whatever the seed picks among the work that may run, with pauses of up to 200 us, so that
 * the host queues more meanwhile.  A missing event between two streams, a slot reused before
 * the copy that reads it ran, or a host that reads what the GPU has not yet written then
 * gives wrong bytes (the tests' *_emu_async variants).  Synchronous calls (kvt_gpu_memcpy,
 * memset, frees) wait for all queued work, as CUDA's do.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codec.h"
#include "codec_bq.h"
#include "kvt_gpu.h"
#include "kvt_gpu_bq.h"

static int dummy;

/* ---- queued work: run as queued, or later on the executor thread (KVT_EMU_ASYNC) ---------- */

struct emu_event {
	uint64_t recorded; /* records queued */
	uint64_t done;	   /* the highest record that ran */
};

struct emu_op {
	struct emu_op *next;
	void (*run)(struct emu_op *);
	struct emu_event *ev; /* a record (wait == 0) or a wait for ev->done >= ticket */
	uint64_t ticket;
	int wait;
	union {
		struct {
			struct kvt_gpu_seg *segs;
			size_t n;
		} copy;
		struct {
			uint64_t *flag, value;
		} sig;
		struct {
			struct kvt_gpu_xgeom x;
			struct kvt_gpu_xjob *jobs;
			size_t n;
			int to_pages;
		} xp;
		struct {
			const struct kvt_gpu_bq *b;
			const void *const *src;
			const uint32_t *ft, *len;
			uint32_t n, ppb;
			void *const *dst;
			uint32_t *out; /* encode: lengths; decode: bad flags */
		} bq;
	} u;
};

struct emu_stream {
	struct emu_op *head, *tail;
	int busy;
};

#define EMU_STREAMS 64
static struct emu_stream emu_legacy; /* the NULL stream */
static struct emu_stream *emu_all[EMU_STREAMS + 1] = {&emu_legacy};
static unsigned emu_n = 1;
static pthread_mutex_t emu_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t emu_cv = PTHREAD_COND_INITIALIZER;
static pthread_once_t emu_once = PTHREAD_ONCE_INIT;
static int emu_async;
static unsigned emu_seed;

static void *emu_executor(void *arg);

static void emu_init(void)
{
	const char *e = getenv("KVT_EMU_ASYNC");
	pthread_t t;

	if (!e || !*e)
		return;
	emu_seed = (unsigned)strtoul(e, NULL, 0) * 2654435761u + 1;
	emu_async = pthread_create(&t, NULL, emu_executor, NULL) == 0;
	if (emu_async)
		pthread_detach(t);
}

static struct emu_stream *emu_stream_of(void *stream)
{
	return stream ? (struct emu_stream *)stream : &emu_legacy;
}

/* The op's stream head may run: not a wait for an event that has not happened. */
static int emu_ready(const struct emu_stream *s)
{
	const struct emu_op *o = s->head;

	return o && !s->busy && (!o->wait || o->ev->done >= o->ticket);
}

/* Runs queued work: mostly the stream it ran last, while it has work that may run (so that
 * one stream runs far ahead of another, as when a GPU's copy engine waits on the bus and its
 * SMs run on), else a stream picked at random among those that may run. */
static void *emu_executor(void *arg)
{
	struct emu_stream *cur = NULL;

	(void)arg;
	pthread_mutex_lock(&emu_mu);
	for (;;) {
		struct emu_stream *ready[EMU_STREAMS + 1], *s;
		struct emu_op *o;
		unsigned nr = 0, stay = 0;

		for (unsigned i = 0; i < emu_n; i++) {
			if (emu_all[i] && emu_ready(emu_all[i])) {
				stay |= emu_all[i] == cur;
				ready[nr++] = emu_all[i];
			}
		}
		if (!nr) {
			pthread_cond_wait(&emu_cv, &emu_mu);
			continue;
		}
		s = stay && rand_r(&emu_seed) % 8 ? cur : ready[rand_r(&emu_seed) % nr];
		cur = s;
		o = s->head;
		s->head = o->next;
		if (!s->head)
			s->tail = NULL;
		s->busy = 1;
		unsigned pause = rand_r(&emu_seed) % 200;
		pthread_mutex_unlock(&emu_mu);
		usleep(pause);
		if (o->run)
			o->run(o);
		pthread_mutex_lock(&emu_mu);
		if (o->ev && !o->wait && o->ticket > o->ev->done)
			o->ev->done = o->ticket;
		s->busy = 0;
		free(o);
		pthread_cond_broadcast(&emu_cv);
	}
	return NULL;
}

/* Queues o on stream (runs it now without KVT_EMU_ASYNC). */
static void emu_queue(void *stream, struct emu_op *o)
{
	struct emu_stream *s;

	pthread_once(&emu_once, emu_init);
	if (!emu_async) {
		if (o->run)
			o->run(o);
		if (o->ev && !o->wait && o->ticket > o->ev->done)
			o->ev->done = o->ticket;
		free(o);
		return;
	}
	pthread_mutex_lock(&emu_mu);
	s = emu_stream_of(stream);
	o->next = NULL;
	if (s->tail)
		s->tail->next = o;
	else
		s->head = o;
	s->tail = o;
	pthread_cond_broadcast(&emu_cv);
	pthread_mutex_unlock(&emu_mu);
}

static struct emu_op *emu_op(void (*run)(struct emu_op *))
{
	struct emu_op *o = calloc(1, sizeof(*o));

	if (!o)
		abort();
	o->run = run;
	return o;
}

/* Waits until stream (NULL: every stream) has nothing queued or running. */
static void emu_drain(struct emu_stream *only)
{
	pthread_once(&emu_once, emu_init);
	if (!emu_async)
		return;
	pthread_mutex_lock(&emu_mu);
	for (;;) {
		int idle = 1;

		for (unsigned i = 0; i < emu_n; i++) {
			struct emu_stream *s = emu_all[i];

			if (s && (!only || s == only) && (s->head || s->busy))
				idle = 0;
		}
		if (idle)
			break;
		pthread_cond_wait(&emu_cv, &emu_mu);
	}
	pthread_mutex_unlock(&emu_mu);
}

int kvt_gpu_available(void)
{
	return 1;
}

int kvt_gpu_device_uuid(int ordinal, uint8_t uuid[KVT_GPU_UUID_LEN])
{
	(void)ordinal;
	memset(uuid, 0xee, KVT_GPU_UUID_LEN);
	return 0;
}

int kvt_gpu_device_by_uuid(const uint8_t uuid[KVT_GPU_UUID_LEN])
{
	(void)uuid;
	return -ENODEV;
}

int kvt_gpu_pool_create(const struct kvt_gpu_pool_opts *o, struct kvt_gpu_pool **out)
{
	(void)o;
	if (out)
		*out = NULL;
	return -ENODEV;
}

int kvt_gpu_pool_export(const struct kvt_gpu_pool *p, struct kvt_gpu_ipc_desc *d)
{
	(void)p, (void)d;
	return -ENODEV;
}

int kvt_gpu_pool_open(const struct kvt_gpu_ipc_desc *d, struct kvt_gpu_pool **out)
{
	(void)d;
	if (out)
		*out = NULL;
	return -ENODEV;
}

void kvt_gpu_pool_close(struct kvt_gpu_pool *p)
{
	(void)p;
}

void *kvt_gpu_pool_base(const struct kvt_gpu_pool *p)
{
	(void)p;
	return NULL;
}

uint64_t kvt_gpu_pool_bytes(const struct kvt_gpu_pool *p)
{
	(void)p;
	return 0;
}

int kvt_gpu_pool_device(const struct kvt_gpu_pool *p)
{
	(void)p;
	return -ENODEV;
}

int kvt_gpu_host_register(void *addr, size_t len)
{
	(void)addr, (void)len;
	return 0;
}

int kvt_gpu_host_unregister(void *addr)
{
	(void)addr;
	return 0;
}

int kvt_gpu_host_alloc(size_t len, void **out)
{
	*out = malloc(len ? len : 1);
	if (*out) /* pinned memory is not zeroed either: garbage, as kvt_gpu_dev_alloc's */
		memset(*out, 0xcd, len);
	return *out ? 0 : -ENOMEM;
}

void kvt_gpu_host_free(void *p)
{
	emu_drain(NULL); /* as cudaFreeHost */
	free(p);
}

int kvt_gpu_dev_alloc(int device, size_t len, void **out)
{
	(void)device;
	/* cudaMalloc's alignment, and garbage in it as there */
	*out = aligned_alloc(256, (len + 255) & ~(size_t)255);
	if (*out)
		memset(*out, 0xcd, len);
	return *out ? 0 : -ENOMEM;
}

void kvt_gpu_dev_free(void *p)
{
	emu_drain(NULL); /* as cudaFree */
	free(p);
}

int kvt_gpu_memcpy(void *dst, const void *src, size_t len)
{
	emu_drain(NULL);
	memcpy(dst, src, len);
	return 0;
}

int kvt_gpu_memset(void *dst, int byte, size_t len)
{
	emu_drain(NULL);
	memset(dst, byte, len);
	return 0;
}

int kvt_gpu_stream_create(void **out)
{
	struct emu_stream *s = calloc(1, sizeof(*s));
	int ret = -ENOMEM;

	*out = NULL;
	if (!s)
		return -ENOMEM;
	pthread_mutex_lock(&emu_mu);
	for (unsigned i = 1; i <= EMU_STREAMS; i++) {
		if (!emu_all[i]) {
			emu_all[i] = s;
			emu_n = i + 1 > emu_n ? i + 1 : emu_n;
			*out = s;
			ret = 0;
			break;
		}
	}
	pthread_mutex_unlock(&emu_mu);
	if (ret < 0)
		free(s);
	return ret;
}

void kvt_gpu_stream_destroy(void *stream)
{
	if (!stream)
		return;
	emu_drain(stream);
	pthread_mutex_lock(&emu_mu);
	for (unsigned i = 1; i < emu_n; i++)
		if (emu_all[i] == stream)
			emu_all[i] = NULL;
	pthread_mutex_unlock(&emu_mu);
	free(stream); /* the executor compares its last stream's address only */
}

int kvt_gpu_stream_sync(void *stream)
{
	emu_drain(emu_stream_of(stream));
	return 0;
}

int kvt_gpu_set_device(int ordinal)
{
	(void)ordinal;
	return 0;
}

int kvt_gpu_event_create(void **out)
{
	*out = calloc(1, sizeof(struct emu_event));
	return *out ? 0 : -ENOMEM;
}

void kvt_gpu_event_destroy(void *ev)
{
	if (!ev)
		return;
	emu_drain(NULL);
	free(ev);
}

int kvt_gpu_event_record(void *ev, void *stream)
{
	struct emu_event *e = ev;
	struct emu_op *o;

	if (!e)
		return -EINVAL;
	o = emu_op(NULL);
	o->ev = e;
	o->ticket = ++e->recorded;
	emu_queue(stream, o);
	return 0;
}

int kvt_gpu_stream_wait(void *stream, void *ev)
{
	struct emu_event *e = ev;
	struct emu_op *o;

	if (!e)
		return -EINVAL;
	if (!e->recorded)
		return 0; /* never recorded: nothing to wait for */
	o = emu_op(NULL);
	o->ev = e;
	o->ticket = e->recorded;
	o->wait = 1;
	emu_queue(stream, o);
	return 0;
}

int kvt_gpu_engine_create(const struct kvt_gpu_engine_opts *o, struct kvt_gpu_engine **out)
{
	(void)o;
	*out = (struct kvt_gpu_engine *)&dummy;
	return 0;
}

void kvt_gpu_engine_destroy(struct kvt_gpu_engine *e)
{
	(void)e;
}

static void run_copy(struct emu_op *o)
{
	const struct kvt_gpu_seg *segs = o->u.copy.segs;

	for (size_t i = 0; i < o->u.copy.n; i++) {
		/* the engine's rule: destinations never overlap (memcpy's, sources too) */
		for (size_t j = 0; j < i; j++)
			if (segs[i].dst < segs[j].dst + segs[j].len &&
			    segs[j].dst < segs[i].dst + segs[i].len)
				abort();
		memcpy((void *)(uintptr_t)segs[i].dst, (const void *)(uintptr_t)segs[i].src,
		       segs[i].len);
	}
	free(o->u.copy.segs);
}

int kvt_gpu_copy(struct kvt_gpu_engine *e, const struct kvt_gpu_seg *segs, size_t n,
		 enum kvt_gpu_dir dir, enum kvt_gpu_mode mode, void *stream)
{
	struct emu_op *o;

	(void)mode;
	if (!e || (n && !segs) || (dir != KVT_GPU_D2H && dir != KVT_GPU_H2D && dir != KVT_GPU_D2D))
		return -EINVAL;
	if (!n)
		return 0;
	o = emu_op(run_copy);
	/* the segment array is read before the call returns */
	o->u.copy.segs = malloc(n * sizeof(*segs));
	if (!o->u.copy.segs)
		abort();
	memcpy(o->u.copy.segs, segs, n * sizeof(*segs));
	o->u.copy.n = n;
	emu_queue(stream, o);
	return 1;
}

static void run_signal(struct emu_op *o)
{
	__atomic_store_n(o->u.sig.flag, o->u.sig.value, __ATOMIC_RELEASE);
}

int kvt_gpu_signal(struct kvt_gpu_engine *e, void *stream, uint64_t *flag, uint64_t value)
{
	struct emu_op *o;

	(void)e;
	o = emu_op(run_signal);
	o->u.sig.flag = flag;
	o->u.sig.value = value;
	emu_queue(stream, o);
	return 0;
}

int kvt_gpu_quantize(struct kvt_gpu_engine *e, const struct kvt_gpu_qparams *p,
		     const struct kvt_gpu_qjob *jobs, size_t n, void *stream)
{
	(void)e, (void)p, (void)jobs, (void)n, (void)stream;
	return -ENODEV;
}

int kvt_gpu_dequantize(struct kvt_gpu_engine *e, const struct kvt_gpu_qparams *p,
		       const struct kvt_gpu_qjob *jobs, size_t n, void *stream)
{
	(void)e, (void)p, (void)jobs, (void)n, (void)stream;
	return -ENODEV;
}

static void run_xpose(struct emu_op *o)
{
	if (kvt_gpu_ref_xpose(&o->u.xp.x, o->u.xp.jobs, o->u.xp.n, o->u.xp.to_pages) < 0)
		abort(); /* checked when it was queued */
	free(o->u.xp.jobs);
}

int kvt_gpu_xpose(struct kvt_gpu_engine *e, const struct kvt_gpu_xgeom *x,
		  const struct kvt_gpu_xjob *jobs, size_t n, int to_pages, void *stream)
{
	struct emu_op *o;

	if (!e || !x || (n && !jobs))
		return -EINVAL;
	pthread_once(&emu_once, emu_init);
	if (!emu_async) /* the reference's own checks, its error as the kernel's */
		return kvt_gpu_ref_xpose(x, jobs, n, to_pages) < 0 ? -EINVAL : n ? 1 : 0;
	if (!n)
		return 0;
	o = emu_op(run_xpose);
	o->u.xp.x = *x;
	o->u.xp.jobs = malloc(n * sizeof(*jobs)); /* by value, as the kernel's parameters */
	if (!o->u.xp.jobs)
		abort();
	memcpy(o->u.xp.jobs, jobs, n * sizeof(*jobs));
	o->u.xp.n = n;
	o->u.xp.to_pages = to_pages;
	emu_queue(stream, o);
	return 1;
}

/* ---- bq: the CPU codec ---------------------------------------------------------------------- */

struct kvt_gpu_bq {
	struct kvt_chain *chain;
	struct kvt_codec_geom g;
	size_t bb, bound;
};

int kvt_gpu_bq_new(const struct kvt_codec_geom *g, const struct kvt_bq_params *p,
		   struct kvt_gpu_bq **out)
{
	struct kvt_gpu_bq *b = calloc(1, sizeof(*b));

	*out = NULL;
	if (!b)
		return -ENOMEM;
	if (kvt_chain_parse("bq", &b->chain) < 0 || kvt_chain_id(b->chain) != p->chain_id) {
		kvt_chain_free(b->chain);
		free(b);
		return -EINVAL;
	}
	b->g = *g;
	b->bb = kvt_geom_block_bytes(g);
	b->bound = kvt_chain_max_encoded_size(b->chain, g);
	*out = b;
	return 0;
}

void kvt_gpu_bq_free(struct kvt_gpu_bq *b)
{
	if (b)
		kvt_chain_free(b->chain);
	free(b);
}

size_t kvt_gpu_bq_record_bound(const struct kvt_gpu_bq *b)
{
	return b->bound;
}

size_t kvt_gpu_bq_scratch_bytes(const struct kvt_gpu_bq *b, uint32_t n)
{
	(void)b, (void)n;
	return 16;
}

/* The batch arrays (device memory) are read when the work runs, as a kernel reads them. */
static void run_encode(struct emu_op *o)
{
	const struct kvt_gpu_bq *b = o->u.bq.b;
	const void *const *src = o->u.bq.src;
	const uint32_t *first_token = o->u.bq.ft;
	void *const *dst = o->u.bq.dst;
	uint32_t *len = o->u.bq.out;

	for (uint32_t i = 0; i < o->u.bq.n; i++) {
		struct kvt_codec_geom g = b->g;
		ssize_t r;

		g.first_token = first_token[i];
		r = kvt_chain_encode(b->chain, &g, src[i], b->bb, dst[i], b->bound);
		len[i] = r > 0 ? (uint32_t)r : 0;
	}
}

static struct emu_op *bq_op(void (*run)(struct emu_op *), const struct kvt_gpu_bq *b,
			    const void *const *src, const uint32_t *ft, const uint32_t *len,
			    uint32_t n, void *const *dst, uint32_t ppb, uint32_t *out)
{
	struct emu_op *o = emu_op(run);

	o->u.bq.b = b;
	o->u.bq.src = src;
	o->u.bq.ft = ft;
	o->u.bq.len = len;
	o->u.bq.n = n;
	o->u.bq.dst = dst;
	o->u.bq.ppb = ppb;
	o->u.bq.out = out;
	return o;
}

int kvt_gpu_bq_encode(const struct kvt_gpu_bq *b, const void *const *src,
		      const uint32_t *first_token, uint32_t n, void *const *dst, uint32_t *len,
		      void *scratch, void *stream)
{
	(void)scratch;
	emu_queue(stream, bq_op(run_encode, b, src, first_token, NULL, n, dst, 0, len));
	return 0;
}

static void run_decode(struct emu_op *o)
{
	const struct kvt_gpu_bq *b = o->u.bq.b;

	for (uint32_t i = 0; i < o->u.bq.n; i++)
		o->u.bq.out[i] = kvt_chain_decode(b->chain, o->u.bq.src[i], o->u.bq.len[i],
						  o->u.bq.dst[i], b->bb, NULL) != (ssize_t)b->bb;
}

int kvt_gpu_bq_decode(const struct kvt_gpu_bq *b, const void *const *src, const uint32_t *len,
		      uint32_t n, void *const *dst, uint32_t *bad, void *stream)
{
	emu_queue(stream, bq_op(run_decode, b, src, NULL, len, n, dst, 0, bad));
	return 0;
}

static void run_decode_paged(struct emu_op *o)
{
	const struct kvt_gpu_bq *b = o->u.bq.b;
	const uint32_t L = b->g.n_layers, H = b->g.n_kv_heads, T = b->g.block_tokens;
	const uint32_t ppb = o->u.bq.ppb, n = o->u.bq.n;
	const size_t row = (size_t)b->g.head_dim * (b->g.dtype == KVT_DTYPE_FP8_E4M3 ? 1 : 2);
	const void *const *src = o->u.bq.src;
	const uint32_t *len = o->u.bq.len;
	void *const *pages = o->u.bq.dst;
	uint32_t *bad = o->u.bq.out;
	uint8_t *tmp = malloc(b->bb);

	if (!tmp)
		abort();
	for (uint32_t i = 0; i < n; i++) {
		const uint32_t P = T / ppb;

		/* the kernel's rule: pages 4-byte aligned */
		for (uint32_t j = 0; j < L * 2 * ppb; j++)
			if ((uintptr_t)pages[i * L * 2 * ppb + j] % 4)
				abort();
		bad[i] =
		    kvt_chain_decode(b->chain, src[i], len[i], tmp, b->bb, NULL) != (ssize_t)b->bb;
		if (bad[i])
			continue;
		for (uint32_t l = 0; l < L; l++)
			for (uint32_t kv = 0; kv < 2; kv++)
				for (uint32_t h = 0; h < H; h++)
					for (uint32_t t = 0; t < T; t++) {
						uint8_t *pg =
						    pages[((i * L + l) * 2 + kv) * ppb + t / P];

						memcpy(
						    pg + ((size_t)(t % P) * H + h) * row,
						    tmp + (((size_t)(l * 2 + kv) * H + h) * T + t) *
							      row,
						    row);
					}
	}
	free(tmp);
}

int kvt_gpu_bq_decode_paged(const struct kvt_gpu_bq *b, const void *const *src, const uint32_t *len,
			    uint32_t n, void *const *pages, uint32_t ppb, uint32_t *bad,
			    void *stream)
{
	if (!ppb || b->g.block_tokens % ppb)
		return -EINVAL;
	emu_queue(stream, bq_op(run_decode_paged, b, src, NULL, len, n, pages, ppb, bad));
	return 0;
}

int kvt_gpu_bq_decode_cta(const struct kvt_gpu_bq *b, const void *const *src, const uint32_t *len,
			  uint32_t n, void *const *dst, uint32_t *bad, void *stream)
{
	return kvt_gpu_bq_decode(b, src, len, n, dst, bad, stream);
}
