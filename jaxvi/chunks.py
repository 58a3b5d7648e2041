"""Evaluating per-datum functions over a data set in fixed-size chunks.

Working on ``chunk_size`` data at a time keeps the intermediates of a vmapped log-joint (for a
mixture: one row per datum and latent value) small enough to stay in cache, instead of writing
``N x K x ...`` arrays to memory. The results are the same as one big ``vmap``.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxvi.data import num_data

__all__ = ["map_data", "minibatch", "sum_data", "num_data"]

PyTree = Any




def map_data(fn: Callable[[PyTree], PyTree], data: PyTree, chunk_size: int) -> PyTree:
    """``vmap(fn)(data)``, computed ``chunk_size`` data at a time.

    Args:
      fn: a function of one datum (one slice along the leading axis of every leaf).
      data: a pytree of arrays with a shared leading axis of size N.
      chunk_size: how many data ``fn`` sees at once, vmapped.

    Returns:
      ``fn``'s outputs stacked along a new leading axis of size N.
    """
    return lax.map(fn, data, batch_size=min(chunk_size, num_data(data)))


def sum_data(fn: Callable[[PyTree], PyTree], data: PyTree, chunk_size: int) -> PyTree:
    r"""The sum of ``fn`` over chunks of ``data``: :math:`\sum_c fn(data_c)`.

    ``fn`` receives a chunk (every leaf sliced to at most ``chunk_size`` rows) and returns a
    pytree of sums over that chunk, e.g. sufficient statistics. Full chunks run in a ``lax.scan``;
    the remainder, if any, in one more call.
    """
    n = num_data(data)
    size = min(chunk_size, n)
    n_full = n // size
    head = jax.tree_util.tree_map(lambda a: a[: n_full * size].reshape(n_full, size, *a.shape[1:]), data)

    def add_chunk(total, chunk):
        return jax.tree_util.tree_map(jnp.add, total, fn(chunk)), None

    first = jax.tree_util.tree_map(lambda a: a[0], head)
    rest = jax.tree_util.tree_map(lambda a: a[1:], head)
    total, _ = lax.scan(add_chunk, fn(first), rest)
    if n_full * size < n:
        tail = jax.tree_util.tree_map(lambda a: a[n_full * size:], data)
        total = jax.tree_util.tree_map(jnp.add, total, fn(tail))
    return total


def minibatch(key: jax.Array, n: int, size: int) -> jax.Array:
    """``size`` distinct indices in ``[0, n)``, uniformly without replacement: the top ``size`` of n
    uniform keys (O(n log size); ``jax.random.choice(replace=False)`` sorts all n, 40 ms at n = 50,000)."""
    return jax.lax.top_k(jax.random.uniform(key, (n,)), size)[1]
