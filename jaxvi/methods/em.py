r"""Expectation–maximisation with an exact E-step.

Each iteration t computes the exact posterior :math:`q_t(z_i) = p_{\theta_t}(z_i \mid x_i)` (the
E-step; the KL term of the ELBO identity is zero, so the ELBO equals :math:`\log p_{\theta_t}(D)`)
and then raises the auxiliary function

.. math::
    Q(\theta) = \sum_i E_{q_t}[\log p_\theta(x_i, z_i)] + \log p(\theta)

(the M-step). Because :math:`\log p_\theta(D) \ge Q(\theta) + H(q_t)` with equality at
:math:`\theta_t`, any :math:`\theta_{t+1}` with :math:`Q(\theta_{t+1}) \ge Q(\theta_t)` gives
:math:`\log p_{\theta_{t+1}}(D) \ge \log p_{\theta_t}(D)`.

The M-step is either a closed form the model supplies, or gradient ascent on :math:`Q/N` with an
optax optimiser (L-BFGS by default), warm-started from :math:`\theta_t`. A gradient step that fails
to raise Q is rejected (θ is kept), so log p(D) never decreases; rejections are counted.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxvi import exact
from jaxvi.chunks import num_data as num_data_of
from jaxvi.latents import Gaussian, all_discrete, check_enumeration, exact_family
from jaxvi.methods.common import (check_floating, final_fault, float_dtype, full_data, leaves_finite, sum_accurately,
                                 tree_where)
from jaxvi.methods.settings import check_count, check_number, settings
from jaxvi.model import Model
from jaxvi.result import FAULT_LOG_EVIDENCE, FAULT_NOT_QUADRATIC, FAULT_PARAMS, NO_FAULT, Fault, Result
from jaxvi.run.compiled import compiled_outside_traces
from jaxvi.run.schedule import Change, Schedule
from jaxvi.statistics import Statistics, streamed_e_step

__all__ = ["EM", "EMDiagnostics", "EMInfo", "EMState", "gradient_m_step"]

PyTree = Any
MStep = Callable[[PyTree, PyTree, Any], PyTree]


class EMState(NamedTuple):
    """EM between iterations.

    A step evaluates ``params`` (the E-step: log p(D | θ_t)) and then moves them (the M-step), so the
    parameters whose log p(D) is known are one step behind: ``evaluated`` and ``log_evidence``.

    Attributes:
      params: θ_t, the parameters the next E-step evaluates.
      evaluated: the parameters of the last finite E-step (θ_{t-1}; ``params`` before the first step).
      log_evidence: their log p(D | θ) (+ log prior); -inf before the first step.
      m_step_rejections: gradient M-steps into ``evaluated`` that failed to raise Q and were rejected.
      rejected: whether the M-step into ``params`` (not yet evaluated) was rejected.
    """

    params: PyTree
    evaluated: PyTree
    log_evidence: jax.Array
    m_step_rejections: jax.Array
    rejected: jax.Array


class EMInfo(NamedTuple):
    """A step's ``objective`` (log p(D | θ_t) + log prior, of the parameters it started from) and ``fault``."""

    objective: jax.Array
    fault: Fault


class EMDiagnostics(NamedTuple):
    """What happened during an EM fit, beyond the objective.

    Attributes:
      m_step_rejections: gradient M-steps that failed to raise Q (θ was kept).
      fault: the first numerical fault (``kind == 0``: none).
      restart_objectives: ``(n_init,)`` final objective of every restart; the best is returned.
      stop_reason: why the run stopped, an index into ``jaxvi.run.STOP_REASONS`` (running, tolerance,
        max_iter, fault, patience, resolution).
      skips: the steps ``jaxvi.infer(..., on_nonfinite="skip")`` skipped, a ``jaxvi.result.Skips`` (None
        outside ``infer``).
    """

    m_step_rejections: jax.Array
    fault: Fault
    restart_objectives: jax.Array
    stop_reason: jax.Array
    skips: Any = None


