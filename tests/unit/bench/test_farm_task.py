"""Farm tasks without an engine: bundles pack and unpack a pair's files, a task runs on the
local runner from its unpacked bundle and returns plain JSON records."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fibuild.bench.farm import bundle as bundles
from fibuild.bench.farm.task import make_task, run_task
from fibuild.devices import device_slug
from fibuild.errors import BenchError
from fibuild.spec.schema import validate
from fibuild.spec.workspace import Workspace

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "farm"
OPTIONS = {"warmup_ms": 0.0, "rep_ms": 1.0, "graph": False, "timeout_s": 60.0}


@pytest.fixture
def ws(tmp_path, settings_env):
    shutil.copytree(FIXTURE, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def test_bundle_carries_the_pair_and_unpacks_once(ws, tmp_path):
    defn = ws.definition("farm_scale")
    sol = ws.solution("ok", definition="farm_scale")
    packed = bundles.pack(ws.root, defn, sol, ws.workloads(defn))
    assert sorted(packed["files"]) == ["defs/farm/farm_scale.yaml", "solutions/farm_scale/ok/kernel.py",
                                       "solutions/farm_scale/ok/solution.yaml"]
    assert json.loads(json.dumps(packed)) == packed  # plain JSON
    assert bundles.pack(ws.root, defn, sol, ws.workloads(defn))["digest"] == packed["digest"]
    where = bundles.unpack(packed, tmp_path / "cache")
    assert where.name == packed["digest"]
    kernel = "solutions/farm_scale/ok/kernel.py"
    assert (where / kernel).read_bytes() == (ws.root / kernel).read_bytes()
    assert bundles.unpack(packed, tmp_path / "cache") == where
    (sol.path / "kernel.py").write_text("def scale(x):\n    return x * 3\n")
    assert bundles.pack(ws.root, defn, sol, ())["digest"] != packed["digest"]


def test_bundle_refuses_paths_leaving_it(tmp_path):
    evil = {"digest": "0" * 64, "files": {"../outside.txt": ""}}
    with pytest.raises(BenchError, match="outside the bundle"):
        bundles.unpack(evil, tmp_path / "cache")
    assert not (tmp_path / "cache" / "farm" / "outside.txt").exists()
    with pytest.raises(BenchError, match="bad digest"):
        bundles.unpack({"digest": "../x", "files": {}}, tmp_path / "cache")


def test_task_runs_from_its_bundle_and_returns_json_records(ws):
    defn = ws.definition("farm_scale")
    sol = ws.solution("ok", definition="farm_scale")
    slug = device_slug("cpu")
    task = make_task(ws.root, defn, sol, ws.workloads(defn), kind="cpu", slug=slug,
                     bundle=bundles.pack(ws.root, defn, sol, ws.workloads(defn)), options=OPTIONS)
    task = json.loads(json.dumps(task))  # what an engine carries: nothing but JSON
    result = run_task(task, worker="test")
    assert result["worker"] == "test" and result["slug"] == slug
    records = result["records"]
    assert [r["workload_uuid"] for r in records] == [w.uuid for w in ws.workloads(defn)]
    for rec in records:
        assert rec["status"] == "PASSED", rec["error"]
        assert rec["device"] == slug and validate("evaluation", rec) == []
    with pytest.raises(BenchError, match="reached a worker with"):
        run_task(dict(task, slug="nvidia-other-sm90"))
