"""Host time per eager call of an RMSNorm at batch 1: fibuild's Triton solution launched through
its compiled handle (``fibuild.compile.launch``), the same kernel through the ``@triton.jit``
launcher, FlashInfer's ``norm.rmsnorm`` (with and without ``enable_pdl``), and ``fibuild.load``'s
dispatch of the definition to the same solution.

Host time is measured with the GPU kept busy (``torch.cuda._sleep`` queued first), so the
loop's wall time is what the host spends issuing the calls, not what the GPU spends running
them. Median of ``--repeats`` loops of ``--calls`` calls each.

    python3 benchmarks/launch_cost.py --out benchmarks/results/launch-cost-h200.md   # on a GPU
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def host_us(fn, calls: int, repeats: int) -> float:
    """Median host microseconds per ``fn()`` over ``repeats`` loops of ``calls``, the GPU busy."""
    import torch

    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(repeats):
        torch.cuda._sleep(50_000_000)  # ~25 ms of GPU time: the queue never drains during the loop
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        per_call.append((time.perf_counter() - t0) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(per_call)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--calls", type=int, default=400)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", help="Markdown file for the table (a .json beside it)")
    args = p.parse_args(argv)

    import torch

    from fibuild.compile.cache import BuildCache
    from fibuild.config import Settings
    from fibuild.spec.workspace import Workspace, shipped_root

    settings = Settings.from_env()
    ws = Workspace(settings.root or shipped_root())
    defn = ws.definition("rmsnorm_h4096")
    loaded = BuildCache(settings).get_or_build(defn, ws.solution("rmsnorm_h4096/triton_row"))
    module = sys.modules[loaded.entry.__module__]
    x = torch.randn(args.batch, 4096, device="cuda").to(torch.bfloat16)
    w = torch.randn(4096, device="cuda").to(torch.bfloat16)
    out = torch.empty_like(x)
    grid = (args.batch,)
    bound = module._ROW_4096
    pdl = bound.owner.pdl and torch.cuda.get_device_capability()[0] >= 9
    jit_kw = {"HIDDEN": 4096, "num_warps": 8, "PDL": pdl, **({"launch_pdl": True} if pdl else {})}
    rows = {
        "Triton kernel, compiled handle (fibuild launch)": lambda: bound(grid, x, w, out, module.EPS),
        "Triton kernel, @triton.jit launcher": lambda: module._rmsnorm_row[grid](x, w, out, module.EPS, **jit_kw),
        "Triton kernel, compiled handle, output allocated per call":
            lambda: bound(grid, x, w, torch.empty_like(x), module.EPS),
        "fibuild solution entry (checks, output allocation, launch)": lambda: loaded.entry(x, w),
    }
    try:
        import flashinfer

        rows["FlashInfer norm.rmsnorm"] = lambda: flashinfer.norm.rmsnorm(x, w, 1e-5, out=out)
        rows["FlashInfer norm.rmsnorm, enable_pdl=True"] = lambda: flashinfer.norm.rmsnorm(
            x, w, 1e-5, out=out, enable_pdl=True)
        # as the baseline solution and the engines call it: FlashInfer allocates the output
        rows["FlashInfer norm.rmsnorm, output allocated per call"] = lambda: flashinfer.norm.rmsnorm(x, w, 1e-5)
    except ImportError:
        print("flashinfer is not installed: its rows are left out", file=sys.stderr)
    import fibuild

    kernel = fibuild.load("rmsnorm_h4096")
    kernel(x, w)  # resolve the key once
    chosen = fibuild.resolve("rmsnorm_h4096", {"batch_size": args.batch}).solution_name
    rows[f"fibuild.load dispatch (resolves to {chosen})"] = lambda: kernel(x, w)
    results = {}
    for name, fn in rows.items():
        results[name] = host_us(fn, args.calls, args.repeats)
        print(f"{results[name]:8.2f} µs  {name}", flush=True)
    device = torch.cuda.get_device_name()
    md = [f"# Host time per eager RMSNorm call, batch {args.batch} — {device}", "",
          f"PDL launch of fibuild's kernel: {'on' if pdl else 'off'}. Median of {args.repeats} loops of "
          f"{args.calls} calls, the GPU kept busy so the loop measures the host alone "
          "(`benchmarks/launch_cost.py`).", "", "| call | host µs per call |", "|---|---|"]
    md += [f"| {name} | {us:.2f} |" for name, us in results.items()]
    text = "\n".join(md) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps({"device": device, "batch": args.batch,
                                                                   "pdl": pdl, "host_us": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
