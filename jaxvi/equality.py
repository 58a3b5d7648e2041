"""When two settings are the same: structural equality, so that equal settings reuse compiled code.

``infer`` compiles a fit once per model and method structure: JAX finds compiled code by ``==`` and
``hash`` on the model and on a method's non-number fields (optimiser, guide, M-step...). Python
compares functions by identity, so a fresh ``optax.adam(1e-2)`` (a tuple of new closures) or a fresh
``Model`` of a fresh ``lambda`` would never match, and a loop that builds them would compile on every
call. ``key(value)`` compares them by what they are instead:

- ``None``, booleans, numbers, strings, bytes, numpy scalars and dtypes: by type and value (floats by
  ``repr``: ``-0.0`` and ``0.0`` differ, ``nan`` matches ``nan``);
- tuples (NamedTuples among them: an optax ``GradientTransformation``), lists and dicts: by type and
  items, in order; numpy arrays: by dtype, shape and a digest of their bytes;
- frozen dataclasses (``Model``, latent specs, guides, estimators): by type and fields;
- Python functions: by their code (the same code object: the same ``def`` or ``lambda`` of the same
  run of its source, however often it is evaluated), their defaults, the values their closures
  captured and the values of the module globals their code names; ``functools.partial`` and bound
  methods by what they wrap and bind (``jaxvi.walk``: the decomposition fingerprints walk too);
- values taken as fixed: JAX arrays (immutable), jitted functions, JAX's custom-derivative functions
  and ufuncs, builtins, classes, modules, code: by identity.

Each part is compared by the same rules, as it is when the key is made: a model or a method makes
its key once, when a fit first looks it up, just before its code is traced, so a key always describes
the values its compiled code was traced with. Any other object (of a class not listed) could change
in place without its key changing, so a value holding one anywhere inside it is compared by identity
as a whole, as Python would. Equal keys thus mean the same code run on the same values, and either
value's compiled code serves the other.

Example:
  >>> key(optax.adam(1e-2)) == key(optax.adam(1e-2)), key(optax.adam(1e-2)) == key(optax.adam(1e-3))
  (True, False)
"""
from __future__ import annotations

import dataclasses
import hashlib
import types
from typing import Any, Hashable

import jax
import jax.numpy as jnp
import numpy as np

from jaxvi.walk import function_parts, is_library_file, wrapper_parts

__all__ = ["Structural", "key"]

_VALUES = (type(None), bool, int, str, bytes)
_IMMUTABLE = (jax.Array, type(jax.jit(abs)), jax.custom_jvp, jax.custom_vjp, jnp.ufunc, np.ufunc,
              types.BuiltinFunctionType, types.ModuleType, types.CodeType, type)


def key(value: Any) -> Hashable:
    """A hashable key of ``value`` under the rules above: equal keys, interchangeable values."""
    try:
        return _key(value, set())
    except _Mutable:
        return _Identity(value)


class Structural:
    """A tuple of values whose ``==`` and ``hash`` follow their ``key``s, item by item.

    Method settings put their static fields in their pytree structure as one of these, so that equal
    settings give equal tree structures (``jax.tree_util.tree_structure``).
    """

    __slots__ = ("value", "_key")

    def __init__(self, value: tuple):
        self.value = value
        self._key = tuple(key(item) for item in value)

    def __eq__(self, other) -> bool:
        return isinstance(other, Structural) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"Structural({self.value!r})"


class _Identity:
    """An object compared and hashed by identity (held alive, so its id is not reused)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other) -> bool:
        return isinstance(other, _Identity) and self.obj is other.obj

    def __hash__(self) -> int:
        return id(self.obj)


class _Mutable(Exception):
    """Raised inside the walk on meeting an object that could change in place unseen by its key."""


def _key(value: Any, walking: set) -> Hashable:
    """``key``'s walk; ``walking`` holds the ids of the compound values being walked (one met again
    inside itself, a recursive function, is compared by identity)."""
    if isinstance(value, _VALUES):
        return type(value), value
    if isinstance(value, (float, complex)):
        return type(value), repr(value)
    if isinstance(value, np.generic):
        return type(value), value.tobytes()
    if isinstance(value, np.dtype):
        return np.dtype, value
    if isinstance(value, np.ndarray) and not value.dtype.hasobject:
        digest = hashlib.blake2b(np.ascontiguousarray(value).tobytes(), digest_size=32).digest()
        return np.ndarray, value.dtype, value.shape, digest
    if isinstance(value, _IMMUTABLE) or id(value) in walking or _library_function(value):
        return _Identity(value)
    parts = _parts(value)
    if parts is None:
        raise _Mutable
    walking.add(id(value))
    try:
        return (type(value), *(_key(part, walking) for part in parts))
    finally:
        walking.discard(id(value))


def _library_function(value: Any) -> bool:
    """A function an installed package or the standard library defines at its module's level (no closure, such as
    ``jax.scipy.special.multigammaln``): fixed, so compared by identity, not walked (its globals may hold objects
    that would make every value holding it compare by identity). A library's closures (``optax.adam(1e-2)``'s)
    are walked: their captured values tell them apart."""
    return (isinstance(value, types.FunctionType) and value.__closure__ is None
            and is_library_file(value.__code__.co_filename))


def _parts(value: Any) -> tuple | None:
    """What a compound value is made of, or None for an object of another kind."""
    if type(value) in (tuple, list) or (isinstance(value, tuple) and hasattr(type(value), "_fields")):
        return tuple(value)
    if type(value) is dict:
        return tuple(value.items())
    if dataclasses.is_dataclass(value) and value.__dataclass_params__.frozen:
        return tuple(getattr(value, f.name) for f in dataclasses.fields(value))
    if isinstance(value, types.FunctionType):
        return tuple(function_parts(value))
    return wrapper_parts(value)
