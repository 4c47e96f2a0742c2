/* SPDX-License-Identifier: MIT */
/* tier_common.c - helpers the tiers share (tier_common.h). */
#include <stdarg.h>
#include <stdio.h>

#include "tier_common.h"

void kvt_tier_doneq_push(struct kvt_tier_doneq *q, struct kvt_tier_io *io)
{
	io->tier_priv[0] = 0;
	if (q->tail)
		q->tail->tier_priv[0] = (uintptr_t)io;
	else
		q->head = io;
	q->tail = io;
}

int kvt_tier_doneq_run(struct kvt_tier_doneq *q)
{
	int n = 0;

	while (q->head) {
		struct kvt_tier_io *io = q->head;

		q->head = (struct kvt_tier_io *)io->tier_priv[0];
		if (!q->head)
			q->tail = NULL;
		if (io->done)
			io->done(io);
		n++;
	}
	return n;
}

void kvt_tier_log(void (*log)(void *arg, int level, const char *msg), void *arg, const char *name,
		  int level, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (log)
		log(arg, level, buf);
	else
		fprintf(stderr, "kvtier %s: %s\n", name, buf);
}
