"""Op templates of grouped-query attention: paged decode, paged causal prefill, ragged causal prefill.

Layouts follow FlashInfer's NHD paged cache (``[num_pages, page_size, num_kv_heads,
head_dim]``) and the flashinfer-trace definitions: query head ``h`` reads KV head
``h // (num_qo_heads // num_kv_heads)``; ``lse`` is the base-2 log-sum-exp of the scaled
logits. A page size of 1 has no ``kv_last_page_len`` input (every page is full), as in the
dataset; larger pages take it. Index tensors and ``sm_scale`` are ``structural`` (what a
plan/run solution plans from). Each template also ships ``make_inputs``, the custom-inputs
entry point that draws consistent page tables for declared workloads.
"""
from __future__ import annotations

from typing import Any

# One reference for the three layouts: per sequence, gather its KV tokens, then attend with
# an optional causal mask aligned at the end of the KV sequence (FlashInfer's convention).
_REFERENCE = '''import math

import torch

NUM_QO_HEADS = {h}
NUM_KV_HEADS = {kv}
HEAD_DIM = {d}
PAGE_SIZE = {ps}
GROUP = NUM_QO_HEADS // NUM_KV_HEADS
CAUSAL = {causal}


def _attend(q, k, v, sm_scale):
    """q [lq, H, D], k/v [n, KV, D] (fp32) -> output [lq, H, D], base-2 lse [lq, H]."""
    lq, n = q.shape[0], k.shape[0]
    qg = q.view(lq, NUM_KV_HEADS, GROUP, HEAD_DIM)
    logits = torch.einsum("qhgd,thd->qhgt", qg, k) * sm_scale
    if CAUSAL:
        pos = torch.arange(lq, device=q.device).view(lq, 1, 1, 1) + (n - lq)
        logits = logits.masked_fill(torch.arange(n, device=q.device).view(1, 1, 1, n) > pos, -math.inf)
    lse = torch.logsumexp(logits, dim=-1) / math.log(2.0)
    out = torch.einsum("qhgt,thd->qhgd", torch.softmax(logits, dim=-1), v)
    return out.reshape(lq, NUM_QO_HEADS, HEAD_DIM), lse.reshape(lq, NUM_QO_HEADS)


def _paged_tokens(cache, kv_indices, start, end, last_len):
    pages = kv_indices[start:end].long()
    tokens = cache[pages].reshape(-1, NUM_KV_HEADS, HEAD_DIM)
    n = (end - start - 1) * PAGE_SIZE + last_len if end > start else 0
    return tokens[:n].to(torch.float32)


@torch.no_grad()
def run({signature}):
    {body}
'''

_DECODE_BODY = '''batch_size = q.shape[0]
    bounds = kv_indptr.tolist()
    if len(bounds) != batch_size + 1 or bounds[-1] != kv_indices.shape[0]:
        raise ValueError("kv_indptr must have batch_size + 1 entries ending at len(kv_indices)")
    last = {last}
    output = torch.zeros_like(q)
    lse = torch.full(q.shape[:2], -math.inf, dtype=torch.float32, device=q.device)
    for b in range(batch_size):
        if bounds[b] == bounds[b + 1]:
            continue
        k = _paged_tokens(k_cache, kv_indices, bounds[b], bounds[b + 1], last[b])
        v = _paged_tokens(v_cache, kv_indices, bounds[b], bounds[b + 1], last[b])
        o, s = _attend(q[b:b + 1].to(torch.float32), k, v, sm_scale)
        output[b], lse[b] = o[0].to(q.dtype), s[0]
    return output, lse'''

_PREFILL_BODY = '''qb, kb = qo_indptr.tolist(), kv_indptr.tolist()
    if len(qb) != len(kb) or qb[-1] != q.shape[0]:
        raise ValueError("qo_indptr and kv_indptr must have batch_size + 1 entries; qo_indptr[-1] == total_q")
    {last_line}
    output = torch.zeros_like(q)
    lse = torch.full(q.shape[:2], -math.inf, dtype=torch.float32, device=q.device)
    for b in range(len(qb) - 1):
        if qb[b] == qb[b + 1]:
            continue
        {gather}
        o, s = _attend(q[qb[b]:qb[b + 1]].to(torch.float32), kk, vv, sm_scale)
        output[qb[b]:qb[b + 1]], lse[qb[b]:qb[b + 1]] = o.to(q.dtype), s
    return output, lse'''

