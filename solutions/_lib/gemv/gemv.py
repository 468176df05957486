"""Weight-streaming C = A @ B^T for decode-sized M (B [N, K] as nn.Linear keeps it), in Triton.

At small M a projection is bound by reading B once from HBM, so the kernels keep bytes in
flight on every SM rather than reuse tiles: many CTAs of a few rows of B each, wide loads
along K, a cp.async pipeline ``num_stages`` deep. Two kernels, picked by a config:

- ``dot``: swap-AB tensor-core tiles, C^T[BLOCK_N, BLOCK_M] += B[BLOCK_N, BLOCK_K] @ A^T,
  so B is the row-major MMA operand and M pads only the narrow side (any M is correct).
- ``fma``: M = 1 on the CUDA cores, fp32 products accumulated elementwise, one row sum at the end.

Split-K (fp32 partials, the last CTA of a tile reducing) was measured too and never won on
the H200 at these shapes: full-K CTAs already fill the SMs (benchmarks/results/NOTES.md).

Every kernel accumulates in fp32 and rounds C once. The ``triton_stream`` solutions name
this library; their entry point is ``stream.py``.

Programmatic dependent launch (``PDL``, set by fibuild's launcher for solutions declaring
``launch: {pdl: true}``): each CTA lets the next kernel launch at once, loads its first tile of
B (a weight: no kernel before this one writes it), and only then waits for the previous kernel
(``gdc_wait``) before it reads A, the previous kernel's output, or writes C. The weight stream
thus starts while the previous kernel drains. Without PDL the kernels are the plain ones.
"""
import os

import torch
import triton
import triton.language as tl

from fibuild.compile.launch import TritonLaunch


