r"""Symmetric positive-definite matrices (precisions, covariances, Wishart scales) by their Cholesky factor.

With :math:`A = LL^\top`: :math:`\log|A| = 2 \sum_i \log L_{ii}`, :math:`A^{-1} b = L^{-\top} L^{-1} b`.
A general LU factorisation would do the same work with pivoting, and XLA compiles its pivots' permutation
into several loops and gathers per call: a ``jnp.linalg.inv`` of 16 x 16 x 16 matrices compiles in 0.27 s on
the 2-core CPU against 0.08 s here. Where a matrix is not positive definite the Cholesky factor, and so every
result, is NaN, where ``slogdet`` would quietly return the log of the absolute determinant. The inputs are
symmetrised first (``jnp.linalg.cholesky``'s default), so derivatives with respect to them are symmetric.
Every function takes a batch of matrices ``(..., d, d)``.

The log-determinant's derivative is written in closed form, :math:`d \log|A| = \mathrm{tr}(A^{-1} dA)`
(``_spd_log_det_jvp``): differentiated through the factorisation instead, XLA compiled the Cholesky factor's
derivative, its transpose and their triangular solves. A vmapped value and gradient of a 16 x 16 log-determinant
compiled in 0.09 s against 0.21 s that way (0.25 s by ``slogdet``) on the 2-core CPU.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["spd_inverse", "spd_log_det", "spd_solve"]


def spd_log_det(a: jax.Array) -> jax.Array:
    r""":math:`\log|A|`, ``(...)``."""
    # a copy (XLA removes it): inside jit, a NumPy array that vmap batches reaches a function with its own derivative
    # as a NumPy constant, which JAX 0.10 refuses ("non-canonical constant"); jnp.asarray leaves it as it is
    return _spd_log_det(jnp.array(a, copy=True))


@jax.custom_jvp
def _spd_log_det(a: jax.Array) -> jax.Array:
    return _log_det_of_factor(jnp.linalg.cholesky(a))


def _log_det_of_factor(chol: jax.Array) -> jax.Array:
    return 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)


@_spd_log_det.defjvp
def _spd_log_det_jvp(primals, tangents):
    r""":math:`\mathrm{tr}(A^{-1} dA)`, :math:`A^{-1}` solved from A's Cholesky factor and symmetrised (the
    factorisation reads A's symmetric part): linear in dA, so the gradient is :math:`A^{-1}` itself."""
    (a,), (da,) = primals, tangents
    chol = jnp.linalg.cholesky(a)
    inverse = jax.scipy.linalg.cho_solve((chol, True), jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape))
    inverse = 0.5 * (inverse + jnp.swapaxes(inverse, -1, -2))
    return _log_det_of_factor(chol), jnp.sum(inverse * da, axis=(-2, -1))


def spd_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    r""":math:`A^{-1} B` for ``b`` of shape ``(..., d, k)``."""
    return jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(a), True), b)


def spd_inverse(a: jax.Array) -> jax.Array:
    r""":math:`A^{-1}`, ``(..., d, d)``."""
    return spd_solve(a, jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape))
