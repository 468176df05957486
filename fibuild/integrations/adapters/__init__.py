"""The adapters fibuild ships: FlashInfer's norms, activation and attention wrappers,
``torch.nn.functional.linear``, and the engines' own kernels (sgl_kernel's norms and
activation, vLLM's ``_C`` operators)."""
from __future__ import annotations

from .attention import PagedDecode, PagedPrefill, RaggedPrefill
from .engine_kernels import engine_adapters
from .functions import FUNCTION_ADAPTERS


def default_adapters() -> list:
    """One instance of every built-in adapter (cheap: no imports beyond fibuild's)."""
    return [cls() for cls in FUNCTION_ADAPTERS] + [PagedDecode(), PagedPrefill(), RaggedPrefill()] + engine_adapters()
