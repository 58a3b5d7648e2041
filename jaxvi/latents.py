"""Latent specifications: what kind of value ``z`` is, and so which exact posterior exists.

A model's ``latent`` is one spec or a pytree of specs (a tuple or dict of several). The spec is
static: it fixes shapes and the E-step algorithm before anything is traced.
"""
from __future__ import annotations

import dataclasses
import operator

import jax

__all__ = ["Discrete", "discrete_sizes"]


@dataclasses.dataclass(frozen=True)
class Discrete:
    """A discrete latent: ``z`` is an integer in ``[0, K)``.

    The exact posterior is found by enumeration: the log-joint is evaluated at every value of
    ``z`` and normalised with ``logsumexp``. A pytree of several ``Discrete`` specs is enumerated
    over the product of their values.

    Args:
      K: the number of values, an integer >= 1.

    Example:
      >>> jaxvi.Discrete(3)
      Discrete(K=3)
    """

    K: int

    def __post_init__(self):
        try:
            size = operator.index(self.K)
        except TypeError:
            raise ValueError(f"Discrete(K): expected an integer >= 1, got {self.K!r}") from None
        if size < 1:
            raise ValueError(f"Discrete(K): expected an integer >= 1, got K={size}")
        object.__setattr__(self, "K", size)


def discrete_sizes(latent) -> tuple[list[int], jax.tree_util.PyTreeDef]:
    """The sizes K of every ``Discrete`` leaf of ``latent`` and the latent's tree structure.

    Raises:
      ValueError: if ``latent`` is empty or a leaf is not a ``Discrete`` spec.
    """
    leaves, treedef = jax.tree_util.tree_flatten(latent, is_leaf=_is_spec)
    if not leaves:
        raise ValueError("latent: expected a Discrete spec or a pytree of them, got an empty pytree")
    for leaf in leaves:
        if not isinstance(leaf, Discrete):
            raise ValueError(
                f"latent: exact enumeration needs Discrete specs, got {type(leaf).__name__}: {leaf!r}"
            )
    return [leaf.K for leaf in leaves], treedef


def _is_spec(node) -> bool:
    return isinstance(node, Discrete)
