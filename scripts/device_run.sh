#!/bin/bash
# device_run.sh - everything that needs a GPU, in one command on the GPU machine:
# build with CUDA into build-gpu/, the `gpu` ctest label (with the daemon's counter
# self-check, KVTIER_CHECK_COUNTS=1), the GPU pytest of the Python package (kvtier.hf and the
# device API), then bench/hf_roundtrip.py with the arguments given (docs/HF_ROUNDTRIP.md).
#
#   bash scripts/device_run.sh --lengths 8192 32768 --reps 3
#
# Needs: the Debian build dependencies as .debs in .devdeps/ (scripts/device_setup.sh makes
# them where apt works), the trained model in .devdata/kvmodel for the round trip (the
# project's development model, not in the repository), and $OUT for the results.
# SKIP_CTEST=1 skips the ctest part; NO_BENCH=1 the benches; NO_CODEC_BENCH=1 the issue-15
# benches (bq kernels against a device copy; restore and offload through the compressed host
# tier against pinned cudaMemcpy, 32K tokens of Llama-3-8B geometry); NO_HF=1 the Hugging Face
# bench; BENCH_TIMEOUT (s, 330).
export PYTHONUNBUFFERED=1
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,pcie.link.gen.current,pcie.link.width.current,driver_version --format=csv | tee $OUT/gpu.txt
eval "$(bash scripts/device_setup.sh --unpack)" || exit 3
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do [ -d $d ] && export LD_LIBRARY_PATH=$d:$LD_LIBRARY_PATH; done
B=build-gpu
(cmake -S . -B $B -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVT_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DKVT_LLAMA=OFF && cmake --build $B -j16) > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 4; }
echo "== built after $(( $(date +%s) - T0 )) s"
[ -z "${SKIP_CTEST:-}" ] && KVTIER_CHECK_COUNTS=1 ctest --test-dir $B -L gpu --output-on-failure > $OUT/ctest_gpu.txt 2>&1; echo "ctest gpu rc=$?"; grep -E "Test +#|tests passed|FAIL|Error" $OUT/ctest_gpu.txt | tail -15
echo "== gpu ctest after $(( $(date +%s) - T0 )) s"
export KVTIER_LIB=$PWD/$B/client/libkvtier.so KVTIER_BIN_DIR=$PWD/$B/daemon
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs -m gpu client/python/test_hf.py client/python/test_kvtier_gpu.py > $OUT/pytest.txt 2>&1; echo "pytest rc=$?"; tail -15 $OUT/pytest.txt
echo "== pytest after $(( $(date +%s) - T0 )) s"
[ -n "${NO_BENCH:-}" ] && exit 0
if [ -z "${NO_CODEC_BENCH:-}" ]; then
	K=tests/data/sympy_head640.kvd
	bq_bench() { # NAME ARGS...
		local n=$1; shift
		timeout 120 $B/bench/kvtier-gpu-bq-bench --kvd $K "$@" --mib 1024 --reps 10 --out $OUT/gpu_bq_$n.json > $OUT/gpu_bq_$n.log 2>&1; echo "gpu_bq $n rc=$?"; tail -4 $OUT/gpu_bq_$n.log
	}
	bq_bench v2 --geom 32,8,128,16
	bq_bench v2_t64 --geom 32,8,128,64
	bq_bench v2_rope --geom 32,8,128,16 --chain bq:k=0.1,v=0.038,dup=4,rope=10000
	# raw and bq as stored (head-major pages), then token-major vLLM pages through the
	# transposing path (--page-heads), and 64-token kvtier blocks of 4 such pages (--ppb 4)
	for v in raw bq raw_ph bq_ph bq_ph_ppb4; do
		a=""; case $v in bq*) a="--host-codec bq";; esac
		case $v in *_ph*) a="$a --page-heads";; esac
		case $v in *ppb4) a="$a --ppb 4";; esac
		timeout 180 $B/bench/kvtier-gpu-tier-bench $B/daemon/kvtierd $OUT/gpu_tier_llama32k_$v.json --llama32k --kvd $K $a --reps 5 > $OUT/gpu_tier_$v.log 2>&1; echo "gpu_tier $v rc=$?"; tail -4 $OUT/gpu_tier_$v.log
	done
	echo "== codec benches after $(( $(date +%s) - T0 )) s"
fi
[ -n "${NO_HF:-}" ] && exit 0
timeout ${BENCH_TIMEOUT:-330} python3 bench/hf_roundtrip.py --build $B --model .devdata/kvmodel --out $OUT "$@" > $OUT/bench.log 2>&1
echo "bench rc=$?"; grep -v "^  name=" $OUT/bench.log | tail -45
echo "== bench after $(( $(date +%s) - T0 )) s"
