"""Reading manifest files into plain dicts, reporting every problem with its pointer.

YAML goes through ``yaml.SafeLoader`` (no Python object tags); duplicate keys, which
PyYAML silently collapses to the last one, are reported. Nothing here raises for bad
input: problems come back as ``(json_pointer, message)`` pairs for a ManifestError.

Bounds, so a small hostile file cannot stall or crash a command: a manifest is at most
``MAX_MANIFEST_BYTES``; its node tree, with every alias expanded, at most
``MAX_NODES`` nodes and ``MAX_DEPTH`` levels (checked on the composed graph, before
anything is expanded: a 1.5 KB "billion laughs" file is refused in milliseconds); a
JSON line at most ``MAX_LINE_BYTES`` and ``MAX_DEPTH`` levels. Control characters YAML
forbids are reported with their line and column.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .schema import describe_value, pointer_of

# Heavy or optional dependencies, imported inside the functions that use them: yaml.

Problems = list[tuple[str, str]]

MAX_MANIFEST_BYTES = 1 << 20
MAX_NODES = 200_000
MAX_DEPTH = 64
MAX_LINE_BYTES = 1 << 20


def read_text(path: Path, limit: int | None = MAX_MANIFEST_BYTES) -> tuple[str | None, Problems]:
    """The file's UTF-8 text, or a problem saying why it cannot be read.

    ``limit`` caps the size in bytes (None: no cap)."""
    try:
        if limit is not None:
            size = path.stat().st_size
            if size > limit:
                return None, [("/", f"file is {size} bytes; a manifest may hold at most {limit} bytes")]
        return path.read_text(encoding="utf-8"), []
    except FileNotFoundError:
        return None, [("/", "file not found")]
    except IsADirectoryError:
        return None, [("/", "is a directory, expected a file")]
    except UnicodeDecodeError as exc:
        return None, [("/", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]
    except OSError as exc:
        return None, [("/", f"cannot read: {exc.strerror or exc}")]


def parse_yaml_mapping(text: str) -> tuple[dict | None, Problems]:
    """Parse one YAML document that must be a mapping.

    Returns ``(data, problems)``: ``data`` is None when the text is unusable (malformed,
    empty, not a mapping); otherwise problems hold duplicate and non-string keys (those
    keys are kept as the last value / converted with ``str`` so schema checks still run).
    """
    if len(text) > MAX_MANIFEST_BYTES:
        return None, [("/", f"text is {len(text)} characters; a manifest may hold at most "
                            f"{MAX_MANIFEST_BYTES}")]
    try:
        return _parse_yaml_mapping(text)
    except (RecursionError, MemoryError):
        return None, [("/", "nested too deeply to be a manifest")]


def _parse_yaml_mapping(text: str) -> tuple[dict | None, Problems]:
    import yaml  # here, not at module level: fibuild.load's warm path never parses YAML

    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None, [("/", "empty file: expected a mapping of manifest fields")]
        too_big = _size_problem(node)
        if too_big:
            return None, [("/", too_big)]
        problems = _duplicate_keys(node)
        data = loader.construct_document(node)
    except yaml.reader.ReaderError as exc:
        return None, [("/", _reader_problem(text, exc))]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "syntax error"
        return None, [("/", f"malformed YAML{where}: {what}")]
    except yaml.YAMLError as exc:
        return None, [("/", f"malformed YAML: {exc}")]
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        return None, [("/", f"expected a mapping of manifest fields at the top level, got {describe_value(data)}")]
    return _string_keys(data, [], problems), problems


def _reader_problem(text: str, exc) -> str:
    """A ReaderError (a character YAML forbids) as a message with its line and column."""
    position = getattr(exc, "position", 0) or 0
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    char = getattr(exc, "character", "")
    value = ord(char) if isinstance(char, str) and char else char if isinstance(char, int) else None
    code = f"U+{value:04X}" if value is not None else "?"
    return (f"character {code} at line {line}, column {column} is not allowed in YAML (control "
            "characters must be written as escapes, e.g. \\x01 inside double quotes)")


def _size_problem(root) -> str | None:
    """Why the composed node graph is too large once aliases are expanded, or None.

    Counts expanded nodes and depth on the graph itself (each node once, memoized), so
    the cost is linear in the file even when expansion would be exponential. A cycle (a
    recursive alias) counts once; :func:`_string_keys` reports it.
    """
    import yaml

    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    active: set[int] = set()
    while stack:
        node, done = stack.pop()
        ident = id(node)
        if isinstance(node, yaml.MappingNode):
            children = [c for pair in node.value for c in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        if done:
            active.discard(ident)
            kids = [c for c in children if id(c) in size]
            size[ident] = min(1 + sum(size[id(c)] for c in kids), MAX_NODES + 1)
            depth[ident] = 1 + max((depth[id(c)] for c in kids), default=0)
            if size[ident] > MAX_NODES:
                return (f"the document expands to more than {MAX_NODES} nodes (YAML aliases "
                        "repeated inside each other?); a manifest must stay below that")
            if depth[ident] > MAX_DEPTH:
                return f"nested more than {MAX_DEPTH} levels deep; a manifest must stay below that"
            continue
        if ident in size or ident in active:
            continue
        active.add(ident)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size and id(c) not in active)
    return None


def _json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative; stops counting past MAX_DEPTH)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_json_line(line: str) -> tuple[Any, str | None]:
    """One JSON value, or an error message (malformed JSON, duplicate keys, a line longer
    than MAX_LINE_BYTES or nested deeper than MAX_DEPTH)."""
    if len(line) > MAX_LINE_BYTES:
        return None, f"line is {len(line)} characters; a JSON line may hold at most {MAX_LINE_BYTES}"
    duplicates: list[str] = []

    def pairs(items):
        seen: dict = {}
        for k, v in items:
            if k in seen:
                duplicates.append(k)
            seen[k] = v
        return seen

    try:
        value = json.loads(line, object_pairs_hook=pairs)
    except ValueError as exc:
        return None, f"malformed JSON: {exc}"
    except (RecursionError, MemoryError):
        return None, f"nested too deeply (more than {MAX_DEPTH} levels)"
    if _json_depth(value) > MAX_DEPTH:
        return None, f"nested more than {MAX_DEPTH} levels deep"
    if duplicates:
        return None, f"duplicate key {duplicates[0]!r}"
    return value, None


def _duplicate_keys(root) -> Problems:
    import yaml

    """Walk the composed node tree; report each mapping key that appears twice."""
    problems: Problems = []
    seen_nodes: set[int] = set()
    stack: list[tuple[Any, list]] = [(root, [])]
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:  # aliases share nodes; recursive aliases would loop
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                ident = (key_node.tag, str(key_node.value))
                line = key_node.start_mark.line + 1
                if ident in first_line:
                    problems.append((pointer_of(path + [key_node.value]),
                                     f"duplicate key {key_node.value!r} at line {line} "
                                     f"(first at line {first_line[ident]})"))
                else:
                    first_line[ident] = line
                stack.append((value_node, path + [key_node.value]))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, path + [i]) for i, child in enumerate(node.value))
    return problems


def _string_keys(value: Any, path: list, problems: Problems, parents: frozenset = frozenset()) -> Any:
    """Copy of ``value`` whose mapping keys are all strings; other keys become problems.

    A container holding itself (a recursive alias) becomes None and a problem: manifests
    are trees, and every later stage walks them recursively.
    """
    if isinstance(value, (dict, list)):
        if id(value) in parents:
            problems.append((pointer_of(path), "recursive YAML alias: a value may not contain itself"))
            return None
        parents = parents | {id(value)}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append((pointer_of(path + [key]),
                                 f"key {key!r} is a {describe_value(key).split(' ')[0]}, expected a "
                                 "string (YAML reads unquoted yes/no/on/off and numbers as such: quote it)"))
                key = str(key)
            out[key] = _string_keys(item, path + [key], problems, parents)
        return out
    if isinstance(value, list):
        return [_string_keys(item, path + [i], problems, parents) for i, item in enumerate(value)]
    return value


def dump_yaml(data: dict, *, flow_lists: bool = True) -> str:
    """A manifest as YAML in the given key order; multi-line strings as ``|`` blocks. With
    ``flow_lists``, collections of scalars are written inline (``[a, b]``)."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper, value):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100,
                     default_flow_style=None if flow_lists else False)
