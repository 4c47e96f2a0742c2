/* SPDX-License-Identifier: MIT */
/*
 * gpu_msgs.h - the GPU tier's messages (gpu_msgs.c).
 */
#ifndef KVTD_GPU_MSGS_H
#define KVTD_GPU_MSGS_H

#include <stddef.h>

struct kvtd;
struct client;
struct kvt_msg_gpu_op;

void handle_gpu_attach(struct kvtd *d, struct client *c);
/* A GPU_OP message of n bytes (its batch checked here) and its reply. */
void handle_gpu_op(struct kvtd *d, struct client *c, const struct kvt_msg_gpu_op *m, size_t n);

#endif
