"""Activation through the environment, in fresh interpreters: the .pth hook, fibuild run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from integration_helpers import STUB_DIR

PTH = Path(__file__).resolve().parents[3] / "fibuild" / "integrations" / "fibuild_integrations.pth"

# Processes the .pth the way site does for an installed one, then reports what happened.
PROBE = """
import json, site, sys, time
t0 = time.perf_counter()
site.addsitedir(sys.argv[1])
hook_s = time.perf_counter() - t0
loaded_before = sorted(m for m in sys.modules if m.startswith("fibuild"))
import torch, flashinfer
import fibuild.integrations.activation as act
x = torch.randn(2, 64, dtype=torch.bfloat16)
flashinfer.rmsnorm(x, torch.rand(64, dtype=torch.bfloat16), 1e-5)
print(json.dumps({"hook_s": hook_s, "fibuild_modules_at_start": loaded_before,
                  "patched": hasattr(flashinfer.rmsnorm, "fibuild_memo"),
                  "linear_patched": hasattr(torch.nn.functional.linear, "fibuild_memo"),
                  "active": act.active() is not None}))
"""


def _site_dir(tmp_path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / PTH.name).write_text(PTH.read_text())
    return folder


def _run_probe(tmp_path, extra_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIBUILD_")}
    env.update(PYTHONPATH=os.pathsep.join([str(STUB_DIR)] + sys.path), FIBUILD_CACHE_DIR=str(tmp_path / "cache"),
               **extra_env)
    proc = subprocess.run([sys.executable, "-c", PROBE, str(_site_dir(tmp_path))], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.parametrize("value", [None, "0", ""])
def test_nothing_is_imported_or_patched_when_unset(tmp_path, value):
    extra = {} if value is None else {"FIBUILD_TRACE": value, "FIBUILD_APPLY": value}
    report, stderr = _run_probe(tmp_path, extra)
    assert report["fibuild_modules_at_start"] == []
    assert not report["patched"] and not report["linear_patched"] and not report["active"]
    assert "fibuild" not in stderr
    assert report["hook_s"] < 0.05   # site.addsitedir of one folder, hook line included


def test_flashinfer_bench_variables_are_said_to_be_ignored_once(tmp_path):
    """FIB_ENABLE_TRACING / FIB_ENABLE_APPLY / FIB_DATASET_PATH are flashinfer-bench's: with
    flashinfer-bench absent, the process says once that fibuild ignores them and what to set."""
    report, stderr = _run_probe(tmp_path, {"FIB_ENABLE_TRACING": "1", "FIB_ENABLE_APPLY": "1",
                                           "FIB_DATASET_PATH": str(tmp_path / "ds")})
    assert not report["patched"] and not report["active"]
    lines = [ln for ln in stderr.splitlines() if "flashinfer-bench" in ln]
    assert len(lines) == 1, stderr
    assert "FIB_ENABLE_TRACING=1" in lines[0] and f"FIB_DATASET_PATH={tmp_path / 'ds'}" in lines[0]
    assert "FIBUILD_TRACE=1" in lines[0] and "ignored" in lines[0]


def test_trace_from_the_environment_patches_on_import_and_logs_one_line(tmp_path):
    root = tmp_path / "ws"
    (root / "defs").mkdir(parents=True)
    report, stderr = _run_probe(tmp_path, {"FIBUILD_TRACE": "1", "FIBUILD_ROOT": str(root)})
    assert report["patched"] and report["linear_patched"] and report["active"]
    lines = [ln for ln in stderr.splitlines() if "serving integration enabled" in ln]
    assert len(lines) == 1 and "(trace)" in lines[0] and str(root) in lines[0]
    assert (root / "registry" / "rmsnorm_h64" / "workloads.jsonl").is_file()   # flushed at exit


def test_a_bad_value_is_reported_and_nothing_is_patched(tmp_path):
    report, stderr = _run_probe(tmp_path, {"FIBUILD_APPLY": "maybe"})
    assert not report["patched"] and "FIBUILD_APPLY='maybe'" in stderr


def test_fibuild_run_traces_a_command(tmp_path):
    root = tmp_path / "ws"
    (root / "defs").mkdir(parents=True)
    script = tmp_path / "serve.py"
    script.write_text("import torch, flashinfer\n"
                      "flashinfer.silu_and_mul(torch.randn(3, 64, dtype=torch.bfloat16))\n"
                      "print('patched', hasattr(flashinfer.silu_and_mul, 'fibuild_memo'))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIBUILD_")}
    env.update(PYTHONPATH=os.pathsep.join([str(STUB_DIR)] + sys.path), FIBUILD_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "fibuild", "--root", str(root), "run", "--trace", "--",
                           sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "patched True" in proc.stdout
    assert (root / "registry" / "silu_and_mul_i32" / "workloads.jsonl").is_file()
    failing = subprocess.run([sys.executable, "-m", "fibuild", "--root", str(root), "run", "--apply", "--",
                              sys.executable, "-c", "raise SystemExit(3)"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert failing.returncode == 3
    usage = subprocess.run([sys.executable, "-m", "fibuild", "run", "--", "true"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert usage.returncode == 1 and "--trace and/or --apply" in usage.stderr
