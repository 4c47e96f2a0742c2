#!/usr/bin/env bash
# run.sh - install what is missing, build, start kvtierd on its built-in defaults and drive a
# real workload through it: the KV cache of a real model, cut into 64-token blocks, put,
# looked up, read back and compared bit for bit.
#
#   scripts/run.sh                 the two excerpts of tests/data, as two engines' prompts
#   scripts/run.sh DUMP.kvd...     these dumps instead
#
# The daemon runs in the foreground of a temporary directory (its socket, its log, a 64 MiB
# NVMe slot file) with a 3 MiB host tier.  Each dump is replayed as a prompt sent twice: the
# second request must find the whole prompt cached.  The two excerpts (2.5 MiB and 2 MiB of
# KV) do not fit in RAM together, so the second pushes the first one's blocks down to the NVMe
# tier; the first prompt is then sent once more and must be found whole again, read back from
# NVMe.  Environment: KVT_RUN_HOST_CAPACITY (default 3MiB), KVT_RUN_NVME=0 (host tier only),
# KVT_RUN_OPTS (more "-o section.key=value" words).  Exit status: 0 only when the daemon
# started, every replay verified every block it read back, kvtierctl answered, the host tier
# evicted (and, with the default dumps and NVMe, the NVMe tier served hits), and the daemon
# stopped cleanly on SIGTERM.
set -euo pipefail

KVT_PROG=run.sh
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

kvt_help "$@"
dumps=()
if (($# == 0)); then
	default_dumps=1
	set -- "$KVT_ROOT/tests/data/sympy_head640.kvd" "$KVT_ROOT/tests/data/sympy_l1h0_q128.kvd"
else
	default_dumps=0
fi
for d in "$@"; do
	[[ -r $d ]] || kvt_die "cannot read $d"
	dumps+=("$(cd "$(dirname "$d")" && pwd)/$(basename "$d")")
done

kvt_setup

kvt_built_tools

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
nvme=${KVT_RUN_NVME:-1}
opts=(-o "host.capacity=${KVT_RUN_HOST_CAPACITY:-3MiB}")
if ((nvme)); then
	opts+=(-o nvme.enabled=true -o "nvme.paths=$tmp/nvme0.slots" -o nvme.capacity=64MiB)
	# O_DIRECT needs a filesystem that supports it; tmpfs does not.
	if [[ $(stat -f -c %T "$tmp") == tmpfs ]]; then
		opts+=(-o nvme.direct=false)
	fi
fi
# shellcheck disable=SC2206 # word splitting of the user's extra options is wanted
opts+=(${KVT_RUN_OPTS:-})
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
# replay ARGS...: one engine's requests; the replay fails on any byte that differs from the
# dump, and with --expect-full-hit if its last request did not find the whole prompt.
replay()
{
	kvt_log "workload: $replay $*"
	if ! "$replay" "$@"; then
		kvt_log "kvtier-replay failed: $*"
		fail=1
	fi
}
if ((default_dumps)); then
	# Two engines' prompts, each sent twice: request 1 puts every block, request 2 looks
	# the prefix up and reads every block back.
	replay --requests 2 --expect-full-hit "${dumps[0]}"
	replay --requests 2 --expect-full-hit "${dumps[1]}"
	# The first prompt again: its blocks left RAM for the second one's.
	((nvme)) && replay --requests 1 --expect-full-hit "${dumps[0]}"
else
	for d in "${dumps[@]}"; do
		replay --requests 2 "$d"
	done
fi

kvt_log "kvtierctl status"
if ! "$ctl" status; then
	kvt_log "kvtierctl status failed"
	fail=1
fi
kvt_log "kvtierctl tiers"
"$ctl" tiers || fail=1
# "EVICTIONS NVME_HITS" of the daemon, from the JSON that scripts are meant to read.
counts=$("$ctl" --json tiers | python3 -c '
import json, sys
t = {x["name"]: x for x in json.load(sys.stdin)}
print(t["host"]["evictions"], t.get("nvme", {}).get("hits", 0))' || echo error)
if [[ ! $counts =~ ^[0-9]+\ [0-9]+$ ]]; then
	kvt_log "cannot read the tier counters from kvtierctl --json tiers"
	fail=1
else
	read -r evictions nvme_hits <<<"$counts"
	kvt_log "host tier evictions: $evictions; NVMe tier hits: $nvme_hits"
	if ((default_dumps && evictions == 0)); then
		kvt_log "the host tier never evicted: the workload did not exercise eviction"
		fail=1
	fi
	if ((default_dumps && nvme && nvme_hits == 0)); then
		kvt_log "the NVMe tier served nothing: evicted blocks were not demoted and promoted"
		fail=1
	fi
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
