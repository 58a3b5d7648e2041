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
- ``"dreg"``: the IWAE bound with the doubly reparameterised gradient (Tucker, Lawson, Gu & Maddison
  2019): with normalised weights :math:`\tilde w_s = e^{w_s} / \sum_r e^{w_r}`, the gradient in ψ is
  :math:`\sum_s \tilde w_s^2 \, \partial w_s / \partial u_s \, \partial u_s / \partial \psi` (log q at
  stopped ψ, no score term) and in θ the IWAE one, :math:`\sum_s \tilde w_s \nabla_\theta \log p_\theta(x, u_s)`;
  unbiased for the IWAE gradient, with a variance that does not grow with S as IWAE's does. With S = 1 it
  is ``"stl"``.
- ``"vimco"``: the IWAE bound for non-reparameterisable (discrete) q, with the score-function gradient
  and VIMCO's per-particle baselines (Mnih & Rezende 2016): with :math:`\hat L = \log \frac1S \sum_s e^{w_s}`
  and :math:`\hat L_{-s}` the same with :math:`w_s` replaced by the mean of the others,
  :math:`\sum_s (\hat L - \hat L_{-s}) \nabla_\psi \log q_\psi(u_s) + \sum_s \tilde w_s \nabla w_s` (needs S >= 2).
- ``Renyi(alpha)``: the variational Rényi bound (Li & Turner 2016),
  :math:`\frac{1}{1-\alpha} \log \frac1S \sum_s e^{(1-\alpha) w_s}`, reparameterised: α = 0 is IWAE, α → 1
  the ELBO; for 0 < α < 1 it lies between them, and for α < 0 it estimates an upper bound of log p(x) as
  S grows (biased low for small S).

Every estimator also gives its bound's Monte-Carlo variance (``variance``), estimated from the same particles
with n - 1 in the denominator (NaN from one particle): :math:`\widehat{\mathrm{Var}}(w)/S` for the ELBO's
mean, that of :math:`\log p(x, u_s)` for ``"analytic"`` (the entropy is exact), and by the delta method for
a log-mean-exp, :math:`\widehat{\mathrm{Var}}(e^{w_s - \hat L})/S` (IWAE, DReG, VIMCO; Rényi's with the weights
scaled by 1 - α and the result by :math:`(1 - \alpha)^{-2}`), the variance of the ratio of the mean weight to
its estimate. The ELBO's formula applied to a log-mean-exp does not estimate its error (the bound is a log of a
mean, not a mean of logs): on a normal mean's posterior, 100 particles, it was 1.7x the IWAE bound's spread over
keys at an over-dispersed q and an eighth of it at a narrow one; the delta method's was within 2.5% at the first
and half the spread at the second, whose weights have a heavy tail (PSIS k-hat 0.83).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvi.methods.settings import check_number, is_concrete, settings
from jaxvi.pareto import log_mean_exp, log_mean_exp_variance

__all__ = ["ESTIMATORS", "IWAE", "STL", "VIMCO", "Analytic", "DReG", "ParticleTerms", "Renyi", "Reparameterized", "Score",
           "as_estimator", "estimate", "particle_terms"]

PyTree = Any


class ParticleTerms(NamedTuple):
    """The parts of the log weights of S particles, each ``(S,)``.

    Attributes:
      log_joint: :math:`\\log p_\\theta(x, z(u_s))`.
      log_det: :math:`\\log|\\det \\partial z / \\partial u|` at :math:`u_s` (0 without bijectors).
      log_q: :math:`\\log q_\\psi(u_s)` (at stopped-gradient ψ for ``"stl"``).
      entropy: :math:`H[q_\\psi]` where the estimator uses it, else 0.
      path: where the estimator needs it (``DReG``), :math:`g_s \\cdot (u_s - \\bar u_s)` with
        :math:`g_s = \\partial w_s / \\partial u_s` and the bar a stopped gradient: 0 in value, its gradient
        is the pathwise one of :math:`w_s` through the particle alone; else 0.
    """

    log_joint: jax.Array
    log_det: jax.Array
    log_q: jax.Array
    entropy: jax.Array
    path: jax.Array


