"""Chains: definitions in the order a model launches them (``chains/<name>.yaml``).

A chain has its own var axes (``batch_size``...), a list of slots (a definition each, its
var axes given as a chain axis's name or a number) and workloads (values of the chain's
axes). A slot's workload at a chain workload is the definition's workload, declared or
traced, whose axes agree with the slot's mapped axes (the first such); a definition whose
inputs are all random tensors also gets one made from the mapped axes when all its var
axes are mapped. The chain says nothing about data flow: the kernels are timed in sequence,
each on its own inputs (:mod:`fibuild.bench.chain`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from fibuild.errors import FibuildError, ManifestError

from .manifest import _checked_yaml
from .model import Definition, Workload
from .schema import pointer_of


@dataclass(frozen=True)
class ChainSlot:
    """One launch of the chain: ``definition`` at ``axes`` (var axis -> chain axis name or int)."""

    name: str
    definition: str
    axes: Mapping[str, str | int]

    def mapped(self, chain_axes: Mapping[str, int]) -> dict[str, int]:
        """The slot's var-axis values at a chain workload's ``chain_axes``."""
        return {a: int(chain_axes[v]) if isinstance(v, str) else int(v) for a, v in self.axes.items()}


@dataclass(frozen=True)
class Chain:
    name: str
    axes: tuple[str, ...]
    slots: tuple[ChainSlot, ...]
    workloads: tuple[Mapping[str, int], ...]
    description: str = ""
    path: Path | None = None


def load_chain(path: str | Path, definitions: Mapping[str, Definition]) -> Chain:
    """Read, validate and check ``chains/<name>.yaml`` against the workspace's ``definitions``.

    Raises ManifestError with every problem (schema, unknown definitions or axes, a
    workload missing a chain axis, a name other than the file's).
    """
    path = Path(path)
    data = _checked_yaml(path, "chain", lambda d: _semantics(d, path, definitions))
    slots = tuple(ChainSlot(s.get("name") or f"{i}_{s['definition']}", s["definition"], dict(s["axes"]))
                  for i, s in enumerate(data["slots"]))
    return Chain(name=data["name"], axes=tuple(data["axes"]), slots=slots,
                 workloads=tuple(dict(w["axes"]) for w in data["workloads"]),
                 description=data.get("description", ""), path=path)


def _semantics(data: Mapping[str, Any], path: Path, definitions: Mapping[str, Definition]) -> list:
    problems = []
    if data["name"] != path.stem:
        problems.append(("/name", f"name {data['name']!r} differs from the file's {path.stem!r}"))
    chain_axes = set(data["axes"])
    names = set()
    for i, slot in enumerate(data["slots"]):
        name = slot.get("name")
        if name is not None and name in names:
            problems.append((pointer_of(["slots", i, "name"]), f"slot name {name!r} is used twice"))
        names.add(name)
        defn = definitions.get(slot["definition"])
        if defn is None:
            problems.append((pointer_of(["slots", i, "definition"]),
                             f"definition {slot['definition']!r} does not exist in the workspace"))
            continue
        for axis, value in slot["axes"].items():
            if axis not in defn.var_axes:
                problems.append((pointer_of(["slots", i, "axes", axis]),
                                 f"{axis!r} is not a var axis of {defn.name} ({', '.join(defn.var_axes)})"))
            if isinstance(value, str) and value not in chain_axes:
                problems.append((pointer_of(["slots", i, "axes", axis]),
                                 f"{value!r} is not an axis of the chain ({', '.join(sorted(chain_axes))})"))
    for i, workload in enumerate(data["workloads"]):
        missing = sorted(chain_axes - set(workload["axes"]))
        extra = sorted(set(workload["axes"]) - chain_axes)
        if missing or extra:
            problems.append((pointer_of(["workloads", i, "axes"]),
                             f"needs exactly the chain's axes: missing {missing}, unknown {extra}"))
    return problems


def slot_workload(defn: Definition, slot: ChainSlot, chain_axes: Mapping[str, int],
                  workloads: list[Workload]) -> Workload:
    """The workload of ``slot`` at ``chain_axes``: the first of ``workloads`` (the definition's,
    declared then traced) agreeing with the mapped axes, else one made from them when every
    var axis is mapped and every input is random. FibuildError otherwise, saying what to add."""
    mapped = slot.mapped(chain_axes)
    for w in workloads:
        if all(int(w.axes.get(a, -1)) == v for a, v in mapped.items()):
            return w
    if set(mapped) == set(defn.var_axes) and all(s.structural is False and not s.is_scalar for s in defn.inputs) \
            and not defn.custom_inputs_entrypoint:
        axes = ",".join(f"{a}={v}" for a, v in sorted(mapped.items()))
        return Workload(uuid=f"chain-{defn.name}-{axes}", axes=mapped, source="chain")
    raise FibuildError(f"slot {slot.name}: no workload of {defn.name} has "
                       + ", ".join(f"{a}={v}" for a, v in sorted(mapped.items()))
                       + " (declare one in its manifest or trace one)")


def chain_files(root: Path) -> list[Path]:
    """``<root>/chains/*.yaml`` (and ``.yml``), sorted."""
    folder = root / "chains"
    return sorted(p for p in folder.glob("*.y*ml") if p.suffix in (".yaml", ".yml")) if folder.is_dir() else []


def find_chain(root: Path, name: str, definitions: Mapping[str, Definition]) -> Chain:
    """The chain ``name`` of the workspace at ``root``; FibuildError naming the known ones."""
    for path in chain_files(root):
        if path.stem == name:
            return load_chain(path, definitions)
    known = ", ".join(p.stem for p in chain_files(root)) or "none"
    raise FibuildError(f"no chain {name!r} in {root / 'chains'} (known: {known})")


__all__ = ["Chain", "ChainSlot", "ManifestError", "chain_files", "find_chain", "load_chain", "slot_workload"]
