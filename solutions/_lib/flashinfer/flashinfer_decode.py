"""FlashInfer baseline as a plan/run solution: BatchDecodeWithPagedKVCacheWrapper (NHD layout).

``plan`` takes the structural inputs (``kv_indptr, kv_indices[, kv_last_page_len], sm_scale``;
without ``kv_last_page_len`` every last page is full), makes a wrapper and calls its
``plan`` (which copies the page table's indptr to the host); ``gqa_paged_decode`` runs the
planned wrapper with ``return_lse=True`` (base-2 lse), launch-only and CUDA-graph
capturable. Wrappers of one device share one float workspace (scratch that runs on one
stream use in turn); each keeps its own small int workspace holding its plan.
A solution binds ``plan``'s ``page_size`` (its definition's) and ``use_tensor_cores``
(FlashInfer's tensor-core, prefill-kernel, decode path). CUDA tensors only.
"""
import torch

from .flashinfer_ops import flashinfer_module

NUM_QO_HEADS = 32
NUM_KV_HEADS = 8
HEAD_DIM = 128
WORKSPACE_BYTES = 128 * 1024 * 1024

_workspaces = {}  # torch.device -> float workspace shared by this module's wrappers


def plan(kv_indptr, kv_indices, *rest, page_size, use_tensor_cores):
    *last, sm_scale = rest
    flashinfer = flashinfer_module()
    device = kv_indptr.device
    workspace = _workspaces.get(device)
    if workspace is None:
        workspace = _workspaces[device] = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
    batch_size = kv_indptr.shape[0] - 1
    last_page_len = last[0] if last else torch.full((batch_size,), page_size, dtype=torch.int32, device=device)
    wrapper = flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper(
        workspace, kv_layout="NHD", use_tensor_cores=use_tensor_cores)
    wrapper.plan(kv_indptr, kv_indices, last_page_len, NUM_QO_HEADS, NUM_KV_HEADS, HEAD_DIM, page_size,
                 pos_encoding_mode="NONE", q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16,
                 sm_scale=float(sm_scale))
    return wrapper


def gqa_paged_decode(wrapper, q, k_cache, v_cache, *_structural):
    output, lse = wrapper.run(q, (k_cache, v_cache), return_lse=True)
    return output, lse
