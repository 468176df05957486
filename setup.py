"""Only what pyproject.toml cannot say. Everything else is in pyproject.toml.

- The wheel carries the shipped kernel library: ``defs/``, ``solutions/``, ``registry/`` and ``chains/``
  live at the top of the repository (a checkout is a workspace); ``build_py`` copies them into
  ``fibuild/_shipped/`` so that ``fibuild.load(...)``, ``fibuild validate`` and ``fibuild build
  --all`` work after ``pip install`` with no checkout. Editable installs skip the copy: there
  the checkout itself is the shipped workspace.
- ``fibuild_integrations.pth`` goes to the top of site-packages (wheel and editable installs):
  the hook that enables fibuild's serving integration when FIBUILD_TRACE or FIBUILD_APPLY is set.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = Path("fibuild", "integrations", "fibuild_integrations.pth")
LIBRARY = ("defs", "solutions", "registry", "chains")
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.lock", ".*")


class build_py_with_extras(build_py):
    """``build_py``, plus the hook next to the packages (site-packages' top level) and, except
    for editable installs, a copy of the shipped library in ``fibuild/_shipped``."""

    def run(self):
        super().run()
        self.copy_file(str(PTH), str(Path(self.build_lib, PTH.name)), preserve_mode=0)
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


cmdclass = {"build_py": build_py_with_extras}

try:
    from setuptools.command.editable_wheel import editable_wheel
except ImportError:  # setuptools < 64: no PEP 660 editable installs
    editable_wheel = None

if editable_wheel is not None:
    class editable_wheel_with_pth(editable_wheel):
        """Add the hook to the editable wheel too (the editable build skips build_py's files)."""

        def _create_wheel_file(self, bdist_wheel):
            from wheel.wheelfile import WheelFile

            path = super()._create_wheel_file(bdist_wheel)
            with WheelFile(path, "a") as wheel:
                wheel.write(str(PTH), PTH.name)
            return path

    cmdclass["editable_wheel"] = editable_wheel_with_pth

setup(cmdclass=cmdclass)
