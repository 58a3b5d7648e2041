"""Coordinate-ascent VI (jaxvi.CAVI) with its updates derived from the log-joint, against closed-form posteriors
and evidences, hand-derived mean-field fixed points (Bishop ch. 10), and scikit-learn's BayesianGaussianMixture
from the same initial responsibilities."""
import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy import stats
from scipy import special
from sklearn.datasets import load_iris
from sklearn.mixture import BayesianGaussianMixture

import jaxvi
from jaxvi.exact import differentiable_for
from jaxvi.latents import split_latent
from jaxvi.run.schedule import RESOLUTION_ULPS, STOP_RESOLUTION, STOP_RUNNING, STOP_TOLERANCE, Change
from jaxvi.vi import expfam

KEY = jax.random.key(0)


def fit(model, data, **settings):
    return jaxvi.infer(model, jaxvi.CAVI(**settings), data, key=KEY, progress=False)


def test_beta_bernoulli_q_is_the_exact_posterior_and_the_bound_the_exact_evidence():
    flips = np.random.default_rng(0).integers(0, 2, 50).astype(np.float64)
    with jax.enable_x64(True):
        model = jaxvi.Model(
            lambda params, z, x: x * jnp.log(z["p"]) + (1 - x) * jnp.log1p(-z["p"]),
            jaxvi.Global({"p": jaxvi.Beta()}, log_prior=lambda params, z: stats.beta.logpdf(z["p"], 2.0, 3.0)),
            init=lambda key, data: {})
        result = fit(model, jnp.asarray(flips), max_iter=3)
        q = result.posterior().globals["p"].parameters()
        bound = result.method.bound(model, result.params, result.diagnostics.factors, jnp.asarray(flips))
        with pytest.raises(ValueError, match="local_posterior: expected a DiscretePosterior"):
            result.method.bound(model, result.params, result.diagnostics.factors, jnp.asarray(flips), "q")
    heads = flips.sum()
    np.testing.assert_allclose([q["a"], q["b"]], [2 + heads, 3 + 50 - heads], rtol=1e-12)
    exact = special.betaln(2 + heads, 3 + 50 - heads) - special.betaln(2, 3)
    np.testing.assert_allclose([result.objective, bound], exact, rtol=1e-12)


def test_dirichlet_categorical_q_is_the_exact_posterior_and_the_bound_the_exact_evidence():
    symbols = np.random.default_rng(1).integers(0, 4, 60)
    prior = np.array([0.5, 1.0, 2.0, 3.0])
    with jax.enable_x64(True):
        model = jaxvi.Model(
            lambda params, z, x: jnp.log(z[x]),
            jaxvi.Global(jaxvi.Dirichlet(4), log_prior=lambda params, z: stats.dirichlet.logpdf(z, jnp.asarray(prior))),
            init=lambda key, data: {})
        result = fit(model, jnp.asarray(symbols), max_iter=3)
        concentration = result.posterior().globals.parameters()["concentration"]
    counts = np.bincount(symbols, minlength=4)
    np.testing.assert_allclose(concentration, prior + counts, rtol=1e-12)
    exact = (special.gammaln(prior.sum()) - special.gammaln(prior.sum() + 60)
             + np.sum(special.gammaln(prior + counts) - special.gammaln(prior)))
    np.testing.assert_allclose(result.objective, exact, rtol=1e-12)


def normal_gamma_log_prior(m0, b0, a0, r0):
    def log_prior(params, z):
        mean, precision = z
        return (stats.norm.logpdf(mean, m0, 1 / jnp.sqrt(b0 * precision))
                + stats.gamma.logpdf(precision, a0, scale=1 / r0))
    return log_prior


def normal_log_joint(params, z, x):
    mean, precision = z
    return stats.norm.logpdf(x, mean, 1 / jnp.sqrt(precision))


def test_normal_with_unknown_mean_and_precision_under_its_normal_gamma_prior_is_exact():
    """One NormalGamma factor holds the exact posterior (Murphy 2007, "Conjugate Bayesian analysis of the
    Gaussian distribution", eqs. 85-89), and the bound is the exact log evidence (eq. 95)."""
    x = np.random.default_rng(2).normal(1.5, 0.7, 40)
    m0, b0, a0, r0 = 0.5, 2.0, 3.0, 1.5
    with jax.enable_x64(True):
        model = jaxvi.Model(normal_log_joint, jaxvi.Global(jaxvi.NormalGamma(), normal_gamma_log_prior(m0, b0, a0, r0)),
                            init=lambda key, data: {})
        result = fit(model, jnp.asarray(x), max_iter=3)
        q = result.posterior().globals.parameters()
    n, mean = len(x), x.mean()
    b_n = b0 + n
    m_n = (b0 * m0 + n * mean) / b_n
    a_n = a0 + n / 2
    r_n = r0 + 0.5 * np.sum((x - mean) ** 2) + b0 * n * (mean - m0) ** 2 / (2 * b_n)
    np.testing.assert_allclose([q["mean"], q["strength"], q["shape"], q["rate"]], [m_n, b_n, a_n, r_n], rtol=1e-10)
    exact = (special.gammaln(a_n) - special.gammaln(a0) + a0 * np.log(r0) - a_n * np.log(r_n)
             + 0.5 * np.log(b0 / b_n) - n / 2 * np.log(2 * np.pi))
    np.testing.assert_allclose(result.objective, exact, rtol=1e-10)


def test_mean_field_normal_gamma_reaches_bishop_s_fixed_point_and_its_bound_rises():
    """Bishop §10.1.3: q(mu) q(tau) for a Normal with unknown mean and precision; the fixed point of his
    updates (10.26-10.30), iterated here in NumPy, is CAVI's. The bound is below the exact evidence."""
    x = np.random.default_rng(3).normal(-0.5, 2.0, 30)
    mu0, lam0, a0, b0 = 0.0, 0.5, 2.0, 1.0
    n, mean = len(x), x.mean()
    expected_tau = a0 / b0
    for _ in range(200):
        mu_n, lam_n = (lam0 * mu0 + n * mean) / (lam0 + n), (lam0 + n) * expected_tau
        a_n = a0 + (n + 1) / 2
        second = np.sum((x - mu_n) ** 2) + n / lam_n + lam0 * ((mu_n - mu0) ** 2 + 1 / lam_n)
        b_n = b0 + 0.5 * second
        expected_tau = a_n / b_n

    def log_prior(params, z):
        return (stats.norm.logpdf(z["mu"][0], mu0, 1 / jnp.sqrt(lam0 * z["tau"]))
                + stats.gamma.logpdf(z["tau"], a0, scale=1 / b0))

    def log_joint(params, z, x):
        return stats.norm.logpdf(x, z["mu"][0], 1 / jnp.sqrt(z["tau"]))

    with jax.enable_x64(True):
        model = jaxvi.Model(log_joint, jaxvi.Global({"mu": jaxvi.Gaussian(1), "tau": jaxvi.Gamma()}, log_prior),
                            init=lambda key, data: {})
        result = fit(model, jnp.asarray(x), max_iter=200, tol=0.0)  # no stop: a bound resolves parameters to sqrt(eps)
        q = {name: factor.parameters() for name, factor in result.posterior().globals.items()}
        exact_model = jaxvi.Model(normal_log_joint, jaxvi.Global(jaxvi.NormalGamma(), normal_gamma_log_prior(
            mu0, lam0, a0, b0)), init=lambda key, data: {})
        exact = fit(exact_model, jnp.asarray(x), max_iter=2).objective
    np.testing.assert_allclose(q["mu"]["mean"], [mu_n], rtol=1e-9)
    np.testing.assert_allclose(q["mu"]["covariance"], [[1 / lam_n]], rtol=1e-9)
    np.testing.assert_allclose([q["tau"]["shape"], q["tau"]["rate"]], [a_n, b_n], rtol=1e-9)
    trace = np.asarray(result.trace)[:int(result.n_iter) + 1]
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:])), np.diff(trace).min()
    assert result.objective < exact  # mean-field cannot hold the posterior's correlation of mu and tau


