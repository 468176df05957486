"""Paged GQA decode in plain torch: the batch padded to its longest sequence, no Python loop.

Gathers every sequence's tokens into a [batch, max_len, kv_heads, head_dim] block, masks
the padding, and runs one batched softmax. Any page size (``k_cache.shape[1]``); with
``kv_last_page_len`` given (the page-size-16 definition) a last page holds that many
tokens, else every page is full. Memory is O(batch * max_len); one host sync reads
max_len. This file is the same in every page-size variant.
"""
import math

import torch

NUM_QO_HEADS = 32
NUM_KV_HEADS = 8
HEAD_DIM = 128
GROUP = NUM_QO_HEADS // NUM_KV_HEADS


@torch.no_grad()
def gqa_paged_decode(q, k_cache, v_cache, kv_indptr, kv_indices, *rest):
    *last_page_len, sm_scale = rest
    batch_size = q.shape[0]
    device = q.device
    page_size = k_cache.shape[1]
    indptr = kv_indptr.to(torch.int64)
    pages = indptr[1:] - indptr[:-1]  # [batch]
    lengths = pages * page_size
    if last_page_len:
        lengths = torch.where(pages > 0, lengths - page_size + last_page_len[0].to(torch.int64), lengths)
    max_len = int(lengths.max()) if batch_size else 0
    if max_len == 0:
        output = torch.zeros((batch_size, NUM_QO_HEADS, HEAD_DIM), dtype=q.dtype, device=device)
        lse = torch.full((batch_size, NUM_QO_HEADS), -math.inf, dtype=torch.float32, device=device)
        return output, lse
    pos = torch.arange(max_len, device=device)
    valid = pos[None, :] < lengths[:, None]  # [batch, max_len]
    # Index of each (sequence, position) into kv_indices; padding points at entry 0 and is masked.
    flat = torch.where(valid, indptr[:-1, None] + pos[None, :] // page_size, torch.zeros_like(pos)[None, :])
    page = kv_indices.to(torch.int64)[flat] if kv_indices.numel() else torch.zeros_like(flat)
    slot = (pos % page_size)[None, :].expand_as(page)
    k = k_cache[page, slot].float()  # [batch, max_len, kv_heads, head_dim]
    v = v_cache[page, slot].float()
    qg = q.float().view(batch_size, NUM_KV_HEADS, GROUP, HEAD_DIM)
    logits = torch.einsum("bhgd,blhd->bhgl", qg, k) * float(sm_scale)
    logits = logits.masked_fill(~valid[:, None, None, :], -math.inf)
    lse = torch.logsumexp(logits, dim=-1)  # [batch, kv_heads, group]; -inf for empty rows
    probs = torch.exp(logits - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)[..., None])
    output = torch.einsum("bhgl,blhd->bhgd", probs, v)
    output = output.reshape(batch_size, NUM_QO_HEADS, HEAD_DIM).to(q.dtype)
    return output, (lse / math.log(2.0)).reshape(batch_size, NUM_QO_HEADS)
