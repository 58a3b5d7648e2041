r"""Stochastic VI on data streamed from the host: a corpus larger than memory, read a minibatch at a time.

``stream(model, jaxvi.CAVI(batch_size=B), minibatches, num_data=N, key=key)`` takes the minibatches from any
iterable (a generator reading chunks of a file, a data loader: gensim's streamed corpora are used this way) and
runs one step on each: the minibatch is moved to the device, stepped by the method's ``step`` (compiled once
for every minibatch, as ``jax.jit`` caches it), and let go. Memory holds the state and one minibatch (two while
the next one is read), whatever N is. The steps are those of a run on the same minibatches in memory: step t
uses ``step_keys(run_key, t)``'s step key (CAVI is deterministic and uses none).
"""
from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import jax
import numpy as np

from jaxvi.data import num_data as num_data_of
from jaxvi.model import Model, check_data, validate_data
from jaxvi.result import NO_FAULT
from jaxvi.run.compiled import compiler_options
from jaxvi.run.loop import step_keys

__all__ = ["Streamed", "stream"]

PyTree = Any


class Streamed(NamedTuple):
    """A streamed fit.

    Attributes:
      state: the method's state after the last minibatch (for CAVI: ``state.factors`` the global factors, to be
        evaluated on data of the user's choosing with ``CAVI.bound``).
      objectives: every step's objective, the estimate of the bound on all N data from its minibatch, ``(steps,)``.
    """

    state: PyTree
    objectives: np.ndarray


def stream(model: Model, method, minibatches: Iterable[PyTree], *, num_data: int, key: jax.Array,
           params: PyTree | None = None, state: PyTree | None = None, progress: bool = True) -> Streamed:
    """Fits ``model`` by ``method`` (``jaxvi.CAVI(batch_size=B)``) one minibatch of ``minibatches`` at a time.

    Args:
      model: the model.
      method: ``jaxvi.CAVI`` with ``batch_size`` B: stochastic natural-gradient VI (its ``max_iter`` is unused:
        there is one step per minibatch).
      minibatches: an iterable of minibatches, each a pytree of arrays with B rows, all of one structure, shape
        and dtype (a shorter last chunk: drop it or pad it to B rows, as ``CAVI`` steps on B rows).
      num_data: N, the number of data the stream stands for (the minibatch's part of the bound is scaled by
        N / B).
      key: the run's key: split into ``(init_key, run_key)`` as ``jaxvi.infer`` does.
      params: θ to start from (None: ``model.init`` on the first minibatch); unused when ``state`` is given.
      state: the method's state to go on from (a previous stream's: another pass over the data, as gensim's
        ``passes``; or ``method.init``'s, altered), instead of ``method.init`` on the first minibatch scaled to N.
      progress: show a tqdm bar over the minibatches.

    Raises:
      ValueError: ``method`` is not ``CAVI`` with a ``batch_size``, ``num_data`` is not an integer >= B,
        ``minibatches`` is empty, or a minibatch differs from the first in structure, shape or dtype, holds a NaN
        or an infinite value, or values outside the model's support (``model.validate``: LDA's counts and word
        ids), named by its position, as ``jaxvi.infer`` checks its data; or the start's reads find the model not
        conjugate in a factor, or a prior not proper (``CAVI.check_start``), before a step compiles.
      FloatingPointError: a step was not finite (its minibatch's bound, or the factors it moved to): the step was
        not taken (the state stayed) and the stream went on; raised at its end, naming the first such minibatch,
        with ``err.streamed`` the ``Streamed`` fit.
    """
    from jaxvi.methods.cavi import CAVI

    if not isinstance(method, CAVI) or method.batch_size is None:
        raise ValueError(f"method: expected jaxvi.CAVI(batch_size=B) (stochastic VI, one step per minibatch), got "
                         f"{method!r}")
    if isinstance(num_data, bool) or not isinstance(num_data, (int, np.integer)) or num_data < method.batch_size:
        raise ValueError(f"num_data: expected an integer >= batch_size = {method.batch_size}, got {num_data!r}")
    batches = iter(minibatches)
    first = next(batches, None)
    if first is None:
        raise ValueError("minibatches: expected at least one minibatch, got an empty iterable")
    first = jax.device_put(_checked(model, first, 0))
    layout = _layout(first)
    if num_data_of(first) != method.batch_size:
        raise ValueError(f"minibatches: expected minibatches of batch_size = {method.batch_size} rows, got "
                         f"{num_data_of(first)} in minibatch 0")
    init_key, run_key = jax.random.split(key)
    method.check(model, first)
    options = compiler_options(model=model, method=method)
    if state is None:
        state = jax.jit(lambda k, d, p: method.init(model, k, d, p, num_data=int(num_data)),
                        compiler_options=options)(init_key, first, params)
        method.check_start(model, first, state)
    step = jax.jit(lambda s, d, t: method.step(model, step_keys(run_key, t)[0], s, d, num_data=int(num_data)),
                   compiler_options=options)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(desc="CAVI (streamed)", unit="batch")
    objectives, faults, batch, t = [], [], first, 0
    try:
        while batch is not None:
            state, info = step(state, batch, t)
            objectives.append(info.objective)     # device scalars: reading them here would wait for the step
            faults.append(info.fault.kind)
            t += 1
            if bar is not None:
                bar.update(1)
            batch = next(batches, None)           # the next minibatch is read while the step runs
            if batch is not None and _layout(batch) != layout:
                raise ValueError(f"minibatches: minibatch {t} is {_describe(_layout(batch))}; every minibatch must be "
                                 f"the first's {_describe(layout)}")
            if batch is not None:
                batch = jax.device_put(_checked(model, batch, t))
    finally:
        if bar is not None:
            bar.close()
    streamed = Streamed(state, np.asarray(jax.device_get(objectives)))
    faulty = np.flatnonzero(np.asarray(jax.device_get(faults)) != NO_FAULT)
    if faulty.size:
        err = FloatingPointError(f"minibatches: the step on minibatch {faulty[0]} was not finite (its bound, or the "
                                 f"factors it moved to), nor on {faulty.size - 1} more; those steps were not taken. "
                                 f"err.streamed holds the fit")
        err.streamed = streamed
        raise err
    return streamed


def _checked(model: Model, batch: PyTree, t: int) -> PyTree:
    """A minibatch checked as ``jaxvi.infer`` checks its data (``check_data``, ``validate_data``), the message
    naming its position."""
    try:
        batch = check_data(batch)
        validate_data(model, batch)
    except ValueError as err:
        raise ValueError(f"minibatches: minibatch {t}: {err}") from None
    return batch


def _layout(batch: PyTree) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(batch)
    return treedef, tuple((np.shape(a), np.dtype(getattr(a, "dtype", np.asarray(a).dtype))) for a in leaves)


def _describe(layout: tuple) -> str:
    treedef, leaves = layout
    return f"{treedef} with leaves " + ", ".join(f"{dtype}{list(shape)}" for shape, dtype in leaves)
