"""Builders: one per solution language, selected explicitly by ``sol.language``.

A builder turns a solution into a committed build directory and loads its entry point
back. Native builders (cpp, cuda) prepare a ``build.ninja``; Python-level builders
(python, triton) do their whole build in ``prepare``. Builder modules import only the
standard library at module level, so selecting one is cheap; heavy imports happen in
``load``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, runtime_checkable

from fibuild.errors import BuildError

if TYPE_CHECKING:
    from fibuild.config import Settings
    from fibuild.spec.model import Definition, Solution

# language -> module under fibuild.compile.builders that registers it (imported on first use).
_MODULES = {"cpp": "native", "cuda": "native", "triton": "triton", "python": "python"}
_REGISTRY: dict[str, "Builder"] = {}


@dataclass
class BuildPlan:
    """What ``prepare`` set up in a build directory.

    ``ninja_file``: the directory's ``build.ninja`` (None when ``prepare`` did the whole
    build); ``artifact``: the entry file, relative to the build directory; ``meta``: extra
    fields for ``meta.json`` that ``load`` needs.
    """

    artifact: str
    ninja_file: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Builder(Protocol):
    """The contract every builder meets.

    ``version`` is bumped whenever the generated commands or the directory layout
    change, so stale builds get new keys.
    """

    name: str
    version: int

    def unavailable_reason(self, settings: Settings) -> str | None:
        """Why this builder cannot build here (no nvcc, ...), or None. Cheap after the first call."""

    def accepts(self, sol: Solution) -> bool:
        """True when ``sol`` is in this builder's language."""

    def key_inputs(self, defn: Definition, sol: Solution, settings: Settings) -> dict[str, Any]:
        """``{"flags", "toolchain", "arch", "env"}`` for the build key; no file I/O beyond probes."""

    def prepare(self, defn: Definition, sol: Solution, settings: Settings, build_dir: Path) -> BuildPlan:
        """Fill the empty ``build_dir`` (copies of the sources, ``build.ninja``); raise BuildError."""

    def load(self, build_dir: Path, meta: Mapping[str, Any]) -> Callable:
        """The raw entry point of a committed build described by ``meta``; raise BuildError."""


def register(*languages: str) -> Callable[[type], type]:
    """Class decorator: instantiate the builder and select it for ``languages``."""

    def decorate(cls: type) -> type:
        instance = cls()
        for language in languages:
            _REGISTRY[language] = instance
        return cls

    return decorate


def get_builder(language: str) -> Builder:
    """The builder registered for ``language``; BuildError naming the known ones otherwise."""
    builder = _REGISTRY.get(language)
    if builder is None and language in _MODULES:
        importlib.import_module(f"{__name__}.{_MODULES[language]}")
        builder = _REGISTRY.get(language)
    if builder is None:
        raise BuildError(f"no builder for language {language!r} (known: {', '.join(sorted(_MODULES))})")
    return builder


def available(builder: Builder, settings: Settings) -> bool:
    return builder.unavailable_reason(settings) is None
