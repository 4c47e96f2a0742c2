#!/usr/bin/env bash
# run.sh - install what is missing, build, start kvtierd on its built-in defaults and drive a
# real workload through it: the KV cache of a real model, cut into 64-token blocks, put,
# looked up, read back and compared bit for bit.
#
#   scripts/run.sh [DUMP.kvd]    default: tests/data/sympy_head640.kvd
#
# The daemon runs in the foreground of a temporary directory (its socket, its log) with a
# host tier smaller than the dump, so that eviction happens.  Environment:
# KVT_RUN_HOST_CAPACITY (default 1MiB), KVT_RUN_OPTS (more "-o section.key=value" words).
# Exit status: 0 only when the daemon started, the workload verified every block it read
# back, kvtierctl answered, and the daemon stopped cleanly on SIGTERM.
set -euo pipefail

KVT_PROG=run.sh
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

case ${1:-} in
-h | --help)
	sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
	exit 0
	;;
esac
dump=${1:-$KVT_ROOT/tests/data/sympy_head640.kvd}
[[ -r $dump ]] || kvt_die "cannot read $dump"
dump=$(cd "$(dirname "$dump")" && pwd)/$(basename "$dump")

kvt_setup

daemon=$KVT_BUILD/daemon/kvtierd
ctl=$KVT_BUILD/client/kvtierctl
replay=$KVT_BUILD/bench/kvtier-replay
for b in "$daemon" "$ctl" "$replay"; do
	[[ -x $b ]] || kvt_die "$b was not built"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvtier-run.XXXXXX")
export KVTIER_SOCKET=$tmp/kvtier.sock
pid=

cleanup()
{
	if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

show_log()
{
	kvt_log "kvtierd log:"
	sed 's/^/  | /' "$tmp/kvtierd.log" >&2 || true
}

# An empty file instead of /etc/kvtier/kvtierd.conf: built-in defaults even on a host where
# the example config was installed, and only the overrides below change them.
: >"$tmp/kvtierd.conf"
# shellcheck disable=SC2206 # word splitting of the user's extra options is wanted
opts=(-o "host.capacity=${KVT_RUN_HOST_CAPACITY:-1MiB}" ${KVT_RUN_OPTS:-})
kvt_log "starting $daemon -f -c $tmp/kvtierd.conf ${opts[*]} (socket $KVTIER_SOCKET)"
"$daemon" -f -c "$tmp/kvtierd.conf" "${opts[@]}" 2>"$tmp/kvtierd.log" &
pid=$!

# The socket appears once the daemon listens; give it 10 s.
for ((i = 0; i < 100; i++)); do
	[[ -S $KVTIER_SOCKET ]] && break
	if ! kill -0 "$pid" 2>/dev/null; then
		rc=0
		wait "$pid" || rc=$?
		pid=
		show_log
		kvt_die "kvtierd exited (status $rc) before it listened"
	fi
	sleep 0.1
done
if [[ ! -S $KVTIER_SOCKET ]]; then
	show_log
	kvt_die "kvtierd did not create $KVTIER_SOCKET within 10 s"
fi

fail=0
# Three requests of the same prompt: the first puts every block, the later ones read the
# cached prefix back and re-put what was evicted; the replay fails on any byte that differs
# and, with --expect-evictions, if the small host tier never had to evict.
kvt_log "workload: $replay --requests 3 --expect-evictions $dump"
if ! "$replay" --requests 3 --expect-evictions "$dump"; then
	kvt_log "kvtier-replay failed"
	fail=1
fi

kvt_log "kvtierctl status"
if ! "$ctl" status; then
	kvt_log "kvtierctl status failed"
	fail=1
fi

kvt_log "stopping kvtierd (SIGTERM)"
kill -TERM "$pid"
rc=
for ((i = 0; i < 100; i++)); do
	if ! kill -0 "$pid" 2>/dev/null; then
		rc=0
		wait "$pid" || rc=$?
		pid=
		break
	fi
	sleep 0.1
done
if [[ -z $rc ]]; then
	kvt_log "kvtierd did not stop within 10 s of SIGTERM"
	fail=1
elif ((rc != 0)); then
	kvt_log "kvtierd exited with status $rc"
	fail=1
fi

if ((fail)); then
	show_log
	kvt_log "FAILED"
	exit 1
fi
kvt_log "kvtierd log: $(wc -l <"$tmp/kvtierd.log") lines, last:"
tail -n 3 "$tmp/kvtierd.log" | sed 's/^/  | /' >&2
kvt_log "OK: workload verified, daemon stopped cleanly"
