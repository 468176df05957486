"""FlashInfer's paged decode wrapper for pages of 16 token(s), its tensor-core (prefill-kernel) decode
(the plan and run, shared by every page size, are flashinfer_decode.py)."""
import functools

from .flashinfer_decode import gqa_paged_decode  # noqa: F401 (the entry point)
from .flashinfer_decode import plan as _plan

plan = functools.partial(_plan, page_size=16, use_tensor_cores=True)
