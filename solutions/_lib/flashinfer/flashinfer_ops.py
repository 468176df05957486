"""FlashInfer baselines: flashinfer-python's own kernels, called as the definitions call them.

``rmsnorm`` (flashinfer.norm.rmsnorm), ``fused_add_rmsnorm`` (flashinfer.norm.fused_add_rmsnorm,
in place) and ``silu_and_mul`` (flashinfer.activation.silu_and_mul); the paged decode
wrapper is in ``flashinfer_decode.py``. CUDA tensors only. Importing this file needs no
flashinfer; a call without it raises ModuleNotFoundError naming the package to install.
"""
import torch

EPS = 1e-5  # flashinfer's default eps is 1e-6; the definitions fix 1e-5


_module = []  # the flashinfer package once imported (a call then skips the import statement)


def flashinfer_module():
    """The ``flashinfer`` package; ModuleNotFoundError with the install command when missing."""
    if _module:
        return _module[0]
    try:
        import flashinfer
    except ImportError as exc:
        raise ModuleNotFoundError(
            "this baseline needs the flashinfer-python package: pip install 'fibuild[flashinfer]'"
        ) from exc
    _module.append(flashinfer)
    return flashinfer


def rmsnorm(hidden_states: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return flashinfer_module().norm.rmsnorm(hidden_states, weight, eps=EPS)


def fused_add_rmsnorm(hidden_states: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> None:
    flashinfer_module().norm.fused_add_rmsnorm(hidden_states, residual, weight, eps=EPS)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return flashinfer_module().activation.silu_and_mul(x)
