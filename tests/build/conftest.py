"""Session fixtures of the native build tests: one build-all of the fixture workspace.

Compiling is the slow part on a 2-core machine, so the fixture workspace is built once
per session into its own cache; tests that change a cache work on a copy of it.
"""
from __future__ import annotations

import argparse
import io
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from fibuild.build.toolchain import cuda_unavailable_reason
from fibuild.config import Settings
from fibuild.spec.workspace import Workspace

FIXTURE_ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "build" / "workspace"


def settings_for(cache: Path, root: Path, **env: str) -> Settings:
    return Settings.from_env({"FIBUILD_CACHE_DIR": str(cache), "FIBUILD_ROOT": str(root),
                              "FIBUILD_MAX_JOBS": "2", "FIBUILD_CUDA_ARCH_LIST": "9.0a", **env})


def run_cli(command: str, argv: list[str], settings: Settings) -> tuple[int, str, str]:
    """Run one of fibuild/cli/build.py's subcommands in-process; return (rc, stdout, stderr)."""
    from fibuild.cli import build as cli

    parser = argparse.ArgumentParser()
    getattr(cli, f"add_{command}_arguments")(parser)
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = getattr(cli, f"run_{command}")(args, settings)
    return rc, out.getvalue(), err.getvalue()


class BuiltWorkspace:
    def __init__(self, root: Path, cache: Path, rc: int, out: str, err: str):
        self.root, self.cache, self.rc, self.out, self.err = root, cache, rc, out, err
        self.ws = Workspace(root)
        self.settings = settings_for(cache, root)

    def pair(self, name: str):
        sol = self.ws.solution(name)
        return self.ws.definition(sol.definition), sol

    def copy(self, dest: Path) -> "BuiltWorkspace":
        """A private copy of the built cache (same workspace)."""
        shutil.copytree(self.cache, dest)
        return BuiltWorkspace(self.root, dest, self.rc, self.out, self.err)


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
