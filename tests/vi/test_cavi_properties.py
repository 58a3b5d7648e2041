"""CAVI's updates, derived from the log-joint, equal the textbook's hand-derived conjugate updates on random
conjugate models (hypothesis): random hyperparameters and data, one compiled update per family (the
hyperparameters and data are traced arguments, so a new draw does not recompile)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.scipy import stats

import jaxvi

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)
N = 20
positive = st.floats(0.2, 20.0)
seeds = st.integers(0, 2**31 - 1)


def update(model_of, hyper, data):
    """The factors after CAVI's first global update from the priors (exact: one factor, no local latent)."""
    method = jaxvi.CAVI()
    return method.init(model_of(hyper), jax.random.key(0), data).factors


def global_model(spec, log_prior, log_likelihood):
    return jaxvi.Model(lambda params, z, x: log_likelihood(z["theta"], x),
                       jaxvi.Global({"theta": spec}, lambda params, z: log_prior(z["theta"])),
                       init=lambda key, data: {})


def beta_bernoulli(hyper):
    a, b = hyper
    return global_model(jaxvi.Beta(), lambda p: stats.beta.logpdf(p, a, b),
                        lambda p, x: x * jnp.log(p) + (1 - x) * jnp.log1p(-p))


def gamma_poisson(hyper):
    a, b = hyper
    return global_model(jaxvi.Gamma(), lambda rate: stats.gamma.logpdf(rate, a, scale=1 / b),
                        lambda rate, x: stats.poisson.logpmf(x, rate))


def dirichlet_categorical(hyper):
    return global_model(jaxvi.Dirichlet(3), lambda w: stats.dirichlet.logpdf(w, hyper),
                        lambda w, x: jnp.log(w[x]))


def normal_mean(hyper):
    prior_mean, prior_cov, noise_cov = hyper
    return global_model(jaxvi.Gaussian(2), lambda mu: stats.multivariate_normal.logpdf(mu, prior_mean, prior_cov),
                        lambda mu, x: stats.multivariate_normal.logpdf(x, mu, noise_cov))


def gamma_precision(hyper):
    a, b, mean = hyper
    return global_model(jaxvi.Gamma(), lambda tau: stats.gamma.logpdf(tau, a, scale=1 / b),
                        lambda tau, x: stats.norm.logpdf(x, mean, 1 / jnp.sqrt(tau)))


@pytest.fixture(scope="module")
def compiled():
    """One compiled update per family, run in float64; it returns NumPy arrays."""
    fns = {name: jax.jit(lambda hyper, data, model_of=model_of: update(model_of, hyper, data))
           for name, model_of in (("beta", beta_bernoulli), ("gamma", gamma_poisson),
                                  ("dirichlet", dirichlet_categorical), ("normal", normal_mean),
                                  ("precision", gamma_precision))}

    def call(name, hyper, data):
        with jax.enable_x64(True):
            hyper = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), hyper)
            return jax.tree_util.tree_map(np.asarray, fns[name](hyper, jnp.asarray(data)))

    return call


@SETTINGS
@given(a=positive, b=positive, p=st.floats(0.05, 0.95), seed=seeds)
def test_beta_bernoulli_update(compiled, a, b, p, seed):
    x = (np.random.default_rng(seed).uniform(size=N) < p).astype(np.float64)
    ((eta_a, eta_b),) = compiled("beta", np.array([a, b]), np.asarray(x))
    np.testing.assert_allclose([eta_a + 1, eta_b + 1], [a + x.sum(), b + N - x.sum()], rtol=1e-9)


@SETTINGS
@given(a=positive, b=positive, rate=st.floats(0.1, 30.0), seed=seeds)
def test_gamma_poisson_update(compiled, a, b, rate, seed):
    x = np.random.default_rng(seed).poisson(rate, N).astype(np.float64)
    ((log_coefficient, minus_rate),) = compiled("gamma", np.array([a, b]), np.asarray(x))
    np.testing.assert_allclose([log_coefficient + 1, -minus_rate], [a + x.sum(), b + N], rtol=1e-9)


@SETTINGS
@given(alpha=st.lists(positive, min_size=3, max_size=3), seed=seeds)
def test_dirichlet_categorical_update(compiled, alpha, seed):
    x = np.random.default_rng(seed).integers(0, 3, N)
    ((eta,),) = compiled("dirichlet", np.asarray(alpha), np.asarray(x))
    np.testing.assert_allclose(np.asarray(eta) + 1, np.asarray(alpha) + np.bincount(x, minlength=3), rtol=1e-9)


def spd(rng, scale):
    a = rng.normal(size=(2, 2))
    return scale * (a @ a.T + 0.5 * np.eye(2))


@SETTINGS
@given(prior_scale=st.floats(0.1, 10.0), noise_scale=st.floats(0.1, 10.0), seed=seeds)
def test_normal_mean_update(compiled, prior_scale, noise_scale, seed):
    rng = np.random.default_rng(seed)
    prior_mean, prior_cov, noise_cov = rng.normal(size=2) * 3, spd(rng, prior_scale), spd(rng, noise_scale)
    x = rng.multivariate_normal(rng.normal(size=2) * 3, noise_cov, N)
    precision = np.linalg.inv(prior_cov) + N * np.linalg.inv(noise_cov)
    shift = np.linalg.solve(prior_cov, prior_mean) + np.linalg.solve(noise_cov, x.sum(0))
    ((linear, quadratic),) = compiled("normal", (np.asarray(prior_mean), np.asarray(prior_cov),
                                                     np.asarray(noise_cov)), np.asarray(x))
    np.testing.assert_allclose(-2 * np.asarray(quadratic), precision, rtol=1e-8)
    np.testing.assert_allclose(linear, shift, rtol=1e-8, atol=1e-9 * np.abs(shift).max())


@SETTINGS
@given(a=positive, b=positive, sd=st.floats(0.1, 10.0), seed=seeds)
def test_gamma_precision_with_known_mean_update(compiled, a, b, sd, seed):
    rng = np.random.default_rng(seed)
    mean = rng.normal() * 5
    x = rng.normal(mean, sd, N)
    ((log_coefficient, minus_rate),) = compiled("precision", np.array([a, b, mean]), np.asarray(x))
    np.testing.assert_allclose([log_coefficient + 1, -minus_rate], [a + N / 2, b + 0.5 * np.sum((x - mean) ** 2)],
                               rtol=1e-9)
