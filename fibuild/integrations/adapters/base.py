"""What every adapter provides, and the bound call it works on.

An adapter maps one FlashInfer (or torch) API to a definition:

- ``template_params(call)``: the op template's constants for the call (dtype, hidden size,
  heads, ...), or :class:`Unmapped` with the reason it cannot be taken. Pure: shapes,
  dtypes, devices and argument values only, never tensor contents.
- ``matches(call)``: the definition name (as flashinfer-trace names it) or None;
  ``why_not(call)`` says why None.
- ``to_inputs(call)``: the definition's inputs, in order, as views of the caller's tensors.
- ``write_back(call, outputs)``: what the API returns, in-place effects made exactly.
- ``is_original(solution, instance)``: whether a resolved solution is the patched API
  itself, as ``instance`` (the wrapper object, for methods) is configured (then the original
  is called directly, with nothing in between).
"""
from __future__ import annotations

from typing import Any, Mapping

from fibuild.errors import FibuildError
from fibuild.spec.templates import definition_name

# Heavy or optional dependencies, imported inside the functions that use them: torch.

REQUIRED = object()


class Unmapped(Exception):
    """The call cannot be taken; ``reason`` says why (shown by ``fibuild trace report``)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Call:
    """One call: positional ``args``, ``kwargs`` and ``params`` (every parameter by name,
    defaults filled in). ``instance`` is the wrapper object for methods."""

    __slots__ = ("args", "kwargs", "params", "instance")

    def __init__(self, args: tuple, kwargs: Mapping[str, Any], params: dict[str, Any], instance: Any = None):
        self.args = args
        self.kwargs = kwargs
        self.params = params
        self.instance = instance

    def __getitem__(self, name: str) -> Any:
        return self.params[name]


def bind(parameters: tuple[tuple[str, Any], ...], args: tuple, kwargs: Mapping[str, Any],
         instance: Any = None) -> Call:
    """Bind ``args``/``kwargs`` to ``parameters`` (``(name, default)``, REQUIRED for none).

    Raises Unmapped for extra positional arguments, unknown keywords or a missing argument:
    a call this adapter does not understand goes to the original untouched. Cost: a loop
    over the parameters.
    """
    if len(args) > len(parameters):
        raise Unmapped(f"{len(args)} positional arguments (the adapter knows {len(parameters)})")
    params: dict[str, Any] = {}
    for (name, _), value in zip(parameters, args):
        params[name] = value
    for key, value in kwargs.items():
        if key in params:
            raise Unmapped(f"argument {key!r} given twice")
        params[key] = value
    known = {name for name, _ in parameters}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise Unmapped(f"unsupported keyword argument {', '.join(unknown)}")
    for name, default in parameters:
        if name not in params:
            if default is REQUIRED:
                raise Unmapped(f"missing argument {name!r}")
            params[name] = default
    return Call(args, kwargs, params, instance)


def dtype_name(tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def tensor(call: Call, name: str, *, ndim: int | tuple[int, ...] | None = None):
    """``call[name]`` checked to be a torch tensor of that rank; Unmapped otherwise."""
    import torch

    value = call.params.get(name)
    if not isinstance(value, torch.Tensor):
        raise Unmapped(f"{name} is not a tensor")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if dims is not None and value.dim() not in dims:
        raise Unmapped(f"{name} has {value.dim()} dimensions (expected {' or '.join(map(str, dims))})")
    return value


def same_device(*tensors) -> None:
    """Unmapped unless every tensor lies on one device."""
    first = tensors[0].device
    for t in tensors[1:]:
        if t.device != first:
            raise Unmapped(f"tensors on different devices ({first} and {t.device})")


def flashinfer_own(solution) -> bool:
    """A Python solution that calls flashinfer-python: FlashInfer's own implementation."""
    return solution.language == "python" and "flashinfer-python" in solution.dependencies


class Adapter:
    """Base of the adapters; subclasses set ``op`` and implement ``template_params``."""

    #: op template name (fibuild.spec.templates.TEMPLATES)
    op = ""
    #: the API, for messages and the report (``flashinfer.norm.rmsnorm``)
    api = ""
    #: the seam's kind: "function" (a module attribute), "wrapper" (a class's plan/run
    #: entries) or "torch_op" (a torch operator ``qualname``, taken at the dispatcher)
    kind = "function"
    #: the module whose import triggers patching
    root = "flashinfer"
    #: where the patched attribute lives: ``getattr(import_module(module), attr)``
    module = ""
    attr = ""
    #: where other names bound to the same object are replaced too: "root" (modules under
    #: ``root``, e.g. ``flashinfer.rmsnorm``) or "all" (every loaded module: names bound by
    #: ``from X import f`` in an engine imported before fibuild)
    alias_scope = "root"

    def template_params(self, call: Call) -> dict[str, Any]:
        raise NotImplementedError

    def matches(self, call: Call) -> str | None:
        """The definition name for ``call``, or None when the adapter cannot take it."""
        try:
            return definition_name(self.op, self.template_params(call))
        except (Unmapped, FibuildError):
            return None

    def why_not(self, call: Call) -> str | None:
        """Why :meth:`matches` gives None (None when it does not)."""
        try:
            definition_name(self.op, self.template_params(call))
        except Unmapped as exc:
            return exc.reason
        except FibuildError as exc:
            return str(exc)
        return None

    def is_original(self, solution, instance: Any = None) -> bool:
        return flashinfer_own(solution)

    def to_inputs(self, call: Call) -> tuple:
        raise NotImplementedError

    def out_of(self, call: Call) -> Any:
        """The caller's tensor the kernel writes its (one, not in place) output into, as a
        view of the definition's output shape, or None to return a fresh one."""
        return None

    def write_back(self, call: Call, outputs: Any) -> Any:
        return outputs

    def trace_inputs(self, call: Call) -> dict[str, Any]:
        """Workload input specs beyond the default ``random`` (scalars by value)."""
        return {}
