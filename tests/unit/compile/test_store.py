"""Build directories, commit markers and the store scan."""
from __future__ import annotations

import json

import pytest

from fibuild.compile import batch, store

KEY = "ab" + "c" * 62


def _meta(**extra):
    meta = {"key": KEY, "digest": "d", "language": "python", "definition": "d", "solution": "d/s",
            "artifact": "src/kernel.py", "entry_file": "kernel.py", "entry_symbol": "run",
            "destination_passing_style": False, "built_at": "now"}
    meta.update(extra)
    return meta


def _committed(tmp_path):
    d = store.build_dir(tmp_path, KEY, "d/s")
    store.reset_dir(d, KEY)
    (d / "src").mkdir()
    (d / "src" / "kernel.py").write_text("def run(): pass\n")
    store.commit(d, _meta())
    return d


def test_layout(tmp_path):
    d = store.build_dir(tmp_path, KEY, "rmsnorm_h4096/cpp bf16")
    assert d == tmp_path / "builds" / "ab" / f"rmsnorm_h4096--cpp-bf16-{KEY[:20]}"
    assert store.lock_path(tmp_path, KEY) == tmp_path / "locks" / f"{KEY}.lock"


def test_commit_and_read(tmp_path):
    d = _committed(tmp_path)
    assert store.read_meta(d, KEY)["entry_symbol"] == "run"
    assert [p.name for p in d.iterdir() if p.name.startswith(".")] == []  # no temp files left
    assert store.read_meta(d, "f" * 64) is None  # another key's marker is a miss


@pytest.mark.parametrize("content", ["", "{not json", "[]", json.dumps({"key": KEY}), json.dumps({"schema": 99})])
def test_corrupt_meta_is_a_miss(tmp_path, content):
    d = _committed(tmp_path)
    (d / store.META).write_text(content)
    assert store.read_meta(d, KEY) is None


def test_missing_artifact_is_a_miss(tmp_path):
    d = _committed(tmp_path)
    (d / "src" / "kernel.py").unlink()
    assert store.read_meta(d, KEY) is None


def test_committed_dir_is_never_reset(tmp_path):
    d = _committed(tmp_path)
    with pytest.raises(RuntimeError, match="never|refusing"):
        store.reset_dir(d, KEY)
    assert store.read_meta(d, KEY) is not None


def test_scan_and_remove(tmp_path):
    d = _committed(tmp_path)
    other = store.build_dir(tmp_path, "ef" + "0" * 62, "d/t")
    store.reset_dir(other, "ef" + "0" * 62)
    store.write_failed(other, {"key": "ef" + "0" * 62, "error": "boom"})
    found = {b.path: b for b in store.scan(tmp_path)}
    assert found[d].status == "committed" and found[d].key == KEY
    assert found[other].status == "failed" and found[other].key == "ef" + "0" * 62
    store.remove_build(d)
    assert not d.exists() and [b.path for b in store.scan(tmp_path)] == [other]


def test_log_tail():
    text = "\n".join(str(i) for i in range(100))
    assert batch.log_tail(text).splitlines() == [str(i) for i in range(50, 100)]


def test_dir_with_corrupt_meta_is_moved_aside_not_rewritten(tmp_path):
    d = _committed(tmp_path)
    (d / store.META).write_text("{truncated")
    store.reset_dir(d, KEY)
    assert sorted(p.name for p in d.iterdir()) == ["key"]
    aside = [p for p in d.parent.iterdir() if p.name.startswith(d.name + ".stale-")]
    assert len(aside) == 1 and (aside[0] / "src" / "kernel.py").is_file()
