"""Output checks: shape, dtype, then values within atol + rtol * |ref|; NaN fails."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fibuild.bench.checks import check_outputs, reference_outputs
from fibuild.spec.manifest import load_definition

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def rmsnorm():
    return load_definition(ROOT / "defs/rmsnorm/rmsnorm_h4096.yaml")


@pytest.fixture(scope="module")
def fused():
    return load_definition(ROOT / "defs/fused_add_rmsnorm/fused_add_rmsnorm_h4096.yaml")


def test_passed_with_errors_reported(rmsnorm):
    ref = torch.ones(2, 4096, dtype=torch.bfloat16)
    got = ref.clone()
    got[0, 0] = 1.0078125  # one bf16 ulp above 1: within atol + rtol
    res = check_outputs(rmsnorm, got, [ref])
    assert res.status == "PASSED"
    assert res.max_abs_error == pytest.approx(0.0078125)
    assert res.max_rel_error == pytest.approx(0.0078125)


def test_tolerance_edge(rmsnorm):
    # atol 1e-2 + rtol 1e-2 * |4| = 0.05: 4.0625 is 0.0625 away -> fails.
    ref = torch.full((1, 4096), 4.0, dtype=torch.bfloat16)
    got = ref.clone()
    got[0, 5] = 4.0625
    res = check_outputs(rmsnorm, got, [ref])
    assert res.status == "INCORRECT_NUMERICAL"
    assert res.max_abs_error == pytest.approx(0.0625)
    assert "max abs error" in res.message


def test_nan_fails_even_when_reference_is_nan(rmsnorm):
    ref = torch.zeros(1, 4096, dtype=torch.bfloat16)
    got = ref.clone()
    got[0, 1] = float("nan")
    res = check_outputs(rmsnorm, got, [ref])
    assert res.status == "INCORRECT_NUMERICAL" and "NaN" in res.message
    both = ref.clone()
    both[0, 1] = float("nan")
    assert check_outputs(rmsnorm, both.clone(), [both]).status == "INCORRECT_NUMERICAL"
    inf = ref.clone()
    inf[0, 2] = float("inf")
    assert check_outputs(rmsnorm, inf.clone(), [inf]).status == "PASSED"


def test_shape_and_dtype_and_kind(rmsnorm):
    ref = torch.zeros(3, 4096, dtype=torch.bfloat16)
    assert check_outputs(rmsnorm, torch.zeros(2, 4096, dtype=torch.bfloat16), [ref]).status == "INCORRECT_SHAPE"
    assert check_outputs(rmsnorm, torch.zeros(3, 4096), [ref]).status == "INCORRECT_DTYPE"
    assert check_outputs(rmsnorm, None, [ref]).status == "INCORRECT_SHAPE"
    assert check_outputs(rmsnorm, (ref, ref), [ref]).status == "INCORRECT_SHAPE"


def test_reference_outputs_for_in_place_definitions(fused):
    h, r = torch.ones(1, 4096, dtype=torch.bfloat16), torch.zeros(1, 4096, dtype=torch.bfloat16)
    w = torch.ones(4096, dtype=torch.bfloat16)
    # A reference returning every output, and one returning nothing (mutating in place).
    assert [t is x for t, x in zip(reference_outputs(fused, (h, r), [h, r, w]), (h, r))] == [True, True]
    outs = reference_outputs(fused, None, [h, r, w])
    assert outs[0] is h and outs[1] is r
    assert check_outputs(fused, (h.clone(), r.clone()), outs).status == "PASSED"
    assert check_outputs(fused, (h.clone(), r + 1), outs).status == "INCORRECT_NUMERICAL"


def test_dlpack_outputs_are_accepted(rmsnorm):
    import tvm_ffi

    ref = torch.ones(1, 4096, dtype=torch.bfloat16)
    got = tvm_ffi.from_dlpack(ref.clone())
    assert check_outputs(rmsnorm, got, [ref]).status == "PASSED"
