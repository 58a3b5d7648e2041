"""jaxvi.linalg: log-determinants, solves and inverses of symmetric positive-definite matrices by Cholesky,
against NumPy's LU-based ones in float64."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxvi.linalg import spd_inverse, spd_log_det, spd_solve


def _spd(rng, batch, d):
    a = rng.normal(size=batch + (d, d))
    return a @ np.swapaxes(a, -1, -2) + 0.1 * np.eye(d)


def test_log_det_solve_and_inverse_equal_numpy_s_on_a_batch():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        a, b = _spd(rng, (3, 2), 5), rng.normal(size=(3, 2, 5, 4))
        np.testing.assert_allclose(spd_log_det(jnp.asarray(a)), np.linalg.slogdet(a)[1], rtol=1e-12)
        np.testing.assert_allclose(spd_solve(jnp.asarray(a), jnp.asarray(b)), np.linalg.solve(a, b), rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(spd_inverse(jnp.asarray(a)), np.linalg.inv(a), rtol=1e-9, atol=1e-12)


def test_the_log_det_s_gradient_is_the_symmetric_inverse_and_a_matrix_not_positive_definite_gives_nan():
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        a = _spd(rng, (), 4)
        upper = np.triu(a)  # not symmetric: read as its symmetric part, 0.5 (A + diag A), positive definite
        grad = jax.grad(spd_log_det)(jnp.asarray(a))
        np.testing.assert_allclose(grad, np.linalg.inv(a), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grad, np.asarray(grad).T, rtol=0, atol=0)
        np.testing.assert_allclose(spd_log_det(jnp.asarray(upper)), np.linalg.slogdet(0.5 * (upper + upper.T))[1],
                                   rtol=1e-12)
        indefinite = np.diag([1.0, -2.0, 3.0])
        assert np.isnan(float(spd_log_det(jnp.asarray(indefinite))))
        assert np.all(np.isnan(np.asarray(spd_inverse(jnp.asarray(indefinite)))))
