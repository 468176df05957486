"""The engines' own norm and activation kernels on a GPU, substituted by fibuild's shipped
kernels (Triton rmsnorm and silu_and_mul, CUDA fused_add_rmsnorm) as the engines call them:

- vLLM 0.34.0's layers calling the ``_C`` operators (the stand-in defines them with CUDA
  kernels in torch; vLLM itself is not installed here), taken at the dispatcher, eagerly and
  inside a captured CUDA graph replayed with new inputs;
- SGLang 0.5.23's layers calling ``sgl_kernel`` (the stand-in forwards its norms to the real
  ``flashinfer.norm``, as sglang-kernel 0.4.10 does) and SGLang's own JIT ``silu_and_mul``.

Every output is checked against the fp32 torch reference."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import fibuild  # noqa: E402
from fibuild.config import Settings  # noqa: E402

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "unit" / "integrations"))
from integration_helpers import FIXTURES, SmallWorkspace  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
BF16 = torch.bfloat16
SHIPPED = {  # definition -> (op template parameters, shipped solution, axis)
    "rmsnorm_h4096": (("rmsnorm", {"hidden_size": 4096, "dtype": "bfloat16", "eps": 1e-5}), "triton_row",
                      "batch_size"),
    "fused_add_rmsnorm_h4096": (("fused_add_rmsnorm", {"hidden_size": 4096, "dtype": "bfloat16", "eps": 1e-5}),
                                "cuda_row_per_block", "batch_size"),
    "silu_and_mul_i14336": (("silu_and_mul", {"intermediate_size": 14336, "dtype": "bfloat16"}), "triton_vec",
                            "num_tokens"),
}


@pytest.fixture
def ws(tmp_path, monkeypatch):
    import integration_helpers

    monkeypatch.setattr(integration_helpers, "SMALL", {name: spec for name, (spec, _, _) in SHIPPED.items()})
    w = SmallWorkspace.create(tmp_path)
    w.settings = Settings.from_env({"FIBUILD_ROOT": str(w.root), "FIBUILD_CACHE_DIR": str(tmp_path / "cache"),
                                    "FIBUILD_DEVICE": "cuda"})
    for name, (_, solution, axis) in SHIPPED.items():
        w.add_shipped_solution(name, solution)
        w.record(name, solution, {axis: 16}, device="cuda")
    yield w
    fibuild.disable()


def _on_path(monkeypatch, *folders):
    for folder in folders:
        monkeypatch.syspath_prepend(str(FIXTURES / folder))


def _rms(x, w, eps=1e-5):
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()


def _silu(g):
    gf = g.float()
    half = gf.shape[-1] // 2
    return torch.nn.functional.silu(gf[..., :half]) * gf[..., half:]


def _close(a, b, tol=3e-2):
    torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)


def _all_substituted(apis):
    stats = fibuild.integrations.stats()
    for api in apis:
        row = stats[api]
        assert row["substituted"] > 0 and row["original"] == 0, (api, row)
    return stats


def test_vllm_layers_run_fibuilds_kernels_eagerly_and_in_a_replayed_cuda_graph(ws, monkeypatch):
    _on_path(monkeypatch, "vllm_stub")
    import vllm._C_stable_libtorch as ops
    from vllm.model_executor.layers.activation import SiluAndMul
    from vllm.model_executor.layers.layernorm import RMSNorm

    fibuild.enable(apply=True, settings=ws.settings)
    norm = RMSNorm(4096, eps=1e-5, dtype=BF16).cuda()
    with torch.no_grad():
        norm.weight.copy_(torch.rand(4096, dtype=BF16, device="cuda"))
    act = SiluAndMul()
    w = norm.weight.data
    x = torch.empty(16, 4096, dtype=BF16, device="cuda")
    residual = torch.empty_like(x)
    gate_up = torch.empty(16, 28672, dtype=BF16, device="cuda")

    def fill(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        for t in (x, residual, gate_up):
            t.copy_(torch.randn(t.shape, generator=g, device="cuda", dtype=BF16))
        return x.clone(), residual.clone(), gate_up.clone()

    def step():
        normed, res = norm(x, residual)      # in place: x <- rmsnorm(x + residual), residual <- x + residual
        return norm(normed), res, act(gate_up)

    def check(inputs, outputs):
        x0, r0, g0 = inputs
        summed = (x0.float() + r0.float()).to(BF16)
        _close(outputs[1], summed)
        _close(outputs[0], _rms(_rms(summed, w).to(BF16), w))
        _close(outputs[2], _silu(g0))

    before = ops.CALLS.copy()
    inputs = fill(0)
    check(inputs, step())                    # eager: decides and runs the substitutes
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    inputs = fill(1)
    with torch.cuda.graph(graph):
        captured = step()
    for seed in (2, 3, 4):                   # each replay with new inputs, checked
        inputs = fill(seed)
        graph.replay()
        torch.cuda.synchronize()
        check(inputs, captured)
    assert ops.CALLS == before               # vLLM's own kernels never ran
    _all_substituted(("torch.ops._C.rms_norm", "torch.ops._C.fused_add_rms_norm", "torch.ops._C.silu_and_mul"))


def test_an_inductor_compiled_vllm_layer_reaches_fibuilds_kernels(ws, monkeypatch):
    """vLLM compiles its model with Inductor. Where its IR priority names ``vllm_c`` (and custom
    ops enable ``SiluAndMul``'s CUDA path), the compiled code keeps the ``_C`` operators as
    calls, and each call reaches fibuild's kernel at the dispatcher."""
    _on_path(monkeypatch, "vllm_stub")
    import vllm._C_stable_libtorch as ops
    from vllm.model_executor.layers.activation import SiluAndMul
    from vllm.model_executor.layers.layernorm import RMSNorm

    fibuild.enable(apply=True, settings=ws.settings)
    norm = RMSNorm(4096, eps=1e-5, dtype=BF16).cuda()
    with torch.no_grad():
        norm.weight.copy_(torch.rand(4096, dtype=BF16, device="cuda"))
    act = SiluAndMul()

    def layer(x, residual, gate_up):
        hidden, residual = norm(x, residual)
        return norm(hidden), residual, act(gate_up)

    compiled = torch.compile(layer, fullgraph=True)
    w = norm.weight.data
    before = ops.CALLS.copy()
    for seed in (0, 1):
        g = torch.Generator(device="cuda").manual_seed(seed)
        x, residual = (torch.randn(16, 4096, dtype=BF16, device="cuda", generator=g) for _ in range(2))
        gate_up = torch.randn(16, 28672, dtype=BF16, device="cuda", generator=g)
        summed = (x.float() + residual.float()).to(BF16)
        with torch.no_grad():
            normed, new_residual, act_out = compiled(x, residual, gate_up)
        _close(new_residual, summed)
        _close(normed, _rms(_rms(summed, w).to(BF16), w))
        _close(act_out, _silu(gate_up))
    assert ops.CALLS == before
    _all_substituted(("torch.ops._C.rms_norm", "torch.ops._C.fused_add_rms_norm", "torch.ops._C.silu_and_mul"))


def test_sglang_layers_run_fibuilds_kernels_in_place_of_sgl_kernel(ws, monkeypatch):
    pytest.importorskip("flashinfer")  # the sgl_kernel stand-in forwards to it, as sglang-kernel 0.4.10 does
    for name in [n for n in sys.modules if n.split(".")[0] in ("sgl_kernel", "sglang")]:
        monkeypatch.delitem(sys.modules, name)
    _on_path(monkeypatch, "sgl_kernel_stub", "sglang_stub")
    import sgl_kernel
    from sglang.kernels.ops.activation import activation as jit
    from sglang.srt.layers import activation, layernorm  # bound before enable, as in a running SGLang

    fibuild.enable(apply=True, settings=ws.settings)
    norm = layernorm.RMSNorm(4096, eps=1e-5, weight_dtype=BF16).cuda()
    with torch.no_grad():
        norm.weight.copy_(torch.rand(4096, dtype=BF16, device="cuda"))
    w = norm.weight.data
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(16, 4096, dtype=BF16, device="cuda", generator=g)
    residual = torch.randn(16, 4096, dtype=BF16, device="cuda", generator=g)
    gate_up = torch.randn(16, 28672, dtype=BF16, device="cuda", generator=g)
    _close(norm(x), _rms(x, w))
    xs, rs = x.clone(), residual.clone()
    normed, res = norm(xs, rs)
    summed = (x.float() + residual.float()).to(BF16)
    _close(res, summed)
    _close(normed, _rms(summed, w))
    _close(activation.SiluAndMul()(gate_up), _silu(gate_up))   # aligned rows: SGLang's own JIT kernel
    out = torch.empty(16, 14336, dtype=BF16, device="cuda")
    assert sgl_kernel.silu_and_mul(gate_up, out) is out   # as SGLang's unaligned paths call it
    _close(out, _silu(gate_up))
    stats = _all_substituted(("sgl_kernel.rmsnorm", "sgl_kernel.fused_add_rmsnorm", "sgl_kernel.silu_and_mul",
                              "sglang.kernels.ops.activation.activation.silu_and_mul"))
    assert "flashinfer.norm.rmsnorm" not in stats    # the substitute ran before sgl_kernel forwarded
    assert sum(sgl_kernel.CALLS.values()) == 0 and jit.CALLS["silu_and_mul"] == 0
