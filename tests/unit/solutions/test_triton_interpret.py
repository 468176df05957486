"""The shipped Triton solutions run under TRITON_INTERPRET=1 on CPU tensors and match the reference.

Triton decides at ``@triton.jit`` decoration time whether a kernel is interpreted, and parts
of ``triton.language`` read the variable when triton is first imported: so each check runs in
a fresh interpreter started with ``TRITON_INTERPRET=1``, never by flipping the variable in
this process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fibuild.spec.workspace import Workspace, shipped_root

WORKSPACE = Workspace(shipped_root())
# Page-table definitions need consistent custom inputs: their Triton solutions have tests of their own.
# One variant of a grid (its first) runs here at full shape; test_triton_stream.py runs every one.
TRITON_SOLUTIONS = list({(s.definition, s.family): s for s in reversed(WORKSPACE.solutions())
                         if s.language == "triton"
                         and not WORKSPACE.definition(s.definition).custom_inputs_entrypoint}.values())
#: Weights above this run too slowly in the interpreter at full shape (the 224 MiB gate-up
#: weight takes minutes); test_triton_stream.py runs those solutions' every variant on a slice.
FULL_SHAPE_WEIGHT_BYTES = 48 << 20

# Runs in the child: imports the solution from its file, checks it on bf16 CPU tensors.
CHILD = r"""
import functools, importlib, importlib.machinery, importlib.util, json, sys
import torch
from fibuild.spec.calling import load_reference, solution_caller
from fibuild.spec.workspace import Workspace, shipped_root

ws = Workspace(shipped_root())
sol = ws.solution(sys.argv[1])
defn = ws.definition(sol.definition)
# The solution's directory as a package, as fibuild's builder imports it: its files may
# import each other relatively (``from .gemv import ...``).
package = importlib.machinery.ModuleSpec("triton_solution_under_test", None, is_package=True)
sys.modules[package.name] = importlib.util.module_from_spec(package)
sys.modules[package.name].__path__ = [str(d) for d in sol.source_dirs]
module = importlib.import_module(package.name + "." + sol.entry_file[:-3].replace("/", "."))
entry = getattr(module, sol.entry_symbol)
call = solution_caller(defn, sol, functools.partial(entry, **dict(sol.constants)))  # as the build binds them
reference = load_reference(defn)["run"]
kernels = sorted({type(v).__name__ for name, m in list(sys.modules.items()) if name.startswith(package.name)
                  for v in vars(m).values() if type(v).__module__.startswith("triton.runtime")})
results = []
g = torch.Generator().manual_seed(0)
for rows in (1, 3):
    sizes = {**defn.const_axes, defn.var_axes[0]: rows}
    inputs = [torch.randn([sizes[a] for a in s.shape], generator=g, dtype=getattr(torch, s.dtype))
              for s in defn.inputs]
    want = reference(*[t.clone() for t in inputs])
    got = call(*inputs)
    got, want = (got,) if not isinstance(got, tuple) else got, (want,) if not isinstance(want, tuple) else want
    for gt, wt in zip(got, want):
        diff = (gt.float() - wt.float()).abs()
        bound = defn.tolerance.atol + defn.tolerance.rtol * wt.float().abs()
        results.append({"rows": rows, "shape_ok": gt.shape == wt.shape, "dtype": str(gt.dtype),
                        "max_abs": float(diff.max()), "within": bool((diff <= bound).all())})
bad = None
try:
    dtype = getattr(torch, defn.inputs[0].dtype)
    call(torch.randn(2, 8, dtype=dtype), *[torch.randn(8, dtype=dtype)] * (len(defn.inputs) - 1))
except ValueError as exc:
    bad = str(exc)
print(json.dumps({"kernels": kernels, "results": results, "bad_shape": bad}))
"""


def _run_child(qualified_name: str, interpret: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": interpret}
    return subprocess.run([sys.executable, "-c", CHILD, qualified_name], capture_output=True, text=True,
                          env=env, timeout=300)


def test_ships_triton_solutions():
    assert {s.qualified_name for s in TRITON_SOLUTIONS} >= {"rmsnorm_h4096/triton_row",
                                                            "silu_and_mul_i14336/triton_vec",
                                                            "gemm_n6144_k4096/triton_tiled"}


def _weight_bytes(sol) -> int:
    defn = WORKSPACE.definition(sol.definition)
    return defn.const_axes.get("N", 0) * defn.const_axes.get("K", 0) * 2


FULL_SHAPE = [s for s in TRITON_SOLUTIONS if _weight_bytes(s) <= FULL_SHAPE_WEIGHT_BYTES]


@pytest.mark.parametrize("sol", FULL_SHAPE, ids=[s.qualified_name for s in FULL_SHAPE])
def test_matches_reference_under_the_interpreter(sol):
    proc = _run_child(sol.qualified_name, "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["kernels"] == ["InterpretedFunction"], report
    defn = WORKSPACE.definition(sol.definition)
    assert len(report["results"]) == 2 * len(defn.outputs)
    dtypes = [f"torch.{o.dtype}" for o in defn.outputs] * 2
    for r, dtype in zip(report["results"], dtypes):
        assert r["shape_ok"] and r["dtype"] == dtype and r["within"], r
    assert report["bad_shape"] and "expected" in report["bad_shape"], report


def test_without_the_interpreter_cpu_tensors_are_refused():
    """The interpreter really is what makes the CPU run work (the variable is read, not ignored)."""
    sol = next(s for s in TRITON_SOLUTIONS if s.qualified_name == "rmsnorm_h4096/triton_row")
    proc = _run_child(sol.qualified_name, "0")
    # Compiled mode needs a GPU driver here, and CPU pointers would be refused on a GPU machine.
    assert proc.returncode != 0 and proc.stdout == ""
    assert "triton" in proc.stderr and "Traceback" in proc.stderr, proc.stderr[-2000:]
