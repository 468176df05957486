"""gqa_paged_decode_h32_kv8_d128_ps1: page tables from the custom entrypoint, and the
reference against a naive attention computed independently (with a base-2 lse)."""
from __future__ import annotations

import math

import pytest
import torch

from fibuild.spec.calling import load_reference, solution_caller

import defs_support as ds

WS = ds.workspace()
DEFN = WS.definition("gqa_paged_decode_h32_kv8_d128_ps1")
NS = load_reference(DEFN)
MAKE_TABLE = NS[DEFN.custom_inputs_entrypoint]
RUN = NS["run"]
SCALE = 128 ** -0.5


@pytest.mark.parametrize("workload", DEFN.workloads, ids=lambda w: w.uuid)
def test_page_table_is_consistent_with_every_declared_workload(workload):
    axes = ds.workload_axes(DEFN, workload)
    table = MAKE_TABLE(axes, torch.device("cpu"))
    indptr, indices = table["kv_indptr"], table["kv_indices"]
    assert indptr.dtype == indices.dtype == torch.int32
    assert tuple(indptr.shape) == (axes["len_indptr"],)
    assert tuple(indices.shape) == (axes["num_kv_indices"],)
    lengths = indptr[1:] - indptr[:-1]
    assert int(indptr[0]) == 0 and int(indptr[-1]) == axes["num_kv_indices"]
    assert int(lengths.min()) >= 1 and int(lengths.max()) - int(lengths.min()) <= 1
    assert int(indices.min()) >= 0 and int(indices.max()) < axes["num_pages"]
    assert indices.unique().numel() == indices.numel(), "a page belongs to one sequence"


def test_page_table_follows_the_generator():
    axes = {"batch_size": 4, "num_pages": 512, "len_indptr": 5, "num_kv_indices": 402}
    first = MAKE_TABLE(axes, "cpu", torch.Generator().manual_seed(1))["kv_indices"]
    again = MAKE_TABLE(axes, "cpu", torch.Generator().manual_seed(1))["kv_indices"]
    other = MAKE_TABLE(axes, "cpu", torch.Generator().manual_seed(2))["kv_indices"]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first.sort().values, first), "pages are scattered, not in order"


@pytest.mark.parametrize("axes, word", [
    ({"batch_size": 4, "num_pages": 512, "len_indptr": 4, "num_kv_indices": 402}, "len_indptr"),
    ({"batch_size": 4, "num_pages": 100, "len_indptr": 5, "num_kv_indices": 402}, "num_pages"),
    ({"batch_size": 4, "num_pages": 512, "len_indptr": 5, "num_kv_indices": 3}, "batch_size"),
])
def test_page_table_rejects_inconsistent_axes(axes, word):
    with pytest.raises(ValueError, match=word):
        MAKE_TABLE(axes, "cpu")


def _naive(q, k_cache, v_cache, indptr, indices, sm_scale):
    """Per sequence, per query head, in float64, with explicit exp/sum: no shared code."""
    batch, heads, dim = q.shape
    kv_heads = k_cache.shape[2]
    out = torch.zeros(batch, heads, dim, dtype=torch.float64)
    lse = torch.full((batch, heads), -math.inf, dtype=torch.float64)
    for b in range(batch):
        pages = [int(p) for p in indices[int(indptr[b]):int(indptr[b + 1])]]
        if not pages:
            continue
        for h in range(heads):
            kv = h // (heads // kv_heads)
            k = torch.stack([k_cache[p, 0, kv].double() for p in pages])  # [T, dim]
            v = torch.stack([v_cache[p, 0, kv].double() for p in pages])
            s = (k @ q[b, h].double()) * sm_scale
            e = torch.exp(s - s.max())
            out[b, h] = (e[:, None] * v).sum(0) / e.sum()
            lse[b, h] = math.log2(float(torch.exp(s).sum()))
    return out, lse


def _random_case(lengths, num_pages, seed):
    gen = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    q = torch.randn(batch, 32, 128, generator=gen).bfloat16()
    k = torch.randn(num_pages, 1, 8, 128, generator=gen).bfloat16()
    v = torch.randn(num_pages, 1, 8, 128, generator=gen).bfloat16()
    indptr = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    indices = torch.randperm(num_pages, generator=gen)[: sum(lengths)].to(torch.int32)
    return [q, k, v, indptr, indices, SCALE]


@pytest.mark.parametrize("workload", ds.smallest_workloads(DEFN), ids=lambda w: w.uuid)
def test_reference_agrees_with_naive_attention_on_declared_workloads(workload):
    args = ds.make_inputs(DEFN, workload, seed=2)
    output, lse = RUN(*args)
    want_out, want_lse = _naive(*args)
    assert torch.allclose(output.double(), want_out, atol=1e-2, rtol=1e-2)
    # output is the bf16 rounding of the exact result: within one bf16 ulp
    assert float((output.double() - want_out).abs().max()) <= 2 ** -8 * float(want_out.abs().max())
    assert torch.allclose(lse.double(), want_lse, atol=1e-4, rtol=1e-5)


def test_lse_is_base_2_and_empty_sequences_give_zero_rows():
    args = _random_case([3, 0, 17, 1], num_pages=40, seed=9)
    output, lse = RUN(*args)
    want_out, want_lse = _naive(*args)
    assert torch.allclose(output.double(), want_out, atol=1e-2, rtol=1e-2)
    assert torch.equal(output[1], torch.zeros_like(output[1]))
    assert bool(torch.isneginf(lse[1]).all())
    finite = torch.isfinite(want_lse)
    assert torch.allclose(lse.double()[finite], want_lse[finite], atol=1e-4, rtol=1e-5)
    # base 2, not e: 2**lse is the sum of exp of the scaled logits of a one-token sequence
    q, k = args[0], args[1]
    one_token = float((k[int(args[4][20]), 0, 0].double() @ q[3, 0].double()) * SCALE)
    assert 2 ** float(lse[3, 0]) == pytest.approx(math.exp(one_token), rel=1e-5)


def test_reference_rejects_a_table_inconsistent_with_the_batch():
    q, k, v, indptr, indices, scale = _random_case([2, 2], num_pages=8, seed=1)
    with pytest.raises(ValueError, match="batch_size"):
        RUN(q, k, v, indptr[:-1], indices, scale)
    with pytest.raises(ValueError, match="kv_indices"):
        RUN(q, k, v, indptr, indices[:-1], scale)


def test_torch_padded_solution_handles_uneven_and_empty_sequences():
    sol = WS.solution("gqa_paged_decode_h32_kv8_d128_ps1/torch_padded")
    call = solution_caller(DEFN, sol, ds.load_entry(sol))
    args = _random_case([5, 0, 33, 1, 12], num_pages=64, seed=4)
    expected = ds.reference_outputs(DEFN, args)
    got = list(call(*ds.clone(args)))
    assert ds.mismatches(DEFN, got, expected) == []
    assert bool(torch.isneginf(got[1][1]).all())
