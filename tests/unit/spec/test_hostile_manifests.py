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


#: every payload of the trust-boundary report: each runs a program or writes the file it names
ISSUE_PAYLOADS = [
    ("ldflags", ["--for-linker=-plugin=/tmp/x.so"], 0, "passes raw options to the linker"),
    ("ldflags", ["--for-linker", "-plugin=/tmp/x.so"], 0, "passes raw options to the linker"),
    ("cflags", ["-Wp,-MD,/usr/lib/python3/dist-packages/x.pth", "-MT", "import os;#"], 0,
     "passes raw options to the preprocessor"),
    ("cflags", ["--config", "/tmp/clang.cfg"], 0, "makes clang read a configuration file"),
    ("ldflags", ["-Wl,-o,/tmp/F"], 0, "'-o' writes the output outside the build directory"),
    ("ldflags", ["-Wl,-Map=/tmp/F"], 0, "writes a link map"),
    ("ldflags", ["-Wl,--dependency-file=/tmp/F"], 0, "'--dependency-file=/tmp/F' is not among the linker"),
    ("cflags", ["-Wp,-MMD,/tmp/F"], 0, "passes raw options to the preprocessor"),
    ("cflags", ["-aux-info", "/tmp/F"], 0, "writes declarations to any file"),
    ("cflags", ["-fdump-tree-original=/tmp/F"], 0, "writes compiler dumps"),
    ("cflags", ["-fopt-info-all=/tmp/F"], 0, "writes optimization reports"),
    ("cflags", ["-Wa,-adhln=/tmp/F"], 0, "passes raw options to the assembler"),
    ("cflags", ["-Wa,--MD,/tmp/F"], 0, "passes raw options to the assembler"),
    ("cflags", ["-fprofile-note=/tmp/F"], 0, "profile files"),
    ("cuda_cflags", ["-time", "/tmp/F"], 0, "makes nvcc write a timing file anywhere"),
    ("cuda_cflags", ["-Xcompiler", "-fdump-tree-original=/tmp/F"], 1, "writes compiler dumps"),
    ("cflags", ["-MJ", "/tmp/F"], 0, "writes a compilation database entry"),
    ("cflags", ["--serialize-diagnostics", "/tmp/F"], 0, "writes diagnostics to any file"),
    ("cflags", ["-fproc-stat-report=/tmp/F"], 0, "writes a report file anywhere"),
    ("cflags", ["-I/home/user/.ssh"], 0, "outside the solution and the system include folders"),
    ("cflags", ["-isystem", "../../../etc"], 1, "leaves the solution folder"),
    ("include_dirs", ["/etc"], 0, "outside the solution and the system include folders"),
    ("ldflags", ["-L/tmp/evil"], 0, "is not a system library folder"),
    ("ldflags", ["-Wl,-rpath,/tmp/evil"], 0, "is not a system library folder"),
    ("cflags", ["-include", "/etc/shadow"], 0, "'-include' is not among the C++ compiler flags"),
    ("cflags", ["-mllvm", "-info-output-file=/tmp/F"], 0, "passes raw options to LLVM"),
    ("cflags", ["-fmodules"], 0, "writes or loads files outside the build directory"),
]


@pytest.mark.parametrize("field, flags, bad, fragment", ISSUE_PAYLOADS)
def test_flags_outside_the_allowlist_are_refused(tmp_path, field, flags, bad, fragment):
    path = _solution(tmp_path, "cpp_add", build={field: flags})
    message = _problems(path, load_solution)
    assert f"{path}: /build/{field}/{bad}: " in message and fragment in message


def test_harmless_flags_pass(tmp_path):
    path = _solution(tmp_path, "cpp_add", build={
        "cflags": ["-O2", "-g", "-DX=$(touch /tmp/x)", "-U", "NDEBUG", "-std=c++20", "-Wall", "-Wno-unused",
                   "-march=native", "-fvisibility=hidden", "-fno-strict-aliasing", "-pthread", "-Iinclude",
                   "-isystem", "/usr/local/cuda/include", "--param=max-inline-insns-single=100"],
        "cuda_cflags": ["--use_fast_math", "-Xcompiler", "-fno-strict-aliasing,-fopenmp", "-lineinfo",
                        "-gencode=arch=compute_90a,code=sm_90a", "-arch", "sm_90a", "--expt-relaxed-constexpr",
                        "-maxrregcount=64", "-Xptxas", "-v,--warn-on-spills", "--extended-lambda", "-std=c++17"],
        "ldflags": ["-Wl,-rpath,/usr/local/cuda/lib64", "-Wl,-z,now", "-Wl,--as-needed", "-lm",
                    "-L/usr/lib/x86_64-linux-gnu", "-fuse-ld=gold", "-pthread"],
        "include_dirs": [".", "include", "/usr/include"]})
    assert load_solution(path).build.cflags[2] == "-DX=$(touch /tmp/x)"


def test_trusted_flags_widen_the_allowlist_in_one_place(tmp_path, monkeypatch):
    path = _solution(tmp_path, "cpp_add", build={"cflags": ["-include", "offset.h", "--sysroot=/"]})
    assert "'-include' is not among" in _problems(path, load_solution)
    monkeypatch.setenv("FIBUILD_TRUSTED_FLAGS", "-include *.h --sysroot=*")
    assert load_solution(path).build.cflags == ("-include", "offset.h", "--sysroot=/")
    monkeypatch.setenv("FIBUILD_TRUSTED_FLAGS", "-include")  # the value is still refused
    assert "/build/cflags/1: 'offset.h' is not among" in _problems(path, load_solution)


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


@pytest.mark.parametrize("source", ["a | b.cpp", "a b.cpp", "k$x.cpp", "k:1.cpp"])
def test_source_names_that_would_break_the_build_file_are_refused(tmp_path, source):
    path = _solution(tmp_path, "cpp_add", sources=["kernel.cpp", source])
    (path.parent / source).write_text("// a source\n")
    message = _problems(path, load_solution)
    assert f"{path}: /sources/1: invalid value {source!r}" in message and "would break the build file" in message
