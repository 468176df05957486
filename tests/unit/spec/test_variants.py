"""Grids of a solution manifest: expansion, names, constraints and their checks."""
from __future__ import annotations

import pytest

from fibuild.errors import FibuildError, ManifestError
from fibuild.spec import variants
from fibuild.spec.manifest import load_solution
from fibuild.spec.workspace import Workspace

KERNEL = '"""y = x + OFFSET * SCALE."""\n\n\ndef add_one(x, OFFSET=1.0, SCALE=1):\n    return x + OFFSET * SCALE\n'


def _workspace(tmp_path, grid: str) -> Workspace:
    (tmp_path / "defs" / "elementwise").mkdir(parents=True)
    (tmp_path / "defs" / "elementwise" / "add_one_f32.yaml").write_text(
        "name: add_one_f32\nop_type: elementwise\naxes: {n: {type: var}}\n"
        "inputs: {x: {shape: [n], dtype: float32}}\noutputs: {y: {shape: [n], dtype: float32}}\n"
        "reference: |\n  def run(x):\n      return x + 1\n")
    folder = tmp_path / "solutions" / "add_one_f32" / "grid"
    folder.mkdir(parents=True)
    (folder / "kernel.py").write_text(KERNEL)
    (folder / "solution.yaml").write_text(
        "name: grid\ndefinition: add_one_f32\nlanguage: python\nentry_point: kernel.py::add_one\n"
        "sources: [kernel.py]\n" + grid)
    return Workspace(tmp_path)


def test_a_grid_expands_to_named_variants_the_constraints_keep(tmp_path):
    ws = _workspace(tmp_path, "variants: {OFFSET: [1.0, 0.5], SCALE: [1, 2, 4]}\n"
                              "constraints: ['OFFSET * SCALE <= 2', 'SCALE != 2 or OFFSET < 1']\n")
    names = [s.name for s in ws.solutions("add_one_f32")]
    assert names == ["grid[OFFSET=0.5,SCALE=1]", "grid[OFFSET=0.5,SCALE=2]", "grid[OFFSET=0.5,SCALE=4]",
                     "grid[OFFSET=1.0,SCALE=1]"]
    variant = ws.solution("add_one_f32/grid[OFFSET=0.5,SCALE=4]")
    assert variant.constants == (("OFFSET", 0.5), ("SCALE", 4)) and variant.family == "grid"
    assert ws.solution("grid[OFFSET=1.0,SCALE=1]").constants == (("OFFSET", 1.0), ("SCALE", 1))
    base = ws.solution("add_one_f32/grid")
    assert base.constants == () and dict(base.variants) == {"OFFSET": (1.0, 0.5), "SCALE": (1, 2, 4)}
    assert ws.solution("grid") == base
    with pytest.raises(FibuildError, match="unknown variant of 'add_one_f32/grid'.*did you mean"):
        ws.solution("add_one_f32/grid[OFFSET=1.0,SCALE=4]")  # removed by a constraint


def test_names_round_trip_and_booleans_read_as_defines():
    name = variants.variant_name("sol", [("FUSED", True), ("MODE", "fast"), ("N", -2)])
    assert name == "sol[FUSED=1,MODE=fast,N=-2]"
    assert variants.split_name(name) == ("sol", "FUSED=1,MODE=fast,N=-2")
    assert variants.family(name) == "sol" and variants.split_name("plain") == ("plain", None)


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').system('true')", "Call is not allowed"),
    ("BLOCK.__class__", "Attribute is not allowed"),
    ("UNKNOWN > 1", "unknown name 'UNKNOWN'"),
    ("BLOCK ** 1000", "exponent above 64"),
    ("BLOCK >", "not an expression"),
])
def test_constraints_evaluate_arithmetic_only(expression, message):
    with pytest.raises(ValueError, match=message):
        variants.grid_combinations({"BLOCK": [1, 2]}, [expression])


@pytest.mark.parametrize("grid, pointer, message", [
    ("variants: {N: [1, 2]}\nconstraints: ['N.real']\n", "/constraints", "Attribute is not allowed"),
    ("variants: {N: [1, 2]}\nconstraints: ['N > 5']\n", "/constraints", "keep none of the grid's 2"),
    ("constraints: ['1 < 2']\n", "/constraints", "constraints need a variants grid"),
    ("variants: {MODE: ['a b']}\n", "/variants/MODE/0", "letters, digits"),
    ("variants: {1N: [1]}\n", "/variants", ""),
    ("variants: {N: []}\n", "/variants/N", ""),
    ("variants: {N: [1, 1]}\n", "/variants/N", ""),
])
def test_bad_grids_are_manifest_errors_naming_the_field(tmp_path, grid, pointer, message):
    ws = _workspace(tmp_path, grid)
    with pytest.raises(ManifestError) as err:
        load_solution(ws.solutions_dir / "add_one_f32" / "grid" / "solution.yaml", ["add_one_f32"])
    assert any(p.startswith(pointer) and message in m for p, m in err.value.problems), err.value.problems


def test_too_many_variants_are_refused(tmp_path):
    values = ", ".join(str(i) for i in range(33))
    ws = _workspace(tmp_path, f"variants: {{A: [{values}], B: [{values}]}}\n")
    assert "at most 1024" in str(ws.validate()[0])
