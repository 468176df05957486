"""Hostile manifests are clear errors naming the file: bombs, control characters, deep
nesting, huge strings, unfailable tolerances, unsafe paths, flags that run programs,
missing entry points. Each test plants the exact payload in a real file."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from fibuild.errors import ManifestError
from fibuild.spec.manifest import load_definition, load_solution, load_workloads_jsonl

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
GOOD_DEF = FIXTURES / "manifests" / "definitions" / "good_full.yaml"
SOLUTIONS = FIXTURES / "compile" / "workspace" / "solutions" / "add_one_f32"


def _definition(tmp_path, text: str) -> Path:
    path = tmp_path / "defs" / "toy" / "good_full.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _edited_definition(tmp_path, **changes) -> Path:
    data = yaml.safe_load(GOOD_DEF.read_text())
    data.update(changes)
    return _definition(tmp_path, yaml.safe_dump(data, sort_keys=False))


def _problems(path, load=load_definition, *args) -> str:
    with pytest.raises(ManifestError) as excinfo:
        load(path, *args)
    assert excinfo.value.path == str(path)
    return str(excinfo.value)


def _solution(tmp_path, name: str, **changes) -> Path:
    directory = tmp_path / "solutions" / "add_one_f32" / name
    shutil.copytree(SOLUTIONS / name, directory)
    path = directory / "solution.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- YAML and JSON bounds ------------------------------------------------------------------

def test_alias_bomb_fails_fast_naming_the_file(tmp_path):
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    text = "\n".join(lines) + "\n"
    assert len(text) < 1500  # 9**9 ~ 3.9e8 nodes once expanded
    path = _definition(tmp_path, text)
    start = time.perf_counter()
    message = _problems(path)
    assert time.perf_counter() - start < 2.0
    assert f"{path}: /: the document expands to more than 200000 nodes" in message


def test_oversized_manifest_is_refused_before_parsing(tmp_path):
    path = _definition(tmp_path, "name: x\n" + "# padding\n" * 120_000)
    assert "a manifest may hold at most 1048576 bytes" in _problems(path)


def test_control_character_names_line_and_column(tmp_path):
    path = _definition(tmp_path, 'op_type: toy\nname: "\x01"\n')
    assert f"{path}: /: character U+0001 at line 2, column 8 is not allowed in YAML" in _problems(path)


def test_deep_yaml_nesting_is_a_clear_error(tmp_path):
    path = _definition(tmp_path, "name: " + "[" * 200 + "]" * 200 + "\n")
    assert "nested more than 64 levels deep" in _problems(path)


def test_deep_json_workload_line_is_a_clear_error(tmp_path):
    defn = load_definition(GOOD_DEF)
    path = tmp_path / "workloads.jsonl"
    path.write_text('{"uuid": "w", "axes": {"batch_size": 1}, "inputs": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    assert f"{path}: /0: line 1: nested too deeply" in _problems(path, load_workloads_jsonl, defn)


def test_huge_reference_is_a_clear_error(tmp_path):
    path = _edited_definition(tmp_path, reference="x = 1\n" * 40_000)  # 240 000 characters
    assert "/reference" in _problems(path) and "is too long" in _problems(path)


def test_reference_that_exhausts_the_parser_is_a_clear_error(tmp_path):
    path = _edited_definition(tmp_path, reference="x = " + "-" * 90_000 + "1\n")  # MemoryError in ast.parse
    assert f"{path}: /reference: nested too deeply to parse" in _problems(path)


# -- tolerances ----------------------------------------------------------------------------

@pytest.mark.parametrize("tolerance, fragment", [
    ("{atol: .inf, rtol: 1.0e-2}", "/tolerance/atol: inf is greater than the maximum of 1000"),
    ("{atol: .nan, rtol: 1.0e-2}", "/tolerance/atol: atol is nan: a tolerance must be a finite number"),
    ("{atol: 1.0e-2, rtol: 1.0e+9}", "/tolerance/rtol: 1000000000.0 is greater than or equal to the maximum of 1"),
    ("{atol: 1.0e-2, rtol: 1.0}", "/tolerance/rtol: 1.0 is greater than or equal to the maximum of 1"),
    ("{atol: -1.0, rtol: 0.0}", "/tolerance/atol: expected a value >= 0, got -1.0"),
])
def test_tolerances_that_cannot_fail_are_manifest_errors(tmp_path, tolerance, fragment):
    text = GOOD_DEF.read_text().replace("tolerance: {atol: 1.0e-3, rtol: 2.0e-2}", f"tolerance: {tolerance}")
    assert f"tolerance: {tolerance}" in text
    assert fragment in _problems(_definition(tmp_path, text))


# -- workload paths ------------------------------------------------------------------------

@pytest.mark.parametrize("blob", ["/etc/passwd", "../../etc/passwd", "registry/../../x.safetensors"])
def test_safetensors_path_must_stay_in_the_workspace(tmp_path, blob):
    defn = load_definition(GOOD_DEF)
    path = tmp_path / "workloads.jsonl"
    path.write_text(json.dumps({"uuid": "w", "axes": {"batch_size": 2}, "inputs": {
        "hidden": {"type": "safetensors", "path": blob, "tensor_key": "h"},
        "scale": {"type": "scalar", "value": 1.0}}}) + "\n")
    assert f"{path}: /0/inputs/hidden/path: line 1:" in _problems(path, load_workloads_jsonl, defn)


# -- build flags ---------------------------------------------------------------------------

@pytest.mark.parametrize("field, flags, bad, fragment", [
    ("cflags", ["-O2\nrule pwn\n  command = touch /tmp/x"], 0, "one argument without control characters"),
    ("ldflags", ["-shared", "-L/x\nbuild pwn: pwn"], 1, "one argument without control characters"),
    ("include_dirs", ["inc\ndefault pwn"], 0, "one argument without control characters"),
    ("cflags", ["-wrapper", "/bin/sh,-c,touch /tmp/x"], 0, "'-wrapper' makes gcc run every sub-command"),
    ("cflags", ["-B/tmp/evil"], 0, "take its sub-programs"),
    ("cflags", ["-fplugin=/tmp/evil.so"], 0, "load a plugin"),
    ("cflags", ["-specs=/tmp/evil.specs"], 0, "spec file"),
    ("cflags", ["@/tmp/options"], 0, "response file"),
    ("ldflags", ["-fuse-ld=/tmp/evil-ld"], 0, "-fuse-ld= accepts only bfd, gold, lld, mold"),
    ("ldflags", ["-Wl,-plugin,/tmp/evil.so"], 0, "makes the linker load a plugin"),
    ("ldflags", ["-Xlinker", "--plugin=/tmp/evil.so"], 0, "'-Xlinker' passes raw options to the linker"),
    ("cflags", ["-Xclang", "-load"], 0, "'-Xclang' passes raw options"),
    ("cuda_cflags", ["-ccbin", "/tmp/evil-cc"], 0, "'-ccbin' makes nvcc run another host compiler"),
    ("cuda_cflags", ["--compiler-bindir=/tmp"], 0, "makes nvcc run another host compiler"),
    ("cuda_cflags", ["--run"], 0, "makes nvcc run the program it builds"),
    ("cuda_cflags", ["-Xcompiler", "-wrapper,/bin/sh,-c,touch"], 1, "-Xcompiler '-wrapper,/bin/sh,-c,touch'"),
    ("cuda_cflags", ["--linker-options", "-plugin"], 0, "passes raw options to the linker"),
    ("cuda_cflags", ["-optf", "/tmp/options"], 0, "read more options from a file"),
])
def test_build_flags_that_run_programs_are_refused_naming_flag_and_file(tmp_path, field, flags, bad, fragment):
    path = _solution(tmp_path, "cpp_add", build={field: flags})
    message = _problems(path, load_solution)
    assert f"{path}: /build/{field}/{bad}: " in message and fragment in message


def test_harmless_flags_pass(tmp_path):
    path = _solution(tmp_path, "cpp_add", build={
        "cflags": ["-O2", "-DX=$(touch /tmp/x)", "-include", "offset.h", "--sysroot=/", "-fuse-ld=lld"],
        "cuda_cflags": ["--use_fast_math", "-Xcompiler", "-fno-strict-aliasing", "-lineinfo"],
        "ldflags": ["-Wl,-rpath,/opt/lib", "-Wl,-z,now"], "include_dirs": ["."]})
    assert load_solution(path).build.cflags[1] == "-DX=$(touch /tmp/x)"


# -- entry points --------------------------------------------------------------------------

def test_missing_python_entry_function_is_reported(tmp_path):
    path = _solution(tmp_path, "py_add", entry_point="kernel.py::add_two")
    assert f"{path}: /entry_point: kernel.py defines no top-level function 'add_two'" in _problems(path, load_solution)


def test_python_entry_point_is_read_never_imported(tmp_path):
    path = _solution(tmp_path, "py_add")
    marker = tmp_path / "imported"
    kernel = path.parent / "kernel.py"
    kernel.write_text(f"open({str(marker)!r}, 'w').close()\nfrom .helpers import OFFSET as add_one\n")
    assert load_solution(path).entry_symbol == "add_one"  # an imported name counts
    assert not marker.exists()


def test_missing_native_export_is_reported(tmp_path):
    path = _solution(tmp_path, "cpp_add", entry_point="kernel.cpp::add_two")
    message = _problems(path, load_solution)
    assert f"{path}: /entry_point: no source exports 'add_two'" in message
    assert "TVM_FFI_DLL_EXPORT_TYPED_FUNC(add_two, <function>)" in message
