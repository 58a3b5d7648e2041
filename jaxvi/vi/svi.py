r"""Stochastic variational inference: gradient ascent on the ELBO over θ and a guide's ψ.

For local latents (one per datum) the objective is

.. math::
    \mathcal{L}(\theta, \psi) = \sum_i E_{q_{\psi_i}(u_i)}[\log p_\theta(x_i, z(u_i)) + \log|J(u_i)| - \log q_{\psi_i}(u_i)]
    + \log p(\theta) \;\le\; \log p_\theta(D) + \log p(\theta),

with one ψ_i per datum; for a ``Global`` latent it is
:math:`E_{q_\psi(u)}[\log p_\theta(z) + \sum_i \log p_\theta(x_i \mid z) + \log|J| - \log q_\psi(u)] + \log p(\theta)`.
Each step draws a minibatch of B of the N data (without replacement) and scales its sum by N / B,
an unbiased estimate; for local latents only the batch's ψ_i and their optimiser states move.

``Discrete`` latents of up to 256 values and ``Markov`` latents are summed out exactly by default:
the local term is then :math:`\log p_\theta(x_i)` itself (no guide, no gap) and SVI is maximum
likelihood by stochastic gradients. ``discrete="guide"`` fits a ``Categorical`` q_i per datum
with the score-function estimator instead, for latents with too many values to enumerate.

Where the latent has an exact posterior (``Discrete``, ``Markov``, ``Gaussian``) the result also
carries the exact log p(D) at the fitted θ and the gap :math:`\sum_i KL(q_i \| p(z_i \mid x_i))`
= log p(D) - ELBO.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxvi import exact
from jaxvi.chunks import minibatch, num_data
from jaxvi.exact.enumerate import latent_values
from jaxvi.latents import Discrete, Global, Markov, exact_family, is_spec
from jaxvi.model import Model
from jaxvi.result import FAULT_GRADIENT, FAULT_OBJECTIVE, NO_FAULT, Fault, Result, no_fault
from jaxvi.vi.guides import Categorical, Flow, MeanField, is_guide
from jaxvi.vi.objectives import ESTIMATORS, estimate, particle_terms
from jaxvi.vi.space import LatentSpace, latent_space, unconstrain

__all__ = ["ENUMERATE_MAX", "SVI", "SVIDiagnostics", "SVIState", "FittedGuide", "guide_elbo", "local_objective"]

PyTree = Any

ENUMERATE_MAX = 256  # discrete="auto" sums a Discrete latent out up to this many values


class SVIState(NamedTuple):
    """The state of one SVI run, between steps.

    Attributes:
      params: θ.
      guide_params: ψ: one pytree for a global latent, leaves with a leading datum axis for local
        latents, None when the latent is summed out.
      opt_state: the optimiser state of (θ, global ψ).
      local_opt_state: per-datum optimiser states of the local ψ_i (leading datum axis), or None.
      key: the PRNG key of the next step.
      trace: ``(num_steps,)`` the ELBO estimate (+ log p(θ)) of every step, scaled to all N data.
      smoothed: an exponential moving average of the trace (weight 1/window per step).
      smoothed_at_check: ``smoothed`` at the last convergence check.
      n_iter: steps taken.
      converged: whether the smoothed ELBO changed by less than ``tol`` per datum over a window.
      done: whether the run has stopped.
      fault: the first non-finite objective or gradient (it stops the run; θ and ψ keep their
        last finite values).
    """

    params: PyTree
    guide_params: PyTree
    opt_state: PyTree
    local_opt_state: PyTree
    key: jax.Array
    trace: jax.Array
    smoothed: jax.Array
    smoothed_at_check: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    done: jax.Array
    fault: Fault


class SVIDiagnostics(NamedTuple):
    """What an SVI fit knows beyond its objective.

    Attributes:
      elbo_stderr: the Monte-Carlo standard error of the final ELBO estimate.
      log_evidence: the exact log p(D | θ) (+ log p(θ)) at the fitted θ where the latent has an
        exact posterior, else NaN (``jaxvi.evidence`` estimates it by importance sampling).
      gap: ``log_evidence - objective``, :math:`\\sum_i KL(q_i \\| p(z_i \\mid x_i))` (NaN where unknown).
      fault: the first numerical fault (``kind == 0``: none).
      restart_objectives: ``(n_init,)`` final objective of every restart; the best is returned.
      fault_key: the PRNG key of the faulty step (of the next step if none), to replay it.
      opt_state: the optimiser states at the end: ``(state of (θ, global ψ), per-datum states of local ψ or None)``.
    """

    elbo_stderr: jax.Array
    log_evidence: jax.Array
    gap: jax.Array
    fault: Fault
    restart_objectives: jax.Array
    fault_key: jax.Array
    opt_state: PyTree


@dataclasses.dataclass(frozen=True)
class SVI:
    r"""Stochastic variational inference.

    Args:
      guide: the variational family for continuous latents: ``MeanField()`` (default), ``FullRank()``,
        ``LowRank(rank)``, ``Flow(...)``, ``Delta()`` (MAP). Ignored for latents that are summed out.
      optimizer: an optax optimiser; None means ``optax.adam(1e-2)``.
      num_steps: gradient steps.
      batch_size: data per step (None: all N). Each step draws a minibatch without replacement. The
        local ψ_i have one optimiser state per datum, advanced only when datum i is in the batch, so
        a learning-rate schedule counts that datum's own updates (about num_steps x B / N of them).
      num_particles: Monte-Carlo samples of the latent per datum (local) or per step (global).
      estimator: ``"elbo"`` (reparameterised, default), ``"analytic"`` (closed-form entropy),
        ``"stl"`` (sticking the landing), ``"iwae"`` (importance-weighted bound with
        ``num_particles`` samples) or ``"score"`` (score function; the default, and the only one,
        for a ``Categorical`` guide). See ``jaxvi.vi.objectives``.
      discrete: for ``Discrete`` latents, ``"enumerate"`` (sum them out exactly; ``Markov`` latents
        always are), ``"guide"`` (a ``Categorical`` q per datum, score-function gradients), or
        ``"auto"`` (default): enumerate up to ``ENUMERATE_MAX`` = 256 values, a guide beyond.
      tol: stop when the smoothed ELBO changes by less than ``tol`` per datum over ``window``
        steps; None (default) runs all ``num_steps``.
      window: steps between convergence checks, and the averaging length of the smoothed ELBO.
      num_eval_particles: particles for the final ELBO estimate and its standard error.
      n_init: restarts from ``jax.random.split(key, n_init)``, vmapped in one call; the best final
        ELBO is kept.

    Example:
      >>> result = jaxvi.infer(model, jaxvi.SVI(num_steps=2000, batch_size=256), data, key=jax.random.key(0))
      >>> result.objective, result.posterior().mean()
    """

    guide: Any = MeanField()
    optimizer: optax.GradientTransformation | None = None
    num_steps: int = 1000
    batch_size: int | None = None
    num_particles: int = 1
    estimator: str = "elbo"
    discrete: str = "auto"
    tol: float | None = None
    window: int = 100
    num_eval_particles: int = 100
    n_init: int = 1

    def __post_init__(self):
        for name in ("num_steps", "num_particles", "window", "num_eval_particles", "n_init"):
            _check_positive_int(f"SVI({name})", getattr(self, name))
        if self.batch_size is not None:
            _check_positive_int("SVI(batch_size)", self.batch_size)
        if not is_guide(self.guide):
            raise ValueError(f"SVI(guide): expected a jaxvi guide such as jaxvi.MeanField(), got {self.guide!r}")
        if self.optimizer is not None and not isinstance(self.optimizer, optax.GradientTransformation):
            raise ValueError(f"SVI(optimizer): expected an optax GradientTransformation, got "
                             f"{type(self.optimizer).__name__}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"SVI(estimator): expected one of {ESTIMATORS}, got {self.estimator!r}")
        if self.discrete not in ("auto", "enumerate", "guide"):
            raise ValueError(f"SVI(discrete): expected 'auto', 'enumerate' or 'guide', got {self.discrete!r}")
        if self.tol is not None and (isinstance(self.tol, bool) or not isinstance(self.tol, (int, float))
                                     or not self.tol >= 0):
            raise ValueError(f"SVI(tol): expected a number >= 0 or None, got {self.tol!r}")

    @property
    def max_iter(self) -> int:
        return self.num_steps

    # --- what kind of latent, and checks before compiling -------------------------------------------

    def _kind(self, model: Model) -> str:
        """``"global"``, ``"local"`` (continuous, a guide per datum), ``"categorical"`` or ``"summed"``."""
        latent = model.latent
        if isinstance(latent, Global):
            return "global"
        if isinstance(latent, Markov):
            return "summed"
        leaves = jax.tree_util.tree_leaves(latent, is_leaf=is_spec)
        if leaves and all(isinstance(leaf, Discrete) for leaf in leaves):
            size = math.prod(leaf.K for leaf in leaves)
            enumerate_ = self.discrete == "enumerate" or (self.discrete == "auto" and size <= ENUMERATE_MAX)
            return "summed" if enumerate_ else "categorical"
        return "local"

    def _guide(self, model: Model):
        return Categorical() if self._kind(model) == "categorical" else self.guide

    def _estimator(self, model: Model) -> str:
        return "score" if self._kind(model) == "categorical" else self.estimator

    def check(self, model: Model) -> None:
        """Raises ValueError for a model this SVI cannot fit, before anything compiles."""
        kind = self._kind(model)
        if kind in ("global", "local"):
            space = latent_space(model.latent.latent if kind == "global" else model.latent)
            guide = self.guide
            if self.estimator == "analytic" and not guide.has_entropy:
                raise ValueError(f"SVI(estimator='analytic'): {type(guide).__name__} has no closed-form entropy; "
                                 f"use estimator='elbo' or 'stl'")
            if self.estimator == "score" and self.num_particles < 2:
                raise ValueError("SVI(num_particles): the score-function estimator's baseline needs num_particles >= 2")
            if isinstance(guide, Flow) and space.dim < 2:
                raise ValueError(f"SVI(guide=Flow()): a coupling flow needs a latent of at least 2 values, got {space.dim}")
        if kind == "categorical" and self.num_particles < 2:
            raise ValueError("SVI(num_particles): a Categorical guide (discrete='guide', or 'auto' with more than "
                             f"{ENUMERATE_MAX} latent values) uses the score-function estimator, whose baseline "
                             "needs num_particles >= 2")
        if kind == "summed" and self.estimator != "elbo":
            raise ValueError(f"SVI(estimator={self.estimator!r}): the latent is summed out exactly, so the "
                             f"objective is log p(D) itself; leave estimator='elbo'")

    def check_data(self, data: PyTree) -> None:
        """Raises ValueError if ``batch_size`` exceeds the number of data."""
        n = num_data(data.obs if isinstance(data, exact.Sequences) else data)
        if self.batch_size is not None and self.batch_size > n:
            raise ValueError(f"SVI(batch_size): expected at most the number of data, {n}, got {self.batch_size}")

    # --- the state machine --------------------------------------------------------------------------

    def init(self, model: Model, data: PyTree, key: jax.Array, params: PyTree | None = None) -> SVIState:
        """θ from ``model.init`` (or ``params``), ψ from the guide, the optimiser states."""
        model_key, guide_key, run_key = jax.random.split(key, 3)
        params = model.init(model_key, data) if params is None else params
        params = jax.tree_util.tree_map(lambda a: lax.convert_element_type(a, jnp.result_type(a)), params)
        dtype = _float_dtype(data)
        kind, guide, n = self._kind(model), self._guide(model), _num(data)
        optimizer = self._optimizer()
        guide_params, local_opt_state = None, None
        if kind == "global":
            guide_params = guide.init(guide_key, latent_space(model.latent.latent).dim, dtype)
        elif kind in ("local", "categorical"):
            dim = (latent_space(model.latent).dim if kind == "local"
                   else jax.tree_util.tree_leaves(latent_values(model.latent))[0].shape[0])
            guide_params = jax.vmap(lambda k: guide.init(k, dim, dtype))(jax.random.split(guide_key, n))
            local_opt_state = jax.vmap(optimizer.init)(guide_params)
        trainable = (params, guide_params if kind == "global" else None)
        return SVIState(
            params=params, guide_params=guide_params, opt_state=optimizer.init(trainable),
            local_opt_state=local_opt_state, key=run_key, trace=jnp.zeros(self.num_steps, dtype),
            smoothed=jnp.array(jnp.nan, dtype), smoothed_at_check=jnp.array(jnp.nan, dtype),
            n_iter=jnp.array(0, jnp.int32), converged=jnp.array(False), done=jnp.array(False), fault=no_fault())

    def step(self, model: Model, state: SVIState, data: PyTree, key: jax.Array | None = None
             ) -> tuple[SVIState, jax.Array]:
        """One gradient step on a minibatch. Returns the state and the step's ELBO estimate."""
        kind, n = self._kind(model), _num(data)
        next_key, batch_key, particle_key = jax.random.split(state.key, 3)
        full, index, batch, global_psi, batch_psi = self._batch(kind, data, state.guide_params, batch_key)
        local = batch_psi is not None
        scale = n / index.shape[0]

        def objective(params, global_psi, batch_psi):
            surrogate, bound, _, _ = self._objective(model, params, global_psi, batch_psi, batch, particle_key, scale,
                                                     self.num_particles)
            return surrogate, bound

        (_, bound), grads = jax.value_and_grad(objective, argnums=(0, 1, 2), has_aux=True)(
            state.params, global_psi, batch_psi)
        grads = jax.tree_util.tree_map(jnp.negative, grads)  # optax minimises
        leaf_finite = jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)])
        # which term and datum went non-finite is found by diagnose, which infer calls to replay this step
        # (its key is kept): tracking the per-datum terms at every step would slow the step threefold
        fault = _fault(state.n_iter, bound, _no_parts(), index, leaf_finite)
        ok = fault.kind == NO_FAULT

        optimizer = self._optimizer()
        updates, opt_state = optimizer.update((grads[0], grads[1]), state.opt_state, (state.params, global_psi))
        new_params, new_global = optax.apply_updates((state.params, global_psi), updates)
        guide_params, local_opt_state = state.guide_params, state.local_opt_state
        if local:
            rows_opt = state.local_opt_state if full else _take(state.local_opt_state, index)
            row_updates, rows_opt = jax.vmap(optimizer.update)(grads[2], rows_opt, batch_psi)
            new_rows = optax.apply_updates(batch_psi, row_updates)
            if not full:
                new_rows = _put(state.guide_params, index, new_rows)
                rows_opt = _put(state.local_opt_state, index, rows_opt)
            guide_params = _where(ok, new_rows, state.guide_params)
            local_opt_state = _where(ok, rows_opt, state.local_opt_state)
        elif kind == "global":
            guide_params = _where(ok, new_global, state.guide_params)

        bound = bound.astype(state.trace.dtype)
        smoothed = jnp.where(jnp.isnan(state.smoothed), bound,
                             state.smoothed + (bound - state.smoothed) / min(self.window, self.num_steps))
        n_iter = state.n_iter + ok.astype(jnp.int32)
        check = ok & (n_iter % self.window == 0)
        converged = (check & (self.tol is not None) & jnp.isfinite(state.smoothed_at_check)
                     & (jnp.abs(smoothed - state.smoothed_at_check) / n < (self.tol or 0.0)))
        new_state = SVIState(
            params=_where(ok, new_params, state.params),
            guide_params=guide_params,
            opt_state=_where(ok, opt_state, state.opt_state),
            local_opt_state=local_opt_state,
            key=jnp.where(ok, next_key, state.key),
            trace=jnp.where(ok, state.trace.at[state.n_iter].set(bound), state.trace),
            smoothed=jnp.where(ok, smoothed, state.smoothed),
            smoothed_at_check=jnp.where(check, smoothed, state.smoothed_at_check),
            n_iter=n_iter,
            converged=converged,
            done=~ok | converged | (n_iter >= self.num_steps),
            fault=fault,
        )
        return new_state, bound

    def finalize(self, model: Model, state: SVIState, data: PyTree) -> Result:
        """The fit's Result: the final ELBO on all the data, its standard error, the exact evidence and gap."""
        kind = self._kind(model)
        global_psi, local_psi = _split_psi(kind, state.guide_params)
        surrogate_key = jax.random.fold_in(state.key, 1)
        _, elbo, stderr, _ = self._objective(model, state.params, global_psi, local_psi, data, surrogate_key, 1.0,
                                             self.num_eval_particles)
        elbo = elbo.astype(state.trace.dtype)
        if kind == "summed":  # the objective is log p(D) itself
            log_evidence = elbo
        elif kind != "global" and _has_exact_posterior(model.latent):
            post = exact.posterior(model.log_joint, model.latent, state.params, data)
            log_evidence = (jnp.sum(post.log_evidence) + model.total_log_prior(state.params)).astype(elbo.dtype)
        else:
            log_evidence = jnp.array(jnp.nan, elbo.dtype)
        trace = jnp.where(jnp.arange(self.num_steps) < state.n_iter, state.trace, elbo)
        diagnostics = SVIDiagnostics(stderr.astype(elbo.dtype), log_evidence, log_evidence - elbo, state.fault,
                                     elbo[None], state.key, (state.opt_state, state.local_opt_state))
        return Result(state.params, elbo, trace, state.n_iter, state.converged, diagnostics, model, self,
                      guide_params=state.guide_params)

    def elbo(self, result: Result, data: PyTree, *, key: jax.Array, num_particles: int = 1000
             ) -> tuple[jax.Array, jax.Array]:
        """``(ELBO, standard error)`` of a fit's q on ``data`` (+ log p(θ)), with ``num_particles`` draws.

        For a global latent ``data`` may be new (a held-out bound); for local latents it must be
        the data the fit's q_i belong to. Compiles on every call; for evaluation, not for loops.
        """
        model, kind = result.model, self._kind(result.model)
        _check_positive_int("num_particles", num_particles)
        if kind in ("local", "categorical"):
            rows = jax.tree_util.tree_leaves(result.guide_params)[0].shape[0]
            if rows != _num(data):
                raise ValueError(f"data: the fit has one q per datum for {rows} data, got {_num(data)} data")

        @jax.jit
        def evaluate(params, guide_params, data, key):
            _, bound, stderr, _ = self._objective(model, params, *_split_psi(kind, guide_params), data, key, 1.0,
                                                  num_particles)
            return bound, stderr

        return evaluate(result.params, result.guide_params, data, key)

    def diagnose(self, result: Result, data: PyTree) -> Fault:
        """A non-finite objective's fault, completed with the term and the datum it came from.

        Replays the faulty step: the result holds that step's parameters and key. ``infer`` calls
        this before it raises; the fault in a result from a traced ``infer`` lacks the two.
        """
        model, fault = result.model, result.diagnostics.fault
        kind, n = self._kind(model), _num(data)

        @jax.jit
        def replay(params, guide_params, data, key):
            _, batch_key, particle_key = jax.random.split(key, 3)  # as step splits it
            _, index, batch, global_psi, batch_psi = self._batch(kind, data, guide_params, batch_key)
            _, bound, _, parts = self._objective(model, params, global_psi, batch_psi, batch, particle_key,
                                                 n / index.shape[0], self.num_particles)
            return _fault(fault.iteration, bound, parts, index, jnp.ones(1, bool))

        return replay(result.params, result.guide_params, data, result.diagnostics.fault_key)

    def posterior(self, result: Result, data: PyTree | None = None):
        """The fitted q: a ``FittedGuide`` (sample, log_prob, mean, stddev in the latent's own space),
        or, for a latent that was summed out, its exact posterior on ``data``."""
        model = result.model
        kind = self._kind(model)
        if kind == "summed":
            if data is None:
                raise ValueError("data: the latent was summed out exactly; pass the data to get its posterior")
            return exact.posterior(model.log_joint, model.latent, result.params, data)
        if kind == "categorical":
            space = latent_values(model.latent)
        else:
            space = latent_space(model.latent.latent if kind == "global" else model.latent)
        return FittedGuide(self._guide(model), space, result.guide_params, kind == "global")

    def describe(self, states: SVIState, n: int) -> str:
        """The progress bar's text: the smoothed ELBO per datum."""
        return f"ELBO/N={float(np.max(np.asarray(states.smoothed))) / n:.5g}"

    # --- the objective ------------------------------------------------------------------------------

    def _optimizer(self) -> optax.GradientTransformation:
        return optax.adam(1e-2) if self.optimizer is None else self.optimizer

    def _batch(self, kind: str, data: PyTree, guide_params: PyTree, batch_key: jax.Array):
        """``(full, index, batch, global ψ, the batch's local ψ)`` of a step: all data, or a minibatch
        drawn with ``batch_key``."""
        n = _num(data)
        global_psi, local_psi = _split_psi(kind, guide_params)
        if self.batch_size is None or self.batch_size == n:
            return True, jnp.arange(n), data, global_psi, local_psi
        index = minibatch(batch_key, n, self.batch_size)
        return False, index, _take(data, index), global_psi, None if local_psi is None else _take(local_psi, index)

    def _objective(self, model: Model, params, global_psi, batch_psi, batch, key, scale, num_particles):
        """``(surrogate, bound, stderr, parts)`` on a batch, scaled to N data, + log p(θ).

        ``stderr`` is the bound's Monte-Carlo standard error; ``parts`` holds the finite-ness of
        every term, for fault reports. (Unused outputs cost nothing: XLA drops them.)"""
        kind, estimator, guide = self._kind(model), self._estimator(model), self._guide(model)
        log_prior = model.total_log_prior(params)
        if kind == "summed":
            per_datum = exact.posterior(model.log_joint, model.latent, params, batch).log_evidence
            total = scale * jnp.sum(per_datum) + log_prior
            parts = _parts(per_datum, None, None, log_prior)
            return total, total, jnp.zeros((), total.dtype), parts
        if kind == "global":
            space = latent_space(model.latent.latent)

            def log_joint_at(u):
                z, log_det = space.constrain(u)
                log_lik = jax.vmap(lambda x: model.log_joint(params, z, x))(batch)
                latent_prior = model.latent.log_prior(params, z)
                return latent_prior + scale * jnp.sum(log_lik), _log_det(guide, log_det), (log_lik, latent_prior)

            terms, (log_lik, latent_prior) = particle_terms(log_joint_at, guide, global_psi, key, num_particles,
                                                            estimator)
            surrogate, bound = estimate(terms, estimator)
            weights = terms.log_joint + terms.log_det - terms.log_q
            stderr = jnp.std(weights) / math.sqrt(num_particles)
            parts = _parts(jnp.mean(log_lik, axis=0), terms.log_det, terms.log_q, log_prior + jnp.mean(latent_prior))
            return surrogate + log_prior, bound + log_prior, stderr, parts

        space = latent_values(model.latent) if kind == "categorical" else latent_space(model.latent)
        return local_objective(model, guide, space, estimator, params, batch_psi, batch, key, scale, num_particles)


