"""Fingerprints of Python values: a digest that is the same in every process for the same code and
constants, and differs when either differs. Checkpoints use them to resume only their own fit.

``digest(value)`` is a SHA-256 over a canonical walk of the value:

- ``None``, booleans, numbers, strings and bytes: their type and value.
- numpy and JAX arrays and numpy scalars: dtype, shape and bytes; PRNG keys: implementation and key data.
- tuples, lists, dicts, sets, NamedTuples, dataclasses (their fields), objects with ``__dict__`` or
  ``__slots__``: their type's name and their contents (dict items and set members in a sorted order).
- a function written outside installed packages (a user's model, jaxvi's zoo): its parts as
  ``jaxvi.walk.function_parts`` gives them (the decomposition structural equality walks too): its
  bytecode, constants (nested functions' code recursively) and the names it uses, its defaults, the
  values in its closure, and the values of the globals its code reads (modules by name, functions
  recursively).
- a function of an installed package or of the standard library (``optax.adam``, ``jnp.tanh``): its
  module and qualified name, defaults and closure values, not its code: ``optax.adam(1e-2)`` and
  ``optax.adam(1e-1)`` differ, upgrading optax does not change a fingerprint.
- ``functools.partial``, bound methods, ``jax.jit`` and ``custom_jvp`` wrappers: what they wrap and bind
  (a wrapper's public attributes: a ``custom_jvp``'s rule; not ``jit``'s options).
- classes and modules: their qualified names.
- anything else: its type and ``repr``, memory addresses removed.

A value met twice in one walk is hashed the second time as a reference to the first (cycles end);
values nested deeper than 200 levels are hashed by their type alone.

Limits: source positions, local variable names and a function's own name are not hashed (moving or
renaming code keeps its fingerprint); a class is hashed by name, not by its methods' code; code run
through another route (``eval`` of a string a function builds at run time, a C extension) is hashed only
by what the function object exposes; a global looked up by a name built at run time is not seen.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import sysconfig
import types
from typing import Any

import jax
import numpy as np

from jaxvi.walk import function_parts, wrapper_parts

__all__ = ["digest"]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_MAX_DEPTH = 200  # nesting levels walked (well under Python's recursion limit)
_LIBRARY_DIRS = tuple({os.path.realpath(p) + os.sep for name, p in sysconfig.get_paths().items()
                       if name in ("stdlib", "platstdlib", "purelib", "platlib")})


def digest(value: Any) -> str:
    """The hex SHA-256 fingerprint of ``value`` (see the module docstring for what it covers)."""
    walk = _Walk()
    walk.value(value)
    return walk.hash.hexdigest()


class _Walk:
    """One walk over a value, feeding a hash with (tag, bytes) tokens."""

    def __init__(self):
        self.hash = hashlib.sha256()
        self.seen: dict[int, int] = {}
        self.alive: list = []  # keeps visited objects alive so their ids stay unique during the walk
        self.depth = 0

    def token(self, tag: str, payload: bytes | str = b"") -> None:
        payload = payload.encode() if isinstance(payload, str) else payload
        self.hash.update(tag.encode() + b":" + len(payload).to_bytes(8, "little") + payload)

    def value(self, value: Any) -> None:
        if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
            self.token(type(value).__name__, repr(value))
            return
        if id(value) in self.seen:
            self.token("ref", str(self.seen[id(value)]))
            return
        self.seen[id(value)] = len(self.seen)
        self.alive.append(value)
        if self.depth >= _MAX_DEPTH:  # an object that makes new objects on every attribute access ends here
            self.token("too deep", _type_name(value))
            return
        self.depth += 1
        self._compound(value)
        self.depth -= 1

    def _compound(self, value: Any) -> None:
        if isinstance(value, (np.ndarray, np.generic, jax.Array)):
            self._array(value)
        elif isinstance(value, types.ModuleType):
            self.token("module", value.__name__)
        elif isinstance(value, type):
            self.token("class", f"{value.__module__}.{value.__qualname__}")
        elif isinstance(value, types.FunctionType):
            self._function(value)
        elif isinstance(value, types.CodeType):
            self._code(value)
        elif wrapper_parts(value) is not None:  # functools.partial, a bound method
            self._parts(f"wrapper {_type_name(value)}", *wrapper_parts(value))
        elif isinstance(value, (types.BuiltinFunctionType, np.ufunc)):
            self.token("builtin", f"{getattr(value, '__module__', None)}.{getattr(value, '__qualname__', value.__name__)}")
        elif isinstance(value, (list, tuple)):
            self.token(f"sequence {_type_name(value)}", str(len(value)))
            for item in value:
                self.value(item)
        elif isinstance(value, dict):
            self._items(f"dict {_type_name(value)}", list(value.items()))
        elif isinstance(value, (set, frozenset)):
            self._items(f"set {_type_name(value)}", [(item, None) for item in value])
        elif dataclasses.is_dataclass(value):
            self._parts(f"dataclass {_type_name(value)}",
                        *[(f.name, getattr(value, f.name, None)) for f in dataclasses.fields(value)])
        elif hasattr(value, "__wrapped__") and callable(value):  # jax.jit, custom_jvp, functools.wraps
            public = {name: v for name, v in _attributes(value).items() if not name.startswith("_")}
            self._parts(f"wrapper {_type_name(value)}", value.__wrapped__)
            self._items("public attributes", list(public.items()))  # a custom_jvp's rule, ...
        elif hasattr(value, "__dict__") or hasattr(type(value), "__slots__"):
            self._items(f"object {_type_name(value)}", list(_attributes(value).items()))
        else:
            self.token(f"repr {_type_name(value)}", _ADDRESS.sub("", _repr(value)))

    def _parts(self, tag: str, *parts: Any) -> None:
        self.token(tag, str(len(parts)))
        for part in parts:
            self.value(part)

    def _items(self, tag: str, items: list) -> None:
        """Dict items or set members, in the order of their keys' own digests (independent of insertion
        order and of string hash randomisation)."""
        self.token(tag, str(len(items)))
        for key, item in sorted(items, key=lambda kv: digest(kv[0])):
            self.value(key)
            self.value(item)

    def _array(self, value) -> None:
        if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            self.token("key", str(jax.random.key_impl(value)))
            value = jax.random.key_data(value)
        array = np.ascontiguousarray(np.asarray(value))
        self.token("array", f"{array.dtype.str} {array.shape}")
        self.token("bytes", hashlib.sha256(array.tobytes()).digest())

    def _function(self, fn: types.FunctionType) -> None:
        parts = function_parts(fn)
        if _is_library(fn.__code__.co_filename):
            self._parts("library function", f"{fn.__module__}.{fn.__qualname__}", parts.defaults, parts.kwdefaults,
                        parts.closure)
            return
        self._parts("function", *parts)

    def _code(self, code: types.CodeType) -> None:
        self.token("code", f"{code.co_argcount} {code.co_posonlyargcount} {code.co_kwonlyargcount} {code.co_flags}")
        self.token("bytecode", code.co_code)
        self.token("names", " ".join(code.co_names))
        self.value(code.co_consts)


def _type_name(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # a repr that fails: the type alone
        return "<no repr>"


def _attributes(value: Any) -> dict:
    attributes = dict(getattr(value, "__dict__", {}))
    for name in getattr(type(value), "__slots__", ()):
        if hasattr(value, name):
            attributes[name] = getattr(value, name)
    return attributes


@functools.lru_cache(maxsize=None)
def _is_library(filename: str) -> bool:
    """Whether code comes from the standard library or an installed package (not from the user's files)."""
    path = os.path.realpath(filename)
    return path.startswith(_LIBRARY_DIRS) or f"{os.sep}site-packages{os.sep}" in path \
        or f"{os.sep}dist-packages{os.sep}" in path or filename.startswith("<frozen")
