"""Variational kernels: guides (``guides.py``), ELBO estimators (``objectives.py``), the bound of a
model with global and local latents (``elbo.py``), the unconstrained latent space and its bijectors
(``space.py``), fitted guides (``fitted.py``), evaluating any fitted guide's bound (``guide_elbo``), and the
exponential-family factors of coordinate-ascent VI (``expfam.py``, imported as ``jaxvi.vi.expfam``) and its
structured mean field over several Markov chains (``chains.py``, ``jaxvi.vi.chains``)."""
from jaxvi.vi.elbo import guide_elbo
from jaxvi.vi.fitted import FittedGuide, GlobalLocal
from jaxvi.vi.guides import Categorical, Delta, Flow, FullRank, LowRank, MeanField
from jaxvi.vi.objectives import ESTIMATORS, IWAE, STL, Analytic, Reparameterized, Score
from jaxvi.vi.space import LatentSpace, interval, latent_space, ordered, positive, simplex

__all__ = ["Analytic", "Categorical", "Delta", "ESTIMATORS", "FittedGuide", "Flow", "FullRank", "GlobalLocal", "IWAE",
           "LatentSpace", "LowRank", "MeanField", "Reparameterized", "STL", "Score", "guide_elbo", "interval",
           "latent_space", "ordered", "positive", "simplex"]