def test_bayesian_linear_regression_with_unknown_noise_precision_matches_the_hand_derived_updates():
    """The zoo's jaxvi.models.bayesian_linear_regression, w ~ N(0, I / alpha), tau ~ Gamma(a0, b0), y ~ N(w.x, 1 / tau): mean-field q(w) q(tau), hand-derived:
    S^-1 = alpha I + E[tau] X^T X, m = E[tau] S X^T y; a = a0 + N/2, b = b0 + (|y - X m|^2 + tr(X^T X S)) / 2."""
    rng = np.random.default_rng(4)
    features = rng.normal(size=(40, 3))
    y = features @ np.array([1.0, -2.0, 0.5]) + rng.normal(0, 0.3, 40)
    alpha, a0, b0 = 0.1, 1.0, 1.0
    expected_tau = a0 / b0
    for _ in range(300):
        cov = np.linalg.inv(alpha * np.eye(3) + expected_tau * features.T @ features)
        mean = expected_tau * cov @ features.T @ y
        a_n = a0 + 20
        b_n = b0 + 0.5 * (np.sum((y - features @ mean) ** 2) + np.trace(features.T @ features @ cov))
        expected_tau = a_n / b_n

    with jax.enable_x64(True):
        model = jaxvi.models.bayesian_linear_regression(3, weight_precision=alpha, noise_shape=a0, noise_rate=b0)
        result = fit(model, (jnp.asarray(features), jnp.asarray(y)), max_iter=300, tol=0.0)
        q = {name: factor.parameters() for name, factor in result.posterior().globals.items()}
    np.testing.assert_allclose(q["w"]["mean"], mean, rtol=1e-8)
    np.testing.assert_allclose(q["w"]["covariance"], cov, rtol=1e-8)
    np.testing.assert_allclose([q["tau"]["shape"], q["tau"]["rate"]], [a_n, b_n], rtol=1e-8)


@pytest.fixture(scope="module")
def iris():
    return load_iris().data


def sklearn_from(x, resp, covariance_type):
    """scikit-learn's Bayesian mixture started from ``resp``, as its own fit does after initialisation (no
    covariance regularisation: jaxvi's model has none)."""
    peer = BayesianGaussianMixture(n_components=resp.shape[1], covariance_type=covariance_type, reg_covar=0.0,
                                   weight_concentration_prior_type="dirichlet_distribution", max_iter=1)
    peer._check_parameters(x)
    peer._initialize(x, resp)
    return peer


@pytest.mark.parametrize("K", [4])
def test_bayesian_gmm_equals_scikit_learn_iteration_by_iteration(iris, K):
    """From the same initial responsibilities, every iteration's factors equal BayesianGaussianMixture's
    (weight concentration, mean precision, means, degrees of freedom, covariances), and the bound at
    scikit-learn's point (responsibilities of iteration t, factors of t + 1) differs from its lower bound by one
    constant (the terms it drops)."""
    resp = np.random.default_rng(K).dirichlet(np.ones(K), len(iris))
    peer = sklearn_from(iris, resp, "full")
    with jax.enable_x64(True):
        data = jnp.asarray(iris)
        model = jaxvi.models.bayesian_gaussian_mixture(iris, K)
        method = jaxvi.CAVI()
        state = jax.jit(lambda d, r: method.init(model, KEY, d, local_posterior=jaxvi.DiscretePosterior(
            jnp.log(r), jnp.zeros(len(iris)), jnp.arange(K))))(data, jnp.asarray(resp))
        step = jax.jit(lambda s: method.step(model, KEY, s, data, num_data=len(iris)))
        bound_at = jax.jit(lambda factors, log_resp: method.bound(model, {}, factors, data, jaxvi.DiscretePosterior(
            log_resp, jnp.zeros(len(iris)), jnp.arange(K))))
        offsets, bounds = [], []
        for _ in range(12):
            state, info = step(state)
            bounds.append(float(info.objective))
            log_prob_norm, log_resp = peer._e_step(iris)
            peer._m_step(iris, log_resp)
            components, (weights,) = state.factors
            mean, strength, scale_inverse, dof = expfam.normal_wishart_moments(components)
            mean = mean + np.asarray(model.latent["theta"].latent["components"].center)  # q's are of mu - center
            np.testing.assert_allclose(weights + 1, peer.weight_concentration_, rtol=1e-9)
            np.testing.assert_allclose(strength, peer.mean_precision_, rtol=1e-9)
            np.testing.assert_allclose(dof, peer.degrees_of_freedom_, rtol=1e-9)
            np.testing.assert_allclose(mean, peer.means_, rtol=1e-9)
            np.testing.assert_allclose(scale_inverse / dof[:, None, None], peer.covariances_, rtol=1e-9, atol=1e-12)
            offsets.append(float(bound_at(state.factors, jnp.asarray(log_resp)))
                           - peer._compute_lower_bound(log_resp, log_prob_norm))
    np.testing.assert_allclose(offsets, offsets[0], rtol=1e-12)
    assert np.all(np.diff(bounds) > 0)


def test_a_diagonal_mixture_is_the_full_one_in_one_dimension(iris):
    """Normal-Gamma components per dimension are the Normal-Wishart's with d = 1: the same fit on one feature,
    from the same responsibilities (the petal length's three species)."""
    x = iris[:, 2:3]
    start = np.eye(3)[np.digitize(x[:, 0], [2.5, 4.9])] * 0.9 + 0.1 / 3
    with jax.enable_x64(True):
        data, fits = jnp.asarray(x), {}
        for covariance in ("full", "diag"):
            model, method = jaxvi.models.bayesian_gaussian_mixture(x, 3, covariance), jaxvi.CAVI()
            state = jax.jit(lambda d, model=model, method=method: method.init(
                model, KEY, d, local_posterior=jaxvi.DiscretePosterior(jnp.log(jnp.asarray(start)), jnp.zeros(len(x)),
                                                                       jnp.arange(3))))(data)
            step = jax.jit(lambda s, model=model, method=method: method.step(model, KEY, s, data, num_data=len(x)))
            bounds = []
            for _ in range(15):
                state, info = step(state)
                bounds.append(float(info.objective))
            fitted = method.finalize(model, KEY, state, data).posterior().globals["theta"]["components"].parameters()
            fits[covariance] = bounds, jax.tree_util.tree_map(np.asarray, fitted)  # float64 outside x64 too
    (full_bounds, nw), (diag_bounds, ng) = fits["full"], fits["diag"]
    np.testing.assert_allclose(diag_bounds, full_bounds, rtol=1e-10)
    assert np.all(np.diff(full_bounds) > 0) and np.ptp(nw["mean"]) > 1.0  # three distinct components
    np.testing.assert_allclose(ng["mean"], nw["mean"], rtol=1e-10)
    np.testing.assert_allclose(ng["rate"][:, 0] * 2, 1 / nw["scale"][:, 0, 0], rtol=1e-10)


def test_float32_bayesian_mixture_bound_never_falls_and_switches_off_surplus_components(iris):
    """In float32, 8 components on iris: the bound never falls by more than its resolution (RESOLUTION_ULPS units
    in its last place, the run layer's rule), it equals the float64 bound of the same factors, and the Dirichlet
    prior (alpha0 = 1/K) empties surplus components where EM would use all (an expected weight below 1%)."""
    x32 = iris.astype(np.float32)
    result = fit(jaxvi.models.bayesian_gaussian_mixture(x32, 8), jnp.asarray(x32), max_iter=300, tol=1e-5, n_init=2)
    assert result.objective.dtype == jnp.float32
    trace = np.asarray(result.trace, np.float64)[:int(result.n_iter) + 1]
    falls = np.diff(trace)
    allowed = RESOLUTION_ULPS * np.finfo(np.float32).eps * np.abs(trace[1:])
    assert np.all(falls >= -allowed), falls.min()
    assert trace[-1] - trace[0] > 100 * allowed[-1]
    weights = np.asarray(result.posterior().globals["theta"]["weights"].mean())
    assert weights.min() < 0.01, weights
    with jax.enable_x64(True):
        factors = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), result.diagnostics.factors)
        truth = float(jaxvi.CAVI().bound(jaxvi.models.bayesian_gaussian_mixture(x32.astype(np.float64), 8), {},
                                         factors, jnp.asarray(x32, jnp.float64)))
    assert abs(float(result.objective) - truth) <= RESOLUTION_ULPS * np.finfo(np.float32).eps * abs(truth)


