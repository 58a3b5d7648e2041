"""``infer``: validate the inputs, initialise, run the compiled loop, finalise, pick the best restart."""
from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvi.data import num_data
from jaxvi.io import check_path
from jaxvi.methods.protocol import Method
from jaxvi.model import (Model, check_data, check_init_params, check_key, check_model, datum_shapes, is_traced,
                          validate_data)
from jaxvi.parallel import shard_data
from jaxvi.result import FAULT_OBJECTIVE, Result
from jaxvi.run import checkpoint as checkpoints
from jaxvi.run import compiled, loop, stored
from jaxvi.run.compiled import CHEAP_CODE, per_fit
from jaxvi.run.guard import raise_on_fault, warn_on_skips
from jaxvi.run.schedule import RESOLUTION_ULPS, STOP_REASONS, STOP_RESOLUTION, Change, resolution

__all__ = ["infer"]

PyTree = Any


def infer(model: Model, method, data: PyTree, *, key: jax.Array, progress: bool = True,
          init_params: PyTree | None = None, mesh=None, checkpoint=None, checkpoint_every: int | None = None,
          on_nonfinite: str = "stop", max_skips: int = 100) -> Result:
    """Fits ``model`` to ``data`` with ``method``.

    Args:
      model: a ``jaxvi.Model``.
      method: the fitting method's settings, e.g. ``jaxvi.EM(max_iter=200)``. Its numbers
        (tolerances, learning rates) are traced: a new value does not recompile.
      data: an array or pytree of arrays; the leading axis of every leaf indexes the data.
      key: a PRNG key, ``jax.random.key(seed)`` or ``jax.random.PRNGKey(seed)``. Same key, same result.
      progress: show a progress bar. Ignored (off) when ``infer`` runs inside ``jit`` or ``vmap``:
        with ``progress=False`` infer is a pure JAX function that can be vmapped over data, keys
        or the method's numbers.
      init_params: initial parameters to start from instead of ``model.init(key, data)``
        (only with a single restart).
      mesh: a ``jax.sharding.Mesh``: the data's leading axis is split over its devices and every sum
        over data becomes an all-reduce (``jaxvi.parallel``). Data already sharded need none.
      checkpoint: a file path: the run is written there (atomically: a temporary file, then a
        rename) every ``checkpoint_every`` steps, and a rerun of the same fit that finds the file
        resumes from it, reaching the result of an uninterrupted run. The same fit means the same
        model (its functions' code and captured values, its latent spec), method settings, data,
        key and ``init_params`` (``jaxvi.run.checkpoint``); a file of any other fit is refused with
        a ``ValueError`` naming what differs, and so is a damaged one. A path where no file can be
        written fails before anything compiles.
      checkpoint_every: steps between checkpoints (default: a twentieth of the run).
      on_nonfinite: what a step whose objective, gradient or update is not finite does, for every method:
        ``"stop"`` (the default) stops the run there and raises (below); ``"skip"`` rejects the update
        (the state stays as it was), counts it, and goes on with fresh keys and a fresh minibatch, for
        a model that is NaN on rare draws. ``result.diagnostics.skips`` holds the count and the first
        skipped step's fault (step, datum or term or parameter leaf), and a warning says the same. A
        deterministic step (EM, full-batch CAVI) fails again when retried, so it stops after the limit.
      max_skips: with ``"skip"``, the steps that may be skipped; the next faulty step stops the run
        (traced: a new value does not recompile).

    Returns:
      A ``jaxvi.Result``.

    Raises:
      ValueError: bad input (named in the message), or initial parameters at which the
        log-joint is not finite.
      FloatingPointError: the fit hit a non-finite log evidence or parameters; the message says
        the iteration and the datum or parameter leaf, and ``err.result`` holds the last finite fit.

    Example:
      >>> result = jaxvi.infer(model, jaxvi.EM(), data, key=jax.random.key(0))
      >>> result.objective, result.posterior(data).probs
    """
    data = check_data(data)
    if mesh is not None:
        data = shard_data(data, mesh)
    key = check_key(key)
    if isinstance(method, type) or not isinstance(method, Method):
        raise ValueError(f"method: expected a jaxvi method such as jaxvi.EM(), got {method!r}")
    if init_params is not None:
        check_init_params(init_params)
    stored.check_once(check_model, model, data, key, init_params)  # passed before on the same model and shapes: skipped
    validate_data(model, data)  # the data's values: every call
    method.check(model, data)
    if init_params is not None and method.n_init > 1:
        raise ValueError(f"init_params: a single starting point needs n_init=1, got n_init={method.n_init}")
    traced = is_traced(data, key, init_params, method)
    if checkpoint is not None and traced:
        raise ValueError("checkpoint: files cannot be written from inside jit or vmap; checkpoint a plain infer call")
    if checkpoint is not None:
        checkpoint = check_path(checkpoint, "checkpoint")  # an unwritable path fails here, before compiling
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every: expected an integer >= 1 or None, got {checkpoint_every!r}")
    if on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"on_nonfinite: expected 'stop' or 'skip', got {on_nonfinite!r}")
    if isinstance(max_skips, bool) or not isinstance(max_skips, (int, np.integer)) or not 1 <= max_skips < 2**31:
        raise ValueError(f"max_skips: expected an integer >= 1, got {max_skips!r}")
    skips = np.int32(max_skips if on_nonfinite == "skip" else 0)  # a host number: no eager op to compile
    # compiled in three parts: the start, the run (in chunks with a progress bar or checkpoints), the final evaluation
    n = num_data(data)
    max_steps = method.schedule(n).max_steps
    runs, after_chunk = None, None
    if checkpoint is not None:
        fit = checkpoints.fingerprint(model, method, data, key, init_params)
        if os.path.exists(checkpoint):  # checked against the fit and the state's shapes, before compiling
            like = functools.partial(jax.eval_shape, functools.partial(_start, model), method, data, key,
                                     init_params, skips)
            runs = checkpoints.resume(checkpoint, like, fit, max_steps, n)
            runs = runs._replace(max_skips=jnp.broadcast_to(skips, runs.max_skips.shape))  # this call's policy
        after_chunk = lambda r: checkpoints.save(checkpoint, r, fit)  # noqa: E731
    if runs is None:
        start = _start_cheaply if _runs_cheaply(method, data, compiled.START_PASSES) else _start
        runs = start(model, method, data, key, init_params, skips)
        if hasattr(method, "check_start") and not traced:  # what only the start's reads find, before the run compiles
            method.check_start(model, data, runs.state)
    run = _run_cheaply if _runs_cheaply(method, data, max_steps, runs.state) else _run
    runs = loop.drive(lambda r, stop: run(model, method, r, data=data, stop=stop), runs, max_steps,
                      progress=progress and not traced, desc=type(method).__name__,
                      describe=functools.partial(_describe, method.reports, n), every=checkpoint_every,
                      after_chunk=after_chunk)
    finish = _finish_cheaply if compiled.runs_once_cheaply(data, passes=method.n_init) else _finish  # once per restart
    result, chosen = finish(model, method, runs, data)
    result = dataclasses.replace(result, datum=datum_shapes(data))  # what data its posterior takes
    if not traced:
        if int(result.diagnostics.fault.kind) == FAULT_OBJECTIVE and hasattr(method, "explain"):
            run = jax.tree_util.tree_map(lambda a: a[int(chosen)], runs)
            result = dataclasses.replace(result, diagnostics=result.diagnostics._replace(
                fault=_explain(model, method, run, data)))
        raise_on_fault(result)
        warn_on_skips(result)
        _warn_unresolved(method, result, num_data(data))
    return result


