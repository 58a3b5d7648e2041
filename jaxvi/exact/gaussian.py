r"""The exact posterior of a real latent vector that enters the log-joint quadratically.

If, for one datum, :math:`f(z) = \log p_\theta(x, z) = c + g^\top z + \tfrac12 z^\top H z` with
:math:`\Lambda = -H` positive definite, then

.. math::
    p_\theta(z \mid x) = N(\mu, \Sigma), \quad \Sigma = \Lambda^{-1}, \quad \mu = \Sigma g, \qquad
    \log p_\theta(x) = c + \tfrac12 g^\top \mu + \tfrac d2 \log 2\pi - \tfrac12 \log\det\Lambda,

and for any quadratic :math:`h`, :math:`E_q[h(z)] = h(\mu) + \tfrac12 \operatorname{tr}(H_h \Sigma)`.
:math:`c, g, H` are the value, gradient and Hessian of the log-joint in z (autodiff), taken at the mean
(one Newton step from 0). In float32 the factor of :math:`\Lambda` is refined once more in whitened
coordinates, where the Hessian is near -I (``_refined_cholesky``): :math:`\log\det\Lambda` then stays
accurate however ill-conditioned :math:`\Lambda` is.
The expansion is checked at two more points, one posterior standard deviation either side of the mean
in a fixed direction; where the log-joint differs from it the datum is flagged as not quadratic.

With ``Gaussian(d, laplace=True)`` the expansion point is the mode instead (found by Newton's
method), which gives the Laplace approximation: exact for quadratic log-joints, approximate otherwise.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
from jax import lax

from jaxvi.chunks import map_data, sum_data

__all__ = ["GaussianPosterior", "expected_log_joint", "posterior"]

PyTree = Any
LogJoint = Callable[[PyTree, PyTree, PyTree], jax.Array]
_REFINED_BELOW_EPS = 1e-10  # float types with a larger machine epsilon (float32, ...) refine the precision's factor


@dataclasses.dataclass(frozen=True)
class GaussianPosterior:
    r"""The posterior :math:`N(\mu_i, \Sigma_i)` of every datum's latent vector.

    Attributes:
      mean: ``(N, d)`` posterior means :math:`\mu_i`.
      covariance: ``(N, d, d)`` posterior covariances :math:`\Sigma_i`.
      log_evidence: ``(N,)`` per-datum :math:`\log p_\theta(x_i)`.
      quadratic: ``(N,)`` whether the log-joint matched its quadratic expansion (and had a positive
        definite precision) for that datum; where False, the other fields are not exact.
      laplace: whether this is the Laplace approximation (static) rather than the exact posterior.
    """

    mean: jax.Array
    covariance: jax.Array
    log_evidence: jax.Array
    quadratic: jax.Array
    laplace: bool = False

    def expect(self, f: Callable, data: PyTree | None = None, *, chunk_size: int = 1024) -> jax.Array:
        r"""Per-datum :math:`E_q[f(z)] = f(\mu_i) + \tfrac12 \operatorname{tr}(H_f \Sigma_i)`, exact for quadratic f.

        Args:
          f: ``f(z)`` or, with ``data``, ``f(z, x)``; returns an array of any fixed shape. For f
            that is not quadratic in z this is the second-order (delta-method) approximation.
          data: the data this posterior was computed for, or None.
          chunk_size: how many data are evaluated at once.

        Returns:
          ``(N, *f's output shape)``.
        """
        if data is None:
            return jax.vmap(lambda m, s: _expect_one(f, m, s))(self.mean, self.covariance)
        return map_data(lambda args: _expect_one(lambda z: f(z, args[0]), *args[1:]),
                        (data, self.mean, self.covariance), chunk_size)

    def mode(self) -> jax.Array:
        """``(N, d)`` the posterior modes (the means)."""
        return self.mean

    def sample(self, key: jax.Array) -> jax.Array:
        r"""``(N, d)`` one draw :math:`z_i = \mu_i + L_i \epsilon_i` per datum, :math:`L_i L_i^\top = \Sigma_i`."""
        noise = jax.random.normal(key, self.mean.shape, self.mean.dtype)
        return self.mean + jnp.einsum("nij,nj->ni", jnp.linalg.cholesky(self.covariance), noise)


jax.tree_util.register_dataclass(
    GaussianPosterior, data_fields=["mean", "covariance", "log_evidence", "quadratic"], meta_fields=["laplace"])


def _expect_one(f: Callable, mean: jax.Array, covariance: jax.Array) -> jax.Array:
    value = f(mean)
    hessian = jax.hessian(f)(mean)
    return value + 0.5 * jnp.tensordot(hessian, covariance, axes=((-2, -1), (0, 1)))


def _posterior_one(log_joint: LogJoint, params: PyTree, x: PyTree, latent) -> tuple[jax.Array, ...]:
    f = lambda z: log_joint(params, z, x)
    dtype = jnp.result_type(float)
    zero = jnp.zeros(latent.d, dtype)
    if latent.laplace:
        newton = lambda z: z + jnp.linalg.solve(-_symmetric(jax.hessian(f)(z)), jax.grad(f)(z))  # noqa: E731
        center, _ = lax.scan(lambda z, _: (newton(z), None), zero, length=latent.newton_steps)
        hessian = _symmetric(jax.hessian(f)(center))
        chol = jnp.linalg.cholesky(-hessian)
    else:
        # One Newton step from 0 reaches the mean of a quadratic log-joint; the expansion is then taken
        # there, where the gradient is small. (At 0, log p(x) = c + g'mu/2 is a difference of two terms
        # that can be 1e5 times larger than it, e.g. factor analysis with a small noise variance:
        # float32 lost whole nats per datum.)
        hessian = _symmetric(jax.hessian(f)(zero))
        chol = jnp.linalg.cholesky(-hessian)
        center = jax.scipy.linalg.cho_solve((chol, True), jax.grad(f)(zero))
    value, gradient = jax.value_and_grad(f)(center)
    if jnp.finfo(dtype).eps > _REFINED_BELOW_EPS:
        chol = _refined_cholesky(f, center, chol)
    shift = jax.scipy.linalg.cho_solve((chol, True), gradient)
    covariance = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(latent.d, dtype=dtype))
    log_det_precision = 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))
    log_evidence = value + 0.5 * gradient @ shift + 0.5 * latent.d * math.log(2 * math.pi) - 0.5 * log_det_precision

    # the probes: one posterior standard deviation either side of the mean, in a fixed generic direction.
    # Two points, because one of them may be the expansion point itself, where any function matches.
    direction = jnp.cos(1.0 + 2.399 * jnp.arange(latent.d, dtype=dtype))
    step = jax.scipy.linalg.solve_triangular(chol.T, direction / jnp.linalg.norm(direction), lower=False)
    matches = jnp.all(jax.vmap(lambda offset: _matches_expansion(f, center, offset, value, gradient, hessian))(
        jnp.stack([shift + step, shift - step])))
    quadratic = jnp.all(jnp.isfinite(chol)) & (matches | latent.laplace)
    chex.assert_shape([center, shift], (latent.d,))
    chex.assert_rank([log_evidence, quadratic], 0)
    return center + shift, covariance, log_evidence, quadratic


def _refined_cholesky(f: Callable, center: jax.Array, chol: jax.Array) -> jax.Array:
    r"""The Cholesky factor of :math:`\Lambda = -\nabla^2 f`, refined once in whitened coordinates.

    Stored in float32, :math:`\Lambda`'s entries carry absolute errors of about
    :math:`\varepsilon \lambda_{\max}`, so its small eigenvalues, and :math:`\log\det\Lambda`, are
    off by about :math:`\varepsilon\,\kappa(\Lambda)`: factor analysis with a noise variance of 1e-5
    lost 1.8e-4 nats on every datum alike (1e-5 of log p(D), more than 64 ulps). In
    :math:`u = L^\top (z - \text{center})`, with L the first factor, the Hessian of f is near
    :math:`-I`, and autodiff through f computes it to about ε; its factor M is then accurate, and
    :math:`\Lambda = (L M)(L M)^\top` with :math:`\operatorname{diag}(L M) = \operatorname{diag}(L)
    \operatorname{diag}(M)`: log det to about dε (4e-8 there, from 3e-4). One more Hessian of f.
    """
    whiten = lambda u: center + jax.scipy.linalg.solve_triangular(chol.T, u, lower=False)  # noqa: E731
    whitened = _symmetric(jax.hessian(lambda u: f(whiten(u)))(jnp.zeros_like(center)))
    return chol @ jnp.linalg.cholesky(-whitened)


def _matches_expansion(f: Callable, center, offset, value, gradient, hessian) -> jax.Array:
    """Whether f(center + offset) equals the second-order expansion at ``center`` to sqrt(eps) relative."""
    linear, curvature = gradient @ offset, 0.5 * offset @ hessian @ offset
    actual = f(center + offset)
    scale = 1.0 + jnp.abs(value) + jnp.abs(actual) + jnp.abs(linear) + jnp.abs(curvature)
    return jnp.abs(actual - (value + linear + curvature)) <= jnp.sqrt(jnp.finfo(value.dtype).eps) * scale


def _symmetric(matrix: jax.Array) -> jax.Array:
    return 0.5 * (matrix + matrix.T)


def posterior(log_joint: LogJoint, latent, params: PyTree, data: PyTree, chunk_size: int = 1024
              ) -> GaussianPosterior:
    """The exact E-step for a ``Gaussian`` latent (or its Laplace approximation with ``laplace=True``)."""
    mean, covariance, log_evidence, quadratic = map_data(
        lambda x: _posterior_one(log_joint, params, x, latent), data, chunk_size)
    return GaussianPosterior(mean, covariance, log_evidence, quadratic, latent.laplace)


def expected_log_joint(log_joint: LogJoint, params: PyTree, data: PyTree, post: GaussianPosterior,
                       chunk_size: int = 1024) -> jax.Array:
    r"""EM's :math:`Q(\theta) = \sum_i \log p_\theta(x_i, \mu_i) + \tfrac12 \operatorname{tr}(H_{\theta,i} \Sigma_i)`.

    The posterior moments are held fixed (no gradient flows into them).
    """
    mean, covariance = jax.lax.stop_gradient((post.mean, post.covariance))

    def chunk_sum(chunk):
        x, m, s = chunk
        return jnp.sum(jax.vmap(lambda xi, mi, si: _expect_one(lambda z: log_joint(params, z, xi), mi, si))(x, m, s))

    return sum_data(chunk_sum, (data, mean, covariance), chunk_size)
