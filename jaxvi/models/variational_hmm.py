r"""Variational (Bayesian) hidden Markov models, written only as log-joints: ``jaxvi.CAVI`` derives the updates.

.. math::
    \pi \sim \mathrm{Dir}(a_\pi), \quad A_{j\cdot} \sim \mathrm{Dir}(a_A), \quad
    z_0 \sim \pi, \quad z_t \mid z_{t-1} \sim A_{z_{t-1}\cdot}, \quad x_t \mid z_t \sim p(x \mid \phi_{z_t}),

with categorical emissions :math:`B_{k\cdot} \sim \mathrm{Dir}(a_B)` (hmmlearn's ``VariationalCategoricalHMM``)
or Gaussian ones with Normal-Wishart means and precisions (``VariationalGaussianHMM``, full covariance). The
chain is one structured factor of q (forward–backward on the expected log-joint), the parameters the global
factors. The priors default to hmmlearn's.
"""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from jaxvi.exact.chain import split_sequences
from jaxvi.latents import Dirichlet, Global, Markov, NormalWishart
from jaxvi.model import Model, check_values
from jaxvi.models import priors
from jaxvi.models.bayesian_gmm import _normal_log_prob, wishart_log_prob

__all__ = ["variational_categorical_hmm", "variational_gaussian_hmm"]

FAR_FROM_PRIOR = 3.0  # standard deviations between the data's mean and mean_prior beyond which a fit warns


def _dirichlet_log_prob(weights, concentration):
    """log Dir(weights | concentration) over the last axis, summed over the rest."""
    return jnp.sum(gammaln(jnp.sum(concentration, -1)) - jnp.sum(gammaln(concentration), -1)
                   + jnp.sum((concentration - 1) * jnp.log(weights), -1))


def _chain_log_prior(theta, start_prior, transition_prior):
    return (_dirichlet_log_prob(theta["start"], start_prior)
            + _dirichlet_log_prob(theta["transitions"], transition_prior))


def _log_move(theta, prev, state):
    return jnp.log(theta["start"][state]) if prev is None else jnp.log(theta["transitions"][prev, state])


def _prior(name, value, shape, above=None) -> jnp.ndarray:
    """A prior hyperparameter checked (``priors.numbers``) and broadcast to ``shape`` (one per state)."""
    return _broadcast(priors.numbers(name, value, shape, jnp.result_type(float), above=above), shape)


def _broadcast(value, shape):
    """``value`` broadcast to ``shape``: a NumPy array stays one (the model equal to itself built again), a traced
    one (a model built under a transformation) a JAX array."""
    return np.broadcast_to(value, shape) if isinstance(value, np.ndarray) else jnp.broadcast_to(value, shape)


def _concentration(name, value, default, shape) -> jnp.ndarray:
    return _prior(name, default if value is None else value, shape, above=0)


def variational_categorical_hmm(K: int, num_symbols: int, *, start_prior=None, transition_prior=None,
                                emission_prior=None) -> Model:
    r"""A Bayesian HMM of K states over symbols ``0 .. num_symbols - 1``, for ``jaxvi.CAVI``.

    Data are ``(N, T)`` integer sequences (or ``jaxvi.Sequences``). The latent is ``{"theta": Global({"start":
    Dirichlet(K), "transitions": Dirichlet(K, (K,)), "emissions": Dirichlet(num_symbols, (K,))}), "states":
    Markov(K)}``. Dirichlet concentrations default to hmmlearn's: 1/K for the start and transition rows,
    1/num_symbols for the emission rows.
    """
    for name, value in (("K", K), ("num_symbols", num_symbols)):  # Dirichlet rows over them: two values or more
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
            raise ValueError(f"{name}: expected an integer >= 2 (its probabilities are fitted), got {value!r}")
    a_start = _concentration("start_prior", start_prior, 1.0 / K, (K,))
    a_trans = _concentration("transition_prior", transition_prior, 1.0 / K, (K, K))
    a_emit = _concentration("emission_prior", emission_prior, 1.0 / num_symbols, (K, num_symbols))

    def log_prior(params, theta):
        return _chain_log_prior(theta, a_start, a_trans) + _dirichlet_log_prob(theta["emissions"], a_emit)

    def log_joint(params, z, x):
        prev, state = z["states"]
        theta = z["theta"]
        return _log_move(theta, prev, state) + jnp.log(theta["emissions"][state, x])

    latent = {"theta": Global({"start": Dirichlet(K), "transitions": Dirichlet(K, (K,)),
                               "emissions": Dirichlet(num_symbols, (K,))}, log_prior),
              "states": Markov(K)}
    def validate(data) -> None:  # a symbol outside [0, S) would be a gather XLA clamps
        check_values(data, "symbols", 0, num_symbols, integer=True)

    return Model(log_joint, latent, init=lambda key, data: {}, validate=validate)


