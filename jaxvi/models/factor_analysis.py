r"""Factor analysis and probabilistic PCA: a Gaussian latent :math:`z \in \mathbb{R}^d` behind a linear map.

.. math::
    z \sim N(0, I_d), \qquad x \mid z \sim N(\mu + W z, \Psi),

with :math:`\Psi = \operatorname{diag}(\psi)` for factor analysis and :math:`\Psi = \sigma^2 I` for
probabilistic PCA (Tipping & Bishop 1999). The log-joint is quadratic in z, so the latent is a
``jaxvi.Gaussian(d)`` and EM's E-step is exact.

The closed-form M-step regresses x on :math:`\tilde z = (z, 1)` under q: with
:math:`A = \sum_i E[\tilde z_i \tilde z_i^\top]` and :math:`B = \sum_i x_i E[\tilde z_i]^\top`,
:math:`[W, \mu] = B A^{-1}`, and the noise is the mean squared residual,
:math:`\psi = \operatorname{diag}(\sum_i x_i x_i^\top - [W, \mu] B^\top) / N` (PPCA: its mean over
dimensions). Noise variances are floored at ``1e-6`` times the data variance, which keeps a
dimension the factors explain exactly (a Heywood case) finite.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxvi.latents import Gaussian
from jaxvi.methods.common import sum_accurately
from jaxvi.model import Model
from jaxvi.statistics import Statistics

__all__ = ["FactorAnalysisParams", "LinearGaussian", "PPCAParams", "factor_analysis", "ppca"]

NOISE_FLOOR = 1e-6  # relative to the data variance


class FactorAnalysisParams(NamedTuple):
    """``mean`` ``(D,)``, ``loadings`` W ``(D, d)``, ``log_noise`` ``(D,)``: :math:`\\log \\psi`."""

    mean: jax.Array
    loadings: jax.Array
    log_noise: jax.Array

    @property
    def noise_variance(self) -> jax.Array:
        return jnp.exp(self.log_noise)

    @property
    def covariance(self) -> jax.Array:
        r"""``(D, D)`` the marginal covariance of x, :math:`W W^\top + \Psi`."""
        return self.loadings @ self.loadings.T + jnp.diag(self.noise_variance)


class PPCAParams(NamedTuple):
    """``mean`` ``(D,)``, ``loadings`` W ``(D, d)``, ``log_noise`` scalar: :math:`\\log \\sigma^2`."""

    mean: jax.Array
    loadings: jax.Array
    log_noise: jax.Array

    @property
    def noise_variance(self) -> jax.Array:
        return jnp.exp(self.log_noise)

    @property
    def covariance(self) -> jax.Array:
        r"""``(D, D)`` the marginal covariance of x, :math:`W W^\top + \sigma^2 I`."""
        return self.loadings @ self.loadings.T + self.noise_variance * jnp.eye(self.mean.shape[0])


class LinearGaussian(NamedTuple):
    """A linear-Gaussian latent model and its closed-form M-step, for ``jaxvi.EM(m_step=...)``; the same
    M-step through sufficient statistics (``statistics``: for a streamed E-step, ``EM(m_step=statistics)``,
    or ``jaxvi.OnlineEM``)."""

    model: Model
    m_step: Callable
    statistics: Statistics


def _log_joint(params, z, x):
    r""":math:`\log N(z; 0, I) + \log N(x; \mu + W z, \Psi)` with :math:`\Psi` diagonal (broadcast scalar for PPCA)."""
    log_noise = jnp.broadcast_to(params.log_noise, x.shape)
    residual = x - params.mean - params.loadings @ z
    log_lik = -0.5 * jnp.sum(residual**2 * jnp.exp(-log_noise) + log_noise + math.log(2 * math.pi))
    return log_lik - 0.5 * (z @ z + z.shape[0] * math.log(2 * math.pi))


def _collect(params, data: jax.Array, post) -> dict:
    r"""The sufficient statistics of a chunk, sums over it: with :math:`\tilde z = (z, 1)`,
    :math:`A = \sum E[\tilde z \tilde z^\top]`, :math:`B = \sum x E[\tilde z]^\top`, :math:`\sum x^2`, :math:`\sum x`, n."""
    n = data.shape[0]
    mean, cov = post.mean.astype(data.dtype), post.covariance.astype(data.dtype)
    ez = jnp.concatenate([mean, jnp.ones((n, 1), data.dtype)], axis=1)
    a = jnp.einsum("ni,nj->ij", ez, ez).at[:-1, :-1].add(cov.sum(axis=0))
    return {"a": a, "b": data.T @ ez, "xx": jnp.sum(data**2, axis=0), "x": jnp.sum(data, axis=0),
            "n": jnp.asarray(n, data.dtype)}


def _regression(stats: dict) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    r"""``([W, mu], residual sum of squares per dimension, N, data variance per dimension)`` from the statistics."""
    coefficients = jnp.linalg.solve(stats["a"], stats["b"].T).T  # B A^{-1}, A symmetric
    residual = stats["xx"] - jnp.sum(coefficients * stats["b"], axis=1)
    n = stats["n"]
    return coefficients, residual, n, stats["xx"] / n - (stats["x"] / n) ** 2


def _direct_regression(params, data: jax.Array, post) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    r"""``_regression`` with the residual sum of squares summed directly over the data,
    :math:`\sum_i \|x_i - C E[\tilde z_i]\|^2 + \operatorname{diag}(W \sum_i \Sigma_i W^\top)`, a sum of
    non-negative terms, instead of the difference :math:`\sum x^2 - C B^\top` of two totals that can be
    10^5 times larger than it (a small noise variance, in float32: the noise lost whole digits and
    log p(D) fell between iterations)."""
    stats = _collect(params, data, post)
    coefficients, _, n, variance = _regression(stats)
    mean, cov = post.mean.astype(data.dtype), post.covariance.astype(data.dtype)
    fitted = mean @ coefficients[:, :-1].T + coefficients[:, -1]
    loadings = coefficients[:, :-1]
    spread = jnp.einsum("dk,kl,dl->d", loadings, cov.sum(axis=0), loadings)
    return coefficients, sum_accurately((data - fitted) ** 2) + spread, n, variance


def _init(key, data, d: int, who: str):
    if not hasattr(data, "ndim") or data.ndim != 2:
        raise ValueError(f"data: {who} expects one (N, D) array, got {getattr(data, 'shape', type(data))}")
    if not jnp.issubdtype(data.dtype, jnp.floating):
        raise ValueError(f"data: {who} expects real-valued data, got dtype {data.dtype}")
    if d > data.shape[1]:
        raise ValueError(f"n_factors: expected at most D = {data.shape[1]} factors, got {d}")
    variance = jnp.var(data, axis=0) + 1e-6
    loadings = 0.1 * jax.random.normal(key, (data.shape[1], d), data.dtype) * jnp.sqrt(variance)[:, None]
    return jnp.mean(data, axis=0), loadings, variance


def factor_analysis(n_factors: int) -> LinearGaussian:
    r"""Factor analysis with ``n_factors`` latent factors for data ``(N, D)``: :math:`\Psi` diagonal.

    Example:
      >>> fa = jaxvi.models.factor_analysis(2)
      >>> result = jaxvi.infer(fa.model, jaxvi.EM(m_step=fa.m_step, tol=1e-6), X, key=jax.random.key(0))
    """
    latent = Gaussian(n_factors)

    def maximize(params: FactorAnalysisParams, stats, n=None) -> FactorAnalysisParams:
        coefficients, residual, count, variance = _regression(stats)
        noise = jnp.maximum(residual / count, NOISE_FLOOR * variance + jnp.finfo(residual.dtype).tiny)
        return FactorAnalysisParams(coefficients[:, -1], coefficients[:, :-1], jnp.log(noise))

    def m_step(params: FactorAnalysisParams, data, post) -> FactorAnalysisParams:
        coefficients, residual, count, variance = _direct_regression(params, data, post)
        noise = jnp.maximum(residual / count, NOISE_FLOOR * variance + jnp.finfo(residual.dtype).tiny)
        return FactorAnalysisParams(coefficients[:, -1], coefficients[:, :-1], jnp.log(noise))

    def init(key, data) -> FactorAnalysisParams:
        mean, loadings, variance = _init(key, data, n_factors, "factor_analysis")
        return FactorAnalysisParams(mean, loadings, jnp.log(variance))

    return LinearGaussian(Model(_log_joint, latent, init), m_step, Statistics(_collect, maximize))


def ppca(n_components: int) -> LinearGaussian:
    r"""Probabilistic PCA with ``n_components`` latent dimensions for data ``(N, D)``: :math:`\Psi = \sigma^2 I`.

    At the maximum likelihood :math:`W` spans the top principal subspace of the sample covariance
    and :math:`\sigma^2` is the mean of the discarded eigenvalues (Tipping & Bishop 1999).
    """
    latent = Gaussian(n_components)

    def maximize(params: PPCAParams, stats, n=None) -> PPCAParams:
        coefficients, residual, count, variance = _regression(stats)
        floor = NOISE_FLOOR * jnp.mean(variance) + jnp.finfo(residual.dtype).tiny
        noise = jnp.maximum(jnp.sum(residual) / (count * residual.shape[0]), floor)
        return PPCAParams(coefficients[:, -1], coefficients[:, :-1], jnp.log(noise))

    def m_step(params: PPCAParams, data, post) -> PPCAParams:
        coefficients, residual, count, variance = _direct_regression(params, data, post)
        floor = NOISE_FLOOR * jnp.mean(variance) + jnp.finfo(residual.dtype).tiny
        noise = jnp.maximum(jnp.sum(residual) / (count * residual.shape[0]), floor)
        return PPCAParams(coefficients[:, -1], coefficients[:, :-1], jnp.log(noise))

    def init(key, data) -> PPCAParams:
        mean, loadings, variance = _init(key, data, n_components, "ppca")
        return PPCAParams(mean, loadings, jnp.log(jnp.mean(variance)))

    return LinearGaussian(Model(_log_joint, latent, init), m_step, Statistics(_collect, maximize))
