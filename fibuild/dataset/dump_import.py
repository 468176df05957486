"""``fibuild import flashinfer-dump DIR``: FlashInfer level-10 API dumps into workloads.

Each dumped call is matched to a workspace definition by the API it logged (a table of
FlashInfer APIs and their definitions' op types, or a definition's ``fi_api:`` tag) and
by shapes and dtypes (const axes must agree, every var axis must get a value). A wrapper's
``run()`` takes its page table from the ``plan()`` that precedes it in the same process
(and on the same wrapper object, when the dump says which). Integer tensors (indptrs,
indices) are kept in a safetensors blob, float tensors become ``random``, scalars keep
their values; ``kv_indices`` is cut to ``kv_indptr[-1]`` (engines over-allocate the pool).
At most two workloads per definition and axes (counting those already there). Calls that
match nothing are reported with the reason of each candidate.
"""
from __future__ import annotations

import hashlib
import math
import uuid as uuidlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import DatasetError, FibuildError
from ..registry import Registry
from ..spec.model import Definition
from ..spec.workspace import Workspace
from .checks import rejected_workloads
from .dump_reader import DumpCall, read_dumps
from .report import DatasetReport
from .writes import Journal, target

MAX_PER_AXES = 2
_REGISTRY = "registry"  # Workspace.registry_dir.name: blob paths are relative to the workspace root
_INTEGER = ("int64", "int32", "int16", "int8", "uint8", "bool")


@dataclass(frozen=True)
class Api:
    """How a FlashInfer API's arguments feed a definition's inputs.

    ``inputs``: definition input -> candidate parameters (``name``, ``name.<j>`` for item j
    of a tuple, ``plan:name`` for an argument of the paired ``plan()`` call). Inputs not
    listed are looked up under their own name in the call, then in the plan.
    """

    op_types: tuple[str, ...]
    inputs: dict = field(default_factory=dict)
    plan: str | None = None


_DECODE = "BatchDecodeWithPagedKVCacheWrapper"
_MLA = "BatchMLAPagedAttentionWrapper"
APIS: dict[str, Api] = {
    "rmsnorm": Api(("rmsnorm",), {"hidden_states": ("input",)}),
    "fused_add_rmsnorm": Api(("fused_add_rmsnorm",), {"hidden_states": ("input",)}),
    f"{_DECODE}.run": Api(("gqa_paged",), {
        "k_cache": ("paged_kv_cache.0",), "v_cache": ("paged_kv_cache.1",),
        "kv_indptr": ("plan:indptr", "plan:paged_kv_indptr"), "kv_indices": ("plan:indices", "plan:paged_kv_indices"),
        "kv_last_page_len": ("plan:last_page_len", "plan:paged_kv_last_page_len")}, plan=f"{_DECODE}.plan"),
    f"{_MLA}.run": Api(("mla_paged",), {"kv_len": ("plan:kv_len_arr",)}, plan=f"{_MLA}.plan"),
    "top_k_top_p_sampling_from_probs": Api(("sampling",)),
    "top_k_sampling_from_probs": Api(("sampling",)),
    "top_p_sampling_from_probs": Api(("sampling",)),
}


class _NoMatch(Exception):
    pass


