r"""``jaxvi.evidence``: log p(D | θ), exactly where the latent allows it, else by importance sampling.

With a proposal q (a fitted guide) and S draws :math:`u_s \sim q`, for one latent (one datum's,
or the global one)

.. math::
    \hat p = \frac1S \sum_s e^{w_s}, \quad w_s = \log p_\theta(x, z(u_s)) + \log|J(u_s)| - \log q(u_s),
    \qquad \log p_\theta(x) \approx \log \hat p,

an estimate that is unbiased for p(x) (so :math:`E[\log \hat p] \le \log p(x)`: it is the IWAE-S
bound) and consistent as S grows. Its standard error is the delta method's,
:math:`\operatorname{sd}(e^{w}) / (\sqrt S\, \hat p)`, summed in quadrature over data. That standard
error is itself only trustworthy when the weights have a finite variance: PSIS's :math:`\hat k` of the
same weights (``jaxvi.psis``) says whether they do, per datum for a local latent; above 0.7 the estimate
is unreliable and ``evidence`` warns.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvi import exact
from jaxvi.chunks import map_data
from jaxvi.equality import Structural
from jaxvi.exact.gaussian import GaussianPosterior
from jaxvi.latents import Global, exact_family, split_latent
from jaxvi.methods.settings import check_count
from jaxvi.model import Model, check_key, check_new_data, fitted_params, is_traced
from jaxvi.vi.fitted import FittedGuide
from jaxvi import pareto
from jaxvi.pareto import KHAT_THRESHOLD, MIN_DRAWS, log_mean_exp, log_mean_exp_variance, psis
from jaxvi.run.compiled import run_once_options
from jaxvi.run.schedule import resolution

__all__ = ["Evidence", "Resampled", "evidence", "psis_resample"]

PyTree = Any


class Evidence(NamedTuple):
    r"""log p(D | θ) and how it was obtained.

    Attributes:
      log_evidence: the (estimated) log evidence, a scalar.
      stderr: its Monte-Carlo standard error (0 when exact; the delta method, ``jaxvi.pareto.log_mean_exp_variance``,
        summed in quadrature over the data for a local latent).
      exact: whether it is exact (True) or an importance-sampling estimate.
      khat: for an estimate, PSIS's Pareto :math:`\hat k` of its importance weights: a scalar for a global
        latent, one per datum for a local one (above 0.7: unreliable). None when exact, or with fewer than 21
        draws per latent.
    """

    log_evidence: jax.Array
    stderr: jax.Array
    exact: bool
    khat: jax.Array | None = None


def evidence(model: Model, params: PyTree, data: PyTree, *, key: jax.Array | None = None, posterior=None,
             num_samples: int = 1000, exact: bool | None = None, chunk_size: int = 1024) -> Evidence:
    r"""The log evidence :math:`\log p_\theta(D) = \sum_i \log p_\theta(x_i)` (no prior on θ).

    Exact for ``Discrete``, ``Markov`` and ``Gaussian`` latents (the E-step's normaliser). For
    ``Real`` and ``Global`` latents, importance sampling from ``posterior``, a fitted guide
    (``result.posterior()`` of an SVI fit), with ``num_samples`` draws per latent.

    Args:
      model: the model.
      params: θ.
      data: the data (for local latents, the data the guide was fitted to).
      key: a PRNG key (needed for importance sampling).
      posterior: the proposal, a ``jaxvi.FittedGuide`` (needed for importance sampling).
      num_samples: draws per latent (an IWAE-``num_samples`` estimate: 5,000 is what VAE papers report).
      exact: None computes it exactly where the latent allows; False importance-samples even then
        (to see an estimator or a guide against the exact value); True requires it exact.
      chunk_size: data evaluated at once; fewer when ``num_samples`` is large, so that at most 65,536
        log-joint evaluations are in memory together.

    Example:
      >>> result = jaxvi.infer(model, jaxvi.SVI(), data, key=jax.random.key(0))
      >>> jaxvi.evidence(model, result.params, data, key=jax.random.key(1), posterior=result.posterior())
    """
    params, data = _checked(model, params, data)
    check_count("chunk_size", chunk_size)
    if exact not in (None, True, False):
        raise ValueError(f"exact: expected None, True or False, got {exact!r}")
    try:
        exact_family(model.latent)
        exact_possible = True
    except ValueError:
        exact_possible = False
    if exact and not exact_possible:
        raise ValueError(f"exact: latent {model.latent!r} has no exact posterior; use exact=None or False")
    if exact_possible and exact is not False:
        post = _exact_posterior(model, params, data, int(chunk_size))
        if isinstance(post, GaussianPosterior) and not is_traced(post.quadratic):
            _check_quadratic(post)
        return Evidence(jnp.sum(post.log_evidence), jnp.zeros((), post.log_evidence.dtype), True)
    if key is None or posterior is None:
        raise ValueError("evidence: this latent has no exact posterior; importance sampling needs key= and "
                         "posterior= (a fitted guide, e.g. result.posterior() of an SVI fit)")
    key = check_key(key)
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 2:
        raise ValueError(f"num_samples: expected an integer >= 2, got {num_samples!r}")
    num_samples = int(num_samples)
    _check_proposal(model, posterior, data)
    log_p, variance, khat = _importance_sampled(model, params, data, key, posterior, num_samples, chunk_size)
    if num_samples < MIN_DRAWS:
        khat = None
    elif not isinstance(khat, jax.core.Tracer):
        _warn_if_unreliable(khat)
    return Evidence(log_p, jnp.sqrt(variance), False, khat)


class Resampled(NamedTuple):
    """Posterior draws by PSIS importance resampling (``psis_resample``).

    Attributes:
      draws: the resampled latent values, leaves ``(num_draws, *shape)`` for a global latent,
        ``(N, num_draws, *shape)`` for a local one.
      khat: PSIS's Pareto :math:`\\hat k` of the weights they were resampled by (a scalar, or one per datum):
        above 0.7 the draws do not represent the posterior.
    """

    draws: PyTree
    khat: jax.Array


def psis_resample(model: Model, params: PyTree, data: PyTree, *, key: jax.Array, posterior,
                  num_samples: int = 1000, num_draws: int | None = None) -> Resampled:
    r"""Posterior draws corrected toward :math:`p_\theta(z \mid D)` by Pareto-smoothed importance resampling.

    ``num_samples`` draws :math:`u_s \sim q` (``posterior``, a fitted guide, as for ``evidence``) are weighted by
    :math:`w_s = \log p_\theta(D, z(u_s)) + \log|J(u_s)| - \log q(u_s)` (all the data for a global latent; its
    datum for a local one), the weights are Pareto-smoothed (``jaxvi.psis``), and ``num_draws`` (default
    ``num_samples``) are drawn from them with replacement: an approximation of the posterior that improves on
    q where k-hat is below 0.7 (Vehtari et al. 2024) and that k-hat says not to trust above it (warned).

    Raises:
      ValueError: as ``evidence``, and ``num_samples`` below 21 (PSIS fits the weights' tail).
    """
    (params, data), key = _checked(model, params, data), check_key(key)
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < MIN_DRAWS:
        raise ValueError(f"num_samples: expected an integer >= {MIN_DRAWS} (PSIS fits the weights' tail), got "
                         f"{num_samples!r}")
    num_draws = num_samples if num_draws is None else num_draws
    if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)) or num_draws < 1:
        raise ValueError(f"num_draws: expected an integer >= 1, got {num_draws!r}")
    num_samples, num_draws = int(num_samples), int(num_draws)
    _check_proposal(model, posterior, data)
    if posterior.is_global and not isinstance(model.latent, Global):
        raise ValueError("posterior: a global guide resamples a model whose latent is one Global node; with "
                         "local latents too, resample their guides")
    draws, khat = _resampled(model, posterior, params, data, key, num_samples, num_draws)
    if not isinstance(khat, jax.core.Tracer):
        _warn_if_unreliable(khat, "psis_resample: the resampled draws are unreliable")
    return Resampled(draws, khat)


def _checked(model: Model, params: PyTree, data: PyTree) -> tuple[PyTree, PyTree]:
    """``(params, data)`` checked as a fit's are: the data as ``check_new_data`` checks them, the parameters as
    ``fitted_params`` does (the log-joint traced once at their shapes)."""
    data = check_new_data(model, params, data)
    return fitted_params(model, params, data), data


def _check_quadratic(post: GaussianPosterior) -> None:
    """Raises ValueError where a ``Gaussian`` latent's log-joint was not quadratic in z for some datum (the
    posterior, and so the evidence, not exact there), as ``jaxvi.infer`` does."""
    bad = np.flatnonzero(~np.asarray(post.quadratic))
    if bad.size:
        raise ValueError(f"log_joint: a Gaussian latent needs log_joint(params, z, x) quadratic in z with a negative "
                         f"definite Hessian (an exact Gaussian posterior), but it is not for datum {bad[0]} (and "
                         f"{bad.size - 1} more): the evidence would not be exact. Write the model so z enters "
                         f"quadratically, or ask for the approximate posterior with Gaussian(d, laplace=True)")


def _check_proposal(model: Model, posterior, data) -> None:
    """Raises ValueError unless ``posterior`` is a fitted guide that can propose for ``data``."""
    if not isinstance(posterior, FittedGuide):
        kind = type(posterior).__name__
        hint = {"GlobalLocal": ": importance sampling takes a model whose latent is one Global node, or local "
                               "latents alone, and the guide of its SVI fit",
                "CAVIPosterior": ": a CAVI fit's bound is its objective, and its diagnostics hold the exact local "
                                 "evidence where there is one"}.get(kind, "")
        raise ValueError(f"posterior: expected a jaxvi.FittedGuide (result.posterior() of an SVI fit), got "
                         f"{kind}{hint}")
    parts = split_latent(model.latent)
    if parts.globals and not isinstance(model.latent, Global):
        if parts.local is None:
            raise ValueError(f"evidence: importance sampling takes a model whose latent is one Global node, or local "
                             f"latents alone, got {len(parts.globals)} Global nodes: write them as one "
                             f"Global({{...}}, log_prior) whose log_prior sums theirs")
        raise ValueError("evidence: importance sampling takes a model whose latent is one Global node, or local "
                         "latents alone, got one with both")
    n = jax.tree_util.tree_leaves(data)[0].shape[0]
    rows = jax.tree_util.tree_leaves(posterior.params)[0].shape[0]
    if not posterior.is_global and rows != n:
        raise ValueError(f"posterior: a local guide fitted to {rows} data cannot propose for {n} data; pass the "
                         f"data it was fitted to")


def _warn_if_unreliable(khat: jax.Array, what: str = "evidence: the importance-sampled estimate is unreliable"
                        ) -> None:
    unreliable = int(jnp.sum(khat > KHAT_THRESHOLD))
    if unreliable:
        where = "its weights" if khat.ndim == 0 else f"the weights of {unreliable} of {khat.size} data"
        warnings.warn(f"{what}: PSIS k-hat of {where} is above "
                      f"{KHAT_THRESHOLD} (largest {float(jnp.max(khat)):.2f}), so the proposal misses posterior mass; "
                      f"fit q closer (another guide, more steps) or draw more samples", stacklevel=3)


def _exact_posterior(model, params, data, chunk_size):
    """``exact.posterior`` compiled as one program for a run once: its static settings in a ``Structural``, hashed by
    what they are (a latent dict, unhashable, was refused by JAX as a static argument)."""
    settings = Structural((model.log_joint, model.latent, chunk_size, True))
    return jax.jit(exact._posterior, static_argnums=(0, 1), compiler_options=run_once_options(params, data))(
        settings, None, params, data)


@jax.jit
def _log_mean_exp_and_variance(log_weights: jax.Array, resolution: jax.Array) -> tuple[jax.Array, jax.Array,
                                                                                        jax.Array]:
    """``(log mean exp w, var of log mean exp w, PSIS k-hat)`` over the last axis (delta method; k-hat NaN
    under 21 weights; weights constant within ``resolution`` have no tail)."""
    return (log_mean_exp(log_weights, axis=-1), log_mean_exp_variance(log_weights, axis=-1),
            pareto.khat(log_weights, resolution))


def _importance_sampled(model, params, data, key, posterior, num_samples, chunk_size):
    if isinstance(model.latent, Global):
        return _global(model, posterior, params, data, key, num_samples)
    return _local(model, posterior, params, data, key, num_samples, chunk_size)


EVALUATIONS_AT_ONCE = 65_536  # log-joint evaluations held in memory together


def _weights(guide, space, log_joint_of_z, guide_params, key, num_samples, batch_size=None):
    """``(z, w, resolution)``: ``num_samples`` draws of z from the guide (leaves ``(num_samples, *shape)``), their
    log importance weights, the log-joint evaluated ``batch_size`` particles at a time, and how far rounding can
    move those weights (``jaxvi.run.resolution`` of the largest |log p| + |log q|)."""
    u, log_q = guide.sample_and_log_prob(guide_params, key, num_samples)

    def one(u):
        z, log_det = space.constrain(u)
        return z, log_joint_of_z(z) + log_det

    z, log_joint = jax.lax.map(one, u, batch_size=batch_size)
    return z, log_joint - log_q, resolution(jnp.max(jnp.abs(log_joint) + jnp.abs(log_q)))


def _global_weights(model, posterior, params, data, key, num_samples):
    def log_joint_of_z(z):
        log_lik = jax.vmap(lambda x: model.log_joint(params, z, x))(data)
        return model.latent.log_prior(params, z) + jnp.sum(log_lik)

    per_particle = max(1, EVALUATIONS_AT_ONCE // jax.tree_util.tree_leaves(data)[0].shape[0])
    return _weights(posterior.guide, posterior.space, log_joint_of_z, posterior.params, key, num_samples,
                    min(per_particle, num_samples))


def _local_weights(model, posterior, params, data, key, num_samples, per_datum, chunk_size=1024):
    """``per_datum(z, w)`` of every datum's draws and weights, data in front, ``chunk_size`` data at a time."""
    keys = jax.random.split(key, jax.tree_util.tree_leaves(posterior.params)[0].shape[0])

    def one_datum(args):
        x, psi, k = args  # k draws the weights, as evidence always has; per_datum gets a key folded from it
        z, w, r = _weights(posterior.guide, posterior.space, lambda z: model.log_joint(params, z, x), psi, k,
                           num_samples)
        return per_datum(z, w, r, jax.random.fold_in(k, 1))

    at_once = max(1, min(chunk_size, EVALUATIONS_AT_ONCE // num_samples))  # memory: data x particles
    return map_data(one_datum, (data, posterior.params, keys), at_once)


def _resample_one(z, weights, resolution, key, num_draws):
    """``num_draws`` of the draws ``z`` resampled with their Pareto-smoothed weights, and k-hat."""
    smoothed, khat = psis(weights, resolution)
    index = jax.random.categorical(key, smoothed, shape=(num_draws,))
    return jax.tree_util.tree_map(lambda a: a[index], z), khat


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _resampled(model, posterior, params, data, key, num_samples, num_draws):
    weight_key, draw_key = jax.random.split(key)
    if posterior.is_global:
        z, weights, rounding = _global_weights(model, posterior, params, data, weight_key, num_samples)
        return _resample_one(z, weights, rounding, draw_key, num_draws)
    return _local_weights(model, posterior, params, data, key, num_samples,
                          lambda z, w, r, k: _resample_one(z, w, r, k, num_draws))


@functools.partial(jax.jit, static_argnums=(0, 5))  # compiled once per model, proposal structure and shapes
def _global(model, posterior, params, data, key, num_samples):
    return _log_mean_exp_and_variance(*_global_weights(model, posterior, params, data, key, num_samples)[1:])


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _local(model, posterior, params, data, key, num_samples, chunk_size):
    log_p, variance, khat = _local_weights(model, posterior, params, data, key, num_samples,
                                           lambda z, w, r, k: _log_mean_exp_and_variance(w, r), chunk_size)
    return jnp.sum(log_p), jnp.sum(variance), khat