def test_float32_bayesian_mixture_of_nearly_collinear_features_fits_from_every_key():
    """Standardised breast cancer data (30 features, covariance of condition 1e5), K = 8, float32, default settings:
    every key fits without a fault (5 of 6 stopped at iteration 1-3 with a non-finite bound: a Wishart factor's W^-1
    held as the difference of two large matrices, read at near-singular precisions, lost positive definiteness), and
    the bound falls by at most 2e-4 of itself between iterations: float32 resolves W^-1 only to eps cond(W^-1), ~1e-2
    of its smallest directions here, and nu / 2 log|W^-1| in the bound moves by nu / 2 times that, up to 0.3 nats
    measured over six keys (9e-5; float64 fits never fall). With the likelihood's quadratic form expanded about the
    data's mean the bound fell by up to 1.8 nats (6e-4)."""
    from sklearn.datasets import load_breast_cancer
    x = load_breast_cancer().data
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    model = jaxvi.models.bayesian_gaussian_mixture(x, 8)
    for seed in range(4):
        result = jaxvi.infer(model, jaxvi.CAVI(max_iter=150), x, key=jax.random.key(seed), progress=False)
        trace = np.asarray(result.trace, np.float64)[:int(result.n_iter) + 1]
        assert np.all(np.isfinite(trace)) and trace[-1] - trace[0] > 500, (seed, trace)
        assert np.diff(trace).min() >= -2e-4 * abs(trace[-1]), (seed, np.diff(trace).min())


def test_a_stochastic_start_draws_its_minibatch_from_all_the_data():
    """CAVI(batch_size=B) starts from one minibatch of B rows drawn with the key, not the first B: data sorted in two
    clusters (100 rows about -5, then 100 about +5, in both dimensions), B = 20, one step: from every key some
    component sits in each cluster. From the first 20 rows (the start before) every component began at -5, and
    after the step none was above 1.3 (scikit-learn's data sets are often sorted by class: wine's stochastic fits
    ended with one component holding 70-78% of the weight)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-5, 0.5, (100, 2)), rng.normal(5, 0.5, (100, 2))]).astype(np.float32)
    model = jaxvi.models.bayesian_gaussian_mixture(x, 4)
    for k in range(4):
        result = jaxvi.infer(model, jaxvi.CAVI(batch_size=20, max_iter=1), x, key=jax.random.key(k), progress=False)
        means = np.asarray(result.posterior().globals["theta"]["components"].mean()[0])
        assert np.any(np.all(means < -2.5, axis=1)) and np.any(np.all(means > 2.5, axis=1)), (k, means)


def test_a_stochastic_step_of_normal_wishart_factors_is_the_natural_gradient_step():
    """Stochastic CAVI's step moves each factor to (1 - rho) eta + rho eta_hat in natural parameters (Hoffman et al.
    2013). The Normal-Wishart factors are held about their means and averaged about them: the step equals the
    average taken in natural parameters about the origin (float64), of the step at rho = 1 (tau0 = 0, the
    minibatch's optimum) and the factors before, means 40 units out."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(37, 1, (20, 2)), rng.normal(43, 1, (20, 2))])
    with jax.enable_x64(True):  # the steps jitted: op by op, they compiled 200 small programs (init is compiled)
        model = jaxvi.models.bayesian_gaussian_mixture(x, 2)
        data = jnp.asarray(x)
        start = jaxvi.CAVI(batch_size=20).init(model, KEY, data, num_data=40)
        batch = data[::2]

        def step(tau0):  # rho = (tau0 + 1) ** -0.75 at the first step
            method = jaxvi.CAVI(batch_size=20, step_size=(tau0, 0.75))
            return jax.jit(lambda s, b: method.step(model, KEY, s, b, num_data=40)[0].factors)(start, batch)

        family = expfam.NORMAL_WISHART
        (optimum, optimum_weights), (stepped, stepped_weights) = step(0.0), step(1.0)
        rho = 2.0 ** -0.75
        natural = [expfam.to_natural(family, f) for f in (start.factors[0], optimum)]
        want = expfam.from_natural(family, tuple((1 - rho) * a + rho * b for a, b in zip(*natural)))
        for got, expected in zip(expfam.normal_wishart_moments(stepped), expfam.normal_wishart_moments(want)):
            np.testing.assert_allclose(got, expected, rtol=1e-9)
        np.testing.assert_allclose(stepped_weights[0], (1 - rho) * start.factors[1][0] + rho * optimum_weights[0],
                                   rtol=1e-12)
        assert float(jnp.max(jnp.abs(stepped[0] - start.factors[0][0]))) > 0.1  # the means moved


def test_a_mixture_s_start_keeps_its_components_alive_on_two_clusters():
    """Two clusters, K = 4, four keys, default settings (a k-means start, as scikit-learn's BayesianGaussianMixture
    starts; tol to 1e-5 per datum or float32's resolution): every key finds both clusters (two weights of 0.5, the
    bound of scikit-learn's answer, which finds them from every seed). At tol=1e-3 per datum, the default before
    (scikit-learn's is 1e-3 on the total: N times finer), two of the four stopped while a cluster was still split
    between two components (bound -766.9 against -754.5). From prior draws of the weights (Dirichlet(1/K), most near
    0) every key ended with one component holding all the data."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-3, 1, (100, 2)), rng.normal(3, 1, (100, 2))]).astype(np.float32)
    model = jaxvi.models.bayesian_gaussian_mixture(x, 4)
    for key in range(4):
        result = jaxvi.infer(model, jaxvi.CAVI(), x, key=jax.random.key(key), progress=False)
        weights = np.sort(np.asarray(result.posterior().globals["theta"]["weights"].mean()))[::-1]
        assert np.allclose(weights[:2], 0.5, atol=0.02) and float(result.objective) > -755, (key, weights)
        assert bool(result.converged)


@pytest.mark.parametrize("covariance, offset, centered", [("full", 1000.0, True), ("diag", 1000.0, True),
                                                       ("full", 300.0, False)])
def test_float32_bayesian_mixture_of_data_far_from_the_origin_is_fitted_as_near_it(iris, covariance, offset, centered):
    """Iris moved to 1,000, in float32: the components' factors are held about their means, and their prior read
    about its own mean, so they keep the digits that b m m^T + W^-1 about 0 loses (the fit was refused: a prior
    "not finite" at 1,000; at 300 its bound fell by 280 units in its last place). So with the components laid out
    about the data's mean (their ``center``), and without, at 300 (the prior was read about 0 alone, and at 300
    refused as not finite, until it was read again about its mean). The data themselves are held to
    float32's spacing at 1,000 (6.1e-5), which moves each datum's log-density by about that over the smallest
    feature's spread: the bound is resolved to N times that (0.021 nats; measured: 0.0035 from float64, and 6-9,
    13-28 and 67-80 units in the last place at 100, 300 and 1,000, at 0 1-2.5). To that, the bound never falls, and
    it equals the float64 bound of the same q (its means moved back by 1,000, exactly) on the same data at 0."""
    x32 = (iris + offset).astype(np.float32)
    model = jaxvi.models.bayesian_gaussian_mixture(x32, 4, covariance)
    if not centered:
        theta = model.latent["theta"]
        specs = {**theta.latent, "components": dataclasses.replace(theta.latent["components"], center=None)}
        model = dataclasses.replace(model, latent={**model.latent, "theta": dataclasses.replace(theta, latent=specs)})
    result = fit(model, jnp.asarray(x32), max_iter=100, tol=1e-5, start="prior")  # a long climb (k-means: 2 nats)
    trace = np.asarray(result.trace, np.float64)[:int(result.n_iter) + 1]
    resolution = len(x32) * np.spacing(np.float32(offset)) / iris.std(0).min()
    assert np.all(np.diff(trace) >= -resolution) and trace[-1] - trace[0] > 100 * resolution
    q = {name: factor.parameters() for name, factor in result.posterior().globals["theta"].items()}
    with jax.enable_x64(True):
        x64 = x32.astype(np.float64) - offset
        near = jaxvi.models.bayesian_gaussian_mixture(x64, 4, covariance)
        center = np.asarray(near.latent["theta"].latent["components"].center)
        p = {key: np.asarray(value, np.float64) for key, value in q["components"].items()}
        if covariance == "full":
            scale_inverse, dof, mean = np.linalg.inv(p["scale"]), p["dof"], p["mean"]
        else:  # a Normal-Gamma per dimension: the Normal-Wishart with d = 1
            scale_inverse, dof, mean = 2 * p["rate"][..., None, None], 2 * p["shape"], p["mean"][..., None]
            center = center[:, None]
        components = expfam.normal_wishart_parameters(jnp.asarray(mean - offset - center),
                                                      jnp.asarray(p["strength"]),
                                                      jnp.asarray(scale_inverse), jnp.asarray(dof))
        weights = (jnp.asarray(q["weights"]["concentration"], jnp.float64) - 1,)
        truth = jaxvi.CAVI().bound(near, {}, (tuple(components), weights), jnp.asarray(x64))
    assert abs(float(result.objective) - float(truth)) <= resolution


RESTARTS_KEY = jax.random.key(2)


@pytest.fixture(scope="module")
def sixteen_by_sixteen():
    """16 components of 16 x 16 precisions, and the fits from two restarts' keys alone, in float64: each program
    (alone, restarts vmapped, restarts in sequence) rounds differently, and in float32 three iterations from a
    k-means start amplified that to 1.7e-5 of the bound between programs (-4773.16, -4773.22, -4773.14, measured with
    the k-means++ draws before ``rows_by_potential``), while in float64 all three agree to 1e-15. Key 2, whose two
    restarts start from different clusters and whose second is the better (-4129.8 and -4108.7 after three
    iterations), so that the best restart is told from the first: from keys 0 and 1 both restarts' k-means found the
    same clusters."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (16, 16))[rng.integers(0, 16, 120)] + rng.normal(size=(120, 16))
    with jax.enable_x64(True):
        model, data = jaxvi.models.bayesian_gaussian_mixture(x, 16), jnp.asarray(x, jnp.float64)
        alone = [float(jaxvi.infer(model, jaxvi.CAVI(max_iter=3, tol=0.0), data, key=k, progress=False).objective)
                 for k in jax.random.split(RESTARTS_KEY, 2)]
    return model, data, alone


