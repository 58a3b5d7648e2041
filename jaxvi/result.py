"""The result of a fit: parameters, objective, trace, diagnostics, and the posterior."""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvi.model import check_new_data, is_traced

__all__ = ["Result", "Fault", "Skips", "no_fault", "no_skips", "NO_FAULT", "FAULT_LOG_EVIDENCE", "FAULT_PARAMS", "FAULT_NOT_QUADRATIC",
           "FAULT_OBJECTIVE", "FAULT_GRADIENT", "FAULT_FINAL_OBJECTIVE", "FAULT_FINAL_PARAMS", "OBJECTIVE_TERMS"]

PyTree = Any

(NO_FAULT, FAULT_LOG_EVIDENCE, FAULT_PARAMS, FAULT_NOT_QUADRATIC, FAULT_OBJECTIVE, FAULT_GRADIENT,
 FAULT_FINAL_OBJECTIVE, FAULT_FINAL_PARAMS) = range(8)
OBJECTIVE_TERMS = ("log_joint", "log_det_jacobian", "log_q", "log_prior")  # what Fault.term indexes


class Fault(NamedTuple):
    """The first numerical fault of a run, which stopped it (or made its final evaluation fail).

    Attributes:
      iteration: the iteration it happened in (-1: none); for kinds 6 and 7, the steps taken before
        the final evaluation.
      kind: 0 none; 1 the log evidence was non-finite (EM); 2 an update made parameters
        non-finite; 3 a ``Gaussian`` latent's log-joint was not quadratic in z (or its
        precision not positive definite); 4 the objective was non-finite (SVI, amortized); 5 a
        gradient was non-finite (SVI, amortized); 6 the final objective (``finalize``: all the data,
        the evaluation particles) was non-finite; 7 a final parameter leaf was non-finite.
      index: kinds 1 and 3: the first datum concerned (-1 if only the log prior was); kinds 2, 5
        and 7: the index of the first non-finite leaf in
        ``jax.tree_util.tree_leaves((params, guide_params))`` (the ``Result``'s; for EM, of
        ``params``); kind 4: the first datum whose log-joint was not finite (-1 if another term
        was); kind 6: as kind 4 for an ELBO, as kind 1 for log p(D).
      term: kind 4: which term of the objective was not finite first, an index into
        ``OBJECTIVE_TERMS`` (log_joint, log_det_jacobian, log_q, log_prior); kind 1 of a streamed
        E-step: the end of the chunk ``[index, term)`` the datum is in; kind 6: as kind 4 for an
        ELBO, as kind 1 for log p(D); else -1.
    """

    iteration: jax.Array
    kind: jax.Array
    index: jax.Array
    term: jax.Array


class Skips(NamedTuple):
    """The steps a run skipped (``jaxvi.infer(..., on_nonfinite="skip")``): each was rejected, its state kept,
    and the next step drew fresh keys (and a fresh minibatch).

    Attributes:
      count: how many steps were skipped.
      first: the first skipped step's fault (a ``Fault``: ``iteration`` is the number of steps taken
        before it; ``kind``; for a gradient or parameter fault, ``index`` names the leaf, as a stopping
        fault's does; for a non-finite objective ``index`` and ``term`` are -1: a stopping fault's step is
        replayed to find the datum and term, a skipped one's is not); ``kind`` 0 and ``iteration`` -1 when
        none was skipped.
    """

    count: jax.Array
    first: Fault


def no_skips() -> Skips:
    return Skips(jnp.array(0, jnp.int32), no_fault())


def no_fault() -> Fault:
    minus_one = jnp.array(-1, jnp.int32)
    return Fault(minus_one, jnp.array(NO_FAULT, jnp.int32), minus_one, minus_one)


