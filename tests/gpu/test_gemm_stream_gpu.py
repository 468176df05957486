"""The weight-streaming GEMM solutions on a CUDA GPU: every declared workload against the
definition's reference, and captured and replayed in a CUDA graph with the output checked."""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys

import pytest

from fibuild.spec.calling import load_reference
from fibuild.spec.workspace import Workspace, shipped_root

pytestmark = pytest.mark.gpu

WORKSPACE = Workspace(shipped_root())
STREAM = [s for s in WORKSPACE.solutions() if s.name == "triton_stream"]
CASES = [(s, w.axes["M"]) for s in STREAM for w in WORKSPACE.definition(s.definition).workloads]


def _entry(sol):
    """The solution's ``gemm``, its directory imported as a package (as fibuild's builder does)."""
    name = "gpu_stream_" + sol.definition
    if name not in sys.modules:
        package = importlib.machinery.ModuleSpec(name, None, is_package=True)
        sys.modules[name] = importlib.util.module_from_spec(package)
        sys.modules[name].__path__ = [str(d) for d in sol.source_dirs]
    return importlib.import_module(name + ".kernel").gemm


def _operands(torch, defn, m, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    dtype = getattr(torch, defn.inputs[0].dtype)
    n, k = defn.const_axes["N"], defn.const_axes["K"]
    return (torch.randn(m, k, generator=g, device="cuda").to(dtype),
            torch.randn(n, k, generator=g, device="cuda").to(dtype))


def _check(torch, defn, got, want):
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), atol=defn.tolerance.atol, rtol=defn.tolerance.rtol)


@pytest.mark.parametrize(("sol", "m"), CASES, ids=[f"{s.definition}-M{m}" for s, m in CASES])
def test_matches_reference_on_every_workload(sol, m):
    import torch

    defn = WORKSPACE.definition(sol.definition)
    a, b = _operands(torch, defn, m, seed=m)
    _check(torch, defn, _entry(sol)(a, b), load_reference(defn)["run"](a, b))


@pytest.mark.parametrize("sol", STREAM, ids=[s.qualified_name for s in STREAM])
def test_replays_in_a_cuda_graph(sol):
    import torch

    defn = WORKSPACE.definition(sol.definition)
    gemm, run = _entry(sol), load_reference(defn)["run"]
    for m in (1, 16):
        a, b = _operands(torch, defn, m, seed=7)
        gemm(a, b)  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            c = gemm(a, b)
        a.copy_(torch.randn_like(a))  # the replay must read the new A
        graph.replay()
        torch.cuda.synchronize()
        _check(torch, defn, c, run(a, b))
