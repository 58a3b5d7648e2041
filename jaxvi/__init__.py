"""jaxvi: fit latent-variable models written as pure log-joint functions, compiled with JAX."""
from jaxvi.em import EM, EMDiagnostics, EMState
from jaxvi.exact import DiscretePosterior
from jaxvi.infer import infer
from jaxvi.latents import Discrete
from jaxvi.model import Model
from jaxvi.result import Fault, Result
from jaxvi import models

__all__ = ["Discrete", "DiscretePosterior", "EM", "EMDiagnostics", "EMState", "Fault", "Model", "Result", "infer", "models"]
__version__ = "0.1.0"
