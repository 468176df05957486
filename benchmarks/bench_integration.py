"""Per-call cost of the serving integration, against the unpatched API in the same run.

Variants:
- ``apply, FlashInfer's own``: FIBUILD_APPLY with the definition resolving to its FlashInfer
  (or, for ``F.linear``, torch) solution: the patched function calls the original directly;
  the cost is the adapter's key + memo lookup (goal: ≤ 1 µs).
- ``apply, reference``: nothing evaluated, so fibuild's choice is the reference: again the
  original (same path, listed to show it).
- ``trace``: FIBUILD_TRACE, shape-only per call after the first (goal: ≤ 2 µs).

Two measures of each:
- ``layer``: exactly what the patch adds: the patched function built by the same code around
  a no-op in place of the original (decided as the real call is), against the no-op; the
  minimum over rounds of the mean over a batch of calls. No GPU work, so no queue noise.
- ``end to end``: the real call patched against unpatched, host time per call, blocks of
  calls alternated, median of the paired differences. Where the GPU is the bottleneck (a GEMM
  that takes longer than its launch) the host cost hides behind it, and the figure is noise.
- ``in a CUDA graph``: 64 patched calls captured and replayed vs 64 unpatched (goal: 0).
- ``.pth hook, unset``: executing the installed hook line with the variables unset.

Runs on the GPU with flashinfer-python, or on the CPU with a stand-in
(``--flashinfer-path tests/fixtures/flashinfer_stub``).

    python3 benchmarks/bench_integration.py --out benchmarks/results/integration-h200
    python3 benchmarks/bench_integration.py --device cpu --small \
        --flashinfer-path tests/fixtures/flashinfer_stub --out /tmp/integration      # CPU smoke
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PTH = REPO / "fibuild" / "integrations" / "fibuild_integrations.pth"


def _calls(device, small: bool):
    """name -> (definition, solution that is the API itself, axes of its record, adapter, args,
    callable running the API as currently patched on ``args``).

    ``small``: shapes no definition has (CPU smoke runs: the same memo-then-original path,
    without seconds of CPU GEMM per call)."""
    import flashinfer
    import torch

    from fibuild.integrations.adapters.functions import FusedAddRMSNorm, Linear, RMSNorm, SiluAndMul

    bf16 = torch.bfloat16
    h, i, n = (64, 32, 48) if small else (4096, 14336, 6144)
    x = torch.randn(1, h, dtype=bf16, device=device)
    r = torch.randn(1, h, dtype=bf16, device=device)
    w = torch.rand(h, dtype=bf16, device=device)
    gu = torch.randn(1, 2 * i, dtype=bf16, device=device)
    a16, b16 = torch.randn(1, h, dtype=torch.float16, device=device), torch.randn(n, h, dtype=torch.float16,
                                                                                   device=device)
    F = torch.nn.functional

    def call(args, fn):
        return lambda: fn()(*args)

    return {
        "flashinfer.norm.rmsnorm": ("rmsnorm_h4096", "flashinfer", {"batch_size": 1}, RMSNorm(), (x, w, 1e-5),
                                    call((x, w, 1e-5), lambda: flashinfer.norm.rmsnorm)),
        "flashinfer.norm.fused_add_rmsnorm": ("fused_add_rmsnorm_h4096", "flashinfer", {"batch_size": 1},
                                              FusedAddRMSNorm(), (x, r, w, 1e-5),
                                              call((x, r, w, 1e-5), lambda: flashinfer.norm.fused_add_rmsnorm)),
        "flashinfer.activation.silu_and_mul": ("silu_and_mul_i14336", "flashinfer", {"num_tokens": 1}, SiluAndMul(),
                                               (gu,), call((gu,), lambda: flashinfer.activation.silu_and_mul)),
        "torch.nn.functional.linear": ("gemm_n6144_k4096", "torch_matmul", {"M": 1}, Linear(), (a16, b16),
                                       call((a16, b16), lambda: F.linear)),
    }


def _layer_cost(adapter, args: tuple, n: int, rounds: int) -> float:
    """Seconds the active integration's patch adds per call of ``adapter``'s API on ``args``:
    the patched function built around a no-op original (decided as the real call is) minus
    the no-op, minimum over ``rounds`` means of ``n`` calls."""
    from fibuild.integrations.activation import active
    from fibuild.integrations.sites import patched_function

    def noop(*a, **k):
        return None

    patched = patched_function(active().session, adapter, noop)
    patched(*args)  # the decision
    best = {}
    for _ in range(rounds):
        for name, fn in (("noop", noop), ("patched", patched)):
            t0 = time.perf_counter()
            for _ in range(n):
                fn(*args)
            best[name] = min(best.get(name, 1.0), (time.perf_counter() - t0) / n)
    return best["patched"] - best["noop"]


def _record(root: Path, definition: str, solution: str, axes: dict, device: str) -> None:
    """A PASSED evaluation making ``solution`` fibuild's choice at ``axes`` on this device."""
    from fibuild.compile.keys import solution_digest
    from fibuild.devices import device_slug
    from fibuild.registry import Registry
    from fibuild.spec.model import Evaluation, LatencyStats
    from fibuild.spec.workspace import Workspace

    ws = Workspace(root)
    defn, sol = ws.definition(definition), ws.solution(solution, definition)
    Registry(ws.registry_dir).append(Evaluation(
        definition=definition, solution=solution, solution_digest=solution_digest(defn, sol), build_key="",
        workload_uuid=f"bench-integration-{definition}", axes=axes, status="PASSED", device=device_slug(device),
        latency=LatencyStats(1.0, 1.0, 1.0, 1.0, 1), timestamp="2099-01-01T00:00:00Z"))


