/* SPDX-License-Identifier: MIT */
/*
 * server.c - kvtierd's loop.  One thread runs everything (Redis-style): an epoll loop over
 * the listening socket, every client's socket and submission eventfd, a timerfd tick, a
 * signalfd and the eventfds of the NVMe tier and the codec workers.  After any activity the
 * loop keeps polling the rings for daemon.spin_us before it sleeps again, which is what
 * keeps a request's round trip in the microseconds.
 *
 * This file owns the daemon's life (kvtd_create, kvtd_run, kvtd_destroy, SIGHUP reload) and
 * the dispatch of every event: control messages to networking.c (handshake), admin.c and
 * gpu_msgs.c; rings to ops.c; tier and codec completions to placement; and, after each,
 * the gets that placement reported ready to ops.c (kvtd_ready_drain).  The tick (as
 * Redis's serverCron) runs the timeouts and the watermark passes.
 *
 * Trust: nothing a client writes is believed; a client only ever maps its own rings and its
 * own tenant's arena.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifdef KVT_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "admin.h"
#include "daemon.h"
#include "gpu_msgs.h"
#include "holds.h"
#include "kvt_ring.h"
#include "networking.h"
#include "ops.h"
#include "server.h"

void (*kvtd_on_ready)(void);
int (*kvtd_reload)(struct kvtd_config *cfg);

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void client_sock_event(struct kvtd *d, struct client *c, uint32_t events)
{
	if (c->job) {
		/* A listing is under way: its next request waits; a hang-up ends it. */
		if (events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP))
			client_kill(d, c, NULL);
		return;
	}
	for (int round = 0; round < 16 && !c->dead; round++) {
		struct iovec iov = {d->msgbuf, KVT_MSG_MAX};
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
		ssize_t n = recvmsg(c->sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		struct kvt_msg_hdr h;
		int ret;

		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			break;
		if (n <= 0) {
			client_kill(d, c, NULL);
			return;
		}
		if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
			d->m.protocol_errors_total++;
			send_result(c->sock, -EMSGSIZE);
			continue;
		}
		ret = kvt_msg_check(d->msgbuf, (size_t)n);
		if (ret < 0) {
			d->m.protocol_errors_total++;
			send_result(c->sock, ret);
			if (ret == -KVT_EVERSION)
				client_kill(d, c, "sent a message of another protocol version");
			continue;
		}
		memcpy(&h, d->msgbuf, sizeof(h));
		if (!c->hello && h.type != KVT_MSG_HELLO) {
			d->m.protocol_errors_total++;
			send_result(c->sock, -KVT_EPROTOCOL);
			continue;
		}
		switch (h.type) {
		case KVT_MSG_HELLO:
			handle_hello(d, c, (const struct kvt_msg_hello *)d->msgbuf);
			break;
		case KVT_MSG_LAYOUT:
			handle_layout(d, c, (const struct kvt_msg_layout *)d->msgbuf);
			break;
		case KVT_MSG_STATS:
			handle_stats(d, c);
			break;
		case KVT_MSG_CHAIN:
			handle_chain(d, c, (const struct kvt_msg_chain *)d->msgbuf);
			break;
		case KVT_MSG_ADMIN:
			handle_admin(d, c, (const struct kvt_msg_admin *)d->msgbuf);
			break;
		case KVT_MSG_GPU_ATTACH:
			handle_gpu_attach(d, c);
			break;
		case KVT_MSG_GPU_OP:
			handle_gpu_op(d, c, (const struct kvt_msg_gpu_op *)d->msgbuf, (size_t)n);
			break;
		default:
			d->m.protocol_errors_total++;
			send_result(c->sock, -KVT_EPROTOCOL);
			break;
		}
	}
	if (events & (EPOLLHUP | EPOLLERR))
		client_kill(d, c, NULL);
}

