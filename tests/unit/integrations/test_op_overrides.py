"""Dispatcher overrides of torch operators (the vLLM stand-in's ``_C`` ops): every real call,
eager, under inference_mode or from a compiled graph, reaches the override; fake tensors
never do; the original is the operator's own kernel; restore() gives the operator back."""
from __future__ import annotations

import pytest
import torch

from fibuild.integrations.op_overrides import OpOverrides, op_overload


@pytest.fixture
def overrides(vllm_standin):
    made = OpOverrides()
    yield made
    made.restore()


def _spy(seen):
    def make(original):
        def kernel(*args):
            seen.append(tuple(type(a).__name__ for a in args))
            return original(*args)
        return kernel
    return make


def test_every_real_call_reaches_the_override_and_its_original_is_the_ops_own_kernel(overrides):
    from vllm._C_stable_libtorch import CALLS

    seen: list = []
    assert overrides.override("_C::rms_norm", _spy(seen))
    x, w = torch.randn(3, 8), torch.rand(8)
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    out = torch.empty_like(x)
    before = CALLS["rms_norm"]
    torch.ops._C.rms_norm(out, x, w, 1e-6)
    with torch.inference_mode():
        torch.ops._C.rms_norm(out, x, w, 1e-6)

    def layer(x):
        y = torch.empty_like(x)
        torch.ops._C.rms_norm(y, x, w, 1e-6)
        return y * 2

    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), want * 2)
    assert len(seen) == 3 and all(kinds[0] == "Tensor" for kinds in seen)
    assert CALLS["rms_norm"] == before + 3      # each call ran the op's own kernel once
    torch.testing.assert_close(out, want)


def test_fake_tensors_never_reach_the_override(overrides):
    from torch._subclasses.fake_tensor import FakeTensorMode

    seen: list = []
    overrides.override("_C::silu_and_mul", _spy(seen))
    with FakeTensorMode():
        x = torch.empty(4, 16)
        torch.ops._C.silu_and_mul(torch.empty(4, 8), x)
    assert seen == []


def test_restore_gives_the_operator_back_and_a_second_override_is_refused(overrides):
    from vllm._C_stable_libtorch import CALLS

    seen: list = []
    assert overrides.override("_C::silu_and_mul", _spy(seen))
    assert not overrides.override("_C::silu_and_mul", _spy(seen))   # taken already
    assert "_C::silu_and_mul" in overrides
    overrides.restore()
    before = CALLS["silu_and_mul"]
    torch.ops._C.silu_and_mul(torch.empty(2, 4), torch.randn(2, 8))
    assert seen == [] and CALLS["silu_and_mul"] == before + 1
    assert "_C::silu_and_mul" not in overrides


def test_an_operator_not_defined_is_not_overridden(overrides):
    assert op_overload("_C::no_such_op") is None
    assert op_overload("fibuild_no_such_namespace::op") is None
    assert not overrides.override("_C::no_such_op", _spy([]))
