#!/usr/bin/env bash
# Programmatic dependent launch and launch cost on one H200, at most 10 minutes with every step:
#   1. tests/gpu/test_pdl_gpu.py: the race test (a late producer; the waiting consumer reads
#      the new data, the non-waiting one stale data), neighbours without PDL, the PDL kernels
#      bit-identical with and without PDL, eager and in CUDA graphs, the CUDA example;
#   2. benchmarks/launch_cost.py: host µs per eager RMSNorm call (compiled handle, @triton.jit
#      launcher, FlashInfer, fibuild.load);
#   3. benchmarks/serving_step.py --engine sglang --pdl --profile 3 (plain as SGLang calls its
#      kernels, norms with PDL on as sgl_kernel turns it on on Hopper; applied without PDL,
#      applied with PDL) at batch
#      1/16/64/128, with a profiler trace of each (PDL_SESSION_STEP=0 skips it), after the JIT
#      build of FlashInfer's rope (the step's rotary embedding; about half a minute, once);
#   PDL_SESSION_KERNEL_TESTS=1 adds the GEMM and decode GPU tests (2.5 min); PDL_SESSION_TESTS=0
#   skips step 1, PDL_SESSION_LAUNCH=0 step 2; PDL_STEP_LIMIT (default 330 s) bounds step 3 and
#   PDL_STEP_ARGS adds to its arguments (the later of a repeated option wins: "--chain
#   --profile 0 --bench-timeout 100").
#
#   benchmarks/device/pdl_session.sh OUT       (from the repository root; OUT defaults to $OUT)
set -u
out=${1:-${OUT:-out}}
mkdir -p "$out"
. "$(dirname "$0")/step.sh"  # step, device_env
device_env
exec > >(tee -a "$out/log-pdl.txt") 2>&1

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

if [ "${PDL_SESSION_TESTS:-1}" = 1 ]; then
  step 100 "PDL GPU tests" python3 -m pytest -q -rs -p no:cacheprovider tests/gpu/test_pdl_gpu.py
fi
if [ "${PDL_SESSION_LAUNCH:-1}" = 1 ]; then
  step 45 "launch cost" python3 benchmarks/launch_cost.py --out "$out/launch-cost.md"
fi
if [ "${PDL_SESSION_KERNEL_TESTS:-0}" = 1 ]; then
  step 150 "GEMM and decode GPU tests (through the compiled-handle launcher)" python3 -m pytest -q -x \
    -p no:cacheprovider tests/gpu/test_gemm_stream_gpu.py tests/gpu/test_decode_kernels.py
fi
if [ "${PDL_SESSION_STEP:-1}" = 1 ]; then
  # The step's rotary embedding is FlashInfer's, which the device kit does not hold prebuilt: its
  # JIT build (once per machine, cached for the step's processes) gets its own limit.
  step 120 "FlashInfer rope JIT build" python3 -c 'import torch, flashinfer
q = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16); k = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
flashinfer.rope.apply_rope_with_cos_sin_cache_inplace(torch.zeros(1, dtype=torch.int64, device="cuda"), q, k, 128,
    torch.randn(16, 128, device="cuda"), True); torch.cuda.synchronize(); print("rope built")'
  # plain = SGLang's calls (its norms with PDL on, sgl_kernel's default on Hopper), traced, benched on what was traced,
  # applied with FIBUILD_PDL=0, applied with FIBUILD_PDL=1; 3 replays per batch profiled
  # The bench takes the baselines, the Triton norms and SiLU x mul, and of each grid the variants
  # that were the launch configs before grids (the sweep's picks at M = 1, 16, 64; decode default).
  sols=()
  for s in flashinfer flashinfer_tc torch_matmul triton_row triton_vec cuda_row_per_block cuda_vec16 \
      "gemm_n6144_k4096_bf16/triton_stream[KERNEL=fma,BLOCK_M=1,BLOCK_N=8,BLOCK_K=512,STAGES=3,WARPS=4]" \
      "gemm_n6144_k4096_bf16/triton_stream[KERNEL=dot,BLOCK_M=16,BLOCK_N=64,BLOCK_K=128,STAGES=6,WARPS=4]" \
      "gemm_n4096_k4096_bf16/triton_stream[KERNEL=fma,BLOCK_M=1,BLOCK_N=4,BLOCK_K=1024,STAGES=3,WARPS=8]" \
      "gemm_n4096_k4096_bf16/triton_stream[KERNEL=dot,BLOCK_M=16,BLOCK_N=32,BLOCK_K=512,STAGES=4,WARPS=4]" \
      "gemm_n28672_k4096_bf16/triton_stream[KERNEL=fma,BLOCK_M=1,BLOCK_N=4,BLOCK_K=1024,STAGES=3,WARPS=8]" \
      "gemm_n28672_k4096_bf16/triton_stream[KERNEL=dot,BLOCK_M=16,BLOCK_N=64,BLOCK_K=128,STAGES=4,WARPS=4]" \
      "gemm_n4096_k14336_bf16/triton_stream[KERNEL=fma,BLOCK_M=1,BLOCK_N=4,BLOCK_K=1024,STAGES=3,WARPS=8]" \
      "gemm_n4096_k14336_bf16/triton_stream[KERNEL=dot,BLOCK_M=16,BLOCK_N=32,BLOCK_K=512,STAGES=4,WARPS=4]" \
      "triton_stream[KERNEL=dot,BLOCK_M=64,BLOCK_N=64,BLOCK_K=128,STAGES=4,WARPS=4]" \
      "triton_split_kv[MERGE=fused,WAVES=4,CHUNK=128,BLOCK_N=64,STAGES=3]" \
      "triton_split_kv[MERGE=separate,WAVES=4,CHUNK=128,BLOCK_N=64,STAGES=3]"; do
    sols+=(--bench-solution "$s")
  done
  step "${PDL_STEP_LIMIT:-330}" "decode step: plain / applied / applied+PDL" python3 benchmarks/serving_step.py \
    --engine sglang --pdl --profile 3 --iters 30 --warmup 3 --bench-timeout 150 "${sols[@]}" ${PDL_STEP_ARGS:-} \
    --out /tmp/pdl-step
  # at most 8 files come back: the table and plot as files, everything else in one tar
  cp /tmp/pdl-step/serving_step.md /tmp/pdl-step/serving_step.png "$out/" 2>/dev/null
  (cd /tmp/pdl-step && tar -cf "$out/pdl-step.tar" serving_step.* run-*.json profile-*.md bench.log chain.log 2>/dev/null)
fi
echo "done $(date -u +%T)"
