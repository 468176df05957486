"""RMSNorm over hidden size 4096 in Triton: one program per row, the whole row in registers.

Value-returning: ``rmsnorm(hidden_states, weight) -> output``. Launched through fibuild's
compiled-handle launcher; with dependent launch (``launch: {pdl: true}``) each program
loads the weight, lets the next kernel launch, and waits for the previous kernel before it
reads the row. Runs on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1`` is set
before this module is imported.
"""
import torch
import triton
import triton.language as tl

from fibuild.compile.launch import TritonLaunch

HIDDEN = 4096
EPS = 1e-5


@triton.jit
def _rmsnorm_row(x_ptr, w_ptr, out_ptr, eps, HIDDEN: tl.constexpr, PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, HIDDEN)
    w = tl.load(w_ptr + offs).to(tl.float32)  # a weight: no kernel before this one writes it
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()  # the row is the previous kernel's output
    x = tl.load(x_ptr + row * HIDDEN + offs).to(tl.float32)
    inv_rms = tl.math.rsqrt(tl.sum(x * x, axis=0) / HIDDEN + eps)
    tl.store(out_ptr + row * HIDDEN + offs, (x * inv_rms * w).to(out_ptr.dtype.element_ty))


#: 8 warps: 512 values per warp, 16 per thread (two 16-byte vectors).
_ROW = TritonLaunch(_rmsnorm_row)
_ROW_4096 = _ROW.bind(HIDDEN=HIDDEN, num_warps=8)


def rmsnorm(hidden_states: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """hidden_states [B, 4096] bf16, weight [4096] bf16 -> [B, 4096]; raises ValueError on bad shapes."""
    if hidden_states.ndim != 2 or hidden_states.shape[1] != HIDDEN or tuple(weight.shape) != (HIDDEN,):
        raise ValueError(f"expected hidden_states [B, {HIDDEN}] and weight [{HIDDEN}], got "
                         f"{tuple(hidden_states.shape)} and {tuple(weight.shape)}")
    x = hidden_states.contiguous()
    w = weight.contiguous()
    out = torch.empty_like(x)
    if x.shape[0]:
        _ROW_4096((x.shape[0],), x, w, out, EPS)
    return out
