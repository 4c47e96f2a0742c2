#!/usr/bin/env bash
# gpu_bench.sh - build and run kvtier-gpu-bench on the GPU of this machine.
#
#   bench/gpu_bench.sh [OUT.json] [extra kvtier-gpu-bench args, e.g. --mib 1024 --reps 10]
#
# Writes the raw JSON to OUT.json (default bench/results/gpu_<gpu name>.json) and the log
# beside it (.log).  Ratios in the JSON are against ceilings measured in the same run.
# Build dir: $KVT_BUILD (default build-gpu); configure flags: $KVT_CMAKE_FLAGS.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${KVT_BUILD:-$root/build-gpu}
name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 |
	tr 'A-Z ' 'a-z_' | tr -cd 'a-z0-9_')
out=${1:-$root/bench/results/gpu_${name:-unknown}.json}
shift || true

if [[ ! -f $build/CMakeCache.txt ]]; then
	cmake -S "$root" -B "$build" -DKVT_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
		${KVT_CMAKE_FLAGS:-} >&2
fi
cmake --build "$build" --target kvtier-gpu-bench -j"$(nproc)" >&2
mkdir -p "$(dirname "$out")"
{
	echo "# $(date -u +%FT%TZ) $(uname -n)"
	nvidia-smi --query-gpu=name,uuid,driver_version,pcie.link.gen.current,pcie.link.width.current,clocks.sm,clocks.mem \
		--format=csv 2>/dev/null || true
	"$build/bench/kvtier-gpu-bench" --out "$out" "$@" 2>&1
} | tee "${out%.json}.log"
echo "raw results: $out" >&2
