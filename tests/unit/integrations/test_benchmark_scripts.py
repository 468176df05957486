"""The two benchmark scripts run end to end on the CPU with the stand-in flashinfer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from integration_helpers import STUB_DIR

REPO = Path(__file__).resolve().parents[3]


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIBUILD_")}
    env.update(PYTHONPATH=os.pathsep.join(sys.path), FIBUILD_CACHE_DIR=str(tmp_path / "cache"))
    return env


@pytest.mark.slow
def test_serving_step_smoke_traces_benches_and_applies(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serving_step.py"), "--device", "cpu",
                           "--model", "tiny", "--layers", "2", "--batch", "1", "3", "--kv-len", "8", "--iters", "2",
                           "--warmup", "1", "--flashinfer-path", str(STUB_DIR), "--out", str(out), "--pdl"],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "serving_step.json").read_text())
    assert [r["batch"] for r in summary["rows"]] == [1, 3]
    assert all(r["traced_max_abs_diff"] == 0 and r["agree"] for r in summary["rows"])
    assert all(0 < r["plain_fp32_rel_l2"] < 2e-2 and r["applied_fp32_rel_l2"] <= 1.5 * r["plain_fp32_rel_l2"]
               for r in summary["rows"])
    assert "gqa_paged_decode_h8_kv2_d32_ps1" in summary["benched"]
    assert (out / "workspace" / "registry" / "gqa_paged_decode_h8_kv2_d32_ps1" / "workloads.jsonl").is_file()
    assert "| 3 | 8 |" in (out / "serving_step.md").read_text()
    assert (out / "serving_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --pdl: applied again with dependent launch (on a CPU the same kernels: the same output)
    assert all(r["same_picks"] and r["pdl_equals_applied"] and r["applied_pdl_ms"] > 0 for r in summary["rows"])
    assert "applied + PDL" in (out / "serving_step.md").read_text()


KV_STORE_CHILD = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from _kv_store import store_kv

g = torch.Generator().manual_seed(0)
qkv = torch.randn(3, 8 * 32 + 2 * 64, generator=g).to(torch.bfloat16)     # tiny: 8 q heads, 2 kv heads of 32
k, v = qkv[:, 256:320].view(3, 2, 32), qkv[:, 320:].view(3, 2, 32)        # strided rows, as split
slots = torch.tensor([5, 0, 11])
caches = []
for kernel in (True, False):
    kv = torch.zeros(16, 2, 1, 2, 32, dtype=torch.bfloat16)                 # vLLM's [pages, 2, 1, heads, dim]
    store_kv(k, v, kv[:, 0].view(16, 2, 32), kv[:, 1].view(16, 2, 32), slots, kernel=kernel)
    caches.append(kv)
kernel, assigned = caches
written = kernel.flatten(1).abs().sum(1) > 0
print(json.dumps({"equal": bool(torch.equal(kernel, assigned)), "written": written.nonzero().flatten().tolist(),
                  "k_row": bool(torch.equal(kernel[11, 0, 0], k[2])),
                  "v_row": bool(torch.equal(kernel[5, 1, 0], v[0]))}))
"""


def test_the_kv_store_kernel_writes_each_new_row_to_its_slot():
    """``benchmarks/engine_standins/_kv_store.py``: the one-kernel K/V store the step runs on a
    GPU, under the Triton interpreter, on strided K/V rows (views of a QKV output) into vLLM's
    combined cache, against index assignment: the same bytes, only the three slots written."""
    helper = _module_at(REPO / "tests/unit/solutions/interpreted_run.py", "interpreted_run")
    got = helper.run_interpreted(KV_STORE_CHILD, str(REPO / "benchmarks" / "engine_standins"), timeout=300)
    assert got == {"equal": True, "written": [0, 5, 11], "k_row": True, "v_row": True}


def test_step_profile_summarizes_gaps_overlap_and_operations():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from step_profile import kind_of, markdown, summarize
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    # two replays 1000 µs apart; in each: a norm, a GEMM overlapping it by 2 µs, a gap of 3 µs, a decode
    one = [(0.0, 5.0, "_rmsnorm_row"), (3.0, 20.0, "_stream_fma"), (23.0, 30.0, "_decode_chunk")]
    kernels = one + [(s + 1000, e + 1000, n) for s, e, n in one]
    got = summarize(kernels, replays=2)
    assert got["kernels"] == 3 and got["span_us"] == 30.0 and got["busy_us"] == 27.0
    assert got["gaps_us"] == 3.0 and got["overlap_us"] == 2.0
    assert {k: v["us"] for k, v in got["by_kind"].items()} == {"gemm": 17.0, "attention": 7.0, "norm": 5.0}
    text = markdown("apply_pdl, batch 1", got, step_us=31.0, layers=1)
    assert "gaps 3.0 µs" in text and "| gemm | 1 | 17.0 | 17.00 |" in text
    # the step's rope and K/V store kernels, by their names on the GPU (FlashInfer's rope, the
    # stand-in store), are their own operations, not "other"
    assert kind_of("void flashinfer::BatchQKApplyRotaryPosIdsCosSinCacheKernel<true, 128u>") == "rope"
    assert kind_of("store_rows") == kind_of("index_elementwise_kernel") == "kv_write"


