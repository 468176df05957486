"""The K/V cache store of one decode step, as one kernel (stand-in, see README.md): each new
token's K and V rows written to their slots, which SGLang's ``set_kv_buffer`` does on CUDA with
``store_cache`` (a JIT kernel of sglang's own) and vLLM's attention with
``_C_cache_ops.reshape_and_cache_flash``. A Triton kernel on a GPU (one launch for K and V),
index assignment on a CPU."""
import functools

import torch


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slots: torch.Tensor, *, kernel: bool | None = None) -> None:
    """``k_cache[slots[t]] = k[t]`` and the same for V. ``k``, ``v``: ``[tokens, ...]`` (each
    token's row contiguous, any token stride); caches ``[slots, ...]`` of the same row shape
    (rows contiguous, any slot stride); ``slots``: int64 ``[tokens]``. ``kernel``: the Triton
    kernel (default: on a GPU) or index assignment."""
    if not (k.is_cuda if kernel is None else kernel):
        k_cache[slots] = k
        v_cache[slots] = v
        return
    row = k[0].numel()
    _store_kernel()[(k.shape[0],)](k, v, k_cache, v_cache, slots, k.stride(0), v.stride(0),
                                   k_cache.stride(0), v_cache.stride(0), ROW=row)


@functools.cache
def _store_kernel():
    """The Triton kernel, defined at first use (no Triton import on a CPU)."""
    import triton
    import triton.language as tl

    @triton.jit
    def store_rows(k, v, k_cache, v_cache, slots, k_stride, v_stride, kc_stride, vc_stride, ROW: tl.constexpr):
        t = tl.program_id(0)
        slot = tl.load(slots + t)
        cols = tl.arange(0, ROW)
        tl.store(k_cache + slot * kc_stride + cols, tl.load(k + t * k_stride + cols))
        tl.store(v_cache + slot * vc_stride + cols, tl.load(v + t * v_stride + cols))

    return store_rows
