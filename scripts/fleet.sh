#!/usr/bin/env bash
# fleet.sh - two hosts of a fleet sharing a remote tier: a 6-node Redis Cluster on loopback
# (3 masters, 3 replicas) and two kvtierd with their own sockets and host tiers, both with
# remote.nodes set.  A real model's KV cache is put through host A as an engine's prefill,
# and host B, which never saw it, serves the whole prefix bit-exact from the cluster.
#
#   scripts/fleet.sh               the excerpt tests/data/sympy_head640.kvd as the prompt
#   scripts/fleet.sh DUMP.kvd      this dump instead
#
# Steps: kvtier-replay --requests 1 on host A (lookup finds nothing, every block put; each
# commit is written behind to the cluster by A's I/O threads); wait until A's
# kvtier_remote_puts_total covers the prompt; kvtier-replay --requests 1 --expect-full-hit on
# host B (its lookup asks the cluster for what it lacks: all; its gets fetch, check and
# decode each block into B's host tier; every byte compared with the dump); then kvtierctl
# tiers of both hosts.  Environment: KVT_FLEET_CODEC (remote.codec, default fpx),
# KVT_FLEET_LOOKUP_US (remote.lookup_timeout_us, default 50000: CI is a loaded 2-core machine;
# the 2000 default is meant for a quiet host), KVT_FLEET_SETUP=0 (use build/ as it is: no
# package install, no build).  Exit status 0 only
# when host B found and verified the whole prompt and served it from the remote tier, and
# both daemons stopped cleanly on SIGTERM.
set -euo pipefail

KVT_PROG=fleet.sh
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

case ${1:-} in
-h | --help)
	sed -n '2,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
	exit 0
	;;
esac
dump=${1:-$KVT_ROOT/tests/data/sympy_head640.kvd}
[[ -r $dump ]] || kvt_die "cannot read $dump"
dump=$(cd "$(dirname "$dump")" && pwd)/$(basename "$dump")
codec=${KVT_FLEET_CODEC:-fpx}

[[ ${KVT_FLEET_SETUP:-1} == 0 ]] || kvt_setup
daemon=$KVT_BUILD/daemon/kvtierd
ctl=$KVT_BUILD/client/kvtierctl
replay=$KVT_BUILD/bench/kvtier-replay
for b in "$daemon" "$ctl" "$replay"; do
	[[ -x $b ]] || kvt_die "$b was not built"
done
for p in redis-server redis-cli; do
	command -v $p >/dev/null || kvt_die "$p not found (Debian: apt-get install redis-server)"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvtier-fleet.XXXXXX")
pids=()
declare -A hostpid
cleanup()
{
	for p in "${pids[@]}"; do
		kill -KILL "$p" 2>/dev/null || true
	done
	for p in "${pids[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$tmp"
}
trap cleanup EXIT

