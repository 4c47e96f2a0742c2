/* SPDX-License-Identifier: MIT */
/*
 * gpu_bench.cu - kvtier-gpu-bench: the GPU <-> host ceilings and kvtier's copy and
 * quantization paths, measured in the same run so that every figure is reported as a ratio
 * against a ceiling of this run (DESIGN §9).
 *
 *   kvtier-gpu-bench [--out FILE.json] [--mib N] [--reps N]
 *
 * Ceilings: pinned cudaMemcpyAsync H2D, D2H, both ways at once (two streams), device-to-device
 * cudaMemcpyAsync (bytes read + written), and one cudaMemcpyAsync per 64 KiB page (the naive
 * way).  Paths: 1 and 2 MiB blocks, and 64 KiB pages (scattered over a device pool, gathered
 * into 2 MiB kvtier blocks of a memfd arena registered with cudaHostRegister) with each copy
 * mode of kvt_gpu_copy; quantize/dequantize kernels device to device (bytes read + written
 * against the device copy ceiling) and on-copy to/from the arena.  Timing: CUDA events around
 * each repetition after warm-ups; the median is reported, with min and max.
 */
#include "kvt_gpu.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "gpu_check.h"

struct result {
	std::string name, group, dir, mode;
	double bytes; /* bytes counted per repetition */
	double med_gbs, min_gbs, max_gbs;
	std::string vs; /* ceiling it is compared with */
	double ratio;
	double target; /* 0: none */
	std::string note;
};

static std::vector<result> results;
static int reps = 10, warm = 3;
static cudaStream_t s1, s2;
static cudaEvent_t ev0, ev1, evj;

/* Times fn (which enqueues one repetition on s1, and on s2 when both) with events on s1. */
static void measure(result r, const std::function<void()> &fn, bool both = false)
{
	std::vector<double> g;

	for (int i = 0; i < warm + reps; i++) {
		float ms = 0;

		CK(cudaEventRecord(ev0, s1));
		if (both)
			CK(cudaStreamWaitEvent(s2, ev0, 0));
		fn();
		if (both) {
			CK(cudaEventRecord(evj, s2));
			CK(cudaStreamWaitEvent(s1, evj, 0));
		}
		CK(cudaEventRecord(ev1, s1));
		CK(cudaEventSynchronize(ev1));
		CK(cudaGetLastError());
		CK(cudaEventElapsedTime(&ms, ev0, ev1));
		if (i >= warm)
			g.push_back(r.bytes / (ms * 1e-3) / 1e9);
	}
	std::sort(g.begin(), g.end());
	r.med_gbs = g[g.size() / 2];
	r.min_gbs = g.front();
	r.max_gbs = g.back();
	r.ratio = 0;
	results.push_back(r);
	fprintf(stderr, "  %-44s %9.1f GB/s (min %.1f max %.1f)\n", r.name.c_str(), r.med_gbs,
		r.min_gbs, r.max_gbs);
}

static result *find(const std::string &name)
{
	for (auto &r : results)
		if (r.name == name)
			return &r;
	return NULL;
}

static void compare(const std::string &name, const std::string &ceiling, double target)
{
	result *r = find(name), *c = find(ceiling);

	if (!r || !c)
		return;
	r->vs = ceiling;
	r->ratio = r->med_gbs / c->med_gbs;
	r->target = target;
}

static uint64_t rng_state = 42;
static uint64_t rng(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

__global__ void fill_kernel(uint16_t *p, size_t n, uint32_t seed, int bf16)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		uint32_t h = (uint32_t)i * 2654435761u ^ seed;

		h ^= h >> 15;
		h *= 2246822519u;
		h ^= h >> 13;
		float v = ((float)(h & 0xffffff) / 16777216.0f - 0.5f) * 8.0f;
		p[i] = bf16 ? (uint16_t)(__float_as_uint(v) >> 16)
			    : __half_as_ushort(__float2half_rn(v));
	}
}

