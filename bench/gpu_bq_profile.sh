#!/bin/bash
# gpu_bq_profile.sh - Nsight Compute's view of the bq encoder and decoder kernels, to see where
# their time goes (codecs/CODECS.md, "bq": GPU speed).  On the GPU machine, after a CUDA build:
#
#   bash bench/gpu_bq_profile.sh BUILD-DIR KVD OUT-DIR [GEOM]
#
# One launch of each kernel of kvtier-gpu-bq-bench on 64 MiB of blocks (GEOM: L,H,D,T,
# default 32,8,128,16, Llama-3-8B with 16-token pages); ncu's sections and its per-line source
# counters (the build passes -lineinfo) into OUT-DIR/ncu_*.txt.  The clocks are left as found
# (--clock-control none).  Exit 77 where ncu is missing or cannot read the counters.
set -u
b=${1:?build dir}
kvd=${2:?kvd}
out=${3:?out dir}
geom=${4:-32,8,128,16}
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
[ -x "$ncu" ] || { echo "gpu_bq_profile: no ncu" >&2; exit 77; }
mkdir -p "$out"
for k in bq_enc_slab_kernel bq_dec_warp_kernel; do
	timeout 100 "$ncu" --clock-control none -k "$k" -c 1 \
		--section SpeedOfLight --section Occupancy --section LaunchStats \
		--section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
		--section SourceCounters --import-source no \
		"$b/bench/kvtier-gpu-bq-bench" --kvd "$kvd" --geom "$geom" --mib 64 --reps 1 \
		>"$out/ncu_$k.txt" 2>&1
	echo "ncu $k rc=$?"
	grep -E "Duration|Memory Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Theoretical Occupancy|Block Limit|Warp Cycles Per Issued|Stall" "$out/ncu_$k.txt" | head -30
done
