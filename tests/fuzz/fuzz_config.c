/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: kvtierd's configuration parser.  Invariants: any input is either accepted or
 * refused with -EINVAL, never crashes; an accepted configuration printed with
 * --print-config's code reads back to exactly the same configuration.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int load_from(const void *buf, size_t n, struct kvtd_config *c)
{
	char path[64];
	int fd = memfd_create("kvtier-fuzz-conf", MFD_CLOEXEC), ret;

	if (fd < 0)
		return -errno;
	if (write(fd, buf, n) != (ssize_t)n) {
		close(fd);
		return -EIO;
	}
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ret = kvtd_config_load(c, path, NULL);
	close(fd);
	return ret;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kvtd_config a, b;
	char *out = NULL;
	size_t len = 0;
	FILE *f;
	int ret;

	kvtd_config_defaults(&a);
	ret = load_from(data, size, &a);
	if (ret != 0 && ret != -EINVAL)
		abort();
	if (ret != 0)
		return 0;
	f = open_memstream(&out, &len);
	if (!f)
		return 0;
	kvtd_config_print(&a, f);
	fclose(f);
	kvtd_config_defaults(&b);
	if (load_from(out, len, &b) != 0 || memcmp(&a, &b, sizeof(a)) != 0)
		abort();
	free(out);
	return 0;
}
