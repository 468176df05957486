"""Reading manifest files into plain dicts, reporting every problem with its pointer.

YAML goes through ``yaml.SafeLoader`` (no Python object tags); duplicate keys, which
PyYAML silently collapses to the last one, are reported. Nothing here raises for bad
input: problems come back as ``(json_pointer, message)`` pairs for a ManifestError.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .schema import describe_value, pointer_of

Problems = list[tuple[str, str]]


def read_text(path: Path) -> tuple[str | None, Problems]:
    """The file's UTF-8 text, or a problem saying why it cannot be read."""
    try:
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
    try:
        return _parse_yaml_mapping(text)
    except RecursionError:
        return None, [("/", "nested too deeply to be a manifest")]


def _parse_yaml_mapping(text: str) -> tuple[dict | None, Problems]:
    import yaml  # here, not at module level: fibuild.load's warm path never parses YAML

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, [("/", "empty file: expected a mapping of manifest fields")]
        problems = _duplicate_keys(node)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "syntax error"
        return None, [("/", f"malformed YAML{where}: {what}")]
    except yaml.YAMLError as exc:
        return None, [("/", f"malformed YAML: {exc}")]
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        return None, [("/", f"expected a mapping of manifest fields at the top level, got {describe_value(data)}")]
    return _string_keys(data, [], problems), problems


def parse_json_line(line: str) -> tuple[Any, str | None]:
    """One JSON value, or an error message (malformed JSON, duplicate keys)."""
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
