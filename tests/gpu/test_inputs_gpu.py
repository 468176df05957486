"""Dispatch checks on the GPU: a negative view never reaches the CUDA or Triton RMSNorm (each
reads the memory, which holds x for -x), ``out=`` on the wrong device is refused."""
from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.gpu

DEF = "rmsnorm_h4096"


def _workspace(tmp_path, solution: str):
    """The rmsnorm definition and ``solution`` (shipped), with a PASSED record on this GPU."""
    from fibuild.compile.keys import solution_digest
    from fibuild.config import Settings
    from fibuild.devices import device_slug
    from fibuild.registry import Registry
    from fibuild.spec.model import Evaluation, LatencyStats
    from fibuild.spec.workspace import Workspace, shipped_root

    src = shipped_root()
    root = tmp_path / "ws"
    (root / "defs" / "rmsnorm").mkdir(parents=True)
    shutil.copy(src / "defs" / "rmsnorm" / f"{DEF}.yaml", root / "defs" / "rmsnorm")
    shutil.copytree(src / "solutions" / DEF / solution, root / "solutions" / DEF / solution,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(src / "solutions" / "_lib", root / "solutions" / "_lib",  # the libraries it names
                    ignore=shutil.ignore_patterns("__pycache__"))
    ws = Workspace(root)
    defn, sol = ws.definition(DEF), ws.solution(solution, DEF)
    Registry(ws.registry_dir).append(Evaluation(
        definition=DEF, solution=solution, solution_digest=solution_digest(defn, sol), build_key="",
        workload_uuid=f"{DEF}-batch_size32", axes={"batch_size": 32}, status="PASSED",
        device=device_slug("cuda"), latency=LatencyStats(5.0, 4.9, 5.1, 5.0, 100),
        timestamp="2026-01-02T03:04:05Z"))
    return Settings.from_env({"FIBUILD_ROOT": str(root), "FIBUILD_CACHE_DIR": str(tmp_path / "cache"),
                              "FIBUILD_DEVICE": "cuda"})


def _reference(x, w):
    import torch

    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5) * w.float()).to(x.dtype)


@pytest.mark.parametrize("solution", ["cuda_warp_per_row", "triton_row"])
def test_a_negative_view_never_reaches_a_gpu_kernel(tmp_path, monkeypatch, solution):
    import torch

    import fibuild
    from fibuild.errors import InputError
    from fibuild.runtime import input_checks

    settings = _workspace(tmp_path, solution)
    k = fibuild.load(DEF, settings=settings)
    x = torch.randn(32, 4096, device="cuda").to(torch.bfloat16)
    w = (torch.rand(4096, device="cuda") + 0.5).to(torch.bfloat16)
    torch.testing.assert_close(k(x, w), _reference(x, w), atol=2e-2, rtol=2e-2)
    assert k.explain(batch_size=32).solution.name == solution
    with pytest.raises(InputError, match="is a negative view"):
        k(x._neg_view(), w)
    with pytest.raises(InputError, match="out= for output 'output': expected a tensor on cuda"):
        k(x, w, out=torch.empty(32, 4096, dtype=torch.bfloat16))
    # The danger is real: without the check the kernel computes rmsnorm(x) for -x.
    original = input_checks.guarded
    monkeypatch.setattr("fibuild.runtime.dispatch.guarded",
                        lambda *a, **kw: original(*a, **dict(kw, reads_memory=False)))
    unguarded = fibuild.load(DEF, settings=settings)
    torch.testing.assert_close(unguarded(x._neg_view(), w), _reference(x, w), atol=2e-2, rtol=2e-2)