def _warn_unresolved(method, result: Result, n: int) -> None:
    """Warns when a ``Change`` tolerance was finer than the float type resolves of the final objective
    (``jaxvi.run.schedule.resolution``): such a tolerance cannot be tested, and the run stopped at the
    resolution (``STOP_RESOLUTION``, not converged) or at max_iter."""
    stopping = method.schedule(n).stopping
    if not isinstance(stopping, Change) or not float(stopping.tol) > 0:
        return
    objective = np.asarray(result.objective)  # on the host: no operation for JAX to compile for one number
    least = float(resolution(objective))
    if not np.isfinite(least) or bool(stopping.resolves(objective, n)):
        return
    reason = int(result.diagnostics.stop_reason)
    how = ("The run stopped when a step changed it by less than that resolution: Result.converged is False, "
           "stop reason 'resolution'." if reason == STOP_RESOLUTION else
           f"The tolerance could not be tested; the run stopped at {STOP_REASONS[reason]}.")
    warnings.warn(f"{type(method).__name__}(tol={float(stopping.tol):g}): a change of {method.reports} below tol per "
                  f"datum, {float(stopping.tol) * n:.3g} in total over {n} data, is finer than {objective.dtype} "
                  f"resolves of {method.reports} = {float(objective):.7g}: {least:.3g} in total, {least / n:.3g} per "
                  f"datum ({RESOLUTION_ULPS} units in its last place). {how} Pass tol >= {least / n:.2g}, or fit in "
                  f"float64 (jax.config.update('jax_enable_x64', True) and float64 data).", stacklevel=3)


