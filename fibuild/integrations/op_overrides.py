"""Taking the calls of a torch operator at the dispatcher, and giving them back exactly.

vLLM calls its norm and activation kernels as torch operators (``torch.ops._C.rms_norm(out,
x, w, eps)``), from eager code and from graphs that torch.compile made. Replacing a Python
attribute would miss the graphs and put Python into Dynamo's tracing; a kernel registered at
the dispatcher sees every real call and none of the tracing.

:class:`OpOverrides` registers a Python kernel for an existing operator at the
``BackendSelect`` dispatch key. The dispatcher runs that key just above the backends (CPU,
CUDA) for real tensors, also under ``inference_mode`` (which turns the autograd keys off);
fake and meta tensors are handled by the keys above it and never reach it. The kernel's
``original`` redispatches the same call to the keys below ``BackendSelect``: the backend
kernel the operator had, untouched. :meth:`OpOverrides.restore` destroys the registrations,
after which the dispatcher is as it was.

torch is imported inside the functions: importing this module costs nothing.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

log = logging.getLogger("fibuild.integrations")

KEY = "BackendSelect"


def op_overload(qualname: str) -> Any:
    """The default overload of ``namespace::name`` (``_C::rms_norm``), or None while the
    operator is not defined (its library not loaded yet). Cost: two attribute reads."""
    import torch

    namespace, _, name = qualname.partition("::")
    try:
        return getattr(getattr(torch.ops, namespace), name).default
    except (AttributeError, RuntimeError):
        return None


def backend_original(op: Any) -> Callable:
    """``op``'s own kernel for a call: the call redispatched to the keys below
    ``BackendSelect`` (the backend of the tensor arguments). Cost per call: one dispatch-key
    read per tensor argument and the redispatch."""
    import torch

    below = torch._C._dispatch_keyset_full_after(torch._C.DispatchKey.BackendSelect)
    keys_of = torch._C._dispatch_keys
    redispatch = op.redispatch
    tensor = torch.Tensor

    def original(*args):
        keys = None
        for arg in args:
            if isinstance(arg, tensor):
                keys = keys_of(arg) if keys is None else keys | keys_of(arg)
        return redispatch(keys & below, *args)

    return original


class OpOverrides:
    """Kernels registered at ``BackendSelect`` for operators, undone by :meth:`restore`."""

    def __init__(self) -> None:
        self._libraries: dict[str, Any] = {}  # qualname -> the torch.library.Library holding it

    def __contains__(self, qualname: str) -> bool:
        return qualname in self._libraries

    def override(self, qualname: str, make: Callable[[Callable], Callable]) -> bool:
        """Register ``make(original)`` as ``qualname``'s kernel, where ``original`` runs the
        operator's own backend kernel (:func:`backend_original`). Returns False, registering
        nothing, when the operator is not defined or is already taken here, or when the
        dispatcher refuses the registration (logged)."""
        import torch

        op = op_overload(qualname)
        if op is None or qualname in self._libraries:
            return False
        namespace, _, name = qualname.partition("::")
        kernel = make(backend_original(op))
        library = torch.library.Library(namespace, "IMPL")
        try:
            library.impl(name, kernel, KEY)
        except Exception as exc:  # noqa: BLE001 - a registration the dispatcher refuses: leave the op alone
            _destroy(library)
            log.warning("fibuild: %s not taken: the dispatcher refused a %s kernel: %s", qualname, KEY, exc)
            return False
        self._libraries[qualname] = library
        return True

    def restore(self) -> None:
        """Remove every registration made here (newest first); the operators dispatch as before."""
        while self._libraries:
            _, library = self._libraries.popitem()
            _destroy(library)


def _destroy(library: Any) -> None:
    destroy = getattr(library, "_destroy", None)
    if destroy is not None:
        destroy()
