#!/usr/bin/env bash
# Runs a list of time-boxed steps on a GPU machine and keeps every step's output, so one slow
# or failing step cannot hide the others' results.
#
#   benchmarks/device/run_steps.sh STEPS_FILE [OUT]
#
# STEPS_FILE holds one step a line: `SECONDS|TITLE|SHELL COMMAND` (blank lines and lines
# starting with # are skipped). Each command runs from the repository root with $RES set to a
# folder for its files. The device kit (.devkit/) is unpacked first when present, the copy and
# bf16 matmul ceilings are measured first (ceilings.json), and everything under $RES comes
# back as OUT/results.tar beside OUT/log.txt. benchmarks/device/steps/ holds the step files of
# the open GPU work, one device call each.
set -u
steps=${1:?steps file}
out=${2:-${OUT:-out}}
export RES="$out/results"
mkdir -p "$RES"
. "$(dirname "$0")/step.sh"  # step, device_env
device_env
exec > >(tee -a "$out/log.txt") 2>&1


nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
step 60 "ceilings" python3 -c "import json, sys; sys.path.insert(0, 'benchmarks/device'); \
from gemm_sweep import ceilings; c = ceilings(); print(c); json.dump(c, open('$RES/ceilings.json', 'w'))"
while IFS='|' read -r limit title command; do
  case "$limit" in ''|'#'*) continue ;; esac
  step "$limit" "$title" bash -c "$command"
done < "$steps"
tar -cf "$out/results.tar" -C "$out" results
ls -la "$out"
