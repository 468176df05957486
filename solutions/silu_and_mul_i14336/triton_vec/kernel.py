"""SwiGLU (intermediate size 14336) in Triton: out = silu(gate) * up, computed in fp32.

Value-returning: ``silu_and_mul(x) -> out``. A 2-D grid (token, column block) so that a
single token still spreads over many SMs. With dependent launch (``launch: {pdl: true}``)
each program lets the next kernel launch and waits for the previous one before reading its
input (everything it reads is that kernel's output). Runs on CPU tensors when
``TRITON_INTERPRET=1`` is set before this module is imported.
"""
import torch
import triton
import triton.language as tl

from fibuild.compile.launch import TritonLaunch

INTERMEDIATE = 14336
BLOCK = 2048  # 14336 = 7 * 2048: no masks


@triton.jit
def _silu_and_mul(x_ptr, out_ptr, INTER: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    gate = tl.load(x_ptr + row * (2 * INTER) + cols).to(tl.float32)
    up = tl.load(x_ptr + row * (2 * INTER) + INTER + cols).to(tl.float32)
    silu = gate / (1.0 + tl.exp(-gate))
    tl.store(out_ptr + row * INTER + cols, (silu * up).to(out_ptr.dtype.element_ty))


_SILU = TritonLaunch(_silu_and_mul).bind(INTER=INTERMEDIATE, BLOCK=BLOCK, num_warps=8)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [T, 28672] -> [T, 14336] in x's dtype; raises ValueError on a bad shape."""
    if x.ndim != 2 or x.shape[1] != 2 * INTERMEDIATE:
        raise ValueError(f"expected x [T, {2 * INTERMEDIATE}], got {tuple(x.shape)}")
    x = x.contiguous()
    out = torch.empty((x.shape[0], INTERMEDIATE), dtype=x.dtype, device=x.device)
    if x.shape[0]:
        _SILU((x.shape[0], INTERMEDIATE // BLOCK), x, out)
    return out
