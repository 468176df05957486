#!/usr/bin/env bash
# The wheel as a user gets it: `pip wheel .`, installed into a fresh virtual environment, used
# from an empty directory with no checkout in sight, on the shipped library and on a workspace
# made by `fibuild init`.
#
# The venv is made with --system-site-packages so torch, triton and tvm-ffi (installed by
# `make install`) are reused instead of downloading several GB again; fibuild itself is
# installed into the venv (--force-reinstall: the checkout's editable install is outside it),
# and the script checks that `import fibuild` resolves to the venv's copy.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
venv="$work/venv"
export FIBUILD_CACHE_DIR="$work/cache" FIBUILD_DEVICE=cpu
unset PYTHONPATH FIBUILD_ROOT

step() { echo "wheel-smoke: $*"; }

step "pip wheel ."
(cd "$repo" && "$PYTHON" -m pip wheel . --no-deps -q -w "$work/dist")
wheel="$(ls "$work"/dist/fibuild-*.whl)"
"$PYTHON" - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["fibuild/spec/schemas/definition.schema.json", "fibuild/_shipped/defs/rmsnorm/rmsnorm_h4096.yaml",
        "fibuild/_shipped/solutions/rmsnorm_h4096/cpp_bf16/kernel.cpp", "fibuild/_shipped/chains/llama3_8b_decode_layer.yaml"]
missing = [n for n in need if n not in names]
bad = [n for n in names if n.endswith(".lock") or "__pycache__" in n]
assert not missing and not bad, (missing, bad)
print(f"wheel-smoke: {sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files")
EOF

step "venv (--system-site-packages) and pip install the wheel"
"$PYTHON" -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install -q --no-deps --force-reinstall "$wheel"
fib="$venv/bin/fibuild"
mkdir "$work/empty"
cd "$work/empty"
"$venv/bin/python" - "$venv" <<'EOF'
import sys, fibuild
assert fibuild.__file__.startswith(sys.argv[1]), f"fibuild imported from {fibuild.__file__}, not the venv"
print(f"wheel-smoke: import fibuild -> {fibuild.__file__}")
EOF

step "shipped library: validate, build --all, CPU bench, load"
"$fib" validate
"$fib" build --all
"$fib" bench rmsnorm_h4096 --solution torch_fp32 --solution cpp_bf16 --device cpu \
    --workload-limit 2 --warmup 1 --rep 5
"$venv/bin/python" - <<'EOF'
import torch, fibuild
from fibuild.spec.calling import load_reference
k = fibuild.load("rmsnorm_h4096")
x = torch.randn(7, 4096, dtype=torch.bfloat16)
w = torch.randn(4096, dtype=torch.bfloat16)
ref = load_reference(k.definition)["run"](x, w)
torch.testing.assert_close(k(x, w), ref, atol=1e-2, rtol=1e-2)
print(k.explain(batch_size=7))
print("wheel-smoke: fibuild.load('rmsnorm_h4096') matches its reference")
EOF

step "fibuild init, a definition with a torch and a C++ solution, validate, build, bench, load"
ws="$work/empty/myws"
"$fib" init "$ws"
if "$fib" --root "$ws" validate; then echo "wheel-smoke: an empty workspace must not validate" >&2; exit 1; fi
mkdir -p "$ws/defs/elementwise" "$ws/solutions/scale3_f32/torch" "$ws/solutions/scale3_f32/cpp"
cat > "$ws/defs/elementwise/scale3_f32.yaml" <<'EOF'
name: scale3_f32
op_type: elementwise
axes:
  n: {type: var}
inputs:
  x: {shape: [n], dtype: float32}
outputs:
  y: {shape: [n], dtype: float32}
reference: |
  def run(x):
      return x * 3
workloads:
  - axes: {n: 16}
  - axes: {n: 100000}
EOF
cat > "$ws/solutions/scale3_f32/torch/solution.yaml" <<'EOF'
name: torch
definition: scale3_f32
language: python
entry_point: kernel.py::run
sources: [kernel.py]
EOF
printf 'import torch\n\n\ndef run(x):\n    return torch.mul(x, 3)\n' > "$ws/solutions/scale3_f32/torch/kernel.py"
cat > "$ws/solutions/scale3_f32/cpp/solution.yaml" <<'EOF'
name: cpp
definition: scale3_f32
language: cpp
entry_point: kernel.cpp::scale3
sources: [kernel.cpp]
target_hardware: [cpu]
destination_passing_style: true
EOF
cat > "$ws/solutions/scale3_f32/cpp/kernel.cpp" <<'EOF'
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>

void scale3(tvm::ffi::TensorView x, tvm::ffi::TensorView y) {
  TVM_FFI_CHECK(x.dtype().code == kDLFloat && x.dtype().bits == 32 && x.IsContiguous(), ValueError)
      << "x must be contiguous float32";
  const float* in = static_cast<const float*>(x.data_ptr());
  float* out = static_cast<float*>(y.data_ptr());
  for (int64_t i = 0; i < x.size(0); ++i) out[i] = in[i] * 3.0f;
}

TVM_FFI_DLL_EXPORT_TYPED_FUNC(scale3, scale3);
EOF
"$fib" validate --root "$ws"
"$fib" build --all --root "$ws"
"$fib" --root "$ws" bench --device cpu --warmup 1 --rep 5
"$fib" --root "$ws" table scale3_f32 --device cpu
FIBUILD_ROOT="$ws" "$venv/bin/python" - <<'EOF'
import torch, fibuild
k = fibuild.load("scale3_f32")
for n in (16, 100000, 12345):
    x = torch.randn(n)
    torch.testing.assert_close(k(x), x * 3, atol=0, rtol=0)
print(k.explain(n=100000))
print("wheel-smoke: fibuild.load('scale3_f32') from the new workspace is correct")
EOF
step "passed"
