"""C = A @ B^T (A [M, 4096], B [6144, 4096], fp16, fp32 accumulation) as a tiled Triton matmul.

Value-returning: ``gemm(A, B) -> C``. The tile shape is chosen from M: narrow tiles for
decode-sized M (the kernel is then bound by reading B once, so many programs along N keep
every SM loading), 128x256 tiles with grouped program order for large M (A and B tiles
reused from L2). N and K are constants of the definition, so only M needs masks. Launched
through fibuild's compiled-handle launcher (:mod:`fibuild.compile.launch`). Runs on
CPU tensors when ``TRITON_INTERPRET=1`` is set before this module is imported.
"""
import torch
import triton
import triton.language as tl

from fibuild.compile.launch import TritonLaunch

N = 6144
K = 4096


@triton.jit
def _gemm_nt(a_ptr, b_ptr, c_ptr, M, N: tl.constexpr, K: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = N // BLOCK_N
    # Grouped order: GROUP_M row-tiles share each column-tile while it is in L2.
    per_group = GROUP_M * grid_n
    first_m = (pid // per_group) * GROUP_M
    group_m = min(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_tile = a_ptr + rm.to(tl.int64)[:, None] * K + rk[None, :]
    b_tile = b_ptr + rn.to(tl.int64)[None, :] * K + rk[:, None]  # B^T tile, [BLOCK_K, BLOCK_N]
    row_ok = rm[:, None] < M
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, K // BLOCK_K):
        a = tl.load(a_tile, mask=row_ok, other=0.0)
        b = tl.load(b_tile)
        acc = tl.dot(a, b, acc)
        a_tile += BLOCK_K
        b_tile += BLOCK_K
    c = c_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=row_ok)


_GEMM = TritonLaunch(_gemm_nt)  # launched through its compiled handle, bound per tile shape


def _config(m: int) -> dict:
    """Tile shape, warps and pipeline depth for a given M (N and K fixed)."""
    if m <= 16:
        return dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, GROUP_M=1, num_warps=4, num_stages=4)
    if m <= 128:
        return dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=1, num_warps=4, num_stages=4)
    return dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)


def gemm(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A [M, 4096], B [6144, 4096] (same float dtype) -> C [M, 6144]; ValueError on bad shapes."""
    if A.ndim != 2 or A.shape[1] != K or tuple(B.shape) != (N, K) or A.dtype != B.dtype:
        raise ValueError(f"expected A [M, {K}] and B [{N}, {K}] of one dtype, got "
                         f"{tuple(A.shape)} {A.dtype} and {tuple(B.shape)} {B.dtype}")
    A, B = A.contiguous(), B.contiguous()
    m = A.shape[0]
    C = torch.empty((m, N), dtype=A.dtype, device=A.device)
    if m:
        cfg = _config(m)
        grid = (triton.cdiv(m, cfg["BLOCK_M"]) * (N // cfg["BLOCK_N"]),)
        _GEMM.bind(N=N, K=K, **cfg)(grid, A, B, C, m)
    return C
