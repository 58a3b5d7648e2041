r"""The run: one compiled loop that drives any method's ``init`` / ``step`` / ``finalize``.

The run owns everything that is not the algorithm: the step keys, the minibatches and epochs, the
trace of the objective, the stopping rule, held-out scoring with patience, and the fault guard.
A faulty step stops the run, or, while ``max_skips`` allows (``jaxvi.infer(..., on_nonfinite="skip")``),
is skipped: its state is the one it started from, and the next try draws fresh keys. The run keeps
one copy of the last state whose objective was finite (``Kept``); when the final evaluation
(``finalize``) of the state it ends with is not finite (its objective or a parameter leaf), the
result is that kept state's instead, so that a result is finite
even when it reports a fault. Its steps run inside one ``lax.while_loop``; with a progress bar or
checkpoints, the host drives the same compiled loop in chunks (``drive``).

Randomness, so a user's own loop can reproduce a run: a restart's key splits into
``(init_key, run_key)``; step t uses ``step_keys(run_key, t) = (step_key, batch_key)`` (after skipped
steps, t counts the tries: ``attempt``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxvi.chunks import minibatch
from jaxvi.data import Batch, num_data
from jaxvi.methods.common import float_dtype, tree_where
from jaxvi.result import FAULT_FINAL_OBJECTIVE, NO_FAULT, Fault, Result, Skips, no_fault, no_skips
from jaxvi.run.schedule import (STOP_FAULT, STOP_MAX_STEPS, STOP_PATIENCE, STOP_RESOLUTION, STOP_RUNNING,
                                STOP_TOLERANCE)

__all__ = ["Kept", "RunState", "STOP_FAULT", "STOP_MAX_STEPS", "STOP_PATIENCE", "STOP_RESOLUTION", "STOP_RUNNING",
           "STOP_TOLERANCE", "drive", "draw_batch", "epoch_order", "finish", "run_until", "start", "step_keys", "take"]

PyTree = Any
_SPLIT_STREAM = 2 ** 31 - 1  # fold_in data of the held-out split's key
_FINAL_STREAM = 2 ** 31 - 2  # ... of finalize's key


class Heldout(NamedTuple):
    """Held-out scoring between epochs: every epoch's score, the best, epochs since it, its state."""

    trace: jax.Array
    best: jax.Array
    stale: jax.Array
    best_state: PyTree


class Kept(NamedTuple):
    """The last state whose objective was finite (a step's ``info.objective``: its estimate, on its
    batch), that objective, and the steps taken to reach it (-inf and 0 before the first step).

    Kept at the cost of the step itself: the method's per-datum fields (``method.per_datum``, which a
    step on a minibatch changes only at the batch's rows) are kept as the rows of ``index`` alone (all
    rows without a minibatch), the rest of the state whole. ``_restore`` puts the rows back into the
    run's state, which differs from the kept one at those rows only.
    """

    state: PyTree
    index: jax.Array | None
    objective: jax.Array
    n_iter: jax.Array


class RunState(NamedTuple):
    """One run between steps.

    Attributes:
      state: the method's state.
      key: the run key (step t's keys are ``step_keys(key, t)``).
      n_iter: steps taken.
      trace: ``(max_steps,)`` the objective of every step (``info.objective``).
      monitor: the stopping rule's state.
      order: epochs: ``(train_index, heldout_index, this epoch's order)``; else ().
      heldout: a ``Heldout`` with held-out data, else ().
      done: the run has stopped.
      converged: the stopping tolerance (or held-out patience) was met; a stop at the float
        resolution (``STOP_RESOLUTION``) is not convergence.
      stop_reason: ``STOP_*``: why the run stopped (``STOP_RUNNING`` while it runs).
      fault: the first numerical fault (it stopped the run).
      kept: a ``Kept``: the last state whose objective was finite.
      max_skips: how many faulty steps the run may skip before a fault stops it (0: none; traced).
      skips: a ``Skips``: the steps skipped so far and the first one's fault.
    """

    state: PyTree
    key: jax.Array
    n_iter: jax.Array
    trace: jax.Array
    monitor: PyTree
    order: PyTree
    heldout: PyTree
    done: jax.Array
    converged: jax.Array
    stop_reason: jax.Array
    fault: Fault
    kept: Kept
    max_skips: jax.Array
    skips: Skips


