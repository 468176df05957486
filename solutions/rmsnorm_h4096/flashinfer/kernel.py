"""FlashInfer baseline: flashinfer.norm.rmsnorm (CUDA tensors only)."""
import torch

EPS = 1e-5  # flashinfer's default eps is 1e-6; the definition fixes 1e-5


def _flashinfer():
    try:
        import flashinfer
    except ImportError as exc:
        raise ModuleNotFoundError(
            "this baseline needs the flashinfer-python package: pip install 'fibuild[flashinfer]'"
        ) from exc
    return flashinfer


@torch.no_grad()
def rmsnorm(hidden_states: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _flashinfer().norm.rmsnorm(hidden_states, weight, eps=EPS)
