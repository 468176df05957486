"""Chains: the manifest's checks, the evaluation on CPU (slots timed in sequence, a slower
candidate swapped in and rejected, a faster one kept), the records beside the definition's
evaluations, and the resolver preferring a chain's choice over the per-kernel ranking."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fibuild.cli import main
from fibuild.compile.keys import solution_digest
from fibuild.errors import FibuildError, ManifestError
from fibuild.registry import Registry
from fibuild.spec.chain import find_chain, load_chain, slot_workload
from fibuild.spec.model import Evaluation, LatencyStats
from fibuild.spec.workspace import Workspace, shipped_root

SHIPPED = shipped_root()
CHAIN = """\
name: mlp
axes: {rows: rows of the activations}
slots:
  - {name: norm, definition: rmsnorm_h4096, axes: {batch_size: rows}}
  - {name: act, definition: silu_and_mul_i14336, axes: {num_tokens: rows}}
workloads:
  - axes: {rows: 2}
"""
# A second rmsnorm candidate that is right but slow: the chain must keep torch_fp32.
SLOW = '''\
import time
import torch

def rmsnorm(x, w):
    time.sleep(0.004)
    y = x.float()
    return (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * w.float()).to(x.dtype)
'''


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    for name, op in (("rmsnorm_h4096", "rmsnorm"), ("silu_and_mul_i14336", "silu_and_mul")):
        (root / "defs" / op).mkdir(parents=True, exist_ok=True)
        shutil.copy(SHIPPED / "defs" / op / f"{name}.yaml", root / "defs" / op)
        shutil.copytree(SHIPPED / "solutions" / name / "torch_fp32", root / "solutions" / name / "torch_fp32")
    slow = root / "solutions" / "rmsnorm_h4096" / "torch_slow"
    slow.mkdir()
    (slow / "kernel.py").write_text(SLOW)
    (slow / "solution.yaml").write_text("name: torch_slow\ndefinition: rmsnorm_h4096\nlanguage: python\n"
                                        "entry_point: kernel.py::rmsnorm\nsources: [kernel.py]\n"
                                        "target_hardware: [cpu]\n")
    (root / "registry").mkdir()
    (root / "chains").mkdir()
    (root / "chains" / "mlp.yaml").write_text(CHAIN)
    monkeypatch.setenv("FIBUILD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FIBUILD_ROOT", str(root))
    monkeypatch.setenv("FIBUILD_DEVICE", "cpu")
    return root


def _problems(tmp_path, text: str, name: str = "c") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as info:
        load_chain(path, Workspace(SHIPPED).definitions)
    return str(info.value)


def test_the_shipped_chain_loads_and_every_slot_has_a_workload():
    ws = Workspace(SHIPPED)
    chain = find_chain(ws.root, "llama3_8b_decode_layer", ws.definitions)
    assert [s.definition for s in chain.slots][:3] == ["fused_add_rmsnorm_h4096", "gemm_n6144_k4096_bf16",
                                                      "gqa_paged_decode_h32_kv8_d128_ps1"]
    for axes in chain.workloads:
        for slot in chain.slots:
            defn = ws.definition(slot.definition)
            assert slot_workload(defn, slot, axes, ws.workloads(defn)).axes[defn.var_axes[0]] == axes["batch_size"]


def test_bad_chains_say_what_is_wrong(tmp_path):
    text = _problems(tmp_path, CHAIN.replace("rmsnorm_h4096", "rmsnorm_h999").replace("num_tokens: rows",
                                                                                    "num_tokens: cols"))
    assert "/slots/0/definition" in text and "rmsnorm_h999" in text
    assert "/slots/1/axes/num_tokens" in text and "'cols' is not an axis of the chain" in text
    text = _problems(tmp_path, CHAIN.replace("{rows: 2}", "{rows: 2, cols: 3}").replace("batch_size: rows",
                                                                                       "hidden: rows"))
    assert "unknown ['cols']" in text and "'hidden' is not a var axis of rmsnorm_h4096" in text
    assert "differs from the file's 'other'" in _problems(tmp_path, CHAIN, name="other")
    assert "/slots" in _problems(tmp_path, CHAIN.replace("slots:\n  - {name: norm", "slots: []\nx:\n  - {name: norm"))


def test_a_slot_without_a_workload_is_an_error():
    ws = Workspace(SHIPPED)
    chain = find_chain(ws.root, "llama3_8b_decode_layer", ws.definitions)
    attention = chain.slots[2]
    defn = ws.definition(attention.definition)
    with pytest.raises(FibuildError, match="no workload of gqa_paged_decode_h32_kv8_d128_ps1 has batch_size=3"):
        slot_workload(defn, attention, {"batch_size": 3, "kv_tokens": 7}, ws.workloads(defn))


def _passed(ws, definition: str, solution: str, us: float, rows: int) -> Evaluation:
    defn = ws.definition(definition)
    return Evaluation(definition=definition, solution=solution, solution_digest=solution_digest(
        defn, ws.solution(f"{definition}/{solution}")), build_key="", workload_uuid=f"w{rows}",
        axes={defn.var_axes[0]: rows}, status="PASSED", device=_slug(),
        latency=LatencyStats(us, us, us, us, 5), timestamp="2026-12-01T00:00:00Z")


def _slug() -> str:
    from fibuild.devices import Device

    return Device.parse("cpu").slug


def test_chain_keeps_the_faster_candidate_records_it_and_the_resolver_prefers_it(workspace, capsys, monkeypatch):
    ws = Workspace(workspace)
    registry = Registry(ws.registry_dir)
    # Alone, the slow solution measured faster (as a kernel can, and lose in sequence).
    registry.append(_passed(ws, "rmsnorm_h4096", "torch_slow", 1.0, 2))
    registry.append(_passed(ws, "rmsnorm_h4096", "torch_fp32", 9.0, 2))
    registry.append(_passed(ws, "silu_and_mul_i14336", "torch_fp32", 9.0, 2))
    import fibuild

    assert fibuild.resolve("rmsnorm_h4096", {"batch_size": 2}).solution_name == "torch_slow"

    assert main(["chain", "mlp", "--layers", "2", "--iters", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (result,) = out["results"]
    slots = {s["slot_name"]: s for s in result["slots"]}
    assert slots["norm"]["solution"] == "torch_fp32"  # the seed (torch_slow) lost in sequence
    assert slots["norm"]["alternatives_us"]["torch_slow"] > slots["norm"]["alternatives_us"]["torch_fp32"]
    assert slots["act"]["solution"] == "torch_fp32" and slots["act"]["axes"] == {"num_tokens": 2}
    path = Path(ws.registry_dir) / "rmsnorm_h4096" / "chains" / f"{_slug()}.jsonl"
    (line,) = path.read_text().splitlines()
    assert json.loads(line)["chain"] == "mlp"

    res = fibuild.resolve("rmsnorm_h4096", {"batch_size": 2})
    assert res.solution_name == "torch_fp32"
    assert any("by chain mlp" in str(d) for d in res.decisions), res.decisions
    # The chain ran with dependent launch on (FIBUILD_PDL's default): launched without, it does not count.
    assert json.loads(line)["pdl"] is True
    monkeypatch.setenv("FIBUILD_PDL", "0")
    assert fibuild.resolve("rmsnorm_h4096", {"batch_size": 2}).solution_name == "torch_slow"
    monkeypatch.delenv("FIBUILD_PDL")
    # Elsewhere the per-kernel ranking still decides.
    registry.append(_passed(ws, "rmsnorm_h4096", "torch_slow", 1.0, 64))
    registry.append(_passed(ws, "rmsnorm_h4096", "torch_fp32", 9.0, 64))
    assert fibuild.resolve("rmsnorm_h4096", {"batch_size": 64}).solution_name == "torch_slow"


def test_a_stale_chain_record_is_ignored(workspace, capsys):
    ws = Workspace(workspace)
    registry = Registry(ws.registry_dir)
    registry.append(_passed(ws, "rmsnorm_h4096", "torch_slow", 1.0, 2))
    registry.append(_passed(ws, "rmsnorm_h4096", "torch_fp32", 9.0, 2))
    registry.append_chain({"chain": "mlp", "definition": "rmsnorm_h4096", "device": _slug(),
                           "axes": {"batch_size": 2}, "solution": "torch_fp32", "solution_digest": "old",
                           "chain_latency_us": 5.0, "timestamp": "2026-12-02T00:00:00Z"})
    import fibuild

    assert fibuild.resolve("rmsnorm_h4096", {"batch_size": 2}).solution_name == "torch_slow"
    with pytest.raises(FibuildError, match="chain_latency_us"):
        registry.append_chain({"chain": "mlp", "definition": "rmsnorm_h4096", "device": _slug()})


def test_an_unknown_chain_lists_the_known_ones(workspace, capsys):
    assert main(["chain", "nope"]) == 1
    assert "no chain 'nope'" in capsys.readouterr().err and "mlp"
