"""The engines' own kernels, called as the engines call them (stand-ins with the exact
signatures; each fixture module names the engine file, version and lines it replays):

- SGLang 0.5.23's ``RMSNorm.forward_cuda`` and ``SiluAndMul.forward_cuda`` calling the names
  they bound by ``from sgl_kernel import ...`` (sglang-kernel 0.4.10), whether those layers
  were imported before fibuild was enabled or after;
- vLLM 0.34.0's ``RMSNorm`` (``vllm_c`` provider) and ``SiluAndMul`` calling the ``_C`` ops,
  taken at the dispatcher, eager and compiled.
"""
from __future__ import annotations

import pytest
import torch
from integration_helpers import SMALL, solution_calls

import fibuild
from fibuild.integrations.adapters.base import bind
from fibuild.integrations.adapters.engine_kernels import (
    SglangJitSiluAndMul,
    SglSiluAndMul,
    VllmFusedAddRMSNorm,
    VllmRMSNorm,
    VllmSiluAndMul,
)

BF16 = torch.bfloat16
# SGLang sends silu_and_mul to sgl_kernel only when the output row is not a multiple of 8
# bf16 values on Hopper (sglang/srt/layers/activation.py); 36 is, for sgl_kernel, 16-byte rows.
SMALL.setdefault("silu_and_mul_i36", ("silu_and_mul", {"intermediate_size": 36, "dtype": "bfloat16"}))


def _call(adapter, *args, **kwargs):
    return bind(adapter.parameters, args, kwargs)


def _close(a, b):
    torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)


def _rms(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)


@pytest.mark.parametrize("adapter, args, name", [
    (SglSiluAndMul(), (torch.zeros(5, 72, dtype=BF16), torch.zeros(5, 36, dtype=BF16)), "silu_and_mul_i36"),
    (VllmRMSNorm(), (torch.zeros(2, 3, 4096, dtype=BF16), torch.zeros(2, 3, 4096, dtype=BF16),
                     torch.zeros(4096, dtype=BF16), 1e-5), "rmsnorm_h4096"),
    (VllmFusedAddRMSNorm(), (torch.zeros(3, 4096, dtype=BF16), torch.ones(3, 4096, dtype=BF16),
                             torch.zeros(4096, dtype=BF16), 1e-5), "fused_add_rmsnorm_h4096"),
    (VllmSiluAndMul(), (torch.zeros(7, 14336, dtype=BF16), torch.zeros(7, 28672, dtype=BF16)), "silu_and_mul_i14336"),
])
def test_engine_calls_are_named_as_the_dataset_names_them(adapter, args, name):
    assert adapter.matches(_call(adapter, *args)) == name


@pytest.mark.parametrize("adapter, args, reason", [
    (SglSiluAndMul(), (torch.zeros(5, 36, dtype=BF16),), "16 bytes"),
    (SglangJitSiluAndMul(), (torch.zeros(5, 64, dtype=BF16), None, torch.zeros(5, dtype=torch.int32)),
     "filtered by expert"),
    (SglSiluAndMul(), (torch.zeros(5, 72, dtype=BF16), torch.zeros(5, 35, dtype=BF16)), "out has shape"),
    (VllmRMSNorm(), (torch.zeros(3, 64, dtype=BF16), torch.zeros(3, 64, dtype=BF16), None, 1e-5), "weight is None"),
    (VllmRMSNorm(), (torch.zeros(3, 64, dtype=torch.float16), torch.zeros(3, 64, dtype=BF16),
                     torch.zeros(64, dtype=BF16), 1e-5), "result is float16"),
    (VllmFusedAddRMSNorm(), (torch.zeros(3, 64, dtype=BF16), torch.zeros(2, 64, dtype=BF16),
                             torch.zeros(64, dtype=BF16), 1e-5), "residual has shape"),
    (VllmSiluAndMul(), (torch.zeros(3, 32, dtype=BF16), torch.zeros(3, 63, dtype=BF16)), "2 * intermediate_size"),
])
def test_engine_calls_fibuild_cannot_take_say_why(adapter, args, reason):
    call = _call(adapter, *args)
    assert adapter.matches(call) is None
    assert reason in adapter.why_not(call)


def test_the_same_memory_as_input_and_residual_is_refused():
    x, w = torch.zeros(3, 64, dtype=BF16), torch.zeros(64, dtype=BF16)
    assert "same memory" in VllmFusedAddRMSNorm().why_not(_call(VllmFusedAddRMSNorm(), x, x, w, 1e-5))


# -- SGLang ------------------------------------------------------------------------------------

