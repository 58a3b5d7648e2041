"""Factor analysis against scikit-learn and PPCA against its closed-form maximum likelihood: on simulated data,
and with the zoo's defaults on scikit-learn's breast-cancer data."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.decomposition import PCA, FactorAnalysis

import jaxvi

N, D, d = 400, 6, 2
FACTORS = 5  # on breast cancer (569 x 30)


@pytest.fixture(scope="module")
def factor_data():
    rng = np.random.default_rng(0)
    loadings = rng.normal(size=(D, d))
    noise = rng.uniform(0.2, 1.0, size=D)
    return rng.normal(size=(N, d)) @ loadings.T + rng.normal(size=(N, D)) * np.sqrt(noise) + rng.normal(size=D)


@pytest.fixture(scope="module")
def reference(factor_data):
    """scikit-learn's FactorAnalysis run to convergence on the simulated data (about 5,000 iterations), fitted
    once for the float64 and float32 tests."""
    return FactorAnalysis(d, tol=1e-12, max_iter=20000, svd_method="lapack").fit(factor_data)


@pytest.fixture(scope="module")
def breast_cancer():
    """scikit-learn's breast-cancer measurements, standardised (569 x 30, float64 NumPy)."""
    x = load_breast_cancer().data
    return (x - x.mean(0)) / x.std(0)


def fit(lg, x, **em):
    method = jaxvi.EM(**{"max_iter": 3000, "tol": 1e-10, "m_step": lg.m_step, **em})
    return jaxvi.infer(lg.model, method, x, key=jax.random.key(0), progress=False)


def gaussian_log_likelihood(x, mean, cov):
    centred = x - mean
    _, log_det = np.linalg.slogdet(cov)
    return -0.5 * np.sum(centred @ np.linalg.inv(cov) * centred) - 0.5 * len(x) * (x.shape[1] * np.log(2 * np.pi) + log_det)


def test_factor_analysis_matches_scikit_learn(factor_data, reference):
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


def test_factor_analysis_in_float32_matches_scikit_learn(factor_data, reference):
    # tol=0: every iteration (a tol finer than float32 resolves, ~1.6e-5 per datum here, stops at the resolution)
    result = fit(jaxvi.models.factor_analysis(d), jnp.asarray(factor_data, jnp.float32), tol=0.0)
    np.testing.assert_allclose(float(result.objective), reference.score(factor_data) * N, rtol=1e-5)


def tipping_bishop(x, n):
    """ML PPCA: W W^T = U (L - s2 I) U^T over the top-n eigenpairs, s2 = mean of the other eigenvalues.
    Returns (noise s2, top = U (L - s2 I)^(1/2), the model covariance)."""
    cov = np.cov(x.T, bias=True)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    noise = eigenvalues[n:].mean()
    top = eigenvectors[:, :n] * np.sqrt(eigenvalues[:n] - noise)
    return noise, top, top @ top.T + noise * np.eye(x.shape[1])


def test_ppca_reaches_the_tipping_bishop_solution(factor_data):
    noise, top, model_cov = tipping_bishop(factor_data, d)
    with jax.enable_x64(True):
        # from random loadings (the default start is this solution): all 3000 iterations, W converges slowly
        result = fit(jaxvi.models.ppca(d, init="random"), jnp.asarray(factor_data), tol=0.0)
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
    result = fit(jaxvi.models.factor_analysis(d), x, max_iter=20, tol=0.0)
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
    with pytest.raises(ValueError, match="n_components: expected at most D = 3 components, got 4"):
        jaxvi.infer(jaxvi.models.ppca(4).model, jaxvi.EM(), jnp.zeros((10, 3)), key=jax.random.key(0))


def test_a_constant_dimension_s_noise_is_floored_at_a_fraction_of_the_mean_variance():
    """500 of the digits' 64 pixels, 8 of them constant: the noise of those was floored at the tiniest float (1e-38),
    where the E-step failed as 'not quadratic' (and on all 1,797 digits log p(D) came out at +9,124). Now it rests at
    1e-12 of the mean pixel variance and the fit is finite."""
    from sklearn.datasets import load_digits

    x = load_digits().data[:500].astype(np.float32)
    constant = np.flatnonzero(x.var(axis=0) == 0)
    fa = jaxvi.models.factor_analysis(5)
    result = jaxvi.infer(fa.model, jaxvi.EM(m_step=fa.m_step), x, key=jax.random.key(0), progress=False)
    assert constant.size == 8 and np.isfinite(float(result.objective)) and float(result.objective) < 0
    noise = np.asarray(result.params.noise_variance)
    np.testing.assert_allclose(noise[constant], 1e-12 * x.var(axis=0).mean(), rtol=1e-3)


def test_factor_models_reject_unknown_options():
    with pytest.raises(ValueError, match=r"init: expected one of \('pca', 'random'\), got 'kmeans'"):
        jaxvi.models.factor_analysis(2, init="kmeans")
    with pytest.raises(ValueError, match=r"update: expected one of \('em', 'svd'\), got 'lapack'"):
        jaxvi.models.factor_analysis(2, update="lapack")
    with pytest.raises(ValueError, match="init: expected one of"):
        jaxvi.models.ppca(2, init="svd")


# --- the zoo's defaults on real data -----------------------------------------------------------------

