"""Helpers of the integration tests: a workspace of small template-made definitions with
counted CPU solutions, and evaluations that make the resolver pick them."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from fibuild.config import Settings

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
STUB_DIR = FIXTURES / "flashinfer_stub"

#: small shapes: (op, params) of the definitions the workspace holds
SMALL = {
    "rmsnorm_h64": ("rmsnorm", {"hidden_size": 64, "dtype": "bfloat16", "eps": 1e-5}),
    "fused_add_rmsnorm_h64": ("fused_add_rmsnorm", {"hidden_size": 64, "dtype": "bfloat16", "eps": 1e-5}),
    "silu_and_mul_i32": ("silu_and_mul", {"intermediate_size": 32, "dtype": "bfloat16"}),
    "gemm_n48_k64_bf16": ("gemm", {"n": 48, "k": 64, "dtype": "bfloat16"}),
    "gqa_paged_decode_h8_kv2_d16_ps1": ("gqa_paged_decode", {"num_qo_heads": 8, "num_kv_heads": 2,
                                                             "head_dim": 16, "page_size": 1, "dtype": "bfloat16"}),
    "gqa_paged_decode_h8_kv2_d16_ps4": ("gqa_paged_decode", {"num_qo_heads": 8, "num_kv_heads": 2,
                                                             "head_dim": 16, "page_size": 4, "dtype": "bfloat16"}),
    "gqa_paged_prefill_causal_h8_kv2_d16_ps1": ("gqa_paged_prefill_causal", {
        "num_qo_heads": 8, "num_kv_heads": 2, "head_dim": 16, "page_size": 1, "dtype": "bfloat16"}),
    "gqa_ragged_prefill_causal_h8_kv2_d16": ("gqa_ragged_prefill_causal", {
        "num_qo_heads": 8, "num_kv_heads": 2, "head_dim": 16, "dtype": "bfloat16"}),
}

# A solution that runs the definition's own reference and counts its calls.
COUNTED = '''
from fibuild.spec.calling import load_reference
from fibuild.spec.manifest import load_definition

CALLS = []
_run = None


def run(*args):
    global _run
    if _run is None:
        import pathlib
        defs = pathlib.Path({defs!r})
        _run = load_reference(load_definition(next(defs.glob("*/{name}.yaml"))))["run"]
    CALLS.append(len(args))
    return _run(*args)
'''

# A plan/run solution of the paged decode definitions: the plan copies the page table into
# buffers of its own and the run reads the table only from them (and the index buffer), as a
# captured launch does; refill rewrites them in place. CALLS records plan, refill and run.
PLANNED = '''
import torch
from fibuild.spec.calling import load_reference
from fibuild.spec.manifest import load_definition

CALLS = []
_run = None


class Plan:
    def __init__(self, kv_indptr, rest):
        self.bounds = kv_indptr.clone()
        self.last = rest[0].clone() if len(rest) > 1 else None

    def refill(self, kv_indptr, kv_indices, *rest):
        if kv_indptr.shape != self.bounds.shape:
            return False
        CALLS.append("refill")
        self.bounds.copy_(kv_indptr)
        if self.last is not None:
            self.last.copy_(rest[0])
        return True


class FixedPlan(Plan):
    refill = None


def plan(kv_indptr, kv_indices, *rest):
    CALLS.append("plan")
    return {kind}(kv_indptr, rest)


def run(plan, q, k_cache, v_cache, kv_indptr, kv_indices, *rest):
    global _run
    if _run is None:
        import pathlib
        defs = pathlib.Path({defs!r})
        _run = load_reference(load_definition(next(defs.glob("*/{name}.yaml"))))["run"]
    CALLS.append("run")
    last = [plan.last] if plan.last is not None else []
    # Through the buffer as a pointer would be, whatever the view's length.
    indices = kv_indices.as_strided((int(plan.bounds[-1]),), (1,))
    return _run(q, k_cache, v_cache, plan.bounds, indices, *last, rest[-1])
'''

SOLUTION = """\
name: {solution}
definition: {name}
author: {author}
language: python
entry_point: kernel.py::run
sources: [kernel.py]
target_hardware: [cpu, cuda]
destination_passing_style: false
dependencies: {deps}
"""


@dataclass
class SmallWorkspace:
    root: Path
    settings: Settings

    @classmethod
    def create(cls, tmp_path: Path, names: tuple[str, ...] | None = None) -> "SmallWorkspace":
        """Definitions ``names`` (default: every one of ``SMALL`` as it is at call time)."""
        from fibuild.spec.templates import definition_document, write_definition

        root = tmp_path / "ws"
        for name in (tuple(SMALL) if names is None else names):
            op, params = SMALL[name]
            write_definition(root / "defs", definition_document(op, params))
        settings = Settings.from_env({"FIBUILD_ROOT": str(root), "FIBUILD_CACHE_DIR": str(tmp_path / "cache"),
                                      "FIBUILD_DEVICE": "cpu"})
        return cls(root, settings)

    def add_counted_solution(self, name: str, solution: str = "counted", *, flashinfer: bool = False) -> None:
        folder = self.root / "solutions" / name / solution
        folder.mkdir(parents=True, exist_ok=True)
        deps = "[flashinfer-python]" if flashinfer else "[]"
        (folder / "solution.yaml").write_text(SOLUTION.format(
            solution=solution, name=name, author="flashinfer" if flashinfer else "tests", deps=deps))
        (folder / "kernel.py").write_text(textwrap.dedent(COUNTED.format(defs=str(self.root / "defs"), name=name)))

    def add_planned_solution(self, name: str, solution: str = "planned", *, refill: bool = True) -> None:
        """A plan/run solution of a paged decode definition (see ``PLANNED``); without
        ``refill`` its plans have no ``refill`` method."""
        folder = self.root / "solutions" / name / solution
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "solution.yaml").write_text(SOLUTION.format(
            solution=solution, name=name, author="tests", deps="[]") + "plan: kernel.py::plan\n")
        (folder / "kernel.py").write_text(textwrap.dedent(PLANNED.format(
            defs=str(self.root / "defs"), name=name, kind="Plan" if refill else "FixedPlan")))

    def add_shipped_solution(self, name: str, solution: str) -> None:
        """A copy of the shipped solution ``solutions/<name>/<solution>`` of the repository."""
        import shutil

        shutil.copytree(FIXTURES.parents[1] / "solutions" / name / solution, self.root / "solutions" / name / solution)

    def record(self, name: str, solution: str, axes: dict, median_us: float = 1.0, device: str = "cpu") -> None:
        """A PASSED evaluation of ``solution`` at ``axes`` on this ``device``, current digest."""
        from fibuild.compile.keys import solution_digest
        from fibuild.devices import device_slug
        from fibuild.registry import Registry
        from fibuild.spec.model import Evaluation, LatencyStats
        from fibuild.spec.workspace import Workspace

        ws = Workspace(self.root)
        defn, sol = ws.definition(name), ws.solution(solution, name)
        Registry(ws.registry_dir).append(Evaluation(
            definition=name, solution=solution, solution_digest=solution_digest(defn, sol), build_key="",
            workload_uuid=f"{name}-{'-'.join(f'{k}{v}' for k, v in sorted(axes.items()))}", axes=dict(axes),
            status="PASSED", device=device_slug(device),
            latency=LatencyStats(median_us, median_us, median_us, median_us, 10), timestamp="2026-01-01T00:00:00Z"))


def solution_calls(name: str, key: tuple) -> list:
    """CALLS of the counted (or planned) solution the active integration's kernel memoized for ``key``."""
    from fibuild.integrations.activation import active

    entry = active().session.kernel(name).entry(key)
    return getattr(entry, "run", entry).__globals__["CALLS"]
