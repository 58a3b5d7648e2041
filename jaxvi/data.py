"""Data containers: padded sequences of unequal length, and a minibatch that knows its rows.

Data are any pytree of arrays whose leaves share a leading datum axis; these two containers add
what a plain array cannot say.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["Batch", "Sequences", "num_data"]

PyTree = Any


class Sequences(NamedTuple):
    """Sequences of unequal length, padded to a common length T.

    Attributes:
      obs: the observations, an array or pytree of arrays of shape ``(N, T, ...)``. Steps past a
        sequence's length are ignored, but must hold values the log-joint accepts (finite).
      lengths: ``(N,)`` integers in ``[1, T]``, the length of every sequence.
    """

    obs: PyTree
    lengths: Any

    @classmethod
    def from_concatenated(cls, x, lengths) -> "Sequences":
        """Pads sequences given hmmlearn's way: rows of ``x`` concatenated, ``lengths`` summing to ``len(x)``.

        Each sequence is padded by repeating its last observation.
        """
        x, lengths = np.asarray(x), np.asarray(lengths)
        if lengths.ndim != 1 or lengths.size == 0 or not np.issubdtype(lengths.dtype, np.integer):
            raise ValueError(f"lengths: expected a non-empty 1-d array of integers, got {lengths!r}")
        if np.any(lengths < 1) or lengths.sum() != len(x):
            raise ValueError(f"lengths: expected positive lengths summing to len(x) = {len(x)}, "
                             f"got lengths summing to {lengths.sum()} (min {lengths.min()})")
        ends = np.cumsum(lengths)
        steps = np.minimum(np.arange(lengths.max())[None, :], lengths[:, None] - 1)
        return cls(x[(ends - lengths)[:, None] + steps], lengths.astype(np.int32))



class Batch(NamedTuple):
    """A minibatch that says which data it holds: rows ``index`` of the full data set.

    A method that keeps one set of variational parameters per datum (``SVI`` with local guides)
    needs ``index`` to update the right ones; methods without per-datum state use ``data`` alone,
    so a plain pytree of rows works for them too.

    Attributes:
      index: ``(B,)`` distinct integers in ``[0, N)``.
      data: the rows, every leaf with leading axis B (``data[i]`` is datum ``index[i]``).
    """

    index: Any
    data: PyTree


def num_data(data: PyTree) -> int:
    """N, the size of the leading datum axis (of the observations, for ``Sequences``; of the rows,
    for a ``Batch``)."""
    if isinstance(data, Batch):
        data = data.data
    if isinstance(data, Sequences):
        data = data.obs
    return jax.tree_util.tree_leaves(data)[0].shape[0]
