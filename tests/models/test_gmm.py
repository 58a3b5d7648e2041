"""The Gaussian mixture against scikit-learn's GaussianMixture: same data, same init, same iterations; and the
zoo's defaults against scikit-learn's on real data (iris, wine)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_iris, load_wine
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

import jaxvi
from jaxvi.models import GMMParams, gaussian_mixture
from jaxvi.kmeans import inertia, kmeans, lloyd, rows_by_potential

K = 4


def sklearn_init(params: GMMParams, covariance: str):
    weights = np.asarray(params.weights, np.float64)
    prec_chol = np.asarray(params.prec_chol, np.float64)
    precisions = np.einsum("kij,klj->kil", prec_chol, prec_chol) if covariance == "full" else prec_chol**2
    return dict(weights_init=weights / weights.sum(), means_init=np.asarray(params.means, np.float64),
                precisions_init=precisions)


def fit_both(x, covariance, iters):
    gm = gaussian_mixture(K, covariance=covariance)
    init = gm.model.init(jax.random.key(1), jnp.asarray(x))
    ours = jaxvi.infer(gm.model, jaxvi.EM(max_iter=iters, tol=0.0, m_step=gm.m_step), x,
                       key=jax.random.key(0), init_params=init, progress=False)
    theirs = GaussianMixture(K, covariance_type=covariance, max_iter=iters, tol=0.0,
                             **sklearn_init(init, covariance)).fit(np.asarray(x, np.float64))
    return ours, theirs


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_matches_sklearn_in_float32(blobs, covariance):
    x = blobs.astype(np.float32)
    ours, theirs = fit_both(x, covariance, iters=25)
    assert int(ours.n_iter) == 25
    np.testing.assert_allclose(float(ours.objective), theirs.score(x.astype(np.float64)) * len(x), rtol=1e-4)
    np.testing.assert_allclose(ours.params.weights, theirs.weights_, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(ours.params.means, theirs.means_, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ours.params.prec_chol, theirs.precisions_cholesky_, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ours.posterior(x).probs, theirs.predict_proba(x.astype(np.float64)), atol=1e-3)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_matches_sklearn_to_machine_precision_in_float64(blobs, covariance):
    with jax.enable_x64(True):
        ours, theirs = fit_both(blobs, covariance, iters=25)
        assert ours.objective.dtype == jnp.float64
        np.testing.assert_allclose(float(ours.objective), theirs.score(blobs) * len(blobs), rtol=1e-12)
        np.testing.assert_allclose(ours.params.means, theirs.means_, rtol=1e-10)
        np.testing.assert_allclose(ours.params.prec_chol, theirs.precisions_cholesky_, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_initialisers_recover_well_separated_clusters(init):
    rng = np.random.default_rng(3)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    labels = rng.integers(0, 4, 800)
    x = (centers[labels] + rng.normal(size=(800, 2))).astype(np.float32)
    gm = gaussian_mixture(4, init=init)
    result = jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step, n_init=4), x, key=jax.random.key(0), progress=False)
    found = np.asarray(result.params.means)
    nearest = np.linalg.norm(found[:, None] - centers[None], axis=-1).min(axis=0)
    assert nearest.max() < 0.3
    np.testing.assert_allclose(np.sort(np.asarray(result.params.weights)), np.sort(np.bincount(labels) / 800), atol=0.01)


def test_a_component_that_loses_all_its_data_stays_finite():
    x = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    gm = gaussian_mixture(2)
    far_away = GMMParams(jnp.zeros(2), jnp.array([[0.0, 0.0], [1e3, 1e3]]), jnp.stack([jnp.eye(2)] * 2))
    result = jaxvi.infer(gm.model, jaxvi.EM(max_iter=10, m_step=gm.m_step), x, key=jax.random.key(0),
                         init_params=far_away, progress=False)
    chex.assert_tree_all_finite(result.params)
    assert float(result.params.weights[1]) < 1e-6
    # the empty component keeps scikit-learn's regularised covariance reg_covar * I
    np.testing.assert_allclose(result.params.covariances[1], 1e-6 * np.eye(2), rtol=1e-3)
    np.testing.assert_allclose(result.params.means[1], 0.0, atol=1e-6)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_the_m_step_in_chunks_or_at_once_is_the_closed_form(blobs, covariance):
    """The M-step's sums over the 2,000 blobs in chunks of 300 (6 and a remainder of 200), and at once (the default
    here: fewer than ``CHUNK_ROWS``), equal the closed form in float64 NumPy, from random responsibilities."""
    from jaxvi.exact import DiscretePosterior

    resp = np.random.default_rng(1).dirichlet(np.ones(K), len(blobs))
    nk = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps
    means = resp.T @ blobs / nk[:, None]
    centred = blobs[None] - means[:, None]                                                  # (K, N, D)
    if covariance == "full":
        cov = np.einsum("nk,knd,kne->kde", resp, centred, centred) / nk[:, None, None] + 1e-6 * np.eye(3)
        prec_chol = np.linalg.inv(np.linalg.cholesky(cov)).transpose(0, 2, 1)
    else:
        prec_chol = 1 / np.sqrt(np.einsum("nk,knd->kd", resp, centred**2) / nk[:, None] + 1e-6)
    with jax.enable_x64(True):
        posterior = DiscretePosterior(jnp.log(resp), jnp.zeros(len(blobs)), jnp.arange(K))
        for chunk_size in (300, None):
            params = jaxvi.models.gmm_m_step(covariance, chunk_size=chunk_size)(None, jnp.asarray(blobs), posterior)
            np.testing.assert_allclose(params.weights, nk / nk.sum(), rtol=1e-12)
            np.testing.assert_allclose(params.means, means, rtol=1e-11)
            np.testing.assert_allclose(params.prec_chol, prec_chol, rtol=1e-10, atol=1e-12)


def test_bad_settings_and_data_are_rejected_with_a_named_argument():
    with pytest.raises(ValueError, match="covariance"):
        gaussian_mixture(2, covariance="tied")
    for chunk_size in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"chunk_size: expected an integer >= 1 or None, got {chunk_size}"):
            gaussian_mixture(2, chunk_size=chunk_size)
    with pytest.raises(ValueError, match=r"init: expected one of \('kmeans', 'kmeans\+\+', 'random'\), got 'spectral'"):
        gaussian_mixture(2, init="spectral")
    gm = gaussian_mixture(3)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step), np.ones(10, np.float32), key=jax.random.key(0))
    with pytest.raises(ValueError, match="at least n_components=3"):
        jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step), np.ones((2, 2), np.float32), key=jax.random.key(0))


def test_lloyd_stops_where_scikit_learn_s_kmeans_stops():
    """init="kmeans"'s Lloyd rounds from given seeds end at scikit-learn's KMeans centers after as many rounds: both
    stop at a squared center shift of at most 1e-4 times the data's mean variance, before the labels stop changing
    (24 rounds against 74 for seed 4). Rows of weight 0 are left out: scikit-learn sees only the others."""
    with jax.enable_x64(True):
        for seed in (0, 4):
            rng = np.random.default_rng(seed)
            x = np.concatenate([rng.normal(center, 1.0, (500, 2)) for center in rng.uniform(-4, 4, (6, 2))])
            kept = rng.uniform(size=len(x)) > 0.2
            seeds = x[kept][rng.choice(kept.sum(), 6, replace=False)]
            theirs = KMeans(6, init=seeds, n_init=1, max_iter=100, algorithm="lloyd").fit(x[kept])
            strict = KMeans(6, init=seeds, n_init=1, max_iter=100, tol=0.0, algorithm="lloyd").fit(x[kept])
            centers, rounds = jax.jit(lloyd)(jnp.asarray(x), jnp.asarray(seeds), jnp.asarray(kept, jnp.float64))
            assert int(rounds) == theirs.n_iter_ < strict.n_iter_, (seed, int(rounds), theirs.n_iter_, strict.n_iter_)
            np.testing.assert_allclose(centers, theirs.cluster_centers_, rtol=0, atol=1e-12)


def test_k_means_plus_plus_draws_each_row_with_its_share_of_the_potential():
    """k-means++'s draws (``rows_by_potential``), at 2^16 uniforms evenly spaced in [0, 1): each row is drawn for its
    share p_i / sum p of them, to the grid's spacing. A row of potential 0 (a center's own row, a left-out row) is never
    drawn, also after a potential 10^8 times larger, past which float32's running sum steps by 8."""
    rng = np.random.default_rng(0)
    potential = rng.exponential(size=1000)
    potential[rng.choice(1000, 300, replace=False)] = 0.0
    potential[0] = 1e8
    uniforms = (np.arange(2**16) + 0.5) / 2**16
    draw = jax.jit(rows_by_potential)
    for p in (potential[1:], potential):
        rows = np.asarray(draw(jnp.asarray(p, jnp.float32), jnp.asarray(uniforms, jnp.float32)))
        assert rows.min() >= 0 and rows.max() < len(p) and not np.any(p[rows] == 0)
        np.testing.assert_allclose(np.bincount(rows, minlength=len(p)) / 2**16, p / p.sum(), rtol=0,
                                   atol=2 / 2**16)


