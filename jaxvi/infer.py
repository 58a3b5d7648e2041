"""``infer``: validate the inputs, initialise, run the compiled loop, finalise, pick the best restart."""
from __future__ import annotations

import dataclasses
import functools
import os
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvi import loop
from jaxvi.io import fill, load_tree, save_tree
from jaxvi.exact.chain import Sequences
from jaxvi.model import Model, check_data, check_key, check_model, is_traced
from jaxvi.parallel import shard_data
from jaxvi.result import (FAULT_LOG_EVIDENCE, FAULT_NOT_QUADRATIC, FAULT_OBJECTIVE, FAULT_PARAMS, OBJECTIVE_TERMS,
                           Result)

__all__ = ["infer"]

PyTree = Any


def infer(model: Model, method, data: PyTree, *, key: jax.Array, progress: bool = True,
          init_params: PyTree | None = None, mesh=None, checkpoint=None, checkpoint_every: int | None = None
          ) -> Result:
    """Fits ``model`` to ``data`` with ``method``.

    Args:
      model: a ``jaxvi.Model``.
      method: the fitting method's settings, e.g. ``jaxvi.EM(max_iter=200)``.
      data: an array or pytree of arrays; the leading axis of every leaf indexes the data.
      key: a PRNG key, ``jax.random.key(seed)`` or ``jax.random.PRNGKey(seed)``. Same key, same result.
      progress: show a progress bar. Ignored (off) when ``infer`` runs inside ``jit`` or ``vmap``:
        with ``progress=False`` infer is a pure JAX function that can be vmapped over data or keys.
      init_params: initial parameters to start from instead of ``model.init(key, data)``
        (only with a single restart).
      mesh: a ``jax.sharding.Mesh``: the data's leading axis is split over its devices and every sum
        over data becomes an all-reduce (``jaxvi.parallel``). Data already sharded need none.
      checkpoint: a file path: the method's state is written there (atomically: a temporary file,
        then a rename) every ``checkpoint_every`` iterations, and a rerun with the same arguments
        that finds the file resumes from it, reaching the result of an uninterrupted run.
      checkpoint_every: iterations between checkpoints (default: a twentieth of the run).

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
    if not hasattr(method, "init") or not hasattr(method, "step"):
        raise ValueError(f"method: expected a jaxvi method such as jaxvi.EM(), got {type(method).__name__}")
    check_model(model, data, key, init_params)
    method.check(model)
    if hasattr(method, "check_data"):
        method.check_data(data)
    if init_params is not None and method.n_init > 1:
        raise ValueError(f"init_params: a single starting point needs n_init=1, got n_init={method.n_init}")
    traced = is_traced(data, key, init_params)
    if checkpoint is not None and traced:
        raise ValueError("checkpoint: files cannot be written from inside jit or vmap; checkpoint a plain infer call")
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every: expected an integer >= 1 or None, got {checkpoint_every!r}")
    keys = key[None] if method.n_init == 1 else jax.random.split(key, method.n_init)
    if (progress or checkpoint is not None) and not traced:  # compiled in three parts, the loop in chunks
        states = _init(model, method, data, keys, init_params)
        after_chunk = None
        if checkpoint is not None:
            fingerprint = _fingerprint(method, data, keys)
            if os.path.exists(checkpoint):
                states = _resume(checkpoint, states, fingerprint)
            after_chunk = lambda s: save_tree(checkpoint, {"state": s}, fingerprint)  # noqa: E731
        run_chunk = functools.partial(_run, model, method, data=data)
        states = loop.drive(lambda s, stop: run_chunk(s, stop=stop), states, _max_iter(method, data),
                            progress=progress, desc=type(method).__name__,
                            describe=functools.partial(method.describe, n=_num_data(data)),
                            every=checkpoint_every, after_chunk=after_chunk)
        result = _finalize(model, method, states, data)
    else:  # one compiled call
        result = _fit(model, method, data, keys, init_params)
    if not traced:
        if hasattr(method, "diagnose") and int(result.diagnostics.fault.kind) == FAULT_OBJECTIVE:
            result = dataclasses.replace(result, diagnostics=result.diagnostics._replace(
                fault=method.diagnose(result, data)))
        _raise_on_fault(result)
    return result


@functools.partial(jax.jit, static_argnums=(0, 1))
def _fit(model, method, data, keys, init_params) -> Result:
    """``_init``, ``_run`` to the end and ``_finalize`` in one compiled function."""
    states = _over_restarts(lambda k: method.init(model, data, k, init_params), keys)
    states = loop.drive(lambda s, stop: _run_until(model, method, s, data, stop), states, _max_iter(method, data),
                        progress=False, desc="")
    return _finalize_restarts(model, method, states, data)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init(model, method, data, keys, init_params):
    return _over_restarts(lambda k: method.init(model, data, k, init_params), keys)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run(model, method, states, *, data, stop):
    return _run_until(model, method, states, data, stop)


def _run_until(model, method, states, data, stop):
    """Every restart's iterations until it is done or has taken ``stop`` of them."""
    def step(state):
        return method.step(model, state, data)[0]

    return _over_restarts(lambda s: loop.run_until(step, s, stop), states)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _finalize(model, method, states, data) -> Result:
    return _finalize_restarts(model, method, states, data)


