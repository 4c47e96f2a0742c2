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
	X(lookup_hit_blocks_total, counter,                                                        \
	  "Keys that lookup requests found (the prefix lengths)")                                  \
	X(lookup_miss_blocks_total, counter,                                                       \
	  "Keys of lookup requests past the found prefix (not found, or after a miss)")            \
	X(put_exists_total, counter, "Reservations refused because the key was stored")            \
	X(aborts_total, counter, "Reservations aborted, by the client or by its death")            \
	X(deletes_total, counter, "Blocks deleted by clients")                                     \
	X(evictions_total, counter, "Blocks evicted from the host tier")                           \
	X(evicted_bytes_total, counter, "Bytes evicted from the host tier")                        \
	X(host_encoded_blocks, gauge,                                                              \
	  "Host tier blocks stored as records of the host chain (host.codec)")                     \
	X(host_raw_bytes, gauge, "Bytes of the host tier's blocks decoded (raw)")                  \
	X(host_stored_bytes, gauge,                                                                \
	  "Bytes the host tier's blocks take as stored (records or raw)")                          \
	X(enospc_total, counter, "Reservations refused for lack of evictable space")               \
	X(connections_total, counter, "Client connections accepted")                               \
	X(client_deaths_total, counter,                                                            \
	  "Client processes that died holding leases, reservations or pins")                       \
	X(protocol_errors_total, counter, "Malformed messages or ring entries from clients")       \
	X(admin_refused_total, counter, "Admin commands refused by daemon.user_admin_rate")        \
	X(ring_requests_total, counter, "Ring entries processed")                                  \
	X(demotions_total, counter, "Blocks written from the host tier to NVMe")                   \
	X(demote_bytes_total, counter, "Record bytes written to NVMe by demotions")                \
	X(demote_failures_total, counter, "Evictions that could not demote and dropped the block") \
	X(promotions_total, counter, "Blocks read back from NVMe into the host tier")              \
	X(codec_offloop_encodes_total, counter,                                                    \
	  "Demotions encoded on a codec thread (background, between the watermarks)")              \
	X(codec_offloop_decodes_total, counter, "Promotions decoded on a codec thread")            \
	X(demotions_raw_fallback_total, counter,                                                   \
	  "Demotions stored raw because space was needed at once (codec threads were busy)")       \
	X(promote_bytes_total, counter, "Block bytes promoted from NVMe")                          \
	X(nvme_evictions_total, counter, "Copies evicted from the NVMe tier")                      \
	X(nvme_admission_rejects_total, counter, "Evicted blocks not admitted to NVMe (unused)")   \
	X(nvme_write_errors_total, counter, "NVMe record writes that failed")                      \
	X(nvme_read_errors_total, counter, "NVMe record reads that failed")                        \
	X(nvme_corrupt_total, counter, "NVMe records that failed a check and became misses")       \
	X(nvme_recovered_total, counter, "NVMe records recovered at start")                        \
	X(nvme_recovering, gauge,                                                                  \
	  "1 while NVMe records are recovered (their blocks are misses; puts, deletes refused)")   \
	X(nvme_recovery_scanned_bytes, gauge, "Bytes of slot files scanned by the recovery")       \
	X(nvme_recovery_total_bytes, gauge, "Bytes of slot files the recovery scans")              \
	X(nvme_recovery_dropped_corrupt_total, counter,                                            \
	  "Records not recovered: they failed their check")                                        \
	X(nvme_recovery_dropped_unreadable_total, counter,                                         \
	  "Records not recovered: a read error at start")                                          \
	X(nvme_recovery_dropped_cut_total, counter,                                                \
	  "Records not recovered: their end was cut off a truncated slot file")                    \
	X(nvme_recovery_dropped_stale_total, counter,                                              \
	  "Records not recovered: an older copy of a key that has a newer one")                    \
	X(nvme_recovery_dropped_foreign_total, counter,                                            \
	  "Records not recovered: written by another nvme.codec or nvme.codec_dict")               \
	X(nvme_recovery_dropped_unplaceable_total, counter,                                        \
	  "Records not recovered: no room in the index or the owner's arena, or key in use")       \
	X(prefetch_requests_total, counter, "Prefetch requests received")                          \
	X(prefetch_issued_total, counter, "Prefetch reads started on NVMe")                        \
	X(prefetch_useful_total, counter, "Prefetched blocks later read by a get")                 \
	X(prefetch_wasted_total, counter, "Prefetched blocks evicted before any get read them")    \
	X(prefetch_late_total, counter, "Gets that found their block's prefetch still in flight")  \
	X(prefetch_dropped_total, counter,                                                         \
	  "Prefetch requests dropped: queue full or deadline passed")                              \
	X(prefetch_resident_total, counter, "Prefetch requests for blocks already on the host")    \
	X(remote_puts_queued_total, counter, "Committed blocks queued for the remote tier")        \
	X(remote_put_dropped_total, counter,                                                       \
	  "Blocks not written remotely: remote.queue_max blocks were waiting")                     \
	X(remote_puts_total, counter, "Blocks stored in the remote tier (or already there)")       \
	X(remote_put_bytes_total, counter, "Value bytes sent to the remote tier")                  \
	X(remote_put_errors_total, counter, "Remote writes that failed (cluster down, timeout)")   \
	X(remote_lookups_total, counter, "Lookups that asked the remote tier for their suffix")    \
	X(remote_lookup_hit_blocks_total, counter, "Keys lookups found in the remote tier")        \
	X(remote_gets_total, counter, "Gets fetched from the remote tier")                         \
	X(remote_hits_total, counter, "Remote fetches installed in the host tier")                 \
	X(remote_misses_total, counter, "Remote fetches that found nothing usable (a miss)")       \
	X(remote_corrupt_total, counter,                                                           \
	  "Remote values that failed a check: misses, never served")                               \
	X(remote_errors_total, counter, "Remote requests the cluster failed (served as misses)")   \
	X(remote_queue, gauge, "Blocks waiting to be written to the remote tier")                  \
	X(remote_deletes_total, counter, "Remote copies of deleted keys removed (DEL answered)")   \
	X(remote_delete_errors_total, counter,                                                     \
	  "Remote DELs that failed or were not queued: the key stays fenced until its TTL")        \
	X(remote_fenced_total, counter, "Remote fetches refused: the key was deleted here")        \
	X(remote_deleted_keys, gauge, "Deleted keys this host never fetches remotely (the fence)") \
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
