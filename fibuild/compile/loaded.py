"""The result of a build: a solution's entry point, loaded, with where it came from."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from fibuild.spec.model import Definition, Solution


@dataclass(frozen=True)
class LoadedKernel:
    """A committed build, loaded.

    ``entry`` is the raw entry point (a tvm-ffi function or a Python function, in the
    solution's own calling style); ``call`` wraps it in the value-returning convention
    of :mod:`fibuild.spec.calling`. ``meta`` is the build's ``meta.json``.
    """

    definition: Definition
    solution: Solution
    build_key: str
    build_dir: Path
    entry: Callable
    call: Callable
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __call__(self, *args, **kwargs):
        return self.call(*args, **kwargs)
