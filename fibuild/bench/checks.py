"""Correctness of a solution's outputs against the reference's.

Order of checks per output: count and kind, shape (``INCORRECT_SHAPE``), dtype
(``INCORRECT_DTYPE``), then values (``INCORRECT_NUMERICAL``): an element passes when
``a == b`` or ``|a - b| <= atol + rtol * |b|``; a NaN in the solution's output never
passes. The max absolute error and the max relative error (over elements with
``|b| > atol``) over all outputs are reported with every status that got as far as
comparing values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from ..spec.model import Definition

# Heavy or optional dependencies, imported inside the functions that use them: torch.

PASSED = "PASSED"
INCORRECT_SHAPE = "INCORRECT_SHAPE"
INCORRECT_DTYPE = "INCORRECT_DTYPE"
INCORRECT_NUMERICAL = "INCORRECT_NUMERICAL"


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one call: ``status``, max errors (None when not compared), a message."""

    status: str
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASSED


def as_output_list(defn: Definition, value: Any) -> list[Any]:
    """The outputs in declaration order: a lone value becomes a one-element list."""
    if isinstance(value, (tuple, list)):
        return list(value)
    if len(defn.outputs) != 1 and value is None:
        return []
    return [value]


def to_torch(value: Any) -> Any:
    """``value`` as a torch tensor when it is any DLPack tensor (e.g. a tvm_ffi.Tensor)."""
    import torch

    if isinstance(value, torch.Tensor) or not hasattr(value, "__dlpack__"):
        return value
    return torch.from_dlpack(value)


def reference_outputs(defn: Definition, result: Any, args: Sequence[Any]) -> list[Any]:
    """All outputs of a reference call, in declaration order.

    The reference may return every output, or only the non-in-place ones (in-place
    outputs are then read off the mutated ``args``).
    """
    values = as_output_list(defn, result) if result is not None else []
    if len(values) == len(defn.outputs):
        return values
    index = {spec.name: i for i, spec in enumerate(defn.inputs)}
    fresh = iter(values)
    out = []
    for spec in defn.outputs:
        out.append(args[index[spec.inplace]] if spec.inplace else next(fresh, None))
    return out


def _max_errors(actual, expected, atol: float, rtol: float) -> tuple[bool, float, float, bool]:
    """(all within tolerance, max abs error, max rel error, actual has NaN)."""
    import torch

    a = actual.detach().to(torch.float64)
    b = expected.detach().to(torch.float64)
    if a.numel() == 0:
        return True, 0.0, 0.0, False
    diff = (a - b).abs()
    ok = (a == b) | (diff <= atol + rtol * b.abs())
    diff = torch.where(a == b, torch.zeros_like(diff), diff)  # inf == inf: no error
    # Relative error only where |b| > atol: near zero the absolute term governs, and
    # dividing by ~0 would report meaningless huge ratios.
    big = b.abs() > atol
    rel = torch.where(big, diff / b.abs().clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(diff))
    has_nan = bool(torch.isnan(a).any())
    return bool(ok.all()), float(diff.max()), float(rel.max()), has_nan


def check_outputs(defn: Definition, actual: Any, expected: Sequence[Any]) -> CheckResult:
    """Compare a solution's outputs (``actual``: the value-returning call's result) with the
    reference's (``expected``: one per declared output). Never raises on bad outputs: every
    problem becomes a status. Cost: one float64 pass over each output.
    """
    import torch

    got = [to_torch(v) for v in as_output_list(defn, actual)]
    if len(got) != len(defn.outputs):
        return CheckResult(INCORRECT_SHAPE, message=f"returned {len(got)} outputs, expected {len(defn.outputs)}")
    tol = defn.tolerance
    worst_abs, worst_rel = 0.0, 0.0
    failures: list[str] = []
    for spec, a, b in zip(defn.outputs, got, expected):
        b = to_torch(b)
        if spec.is_scalar and not isinstance(b, torch.Tensor):
            if isinstance(a, torch.Tensor) and a.dim() == 0:
                a = a.item()
            if not isinstance(a, (int, float, bool)):
                return CheckResult(INCORRECT_SHAPE, message=f"output {spec.name!r}: expected a scalar, "
                                   f"got {type(a).__name__}")
            a_t, b_t = torch.tensor(float(a)), torch.tensor(float(b))
        else:
            if not isinstance(a, torch.Tensor):
                return CheckResult(INCORRECT_SHAPE, message=f"output {spec.name!r}: expected a tensor, "
                                   f"got {type(a).__name__}")
            if tuple(a.shape) != tuple(b.shape):
                return CheckResult(INCORRECT_SHAPE, message=f"output {spec.name!r}: shape {tuple(a.shape)}, "
                                   f"expected {tuple(b.shape)}")
            if a.dtype != b.dtype:
                name = str(a.dtype).removeprefix("torch.")
                return CheckResult(INCORRECT_DTYPE, message=f"output {spec.name!r}: dtype {name}, "
                                   f"expected {str(b.dtype).removeprefix('torch.')}")
            a_t, b_t = a, b.to(a.device)
        ok, max_abs, max_rel, has_nan = _max_errors(a_t, b_t, tol.atol, tol.rtol)
        worst_abs = max(worst_abs, max_abs) if not math.isnan(max_abs) else math.nan
        worst_rel = max(worst_rel, max_rel) if not math.isnan(max_rel) else math.nan
        if has_nan:
            failures.append(f"output {spec.name!r} holds NaN")
        elif not ok:
            failures.append(f"output {spec.name!r}: max abs error {max_abs:.3g}, max rel error "
                            f"{max_rel:.3g} beyond atol={tol.atol:g} rtol={tol.rtol:g}")
    if failures:
        return CheckResult(INCORRECT_NUMERICAL, worst_abs, worst_rel, "; ".join(failures))
    return CheckResult(PASSED, worst_abs, worst_rel)
