/* SPDX-License-Identifier: MIT */
/*
 * gpu_bq_bench.cu - kvtier-gpu-bq-bench: the bq codec's CUDA encoder and decoder against a
 * device-to-device cudaMemcpy of the same bytes in the same run, JSON out.
 *
 *   kvtier-gpu-bq-bench [--kvd FILE] [--chain SPEC] [--geom L,H,D,T] [--mib N] [--reps N]
 *                       [--out FILE.json]
 *
 * Blocks: real KV from a .kvd dump (default tests/data/sympy_head640.kvd), its slabs tiled
 * into blocks of --geom (default the dump's own geometry with 64 tokens; e.g. 32,8,128,16 is
 * Llama-3-8B with 16-token pages), --mib of them in device memory.  Figures are bytes read +
 * written per second: the copy moves 2 x raw; encode reads raw and writes the records; decode
 * reads the records and writes raw.  Each is the median of --reps timed repetitions (CUDA
 * events) after a warm-up.  The records the GPU made are checked against the CPU encoder, and
 * the GPU's decode against the CPU's, on the first blocks, before anything is timed.  Decoders
 * timed: kvt_gpu_bq_decode() (a warp a slab), kvt_gpu_bq_decode_paged() into scattered pages
 * of 16 tokens (of T when T is not a multiple of 16), and the previous one-CTA-a-slab
 * kvt_gpu_bq_decode_cta() as the baseline; each one's output is checked equal to the first's.
 */
#include <cuda_runtime.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "codec.h"
#include "codec_bq.h"
#include "kvt_gpu_bq.h"
extern "C" {
#include "kvd.h"
}

#include "gpu_check.h"

static double median(std::vector<double> v)
{
	std::sort(v.begin(), v.end());
	return v[v.size() / 2];
}

