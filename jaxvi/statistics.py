r"""M-steps through expected sufficient statistics, and the E-step that streams data to them.

For exponential-family complete-data models the M-step depends on the data only through expected
sufficient statistics :math:`s = \sum_i E_{q_i}[t(x_i, z_i)]`, sums over data. A ``Statistics``
M-step gives ``collect`` (the sums over one chunk of data, from that chunk's exact posterior) and
``maximize`` (θ from the summed statistics). Then

- ``EM(m_step=statistics)`` streams the data through the E-step ``chunk_size`` data at a time,
  adding up statistics and log p(D): memory holds one chunk's posterior, never the N-datum one
  (N x K responsibilities for a mixture), and the fit is the same as in memory;
- ``OnlineEM`` (Cappé & Moulines 2009) keeps a running average of minibatch statistics,
  :math:`\hat s_t = (1 - \rho_t)\hat s_{t-1} + \rho_t \tfrac{N}{B} s(\text{batch}_t)`,
  :math:`\rho_t = (t + 1)^{-\kappa}`, and takes θ_t = maximize(ŝ_t): one pass can suffice.

Sums of raw moments (:math:`\sum_i x_i x_i^\top`) of data far from the origin relative to their spread keep none
of the spread's digits in float32. A ``Statistics`` with a ``shift`` takes its sums about a point near the data
(a mixture's component means): ``EM`` about the current θ's, recomputed every iteration; ``OnlineEM``, whose running
average mixes the statistics of many steps, about its initial θ's, fixed for the run.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxvi import exact
from jaxvi.chunks import equal_chunk_size, num_data

__all__ = ["Statistics", "StreamedEStep", "streamed_e_step"]

PyTree = Any


class Statistics(NamedTuple):
    """A closed-form M-step through expected sufficient statistics.

    Attributes:
      collect: ``collect(params, chunk, posterior) -> stats``: the statistics of one chunk of data
        (leading datum axis) under its exact posterior, as SUMS over the chunk (so chunks add up).
      maximize: ``maximize(params, stats, n) -> params``: θ maximising Q given the statistics of all
        n data (the current params are given for parts the statistics do not determine).
      shift: optional, ``shift(params) -> point``: the point the sums are taken about (module docstring); where
        given, jaxvi calls ``collect(params, chunk, posterior, shift=point)`` and ``maximize(params, stats, n,
        shift=point)`` with the point of the θ that ``EM`` or ``OnlineEM`` takes it from.
    """

    collect: Callable[..., PyTree]
    maximize: Callable[..., PyTree]
    shift: Callable[[PyTree], PyTree] | None = None

    def point(self, params: PyTree) -> PyTree:
        """The point ``params`` give the sums (None without a ``shift``)."""
        return None if self.shift is None else self.shift(params)

    def collect_about(self, point: PyTree, params: PyTree, chunk: PyTree, posterior) -> PyTree:
        """``collect``, about ``point`` where the statistics have a ``shift``."""
        if self.shift is None:
            return self.collect(params, chunk, posterior)
        return self.collect(params, chunk, posterior, shift=point)

    def maximize_about(self, point: PyTree, params: PyTree, stats: PyTree, n) -> PyTree:
        """``maximize``, of sums about ``point`` where the statistics have a ``shift``."""
        if self.shift is None:
            return self.maximize(params, stats, n)
        return self.maximize(params, stats, n, shift=point)


class StreamedEStep(NamedTuple):
    """The E-step summed over chunks.

    Attributes:
      log_evidence: :math:`\\log p_\\theta(D) = \\sum_i \\log p_\\theta(x_i)`.
      stats: the summed statistics.
      bad_start, bad_end: the data range ``[bad_start, bad_end)`` of the first chunk with a
        non-finite log evidence or an ill-posed posterior (-1, -1 if none).
    """

    log_evidence: jax.Array
    stats: PyTree
    bad_start: jax.Array
    bad_end: jax.Array


def streamed_e_step(model, params: PyTree, data: PyTree, chunk_size: int, collect: Callable,
                    differentiable: bool = True) -> StreamedEStep:
    """The exact E-step of ``data`` one chunk at a time (a ``lax.scan`` over equal chunks, ``equal_chunk_size``,
    then the rest where N has no divisor near ``chunk_size``); ``differentiable`` as for ``exact.posterior``."""
    n = num_data(data)
    size = equal_chunk_size(n, min(chunk_size, n))
    n_full = n // size

    def one_chunk(chunk):
        post = exact.posterior(model.log_joint, model.latent, params, chunk, size, differentiable)
        ok = jnp.all(jnp.isfinite(post.log_evidence)) & exact.all_well_posed(post)
        return jnp.sum(post.log_evidence), collect(params, chunk, post), ok

    def add(carry, inputs, rows=size):
        total, stats, bad_start, bad_end = carry
        chunk, start = inputs
        value, chunk_stats, ok = one_chunk(chunk)
        first = ~ok & (bad_start < 0)
        return (total + value, jax.tree_util.tree_map(jnp.add, stats, chunk_stats),
                jnp.where(first, start, bad_start), jnp.where(first, start + rows, bad_end)), None

    head = jax.tree_util.tree_map(lambda a: a[: n_full * size].reshape(n_full, size, *a.shape[1:]), data)
    value, stats, _ = jax.eval_shape(one_chunk, jax.tree_util.tree_map(lambda a: a[0], head))
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), (value, stats))
    minus_one = jnp.array(-1, jnp.int32)
    starts = jnp.arange(n_full, dtype=jnp.int32) * size
    carry, _ = lax.scan(add, (*zeros, minus_one, minus_one), (head, starts))
    if n_full * size < n:
        tail = jax.tree_util.tree_map(lambda a: a[n_full * size:], data)
        carry, _ = add(carry, (tail, jnp.array(n_full * size, jnp.int32)), rows=n - n_full * size)
    return StreamedEStep(*carry)
