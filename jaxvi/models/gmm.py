r"""Gaussian mixture: :math:`z \sim \mathrm{Cat}(\pi)`, :math:`x \mid z \sim N(\mu_z, \Sigma_z)`.

Parameters follow scikit-learn's ``GaussianMixture``: ``logits`` (``log_softmax`` gives
:math:`\log \pi`), ``means`` and ``prec_chol``, the Cholesky factor :math:`P_k` of the precision
:math:`\Sigma_k^{-1} = P_k P_k^\top` (upper triangular, ``(K, D, D)``) for ``"full"``, or
:math:`1/\sigma_{kd}` (``(K, D)``) for ``"diag"``. The log density of one datum is

.. math::
    \log p(x, z{=}k) = \log \pi_k + \log|\det P_k| - \tfrac12 \|(x - \mu_k)^\top P_k\|^2
    - \tfrac{D}{2}\log 2\pi .

The closed-form M-step is scikit-learn's, including its regularisation: ``reg_covar`` is added
to the diagonal of every covariance, so a component that loses all its data keeps a finite
(tiny, isotropic) covariance instead of producing NaN; its weight then goes to ~0.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from jaxvi._deferred import distrax
from jaxvi.chunks import sum_accurately, sum_blocks, sum_data
from jaxvi.kmeans import kmeans, kmeans_plusplus, nearest, random_points
from jaxvi.latents import Discrete
from jaxvi.model import Model
from jaxvi.run.compiled import OneProgram
from jaxvi.statistics import Statistics

__all__ = ["GMMParams", "GaussianMixture", "gaussian_mixture", "gmm_m_step", "gmm_statistics", "weighted_moments"]

COVARIANCES = ("full", "diag")
INITS = ("kmeans", "kmeans++", "random")
# the M-step's chunk of centred, weighted data (K x chunk x D): its compiled time per M-step, N = 200,000 on a 2-core
# CPU, K = D = 16: 85 ms in chunks of 1,000 data (0.5 MB), 51-52 ms of 5,000-8,000 (5-8 MB), 59-68 ms of 10,000-40,000;
# K = D = 32: 444 ms of 1,000 (4 MB), 252 ms of 2,000 (8 MB), 312 ms of 8,000; K = D = 4: 13 ms of 1,000, 8 ms of 20,000
CHUNK_BYTES = 2 ** 23
CHUNK_ROWS = 8192  # ... and at most this many data, whose sum in float32 one GEMM accumulates (compensated across chunks)
BLOCK_ROWS = 1024  # the data a float32 sum runs over before the pairwise sum of blocks takes over (``sum_blocks``)
# diagonal moments of at most this many terms per datum (K x D) are summed over blocks in one fused reduction, more in
# chunks of GEMMs: the M-step's diagonal moments on 200,000 data, 2-core CPU, blocks against chunks: K = 8, D = 4
# (a Gaussian HMM's) 4-6 ms against 8-10 ms (the chunks' loop turns cost more than their GEMMs); K = D = 16 80-130 ms
# against 18-20 ms (XLA:CPU's fused reduction runs far slower than a GEMM over so many terms)
FUSED_ROW_WORK = 64


class GMMParams(NamedTuple):
    """Gaussian-mixture parameters (shapes for K components in D dimensions).

    Attributes:
      logits: ``(K,)``; mixture weights are ``softmax(logits)``.
      means: ``(K, D)``.
      prec_chol: ``(K, D, D)`` upper-triangular precision Cholesky factors (full) or ``(K, D)``
        inverse standard deviations (diag).
    """

    logits: jax.Array
    means: jax.Array
    prec_chol: jax.Array

    @property
    def weights(self) -> jax.Array:
        return jax.nn.softmax(self.logits, axis=-1)

    @property
    def covariances(self) -> jax.Array:
        """``(K, D, D)`` covariances (full) or ``(K, D)`` variances (diag)."""
        if self.prec_chol.ndim == self.means.ndim:
            return 1.0 / self.prec_chol**2
        precision = self.prec_chol @ jnp.swapaxes(self.prec_chol, -1, -2)
        return jnp.linalg.inv(precision)


class GaussianMixture(NamedTuple):
    """A Gaussian mixture model and its closed-form M-step, for ``jaxvi.EM(m_step=...)``; the M-step
    through sufficient statistics (``statistics``: for a streamed E-step, ``EM(m_step=statistics)``,
    or ``jaxvi.OnlineEM``)."""

    model: Model
    m_step: Callable
    statistics: Statistics


def gaussian_mixture(n_components: int, *, covariance: str = "full", init: str = "kmeans",
                     reg_covar: float = 1e-6, chunk_size: int | None = None) -> GaussianMixture:
    """A Gaussian mixture of ``n_components`` components for data of shape ``(N, D)``.

    Args:
      n_components: K >= 1.
      covariance: ``"full"`` or ``"diag"``.
      init: picks the means: ``"kmeans"`` (scikit-learn's default: k-means++ seeds refined by Lloyd's
        k-means, at most 100 rounds, stopped as scikit-learn's ``KMeans`` stops), ``"kmeans++"`` (the seeds
        alone) or ``"random"`` (K distinct data points); every datum is assigned to its nearest mean and one
        M-step gives the parameters. On iris (K = 3) a single ``"kmeans"`` start reaches scikit-learn's fit from
        each of 40 keys (5 did not from plain k-means++ seeds, before the seeds became greedy, as scikit-learn's);
        3 of 40 ``"kmeans++"`` starts end in a worse optimum.
      reg_covar: added to the diagonal of every covariance (keeps them positive definite). As in scikit-learn,
        the M-step is then not the exact maximiser of EM's Q, and log p(D) can fall by a little where a component
        holds few data (7.5e-6 of 408 nats, a component of 3 data); with ``reg_covar=0.0`` it never falls.
      chunk_size: data per chunk in the M-step's sums (default: ``gmm_m_step``'s, by bytes).

    Example:
      >>> gm = jaxvi.models.gaussian_mixture(3)
      >>> result = jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step), X, key=jax.random.key(0))
    """
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance: expected one of {COVARIANCES}, got {covariance!r}")
    if init not in INITS:
        raise ValueError(f"init: expected one of {INITS}, got {init!r}")
    if not reg_covar >= 0:
        raise ValueError(f"reg_covar: expected a number >= 0, got {reg_covar!r}")
    latent = Discrete(n_components)
    m_step = gmm_m_step(covariance, reg_covar, chunk_size)

    def init_params(key, data):
        _check_data(data, n_components)
        pick = {"kmeans": kmeans, "kmeans++": kmeans_plusplus, "random": random_points}[init]
        centers = pick(key, data, n_components)
        resp = jax.nn.one_hot(nearest(data, centers), n_components, dtype=data.dtype)
        return m_step(None, data, _Responsibilities(resp))

    log_joint = _log_joint_full if covariance == "full" else _log_joint_diag
    return GaussianMixture(Model(log_joint, latent, OneProgram(init_params)), m_step,
                           gmm_statistics(covariance, reg_covar))


def gmm_statistics(covariance: str = "full", reg_covar: float = 1e-6) -> Statistics:
    r"""The M-step of ``gmm_m_step`` through the sums :math:`N_k = \sum_i r_{ik}`, :math:`\sum_i r_{ik} \tilde x_{ik}`
    and :math:`\sum_i r_{ik} \tilde x_{ik} \tilde x_{ik}^\top` (diag: :math:`\sum_i r_{ik} \tilde x_{ik}^2`), which
    chunks of data add up, of the data about each component's shift :math:`c_k`, :math:`\tilde x_{ik} = x_i - c_k`
    (``Statistics.shift``: a θ's means, so the sums keep the components' spread in float32 wherever the data lie).

    Then :math:`\mu_k = c_k + \bar{\tilde x}_k` and the covariance is
    :math:`\overline{\tilde x \tilde x^\top}_k - \bar{\tilde x}_k \bar{\tilde x}_k^\top`, whose second term is
    the square of the mean's move from :math:`c_k`: small where the shift is near the mean. A component that holds
    no data keeps its shift as its mean (``gmm_m_step`` puts it at 0); its weight is 0 either way.
    """
    def collect(params, data, posterior, shift) -> dict:
        resp = posterior.probs.astype(data.dtype)
        about = data[:, None, :] - shift[None].astype(data.dtype)                 # (b, K, D)
        second = (jnp.einsum("bk,bkd,bke->kde", resp, about, about) if covariance == "full"
                  else jnp.einsum("bk,bkd->kd", resp, about**2))
        return {"n": resp.sum(axis=0), "x": jnp.einsum("bk,bkd->kd", resp, about), "xx": second}

    def maximize(params, stats, n, shift) -> GMMParams:
        nk = stats["n"] + 10 * jnp.finfo(stats["n"].dtype).eps
        moved = stats["x"] / nk[:, None]                                           # the means less the shift
        means = shift.astype(moved.dtype) + moved
        if covariance == "full":
            eye = jnp.eye(means.shape[1], dtype=means.dtype)
            cov = stats["xx"] / nk[:, None, None] - moved[:, :, None] * moved[:, None, :] + reg_covar * eye
            prec_chol = _precision_cholesky(cov)
        else:
            var = stats["xx"] / nk[:, None] - moved**2 + reg_covar
            prec_chol = jax.lax.rsqrt(jnp.maximum(var, reg_covar))
        return GMMParams(jnp.log(nk / nk.sum()), means, prec_chol)

    return Statistics(collect, maximize, shift=lambda params: params.means)


def gmm_m_step(covariance: str = "full", reg_covar: float = 1e-6, chunk_size: int | None = None) -> Callable:
    r"""The closed-form M-step :math:`\arg\max_\theta Q(\theta)` of a Gaussian mixture.

    With responsibilities :math:`r_{ik}` and :math:`N_k = \sum_i r_{ik}` (+ 10 machine epsilon):
    :math:`\pi_k = N_k / \sum_j N_j`, :math:`\mu_k = \sum_i r_{ik} x_i / N_k`,
    :math:`\Sigma_k = \sum_i r_{ik}(x_i - \mu_k)(x_i - \mu_k)^\top / N_k + \text{reg\_covar}\, I`.

    Every sum over data is accumulated accurately in float32 (``weighted_moments``).
    """
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size: expected an integer >= 1 or None, got {chunk_size!r}")

    def m_step(params, data, posterior) -> GMMParams:
        held, means, scatter = weighted_moments(data, posterior.probs.astype(data.dtype), covariance, chunk_size)
        nk = held + 10 * jnp.finfo(data.dtype).eps
        if covariance == "full":
            cov = scatter / nk[:, None, None] + reg_covar * jnp.eye(data.shape[1], dtype=data.dtype)
            prec_chol = _precision_cholesky(cov)
        else:
            prec_chol = jax.lax.rsqrt(scatter / nk[:, None] + reg_covar)
        return GMMParams(jnp.log(nk / nk.sum()), means, prec_chol)

    return m_step


def weighted_moments(data: jax.Array, weights: jax.Array, covariance: str = "full", chunk_size: int | None = None
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""``(held, means, scatter)`` of data ``(N, D)`` under weights ``(N, K)`` (responsibilities, state marginals):
    :math:`N_k = \sum_i w_{ik}`, :math:`\mu_k = \sum_i w_{ik} x_i / (N_k + 10\epsilon)` (0 for a component that holds
    no data) and :math:`S_k = \sum_i w_{ik}(x_i - \mu_k)(x_i - \mu_k)^\top` (diag: its diagonal, ``(K, D)``).

    Every sum over data is accumulated accurately in float32, and from centred data, never as
    :math:`E[xx^\top] - \mu\mu^\top`: the means of the data less the first datum (the float32 GEMM of data at 10^4
    with unit spread was 12-34 units off in the means, and EM's log p(D) fell by 9 nats), the (co)variances about
    the means (a Gaussian HMM's variances as :math:`E[x^2] - \mu^2` about the first step, one GEMM over 4,000 steps,
    were 1.2e-4 off float64's with jaxlib 0.12's XLA:CPU, 2e-5 with 0.10's; about the means 2e-6). :math:`N_k` is
    summed pairwise. The others: with at most ``FUSED_ROW_WORK`` diagonal terms per datum, over blocks of
    ``chunk_size`` data (default ``BLOCK_ROWS``) added pairwise (``sum_blocks``); else over chunks of ``chunk_size``
    data with a compensated running total (``sum_data``), a chunk by default holding as many data as make its
    K x chunk x D block of centred, weighted data ``CHUNK_BYTES``, at most ``CHUNK_ROWS``: enough that the loop over
    chunks costs little beside its GEMMs, few enough that memory stays bounded by the chunk and each GEMM's float32
    sum short.
    """
    shift = data[0]  # sum_i w_ik x_i = N_k x_0 + sum_i w_ik (x_i - x_0)
    mean_of = lambda held, shifted: (held[:, None] * shift + shifted) / (held + 10 * jnp.finfo(data.dtype).eps)[:, None]
    if covariance == "diag" and weights.shape[1] * data.shape[1] <= FUSED_ROW_WORK:
        # a datum's K x D terms few: each pass one reduction over blocks, fused with the centring (no loop)
        rows = chunk_size or BLOCK_ROWS
        held, shifted = sum_blocks(lambda block: (jnp.sum(block[1], 0),
                                                  jnp.sum(block[1][:, :, None] * (block[0][:, None] - shift), 0)),
                                   (data, weights), rows)
        means = mean_of(held, shifted)
        return held, means, sum_blocks(lambda block: jnp.sum(block[1][:, :, None] * (block[0][:, None] - means)**2, 0),
                                       (data, weights), rows)
    block = weights.shape[1] * data.shape[1] * data.dtype.itemsize  # bytes of one datum's K x D block
    rows = chunk_size or min(CHUNK_ROWS, max(1, CHUNK_BYTES // block))
    held = sum_accurately(weights)
    means = mean_of(held, sum_data(lambda chunk: chunk[1].T @ (chunk[0] - shift), (data, weights), rows))

    def scatter(chunk):  # sum_i w_ik (x_i - mu_k)(x_i - mu_k)^T over a chunk (diag: its diagonal)
        x, w = chunk
        if covariance == "full":  # one batched GEMM of sqrt(w_ik)(x_i - mu_k), components leading: 1.7x
            # faster than weighting one side (N = 200,000, D = K = 16, 2-core CPU)
            weighted = jnp.sqrt(w.T)[:, :, None] * (x[None] - means[:, None])
            return jnp.einsum("kbd,kbe->kde", weighted, weighted)
        return jnp.einsum("bk,bkd->kd", w, (x[:, None, :] - means)**2)

    return held, means, sum_data(scatter, (data, weights), rows)


def _log_joint_full(params: GMMParams, z, x):
    return jax.nn.log_softmax(params.logits)[z] + _component_log_prob_full(params.means, params.prec_chol, z, x)


def _log_joint_diag(params: GMMParams, z, x):
    return jax.nn.log_softmax(params.logits)[z] + _normal_diag(params.means[z], params.prec_chol[z]).log_prob(x)


def _normal_diag(mean, inv_std) -> distrax.MultivariateNormalDiag:
    """N(mean, diag(1 / inv_std^2)) from the inverse standard deviations (the diag ``prec_chol``)."""
    return distrax.MultivariateNormalDiag(mean, 1.0 / inv_std)


def _component_log_prob_full(means, prec_chols, k, x):
    r""":math:`\log N(x; \mu_k, (P_k P_k^\top)^{-1})` with every mean and x taken about the means' centre: x P - mu P
    (one GEMM of the data for every component) cancels where the data are far from the origin (20 float32 units of
    a GMM's log p(D) at 10^4, 280 of a Gaussian HMM's over 10^5 steps); about the centre, only where the means are
    far from one another."""
    centre = jnp.mean(means, axis=0)
    return _normal_log_prob_full(means[k] - centre, prec_chols[k], x - centre)


def _normal_log_prob_full(mean, prec_chol, x):
    r""":math:`\log N(x; \mu, (P P^\top)^{-1}) = \log N(P^\top x - P^\top \mu; 0, I) + \log|\det P|`, P the
    upper-triangular precision Cholesky factor.

    The whitening is written by hand: ``distrax.MultivariateNormalTri`` wants the covariance's factor
    :math:`P^{-\top}` and solves a triangular system per datum (measured 10-100x slower E-steps), and a
    ``distrax.Transformed`` over ``Inverse(TriangularLinear(P^T))`` matched the E-step but was ~1.6x slower
    under ``jax.grad`` (2-core CPU, N = 20000, K = 5, D = 8 and 32).
    """
    prec_chol = jnp.triu(prec_chol)
    y = x @ prec_chol - mean @ prec_chol
    log_det = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(prec_chol))))
    return distrax.MultivariateNormalDiag(jnp.zeros_like(y)).log_prob(y) + log_det


def _precision_cholesky(cov):
    """Upper-triangular P with P P^T = cov^{-1}: P = (L^{-1})^T for cov = L L^T."""
    chol = jnp.linalg.cholesky(cov)
    eye = jnp.broadcast_to(jnp.eye(cov.shape[-1], dtype=cov.dtype), cov.shape)
    return jnp.swapaxes(solve_triangular(chol, eye, lower=True), -1, -2)


class _Responsibilities(NamedTuple):
    probs: jax.Array


def _check_data(data, k):
    if not hasattr(data, "ndim") or data.ndim != 2:
        raise ValueError(f"data: a Gaussian mixture expects one (N, D) array, got {getattr(data, 'shape', type(data))}")
    if data.shape[0] < k:
        raise ValueError(f"data: expected at least n_components={k} data, got {data.shape[0]}")
    if not jnp.issubdtype(data.dtype, jnp.floating):
        raise ValueError(f"data: a Gaussian mixture expects real-valued data, got dtype {data.dtype}")
