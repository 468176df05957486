"""A grid's variants: each its own key and build, its constants passed to the entry point
(keyword arguments; ``-D`` defines for native code); benched per workload and grouped in
the leaderboard under their solution."""
from __future__ import annotations

import torch

from fibuild.bench.leaderboard import leaderboard
from fibuild.bench.plan import plan_benchmarks
from fibuild.compile import keys
from fibuild.compile.cache import BuildCache
from fibuild.spec.model import Evaluation, LatencyStats
from fibuild.spec.workspace import Workspace


def _add_grid(ws: Workspace, name: str, grid: str, kernel_edit=None) -> Workspace:
    manifest = ws.solutions_dir / "add_one_f32" / name / "solution.yaml"
    manifest.write_text(manifest.read_text() + grid)
    if kernel_edit:
        kernel_edit(manifest.parent)
    return Workspace(ws.root)


def _python_grid(folder):
    (folder / "kernel.py").write_text('"""y = x + OFFSET * SCALE."""\nfrom .helpers import OFFSET as _ONE\n\n\n'
                                      "def add_one(x, OFFSET=_ONE, SCALE=1):\n    return x + OFFSET * SCALE\n")


def test_python_variants_get_their_constants_as_keyword_arguments(ws, make_settings):
    ws = _add_grid(ws, "py_add", "variants: {OFFSET: [1.0, 0.5], SCALE: [1, 4]}\n", _python_grid)
    defn, settings = ws.definition("add_one_f32"), make_settings()
    grid = [s for s in ws.solutions(defn) if s.family == "py_add"]
    assert len(grid) == 4
    built = {s.name: BuildCache(settings).get_or_build(defn, s) for s in grid}
    assert len({k.build_key for k in built.values()}) == 4
    assert len({keys.solution_digest(defn, s) for s in grid}) == 4
    x = torch.zeros(3)
    for sol in grid:
        c = dict(sol.constants)
        assert torch.equal(built[sol.name](x), x + c["OFFSET"] * c["SCALE"]), sol.name


def test_native_variants_get_defines(ws, make_settings):
    ws = _add_grid(ws, "cpp_add", "variants: {ADD_OFFSET: [1.0f, 3.0f]}\n")
    defn = ws.definition("add_one_f32")
    for sol in [s for s in ws.solutions(defn) if s.family == "cpp_add"]:
        inputs = keys.key_inputs(defn, sol, make_settings())
        assert f"-DADD_OFFSET={dict(sol.constants)['ADD_OFFSET']}" in inputs["flags"]["cxx"]
        kernel = BuildCache(make_settings()).get_or_build(defn, sol)
        want = 1.0 if "1.0f" in sol.name else 3.0
        assert torch.equal(kernel(torch.zeros(4)), torch.full((4,), want))


def test_bench_plan_takes_a_grid_by_name_and_limits_variants_per_workload(ws):
    ws = _add_grid(ws, "py_add", "variants: {OFFSET: [1.0, 0.5, 0.25], SCALE: [1, 2, 4]}\n", _python_grid)
    plan = plan_benchmarks(ws, ["add_one_f32"], solutions=["py_add"], device="cpu")
    assert sorted(g.solution.name for g in plan.groups) == sorted(s.name for s in ws.solutions("add_one_f32")
                                                                 if s.family == "py_add")
    def_file = ws.definition("add_one_f32").path
    def_file.write_text(def_file.read_text() + "".join(f"  - axes: {{n: {2 ** i}}}\n" for i in range(11)))
    ws = Workspace(ws.root)
    many = ws.workloads("add_one_f32")
    assert len(many) == 12
    limited = plan_benchmarks(ws, ["add_one_f32"], solutions=["py_add"], device="cpu", variant_limit=2)
    per_workload = {}
    for g in limited.groups:
        for w in g.workloads:
            per_workload.setdefault(w.uuid, []).append(g.solution.name)
    assert set(per_workload) == {w.uuid for w in many}
    assert all(len(names) == 2 for names in per_workload.values())
    assert len({n for names in per_workload.values() for n in names}) > 2  # a different spread per workload
    assert plan_benchmarks(ws, ["add_one_f32"], solutions=["py_add"], device="cpu",
                           variant_limit=2).groups == limited.groups  # deterministic


def _ev(solution: str, n: int, median: float | None) -> Evaluation:
    lat = LatencyStats(median, median, median, median, 10) if median else None
    return Evaluation("add_one_f32", solution, "", "", f"w{n}", {"n": n}, "PASSED" if median else "RUNTIME_ERROR",
                      "cpu-x", latency=lat, timestamp="2026-12-07T00:00:00Z")


def test_leaderboard_groups_variants_under_their_solution(ws):
    defn = ws.definition("add_one_f32")
    records = [_ev("py_add[B=1]", 8, 5.0), _ev("py_add[B=2]", 8, 3.0), _ev("py_add[B=1]", 64, 7.0),
               _ev("py_add[B=2]", 64, None), _ev("cpp_add", 8, 4.0), _ev("cpp_add", 64, 9.0)]
    # The star is the resolver's answer (``fibuild table`` passes it); here a stand-in.
    picks = {8: ("py_add[B=2]", "FAST"), 64: ("py_add[B=1]", "FAST")}
    board = leaderboard(defn, "cpu-x", records, lambda axes: picks[axes["n"]])
    assert board.solutions == ["cpp_add", "py_add"]
    by_n = {r.axes["n"]: r for r in board.rows}
    assert by_n[8].winner == "py_add" and by_n[8].variants["py_add"] == "py_add[B=2]"
    assert by_n[64].winner == "py_add" and by_n[64].cells["py_add"].latency.median_us == 7.0
    assert board.to_json()["rows"][0]["variants"] == {"py_add": "py_add[B=2]"}
    # A chosen variant that is not the best by median takes its solution's cell: the star shows what runs.
    picks[8] = ("py_add[B=1]", "AMBIGUOUS")
    by_n = {r.axes["n"]: r for r in leaderboard(defn, "cpu-x", records, lambda axes: picks[axes["n"]]).rows}
    assert by_n[8].variants["py_add"] == "py_add[B=1]" and by_n[8].cells["py_add"].latency.median_us == 5.0
    flat = leaderboard(defn, "cpu-x", records, lambda axes: picks[axes["n"]], group_variants=False)
    assert flat.solutions == ["cpp_add", "py_add[B=1]", "py_add[B=2]"]
    assert [r.winner for r in flat.rows] == ["py_add[B=1]", "py_add[B=1]"]
