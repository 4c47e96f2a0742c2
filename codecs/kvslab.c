/* SPDX-License-Identifier: MIT */
/* kvslab.c - outlier lists shared by the KV codecs. */
#include <math.h>
#include <stdlib.h>

#include "kvslab.h"

static int cmp_desc(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return x < y ? 1 : x > y ? -1 : 0;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

size_t kv_pick_outliers(const float *x, size_t n, const float *center, uint32_t d, size_t max,
			uint32_t *idx)
{
	if (!max || !n)
		return 0;
	float *mag = malloc(n * sizeof(*mag));
	if (!mag)
		return 0;
	for (size_t i = 0; i < n; i++)
		mag[i] = fabsf(x[i] - (center ? center[i % d] : 0.0f));
	float *srt = malloc(n * sizeof(*srt));
	size_t cnt = 0;
	if (srt) {
		memcpy(srt, mag, n * sizeof(*srt));
		qsort(srt, n, sizeof(*srt), cmp_desc);
		float thr = srt[max < n ? max - 1 : n - 1];
		for (size_t i = 0; i < n && cnt < max; i++)
			if (mag[i] >= thr && mag[i] > 0)
				idx[cnt++] = (uint32_t)i;
		qsort(idx, cnt, sizeof(*idx), cmp_u32);
		free(srt);
	}
	free(mag);
	return cnt;
}

void kv_put_varint(struct wbuf *w, uint32_t v)
{
	while (v >= 0x80) {
		wb_u8(w, (uint8_t)(v | 0x80));
		v >>= 7;
	}
	wb_u8(w, (uint8_t)v);
}

uint32_t kv_get_varint(struct rbuf *r)
{
	uint32_t v = 0;
	for (unsigned sh = 0; sh < 35; sh += 7) {
		uint8_t b = rb_u8(r);
		v |= (uint32_t)(b & 0x7f) << sh;
		if (!(b & 0x80))
			return v;
	}
	r->err = -EBADMSG;
	return 0;
}

void kv_write_outliers(struct wbuf *w, const uint32_t *idx, size_t cnt, const uint8_t *slab)
{
	uint32_t prev = 0;
	kv_put_varint(w, (uint32_t)cnt);
	for (size_t i = 0; i < cnt; i++) {
		kv_put_varint(w, idx[i] - prev);
		prev = idx[i] + 1;
		wb_bytes(w, slab + 2 * (size_t)idx[i], 2);
	}
}

int kv_read_outliers(struct rbuf *r, uint8_t *out, size_t n, size_t max)
{
	uint32_t cnt = kv_get_varint(r);
	size_t pos = 0;
	if (r->err || cnt > max || cnt > n)
		return -EBADMSG;
	for (uint32_t i = 0; i < cnt; i++) {
		uint32_t gap = kv_get_varint(r);
		const uint8_t *v = rb_take(r, 2);
		if (!v || gap >= n - pos)
			return -EBADMSG;
		pos += gap;
		memcpy(out + 2 * pos, v, 2);
		pos++;
	}
	return 0;
}

static unsigned ref_bits(uint32_t T)
{
	unsigned b = 1;
	while ((1u << b) < T)
		b++;
	return b;
}

void kv_write_refs(struct wbuf *w, const uint16_t *ref, uint32_t T)
{
	unsigned rb = ref_bits(T), nb = 0;
	uint32_t nref = 0;
	uint8_t *bm = wb_reserve(w, (T + 7) / 8);
	if (!bm)
		return;
	memset(bm, 0, (T + 7) / 8);
	for (uint32_t t = 0; t < T; t++)
		if (ref[t]) {
			bm[t / 8] = (uint8_t)(bm[t / 8] | 1u << (t % 8));
			nref++;
		}
	uint8_t *p = wb_reserve(w, packed_len(nref, rb));
	if (!p)
		return;
	uint64_t acc = 0;
	size_t k = 0;
	for (uint32_t t = 0; t < T; t++) {
		if (!ref[t])
			continue;
		acc |= (uint64_t)(ref[t] - 1) << nb;
		for (nb += rb; nb >= 8; nb -= 8, acc >>= 8)
			p[k++] = (uint8_t)acc;
	}
	if (nb)
		p[k] = (uint8_t)acc;
}

int kv_read_refs(struct rbuf *r, uint16_t *ref, uint32_t T)
{
	unsigned rb = ref_bits(T), nb = 0;
	uint32_t nref = 0;
	const uint8_t *bm = rb_take(r, (T + 7) / 8);
	if (!bm)
		return -EBADMSG;
	for (uint32_t t = 0; t < T; t++)
		nref += bm[t / 8] >> (t % 8) & 1;
	const uint8_t *p = rb_take(r, packed_len(nref, rb));
	if (!p)
		return -EBADMSG;
	uint64_t acc = 0;
	size_t k = 0;
	for (uint32_t t = 0; t < T; t++) {
		ref[t] = 0;
		if (!(bm[t / 8] >> (t % 8) & 1))
			continue;
		while (nb < rb) {
			acc |= (uint64_t)p[k++] << nb;
			nb += 8;
		}
		uint32_t v = (uint32_t)(acc & ((1u << rb) - 1));
		acc >>= rb;
		nb -= rb;
		if (v >= t)
			return -EBADMSG;
		ref[t] = (uint16_t)(v + 1);
	}
	return 0;
}
