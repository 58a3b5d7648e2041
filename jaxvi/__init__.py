"""jaxvi: fit latent-variable models written as pure log-joint functions, compiled with JAX."""
import os as _os

from jaxvi._xla import avoid_lapack_deadlock, compile_small_loops_whole

avoid_lapack_deadlock()  # before JAX's CPU backend starts: see jaxvi/_xla.py
compile_small_loops_whole()

from jaxvi.calibrate import Calibration, calibrate
from jaxvi.compare import Comparison, compare
from jaxvi.data import Batch, Sequences
from jaxvi.evidence import Evidence, Resampled, evidence, psis_resample
from jaxvi.export import Predictive, predictive
from jaxvi.exact import ChainPosterior, DiscretePosterior, GaussianPosterior
from jaxvi.infer import infer
from jaxvi.io import load
from jaxvi.latents import (Beta, Dirichlet, Discrete, Gamma, Gaussian, Global, Markov, NormalGamma, NormalWishart, OneHot,
                           Real, Wishart)
from jaxvi.methods import (CAVI, EM, SVI, Amortized, AmortizedParams, EMDiagnostics, EMState, Method, OnlineEM,
                           SVIDiagnostics)
from jaxvi.model import Model, check_values
from jaxvi.pareto import psis
from jaxvi.result import Fault, Result, Skips
from jaxvi.statistics import Statistics
from jaxvi.vi import (Categorical, Delta, FittedGuide, Flow, FullRank, GlobalLocal, LowRank, MeanField, interval,
                      ordered, positive, simplex)
from jaxvi.vi.objectives import Renyi
from jaxvi import export, models, nn, parallel, plot, run
from jaxvi.run.compiled import CACHE_ENV as _CACHE_ENV, cache, compiler_options

if _os.environ.get(_CACHE_ENV):
    cache(_os.environ[_CACHE_ENV])

__all__ = ["Amortized", "AmortizedParams", "Batch", "Beta", "cache", "calibrate", "Calibration", "Categorical", "CAVI",
           "ChainPosterior", "check_values", "compare", "Comparison", "compiler_options", "Delta", "Dirichlet",
           "Discrete", "DiscretePosterior", "EM", "EMDiagnostics", "EMState", "evidence", "Evidence", "export", "Fault",
           "FittedGuide", "Flow", "FullRank", "Gamma", "Gaussian", "GaussianPosterior", "Global", "GlobalLocal",
           "infer", "interval", "load", "LowRank", "Markov", "MeanField", "Method", "Model", "models", "nn",
           "NormalGamma", "NormalWishart", "OneHot", "OnlineEM", "ordered", "parallel", "plot", "positive",
           "predictive", "Predictive", "psis", "psis_resample", "Real", "Renyi", "Resampled", "Result", "run",
           "Sequences", "simplex", "Skips", "Statistics", "SVI", "SVIDiagnostics", "Wishart"]
__version__ = "0.1.0"
