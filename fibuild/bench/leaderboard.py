"""The leaderboard of a definition on one device: data, JSON, rich table, PNG plot.

:func:`leaderboard` keeps the latest record per (solution, workload) and marks each
workload's winner: the PASSED solution with the lowest median latency. The variants of a
grid (``sol[K=v,...]``) are grouped under their solution: its cell is its best variant at
that workload, and the row says which. Rendering lives
here so the CLI stays thin; matplotlib is imported only by :func:`plot_leaderboard`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import BenchError
from ..registry import latest_per_workload
from ..spec.model import Definition, Evaluation
from ..spec.variants import family, split_name
from ..units import format_us

# Heavy or optional dependencies, imported inside the functions that use them: rich, matplotlib.

#: Short forms of failing statuses for table cells.
STATUS_SHORT = {"INCORRECT_SHAPE": "shape", "INCORRECT_NUMERICAL": "wrong", "INCORRECT_DTYPE": "dtype",
                "RUNTIME_ERROR": "crash", "COMPILE_ERROR": "no build", "TIMEOUT": "timeout"}


@dataclass
class LeaderboardRow:
    workload_uuid: str
    axes: dict[str, int]
    cells: dict[str, Evaluation] = field(default_factory=dict)
    winner: str | None = None
    #: grouped boards: solution -> the variant whose record is its cell (``sol[K=v,...]``)
    variants: dict[str, str] = field(default_factory=dict)

    @property
    def reference_us(self) -> float | None:
        refs = [e.reference_latency.median_us for e in self.cells.values() if e.reference_latency]
        return min(refs) if refs else None


@dataclass
class Leaderboard:
    definition: str
    device: str
    var_axes: tuple[str, ...]
    solutions: list[str]
    rows: list[LeaderboardRow]

    def wins(self) -> dict[str, int]:
        """Workloads won per solution."""
        counts = {s: 0 for s in self.solutions}
        for row in self.rows:
            if row.winner:
                counts[row.winner] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        def cell(ev: Evaluation) -> dict[str, Any]:
            lat = ev.latency
            return {"status": ev.status, "median_us": lat.median_us if lat else None,
                    "p20_us": lat.p20_us if lat else None, "p80_us": lat.p80_us if lat else None,
                    "speedup": ev.speedup, "max_abs_error": ev.max_abs_error,
                    "timestamp": ev.timestamp, "build_key": ev.build_key}

        return {"definition": self.definition, "device": self.device, "var_axes": list(self.var_axes),
                "solutions": self.solutions, "wins": self.wins(),
                "rows": [{"workload": r.workload_uuid, "axes": r.axes, "winner": r.winner,
                          "reference_us": r.reference_us, "variants": dict(sorted(r.variants.items())),
                          "cells": {s: cell(e) for s, e in sorted(r.cells.items())}} for r in self.rows]}


def _better(a: Evaluation, b: Evaluation) -> bool:
    """Whether ``a`` is a better cell than ``b``: PASSED over not, then the lower median."""
    rank = lambda e: (e.status != "PASSED" or e.latency is None,  # noqa: E731
                      e.latency.median_us if e.latency else math.inf, e.solution)
    return rank(a) < rank(b)


def leaderboard(defn: Definition, device: str, evaluations: Iterable[Evaluation], *,
                group_variants: bool = True) -> Leaderboard:
    """Rows per workload (sorted by var-axis values), one cell per solution, latest record
    wins; with ``group_variants`` a grid's variants share their solution's cell (the best)."""
    latest = latest_per_workload(e for e in evaluations if e.definition == defn.name)
    rows: dict[str, LeaderboardRow] = {}
    names = set()
    for (solution, uuid), ev in latest.items():
        row = rows.setdefault(uuid, LeaderboardRow(uuid, dict(ev.axes)))
        column = family(solution) if group_variants else solution
        names.add(column)
        kept = row.cells.get(column)
        if kept is None or _better(ev, kept):
            row.cells[column] = ev
            if column != solution:
                row.variants[column] = solution
    for row in rows.values():
        passed = [(e.latency.median_us, s) for s, e in row.cells.items() if e.status == "PASSED" and e.latency]
        row.winner = min(passed)[1] if passed else None
    var_axes = defn.var_axes

    def order(row: LeaderboardRow):
        return tuple(row.axes.get(a, -1) for a in var_axes) + (row.workload_uuid,)

    return Leaderboard(defn.name, device, var_axes, sorted(names), sorted(rows.values(), key=order))


def cell_text(ev: Evaluation | None) -> str:
    """``12.3 µs`` for a pass, the short status otherwise; ``-`` when not evaluated."""
    if ev is None:
        return "-"
    if ev.status == "PASSED" and ev.latency:
        return format_us(ev.latency.median_us)
    return STATUS_SHORT.get(ev.status, ev.status)


def rich_table(board: Leaderboard):
    """The leaderboard as a rich Table; the winner's cell is bold green with a ``*``."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{board.definition} on {board.device}", title_justify="left")
    # The row label names the axes once, in the header, and keeps its values whole (never
    # folded or cut): at 80 columns the solution columns narrow instead.
    shown_axes = [a for a in board.var_axes if any(a in row.axes for row in board.rows)]
    table.add_column(",\n".join(shown_axes) or "workload", no_wrap=True,
                     min_width=max([len(_row_label(r, shown_axes)) for r in board.rows] + [1]))
    table.add_column("reference", justify="right", style="dim", overflow="fold")
    for sol in board.solutions:
        table.add_column(sol, justify="right", overflow="fold")  # a folded name stays whole
    for row in board.rows:
        label = _row_label(row, shown_axes)
        cells = []
        for sol in board.solutions:
            ev = row.cells.get(sol)
            text = cell_text(ev)
            if sol in row.variants:  # the variant behind a grouped cell, on a line of its own
                text += f"\n[dim]{escape(split_name(row.variants[sol])[1] or '')}[/]"
            if sol == row.winner:
                text = Text(f"* {text}", style="bold green")
            elif ev is not None and ev.status != "PASSED":
                text = Text(text, style="red")
            cells.append(text)
        table.add_row(label, format_us(row.reference_us), *cells)
    wins = board.wins()
    table.caption = "* fastest PASSED per workload; wins: " + ", ".join(
        f"{s} {n}" for s, n in sorted(wins.items(), key=lambda kv: (-kv[1], kv[0])))
    return table


