"""jaxvi: fit latent-variable models written as pure log-joint functions, compiled with JAX."""
from jaxvi.em import EM, EMDiagnostics, EMState
from jaxvi.exact import ChainPosterior, DiscretePosterior, GaussianPosterior, Sequences
from jaxvi.infer import infer
from jaxvi.latents import Discrete, Gaussian, Markov
from jaxvi.model import Model
from jaxvi.result import Fault, Result
from jaxvi import models

__all__ = ["ChainPosterior", "Discrete", "DiscretePosterior", "EM", "EMDiagnostics", "EMState", "Fault", "Gaussian",
           "GaussianPosterior", "Markov", "Model", "Result", "Sequences", "infer", "models"]
__version__ = "0.1.0"