@pytest.mark.parametrize("restarts", ["vmap", "sequence"])
def test_restarts_vmapped_or_in_sequence_are_the_same_fits_run_one_at_a_time(sixteen_by_sixteen, restarts):
    """n_init restarts run as one vmapped program, or one after another in one program, give every restart's
    bound as a fit from that restart's key alone, and the best is returned. 16 components of 16 x 16 precisions:
    vmapped, batched linear algebra side by side, which hangs jaxlib 0.10's CPU LAPACK kernels without
    jaxvi._xla's scheduler setting."""
    model, data, alone = sixteen_by_sixteen
    with jax.enable_x64(True):
        result = jaxvi.infer(model, jaxvi.CAVI(max_iter=3, tol=0.0, n_init=2, restarts=restarts), data,
                             key=RESTARTS_KEY, progress=False)
    objectives = np.asarray(result.diagnostics.restart_objectives)
    assert objectives.dtype == np.float64
    np.testing.assert_allclose(objectives, alone, rtol=1e-12)
    assert float(result.objective) == float(np.max(objectives))
    assert abs(alone[0] - alone[1]) > 1.0 and alone[0] < alone[1]  # two different starts, the second best


def test_one_model_fits_other_data_of_its_shape_without_compiling(sixteen_by_sixteen):
    """A Bayesian mixture's priors and center are numbers taken from the data it is built from, compiled into its
    fits: a model built again from other data (a fold, a bootstrap sample) compiles every program again (K = 3,
    D = 2, 200 points: 11-12 s a fit on a 2-core CPU), while one model fits other data of the same shape with the
    code it has (0.01 s a fit). Data mirrored about their mean (x -> 2 mean - x) have the same priors, and their fit
    from the same start is the fixture's fit mirrored: the same bound."""
    from jit_events import compilations
    model, data, alone = sixteen_by_sixteen
    x = np.asarray(data)
    key = jax.random.split(RESTARTS_KEY, 2)[0]
    with jax.enable_x64(True):
        mirrored = jnp.asarray(2 * x.mean(0) - x)  # from NumPy: no operation of JAX's to compile
        with compilations() as compiled:
            result = jaxvi.infer(model, jaxvi.CAVI(max_iter=3, tol=0.0), mirrored, key=key, progress=False)
    assert compiled == [], compiled
    np.testing.assert_allclose(float(result.objective), alone[0], rtol=1e-9)


def test_restarts_run_in_sequence_where_batched_lapack_can_deadlock_or_data_are_swept_to_convergence():
    """By default a Bayesian mixture's restarts are vmapped (where batched LAPACK is safe); LDA's, whose documents
    are swept until each converges, run one after another."""
    from jaxvi._xla import batched_lapack_may_deadlock
    mixture = jaxvi.models.bayesian_gaussian_mixture(np.eye(5, 2), 2)
    topics = jaxvi.models.lda(jaxvi.models.bag_of_words(np.ones((2, 4))), 2, 4)
    assert jaxvi.CAVI().restarts_in_sequence(mixture) == batched_lapack_may_deadlock()
    assert jaxvi.CAVI().restarts_in_sequence(topics) is True
    assert jaxvi.CAVI(restarts="vmap").restarts_in_sequence(topics) is False
    assert jaxvi.CAVI(restarts="sequence").restarts_in_sequence(mixture) is True
    with pytest.raises(ValueError, match=r"CAVI\(restarts\): expected one of"):
        jaxvi.CAVI(restarts="parallel")


def _refused_before_the_run_compiles(model, data, match):
    """Fits ``model`` to ``data``, expecting the ValueError ``match``: raised after the start, before the run
    compiles."""
    from jit_events import compilations

    with compilations() as compiled, pytest.raises(ValueError, match=match):
        fit(model, data)
    assert not [name for name in compiled if "_run_restarts" in name], compiled


def _normal_gamma_model(log_likelihood, log_prior=lambda params, z: stats.norm.logpdf(z["mu"][0])
                        + stats.gamma.logpdf(z["tau"], 2.0)):
    return jaxvi.Model(lambda params, z, x: log_likelihood(x, z["mu"][0], z["tau"]),
                       jaxvi.Global({"mu": jaxvi.Gaussian(1), "tau": jaxvi.Gamma()}, log_prior),
                       init=lambda key, data: {})


def test_a_factor_the_log_joint_is_not_conjugate_in_is_refused_before_the_run_compiles():
    """A Gamma precision that enters through exp(): not linear in (log tau, tau); a Normal mean through sin() on data
    about 0, whose gradient deviates from linear oddly (the check's points are not mirrored). The start's reads find
    them, the message names the factor; the conjugate model (tau a precision) compiles no probe to name a factor."""
    from jit_events import compilations

    x = jnp.linspace(-1.0, 1.0, 20)
    _refused_before_the_run_compiles(
        _normal_gamma_model(lambda x, mu, tau: stats.norm.logpdf(x, jnp.sin(mu), 1.0 / jnp.sqrt(tau))), x,
        r"not conjugate in the factor Global\['mu'\].*jaxvi.SVI")
    model = _normal_gamma_model(lambda x, mu, tau: stats.norm.logpdf(x, mu, jnp.exp(-tau)))
    message = r"not conjugate in the factor Global\['tau'\].*jaxvi.SVI"
    _refused_before_the_run_compiles(model, x, message)
    with pytest.raises(ValueError, match=message):  # a stream: at its first minibatch, before a step
        jaxvi.run.stream(model, jaxvi.CAVI(batch_size=5), [x[:5], x[5:10]], num_data=20, key=KEY, progress=False)
    with compilations() as compiled:
        result = fit(_normal_gamma_model(lambda x, mu, tau: stats.norm.logpdf(x, mu, 1.0 / jnp.sqrt(tau))), x)
    assert "_run_restarts" in str(compiled) and "_compiled_probe" not in str(compiled), compiled
    assert float(result.diagnostics.linearity) < 1e-5  # its reads' residuals: float32's rounding


