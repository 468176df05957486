"""Helpers of the native build tests: the fixture workspace, settings, in-process CLI runs.

A module of its own (not conftest) so test files import it by a name no other folder uses.
"""
from __future__ import annotations

import argparse
import io
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from fibuild.config import Settings
from fibuild.spec.workspace import Workspace

FIXTURE_ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "compile" / "workspace"


def settings_for(cache: Path, root: Path, **env: str) -> Settings:
    return Settings.from_env({"FIBUILD_CACHE_DIR": str(cache), "FIBUILD_ROOT": str(root),
                              "FIBUILD_MAX_JOBS": "2", "FIBUILD_CUDA_ARCH_LIST": "9.0a", **env})


def run_cli(command: str, argv: list[str], settings: Settings) -> tuple[int, str, str]:
    """Run one of fibuild/cli/build.py's subcommands in-process; return (rc, stdout, stderr)."""
    from fibuild.cli import build as cli
    from fibuild.cli import common_options

    parser = argparse.ArgumentParser(parents=[common_options()])
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
