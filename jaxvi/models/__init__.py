"""The model zoo: each model is a pure log-joint (plus, where one exists, a closed-form M-step)."""
from jaxvi.models.bernoulli_mixture import BernoulliMixtureParams, bernoulli_mixture
from jaxvi.models.gmm import GaussianMixture, GMMParams, gaussian_mixture, gmm_m_step

__all__ = ["BernoulliMixtureParams", "GMMParams", "GaussianMixture", "bernoulli_mixture", "gaussian_mixture",
           "gmm_m_step"]
