"""On a GPU with no evaluations, ``fibuild.load`` of every shipped definition runs the
definition's baseline (never the reference) and says so once; a GPU with evaluations of the
same compute capability elsewhere borrows them, and says that.

The GPU is simulated: the device probe answers as an H100 would, and (where FlashInfer is
"installed") a solution's availability is its ``target_hardware`` alone. Nothing is called
on the device; ``Kernel.explain`` resolves each declared workload's key as a call would.
"""
from __future__ import annotations

import logging
import shutil

import pytest

from fibuild import devices
from fibuild.config import Settings
from fibuild.devices import Device
from fibuild.runtime import api, collect
from fibuild.runtime.api import load
from fibuild.spec.workspace import Workspace, shipped_root

H100 = Device("cuda", 0, "NVIDIA H100 80GB HBM3", (9, 0), "nvidia-h100-80gb-hbm3-sm90")
H200 = "nvidia-h200-sm90"
SHIPPED = Workspace(shipped_root())  # no I/O until used


@pytest.fixture
def gpu(monkeypatch):
    """This machine's ``cuda`` is an H100; warnings already given in this process are forgotten."""
    real = devices._probe
    monkeypatch.setattr(devices, "_probe", lambda kind, index: H100 if kind == "cuda" else real(kind, index))
    monkeypatch.setattr(api, "_WARNED", set())


def with_dependencies(monkeypatch):
    """Every dependency installed and every builder ready: availability is target_hardware only."""
    monkeypatch.setattr(collect, "unavailable_reason",
                        lambda sol, device, settings: collect.hardware_mismatch(sol, device))


def workspace(tmp_path, registry_of=(), device: str | None = None):
    """A copy of the shipped defs and solutions; the registry holds only ``registry_of``'s
    records (of ``device`` alone when given)."""
    root = tmp_path / "ws"
    for part in ("defs", "solutions"):
        shutil.copytree(shipped_root() / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "registry").mkdir()
    for name in registry_of:
        shutil.copytree(shipped_root() / "registry" / name, root / "registry" / name,
                        ignore=None if device is None else lambda folder, files: [
                            f for f in files if not f.startswith(f"{device}.jsonl")])
    return Settings.from_env({"FIBUILD_ROOT": str(root), "FIBUILD_CACHE_DIR": str(tmp_path / "cache"),
                              "FIBUILD_DEVICE": "cuda"})


def first_runnable(defn, installed: bool) -> str:
    """The baseline the H100 should run: the first whose solution can run there."""
    for name in defn.baseline:
        sol = SHIPPED.solution(name, defn.name)
        if installed or not sol.dependencies:
            return name
    raise AssertionError(f"{defn.name}: no baseline can run")


@pytest.mark.parametrize("installed", [True, False], ids=["flashinfer-installed", "no-flashinfer"])
def test_every_shipped_definition_runs_its_baseline_on_an_unmeasured_gpu(tmp_path, gpu, monkeypatch, caplog,
                                                                          installed):
    if installed:
        with_dependencies(monkeypatch)
    settings = workspace(tmp_path)
    names = sorted(SHIPPED.definitions)
    assert len(names) >= 12
    with caplog.at_level(logging.WARNING, logger="fibuild.runtime"):
        for name in names:
            defn = SHIPPED.definition(name)
            assert defn.baseline, f"{name} names no baseline"
            kernel = load(name, settings=settings)
            expected = first_runnable(defn, installed)
            for wl in defn.workloads:
                res = kernel.explain(**{a: wl.axes[a] for a in defn.var_axes})
                assert res.solution is not None, res.explain()      # never the reference
                assert res.solution.name == expected and res.policy == "baseline", res.explain()
                assert res.device == H100.slug and not res.borrowed
            load(name, settings=settings)  # a second load says nothing new
    said = [r.getMessage() for r in caplog.records if "no usable evaluation" in r.getMessage()]
    assert len(said) == len(names), said
    for name in names:
        (line,) = [m for m in said if m.startswith(f"fibuild: {name} has")]
        assert H100.slug in line and f"`fibuild bench {name}`" in line
        assert f"runs its baseline {first_runnable(SHIPPED.definition(name), installed)}" in line


