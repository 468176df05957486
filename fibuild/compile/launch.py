"""Launching ``@triton.jit`` kernels through their compiled handle, optionally with
programmatic dependent launch (PDL).

A solution wraps each kernel once at module level and binds its constexprs and launch
options once per key; a call then costs a dictionary look-up and the driver launch::

    _ROW = TritonLaunch(_rmsnorm_row)                 # module level: nothing runs
    _ROW_4096 = _ROW.bind(HIDDEN=4096, num_warps=8)   # memoized per keyword set
    _ROW_4096((rows,), x, w, out, eps)               # grid, then the runtime arguments

The first call of an argument key (device, PDL on/off, per argument: a tensor's dtype and
16-byte alignment, an int's value, a float's type) launches through Triton's own
``kernel[grid](...)``, which compiles and specializes, and keeps the compiled kernel it
returns; later calls of that key pass the arguments straight to that kernel's launcher (the
``@triton.jit`` path re-binds, re-specializes and re-hashes on every call). Launch hooks
(``knobs.runtime.launch_enter_hook``, set by profilers) and ``TRITON_INTERPRET=1`` take
Triton's own path on every call.

**PDL.** A kernel supports it by taking a ``PDL: tl.constexpr`` parameter and, when it is
true, calling ``tl.extra.cuda.gdc_wait()`` before it reads anything its predecessor in the
stream may write and before it writes anything (reads of weights and of structural inputs
that only a plan writes may come first), and ``tl.extra.cuda.gdc_launch_dependents()`` as
early as it likes (the dependent grid still waits for this one to finish before it reads).
fibuild sets ``PDL`` and Triton's ``launch_pdl`` option together, only for solutions whose
manifest declares ``launch: {pdl: true}`` (:func:`configure_package`, at load), only where
``FIBUILD_PDL`` allows and the device has it (compute capability >= 9), never under the
interpreter. The same code path serves eager calls and CUDA-graph capture (the graph keeps
the programmatic edge). A neighbour launched without the attribute is simply serialized.
"""
from __future__ import annotations

import os
import sys
from typing import Any

#: The constexpr parameter by which a kernel says that it supports dependent launch.
PDL_PARAM = "PDL"
#: Argument keys kept per bound launch; past this a call takes Triton's path (no growth).
MAX_KEYS = 256


class TritonLaunch:
    """A ``@triton.jit`` kernel that fibuild may launch with PDL; :meth:`bind` fixes its
    constexprs and options.

    ``pdl`` is False until :func:`configure_package` (called by fibuild's loader for a
    solution that declares ``launch: {pdl: true}``) sets it; a kernel without a ``PDL``
    parameter never gets it.
    """

    def __init__(self, kernel):
        self.kernel = kernel
        names = list(getattr(kernel, "arg_names", None) or [])
        self.supports_pdl = PDL_PARAM in names
        self.pdl = False
        self._bound: dict[tuple, BoundLaunch] = {}

    def bind(self, **fixed: Any) -> "BoundLaunch":
        """The launch with these constexprs and options (``num_warps``...), memoized by the
        keywords as given (pass them in one order). ValueError for a ``PDL`` keyword: fibuild
        sets it."""
        key = tuple(fixed.items())
        bound = self._bound.get(key)
        if bound is None:
            if PDL_PARAM in fixed or "launch_pdl" in fixed:
                raise ValueError(f"{PDL_PARAM}/launch_pdl are set by fibuild from the solution's manifest, "
                                 "not by bind()")
            bound = self._bound[key] = BoundLaunch(self, fixed)
        return bound


