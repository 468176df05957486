"""flashinfer-trace import and export on the public-format fixture in tests/fixtures/flashinfer_trace."""
from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import pytest
import yaml

from fibuild.compile.keys import solution_digest
from fibuild.dataset.trace_export import export_flashinfer_trace
from fibuild.dataset.trace_import import import_flashinfer_trace
from fibuild.errors import DatasetError
from fibuild.registry import Registry
from fibuild.spec.workspace import Workspace

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "flashinfer_trace"
SHIPPED = Path(__file__).resolve().parents[3]
SUPPORTED = {"rmsnorm_h4096", "fused_add_rmsnorm_h4096", "gemm_n4096_k4096", "gqa_paged_decode_h32_kv8_d128_ps1",
             "mla_paged_decode_h16_ckv512_kpe64_ps1", "top_k_top_p_sampling_from_probs_v128256"}


def _workspace(path: Path) -> Workspace:
    (path / "defs").mkdir(parents=True, exist_ok=True)
    return Workspace(path)


def _import(path: Path, source: Path = FIXTURE, **kw):
    return import_flashinfer_trace(_workspace(path), source, **kw)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def test_import_writes_every_supported_item_and_reports_the_rest(tmp_path):
    report = _import(tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    assert set(ws.definitions) == SUPPORTED
    assert ws.validate() == []
    assert report.written["definition"] == 6 and report.written["workload"] == 8
    assert report.written["blob"] == 2 and report.written["evaluation"] == 8
    skipped = {(s.kind, s.name): s for s in report.skipped}
    assert "float4_e2m1" in skipped[("definition", "gemm_fp4_n2048_k7168")].reason
    assert "binding 'torch'" in skipped[("solution", "rmsnorm_h4096/rmsnorm_cuda_torch_ext")].reason
    assert "tilelang" in skipped[("solution", "rmsnorm_h4096/rmsnorm_tilelang_v1")].reason
    trace_skip = [s for s in report.skipped if s.kind == "evaluation"]
    assert len(trace_skip) == 1 and trace_skip[0].where.endswith("rmsnorm_h4096.jsonl:9")
    sols = {s.name: s for s in ws.solutions("rmsnorm_h4096")}
    assert {s.language for s in sols.values()} == {"python", "triton", "cuda", "cpp"}
    # The dataset's default is destination passing; fibuild writes it out explicitly.
    assert sols["rmsnorm_cuda_v1"].destination_passing_style is True
    assert sols["rmsnorm_torch_v1"].destination_passing_style is False
    assert (sols["rmsnorm_cpp_v1"].path / "src" / "rmsnorm.cpp").read_text().startswith("#include <tvm/ffi")


def test_import_keeps_dataset_fields_and_null_entrypoint(tmp_path):
    _import(tmp_path / "ws")
    data = yaml.safe_load((tmp_path / "ws/defs/fused_add_rmsnorm/fused_add_rmsnorm_h4096.yaml").read_text())
    assert "custom_inputs_entrypoint" in data and data["custom_inputs_entrypoint"] is None
    gqa = Workspace(tmp_path / "ws").definition("gqa_paged_decode_h32_kv8_d128_ps1")
    assert gqa.constraints == ("len_indptr == batch_size + 1", "num_kv_indices == kv_indptr[-1].item()")
    assert "fi_api:flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper" in gqa.tags


def test_import_maps_every_input_kind_and_copies_blobs(tmp_path):
    _import(tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    (workload,) = ws.workloads("gqa_paged_decode_h32_kv8_d128_ps1")
    kinds = {name: spec.kind for name, spec in workload.inputs.items()}
    assert kinds == {"q": "random", "k_cache": "random", "v_cache": "random", "kv_indptr": "safetensors",
                     "kv_indices": "safetensors", "sm_scale": "scalar"}
    assert workload.inputs["sm_scale"].value == pytest.approx(0.08838834764831843)
    blob = workload.inputs["kv_indices"].path
    assert blob.startswith("registry/gqa_paged_decode_h32_kv8_d128_ps1/blobs/")
    source = next((FIXTURE / "blob").rglob("gqa_*.safetensors"))
    assert (tmp_path / "ws" / blob).read_bytes() == source.read_bytes()
    assert workload.axes == {"batch_size": 2, "num_pages": 12, "len_indptr": 3, "num_kv_indices": 5}


def test_import_records_every_status_under_the_hardware_slug(tmp_path):
    _import(tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    registry = Registry(ws.registry_dir)
    assert registry.devices("rmsnorm_h4096") == ["nvidia-h100", "nvidia-h200"]
    evs = registry.read("rmsnorm_h4096")
    assert {e.status for e in evs} == {"PASSED", "INCORRECT_SHAPE", "INCORRECT_NUMERICAL", "INCORRECT_DTYPE",
                                       "RUNTIME_ERROR", "COMPILE_ERROR", "TIMEOUT"}
    passed = next(e for e in evs if e.status == "PASSED" and e.device == "nvidia-h100")
    assert passed.latency.median_us == pytest.approx(12.3) and passed.speedup == pytest.approx(3.707317073170732)
    assert passed.timestamp == "2025-10-01T12:00:00Z"
    naive = next(e for e in evs if e.device == "nvidia-h200")
    assert naive.timestamp == "2025-10-01T12:00:01.250000Z"  # naive times are UTC
    assert naive.environment["correctness_extra"] == {"cos_sim": 1.0}
    sol = ws.solution("rmsnorm_h4096/rmsnorm_torch_v1")
    assert passed.solution_digest == solution_digest(ws.definition("rmsnorm_h4096"), sol)


def test_reimport_writes_nothing(tmp_path):
    _import(tmp_path / "ws")
    before = _tree(tmp_path / "ws")
    again = _import(tmp_path / "ws")
    assert sum(again.written.values()) == 0
    assert again.unchanged["definition"] == 6 and again.unchanged["evaluation"] == 8
    assert _tree(tmp_path / "ws") == before


def test_round_trip_is_a_fixed_point(tmp_path):
    _import(tmp_path / "ws1")
    export_flashinfer_trace(Workspace(tmp_path / "ws1"), tmp_path / "ds1")
    _import(tmp_path / "ws2", tmp_path / "ds1")
    export_flashinfer_trace(Workspace(tmp_path / "ws2"), tmp_path / "ds2")
    assert _tree(tmp_path / "ws1") == _tree(tmp_path / "ws2")
    assert _tree(tmp_path / "ds1") == _tree(tmp_path / "ds2")


def test_export_writes_the_dataset_files_back(tmp_path):
    _import(tmp_path / "ws")
    export_flashinfer_trace(Workspace(tmp_path / "ws"), tmp_path / "ds")
    for name in SUPPORTED:
        (original,) = (FIXTURE / "definitions").rglob(f"{name}.json")
        exported = tmp_path / "ds" / original.relative_to(FIXTURE)
        assert json.loads(exported.read_text()) == json.loads(original.read_text()), name
        assert list(json.loads(exported.read_text())) == list(json.loads(original.read_text()))  # key order
    for original in (FIXTURE / "workloads").rglob("*.jsonl"):
        exported = tmp_path / "ds" / original.relative_to(FIXTURE)
        assert exported.read_text() == original.read_text()
    for original in (FIXTURE / "blob").rglob("*.safetensors"):
        assert filecmp.cmp(original, tmp_path / "ds" / original.relative_to(FIXTURE), shallow=False)
    traces_file = tmp_path / "ds/traces/rmsnorm/rmsnorm_h4096.jsonl"
    traces = [json.loads(line) for line in traces_file.read_text().splitlines()]
    originals = [json.loads(line) for line in (FIXTURE / "traces/rmsnorm/rmsnorm_h4096.jsonl").read_text().splitlines()]
    for line in originals + traces:
        line["evaluation"]["timestamp"] = line["evaluation"]["timestamp"].rstrip("Z")
    key = lambda t: (t["solution"], t["workload"]["uuid"])  # noqa: E731
    kept = (t for t in originals if t["solution"] != "rmsnorm_cuda_torch_ext")
    assert sorted(traces, key=key) == sorted(kept, key=key)


def test_flashinfer_bench_loads_the_export(tmp_path):
    data = pytest.importorskip("flashinfer_bench.data")
    _import(tmp_path / "ws")
    export_flashinfer_trace(Workspace(tmp_path / "ws"), tmp_path / "ds")
    traces = data.TraceSet.from_path(str(tmp_path / "ds"))
    assert set(traces.definitions) == SUPPORTED
    assert sum(len(v) for v in traces.solutions.values()) == 5
    assert sum(len(v) for v in traces.workloads.values()) == 8
    assert sum(len(v) for v in traces.traces.values()) == 8


def _dataset_solution_names(ds: Path) -> list[str]:
    return [json.loads(p.read_text())["name"] for p in sorted((ds / "solutions").rglob("*.json"))]


def test_exported_solution_names_are_unique_and_import_maps_them_back(tmp_path):
    """Solution names that several definitions share (``torch_matmul``, ``cpp_bf16``) are
    exported as ``<definition>__<name>``, the dataset's traces name them so, and the import
    gives back the workspace's names: export → import → export writes the same files."""
    shipped = Workspace(SHIPPED)
    export_flashinfer_trace(shipped, tmp_path / "ds")
    names = _dataset_solution_names(tmp_path / "ds")
    assert len(names) == len(set(names)) == len([s for s in shipped.solutions()
                                                 if not _unexportable(shipped, s.definition)])
    shared = {s.name for s in shipped.solutions()} - {n for n in names if "__" not in n}
    assert "torch_matmul" in shared and "gemm_n4096_k4096__torch_matmul" in names
    assert "rmsnorm_h4096__cpp_bf16" in names or "rmsnorm_h4096__torch_fp32" in names
    traced = {json.loads(ln)["solution"] for p in (tmp_path / "ds" / "traces").rglob("*.jsonl")
              for ln in p.read_text().splitlines()}
    assert traced and traced <= set(names)

    ws = Workspace(tmp_path / "ws")
    (tmp_path / "ws" / "defs").mkdir(parents=True)
    import_flashinfer_trace(ws, tmp_path / "ds")
    ws = Workspace(tmp_path / "ws")
    # (a grid's variants, ``sol[K=v]``, are exported one by one and come back as no solution)
    exported = {s.qualified_name for s in shipped.solutions()
                if not _unexportable(shipped, s.definition) and "[" not in s.name}
    assert {s.qualified_name for s in ws.solutions() if "[" not in s.name} == exported
    assert all("__" not in s.name for s in ws.solutions())
    export_flashinfer_trace(ws, tmp_path / "ds2")
    plain = [n for n in names if "[" not in n]
    assert [n for n in _dataset_solution_names(tmp_path / "ds2") if "[" not in n] == plain
    def who(ds):  # what each trace line names: the solution by its dataset name
        return sorted((t["definition"], t["solution"], t["workload"]["uuid"], t["evaluation"]["status"])
                      for p in (ds / "traces").rglob("*.jsonl") for t in map(json.loads, p.read_text().splitlines())
                      if "[" not in t["solution"])
    assert who(tmp_path / "ds2") == who(tmp_path / "ds")


def _unexportable(ws: Workspace, definition: str) -> bool:
    """In-place and distributed definitions have no dataset form (reported, not written)."""
    defn = ws.definition(definition)
    return defn.distributed is not None or any(t.inplace for t in defn.outputs)


def test_flashinfer_bench_loads_the_full_shipped_export(tmp_path):
    """The whole shipped library, exported, loads in flashinfer-bench (0.1.2 in CI)."""
    data = pytest.importorskip("flashinfer_bench.data")
    shipped = Workspace(SHIPPED)
    report = export_flashinfer_trace(shipped, tmp_path / "ds")
    traces = data.TraceSet.from_path(str(tmp_path / "ds"))
    assert len(traces.definitions) == report.written["definition"] >= 10
    assert sum(len(v) for v in traces.solutions.values()) == report.written["solution"]
    assert sum(len(v) for v in traces.traces.values()) == report.written["evaluation"] > 0


def test_export_reports_what_the_dataset_cannot_hold(tmp_path):
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(SHIPPED / "defs", tmp_path / "ws" / "defs")
    report = export_flashinfer_trace(ws, tmp_path / "ds", [
        "fused_add_rmsnorm_h4096", "gqa_paged_decode_h32_kv8_d128_ps1", "allreduce_add_rmsnorm_h4096"])
    reasons = {s.name: s.reason for s in report.skipped}
    assert "in place" in reasons["fused_add_rmsnorm_h4096"]
    assert "distributed" in reasons["allreduce_add_rmsnorm_h4096"]
    custom = [s for s in report.skipped if s.kind == "workload"]
    assert custom and all("custom_inputs_entrypoint" in s.reason for s in custom)
    assert (tmp_path / "ds/definitions/gqa_paged/gqa_paged_decode_h32_kv8_d128_ps1.json").is_file()
    assert ("definition gqa_paged_decode_h32_kv8_d128_ps1: baseline ['flashinfer_tc', 'flashinfer', "
            "'torch_padded'] has no flashinfer-trace field") in report.notes


def test_a_differing_workspace_definition_is_kept_and_reported(tmp_path):
    shutil.copytree(SHIPPED / "defs", tmp_path / "ws" / "defs")
    before = (tmp_path / "ws/defs/rmsnorm/rmsnorm_h4096.yaml").read_bytes()
    report = _import(tmp_path / "ws", definitions=["rmsnorm_h4096"])
    (skip,) = [s for s in report.skipped if s.kind == "definition"]
    assert skip.name == "rmsnorm_h4096" and "differs" in skip.reason
    assert report.dependents[("workload", "rmsnorm_h4096")] == 3
    assert (tmp_path / "ws/defs/rmsnorm/rmsnorm_h4096.yaml").read_bytes() == before


# --- bad input ---------------------------------------------------------------------------

def _broken(tmp_path: Path, rel: str, edit) -> Path:
    data = tmp_path / "ds"
    shutil.copytree(FIXTURE, data)
    path = data / rel
    path.write_text(edit(path.read_text()))
    return data


GQA_WORKLOADS = "workloads/gqa_paged/gqa_paged_decode_h32_kv8_d128_ps1.jsonl"
RMS_WORKLOADS = "workloads/rmsnorm/rmsnorm_h4096.jsonl"


@pytest.mark.parametrize("rel, edit, line, words", [
    (RMS_WORKLOADS, lambda t: t.replace('"batch_size": 7}', '"batch_size": 7', 1), 2, "malformed JSON"),
    (GQA_WORKLOADS, lambda t: t.replace('"./blob/', '"./blob/../../', 1), 1, "leaves the dataset root"),
    (GQA_WORKLOADS, lambda t: t.replace('"./blob/', '"/etc/blob/', 1), 1, "absolute"),
    (GQA_WORKLOADS, lambda t: t.replace('"tensor_key": "kv_indptr"', '"tensor_key": "nope"', 1), 1, "no tensor 'nope'"),
    (RMS_WORKLOADS, lambda t: t.replace('"rmsnorm_h4096"', '"rmsnorm_h9999"', 1), 1, "unknown definition"),
    (RMS_WORKLOADS, lambda t: t.replace('"solution": null', '"solution": "x"', 1), 1, "workload lines only"),
    ("definitions/gemm/gemm_n4096_k4096.json", lambda t: t.replace('"op_type": "gemm"', '"op_type": "gemm2"'), 4,
     "unknown op type"),
    ("definitions/rmsnorm/rmsnorm_h4096.json", lambda t: t.replace('"axes": {', '"axes": [', 1), 11, "malformed JSON"),
    ("solutions/fibuild-tests/rmsnorm/rmsnorm_h4096/rmsnorm_torch_v1.json",
     lambda t: t.replace('"path": "main.py"', '"path": "../main.py"'), 17, "leaves the dataset root"),
    ("traces/rmsnorm/rmsnorm_h4096.jsonl", lambda t: t.replace('"status":"TIMEOUT"', '"status":"SLOW"'), 8,
     "evaluation.status"),
])
def test_bad_dataset_files_name_file_and_line_and_write_nothing(tmp_path, rel, edit, line, words):
    data = _broken(tmp_path, rel, edit)
    (tmp_path / "ws").mkdir()
    with pytest.raises(DatasetError) as info:
        _import(tmp_path / "ws", data)
    assert info.value.path == str(data / rel) and info.value.line == line, str(info.value)
    assert words in str(info.value)
    assert _tree(tmp_path / "ws") == {}


def test_unknown_op_type_and_definition_selections_are_errors(tmp_path):
    with pytest.raises(DatasetError, match="unknown op type 'conv'"):
        _import(tmp_path / "ws", op_type="conv")
    with pytest.raises(Exception, match="no definition rmsnorm_h1"):
        _import(tmp_path / "ws", definitions=["rmsnorm_h1"])


@pytest.mark.parametrize("argv", [
    ["import", "flashinfer-trace", str(FIXTURE), "rmsnorm_h4096"],                  # names after DIR
    ["import", "flashinfer-trace", "--definitions", "rmsnorm_h4096", "--", str(FIXTURE)],
    ["import", "flashinfer-trace", str(FIXTURE), "--definitions", "rmsnorm_h4096"],
], ids=["after-dir", "before-dir-with-dashes", "option-after-dir"])
def test_the_definitions_to_import_are_named_without_swallowing_the_folder(tmp_path, argv, capsys, settings_env):
    from fibuild.cli import main

    _workspace(tmp_path / "ws")
    assert main(["--root", str(tmp_path / "ws"), *argv]) == 0, capsys.readouterr().err
    assert set(Workspace(tmp_path / "ws").definitions) == {"rmsnorm_h4096"}
