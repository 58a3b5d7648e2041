"""The fault guard's messages: a run that stopped on a non-finite value, or whose final evaluation was
not finite, becomes an error that says the step, the datum, term or parameter leaf, and holds the last
finite fit (``err.result``: finite parameters and objective, see ``jaxvi.run.loop.finish``)."""
from __future__ import annotations

import warnings

import jax
import numpy as np

from jaxvi.result import (FAULT_FINAL_OBJECTIVE, FAULT_FINAL_PARAMS, FAULT_GRADIENT, FAULT_LOG_EVIDENCE,
                          FAULT_NOT_QUADRATIC, FAULT_OBJECTIVE, FAULT_PARAMS, OBJECTIVE_TERMS, Result)

__all__ = ["describe_step_fault", "raise_on_fault", "warn_on_skips"]


START_HINT = "check init (or init_params) and the log_joint"  # a method's ``start_hint`` replaces it


def raise_on_fault(result: Result) -> None:
    """Raises for a fit that stopped on a fault; returns for a healthy one.

    Raises:
      ValueError: the fault is the model's or the initial parameters' (a non-quadratic ``Gaussian``
        log-joint, a non-finite log-joint or parameter at the start).
      FloatingPointError: the fit became non-finite, or its final evaluation was not finite;
        ``err.result`` holds the last finite fit.
    """
    fault = jax.tree_util.tree_map(int, result.diagnostics.fault)
    if fault.kind == 0:
        return
    name = type(result.method).__name__
    if fault.kind == FAULT_NOT_QUADRATIC:
        raise ValueError(
            f"log_joint: a Gaussian({result.model.latent.d}) latent needs log_joint(params, z, x) quadratic "
            f"in z with a negative definite Hessian (an exact Gaussian posterior), but at iteration "
            f"{fault.iteration} it is not for datum {fault.index}: the log-joint differs from its "
            f"second-order expansion, or its curvature in z is not negative. Write the model so z enters "
            f"quadratically, or ask for the approximate posterior with Gaussian(d, laplace=True)")
    if fault.kind in (FAULT_FINAL_OBJECTIVE, FAULT_FINAL_PARAMS):
        if fault.kind == FAULT_FINAL_PARAMS:
            what = f"{_leaf_name(result, fault.index)} is not finite"
        elif result.method.reports == "ELBO":
            what = f"the ELBO was not finite{_elbo_where(fault)}"
        else:
            what = f"log p(x_i) was not finite for {_evidence_where(fault)}"
        _raise(result, f"{name}'s final evaluation (on all the data, after {fault.iteration} steps) failed: {what}")
    if fault.kind == FAULT_LOG_EVIDENCE:
        where = _evidence_where(fault)
        if fault.iteration == 0:
            raise ValueError(f"init: expected initial parameters at which log_joint is finite, but log p(x) is "
                             f"not finite for {where}; {getattr(result.method, 'start_hint', START_HINT)}")
    elif fault.kind == FAULT_PARAMS:
        if fault.iteration == 0 and not _leaf_finite(result, fault.index):
            raise ValueError(f"init: expected finite initial parameters, but {_leaf_name(result, fault.index)} is "
                             f"not finite; check init (or init_params)")
    elif fault.kind == FAULT_OBJECTIVE and fault.iteration == 0:
        named = 0 <= fault.term < len(OBJECTIVE_TERMS)
        where = f" for datum {fault.index}" if fault.index >= 0 else ""
        which = f"its {OBJECTIVE_TERMS[fault.term]} term{where} is" if named else "it is"
        raise ValueError(f"init: expected initial parameters at which the ELBO is finite, but {which} not finite "
                         f"at the first step; check init (or init_params) and the log_joint")
    step = "iteration" if fault.kind in (FAULT_LOG_EVIDENCE, FAULT_PARAMS) else "step"
    _raise(result, f"{name} stopped at {step} {fault.iteration}: {describe_step_fault(result, fault)}")


def describe_step_fault(result: Result, fault) -> str:
    """What a step's fault (kinds 1, 2, 4, 5) was: ``the ELBO was not finite: its log_joint term for datum 3``,
    ``the update made params leaf .w non-finite``, ``the gradient of ['guide_params']['loc'] was not finite``: the
    words of a stopping fault (``raise_on_fault``) and of a skipped one (``warn_on_skips``)."""
    fault = jax.tree_util.tree_map(int, fault)
    if fault.kind == FAULT_LOG_EVIDENCE:
        return (f"log p(x_i) became non-finite for {_evidence_where(fault)}" if fault.index >= 0
                else f"log_prior became non-finite{getattr(result.method, 'global_terms_hint', '')}")
    if fault.kind == FAULT_PARAMS:
        return f"the update made {_leaf_name(result, fault.index)} non-finite"
    if fault.kind == FAULT_OBJECTIVE:
        return f"the ELBO was not finite{_elbo_where(fault)}"
    if fault.kind == FAULT_GRADIENT:
        return f"the gradient of {_leaf_path(result, fault.index)} was not finite"
    return f"fault kind {fault.kind}"


def warn_on_skips(result: Result) -> None:
    """Warns when a run skipped steps (``on_nonfinite="skip"``): how many, and the first one's step and cause."""
    skips = getattr(result.diagnostics, "skips", None)
    if skips is None or int(skips.count) == 0:
        return
    first = skips.first
    warnings.warn(f"{type(result.method).__name__} skipped {int(skips.count)} step(s) whose update was not finite "
                  f"(on_nonfinite='skip'); the first, after {int(first.iteration)} steps: "
                  f"{describe_step_fault(result, first)}. result.diagnostics.skips holds the count and that fault.",
                  stacklevel=3)


def _raise(result: Result, message: str) -> None:
    err = FloatingPointError(f"{message}. The result holds the last finite fit (err.result).")
    err.result = result
    raise err


def _elbo_where(fault) -> str:
    """``: its log_joint term for datum 7`` (what is known of which term and datum), or nothing."""
    if not 0 <= fault.term < len(OBJECTIVE_TERMS):
        return ""
    return f": its {OBJECTIVE_TERMS[fault.term]} term" + (f" for datum {fault.index}" if fault.index >= 0 else "")


def _evidence_where(fault) -> str:
    """``datum 3``, ``a datum in [0, 1024)`` (a streamed chunk) or ``log_prior``."""
    if fault.term > fault.index >= 0:
        return f"a datum in [{fault.index}, {fault.term})"
    return f"datum {fault.index}" if fault.index >= 0 else "log_prior"


def _leaves(result: Result) -> list[tuple[str, str, object]]:
    """``(part, path, leaf)`` of every leaf of ``(params, guide_params)``, in ``tree_leaves`` order."""
    return [(part, jax.tree_util.keystr(path), leaf) for part, tree in (("params", result.params),
                                                                         ("guide_params", result.guide_params))
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _leaf_name(result: Result, index: int) -> str:
    """``params leaf .means`` / ``guide_params leaf ['loc']``."""
    leaves = _leaves(result)
    if not 0 <= index < len(leaves):
        return "a params leaf"
    part, path, _ = leaves[index]
    return f"{part} leaf {path}" if path else part


def _leaf_path(result: Result, index: int) -> str:
    """``['params']['w']`` / ``['guide_params']['loc']``."""
    leaves = _leaves(result)
    return f"['{leaves[index][0]}']{leaves[index][1]}" if 0 <= index < len(leaves) else "params"


def _leaf_finite(result: Result, index: int) -> bool:
    leaves = _leaves(result)
    return not 0 <= index < len(leaves) or bool(np.all(np.isfinite(np.asarray(leaves[index][2]))))