def _start_restarts(model, method, data, key, init_params, max_skips=0):
    """Every restart's start, from ``jax.random.split(key, n_init)`` (``key`` itself for one restart)."""
    keys = key[None] if method.n_init == 1 else jax.random.split(key, method.n_init)
    return _over_restarts(lambda k: loop.start(method, model, k, data, init_params, max_skips), keys, method, model)


def _run_restarts(model, method, runs, *, data, stop):
    return _over_restarts(lambda r: loop.run_until(method, model, data, r, stop), runs, method, model)


_start = per_fit(_start_restarts)
_start_cheaply = per_fit(_start_restarts, options=CHEAP_CODE)
_run = per_fit(_run_restarts)
_run_cheaply = per_fit(_run_restarts, options=CHEAP_CODE)


def _finish_restarts(model, method, runs, data) -> tuple[Result, jax.Array]:
    """Finalises every restart and keeps the one with the highest finite objective."""
    results = _over_restarts(lambda r: loop.finish(method, model, data, r), runs, method, model)
    healthy = (results.diagnostics.fault.kind == 0) & jnp.isfinite(results.objective)
    best = jnp.argmax(jnp.where(healthy, results.objective, -jnp.inf))
    chosen = jax.tree_util.tree_map(lambda a: a[best], results)
    diagnostics = chosen.diagnostics._replace(restart_objectives=results.objective)
    return dataclasses.replace(chosen, diagnostics=diagnostics), best


_finish = per_fit(_finish_restarts)
_finish_cheaply = per_fit(_finish_restarts, options=CHEAP_CODE)


def _runs_cheaply(method, data: PyTree, passes: int, states: PyTree = None) -> bool:
    """Whether the start or the run is compiled for XLA's cheapest code (``CHEAP_CODE``): where the data of every
    restart, with the restarts' ``states`` (for the run; they carry the restart axis), times the passes (the run's
    steps; ``compiled.START_PASSES``) are at most ``compiled.CHEAP_RUN_BYTES``."""
    touched = compiled.nbytes(data) * method.n_init + compiled.nbytes(states)
    return touched * passes <= compiled.CHEAP_RUN_BYTES


@functools.partial(per_fit, options=CHEAP_CODE)
def _explain(model, method, run, data):
    """The fault of a run stopped by a non-finite objective, completed by the method's ``explain``
    (which term, which datum): the faulty step replayed with its keys and batch (run once: ``CHEAP_CODE``)."""
    n = num_data(data)
    step_key, batch_key = loop.step_keys(run.key, loop.attempt(run))  # the run stopped at the faulty step
    batch = loop.draw_batch(method.schedule(n), data, run, batch_key)
    return method.explain(model, step_key, run.state, batch, num_data=n)._replace(iteration=run.fault.iteration)


def _over_restarts(fn, batched: PyTree, method, model) -> PyTree:
    """``jax.vmap(fn)(batched)`` over the leading restart axis; with one restart, ``fn`` on it unbatched
    (the same result, without batching the loop: faster to trace, and its ``lax.cond`` stays a branch); one
    restart after another (``lax.map``) where the method says so for ``model`` (its ``restarts_in_sequence``)."""
    if jax.tree_util.tree_leaves(batched)[0].shape[0] == 1:
        out = fn(jax.tree_util.tree_map(lambda a: a[0], batched))
        return jax.tree_util.tree_map(lambda a: a[None], out)
    if hasattr(method, "restarts_in_sequence") and method.restarts_in_sequence(model):
        return jax.lax.map(fn, batched)
    return jax.vmap(fn)(batched)


def _describe(reports: str, n: int, runs) -> str:
    """The progress bar's text: the best restart's latest objective per datum (each restart's own last
    step: restarts that stopped early hold zeros past it)."""
    steps = np.maximum(np.asarray(runs.n_iter) - 1, 0)
    last = np.take_along_axis(np.asarray(runs.trace), steps[:, None], axis=1)[:, 0]
    return f"{reports}/N={float(np.max(last)) / n:.5g}"