int main(int argc, char **argv)
{
	const char *kvd_path = "tests/data/sympy_head640.kvd", *spec = "bq", *out = NULL;
	unsigned L = 0, H = 0, D = 0, T = 64, reps = 10;
	double mib = 1024;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--kvd") && i + 1 < argc)
			kvd_path = argv[++i];
		else if (!strcmp(argv[i], "--chain") && i + 1 < argc)
			spec = argv[++i];
		else if (!strcmp(argv[i], "--geom") && i + 1 < argc) {
			if (sscanf(argv[++i], "%u,%u,%u,%u", &L, &H, &D, &T) != 4) {
				fprintf(stderr, "--geom L,H,D,T\n");
				return 2;
			}
		} else if (!strcmp(argv[i], "--mib") && i + 1 < argc)
			mib = atof(argv[++i]);
		else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
			reps = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--out") && i + 1 < argc)
			out = argv[++i];
		else {
			fprintf(stderr,
				"usage: kvtier-gpu-bq-bench [--kvd FILE] [--chain SPEC] "
				"[--geom L,H,D,T] [--mib N] [--reps N] [--out FILE.json]\n");
			return 2;
		}
	}
	if (!reps)
		reps = 1;
	struct kvd d;
	OK(kvd_load(kvd_path, &d));
	if (!L) {
		L = d.n_layers;
		H = d.n_kv_heads;
		D = d.head_dim;
	}
	if (D != d.head_dim || d.dtype != 1) {
		fprintf(stderr, "--geom: head_dim must be the dump's (%u), fp16\n", d.head_dim);
		return 2;
	}
	struct kvt_codec_geom g = {L, H, D, T, KVT_DTYPE_FP16, 0};
	size_t raw = kvt_geom_block_bytes(&g), slab = (size_t)T * D;
	if (!raw) {
		fprintf(stderr, "bad geometry\n");
		return 2;
	}
	uint32_t n = (uint32_t)std::max(1.0, mib * 1048576.0 / (double)raw);
	n = std::min(n, 65535u);

	/* the dump's slabs (T-token windows of each layer, K/V, head), tiled into n blocks */
	struct kvt_codec_geom dg = {d.n_layers, d.n_kv_heads, D, T, KVT_DTYPE_FP16, 0};
	uint32_t dblocks = d.n_tokens / T;
	size_t draw = kvt_geom_block_bytes(&dg), dslabs = draw / (slab * 2);
	if (!dblocks) {
		fprintf(stderr, "the dump has fewer than %u tokens\n", T);
		return 2;
	}
	std::vector<uint8_t> src((size_t)dblocks * draw), host((size_t)n * raw);
	for (uint32_t b = 0; b < dblocks; b++)
		kvd_block_io(&d, d.k, d.v, b * T, T, (uint16_t *)(src.data() + b * draw), 1);
	size_t ns = raw / (slab * 2), k = 0;
	for (uint32_t b = 0; b < n; b++)
		for (size_t s = 0; s < ns; s++, k++) {
			/* keep K slabs K and V slabs V */
			size_t isv = (s / H) & 1, j = k % (dblocks * dslabs);
			while (((j % dslabs) / d.n_kv_heads & 1) != isv)
				j = (j + 1) % (dblocks * dslabs);
			memcpy(host.data() + (size_t)b * raw + s * slab * 2,
			       src.data() + (j / dslabs) * draw + (j % dslabs) * slab * 2,
			       slab * 2);
		}

	struct kvt_chain *c;
	struct kvt_bq_params p;
	struct kvt_gpu_bq *bq;
	OK(kvt_chain_parse(spec, &c));
	OK(kvt_bq_chain_params(c, &g, &p));
	OK(kvt_gpu_bq_new(&g, &p, &bq));
	size_t bound = kvt_gpu_bq_record_bound(bq);

	uint8_t *dsrc, *drec, *ddec, *dcopy;
	void *scratch;
	void **dsp, **drp, **ddp;
	uint32_t *dft, *dlen, *dbad;
	CK(cudaMalloc(&dsrc, (size_t)n * raw));
	CK(cudaMalloc(&ddec, (size_t)n * raw));
	CK(cudaMalloc(&dcopy, (size_t)n * raw));
	CK(cudaMalloc(&drec, (size_t)n * bound));
	CK(cudaMalloc(&scratch, kvt_gpu_bq_scratch_bytes(bq, n)));
	CK(cudaMalloc(&dsp, n * sizeof(void *)));
	CK(cudaMalloc(&drp, n * sizeof(void *)));
	CK(cudaMalloc(&ddp, n * sizeof(void *)));
	CK(cudaMalloc(&dft, n * 4));
	CK(cudaMalloc(&dlen, n * 4));
	CK(cudaMalloc(&dbad, n * 4));
	/* engine pages of P tokens ([P][H][D]), scattered: the page array in reverse order */
	const uint32_t ppb = T % 16 == 0 ? T / 16 : 1, P = T / ppb;
	const size_t npages = (size_t)n * L * 2 * ppb, page_bytes = (size_t)P * H * D * 2;
	uint8_t *dpages;
	void **dpp;
	CK(cudaMalloc(&dpages, npages * page_bytes));
	CK(cudaMalloc(&dpp, npages * sizeof(void *)));
	std::vector<void *> hpp(npages);
	for (size_t j = 0; j < npages; j++)
		hpp[j] = dpages + (npages - 1 - j) * page_bytes;
	CK(cudaMemcpy(dpp, hpp.data(), npages * sizeof(void *), cudaMemcpyHostToDevice));
	std::vector<void *> hs(n), hr(n), hd(n);
	std::vector<uint32_t> ft(n), len(n), bad(n);
	for (uint32_t b = 0; b < n; b++) {
		hs[b] = dsrc + (size_t)b * raw;
		hr[b] = drec + (size_t)b * bound;
		hd[b] = ddec + (size_t)b * raw;
		ft[b] = (b % 512) * T; /* sequences of 512 blocks */
	}
	CK(cudaMemcpy(dsrc, host.data(), (size_t)n * raw, cudaMemcpyHostToDevice));
	CK(cudaMemcpy(dsp, hs.data(), n * sizeof(void *), cudaMemcpyHostToDevice));
	CK(cudaMemcpy(drp, hr.data(), n * sizeof(void *), cudaMemcpyHostToDevice));
	CK(cudaMemcpy(ddp, hd.data(), n * sizeof(void *), cudaMemcpyHostToDevice));
	CK(cudaMemcpy(dft, ft.data(), n * 4, cudaMemcpyHostToDevice));

	/* correctness first: the GPU's records and blocks are the CPU's */
	OK(kvt_gpu_bq_encode(bq, (const void *const *)dsp, dft, n, drp, dlen, scratch, NULL));
	OK(kvt_gpu_bq_decode(bq, (const void *const *)drp, dlen, n, ddp, dbad, NULL));
	CK(cudaDeviceSynchronize());
	CK(cudaMemcpy(len.data(), dlen, n * 4, cudaMemcpyDeviceToHost));
	CK(cudaMemcpy(bad.data(), dbad, n * 4, cudaMemcpyDeviceToHost));
	double rec_bytes = 0;
	for (uint32_t b = 0; b < n; b++) {
		rec_bytes += len[b];
		if (bad[b]) {
			fprintf(stderr, "block %u: the GPU refused its own record\n", b);
			return 1;
		}
	}
	std::vector<uint8_t> rec(bound), dec(raw), gdec(raw);
	for (uint32_t b = 0; b < std::min(n, 8u); b++) {
		struct kvt_codec_geom gb = g;
		gb.first_token = ft[b];
		ssize_t l =
		    kvt_chain_encode(c, &gb, host.data() + (size_t)b * raw, raw, rec.data(), bound);
		std::vector<uint8_t> grec(bound);
		CK(cudaMemcpy(grec.data(), hr[b], len[b], cudaMemcpyDeviceToHost));
		CK(cudaMemcpy(gdec.data(), hd[b], raw, cudaMemcpyDeviceToHost));
		if (l != (ssize_t)len[b] || memcmp(rec.data(), grec.data(), len[b]) ||
		    kvt_chain_decode(c, rec.data(), (size_t)l, dec.data(), raw, NULL) !=
			(ssize_t)raw ||
		    memcmp(dec.data(), gdec.data(), raw)) {
			fprintf(stderr, "block %u: GPU and CPU differ\n", b);
			return 1;
		}
	}

	/* the baseline and the paged decoder give the same blocks as kvt_gpu_bq_decode() */
	{
		std::vector<uint8_t> a((size_t)n * raw), bb((size_t)n * raw),
		    pg(npages * page_bytes);
		CK(cudaMemcpy(a.data(), ddec, (size_t)n * raw, cudaMemcpyDeviceToHost));
		CK(cudaMemset(ddec, 0xa5, (size_t)n * raw));
		OK(kvt_gpu_bq_decode_cta(bq, (const void *const *)drp, dlen, n, ddp, dbad, NULL));
		OK(kvt_gpu_bq_decode_paged(bq, (const void *const *)drp, dlen, n, dpp, ppb, dbad,
					   NULL));
		CK(cudaDeviceSynchronize());
		CK(cudaMemcpy(bb.data(), ddec, (size_t)n * raw, cudaMemcpyDeviceToHost));
		CK(cudaMemcpy(pg.data(), dpages, npages * page_bytes, cudaMemcpyDeviceToHost));
		CK(cudaMemcpy(bad.data(), dbad, n * 4, cudaMemcpyDeviceToHost));
		if (memcmp(a.data(), bb.data(), (size_t)n * raw)) {
			fprintf(stderr, "kvt_gpu_bq_decode_cta and kvt_gpu_bq_decode differ\n");
			return 1;
		}
		for (uint32_t b = 0; b < n; b++) {
			if (bad[b]) {
				fprintf(stderr, "block %u: the paged decoder refused it\n", b);
				return 1;
			}
			for (uint32_t lk = 0; lk < 2 * L; lk++)
				for (uint32_t hh = 0; hh < H; hh++)
					for (uint32_t t = 0; t < T; t++) {
						size_t j = ((size_t)b * 2 * L + lk) * ppb + t / P;
						const uint8_t *pr =
						    pg.data() + (npages - 1 - j) * page_bytes +
						    ((size_t)(t % P) * H + hh) * D * 2;
						const uint8_t *cr =
						    a.data() + (size_t)b * raw +
						    (((size_t)lk * H + hh) * T + t) * D * 2;
						if (memcmp(pr, cr, (size_t)D * 2)) {
							fprintf(stderr,
								"block %u: paged decode differs\n",
								b);
							return 1;
						}
					}
		}
	}

	cudaEvent_t e0, e1;
	CK(cudaEventCreate(&e0));
	CK(cudaEventCreate(&e1));
	std::vector<double> tc, te, td, tp, tb;
	for (unsigned r = 0; r <= reps; r++) {
		float ms;
		CK(cudaEventRecord(e0));
		CK(cudaMemcpyAsync(dcopy, dsrc, (size_t)n * raw, cudaMemcpyDeviceToDevice));
		CK(cudaEventRecord(e1));
		CK(cudaEventSynchronize(e1));
		CK(cudaEventElapsedTime(&ms, e0, e1));
		if (r)
			tc.push_back(ms / 1e3);
		CK(cudaEventRecord(e0));
		OK(kvt_gpu_bq_encode(bq, (const void *const *)dsp, dft, n, drp, dlen, scratch,
				     NULL));
		CK(cudaEventRecord(e1));
		CK(cudaEventSynchronize(e1));
		CK(cudaEventElapsedTime(&ms, e0, e1));
		if (r)
			te.push_back(ms / 1e3);
		CK(cudaEventRecord(e0));
		OK(kvt_gpu_bq_decode(bq, (const void *const *)drp, dlen, n, ddp, dbad, NULL));
		CK(cudaEventRecord(e1));
		CK(cudaEventSynchronize(e1));
		CK(cudaEventElapsedTime(&ms, e0, e1));
		if (r)
			td.push_back(ms / 1e3);
		CK(cudaEventRecord(e0));
		OK(kvt_gpu_bq_decode_paged(bq, (const void *const *)drp, dlen, n, dpp, ppb, dbad,
					   NULL));
		CK(cudaEventRecord(e1));
		CK(cudaEventSynchronize(e1));
		CK(cudaEventElapsedTime(&ms, e0, e1));
		if (r)
			tp.push_back(ms / 1e3);
		CK(cudaEventRecord(e0));
		OK(kvt_gpu_bq_decode_cta(bq, (const void *const *)drp, dlen, n, ddp, dbad, NULL));
		CK(cudaEventRecord(e1));
		CK(cudaEventSynchronize(e1));
		CK(cudaEventElapsedTime(&ms, e0, e1));
		if (r)
			tb.push_back(ms / 1e3);
	}
	CK(cudaGetLastError());
	struct cudaDeviceProp prop;
	int dev;
	CK(cudaGetDevice(&dev));
	CK(cudaGetDeviceProperties(&prop, dev));
	double rawb = (double)n * raw;
	double copy = 2 * rawb / median(tc) / 1e9, enc = (rawb + rec_bytes) / median(te) / 1e9,
	       decg = (rawb + rec_bytes) / median(td) / 1e9,
	       decp = (rawb + rec_bytes) / median(tp) / 1e9,
	       decb = (rawb + rec_bytes) / median(tb) / 1e9;
	char json[4096];
	snprintf(
	    json, sizeof(json),
	    "{\"bench\": \"gpu_bq\", \"device\": \"%s\", \"chain\": \"%s\", \"geom\": [%u, %u, "
	    "%u, %u], \"kvd\": \"%s\", \"blocks\": %u, \"block_bytes\": %zu, \"ratio\": %.4f, "
	    "\"reps\": %u, \"d2d_copy_gbs\": %.1f, \"encode_gbs\": %.1f, \"decode_gbs\": "
	    "%.1f, \"encode_vs_copy\": %.3f, \"decode_vs_copy\": %.3f, \"decode_paged_gbs\": "
	    "%.1f, \"decode_paged_vs_copy\": %.3f, \"paged_tokens_a_page\": %u, "
	    "\"decode_cta_gbs\": %.1f, \"decode_cta_vs_copy\": %.3f, \"median_ms\": {\"copy\": "
	    "%.4f, \"encode\": %.4f, \"decode\": %.4f, \"decode_paged\": %.4f, "
	    "\"decode_cta\": %.4f}, \"bytes\": \"read + written; copy 2 x raw, encode raw + "
	    "records, decode records + raw\", \"checked_vs_cpu_blocks\": %u}\n",
	    prop.name, kvt_chain_name(c), L, H, D, T, kvd_path, n, raw, rawb / rec_bytes, reps,
	    copy, enc, decg, enc / copy, decg / copy, decp, decp / copy, P, decb, decb / copy,
	    median(tc) * 1e3, median(te) * 1e3, median(td) * 1e3, median(tp) * 1e3,
	    median(tb) * 1e3, std::min(n, 8u));
	fputs(json, stdout);
	if (out) {
		FILE *f = fopen(out, "w");
		if (!f || fputs(json, f) < 0 || fclose(f)) {
			perror(out);
			return 1;
		}
	}
	kvt_gpu_bq_free(bq);
	kvt_chain_free(c);
	kvd_free(&d);
	return 0;
}