def test_a_log_joint_not_conjugate_only_near_the_prior_is_refused_naming_no_factor():
    """Non-linear in tau only above 50, where its prior (Gamma(400, 4): mean 100) puts the start's reads, not near the
    broad member where the probe reads each factor to name it: refused all the same."""
    def log_likelihood(x, mu, tau):
        precision = jnp.where(tau > 50.0, tau + 0.01 * tau ** 2, tau)
        return stats.norm.logpdf(x, mu, 1.0 / jnp.sqrt(precision))

    model = _normal_gamma_model(log_likelihood, lambda params, z: (stats.norm.logpdf(z["mu"][0])
                                                                  + stats.gamma.logpdf(z["tau"], 400.0, scale=0.25)))
    _refused_before_the_run_compiles(model, jnp.linspace(-0.1, 0.1, 20),
                                     r"not where every factor is a broad member of its family.*jaxvi.SVI")


def test_a_log_joint_not_finite_at_the_start_is_reported_as_such_not_as_not_conjugate():
    """A datum whose square overflows float32: the start's reads are NaN, which the run's fault report names (the
    log-joint not finite), not the conjugacy check."""
    x = np.linspace(-1.0, 1.0, 20).astype(np.float32)
    x[15] = 1e20
    model = _normal_gamma_model(lambda x, mu, tau: stats.norm.logpdf(x, mu, 1.0 / jnp.sqrt(tau)))
    with pytest.raises(ValueError, match=r"init: expected initial parameters at which log_joint is finite"):
        fit(model, jnp.asarray(x))


def test_an_improper_prior_is_refused_before_the_run_compiles_naming_its_factor():
    """A flat prior on a Gamma precision (Gamma(1, 0), no finite normaliser): CAVI starts from the priors, so it is
    refused, the factor and its family named."""
    model = _normal_gamma_model(lambda x, mu, tau: stats.norm.logpdf(x, mu, 1.0 / jnp.sqrt(tau)),
                                lambda params, z: stats.norm.logpdf(z["mu"][0]))
    _refused_before_the_run_compiles(model, jnp.linspace(-1.0, 1.0, 20),
                                     r"the prior of the factor Global\['tau'\] .* is not a proper gamma distribution")


def test_cavi_refuses_a_model_without_global_factors():
    model = jaxvi.Model(lambda params, z, x: -0.5 * (x - z) ** 2, jaxvi.Discrete(2), init=lambda key, data: {})
    with pytest.raises(ValueError, match="jaxvi.EM"):
        fit(model, jnp.zeros(4))


def sample_categorical_hmm(rng, n, t):
    start, trans = np.array([0.7, 0.2, 0.1]), np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    emit = np.array([[0.7, 0.2, 0.05, 0.05], [0.05, 0.15, 0.7, 0.1], [0.1, 0.1, 0.1, 0.7]])
    sequences = np.zeros((n, t), np.int64)
    for i in range(n):
        state = rng.choice(3, p=start)
        for step in range(t):
            sequences[i, step] = rng.choice(4, p=emit[state])
            state = rng.choice(3, p=trans[state])
    return sequences


@pytest.mark.parametrize("probability_space", [False, True])
def test_variational_categorical_hmm_equals_hmmlearn_iteration_by_iteration(probability_space, monkeypatch):
    """From hmmlearn's initial Dirichlet posteriors, jaxvi's bound history and posteriors equal
    VariationalCategoricalHMM's (its bound is the whole bound: log-normalisers minus KLs, no dropped constants); with
    the chain's recursions in log space (these small data's default) and in probability space (``SCALED_WORK`` 0: as
    a fit of long sequences runs them)."""
    from hmmlearn.vhmm import VariationalCategoricalHMM

    from jaxvi.exact import chain
    if probability_space:
        monkeypatch.setattr(chain, "SCALED_WORK", 0)
    sequences = sample_categorical_hmm(np.random.default_rng(5), 4, 60)
    peer = VariationalCategoricalHMM(n_components=3, n_features=4, n_iter=1, tol=-np.inf, random_state=0,
                                     init_params="ste", implementation="log")
    flat, lengths = sequences.reshape(-1, 1), [60] * 4
    peer._init(flat, lengths)
    peer.init_params = ""
    start = (peer.startprob_posterior_ - 1, peer.transmat_posterior_ - 1, peer.emissionprob_posterior_ - 1)
    with jax.enable_x64(True):
        model = jaxvi.models.variational_categorical_hmm(3, 4)
        method = jaxvi.CAVI()
        data = jnp.asarray(sequences)
        local = split_latent(model.latent).local
        assert differentiable_for(local, data, method.max_iter + 1) is not probability_space
        state = jax.jit(lambda d: method.init(model, KEY, d))(data)
        names = ["emissions", "start", "transitions"]  # the factors' (sorted) order
        given = tuple((jnp.asarray(start[["start", "transitions", "emissions"].index(name)]),) for name in names)
        state = state._replace(factors=given, evaluated_factors=given)
        step = jax.jit(lambda s: method.step(model, KEY, s, data, num_data=4))
        for _ in range(10):
            state, info = step(state)
            peer.fit(flat, lengths)
            np.testing.assert_allclose(float(info.objective), peer.monitor_.history[-1], rtol=1e-10)
            emissions, start_q, transitions = (np.asarray(f[0]) + 1 for f in state.factors)
            np.testing.assert_allclose(start_q, peer.startprob_posterior_, rtol=1e-9)
            np.testing.assert_allclose(transitions, peer.transmat_posterior_, rtol=1e-9)
            np.testing.assert_allclose(emissions, peer.emissionprob_posterior_, rtol=1e-9)


def test_variational_em_fits_point_parameters_beside_the_factors():
    """Variational EM: a mixture of two unit-variance Normals whose weights have a Dirichlet factor and whose
    means are parameters θ. Hand-derived: r_ik ∝ exp(E log π_k) N(x_i | θ_k, 1); q(π) = Dir(α0 + Σ_i r_i);
    θ_k = Σ_i r_ik x_i / Σ_i r_ik. CAVI's M-step (L-BFGS on the bound) follows it step by step."""
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.normal(-2.0, 1.0, 30), rng.normal(1.5, 1.0, 50)])
    alpha0, theta = np.array([2.0, 2.0]), np.array([-0.5, 0.5])
    start = np.full((80, 2), 0.5)
    concentration = alpha0 + start.sum(0)
    reference = []
    for _ in range(8):
        log_r = (special.digamma(concentration) - special.digamma(concentration.sum())
                 - 0.5 * (x[:, None] - theta) ** 2)
        r = np.exp(log_r - special.logsumexp(log_r, axis=1, keepdims=True))
        concentration = alpha0 + r.sum(0)
        theta = (r * x[:, None]).sum(0) / r.sum(0)
        reference.append((concentration.copy(), theta.copy()))

    def log_joint(params, z, x):
        k = z["k"]
        return jnp.log(z["weights"]["pi"][k]) + stats.norm.logpdf(x, params["means"][k], 1.0)

    latent = {"weights": jaxvi.Global({"pi": jaxvi.Dirichlet(2)},
                                      lambda params, z: stats.dirichlet.logpdf(z["pi"], jnp.asarray(alpha0))),
              "k": jaxvi.Discrete(2)}
    with jax.enable_x64(True):
        model = jaxvi.Model(log_joint, latent, init=lambda key, data: {"means": jnp.array([-0.5, 0.5])})
        method, data = jaxvi.CAVI(), jnp.asarray(x)
        state = jax.jit(lambda d, r: method.init(model, KEY, d, local_posterior=jaxvi.DiscretePosterior(
            jnp.log(r), jnp.zeros(80), jnp.arange(2))))(data, jnp.asarray(start))
        step = jax.jit(lambda s: method.step(model, KEY, s, data, num_data=80))
        bounds = []
        for want_concentration, want_theta in reference:
            state, info = step(state)
            bounds.append(float(info.objective))
            np.testing.assert_allclose(state.factors[0][0] + 1, want_concentration, rtol=1e-9)
            np.testing.assert_allclose(state.params["means"], want_theta, rtol=1e-7)
    assert np.all(np.diff(bounds) > 0)


