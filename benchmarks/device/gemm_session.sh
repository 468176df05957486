#!/usr/bin/env bash
# The small-M GEMM pass in one GPU call: the copy and matmul ceilings, `fibuild bench --graph`
# of every gemm definition (cold weights: the bench rotates up to 8 input sets, each with its
# own weight, beyond the L2), the GPU tests of the new solutions, and an ncu profile of the
# M = 1 O projection when ncu is installed.
#
# Usage on a GPU machine, from the repository root:  benchmarks/device/gemm_session.sh OUT_DIR
set -u
out=${1:-${OUT:-out}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 FIBUILD_CACHE_DIR=${FIBUILD_CACHE_DIR:-/tmp/fibuild-cache}
export TRITON_CACHE_DIR=$FIBUILD_CACHE_DIR/triton  # one Triton cache for the bench and the tests
exec > >(tee -a "$out/log.txt") 2>&1

. "$(dirname "$0")/step.sh"  # step SECONDS TITLE COMMAND...

defs=$(ls defs/gemm | sed 's/\.yaml$//')
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
step 15 "ceilings" python3 benchmarks/device/gemm_sweep.py --ceilings-only --out "$out"
step 230 "bench --graph" python3 -m fibuild bench $defs --graph --warmup 10 --rep 30 --timeout 200
tar -cf "$out/registry-gemm.tar" registry/gemm_*
step 50 "GPU tests" python3 -m pytest -q -m gpu tests/gpu/test_gemm_stream_gpu.py -p no:cacheprovider
if command -v ncu >/dev/null; then
  step 30 "ncu O projection M=1" ncu --clock-control none --kernel-name regex:_stream --launch-skip 3 --launch-count 1 \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section MemoryWorkloadAnalysis \
    python3 benchmarks/device/gemm_sweep.py --profile-o-m1
fi
