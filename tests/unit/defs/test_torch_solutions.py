"""Every plain-torch solution matches its definition's reference; FlashInfer baselines say
clearly when flashinfer-python is missing."""
from __future__ import annotations

import importlib.util

import pytest

import defs_support as ds

WS = ds.workspace()
TORCH_SOLUTIONS = [s for s in WS.solutions() if s.language == "python" and s.name.startswith("torch")]
FLASHINFER_SOLUTIONS = [s for s in WS.solutions() if s.name == "flashinfer"]
HAS_FLASHINFER = importlib.util.find_spec("flashinfer") is not None


def test_every_definition_has_a_cpu_torch_solution():
    covered = {s.definition for s in TORCH_SOLUTIONS if "cpu" in s.target_hardware}
    assert covered == set(WS.definitions)


@pytest.mark.parametrize("sol", TORCH_SOLUTIONS, ids=lambda s: s.qualified_name)
def test_torch_solution_matches_reference_on_cpu(sol):
    defn = WS.definition(sol.definition)
    entry = ds.load_entry(sol)
    for workload in ds.smallest_workloads(defn):
        args = ds.make_inputs(defn, workload, seed=3)
        expected = ds.reference_outputs(defn, args)
        got = ds.solution_outputs(defn, sol, entry, args)
        assert ds.mismatches(defn, got, expected) == [], workload.axes


@pytest.mark.parametrize("sol", TORCH_SOLUTIONS, ids=lambda s: s.qualified_name)
def test_comparison_catches_a_wrong_result(sol):
    """The check above can fail: outputs scaled by 1.1 are rejected."""
    defn = WS.definition(sol.definition)
    args = ds.make_inputs(defn, ds.smallest_workloads(defn, 1)[0], seed=3)
    expected = ds.reference_outputs(defn, args)
    wrong = [(o.double() * 1.1 + 0.05).to(o.dtype) for o in expected]
    assert ds.mismatches(defn, wrong, expected) != []


@pytest.mark.gpu
@pytest.mark.parametrize("sol", TORCH_SOLUTIONS, ids=lambda s: s.qualified_name)
def test_torch_solution_matches_reference_on_cuda(sol):
    defn = WS.definition(sol.definition)
    entry = ds.load_entry(sol)
    for workload in defn.workloads[:4]:
        args = ds.make_inputs(defn, workload, seed=5, device="cuda")
        expected = ds.reference_outputs(defn, args)
        got = ds.solution_outputs(defn, sol, entry, args)
        assert ds.mismatches(defn, got, expected) == [], workload.axes


def test_flashinfer_baselines_cover_the_flashinfer_ops():
    assert {s.definition for s in FLASHINFER_SOLUTIONS} == {
        "rmsnorm_h4096", "fused_add_rmsnorm_h4096", "silu_and_mul_i14336", "gqa_paged_decode_h32_kv8_d128_ps1",
        "gqa_paged_decode_h32_kv8_d128_ps16"}
    for sol in FLASHINFER_SOLUTIONS:
        assert sol.language == "python"
        assert sol.dependencies == ("flashinfer-python",)
        assert sol.target_hardware == ("cuda",)


@pytest.mark.skipif(HAS_FLASHINFER, reason="flashinfer-python is installed")
@pytest.mark.parametrize("sol", FLASHINFER_SOLUTIONS, ids=lambda s: s.qualified_name)
def test_flashinfer_baseline_names_the_missing_package(sol):
    defn = WS.definition(sol.definition)
    entry = ds.load_entry(sol)  # importing the module must not need flashinfer
    args = ds.make_inputs(defn, ds.smallest_workloads(defn, 1)[0])
    with pytest.raises(ModuleNotFoundError, match=r"flashinfer-python.*pip install 'fibuild\[flashinfer\]'"):
        entry(*args)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_FLASHINFER, reason="needs flashinfer-python")
@pytest.mark.parametrize("sol", FLASHINFER_SOLUTIONS, ids=lambda s: s.qualified_name)
def test_flashinfer_baseline_matches_reference_on_cuda(sol):
    defn = WS.definition(sol.definition)
    entry = ds.load_entry(sol)
    for workload in defn.workloads[:4]:
        args = ds.make_inputs(defn, workload, seed=7, device="cuda")
        expected = ds.reference_outputs(defn, args)
        got = ds.solution_outputs(defn, sol, entry, args)
        assert ds.mismatches(defn, got, expected) == [], workload.axes
