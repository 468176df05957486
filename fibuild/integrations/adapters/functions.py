"""Adapters of plain functions: FlashInfer's rmsnorm, fused_add_rmsnorm, silu_and_mul, and
``torch.nn.functional.linear``.

Each names its parameters (as the API declares them), a ``fast_key`` (the memo key of the
patched function: argument shapes, dtypes and values, no contiguity or device reads: those
are checked per call only where a substitute runs) and the mapping to its op template.
"""
from __future__ import annotations

from typing import Any

from .base import REQUIRED, Adapter, Call, Unmapped, dtype_name, same_device, tensor

_FLOAT = ("float16", "bfloat16", "float32")


def _kwargs_key(kwargs):
    return tuple(kwargs.items()) if kwargs else ()


class FunctionAdapter(Adapter):
    """An adapter of a module-level function ``module.attr``."""

    parameters: tuple[tuple[str, Any], ...] = ()
    #: parameters that must keep their default for the call to be taken (e.g. ``out``)
    must_be_default: tuple[str, ...] = ()

    def fast_key(self, args: tuple, kwargs: dict) -> tuple:
        raise NotImplementedError

    def checked(self, call: Call) -> None:
        defaults = dict(self.parameters)
        for name in self.must_be_default:
            if call.params.get(name) is not defaults[name]:
                raise Unmapped(f"{name}= is given")


class RMSNorm(FunctionAdapter):
    op = "rmsnorm"
    api = "flashinfer.norm.rmsnorm"
    module, attr = "flashinfer.norm", "rmsnorm"
    parameters = (("input", REQUIRED), ("weight", REQUIRED), ("eps", 1e-6), ("out", None),
                  ("enable_pdl", None))
    must_be_default = ("out",)

    def fast_key(self, args, kwargs):
        x = args[0]
        w = args[1]
        return (len(args), _kwargs_key(kwargs), x.shape, x.dtype, w.shape, w.dtype, args[2] if len(args) > 2 else None)

    def template_params(self, call: Call) -> dict[str, Any]:
        self.checked(call)
        x, w = tensor(call, "input", ndim=2), tensor(call, "weight", ndim=1)
        same_device(x, w)
        if x.dtype != w.dtype or dtype_name(x) not in _FLOAT:
            raise Unmapped(f"dtypes input {dtype_name(x)}, weight {dtype_name(w)}")
        if w.shape[0] != x.shape[1]:
            raise Unmapped("weight does not match the hidden size")
        return {"hidden_size": int(x.shape[1]), "dtype": dtype_name(x), "eps": float(call["eps"])}

    def to_inputs(self, call: Call) -> tuple:
        return call["input"], call["weight"]


class FusedAddRMSNorm(FunctionAdapter):
    op = "fused_add_rmsnorm"
    api = "flashinfer.norm.fused_add_rmsnorm"
    module, attr = "flashinfer.norm", "fused_add_rmsnorm"
    parameters = (("input", REQUIRED), ("residual", REQUIRED), ("weight", REQUIRED), ("eps", 1e-6),
                  ("enable_pdl", None))

    def fast_key(self, args, kwargs):
        x = args[0]
        r, w = args[1], args[2]
        return (len(args), _kwargs_key(kwargs), x.shape, x.dtype, r.shape, r.dtype, w.shape, w.dtype,
                args[3] if len(args) > 3 else None)

    def template_params(self, call: Call) -> dict[str, Any]:
        x, r = tensor(call, "input", ndim=2), tensor(call, "residual", ndim=2)
        w = tensor(call, "weight", ndim=1)
        same_device(x, r, w)
        if not (x.dtype == r.dtype == w.dtype) or dtype_name(x) not in _FLOAT:
            raise Unmapped(f"dtypes input {dtype_name(x)}, residual {dtype_name(r)}, weight {dtype_name(w)}")
        if r.shape != x.shape or w.shape[0] != x.shape[1]:
            raise Unmapped("residual or weight does not match the input's shape")
        if x.data_ptr() == r.data_ptr():
            raise Unmapped("input and residual are the same memory")
        return {"hidden_size": int(x.shape[1]), "dtype": dtype_name(x), "eps": float(call["eps"])}

    def to_inputs(self, call: Call) -> tuple:
        return call["input"], call["residual"], call["weight"]

    def write_back(self, call: Call, outputs: Any) -> None:
        # The definition's outputs are in place; a solution that returned fresh tensors is
        # copied into the caller's, so the caller sees FlashInfer's effects either way.
        hidden, residual = outputs
        if hidden is not call["input"]:
            call["input"].copy_(hidden)
        if residual is not call["residual"]:
            call["residual"].copy_(residual)
        return None


