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

static void wb_varint(struct wbuf *w, uint32_t v)
{
	while (v >= 0x80) {
		wb_u8(w, (uint8_t)(v | 0x80));
		v >>= 7;
	}
	wb_u8(w, (uint8_t)v);
}

static uint32_t rb_varint(struct rbuf *r)
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
	wb_varint(w, (uint32_t)cnt);
	for (size_t i = 0; i < cnt; i++) {
		wb_varint(w, idx[i] - prev);
		prev = idx[i] + 1;
		wb_bytes(w, slab + 2 * (size_t)idx[i], 2);
	}
}

int kv_read_outliers(struct rbuf *r, uint8_t *out, size_t n, size_t max)
{
	uint32_t cnt = rb_varint(r);
	size_t pos = 0;
	if (r->err || cnt > max || cnt > n)
		return -EBADMSG;
	for (uint32_t i = 0; i < cnt; i++) {
		uint32_t gap = rb_varint(r);
		const uint8_t *v = rb_take(r, 2);
		if (!v || gap >= n - pos)
			return -EBADMSG;
		pos += gap;
		memcpy(out + 2 * pos, v, 2);
		pos++;
	}
	return 0;
}
