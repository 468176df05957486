"""A hostile or damaged flashinfer-trace dataset cannot write outside the workspace, and an
import is all or nothing: names that are paths, symlinked workspace folders, NaN figures,
a killed import's staging folder, malformed fields that used to raise tracebacks, absurd
sizes, and a checkout without its blobs. Each case edits a copy of the public-format fixture."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fibuild.dataset.trace_import import import_flashinfer_trace
from fibuild.errors import DatasetError, FibuildError, RegistryError
from fibuild.registry import Registry
from fibuild.spec.workspace import Workspace

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "flashinfer_trace"
ROOT = Path(__file__).resolve().parents[3]
RMS_SOLUTION = "solutions/fibuild-tests/rmsnorm/rmsnorm_h4096/rmsnorm_torch_v1.json"
RMS_DEFINITION = "definitions/rmsnorm/rmsnorm_h4096.json"
RMS_TRACES = "traces/rmsnorm/rmsnorm_h4096.jsonl"
GQA_BLOB_DIR = "blob/workloads/gqa_paged"


def _dataset(tmp_path: Path) -> Path:
    data = tmp_path / "ds"
    shutil.copytree(FIXTURE, data)
    return data


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def _workspace(tmp_path: Path) -> Workspace:
    (tmp_path / "ws" / "defs").mkdir(parents=True)
    return Workspace(tmp_path / "ws")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


# -- names that are paths ------------------------------------------------------------------

@pytest.mark.parametrize("rel, change, words", [
    (RMS_SOLUTION, lambda d: d.update(name="../../../../escaped"),
     "solution: name '../../../../escaped' is not a name"),
    (RMS_SOLUTION, lambda d: d.update(name="/tmp/abs"), "is not a name"),
    (RMS_DEFINITION, lambda d: d.update(name="../../escaped"), "definition: name '../../escaped' is not a name"),
    (RMS_DEFINITION, lambda d: d.update(op_type="/tmp/evil_op"), "definition: op_type '/tmp/evil_op' is not a name"),
])
def test_names_that_are_paths_write_nothing_anywhere(tmp_path, rel, change, words):
    data = _dataset(tmp_path)
    _edit_json(data / rel, change)
    ws = _workspace(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(DatasetError) as info:
        import_flashinfer_trace(ws, data)
    assert info.value.path == str(data / rel) and words in str(info.value)
    assert {p for p in tmp_path.rglob("*")} == before  # nothing written, inside or outside
    assert not Path("/tmp/evil_op").exists()


def test_a_symlinked_solutions_folder_is_not_written_through(tmp_path):
    data = _dataset(tmp_path)
    ws = _workspace(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (ws.root / "solutions").mkdir()
    (ws.root / "solutions" / "rmsnorm_h4096").symlink_to(elsewhere)
    with pytest.raises(FibuildError, match="rmsnorm_h4096 is a symbolic link"):
        import_flashinfer_trace(ws, data)
    assert list(elsewhere.iterdir()) == []
    assert _tree(ws.root) == {}  # refused before the first write: no definition, no workload


def test_a_symlinked_registry_folder_is_not_written_through(tmp_path):
    data = _dataset(tmp_path)
    ws = _workspace(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (ws.root / "registry").symlink_to(elsewhere)
    with pytest.raises(FibuildError, match="registry is a symbolic link"):
        import_flashinfer_trace(ws, data)
    assert list(elsewhere.iterdir()) == [] and _tree(ws.root / "defs") == {}


# -- all or nothing ------------------------------------------------------------------------

def test_a_nan_latency_is_refused_before_anything_is_written(tmp_path):
    data = _dataset(tmp_path)
    path = data / RMS_TRACES
    path.write_text(path.read_text().replace('"latency_ms":0.0123', '"latency_ms":NaN', 1))
    ws = _workspace(tmp_path)
    with pytest.raises(DatasetError) as info:
        import_flashinfer_trace(ws, data)
    assert info.value.path == str(path) and info.value.line == 1 and "latency_ms = nan" in str(info.value)
    assert _tree(ws.root) == {}


def test_a_failure_while_committing_takes_back_everything(tmp_path, monkeypatch):
    data = _dataset(tmp_path)
    ws = _workspace(tmp_path)
    (ws.root / "registry" / "rmsnorm_h4096").mkdir(parents=True)
    kept = ws.root / "registry" / "rmsnorm_h4096" / "nvidia-h100.jsonl"
    kept.write_text("")  # an existing file the import appends to: truncated back, not removed
    calls = []

    def failing_append(self, evaluation):
        calls.append(evaluation)
        if len(calls) == 3:
            raise RegistryError("disk full")
        return original(self, evaluation)

    original = Registry.append
    monkeypatch.setattr(Registry, "append", failing_append)
    with pytest.raises(FibuildError, match="import failed while writing .*disk full; nothing of it was kept"):
        import_flashinfer_trace(ws, data)
    assert _tree(ws.root) == {"registry/rmsnorm_h4096/nvidia-h100.jsonl": b""}
    assert not (ws.root / "solutions").exists() and list((ws.root / "defs").iterdir()) == []
    assert not [p for p in ws.root.iterdir() if p.name.startswith(".import-")]


def test_a_killed_imports_staging_folder_is_removed_by_the_next(tmp_path):
    data = _dataset(tmp_path)
    ws = _workspace(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = ws.root / f".import-{dead.stdout.strip()}-abc123"
    (stale / "defs").mkdir(parents=True)
    alive = ws.root / f".import-{os.getppid()}-def456"  # a running process's import stays
    alive.mkdir()
    import_flashinfer_trace(ws, data)
    assert not stale.exists() and alive.exists()


# -- malformed fields that raised tracebacks ---------------------------------------------

@pytest.mark.parametrize("rel, change, words", [
    (RMS_SOLUTION, lambda d: d["sources"].append({"path": "main.py/inner.py", "content": "x = 1\n"}),
     "'main.py' is both a source file and the folder of another source"),
    (RMS_SOLUTION, lambda d: d["spec"].update(target_hardware="cpu"), "'target_hardware' must be a list of strings"),
    (RMS_SOLUTION, lambda d: d["spec"].update(dependencies=7), "'dependencies' must be a list of strings"),
])
def test_malformed_solution_fields_are_dataset_errors(tmp_path, rel, change, words):
    data = _dataset(tmp_path)
    _edit_json(data / rel, change)
    ws = _workspace(tmp_path)
    with pytest.raises(DatasetError) as info:
        import_flashinfer_trace(ws, data)
    assert info.value.path == str(data / rel) and words in str(info.value)
    assert _tree(ws.root) == {}


def test_a_correctness_that_is_not_an_object_is_a_dataset_error(tmp_path):
    data = _dataset(tmp_path)
    path = data / RMS_TRACES
    path.write_text(path.read_text().replace('"correctness":{"max_relative_error":0.0078125,'
                                             '"max_absolute_error":0.00390625,"extra":null}',
                                             '"correctness":"ok"', 1))
    ws = _workspace(tmp_path)
    with pytest.raises(DatasetError, match="evaluation.correctness is not a JSON object") as info:
        import_flashinfer_trace(ws, data)
    assert info.value.line == 1 and _tree(ws.root) == {}


def test_a_line_of_64_megabytes_is_refused_without_reading_it_whole(tmp_path):
    data = _dataset(tmp_path)
    path = data / "workloads/rmsnorm/rmsnorm_h4096.jsonl"
    with open(path, "a") as fh:
        fh.write('{"definition": "rmsnorm_h4096", "pad": "' + "x" * (64 * 1024 * 1024) + '"}\n')
    ws = _workspace(tmp_path)
    with pytest.raises(DatasetError, match="line longer than 4194304 bytes") as info:
        import_flashinfer_trace(ws, data)
    assert info.value.path == str(path) and _tree(ws.root) == {}


# -- a checkout without its blobs -----------------------------------------------------------

def test_a_checkout_without_blobs_imports_everything_complete_and_lists_the_rest(tmp_path):
    data = _dataset(tmp_path)
    shutil.rmtree(data / GQA_BLOB_DIR)
    mla = next((data / "blob").rglob("mla_*.safetensors"))
    mla.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")  # an LFS pointer
    ws = _workspace(tmp_path)
    report = import_flashinfer_trace(ws, data)
    assert report.incomplete
    missing = {s.name: s for s in report.skipped if s.kind == "workload"}
    gqa = [s for s in missing.values() if "gqa_paged_decode" in s.reason]
    assert len(gqa) == 1 and gqa[0].where.endswith("gqa_paged_decode_h32_kv8_d128_ps1.jsonl:1")
    assert "is missing from" in gqa[0].reason and "git lfs pull" in gqa[0].reason
    assert any("is a Git LFS pointer" in s.reason for s in missing.values())
    loaded = Workspace(ws.root)
    assert loaded.validate() == []
    assert "gqa_paged_decode_h32_kv8_d128_ps1" in loaded.definitions  # the definition itself came in
    assert len(loaded.workloads("rmsnorm_h4096")) > 0 and report.written["solution"] > 0
    assert "incomplete" in report.lines()[-1]


def test_the_cli_exits_1_for_an_import_missing_blobs(tmp_path):
    data = _dataset(tmp_path)
    shutil.rmtree(data / GQA_BLOB_DIR)
    _workspace(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), FIBUILD_ROOT=str(tmp_path / "ws"))
    proc = subprocess.run([sys.executable, "-m", "fibuild", "import", "flashinfer-trace", str(data)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "gqa_paged_decode_h32_kv8_d128_ps1.jsonl:1" in proc.stdout and "Traceback" not in proc.stderr


def test_a_name_that_is_no_manifest_name_but_no_path_is_skipped_and_listed(tmp_path):
    data = _dataset(tmp_path)
    _edit_json(data / RMS_SOLUTION, lambda d: d.update(name="torch v1 (fast)"))
    ws = _workspace(tmp_path)
    report = import_flashinfer_trace(ws, data)
    (skip,) = [s for s in report.skipped if s.name == "rmsnorm_h4096/torch v1 (fast)"]
    assert "is not a name" in skip.reason and skip.where == str(data / RMS_SOLUTION)
    assert not any(" " in p.name for p in (ws.root / "solutions").rglob("*"))
