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


def test_the_log_det_s_second_derivative_is_minus_the_inverse_s_and_numpy_priors_vmapped_inside_jit_are_taken():
    """Its derivative is written by hand (tr(A^-1 dA)); differentiated again it is -A^-1 dA A^-1, as a Wishart's
    expected statistics' derivatives need. A NumPy array batched by vmap inside jit (a model's fixed priors) is
    taken, not refused as a constant JAX cannot hand to a function with its own derivative."""
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        a, direction = _spd(rng, (), 4), rng.normal(size=(4, 4))
        direction = direction + direction.T
        _, change = jax.jvp(jax.grad(spd_log_det), (jnp.asarray(a),), (jnp.asarray(direction),))
        inverse = np.linalg.inv(a)
        np.testing.assert_allclose(change, -inverse @ direction @ inverse, rtol=1e-9, atol=1e-12)
    priors, values = _spd(rng, (3,), 2).astype(np.float32), _spd(rng, (3,), 2).astype(np.float32)
    both = jax.jit(lambda v: jax.vmap(lambda x, p: spd_log_det(x) + spd_log_det(p))(v, priors))(jnp.asarray(values))
    np.testing.assert_allclose(both, np.linalg.slogdet(values)[1] + np.linalg.slogdet(priors)[1], rtol=1e-5)
