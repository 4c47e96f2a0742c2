#!/bin/bash
# device_ab.sh - an A/B of the device API's restore and offload on the GPU machine: the tree
# BASE (another checkout, e.g. `git archive main | tar -x -C .base`) and this one, both built
# with CUDA, then kvtier-gpu-tier-bench --llama32k alternated between the two builds, each
# variant ROUNDS times, so that a difference can be told from the machine's drift.
#
#   bash scripts/device_ab.sh .base [ROUNDS] [VARIANT...]
#
# VARIANT: raw, bq, raw_ph, bq_ph, bq_ph_ppb4 (as scripts/device_run.sh; default raw bq).
# Results: $OUT/ab_<variant>_<base|new>_<round>.json and one line each on stdout.
base=${1:?base tree}
rounds=${2:-2}
shift 2 2>/dev/null || shift $#
variants=${*:-raw bq}
eval "$(bash scripts/device_setup.sh --unpack)" || exit 3
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do [ -d $d ] && export LD_LIBRARY_PATH=$d:$LD_LIBRARY_PATH; done
build() { # SRC DIR
	(cmake -S "$1" -B "$2" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVT_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DKVT_LLAMA=OFF &&
		cmake --build "$2" -j8 --target kvtierd kvtier-gpu-tier-bench) >"$OUT/build_$(basename "$2").log" 2>&1
}
build "$base" build-base &
build . build-gpu &
wait
[ -x build-base/bench/kvtier-gpu-tier-bench ] && [ -x build-gpu/bench/kvtier-gpu-tier-bench ] || { tail -20 "$OUT"/build_*.log; exit 4; }
K=tests/data/sympy_head640.kvd
for r in $(seq 1 "$rounds"); do
	for v in $variants; do
		a=""
		case $v in bq*) a="--host-codec bq" ;; esac
		case $v in *_ph*) a="$a --page-heads" ;; esac
		case $v in *ppb4) a="$a --ppb 4" ;; esac
		for t in base new; do
			B=build-gpu
			[ $t = base ] && B=build-base
			j=$OUT/ab_${v}_${t}_$r.json
			timeout 120 $B/bench/kvtier-gpu-tier-bench $B/daemon/kvtierd "$j" --llama32k --kvd $K $a --reps 5 >"$OUT/ab_${v}_${t}_$r.log" 2>&1
			echo "$v $t $r: $(grep -h llama3 "$OUT/ab_${v}_${t}_$r.log")"
		done
	done
done
