"""Build flags cannot make a build run anything but the compilers, or write outside the
build directory (real g++, nvcc, ninja).

Each payload would touch a marker file if it ran, or write the file it names. The
solutions are made with ``dataclasses.replace`` (no validation), so these tests show the
build stage refusing them by itself; tests/unit/spec/test_hostile_manifests.py shows
validate refusing them. Where the host compiler honours a payload, the test also builds it
with the allowlist switched off and sees the payload work, so the refusal is not vacuous.
"""
from __future__ import annotations

import dataclasses
import subprocess

import pytest

from fibuild.compile.cache import BuildCache
from fibuild.errors import BuildError
from fibuild.spec import flags as flag_policy

from toolchain_support import settings_for


def _with_flags(built, name, **flags):
    defn, sol = built.pair(name)
    return defn, dataclasses.replace(sol, build=dataclasses.replace(sol.build, **flags))


def _build(built, tmp_path, defn, sol):
    return BuildCache(settings_for(tmp_path / "cache", built.root)).get_or_build(defn, sol)


def _switch_off(monkeypatch):
    monkeypatch.setattr(flag_policy, "refusals", lambda *args, **kwargs: [])


def _ninja_payload(marker):
    return f"-O2\nrule pwn\n  command = touch {marker}\nbuild {marker}: pwn\ndefault {marker}"


@pytest.mark.parametrize("field", ["cflags", "ldflags", "include_dirs"])
def test_newline_payload_adds_no_ninja_rule(built, tmp_path, monkeypatch, field):
    marker = tmp_path / "ran"
    defn, sol = _with_flags(built, "add_one_f32/cpp_add", **{field: (_ninja_payload(marker),)})
    with pytest.raises(BuildError, match="control character"):
        _build(built, tmp_path, defn, sol)
    # With the flag policy switched off, the ninja writer still refuses to write the line.
    _switch_off(monkeypatch)
    monkeypatch.setattr(flag_policy, "include_dir_reason", lambda *args: None)
    with pytest.raises(BuildError, match="control character"):
        _build(built, tmp_path / "again", defn, sol)
    assert not marker.exists()


