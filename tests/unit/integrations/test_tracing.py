"""Tracing: valid workloads and blobs, dedup, several writers, a killed writer, the report."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

import fibuild
from fibuild.bench.inputs import make_inputs
from fibuild.spec.calling import load_reference
from fibuild.spec.manifest import load_workloads_jsonl
from fibuild.spec.workspace import Workspace

BF16 = torch.bfloat16
WORKER = Path(__file__).with_name("trace_worker.py")


def test_traced_workloads_are_valid_and_benchable_with_their_blobs(flashinfer_stub, tmp_path):
    root = tmp_path / "ws"
    (root / "defs").mkdir(parents=True)
    fibuild.enable(trace=True, root=root, per_key=2, flush_every=1000)
    import flashinfer

    w = torch.rand(64, dtype=BF16)
    for batch in (1, 1, 1, 8):
        flashinfer.rmsnorm(torch.randn(batch, 64, dtype=BF16), w, 1e-6)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(8))
    indptr = torch.tensor([0, 5, 9, 16], dtype=torch.int32)
    indices = torch.randperm(40)[:20].to(torch.int32)   # longer than indptr[-1]: a buffer
    wrapper.plan(indptr, indices, torch.ones(3, dtype=torch.int32), 8, 2, 16, 1, q_data_type=BF16, sm_scale=0.3)
    q = torch.randn(3, 8, 16, dtype=BF16)
    kc, vc = torch.randn(40, 2, 16, dtype=BF16), torch.randn(40, 2, 16, dtype=BF16)
    expected = wrapper.run(q, (kc, vc), return_lse=True)
    assert not (root / "registry").exists() or not list((root / "registry").glob("*/workloads.jsonl"))  # buffered
    fibuild.disable()   # flushes

    ws = Workspace(root)
    assert ws.validate() == []
    norm = ws.definition("rmsnorm_h64")
    assert "1e-06" in norm.reference
    assert sorted(w.axes["batch_size"] for w in ws.workloads(norm) if w.source != "declared") == [1, 8]
    decode = ws.definition("gqa_paged_decode_h8_kv2_d16_ps1")
    (traced,) = [w for w in ws.workloads(decode) if w.source != "declared"]
    assert traced.axes == {"batch_size": 3, "num_pages": 40, "len_indptr": 4, "num_kv_indices": 16}
    args = make_inputs(decode, traced, reference_ns=load_reference(decode))
    assert torch.equal(args[3], indptr) and torch.equal(args[4], indices[:16]) and args[5] == 0.3
    # the traced structure reproduces the call: the reference on the caller's tensors agrees
    out, lse = load_reference(decode)["run"](q, kc.unsqueeze(1), vc.unsqueeze(1), *args[3:])
    torch.testing.assert_close(out.float(), expected[0].float(), atol=2e-2, rtol=2e-2)


def test_existing_workloads_count_towards_dedup(flashinfer_stub, tmp_path):
    root = tmp_path / "ws"
    (root / "defs").mkdir(parents=True)
    import flashinfer

    for _ in range(2):
        fibuild.enable(trace=True, root=root, per_key=1)
        flashinfer.silu_and_mul(torch.randn(5, 64, dtype=BF16))
        fibuild.disable()
    lines = (root / "registry" / "silu_and_mul_i32" / "workloads.jsonl").read_text().splitlines()
    assert len(lines) == 1


def test_several_processes_record_each_shape_once(tmp_path):
    """4 processes tracing the same shapes at once (as the ranks of one server do): the
    flush re-reads the file under its lock, so each shape is kept per_key (1) times in all,
    and the blobs of the dropped duplicates are removed."""
    root = tmp_path / "ws"
    (root / "defs").mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(root), str(seed), "6"], env=env)
             for seed in range(4)]
    assert [p.wait(timeout=600) for p in procs] == [0] * 4
    ws = Workspace(root)
    defn = ws.definition("rmsnorm_h64")
    loaded = load_workloads_jsonl(root / "registry" / "rmsnorm_h64" / "workloads.jsonl", defn)
    assert sorted(w.axes["batch_size"] for w in loaded) == [1001, 1002, 1003, 1004, 1005, 1006]
    decode = "gqa_paged_decode_h8_kv2_d16_ps1"
    assert len(ws.workloads(decode)) == 1
    assert len(list((root / "registry" / decode / "blobs").iterdir())) == 1
    assert ws.validate() == []
    calls = [json.loads(line) for line in (root / "registry" / "_trace" / "calls.jsonl").read_text().splitlines()]
    assert sum(c["calls"] for c in calls if c["definition"] == "rmsnorm_h64") == 24


def test_sigkill_mid_trace_leaves_a_parseable_file(tmp_path):
    root = tmp_path / "ws"
    (root / "defs").mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, str(WORKER), str(root), "0", "20", "loop"], env=env,
                            stdout=subprocess.PIPE, text=True)
    for _ in range(3):
        assert proc.stdout.readline().startswith("flushed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    ws = Workspace(root)
    loaded = load_workloads_jsonl(root / "registry" / "rmsnorm_h64" / "workloads.jsonl", ws.definition("rmsnorm_h64"))
    assert len(loaded) >= 60
    assert ws.validate() == []
    blobs = list((root / "registry" / "gqa_paged_decode_h8_kv2_d16_ps1" / "blobs").iterdir())
    assert [b.suffix for b in blobs] == [".safetensors"]   # no temporary left behind


def test_trace_report_lists_definitions_keys_and_unmapped_calls(flashinfer_stub, tmp_path, capsys):
    from fibuild.cli import main

    root = tmp_path / "ws"
    (root / "defs").mkdir(parents=True)
    fibuild.enable(trace=True, root=root)
    import flashinfer

    for _ in range(3):
        flashinfer.rmsnorm(torch.randn(2, 64, dtype=BF16), torch.rand(64, dtype=BF16), 1e-5)
    flashinfer.rmsnorm(torch.randn(2, 64, dtype=BF16), torch.rand(64, dtype=torch.float16), 1e-5)
    torch.nn.functional.linear(torch.randn(2, 64), torch.randn(8, 64), torch.randn(8))
    fibuild.disable()
    assert main(["--root", str(root), "trace", "report", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["definitions"]["rmsnorm_h64"]["keys"] == [{"axes": {"batch_size": 2}, "calls": 3}]
    assert report["definitions"]["rmsnorm_h64"]["workloads"] == 1
    reasons = {(r["op"], r["reason"].split(" ")[0]): r["calls"] for r in report["unmapped"]}
    assert reasons == {("rmsnorm", "dtypes"): 1, ("gemm", "bias"): 1}
    assert main(["--root", str(root), "trace", "report"]) == 0
    text = capsys.readouterr().out
    assert "rmsnorm_h64  (rmsnorm): 3 calls" in text and "gemm: bias is given" in text
