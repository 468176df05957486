#!/usr/bin/env bash
# The GPU pass, in two calls of at most ten minutes each, on a machine with two GPUs (one GPU
# runs everything but the two-rank steps). Each step has its own time limit, so the results of
# the earlier steps come back even if a later one runs long; steps on different GPUs overlap.
#
#   benchmarks/device/gpu_session.sh checks OUT   build, new evaluations (the all-reduce + RMSNorm
#                                                on 2 ranks, paged decode page size 16), the
#                                                FlashInfer dump fixture, the two-GPU tests
#   benchmarks/device/gpu_session.sh serving OUT  paged decode evaluated anew, the decode step
#                                                (plain / traced / applied), the integration and
#                                                artifact-check overheads, the single-GPU tests
#
# From the repository root. The device kit (.devkit/) and carried wheels (.whl/) are unpacked
# first when present. Everything comes back as OUT/session-<part>.tar plus OUT/log-<part>.txt.
set -u
part=${1:?checks or serving}
out=${2:-${OUT:-out}}
res="$out/$part"
mkdir -p "$res"
. "$(dirname "$0")/step.sh"  # step, device_env
device_env
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
exec > >(tee -a "$out/log-$part.txt") 2>&1


nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'gpus', torch.cuda.device_count())"

case "$part" in
checks)
  # The dump needs no fibuild build: make it on GPU 1 while the builds compile.
  step 100 "FlashInfer level-10 dump" env CUDA_VISIBLE_DEVICES=1 python3 benchmarks/device/make_flashinfer_dump.py "$res/fidump" &
  dump=$!
  step 120 "build every solution" python3 -m fibuild build --all
  wait $dump  # never a bare wait: it would also wait for the log's tee
  step 150 "allreduce_add_rmsnorm_h4096 on 2 ranks" \
    python3 -m fibuild bench allreduce_add_rmsnorm_h4096 --world-size 2 --device cuda
  step 150 "GPU tests on two GPUs (distributed ranks, farm)" python3 -m pytest -q -m gpu -p no:cacheprovider \
    tests/gpu/test_distributed_gpu.py $(ls tests/gpu/test_farm*_gpu.py 2>/dev/null)
  step 90 "paged decode, page size 16" python3 -m fibuild bench gqa_paged_decode_h32_kv8_d128_ps16 \
    --device cuda
  slug=$(python3 -c 'from fibuild.devices import device_slug; print(device_slug("cuda"))')
  python3 -m fibuild table allreduce_add_rmsnorm_h4096 --device "$slug" > "$res/allreduce-table.txt" 2>&1
  python3 -m fibuild table gqa_paged_decode_h32_kv8_d128_ps16 --device "$slug" > "$res/decode-ps16-table.txt" 2>&1
  tar -cf "$res/registry.tar" registry
  ;;
serving)
  # GPU 0: the paged decode (page size 1) evaluated anew, then the decode step (graph replays:
  # GPU-bound). GPU 1: page size 16 evaluated anew, the host-bound overhead benchmarks, then
  # the single-GPU test suite.
  (
    step 150 "paged decode, page size 1" env CUDA_VISIBLE_DEVICES=0 python3 -m fibuild bench \
      gqa_paged_decode_h32_kv8_d128_ps1 --device cuda
    step 330 "decode step: plain, traced, bench, applied" env CUDA_VISIBLE_DEVICES=0 \
      python3 benchmarks/serving_step.py --out "$res/serving-step" --bench-timeout 150 --child-timeout 150
  ) &
  stepper=$!
  (
    step 120 "paged decode, page size 16" env CUDA_VISIBLE_DEVICES=1 python3 -m fibuild bench \
      gqa_paged_decode_h32_kv8_d128_ps16 --device cuda
    step 60 "build for the overhead benchmarks" python3 -m fibuild build --all
    step 60 "integration overhead" env CUDA_VISIBLE_DEVICES=1 python3 benchmarks/bench_integration.py --calls 10000 \
      --rounds 9 --out "$res/integration"
    step 70 "artifact check at load" env CUDA_VISIBLE_DEVICES=1 python3 benchmarks/bench_artifact_check.py --runs 7 --max-builds 3
    step 200 "GPU tests on one GPU" env CUDA_VISIBLE_DEVICES=1 python3 -m pytest -q -m gpu tests -p no:cacheprovider \
      --ignore=tests/gpu/test_distributed_gpu.py $(ls tests/gpu/test_farm*_gpu.py 2>/dev/null | sed 's/^/--ignore=/')
  )
  wait $stepper
  tar -cf "$res/registry.tar" registry
  ws="$res/serving-step/workspace"
  if [ -d "$ws" ]; then  # keep what tracing wrote, not the workspace copy
    traced=$(cd "$res" && pwd)/traced.tar  # workloads, blobs, trace files and the evaluations of the bench
    (cd "$ws" && find registry -type f \( -name '*.jsonl' -o -name '*.safetensors' -o -path '*_trace*' \) \
       | tar -cf "$traced" -T - )
    rm -rf "$ws"
  fi
  ;;
*) echo "unknown part $part"; exit 2 ;;
esac
tar -cf "$out/session-$part.tar" -C "$out" "$part"
ls -la "$out"
