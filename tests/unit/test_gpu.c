/* SPDX-License-Identifier: MIT */
/*
 * test_gpu.c - gpu/ on a real device (ctest label gpu; exit 77 without one): every copy path
 * in every direction against poisoned destinations, a vLLM-layout round trip through a memfd
 * arena registered with CUDA, completion flags, the quantize/dequantize kernels byte for byte
 * against the CPU reference (device and host destinations), and a pool shared with a child
 * process over CUDA IPC.  Randomized: prints its seed, takes --seed N.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvt_gpu.h"

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static uint64_t rng(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void fill_random(void *p, size_t len)
{
	uint8_t *b = p;

	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = rng();

		memcpy(b + i, &v, len - i < 8 ? len - i : 8);
	}
}

static void *dev_random(size_t len, void *host_copy)
{
	void *d = NULL;

	assert_int_equal(kvt_gpu_dev_alloc(-1, len, &d), 0);
	fill_random(host_copy, len);
	assert_int_equal(kvt_gpu_memcpy(d, host_copy, len), 0);
	return d;
}

struct fixture {
	struct kvt_gpu_engine *e;
	void *stream;
	uint64_t *flags; /* pinned, mapped */
	uint64_t seq;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct kvt_gpu_engine_opts o = {.size = sizeof(o), .device = -1, .staging_bytes = 8 << 20};

	if (!f || kvt_gpu_engine_create(&o, &f->e) || kvt_gpu_stream_create(&f->stream) ||
	    kvt_gpu_host_alloc(4096, (void **)&f->flags))
		return -1;
	memset(f->flags, 0, 4096);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	kvt_gpu_stream_sync(f->stream);
	kvt_gpu_engine_destroy(f->e);
	kvt_gpu_stream_destroy(f->stream);
	kvt_gpu_host_free(f->flags);
	free(f);
	return 0;
}

/* Signals the fixture's flag on the stream and waits for it on the host: the completion path
 * a client uses, instead of a stream synchronization. */
static void fence(struct fixture *f)
{
	f->seq++;
	assert_int_equal(kvt_gpu_signal(f->e, f->stream, &f->flags[0], f->seq), 0);
	assert_int_equal(kvt_gpu_flag_wait(&f->flags[0], f->seq, 10ll * 1000000000), 0);
}

static const char *mode_name(int m)
{
	static const char *n[] = {"auto", "kernel", "staged", "dma", "dma_batch"};

	return n[m];
}

/*
 * npages pages of page_bytes, scattered in a device buffer, to a contiguous host or device
 * destination (D2H, D2D) and back (H2D): checks every byte and that nothing outside the
 * destination ranges was written.
 */