def guide_elbo(model: Model, params: PyTree, data: PyTree, posterior: "FittedGuide", *, key: jax.Array,
               num_particles: int = 1000) -> tuple[jax.Array, jax.Array]:
    """``(ELBO, standard error)`` of any fitted guide on ``data`` (+ log p(θ)), with ``num_particles`` draws per latent.

    For local latents ``posterior`` holds one q per datum of ``data`` (an SVI fit on these data, an
    encoder's ``Result.posterior(data)``, a refined guide); a global one serves any data.
    """
    _check_positive_int("num_particles", num_particles)
    space, guide = posterior.space, posterior.guide

    @jax.jit
    def evaluate(params, guide_params, data, key):
        if posterior.is_global:
            method = SVI(guide=guide)
            return method._objective(model, params, guide_params, None, data, key, 1.0, num_particles)[1:3]
        return local_objective(model, guide, space, "elbo", params, guide_params, data, key, 1.0, num_particles)[1:3]

    return evaluate(params, posterior.params, data, key)


def local_objective(model: Model, guide, space, estimator: str, params, batch_psi, batch, key, scale: float,
                    num_particles: int):
    r"""The ELBO of local latents on a batch, every datum with its own q (``batch_psi``, leading datum axis).

    Returns ``(surrogate, bound, stderr, parts)`` as ``SVI._objective``: the sums over the batch scaled
    by ``scale`` (N / B), + log p(θ). ``space`` is a ``LatentSpace``, or for a ``Categorical`` guide
    the enumerated latent values. Shared by SVI and amortized inference (whose ψ_i come from an encoder).
    """
    log_prior = model.total_log_prior(params)
    keys = jax.random.split(key, jax.tree_util.tree_leaves(batch_psi)[0].shape[0])

    def one_datum(x, psi, k):
        def log_joint_at(u):
            if not isinstance(space, LatentSpace):
                z = jax.tree_util.tree_map(lambda v: v[u], space)
                return model.log_joint(params, z, x), jnp.zeros((), _float_dtype(x)), ()
            z, log_det = space.constrain(u)
            return model.log_joint(params, z, x), _log_det(guide, log_det), ()

        terms, _ = particle_terms(log_joint_at, guide, psi, k, num_particles, estimator)
        surrogate, bound = estimate(terms, estimator)
        weights = terms.log_joint + terms.log_det - terms.log_q
        return surrogate, bound, jnp.var(weights) / num_particles, terms

    surrogates, bounds, variances, terms = jax.vmap(one_datum)(batch, batch_psi, keys)
    stderr = scale * jnp.sqrt(jnp.sum(variances))
    parts = _parts(jnp.mean(terms.log_joint, axis=1), jnp.mean(terms.log_det, axis=1),
                   jnp.mean(terms.log_q, axis=1), log_prior)
    return scale * jnp.sum(surrogates) + log_prior, scale * jnp.sum(bounds) + log_prior, stderr, parts


