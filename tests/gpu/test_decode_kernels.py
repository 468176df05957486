"""The paged decode solutions on the GPU: the Triton split-KV solutions on every declared
workload, the FlashInfer plan/run baselines on the first four."""
from __future__ import annotations

import pytest

from fibuild.spec.workspace import Workspace, shipped_root

pytestmark = pytest.mark.gpu

WS = Workspace(shipped_root())
#: the grid's default launch with the merge as a second launch (the bare name: its defaults, fused)
SEPARATE = "triton_split_kv[MERGE=separate,WAVES=4,CHUNK=128,BLOCK_N=64,STAGES=3]"
DEFS = ["gqa_paged_decode_h32_kv8_d128_ps1", "gqa_paged_decode_h32_kv8_d128_ps16"]
CASES = [(d, s, i) for d in DEFS for s in ("triton_split_kv", SEPARATE, "flashinfer", "flashinfer_tc")
         for i in range(len(WS.definition(d).workloads) if s.startswith("triton") else 4)]


@pytest.fixture(scope="module")
def cache():
    from fibuild.compile.cache import BuildCache
    from fibuild.config import Settings

    return BuildCache(Settings.from_env())


@pytest.mark.parametrize("definition, solution, index", CASES,
                         ids=[f"{d[-4:]}-{s.split(',')[0]}-{i}" for d, s, i in CASES])
def test_decode_solution_matches_reference(definition, solution, index, cache):
    import torch

    from fibuild.bench.checks import PASSED, check_outputs, reference_outputs
    from fibuild.bench.inputs import clone_inputs, make_inputs
    from fibuild.spec.calling import load_reference

    if solution.startswith("flashinfer"):
        pytest.importorskip("flashinfer")
    defn = WS.definition(definition)
    ns = load_reference(defn)
    workload = defn.workloads[index]
    inputs = make_inputs(defn, workload, device="cuda", reference_ns=ns)
    args = clone_inputs(inputs)
    want = reference_outputs(defn, ns["run"](*args), args)
    loaded = cache.get_or_build(defn, WS.solution(solution, definition=definition))
    got = loaded.call(*clone_inputs(inputs))
    torch.cuda.synchronize()
    check = check_outputs(defn, got, want)
    assert check.status == PASSED, (dict(workload.axes), check.message)
