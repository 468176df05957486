"""Packaging hook: the wheel carries the shipped kernel library.

``defs/``, ``solutions/`` and ``registry/`` live at the top of the repository (a checkout is a
workspace); a wheel copies them into ``fibuild/_shipped/`` so that ``fibuild.load(...)``,
``fibuild validate`` and ``fibuild build --all`` work after ``pip install fibuild`` with no
checkout. Editable installs skip the copy: there the checkout itself is the shipped workspace.
Everything else is declared in pyproject.toml.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

LIBRARY = ("defs", "solutions", "registry")
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.lock", ".*")


class BuildPyWithLibrary(build_py):
    """``build_py`` plus a copy of the shipped workspace into ``fibuild/_shipped``."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        here = Path(__file__).resolve().parent
        target = Path(self.build_lib) / "fibuild" / "_shipped"
        if target.exists():
            shutil.rmtree(target)
        for name in LIBRARY:
            source = here / name
            if not source.is_dir():
                raise SystemExit(f"setup.py: {source} is missing: the shipped library cannot be packaged")
            shutil.copytree(source, target / name, ignore=_SKIP)


setup(cmdclass={"build_py": BuildPyWithLibrary})
