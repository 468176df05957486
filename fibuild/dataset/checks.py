"""Imported workloads go through fibuild's own workloads loader before they are written."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ManifestError
from ..spec.manifest import load_workloads_jsonl
from ..spec.model import Definition


def rejected_workloads(scratch: Path, defn: Definition, records: Sequence[Mapping]) -> dict[int, list[str]]:
    """``{index in records: [problem, ...]}`` for the records fibuild's loader refuses.

    Writes the records as a workloads file in a temporary folder under ``scratch`` (removed
    after) and loads it against ``defn``. Cost: one write and one load of the records.
    """
    if not records:
        return {}
    with tempfile.TemporaryDirectory(prefix=".check-", dir=scratch) as tmp:
        path = Path(tmp) / "workloads.jsonl"
        path.write_text("".join(json.dumps({"definition": defn.name, **r}) + "\n" for r in records),
                        encoding="utf-8")
        try:
            load_workloads_jsonl(path, defn)
        except ManifestError as exc:
            bad: dict[int, list[str]] = {}
            for pointer, message in exc.problems:
                head = pointer.split("/")[1] if pointer.count("/") >= 1 else ""
                bad.setdefault(int(head) if head.isdigit() else 0, []).append(message)
            return bad
    return {}
