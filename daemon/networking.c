/* SPDX-License-Identifier: MIT */
/*
 * networking.c - connections: the listening socket (its path, or systemd's), accepting and
 * admitting clients (daemon.max_clients and its shares), the handshake (HELLO: tenant, rings
 * and their file descriptors; LAYOUT; STATS), replies on a socket, and the end of a
 * connection (client_kill: everything it held returned; client_free; deaths counted).
 * Which message goes where is server.c's (client_sock_event); what the messages ask,
 * admin.c's, gpu_msgs.c's and ops.c's (the rings).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#ifdef KVT_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "daemon.h"
#include "holds.h"
#include "networking.h"

int sock_send(int fd, const void *buf, size_t len, const int *fds, int nfds)
{
	struct iovec iov = {(void *)buf, len};
	union {
		char buf[CMSG_SPACE(sizeof(int) * KVT_HELLO_NFDS)];
		struct cmsghdr align;
	} u;
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

	if (nfds) {
		struct cmsghdr *cm;

		memset(&u, 0, sizeof(u));
		mh.msg_control = u.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
	}
	/* Never block the loop on a client that does not read: drop it instead. */
	if (sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)len)
		return -errno ? -errno : -EIO;
	return 0;
}

int send_result(int fd, int res)
{
	struct kvt_msg_result r;

	memset(&r, 0, sizeof(r));
	kvt_msg_init(&r.h, KVT_MSG_RESULT, sizeof(r));
	r.res = res;
	return sock_send(fd, &r, sizeof(r), NULL, 0);
}

