r"""Monte-Carlo estimators of the evidence lower bound and of its gradient.

For one latent (one datum's, or the global one) with particles :math:`u_s \sim q_\psi`, s = 1..S,
and log weights :math:`w_s = \log p_\theta(x, u_s) - \log q_\psi(u_s)` (the log-joint includes
the bijector's log-Jacobian), every estimator returns ``(surrogate, bound)``: ``bound`` estimates
the objective, ``surrogate`` is what is differentiated (its gradient is the estimator's gradient,
and its value is the bound's). Each estimator is a small frozen object (``Reparameterized``,
``Analytic``, ``STL``, ``IWAE``, ``Score``) with two pure functions: how it draws the particles and
evaluates log q (``draw``), and how it turns their log weights into the two numbers (``estimate``);
``as_estimator`` maps the names below to them.

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

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["ESTIMATORS", "IWAE", "STL", "Analytic", "ParticleTerms", "Reparameterized", "Score", "as_estimator",
           "estimate", "particle_terms"]

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


@dataclasses.dataclass(frozen=True)
class Reparameterized:
    """The reparameterised ELBO, :math:`\\frac1S \\sum_s w_s`."""

    name = "elbo"
    score = False
    needs_entropy = False

    def draw(self, guide, guide_params, key, num_particles):
        return guide.sample_and_log_prob(guide_params, key, num_particles)

    def estimate(self, terms: ParticleTerms):
        bound = jnp.mean(_log_weights(terms))
        return bound, bound


@dataclasses.dataclass(frozen=True)
class STL(Reparameterized):
    """Sticking the landing: log q at stopped-gradient ψ (Roeder et al. 2017)."""

    name = "stl"

    def draw(self, guide, guide_params, key, num_particles):
        u, _ = guide.sample_and_log_prob(guide_params, key, num_particles)
        return u, guide.log_prob(jax.lax.stop_gradient(guide_params), u)


@dataclasses.dataclass(frozen=True)
class Analytic(Reparameterized):
    """The closed-form entropy in place of -log q: :math:`\\frac1S \\sum_s \\log p(x, u_s) + H[q_\\psi]`."""

    name = "analytic"
    needs_entropy = True

    def estimate(self, terms: ParticleTerms):
        bound = jnp.mean(terms.log_joint + terms.log_det) + terms.entropy
        return bound, bound


@dataclasses.dataclass(frozen=True)
class IWAE(Reparameterized):
    """The importance-weighted bound :math:`\\log \\frac1S \\sum_s e^{w_s}` (Burda et al. 2016)."""

    name = "iwae"

    def estimate(self, terms: ParticleTerms):
        weights = _log_weights(terms)
        bound = jax.nn.logsumexp(weights) - jnp.log(jnp.asarray(weights.shape[0], weights.dtype))
        return bound, bound


@dataclasses.dataclass(frozen=True)
class Score:
    """The score-function gradient with a leave-one-out baseline (needs S >= 2)."""

    name = "score"
    score = True
    needs_entropy = False

    def draw(self, guide, guide_params, key, num_particles):
        u, _ = guide.sample_and_log_prob(jax.lax.stop_gradient(guide_params), key, num_particles)
        u = jax.lax.stop_gradient(u)
        return u, guide.log_prob(guide_params, u)

    def estimate(self, terms: ParticleTerms):
        num = terms.log_joint.shape[0]
        log_p = terms.log_joint + terms.log_det
        weights = log_p - terms.log_q
        fixed = jax.lax.stop_gradient(weights)
        baseline = (jnp.sum(fixed) - fixed) / (num - 1)
        surrogate = jnp.mean((fixed - baseline) * terms.log_q + log_p)
        return surrogate - jax.lax.stop_gradient(surrogate) + jnp.mean(fixed), jnp.mean(weights)


ESTIMATORS = {"elbo": Reparameterized(), "analytic": Analytic(), "stl": STL(), "iwae": IWAE(), "score": Score()}


def as_estimator(estimator):
    """An estimator object from its name (``ESTIMATORS``) or itself.

    Raises:
      ValueError: an unknown name or object.
    """
    if isinstance(estimator, str) and estimator in ESTIMATORS:
        return ESTIMATORS[estimator]
    if isinstance(estimator, tuple(type(e) for e in ESTIMATORS.values())):
        return estimator
    raise ValueError(f"estimator: expected one of {tuple(ESTIMATORS)} or an estimator object, got {estimator!r}")


def particle_terms(log_joint_at: Callable[[jax.Array], tuple[jax.Array, jax.Array, PyTree]], guide,
                   guide_params: PyTree, key: jax.Array, num_particles: int, estimator
                   ) -> tuple[ParticleTerms, PyTree]:
    """Draws the particles from the guide and evaluates ``log_joint_at(u) -> (log p(x, z(u)), log_det, extra)``
    at each; returns the terms and every particle's ``extra`` (stacked on a leading axis)."""
    estimator = as_estimator(estimator)
    u, log_q = estimator.draw(guide, guide_params, key, num_particles)
    log_joint, log_det, extra = jax.vmap(log_joint_at)(u)
    entropy = guide.entropy(guide_params) if estimator.needs_entropy else jnp.zeros((), log_joint.dtype)
    return ParticleTerms(log_joint, log_det, log_q, entropy), extra


def estimate(terms: ParticleTerms, estimator) -> tuple[jax.Array, jax.Array]:
    """``(surrogate, bound)`` of one latent's particles (module docstring)."""
    return as_estimator(estimator).estimate(terms)


def _log_weights(terms: ParticleTerms) -> jax.Array:
    return terms.log_joint + terms.log_det - terms.log_q
