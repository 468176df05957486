#!/usr/bin/env bash
# flashinfer-bench 0.1.2 loads what `fibuild export flashinfer-trace` writes: the export
# tests run with it installed, and this step fails if any of them is skipped.
#
# It gets its own virtual environment: flashinfer-bench requires flashinfer-python (a CUDA
# JIT package) that its data models never import, and pip reports that requirement as a
# conflict. So flashinfer-bench is installed --no-deps, with the packages its `data` module
# imports (pydantic, docstring-parser), into a venv made with --system-site-packages (torch,
# safetensors and fibuild's dependencies from `make install` are reused).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv --system-site-packages "$work/venv"
"$work/venv/bin/python" -m pip install -q --no-deps "flashinfer-bench==0.1.2"
"$work/venv/bin/python" -m pip install -q "pydantic>=2" "docstring-parser>=0.16"
cd "$repo"
log="$work/pytest.log"
PYTHONPATH="$repo" "$work/venv/bin/python" -m pytest -q -p no:cacheprovider -rs \
    tests/unit/dataset/test_trace_import.py -k flashinfer_bench 2>&1 | tee "$log"
if grep -qiE "skipped|deselected.*0 passed|no tests ran" "$log" || ! grep -qE "^[0-9]+ passed" "$log"; then
    echo "flashinfer-bench: the export tests did not all run and pass" >&2
    exit 1
fi