def _sglang_step(layernorm, activation, batch=4, seed=0):
    """One layer's norms and MLP activation as SGLang runs them; returns every output."""
    g = torch.Generator().manual_seed(seed)
    norm = layernorm.RMSNorm(64, eps=1e-5, weight_dtype=BF16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(64, generator=g).to(BF16))
    x = torch.randn(batch, 64, generator=g).to(BF16)
    residual = torch.randn(batch, 64, generator=g).to(BF16)
    gate_up = torch.randn(batch, 72, generator=g).to(BF16)
    hidden = norm(x.clone())
    normed, new_residual = norm(x.clone(), residual.clone())
    act = activation.SiluAndMul()(gate_up)
    return {"rms": hidden, "fused": normed, "residual": new_residual, "silu": act,
            "inputs": (x, residual, norm.weight.data, gate_up)}


def test_sglang_layers_imported_before_fibuild_are_traced_and_restored_exactly(sglang_standin, small_ws):
    import sgl_kernel
    from sglang.srt.layers import activation, layernorm

    originals = (layernorm.rmsnorm, layernorm.fused_add_rmsnorm, activation._sgl_silu_and_mul)
    assert originals == (sgl_kernel.rmsnorm, sgl_kernel.fused_add_rmsnorm, sgl_kernel.silu_and_mul)
    fibuild.enable(trace=True, settings=small_ws.settings, flush_every=1)
    bound = (layernorm.rmsnorm, layernorm.fused_add_rmsnorm, activation._sgl_silu_and_mul)
    assert all(b is not o and b.__wrapped__ is o for b, o in zip(bound, originals))
    assert sgl_kernel.elementwise.rmsnorm is sgl_kernel.rmsnorm is layernorm.rmsnorm
    for batch in (2, 2, 8):
        _sglang_step(layernorm, activation, batch)
    stats = fibuild.integrations.stats()
    fibuild.disable()
    assert (layernorm.rmsnorm, layernorm.fused_add_rmsnorm, activation._sgl_silu_and_mul) == originals
    assert all(a is b for a, b in zip((sgl_kernel.rmsnorm, sgl_kernel.elementwise.silu_and_mul), (originals[0],
                                                                                                  originals[2])))
    for api in ("sgl_kernel.rmsnorm", "sgl_kernel.fused_add_rmsnorm", "sgl_kernel.silu_and_mul"):
        assert stats[api]["calls"] == 3 and stats[api]["original"] == 3, (api, stats[api])
    from fibuild.spec.workspace import Workspace

    ws = Workspace(small_ws.root)
    for name, axis in (("rmsnorm_h64", "batch_size"), ("fused_add_rmsnorm_h64", "batch_size"),
                       ("silu_and_mul_i36", "num_tokens")):
        traced = sorted(w.axes[axis] for w in ws.workloads(ws.definition(name)) if w.source != "declared")
        assert traced == [2, 8], name   # a shape is recorded at its first call


def test_sglang_layers_imported_after_fibuild_run_the_substitutes_with_sgl_kernels_effects(sglang_standin,
                                                                                           small_ws):
    for name, axes in (("rmsnorm_h64", {"batch_size": 4}), ("fused_add_rmsnorm_h64", {"batch_size": 4}),
                       ("silu_and_mul_i36", {"num_tokens": 4})):
        small_ws.add_counted_solution(name)
        small_ws.record(name, "counted", axes)
    fibuild.enable(apply=True, settings=small_ws.settings)
    import sgl_kernel
    from sglang.srt.layers import activation, layernorm  # imports sgl_kernel: patched before the names bind

    assert layernorm.rmsnorm is sgl_kernel.rmsnorm and hasattr(layernorm.rmsnorm, "fibuild_memo")
    got = _sglang_step(layernorm, activation)
    x, residual, w, gate_up = got["inputs"]
    assert sum(sgl_kernel.CALLS.values()) == 0          # none of sgl_kernel's own kernels ran
    _close(got["rms"], _rms(x, w, 1e-5))
    summed = (x.float() + residual.float()).to(BF16)
    _close(got["residual"], summed)                      # fused_add_rmsnorm: residual += x, in place
    _close(got["fused"], _rms(summed, w, 1e-5))
    gf = gate_up.float()
    _close(got["silu"], torch.nn.functional.silu(gf[:, :36]) * gf[:, 36:])
    for name in ("rmsnorm_h64", "fused_add_rmsnorm_h64", "silu_and_mul_i36"):
        assert len(solution_calls(name, (4,))) == 1, name
    stats = fibuild.integrations.stats()
    assert all(stats[api]["substituted"] == 1 for api in
               ("sgl_kernel.rmsnorm", "sgl_kernel.fused_add_rmsnorm", "sgl_kernel.silu_and_mul"))


