"""Helpers for the apply tests: a temp copy of the shipped rmsnorm workspace with CPU solutions,
and a way to add records.

``ws.record(solution, batch_size, median_us, spread=0.05)`` (p20/p80 at the median -/+ spread)
appends a real, schema-valid evaluation to
``registry/rmsnorm_h4096/<this CPU's slug>.jsonl`` with the solution's current digest.
"""
from __future__ import annotations

import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

from fibuild.config import Settings
from fibuild.devices import device_slug
from fibuild.spec.workspace import shipped_root

DEF = "rmsnorm_h4096"

ALT_SOLUTION = """\
name: torch_alt
definition: rmsnorm_h4096
author: tests
description: Destination-passing RMSNorm in torch (writes into a preallocated output).
language: python
entry_point: kernel.py::rmsnorm_into
sources: [kernel.py]
target_hardware: [cpu, cuda]
destination_passing_style: true
"""

ALT_KERNEL = """\
import torch


@torch.no_grad()
def rmsnorm_into(hidden_states, weight, output):
    x = hidden_states.float()
    y = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-5) * weight.float()
    output.copy_(y.to(output.dtype))
"""


@dataclass
class TempWorkspace:
    root: Path
    settings: Settings

    @property
    def device(self) -> str:
        return device_slug("cpu")

    def add_solution(self, name: str, manifest: str, sources: dict[str, str]) -> Path:
        folder = self.root / "solutions" / DEF / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "solution.yaml").write_text(manifest)
        for rel, text in sources.items():
            (folder / rel).write_text(text)
        return folder

    def record(self, solution: str, batch_size: int, median_us: float | None = None, *,
               status: str = "PASSED", device: str | None = None, digest: str | None = None,
               workload: str | None = None, spread: float = 0.05) -> None:
        from fibuild.compile.keys import solution_digest
        from fibuild.registry import Registry
        from fibuild.spec.model import Evaluation, LatencyStats
        from fibuild.spec.workspace import Workspace

        ws = Workspace(self.root)
        defn = ws.definition(DEF)
        sol = ws.solution(solution, DEF)
        latency = None
        if status == "PASSED":
            latency = LatencyStats(median_us, median_us * (1 - spread), median_us * (1 + spread), median_us, 50)
        Registry(ws.registry_dir).append(Evaluation(
            definition=DEF, solution=solution,
            solution_digest=digest if digest is not None else solution_digest(defn, sol),
            build_key="", workload_uuid=workload or f"{DEF}-batch_size{batch_size}",
            axes={"batch_size": batch_size}, status=status, device=device or self.device,
            latency=latency, timestamp="2026-01-02T03:04:05Z"))


def make_workspace(tmp_path) -> TempWorkspace:
    """defs/rmsnorm/rmsnorm_h4096.yaml, its torch_fp32 solution and a DPS torch_alt one."""
    src = shipped_root()
    root = tmp_path / "ws"
    (root / "defs" / "rmsnorm").mkdir(parents=True)
    shutil.copy(src / "defs" / "rmsnorm" / f"{DEF}.yaml", root / "defs" / "rmsnorm")
    shutil.copytree(src / "solutions" / DEF / "torch_fp32", root / "solutions" / DEF / "torch_fp32",
                    ignore=shutil.ignore_patterns("__pycache__"))
    settings = Settings.from_env({"FIBUILD_ROOT": str(root),
                                  "FIBUILD_CACHE_DIR": str(tmp_path / "cache"),
                                  "FIBUILD_DEVICE": "cpu"})
    ws = TempWorkspace(root, settings)
    ws.add_solution("torch_alt", ALT_SOLUTION, {"kernel.py": textwrap.dedent(ALT_KERNEL)})
    return ws


def reference_rmsnorm(x, w):
    import torch

    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5) * w.float()).to(x.dtype)


def inputs(batch: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4096, generator=g).to(torch.bfloat16)
    w = (torch.rand(4096, generator=g) + 0.5).to(torch.bfloat16)
    return x, w
