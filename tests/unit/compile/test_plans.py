"""Plan/run solutions: plans made once per structural input and reused, new ones when the
structure changes; loading, validation, the bench's plan time and the dispatcher's reuse."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fibuild.compile.cache import BuildCache, load_committed
from fibuild.compile.plans import PLAN_SLOTS, PlannedEntry
from fibuild.config import Settings
from fibuild.errors import BuildError, ManifestError
from fibuild.spec.calling import load_reference
from fibuild.spec.manifest import load_solution
from fibuild.spec.workspace import Workspace

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "manifests" / "workspaces" / "plan_run"


@pytest.fixture
def ws_root(tmp_path) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(FIXTURE, root)
    return root


def _inputs(batch=4, total=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    cuts = torch.randperm(total - 1, generator=g)[:batch - 1].sort().values + 1
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), cuts, torch.tensor([total])]).int()
    return [torch.randn(total, generator=g), indptr, 0.5, torch.randn(batch, generator=g)]


def _loaded(ws_root: Path, settings_env):
    ws = Workspace(ws_root)
    defn = ws.definition("segment_sum")
    sol = ws.solution("planned", definition="segment_sum")
    return defn, BuildCache(Settings.from_env()).get_or_build(defn, sol)


# -- the entry ---------------------------------------------------------------------------
class _Counting:
    """A plan and run pair that records what each call saw."""

    def __init__(self):
        self.planned = []

    def plan(self, indptr, scale):
        self.planned.append(indptr.tolist())
        return (indptr.tolist(), scale)

    def run(self, plan, values, indptr, scale, bias):
        bounds, s = plan
        return torch.stack([values[a:b].sum() for a, b in zip(bounds, bounds[1:])]) * s + bias


def test_plan_is_made_once_and_reused_while_the_structure_is_unchanged():
    calls = _Counting()
    entry = PlannedEntry(calls.run, calls.plan, [1, 2])
    args = _inputs()
    first = entry(*args)
    for _ in range(3):
        again = entry(*args)
    assert entry.plans_made == 1 and len(calls.planned) == 1
    assert torch.equal(first, again)
    # A fresh entry (a fresh plan) computes the same thing.
    fresh = PlannedEntry(calls.run, calls.plan, [1, 2])(*args)
    assert torch.equal(fresh, again)


def test_contents_written_in_place_make_a_new_plan():
    calls = _Counting()
    entry = PlannedEntry(calls.run, calls.plan, [1, 2])
    values, indptr, scale, bias = _inputs(batch=3, total=12)
    before = entry(values, indptr, scale, bias)
    indptr[1:-1] = torch.tensor([1, 2], dtype=torch.int32)  # same tensor, new contents: _version bumps
    after = entry(values, indptr, scale, bias)
    assert entry.plans_made == 2
    want = torch.stack([values[0:1].sum(), values[1:2].sum(), values[2:12].sum()]) * scale + bias
    assert torch.allclose(after, want) and not torch.allclose(before, after)


def test_a_new_tensor_or_scalar_value_makes_a_new_plan_and_the_old_plans_stay():
    calls = _Counting()
    entry = PlannedEntry(calls.run, calls.plan, [1, 2])
    values, indptr, scale, bias = _inputs()
    entry(values, indptr, scale, bias)
    copy = indptr.clone()  # equal contents, another tensor: planned again (identity is the key)
    entry(values, copy, scale, bias)
    entry(values, indptr, 0.25, bias)
    assert entry.plans_made == 3
    entry(values, indptr, scale, bias)
    entry(values, copy, scale, bias)
    assert entry.plans_made == 3, "rotating among kept plans makes no new plan"


def test_only_the_last_slots_are_kept():
    calls = _Counting()
    entry = PlannedEntry(calls.run, calls.plan, [1, 2])
    values, indptr, scale, bias = _inputs()
    tables = [indptr.clone() for _ in range(PLAN_SLOTS + 1)]
    for t in tables:
        entry(values, t, scale, bias)
    assert entry.plans_made == PLAN_SLOTS + 1
    entry(values, tables[-1], scale, bias)
    assert entry.plans_made == PLAN_SLOTS + 1
    entry(values, tables[0], scale, bias)  # the oldest was dropped
    assert entry.plans_made == PLAN_SLOTS + 2


def test_a_dead_tensor_never_lends_its_plan_to_a_new_one():
    calls = _Counting()
    entry = PlannedEntry(calls.run, calls.plan, [1, 2])
    values, _, scale, bias = _inputs(batch=2, total=10)
    for split in range(1, 9):
        # Each table dies before the next is made, so ids are likely reused; plans never are.
        out = entry(values, torch.tensor([0, split, 10], dtype=torch.int32), scale, bias)
        want = torch.stack([values[:split].sum(), values[split:].sum()]) * scale + bias
        assert torch.allclose(out, want)


def test_inference_tensors_plan_afresh_every_call():
    calls = _Counting()
    entry = PlannedEntry(calls.run, calls.plan, [1, 2])
    with torch.inference_mode():
        args = _inputs()
        entry(*args)
        entry(*args)
    assert entry.plans_made == 2


def test_an_entry_without_structural_inputs_is_refused():
    with pytest.raises(ValueError, match="no structural inputs"):
        PlannedEntry(lambda p: p, lambda: None, [])


# -- pinned and refilled plans (CUDA graphs) -------------------------------------------------
class _Bounds:
    """A refillable plan: the segment bounds in a buffer of fixed size, rewritten in place."""

    def __init__(self, indptr, scale):
        self.bounds = indptr.to(torch.int64).clone()
        self.scale = scale

    def refill(self, indptr, scale):
        if indptr.shape != self.bounds.shape:
            return False
        self.bounds.copy_(indptr)
        self.scale = scale
        return True


def _bounds_run(plan, values, indptr, scale, bias):
    b = plan.bounds.tolist()  # reads the plan only, as a captured launch would
    return torch.stack([values[x:y].sum() for x, y in zip(b, b[1:])]) * plan.scale + bias


def _want(values, indptr, scale, bias):
    b = indptr.tolist()
    return torch.stack([values[x:y].sum() for x, y in zip(b, b[1:])]) * scale + bias


def test_a_pinned_plan_outlives_the_slots_until_unpinned():
    entry = PlannedEntry(_bounds_run, _Bounds, [1, 2], slots=2)
    values, indptr, scale, bias = args = _inputs()
    assert entry.pin(args, make=False) is None and entry.plans_made == 0   # nothing made when told not to
    plan = entry.pin(args)
    assert entry.plans_made == 1 and entry.pins(plan) == 1 and entry.find(args) is plan
    tables = [indptr.clone() for _ in range(4)]   # kept alive: their ids are not reused
    for table in tables:   # more tables than slots
        entry(values, table, scale, bias)
    assert entry.find(args) is plan
    entry(*args)
    assert entry.plans_made == 5   # the pinned plan served the call
    entry.clear()
    assert entry.find(args) is plan   # clear keeps pinned plans
    entry.unpin(plan)
    assert entry.pins(plan) == 0
    for table in tables[:2]:
        entry(values, table, scale, bias)
    assert entry.find(args) is None   # unpinned: evicted like any other


def test_refill_rewrites_the_plan_in_place_and_files_it_under_the_new_inputs():
    entry = PlannedEntry(_bounds_run, _Bounds, [1, 2])
    values, indptr, scale, bias = _inputs(batch=3, total=12)
    plan = entry.pin([values, indptr, scale, bias])
    new = torch.tensor([0, 5, 6, 12], dtype=torch.int32)   # the engine's next table, another tensor
    assert entry.refill(plan, [values, new, scale, bias])
    assert entry.find([values, new, scale, bias]) is plan
    assert entry.find([values, indptr, scale, bias]) is None, "the old key no longer names the rewritten plan"
    out = entry(values, new, scale, bias)
    assert entry.plans_made == 1 and torch.allclose(out, _want(values, new, scale, bias))
    new[1:3] = torch.tensor([1, 11], dtype=torch.int32)   # new contents in place: _version bumps
    assert entry.refill(plan, [values, new, 0.5, bias])
    assert torch.allclose(entry(values, new, 0.5, bias), _want(values, new, 0.5, bias))
    assert entry.plans_made == 1 and entry.pins(plan) == 1


def test_refill_declined_changes_nothing():
    entry = PlannedEntry(_bounds_run, _Bounds, [1, 2])
    values, indptr, scale, bias = args = _inputs(batch=3, total=12)
    plan = entry.pin(args)
    before = plan.bounds.clone()
    longer = torch.tensor([0, 2, 4, 8, 12], dtype=torch.int32)   # another batch size
    assert not entry.refill(plan, [values, longer, scale, bias])
    assert torch.equal(plan.bounds, before) and entry.find(args) is plan
    calls = _Counting()
    plain = PlannedEntry(calls.run, calls.plan, [1, 2])
    assert not plain.refill(plain.pin(args), [values, indptr.clone(), scale, bias])   # no refill method


# -- loading and validation ------------------------------------------------------------------
def test_a_built_plan_run_solution_loads_as_a_planned_entry(ws_root, settings_env):
    defn, loaded = _loaded(ws_root, settings_env)
    assert isinstance(loaded.entry, PlannedEntry) and loaded.entry.positions == (1, 2)
    assert loaded.meta["plan_symbol"] == "plan" and loaded.meta["plan_inputs"] == [1, 2]
    args = _inputs(batch=5, total=40)
    want = load_reference(defn)["run"](*args)
    assert torch.allclose(loaded.call(*args), want, atol=1e-5)
    assert torch.allclose(loaded.call(*args), want, atol=1e-5)
    assert loaded.entry.plans_made == 1
    again = load_committed(loaded.build_dir)  # the fast path of fibuild.load
    assert isinstance(again, PlannedEntry) and torch.allclose(again(*args), want, atol=1e-5)


def test_the_plan_is_part_of_the_build_key(ws_root, settings_env):
    ws = Workspace(ws_root)
    defn = ws.definition("segment_sum")
    sol = ws.solution("planned", definition="segment_sum")
    cache = BuildCache(Settings.from_env())
    from dataclasses import replace

    assert cache.key(defn, sol) != cache.key(defn, replace(sol, plan="kernel.py::other"))


def _write_solution(ws_root: Path, **changes) -> Path:
    path = ws_root / "solutions" / "segment_sum" / "planned" / "solution.yaml"
    text = path.read_text()
    for old, new in changes.items():
        text = text.replace(old, new)
    path.write_text(text)
    return path


def test_a_plan_file_must_be_a_listed_source(ws_root):
    path = _write_solution(ws_root, **{"plan: kernel.py::plan": "plan: planning.py::plan"})
    with pytest.raises(ManifestError) as err:
        load_solution(path)
    assert [p for p, _ in err.value.problems] == ["/plan"] and "planning.py" in str(err.value)


def test_a_plan_needs_a_python_level_solution(ws_root):
    path = _write_solution(ws_root, **{"language: python": "language: cuda"})
    with pytest.raises(ManifestError, match="python or triton"):
        load_solution(path)


def test_a_plan_without_structural_inputs_fails_to_build_with_a_clear_error(ws_root, settings_env):
    defn_path = ws_root / "defs" / "segment" / "segment_sum.yaml"
    defn_path.write_text(defn_path.read_text().replace(", structural: true", ""))
    with pytest.raises(BuildError, match="marks no input `structural: true`"):
        _loaded(ws_root, settings_env)


# -- bench and dispatch ------------------------------------------------------------------------
def test_bench_records_the_plan_time_apart_and_load_reuses_plans(ws_root, settings_env, capsys):
    from fibuild.cli import main
    from fibuild.devices import device_slug

    assert main(["--root", str(ws_root), "bench", "segment_sum", "--device", "cpu",
                 "--warmup", "1", "--rep", "5"]) == 0
    capsys.readouterr()
    path = ws_root / "registry" / "segment_sum" / f"{device_slug('cpu')}.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["status"] for r in records] == ["PASSED", "PASSED"], records
    for r in records:
        assert r["plan_latency"]["n"] >= 5 and r["plan_latency"]["median_us"] > 0
        assert r["latency"]["median_us"] > 0

    import fibuild

    kernel = fibuild.load("segment_sum", device="cpu", settings=Settings.from_env(root=str(ws_root)))
    args = _inputs(batch=8, total=400)
    first = kernel(*args)
    second = kernel(*args)
    key = (8, 9, 400)
    assert kernel.explain(batch_size=8, len_indptr=9, num_values=400).solution.name == "planned"
    entry = kernel.entry(key)
    assert isinstance(entry, PlannedEntry) and entry.plans_made == 1
    assert torch.equal(first, second)
    args[1][1] += 1  # the page table changes in place: a new plan, and the new answer
    third = kernel(*args)
    assert entry.plans_made == 2
    assert torch.allclose(third, load_reference(Workspace(ws_root).definition("segment_sum"))["run"](*args))
