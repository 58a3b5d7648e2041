r"""Monte-Carlo estimators of the evidence lower bound and of its gradient.

For one latent (one datum's, or the global one) with particles :math:`u_s \sim q_\psi`, s = 1..S,
and log weights :math:`w_s = \log p_\theta(x, u_s) - \log q_\psi(u_s)` (the log-joint includes
the bijector's log-Jacobian), every estimator returns ``(surrogate, bound)``: ``bound`` estimates
the objective, ``surrogate`` is what is differentiated (its gradient is the estimator's gradient).

- ``"elbo"``: :math:`\frac1S \sum_s w_s`, reparameterised.
- ``"analytic"``: :math:`\frac1S \sum_s \log p(x, u_s) + H[q_\psi]` with the closed-form entropy.
- ``"stl"``: sticking the landing (Roeder et al. 2017): the ELBO with :math:`\log q` evaluated at
  stopped-gradient ψ, which drops the score term whose expectation is 0 (zero variance at q = p).
- ``"iwae"``: the importance-weighted bound :math:`\log \frac1S \sum_s e^{w_s}` (Burda et al. 2016),
  :math:`\ge` the ELBO and rising with S.
- ``"score"``: the score-function (REINFORCE) gradient for non-reparameterisable q:
  :math:`\frac1S \sum_s (w_s - b_s) \nabla_\psi \log q_\psi(u_s) + \nabla_\theta \log p_\theta(x, u_s)`
  with the leave-one-out baseline :math:`b_s = \frac{1}{S-1} \sum_{r \ne s} w_r` (needs S >= 2).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["ESTIMATORS", "ParticleTerms", "estimate", "particle_terms"]

ESTIMATORS = ("elbo", "analytic", "stl", "iwae", "score")

PyTree = Any


class ParticleTerms(NamedTuple):
    """The parts of the log weights of S particles, each ``(S,)``.

    Attributes:
      log_joint: :math:`\\log p_\\theta(x, z(u_s))`.
      log_det: :math:`\\log|\\det \\partial z / \\partial u|` at :math:`u_s` (0 without bijectors).
      log_q: :math:`\\log q_\\psi(u_s)` (at stopped-gradient ψ for ``"stl"``).
      entropy: :math:`H[q_\\psi]` where the estimator uses it, else 0.
    """

    log_joint: jax.Array
    log_det: jax.Array
    log_q: jax.Array
    entropy: jax.Array


def particle_terms(log_joint_at: Callable[[jax.Array], tuple[jax.Array, jax.Array, PyTree]], guide,
                   guide_params: PyTree, key: jax.Array, num_particles: int, estimator: str
                   ) -> tuple[ParticleTerms, PyTree]:
    """Draws the particles from the guide and evaluates ``log_joint_at(u) -> (log p(x, z(u)), log_det, extra)``
    at each; returns the terms and every particle's ``extra`` (stacked on a leading axis)."""
    stopped = jax.lax.stop_gradient(guide_params)
    sample_params = stopped if estimator == "score" else guide_params
    u, log_q = guide.sample_and_log_prob(sample_params, key, num_particles)
    if estimator == "score":
        u = jax.lax.stop_gradient(u)
        log_q = guide.log_prob(guide_params, u)
    elif estimator == "stl":
        log_q = guide.log_prob(stopped, u)
    log_joint, log_det, extra = jax.vmap(log_joint_at)(u)
    entropy = guide.entropy(guide_params) if estimator == "analytic" else jnp.zeros((), log_joint.dtype)
    return ParticleTerms(log_joint, log_det, log_q, entropy), extra


def estimate(terms: ParticleTerms, estimator: str) -> tuple[jax.Array, jax.Array]:
    """``(surrogate, bound)`` of one latent's particles (module docstring)."""
    num = terms.log_joint.shape[0]
    log_p = terms.log_joint + terms.log_det
    weights = log_p - terms.log_q
    if estimator == "analytic":
        bound = jnp.mean(log_p) + terms.entropy
        return bound, bound
    if estimator == "iwae":
        bound = jax.nn.logsumexp(weights) - jnp.log(jnp.asarray(num, weights.dtype))
        return bound, bound
    if estimator == "score":
        fixed = jax.lax.stop_gradient(weights)
        baseline = (jnp.sum(fixed) - fixed) / (num - 1)
        surrogate = jnp.mean((fixed - baseline) * terms.log_q + log_p)
        return surrogate - jax.lax.stop_gradient(surrogate) + jnp.mean(fixed), jnp.mean(weights)
    bound = jnp.mean(weights)  # "elbo" and "stl"
    return bound, bound
