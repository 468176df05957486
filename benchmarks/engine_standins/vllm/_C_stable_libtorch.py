"""vllm._C_stable_libtorch stand-in for the decode-step benchmark: defines vLLM 0.34's ``_C``
norm, activation and rotary-embedding operators and ``_C_cache_ops.reshape_and_cache_flash``,
with their schemas, for CPU and CUDA, running FlashInfer's kernels (bound when this module is
imported) and, for the cache store, the one-kernel stand-in of ``_kv_store``. Defined once per
process, as the real extension is."""
import flashinfer.activation
import flashinfer.norm
import flashinfer.rope
import torch
from _kv_store import store_kv


def _own(fn):
    """FlashInfer's function itself, also when a serving integration patched it before this import."""
    return fn.__wrapped__ if hasattr(fn, "fibuild_memo") else fn


_rmsnorm, _fused = _own(flashinfer.norm.rmsnorm), _own(flashinfer.norm.fused_add_rmsnorm)
_silu = _own(flashinfer.activation.silu_and_mul)
_rope = flashinfer.rope.apply_rope_with_cos_sin_cache_inplace

SCHEMAS = {
    "rms_norm": "rms_norm(Tensor! result, Tensor input, Tensor? weight, float epsilon) -> ()",
    "fused_add_rms_norm": "fused_add_rms_norm(Tensor! input, Tensor! residual, Tensor? weight, float epsilon) -> ()",
    "silu_and_mul": "silu_and_mul(Tensor! result, Tensor input) -> ()",
    "rotary_embedding": "rotary_embedding(Tensor positions, Tensor! query, Tensor!? key, int head_size, "
                        "Tensor cos_sin_cache, bool is_neox) -> ()",
}
CACHE_SCHEMA = ("reshape_and_cache_flash(Tensor key, Tensor value, Tensor! key_cache, Tensor! value_cache, "
                "Tensor slot_mapping, str kv_cache_dtype, Tensor k_scale, Tensor v_scale) -> ()")


def _rms_norm(result, input, weight, epsilon):
    _rmsnorm(input, weight, epsilon, out=result)


def _fused_add_rms_norm(input, residual, weight, epsilon):
    _fused(input, residual, weight, epsilon)


def _silu_and_mul(result, input):
    _silu(input, out=result)


def _rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox):
    _rope(positions, query, key, head_size, cos_sin_cache, is_neox)


def _reshape_and_cache_flash(key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype, k_scale, v_scale):
    """``key``, ``value``: ``[tokens, kv_heads, head]``; caches ``[blocks, block_size, kv_heads,
    head]``, a token's slot being ``block * block_size + offset``."""
    store_kv(key, value, key_cache.view(-1, *key_cache.shape[2:]), value_cache.view(-1, *value_cache.shape[2:]),
             slot_mapping)


_LIB = torch.library.Library("_C", "DEF")
for _name, _kernel in (("rms_norm", _rms_norm), ("fused_add_rms_norm", _fused_add_rms_norm),
                       ("silu_and_mul", _silu_and_mul), ("rotary_embedding", _rotary_embedding)):
    _LIB.define(SCHEMAS[_name])
    for _key in ("CPU", "CUDA"):
        _LIB.impl(_name, _kernel, _key)
_CACHE_LIB = torch.library.Library("_C_cache_ops", "DEF")
_CACHE_LIB.define(CACHE_SCHEMA)
for _key in ("CPU", "CUDA"):
    _CACHE_LIB.impl("reshape_and_cache_flash", _reshape_and_cache_flash, _key)
