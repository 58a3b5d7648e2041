"""The exact Gaussian E-step against closed forms (factor analysis), Monte Carlo and an independent mode search."""
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

import jaxvi
from jaxvi import exact

D, d, N = 5, 2, 4


@functools.partial(jax.jit, static_argnums=(0, 1, 4), static_argnames=("chunk_size",))
def gaussian_posterior(log_joint, latent, params, data, chunk_size=1024):
    """``jaxvi.exact.posterior``, compiled once per model, latent and shape."""
    return exact.posterior(log_joint, latent, params, data, chunk_size)


@functools.partial(jax.jit, static_argnums=1)
def expect_of(post, f, data=None):
    return post.expect(f, data)


expected_log_joint = jax.jit(exact.expected_log_joint, static_argnums=0)


def fa_log_joint(params, z, x):
    """Factor analysis: log N(z; 0, I) + log N(x; mu + W z, diag(psi))."""
    prior = jnp.sum(jax.scipy.stats.norm.logpdf(z))
    return prior + jnp.sum(jax.scipy.stats.norm.logpdf(x, params["mu"] + params["W"] @ z, jnp.sqrt(params["psi"])))


def fa_problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {"W": rng.normal(size=(D, d)), "mu": rng.normal(size=D), "psi": rng.uniform(0.3, 1.5, D)}
    z = rng.normal(size=(N, d))
    x = params["mu"] + z @ params["W"].T + np.sqrt(params["psi"]) * rng.normal(size=(N, D))
    return params, x


def fa_closed_form(params, x):
    W, mu, psi = params["W"], params["mu"], params["psi"]
    sigma = np.linalg.inv(np.eye(d) + W.T @ np.diag(1 / psi) @ W)
    means = (x - mu) @ (sigma @ W.T @ np.diag(1 / psi)).T
    log_evidence = scipy.stats.multivariate_normal(mu, W @ W.T + np.diag(psi)).logpdf(x)
    return means, sigma, log_evidence


def to_jax(tree, dtype=None):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)


# --- the factor-analysis closed form --------------------------------------------------------------

