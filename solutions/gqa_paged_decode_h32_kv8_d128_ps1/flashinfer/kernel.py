"""FlashInfer baseline: BatchDecodeWithPagedKVCacheWrapper plan + run with return_lse.

One wrapper and its 128 MiB workspace buffer per device, made on first use and reused;
every call plans for its own page table (plan copies kv_indptr to the host once), then
runs. CUDA tensors only.
"""
import torch

NUM_QO_HEADS = 32
NUM_KV_HEADS = 8
HEAD_DIM = 128
PAGE_SIZE = 1
WORKSPACE_BYTES = 128 * 1024 * 1024

_wrappers = {}  # torch.device -> BatchDecodeWithPagedKVCacheWrapper


def _flashinfer():
    try:
        import flashinfer
    except ImportError as exc:
        raise ModuleNotFoundError(
            "this baseline needs the flashinfer-python package: pip install 'fibuild[flashinfer]'"
        ) from exc
    return flashinfer


def _wrapper(device: torch.device):
    wrapper = _wrappers.get(device)
    if wrapper is None:
        flashinfer = _flashinfer()
        workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        wrapper = flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper(workspace, kv_layout="NHD")
        _wrappers[device] = wrapper
    return wrapper


@torch.no_grad()
def gqa_paged_decode(q, k_cache, v_cache, kv_indptr, kv_indices, sm_scale):
    wrapper = _wrapper(q.device)
    # Page size 1: every page is full, so each sequence's last page holds one token.
    last_page_len = torch.ones(q.shape[0], dtype=torch.int32, device=q.device)
    wrapper.plan(
        kv_indptr, kv_indices, last_page_len,
        NUM_QO_HEADS, NUM_KV_HEADS, HEAD_DIM, PAGE_SIZE,
        pos_encoding_mode="NONE",
        q_data_type=q.dtype,
        kv_data_type=k_cache.dtype,
        sm_scale=float(sm_scale),
    )
    output, lse = wrapper.run(q, (k_cache, v_cache), return_lse=True)
    return output, lse
