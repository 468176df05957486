"""Op templates: definitions made from an operator type and its constants.

Tracing a model meets operators whose definition does not exist yet; a template writes one
(axes, tensors, torch reference, tolerance) so the traced workloads are ready to bench.

``definition_name(op, params)`` names definitions as the flashinfer-trace dataset does
(``rmsnorm_h4096``, ``gemm_n6144_k4096``, ``gqa_paged_decode_h32_kv8_d128_ps16``, ...). A
dtype other than the dataset's for that operator (float16 for gemm, bfloat16 otherwise) is
a suffix (``gemm_n6144_k4096_bf16``), so one name never means two dtypes.
``definition_document`` returns the manifest; ``write_definition`` validates it with the
spec loader and places it atomically under ``defs/<op_type>/``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

from fibuild.errors import FibuildError
from fibuild.spec.documents import dump_yaml
from fibuild.spec.manifest import load_definition

from . import attention, elementwise

# Heavy or optional dependencies, imported inside the functions that use them: filelock.

#: op -> (template function, name pattern, the dataset's dtype for that op)
TEMPLATES: dict[str, tuple[Callable[..., dict], str, str]] = {
    "rmsnorm": (elementwise.rmsnorm, "rmsnorm_h{hidden_size}", "bfloat16"),
    "fused_add_rmsnorm": (elementwise.fused_add_rmsnorm, "fused_add_rmsnorm_h{hidden_size}", "bfloat16"),
    "silu_and_mul": (elementwise.silu_and_mul, "silu_and_mul_i{intermediate_size}", "bfloat16"),
    "gemm": (elementwise.gemm, "gemm_n{n}_k{k}", "float16"),
    "gqa_paged_decode": (attention.gqa_paged_decode,
                         "gqa_paged_decode_h{num_qo_heads}_kv{num_kv_heads}_d{head_dim}_ps{page_size}",
                         "bfloat16"),
    "gqa_paged_prefill_causal": (attention.gqa_paged_prefill_causal,
                                 "gqa_paged_prefill_causal_h{num_qo_heads}_kv{num_kv_heads}_d{head_dim}"
                                 "_ps{page_size}", "bfloat16"),
    "gqa_ragged_prefill_causal": (attention.gqa_ragged_prefill_causal,
                                  "gqa_ragged_prefill_causal_h{num_qo_heads}_kv{num_kv_heads}_d{head_dim}",
                                  "bfloat16"),
}

_DTYPE_SUFFIX = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def definition_name(op: str, params: Mapping[str, Any]) -> str:
    """The dataset's name for ``op`` with constants ``params`` (``dtype`` included).

    Raises FibuildError for an unknown op, a missing parameter or an unsupported dtype.
    Cost: one string format.
    """
    fn, pattern, dataset_dtype = _template(op)
    try:
        name = pattern.format(**params)
    except KeyError as exc:
        raise FibuildError(f"op template {op!r} needs parameter {exc.args[0]!r}") from None
    dtype = params.get("dtype", dataset_dtype)
    if dtype == dataset_dtype:
        return name
    if dtype not in _DTYPE_SUFFIX:
        raise FibuildError(f"op template {op!r}: dtype {dtype!r} is not supported "
                           f"(supported: {', '.join(_DTYPE_SUFFIX)})")
    return f"{name}_{_DTYPE_SUFFIX[dtype]}"


def definition_document(op: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The definition manifest (YAML layout) for ``op`` with ``params``; raises as
    :func:`definition_name`, or FibuildError naming an unexpected parameter."""
    fn, _, _ = _template(op)
    name = definition_name(op, params)
    try:
        body = fn(**params)
    except TypeError as exc:
        raise FibuildError(f"op template {op!r}: {exc}") from None
    tags = ["status:traced", f"template:{op}"]
    return {"name": name, "op_type": body.pop("op_type"), "description": body.pop("description"),
            "tags": tags, **body}


def _template(op: str):
    try:
        return TEMPLATES[op]
    except KeyError:
        raise FibuildError(f"no op template {op!r} (templates: {', '.join(TEMPLATES)})") from None


def write_definition(defs_dir: str | Path, document: Mapping[str, Any]) -> Path:
    """Write ``document`` to ``<defs_dir>/<op_type>/<name>.yaml`` unless that file exists.

    The text is validated by the spec loader (schema and semantic checks) from a temporary
    file in the same folder, then renamed into place under a file lock, so readers never see
    a partial or invalid definition and two processes never both write it. Returns the
    path. Raises ManifestError when the document is invalid (a template bug), FibuildError
    when the folder cannot be written.
    """
    from filelock import FileLock

    folder = Path(defs_dir) / document["op_type"]
    final = folder / f"{document['name']}.yaml"
    if final.exists():
        return final
    text = ("# Made by fibuild from a traced call (op template); edit freely.\n"
            + dump_yaml(dict(document), flow_lists=False))
    # load_definition checks the name against the file name: validate a file named right,
    # in a private folder beside the target, then rename it into place.
    probe = folder / f".probe-{os.getpid()}" / final.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / f".{document['name']}.lock")):
            if final.exists():
                return final
            probe.parent.mkdir(exist_ok=True)
            try:
                probe.write_text(text, encoding="utf-8")
                load_definition(probe)
                os.replace(probe, final)
            finally:
                probe.unlink(missing_ok=True)
                probe.parent.rmdir()
    except OSError as exc:
        raise FibuildError(f"{final}: cannot write definition: {exc}") from exc
    return final

