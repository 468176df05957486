"""Build keys and solution digests: sha256 over canonical JSON of everything a build depends on.

``build_key`` hashes (DESIGN §3): the key schema, the builder's name and version, the
definition and solution minus prose, each source file's *contents*, the final flags, the
toolchain fingerprint, the arch list and the whitelisted compiler environment. Manifests
enter through the parsed model, so YAML comments, key order and formatting never change
a key. The solution's qualified name is in the key too: it names the build directory, so
one key always maps to one directory and two definitions sharing a solution name never
collide.

``solution_digest`` hashes the sources and the spec only (no toolchain, no names): it goes
into evaluations, and the resolver compares it with the current solution's. Library files
(:mod:`fibuild.spec.libraries`) count as sources at their path in the build, and the names
of the libraries do not enter: a solution whose effective files are unchanged keeps its
digest whether a file sits in its folder or in a library.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from fibuild.compile.builders import get_builder
from fibuild.config import Settings
from fibuild.errors import BuildError
from fibuild.spec.model import Definition, Solution

KEY_SCHEMA = 1


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _tensor(spec) -> dict[str, Any]:
    out = {"name": spec.name, "shape": list(spec.shape) if spec.shape is not None else None,
           "dtype": spec.dtype, "inplace": spec.inplace}
    if spec.structural:  # only when set: keys of definitions without plans stay as they were
        out["structural"] = True
    return out


def definition_spec(defn: Definition) -> dict[str, Any]:
    """The definition as a build sees it: no description, tags or workloads (prose and bench data)."""
    return {
        "name": defn.name,
        "op_type": defn.op_type,
        "axes": {n: {"kind": a.kind, "value": a.value} for n, a in defn.axes.items()},
        "axis_order": list(defn.axes),
        "inputs": [_tensor(t) for t in defn.inputs],
        "outputs": [_tensor(t) for t in defn.outputs],
        "reference": defn.reference,
        "constraints": list(defn.constraints),
        "tolerance": {"atol": defn.tolerance.atol, "rtol": defn.tolerance.rtol},
        "custom_inputs_entrypoint": defn.custom_inputs_entrypoint,
    }


def solution_spec(sol: Solution) -> dict[str, Any]:
    """The solution minus prose (name, author, description) and its location on disk."""
    return {
        "definition": sol.definition,
        "language": sol.language,
        "entry_point": sol.entry_point,
        "sources": list(sol.all_sources),  # own, then libraries': the effective file set
        "target_hardware": sorted(sol.target_hardware),
        "destination_passing_style": sol.destination_passing_style,
        "dependencies": sorted(sol.dependencies),
        "build": {k: list(v) for k, v in dataclasses.asdict(sol.build).items()},
        **({"plan": sol.plan} if sol.plan else {}),  # only when set, as for the definition
        # A variant's constants (not the grid: a variant's build does not depend on its siblings).
        **({"constants": [[k, v] for k, v in sol.constants]} if sol.constants else {}),
    }


def source_hashes(sol: Solution) -> list[tuple[str, str]]:
    """``[(relpath, sha256(contents))]`` of every file the build copies (own sources and
    library files, by their path in the build), sorted by path; BuildError if one is unreadable."""
    if sol.path is None:
        raise BuildError(f"{sol.qualified_name}: the solution has no directory (path is None)",
                         solution=sol.qualified_name)
    hashes = []
    for rel, path in sorted(dict(sol.files).items()):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BuildError(f"{sol.qualified_name}: cannot read source {rel}: {exc.strerror}",
                             solution=sol.qualified_name) from None
        hashes.append((rel, sha256_hex(data)))
    return hashes


def digest_inputs(defn: Definition, sol: Solution) -> dict[str, Any]:
    return {"schema": KEY_SCHEMA, "definition": definition_spec(defn), "solution": solution_spec(sol),
            "sources": [list(p) for p in source_hashes(sol)]}


def solution_digest(defn: Definition, sol: Solution) -> str:
    """sha256 of sources + spec, independent of toolchain and names. Cost: reads the sources."""
    return sha256_hex(canonical_json(digest_inputs(defn, sol)))


def digest_of(inputs: dict[str, Any]) -> str:
    """The solution digest from a ``key_inputs`` dict (no second read of the sources)."""
    return sha256_hex(canonical_json({k: inputs[k] for k in ("schema", "definition", "solution", "sources")}))


def key_of(inputs: dict[str, Any]) -> str:
    """The build key from a ``key_inputs`` dict."""
    return sha256_hex(canonical_json(inputs))


def key_inputs(defn: Definition, sol: Solution, settings: Settings) -> dict[str, Any]:
    """Every input of the build key, as a JSON-able dict (``fibuild info`` prints each).

    Raises BuildError for an unknown language or an unreadable source. Cost: reads the
    sources; toolchain probes run once per process.
    """
    builder = get_builder(sol.language)
    inputs = digest_inputs(defn, sol)
    inputs["identity"] = sol.qualified_name
    inputs["builder"] = {"name": builder.name, "version": builder.version}
    inputs.update(builder.key_inputs(defn, sol, settings))
    return inputs


def build_key(defn: Definition, sol: Solution, settings: Settings) -> str:
    """The sha256 hex BuildKey of ``sol`` under ``settings`` (see the module docstring)."""
    return key_of(key_inputs(defn, sol, settings))
