"""The ``triton`` builder: ``@triton.jit`` kernels with a Python launcher.

Built like a ``python`` solution (sources copied, imported by path under a package
unique to the key); the key also holds Triton's version. Triton compiles kernels on
first launch into ``TRITON_CACHE_DIR``: :func:`pin_triton_cache` points it under
fibuild's cache (``$FIBUILD_CACHE_DIR/triton``) at build and load, **setting
``os.environ["TRITON_CACHE_DIR"]`` only when it is unset** (a user's choice wins), so
compiled kernels live and are collected with fibuild's builds.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

from fibuild.build.builders import register
from fibuild.build.builders.python import PythonBuilder
from fibuild.build.builders.sources import import_entry
from fibuild.build.toolchain import package_version
from fibuild.config import Settings
from fibuild.spec.model import Definition, Solution


def pin_triton_cache(cache_dir: Path) -> str:
    """Set TRITON_CACHE_DIR to ``cache_dir/triton`` if unset; return the value in effect."""
    return os.environ.setdefault("TRITON_CACHE_DIR", str(cache_dir / "triton"))


@register("triton")
class TritonBuilder(PythonBuilder):
    name = "triton"
    version = 1
    language = "triton"

    def unavailable_reason(self, settings: Settings) -> str | None:
        return None if package_version("triton") else "triton is not installed"

    def toolchain(self) -> dict[str, Any]:
        return {**super().toolchain(), "triton": package_version("triton")}

    def prepare(self, defn: Definition, sol: Solution, settings: Settings, build_dir: Path):
        pin_triton_cache(settings.cache_dir)
        return super().prepare(defn, sol, settings, build_dir)

    def load(self, build_dir: Path, meta: Mapping[str, Any]) -> Callable:
        # build_dir is <cache>/builds/<xx>/<dir>: the cache root is three levels up.
        pin_triton_cache(build_dir.parents[2])
        return import_entry(build_dir, meta)
