#!/bin/sh
# SPDX-License-Identifier: MIT
# gpu/emu/run_emu.sh BUILD_DIR [xpose|dec|enc ...] - runs CUDA kernels' source on the CPU (all
# three when none is named).  xpose: gpu/gpu_xpose.cu's transposing page gather/scatter, its
# launch loop included, against a reference transposition (seconds).  dec, enc: gpu/gpu_bq.cu:
# the warp decoder under a 32-thread warp emulation and the encoder's kernels under a CTA
# emulation (host threads; shuffles, ballots and __syncthreads through barriers), against the
# CPU codec on real and synthetic blocks (decoder: also paged output and damaged records).
# For checking kernel changes on a machine without a GPU; no timing meaning.  Needs python3,
# g++ with C++20, and BUILD_DIR built with the targets kvt_codecs, kvt_proto, kvt_kvd and kvt_gpu.
# Takes a few minutes (a thread per lane).
set -e
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=$(cd "${1:?usage: run_emu.sh BUILD_DIR}" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
shift
what=${*:-xpose dec enc}
python3 - "$repo/gpu/gpu_bq.cu" "$tmp" "$repo/gpu/gpu_xpose.cu" <<'PY'
import re, sys
xp = open(sys.argv[3]).read()
xp = xp[xp.index('/* ---- gpu/emu runs what follows on the CPU ---- */'):]
xp = xp.replace('int kvt_gpu_xpose(', 'static int emu_gpu_xpose(')
xp = re.sub(r'kvt_xpose_kernel<(\w+)><<<grid, KVT_XP_THREADS, 0, stream>>>\(\*b\)',
            r'emu_launch<\1>(grid, KVT_XP_THREADS, *b)', xp)
assert 'emu_launch<uint4>' in xp and '<<<' not in xp
open(sys.argv[2] + '/xpose_extract.inc', 'w').write(xp)
src = open(sys.argv[1]).read()
def cut(a, b):
    return src[src.index(a):src.index(b)]
dec = cut('#define BQ_DEC_WARPS', '__global__ void __launch_bounds__(32 * BQ_DEC_WARPS)')
dec = dec.replace('asm volatile("prefetch.L1 [%0];" ::"l"(sl + i));', '(void)0;')
enc = cut('/* Shared memory of the encoder', '/* ---- decode ----')
enc = enc.replace('extern __shared__ __align__(16) uint8_t smem_raw[];', 'uint8_t *smem_raw = g_smem;')
enc = enc.replace('__launch_bounds__(BQ_ENC_THREADS)', '').replace('__launch_bounds__(BQ_THREADS)', '')
for name, code in (('dec', dec), ('enc', enc)):
    code = code.replace('__device__ __forceinline__', 'static inline').replace('__device__ static', 'static')
    open(sys.argv[2] + '/' + name + '_extract.inc', 'w').write(code)
PY
for k in $what; do
	if [ "$k" = xpose ]; then
		g++ -std=c++20 -O1 -Wall -Wno-unused-function -I"$repo/gpu" \
			-DXPOSE_EXTRACT="\"$tmp/xpose_extract.inc\"" "$here/xpose_emu.cpp" \
			"$build/gpu/libkvt_gpu.a" -lm -o "$tmp/xpose_emu"
		"$tmp/xpose_emu"
		continue
	fi
	g++ -std=c++20 -O1 -ffp-contract=off -pthread -w -I"$repo/codecs" -I"$repo/gpu" \
		-I"$repo/proto" -I"$repo/bench" -I"$repo" -DKVD_PATH="\"$repo/tests/data/sympy_head640.kvd\"" \
		-DDEC_EXTRACT="\"$tmp/dec_extract.inc\"" -DENC_EXTRACT="\"$tmp/enc_extract.inc\"" \
		"$here/bq_${k}_emu.cpp" "$build/bench/libkvt_kvd.a" "$build/codecs/libkvt_codecs.a" \
		"$build/proto/libkvt_proto.a" -llz4 -lzstd -lxxhash -lm -o "$tmp/bq_${k}_emu"
	"$tmp/bq_${k}_emu"
done
