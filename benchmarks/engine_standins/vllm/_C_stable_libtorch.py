"""vllm._C_stable_libtorch stand-in for the decode-step benchmark: defines vLLM 0.34's ``_C``
norm and activation operators, with their schemas, for CPU and CUDA, running FlashInfer's
kernels (bound when this module is imported). Defined once per process, as the real
extension is."""
import flashinfer.activation
import flashinfer.norm
import torch


def _own(fn):
    """FlashInfer's function itself, also when a serving integration patched it before this import."""
    return fn.__wrapped__ if hasattr(fn, "fibuild_memo") else fn


_rmsnorm, _fused = _own(flashinfer.norm.rmsnorm), _own(flashinfer.norm.fused_add_rmsnorm)
_silu = _own(flashinfer.activation.silu_and_mul)

SCHEMAS = {
    "rms_norm": "rms_norm(Tensor! result, Tensor input, Tensor? weight, float epsilon) -> ()",
    "fused_add_rms_norm": "fused_add_rms_norm(Tensor! input, Tensor! residual, Tensor? weight, float epsilon) -> ()",
    "silu_and_mul": "silu_and_mul(Tensor! result, Tensor input) -> ()",
}


def _rms_norm(result, input, weight, epsilon):
    _rmsnorm(input, weight, epsilon, out=result)


def _fused_add_rms_norm(input, residual, weight, epsilon):
    _fused(input, residual, weight, epsilon)


def _silu_and_mul(result, input):
    _silu(input, out=result)


_LIB = torch.library.Library("_C", "DEF")
for _name, _kernel in (("rms_norm", _rms_norm), ("fused_add_rms_norm", _fused_add_rms_norm),
                       ("silu_and_mul", _silu_and_mul)):
    _LIB.define(SCHEMAS[_name])
    for _key in ("CPU", "CUDA"):
        _LIB.impl(_name, _kernel, _key)
