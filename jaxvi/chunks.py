"""Evaluating per-datum functions over a data set in fixed-size chunks, and summing over data accurately.

Working on ``chunk_size`` data at a time keeps the intermediates of a vmapped log-joint (for a
mixture: one row per datum and latent value) small enough to stay in cache, instead of writing
``N x K x ...`` arrays to memory. The results are the same as one big ``vmap``.

Where JAX has several devices, chunk i holds rows i, i + N/c, i + 2N/c, ... (``_chunked``), not rows ic to
(i + 1)c: data split over devices along the leading axis (``mesh=``) then give every device its share of every
chunk, and the devices work on each chunk together; contiguous chunks would each live on one device, and the
others would wait or copy. With one device, chunk i is rows ic to (i + 1)c: the chunks are the data reshaped, where
strided ones are a transposed copy of every array the loop reads and of every per-datum result it returns (a
Bayesian mixture's CAVI step on 200,000 x 16 data, K = 16: 94-100 ms strided, 76-79 ms contiguous).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxvi.data import num_data

__all__ = ["add_logs", "equal_chunk_size", "kahan_add", "map_chunks", "map_data", "minibatch", "sum_accurately",
           "sum_blocks", "sum_data", "sum_min_data", "num_data", "unless"]

PyTree = Any
TOP_K_MINIBATCH = 4  # minibatch: a top-k of n uniform keys up to n = 4 x size, the streamed draw beyond (measured: equal near 6x)


def equal_chunk_size(n: int, most: int) -> int:
    """How many of ``n`` data a chunk holds, at most ``most``: the largest divisor of n from ``most`` down to just
    above ``most / 2`` where there is one, so the chunks are equal and no remainder is compiled as a second copy
    of the chunk's code (the Bayesian mixture's CAVI step at N = 200,000: 13% less optimised HLO); else
    ``most``, and a remainder."""
    return next((c for c in range(most, most // 2, -1) if n % c == 0), most)


def map_data(fn: Callable[[PyTree], PyTree], data: PyTree, chunk_size: int) -> PyTree:
    """``vmap(fn)(data)``, computed ``chunk_size`` data at a time.

    Args:
      fn: a function of one datum (one slice along the leading axis of every leaf).
      data: a pytree of arrays with a shared leading axis of size N.
      chunk_size: how many data ``fn`` sees at once, vmapped.

    Returns:
      ``fn``'s outputs stacked along a new leading axis of size N.
    """
    return map_chunks(jax.vmap(fn), data, chunk_size)


def map_chunks(fn: Callable[[PyTree], PyTree], data: PyTree, chunk_size: int) -> PyTree:
    """``fn(data)`` for a function ``fn`` of a chunk of data (every leaf's leading axis the chunk's data, and the
    same of its outputs), computed ``chunk_size`` data at a time: ``map_data`` of a function that works on a whole
    chunk at once (and may decide once per chunk, e.g. with a ``lax.cond``)."""
    chunks, tail = _chunks(data, chunk_size)
    if chunks is None:  # one chunk: no loop to compile
        return fn(data)
    out = lax.map(fn, chunks)
    out = jax.tree_util.tree_map(_unchunked, out)
    if tail is not None:
        out = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), out, fn(tail))
    return out


def sum_data(fn: Callable[[PyTree], PyTree], data: PyTree, chunk_size: int) -> PyTree:
    r"""The sum of ``fn`` over chunks of ``data``: :math:`\sum_c fn(data_c)`.

    ``fn`` receives a chunk (every leaf sliced to at most ``chunk_size`` rows, ``equal_chunk_size``) and returns
    a pytree of sums over that chunk, e.g. sufficient statistics. Full chunks run in a ``lax.scan``
    whose running total is compensated (``kahan_add``); the remainder, if any, in one more call.
    ``fn`` is traced once for the full chunks and, where N has no divisor near ``chunk_size``, once for a
    remainder, never more: compile time is that of one chunk's code, not of every use of it.
    ``fn`` is rematerialised (``jax.checkpoint``): a gradient of the sum recomputes each chunk's intermediates
    in its backward pass instead of keeping every chunk's, so memory stays O(chunk) under differentiation too
    (CAVI's gradient reads through LDA's tokens would otherwise keep N x L x K assignments).
    """
    return sum_min_data(lambda chunk: (fn(chunk), ()), data, chunk_size)[0]


def sum_min_data(fn: Callable[[PyTree], tuple[PyTree, PyTree]], data: PyTree, chunk_size: int
                 ) -> tuple[PyTree, PyTree]:
    """``sum_data`` of the first of ``fn``'s two outputs and the minimum over chunks of the second: ``fn`` returns
    ``(sums, minima)`` over its chunk (e.g. a log-likelihood and the first index where it is not finite)."""
    fn = jax.checkpoint(fn)
    chunks, tail = _chunks(data, chunk_size)
    if chunks is None:  # one chunk: no loop to compile
        return fn(data)

    def add_chunk(carry, chunk):
        total, compensation, least = carry
        sums, minima = fn(chunk)
        added = jax.tree_util.tree_map(kahan_add, total, compensation, sums)
        total, compensation = jax.tree_util.tree_transpose(
            jax.tree_util.tree_structure(total), jax.tree_util.tree_structure((0, 0)), added)
        return (total, compensation, jax.tree_util.tree_map(jnp.minimum, least, minima)), None

    sums, minima = jax.eval_shape(fn, jax.tree_util.tree_map(lambda a: a[0], chunks))
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), sums)
    highest = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, _highest(s.dtype), s.dtype), minima)
    (total, _, least), _ = lax.scan(add_chunk, (zeros, zeros, highest), chunks)
    if tail is not None:
        sums, minima = fn(tail)
        total = jax.tree_util.tree_map(jnp.add, total, sums)
        least = jax.tree_util.tree_map(jnp.minimum, least, minima)
    return total, least


def sum_blocks(fn: Callable[[PyTree], PyTree], data: PyTree, block_size: int) -> PyTree:
    r"""The sum of ``fn`` over blocks of ``data``: :math:`\sum_b fn(data_b)`, every block's sum at once (``fn``
    vmapped over blocks of about ``block_size`` rows, ``equal_chunk_size``; a remainder in one more call) and the
    blocks' sums added pairwise (``sum_accurately``).

    ``sum_data``'s sum, for a ``fn`` whose output is small and whose work XLA fuses into the reductions that make it
    (a weighted sum of squares, a product of two thin matrices): no loop, so no loop's turns to pay, and a float32 sum
    runs over at most a block's rows before the pairwise sum takes over. Where ``fn`` makes an intermediate larger
    than its output (a product per row), vmapped over every block that intermediate spans the data: use
    ``sum_data``, whose memory stays that of one chunk.
    """
    chunks, tail = _chunks(data, block_size)
    if chunks is None:
        return fn(data)
    sums = jax.vmap(fn)(chunks)
    if tail is not None:
        sums = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b[None]]), sums, fn(tail))
    return jax.tree_util.tree_map(sum_accurately, sums)


def _highest(dtype):
    """The largest value of ``dtype`` (inf for floats): the minimum of nothing."""
    return jnp.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).max


def _chunks(data: PyTree, chunk_size: int) -> tuple[PyTree | None, PyTree | None]:
    """``(chunks, tail)``: the data's first ``(N // c) c`` rows as ``(N // c, c, ...)`` chunks (``_chunked``),
    c = ``equal_chunk_size(N, chunk_size)``, and the remaining rows (None if there are none); chunks is None when
    the data are one chunk (N <= chunk_size)."""
    n = num_data(data)
    if n <= chunk_size:
        return None, None
    size = equal_chunk_size(n, chunk_size)
    n_full = n // size
    chunks = jax.tree_util.tree_map(lambda a: _chunked(a[: n_full * size], size), data)
    tail = jax.tree_util.tree_map(lambda a: a[n_full * size:], data) if n_full * size < n else None
    return chunks, tail


def _strided() -> bool:
    """Whether chunks are strided (module docstring): where JAX has more than one device."""
    return jax.device_count() > 1


def _chunked(a: jax.Array, size: int) -> jax.Array:
    """``a``'s rows as ``(len(a) // size, size, ...)`` chunks: strided (chunk i holding rows i, i + len(a) // size,
    ..., so data split over devices along the leading axis give every chunk an equal share on every device), or
    contiguous on one device (``_strided``)."""
    if _strided():
        return jnp.swapaxes(a.reshape(size, a.shape[0] // size, *a.shape[1:]), 0, 1)
    return a.reshape(a.shape[0] // size, size, *a.shape[1:])


def _unchunked(a: jax.Array) -> jax.Array:
    """The rows of ``_chunked``'s ``(chunks, size, ...)`` array back in their order."""
    if _strided():
        a = jnp.swapaxes(a, 0, 1)
    return a.reshape(-1, *a.shape[2:])


