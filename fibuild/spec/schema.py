"""JSON Schema validation of manifests and records, with messages a person can act on.

The schema files are package data, ``fibuild/spec/schemas/<kind>.schema.json``, read with
:mod:`importlib.resources` (so they load from a wheel, a zip or a checkout alike). Every
``*.schema.json`` there is loaded, so ``$ref`` between them resolves through one
``referencing.Registry``. They are read once per process, on first use, never at import.
"""
from __future__ import annotations

import difflib
import functools
import json
from typing import Any, Iterable

from fibuild.errors import FibuildError
from fibuild.spec import model

# Heavy or optional dependencies, imported inside the functions that use them:
# importlib.resources, referencing, jsonschema.

SCHEMA_BASE = "https://fibuild.invalid/schemas/"
KINDS = ("definition", "solution", "workload", "evaluation", "chain")

# JSON type names as a YAML author reads them.
_TYPE_WORDS = {"object": "mapping", "array": "list", "null": "null", "string": "string",
               "number": "number", "integer": "integer", "boolean": "boolean"}


def schema_files() -> list:
    """Every ``*.schema.json`` resource of the package (``importlib.resources`` Traversables,
    sorted by name)."""
    from importlib import resources

    folder = resources.files("fibuild.spec").joinpath("schemas")
    if not folder.is_dir():
        return []
    return sorted((f for f in folder.iterdir() if f.name.endswith(".schema.json")), key=lambda f: f.name)


@functools.cache
def _registry():
    """Every ``*.schema.json`` as a ``referencing.Registry`` keyed by ``$id`` (cached)."""
    from referencing import Registry, Resource

    resources = []
    schemas = {}
    for path in schema_files():
        try:
            contents = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FibuildError(f"{path}: cannot load schema: {exc}") from None
        uri = contents.get("$id") if isinstance(contents, dict) else None
        if not uri:
            raise FibuildError(f"{path}: schema has no $id")
        _fill_enums(contents)
        resources.append((uri, Resource.from_contents(contents)))
        schemas[uri] = contents
    if not resources:
        raise FibuildError("no schema files in the fibuild.spec package (fibuild/spec/schemas/): "
                           "the installation is incomplete; reinstall fibuild")
    return Registry().with_resources(resources), schemas


def _fill_enums(node: Any) -> None:
    """Give every ``{"x-enum-from": "fibuild.spec.model.NAME"}`` in a schema the ``enum`` of
    that tuple: a list declared once, in the model, for the code and the schema alike."""
    if isinstance(node, dict):
        source = node.get("x-enum-from")
        if isinstance(source, str) and source.startswith("fibuild.spec.model."):
            node["enum"] = list(getattr(model, source.rsplit(".", 1)[1]))
        for value in node.values():
            _fill_enums(value)
    elif isinstance(node, list):
        for value in node:
            _fill_enums(value)


@functools.cache
def _validator(kind: str):
    from jsonschema import Draft202012Validator

    registry, schemas = _registry()
    uri = f"{SCHEMA_BASE}{kind}.schema.json"
    if kind not in KINDS or uri not in schemas:
        known = sorted(u[len(SCHEMA_BASE):-len(".schema.json")] for u in schemas if u.startswith(SCHEMA_BASE))
        raise FibuildError(f"unknown schema kind {kind!r} (known: {', '.join(known)})")
    return Draft202012Validator(schemas[uri], registry=registry)


def schema(kind: str) -> dict:
    """The parsed schema document of ``kind`` (FibuildError if there is none)."""
    return _validator(kind).schema


def validate(kind: str, instance: Any) -> list[tuple[str, str]]:
    """Every schema violation of ``instance`` as sorted ``(json_pointer, message)`` pairs.

    ``kind`` is one of definition, solution, workload, evaluation, chain (FibuildError otherwise).
    The root pointer is ``"/"``. An empty list means valid. Cost: one tree walk; the
    schemas are compiled on the first call of the process.
    """
    found: list[tuple[str, str, bool]] = []
    for error in _validator(kind).iter_errors(instance):
        found += [(p, m, error.validator == "type") for p, m in _describe(error)]
    # A value of the wrong type also fails its enum/pattern; the type message says it all.
    typed = {p for p, _, is_type in found if is_type}
    return sorted({(p, m) for p, m, is_type in found if is_type or p not in typed})


def pointer_of(parts: Iterable[Any]) -> str:
    """A JSON pointer (RFC 6901) for a path of keys/indices; the root is ``"/"``."""
    tokens = [str(p).replace("~", "~0").replace("/", "~1") for p in parts]
    return "/" + "/".join(tokens) if tokens else "/"


def describe_value(value: Any) -> str:
    """``string '1e-3'``, ``boolean true``, ``null``, ``mapping``: how YAML handed it over."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def _yaml_hint(expected: list[str], value: Any) -> str:
    """Why YAML produced this type, when it is one of its well-known traps."""
    if isinstance(value, bool) and "string" in expected:
        return " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote the value)"
    if isinstance(value, str) and ({"number", "integer"} & set(expected)):
        try:
            float(value)
        except ValueError:
            return ""
        return " (YAML reads exponent numbers without a dot, like 1e-3, as strings: write 1.0e-3)"
    return ""


def _describe(error) -> list[tuple[str, str]]:
    """Turn one jsonschema error into (pointer, message) pairs."""
    path = list(error.absolute_path)
    pointer = pointer_of(path)
    keyword = error.validator
    value = error.validator_value
    instance = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}

    if "propertyNames" in error.absolute_schema_path:
        what = schema.get("description", "key")
        return [(pointer_of(path + [instance]), f"invalid key {instance!r}: expected {what}")]
    if keyword == "type":
        expected = [value] if isinstance(value, str) else list(value)
        words = " or ".join(_TYPE_WORDS.get(t, t) for t in expected)
        return [(pointer, f"expected {words}, got {describe_value(instance)}{_yaml_hint(expected, instance)}")]
    if keyword == "additionalProperties" and value is False and isinstance(instance, dict):
        allowed = sorted(schema.get("properties", {}))
        out = []
        for key in instance:
            if key in allowed:
                continue
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            out.append((pointer_of(path + [key]),
                        f"unknown key {key!r} ({hint}allowed: {', '.join(allowed)})"))
        return out
    if keyword == "required":
        missing = [k for k in value if isinstance(instance, dict) and k not in instance]
        return [(pointer, f"missing required key {k!r}") for k in missing]
    if keyword == "not" and value == {}:  # $defs/forbidden: the key may not appear here
        return [(pointer, f"key {path[-1]!r} is not allowed here" if path else "not allowed here")]
    if keyword == "enum":
        options = ", ".join(str(v) for v in value)
        close = difflib.get_close_matches(str(instance), [str(v) for v in value], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return [(pointer, f"expected one of {options}; got {describe_value(instance)}{hint}")]
    if keyword == "const":
        return [(pointer, f"expected {value!r}, got {describe_value(instance)}")]
    if keyword == "pattern":
        what = schema.get("description", f"a string matching {value}")
        return [(pointer, f"invalid value {instance!r}: expected {what}")]
    if keyword in ("minItems", "minProperties", "minLength") and value == 1:
        return [(pointer, "must not be empty")]
    if keyword == "minimum":
        return [(pointer, f"expected a value >= {value}, got {instance!r}")]
    if keyword == "uniqueItems":
        return [(pointer, "items must be unique (a value is listed twice)")]
    return [(pointer, error.message)]