def test_factor_analysis_defaults_reach_scikit_learn_on_breast_cancer(breast_cancer):
    """From its PCA start, factor_analysis(5) with the README's settings (EM(tol=1e-6, max_iter=2000); tol is
    per datum, scikit-learn's on the total) ends within 1e-3 per datum of scikit-learn's FactorAnalysis(5,
    tol=1e-4) (-16.5468; this data set is a Heywood case, the optimum lies at a noise variance of ~0, where
    every method creeps: scikit-learn's default tol=1e-2 stops at -16.5505)."""
    reference = FactorAnalysis(FACTORS, tol=1e-4, max_iter=100_000).fit(breast_cancer).score(breast_cancer)
    with jax.enable_x64(True):
        fa = jaxvi.models.factor_analysis(FACTORS)
        result = jaxvi.infer(fa.model, jaxvi.EM(m_step=fa.m_step, tol=1e-6, max_iter=2000), jnp.asarray(breast_cancer),
                             key=jax.random.key(0), progress=False)
        per_datum = float(result.objective) / len(breast_cancer)
        assert bool(result.converged)
        assert abs(per_datum - reference) < 1e-3, (per_datum, reference)
        trace = np.asarray(result.trace)[: int(result.n_iter) + 1]
        assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[:-1]))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_svd_update_is_scikit_learn_s_and_never_lowers_the_log_likelihood(breast_cancer):
    """update="svd" from the same noise variances takes scikit-learn's iterates (60 of them, from random loadings,
    far from the optimum), log p(D) never falls, and the streamed Statistics form gives the same trace."""
    iters = 60
    with jax.enable_x64(True):
        fa = jaxvi.models.factor_analysis(FACTORS, init="random", update="svd")
        x = jnp.asarray(breast_cancer)
        start = fa.model.init(jax.random.key(1), x)
        results = [jaxvi.infer(fa.model, jaxvi.EM(m_step=m_step, max_iter=iters, tol=0.0, chunk_size=200), x,
                               key=jax.random.key(0), init_params=start, progress=False)
                   for m_step in (fa.m_step, fa.statistics)]
        noise, loadings = np.asarray(results[0].params.noise_variance), np.asarray(results[0].params.loadings)
    reference = FactorAnalysis(FACTORS, tol=0.0, max_iter=iters, svd_method="lapack",
                               noise_variance_init=np.exp(np.asarray(start.log_noise))).fit(breast_cancer)
    # scikit-learn adds 1e-12 to sqrt(psi) in its update: 3e-9 apart after 60 iterations
    np.testing.assert_allclose(noise, reference.noise_variance_, rtol=1e-8)
    np.testing.assert_allclose(loadings @ loadings.T, reference.components_.T @ reference.components_, atol=1e-9)
    np.testing.assert_allclose(float(results[0].objective), reference.score(breast_cancer) * len(breast_cancer),
                               rtol=1e-10)
    trace = np.asarray(results[0].trace)
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[:-1]))
    assert trace[-1] - trace[0] > 10 * len(breast_cancer)  # a long climb, not a few rounding steps
    np.testing.assert_allclose(results[1].trace, trace, rtol=1e-12)


def test_svd_loadings_maximise_the_log_likelihood_given_the_noise(breast_cancer):
    """The W of one svd update is a maximiser of log p(D) over W with Psi held: its gradient (autodiff through
    the marginal N(mean, W W^T + Psi)) is zero, and perturbations only lower it."""
    with jax.enable_x64(True):
        x = jnp.asarray(breast_cancer)
        fa = jaxvi.models.factor_analysis(FACTORS, init="random", update="svd")
        noise = fa.model.init(jax.random.key(2), x).log_noise
        start = jaxvi.models.FactorAnalysisParams(x.mean(0), jnp.zeros((x.shape[1], FACTORS)), noise)
        best = fa.m_step(start, x, None).loadings

        @jax.jit
        def log_likelihood(loadings):
            cov = loadings @ loadings.T + jnp.diag(jnp.exp(noise))
            return jnp.sum(jax.scipy.stats.multivariate_normal.logpdf(x, x.mean(0), cov))

        gradient = jax.grad(log_likelihood)(best)
        np.testing.assert_allclose(gradient, 0.0, atol=1e-6 * float(jnp.abs(log_likelihood(best))))
        for key in jax.random.split(jax.random.key(3), 5):
            assert log_likelihood(best + 1e-2 * jax.random.normal(key, best.shape)) < log_likelihood(best)


def test_ppca_defaults_reach_the_closed_form_and_scikit_learn_on_breast_cancer(breast_cancer):
    """ppca(5) with EM's defaults starts at Tipping & Bishop's maximum likelihood and stays there; scikit-learn's
    PCA(5).score is the same model with the covariance's N - 1 normalisation (2.3e-5 per datum lower here)."""
    noise, top, model_cov = tipping_bishop(breast_cancer, FACTORS)
    reference = PCA(FACTORS).fit(breast_cancer).score(breast_cancer)
    with jax.enable_x64(True):
        pp = jaxvi.models.ppca(FACTORS)
        result = jaxvi.infer(pp.model, jaxvi.EM(m_step=pp.m_step), jnp.asarray(breast_cancer), key=jax.random.key(0),
                             progress=False)
        assert bool(result.converged) and int(result.n_iter) <= 3
        np.testing.assert_allclose(float(result.objective),
                                   gaussian_log_likelihood(breast_cancer, breast_cancer.mean(0), model_cov), rtol=1e-12)
        np.testing.assert_allclose(float(result.params.noise_variance), noise, rtol=1e-10)
        per_datum = float(result.objective) / len(breast_cancer)
        assert reference <= per_datum < reference + 1e-3, (per_datum, reference)
