"""sgl_kernel stand-in for the decode-step benchmark (see ../README.md): sglang-kernel 0.4.10's
``rmsnorm(input, weight, eps=1e-6, out=None, enable_pdl=None)``,
``fused_add_rmsnorm(input, residual, weight, eps=1e-6, enable_pdl=None)`` (forwarded to
``flashinfer.norm``, looked up at call time, as ``sgl_kernel/elementwise.py`` does for fp16/bf16),
``silu_and_mul(input, out=None)`` (FlashInfer's activation kernel, bound when this module
is imported: sgl_kernel runs its own copy of it, not ``flashinfer.activation``'s entry) and
``apply_rope_with_cos_sin_cache_inplace(positions, query, key, head_size, cos_sin_cache,
is_neox=True, fused_set_kv_buffer_arg=None, enable_pdl=None)`` (FlashInfer's rope kernel, of
which sgl_kernel's is a port; SGLang 0.5.23 runs a JIT kernel of its own with the same
arguments, on 3-D views; the fused K/V store, which SGLang passes for models other than Llama,
is not stood in for). With ``enable_pdl=None`` the norms pass None on, and FlashInfer, like
sgl_kernel, turns dependent launch on where the device has it (sm_90 and later)."""
from typing import Optional

import flashinfer.activation
import flashinfer.norm
import flashinfer.rope
import torch

# FlashInfer's own function, also when a serving integration patched it before this import.
_silu_and_mul = flashinfer.activation.silu_and_mul
if hasattr(_silu_and_mul, "fibuild_memo"):
    _silu_and_mul = _silu_and_mul.__wrapped__
_rope = flashinfer.rope.apply_rope_with_cos_sin_cache_inplace


def rmsnorm(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, out: Optional[torch.Tensor] = None,
            enable_pdl: Optional[bool] = None) -> torch.Tensor:
    return flashinfer.norm.rmsnorm(input, weight, eps, out, enable_pdl)


def fused_add_rmsnorm(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                      enable_pdl: Optional[bool] = None) -> None:
    flashinfer.norm.fused_add_rmsnorm(input, residual, weight, eps, enable_pdl)


def silu_and_mul(input: torch.Tensor, out: torch.Tensor = None) -> torch.Tensor:
    return _silu_and_mul(input, out)


def apply_rope_with_cos_sin_cache_inplace(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                                          head_size: int, cos_sin_cache: torch.Tensor, is_neox: bool = True,
                                          fused_set_kv_buffer_arg=None, enable_pdl: Optional[bool] = None) -> None:
    if fused_set_kv_buffer_arg is not None:
        raise NotImplementedError("the stand-in has no fused K/V store")
    _rope(positions, query, key, head_size, cos_sin_cache, is_neox)
