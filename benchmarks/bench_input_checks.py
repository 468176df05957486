"""Cost of the dispatch input checks per call, by what the solution is.

``fibuild.load`` puts one generated check in front of each key's solution
(:func:`fibuild.runtime.input_checks.guarded`). For native and Triton solutions, which read
their tensors' memory, it also refuses negative views (one ``is_neg()`` per tensor input);
Python solutions (torch code resolves them) skip that. This times, side by side on the same
tensors (rmsnorm_h4096: two tensor inputs):

- ``bare``: a no-op function called directly;
- ``checked, python``: the check a Python solution gets, then the no-op;
- ``checked, native/triton``: the check a native or Triton solution gets, then the no-op.

    python3 benchmarks/bench_input_checks.py [--device cpu|cuda] [--out results.md]

Each figure is the median over interleaved rounds of the mean µs per call.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(device: str, calls: int, rounds: int) -> dict[str, float]:
    import torch

    from fibuild.errors import InputError
    from fibuild.runtime.input_checks import guarded
    from fibuild.spec.workspace import Workspace, shipped_root

    defn = Workspace(shipped_root()).definition("rmsnorm_h4096")
    x = torch.randn(1, 4096, device=device).to(torch.bfloat16)
    w = torch.randn(4096, device=device).to(torch.bfloat16)

    def noop(a, b):
        return a

    cuda = device.startswith("cuda")
    variants = {
        "bare": noop,
        "checked, python": guarded(defn, (1,), noop, cuda=cuda, on_mismatch=lambda a: InputError("x"),
                                   reads_memory=False),
        "checked, native/triton": guarded(defn, (1,), noop, cuda=cuda, on_mismatch=lambda a: InputError("x"),
                                          reads_memory=True),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            samples[name].append(timeit.timeit(lambda fn=fn: fn(x, w), number=calls) / calls * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--out", type=Path, help="write the Markdown results here")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    results = measure(args.device, args.calls, args.rounds)
    bare = results["bare"]
    lines = [f"Input checks per call (rmsnorm_h4096, 2 tensor inputs), {args.device}, "
             f"{platform.processor() or platform.machine()}, python {platform.python_version()}; "
             f"`python3 benchmarks/bench_input_checks.py --device {args.device} --calls {args.calls} "
             f"--rounds {args.rounds}`.", "",
             "| variant | µs per call | added vs bare (µs) |", "|---|---:|---:|"]
    lines += [f"| {name} | {value:.3f} | {value - bare:+.3f} |" for name, value in results.items()]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