static void copy_case(struct fixture *f, int mode, size_t page_bytes, size_t npages,
		      int scatter_host)
{
	const size_t slots = npages * 2, dev_len = slots * page_bytes,
		     out_len = npages * page_bytes;
	uint8_t *dev_ref = malloc(dev_len), *back = malloc(dev_len), *host = NULL;
	struct kvt_gpu_seg *segs = calloc(npages, sizeof(*segs));
	uint32_t *perm = malloc(slots * sizeof(*perm));
	void *dev, *dev2 = NULL;
	int ret;

	assert_non_null(dev_ref);
	assert_non_null(back);
	assert_non_null(segs);
	assert_non_null(perm);
	dev = dev_random(dev_len, dev_ref);
	assert_int_equal(kvt_gpu_host_alloc(2 * out_len + 64, (void **)&host), 0);
	assert_int_equal(kvt_gpu_dev_alloc(-1, out_len, &dev2), 0);
	for (size_t i = 0; i < slots; i++)
		perm[i] = (uint32_t)i;
	for (size_t i = slots - 1; i > 0; i--) {
		size_t j = rng() % (i + 1);
		uint32_t t = perm[i];

		perm[i] = perm[j];
		perm[j] = t;
	}
	/* host side: contiguous, or every page at a scattered slot (KERNEL's case) */
	for (size_t i = 0; i < npages; i++) {
		size_t hslot = scatter_host ? (npages - 1 - i) * 2 : i;

		segs[i].src = (uint64_t)(uintptr_t)dev + (uint64_t)perm[i] * page_bytes;
		segs[i].dst = (uint64_t)(uintptr_t)host +
			      (scatter_host ? hslot * page_bytes : i * page_bytes);
		segs[i].len = page_bytes;
	}
	memset(host, 0xa5, 2 * out_len + 64);
	ret = kvt_gpu_copy(f->e, segs, npages, KVT_GPU_D2H, mode, f->stream);
	if (ret == -EOPNOTSUPP) {
		print_message("mode %s: not supported here\n", mode_name(mode));
		goto out;
	}
	assert_true(ret > 0);
	fence(f);
	for (size_t i = 0; i < npages; i++) {
		if (memcmp((void *)(uintptr_t)segs[i].dst, dev_ref + (size_t)perm[i] * page_bytes,
			   page_bytes)) {
			fprintf(stderr, "D2H mode %s page %zu of %zu bytes differs\n",
				mode_name(mode), i, page_bytes);
			fail();
		}
	}
	/* bytes between scattered pages and past the end stay poisoned */
	for (size_t i = 0; i < 2 * out_len + 64; i++) {
		size_t slot = i / page_bytes;
		int written = scatter_host ? slot < 2 * npages && slot % 2 == 0 : i < out_len;

		if (!written && host[i] != 0xa5) {
			fprintf(stderr, "D2H mode %s wrote outside its pages at %zu\n",
				mode_name(mode), i);
			fail();
		}
	}

	/* H2D: poison the device pages, write them back from the host, compare everything */
	assert_int_equal(kvt_gpu_memset(dev, 0x3c, dev_len), 0);
	for (size_t i = 0; i < npages; i++) {
		uint64_t t = segs[i].src;

		segs[i].src = segs[i].dst;
		segs[i].dst = t;
	}
	assert_true(kvt_gpu_copy(f->e, segs, npages, KVT_GPU_H2D, mode, f->stream) > 0);
	fence(f);
	assert_int_equal(kvt_gpu_memcpy(back, dev, dev_len), 0);
	for (size_t s = 0; s < slots; s++) {
		int used = 0;

		for (size_t i = 0; i < npages && !used; i++)
			used = perm[i] == s;
		for (size_t b = 0; b < page_bytes; b++) {
			uint8_t want = used ? dev_ref[s * page_bytes + b] : 0x3c;

			if (back[s * page_bytes + b] != want) {
				fprintf(stderr, "H2D mode %s slot %zu byte %zu: %02x want %02x\n",
					mode_name(mode), s, b, back[s * page_bytes + b], want);
				fail();
			}
		}
	}

	/* D2D: the pages gathered into a second device buffer (a pool stands in the same place) */
	if (mode != KVT_GPU_STAGED) {
		assert_int_equal(kvt_gpu_memcpy(dev, dev_ref, dev_len), 0);
		assert_int_equal(kvt_gpu_memset(dev2, 0x77, out_len), 0);
		for (size_t i = 0; i < npages; i++) {
			segs[i].src = (uint64_t)(uintptr_t)dev + (uint64_t)perm[i] * page_bytes;
			segs[i].dst = (uint64_t)(uintptr_t)dev2 + i * page_bytes;
		}
		assert_true(kvt_gpu_copy(f->e, segs, npages, KVT_GPU_D2D, mode, f->stream) > 0);
		fence(f);
		assert_int_equal(kvt_gpu_memcpy(back, dev2, out_len), 0);
		for (size_t i = 0; i < npages; i++)
			assert_memory_equal(back + i * page_bytes,
					    dev_ref + (size_t)perm[i] * page_bytes, page_bytes);
	}
out:
	kvt_gpu_dev_free(dev);
	kvt_gpu_dev_free(dev2);
	kvt_gpu_host_free(host);
	free(dev_ref);
	free(back);
	free(segs);
	free(perm);
}

static void test_copy_modes(void **state)
{
	struct fixture *f = *state;

	for (int mode = KVT_GPU_AUTO; mode <= KVT_GPU_DMA_BATCH; mode++) {
		copy_case(f, mode, 64 << 10, 600, 0); /* > one staging half: several rounds */
		copy_case(f, mode, 4096, 3000, 0);    /* > one kernel launch of descriptors */
		copy_case(f, mode, 4100, 37, 0);      /* not a multiple of 16: bytewise path */
		copy_case(f, mode, 2 << 20, 5, 0);    /* 2 MiB blocks */
		copy_case(f, mode, 9 << 20, 3, 0);    /* big runs: direct DMA */
		copy_case(f, mode, 16 << 10, 64, 1);  /* host side scattered too */
	}
}

