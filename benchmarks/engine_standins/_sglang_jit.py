"""Stand-ins for the JIT kernels of SGLang's own that its Llama decode layer runs on CUDA
(sglang 0.5.23; see README.md), with their signatures: the rotary embedding
(``sglang.kernels.ops.attention.rope``, called by ``RotaryEmbedding.forward_cuda`` on 3-D
views of the QKV output) and the K/V cache store (``sglang.kernels.ops.kvcache.kvcache``,
called by ``set_kv_buffer`` on ``[tokens, heads * head_dim]`` rows). FlashInfer's rope kernel
and the one-kernel store of ``_kv_store`` run behind them. Not a package named ``sglang``:
fibuild watches that name."""
from typing import Optional

import flashinfer.rope
import torch
from _kv_store import store_kv

_rope = flashinfer.rope.apply_rope_with_cos_sin_cache_inplace


def apply_rope_with_cos_sin_cache_inplace(q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor,
                                          positions: torch.Tensor, *, is_neox: bool, rope_dim: int = 0,
                                          fused_args: Optional[object] = None) -> None:
    """Rotate ``q`` ``[tokens, q_heads, head]`` and ``k`` ``[tokens, kv_heads, head]`` in place."""
    if fused_args is not None or rope_dim not in (0, cos_sin_cache.shape[-1]):
        raise NotImplementedError("the stand-in has no fused K/V store and rotates the whole cache width")
    _rope(positions, q, k, q.shape[-1], cos_sin_cache, is_neox)


def store_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                indices: torch.Tensor, *, row_bytes: int = 0, v_row_bytes: int = 0, num_split: int = 0,
                size_limit: int = 0, reserved_skip_index: int = 0) -> None:
    """``k_cache[indices[t]] = k[t]`` and the same for V, one kernel for both."""
    store_kv(k, v, k_cache, v_cache, indices)
