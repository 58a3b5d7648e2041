"""Eight schools (Rubin 1981), non-centred, mean-field: jaxvi's SVI against a long NumPyro SVI run with AutoNormal."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import numpyro
import numpyro.distributions as dist
from numpyro.infer import SVI as NumPyroSVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

import jaxvi

EFFECTS = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
STDERRS = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
STEPS = 20_000


def numpyro_model(sigma, y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", len(sigma)):
        theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        numpyro.sample("obs", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)


def jaxvi_model():
    def log_prior(params, z):
        half_cauchy = jnp.log(2.0) + jax.scipy.stats.cauchy.logpdf(z["tau"], 0.0, 5.0)
        return (jax.scipy.stats.norm.logpdf(z["mu"], 0.0, 5.0) + half_cauchy
                + jnp.sum(jax.scipy.stats.norm.logpdf(z["theta_tilde"])))

    def log_lik(params, z, school):
        theta = z["mu"] + z["tau"] * z["theta_tilde"][school["index"]]
        return jax.scipy.stats.norm.logpdf(school["y"], theta, school["sigma"])

    latent = jaxvi.Global({"mu": jaxvi.Real(()), "tau": jaxvi.Real((), bijector=jaxvi.positive()),
                           "theta_tilde": jaxvi.Real((8,))}, log_prior)
    return jaxvi.Model(log_lik, latent, lambda key, data: {})


def schedule():
    return optax.exponential_decay(1e-2, STEPS, 0.01)


@pytest.fixture(scope="module")
def numpyro_fit():
    guide = AutoNormal(numpyro_model)
    svi = NumPyroSVI(numpyro_model, guide, optax.adam(schedule()), Trace_ELBO(num_particles=4))
    run = svi.run(jax.random.PRNGKey(1), STEPS, STDERRS, EFFECTS, progress_bar=False)
    draws = guide.sample_posterior(jax.random.PRNGKey(2), run.params, sample_shape=(100_000,))
    return {name: np.asarray(draws[name]) for name in ("mu", "tau", "theta_tilde")}


def test_mean_field_posterior_means_match_numpyro_autonormal(numpyro_fit):
    data = {"y": EFFECTS.astype(np.float32), "sigma": STDERRS.astype(np.float32), "index": np.arange(8)}
    method = jaxvi.SVI(num_steps=STEPS, num_particles=4, optimizer=optax.adam(schedule()))
    result = jaxvi.infer(jaxvi_model(), method, data, key=jax.random.key(0), progress=False)
    draws = result.posterior().sample(jax.random.key(3), 100_000)
    for name in ("mu", "tau", "theta_tilde"):
        ours, theirs = np.asarray(draws[name]), numpyro_fit[name]
        sd = theirs.std(axis=0)
        np.testing.assert_array_less(np.abs(ours.mean(axis=0) - theirs.mean(axis=0)), 0.1 * sd, err_msg=name)
        np.testing.assert_allclose(ours.std(axis=0), sd, rtol=0.1, err_msg=name)