def test_bench_dispatch_routes_to_each_kernel_it_times(tmp_path):
    """``benchmarks/bench_dispatch.py`` on a CPU: its workspaces must make ``fibuild.load``
    choose the kernel each row times (it exits non-zero otherwise: its no-op solution once
    stopped winning when the resolver began keeping an unmeasured baseline's keys)."""
    out = tmp_path / "dispatch.md"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_dispatch.py"), "--device", "cpu",
                           "--calls", "50", "--rounds", "2", "--out", str(out)],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|") for line in out.read_text().splitlines() if line.startswith("| cpu |")]
    added = {(r[2].strip(), r[3].strip()): float(r[5]) for r in rows}
    assert set(added) >= {("no-op kernel", "fibuild.load"), ("rmsnorm (torch_fp32)", "fibuild.load")}
    assert added[("no-op kernel", "direct")] == 0 and added[("no-op kernel", "fibuild.load")] > 0


@pytest.mark.slow
def test_bench_integration_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_integration.py"), "--device", "cpu",
                           "--small", "--calls", "200", "--rounds", "1", "--flashinfer-path", str(STUB_DIR),
                           "--out", str(tmp_path)], env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "bench_integration.json").read_text())["rows"]
    assert [r["api"] for r in rows][-1] == "torch.nn.functional.linear"
    for r in rows:  # the patch costs something, and less than a millisecond, per call
        assert all(0 < r[f"{v} layer_us"] < 1000 for v in ("apply, FlashInfer's own", "apply, reference", "trace")), r
        assert "trace end_to_end_us" in r


