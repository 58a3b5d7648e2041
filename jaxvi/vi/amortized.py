r"""Amortized variational inference: an encoder network maps each datum to its q(z | x).

With encoder parameters φ and decoder (model) parameters θ, the objective on N data is

.. math::
    \mathcal{L}(\theta, \phi) = \sum_i E_{q_\phi(u \mid x_i)}[\log p_\theta(x_i, z(u)) + \log|J(u)| - \log q_\phi(u \mid x_i)]
    + \log p(\theta),

maximised jointly over θ and φ by stochastic gradients on shuffled minibatches (the VAE of Kingma
& Welling 2014; with ``objective="iwae"`` the importance-weighted bound of Burda et al. 2016). The
model's ``log_joint`` is the decoder: nothing about the model changes between SVI and amortized
inference. The encoder's output is the guide's parameters for that datum (see ``guide_size``);
a ``Flow`` guide's coupling layers are shared by all data (only its base Normal is amortized).

A held-out part of the data (``validation``) is scored after every epoch; with ``patience`` the
run stops when that held-out ELBO has not improved for ``patience`` epochs, and the parameters of
the best epoch are returned.
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

from jaxvi.chunks import num_data
from jaxvi.latents import Global, is_spec
from jaxvi.model import Model
from jaxvi.nn import Network, mlp
from jaxvi.result import FAULT_GRADIENT, FAULT_OBJECTIVE, NO_FAULT, Fault, Result, no_fault
from jaxvi.vi.guides import Flow, FullRank, MeanField, _inverse_softplus
from jaxvi.vi.space import latent_space
from jaxvi.vi.svi import FittedGuide, _check_positive_int, _float_dtype, _take, _where, local_objective

__all__ = ["Amortized", "AmortizedDiagnostics", "AmortizedParams", "AmortizedState", "guide_size"]

PyTree = Any
OBJECTIVES = ("elbo", "iwae", "stl")


class AmortizedParams(NamedTuple):
    """The variational side of an amortized fit: ``encoder`` (φ) and the guide's shared parameters
    (a ``Flow``'s coupling layers; ``{}`` for the Normal guides)."""

    encoder: PyTree
    shared: PyTree


class AmortizedState(NamedTuple):
    """The state of an amortized fit between steps.

    Attributes:
      params: θ, the decoder (model) parameters.
      variational: the ``AmortizedParams`` (φ and the guide's shared parameters).
      opt_state: the optimiser state of (θ, variational).
      key: the PRNG key of the next step.
      train_index, valid_index: which data are trained on and which are held out (fixed at init).
      order: the current epoch's shuffled order of the training data.
      trace: ``(steps,)`` the training ELBO estimate of every step, scaled to the training data.
      heldout_trace: ``(epochs,)`` the held-out ELBO after every epoch (NaN where not run).
      best: (θ, variational) of the epoch with the best held-out ELBO.
      best_heldout: that ELBO (-inf before the first epoch ends).
      stale_epochs: epochs since the held-out ELBO last improved.
      n_iter: steps taken.
      converged: whether early stopping ended the run.
      done: whether the run has stopped.
      fault: the first non-finite objective or gradient.
    """

    params: PyTree
    variational: AmortizedParams
    opt_state: PyTree
    key: jax.Array
    train_index: jax.Array
    valid_index: jax.Array
    order: jax.Array
    trace: jax.Array
    heldout_trace: jax.Array
    best: PyTree
    best_heldout: jax.Array
    stale_epochs: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    done: jax.Array
    fault: Fault


class AmortizedDiagnostics(NamedTuple):
    """What an amortized fit knows beyond its objective.

    Attributes:
      elbo_stderr: the Monte-Carlo standard error of the final training ELBO.
      heldout_elbo: the best held-out ELBO (NaN without a validation part).
      heldout_trace: the held-out ELBO after every epoch.
      epochs: epochs completed.
      fault: the first numerical fault (``kind == 0``: none).
      restart_objectives: ``(n_init,)`` final objective of every restart.
    """

    elbo_stderr: jax.Array
    heldout_elbo: jax.Array
    heldout_trace: jax.Array
    epochs: jax.Array
    fault: Fault
    restart_objectives: jax.Array


@dataclasses.dataclass(frozen=True)
class Amortized:
    r"""Amortized variational inference: an encoder q_φ(z | x) trained jointly with the model θ.

    Args:
      encoder: a ``jaxvi.nn.Network``; None means ``jaxvi.nn.mlp((256, 256))``. flax and equinox
        modules plug in through ``jaxvi.nn.from_flax`` / ``jaxvi.nn.from_equinox``.
      guide: ``MeanField()`` (a diagonal Normal, default), ``FullRank()`` or ``Flow(...)`` (a
        diagonal Normal pushed through coupling layers shared by all data).
      optimizer: an optax optimiser; None means ``optax.adam(1e-3)``.
      num_steps: gradient steps; or
      num_epochs: passes over the training data (one of the two).
      batch_size: data per step; each epoch visits the training data in a new random order.
      num_particles: samples of z per datum (for ``"iwae"``, its k).
      objective: ``"elbo"``, ``"iwae"`` or ``"stl"``.
      validation: the fraction of the data held out (a random subset, fixed by the key) and scored
        after every epoch; 0 trains on everything.
      patience: stop after this many epochs without a better held-out ELBO and return the best
        epoch's parameters; None never stops early.
      num_eval_particles: particles per datum for the final training ELBO (``Amortized.elbo`` and
        ``jaxvi.evidence`` evaluate with more).

    Example:
      >>> vae = jaxvi.models.vae(latent_dim=8, decoder=jaxvi.nn.mlp((256, 256)), data_dim=64)
      >>> result = jaxvi.infer(vae.model, jaxvi.Amortized(num_epochs=50, batch_size=128), x, key=jax.random.key(0))
      >>> q = result.posterior(x_new)                      # q(z | x) for new data
    """

    encoder: Network | None = None
    guide: Any = MeanField()
    optimizer: optax.GradientTransformation | None = None
    num_steps: int | None = None
    num_epochs: int | None = None
    batch_size: int = 128
    num_particles: int = 1
    objective: str = "elbo"
    validation: float = 0.1
    patience: int | None = None
    num_eval_particles: int = 10
    n_init: int = 1

    def __post_init__(self):
        if (self.num_steps is None) == (self.num_epochs is None):
            raise ValueError(f"Amortized: expected exactly one of num_steps and num_epochs, got num_steps="
                             f"{self.num_steps!r}, num_epochs={self.num_epochs!r}")
        for name in ("num_steps", "num_epochs", "patience"):
            if getattr(self, name) is not None:
                _check_positive_int(f"Amortized({name})", getattr(self, name))
        for name in ("batch_size", "num_particles", "num_eval_particles", "n_init"):
            _check_positive_int(f"Amortized({name})", getattr(self, name))
        if self.encoder is not None and not isinstance(self.encoder, Network):
            raise ValueError(f"Amortized(encoder): expected a jaxvi.nn.Network (e.g. jaxvi.nn.mlp(), "
                             f"jaxvi.nn.from_flax(module)), got {type(self.encoder).__name__}")
        if not isinstance(self.guide, (MeanField, FullRank, Flow)):
            raise ValueError(f"Amortized(guide): expected MeanField(), FullRank() or Flow(...), got {self.guide!r}")
        if self.optimizer is not None and not isinstance(self.optimizer, optax.GradientTransformation):
            raise ValueError(f"Amortized(optimizer): expected an optax GradientTransformation, got "
                             f"{type(self.optimizer).__name__}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"Amortized(objective): expected one of {OBJECTIVES}, got {self.objective!r}")
        if isinstance(self.validation, bool) or not isinstance(self.validation, (int, float)) \
                or not 0 <= self.validation < 1:
            raise ValueError(f"Amortized(validation): expected a fraction in [0, 1), got {self.validation!r}")
        if self.patience is not None and self.validation == 0:
            raise ValueError("Amortized(patience): early stopping needs held-out data; set validation > 0")

    # --- sizes ---------------------------------------------------------------------------------------

    def _split(self, n: int) -> tuple[int, int]:
        """``(training data, held-out data)`` counts."""
        n_valid = int(round(self.validation * n))
        if n - n_valid < 1:
            raise ValueError(f"Amortized(validation): {self.validation} of {n} data leaves nothing to train on")
        return n - n_valid, n_valid

    def _steps_per_epoch(self, n: int) -> int:
        return max(1, self._split(n)[0] // self.batch_size)

    def iterations(self, data: PyTree) -> int:
        """Total steps for these data (``num_steps``, or ``num_epochs`` x steps per epoch)."""
        return self.iterations_for(num_data(data))

    def iterations_for(self, n: int) -> int:
        return self.num_steps if self.num_steps is not None else self.num_epochs * self._steps_per_epoch(n)

    def _epochs(self, n: int) -> int:
        return math.ceil(self.iterations_for(n) / self._steps_per_epoch(n))

    # --- checks --------------------------------------------------------------------------------------

    def check(self, model: Model) -> None:
        """Raises ValueError unless the model has a local continuous latent an encoder can amortize."""
        leaves = jax.tree_util.tree_leaves(model.latent, is_leaf=is_spec)
        if isinstance(model.latent, Global) or not leaves:
            raise ValueError("latent: amortized inference needs a latent per datum (Real or Gaussian specs); a "
                             "Global latent is fitted with jaxvi.SVI")
        space = latent_space(model.latent)  # raises for discrete latents
        if isinstance(self.guide, Flow) and space.dim < 2:
            raise ValueError(f"Amortized(guide=Flow()): a coupling flow needs at least 2 latent values, got {space.dim}")

    def check_data(self, data: PyTree) -> None:
        n_train, _ = self._split(num_data(data))
        if self.batch_size > n_train:
            raise ValueError(f"Amortized(batch_size): expected at most the {n_train} training data, got "
                             f"{self.batch_size}")

    # --- the state machine ---------------------------------------------------------------------------

    def init(self, model: Model, data: PyTree, key: jax.Array, params: PyTree | None = None) -> AmortizedState:
        """θ from ``model.init``, φ from the encoder, the train / held-out split and the first epoch's order."""
        model_key, encoder_key, shared_key, split_key, run_key = jax.random.split(key, 5)
        params = model.init(model_key, data) if params is None else params
        params = jax.tree_util.tree_map(lambda a: lax.convert_element_type(a, jnp.result_type(a)), params)
        n = num_data(data)
        n_train, n_valid = self._split(n)
        space = latent_space(model.latent)
        example = jax.tree_util.tree_map(lambda a: a[0], data)
        encoder = self._encoder()
        encoder_params = encoder.init(encoder_key, example, guide_size(self.guide, space.dim))
        variational = AmortizedParams(encoder_params, _shared_init(self.guide, shared_key, space.dim, _float_dtype(data)))
        permutation = _shuffled(split_key, jnp.arange(n))
        train_index, valid_index = permutation[:n_train], permutation[n_train:]
        dtype = _float_dtype(data)
        steps, epochs = self.iterations_for(n), self._epochs(n)
        order_key, run_key = jax.random.split(run_key)
        return AmortizedState(
            params=params, variational=variational, opt_state=self._optimizer().init((params, variational)),
            key=run_key, train_index=train_index, valid_index=valid_index,
            order=_shuffled(order_key, train_index),
            trace=jnp.zeros(steps, dtype), heldout_trace=jnp.full(epochs, jnp.nan, dtype),
            best=(params, variational), best_heldout=jnp.array(-jnp.inf, dtype),
            stale_epochs=jnp.array(0, jnp.int32), n_iter=jnp.array(0, jnp.int32), converged=jnp.array(False),
            done=jnp.array(False), fault=no_fault())

    def step(self, model: Model, state: AmortizedState, data: PyTree, key: jax.Array | None = None
             ) -> tuple[AmortizedState, jax.Array]:
        """One gradient step on the next minibatch of the epoch; at an epoch's end, the held-out ELBO."""
        n = num_data(data)
        n_train, n_valid = self._split(n)
        per_epoch = self._steps_per_epoch(n)
        next_key, particle_key, order_key, valid_key = jax.random.split(state.key, 4)
        position = state.n_iter % per_epoch
        index = lax.dynamic_slice(state.order, (position * self.batch_size,), (self.batch_size,))
        batch = _take(data, index)
        scale = n_train / self.batch_size

        def objective(params, variational):
            surrogate, bound, _, _ = self._objective(model, params, variational, batch, particle_key, scale,
                                                     self.num_particles, self.objective)
            return surrogate, bound

        (_, bound), grads = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(state.params,
                                                                                        state.variational)
        grads = jax.tree_util.tree_map(jnp.negative, grads)
        leaf_finite = jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)])
        bad_objective, bad_gradient = ~jnp.isfinite(bound), ~jnp.all(leaf_finite)
        kind = jnp.where(bad_objective, FAULT_OBJECTIVE, jnp.where(bad_gradient, FAULT_GRADIENT, NO_FAULT))
        fault = Fault(jnp.where(kind == NO_FAULT, -1, state.n_iter).astype(jnp.int32), kind.astype(jnp.int32),
                      jnp.where(bad_gradient & ~bad_objective, jnp.argmin(leaf_finite), -1).astype(jnp.int32),
                      jnp.array(-1, jnp.int32))
        ok = kind == NO_FAULT
        updates, opt_state = self._optimizer().update(grads, state.opt_state, (state.params, state.variational))
        params, variational = optax.apply_updates((state.params, state.variational), updates)
        params, variational = _where(ok, (params, variational), (state.params, state.variational))
        n_iter = state.n_iter + ok.astype(jnp.int32)

        # the end of an epoch: a new order, the held-out ELBO, early stopping
        epoch_end = ok & (n_iter % per_epoch == 0)
        order = lax.cond(epoch_end, lambda: _shuffled(order_key, state.train_index), lambda: state.order)
        nan = jnp.array(jnp.nan, state.trace.dtype)
        heldout = nan if n_valid == 0 else lax.cond(
            epoch_end, lambda: self._heldout(model, params, variational, data, state.valid_index, valid_key),
            lambda: nan)
        epoch = jnp.maximum(n_iter // per_epoch - 1, 0)
        improved = epoch_end & (heldout > state.best_heldout)
        stale = jnp.where(epoch_end, jnp.where(improved, 0, state.stale_epochs + 1), state.stale_epochs)
        stopped = (self.patience is not None) & (stale >= (self.patience or 0))
        steps = state.trace.shape[0]
        new_state = AmortizedState(
            params=params, variational=variational, opt_state=_where(ok, opt_state, state.opt_state),
            key=jnp.where(ok, next_key, state.key), train_index=state.train_index, valid_index=state.valid_index,
            order=order, trace=jnp.where(ok, state.trace.at[state.n_iter].set(bound.astype(state.trace.dtype)),
                                         state.trace),
            heldout_trace=jnp.where(epoch_end, state.heldout_trace.at[epoch].set(heldout), state.heldout_trace),
            best=_where(improved | (n_valid == 0), (params, variational), state.best),
            best_heldout=jnp.where(improved, heldout, state.best_heldout),
            stale_epochs=stale, n_iter=n_iter, converged=stopped, done=~ok | stopped | (n_iter >= steps), fault=fault)
        return new_state, bound

    def finalize(self, model: Model, state: AmortizedState, data: PyTree) -> Result:
        """The best epoch's parameters (by held-out ELBO; the last ones without held-out data), the
        training ELBO on the training data, the held-out ELBO."""
        n = num_data(data)
        n_train, n_valid = self._split(n)
        params, variational = state.best if n_valid else (state.params, state.variational)
        train = _take(data, state.train_index)
        _, elbo, stderr, _ = self._objective(model, params, variational, train, jax.random.fold_in(state.key, 1),
                                             1.0, self.num_eval_particles, "elbo")
        elbo = elbo.astype(state.trace.dtype)
        trace = jnp.where(jnp.arange(state.trace.shape[0]) < state.n_iter, state.trace, elbo)
        per_epoch = self._steps_per_epoch(n)
        diagnostics = AmortizedDiagnostics(
            stderr.astype(elbo.dtype),
            state.best_heldout if n_valid else jnp.array(jnp.nan, elbo.dtype),
            state.heldout_trace, state.n_iter // per_epoch, state.fault, elbo[None])
        return Result(params, elbo, trace, state.n_iter, state.converged, diagnostics, model, self,
                      guide_params=variational)

    def posterior(self, result: Result, data: PyTree | None = None) -> FittedGuide:
        """q(z | x) of every datum of ``data`` (new data welcome): the encoder's guides, a ``FittedGuide``."""
        if data is None:
            raise ValueError("data: expected the data whose q(z | x) to compute, got None")
        space = latent_space(result.model.latent)
        guide_params = self._encode(result.guide_params, data, space.dim)
        return FittedGuide(self.guide, space, guide_params, False)

    def elbo(self, result: Result, data: PyTree, *, key: jax.Array, num_particles: int = 1000
             ) -> tuple[jax.Array, jax.Array]:
        """``(ELBO, standard error)`` of the fit on ``data`` (new data welcome), + log p(θ), with
        ``num_particles`` draws per datum; ``objective="iwae"`` is not applied (the plain ELBO)."""
        _check_positive_int("num_particles", num_particles)
        return jax.jit(lambda p, v, d, k: self._objective(result.model, p, v, d, k, 1.0, num_particles, "elbo")[1:3])(
            result.params, result.guide_params, data, key)

    def refine(self, result: Result, data: PyTree, *, key: jax.Array, num_steps: int = 100,
               optimizer: optax.GradientTransformation | None = None, num_particles: int = 4) -> FittedGuide:
        r"""Semi-amortized inference: per-datum SVI steps on ψ_i, starting from the encoder's output,
        with θ fixed. Closes part of the amortization gap (the ELBO lost because one encoder serves
        every datum). Returns the refined q_i as a ``FittedGuide`` (``jaxvi.evidence(..., posterior=)``
        and ``SVI``-style evaluation accept it).

        Args:
          num_steps: optimiser steps per datum (all data in parallel).
          optimizer: None means ``optax.adam(1e-2)``.
          num_particles: samples per datum and step (STL estimator).
        """
        _check_positive_int("num_steps", num_steps)
        optimizer = optax.adam(1e-2) if optimizer is None else optimizer
        model, space = result.model, latent_space(result.model.latent)
        guide = self.guide

        @jax.jit
        def run(params, variational, data, key):
            start = self._encode(variational, data, space.dim)

            def one_datum(x, psi, k):
                def loss(psi, k):
                    one = jax.tree_util.tree_map(lambda a: a[None], psi)
                    batch = jax.tree_util.tree_map(lambda a: a[None], x)
                    return -local_objective(model, guide, space, "stl", params, one, batch, k, 1.0, num_particles)[0]

                def body(carry, k):
                    psi, opt_state = carry
                    grads = jax.grad(loss)(psi, k)
                    updates, opt_state = optimizer.update(grads, opt_state, psi)
                    return (optax.apply_updates(psi, updates), opt_state), None

                (psi, _), _ = lax.scan(body, (psi, optimizer.init(psi)), jax.random.split(k, num_steps))
                return psi

            keys = jax.random.split(key, num_data(data))
            return jax.vmap(one_datum)(data, start, keys)

        return FittedGuide(guide, space, run(result.params, result.guide_params, data, key), False)

    def describe(self, states: AmortizedState, n: int) -> str:
        """The progress bar's text: the last training ELBO per training datum, the best held-out ELBO."""
        last = max(int(np.max(np.asarray(states.n_iter))) - 1, 0)
        n_train, n_valid = self._split(n)
        text = f"ELBO/N={float(np.max(np.asarray(states.trace)[..., last])) / n_train:.5g}"
        held = float(np.max(np.asarray(states.best_heldout)))
        return text + (f", held-out/N={held / n_valid:.5g}" if n_valid and np.isfinite(held) else "")

    # --- the objective -------------------------------------------------------------------------------

    def _encoder(self) -> Network:
        return mlp((256, 256)) if self.encoder is None else self.encoder

    def _optimizer(self) -> optax.GradientTransformation:
        return optax.adam(1e-3) if self.optimizer is None else self.optimizer

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

    def _objective(self, model, params, variational, batch, key, scale, num_particles, estimator):
        space = latent_space(model.latent)
        batch_psi = self._encode(variational, batch, space.dim)
        return local_objective(model, self.guide, space, estimator, params, batch_psi, batch, key, scale,
                               num_particles)

    def _heldout(self, model, params, variational, data, valid_index, key) -> jax.Array:
        _, bound, _, _ = self._objective(model, params, variational, _take(data, valid_index), key, 1.0,
                                         self.num_particles, "elbo")
        return bound


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


def _shuffled(key: jax.Array, index: jax.Array) -> jax.Array:
    """``index`` in a uniformly random order: sorted by i.i.d. uniform keys (one sort; cheaper to compile
    than ``jax.random.permutation``'s rounds)."""
    return index[jnp.argsort(jax.random.uniform(key, index.shape))]