def test_gcc_wrapper_payload_is_refused(built, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    payload = ("-wrapper", f"/bin/sh,-c,touch {marker}; exec \"$0\" \"$@\"")
    defn, sol = _with_flags(built, "add_one_f32/cpp_add", cflags=payload)
    with pytest.raises(BuildError, match="'-wrapper' makes gcc run every sub-command"):
        _build(built, tmp_path, defn, sol)
    assert not marker.exists()
    # The payload is real: without the policy, g++ runs it (so the assertion above can fail).
    _switch_off(monkeypatch)
    _build(built, tmp_path / "unguarded", defn, sol)
    assert marker.exists()


def test_shell_metacharacters_stay_one_argument(built, tmp_path):
    marker = tmp_path / "ran"
    defn, sol = _with_flags(built, "add_one_f32/cpp_add",
                            cflags=(f"-DFIB_T1=$(touch {marker})", f"-DFIB_T2=`touch {marker}`",
                                    f"-DFIB_T3=';touch {marker}'"))
    kernel = _build(built, tmp_path, defn, sol)
    assert kernel.build_dir.is_dir() and not marker.exists()


def _evil_compiler_dir(tmp_path, marker):
    evil = tmp_path / "evil-bin"
    evil.mkdir()
    for name in ("gcc", "g++", "c++", "cc"):
        script = evil / name
        script.write_text(f"#!/bin/sh\ntouch {marker}\nexec /usr/bin/{name} \"$@\"\n")
        script.chmod(0o755)
    return evil


@pytest.mark.parametrize("flags", [
    lambda evil, marker: ("-ccbin", str(evil)),
    lambda evil, marker: (f"--compiler-bindir={evil}",),
    lambda evil, marker: ("-Xcompiler", f"-wrapper,/bin/sh,-c,touch {marker}"),
    lambda evil, marker: ("-Xcompiler", f"-B{evil}"),
])
def test_nvcc_payloads_are_refused(built, tmp_path, cuda_ok, flags):
    if not cuda_ok:
        pytest.skip("nvcc is not available")
    marker = tmp_path / "ran"
    evil = _evil_compiler_dir(tmp_path, marker)
    defn, sol = _with_flags(built, "add_one_f32/cuda_add", cuda_cflags=flags(evil, marker))
    with pytest.raises(BuildError, match="build.cuda_cflags"):
        _build(built, tmp_path, defn, sol)
    assert not marker.exists()


def test_common_cuda_flags_pass_the_policy():
    assert flag_policy.refusals(["-O3", "-std=c++17", "-Xcompiler", "-fPIC", "--use_fast_math"], "nvcc") == []


def _linker_plugin(tmp_path, marker):
    """A shared library whose constructor touches ``marker`` when anything loads it."""
    source = tmp_path / "plugin.c"
    source.write_text('#include <stdio.h>\n__attribute__((constructor)) static void ran(void) '
                      f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n'
                      "int onload(void *tv) { return 0; }\n")
    library = tmp_path / "plugin.so"
    subprocess.run(["cc", "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    return library


@pytest.mark.parametrize("ldflags", [
    lambda so: (f"--for-linker=-plugin={so}",),
    lambda so: ("--for-linker", f"-plugin={so}"),
])
def test_gcc_long_xlinker_plugin_payload_is_refused(built, tmp_path, monkeypatch, ldflags):
    marker = tmp_path / "ran"
    defn, sol = _with_flags(built, "add_one_f32/cpp_add", ldflags=ldflags(_linker_plugin(tmp_path, marker)))
    with pytest.raises(BuildError, match="--for-linker.* passes raw options to the linker"):
        _build(built, tmp_path, defn, sol)
    assert not marker.exists()
    _switch_off(monkeypatch)
    try:  # ld loads the plugin (running its constructor), whatever it makes of it afterwards
        _build(built, tmp_path / "unguarded", defn, sol)
    except BuildError:
        pass
    assert marker.exists()


#: flags that make gcc, as or ld write the file ``F`` wherever it points (issue payloads)
WRITE_ANYWHERE = {
    "cflags": [("-Wp,-MMD,{F}",), ("-fdump-tree-original={F}",), ("-fopt-info-all={F}",), ("-Wa,-adhln={F}",),
               ("-Wa,--MD,{F}",), ("-Wp,-MD,{F}", "-MT", "import os;#")],
    "ldflags": [("-Wl,-Map={F}",), ("-Wl,--dependency-file={F}",), ("-Wl,-o,{F}",)],
}


@pytest.mark.parametrize("field, payload", [(f, p) for f, ps in WRITE_ANYWHERE.items() for p in ps],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_flags_that_write_anywhere_are_refused(built, tmp_path, monkeypatch, field, payload):
    target = tmp_path / "elsewhere" / "x.pth"
    target.parent.mkdir()
    flags = tuple(t.replace("{F}", str(target)) for t in payload)
    defn, sol = _with_flags(built, "add_one_f32/cpp_add", **{field: flags})
    with pytest.raises(BuildError, match=f"build.{field}"):
        _build(built, tmp_path, defn, sol)
    assert not target.exists()
    _switch_off(monkeypatch)
    try:
        _build(built, tmp_path / "unguarded", defn, sol)
    except BuildError:
        pass  # -Wl,-o,F links to F instead of the artifact: the build "fails", the file is written
    assert target.exists()


@pytest.mark.parametrize("payload", [("-time", "{F}"), ("-Xcompiler", "-fdump-tree-original={F}")])
def test_nvcc_flags_that_write_anywhere_are_refused(built, tmp_path, cuda_ok, payload):
    if not cuda_ok:
        pytest.skip("nvcc is not available")
    target = tmp_path / "elsewhere.txt"
    flags = tuple(t.replace("{F}", str(target)) for t in payload)
    defn, sol = _with_flags(built, "add_one_f32/cuda_add", cuda_cflags=flags)
    with pytest.raises(BuildError, match="build.cuda_cflags"):
        _build(built, tmp_path, defn, sol)
    assert not target.exists()


def test_trusted_flags_widen_the_allowlist(built, tmp_path):
    header = built.root / "solutions" / "add_one_f32" / "cpp_add" / "kernel.cpp"
    defn, sol = _with_flags(built, "add_one_f32/cpp_add", cflags=("-include", str(header.parent / "none.h")))
    with pytest.raises(BuildError, match="'-include' is not among the C\\+\\+ compiler flags"):
        _build(built, tmp_path, defn, sol)
    settings = dataclasses.replace(settings_for(tmp_path / "cache", built.root), trusted_flags=("-include", "*.h"))
    with pytest.raises(BuildError) as excinfo:  # accepted: g++ now reads the (missing) header
        BuildCache(settings).get_or_build(defn, sol)
    assert "none.h" in str(excinfo.value) + (excinfo.value.log_tail or "")
