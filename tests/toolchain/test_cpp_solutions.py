"""The shipped C++ solutions compile with g++ against tvm-ffi, load, and match the reference
on CPU tensors; bad arguments come back as ValueError naming the argument.

Each solution is compiled by hand, once per module, with the command the native builder
uses (c++ -O3 -std=c++17 -fPIC -shared, the solution's cflags/ldflags, linked to libtvm_ffi).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from fibuild.spec.calling import load_reference, make_caller, solution_caller
from fibuild.spec.workspace import Workspace, shipped_root

pytestmark = pytest.mark.build

WS = Workspace(shipped_root())
CPP_SOLUTIONS = {s.definition: s for s in WS.solutions() if s.language == "cpp"}
# Batch sizes: one row, an odd count, and enough rows that the kernels split work over threads.
BATCHES = (1, 7, 300)


def _compile(sol, out_dir: Path) -> Path:
    import tvm_ffi.libinfo as libinfo

    cxx = shutil.which("c++") or shutil.which("g++")
    lib_dir = str(Path(libinfo.find_libtvm_ffi()).parent)
    out = out_dir / f"{sol.definition}_{sol.name}.so"
    cmd = [cxx, "-O3", "-std=c++17", "-fPIC", "-shared", "-Wall", "-Werror",
           *sol.build.cflags, "-isystem", libinfo.find_include_path(),
           *[f"-I{d}" for d in sol.source_dirs],  # its folder and its libraries' (shared headers)
           *[str(Path(sol.path) / src) for src in sol.sources],
           "-L" + lib_dir, "-ltvm_ffi", "-Wl,-rpath," + lib_dir, *sol.build.ldflags, "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    """definition name -> (definition, solution, raw entry point), compiled once."""
    import tvm_ffi

    out_dir = tmp_path_factory.mktemp("cpp_solutions")
    loaded = {}
    for name, sol in CPP_SOLUTIONS.items():
        module = tvm_ffi.load_module(str(_compile(sol, out_dir)))
        loaded[name] = (WS.definition(name), sol, module[sol.entry_symbol])
    return loaded


def _inputs(defn, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    axes = {**defn.const_axes, defn.var_axes[0]: batch}
    return [torch.randn([axes[a] for a in spec.shape], generator=gen).to(getattr(torch, spec.dtype))
            for spec in defn.inputs]


def _within_tolerance(defn, got, want) -> bool:
    a, b = got.double(), want.double()
    return bool(((a - b).abs() <= defn.tolerance.atol + defn.tolerance.rtol * b.abs()).all())


def _as_list(value):
    return list(value) if isinstance(value, tuple) else [value]


def test_the_three_cpu_definitions_have_cpp_solutions():
    assert set(CPP_SOLUTIONS) == {"rmsnorm_h4096", "fused_add_rmsnorm_h4096", "silu_and_mul_i14336"}
    for sol in CPP_SOLUTIONS.values():
        assert sol.destination_passing_style and sol.target_hardware == ("cpu",)


@pytest.mark.parametrize("name", sorted(CPP_SOLUTIONS))
@pytest.mark.parametrize("batch", BATCHES)
def test_cpp_solution_matches_reference(kernels, name, batch):
    defn, sol, entry = kernels[name]
    args = _inputs(defn, batch, seed=batch)
    reference = make_caller(defn, load_reference(defn)["run"], destination_passing_style=False)
    want = _as_list(reference(*[a.clone() for a in args]))
    mine = [a.clone() for a in args]
    got = _as_list(solution_caller(defn, sol, entry)(*mine))
    assert len(got) == len(want) == len(defn.outputs)
    for spec, g, w in zip(defn.outputs, got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, spec.name
        assert _within_tolerance(defn, g, w), spec.name
        if spec.inplace:
            index = [s.name for s in defn.inputs].index(spec.inplace)
            assert g is mine[index], f"{spec.name} must be the mutated input"
    # Rounding the same fp32 value the same way: nearly every element is bit-identical.
    for g, w in zip(got, want):
        assert float((g != w).float().mean()) < 0.01


def test_fused_add_rmsnorm_writes_the_rounded_sum_exactly(kernels):
    defn, sol, entry = kernels["fused_add_rmsnorm_h4096"]
    h, r, w = _inputs(defn, 64, seed=5)
    summed = (h.double() + r.double()).bfloat16()
    entry(h, r, w)
    assert torch.equal(r, summed)


@pytest.mark.parametrize("name", sorted(CPP_SOLUTIONS))
def test_cpp_solution_rejects_bad_arguments(kernels, name):
    defn, sol, entry = kernels[name]
    args = _inputs(defn, 4, seed=0)
    outs = [torch.empty([4 if a == defn.var_axes[0] else defn.const_axes[a] for a in o.shape],
                        dtype=getattr(torch, o.dtype)) for o in defn.outputs if not o.inplace]
    first = defn.inputs[0].name
    with pytest.raises(ValueError, match=f"{first} must be bfloat16"):
        entry(args[0].float(), *args[1:], *outs)
    with pytest.raises(ValueError, match=f"{first} dimension 1 must be"):
        entry(args[0][:, :-8].contiguous(), *args[1:], *outs)
    with pytest.raises(ValueError, match=f"{first} must be contiguous"):
        entry(torch.cat([args[0], args[0]], dim=1)[:, ::2], *args[1:], *outs)
    if outs:
        wrong_rows = torch.empty((5, *outs[0].shape[1:]), dtype=outs[0].dtype)
        with pytest.raises(ValueError, match=f"{defn.outputs[0].name} dimension 0 must be 4"):
            entry(*args, wrong_rows)
