"""What a function or a function wrapper is made of: the one decomposition that structural equality
(``jaxvi.equality``: which settings share compiled code) and fingerprints (``jaxvi.run.fingerprint``:
which fit a checkpoint holds) both walk.

A Python function is its code, its defaults, the values its closure captured and the values of the
module globals its code (nested functions, lambdas and comprehensions included) reads; where such a value is a
module of the user's own (not of the standard library or an installed package), the values of its attributes
that the code names (``helper.log_joint``, ``helper.SCALE``): a model reaching its code through ``import helper``
changes when ``helper.py`` does. ``functools.partial`` is what it wraps and binds, a bound method its function
and instance.
"""
from __future__ import annotations

import dis
import functools
import os
import sysconfig
import types
from typing import Any, NamedTuple

__all__ = ["EMPTY_CELL", "FunctionParts", "UserModule", "attribute_names", "function_parts", "global_names",
           "is_library_file", "user_module", "wrapper_parts"]

_LIBRARY_DIRS = tuple({os.path.realpath(p) + os.sep for name, p in sysconfig.get_paths().items()
                       if name in ("stdlib", "platstdlib", "purelib", "platlib")})


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
    attributes = attribute_names(fn.__code__)
    closure = tuple(_module_part(_cell_value(cell), attributes, set()) for cell in fn.__closure__ or ())
    kwdefaults = tuple(sorted((fn.__kwdefaults__ or {}).items()))
    names = sorted(global_names(fn.__code__) & fn.__globals__.keys())
    return FunctionParts(fn.__code__, fn.__defaults__, kwdefaults, closure,
                         tuple((name, _module_part(fn.__globals__[name], attributes, set())) for name in names))


class UserModule(NamedTuple):
    """A module of the user's own as a function's global: its name, and its attributes the function's code names,
    ``(name, value)`` pairs sorted by name (a module among them again a ``UserModule``)."""

    name: str
    attributes: tuple


def _module_part(value: Any, attributes: frozenset, seen: set) -> Any:
    """``value``, or for a module of the user's own a ``UserModule`` of its attributes among ``attributes``."""
    if not isinstance(value, types.ModuleType) or not user_module(value) or value.__name__ in seen:
        return value
    seen = seen | {value.__name__}
    named = sorted(name for name in attributes if not name.startswith("__") and hasattr(value, name))
    return UserModule(value.__name__, tuple((name, _module_part(getattr(value, name), attributes, seen))
                                            for name in named))


@functools.lru_cache(maxsize=None)
def is_library_file(filename: str) -> bool:
    """Whether a file belongs to the standard library or an installed package."""
    path = os.path.realpath(filename)
    return path.startswith(_LIBRARY_DIRS) or f"{os.sep}site-packages{os.sep}" in path \
        or f"{os.sep}dist-packages{os.sep}" in path


def user_module(module: types.ModuleType) -> bool:
    """Whether ``module`` is one of the user's own: a Python file outside the standard library and installed
    packages (a built-in or extension module, or a package's, is not; nor is jaxvi's own, whose modules its code
    names as libraries' are, by name)."""
    filename = getattr(module, "__file__", None)
    return (isinstance(filename, str) and filename.endswith(".py") and not is_library_file(filename)
            and module.__name__.partition(".")[0] != "jaxvi")


@functools.lru_cache(maxsize=4096)
def attribute_names(code: types.CodeType) -> frozenset:
    """The names a code object's attribute loads read (``helper.SCALE``'s ``SCALE``), its nested code included."""
    names = {op.argval for op in dis.get_instructions(code) if op.opname in ("LOAD_ATTR", "LOAD_METHOD")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= attribute_names(const)
    return frozenset(names)


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