def _per_call(fn, n: int, device) -> float:
    import torch

    for _ in range(50):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    elapsed = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.synchronize()
    return elapsed / n


def _graph_time(fn, device) -> float | None:
    """Seconds per replay of a graph of 64 calls (None off the GPU)."""
    import torch

    if device != "cuda":
        return None
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(64):
            fn()
    for _ in range(5):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(20):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _hook_cost() -> float:
    """Seconds to execute the .pth hook line with FIBUILD_TRACE/APPLY unset."""
    import os

    line = PTH.read_text().strip()
    code = compile(line, str(PTH), "exec")
    saved = {k: os.environ.pop(k) for k in ("FIBUILD_TRACE", "FIBUILD_APPLY") if k in os.environ}
    try:
        n = 200_000
        t0 = time.perf_counter()
        for _ in range(n):
            exec(code, {})
        return (time.perf_counter() - t0) / n
    finally:
        os.environ.update(saved)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--calls", type=int, default=20000, help="calls per round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--flashinfer-path", help="folder to put first on sys.path (a stand-in flashinfer)")
    p.add_argument("--out", default="integration-results")
    p.add_argument("--small", action="store_true", help="tiny shapes without definitions (CPU smoke runs)")
    args = p.parse_args(argv)
    if args.flashinfer_path:
        sys.path.insert(0, str(Path(args.flashinfer_path).resolve()))
    sys.path.insert(0, str(REPO))
    import torch

    import fibuild
    from fibuild.config import Settings

    torch.set_grad_enabled(False)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fibuild-bench-integration-"))
    own, ref = tmp / "own", tmp / "ref"
    for root in (own, ref):
        for part in ("defs", "solutions"):
            shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    calls = _calls(args.device, args.small)
    if not args.small:
        for definition, solution, axes, *_ in calls.values():
            _record(own, definition, solution, axes, args.device)
    env = {"FIBUILD_CACHE_DIR": str(tmp / "cache"), "FIBUILD_DEVICE": args.device}
    variants = {"apply, FlashInfer's own": dict(apply=True, root=own),
                "apply, reference": dict(apply=True, root=ref), "trace": dict(trace=True, root=tmp / "traced")}
    (tmp / "traced" / "defs").mkdir(parents=True)
    # end to end: per round and variant, a block unpatched then a block patched, paired
    paired: dict[str, dict[str, list[float]]] = {name: {v: [] for v in variants} for name in calls}
    base: dict[str, list[float]] = {name: [] for name in calls}
    layer: dict[str, dict[str, float]] = {name: {} for name in calls}
    graph: dict[str, dict[str, float | None]] = {name: {} for name in calls}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
        for variant, kwargs in variants.items():
            unpatched = {name: _per_call(c[-1], args.calls, args.device) for name, c in calls.items()}
            fibuild.enable(settings=Settings.from_env(env), per_key=1, flush_every=1 << 30, **kwargs)
            for name, (*_, adapter, call_args, fn) in calls.items():
                patched = _per_call(fn, args.calls, args.device)
                paired[name][variant].append(patched - unpatched[name])
                base[name].append(unpatched[name])
                if r == 0:
                    layer[name][variant] = _layer_cost(adapter, call_args, args.calls, max(3, args.rounds))
                    if variant == "apply, FlashInfer's own":
                        graph[name]["patched"] = _graph_time(fn, args.device)
            fibuild.disable()
        if r == 0:
            for name, c in calls.items():
                graph[name]["unpatched"] = _graph_time(c[-1], args.device)
    hook = _hook_cost()
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    rows = []
    for name in calls:
        row = {"api": name, "unpatched_us": statistics.median(base[name]) * 1e6}
        for variant in variants:
            row[f"{variant} layer_us"] = layer[name][variant] * 1e6
            row[f"{variant} end_to_end_us"] = statistics.median(paired[name][variant]) * 1e6
        g = graph[name]
        row["graph added_us_per_call"] = (None if g.get("patched") is None else
                                          (g["patched"] - g["unpatched"]) / 64 * 1e6)
        rows.append(row)
    lines = [f"# Serving integration overhead per call — {device}", "",
             f"Added host time per call. Layer: the patch around a no-op original against the no-op "
             f"(minimum of {max(3, args.rounds)} means of {args.calls} calls; what the patch itself costs). "
             f"End to end: the real call patched against unpatched, blocks of {args.calls} calls alternated, "
             f"median of {args.rounds} paired differences (GPU-queue noise included; a GPU-bound call hides the "
             "host cost).", "",
             "| API | unpatched µs | apply, FlashInfer's own: layer / end to end | apply, reference: layer / end "
             "to end | trace: layer / end to end | added in a CUDA graph (per call) |", "|---|---|---|---|---|---|"]
    for row in rows:
        gtxt = "n/a" if row["graph added_us_per_call"] is None else f"{row['graph added_us_per_call']:+.3f} µs"
        cells = " | ".join(f"{row[f'{v} layer_us']:+.2f} / {row[f'{v} end_to_end_us']:+.2f} µs" for v in variants)
        lines.append(f"| `{row['api']}` | {row['unpatched_us']:.2f} | {cells} | {gtxt} |")
    lines += ["", f"`.pth` hook at interpreter start with FIBUILD_TRACE/FIBUILD_APPLY unset: {hook * 1e9:.0f} ns.", ""]
    md = "\n".join(lines)
    (out_dir / "bench_integration.md").write_text(md)
    (out_dir / "bench_integration.json").write_text(json.dumps({"device": device, "rows": rows,
                                                                "hook_ns": hook * 1e9}, indent=2))
    print(md)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
