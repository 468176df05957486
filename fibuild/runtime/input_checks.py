"""Input checks at dispatch: a call whose inputs do not match the definition raises.

What a solution may assume, once a call reaches it through ``fibuild.load``: exactly the
definition's inputs, in order; every tensor input has the declared dtype and rank, the
const axes' sizes, var axes equal across the inputs that share them, is contiguous
(row-major, dense, strided layout), holds its values as they read (no lazy negation:
``x._neg_view()`` is refused, since a kernel reading the memory would compute with ``x``;
conjugate views cannot reach a kernel, fibuild's dtypes being real; torch code resolves a
negative view by itself, so Python solutions and the reference receive one) and lives on the
kernel's device type (CPU tensors for a ``cpu`` kernel, CUDA tensors for a ``cuda`` one;
a meta tensor is neither, a nested tensor has no single shape). Scalars are not tensors.
An ``out=`` tensor must have the output's dtype and shape, be contiguous, a plain view and on
the kernel's device (:func:`out_check`), since a destination-passing kernel writes into it.

Per key, :func:`guarded` generates one function that checks all of that and calls the
solution; the check is a chain of attribute compares (``dtype is``, ``shape ==``,
``is_contiguous()``, ``is_cpu``/``is_cuda``, and ``is_neg()`` for native and Triton
solutions), about 0.2 µs per tensor input.
Only a failed check pays for :func:`mismatch`, which names the first input that differs,
what was expected and what came.
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
            on_mismatch: Callable[[tuple], Exception], reads_memory: bool = True) -> Callable:
    """``fn`` behind the input checks for ``key``: same arguments, same result.

    ``on_mismatch(args)`` builds the exception raised when a check fails (args as given).
    ``reads_memory``: ``fn`` reads tensors' memory itself (native and Triton solutions), so a
    negative view is refused; torch code (Python solutions, the reference) resolves one by
    itself, and skips that check. Cost per call: the compares, one extra frame. Generated
    once per (kernel, key).
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
        # is_cpu / is_cuda: both False for a meta tensor. A nested tensor's shape raises.
        tests.append(f"{a}.dtype is D{i} and {a}.shape == S{i} and {a}.is_contiguous() "
                     f"and {a}.{'is_cuda' if cuda else 'is_cpu'}" + (f" and not {a}.is_neg()" if reads_memory else ""))
    names = ", ".join(f"a{i}" for i in range(len(shapes)))
    # A non-tensor argument fails an attribute read: that is a mismatch too. The try holds
    # only the compares (free when nothing raises), never the solution's call.
    source = (f"def checked({', '.join(params + ['*extra'])}):\n"
              f"    try:\n"
              f"        ok = not extra and {' and '.join(tests) or 'True'}\n"
              f"    except (AttributeError, TypeError, RuntimeError):\n"
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
        odd = _odd_tensor(arg)
        if odd:
            return f"{where}: {odd}"
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


def _odd_tensor(arg: Any) -> str:
    """What makes tensor ``arg`` unfit for any kernel whatever its shape ("" when nothing)."""
    if arg.is_nested:
        return "is a nested tensor (no single shape); pass a dense tensor"
    if arg.is_meta:
        return "is a meta tensor (no data); pass a tensor on the kernel's device"
    if arg.layout is not _strided():
        return f"has layout {arg.layout}; pass a dense (strided) tensor (call .to_dense())"
    if arg.is_neg():
        return "is a negative view (its memory holds -x); call .resolve_neg() first"
    if arg.is_conj():
        return "is a conjugate view; call .resolve_conj() first"
    return ""


def out_check(defn: Definition, key: ApplyKey, *, cuda: bool, device: str) -> Callable[[Any], None]:
    """A function raising InputError unless ``out`` fits the non-in-place outputs at ``key``:
    one tensor (or a tuple/list of them, one per output), each with the declared dtype and
    exact shape, contiguous, a plain view, on the kernel's device type. Made once per key;
    runs only on calls that pass ``out=``."""
    import torch

    sizes = dict(defn.const_axes)
    sizes.update(zip(defn.var_axes, key))
    fresh = [o for o in defn.outputs if not o.inplace]
    wants = [(o.name, getattr(torch, o.dtype), torch.Size([int(sizes[a]) for a in o.shape or ()])) for o in fresh]

    def check(out) -> None:
        given = list(out) if isinstance(out, (tuple, list)) else [out]
        if len(given) != len(wants):
            raise InputError(f"{defn.name}: out= takes {len(wants)} tensor(s) "
                             f"({', '.join(n for n, _, _ in wants)}), got {len(given)}")
        for (name, dtype, shape), tensor in zip(wants, given):
            where = f"{defn.name}: out= for output {name!r}"
            if not _is_tensor(tensor):
                raise InputError(f"{where}: expected a tensor, got {type(tensor).__name__}")
            odd = _odd_tensor(tensor)
            if odd:
                raise InputError(f"{where} {odd}")
            if tensor.dtype is not dtype:
                raise InputError(f"{where}: expected dtype {str(dtype).removeprefix('torch.')}, "
                                 f"got {str(tensor.dtype).removeprefix('torch.')}")
            if tensor.shape != shape:
                raise InputError(f"{where}: expected shape {list(shape)}, got {list(tensor.shape)}")
            if not tensor.is_contiguous():
                raise InputError(f"{where}: expected a contiguous tensor, got strides {list(tensor.stride())}")
            if bool(tensor.is_cuda) != cuda or tensor.is_meta:
                raise InputError(f"{where}: expected a tensor on {device}, got one on {tensor.device}")

    return check


def _strided():
    import torch

    return torch.strided


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)