@settings("tol")
@dataclasses.dataclass(frozen=True)
class EM:
    r"""Expectation–maximisation with an exact E-step.

    Args:
      max_iter: the most M-steps (``infer`` evaluates ``max_iter + 1`` parameter sets).
      tol: stop when :math:`|\log p_{\theta_t}(D) - \log p_{\theta_{t-1}}(D)| / N <` ``tol``
        (a traced number: a new value does not recompile).
      n_init: restarts from ``n_init`` keys, run together (vmapped) in one compiled call; the
        restart with the highest final objective is returned. Restart r has the key
        ``jax.random.split(key, n_init)[r]`` (its ``model.init`` gets the first half of that key's split),
        so it equals a single fit with that key.
      m_step: a closed-form M-step ``m_step(params, data, posterior) -> params`` returning
        :math:`\arg\max_\theta Q(\theta)`; or a ``jaxvi.Statistics`` M-step (through expected
        sufficient statistics), with which the E-step streams ``chunk_size`` data at a time and
        never holds the posterior of all the data; or None for the gradient M-step (any
        differentiable log-joint; parameters should be unconstrained).
      m_step_optimizer: the optax optimiser of the gradient M-step; None means ``optax.lbfgs()``.
        Static, compared by what it is (``jaxvi.equality``): a fresh ``optax.lbfgs()`` reuses the
        compiled code of the last.
      m_step_iters: optimiser steps per gradient M-step.
      chunk_size: how many data the E-step evaluates at once (bounds intermediate memory; with a
        ``Statistics`` M-step, the streaming chunk, so memory is bounded by the data alone).

    Example:
      >>> result = jaxvi.infer(model, jaxvi.EM(max_iter=200, n_init=4), data, key=jax.random.key(0))
    """

    max_iter: int = 100
    tol: float = 1e-3
    n_init: int = 1
    m_step: MStep | None = None
    m_step_optimizer: optax.GradientTransformation | None = None
    m_step_iters: int = 20
    chunk_size: int = 1024

    reports = "log p(D)"
    per_datum = ()

    def __post_init__(self):
        for name in ("max_iter", "n_init", "m_step_iters", "chunk_size"):
            check_count(f"EM({name})", getattr(self, name))
        check_number("EM(tol)", self.tol, low=0)
        if self.m_step is not None and not callable(self.m_step) and not isinstance(self.m_step, Statistics):
            raise ValueError(f"EM(m_step): expected a function (params, data, posterior) -> params or None, got {self.m_step!r}")
        opt = self.m_step_optimizer
        if opt is not None and not isinstance(opt, optax.GradientTransformation):
            raise ValueError(f"EM(m_step_optimizer): expected an optax GradientTransformation, got {type(opt).__name__}")

    def check(self, model: Model, data: PyTree = None) -> None:
        """Raises ValueError if this method cannot fit ``model`` (EM needs an exact posterior).

        Warns when the E-step is a Laplace approximation (``Gaussian(d, laplace=True)``).
        """
        if exact_family(model.latent) == "discrete" and data is not None:
            n = num_data_of(data)
            if isinstance(self.m_step, Statistics):
                check_enumeration(model.latent, min(self.chunk_size, n), "EM's streamed E-step (a chunk of chunk_size "
                                  "data at a time)", "Give EM a smaller chunk_size")
            else:
                check_enumeration(model.latent, n, "EM's E-step (the posterior of all the data)",
                                  "Stream the E-step chunk_size data at a time with a jaxvi.Statistics M-step "
                                  "(EM(m_step=statistics)), or fit minibatches with jaxvi.OnlineEM")
        if isinstance(model.latent, Gaussian) and model.latent.laplace:
            warnings.warn("EM with Gaussian(laplace=True): the E-step is the Laplace approximation, so the "
                          "objective is an approximate log p(D) and need not rise every iteration",
                          stacklevel=3)

    def large_kernels(self, model: Model) -> bool:
        """Whether a step on ``model`` works in large kernels over the data, compiled for XLA:CPU's older emitters
        (``jaxvi.run.compiled.LARGE_KERNEL_CODE``): an E-step by enumeration of discrete latents, not a chain's
        forward-backward scan of small kernels nor a Gaussian E-step."""
        return all_discrete(model.latent)

    def schedule(self, num_data: int) -> Schedule:
        """All the data every step, ``max_iter + 1`` steps (the last one's M-step is not evaluated),
        stopping on the change of log p(D) per datum."""
        return Schedule(self.max_iter + 1, stopping=Change(self.tol), evaluates_ahead=True)

    def e_step(self, model: Model, params: PyTree, data: PyTree, passes: int = 1):
        """The exact posterior p(z_i | x_i, params) of every datum: the E-step, one of ``passes`` over ``data``.

        A ``DiscretePosterior``, ``ChainPosterior`` or ``GaussianPosterior`` by the model's latent spec. Nothing
        differentiates through it (a gradient M-step holds it fixed), so where the fit's passes are work enough a
        Markov chain's runs in probability space (``exact.differentiable_for``).
        """
        return exact.posterior(model.log_joint, model.latent, params, data, self.chunk_size,
                               exact.differentiable_for(model.latent, data, passes))

    def posterior(self, result: Result, data: PyTree):
        """The exact posterior of ``data`` at the fitted parameters (what ``Result.posterior`` returns)."""
        if data is None:
            raise ValueError("data: expected the data whose exact posterior to compute, got None")
        _check_posterior_size(result.model, data)
        return self.e_step(result.model, result.params, data)

    @compiled_outside_traces
    def init(self, model: Model, key: jax.Array, data: PyTree, params: PyTree | None = None) -> EMState:
        """The state before the first iteration, from ``model.init(key, data)`` or given ``params``."""
        given, params = params is not None, model.init(key, data) if params is None else params
        if self.m_step is None:
            check_floating(params, given, "EM's gradient M-step")
        params = jax.tree_util.tree_map(lambda a: lax.convert_element_type(a, jnp.result_type(a)), params)
        return EMState(params, params, jnp.array(-jnp.inf, float_dtype(data)), jnp.array(0, jnp.int32), jnp.array(False))

    def step(self, model: Model, key: jax.Array, state: EMState, batch: PyTree, *, num_data) -> tuple[EMState, EMInfo]:
        """One EM iteration on all the data: the E-step at θ_t (its log p(D) is the info's objective),
        then the M-step θ_t → θ_{t+1}. ``key`` is unused (EM is deterministic).

        With a ``Statistics`` M-step the E-step streams ``chunk_size`` data at a time into the
        statistics, and no posterior of all the data is held. A faulty step returns ``state``
        (a non-finite M-step: with θ_t evaluated, unmoved).
        """
        data = full_data(batch, num_data, "EM")
        dtype = state.log_evidence.dtype
        prior = model.total_log_prior(state.params)
        if isinstance(self.m_step, Statistics):
            point = self.m_step.point(state.params)  # the sums about θ_t's point: recomputed every iteration
            streamed = streamed_e_step(model, state.params, data, self.chunk_size,
                                       functools.partial(self.m_step.collect_about, point),
                                       exact.differentiable_for(model.latent, data, self.max_iter + 1))
            log_evidence = (streamed.log_evidence + prior).astype(dtype)
            evidence_ok = jnp.isfinite(log_evidence) & (streamed.bad_start < 0)

            def m_step():
                new = self.m_step.maximize_about(point, state.params, streamed.stats, num_data_of(data))
                return _like(new, state.params, "EM(m_step=Statistics).maximize"), jnp.array(False)

            def fault_of(leaf_finite):
                params_ok = jnp.all(leaf_finite)
                kind = jnp.where(evidence_ok, jnp.where(params_ok, NO_FAULT, FAULT_PARAMS), FAULT_LOG_EVIDENCE)
                index = jnp.where(kind == FAULT_LOG_EVIDENCE, streamed.bad_start,
                                  jnp.where(kind == FAULT_PARAMS, jnp.argmin(leaf_finite), -1))
                end = jnp.where(kind == FAULT_LOG_EVIDENCE, streamed.bad_end, -1)  # the chunk [index, end)
                return Fault(jnp.array(-1, jnp.int32), kind.astype(jnp.int32), index.astype(jnp.int32),
                             end.astype(jnp.int32))
        else:
            post = self.e_step(model, state.params, data, self.max_iter + 1)
            log_evidence = (sum_accurately(post.log_evidence) + prior).astype(dtype)
            well_posed = exact.well_posed(post)
            evidence_ok = jnp.isfinite(log_evidence) & exact.all_well_posed(post)
            m_step = lambda: self._m_step(model, state.params, data, post)  # noqa: E731
            fault_of = lambda leaf_finite: _first_fault(  # noqa: E731
                well_posed, jnp.isfinite(log_evidence), post.log_evidence, jnp.all(leaf_finite), leaf_finite)
        new_params, rejected = lax.cond(evidence_ok, m_step, lambda: (state.params, jnp.array(False)))
        leaf_finite = leaves_finite(new_params)
        move = evidence_ok & jnp.all(leaf_finite)
        new_state = EMState(
            params=tree_where(move, new_params, state.params),
            evaluated=tree_where(evidence_ok, state.params, state.evaluated),
            log_evidence=jnp.where(evidence_ok, log_evidence, state.log_evidence),
            m_step_rejections=state.m_step_rejections + (evidence_ok & state.rejected).astype(jnp.int32),
            rejected=jnp.where(evidence_ok, move & rejected, state.rejected))
        return new_state, EMInfo(log_evidence, fault_of(leaf_finite))

    @compiled_outside_traces
    def finalize(self, model: Model, key: jax.Array, state: EMState, data: PyTree) -> Result:
        """The last evaluated parameters and their log p(D) (no further E-step); a non-finite one
        (only before the first step) is the result's ``diagnostics.fault``."""
        objective = state.log_evidence
        diagnostics = EMDiagnostics(state.m_step_rejections, final_fault(objective, state.evaluated), objective[None],
                                    jnp.array(0, jnp.int32))
        return Result(state.evaluated, objective, objective[None], jnp.array(0, jnp.int32), jnp.array(False),
                      diagnostics, model, self)

    def _m_step(self, model: Model, params: PyTree, data: PyTree, post) -> tuple[PyTree, jax.Array]:
        if self.m_step is not None:
            return _like(self.m_step(params, data, post), params, "EM(m_step)"), jnp.array(False)
        optimizer = optax.lbfgs() if self.m_step_optimizer is None else self.m_step_optimizer
        return gradient_m_step(model, params, data, post, optimizer, self.m_step_iters, self.chunk_size)


