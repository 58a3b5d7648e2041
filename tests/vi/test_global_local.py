"""Models with Global and local latents together: closed forms, the N/B scaling of minibatches, EM's refusal."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

import jaxvi

KEY = jax.random.key(0)
norm = jax.scipy.stats.norm
SIGMA, TAU, PRIOR_SD = 1.0, 0.8, 10.0


@pytest.fixture(scope="module")
def random_effects():
    """y_ij ~ N(b_i, SIGMA^2), b_i ~ N(mu, TAU^2) (local, Gaussian given mu), mu ~ N(0, PRIOR_SD^2) (global).

    Closed forms: the group means ybar_i | mu ~ N(mu, v), v = TAU^2 + SIGMA^2 / M, so mu's posterior is
    Normal; log p(D) is the log density of all N M observations under their joint Normal."""
    rng = np.random.default_rng(3)
    n, m = 120, 4
    b = 1.5 + TAU * rng.normal(size=n)
    y = (b[:, None] + SIGMA * rng.normal(size=(n, m))).astype(np.float32)
    v = TAU ** 2 + SIGMA ** 2 / m
    precision = 1 / PRIOR_SD ** 2 + n / v
    post_mean, post_sd = y.mean(1).sum() / v / precision, precision ** -0.5
    cov = np.kron(np.eye(n), SIGMA ** 2 * np.eye(m) + TAU ** 2) + PRIOR_SD ** 2
    log_evidence = scipy.stats.multivariate_normal(np.zeros(n * m), cov).logpdf(y.astype(np.float64).ravel())

    def log_joint(params, z, y_i):
        return norm.logpdf(z["b"][0], z["mu"], TAU) + norm.logpdf(y_i, z["b"][0], SIGMA).sum()

    latent = {"mu": jaxvi.Global(jaxvi.Real(()), lambda params, mu: norm.logpdf(mu, 0.0, PRIOR_SD)),
              "b": jaxvi.Gaussian(1)}
    model = jaxvi.Model(log_joint, latent, init=lambda key, data: {})
    return model, y, post_mean, post_sd, log_evidence


def test_random_effects_by_minibatch_svi_reach_the_closed_form(random_effects):
    """Mean-field q(mu) q(b_i) has closed-form optimum: q(mu) = N(posterior mean, 1 / (1/PRIOR_SD^2 + N/TAU^2)),
    narrower than the posterior (it ignores mu's correlation with the b_i); the bound with the local part summed
    out exactly (objective + local gap) is log p(D) - KL(q(mu) || p(mu | D)), a closed form too."""
    model, y, post_mean, post_sd, log_evidence = random_effects
    steps = 4000
    method = jaxvi.SVI(num_steps=steps, batch_size=30, num_eval_particles=2000,
                       optimizer=lambda rate: optax.adam(optax.exponential_decay(rate, steps, 0.02)), learning_rate=0.05)
    result = jaxvi.infer(model, method, y, key=KEY, progress=False)
    q = result.posterior(y)
    assert isinstance(q, jaxvi.GlobalLocal)
    n, m = y.shape
    mean_field_sd = (1 / PRIOR_SD ** 2 + n / TAU ** 2) ** -0.5
    assert abs(float(q.global_.mean()) - post_mean) < 0.1 * post_sd
    assert abs(float(q.global_.stddev()) - mean_field_sd) < 0.05 * mean_field_sd
    kl = np.log(post_sd / mean_field_sd) + mean_field_sd ** 2 / (2 * post_sd ** 2) - 0.5
    bound_local_exact = float(result.objective) + float(result.diagnostics.gap)
    se = float(result.diagnostics.elbo_stderr)
    assert abs(bound_local_exact - (log_evidence - kl)) < 0.05 + 4 * se
    assert float(result.objective) < log_evidence - kl
    # the q_i at the fixed point: b_i's conditional posterior given mu at its mean. Each q_i moves only when
    # datum i is in the batch (a quarter of the steps, at a learning rate still near 0.02): its mean carries
    # stochastic-gradient noise, so the check is on the average error and its spread, in units of q_i's sd
    precision = 1 / TAU ** 2 + m / SIGMA ** 2
    shrink = (1 / TAU ** 2) / precision
    error = np.asarray(q.local.mean()).reshape(-1) - (shrink * post_mean + (1 - shrink) * y.mean(1))
    assert abs(error.mean()) < 0.05 * precision ** -0.5
    assert np.sqrt(np.mean(error ** 2)) < 0.25 * precision ** -0.5


STEPS = 10000  # with the reference's decaying step size: two NumPyro seeds agree to ~0.06 posterior sd


def _decaying(rate):
    return optax.adam(optax.exponential_decay(rate, STEPS, 1e-4 / 0.05))


def test_a_mixture_with_global_means_matches_numpyro_traceenum(optimized_code):
    """Global component means (Normal prior) with the local assignments summed out, by SVI against NumPyro's
    TraceEnum_ELBO with an AutoNormal guide on the means: the same model, data, start, step sizes and particles."""
    import numpyro_reference as ref

    x = ref.mixture_data(0)
    K, start = 3, jnp.asarray(ref.MIXTURE_INIT_LOC, jnp.float32)
    theirs = ref.mixture_reference(x, K=K, num_steps=STEPS, lr_final=1e-4)

    def log_joint(params, z, x):  # the guide's u = mu - start starts at 0: mu starts at NumPyro's init_loc
        return norm.logpdf(x, z["shift"][z["k"]] + start[z["k"]], 1.0).sum() - jnp.log(K)

    latent = {"shift": jaxvi.Global(jaxvi.Real((K, 2)), lambda p, u: norm.logpdf(u + start, 0.0, 10.0).sum()),
              "k": jaxvi.Discrete(K)}
    model = jaxvi.Model(log_joint, latent, init=lambda key, data: {})
    method = jaxvi.SVI(num_steps=STEPS, num_particles=4, num_eval_particles=4000, optimizer=_decaying,
                       learning_rate=0.05)
    result = jaxvi.infer(model, method, x, key=KEY, progress=False)
    q = result.posterior(x).global_
    means, sds = np.asarray(q.mean()) + start, np.asarray(q.stddev())
    np.testing.assert_array_less(np.abs(means - theirs["mu_mean"]), 0.25 * np.asarray(theirs["mu_sd"]))
    np.testing.assert_allclose(sds, theirs["mu_sd"], rtol=0.1)
    se = float(result.diagnostics.elbo_stderr) + theirs["elbo_stderr"]
    assert abs(float(result.objective) - theirs["elbo"]) < 4 * se + 0.01


def test_random_effects_on_minibatches_match_numpyro_subsampling():
    """Global (mu, log tau), one local effect per datum with its own q_i, minibatches of 20 of 200 scaled by
    N/B, against NumPyro's subsampled plate with a per-datum local guide."""
    import numpyro_reference as ref

    y = ref.random_effects_data(0)
    theirs = ref.random_effects_reference(y, num_steps=STEPS, batch_size=20, lr_final=1e-4)

    def log_joint(params, z, y_i):
        return norm.logpdf(z["b"], z["hyper"]["mu"], jnp.exp(z["hyper"]["log_tau"])) + norm.logpdf(y_i, z["b"]).sum()

    hyper = jaxvi.Global({"mu": jaxvi.Real(()), "log_tau": jaxvi.Real(())},
                         lambda p, h: norm.logpdf(h["mu"], 0.0, 10.0) + norm.logpdf(h["log_tau"]))
    model = jaxvi.Model(log_joint, {"hyper": hyper, "b": jaxvi.Real(())}, init=lambda key, data: {})
    own_steps = STEPS * 20 // y.shape[0]  # each q_i moves only when its datum is in the batch
    method = jaxvi.SVI(num_steps=STEPS, batch_size=20, num_particles=4, num_eval_particles=4000,
                       optimizer=_decaying, learning_rate=0.05,
                       local_optimizer=lambda rate: optax.adam(optax.exponential_decay(rate, own_steps, 1e-4 / 0.05)))
    result = jaxvi.infer(model, method, y, key=KEY, progress=False)
    q = result.posterior(y)
    mean, sd = q.global_.mean(), q.global_.stddev()
    for name in ("mu", "log_tau"):
        assert abs(float(mean[name]) - theirs[f"{name}_mean"]) < 0.25 * theirs[f"{name}_sd"], name
        assert abs(float(sd[name]) / theirs[f"{name}_sd"] - 1) < 0.15, name
    b_error = np.asarray(q.local.mean()["b"] if isinstance(q.local.mean(), dict) else q.local.mean()) - theirs["b_mean"]
    assert np.sqrt(np.mean(b_error ** 2)) < 0.25 * np.mean(theirs["b_sd"])
    se = float(result.diagnostics.elbo_stderr) + theirs["elbo_stderr"]
    assert abs(float(result.objective) - theirs["elbo"]) < 4 * se + 0.1


def test_amortized_with_a_global_location_recovers_it():
    """x_i = z_i + mu + 0.5 e_i with z_i ~ N(0, 1) local (encoded) and mu global (a Normal(0, 10^2) prior): the
    data are N(mu, 1.25), mu's posterior mean is mean(x) (to 1e-4 here) with sd sqrt(1.25 / N) = 0.025, and a
    mean-field q(mu) q(z_i | x_i) keeps that mean (Gaussian model); the encoder's Normal family holds q(z | x).
    q(mu)'s mean is within 0.2 posterior sds of it: 40 epochs at a constant step size, then 40 with the step decaying
    to 1% (over six keys 0.03-0.10 sds off; 20 epochs at the constant step alone ended 0.08-1.1 sds off, the last
    iterate moved by the minibatches' noise, and a step decaying from the start stopped 6-20 sds short)."""
    rng = np.random.default_rng(1)
    x = (1.0 + rng.normal(size=(2000, 1)) + 0.5 * rng.normal(size=(2000, 1))).astype(np.float32)

    def log_joint(params, z, x):
        return norm.logpdf(z["z"][0], 0.0, 1.0) + norm.logpdf(x[0], z["z"][0] + z["mu"], 0.5)

    latent = {"z": jaxvi.Real((1,)), "mu": jaxvi.Global(jaxvi.Real(()), lambda p, m: norm.logpdf(m, 0.0, 10.0))}
    model = jaxvi.Model(log_joint, latent, init=lambda key, data: {})
    steps = optax.join_schedules([optax.constant_schedule(1e-2), optax.exponential_decay(1e-2, 800, 0.01)], [800])
    method = jaxvi.Amortized(encoder=jaxvi.nn.mlp((16,)), num_epochs=80, batch_size=100, validation=0.0,
                             optimizer=optax.adam(steps))
    result = jaxvi.infer(model, method, x, key=KEY, progress=False)
    q = result.posterior(x)
    assert isinstance(q, jaxvi.GlobalLocal) and np.asarray(q.local.mean()).shape == (2000, 1)
    assert abs(float(q.global_.mean()) - float(x.mean())) < 0.2 * np.sqrt(1.25 / 2000)


def test_em_refuses_global_latents_and_points_to_vi(random_effects):
    model, y, *_ = random_effects
    with pytest.raises(ValueError, match="fit it with jaxvi.SVI"):
        jaxvi.infer(model, jaxvi.EM(), y, key=KEY)
    with pytest.raises(ValueError, match="Global latents only is fitted with jaxvi.SVI"):
        only_global = jaxvi.Model(lambda p, z, x: norm.logpdf(x, z).sum(),
                                  jaxvi.Global(jaxvi.Real(()), lambda p, z: norm.logpdf(z)), lambda k, d: {})
        jaxvi.infer(only_global, jaxvi.Amortized(num_steps=1), y, key=KEY)
