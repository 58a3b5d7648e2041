"""Method settings as pytrees: numbers are leaves (traced: a new value does not recompile, and
``jax.vmap`` over them works), everything else is static structure, compared structurally
(``jaxvi.equality``): settings built alike, e.g. each with a fresh ``optax.adam(1e-2)``, have equal
tree structures and reuse the same compiled code."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from jaxvi.equality import Structural

__all__ = ["canonical_number", "check_count", "check_number", "is_concrete", "settings"]


def settings(*numbers: str):
    """Class decorator for a frozen settings dataclass: the fields named in ``numbers`` become
    pytree leaves, the other fields the static part of its tree structure: one ``Structural`` of
    their values, equal when the fields are structurally equal (worked out once per object)."""
    def register(cls):
        static = tuple(f.name for f in dataclasses.fields(cls) if f.name not in numbers)

        def flatten(obj):
            aux = obj.__dict__.get(_STATIC)
            if aux is None:
                aux = Structural(tuple(getattr(obj, name) for name in static))
                object.__setattr__(obj, _STATIC, aux)
            return [getattr(obj, name) for name in numbers], aux

        def unflatten(aux, children):
            obj = object.__new__(cls)  # no __post_init__: the leaves may be tracers
            for name, value in zip(numbers + static, tuple(children) + aux.value):
                object.__setattr__(obj, name, value)
            object.__setattr__(obj, _STATIC, aux)
            return obj

        jax.tree_util.register_pytree_node(cls, flatten, unflatten)
        cls.numbers = numbers
        if numbers:
            cls.__init__ = _with_canonical_numbers(cls.__init__, numbers)
        return cls

    return register


_STATIC = "_static_structure"  # where a settings object keeps its static part, once worked out


def _with_canonical_numbers(init, numbers: tuple[str, ...]):
    """``init`` followed by every number field made canonical (``canonical_number``), after the class's own checks
    (which name a bool or a string as it came)."""
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        for name in numbers:
            object.__setattr__(self, name, canonical_number(getattr(self, name)))
    return __init__


def canonical_number(value: Any) -> Any:
    """A known real scalar (a Python or NumPy int or float, a 0-d array with its value) as a Python float, each of a
    tuple's entries so; anything else (a tracer, an estimator) as it is. A settings number is an argument of the
    compiled programs, whose abstract value is its dtype and weak type: ``tol=0`` (an int), ``tol=np.float64(1e-4)``
    (a strong float32) and ``tol=1e-3`` (a weak float32) compiled three times; as floats they share one program."""
    if isinstance(value, tuple):
        return tuple(canonical_number(v) for v in value)
    if isinstance(value, (bool, np.bool_)) or not is_concrete(value):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, (np.ndarray, jax.Array)) and value.shape == () and (
            np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        return float(value)
    return value


def is_concrete(value) -> bool:
    """Whether a number's value is known now (not a tracer inside jit or vmap)."""
    return not isinstance(value, jax.core.Tracer)


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, optional: bool = False) -> None:
    """Raises ValueError unless ``value`` is a real number (or a traced scalar) in the range."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not (isinstance(value, (int, float, np.number)) or hasattr(value, "dtype")):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if np.shape(value) != ():  # one setting per method: several are a vmap over methods
        raise ValueError(f"{name}: expected a scalar, got shape {np.shape(value)} (for several values, jax.vmap over "
                         f"them)")
    if not is_concrete(value):
        return
    v = float(np.asarray(value))
    ok = np.isfinite(v) or (high is None and v == np.inf)
    ok = ok and (low is None or (v > low if low_open else v >= low)) and (high is None or v <= high)
    if not ok:
        if high is None:
            expected = f"a number {'>' if low_open else '>='} {low:g}" if low is not None else "a finite number"
        else:
            expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


def check_count(name: str, value: Any, *, optional: bool = False) -> None:
    """Raises ValueError unless ``value`` is an integer >= 1 (a size: static)."""
    if value is None and optional:
        return
    if not is_concrete(value):
        raise ValueError(f"{name}: expected an integer >= 1 known when the method is built, got a traced value "
                         f"({type(value).__name__} of {value.aval.str_short()}): a size shapes the compiled program, "
                         f"so it cannot be an argument of jit or vmap; build one method per size in Python")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
