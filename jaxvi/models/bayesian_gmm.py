r"""Bayesian Gaussian mixture, written only as a log-joint: ``jaxvi.CAVI`` derives its updates.

.. math::
    \pi \sim \mathrm{Dir}(\alpha_0), \quad
    (\mu_k, \Lambda_k) \sim N(m_0, (\beta_0 \Lambda_k)^{-1})\, W(W_0, \nu_0), \quad
    z_i \sim \mathrm{Cat}(\pi), \quad x_i \mid z_i \sim N(\mu_{z_i}, \Lambda_{z_i}^{-1}).

With ``covariance="diag"`` every dimension of a component has its own Normal-Gamma mean and precision.
The priors default to scikit-learn's ``BayesianGaussianMixture(weight_concentration_prior_type=
"dirichlet_distribution")``: :math:`\alpha_0 = 1/K`, :math:`\beta_0 = 1`, :math:`m_0` the data's mean,
:math:`\nu_0 = D`, :math:`W_0^{-1}` the data's covariance (its diagonal for ``"diag"``), so that
:math:`E[\Lambda_k^{-1}]` is about the data's covariance.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.scipy.special import gammaln, multigammaln

from jaxvi.linalg import spd_log_det
from jaxvi.latents import Dirichlet, Discrete, Global, NormalGamma, NormalWishart
from jaxvi.model import Model, check_data
from jaxvi.models import priors

__all__ = ["bayesian_gaussian_mixture", "wishart_log_prob"]

COVARIANCES = ("full", "diag")


def _log_det(precision: jax.Array) -> jax.Array:
    r""":math:`\log|\Lambda|` by ``slogdet`` (LU), with ``spd_log_det``'s derivative :math:`\mathrm{tr}(\Lambda^{-1}
    d\Lambda)` from a Cholesky factor (``_slogdet_jvp``). The value is LU's: a precision drawn from q (its
    predictive draws), rounded by float32 to a nearly singular or slightly indefinite matrix, keeps a finite density
    (a Cholesky factor is NaN there: 3 of 12,000 draws of a switched-off component in two dimensions). The
    derivative, taken only in fits, where precisions are well inside the cone, is the Cholesky's: differentiated
    through LU, XLA compiled its derivative and the transpose of that in every CAVI read of the likelihood: the
    start and 5 iterations of a fit (2,000 x 16, K = 16) took XLA 2.2-2.4 s to compile against 2.5-2.7 s."""
    return _slogdet(jnp.array(precision, copy=True))  # copied: a NumPy array vmap batches in jit (spd_log_det)


@jax.custom_jvp
def _slogdet(precision: jax.Array) -> jax.Array:
    return jnp.linalg.slogdet(precision)[1]


@_slogdet.defjvp
def _slogdet_jvp(primals, tangents):
    return _slogdet(*primals), jax.jvp(spd_log_det, primals, tangents)[1]


def wishart_log_prob(precision: jax.Array, dof, scale_inverse: jax.Array) -> jax.Array:
    r""":math:`\log W(\Lambda \mid W, \nu)` with :math:`W^{-1}` given (Bishop B.78)."""
    d = precision.shape[-1]
    return (0.5 * (dof - d - 1) * _log_det(precision) - 0.5 * jnp.sum(scale_inverse * precision)
            + 0.5 * dof * jnp.linalg.slogdet(scale_inverse)[1] - 0.5 * dof * d * jnp.log(2.0)
            - multigammaln(0.5 * dof, d))


@jax.custom_jvp
def _quadratic(xc, mc, precision):
    r""":math:`(x - \mu)^T \Lambda (x - \mu)` from :math:`\tilde x = x - c`, :math:`\tilde\mu = \mu - c` as
    :math:`(\tilde x^T \Lambda - (\Lambda \tilde\mu)^T)(\tilde x - \tilde\mu)`: :math:`\tilde x^T \Lambda` is one
    product of the data with every component's precision (N x D by D x KD), the rest is elementwise, and the value
    keeps the digits of a datum near its component, where the expansion :math:`\tilde x^T \Lambda \tilde x -
    2 \tilde x^T \Lambda \tilde\mu + \tilde\mu^T \Lambda \tilde\mu` subtracts terms of size
    :math:`|\tilde x|^2 \|\Lambda\|`: float32 lost the responsibilities and the bound to that where features are
    collinear (standardised breast cancer data, 30 features, K = 8: the bound fell by up to 1.8 nats between
    iterations; 0.3 so). Its derivative (``_quadratic_jvp``) is the expansion's, whose products with the data are one
    product as well."""
    return (xc @ precision - precision @ mc) @ (xc - mc)


def _quadratic_jvp(primals, tangents):
    """The derivative of the quadratic form, expanded about the center: in the CAVI reads' gradients the data meet
    the precisions' cotangents in one product (N x D by D x KD), not in K small ones of x - mu_k (2-4x the time).
    Only the terms of the moving arguments are formed (the quadrature's derivatives move the mixture's weights alone,
    and a product of the data with a zero precision cost as much as the value)."""
    xc, mc, precision = primals
    dxc, dmc, dprecision = (None if type(t) is SymbolicZero else t for t in tangents)
    change = jnp.zeros(jnp.shape(xc)[:-1], xc.dtype)
    if dprecision is not None:
        change = change + xc @ dprecision @ xc - 2 * xc @ (dprecision @ mc) + mc @ dprecision @ mc
    if dxc is not None or dmc is not None:
        shift = (0.0 if dxc is None else dxc) - (0.0 if dmc is None else dmc)
        pulled = precision @ shift
        change = change + 2 * (xc @ pulled - mc @ pulled)
    return _quadratic(xc, mc, precision), change


_quadratic.defjvp(_quadratic_jvp, symbolic_zeros=True)


def _normal_log_prob(x, mean, precision, center=None):
    r""":math:`\log N(x \mid \mu, \Lambda^{-1})`, with the data taken about a fixed ``center`` c (default
    :math:`\mu`; ``_quadratic``): evaluated for every datum and component with c fixed, the data meet all the
    components' precisions in one product. Centred on the data's mean, the terms stay of the size of the data's
    spread."""
    d = x.shape[-1]
    center = mean if center is None else center
    quadratic = _quadratic(x - center, mean - center, precision)
    return 0.5 * (_log_det(precision) - quadratic - d * jnp.log(2 * jnp.pi))


def bayesian_gaussian_mixture(data, K: int, covariance: str = "full", *, weight_concentration=None,
                              mean_precision=1.0, mean=None, degrees_of_freedom=None, covariance_prior=None) -> Model:
    r"""A Bayesian Gaussian mixture of K components for ``data`` ``(N, D)``, for ``jaxvi.CAVI``.

    The latent is ``{"theta": Global({"weights": Dirichlet(K), "components": NormalWishart(D, (K,))}),
    "assignment": Discrete(K)}`` (``NormalGamma((K, D))`` components for ``"diag"``). The priors are fixed
    numbers taken from ``data`` as scikit-learn does (module docstring); the model has no parameters θ.

    Those numbers (and the center the data are taken about) are compiled into the model's fits: a model built again
    from other data, a cross-validation fold or a bootstrap sample, compiles its fit again (11-12 s for K = 3,
    D = 2 on a 2-core CPU), where one model fits any data of the same shape with the code it has (0.01 s). Build it
    once, from all the data, and fit every part with it.

    Args:
      data: ``(N, D)`` floating data (for the default priors).
      K: the number of components, an integer >= 1.
      covariance: ``"full"`` (Normal-Wishart components) or ``"diag"`` (Normal-Gamma per dimension).
      weight_concentration: :math:`\alpha_0` (default 1/K); mean_precision: :math:`\beta_0`; mean: :math:`m_0`;
      degrees_of_freedom: :math:`\nu_0` (default D); covariance_prior: :math:`W_0^{-1}` ``(D, D)``, or its
        diagonal ``(D,)`` for ``"diag"``.
    """
    x = np.asarray(data)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"data: expected a floating (N, D) array, got shape {x.shape} and dtype {x.dtype}")
    check_data(x)  # a NaN or an infinity named as the data's, not as the priors taken from them
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance: expected one of {COVARIANCES}, got {covariance!r}")
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 2:
        raise ValueError(f"K: expected an integer >= 2 (a mixture of components; one Gaussian has no weights to fit), "
                         f"got {K!r}")
    if K > x.shape[0]:  # scikit-learn's rule too; CAVI's conjugacy checks called the weights' reads non-linear there
        raise ValueError(f"K: expected at most the number of data, {x.shape[0]}, got {K}")
    d = x.shape[1]
    dtype = jax.dtypes.canonicalize_dtype(x.dtype)  # float64 data make float32 priors where x64 is off
    alpha0 = priors.numbers("weight_concentration", 1.0 / K if weight_concentration is None else weight_concentration,
                            (), dtype, above=0)
    # "diag": every component's dimension its own Normal-Gamma, so these may differ per component and dimension
    each = (d,) if covariance == "full" else (K, d)
    beta0 = priors.numbers("mean_precision", mean_precision, () if covariance == "full" else each, dtype, above=0)
    m0 = priors.numbers("mean", x.mean(0) if mean is None else mean, each, dtype)
    # a proper Wishart needs nu0 > D - 1; the Gamma of each dimension ("diag") a shape nu0 / 2 > 0
    nu0 = priors.numbers("degrees_of_freedom", d if degrees_of_freedom is None else degrees_of_freedom,
                         () if covariance == "full" else each, dtype, above=d - 1 if covariance == "full" else 0)
    cov = np.atleast_2d(np.cov(x.T)) if covariance_prior is None else np.asarray(covariance_prior)
    if covariance == "diag" and cov.ndim == 2:
        cov = np.diag(cov)
    name = "covariance_prior" if covariance_prior is not None else "covariance_prior (default: the data's covariance)"
    psi0 = (priors.spd_matrices(name, cov, (d, d), dtype) if covariance == "full"
            else priors.numbers(name, cov, (d,), dtype, above=0))
    # where the data are taken about (_normal_log_prob), and the origin of q's components' layout (their ``center``:
    # their prior is read about it, and float32 keeps its digits with data far from 0)
    center = np.asarray(x.mean(0), dtype)  # NumPy: the model equal to itself built again (models.priors)
    about = tuple(float(c) for c in np.asarray(center))

    if covariance == "full":
        components = NormalWishart(d, (K,), center=about)

        def component_log_prior(means, precisions):
            def one(mean_k, precision_k):
                return (_normal_log_prob(mean_k, m0, beta0 * precision_k)
                        + wishart_log_prob(precision_k, nu0, psi0))
            return jnp.sum(jax.vmap(one)(means, precisions))

        def component_log_likelihood(x, mean_k, precision_k):
            return _normal_log_prob(x, mean_k, precision_k, center)
    else:
        components = NormalGamma((K, d), center=about)
        shape0, rate0 = 0.5 * nu0, 0.5 * psi0   # Normal-Gamma: the Wishart with d = 1 per dimension

        def component_log_prior(means, precisions):
            log_gamma = (shape0 * jnp.log(rate0) - gammaln(shape0) + (shape0 - 1) * jnp.log(precisions)
                         - rate0 * precisions)
            log_normal = 0.5 * (jnp.log(beta0 * precisions) - jnp.log(2 * jnp.pi)
                                - beta0 * precisions * (means - m0) ** 2)
            return jnp.sum(log_gamma + log_normal)

        def component_log_likelihood(x, mean_k, precision_k):
            return 0.5 * jnp.sum(jnp.log(precision_k) - jnp.log(2 * jnp.pi) - precision_k * (x - mean_k) ** 2)

    def log_prior(params, theta):
        weights, (means, precisions) = theta["weights"], theta["components"]
        dirichlet = gammaln(K * alpha0) - K * gammaln(alpha0) + (alpha0 - 1) * jnp.sum(jnp.log(weights))
        return dirichlet + component_log_prior(means, precisions)

    def log_joint(params, z, x):
        theta, k = z["theta"], z["assignment"]
        means, precisions = theta["components"]
        return jnp.log(theta["weights"][k]) + component_log_likelihood(x, means[k], precisions[k])

    latent = {"theta": Global({"weights": Dirichlet(K), "components": components}, log_prior),
              "assignment": Discrete(K)}
    return Model(log_joint, latent, init=lambda key, data: {})
