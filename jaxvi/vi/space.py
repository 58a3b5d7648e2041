r"""The unconstrained space variational guides live on, and the bijectors onto constrained supports.

A continuous latent (a ``Real`` spec, a ``Gaussian`` one, or a pytree of them) is flattened into
one unconstrained vector :math:`u \in \mathbb{R}^D`. ``LatentSpace.constrain(u)`` maps it back
to the latent's pytree ``z`` through each leaf's bijector and returns
:math:`\log |\det \partial z / \partial u|`, which the ELBO adds to :math:`\log p(x, z)` so that
it is the density of u that the guide approximates:

.. math:: \log p(x, u) = \log p(x, z(u)) + \log |\det J_z(u)|.

The bijectors here have distrax's interface (``forward_and_log_det``); any distrax bijector that
keeps the shape works as well. ``simplex()`` changes it: K - 1 unconstrained values give a point
of the K-simplex.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvi._deferred import distrax
from jaxvi.latents import Discrete, Gaussian, Markov, Real, is_spec

__all__ = ["LatentSpace", "Ordered", "Positive", "Interval", "Simplex", "interval", "latent_space", "ordered",
           "positive", "simplex", "unconstrain"]

PyTree = Any


class _Distrax:
    """``forward_and_log_det`` / ``inverse`` of the distrax bijector that ``as_distrax()`` builds.

    The constructors return frozen dataclasses rather than distrax objects because a ``Model`` is a
    static argument of ``jit``: equal settings must give equal, hashable specs (distrax bijectors
    compare by identity), or every ``jaxvi.positive()`` would compile anew.
    """

    def as_distrax(self) -> distrax.Bijector:
        raise NotImplementedError

    def forward_and_log_det(self, u):
        return self.as_distrax().forward_and_log_det(u)

    def inverse(self, z):
        return self.as_distrax().inverse(z)

    def unconstrained_shape(self, shape: tuple) -> tuple:
        return shape


@dataclasses.dataclass(frozen=True)
class Positive(_Distrax):
    r""":math:`z = \exp(u) > 0` elementwise; :math:`\log|\det J| = \sum u`."""

    def as_distrax(self) -> distrax.Bijector:
        # distrax has no Exp bijector; a Lambda with the exact log-det (autodiff would give log(exp(u)), inf for large u)
        return distrax.Lambda(jnp.exp, jnp.log, forward_log_det_jacobian=lambda u: u, event_ndims_in=0)


@dataclasses.dataclass(frozen=True)
class Interval(_Distrax):
    r""":math:`z = a + (b - a)\,\sigma(u) \in (a, b)` elementwise."""

    low: float
    high: float

    def as_distrax(self) -> distrax.Bijector:
        return distrax.Chain([distrax.ScalarAffine(shift=self.low, scale=self.high - self.low), _sigmoid()])


@dataclasses.dataclass(frozen=True)
class Ordered:  # by hand: distrax has no ordered bijector
    r"""An increasing vector: :math:`z_0 = u_0`, :math:`z_k = z_{k-1} + \exp(u_k)`; :math:`\log|\det J| = \sum_{k \ge 1} u_k`."""

    def forward_and_log_det(self, u):
        z = jnp.cumsum(jnp.concatenate([u[..., :1], jnp.exp(u[..., 1:])], axis=-1), axis=-1)
        return z, jnp.sum(u[..., 1:], axis=-1)

    def inverse(self, z):
        return jnp.concatenate([z[..., :1], jnp.log(jnp.diff(z, axis=-1))], axis=-1)

    def unconstrained_shape(self, shape: tuple) -> tuple:
        return shape


@dataclasses.dataclass(frozen=True)
class Simplex:  # by hand: distrax has no stick-breaking bijector
    r"""Stick-breaking onto the K-simplex from :math:`u \in \mathbb{R}^{K-1}`.

    With :math:`v_k = \sigma(u_k - \log(K - 1 - k))` (so u = 0 is the uniform point),
    :math:`z_k = v_k \prod_{j<k} (1 - v_j)` for k < K - 1 and :math:`z_{K-1} = \prod_j (1 - v_j)`;
    :math:`\log|\det J| = \sum_k \log v_k + \log(1 - v_k) + \log \prod_{j<k}(1 - v_j)`.
    """

    def forward_and_log_det(self, u):
        k = u.shape[-1]
        shifted = u - jnp.log(jnp.arange(k, 0, -1, dtype=u.dtype))
        log_v, log_1mv = jax.nn.log_sigmoid(shifted), jax.nn.log_sigmoid(-shifted)
        log_remaining = jnp.cumsum(log_1mv, axis=-1)                      # log prod_{j<=k} (1 - v_j)
        log_before = jnp.concatenate([jnp.zeros_like(log_v[..., :1]), log_remaining[..., :-1]], axis=-1)
        z = jnp.concatenate([jnp.exp(log_v + log_before), jnp.exp(log_remaining[..., -1:])], axis=-1)
        return z, jnp.sum(log_v + log_1mv + log_before, axis=-1)

    def inverse(self, z):
        k = z.shape[-1] - 1
        remaining = 1.0 - jnp.concatenate([jnp.zeros_like(z[..., :1]), jnp.cumsum(z[..., :-2], axis=-1)], axis=-1)
        v = z[..., :-1] / remaining
        return jnp.log(v) - jnp.log1p(-v) + jnp.log(jnp.arange(k, 0, -1, dtype=z.dtype))

    def unconstrained_shape(self, shape: tuple) -> tuple:
        if not shape or shape[-1] < 2:
            raise ValueError(f"Real(bijector=simplex()): expected a shape (..., K) with K >= 2, got {shape}")
        return shape[:-1] + (shape[-1] - 1,)


def _sigmoid() -> distrax.Bijector:
    """The exact logistic sigmoid. distrax.Sigmoid is not used: below u = -9 its forward is exp(u) (relative error up
    to 1.2e-4, and inconsistent with its own log-det and inverse), which would move z near an interval's lower end."""
    return distrax.Lambda(jax.nn.sigmoid, lambda p: jnp.log(p) - jnp.log1p(-p),
                          forward_log_det_jacobian=lambda u: jax.nn.log_sigmoid(u) + jax.nn.log_sigmoid(-u),
                          event_ndims_in=0)


