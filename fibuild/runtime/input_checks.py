"""Input checks at dispatch: a call whose inputs do not match the definition raises.

What a solution may assume, once a call reaches it through ``fibuild.load``: exactly the
definition's inputs, in order; every tensor input has the declared dtype and rank, the
const axes' sizes, var axes equal across the inputs that share them, is contiguous
(row-major, dense) and lives on the kernel's device type (CPU tensors for a ``cpu``
kernel, CUDA tensors for a ``cuda`` one). Scalars are not tensors.

Per key, :func:`guarded` generates one function that checks all of that and calls the
solution; the check is a chain of attribute compares (``dtype is``, ``shape ==``,
``is_contiguous()``, ``is_cuda is``), about 0.2 µs per tensor input. Only a failed check
pays for :func:`mismatch`, which names the first input that differs, what was expected and
what came.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from fibuild.errors import InputError
from fibuild.spec.model import ApplyKey, Definition

# Heavy or optional dependencies, imported inside the functions that use them: torch.

# Sentinel for inputs a call left out: it has none of a tensor's attributes the check reads.
_MISSING = object()


def expected_shapes(defn: Definition, key: ApplyKey) -> list[tuple[int, ...] | None]:
    """Per input, the shape a call at ``key`` must have (None for scalars)."""
    sizes = dict(defn.const_axes)
    sizes.update(zip(defn.var_axes, key))
    return [None if spec.is_scalar else tuple(int(sizes[a]) for a in spec.shape)
            for spec in defn.inputs]


def guarded(defn: Definition, key: ApplyKey, fn: Callable, *, cuda: bool,
            on_mismatch: Callable[[tuple], Exception]) -> Callable:
    """``fn`` behind the input checks for ``key``: same arguments, same result.

    ``on_mismatch(args)`` builds the exception raised when a check fails (args as given).
    Cost per call: the compares, one extra frame. Generated once per (kernel, key).
    """
    import torch

    shapes = expected_shapes(defn, key)
    env: dict[str, Any] = {"FN": fn, "MISMATCH": on_mismatch, "MISSING": _MISSING}
    params, tests = [], []
    for i, (spec, shape) in enumerate(zip(defn.inputs, shapes)):
        a = f"a{i}"
        params.append(f"{a}=MISSING")
        if shape is None:
            tests.append(f"{a} is not MISSING")
            continue
        env[f"D{i}"] = getattr(torch, spec.dtype)
        env[f"S{i}"] = torch.Size(shape)
        tests.append(f"{a}.dtype is D{i} and {a}.shape == S{i} and {a}.is_contiguous() "
                     f"and {a}.is_cuda is {cuda}")
    names = ", ".join(f"a{i}" for i in range(len(shapes)))
    # A non-tensor argument fails an attribute read: that is a mismatch too. The try holds
    # only the compares (free when nothing raises), never the solution's call.
    source = (f"def checked({', '.join(params + ['*extra'])}):\n"
              f"    try:\n"
              f"        ok = not extra and {' and '.join(tests) or 'True'}\n"
              f"    except (AttributeError, TypeError):\n"
              f"        ok = False\n"
              f"    if ok:\n"
              f"        return FN({names})\n"
              f"    raise MISMATCH(tuple(a for a in ({names}{',' if names else ''}) if a is not MISSING) + extra)\n")
    code = compile(source, f"<fibuild input check of {defn.name}>", "exec")
    exec(code, env)  # noqa: S102 - generated from the definition's validated names and dtypes
    return env["checked"]


def mismatch(defn: Definition, args: Sequence[Any], key: ApplyKey | None, *, cuda: bool,
             device: str) -> InputError:
    """The InputError for a call whose ``args`` do not fit ``defn`` (at ``key`` when known).

    Names the first input that differs and says what was expected and what came, then the
    definition's whole signature.
    """
    problem = _first_problem(defn, args, key, cuda=cuda, device=device)
    signature = ", ".join(s.name + (" (scalar)" if s.is_scalar else f" [{', '.join(s.shape)}]")
                          for s in defn.inputs)
    return InputError(f"{problem}; expected inputs ({signature})")


def _first_problem(defn: Definition, args: Sequence[Any], key: ApplyKey | None, *, cuda: bool,
                   device: str) -> str:
    name = defn.name
    want = len(defn.inputs)
    if len(args) != want:
        names = ", ".join(s.name for s in defn.inputs)
        return f"{name}: expected {want} inputs ({names}), got {len(args)}"
    sizes: dict[str, int] = dict(defn.const_axes)
    if key is not None:
        sizes.update(zip(defn.var_axes, key))
    for spec, arg in zip(defn.inputs, args):
        where = f"{name}: input {spec.name!r}"
        if spec.is_scalar:
            if _is_tensor(arg):
                return f"{where} is a scalar ({spec.dtype}); got a tensor"
            continue
        if not _is_tensor(arg):
            return f"{where}: expected a {spec.dtype} tensor, got {type(arg).__name__}"
        declared = "[" + ", ".join(spec.shape) + "]"
        if arg.dim() != len(spec.shape):
            return f"{where}: expected rank {len(spec.shape)} {declared}, got shape {list(arg.shape)}"
        for axis, size in zip(spec.shape, arg.shape):
            if axis in sizes and int(size) != sizes[axis]:
                kind = "const" if axis in defn.const_axes else "var"
                return (f"{where}: axis {axis} ({kind}) must be {sizes[axis]}, got {int(size)} "
                        f"(shape {list(arg.shape)}, declared {declared})")
            sizes.setdefault(axis, int(size))
        dtype = str(arg.dtype).removeprefix("torch.")
        if dtype != spec.dtype:
            return f"{where}: expected dtype {spec.dtype}, got {dtype}"
        if not arg.is_contiguous():
            return (f"{where}: expected a contiguous tensor, got strides {list(arg.stride())} "
                    f"for shape {list(arg.shape)} (call .contiguous())")
        if bool(arg.is_cuda) != cuda:
            return f"{where}: expected a tensor on {device}, got one on {arg.device}"
    return f"{name}: the inputs do not match the definition"


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)