/* vLLM's paged layout through a memfd arena registered with CUDA, flag inside the arena. */
static void test_paged_memfd(void **state)
{
	struct fixture *f = *state;
	const uint32_t layers = 4, nb = 64, P = 4, nblocks = 6;
	const uint64_t page = 16 * 8 * 128 * 2; /* block_size 16, 8 heads, dim 128, fp16 */
	const size_t layer_len = 2 * nb * page, arena_len = 64 << 20;
	uint64_t bases[4];
	void *dl[4];
	uint8_t *ref[4];
	uint32_t ids[6 * 4];
	uint64_t addr[6];
	struct kvt_gpu_paged_layout l = {
	    .size = sizeof(l),
	    .n_layers = layers,
	    .layer_base = bases,
	    .page_bytes = page,
	    .block_stride = page,
	    .kv_stride = nb * page,
	    .n_kv = 2,
	    .pages_per_block = P,
	};
	struct kvt_gpu_seg segs[6 * 4 * 2 * 4];
	uint64_t bb = kvt_gpu_paged_block_bytes(&l);
	uint8_t *arena, *check;
	uint64_t *flag;
	long n;
	int fd;

	fd = memfd_create("kvt-arena", MFD_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, arena_len), 0);
	arena = mmap(NULL, arena_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(arena != MAP_FAILED);
	assert_int_equal(kvt_gpu_host_register(arena, arena_len), 0);
	flag = (uint64_t *)(arena + arena_len - 4096);
	*flag = 0;
	for (uint32_t i = 0; i < layers; i++) {
		ref[i] = malloc(layer_len);
		assert_non_null(ref[i]);
		dl[i] = dev_random(layer_len, ref[i]);
		bases[i] = (uint64_t)(uintptr_t)dl[i];
	}
	for (uint32_t i = 0; i < nblocks * P; i++)
		ids[i] = (uint32_t)((i * 37 + 11) % nb); /* distinct: 37 is prime to 64 */
	for (uint32_t i = 0; i < nblocks; i++)
		addr[i] = (uint64_t)(uintptr_t)arena + (uint64_t)(nblocks - 1 - i) * bb;
	memset(arena, 0xee, nblocks * bb);
	n = kvt_gpu_paged_segments(&l, ids, addr, nblocks, KVT_GPU_D2H, segs, 6 * 4 * 2 * 4);
	assert_true(n > 0);
	assert_true(kvt_gpu_copy(f->e, segs, (size_t)n, KVT_GPU_D2H, KVT_GPU_AUTO, f->stream) > 0);
	assert_int_equal(kvt_gpu_signal(f->e, f->stream, flag, 1), 0);
	assert_int_equal(kvt_gpu_flag_wait(flag, 1, 10ll * 1000000000), 0);
	for (uint32_t i = 0; i < nblocks; i++)
		for (uint32_t ly = 0; ly < layers; ly++)
			for (uint32_t k = 0; k < 2; k++)
				for (uint32_t j = 0; j < P; j++)
					assert_memory_equal(
					    (uint8_t *)(uintptr_t)addr[i] +
						((ly * 2 + k) * P + j) * page,
					    ref[ly] + k * nb * page + ids[i * P + j] * page, page);
	/* back: clear the layers, restore the pages from the arena */
	for (uint32_t i = 0; i < layers; i++)
		assert_int_equal(kvt_gpu_memset(dl[i], 0, layer_len), 0);
	n = kvt_gpu_paged_segments(&l, ids, addr, nblocks, KVT_GPU_H2D, segs, 6 * 4 * 2 * 4);
	assert_true(kvt_gpu_copy(f->e, segs, (size_t)n, KVT_GPU_H2D, KVT_GPU_AUTO, f->stream) > 0);
	assert_int_equal(kvt_gpu_signal(f->e, f->stream, flag, 2), 0);
	assert_int_equal(kvt_gpu_flag_wait(flag, 2, 10ll * 1000000000), 0);
	check = malloc(layer_len);
	assert_non_null(check);
	for (uint32_t ly = 0; ly < layers; ly++) {
		assert_int_equal(kvt_gpu_memcpy(check, dl[ly], layer_len), 0);
		for (uint32_t i = 0; i < nblocks * P; i++)
			for (uint32_t k = 0; k < 2; k++)
				assert_memory_equal(check + k * nb * page + ids[i] * page,
						    ref[ly] + k * nb * page + ids[i] * page, page);
	}
	free(check);
	for (uint32_t i = 0; i < layers; i++) {
		kvt_gpu_dev_free(dl[i]);
		free(ref[i]);
	}
	assert_int_equal(kvt_gpu_host_unregister(arena), 0);
	munmap(arena, arena_len);
	close(fd);
}

