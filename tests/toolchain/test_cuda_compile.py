"""Every shipped CUDA solution compiles with nvcc for sm_90a, loads, and checks its arguments.

No GPU needed: the module is loaded with ``tvm_ffi.load_module`` (libcudart loads without a
driver) and called with CPU tensors, which each kernel must refuse with a ValueError before
touching the device.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fibuild.spec.workspace import Workspace, shipped_root

pytestmark = pytest.mark.build

WORKSPACE = Workspace(shipped_root())
CUDA_SOLUTIONS = [s for s in WORKSPACE.solutions() if s.language == "cuda"]
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Compile lazily, once per solution: {qualified name: (so path, ptxas report)}."""
    if not (CUDA_HOME / "bin" / "nvcc").exists():
        pytest.skip(f"no nvcc under CUDA_HOME={CUDA_HOME}")
    import tvm_ffi.libinfo as libinfo

    out_dir = tmp_path_factory.mktemp("cuda-compile")
    lib_dir = str(Path(libinfo.find_libtvm_ffi()).parent)
    done: dict = {}

    def get(sol):
        if sol.qualified_name not in done:
            out = out_dir / f"{sol.definition}-{sol.name}.so"
            cmd = [str(CUDA_HOME / "bin" / "nvcc"), "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-shared",
                   "-gencode=arch=compute_90a,code=sm_90a", "-Xptxas", "-v",
                   "-isystem", libinfo.find_include_path(), *sol.build.cuda_cflags,
                   *(f"-I{d}" for d in sol.source_dirs),  # its folder and its libraries' (shared headers)
                   *(str(sol.path / s) for s in sol.sources if s.endswith(".cu")),
                   f"-L{lib_dir}", "-ltvm_ffi", "-Xlinker", "-rpath", "-Xlinker", lib_dir,
                   f"-L{CUDA_HOME}/lib64", "-lcudart", "-o", str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            assert proc.returncode == 0, f"nvcc failed for {sol.qualified_name}:\n{proc.stderr[-3000:]}"
            done[sol.qualified_name] = (out, proc.stderr)
        return done[sol.qualified_name]

    return get


def _cpu_args(torch, defn, rows: int):
    sizes = {**defn.const_axes, defn.var_axes[0]: rows}
    args = [torch.randn([sizes[a] for a in s.shape], dtype=getattr(torch, s.dtype)) for s in defn.inputs]
    args += [torch.empty([sizes[a] for a in o.shape], dtype=getattr(torch, o.dtype))
             for o in defn.outputs if not o.inplace]
    return args


def test_ships_cuda_solutions_for_each_memory_bound_definition():
    assert {s.definition for s in CUDA_SOLUTIONS} >= {"rmsnorm_h4096", "fused_add_rmsnorm_h4096",
                                                      "silu_and_mul_i14336"}
    for sol in CUDA_SOLUTIONS:
        assert sol.destination_passing_style and "sm_90a" in sol.target_hardware, sol.qualified_name


@pytest.mark.parametrize("sol", CUDA_SOLUTIONS, ids=[s.qualified_name for s in CUDA_SOLUTIONS])
def test_compiles_for_sm90a_without_spills(sol, compiled):
    so, ptxas = compiled(sol)
    assert so.stat().st_size > 0
    reports = [line for line in ptxas.splitlines() if "spill stores" in line]
    assert reports, ptxas
    # Spilled registers go to local memory: for these kernels, a silent slowdown.
    assert all(line.strip().startswith("0 bytes stack frame, 0 bytes spill stores") for line in reports), ptxas


@pytest.mark.parametrize("sol", CUDA_SOLUTIONS, ids=[s.qualified_name for s in CUDA_SOLUTIONS])
def test_entry_point_refuses_cpu_tensors_and_bad_shapes(sol, compiled):
    import torch
    import tvm_ffi

    so, _ = compiled(sol)
    entry = tvm_ffi.load_module(str(so))[sol.entry_symbol]
    defn = WORKSPACE.definition(sol.definition)
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        entry(*_cpu_args(torch, defn, 3))
    bad = _cpu_args(torch, defn, 3)
    bad[0] = bad[0][:, :-8]  # the const axis off by one vector
    with pytest.raises(ValueError, match="must have shape"):
        entry(*bad)
