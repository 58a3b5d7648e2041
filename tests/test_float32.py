"""EM in float32: log p(D) never falls by more than the stated resolution (``jaxvi.run.RESOLUTION_ULPS``
units in the last place), its final value agrees with an independent float64 NumPy evaluation of the same
parameters, and a tolerance finer than float32 resolves is reported, not "converged"."""
import importlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.datasets import load_breast_cancer
from sklearn.decomposition import FactorAnalysis

import jaxvi
from jaxvi.run import RESOLUTION_ULPS, STOP_REASONS, resolution as resolution_of

ITERATIONS = 2000
EPS = np.finfo(np.float32).eps


# --- float64 log p(D) in NumPy, from the closed forms ---------------------------------------------------------

def gaussian_logpdf(x, mean, prec_chol):
    """log N(x | mean, (U U^T)^{-1}) with U = prec_chol (upper triangular) per row of x: (N,)."""
    y = (x - mean) @ prec_chol
    return (-0.5 * x.shape[-1] * np.log(2 * np.pi) + np.sum(np.log(np.diag(prec_chol)))
            - 0.5 * np.sum(y**2, axis=-1))


def gmm_log_evidence(p, x):
    weights = np.exp(p.logits - logsumexp(p.logits))
    per_component = np.stack([gaussian_logpdf(x, m, u) for m, u in zip(p.means, p.prec_chol)], axis=1)
    return np.sum(logsumexp(per_component + np.log(weights), axis=1))


def hmm_log_evidence(p, x, covar_prior):
    """The forward algorithm in log space over every sequence of ``x`` (N, T, D), diagonal Gaussian
    emissions, plus the zoo's log prior -c/2 sum ||P_k||^2."""
    log_initial = p.initial_logits - logsumexp(p.initial_logits)
    log_transition = p.transition_logits - logsumexp(p.transition_logits, axis=1, keepdims=True)
    means, prec = p.emission.means, p.emission.prec_chol
    total = 0.0
    for sequence in x:
        emission = np.stack([np.sum(-0.5 * np.log(2 * np.pi) + np.log(prec[k]) - 0.5 * ((sequence - means[k]) * prec[k])**2,
                                    axis=-1) for k in range(len(means))], axis=1)
        alpha = log_initial + emission[0]
        for t in range(1, len(sequence)):
            alpha = logsumexp(alpha[:, None] + log_transition, axis=0) + emission[t]
        total += logsumexp(alpha)
    return total - 0.5 * covar_prior * np.sum(prec**2)


def fa_log_evidence(p, x):
    cov = p.loadings @ p.loadings.T + np.diag(np.exp(p.log_noise))
    _, log_det = np.linalg.slogdet(cov)
    centred = x - p.mean
    return (-0.5 * np.sum(centred @ np.linalg.inv(cov) * centred)
            - 0.5 * len(x) * (x.shape[1] * np.log(2 * np.pi) + log_det))


# --- data: random models of each kind, and scikit-learn's breast-cancer data --------------------------------

def mixture(seed):
    rng = np.random.default_rng(seed)
    centres, scales = rng.normal(0, 5, (4, 3)), rng.uniform(0.3, 3.0, 4)
    return np.concatenate([c + rng.normal(0, s, (500, 3)) for c, s in zip(centres, scales)])


def hmm_sequences(seed, n=4, length=400):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, (3, 2))
    states = np.zeros((n, length), int)
    for t in range(1, length):
        stay = rng.random(n) < 0.9
        states[:, t] = np.where(stay, states[:, t - 1], rng.integers(0, 3, n))
    return means[states] + rng.normal(size=(n, length, 2))


def factor_data(seed, n=600, dim=12, factors=3):
    """Noise variances spread over 1e-4 .. 1: the case where float32 sums cancel most."""
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(dim, factors))
    noise = 10.0 ** rng.uniform(-4, 0, dim)
    return rng.normal(size=(n, factors)) @ loadings.T + rng.normal(size=(n, dim)) * np.sqrt(noise) + rng.normal(size=dim)


def breast_cancer():
    x = load_breast_cancer().data
    return (x - x.mean(0)) / x.std(0)


