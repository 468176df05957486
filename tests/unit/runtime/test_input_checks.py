"""Input checks at dispatch: every call whose inputs do not match the definition raises an
InputError naming the input, what was expected and what came; matching calls still run."""
from __future__ import annotations

import pytest
import torch

from fibuild.errors import FibuildError, InputError
from fibuild.runtime.api import load
from fibuild.runtime.input_checks import expected_shapes, guarded

from runtime_helpers import DEF, reference_rmsnorm


def _inputs(batch: int, hidden: int = 4096, dtype=torch.bfloat16):
    return torch.randn(batch, hidden, dtype=dtype), torch.randn(hidden, dtype=dtype)


@pytest.fixture
def kernel(workspace):
    k = load(DEF, settings=workspace.settings)
    x, w = _inputs(3)
    torch.testing.assert_close(k(x, w), reference_rmsnorm(x, w), atol=1e-2, rtol=1e-2)
    return k


def test_wrong_const_axis_size(kernel):
    x, w = _inputs(3, hidden=4095)
    with pytest.raises(InputError, match=r"input 'hidden_states': axis hidden_size \(const\) must be 4096, got 4095"):
        kernel(x, w[:4095])


def test_var_axis_disagrees_between_inputs(kernel):
    x, _ = _inputs(3)
    with pytest.raises(InputError, match=r"input 'weight': axis hidden_size \(const\) must be 4096, got 8"):
        kernel(x, torch.randn(8, dtype=torch.bfloat16))


def test_wrong_dtype(kernel):
    x, w = _inputs(3, dtype=torch.float32)
    with pytest.raises(InputError, match="input 'hidden_states': expected dtype bfloat16, got float32"):
        kernel(x, w.bfloat16())


def test_non_contiguous(kernel):
    x = torch.randn(4096, 3, dtype=torch.bfloat16).t()
    _, w = _inputs(3)
    with pytest.raises(InputError, match=r"input 'hidden_states': expected a contiguous tensor, got strides \[1, 3\]"):
        kernel(x, w)


def test_wrong_rank(kernel):
    x, w = _inputs(3)
    with pytest.raises(InputError, match=r"input 'weight': expected rank 1 \[hidden_size\], got shape \[1, 4096\]"):
        kernel(x, w[None])


def test_wrong_count(kernel):
    x, w = _inputs(3)
    with pytest.raises(InputError, match=r"expected 2 inputs \(hidden_states, weight\), got 3"):
        kernel(x, w, w)
    with pytest.raises(InputError, match=r"expected 2 inputs \(hidden_states, weight\), got 1"):
        kernel(x)


def test_not_a_tensor(kernel):
    x, _ = _inputs(3)
    with pytest.raises(InputError, match="input 'weight': expected a bfloat16 tensor, got list"):
        kernel(x, [1.0] * 4096)


def test_wrong_device_kind():
    """A CPU tensor for a CUDA kernel is refused by the generated check itself (no GPU needed)."""
    from fibuild.spec.workspace import Workspace, shipped_root

    defn = Workspace(shipped_root()).definition(DEF)
    calls = []
    checked = guarded(defn, (3,), lambda *a: calls.append(a), cuda=True,
                      on_mismatch=lambda args: InputError("mismatch"))
    with pytest.raises(InputError):
        checked(*_inputs(3))
    assert calls == []
    from fibuild.runtime.input_checks import mismatch

    assert "expected a tensor on cuda, got one on cpu" in str(
        mismatch(defn, _inputs(3), (3,), cuda=True, device="cuda"))


def test_out_calls_are_checked_too(kernel):
    x, w = _inputs(3, dtype=torch.float16)
    with pytest.raises(InputError, match="expected dtype bfloat16, got float16"):
        kernel(x, w, out=torch.empty(3, 4096, dtype=torch.bfloat16))


def test_input_error_is_a_fibuild_error_and_a_value_error():
    assert issubclass(InputError, FibuildError) and issubclass(InputError, ValueError)


