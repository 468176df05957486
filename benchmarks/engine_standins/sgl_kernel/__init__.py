"""sgl_kernel stand-in for the decode-step benchmark (see ../README.md): sglang-kernel 0.4.10's
``rmsnorm(input, weight, eps=1e-6, out=None, enable_pdl=None)``,
``fused_add_rmsnorm(input, residual, weight, eps=1e-6, enable_pdl=None)`` (forwarded to
``flashinfer.norm``, looked up at call time, as ``sgl_kernel/elementwise.py`` does for fp16/bf16)
and ``silu_and_mul(input, out=None)`` (FlashInfer's activation kernel, bound when this module
is imported: sgl_kernel runs its own copy of it, not ``flashinfer.activation``'s entry)."""
from typing import Optional

import flashinfer.activation
import flashinfer.norm
import torch

# FlashInfer's own function, also when a serving integration patched it before this import.
_silu_and_mul = flashinfer.activation.silu_and_mul
if hasattr(_silu_and_mul, "fibuild_memo"):
    _silu_and_mul = _silu_and_mul.__wrapped__


def rmsnorm(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, out: Optional[torch.Tensor] = None,
            enable_pdl: Optional[bool] = None) -> torch.Tensor:
    return flashinfer.norm.rmsnorm(input, weight, eps, out, enable_pdl)


def fused_add_rmsnorm(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                      enable_pdl: Optional[bool] = None) -> None:
    flashinfer.norm.fused_add_rmsnorm(input, residual, weight, eps, enable_pdl)


def silu_and_mul(input: torch.Tensor, out: torch.Tensor = None) -> torch.Tensor:
    return _silu_and_mul(input, out)
