"""Chunked evaluation over data (``jaxvi.chunks``): the same numbers as one ``vmap``, in either chunk layout."""
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
