r"""The factors of ``jaxvi.CAVI``'s q: each exponential-family latent spec as an ``expfam`` family with a batch
shape, the value ``log_joint`` receives, and a fitted factor as a distribution (``Factor``).

A spec's factor holds its values in the family's own layout (``encoded``: a Normal-Wishart's mean and precision
as one ``[mu | L]`` array); ``FactorSpec.value`` turns them into what the user's ``log_joint`` and ``log_prior``
receive.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvi._deferred import tfd
from jaxvi.latents import Beta, Dirichlet, Gamma, Gaussian, NormalGamma, NormalWishart, OneHot, Wishart
from jaxvi.linalg import spd_inverse
from jaxvi.vi import expfam

__all__ = ["Factor", "FactorSpec", "center", "encoded", "factor_spec", "sample_factors"]


class FactorSpec(NamedTuple):
    """How one exponential-family spec is a factor of q.

    Attributes:
      spec: the latent spec.
      family: its ``expfam.Family``.
      batch_shape: how many independent factors (the spec's ``shape``).
      event_shape: one value's shape in the family's layout.
      value: the family's layout -> the value ``log_joint`` receives (batch in front).
      reference: ``reference(dtype)``: the held parameters of a broad member of the family, where a factor's
        log-prior is read off before any fitted q exists.
      read_points: how many points ``expfam.natural_parameters`` needs to read the natural parameters of this
        family (where the statistics outnumber one gradient's entries); CAVI's updates read at these, its
        conjugacy checks at one more.
    """

    spec: Any
    family: expfam.Family
    batch_shape: tuple
    event_shape: tuple
    value: Callable
    reference: Callable
    read_points: int


def _full(shape, value, dtype):
    return jnp.full(shape, value, dtype)


def factor_spec(spec) -> FactorSpec:
    """The ``FactorSpec`` of an exponential-family latent spec (``Gaussian`` is a Normal factor)."""
    identity = lambda z: z  # noqa: E731
    if isinstance(spec, Beta):
        return FactorSpec(spec, expfam.BETA, spec.shape, (), identity,
                          lambda dt: (_full(spec.shape, 0.0, dt), _full(spec.shape, 0.0, dt)), 2)
    if isinstance(spec, Gamma):
        return FactorSpec(spec, expfam.GAMMA, spec.shape, (), identity,
                          lambda dt: (_full(spec.shape, 0.0, dt), _full(spec.shape, -1.0, dt)), 2)
    if isinstance(spec, Dirichlet):
        return FactorSpec(spec, expfam.DIRICHLET, spec.shape, (spec.K,), identity,
                          lambda dt: (_full(spec.shape + (spec.K,), 0.0, dt),), 1)
    if isinstance(spec, OneHot):
        return FactorSpec(spec, expfam.CATEGORICAL, spec.shape, (spec.K,), identity,
                          lambda dt: (_full(spec.shape + (spec.K,), 0.0, dt),), 1)
    if isinstance(spec, Wishart):
        d = spec.d
        return FactorSpec(spec, expfam.WISHART, spec.shape, (d, d), identity,
                          lambda dt: (jnp.broadcast_to(-0.5 * jnp.eye(d, dtype=dt), spec.shape + (d, d)),
                                      _full(spec.shape, 0.5, dt)), 2)
    if isinstance(spec, Gaussian):
        d = spec.d
        return FactorSpec(spec, expfam.NORMAL, (), (d,), identity,
                          lambda dt: (jnp.zeros(d, dt), -0.5 * jnp.eye(d, dtype=dt)), d + 1)
    if isinstance(spec, (NormalWishart, NormalGamma)):
        d = spec.d if isinstance(spec, NormalWishart) else 1

        def reference(dt):
            ones = jnp.ones(spec.shape, dt)
            return expfam.normal_wishart_parameters(jnp.zeros(spec.shape + (d,), dt), ones,
                                                    jnp.broadcast_to(jnp.eye(d, dtype=dt), spec.shape + (d, d)),
                                                    ones * (d + 2))

        def value(z):  # [mu - c | L] -> (mu, L)
            mean, precision = expfam.normal_wishart_parts(z)
            if isinstance(spec, NormalGamma):
                mean, precision = mean[..., 0], precision[..., 0, 0]
            return mean + center(spec, z.dtype), precision

        return FactorSpec(spec, expfam.NORMAL_WISHART, spec.shape, (d, d + 1), value, reference, 2)
    raise ValueError(f"latent: {spec!r} is not an exponential-family spec (Gaussian, Beta, Gamma, Dirichlet, "
                     f"Wishart, NormalWishart, NormalGamma, OneHot); jaxvi.CAVI has no coordinate update for it")


def center(spec, dtype) -> jax.Array | float:
    """The origin of a Normal-Wishart's or Normal-Gamma's layout, whose mean is held less it (its ``center``,
    broadcast against the mean), or 0: the family's layout holds the mean less it."""
    return 0.0 if getattr(spec, "center", None) is None else jnp.asarray(spec.center, dtype)


def encoded(spec, value) -> jax.Array:
    """A value as ``log_joint`` receives it, in the family's layout (``FactorSpec.value`` undone): a
    Normal-Wishart's ``(mean, precision)`` as ``[mean - center | precision]``, a Normal-Gamma's likewise with d = 1;
    any other family's value as it is."""
    if not isinstance(spec, (NormalWishart, NormalGamma)):
        return value
    mean, precision = value
    mean = mean - center(spec, mean.dtype)
    if isinstance(spec, NormalGamma):
        return jnp.stack([mean, precision], axis=-1)[..., None, :]
    return jnp.concatenate([mean[..., None], precision], axis=-1)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["eta"], meta_fields=["spec"])
@dataclasses.dataclass(frozen=True)
class Factor:
    r"""A fitted factor of q: ``eta``, its parameters as held (``expfam``: the natural parameters, a Normal-Wishart's
    about its mean), of ``spec``'s family (batch shape in front).

    ``mean()``, ``variance()``, ``entropy()``, ``sample(key, n)`` and ``log_prob(value)`` speak the value
    ``log_joint`` receives (a ``(mean, precision)`` pair for ``NormalWishart`` and ``NormalGamma``).
    ``parameters()`` gives the textbook parameters (Beta's a, b; Gamma's shape and rate; Dirichlet's
    concentration; OneHot's probs; Wishart's dof and scale; the Normal's mean and covariance; Normal-Wishart's m, b, W, nu).
    """

    spec: Any
    eta: tuple

    @property
    def _factor(self) -> FactorSpec:
        return factor_spec(self.spec)

    def parameters(self) -> dict:
        eta, spec = self.eta, self.spec
        if isinstance(spec, Beta):
            return {"a": eta[0] + 1, "b": eta[1] + 1}
        if isinstance(spec, Gamma):
            return {"shape": eta[0] + 1, "rate": -eta[1]}
        if isinstance(spec, Dirichlet):
            return {"concentration": eta[0] + 1}
        if isinstance(spec, OneHot):
            return {"probs": jax.nn.softmax(eta[0], axis=-1)}
        if isinstance(spec, Wishart):
            return {"dof": 2 * eta[1] + spec.d + 1, "scale": spd_inverse(-2 * eta[0])}
        if isinstance(spec, Gaussian):
            covariance = spd_inverse(-2 * eta[1])
            return {"mean": covariance @ eta[0], "covariance": covariance}
        mean, strength, scale_inverse, dof = expfam.normal_wishart_moments(eta)
        if isinstance(spec, NormalGamma):
            return {"mean": mean[..., 0] + center(spec, mean.dtype), "strength": strength, "shape": dof / 2,
                    "rate": scale_inverse[..., 0, 0] / 2}
        return {"mean": mean + center(spec, mean.dtype), "strength": strength, "scale": spd_inverse(scale_inverse),
                "dof": dof}

    def _distribution(self):
        """The TFP distribution of the value (not for Wishart precisions: ``_wishart_*``)."""
        p, spec = self.parameters(), self.spec
        if isinstance(spec, Beta):
            return tfd.Beta(p["a"], p["b"])
        if isinstance(spec, (Gamma, NormalGamma)):
            return tfd.Gamma(p["shape"], p["rate"])
        if isinstance(spec, Dirichlet):
            return tfd.Dirichlet(p["concentration"])
        if isinstance(spec, OneHot):
            return tfd.OneHotCategorical(logits=self.eta[0], dtype=self.eta[0].dtype)
        return tfd.MultivariateNormalFullCovariance(p["mean"], p["covariance"])

    def _wishart(self):
        """(dof, scale) of a Wishart factor or of a Normal-Wishart's precision."""
        p = self.parameters()
        return p["dof"], p["scale"]

    def mean(self):
        """E_q[z] (for a Normal-Wishart / Normal-Gamma: (E[mu], E[precision]))."""
        spec = self.spec
        if isinstance(spec, (Wishart, NormalWishart)):
            dof, scale = self._wishart()
            precision = dof[..., None, None] * scale
            return (self.parameters()["mean"], precision) if isinstance(spec, NormalWishart) else precision
        if isinstance(spec, NormalGamma):
            return self.parameters()["mean"], self._distribution().mean()
        return self._distribution().mean()

    def variance(self):
        """Var_q[z] elementwise; a Normal's covariance; for a Normal-Wishart / Normal-Gamma (the mean's marginal
        covariance / variance, the precision's elementwise variance)."""
        spec, p = self.spec, self.parameters()
        if isinstance(spec, Gaussian):
            return p["covariance"]
        if isinstance(spec, NormalGamma):  # mu marginally Student-t with 2a dof, scale^2 = rate / (a b)
            return p["rate"] / (p["strength"] * (p["shape"] - 1)), self._distribution().variance()
        if isinstance(spec, (Wishart, NormalWishart)):
            dof, scale = self._wishart()
            diagonal = jnp.diagonal(scale, axis1=-2, axis2=-1)
            precision = dof[..., None, None] * (scale ** 2 + diagonal[..., :, None] * diagonal[..., None, :])
            if isinstance(spec, Wishart):
                return precision
            mean = spd_inverse(scale) / (p["strength"] * (dof - spec.d - 1))[..., None, None]
            return mean, precision
        return self._distribution().variance()

    def entropy(self):
        """H[q] per factor (batch shape)."""
        return expfam.entropy(self._factor.family, self.eta)

    def log_prob(self, value):
        """log q(value) per factor; ``value`` as ``log_joint`` receives it."""
        return expfam.log_density(self._factor.family, self.eta, encoded(self.spec, value))

    def sample(self, key: jax.Array, n: int = 1):
        """``n`` draws, stacked on a leading axis (``sample_factors`` of this factor, once per key)."""
        return jax.vmap(lambda k: sample_factors((self,), k)[0])(jax.random.split(key, n))

    def standard_draws(self) -> tuple[jax.Array, tuple]:
        """What one draw is made of: ``(shapes, normal_shape)``, the shape parameters of independent log-Gamma
        draws and the shape of the standard normal draws (``from_standard_draws``). Every family is sampled
        from these two, so the draws of many factors can share one Gamma sampler (``sample_factors``)."""
        p, spec, dtype = self.parameters(), self.spec, self.eta[0].dtype
        batch = self._factor.batch_shape
        if isinstance(spec, Beta):
            return jnp.stack([p["a"], p["b"]], axis=-1), ()
        if isinstance(spec, Gamma):
            return p["shape"], ()
        if isinstance(spec, Dirichlet):
            return p["concentration"], ()
        if isinstance(spec, OneHot):  # Gumbel noise: minus the log of an Exponential, a Gamma(1)
            return jnp.ones(batch + (spec.K,), dtype), ()
        if isinstance(spec, Gaussian):
            return jnp.zeros((0,), dtype), (spec.d,)
        if isinstance(spec, NormalGamma):
            return p["shape"], batch
        dof = p["dof"]  # Wishart, Normal-Wishart: Bartlett's chi-squares, as Gammas of (dof - i) / 2
        shapes = (dof[..., None] - jnp.arange(spec.d, dtype=dtype)) / 2
        return shapes, batch + (spec.d, spec.d if isinstance(spec, Wishart) else spec.d + 1)

    def from_standard_draws(self, log_gammas: jax.Array, normals: jax.Array):
        r"""One draw, the value ``log_joint`` receives, from log-Gamma draws of the shapes and standard normal
        draws of the shape ``standard_draws`` gives: Beta :math:`G_a / (G_a + G_b)`, Gamma :math:`G / rate`,
        Dirichlet :math:`G_k / \sum G`, OneHot the argmax of the logits plus Gumbel noise :math:`-\log G_1`, the
        Normal :math:`m + L\epsilon`, Wishart by Bartlett's :math:`LAA^\top L^\top`, :math:`LL^\top` the scale and
        A lower triangular with :math:`A_{ii}^2 = 2G_{(\nu - i)/2}` and normal entries below the diagonal, and a
        Normal-Gamma's or Normal-Wishart's mean given its precision. Ratios are taken in log space (softmax,
        sigmoid), so small concentrations do not divide 0 by 0."""
        p, spec = self.parameters(), self.spec
        if isinstance(spec, Beta):
            return jax.nn.sigmoid(log_gammas[..., 0] - log_gammas[..., 1])
        if isinstance(spec, Gamma):
            return jnp.exp(log_gammas) / p["rate"]
        if isinstance(spec, Dirichlet):
            return jax.nn.softmax(log_gammas, axis=-1)
        if isinstance(spec, OneHot):
            return jax.nn.one_hot(jnp.argmax(self.eta[0] - log_gammas, axis=-1), spec.K, dtype=self.eta[0].dtype)
        if isinstance(spec, Gaussian):
            return p["mean"] + jnp.linalg.cholesky(p["covariance"]) @ normals
        if isinstance(spec, NormalGamma):
            precision = jnp.exp(log_gammas) / p["rate"]
            return p["mean"] + normals / jnp.sqrt(p["strength"] * precision), precision
        d = spec.d
        bartlett = (jnp.tril(normals[..., :d], -1)
                    + jnp.sqrt(2 * jnp.exp(log_gammas))[..., None] * jnp.eye(d, dtype=normals.dtype))
        factor = jnp.linalg.cholesky(p["scale"]) @ bartlett
        precision = factor @ jnp.swapaxes(factor, -1, -2)
        if isinstance(spec, Wishart):
            return precision
        # the mean ~ N(m, (b precision)^-1): L A is precision's Cholesky factor already (lower triangular, positive
        # diagonal), so no factorisation of a draw that may be near-singular in float32
        chol = jnp.sqrt(p["strength"])[..., None, None] * factor
        return p["mean"] + jax.scipy.linalg.solve_triangular(chol, normals[..., d:], trans="T", lower=True)[..., 0], \
            precision


def sample_factors(factors: tuple[Factor, ...], key: jax.Array) -> tuple:
    """One draw of each factor, their log-Gamma draws made by one call of the sampler (``Factor.standard_draws``):
    JAX's Gamma sampler is a rejection loop that costs seconds to compile, once here rather than once a factor."""
    gamma_key, normal_key = jax.random.split(key)
    standard = [f.standard_draws() for f in factors]
    dtype = factors[0].eta[0].dtype
    sizes = [shapes.size for shapes, _ in standard]
    log_gammas = jax.random.loggamma(gamma_key, jnp.concatenate([shapes.ravel() for shapes, _ in standard]
                                                                 ).astype(dtype), dtype=dtype)
    normal_sizes = [int(np.prod(shape)) for _, shape in standard]
    normals = jax.random.normal(normal_key, (sum(normal_sizes),), dtype)
    draws, g, z = [], 0, 0
    for f, (shapes, normal_shape), size, normal_size in zip(factors, standard, sizes, normal_sizes):
        draws.append(f.from_standard_draws(log_gammas[g:g + size].reshape(shapes.shape),
                                           normals[z:z + normal_size].reshape(normal_shape)))
        g, z = g + size, z + normal_size
    return tuple(draws)