@settings()
@dataclasses.dataclass(frozen=True)
class Reparameterized:
    """The reparameterised ELBO, :math:`\\frac1S \\sum_s w_s`."""

    name = "elbo"
    score = False
    needs_entropy = False
    needs_path = False

    def draw(self, guide, guide_params, key, num_particles):
        return guide.sample_and_log_prob(guide_params, key, num_particles)

    def estimate(self, terms: ParticleTerms):
        bound = jnp.mean(_log_weights(terms))
        return bound, bound

    def variance(self, terms: ParticleTerms) -> jax.Array:
        """The Monte-Carlo variance of ``estimate``'s bound (module docstring): the ELBO's; a subclass whose
        ``estimate`` is another bound gives its own."""
        return _variance_of_mean(_log_weights(terms))


@settings()
@dataclasses.dataclass(frozen=True)
class STL(Reparameterized):
    """Sticking the landing: log q at stopped-gradient ψ (Roeder et al. 2017)."""

    name = "stl"

    def draw(self, guide, guide_params, key, num_particles):
        u, _ = guide.sample_and_log_prob(guide_params, key, num_particles)
        return u, guide.log_prob(jax.lax.stop_gradient(guide_params), u)


@settings()
@dataclasses.dataclass(frozen=True)
class Analytic(Reparameterized):
    """The closed-form entropy in place of -log q: :math:`\\frac1S \\sum_s \\log p(x, u_s) + H[q_\\psi]`."""

    name = "analytic"
    needs_entropy = True

    def estimate(self, terms: ParticleTerms):
        bound = jnp.mean(terms.log_joint + terms.log_det) + terms.entropy
        return bound, bound

    def variance(self, terms: ParticleTerms) -> jax.Array:
        return _variance_of_mean(terms.log_joint + terms.log_det)


@settings()
@dataclasses.dataclass(frozen=True)
class IWAE(Reparameterized):
    """The importance-weighted bound :math:`\\log \\frac1S \\sum_s e^{w_s}` (Burda et al. 2016)."""

    name = "iwae"

    def estimate(self, terms: ParticleTerms):
        bound = log_mean_exp(_log_weights(terms))
        return bound, bound

    def variance(self, terms: ParticleTerms) -> jax.Array:
        return log_mean_exp_variance(_log_weights(terms))


@settings()
@dataclasses.dataclass(frozen=True)
class Score:
    """The score-function gradient with a leave-one-out baseline (needs S >= 2)."""

    name = "score"
    score = True
    needs_entropy = False
    needs_path = False

    def draw(self, guide, guide_params, key, num_particles):
        u, _ = guide.sample_and_log_prob(jax.lax.stop_gradient(guide_params), key, num_particles)
        u = jax.lax.stop_gradient(u)
        return u, guide.log_prob(guide_params, u)

    def estimate(self, terms: ParticleTerms):
        num = terms.log_joint.shape[0]
        log_p = terms.log_joint + terms.log_det
        weights = _log_weights(terms)
        fixed = jax.lax.stop_gradient(weights)
        baseline = (jnp.sum(fixed) - fixed) / (num - 1)
        surrogate = jnp.mean((fixed - baseline) * terms.log_q + log_p)
        return surrogate - jax.lax.stop_gradient(surrogate) + jnp.mean(fixed), jnp.mean(weights)

    def variance(self, terms: ParticleTerms) -> jax.Array:
        return _variance_of_mean(_log_weights(terms))


