"""Registry: validated appends, one line each, torn and garbage lines skipped on read."""
from __future__ import annotations

import json
import logging
import threading

import pytest

from fibuild.errors import RegistryError
from fibuild.registry import Registry, evaluation_from_dict, evaluation_to_dict, latest_per_workload
from fibuild.spec.model import Evaluation, LatencyStats
from fibuild.spec.schema import validate

DIGEST = "a" * 64
KEY = "b" * 64


def make_eval(**changes) -> Evaluation:
    base = dict(definition="rmsnorm_h4096", solution="torch_fp32", solution_digest=DIGEST, build_key=KEY,
                workload_uuid="rmsnorm_h4096-batch_size7", axes={"batch_size": 7}, status="PASSED",
                device="cpu-amd-epyc", latency=LatencyStats(10.0, 9.0, 11.0, 10.2, 50),
                reference_latency=LatencyStats(20.0, 19.0, 21.0, 20.5, 40), speedup=2.0,
                max_abs_error=0.0039, max_rel_error=0.001, error="",
                environment={"device": "cpu-amd-epyc", "torch": "2.13.0"},
                timestamp="2026-11-24T10:00:00.000Z")
    base.update(changes)
    return Evaluation(**base)


def test_round_trip_and_schema(tmp_path):
    reg = Registry(tmp_path)
    ev = make_eval()
    path = reg.append(ev)
    assert path == tmp_path / "rmsnorm_h4096" / "cpu-amd-epyc.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["schema"] == 2
    assert validate("evaluation", record) == []
    assert reg.read("rmsnorm_h4096") == [ev]
    assert evaluation_from_dict(evaluation_to_dict(ev)) == ev


def test_spread_and_host_times_round_trip(tmp_path):
    stats = LatencyStats(10.0, 9.0, 11.0, 10.2, 50, min_us=8.5, q1_us=9.3, q3_us=10.6)
    host = LatencyStats(17.0, 16.8, 17.5, 17.1, 400, min_us=16.2, q1_us=16.9, q3_us=17.3)
    ev = make_eval(device="nvidia-h200-sm90", latency=stats, host_latency=host,
                   reference_host_latency=LatencyStats(30.0, 29.0, 31.0, 30.0, 400))
    record = evaluation_to_dict(ev)
    assert record["latency"]["q3_us"] == 10.6 and record["host_latency"]["min_us"] == 16.2
    assert validate("evaluation", record) == []
    assert evaluation_from_dict(json.loads(json.dumps(record))) == ev
    Registry(tmp_path).append(ev)
    assert Registry(tmp_path).read("rmsnorm_h4096") == [ev]


def test_schema_1_lines_still_load(tmp_path):
    """A line as the committed registry holds it (schema 1: p20/p80 only, no host time)."""
    line = {"schema": 1, "definition": "rmsnorm_h4096", "solution": "flashinfer", "solution_digest": DIGEST,
            "build_key": KEY, "workload_uuid": "w1", "axes": {"batch_size": 1}, "status": "PASSED",
            "device": "nvidia-h200-sm90", "latency": {"median_us": 5.3, "p20_us": 5.0, "p80_us": 6.0,
                                                      "mean_us": 5.4, "n": 900},
            "reference_latency": None, "speedup": None, "max_abs_error": 0.0, "max_rel_error": 0.0,
            "error": "", "environment": {}, "timestamp": "2026-11-24T10:00:00.000Z"}
    assert validate("evaluation", line) == []
    folder = tmp_path / "rmsnorm_h4096"
    folder.mkdir()
    (folder / "nvidia-h200-sm90.jsonl").write_text(json.dumps(line) + "\n")
    (ev,) = Registry(tmp_path).read("rmsnorm_h4096")
    assert ev.latency.median_us == 5.3 and ev.latency.q3_us is None and ev.host_latency is None
    with pytest.raises(ValueError, match="unknown record schema 3"):
        evaluation_from_dict({**line, "schema": 3})


