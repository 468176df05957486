"""Per-call host cost of taking a torch operator at the dispatcher (vLLM's ``_C`` ops), eager.

fibuild takes vLLM's ``_C::rms_norm`` / ``fused_add_rms_norm`` / ``silu_and_mul`` with a
Python kernel at the ``BackendSelect`` key (``fibuild/integrations/op_overrides.py``). Inside
a CUDA graph (vLLM's default decode) that kernel ran once, at capture, and costs nothing at
replay; in eager mode (``--enforce-eager``) every call pays it. This measures, against the
operator alone in the same run (the vLLM stand-in's ops: vLLM is not installed here):

- ``apply, original``: FIBUILD_APPLY with nothing better than vLLM's kernel (no evaluation):
  the dispatcher hop, the memo lookup, the redispatch to the operator's own kernel;
- ``trace``: FIBUILD_TRACE after the first call of the shape (the same, plus a counter);
- ``in a CUDA graph``: 64 calls captured and replayed, overridden vs not (goal: 0).

Blocks of calls alternated, median of the paired differences.

    python3 benchmarks/bench_op_override.py --out $OUT/op-override          # GPU
    python3 benchmarks/bench_op_override.py --device cpu --out /tmp/op       # CPU smoke
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_integration import _graph_time, _per_call  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--calls", type=int, default=5000, help="calls per block")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default="op-override-results")
    args = p.parse_args(argv)
    sys.path[:0] = [str(REPO), str(REPO / "tests" / "fixtures" / "vllm_stub")]
    import torch
    import vllm._C_stable_libtorch  # noqa: F401 - defines the _C ops

    import fibuild
    from fibuild.config import Settings

    torch.set_grad_enabled(False)
    bf16, dev = torch.bfloat16, args.device
    x, r = torch.randn(1, 4096, dtype=bf16, device=dev), torch.randn(1, 4096, dtype=bf16, device=dev)
    w, gu = torch.rand(4096, dtype=bf16, device=dev), torch.randn(1, 28672, dtype=bf16, device=dev)
    out, act = torch.empty_like(x), torch.empty(1, 14336, dtype=bf16, device=dev)
    calls = {"_C::rms_norm": lambda: torch.ops._C.rms_norm(out, x, w, 1e-5),
             "_C::fused_add_rms_norm": lambda: torch.ops._C.fused_add_rms_norm(x, r, w, 1e-5),
             "_C::silu_and_mul": lambda: torch.ops._C.silu_and_mul(act, gu)}
    tmp = Path(tempfile.mkdtemp(prefix="fibuild-bench-op-override-"))
    (tmp / "defs").mkdir()
    env = {"FIBUILD_CACHE_DIR": str(tmp / "cache"), "FIBUILD_DEVICE": dev}
    variants = {"apply, original": dict(apply=True), "trace": dict(trace=True)}
    paired = {name: {v: [] for v in variants} for name in calls}
    base = {name: [] for name in calls}
    graph = {}
    for rnd in range(args.rounds):
        print(f"round {rnd + 1}/{args.rounds}", file=sys.stderr, flush=True)
        for variant, kwargs in variants.items():
            plain = {name: _per_call(fn, args.calls, dev) for name, fn in calls.items()}
            fibuild.enable(settings=Settings.from_env(env), root=tmp, per_key=1, flush_every=1 << 30, **kwargs)
            for name, fn in calls.items():
                paired[name][variant].append(_per_call(fn, args.calls, dev) - plain[name])
                base[name].append(plain[name])
                if rnd == 0 and variant == "apply, original":
                    graph[name] = _graph_time(fn, dev)
            fibuild.disable()
    device = torch.cuda.get_device_name() if dev == "cuda" else "CPU"
    rows = []
    for name, fn in calls.items():
        unpatched_graph = _graph_time(fn, dev)
        rows.append({"op": name, "alone_us": statistics.median(base[name]) * 1e6,
                     **{f"{v} added_us": statistics.median(paired[name][v]) * 1e6 for v in variants},
                     "graph added_us_per_call": None if graph[name] is None else
                     (graph[name] - unpatched_graph) / 64 * 1e6})
    lines = [f"# Dispatcher override of vLLM's _C ops, added host time per call — {device}", "",
             "The operators are the vLLM stand-in's (torch kernels), so `alone` is not vLLM's kernel time; "
             "the added time is what fibuild's dispatcher hop costs per eager call.", "",
             "| op | alone µs | apply, original: added µs | trace: added µs | added in a CUDA graph (per call) |",
             "|---|---|---|---|---|"]
    for row in rows:
        g = row["graph added_us_per_call"]
        lines.append(f"| `{row['op']}` | {row['alone_us']:.2f} | {row['apply, original added_us']:+.2f} | "
                     f"{row['trace added_us']:+.2f} | {'n/a' if g is None else f'{g:+.3f} µs'} |")
    md = "\n".join(lines) + "\n"
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_op_override.md").write_text(md)
    (out_dir / "bench_op_override.json").write_text(json.dumps({"device": device, "rows": rows}, indent=2))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
