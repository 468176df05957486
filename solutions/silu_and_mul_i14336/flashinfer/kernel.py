"""FlashInfer baseline: flashinfer.activation.silu_and_mul (CUDA tensors only)."""
import torch


def _flashinfer():
    try:
        import flashinfer
    except ImportError as exc:
        raise ModuleNotFoundError(
            "this baseline needs the flashinfer-python package: pip install 'fibuild[flashinfer]'"
        ) from exc
    return flashinfer


@torch.no_grad()
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return _flashinfer().activation.silu_and_mul(x)
