r"""Amortized variational inference: an encoder network maps each datum to its q(z | x).

With encoder parameters φ and decoder (model) parameters θ, the objective on N data is

.. math::
    \mathcal{L}(\theta, \phi) = \sum_i E_{q_\phi(u \mid x_i)}[\log p_\theta(x_i, z(u)) + \log|J(u)| - \log q_\phi(u \mid x_i)]
    + \log p(\theta),

maximised jointly over θ and φ by stochastic gradients on shuffled minibatches (the VAE of Kingma
& Welling 2014; with ``objective="iwae"`` the importance-weighted bound of Burda et al. 2016, with
``"dreg"`` the same bound with doubly reparameterised gradients, Tucker et al. 2019). The
model's ``log_joint`` is the decoder: nothing about the model changes between SVI and amortized
inference. The encoder's output is the guide's parameters for that datum (see ``guide_size``);
a ``Flow`` guide's coupling layers are shared by all data (only its base Normal is amortized).

A held-out part of the data (``validation``) is scored after every epoch; with ``patience`` the
run stops when that held-out ELBO has not improved for ``patience`` epochs, and the parameters of
the best epoch are returned.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxvi.data import num_data as num_rows
from jaxvi.latents import split_latent
from jaxvi.methods.common import (batch_rows, check_floating, final_fault, float_dtype, leaves_finite, objective_fault,
                                 step_fault, tree_where)
from jaxvi.methods.protocol import Info
from jaxvi.methods.settings import check_count, settings
from jaxvi.methods.svi import check_optimizer, make_optimizer
from jaxvi.model import Model, check_new_data
from jaxvi.nn import Network, mlp
from jaxvi.result import NO_FAULT, Fault, Result
from jaxvi.run.compiled import compiled_outside_traces
from jaxvi.run.schedule import Schedule
from jaxvi.vi.elbo import ELBOSpec, Guided, elbo
from jaxvi.vi.fitted import FittedGuide, GlobalLocal
from jaxvi.vi.guides import Flow, FullRank, MeanField, _inverse_softplus, is_guide
from jaxvi.vi.objectives import STL, Renyi, Reparameterized, as_estimator
from jaxvi.vi.space import latent_space

__all__ = ["Amortized", "AmortizedDiagnostics", "AmortizedParams", "AmortizedState", "guide_size"]

PyTree = Any
OBJECTIVES = ("elbo", "iwae", "stl", "dreg")


class AmortizedParams(NamedTuple):
    """The variational side of an amortized fit: ``encoder`` (φ) and the guide's shared parameters
    (a ``Flow``'s coupling layers; ``{}`` for the Normal guides)."""

    encoder: PyTree
    shared: PyTree


class AmortizedState(NamedTuple):
    """An amortized fit between steps.

    Attributes:
      params: θ, the decoder (model) parameters.
      variational: the ``AmortizedParams`` (φ and the guide's shared parameters).
      global_psi: ψ of the global latents' q (None without them).
      opt_state: the optimiser state of (θ, variational, global ψ).
    """

    params: PyTree
    variational: AmortizedParams
    global_psi: PyTree
    opt_state: PyTree


class AmortizedDiagnostics(NamedTuple):
    """What an amortized fit knows beyond its objective.

    Attributes:
      elbo_stderr: the Monte-Carlo standard error of the final training ELBO (the plain ELBO's, whatever the
        ``objective``: the final evaluation is the ELBO).
      heldout_elbo: the best held-out ELBO (NaN without a validation part).
      heldout_trace: the held-out ELBO after every epoch.
      epochs: epochs completed.
      fault: the first numerical fault (``kind == 0``: none).
      restart_objectives: ``(n_init,)`` final objective of every restart.
      stop_reason: why the run stopped, an index into ``jaxvi.run.STOP_REASONS`` (running, tolerance,
        max_iter, fault, patience, resolution).
      khat: per training datum, PSIS's Pareto k-hat (``jaxvi.psis``) of the encoder's q(z | x) as a proposal,
        from the final ELBO's ``num_eval_particles`` draws (above 0.7: q misses posterior mass; NaN under 21).
      skips: the steps ``jaxvi.infer(..., on_nonfinite="skip")`` skipped, a ``jaxvi.result.Skips`` (None
        outside ``infer``).
    """

    elbo_stderr: jax.Array
    heldout_elbo: jax.Array
    heldout_trace: jax.Array
    epochs: jax.Array
    fault: Fault
    restart_objectives: jax.Array
    stop_reason: jax.Array
    khat: jax.Array
    skips: Any = None


@settings("learning_rate", "objective")
@dataclasses.dataclass(frozen=True)
class Amortized:
    r"""Amortized variational inference: an encoder q_φ(z | x) trained jointly with the model θ.

    Args:
      encoder: a ``jaxvi.nn.Network``; None means ``jaxvi.nn.mlp((256, 256))``. flax and equinox
        modules plug in through ``jaxvi.nn.from_flax`` / ``jaxvi.nn.from_equinox``.
      guide: ``MeanField()`` (a diagonal Normal, default), ``FullRank()`` or ``Flow(...)`` (a
        diagonal Normal pushed through coupling layers shared by all data).
      optimizer: a factory of an optax transformation taking the learning rate (default
        ``optax.adam``), or a built transformation: static, compared by what it is, as ``SVI``'s.
      num_steps: gradient steps; or
      num_epochs: passes over the training data (one of the two).
      batch_size: data per step; each epoch visits the training data in a new random order.
      num_particles: samples of z per datum (for ``"iwae"``, its k).
      objective: ``"elbo"``, ``"iwae"``, ``"stl"``, ``"dreg"`` (the IWAE bound with doubly
        reparameterised gradients: lower-variance encoder gradients) or ``jaxvi.Renyi(alpha)`` (the Rényi
        bound of order α); see ``jaxvi.vi.objectives``.
      validation: the fraction of the data held out (a random subset, fixed by the key) and scored
        after every epoch; 0 trains on everything.
      patience: stop after this many epochs without a better held-out ELBO and return the best
        epoch's parameters; None never stops early.
      num_eval_particles: particles per datum for the final training ELBO (``Amortized.elbo`` and
        ``jaxvi.evidence`` evaluate with more).
      n_init: restarts, vmapped; the best final ELBO is kept.
      learning_rate: the learning rate of a factory ``optimizer`` (default 1e-3); traced.
      global_guide: the q of ``Global`` latents (a Bayesian decoder, a shared scale), default ``MeanField()``.

    Example:
      >>> vae = jaxvi.models.vae(latent_dim=8, decoder=jaxvi.nn.mlp((256, 256)), data_dim=64)
      >>> result = jaxvi.infer(vae.model, jaxvi.Amortized(num_epochs=50, batch_size=128), x, key=jax.random.key(0))
      >>> q = result.posterior(x_new)                      # q(z | x) for new data
    """

    encoder: Network | None = None
    guide: Any = MeanField()
    optimizer: Any = None
    num_steps: int | None = None
    num_epochs: int | None = None
    batch_size: int = 128
    num_particles: int = 1
    objective: Any = "elbo"
    validation: float = 0.1
    patience: int | None = None
    num_eval_particles: int = 10
    n_init: int = 1
    learning_rate: float | None = None
    global_guide: Any = MeanField()

    reports = "ELBO"
    per_datum = ()

    def __post_init__(self):
        if (self.num_steps is None) == (self.num_epochs is None):
            raise ValueError(f"Amortized: expected exactly one of num_steps and num_epochs, got num_steps="
                             f"{self.num_steps!r}, num_epochs={self.num_epochs!r}")
        for name in ("num_steps", "num_epochs", "patience"):
            check_count(f"Amortized({name})", getattr(self, name), optional=True)
        for name in ("batch_size", "num_particles", "num_eval_particles", "n_init"):
            check_count(f"Amortized({name})", getattr(self, name))
        if self.encoder is not None and not isinstance(self.encoder, Network):
            raise ValueError(f"Amortized(encoder): expected a jaxvi.nn.Network (e.g. jaxvi.nn.mlp(), "
                             f"jaxvi.nn.from_flax(module)), got {type(self.encoder).__name__}")
        if not isinstance(self.guide, (MeanField, FullRank, Flow)):
            raise ValueError(f"Amortized(guide): expected MeanField(), FullRank() or Flow(...), got {self.guide!r}")
        if not is_guide(self.global_guide):
            raise ValueError(f"Amortized(global_guide): expected a jaxvi guide, got {self.global_guide!r}")
        check_optimizer("Amortized", self.optimizer, self.learning_rate)
        named = isinstance(self.objective, str) and self.objective in OBJECTIVES
        if not (named or isinstance(self.objective, Renyi) or getattr(self.objective, "name", None) in OBJECTIVES):
            raise ValueError(f"Amortized(objective): expected one of {OBJECTIVES} or jaxvi.Renyi(alpha), got "
                             f"{self.objective!r}")
        object.__setattr__(self, "objective", as_estimator(self.objective))  # its numbers traced (a Renyi alpha)
        fraction = isinstance(self.validation, (int, float, np.integer, np.floating))
        if isinstance(self.validation, bool) or not fraction or not 0 <= self.validation < 1:
            raise ValueError(f"Amortized(validation): expected a fraction in [0, 1), got {self.validation!r}")
        if self.patience is not None and self.validation == 0:
            raise ValueError("Amortized(patience): early stopping needs held-out data; set validation > 0")

    # --- sizes and the run ---------------------------------------------------------------------------

    def _split(self, n: int) -> tuple[int, int]:
        """``(training data, held-out data)`` counts."""
        n_valid = int(round(self.validation * n))
        if n - n_valid < 1:
            raise ValueError(f"Amortized(validation): {self.validation} of {n} data leaves nothing to train on")
        return n - n_valid, n_valid

    def schedule(self, num_data: int) -> Schedule:
        """Shuffled epochs over the training data, the held-out part scored after each; ``patience``."""
        n_train, n_valid = self._split(num_data)
        per_epoch = max(1, n_train // self.batch_size)
        steps = self.num_steps if self.num_steps is not None else self.num_epochs * per_epoch
        return Schedule(steps, batch_size=self.batch_size, epochs=True, num_heldout=n_valid, patience=self.patience)

    # --- checks --------------------------------------------------------------------------------------

    def check(self, model: Model, data: PyTree = None) -> None:
        """Raises ValueError unless the model has a local continuous latent an encoder can amortize."""
        parts = split_latent(model.latent)
        if parts.local is None:
            raise ValueError("latent: amortized inference needs a latent per datum (Real or Gaussian specs); a "
                             "model with Global latents only is fitted with jaxvi.SVI")
        space = latent_space(parts.local)  # raises for discrete latents
        if isinstance(self.guide, Flow) and space.dim < 2:
            raise ValueError(f"Amortized(guide=Flow()): a coupling flow needs at least 2 latent values, got {space.dim}")
        if data is not None:
            n_train, _ = self._split(num_rows(data))
            if self.batch_size > n_train:
                raise ValueError(f"Amortized(batch_size): expected at most the {n_train} training data, got "
                                 f"{self.batch_size}")

    def elbo_spec(self, model: Model, objective: str | None = None) -> ELBOSpec:
        """The bound: local q_i from the encoder (``guide``), a global q where the model has ``Global`` latents."""
        parts = split_latent(model.latent)
        estimator = as_estimator(objective or self.objective)
        if parts.globals:
            local = Guided(self.guide, latent_space(parts.local), STL() if estimator.name == "stl" else Reparameterized())
            return ELBOSpec(parts, self.global_guide, latent_space(parts.global_latent), local, estimator)
        return ELBOSpec(parts, None, None, Guided(self.guide, latent_space(parts.local), estimator), estimator)

    # --- the algorithm -------------------------------------------------------------------------------

    @compiled_outside_traces
    def init(self, model: Model, key: jax.Array, data: PyTree, params: PyTree | None = None) -> AmortizedState:
        """θ from ``model.init``, φ from the encoder, a global ψ where there are global latents."""
        model_key, encoder_key, shared_key, global_key = jax.random.split(key, 4)
        given, params = params is not None, model.init(model_key, data) if params is None else params
        check_floating(params, given, "Amortized")
        params = jax.tree_util.tree_map(lambda a: lax.convert_element_type(a, jnp.result_type(a)), params)
        spec, dtype = self.elbo_spec(model), float_dtype(data)
        dim = spec.local.space.dim
        example = jax.tree_util.tree_map(lambda a: a[0], data)
        encoder_params = self._encoder().init(encoder_key, example, guide_size(self.guide, dim))
        variational = AmortizedParams(encoder_params, _shared_init(self.guide, shared_key, dim, dtype))
        global_psi = None if spec.global_guide is None else spec.global_guide.init(global_key, spec.global_space.dim,
                                                                                     dtype)
        return AmortizedState(params, variational, global_psi, self._optimizer().init((params, variational, global_psi)))

    def step(self, model: Model, key: jax.Array, state: AmortizedState, batch: PyTree, *, num_data
             ) -> tuple[AmortizedState, Info]:
        """One gradient step of (θ, φ, global ψ) on a minibatch (rows, or a ``jaxvi.Batch``) of the N =
        ``num_data`` training data. A faulty step returns ``state``."""
        _, rows = batch_rows(batch, num_data, None)
        scale = num_data / num_rows(rows)

        def objective(trainable):
            bound = self._step_bound(model, key, AmortizedState(*trainable, None), rows, scale)
            return bound.surrogate, bound.bound

        trainable = (state.params, state.variational, state.global_psi)
        (_, bound), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
        grads = jax.tree_util.tree_map(jnp.negative, grads)
        updates, opt_state = self._optimizer().update(grads, state.opt_state, trainable)
        moved = optax.apply_updates(trainable, updates)
        fault = step_fault(bound, leaves_finite(_fit_tree(*grads)), leaves_finite(_fit_tree(*moved)))
        return tree_where(fault.kind == NO_FAULT, AmortizedState(*moved, opt_state), state), Info(bound, fault)

    def explain(self, model: Model, key: jax.Array, state: AmortizedState, batch: PyTree, *, num_data) -> Fault:
        """A non-finite step's fault, with the term and the datum it came from (the step replayed)."""
        index, rows = batch_rows(batch, num_data, None)
        return objective_fault(self._step_bound(model, key, state, rows, num_data / num_rows(rows)), index)

    def evaluate(self, model: Model, key: jax.Array, state: AmortizedState, data: PyTree) -> jax.Array:
        """The ELBO of held-out ``data`` (``num_particles`` per datum; the plain ELBO)."""
        return self._bound(model, state, data, key, self.num_particles, "elbo").bound

    @compiled_outside_traces
    def finalize(self, model: Model, key: jax.Array, state: AmortizedState, data: PyTree) -> Result:
        """The ELBO of ``data`` (the training data, in a run) with ``num_eval_particles`` per datum. A
        non-finite ELBO (which term, which datum) or parameter leaf is the result's ``diagnostics.fault``."""
        bound = self._bound(model, state, data, key, self.num_eval_particles, "elbo")
        value = bound.bound.astype(float_dtype(data))
        nan = jnp.array(jnp.nan, value.dtype)
        params, guide_params = _fit_tree(state.params, state.variational, state.global_psi)
        where = objective_fault(bound)
        diagnostics = AmortizedDiagnostics(bound.stderr.astype(value.dtype), nan, nan[None], jnp.array(0, jnp.int32),
                                           final_fault(value, params, guide_params, where.index, where.term),
                                           value[None], jnp.array(0, jnp.int32), bound.khat.astype(value.dtype))
        return Result(state.params, value, value[None], jnp.array(0, jnp.int32), jnp.array(False), diagnostics, model,
                      self, guide_params=guide_params)

    # --- using a fit ---------------------------------------------------------------------------------

    def posterior(self, result: Result, data: PyTree | None = None):
        """q(z | x) of every datum of ``data`` (new data welcome): the encoder's guides, a ``FittedGuide``
        (with ``Global`` latents, a ``GlobalLocal`` with their q)."""
        if data is None:
            raise ValueError("data: expected the data whose q(z | x) to compute, got None")
        spec = self.elbo_spec(result.model)
        variational, global_psi = _split(result.guide_params)
        local = FittedGuide(self.guide, spec.local.space, self._encode(variational, data, spec.local.space.dim), False)
        if global_psi is None:
            return local
        return GlobalLocal(FittedGuide(spec.global_guide, spec.global_space, global_psi, True), local)

    def elbo(self, result: Result, data: PyTree, *, key: jax.Array, num_particles: int = 1000
             ) -> tuple[jax.Array, jax.Array]:
        """``(ELBO, standard error)`` of the fit on ``data`` (new data welcome), + log p(θ), with
        ``num_particles`` draws per datum; ``objective="iwae"`` is not applied (the plain ELBO)."""
        check_count("num_particles", num_particles)
        data = check_new_data(result.model, result.params, data)
        variational, global_psi = _split(result.guide_params)
        state = AmortizedState(result.params, variational, global_psi, None)
        return _evaluate(result.model, num_particles, self, state, data, key)

    def refine(self, result: Result, data: PyTree, *, key: jax.Array, num_steps: int = 100,
               optimizer: optax.GradientTransformation | None = None, num_particles: int = 4) -> FittedGuide:
        r"""Semi-amortized inference: per-datum SVI steps on ψ_i, starting from the encoder's output,
        with θ fixed. Closes part of the amortization gap (the ELBO lost because one encoder serves
        every datum). Returns the refined q_i as a ``FittedGuide`` (``jaxvi.evidence(..., posterior=)``
        and ``SVI``-style evaluation accept it). Models without ``Global`` latents.

        Args:
          num_steps: optimiser steps per datum (all data in parallel).
          optimizer: None means ``optax.adam(1e-2)``.
          num_particles: samples per datum and step (STL estimator).
        """
        check_count("num_steps", num_steps)
        data = check_new_data(result.model, result.params, data)
        optimizer = optax.adam(1e-2) if optimizer is None else optimizer
        spec = self.elbo_spec(result.model, "stl")
        if spec.global_guide is not None:
            raise ValueError("refine: a model with Global latents is refined with jaxvi.SVI")
        space = spec.local.space

        @jax.jit
        def run(params, variational, data, key):
            start = self._encode(variational, data, space.dim)

            def one_datum(x, psi, k):
                def loss(psi, k):
                    one = jax.tree_util.tree_map(lambda a: a[None], psi)
                    batch = jax.tree_util.tree_map(lambda a: a[None], x)
                    return -elbo(spec, result.model, params, None, one, batch, k, 1.0, num_particles).surrogate

                def body(carry, k):
                    psi, opt_state = carry
                    grads = jax.grad(loss)(psi, k)
                    updates, opt_state = optimizer.update(grads, opt_state, psi)
                    return (optax.apply_updates(psi, updates), opt_state), None

                (psi, _), _ = lax.scan(body, (psi, optimizer.init(psi)), jax.random.split(k, num_steps))
                return psi

            keys = jax.random.split(key, num_rows(data))
            return jax.vmap(one_datum)(data, start, keys)

        return FittedGuide(self.guide, space, run(result.params, result.guide_params, data, key), False)

    # --- the objective -------------------------------------------------------------------------------

    def _encoder(self) -> Network:
        return mlp((256, 256)) if self.encoder is None else self.encoder

    def _optimizer(self) -> optax.GradientTransformation:
        return make_optimizer(self.optimizer, self.learning_rate, 1e-3)

    def _encode(self, variational: AmortizedParams, data: PyTree, dim: int) -> PyTree:
        """Every datum's guide parameters ψ_i from the encoder (leading datum axis)."""
        encoder = self._encoder()
        size = guide_size(self.guide, dim)

        def one(x):
            out = encoder.apply(variational.encoder, x)
            if out.shape != (size,):
                raise ValueError(f"encoder: expected an output of shape ({size},) for {type(self.guide).__name__} "
                                 f"on a {dim}-value latent, got {out.shape}")
            return _guide_params(self.guide, out, variational.shared, dim)

        return jax.vmap(one)(data)

    def _step_bound(self, model, key, state: AmortizedState, rows, scale):
        """A step's bound on ``rows``, scaled by ``scale`` = N/B (``num_particles`` per datum)."""
        spec = self.elbo_spec(model)
        psi = self._encode(state.variational, rows, spec.local.space.dim)
        return elbo(spec, model, state.params, state.global_psi, psi, rows, key, scale, self.num_particles)

    def _bound(self, model, state: AmortizedState, data, key, num_particles, objective):
        spec = self.elbo_spec(model, objective)
        psi = self._encode(state.variational, data, spec.local.space.dim)
        return elbo(spec, model, state.params, state.global_psi, psi, data, key, 1.0, num_particles)


def guide_size(guide, dim: int) -> int:
    """How many values an encoder outputs for this guide on a ``dim``-value latent."""
    if isinstance(guide, FullRank):
        return dim + dim * (dim + 1) // 2
    return 2 * dim  # MeanField, and a Flow's base Normal


def _guide_params(guide, out: jax.Array, shared: PyTree, dim: int) -> PyTree:
    """The guide's parameters for one datum from the encoder's output (offset so that an output of 0
    is the guide's ``init_scale``)."""
    offset = _inverse_softplus(guide.init_scale)
    loc = out[:dim]
    if isinstance(guide, FullRank):
        rows, cols = np.tril_indices(dim)
        raw = jnp.zeros((dim, dim), out.dtype).at[rows, cols].set(out[dim:])
        return {"loc": loc, "scale_tril": raw + offset * jnp.eye(dim, dtype=out.dtype)}
    params = {"loc": loc, "scale": out[dim:] + offset}
    if isinstance(guide, Flow):
        params["layers"] = shared["layers"]
    return params


def _shared_init(guide, key, dim, dtype) -> PyTree:
    if isinstance(guide, Flow):
        return {"layers": guide.init(key, dim, dtype)["layers"]}
    return {}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _evaluate(model, num_particles, method, state, data, key):
    """``Amortized.elbo``'s bound, compiled once per model, particle count and method structure."""
    bound = method._bound(model, state, data, key, num_particles, "elbo")
    return bound.bound, bound.stderr


def _fit_tree(params, variational, global_psi) -> tuple[PyTree, PyTree]:
    """``(params, guide_params)`` of a result: the encoder side, with ``Global`` latents a ``GlobalLocal``."""
    return params, (variational if global_psi is None else GlobalLocal(global_psi, variational))


def _split(guide_params) -> tuple[AmortizedParams, PyTree]:
    """``(encoder side, global ψ or None)`` of a result's ``guide_params``."""
    if isinstance(guide_params, GlobalLocal):
        return guide_params.local, guide_params.global_
    return guide_params, None
