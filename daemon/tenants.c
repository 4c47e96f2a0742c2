/* SPDX-License-Identifier: MIT */
/*
 * tenants.c - tenants: one arena (memfd) per uid, so a client can only ever touch its own
 * tenant's data.  Which pages of an arena are used is the host tier's (tiers/tier_host.c) and
 * placement's business; this file creates, finds and destroys the arenas.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "daemon.h"

struct tenant *kvtd_tenant_get(struct kvtd *d, uint32_t uid)
{
	struct tenant *t, **nt;
	int ret;

	for (uint32_t i = 0; i < d->ntenants; i++) {
		if (d->tenants[i]->uid == uid)
			return d->tenants[i];
	}
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->magic = TENANT_MAGIC;
	t->uid = uid;
	t->size = d->cfg.host_capacity & ~(uint64_t)(KVTD_PAGE_SIZE - 1);
	t->memfd = memfd_create("kvtier-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (t->memfd < 0)
		goto fail;
	if (ftruncate(t->memfd, (off_t)t->size) < 0)
		goto fail;
	/* The arena never changes size under a client's mapping. */
	fcntl(t->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
	t->base = mmap(NULL, t->size, PROT_READ | PROT_WRITE, MAP_SHARED, t->memfd, 0);
	if (t->base == MAP_FAILED) {
		t->base = NULL;
		goto fail;
	}
	nt = realloc(d->tenants, (d->ntenants + 1) * sizeof(*nt));
	if (!nt)
		goto fail;
	d->tenants = nt;
	ret = kvtd_host_attach(d, t);
	if (ret < 0) {
		errno = -ret;
		goto fail;
	}
	d->tenants[d->ntenants++] = t;
	d->m.tenants = d->ntenants;
	return t;
fail:
	kvtd_log(KVTD_LOG_ERR, "cannot create the arena of uid %u: %s", uid, strerror(errno));
	if (t->base)
		munmap(t->base, t->size);
	if (t->memfd >= 0)
		close(t->memfd);
	free(t);
	return NULL;
}

struct tenant *kvtd_tenant_of(struct kvtd *d, const struct kvtd_blk *b)
{
	struct tenant *t = d->tenants[b->tenant];

	/* Always on: a block pointing at the wrong arena would serve another tenant's data. */
	if (t->magic != TENANT_MAGIC)
		abort();
	return t;
}

uint32_t kvtd_tenant_index(struct kvtd *d, const struct tenant *t)
{
	for (uint32_t i = 0; i < d->ntenants; i++) {
		if (d->tenants[i] == t)
			return i;
	}
	abort();
}

void kvtd_tenants_fini(struct kvtd *d)
{
	for (uint32_t i = 0; i < d->ntenants; i++) {
		struct tenant *t = d->tenants[i];
		munmap(t->base, t->size);
		close(t->memfd);
		t->magic = 0;
		free(t);
	}
	free(d->tenants);
}