def sum_accurately(values: jax.Array) -> jax.Array:
    r"""The sum over the leading axis, pairwise: rows are added in pairs, the pair sums in pairs, and
    so on (the last 8 naively). The rounding error is :math:`O(\log_2 N)` ulps of :math:`\sum |v_i|`
    instead of :math:`O(N)` for a running sum, for 2N additions. This is what makes float32 sums
    over data (log p(D), an M-step's residuals) accurate to a few ulps.

    The rows are padded with zeros to 8 times a power of two first, so that every level is a reshape and a sum: an
    odd level's last row, added on its own, took a slice and an update per level, which XLA:CPU compiled 4-5x slower
    (200,000 x 8 floats: 0.14-0.18 s against 0.03-0.04 s; the sum itself ran in 1.5 ms against 0.7 ms)."""
    size = 8
    while size < values.shape[0]:
        size *= 2
    values = jnp.pad(values, [(0, size - values.shape[0])] + [(0, 0)] * (values.ndim - 1))
    while values.shape[0] > 8:
        values = values.reshape(values.shape[0] // 2, 2, *values.shape[1:]).sum(axis=1)
    return jnp.sum(values, axis=0)


def kahan_add(total: jax.Array, compensation: jax.Array, value: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Compensated summation (Kahan): ``total + value`` with the rounding error carried in
    ``compensation``, for a running total in a loop (a scan's carry): O(1) ulps however many terms. A total that
    becomes infinite makes the compensation NaN (inf - inf): where a term may be infinite, see ``add_logs``."""
    y = value - compensation
    new_total = total + y
    return new_total, (new_total - total) - y


def add_logs(total: jax.Array, compensation: jax.Array, value: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``kahan_add`` of log-probabilities, any of which may be -inf: a total at -inf stays there, its compensation 0.
    (The guard is a select of its own: in ``kahan_add`` itself, it doubled the run time of a Bayesian mixture's CAVI,
    whose gradients go through ``sum_data``'s compensated totals.)"""
    total, compensation = kahan_add(total, compensation, value)
    return total, jnp.where(jnp.isfinite(total), compensation, 0)


def minibatch(key: jax.Array, n: int, size: int) -> jax.Array:
    """``size`` distinct indices in ``[0, n)``, uniformly without replacement.

    For ``n`` up to ``TOP_K_MINIBATCH`` times ``size``: the top ``size`` of n uniform keys (O(n)). Beyond, in
    O(size log size) whatever n: the first ``size`` distinct values of a stream of i.i.d. uniform indices
    (skipping repeats is sequential sampling without replacement), read ``size`` draws at a time until there
    are enough (one round, rarely two, that far from n). A top-k or ``jax.random.choice(replace=False)``
    over all n made a minibatch step's time grow with N (12 ms a step at N = 10^6). ``size == n``: every index in
    order, the batch ``infer`` passes then (all the data as they are), so that a loop of the user's own drawing its
    batches here reproduces ``infer``'s fit at that size too."""
    if size == n:
        return jnp.arange(n, dtype=jnp.int32)
    if n <= TOP_K_MINIBATCH * size:
        return lax.top_k(jax.random.uniform(key, (n,)), size)[1]
    packed = (n + size) * 2 * size < 2 ** 31  # (value, position) as one int32 sort key: a sort without a comparator

    def more(state):
        chosen, count, round_ = state
        candidates = jax.random.randint(jax.random.fold_in(key, round_), (size,), 0, n, jnp.int32)
        slots = jnp.arange(size, dtype=jnp.int32)
        # the chosen so far (empty slots as distinct negatives), then the candidates in draw order: sorted by
        # (value, position), every value's earliest occurrence comes first among its equals
        pool = jnp.concatenate([jnp.where(slots < count, chosen, -1 - slots), candidates])
        if packed:
            keys = jnp.sort((pool + size) * (2 * size) + jnp.arange(2 * size, dtype=jnp.int32))
            in_order, order = keys // (2 * size), keys % (2 * size)
        else:
            order = jnp.argsort(pool, stable=True)
            in_order = pool[order]
        first = jnp.concatenate([jnp.ones((1,), bool), in_order[1:] != in_order[:-1]])
        new = jnp.zeros(2 * size, bool).at[order].set(first)[size:]
        slot = count + jnp.cumsum(new, dtype=jnp.int32) - 1
        chosen = chosen.at[jnp.where(new, slot, size)].set(candidates, mode="drop")  # slots past size: dropped
        return chosen, jnp.minimum(count + jnp.sum(new, dtype=jnp.int32), size), round_ + 1

    start = (jnp.zeros(size, jnp.int32), jnp.array(0, jnp.int32), jnp.array(0, jnp.int32))
    return lax.while_loop(lambda state: state[1] < size, more, start)[0]


def unless(ok: jax.Array, fallback: Callable[[], PyTree], value: PyTree) -> PyTree:
    """``value`` if ``ok``, else ``fallback()``: a loop run once or never, which stays a loop under ``vmap`` (a
    ``lax.cond`` there becomes a select, and runs both). Not reverse-differentiable (a ``while_loop``).

    The arrays ``fallback`` reads pass through an optimisation barrier with the loop's flag: otherwise, with
    nothing in its work changing from turn to turn, XLA may hoist that work out of the loop and run it whether or
    not the loop turns, as it did under ``vmap`` (EM's E-step of a 3-state HMM on 1,046 steps, four restarts
    vmapped: 4.1 ms with its log-space fallback hoisted, 1.5 ms without it)."""
    closed, shapes = jax.make_jaxpr(fallback, return_shape=True)()
    structure = jax.tree_util.tree_structure(shapes)

    def turn(state):
        consts = lax.optimization_barrier((state[0], closed.consts))[1]
        return jnp.ones((), bool), jax.tree_util.tree_unflatten(structure, jax.core.eval_jaxpr(closed.jaxpr, consts))

    return lax.while_loop(lambda state: ~state[0], turn, (ok, value))[1]
