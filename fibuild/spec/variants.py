"""Parameter grids of a solution (``variants:``) and the named variants they expand to.

A manifest may declare ``variants: {BLOCK_N: [32, 64], STAGES: [3, 4]}`` and optional
``constraints: ["BLOCK_N * STAGES <= 192"]``. Every combination the constraints keep is a
variant: a Solution named ``triton_stream[BLOCK_N=64,STAGES=3]`` (parameters in grid order)
whose ``constants`` the build passes to the entry point (keyword arguments of a Python or
Triton entry, or of the plan step of a plan/run solution; ``-DNAME=value`` for C++ and
CUDA). Each variant is its own build, evaluation and resolver candidate.

Constraints are expressions over the grid's names: numbers, strings, ``True``/``False``,
arithmetic (``+ - * / // % **``), comparisons, ``and``/``or``/``not``, ``a if c else b``.
They are read with ``ast`` and evaluated here; nothing is imported or called.
"""
from __future__ import annotations

import ast
import dataclasses
import itertools
import operator
import re
from typing import Any, Iterable, Mapping

#: Most variants one grid may expand to (after constraints): each one is a build and a
#: benchmark per workload.
MAX_VARIANTS = 1024
#: A string value must look like this (it may become a ``-D`` define of a native build).
STRING_VALUE = re.compile(r"^[A-Za-z0-9_.+-]+$")
_NAME = re.compile(r"^(?P<base>[^\[\]]+)\[(?P<params>[^\[\]]*)\]$")

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}


def format_value(value: Any) -> str:
    """A constant as it stands in a variant name and a ``-D`` define (``True`` -> ``1``)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def variant_name(base: str, constants: Iterable[tuple[str, Any]]) -> str:
    """``base[K=v,...]`` for the constants in their grid order."""
    return f"{base}[{','.join(f'{k}={format_value(v)}' for k, v in constants)}]"


def split_name(name: str) -> tuple[str, str | None]:
    """``(family, "K=v,...")`` of a variant name; ``(name, None)`` for a plain name."""
    match = _NAME.match(name)
    return (match["base"], match["params"]) if match else (name, None)


def family(name: str) -> str:
    """The solution a variant name belongs to (the name itself when it is no variant)."""
    return split_name(name)[0]


_BAD_STRING = ("{value!r}: a string value takes letters, digits and _ . + - only (it becomes part of a "
               "name and a define)")


class _Refused(ValueError):
    pass


def evaluate(expression: str, names: Mapping[str, Any]) -> Any:
    """The value of a constraint ``expression`` with ``names`` bound; ValueError naming what
    is not allowed or unknown (an unknown name, a call, an attribute...)."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an expression: {exc.msg}") from None
    return _eval(tree.body, names)


def _eval(node: ast.AST, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        if node.id in ("True", "False"):
            return node.id == "True"
        raise _Refused(f"unknown name {node.id!r} (the grid has {', '.join(names) or 'none'})")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, names), _eval(node.right, names)
        if isinstance(node.op, ast.Pow) and isinstance(right, (int, float)) and abs(right) > 64:
            raise _Refused("an exponent above 64")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, names))
    if isinstance(node, ast.BoolOp):
        values = (_eval(v, names) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        left = _eval(node.left, names)
        for op, comparator in zip(node.ops, node.comparators):
            right = _eval(comparator, names)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body if _eval(node.test, names) else node.orelse, names)
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_eval(e, names) for e in node.elts)
    raise _Refused(f"{type(node).__name__} is not allowed (arithmetic, comparisons and "
                   "and/or/not over the grid's names only)")


def grid_combinations(grid: Mapping[str, Iterable[Any]],
                      constraints: Iterable[str]) -> list[tuple[tuple[str, Any], ...]]:
    """Every combination of ``grid`` (in grid order, the last name varying fastest) that
    satisfies every constraint. Raises ValueError naming a constraint that cannot be
    evaluated (``constraints[i] '...': why``)."""
    names = list(grid)
    constraints = list(constraints)
    kept = []
    for values in itertools.product(*(list(grid[n]) for n in names)):
        bound = dict(zip(names, values))
        ok = True
        for i, text in enumerate(constraints):
            try:
                ok = bool(evaluate(text, bound))
            except (ValueError, TypeError, ZeroDivisionError, OverflowError) as exc:
                raise ValueError(f"constraints[{i}] {text!r}: {exc}") from None
            if not ok:
                break
        if ok:
            kept.append(tuple(bound.items()))
    return kept


def check_grid(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems of a schema-valid solution dict's ``variants``, ``constraints`` and
    ``constants``, as ``(json pointer, message)``."""
    grid = data.get("variants")
    constraints = data.get("constraints") or []
    fixed = data.get("constants") or {}
    problems = [(f"/constants/{name}", _BAD_STRING.format(value=value)) for name, value in fixed.items()
                if isinstance(value, str) and not STRING_VALUE.match(value)]
    problems += [(f"/constants/{name}", f"{name!r} is also a name of the variants grid")
                 for name in fixed if name in (grid or {})]
    if not grid:
        return problems + ([("/constraints", "constraints need a variants grid")] if constraints else [])
    for name, values in grid.items():
        for i, value in enumerate(values):
            if isinstance(value, str) and not STRING_VALUE.match(value):
                problems.append((f"/variants/{name}/{i}", _BAD_STRING.format(value=value)))
    size = 1
    for values in grid.values():
        size *= len(values)
    if problems:
        return problems
    if size > MAX_VARIANTS * 64:
        return [("/variants", f"the grid has {size} combinations; at most {MAX_VARIANTS * 64} are "
                 "considered (use fewer values)")]
    try:
        kept = grid_combinations(grid, constraints)
    except ValueError as exc:
        return [("/constraints", str(exc))]
    if not kept:
        return [("/constraints", f"the constraints keep none of the grid's {size} combinations")]
    if len(kept) > MAX_VARIANTS:
        return [("/variants", f"{len(kept)} variants after the constraints; at most {MAX_VARIANTS}")]
    return []


def expand(sol) -> list:
    """The variants of ``sol`` (a Solution with a grid), or ``[sol]`` when it has none. A
    variant's constants are the manifest's ``constants`` then its grid values; its name
    shows the grid values only.

    Raises ValueError when a constraint cannot be evaluated (validation reports it first).
    """
    if not sol.variants:
        return [sol]
    return [dataclasses.replace(sol, name=variant_name(sol.name, combo), constants=sol.constants + combo)
            for combo in grid_combinations(dict(sol.variants), sol.constraints)]
