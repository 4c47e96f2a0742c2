/* SPDX-License-Identifier: MIT */
/* Where the daemon's socket is, and connecting to it: the same rules for every client. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "kvt_proto.h"

int kvt_socket_path(const char *explicit_path, char *out, size_t n)
{
	const char *env = getenv("KVTIER_SOCKET"), *xdg = getenv("XDG_RUNTIME_DIR");
	int len;

	if (explicit_path && *explicit_path)
		len = snprintf(out, n, "%s", explicit_path);
	else if (env && *env)
		len = snprintf(out, n, "%s", env);
	else if (access("/run/kvtier/kvtier.sock", F_OK) == 0 || !xdg)
		len = snprintf(out, n, "/run/kvtier/kvtier.sock");
	else
		len = snprintf(out, n, "%s/kvtier/kvtier.sock", xdg);
	if (len < 0 || (size_t)len >= n)
		return -ENAMETOOLONG;
	return 0;
}

int kvt_sock_open(const char *path, int *out)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int ret = -errno;
		close(fd);
		return ret;
	}
	*out = fd;
	return 0;
}
