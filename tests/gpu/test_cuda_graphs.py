"""Every resolved solution of every shipped definition runs inside a CUDA graph: captured,
replayed, and the replay's output checked against the reference.

"Resolved" is what ``fibuild.resolve`` picks on this GPU for each declared workload (from
the registry's evaluations for this device); a definition resolved to no solution here (no
evaluations on this device) is skipped, saying so. Plan/run solutions are planned before capture,
as a serving engine plans before replaying its graphs. Distributed definitions need a
process group and are covered by their own tests.
"""
from __future__ import annotations

import pytest

from fibuild.spec.workspace import Workspace, shipped_root

pytestmark = pytest.mark.gpu

WS = Workspace(shipped_root())
DEFINITIONS = sorted(n for n, d in WS.definitions.items() if d.distributed is None)


def _resolved(defn, settings) -> dict[str, object]:
    """solution name -> the smallest declared workload it is resolved for on this GPU."""
    import fibuild

    chosen: dict[str, object] = {}
    for workload in defn.workloads:
        res = fibuild.resolve(defn.name, dict(workload.axes), device="cuda", settings=settings)
        if res.solution is not None:
            chosen.setdefault(res.solution.name, workload)
    return chosen


@pytest.mark.parametrize("name", DEFINITIONS)
def test_resolved_solutions_replay_in_a_cuda_graph(name):
    import torch

    from fibuild.bench.checks import PASSED, check_outputs, reference_outputs
    from fibuild.bench.inputs import clone_inputs, make_inputs
    from fibuild.compile.cache import BuildCache
    from fibuild.compile.plans import PlannedEntry
    from fibuild.config import Settings
    from fibuild.spec.calling import load_reference

    settings = Settings.from_env({"FIBUILD_ROOT": str(shipped_root()), "FIBUILD_DEVICE": "cuda",
                                  "FIBUILD_CACHE_DIR": str(Settings.from_env().cache_dir)})
    defn = WS.definition(name)
    ns = load_reference(defn)
    mutated = {defn.inputs.index(defn.input(o.inplace)) for o in defn.outputs if o.inplace}
    resolved = _resolved(defn, settings)
    if not resolved:
        pytest.skip(f"{name}: no evaluations on this device resolve to a solution")
    failures = []
    for sol_name, workload in sorted(resolved.items()):
        sol = WS.solution(sol_name, definition=name)
        loaded = BuildCache(settings).get_or_build(defn, sol)
        inputs = make_inputs(defn, workload, device="cuda", reference_ns=ns)
        fresh = clone_inputs(inputs)
        want = reference_outputs(defn, ns["run"](*fresh), fresh)
        static = clone_inputs(inputs)
        if isinstance(loaded.entry, PlannedEntry):
            loaded.entry.prepare(static)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy workspaces, Triton compiles, handles
            loaded.call(*static)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        for i in mutated:  # in-place inputs were written by the warm-up: restore them
            static[i].copy_(inputs[i])
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            result = loaded.call(*static)
        for i in mutated:
            static[i].copy_(inputs[i])
        if isinstance(loaded.entry, PlannedEntry):
            plans = loaded.entry.plans_made
        graph.replay()
        torch.cuda.synchronize()
        check = check_outputs(defn, result, want)
        if check.status != PASSED:
            failures.append(f"{sol_name} at {dict(workload.axes)}: {check.status} {check.message}")
        if isinstance(loaded.entry, PlannedEntry):
            assert loaded.entry.plans_made == plans, f"{sol_name}: the replay planned"
    assert failures == []
