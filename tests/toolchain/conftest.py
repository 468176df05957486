"""Session fixtures of the native build tests: one build-all of the fixture workspace.

Compiling is the slow part on a 2-core machine, so the fixture workspace is built once
per session into its own cache; tests that change a cache work on a copy of it.
"""
from __future__ import annotations

import shutil

import pytest

from fibuild.compile.toolchain import cuda_unavailable_reason
from fibuild.config import Settings

from toolchain_support import FIXTURE_ROOT, BuiltWorkspace, run_cli, settings_for


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> BuiltWorkspace:
    """``fibuild build --all`` over a copy of the fixture workspace, once per session."""
    base = tmp_path_factory.mktemp("built")
    root = base / "ws"
    shutil.copytree(FIXTURE_ROOT, root)
    cache = base / "cache"
    rc, out, err = run_cli("build", ["--all"], settings_for(cache, root))
    return BuiltWorkspace(root, cache, rc, out, err)


@pytest.fixture(scope="session")
def cuda_ok() -> bool:
    return cuda_unavailable_reason(Settings.from_env({})) is None
