"""fibuild.load on CUDA tensors: routing, the custom op under torch.compile and CUDA graphs."""
from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.gpu

DEF = "rmsnorm_h4096"


@pytest.fixture
def cuda_workspace(tmp_path):
    """A copy of the rmsnorm definition and torch_fp32, with a PASSED record on this GPU."""
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
    shutil.copytree(src / "solutions" / DEF / "torch_fp32", root / "solutions" / DEF / "torch_fp32",
                    ignore=shutil.ignore_patterns("__pycache__"))
    ws = Workspace(root)
    defn, sol = ws.definition(DEF), ws.solution("torch_fp32", DEF)
    Registry(ws.registry_dir).append(Evaluation(
        definition=DEF, solution="torch_fp32", solution_digest=solution_digest(defn, sol), build_key="",
        workload_uuid=f"{DEF}-batch_size32", axes={"batch_size": 32}, status="PASSED",
        device=device_slug("cuda"), latency=LatencyStats(5.0, 4.9, 5.1, 5.0, 100),
        timestamp="2026-01-02T03:04:05Z"))
    return Settings.from_env({"FIBUILD_ROOT": str(root), "FIBUILD_CACHE_DIR": str(tmp_path / "cache"),
                              "FIBUILD_DEVICE": "cuda"})


def _inputs(batch):
    import torch

    x = torch.randn(batch, 4096, device="cuda").to(torch.bfloat16)
    w = (torch.rand(4096, device="cuda") + 0.5).to(torch.bfloat16)
    return x, w


def _reference(x, w):
    import torch

    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5) * w.float()).to(x.dtype)


def test_load_routes_cuda_calls(cuda_workspace):
    import torch

    import fibuild

    k = fibuild.load(DEF, settings=cuda_workspace)
    for batch in (32, 7, 1024):
        x, w = _inputs(batch)
        y = k(x, w)
        assert y.device.type == "cuda"
        torch.testing.assert_close(y, _reference(x, w), atol=1e-2, rtol=1e-2)
        assert k.explain(batch_size=batch).solution.name == "torch_fp32"
    out = torch.empty(32, 4096, dtype=torch.bfloat16, device="cuda")
    x, w = _inputs(32)
    assert k(x, w, out=out) is out
    torch.testing.assert_close(out, _reference(x, w), atol=1e-2, rtol=1e-2)


def test_custom_op_under_compile_and_cuda_graph(cuda_workspace):
    import torch

    import fibuild

    k = fibuild.load(DEF, settings=cuda_workspace)
    op = k.op
    x, w = _inputs(32)
    compiled = torch.compile(lambda a, b: op(a, b) * 2, fullgraph=True)
    torch.testing.assert_close(compiled(x, w), _reference(x, w) * 2, atol=2e-2, rtol=2e-2)

    op(x, w)  # resolve and load outside capture: capture may not do I/O
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = op(x, w)
    x.copy_(_inputs(32)[0])
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, _reference(x, w), atol=1e-2, rtol=1e-2)


def test_auto_mode_resolves_a_key_first_called_in_a_capture_for_graphs(cuda_workspace):
    """``mode="auto"``: a key first seen inside a CUDA graph capture is resolved in graph mode,
    one first seen eagerly in eager mode; the call inside the capture replays correctly."""
    import torch

    import fibuild

    k = fibuild.load(DEF, settings=cuda_workspace)
    x, w = _inputs(32)
    k(x, w)
    assert k.resolution((32,)).mode == "eager"
    x2, w2 = _inputs(8)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):
        k.resolution((8,))  # warm the table outside the capture; nothing is memoized by it
        with torch.cuda.graph(graph):
            y = k(x2, w2)
    torch.cuda.current_stream().wait_stream(side)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, _reference(x2, w2), atol=1e-2, rtol=1e-2)
    assert k.resolution((8,)).mode == "graph"