def test_k_means_of_several_runs_keeps_the_run_of_least_inertia():
    """``kmeans(n_init=5)``: the centers of the five runs from ``split(key, 5)``, each run alone, of the least inertia
    (sum of squared distances to the nearest center, summed in float64 here); rows of weight 0 left out of it. Twelve
    clusters of unequal spread, so that the runs end in different optima."""
    rng = np.random.default_rng(1)
    x = (rng.normal(0, 4, (12, 2))[rng.integers(0, 12, 600)] + rng.normal(size=(600, 2))).astype(np.float32)
    weights = (rng.uniform(size=600) > 0.1).astype(np.float32)
    key = jax.random.key(0)
    best = jax.jit(lambda k, d, w: kmeans(k, d, 12, w, n_init=5))(key, x, weights)
    runs = [np.asarray(jax.jit(lambda k, d, w: kmeans(k, d, 12, w))(k, x, weights)) for k in jax.random.split(key, 5)]
    sse = [float(np.sum(weights * np.min(((x[:, None].astype(np.float64) - c[None]) ** 2).sum(2), axis=1)))
           for c in runs]
    assert len({round(v, 3) for v in sse}) > 1, sse  # the runs differ
    np.testing.assert_array_equal(best, runs[int(np.argmin(sse))])
    np.testing.assert_allclose(float(inertia(jnp.asarray(x), best, jnp.asarray(weights))), min(sse), rtol=1e-6)


