"""The JSON Schemas: well-formed, wired through one registry, and pointed messages."""
from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from fibuild.errors import FibuildError
from fibuild.spec import schema
from fibuild.spec.model import DTYPES, LANGUAGES

SCHEMA_FILES = schema.schema_files()


def _minimal_definition(**changes):
    data = {"name": "d", "op_type": "t", "axes": {"n": {"type": "var"}},
            "inputs": {"x": {"shape": ["n"], "dtype": "float32"}},
            "outputs": {"y": {"shape": ["n"], "dtype": "float32"}},
            "reference": "def run(x):\n    return x\n"}
    data.update(changes)
    return data


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_schema_files_are_valid_2020_12_with_their_id(path):
    doc = json.loads(path.read_text())
    Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"] == f"https://fibuild.invalid/schemas/{path.name}"


def test_every_kind_has_a_schema_file():
    names = {p.name for p in SCHEMA_FILES}
    for kind in ("common", "definition", "solution", "workload", "evaluation"):
        assert f"{kind}.schema.json" in names


def test_enums_match_the_model():
    common = json.loads(next(f for f in SCHEMA_FILES if f.name == "common.schema.json").read_text())
    assert tuple(common["$defs"]["dtype"]["enum"]) == DTYPES
    assert tuple(schema.schema("solution")["properties"]["language"]["enum"]) == LANGUAGES


def test_every_object_forbids_unknown_keys():
    def walk(node, where):
        if isinstance(node, dict):
            if node.get("type") == "object" and "additionalProperties" not in node:
                pytest.fail(f"{where}: object without additionalProperties")
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    for path in SCHEMA_FILES:
        if path.name != "evaluation.schema.json":  # owned by the registry's schema
            walk(json.loads(path.read_text()), path.name)


def test_valid_definition_has_no_problems():
    assert schema.validate("definition", _minimal_definition()) == []


def test_all_errors_are_reported_sorted_with_pointers():
    data = _minimal_definition(name=True, tolerance={"atol": "1e-3", "rtol": 0.1}, extra=1)
    data["inputs"]["x"]["dtype"] = "float99"
    problems = schema.validate("definition", data)
    assert problems == sorted(problems)
    pointers = [p for p, _ in problems]
    assert pointers == ["/extra", "/inputs/x/dtype", "/name", "/tolerance/atol"]
    messages = dict(problems)
    assert "unknown key 'extra'" in messages["/extra"]
    assert "expected one of" in messages["/inputs/x/dtype"] and "float99" in messages["/inputs/x/dtype"]
    assert messages["/name"].startswith("expected string, got boolean true")
    assert messages["/tolerance/atol"].startswith("expected number, got string '1e-3'")
    assert "1.0e-3" in messages["/tolerance/atol"]


def test_wrong_type_is_one_message_not_also_enum():
    data = _minimal_definition()
    data["inputs"]["x"]["dtype"] = False
    problems = schema.validate("definition", data)
    assert problems == [("/inputs/x/dtype", problems[0][1])]
    assert "expected string, got boolean false" in problems[0][1]
    assert "quote" in problems[0][1]


def test_missing_required_key_points_at_its_object():
    data = _minimal_definition()
    del data["reference"]
    assert schema.validate("definition", data) == [("/", "missing required key 'reference'")]


def test_invalid_property_name_points_at_the_key():
    data = _minimal_definition()
    data["axes"]["2n"] = {"type": "var"}
    (pointer, message), = schema.validate("definition", data)
    assert pointer == "/axes/2n" and "invalid key '2n'" in message


def test_forbidden_key_of_a_var_axis():
    data = _minimal_definition(axes={"n": {"type": "var", "value": 3}})
    assert schema.validate("definition", data) == [("/axes/n/value", "key 'value' is not allowed here")]


@pytest.mark.parametrize("source, ok", [
    ("kernel.cu", True), ("src/a/b.h", True), ("..x/y.h", True), ("a..b", True),
    ("/abs.cu", False), ("../up.cu", False), ("a/../../b", False), ("a/..", False), ("..", False),
    ("a | b.cpp", False), ("a b.cpp", False), ("$x.cu", False), ("a:b.cu", False), ("./k.cu", False),
    ("a//b.cu", False), ("k\\.cu", False), ("c++/x.h", True),
])
def test_relative_path_pattern(source, ok):
    sol = {"name": "s", "definition": "d", "language": "cuda", "entry_point": "kernel.cu::f",
           "sources": ["kernel.cu", source] if source != "kernel.cu" else ["kernel.cu"]}
    problems = schema.validate("solution", sol)
    assert (problems == []) is ok, problems


def test_pointer_escapes_slash_and_tilde():
    assert schema.pointer_of([]) == "/"
    assert schema.pointer_of(["a/b", "c~d", 3]) == "/a~1b/c~0d/3"


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(FibuildError, match="unknown schema kind 'bogus'.*definition"):
        schema.validate("bogus", {})


def test_evaluation_schema_is_in_the_registry():
    problems = schema.validate("evaluation", {})
    assert problems and all(p.startswith("/") for p, _ in problems)
