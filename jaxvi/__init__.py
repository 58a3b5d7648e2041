"""jaxvi: fit latent-variable models written as pure log-joint functions, compiled with JAX."""
from jaxvi.em import EM, EMDiagnostics, EMState
from jaxvi.evidence import Evidence, evidence
from jaxvi.exact import ChainPosterior, DiscretePosterior, GaussianPosterior, Sequences
from jaxvi.infer import infer
from jaxvi.io import load
from jaxvi.latents import Discrete, Gaussian, Global, Markov, Real
from jaxvi.model import Model
from jaxvi.online import OnlineEM
from jaxvi.result import Fault, Result
from jaxvi.statistics import Statistics
from jaxvi.vi import (SVI, Amortized, Categorical, Delta, FittedGuide, Flow, FullRank, LowRank, MeanField, SVIDiagnostics, interval,
                      ordered, positive, simplex)
from jaxvi import models, nn, parallel, plot

__all__ = ["Amortized", "Categorical", "ChainPosterior", "Delta", "Discrete", "DiscretePosterior", "EM", "EMDiagnostics", "EMState",
           "Evidence", "Fault", "FittedGuide", "Flow", "FullRank", "Gaussian", "GaussianPosterior", "Global", "LowRank", "Markov",
           "MeanField", "Model", "OnlineEM", "Real", "Result", "SVI", "SVIDiagnostics", "Sequences", "Statistics", "evidence", "infer", "load", "interval", "models", "nn", "parallel", "plot",
           "ordered", "positive", "simplex"]
__version__ = "0.1.0"