COVAR_PRIOR = 1e-2
CASES = {
    # name: (zoo model, data, float64 log p(D) of NumPy parameters)
    "gmm-0": (lambda: jaxvi.models.gaussian_mixture(4, reg_covar=0.0, init="kmeans++"), lambda: mixture(0),
              gmm_log_evidence),
    "gmm-1": (lambda: jaxvi.models.gaussian_mixture(4, reg_covar=0.0, init="kmeans++"), lambda: mixture(1),
              gmm_log_evidence),
    "hmm-0": (lambda: jaxvi.models.gaussian_hmm(3, covar_prior=COVAR_PRIOR), lambda: hmm_sequences(0),
              lambda p, x: hmm_log_evidence(p, x, COVAR_PRIOR)),
    "hmm-1": (lambda: jaxvi.models.gaussian_hmm(3, covar_prior=COVAR_PRIOR), lambda: hmm_sequences(1),
              lambda p, x: hmm_log_evidence(p, x, COVAR_PRIOR)),
    "fa-0": (lambda: jaxvi.models.factor_analysis(3, init="random"), lambda: factor_data(0), fa_log_evidence),
    "fa-1": (lambda: jaxvi.models.factor_analysis(3, init="random"), lambda: factor_data(1), fa_log_evidence),
    # noise variances down to 2.8e-6 at the optimum: the Gaussian E-step's hardest case (it expands at the
    # posterior mean) and the M-step's (it sums residuals directly)
    "fa-breast-cancer": (lambda: jaxvi.models.factor_analysis(5, init="random"), breast_cancer, fa_log_evidence),
}