def _inverse(bijector, z):
    """The unconstrained value of z: the bijector's ``inverse`` (distrax: ``inverse``)."""
    if not hasattr(bijector, "inverse"):
        raise ValueError(f"{bijector!r} has no inverse; log densities of constrained values need one")
    return bijector.inverse(z)


def positive() -> Positive:
    """The bijector onto z > 0 (exp)."""
    return Positive()


def interval(low: float, high: float) -> Interval:
    """The bijector onto low < z < high (a scaled sigmoid)."""
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"interval(low, high): expected finite low < high, got ({low}, {high})")
    return Interval(float(low), float(high))


def ordered() -> Ordered:
    """The bijector onto increasing vectors."""
    return Ordered()


def simplex() -> Simplex:
    """The bijector onto the probability simplex (stick-breaking), for ``Real((K,), bijector=simplex())``."""
    return Simplex()


class LatentSpace(NamedTuple):
    """How a continuous latent is flattened into one unconstrained vector (static: no arrays).

    Attributes:
      treedef: the latent's pytree structure.
      shapes: every leaf's constrained shape.
      unconstrained_shapes: every leaf's unconstrained shape.
      bijectors: every leaf's bijector (None: identity).
      dim: the length D of the unconstrained vector.
    """

    treedef: Any
    shapes: tuple
    unconstrained_shapes: tuple
    bijectors: tuple
    dim: int

    def constrain(self, u: jax.Array) -> tuple[PyTree, jax.Array]:
        r"""``(z, log_det)``: the latent pytree at the unconstrained ``(D,)`` vector u, and
        :math:`\log|\det \partial z / \partial u|` (a scalar)."""
        leaves, log_det, start = [], jnp.zeros((), u.dtype), 0
        for shape, free_shape, bijector in zip(self.shapes, self.unconstrained_shapes, self.bijectors):
            size = math.prod(free_shape)
            free = u[start:start + size].reshape(free_shape)
            start += size
            if bijector is None:
                leaves.append(free)
                continue
            z, leaf_log_det = bijector.forward_and_log_det(free)
            leaves.append(jnp.reshape(z, shape))
            log_det = log_det + jnp.sum(leaf_log_det)
        return jax.tree_util.tree_unflatten(self.treedef, leaves), log_det


def unconstrain(space: LatentSpace, z: PyTree) -> jax.Array:
    """The ``(D,)`` unconstrained vector of a latent value ``z`` (the inverse of ``constrain``)."""
    parts = []
    for leaf, bijector, free_shape in zip(space.treedef.flatten_up_to(z), space.bijectors, space.unconstrained_shapes):
        free = leaf if bijector is None else _inverse(bijector, leaf)
        parts.append(jnp.reshape(free, (math.prod(free_shape),)))
    return jnp.concatenate(parts)


def latent_space(latent) -> LatentSpace:
    """The unconstrained space of a ``Real`` / ``Gaussian`` spec or a pytree of them.

    Raises:
      ValueError: a leaf that is not a continuous spec.
    """
    leaves, treedef = jax.tree_util.tree_flatten(latent, is_leaf=is_spec)
    shapes, free_shapes, bijectors = [], [], []
    for leaf in leaves:
        if isinstance(leaf, Gaussian):
            leaf = Real((leaf.d,))
        if isinstance(leaf, (Discrete, Markov)):
            raise ValueError(f"latent: expected Real or Gaussian specs for a continuous guide, got {leaf!r}, a "
                             f"discrete latent: fit it by jaxvi.EM (its exact posterior), or by jaxvi.SVI, which sums "
                             f"it out exactly (discrete='enumerate'; a Markov chain always)")
        if not isinstance(leaf, Real):
            raise ValueError(f"latent: expected Real or Gaussian specs for a continuous guide, got {leaf!r} (an "
                             f"exponential-family factor of jaxvi.CAVI; for SVI write it as a Real with a bijector: "
                             f"jaxvi.positive(), jaxvi.interval(0, 1), jaxvi.simplex())")
        shapes.append(leaf.shape)
        bijector = leaf.bijector
        free = bijector.unconstrained_shape(leaf.shape) if hasattr(bijector, "unconstrained_shape") else leaf.shape
        free_shapes.append(tuple(free))
        bijectors.append(bijector)
    dim = sum(math.prod(shape) for shape in free_shapes)
    if dim == 0:
        raise ValueError(f"latent: expected at least one continuous value, got {latent!r}")
    return LatentSpace(treedef, tuple(shapes), tuple(free_shapes), tuple(bijectors), dim)
