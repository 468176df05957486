"""The JSON-only diskcache index: round trips, refused pickles, corrupt or deleted databases."""
from __future__ import annotations

import stat

import diskcache
import pytest

from fibuild.compile import store
from fibuild.compile.index import Index, JSONOnlyDisk
from fibuild.errors import CacheError

KEY = "12" + "3" * 62


class _Planted:
    """Unpickling this creates a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _commit_one(cache_dir):
    d = store.build_dir(cache_dir, KEY, "d/s")
    store.reset_dir(d, KEY)
    (d / "m.py").write_text("")
    store.commit(d, {"key": KEY, "digest": "x", "language": "python", "definition": "d", "solution": "d/s",
                     "artifact": "m.py", "entry_file": "m.py", "entry_symbol": "f",
                     "destination_passing_style": False, "built_at": "2026-01-01T00:00:00+00:00"})
    return d


def test_json_round_trip_and_mode(tmp_path):
    with Index(tmp_path) as index:
        index.set_json("apply", "k1", {"a": [1, 2.5, None, "x"]})
        assert index.get_json("apply", "k1") == {"a": [1, 2.5, None, "x"]}
        assert index.get_json("apply", "missing", "dflt") == "dflt"
        big = {"rows": ["y" * 100] * 1000}  # above diskcache's in-row size: stored as a text file
        index.set_json("apply", "big", big)
        assert index.get_json("apply", "big") == big
        assert dict(index.items("apply")) == {"k1": {"a": [1, 2.5, None, "x"]}, "big": big}
    assert stat.S_IMODE((tmp_path / "index").stat().st_mode) == 0o700
    with Index(tmp_path) as again:  # persisted across instances
        assert again.get_json("apply", "k1") == {"a": [1, 2.5, None, "x"]}


def test_non_json_values_are_refused(tmp_path):
    with Index(tmp_path) as index, pytest.raises(CacheError, match="JSON"):
        index.set_json("apply", "k", {1, 2})
    with pytest.raises(CacheError, match="namespace"):
        Index(tmp_path).get_json("a:b", "k")


def test_planted_pickle_is_never_loaded(tmp_path):
    marker = tmp_path / "unpickled"
    with Index(tmp_path) as index:
        index.set_json("apply", "ok", 1)
    # Plant a pickled value with diskcache's default (pickling) Disk, as an attacker could.
    with diskcache.Cache(str(tmp_path / "index")) as raw:
        raw.set("apply:evil", _Planted(marker))
        raw.set("apply:evil_list", [_Planted(marker)])
    with Index(tmp_path) as index:
        assert index.get_json("apply", "evil") is None  # refused, read as a miss
        assert dict(index.items("apply")) == {"ok": 1}
        assert index.get_json("apply", "evil") is None
    assert not marker.exists()
    disk = JSONOnlyDisk(str(tmp_path / "index"))
    with pytest.raises(CacheError, match="pickles are never loaded"):
        disk.fetch(diskcache.core.MODE_PICKLE, None, b"\x80\x04K\x01.", False)


def test_deleted_index_is_rebuilt_from_the_store(tmp_path):
    d = _commit_one(tmp_path)
    with Index(tmp_path) as index:  # a fresh index fills itself by scanning the store
        assert index.summary(KEY)["dir"] == str(d)
        index.forget(KEY)
        assert index.summary(KEY) is None
        assert index.rebuild() == 1
        assert index.summary(KEY)["status"] == "committed"


def test_corrupt_index_is_recreated(tmp_path):
    d = _commit_one(tmp_path)
    (tmp_path / "index").mkdir(mode=0o700)
    (tmp_path / "index" / "cache.db").write_bytes(b"this is not a sqlite database" * 100)
    with Index(tmp_path) as index:
        assert index.summary(KEY)["dir"] == str(d)
        index.set_json("apply", "k", [1])
        assert index.get_json("apply", "k") == [1]
