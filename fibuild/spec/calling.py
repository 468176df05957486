"""The one calling convention users see, whatever a solution's style.

A definition's callable takes its inputs in declaration order (scalars as Python numbers)
and returns its outputs in declaration order: one tensor, or a tuple. In-place outputs
are the mutated input tensors themselves. ``out=`` (a tensor or tuple for the
non-in-place outputs) receives the results instead of fresh tensors.

The reference follows the value-returning convention; so do solutions unless
``destination_passing_style`` is set (then they take the inputs followed by the
preallocated non-in-place outputs, and return nothing).
"""
from __future__ import annotations

from typing import Any, Callable

from .model import Definition, Solution

# Heavy or optional dependencies, imported inside the functions that use them: torch.


def axis_sources(defn: Definition) -> dict[str, tuple[int, int]]:
    """Map each axis that appears in an input shape to ``(input index, dim)`` (first use)."""
    found: dict[str, tuple[int, int]] = {}
    for i, spec in enumerate(defn.inputs):
        for d, axis in enumerate(spec.shape or ()):
            found.setdefault(axis, (i, d))
    return found


def _dtype(name: str):
    import torch

    return getattr(torch, name)


def make_caller(defn: Definition, entry: Callable, *, destination_passing_style: bool) -> Callable:
    """Wrap ``entry`` into the value-returning convention (see the module docstring).

    The returned function is built once per (definition, solution); its per-call work is
    the shape lookups for output allocation (DPS only) and tuple assembly.
    """
    input_index = {spec.name: i for i, spec in enumerate(defn.inputs)}
    fresh = [o for o in defn.outputs if not o.inplace]
    # For each output: ("in", input index) or ("new", position among fresh outputs).
    layout = [("in", input_index[o.inplace]) if o.inplace else ("new", fresh.index(o)) for o in defn.outputs]
    sources = axis_sources(defn)
    const = defn.const_axes
    alloc_plan = []
    for o in fresh:
        dims = []
        for axis in o.shape or ():
            dims.append(("const", const[axis]) if axis in const else ("arg", sources[axis]))
        alloc_plan.append((tuple(dims), o.dtype))
    first_tensor = next((i for i, s in enumerate(defn.inputs) if not s.is_scalar), None)
    single = len(defn.outputs) == 1

    def assemble(args, new):
        out = tuple(args[ref] if kind == "in" else new[ref] for kind, ref in layout)
        return out[0] if single else out

    def allocate(args):
        import torch

        device = args[first_tensor].device if first_tensor is not None else "cpu"
        outs = []
        for dims, dtype in alloc_plan:
            shape = [v if k == "const" else args[v[0]].shape[v[1]] for k, v in dims]
            outs.append(torch.empty(shape, dtype=_dtype(dtype), device=device))
        return outs

    def as_list(out):
        return [out] if not isinstance(out, (tuple, list)) else list(out)

    if destination_passing_style:
        def call(*args, out=None):
            new = allocate(args) if out is None else as_list(out)
            entry(*args, *new)
            return assemble(args, new)
    else:
        def call(*args, out=None):
            result = entry(*args)
            new = [] if not fresh else as_list(result)
            if out is not None:
                targets = as_list(out)
                for t, r in zip(targets, new):
                    t.copy_(r)
                new = targets
            return assemble(args, new)

    call.__name__ = f"{defn.name}_call"
    return call


def solution_caller(defn: Definition, sol: Solution, entry: Callable) -> Callable:
    """``make_caller`` with the solution's declared style."""
    return make_caller(defn, entry, destination_passing_style=sol.destination_passing_style)


def load_reference(defn: Definition) -> dict[str, Any]:
    """Execute the definition's reference source; return its namespace (has ``run``)."""
    namespace: dict[str, Any] = {"__name__": f"fibuild_reference_{defn.name}"}
    code = compile(defn.reference, f"<reference of {defn.name}>", "exec")
    exec(code, namespace)  # noqa: S102 - the reference is workspace code, trusted like sources
    return namespace
