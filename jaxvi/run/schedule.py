r"""How the run drives a method: how many steps, which batches, and when to stop.

A method declares a ``Schedule`` for N data (``method.schedule(N)``); the run layer does the rest.
Stopping rules are small objects with the numbers they compare against (traced values):

- ``Change(tol)``: an exact objective (EM's log p(D)) changed by less than ``tol`` per datum
  between two steps: :math:`|L_t - L_{t-1}| / N < \mathrm{tol}`. A tolerance finer than the float
  type resolves of the objective (``resolution``) cannot be tested: the run then stops when the
  change falls below that resolution instead, with the stop reason ``STOP_RESOLUTION`` and
  ``converged`` False (``jaxvi.infer`` warns, naming both numbers). ``tol=0`` runs every step.
- ``Smoothed(tol, window)``: a noisy objective (an ELBO estimate) is smoothed by an exponential
  moving average of weight 1/window; every ``window`` steps the smoothed value is compared with the
  last comparison's: :math:`|\bar L_t - \bar L_{t-w}| / N < \mathrm{tol}`.
- ``Never()``: run all the steps.

With ``epochs`` and held-out data, the run also scores the held-out part after every epoch
(``method.evaluate``), keeps the state of the best epoch, and with ``patience`` stops after that
many epochs without improvement.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Change", "Never", "RESOLUTION_ULPS", "STOP_FAULT", "STOP_MAX_STEPS", "STOP_PATIENCE", "STOP_REASONS",
           "STOP_RESOLUTION", "STOP_RUNNING", "STOP_TOLERANCE", "Schedule", "Smoothed", "resolution"]

# Why a run stopped (``Result.diagnostics.stop_reason``; ``STOP_REASONS`` names them).
STOP_RUNNING, STOP_TOLERANCE, STOP_MAX_STEPS, STOP_FAULT, STOP_PATIENCE, STOP_RESOLUTION = range(6)
STOP_REASONS = ("running", "tolerance", "max_iter", "fault", "patience", "resolution")

# Units in the last place of |objective| within which an exact objective computed in floating point is
# trusted: a monotone objective (EM's log p(D)) may fall by up to this much from rounding alone. Measured
# in float32 over 2,000 EM iterations (tests/test_float32.py): mixtures, Gaussian HMMs and factor analysis
# (noise variances down to 1e-5) fall by at most 1.7 ulps and end within 2.3 ulps of a float64
# evaluation of the same parameters; 16 leaves room for models whose log-joint rounds worse.
RESOLUTION_ULPS = 16


def resolution(objective: jax.Array) -> jax.Array:
    r"""The smallest change of ``objective`` its floating type resolves:
    :math:`\mathrm{RESOLUTION\_ULPS} \cdot \varepsilon \cdot |L|` (ε the type's machine epsilon;
    in float32 1.9e-6 of |L|, in float64 3.6e-15). Of a NumPy value, a NumPy value (nothing for JAX to compile)."""
    return RESOLUTION_ULPS * jnp.finfo(objective.dtype).eps * abs(objective)


@dataclasses.dataclass(frozen=True)
class Never:
    """Run every step."""

    def init(self, dtype):
        return ()

    def update(self, monitor, objective, steps, num_data):
        return monitor, jnp.array(STOP_RUNNING, jnp.int32)


@dataclasses.dataclass(frozen=True)
class Change:
    r"""Stop when an exact objective changes by less than ``tol`` per datum between steps.

    A stopping rule is ``init(dtype) -> monitor`` and ``update(monitor, objective, steps, num_data) ->
    (monitor, reason)``: ``STOP_RUNNING`` to go on, else why to stop. Here ``STOP_TOLERANCE`` when
    :math:`|L_t - L_{t-1}| < \mathrm{tol} \cdot N`, where that is at least ``resolution(L_t)``;
    where it is finer, ``STOP_RESOLUTION`` when the change is below the resolution, the least change
    the float type can tell from rounding. ``tol=0`` never stops. ``to_resolution`` (a method's default
    tolerance, not one the user asked for): where ``tol`` is finer than the resolution, the resolution is the
    tolerance, and a change below it is ``STOP_TOLERANCE`` (converged to what the float type resolves).
    """

    tol: Any
    to_resolution: bool = False

    def init(self, dtype):
        return jnp.array(jnp.nan, dtype)  # the previous step's objective

    def resolves(self, objective, num_data):
        """Whether ``tol`` (in total, ``tol * num_data``) is at least ``resolution(objective)``; always, with
        ``to_resolution``."""
        return True if self.to_resolution else self.tol * num_data >= resolution(objective)

    def update(self, previous, objective, steps, num_data):
        change, tolerance, least = jnp.abs(objective - previous), self.tol * num_data, resolution(objective)
        if self.to_resolution:
            tolerance = jnp.maximum(tolerance, least)
        resolved = self.resolves(objective, num_data)
        reason = jnp.select([resolved & (change < tolerance), ~resolved & (self.tol > 0) & (change < least)],
                            [STOP_TOLERANCE, STOP_RESOLUTION], STOP_RUNNING)
        return objective, jnp.where(steps > 1, reason, STOP_RUNNING).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Smoothed:
    """Stop when the smoothed objective changes by less than ``tol`` per datum over ``window`` steps."""

    tol: Any
    window: int

    def init(self, dtype):
        nan = jnp.array(jnp.nan, dtype)
        return nan, nan  # (smoothed, smoothed at the last check)

    def update(self, monitor, objective, steps, num_data):
        smoothed, at_check = monitor
        smoothed = jnp.where(jnp.isnan(smoothed), objective, smoothed + (objective - smoothed) / self.window)
        check = steps % self.window == 0
        converged = check & jnp.isfinite(at_check) & (jnp.abs(smoothed - at_check) / num_data < self.tol)
        reason = jnp.where(converged, STOP_TOLERANCE, STOP_RUNNING).astype(jnp.int32)
        return (smoothed, jnp.where(check, smoothed, at_check)), reason


class Schedule(NamedTuple):
    """How ``jaxvi.infer`` drives a method on N data.

    Attributes:
      max_steps: the most steps.
      batch_size: data per step; None passes all the data every step.
      epochs: draw minibatches as shuffled passes over the training data (else every step draws
        ``batch_size`` distinct data uniformly, independently of the last).
      num_heldout: data held out of training (epochs only), scored after every epoch.
      patience: with held-out data, stop after this many epochs without a better held-out score
        (and finalise the best epoch's state); None never stops early.
      stopping: the stopping rule (``Change``, ``Smoothed`` or ``Never``).
      evaluates_ahead: each step reports the objective of the parameters it started from and then
        moves them (EM); the last step's move is never evaluated, so ``finalize`` returns the
        evaluated parameters and ``Result.n_iter`` counts the steps whose move was evaluated.
    """

    max_steps: int
    batch_size: int | None = None
    epochs: bool = False
    num_heldout: int = 0
    patience: int | None = None
    stopping: Any = Never()
    evaluates_ahead: bool = False
