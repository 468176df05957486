"""Fixtures of the build-cache tests: the fixture workspace and isolated settings."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fibuild.config import Settings
from fibuild.spec.workspace import Workspace

FIXTURE_ROOT = Path(__file__).resolve().parents[2] / "fixtures" / "compile" / "workspace"


@pytest.fixture
def ws(tmp_path) -> Workspace:
    """A private copy of the fixture workspace (tests may edit its files)."""
    root = tmp_path / "ws"
    shutil.copytree(FIXTURE_ROOT, root)
    return Workspace(root)


@pytest.fixture
def make_settings(tmp_path):
    """``make_settings(**env)``: Settings with this test's own FIBUILD_CACHE_DIR plus ``env``."""

    def make(**env: str) -> Settings:
        base = {"FIBUILD_CACHE_DIR": str(tmp_path / "cache"), "FIBUILD_MAX_JOBS": "2"}
        return Settings.from_env({**base, **env})

    return make


def _pair(ws: Workspace, name: str):
    sol = ws.solution(name)
    return ws.definition(sol.definition), sol


@pytest.fixture
def pair():
    """``pair(ws, "definition/solution") -> (Definition, Solution)``."""
    return _pair
