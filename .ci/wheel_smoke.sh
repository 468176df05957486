#!/usr/bin/env bash
# The wheel as a user gets it: `pip wheel .`, installed into a fresh virtual environment, used
# from an empty directory with no checkout in sight: on the shipped library (whose records and
# traces go to the user workspace under XDG_DATA_HOME, never into the installed package), and
# through the README's first-kernel walkthrough, its commands run as written.
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
export FIBUILD_CACHE_DIR="$work/cache" FIBUILD_DEVICE=cpu XDG_DATA_HOME="$work/data"
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

step "shipped library: validate, build --all, CPU bench, trace, load; nothing written into the package"
library="$("$venv/bin/python" -c 'import fibuild, pathlib; print(pathlib.Path(fibuild.__file__).parent / "_shipped")')"
listing() { (cd "$library" && find . -type f | sort | xargs sha256sum); }
before="$(listing)"
"$fib" validate
"$fib" build --all
"$fib" bench rmsnorm_h4096 --solution torch_fp32 --solution cpp_bf16 --device cpu \
    --workload-limit 2 --warmup 1 --rep 5
FIBUILD_TRACE=1 "$venv/bin/python" -c "import torch; torch.nn.functional.linear(
    torch.randn(3, 4096, dtype=torch.bfloat16), torch.randn(4096, 4096, dtype=torch.bfloat16))"
test "$(listing)" = "$before" || { echo "wheel-smoke: the installed library was written to" >&2; exit 1; }
ls "$XDG_DATA_HOME"/fibuild/registry/rmsnorm_h4096/cpu-*.jsonl "$XDG_DATA_HOME"/fibuild/registry/*/workloads.jsonl
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

step "README's first-kernel walkthrough, as written, from an empty folder"
"$PYTHON" - "$repo/README.md" > "$work/walkthrough.sh" <<'EOF'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
section = text.split("\n## Your first kernel\n", 1)[1].split("\n## ", 1)[0]
blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
assert len(blocks) >= 5, f"the walkthrough has {len(blocks)} bash blocks"
print("set -euxo pipefail")
print("\n".join(blocks))
EOF
mkdir "$work/walk"
(cd "$work/walk" && PATH="$venv/bin:$PATH" bash "$work/walkthrough.sh")
test -s "$work/walk/myws/registry/scale3_f32/$("$venv/bin/python" -c 'from fibuild.devices import device_slug; print(device_slug("cpu"))').jsonl"
if "$fib" --root "$work/empty" validate 2>/dev/null; then
  echo "wheel-smoke: a folder with no manifests must not validate" >&2; exit 1
fi
step "passed"