def test_factor_analysis_posterior_and_evidence_equal_the_closed_form_in_float64():
    np_params, x = fa_problem()
    means, sigma, log_evidence = fa_closed_form(np_params, x)
    with jax.enable_x64(True):
        post = gaussian_posterior(fa_log_joint, jaxvi.Gaussian(d), to_jax(np_params), jnp.asarray(x), chunk_size=3)
        assert isinstance(post, jaxvi.GaussianPosterior)
        assert post.mean.dtype == jnp.float64
        assert post.mean.shape == (N, d) and post.covariance.shape == (N, d, d) and post.log_evidence.shape == (N,)
        chex.assert_trees_all_close((post.mean, post.covariance, post.log_evidence),
                                    (means, np.broadcast_to(sigma, (N, d, d)), log_evidence), rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(post.quadratic, True)
        np.testing.assert_array_equal(exact.well_posed(post), True)
        assert post.laplace is False
        np.testing.assert_array_equal(post.mode(), post.mean)


def test_factor_analysis_posterior_and_evidence_equal_the_closed_form_in_float32():
    np_params, x = fa_problem(1)
    means, sigma, log_evidence = fa_closed_form(np_params, x)
    post = gaussian_posterior(fa_log_joint, jaxvi.Gaussian(d), to_jax(np_params, jnp.float32),
                              jnp.asarray(x, jnp.float32))
    assert post.mean.dtype == jnp.float32
    np.testing.assert_allclose(post.mean, means, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(post.covariance, np.broadcast_to(sigma, (N, d, d)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(post.log_evidence, log_evidence, rtol=1e-5)
    np.testing.assert_array_equal(post.quadratic, True)


# --- expectations and sampling --------------------------------------------------------------------

A = np.array([[1.5, -0.7], [0.4, 2.0]])  # not symmetric on purpose
B = np.array([0.3, -1.1])


def quadratic_form(z):
    return z @ jnp.asarray(A, z.dtype) @ z + jnp.asarray(B, z.dtype) @ z


def quadratic_with_data(z, x):
    u = x[:d] @ z
    return jnp.stack([u ** 2, u + x[d] * z[0] * z[1]])


def test_expect_of_quadratic_functions_is_exact():
    np_params, x = fa_problem(3)
    means, sigma, _ = fa_closed_form(np_params, x)
    with jax.enable_x64(True):
        post = gaussian_posterior(fa_log_joint, jaxvi.Gaussian(d), to_jax(np_params), jnp.asarray(x))
        value = np.asarray(expect_of(post, quadratic_form))
        with_data = np.asarray(expect_of(post, quadratic_with_data, jnp.asarray(x)))
    assert value.shape == (N,) and with_data.shape == (N, 2)
    closed = [np.trace(A @ sigma) + m @ A @ m + B @ m for m in means]
    np.testing.assert_allclose(value, closed, rtol=1e-10)
    for i, m in enumerate(means):
        a = x[i, :d]
        second = np.outer(m, m) + sigma  # E[z z^T]
        np.testing.assert_allclose(with_data[i, 0], a @ second @ a, rtol=1e-10)
        np.testing.assert_allclose(with_data[i, 1], a @ m + x[i, d] * second[0, 1], rtol=1e-10)


def test_samples_have_the_posterior_mean_and_covariance():
    np_params, x = fa_problem(4)
    means, sigma, _ = fa_closed_form(np_params, x)
    S = 20000
    post = gaussian_posterior(fa_log_joint, jaxvi.Gaussian(d), to_jax(np_params, jnp.float32),
                              jnp.asarray(x, jnp.float32))
    draws = np.asarray(jax.jit(jax.vmap(post.sample))(jax.random.split(jax.random.key(0), S)), np.float64)
    assert draws.shape == (S, N, d)
    sd = np.sqrt(np.diag(sigma))
    np.testing.assert_array_less(np.abs(draws.mean(axis=0) - means), np.broadcast_to(4.5 * sd / np.sqrt(S), (N, d)))
    cov_se = np.sqrt((np.outer(np.diag(sigma), np.diag(sigma)) + sigma ** 2) / S)
    for i in range(N):
        centred = draws[:, i] - means[i]
        np.testing.assert_array_less(np.abs(centred.T @ centred / S - sigma), 4.5 * cov_se)
    # one draw per datum, and different keys give different draws
    single = np.asarray(post.sample(jax.random.key(1)))
    assert single.shape == (N, d)
    assert not np.allclose(single, np.asarray(post.sample(jax.random.key(2))))


def test_expected_log_joint_equals_the_closed_form_and_the_elbo_identity():
    np_params, x = fa_problem(5)
    means, sigma, log_evidence = fa_closed_form(np_params, x)
    W, mu, psi = np_params["W"], np_params["mu"], np_params["psi"]
    closed = 0.0
    for m, xi in zip(means, x):
        r = xi - mu - W @ m
        closed += -0.5 * d * math.log(2 * math.pi) - 0.5 * (np.trace(sigma) + m @ m)
        closed += (-0.5 * D * math.log(2 * math.pi) - 0.5 * np.sum(np.log(psi))
                   - 0.5 * (r @ (r / psi) + np.trace(W.T @ np.diag(1 / psi) @ W @ sigma)))
    entropy = N * (0.5 * d * (1 + math.log(2 * math.pi)) + 0.5 * np.linalg.slogdet(sigma)[1])
    with jax.enable_x64(True):
        params, data = to_jax(np_params), jnp.asarray(x)
        post = gaussian_posterior(fa_log_joint, jaxvi.Gaussian(d), params, data)
        q = expected_log_joint(fa_log_joint, params, data, post)
        np.testing.assert_allclose(q, closed, rtol=1e-10)
        np.testing.assert_allclose(q + entropy, log_evidence.sum(), rtol=1e-10)
        # the gradient in the parameters is that of the closed form, with q held fixed
        grad = jax.grad(lambda p: expected_log_joint(fa_log_joint, p, data, post))(params)
    residuals = x - mu - means @ W.T                                             # (N, D)
    grad_mu = np.sum(residuals / psi, axis=0)
    np.testing.assert_allclose(grad["mu"], grad_mu, rtol=1e-8)


# --- log-joints that are not quadratic ------------------------------------------------------------

def quartic_log_joint(params, z, x):
    """Factor analysis plus a quartic term whose weight is part of every datum: x["c"] = 0 is quadratic."""
    return fa_log_joint(params, z, x["x"]) - x["c"] * jnp.sum(z ** 4)


def test_a_quartic_term_is_flagged_per_datum():
    np_params, x = fa_problem(6)
    c = np.array([0.0, 0.1, 0.0, 0.5])
    means, sigma, log_evidence = fa_closed_form(np_params, x)
    with jax.enable_x64(True):
        post = gaussian_posterior(quartic_log_joint, jaxvi.Gaussian(d), to_jax(np_params),
                                  {"x": jnp.asarray(x), "c": jnp.asarray(c)})
        np.testing.assert_array_equal(post.quadratic, [True, False, True, False])
        np.testing.assert_array_equal(exact.well_posed(post), [True, False, True, False])
        # the quadratic data are still exact
        np.testing.assert_allclose(post.mean[::2], means[::2], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(post.log_evidence[::2], log_evidence[::2], rtol=1e-10)
    # float32 resolves less: its probe tolerance is sqrt(eps32) ~ 3e-4 relative, so the quartic terms are
    # placed on data whose probe point is far from z = 0 (the degenerate case has its own test below)
    c32 = np.array([0.1, 0.0, 0.5, 0.0])
    post32 = gaussian_posterior(quartic_log_joint, jaxvi.Gaussian(d), to_jax(np_params, jnp.float32),
                                {"x": jnp.asarray(x, jnp.float32), "c": jnp.asarray(c32, jnp.float32)})
    np.testing.assert_array_equal(post32.quadratic, [False, True, False, True])
    np.testing.assert_allclose(post32.mean[1::2], means[1::2], rtol=1e-5, atol=1e-5)


def quartic_1d_log_joint(params, z, x):
    return -0.5 * z[0] ** 2 + x * z[0] - z[0] ** 4


def test_a_quartic_is_flagged_even_when_the_posterior_mean_is_one_sd_below_zero():
    """Regression test: a strongly non-quadratic log-joint must not pass the quadratic check.

    For x = -1 the quadratic expansion at z = 0 gives mean -1 and sd 1, so a probe at "mean + one sd" in
    direction +1 lands exactly on the expansion point z = 0, where every smooth function equals its own
    second-order expansion. The true posterior (mean ~ -0.27, log p(x) ~ 0.579) is far from N(-1, 1)
    (log p(x) = 1.419), so the datum must be flagged.
    """
    with jax.enable_x64(True):
        post = gaussian_posterior(quartic_1d_log_joint, jaxvi.Gaussian(1), {}, jnp.asarray([-1.0, -0.5, 1.0]))
        np.testing.assert_array_equal(post.quadratic, False)


def convex_log_joint(params, z, x):
    """Curvature +1 in every direction: exp of it is not integrable."""
    return 0.5 * jnp.sum(z ** 2) + x[:d] @ z


def saddle_log_joint(params, z, x):
    """Curvature -1 along z_0 and +0.5 along z_1."""
    return -0.5 * z[0] ** 2 + 0.25 * z[1] ** 2 + x[:d] @ z


def flat_log_joint(params, z, x):
    """No curvature at all along z_1: the posterior is not a proper Gaussian."""
    return -0.5 * z[0] ** 2 + x[:d] @ z


@pytest.mark.parametrize("log_joint", [convex_log_joint, saddle_log_joint, flat_log_joint])
def test_a_log_joint_without_negative_curvature_is_flagged(log_joint):
    _, x = fa_problem(7)
    with jax.enable_x64(True):
        post = gaussian_posterior(log_joint, jaxvi.Gaussian(d), {}, jnp.asarray(x))
        np.testing.assert_array_equal(post.quadratic, False)
        np.testing.assert_array_equal(exact.well_posed(post), False)
    post32 = gaussian_posterior(log_joint, jaxvi.Gaussian(d), {}, jnp.asarray(x, jnp.float32))
    np.testing.assert_array_equal(post32.quadratic, False)


# --- logistic regression with a Gaussian latent: the Laplace approximation ------------------------

M = 8  # observations per datum


def logistic_log_joint(params, z, y):
    """z ~ N(0, I); y_j = +-1 with P(y_j | z) = sigmoid(y_j a_j^T z)."""
    return jnp.sum(jax.scipy.stats.norm.logpdf(z)) + jnp.sum(jax.nn.log_sigmoid(y * (params["A"] @ z)))


def logistic_problem(seed=8, n=3):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(M, d))
    z = rng.normal(size=(n, d))
    p = 1 / (1 + np.exp(-z @ A.T))
    y = np.where(rng.uniform(size=p.shape) < p, 1.0, -1.0)
    return {"A": A}, y


def logistic_mode_and_precision(A, y):
    """The mode by scipy's BFGS and the negative Hessian there, in NumPy."""
    def negative(z):
        s = y * (A @ z)
        return 0.5 * z @ z + np.sum(np.logaddexp(0.0, -s))

    def gradient(z):
        s = y * (A @ z)
        return z - A.T @ (y * scipy.special.expit(-s))

    mode = scipy.optimize.minimize(negative, np.zeros(d), jac=gradient, method="BFGS",
                                   options={"gtol": 1e-12}).x
    p = scipy.special.expit(A @ mode)
    precision = np.eye(d) + A.T @ np.diag(p * (1 - p)) @ A
    log_joint_at_mode = -d / 2 * math.log(2 * math.pi) - negative(mode)
    return mode, precision, log_joint_at_mode


def test_laplace_centres_on_the_mode_found_by_scipy():
    np_params, y = logistic_problem()
    with jax.enable_x64(True):
        params, data = to_jax(np_params), jnp.asarray(y)
        exact_post = gaussian_posterior(logistic_log_joint, jaxvi.Gaussian(d), params, data)
        np.testing.assert_array_equal(exact_post.quadratic, False)
        post = gaussian_posterior(logistic_log_joint, jaxvi.Gaussian(d, laplace=True), params, data)
    assert post.laplace is True
    np.testing.assert_array_equal(exact.well_posed(post), True)
    for i in range(len(y)):
        mode, precision, log_joint_at_mode = logistic_mode_and_precision(np_params["A"], y[i])
        np.testing.assert_allclose(post.mean[i], mode, rtol=1e-7, atol=1e-8)
        np.testing.assert_allclose(post.covariance[i], np.linalg.inv(precision), rtol=1e-7, atol=1e-10)
        laplace_evidence = (log_joint_at_mode + d / 2 * math.log(2 * math.pi)
                            - 0.5 * np.linalg.slogdet(precision)[1])
        np.testing.assert_allclose(post.log_evidence[i], laplace_evidence, rtol=1e-9)


def poisson_log_joint(params, z, x):
    """1-d: z ~ N(0, 1), x ~ Poisson(exp(b + z)); the mode solves -z + x - exp(b + z) = 0."""
    rate = params["b"] + z[0]
    return jax.scipy.stats.norm.logpdf(z[0]) + x * rate - jnp.exp(rate) - jax.scipy.special.gammaln(x + 1)


def test_laplace_mode_in_one_dimension_equals_bisection():
    counts = np.array([0.0, 1.0, 4.0, 12.0])
    b = 0.3
    with jax.enable_x64(True):
        post = gaussian_posterior(poisson_log_joint, jaxvi.Gaussian(1, laplace=True, newton_steps=30),
                                  {"b": jnp.asarray(b)}, jnp.asarray(counts))
    for i, x in enumerate(counts):
        mode = scipy.optimize.bisect(lambda z: -z + x - math.exp(b + z), -20.0, 20.0, xtol=1e-14)
        np.testing.assert_allclose(post.mean[i, 0], mode, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(post.covariance[i, 0, 0], 1 / (1 + math.exp(b + mode)), rtol=1e-9)


def test_laplace_on_a_quadratic_log_joint_is_exact():
    np_params, x = fa_problem(9)
    means, sigma, log_evidence = fa_closed_form(np_params, x)
    with jax.enable_x64(True):
        post = gaussian_posterior(fa_log_joint, jaxvi.Gaussian(d, laplace=True), to_jax(np_params), jnp.asarray(x))
        chex.assert_trees_all_close((post.mean, post.covariance, post.log_evidence),
                                    (means, np.broadcast_to(sigma, (N, d, d)), log_evidence), rtol=1e-10, atol=1e-12)


# --- through jaxvi.infer --------------------------------------------------------------------------

def logistic_init(key, data):
    return {"A": 0.5 * jax.random.normal(key, (M, d))}


def test_infer_refuses_a_log_joint_that_is_not_quadratic():
    _, y = logistic_problem(10, n=6)
    model = jaxvi.Model(logistic_log_joint, jaxvi.Gaussian(d), logistic_init)
    with pytest.raises(ValueError, match="quadratic"):
        jaxvi.infer(model, jaxvi.EM(max_iter=3, m_step_iters=2), jnp.asarray(y, jnp.float32),
                    key=jax.random.key(0), progress=False)


def test_infer_with_laplace_warns_that_it_is_approximate():
    _, y = logistic_problem(10, n=6)
    model = jaxvi.Model(logistic_log_joint, jaxvi.Gaussian(d, laplace=True), logistic_init)
    with pytest.warns(UserWarning, match="approximat"):
        result = jaxvi.infer(model, jaxvi.EM(max_iter=3, m_step_iters=2), jnp.asarray(y, jnp.float32),
                             key=jax.random.key(0), progress=False)
    assert np.isfinite(float(result.objective))