_MAKE_INPUTS = '''

def make_inputs(axes, device, generator=None):
    """Consistent index tensors for the axes: tokens split evenly over the sequences (the first
    ones get one more), pages drawn from a random permutation of the pool."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    out = {{}}
    {body}
    return {{k: v.to(device=device, dtype=torch.int32) for k, v in out.items()}}


def _split(total, parts):
    if parts < 1 or total < parts:
        raise ValueError(f"cannot split {{total}} over {{parts}} sequences with at least one each")
    base, extra = divmod(total, parts)
    lengths = torch.full((parts,), base, dtype=torch.int64)
    lengths[:extra] += 1
    indptr = torch.zeros(parts + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(lengths, 0)
    return indptr
'''

_MAKE_PAGES = '''batch = int(axes["len_indptr"]) - 1
    out["kv_indptr"] = _split(int(axes["num_kv_indices"]), batch)
    if int(axes["num_kv_indices"]) > int(axes["num_pages"]):
        raise ValueError("num_kv_indices must not exceed num_pages (pages are distinct)")
    pages = torch.randperm(int(axes["num_pages"]), generator=generator, device=gen_device)
    out["kv_indices"] = pages[:int(axes["num_kv_indices"])]
    if PAGE_SIZE > 1:
        out["kv_last_page_len"] = torch.full((batch,), PAGE_SIZE, dtype=torch.int64)'''

_MAKE_QO = '''
    out["qo_indptr"] = _split(int(axes["total_q"]), int(axes["len_indptr"]) - 1)'''

_MAKE_RAGGED = '''batch = int(axes["len_indptr"]) - 1
    out["qo_indptr"] = _split(int(axes["total_q"]), batch)
    out["kv_indptr"] = _split(int(axes["total_kv"]), batch)'''


def _heads(h: int, kv: int, d: int, ps: int | None) -> dict[str, Any]:
    axes = {"num_qo_heads": {"type": "const", "value": h},
            "num_kv_heads": {"type": "const", "value": kv},
            "head_dim": {"type": "const", "value": d}}
    if ps is not None:
        axes["num_pages"] = {"type": "var", "description": "Pages in the KV pool."}
        axes["page_size"] = {"type": "const", "value": ps}
    return axes


def _paged_io(dtype: str, ps: int, index_inputs: dict[str, Any]) -> dict[str, Any]:
    cache = {"shape": ["num_pages", "page_size", "num_kv_heads", "head_dim"], "dtype": dtype}
    inputs = {"k_cache": dict(cache), "v_cache": dict(cache), **index_inputs,
              "kv_indptr": {"shape": ["len_indptr"], "dtype": "int32", "structural": True},
              "kv_indices": {"shape": ["num_kv_indices"], "dtype": "int32", "structural": True}}
    if ps > 1:
        inputs["kv_last_page_len"] = {"shape": ["batch_size"], "dtype": "int32", "structural": True,
                                      "description": "Tokens in each sequence's last page (1..page_size)."}
    inputs["sm_scale"] = {"shape": None, "dtype": "float32", "structural": True, "description": "Softmax scale."}
    return inputs


def _outputs(rows: str, dtype: str) -> dict[str, Any]:
    return {"output": {"shape": [rows, "num_qo_heads", "head_dim"], "dtype": dtype},
            "lse": {"shape": [rows, "num_qo_heads"], "dtype": "float32",
                    "description": "Base-2 log-sum-exp of the scaled logits."}}


def _reference(h, kv, d, ps, causal, signature, body, make) -> str:
    return (_REFERENCE.format(h=h, kv=kv, d=d, ps=ps or 1, causal=causal, signature=signature, body=body)
            + _MAKE_INPUTS.format(body=make))


def _document(op_type, description, axes, inputs, rows, dtype, reference, constraints):
    return {"op_type": op_type, "description": description + " Made from a traced call.",
            "axes": axes, "constraints": constraints, "inputs": inputs, "outputs": _outputs(rows, dtype),
            "tolerance": {"atol": 1.0e-2, "rtol": 1.0e-2}, "custom_inputs_entrypoint": "make_inputs",
            "reference": reference}