def test_kmeans_of_float32_data_far_from_the_origin_are_those_of_the_same_data_near_it():
    """init="kmeans" on float32 data at 10^4 with unit spread starts from the centers it finds for the same data moved
    to 0 (exactly: float32's values at 10^4 less 10^4), moved back: the same clusters, whose means (the start's M-step:
    the data less the first datum, summed, divided, the first datum added back) round a few times at 10^4, each by at
    most half of float32's spacing s = 2^-10 there, so to 2 s. The distances of Lloyd's rounds were expanded about the
    origin, where float32 kept none of their digits at 10^4 (the centers were 6.2 off, and EM went on from them to a
    worse optimum)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 3))[rng.integers(0, 3, 2000)] * 4 + rng.normal(size=(2000, 3))
    far = (x + 1e4).astype(np.float32)
    near = (far.astype(np.float64) - 1e4).astype(np.float32)
    gm = gaussian_mixture(3)
    moved = np.asarray(gm.model.init(jax.random.key(0), jnp.asarray(far)).means, np.float64) - 1e4
    np.testing.assert_allclose(moved, gm.model.init(jax.random.key(0), jnp.asarray(near)).means, rtol=0,
                               atol=2 * float(np.spacing(np.float32(1e4))))


# --- the zoo's defaults on real data ----------------------------------------------------------------

@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_defaults_reach_scikit_learn_s_defaults_on_iris(covariance):
    """gaussian_mixture(3) fitted by EM's defaults (init="kmeans", tol=1e-3 per datum as scikit-learn's) ends
    within 1e-3 per datum of scikit-learn's default fit, from every one of four keys, with the same clusters."""
    x = load_iris().data
    theirs = GaussianMixture(3, covariance_type=covariance, random_state=0).fit(x)
    gm = gaussian_mixture(3, covariance=covariance)
    with jax.enable_x64(True):
        for seed in range(4):
            ours = jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step), jnp.asarray(x), key=jax.random.key(seed),
                               progress=False)
            assert bool(ours.converged)
            assert abs(float(ours.objective) / len(x) - theirs.score(x)) < 1e-3, (seed, float(ours.objective) / len(x))
            labels = np.asarray(ours.posterior(jnp.asarray(x)).probs).argmax(axis=1)
            assert adjusted_rand_score(labels, theirs.predict(x)) > 0.97