void client_free(struct kvtd *d, struct client *c)
{
	struct client **pp;

	for (pp = &d->clients; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	if (c->sock >= 0)
		close(c->sock);
	if (c->sq_efd >= 0)
		close(c->sq_efd);
	if (c->cq_efd >= 0)
		close(c->cq_efd);
	if (c->ring)
		munmap(c->ring, c->ring_size);
	for (uint32_t k = 0; k < c->nlayouts; k++)
		kvtd_geom_unref(d, c->layouts[k].geom);
	if (c->t)
		c->t->nclients--;
	if (c->t && c->device)
		kvtd_tenant_pinned(d, c->t, -1);
	free(c->holds);
	c->magic = 0;
	if (c->refused)
		d->nrefused--;
	else
		d->nclients--;
	free(c);
	d->m.clients = d->nclients;
	/* A descriptor is free again: accept() may work now. */
	accept_resume(d);
}

/*
 * A connection that ended holding something: client_deaths_total counts it when its process
 * died (or is dying) with it, not when the process closed it (kvt_close is the goodbye).
 * The process may still be on its way out now, so a pidfd is looked at on the next tick.
 */
static void death_check(struct kvtd *d, pid_t pid)
{
	int fd = pid > 0 ? (int)syscall(SYS_pidfd_open, pid, 0) : -1;

	if (fd < 0) {
		if (errno == ESRCH)
			d->m.client_deaths_total++; /* gone already */
		return; /* cannot tell (another pid namespace, a filter): not counted */
	}
	if (d->ndying == sizeof(d->dying) / sizeof(d->dying[0])) {
		close(fd);
		return;
	}
	d->dying[d->ndying++] = fd;
}

void death_tick(struct kvtd *d)
{
	for (uint32_t k = 0; k < d->ndying; k++) {
		struct pollfd p = {d->dying[k], POLLIN, 0};

		if (poll(&p, 1, 0) == 1)
			d->m.client_deaths_total++; /* readable: the process has exited */
		close(d->dying[k]);
	}
	d->ndying = 0;
}

void client_kill(struct kvtd *d, struct client *c, const char *why)
{
	bool held = c->n_leases || c->n_reserves || c->n_pins;

	if (c->dead)
		return;
	kvtd_log(why ? KVTD_LOG_WARN : KVTD_LOG_DEBUG, "client %u (pid %d, uid %u, %s) %s", c->id,
		 (int)c->pid, (unsigned)c->uid, c->name[0] ? c->name : "?",
		 why ? why : "disconnected");
	c->dead = true;
	epoll_ctl(d->ep, EPOLL_CTL_DEL, c->sock, NULL);
	if (c->sq_efd >= 0)
		epoll_ctl(d->ep, EPOLL_CTL_DEL, c->sq_efd, NULL);
	client_release_all(d, c);
	if (held && why)
		d->m.client_deaths_total++; /* ended by us: protocol errors */
	else if (held)
		death_check(d, c->pid);
	/* Freed at the end of the loop iteration: events for c may still be in flight. */
}

static bool is_admin(struct kvtd *d, int sock, uid_t uid, gid_t gid)
{
	gid_t groups[256];
	socklen_t len = sizeof(groups);

	if (uid == 0 || uid == geteuid())
		return true;
	if (!d->have_admin_gid)
		return false;
	if (gid == d->admin_gid)
		return true;
	if (getsockopt(sock, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0) {
		for (size_t i = 0; i < len / sizeof(gid_t); i++) {
			if (groups[i] == d->admin_gid)
				return true;
		}
	}
	return false;
}

static int setup_rings(struct kvtd *d, struct client *c, int fds[KVT_HELLO_NFDS])
{
	uint32_t e = d->cfg.ring_entries;
	struct kvt_shm_hdr *h;
	int ringfd = -1, ret;

	c->ring_size = kvt_shm_ring_bytes(e, 2 * e);
	ringfd = memfd_create("kvtier-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (ringfd < 0)
		return -errno;
	if (ftruncate(ringfd, c->ring_size) < 0) {
		ret = -errno;
		goto fail;
	}
	fcntl(ringfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
	c->ring = mmap(NULL, c->ring_size, PROT_READ | PROT_WRITE, MAP_SHARED, ringfd, 0);
	if (c->ring == MAP_FAILED) {
		c->ring = NULL;
		ret = -errno;
		goto fail;
	}
	h = (struct kvt_shm_hdr *)c->ring;
	h->magic = KVT_SHM_MAGIC;
	h->version = KVT_SHM_VERSION;
	h->compat = KVT_SHM_COMPAT;
	h->hdr_size = KVT_SHM_HDR_SIZE;
	h->features = KVT_SHM_F_NEED_WAKEUP;
	h->total_size = c->ring_size;
	h->sq_off = KVT_SHM_HDR_SIZE;
	h->sq_entries = e;
	h->sqe_size = sizeof(struct kvt_sqe);
	h->cq_off = h->sq_off + (uint32_t)sizeof(struct kvt_ring_ctl) + e * h->sqe_size;
	h->cq_entries = 2 * e;
	h->cqe_size = sizeof(struct kvt_cqe);
	h->scratch_off = h->cq_off + (uint32_t)sizeof(struct kvt_ring_ctl) + 2 * e * h->cqe_size;
	h->scratch_size = KVT_SCRATCH_SIZE;
	h->arena_size = c->t->size;
	h->epoch = d->epoch;
	/* The daemon's view comes from its own numbers, never from the header it shares. */
	c->sq = (struct kvt_ring_ctl *)(c->ring + KVT_SHM_HDR_SIZE);
	c->sqes = (struct kvt_sqe *)(c->ring + KVT_SHM_HDR_SIZE + sizeof(struct kvt_ring_ctl));
	c->cq = (struct kvt_ring_ctl *)((uint8_t *)c->sqes + e * sizeof(struct kvt_sqe));
	c->cqes = (struct kvt_cqe *)((uint8_t *)c->cq + sizeof(struct kvt_ring_ctl));
	c->scratch = (uint8_t *)c->cqes + 2 * e * sizeof(struct kvt_cqe);
	c->sq_entries = e;
	c->cq_entries = 2 * e;
	c->sq_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	c->cq_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (c->sq_efd < 0 || c->cq_efd < 0) {
		ret = -errno;
		goto fail;
	}
	fds[0] = ringfd;
	fds[1] = c->t->memfd;
	fds[2] = c->sq_efd;
	fds[3] = c->cq_efd;
	return 0;
fail:
	close(ringfd);
	return ret;
}

void handle_hello(struct kvtd *d, struct client *c, const struct kvt_msg_hello *m)
{
	struct kvt_msg_hello_reply r;
	int fds[KVT_HELLO_NFDS] = {-1, -1, -1, -1}, ret = 0;

	memset(&r, 0, sizeof(r));
	kvt_msg_init(&r.h, KVT_MSG_HELLO_REPLY, sizeof(r));
	r.client_id = c->id;
	r.epoch = d->epoch;
	r.daemon_version = KVT_VERSION_NUMBER;
	memcpy(c->name, m->name, sizeof(c->name));
	c->name[sizeof(c->name) - 1] = 0;
	if (c->refused) {
		ret = c->refused; /* why, now that it listens */
		goto reply;
	}
	if (c->hello) {
		ret = -KVT_EPROTOCOL;
		goto reply;
	}
	/* Minor versions talk to each other; a different major does not. */
	if (m->lib_version / 10000 != KVT_VERSION_MAJOR) {
		ret = -KVT_EVERSION;
		goto reply;
	}
	c->hello = true;
	if (m->want_admin == KVT_HELLO_DEVICE) {
		/* GPU messages only: a tenant for the keys, no rings, no arena. */
		c->t = kvtd_tenant_get(d, c->uid);
		if (!c->t) {
			ret = -ENOMEM;
			goto reply;
		}
		c->t->nclients++;
		c->device = true;
		/* Device clients register their tenant's arena with CUDA (pinned pages) while
		 * they are connected: see struct tenant. */
		kvtd_tenant_pinned(d, c->t, +1);
		goto reply;
	}
	if (m->want_admin)
		goto reply;
	c->t = kvtd_tenant_get(d, c->uid);
	if (!c->t) {
		ret = -ENOMEM;
		goto reply;
	}
	c->t->nclients++;
	ret = setup_rings(d, c, fds);
	if (ret < 0)
		goto reply;
	c->data = true;
	c->sq_ev.kind = EV_SQ;
	c->sq_ev.p = c;
	struct epoll_event ee = {.events = EPOLLIN, .data.ptr = &c->sq_ev};
	epoll_ctl(d->ep, EPOLL_CTL_ADD, c->sq_efd, &ee);
	r.arena_size = c->t->size;
	r.ring_size = c->ring_size;
reply:
	r.res = ret;
	if (sock_send(c->sock, &r, sizeof(r), fds, ret < 0 || !c->data ? 0 : KVT_HELLO_NFDS) < 0)
		client_kill(d, c, "handshake reply failed");
	if (fds[0] >= 0)
		close(fds[0]); /* the mapping keeps the ring alive */
	if (ret == -KVT_EVERSION)
		client_kill(d, c, "speaks another protocol version");
	/* A refused connection is not closed here: a peer that sent its next request behind
	 * the HELLO (kvtierctl does) would get EPIPE instead of reading why.  It goes when the
	 * peer closes it, or at daemon.handshake_timeout_ms. */
}

/* LAYOUT and CHAIN replies: res, and the host chain c (NULL: raw) its puts are encoded with. */
static int send_layout_reply(int fd, int res, const struct kvt_chain *chain)
{
	struct kvt_msg_layout_reply r;

	memset(&r, 0, sizeof(r));
	kvt_msg_init(&r.h, KVT_MSG_LAYOUT_REPLY, sizeof(r));
	r.res = res;
	if (res >= 0 && chain) {
		r.chain_id = kvt_chain_id(chain);
		snprintf(r.chain, sizeof(r.chain), "%s", kvt_chain_name(chain));
	}
	if (res >= 0 && r.chain_id && strlen(kvt_chain_name(chain)) >= sizeof(r.chain))
		r.chain_id = 0; /* a canonical name too long to send: the layout stays raw */
	else if (res >= 0 && !r.chain_id)
		snprintf(r.chain, sizeof(r.chain), "raw");
	return sock_send(fd, &r, sizeof(r), NULL, 0);
}

void handle_chain(struct kvtd *d, struct client *c, const struct kvt_msg_chain *m)
{
	const struct kvt_chain *chain = kvtd_host_chain_by_id(d, m->chain_id);

	if (send_layout_reply(c->sock, chain || !m->chain_id ? 0 : -ENOENT, chain) < 0)
		client_kill(d, c, "reply failed");
}

void handle_layout(struct kvtd *d, struct client *c, const struct kvt_msg_layout *m)
{
	const struct kvt_chain *chain = NULL;
	uint64_t fp;
	int64_t geom;
	int ret;

	if (!c->data) {
		ret = -EINVAL;
		goto out;
	}
	ret = kvt_layout_check(&m->layout);
	if (ret < 0)
		goto out;
	fp = kvt_layout_fingerprint(&m->layout);
	for (uint32_t i = 0; i < c->nlayouts; i++) {
		if (c->layouts[i].fp == fp) {
			/* asked again: the chain may have changed (kvtd_host_chain) */
			c->layouts[i].hchain =
			    kvtd_host_chain(d, fp, &d->geoms[c->layouts[i].geom].g);
			chain = c->layouts[i].hchain;
			ret = (int)i;
			goto out;
		}
	}
	if (c->nlayouts == MAX_LAYOUTS) {
		ret = -KVT_ELIMIT;
		goto out;
	}
	geom = kvtd_geom_note(d, c->t, fp, &m->layout);
	if (geom < 0) {
		ret = (int)geom;
		if (ret == -KVT_ELIMIT)
			kvtd_log(
			    KVTD_LOG_WARN,
			    "uid %u: layout refused, index.max_layouts_per_tenant = %u reached",
			    (unsigned)c->uid, d->cfg.max_layouts_per_tenant);
		goto out;
	}
	kvtd_geom_ref(d, (uint32_t)geom);
	c->layouts[c->nlayouts].geom = (uint32_t)geom;
	c->layouts[c->nlayouts].fp = fp;
	c->layouts[c->nlayouts].block_bytes = (uint32_t)kvt_layout_block_bytes(&m->layout);
	c->layouts[c->nlayouts].hchain = chain = kvtd_host_chain(d, fp, &d->geoms[geom].g);
	ret = (int)c->nlayouts++;
out:
	if (send_layout_reply(c->sock, ret, chain) < 0)
		client_kill(d, c, "reply failed");
}

void handle_stats(struct kvtd *d, struct client *c)
{
	struct kvt_msg_stats r;

	memset(&r, 0, sizeof(r));
	kvt_msg_init(&r.h, KVT_MSG_STATS, sizeof(r));
	r.puts = c->puts;
	r.gets = c->gets;
	r.hits = c->hits;
	r.misses = c->misses;
	r.lookups = c->lookups;
	r.host_capacity_bytes = d->cfg.host_capacity;
	r.host_used_bytes = c->t ? c->t->used_bytes : 0;
	r.host_blocks = c->t ? c->t->blocks : 0;
	r.evictions = c->t ? c->t->evictions : 0;
	r.host_hits = d->tier[KVTD_TIER_HOST].hits;
	r.host_misses = d->tier[KVTD_TIER_HOST].misses;
	r.promotions = d->m.promotions_total;
	r.prefetch_useful = d->m.prefetch_useful_total;
	r.prefetch_late = d->m.prefetch_late_total;
	if (sock_send(c->sock, &r, sizeof(r), NULL, 0) < 0)
		client_kill(d, c, "reply failed");
}

/* Refused connections kept until their HELLO, to answer it with the reason. */
#define REFUSED_MAX 64u

/* Logs a refusal at most once a second (a flood of them must not flood the log). */
static void refuse_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void refuse_log(const char *fmt, ...)
{
	static uint64_t last_ms;
	static unsigned more;
	uint64_t now = kvtd_now_ms();
	char msg[256];
	va_list ap;

	if (last_ms && now - last_ms < 1000) {
		more++;
		return;
	}
	last_ms = now;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (more)
		kvtd_log(KVTD_LOG_WARN, "%s (and %u more refusals)", msg, more);
	else
		kvtd_log(KVTD_LOG_WARN, "%s", msg);
	more = 0;
}

/*
 * Whether a connection of uid may be a client: 0, or -KVT_ELIMIT.  The last
 * daemon.admin_reserved_clients places are kept for admins (root's kvtierctl must get in
 * when users have taken the rest), and one non-admin uid has daemon.max_clients_per_uid.
 */
static int admission(struct kvtd *d, uid_t uid, bool admin)
{
	uint32_t mine = 0;

	if (d->nclients >= d->cfg.max_clients) {
		refuse_log("refusing a client of uid %u: daemon.max_clients = %u reached",
			   (unsigned)uid, d->cfg.max_clients);
		return -KVT_ELIMIT;
	}
	if (admin)
		return 0;
	if (d->nclients >= d->cfg.max_clients - d->cfg.admin_reserved) {
		refuse_log("refusing a client of uid %u: the last %u of daemon.max_clients = %u "
			   "are kept for admins",
			   (unsigned)uid, d->cfg.admin_reserved, d->cfg.max_clients);
		return -KVT_ELIMIT;
	}
	for (struct client *c = d->clients; c; c = c->next) {
		if (!c->dead && !c->refused && c->uid == uid)
			mine++;
	}
	if (mine >= d->cfg.max_clients_per_uid) {
		refuse_log("refusing a client of uid %u: daemon.max_clients_per_uid = %u reached",
			   (unsigned)uid, d->cfg.max_clients_per_uid);
		return -KVT_ELIMIT;
	}
	return 0;
}

/* Back to polling the listener after accept() ran out of descriptors. */
void accept_resume(struct kvtd *d)
{
	struct epoll_event e = {.events = EPOLLIN, .data.ptr = &d->lsock_ev};

	if (!d->accept_paused)
		return;
	if (epoll_ctl(d->ep, EPOLL_CTL_ADD, d->lsock, &e) == 0)
		d->accept_paused = false;
}

void accept_clients(struct kvtd *d)
{
	for (;;) {
		int fd = accept4(d->lsock, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		struct ucred cr;
		socklen_t len = sizeof(cr);
		struct client *c;
		int sndbuf = 4 << 20, refused;
		bool admin;

		if (fd < 0) {
			if (errno != EMFILE && errno != ENFILE && errno != ENOBUFS &&
			    errno != ENOMEM)
				return;
			/* The connection stays in the backlog and the listener stays readable: the
			 * loop would spin on it.  Stop polling it until a connection closes or the
			 * next tick; say so once. */
			if (!d->emfile_logged)
				kvtd_log(
				    KVTD_LOG_WARN,
				    "cannot accept connections: %s (raise LimitNOFILE or lower "
				    "daemon.max_clients); retrying at each tick",
				    strerror(errno));
			d->emfile_logged = true;
			if (epoll_ctl(d->ep, EPOLL_CTL_DEL, d->lsock, NULL) == 0)
				d->accept_paused = true;
			return;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0) {
			close(fd);
			continue;
		}
		admin = is_admin(d, fd, cr.uid, cr.gid);
		refused = admission(d, cr.uid, admin);
		if (refused && d->nrefused >= REFUSED_MAX) {
			send_result(fd, refused);
			close(fd);
			continue;
		}
		c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
		c->magic = CLIENT_MAGIC;
		c->id = ++d->next_client_id;
		c->sock = fd;
		c->sq_efd = c->cq_efd = -1;
		c->uid = cr.uid;
		c->gid = cr.gid;
		c->pid = cr.pid;
		c->free_hold = KVTD_NIL;
		c->connected_ms = kvtd_now_ms();
		c->admin = admin;
		c->refused = refused;
		c->sock_ev.kind = EV_SOCK;
		c->sock_ev.p = c;
		struct epoll_event ee = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = &c->sock_ev};
		if (epoll_ctl(d->ep, EPOLL_CTL_ADD, fd, &ee) < 0) {
			close(fd);
			free(c);
			continue;
		}
		c->next = d->clients;
		d->clients = c;
		if (refused) {
			d->nrefused++;
			continue;
		}
		d->nclients++;
		d->m.clients = d->nclients;
		d->m.connections_total++;
	}
}

static int pick_socket_path(struct kvtd *d)
{
	const char *env = getenv("KVTIER_SOCKET"), *xdg = getenv("XDG_RUNTIME_DIR");
	char dir[108];
	int n;

	if (d->cfg.socket[0])
		n = snprintf(d->sock_path, sizeof(d->sock_path), "%s", d->cfg.socket);
	else if (env && *env)
		n = snprintf(d->sock_path, sizeof(d->sock_path), "%s", env);
	else if (geteuid() == 0 || getenv("NOTIFY_SOCKET") || !xdg)
		n = snprintf(d->sock_path, sizeof(d->sock_path), "/run/kvtier/kvtier.sock");
	else
		n = snprintf(d->sock_path, sizeof(d->sock_path), "%s/kvtier/kvtier.sock", xdg);
	if (n < 0 || (size_t)n >= sizeof(d->sock_path)) {
		kvtd_log(KVTD_LOG_ERR, "socket path too long");
		return -ENAMETOOLONG;
	}
	/* Create the parent directory of a default path; an explicit path's must exist.  Its
	 * mode is the socket's access control: 0750, so only this user and group may connect
	 * (systemd's RuntimeDirectoryMode= does the same under the unit). */
	snprintf(dir, sizeof(dir), "%s", d->sock_path);
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = 0;
		if (mkdir(dir, 0750) == 0) {
			kvtd_log(KVTD_LOG_INFO,
				 "created %s (mode 0750, uid %u gid %u): only that user and group "
				 "may connect",
				 dir, (unsigned)geteuid(), (unsigned)getegid());
		} else if (errno != EEXIST) {
			int e = errno;

			kvtd_log(KVTD_LOG_ERR, "cannot create %s: %s", dir, strerror(e));
			return -e;
		}
	}
	return 0;
}

int open_listener(struct kvtd *d)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, ret;

#ifdef KVT_HAVE_SYSTEMD
	if (sd_listen_fds(1) == 1 &&
	    sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_SEQPACKET, 1, NULL, 0) > 0) {
		d->lsock = SD_LISTEN_FDS_START;
		d->lsock_from_systemd = true;
		fcntl(d->lsock, F_SETFL, fcntl(d->lsock, F_GETFL) | O_NONBLOCK);
		fcntl(d->lsock, F_SETFD, FD_CLOEXEC);
		kvtd_log(KVTD_LOG_INFO, "listening on the socket passed by systemd");
		return 0;
	}
#endif
	ret = pick_socket_path(d);
	if (ret < 0)
		return ret;
	/* Bound and listening under a temporary name, then renamed: the path appears only
	 * when it accepts connections, and a live daemon's socket is never replaced. */
	if (strlen(d->sock_path) + 5 > sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", d->sock_path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
		close(fd);
		kvtd_log(KVTD_LOG_ERR, "another kvtierd is serving %s", d->sock_path);
		return -EADDRINUSE;
	}
	close(fd);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s.new", d->sock_path);
	unlink(sa.sun_path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		goto fail;
	/* Any local user may be a tenant; the directory's mode is the access control. */
	chmod(sa.sun_path, 0666);
	if (listen(fd, 128) < 0 || rename(sa.sun_path, d->sock_path) < 0) {
		unlink(sa.sun_path);
		goto fail;
	}
	d->lsock = fd;
	kvtd_log(KVTD_LOG_INFO, "listening on %s", d->sock_path);
	return 0;
fail:
	ret = -errno;
	kvtd_log(KVTD_LOG_ERR, "cannot listen on %s: %s", d->sock_path, strerror(errno));
	close(fd);
	return ret;
}

/* Closes connections that said no HELLO within daemon.handshake_timeout_ms: an idle
 * connection must not hold a place among daemon.max_clients. */
void handshake_timeouts(struct kvtd *d)
{
	uint64_t now = kvtd_now_ms();
	unsigned n = 0;

	for (struct client *c = d->clients; c; c = c->next) {
		if (c->dead || c->hello || now - c->connected_ms < d->cfg.handshake_timeout_ms)
			continue;
		if (!c->refused) { /* (a refused one was told why already, or is dropped) */
			send_result(c->sock, -ETIMEDOUT);
			n++;
		}
		client_kill(d, c, NULL);
	}
	if (n)
		kvtd_log(KVTD_LOG_WARN,
			 "closed %u connection(s) that sent no HELLO within "
			 "daemon.handshake_timeout_ms = %u",
			 n, d->cfg.handshake_timeout_ms);
}
