#!/usr/bin/env bash
# test.sh - install what is missing, build, and run the whole test suite through ctest:
# first the normal build (build/), then an ASan+UBSan build of the same tree (build-asan/).
#
#   scripts/test.sh              as root on Debian 12 (CI runs exactly this)
#   scripts/test.sh --no-asan    skip the sanitizer build, for a quick local run
#
# Environment: CI (set: -Werror), KVT_CTEST_JOBS (parallel tests, default 1: several tests
# measure latency and share 2 cores), KVT_CTEST_ARGS (extra ctest arguments, e.g. "-L fast"),
# KVT_BUILD and KVT_BUILD_ASAN (the two build directories).
# Exit status: 0 when every test passed or skipped itself, 1 otherwise.
set -euo pipefail

KVT_PROG=test.sh
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

asan=1
for arg in "$@"; do
	case $arg in
	--no-asan) asan=0 ;;
	-h | --help)
		kvt_usage
		exit 0
		;;
	*)
		kvt_usage >&2
		exit 2
		;;
	esac
done

total_pass=0
total_fail=0
total_skip=0
any_fail=0
summaries=()

# run_ctest NAME BUILD_DIR: runs every test of BUILD_DIR (all labels: gpu tests skip
# themselves with exit 77 where no GPU exists) and adds its counts to the totals.
run_ctest()
{
	local name=$1 dir=$2 log rc=0 line total failed skipped
	local -a extra=()

	log="$dir/kvt-ctest.log"
	# shellcheck disable=SC2206 # word splitting of the user's extra arguments is wanted
	[[ -n ${KVT_CTEST_ARGS:-} ]] && extra=(${KVT_CTEST_ARGS})
	kvt_log "ctest in $dir"
	ctest --test-dir "$dir" --output-on-failure --no-tests=error \
		-j "${KVT_CTEST_JOBS:-1}" "${extra[@]}" 2>&1 | tee "$log" || rc=$?
	# "95% tests passed, 2 tests failed out of 40"; skipped tests count as passed there.
	line=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -1 || true)
	if [[ -z $line ]]; then
		summaries+=("$name: ctest gave no summary (exit $rc)")
		total_fail=$((total_fail + 1))
		any_fail=1
		return 0
	fi
	total=$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$line")
	failed=$(sed -E 's/.*, ([0-9]+) tests? failed.*/\1/' <<<"$line")
	skipped=$(grep -cE '^[[:space:]]+[0-9]+ - .* \(Skipped\)$' "$log" || true)
	total_pass=$((total_pass + total - failed - skipped))
	total_fail=$((total_fail + failed))
	total_skip=$((total_skip + skipped))
	summaries+=("$name: $line ($skipped skipped)")
	if ((rc != 0 || failed != 0)); then
		any_fail=1
	fi
}

t0=$SECONDS
kvt_setup
kvt_log "set-up and build took $((SECONDS - t0)) s"

t1=$SECONDS
run_ctest build "$KVT_BUILD"
kvt_log "tests of build/ took $((SECONDS - t1)) s"

if ((asan)); then
	t1=$SECONDS
	asan_dir=${KVT_BUILD_ASAN:-$KVT_ROOT/build-asan}
	# CUDA stays out of the sanitizer build: the CUDA runtime and ASan's shadow memory clash
	# (cudaMalloc fails unless protect_shadow_gap=0), and gpu tests need a GPU anyway; the
	# normal build above covers the GPU path.
	kvt_configure "$asan_dir" -DKVT_SANITIZE=ON -DKVT_CUDA=OFF
	kvt_build "$asan_dir"
	# verify_asan_link_order=0: python3 is not instrumented and loads the sanitized
	# libkvtier.so with dlopen (the ctypes binding's tests); ASan would refuse to start in a
	# process whose first library is not its runtime.  Programs linked with ASan are unaffected.
	export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:check_initialization_order=1:strict_string_checks=1:verify_asan_link_order=0}
	export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
	run_ctest build-asan "$asan_dir"
	kvt_log "ASan+UBSan build and tests took $((SECONDS - t1)) s"
fi

kvt_log "total $((SECONDS - t0)) s"
for s in "${summaries[@]}"; do
	kvt_log "$s"
done
# The plain closing line: counts over every tree that ran.
echo "test.sh: $total_pass passed, $total_fail failed, $total_skip skipped"
exit "$any_fail"
