"""Host time per call of RMSNorm (``rmsnorm_h4096``) at small batch: what an eager caller pays
for fibuild's resolved kernel, against FlashInfer's ``flashinfer.norm.rmsnorm``, on a CUDA host.

In a temporary copy of the rmsnorm workspace (empty registry; the build cache is shared):

1. ``fibuild bench rmsnorm_h4096`` on the first ``--workloads`` workloads (batch 1, 7...):
   records each solution's GPU time and host time per call (evaluation schema 2);
2. per batch, for FlashInfer called directly, every solution called directly (its built
   entry, as the bench worker calls it) and ``fibuild.load(..., mode=eager|graph)``:
   - ``host``: host µs per call, each call timed alone while the GPU is kept busy
     (:func:`fibuild.bench.timing.time_host`, the method the records use);
   - ``loop``: µs per call of 2000 back-to-back calls, then one synchronize: the eager
     caller's real rate, whichever of host and GPU limits it;
   - ``gpu``: µs per call from CUDA events (:func:`fibuild.bench.timing.time_cuda`);
3. the eager and graph resolutions of each batch from step 1's records, with their verdict.

    python3 benchmarks/bench_host_time.py --out benchmarks/results/host-time-h200.md [--json x.json]

Done when: the eager-resolved kernel's host (and loop) time is at most FlashInfer's, or the
eager resolution picks FlashInfer. Needs CUDA and flashinfer-python; exits 2 without them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

DEF = "rmsnorm_h4096"
REPO = Path(__file__).resolve().parents[1]
LOOP_CALLS = 2000


def make_workspace(root: Path) -> None:
    (root / "defs" / "rmsnorm").mkdir(parents=True)
    shutil.copy(REPO / "defs" / "rmsnorm" / f"{DEF}.yaml", root / "defs" / "rmsnorm")
    shutil.copytree(REPO / "solutions" / DEF, root / "solutions" / DEF,
                    ignore=shutil.ignore_patterns("__pycache__"))
    # the shared sources the solutions name (libraries:)
    shutil.copytree(REPO / "solutions" / "_lib", root / "solutions" / "_lib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "registry").mkdir()


def bench(root: Path, workloads: int) -> None:
    cmd = [sys.executable, "-m", "fibuild", "--root", str(root), "bench", DEF, "--device", "cuda",
           "--workload-limit", str(workloads), "--allow-failures"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "FIBUILD_ROOT": str(root)})


def loop_us(fn, args, torch) -> float:
    """µs per call of LOOP_CALLS back-to-back calls, synchronized once at the end (median of 3)."""
    rounds = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(LOOP_CALLS):
            fn(*args)
        torch.cuda.synchronize()
        rounds.append((time.perf_counter() - t0) / LOOP_CALLS * 1e6)
    return statistics.median(rounds)


def measure(name: str, fn, arg_sets, torch, timing) -> dict:
    fn(*arg_sets[0])
    torch.cuda.synchronize()
    host = timing.time_host(fn, arg_sets, device="cuda", rep_ms=200)
    gpu = timing.time_cuda(fn, arg_sets, warmup_ms=25, rep_ms=100)
    row = {"variant": name, "host_us": host.median_us, "host_q1_us": host.q1_us, "host_q3_us": host.q3_us,
           "gpu_us": gpu.stats.median_us, "loop_us": loop_us(fn, arg_sets[0], torch)}
    print(f"  {name:<34} host {row['host_us']:7.2f}  gpu {row['gpu_us']:7.2f}  loop {row['loop_us']:7.2f} µs",
          flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=int, default=2, help="first N declared workloads (default 2: "
                        "batch 1 and 7)")
    parser.add_argument("--no-bench", action="store_true", help="skip step 1 (resolutions then rest on the "
                        "baseline)")
    parser.add_argument("--out", type=Path, help="markdown table")
    parser.add_argument("--json", type=Path, help="raw numbers")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    try:
        import flashinfer
    except ImportError:
        print("needs flashinfer-python", file=sys.stderr)
        return 2
    import fibuild
    from fibuild.bench import timing
    from fibuild.compile.cache import BuildCache
    from fibuild.config import Settings
    from fibuild.devices import Device
    from fibuild.errors import BuildError
    from fibuild.spec.workspace import Workspace

    tmp = Path(tempfile.mkdtemp(prefix="fibuild-host-time-"))
    root = tmp / "ws"
    make_workspace(root)
    if not args.no_bench:
        bench(root, args.workloads)
    os.environ["FIBUILD_ROOT"] = str(root)
    settings = Settings.from_env()
    ws = Workspace(root)
    defn = ws.definition(DEF)
    cache = BuildCache(settings)
    entries = {}
    gpu = Device.parse("cuda")
    for sol in ws.solutions(DEF):
        if gpu.mismatch(sol.target_hardware):
            continue
        try:
            entries[sol.name] = cache.get_or_build(defn, sol).call
        except BuildError as exc:
            print(f"  skip {sol.name}: {str(exc).splitlines()[0]}")
    kernels = {mode: fibuild.load(DEF, settings=settings, device="cuda", mode=mode) for mode in ("eager", "graph")}
    device_name = torch.cuda.get_device_name()
    rows, resolutions = [], {}
    for wl in defn.workloads[:args.workloads]:
        batch = wl.axes["batch_size"]
        print(f"batch {batch}", flush=True)
        g = torch.Generator(device="cuda").manual_seed(batch)
        arg_sets = [(torch.randn(batch, 4096, device="cuda", generator=g).to(torch.bfloat16),
                     (torch.rand(4096, device="cuda", generator=g) + 0.5).to(torch.bfloat16)) for _ in range(4)]
        variants = [("flashinfer.norm.rmsnorm (direct)",
                     lambda x, w: flashinfer.norm.rmsnorm(x, w, eps=1e-5))]
        variants += [(f"{name} (built entry)", fn) for name, fn in sorted(entries.items())]
        for mode, kernel in kernels.items():
            res = kernel.explain(batch_size=batch)
            resolutions[f"{batch}/{mode}"] = {"solution": res.solution_name, "policy": res.policy,
                                              "verdict": res.verdict, "explain": res.explain()}
            variants.append((f"fibuild.load mode={mode} -> {res.solution_name}", kernel))
        for name, fn in variants:
            rows.append({"batch": batch, **measure(name, fn, arg_sets, torch, timing)})
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Host time per call: {DEF} on {device_name}", "",
             f"`benchmarks/bench_host_time.py` ({stamp}; torch {torch.__version__}, flashinfer "
             f"{getattr(flashinfer, '__version__', '?')}). host: each call timed alone with the GPU kept "
             f"busy (median, q1..q3); gpu: CUDA events (L2 flushed); loop: {LOOP_CALLS} back-to-back calls "
             "then one synchronize (the eager caller's rate). µs per call.", "",
             "| batch | variant | host µs (q1..q3) | gpu µs | loop µs | max(host, gpu) |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        spread = f"{r['host_q1_us']:.2f}..{r['host_q3_us']:.2f}"
        lines.append(f"| {r['batch']} | {r['variant']} | {r['host_us']:.2f} ({spread}) | {r['gpu_us']:.2f} "
                     f"| {r['loop_us']:.2f} | {max(r['host_us'], r['gpu_us']):.2f} |")
    lines += ["", "Resolutions from this run's records:", ""]
    for key, r in resolutions.items():
        lines.append(f"- batch {key.replace('/', ', mode ')}: **{r['solution']}** (policy {r['policy']}, "
                     f"verdict {r['verdict']})")
    for key, r in resolutions.items():
        lines += ["", f"```\n{r['explain']}\n```"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "resolutions": resolutions, "device": device_name}, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
