"""Chunked evaluation over data (``jaxvi.chunks``): the same numbers as one ``vmap``, in either chunk layout; sums
over data within the pairwise (or blocked) bound of the exact sum."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvi import chunks

X = np.arange(30.0).reshape(10, 3)  # 10 data: chunks of 4 leave a remainder of 2 (no divisor of 10 in 3..4)


@pytest.mark.parametrize("strided", [False, True])
def test_map_and_sum_over_chunks_equal_one_vmap_and_a_plain_sum_in_either_layout(monkeypatch, strided):
    """``map_data`` equals ``vmap`` and ``sum_data`` the plain sum, with full chunks and a remainder, whether the
    chunks are contiguous (one device) or strided (several)."""
    monkeypatch.setattr(chunks, "_strided", lambda: strided)
    fn = lambda x: jnp.stack([jnp.sum(x ** 2), x[0] * x[2]])  # noqa: E731
    mapped = jax.jit(lambda x: chunks.map_data(fn, x, 4))(X)
    np.testing.assert_allclose(mapped, np.stack([np.sum(X ** 2, 1), X[:, 0] * X[:, 2]], 1))
    total = jax.jit(lambda x: chunks.sum_data(lambda c: jnp.sum(c ** 2, 0), x, 4))(X)
    np.testing.assert_allclose(total, np.sum(X ** 2, 0))


@pytest.mark.parametrize("strided", [False, True])
def test_a_chunk_holds_contiguous_rows_on_one_device_and_strided_rows_on_several(monkeypatch, strided):
    """Which rows share a chunk (each datum gets the smallest row of its chunk): rows 0-1, 2-3, 4-5 contiguous;
    rows {0, 3}, {1, 4}, {2, 5} strided. The layout follows the devices: one here, unless a test says otherwise."""
    assert chunks._strided() == (jax.device_count() > 1)
    monkeypatch.setattr(chunks, "_strided", lambda: strided)
    rows = jnp.arange(6.0)
    smallest = chunks.map_chunks(lambda c: jnp.broadcast_to(jnp.min(c), c.shape), rows, 2)
    np.testing.assert_array_equal(smallest, [0, 1, 2, 0, 1, 2] if strided else [0, 0, 2, 2, 4, 4])


def _exact_sums(values: np.ndarray) -> np.ndarray:
    """The exact sum over axis 0 of each column (``math.fsum``), as float64."""
    return np.array([math.fsum(column) for column in values.reshape(len(values), -1).T]).reshape(values.shape[1:])


# float32 values whose running sum loses digits: a large offset, values spread over six decades, signs mixed; and
# large values first, then 10^5 small ones, each below half an ulp of a running total (which drops them all)
_RNG = np.random.default_rng(0)
HARD = [(_RNG.standard_normal(shape) * 10.0 ** _RNG.uniform(-3, 3, shape) + 1e3).astype(np.float32)
        for shape in [(7,), (1_000,), (100_001,), (4_097, 3)]] + [
    np.concatenate([np.full(64, 1e4), np.full(100_000, 1e-4)]).astype(np.float32)]


@pytest.mark.parametrize("values", HARD, ids=lambda v: "x".join(map(str, v.shape)))
def test_sums_over_data_are_within_the_pairwise_bound_of_the_exact_sum(values):
    """``sum_accurately`` of float32 values, compiled and not and under ``vmap`` over columns, is within the
    pairwise bound of the exact sum (``math.fsum``), :math:`(\\lceil\\log_2 N\\rceil + 8)` machine epsilons of
    :math:`\\sum |v_i|`, where a running float32 sum's bound is N of them."""
    exact = _exact_sums(values.astype(np.float64))
    bound = (np.ceil(np.log2(len(values))) + 8) * float(np.finfo(np.float32).eps) * np.sum(np.abs(values), 0)
    totals = [chunks.sum_accurately(jnp.asarray(values)), jax.jit(chunks.sum_accurately)(values)]
    if values.ndim == 2:
        totals.append(jax.jit(jax.vmap(chunks.sum_accurately, in_axes=1))(values))
    for total in totals:
        assert total.dtype == jnp.float32
        assert np.all(np.abs(np.asarray(total, np.float64) - exact) <= bound)


