"""Build flags cannot make a build run anything but the compilers (real g++, nvcc, ninja).

Each payload would touch a marker file if it ran. The solutions are made with
``dataclasses.replace`` (no validation), so these tests show the build stage refusing
them by itself; tests/unit/spec/test_hostile_manifests.py shows validate refusing them.
"""
from __future__ import annotations

import dataclasses

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


def _ninja_payload(marker):
    return f"-O2\nrule pwn\n  command = touch {marker}\nbuild {marker}: pwn\ndefault {marker}"


@pytest.mark.parametrize("field", ["cflags", "ldflags", "include_dirs"])
def test_newline_payload_adds_no_ninja_rule(built, tmp_path, monkeypatch, field):
    marker = tmp_path / "ran"
    defn, sol = _with_flags(built, "add_one_f32/cpp_add", **{field: (_ninja_payload(marker),)})
    with pytest.raises(BuildError, match="control character"):
        _build(built, tmp_path, defn, sol)
    # With the flag policy switched off, the ninja writer still refuses to write the line.
    monkeypatch.setattr(flag_policy, "refusals", lambda tokens: [])
    monkeypatch.setattr(flag_policy, "include_dir_reason", lambda value: None)
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
    monkeypatch.setattr(flag_policy, "refusals", lambda tokens: [])
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
    assert flag_policy.refusals(["-O3", "-std=c++17", "-fPIC", "-Xcompiler", "-fPIC", "--use_fast_math"]) == []