def test_variational_gaussian_hmm_equals_hmmlearn_iteration_by_iteration():
    """From hmmlearn's initial posteriors (k-means means, its Normal-Wishart parameters), jaxvi's factors equal
    VariationalGaussianHMM's (full covariance, its default priors: the mean's prior at the data's mean) iteration by
    iteration, and its bound history equals hmmlearn's plus the constant hmmlearn drops, -(N T d / 2) log 2 pi."""
    from hmmlearn.vhmm import VariationalGaussianHMM
    rng = np.random.default_rng(6)
    levels, states = np.array([[-2.0, 0.0], [0.0, 2.0], [2.0, -1.0]]), np.zeros((3, 50), int)
    for t in range(1, 50):
        states[:, t] = np.where(rng.uniform(size=3) < 0.9, states[:, t - 1], rng.integers(0, 3, 3))
    sequences = levels[states] + 0.5 * rng.normal(size=(3, 50, 2))
    peer = VariationalGaussianHMM(n_components=3, covariance_type="full", n_iter=1, tol=-np.inf, random_state=0,
                                  implementation="log")
    flat, lengths = sequences.reshape(-1, 2), [50] * 3
    peer._init(flat, lengths)
    peer.init_params = ""

    def posteriors():  # hmmlearn's factors as natural parameters (means less center): emissions, start, transitions
        emissions = expfam.normal_wishart_parameters(jnp.asarray(peer.means_posterior_ - center),
                                                     jnp.asarray(peer.beta_posterior_),
                                                     jnp.asarray(peer.scale_posterior_),
                                                     jnp.asarray(peer.dof_posterior_))
        return (tuple(emissions), (jnp.asarray(peer.startprob_posterior_) - 1,),
                (jnp.asarray(peer.transmat_posterior_) - 1,))

    with jax.enable_x64(True):
        model = jaxvi.models.variational_gaussian_hmm(3, 2, mean_prior=flat.mean(0))
        center = np.asarray(model.latent["theta"].latent["emissions"].center)
        np.testing.assert_array_equal(center, flat.mean(0))
        method, data = jaxvi.CAVI(), jnp.asarray(sequences)
        dropped = -0.5 * flat.size * np.log(2 * np.pi)
        state = jax.jit(lambda d: method.init(model, KEY, d))(data)
        state = state._replace(factors=posteriors(), evaluated_factors=posteriors())
        step = jax.jit(lambda s: method.step(model, KEY, s, data, num_data=3))
        for _ in range(8):
            state, info = step(state)
            peer.fit(flat, lengths)
            np.testing.assert_allclose(float(info.objective) - peer.monitor_.history[-1], dropped, rtol=1e-10)
            for mine, theirs in zip(jax.tree_util.tree_leaves(state.factors), jax.tree_util.tree_leaves(posteriors())):
                np.testing.assert_allclose(mine, theirs, rtol=1e-8, atol=1e-10)


def _three_level_sequences(n, t, seed=6):
    """n sequences of t steps of a 3-state HMM (stay 0.9) with Gaussian emissions about three levels in 2-d."""
    rng = np.random.default_rng(seed)
    levels, states = np.array([[-2.0, 0.0], [0.0, 2.0], [2.0, -1.0]]), np.zeros((n, t), int)
    states[:, 0] = rng.integers(0, 3, n)
    for step in range(1, t):
        states[:, step] = np.where(rng.uniform(size=n) < 0.9, states[:, step - 1], rng.integers(0, 3, n))
    return (levels[states] + 0.5 * rng.normal(size=(n, t, 2))).astype(np.float32)


def test_a_variational_gaussian_hmm_by_default_settings_reaches_hmmlearn_s_best_fit_from_every_key():
    """CAVI's default start of one Markov chain over real data is k-means (hmmlearn's): from each of four keys jaxvi's
    float32 bound is the best of hmmlearn's float64 fits from four seeds (plus the constant hmmlearn drops). From prior
    draws (hmmlearn's Wishart scale puts every state's mean at the prior mean) two of these keys ended at -1,278.1
    and one at -1,778.8, against -958.3."""
    from hmmlearn.vhmm import VariationalGaussianHMM
    x = _three_level_sequences(6, 80)
    flat = x.reshape(-1, 2).astype(np.float64)
    best = -np.inf
    for seed in range(4):
        peer = VariationalGaussianHMM(n_components=3, covariance_type="full", n_iter=300, tol=1e-8,
                                      random_state=seed, implementation="log").fit(flat, [80] * 6)
        best = max(best, peer.monitor_.history[-1] - 0.5 * flat.size * np.log(2 * np.pi))
    model = jaxvi.models.variational_gaussian_hmm(3, 2, mean_prior=flat.mean(0))
    for key in range(4):
        result = jaxvi.infer(model, jaxvi.CAVI(max_iter=300), x, key=jax.random.key(key), progress=False)
        np.testing.assert_allclose(float(result.objective), best, rtol=1e-6)


def test_a_gaussian_hmm_of_data_far_from_its_prior_mean_warns_and_the_data_s_mean_fits_it():
    """Three sticky states about (30, 30), float32: with mean_prior at the data's mean (hmmlearn's default) the
    default fit labels every step as the states that drew it (adjusted Rand index 1, as hmmlearn's); with the
    model's default mean_prior = 0 the fit stopped with a non-finite bound (at 100, it was refused at its start) and
    at 10 left a state empty: the model warns, naming mean_prior and what to pass."""
    from sklearn.metrics import adjusted_rand_score
    rng = np.random.default_rng(0)
    n, t, means = 4, 50, np.array([[-1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    states = np.zeros((n, t), int)
    states[:, 0] = rng.integers(0, 3, n)
    for step in range(1, t):
        states[:, step] = np.where(rng.uniform(size=n) < 0.9, states[:, step - 1], rng.integers(0, 3, n))
    x = (means[states] + 0.2 * rng.normal(size=(n, t, 2)) + 30.0).astype(np.float32)
    model = jaxvi.models.variational_gaussian_hmm(3, 2, mean_prior=x.reshape(-1, 2).mean(0))
    result = jaxvi.infer(model, jaxvi.CAVI(max_iter=300), x, key=KEY, progress=False)
    labels = np.asarray(result.posterior(x).local.marginals).argmax(-1)
    assert adjusted_rand_score(states.ravel(), labels.ravel()) == 1.0
    with pytest.warns(UserWarning, match=r"variational_gaussian_hmm: the data's mean lies [0-9.]+ of their standard "
                                         r"deviations from mean_prior.*mean_prior=x.reshape\(-1, d\).mean\(0\)"):
        jaxvi.models.variational_gaussian_hmm(3, 2).validate(x)


def test_the_default_tolerance_is_the_bound_s_resolution_where_coarser_and_counts_as_converged():
    """CAVI(tol=None): a change below 1e-5 per datum, or below the bound's float resolution where that is coarser,
    ends the fit as converged (an LDA bound, hundreds of nats a document, is resolved in float32 to about 1.7e-3 a
    document: at tol=1e-3, the default before, such fits stopped unconverged, with a warning). A variational
    categorical HMM from its near-symmetric default start ended at the saddle (-831) in five of eight keys at 1e-3
    (median -831.1); by default its median is above hmmlearn's (-739.6 against -748.0 over eight; its bound tested
    equal to jaxvi's)."""
    from hmmlearn.vhmm import VariationalCategoricalHMM
    rule, ours = Change(1e-5, to_resolution=True), jnp.float32(-1000.0)  # resolves 1.9e-3 in total
    for change, stop in ((1e-3, STOP_TOLERANCE), (5e-3, STOP_RUNNING)):
        assert int(rule.update(ours, ours + change, 2, 10)[1]) == stop
    assert int(Change(1e-5).update(ours, ours + 1e-3, 2, 10)[1]) == STOP_RESOLUTION  # a tol the user asked for
    rng = np.random.default_rng(5)
    transitions = np.full((3, 3), 0.05) + 0.85 * np.eye(3)
    emissions = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]])
    x = np.zeros((40, 15), int)
    for n in range(40):
        state = rng.integers(3)
        for t in range(15):
            x[n, t] = rng.choice(4, p=emissions[state])
            state = rng.choice(3, p=transitions[state])
    peer = np.median([VariationalCategoricalHMM(n_components=3, random_state=seed).fit(x.reshape(-1, 1), [15] * 40)
                      .monitor_.history[-1] for seed in range(8)])
    hmm = jaxvi.models.variational_categorical_hmm(3, 4)
    fits = [jaxvi.infer(hmm, jaxvi.CAVI(max_iter=500), x, key=jax.random.key(k), progress=False) for k in range(8)]
    assert all(bool(fit.converged) for fit in fits)
    assert np.median([float(fit.objective) for fit in fits]) > peer


