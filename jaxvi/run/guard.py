"""The fault guard's messages: a run that stopped on a non-finite value becomes an error that says
the step, the datum or parameter leaf, and holds the last finite fit (``err.result``)."""
from __future__ import annotations

import jax

from jaxvi.result import (FAULT_LOG_EVIDENCE, FAULT_NOT_QUADRATIC, FAULT_OBJECTIVE, FAULT_PARAMS, OBJECTIVE_TERMS,
                          Result)

__all__ = ["raise_on_fault"]


def raise_on_fault(result: Result) -> None:
    """Raises for a fit that stopped on a fault; returns for a healthy one.

    Raises:
      ValueError: the fault is the model's or the initial parameters' (a non-quadratic ``Gaussian``
        log-joint, a non-finite log-joint at the start).
      FloatingPointError: the fit became non-finite; ``err.result`` holds the last finite fit.
    """
    fault = jax.tree_util.tree_map(int, result.diagnostics.fault)
    if fault.kind == 0:
        return
    if fault.kind == FAULT_NOT_QUADRATIC:
        raise ValueError(
            f"log_joint: a Gaussian({result.model.latent.d}) latent needs log_joint(params, z, x) quadratic "
            f"in z with a negative definite Hessian (an exact Gaussian posterior), but at iteration "
            f"{fault.iteration} it is not for datum {fault.index}: the log-joint differs from its "
            f"second-order expansion, or its curvature in z is not negative. Write the model so z enters "
            f"quadratically, or ask for the approximate posterior with Gaussian(d, laplace=True)")
    if fault.kind == FAULT_LOG_EVIDENCE:
        where = f"datum {fault.index}" if fault.index >= 0 else "log_prior"
        where = f"a datum in [{fault.index}, {fault.term})" if fault.term > fault.index >= 0 else where
        if fault.iteration == 0:
            raise ValueError(f"init: expected initial parameters at which log_joint is finite, but log p(x) is "
                             f"not finite for {where}; check init (or init_params) and the log_joint")
        what = (f"log p(x_i) became non-finite for {where}" if fault.index >= 0 else "log_prior became non-finite")
    elif fault.kind == FAULT_PARAMS:
        what = f"the update made params leaf {_leaf_name(result.params, fault.index, 'params')} non-finite"
    elif fault.kind == FAULT_OBJECTIVE:
        named = 0 <= fault.term < len(OBJECTIVE_TERMS)
        where = f" for datum {fault.index}" if fault.index >= 0 else ""
        if fault.iteration == 0:
            which = f"its {OBJECTIVE_TERMS[fault.term]} term{where} is" if named else "it is"
            raise ValueError(f"init: expected initial parameters at which the ELBO is finite, but {which} not finite "
                             f"at the first step; check init (or init_params) and the log_joint")
        what = f"the ELBO was not finite: its {OBJECTIVE_TERMS[fault.term]} term{where}" if named else \
            "the ELBO was not finite"
    else:
        tree = {"params": result.params, "guide_params": result.guide_params}
        what = f"the gradient of {_leaf_name(tree, fault.index, 'params')} was not finite"
    step = "iteration" if fault.kind in (FAULT_LOG_EVIDENCE, FAULT_PARAMS) else "step"
    err = FloatingPointError(f"{type(result.method).__name__} stopped at {step} {fault.iteration}: {what}. "
                             f"The result holds the last finite parameters (err.result).")
    err.result = result
    raise err


def _leaf_name(tree, index: int, default: str) -> str:
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    return (paths[index] if 0 <= index < len(paths) else "") or default
