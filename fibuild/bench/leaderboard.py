"""The leaderboard of a definition on one device: data, JSON, rich table, PNG plot.

:func:`leaderboard` keeps the latest record per (solution, workload). It does not rank: the
caller passes ``choose(axes) -> (solution or None, verdict or None)``, which ``fibuild table``
answers with the resolver itself, so the starred cell is what ``fibuild resolve`` picks. Each
cell shows the cost per call in the table's mode and its spread (interquartile range over
median); a spread over :data:`fibuild.bench.compare.NOISY_SPREAD` is flagged. The variants of a
grid (``sol[K=v,...]``) are grouped under their solution: its cell is the variant resolution
picks there, else its best by median, and the row says which. Given the solutions' current
digests, a record of an older version is marked stale (resolution does not use it; the
baseline keeps its keys until it is measured again) and left out of the plot. Rendering lives
here so the CLI stays thin; matplotlib is imported only by :func:`plot_leaderboard`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import BenchError
from ..registry import latest_per_workload
from ..spec.model import Definition, Evaluation, LatencyStats
from ..spec.variants import family, split_name
from ..units import format_us
from .compare import EAGER, NOISY_SPREAD, caller_cost, noisy, relative_spread

# Heavy or optional dependencies, imported inside the functions that use them: rich, matplotlib.

#: Short forms of failing statuses for table cells.
STATUS_SHORT = {"INCORRECT_SHAPE": "shape", "INCORRECT_NUMERICAL": "wrong", "INCORRECT_DTYPE": "dtype",
                "RUNTIME_ERROR": "crash", "COMPILE_ERROR": "no build", "TIMEOUT": "timeout"}


@dataclass
class LeaderboardRow:
    """One workload: its records by solution, the solution resolution picks for its key
    (``winner``, possibly ``reference``) and how firm that pick is (``verdict``)."""

    workload_uuid: str
    axes: dict[str, int]
    cells: dict[str, Evaluation] = field(default_factory=dict)
    winner: str | None = None
    verdict: str | None = None
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
    mode: str = EAGER
    #: solution (or variant) -> its current digest; empty: staleness unknown
    current: Mapping[str, str] = field(default_factory=dict)

    def stale(self, ev: Evaluation | None) -> bool:
        """Whether ``ev`` is a record of an older version of its solution."""
        return ev is not None and is_stale(ev, self.current)

    def has_stale(self) -> bool:
        """Whether some cell shows a record of an older version."""
        return any(self.stale(ev) for row in self.rows for ev in row.cells.values())

    def cost(self, ev: Evaluation | None) -> LatencyStats | None:
        """The cost per call of a PASSED record in the board's mode (None otherwise)."""
        if ev is None or ev.status != "PASSED" or ev.latency is None:
            return None
        return caller_cost(ev.latency, ev.host_latency, self.mode)

    def reference_cost(self, row: LeaderboardRow) -> LatencyStats | None:
        """The reference's cost in the row (from the first record that carries it)."""
        ev = next((e for e in row.cells.values() if e.reference_latency), None)
        return caller_cost(ev.reference_latency, ev.reference_host_latency, self.mode) if ev else None

    def wins(self) -> dict[str, int]:
        """Workloads each solution (or ``reference``) is chosen for."""
        counts = {s: 0 for s in self.solutions}
        for row in self.rows:
            if row.winner:
                counts[row.winner] = counts.get(row.winner, 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        def cell(ev: Evaluation) -> dict[str, Any]:
            lat, cost = ev.latency, self.cost(ev)
            host = ev.host_latency
            return {"status": ev.status, "median_us": lat.median_us if lat else None,
                    "p20_us": lat.p20_us if lat else None, "p80_us": lat.p80_us if lat else None,
                    "host_median_us": host.median_us if host else None,
                    "cost_us": cost.median_us if cost else None,
                    "spread": relative_spread(cost) if cost else None, "noisy": noisy(cost),
                    "speedup": ev.speedup, "max_abs_error": ev.max_abs_error, "stale": self.stale(ev),
                    "timestamp": ev.timestamp, "build_key": ev.build_key}

        return {"definition": self.definition, "device": self.device, "var_axes": list(self.var_axes),
                "mode": self.mode, "solutions": self.solutions, "wins": self.wins(),
                "rows": [{"workload": r.workload_uuid, "axes": r.axes, "winner": r.winner,
                          "verdict": r.verdict, "reference_us": r.reference_us,
                          "variants": dict(sorted(r.variants.items())),
                          "cells": {s: cell(e) for s, e in sorted(r.cells.items())}} for r in self.rows]}


#: ``choose(axes) -> (solution, verdict)``: what resolution runs a row's key (None: nothing).
Chooser = Callable[[Mapping[str, int]], "tuple[str | None, str | None]"]


def is_stale(ev: Evaluation, current: Mapping[str, str]) -> bool:
    """Whether ``ev`` is of another version of its solution than ``current`` (solution ->
    current digest) names; a solution ``current`` does not name is never stale."""
    return ev.solution in current and ev.solution_digest != current[ev.solution]


def _better(a: Evaluation, b: Evaluation, current: Mapping[str, str]) -> bool:
    """Whether ``a`` is a better cell than ``b``: current over stale, PASSED over not, then the
    lower median."""
    rank = lambda e: (is_stale(e, current),  # noqa: E731
                      e.status != "PASSED" or e.latency is None,
                      e.latency.median_us if e.latency else math.inf, e.solution)
    return rank(a) < rank(b)


def leaderboard(defn: Definition, device: str, evaluations: Iterable[Evaluation], choose: Chooser,
                *, mode: str = EAGER, group_variants: bool = True,
                current: Mapping[str, str] | None = None) -> Leaderboard:
    """Rows per workload (sorted by var-axis values), one cell per solution, latest record
    wins (of the solution as it is now, where ``current`` names it and one exists); each row's
    ``winner`` and ``verdict`` come from ``choose(row axes)``. With
    ``group_variants`` a grid's variants share their solution's column: the chosen variant's
    record where resolution picks one of them, else the best current one by median.
    ``current`` maps solutions (and variants) to their current digests, to mark stale cells."""
    current = dict(current or {})
    evaluations = [e for e in evaluations if e.definition == defn.name]
    # per (solution, workload) the latest record of the solution as it is now, else the latest
    latest = latest_per_workload(evaluations)
    latest.update(latest_per_workload(e for e in evaluations if not is_stale(e, current)))
    rows: dict[str, LeaderboardRow] = {}
    names = set()
    for (solution, uuid), ev in latest.items():
        row = rows.setdefault(uuid, LeaderboardRow(uuid, dict(ev.axes)))
        column = family(solution) if group_variants else solution
        names.add(column)
        kept = row.cells.get(column)
        if kept is None or _better(ev, kept, current):
            row.cells[column] = ev
            if column != solution:
                row.variants[column] = solution
    for row in rows.values():
        chosen, row.verdict = choose(row.axes)
        row.winner = family(chosen) if chosen and group_variants else chosen
        if chosen and row.winner != chosen and (chosen, row.workload_uuid) in latest:
            row.cells[row.winner] = latest[(chosen, row.workload_uuid)]  # the star shows what runs
            row.variants[row.winner] = chosen
    var_axes = defn.var_axes

    def order(row: LeaderboardRow):
        return tuple(row.axes.get(a, -1) for a in var_axes) + (row.workload_uuid,)

    return Leaderboard(defn.name, device, var_axes, sorted(names), sorted(rows.values(), key=order), mode,
                       current)


def cell_text(ev: Evaluation | None, cost: LatencyStats | None = None) -> str:
    """``12.3 µs ±4%`` (cost and spread) for a pass, with ``!`` when noisy; the short status
    otherwise; ``-`` when not evaluated."""
    if ev is None:
        return "-"
    if cost is not None:
        return spread_text(cost)
    return STATUS_SHORT.get(ev.status, ev.status)


def spread_text(cost: LatencyStats) -> str:
    """``12.3 µs ±4%``: the median and the interquartile range over the median, ``!`` if noisy."""
    return f"{format_us(cost.median_us)} ±{relative_spread(cost):.0%}" + ("!" if noisy(cost) else "")


def rich_table(board: Leaderboard):
    """The leaderboard as a rich Table: the cell resolution picks is bold green with a ``*``,
    noisy cells yellow (``!``), failures red. Text goes in as ``Text``, never as markup."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"{board.definition} on {board.device}"), title_justify="left")
    # The row label names the axes once, in the header, and keeps its values whole (never
    # folded or cut): at 80 columns the solution columns narrow instead.
    shown_axes = [a for a in board.var_axes if any(a in row.axes for row in board.rows)]
    table.add_column(",\n".join(shown_axes) or "workload", no_wrap=True,
                     min_width=max([len(_row_label(r, shown_axes)) for r in board.rows] + [1]))
    table.add_column("verdict", no_wrap=True)
    table.add_column("reference", justify="right", style="dim", overflow="fold")
    for sol in board.solutions:
        table.add_column(sol, justify="right", overflow="fold")  # a folded name stays whole
    for row in board.rows:
        cells = []
        for sol in board.solutions:
            ev = row.cells.get(sol)
            cost = board.cost(ev)
            text = Text(cell_text(ev, cost))
            if board.stale(ev):
                text = Text("stale ", style="dim") + text
            if sol in row.variants:  # the variant behind a grouped cell, on a line of its own
                text.append("\n" + (split_name(row.variants[sol])[1] or ""), style="dim")
            if sol == row.winner:
                text = Text("* ", style="bold green") + text
                text.stylize("bold green")
            elif ev is not None and ev.status != "PASSED":
                text.stylize("red")
            elif noisy(cost):
                text.stylize("yellow")
            cells.append(text)
        ref = board.reference_cost(row)
        ref_text = Text(spread_text(ref) if ref is not None else "-")
        if row.winner == "reference":
            ref_text = Text("* " + ref_text.plain, style="bold green")
        table.add_row(_row_label(row, shown_axes), row.verdict or "-", ref_text, *cells)
    wins = board.wins()
    how = ("max of host and GPU time per call" if board.mode == EAGER else "GPU time per call")
    stale = ("; stale: a record of an older version of the solution, which resolution does not use "
             "(`fibuild bench --resume` measures the current one)"
             if board.has_stale() else "")
    table.caption = Text(f"{board.mode} cost ({how}), median ±(q3-q1)/median; ! spread over "
                         f"{NOISY_SPREAD:.0%}: re-measure{stale}; * what `fibuild resolve --mode {board.mode}` picks "
                         "(the baseline unless a challenger wins clearly); verdict: the best challenger against "
                         "the baseline (FAST: it runs; SAME, SLOW: the baseline stays; AMBIGUOUS: too close to "
                         "tell, `fibuild bench --ambiguous` re-measures"
                         + ("; eager verdicts stretch each host time's interval over the solution's "
                            "other rows and up to the host's slowdown, as host cost drifts between bench items"
                            if board.mode == EAGER else "")
                         + "); wins: " + ", ".join(
                             f"{s} {n}" for s, n in sorted(wins.items(), key=lambda kv: (-kv[1], kv[0]))))
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
                        and not board.stale(r.cells[sol]) and r.axes.get(axis, 0) > 0)
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
        raise BenchError(f"nothing to plot: no PASSED evaluation of {board.definition} on {board.device}"
                         + (" of the solutions as they are now (the records are of older versions: "
                            f"fibuild bench {board.definition} --resume)" if board.has_stale() else ""))
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
