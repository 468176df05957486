"""``DecodePlan.refill`` of the Triton split-KV decode solutions, under TRITON_INTERPRET=1:
a plan made for one page table and refilled in place for others (longer, shorter, empty
sequences) keeps its launch (items, split, buffers) and the run, launched as a captured
CUDA graph would (the same index buffers, rewritten in place), matches the reference for the
new table; another batch size is declined with nothing written.

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
from fibuild.spec.calling import load_reference

ws = ds.workspace()
reports = []
for page_size, solution, pages_a, tables, pool in json.loads(sys.argv[2]):
    defn = ws.definition(f"gqa_paged_decode_h32_kv8_d128_ps{page_size}")
    entry = ds.load_entry(ws.solution(f"{defn.name}/{solution}"))
    reference = load_reference(defn)["run"]
    g = torch.Generator().manual_seed(pool + len(tables))
    batch = len(pages_a)
    q = torch.randn(batch, 32, 128, generator=g).bfloat16()
    k = torch.randn(pool, page_size, 8, 128, generator=g).bfloat16()
    v = torch.randn(pool, page_size, 8, 128, generator=g).bfloat16()
    # Fixed index buffers rewritten in place for each step, as a serving engine keeps them.
    indptr = torch.zeros(batch + 1, dtype=torch.int32)
    indices = torch.zeros(pool, dtype=torch.int32)
    last = torch.zeros(batch, dtype=torch.int32)

    def fill(pages):
        indptr.copy_(torch.tensor([0] + torch.tensor(pages).cumsum(0).tolist()))
        n = sum(pages)
        indices[:n].copy_(torch.randperm(pool, generator=g)[:n])
        last.copy_(torch.randint(1, page_size + 1, (batch,), generator=g))
        return [indptr, indices[:n], *([last] if page_size > 1 else []), 128 ** -0.5]

    plan = entry.plan(*fill(pages_a))
    launch = lambda p: [p.num_items, p.split, p.fused, p.packed.data_ptr(), list(p.partial_out.shape),
                        p.counters.data_ptr(), p.block_n]
    before = launch(plan)
    report = {"items": plan.num_items, "split": plan.split, "cases": []}
    for pages in tables:
        structural = fill(pages)
        ok = plan.refill(*structural)
        # The run as captured: the whole index buffer (its address is what a launch holds).
        got = entry.run(plan, q, k, v, indptr, indices, *structural[2:])
        want = reference(*ds.clone([q, k, v, *structural]))
        counts = plan.seq_items[:, 1].tolist()
        report["cases"].append({"refilled": ok, "same_launch": launch(plan) == before, "counts": counts,
                                "mismatches": ds.mismatches(defn, list(got), list(want)),
                                "nan": bool(torch.isnan(got[0].float()).any() or torch.isnan(got[1]).any())})
    packed = plan.packed.clone()
    fewer = [indptr[:batch], indices[:0], *([last[:batch - 1]] if page_size > 1 else []), 128 ** -0.5]
    report["other_batch"] = [plan.refill(*fewer), torch.equal(packed, plan.packed)]
    reports.append(report)
print(json.dumps(reports))
"""

CASES = [  # page size, solution, pages per sequence planned, pages per sequence refilled, pool pages
    (1, "triton_split_kv", [200, 3], [[3, 250], [0, 0], [1, 0], [260, 260]], 600),
    (1, "triton_split_kv[MERGE=separate,WAVES=4,CHUNK=128,BLOCK_N=64,STAGES=3]", [200, 3], [[0, 130], [5, 0]], 400),
    (1, "triton_split_kv", [3, 0, 40, 1], [[10, 5, 0, 2], [0, 0, 0, 0]], 64),
    (16, "triton_split_kv", [20, 1], [[1, 24], [0, 3]], 48),
    (16, "triton_split_kv[MERGE=separate,WAVES=4,CHUNK=128,BLOCK_N=64,STAGES=3]", [20, 1], [[0, 0], [2, 2]], 48),
]


@pytest.fixture(scope="module")
def reports():
    """One interpreter process checks every case (starting one costs more than a case)."""
    pytest.importorskip("triton")
    return run_interpreted(CHILD, DEFS_SUPPORT, json.dumps(CASES))


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"ps{c[0]}-{c[1]}-{len(c[2])}seq" for c in CASES])
def test_refilled_plan_keeps_its_launch_and_matches_the_reference(index, reports):
    _, _, pages_a, tables, _ = CASES[index]
    report = reports[index]
    assert report["split"] is (report["items"] > len(pages_a))
    for pages, case in zip(tables, report["cases"]):
        assert case["refilled"] and case["same_launch"], pages
        assert case["mismatches"] == [] and not case["nan"], (pages, case["mismatches"])
        assert sum(case["counts"]) == report["items"] and min(case["counts"]) >= 1, pages


def test_refill_deals_items_by_the_new_lengths(reports):
    split = reports[0]
    assert split["split"] and split["items"] == 3
    counts = [case["counts"] for case in split["cases"]]
    assert counts[0] == [1, 2]   # the longer sequence moved: it gets the spare item
    assert counts[3] in ([2, 1], [1, 2])   # equal lengths: one spare, either way
    direct = reports[2]
    assert not direct["split"] and all(case["counts"] == [1, 1, 1, 1] for case in direct["cases"])


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"ps{c[0]}-{c[1]}" for c in CASES])
def test_refill_declines_another_batch_size_and_writes_nothing(index, reports):
    assert reports[index]["other_batch"] == [False, True]
