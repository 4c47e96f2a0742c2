/* SPDX-License-Identifier: MIT */
/*
 * config.h - kvtierd configuration: one table of keys with defaults (config.c), read from
 * an INI file with libinih, overridden with -o section.key=value, printed by --print-config.
 */
#ifndef KVTD_CONFIG_H
#define KVTD_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* The installed example's place: CMake passes KVTD_SYSCONFDIR (CMAKE_INSTALL_FULL_SYSCONFDIR),
 * so the default follows the install prefix (/etc for prefix /usr). */
#ifndef KVTD_SYSCONFDIR
#define KVTD_SYSCONFDIR "/etc"
#endif
#define KVTD_DEFAULT_CONFIG KVTD_SYSCONFDIR "/kvtier/kvtierd.conf"
#define KVTD_MAX_NVME_PATHS 8

struct kvtd_config {
	/* [daemon] */
	char socket[108];
	uint32_t tick_ms;
	uint32_t spin_us;
	uint32_t max_clients;
	uint32_t max_clients_per_uid;  /* connections of one non-admin uid */
	uint32_t admin_reserved;       /* of max_clients, kept for admin connections */
	uint32_t handshake_timeout_ms; /* a connection without HELLO is closed after this */
	uint32_t user_admin_rate;      /* admin commands a second, non-admin connection */
	uint32_t ring_entries;
	int log_level; /* 0 error, 1 warn, 2 info, 3 debug */
	char admin_group[64];
	char tenant_salt[129]; /* hex */
	/* [host] */
	uint64_t host_capacity;
	double host_high;
	double host_low;
	char host_codec[64];
	double host_hold_max; /* fraction of host.capacity one tenant may pin or lease */
	/* [index] */
	uint64_t max_blocks;
	uint32_t max_layouts_per_tenant;
	/* [nvme] */
	bool nvme_enabled;
	char nvme_paths[1024];
	uint64_t nvme_capacity;
	uint32_t nvme_queue_depth;
	bool nvme_direct;
	bool nvme_io_uring;
	bool nvme_fsync;
	bool nvme_admit_second;
	char nvme_codec[200]; /* a chain spec; libinih reads lines of up to 200 bytes */
	uint32_t nvme_codec_threads;
	char nvme_codec_dict[200]; /* dictionary file for a chain that needs one ("" none) */
	double nvme_high;
	double nvme_low;
	/* [gpu] */
	char gpu_device[64];   /* "GPU-<uuid>", an ordinal, or "" (the first device) */
	uint64_t gpu_capacity; /* 0: no GPU tier */
	char gpu_codec[16];
	double gpu_high;
	double gpu_low;
	bool gpu_promote; /* device gets that hit the host copy the block up to the GPU */
	/* [tiers] */
	char tiers_order[128]; /* tier names, fastest first (daemon/tierlist.c) */
	/* [remote] (daemon/remote_place.c) */
	char remote_nodes[1024];	   /* seed nodes "host:port,..."; "" = no remote tier */
	char remote_auth_file[256];	   /* "" or a file: "password" or "user password" */
	uint32_t remote_ttl;		   /* seconds a stored block lives (0: no TTL) */
	char remote_codec[200];		   /* chain the values cross the network encoded with */
	uint32_t remote_lookup_timeout_us; /* deadline of a lookup's remote part */
	uint32_t remote_get_timeout_us;	   /* deadline of a get's remote fetch */
	uint32_t remote_put_timeout_ms;	   /* deadline of a write-behind batch */
	uint32_t remote_threads;	   /* I/O threads, one connection per node each */
	uint32_t remote_queue_max;	   /* blocks waiting to be written; more are dropped */
	/* codec = auto (daemon/codec_auto.c) */
	char state_dir[200];	 /* [daemon] calibrations live here */
	double host_max_err;	 /* [host] err budget of auto */
	double nvme_max_err;	 /* [nvme] err budget of auto */
	uint64_t nvme_bandwidth; /* [nvme] bytes/s auto's chains must sustain; 0: measured */
};

/* Fills c with the built-in defaults. */
void kvtd_config_defaults(struct kvtd_config *c);

/*
 * Reads an INI file into c (keys not in the file keep their value).  Returns 0, -ENOENT
 * when the file does not exist, -EINVAL for a bad key or value (a message naming the file,
 * line and key goes to err).
 */
int kvtd_config_load(struct kvtd_config *c, const char *path, FILE *err);

/* Applies one "section.key=value" override.  Returns 0 or -EINVAL (message to err). */
int kvtd_config_set(struct kvtd_config *c, const char *assignment, FILE *err);

/* Sets one key.  Returns 0 or -EINVAL (message to err). */
int kvtd_config_set_kv(struct kvtd_config *c, const char *section, const char *key,
		       const char *value, FILE *err);

/* Cross-key checks (low < high watermark, ...). Returns 0 or -EINVAL (message to err). */
int kvtd_config_validate(const struct kvtd_config *c, FILE *err);

/* Prints c as an INI file that kvtd_config_load() reads back to the same values. */
void kvtd_config_print(const struct kvtd_config *c, FILE *out);

/* The number of keys, and key i of c: its section, name and value as text (as printed). */
size_t kvtd_config_nkeys(void);
int kvtd_config_value(const struct kvtd_config *c, size_t i, const char **section,
		      const char **name, char *val, size_t n);

/* Parses "64MiB", "1G", "4096"... into bytes. Returns 0 or -EINVAL / -ERANGE. */
int kvtd_parse_size(const char *s, uint64_t *out);

#endif