def test_greedy_kmeans_plus_plus_seeds_reach_scikit_learn_s_fit_on_iris_from_nearly_every_key():
    """80 keys (jax.random.key(0..39) and 40 split from key(0)), K = 3, full covariance, float32, vmapped: 78 fits
    end at scikit-learn's default fit (log p(D) / N = -1.2013), 2 in k-means' worse optimum (-1.32). With plain
    k-means++ seeds (one candidate a step) 10 did, log p(D) = -202.25 against -180.2; scikit-learn's seeds are greedy
    (2 + log K candidates a step), and its fit reached -180.2 from 40 seeds of 40."""
    x = load_iris().data.astype(np.float32)
    theirs = GaussianMixture(3, random_state=0).fit(x).score(x)
    gm = gaussian_mixture(3)
    fit = jax.jit(jax.vmap(lambda key: jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step), x, key=key,
                                                   progress=False).objective))
    keys = jnp.concatenate([jax.vmap(jax.random.key)(jnp.arange(40)), jax.random.split(jax.random.key(0), 40)])
    ours = np.asarray(fit(keys)) / len(x)
    assert np.sum(np.abs(ours - theirs) >= 1e-3) <= 2, np.flatnonzero(np.abs(ours - theirs) >= 1e-3)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_default_stopping_rule_is_scikit_learn_s_on_wine(covariance):
    """From the same start (k-means++ seeds: k-means starts converge at once here), EM's defaults and
    scikit-learn's stop after the same number of iterations (scikit-learn takes one more M-step after its test),
    at the same parameters (standardised wine)."""
    x = load_wine().data
    x = (x - x.mean(0)) / x.std(0)
    gm = gaussian_mixture(3, covariance=covariance, init="kmeans++")
    with jax.enable_x64(True):
        start = gm.model.init(jax.random.key(1), jnp.asarray(x))
        ours = jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step), jnp.asarray(x), key=jax.random.key(0),
                           init_params=start, progress=False)
        n_iter, same_start = int(ours.n_iter), sklearn_init(start, covariance)
    theirs = GaussianMixture(3, covariance_type=covariance, **same_start).fit(x)
    assert theirs.converged_ and bool(ours.converged)
    assert theirs.n_iter_ == n_iter + 1 > 2
    with pytest.warns(UserWarning, match="converge"):  # scikit-learn's ConvergenceWarning: max_iter=n_iter, tol=0
        same = GaussianMixture(3, covariance_type=covariance, max_iter=n_iter, tol=0.0, **same_start).fit(x)
    np.testing.assert_allclose(float(ours.objective), same.score(x) * len(x), rtol=1e-11)
    np.testing.assert_allclose(ours.params.means, same.means_, rtol=1e-8, atol=1e-10)
