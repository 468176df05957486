"""The ApplyTable cache: hits skip the workspace entirely; any input change is a miss."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from fibuild.runtime import collect, table_cache
from fibuild.runtime.api import load, resolve
from fibuild.runtime.table_cache import input_digest

from runtime_helpers import DEF


def _no_collect(*a, **kw):
    raise AssertionError("the table was collected from the workspace instead of the cache")


def test_second_load_is_served_from_the_index(workspace, monkeypatch):
    workspace.record("torch_fp32", 8, 40.0)  # the baseline, measured beside it
    workspace.record("torch_alt", 8, 20.0)
    first = load(DEF, settings=workspace.settings)
    monkeypatch.setattr(collect, "collect_table", _no_collect)
    second = load(DEF, settings=workspace.settings)
    assert second.table.to_json() == first.table.to_json()
    assert second.definition.name == DEF and second.definition.var_axes == ("batch_size",)
    assert second.explain(batch_size=8).solution.name == "torch_alt"


def test_a_cache_hit_keeps_the_order_of_axes_inputs_and_outputs(tmp_path, monkeypatch):
    """The paged decode definition declares its var axes, inputs and outputs out of
    alphabetical order: the cached definition must keep the declared order (it lays out
    the ApplyKey and the call's arguments), and resolve the same key to the same answer."""
    from fibuild.config import Settings
    from fibuild.spec.workspace import Workspace, shipped_root

    name, slug = "gqa_paged_decode_h32_kv8_d128_ps1", "nvidia-h200-sm90"
    settings = Settings.from_env({"FIBUILD_ROOT": str(shipped_root()), "FIBUILD_CACHE_DIR": str(tmp_path)})
    ws = Workspace(shipped_root())
    declared = ws.definition(name)
    assert list(declared.var_axes) != sorted(declared.var_axes)
    axes = {"batch_size": 16, "num_pages": 16400, "len_indptr": 17, "num_kv_indices": 16400}
    miss = resolve(name, axes, device=slug, settings=settings)
    monkeypatch.setattr(collect, "collect_table", _no_collect)
    defn, _, _ = table_cache.load_table(ws, settings, name, slug, here=False)
    assert defn.var_axes == declared.var_axes
    assert [i.name for i in defn.inputs] == [i.name for i in declared.inputs]
    assert [o.name for o in defn.outputs] == [o.name for o in declared.outputs]
    hit = resolve(name, axes, device=slug, settings=settings)
    assert hit.key == miss.key == (16, 16400, 17, 16400)
    assert hit.solution_name == miss.solution_name


@pytest.mark.parametrize("change", ["record", "edit_source", "new_solution", "edit_definition"])
def test_any_input_change_is_a_miss(workspace, change):
    workspace.record("torch_alt", 8, 20.0)
    s = workspace.settings
    before = input_digest(workspace.root, DEF, workspace.device, True, s)
    assert input_digest(workspace.root, DEF, workspace.device, True, s) == before
    if change == "record":
        workspace.record("torch_fp32", 8, 5.0)
    elif change == "edit_source":
        p = workspace.root / "solutions" / DEF / "torch_alt" / "kernel.py"
        p.write_text(p.read_text() + "\n")
    elif change == "new_solution":
        src = workspace.root / "solutions" / DEF / "torch_fp32"
        dst = workspace.root / "solutions" / DEF / "torch_copy"
        dst.mkdir()
        (dst / "kernel.py").write_text((src / "kernel.py").read_text())
        (dst / "solution.yaml").write_text((src / "solution.yaml").read_text().replace("torch_fp32", "torch_copy"))
    else:
        p = workspace.root / "defs" / "rmsnorm" / f"{DEF}.yaml"
        p.write_text(p.read_text() + "\n# edited\n")
    assert input_digest(workspace.root, DEF, workspace.device, True, s) != before
    # Other devices and the other-machine mode are keyed apart.
    assert input_digest(workspace.root, DEF, "nvidia-x-sm90", False, s) != \
        input_digest(workspace.root, DEF, workspace.device, True, s)


def test_compiler_environment_is_part_of_the_digest(workspace):
    import dataclasses

    s = workspace.settings
    with_env = dataclasses.replace(s, build_env=(("CPATH", "/opt/include"),))
    before = input_digest(workspace.root, DEF, workspace.device, True, s)
    assert input_digest(workspace.root, DEF, workspace.device, True, with_env) != before


def test_installing_a_package_or_a_new_compiler_is_a_miss(workspace, tmp_path, monkeypatch):
    """A table holds build keys (tvm-ffi, Triton, compiler versions are in them) and which
    solutions can run (FlashInfer installed or not): a cached one found after an upgrade would
    load a build made against the old tvm-ffi. Installing into any import folder, or a changed
    host compiler, changes the key; nothing else about the environment does."""
    s = workspace.settings
    site, bin_dir = tmp_path / "site", tmp_path / "bin"
    site.mkdir()
    bin_dir.mkdir()
    compiler = bin_dir / "c++"
    compiler.write_text("#!/bin/sh\necho 'c++ 12.2'\n")
    compiler.chmod(0o755)
    monkeypatch.setattr(sys, "path", [sys.path[0], str(site), *sys.path[1:]])
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    digest = lambda: input_digest(workspace.root, DEF, workspace.device, True, s)  # noqa: E731
    before = digest()
    assert digest() == before
    (site / "apache_tvm_ffi-0.1.16.dist-info").mkdir()       # pip install -U apache-tvm-ffi
    upgraded = digest()
    assert upgraded != before
    os.utime(compiler, ns=(1, 1))                            # another compiler build
    assert digest() != upgraded
    settled = digest()
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path[1:]])  # another script's folder
    (tmp_path / "output.txt").write_text("a script writing beside itself")
    assert digest() == settled


