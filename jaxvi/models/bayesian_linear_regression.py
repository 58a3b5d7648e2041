r"""Bayesian linear regression with unknown noise precision, written only as a log-joint for ``jaxvi.CAVI``.

.. math::
    w \sim N(0, \alpha^{-1} I_D), \quad \tau \sim \mathrm{Gamma}(a_0, b_0), \quad
    y_i \mid x_i, w, \tau \sim N(w^\top x_i, \tau^{-1}).

CAVI fits the mean-field q(w) q(τ), a Normal and a Gamma (Bishop §10.3 with the noise precision unknown):
:math:`S^{-1} = \alpha I + E[\tau] X^\top X`, :math:`m = E[\tau] S X^\top y`, :math:`a = a_0 + N/2`,
:math:`b = b_0 + (\lVert y - X m\rVert^2 + \mathrm{tr}(X^\top X S))/2`, derived by the library from the
log-joint. The data are ``(x, y)``: features ``(N, D)`` and targets ``(N,)``.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax.scipy import stats

from jaxvi.latents import Gamma, Gaussian, Global
from jaxvi.model import Model
from jaxvi.methods.settings import check_number

__all__ = ["bayesian_linear_regression"]


def bayesian_linear_regression(D: int, *, weight_precision=1.0, noise_shape=1.0, noise_rate=1.0) -> Model:
    r"""The model for D features (add a column of ones to ``x`` for an intercept).

    The latent is ``Global({"w": Gaussian(D), "tau": Gamma()})``; the priors are fixed numbers, the model has
    no parameters θ.

    Args:
      D: the number of features, an integer >= 1.
      weight_precision: :math:`\alpha`, the prior precision of every weight.
      noise_shape, noise_rate: :math:`a_0, b_0` of the noise precision's Gamma prior.
    """
    if isinstance(D, bool) or not isinstance(D, int) or D < 1:
        raise ValueError(f"D: expected an integer >= 1, got {D!r}")
    for name, value in (("weight_precision", weight_precision), ("noise_shape", noise_shape),
                        ("noise_rate", noise_rate)):
        check_number(name, value, low=0, low_open=True)

    def log_prior(params, z):
        return (jnp.sum(stats.norm.logpdf(z["w"], 0.0, 1 / jnp.sqrt(weight_precision)))
                + stats.gamma.logpdf(z["tau"], noise_shape, scale=1 / noise_rate))

    def log_joint(params, z, datum):
        x, y = datum
        return stats.norm.logpdf(y, z["w"] @ x, 1 / jnp.sqrt(z["tau"]))

    return Model(log_joint, Global({"w": Gaussian(D), "tau": Gamma()}, log_prior), init=lambda key, data: {})
