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
import numpy as np
from jax import lax

from jaxvi import exact
from jaxvi.chunks import minibatch, num_data
from jaxvi.em import _like, _where
from jaxvi.latents import exact_family
from jaxvi.model import Model
from jaxvi.result import FAULT_LOG_EVIDENCE, FAULT_PARAMS, NO_FAULT, Fault, Result, no_fault
from jaxvi.statistics import Statistics, streamed_e_step

__all__ = ["OnlineEM", "OnlineEMDiagnostics", "OnlineEMState"]

PyTree = Any


class OnlineEMState(NamedTuple):
    """The state of an online EM run between steps.

    Attributes:
      params: θ_t.
      stats: the running average of the scaled minibatch statistics, :math:`\\hat s_{t-1}`.
      key: the PRNG key of the next step.
      trace: ``(num_steps,)`` every step's minibatch estimate of log p(D), :math:`\\tfrac{N}{B}\\sum_{batch} \\log p_{\\theta_t}(x_i)`.
      n_iter: steps taken.
      converged: always False (online EM runs its steps).
      done: whether the run has stopped.
      fault: the first non-finite log evidence (its batch) or parameters (their leaf).
    """

    params: PyTree
    stats: PyTree
    key: jax.Array
    trace: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    done: jax.Array
    fault: Fault


class OnlineEMDiagnostics(NamedTuple):
    """``fault`` (the first numerical fault) and ``restart_objectives`` (every restart's log p(D))."""

    fault: Fault
    restart_objectives: jax.Array