static void test_bad_args(void **state)
{
	struct fixture *f = *state;
	struct kvt_gpu_seg s = {0, 0, 16};
	uint64_t plain = 0;

	assert_int_equal(kvt_gpu_copy(NULL, &s, 1, KVT_GPU_D2H, KVT_GPU_AUTO, f->stream), -EINVAL);
	assert_int_equal(kvt_gpu_copy(f->e, &s, 1, 9, KVT_GPU_AUTO, f->stream), -EINVAL);
	assert_int_equal(kvt_gpu_copy(f->e, NULL, 0, KVT_GPU_D2H, KVT_GPU_AUTO, f->stream), 0);
	/* pageable memory cannot receive a device signal */
	assert_int_equal(kvt_gpu_signal(f->e, f->stream, &plain, 1), -EINVAL);
	assert_int_equal(kvt_gpu_signal(f->e, f->stream, (uint64_t *)((char *)f->flags + 4), 1),
			 -EINVAL);
}

static size_t idx_of_mismatch(const uint8_t *a, const uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (a[i] != b[i])
			return i;
	return n;
}

/* Quantize on device into device and host memory, dequantize from both: bytes equal to the
 * CPU reference (which test_gpu_ref bounds against the input). */
static void quant_case(struct fixture *f, const struct kvt_gpu_qparams *p, size_t ntiles)
{
	const size_t raw = kvt_gpu_q_raw_bytes(p);
	size_t enc_max = 0;
	uint8_t *x, *ref_enc, *ref_dec, *out;
	void *dx, *denc, *ddec;
	uint8_t *henc;
	struct kvt_gpu_qjob *jobs = calloc(ntiles, sizeof(*jobs));

	for (int k = 0; k < 2; k++)
		if (kvt_gpu_q_bytes(p, k) > enc_max)
			enc_max = kvt_gpu_q_bytes(p, k);
	enc_max = (enc_max + 255) & ~(size_t)255;
	x = malloc(raw * ntiles);
	ref_enc = malloc(enc_max * ntiles);
	ref_dec = malloc(raw * ntiles);
	out = malloc((raw > enc_max ? raw : enc_max) * ntiles);
	assert_non_null(jobs);
	assert_non_null(x);
	assert_non_null(ref_enc);
	assert_non_null(ref_dec);
	assert_non_null(out);
	/* finite random values of both signs and varied magnitudes */
	for (size_t i = 0; i < raw * ntiles / 2; i++) {
		float v = (float)((int64_t)(rng() % 2000001) - 1000000) / 1000000.0f *
			  (float)(1 + (i / 977) % 13);
		uint16_t h = p->dtype == KVT_GPU_BF16 ? kvt_f32_to_bf16(v) : kvt_f32_to_f16(v);

		memcpy(x + 2 * i, &h, 2);
	}
	assert_int_equal(kvt_gpu_dev_alloc(-1, raw * ntiles, &dx), 0);
	assert_int_equal(kvt_gpu_dev_alloc(-1, enc_max * ntiles, &denc), 0);
	assert_int_equal(kvt_gpu_dev_alloc(-1, raw * ntiles, &ddec), 0);
	assert_int_equal(kvt_gpu_host_alloc(enc_max * ntiles, (void **)&henc), 0);
	assert_int_equal(kvt_gpu_memcpy(dx, x, raw * ntiles), 0);
	for (size_t t = 0; t < ntiles; t++) {
		int kind = (int)(rng() & 1);

		jobs[t].kind = (uint32_t)kind;
		assert_int_equal(kvt_gpu_ref_quantize(p, kind, x + t * raw, ref_enc + t * enc_max),
				 0);
		assert_int_equal(
		    kvt_gpu_ref_dequantize(p, kind, ref_enc + t * enc_max, ref_dec + t * raw), 0);
	}
	for (int where = 0; where < 2; where++) {
		uint8_t *enc = where ? henc : (uint8_t *)denc;

		/* quantize: device tiles -> device or host */
		assert_int_equal(kvt_gpu_memset(enc, 0xa5, enc_max * ntiles), 0);
		for (size_t t = 0; t < ntiles; t++) {
			jobs[t].src = (uint64_t)(uintptr_t)dx + t * raw;
			jobs[t].dst = (uint64_t)(uintptr_t)enc + t * enc_max;
		}
		assert_true(kvt_gpu_quantize(f->e, p, jobs, ntiles, f->stream) > 0);
		fence(f);
		assert_int_equal(kvt_gpu_memcpy(out, enc, enc_max * ntiles), 0);
		for (size_t t = 0; t < ntiles; t++) {
			size_t eb = kvt_gpu_q_bytes(p, jobs[t].kind);
			size_t bad = idx_of_mismatch(out + t * enc_max, ref_enc + t * enc_max, eb);

			if (bad != eb) {
				fprintf(stderr,
					"quantize bits %d dtype %d kind %u kg %u vg %u tile %zu "
					"byte %zu/%zu: %02x want %02x\n",
					p->bits, p->dtype, jobs[t].kind, p->k_group, p->v_group, t,
					bad, eb, out[t * enc_max + bad],
					ref_enc[t * enc_max + bad]);
				fail();
			}
			/* nothing past the tile's encoded bytes was written */
			for (size_t b = eb; b < enc_max; b++)
				assert_int_equal(out[t * enc_max + b], 0xa5);
		}
		/* dequantize: encoded tiles in device or host memory -> device tiles */
		assert_int_equal(kvt_gpu_memset(ddec, 0x5a, raw * ntiles), 0);
		for (size_t t = 0; t < ntiles; t++) {
			jobs[t].src = (uint64_t)(uintptr_t)enc + t * enc_max;
			jobs[t].dst = (uint64_t)(uintptr_t)ddec + t * raw;
		}
		assert_true(kvt_gpu_dequantize(f->e, p, jobs, ntiles, f->stream) > 0);
		fence(f);
		assert_int_equal(kvt_gpu_memcpy(out, ddec, raw * ntiles), 0);
		{
			size_t bad = idx_of_mismatch(out, ref_dec, raw * ntiles);

			if (bad != raw * ntiles) {
				fprintf(stderr,
					"dequantize bits %d dtype %d kg %u vg %u byte %zu: %02x "
					"want %02x\n",
					p->bits, p->dtype, p->k_group, p->v_group, bad, out[bad],
					ref_dec[bad]);
				fail();
			}
		}
	}
	kvt_gpu_dev_free(dx);
	kvt_gpu_dev_free(denc);
	kvt_gpu_dev_free(ddec);
	kvt_gpu_host_free(henc);
	free(jobs);
	free(x);
	free(ref_enc);
	free(ref_dec);
	free(out);
}

