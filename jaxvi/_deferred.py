"""Modules imported at their first use, not with ``import jaxvi``: distrax and TensorFlow Probability's JAX substrate
(distrax imports it), 0.5-0.7 s of the 0.8-0.9 s that ``import jaxvi`` took after JAX itself (2-core CPU). Guides and
bijectors (SVI, amortized encoders), the zoo's Gaussian densities and CAVI's fitted factors as distributions use
them; CAVI's fits do not.
"""
from __future__ import annotations

import importlib
import types


class _Deferred(types.ModuleType):
    """A module imported when an attribute is first read from it (``distrax.Lambda``)."""

    def __getattr__(self, name: str):
        return getattr(importlib.import_module(self.__name__), name)


distrax = _Deferred("distrax")
tfd = _Deferred("tensorflow_probability.substrates.jax.distributions")
