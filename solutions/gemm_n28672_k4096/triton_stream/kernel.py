"""C = A @ B^T for Llama-3.1-8B's gate-up projection (A [M, 4096], B [28672, 4096], fp16).

Value-returning: ``gemm(A, B) -> C``. The launch config is picked from M; the kernels are
in ``gemv.py`` (the same file in every ``triton_stream`` solution). The configs are the
fastest of a cold-weight sweep on the H200 (benchmarks/device/gemm_sweep.py). Runs on CPU
tensors when ``TRITON_INTERPRET=1`` is set before this module is imported.
"""
import torch

from .gemv import check_operands, matmul_nt, pick

N, K = 28672, 4096
DTYPE = torch.float16
#: (largest M, launch config), by increasing M.
CONFIGS = [
    (1, {"kernel": "fma", "BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 8, "num_stages": 3}),
    (16, {"kernel": "dot", "BLOCK_N": 64, "BLOCK_K": 128, "BLOCK_M": 16, "num_warps": 4, "num_stages": 4}),
    (32, {"kernel": "dot", "BLOCK_N": 64, "BLOCK_K": 128, "BLOCK_M": 32, "num_warps": 4, "num_stages": 4}),
    (64, {"kernel": "dot", "BLOCK_N": 64, "BLOCK_K": 128, "BLOCK_M": 64, "num_warps": 4, "num_stages": 4}),
    (1 << 62, {"kernel": "dot", "BLOCK_N": 128, "BLOCK_K": 64, "BLOCK_M": 128, "num_warps": 8, "num_stages": 3}),
]


def gemm(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A [M, 4096], B [28672, 4096] (fp16) -> C [M, 28672]; ValueError on other shapes or dtypes."""
    check_operands(A, B, N, K, DTYPE)
    return matmul_nt(A, B, pick(CONFIGS, A.shape[0]))
