"""Shared pytest setup: GPU tests skip without CUDA; native-toolchain tests skip without one."""
from __future__ import annotations

import shutil

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    has_cuda = _cuda_available()
    has_cxx = shutil.which("g++") is not None or shutil.which("c++") is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "build" in item.keywords and not has_cxx:
            item.add_marker(pytest.mark.skip(reason="needs a C++ compiler"))


@pytest.fixture(autouse=True)
def _user_data_home(tmp_path_factory, monkeypatch):
    """Every test gets its own XDG_DATA_HOME: the user workspace a command falls back to
    (no FIBUILD_ROOT, no defs/ above the current folder) is never the real one."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))


@pytest.fixture
def settings_env(tmp_path, monkeypatch):
    """An isolated environment: a fresh FIBUILD_CACHE_DIR under tmp_path."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FIBUILD_CACHE_DIR", str(cache))
    return {"FIBUILD_CACHE_DIR": str(cache)}
