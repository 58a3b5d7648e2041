"""The result of a fit: parameters, objective, trace, diagnostics, and the posterior."""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxvi.model import check_data, is_traced

__all__ = ["Result", "Fault", "no_fault", "NO_FAULT", "FAULT_LOG_EVIDENCE", "FAULT_PARAMS", "FAULT_NOT_QUADRATIC"]

PyTree = Any

NO_FAULT, FAULT_LOG_EVIDENCE, FAULT_PARAMS, FAULT_NOT_QUADRATIC = 0, 1, 2, 3


class Fault(NamedTuple):
    """The first numerical fault of a run, which stopped it.

    Attributes:
      iteration: the iteration it happened in (-1: none).
      kind: 0 none; 1 the log evidence was non-finite; 2 an update made parameters non-finite;
        3 a ``Gaussian`` latent's log-joint was not quadratic in z (or its precision not positive definite).
      index: for kind 1 the first datum with non-finite log evidence (-1 if only the log prior
        was), for kind 3 the first datum that failed the check, for kind 2 the index of the first non-finite leaf in ``jax.tree_util.tree_leaves(params)``.
    """

    iteration: jax.Array
    kind: jax.Array
    index: jax.Array


def no_fault() -> Fault:
    return Fault(jnp.array(-1, jnp.int32), jnp.array(NO_FAULT, jnp.int32), jnp.array(-1, jnp.int32))


@dataclasses.dataclass(frozen=True)
class Result:
    """What ``jaxvi.infer`` returns. A pytree: results of vmapped fits stack along a leading axis.

    Attributes:
      params: the fitted parameters θ.
      objective: the quantity the method maximised, at ``params``: log p(D | θ) for EM
        (+ log p(θ) with a prior).
      trace: the objective per iteration, padded with ``objective`` after the last. For EM,
        ``(max_iter + 1,)``: log p(D | θ_s) for s = 0 .. n_iter, the last being ``objective``.
      n_iter: iterations run (for EM: M-steps taken).
      converged: whether the stopping tolerance was met before ``max_iter``.
      diagnostics: method-specific details (for EM: ``EMDiagnostics``).
      model: the model that was fitted (static).
      method: the method's settings (static).
    """

    params: PyTree
    objective: jax.Array
    trace: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    diagnostics: Any
    model: Any
    method: Any

    def posterior(self, data: PyTree):
        """The exact posterior p(z_i | x_i, θ) of every datum of ``data`` at the fitted θ.

        For ``Discrete`` latents a ``DiscretePosterior`` (``.probs`` are the ``(N, K)``
        responsibilities), for ``Markov`` a ``ChainPosterior`` (``.marginals``, ``.mode()``,
        ``.sample(key)``), for ``Gaussian`` a ``GaussianPosterior`` (``.mean``, ``.covariance``).
        Every one has ``.log_evidence``, the per-datum log p(x_i), and ``.expect(f, data)``.
        """
        data = check_data(data)
        if is_traced(data, self.params):
            return self.method.posterior(self.model, self.params, data)
        return _posterior(self.method, self.model, self.params, data)


jax.tree_util.register_dataclass(
    Result,
    data_fields=["params", "objective", "trace", "n_iter", "converged", "diagnostics"],
    meta_fields=["model", "method"],
)


_posterior = jax.jit(lambda method, model, params, data: method.posterior(model, params, data),
                     static_argnums=(0, 1))
