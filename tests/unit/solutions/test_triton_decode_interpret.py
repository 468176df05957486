"""The Triton split-KV decode solutions run under TRITON_INTERPRET=1 on CPU and match the
reference: no split and split (partials merged by the last program of a sequence, or by a
second launch), empty and partial last pages; a plan made
once and reused gives what a fresh plan gives; a changed page table gets a new plan.

The cases run in one fresh interpreter under TRITON_INTERPRET=1 (``interpreted_run``).
"""
from __future__ import annotations

import json

import pytest
from interpreted_run import DEFS_SUPPORT, run_interpreted

CHILD = r"""
import json, sys
import torch
sys.path.insert(0, sys.argv[1])
import defs_support as ds
from fibuild.spec.calling import load_reference, solution_caller

ws = ds.workspace()
reports = []
for page_size, pages, pool, _split in json.loads(sys.argv[2]):
    defn = ws.definition(f"gqa_paged_decode_h32_kv8_d128_ps{page_size}")
    sol = ws.solution(f"{defn.name}/triton_split_kv")
    reference = load_reference(defn)["run"]
    g = torch.Generator().manual_seed(len(pages) * 31 + pool)
    batch = len(pages)
    q = torch.randn(batch, 32, 128, generator=g).bfloat16()
    k = torch.randn(pool, page_size, 8, 128, generator=g).bfloat16()
    v = torch.randn(pool, page_size, 8, 128, generator=g).bfloat16()
    indptr = torch.tensor([0] + torch.tensor(pages).cumsum(0).tolist(), dtype=torch.int32)
    indices = torch.randperm(pool, generator=g)[: sum(pages)].to(torch.int32)
    last = [torch.randint(1, page_size + 1, (batch,), generator=g).to(torch.int32)] if page_size > 1 else []
    args = [q, k, v, indptr, indices, *last, 128 ** -0.5]

    entry = ds.load_entry(sol)  # a PlannedEntry, as fibuild loads it
    call = solution_caller(defn, sol, entry)
    first = call(*args)
    again = call(*args)
    fresh = solution_caller(defn, sol, ds.load_entry(sol))(*args)
    plan = entry.plan_for(args)
    report = {"split": plan.split, "items": plan.num_items, "plans_after_reuse": entry.plans_made,
              "mismatches": ds.mismatches(defn, list(first), list(reference(*ds.clone(args)))),
              "reused_equals_fresh": all(torch.equal(a, b) for a, b in zip(again, fresh))}
    # The other merge: a second launch instead of the last program of each sequence.
    separate = entry.plan.func.__globals__["make_plan"](indptr, *last, page_size=page_size, fused=False)
    report["mismatches_separate_merge"] = ds.mismatches(defn, list(entry.run(separate, *args)),
                                                        list(reference(*ds.clone(args))))
    indices.copy_(indices.flip(0))  # the page table changes in place
    changed = call(*args)
    report["plans_after_change"] = entry.plans_made
    report["mismatches_after_change"] = ds.mismatches(defn, list(changed), list(reference(*ds.clone(args))))
    reports.append(report)
print(json.dumps(reports))
"""

CASES = [  # page size, pages per sequence, pool pages, split expected
    (1, [3, 0, 40, 1], 64, False),
    (1, [200, 3], 210, True),
    (16, [3, 0, 5, 1], 12, False),
    (16, [20, 1], 24, True),
]


@pytest.fixture(scope="module")
def reports():
    """One interpreter process checks every case (starting one costs more than a case)."""
    pytest.importorskip("triton")
    return run_interpreted(CHILD, DEFS_SUPPORT, json.dumps(CASES))


@pytest.mark.parametrize("index", range(len(CASES)),
                         ids=[f"ps{c[0]}-{'split' if c[3] else 'direct'}" for c in CASES])
def test_triton_decode_matches_reference_under_the_interpreter(index, reports):
    _, pages, _, split = CASES[index]
    report = reports[index]
    assert report["split"] is split and (report["items"] > len(pages)) is split
    assert report["mismatches"] == [] and report["mismatches_separate_merge"] == []
    assert report["plans_after_reuse"] == 1 and report["reused_equals_fresh"]
    assert report["plans_after_change"] == 2 and report["mismatches_after_change"] == []
