/* SPDX-License-Identifier: MIT */
/*
 * gpu_ref.c - CPU reference of the quantization kernels (byte layout: GPU.md) and the
 * fp16/bf16 conversions.  It performs the kernels' fp32 operations in the same order, so its
 * output is bit-identical to theirs; the CPU codecs can use it to decode GPU-encoded tiles.
 */
#include "kvt_gpu.h"
#include "../proto/kvt_half.h"

#include <errno.h>
#include <math.h>
#include <string.h>

/* The conversions are the project's one (proto/kvt_half.h), under the GPU API's names. */
uint16_t kvt_f32_to_f16(float f)
{
	return kvt_float_to_half(f);
}

float kvt_f16_to_f32(uint16_t h)
{
	return kvt_half_to_float(h);
}

uint16_t kvt_f32_to_bf16(float f)
{
	return kvt_float_to_bf16(f);
}

float kvt_bf16_to_f32(uint16_t h)
{
	return kvt_bf16_to_float(h);
}

static float load_elem(const uint16_t *src, size_t i, int dtype)
{
	return dtype == KVT_GPU_BF16 ? kvt_bf16_to_f32(src[i]) : kvt_f16_to_f32(src[i]);
}

/* One group's scale and zero, exactly as the kernels compute them (gpu_quant.cu qmeta()). */
struct qmeta {
	uint16_t sh, zh;
	float s, z, inv;
};

static struct qmeta qmeta_of(float mn, float mx, int bits)
{
	struct qmeta m;
	float scale;

	/* + 0.0f turns -0 into +0 so that min/max order never shows in the bytes */
	mn = mn + 0.0f;
	mx = mx + 0.0f;
	scale = (mx - mn) / (float)((1 << bits) - 1);
	scale = fminf(scale, 65504.0f);
	mn = fminf(fmaxf(mn, -65504.0f), 65504.0f);
	m.sh = kvt_f32_to_f16(scale);
	m.zh = kvt_f32_to_f16(mn);
	m.s = kvt_f16_to_f32(m.sh);
	m.z = kvt_f16_to_f32(m.zh);
	m.inv = m.s > 0.0f ? 1.0f / m.s : 0.0f;
	return m;
}

static unsigned quant_one(float x, const struct qmeta *m, int bits)
{
	float q = rintf((x - m->z) * m->inv);
	float maxq = (float)((1 << bits) - 1);

	q = fminf(fmaxf(q, 0.0f), maxq);
	return (unsigned)q;
}

static void put_code(uint8_t *codes, size_t i, unsigned q, int bits)
{
	if (bits == 8) {
		codes[i] = (uint8_t)q;
	} else if (i & 1) {
		codes[i / 2] = (uint8_t)((codes[i / 2] & 0x0fu) | (q << 4));
	} else {
		codes[i / 2] = (uint8_t)((codes[i / 2] & 0xf0u) | q);
	}
}

static unsigned get_code(const uint8_t *codes, size_t i, int bits)
{
	if (bits == 8)
		return codes[i];
	return (i & 1) ? codes[i / 2] >> 4 : codes[i / 2] & 0x0fu;
}

static void put_meta(uint8_t *p, const struct qmeta *m)
{
	p[0] = (uint8_t)m->sh;
	p[1] = (uint8_t)(m->sh >> 8);
	p[2] = (uint8_t)m->zh;
	p[3] = (uint8_t)(m->zh >> 8);
}

static void get_meta(const uint8_t *p, float *s, float *z)
{
	*s = kvt_f16_to_f32((uint16_t)(p[0] | p[1] << 8));
	*z = kvt_f16_to_f32((uint16_t)(p[2] | p[3] << 8));
}

