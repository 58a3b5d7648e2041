"""Compiled code per model and method structure, kept for the most recently used fits only.

``jax.jit(fn, static_argnums=0)`` would keep every compilation for the life of the process: JAX's
caches hold each static argument, its traces and executables (thousands of entries), so a sweep that
builds a model or an optimiser that cannot equal the last (a new ``lambda`` capturing a new number, a
built ``optax.adam(rate)`` per rate) would add compiled code on every call until memory or the
kernel's limit on memory maps runs out.

Here a fit's functions are ``jax.jit(functools.partial(fn, model))``, one set per (model, method tree
structure), held in a least-recently-used table of ``CACHED_FITS`` fits. JAX frees a jitted function's
executables with the function, so when the table drops the oldest fit its compiled code is freed (JAX's
own tracing caches keep small records of it until they, bounded too, drop them). Equal settings (``jaxvi.equality``: a fresh ``Model`` of the same functions, a
fresh ``optax.adam(1e-2)``) find the same entry and compile nothing; numbers are traced leaves of the
method, not part of its structure, so a new learning rate or tolerance finds it too.
"""
from __future__ import annotations

import collections
import functools
import threading
from typing import Any, Callable

import jax

__all__ = ["CACHED_FITS", "cached_fits", "per_fit"]

CACHED_FITS = 16  # (model, method structure) pairs whose compiled code is kept

_fits: collections.OrderedDict = collections.OrderedDict()  # (model, structure) -> {fn: jitted fn}
_lock = threading.Lock()


def per_fit(fn: Callable) -> Callable:
    """``fn(model, method, *args, **kwargs)`` compiled once per model and method structure.

    The call is ``jax.jit(functools.partial(fn, model))(method, *args, **kwargs)``, the jitted function
    taken from the table of recent fits; ``.lower(model, method, ...)`` lowers it ahead of time.
    """
    @functools.wraps(fn)
    def call(model, method, *args, **kwargs):
        return _jitted(fn, model, method)(method, *args, **kwargs)

    call.lower = lambda model, method, *args, **kwargs: _jitted(fn, model, method).lower(method, *args, **kwargs)
    return call


def cached_fits() -> int:
    """How many (model, method structure) pairs hold compiled code now (at most ``CACHED_FITS``)."""
    return len(_fits)


def _jitted(fn: Callable, model: Any, method: Any) -> Callable:
    """The jitted ``fn`` of this fit, made if new; the fit becomes the most recent, the oldest beyond
    ``CACHED_FITS`` are dropped."""
    key = (model, jax.tree_util.tree_structure(method))
    with _lock:
        functions = _fits.pop(key, None) or {}
        _fits[key] = functions
        while len(_fits) > max(CACHED_FITS, 1):
            _fits.popitem(last=False)
        if fn not in functions:
            functions[fn] = jax.jit(functools.partial(fn, model))
        return functions[fn]
