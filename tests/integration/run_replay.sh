#!/bin/sh
# SPDX-License-Identifier: MIT
# run_replay.sh KVTIERD KVTIER_REPLAY DUMP.kvd [replay options...]
# Starts a private kvtierd with a small host tier ($KVT_REPLAY_CAPACITY, default 4MiB, so that
# larger dumps meet eviction), replays the dump against it and exits with the replay's status.
set -u
if [ $# -lt 3 ]; then
	echo "usage: $0 KVTIERD KVTIER_REPLAY DUMP.kvd [options]" >&2
	exit 2
fi
daemon=$1
replay=$2
dump=$3
shift 3

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvt-replay.XXXXXX") || exit 1
pid=""
cleanup() {
	if [ -n "$pid" ]; then
		kill "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# kvtierd writes one byte to fd 3 once it serves, or exits without: wait on that event.
mkfifo "$tmp/ready"
"$daemon" -f --ready-fd 3 -s "$tmp/sock" -o host.capacity="${KVT_REPLAY_CAPACITY:-4MiB}" \
	>"$tmp/kvtierd.log" 2>&1 3>"$tmp/ready" &
pid=$!
if [ "$(head -c 1 "$tmp/ready")" != R ]; then
	echo "kvtierd did not start:" >&2
	cat "$tmp/kvtierd.log" >&2
	exit 1
fi

"$replay" --socket "$tmp/sock" "$@" "$dump"
status=$?
if [ $status -ne 0 ]; then
	echo "--- kvtierd log:" >&2
	tail -n 50 "$tmp/kvtierd.log" >&2
fi
# The daemon must still be alive: a replay that crashed it is a failure too.
if ! kill -0 "$pid" 2>/dev/null; then
	echo "kvtierd died during the replay:" >&2
	tail -n 50 "$tmp/kvtierd.log" >&2
	[ $status -eq 0 ] && status=1
fi
exit $status