static void test_quant(void **state)
{
	struct fixture *f = *state;
	static const uint16_t kgs[] = {8, 16, 32, 64, 128}, vgs[] = {8, 16, 32, 64, 128, 256};

	for (int dtype = KVT_GPU_FP16; dtype <= KVT_GPU_BF16; dtype++) {
		for (int bits = 4; bits <= 8; bits += 4) {
			for (size_t g = 0; g < 6; g++) {
				struct kvt_gpu_qparams p = {
				    .size = sizeof(p),
				    .bits = (uint8_t)bits,
				    .dtype = (uint8_t)dtype,
				    .tokens = 128,
				    .heads = g == 5 ? 1 : 4,
				    .head_dim = g == 5 ? 256 : 128,
				    .k_group = kgs[g % 5],
				    .v_group = vgs[g],
				};

				quant_case(f, &p, 24);
			}
		}
	}
	/* more tiles than one launch carries */
	{
		struct kvt_gpu_qparams p = {
		    .size = sizeof(p),
		    .bits = 4,
		    .dtype = KVT_GPU_FP16,
		    .tokens = 16,
		    .heads = 1,
		    .head_dim = 64,
		    .k_group = 16,
		    .v_group = 32,
		};

		quant_case(f, &p, 3000);
	}
}

static uint8_t ipc_pattern(size_t i, int gen)
{
	return gen ? (uint8_t)(i * 31 + 3) : (uint8_t)(i * 131 + 7);
}

#define IPC_BYTES (4u << 20)

/* The client's half: open the pool from the descriptor on stdin, check the daemon's bytes,
 * write new ones. */
