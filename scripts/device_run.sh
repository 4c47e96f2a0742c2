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
# SKIP_CTEST=1 skips the ctest part; NO_BENCH=1 the bench; BENCH_TIMEOUT (s, default 330).
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
timeout ${BENCH_TIMEOUT:-330} python3 bench/hf_roundtrip.py --build $B --model .devdata/kvmodel --out $OUT "$@" > $OUT/bench.log 2>&1
echo "bench rc=$?"; grep -v "^  name=" $OUT/bench.log | tail -45
echo "== bench after $(( $(date +%s) - T0 )) s"
