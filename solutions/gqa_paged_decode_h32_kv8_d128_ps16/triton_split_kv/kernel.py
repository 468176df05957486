"""Split-KV paged decode in Triton for pages of 16 token(s), partials merged by the last chunk of a sequence to finish
(the kernel, shared by every page size and merge, is split_kv.py)."""
import functools

from .split_kv import gqa_paged_decode  # noqa: F401 (the entry point)
from .split_kv import plan as _plan

plan = functools.partial(_plan, page_size=16, merge="fused")