def as_numpy64(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


@pytest.mark.parametrize("case", list(CASES))
def test_log_evidence_in_float32_never_falls_beyond_its_resolution(case, optimized_code):
    zoo, data, log_evidence = CASES[case]
    zoo, x = zoo(), data()
    result = jaxvi.infer(zoo.model, jaxvi.EM(max_iter=ITERATIONS, tol=0.0, m_step=zoo.m_step),
                         jnp.asarray(x, jnp.float32), key=jax.random.key(1), progress=False)
    assert result.objective.dtype == jnp.float32 and int(result.n_iter) == ITERATIONS
    trace = np.asarray(result.trace, np.float64)
    assert trace[-1] == float(result.objective)
    falls = np.diff(trace)
    allowed = RESOLUTION_ULPS * EPS * np.abs(trace[1:])
    worst = int(np.argmin(falls + allowed))
    assert np.all(falls >= -allowed), (f"log p(D) fell by {-falls[worst]:.4g} at step {worst + 1}, "
                                       f"{-falls[worst] / (EPS * abs(trace[worst + 1])):.1f} ulps")
    assert trace[-1] - trace[0] > 100 * allowed[-1]  # the fit moved: a flat trace would pass trivially
    # the float32 objective is log p(D) of the float32 parameters, evaluated independently in float64: within
    # the resolution (1.9e-6 relative; measured at most 2.3 ulps, 2.7e-7)
    truth = log_evidence(as_numpy64(result.params), np.asarray(x, np.float32).astype(np.float64))
    assert abs(float(result.objective) - truth) <= min(1e-5, RESOLUTION_ULPS * EPS) * abs(truth)


def test_the_gaussian_e_step_in_float32_is_accurate_at_scikit_learns_breast_cancer_fit():
    """At scikit-learn's fit (noise variances down to 1.3e-5) the per-datum log evidence in float32
    against the float64 closed form at the same (float32) parameters. Expanding the log-joint at 0 lost up
    to 2.5 nats a datum; at the mean, with float32's ill-conditioned precision matrix, 1.8e-4 nats on
    every datum alike (1e-5 of log p(D)); refined in whitened coordinates, 8e-5 at most and 2e-8 of the
    total."""
    x = breast_cancer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's ConvergenceWarning: its fit need not have converged
        reference = FactorAnalysis(5, tol=1e-4, max_iter=1000).fit(x)
    assert reference.noise_variance_.min() < 2e-5
    zoo = jaxvi.models.factor_analysis(5)
    params = type(zoo.model.init(jax.random.key(0), jnp.zeros((10, 30), jnp.float32)))(
        jnp.asarray(reference.mean_, jnp.float32), jnp.asarray(reference.components_.T, jnp.float32),
        jnp.log(jnp.asarray(reference.noise_variance_, jnp.float32)))
    per_datum = np.asarray(jaxvi.exact.posterior(zoo.model.log_joint, zoo.model.latent, params,
                                                 jnp.asarray(x, jnp.float32), 1024).log_evidence, np.float64)
    p = as_numpy64(params)
    cov = p.loadings @ p.loadings.T + np.diag(np.exp(p.log_noise))
    _, log_det = np.linalg.slogdet(cov)
    centred = np.asarray(x, np.float32).astype(np.float64) - p.mean
    truth = -0.5 * np.sum(centred @ np.linalg.inv(cov) * centred, axis=1) - 0.5 * (30 * np.log(2 * np.pi) + log_det)
    np.testing.assert_allclose(per_datum, truth, atol=5e-4)
    assert abs(per_datum.sum() - truth.sum()) < RESOLUTION_ULPS * EPS * abs(truth.sum())


# --- honest convergence ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def breast_cancer_fa():
    return jaxvi.models.factor_analysis(5), jnp.asarray(breast_cancer(), jnp.float32)


def fit_with(fa_and_data, tol):
    (zoo, x) = fa_and_data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = jaxvi.infer(zoo.model, jaxvi.EM(m_step=zoo.m_step, tol=tol, max_iter=500), x,
                             key=jax.random.key(0), progress=False)
    return result, [str(w.message) for w in caught if "finer than" in str(w.message)]


def test_a_tolerance_finer_than_float32_resolves_is_reported_not_converged(breast_cancer_fa):
    result, messages = fit_with(breast_cancer_fa, 1e-9)
    n, objective = 569, float(result.objective)
    resolution = RESOLUTION_ULPS * EPS * abs(objective)
    assert not bool(result.converged) and STOP_REASONS[int(result.diagnostics.stop_reason)] == "resolution"
    assert int(result.n_iter) < 500
    # it stopped at the first step whose change was below the resolution, none before
    trace = np.asarray(result.trace, np.float64)[: int(result.n_iter) + 1]
    changes = np.abs(np.diff(trace))
    assert changes[-1] < RESOLUTION_ULPS * EPS * abs(trace[-1])
    assert np.all(changes[:-1] >= RESOLUTION_ULPS * EPS * np.abs(trace[1:-1]))
    # one warning naming both numbers: the tolerance (per datum and in total) and the resolution
    assert len(messages) == 1, messages
    assert "EM(tol=1e-09)" in messages[0] and f"{1e-9 * n:.3g} in total over {n} data" in messages[0]
    assert f"{resolution:.3g} in total" in messages[0] and "float32" in messages[0]
    assert "stop reason 'resolution'" in messages[0] and "stopped at" not in messages[0]
    # worked out on the host, as infer does after the run: a NumPy number, no operation for JAX to compile (three of
    # them, 0.1 s, in a fresh process's first fit)
    host = resolution_of(np.asarray(result.objective))
    assert isinstance(host, np.floating) and host == np.float32(resolution)


def test_a_resolvable_tolerance_converges_without_a_warning(breast_cancer_fa, monkeypatch):
    # infer weighs the tolerance against the final objective's resolution on the host (no operation for JAX to compile)
    infer_module, given = importlib.import_module("jaxvi.infer"), []
    monkeypatch.setattr(infer_module, "resolution", lambda value: given.append(value) or resolution_of(value))
    result, messages = fit_with(breast_cancer_fa, 1e-3)
    assert len(given) == 1 and isinstance(given[0], np.ndarray), given
    assert bool(result.converged) and STOP_REASONS[int(result.diagnostics.stop_reason)] == "tolerance"
    assert messages == []
    trace = np.asarray(result.trace, np.float64)[: int(result.n_iter) + 1]
    assert abs(trace[-1] - trace[-2]) < 1e-3 * 569 <= np.min(np.abs(np.diff(trace[:-1])))
    assert "stopped at            tolerance" in result.summary()


def test_tol_zero_runs_every_step_and_says_max_iter(breast_cancer_fa):
    zoo, x = breast_cancer_fa
    result = jaxvi.infer(zoo.model, jaxvi.EM(m_step=zoo.m_step, tol=0.0, max_iter=60), x, key=jax.random.key(0),
                         progress=False)
    assert int(result.n_iter) == 60 and not bool(result.converged)
    assert STOP_REASONS[int(result.diagnostics.stop_reason)] == "max_iter"


def test_in_float64_the_same_tolerance_is_resolved(breast_cancer_fa):
    zoo, _ = breast_cancer_fa
    with jax.enable_x64(True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = jaxvi.infer(zoo.model, jaxvi.EM(m_step=zoo.m_step, tol=1e-9, max_iter=40), jnp.asarray(breast_cancer()),
                                 key=jax.random.key(0), progress=False)
    assert result.objective.dtype == jnp.float64 and not [w for w in caught if "finer than" in str(w.message)]
    assert STOP_REASONS[int(result.diagnostics.stop_reason)] == "max_iter"


def test_an_unresolvable_tolerance_warns_when_max_iter_comes_first(breast_cancer_fa):
    zoo, x = breast_cancer_fa
    with pytest.warns(UserWarning, match=r"EM\(tol=1e-09\): a change of log p\(D\) below tol per datum, 5.69e-07 in "
                                         r"total over 569 data, is finer than float32 resolves .* The tolerance could "
                                         r"not be tested; the run stopped at max_iter"):
        result = jaxvi.infer(zoo.model, jaxvi.EM(m_step=zoo.m_step, tol=1e-9, max_iter=3), x, key=jax.random.key(0),
                             progress=False)
    assert int(result.n_iter) == 3 and STOP_REASONS[int(result.diagnostics.stop_reason)] == "max_iter"


def offset_mixture(n=30_000, k=3, offset=1e4):
    """``n`` 2-D points of ``k`` unit clusters, all near ``offset`` (float32: 1e-3 apart at 10^4), and a start
    half a unit off the clusters' centres."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (k, 2))
    x = (centres[rng.integers(0, k, n)] + rng.normal(size=(n, 2)) + offset).astype(np.float32)
    return x, centres + offset + 0.5


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_a_mixture_of_data_far_from_the_origin_fits_in_float32_as_in_float64(covariance):
    """Data at 10^4 with unit spread: the M-step's means summed as raw products (r^T x, 12-34 float32 units off on
    100,000 points) had log p(D) fall by 9 nats and end 38 below float64's; the full-covariance density as
    x P - mu P cancelled (20 units). Both precisions from the same float32 data and start, 15 iterations."""
    from jaxvi.models.gmm import GMMParams

    x, start_means = offset_mixture()
    gm = jaxvi.models.gaussian_mixture(3, covariance=covariance)
    scale = np.ones((3, 2)) if covariance == "diag" else np.broadcast_to(np.eye(2), (3, 2, 2))
    fits = {}
    for dtype in (np.float32, np.float64):
        with jax.enable_x64(dtype == np.float64):
            start = GMMParams(jnp.zeros(3, dtype), jnp.asarray(start_means, dtype), jnp.asarray(scale, dtype))
            fits[dtype] = jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step, max_iter=15, tol=0.0),
                                      jnp.asarray(x, dtype), key=jax.random.key(0), progress=False,
                                      init_params=start)
    trace = np.asarray(fits[np.float32].trace, np.float64)
    assert np.all(np.diff(trace) >= -RESOLUTION_ULPS * EPS * np.abs(trace[1:]))
    truth = float(fits[np.float64].objective)
    assert abs(float(fits[np.float32].objective) - truth) <= RESOLUTION_ULPS * EPS * abs(truth)
    np.testing.assert_allclose(fits[np.float32].params.means, fits[np.float64].params.means, rtol=1e-6)


def test_a_gaussian_hmm_of_data_far_from_the_origin_fits_in_float32():
    """One sequence of 4,000 steps at 10^4 with unit spread: the M-step's variances as E[x^2] - mu^2 lost every
    digit in float32 (10^-38 for a state whose variance is 1.2), and EM stopped at a non-finite log p(x). Now an
    M-step from one posterior gives float64's variances to 1e-5 (the variances about the means, every sum over the
    steps accurate: 2e-6 here; as moments about the first step, one GEMM, 2e-5 with jaxlib 0.10 and 1.2e-4 with
    0.12), and the fit's log p(D) rises and is float64 NumPy's at its parameters (the two precisions' trajectories
    part: float32 holds the means to 10^-3 there)."""
    from jaxvi import exact

    rng = np.random.default_rng(0)
    states = np.repeat(rng.integers(0, 3, 8), 500)
    x = (rng.normal(0, 2, (3, 2))[states] + rng.normal(size=(4_000, 2)) + 1e4)[None].astype(np.float32)
    hmm = jaxvi.models.gaussian_hmm(3)
    start = as_numpy64(hmm.model.init(jax.random.key(0), jnp.asarray(x)))
    m_step = jax.jit(lambda p, d: hmm.m_step(p, d, exact.posterior(hmm.model.log_joint, hmm.model.latent, p, d)))
    steps = {}
    for dtype in (np.float32, np.float64):
        with jax.enable_x64(dtype == np.float64):
            params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), start)
            steps[dtype] = np.asarray(m_step(params, jnp.asarray(x, dtype)).emission.covariances, np.float64)
    np.testing.assert_allclose(steps[np.float32], steps[np.float64], rtol=1e-5)
    result = jaxvi.infer(hmm.model, jaxvi.EM(m_step=hmm.m_step, max_iter=8, tol=0.0), x, key=jax.random.key(0),
                         progress=False)
    trace = np.asarray(result.trace, np.float64)
    assert np.all(np.diff(trace) >= -RESOLUTION_ULPS * EPS * np.abs(trace[1:]))
    truth = hmm_log_evidence(as_numpy64(result.params), x.astype(np.float64), 1e-2)
    assert abs(float(result.objective) - truth) <= RESOLUTION_ULPS * EPS * abs(truth)