def _finalize_restarts(model, method, states, data) -> Result:
    """Finalises every restart and keeps the one with the highest finite objective."""
    results = _over_restarts(lambda s: method.finalize(model, s, data), states)
    healthy = (results.diagnostics.fault.kind == 0) & jnp.isfinite(results.objective)
    best = jnp.argmax(jnp.where(healthy, results.objective, -jnp.inf))
    chosen = jax.tree_util.tree_map(lambda a: a[best], results)
    diagnostics = chosen.diagnostics._replace(restart_objectives=results.objective)
    return dataclasses.replace(chosen, diagnostics=diagnostics)


def _over_restarts(fn, batched: PyTree) -> PyTree:
    """``jax.vmap(fn)(batched)`` over the leading restart axis; with one restart, ``fn`` on it unbatched
    (the same result, without batching the loop: faster to trace, and its ``lax.cond`` stays a branch)."""
    if jax.tree_util.tree_leaves(batched)[0].shape[0] == 1:
        out = fn(jax.tree_util.tree_map(lambda a: a[0], batched))
        return jax.tree_util.tree_map(lambda a: a[None], out)
    return jax.vmap(fn)(batched)


CHECKPOINT_FORMAT = "jaxvi-checkpoint-1"


def _fingerprint(method, data: PyTree, keys: jax.Array) -> dict:
    """What a checkpoint must match to be resumed: the method, the data (shapes, dtypes, a CRC of the
    bytes) and the keys."""
    leaves = jax.tree_util.tree_leaves(data)
    return {"format": CHECKPOINT_FORMAT, "method": type(method).__name__,
            "data": [[list(a.shape), str(a.dtype), zlib.crc32(np.asarray(a).tobytes())] for a in leaves],
            "keys": np.asarray(jax.random.key_data(keys)).tolist()}


def _resume(path, states, fingerprint: dict):
    """The state stored at ``path``, in the structure of ``states``.

    Raises:
      ValueError: the file is a checkpoint of another fit (method, data or key).
    """
    stored, meta = load_tree(path)
    for field, what in (("format", "file format"), ("method", "method"), ("data", "data"), ("keys", "key")):
        if meta.get(field) != fingerprint[field]:
            raise ValueError(f"checkpoint: {path} holds a fit with another {what} than this call's; delete it "
                             f"or pass another path")
    return fill(states, stored, "state")


def _max_iter(method, data: PyTree) -> int:
    """The most iterations the method runs on these data."""
    return method.iterations(data) if hasattr(method, "iterations") else method.max_iter


def _num_data(data: PyTree) -> int:
    return jax.tree_util.tree_leaves(data.obs if isinstance(data, Sequences) else data)[0].shape[0]


def _raise_on_fault(result: Result) -> None:
    fault = jax.tree_util.tree_map(int, result.diagnostics.fault)
    if fault.kind == 0:
        return
    if fault.kind == FAULT_NOT_QUADRATIC:
        raise ValueError(
            f"log_joint: a Gaussian({result.model.latent.d}) latent needs log_joint(params, z, x) quadratic "
            f"in z with a negative definite Hessian (an exact Gaussian posterior), but at iteration "
            f"{fault.iteration} it is not for datum {fault.index}: the log-joint differs from its "
            f"second-order expansion, or its curvature in z is not negative. Write the model so z enters "
            f"quadratically, or ask for the approximate posterior with Gaussian(d, laplace=True)")
    if fault.kind == FAULT_LOG_EVIDENCE and fault.iteration == 0:
        where = f"datum {fault.index}" if fault.index >= 0 else "log_prior"
        where = f"a datum in [{fault.index}, {fault.term})" if fault.term > fault.index >= 0 else where
        raise ValueError(
            f"init: expected initial parameters at which log_joint is finite, but log p(x) is "
            f"not finite for {where}; check init (or init_params) and the log_joint")
    if fault.kind == FAULT_LOG_EVIDENCE:
        what = f"log p(x_i) became non-finite for datum {fault.index}" if fault.index >= 0 else \
            "log_prior became non-finite"
        if fault.term > fault.index >= 0:  # a streamed E-step knows the chunk
            what = f"log p(x_i) became non-finite for a datum in [{fault.index}, {fault.term})"
    elif fault.kind == FAULT_PARAMS:
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(result.params)[0]]
        what = f"the update made params leaf {paths[fault.index] or 'params'} non-finite"
    elif fault.kind == FAULT_OBJECTIVE:
        where = f" for datum {fault.index}" if fault.index >= 0 else ""
        what = (f"the ELBO was not finite: its {OBJECTIVE_TERMS[fault.term]} term{where}"
                if 0 <= fault.term < len(OBJECTIVE_TERMS) else "the ELBO was not finite")
        if fault.iteration == 0:
            which = (f"its {OBJECTIVE_TERMS[fault.term]} term{where} is"
                     if 0 <= fault.term < len(OBJECTIVE_TERMS) else "it is")
            raise ValueError(f"init: expected initial parameters at which the ELBO is finite, but {which} not finite "
                             f"at the first step; check init (or init_params) and the log_joint")
    else:
        tree = {"params": result.params, "guide_params": result.guide_params}
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
        what = f"the gradient of {paths[fault.index]} was not finite"
    step = "iteration" if fault.kind in (FAULT_LOG_EVIDENCE, FAULT_PARAMS) else "step"
    err = FloatingPointError(
        f"{type(result.method).__name__} stopped at {step} {fault.iteration}: {what}. "
        f"The result holds the last finite parameters (err.result).")
    err.result = result
    raise err