static int ipc_child(void)
{
	struct kvt_gpu_ipc_desc d;
	struct kvt_gpu_pool *p = NULL;
	uint8_t *buf = malloc(IPC_BYTES);
	int ret;

	if (!buf || fread(&d, sizeof(d), 1, stdin) != 1)
		return 2;
	ret = kvt_gpu_pool_open(&d, &p);
	if (ret) {
		fprintf(stderr, "child: pool_open %d\n", ret);
		return 3;
	}
	if (kvt_gpu_pool_bytes(p) != d.bytes ||
	    kvt_gpu_memcpy(buf, kvt_gpu_pool_base(p), IPC_BYTES))
		return 4;
	for (size_t i = 0; i < IPC_BYTES; i++)
		if (buf[i] != ipc_pattern(i, 0))
			return 5;
	for (size_t i = 0; i < IPC_BYTES; i++)
		buf[i] = ipc_pattern(i, 1);
	if (kvt_gpu_memcpy(kvt_gpu_pool_base(p), buf, IPC_BYTES))
		return 6;
	kvt_gpu_pool_close(p);
	free(buf);
	return 0;
}

static void test_ipc_pool(void **state)
{
	struct kvt_gpu_pool_opts o = {.size = sizeof(o), .bytes = 64 << 20, .epoch = 7};
	struct kvt_gpu_pool *p = NULL, *self = NULL;
	struct kvt_gpu_ipc_desc d, bad;
	uint8_t uuid[16], *buf = malloc(IPC_BYTES);
	int to_child[2], status = -1;
	pid_t pid;

	assert_non_null(buf);
	assert_int_equal(kvt_gpu_device_uuid(0, uuid), 0);
	assert_int_equal(kvt_gpu_device_by_uuid(uuid), 0);
	o.uuid = uuid;
	assert_int_equal(kvt_gpu_pool_create(&o, &p), 0);
	assert_int_equal(kvt_gpu_pool_export(p, &d), 0);
	assert_int_equal(d.epoch, 7);
	assert_memory_equal(d.uuid, uuid, 16);
	/* a tampered descriptor is refused before CUDA sees it */
	bad = d;
	bad.magic ^= 1;
	assert_int_equal(kvt_gpu_pool_open(&bad, &self), -EINVAL);
	bad = d;
	bad.uuid[3] ^= 0xff;
	assert_int_equal(kvt_gpu_pool_open(&bad, &self), -ENODEV);
	bad = d;
	bad.reserved[0] = 1;
	assert_int_equal(kvt_gpu_pool_open(&bad, &self), -EINVAL);
	assert_null(self);
	for (size_t i = 0; i < IPC_BYTES; i++)
		buf[i] = ipc_pattern(i, 0);
	assert_int_equal(kvt_gpu_memcpy(kvt_gpu_pool_base(p), buf, IPC_BYTES), 0);

	assert_int_equal(pipe(to_child), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* a fresh process image: CUDA state is not inherited across fork */
		dup2(to_child[0], 0);
		close(to_child[1]);
		execl("/proc/self/exe", "test_gpu", "--ipc-child", (char *)NULL);
		_exit(127);
	}
	close(to_child[0]);
	assert_int_equal(write(to_child[1], &d, sizeof(d)), (ssize_t)sizeof(d));
	close(to_child[1]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_int_equal(kvt_gpu_memcpy(buf, kvt_gpu_pool_base(p), IPC_BYTES), 0);
	for (size_t i = 0; i < IPC_BYTES; i++)
		if (buf[i] != ipc_pattern(i, 1))
			fail_msg("pool byte %zu not written by the child", i);
	kvt_gpu_pool_close(p);
	free(buf);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_bad_args),	cmocka_unit_test(test_copy_modes),
	    cmocka_unit_test(test_paged_memfd), cmocka_unit_test(test_quant),
	    cmocka_unit_test(test_ipc_pool),
	};
	uint64_t seed = 0x5eed;

	if (argc > 1 && !strcmp(argv[1], "--ipc-child"))
		return ipc_child();
	if (kvt_gpu_available() <= 0) {
		printf("test_gpu: no GPU, skipped\n");
		return 77;
	}
	for (int i = 1; i + 1 < argc; i++)
		if (!strcmp(argv[i], "--seed"))
			seed = strtoull(argv[i + 1], NULL, 0);
	rng_state ^= seed;
	printf("test_gpu: seed %llu\n", (unsigned long long)seed);
	return cmocka_run_group_tests(tests, setup, teardown);
}