def gqa_paged_decode(*, num_qo_heads: int, num_kv_heads: int, head_dim: int, page_size: int,
                     dtype: str) -> dict[str, Any]:
    """One query token per sequence over a paged KV cache (BatchDecodeWithPagedKVCacheWrapper)."""
    axes = {"batch_size": {"type": "var", "description": "Sequences (one query token each)."},
            **_heads(num_qo_heads, num_kv_heads, head_dim, page_size),
            "len_indptr": {"type": "var", "description": "batch_size + 1."},
            "num_kv_indices": {"type": "var", "description": "Pages in use by the batch."}}
    inputs = {"q": {"shape": ["batch_size", "num_qo_heads", "head_dim"], "dtype": dtype}}
    inputs.update(_paged_io(dtype, page_size, {}))
    last = "kv_last_page_len.tolist()" if page_size > 1 else "[1] * batch_size"
    sig = ", ".join(inputs)
    ref = _reference(num_qo_heads, num_kv_heads, head_dim, page_size, False, sig,
                     _DECODE_BODY.format(last=last), _MAKE_PAGES)
    return _document("gqa_paged", "Batched decode attention over a paged KV cache.", axes, inputs,
                     "batch_size", dtype, ref, ["len_indptr == batch_size + 1"])


def gqa_paged_prefill_causal(*, num_qo_heads: int, num_kv_heads: int, head_dim: int, page_size: int,
                             dtype: str) -> dict[str, Any]:
    """Causal prefill/append attention over a paged KV cache (BatchPrefillWithPagedKVCacheWrapper)."""
    axes = {"total_q": {"type": "var", "description": "Query tokens of the batch."},
            **_heads(num_qo_heads, num_kv_heads, head_dim, page_size),
            "len_indptr": {"type": "var", "description": "Sequences + 1."},
            "num_kv_indices": {"type": "var", "description": "Pages in use by the batch."}}
    constraints = []
    if page_size > 1:
        axes["batch_size"] = {"type": "var", "description": "Sequences."}
        constraints.append("len_indptr == batch_size + 1")
    inputs = {"q": {"shape": ["total_q", "num_qo_heads", "head_dim"], "dtype": dtype}}
    inputs.update(_paged_io(dtype, page_size, {"qo_indptr": {"shape": ["len_indptr"], "dtype": "int32",
                                                             "structural": True}}))
    last = ("last = kv_last_page_len.tolist()" if page_size > 1
            else "last = [1] * (len(qb) - 1)")
    gather = ("kk = _paged_tokens(k_cache, kv_indices, kb[b], kb[b + 1], last[b])\n"
              "        vv = _paged_tokens(v_cache, kv_indices, kb[b], kb[b + 1], last[b])")
    ref = _reference(num_qo_heads, num_kv_heads, head_dim, page_size, True, ", ".join(inputs),
                     _PREFILL_BODY.format(last_line=last, gather=gather), _MAKE_PAGES + _MAKE_QO)
    return _document("gqa_paged", "Causal prefill attention over a paged KV cache.", axes, inputs,
                     "total_q", dtype, ref, constraints)


def gqa_ragged_prefill_causal(*, num_qo_heads: int, num_kv_heads: int, head_dim: int,
                              dtype: str) -> dict[str, Any]:
    """Causal prefill attention over ragged K/V (BatchPrefillWithRaggedKVCacheWrapper)."""
    axes = {"total_q": {"type": "var", "description": "Query tokens of the batch."},
            "total_kv": {"type": "var", "description": "Key/value tokens of the batch."},
            **_heads(num_qo_heads, num_kv_heads, head_dim, None),
            "len_indptr": {"type": "var", "description": "Sequences + 1."}}
    kv = {"shape": ["total_kv", "num_kv_heads", "head_dim"], "dtype": dtype}
    inputs = {"q": {"shape": ["total_q", "num_qo_heads", "head_dim"], "dtype": dtype},
              "k": dict(kv), "v": dict(kv),
              "qo_indptr": {"shape": ["len_indptr"], "dtype": "int32", "structural": True},
              "kv_indptr": {"shape": ["len_indptr"], "dtype": "int32", "structural": True},
              "sm_scale": {"shape": None, "dtype": "float32", "structural": True, "description": "Softmax scale."}}
    gather = ("kk = k[kb[b]:kb[b + 1]].to(torch.float32)\n"
              "        vv = v[kb[b]:kb[b + 1]].to(torch.float32)")
    body = _PREFILL_BODY.format(last_line="pass", gather=gather)
    ref = _reference(num_qo_heads, num_kv_heads, head_dim, None, True, ", ".join(inputs), body, _MAKE_RAGGED)
    return _document("gqa_ragged", "Causal prefill attention over ragged keys and values.", axes, inputs,
                     "total_q", dtype, ref, [])