def test_parameters_and_views_that_fit_pass(kernel):
    """nn.Parameter weights (as models hold them) and contiguous slices are valid inputs."""
    x, w = _inputs(6)
    weight = torch.nn.Parameter(w, requires_grad=False)
    rows = x[2:5]
    torch.testing.assert_close(kernel(rows, weight), reference_rmsnorm(rows, w), atol=1e-2, rtol=1e-2)


def test_expected_shapes():
    from fibuild.spec.workspace import Workspace, shipped_root

    defn = Workspace(shipped_root()).definition(DEF)
    assert expected_shapes(defn, (7,)) == [(7, 4096), (4096,)]


def test_a_negative_view_is_refused_where_a_kernel_reads_memory(kernel):
    """``x._neg_view()`` holds x's memory with a lazy sign: a kernel reading the memory (C++,
    Triton; tests/toolchain/test_native_inputs.py) would compute with x. Torch code (this
    Python solution) resolves it by itself."""
    from fibuild.spec.workspace import Workspace, shipped_root

    x, w = _inputs(3)
    torch.testing.assert_close(kernel(x._neg_view(), w), reference_rmsnorm(-x, w), atol=1e-2, rtol=1e-2)
    defn = Workspace(shipped_root()).definition(DEF)
    native = guarded(defn, (3,), lambda a, b: a, cuda=False, on_mismatch=lambda args: InputError("no"),
                     reads_memory=True)
    assert native(x, w) is x
    for args in ((x._neg_view(), w), (x, w._neg_view())):
        with pytest.raises(InputError):
            native(*args)
    from fibuild.runtime.input_checks import mismatch

    assert "input 'weight': is a negative view (its memory holds -x); call .resolve_neg() first" in str(
        mismatch(defn, (x, w._neg_view()), (3,), cuda=False, device="cpu"))


@pytest.mark.parametrize("make, words", [
    (lambda x: torch.empty_like(x, device="meta"), "is a meta tensor"),
    (lambda x: torch.nested.nested_tensor([x[0], x[1], x[2]]), "is a nested tensor"),
    (lambda x: x.to_sparse(), "has layout torch.sparse_coo"),
])
def test_tensors_without_plain_data_are_refused(kernel, make, words):
    x, w = _inputs(3)
    with pytest.warns(UserWarning) if "nested" in words else _no_warning():
        odd = make(x)
    with pytest.raises(InputError, match=f"input 'hidden_states': {words}"):
        kernel(odd, w)


def _no_warning():
    import contextlib

    return contextlib.nullcontext()


@pytest.mark.parametrize("out, words", [
    (lambda: torch.empty(3, 4096, dtype=torch.float32), "expected dtype bfloat16, got float32"),
    (lambda: torch.empty(6, 4096, dtype=torch.bfloat16), r"expected shape \[3, 4096\], got \[6, 4096\]"),
    (lambda: torch.empty(4096, 3, dtype=torch.bfloat16).t(), "expected a contiguous tensor"),
    (lambda: torch.empty(3, 4096, dtype=torch.bfloat16, device="meta"), "is a meta tensor"),
    (lambda: torch.zeros(3, 4096, dtype=torch.bfloat16)._neg_view(), "is a negative view"),
    (lambda: (torch.empty(3, 4096, dtype=torch.bfloat16),) * 2, r"out= takes 1 tensor\(s\) \(output\), got 2"),
    (lambda: "buffer", "expected a tensor, got str"),
])
def test_out_is_checked_for_dtype_shape_layout_and_device(kernel, out, words):
    x, w = _inputs(3)
    with pytest.raises(InputError, match=f"out= .*{words}|{words}"):
        kernel(x, w, out=out())


def test_a_fitting_out_receives_the_result(kernel):
    x, w = _inputs(3)
    out = torch.empty(3, 4096, dtype=torch.bfloat16)
    result = kernel(x, w, out=out)
    assert result is out
    torch.testing.assert_close(out, reference_rmsnorm(x, w), atol=1e-2, rtol=1e-2)