def test_sglangs_own_jit_silu_and_mul_is_substituted_unless_rows_are_filtered_by_expert(sglang_standin, small_ws):
    """Aligned rows (32 bf16 values) go to SGLang's JIT kernel, not sgl_kernel: adapted too."""
    small_ws.add_counted_solution("silu_and_mul_i32")
    small_ws.record("silu_and_mul_i32", "counted", {"num_tokens": 4})
    from sglang.kernels.ops.activation import activation as jit
    from sglang.srt.layers import activation

    fibuild.enable(apply=True, settings=small_ws.settings)
    assert activation._jit_silu_and_mul is jit.silu_and_mul and hasattr(jit.silu_and_mul, "fibuild_memo")
    gate_up = torch.randn(4, 64, dtype=BF16)
    gf = gate_up.float()
    _close(activation.SiluAndMul()(gate_up), torch.nn.functional.silu(gf[:, :32]) * gf[:, 32:])
    assert jit.CALLS["silu_and_mul"] == 0 and len(solution_calls("silu_and_mul_i32", (4,))) == 1
    out = torch.zeros(4, 32, dtype=BF16)   # the fused MoE's call: rows of tokens routed nowhere skipped
    jit.silu_and_mul(gate_up, out, expert_ids=torch.tensor([0, -1, 1, 0], dtype=torch.int32))
    assert jit.CALLS["silu_and_mul"] == 1 and torch.equal(out[1], torch.zeros(32, dtype=BF16))
    row = fibuild.integrations.stats()["sglang.kernels.ops.activation.activation.silu_and_mul"]
    assert row["substituted"] == 1 and row["fallbacks"]["rows filtered by expert (expert_ids=)"] == 1


def test_sgl_kernel_silu_and_mul_writes_into_the_callers_out(sglang_standin, small_ws):
    small_ws.add_counted_solution("silu_and_mul_i36")
    small_ws.record("silu_and_mul_i36", "counted", {"num_tokens": 6})
    import sgl_kernel

    fibuild.enable(apply=True, settings=small_ws.settings)
    gate_up = torch.randn(2, 3, 72, dtype=BF16)
    out = torch.zeros(2, 3, 36, dtype=BF16)
    assert sgl_kernel.silu_and_mul(gate_up, out) is out
    gf = gate_up.float()
    _close(out, torch.nn.functional.silu(gf[..., :36]) * gf[..., 36:])
    assert sgl_kernel.silu_and_mul(gate_up).shape == (2, 3, 36)   # no out: a new tensor, shaped as sgl_kernel's
    assert len(solution_calls("silu_and_mul_i36", (6,))) == 2 and sgl_kernel.CALLS["silu_and_mul"] == 0
    strided = torch.zeros(2, 3, 72, dtype=BF16)[..., ::2]
    sgl_kernel.silu_and_mul(gate_up, strided)                     # out not contiguous: sgl_kernel's own
    assert sgl_kernel.CALLS["silu_and_mul"] == 1


# -- vLLM --------------------------------------------------------------------------------------

def _vllm_step(batch=4, seed=0, rows=()):
    from vllm.model_executor.layers.activation import SiluAndMul
    from vllm.model_executor.layers.layernorm import RMSNorm

    g = torch.Generator().manual_seed(seed)
    norm = RMSNorm(64, eps=1e-5, dtype=BF16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(64, generator=g).to(BF16))
    shape = (*rows, batch, 64)
    x = torch.randn(shape, generator=g).to(BF16)
    residual = torch.randn(shape, generator=g).to(BF16)
    gate_up = torch.randn(*rows, batch, 72, generator=g).to(BF16)
    xs, rs = x.clone(), residual.clone()
    out = {"rms": norm(x), "fused": norm(xs, rs), "silu": SiluAndMul()(gate_up)}
    return out, (x, residual, norm.weight.data, gate_up, xs, rs)


def _counted(small_ws, batch):
    for name, axes in (("rmsnorm_h64", {"batch_size": batch}), ("fused_add_rmsnorm_h64", {"batch_size": batch}),
                       ("silu_and_mul_i36", {"num_tokens": batch})):
        small_ws.add_counted_solution(name)
        small_ws.record(name, "counted", axes)


