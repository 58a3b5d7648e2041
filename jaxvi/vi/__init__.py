"""Variational inference: guides (``guides.py``), ELBO estimators (``objectives.py``), the unconstrained
latent space and its bijectors (``space.py``), the ``SVI`` method (``svi.py``) and amortized inference
(``amortized.py``)."""
from jaxvi.vi.amortized import Amortized, AmortizedDiagnostics, AmortizedParams, guide_size
from jaxvi.vi.guides import Categorical, Delta, Flow, FullRank, LowRank, MeanField
from jaxvi.vi.objectives import ESTIMATORS
from jaxvi.vi.space import LatentSpace, interval, latent_space, ordered, positive, simplex
from jaxvi.vi.svi import SVI, FittedGuide, SVIDiagnostics, SVIState, guide_elbo

__all__ = ["Amortized", "AmortizedDiagnostics", "AmortizedParams", "Categorical", "Delta", "ESTIMATORS", "FittedGuide", "Flow", "FullRank", "LatentSpace", "LowRank",
           "MeanField", "SVI", "SVIDiagnostics", "SVIState", "interval", "latent_space", "ordered", "positive",
           "guide_elbo", "guide_size", "simplex"]