def variational_gaussian_hmm(K: int, d: int, *, start_prior=None, transition_prior=None, mean_prior=0.0,
                             mean_precision=1.0, degrees_of_freedom=None, scale=None) -> Model:
    r"""A Bayesian HMM of K states with d-dimensional Gaussian emissions (full covariance), for ``jaxvi.CAVI``.

    Data are ``(N, T, d)`` float sequences (or ``jaxvi.Sequences``). Each state's mean and precision have a
    Normal-Wishart prior :math:`N(m_0, (b_0\Lambda)^{-1})\, W(\Lambda \mid W_0, \nu_0)`: ``mean_prior`` m_0
    (default 0; hmmlearn's ``VariationalGaussianHMM`` puts it at the data's mean: pass ``x.reshape(-1, d).mean(0)``
    for its model; a fit warns where the data's mean lies more than ``FAR_FROM_PRIOR`` standard deviations from
    it), ``mean_precision`` b_0, ``degrees_of_freedom`` :math:`\nu_0` (default d), ``scale``
    :math:`W_0^{-1}` (default :math:`10^{-3} I`), as hmmlearn's defaults; start and transition rows Dirichlet(1/K).
    ``jaxvi.CAVI()`` starts it from k-means of the steps, as hmmlearn does (its default ``start="auto"``: under
    these priors every state's mean drawn from its prior is near the prior mean, a start from which most keys end
    in a worse optimum).
    """
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 2:  # Dirichlet rows over the states
        raise ValueError(f"K: expected an integer >= 2 (its transition probabilities are fitted), got {K!r}")
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d: expected an integer >= 1, got {d!r}")
    real = jnp.result_type(float)
    a_start = _concentration("start_prior", start_prior, 1.0 / K, (K,))
    a_trans = _concentration("transition_prior", transition_prior, 1.0 / K, (K, K))
    m0 = _prior("mean_prior", mean_prior, (K, d))
    b0 = _prior("mean_precision", mean_precision, (K,), above=0)
    nu0 = _prior("degrees_of_freedom", d if degrees_of_freedom is None else degrees_of_freedom, (K,),
                 above=d - 1)  # a proper Wishart
    psi0 = _broadcast(priors.spd_matrices("scale", 1e-3 * np.eye(d) if scale is None else scale, (K, d, d), real),
                      (K, d, d))

    def log_prior(params, theta):
        means, precisions = theta["emissions"]
        emissions = jnp.sum(jax.vmap(lambda mean, precision, m, b, nu, psi: _normal_log_prob(mean, m, b * precision)
                                     + wishart_log_prob(precision, nu, psi))(means, precisions, m0, b0, nu0, psi0))
        return _chain_log_prior(theta, a_start, a_trans) + emissions

    def log_joint(params, z, x):
        prev, state = z["states"]
        theta = z["theta"]
        means, precisions = theta["emissions"]
        return _log_move(theta, prev, state) + _normal_log_prob(x, means[state], precisions[state])

    # q's layout about the prior mean where all states share it (NormalWishart's center: the prior is read about it,
    # and float32 keeps its digits with data far from 0)
    shared = np.ndim(mean_prior) <= 1
    about = tuple(float(c) for c in np.broadcast_to(np.asarray(mean_prior, float), (d,))) if shared else None
    latent = {"theta": Global({"start": Dirichlet(K), "transitions": Dirichlet(K, (K,)),
                               "emissions": NormalWishart(d, (K,), center=about)}, log_prior),
              "states": Markov(K)}
    m0_host = np.asarray(m0)

    def validate(data) -> None:  # hmmlearn takes the prior mean from the data; this model's is fixed at build time
        obs, lengths = split_sequences(data)
        steps = np.asarray(obs).reshape(-1, d)[(np.arange(np.shape(obs)[1])[None] < np.asarray(lengths)[:, None])
                                                .reshape(-1)]
        if steps.shape[0] < 2:
            return
        far = np.max(np.abs(steps.mean(0) - m0_host) / np.maximum(steps.std(0), np.finfo(np.float32).tiny))
        if far > FAR_FROM_PRIOR:
            warnings.warn(f"variational_gaussian_hmm: the data's mean lies {far:.3g} of their standard deviations from "
                          f"mean_prior: every state's prior mean is far from the data, which can leave states empty "
                          f"(and in float32 lose the natural parameters' digits); hmmlearn's VariationalGaussianHMM "
                          f"puts it at the data's mean: build the model with mean_prior=x.reshape(-1, d).mean(0)",
                          stacklevel=4)

    return Model(log_joint, latent, init=lambda key, data: {}, validate=validate)