class FittedGuide(NamedTuple):
    """The fitted variational distribution, in the latent's own (constrained) space.

    Attributes:
      guide: the guide family (static).
      space: the ``LatentSpace`` (or, for a ``Categorical`` guide, the enumerated latent values).
      params: ψ; for local latents every leaf has a leading datum axis.
      is_global: whether there is one q for all the data (else one per datum).
    """

    guide: Any
    space: Any
    params: PyTree
    is_global: bool

    def sample(self, key: jax.Array, num_samples: int = 1) -> PyTree:
        """``num_samples`` draws of z: leaves ``(num_samples, *shape)``, or ``(N, num_samples, *shape)`` for local q."""
        def draw(params, k):
            u, _ = self.guide.sample_and_log_prob(params, k, num_samples)
            return self._values(u)

        if self.is_global:
            return draw(self.params, key)
        keys = jax.random.split(key, jax.tree_util.tree_leaves(self.params)[0].shape[0])
        return jax.vmap(draw)(self.params, keys)

    def log_prob(self, z: PyTree) -> jax.Array:
        r"""The density of q at a latent value z (a pytree like the latent's; local q: leaves with a
        leading datum axis), in z's own space: :math:`\log q(u(z)) - \log|\det \partial z / \partial u|`."""
        if not isinstance(self.space, LatentSpace):
            index = self._index_of(z)
            logits = jax.nn.log_softmax(self.params["logits"], axis=-1)
            return logits[index] if self.is_global else jnp.take_along_axis(logits, index[:, None], axis=1)[:, 0]

        def one(params, z):
            u = unconstrain(self.space, z)
            return self.guide.log_prob(params, u) - self.space.constrain(u)[1]

        return one(self.params, z) if self.is_global else jax.vmap(one)(self.params, z)

    def _index_of(self, z: PyTree) -> jax.Array:
        """The index of a discrete value among the enumerated values (a pytree of Discrete values)."""
        matches = [v == jnp.asarray(leaf)[..., None] for v, leaf in
                   zip(jax.tree_util.tree_leaves(self.space), jax.tree_util.tree_leaves(z))]
        return jnp.argmax(jnp.all(jnp.stack(matches), axis=0), axis=-1)

    def mean(self, key: jax.Array | None = None, num_samples: int = 4096) -> PyTree:
        """E_q[z]: exact for a Normal guide on a latent without bijectors, else a Monte-Carlo average
        of ``num_samples`` draws (then ``key`` is required)."""
        exact_mean = self._exact("mean")
        return exact_mean if exact_mean is not None else self._monte_carlo(key, num_samples)[0]

    def stddev(self, key: jax.Array | None = None, num_samples: int = 4096) -> PyTree:
        """The standard deviation of z under q, exact or by Monte Carlo like ``mean``."""
        exact_sd = self._exact("stddev")
        return exact_sd if exact_sd is not None else self._monte_carlo(key, num_samples)[1]

    def _monte_carlo(self, key, num_samples) -> tuple[PyTree, PyTree]:
        """``(mean, standard deviation)`` of ``num_samples`` draws of z."""
        if key is None:
            raise ValueError("key: this q's moments need Monte Carlo (a bijector or a flow): pass a PRNG key")
        draws = self.sample(key, num_samples)
        axis = 0 if self.is_global else 1
        return (jax.tree_util.tree_map(lambda d: jnp.mean(d, axis=axis), draws),
                jax.tree_util.tree_map(lambda d: jnp.std(d, axis=axis), draws))

    def _exact(self, moment: str):
        """The exact mean or stddev of z where q is Normal (or a point mass) and z = u; else None."""
        if isinstance(self.space, LatentSpace) and all(b is None for b in self.space.bijectors):
            fn = getattr(self.guide, moment)
            values = fn(self.params) if self.is_global else jax.vmap(fn)(self.params)
            if values is not None:
                return self._values(values)
        return None

    def _values(self, u: jax.Array) -> PyTree:
        """Unconstrained vectors ``(..., D)`` (or value indices) as latent pytrees ``(..., *shape)``."""
        if not isinstance(self.space, LatentSpace):
            return jax.tree_util.tree_map(lambda v: v[u], self.space)
        batch = u.shape[:-1]
        flat = u.reshape((-1, u.shape[-1]))
        z = jax.vmap(lambda v: self.space.constrain(v)[0])(flat)
        return jax.tree_util.tree_map(lambda a: a.reshape(batch + a.shape[1:]), z)