def test_new_record_changes_the_answer(workspace):
    workspace.record("torch_fp32", 8, 40.0)  # the baseline, measured beside it
    workspace.record("torch_alt", 8, 20.0)
    assert resolve(DEF, {"batch_size": 8}, settings=workspace.settings).solution.name == "torch_alt"
    workspace.record("torch_fp32", 8, 5.0)
    assert resolve(DEF, {"batch_size": 8}, settings=workspace.settings).solution.name == "torch_fp32"


def test_malformed_or_linked_cached_table_is_a_miss(workspace, tmp_path):
    s = workspace.settings
    load(DEF, settings=s)
    digest = input_digest(workspace.root, DEF, workspace.device, True, s)
    path = table_cache.table_file(s, digest)
    assert path.is_file() and path.parent.parent == s.cache_dir  # beside the builds, not in the index
    path.write_text('{"table": {"nonsense": 1}}')
    assert table_cache.read_cached(s, digest) is None
    assert load(DEF, settings=s).explain(batch_size=2).policy == "baseline"
    elsewhere = tmp_path / "planted.json"
    elsewhere.write_text(path.read_text())
    path.unlink()
    path.symlink_to(elsewhere)  # a link in the cache is never followed
    assert table_cache.read_cached(s, digest) is None


def test_a_build_committed_after_caching_loads_from_its_key_without_rewriting_the_table(workspace, monkeypatch):
    """The cached table holds build keys only: a build made by the first call is found by the
    next process from the key (its directory follows from it), and the table is not rewritten."""
    from fibuild.compile import store
    from fibuild.compile.cache import BuildCache

    workspace.record("torch_fp32", 8, 40.0)  # the baseline, measured beside it
    workspace.record("torch_alt", 8, 20.0)
    s = workspace.settings
    k = load(DEF, settings=s)
    cand = k.table.candidates["torch_alt"]
    directory = store.build_dir(s.cache_dir, cand.build_key, cand.solution.qualified_name)
    assert cand.build_key and not directory.exists()  # not built when the table was made
    cached = table_cache.table_file(s, input_digest(workspace.root, DEF, workspace.device, True, s))
    before = (cached.read_bytes(), cached.stat().st_mtime_ns)
    from runtime_helpers import inputs

    k(*inputs(8))
    assert (directory / "meta.json").is_file()
    assert (cached.read_bytes(), cached.stat().st_mtime_ns) == before  # no write back

    def no_build(*args, **kwargs):
        raise AssertionError("the committed build should load from its key")

    monkeypatch.setattr(BuildCache, "get_or_build", no_build)
    again = load(DEF, settings=s)
    again(*inputs(8))
    assert again.explain(batch_size=8).build_key == cand.build_key


