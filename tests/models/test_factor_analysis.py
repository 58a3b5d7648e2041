"""Factor analysis against scikit-learn and PPCA against its closed-form maximum likelihood."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.decomposition import FactorAnalysis

import jaxvi

N, D, d = 400, 6, 2


@pytest.fixture(scope="module")
def factor_data():
    rng = np.random.default_rng(0)
    loadings = rng.normal(size=(D, d))
    noise = rng.uniform(0.2, 1.0, size=D)
    return rng.normal(size=(N, d)) @ loadings.T + rng.normal(size=(N, D)) * np.sqrt(noise) + rng.normal(size=D)


def fit(lg, x, **em):
    method = jaxvi.EM(**{"max_iter": 3000, "tol": 1e-10, "m_step": lg.m_step, **em})
    return jaxvi.infer(lg.model, method, x, key=jax.random.key(0), progress=False)


def gaussian_log_likelihood(x, mean, cov):
    centred = x - mean
    _, log_det = np.linalg.slogdet(cov)
    return -0.5 * np.sum(centred @ np.linalg.inv(cov) * centred) - 0.5 * len(x) * (x.shape[1] * np.log(2 * np.pi) + log_det)


def test_factor_analysis_matches_scikit_learn(factor_data):
    reference = FactorAnalysis(d, tol=1e-12, max_iter=20000, svd_method="lapack").fit(factor_data)
    with jax.enable_x64(True):
        result = fit(jaxvi.models.factor_analysis(d), jnp.asarray(factor_data))
        assert bool(result.converged)
        np.testing.assert_allclose(float(result.objective), reference.score(factor_data) * N, rtol=1e-6)
        # the objective is the log-likelihood of the fitted marginal N(mu, W W^T + Psi)
        params = jax.tree_util.tree_map(np.asarray, result.params)
        np.testing.assert_allclose(float(result.objective),
                                   gaussian_log_likelihood(factor_data, params.mean, np.asarray(result.params.covariance)),
                                   rtol=1e-10)
        np.testing.assert_allclose(result.params.covariance, reference.get_covariance(), rtol=1e-3, atol=1e-4)
        trace = np.asarray(result.trace)
        assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[:-1]))


def test_factor_analysis_in_float32_matches_scikit_learn(factor_data):
    reference = FactorAnalysis(d, tol=1e-12, max_iter=20000, svd_method="lapack").fit(factor_data)
    result = fit(jaxvi.models.factor_analysis(d), jnp.asarray(factor_data, jnp.float32), tol=1e-7)
    np.testing.assert_allclose(float(result.objective), reference.score(factor_data) * N, rtol=1e-4)


def test_ppca_reaches_the_tipping_bishop_solution(factor_data):
    """ML PPCA: W W^T = U (L - s2 I) U^T over the top-d eigenpairs, s2 = mean of the other eigenvalues."""
    cov = np.cov(factor_data.T, bias=True)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    noise = eigenvalues[d:].mean()
    top = eigenvectors[:, :d] * np.sqrt(eigenvalues[:d] - noise)
    model_cov = top @ top.T + noise * np.eye(D)
    with jax.enable_x64(True):
        result = fit(jaxvi.models.ppca(d), jnp.asarray(factor_data), tol=0.0)  # all 3000: W converges slowly
        np.testing.assert_allclose(float(result.objective),
                                   gaussian_log_likelihood(factor_data, factor_data.mean(0), model_cov), rtol=1e-10)
        np.testing.assert_allclose(float(result.params.noise_variance), noise, rtol=1e-7)
        loadings = np.asarray(result.params.loadings)
        np.testing.assert_allclose(loadings @ loadings.T, top @ top.T, atol=1e-6)
        np.testing.assert_allclose(result.params.mean, factor_data.mean(0), atol=1e-10)


def test_gradient_m_step_fits_factor_analysis_like_the_closed_form(factor_data):
    with jax.enable_x64(True):
        x = jnp.asarray(factor_data[:200])
        lg = jaxvi.models.factor_analysis(d)
        closed = fit(lg, x, max_iter=400, tol=1e-8)
        gradient = fit(lg, x, max_iter=400, tol=1e-8, m_step=None, m_step_iters=10)
        trace = np.asarray(gradient.trace)
        assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[:-1]))
        np.testing.assert_allclose(float(gradient.objective), float(closed.objective), rtol=1e-4)


def test_posterior_of_a_fit_is_the_factor_analysis_posterior(factor_data):
    """E[z|x] = (I + W^T Psi^-1 W)^-1 W^T Psi^-1 (x - mu) at the fitted parameters."""
    x = jnp.asarray(factor_data[:50], jnp.float32)
    result = fit(jaxvi.models.factor_analysis(d), x, max_iter=20)
    p = jax.tree_util.tree_map(np.asarray, result.params)
    w_psi = p.loadings.T / np.exp(p.log_noise)
    cov = np.linalg.inv(np.eye(d) + w_psi @ p.loadings)
    post = result.posterior(x)
    np.testing.assert_allclose(post.covariance, np.broadcast_to(cov, (50, d, d)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(post.mean, (np.asarray(x) - p.mean) @ w_psi.T @ cov, rtol=1e-4, atol=1e-5)


def test_factor_models_reject_bad_data():
    with pytest.raises(ValueError, match=r"factor_analysis expects one \(N, D\) array"):
        jaxvi.infer(jaxvi.models.factor_analysis(2).model, jaxvi.EM(), jnp.zeros(10), key=jax.random.key(0))
    with pytest.raises(ValueError, match="n_factors: expected at most D = 3 factors, got 4"):
        jaxvi.infer(jaxvi.models.factor_analysis(4).model, jaxvi.EM(), jnp.zeros((10, 3)), key=jax.random.key(0))
