"""The ``triton`` builder: ``@triton.jit`` kernels with a Python launcher.

Built like a ``python`` solution (sources copied, imported by path under a package
unique to the key); the key also holds Triton's version. Triton compiles kernels on
first launch into ``TRITON_CACHE_DIR``: :func:`pin_triton_cache` points it under
fibuild's cache (``$FIBUILD_CACHE_DIR/triton``) at build and load, **setting
``os.environ["TRITON_CACHE_DIR"]`` only when it is unset** (a user's choice wins), so
compiled kernels live and are collected with fibuild's builds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from fibuild.compile.builders import register
from fibuild.compile.builders.loading import load_triton, pin_triton_cache
from fibuild.compile.builders.python import PythonBuilder
from fibuild.compile.toolchain import package_version
from fibuild.config import Settings
from fibuild.spec.model import Definition, Solution


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
        return load_triton(build_dir, meta)
