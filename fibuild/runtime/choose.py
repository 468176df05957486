"""Who runs an evaluated key: the incumbent, unless a challenger wins clearly.

A chain evaluation's choice at the key (timed in sequence with its neighbours,
:mod:`fibuild.bench.chain`) runs it when that solution PASSED there. Otherwise the
incumbent (*anchor*) at a key is the table's baseline when it PASSED there, else the
solution with the lowest cost there (the baseline was not measured, or failed, at that key).
Every other usable solution, and the reference where its latency is known, challenges it;
:func:`fibuild.bench.compare.compare` judges each on the cost the caller pays in the chosen
mode. Only a FAST challenger may replace the anchor; among several, the lowest median wins,
and one whose difference from it is SAME (within noise) ties, broken by name so that a
re-run gives the same answer.

The key's ``verdict`` says how firm the decision is: FAST (a challenger won clearly), SAME or
SLOW (the anchor stays, and no challenger came close to winning), AMBIGUOUS (a challenger
with a better median could not be told apart from the anchor, or the winners from each
other: ``fibuild bench --ambiguous`` re-measures such keys), or None when nothing challenged.

``fibuild table`` stars what :func:`decide` picks, and the resolver answers with it, so the
two cannot disagree. Pure: no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from fibuild.bench.compare import AMBIGUOUS, EAGER, FAST, RULE, SAME, SLOW, Comparison, compare
from fibuild.spec.model import ApplyKey
from fibuild.units import format_us

from .decisions import REFERENCE, format_key
from .table import ApplyTable
from .timings import Timing


@dataclass(frozen=True)
class KeyDecision:
    """The decision at one evaluated key.

    ``chosen``: the Timing that runs (the reference's when it won). ``anchor``: the incumbent
    it was measured against; ``anchor_is_baseline`` whether that is the table's baseline.
    ``comparisons``: each challenger's verdict against the anchor. ``reason``: one line for
    the decision trace, naming the rule.
    """

    key: ApplyKey
    mode: str
    chosen: Timing
    anchor: Timing
    anchor_is_baseline: bool
    verdict: str | None
    reason: str
    comparisons: Mapping[str, Comparison] = field(default_factory=dict)
    ties: tuple[str, ...] = ()

    def rejection(self, timing: Timing) -> str:
        """Why ``timing`` (a contender at this key) does not run it."""
        name = timing.solution
        cost = format_us(timing.cost(self.mode).median_us)
        if name == self.anchor.solution:
            return (f"{cost}; replaced by {self.chosen.solution}: "
                    f"{self.comparisons[self.chosen.solution].describe()}")
        comp = self.comparisons.get(name)
        if comp is None:
            return f"{cost}; not compared"
        if comp.verdict == FAST:
            if name in self.ties:
                return (f"{cost}; {comp.describe()} vs {self.anchor.solution}, tied with "
                        f"{self.chosen.solution} (within noise; the tie goes by name)")
            return f"{cost}; {comp.describe()} vs {self.anchor.solution}, but {self.chosen.solution} is faster"
        return f"{cost}; {comp.describe()} vs {self.anchor.solution} ({self.anchor_role()})"

    def anchor_role(self) -> str:
        return "the baseline" if self.anchor_is_baseline else "the fastest measured solution"


def rule(table: ApplyTable, mode: str) -> str:
    """The comparison rule as a decision trace names it; in eager mode with host times, with
    how far their intervals were stretched (:func:`fibuild.runtime.timings.with_host_drift`)."""
    if mode != EAGER or not any(t.host is not None for ts in table.ranked.values() for t in ts):
        return RULE
    return (f"{RULE}; eager: each host time's interval spans its solution's keys, up to "
            f"{table.host_slowdown:.2f}x its lowest (the host's slowdown)")


def contenders(table: ApplyTable, key: ApplyKey, out: Mapping[str, str]) -> list[Timing]:
    """The Timings at ``key`` of the solutions not in ``out`` (fastest GPU median first)."""
    return [t for t in table.ranked.get(tuple(key), ()) if t.solution not in out]


def decide(table: ApplyTable, key: ApplyKey, mode: str, out: Mapping[str, str]) -> KeyDecision | None:
    """The decision at evaluated ``key`` in ``mode``, or None when no solution outside ``out``
    PASSED there (the reference alone never answers a key). Cost: O(solutions) comparisons.
    """
    key = tuple(key)
    usable = contenders(table, key, out)
    if not usable:
        return None
    by_cost = sorted(usable, key=lambda t: t.rank(mode))
    baseline = next((t for t in usable if t.solution == table.baseline), None)
    anchor = baseline or by_cost[0]
    challengers = [t for t in by_cost if t is not anchor]
    ref = table.reference.get(key)
    if ref is not None:
        challengers.append(ref)
    anchor_cost = anchor.cost(mode)
    comparisons = {t.solution: compare(t.cost(mode), anchor_cost) for t in challengers}
    winners = sorted((t for t in challengers if comparisons[t.solution].verdict == FAST),
                     key=lambda t: t.rank(mode))
    chosen_by_chain = table.chained.get(key)
    own = next((t for t in usable if chosen_by_chain and t.solution == chosen_by_chain.solution), None)
    if own is not None:  # a chain choice counts only for a solution that PASSED at this key
        reason = (f"chosen at {format_key(key)} by chain {chosen_by_chain.chain} "
                  f"({format_us(chosen_by_chain.chain_latency_us)} per layer, timed in sequence with its "
                  "neighbours)")
        return KeyDecision(key, mode, own, anchor, baseline is not None, None, reason, comparisons)
    role = "the baseline" if baseline is not None else (
        "the fastest measured solution" + (f" (the baseline {table.baseline} has no usable evaluation "
                                           f"at {format_key(key)})" if table.baseline else ""))
    if winners:
        best = winners[0]
        tied = [t for t in winners if compare(t.cost(mode), best.cost(mode)).verdict == SAME]
        chosen = min(tied, key=lambda t: t.solution)
        unclear = any(compare(t.cost(mode), chosen.cost(mode)).verdict == AMBIGUOUS
                      for t in winners if t is not chosen)
        verdict = AMBIGUOUS if unclear else FAST
        reason = (f"{comparisons[chosen.solution].describe()} against {anchor.solution}, {role}, "
                  f"at {format_key(key)}: {format_us(chosen.cost(mode).median_us)} vs "
                  f"{format_us(anchor_cost.median_us)} ({mode} cost)")
        if len(tied) > 1:
            reason += f"; tied within noise with {', '.join(t.solution for t in tied if t is not chosen)}"
        if unclear:
            reason += "; the winners cannot be told apart (AMBIGUOUS)"
        return KeyDecision(key, mode, chosen, anchor, baseline is not None, verdict,
                           f"{reason} [{rule(table, mode)}]", comparisons, tuple(t.solution for t in tied))
    close = [t for t in challengers if comparisons[t.solution].verdict == AMBIGUOUS
             and comparisons[t.solution].gain > 0]
    verdicts = {c.verdict for c in comparisons.values()}
    verdict = AMBIGUOUS if close else SAME if SAME in verdicts else SLOW if verdicts else None
    if baseline is not None:
        head = f"the baseline {anchor.solution} stays at {format_key(key)}"
    else:
        head = f"{anchor.solution}, {role}, runs {format_key(key)}"
    head += f" ({format_us(anchor_cost.median_us)}, {mode} cost)"
    if close:
        head += (": no clear win; " + ", ".join(f"{t.solution} {comparisons[t.solution].describe()}"
                                                 for t in close))
    elif challengers:
        head += ": no challenger wins clearly"
    return KeyDecision(key, mode, anchor, anchor, baseline is not None, verdict, f"{head} [{rule(table, mode)}]",
                       comparisons)


def decisions_by_key(table: ApplyTable, mode: str, out: Mapping[str, str],
                     keys: Iterable[ApplyKey] | None = None) -> dict[ApplyKey, KeyDecision]:
    """:func:`decide` at each of ``keys`` (default: every evaluated key) that has an answer."""
    found = {}
    for key in table.ranked if keys is None else keys:
        decision = decide(table, key, mode, out)
        if decision is not None:
            found[tuple(key)] = decision
    return found


def wins(table: ApplyTable, mode: str, out: Mapping[str, str]) -> dict[str, int]:
    """Keys each solution (or ``reference``) runs, over every evaluated key."""
    counts: dict[str, int] = {}
    for decision in decisions_by_key(table, mode, out).values():
        counts[decision.chosen.solution] = counts.get(decision.chosen.solution, 0) + 1
    return dict(sorted(counts.items()))


__all__ = ["KeyDecision", "REFERENCE", "contenders", "decide", "decisions_by_key", "wins"]
