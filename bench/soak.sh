#!/usr/bin/env bash
# soak.sh - mixed load against one kvtierd for a long time; its RSS and NVMe usage must stay
# flat (within ±2 % of their mean after the warm-up), and its open fds must be back to the idle
# count once the clients are gone.
#
# usage: bench/soak.sh [SECONDS] [DUMP.kvd...]   (default 1800 s, the test-data dumps)
# env:   BUILD (default build), SOAK_WARMUP (default 10 % of the run), SOAK_TOLERANCE (2)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$top/build}
secs=${1:-1800}
shift || true
dumps=("$@")
((${#dumps[@]})) || dumps=("$top"/tests/data/*.kvd)
warm=${SOAK_WARMUP:-$((secs / 10))}
tol=${SOAK_TOLERANCE:-2}
tmp=$(mktemp -d /var/tmp/kvtier-soak.XXXXXX)
sock=$tmp/kvtier.sock
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	[[ -n ${daemon:-} ]] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

"$build/daemon/kvtierd" -f -s "$sock" -o host.capacity=8MiB -o nvme.enabled=true \
	-o "nvme.paths=$tmp/nvme0.slots" -o nvme.capacity=64MiB -o daemon.log_level=warn \
	2>"$tmp/kvtierd.log" &
daemon=$!
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
[[ -S $sock ]] || { echo "soak: kvtierd did not start" >&2; exit 1; }

# The idle baseline: one client has come and gone, so the tenant's arena exists.
"$build/bench/kvtier-replay" --socket "$sock" --requests 1 "${dumps[0]}" >/dev/null
sleep 0.5
fds_idle=$(ls /proc/$daemon/fd | wc -l)

end=$((SECONDS + secs))
# Two engines replaying prompts (puts, prefix lookups, gets, evictions to NVMe and back),
# one client connecting and disconnecting, one operator polling the CLI.
for w in 1 2; do
	(while ((SECONDS < end)); do
		for d in "${dumps[@]}"; do
			"$build/bench/kvtier-replay" --socket "$sock" --requests 3 "$d" >/dev/null ||
				{ echo "soak: replay failed" >&2; exit 1; }
		done
	done) &
	pids+=($!)
done
(while ((SECONDS < end)); do
	"$build/bench/kvtier-replay" --socket "$sock" --requests 1 "${dumps[0]}" >/dev/null || exit 1
	"$build/client/kvtierctl" --socket "$sock" evict --bytes 1048576 >/dev/null
done) &
pids+=($!)
(while ((SECONDS < end)); do
	"$build/client/kvtierctl" --socket "$sock" --json status >/dev/null
	"$build/client/kvtierctl" --socket "$sock" metrics >/dev/null
	sleep 0.2
done) &
pids+=($!)

samples=$tmp/samples
: >"$samples"
while ((SECONDS < end)); do
	sleep 5
	((SECONDS < warm)) && continue
	rss=$(awk '/^VmRSS/ {print $2}' /proc/$daemon/status)
	fds=$(ls /proc/$daemon/fd | wc -l)
	nvme=$("$build/client/kvtierctl" --socket "$sock" --json tiers |
		python3 -c 'import json,sys; t=json.load(sys.stdin); print([x for x in t if x["name"]=="nvme"][0]["used_bytes"])')
	echo "$SECONDS $rss $fds $nvme" >>"$samples"
done
for p in "${pids[@]}"; do wait "$p" || { echo "soak: a load process failed" >&2; exit 1; }; done
pids=()
# Open fds follow the clients connected at each sample; what must not grow is what is left
# once they are gone.
sleep 1
fds_end=$(ls /proc/$daemon/fd | wc -l)
echo "soak: open fds idle before the load $fds_idle, after it $fds_end"
((fds_end == fds_idle)) || { echo "soak: kvtierd leaked $((fds_end - fds_idle)) fds" >&2; exit 1; }
python3 - "$samples" "$tol" "$secs" <<'PY'
import sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
tol = float(sys.argv[2])
if len(rows) < 3:
    sys.exit("soak: too few samples")
ok = True
v = [r[2] for r in rows]
print(f"soak: open fds under load (clients come and go): {min(v)}..{max(v)}")
for i, name in ((1, "RSS KiB"), (3, "NVMe used bytes")):
    v = [r[i] for r in rows]
    mean = sum(v) / len(v)
    dev = max(abs(x - mean) for x in v) / mean * 100 if mean else 0
    print(f"soak: {name:16s} mean {mean:14.0f}  min {min(v):12d}  max {max(v):12d}  max deviation {dev:5.2f} %")
    ok &= dev <= tol
print(f"soak: {len(rows)} samples over {sys.argv[3]} s: {'flat' if ok else 'NOT flat'} (tolerance ±{tol} %)")
sys.exit(0 if ok else 1)
PY