def import_flashinfer_dump(workspace: Workspace, source: str | Path, *,
                           progress: Callable[[str], None] | None = None) -> DatasetReport:
    """Turn the dumps under ``source`` into workloads of ``workspace``'s definitions.

    Raises DatasetError (file, line) for truncated or foreign dump files. Writes blobs
    and appends to ``registry/<definition>/workloads.jsonl`` only after every workload
    passed fibuild's workloads loader. Cost: reads headers of every dump, tensor data
    only of integer inputs.
    """
    say = progress or (lambda _line: None)
    report = DatasetReport()
    calls = read_dumps(Path(source))
    defs = list(workspace.definitions.values())
    counts: dict[str, Counter] = {}
    new: dict[str, list] = {}
    last_plan: dict[tuple, DumpCall] = {}
    for call in calls:
        base = call.function.rsplit(".", 1)[0] if "." in call.function else call.function
        if call.function.endswith(".plan"):
            last_plan[(call.pid, base)] = call
            if call.self_id is not None:
                last_plan[(call.pid, base, call.self_id)] = call
            continue
        say(f"call {call.directory.name}")
        if call.status == "graph_capture_pending_flush":
            report.skip("call", call.function, "captured in a CUDA graph and never flushed to disk",
                        str(call.directory))
            continue
        api = APIS.get(call.function)
        plan = None
        if api is not None and api.plan is not None:
            plan = last_plan.get((call.pid, base, call.self_id)) or last_plan.get((call.pid, base))
            if plan is None:
                report.skip("call", call.function, f"no {api.plan}() before it in process {call.pid}",
                            str(call.directory))
                continue
        candidates = [d for d in defs if _candidate(d, call.function, api)]
        reasons = []
        for defn in candidates:
            try:
                record, blob = _workload(defn, call, plan, api)
            except _NoMatch as exc:
                reasons.append(f"{defn.name}: {exc}")
                continue
            seen = counts.setdefault(defn.name, _existing_counts(workspace, defn))
            key = tuple(sorted(record["axes"].items()))
            if seen[record["uuid"]] or seen[key] >= MAX_PER_AXES:
                report.unchanged["workload"] += 1
            else:
                seen[key] += 1
                seen[record["uuid"]] += 1
                new.setdefault(defn.name, []).append((record, blob, str(call.directory)))
            break
        else:
            why = "; ".join(reasons) if reasons else "no definition of this API in the workspace"
            report.skip("call", call.function, f"matches no definition ({why})", str(call.directory))
    _write(workspace, new, report)
    return report


def _candidate(defn: Definition, function: str, api: Api | None) -> bool:
    base = function.rsplit(".", 1)[0] if function.endswith((".run", ".forward")) else function
    tagged = any(t.startswith("fi_api:") and t.split(".")[-1] == base for t in defn.tags)
    return tagged or (api is not None and defn.op_type in api.op_types)


def _existing_counts(workspace: Workspace, defn: Definition) -> Counter:
    counts: Counter = Counter()
    for w in workspace.workloads(defn):
        counts[tuple(sorted(w.axes.items()))] += 1
        counts[w.uuid] += 1
    return counts


def _source(defn: Definition, name: str, call: DumpCall, plan: DumpCall | None, api: Api | None):
    """``(call, ("tensor", key) | ("value", v))`` feeding input ``name``, or None."""
    options = (api.inputs.get(name, ()) if api else ()) + (name, f"plan:{name}")
    for option in options:
        target = call
        if option.startswith("plan:"):
            target, option = plan, option[5:]
        if target is None:
            continue
        found = target.find(option)
        if found is not None:
            return target, found
    return None