@pytest.mark.parametrize("values", HARD, ids=lambda v: "x".join(map(str, v.shape)))
def test_a_sum_over_blocks_is_within_a_blocks_running_bound_and_the_pairwise_bound(values):
    r"""``sum_blocks`` with blocks of 64 rows (a remainder where N has no divisor near 64) is within the bound of a
    running sum over one block plus the pairwise sum of the blocks' sums, :math:`(64 + \lceil\log_2 N\rceil + 8)`
    machine epsilons of :math:`\sum |v_i|`, of the exact sum (``math.fsum``)."""
    exact = _exact_sums(values.astype(np.float64))
    bound = (64 + np.ceil(np.log2(len(values))) + 8) * float(np.finfo(np.float32).eps) * np.sum(np.abs(values), 0)
    total = jax.jit(lambda v: chunks.sum_blocks(lambda block: jnp.sum(block, 0), v, 64))(values)
    assert total.dtype == jnp.float32 and total.shape == values.shape[1:]
    assert np.all(np.abs(np.asarray(total, np.float64) - exact) <= bound)


def test_a_compensated_total_of_log_probabilities_that_reaches_minus_infinity_stays_there_without_nan():
    """``add_logs``: a log-probability of -inf among the terms makes the total -inf from there on, and its
    compensation 0, where ``kahan_add``'s is inf - inf."""
    total, compensation = chunks.add_logs(jnp.float32(1.5), jnp.float32(0.0), jnp.float32(-jnp.inf))
    assert float(total) == -np.inf and float(compensation) == 0.0
    assert np.isnan(float(chunks.kahan_add(jnp.float32(1.5), jnp.float32(0.0), jnp.float32(-jnp.inf))[1]))
    total, compensation = chunks.add_logs(total, compensation, jnp.float32(2.0))
    assert float(total) == -np.inf and float(compensation) == 0.0


def test_sums_over_data_differentiate_and_keep_their_type():
    """The gradient of a sum is one for every value (first and second order, under ``jit`` and ``vmap``);
    bfloat16 and integer values keep their type."""
    values = jnp.asarray(HARD[1][:50])
    loss = lambda v: chunks.sum_accurately(jnp.sin(v)) ** 2  # noqa: E731
    grad = jax.jit(jax.grad(loss))(values)
    np.testing.assert_allclose(grad, 2 * jnp.sum(jnp.sin(values)) * jnp.cos(values), rtol=2e-5)
    np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(lambda v: chunks.sum_accurately(v * v))))(
        values.reshape(5, 10)), 2 * values.reshape(5, 10), rtol=1e-6)
    hessian = jax.jit(jax.hessian(lambda v: chunks.sum_accurately(v ** 3)))(values[:4])
    np.testing.assert_allclose(hessian, np.diag(6 * np.asarray(values[:4])), rtol=1e-6)
    assert chunks.sum_accurately(values.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    assert int(chunks.sum_accurately(jnp.arange(100, dtype=jnp.int32))) == 4950


def test_unless_gives_the_value_where_ok_and_the_fallback_elsewhere_alone_and_under_vmap():
    """``chunks.unless(ok, fallback, value)``: the fallback (here reading arrays it closes over, batched under
    ``vmap``) where ``ok`` is False, the value where it is True, per batch element; forward-mode derivatives pass."""
    from jaxvi.chunks import unless

    x = jnp.arange(12.0).reshape(4, 3)
    scale = jnp.array([1.0, -2.0, 3.0, -4.0])

    def pick(row, s):
        return unless(s > 0, lambda: {"y": jnp.sin(row) * s, "n": jnp.sum(row)}, {"y": row * s, "n": jnp.zeros(())})

    out = jax.jit(jax.vmap(pick))(x, scale)
    positive = np.asarray(scale) > 0
    expected_y = np.where(positive[:, None], np.asarray(x) * np.asarray(scale)[:, None],
                          np.sin(np.asarray(x)) * np.asarray(scale)[:, None])
    np.testing.assert_allclose(out["y"], expected_y, rtol=1e-6)
    np.testing.assert_allclose(out["n"], np.where(positive, 0.0, np.asarray(x).sum(1)))
    for row, s in zip(x, scale):  # one at a time, unbatched
        alone = jax.jit(pick)(row, s)
        np.testing.assert_allclose(alone["y"], out["y"][list(scale).index(s)], rtol=1e-6)
    _, tangent = jax.jvp(lambda s: pick(x[1], s)["y"], (scale[1],), (1.0,))  # the fallback's: d/ds sin(row) s
    np.testing.assert_allclose(tangent, np.sin(np.asarray(x[1])), rtol=1e-6)