int main(int argc, char **argv)
{
	const char *out = NULL;
	size_t mib = 1024;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--out"))
			out = argv[i + 1];
		else if (!strcmp(argv[i], "--mib"))
			mib = strtoul(argv[i + 1], NULL, 0);
		else if (!strcmp(argv[i], "--reps"))
			reps = atoi(argv[i + 1]);
	}
	if (kvt_gpu_available() <= 0) {
		fprintf(stderr, "kvtier-gpu-bench: no GPU\n");
		return 77;
	}
	const size_t total = mib << 20;	   /* bytes per repetition of a one-way transfer */
	const size_t pool_len = 2 * total; /* device pages are scattered over twice that */
	const size_t page = 64 << 10, blk = 2 << 20;
	cudaDeviceProp prop;
	int drv = 0, rt = 0;

	CK(cudaSetDevice(0));
	CK(cudaGetDeviceProperties(&prop, 0));
	CK(cudaDriverGetVersion(&drv));
	CK(cudaRuntimeGetVersion(&rt));
	CK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
	CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
	CK(cudaEventCreate(&ev0));
	CK(cudaEventCreate(&ev1));
	CK(cudaEventCreate(&evj));

	/* memory: a device pool, a second device buffer, pinned host buffers for the ceilings,
	 * and a memfd arena registered with CUDA for kvtier's paths (as the client does) */
	char *dpool, *dpool2, *dbuf;
	char *hpin, *hpin2;
	CK(cudaMalloc(&dpool, pool_len));
	CK(cudaMalloc(&dpool2, pool_len));
	CK(cudaMalloc(&dbuf, 2 * total));
	CK(cudaHostAlloc(&hpin, total, cudaHostAllocDefault));
	CK(cudaHostAlloc(&hpin2, total, cudaHostAllocDefault));
	int fd = memfd_create("kvt-bench-arena", 0);
	if (fd < 0 || ftruncate(fd, (off_t)(2 * total + 4096))) {
		perror("memfd");
		return 1;
	}
	char *arena =
	    (char *)mmap(NULL, 2 * total + 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (arena == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	memset(arena, 1, 2 * total + 4096); /* fault the pages in before registering */
	memset(hpin, 2, total);
	memset(hpin2, 3, total);
	OK(kvt_gpu_host_register(arena, 2 * total + 4096));
	char *arena2 = arena + total; /* the H2D half when both directions run */
	fill_kernel<<<1024, 256>>>((uint16_t *)dpool, pool_len / 2, 1, 0);
	fill_kernel<<<1024, 256>>>((uint16_t *)dpool2, pool_len / 2, 2, 0);
	fill_kernel<<<1024, 256>>>((uint16_t *)dbuf, total, 3, 0);
	CK(cudaDeviceSynchronize());

	fprintf(
	    stderr,
	    "kvtier-gpu-bench: %s, %d SMs, driver %d, runtime %d, %zu MiB per transfer, %d reps\n",
	    prop.name, prop.multiProcessorCount, drv, rt, mib, reps);
	fprintf(stderr, "ceilings\n");
	measure({"ceiling_h2d", "ceiling", "h2d", "cudaMemcpyAsync", (double)total},
		[&] { CK(cudaMemcpyAsync(dpool, hpin, total, cudaMemcpyHostToDevice, s1)); });
	measure({"ceiling_d2h", "ceiling", "d2h", "cudaMemcpyAsync", (double)total},
		[&] { CK(cudaMemcpyAsync(hpin, dpool, total, cudaMemcpyDeviceToHost, s1)); });
	measure(
	    {"ceiling_both", "ceiling", "both", "cudaMemcpyAsync", 2.0 * total},
	    [&] {
		    CK(cudaMemcpyAsync(hpin, dpool, total, cudaMemcpyDeviceToHost, s1));
		    CK(cudaMemcpyAsync(dpool2, hpin2, total, cudaMemcpyHostToDevice, s2));
	    },
	    true);
	measure({"ceiling_d2d", "ceiling", "d2d", "cudaMemcpyAsync (read+write)", 2.0 * total},
		[&] { CK(cudaMemcpyAsync(dpool2, dpool, total, cudaMemcpyDeviceToDevice, s1)); });
	/* the same pinned ceilings on the registered memfd arena */
	measure({"arena_h2d", "ceiling", "h2d", "cudaMemcpyAsync, memfd arena", (double)total},
		[&] { CK(cudaMemcpyAsync(dpool, arena, total, cudaMemcpyHostToDevice, s1)); });
	measure({"arena_d2h", "ceiling", "d2h", "cudaMemcpyAsync, memfd arena", (double)total},
		[&] { CK(cudaMemcpyAsync(arena, dpool, total, cudaMemcpyDeviceToHost, s1)); });

	/* engines: one per stream (an engine is single-stream); variants for the options */
	struct kvt_gpu_engine *e1, *e2, *e1o, *e2o, *e1all, *e2all;
	struct kvt_gpu_engine_opts eo;
	memset(&eo, 0, sizeof(eo));
	eo.size = sizeof(eo);
	eo.device = 0;
	OK(kvt_gpu_engine_create(&eo, &e1));
	OK(kvt_gpu_engine_create(&eo, &e2));
	eo.flags = KVT_GPU_ENGINE_BATCH_OVERLAP;
	OK(kvt_gpu_engine_create(&eo, &e1o));
	OK(kvt_gpu_engine_create(&eo, &e2o));
	eo.flags = 0;
	eo.max_ctas = (uint32_t)prop.multiProcessorCount * 4;
	OK(kvt_gpu_engine_create(&eo, &e1all));
	OK(kvt_gpu_engine_create(&eo, &e2all));

	/* segment lists: pages at random distinct slots of the device pool; host side, kvtier
	 * blocks of max(page, 2 MiB) (page-first: a block's pages are contiguous) at random
	 * distinct slots of the arena, as an allocator that has run a while leaves them */
	auto make_pages = [&](size_t psize, char *dev, char *host, bool d2h) {
		size_t n = total / psize, slots = pool_len / psize;
		size_t hb = std::max(psize, blk), per = hb / psize, hslots = total / hb;
		std::vector<uint32_t> perm(slots), hperm(hslots);
		std::vector<kvt_gpu_seg> s(n);

		for (size_t i = 0; i < slots; i++)
			perm[i] = (uint32_t)i;
		for (size_t i = slots - 1; i > 0; i--)
			std::swap(perm[i], perm[rng() % (i + 1)]);
		for (size_t i = 0; i < hslots; i++)
			hperm[i] = (uint32_t)i;
		for (size_t i = hslots - 1; i > 0; i--)
			std::swap(hperm[i], hperm[rng() % (i + 1)]);
		for (size_t i = 0; i < n; i++) {
			uint64_t d = (uint64_t)(uintptr_t)dev + (uint64_t)perm[i] * psize;
			uint64_t h = (uint64_t)(uintptr_t)host + (uint64_t)hperm[i / per] * hb +
				     (i % per) * psize;

			s[i].src = d2h ? d : h;
			s[i].dst = d2h ? h : d;
			s[i].len = psize;
		}
		return s;
	};
	struct variant {
		const char *name;
		kvt_gpu_mode mode;
		struct kvt_gpu_engine *a, *b;
	} variants[] = {
	    {"auto", KVT_GPU_AUTO, e1, e2},
	    {"dma", KVT_GPU_DMA, e1, e2},
	    {"dma_batch", KVT_GPU_DMA_BATCH, e1, e2},
	    {"dma_batch_overlap", KVT_GPU_DMA_BATCH, e1o, e2o},
	    {"staged", KVT_GPU_STAGED, e1, e2},
	    {"kernel", KVT_GPU_KERNEL, e1, e2},
	    {"kernel_all_sms", KVT_GPU_KERNEL, e1all, e2all},
	};
	/* every copy mode on one workload, each direction and both at once; the target applies
	 * to AUTO, the path a client takes */
	auto run_modes = [&](const std::string &tag, size_t psize, double target) {
		auto d2h = make_pages(psize, dpool, arena, true);
		auto h2d = make_pages(psize, dpool2, arena2, false);

		if (psize < (1u << 20)) {
			measure({tag + "_naive_d2h", tag, "d2h", "cudaMemcpyAsync per page",
				 (double)total},
				[&] {
					for (auto &x : d2h)
						CK(cudaMemcpyAsync((void *)x.dst, (void *)x.src,
								   x.len, cudaMemcpyDeviceToHost,
								   s1));
				});
			compare(tag + "_naive_d2h", "ceiling_d2h", 0);
			measure({tag + "_naive_h2d", tag, "h2d", "cudaMemcpyAsync per page",
				 (double)total},
				[&] {
					for (auto &x : h2d)
						CK(cudaMemcpyAsync((void *)x.dst, (void *)x.src,
								   x.len, cudaMemcpyHostToDevice,
								   s1));
				});
			compare(tag + "_naive_h2d", "ceiling_h2d", 0);
		}
		for (auto &v : variants) {
			std::string n = tag + "_" + v.name;
			double tgt = v.mode == KVT_GPU_AUTO ? target : 0;
			int probe = kvt_gpu_copy(v.a, d2h.data(), 1, KVT_GPU_D2H, v.mode, s1);

			CK(cudaStreamSynchronize(s1));
			if (probe == -EOPNOTSUPP) {
				fprintf(stderr, "  mode %s: not supported\n", v.name);
				continue;
			}
			OK(probe);
			measure({n + "_d2h", tag, "d2h", v.name, (double)total}, [&] {
				OK(kvt_gpu_copy(v.a, d2h.data(), d2h.size(), KVT_GPU_D2H, v.mode,
						s1));
			});
			compare(n + "_d2h", "ceiling_d2h", tgt);
			measure({n + "_h2d", tag, "h2d", v.name, (double)total}, [&] {
				OK(kvt_gpu_copy(v.a, h2d.data(), h2d.size(), KVT_GPU_H2D, v.mode,
						s1));
			});
			compare(n + "_h2d", "ceiling_h2d", tgt);
			measure(
			    {n + "_both", tag, "both", v.name, 2.0 * total},
			    [&] {
				    OK(kvt_gpu_copy(v.a, d2h.data(), d2h.size(), KVT_GPU_D2H,
						    v.mode, s1));
				    OK(kvt_gpu_copy(v.b, h2d.data(), h2d.size(), KVT_GPU_H2D,
						    v.mode, s2));
			    },
			    true);
			compare(n + "_both", "ceiling_both", tgt);
		}
	};

	fprintf(stderr, "1 MiB blocks (scattered device blocks <-> scattered arena blocks)\n");
	run_modes("blocks1MiB", 1 << 20, 0.9);
	fprintf(stderr, "2 MiB blocks\n");
	run_modes("blocks2MiB", 2 << 20, 0.9);
	fprintf(stderr,
		"64 KiB pages batched (scattered device pages <-> scattered 2 MiB arena blocks)\n");
	run_modes("pages64KiB", 64 << 10, 0.8);
	{
		/* device gather of the same pages into a pool (the GPU tier's D2D path) */
		auto d2d = make_pages(page, dpool, dpool2, true);
		measure({"pages64KiB_kernel_d2d", "pages64KiB", "d2d", "kernel (read+write)",
			 2.0 * total},
			[&] {
				OK(kvt_gpu_copy(e1, d2d.data(), d2d.size(), KVT_GPU_D2D,
						KVT_GPU_KERNEL, s1));
			});
		compare("pages64KiB_kernel_d2d", "ceiling_d2d", 0);
	}

	fprintf(stderr,
		"quantize / dequantize kernels (tiles of 64 tokens x 8 heads x 128, fp16)\n");
	{
		struct kvt_gpu_qparams p;
		memset(&p, 0, sizeof(p));
		p.size = sizeof(p);
		p.dtype = KVT_GPU_FP16;
		p.tokens = 64;
		p.heads = 8;
		p.head_dim = 128;
		p.bits = 8;
		p.k_group = 32;
		p.v_group = 32;
		const size_t raw = kvt_gpu_q_raw_bytes(&p);
		const size_t ntiles = total / raw;
		struct cfg {
			int bits, kind, kg, vg;
		} cfgs[] = {{8, KVT_GPU_KEYS, 32, 32},	 {4, KVT_GPU_KEYS, 32, 32},
			    {8, KVT_GPU_VALUES, 32, 32}, {4, KVT_GPU_VALUES, 32, 32},
			    {4, KVT_GPU_KEYS, 16, 32},	 {4, KVT_GPU_KEYS, 64, 128},
			    {4, KVT_GPU_VALUES, 32, 128}};
		std::vector<kvt_gpu_qjob> jobs(ntiles);

		for (auto &c : cfgs) {
			p.bits = (uint8_t)c.bits;
			p.k_group = (uint16_t)c.kg;
			p.v_group = (uint16_t)c.vg;
			const size_t eb =
			    (kvt_gpu_q_bytes(&p, (kvt_gpu_kv)c.kind) + 255) & ~(size_t)255;
			const double enc_bytes =
			    (double)kvt_gpu_q_bytes(&p, (kvt_gpu_kv)c.kind) * ntiles;
			const double rw = (double)raw * ntiles + enc_bytes;
			std::string tag = std::string(c.kind == KVT_GPU_KEYS ? "keys" : "values") +
					  "_int" + std::to_string(c.bits) + "_g" +
					  std::to_string(c.kind == KVT_GPU_KEYS ? c.kg : c.vg);
			auto set = [&](char *src, size_t sstride, char *dst, size_t dstride) {
				for (size_t t = 0; t < ntiles; t++) {
					jobs[t].src = (uint64_t)(uintptr_t)(src + t * sstride);
					jobs[t].dst = (uint64_t)(uintptr_t)(dst + t * dstride);
					jobs[t].kind = (uint32_t)c.kind;
					jobs[t].reserved = 0;
				}
			};

			set(dbuf, raw, dpool2, eb);
			measure({"quant_" + tag, "quant", "d2d", "quantize (read+write)", rw},
				[&] { OK(kvt_gpu_quantize(e1, &p, jobs.data(), ntiles, s1)); });
			compare("quant_" + tag, "ceiling_d2d", 0.7);
			set(dpool2, eb, dpool, raw);
			measure({"dequant_" + tag, "quant", "d2d", "dequantize (read+write)", rw},
				[&] { OK(kvt_gpu_dequantize(e1, &p, jobs.data(), ntiles, s1)); });
			compare("dequant_" + tag, "ceiling_d2d", 0.7);
			if (c.kg != 32 || c.vg != 32)
				continue;
			/* on-copy: raw fp16 bytes per second leaving or entering the GPU */
			set(dbuf, raw, arena, eb);
			measure({"quant_to_host_" + tag, "quant", "d2h",
				 "quantize-on-copy (raw bytes)", (double)raw * ntiles},
				[&] { OK(kvt_gpu_quantize(e1, &p, jobs.data(), ntiles, s1)); });
			compare("quant_to_host_" + tag, "ceiling_d2h", 0);
			set(arena, eb, dpool, raw);
			measure({"dequant_from_host_" + tag, "quant", "h2d",
				 "dequantize-on-copy (raw bytes)", (double)raw * ntiles},
				[&] { OK(kvt_gpu_dequantize(e1, &p, jobs.data(), ntiles, s1)); });
			compare("dequant_from_host_" + tag, "ceiling_h2d", 0);
		}
	}

	/* report */
	int pass = 0, fail = 0;
	printf("\n%-40s %10s %8s %-14s %6s\n", "measurement", "GB/s", "ratio", "vs", "target");
	for (auto &r : results) {
		const char *verdict = "";
		if (r.target > 0) {
			bool ok = r.ratio >= r.target;
			verdict = ok ? "PASS" : "MISS";
			ok ? pass++ : fail++;
		}
		if (r.vs.empty())
			printf("%-40s %10.1f\n", r.name.c_str(), r.med_gbs);
		else
			printf("%-40s %10.1f %8.3f %-14s %6.2f %s\n", r.name.c_str(), r.med_gbs,
			       r.ratio, r.vs.c_str(), r.target, verdict);
	}
	printf("targets: %d met, %d missed\n", pass, fail);
	if (out) {
		FILE *f = fopen(out, "w");
		char when[64];
		time_t now = time(NULL);
		uint8_t uuid[16];
		char us[41];

		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
		kvt_gpu_device_uuid(0, uuid);
		kvt_gpu_uuid_format(uuid, us);
		if (!f) {
			perror(out);
			return 1;
		}
		fprintf(f, "{\n  \"bench\": \"kvtier-gpu-bench\",\n  \"date\": \"%s\",\n", when);
		fprintf(f,
			"  \"device\": {\"name\": \"%s\", \"uuid\": \"%s\", \"sms\": %d, "
			"\"driver\": %d, \"runtime\": %d},\n",
			prop.name, us, prop.multiProcessorCount, drv, rt);
		fprintf(f,
			"  \"config\": {\"bytes_per_transfer\": %zu, \"reps\": %d, \"warmups\": "
			"%d, \"page_bytes\": %zu, \"kvtier_block_bytes\": %zu, \"statistic\": "
			"\"median of reps, CUDA events\"},\n",
			total, reps, warm, page, blk);
		fprintf(f, "  \"results\": [\n");
		for (size_t i = 0; i < results.size(); i++) {
			auto &r = results[i];
			fprintf(f,
				"    {\"name\": \"%s\", \"group\": \"%s\", \"dir\": \"%s\", "
				"\"mode\": \"%s\", \"bytes\": %.0f, \"gbps_median\": %.2f, "
				"\"gbps_min\": %.2f, \"gbps_max\": %.2f",
				r.name.c_str(), r.group.c_str(), r.dir.c_str(), r.mode.c_str(),
				r.bytes, r.med_gbs, r.min_gbs, r.max_gbs);
			if (!r.vs.empty())
				fprintf(f,
					", \"vs\": \"%s\", \"ratio\": %.4f, \"target\": %.2f, "
					"\"met\": %s",
					r.vs.c_str(), r.ratio, r.target,
					r.target > 0 ? (r.ratio >= r.target ? "true" : "false")
						     : "null");
			fprintf(f, "}%s\n", i + 1 < results.size() ? "," : "");
		}
		fprintf(f, "  ],\n  \"targets_met\": %d,\n  \"targets_missed\": %d\n}\n", pass,
			fail);
		fclose(f);
	}
	for (auto *e : {e1, e2, e1o, e2o, e1all, e2all})
		kvt_gpu_engine_destroy(e);
	kvt_gpu_host_unregister(arena);
	return 0;
}
