"""The zoo's checks of prior hyperparameters: fixed numbers given when a model is built, so they are checked there,
with the argument's name, rather than found improper by CAVI's conjugacy check ("not conjugate") or never."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = ["numbers", "spd_matrices"]


def numbers(name: str, value, shape: tuple, dtype, *, above: float | None = None) -> jnp.ndarray:
    """``value``, a number or an array that broadcasts to ``shape``, as a ``shape`` array of ``dtype``.

    Raises:
      ValueError: naming ``name``, for a value that is not numeric, does not broadcast, is not finite, or is not
        greater than ``above`` everywhere.
    """
    return jnp.asarray(_checked(name, value, shape, above), dtype)


def _checked(name: str, value, shape: tuple, above: float | None) -> np.ndarray:
    """``numbers``' checks, in float64 on the host."""
    try:
        array = np.broadcast_to(np.asarray(value, dtype=np.float64), shape)
    except (TypeError, ValueError):
        given = f"shape {np.shape(value)}" if hasattr(value, "shape") else repr(value)
        raise ValueError(f"{name}: expected a number or an array of shape {shape}, got {given}") from None
    bad = ~np.isfinite(array) if above is None else ~(np.isfinite(array) & (array > above))
    if bad.any():
        expected = "finite numbers" if above is None else f"finite numbers > {above:g}"
        raise ValueError(f"{name}: expected {expected}, got {array[bad].flat[0]:g}")
    return array


def spd_matrices(name: str, value, shape: tuple, dtype) -> jnp.ndarray:
    """``value``, a symmetric positive definite ``(d, d)`` matrix or an array of them that broadcasts to ``shape``
    (``(..., d, d)``), as a ``shape`` array of ``dtype``.

    Raises:
      ValueError: naming ``name``, for a value that does not broadcast, is not finite, is not symmetric or has no
        Cholesky factor.
    """
    array = _checked(name, value, shape, None)
    if not np.allclose(array, np.swapaxes(array, -1, -2), rtol=1e-6, atol=0.0):
        raise ValueError(f"{name}: expected symmetric positive definite {shape[-2]} x {shape[-1]} matrices, got a "
                         f"matrix that is not symmetric")
    try:
        np.linalg.cholesky(array)
    except np.linalg.LinAlgError:
        raise ValueError(f"{name}: expected symmetric positive definite {shape[-2]} x {shape[-1]} matrices, got one "
                         f"that is not positive definite (smallest eigenvalue "
                         f"{np.linalg.eigvalsh(array).min():g})") from None
    return jnp.asarray(array, dtype)
