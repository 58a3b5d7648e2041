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
from jax.scipy.special import gammaln, multigammaln

from jaxvi.latents import Dirichlet, Discrete, Global, NormalGamma, NormalWishart
from jaxvi.model import Model, check_data
from jaxvi.models import priors

__all__ = ["bayesian_gaussian_mixture", "wishart_log_prob"]

COVARIANCES = ("full", "diag")


def wishart_log_prob(precision: jax.Array, dof, scale_inverse: jax.Array) -> jax.Array:
    r""":math:`\log W(\Lambda \mid W, \nu)` with :math:`W^{-1}` given (Bishop B.78)."""
    d = precision.shape[-1]
    return (0.5 * (dof - d - 1) * jnp.linalg.slogdet(precision)[1] - 0.5 * jnp.sum(scale_inverse * precision)
            + 0.5 * dof * jnp.linalg.slogdet(scale_inverse)[1] - 0.5 * dof * d * jnp.log(2.0)
            - multigammaln(0.5 * dof, d))


def _normal_log_prob(x, mean, precision, center=None):
    r""":math:`\log N(x \mid \mu, \Lambda^{-1})`, the quadratic form expanded about a fixed ``center`` c (default
    :math:`\mu`; :math:`\tilde x = x - c`, :math:`\tilde\mu = \mu - c`):
    :math:`\tilde x^T \Lambda \tilde x - 2 \tilde x^T \Lambda \tilde\mu + \tilde\mu^T \Lambda \tilde\mu`. Evaluated for
    every datum and component with c fixed, :math:`\tilde x^T \Lambda_k` is one product of the data with all the
    components' precisions (N x D by D x KD) and :math:`\Lambda_k \tilde\mu_k` is computed once, where
    :math:`x - \mu_k` would make the data's product with each component's precision a small product of its own
    (K products of N x D by D x D), in the gradients too. Centred on the data's mean, the terms stay of the size
    of the data's spread."""
    d = x.shape[-1]
    center = mean if center is None else center
    xc, mc = x - center, mean - center
    quadratic = xc @ precision @ xc - 2 * xc @ (precision @ mc) + mc @ precision @ mc
    return 0.5 * (jnp.linalg.slogdet(precision)[1] - quadratic - d * jnp.log(2 * jnp.pi))


def bayesian_gaussian_mixture(data, K: int, covariance: str = "full", *, weight_concentration=None,
                              mean_precision=1.0, mean=None, degrees_of_freedom=None, covariance_prior=None) -> Model:
    r"""A Bayesian Gaussian mixture of K components for ``data`` ``(N, D)``, for ``jaxvi.CAVI``.

    The latent is ``{"theta": Global({"weights": Dirichlet(K), "components": NormalWishart(D, (K,))}),
    "assignment": Discrete(K)}`` (``NormalGamma((K, D))`` components for ``"diag"``). The priors are fixed
    numbers taken from ``data`` as scikit-learn does (module docstring); the model has no parameters θ.

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
    if K > x.shape[0]:  # scikit-learn's rule too; CAVI's conjugacy probe called the weights' reads non-linear there
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
    # the likelihood's expansion point (_normal_log_prob), and where q's natural parameters are taken about (the
    # components' ``center``: float32 keeps their digits with data far from 0)
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