def test_committed_registry_loads_whole():
    """Every line of the committed registry (old schema) is read back: none is skipped."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "registry"
    reg = Registry(root)
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for slug in reg.devices(folder.name):
            lines = [ln for ln in reg.path(folder.name, slug).read_text().splitlines() if ln.strip()]
            assert len(reg.read(folder.name, slug)) == len(lines), (folder.name, slug)


def test_invalid_record_is_refused_naming_the_field(tmp_path):
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError, match="/status"):
        reg.append(make_eval(status="FAST"))
    with pytest.raises(RegistryError, match="/solution_digest"):
        reg.append(make_eval(solution_digest="not-a-digest"))
    assert not (tmp_path / "rmsnorm_h4096" / "cpu-amd-epyc.jsonl").exists()


def test_non_finite_errors_are_stored_as_null(tmp_path):
    reg = Registry(tmp_path)
    reg.append(make_eval(status="INCORRECT_NUMERICAL", max_abs_error=float("nan"),
                         max_rel_error=float("inf"), latency=None, speedup=None, error="NaN in output"))
    (ev,) = reg.read("rmsnorm_h4096", "cpu-amd-epyc")
    assert ev.max_abs_error is None and ev.max_rel_error is None


def test_torn_last_line_and_garbage_are_skipped(tmp_path, caplog):
    reg = Registry(tmp_path)
    good = make_eval()
    path = reg.append(good)
    with open(path, "a") as f:
        f.write("this is not json\n")
        f.write('{"schema": 1, "definition": "rmsnorm_h4096"}\n')  # valid JSON, not a record
        f.write(json.dumps(evaluation_to_dict(make_eval(solution="other")))[:57])  # torn, no newline
    with caplog.at_level(logging.WARNING, logger="fibuild.registry"):
        assert reg.read("rmsnorm_h4096") == [good]
    (warning,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert "skipped 3 unreadable evaluation records (first: line 2:" in warning
    # The next append starts a fresh line: the torn one stays unreadable, the new one reads.
    later = make_eval(solution="after_tear", timestamp="2026-11-24T11:00:00.000Z")
    reg.append(later)
    assert reg.read("rmsnorm_h4096") == [good, later]


def test_a_garbage_registry_file_is_one_warning_with_a_count(tmp_path, caplog):
    reg = Registry(tmp_path)
    path = reg.append(make_eval())
    with open(path, "a") as f:
        f.writelines(f"garbage line {i}\n" for i in range(100))
    with caplog.at_level(logging.WARNING, logger="fibuild.registry"):
        assert len(reg.read("rmsnorm_h4096")) == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: skipped 100 unreadable evaluation records (first: line 2: Expecting value: line 1 column 1 "
        "(char 0))"]


def test_devices_filters_and_workloads_file(tmp_path):
    reg = Registry(tmp_path)
    reg.append(make_eval())
    reg.append(make_eval(device="nvidia-h100-80gb-hbm3-sm90", status="RUNTIME_ERROR", latency=None,
                         speedup=None, error="boom"))
    (tmp_path / "rmsnorm_h4096" / "workloads.jsonl").write_text("{}\n")
    assert reg.devices("rmsnorm_h4096") == ["cpu-amd-epyc", "nvidia-h100-80gb-hbm3-sm90"]
    assert reg.devices("unknown") == []
    assert len(reg.read("rmsnorm_h4096")) == 2
    assert [e.status for e in reg.read("rmsnorm_h4096", status="RUNTIME_ERROR")] == ["RUNTIME_ERROR"]
    assert reg.read("rmsnorm_h4096", solution_digest="c" * 64) == []
    with pytest.raises(RegistryError):
        reg.path("rmsnorm_h4096", "workloads")
    with pytest.raises(RegistryError):
        reg.path("../x", "cpu")


def test_concurrent_appends_never_interleave(tmp_path):
    reg = Registry(tmp_path)

    def writer(n):
        for i in range(20):
            reg.append(make_eval(solution=f"s{n}", workload_uuid=f"w{i}", error="x" * 5000))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    path = reg.path("rmsnorm_h4096", "cpu-amd-epyc")
    lines = path.read_text().splitlines()
    assert len(lines) == 80
    assert all(validate("evaluation", json.loads(line)) == [] for line in lines)
    assert not list(tmp_path.rglob("*.jsonl.tmp"))


def test_latest_per_workload_keeps_newest():
    old = make_eval(timestamp="2026-11-24T10:00:00.000Z", status="INCORRECT_NUMERICAL", latency=None,
                    speedup=None)
    new = make_eval(timestamp="2026-11-24T12:00:00.000Z")
    other = make_eval(workload_uuid="w2", timestamp="2026-11-24T09:00:00.000Z")
    latest = latest_per_workload([new, old, other])
    assert latest[("torch_fp32", "rmsnorm_h4096-batch_size7")] is new
    assert latest[("torch_fp32", "w2")] is other


def test_append_workloads_validates_all_before_writing(tmp_path):
    reg = Registry(tmp_path / "registry")
    good = {"uuid": "w1", "axes": {"batch_size": 3}, "inputs": {}}
    with pytest.raises(RegistryError, match="'bad id'.*uuid"):
        reg.append_workloads("d", [good, {"uuid": "bad id", "axes": {}, "inputs": {}}])
    assert not reg.workloads_path("d").exists()
    path = reg.append_workloads("d", [good, {**good, "uuid": "w2"}])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["uuid"], r["definition"]) for r in lines] == [("w1", "d"), ("w2", "d")]


def test_write_blob_is_renamed_into_place(tmp_path):
    import torch
    from safetensors.torch import load_file

    reg = Registry(tmp_path / "registry")
    rel = reg.write_blob("d", "pt0", {"kv_indptr": torch.arange(5, dtype=torch.int32)})
    assert rel == "registry/d/blobs/pt0.safetensors"
    assert load_file(str(tmp_path / rel))["kv_indptr"].tolist() == [0, 1, 2, 3, 4]
    assert [p.name for p in (tmp_path / "registry/d/blobs").iterdir()] == ["pt0.safetensors"]
    with pytest.raises(RegistryError, match="cannot name a file"):
        reg.write_blob("d", "../x", {})


def test_registry_file_that_is_a_symlink_is_refused(tmp_path, caplog):
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched\n")
    reg = Registry(tmp_path / "registry")
    path = reg.path(make_eval().definition, make_eval().device)
    path.parent.mkdir(parents=True)
    path.symlink_to(outside)
    with pytest.raises(RegistryError, match=rf"{path}: is a symbolic link"):
        reg.append(make_eval())
    assert outside.read_text() == "untouched\n"
    with caplog.at_level(logging.WARNING):
        assert reg.read(make_eval().definition) == [] and "symbolic link" in caplog.text


def test_registry_folder_that_links_outside_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    reg = Registry(tmp_path / "registry")
    reg.root.mkdir()
    (reg.root / make_eval().definition).symlink_to(elsewhere)
    with pytest.raises(RegistryError, match="resolves outside the registry"):
        reg.append(make_eval())
    with pytest.raises(RegistryError, match="resolves outside the registry"):
        reg.append_workloads(make_eval().definition, [{"uuid": "w", "axes": {"batch_size": 1}, "inputs": {}}])
    assert list(elsewhere.iterdir()) == []


def test_deeply_nested_registry_line_is_skipped(tmp_path, caplog):
    reg = Registry(tmp_path)
    path = reg.append(make_eval())
    with open(path, "a") as fh:
        fh.write("[" * 100_000 + "]" * 100_000 + "\n")
    with caplog.at_level(logging.WARNING):
        assert len(reg.read(make_eval().definition)) == 1
    assert "nested too deeply" in caplog.text
