"""The package's import rules, read from the source with ``ast`` (nothing is imported).

1. A module's head shows what it depends on: an import inside a function body names a heavy
   or optional dependency (``DEFERRABLE``), or carries a trailing ``# deferred: <reason>``
   comment saying what importing it at the top would cost (kept for the few internal modules
   that pull a heavy dependency onto a path that must stay light, e.g. the warm
   ``fibuild.load`` path, which must not import yaml, jsonschema or the toolchain probes).
2. Imports only point down the stages (``STAGES``); nothing imports ``fibuild.cli``.
3. The module import graph, top-level and deferred imports together, has no cycle.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "fibuild"

# Heavy (slow to import: torch pulls in seconds) or optional (an extra that may be absent).
DEFERRABLE = frozenset({
    "torch", "triton", "tvm_ffi", "flashinfer", "jsonschema", "referencing", "yaml", "safetensors",
    "numpy", "matplotlib", "rich", "diskcache", "filelock", "distributed", "dask", "ninja",
    "importlib", "statistics",
})
DEFERRED_MARK = re.compile(r"#\s*deferred:\s*\S")

# Stage of a module -> its level; an import may point to a lower level or stay in its stage.
# registry.py sits under bench (bench appends evaluations to it, runtime reads them; it
# depends on spec alone); integrations and dataset are siblings that do not import each other.
# The base modules (the package itself, config, errors, devices, units) may use one another.
BASE = frozenset({"", "config", "errors", "devices", "units"})
STAGES = {
    "base": 0, "spec": 1, "compile": 2, "registry": 3, "bench": 4, "runtime": 5,
    "integrations": 6, "dataset": 6, "cli": 7, "__main__": 8,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Absolute names a statement imports: ``from a import b`` gives ``a`` and ``a.b``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if _is_package(module) else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    return [source] + [f"{source}.{alias.name}" for alias in node.names]


def _internal(name: str) -> str | None:
    """The fibuild module that ``name`` (a module or a module's attribute) lives in, or None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, source: str | None = None):
    """(statement, source line, deferred?) for every import statement of ``module`` (its file,
    or ``source`` read as that module)."""
    source = MODULES[module].read_text() if source is None else source
    lines = source.splitlines()
    tree = ast.parse(source)

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, lines[child.lineno - 1], in_function
            yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    yield from walk(tree, False)


def _edges():
    """(importer, imported fibuild module, line number, deferred?) for every internal import."""
    for module in MODULES:
        for node, _, deferred in _imports(module):
            found = {t for t in map(_internal, _targets(module, node)) if t and t != module}
            # A name taken from a module makes ``fibuild.x`` itself a target only when nothing deeper is.
            for target in found:
                if not any(other.startswith(target + ".") for other in found):
                    yield module, target, node.lineno, deferred


def _stage(module: str) -> str:
    stage = module.split(".")[1] if "." in module else ""
    return "base" if stage in BASE else stage


def _unmarked_deferred(module: str, source: str | None = None) -> list[str]:
    """The imports inside functions of ``module`` that are neither heavy/optional nor marked."""
    offenders = []
    for node, line, deferred in _imports(module, source):
        if not deferred or DEFERRED_MARK.search(line):
            continue
        relative = getattr(node, "level", 0)
        if relative or _targets(module, node)[0].split(".")[0] not in DEFERRABLE:
            offenders.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{node.lineno}: {line.strip()}")
    return offenders


def test_deferred_imports_are_heavy_or_marked():
    offenders = [line for module in MODULES for line in _unmarked_deferred(module)]
    assert not offenders, ("imports inside functions that are neither heavy/optional nor marked "
                           "'# deferred: <reason>' (move them to the module head):\n" + "\n".join(offenders))


def test_deferred_rule_flags_internal_and_light_imports():
    source = (
        "import json\n"
        "def f():\n"
        "    import torch.distributed as dist\n"
        "    from importlib import metadata\n"
        "    from fibuild.spec import model\n"
        "    from .table import ApplyTable  # deferred: reason given\n"
        "    class C:\n"
        "        def g(self):\n"
        "            from .collect import collect_table\n"
        "            import difflib\n"
    )
    flagged = [line.split(": ", 1)[1] for line in _unmarked_deferred("fibuild.runtime.api", source)]
    assert flagged == ["from fibuild.spec import model", "from .collect import collect_table", "import difflib"]


def test_deferred_marks_are_few():
    marked = [(m, line) for m in MODULES for _, line, deferred in _imports(m) if DEFERRED_MARK.search(line)]
    assert all(deferred for m in MODULES for _, line, deferred in _imports(m) if DEFERRED_MARK.search(line))
    assert len(marked) <= 25, marked


def _upward(importer: str, target: str) -> str | None:
    """Why ``importer`` may not import ``target`` under the stage rule, or None."""
    src, dst = _stage(importer), _stage(target)
    if dst == "cli" and src not in ("cli", "__main__"):  # python -m fibuild runs the CLI
        return "nothing imports cli"
    if src != dst and STAGES[dst] >= STAGES[src]:
        return f"{src} may not import {dst}"
    return None


def test_imports_point_down_the_stages():
    offenders = [f"{importer}:{lineno} imports {target} ({why})" for importer, target, lineno, _ in _edges()
                 if (why := _upward(importer, target))]
    assert not offenders, "imports pointing up or across the stages:\n" + "\n".join(offenders)


def test_stage_rule_flags_upward_and_sideways_imports():
    assert _upward("fibuild.spec.model", "fibuild.runtime.api")
    assert _upward("fibuild.bench.runner", "fibuild.runtime.dispatch")
    assert _upward("fibuild.runtime.api", "fibuild.cli.common")
    assert _upward("fibuild.dataset.files", "fibuild.integrations.session")
    assert _upward("fibuild.config", "fibuild.spec.model")
    assert not _upward("fibuild.cli.bench", "fibuild.spec.model")
    assert not _upward("fibuild.integrations.session", "fibuild.runtime.api")
    assert not _upward("fibuild.bench.runner", "fibuild.registry")
    assert not _upward("fibuild.devices", "fibuild.errors")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for start in graph:
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for importer, target, _, _ in _edges():
        graph[importer].add(target)
        # Importing a.b.c runs a/__init__ and a/b/__init__ first (those the importer is not inside).
        parts = target.split(".")
        for i in range(2, len(parts)):
            parent = ".".join(parts[:i])
            if not importer.startswith(parent + ".") and parent != importer:
                graph[importer].add(parent)
    return graph


def test_module_import_graph_has_no_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle (top-level and deferred imports): " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("module", ["fibuild.compile.cache", "fibuild.spec.workspace", "fibuild.runtime.api"])
def test_graph_sees_imports(module):
    assert _graph()[module], module
