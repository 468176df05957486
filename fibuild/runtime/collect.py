"""Gather an ApplyTable's inputs from a workspace: solutions, digests, builds, records.

This is the slow path the table cache avoids: it parses the definition's solution
manifests, hashes their sources, probes builders and reads every registry file of the
definition. A device with no usable evaluation of its own borrows those of a device of the
same compute capability (an H100 those of an H200) until it has some: see :func:`borrow`.
``here`` says whether the device is this machine; when it is not (``fibuild resolve
--device <other slug>``), whether a solution can build here does not matter.
"""
from __future__ import annotations

from pathlib import Path

from fibuild.compile.builders import get_builder
from fibuild.compile.keys import build_key, solution_digest
from fibuild.config import Settings
from fibuild.devices import Device, device_named
from fibuild.errors import BuildError
from fibuild.spec.model import Definition, Solution

from .table import ApplyTable, Candidate, build_table, usable_keys

# Heavy or optional dependencies, imported inside the functions that use them: importlib.metadata.


def hardware_mismatch(sol: Solution, device: str) -> str:
    """Why ``sol.target_hardware`` excludes device slug ``device`` ("" when it does not):
    :meth:`fibuild.devices.Device.mismatch`, the rule the bench runner applies too."""
    return Device.from_slug(device).mismatch(sol.target_hardware)


def unavailable_reason(sol: Solution, device: str, settings: Settings) -> str:
    """Why ``sol`` cannot run on this machine's ``device`` ("" when it can).

    Checks, cheapest first: target hardware, installed dependencies (distribution names),
    the builder's own availability (no nvcc, ...). Cost: metadata look-ups and the
    builder's cached toolchain probe.
    """
    import importlib.metadata  # not at module level: it costs ~15 ms and the warm path skips this

    why = hardware_mismatch(sol, device)
    if why:
        return why
    for dist in sol.dependencies:
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return f"dependency {dist} is not installed"

    try:
        return get_builder(sol.language).unavailable_reason(settings) or ""
    except BuildError as exc:
        return str(exc).splitlines()[0]


def candidates(defn: Definition, solutions: list[Solution], device: str, settings: Settings,
               *, here: bool) -> dict[str, Candidate]:
    """One Candidate per solution: current digest, availability and build key.

    A solution whose sources cannot be read gets an empty digest (so no record matches)
    and says why in ``unavailable``. Cost: hashes every source; one toolchain probe per
    builder per process.
    """
    out: dict[str, Candidate] = {}
    for sol in solutions:
        try:
            digest = solution_digest(defn, sol)
        except BuildError as exc:
            out[sol.name] = Candidate(sol, "", unavailable=str(exc).splitlines()[0])
            continue
        unavailable = unavailable_reason(sol, device, settings) if here else ""
        key = ""
        if not unavailable:
            try:
                key = build_key(defn, sol, settings)
            except BuildError as exc:
                if here:
                    unavailable = str(exc).splitlines()[0]
        out[sol.name] = Candidate(sol, digest, unavailable, key)
    return out


def collect_table(workspace, settings: Settings, defn: Definition, device: str, *,
                  here: bool) -> ApplyTable:
    """The ApplyTable of ``defn`` on device slug ``device``, from the workspace's files.

    Raises ManifestErrors for invalid solution manifests of the definition.
    """
    from fibuild.registry import Registry  # deferred: a warm load reads no registry (test_table_cache)

    registry = Registry.of(workspace)
    cands = candidates(defn, workspace.solutions(defn.name), device, settings, here=here)
    records = registry.read(defn.name)  # every device: the others name where else it ran
    table = build_table(defn.name, defn.var_axes, device, cands, records, here=here,
                        baselines=defn.baseline, chain_records=chains(registry, defn.name, device, settings))
    return table if usable_keys(table) else borrow(table, cands, records, defn, registry, settings) or table


def chains(registry, definition: str, device: str, settings: Settings) -> list:
    """The chain records of ``definition`` on ``device`` made under this launch mode (PDL on or off)."""
    return [r for r in registry.read_chains(definition, device) if bool(r.get("pdl", True)) == settings.pdl]


def same_capability(a: str, b: str) -> bool:
    """Whether device slugs ``a`` and ``b`` are GPUs of one compute capability (H200 and H100)."""
    da, db = Device.from_slug(a), Device.from_slug(b)
    return da.kind == db.kind == "cuda" and da.compute_capability is not None \
        and da.compute_capability == db.compute_capability


def borrow(table: ApplyTable, cands, records, defn: Definition, registry, settings: Settings) -> ApplyTable | None:
    """The table of ``table.device`` made from the records of another device of the same
    compute capability (the one with the most usable keys; ties by slug), marked
    ``borrowed``; None when no such device has a usable evaluation. Availability stays
    this device's. Cost: one table build per such device.
    """
    others = sorted({ev.device for ev in records if ev.device != table.device
                     and same_capability(ev.device, table.device)})
    best, best_keys = None, 0
    for slug in others:
        other = build_table(defn.name, defn.var_axes, slug, cands, records, here=table.here,
                            baselines=defn.baseline, chain_records=chains(registry, defn.name, slug, settings))
        keys = usable_keys(other)
        if keys > best_keys:
            best, best_keys = other, keys
    if best is None:
        return None
    best.borrowed, best.device = best.device, table.device
    return best


def target_device(settings: Settings, device: str | None) -> tuple[str, bool]:
    """``(slug, here)`` for a device kind (``cpu``, ``cuda``, ``cuda:N``) or a device slug.

    A slug is ``here`` when it names this machine's CPU or a visible GPU; any other
    well-formed slug is another machine's. Raises ConfigError for a kind that is not
    present or text that is neither a kind nor a slug.
    """
    found = device_named(device, settings, any_slug=True)
    return found.slug, found.local


def definition_file(root: Path, name: str) -> Path | None:
    """``defs/<op_type>/<name>.yaml`` of a workspace, or None (no parsing)."""
    for path in sorted((root / "defs").glob(f"*/{name}.y*ml")):
        return path
    return None
