"""A workspace: ``defs/``, ``solutions/`` and ``registry/`` under one root.

Files are found by layout (``defs/<op_type>/<name>.yaml``,
``solutions/<definition>/<name>/solution.yaml``, ``registry/<definition>/workloads.jsonl``)
and loaded lazily; each instance caches what it loaded (build a new one to see changes).

The user workspace (``$XDG_DATA_HOME/fibuild``, used when no other is found) lies over the
shipped library: it reads both, its own files first (a definition or solution of the same
name shadows the shipped one; registry records of both count), and writes only under its
own root. The installed library is never written to.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from fibuild.config import Settings
from fibuild.errors import FibuildError, ManifestError, ManifestErrors

from .manifest import load_definition, load_solution, load_workloads_jsonl
from .model import Definition, Solution, Workload
from .variants import expand, split_name
from .workspace_checks import validate_workspace
from .workspace_files import (
    _YAML,
    _duplicate_message,
    _files,
    _is_manifest_name,
    _plain_name,
    init_workspace,
    shipped_root,
)

if TYPE_CHECKING:
    from fibuild.config import Settings



class Workspace:
    """Definitions, solutions and workloads of one root folder.

    ``Workspace(root)`` does no I/O; the first access of each part scans and validates it.
    Accessors raise ManifestError (one file) or ManifestErrors (several) for invalid
    manifests and FibuildError for unknown names; ``validate()`` never raises for them.
    """

    def __init__(self, root: str | Path, origin: str = "given", *, base: str | Path | None = None):
        self.root = Path(root).expanduser().resolve()
        #: How the root was chosen, for messages: given, FIBUILD_ROOT or --root, the current
        #: directory's ancestry, or the user workspace over the shipped library.
        self.origin = origin
        #: A read-only workspace beneath this one (the shipped library under the user
        #: workspace), or None. Reads see both layers; writes go under ``root`` only.
        self.base = Path(base).expanduser().resolve() if base is not None and Path(base).resolve() != self.root \
            else None
        self._definitions: dict[str, Definition] | None = None
        self._one_definition: dict[str, Definition] = {}
        self._solutions: dict[str | None, list[Solution]] = {}
        self._one_solution: dict[str, Solution] = {}
        self._workloads: dict[str, list[Workload]] = {}

    def __repr__(self) -> str:
        base = f", base={str(self.base)!r}" if self.base else ""
        return f"Workspace({str(self.root)!r}{base})"

    @classmethod
    def discover(cls, settings: "Settings | None" = None, *, cwd: str | Path | None = None) -> "Workspace":
        """The workspace in use: ``settings.root`` (``FIBUILD_ROOT``/``--root``), else the
        nearest ancestor of ``cwd`` (default: the current directory) holding ``defs/``, else
        the user workspace (``$XDG_DATA_HOME/fibuild``) over the library shipped with fibuild.
        Reads the environment only when ``settings`` is None.
        """
        if settings is None:
            settings = Settings.from_env()
        if settings.root is not None:
            return cls.at(settings.root, settings, "set by FIBUILD_ROOT or --root")
        here = Path(cwd if cwd is not None else Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / "defs").is_dir():
                return cls(folder, f"the nearest folder holding defs/ at or above {here}")
        return cls(settings.user_root, f"the user workspace over the shipped library (no folder holding "
                   f"defs/ from {here})", base=shipped_root())

    @classmethod
    def at(cls, root: str | Path, settings: "Settings | None" = None, origin: str = "given") -> "Workspace":
        """The workspace at ``root``; the user workspace (``settings.user_root``) lies over
        the shipped library wherever it is named (worker processes rebuild it this way)."""
        settings = settings or Settings.from_env()
        root = Path(root).expanduser().resolve()
        return cls(root, origin, base=shipped_root() if root == settings.user_root else None)

    def reloaded(self) -> "Workspace":
        """A fresh instance of this workspace (same layers), to see files written since."""
        return type(self)(self.root, self.origin, base=self.base)

    @property
    def layers(self) -> tuple[Path, ...]:
        """The roots read, first wins: ``(root,)`` or ``(root, base)``."""
        return (self.root,) if self.base is None else (self.root, self.base)

    @property
    def read_only(self) -> bool:
        """Whether ``root`` is the library installed inside the fibuild package (never written)."""
        return self.root == shipped_root() and self.root.name == "_shipped"

    def ensure_writable(self) -> Path:
        """Make sure results can be written under ``registry_dir``, before any work starts:
        the user workspace is created (as ``fibuild init`` makes one) when missing. Returns
        the registry folder; FibuildError naming the folder and what to do otherwise."""
        if self.read_only:
            raise FibuildError(f"{self.root} is the library installed with fibuild, which is never written "
                               "to: run in a workspace (fibuild init DIR), or set FIBUILD_ROOT / --root")
        if not (self.root / "defs").is_dir() and self.base is not None:
            init_workspace(self.root)
        folder = self.registry_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-check-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise FibuildError(f"cannot write results under {folder} ({exc.strerror or exc}): point --root or "
                               "FIBUILD_ROOT at a writable workspace (fibuild init DIR makes one)") from None
        return folder

    @property
    def defs_dir(self) -> Path:
        return self.root / "defs"

    @property
    def solutions_dir(self) -> Path:
        return self.root / "solutions"

    @property
    def registry_dir(self) -> Path:
        return self.root / "registry"

    # --- files ---------------------------------------------------------------------

    def _layered(self, files_of) -> list[Path]:
        """``files_of(root)`` of every layer, a file of a lower layer dropped when an upper
        one has the same path below its root (or, for definitions, the same name)."""
        if self.base is None:
            return files_of(self.root)

        def key(path: Path, layer: Path):
            rel = path.relative_to(layer)
            return ("defs", path.stem) if rel.parts[0] == "defs" else rel.parts

        found: list[Path] = []
        above: set = set()  # what the layers above hold; a layer's own duplicates stay (validation reports them)
        for layer in self.layers:
            mine = files_of(layer)
            found += [p for p in mine if key(p, layer) not in above]
            above |= {key(p, layer) for p in mine}
        return found

    def definition_files(self) -> list[Path]:
        """Every ``*.yaml`` under ``defs/`` (misplaced ones included: validation flags them)."""
        return self._layered(lambda root: _files(root / "defs", lambda p: p.suffix in _YAML))

    def solution_files(self, definition: str | None = None) -> list[Path]:
        """Every ``solution.yaml`` under ``solutions/`` (or ``solutions/<definition>/``)."""
        def files(root: Path) -> list[Path]:
            folder = root / "solutions" if definition is None else root / "solutions" / definition
            return _files(folder, lambda p: p.name == "solution.yaml")
        return self._layered(files)

    def workload_files(self) -> list[Path]:
        """Every ``registry/<definition>/workloads.jsonl``."""
        return self._layered(lambda root: sorted((root / "registry").glob("*/workloads.jsonl")))

    def manifest_files(self, paths: Iterable[str | Path] | None = None) -> list[Path]:
        """The files ``validate(paths)`` checks: all manifests, or ``paths`` with folders
        expanded to the manifests inside them (absolute, sorted, deduplicated)."""
        if paths is None:
            return self.definition_files() + self.solution_files() + self.workload_files()
        found: dict[Path, None] = {}
        for raw in paths:
            path = Path(raw).expanduser().resolve()
            if path.is_dir():
                found.update(dict.fromkeys(_files(path, _is_manifest_name)))
            else:
                found[path] = None
        return list(found)

    def require_manifests(self, files: list[Path], paths: Iterable[str | Path] | None = None) -> None:
        """Raise FibuildError when ``files`` (from :meth:`manifest_files`) is empty: an empty
        workspace is a mistake to report (a wrong ``--root``), never "0 manifests OK"."""
        if files:
            return
        if paths is not None:
            raise FibuildError(f"no manifests in {', '.join(str(p) for p in paths)}: expected definition "
                               ".yaml files, solution.yaml files or workloads.jsonl files, or folders holding them")
        missing = "" if self.root.is_dir() else " (the folder does not exist)"
        raise FibuildError(
            f"no manifests in workspace {self.root}{missing} ({self.origin}): looked for "
            f"{self.defs_dir}/<op_type>/<name>.yaml, {self.solutions_dir}/<definition>/<solution>/solution.yaml "
            f"and {self.registry_dir}/<definition>/workloads.jsonl")

    def _definition_names(self) -> set[str]:
        """Names of the definitions present, valid or not (file stems: cheap, no parsing)."""
        return {p.stem for layer in self.layers for p in (layer / "defs").glob("*/*") if p.suffix in _YAML}

    # --- definitions ---------------------------------------------------------------

    @property
    def definitions(self) -> dict[str, Definition]:
        """Every definition by name (sorted). Raises ManifestErrors listing every bad file."""
        if self._definitions is None:
            loaded, errors = self._load_definitions()
            if errors:
                raise ManifestErrors(errors)
            self._definitions = loaded
        return self._definitions

    def definition(self, name: str) -> Definition:
        """The definition ``name``; loads only its file when not all are loaded yet.

        Raises FibuildError for an unknown name (with the closest known names),
        ManifestError when its file is invalid or the name is defined twice.
        """
        if self._definitions is not None:
            if name in self._definitions:
                return self._definitions[name]
            raise self._unknown("definition", name, self._definitions)
        if name in self._one_definition:
            return self._one_definition[name]

        files = []
        for layer in self.layers if _plain_name(name) else ():  # the first layer holding it
            files = sorted(p for p in (layer / "defs").glob(f"*/{name}.*") if p.suffix in _YAML)
            if files:
                break
        if not files:
            raise self._unknown("definition", name, self._definition_names())
        if len(files) > 1:
            raise ManifestError(files[1], [("/name", _duplicate_message("definition", name, files[0], self.root))])
        defn = load_definition(files[0])
        self._one_definition[name] = defn
        return defn

    def _load_definitions(self) -> tuple[dict[str, Definition], list[ManifestError]]:
        loaded: dict[str, Definition] = {}
        errors: list[ManifestError] = []
        for path in self.definition_files():
            if path.parent.parent not in [layer / "defs" for layer in self.layers]:
                errors.append(ManifestError(path, [("/", "misplaced: definitions live at "
                                                     "defs/<op_type>/<name>.yaml")]))
                continue
            try:
                defn = load_definition(path)
            except ManifestError as exc:
                errors.append(exc)
                continue
            if defn.name in loaded:
                errors.append(ManifestError(path, [("/name", _duplicate_message(
                    "definition", defn.name, loaded[defn.name].path, self.root))]))
                continue
            loaded[defn.name] = defn
        return dict(sorted(loaded.items())), errors

    # --- solutions -----------------------------------------------------------------

    def solutions(self, definition: str | Definition | None = None) -> list[Solution]:
        """Every solution (of ``definition`` if given), sorted by qualified name; a manifest
        with a ``variants`` grid stands for its variants (``name[K=v,...]``), not itself.

        Raises ManifestErrors listing every bad solution file, FibuildError for an
        unknown definition.
        """
        name = definition.name if isinstance(definition, Definition) else definition
        if name in self._solutions:
            return self._solutions[name]
        names = self._definition_names()
        if name is not None and name not in names:
            raise self._unknown("definition", name, names)
        loaded, errors = self._load_solutions(name, names)
        if errors:
            raise ManifestErrors(errors)
        self._solutions[name] = loaded
        return loaded

    def solution(self, name: str, definition: str | Definition | None = None) -> Solution:
        """A solution by ``"definition/solution"``, or by its name (within ``definition``
        if given). FibuildError if unknown or ambiguous (the message lists candidates).

        A variant is named ``solution[K=v,...]``; the plain name of a manifest with a grid
        gives the manifest itself (its ``variants`` set, no ``constants``)."""
        defn = definition.name if isinstance(definition, Definition) else definition
        if "/" in name:
            defn, _, name = name.partition("/")
        base, params = split_name(name)
        if params is not None:
            parent = self.solution(base, defn)
            found = [v for v in expand(parent) if v.name == name]
            if found:
                return found[0]
            names = [v.name for v in expand(parent)]
            raise self._unknown(f"variant of {parent.qualified_name!r}", name, names)
        if defn is not None:
            cached = self._one_solution.get(f"{defn}/{name}")
            if cached is not None:
                return cached
            for layer in self.layers if _plain_name(defn) and _plain_name(name) else ():
                path = layer / "solutions" / defn / name / "solution.yaml"
                if path.is_file():
                    sol = load_solution(path, self._definition_names())
                    self._one_solution[sol.qualified_name] = sol
                    return sol
            candidates = [s.name for s in self.solutions(defn)]
            raise self._unknown(f"solution of {defn!r}", name, candidates)
        matches = [s for s in self.solutions() if s.name == name]
        if not matches:  # a manifest with a grid, named by its plain name
            grids = sorted({s.definition for s in self.solutions() if s.family == name and s.variants})
            matches = [self.solution(name, d) for d in grids]
        if len(matches) == 1:
            return matches[0]
        if matches:
            choices = ", ".join(s.qualified_name for s in matches)
            raise FibuildError(f"solution name {name!r} is ambiguous: use one of {choices}")
        raise self._unknown("solution", name, sorted({s.name for s in self.solutions()}))

    def _load_solutions(self, definition: str | None, names: set[str]) -> tuple[list[Solution], list[ManifestError]]:
        """Load solution files. Qualified names are unique by layout: load_solution checks
        that the directory is the name and its parent the definition."""
        loaded: dict[str, Solution] = {}
        errors: list[ManifestError] = []
        for path in self.solution_files(definition):
            if path.parent.parent.parent not in [layer / "solutions" for layer in self.layers]:
                errors.append(ManifestError(path, [("/", "misplaced: solutions live at "
                                                     "solutions/<definition>/<name>/solution.yaml")]))
                continue
            try:
                sol = load_solution(path, names)
            except ManifestError as exc:
                errors.append(exc)
                continue
            for variant in expand(sol):
                loaded[variant.qualified_name] = variant
        return [loaded[k] for k in sorted(loaded)], errors

    # --- workloads -----------------------------------------------------------------

    def workloads(self, definition: str | Definition) -> list[Workload]:
        """Declared workloads, then those of ``registry/<definition>/workloads.jsonl``.

        Raises ManifestError for a bad workloads file (a uuid already declared included).
        """
        defn = definition if isinstance(definition, Definition) else self.definition(definition)
        if defn.name not in self._workloads:
            self._workloads[defn.name] = list(defn.workloads) + self._recorded_workloads(defn)
        return self._workloads[defn.name]

    def recorded_workloads(self, definition: str | Definition) -> list[Workload]:
        """The workloads of ``registry/<definition>/workloads.jsonl`` only (traced or
        imported), not those the manifest declares. Raises ManifestError for a bad file."""
        defn = definition if isinstance(definition, Definition) else self.definition(definition)
        return self.workloads(defn)[len(defn.workloads):]

    def _recorded_workloads(self, defn: Definition) -> list[Workload]:
        found: list[Workload] = []
        for layer in reversed(self.layers):  # the shipped library's first, then the user's
            path = layer / "registry" / defn.name / "workloads.jsonl"
            if path.is_file():
                found += load_workloads_jsonl(path, defn)
        return found

    # --- validation ----------------------------------------------------------------

    def validate(self, paths: Iterable[str | Path] | None = None) -> list[ManifestError]:
        """Every problem of the workspace (or of ``paths``: files or folders), one
        ManifestError per bad file, sorted by file. Never raises ManifestError."""
        return validate_workspace(self, paths)

    def _unknown(self, what: str, name: str, known: Iterable[str]) -> FibuildError:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = f" (known: {', '.join(known)})" if known and not close and len(known) <= 20 else ""
        return FibuildError(f"unknown {what} {name!r} in workspace {self.root}{hint}{listing}")
