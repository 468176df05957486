"""The ``triton`` builder: ``@triton.jit`` kernels with a Python launcher.

Built like a ``python`` solution (sources copied, imported by path under a package
unique to the key); the key also holds Triton's version. Triton compiles kernels on
first launch into its own content-addressed cache (``TRITON_CACHE_DIR``, else
``~/.triton/cache``); fibuild leaves that choice to Triton and the user: pointing it
elsewhere would mean writing the process environment (Triton's own knob does), which a
library loaded into a user's process must not do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from fibuild.compile.builders import register
from fibuild.compile.builders.loading import load_python
from fibuild.compile.builders.python import PythonBuilder
from fibuild.compile.toolchain import package_version
from fibuild.config import Settings


@register("triton")
class TritonBuilder(PythonBuilder):
    name = "triton"
    version = 1
    language = "triton"

    def unavailable_reason(self, settings: Settings) -> str | None:
        return None if package_version("triton") else "triton is not installed"

    def toolchain(self) -> dict[str, Any]:
        return {**super().toolchain(), "triton": package_version("triton")}

    def load(self, build_dir: Path, meta: Mapping[str, Any]) -> Callable:
        return load_python(build_dir, meta)
