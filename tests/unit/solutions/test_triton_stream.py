"""The weight-streaming GEMM solutions (``gemm_*/triton_stream``): their grids of launch
configs and every variant under ``TRITON_INTERPRET=1`` on CPU tensors.

Every variant of the grid runs (the fma GEMV at M = 1 and, through its small-M fallback, at
M = 3; every tensor-core tile at a few M), on a 128-row slice of B so the interpreter stays
fast, against an fp32 reference, in both dtypes.
"""
from __future__ import annotations

import pytest
from interpreted_run import run_interpreted

from fibuild.spec.workspace import Workspace, shipped_root

WORKSPACE = Workspace(shipped_root())
GEMMS = sorted(d for d in WORKSPACE.definitions if d.startswith("gemm_"))
STREAM = [WORKSPACE.solution("triton_stream", d) for d in GEMMS]
SMEM_BYTES = 227 * 1024  # shared memory a CTA may use on sm_90


def _variants(sol) -> list:
    return [v for v in WORKSPACE.solutions(sol.definition) if v.family == "triton_stream"]


def test_every_gemm_definition_has_a_stream_grid_built_from_the_gemv_library():
    assert len(GEMMS) == 8
    for sol in STREAM:
        assert sol.libraries == ("gemv",) and sol.entry_point == "stream.py::gemm" and sol.sources == ()
        assert len(_variants(sol)) >= 12


@pytest.mark.parametrize("sol", STREAM, ids=[s.qualified_name for s in STREAM])
def test_every_variant_tiles_the_shape(sol):
    defn = WORKSPACE.definition(sol.definition)
    n, k = defn.const_axes["N"], defn.const_axes["K"]
    kernels = set()
    for variant in _variants(sol):
        cfg = dict(variant.constants)
        kernels.add(cfg["KERNEL"])
        assert n % cfg["BLOCK_N"] == 0 and k % cfg["BLOCK_K"] == 0, variant.name
        if cfg["KERNEL"] == "dot":
            stage = (cfg["BLOCK_N"] + cfg["BLOCK_M"]) * cfg["BLOCK_K"] * 2
            assert cfg["BLOCK_M"] >= 16 and cfg["STAGES"] * stage <= SMEM_BYTES, variant.name
    assert kernels == {"fma", "dot"}


# Runs in the child: every config of each named solution's table, on B[:128], vs fp32.
CHILD = r"""
import importlib, importlib.machinery, importlib.util, json, sys
import torch
from fibuild.spec.workspace import Workspace, shipped_root

ws = Workspace(shipped_root())
results = []
for definition in sys.argv[1:]:
    variants = [v for v in ws.solutions(definition) if v.family == "triton_stream"]
    name = "stream_" + definition
    package = importlib.machinery.ModuleSpec(name, None, is_package=True)
    sys.modules[name] = importlib.util.module_from_spec(package)
    sys.modules[name].__path__ = [str(d) for d in variants[0].source_dirs]
    stream = importlib.import_module(name + ".stream")
    defn = ws.definition(definition)
    dtype, k = getattr(torch, defn.inputs[0].dtype), defn.const_axes["K"]
    g = torch.Generator().manual_seed(0)
    b = torch.randn(128, k, generator=g).to(dtype)
    for variant in variants:
        constants = dict(variant.constants)
        for m in ((1, 3) if constants["KERNEL"] == "fma" else (1, constants["BLOCK_M"] + 2)):
            a = torch.randn(m, k, generator=g).to(dtype)
            want = a.float() @ b.float().T
            got = stream.gemm(a, b, **constants)
            err = (got.float() - want).abs()
            results.append({"variant": variant.name, "m": m, "dtype": str(got.dtype), "shape": list(got.shape),
                            "within": bool((err <= 0.1 + 0.01 * want.abs()).all()), "max_abs": float(err.max())})
    try:
        stream.gemm(torch.randn(2, k).to(dtype), torch.randn(100, k).to(dtype), **dict(variants[-1].constants))
        results.append({"definition": definition, "untiled": "accepted"})
    except ValueError as exc:
        results.append({"definition": definition, "untiled": str(exc)})
print(json.dumps(results))
"""


#: one definition per dtype: the grid is the same for every shape
INTERPRETED = ["gemm_n4096_k4096", "gemm_n4096_k4096_bf16"]


def test_every_variant_matches_fp32_under_the_interpreter():
    results = run_interpreted(CHILD, *INTERPRETED, timeout=600)
    checked = [r for r in results if "within" in r]
    assert len(checked) == 2 * sum(len(_variants(WORKSPACE.solution("triton_stream", d))) for d in INTERPRETED)
    for r in checked:
        assert r["within"] and r["shape"] == [r["m"], 128], r
    assert {r["dtype"] for r in checked} == {"torch.float16", "torch.bfloat16"}
    untiled = [r["untiled"] for r in results if "untiled" in r]
    assert len(untiled) == len(INTERPRETED) and all("does not tile" in u for u in untiled), untiled
