"""Residual add + RMSNorm over hidden size 4096 in Triton, both outputs in place.

``fused_add_rmsnorm(hidden_states, residual, weight)`` writes ``residual <- bf16(hidden +
residual)`` and ``hidden_states <- residual * rsqrt(mean(residual^2) + eps) * weight`` and
returns nothing. One program per row, the row in registers. With dependent launch
(``launch: {pdl: true}``) each program loads the weight, lets the next kernel launch, and
waits for the previous kernel before it reads or writes a row. Runs on CPU tensors when
``TRITON_INTERPRET=1`` is set before this module is imported.
"""
import os

import torch
import triton
import triton.language as tl

from fibuild.compile.launch import TritonLaunch

HIDDEN = 4096
EPS = 1e-5


@triton.jit
def _round(x, dtype: tl.constexpr, ROUND_BF16: tl.constexpr):
    """fp32 ``x`` to ``dtype``, to nearest even; ROUND_BF16 does it by hand for bf16 (the
    interpreter's cast truncates; the GPU's rounds)."""
    if ROUND_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits += 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def _fused_add_rmsnorm_row(x_ptr, r_ptr, w_ptr, eps, HIDDEN: tl.constexpr, ROUND_BF16: tl.constexpr,
                           PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = row * HIDDEN + tl.arange(0, HIDDEN)
    w = tl.load(w_ptr + tl.arange(0, HIDDEN)).to(tl.float32)  # a weight: nothing before writes it
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()  # hidden_states is the previous kernel's output
    x = tl.load(x_ptr + offs).to(tl.float32) + tl.load(r_ptr + offs).to(tl.float32)
    total = _round(x, r_ptr.dtype.element_ty, ROUND_BF16)
    tl.store(r_ptr + offs, total)
    s = total.to(tl.float32)
    inv_rms = tl.math.rsqrt(tl.sum(s * s, axis=0) / HIDDEN + eps)
    tl.store(x_ptr + offs, _round(s * inv_rms * w, x_ptr.dtype.element_ty, ROUND_BF16))


_ROW = TritonLaunch(_fused_add_rmsnorm_row)


def fused_add_rmsnorm(hidden_states: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> None:
    """hidden_states, residual [B, 4096] (contiguous, one dtype), weight [4096]; both updated in
    place. ValueError on other shapes or non-contiguous rows (in-place outputs cannot be copies)."""
    if (hidden_states.ndim != 2 or hidden_states.shape[1] != HIDDEN or residual.shape != hidden_states.shape
            or tuple(weight.shape) != (HIDDEN,)):
        raise ValueError(f"expected hidden_states and residual [B, {HIDDEN}] and weight [{HIDDEN}], got "
                         f"{tuple(hidden_states.shape)}, {tuple(residual.shape)} and {tuple(weight.shape)}")
    if not (hidden_states.is_contiguous() and residual.is_contiguous()):
        raise ValueError("hidden_states and residual must be contiguous (they are written in place)")
    if hidden_states.shape[0]:
        rounding = residual.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"
        _ROW.bind(HIDDEN=HIDDEN, ROUND_BF16=rounding, num_warps=8)(
            (hidden_states.shape[0],), hidden_states, residual, weight.contiguous(), EPS)