int kvt_gpu_ref_quantize(const struct kvt_gpu_qparams *p, enum kvt_gpu_kv kind, const void *src,
			 void *dst)
{
	const uint16_t *x = src;
	uint8_t *codes = dst, *meta;
	size_t T, H, D, C, elems;
	int bits;

	if (!kvt_gpu_q_bytes(p, kind) || !src || !dst)
		return -EINVAL;
	T = p->tokens;
	H = p->heads;
	D = p->head_dim;
	C = H * D; /* channels of one token */
	elems = T * C;
	bits = p->bits;
	meta = codes + elems * (size_t)bits / 8;
	if (kind == KVT_GPU_KEYS) {
		size_t G = p->k_group;

		for (size_t g = 0; g < T / G; g++) {
			for (size_t c = 0; c < C; c++) {
				float mn = INFINITY, mx = -INFINITY;
				struct qmeta m;

				for (size_t t = g * G; t < (g + 1) * G; t++) {
					float v = load_elem(x, t * C + c, p->dtype);

					mn = fminf(mn, v);
					mx = fmaxf(mx, v);
				}
				m = qmeta_of(mn, mx, bits);
				put_meta(meta + (g * C + c) * 4, &m);
				for (size_t t = g * G; t < (g + 1) * G; t++) {
					float v = load_elem(x, t * C + c, p->dtype);

					put_code(codes, t * C + c, quant_one(v, &m, bits), bits);
				}
			}
		}
	} else {
		size_t G = p->v_group;

		for (size_t i = 0; i < elems; i += G) {
			float mn = INFINITY, mx = -INFINITY;
			struct qmeta m;

			for (size_t j = i; j < i + G; j++) {
				float v = load_elem(x, j, p->dtype);

				mn = fminf(mn, v);
				mx = fmaxf(mx, v);
			}
			m = qmeta_of(mn, mx, bits);
			put_meta(meta + (i / G) * 4, &m);
			for (size_t j = i; j < i + G; j++)
				put_code(codes, j, quant_one(load_elem(x, j, p->dtype), &m, bits),
					 bits);
		}
	}
	return 0;
}

int kvt_gpu_ref_dequantize(const struct kvt_gpu_qparams *p, enum kvt_gpu_kv kind, const void *src,
			   void *dst)
{
	const uint8_t *codes = src, *meta;
	uint16_t *y = dst;
	size_t T, H, D, C, elems;
	int bits;

	if (!kvt_gpu_q_bytes(p, kind) || !src || !dst)
		return -EINVAL;
	T = p->tokens;
	H = p->heads;
	D = p->head_dim;
	C = H * D;
	elems = T * C;
	bits = p->bits;
	meta = codes + elems * (size_t)bits / 8;
	for (size_t i = 0; i < elems; i++) {
		size_t gi =
		    kind == KVT_GPU_KEYS ? (i / C / p->k_group) * C + i % C : i / p->v_group;
		float s, z, v;

		get_meta(meta + gi * 4, &s, &z);
		v = fmaf((float)get_code(codes, i, bits), s, z);
		y[i] = p->dtype == KVT_GPU_BF16 ? kvt_f32_to_bf16(v) : kvt_f32_to_f16(v);
	}
	return 0;
}

int kvt_gpu_ref_xpose(const struct kvt_gpu_xgeom *x, const struct kvt_gpu_xjob *jobs, size_t n,
		      int to_pages)
{
	if (kvt_gpu_xpose_unit(x, jobs, n) < 0)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		for (uint32_t t = 0; t < x->tokens; t++) {
			for (uint32_t h = 0; h < x->heads; h++) {
				uint8_t *pg = (uint8_t *)(uintptr_t)jobs[i].page +
					      ((size_t)t * x->heads + h) * x->row_bytes;
				uint8_t *bk = (uint8_t *)(uintptr_t)jobs[i].blk +
					      h * x->head_stride + (size_t)t * x->row_bytes;

				if (to_pages)
					memcpy(pg, bk, x->row_bytes);
				else
					memcpy(bk, pg, x->row_bytes);
			}
		}
	}
	return 0;
}
