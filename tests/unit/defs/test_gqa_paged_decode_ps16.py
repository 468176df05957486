"""gqa_paged_decode_h32_kv8_d128_ps16: page tables with partial last pages, the reference
against a naive per-token attention, and the solutions shared between page sizes."""
from __future__ import annotations

import math

import pytest
import torch

from fibuild.spec.calling import load_reference, solution_caller

import defs_support as ds

WS = ds.workspace()
DEFN = WS.definition("gqa_paged_decode_h32_kv8_d128_ps16")
NS = load_reference(DEFN)
MAKE_TABLE = NS[DEFN.custom_inputs_entrypoint]
RUN = NS["run"]
SCALE = 128 ** -0.5
PS = 16


@pytest.mark.parametrize("workload", DEFN.workloads, ids=lambda w: w.uuid)
def test_page_table_is_consistent_with_every_declared_workload(workload):
    axes = ds.workload_axes(DEFN, workload)
    table = MAKE_TABLE(axes, torch.device("cpu"), torch.Generator().manual_seed(0))
    indptr, indices, last = table["kv_indptr"], table["kv_indices"], table["kv_last_page_len"]
    assert indptr.dtype == indices.dtype == last.dtype == torch.int32
    assert tuple(indptr.shape) == (axes["len_indptr"],) and tuple(last.shape) == (axes["batch_size"],)
    assert int(indptr[-1]) == axes["num_kv_indices"] == indices.numel()
    assert int((indptr[1:] - indptr[:-1]).min()) >= 1
    assert int(last.min()) >= 1 and int(last.max()) <= PS
    assert indices.unique().numel() == indices.numel() and int(indices.max()) < axes["num_pages"]


def _naive(q, k_cache, v_cache, indptr, indices, last, sm_scale):
    """Per sequence and head, token by token (page, slot), in float64."""
    batch, heads, dim = q.shape
    out = torch.zeros(batch, heads, dim, dtype=torch.float64)
    lse = torch.full((batch, heads), -math.inf, dtype=torch.float64)
    for b in range(batch):
        pages = [int(p) for p in indices[int(indptr[b]):int(indptr[b + 1])]]
        tokens = [(p, s) for i, p in enumerate(pages) for s in range(PS if i < len(pages) - 1 else int(last[b]))]
        if not tokens:
            continue
        for h in range(heads):
            kv = h // 4
            k = torch.stack([k_cache[p, s, kv].double() for p, s in tokens])
            v = torch.stack([v_cache[p, s, kv].double() for p, s in tokens])
            logits = (k @ q[b, h].double()) * sm_scale
            e = torch.exp(logits - logits.max())
            out[b, h] = (e[:, None] * v).sum(0) / e.sum()
            lse[b, h] = math.log2(float(torch.exp(logits).sum()))
    return out, lse


def random_case(pages_per_seq, last, num_pages, seed):
    gen = torch.Generator().manual_seed(seed)
    batch = len(pages_per_seq)
    q = torch.randn(batch, 32, 128, generator=gen).bfloat16()
    k = torch.randn(num_pages, PS, 8, 128, generator=gen).bfloat16()
    v = torch.randn(num_pages, PS, 8, 128, generator=gen).bfloat16()
    indptr = torch.tensor([0] + list(torch.tensor(pages_per_seq).cumsum(0)), dtype=torch.int32)
    indices = torch.randperm(num_pages, generator=gen)[: sum(pages_per_seq)].to(torch.int32)
    return [q, k, v, indptr, indices, torch.tensor(last, dtype=torch.int32), SCALE]


def test_reference_agrees_with_naive_attention_on_partial_and_empty_sequences():
    args = random_case([3, 0, 2, 1], [5, 16, 16, 1], num_pages=12, seed=3)
    output, lse = RUN(*args)
    want_out, want_lse = _naive(*args)
    assert torch.allclose(output.double(), want_out, atol=1e-2, rtol=1e-2)
    assert torch.equal(output[1], torch.zeros_like(output[1])) and bool(torch.isneginf(lse[1]).all())
    finite = torch.isfinite(want_lse)
    assert torch.allclose(lse.double()[finite], want_lse[finite], atol=1e-4, rtol=1e-5)
    # the last page's unused slots are not read: changing them changes nothing
    args[1][int(args[4][2]), 5:] = 100.0
    again, _ = RUN(*args)
    assert torch.equal(again, output)


def test_reference_agrees_with_naive_attention_on_the_smallest_workload():
    args = ds.make_inputs(DEFN, DEFN.workloads[0], seed=2)
    output, lse = RUN(*args)
    want_out, want_lse = _naive(*args)
    assert torch.allclose(output.double(), want_out, atol=1e-2, rtol=1e-2)
    assert torch.allclose(lse.double(), want_lse, atol=1e-4, rtol=1e-5)


def test_reference_rejects_a_last_page_length_out_of_range():
    args = random_case([2, 1], [0, 3], num_pages=4, seed=1)
    with pytest.raises(ValueError, match="kv_last_page_len"):
        RUN(*args)


def test_torch_padded_solution_handles_partial_and_empty_sequences():
    sol = WS.solution("gqa_paged_decode_h32_kv8_d128_ps16/torch_padded")
    call = solution_caller(DEFN, sol, ds.load_entry(sol))
    args = random_case([2, 0, 5, 1], [9, 16, 1, 16], num_pages=10, seed=4)
    expected = ds.reference_outputs(DEFN, args)
    got = list(call(*ds.clone(args)))
    assert ds.mismatches(DEFN, got, expected) == []
