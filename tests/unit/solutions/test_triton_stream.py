"""The weight-streaming GEMM solutions (``gemm_*/triton_stream``): their launch tables and
every config of each table under ``TRITON_INTERPRET=1`` on CPU tensors.

The full-shape check of each solution at M = 1 and 3 is in test_triton_interpret.py; here
every config of every table runs (the M buckets of 2..128 and the large-M tile too), on a
128-row slice of B so the interpreter stays fast, against an fp32 reference.
"""
from __future__ import annotations

import ast

import pytest
from interpreted_run import run_interpreted

from fibuild.spec.workspace import Workspace, shipped_root

WORKSPACE = Workspace(shipped_root())
STREAM = [s for s in WORKSPACE.solutions() if s.name == "triton_stream"]
SMEM_BYTES = 227 * 1024  # shared memory a CTA may use on sm_90


def _configs(sol) -> list:
    """The CONFIGS table of a solution's kernel.py, read without importing it."""
    tree = ast.parse((sol.path / "kernel.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
            if getattr(target, "id", None) == "CONFIGS":
                # Literals and ``1 << 62`` only: evaluated with no names or builtins.
                return eval(compile(ast.Expression(node.value), "CONFIGS", "eval"), {"__builtins__": {}})
    raise AssertionError(f"{sol.qualified_name}: no CONFIGS table")


def test_every_gemm_definition_has_a_stream_solution():
    gemms = {d for d in WORKSPACE.definitions if d.startswith("gemm_")}
    assert len(gemms) == 8
    assert {s.definition for s in STREAM} == gemms


def test_every_stream_solution_builds_the_one_shared_kernel_file():
    assert all(s.libraries == ("gemv",) and s.all_sources == ("kernel.py", "gemv.py") for s in STREAM)
    assert len({path for s in STREAM for _, path in s.library_files}) == 1


@pytest.mark.parametrize("sol", STREAM, ids=[s.qualified_name for s in STREAM])
def test_launch_table_tiles_the_shape(sol):
    defn = WORKSPACE.definition(sol.definition)
    n, k = defn.const_axes["N"], defn.const_axes["K"]
    table = _configs(sol)
    limits = [max_m for max_m, _ in table]
    assert limits == sorted(limits) and len(set(limits)) == len(limits) and limits[0] == 1
    for max_m, cfg in table:
        assert n % cfg["BLOCK_N"] == 0 and k % cfg["BLOCK_K"] == 0, cfg
        if cfg["kernel"] == "fma":
            assert max_m == 1, "the fma kernel takes M = 1 only"
        else:
            assert cfg["kernel"] == "dot" and cfg["BLOCK_M"] >= min(max_m, 16), cfg
            stage = (cfg["BLOCK_N"] + cfg["BLOCK_M"]) * cfg["BLOCK_K"] * 2
            assert cfg["num_stages"] * stage <= SMEM_BYTES, cfg


# Runs in the child: every config of each named solution's table, on B[:128], vs fp32.
CHILD = r"""
import importlib, importlib.machinery, importlib.util, json, sys
import torch
from fibuild.spec.workspace import Workspace, shipped_root

ws = Workspace(shipped_root())
results = []
for qualified in sys.argv[1:]:
    sol = ws.solution(qualified)
    name = "stream_" + sol.definition
    package = importlib.machinery.ModuleSpec(name, None, is_package=True)
    sys.modules[name] = importlib.util.module_from_spec(package)
    sys.modules[name].__path__ = [str(d) for d in sol.source_dirs]
    kernel = importlib.import_module(name + ".kernel")
    gemv = sys.modules[name + ".gemv"]
    g = torch.Generator().manual_seed(0)
    previous = 0
    for max_m, cfg in kernel.CONFIGS:
        m = min(max_m, previous + 3, 130)  # inside the bucket; > BLOCK_M for the large tile
        previous = max_m
        a = torch.randn(m, kernel.K, generator=g).to(kernel.DTYPE)
        b = torch.randn(128, kernel.K, generator=g).to(kernel.DTYPE)
        want = (a.float() @ b.float().T)
        got = gemv.matmul_nt(a, b, cfg)
        err = (got.float() - want).abs()
        results.append({"solution": qualified, "m": m, "kernel": cfg["kernel"], "dtype": str(got.dtype),
                        "shape": list(got.shape), "within": bool((err <= 0.1 + 0.01 * want.abs()).all()),
                        "max_abs": float(err.max())})
    try:
        gemv.matmul_nt(torch.randn(2, kernel.K).to(kernel.DTYPE), torch.randn(100, kernel.K).to(kernel.DTYPE),
                       kernel.CONFIGS[-1][1])
        results.append({"solution": qualified, "untiled": "accepted"})
    except ValueError as exc:
        results.append({"solution": qualified, "untiled": str(exc)})
print(json.dumps(results))
"""


def test_every_config_matches_fp32_under_the_interpreter():
    results = run_interpreted(CHILD, *[s.qualified_name for s in STREAM], timeout=600)
    checked = [r for r in results if "within" in r]
    assert len(checked) == sum(len(_configs(s)) for s in STREAM)
    assert {r["kernel"] for r in checked} == {"fma", "dot"}
    for r in checked:
        defn = WORKSPACE.definition(WORKSPACE.solution(r["solution"]).definition)
        assert r["within"] and r["shape"] == [r["m"], 128] and r["dtype"] == f"torch.{defn.outputs[0].dtype}", r
    untiled = [r["untiled"] for r in results if "untiled" in r]
    assert len(untiled) == len(STREAM) and all("does not tile" in u for u in untiled), untiled