@settings()
@dataclasses.dataclass(frozen=True)
class DReG(STL):
    """The IWAE bound with the doubly reparameterised gradient (Tucker et al. 2019; module docstring)."""

    name = "dreg"
    needs_path = True

    def estimate(self, terms: ParticleTerms):
        weights = _log_weights(terms)  # log q at stopped ψ: only the pathwise gradient
        normalized = jax.nn.softmax(jax.lax.stop_gradient(weights))
        surrogate = jnp.sum(normalized * weights) + jnp.sum(jax.lax.stop_gradient(normalized ** 2 - normalized)
                                                            * terms.path)
        bound = log_mean_exp(weights)
        return surrogate - jax.lax.stop_gradient(surrogate) + jax.lax.stop_gradient(bound), bound

    def variance(self, terms: ParticleTerms) -> jax.Array:
        return log_mean_exp_variance(_log_weights(terms))


@settings()
@dataclasses.dataclass(frozen=True)
class VIMCO(Score):
    """The IWAE bound with VIMCO's leave-one-out score-function gradient (Mnih & Rezende 2016; needs S >= 2)."""

    name = "vimco"

    def estimate(self, terms: ParticleTerms):
        num = terms.log_joint.shape[0]
        weights = _log_weights(terms)
        fixed = jax.lax.stop_gradient(weights)
        bound = log_mean_exp(fixed)
        others_mean = (jnp.sum(fixed) - fixed) / (num - 1)
        # row s: the weights with w_s replaced by the mean of the others
        left_out = jnp.where(jnp.eye(num, dtype=bool), others_mean[:, None], fixed[None, :])
        learning_signal = bound - log_mean_exp(left_out, axis=-1)
        surrogate = jnp.sum(learning_signal * terms.log_q) + jnp.sum(jax.nn.softmax(fixed) * weights)
        return surrogate - jax.lax.stop_gradient(surrogate) + bound, bound

    def variance(self, terms: ParticleTerms) -> jax.Array:
        return log_mean_exp_variance(_log_weights(terms))


@settings("alpha")
@dataclasses.dataclass(frozen=True)
class Renyi(Reparameterized):
    """The variational Rényi bound of order ``alpha`` (Li & Turner 2016; module docstring), reparameterised.

    Args:
      alpha: the order α, any finite number, traced like a learning rate (a new α does not recompile; ``jax.vmap``
        over it works). 1 is the ELBO, 0 IWAE.
    """

    alpha: float = 0.5
    name = "renyi"

    def __post_init__(self):
        check_number("Renyi(alpha)", self.alpha)
        # check_number lets +inf through; NumPy, as a known number needs no compiled jnp.isfinite (0.16 s at import)
        if is_concrete(self.alpha) and not np.isfinite(np.asarray(self.alpha)).all():
            raise ValueError(f"Renyi(alpha): expected a finite number, got {self.alpha!r}")

    def estimate(self, terms: ParticleTerms):
        weights = _log_weights(terms)
        at_one, scale = self._order(weights.dtype)
        bound = jnp.where(at_one, jnp.mean(weights), log_mean_exp(scale * weights) / scale)
        return bound, bound

    def variance(self, terms: ParticleTerms) -> jax.Array:
        """:math:`\\widehat{\\mathrm{Var}}(e^{a w_s - \\log \\frac1S \\sum_r e^{a w_r}}) / (S a^2)`, a = 1 - α, by the
        delta method; the ELBO's at a = 0, its limit."""
        weights = _log_weights(terms)
        at_one, scale = self._order(weights.dtype)
        return jnp.where(at_one, _variance_of_mean(weights), log_mean_exp_variance(scale * weights) / scale ** 2)

    def _order(self, dtype) -> tuple[jax.Array, jax.Array]:
        """``(at_one, a)``: whether α = 1 (the limit, the ELBO, which ``estimate`` and ``variance`` take there) and
        a = 1 - α, or 1 at α = 1, so that the other branch stays finite (no NaN in its gradient)."""
        one_minus = 1 - jnp.asarray(self.alpha, dtype)
        at_one = one_minus == 0
        return at_one, jnp.where(at_one, 1, one_minus)


