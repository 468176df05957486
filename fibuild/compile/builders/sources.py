"""Helpers shared by builders: copying sources into a build dir and importing Python by path."""
from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Mapping

from fibuild.errors import BuildError

if TYPE_CHECKING:
    from fibuild.spec.model import Solution

SRC_DIR = "src"  # the copies of a solution's sources, inside its build directory


def copy_sources(sol: Solution, build_dir: Path) -> Path:
    """Copy every source of ``sol`` (its own, then its libraries' files) to ``build_dir/src``
    (same relative layout); return that dir.

    Builds compile and import the copies, so a source edited during a build never mixes
    with the key computed from the old contents. Raises BuildError for a missing source.
    """
    if sol.path is None:
        raise BuildError(f"{sol.qualified_name}: the solution has no directory", solution=sol.qualified_name)
    dest = build_dir / SRC_DIR
    for rel, path in sol.files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(path, target)
        except OSError as exc:
            raise BuildError(f"{sol.qualified_name}: cannot copy source {rel}: {exc.strerror}",
                             solution=sol.qualified_name, build_dir=build_dir) from None
    return dest


def at_user_sources(text: str, sol: Solution, build_dir: Path) -> str:
    """``text`` (a compiler's diagnostics) with every ``<build dir>/src/<file>:<line>`` or
    ``<file>(<line>)`` (nvcc) pointing at the solution's own file instead of the build's
    copy, so an editor jumps to the file the user edits. Command lines, which name the copy
    without a line number, are left as they ran."""
    if sol.path is None:
        return text
    copies = re.escape(str(build_dir / SRC_DIR) + os.sep)
    return re.sub(copies + r"([^\s:()]+)(?=:\d|\(\d|: )", lambda m: str(sol.path / m.group(1)), text)


def check_python_syntax(sol: Solution, src_dir: Path, build_dir: Path) -> None:
    """Compile (without running) each ``.py`` source; a SyntaxError becomes a BuildError."""
    for rel in sol.all_sources:
        if not rel.endswith(".py"):
            continue
        path = src_dir / rel
        try:
            compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        except SyntaxError as exc:
            where = f"{sol.path / rel if sol.path else rel}:{exc.lineno}"
            raise BuildError(f"{sol.qualified_name}: syntax error at {where}: {exc.msg}",
                             solution=sol.qualified_name, build_dir=build_dir,
                             log_tail=f"{where}: {exc.text or ''}".rstrip()) from None


def module_names(build_dir: Path, entry_file: str) -> tuple[str, str]:
    """``(package, module)``: a package unique to the build directory and the entry module in it.

    Named after the directory (not only the key) so two caches holding the same key
    never share a module whose ``__path__`` points into the other one.
    """
    package = f"fibuild_build_{hashlib.sha256(str(build_dir).encode()).hexdigest()[:24]}"
    parts = PurePosixPath(entry_file).with_suffix("").parts
    return package, ".".join((package, *parts))


def import_entry(build_dir: Path, meta: Mapping[str, Any]) -> Callable:
    """Import ``meta["entry_file"]`` from ``build_dir/src`` under a package unique to that directory.

    The sources directory becomes the package's path, so relative imports between a
    solution's files work (``from .helpers import f``); the module is registered in
    ``sys.modules`` (Triton and dataclasses look modules up there). Importing the same
    build twice returns the module already imported. Raises BuildError if the import
    fails or the function is missing.
    """
    package, module_name = module_names(build_dir, meta["entry_file"])
    if package not in sys.modules:
        spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
        pkg = importlib.util.module_from_spec(spec)
        pkg.__path__ = [str(build_dir / SRC_DIR)]
        sys.modules[package] = pkg
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any error in solution code at import is a load failure
        raise BuildError(f"{meta['solution']}: importing {meta['entry_file']} failed: "
                         f"{type(exc).__name__}: {exc}", solution=meta["solution"], build_dir=build_dir) from exc
    func = getattr(module, meta["entry_symbol"], None)
    if not callable(func):
        raise BuildError(f"{meta['solution']}: {meta['entry_file']} defines no function {meta['entry_symbol']!r}",
                         solution=meta["solution"], build_dir=build_dir)
    return func
