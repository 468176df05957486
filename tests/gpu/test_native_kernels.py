"""The shipped CUDA solutions match their definition's reference on the declared workloads.

Each solution is compiled once per session with nvcc for the visible GPU's arch and loaded
with ``tvm_ffi.load_module``; outputs are poisoned with NaN before each call, so an element
the kernel never writes fails the check.
"""
from __future__ import annotations

import os
import subprocess
import zlib
from pathlib import Path

import pytest

from fibuild.spec.calling import load_reference, make_caller
from fibuild.spec.workspace import Workspace, shipped_root

pytestmark = pytest.mark.gpu

WORKSPACE = Workspace(shipped_root())
CUDA_SOLUTIONS = [s for s in WORKSPACE.solutions() if s.language == "cuda"]
CASES = [(s, w) for s in CUDA_SOLUTIONS for w in WORKSPACE.definition(s.definition).workloads]


def _compile(sol, out_dir: Path) -> Path:
    import torch
    import tvm_ffi.libinfo as libinfo

    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    nvcc = Path(cuda_home) / "bin" / "nvcc"
    if not nvcc.exists():
        pytest.skip(f"no nvcc under CUDA_HOME={cuda_home}")
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}" + ("a" if major >= 9 else "")
    lib_dir = str(Path(libinfo.find_libtvm_ffi()).parent)
    out = out_dir / f"{sol.definition}-{sol.name}.so"
    cmd = [str(nvcc), "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-shared",
           f"-gencode=arch=compute_{arch},code=sm_{arch}", "-isystem", libinfo.find_include_path(),
           *sol.build.cuda_cflags, *(str(sol.path / s) for s in sol.sources if s.endswith(".cu")),
           f"-L{lib_dir}", "-ltvm_ffi", "-Xlinker", "-rpath", "-Xlinker", lib_dir, f"-L{cuda_home}/lib64", "-lcudart",
           "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """{qualified name: the loaded entry function}, compiled lazily, once per session."""
    import tvm_ffi

    out_dir = tmp_path_factory.mktemp("cuda-solutions")
    cache: dict = {}

    def get(sol):
        if sol.qualified_name not in cache:
            module = tvm_ffi.load_module(str(_compile(sol, out_dir)))
            cache[sol.qualified_name] = (module, module[sol.entry_symbol])
        return cache[sol.qualified_name][1]

    return get


def _inputs(torch, defn, axes, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    sizes = {**defn.const_axes, **axes}
    return [torch.randn([sizes[a] for a in spec.shape], generator=g, device="cuda",
                        dtype=getattr(torch, spec.dtype)) for spec in defn.inputs]


def _assert_close(torch, defn, got, want):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for spec, g, w in zip(defn.outputs, got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, spec.name
        assert torch.isfinite(g).all(), f"{spec.name}: non-finite values (unwritten elements?)"
        torch.testing.assert_close(g.float(), w.float(), atol=defn.tolerance.atol, rtol=defn.tolerance.rtol,
                                   msg=lambda m: f"{spec.name}: {m}")


@pytest.mark.parametrize("sol,workload", CASES,
                         ids=[f"{s.qualified_name}-{dict(w.axes)}" for s, w in CASES])
def test_matches_reference(sol, workload, compiled):
    import torch

    defn = WORKSPACE.definition(sol.definition)
    call = make_caller(defn, compiled(sol), destination_passing_style=sol.destination_passing_style)
    inputs = _inputs(torch, defn, dict(workload.axes), seed=zlib.crc32(workload.uuid.encode()))
    want = load_reference(defn)["run"](*[t.clone() for t in inputs])
    fresh = [o for o in defn.outputs if not o.inplace]
    sizes = {**defn.const_axes, **workload.axes}
    poisoned = [torch.full([sizes[a] for a in o.shape], float("nan"), device="cuda", dtype=getattr(torch, o.dtype))
                for o in fresh]
    got = call(*inputs, out=(poisoned[0] if len(poisoned) == 1 else poisoned) if poisoned else None)
    torch.cuda.synchronize()
    _assert_close(torch, defn, got, want)


@pytest.mark.parametrize("sol", CUDA_SOLUTIONS, ids=[s.qualified_name for s in CUDA_SOLUTIONS])
def test_runs_on_the_callers_stream(sol, compiled):
    """Launched under a side stream, the result is ready once that stream alone is synced."""
    import torch

    defn = WORKSPACE.definition(sol.definition)
    call = make_caller(defn, compiled(sol), destination_passing_style=sol.destination_passing_style)
    var = defn.var_axes[0]
    inputs = _inputs(torch, defn, {var: 4096}, seed=7)
    want = load_reference(defn)["run"](*[t.clone() for t in inputs])
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        # A long kernel first on the side stream: a launch on another stream would race it.
        torch.cuda._sleep(50_000_000)
        got = call(*inputs)
    side.synchronize()
    _assert_close(torch, defn, got, want)


@pytest.mark.parametrize("sol", CUDA_SOLUTIONS, ids=[s.qualified_name for s in CUDA_SOLUTIONS])
def test_rejects_wrong_dtype(sol, compiled):
    import torch

    defn = WORKSPACE.definition(sol.definition)
    entry = compiled(sol)
    inputs = [t.float() for t in _inputs(torch, defn, {defn.var_axes[0]: 2}, seed=0)]
    call = make_caller(defn, entry, destination_passing_style=sol.destination_passing_style)
    with pytest.raises(ValueError, match="bfloat16"):
        call(*inputs)


def test_every_shipped_cuda_solution_is_covered():
    names = {s.qualified_name for s in CUDA_SOLUTIONS}
    assert {"rmsnorm_h4096/cuda_row_per_block", "rmsnorm_h4096/cuda_warp_per_row",
            "fused_add_rmsnorm_h4096/cuda_row_per_block", "silu_and_mul_i14336/cuda_vec16"} <= names