int kvtd_create(const struct kvtd_config *cfg, struct kvtd **out)
{
	struct kvtd *d;
	struct itimerspec its = {0};
	sigset_t ss;
	int ret;

	*out = NULL;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->cfg = *cfg;
	d->ep = d->lsock = d->tfd = d->sfd = -1;
	kvtd_waiters_init(d);
	kvtd_log_level = cfg->log_level;
	d->msgbuf = malloc(KVT_MSG_MAX + sizeof(struct kvt_msg_result) + ADMIN_CHUNK);
	if (!d->msgbuf) {
		ret = -ENOMEM;
		goto fail;
	}
	d->salt =
	    cfg->tenant_salt[0] ? kvt_hash64(cfg->tenant_salt, strlen(cfg->tenant_salt), 0) : 0;
	d->check_counts =
	    getenv("KVTIER_CHECK_COUNTS") && !strcmp(getenv("KVTIER_CHECK_COUNTS"), "1");
	d->start_ms = kvtd_now_ms();
	d->start_unix = (uint64_t)time(NULL);
	d->epoch = (uint64_t)time(NULL) << 20 ^ (uint64_t)getpid();
	if (cfg->admin_group[0]) {
		struct group *g = getgrnam(cfg->admin_group);
		if (g) {
			d->admin_gid = g->gr_gid;
			d->have_admin_gid = true;
		}
	}
	ret = kvtd_index_init(&d->ix, (uint32_t)cfg->max_blocks);
	if (ret < 0)
		goto fail;
	d->ep = epoll_create1(EPOLL_CLOEXEC);
	if (d->ep < 0) {
		ret = -errno;
		goto fail;
	}
	ret = open_listener(d);
	if (ret < 0)
		goto fail;
	d->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	its.it_interval.tv_sec = cfg->tick_ms / 1000;
	its.it_interval.tv_nsec = (long)(cfg->tick_ms % 1000) * 1000000;
	its.it_value = its.it_interval;
	if (d->tfd < 0 || timerfd_settime(d->tfd, 0, &its, NULL) < 0) {
		ret = -errno;
		goto fail;
	}
	sigemptyset(&ss);
	sigaddset(&ss, SIGTERM);
	sigaddset(&ss, SIGINT);
	sigaddset(&ss, SIGHUP);
	sigprocmask(SIG_BLOCK, &ss, NULL);
	signal(SIGPIPE, SIG_IGN);
	/* A slot file at the file-size limit must fail a write with EFBIG, not kill us. */
	signal(SIGXFSZ, SIG_IGN);
	d->sfd = signalfd(-1, &ss, SFD_CLOEXEC | SFD_NONBLOCK);
	if (d->sfd < 0) {
		ret = -errno;
		goto fail;
	}
	d->lsock_ev = (struct ev){EV_LISTEN, NULL};
	d->tfd_ev = (struct ev){EV_TIMER, NULL};
	d->sfd_ev = (struct ev){EV_SIGNAL, NULL};
	struct epoll_event e1 = {.events = EPOLLIN, .data.ptr = &d->lsock_ev};
	struct epoll_event e2 = {.events = EPOLLIN, .data.ptr = &d->tfd_ev};
	struct epoll_event e3 = {.events = EPOLLIN, .data.ptr = &d->sfd_ev};
	if (epoll_ctl(d->ep, EPOLL_CTL_ADD, d->lsock, &e1) < 0 ||
	    epoll_ctl(d->ep, EPOLL_CTL_ADD, d->tfd, &e2) < 0 ||
	    epoll_ctl(d->ep, EPOLL_CTL_ADD, d->sfd, &e3) < 0) {
		ret = -errno;
		goto fail;
	}
	ret = kvtd_place_init(d);
	if (ret < 0)
		goto fail;
#ifdef KVT_HAVE_SYSTEMD
	uint64_t wd_usec;
	d->watchdog = sd_watchdog_enabled(0, &wd_usec) > 0;
#endif
	*out = d;
	return 0;
fail:
	kvtd_destroy(d);
	return ret;
}

static void tick(struct kvtd *d)
{
	uint64_t exp;
	ssize_t r = read(d->tfd, &exp, sizeof(exp));

	(void)r;
	handshake_timeouts(d);
	death_tick(d);
	if (!d->accept_paused)
		d->emfile_logged = false; /* a new shortage of descriptors is logged again */
	accept_resume(d);
	admin_unthrottle(d);
	kvtd_watermarks(d);
	if (d->check_counts)
		kvtd_check_counts(d);
#ifdef KVT_HAVE_SYSTEMD
	if (d->watchdog)
		sd_notify(0, "WATCHDOG=1");
#endif
}

/* Sets NEED_WAKEUP on every ring; true if some ring got work meanwhile (don't sleep). */
static bool prepare_sleep(struct kvtd *d)
{
	bool work = false;

	for (struct client *c = d->clients; c; c = c->next) {
		if (c->data && !c->dead && kvt_ring_prepare_sleep(c->sq) != c->sq_head)
			work = true;
	}
	if (work) {
		for (struct client *c = d->clients; c; c = c->next) {
			if (c->data && !c->dead)
				kvt_ring_awake(c->sq);
		}
	}
	return work;
}

