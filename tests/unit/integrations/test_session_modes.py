"""The serving session's side of resolution: which mode its kernels rank by, and the count of
keys decided on borrowed evaluations (another device of the same compute capability)."""
from __future__ import annotations

import types

import pytest

from fibuild.config import Settings
from fibuild.integrations.session import Session
from fibuild.runtime.decisions import Resolution


class FakeKernel:
    def __init__(self, borrowed: str, solution=None):
        self.borrowed, self.solution = borrowed, solution

    def resolution(self, key):
        return Resolution(definition="rmsnorm_h4096", key=tuple(key), device="nvidia-h100-80gb-hbm3-sm90",
                          solution=self.solution, build_key=None, policy="nearest", latency_us=5.0,
                          decisions=(), borrowed=self.borrowed)


@pytest.fixture
def session_factory(tmp_path, monkeypatch):
    (tmp_path / "defs").mkdir()
    settings = Settings.from_env({"FIBUILD_ROOT": str(tmp_path), "FIBUILD_CACHE_DIR": str(tmp_path / "cache")})

    def make(mode: str, kernel: FakeKernel):
        session = Session(settings, trace=False, apply=True, mode=mode)
        asked = []
        monkeypatch.setattr(session, "kernel", lambda name, mode: asked.append(mode) or kernel)
        return session, asked

    return make


DEFN = types.SimpleNamespace(apply_key=lambda axes: (axes["batch_size"],))
ADAPTER = types.SimpleNamespace(api="flashinfer.norm.rmsnorm", is_original=lambda sol, instance: False)


def original(*args):
    return "original"


@pytest.mark.parametrize("mode, expected", [("auto", "eager"), ("eager", "eager"), ("graph", "graph")])
def test_kernels_rank_by_the_sessions_mode(session_factory, mode, expected):
    # "auto" outside a CUDA graph capture (no GPU here) is eager.
    session, asked = session_factory(mode, FakeKernel(""))
    handler = session.choose(ADAPTER, "rmsnorm_h4096", DEFN, {"batch_size": 8}, original, None)
    assert handler() == "original"  # the original, counted
    assert asked == [expected] and session.borrowed == {}


def test_keys_decided_on_borrowed_evaluations_are_counted(session_factory):
    sol = types.SimpleNamespace(name="triton_row")
    session, _ = session_factory("auto", FakeKernel("nvidia-h200-sm90", sol))
    handler = session.choose(ADAPTER, "rmsnorm_h4096", DEFN, {"batch_size": 8}, original,
                             lambda kernel, defn: lambda *a: "substitute")
    assert handler() == "substitute" and handler() == "substitute"
    session.choose(ADAPTER, "rmsnorm_h4096", DEFN, {"batch_size": 16}, original,
                   lambda kernel, defn: lambda *a: "substitute")
    assert session.borrowed == {"rmsnorm_h4096": 2} and session.substituted == {"rmsnorm_h4096": 2}
    # The patched API's counters say how many calls ran on borrowed evaluations.
    assert session.stats.snapshot()[ADAPTER.api]["borrowed"] == 2


def test_enable_refuses_an_unknown_mode(tmp_path):
    from fibuild.errors import ConfigError
    from fibuild.integrations.activation import enable

    with pytest.raises(ConfigError, match="mode 'fast': expected auto, eager or graph"):
        enable(apply=True, root=tmp_path, mode="fast")
