"""The entry point of every ``triton_stream`` solution: C = A @ B^T with one launch config.

The config is a variant of the solution's grid, passed as keyword constants: ``KERNEL``
(``fma``: the CUDA-core GEMV of ``gemv.py``, M = 1; ``dot``: swap-AB tensor-core tiles),
``BLOCK_M``, ``BLOCK_N``, ``BLOCK_K``, ``STAGES`` (cp.async pipeline depth) and ``WARPS``.
The resolver picks a variant per M from the registry, so one variant needs only to be
correct at every M: an ``fma`` variant given several rows runs the small-M tile below.
"""
import torch

from .gemv import matmul_nt

#: What an ``fma`` variant runs at M > 1 (its kernel takes one row).
SEVERAL_ROWS = {"kernel": "dot", "BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "num_stages": 4, "num_warps": 4}
_CONFIGS = {}  # constants -> the config dict matmul_nt takes, made once per variant


def gemm(A: torch.Tensor, B: torch.Tensor, *, KERNEL, BLOCK_M, BLOCK_N, BLOCK_K, STAGES, WARPS) -> torch.Tensor:
    """A [M, K], B [N, K] of one dtype and device -> C [M, N]; ValueError on other operands
    or a config that does not tile N and K."""
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1] or A.dtype != B.dtype or A.device != B.device:
        raise ValueError(f"expected A [M, K] and B [N, K] of one dtype on one device, got "
                         f"{tuple(A.shape)} {A.dtype} and {tuple(B.shape)} {B.dtype}")
    key = (KERNEL, BLOCK_M, BLOCK_N, BLOCK_K, STAGES, WARPS)
    cfg = _CONFIGS.get(key)
    if cfg is None:
        cfg = _CONFIGS[key] = {"kernel": KERNEL, "BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N, "BLOCK_K": BLOCK_K,
                               "num_stages": STAGES, "num_warps": WARPS}
    if KERNEL == "fma" and A.shape[0] != 1:
        cfg = SEVERAL_ROWS
    return matmul_nt(A, B, cfg)