@dataclasses.dataclass(frozen=True)
class Result:
    """What ``jaxvi.infer`` returns. A pytree: results of vmapped fits stack along a leading axis.

    Attributes:
      params: the fitted parameters θ.
      objective: the quantity the method maximised, at ``params``: log p(D | θ) for EM, the
        ELBO for SVI and amortized inference (+ log p(θ) with a prior).
      trace: the objective per iteration, padded with ``objective`` after the last. For EM,
        ``(max_iter + 1,)``: log p(D | θ_s) for s = 0 .. n_iter, the last being ``objective``.
      n_iter: iterations run (for EM: M-steps taken).
      converged: whether the stopping tolerance was met before ``max_iter`` (a stop where a step changed the
        objective by less than its float type resolves is not: ``diagnostics.stop_reason``).
      diagnostics: method-specific details (``EMDiagnostics``, ``SVIDiagnostics``, ``AmortizedDiagnostics``).
      model: the model that was fitted (static).
      method: the method's settings (its numbers are leaves of the pytree: a vmapped fit stacks them).
      guide_params: the variational parameters: ψ of an SVI fit, the encoder of an amortized one
        (None for EM).
      datum: the shapes of one datum of the data ``jaxvi.infer`` was given (a ``jaxvi.model.DatumShapes``;
        static), which data handed to ``posterior`` must share; None where unknown.
    """

    params: PyTree
    objective: jax.Array
    trace: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    diagnostics: Any
    model: Any
    method: Any
    guide_params: PyTree = None
    datum: Any = None

    def posterior(self, data: PyTree | None = None):
        """The fitted posterior.

        EM: the exact posterior p(z_i | x_i, θ) of every datum of ``data`` at the fitted θ: for
        ``Discrete`` latents a ``DiscretePosterior`` (``.probs`` are the ``(N, K)``
        responsibilities), for ``Markov`` a ``ChainPosterior`` (``.marginals``, ``.mode()``,
        ``.sample(key)``), for ``Gaussian`` a ``GaussianPosterior`` (``.mean``, ``.covariance``).
        Every one has ``.log_evidence``, the per-datum log p(x_i), and ``.expect(f, data)``.

        SVI: the fitted guide, a ``FittedGuide`` (``.sample(key, n)``, ``.mean()``, ``.stddev()``),
        one q for a global latent or one per training datum; ``data`` is not needed (for a
        latent that was summed out, the exact posterior on ``data``).

        Raises:
          ValueError: ``data`` that the model (or the encoder) cannot take, e.g. another number of
            features than the fitted data's, or a datum without its leading datum axis.
        """
        from jaxvi.run.compiled import run_once_options  # not at the top: jaxvi.run's loop imports this module

        data = None if data is None else check_new_data(self.model, self.params, data, self.datum)
        if is_traced(data, self.params):
            return self.method.posterior(self, data)
        options = run_once_options(self.params, self.guide_params, data,
                                   passes=getattr(self.method, "posterior_passes", 1))
        posterior = jax.jit(_method_posterior, compiler_options=options)
        try:  # traced abstractly first: data the model cannot take are a ValueError, not an error from XLA
            posterior.eval_shape(self, data)
        except ValueError:
            raise
        except Exception as err:
            shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape), data)
            raise ValueError(f"data: expected data whose every datum the fitted model takes (as the data it was "
                             f"fitted to), got shapes {shapes}, on which the posterior failed: {err}") from None
        return posterior(self, data)

    def summary(self) -> str:
        """A table a person reads: the method, the objective and what it is, iterations, and the
        method's diagnostics (evidence, gap, held-out ELBO, faults); parameters by shape."""
        d, name = self.diagnostics, self.method.reports
        rows = [("method", repr(_as_given(self.method))), ("latent", repr(self.model.latent)),
                (f"objective ({name})", _number(self.objective)), ("iterations", _number(self.n_iter)),
                ("converged", str(bool(jnp.all(self.converged))))]
        for field in ("elbo_stderr", "log_evidence", "gap", "heldout_elbo", "epochs", "m_step_rejections"):
            if hasattr(d, field):
                value = getattr(d, field)
                unknown = field in ("log_evidence", "gap") and bool(jnp.all(jnp.isnan(jnp.asarray(value))))
                rows.append((field.replace("_", " "), "not available (no exact evidence for this model)" if unknown
                             else _number(value)))
        if hasattr(d, "stop_reason"):
            from jaxvi.run.schedule import STOP_REASONS
            rows.append(("stopped at", ", ".join(STOP_REASONS[int(r)] for r in jnp.ravel(d.stop_reason))))
        fault = d.fault
        rows.append(("fault", "none" if int(jnp.max(fault.kind)) == 0 else
                     f"kind {int(jnp.max(fault.kind))} at iteration {int(jnp.max(fault.iteration))}"))
        skips = getattr(d, "skips", None)
        if skips is not None:
            rows.append(("skipped steps", _number(skips.count)))
        for path, leaf in jax.tree_util.tree_flatten_with_path(self.params)[0]:
            rows.append((f"params{jax.tree_util.keystr(path)}", f"{jnp.shape(leaf)} {jnp.result_type(leaf)}"))
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)

    def to_arviz(self, data: PyTree, *, key: jax.Array, num_draws: int = 1000, num_chains: int = 4):
        """This fit on ``data`` as an ``arviz.InferenceData``: ``num_chains`` x ``num_draws`` independent
        posterior draws (global and local latents), pointwise log-likelihoods (for ``arviz.loo``), the data, and the fit's objective
        in ``attrs`` (``jaxvi.export``). Needs arviz (``pip install 'jaxvi[arviz]'``)."""
        from jaxvi.export import to_arviz

        return to_arviz(self, data, key=key, num_draws=num_draws, num_chains=num_chains)

    def save(self, path) -> None:
        """Writes the arrays of this result (params, guide_params, objective, trace, n_iter, converged,
        diagnostics, the method's numbers; PRNG keys with their implementation) to an ``.npz`` file,
        atomically: a temporary file beside it, renamed over it, removed if anything fails.
        ``jaxvi.load(path, like=result)`` reads them back.

        Raises:
          ValueError: ``path`` is a directory, or no file can be written there.
        """
        from jaxvi.io import save

        save(self, path)


jax.tree_util.register_dataclass(
    Result,
    data_fields=["params", "objective", "trace", "n_iter", "converged", "diagnostics", "guide_params", "method"],
    meta_fields=["model", "datum"],
)


def _method_posterior(result: Result, data):
    return result.method.posterior(result, data)


def _as_given(method):
    """``method`` with each number a fit holds as a 0-d array (``tol=Array(0.001, dtype=float32)``) shown as the
    shortest Python number its dtype reads back (``tol=0.001``), as the settings were given; a vmapped fit's
    stacked numbers and abstract ones as they are."""
    def plain(leaf):
        if isinstance(leaf, jax.Array) and leaf.shape == () and not is_traced(leaf):
            value = np.asarray(leaf)
            if value.dtype.kind != "f":
                return value.item()
            return float(np.format_float_positional(value[()], unique=True))
        return leaf

    return jax.tree_util.tree_map(plain, method)


def _number(value) -> str:
    array = jnp.asarray(value)
    if array.size == 1:
        return f"{float(array):.6g}" if jnp.issubdtype(array.dtype, jnp.floating) else str(array.item())
    return str(jax.device_get(array).round(6).tolist())
