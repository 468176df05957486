#!/usr/bin/env bash
# One call on a two-GPU machine: the all-reduce on 2 ranks, then the decode step on GPU 0 beside
# the dump fixture, decode page size 16, the overhead benchmarks and the integration GPU tests on GPU 1.
set -u
out=${1:-${OUT:-out}}; res="$out/final"; mkdir -p "$res"
[ -d /tmp/site/flashinfer ] || { mkdir -p /tmp/site && tar -xJf .devkit/site-py312.tar.xz -C /tmp/site && tar -xJf .devkit/flashinfer-aot-sm90a.tar.xz -C /tmp/site; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FIBUILD_CACHE_DIR=/tmp/fibuild-cache
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
step() { local limit=$1 title=$2; shift 2; echo "=== $title ($(date -u +%T))"; local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@"; echo "--- $title: exit $?, $((SECONDS - t0)) s"; }
step 130 "allreduce 2 ranks" python3 -m fibuild bench allreduce_add_rmsnorm_h4096 --world-size 2 --device cuda > "$res/allreduce.log" 2>&1
tail -30 "$res/allreduce.log"
( CUDA_VISIBLE_DEVICES=0 step 300 "decode step" python3 benchmarks/serving_step.py --batch 1 16 64 128 --iters 20 --out "$res/step" --bench-timeout 100 --child-timeout 120 > "$res/step.log" 2>&1 ) &
p0=$!
( export CUDA_VISIBLE_DEVICES=1
  step 45 "dump" python3 benchmarks/device/make_flashinfer_dump.py "$res/fidump"
  step 90 "decode ps16" python3 -m fibuild bench gqa_paged_decode_h32_kv8_d128_ps16 --device cuda
  step 50 "integration overhead" python3 benchmarks/bench_integration.py --rounds 5 --out "$res/integration"
  step 40 "dispatch overhead" python3 benchmarks/bench_dispatch.py --device cuda --out "$res/dispatch-cuda.md"
  step 60 "integration GPU tests" python3 -m pytest -q -m gpu tests/gpu/test_integrations_gpu.py tests/gpu/test_load_gpu.py -p no:cacheprovider
) > "$res/gpu1.log" 2>&1 &
p1=$!
wait $p1; wait $p0
cat "$res/gpu1.log" | grep -v "^\[" | tail -60; tail -40 "$res/step.log"
rm -rf "$res/step/workspace/defs" "$res/step/workspace/solutions"
tar -cf "$out/final.tar" -C "$out" final registry 2>/dev/null || tar -cf "$out/final.tar" -C "$out" final
tar -rf "$out/final.tar" registry