def _module_at(path: Path, name: str):
    """The Python file at ``path`` loaded as module ``name`` (not put in sys.modules)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _serving_step_module(monkeypatch):
    monkeypatch.syspath_prepend(str(STUB_DIR))
    return _module_at(REPO / "benchmarks" / "serving_step.py", "serving_step_script")


def test_serving_step_fp32_reference_tracks_the_step_and_catches_a_wrong_kernel(monkeypatch):
    """The applied run is judged against the fp32 step: it must agree with a correct bf16 step
    to bf16 rounding, and a kernel that is wrong by little (V of the new token dropped from
    attention) must land far outside the 1.5× error band."""
    import argparse

    import torch

    mod = _serving_step_module(monkeypatch)
    args = argparse.Namespace(model="tiny", layers=3, kv_len=16, engine="docs")
    torch.set_grad_enabled(False)
    model = mod.Model(args, 3, torch.device("cpu"))
    model.plan()
    x = model.hidden.clone()
    out = model.step(x.clone()).float()
    ref = model.reference_step(x)
    plain_err = float((out - ref).norm() / ref.norm())
    assert 0 < plain_err < 2e-2

    # a wrong kernel: attention that reads zeros for each sequence's new value row
    broken = model.flashinfer.BatchDecodeWithPagedKVCacheWrapper.run
    monkeypatch.setattr(model.flashinfer.BatchDecodeWithPagedKVCacheWrapper, "run",
                        lambda self, q, kv, **kw: broken(self, q, (kv[0], kv[1].clone().index_fill_(
                            0, model.out_cache_loc, 0)), **kw))
    wrong = model.step(x.clone()).float()
    wrong_err = float((wrong - ref).norm() / ref.norm())
    assert wrong_err > 5 * plain_err, (wrong_err, plain_err)


#: the tiny model's definitions (benchmarks/serving_step.py MODELS["tiny"]) and the axes of one evaluation each
TINY = {
    "rmsnorm_h256": (("rmsnorm", {"hidden_size": 256, "dtype": "bfloat16", "eps": 1e-5}), {"batch_size": 3}),
    "fused_add_rmsnorm_h256": (("fused_add_rmsnorm", {"hidden_size": 256, "dtype": "bfloat16", "eps": 1e-5}),
                               {"batch_size": 3}),
    "gqa_paged_decode_h8_kv2_d32_ps1": (("gqa_paged_decode", {"num_qo_heads": 8, "num_kv_heads": 2, "head_dim": 32,
                                                              "page_size": 1, "dtype": "bfloat16"}),
                                        {"batch_size": 3, "num_pages": 30, "len_indptr": 4, "num_kv_indices": 27}),
}


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_serving_step_engine_modes_report_their_substitutions(tmp_path, monkeypatch, engine):
    """The step called as SGLang / vLLM call their kernels (sgl_kernel and begin_forward /
    fast_decode_plan / forward; _C ops and plan / fast_decode_plan / run(out=) on one combined
    KV tensor) agrees with plain and with fp32, and reports stats() per batch size: the decode
    substituted in both."""
    import integration_helpers

    for name, (spec, _) in TINY.items():
        monkeypatch.setitem(integration_helpers.SMALL, name, spec)
    ws = integration_helpers.SmallWorkspace.create(tmp_path, tuple(TINY))
    for name, (_, axes) in TINY.items():
        ws.add_counted_solution(name)
        ws.record(name, "counted", axes)
    out = tmp_path / "out"
    out.mkdir()
    (out / "workspace").symlink_to(ws.root)  # the counted solutions name their definitions by path
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serving_step.py"), "--device", "cpu",
                           "--engine", engine, "--model", "tiny", "--layers", "2", "--batch", "3", "--kv-len", "8",
                           "--iters", "2", "--warmup", "1", "--flashinfer-path", str(STUB_DIR), "--out", str(out),
                           "--skip-bench"], env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "serving_step.json").read_text())
    (row,) = summary["rows"]
    assert summary["engine"] == engine and row["traced_max_abs_diff"] == 0 and row["agree"], row
    stats = row["stats"]
    decode = stats["flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper"]
    assert decode["substituted"] == decode["calls"] > 0 and not decode["fallbacks"], decode
    if engine == "sglang":
        norms = [r for api, r in stats.items() if api.endswith("rmsnorm")]
        assert norms and sum(r["substituted"] for r in norms) > 0, stats
    assert "| 3 | `flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper` |" in (out / "serving_step.md").read_text()


def test_variants_heldout_rerank_resolves_a_finished_run_again_without_a_gpu(tmp_path):
    """``variants_heldout.py --rerank``: a run's step-1 records and kept timings, resolved with
    this checkout's rule. M = 96 lies nearer 128 (ratio 1.33) than 64 (1.5): 128's winner runs."""
    from fibuild.compile.keys import solution_digest
    from fibuild.spec.workspace import Workspace, shipped_root

    name, slug = "gemm_n4096_k4096_bf16", "nvidia-h100-80gb-hbm3-sm90"
    ws = Workspace(shipped_root())
    defn = ws.definition(name)
    small = ws.solution("triton_stream[KERNEL=dot,BLOCK_M=64,BLOCK_N=32,BLOCK_K=256,STAGES=4,WARPS=4]", name)
    large = ws.solution("triton_stream[KERNEL=dot,BLOCK_M=64,BLOCK_N=64,BLOCK_K=128,STAGES=4,WARPS=4]", name)
    run = tmp_path / "run"
    (run / "registry" / name).mkdir(parents=True)

    def record(sol, m, median):
        lat = {"median_us": median, "p20_us": median * 0.99, "p80_us": median * 1.01, "mean_us": median, "n": 100,
               "min_us": median * 0.98, "q1_us": median * 0.99, "q3_us": median * 1.01}
        return {"schema": 2, "definition": name, "solution": sol.name, "solution_digest": solution_digest(defn, sol),
                "workload_uuid": f"{name}-M{m}", "axes": {"M": m}, "device": slug, "status": "PASSED",
                "latency": lat, "reference_latency": lat, "speedup": 1.0, "max_abs_error": 0.0,
                "max_rel_error": 0.0, "error": "", "build_key": "", "timestamp": "2026-12-07T22:50:00Z",
                "environment": {"device": slug}}

    lines = [record(small, 64, 20.0), record(large, 64, 24.0), record(small, 128, 40.0), record(large, 128, 27.0)]
    (run / "registry" / name / f"{slug}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    timings = {small.name: {"status": "PASSED", "median_us": 41.3}, large.name: {"status": "PASSED", "median_us": 27.4}}
    (run / "variants-heldout.json").write_text(json.dumps({"bench": {"rc": 0, "seconds": 1.0}, "rows": [
        {"definition": name, "axes": {"M": 96}, "variants": timings, "best": large.name, "best_us": 27.4}]}))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "device" / "variants_heldout.py"), "--rerank",
                           str(run), "--device-slug", slug, "--out", str(out)], capture_output=True, text=True,
                          env=dict(os.environ, FIBUILD_CACHE_DIR=str(tmp_path / "cache")))
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads((out / "variants-heldout-rerank.json").read_text())["rows"]
    assert (row["resolved"], row["evaluated_key"], row["ratio"]) == (large.name, [128], 1.0)
    assert "1 of 1 held-out shapes within 0.95x" in (out / "variants-heldout-rerank.md").read_text()


def test_variants_heldout_table_of_both_sets_counts_each_set(tmp_path):
    """``--shapes all`` (one bench of the grids, both held-out sets): the table counts the
    shapes within 0.95x overall and per set, each row's set told by its shape."""
    import importlib.util

    path = REPO / "benchmarks" / "device" / "variants_heldout.py"
    spec = importlib.util.spec_from_file_location("variants_heldout", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    both = script.held_out_shapes(script.GEMM_HELD_OUT, "all")
    assert set(both) == set(script.GEMM_HELD_OUT["seen"]) | set(script.GEMM_HELD_OUT["fresh"]) and len(both) == 18
    rows = [{"definition": "gemm_n4096_k4096_bf16", "axes": {"M": 96}, "ratio": 1.0},
            {"definition": "gemm_n4096_k4096_bf16", "axes": {"M": 5}, "ratio": 0.9},
            {"definition": script.DECODE, "axes": {"batch_size": 3, "num_pages": 2304, "len_indptr": 4,
                                                   "num_kv_indices": 2304}, "ratio": 0.97}]
    script.write_table(rows, {"rc": 0, "seconds": 1.0}, tmp_path, "a GPU", "all")
    text = (tmp_path / "variants-heldout.md").read_text()
    assert "2 of 3 held-out shapes within 0.95x; worst 0.900." in text
    assert "1 of 1 held-out shapes (seen set) within 0.95x; worst 1.000." in text
    assert "1 of 2 held-out shapes (fresh set) within 0.95x; worst 0.900." in text


def test_resolution_stability_replay_of_the_h100_runs(tmp_path):
    """``resolution_stability.py --replay``: the H100's two back-to-back runs (22:45, records in
    benchmarks/results/stability-h100/) resolved again without a GPU. Judged on each item's own
    spread they disagreed clearly at 2 eager keys (host time drifting between bench items);
    with host intervals spanning each solution's keys, at 1 (SiLU×mul: the challenger's items
    missed the host's slow stretches in one run); with their upper ends also reaching the
    slowdown the other solutions saw, at none."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "device" / "resolution_stability.py"),
                           "--replay", str(REPO / "benchmarks" / "results" / "stability-h100"),
                           "--device-slug", "nvidia-h100-80gb-hbm3-sm90", "--out", str(out)],
                          capture_output=True, text=True, env=dict(os.environ, FIBUILD_CACHE_DIR=str(tmp_path / "c")))
    assert proc.returncode == 0, proc.stderr
    comparison = json.loads((out / "stability-replay.json").read_text())["comparison"]
    assert comparison["counts"]["keys"] == 40 and comparison["counts"]["differ_clear"] == 0
    silu = [r for r in comparison["rows"] if r["definition"] == "silu_and_mul_i14336" and r["mode"] == "eager"]
    assert {r["run1"] for r in silu} == {r["run2"] for r in silu} == {"flashinfer"}


STEPS = sorted((REPO / "benchmarks" / "device" / "steps").glob("*.txt"))
#: The device tool's limit for one command, and the ceilings step run_steps.sh runs first.
DEVICE_CALL_S, CEILINGS_STEP_S = 600, 60


@pytest.mark.parametrize("steps", STEPS, ids=[p.name for p in STEPS])
def test_device_step_files_fit_one_call_and_name_real_scripts_and_options(steps):
    """A GPU call is scarce: a step file must fit one call (its limits plus the ceilings step
    within the device's 600 s) and every script and ``--option`` it names must exist, so a typo
    cannot cost a call."""
    import re
    import shlex

    lines = [ln for ln in steps.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines
    total = CEILINGS_STEP_S
    for line in lines:
        limit, title, command = line.split("|", 2)
        total += int(limit)
        assert title.strip()
        words = shlex.split(command.replace("$RES", "RES"))
        scripts = [w for w in words if re.fullmatch(r"(benchmarks|tests)/\S+\.(py|sh)", w)]
        assert scripts, line
        for word in scripts:
            assert (REPO / word).is_file(), word
        script = scripts[0]
        if script.startswith("benchmarks/") and script.endswith(".py"):  # its argparse options
            source = (REPO / script).read_text()
            for option in {w.split("=")[0] for w in words if w.startswith("--")}:
                assert f'"{option}"' in source, (steps.name, option)
    assert total <= DEVICE_CALL_S, f"{steps.name}: {total} s of step limits"
