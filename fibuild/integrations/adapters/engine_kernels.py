"""Adapters of the engines' own norm and activation kernels: SGLang's ``sgl_kernel`` functions
and vLLM's ``_C`` operators.

**SGLang** (0.5.23, with sglang-kernel 0.4.10). On CUDA, ``srt/layers/layernorm.py``
(lines 102-107) and ``srt/layers/activation.py`` (line 62) bind ``rmsnorm``,
``fused_add_rmsnorm`` and ``silu_and_mul`` by ``from sgl_kernel import ...`` at import, so
these adapters replace every loaded module's name bound to the same function
(``alias_scope = "all"``), not only ``sgl_kernel``'s. ``rmsnorm`` and ``fused_add_rmsnorm``
have FlashInfer's signatures (``enable_pdl`` included); sgl_kernel 0.4.10 forwards their
fp16/bf16 calls to ``flashinfer.norm``, so a FlashInfer solution is the original here too.
``silu_and_mul(input, out=None)`` has no ``enable_pdl``, and SGLang always passes ``out``:
the kernel writes into it. For row widths its vector loads take (on Hopper nearly all),
SGLang calls its own JIT ``silu_and_mul`` instead (same ``input, out`` call, plus expert
filtering arguments for MoE): adapted the same way.

**vLLM** (0.34.0). ``vllm_c`` provider of the IR ops (``vllm/kernels/vllm_c.py`` lines
23-90) and ``SiluAndMul.forward_cuda`` (``model_executor/layers/activation.py`` lines
128-151) call the torch operators ``_C::rms_norm(Tensor! result, Tensor input, Tensor?
weight, float epsilon)``, ``_C::fused_add_rms_norm(Tensor! input, Tensor! residual, Tensor?
weight, float epsilon)`` and ``_C::silu_and_mul(Tensor! result, Tensor input)``, defined by
the extension ``vllm._C_stable_libtorch`` (``vllm._C`` in older versions). These adapters are
seams of kind ``"torch_op"``: their calls are taken at the dispatcher
(:mod:`fibuild.integrations.op_overrides`), in eager code and in compiled graphs alike, with
the operator's own CUDA kernel as the original. Rows of more than two dimensions are
flattened (views); a norm without weight goes to the original.
"""
from __future__ import annotations

from typing import Any

from .base import REQUIRED, Call, Unmapped, dtype_name, same_device, tensor
from .functions import _FLOAT, FunctionAdapter, FusedAddRMSNorm, RMSNorm, SiluAndMul, _kwargs_key


def rows(t, width: int):
    """``t`` as ``[rows, width]`` (a view); ``t`` itself when it is not contiguous (the
    substitute's per-call check then sends the call to the original)."""
    return t.view(-1, width) if t.is_contiguous() else t


# -- SGLang: sgl_kernel ----------------------------------------------------------------------

class SglRMSNorm(RMSNorm):
    api = "sgl_kernel.rmsnorm"
    root = "sgl_kernel"
    module, attr = "sgl_kernel", "rmsnorm"
    alias_scope = "all"


class SglFusedAddRMSNorm(FusedAddRMSNorm):
    api = "sgl_kernel.fused_add_rmsnorm"
    root = "sgl_kernel"
    module, attr = "sgl_kernel", "fused_add_rmsnorm"
    alias_scope = "all"


