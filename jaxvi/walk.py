"""What a function or a function wrapper is made of: the one decomposition that structural equality
(``jaxvi.equality``: which settings share compiled code) and fingerprints (``jaxvi.run.fingerprint``:
which fit a checkpoint holds) both walk.

A Python function is its code, its defaults, the values its closure captured and the values of the
module globals its code (nested functions, lambdas and comprehensions included) reads;
``functools.partial`` is what it wraps and binds, a bound method its function and instance.
"""
from __future__ import annotations

import dis
import functools
import types
from typing import Any, NamedTuple

__all__ = ["EMPTY_CELL", "FunctionParts", "function_parts", "global_names", "wrapper_parts"]


class _EmptyCell:
    """Stands for an empty closure cell (a name its function never assigned); compared as a class."""


EMPTY_CELL = _EmptyCell


class FunctionParts(NamedTuple):
    """A Python function's parts: ``globals`` as ``(name, value)`` pairs sorted by name,
    ``kwdefaults`` as sorted ``(name, value)`` pairs, ``closure`` the captured values in order."""

    code: types.CodeType
    defaults: tuple | None
    kwdefaults: tuple
    closure: tuple
    globals: tuple


def function_parts(fn: types.FunctionType) -> FunctionParts:
    """The parts of ``fn`` (see the module docstring)."""
    closure = tuple(_cell_value(cell) for cell in fn.__closure__ or ())
    kwdefaults = tuple(sorted((fn.__kwdefaults__ or {}).items()))
    names = sorted(global_names(fn.__code__) & fn.__globals__.keys())
    return FunctionParts(fn.__code__, fn.__defaults__, kwdefaults, closure,
                         tuple((name, fn.__globals__[name]) for name in names))


def wrapper_parts(value: Any) -> tuple | None:
    """``(func, args, sorted keywords)`` of a ``functools.partial``, ``(func, instance)`` of a bound
    method, None for anything else."""
    if isinstance(value, functools.partial):
        return value.func, value.args, tuple(sorted(value.keywords.items()))
    if isinstance(value, types.MethodType):
        return value.__func__, value.__self__
    return None


@functools.lru_cache(maxsize=4096)
def global_names(code: types.CodeType) -> frozenset:
    """The global names a code object reads, its nested lambdas, functions and comprehensions included
    (the arguments of its global loads; attribute names such as ``jax.scipy.stats.norm``'s are not)."""
    names = {op.argval for op in dis.get_instructions(code) if op.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= global_names(const)
    return frozenset(names)


def _cell_value(cell) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return EMPTY_CELL
