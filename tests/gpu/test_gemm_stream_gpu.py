"""The weight-streaming GEMM solutions on a CUDA GPU: every declared workload against the
definition's reference (one variant), every variant of the grid at a few M, and captured
and replayed in a CUDA graph with the output checked."""
from __future__ import annotations

import pytest

from fibuild.spec.calling import load_reference
from fibuild.spec.workspace import Workspace, shipped_root

pytestmark = pytest.mark.gpu

WORKSPACE = Workspace(shipped_root())
GEMMS = sorted(d for d in WORKSPACE.definitions if d.startswith("gemm_"))
#: one variant per definition on every workload: the large tile (correct at every M)
LARGE = "triton_stream[KERNEL=dot,BLOCK_M=128,BLOCK_N=128,BLOCK_K=64,STAGES=3,WARPS=8]"
CASES = [(d, w.axes["M"]) for d in GEMMS for w in WORKSPACE.definition(d).workloads]
#: every variant of the grid, on the O projection in both dtypes, at a few M
GRID = [(d, s.name) for d in ("gemm_n4096_k4096", "gemm_n4096_k4096_bf16")
        for s in WORKSPACE.solutions(d) if s.family == "triton_stream"]


def _entry(definition, solution):
    """The variant as fibuild builds and loads it (value-returning)."""
    from fibuild.compile.cache import BuildCache
    from fibuild.config import Settings

    return BuildCache(Settings.from_env()).get_or_build(WORKSPACE.definition(definition),
                                                       WORKSPACE.solution(solution, definition)).call


def _operands(torch, defn, m, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    dtype = getattr(torch, defn.inputs[0].dtype)
    n, k = defn.const_axes["N"], defn.const_axes["K"]
    return (torch.randn(m, k, generator=g, device="cuda").to(dtype),
            torch.randn(n, k, generator=g, device="cuda").to(dtype))


def _check(torch, defn, got, want):
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), atol=defn.tolerance.atol, rtol=defn.tolerance.rtol)


@pytest.mark.parametrize(("definition", "m"), CASES, ids=[f"{d}-M{m}" for d, m in CASES])
def test_matches_reference_on_every_workload(definition, m):
    import torch

    defn = WORKSPACE.definition(definition)
    a, b = _operands(torch, defn, m, seed=m)
    _check(torch, defn, _entry(definition, LARGE)(a, b), load_reference(defn)["run"](a, b))


@pytest.mark.parametrize(("definition", "solution"), GRID, ids=[f"{d}-{s}" for d, s in GRID])
def test_every_variant_matches_reference(definition, solution):
    import torch

    defn = WORKSPACE.definition(definition)
    for m in (1, 5, 130):
        a, b = _operands(torch, defn, m, seed=m)
        _check(torch, defn, _entry(definition, solution)(a, b), load_reference(defn)["run"](a, b))


@pytest.mark.parametrize("definition", GEMMS)
def test_replays_in_a_cuda_graph(definition):
    import torch

    defn = WORKSPACE.definition(definition)
    gemm, run = _entry(definition, LARGE), load_reference(defn)["run"]
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