def test_a_cavi_fault_s_message_speaks_of_its_priors_and_global_terms_not_of_init_params():
    """A CAVI fit has no initial parameters to check (a zoo model's θ is empty): its fault at the start told the user
    to "check init (or init_params)"; a non-finite global part of the bound said only "log_prior became non-finite"
    (float32 fits of nearly collinear features stopped so: standardised breast cancer, K = 8, 11 of 12 keys, until
    q's Normal-Wishart factors were held about their means)."""
    from jaxvi.result import FAULT_LOG_EVIDENCE, Fault
    from jaxvi.run.guard import raise_on_fault
    x = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    result = jaxvi.infer(jaxvi.models.bayesian_gaussian_mixture(x, 2), jaxvi.CAVI(max_iter=2), x, key=KEY,
                         progress=False)

    def faulted(iteration, index):
        fault = Fault(*(jnp.asarray(v, jnp.int32) for v in (iteration, FAULT_LOG_EVIDENCE, index, -1)))
        return dataclasses.replace(result, diagnostics=result.diagnostics._replace(fault=fault))

    with pytest.raises(ValueError, match=r"not finite for datum 3; CAVI's first q is fitted from the priors and its "
                                         r"start \(CAVI\(start\)\): check them and the log_joint"):
        raise_on_fault(faulted(0, 3))
    with pytest.raises(FloatingPointError, match=r"CAVI stopped at iteration 4: log_prior became non-finite \(the "
                                                 r"global factors' terms of the bound.*fit in float64"):
        raise_on_fault(faulted(4, -1))


def test_a_k_means_start_leaves_the_padding_of_sequences_out():
    """Sequences of unequal lengths: what their padding holds (0 or 10^6) changes no digit of a k-means-started fit
    (the padded steps are neither clustered nor assigned)."""
    x = _three_level_sequences(4, 40, seed=2)
    lengths = np.array([40, 25, 31, 12])
    padded = [np.where(np.arange(40)[None, :, None] < lengths[:, None, None], x, fill) for fill in (0.0, 1e6)]
    model, method = jaxvi.models.variational_gaussian_hmm(3, 2), jaxvi.CAVI(max_iter=5, tol=0.0, start="kmeans")
    bounds = [float(jaxvi.infer(model, method, jaxvi.Sequences(obs, lengths), key=KEY, progress=False).objective)
              for obs in padded]
    assert bounds[0] == bounds[1]


def _words():
    return jaxvi.models.bag_of_words(np.ones((3, 4), int), np.float64)


@pytest.mark.parametrize("model, data, message", [
    (lambda: jaxvi.models.variational_categorical_hmm(2, 3), lambda: np.zeros((2, 5), int),
     r"CAVI\(start='kmeans'\): k-means clusters real-valued data, got dtypes \['int"),
    (lambda: jaxvi.models.variational_gaussian_hmm(3, 2), lambda: np.zeros((1, 2, 2)),
     r"CAVI\(start='kmeans'\): k-means of 3 clusters needs at least 3 steps, got 2"),
    (lambda: jaxvi.models.bayesian_gaussian_mixture(_X[:4], 4), lambda: _X[:3],
     r"k-means of 4 clusters needs at least 4 data, got 3"),
    (lambda: jaxvi.models.lda(_words(), 2, 4), _words,
     r"CAVI\(start='kmeans'\): k-means responsibilities need a Discrete local latent or one Markov chain"),
])
def test_a_k_means_start_is_refused_where_there_is_nothing_to_cluster(model, data, message):
    with pytest.raises(ValueError, match=message):
        jaxvi.infer(model(), jaxvi.CAVI(start="kmeans"), data(), key=KEY, progress=False)


@pytest.mark.parametrize("build, message", [
    (lambda: jaxvi.Dirichlet(0), r"Dirichlet\(K\): expected an integer >= 1, got 0"),
    (lambda: jaxvi.Dirichlet(1), r"Dirichlet\(K\): expected an integer >= 2 \(probabilities of one value are all 1\), "
                                 r"got 1"),  # distrax's own error came from inside a fit
    (lambda: jaxvi.models.bayesian_gaussian_mixture(_X, 1), r"K: expected an integer >= 2"),
    (lambda: jaxvi.models.bayesian_gaussian_mixture(_X[:4], 5), r"K: expected at most the number of data, 4, got 5"),
    (lambda: jaxvi.models.bayesian_gaussian_mixture(np.where(_X == _X[3, 1], np.nan, _X), 3),  # was blamed on 'mean'
     r"data: expected finite values, got nan at index \(3, 1\)"),
    (lambda: jaxvi.models.variational_categorical_hmm(1, 3), r"K: expected an integer >= 2"),
    (lambda: jaxvi.models.variational_gaussian_hmm(1, 2), r"K: expected an integer >= 2"),
    (lambda: jaxvi.Gamma(shape=(2, -1)), r"Gamma\(shape\): expected a tuple of integers >= 1, got \(2, -1\)"),
    (lambda: jaxvi.Wishart(2.5), r"Wishart\(d\): expected an integer >= 1, got 2.5"),
    (lambda: jaxvi.NormalWishart(3, shape="K"), r"NormalWishart\(shape\): expected a tuple of integers"),
    (lambda: jaxvi.NormalWishart(3, center=(0.0, 1.0)), r"NormalWishart\(center\): expected None or finite numbers "
                                                         r"of shape \(3,\), got \(0.0, 1.0\)"),
    (lambda: jaxvi.NormalGamma((4, 2), center=float("nan")), r"NormalGamma\(center\): expected None or finite "
                                                              r"numbers of shape \(1,\) or \(2,\), got nan"),
    (lambda: jaxvi.CAVI(start="kmedoids"), r"CAVI\(start\): expected one of \('auto', 'prior', 'random', 'kmeans'\), "
                                           r"got 'kmedoids'"),
    (lambda: jaxvi.CAVI(max_iter=0), r"CAVI\(max_iter\)"),
    (lambda: jaxvi.Global(jaxvi.Discrete(3), lambda params, z: 0.0), r"Global\(latent\): expected a Real spec"),
    (lambda: jaxvi.models.bayesian_linear_regression(0), r"D: expected an integer >= 1, got 0"),
    (lambda: jaxvi.models.bayesian_linear_regression(2, noise_rate=-1.0), r"noise_rate: expected a number > 0, got -1.0"),
])
def test_bad_specs_and_settings_are_refused_with_their_names(build, message):
    with pytest.raises(ValueError, match=message):
        build()


