"""FlashInfer level-10 dumps into workloads: the hand-made dump (FlashInfer 0.7.2's format),
the one made on a GPU when committed, broken dumps, and a bench run of the result."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flashinfer_dump_writer import (
    DECODE_PLAN_SIGNATURE,
    DECODE_RUN_SIGNATURE,
    DumpWriter,
    FakeWrapper,
    write_handmade_dump,
)
from safetensors.torch import load_file

from fibuild.dataset.dump_import import import_flashinfer_dump
from fibuild.dataset.dump_reader import parse_signature
from fibuild.dataset.trace_import import import_flashinfer_trace
from fibuild.errors import DatasetError
from fibuild.registry import Registry
from fibuild.spec.workspace import Workspace

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"
GQA = "gqa_paged_decode_h32_kv8_d128_ps1"


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    """The shipped definitions, without their declared workloads' registry."""
    shutil.copytree(ROOT / "defs", tmp_path / "ws" / "defs")
    return Workspace(tmp_path / "ws")


def _by_def(ws: Workspace) -> dict[str, list]:
    ws = Workspace(ws.root)
    return {name: [w for w in ws.workloads(name) if w.source != "declared"] for name in ws.definitions}


def test_handmade_dump_becomes_workloads(tmp_path, workspace):
    table = write_handmade_dump(tmp_path / "dump")
    report = import_flashinfer_dump(workspace, tmp_path / "dump")
    found = _by_def(workspace)
    assert sorted(w.axes["batch_size"] for w in found["rmsnorm_h4096"]) == [3, 5]
    assert [w.axes for w in found["fused_add_rmsnorm_h4096"]] == [{"batch_size": 2}]
    (decode,) = found[GQA]
    assert decode.axes == {"batch_size": 2, "num_pages": 12, "len_indptr": 3, "num_kv_indices": 5}
    assert {n: s.kind for n, s in decode.inputs.items()} == {
        "q": "random", "k_cache": "random", "v_cache": "random", "kv_indptr": "safetensors",
        "kv_indices": "safetensors", "sm_scale": "scalar"}
    assert decode.inputs["sm_scale"].value == pytest.approx(0.08838834764831845)
    blob = load_file(str(workspace.root / decode.inputs["kv_indices"].path))
    assert torch.equal(blob["kv_indices"], table["kv_indices"])  # cut to kv_indptr[-1]
    assert torch.equal(blob["kv_indptr"], table["kv_indptr"])
    # The second batch-3 rmsnorm call and the second decode run are the same workloads.
    assert report.unchanged["workload"] == 2
    (unmatched,) = report.skipped
    assert unmatched.kind == "call" and "hidden_size is 4096" in unmatched.reason
    assert unmatched.where.endswith("_rmsnorm_call0004")
    again = import_flashinfer_dump(Workspace(workspace.root), tmp_path / "dump")
    assert sum(again.written.values()) == 0


def test_at_most_two_workloads_per_axes(tmp_path, workspace):
    writer = DumpWriter(tmp_path / "dump")
    wrapper = FakeWrapper("BatchDecodeWithPagedKVCacheWrapper")
    k = torch.zeros(8, 1, 8, 128, dtype=torch.bfloat16)
    for first in range(4):  # same axes, different page tables
        indices = torch.tensor([first, 4, 5, 6], dtype=torch.int32)
        writer.call("BatchDecodeWithPagedKVCacheWrapper.plan", "flashinfer.decode", DECODE_PLAN_SIGNATURE,
                    (wrapper, torch.tensor([0, 2, 4], dtype=torch.int32), indices, torch.ones(2, dtype=torch.int32),
                     32, 8, 128, 1))
        writer.call("BatchDecodeWithPagedKVCacheWrapper.run", "flashinfer.decode", DECODE_RUN_SIGNATURE,
                    (wrapper, torch.zeros(2, 32, 128, dtype=torch.bfloat16), (k, k.clone())))
    report = import_flashinfer_dump(workspace, tmp_path / "dump")
    found = _by_def(workspace)[GQA]
    assert len(found) == 2 and report.unchanged["workload"] == 2
    # No sm_scale passed to plan(): 1/sqrt(head_dim), as FlashInfer uses.
    assert found[0].inputs["sm_scale"].value == pytest.approx(128 ** -0.5)


def test_run_without_plan_is_reported(tmp_path, workspace):
    writer = DumpWriter(tmp_path / "dump")
    k = torch.zeros(8, 1, 8, 128, dtype=torch.bfloat16)
    writer.call("BatchDecodeWithPagedKVCacheWrapper.run", "flashinfer.decode", DECODE_RUN_SIGNATURE,
                (FakeWrapper("BatchDecodeWithPagedKVCacheWrapper"), torch.zeros(2, 32, 128, dtype=torch.bfloat16),
                 (k, k.clone())))
    (skip,) = import_flashinfer_dump(workspace, tmp_path / "dump").skipped
    assert "no BatchDecodeWithPagedKVCacheWrapper.plan()" in skip.reason


