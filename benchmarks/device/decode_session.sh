#!/usr/bin/env bash
# Paged decode on one GPU in one call: the variant sweep against FlashInfer (with the copy
# ceiling measured in the same run), then, with --bench, `fibuild bench` of both decode
# definitions and their leaderboards, then the GPU tests of the decode kernels and the
# CUDA-graph replay of every resolved solution. Each step has its own time limit.
#
# Usage from the repository root:  benchmarks/device/decode_session.sh OUT_DIR [--sweep] [--bench]
set -u
out=${1:-${OUT:-out}}; shift || true
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
. "$(dirname "$0")/step.sh"  # step SECONDS TITLE COMMAND...
defs="gqa_paged_decode_h32_kv8_d128_ps1 gqa_paged_decode_h32_kv8_d128_ps16"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
python3 -c "import torch, triton, flashinfer; print('torch', torch.__version__, 'triton', triton.__version__, 'flashinfer', flashinfer.__version__)"
for arg in "$@"; do
  case $arg in
    --sweep) step 200 "decode sweep" python3 benchmarks/kernels/decode_sweep.py --out "$out" --rep-ms 15 ;;
    --bench)
      step 200 "bench decode" python3 -m fibuild bench $defs --timeout 120 --warmup 10 --rep 50
      mkdir -p "$out/registry" && cp -r registry/gqa_paged_decode_h32_kv8_d128_ps* "$out/registry/"
      for d in $defs; do python3 -m fibuild table "$d" > "$out/table-$d.txt" 2>&1; done ;;
    --tests) step 170 "GPU tests" python3 -m pytest -q -p no:cacheprovider tests/gpu/test_decode_kernels.py tests/gpu/test_cuda_graphs.py ;;
  esac
done
