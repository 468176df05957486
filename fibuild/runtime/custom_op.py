"""A Kernel as a ``torch.library`` custom op, so it can sit inside ``torch.compile`` and CUDA graphs.

The op's schema comes from the definition: tensors and scalars in, the non-in-place
outputs out; inputs written by in-place outputs are declared mutated (``Tensor(a!)``).
Its fake (meta) implementation allocates the outputs from the definition's shapes, so
the compiler never runs the kernel to learn them. Each registration gets a fresh name
(``fibuild::<definition>_<n>``): ops are process-global, Kernels are not.
"""
from __future__ import annotations

import itertools
import re

from fibuild.errors import ResolveError
from fibuild.spec.calling import axis_sources
from fibuild.spec.model import Definition

# Heavy or optional dependencies, imported inside the functions that use them: torch.

_SERIAL = itertools.count()


def _scalar_type(dtype: str) -> str | None:
    if dtype == "bool":
        return "bool"
    if dtype.startswith(("float", "bfloat")):
        return "float"
    if dtype.startswith(("int", "uint")):
        return "int"
    return None


def op_schema(defn: Definition) -> str:
    """The custom-op schema of ``defn``, e.g. ``(Tensor x, Tensor w) -> Tensor``.

    Raises ResolveError when the definition cannot be one: a scalar of an unsupported
    dtype, or an output dimension no input or const axis determines.
    """
    mutated = {o.inplace for o in defn.outputs if o.inplace}
    sources = axis_sources(defn)
    const = defn.const_axes
    aliases = iter("abcdefghijklmnopqrstuvwxyz")
    params = []
    for spec in defn.inputs:
        if spec.is_scalar:
            kind = _scalar_type(spec.dtype)
            if kind is None:
                raise ResolveError(f"{defn.name}: scalar input {spec.name} of dtype {spec.dtype} "
                                   "cannot be a custom-op argument")
            params.append(f"{kind} {spec.name}")
        elif spec.name in mutated:
            params.append(f"Tensor({next(aliases)}!) {spec.name}")
        else:
            params.append(f"Tensor {spec.name}")
    fresh = [o for o in defn.outputs if not o.inplace]
    for o in fresh:
        if o.is_scalar:
            raise ResolveError(f"{defn.name}: scalar output {o.name} cannot be a custom-op result")
        unknown = [a for a in o.shape if a not in const and a not in sources]
        if unknown:
            raise ResolveError(f"{defn.name}: output {o.name} has axis {', '.join(unknown)} "
                               "that no input determines; no custom op")
    returns = "()" if not fresh else "Tensor" if len(fresh) == 1 else \
        "(" + ", ".join("Tensor" for _ in fresh) + ")"
    return f"({', '.join(params)}) -> {returns}"


def register_op(kernel):
    """Register ``kernel`` as a new custom op and return it (a ``CustomOpDef``, callable).

    Raises ResolveError when the definition cannot be expressed (see :func:`op_schema`).
    """
    import torch

    defn = kernel.definition
    schema = op_schema(defn)
    mutated = [o.inplace for o in defn.outputs if o.inplace]
    positions = [i for i, o in enumerate(defn.outputs) if not o.inplace]
    single = len(defn.outputs) == 1
    sources = axis_sources(defn)
    const = defn.const_axes
    first_tensor = next((i for i, s in enumerate(defn.inputs) if not s.is_scalar), None)
    plans = [([("c", const[a]) if a in const else ("a", sources[a]) for a in o.shape],
              getattr(torch, o.dtype)) for o in defn.outputs if not o.inplace]
    name = f"fibuild::{re.sub(r'[^0-9A-Za-z_]', '_', defn.name)}_{next(_SERIAL)}"

    def impl(*args):
        result = kernel(*args)
        if not positions:
            return None
        outs = (result,) if single else tuple(result)
        picked = tuple(outs[i] for i in positions)
        return picked[0] if len(picked) == 1 else picked

    def fake(*args):
        device = args[first_tensor].device if first_tensor is not None else "cpu"
        outs = tuple(torch.empty([v if k == "c" else args[v[0]].shape[v[1]] for k, v in dims],
                                 dtype=dtype, device=device) for dims, dtype in plans)
        if not outs:
            return None
        return outs[0] if len(outs) == 1 else outs

    op = torch.library.custom_op(name, impl, mutates_args=tuple(mutated), schema=schema)
    op.register_fake(fake)
    return op
