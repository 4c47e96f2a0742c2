/* SPDX-License-Identifier: MIT */
#include "kvd.h"
#include "../proto/kvt_half.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KVD_HDR 104

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void wr32(uint8_t *p, uint32_t v)
{
	p[0] = v;
	p[1] = v >> 8;
	p[2] = v >> 16;
	p[3] = v >> 24;
}

static int read_all(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EBADMSG;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int kvd_load(const char *path, struct kvd *out)
{
	uint8_t hdr[KVD_HDR];
	struct stat st;
	int fd, ret;
	size_t kv, q, need;

	memset(out, 0, sizeof(*out));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ret = -EBADMSG;
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out;
	}
	if ((size_t)st.st_size < KVD_HDR || read_all(fd, hdr, KVD_HDR) < 0)
		goto out;
	if (memcmp(hdr, "KVDUMP01", 8) != 0)
		goto out;
	out->n_layers = rd32(hdr + 8);
	out->n_kv_heads = rd32(hdr + 12);
	out->n_q_heads = rd32(hdr + 16);
	out->head_dim = rd32(hdr + 20);
	out->n_tokens = rd32(hdr + 24);
	out->n_q_pos = rd32(hdr + 28);
	out->dtype = rd32(hdr + 32);
	ret = -EINVAL;
	if (out->dtype != 1 || !out->n_layers || !out->n_kv_heads || !out->n_q_heads ||
	    !out->head_dim || !out->n_tokens || out->n_q_pos > out->n_tokens ||
	    out->n_q_heads % out->n_kv_heads || out->n_layers > 4096 || out->n_kv_heads > 4096 ||
	    out->n_q_heads > 4096 || out->head_dim > 4096 || out->n_tokens > (1u << 26))
		goto out;
	memcpy(out->source, hdr + 40, 64);
	out->source[64] = 0;
	kv = kvd_kv_elems(out) * 2;
	q = kvd_q_elems(out) * 2;
	need = KVD_HDR + out->n_tokens + 2 * kv + q;
	if ((size_t)st.st_size != need) {
		ret = -EBADMSG;
		goto out;
	}
	out->mem_len = out->n_tokens + 2 * kv + q + 64;
	out->mem = aligned_alloc(64, (out->mem_len + 63) & ~(size_t)63);
	if (!out->mem) {
		ret = -ENOMEM;
		goto out;
	}
	/* K/V/Q first so they are aligned, tokens last. */
	out->k = out->mem;
	out->v = (uint16_t *)((uint8_t *)out->mem + kv);
	out->q = (uint16_t *)((uint8_t *)out->mem + 2 * kv);
	out->tokens = (uint8_t *)out->mem + 2 * kv + q;
	ret = read_all(fd, out->tokens, out->n_tokens);
	if (!ret)
		ret = read_all(fd, out->k, kv);
	if (!ret)
		ret = read_all(fd, out->v, kv);
	if (!ret)
		ret = read_all(fd, out->q, q);
out:
	close(fd);
	if (ret < 0) {
		free(out->mem);
		memset(out, 0, sizeof(*out));
	}
	return ret;
}

void kvd_free(struct kvd *d)
{
	if (!d)
		return;
	free(d->mem);
	memset(d, 0, sizeof(*d));
}

int kvd_save(const char *path, const struct kvd *d)
{
	uint8_t hdr[KVD_HDR] = {0};
	size_t kv = kvd_kv_elems(d) * 2, q = kvd_q_elems(d) * 2;

	memcpy(hdr, "KVDUMP01", 8);
	wr32(hdr + 8, d->n_layers);
	wr32(hdr + 12, d->n_kv_heads);
	wr32(hdr + 16, d->n_q_heads);
	wr32(hdr + 20, d->head_dim);
	wr32(hdr + 24, d->n_tokens);
	wr32(hdr + 28, d->n_q_pos);
	wr32(hdr + 32, 1);
	wr32(hdr + 36, (uint32_t)strnlen(d->source, 64));
	memcpy(hdr + 40, d->source, strnlen(d->source, 64));
	const void *parts[] = {hdr, d->tokens, d->k, d->v, d->q};
	const size_t lens[] = {KVD_HDR, d->n_tokens, kv, kv, q};
	return kvd_write_file(path, parts, lens, 5);
}

void kvd_block_io(const struct kvd *d, uint16_t *k, uint16_t *v, uint32_t t0, uint32_t bt,
		  uint16_t *blk, int dir)
{
	size_t D = d->head_dim, o = 0;
	for (uint32_t l = 0; l < d->n_layers; l++)
		for (int kv = 0; kv < 2; kv++)
			for (uint32_t h = 0; h < d->n_kv_heads; h++) {
				uint16_t *base =
				    (kv ? v : k) +
				    (((size_t)l * d->n_kv_heads + h) * d->n_tokens + t0) * D;
				if (dir > 0)
					memcpy(blk + o, base, bt * D * 2);
				else
					memcpy(base, blk + o, bt * D * 2);
				o += bt * D;
			}
}

int kvd_write_file(const char *path, const void *const *parts, const size_t *lens, int n)
{
	char tmp[4096];
	FILE *f;
	int rc = 0;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	f = fopen(tmp, "wb");
	if (!f)
		return -errno;
	for (int i = 0; i < n && !rc; i++)
		if (lens[i] && fwrite(parts[i], 1, lens[i], f) != lens[i])
			rc = -EIO;
	if (fclose(f) && !rc)
		rc = -EIO;
	if (!rc && rename(tmp, path))
		rc = -errno;
	if (rc)
		remove(tmp);
	return rc;
}

int kvd_parse_u32(const char *s, uint32_t *v)
{
	char *e;
	unsigned long x;

	errno = 0;
	x = strtoul(s, &e, 10);
	if (errno || e == s || *e || x > UINT32_MAX || s[0] == '-')
		return -1;
	*v = (uint32_t)x;
	return 0;
}

int kvd_parse_range(const char *s, uint32_t *a, uint32_t *b)
{
	char buf[64], *c;

	if (strlen(s) >= sizeof(buf))
		return -1;
	strcpy(buf, s);
	c = strchr(buf, ':');
	if (!c)
		return -1;
	*c = 0;
	if (kvd_parse_u32(buf, a) || kvd_parse_u32(c + 1, b) || *a >= *b)
		return -1;
	return 0;
}

float kvd_half_to_float(uint16_t h)
{
	return kvt_half_to_float(h);
}

uint16_t kvd_float_to_half(float x)
{
	return kvt_float_to_half(x);
}
