"""Fail when pytest collects fewer test functions than the tree defines.

A folder that pytest never enters (``norecursedirs`` holds ``build``; a conftest that fails to
import; a file name pytest does not match) drops its tests silently. This guard reads every
``tests/**/test_*.py`` / ``*_test.py`` with ``ast`` and lists the test functions it defines
(module-level ``test*`` functions and ``test*`` methods of ``Test*`` classes, fixtures aside),
then runs ``pytest --collect-only`` and compares per file: each defined function must have
at least one collected item (parametrized items count once). A module skipped as a whole
at collection time (``pytest.skip(allow_module_level=True)``) is reported, not failed.

Usage: ``python .ci/collection_guard.py [--root DIR] [-- extra pytest args]``. Exit 0 and a
summary line when everything is collected; exit 1 listing what was not.
"""
from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path


def defined_tests(root: Path, folder: str = "tests") -> dict[str, set[str]]:
    """``{relative file: {test names}}`` as the source defines them (``Class::method`` for methods)."""
    found: dict[str, set[str]] = {}
    files = sorted({*(root / folder).rglob("test_*.py"), *(root / folder).rglob("*_test.py")})
    for path in files:
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") or part == "__pycache__" for part in Path(rel).parts):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        names = set()
        for node in tree.body:
            if _is_test_function(node):
                names.add(node.name)
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                names |= {f"{node.name}::{item.name}" for item in node.body if _is_test_function(item)}
        if names:
            found[rel] = names
    return found


def _is_test_function(node: ast.AST) -> bool:
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.name.startswith("test"):
        return False
    return not any("fixture" in ast.unparse(d) for d in node.decorator_list)


def collected_tests(root: Path, extra: list[str]) -> tuple[dict[str, set[str]], list[str], str]:
    """``({file: {names}}, skipped module lines, pytest output)`` from ``pytest --collect-only``.

    Raises SystemExit(1) when collection itself fails (an import error in a test module).
    """
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-rs", "-p", "no:cacheprovider", *extra]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if proc.returncode not in (0, 5):  # 5: nothing collected, which the comparison reports
        sys.stderr.write(output)
        raise SystemExit(f"collection guard: pytest --collect-only failed (exit {proc.returncode})")
    found: dict[str, set[str]] = defaultdict(set)
    for line in proc.stdout.splitlines():
        if "::" in line and not line.startswith(("SKIPPED", "ERROR", " ")):
            path, _, name = line.partition("::")
            found[path].add(re.sub(r"\[.*\]$", "", name))
    skipped = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    return found, skipped, output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="repository root (default: this checkout)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    defined = defined_tests(root)
    collected, skipped, output = collected_tests(root, args.pytest_args)
    skipped_files = {m.group(1) for line in skipped if (m := re.match(r"SKIPPED \[\d+\] ([^:]+)", line))}
    missing = {path: sorted(names - collected.get(path, set()))
               for path, names in defined.items() if path not in skipped_files}
    missing = {path: names for path, names in missing.items() if names}
    n_defined = sum(len(v) for v in defined.values())
    n_collected = sum(len(v & collected.get(p, set())) for p, v in defined.items())
    items = sum(1 for line in output.splitlines() if "::" in line and not line.startswith(("SKIPPED", "ERROR", " ")))
    for line in skipped:
        print(f"collection guard: note: {line}")
    if missing:
        count = sum(len(v) for v in missing.values())
        print(f"collection guard: FAILED: {count} of {n_defined} test functions defined under tests/ "
              f"were not collected by pytest:", file=sys.stderr)
        for path, names in sorted(missing.items()):
            print(f"  {path}: {', '.join(names)}", file=sys.stderr)
        folders = sorted({str(Path(p).parent) for p in missing})
        print(f"  (folders: {', '.join(folders)}; pytest skips folders named in norecursedirs, "
              "such as build, and files whose conftest fails to import)", file=sys.stderr)
        return 1
    print(f"collection guard: {n_collected} of {n_defined} test functions in {len(defined)} files collected "
          f"({items} test items with parametrization)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
