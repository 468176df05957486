"""Manifest loading: one fixture per bad-input case, good manifests into model values."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fibuild.errors import ManifestError
from fibuild.spec.manifest import (
    definition_from_dict,
    load_definition,
    load_solution,
    load_workloads_jsonl,
    solution_from_dict,
)
from fibuild.spec.model import Axis, BuildFlags, InputSpec, TensorSpec, Tolerance
from fibuild.spec.workspace import Workspace, shipped_root

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "manifests"
DEFS = FIXTURES / "definitions"
SOLS = FIXTURES / "solutions"
WORKLOADS = FIXTURES / "workloads"


def _problems(excinfo) -> dict[str, str]:
    return {p: m for p, m in excinfo.value.problems}


# (fixture, pointer, message fragment): the file is the fixture itself.
BAD_DEFINITIONS = [
    ("malformed_yaml", "/", "malformed YAML at line 5, column 7"),
    ("empty", "/", "empty file"),
    ("not_mapping", "/", "expected a mapping of manifest fields at the top level, got list"),
    ("wrong_types", "/tags", "expected list, got string 'status:test'"),
    ("wrong_types", "/axes/h/value", "expected integer, got string 'big'"),
    ("wrong_types", "/inputs/x/shape", "expected list or null, got string 'n'"),
    ("wrong_types", "/reference", "expected string, got number 42"),
    ("unknown_key", "/inputs/x/dtpye", "unknown key 'dtpye' (did you mean 'dtype'?"),
    ("unknown_axis", "/inputs/x/shape/1", "unknown axis 'hidden_size' (declared axes: batch_size)"),
    ("unknown_axis", "/outputs/y/shape/1", "unknown axis 'hidden_size'"),
    ("bad_dtype", "/inputs/x/dtype", "got string 'bfloat61' (did you mean 'bfloat16'?)"),
    ("atol_string", "/tolerance/atol", "expected number, got string '1e-3'"),
    ("name_on", "/name", "expected string, got boolean true (YAML reads unquoted yes/no/on/off"),
    ("dtype_no", "/inputs/x/dtype", "expected string, got boolean false"),
    ("duplicate_keys", "/inputs/x/dtype", "duplicate key 'dtype' at line 9 (first at line 8)"),
    ("non_string_key", "/inputs/True", "key True is a boolean, expected a string"),
    ("missing_required", "/", "missing required key 'reference'"),
    ("reference_without_run", "/reference", "must define a top-level function `def run(x)`"),
    ("run_wrong_params", "/reference", "run(w, x) must take the inputs in declaration order: run(x, w)"),
    ("reference_syntax_error", "/reference", "syntax error at line 3"),
    ("inplace_unknown_input", "/outputs/y/inplace", "inplace names 'z', which is not an input"),
    ("inplace_mismatch", "/outputs/y/inplace", "must have the shape and dtype of input 'x'"),
    ("output_shadows_input", "/outputs/x", "has the name of an input"),
    ("var_axis_with_value", "/axes/n/value", "key 'value' is not allowed here"),
    ("const_axis_without_value", "/axes/n", "missing required key 'value'"),
    ("workload_axes", "/workloads/0/axes/h", "'h' is a const axis (16); workloads set var axes only"),
    ("workload_axes", "/workloads/0/axes", "missing var axis 'm'"),
    ("workload_axes", "/workloads/1/axes/k", "unknown axis 'k' (var axes: n, m)"),
    ("workload_float_axis", "/workloads/0/axes/n", "expected integer, got 2.0"),
    ("workload_zero_axis", "/workloads/0/axes/n", "expected a value >= 1, got 0"),
    ("workload_unknown_input", "/workloads/0/inputs/z", "unknown input 'z' (inputs: x)"),
    ("scalar_without_value", "/workloads/0/inputs", "scalar input 'eps' needs a value"),
    ("scalar_spec_missing_value", "/workloads/0/inputs/eps", "missing required key 'value'"),
    ("custom_without_entrypoint", "/workloads/0/inputs/x", "needs the definition's custom_inputs_entrypoint"),
    ("custom_entrypoint_missing", "/custom_inputs_entrypoint", "no top-level function 'make_inputs'"),
    ("duplicate_workload_uuid", "/workloads/1", "'duplicate_workload_uuid-n2' is used twice"),
    ("name_mismatch", "/name", "does not match the file name 'name_mismatch.yaml'"),
]


@pytest.mark.parametrize("case, pointer, fragment", BAD_DEFINITIONS,
                         ids=[f"{c}:{p}" for c, p, _ in BAD_DEFINITIONS])
def test_bad_definition(case, pointer, fragment):
    path = DEFS / f"{case}.yaml"
    with pytest.raises(ManifestError) as excinfo:
        load_definition(path)
    assert excinfo.value.path == str(path)
    problems = _problems(excinfo)
    assert pointer in problems, problems
    assert fragment in problems[pointer]
    assert excinfo.value.problems == sorted(excinfo.value.problems)


def test_every_definition_fixture_is_covered():
    covered = {c for c, _, _ in BAD_DEFINITIONS} | {"good_full", "good_minimal"}
    assert {p.stem for p in DEFS.glob("*.yaml")} == covered


def test_all_problems_of_a_file_at_once():
    with pytest.raises(ManifestError) as excinfo:
        load_definition(DEFS / "wrong_types.yaml")
    assert len(excinfo.value.problems) == 4
    assert str(excinfo.value).count("wrong_types.yaml: /") == 4


def test_missing_file_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="file not found"):
        load_definition(tmp_path / "nope.yaml")


def test_good_definition_model_values():
    d = load_definition(DEFS / "good_full.yaml")
    assert d.name == "good_full" and d.op_type == "toy"
    assert d.tags == ("status:test", "model:none")
    assert d.constraints == ("batch_size <= 4096",)
    assert d.axes == {"batch_size": Axis("batch_size", "var", None, "Number of rows."),
                      "hidden_size": Axis("hidden_size", "const", 8)}
    assert list(d.axes) == ["batch_size", "hidden_size"]
    assert d.var_axes == ("batch_size",) and d.const_axes == {"hidden_size": 8}
    assert d.inputs == (TensorSpec("hidden", ("batch_size", "hidden_size"), "bfloat16"),
                        TensorSpec("residual", ("batch_size", "hidden_size"), "bfloat16"),
                        TensorSpec("scale", None, "float32", "Multiplier."))
    assert d.outputs[0] == TensorSpec("residual", ("batch_size", "hidden_size"), "bfloat16",
                                      inplace="residual")
    assert d.outputs[1].name == "output" and d.outputs[1].inplace is None
    assert d.tolerance == Tolerance(atol=1e-3, rtol=2e-2)
    assert d.custom_inputs_entrypoint == "make_inputs"
    assert "def run(hidden, residual, scale)" in d.reference
    assert d.path == DEFS / "good_full.yaml"
    first, second = d.workloads
    assert first.uuid == "good_full-batch_size2" and first.axes == {"batch_size": 2}
    assert first.source == "declared"
    assert first.inputs == {"hidden": InputSpec("random"), "residual": InputSpec("random"),
                            "scale": InputSpec("scalar", value=0.5)}
    assert second.uuid == "big-one"
    assert second.inputs["hidden"] == InputSpec("safetensors", path="data/x.safetensors",
                                                tensor_key="hidden")
    assert second.inputs["residual"] == InputSpec("custom")
    assert second.inputs["scale"].value == 2 and isinstance(second.inputs["scale"].value, int)
    assert d.apply_key({"batch_size": 64}) == (64,)


def test_minimal_definition_defaults():
    d = load_definition(DEFS / "good_minimal.yaml")
    assert d.tolerance == Tolerance() and d.workloads == () and d.tags == ()
    assert d.custom_inputs_entrypoint is None and d.description == ""


def test_definition_from_dict_equals_loaded():
    path = DEFS / "good_full.yaml"
    fast = definition_from_dict(yaml.safe_load(path.read_text()), path)
    assert fast == load_definition(path)


def test_definition_from_dict_skips_checks():
    data = yaml.safe_load((DEFS / "good_minimal.yaml").read_text())
    data["inputs"]["x"]["shape"] = ["not_an_axis"]
    assert definition_from_dict(data).inputs[0].shape == ("not_an_axis",)


def test_op_type_must_match_its_folder_under_defs(tmp_path):
    folder = tmp_path / "defs" / "other"
    folder.mkdir(parents=True)
    target = folder / "good_minimal.yaml"
    target.write_text((DEFS / "good_minimal.yaml").read_text())
    with pytest.raises(ManifestError) as excinfo:
        load_definition(target)
    assert "does not match the folder defs/other/" in _problems(excinfo)["/op_type"]


BAD_SOLUTIONS = [
    ("rmsnorm_h4096/missing_source", "/sources/1", "source 'helper.py' not found"),
    ("rmsnorm_h4096/dotdot_source", "/sources/1", "no '.' or '..' segment"),
    ("rmsnorm_h4096/absolute_source", "/sources/1", "invalid value '/etc/hostname'"),
    ("rmsnorm_h4096/unlisted_entry", "/entry_point", "entry point file 'other.py' is not listed in sources"),
    ("rmsnorm_h4096/bad_entry_point", "/entry_point", "expected entry point 'file::function'"),
    ("rmsnorm_h4096/language_yes", "/language", "expected string, got boolean true"),
    ("rmsnorm_h4096/bad_language", "/language", "expected one of cuda, cpp, triton, python; got string 'rust'"),
    ("rmsnorm_h4096/dps_string", "/destination_passing_style", "expected boolean, got string 'false'"),
    ("rmsnorm_h4096/unknown_key", "/source", "unknown key 'source' (did you mean 'sources'?"),
    ("rmsnorm_h4096/unknown_key", "/", "missing required key 'sources'"),
    ("rmsnorm_h4096/unknown_build_flag", "/build/cxxflags", "unknown key 'cxxflags'"),
    ("rmsnorm_h4096/dir_mismatch", "/name", "name 'other_name' does not match its directory 'dir_mismatch'"),
    ("no_such_def/missing_definition", "/definition", "definition 'no_such_def' does not exist in the workspace"),
]


@pytest.mark.parametrize("case, pointer, fragment", BAD_SOLUTIONS,
                         ids=[f"{c}:{p}" for c, p, _ in BAD_SOLUTIONS])
def test_bad_solution(case, pointer, fragment):
    path = SOLS / case / "solution.yaml"
    with pytest.raises(ManifestError) as excinfo:
        load_solution(path, definitions={"rmsnorm_h4096": object()})
    assert excinfo.value.path == str(path)
    problems = _problems(excinfo)
    assert pointer in problems, problems
    assert fragment in problems[pointer]


def test_every_solution_fixture_is_covered():
    covered = {c for c, _, _ in BAD_SOLUTIONS} | {"rmsnorm_h4096/good_cpp"}
    found = {str(p.parent.relative_to(SOLS)) for p in SOLS.glob("*/*/solution.yaml")}
    assert found == covered


def test_definition_existence_is_checked_only_when_names_are_given():
    sol = load_solution(SOLS / "no_such_def" / "missing_definition" / "solution.yaml")
    assert sol.definition == "no_such_def"


def test_good_solution_model_values():
    path = SOLS / "rmsnorm_h4096" / "good_cpp" / "solution.yaml"
    s = load_solution(path, {"rmsnorm_h4096"})
    assert (s.name, s.definition, s.language) == ("good_cpp", "rmsnorm_h4096", "cpp")
    assert s.qualified_name == "rmsnorm_h4096/good_cpp"
    assert s.entry_point == "src/kernel.cpp::rmsnorm"
    assert (s.entry_file, s.entry_symbol) == ("src/kernel.cpp", "rmsnorm")
    assert s.sources == ("src/kernel.cpp", "src/util.h")
    assert s.author == "tests" and s.description == "Every solution field set."
    assert s.target_hardware == ("cpu",) and s.dependencies == ("tvm-ffi",)
    assert s.destination_passing_style is True
    assert s.build == BuildFlags(cflags=("-O2", "-pthread"), ldflags=("-pthread",), include_dirs=("src",))
    assert s.path == path.parent
    assert solution_from_dict(yaml.safe_load(path.read_text()), path) == s
    assert solution_from_dict(yaml.safe_load(path.read_text()), path.parent) == s


def test_source_symlink_leaving_the_solution_dir(tmp_path):
    folder = tmp_path / "solutions" / "d" / "s"
    folder.mkdir(parents=True)
    (tmp_path / "outside.py").write_text("def run(): pass\n")
    (folder / "kernel.py").symlink_to(tmp_path / "outside.py")
    (folder / "solution.yaml").write_text("name: s\ndefinition: d\nlanguage: python\n"
                                          "entry_point: kernel.py::run\nsources: [kernel.py]\n")
    with pytest.raises(ManifestError) as excinfo:
        load_solution(folder / "solution.yaml")
    assert "resolves outside the solution directory" in _problems(excinfo)["/sources/0"]


BAD_WORKLOADS = [
    ("malformed_line", "/1", "line 2: malformed JSON"),
    ("unknown_axis", "/0/axes/seq_len", "line 1: unknown axis 'seq_len'"),
    ("missing_scalar", "/0/inputs", "line 1: scalar input 'scale' needs a value"),
    ("duplicate_uuid", "/1/uuid", "line 2: uuid 'traced-1' already used on line 1"),
    ("wrong_definition", "/0/definition", "workload of 'rmsnorm_h4096' in the workloads of 'good_full'"),
    ("missing_uuid", "/0", "line 1: missing required key 'uuid'"),
    ("duplicate_json_key", "/0", "line 1: duplicate key 'uuid'"),
]


@pytest.mark.parametrize("case, pointer, fragment", BAD_WORKLOADS, ids=[c for c, _, _ in BAD_WORKLOADS])
def test_bad_workloads_file(case, pointer, fragment):
    definition = load_definition(DEFS / "good_full.yaml")
    path = WORKLOADS / f"{case}.jsonl"
    with pytest.raises(ManifestError) as excinfo:
        load_workloads_jsonl(path, definition)
    assert excinfo.value.path == str(path)
    problems = _problems(excinfo)
    assert pointer in problems, problems
    assert fragment in problems[pointer]


def test_every_workloads_fixture_is_covered():
    assert {p.stem for p in WORKLOADS.glob("*.jsonl")} == {c for c, _, _ in BAD_WORKLOADS} | {"good"}


def test_good_workloads_file():
    definition = load_definition(DEFS / "good_full.yaml")
    path = WORKLOADS / "good.jsonl"
    first, second = load_workloads_jsonl(path, definition)
    assert first.uuid == "traced-1" and first.axes == {"batch_size": 3}
    assert first.source == str(path)
    assert first.inputs == {"hidden": InputSpec("random"), "residual": InputSpec("random"),
                            "scale": InputSpec("scalar", value=1.5)}
    assert second.uuid == "traced-2" and second.axes == {"batch_size": 17}
    assert second.inputs["hidden"] == InputSpec("safetensors", path="blobs/h.safetensors", tensor_key="h")


def test_recorded_uuid_may_not_repeat_a_declared_one(tmp_path):
    definition = load_definition(DEFS / "good_full.yaml")
    path = tmp_path / "workloads.jsonl"
    path.write_text('{"uuid": "big-one", "axes": {"batch_size": 5}, '
                    '"inputs": {"scale": {"type": "scalar", "value": 1}}}\n')
    with pytest.raises(ManifestError) as excinfo:
        load_workloads_jsonl(path, definition)
    assert "is also a declared workload" in _problems(excinfo)["/0/uuid"]


def test_shipped_root_holds_the_shipped_workspace():
    root = shipped_root()
    assert (root / "defs").is_dir() and (root / "solutions").is_dir() and (root / "registry").is_dir()


def test_shipped_workspace_validates_clean():
    workspace = Workspace(shipped_root())
    assert workspace.validate() == []
    assert "rmsnorm_h4096" in workspace.definitions
    assert "rmsnorm_h4096/torch_fp32" in {s.qualified_name for s in workspace.solutions()}


def test_shipped_rmsnorm_definition():
    d = load_definition(shipped_root() / "defs" / "rmsnorm" / "rmsnorm_h4096.yaml")
    assert d.var_axes == ("batch_size",) and d.const_axes == {"hidden_size": 4096}
    assert [t.name for t in d.inputs] == ["hidden_states", "weight"]
    assert d.workloads[0].uuid == "rmsnorm_h4096-batch_size1"
