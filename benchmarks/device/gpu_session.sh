#!/usr/bin/env bash
# The whole GPU pass in one call: build every solution, benchmark every definition into
# registry/, draw the rmsnorm leaderboard, run the GPU tests, the rmsnorm end-to-end example,
# the dispatch and cold-start benchmarks, and the build benchmarks. Each step has its own time limit so the results
# of the earlier steps come back even if a later one runs long.
#
# Usage on a GPU machine, from the repository root:  benchmarks/device/gpu_session.sh OUT_DIR
# (the device kit, if present in .devkit/, is unpacked first).
set -u
out=${1:-${OUT:-out}}
mkdir -p "$out/results"
if [ -f .devkit/site-py312.tar.xz ]; then
  mkdir -p /tmp/site && tar -xJf .devkit/site-py312.tar.xz -C /tmp/site
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 FIBUILD_CACHE_DIR=${FIBUILD_CACHE_DIR:-/tmp/fibuild-cache}
exec > >(tee -a "$out/log.txt") 2>&1

step() {  # step SECONDS TITLE COMMAND...
  local limit=$1 title=$2; shift 2
  echo; echo "=== $title  ($(date -u +%T))"; local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"; local rc=$?
  echo "--- $title: exit $rc, $((SECONDS - t0)) s"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
step 150 "build every solution" python3 -m fibuild build --all
step 300 "benchmark every definition" python3 -m fibuild bench --timeout 240
tar -cf "$out/registry.tar" registry
step 30 "rmsnorm leaderboard" python3 -m fibuild table rmsnorm_h4096 --plot "$out/results/rmsnorm_h4096.png"
step 170 "GPU tests" python3 -m pytest -q -m gpu tests -p no:cacheprovider
step 60 "rmsnorm end to end" python3 examples/rmsnorm_e2e.py --skip-bench
step 60 "dispatch overhead" python3 benchmarks/bench_dispatch.py --device cuda --out "$out/results/dispatch-cuda.md"
step 60 "cold start" python3 benchmarks/bench_coldstart.py --device cuda --out "$out/results/coldstart-cuda.md"
step 150 "build benchmarks" python3 benchmarks/bench_build.py --quick --out "$out/results/build-cuda.md"
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
for n in 2 4 8; do
  [ "$gpus" -ge "$n" ] && step 300 "allreduce_add_rmsnorm_h4096 on $n ranks" \
    python3 -m fibuild bench allreduce_add_rmsnorm_h4096 --world-size "$n" --device cuda
done
tar -cf "$out/registry.tar" registry
