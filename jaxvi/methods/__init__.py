"""Algorithms: each method is a frozen settings dataclass with pure ``init`` / ``step`` / ``finalize``
over an algorithm-only state (``protocol.py``); the run layer (``jaxvi.run``) drives them."""
from jaxvi.methods.amortized import Amortized, AmortizedDiagnostics, AmortizedParams, AmortizedState, guide_size
from jaxvi.methods.cavi import CAVI, CAVIDiagnostics, CAVIInfo, CAVIPosterior, CAVIState
from jaxvi.methods.em import EM, EMDiagnostics, EMInfo, EMState, gradient_m_step
from jaxvi.methods.online_em import OnlineEM, OnlineEMDiagnostics, OnlineEMState
from jaxvi.methods.protocol import Info, Method
from jaxvi.methods.svi import SVI, SVIDiagnostics, SVIState

__all__ = ["Amortized", "AmortizedDiagnostics", "AmortizedParams", "AmortizedState", "CAVI", "CAVIDiagnostics",
           "CAVIInfo", "CAVIPosterior", "CAVIState", "EM", "EMDiagnostics", "EMInfo",
           "EMState", "Info", "Method", "OnlineEM", "OnlineEMDiagnostics", "OnlineEMState", "SVI", "SVIDiagnostics",
           "SVIState", "gradient_m_step", "guide_size"]
