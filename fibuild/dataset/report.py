"""What an import or export did: counts, every item skipped and why, fields not carried over."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Skipped:
    """One item left out: ``kind`` (definition, solution, workload, evaluation, call),
    ``name``, ``reason`` a person can act on, ``where`` (file, or file:line)."""

    kind: str
    name: str
    reason: str
    where: str = ""


@dataclass
class DatasetReport:
    """Counts of items written and already present, items skipped, notes on dropped fields."""

    written: Counter = field(default_factory=Counter)
    unchanged: Counter = field(default_factory=Counter)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: (kind, definition) -> items left out because their definition is not imported
    dependents: Counter = field(default_factory=Counter)
    #: data the source should hold is missing (a blob): the import did what it could, the
    #: caller should say it is incomplete (the CLI exits 1)
    incomplete: bool = False

    def skip(self, kind: str, name: str, reason: str, where: str = "") -> None:
        self.skipped.append(Skipped(kind, name, reason, where))

    def lines(self) -> list[str]:
        """The report as text lines: a summary, then one line per skipped item and note."""
        kinds = ("definition", "solution", "workload", "blob", "evaluation")
        done = ", ".join(f"{self.written[k]} {k}s" for k in kinds if self.written[k]) or "nothing"
        out = [f"written: {done}"]
        same = ", ".join(f"{self.unchanged[k]} {k}s" for k in kinds if self.unchanged[k])
        if same:
            out.append(f"already present: {same}")
        if self.skipped or self.dependents:
            out.append(f"skipped {len(self.skipped) + sum(self.dependents.values())}:")
            out += [f"  {s.kind} {s.name}: {s.reason}" + (f" ({s.where})" if s.where else "")
                    for s in self.skipped]
            out += [f"  {n} {kind}s of {name}: the definition is not imported"
                    for (kind, name), n in sorted(self.dependents.items())]
        if self.notes:
            out.append(f"not carried over {len(self.notes)}:")
            out += [f"  {n}" for n in self.notes]
        if self.incomplete:
            out.append("incomplete: the source lacks data that items above need (listed as missing)")
        return out
