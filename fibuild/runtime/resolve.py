"""Pick the solution for a key from an ApplyTable, with the whole decision trace.

Policies, tried as a chain that starts at the requested one (``strict`` tries only it):

- ``exact``: the solution a chain evaluation chose at this key (timed in sequence with its
  neighbours, :mod:`fibuild.bench.chain`), else the fastest that PASSED every workload at it;
- ``nearest``: the same at the closest evaluated key *below* (every var axis <= the key's),
  by log-distance over the var axes (``sum |log a - log b|``; ties go to the smaller key);
  only when no evaluated key lies below, the closest above. A launch config tuned for a
  smaller bucket degrades gently on a larger shape; one tuned for a larger bucket can
  lose badly on a smaller one (vLLM's ceiling-bucket configs lost up to 0.38x);
- ``def_best``: the solution that is fastest on the most keys;
- ``reference``: the definition's own reference (always answers).

The reference competes at every policy: its latency is in every evaluation, and where it
is faster than every usable solution at the evaluated key, it is the answer (nothing
slower than the reference is ever chosen). A solution that failed some workload at the key
itself is never chosen for it, whatever the policy. Pure: no I/O; the caller turns the answer into a callable.
"""
from __future__ import annotations

import math
from typing import Sequence

from fibuild.errors import ResolveError
from fibuild.spec.model import ApplyKey
from fibuild.units import format_us

from .decisions import REFERENCE, Accepted, BaseReporter, Decision, PolicySkipped, Rejected, Resolution, format_key
from .table import ApplyTable, Timing, slower_reason

POLICIES = ("exact", "nearest", "def_best", "reference")


def policy_chain(policy: str, *, strict: bool = False) -> tuple[str, ...]:
    """The policies tried for ``policy``: it and those after it, or only it when strict.

    Raises ResolveError for an unknown policy name.
    """
    if policy not in POLICIES:
        raise ResolveError(f"unknown policy {policy!r}: expected one of {', '.join(POLICIES)}")
    chain = POLICIES[POLICIES.index(policy):]
    return chain[:1] if strict else chain


def log_distance(a: ApplyKey, b: ApplyKey) -> float:
    """``sum |log a_i - log b_i|``; values below 1 count as 1 (log of 0 is undefined).

    Rounded to 9 decimals so that keys equally far in ratio (16 and 64 from 32) tie exactly.
    """
    return round(sum(abs(math.log(max(x, 1)) - math.log(max(y, 1))) for x, y in zip(a, b)), 9)


def is_below(key: ApplyKey, other: ApplyKey) -> bool:
    """Whether ``other`` is at or below ``key`` on every var axis."""
    return all(b <= a for a, b in zip(key, other))


def nearest_order(key: ApplyKey, keys) -> list[ApplyKey]:
    """``keys`` in the order ``nearest`` tries them: those below ``key`` first, each group by
    log-distance, then by value."""
    return sorted(keys, key=lambda k: (not is_below(key, k), log_distance(key, k), k))


