"""Semantic checks on schema-valid dicts: paths, reference signatures, uuids."""
from __future__ import annotations

import pytest

from fibuild.spec.semantics import check_definition, check_relative_path, check_solution, declared_uuid


def _definition(reference: str, **changes):
    data = {"name": "d", "op_type": "t", "axes": {"m": {"type": "var"}, "n": {"type": "var"}},
            "inputs": {"a": {"shape": ["m", "n"], "dtype": "float32"},
                       "b": {"shape": None, "dtype": "float32"}},
            "outputs": {"c": {"shape": ["m", "n"], "dtype": "float32"}},
            "reference": reference}
    data.update(changes)
    return data


@pytest.mark.parametrize("value, fragment", [
    ("kernel.cu", None), ("src/x.h", None), ("a/./b", None),
    ("/etc/passwd", "is absolute"), ("../x", "leaves the solution directory"),
    ("a/../../x", "leaves the solution directory"), ("a\\..\\x", "leaves the solution directory"),
    ("C:\\x", "is absolute"), ("", "is absolute"),
])
def test_check_relative_path(value, fragment):
    reason = check_relative_path(value)
    assert (reason is None) if fragment is None else (fragment in reason)


def test_declared_uuid_follows_axis_order():
    assert declared_uuid("gemm", {"n": 2, "m": 1}, ["m", "n"]) == "gemm-m1-n2"
    assert declared_uuid("x", {}, []) == "x"


@pytest.mark.parametrize("reference", [
    "def run(a, b):\n    return a\n",
    "import torch\n@torch.no_grad()\ndef run(a, b, /):\n    return a\n",
    "def run(a, b, *, scale=1.0):\n    return a\n",
])
def test_accepted_reference_signatures(reference):
    assert check_definition(_definition(reference)) == []


@pytest.mark.parametrize("reference, fragment", [
    ("def run(a):\n    return a\n", "run(a) must take the inputs"),
    ("def run(a, b, c):\n    return a\n", "run(a, b, c) must take"),
    ("def run(*args):\n    return 1\n", "run(*args) must take"),
    ("def run(a, b, *, must):\n    return a\n", "run(a, b, must) must take"),
    ("async def run(a, b):\n    return a\n", "not async"),
    ("class K:\n    def run(self, a, b):\n        pass\n", "top-level function"),
    ("if True:\n    def run(a, b):\n        pass\n", "top-level function"),
])
def test_rejected_reference_signatures(reference, fragment):
    problems = check_definition(_definition(reference))
    assert [p for p, _ in problems] == ["/reference"]
    assert fragment in problems[0][1]


def test_reference_is_parsed_never_run(tmp_path):
    marker = tmp_path / "ran"
    reference = f"open({str(marker)!r}, 'w').close()\ndef run(a, b):\n    return a\n"
    assert check_definition(_definition(reference)) == []
    assert not marker.exists()


def test_inplace_of_a_scalar_input_and_twice_the_same_input():
    data = _definition("def run(a, b):\n    return a\n", outputs={
        "b": {"shape": None, "dtype": "float32", "inplace": "b"},
        "x": {"shape": ["m", "n"], "dtype": "float32", "inplace": "a"},
        "y": {"shape": ["m", "n"], "dtype": "float32", "inplace": "a"},
    })
    problems = check_definition(data)
    assert ("/outputs/b/inplace", "input 'b' is a scalar and cannot be written in place") in problems
    assert ("/outputs/y/inplace", "input 'a' is already written in place by output 'x'") in problems
    assert len(problems) == 2


def test_scalar_value_for_a_tensor_and_random_for_a_scalar():
    data = _definition("def run(a, b):\n    return a\n", workloads=[
        {"axes": {"m": 1, "n": 2}, "inputs": {"a": {"type": "scalar", "value": 1},
                                               "b": {"type": "random"}}}])
    problems = dict(check_definition(data))
    assert "a scalar value fits scalar inputs only" in problems["/workloads/0/inputs/a"]
    assert "give `type: scalar` with a value" in problems["/workloads/0/inputs/b"]


def test_solution_checks_without_a_path_skip_the_file_system():
    data = {"name": "s", "definition": "d", "language": "python",
            "entry_point": "k.py::f", "sources": ["k.py"]}
    assert check_solution(data) == []
    assert check_solution(data, definitions=["other"])[0][0] == "/definition"
    assert "did you mean 'd1'" in check_solution(data, definitions=["d1"])[0][1]


@pytest.mark.parametrize("reference", ["def run(a, b):\n    return a\x00\n",
                                       "x = " + "(" * 400 + ")" * 400 + "\ndef run(a, b):\n    pass\n"])
def test_unparsable_reference_is_a_problem(reference):
    problems = check_definition(_definition(reference))
    assert [p for p, _ in problems] == ["/reference"]
