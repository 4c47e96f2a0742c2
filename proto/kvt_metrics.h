/* SPDX-License-Identifier: MIT */
/*
 * kvt_metrics.h - every daemon metric, defined once.  The table generates the counters
 * struct, `kvtierctl metrics` (Prometheus text), `kvtierctl status --json` and the text
 * output, so a metric cannot exist in one and be missing from another.
 *
 * X(name, type, help): type is counter or gauge; names get the prefix "kvtier_".
 */
#ifndef KVT_METRICS_H
#define KVT_METRICS_H

#include <stdint.h>

#define KVT_METRICS(X)                                                                             \
	X(puts_total, counter, "Blocks committed by clients")                                      \
	X(put_bytes_total, counter, "Bytes of blocks committed by clients")                        \
	X(gets_total, counter, "Get (lease) requests")                                             \
	X(get_bytes_total, counter, "Bytes of blocks leased to clients")                           \
	X(hits_total, counter, "Get requests served")                                              \
	X(misses_total, counter, "Get requests for keys not stored")                               \
	X(lookups_total, counter, "Lookup requests")                                               \
	X(lookup_keys_total, counter, "Keys asked for by lookup requests")                         \
	X(put_exists_total, counter, "Reservations refused because the key was stored")            \
	X(aborts_total, counter, "Reservations aborted, by the client or by its death")            \
	X(deletes_total, counter, "Blocks deleted by clients")                                     \
	X(evictions_total, counter, "Blocks evicted from the host tier")                           \
	X(evicted_bytes_total, counter, "Bytes evicted from the host tier")                        \
	X(enospc_total, counter, "Reservations refused for lack of evictable space")               \
	X(connections_total, counter, "Client connections accepted")                               \
	X(client_deaths_total, counter, "Clients that went away holding leases or reservations")   \
	X(protocol_errors_total, counter, "Malformed messages or ring entries from clients")       \
	X(ring_requests_total, counter, "Ring entries processed")                                  \
	X(clients, gauge, "Clients connected")                                                     \
	X(tenants, gauge, "Tenants (uids) with an arena")                                          \
	X(leases, gauge, "Read leases held")                                                       \
	X(pins, gauge, "Pins held")                                                                \
	X(reservations, gauge, "Reservations in progress")

struct kvt_metrics {
#define KVT_METRIC_FIELD(name, type, help) uint64_t name;
	KVT_METRICS(KVT_METRIC_FIELD)
#undef KVT_METRIC_FIELD
};

#endif