def step_keys(run_key: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(step_key, batch_key)`` of step ``step``: ``run_key`` folded with 2 step and 2 step + 1, two hashes of which a
    step compiles only those it uses (a full-data step draws no batch). Below 2^29 steps they stay clear of the run's
    other streams (the split's and the final evaluations', folded from 2^31 - 1 down)."""
    return jax.random.fold_in(run_key, 2 * step), jax.random.fold_in(run_key, 2 * step + 1)


def epoch_order(run_key: jax.Array, epoch: jax.Array, train_index: jax.Array) -> jax.Array:
    """The training data's order in epoch ``epoch``: sorted by i.i.d. uniform keys."""
    u = jax.random.uniform(jax.random.fold_in(jax.random.fold_in(run_key, _SPLIT_STREAM), epoch + 1),
                           train_index.shape)
    return train_index[jnp.argsort(u)]


def start(method, model, key: jax.Array, data: PyTree, params: PyTree | None, max_skips=0) -> RunState:
    """The run before its first step: the method's ``init`` and the run's own state; ``max_skips`` faulty
    steps may be skipped before a fault stops the run."""
    schedule = method.schedule(num_data(data))
    init_key, keys = jax.random.split(key)
    state = method.init(model, init_key, data, params)
    dtype = float_dtype(data)
    order, heldout = (), ()
    if schedule.epochs:
        n = num_data(data)
        permutation = epoch_order(keys, jnp.array(-1), jnp.arange(n))
        train_index, heldout_index = permutation[: n - schedule.num_heldout], permutation[n - schedule.num_heldout:]
        order = (train_index, heldout_index, epoch_order(keys, jnp.array(0), train_index))
        if schedule.num_heldout:
            heldout = Heldout(jnp.full(_num_epochs(schedule, n), jnp.nan, dtype), jnp.array(-jnp.inf, dtype),
                              jnp.array(0, jnp.int32), state)
    index = jnp.arange(schedule.batch_size) if _indexed(schedule, num_data(data)) else None  # any rows, at first
    kept = Kept(_rows(method, state, index), index, jnp.array(-jnp.inf, dtype), jnp.array(0, jnp.int32))
    return RunState(state, keys, jnp.array(0, jnp.int32), jnp.zeros(schedule.max_steps, dtype),
                    schedule.stopping.init(dtype), order, heldout, jnp.array(False), jnp.array(False),
                    jnp.array(STOP_RUNNING, jnp.int32), no_fault(), kept, jnp.asarray(max_skips, jnp.int32),
                    no_skips())


def attempt(run: RunState) -> jax.Array:
    """The number of steps tried so far, taken or skipped: the next step's keys are ``step_keys(key, attempt)``,
    so a step retried after a skip draws fresh ones (without skips it is ``n_iter``)."""
    return run.n_iter + run.skips.count


def advance(method, model, data: PyTree, run: RunState) -> RunState:
    """One step of the run: draw the batch, step the method, record, test the stopping rules, keep the
    state if its objective was finite. A faulty step (the method returns the state it started from) is
    skipped while ``run.max_skips`` allows, else it stops the run."""
    n = num_data(data)
    schedule = method.schedule(n)
    step_key, batch_key = step_keys(run.key, attempt(run))
    batch = draw_batch(schedule, data, run, batch_key)
    state, info = method.step(model, step_key, run.state, batch, num_data=n - schedule.num_heldout)
    ok = info.fault.kind == NO_FAULT
    skip = ~ok & (run.skips.count < run.max_skips)
    this_fault = info.fault._replace(iteration=run.n_iter.astype(jnp.int32))
    skips = Skips(run.skips.count + skip.astype(jnp.int32),
                  tree_where(skip & (run.skips.count == 0), this_fault, run.skips.first))
    objective = info.objective.astype(run.trace.dtype)
    n_iter = run.n_iter + ok.astype(jnp.int32)
    monitor, stop = schedule.stopping.update(run.monitor, objective, n_iter, n)
    monitor = tree_where(ok, monitor, run.monitor)
    stopped, converged = ok & (stop != STOP_RUNNING), ok & (stop == STOP_TOLERANCE)
    order, heldout, patience_out = run.order, run.heldout, jnp.array(False)
    if schedule.epochs:
        per_epoch = _steps_per_epoch(schedule, n)
        epoch_end = ok & (n_iter % per_epoch == 0)
        train_index, heldout_index, current = run.order
        order = (train_index, heldout_index,
                 lax.cond(epoch_end, lambda: epoch_order(run.key, n_iter // per_epoch, train_index), lambda: current))
        if schedule.num_heldout:
            heldout = _score_heldout(method, model, data, run, state, epoch_end, n_iter // per_epoch - 1,
                                     heldout_index)
            patience = schedule.patience
            patience_out = jnp.array(False) if patience is None else heldout.stale >= patience
    at_end = n_iter >= schedule.max_steps
    # int32, not weakly typed: ``done`` then keeps the type ``start`` gave it, and a chunked run compiles once
    reason = jnp.select([~ok & ~skip, stopped, patience_out, at_end],
                        [STOP_FAULT, stop, STOP_PATIENCE, STOP_MAX_STEPS], STOP_RUNNING).astype(jnp.int32)
    index = batch.index if isinstance(batch, Batch) else None
    kept = tree_where(jnp.isfinite(objective), Kept(_rows(method, run.state, index), index, objective, run.n_iter),
                      run.kept)
    return RunState(state, run.key, n_iter, jnp.where(ok, run.trace.at[run.n_iter].set(objective), run.trace),
                    monitor, order, heldout, reason != STOP_RUNNING, converged | patience_out,
                    reason, tree_where(ok | skip, no_fault(), this_fault), kept, run.max_skips, skips)


def run_until(method, model, data: PyTree, run: RunState, stop: jax.Array) -> RunState:
    """Steps while ``n_iter < stop`` and the run is not done."""
    return lax.while_loop(lambda r: (r.n_iter < stop) & ~r.done, lambda r: advance(method, model, data, r), run)


def finish(method, model, data: PyTree, run: RunState) -> Result:
    """The method's ``finalize`` (of the best epoch's state, with held-out patience), completed with
    the run's record: the trace, steps, convergence, why it stopped, and the fault.

    A final evaluation that is not finite (``finalize``'s own fault: its objective or a parameter
    leaf) is a fault of the run, and the result is then the kept state's (``Kept``): its
    ``finalize``, with the kept step's objective where that evaluation is not finite either.
    """
    n = num_data(data)
    schedule = method.schedule(n)
    state = run.heldout.best_state if isinstance(run.heldout, Heldout) else run.state
    fitted = take(data, run.order[0]) if schedule.num_heldout else data  # the training data
    kept = run.kept._replace(state=_restore(method, run.kept, run.state))
    result, bad = _finalize(method, model, jax.random.fold_in(run.key, _FINAL_STREAM), state, kept, fitted)
    final_fault = result.diagnostics.fault
    if schedule.num_heldout:  # a datum of the training data, as an index of the data given
        names_datum = (final_fault.kind == FAULT_FINAL_OBJECTIVE) & (final_fault.index >= 0)
        final_fault = final_fault._replace(index=jnp.where(names_datum, run.order[0][final_fault.index],
                                                           final_fault.index).astype(jnp.int32))
    fault = jax.tree_util.tree_map(lambda a, b: jnp.where(run.fault.kind != NO_FAULT, a, b), run.fault,
                                   final_fault._replace(iteration=jnp.where(bad, run.n_iter, -1).astype(jnp.int32)))
    ahead = 1 if schedule.evaluates_ahead else 0
    n_iter = jnp.maximum(jnp.where(bad, run.kept.n_iter, run.n_iter) - ahead, 0)
    trace = jnp.where(jnp.arange(schedule.max_steps) < n_iter, run.trace, result.objective)
    record = {"fault": fault, "restart_objectives": result.objective[None], "stop_reason": run.stop_reason,
              "skips": run.skips}
    if schedule.epochs:
        record["epochs"] = run.n_iter // _steps_per_epoch(schedule, n)
    if isinstance(run.heldout, Heldout):
        record.update(heldout_trace=run.heldout.trace, heldout_elbo=run.heldout.best)
    diagnostics = result.diagnostics._replace(**{k: v for k, v in record.items() if k in result.diagnostics._fields})
    return dataclasses.replace(result, trace=trace, n_iter=n_iter, converged=run.converged & ~bad,
                               diagnostics=diagnostics)


def _restore(method, kept: Kept, state: PyTree) -> PyTree:
    """The kept state: ``kept.state`` with its per-datum fields those of ``state`` with the kept rows put back."""
    fields = {name: _put_rows(getattr(state, name), kept.index, getattr(kept.state, name)) for name in method.per_datum}
    return kept.state._replace(**fields) if fields else kept.state


def _rows(method, state: PyTree, index: jax.Array | None) -> PyTree:
    """``state`` with each per-datum field cut to the rows ``index`` (all of them for ``index`` None)."""
    if index is None or not method.per_datum:
        return state
    return state._replace(**{name: jax.tree_util.tree_map(lambda a: a[index], getattr(state, name))
                             for name in method.per_datum})


def _put_rows(tree: PyTree, index: jax.Array | None, rows: PyTree) -> PyTree:
    if index is None:
        return rows
    return jax.tree_util.tree_map(lambda a, r: a.at[index].set(r), tree, rows)


def _finalize(method, model, key: jax.Array, state: PyTree, kept: Kept, data: PyTree) -> tuple[Result, jax.Array]:
    """``(result, from_kept)``: ``finalize`` of ``state``, or, if that is not finite (its own fault), of
    the kept state, with the kept step's objective where that is not finite either. The result's fault
    is the first evaluation's.

    The two calls are one ``lax.while_loop`` of at most two turns: ``finalize`` compiles once, and a
    healthy run evaluates it once. It is traced once too: a nested ``jit``, whose trace the loop's initial
    carry (its shapes) and the loop's body share."""
    evaluate = jax.jit(lambda key, state, data: method.finalize(model, key, state, data))

    def turn(carry):
        i, first = carry
        result = evaluate(key, tree_where(i == 0, state, kept.state), data)
        objective = jnp.where(jnp.isfinite(result.objective) | (i == 0), result.objective,
                              kept.objective.astype(result.objective.dtype))
        fault = tree_where(i == 0, result.diagnostics.fault, first.diagnostics.fault)
        return i + 1, dataclasses.replace(result, objective=objective,
                                          diagnostics=result.diagnostics._replace(fault=fault))

    def again(carry):
        i, result = carry
        return (i == 0) | ((i == 1) & (result.diagnostics.fault.kind != NO_FAULT))

    empty = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(evaluate, key, state, data))
    turns, result = lax.while_loop(again, turn, (jnp.array(0), empty))
    return result, turns == 2


def drive(run_chunk: Callable[[RunState, jax.Array], RunState], run: RunState, max_steps: int, *,
          progress: bool, desc: str = "", describe: Callable[[RunState], str] | None = None,
          every: int | None = None, after_chunk: Callable[[RunState], None] | None = None) -> RunState:
    """Runs ``run_chunk(run, stop)`` until every run is done: in one call, or in chunks.

    ``stop`` only pauses a run between chunks (the compiled chunk is the same function with another
    stop, so it compiles once). ``run`` may carry a leading restart axis; the bar follows the slowest
    restart. A run that has already taken steps (a resumed checkpoint) continues from there. The host
    loop ends once every run is done or at ``max_steps``: every chunk advances each other run or
    stops it, so it ends for any state (a resumed one included).

    Args:
      progress: show a tqdm bar, fed between chunks.
      describe: the bar's text for a run.
      every: steps per chunk (default: a twentieth of ``max_steps``).
      after_chunk: called with the run after every chunk (to write a checkpoint).
    """
    end = max_steps + 1
    if not progress and after_chunk is None:
        return run_chunk(run, np.int32(end))
    chunk = every or max(1, math.ceil(max_steps / 20))
    stop = (int(np.min(np.asarray(run.n_iter))) // chunk + 1) * chunk
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, initial=int(np.max(np.asarray(run.n_iter))), desc=desc, unit="it",
                   dynamic_ncols=True)
    try:
        while not np.all(np.asarray(run.done) | (np.asarray(run.n_iter) >= max_steps)):
            run = run_chunk(run, np.int32(stop if stop < max_steps else end))
            stop += chunk
            if after_chunk is not None:
                after_chunk(run)
            if bar is not None:
                bar.update(int(np.max(np.asarray(run.n_iter))) - bar.n)
                if describe is not None:
                    bar.set_postfix_str(describe(run), refresh=False)
        if bar is not None:
            bar.total = bar.n  # close the bar at the steps run
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()
    return run


def draw_batch(schedule, data: PyTree, run: RunState, batch_key: jax.Array) -> PyTree:
    """All the data, or this step's ``Batch``: drawn uniformly without replacement, or the next slice
    of the epoch's order."""
    if schedule.batch_size is None:
        return data
    n = num_data(data)
    if schedule.epochs:
        position = run.n_iter % _steps_per_epoch(schedule, n)
        index = lax.dynamic_slice(run.order[2], (position * schedule.batch_size,), (schedule.batch_size,))
    elif schedule.batch_size == n:
        return data
    else:
        index = minibatch(batch_key, n, schedule.batch_size)
    return Batch(index, take(data, index))


def _score_heldout(method, model, data, run: RunState, state, epoch_end, epoch, heldout_index) -> Heldout:
    """At an epoch's end, the held-out score; the best one and its state; epochs since it improved."""
    nan = jnp.array(jnp.nan, run.trace.dtype)
    key = jax.random.fold_in(run.key, _FINAL_STREAM - 1 - run.n_iter)
    score = lax.cond(epoch_end, lambda: method.evaluate(model, key, state, take(data, heldout_index)).astype(nan.dtype),
                     lambda: nan)
    improved = epoch_end & (score > run.heldout.best)
    stale = jnp.where(epoch_end, jnp.where(improved, 0, run.heldout.stale + 1), run.heldout.stale)
    best_state = tree_where(improved, state, run.heldout.best_state)
    return Heldout(jnp.where(epoch_end, run.heldout.trace.at[jnp.maximum(epoch, 0)].set(score), run.heldout.trace),
                   jnp.where(improved, score, run.heldout.best), stale.astype(jnp.int32), best_state)


def take(data: PyTree, index: jax.Array) -> PyTree:
    """Rows ``index`` of every leaf."""
    return jax.tree_util.tree_map(lambda a: a[index], data)


def _indexed(schedule, n: int) -> bool:
    """Whether ``draw_batch`` draws a ``Batch`` (a minibatch with its index) rather than all the data."""
    return schedule.batch_size is not None and (schedule.epochs or schedule.batch_size != n)


def _steps_per_epoch(schedule, n: int) -> int:
    return max(1, (n - schedule.num_heldout) // schedule.batch_size)


def _num_epochs(schedule, n: int) -> int:
    return math.ceil(schedule.max_steps / _steps_per_epoch(schedule, n))
