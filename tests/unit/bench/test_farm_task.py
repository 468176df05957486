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


def _poisoned(packed: dict, rel: str, text: str) -> dict:
    import base64

    files = dict(packed["files"], **{rel: base64.b64encode(text.encode()).decode()})
    return {"digest": packed["digest"], "files": files}


POISON = "def scale(x):\n    return x * 0  # planted\n"


def test_a_bundle_under_another_bundles_digest_is_refused(ws, tmp_path):
    defn = ws.definition("farm_scale")
    sol = ws.solution("ok", definition="farm_scale")
    packed = bundles.pack(ws.root, defn, sol, ())
    kernel = "solutions/farm_scale/ok/kernel.py"
    with pytest.raises(BenchError, match="hash to .* not the .* it claims"):
        bundles.unpack(_poisoned(packed, kernel, POISON), tmp_path / "cache")
    assert not (tmp_path / "cache" / "farm" / "workspaces" / packed["digest"]).exists()
    # the real bundle, sent afterwards, unpacks its own files
    where = bundles.unpack(packed, tmp_path / "cache")
    assert (where / kernel).read_bytes() == (ws.root / kernel).read_bytes()


def test_a_poisoned_workspace_folder_is_not_reused(ws, tmp_path):
    defn = ws.definition("farm_scale")
    sol = ws.solution("ok", definition="farm_scale")
    packed = bundles.pack(ws.root, defn, sol, ())
    kernel = "solutions/farm_scale/ok/kernel.py"
    where = bundles.unpack(packed, tmp_path / "cache")
    (where / kernel).write_text(POISON)  # a shared worker cache, written by someone else
    assert bundles.unpack(packed, tmp_path / "cache") == where
    assert (where / kernel).read_bytes() == (ws.root / kernel).read_bytes()


@pytest.mark.parametrize("change, words", [
    (lambda t: t.update(workloads=[1, 2]), "workloads[0] is not a workload"),
    (lambda t: t.update(workloads=[{"uuid": "w"}]), "workloads[0] is not a workload"),
    (lambda t: t.update(workloads="all"), "'workloads' must be a list"),
    (lambda t: t["workloads"][0].update(source="../../../etc/passwd"), "workloads[0] is not a workload"),
    (lambda t: t.update(options={"warmup_ms": "x"}), "options.warmup_ms must be a number"),
    (lambda t: t.update(bundle=[]), "'bundle' must be a Mapping"),
    (lambda t: t.pop("kind"), "'kind' must be a str"),
])
def test_a_malformed_task_is_a_clear_error(ws, change, words):
    defn = ws.definition("farm_scale")
    sol = ws.solution("ok", definition="farm_scale")
    task = make_task(ws.root, defn, sol, ws.workloads(defn), kind="cpu", slug=device_slug("cpu"),
                     bundle=bundles.pack(ws.root, defn, sol, ws.workloads(defn)), options=OPTIONS)
    task = json.loads(json.dumps(task))
    task["workloads"][0]["source"] = "defs/farm/farm_scale.yaml"
    change(task)
    with pytest.raises(BenchError) as info:
        run_task(task)
    assert words in str(info.value)