_X = np.random.default_rng(0).normal(size=(20, 2))
_DOCS = jaxvi.models.bag_of_words(np.random.default_rng(0).poisson(1.0, (6, 5)))


@pytest.mark.parametrize("build, message", [
    (lambda: jaxvi.models.bayesian_gaussian_mixture(_X, 2, weight_concentration=0),
     r"weight_concentration: expected finite numbers > 0, got 0"),
    (lambda: jaxvi.models.bayesian_gaussian_mixture(_X, 2, mean_precision=-1.0),
     r"mean_precision: expected finite numbers > 0, got -1"),
    (lambda: jaxvi.models.bayesian_gaussian_mixture(_X, 2, mean=[0.0, 1.0, 2.0]),
     r"mean: expected a number or an array that broadcasts to shape \(2,\), got shape \(3,\)"),
    (lambda: jaxvi.models.bayesian_gaussian_mixture(_X, 2, degrees_of_freedom=0.5),  # a Wishart in D = 2: > 1
     r"degrees_of_freedom: expected finite numbers > 1, got 0.5"),
    (lambda: jaxvi.models.bayesian_gaussian_mixture(_X, 2, "diag", degrees_of_freedom=0.0),
     r"degrees_of_freedom: expected finite numbers > 0, got 0"),
    (lambda: jaxvi.models.bayesian_gaussian_mixture(_X, 2, covariance_prior=[[1.0, 2.0], [2.0, 1.0]]),
     r"covariance_prior: expected symmetric positive definite 2 x 2 matrices, got one that is not positive definite "
     r"\(smallest eigenvalue -1\)"),
    (lambda: jaxvi.models.bayesian_gaussian_mixture(_X, 2, covariance_prior=[[1.0, 0.5], [0.0, 1.0]]),
     r"covariance_prior: expected symmetric positive definite 2 x 2 matrices, got a matrix that is not symmetric"),
    (lambda: jaxvi.models.bayesian_gaussian_mixture(np.c_[_X, np.ones(20)], 2),  # a constant feature
     r"covariance_prior \(default: the data's covariance\): expected symmetric positive definite 3 x 3 matrices"),
    (lambda: jaxvi.models.bayesian_gaussian_mixture(_X, 2, "diag", covariance_prior=[1.0, 0.0]),
     r"covariance_prior: expected finite numbers > 0, got 0"),
    (lambda: jaxvi.models.lda(_DOCS, 2, 5, doc_topic_prior=-1.0),
     r"doc_topic_prior: expected finite numbers > 0, got -1"),
    (lambda: jaxvi.models.lda(_DOCS, 2, 5, topic_word_prior=[0.1] * 4),
     r"topic_word_prior: expected a number or an array that broadcasts to shape \(2, 5\), got shape \(4,\)"),
    (lambda: jaxvi.models.variational_categorical_hmm(2, 3, transition_prior=0.0),
     r"transition_prior: expected finite numbers > 0, got 0"),
    (lambda: jaxvi.models.variational_gaussian_hmm(2, 3, degrees_of_freedom=1.5),  # a Wishart in d = 3: > 2
     r"degrees_of_freedom: expected finite numbers > 2, got 1.5"),
    (lambda: jaxvi.models.variational_gaussian_hmm(2, 2, scale=-np.eye(2)),
     r"scale: expected symmetric positive definite 2 x 2 matrices, got one that is not positive definite"),
    (lambda: jaxvi.models.variational_gaussian_hmm(2, 2, mean_prior=float("nan")),
     r"mean_prior: expected finite numbers, got nan"),
])
def test_improper_or_misshapen_priors_of_the_zoo_are_refused_with_their_names(build, message):
    """A prior hyperparameter out of its family's range (a Dirichlet's concentration <= 0, a Wishart's degrees of
    freedom <= D - 1, a scale matrix that is not positive definite) is refused where the model is built, by name, not
    later by CAVI as "not conjugate" (or, for the degrees of freedom, not at all)."""
    with pytest.raises(ValueError, match=message):
        build()


def test_the_zoo_builds_its_models_of_float64_data_without_a_warning():
    """scikit-learn's data sets are float64, which JAX keeps as float32 unless x64 is on: the zoo's priors are made in
    that float32 rather than asked for in float64 (JAX warned that float64 was "not available", once per prior)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for covariance in ("full", "diag"):
            jaxvi.models.bayesian_gaussian_mixture(_X, 2, covariance)
        jaxvi.models.lda(jaxvi.models.bag_of_words(np.random.default_rng(0).poisson(1.0, (6, 5)), np.float64), 2, 5)
        jaxvi.models.variational_gaussian_hmm(2, 2, mean_prior=_X.mean(0))
        jaxvi.models.variational_categorical_hmm(2, 3, transition_prior=np.ones((2, 2)))


def test_priors_of_every_shape_that_broadcasts_are_taken():
    """What the checks let through: per-component and per-dimension priors where the model's log prior broadcasts them
    ("diag" mixtures; gensim's (K, V) topic-word prior), a traced prior (only its shape is checked), and a symmetric
    positive definite matrix whose off-diagonal entries are rounding-sized."""
    K, D = 2, 2
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(D, D)))[0]
    jaxvi.models.bayesian_gaussian_mixture(_X, K, "diag", mean=np.zeros((K, D)), degrees_of_freedom=np.ones((K, D)),
                                           mean_precision=np.ones((K, D)))
    jaxvi.models.bayesian_gaussian_mixture(_X, K, covariance_prior=(q * 0.3) @ q.T)
    jaxvi.models.lda(_DOCS, K, 5, topic_word_prior=np.full((K, 5), 0.1))

    def built(prior):  # a model built inside a trace: the prior a tracer
        jaxvi.models.lda(_DOCS, K, 5, doc_topic_prior=prior)
        return prior

    jax.make_jaxpr(built)(jnp.ones(K))
    with pytest.raises(ValueError, match=r"doc_topic_prior: expected a number or an array that broadcasts to shape "
                                         r"\(2,\), got shape \(3,\)"):
        jax.make_jaxpr(built)(jnp.ones(3))


def test_the_wishart_log_density_is_scipy_s_with_its_gradient_and_finite_at_a_precision_float32_rounds_singular():
    """``jaxvi.models.wishart_log_prob`` against SciPy's Wishart; its gradient in the precision is
    (nu - d - 1)/2 L^-1 - W^-1/2 (the log-determinant's derivative is written by hand); at a precision that float32
    rounds to a slightly indefinite matrix (a draw of a switched-off component) it stays finite, as slogdet's value,
    where a Cholesky factor's log-determinant is NaN."""
    import scipy.stats

    from jaxvi.linalg import spd_log_det
    from jaxvi.models import wishart_log_prob

    rng = np.random.default_rng(0)
    d, dof = 3, 5.0
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    scale, precision = a @ a.T + d * np.eye(d), b @ b.T + np.eye(d)
    with jax.enable_x64(True):
        args = (jnp.asarray(precision), dof, jnp.asarray(np.linalg.inv(scale)))
        np.testing.assert_allclose(wishart_log_prob(*args), scipy.stats.wishart(df=dof, scale=scale).logpdf(precision),
                                   rtol=1e-12)
        np.testing.assert_allclose(jax.grad(wishart_log_prob)(*args),
                                   0.5 * (dof - d - 1) * np.linalg.inv(precision) - 0.5 * np.linalg.inv(scale),
                                   rtol=1e-10, atol=1e-12)
    rotation = np.array([[0.6, 0.8], [-0.8, 0.6]])
    rounded = jnp.asarray(rotation @ np.diag([5.0, 1e-8]) @ rotation.T, jnp.float32)
    assert np.isnan(float(spd_log_det(rounded)))
    assert np.isfinite(float(wishart_log_prob(rounded, 2.0, jnp.eye(2))))
