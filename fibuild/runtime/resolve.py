"""Pick the solution for a key from an ApplyTable, with the whole decision trace.

Policies, tried as a chain that starts at the requested one (``strict`` tries only it):

- ``exact``: the decision at this key (:func:`fibuild.runtime.choose.decide`: a chain
  evaluation's choice there, else the baseline unless a challenger wins clearly on the cost
  the caller pays);
- ``nearest``: the same at the closest evaluated key by log-distance over the var axes
  (``sum |log a - log b|``), in either direction; a tie goes to the key above (every var axis
  >= the key's), then to the larger key. Above is the safer side of a tie because a kernel's
  cost does not fall as the shape grows: the winner at the key above runs the shape in at
  most its measured time there, while the winner below has no such bound (a tile sized for
  M = 64 runs M = 96 in two passes: 0.61x the best variant on the H100; the closest key gave
  0.95x or better at 24 of 25 held-out shapes there, the largest key below at 19). Only keys
  within :data:`REACH` times the key on every var axis count: beyond that nothing measured
  speaks for the shape (a GEMM variant measured up to M = 8 ran 0.16x the best at M = 4096);
- ``def_best``: the solution that runs the most evaluated keys; it steps aside for a baseline
  that can run when no evaluated key is within reach;
- ``baseline``: the definition's baseline (FlashInfer's, cuBLAS through torch), where the
  device has no usable evaluation, or where the baseline's records here are all of an older
  version (no challenger can then be shown to beat it, so the measured policies step aside);
- ``reference``: the definition's own reference: a last resort, never a default (it is the
  correctness oracle, often far slower and sometimes not capturable in a CUDA graph).

The reference competes where it was measured: it replaces the incumbent only on a clear win,
like any challenger. A solution that failed some workload at the key itself is never chosen
for it, whatever the policy. ``mode`` (``eager`` or ``graph``) says which cost counts. Pure:
no I/O; the caller turns the answer into a callable.
"""
from __future__ import annotations

import math
from typing import Sequence

from fibuild.bench.compare import EAGER, MODES
from fibuild.errors import ResolveError
from fibuild.spec.model import ApplyKey

from .choose import KeyDecision, decide, wins
from .decisions import REFERENCE, Accepted, BaseReporter, Decision, PolicySkipped, Rejected, Resolution, format_key
from .table import ApplyTable

POLICIES = ("exact", "nearest", "def_best", "baseline", "reference")
#: How far (a ratio, on every var axis) an evaluated key speaks for an unseen one.
REACH = 4.0
#: Policies whose answer rests on evaluations (the others are defaults).
MEASURED = ("exact", "nearest", "def_best")


def policy_chain(policy: str, *, strict: bool = False) -> tuple[str, ...]:
    """The policies tried for ``policy``: it and those after it, or only it when strict.

    Raises ResolveError for an unknown policy name.
    """
    if policy not in POLICIES:
        raise ResolveError(f"unknown policy {policy!r}: expected one of {', '.join(POLICIES)}")
    chain = POLICIES[POLICIES.index(policy):]
    return chain[:1] if strict else chain


def check_mode(mode: str) -> str:
    """``mode`` if it is ``eager`` or ``graph``; ResolveError otherwise."""
    if mode not in MODES:
        raise ResolveError(f"unknown mode {mode!r}: expected {' or '.join(MODES)}")
    return mode


def log_distance(a: ApplyKey, b: ApplyKey) -> float:
    """``sum |log a_i - log b_i|``; values below 1 count as 1 (log of 0 is undefined).

    Rounded to 9 decimals so that keys equally far in ratio (16 and 64 from 32) tie exactly.
    """
    return round(sum(abs(math.log(max(x, 1)) - math.log(max(y, 1))) for x, y in zip(a, b)), 9)


def is_above(key: ApplyKey, other: ApplyKey) -> bool:
    """Whether ``other`` is at or above ``key`` on every var axis."""
    return all(b >= a for a, b in zip(key, other))


def within_reach(key: ApplyKey, other: ApplyKey) -> bool:
    """Whether ``other`` is within :data:`REACH` times ``key`` on every var axis (values
    below 1 count as 1)."""
    return all(max(a, 1) <= REACH * max(b, 1) and max(b, 1) <= REACH * max(a, 1) for a, b in zip(key, other))


def nearest_order(key: ApplyKey, keys) -> list[ApplyKey]:
    """``keys`` in the order ``nearest`` tries them: by log-distance from ``key``; at equal
    distance those above ``key`` first, then larger keys first."""
    return sorted(keys, key=lambda k: (log_distance(key, k), not is_above(key, k), tuple(-x for x in k)))


