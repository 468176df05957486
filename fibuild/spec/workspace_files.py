"""Where a workspace's files lie: the library shipped with fibuild, a new workspace's
skeleton (``fibuild init``), manifest file listing and the name checks paths are built from.
No I/O at import."""
from __future__ import annotations

from pathlib import Path

from fibuild.errors import FibuildError

_YAML = (".yaml", ".yml")


def _files(folder: Path, keep) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and keep(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


WORKSPACE_README = """# {name}

A fibuild workspace: definitions in `defs/<op_type>/<name>.yaml`, solutions in
`solutions/<definition>/<solution>/solution.yaml`, evaluations in `registry/` (run `fibuild validate` here).
"""
WORKSPACE_GITIGNORE = "# OS file locks of registry appends\n*.lock\n"


def init_workspace(root: str | Path) -> list[Path]:
    """Create an empty workspace at ``root``: ``defs/``, ``solutions/``, ``registry/``, a
    README.md and a .gitignore for lock files. Returns what was created.

    Existing README.md and .gitignore are kept. Raises FibuildError when ``root`` already
    holds a workspace (``defs/``) or is a file.
    """
    root = Path(root).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise FibuildError(f"{root} is a file: cannot create a workspace there")
    if (root / "defs").exists():
        raise FibuildError(f"{root} already holds a workspace ({root / 'defs'} exists)")
    created = []
    for name in ("defs", "solutions", "registry"):
        (root / name).mkdir(parents=True, exist_ok=True)
        created.append(root / name)
    for name, text in (("README.md", WORKSPACE_README.format(name=root.name)), (".gitignore", WORKSPACE_GITIGNORE)):
        path = root / name
        if not path.exists():
            path.write_text(text, encoding="utf-8")
            created.append(path)
    return created


def shipped_root() -> Path:
    """The kernel library shipped with fibuild (a read-mostly workspace).

    In an installed wheel it is package data, ``fibuild/_shipped/`` (setup.py copies
    ``defs/``, ``solutions/`` and ``registry/`` there); in a checkout or an editable install it
    is the repository root, the folder holding ``fibuild/`` and ``defs/``. Cost: two stats.
    """
    package = Path(__file__).resolve().parents[1]
    installed = package / "_shipped"
    if (installed / "defs").is_dir():
        return installed
    return package.parent


def _is_manifest_name(path: Path) -> bool:
    return path.suffix in _YAML or path.name == "workloads.jsonl"


def _plain_name(name: str) -> bool:
    """A name usable in a glob/path: no separators, wildcards or parent references."""
    return bool(name) and not any(c in name for c in "/\\*?[]") and name not in (".", "..")


_NOT_A_MANIFEST = ("not a manifest: expected a definition (defs/<op_type>/<name>.yaml), a "
                   "solution.yaml or a workloads.jsonl")


def _duplicate_message(what: str, name: str, other: Path | None, root: Path) -> str:
    where = ""
    if other is not None:
        try:
            where = f" (also in {Path(other).relative_to(root)})"
        except ValueError:
            where = f" (also in {other})"
    return f"duplicate {what} name {name!r}{where}"
