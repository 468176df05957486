"""The ``vllm.general_plugins`` entry point: declared in pyproject.toml, loaded by the vLLM
stand-in's loader (vLLM 0.34.0 ``vllm/plugins/__init__.py``) in a worker-like process that the
``.pth`` hook did not reach, it enables fibuild there exactly when FIBUILD_TRACE/APPLY says so."""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

from integration_helpers import FIXTURES

from fibuild.integrations.activation import active
from fibuild.integrations.vllm_plugin import register

REPO = Path(__file__).resolve().parents[3]

# What a vLLM worker does (v1/worker/worker_base.py init_worker, then the model): plugins
# first, then the platform's kernels (platforms/cuda.py import_kernels), then the layers.
WORKER = textwrap.dedent("""
    import json, sys
    import torch
    from vllm.plugins import load_general_plugins
    load_general_plugins()
    import vllm._C_stable_libtorch
    from vllm.model_executor.layers.activation import SiluAndMul
    from vllm.model_executor.layers.layernorm import RMSNorm
    norm, act = RMSNorm(64, eps=1e-5, dtype=torch.bfloat16), SiluAndMul()
    for batch in (3, 5):
        x = torch.randn(batch, 64, dtype=torch.bfloat16)
        norm(x)
        norm(x.clone(), torch.randn(batch, 64, dtype=torch.bfloat16))
        act(torch.randn(batch, 72, dtype=torch.bfloat16))
    from fibuild.integrations import stats
    print(json.dumps({"stats": stats(), "site": "site" in sys.modules,
                      "ops_calls": dict(vllm._C_stable_libtorch.CALLS)}))
""")


def _entry_point() -> str:
    text = (REPO / "pyproject.toml").read_text()
    if tomllib is not None:
        return tomllib.loads(text)["project"]["entry-points"]["vllm.general_plugins"]["fibuild"]
    section = text.split('[project.entry-points."vllm.general_plugins"]', 1)[1]
    return section.split("fibuild = ", 1)[1].splitlines()[0].strip().strip('"')


def test_pyproject_registers_the_plugin_in_vllms_group():
    assert _entry_point() == "fibuild.integrations.vllm_plugin:register"


def _worker(tmp_path, env_extra):
    """Run WORKER with ``python -S`` (no site: no .pth hook), fibuild's entry point in a
    distribution of its own on the path; returns its JSON line."""
    dist = tmp_path / "dists" / "fibuild_plugin-0.0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fibuild-plugin\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text(f"[vllm.general_plugins]\nfibuild = {_entry_point()}\n")
    paths = [str(REPO), str(tmp_path / "dists"), str(FIXTURES / "vllm_stub"), *site.getsitepackages()]
    user = site.getusersitepackages()
    if isinstance(user, str) and os.path.isdir(user):
        paths.append(user)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIBUILD_", "VLLM_"))}
    env.update(PYTHONPATH=os.pathsep.join(paths), FIBUILD_CACHE_DIR=str(tmp_path / "cache"), **env_extra)
    proc = subprocess.run([sys.executable, "-S", "-c", WORKER], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_worker_the_pth_hook_did_not_reach_traces_through_the_plugin(tmp_path):
    root = tmp_path / "ws"
    (root / "defs").mkdir(parents=True)
    out = _worker(tmp_path, {"FIBUILD_TRACE": "1", "FIBUILD_ROOT": str(root)})
    assert out["site"] is False
    for api in ("torch.ops._C.rms_norm", "torch.ops._C.fused_add_rms_norm", "torch.ops._C.silu_and_mul"):
        assert out["stats"][api]["calls"] == 2 and out["stats"][api]["original"] == 2, api
    assert out["ops_calls"] == {"rms_norm": 2, "fused_add_rms_norm": 2, "silu_and_mul": 2}
    from fibuild.spec.workspace import Workspace

    ws = Workspace(root)
    for name, axis in (("rmsnorm_h64", "batch_size"), ("fused_add_rmsnorm_h64", "batch_size"),
                       ("silu_and_mul_i36", "num_tokens")):
        traced = sorted(w.axes[axis] for w in ws.workloads(ws.definition(name)) if w.source != "declared")
        assert traced == [3, 5], name
    # The same worker, with VLLM_PLUGINS naming another plugin: nothing is patched or traced.
    other = _worker(tmp_path / "other", {"FIBUILD_TRACE": "1", "FIBUILD_ROOT": str(tmp_path / "other-ws"),
                                         "VLLM_PLUGINS": "something_else"})
    assert other["stats"] == {} and not (tmp_path / "other-ws" / "registry").exists()


def test_the_plugin_does_nothing_without_the_variables(monkeypatch):
    for name in ("FIBUILD_TRACE", "FIBUILD_APPLY"):
        monkeypatch.delenv(name, raising=False)
    register()
    assert active() is None
    monkeypatch.setenv("FIBUILD_TRACE", "0")
    register()
    assert active() is None


def test_the_plugin_never_raises_on_a_bad_setting(monkeypatch, capsys):
    monkeypatch.setenv("FIBUILD_APPLY", "maybe")
    register()
    assert active() is None
    assert "FIBUILD_APPLY='maybe'" in capsys.readouterr().err


def test_the_plugin_enables_once_however_often_vllm_calls_it(monkeypatch, small_ws):
    monkeypatch.setenv("FIBUILD_APPLY", "1")
    monkeypatch.setenv("FIBUILD_ROOT", str(small_ws.root))
    register()
    first = active()
    register()
    assert first is not None and active() is first and first.session.apply
