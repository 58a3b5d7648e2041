"""The model zoo: each model is a pure log-joint (plus, where one exists, a closed-form M-step)."""
from jaxvi.models.bernoulli_mixture import BernoulliMixtureParams, bernoulli_mixture
from jaxvi.models.factor_analysis import FactorAnalysisParams, LinearGaussian, PPCAParams, factor_analysis, ppca
from jaxvi.models.gmm import GaussianMixture, GMMParams, gaussian_mixture, gmm_m_step
from jaxvi.models.vae import VAE, VAEParams, vae
from jaxvi.models.hmm import (HMM, CategoricalEmission, GaussianEmission, HMMParams, PoissonEmission, categorical_hmm,
                              gaussian_hmm, poisson_hmm)

__all__ = ["BernoulliMixtureParams", "CategoricalEmission", "FactorAnalysisParams", "LinearGaussian", "PPCAParams",
           "factor_analysis", "ppca", "GMMParams", "GaussianEmission", "GaussianMixture", "HMM",
           "HMMParams", "PoissonEmission", "bernoulli_mixture", "categorical_hmm", "gaussian_hmm", "gaussian_mixture",
           "gmm_m_step", "poisson_hmm", "VAE", "VAEParams", "vae"]