ESTIMATORS = {"elbo": Reparameterized(), "analytic": Analytic(), "stl": STL(), "iwae": IWAE(), "score": Score(),
              "dreg": DReG(), "vimco": VIMCO(), "renyi": Renyi()}


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


def particle_terms(log_joint_at: Callable[..., tuple[jax.Array, jax.Array, PyTree]], guide, guide_params: PyTree,
                   key: jax.Array, num_particles: int, estimator, inputs: PyTree = None, batched: bool = False
                   ) -> tuple[ParticleTerms, PyTree]:
    """Draws the particles from the guide and evaluates ``log_joint_at(u) -> (log p(x, z(u)), log_det, extra)``
    at each (``log_joint_at(u, input)`` with each particle's row of ``inputs`` when given, e.g. a key per
    particle); returns the terms and every particle's ``extra`` (stacked on a leading axis). ``batched``:
    ``log_joint_at`` takes every particle at once (a leading axis) and returns every particle's terms."""
    estimator = as_estimator(estimator)
    u, log_q = estimator.draw(guide, guide_params, key, num_particles)
    if batched:
        evaluate = log_joint_at if inputs is None else (lambda u: log_joint_at(u, inputs))
    else:
        evaluate = _over_particles(log_joint_at, num_particles, inputs)
    if estimator.needs_path:
        def total_weight(u):
            log_joint, log_det, extra = evaluate(u)
            log_q = guide.log_prob(jax.lax.stop_gradient(guide_params), u)
            return jnp.sum(log_joint + log_det - log_q), (log_joint, log_det, log_q, extra)

        # particles are independent: the gradient of the summed weights at u_s is that of w_s alone
        (_, (log_joint, log_det, log_q, extra)), grad = jax.value_and_grad(total_weight, has_aux=True)(u)
        grad = jax.lax.stop_gradient(grad)
        path = jnp.sum(grad * (u - jax.lax.stop_gradient(u)), axis=tuple(range(1, u.ndim)))
    else:
        log_joint, log_det, extra = evaluate(u)
        path = jnp.zeros_like(log_joint)
    entropy = guide.entropy(guide_params) if estimator.needs_entropy else jnp.zeros((), log_joint.dtype)
    return ParticleTerms(log_joint, log_det, log_q, entropy, path), extra


def _over_particles(log_joint_at: Callable, num_particles: int, inputs: PyTree) -> Callable:
    """``log_joint_at`` of every particle (a leading axis), vmapped; one particle evaluated without the vmap and
    given its axis after: XLA:CPU fuses a batch of one badly (the SVI logistic regression's 2,000 steps, its
    likelihood in NumPyro's Bernoulli form: 2.19 s vmapped, 0.47-0.58 s not)."""
    if num_particles == 1:
        def one(u):
            args = (u[0],) if inputs is None else (u[0], jax.tree_util.tree_map(lambda a: a[0], inputs))
            return jax.tree_util.tree_map(lambda a: a[None], log_joint_at(*args))
        return one
    return jax.vmap(log_joint_at) if inputs is None else (lambda u: jax.vmap(log_joint_at)(u, inputs))


def estimate(terms: ParticleTerms, estimator) -> tuple[jax.Array, jax.Array]:
    """``(surrogate, bound)`` of one latent's particles (module docstring)."""
    return as_estimator(estimator).estimate(terms)


def _variance_of_mean(values: jax.Array) -> jax.Array:
    """The Monte-Carlo variance of the mean of ``values`` (S,): their sample variance (n - 1) over S."""
    return jnp.var(values, ddof=1) / values.shape[0]


def _log_weights(terms: ParticleTerms) -> jax.Array:
    """``(S,)`` the particles' log importance weights :math:`w_s = \\log p(x, z_s) - \\log q(z_s)`."""
    return terms.log_joint + terms.log_det - terms.log_q