def gradient_m_step(model: Model, params: PyTree, data: PyTree, post,
                    optimizer: optax.GradientTransformation, num_steps: int, chunk_size: int = 1024
                    ) -> tuple[PyTree, jax.Array]:
    r"""Raises :math:`Q(\theta)/N` by ``num_steps`` optimiser steps from ``params``.

    Returns:
      ``(new_params, rejected)``: the optimised parameters if they raise Q, else ``params``
      unchanged and ``rejected = True``.
    """
    n = num_data_of(data)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params), jnp.float32)

    def neg_q(p):  # in the parameters' precision, as the optimiser's line search expects
        q = exact.expected_log_joint(model.log_joint, p, data, post, chunk_size)
        return (-(q + model.total_log_prior(p)) / n).astype(dtype)

    def body(carry, _):
        p, opt_state = carry
        value, grad = _value_and_grad(neg_q, p, opt_state)
        updates, opt_state = optimizer.update(grad, opt_state, p, value=value, grad=grad, value_fn=neg_q)
        return (optax.apply_updates(p, updates), opt_state), None

    (new_params, _), _ = lax.scan(body, (params, optimizer.init(params)), length=num_steps)
    new_params = _like(new_params, params, "the gradient M-step")
    improved = neg_q(new_params) <= neg_q(params)
    return tree_where(improved, new_params, params), ~improved