@triton.jit
def _mma(b, at, acc, UPCAST: tl.constexpr):
    if UPCAST:  # interpreter only: its bf16 tl.dot multiplies bit patterns (triton#11584)
        acc = tl.dot(b.to(tl.float32), at.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(b, at, acc)
    return acc


@triton.jit(do_not_specialize=["M"])
def _stream_dot(a_ptr, b_ptr, c_ptr, M, N, K: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                UPCAST: tl.constexpr, PDL: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    b_tile = b_ptr + rn.to(tl.int64)[:, None] * K + rk[None, :]
    at_tile = a_ptr + rm.to(tl.int64)[None, :] * K + rk[:, None]  # A^T, [BLOCK_K, BLOCK_M]
    m_ok = rm[None, :] < M
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    if PDL:  # the first tile of B in flight before waiting for A's producer
        tl.extra.cuda.gdc_launch_dependents()
        b = tl.load(b_tile, eviction_policy="evict_first")
        tl.extra.cuda.gdc_wait()
        at = tl.load(at_tile, mask=m_ok, other=0.0)
        acc = _mma(b, at, acc, UPCAST)
        b_tile += BLOCK_K
        at_tile += BLOCK_K
    for _ in range(PDL * 1, K // BLOCK_K):  # from the second tile with PDL
        b = tl.load(b_tile, eviction_policy="evict_first")  # streamed once: keep A in L2
        at = tl.load(at_tile, mask=m_ok, other=0.0)
        acc = _mma(b, at, acc, UPCAST)
        b_tile += BLOCK_K
        at_tile += BLOCK_K
    c = c_ptr + rm.to(tl.int64)[None, :] * N + rn[:, None]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=m_ok)


@triton.jit
def _stream_fma(a_ptr, b_ptr, c_ptr, N, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                PDL: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    b_tile = b_ptr + rn.to(tl.int64)[:, None] * K + rk[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    if PDL:  # the first tile of B in flight before waiting for A's producer
        tl.extra.cuda.gdc_launch_dependents()
        b = tl.load(b_tile, eviction_policy="evict_first").to(tl.float32)
        tl.extra.cuda.gdc_wait()
        acc += b * tl.load(a_ptr + rk).to(tl.float32)[None, :]
        b_tile += BLOCK_K
    for k in range(PDL * BLOCK_K, K, BLOCK_K):  # from the second tile with PDL
        b = tl.load(b_tile, eviction_policy="evict_first").to(tl.float32)
        a = tl.load(a_ptr + k + rk).to(tl.float32)
        acc += b * a[None, :]
        b_tile += BLOCK_K
    tl.store(c_ptr + rn, tl.sum(acc, axis=1).to(c_ptr.dtype.element_ty))


def check_operands(A: torch.Tensor, B: torch.Tensor, n: int, k: int, dtype: torch.dtype) -> None:
    """ValueError unless A is [M, k] and B is [n, k], both of ``dtype`` on one device."""
    if (A.ndim != 2 or A.shape[1] != k or tuple(B.shape) != (n, k) or A.dtype != dtype
            or B.dtype != dtype or A.device != B.device):
        raise ValueError(f"expected A [M, {k}] and B [{n}, {k}] of {dtype} on one device, got "
                         f"{tuple(A.shape)} {A.dtype} and {tuple(B.shape)} {B.dtype}")


def pick(configs, m: int) -> dict:
    """The config of the first ``(max_m, config)`` entry with ``m <= max_m`` (the last otherwise)."""
    for max_m, cfg in configs:
        if m <= max_m:
            return cfg
    return configs[-1][1]


_DOT = TritonLaunch(_stream_dot)
_FMA = TritonLaunch(_stream_fma)
_BOUND: dict = {}  # (id(cfg), K, dtype) -> (cfg, its bound launch); holding cfg keeps its id its own


def _launch_for(cfg: dict, k: int, dtype):
    """The kernel of ``cfg`` bound to its constexprs and launch shape, made once per config
    object, K and dtype (a config is read once: do not mutate one after using it)."""
    key = (id(cfg), k, dtype)
    hit = _BOUND.get(key)
    if hit is not None and hit[0] is cfg:
        return hit[1]
    kernel = cfg["kernel"]
    if kernel == "fma":
        bound = _FMA.bind(K=k, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"],
                          num_stages=cfg["num_stages"])
    elif kernel == "dot":
        upcast = dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"
        bound = _DOT.bind(K=k, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
                          UPCAST=upcast, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    else:
        raise ValueError(f"unknown kernel {kernel!r} (dot or fma)")
    if len(_BOUND) < 1024:
        _BOUND[key] = (cfg, bound)
    return bound


def matmul_nt(A: torch.Tensor, B: torch.Tensor, cfg: dict) -> torch.Tensor:
    """C [M, N] = A [M, K] @ B[N, K]^T with the kernel and launch shape ``cfg`` names.

    ``cfg``: ``kernel`` (dot | fma), BLOCK_N, BLOCK_K, BLOCK_M (dot), num_warps, num_stages.
    N must divide by BLOCK_N and K by BLOCK_K; ``fma`` takes M = 1 only (ValueError
    otherwise). Allocates C only: no scratch, so any stream and CUDA-graph capture work.
    """
    A, B = A.contiguous(), B.contiguous()
    (m, k), n = A.shape, B.shape[0]
    C = torch.empty((m, n), dtype=A.dtype, device=A.device)
    if m == 0:
        return C
    bn = cfg["BLOCK_N"]
    if n % bn or k % cfg["BLOCK_K"]:  # the kernels mask M only: a remainder would go unwritten
        raise ValueError(f"config {cfg} does not tile N = {n}, K = {k}")
    launch = _launch_for(cfg, k, A.dtype)
    if cfg["kernel"] == "fma":
        if m != 1:
            raise ValueError(f"the fma kernel takes M = 1, got M = {m}")
        launch((n // bn,), A, B, C, n)
    else:
        launch((n // bn, triton.cdiv(m, cfg["BLOCK_M"])), A, B, C, m, n)
    return C
