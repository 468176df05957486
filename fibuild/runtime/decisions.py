"""The decision trace of a resolution, and the reporter hooks the resolver calls.

A :class:`Resolution` says which solution runs a key and why: every candidate appears in
``decisions`` as :class:`Accepted` or :class:`Rejected` with a reason a person can act on,
and every policy that found nothing as :class:`PolicySkipped`. The resolver never prints;
a UI subscribes through :class:`BaseReporter` (the CLI renders, tests record).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from fibuild.spec.model import ApplyKey, Solution

#: The name a decision uses for the definition's own reference implementation.
REFERENCE = "reference"


@dataclass(frozen=True)
class Accepted:
    """``solution`` was chosen; ``reason`` says on what evidence."""

    solution: str
    reason: str

    def __str__(self) -> str:
        return f"accepted {self.solution}: {self.reason}"


@dataclass(frozen=True)
class Rejected:
    """``solution`` cannot or should not run this key; ``reason`` says why."""

    solution: str
    reason: str

    def __str__(self) -> str:
        return f"rejected {self.solution}: {self.reason}"


@dataclass(frozen=True)
class PolicySkipped:
    """Policy ``policy`` had no answer for the key; the chain went on to the next one."""

    policy: str
    reason: str

    def __str__(self) -> str:
        return f"policy {self.policy}: {self.reason}"


Decision = Union[Accepted, Rejected, PolicySkipped]


def decision_to_dict(d: Decision) -> dict[str, str]:
    """JSON form of a decision (``--json`` output)."""
    if isinstance(d, PolicySkipped):
        return {"kind": "policy_skipped", "policy": d.policy, "reason": d.reason}
    kind = "accepted" if isinstance(d, Accepted) else "rejected"
    return {"kind": kind, "solution": d.solution, "reason": d.reason}


@dataclass(frozen=True)
class Resolution:
    """The answer for one key.

    ``solution`` is None when the definition's reference runs (then ``build_key`` is None
    too). ``policy`` is the policy that answered (``exact``, ``nearest``, ``def_best``,
    ``baseline``, ``reference`` or ``fallback``). ``latency_us`` is the median cost per call
    the choice rests on, in ``mode`` (at ``evaluated_key``, which differs from ``key`` under
    ``nearest``), None without one. ``mode``: ``eager`` (a call costs max(host, GPU) time)
    or ``graph`` (GPU time). ``verdict``: how firm the decision at the evaluated key is
    (FAST, SAME, SLOW, AMBIGUOUS; None without one; see :mod:`fibuild.runtime.choose`).
    ``borrowed``: the slug of the device (same compute capability) whose evaluations stood in
    for this device's, "" when the answer rests on this device's own or on none.
    ``baseline``: the definition's baseline on this device (None when none can run).
    ``notes`` qualify the whole answer (e.g. it is for another machine).
    """

    definition: str
    key: ApplyKey
    device: str
    solution: Solution | None
    build_key: str | None
    policy: str
    latency_us: float | None
    decisions: tuple[Decision, ...]
    evaluated_key: ApplyKey | None = None
    var_axes: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = ()
    mode: str = "eager"
    verdict: str | None = None
    borrowed: str = ""
    baseline: str | None = None

    @property
    def solution_name(self) -> str:
        """The chosen solution's name, or ``"reference"``."""
        return self.solution.name if self.solution is not None else REFERENCE

    @property
    def language(self) -> str:
        return self.solution.language if self.solution is not None else "python"

    def axes(self) -> dict[str, int]:
        return dict(zip(self.var_axes, self.key))

    def __str__(self) -> str:
        return self.explain()

    def explain(self) -> str:
        """The decision trace, one line per decision."""
        head = (f"{self.definition} at {format_axes(self.var_axes, self.key)} on {self.device}: "
                f"{self.solution_name} (policy {self.policy}, {self.mode} mode"
                + (f", {self.verdict}" if self.verdict else "") + ")")
        return "\n".join([head] + [f"  note: {n}" for n in self.all_notes()]
                         + [f"  - {d}" for d in self.decisions])

    def all_notes(self) -> list[str]:
        """``notes`` plus the one a borrowed answer carries."""
        extra = []
        if self.borrowed:
            extra.append(f"borrowed: no usable evaluation on {self.device}; the evaluations of "
                         f"{self.borrowed} (same compute capability) stand in until "
                         f"`fibuild bench {self.definition}` runs here")
        return [*self.notes, *extra]

    def to_dict(self) -> dict[str, Any]:
        return {
            "definition": self.definition, "axes": self.axes(), "key": list(self.key),
            "device": self.device, "solution": self.solution_name, "language": self.language,
            "build_key": self.build_key, "policy": self.policy, "latency_us": self.latency_us,
            "evaluated_key": list(self.evaluated_key) if self.evaluated_key is not None else None,
            "decisions": [decision_to_dict(d) for d in self.decisions],
            "notes": self.all_notes(), "mode": self.mode, "verdict": self.verdict,
            "borrowed": self.borrowed or None, "baseline": self.baseline,
        }


def format_key(key: ApplyKey) -> str:
    """A key as Python writes a tuple: ``(32,)``, ``(32, 128)``."""
    return repr(tuple(key))


def format_axes(var_axes: tuple[str, ...], key: ApplyKey) -> str:
    return ", ".join(f"{a}={v}" for a, v in zip(var_axes, key)) or "()"


class BaseReporter:
    """No-op hooks the resolver calls; subclass and override what you want to observe.

    Each hook is called synchronously from :meth:`Resolver.resolve`; keep them cheap.
    """

    def starting(self, definition: str, key: ApplyKey, policies: tuple[str, ...]) -> None:
        """Called once before the first policy is tried."""

    def trying_policy(self, policy: str) -> None:
        """Called as each policy of the chain is tried."""

    def rejecting(self, decision: Rejected | PolicySkipped) -> None:
        """Called for each rejected candidate and each policy without an answer."""

    def accepting(self, decision: Accepted) -> None:
        """Called once for the chosen candidate."""

    def ending(self, resolution: Resolution) -> None:
        """Called with the final resolution (not called when the resolver raises)."""