def _first_fault(well_posed, evidence_ok, datum_log_evidence, params_ok, leaf_finite) -> Fault:
    """The fault of this iteration, the first of: a datum whose log-joint is not quadratic (Gaussian
    latents), non-finite log evidence (which datum), non-finite params (which leaf)."""
    kind = jnp.where(evidence_ok, jnp.where(params_ok, NO_FAULT, FAULT_PARAMS), FAULT_LOG_EVIDENCE)
    datum = jnp.argmin(jnp.isfinite(datum_log_evidence))
    if well_posed is not None:  # a Gaussian latent's quadratic check
        kind = jnp.where(jnp.all(well_posed), kind, FAULT_NOT_QUADRATIC)
        datum = jnp.where(kind == FAULT_NOT_QUADRATIC, jnp.argmin(well_posed), datum)
    leaf = jnp.argmin(leaf_finite)
    index = jnp.where((kind == FAULT_LOG_EVIDENCE) | (kind == FAULT_NOT_QUADRATIC), datum,
                      jnp.where(kind == FAULT_PARAMS, leaf, -1))
    return Fault(jnp.array(-1, jnp.int32), kind.astype(jnp.int32), index.astype(jnp.int32), jnp.array(-1, jnp.int32))


def _check_posterior_size(model: Model, data: PyTree) -> None:
    """Raises ValueError when the exact posterior of ``data`` (a table of every datum and value) would not fit."""
    if exact_family(model.latent) == "discrete":
        check_enumeration(model.latent, num_data_of(data), "the posterior of these data", "Pass the data in parts")


def _value_and_grad(fn, params, opt_state):
    """Value and gradient, reused from the optimiser's state when it keeps them (L-BFGS)."""
    try:
        return optax.value_and_grad_from_state(fn)(params, state=opt_state)
    except ValueError:  # the optimiser keeps no value/grad in its state (e.g. Adam)
        return jax.value_and_grad(fn)(params)


def _like(new: PyTree, old: PyTree, who: str) -> PyTree:
    """``new`` cast to ``old``'s dtypes; a ValueError if the tree structure or shapes differ."""
    new_def, old_def = jax.tree_util.tree_structure(new), jax.tree_util.tree_structure(old)
    if new_def != old_def:
        raise ValueError(f"{who}: expected params with the structure of init's, {old_def}, got {new_def}")
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(old)):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(f"{who}: expected a params leaf of shape {jnp.shape(b)}, got {jnp.shape(a)}")
    return jax.tree_util.tree_map(lambda a, b: jnp.asarray(a, b.dtype), new, old)
