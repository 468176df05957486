"""The ``python`` builder: plain torch solutions (and FlashInfer baselines calling flashinfer).

A build copies the sources into the build directory and checks their syntax; loading
imports the copy by path under a package unique to the build key, so the module a
process runs never changes underneath it. Dependencies such as ``flashinfer`` are
imported by the solution itself, lazily.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from fibuild.compile.builders import BuildPlan, register
from fibuild.compile.builders.loading import load_python
from fibuild.compile.builders.sources import SRC_DIR, check_python_syntax, copy_sources
from fibuild.config import Settings
from fibuild.errors import BuildError
from fibuild.spec.model import Definition, Solution


@register("python")
class PythonBuilder:
    name = "python"
    version = 1
    language = "python"

    def unavailable_reason(self, settings: Settings) -> str | None:
        return None

    def accepts(self, sol: Solution) -> bool:
        return sol.language == self.language

    def toolchain(self) -> dict[str, Any]:
        return {"python": f"{sys.version_info.major}.{sys.version_info.minor}"}

    def key_inputs(self, defn: Definition, sol: Solution, settings: Settings) -> dict[str, Any]:
        return {"flags": {}, "toolchain": self.toolchain(), "arch": [], "env": {}}

    def prepare(self, defn: Definition, sol: Solution, settings: Settings, build_dir: Path) -> BuildPlan:
        if not sol.entry_file.endswith(".py"):
            raise BuildError(f"{sol.qualified_name}: entry point {sol.entry_point!r} is not a .py file",
                             solution=sol.qualified_name, build_dir=build_dir)
        meta: dict[str, Any] = {"entry_file": sol.entry_file, "pdl": sol.pdl}
        if sol.constants:  # a variant's: keyword arguments of the entry point (of the plan step)
            meta["constants"] = dict(sol.constants)
        if sol.plan:
            meta.update(plan_meta(defn, sol, build_dir))
        src = copy_sources(sol, build_dir)
        check_python_syntax(sol, src, build_dir)
        (build_dir / "build.log").write_text(f"copied {len(sol.all_sources)} source(s) to {src}\n")
        return BuildPlan(artifact=f"{SRC_DIR}/{sol.entry_file}", meta=meta)

    def load(self, build_dir: Path, meta: Mapping[str, Any]) -> Callable:
        return load_python(build_dir, meta)


def plan_meta(defn: Definition, sol: Solution, build_dir: Path) -> dict[str, Any]:
    """``meta.json`` fields of a plan/run solution: its plan function and the positions of the
    structural inputs it takes. BuildError when the definition marks no input structural."""
    positions = [i for i, spec in enumerate(defn.inputs) if spec.structural]
    if not positions:
        raise BuildError(f"{sol.qualified_name}: declares plan {sol.plan!r} but {defn.name} marks no "
                         "input `structural: true` to plan from", solution=sol.qualified_name,
                         build_dir=build_dir)
    return {"plan_file": sol.plan_file, "plan_symbol": sol.plan_symbol, "plan_inputs": positions}
