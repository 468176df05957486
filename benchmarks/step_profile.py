"""Where the time of a captured decode step goes, from a torch profiler trace of its replays.

``profile_replays(replay, before, replays)`` runs ``before(); replay()`` ``replays`` times under
``torch.profiler`` (CUDA activity: the kernels inside a CUDA graph's replay are recorded one by
one) and returns, per step: the span from the first kernel's start to the last one's end, the
time some kernel was running (the union of their intervals), the gaps (span - busy: launch,
ramp-up and drain bubbles between kernels) and the overlap (sum of kernel durations - busy:
kernels running at once, as dependent launch allows; a PDL kernel's duration includes the time
it spent waiting for its predecessor), and per kernel name its launches and µs per step.
``markdown(summary)`` renders it. Used by ``serving_step.py --profile``.
"""
from __future__ import annotations

import re
from collections import defaultdict

#: Kernel-name patterns -> the step's operations, first match wins (names are lower-cased).
KINDS = [
    ("norm", r"rmsnorm|rms_norm|_row\b|norm"),
    ("gemm", r"_stream_dot|_stream_fma|gemm|gemv|nvjet|sm90_xmma|cutlass|cublas|matmul"),
    ("attention", r"decode|prefill|attention|_merge_chunks|merge_state"),
    ("silu_and_mul", r"silu|act_and_mul"),
    ("rope", r"rotary|rope"),
    ("kv_write", r"index|scatter|store_rows|reshape_and_cache|store_cache"),
    ("copy", r"copy|contiguous|elementwise|clone"),
]


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, low):
            return kind
    return "other"


def profile_replays(replay, before, replays: int = 3) -> dict:
    """Profile ``replays`` steps (``before()`` then ``replay()`` each); a summary per step."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            before()
            replay()
        torch.cuda.synchronize()
    return summarize([(e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                      if e.device_type == DeviceType.CUDA and not e.name.startswith(("Memcpy", "Memset"))],
                     replays)


def summarize(kernels: list, replays: int) -> dict:
    """The summary of ``(start µs, end µs, name)`` kernel intervals recorded over ``replays`` steps."""
    kernels = sorted(kernels, key=lambda k: k[0])
    if not kernels:
        return {"kernels": 0}
    busy, cur_start, cur_end = 0.0, None, None
    for start, end, _ in kernels:
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                busy += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    busy += cur_end - cur_start
    total = sum(end - start for start, end, _ in kernels)
    # the span of each replay: between the plan's copies the GPU idles; count only kernels
    span = sum(_spans(kernels, replays))
    per_name: dict[str, list] = defaultdict(lambda: [0, 0.0])
    per_kind: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for start, end, name in kernels:
        per_name[name][0] += 1
        per_name[name][1] += end - start
        per_kind[kind_of(name)][0] += 1
        per_kind[kind_of(name)][1] += end - start
    return {
        "kernels": len(kernels) / replays, "span_us": span / replays, "busy_us": busy / replays,
        "gaps_us": (span - busy) / replays, "overlap_us": (total - busy) / replays,
        "kernel_sum_us": total / replays,
        "by_kind": {k: {"launches": n / replays, "us": us / replays} for k, (n, us) in
                    sorted(per_kind.items(), key=lambda kv: -kv[1][1])},
        "by_name": [{"name": name, "kind": kind_of(name), "launches": n / replays, "us": us / replays}
                    for name, (n, us) in sorted(per_name.items(), key=lambda kv: -kv[1][1])],
    }


def _spans(kernels, replays: int) -> list[float]:
    """First start to last end of each replay: the kernels split at the ``replays - 1`` widest gaps."""
    gaps = sorted(range(1, len(kernels)), key=lambda i: kernels[i][0] - kernels[i - 1][1], reverse=True)
    cuts = sorted(gaps[:replays - 1])
    spans, first = [], 0
    for cut in cuts + [len(kernels)]:
        group = kernels[first:cut]
        spans.append(max(e for _, e, _ in group) - group[0][0])
        first = cut
    return spans


def markdown(title: str, s: dict, step_us: float, layers: int, top: int = 20) -> str:
    """The summary as a Markdown section: totals, per operation (per layer too), top kernels."""
    if not s.get("kernels"):
        return f"## {title}\n\nno kernels recorded\n"
    lines = [f"## {title}", "",
             f"Step (CUDA events, median): {step_us:.1f} µs. In the trace, per step: {s['kernels']:.0f} kernels, "
             f"span {s['span_us']:.1f} µs, some kernel running {s['busy_us']:.1f} µs, gaps {s['gaps_us']:.1f} µs "
             f"({100 * s['gaps_us'] / max(s['span_us'], 1e-9):.1f} %), kernels overlapping {s['overlap_us']:.1f} µs.",
             "", "| operation | launches per step | µs per step | µs per layer | share of busy |",
             "|---|---|---|---|---|"]
    for kind, row in s["by_kind"].items():
        lines.append(f"| {kind} | {row['launches']:.0f} | {row['us']:.1f} | {row['us'] / layers:.2f} | "
                     f"{100 * row['us'] / max(s['busy_us'], 1e-9):.1f} % |")
    lines += ["", "| kernel | operation | launches per step | µs per step | µs per launch |", "|---|---|---|---|---|"]
    for row in s["by_name"][:top]:
        name = row["name"] if len(row["name"]) <= 90 else row["name"][:87] + "..."
        lines.append(f"| `{name.replace('|', '/')}` | {row['kind']} | {row['launches']:.0f} | {row['us']:.1f} | "
                     f"{row['us'] / max(row['launches'], 1e-9):.2f} |")
    return "\n".join(lines) + "\n"