class SiluAndMul(FunctionAdapter):
    op = "silu_and_mul"
    api = "flashinfer.activation.silu_and_mul"
    module, attr = "flashinfer.activation", "silu_and_mul"
    parameters = (("input", REQUIRED), ("out", None), ("enable_pdl", None))
    must_be_default = ("out",)

    def fast_key(self, args, kwargs):
        x = args[0]
        return (len(args), _kwargs_key(kwargs), x.shape, x.dtype)

    def template_params(self, call: Call) -> dict[str, Any]:
        self.checked(call)
        x = tensor(call, "input")
        if x.dim() < 2 or x.shape[-1] % 2:
            raise Unmapped("input is not [..., 2 * intermediate_size]")
        if dtype_name(x) not in _FLOAT:
            raise Unmapped(f"dtype {dtype_name(x)}")
        return {"intermediate_size": int(x.shape[-1]) // 2, "dtype": dtype_name(x)}

    def to_inputs(self, call: Call) -> tuple:
        x = call["input"]
        return (x.view(-1, x.shape[-1]),)

    def write_back(self, call: Call, outputs: Any) -> Any:
        x = call["input"]
        return outputs.view(*x.shape[:-1], x.shape[-1] // 2)


class Linear(FunctionAdapter):
    """``torch.nn.functional.linear(input, weight, bias=None)`` as ``gemm_n{N}_k{K}``."""

    op = "gemm"
    api = "torch.nn.functional.linear"
    root = "torch.nn.functional"
    module, attr = "torch.nn.functional", "linear"
    parameters = (("input", REQUIRED), ("weight", REQUIRED), ("bias", None))
    must_be_default = ("bias",)

    def fast_key(self, args, kwargs):
        x, w = args[0], args[1]
        return (len(args), _kwargs_key(kwargs), x.shape, x.dtype, w.shape, w.dtype,
                args[2] is None if len(args) > 2 else None)

    def template_params(self, call: Call) -> dict[str, Any]:
        if call["bias"] is not None:
            raise Unmapped("bias is given")
        x, w = tensor(call, "input"), tensor(call, "weight", ndim=2)
        if x.dim() < 1 or x.shape[-1] != w.shape[1]:
            raise Unmapped("input's last dimension is not weight's K")
        same_device(x, w)
        if x.dtype != w.dtype or dtype_name(x) not in _FLOAT:
            raise Unmapped(f"dtypes input {dtype_name(x)}, weight {dtype_name(w)}")
        return {"n": int(w.shape[0]), "k": int(w.shape[1]), "dtype": dtype_name(x)}

    def is_original(self, solution, instance: Any = None) -> bool:
        # The definition's torch.matmul solution is the same cuBLAS GEMM F.linear runs.
        return solution.language == "python" and solution.name == "torch_matmul"

    def to_inputs(self, call: Call) -> tuple:
        x, w = call["input"], call["weight"]
        return x.view(-1, x.shape[-1]), w

    def write_back(self, call: Call, outputs: Any) -> Any:
        x = call["input"]
        return outputs.view(*x.shape[:-1], outputs.shape[-1])


FUNCTION_ADAPTERS = (RMSNorm, FusedAddRMSNorm, SiluAndMul, Linear)
