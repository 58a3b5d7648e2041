r"""Variational families q_ψ(u) over the unconstrained latent vector :math:`u \in \mathbb{R}^D`.

A guide is a frozen dataclass of settings (hashable: static under ``jit``) with pure functions of
its parameters ψ (a pytree):

- ``init(key, dim, dtype) -> params``
- ``sample_and_log_prob(params, key, n) -> (u (n, D), log q(u) (n,))``, reparameterised (the
  sample is a differentiable function of ψ) unless ``reparameterized`` is False
- ``log_prob(params, u)``, ``entropy(params)`` (None where no closed form exists),
  ``mean(params)`` and ``stddev(params)`` of u.

For local latents jaxvi keeps one ψ per datum, stacked on a leading axis, and vmaps these
functions over it. The densities come from distrax distributions built from ψ.

Scales are parameterised through softplus, :math:`\sigma = \log(1 + e^{\rho})`, and start at
``init_scale``; locations start at 0 (so a bijector's image of 0: 1 for a positive latent, the
midpoint of an interval, the uniform point of a simplex).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvi._deferred import distrax
from jaxvi.linalg import spd_log_det
from jaxvi.nn import mlp_apply, mlp_init

__all__ = ["Categorical", "Delta", "Flow", "FullRank", "LowRank", "MeanField", "is_guide"]

PyTree = Any


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: expected a number > 0, got {value!r}")
    return float(value)


class _FromDistribution:
    """Guides whose ``distribution(params)`` (distrax) does the sampling and the densities."""

    point_mass = False
    has_entropy = True

    def sample_and_log_prob(self, params: PyTree, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        return self.distribution(params).sample_and_log_prob(seed=key, sample_shape=(n,))

    def log_prob(self, params: PyTree, u: jax.Array) -> jax.Array:
        return self.distribution(params).log_prob(u)

    def entropy(self, params: PyTree) -> jax.Array:
        return self.distribution(params).entropy()


class _Gaussian(_FromDistribution):
    """The Gaussian families: reparameterised, their mean is ``loc``."""

    reparameterized = True

    def mean(self, params: PyTree) -> jax.Array:
        return params["loc"]

    def stddev(self, params: PyTree) -> jax.Array:
        return self.distribution(params).stddev()


@dataclasses.dataclass(frozen=True)
class MeanField(_Gaussian):
    r"""Independent Normals, :math:`q(u) = \prod_d N(u_d; \mu_d, \sigma_d^2)` (NumPyro's AutoNormal).

    Args:
      init_scale: the starting :math:`\sigma_d`.
    """

    init_scale: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "init_scale", _positive_float("MeanField(init_scale)", self.init_scale))

    def init(self, key: jax.Array, dim: int, dtype=jnp.float32) -> PyTree:
        return {"loc": jnp.zeros(dim, dtype), "scale": jnp.full(dim, _inverse_softplus(self.init_scale), dtype)}

    def distribution(self, params: PyTree) -> distrax.Distribution:
        return distrax.MultivariateNormalDiag(params["loc"], jax.nn.softplus(params["scale"]))


@dataclasses.dataclass(frozen=True)
class FullRank(_Gaussian):
    r"""A correlated Normal, :math:`q(u) = N(\mu, L L^\top)` with L lower triangular (NumPyro's
    AutoMultivariateNormal): the strict lower triangle of ψ's ``scale_tril`` is free, its diagonal
    goes through softplus."""

    init_scale: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "init_scale", _positive_float("FullRank(init_scale)", self.init_scale))

    def init(self, key: jax.Array, dim: int, dtype=jnp.float32) -> PyTree:
        return {"loc": jnp.zeros(dim, dtype),
                "scale_tril": jnp.eye(dim, dtype=dtype) * _inverse_softplus(self.init_scale)}

    def distribution(self, params: PyTree) -> distrax.Distribution:
        raw = params["scale_tril"]
        tril = jnp.tril(raw, -1) + jnp.diag(jax.nn.softplus(jnp.diagonal(raw)))
        return distrax.MultivariateNormalTri(params["loc"], tril)


@dataclasses.dataclass(frozen=True)
class LowRank(_Gaussian):
    r"""A Normal with low-rank-plus-diagonal scale, :math:`u = \mu + \operatorname{diag}(\sigma) \epsilon + W \eta`
    with W of shape (D, rank): covariance :math:`\operatorname{diag}(\sigma^2) + W W^\top`, O(D rank) parameters.

    The factor W starts at 0.01 N(0, 1) (at exactly 0 its gradient would vanish).
    """

    rank: int = 2
    init_scale: float = 0.1

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LowRank(rank): expected an integer >= 1, got {self.rank!r}")
        object.__setattr__(self, "init_scale", _positive_float("LowRank(init_scale)", self.init_scale))

    def init(self, key: jax.Array, dim: int, dtype=jnp.float32) -> PyTree:
        return {"loc": jnp.zeros(dim, dtype), "scale": jnp.full(dim, _inverse_softplus(self.init_scale), dtype),
                "factor": 0.01 * jax.random.normal(key, (dim, self.rank), dtype)}

    def distribution(self, params: PyTree) -> distrax.Distribution:
        return _DiagPlusLowRankNormal(params["loc"], jax.nn.softplus(params["scale"]), params["factor"])

    def stddev(self, params: PyTree) -> jax.Array:
        return jnp.sqrt(jax.nn.softplus(params["scale"]) ** 2 + jnp.sum(params["factor"] ** 2, axis=-1))


class _DiagPlusLowRankNormal:
    r""":math:`N(\mu, \operatorname{diag}(s^2) + W W^\top)`: sampling as :math:`\mu + s \epsilon + W \eta`,
    densities through the Woodbury identity and the matrix determinant lemma (O(D r^2))."""

    def __init__(self, loc, scale, factor):
        self.loc, self.scale, self.factor = loc, scale, factor

    def sample_and_log_prob(self, seed, sample_shape):
        dim, rank = self.factor.shape
        eps_key, eta_key = jax.random.split(seed)
        eps = jax.random.normal(eps_key, sample_shape + (dim,), self.loc.dtype)
        eta = jax.random.normal(eta_key, sample_shape + (rank,), self.loc.dtype)
        u = self.loc + self.scale * eps + eta @ self.factor.T
        return u, self.log_prob(u)

    def log_prob(self, u):
        dim, rank = self.factor.shape
        d_inv = 1.0 / self.scale**2
        capacitance = jnp.eye(rank, dtype=u.dtype) + (self.factor.T * d_inv) @ self.factor
        chol = jnp.linalg.cholesky(capacitance)
        r = u - self.loc
        b = (r * d_inv) @ self.factor                                                  # (..., rank)
        solved = jax.scipy.linalg.cho_solve((chol, True), b.reshape(-1, rank).T).T.reshape(b.shape)
        mahalanobis = jnp.sum(r**2 * d_inv, axis=-1) - jnp.sum(b * solved, axis=-1)
        log_det = 2.0 * jnp.sum(jnp.log(self.scale)) + 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
        return -0.5 * (mahalanobis + log_det + dim * math.log(2 * math.pi))

    def entropy(self):
        dim, rank = self.factor.shape
        d_inv = 1.0 / self.scale**2
        capacitance = jnp.eye(rank, dtype=self.loc.dtype) + (self.factor.T * d_inv) @ self.factor
        log_det = 2.0 * jnp.sum(jnp.log(self.scale)) + spd_log_det(capacitance)
        return 0.5 * (log_det + dim * (1.0 + math.log(2 * math.pi)))


@dataclasses.dataclass(frozen=True)
class Flow:
    r"""A normalizing flow: a mean-field Normal base pushed through ``num_layers`` affine coupling layers.

    Layer l keeps the coordinates where its mask (alternating halves) is 1 and maps the others
    :math:`u_d \mapsto u_d e^{s_d} + t_d`, with :math:`(s, t)` an MLP of the kept coordinates
    (``hidden`` widths, tanh; :math:`s` bounded by tanh). The MLPs' last layers start at 0, so the
    flow starts as its base. No closed-form entropy. Needs D >= 2.
    """

    num_layers: int = 2
    hidden: tuple = (32, 32)
    init_scale: float = 0.1
    reparameterized = True
    point_mass = False
    has_entropy = False

    def __post_init__(self):
        if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int) or self.num_layers < 1:
            raise ValueError(f"Flow(num_layers): expected an integer >= 1, got {self.num_layers!r}")
        hidden = (self.hidden,) if isinstance(self.hidden, (int, np.integer)) else self.hidden
        try:
            hidden = tuple(hidden)
        except TypeError:
            hidden = None
        if hidden is None or not all(isinstance(h, (int, np.integer)) and not isinstance(h, bool) and h >= 1
                                     for h in hidden):
            raise ValueError(f"Flow(hidden): expected the coupling networks' widths, integers >= 1 (one or a tuple), "
                             f"got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in hidden))
        object.__setattr__(self, "init_scale", _positive_float("Flow(init_scale)", self.init_scale))

    def init(self, key: jax.Array, dim: int, dtype=jnp.float32) -> PyTree:
        if dim < 2:
            raise ValueError(f"Flow: a coupling flow needs at least 2 latent dimensions, got {dim}; use MeanField")
        keys = jax.random.split(key, self.num_layers)
        return {"loc": jnp.zeros(dim, dtype), "scale": jnp.full(dim, _inverse_softplus(self.init_scale), dtype),
                "layers": [mlp_init(k, (dim, *self.hidden, 2 * dim), dtype=dtype, zero_last=True) for k in keys]}

    def distribution(self, params: PyTree) -> distrax.Distribution:
        dim = params["loc"].shape[-1]
        base = distrax.MultivariateNormalDiag(params["loc"], jax.nn.softplus(params["scale"]))
        layers = []
        for index, layer in enumerate(params["layers"]):
            mask = (jnp.arange(dim) % 2 == index % 2)

            def conditioner(kept, layer=layer):
                out = mlp_apply(layer, kept)
                return out[..., :dim], jnp.tanh(out[..., dim:])

            layers.append(distrax.MaskedCoupling(
                mask=mask, conditioner=conditioner,
                bijector=lambda p: distrax.ScalarAffine(shift=p[0], log_scale=p[1]), event_ndims=1))
        return distrax.Transformed(base, distrax.Chain(layers))

    def sample_and_log_prob(self, params: PyTree, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        return self.distribution(params).sample_and_log_prob(seed=key, sample_shape=(n,))

    def log_prob(self, params: PyTree, u: jax.Array) -> jax.Array:
        return self.distribution(params).log_prob(u)

    def entropy(self, params: PyTree) -> None:
        return None

    def mean(self, params: PyTree) -> None:
        return None

    def stddev(self, params: PyTree) -> None:
        return None


@dataclasses.dataclass(frozen=True)
class Delta:
    r"""A point mass at ψ's ``loc``: fitting it maximises :math:`\log p(x, z)` over z itself, the
    maximum a posteriori estimate (in the constrained space: no log-Jacobian is added). Its ELBO is
    not a bound on log p(x); jaxvi reports it as the MAP objective."""

    reparameterized = True
    point_mass = True
    has_entropy = True

    def init(self, key: jax.Array, dim: int, dtype=jnp.float32) -> PyTree:
        return {"loc": jnp.zeros(dim, dtype)}

    def sample_and_log_prob(self, params: PyTree, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        loc = params["loc"]
        return jnp.broadcast_to(loc, (n,) + loc.shape), jnp.zeros(n, loc.dtype)

    def log_prob(self, params: PyTree, u: jax.Array) -> jax.Array:
        return jnp.zeros(u.shape[:-1], u.dtype)

    def entropy(self, params: PyTree) -> jax.Array:
        return jnp.zeros((), params["loc"].dtype)

    def mean(self, params: PyTree) -> jax.Array:
        return params["loc"]

    def stddev(self, params: PyTree) -> jax.Array:
        return jnp.zeros_like(params["loc"])


@dataclasses.dataclass(frozen=True)
class Categorical(_FromDistribution):
    r"""A categorical q over the M values of a ``Discrete`` latent (or a pytree of them), for data
    whose latent has too many values to enumerate: ψ are the M logits. Not reparameterisable: its
    gradient is the score-function estimator with a leave-one-out baseline, or VIMCO's on the IWAE
    bound (``estimator="vimco"``); both need ``num_particles >= 2``."""

    reparameterized = False

    def init(self, key: jax.Array, dim: int, dtype=jnp.float32) -> PyTree:
        return {"logits": jnp.zeros(dim, dtype)}

    def distribution(self, params: PyTree) -> distrax.Distribution:
        return distrax.Categorical(logits=params["logits"])

    def mean(self, params: PyTree) -> jax.Array:
        return jax.nn.softmax(params["logits"])

    def stddev(self, params: PyTree) -> None:
        return None


def is_guide(guide) -> bool:
    """Whether ``guide`` has the guide interface."""
    return all(hasattr(guide, name) for name in ("init", "sample_and_log_prob", "log_prob", "entropy", "mean",
                                                  "reparameterized", "point_mass", "has_entropy"))
