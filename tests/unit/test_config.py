"""Settings: every knob read from the environment at call time, defaults from KNOBS alone."""
from __future__ import annotations

from pathlib import Path

import pytest

from fibuild.config import KNOBS, Settings, env_table_markdown
from fibuild.errors import ConfigError


def test_defaults_come_from_knobs():
    s = Settings.from_env({})
    defaults = {k.env: k.default for k in KNOBS}
    assert s.cache_dir == Path(defaults["FIBUILD_CACHE_DIR"]).expanduser().resolve()
    assert s.nvcc_jobs == int(defaults["FIBUILD_NVCC_JOBS"])
    assert s.log_level == defaults["FIBUILD_LOG_LEVEL"]
    assert s.cuda_home == Path(defaults["CUDA_HOME"])
    assert s.device == "" and s.root is None and not s.disable_build


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "CUDA:0"])
def test_device_accepts_what_load_accepts(device):
    assert Settings.from_env({"FIBUILD_DEVICE": device}).device == device.lower()


@pytest.mark.parametrize("env, match", [
    ({"FIBUILD_DEVICE": "gpu"}, "FIBUILD_DEVICE='gpu': expected cpu, cuda or cuda:N"),
    ({"FIBUILD_NVCC_JOBS": "0"}, "FIBUILD_NVCC_JOBS='0': expected an integer >= 1"),
    ({"FIBUILD_MAX_JOBS": "many"}, "FIBUILD_MAX_JOBS='many': expected an integer"),
    ({"FIBUILD_DISABLE_BUILD": "maybe"}, "FIBUILD_DISABLE_BUILD='maybe': expected 0 or 1"),
])
def test_bad_values_name_the_variable(env, match):
    with pytest.raises(ConfigError, match=match):
        Settings.from_env(env)


def test_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("FIBUILD_CACHE_DIR", str(tmp_path / "a"))
    first = Settings.from_env()
    monkeypatch.setenv("FIBUILD_CACHE_DIR", str(tmp_path / "b"))
    assert (first.cache_dir.name, Settings.from_env().cache_dir.name) == ("a", "b")


def test_table_lists_every_knob():
    table = env_table_markdown()
    assert all(f"`{k.env}`" in table for k in KNOBS)


def test_mode_is_read_and_checked():
    assert Settings.from_env({}).mode == "auto"
    assert Settings.from_env({"FIBUILD_MODE": "Graph"}).mode == "graph"
    with pytest.raises(ConfigError, match="FIBUILD_MODE='fast': expected auto, eager or graph"):
        Settings.from_env({"FIBUILD_MODE": "fast"})