def test_vllm_layers_calls_are_substituted_at_the_dispatcher_and_given_back(vllm_standin, small_ws):
    from vllm._C_stable_libtorch import CALLS

    _counted(small_ws, 6)
    integration = fibuild.enable(apply=True, settings=small_ws.settings)
    assert {"torch.ops._C.rms_norm", "torch.ops._C.fused_add_rms_norm", "torch.ops._C.silu_and_mul"} <= set(
        integration.patched)
    before = CALLS.copy()
    got, (x, residual, w, gate_up, xs, rs) = _vllm_step(batch=3, rows=(2,))   # [2, 3, 64]: rows flattened
    assert CALLS == before                                # vLLM's own kernels did not run
    _close(got["rms"], _rms(x, w, 1e-5))
    summed = (x.float() + residual.float()).to(BF16)
    (normed, new_residual) = got["fused"]
    assert normed is xs and new_residual is rs            # in place, as _C.fused_add_rms_norm is
    _close(rs, summed)
    _close(xs, _rms(summed, w, 1e-5))
    gf = gate_up.float()
    _close(got["silu"], torch.nn.functional.silu(gf[..., :36]) * gf[..., 36:])
    for name in ("rmsnorm_h64", "fused_add_rmsnorm_h64", "silu_and_mul_i36"):
        assert len(solution_calls(name, (6,))) == 1, name
    fibuild.disable()
    _vllm_step(batch=3)
    assert CALLS["rms_norm"] == before["rms_norm"] + 1 and CALLS["silu_and_mul"] == before["silu_and_mul"] + 1


def test_vllm_calls_fibuild_cannot_take_run_vllms_kernel_and_are_counted_by_reason(vllm_standin, small_ws):
    from vllm._C_stable_libtorch import CALLS

    _counted(small_ws, 4)
    fibuild.enable(apply=True, settings=small_ws.settings)
    before = CALLS.copy()
    x = torch.randn(4, 128, dtype=BF16)[:, :64]           # strided rows (a split of a wider tensor)
    out, w = torch.empty(4, 64, dtype=BF16), torch.rand(64, dtype=BF16)
    torch.ops._C.rms_norm(out, x, w, 1e-5)
    _close(out, _rms(x, w, 1e-5))
    torch.ops._C.rms_norm(out, x.contiguous(), None, 1e-5)             # a norm without weight
    assert CALLS["rms_norm"] == before["rms_norm"] + 2
    row = fibuild.integrations.stats()["torch.ops._C.rms_norm"]
    assert row["substituted"] == 0 and row["calls"] == 2
    assert {k: n for k, n in row["fallbacks"].items() if n} == {
        "an input is not contiguous or not on the kernel's device": 1, "weight is None (a norm without weight)": 1}


def test_a_compiled_vllm_graph_reaches_the_substitute(vllm_standin, small_ws):
    from vllm._C_stable_libtorch import CALLS
    from vllm.model_executor.layers.activation import SiluAndMul

    _counted(small_ws, 5)
    fibuild.enable(apply=True, settings=small_ws.settings)
    layer = SiluAndMul()
    compiled = torch.compile(layer.forward, backend="aot_eager", fullgraph=True)
    gate_up = torch.randn(5, 72, dtype=BF16)
    before = CALLS["silu_and_mul"]
    gf = gate_up.float()
    _close(compiled(gate_up), torch.nn.functional.silu(gf[:, :36]) * gf[:, 36:])
    assert CALLS["silu_and_mul"] == before and len(solution_calls("silu_and_mul_i36", (5,))) == 1


def test_sgl_kernel_forwarding_to_flashinfer_is_one_traced_call(flashinfer_stub, sglang_standin, small_ws):
    """sglang-kernel 0.4.10 forwards fp16/bf16 norms to ``flashinfer.norm`` (patched too): the
    trace counts and records the engine's call once; stats() shows both APIs were called."""
    import flashinfer
    import sgl_kernel

    from fibuild.integrations.tracing import read_calls

    fibuild.enable(trace=True, settings=small_ws.settings, flush_every=1)
    x, w = torch.randn(3, 64, dtype=BF16), torch.rand(64, dtype=BF16)
    for _ in range(4):
        _close(sgl_kernel.rmsnorm(x, w, 1e-5), _rms(x, w, 1e-5))
    stats = fibuild.integrations.stats()
    fibuild.disable()
    assert flashinfer.CALLS["rmsnorm"] == 4 and sgl_kernel.CALLS["rmsnorm"] == 0   # forwarded, as 0.4.10 does
    assert stats["sgl_kernel.rmsnorm"]["calls"] == 4 and stats["flashinfer.norm.rmsnorm"]["calls"] == 4
    counted = [row for row in read_calls(small_ws.root / "registry") if row["definition"] == "rmsnorm_h64"]
    assert sum(row["calls"] for row in counted) == 4
    from fibuild.spec.workspace import Workspace

    ws = Workspace(small_ws.root)
    assert [w.axes for w in ws.workloads(ws.definition("rmsnorm_h64")) if w.source != "declared"] == [
        {"batch_size": 3}]