@dataclasses.dataclass(frozen=True)
class OnlineEM:
    r"""Online EM with an exact E-step on minibatches and a ``Statistics`` M-step.

    Args:
      statistics: the model's M-step through sufficient statistics (e.g. ``gaussian_mixture(...).statistics``).
      batch_size: data per step (drawn without replacement).
      num_steps: steps.
      step_size_power: :math:`\kappa \in (1/2, 1]` of :math:`\rho_t = (t + 1)^{-\kappa}`.
      n_init: restarts, vmapped; the best final log p(D) is kept.
      chunk_size: data per chunk of the final, full-data E-step.

    Example:
      >>> gm = jaxvi.models.gaussian_mixture(8)
      >>> result = jaxvi.infer(gm.model, jaxvi.OnlineEM(gm.statistics, batch_size=512, num_steps=400), x,
      ...                      key=jax.random.key(0))
    """

    statistics: Statistics
    batch_size: int = 256
    num_steps: int = 1000
    step_size_power: float = 0.6
    n_init: int = 1
    chunk_size: int = 1024

    def __post_init__(self):
        if not isinstance(self.statistics, Statistics):
            raise ValueError(f"OnlineEM(statistics): expected a jaxvi.Statistics M-step (a zoo model's .statistics), "
                             f"got {type(self.statistics).__name__}")
        for name in ("batch_size", "num_steps", "n_init", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"OnlineEM({name}): expected an integer >= 1, got {value!r}")
        kappa = self.step_size_power
        if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not 0.5 < kappa <= 1:
            raise ValueError(f"OnlineEM(step_size_power): expected a number in (0.5, 1], got {kappa!r}")

    @property
    def max_iter(self) -> int:
        return self.num_steps

    def check(self, model: Model) -> None:
        exact_family(model.latent)

    def check_data(self, data: PyTree) -> None:
        n = num_data(data.obs if isinstance(data, exact.Sequences) else data)
        if self.batch_size > n:
            raise ValueError(f"OnlineEM(batch_size): expected at most the number of data, {n}, got {self.batch_size}")

    def init(self, model: Model, data: PyTree, key: jax.Array, params: PyTree | None = None) -> OnlineEMState:
        model_key, run_key = jax.random.split(key)
        params = model.init(model_key, data) if params is None else params
        params = jax.tree_util.tree_map(lambda a: lax.convert_element_type(a, jnp.result_type(a)), params)
        batch = jax.tree_util.tree_map(lambda a: a[: self.batch_size], data)
        shapes = jax.eval_shape(lambda p, b: self.statistics.collect(
            p, b, exact.posterior(model.log_joint, model.latent, p, b)), params, batch)
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(data), jnp.float32)
        dtype = dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32
        return OnlineEMState(params, jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), run_key,
                             jnp.zeros(self.num_steps, dtype), jnp.array(0, jnp.int32), jnp.array(False),
                             jnp.array(False), no_fault())

    def step(self, model: Model, state: OnlineEMState, data: PyTree, key: jax.Array | None = None
             ) -> tuple[OnlineEMState, jax.Array]:
        """One minibatch: its exact E-step, the running statistics, the M-step."""
        n = num_data(data)
        next_key, batch_key = jax.random.split(state.key)
        index = minibatch(batch_key, n, self.batch_size)
        batch = jax.tree_util.tree_map(lambda a: a[index], data)
        post = exact.posterior(model.log_joint, model.latent, state.params, batch, self.chunk_size)
        scale = n / self.batch_size
        estimate = (scale * jnp.sum(post.log_evidence) + model.total_log_prior(state.params)).astype(state.trace.dtype)
        evidence_ok = jnp.all(jnp.isfinite(post.log_evidence)) & jnp.all(exact.well_posed(post))
        rho = (state.n_iter + 1.0) ** -self.step_size_power
        batch_stats = self.statistics.collect(state.params, batch, post)
        stats = jax.tree_util.tree_map(lambda s, b: (1 - rho) * s + rho * scale * b, state.stats, batch_stats)
        new_params = _like(self.statistics.maximize(state.params, stats, n), state.params, "OnlineEM.maximize")
        leaf_finite = jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(new_params)])
        kind = jnp.where(evidence_ok, jnp.where(jnp.all(leaf_finite), NO_FAULT, FAULT_PARAMS), FAULT_LOG_EVIDENCE)
        first_bad = index[jnp.argmin(jnp.isfinite(post.log_evidence))]
        fault = Fault(jnp.where(kind == NO_FAULT, -1, state.n_iter).astype(jnp.int32), kind.astype(jnp.int32),
                      jnp.where(kind == FAULT_LOG_EVIDENCE, first_bad,
                                jnp.where(kind == FAULT_PARAMS, jnp.argmin(leaf_finite), -1)).astype(jnp.int32),
                      jnp.array(-1, jnp.int32))
        ok = kind == NO_FAULT
        n_iter = state.n_iter + ok.astype(jnp.int32)
        new_state = OnlineEMState(
            params=_where(ok, new_params, state.params), stats=_where(ok, stats, state.stats),
            key=jnp.where(ok, next_key, state.key),
            trace=jnp.where(ok, state.trace.at[state.n_iter].set(estimate), state.trace), n_iter=n_iter,
            converged=jnp.array(False), done=~ok | (n_iter >= self.num_steps), fault=fault)
        return new_state, estimate

    def finalize(self, model: Model, state: OnlineEMState, data: PyTree) -> Result:
        """The fit's Result: log p(D) of all the data at the final θ (a streamed E-step)."""
        streamed = streamed_e_step(model, state.params, data, self.chunk_size, lambda p, c, q: ())
        objective = (streamed.log_evidence + model.total_log_prior(state.params)).astype(state.trace.dtype)
        trace = jnp.where(jnp.arange(self.num_steps) < state.n_iter, state.trace, objective)
        return Result(state.params, objective, trace, state.n_iter, state.converged,
                      OnlineEMDiagnostics(state.fault, objective[None]), model, self)

    def posterior(self, result: Result, data: PyTree):
        """The exact posterior of ``data`` at the fitted parameters."""
        if data is None:
            raise ValueError("data: expected the data whose exact posterior to compute, got None")
        return exact.posterior(result.model.log_joint, result.model.latent, result.params, data, self.chunk_size)

    def describe(self, states: OnlineEMState, n: int) -> str:
        last = max(int(np.max(np.asarray(states.n_iter))) - 1, 0)
        return f"log p(D)/N≈{float(np.max(np.asarray(states.trace)[..., last])) / n:.5g}"
