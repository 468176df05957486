"""How fibuild writes times for people: one format everywhere (tables, traces, progress)."""
from __future__ import annotations


def format_us(value: float | None) -> str:
    """A latency in µs as people read it: ``4.77 µs``, ``41.2 µs``, ``1.23 ms``; ``-`` for None."""
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} ms"
    return f"{value:.1f} µs" if value >= 10 else f"{value:.2f} µs"
