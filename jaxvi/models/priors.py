"""The zoo's checks of prior hyperparameters: fixed numbers given when a model is built, so they are checked there,
with the argument's name, rather than found improper by CAVI's conjugacy check ("not conjugate") or never. A prior
given as a traced value (a model built inside ``jax.vmap`` or ``jax.grad``) has its shape checked only.

Checked values come back as NumPy arrays: a model closing over them is then equal (``jaxvi.equality``: by value) to
the same model built again, and reuses its compiled fit; JAX arrays are compared by identity, so a loop rebuilding
``bayesian_gaussian_mixture(x, 3)`` or ``lda(docs, K, V)`` compiled 4 programs on every call."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["numbers", "spd_matrices"]


def numbers(name: str, value, shape: tuple, dtype, *, above: float | None = None) -> np.ndarray | jax.Array:
    """``value``, a number or an array that broadcasts to ``shape``, as an array of ``dtype`` of its own shape.

    Raises:
      ValueError: naming ``name``, for a value that is not numeric, does not broadcast to ``shape``, is not finite,
        or is not greater than ``above`` everywhere.
    """
    if isinstance(value, jax.core.Tracer):
        _broadcasts(name, value, shape)
        return jnp.asarray(value, dtype)
    return np.asarray(_checked(name, value, shape, above), dtype)


def spd_matrices(name: str, value, shape: tuple, dtype) -> np.ndarray | jax.Array:
    """``value``, a symmetric positive definite ``(d, d)`` matrix or an array of them that broadcasts to ``shape``
    (``(..., d, d)``), as an array of ``dtype`` of its own shape.

    Raises:
      ValueError: naming ``name``, for a value that does not broadcast, is not finite, is not symmetric (beyond
        rounding: 1e-6 of its largest entry) or has no Cholesky factor.
    """
    if isinstance(value, jax.core.Tracer):
        _broadcasts(name, value, shape)
        return jnp.asarray(value, dtype)
    array = _checked(name, value, shape, None)
    matrices = f"symmetric positive definite {shape[-2]} x {shape[-1]} matrices"
    scale = np.max(np.abs(array), axis=(-2, -1), keepdims=True)
    if np.any(np.abs(array - np.swapaxes(array, -1, -2)) > 1e-6 * scale):
        raise ValueError(f"{name}: expected {matrices}, got a matrix that is not symmetric")
    try:
        np.linalg.cholesky(array)
    except np.linalg.LinAlgError:
        raise ValueError(f"{name}: expected {matrices}, got one that is not positive definite (smallest eigenvalue "
                         f"{np.linalg.eigvalsh(array).min():g})") from None
    return np.asarray(array, dtype)


def _broadcasts(name: str, value, shape: tuple) -> None:
    try:
        fits = np.broadcast_shapes(np.shape(value), shape) == tuple(shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{name}: expected a number or an array that broadcasts to shape {shape}, got shape "
                         f"{np.shape(value)}")


def _checked(name: str, value, shape: tuple, above: float | None) -> np.ndarray:
    """``numbers``' checks, in float64 on the host; the value in its own shape."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number or an array that broadcasts to shape {shape}, got "
                         f"{value!r}") from None
    _broadcasts(name, array, shape)
    bad = ~np.isfinite(array) if above is None else ~(np.isfinite(array) & (array > above))
    if bad.any():
        expected = "finite numbers" if above is None else f"finite numbers > {above:g}"
        raise ValueError(f"{name}: expected {expected}, got {array[bad].flat[0]:g}")
    return array
