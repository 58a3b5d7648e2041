r"""Stochastic variational inference: gradient ascent on the ELBO over θ and the guides' ψ.

The bound is ``jaxvi.vi.elbo``'s, for any mix of global latents (``Global`` nodes: one q shared by
all data) and local latents (one per datum):

.. math::
    \mathcal{L}(\theta, \psi) = E_{q(z_g)}\Big[\log p_\theta(z_g) + \sum_i \ell_i(z_g) - \log q(z_g)\Big]
    + \log p(\theta) \;\le\; \log p_\theta(D) + \log p(\theta),

where :math:`\ell_i` is a local q_i's ELBO, or, for ``Discrete`` latents of up to 256 values and
``Markov`` latents (summed out exactly by default), :math:`\log p_\theta(x_i \mid z_g)` itself. A step
on a minibatch of B of the N data scales the local sum by N / B, an unbiased estimate; only the
batch's ψ_i and their optimiser states move (O(B) work, whatever N). ``discrete="guide"`` fits a
``Categorical`` q_i per datum with the score-function estimator instead, for latents with too many
values to enumerate.

Where the latent has an exact posterior (``Discrete``, ``Markov``, ``Gaussian``) and no global part,
the result also carries the exact log p(D) at the fitted θ and the gap
:math:`\sum_i KL(q_i \| p(z_i \mid x_i))` = log p(D) - ELBO.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxvi import exact
from jaxvi.data import num_data as num_rows
from jaxvi.exact.enumerate import latent_values
from jaxvi.latents import Markov, all_discrete, check_enumeration, exact_family, is_spec, split_latent
from jaxvi.methods.common import (batch_rows, check_floating, final_fault, float_dtype, leaves_finite, objective_fault,
                                 step_fault, tree_where)
from jaxvi.methods.protocol import Info
from jaxvi.methods.settings import check_count, check_number, settings
from jaxvi.model import Model, check_new_data
from jaxvi.result import NO_FAULT, Fault, Result
from jaxvi.run.compiled import compiled_outside_traces
from jaxvi.run.schedule import Never, Schedule, Smoothed
from jaxvi.vi.elbo import ELBOSpec, Enumerated, Guided, Plain, Summed, elbo
from jaxvi.vi.fitted import FittedGuide, GlobalLocal
from jaxvi.vi.guides import Categorical, Flow, MeanField, is_guide
from jaxvi.vi.objectives import STL, Reparameterized, Score, as_estimator
from jaxvi.vi.space import latent_space

__all__ = ["ENUMERATE_MAX", "SVI", "SVIDiagnostics", "SVIState", "make_optimizer"]

PyTree = Any

ENUMERATE_MAX = 256  # discrete="auto" sums a Discrete latent out up to this many values


class SVIState(NamedTuple):
    """SVI between steps.

    Attributes:
      params: θ.
      global_psi: ψ of the global latents' q (None without them).
      local_psi: the per-datum ψ_i, leaves with a leading datum axis (None without local guides).
      opt_state: the optimiser state of (θ, global ψ).
      local_opt_state: the per-datum optimiser states of the ψ_i (leading datum axis), or None.
    """

    params: PyTree
    global_psi: PyTree
    local_psi: PyTree
    opt_state: PyTree
    local_opt_state: PyTree


class SVIDiagnostics(NamedTuple):
    """What an SVI fit knows beyond its objective.

    Attributes:
      elbo_stderr: the Monte-Carlo standard error of the final bound's estimate, the estimator's own
        (``jaxvi.vi.objectives``: from the weights' spread for the ELBO, from that of log p for "analytic", by the
        delta method for IWAE, DReG, VIMCO and Rényi bounds, which understates it more as the weights' tail grows:
        on a normal model, about 0.8 of the bound's spread at ``khat`` 0.54, 0.7 at 0.6, half at 0.8).
      log_evidence: the exact log p(D | θ) (+ log p(θ)) at the fitted θ where the latent has an
        exact posterior and no global part, else NaN (``jaxvi.evidence`` estimates it).
      gap: ``log_evidence - objective``, :math:`\\sum_i KL(q_i \\| p(z_i \\mid x_i))` (NaN where unknown);
        with global latents and a local latent that has an exact posterior given them, the local part's
        gap :math:`E_{q(z_g)}[\\sum_i KL(q_i \\| p(z_i \\mid x_i, z_g))]` (the same global draws with the
        local part summed out exactly, minus the ELBO).
      fault: the first numerical fault (``kind == 0``: none).
      restart_objectives: ``(n_init,)`` final objective of every restart; the best is returned.
      opt_state: the optimiser states at the end: ``(state of (θ, global ψ), per-datum states or None)``.
      stop_reason: why the run stopped, an index into ``jaxvi.run.STOP_REASONS`` (running, tolerance,
        max_iter, fault, patience, resolution).
      khat: PSIS's Pareto k-hat (``jaxvi.psis``) of the final ELBO's ``num_eval_particles`` importance weights:
        how far q can be trusted as a proposal for the posterior (below 0.5 good, above 0.7 q misses posterior
        mass). A scalar with global latents (the joint weights), one per datum with local latents only; NaN
        under 21 particles or where nothing is sampled.
      skips: the steps ``jaxvi.infer(..., on_nonfinite="skip")`` skipped, a ``jaxvi.result.Skips`` (None
        outside ``infer``).
    """

    elbo_stderr: jax.Array
    log_evidence: jax.Array
    gap: jax.Array
    fault: Fault
    restart_objectives: jax.Array
    opt_state: PyTree
    stop_reason: jax.Array
    khat: jax.Array
    skips: Any = None


@settings("tol", "learning_rate", "estimator")
@dataclasses.dataclass(frozen=True)
class SVI:
    r"""Stochastic variational inference.

    Args:
      guide: the variational family for continuous latents: ``MeanField()`` (default), ``FullRank()``,
        ``LowRank(rank)``, ``Flow(...)``, ``Delta()`` (MAP). Ignored for latents that are summed out.
      optimizer: a factory of an optax transformation taking the learning rate (``optax.adam``, the
        default; ``optax.sgd``), or a built ``GradientTransformation``: static, compared by what it
        is (``jaxvi.equality``), so a fresh ``optax.adam(1e-2)`` reuses the compiled code of the last
        one but each new rate built in compiles anew (pass the factory and ``learning_rate``).
      num_steps: gradient steps.
      batch_size: data per step (None: all N). Each step draws a minibatch without replacement. The
        local ψ_i have one optimiser state per datum, advanced only when datum i is in the batch, so
        a learning-rate schedule counts that datum's own updates (about num_steps x B / N of them).
      num_particles: Monte-Carlo samples of the latent per datum (local) or per step (global).
      estimator: ``"elbo"`` (reparameterised, default), ``"analytic"`` (closed-form entropy),
        ``"stl"`` (sticking the landing), ``"iwae"`` (importance-weighted bound with
        ``num_particles`` samples), ``"dreg"`` (the IWAE bound with doubly reparameterised
        gradients), ``"score"`` (score function; the default for a ``Categorical`` guide),
        ``"vimco"`` (the IWAE bound with VIMCO's score-function gradient, for a ``Categorical`` guide
        or any other), ``jaxvi.Renyi(alpha)`` (the Rényi bound of order α), or another estimator
        object (``jaxvi.vi.objectives``). With global and local latents together it applies to the
        global particles: ``"elbo"`` or ``"stl"``.
      discrete: for ``Discrete`` latents, ``"enumerate"`` (sum them out exactly; ``Markov`` latents
        always are), ``"guide"`` (a ``Categorical`` q per datum, score-function gradients), or
        ``"auto"`` (default): enumerate up to ``ENUMERATE_MAX`` = 256 values, a guide beyond.
      tol: stop when the smoothed ELBO changes by less than ``tol`` per datum over ``window``
        steps; None (default) runs all ``num_steps``. Traced: a new value does not recompile.
      window: steps between convergence checks, and the averaging length of the smoothed ELBO.
      num_eval_particles: particles for the final ELBO estimate and its standard error.
      n_init: restarts from ``jax.random.split(key, n_init)``, vmapped in one call; the best final
        ELBO is kept.
      learning_rate: the learning rate given to a factory ``optimizer`` (default 1e-2). Traced: a new
        value does not recompile, and ``jax.vmap`` over it fits many learning rates in one call.
      local_guide: the family of the per-datum q_i when the model also has global latents (default:
        ``guide``).
      local_optimizer: the optimiser of the per-datum ψ_i (default: ``optimizer``), given like it. Each
        ψ_i's state advances only when datum i is in the batch, so a schedule written for num_steps
        reaches only B / N of its course for them: give them one written for their own num_steps x B / N.

    Example:
      >>> result = jaxvi.infer(model, jaxvi.SVI(num_steps=2000, batch_size=256), data, key=jax.random.key(0))
      >>> result.objective, result.posterior().mean()
    """

    guide: Any = MeanField()
    optimizer: Any = None
    num_steps: int = 1000
    batch_size: int | None = None
    num_particles: int = 1
    estimator: Any = "elbo"
    discrete: str = "auto"
    tol: float | None = None
    window: int = 100
    num_eval_particles: int = 100
    n_init: int = 1
    learning_rate: float | None = None
    local_guide: Any = None
    local_optimizer: Any = None

    reports = "ELBO"
    per_datum = ("local_psi", "local_opt_state")

    def __post_init__(self):
        for name in ("num_steps", "num_particles", "window", "num_eval_particles", "n_init"):
            check_count(f"SVI({name})", getattr(self, name))
        check_count("SVI(batch_size)", self.batch_size, optional=True)
        for name in ("guide", "local_guide"):
            value = getattr(self, name)
            if not is_guide(value) and not (name == "local_guide" and value is None):
                raise ValueError(f"SVI({name}): expected a jaxvi guide such as jaxvi.MeanField(), got {value!r}")
        check_optimizer("SVI", self.optimizer, self.learning_rate)
        check_optimizer("SVI", self.local_optimizer, None)
        try:  # an estimator object: its numbers (a Renyi alpha) are traced like the learning rate
            object.__setattr__(self, "estimator", as_estimator(self.estimator))
        except ValueError as err:
            raise ValueError(f"SVI({err})") from None
        if self.discrete not in ("auto", "enumerate", "guide"):
            raise ValueError(f"SVI(discrete): expected 'auto', 'enumerate' or 'guide', got {self.discrete!r}")
        check_number("SVI(tol)", self.tol, low=0, optional=True)

    # --- what the bound is made of, and checks before compiling ------------------------------------

    def elbo_spec(self, model: Model) -> ELBOSpec:
        """The model's bound: its global and local parts and the estimator (see ``jaxvi.vi.elbo``)."""
        parts = split_latent(model.latent)
        estimator = as_estimator(self.estimator)
        local = parts.local
        if local is None:
            local_term = Plain()
        elif isinstance(local, Markov) or all_discrete(local):
            if self._enumerates(local):
                local_term = Summed(local)
            else:
                local_estimator = estimator if estimator.name == "vimco" else Score()
                local_term = Guided(Categorical(), Enumerated(local), local_estimator)
                estimator = local_estimator if not parts.globals else estimator
        else:
            local_estimator = estimator if not parts.globals else (STL() if isinstance(estimator, STL)
                                                                   else Reparameterized())
            guide = self.guide if not parts.globals or self.local_guide is None else self.local_guide
            local_term = Guided(guide, latent_space(local), local_estimator)
        if not parts.globals:
            return ELBOSpec(parts, None, None, local_term, estimator)
        return ELBOSpec(parts, self.guide, latent_space(parts.global_latent), local_term, estimator)

    def _enumerates(self, local) -> bool:
        if isinstance(local, Markov):
            return True
        size = math.prod(leaf.K for leaf in jax.tree_util.tree_leaves(local, is_leaf=is_spec))
        return self.discrete == "enumerate" or (self.discrete == "auto" and size <= ENUMERATE_MAX)

    def check(self, model: Model, data: PyTree = None) -> None:
        """Raises ValueError for a model (or data) this SVI cannot fit, before anything compiles."""
        spec = self.elbo_spec(model)
        estimator, local = as_estimator(self.estimator), spec.local
        guided = [g for g in (spec.global_guide, getattr(local, "guide", None)) if g is not None]
        space_dims = [s.dim for s in (spec.global_space, getattr(local, "space", None)) if hasattr(s, "dim")]
        if isinstance(local, Guided) and isinstance(local.guide, Categorical):
            if estimator.name not in ("elbo", "score", "vimco"):
                raise ValueError(f"SVI(estimator={estimator.name!r}): a Categorical guide (discrete='guide', or 'auto' "
                                 f"with more than {ENUMERATE_MAX} latent values) has no reparameterised gradient; use "
                                 f"'score' (the default) or 'vimco'")
            if self.num_particles < 2:
                raise ValueError("SVI(num_particles): a Categorical guide (discrete='guide', or 'auto' with more than "
                                 f"{ENUMERATE_MAX} latent values) uses the score-function estimator, whose baseline "
                                 "needs num_particles >= 2")
            if spec.global_guide is not None:
                raise ValueError("SVI(discrete): a Categorical q_i beside Global latents is not supported; sum the "
                                 "local latent out with discrete='enumerate'")
            guided = [g for g in guided if g is not local.guide]
        if isinstance(local, Summed) and spec.global_guide is None and estimator.name != "elbo":
            raise ValueError(f"SVI(estimator={estimator.name!r}): the latent is summed out exactly, so the "
                             f"objective is log p(D) itself; leave estimator='elbo'")
        if spec.global_guide is not None and not isinstance(local, Plain) and estimator.name not in ("elbo", "stl"):
            raise ValueError(f"SVI(estimator={estimator.name!r}): with Global and local latents together the "
                             f"estimator applies to the global particles; use 'elbo' or 'stl'")
        if guided or space_dims:
            if estimator.needs_entropy and not all(g.has_entropy for g in guided):
                raise ValueError(f"SVI(estimator='analytic'): {type(guided[0]).__name__} has no closed-form entropy; "
                                 f"use estimator='elbo' or 'stl'")
            if estimator.score and self.num_particles < 2:
                raise ValueError("SVI(num_particles): the score-function estimator's baseline needs num_particles >= 2")
            if estimator.needs_path and any(g.point_mass or not g.reparameterized for g in guided):
                raise ValueError(f"SVI(estimator='dreg'): {type(guided[0]).__name__} has no reparameterised "
                                 f"draws; use 'iwae'")
            for guide, dim in zip(guided, space_dims):
                if isinstance(guide, Flow) and dim < 2:
                    raise ValueError(f"SVI(guide=Flow()): a coupling flow needs a latent of at least 2 values, got {dim}")
        if data is not None and self.batch_size is not None and self.batch_size > num_rows(data):
            raise ValueError(f"SVI(batch_size): expected at most the number of data, {num_rows(data)}, "
                             f"got {self.batch_size}")
        if data is not None:
            self._check_enumeration(spec, num_rows(data))

    def _check_enumeration(self, spec: ELBOSpec, n: int) -> None:
        """Raises ValueError when a discrete local latent's table (summed out, or a Categorical q_i) would
        not fit: N data (the final bound covers them all) x M values x the draws held at once."""
        local, draws = spec.local, max(self.num_particles, self.num_eval_particles)
        if isinstance(local, Summed) and not isinstance(local.latent, Markov):
            with_globals = spec.global_guide is not None  # every global draw sums the local latent out again
            check_enumeration(local.latent, n, f"SVI summing it out exactly (discrete='enumerate', or 'auto' up to "
                              f"{ENUMERATE_MAX} values{', for every global draw' if with_globals else ''})",
                              draws=draws if with_globals else 1)
        elif isinstance(local, Guided) and isinstance(local.guide, Categorical):
            check_enumeration(local.space.latent, n, f"SVI's Categorical q_i (discrete='guide', or 'auto' beyond "
                              f"{ENUMERATE_MAX} values; each draw samples over all the values)", draws=draws)

    def schedule(self, num_data: int) -> Schedule:
        """``num_steps`` steps on minibatches of ``batch_size`` (or all the data), stopping on the
        smoothed ELBO when ``tol`` is set."""
        stopping = Never() if self.tol is None else Smoothed(self.tol, min(self.window, self.num_steps))
        return Schedule(self.num_steps, batch_size=self.batch_size, stopping=stopping)

    # --- the algorithm ------------------------------------------------------------------------------

    @compiled_outside_traces
    def init(self, model: Model, key: jax.Array, data: PyTree, params: PyTree | None = None) -> SVIState:
        """θ from ``model.init`` (or ``params``), ψ from the guides, the optimiser states."""
        model_key, global_key, local_key = jax.random.split(key, 3)
        given, params = params is not None, model.init(model_key, data) if params is None else params
        check_floating(params, given, "SVI")
        params = jax.tree_util.tree_map(lambda a: lax.convert_element_type(a, jnp.result_type(a)), params)
        spec, dtype, optimizer = self.elbo_spec(model), float_dtype(data), self._optimizer()
        global_psi = None if spec.global_guide is None else spec.global_guide.init(global_key, spec.global_space.dim,
                                                                                     dtype)
        local_psi = local_opt_state = None
        if isinstance(spec.local, Guided):
            dim = spec.local.space.dim
            local_psi = jax.vmap(lambda k: spec.local.guide.init(k, dim, dtype))(
                jax.random.split(local_key, num_rows(data)))
            local_opt_state = jax.vmap(self._local_optimizer().init)(local_psi)
        return SVIState(params, global_psi, local_psi, optimizer.init((params, global_psi)), local_opt_state)

    def step(self, model: Model, key: jax.Array, state: SVIState, batch: PyTree, *, num_data
             ) -> tuple[SVIState, Info]:
        """One gradient step on ``batch``: all the data, or a minibatch of the N = ``num_data`` (a
        ``jaxvi.Batch`` when there are per-datum ψ_i; a plain pytree of rows otherwise). Sums over
        the batch are scaled by N / B. A faulty step returns ``state``."""
        spec = self.elbo_spec(model)
        kept = None if state.local_psi is None else _rows_of(state.local_psi)
        index, rows = batch_rows(batch, num_data, kept)
        scale = num_data / num_rows(rows)
        psi_rows = _gather(state.local_psi, index)

        def objective(params, global_psi, psi_rows):
            bound = elbo(spec, model, params, global_psi, psi_rows, rows, key, scale, self.num_particles)
            return bound.surrogate, bound.bound

        (_, bound), grads = jax.value_and_grad(objective, argnums=(0, 1, 2), has_aux=True)(
            state.params, state.global_psi, psi_rows)
        grads = jax.tree_util.tree_map(jnp.negative, grads)  # optax minimises
        updates, opt_state = self._optimizer().update(grads[:2], state.opt_state, (state.params, state.global_psi))
        params, global_psi = optax.apply_updates((state.params, state.global_psi), updates)
        new_rows = opt_rows = new_opt_rows = None
        if state.local_psi is not None:
            opt_rows = _gather(state.local_opt_state, index)
            row_updates, new_opt_rows = jax.vmap(self._local_optimizer().update)(grads[2], opt_rows, psi_rows)
            new_rows = optax.apply_updates(psi_rows, row_updates)
        # leaves in the order of (params, guide_params)
        fault = step_fault(bound, leaves_finite(grads), leaves_finite((params, global_psi, new_rows)))
        ok = fault.kind == NO_FAULT
        params, global_psi, opt_state = tree_where(ok, (params, global_psi, opt_state),
                                                   (state.params, state.global_psi, state.opt_state))
        local_psi, local_opt_state = state.local_psi, state.local_opt_state
        if state.local_psi is not None:
            new_rows, new_opt_rows = tree_where(ok, (new_rows, new_opt_rows), (psi_rows, opt_rows))
            local_psi = _scatter(state.local_psi, index, new_rows)
            local_opt_state = _scatter(state.local_opt_state, index, new_opt_rows)
        return SVIState(params, global_psi, local_psi, opt_state, local_opt_state), Info(bound, fault)

    @compiled_outside_traces
    def finalize(self, model: Model, key: jax.Array, state: SVIState, data: PyTree) -> Result:
        """The final ELBO on all the data and its standard error; the exact evidence and gap where
        the latent has an exact posterior and no global part. A non-finite ELBO (which term, which
        datum) or parameter leaf is the result's ``diagnostics.fault`` (kind 6 or 7)."""
        spec = self.elbo_spec(model)
        bound = elbo(spec, model, state.params, state.global_psi, state.local_psi, data, key, 1.0,
                     self.num_eval_particles)
        value = bound.bound.astype(float_dtype(data))
        nan = jnp.array(jnp.nan, value.dtype)
        gap = None
        if spec.global_guide is not None:
            log_evidence = nan
            if isinstance(spec.local, Guided) and _has_exact_posterior(spec.parts.local):
                # the same global draws with the local part summed out exactly: the difference is the local gap
                summed = elbo(spec._replace(local=Summed(spec.parts.local)), model, state.params, state.global_psi,
                              None, data, key, 1.0, self.num_eval_particles)
                gap = summed.bound.astype(value.dtype) - value
        elif isinstance(spec.local, Summed):  # the objective is log p(D) itself
            log_evidence = value
        elif _has_exact_posterior(model.latent):
            post = exact.posterior(model.log_joint, model.latent, state.params, data)
            log_evidence = (jnp.sum(post.log_evidence) + model.total_log_prior(state.params)).astype(value.dtype)
        else:
            log_evidence = nan
        gap = log_evidence - value if gap is None else gap
        guide_params = _guide_params(state.global_psi, state.local_psi)
        where = objective_fault(bound)
        fault = final_fault(value, state.params, guide_params, where.index, where.term)
        diagnostics = SVIDiagnostics(bound.stderr.astype(value.dtype), log_evidence, gap, fault,
                                     value[None], (state.opt_state, state.local_opt_state), jnp.array(0, jnp.int32),
                                     bound.khat.astype(value.dtype))
        return Result(state.params, value, value[None], jnp.array(0, jnp.int32), jnp.array(False), diagnostics, model,
                      self, guide_params=guide_params)

    def explain(self, model: Model, key: jax.Array, state: SVIState, batch: PyTree, *, num_data) -> Fault:
        """A non-finite step's fault, with the term and the datum it came from (the step replayed)."""
        spec = self.elbo_spec(model)
        index, rows = batch_rows(batch, num_data, None if state.local_psi is None else _rows_of(state.local_psi))
        bound = elbo(spec, model, state.params, state.global_psi, _gather(state.local_psi, index), rows, key,
                     num_data / num_rows(rows), self.num_particles)
        return objective_fault(bound, index)

    # --- using a fit --------------------------------------------------------------------------------

    def posterior(self, result: Result, data: PyTree | None = None):
        """The fitted q: a ``FittedGuide`` (sample, log_prob, mean, stddev in the latent's own space);
        for a latent summed out exactly, its exact posterior on ``data``; with global and local
        latents, a ``GlobalLocal`` of the two (a summed-out local part conditioned on the global q's mean)."""
        model, spec = result.model, self.elbo_spec(result.model)
        global_psi, local_psi = _split_guide_params(result.guide_params, spec)
        global_q = None if spec.global_guide is None else FittedGuide(spec.global_guide, spec.global_space, global_psi,
                                                                      True)
        if isinstance(spec.local, Summed):
            if data is None:
                raise ValueError("data: the local latent was summed out exactly; pass the data to get its posterior")
            if global_q is None:
                return exact.posterior(model.log_joint, model.latent, result.params, data)
            z_global = global_q.mean(jax.random.key(0))
            local_q = exact.posterior(lambda p, z, x: model.log_joint(p, spec.parts.combine(z_global, z), x),
                                      spec.local.latent, result.params, data)
        elif isinstance(spec.local, Guided):
            if data is not None:
                _check_fitted_rows(local_psi, data, "pass those or none")
            space = spec.local.space
            space = latent_values(space.latent) if isinstance(space, Enumerated) else space
            local_q = FittedGuide(spec.local.guide, space, local_psi, False)
        else:
            return global_q
        return local_q if global_q is None else GlobalLocal(global_q, local_q)

    def elbo(self, result: Result, data: PyTree, *, key: jax.Array, num_particles: int = 1000
             ) -> tuple[jax.Array, jax.Array]:
        """``(ELBO, standard error)`` of a fit's q on ``data`` (+ log p(θ)), with ``num_particles`` draws: the
        method's estimator's bound (IWAE's, DReG's, VIMCO's or Rényi's for those) and its own standard error (as
        ``SVIDiagnostics.elbo_stderr``).

        For a global latent ``data`` may be new (a held-out bound); for local latents it must be
        the data the fit's q_i belong to. Compiled once per model and settings.
        """
        check_count("num_particles", num_particles)
        data = check_new_data(result.model, result.params, data)
        spec = self.elbo_spec(result.model)
        global_psi, local_psi = _split_guide_params(result.guide_params, spec)
        if local_psi is not None:
            _check_fitted_rows(local_psi, data, "pass those")
        return _evaluate(result.model, num_particles, self, result.params, global_psi, local_psi, data, key)

    def _optimizer(self) -> optax.GradientTransformation:
        return make_optimizer(self.optimizer, self.learning_rate, 1e-2)

    def _local_optimizer(self) -> optax.GradientTransformation:
        if self.local_optimizer is None:
            return self._optimizer()
        return make_optimizer(self.local_optimizer, self.learning_rate, 1e-2)


def check_optimizer(who: str, optimizer, learning_rate) -> None:
    """Raises ValueError for an optimiser setting that is neither an optax transformation nor a factory
    of one, or whose update needs more than ``(gradient, state, params)`` (a line search)."""
    expected = f"{who}(optimizer): expected an optax GradientTransformation or a factory of one such as optax.adam"
    built = optimizer
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        if not callable(optimizer):
            raise ValueError(f"{expected}, got {type(optimizer).__name__}")
        try:  # a factory builds closures only: cheap, and it shows a wrong function before anything compiles
            built = optimizer(1e-2)
        except Exception as err:
            raise ValueError(f"{expected}; calling it with a learning rate failed: {err}") from err
        if not isinstance(built, optax.GradientTransformation):
            raise ValueError(f"{expected}; called with a learning rate it returned {type(built).__name__}")
    if built is not None:
        _check_stochastic(who, built)
    if isinstance(optimizer, optax.GradientTransformation) and learning_rate is not None:
        raise ValueError(f"{who}(learning_rate): the optimizer is already built with its learning rate; pass a factory "
                         f"(optimizer=optax.adam, learning_rate=...) or no learning_rate")
    check_number(f"{who}(learning_rate)", learning_rate, low=0, low_open=True, optional=True)


def _check_stochastic(who: str, optimizer: optax.GradientTransformation) -> None:
    """Raises ValueError if ``optimizer.update(gradient, state, params)`` misses arguments a stochastic
    gradient step does not have (traced abstractly on one scalar parameter: nothing runs). A
    transformation that fails on a scalar for another reason is left to the real parameters."""
    try:
        jax.eval_shape(lambda p: optimizer.update(p, optimizer.init(p), p), jnp.zeros(()))
    except TypeError as err:
        if "missing" not in str(err) or "required" not in str(err):
            return
        raise ValueError(
            f"{who}(optimizer): expected an optax transformation a gradient step calls as update(gradient, state, "
            f"params), but this one needs more ({err}). Line searches such as optax.lbfgs() need the exact value of "
            f"the objective and a value_fn, which a Monte-Carlo ELBO is not; use optax.adam, optax.sgd or the like "
            f"(EM(m_step_optimizer=optax.lbfgs()) is where L-BFGS fits)") from None
    except Exception:  # noqa: BLE001 - the probe cannot tell; the real parameters will
        return


def make_optimizer(optimizer, learning_rate, default_rate: float) -> optax.GradientTransformation:
    """The optax transformation of an optimiser setting: as given, or a factory (default ``optax.adam``)
    called with the (traced) learning rate."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    factory = optax.adam if optimizer is None else optimizer
    return factory(default_rate if learning_rate is None else learning_rate)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _evaluate(model, num_particles, method, params, global_psi, local_psi, data, key):
    """``SVI.elbo``'s bound, compiled once per model, particle count and method structure."""
    bound = elbo(method.elbo_spec(model), model, params, global_psi, local_psi, data, key, 1.0, num_particles)
    return bound.bound, bound.stderr


def _has_exact_posterior(latent) -> bool:
    try:
        exact_family(latent)
    except ValueError:
        return False
    return True


def _guide_params(global_psi, local_psi):
    if global_psi is not None and local_psi is not None:
        return GlobalLocal(global_psi, local_psi)
    return global_psi if global_psi is not None else local_psi


def _split_guide_params(guide_params, spec: ELBOSpec):
    """``(global ψ, local ψ)`` of a result's ``guide_params``."""
    has_global, has_local = spec.global_guide is not None, isinstance(spec.local, Guided)
    if has_global and has_local:
        return guide_params.global_, guide_params.local
    return (guide_params if has_global else None), (guide_params if has_local else None)


def _check_fitted_rows(local_psi, data, remedy: str) -> None:
    """Raises ValueError (ending in ``remedy``) unless ``data`` has as many rows as the fit's per-datum guides: its q_i
    belong to the data it was fitted to."""
    if num_rows(data) != _rows_of(local_psi):
        raise ValueError(f"data: the fit has one q per datum for the {_rows_of(local_psi)} data it was fitted to; "
                         f"{remedy}, got {num_rows(data)} data")


def _rows_of(tree) -> int:
    return jax.tree_util.tree_leaves(tree)[0].shape[0]


def _gather(tree, index):
    """Rows ``index`` of per-datum leaves (all of them for ``index`` None); out of range: NaN, never clamped."""
    if tree is None or index is None:
        return tree
    return jax.tree_util.tree_map(lambda a: a.at[index].get(mode="fill"), tree)


def _scatter(tree, index, rows):
    """``tree`` with rows ``index`` replaced (out-of-range rows dropped); ``rows`` itself for ``index`` None."""
    if index is None:
        return rows
    return jax.tree_util.tree_map(lambda a, r: a.at[index].set(r, mode="drop"), tree, rows)
