"""The adapters fibuild ships: FlashInfer's norms, activation and attention wrappers, and
``torch.nn.functional.linear``."""
from __future__ import annotations

from .attention import PagedDecode, PagedPrefill, RaggedPrefill
from .functions import FUNCTION_ADAPTERS


def default_adapters() -> list:
    """One instance of every built-in adapter (cheap: no imports beyond fibuild's)."""
    return [cls() for cls in FUNCTION_ADAPTERS] + [PagedDecode(), PagedPrefill(), RaggedPrefill()]