def _one_call(tmp_path) -> Path:
    writer = DumpWriter(tmp_path / "dump")
    x = torch.zeros(2, 4096, dtype=torch.bfloat16)
    return writer.call("rmsnorm", "flashinfer.norm", "(input, weight, eps=1e-06)", (x, x[0].clone()))


@pytest.mark.parametrize("damage, file, line, words", [
    (lambda f: (f / "metadata.jsonl").write_text((f / "metadata.jsonl").read_text()[:-40]), "metadata.jsonl", 2,
     "malformed JSON line"),
    (lambda f: (f / "inputs.safetensors").write_bytes((f / "inputs.safetensors").read_bytes()[:-100]),
     "inputs.safetensors", 0, "truncated"),
    (lambda f: (f / "inputs.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"),
     "inputs.safetensors", 0, "not a safetensors file"),
    (lambda f: (f / "metadata.jsonl").write_text('{"event": "something else"}\n'), "metadata.jsonl", 1,
     "not a FlashInfer level-10 dump record"),
    (lambda f: ((f / "inputs.safetensors").rename(f / "inputs.pt"),
                (f / "metadata.jsonl").write_text(
                    (f / "metadata.jsonl").read_text().replace('"safetensors"', '"torch"'))),
     "inputs.pt", 0, "FLASHINFER_DUMP_SAFETENSORS=1"),
    (lambda f: (f / "metadata.jsonl").unlink(), "", 0, "without metadata.jsonl"),
])
def test_broken_or_foreign_dumps_are_named(tmp_path, workspace, damage, file, line, words):
    folder = _one_call(tmp_path)
    damage(folder)
    with pytest.raises(DatasetError) as info:
        import_flashinfer_dump(workspace, tmp_path / "dump")
    assert info.value.path == str(folder / file if file else folder) and info.value.line == line, str(info.value)
    assert words in str(info.value)
    assert not (workspace.root / "registry").exists()


def test_a_folder_that_is_no_dump_is_an_error(tmp_path, workspace):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no FlashInfer dump here"):
        import_flashinfer_dump(workspace, tmp_path / "empty")


def test_signature_parsing_reads_names_and_literal_defaults():
    sig = parse_signature(DECODE_PLAN_SIGNATURE)
    assert sig.positional[:8] == ("self", "indptr", "indices", "last_page_len", "num_qo_heads", "num_kv_heads",
                                  "head_dim", "page_size")
    rms = parse_signature("(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-06, out=None) -> torch.Tensor")
    assert rms.defaults == {"eps": 1e-06, "out": None}
    odd = parse_signature("(x, device=device(type='cuda'), *, y=<object object at 0x1>)")
    assert odd.positional == ("x", "device")


GPU_DUMP = FIXTURES / "flashinfer_dump" / "h200"


@pytest.mark.skipif(not GPU_DUMP.is_dir(), reason="the dump made on the GPU by benchmarks/device/"
                    "make_flashinfer_dump.py is not committed yet (tests/fixtures/flashinfer_dump/h200/)")
def test_gpu_dump_becomes_workloads(workspace):
    expected = json.loads((GPU_DUMP / "expected.json").read_text())
    report = import_flashinfer_dump(workspace, GPU_DUMP / "dump")
    found = _by_def(workspace)
    assert sorted(w.axes["batch_size"] for w in found["rmsnorm_h4096"]) == expected["rmsnorm_batch_sizes"]
    (decode,) = found[GQA]
    assert decode.axes == expected["decode_axes"]
    blob = load_file(str(workspace.root / decode.inputs["kv_indices"].path))
    assert blob["kv_indices"].tolist() == expected["kv_indices"]
    assert decode.inputs["sm_scale"].value == pytest.approx(expected["sm_scale"])
    assert [s.where.rsplit("_pid", 1)[-1] for s in report.skipped if s.kind == "call"] == expected["unmatched"]


def test_imported_safetensors_workloads_run_in_bench(tmp_path, settings_env):
    """The dataset's blob workload and a dump's run on CPU through `fibuild bench`."""
    ws = Workspace(tmp_path / "ws")
    (tmp_path / "ws" / "defs").mkdir(parents=True)
    import_flashinfer_trace(ws, FIXTURES / "flashinfer_trace", definitions=[GQA])
    write_handmade_dump(tmp_path / "dump")
    import_flashinfer_dump(Workspace(ws.root), tmp_path / "dump")
    shutil.copytree(ROOT / "solutions" / GQA / "torch_padded", ws.root / "solutions" / GQA / "torch_padded")
    library = "solutions/_lib/gqa_decode_torch_padded"  # the library the solution names
    shutil.copytree(ROOT / library, ws.root / library)
    uuids = {w.uuid for w in Workspace(ws.root).workloads(GQA)}
    assert len(uuids) == 2
    env = {**__import__("os").environ, **settings_env, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "fibuild", "--root", str(ws.root), "bench", GQA, "--device", "cpu",
                          "--solution", "torch_padded"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    evs = Registry(ws.registry_dir).read(GQA)
    assert {e.workload_uuid for e in evs} == uuids
    assert {e.status for e in evs} == {"PASSED"}, [e.error for e in evs]