COLD = textwrap.dedent("""
    import json, sys, time
    import torch
    t0 = time.perf_counter()
    import fibuild
    k = fibuild.load("rmsnorm_h4096")
    x = torch.randn(8, 4096, dtype=torch.bfloat16)
    w = torch.ones(4096, dtype=torch.bfloat16)
    y = k(x, w)
    elapsed = time.perf_counter() - t0
    heavy = [m for m in ("jsonschema", "referencing", "ninja", "fibuild.registry",
                         "fibuild.compile.toolchain", "yaml") if m in sys.modules]
    print(json.dumps({"solution": k.explain(batch_size=8).solution_name, "heavy": heavy,
                      "elapsed": elapsed, "shape": list(y.shape)}))
""")


def test_warm_process_parses_no_manifest_and_imports_no_schema(workspace):
    workspace.record("torch_fp32", 8, 20.0)
    env = dict(os.environ, FIBUILD_ROOT=str(workspace.root),
               FIBUILD_CACHE_DIR=str(workspace.settings.cache_dir), FIBUILD_DEVICE="cpu")
    # Warm the table and the build in one process ...
    warm = subprocess.run([sys.executable, "-c", COLD],
                          env=env, capture_output=True, text=True, timeout=300)
    assert warm.returncode == 0, warm.stderr
    # ... then a new process must take the fast path only.
    cold = subprocess.run([sys.executable, "-c", COLD], env=env, capture_output=True, text=True, timeout=300)
    assert cold.returncode == 0, cold.stderr
    result = json.loads(cold.stdout)
    assert result["solution"] == "torch_fp32" and result["shape"] == [8, 4096]
    assert result["heavy"] == []


def test_gc_removes_cached_tables_and_interrupted_writes(workspace, capsys, monkeypatch):
    """``fibuild gc`` leaves tables alone by default but removes interrupted writes; ``--all``
    removes the tables, and the next load computes its table again (a cache, nothing lost)."""
    from fibuild.cli import main

    workspace.record("torch_fp32", 8, 40.0)  # the baseline, measured beside it
    workspace.record("torch_alt", 8, 20.0)
    load(DEF, settings=workspace.settings)
    folder = workspace.settings.cache_dir / table_cache.TABLES_DIR
    (table,) = folder.glob("*.json")
    temp = folder / ".abc-123.tmp"
    temp.write_text("{")
    os.utime(temp, (0, 0))  # an interrupted write from long ago
    fresh_temp = folder / ".def-456.tmp"
    fresh_temp.write_text("{")  # a write in progress: kept
    monkeypatch.setenv("FIBUILD_CACHE_DIR", str(workspace.settings.cache_dir))
    monkeypatch.setenv("FIBUILD_ROOT", str(workspace.root))
    assert main(["gc", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tables_removed"] == [str(temp)] and table.exists() and fresh_temp.exists()
    assert main(["gc", "--all", "--dry-run"]) == 0
    assert f"would remove {table}" in capsys.readouterr().out and table.exists()
    assert main(["gc", "--all"]) == 0
    assert "removed 1 cached apply tables" in capsys.readouterr().out
    assert not table.exists()
    again = load(DEF, settings=workspace.settings)
    assert again.explain(batch_size=8).solution.name == "torch_alt"
    assert list(folder.glob("*.json"))
