"""``jaxvi.calibrate`` (VSBC) on a conjugate model, where the exact posterior's probability below the truth is
known in closed form: a converged SVI fit is symmetric, a stopped-early one is flagged."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import jaxvi
from jaxvi.calibrate import _ks_two_sample

SIGMA, PRIOR_MEAN, PRIOR_SD, N = 1.0, 3.0, 1.0, 20


def model():
    latent = jaxvi.Global({"mu": jaxvi.Real(())},
                          log_prior=lambda params, z: jax.scipy.stats.norm.logpdf(z["mu"], PRIOR_MEAN, PRIOR_SD))
    return jaxvi.Model(lambda params, z, x: jax.scipy.stats.norm.logpdf(x, z["mu"], SIGMA), latent, lambda k, d: {})


def simulate(key):
    mu_key, x_key = jax.random.split(key)
    mu = PRIOR_MEAN + PRIOR_SD * jax.random.normal(mu_key)
    return {"mu": mu}, mu + SIGMA * jax.random.normal(x_key, (N,))


def test_a_converged_fit_is_calibrated_and_a_stopped_early_one_is_flagged():
    converged = jaxvi.calibrate(model(), jaxvi.SVI(num_steps=800, num_particles=4, estimator="stl", learning_rate=5e-2),
                                simulate, 100, key=jax.random.key(0))
    probabilities = np.asarray(converged.probabilities["mu"])
    # the exact posterior's probability below the truth, from the same simulated data
    _, data = jax.vmap(simulate)(jax.random.split(jax.random.split(jax.random.key(0), 3)[0], 100))
    data, truth = np.asarray(data, np.float64), np.asarray(converged.truth["mu"], np.float64)
    precision = 1 / PRIOR_SD**2 + N / SIGMA**2
    mean = (PRIOR_MEAN / PRIOR_SD**2 + data.sum(axis=1) / SIGMA**2) / precision
    exact = scipy.stats.norm.cdf((truth - mean) * math.sqrt(precision))
    assert np.max(np.abs(probabilities - exact)) < 0.05  # Monte Carlo (1,000 draws) and q's own error
    assert float(converged.asymmetry["mu"]) > 0.05
    # 15 steps from q at 0 toward a prior mean of 3: q lies below every truth
    early = jaxvi.calibrate(model(), jaxvi.SVI(num_steps=15, learning_rate=5e-2), simulate, 100, key=jax.random.key(0))
    assert np.mean(np.asarray(early.probabilities["mu"])) > 0.95 and float(early.asymmetry["mu"]) < 1e-6


def test_the_symmetry_test_is_the_two_sample_kolmogorov_smirnov_test():
    rng = np.random.default_rng(0)
    for a, b in ((rng.uniform(size=80), rng.uniform(size=80)), (rng.beta(2, 1, 80), rng.beta(1, 2, 80))):
        ours = _ks_two_sample(a, b)
        theirs = scipy.stats.ks_2samp(a, b, method="asymp").pvalue
        # Stephens' small-sample correction against scipy's asymptotic distribution: 2% apart at 0.4 here; in the
        # far tail (1.3e-8 and 8.2e-9) both reject at any level
        assert abs(ours - theirs) < 0.05 * theirs if theirs > 0.01 else max(ours, theirs) < 1e-7, (ours, theirs)


@pytest.mark.parametrize("n, message", [(1, "n: expected at least 2"), (0, "n: expected an integer >= 1")])
def test_bad_calibrations_are_named(n, message):
    with pytest.raises(ValueError, match=message):
        jaxvi.calibrate(model(), jaxvi.SVI(num_steps=5), simulate, n, key=jax.random.key(0))


def test_cavi_fits_are_calibrated_by_their_factors_draws():
    """The same model with a Gaussian factor on mu, fitted by CAVI: its q is the exact posterior, so every
    probability is the closed form's up to the binomial noise of the 1,000 draws."""
    latent = jaxvi.Global({"mu": jaxvi.Gaussian(1)},
                          log_prior=lambda params, z: jax.scipy.stats.norm.logpdf(z["mu"][0], PRIOR_MEAN, PRIOR_SD))
    conjugate = jaxvi.Model(lambda params, z, x: jax.scipy.stats.norm.logpdf(x, z["mu"][0], SIGMA), latent,
                            lambda k, d: {})
    as_vector = lambda key: jax.tree_util.tree_map(jnp.atleast_1d, simulate(key))  # noqa: E731
    result = jaxvi.calibrate(conjugate, jaxvi.CAVI(max_iter=3), as_vector, 50, key=jax.random.key(0))
    _, data = jax.vmap(simulate)(jax.random.split(jax.random.split(jax.random.key(0), 3)[0], 50))
    data, truth = np.asarray(data, np.float64), np.asarray(result.truth["mu"], np.float64)[:, 0]
    precision = 1 / PRIOR_SD**2 + N / SIGMA**2
    mean = (PRIOR_MEAN / PRIOR_SD**2 + data.sum(axis=1) / SIGMA**2) / precision
    exact = scipy.stats.norm.cdf((truth - mean) * math.sqrt(precision))
    below = np.round(np.asarray(result.probabilities["mu"])[:, 0] * 1000)
    low, high = scipy.stats.binom.ppf(1e-6, 1000, exact), scipy.stats.binom.isf(1e-6, 1000, exact)
    assert np.all((low <= below) & (below <= high))
    assert float(result.asymmetry["mu"][0]) > 0.05
    with pytest.raises(ValueError, match="method: calibrate needs a fit with a global q .* got a EM fit without one"):
        gm = jaxvi.models.gaussian_mixture(2)
        jaxvi.calibrate(gm.model, jaxvi.EM(m_step=gm.m_step, max_iter=2), lambda k: ({}, jax.random.normal(k, (10, 1))),
                        2, key=jax.random.key(0))
