r"""How the run drives a method: how many steps, which batches, and when to stop.

A method declares a ``Schedule`` for N data (``method.schedule(N)``); the run layer does the rest.
Stopping rules are small objects with the numbers they compare against (traced values):

- ``Change(tol)``: an exact objective (EM's log p(D)) changed by less than ``tol`` per datum
  between two steps: :math:`|L_t - L_{t-1}| / N < \mathrm{tol}`.
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

import jax.numpy as jnp

__all__ = ["Change", "Never", "Schedule", "Smoothed"]


@dataclasses.dataclass(frozen=True)
class Never:
    """Run every step."""

    def init(self, dtype):
        return ()

    def update(self, monitor, objective, steps, num_data):
        return monitor, jnp.array(False)


@dataclasses.dataclass(frozen=True)
class Change:
    """Stop when an exact objective changes by less than ``tol`` per datum between steps."""

    tol: Any

    def init(self, dtype):
        return jnp.array(jnp.nan, dtype)  # the previous step's objective

    def update(self, previous, objective, steps, num_data):
        converged = (steps > 1) & (jnp.abs(objective - previous) / num_data < self.tol)
        return objective, converged


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
        return (smoothed, jnp.where(check, smoothed, at_check)), converged


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
