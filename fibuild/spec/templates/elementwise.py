"""Op templates of the row-wise and GEMM operators: rmsnorm, fused_add_rmsnorm, silu_and_mul, gemm.

Each template takes the operator's constants and returns a definition manifest (a dict in
the YAML layout of ``defs/``), the torch reference included. Names follow the
flashinfer-trace dataset (see :func:`fibuild.spec.templates.definition_name`).
"""
from __future__ import annotations

from typing import Any

_TOL = {"atol": 1.0e-2, "rtol": 1.0e-2}

_RMSNORM_REF = '''import torch

EPS = {eps!r}


@torch.no_grad()
def run(hidden_states, weight):
    x = hidden_states.to(torch.float32)
    inv_rms = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + EPS)
    return (x * inv_rms * weight.to(torch.float32)).to(hidden_states.dtype)
'''

_FUSED_ADD_RMSNORM_REF = '''import torch

EPS = {eps!r}


@torch.no_grad()
def run(hidden_states, residual, weight):
    residual.copy_((hidden_states.to(torch.float32) + residual.to(torch.float32)).to(residual.dtype))
    x = residual.to(torch.float32)
    inv_rms = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + EPS)
    hidden_states.copy_((x * inv_rms * weight.to(torch.float32)).to(hidden_states.dtype))
    return hidden_states, residual
'''

_SILU_AND_MUL_REF = '''import torch

INTERMEDIATE = {intermediate_size}


@torch.no_grad()
def run(x):
    xf = x.to(torch.float32)
    gate, up = xf[:, :INTERMEDIATE], xf[:, INTERMEDIATE:]
    return (torch.nn.functional.silu(gate) * up).to(x.dtype)
'''

_GEMM_REF = '''import torch


@torch.no_grad()
def run(A, B):
    return torch.matmul(A.to(torch.float32), B.to(torch.float32).T).to(A.dtype)
'''

_ROWS = [{"axes": {"batch_size": n}} for n in (1, 16, 128, 1024)]


def rmsnorm(*, hidden_size: int, dtype: str, eps: float) -> dict[str, Any]:
    """RMSNorm over rows of ``hidden_size`` with epsilon ``eps`` (fp32 math)."""
    return {
        "op_type": "rmsnorm",
        "description": f"output = hidden_states / sqrt(mean(hidden_states^2) + {eps!r}) * weight, "
                       "computed in fp32. Made from a traced call.",
        "axes": {"batch_size": {"type": "var", "description": "Number of rows (tokens)."},
                 "hidden_size": {"type": "const", "value": hidden_size}},
        "inputs": {"hidden_states": {"shape": ["batch_size", "hidden_size"], "dtype": dtype},
                   "weight": {"shape": ["hidden_size"], "dtype": dtype}},
        "outputs": {"output": {"shape": ["batch_size", "hidden_size"], "dtype": dtype}},
        "tolerance": dict(_TOL),
        "reference": _RMSNORM_REF.format(eps=float(eps)),
        "workloads": list(_ROWS),
    }


def fused_add_rmsnorm(*, hidden_size: int, dtype: str, eps: float) -> dict[str, Any]:
    """Residual add then RMSNorm, both in place (FlashInfer's ``fused_add_rmsnorm``)."""
    rows = ["batch_size", "hidden_size"]
    return {
        "op_type": "fused_add_rmsnorm",
        "description": "residual <- hidden_states + residual; hidden_states <- residual / "
                       f"sqrt(mean(residual^2) + {eps!r}) * weight; both in place. Made from a traced call.",
        "axes": {"batch_size": {"type": "var", "description": "Number of rows (tokens)."},
                 "hidden_size": {"type": "const", "value": hidden_size}},
        "inputs": {"hidden_states": {"shape": rows, "dtype": dtype},
                   "residual": {"shape": rows, "dtype": dtype},
                   "weight": {"shape": ["hidden_size"], "dtype": dtype}},
        "outputs": {"hidden_states": {"shape": rows, "dtype": dtype, "inplace": "hidden_states"},
                    "residual": {"shape": rows, "dtype": dtype, "inplace": "residual"}},
        "tolerance": dict(_TOL),
        "reference": _FUSED_ADD_RMSNORM_REF.format(eps=float(eps)),
        "workloads": list(_ROWS),
    }


def silu_and_mul(*, intermediate_size: int, dtype: str) -> dict[str, Any]:
    """``silu(x[:, :I]) * x[:, I:]`` for a fused gate|up input of width ``2 I``."""
    return {
        "op_type": "silu_and_mul",
        "description": f"out = silu(x[:, :{intermediate_size}]) * x[:, {intermediate_size}:], in fp32, "
                       "rounded once. Made from a traced call.",
        "axes": {"num_tokens": {"type": "var", "description": "Number of rows (tokens)."},
                 "intermediate_size": {"type": "const", "value": intermediate_size},
                 "two_intermediate_size": {"type": "const", "value": 2 * intermediate_size}},
        "constraints": ["two_intermediate_size == 2 * intermediate_size"],
        "inputs": {"x": {"shape": ["num_tokens", "two_intermediate_size"], "dtype": dtype}},
        "outputs": {"out": {"shape": ["num_tokens", "intermediate_size"], "dtype": dtype}},
        "tolerance": dict(_TOL),
        "reference": _SILU_AND_MUL_REF.format(intermediate_size=intermediate_size),
        "workloads": [{"axes": {"num_tokens": n}} for n in (1, 16, 128, 1024)],
    }


def gemm(*, n: int, k: int, dtype: str) -> dict[str, Any]:
    """``C = A @ B^T`` (``torch.nn.functional.linear`` without bias), fp32 accumulation."""
    return {
        "op_type": "gemm",
        "description": f"C = A @ B^T with A [M, {k}] and B [{n}, {k}] in {dtype}; the reference "
                       "accumulates in fp32 and rounds C once. Made from a traced call.",
        "axes": {"M": {"type": "var", "description": "Number of rows of A (tokens)."},
                 "N": {"type": "const", "value": n},
                 "K": {"type": "const", "value": k}},
        "inputs": {"A": {"shape": ["M", "K"], "dtype": dtype},
                   "B": {"shape": ["N", "K"], "dtype": dtype}},
        "outputs": {"C": {"shape": ["M", "N"], "dtype": dtype}},
        "tolerance": {"atol": 1.0e-1, "rtol": 1.0e-2},
        "reference": _GEMM_REF,
        "workloads": [{"axes": {"M": m}} for m in (1, 16, 128, 1024)],
    }