/* Keys SIGHUP applies to a running daemon; every other key needs a restart. */
static const char *const live_keys[] = {
    "daemon.log_level",	   "daemon.spin_us",	 "host.high_watermark", "host.low_watermark",
    "nvme.high_watermark", "nvme.low_watermark", "gpu.high_watermark",	"gpu.low_watermark",
};

static void reload(struct kvtd *d)
{
	struct kvtd_config *nc;
	const char *sec, *name;
	char key[80], a[1100], b[1100];
	int changed = 0, restart = 0;

	if (!kvtd_reload) {
		kvtd_log(KVTD_LOG_INFO, "SIGHUP: nothing to reload");
		return;
	}
	nc = malloc(sizeof(*nc));
	if (!nc || kvtd_reload(nc) < 0) {
		kvtd_log(KVTD_LOG_ERR, "SIGHUP: configuration not reloaded; nothing changed");
		free(nc);
		return;
	}
	for (size_t i = 0; i < kvtd_config_nkeys(); i++) {
		bool live = false;

		kvtd_config_value(&d->cfg, i, &sec, &name, a, sizeof(a));
		kvtd_config_value(nc, i, &sec, &name, b, sizeof(b));
		if (!strcmp(a, b))
			continue;
		snprintf(key, sizeof(key), "%s.%s", sec, name);
		for (size_t k = 0; k < sizeof(live_keys) / sizeof(live_keys[0]); k++)
			live |= !strcmp(key, live_keys[k]);
		if (!strcmp(key, "daemon.tenant_salt"))
			a[0] = b[0] = 0; /* a secret: never logged */
		if (live) {
			kvtd_log(KVTD_LOG_WARN, "SIGHUP: %s = %s (was %s)", key, b, a);
			changed++;
		} else {
			kvtd_log(KVTD_LOG_WARN, "SIGHUP: %s = %s needs a restart (still %s)", key,
				 b, a);
			restart++;
		}
	}
	d->cfg.log_level = nc->log_level;
	kvtd_log_level = nc->log_level;
	d->cfg.spin_us = nc->spin_us;
	d->cfg.host_high = nc->host_high;
	d->cfg.host_low = nc->host_low;
	d->cfg.nvme_high = nc->nvme_high;
	d->cfg.nvme_low = nc->nvme_low;
	d->cfg.gpu_high = nc->gpu_high;
	d->cfg.gpu_low = nc->gpu_low;
	kvtd_log(KVTD_LOG_WARN, "SIGHUP: configuration reloaded: %d changed, %d need a restart",
		 changed, restart);
	free(nc);
}

/* The last line of a stop: what the daemon did in its life. */
static void log_summary(struct kvtd *d)
{
	uint64_t keys = d->m.lookup_keys_total;

	kvtd_log(KVTD_LOG_INFO,
		 "stopped after %" PRIu64 " s: %" PRIu64 " connections, %" PRIu64 " puts, %" PRIu64
		 " gets (%" PRIu64 " hits), lookup hit ratio %.3f (%" PRIu64 " of %" PRIu64
		 " blocks), %" PRIu64 " evictions, %" PRIu64 " demotions, %" PRIu64
		 " promotions, %" PRIu64 " blocks stored",
		 (kvtd_now_ms() - d->start_ms) / 1000, d->m.connections_total, d->m.puts_total,
		 d->m.gets_total, d->m.hits_total,
		 keys ? (double)d->m.lookup_hit_blocks_total / (double)keys : 0.0,
		 d->m.lookup_hit_blocks_total, keys, d->m.evictions_total, d->m.demotions_total,
		 d->m.promotions_total, (uint64_t)d->ix.count);
}

