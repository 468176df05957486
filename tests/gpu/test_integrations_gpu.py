"""The serving integration with the real flashinfer-python on a GPU: each adapted call returns
what the original returns (in-place effects included) and really runs the resolved solution,
also inside a captured CUDA graph."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
try:  # collected everywhere; each test skips without flashinfer-python (GPU machines have it)
    import flashinfer
except ImportError:
    flashinfer = None

import fibuild  # noqa: E402
from fibuild.config import Settings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "integrations"))
from integration_helpers import SmallWorkspace  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(flashinfer is None, reason="needs flashinfer-python")]
BF16 = torch.bfloat16
LLAMA = {
    "rmsnorm_h4096": ("rmsnorm", {"hidden_size": 4096, "dtype": "bfloat16", "eps": 1e-5}),
    "fused_add_rmsnorm_h4096": ("fused_add_rmsnorm", {"hidden_size": 4096, "dtype": "bfloat16", "eps": 1e-5}),
    "silu_and_mul_i14336": ("silu_and_mul", {"intermediate_size": 14336, "dtype": "bfloat16"}),
    "gemm_n6144_k4096_bf16": ("gemm", {"n": 6144, "k": 4096, "dtype": "bfloat16"}),
    "gqa_paged_decode_h32_kv8_d128_ps1": ("gqa_paged_decode", {"num_qo_heads": 32, "num_kv_heads": 8,
                                                               "head_dim": 128, "page_size": 1, "dtype": "bfloat16"}),
}


@pytest.fixture
def ws(tmp_path, monkeypatch):
    import integration_helpers

    monkeypatch.setattr(integration_helpers, "SMALL", LLAMA)
    w = SmallWorkspace.create(tmp_path)
    w.settings = Settings.from_env({"FIBUILD_ROOT": str(w.root), "FIBUILD_CACHE_DIR": str(tmp_path / "cache"),
                                    "FIBUILD_DEVICE": "cuda"})
    yield w
    fibuild.disable()


def _record_cuda(ws, name, axes, solution="counted"):
    from fibuild.compile.keys import solution_digest
    from fibuild.devices import device_slug
    from fibuild.registry import Registry
    from fibuild.spec.model import Evaluation, LatencyStats
    from fibuild.spec.workspace import Workspace

    w = Workspace(ws.root)
    defn, sol = w.definition(name), w.solution(solution, name)
    Registry(w.registry_dir).append(Evaluation(
        definition=name, solution=solution, solution_digest=solution_digest(defn, sol), build_key="",
        workload_uuid=f"{name}-gpu", axes=axes, status="PASSED", device=device_slug("cuda"),
        latency=LatencyStats(1.0, 1.0, 1.0, 1.0, 1), timestamp="2026-01-01T00:00:00Z"))


def _calls(name):
    from fibuild.integrations.activation import active

    return active().session.kernel(name)


def _close(a, b, tol=2e-2):
    torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)


def test_norms_silu_and_linear_substituted_match_flashinfer(ws):
    for name, axes in (("rmsnorm_h4096", {"batch_size": 8}), ("fused_add_rmsnorm_h4096", {"batch_size": 8}),
                       ("silu_and_mul_i14336", {"num_tokens": 8}), ("gemm_n6144_k4096_bf16", {"M": 8})):
        ws.add_counted_solution(name)
        _record_cuda(ws, name, axes)
    x = torch.randn(8, 4096, dtype=BF16, device="cuda")
    r = torch.randn(8, 4096, dtype=BF16, device="cuda")
    w = torch.rand(4096, dtype=BF16, device="cuda")
    g = torch.randn(8, 28672, dtype=BF16, device="cuda")
    b = torch.randn(6144, 4096, dtype=BF16, device="cuda") / 64
    want = [flashinfer.norm.rmsnorm(x, w, 1e-5), flashinfer.activation.silu_and_mul(g),
            torch.nn.functional.linear(x, b)]
    xo, ro = x.clone(), r.clone()
    flashinfer.norm.fused_add_rmsnorm(xo, ro, w, 1e-5)
    fibuild.enable(apply=True, settings=ws.settings)
    got = [flashinfer.norm.rmsnorm(x, w, 1e-5), flashinfer.activation.silu_and_mul(g), torch.nn.functional.linear(x, b)]
    xs, rs = x.clone(), r.clone()
    assert flashinfer.norm.fused_add_rmsnorm(xs, rs, w, 1e-5) is None
    for a, e in zip(got, want):
        _close(a, e, 5e-2)
    _close(xs, xo)
    _close(rs, ro)
    for name in ("rmsnorm_h4096", "fused_add_rmsnorm_h4096", "silu_and_mul_i14336", "gemm_n6144_k4096_bf16"):
        kernel = _calls(name)
        key = kernel.keys[0]
        assert len(kernel.entry(key).__globals__["CALLS"]) == 1, name


def _decode_inputs(batch=4, kv_len=300, pages=4096):
    g = torch.Generator(device="cuda").manual_seed(0)
    indptr = torch.arange(0, (batch + 1) * kv_len, kv_len, dtype=torch.int32, device="cuda")
    indices = torch.randperm(pages, device="cuda", generator=g)[:batch * kv_len].to(torch.int32)
    k = torch.randn(pages, 8, 128, dtype=BF16, device="cuda", generator=g)
    v = torch.randn(pages, 8, 128, dtype=BF16, device="cuda", generator=g)
    q = torch.randn(batch, 32, 128, dtype=BF16, device="cuda", generator=g)
    return q, k, v, indptr, indices, torch.ones(batch, dtype=torch.int32, device="cuda")


def test_decode_wrapper_substituted_matches_flashinfer(ws):
    name = "gqa_paged_decode_h32_kv8_d128_ps1"
    q, k, v, indptr, indices, last = _decode_inputs()
    ws.add_counted_solution(name)
    _record_cuda(ws, name, {"batch_size": 4, "num_pages": 4096, "len_indptr": 5, "num_kv_indices": 1200})
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.uint8, device="cuda"))
    wrapper.plan(indptr, indices, last, 32, 8, 128, 1, q_data_type=BF16, kv_data_type=BF16)
    want, want_lse = wrapper.run(q, (k, v), return_lse=True)
    fibuild.enable(apply=True, settings=ws.settings)
    wrapper.plan(indptr, indices, last, 32, 8, 128, 1, q_data_type=BF16, kv_data_type=BF16)
    got, lse = wrapper.run(q, (k, v), return_lse=True)
    _close(got, want)
    _close(lse, want_lse)
    kernel = _calls(name)
    assert len(kernel.entry(kernel.keys[0]).__globals__["CALLS"]) == 1


def test_substitution_inside_a_captured_cuda_graph(ws):
    ws.add_counted_solution("rmsnorm_h4096")
    _record_cuda(ws, "rmsnorm_h4096", {"batch_size": 16})
    # a capturable solution: the counted one is Python + torch, fine in a graph
    fibuild.enable(apply=True, settings=ws.settings)
    x = torch.randn(16, 4096, dtype=BF16, device="cuda")
    w = torch.rand(4096, dtype=BF16, device="cuda")
    flashinfer.norm.rmsnorm(x, w, 1e-5)   # warm-up: the decision is made before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = flashinfer.norm.rmsnorm(x, w, 1e-5)
    calls = _calls("rmsnorm_h4096").entry((16,)).__globals__["CALLS"]
    n = len(calls)
    x.copy_(torch.randn(16, 4096, dtype=BF16, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    assert len(calls) == n   # replay runs no Python
    fibuild.disable()
    _close(y, flashinfer.norm.rmsnorm(x, w, 1e-5))


def test_triton_split_kv_decode_in_a_captured_graph_follows_every_replan(ws):
    """SGLang's pattern: fixed index buffers, plan() outside the graph, the decode wrapper's run
    captured once and replayed after each re-plan with other KV lengths; fibuild's Triton
    split-KV plan is refilled in place each time and the replay matches FlashInfer's own."""
    import shutil

    from fibuild.spec.calling import load_reference
    from fibuild.spec.workspace import Workspace

    name, batch, pool = "gqa_paged_decode_h32_kv8_d128_ps1", 4, 8192
    shipped = Path(__file__).resolve().parents[2] / "solutions" / name / "triton_split_kv"
    shutil.copytree(shipped, ws.root / "solutions" / name / "triton_split_kv")
    shutil.copytree(shipped.parents[1] / "_lib", ws.root / "solutions" / "_lib")  # the libraries it names
    _record_cuda(ws, name, {"batch_size": batch, "num_pages": pool, "len_indptr": batch + 1,
                            "num_kv_indices": 2048},
                 solution="triton_split_kv[MERGE=fused,WAVES=4,CHUNK=128,BLOCK_N=64,STAGES=3]")
    cls = flashinfer.BatchDecodeWithPagedKVCacheWrapper
    orig_plan, orig_run = cls.plan, cls.run  # unpatched: FlashInfer's own answer each step
    reference_wrapper = cls(torch.empty(128 << 20, dtype=torch.uint8, device="cuda"))
    g = torch.Generator(device="cuda").manual_seed(0)
    k = torch.randn(pool, 8, 128, dtype=BF16, device="cuda", generator=g)
    v = torch.randn(pool, 8, 128, dtype=BF16, device="cuda", generator=g)
    q = torch.empty(batch, 32, 128, dtype=BF16, device="cuda")
    indptr = torch.zeros(batch + 1, dtype=torch.int32, device="cuda")  # the engine's buffers
    indices = torch.zeros(pool, dtype=torch.int32, device="cuda")
    last = torch.ones(batch, dtype=torch.int32, device="cuda")
    fibuild.enable(apply=True, settings=ws.settings)
    wrapper = cls(torch.empty(128 << 20, dtype=torch.uint8, device="cuda"), "NHD", use_cuda_graph=True,
                  paged_kv_indptr_buffer=torch.zeros_like(indptr), paged_kv_indices_buffer=torch.zeros_like(indices),
                  paged_kv_last_page_len_buffer=torch.ones_like(last))

    def step(lens):
        """The engine's next step: a new table written into its buffers, then plan()."""
        indptr.copy_(torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32))
        n = sum(lens)
        indices[:n].copy_(torch.randperm(pool, device="cuda", generator=g)[:n].to(torch.int32))
        q.copy_(torch.randn(q.shape, dtype=BF16, device="cuda", generator=g))
        wrapper.plan(indptr, indices[:n], last, 32, 8, 128, 1, q_data_type=BF16, kv_data_type=BF16)

    def expected(lens):
        if 0 in lens:  # an empty sequence: the definition's answer (zero row, lse -inf)
            run = load_reference(Workspace(ws.root).definition(name))["run"]
            return run(q, k.unsqueeze(1), v.unsqueeze(1), indptr, indices[:sum(lens)], 128 ** -0.5)
        orig_plan(reference_wrapper, indptr, indices[:sum(lens)], last, 32, 8, 128, 1,
                  q_data_type=BF16, kv_data_type=BF16)
        return orig_run(reference_wrapper, q, (k, v), return_lse=True)

    step([300, 50, 1000, 7])
    want = expected([300, 50, 1000, 7])
    got = wrapper.run(q, (k, v), return_lse=True)  # warm-up, eager: decides, plans, compiles
    _close(got[0], want[0])
    _close(got[1], want[1])
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = wrapper.run(q, (k, v), return_lse=True)
    (plan, _), = cls.run.fibuild_graphs.captured(wrapper)
    assert type(plan).__name__ == "DecodePlan" and plan.split   # fibuild's run was captured
    kernel = _calls(name)
    entry = next(kernel.entry(key) for key in kernel.keys)
    assert entry.plans_made == 1
    for lens in ([300, 50, 1000, 7], [1000, 1, 600, 2000], [5, 5, 5, 5], [2000, 2000, 10, 300], [64, 0, 129, 1]):
        step(lens)  # plan() refills the captured plan for the new table
        want = expected(lens)
        for _ in range(2):
            out.zero_()
            graph.replay()
            torch.cuda.synchronize()
            _close(out, want[0])
            _close(lse, want[1])
    assert entry.plans_made == 1 and entry.pins(plan) >= 1
    from fibuild.integrations.wrapper_sites import release_graphs

    del graph
    release_graphs(wrapper)
    assert entry.pins(plan) == 0


@pytest.mark.slow
def test_serving_step_end_to_end_small(tmp_path):
    import subprocess

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "serving_step.py"
    # the shipped registry's evaluations choose what is applied (the full run also benches)
    proc = subprocess.run([sys.executable, str(script), "--layers", "2", "--batch", "1", "16", "--kv-len", "256",
                           "--iters", "5", "--out", str(tmp_path / "out"), "--skip-bench"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| 16 | 256 |" in proc.stdout
    summary = json.loads((tmp_path / "out" / "serving_step.json").read_text())
    assert summary["substituted"], "nothing was substituted"
    for row in summary["rows"]:
        assert row["traced_max_abs_diff"] == 0 and row["agree"], row