class BoundLaunch:
    """One kernel with fixed constexprs/options; ``launch(grid, *runtime_args)``.

    Runtime arguments are positional, in the kernel's order, and precede every fixed
    parameter (ValueError at the first call otherwise). Cost of a call with a known key:
    the key (a few attribute reads per argument), one dict look-up, the launcher's C call.
    """

    def __init__(self, owner: TritonLaunch, fixed: dict[str, Any]):
        self.owner = owner
        self.fixed = fixed
        self._entries: dict[tuple, tuple] = {}
        self._fast = None  # (torch, current_device, current_stream, knobs), once on a GPU

    def __call__(self, grid, *args):
        fast = self._fast
        if fast is None:
            fast = self._fast = _fast_path()
        if fast is False:  # the interpreter, or no CUDA Triton: Triton's own launcher
            return self.owner.kernel[grid](*args, **self._options(False))
        current_device, current_stream, runtime_knobs = fast
        device = current_device()
        if _hooked(runtime_knobs.launch_enter_hook) or _hooked(runtime_knobs.launch_exit_hook):
            return self.owner.kernel[grid](*args, **self._options(self._pdl_on(device)))
        key, values = _arg_key(args)
        entry = self._entries.get((device, self.owner.pdl, *key))
        if entry is None:
            return self._first((device, self.owner.pdl, *key), grid, args, device)
        run, function, packed, tail = entry
        n = len(grid)
        # the launcher's C code takes pointers as ints (a tensor would cost it an attribute call
        # and a driver query each); no launch metadata and no hooks: none is set
        run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, current_stream(device), function, packed,
            None, None, None, *values, *tail)

    def _pdl_on(self, device: int) -> bool:
        return self.owner.pdl and self.owner.supports_pdl and _has_pdl(device)

    def _options(self, pdl: bool) -> dict[str, Any]:
        opts = dict(self.fixed)
        if self.owner.supports_pdl:
            opts[PDL_PARAM] = pdl
            if pdl:
                opts["launch_pdl"] = True
        return opts

    def _first(self, key, grid, args, device):
        """Launch through Triton (compiling if needed) and keep the compiled kernel for ``key``."""
        options = self._options(self._pdl_on(device))
        compiled = self.owner.kernel[grid](*args, **options)
        if hasattr(compiled, "result"):  # an asynchronous compile's future
            compiled = compiled.result()
        if compiled is not None and len(self._entries) < MAX_KEYS:
            self._entries[key] = (compiled.run, compiled.function, compiled.packed_metadata,
                                  self._tail(len(args), options))
        return None

    def _tail(self, n_args: int, options: dict[str, Any]) -> tuple:
        """The bound arguments after the runtime ones, in parameter order (constexprs
        included: Triton's launcher takes every parameter and skips the constexprs)."""
        params = self.owner.kernel.params
        tail = []
        for i, p in enumerate(params):
            if i < n_args:
                if p.name in options:
                    raise ValueError(f"{self.owner.kernel.__name__}: {p.name} is passed positionally and bound")
                continue
            if p.name in options:
                tail.append(options[p.name])
            elif p.has_default:
                tail.append(p.default)
            else:
                raise ValueError(f"{self.owner.kernel.__name__}: parameter {p.name!r} is neither passed nor bound")
        return tuple(tail)


def _arg_key(args) -> tuple[list, list]:
    """``(key, values)``: everything Triton specializes a compiled kernel on, per runtime
    argument (an int's value: its width, ==1 and divisibility by 16 follow; a bool's value,
    apart from the equal int's: Triton types ``True`` i1 and ``1`` a constant; None; a float's
    type; a tensor's dtype, whether it is on a GPU, and its address modulo 16), and the values
    to launch with (a tensor's address for a tensor). Runs per call: one loop."""
    key, values = [], []
    for a in args:
        kind = type(a)
        if kind is int or a is None:
            key.append(a)
            values.append(a)
        elif kind is bool:
            key.append((bool, a))
            values.append(a)
        elif kind is float:
            key.append(float)
            values.append(a)
        else:
            address = a.data_ptr()
            key.append((a.dtype, a.is_cuda, address & 15))
            values.append(address)
    return key, values


def _hooked(hook) -> bool:
    """Whether a Triton launch hook is set: a callable, or a non-empty hook chain (Triton 3.6's
    knobs hold an empty ``HookChain`` by default, never None)."""
    return hook is not None and bool(getattr(hook, "calls", True))


def _fast_path():
    """``(current_device, current_stream, runtime knobs)`` of Triton's active CUDA driver, or
    False under the interpreter or without one."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return False
    try:
        from triton import knobs
        from triton.runtime import driver

        active = driver.active
        if active.get_current_target().backend != "cuda":
            return False
        return active.get_current_device, active.get_current_stream, knobs.runtime
    except Exception:  # no GPU or another backend: Triton's own launcher decides  # noqa: BLE001
        return False


_PDL_DEVICES: dict[int, bool] = {}


def _has_pdl(device: int) -> bool:
    """Whether CUDA device ``device`` has programmatic dependent launch (sm_90 and later)."""
    if device not in _PDL_DEVICES:
        import torch

        _PDL_DEVICES[device] = torch.cuda.get_device_capability(device)[0] >= 9
    return _PDL_DEVICES[device]


def configure_package(package: str, *, pdl: bool) -> int:
    """Set ``pdl`` on every :class:`TritonLaunch` (or :class:`BoundLaunch`'s owner) held at
    module level by ``package`` (a loaded solution's package and its submodules); returns
    how many module-level names held one."""
    found = 0
    prefix = package + "."
    for name, module in list(sys.modules.items()):
        if module is None or (name != package and not name.startswith(prefix)):
            continue
        for value in list(vars(module).values()):
            owner = value.owner if isinstance(value, BoundLaunch) else value
            if isinstance(owner, TritonLaunch):
                owner.pdl = pdl
                found += 1
    return found
