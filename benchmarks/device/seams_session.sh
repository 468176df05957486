#!/usr/bin/env bash
# The engine seams on one GPU in one call of at most eight minutes: the engines' decode call
# sequences with the real flashinfer in CUDA graphs (every replay against torch), then the
# decode step called as FlashInfer's docs, SGLang and vLLM call it (plain / traced / applied,
# stats() per batch size). Each step has its own time limit.
#
# Usage from the repository root:  benchmarks/device/seams_session.sh OUT_DIR [--docs]
# (--docs adds the step called as FlashInfer's docs show, 100 s more.) The applied runs build
# the shipped CUDA norm kernels and compile the Triton decode once; FIBUILD_CACHE_DIR keeps them.
set -u
out=${1:-${OUT:-out}}
mkdir -p "$out"
. "$(dirname "$0")/step.sh"  # step, device_env
device_env
exec > >(tee -a "$out/log.txt") 2>&1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton, flashinfer; print('torch', torch.__version__, 'triton', triton.__version__, 'flashinfer', flashinfer.__version__)"
step 120 "GPU tests: engine decode sequences in CUDA graphs" python3 -m pytest -q -p no:cacheprovider -rs \
  tests/gpu/test_engine_sequences_gpu.py tests/gpu/test_integrations_gpu.py -k "not end_to_end"
runs="sglang:170 vllm:160"
[ "${2:-}" = "--docs" ] && runs="$runs docs:100"
for run in $runs; do
  engine=${run%:*}
  step "${run#*:}" "decode step, $engine" python3 benchmarks/serving_step.py --engine "$engine" --layers 32 \
    --batch 1 128 --kv-len 1024 --iters 20 --warmup 3 --skip-bench --out "$out/step-$engine"
done
