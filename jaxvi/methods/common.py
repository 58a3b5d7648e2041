"""Small pieces the methods share: dtypes, batches, accurate sums, tree selects."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvi.data import Batch, num_data as num_rows

__all__ = ["batch_rows", "float_dtype", "full_data", "sum_accurately", "tree_where"]

PyTree = Any


def float_dtype(data: PyTree):
    """The floating dtype of the data (float32 for integer data)."""
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(data), jnp.float32)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32


def full_data(batch: PyTree, num_data, who: str) -> PyTree:
    """The data of a step that needs all N of them; a ValueError for a minibatch."""
    data = batch.data if isinstance(batch, Batch) else batch
    rows = num_rows(data)
    if _concrete_int(num_data) is not None and rows != int(num_data):
        raise ValueError(f"batch: {who} steps on all the data (num_data={int(num_data)}), got {rows} data; "
                         f"for minibatches use jaxvi.OnlineEM or jaxvi.SVI")
    return data


def batch_rows(batch: PyTree, num_data, rows_kept: int | None) -> tuple[jax.Array | None, PyTree]:
    """``(index, data)`` of a step's batch: ``index`` None for all the data in order.

    ``rows_kept`` is the number of per-datum states the method keeps (None if it keeps none): a
    minibatch of such a method must say which data it holds (``jaxvi.Batch``), and its index must
    be in range; a concrete index is checked here, a traced one gathers NaN out of range.

    Raises:
      ValueError: a plain minibatch for per-datum states, an index of the wrong shape, out of range
        or repeated, or ``num_data`` unlike the per-datum states'.
    """
    n = _concrete_int(num_data)
    if rows_kept is not None and n is not None and n != rows_kept:
        raise ValueError(f"num_data: the state keeps q_i for {rows_kept} data, got num_data={n}")
    if not isinstance(batch, Batch):
        if rows_kept is not None and num_rows(batch) != rows_kept:
            raise ValueError(f"batch: the state keeps one q_i per datum ({rows_kept} data), got a plain batch of "
                             f"{num_rows(batch)} data; pass jaxvi.Batch(index, data) to say which data it holds")
        return None, batch
    index, data = batch
    size = num_rows(data)
    if jnp.shape(index) != (size,):
        raise ValueError(f"batch.index: expected shape ({size},), one index per row of batch.data, got {jnp.shape(index)}")
    if not jnp.issubdtype(jnp.result_type(index), jnp.integer):
        raise ValueError(f"batch.index: expected integers, got dtype {jnp.result_type(index)}")
    if not isinstance(index, jax.core.Tracer):
        values = np.asarray(index)
        limit = rows_kept if rows_kept is not None else n
        if limit is not None and values.size and (values.min() < 0 or values.max() >= limit):
            raise ValueError(f"batch.index: expected indices in [0, {limit}), got values in "
                             f"[{values.min()}, {values.max()}]")
        if len(np.unique(values)) != values.size:
            raise ValueError("batch.index: expected distinct indices (a minibatch drawn without replacement)")
    return jnp.asarray(index), data


def sum_accurately(values: jax.Array) -> jax.Array:
    r"""The sum over the leading axis, pairwise: rows are added in pairs, the pair sums in pairs, and
    so on (the last 8 naively). The rounding error is :math:`O(\log_2 N)` ulps of :math:`\sum |v_i|`
    instead of :math:`O(N)` for a running sum, for 2N additions. This is what makes float32 sums
    over data (log p(D), an M-step's residuals) accurate to a few ulps."""
    while values.shape[0] > 8:
        pairs = values.shape[0] // 2
        summed = values[: 2 * pairs].reshape(pairs, 2, *values.shape[1:]).sum(axis=1)
        values = summed.at[0].add(values[-1]) if values.shape[0] % 2 else summed
    return jnp.sum(values, axis=0)


def tree_where(pred, on_true: PyTree, on_false: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _concrete_int(value) -> int | None:
    if isinstance(value, jax.core.Tracer):
        return None
    return int(value)