class SglSiluAndMul(SiluAndMul):
    api = "sgl_kernel.silu_and_mul"
    root = "sgl_kernel"
    module, attr = "sgl_kernel", "silu_and_mul"
    alias_scope = "all"
    parameters = (("input", REQUIRED), ("out", None))
    must_be_default = ()

    def fast_key(self, args, kwargs):
        x = args[0]
        out = args[1] if len(args) > 1 else kwargs.get("out")
        return (len(args), tuple(kwargs), x.shape, x.dtype, None if out is None else (out.shape, out.dtype))

    def template_params(self, call: Call) -> dict[str, Any]:
        params = super().template_params(call)
        x = call["input"]
        if x.shape[-1] * x.element_size() % 16:
            raise Unmapped("rows are not a multiple of 16 bytes (the original refuses them)")
        out = call["out"]
        if out is not None:
            _same_tensor_kind(tensor(call, "out"), x, (*x.shape[:-1], x.shape[-1] // 2), "out")
        return params

    def to_inputs(self, call: Call) -> tuple:
        x = call["input"]
        return (rows(x, x.shape[-1]),)

    def out_of(self, call: Call):
        out = call["out"]
        return None if out is None else rows(out, out.shape[-1])

    def write_back(self, call: Call, outputs: Any) -> Any:
        if call["out"] is not None:
            return call["out"]
        return super().write_back(call, outputs)


class SglangJitSiluAndMul(SglSiluAndMul):
    """SGLang's own JIT act-and-mul kernel, which its dense MLP (``srt/layers/activation.py``
    lines 64-99) calls on CUDA instead of sgl_kernel's whenever the row width suits its vector
    loads (on Hopper, nearly always), and its fused MoE
    (``srt/layers/moe/moe_runner/triton_utils/fused_moe.py`` lines 61-66, 797) always. Calls
    that filter rows by expert go to the original."""

    api = "sglang.kernels.ops.activation.activation.silu_and_mul"
    root = module = "sglang.kernels.ops.activation.activation"
    attr = "silu_and_mul"
    parameters = (("input", REQUIRED), ("out", None), ("expert_ids", None), ("expert_step", 1),
                  ("sorted_token_ids", None), ("num_tokens_post_padded", None), ("num_valid_tokens", 0))

    def fast_key(self, args, kwargs):
        # Whether the expert filters are given belongs to the key; their values do not.
        return (super().fast_key(args, kwargs), tuple(a is None for a in args[2:]),
                tuple((k, v is None) for k, v in kwargs.items()))

    def template_params(self, call: Call) -> dict[str, Any]:
        if any(call[name] is not None for name in ("expert_ids", "sorted_token_ids", "num_tokens_post_padded")):
            raise Unmapped("rows filtered by expert (expert_ids=)")
        return super().template_params(call)


def _same_tensor_kind(t, like, shape: tuple, name: str) -> None:
    """Unmapped unless ``t`` has ``shape`` and ``like``'s dtype and device."""
    if tuple(t.shape) != tuple(shape):
        raise Unmapped(f"{name} has shape {tuple(t.shape)} (expected {tuple(shape)})")
    if t.dtype != like.dtype:
        raise Unmapped(f"{name} is {dtype_name(t)}, the input {dtype_name(like)}")
    same_device(t, like)


# -- vLLM: the _C operators ----------------------------------------------------------------------

class TorchOpAdapter(FunctionAdapter):
    """An adapter of the torch operator ``qualname``, taken at the dispatcher when the
    extension ``root`` defining it is imported. ``root`` may be given per instance: vLLM
    defines the ``_C`` ops in ``vllm._C_stable_libtorch`` (CUDA, 0.34) or ``vllm._C``."""

    kind = "torch_op"
    qualname = ""
    root = "vllm._C_stable_libtorch"

    def __init__(self, root: str | None = None):
        if root is not None:
            self.root = root
        self.module = self.root

    def fast_key(self, args, kwargs):
        # Tensors by shape and dtype, the rest (epsilon, a missing weight) by value.
        return (_kwargs_key(kwargs), *[(a.shape, a.dtype) if hasattr(a, "dtype") else a for a in args])

    def is_original(self, solution, instance: Any = None) -> bool:
        return False  # no solution of the workspace is vLLM's own kernel

    def out_of(self, call: Call):
        result = call.params.get("result")
        return None if result is None else rows(result, result.shape[-1])

    def write_back(self, call: Call, outputs: Any) -> None:
        return None  # the operators return nothing: their results are written into their arguments


def _norm_params(x, w, eps) -> dict[str, Any]:
    if w is None:
        raise Unmapped("weight is None (a norm without weight)")
    if x.dim() < 2:
        raise Unmapped(f"input has {x.dim()} dimension")
    same_device(x, w)
    if x.dtype != w.dtype or dtype_name(x) not in _FLOAT:
        raise Unmapped(f"dtypes input {dtype_name(x)}, weight {dtype_name(w)}")
    if w.dim() != 1 or w.shape[0] != x.shape[-1]:
        raise Unmapped("weight does not match the hidden size")
    return {"hidden_size": int(x.shape[-1]), "dtype": dtype_name(x), "eps": float(eps)}


class VllmRMSNorm(TorchOpAdapter):
    op = "rmsnorm"
    api = "torch.ops._C.rms_norm"
    qualname = attr = "_C::rms_norm"
    parameters = (("result", REQUIRED), ("input", REQUIRED), ("weight", REQUIRED), ("epsilon", REQUIRED))

    def template_params(self, call: Call) -> dict[str, Any]:
        x = tensor(call, "input")
        params = _norm_params(x, call["weight"], call["epsilon"])
        _same_tensor_kind(tensor(call, "result"), x, tuple(x.shape), "result")
        return params

    def to_inputs(self, call: Call) -> tuple:
        x = call["input"]
        return rows(x, x.shape[-1]), call["weight"]


class VllmFusedAddRMSNorm(TorchOpAdapter):
    op = "fused_add_rmsnorm"
    api = "torch.ops._C.fused_add_rms_norm"
    qualname = attr = "_C::fused_add_rms_norm"
    parameters = (("input", REQUIRED), ("residual", REQUIRED), ("weight", REQUIRED), ("epsilon", REQUIRED))

    def template_params(self, call: Call) -> dict[str, Any]:
        x, r = tensor(call, "input"), tensor(call, "residual")
        params = _norm_params(x, call["weight"], call["epsilon"])
        _same_tensor_kind(r, x, tuple(x.shape), "residual")
        if x.data_ptr() == r.data_ptr():
            raise Unmapped("input and residual are the same memory")
        return params

    def to_inputs(self, call: Call) -> tuple:
        x, r = call["input"], call["residual"]
        return rows(x, x.shape[-1]), rows(r, r.shape[-1]), call["weight"]

    def write_back(self, call: Call, outputs: Any) -> None:
        # In place, as the operator is; a solution that returned fresh tensors is copied back.
        for got, target in zip(outputs, (call["input"], call["residual"])):
            if got.data_ptr() != target.data_ptr():
                target.copy_(got.view(target.shape))
        return None


class VllmSiluAndMul(TorchOpAdapter):
    op = "silu_and_mul"
    api = "torch.ops._C.silu_and_mul"
    qualname = attr = "_C::silu_and_mul"
    parameters = (("result", REQUIRED), ("input", REQUIRED))

    def template_params(self, call: Call) -> dict[str, Any]:
        x = tensor(call, "input")
        if x.dim() < 2 or x.shape[-1] % 2:
            raise Unmapped("input is not [..., 2 * intermediate_size]")
        if dtype_name(x) not in _FLOAT:
            raise Unmapped(f"dtype {dtype_name(x)}")
        _same_tensor_kind(tensor(call, "result"), x, (*x.shape[:-1], x.shape[-1] // 2), "result")
        return {"intermediate_size": int(x.shape[-1]) // 2, "dtype": dtype_name(x)}

    def to_inputs(self, call: Call) -> tuple:
        x = call["input"]
        return (rows(x, x.shape[-1]),)


SGLANG_ADAPTERS = (SglRMSNorm, SglFusedAddRMSNorm, SglSiluAndMul, SglangJitSiluAndMul)
VLLM_ADAPTERS = (VllmRMSNorm, VllmFusedAddRMSNorm, VllmSiluAndMul)
#: the extensions that define vLLM's ``_C`` operators (0.34 on CUDA; older versions and CPU)
VLLM_OP_LIBRARIES = ("vllm._C_stable_libtorch", "vllm._C")


def engine_adapters() -> list:
    """One instance of each SGLang adapter, and of each vLLM adapter per defining extension."""
    return [cls() for cls in SGLANG_ADAPTERS] + [cls(root) for root in VLLM_OP_LIBRARIES for cls in VLLM_ADAPTERS]