int kvtd_run(struct kvtd *d)
{
	struct epoll_event evs[64];
	uint64_t last_work = now_us();
	bool sleeping = false;
	int ret;

	/* Here, not in kvtd_create(): kvtierd forks into the background in between, and a
	 * CUDA context does not survive fork(). */
	ret = kvtd_gpu_init(d);
	if (ret < 0)
		return ret;
	ret = kvtd_nvme_recover_start(d);
	if (ret < 0)
		return ret;
	ret = kvtd_remote_start(d);
	if (ret < 0)
		return ret;

#ifdef KVT_HAVE_SYSTEMD
	sd_notifyf(0, "READY=1\nSTATUS=serving on %s\nMAINPID=%d",
		   d->sock_path[0] ? d->sock_path : "systemd socket", (int)getpid());
#endif
	kvtd_log(KVTD_LOG_INFO, "kvtierd %s serving (pid %d)", kvt_version(), (int)getpid());
	if (kvtd_on_ready)
		kvtd_on_ready();
	while (!d->stop) {
		int timeout = 0, n, work = 0;

		if (!sleeping && now_us() - last_work > d->cfg.spin_us) {
			if (prepare_sleep(d))
				last_work = now_us();
			else
				sleeping = true;
		}
		if (sleeping)
			timeout = (int)d->cfg.tick_ms;
		else if (now_us() - last_work > 2)
			sched_yield(); /* polling: let a client that shares this core run */
		kvtd_nvme_submit(d);   /* the reads this pass started, merged where they can be */
		n = epoll_wait(d->ep, evs, 64, timeout);
		if (n < 0 && errno != EINTR)
			return -errno;
		for (int i = 0; i < n; i++) {
			struct ev *e = evs[i].data.ptr;
			struct client *c = e->p;
			uint64_t v;
			ssize_t r;

			switch (e->kind) {
			case EV_LISTEN:
				accept_clients(d);
				break;
			case EV_SOCK:
				client_sock_event(d, c, evs[i].events);
				break;
			case EV_SQ:
				r = read(c->sq_efd, &v, sizeof(v));
				(void)r;
				break;
			case EV_TIMER:
				tick(d);
				break;
			case EV_CODEC:
				kvtd_cpool_event(d);
				break;
			case EV_TIER:
				kvtd_nvme_event(d);
				break;
			case EV_REMOTE:
				kvtd_remote_event(d);
				break;
			case EV_SIGNAL: {
				struct signalfd_siginfo si;
				if (read(d->sfd, &si, sizeof(si)) != sizeof(si))
					break;
				if (si.ssi_signo == SIGHUP) {
					reload(d);
					break;
				}
				kvtd_log(KVTD_LOG_INFO, "signal %u: stopping", si.ssi_signo);
				d->stop = true;
				break;
			}
			}
			/* Gets whose block came up (or went) in this event: answered before
			 * anything else can evict the block again. */
			kvtd_ready_drain(d);
		}
		if (sleeping && n > 0) {
			sleeping = false;
			for (struct client *c = d->clients; c; c = c->next) {
				if (c->data && !c->dead)
					kvt_ring_awake(c->sq);
			}
		}
		for (struct client *c = d->clients; c; c = c->next) {
			work += client_drain(d, c);
			kvtd_ready_drain(d);
			if (c->job && !c->dead)
				work += admin_job_step(d, c);
		}
		/* Prefetches only after the demand requests of this pass are on their way. */
		kvtd_prefetch_pump(d);
		kvtd_gpu_pump(d);
		kvtd_ready_drain(d);
		if (work) {
			last_work = now_us();
			sleeping = false;
		}
		for (struct client *c = d->clients, *next; c; c = next) {
			next = c->next;
			if (c->dead) {
				admin_job_free(c);
				client_free(d, c);
			}
		}
	}
#ifdef KVT_HAVE_SYSTEMD
	sd_notify(0, "STOPPING=1");
#endif
	log_summary(d);
	return 0;
}

void kvtd_destroy(struct kvtd *d)
{
	if (!d)
		return;
	/* The pool and the arena registrations go before the arenas are unmapped. */
	kvtd_gpu_fini(d);
	kvtd_place_fini(d);
	/* Reads that were in flight completed in kvtd_place_fini: their gets are answered. */
	kvtd_ready_drain(d);
	while (d->clients) {
		client_release_all(d, d->clients);
		admin_job_free(d->clients);
		client_free(d, d->clients);
	}
	for (uint32_t k = 0; k < d->ndying; k++)
		close(d->dying[k]);
	if (d->lsock >= 0) {
		close(d->lsock);
		if (!d->lsock_from_systemd && d->sock_path[0])
			unlink(d->sock_path);
	}
	if (d->tfd >= 0)
		close(d->tfd);
	if (d->sfd >= 0)
		close(d->sfd);
	if (d->ep >= 0)
		close(d->ep);
	kvtd_tenants_fini(d);
	kvtd_waiters_fini(d);
	kvtd_index_fini(&d->ix);
	free(d->msgbuf);
	free(d);
}