# Six free ports in a row (a port that answers PING or is bound is taken).
port_free()
{
	! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
base=
for ((try = 0; try < 50; try++)); do
	b=$((20000 + RANDOM % 20000))
	ok=1
	for ((i = 0; i < 6; i++)); do
		port_free $((b + i)) || ok=0
	done
	((ok)) && base=$b && break
done
[[ -n $base ]] || kvt_die "no 6 free ports found"
ports=() seeds=
for ((i = 0; i < 6; i++)); do
	p=$((base + i))
	ports+=("$p")
	seeds+=${seeds:+,}127.0.0.1:$p
	mkdir "$tmp/redis-$p"
	redis-server --port "$p" --bind 127.0.0.1 --dir "$tmp/redis-$p" --cluster-enabled yes \
		--cluster-config-file nodes.conf --cluster-node-timeout 2000 --save '' \
		--appendonly no --repl-diskless-sync-delay 0 --cluster-require-full-coverage no \
		>"$tmp/redis-$p.log" 2>&1 &
	pids+=($!)
done
for p in "${ports[@]}"; do
	for ((i = 0; i < 100; i++)); do
		[[ $(redis-cli -p "$p" ping 2>/dev/null) == PONG ]] && break
		sleep 0.1
	done
	[[ $(redis-cli -p "$p" ping 2>/dev/null) == PONG ]] || kvt_die "redis-server on port $p did not start"
done
kvt_log "6 redis-server on 127.0.0.1:${ports[0]}-${ports[5]}: redis-cli --cluster create (3 masters, 3 replicas)"
# shellcheck disable=SC2046 # one word per node
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-replicas 1 \
	--cluster-yes >"$tmp/create.log" 2>&1 || {
	cat "$tmp/create.log" >&2
	kvt_die "redis-cli --cluster create failed"
}
for p in "${ports[@]}"; do
	for ((i = 0; i < 200; i++)); do
		redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && break
		sleep 0.1
	done
	redis-cli -p "$p" cluster info | grep -q '^cluster_state:ok' || kvt_die "cluster not ok on $p"
done
kvt_log "cluster_state:ok on every node"

# Host h (A or B): its own socket, arena and log; the fleet's tenant salt and the cluster.
: >"$tmp/empty.conf"
start_host()
{
	local h=$1 sock=$tmp/host$1.sock
	"$daemon" -f -c "$tmp/empty.conf" -s "$sock" -o host.capacity=64MiB \
		-o daemon.tenant_salt=f1ee7 -o "remote.nodes=$seeds" -o "remote.codec=$codec" \
		-o "remote.lookup_timeout_us=${KVT_FLEET_LOOKUP_US:-50000}" \
		2>"$tmp/host$h.log" &
	pids+=($!)
	hostpid[$h]=$!
	for ((i = 0; i < 100; i++)); do
		[[ -S $sock ]] && break
		kill -0 "${pids[-1]}" 2>/dev/null || {
			cat "$tmp/host$h.log" >&2
			kvt_die "kvtierd of host $h exited"
		}
		sleep 0.1
	done
	[[ -S $sock ]] || kvt_die "kvtierd of host $h did not listen"
	kvt_log "host $h: kvtierd on $sock (remote.nodes = the cluster, remote.codec = $codec)"
}
start_host A
start_host B
metric()
{
	"$ctl" --socket "$tmp/host$1.sock" --json status |
		python3 -c "import json,sys; print(json.load(sys.stdin)['metrics']['$2'])"
}

kvt_log "host A: an engine's prefill of $(basename "$dump"): lookup, then every block put"
KVTIER_SOCKET=$tmp/hostA.sock "$replay" --requests 1 "$dump"
queued=$(metric A remote_puts_queued_total)
for ((i = 0; i < 200; i++)); do
	(($(metric A remote_puts_total) + $(metric A remote_put_errors_total) >= queued)) && break
	sleep 0.1
done
kvt_log "host A: $(metric A remote_puts_total) of $queued blocks written behind to the cluster" \
	"($(metric A remote_put_bytes_total) value bytes, $(metric A remote_put_dropped_total) dropped)"

kvt_log "host B: the same prompt; B never saw it: lookup and gets go to the cluster"
if ! KVTIER_SOCKET=$tmp/hostB.sock "$replay" --requests 1 --expect-full-hit "$dump"; then
	sed 's/^/  | /' "$tmp/hostB.log" >&2
	kvt_die "host B did not serve the whole prompt bit-exact"
fi
hits=$(metric B remote_hits_total)
kvt_log "host B: $hits blocks fetched from the cluster, checked, decoded and installed" \
	"($(metric B remote_corrupt_total) corrupt, $(metric B remote_misses_total) misses)"
((hits > 0)) || kvt_die "host B served nothing from the remote tier"
for h in A B; do
	kvt_log "kvtierctl tiers, host $h"
	"$ctl" --socket "$tmp/host$h.sock" tiers
done
for h in A B; do
	kill -TERM "${hostpid[$h]}"
	rc=0
	wait "${hostpid[$h]}" || rc=$?
	((rc == 0)) || {
		sed 's/^/  | /' "$tmp/host$h.log" >&2
		kvt_die "kvtierd of host $h exited with status $rc on SIGTERM"
	}
done
kvt_log "fleet demo: the prompt computed on host A was served whole and bit-exact by host B"