def _row_label(row: LeaderboardRow, axes: Sequence[str]) -> str:
    """The row's var-axis values (``32`` or ``8, 1024``), else its workload uuid."""
    return ", ".join(str(row.axes[a]) for a in axes if a in row.axes) or row.workload_uuid


def plot_axis(board: Leaderboard) -> str:
    """The var axis to plot against: the first whose value varies over the rows."""
    for axis in board.var_axes:
        if len({r.axes.get(axis) for r in board.rows}) > 1:
            return axis
    if board.var_axes:
        return board.var_axes[0]
    raise BenchError(f"{board.definition} has no var axis to plot against")


def plot_leaderboard(board: Leaderboard, out: str | Path) -> Path:
    """Median latency (p20..p80 band) vs the var axis, log-log, one line per solution (a
    grouped grid: its best variant at each point) and one for the reference; written as
    PNG to ``out``. BenchError when matplotlib is missing or nothing PASSED."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install 'fibuild[plot]'") from None
    axis = plot_axis(board)
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = 0
    for sol in board.solutions:
        points = sorted((r.axes[axis], r.cells[sol].latency) for r in board.rows
                        if sol in r.cells and r.cells[sol].status == "PASSED" and r.cells[sol].latency
                        and r.axes.get(axis, 0) > 0)
        if not points:
            continue
        xs = [p[0] for p in points]
        line, = ax.plot(xs, [p[1].median_us for p in points], marker="o", label=sol)
        ax.fill_between(xs, [p[1].p20_us for p in points], [p[1].p80_us for p in points],
                        color=line.get_color(), alpha=0.15)
        drawn += 1
    refs = sorted((r.axes[axis], r.reference_us) for r in board.rows
                  if r.reference_us and r.axes.get(axis, 0) > 0)
    if refs:
        ax.plot([p[0] for p in refs], [p[1] for p in refs], linestyle="--", color="gray", label="reference")
    if not drawn:
        plt.close(fig)
        raise BenchError(f"nothing to plot: no PASSED evaluation of {board.definition} on {board.device}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(axis)
    ax.set_ylabel("median latency (µs)")
    ax.set_title(f"{board.definition} on {board.device}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def summary_rows(evaluations: Sequence[Evaluation]) -> list[dict[str, Any]]:
    """Per (definition, solution): counts by status and the geometric-mean speedup."""
    groups: dict[tuple[str, str], list[Evaluation]] = {}
    for ev in evaluations:
        groups.setdefault((ev.definition, ev.solution), []).append(ev)
    rows = []
    for (definition, solution), evs in sorted(groups.items()):
        counts: dict[str, int] = {}
        for ev in evs:
            counts[ev.status] = counts.get(ev.status, 0) + 1
        speedups = [ev.speedup for ev in evs if ev.speedup]
        geo = math.exp(sum(math.log(s) for s in speedups) / len(speedups)) if speedups else None
        rows.append({"definition": definition, "solution": solution, "counts": counts, "speedup": geo,
                     "error": next((ev.error for ev in evs if ev.status != "PASSED" and ev.error), "")})
    return rows
