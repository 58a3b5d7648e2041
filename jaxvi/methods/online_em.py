r"""Online (stochastic) EM: running averages of minibatch sufficient statistics (Cappé & Moulines 2009).

Step t draws a minibatch of B of the N data, computes its exact posterior and statistics, and moves

.. math::
    \hat s_t = (1 - \rho_t)\,\hat s_{t-1} + \rho_t\, \tfrac{N}{B}\, s(\text{batch}_t), \qquad
    \rho_t = (t + 1)^{-\kappa}, \qquad \theta_{t+1} = \operatorname{maximize}(\hat s_t),

with :math:`\kappa \in (1/2, 1]` (:math:`\rho_0 = 1`: the first batch starts the average). For data
too large to pass over often, one pass can reach nearly the batch EM fit. The final log p(D) is
computed on all the data by a streamed E-step (``chunk_size`` at a time).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxvi import exact
from jaxvi.data import num_data
from jaxvi.data import num_data as num_rows
from jaxvi.latents import check_enumeration, exact_family
from jaxvi.methods.common import batch_rows, final_fault, float_dtype, leaves_finite, sum_accurately, tree_where
from jaxvi.methods.em import _check_posterior_size, _like
from jaxvi.methods.protocol import Info
from jaxvi.methods.settings import check_count, check_number, settings
from jaxvi.model import Model
from jaxvi.result import FAULT_LOG_EVIDENCE, FAULT_PARAMS, NO_FAULT, Fault, Result
from jaxvi.run.compiled import compiled_outside_traces
from jaxvi.run.schedule import Schedule
from jaxvi.statistics import Statistics, streamed_e_step

__all__ = ["OnlineEM", "OnlineEMDiagnostics", "OnlineEMState"]

PyTree = Any


class OnlineEMState(NamedTuple):
    """Online EM between steps.

    Attributes:
      params: θ_t.
      stats: the running average of the scaled minibatch statistics, :math:`\\hat s_{t-1}`.
      count: steps taken (t), for the step size :math:`\\rho_t`.
      shift: the point the statistics are summed about (``Statistics.shift``), the initial θ's, fixed for the run:
        the running average mixes every step's statistics, which must all be about one point (None without one).
    """

    params: PyTree
    stats: PyTree
    count: jax.Array
    shift: PyTree = None


class OnlineEMDiagnostics(NamedTuple):
    """``fault`` (the first numerical fault), ``restart_objectives`` (every restart's log p(D)),
    ``stop_reason`` (why the run stopped) and ``skips`` (the steps ``jaxvi.infer(..., on_nonfinite="skip")``
    skipped, a ``jaxvi.result.Skips``; None outside ``infer``)."""

    fault: Fault
    restart_objectives: jax.Array
    stop_reason: jax.Array
    skips: Any = None


DEFAULT_BATCH_SIZE = 256  # OnlineEM's data per step, where there are as many


@settings("step_size_power")
@dataclasses.dataclass(frozen=True)
class OnlineEM:
    r"""Online EM with an exact E-step on minibatches and a ``Statistics`` M-step.

    Args:
      statistics: the model's M-step through sufficient statistics (e.g. ``gaussian_mixture(...).statistics``).
      batch_size: data per step (drawn without replacement); None (the default): 256, or all the data where there
        are fewer (scikit-learn's ``MiniBatchKMeans`` takes a batch larger than the data so).
      num_steps: steps.
      step_size_power: :math:`\kappa \in (1/2, 1]` of :math:`\rho_t = (t + 1)^{-\kappa}` (traced).
      n_init: restarts, vmapped; the best final log p(D) is kept.
      chunk_size: data per chunk of the final, full-data E-step.

    Example:
      >>> gm = jaxvi.models.gaussian_mixture(8)
      >>> result = jaxvi.infer(gm.model, jaxvi.OnlineEM(gm.statistics, batch_size=512, num_steps=400), x,
      ...                      key=jax.random.key(0))
    """

    statistics: Statistics
    batch_size: int | None = None
    num_steps: int = 1000
    step_size_power: float = 0.6
    n_init: int = 1
    chunk_size: int = 1024

    reports = "log p(D)"
    per_datum = ()

    def __post_init__(self):
        if not isinstance(self.statistics, Statistics):
            raise ValueError(f"OnlineEM(statistics): expected a jaxvi.Statistics M-step (a zoo model's .statistics), "
                             f"got {type(self.statistics).__name__}")
        for name in ("num_steps", "n_init", "chunk_size"):
            check_count(f"OnlineEM({name})", getattr(self, name))
        check_count("OnlineEM(batch_size)", self.batch_size, optional=True)
        check_number("OnlineEM(step_size_power)", self.step_size_power, low=0.5, low_open=True, high=1)

    def check(self, model: Model, data: PyTree = None) -> None:
        """Raises ValueError for a model without an exact posterior, a batch larger than the data, or an
        enumeration too large (a minibatch, and a chunk of the final E-step, at once)."""
        family = exact_family(model.latent)
        if data is not None and self.batch_size is not None and self.batch_size > num_data(data):
            raise ValueError(f"OnlineEM(batch_size): expected at most the number of data, {num_data(data)}, "
                             f"got {self.batch_size}")
        if family == "discrete" and data is not None:
            n = num_data(data)
            check_enumeration(model.latent, max(self.batch_size_for(n), min(self.chunk_size, n)),
                              "OnlineEM's E-step (a minibatch, or a chunk of the final one, at a time)",
                              "Give OnlineEM a smaller batch_size and chunk_size")

    def batch_size_for(self, n: int) -> int:
        """The data per step on ``n`` data: ``batch_size``, or by default 256 or all ``n`` where they are fewer."""
        return min(DEFAULT_BATCH_SIZE, n) if self.batch_size is None else self.batch_size

    def schedule(self, num_data: int) -> Schedule:
        """``num_steps`` minibatches of ``batch_size_for(num_data)``, each drawn without replacement."""
        return Schedule(self.num_steps, batch_size=self.batch_size_for(num_data))

    @compiled_outside_traces
    def init(self, model: Model, key: jax.Array, data: PyTree, params: PyTree | None = None) -> OnlineEMState:
        params = model.init(key, data) if params is None else params
        params = jax.tree_util.tree_map(lambda a: lax.convert_element_type(a, jnp.result_type(a)), params)
        size = self.batch_size_for(num_data(data))
        batch = jax.tree_util.tree_map(lambda a: a[:size], data)
        point = self.statistics.point(params)
        shapes = jax.eval_shape(lambda p, b: self.statistics.collect_about(
            point, p, b, exact.posterior(model.log_joint, model.latent, p, b)), params, batch)
        return OnlineEMState(params, jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
                             jnp.array(0, jnp.int32), point)

    def step(self, model: Model, key: jax.Array, state: OnlineEMState, batch: PyTree, *, num_data
             ) -> tuple[OnlineEMState, Info]:
        """One minibatch (all the data, or a ``Batch`` / rows of N = ``num_data``): its exact E-step,
        the running statistics, the M-step. The objective is the minibatch estimate of log p(D),
        :math:`\\tfrac{N}{B}\\sum_{batch} \\log p_{\\theta_t}(x_i)`. ``key`` is unused."""
        index, rows = batch_rows(batch, num_data, None)
        post = exact.posterior(model.log_joint, model.latent, state.params, rows, self.chunk_size,
                               exact.differentiable_for(model.latent, rows, self.num_steps))
        scale = num_data / num_rows(rows)
        dtype = float_dtype(rows)
        estimate = (scale * sum_accurately(post.log_evidence) + model.total_log_prior(state.params)).astype(dtype)
        datum_ok = jnp.isfinite(post.log_evidence)
        evidence_ok = jnp.all(datum_ok) & jnp.isfinite(estimate) & exact.all_well_posed(post)
        rho = (state.count + 1.0) ** -self.step_size_power
        batch_stats = self.statistics.collect_about(state.shift, state.params, rows, post)
        stats = jax.tree_util.tree_map(lambda s, b: (1 - rho) * s + rho * scale * b, state.stats, batch_stats)
        new_params = _like(self.statistics.maximize_about(state.shift, state.params, stats, num_data), state.params,
                           "OnlineEM.maximize")
        leaf_finite = leaves_finite(new_params)
        kind = jnp.where(evidence_ok, jnp.where(jnp.all(leaf_finite), NO_FAULT, FAULT_PARAMS), FAULT_LOG_EVIDENCE)
        first_bad = jnp.argmin(datum_ok)
        first_bad = jnp.where(jnp.all(datum_ok), -1, first_bad if index is None else index[first_bad])  # -1: log_prior
        fault = Fault(jnp.array(-1, jnp.int32), kind.astype(jnp.int32),
                      jnp.where(kind == FAULT_LOG_EVIDENCE, first_bad,
                                jnp.where(kind == FAULT_PARAMS, jnp.argmin(leaf_finite), -1)).astype(jnp.int32),
                      jnp.array(-1, jnp.int32))
        ok = kind == NO_FAULT
        new_state = tree_where(ok, OnlineEMState(new_params, stats, state.count + 1, state.shift), state)
        return new_state, Info(estimate, fault)

    @compiled_outside_traces
    def finalize(self, model: Model, key: jax.Array, state: OnlineEMState, data: PyTree) -> Result:
        """The fit's Result: log p(D) of all the data at the final θ (a streamed E-step); a non-finite
        one (which chunk of data) is the result's ``diagnostics.fault``."""
        streamed = streamed_e_step(model, state.params, data, self.chunk_size, lambda p, c, q: ())
        objective = (streamed.log_evidence + model.total_log_prior(state.params)).astype(float_dtype(data))
        fault = final_fault(objective, state.params, None, streamed.bad_start, streamed.bad_end)
        return Result(state.params, objective, objective[None], state.count, jnp.array(False),
                      OnlineEMDiagnostics(fault, objective[None], jnp.array(0, jnp.int32)), model, self)

    def posterior(self, result: Result, data: PyTree):
        """The exact posterior of ``data`` at the fitted parameters."""
        if data is None:
            raise ValueError("data: expected the data whose exact posterior to compute, got None")
        _check_posterior_size(result.model, data)
        return exact.posterior(result.model.log_joint, result.model.latent, result.params, data, self.chunk_size)
