"""The model zoo: each model is a pure log-joint (plus, where one exists, a closed-form M-step)."""
from jaxvi.models.bayesian_gmm import bayesian_gaussian_mixture, wishart_log_prob
from jaxvi.models.bayesian_linear_regression import bayesian_linear_regression
from jaxvi.models.bernoulli_mixture import BernoulliMixtureParams, bernoulli_mixture
from jaxvi.models.factorial_hmm import factorial_hmm
from jaxvi.models.factor_analysis import FactorAnalysisParams, LinearGaussian, PPCAParams, factor_analysis, ppca
from jaxvi.models.lda import bag_of_words, lda, lda_perplexity, lda_top_words
from jaxvi.models.gmm import GaussianMixture, GMMParams, gaussian_mixture, gmm_m_step
from jaxvi.models.vae import VAE, VAEParams, vae
from jaxvi.models.variational_hmm import variational_categorical_hmm, variational_gaussian_hmm
from jaxvi.models.hmm import (HMM, CategoricalEmission, GaussianEmission, HMMParams, PoissonEmission, categorical_hmm,
                              gaussian_hmm, poisson_hmm)

__all__ = ["bag_of_words", "lda", "lda_perplexity", "lda_top_words", "BernoulliMixtureParams", "bayesian_gaussian_mixture", "bayesian_linear_regression", "wishart_log_prob", "CategoricalEmission", "FactorAnalysisParams", "LinearGaussian", "PPCAParams",
           "factor_analysis", "factorial_hmm", "ppca", "GMMParams", "GaussianEmission", "GaussianMixture", "HMM",
           "HMMParams", "PoissonEmission", "bernoulli_mixture", "categorical_hmm", "gaussian_hmm", "gaussian_mixture",
           "gmm_m_step", "poisson_hmm", "VAE", "VAEParams", "vae",
           "variational_categorical_hmm", "variational_gaussian_hmm"]