jax.tree_util.register_pytree_node(
    FittedGuide,
    lambda g: ((g.params,), (g.guide, g.space, g.is_global)),
    lambda aux, children: FittedGuide(aux[0], aux[1], children[0], aux[2]))


# --- helpers ----------------------------------------------------------------------------------------

def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")


def _float_dtype(data: PyTree):
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(data), jnp.float32)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32


def _num(data: PyTree) -> int:
    return num_data(data.obs if isinstance(data, exact.Sequences) else data)


def _take(tree: PyTree, index: jax.Array) -> PyTree:
    return jax.tree_util.tree_map(lambda a: a[index], tree)


def _put(tree: PyTree, index: jax.Array, rows: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda a, r: a.at[index].set(r), tree, rows)


def _where(pred, on_true: PyTree, on_false: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _split_psi(kind: str, guide_params: PyTree) -> tuple[PyTree, PyTree]:
    """``(global ψ, per-datum ψ)``: ``guide_params`` in the place its latent's kind gives it, None in the other."""
    return (guide_params if kind == "global" else None,
            guide_params if kind in ("local", "categorical") else None)


def _log_det(guide, log_det: jax.Array) -> jax.Array:
    """A point mass fits z itself (MAP in the latent's own space): no log-Jacobian."""
    return jnp.zeros_like(log_det) if guide.point_mass else log_det


def _has_exact_posterior(latent) -> bool:
    try:
        exact_family(latent)
    except ValueError:
        return False
    return True


def _parts(per_datum, log_det, log_q, log_prior) -> dict:
    """Which terms of the objective are finite, the first datum (in the batch) whose log-joint is not."""
    finite = lambda a: jnp.array(True) if a is None else jnp.all(jnp.isfinite(a))
    per_datum_finite = jnp.isfinite(per_datum)
    return {"finite": jnp.stack([jnp.all(per_datum_finite), finite(log_det), finite(log_q), finite(log_prior)]),
            "first_bad_datum": jnp.argmin(per_datum_finite).astype(jnp.int32)}


def _no_parts() -> dict:
    """``_parts`` of an objective whose every term is finite."""
    return {"finite": jnp.ones(4, bool), "first_bad_datum": jnp.array(0, jnp.int32)}


def _fault(iteration, bound, parts, index, leaf_finite) -> Fault:
    """The first of: a non-finite objective (which term, which datum), a non-finite gradient (which leaf)."""
    bad_objective = ~jnp.isfinite(bound)
    term = jnp.where(bad_objective, jnp.argmin(parts["finite"]), -1)
    datum = jnp.where(bad_objective & (term == 0), index[parts["first_bad_datum"]], -1)
    bad_gradient = ~jnp.all(leaf_finite)
    kind = jnp.where(bad_objective, FAULT_OBJECTIVE, jnp.where(bad_gradient, FAULT_GRADIENT, NO_FAULT))
    where = jnp.where(bad_objective, datum, jnp.where(bad_gradient, jnp.argmin(leaf_finite), -1))
    return Fault(jnp.where(kind == NO_FAULT, -1, iteration).astype(jnp.int32), kind.astype(jnp.int32),
                 where.astype(jnp.int32), term.astype(jnp.int32))