def _workload(defn: Definition, call: DumpCall, plan: DumpCall | None, api: Api | None) -> tuple[dict, dict]:
    """The workload record of ``call`` under ``defn`` and its blob tensors; _NoMatch says why not."""
    axes = dict(defn.const_axes)
    tensors: dict = {}
    inputs: dict = {}
    sources = {}
    for spec in defn.inputs:
        found = _source(defn, spec.name, call, plan, api)
        if found is None:
            if spec.is_scalar and spec.name == "sm_scale" and plan is not None:
                head_dim = plan.find("head_dim") or plan.find("head_dim_ckv")
                if head_dim and head_dim[0] == "value" and isinstance(head_dim[1], int):
                    inputs[spec.name] = {"type": "scalar", "value": 1.0 / math.sqrt(head_dim[1])}
                    continue
            raise _NoMatch(f"the call has no argument for input {spec.name!r}")
        sources[spec.name] = found
    for spec in defn.inputs:
        if spec.name not in sources:
            continue
        target, (kind, value) = sources[spec.name]
        if spec.is_scalar:
            if kind != "value" or isinstance(value, (dict, list)) or value is None:
                raise _NoMatch(f"input {spec.name!r} is a scalar, the call passed {value!r}")
            inputs[spec.name] = {"type": "scalar", "value": value}
            continue
        if kind != "tensor":
            raise _NoMatch(f"input {spec.name!r} is a tensor, the call passed {value!r}")
        dtype, shape = target.tensors[value]
        if dtype != spec.dtype:
            raise _NoMatch(f"input {spec.name!r} is {dtype}, the definition declares {spec.dtype}")
        if spec.dtype in _INTEGER:
            tensors[spec.name] = target.load([value])[value]
            shape = list(tensors[spec.name].shape)
        _bind(axes, spec, shape)
        inputs[spec.name] = {"type": "random"} if spec.dtype not in _INTEGER else None
    if "kv_indices" in tensors and "kv_indptr" in tensors:
        used = int(tensors["kv_indptr"][-1].item())
        if used > tensors["kv_indices"].shape[0]:
            raise _NoMatch(f"kv_indptr[-1] = {used} exceeds the {tensors['kv_indices'].shape[0]} kv_indices")
        tensors["kv_indices"] = tensors["kv_indices"][:used].clone()
        axes.pop(_axis_of(defn, "kv_indices"), None)
        _bind(axes, defn.input("kv_indices"), [used])
    missing = [a for a in defn.var_axes if a not in axes]
    if missing:
        raise _NoMatch(f"no tensor gives var axes {missing}")
    var = {a: axes[a] for a in defn.var_axes}
    digest = hashlib.sha256(repr((defn.name, sorted(var.items()), sorted(
        (k, v) for k, v in inputs.items() if v is not None))).encode())
    for name in sorted(tensors):
        digest.update(name.encode() + tensors[name].contiguous().numpy().tobytes())
    uuid = str(uuidlib.UUID(hex=digest.hexdigest()[:32]))
    for name in tensors:
        inputs[name] = {"type": "safetensors", "path": f"{_REGISTRY}/{defn.name}/blobs/{defn.name}_{uuid}.safetensors",
                        "tensor_key": name}
    return {"uuid": uuid, "axes": var, "inputs": inputs}, tensors


def _axis_of(defn: Definition, name: str) -> str:
    return defn.input(name).shape[0]


def _bind(axes: dict, spec, shape: list[int]) -> None:
    if len(shape) != len(spec.shape):
        raise _NoMatch(f"input {spec.name!r} has {len(shape)} dims {shape}, "
                       f"the definition {len(spec.shape)} {list(spec.shape)}")
    for axis, size in zip(spec.shape, shape):
        if axes.setdefault(axis, size) != size:
            raise _NoMatch(f"axis {axis} is {axes[axis]}, but {spec.name} has {size} there")


def _write(workspace: Workspace, new: dict, report: DatasetReport) -> None:
    """Validate every new workload with fibuild's loader, then write blobs and lines (all of
    them, or on a failure none: what was written is taken back)."""
    registry = Registry(workspace.registry_dir)
    for name, items in new.items():
        defn = workspace.definition(name)
        rejected = rejected_workloads(workspace.root, defn, [r for r, _, _ in items])
        if rejected:
            index, messages = next(iter(rejected.items()))
            raise DatasetError(items[index][2], 0, f"workload for {name} rejected by fibuild's loader: "
                               + "; ".join(messages))
    journal = Journal()
    written: Counter = Counter()
    try:
        for name, items in new.items():
            for record, blob, _ in items:
                if blob:
                    journal.creating(target(workspace.root, _REGISTRY, name, "blobs",
                                            f"{name}_{record['uuid']}.safetensors"))
                    registry.write_blob(name, f"{name}_{record['uuid']}", blob)
                    written["blob"] += 1
            journal.appending(target(workspace.root, _REGISTRY, name, "workloads.jsonl"))
            registry.append_workloads(name, [r for r, _, _ in items])
            written["workload"] += len(items)
    except (OSError, FibuildError) as exc:
        left = journal.undo()
        kept = f"; could not remove {', '.join(left)}" if left else "; nothing of it was kept"
        raise FibuildError(f"import failed while writing into {workspace.root}: {exc}{kept}") from exc
    report.written.update(written)
