r"""Exponential families, the factors of a mean-field q for coordinate-ascent VI (a kernel: pure functions).

A family's density is :math:`q(z) = \exp(\eta \cdot T(z) - A(\eta))` with sufficient statistics :math:`T`,
natural parameters :math:`\eta` and log-normaliser :math:`A` (every family here has a base measure of 1 with
respect to Lebesgue measure on its support, or counting measure for the categorical, so none is carried). Each family writes only :math:`T` and
:math:`A`; everything else follows from them by autodiff:

- expected statistics :math:`E_q[T] = \nabla A(\eta)`;
- entropy :math:`H[q] = A(\eta) - \eta \cdot E_q[T]`;
- :math:`KL(q \| p) = A(\eta_p) - A(\eta_q) - (\eta_p - \eta_q) \cdot E_q[T]`;
- a function linear in :math:`T` has its expectation in closed form: ``expect_linear``.

``natural_parameters`` reads :math:`\eta` off a function that is linear in a family's statistics (the
conditional of a conjugate log-joint, Hoffman, Johnson & Tran's Autoconj condition) from its gradient at a
few points, and checks the linearity at those points, as ``Gaussian(d)`` checks a quadratic log-joint.

A family's natural parameters are a tuple of arrays with the batch shape in front (``Gamma(shape=(3,))`` is
three independent Gammas). A factor is held in them, but for the Normal-Wishart, held about its own mean
(``NORMAL_WISHART``: float32 keeps W^-1 so); every function here takes a factor's held parameters, and
``to_natural`` / ``from_natural`` / ``read_about`` move between the two. Families: ``BETA``, ``GAMMA``,
``DIRICHLET``, ``WISHART``, ``NORMAL`` (a d-dimensional Gaussian), ``NORMAL_WISHART`` and ``CATEGORICAL`` (over
one-hot vectors, T = z: a function linear in z has its expectation at the mean, and its gradient is the update's
natural parameters).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import digamma, gammaln, multigammaln

from jaxvi.linalg import spd_inverse, spd_log_det, spd_solve

__all__ = ["BETA", "CATEGORICAL", "DIRICHLET", "Family", "GAMMA", "NORMAL", "NORMAL_WISHART", "NotLinear", "Quadrature",
           "WISHART", "anchor", "coordinate_update", "entropy", "expect_linear", "expect_product", "expectation",
           "expected_statistics", "from_natural", "kl_divergence", "log_density", "log_normalizer",
           "natural_parameters", "normal_wishart_moments", "normal_wishart_parameters", "normal_wishart_parts",
           "quadrature", "read_about", "tangent_change", "to_natural"]

Natural = tuple  # natural parameters: a tuple of arrays, batch shape in front


class Family(NamedTuple):
    r"""An exponential family over values of ``event_ndim`` trailing dimensions.

    Attributes:
      name: for messages.
      event_ndim: the number of trailing dimensions of one value (0 for scalars, 1 for vectors, 2 for matrices).
      stat_ndims: the number of trailing (event) dimensions of each statistic and natural parameter.
      statistics: ``T(z)`` of one value: a tuple of arrays matching the natural parameters' event shapes.
      log_normalizer: ``A(eta)`` for one factor (no batch dimensions).
      points: ``points(eta, p)``: p values in the support near q's mass (for ``natural_parameters``), stacked
        on a leading axis.
      read: ``read(points, gradients) -> beta``: the coefficients of a function linear in T (``p`` points and
        the function's gradients there, ``(p,) + event``, one factor), in closed form.
      tangent: projects an array shaped like values onto the directions in which a value can move (the
        symmetric part of a matrix); the identity for unconstrained events.
      num_nodes: how many nodes ``quadrature``'s generic rule uses.
      rule: the family's own ``quadrature`` rule, ``rule(eta) -> Quadrature``, or None for the generic one.
      anchor: for a family whose factors are held about a point of their own (the Normal-Wishart, about its mean):
        ``anchor(held) -> value`` that point, in the value's layout; None where the held parameters are the
        natural ones.
      about: ``about(held, c) -> natural``: the natural parameters of the value less ``c`` (a value, or None for 0).
      hold: ``hold(natural, c) -> held``: the held parameters from the natural ones of the value less ``c``.
    """

    name: str
    event_ndim: int
    stat_ndims: tuple
    statistics: Callable
    log_normalizer: Callable
    points: Callable
    read: Callable
    tangent: Callable = lambda v: v
    num_nodes: int = 2
    rule: Callable | None = None
    anchor: Callable | None = None
    about: Callable | None = None
    hold: Callable | None = None


class NotLinear(NamedTuple):
    """How far a function is from linear in a family's statistics at the points tried (both 0 when it is)."""

    gradient_residual: jax.Array
    value_residual: jax.Array


def _per_factor(family: Family, fn: Callable, eta: Natural):
    """``fn`` of one factor's natural parameters, mapped over the batch dimensions in front."""
    for _ in range(eta[0].ndim - family.stat_ndims[0]):
        fn = jax.vmap(fn)
    return fn(tuple(eta))


def _per_value(family: Family, fn: Callable, z: jax.Array):
    """``fn`` of one value, mapped over the batch dimensions of ``z`` in front of its event."""
    for _ in range(z.ndim - family.event_ndim):
        fn = jax.vmap(fn)
    return fn(z)


# --- reading natural parameters off gradients ----------------------------------------------------------
#
# For f = c + beta . T(z), the gradient at a value z is J_T(z)^T beta: each family reads its beta back from the
# gradients at a few points in closed form (small solves only). ``natural_parameters`` checks the read at all
# the points.

def _inverse_pair(u_a, u_b, g_a, g_b):
    r"""(beta_1, beta_2) from :math:`g = \beta_1 u + \beta_2` at two points (u the Jacobian of the statistic
    that is not the value itself): :math:`\beta_1 = (g_a - g_b) / (u_a - u_b)`."""
    beta_1 = (g_a - g_b) / (u_a - u_b)
    return beta_1, g_a - beta_1 * u_a


def _gamma_read(points, grads):
    r"""Gamma, T = (log z, z): :math:`f'(z) = \beta_{\log} / z + \beta_z`, from the first and last points."""
    return _inverse_pair(1 / points[0], 1 / points[-1], grads[0], grads[-1])


def _beta_read(points, grads):
    r"""Beta, T = (log z, log(1 - z)): :math:`f'(z) = \beta_1 / z - \beta_2 / (1 - z)`, a 2 x 2 solve on the
    first and last points."""
    z = jnp.stack([points[0], points[-1]])
    system = jnp.stack([1 / z, -1 / (1 - z)], axis=-1)
    beta = jnp.linalg.solve(system, jnp.stack([grads[0], grads[-1]]))
    return beta[0], beta[1]


def _dirichlet_read(points, grads):
    r"""Dirichlet, T = log z: :math:`\nabla f = \beta / z`, so :math:`\beta = z \odot \nabla f` (averaged)."""
    return (jnp.mean(points * grads, axis=0),)


def _log_det_read(precisions, grads):
    r"""(beta_1, beta_2) from :math:`G = \beta_1 + \beta_2 \Lambda^{-1}` (symmetric): beta_2 by least squares
    on the first and last points' difference, beta_1 the mean remainder."""
    inverses = spd_inverse(precisions)
    change = inverses[0] - inverses[-1]
    beta_2 = jnp.sum((grads[0] - grads[-1]) * change) / jnp.sum(change * change)
    return jnp.mean(grads - beta_2 * inverses, axis=0), beta_2


def _wishart_read(points, grads):
    r"""Wishart, T = (Λ, log|Λ|): :math:`\nabla f = \beta_\Lambda + \beta_{\log} \Lambda^{-1}`."""
    return _log_det_read(points, grads)


def _normal_read(points, grads):
    r"""Normal, T = (z, z zᵀ): :math:`\nabla f = \beta_1 + 2 \beta_2 z`: :math:`2\beta_2` by least squares on
    the differences from the first point (p >= d + 1 points spanning every direction), symmetrised."""
    steps, changes = points[1:] - points[0], grads[1:] - grads[0]
    twice = _symmetric(spd_solve(steps.T @ steps, steps.T @ changes))
    return jnp.mean(grads - points @ twice, axis=0), 0.5 * twice


def _normal_wishart_read(points, grads):
    r"""Normal-Wishart, T = (Λμ, μᵀΛμ, Λ, log|Λ|). In μ, :math:`\Lambda^{-1} \nabla_\mu f = \beta_1 + 2 \beta_2
    \mu`, a regression on the points' means; in Λ, what is left of :math:`\nabla_\Lambda f` once the μ terms
    :math:`\mathrm{sym}(\beta_1 \mu^\top) + \beta_2 \mu\mu^\top` are taken off is the Wishart's."""
    means, precisions = points[:, :, 0], points[:, :, 1:]
    scaled = spd_solve(precisions, grads[:, :, :1])[..., 0]                       # (p, d)
    centred = means - jnp.mean(means, axis=0)
    beta_2 = 0.5 * jnp.sum((scaled - jnp.mean(scaled, axis=0)) * centred) / jnp.sum(centred * centred)
    beta_1 = jnp.mean(scaled - 2 * beta_2 * means, axis=0)
    rest = (grads[:, :, 1:] - _symmetric(beta_1[:, None] * means[:, None, :])
            - beta_2 * means[:, :, None] * means[:, None, :])
    beta_3, beta_4 = _log_det_read(precisions, rest)
    return beta_1, beta_2, beta_3, beta_4


# --- the families ---------------------------------------------------------------------------------

def _beta_points(eta, p):
    a, b = eta[0] + 1.0, eta[1] + 1.0
    mean = a / (a + b)
    spread = jnp.minimum(mean, 1.0 - mean) * jnp.linspace(-0.5, 0.5, p)
    return mean + spread.reshape((p,) + (1,) * mean.ndim)


BETA = Family(
    "beta", 0, (0, 0),
    statistics=lambda z: (jnp.log(z), jnp.log1p(-z)),
    log_normalizer=lambda eta: gammaln(eta[0] + 1) + gammaln(eta[1] + 1) - gammaln(eta[0] + eta[1] + 2),
    points=_beta_points, read=_beta_read)


def _gamma_points(eta, p):
    mean = (eta[0] + 1.0) / -eta[1]
    return mean * jnp.exp(jnp.linspace(-0.7, 0.7, p)).reshape((p,) + (1,) * mean.ndim)


GAMMA = Family(  # shape a, rate b: eta = (a - 1, -b), T = (log z, z)
    "gamma", 0, (0, 0),
    statistics=lambda z: (jnp.log(z), z),
    log_normalizer=lambda eta: gammaln(eta[0] + 1) - (eta[0] + 1) * jnp.log(-eta[1]),
    points=_gamma_points, rule=lambda eta: _gamma_rule(eta), read=_gamma_read)


def _dirichlet_points(eta, p):
    alpha = eta[0] + 1.0
    mean = alpha / alpha.sum(-1, keepdims=True)
    tilt = jnp.linspace(-0.5, 0.5, p)[:, None] * jnp.cos(jnp.arange(alpha.shape[-1]) + 1.0)  # p directions
    tilt = tilt.reshape((p,) + (1,) * (mean.ndim - 1) + (alpha.shape[-1],))
    weights = mean * jnp.exp(tilt)
    return weights / weights.sum(-1, keepdims=True)


DIRICHLET = Family(  # eta = alpha - 1, T = log z
    "dirichlet", 1, (1,),
    statistics=lambda z: (jnp.log(z),),
    log_normalizer=lambda eta: jnp.sum(gammaln(eta[0] + 1)) - gammaln(jnp.sum(eta[0] + 1)),
    points=_dirichlet_points, rule=lambda eta: _dirichlet_rule(eta), read=_dirichlet_read)


def _categorical_points(eta, p):
    """p probability vectors near softmax(eta): the mean, tilted as the Dirichlet's points are."""
    return _dirichlet_points((jax.nn.softmax(eta[0], axis=-1) - 1.0,), p)


def _categorical_read(points, grads):
    r"""Categorical over one-hot z, T = z: :math:`\nabla f = \beta` (averaged over the points)."""
    return (jnp.mean(grads, axis=0),)


CATEGORICAL = Family(  # over one-hot vectors: eta = unnormalised log-probabilities, T = z
    "categorical", 1, (1,),
    statistics=lambda z: (z,),
    log_normalizer=lambda eta: jax.nn.logsumexp(eta[0]),
    points=_categorical_points, rule=lambda eta: _categorical_rule(eta), read=_categorical_read)


def _wishart_parts(eta):
    """(dof nu, scale W) from eta = (-W^-1 / 2, (nu - d - 1) / 2)."""
    d = eta[0].shape[-1]
    return 2 * eta[1] + d + 1, spd_inverse(-2 * eta[0])


def _wishart_log_normalizer(eta):
    d = eta[0].shape[-1]
    nu = 2 * eta[1] + d + 1
    log_det_inv_w = spd_log_det(-2 * eta[0])
    return -0.5 * nu * log_det_inv_w + 0.5 * nu * d * jnp.log(2.0) + multigammaln(0.5 * nu, d)


def _wishart_points(eta, p):
    r"""p precisions near q's: :math:`D^{1/2} S_j D^{1/2}` with D the diagonal of the mean's inverse,
    :math:`D = \mathrm{diag}(\nu / W^{-1}_{ii})`, and :math:`S_j` p well-conditioned SPD matrices (scaled, tilted
    off the diagonal). Of q's scales, not of its correlations: a read solves with the points (``_log_det_read``,
    ``_normal_wishart_read``), and at q's own precisions, near-singular where the features are collinear, float32
    lost the natural parameters' digits to those solves (their error grows with the condition number, 1e5 and
    more); a diagonal scaling costs a solve no accuracy. W^{-1} is read as it is held, never inverted."""
    d = eta[0].shape[-1]
    nu = 2 * eta[1] + d + 1
    scale = jnp.sqrt(nu[..., None] / jnp.diagonal(-2 * eta[0], axis1=-2, axis2=-1))    # D^(1/2), batch + (d,)
    off_diagonal = (jnp.ones((d, d)) - jnp.eye(d)) / d
    shapes = (jnp.exp(jnp.linspace(-0.5, 0.5, p))[:, None, None]
              * (jnp.eye(d) + 0.3 * jnp.linspace(-1.0, 1.0, p)[:, None, None] * off_diagonal))  # p SPD matrices
    shapes = shapes.reshape((p,) + (1,) * (scale.ndim - 1) + (d, d))
    return scale[..., :, None] * shapes * scale[..., None, :]


def _symmetric(m):
    return 0.5 * (m + jnp.swapaxes(m, -1, -2))


WISHART = Family(  # over a d x d precision matrix: eta = (-W^-1 / 2, (nu - d - 1) / 2), T = (z, log|z|)
    "wishart", 2, (2, 0),
    statistics=lambda z: (z, spd_log_det(z)),
    log_normalizer=_wishart_log_normalizer,
    points=_wishart_points, tangent=_symmetric, rule=lambda eta: _wishart_rule(eta), read=_wishart_read)


def _normal_points(eta, p):
    precision = -2 * eta[1]
    mean = spd_solve(precision, eta[0][..., None])[..., 0]
    sd = jnp.sqrt(jnp.diagonal(spd_inverse(precision), axis1=-2, axis2=-1))
    d = mean.shape[-1]
    # the mean, a step along every axis, a shorter step back along the diagonal, ...: p points whose gradients
    # determine a quadratic's coefficients once p >= d + 1; the check's point (the (d + 2)-th) not the mirror of
    # another, so that a gradient deviating oddly from linear (sin(mu) on data about 0) shows at the points
    design = jnp.concatenate([jnp.zeros((1, d)), 0.5 * jnp.eye(d), -0.25 * jnp.ones((1, d)) / math.sqrt(d),
                              -0.5 * jnp.eye(d)])
    offsets = design[jnp.arange(p) % design.shape[0]]
    return mean + sd * offsets.reshape((p,) + (1,) * (mean.ndim - 1) + (d,))


def _normal_log_normalizer(eta):
    precision = -2 * eta[1]
    chol = jnp.linalg.cholesky(precision)
    whitened = jax.scipy.linalg.solve_triangular(chol, eta[0], lower=True)
    d = eta[0].shape[-1]
    return 0.5 * whitened @ whitened - jnp.sum(jnp.log(jnp.diagonal(chol))) + 0.5 * d * jnp.log(2 * jnp.pi)


NORMAL = Family(  # eta = (J mu, -J / 2), T = (z, z z^T)
    "normal", 1, (1, 2),
    statistics=lambda z: (z, jnp.outer(z, z)),
    log_normalizer=_normal_log_normalizer,
    points=_normal_points, rule=lambda eta: _sigma_points(eta), read=_normal_read)


# The Normal-Wishart: a mean mu and a precision L with mu | L ~ N(m, (b L)^-1), L ~ Wishart(W, nu), one value held
# as the d x (d + 1) array [mu | L]. T = (L mu, mu^T L mu, L, log|L|), eta = (b m, -b / 2, -(b m m^T + W^-1) / 2,
# (nu - d) / 2). With d = 1 it is the Normal-Gamma (precision shape nu / 2, rate 1 / (2 W)).
#
# A factor is held about its own mean: (m, -b / 2, -W^-1 / 2, (nu - d) / 2), the natural parameters of mu - m with
# the first (0 there) replaced by m. Held as natural parameters, W^-1 = -2 eta_3 - b m m^T is the difference of two
# matrices of size b |m|^2: float32 keeps none of its digits in the directions where it is near-singular (collinear
# features) once a component's mean lies a few units from the origin. Reads are taken about the factor's mean too
# (``read_about``), and turned into held parameters where the difference is small (``_normal_wishart_hold``).

def normal_wishart_parts(z):
    """(mean, precision) of a Normal-Wishart value [mu | L]."""
    return z[..., 0], z[..., 1:]


def normal_wishart_parameters(mean, strength, scale_inverse, dof):
    """A Normal-Wishart factor's held parameters from (m, b, W^-1, nu) (batch shape in front)."""
    d = mean.shape[-1]
    return mean, -0.5 * strength, -0.5 * scale_inverse, 0.5 * (dof - d)


def normal_wishart_moments(held):
    """(m, b, W^-1, nu) of one or many Normal-Wishart factors from their held parameters."""
    d = held[0].shape[-1]
    return held[0], -2 * held[1], -2 * held[2], 2 * held[3] + d


def _outer(v):
    return v[..., :, None] * v[..., None, :]


def _normal_wishart_anchor(held):
    """[m | 0]: the value a factor is held about."""
    return jnp.concatenate([held[0][..., None], jnp.zeros_like(held[2])], axis=-1)


def _normal_wishart_about(held, anchor):
    """The natural parameters of [mu - c | L] (c the anchor's mean, 0 for None): (b (m - c), -b / 2,
    -(b (m - c)(m - c)^T + W^-1) / 2, (nu - d) / 2)."""
    offset = held[0] if anchor is None else held[0] - normal_wishart_parts(anchor)[0]
    strength = -2 * held[1]
    return strength[..., None] * offset, held[1], held[2] - 0.5 * strength[..., None, None] * _outer(offset), held[3]


def _normal_wishart_hold(eta, anchor):
    """The held parameters from the natural ones of [mu - c | L]: m = c + eta_1 / b,
    W^-1 = -2 eta_3 - b (m - c)(m - c)^T (small where c is near m)."""
    strength = -2 * eta[1]
    offset = eta[0] / jnp.where(strength == 0, 1, strength)[..., None]  # 0 for a factor of no data (a plate's)
    mean = offset if anchor is None else offset + normal_wishart_parts(anchor)[0]
    return mean, eta[1], eta[2] + 0.5 * strength[..., None, None] * _outer(offset), eta[3]


def _normal_wishart_statistics(z):
    mean, precision = normal_wishart_parts(z)
    scaled = precision @ mean
    return scaled, mean @ scaled, precision, spd_log_det(precision)


def _normal_wishart_log_normalizer(eta):
    """A of the natural parameters (the family's own, as every family's)."""
    _, strength, scale_inverse, dof = normal_wishart_moments(_normal_wishart_hold(eta, None))
    d = eta[0].shape[-1]
    log_det_inv_w = spd_log_det(scale_inverse)
    return (-0.5 * d * jnp.log(strength) + 0.5 * d * jnp.log(2 * jnp.pi)
            - 0.5 * dof * log_det_inv_w + 0.5 * dof * d * jnp.log(2.0) + multigammaln(0.5 * dof, d))


def _normal_wishart_points(held, p):
    mean, strength, scale_inverse, dof = normal_wishart_moments(held)
    d = mean.shape[-1]
    precisions = _wishart_points((-0.5 * scale_inverse, 0.5 * (dof - d - 1)), p)   # (p, batch, d, d)
    # the sds of the mean under the mean precision (strength dof W): diag of W^-1 / (strength dof), W^-1 given
    spread = jnp.sqrt(jnp.diagonal(scale_inverse, axis1=-2, axis2=-1) / (strength * dof)[..., None])
    offsets = jnp.linspace(-1.0, 1.0, p)[:, None] * jnp.cos(jnp.arange(d) * 2.0 + jnp.arange(p)[:, None] + 1.0)
    means = mean + spread * offsets.reshape((p,) + (1,) * (mean.ndim - 1) + (d,))
    return jnp.concatenate([means[..., None], precisions], axis=-1)


def _normal_wishart_tangent(v):
    return jnp.concatenate([v[..., :1], _symmetric(v[..., 1:])], axis=-1)


NORMAL_WISHART = Family(  # held about the mean: (m, -b / 2, -W^-1 / 2, (nu - d) / 2)
    "normal-wishart", 2, (1, 0, 2, 0),
    statistics=_normal_wishart_statistics,
    log_normalizer=_normal_wishart_log_normalizer,
    points=_normal_wishart_points, tangent=_normal_wishart_tangent, rule=lambda eta: _normal_wishart_rule(eta),
    read=_normal_wishart_read, anchor=_normal_wishart_anchor, about=_normal_wishart_about, hold=_normal_wishart_hold)


# --- held and natural parameters ------------------------------------------------------------------

def anchor(family: Family, eta: Natural) -> jax.Array | None:
    """The value a factor's parameters are held about (in the value's layout, batch in front), or None where they
    are its natural parameters."""
    return None if family.anchor is None else family.anchor(tuple(eta))


def to_natural(family: Family, eta: Natural, about: jax.Array | None = None) -> Natural:
    """The natural parameters of the value less ``about`` (None: of the value) from a factor's held parameters."""
    return tuple(eta) if family.about is None else family.about(tuple(eta), about)


def from_natural(family: Family, eta: Natural, about: jax.Array | None = None) -> Natural:
    """A factor's held parameters from the natural parameters of the value less ``about`` (None: of the value)."""
    return tuple(eta) if family.hold is None else family.hold(tuple(eta), about)


# --- what follows from A and T --------------------------------------------------------------------

def log_normalizer(family: Family, eta: Natural) -> jax.Array:
    """A(eta) of every factor (held parameters): an array of the batch shape. A is the same about any anchor; it
    is taken about the factor's own, where nothing cancels."""
    return _per_factor(family, family.log_normalizer, to_natural(family, eta, anchor(family, eta)))


def expected_statistics(family: Family, eta: Natural) -> Natural:
    r""":math:`E_q[T(z)] = \nabla A(\eta)` of the natural parameters of a factor's held ``eta``, a tuple shaped
    like ``eta``."""
    return _per_factor(family, jax.grad(family.log_normalizer), to_natural(family, eta))


def _dot(eta: Natural, stats: Natural, family: Family) -> jax.Array:
    """sum over the event dimensions of eta . T, per factor (the batch shape, or the values' where T is of many
    values of each factor: ``log_density`` of draws)."""
    total = 0.0
    for e, t, nd in zip(eta, stats, family.stat_ndims):
        product = e * t
        total = total + jnp.sum(product, axis=tuple(range(product.ndim - nd, product.ndim)))
    return total


def entropy(family: Family, eta: Natural) -> jax.Array:
    r""":math:`H[q] = A(\eta) - \eta \cdot E_q[T]`, per factor (the Wishart's and Normal-Wishart's in closed form,
    where the natural parametrisation's large terms would cancel: :math:`b\, m m^\top` against
    :math:`E[\Lambda\mu]`)."""
    eta = tuple(eta)
    if family.name in ("wishart", "normal-wishart"):
        return _wishart_family_entropy(family, eta)
    if family.name == "categorical":  # -sum p log p, without A's and eta . p's cancellation
        log_probs = jax.nn.log_softmax(eta[0], axis=-1)
        return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
    return log_normalizer(family, eta) - _dot(eta, expected_statistics(family, eta), family)


def _wishart_entropy(dof, scale_inverse):
    r"""Bishop (B.82) in :math:`(\nu, W^{-1})`: :math:`H = -\tfrac{d+1}2 \log|W^{-1}| + \tfrac{d(d+1)}2 \log 2 +
    \ln\Gamma_d(\nu/2) - \tfrac{\nu-d-1}2 \sum_i \psi(\tfrac{\nu-i}2) + \tfrac{\nu d}2`; and
    :math:`E\log|\Lambda|`."""
    d = scale_inverse.shape[-1]
    log_det_w = -spd_log_det(scale_inverse)
    multi_digamma = jnp.sum(digamma((dof[..., None] - jnp.arange(d)) / 2), axis=-1)
    expected_log_det = multi_digamma + d * jnp.log(2.0) + log_det_w
    return (0.5 * (d + 1) * log_det_w + 0.5 * d * (d + 1) * jnp.log(2.0) + multigammaln(0.5 * dof, d)
            - 0.5 * (dof - d - 1) * multi_digamma + 0.5 * dof * d), expected_log_det


def _wishart_family_entropy(family: Family, eta: Natural) -> jax.Array:
    if family.name == "wishart":
        d = eta[0].shape[-1]
        return _wishart_entropy(2 * eta[1] + d + 1, -2 * eta[0])[0]
    _, strength, scale_inverse, dof = normal_wishart_moments(eta)
    d = scale_inverse.shape[-1]
    wishart, expected_log_det = _wishart_entropy(dof, scale_inverse)
    # E over L of the entropy of N(m, (b L)^-1): d/2 (1 + log 2 pi) - d/2 log b - E log|L| / 2
    return wishart + 0.5 * d * (1 + jnp.log(2 * jnp.pi)) - 0.5 * d * jnp.log(strength) - 0.5 * expected_log_det


def kl_divergence(family: Family, eta_q: Natural, eta_p: Natural) -> jax.Array:
    r""":math:`KL(q \| p) = A(\eta_p) - A(\eta_q) - (\eta_p - \eta_q) \cdot E_q[T]`, per factor, in the natural
    parameters of the value less q's anchor (both factors given held)."""
    about = anchor(family, eta_q)
    eta_q, eta_p = to_natural(family, eta_q, about), to_natural(family, eta_p, about)
    difference = tuple(p - q for p, q in zip(eta_p, eta_q))
    a = functools.partial(_per_factor, family, family.log_normalizer)
    return a(eta_p) - a(eta_q) - _dot(difference, _per_factor(family, jax.grad(family.log_normalizer), eta_q), family)


def log_density(family: Family, eta: Natural, z: jax.Array) -> jax.Array:
    r""":math:`\log q(z) = \eta \cdot T(z) - A(\eta)`, per factor (held ``eta``: in the natural parameters of the
    value less its anchor, and z less it)."""
    about = anchor(family, eta)
    natural = to_natural(family, eta, about)
    z = z if about is None else z - about
    return _dot(natural, _per_value(family, family.statistics, z), family) - _per_factor(family, family.log_normalizer,
                                                                                           natural)


def expect_linear(family: Family, eta: Natural, coefficients: Natural, constant: jax.Array) -> jax.Array:
    r""":math:`E_q[c + \beta \cdot T(z)] = c + \beta \cdot E_q[T]`, summed over the factors."""
    return constant + jnp.sum(_dot(tuple(coefficients), expected_statistics(family, eta), family))


def natural_parameters(fn: Callable[[jax.Array], jax.Array], family: Family, points: jax.Array, *,
                       has_aux: bool = False, values: bool = True) -> tuple[Natural, jax.Array | None, NotLinear]:
    r"""Reads :math:`\beta` and :math:`c` off a scalar function :math:`f(z) = c + \beta \cdot T(z)` of a batch
    of values ``z`` of ``family`` (f may couple the factors only through a sum of such terms).

    The gradient of f at every point is :math:`J_T(z)^\top \beta` factor by factor; ``family.read`` solves it
    for every factor's :math:`\beta` in closed form, and :math:`c` is the mean of :math:`f(z_i) - \beta \cdot
    T(z_i)`. ``NotLinear`` reports the worst residuals at all the points, of the gradients (those of
    :math:`\beta \cdot T` against f's, relative to their size) and of the values: both are at rounding level
    when f is linear in T, and large when it is not.

    Args:
      fn: ``fn(z) -> scalar`` for z of shape ``batch + event``.
      family: the family of z.
      points: ``(p,) + batch + event`` values in the support (``family.points``); p >= 2 for the families
        whose statistics outnumber the value's entries (Beta, Gamma, Wishart, Normal-Wishart), d + 1 for a
        d-dimensional Normal, and one more to check.
      has_aux: ``fn`` returns ``(value, residual)``, a residual of its own linearity checks (an inner
        expectation's); the worst over the points is folded into ``not_linear.value_residual``.
      values: read c and check the values too. Without, only f's gradients are computed: the parts of f that do
        not depend on z are never evaluated (c is None and the value residual 0).

    Returns:
      ``(beta, c, not_linear)``: beta shaped like the family's natural parameters (batch in front).
    """
    nd = family.event_ndim
    with_aux = fn if has_aux else lambda z: (fn(z), jnp.zeros(()))
    if values:
        (at_points, inner), grads = jax.vmap(jax.value_and_grad(with_aux, has_aux=True))(points)
    else:
        grads, inner = jax.vmap(jax.grad(with_aux, has_aux=True))(points)
    grads = family.tangent(grads)  # e.g. a symmetric matrix value: only the symmetric part of the gradient is defined
    read = family.read
    for _ in range(points.ndim - 1 - nd):  # every factor of the batch on its own; the points' axis stays first
        read = jax.vmap(read, in_axes=(1, 1))
    beta = tuple(read(points, grads))

    def linear(z):  # beta . T(z), summed over the factors
        return jnp.sum(_dot(beta, _per_value(family, family.statistics, z), family))

    predicted_values, predicted = jax.vmap(jax.value_and_grad(linear))(points)
    gradient_residual = (jnp.max(jnp.abs(family.tangent(predicted) - grads))
                         / (jnp.max(jnp.abs(grads)) + jnp.finfo(grads.dtype).tiny))
    if not values:
        return beta, None, NotLinear(gradient_residual, jnp.max(inner))
    constants = at_points - predicted_values
    constant = jnp.mean(constants)
    value_residual = jnp.max(jnp.abs(constants - constant)) / (jnp.max(jnp.abs(at_points)) + 1.0)
    return beta, constant, NotLinear(gradient_residual, jnp.maximum(value_residual, jnp.max(inner)))


def read_about(fn: Callable, family: Family, eta: Natural, num_points: int, *, about: jax.Array | None = None,
               has_aux: bool = False, values: bool = True) -> tuple[Natural, jax.Array | None, NotLinear,
                                                                    jax.Array | None]:
    r"""``natural_parameters`` of ``fn`` at ``family.points(eta, num_points)``, near the factor ``eta`` (held), taken
    about its anchor c: the coefficients of :math:`T(z - c)` in :math:`f(z)` (a shift of the value leaves f linear
    in T). ``about``: another anchor, the points moved with it. ``from_natural(family, beta, about)`` makes them a
    factor's held parameters.

    Returns:
      ``(beta, c, not_linear, about)``: ``natural_parameters``' three and the anchor (None where there is none).
    """
    own = anchor(family, eta)
    points = family.points(tuple(eta), num_points)
    if own is None:
        return natural_parameters(fn, family, points, has_aux=has_aux, values=values) + (None,)
    about = own if about is None else about
    return natural_parameters(lambda z: fn(z + about), family, points - own, has_aux=has_aux,
                              values=values) + (about,)


def expectation(fn: Callable, families: tuple, etas: tuple, num_points: int = 3) -> tuple[jax.Array, jax.Array]:
    r""":math:`E_q[f(z_1, \dots, z_m)]` under :math:`q = \prod_j q_j` (``families[j]`` with natural parameters
    ``etas[j]``), exactly, for an f that is linear in every factor's statistics given the others (a
    conditionally conjugate log-joint).

    Factor by factor: the expectation over the later factors is a function of :math:`z_1` linear in
    :math:`T_1(z_1)`, whose coefficients ``natural_parameters`` reads off at ``num_points`` points near
    :math:`q_1`; its expectation is then :math:`c + \beta \cdot E_{q_1}[T_1]`. The cost is about
    ``(2 num_points)^m`` evaluations of f: for a few factors.

    Returns:
      ``(value, not_linear)``: the expectation and the worst residual (relative) of the linearity checks
      along the way, at rounding level when f is multilinear in the statistics.
    """
    if not families:
        return fn(), jnp.zeros(())
    family, eta = families[0], tuple(etas[0])

    def rest(z):  # the expectation over the later factors and its residual
        return expectation(lambda *others: fn(z, *others), families[1:], etas[1:], num_points)

    beta, constant, residuals = natural_parameters(rest, family, family.points(eta, num_points), has_aux=True)
    return expect_linear(family, eta, beta, constant), jnp.maximum(*residuals)


def coordinate_update(fn: Callable, families: tuple, etas: tuple, j: int, num_points: int = 3
                      ) -> tuple[Natural, jax.Array]:
    r"""The optimal factor :math:`q_j \propto \exp E_{q_{-j}}[f]` for a mean-field q (CAVI's update, Bishop
    eq. 10.9): its natural parameters are the coefficients of :math:`T_j(z_j)` in
    :math:`E_{q_{-j}}[f(z)]`, read off that function of :math:`z_j` by ``natural_parameters``.

    Returns:
      ``(eta_j, not_linear)``: the new (held) parameters of factor j and the worst linearity residual,
      the expectations over the other factors' included.
    """
    others = tuple(k for k in range(len(families)) if k != j)

    def given(z_j):
        def full(*zs):
            values = list(zs)
            values.insert(j, z_j)
            return fn(*values)
        return expectation(full, tuple(families[k] for k in others), tuple(etas[k] for k in others), num_points)

    family = families[j]
    beta, _, residuals, about = read_about(given, family, etas[j], num_points, has_aux=True)
    return from_natural(family, beta, about), jnp.maximum(*residuals)


# --- expectations by quadrature ---------------------------------------------------------------------

class Quadrature(NamedTuple):
    r"""A rule exact for the expectation under q of every function linear in the family's statistics:

    .. math:: E_q[f] = \frac1p \sum_j \big(f(z_j) + \nabla f(z_j) \cdot c_j\big)
        \quad\text{for every } f = c + \beta \cdot T,

    one forward-mode derivative (``jax.jvp``) per node. Each factor of a batch has its own nodes and
    tangents, so the rule is exact for a sum of such functions of the factors, one term per factor.

    Attributes:
      nodes: ``(p,) + batch + event`` values in the support.
      tangents: the same shape, or None where the nodes alone are exact (sigma points).
      residual: the rule's worst relative error on T itself (rounding level when the solve succeeded).
    """

    nodes: jax.Array
    tangents: jax.Array | None
    residual: jax.Array


def quadrature(family: Family, eta: Natural) -> Quadrature:
    r"""The ``Quadrature`` of every factor of ``family`` with natural parameters ``eta``.

    The nodes are ``family.points``; the tangents :math:`c_j` are the least-norm solution of
    :math:`\sum_j J_T(z_j) c_j = p\,(E_q[T] - \frac1p \sum_j T(z_j))`, J_T the Jacobian of the statistics (in the
    directions ``family.tangent`` allows). A family may have its own rule (``Family.rule``): the Normal's
    sigma points, the Normal-Wishart's from the Wishart's.
    """
    eta = tuple(eta)
    if family.rule is not None:
        return family.rule(eta)
    p, nd = family.num_nodes, family.event_ndim
    nodes = family.points(eta, p)
    event_shape = nodes.shape[nodes.ndim - nd:]
    size = math.prod(event_shape)

    def flat_statistics(v):
        return jnp.concatenate([s.ravel() for s in family.statistics(v.reshape(event_shape))])

    def jacobian(z):  # (statistics, event entries) of one value, in the allowed directions
        move = lambda u: flat_statistics(z + family.tangent(u.reshape(event_shape)).ravel())  # noqa: E731
        return jax.jacfwd(move)(jnp.zeros_like(z))

    flat_nodes = nodes.reshape(p, -1, size)                                          # (p, factors, entries)
    jac = jax.vmap(jax.vmap(jacobian))(flat_nodes)                                   # (p, factors, stats, entries)
    at_nodes = jax.vmap(jax.vmap(flat_statistics))(flat_nodes)                       # (p, factors, stats)
    factors = flat_nodes.shape[1]
    expected = jnp.concatenate([e.reshape(factors, -1) for e in expected_statistics(family, eta)], axis=1)
    rhs = p * (expected - jnp.mean(at_nodes, axis=0))                                # (factors, stats)
    system = jnp.moveaxis(jac, 0, 2).reshape(factors, jac.shape[2], p * size)       # (factors, stats, p entries)
    solution = jax.vmap(lambda a, b: jnp.linalg.lstsq(a, b)[0])(system, rhs)
    residual = (jnp.max(jnp.abs(jnp.einsum("fsk,fk->fs", system, solution) - rhs))
                / (jnp.max(jnp.abs(expected)) + 1.0))
    tangents = jnp.moveaxis(solution.reshape(factors, p, size), 1, 0).reshape(nodes.shape)
    return Quadrature(nodes, family.tangent(tangents), residual)


def tangent_change(family: Family, eta: Natural, origin: Natural) -> jax.Array | None:
    r"""How the tangents of ``quadrature(family, eta)`` change, at the same nodes, for the rule to give the
    expectations under ``origin`` instead: then :math:`E[f]` moves by :math:`\beta \cdot (E_{origin}[T] - E_\eta[T])`
    for every f linear in T, and a derivative of anything read off :math:`E[f]` along this change is that
    quantity's change from :math:`\eta` to ``origin``, exactly, as it is affine in the tangents. The Dirichlet's
    rule (``_dirichlet_rule``, one node): :math:`\bar z \odot (E_{origin}[\log z] - E_\eta[\log z])`. Shaped like
    the rule's tangents (nodes in front); None for a family whose rule has no tangents (its nodes move instead)."""
    if family is not DIRICHLET:
        return None
    alpha = eta[0] + 1
    mean = alpha / jnp.sum(alpha, axis=-1, keepdims=True)
    return (mean * (expected_statistics(family, origin)[0] - expected_statistics(family, eta)[0]))[None]


def expect_product(fn: Callable, rules: tuple) -> jax.Array:
    r""":math:`E_q[f(z_1, \dots, z_m)]` under :math:`q = \prod_j q_j`, each factor's ``Quadrature`` in ``rules``,
    exact for an f linear in every factor's statistics given the others (a conditionally conjugate
    log-joint). The rules nest: :math:`\prod_j p_j` evaluations of f, each with up to m nested tangents."""
    if not rules:
        return fn()
    rule, rest = rules[0], rules[1:]

    def inner(z):
        return expect_product(lambda *others: fn(z, *others), rest)

    if rule.tangents is None:
        values = jax.vmap(inner)(rule.nodes)
    else:
        def at(node, tangent):
            value, change = jax.jvp(inner, (node,), (tangent,))
            return jax.tree_util.tree_map(jnp.add, value, change)

        values = jax.vmap(at)(rule.nodes, rule.tangents)
    return jax.tree_util.tree_map(lambda v: jnp.mean(v, axis=0), values)


def _sigma_points(eta: Natural) -> Quadrature:
    r"""A Normal's 2d sigma points :math:`\mu \pm \sqrt{d}\, L e_k` (:math:`LL^\top = \Sigma`): exact for every
    quadratic, without derivatives."""
    covariance = spd_inverse(-2 * eta[1])
    mean = (covariance @ eta[0][..., None])[..., 0]
    d = mean.shape[-1]
    columns = jnp.swapaxes(jnp.linalg.cholesky(covariance), -1, -2) * jnp.sqrt(jnp.asarray(d, mean.dtype))
    spokes = jnp.moveaxis(columns, -2, 0)                                        # (d, batch, d)
    return Quadrature(jnp.concatenate([mean + spokes, mean - spokes]), None, jnp.zeros((), mean.dtype))


def _normal_wishart_rule(eta: Natural) -> Quadrature:
    r"""A Normal-Wishart's two nodes :math:`(m + \delta_j, c_j \bar\Lambda)`, equal weights, with the Wishart's
    pair :math:`c_{1,2}` (``_wishart_rule``, :math:`\bar\Lambda = E[\Lambda]`) and the mean offsets
    :math:`\delta_1 = \sqrt{c_2/c_1}\, u`, :math:`\delta_2 = -\sqrt{c_1/c_2}\, u` along one u with
    :math:`u^\top \bar\Lambda u = d / b`. Then :math:`\sum_j c_j \delta_j = 0` and
    :math:`\frac12 \sum_j c_j \delta_j^\top \bar\Lambda \delta_j = d / b`, so the nodes' statistics average to
    :math:`E[\Lambda] = \bar\Lambda`, :math:`E[\log|\Lambda|]`, :math:`E[\Lambda\mu] = \bar\Lambda m` and
    :math:`E[\mu^\top\Lambda\mu] = m^\top\bar\Lambda m + d/b`: exact for every f linear in them, two evaluations,
    no derivatives."""
    mean, strength, scale_inverse, dof = normal_wishart_moments(eta)
    d = mean.shape[-1]
    wishart = _wishart_rule((-0.5 * scale_inverse, 0.5 * (dof - d - 1)))
    c1, c2 = wishart.nodes[0], wishart.nodes[1]                                   # c_j E[Lambda]
    expected = 0.5 * (c1 + c2)
    direction = jnp.full((d, 1), 1.0 / math.sqrt(d), mean.dtype)
    chol = jnp.linalg.cholesky(expected)                                          # batch + (d, d)
    u = jax.scipy.linalg.solve_triangular(jnp.swapaxes(chol, -1, -2),
                                          jnp.broadcast_to(direction, chol.shape[:-1] + (1,)), lower=False)
    u = u[..., 0] * jnp.sqrt(d / strength)[..., None]                                # u^T E[L] u = d / b
    ratio = (c1[..., 0, 0] / c2[..., 0, 0])[..., None]                               # c_1 / c_2
    offsets = (u / jnp.sqrt(ratio), -u * jnp.sqrt(ratio))
    nodes = [jnp.concatenate([(mean + offset)[..., None], node], axis=-1)
             for offset, node in zip(offsets, (c1, c2))]
    return Quadrature(jnp.stack(nodes), None, wishart.residual)


def _scaled_pair(log_gap):
    r"""(c_1, c_2) with :math:`(c_1 + c_2)/2 = 1` and :math:`(\log c_1 + \log c_2)/2 = -\delta` for a Jensen gap
    :math:`\delta = \log E[z] - E[\log z] \ge 0`: :math:`c = 1 \pm \sqrt{1 - e^{-2\delta}}`."""
    spread = jnp.sqrt(-jnp.expm1(-2 * jnp.maximum(log_gap, 0.0)))
    return jnp.stack([1.0 + spread, 1.0 - spread])


def _gamma_rule(eta: Natural) -> Quadrature:
    r"""A Gamma's two nodes :math:`c_{1,2} E[z]` (``_scaled_pair``), equal weights: their mean is E[z] and the mean
    of their logs :math:`E[\log z] = \psi(a) - \log b`, so the rule is exact for every f linear in
    :math:`(\log z, z)`, without derivatives."""
    shape, rate = eta[0] + 1, -eta[1]
    gap = jnp.log(shape) - digamma(shape)
    scale = _scaled_pair(gap)                                                       # (2,) + batch
    return Quadrature(scale * (shape / rate), None, jnp.zeros((), shape.dtype))


def _wishart_rule(eta: Natural) -> Quadrature:
    r"""A Wishart's two nodes :math:`c_{1,2} E[\Lambda]` with the gap of the log-determinant per dimension,
    :math:`\delta = (\log|E\Lambda| - E\log|\Lambda|)/d = \log(\nu/2) - \frac1d\sum_i \psi((\nu - i)/2)`: exact
    for every f linear in :math:`(\Lambda, \log|\Lambda|)`, without derivatives."""
    d = eta[0].shape[-1]
    dof, scale = _wishart_parts(eta)
    gap = jnp.log(dof / 2) - jnp.mean(digamma((dof[..., None] - jnp.arange(d)) / 2), axis=-1)
    factors = _scaled_pair(gap)[..., None, None]                                    # (2,) + batch + (1, 1)
    return Quadrature(factors * (dof[..., None, None] * scale), None, jnp.zeros((), scale.dtype))


def _categorical_rule(eta: Natural) -> Quadrature:
    r"""A categorical's one node, its mean :math:`E[z] = \mathrm{softmax}(\eta)`: exact for every f linear in the
    one-hot z."""
    return Quadrature(jax.nn.softmax(eta[0], axis=-1)[None], None, jnp.zeros((), eta[0].dtype))


def _dirichlet_rule(eta: Natural) -> Quadrature:
    r"""A Dirichlet's one node, its mean :math:`\bar z = \alpha / \sum\alpha`, with the tangent
    :math:`\bar z \odot (E[\log z] - \log \bar z)`: :math:`f(\bar z) + \nabla f \cdot c = c_0 + \beta \cdot E[\log z]`
    for every f linear in :math:`\log z`. (The node :math:`\exp E[\log z]` alone would do, but it underflows
    where a concentration is tiny: :math:`E[\log z] \approx -1/\alpha`.)"""
    expected_log, = expected_statistics(DIRICHLET, eta)
    alpha = eta[0] + 1
    mean = alpha / jnp.sum(alpha, axis=-1, keepdims=True)
    return Quadrature(mean[None], (mean * (expected_log - jnp.log(mean)))[None], jnp.zeros((), mean.dtype))