def test_same_capability_evaluations_are_borrowed_and_marked(tmp_path, gpu, monkeypatch, caplog):
    with_dependencies(monkeypatch)
    name = "gemm_n4096_k4096_bf16"
    settings = workspace(tmp_path, registry_of=[name], device=H200)
    with caplog.at_level(logging.WARNING, logger="fibuild.runtime"):
        kernel = load(name, settings=settings, mode="graph")
    res = kernel.explain(M=16)
    assert res.borrowed == H200 and res.policy in ("exact", "nearest") and res.mode == "graph"
    assert res.solution is not None
    assert f"borrowed: no usable evaluation on {H100.slug}; the evaluations of {H200}" in res.explain()
    assert res.to_dict()["borrowed"] == H200
    said = [r.getMessage() for r in caplog.records if "no usable evaluation" in r.getMessage()]
    assert len(said) == 1 and f"borrows the evaluations of {H200}" in said[0]


def test_own_evaluations_are_not_borrowed(tmp_path, gpu, monkeypatch):
    """A device with usable records of its own answers from them alone."""
    with_dependencies(monkeypatch)
    name = "gemm_n6144_k4096"  # committed for both the H100 and the H200, its baseline current
    settings = workspace(tmp_path, registry_of=[name])
    res = load(name, settings=settings).explain(M=32)
    assert not res.borrowed and res.evaluated_key == (32,) and res.device == H100.slug


def test_a_baseline_measured_only_in_an_older_version_stays(tmp_path, gpu, monkeypatch):
    """The H100 records of rmsnorm's FlashInfer baseline, made those of an older version of it:
    nothing measured beside it can be shown to beat it, so it runs until measured again."""
    import json

    with_dependencies(monkeypatch)
    name = "rmsnorm_h4096"
    settings = workspace(tmp_path, registry_of=[name])
    h100 = tmp_path / "ws" / "registry" / name / f"{H100.slug}.jsonl"
    records = [json.loads(line) for line in h100.read_text().splitlines()]
    assert any(r["solution"] == "flashinfer" for r in records)
    h100.write_text("".join(json.dumps(dict(r, solution_digest="0" * 64) if r["solution"] == "flashinfer" else r)
                            + "\n" for r in records))
    res = load(name, settings=settings).explain(batch_size=32)
    assert res.solution.name == "flashinfer" and res.policy == "baseline" and not res.borrowed
    assert "only in an older version" in res.explain()


def test_a_cpu_never_borrows_from_a_gpu():
    assert not collect.same_capability("cpu-amd-epyc", H200)
    assert collect.same_capability(H100.slug, H200)
    assert not collect.same_capability(H100.slug, "nvidia-a100-sxm4-80gb-sm80")


def test_a_baseline_never_measured_on_the_device_stays(tmp_path, gpu, monkeypatch):
    """The H100 ran the O projection's Triton grid alone (its records below, from the
    18:29 run of benchmarks/device/variants_heldout.py, shortened): cuBLAS through torch was not
    measured beside it, so no variant can be shown to beat it and the baseline runs; once the
    baseline is measured there, the measured policies answer again."""
    import json

    from fibuild.compile.keys import solution_digest

    with_dependencies(monkeypatch)
    name = "gemm_n4096_k4096_bf16"
    settings = workspace(tmp_path, registry_of=[name], device=H200)
    root = tmp_path / "ws"
    ws = Workspace(root)
    defn = ws.definition(name)
    shipped = [json.loads(line) for line in (root / "registry" / name / f"{H200}.jsonl").read_text().splitlines()]
    own = [r for r in shipped if r["solution"] == "torch_matmul" and r["axes"] == {"M": 1}][-1]
    fma = ws.solution("triton_stream[KERNEL=fma,BLOCK_M=1,BLOCK_N=8,BLOCK_K=512,STAGES=3,WARPS=4]", name)

    def record(sol, median):
        rec = dict(own, device=H100.slug, solution=sol.name, solution_digest=solution_digest(defn, sol),
                   timestamp="2026-12-07T18:31:00Z")
        rec["environment"] = dict(own["environment"], device=H100.slug, device_name=H100.name)
        rec["latency"] = dict(own["latency"], median_us=median, p20_us=median * 0.99, p80_us=median * 1.01,
                              mean_us=median)
        for k in ("min_us", "q1_us", "q3_us"):
            if k in rec["latency"]:
                rec["latency"][k] = median * {"min_us": 0.98, "q1_us": 0.99, "q3_us": 1.01}[k]
        with open(root / "registry" / name / f"{H100.slug}.jsonl", "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")

    record(fma, 18.3)
    res = load(name, settings=settings, mode="graph").explain(M=1)
    assert res.solution.name == "torch_matmul" and res.policy == "baseline" and not res.borrowed
    assert "was measured on nvidia-h100-80gb-hbm3-sm90 never" in res.explain()
    record(ws.solution("torch_matmul", name), 30.0)
    res = load(name, settings=settings, mode="graph").explain(M=1)
    assert res.solution.name == fma.name and res.evaluated_key == (1,) and res.verdict == "FAST"
