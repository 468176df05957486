"""Loading a committed build's entry point: the only builder code on ``load_committed``'s path.

Kept apart from the builders so that loading imports neither the toolchain probes nor
the ninja writer (nor ``subprocess``): a warm start pays only for the load itself.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Mapping

from fibuild.compile.builders.sources import import_entry, module_names
from fibuild.compile.launch import configure_package
from fibuild.compile.plans import PlannedEntry
from fibuild.config import Settings
from fibuild.errors import BuildError

# Heavy or optional dependencies, imported inside the functions that use them: tvm_ffi.


def load_native(build_dir: Path, meta: Mapping[str, Any]) -> Callable:
    """``tvm_ffi.load_module(artifact)[entry_symbol]``; BuildError if either step fails."""
    import tvm_ffi

    path = build_dir / meta["artifact"]
    try:
        return tvm_ffi.load_module(str(path))[meta["entry_symbol"]]
    except Exception as exc:  # tvm-ffi raises its own error types for dlopen and lookup
        raise BuildError(f"{meta['solution']}: cannot load {meta['entry_symbol']!r} from {path}: "
                         f"{type(exc).__name__}: {exc}", solution=meta["solution"], build_dir=build_dir) from exc


def load_python(build_dir: Path, meta: Mapping[str, Any]) -> Callable:
    """The entry function; for a plan/run solution (``meta["plan_symbol"]``) a
    :class:`~fibuild.compile.plans.PlannedEntry` joining its plan and run. A variant's
    ``meta["constants"]`` are bound as keyword arguments of the entry function, or of the
    plan step of a plan/run solution (the plan carries what the run needs). The module's
    :class:`~fibuild.compile.launch.TritonLaunch` kernels get dependent launch when the
    manifest declares ``launch: {pdl: true}`` and ``FIBUILD_PDL`` allows it."""
    entry = import_entry(build_dir, meta)
    configure_package(module_names(build_dir, meta["entry_file"])[0],
                      pdl=bool(meta.get("pdl")) and Settings.from_env().pdl)
    constants = meta.get("constants") or {}
    if not meta.get("plan_symbol"):
        return functools.partial(entry, **constants) if constants else entry

    plan = import_entry(build_dir, {**meta, "entry_file": meta["plan_file"], "entry_symbol": meta["plan_symbol"]})
    if constants:
        plan = functools.partial(plan, **constants)
    return PlannedEntry(entry, plan, meta["plan_inputs"], name=meta["solution"])


LOADERS: dict[str, Callable[[Path, Mapping[str, Any]], Callable]] = {
    "cpp": load_native, "cuda": load_native, "python": load_python, "triton": load_python,
}


def load_entry(build_dir: Path, meta: Mapping[str, Any]) -> Callable:
    """The entry point of the committed build ``meta`` describes, by its language."""
    loader = LOADERS.get(meta["language"])
    if loader is None:
        raise BuildError(f"{build_dir}: meta.json names unknown language {meta['language']!r}",
                         build_dir=build_dir)
    return loader(build_dir, meta)