class Resolver:
    """Answers keys from one ApplyTable.

    ``reference_label`` names the last resort in traces (``reference``, or ``fallback``
    for ``fibuild.apply``'s user function). Cost per :meth:`resolve`: O(keys x solutions);
    callers memoize per key.
    """

    def __init__(self, table: ApplyTable, *, reference_label: str = REFERENCE):
        self.table = table
        self.reference_label = reference_label

    def resolve(self, key: Sequence[int], policy: str = "nearest", *, strict: bool = False,
                exclude: dict[str, str] | None = None,
                reporter: BaseReporter | None = None) -> Resolution:
        """The Resolution for ``key`` (var-axis values in declaration order).

        ``exclude`` maps solutions to a reason they must not be chosen (e.g. their build
        failed in this process). Raises ResolveError, carrying the decisions, when no
        policy of the chain answers (only possible with ``strict``).
        """
        table = self.table
        key = tuple(int(v) for v in key)
        if len(key) != len(table.var_axes):
            raise ResolveError(f"{table.definition}: key {format_key(key)} has {len(key)} values; "
                               f"the var axes are {', '.join(table.var_axes) or '(none)'}")
        reporter = reporter or BaseReporter()
        chain = policy_chain(policy, strict=strict)
        reporter.starting(table.definition, key, chain)

        # Who is out before any policy runs: static exclusions, failures at this key, callers'.
        out: dict[str, str] = dict(table.excluded)
        for name, keys in table.failed.items():
            if key in keys and name not in out:
                out[name] = (f"{table.failures.get(name, 'failed')} "
                             f"(fails at {format_key(key)})")
        for name, reason in (exclude or {}).items():
            out.setdefault(name, reason)
        decisions: list[Decision] = []
        for name in sorted(out):
            decisions.append(Rejected(name, out[name]))
            reporter.rejecting(decisions[-1])

        for step in chain:
            reporter.trying_policy(step)
            answer = getattr(self, f"_{step}")(key, out)
            if isinstance(answer, PolicySkipped):
                decisions.append(answer)
                reporter.rejecting(answer)
                continue
            return self._finish(key, step, answer, out, decisions, reporter)
        raise ResolveError(f"{table.definition}: no solution for {format_key(key)} on "
                           f"{table.device} under policy {policy!r} (strict)", decisions)

    # Each policy returns (chosen solution or None for the reference, Timing or None,
    # evaluated key or None, reason), or PolicySkipped.
    def _usable(self, k: ApplyKey, out: dict[str, str]) -> list[Timing]:
        return [t for t in self.table.ranked.get(k, ()) if t.solution not in out]

    def _fastest(self, k: ApplyKey, out: dict[str, str]) -> tuple[Timing | None, str]:
        """The winner at evaluated key ``k`` (the reference when it is faster than every
        usable solution) and how to say so; (None, "") when no solution is usable there."""
        usable = self._usable(k, out)
        chosen = self.table.chained.get(k)
        own = next((t for t in usable if t.solution == chosen.solution), None) if chosen is not None else None
        if own is not None:  # a chain choice counts only for a solution that PASSED at this key
            return own, (f"chosen at {format_key(k)} by chain {chosen.chain} "
                            f"({format_us(chosen.chain_latency_us)} per layer, timed in sequence)")
        if not usable:
            return None, ""
        win = self.table.winner_at(k, out)
        if win.solution == REFERENCE:
            return win, (f"the reference is faster than every usable solution at {format_key(k)}: "
                         f"{format_us(win.median_us)} vs {usable[0].solution} "
                         f"{format_us(usable[0].median_us)}")
        return win, f"fastest at {format_key(k)}: {format_us(win.median_us)}"

    def _exact(self, key: ApplyKey, out: dict[str, str]):
        win, why = self._fastest(key, out)
        if win is None:
            return PolicySkipped("exact", f"no usable PASSED evaluation at {format_key(key)}")
        return win, key, why

    def _nearest(self, key: ApplyKey, out: dict[str, str]):
        for k in nearest_order(key, self.table.ranked):
            win, why = self._fastest(k, out)
            if win is None:
                continue
            if k == key:
                return win, k, why
            above = "" if is_below(key, k) else ", above it (none below)"
            return win, k, (f"not evaluated at this key; nearest evaluated key {format_key(k)} "
                            f"at distance {log_distance(key, k):.2f}{above}; {why}")
        return PolicySkipped("nearest", "no usable PASSED evaluation on this device")

    def _def_best(self, key: ApplyKey, out: dict[str, str]):
        wins = self.table.wins
        for name in sorted(wins, key=lambda s: (-wins[s], s)):
            if name not in out:
                return (Timing(name, math.nan, math.nan), None,
                        f"def_best: fastest on {wins[name]}/{len(self.table.ranked)} evaluated keys"
                        + (" (the reference counts as a competitor)" if name == REFERENCE else ""))
        return PolicySkipped("def_best", "no solution is fastest on any key")

    def _reference(self, key: ApplyKey, out: dict[str, str]):
        label = self.reference_label
        return None, None, f"the definition's {label} (no evaluated solution answered)"

    def _finish(self, key, step, answer, out, decisions, reporter) -> Resolution:
        table = self.table
        chosen, evaluated_key, reason = answer
        ref_latency, ref_won = None, False
        if chosen is not None and chosen.solution == REFERENCE:  # the reference won on speed
            ref_latency = chosen.median_us if evaluated_key is not None else None
            chosen, ref_won = None, True
        name = chosen.solution if chosen is not None else self.reference_label
        accepted = Accepted(name, reason)
        decisions.append(accepted)
        reporter.accepting(accepted)
        # Account for every remaining candidate so the trace is complete.
        ranked_here = {t.solution: t for t in table.ranked.get(evaluated_key, ())} \
            if evaluated_key is not None else {}
        for other in sorted(table.candidates):
            if other in out or chosen is not None and other == chosen.solution:
                continue
            if other in ranked_here and chosen is not None:
                why = slower_reason(ranked_here[other], chosen)
            elif other in ranked_here and ref_latency is not None:
                why = slower_reason(ranked_here[other], Timing(REFERENCE, ref_latency, math.nan))
            elif evaluated_key is not None:
                why = f"not evaluated at {format_key(evaluated_key)}"
            elif chosen is not None or ref_won:
                why = f"fastest on fewer keys ({table.wins.get(other, 0)})"
            else:
                why = "no usable evaluation"
            decisions.append(Rejected(other, why))
            reporter.rejecting(decisions[-1])
        ref = table.reference.get(evaluated_key) if evaluated_key is not None else None
        if chosen is not None and ref is not None:  # the reference competed and lost
            decisions.append(Rejected(REFERENCE, slower_reason(ref, chosen)))
            reporter.rejecting(decisions[-1])
        cand = table.candidates.get(chosen.solution) if chosen is not None else None
        latency = ref_latency
        if chosen is not None and evaluated_key is not None:
            latency = chosen.median_us
        resolution = Resolution(
            definition=table.definition, key=key, device=table.device,
            solution=cand.solution if cand is not None else None,
            build_key=(cand.build_key or None) if cand is not None else None,
            policy=(step if chosen is not None or ref_won
                    or self.reference_label == REFERENCE else self.reference_label),
            latency_us=latency, decisions=tuple(decisions), evaluated_key=evaluated_key,
            var_axes=table.var_axes)
        reporter.ending(resolution)
        return resolution