class Resolver:
    """Answers keys from one ApplyTable.

    ``reference_label`` names the last resort in traces (``reference``, or ``fallback``
    for ``fibuild.apply``'s user function, which then also stands in for the baseline: it is
    what the caller runs anyway). Cost per :meth:`resolve`: O(keys x solutions);
    callers memoize per key.
    """

    def __init__(self, table: ApplyTable, *, reference_label: str = REFERENCE):
        self.table = table
        self.reference_label = reference_label

    def resolve(self, key: Sequence[int], policy: str = "nearest", *, strict: bool = False,
                exclude: dict[str, str] | None = None, mode: str = EAGER,
                reporter: BaseReporter | None = None) -> Resolution:
        """The Resolution for ``key`` (var-axis values in declaration order).

        ``exclude`` maps solutions to a reason they must not be chosen (e.g. their build
        failed in this process). ``mode``: ``eager`` (cost = max(host, GPU) per call) or
        ``graph`` (GPU time). Raises ResolveError, carrying the decisions, when no policy of
        the chain answers (only possible with ``strict``), or for an unknown mode.
        """
        table = self.table
        check_mode(mode)
        key = tuple(int(v) for v in key)
        if len(key) != len(table.var_axes):
            raise ResolveError(f"{table.definition}: key {format_key(key)} has {len(key)} values; "
                               f"the var axes are {', '.join(table.var_axes) or '(none)'}")
        reporter = reporter or BaseReporter()
        chain = policy_chain(policy, strict=strict)
        reporter.starting(table.definition, key, chain)

        # Who is out before any policy runs: static exclusions, failures at this key, callers'.
        # A baseline that merely lacks evaluations here stays in: it is the default.
        everywhere: dict[str, str] = {n: why for n, why in table.excluded.items()
                                      if n != table.baseline or n not in table.unmeasured}
        for name, reason in (exclude or {}).items():
            everywhere.setdefault(name, reason)
        out = dict(everywhere)
        for name, keys in sorted(table.failed.items()):
            if key in keys and name not in out:
                out[name] = (f"{table.failures.get(name, 'failed')} "
                             f"(fails at {format_key(key)})")
        decisions: list[Decision] = []
        for name in sorted(out):
            decisions.append(Rejected(name, out[name]))
            reporter.rejecting(decisions[-1])

        # A baseline not measured on this device (no record, or records of an older version
        # only: a stale digest) cannot be beaten clearly by what was measured beside it: the
        # measured policies step aside until it is measured. (A strict policy gets exactly what
        # was measured.)
        how = None if strict or self.reference_label != REFERENCE else table.baseline_unmeasured()
        for step in chain:
            reporter.trying_policy(step)
            if how and step in MEASURED:
                answer = PolicySkipped(step, f"the baseline {table.baseline} was measured on {table.device} "
                                             f"{how}: nothing measured here can be shown to beat it; "
                                             f"run `fibuild bench {table.definition}`")
            else:
                answer = getattr(self, f"_{step}")(key, out, mode, everywhere)
            if isinstance(answer, PolicySkipped):
                decisions.append(answer)
                reporter.rejecting(answer)
                continue
            return self._finish(key, step, answer, out, everywhere, decisions, reporter, mode)
        for name in sorted(set(table.candidates) - set(out)):  # the trace names every candidate
            decisions.append(Rejected(name, table.excluded.get(name)
                                      or f"no usable PASSED evaluation at {format_key(key)}"))
            reporter.rejecting(decisions[-1])
        raise ResolveError(f"{table.definition}: no solution for {format_key(key)} on "
                           f"{table.device} under policy {policy!r} (strict)", decisions)

    # Each policy takes the key, ``out`` (who cannot run it, and why), the mode and
    # ``everywhere`` (``out`` less the key's own failures), and returns (chosen name,
    # KeyDecision or None, reason) or PolicySkipped.
    def _exact(self, key: ApplyKey, out: dict[str, str], mode: str, everywhere: dict[str, str]):
        decision = decide(self.table, key, mode, out)
        if decision is None:
            return PolicySkipped("exact", f"no usable PASSED evaluation at {format_key(key)}")
        return decision.chosen.solution, decision, decision.reason

    def _nearest(self, key: ApplyKey, out: dict[str, str], mode: str, everywhere: dict[str, str]):
        order = nearest_order(key, self.table.ranked)
        reachable = [k for k in order if within_reach(key, k)]
        if order and not reachable:
            return PolicySkipped("nearest", f"no usable PASSED evaluation within {REACH:g}x of {format_key(key)} "
                                            f"on every var axis (the nearest evaluated key: {format_key(order[0])})")
        for k in reachable:
            decision = decide(self.table, k, mode, out)
            if decision is None:
                continue
            if k == key:
                return decision.chosen.solution, decision, decision.reason
            side = "above" if is_above(key, k) else "below" if is_above(k, key) else "beside"
            return decision.chosen.solution, decision, (
                f"not evaluated at this key; nearest evaluated key {format_key(k)} at distance "
                f"{log_distance(key, k):.2f}, {side} it; {decision.reason}")
        return PolicySkipped("nearest", "no usable PASSED evaluation on this device")

    def _def_best(self, key: ApplyKey, out: dict[str, str], mode: str, everywhere: dict[str, str]):
        baseline = self.table.baseline
        if (baseline is not None and baseline not in out and self.reference_label == REFERENCE
                and not any(within_reach(key, k) for k in self.table.ranked)):
            return PolicySkipped("def_best", f"{format_key(key)} lies beyond {REACH:g}x of every evaluated key: "
                                             f"the baseline {baseline} answers")
        counts = wins(self.table, mode, everywhere)  # keys won, with the key's own failures aside
        for name in sorted(counts, key=lambda s: (-counts[s], s)):
            if name not in out:
                return (name, None,
                        f"def_best: runs {counts[name]}/{len(self.table.ranked)} evaluated keys"
                        + (" (the reference counts as a competitor)" if name == REFERENCE else ""))
        return PolicySkipped("def_best", "no solution runs any evaluated key")

    def _baseline(self, key: ApplyKey, out: dict[str, str], mode: str, everywhere: dict[str, str]):
        table = self.table
        name = table.baseline
        if self.reference_label != REFERENCE:
            return PolicySkipped("baseline", f"the caller's {self.reference_label} stands in for the baseline")
        if name is None:
            return PolicySkipped("baseline", f"no baseline can run here: {table.baseline_note}")
        if name in out:
            return PolicySkipped("baseline", f"the baseline {name} is out: {out[name]}")
        return name, None, (f"the definition's baseline: no usable evaluation on {table.device}; "
                            f"run `fibuild bench {table.definition}` there to measure the others")

    def _reference(self, key: ApplyKey, out: dict[str, str], mode: str, everywhere: dict[str, str]):
        label = self.reference_label
        return label, None, f"the definition's {label} (no evaluated solution and no baseline answered)"

    def _finish(self, key, step, answer, out, everywhere, decisions, reporter, mode) -> Resolution:
        table = self.table
        name, decision, reason = answer
        decision: KeyDecision | None
        is_reference = name in (REFERENCE, self.reference_label) and name not in table.candidates
        accepted = Accepted(self.reference_label if is_reference else name, reason)
        decisions.append(accepted)
        reporter.accepting(accepted)
        # Account for every remaining candidate (and a measured reference) so the trace is complete.
        here = {t.solution: t for t in table.ranked.get(decision.key, ())} if decision else {}
        ref = table.reference.get(decision.key) if decision else None
        others = sorted(set(table.candidates) - set(out) - {name})
        if ref is not None and not is_reference:
            others.append(REFERENCE)
        for other in others:
            timing = ref if other == REFERENCE else here.get(other)
            if other in table.excluded:  # the baseline without evaluations here
                why = table.excluded[other]
            elif decision is not None and timing is not None:
                why = decision.rejection(timing)
            elif decision is not None:
                why = f"not evaluated at {format_key(decision.key)}"
            elif step == "def_best":
                why = f"runs fewer evaluated keys ({wins(table, mode, everywhere).get(other, 0)})"
            elif step == "baseline":
                why = "no usable evaluation on this device"
            else:
                why = "no usable evaluation"
            decisions.append(Rejected(other, why))
            reporter.rejecting(decisions[-1])
        cand = None if is_reference else table.candidates.get(name)
        latency = decision.chosen.cost(mode).median_us if decision is not None else None
        resolution = Resolution(
            definition=table.definition, key=key, device=table.device,
            solution=cand.solution if cand is not None else None,
            build_key=(cand.build_key or None) if cand is not None else None,
            policy=self.reference_label if is_reference and step == "reference" else step,
            latency_us=latency, decisions=tuple(decisions),
            evaluated_key=decision.key if decision is not None else None,
            var_axes=table.var_axes, mode=mode,
            verdict=decision.verdict if decision is not None else None,
            borrowed=table.borrowed if step in MEASURED else "",
            baseline=table.baseline)
        reporter.ending(resolution)
        return resolution
