"""SVI against closed-form posteriors and evidences, exact enumeration, and its own invariants."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special
import scipy.stats

import jaxvi
from jaxvi.exact import elbo as exact_elbo

KEY = jax.random.key(0)


def gaussian_kl(q_mean, q_sd, mean, precision):
    """KL(N(q_mean, diag(q_sd^2)) || N(mean, precision^-1)), in closed form."""
    q_mean, q_sd = np.asarray(q_mean, np.float64), np.asarray(q_sd, np.float64)
    diff = q_mean - mean
    return 0.5 * (np.sum(np.diag(precision) * q_sd**2) + diff @ precision @ diff - len(mean)
                  - np.linalg.slogdet(precision)[1] - 2 * np.sum(np.log(q_sd)))


# --- Normal-Normal: a global mean with a conjugate prior --------------------------------------------

SIGMA, PRIOR_MEAN, PRIOR_SD = 2.0, 0.5, 3.0


@pytest.fixture(scope="module")
def normal_data():
    return np.random.default_rng(0).normal(1.5, SIGMA, 50).astype(np.float32)


def normal_model():
    latent = jaxvi.Global({"mu": jaxvi.Real(())},
                          log_prior=lambda params, z: jax.scipy.stats.norm.logpdf(z["mu"], PRIOR_MEAN, PRIOR_SD))
    return jaxvi.Model(lambda params, z, x: jax.scipy.stats.norm.logpdf(x, z["mu"], SIGMA), latent, lambda k, d: {})


def normal_posterior(x):
    precision = 1 / PRIOR_SD**2 + len(x) / SIGMA**2
    mean = (PRIOR_MEAN / PRIOR_SD**2 + np.sum(x, dtype=np.float64) / SIGMA**2) / precision
    log_evidence = scipy.stats.multivariate_normal(np.full(len(x), PRIOR_MEAN),
                                                   SIGMA**2 * np.eye(len(x)) + PRIOR_SD**2).logpdf(x)
    return mean, precision**-0.5, log_evidence


@pytest.mark.parametrize("guide", [jaxvi.MeanField(), jaxvi.FullRank()])
def test_normal_normal_recovers_the_exact_posterior_and_evidence(normal_data, guide):
    mean, sd, log_evidence = normal_posterior(normal_data)
    model = normal_model()
    result = jaxvi.infer(model, jaxvi.SVI(guide=guide, num_steps=1500, num_particles=4, estimator="stl",
                                          optimizer=optax.adam(3e-2)),
                         normal_data, key=KEY, progress=False)
    q = result.posterior()
    np.testing.assert_allclose(q.mean()["mu"], mean, rtol=2e-3)
    np.testing.assert_allclose(q.stddev()["mu"], sd, rtol=2e-3)
    # the family contains the posterior: the ELBO reaches log p(D)
    np.testing.assert_allclose(float(result.objective), log_evidence, rtol=1e-5)
    assert float(result.diagnostics.elbo_stderr) < 1e-3
    assert np.isnan(float(result.diagnostics.log_evidence))  # a Global latent has no exact E-step
    estimate = jaxvi.evidence(model, result.params, normal_data, key=jax.random.key(1), posterior=q)
    assert not estimate.exact
    np.testing.assert_allclose(float(estimate.log_evidence), log_evidence, rtol=1e-5)
    assert float(estimate.khat) < 0.5 and float(result.diagnostics.khat) < 0.5  # q is the posterior
    if isinstance(guide, jaxvi.MeanField):  # q at 0.3 times the posterior's scale: the weights' tail shape is 1 - 0.3^2
        narrow = q._replace(params={**q.params, "scale": jnp.log(jnp.expm1(0.3 * jax.nn.softplus(q.params["scale"])))})
        with pytest.warns(UserWarning, match="k-hat of its weights is above 0.7"):
            unreliable = jaxvi.evidence(model, result.params, normal_data, key=jax.random.key(1), posterior=narrow)
        assert abs(float(unreliable.khat) - (1 - 0.3**2)) < 0.15


def test_minibatches_give_an_unbiased_elbo_and_the_same_posterior(normal_data):
    mean, sd, log_evidence = normal_posterior(normal_data)
    model = normal_model()
    method = jaxvi.SVI(num_steps=4000, batch_size=10, optimizer=optax.adam(optax.exponential_decay(3e-2, 4000, 0.05)))
    result = jaxvi.infer(model, method, normal_data, key=KEY, progress=False)
    q = result.posterior()
    np.testing.assert_allclose(q.mean()["mu"], mean, atol=0.1 * sd)
    np.testing.assert_allclose(q.stddev()["mu"], sd, rtol=0.1)
    np.testing.assert_allclose(float(result.objective), log_evidence, atol=0.1)
    # the trace holds the per-step estimates, scaled to all N data: their mean over the last steps is the ELBO
    tail = np.asarray(result.trace)[-1000:]
    assert abs(tail.mean() - log_evidence) < 4.5 * tail.std() / np.sqrt(len(tail)) + 0.1


# --- Beta-Bernoulli through a bijector --------------------------------------------------------------

def test_beta_bernoulli_through_an_interval_bijector():
    a, b = 2.0, 2.0
    x = np.r_[np.ones(60), np.zeros(140)].astype(np.float32)
    latent = jaxvi.Global({"p": jaxvi.Real((), bijector=jaxvi.interval(0.0, 1.0))},
                          log_prior=lambda params, z: jax.scipy.stats.beta.logpdf(z["p"], a, b))
    model = jaxvi.Model(lambda params, z, x: x * jnp.log(z["p"]) + (1 - x) * jnp.log1p(-z["p"]), latent,
                        lambda k, d: {})
    result = jaxvi.infer(model, jaxvi.SVI(num_steps=2000, num_particles=8, estimator="stl",
                                          optimizer=optax.adam(3e-2)), x, key=KEY, progress=False)
    posterior = scipy.stats.beta(a + 60, b + 140)
    log_evidence = scipy.special.betaln(a + 60, b + 140) - scipy.special.betaln(a, b)
    q = result.posterior()
    np.testing.assert_allclose(q.mean(jax.random.key(2), 200_000)["p"], posterior.mean(), rtol=2e-2)
    np.testing.assert_allclose(q.stddev(jax.random.key(2), 200_000)["p"], posterior.std(), rtol=2e-2)
    # the logit-Normal family nearly contains Beta(62, 142): the bound is tight to a few thousandths
    elbo, se = float(result.objective), float(result.diagnostics.elbo_stderr)
    assert elbo <= log_evidence + 4.5 * se
    assert log_evidence - elbo < 5e-3
    estimate = jaxvi.evidence(model, result.params, x, key=jax.random.key(3), posterior=q, num_samples=4000)
    np.testing.assert_allclose(float(estimate.log_evidence), log_evidence, atol=4.5 * float(estimate.stderr) + 1e-4)


# --- Bayesian linear regression: full-rank reaches the posterior, mean-field its closed-form optimum ----

@pytest.fixture(scope="module")
def regression():
    """Correlated features (so a correlated posterior), the model, and the exact posterior and evidence."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 3))
    X[:, 2] = X[:, 1] + 0.3 * rng.normal(size=80)
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.7 * rng.normal(size=80)
    alpha, noise = 0.5, 0.7
    latent = jaxvi.Global({"w": jaxvi.Real((3,))},
                          log_prior=lambda params, z: jnp.sum(jax.scipy.stats.norm.logpdf(z["w"], 0.0, alpha**-0.5)))
    model = jaxvi.Model(lambda params, z, d: jax.scipy.stats.norm.logpdf(d["y"], d["x"] @ z["w"], noise), latent,
                        lambda k, d: {})
    precision = alpha * np.eye(3) + X.T @ X / noise**2
    covariance = np.linalg.inv(precision)
    mean = covariance @ X.T @ y / noise**2
    log_evidence = scipy.stats.multivariate_normal(np.zeros(80), noise**2 * np.eye(80) + X @ X.T / alpha).logpdf(y)
    data = {"x": X.astype(np.float32), "y": y.astype(np.float32)}
    return model, data, mean, covariance, precision, log_evidence


def test_bayesian_linear_regression_full_rank_equals_the_analytic_posterior(regression):
    model, data, mean, covariance, _, log_evidence = regression
    result = jaxvi.infer(model, jaxvi.SVI(guide=jaxvi.FullRank(), num_steps=3000, num_particles=4, estimator="stl",
                                          optimizer=optax.adam(2e-2)), data, key=KEY, progress=False)
    q = result.posterior()
    np.testing.assert_allclose(q.mean()["w"], mean, rtol=2e-3, atol=1e-3)
    raw = np.asarray(result.guide_params["scale_tril"], np.float64)
    tril = np.tril(raw, -1) + np.diag(np.log1p(np.exp(np.diagonal(raw))))
    np.testing.assert_allclose(tril @ tril.T, covariance, rtol=2e-2, atol=1e-4)
    np.testing.assert_allclose(float(result.objective), log_evidence, rtol=1e-5)


def test_mean_field_on_a_correlated_posterior_pays_its_closed_form_kl(regression):
    """The best factorised q of N(m, S) has means m and variances 1 / Lambda_ii (Lambda = S^-1), and its
    KL from the posterior is (sum_i log Lambda_ii - log det Lambda) / 2: the ELBO sits that far below log p(D)."""
    model, data, mean, _, precision, log_evidence = regression
    method = jaxvi.SVI(num_steps=6000, num_particles=4, estimator="stl", num_eval_particles=20_000,
                       optimizer=optax.adam(optax.exponential_decay(3e-2, 6000, 0.01)))
    result = jaxvi.infer(model, method, data, key=KEY, progress=False)
    q = result.posterior()
    best_kl = 0.5 * (np.sum(np.log(np.diag(precision))) - np.linalg.slogdet(precision)[1])
    assert best_kl > 0.3
    fitted_kl = gaussian_kl(q.mean()["w"], q.stddev()["w"], mean, precision)
    assert best_kl <= fitted_kl < 1.02 * best_kl
    np.testing.assert_allclose(q.stddev()["w"], np.diag(precision) ** -0.5, rtol=1e-2)
    # the reported ELBO is log p(D) - KL(q || p) of the fitted q, to its Monte-Carlo error
    se = float(result.diagnostics.elbo_stderr)
    assert abs(float(result.objective) - (log_evidence - fitted_kl)) < 4.5 * se + 1e-3


# --- a Gaussian mixture: local discrete latents, the gap to the exact evidence ----------------------

@pytest.fixture(scope="module")
def mixture():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(-2.0, 1.0, (40, 1)), rng.normal(2.5, 0.8, (30, 1))]).astype(np.float32)
    return jaxvi.models.gaussian_mixture(2, covariance="diag"), x


def test_categorical_guide_bound_is_below_the_exact_evidence_and_the_gap_is_the_kl(mixture):
    gm, x = mixture
    result = jaxvi.infer(gm.model, jaxvi.SVI(discrete="guide", num_particles=8, num_steps=600,
                                             optimizer=optax.adam(5e-2), num_eval_particles=400),
                         x, key=KEY, progress=False)
    d = result.diagnostics
    exact = jaxvi.evidence(gm.model, result.params, x)
    assert exact.exact
    log_evidence = float(exact.log_evidence)  # log p(D | fitted theta), by enumeration
    np.testing.assert_allclose(float(d.log_evidence), log_evidence, rtol=1e-6)
    np.testing.assert_allclose(float(d.gap), float(d.log_evidence) - float(result.objective), rtol=1e-6)
    # the fitted q's exact ELBO (by enumeration) and KL: the bound holds and the reported gap is the KL
    log_q = jax.nn.log_softmax(result.guide_params["logits"], axis=-1)
    true_elbo = float(jnp.sum(exact_elbo(gm.model.log_joint, gm.model.latent, result.params, jnp.asarray(x), log_q)))
    assert true_elbo <= log_evidence + 1e-4
    np.testing.assert_allclose(float(result.objective), true_elbo, atol=4.5 * float(d.elbo_stderr) + 1e-3)
    assert float(d.gap) > -4.5 * float(d.elbo_stderr)
    # ... and it holds at other parameters too: the initial ones
    init = gm.model.init(KEY, jnp.asarray(x))
    uniform = jnp.full((len(x), 2), -math.log(2.0))
    assert float(jnp.sum(exact_elbo(gm.model.log_joint, gm.model.latent, init, jnp.asarray(x), uniform))) \
        <= float(jaxvi.evidence(gm.model, init, x).log_evidence)


def test_enumerated_discrete_latents_make_the_elbo_the_exact_evidence(mixture):
    gm, x = mixture
    svi = jaxvi.infer(gm.model, jaxvi.SVI(num_steps=1500, optimizer=optax.adam(5e-2)), x, key=KEY, progress=False)
    assert float(svi.diagnostics.gap) == 0.0
    em = jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step, max_iter=500, tol=0.0), x, key=KEY, progress=False)
    # gradient ascent on log p(D) reaches EM's maximum
    np.testing.assert_allclose(float(svi.objective), float(em.objective), rtol=1e-4)


# --- local continuous latents: one q per datum, against exact Gaussian posteriors ------------------

@pytest.fixture(scope="module")
def factor_data():
    rng = np.random.default_rng(3)
    W = rng.normal(size=(4, 2))
    x = (rng.normal(size=(60, 2)) @ W.T + 0.5 * rng.normal(size=(60, 4)) + 1.0).astype(np.float32)
    return x, W


def test_local_guides_on_minibatches_against_exact_gaussian_posteriors(factor_data):
    """A fixed factor-analysis model (no theta): every datum's posterior is N(mu_i, Sigma), so a full-rank q_i
    closes the gap and a mean-field q_i pays KL = (sum_j log Lambda_jj - log det Lambda) / 2 per datum."""
    x, W = factor_data
    params = jaxvi.models.FactorAnalysisParams(jnp.ones(4), jnp.asarray(W, jnp.float32), jnp.full(4, math.log(0.25)))
    fa = jaxvi.models.factor_analysis(2)
    model = jaxvi.Model(lambda p, z, x: fa.model.log_joint(params, z, x), jaxvi.Gaussian(2), lambda k, d: {})
    exact = jaxvi.EM().e_step(fa.model, params, jnp.asarray(x))
    log_evidence = float(jnp.sum(exact.log_evidence))
    precision = np.linalg.inv(np.asarray(exact.covariance[0], np.float64))
    schedule = optax.exponential_decay(5e-2, 2000, 0.01)  # per-datum states count their own ~2000 updates
    gaps, khats = {}, {}
    for name, guide in (("full-rank", jaxvi.FullRank()), ("mean-field", jaxvi.MeanField())):
        method = jaxvi.SVI(guide=guide, num_steps=6000, batch_size=20, num_particles=2, estimator="stl",
                           optimizer=optax.adam(schedule), num_eval_particles=2000)
        result = jaxvi.infer(model, method, x, key=KEY, progress=False)
        d = result.diagnostics
        np.testing.assert_allclose(float(d.log_evidence), log_evidence, rtol=1e-6)
        np.testing.assert_allclose(float(d.gap), float(d.log_evidence) - float(result.objective), rtol=1e-6)
        q = result.posterior()
        gaps[name] = float(d.gap), float(d.elbo_stderr)
        khats[name] = np.asarray(d.khat)  # PSIS k-hat per datum, from the 2,000 evaluation particles
        assert khats[name].shape == (len(x),)
        if name == "full-rank":
            np.testing.assert_allclose(q.mean(), exact.mean, atol=1e-3)
            assert abs(gaps[name][0]) < 0.01
            assert np.all(khats[name] < 0.5)  # q_i is the posterior
        else:
            assert np.median(khats[name]) > np.median(khats["full-rank"])  # too narrow along the correlation
            best = 0.5 * (np.sum(np.log(np.diag(precision))) - np.linalg.slogdet(precision)[1])
            fitted = sum(gaussian_kl(m, s, np.asarray(e, np.float64), precision)
                         for m, s, e in zip(q.mean(), q.stddev(), exact.mean))
            assert 60 * best <= fitted < 1.02 * 60 * best
            assert abs(gaps[name][0] - fitted) < 4.5 * gaps[name][1] + 1e-2


def test_factor_analysis_by_svi_learns_theta_to_em_s_maximum(factor_data):
    x, _ = factor_data
    fa = jaxvi.models.factor_analysis(2)
    method = jaxvi.SVI(guide=jaxvi.FullRank(), num_steps=3000, num_particles=2, estimator="stl",
                       optimizer=optax.adam(optax.exponential_decay(3e-2, 3000, 0.03)))
    result = jaxvi.infer(fa.model, method, x, key=KEY, progress=False)
    d = result.diagnostics
    em = jaxvi.infer(fa.model, jaxvi.EM(m_step=fa.m_step, max_iter=500, tol=0.0), x, key=KEY, progress=False)
    assert float(d.log_evidence) <= float(em.objective) + 1e-3            # EM's is the maximum
    np.testing.assert_allclose(float(d.log_evidence), float(em.objective), atol=0.1)
    assert -4.5 * float(d.elbo_stderr) < float(d.gap) < 0.1


# --- the Delta guide is MAP; the flow beats mean-field on a banana ----------------------------------

def test_delta_guide_finds_the_posterior_mode(normal_data):
    mean, _, _ = normal_posterior(normal_data)  # Normal posterior: mode = mean
    result = jaxvi.infer(normal_model(), jaxvi.SVI(guide=jaxvi.Delta(), num_steps=1000, optimizer=optax.adam(5e-2)),
                         normal_data, key=KEY, progress=False)
    np.testing.assert_allclose(result.posterior().mean()["mu"], mean, rtol=1e-4)


def banana_model():
    """z = (a, b): a ~ N(0, 1), b | a ~ N(a^2, 0.3^2); one dummy datum."""
    def log_prior(params, z):
        a, b = z["ab"][0], z["ab"][1]
        return jax.scipy.stats.norm.logpdf(a) + jax.scipy.stats.norm.logpdf(b, a**2, 0.3)

    latent = jaxvi.Global({"ab": jaxvi.Real((2,))}, log_prior)
    return jaxvi.Model(lambda params, z, x: jnp.zeros(()), latent, lambda k, d: {})


def test_a_flow_fits_a_banana_better_than_mean_field():
    model, x = banana_model(), np.zeros((1, 1), np.float32)  # log Z = 0: the ELBO is -KL
    bounds = {}
    for name, guide in (("mean-field", jaxvi.MeanField()), ("flow", jaxvi.Flow(num_layers=4, hidden=(16, 16)))):
        result = jaxvi.infer(model, jaxvi.SVI(guide=guide, num_steps=3000, num_particles=8,
                                              optimizer=optax.adam(5e-3), num_eval_particles=4000),
                             x, key=KEY, progress=False)
        bounds[name] = (float(result.objective), float(result.diagnostics.elbo_stderr))
    for value, se in bounds.values():
        assert value < 4.5 * se  # a bound on log Z = 0
    assert bounds["flow"][0] > bounds["mean-field"][0] + 0.05, bounds


# --- compiled behaviour: vmap over data sets, restarts, no retracing --------------------------------

def test_vmap_over_data_sets_equals_separate_fits():
    model = normal_model()
    datasets = np.random.default_rng(5).normal(1.0, SIGMA, (3, 20)).astype(np.float32)
    method = jaxvi.SVI(num_steps=300, estimator="stl", optimizer=optax.adam(5e-2))
    fit = lambda d, k: jaxvi.infer(model, method, d, key=k, progress=False)
    keys = jax.random.split(KEY, 3)
    batched = jax.jit(jax.vmap(fit))(jnp.asarray(datasets), keys)
    for i in range(3):
        single = fit(jnp.asarray(datasets[i]), keys[i])
        np.testing.assert_allclose(batched.objective[i], single.objective, rtol=1e-5)
        np.testing.assert_allclose(batched.guide_params["loc"][i], single.guide_params["loc"], rtol=1e-5, atol=1e-6)
        mean, _, _ = normal_posterior(datasets[i])
        np.testing.assert_allclose(single.posterior().mean()["mu"], mean, atol=0.1)


def test_restarts_keep_the_best_and_the_progress_bar_changes_nothing(normal_data):
    model = normal_model()
    method = jaxvi.SVI(num_steps=200, n_init=3, optimizer=optax.adam(5e-2))
    quiet = jaxvi.infer(model, method, normal_data, key=KEY, progress=False)
    shown = jaxvi.infer(model, method, normal_data, key=KEY, progress=True)
    np.testing.assert_allclose(shown.objective, quiet.objective, rtol=1e-6)
    objectives = np.asarray(quiet.diagnostics.restart_objectives)
    assert objectives.shape == (3,) and float(quiet.objective) == objectives.max()


def test_same_key_same_result_and_the_log_joint_is_traced_once_per_shape(normal_data):
    traces = []

    def log_lik(params, z, x):
        traces.append(1)
        return jax.scipy.stats.norm.logpdf(x, z["mu"], SIGMA)

    model = jaxvi.Model(log_lik, normal_model().latent, lambda k, d: {})
    method = jaxvi.SVI(num_steps=50)
    a = jaxvi.infer(model, method, normal_data, key=KEY, progress=False)
    first = len(traces)
    b = jaxvi.infer(model, method, normal_data, key=KEY, progress=False)
    assert len(traces) - first <= 2  # the abstract checks may trace; the compiled fit is not traced again
    np.testing.assert_array_equal(a.trace, b.trace)


# --- faults and bad input ---------------------------------------------------------------------------

def test_a_non_finite_log_joint_stops_the_run_and_names_the_step_term_and_datum(normal_data):
    trap = jnp.asarray(normal_data).at[7].set(123.0)

    def log_lik(params, z, x):
        # a NaN for the datum 123.0 once mu has moved past 1.0
        return jnp.where((x == 123.0) & (z["mu"] > 1.0), jnp.nan, jax.scipy.stats.norm.logpdf(x, z["mu"], SIGMA))

    model = jaxvi.Model(log_lik, normal_model().latent, lambda k, d: {})
    method = jaxvi.SVI(guide=jaxvi.Delta(), num_steps=500, optimizer=optax.sgd(1e-3))
    with pytest.raises(FloatingPointError, match=r"SVI stopped at step \d+: the ELBO was not finite: its log_joint "
                                                 r"term for datum 7") as err:
        jaxvi.infer(model, method, trap, key=KEY, progress=False)
    result = err.value.result
    assert np.all(np.isfinite(np.asarray(result.guide_params["loc"])))
    assert 0 < int(result.n_iter) < 500


def _user_steps(model, method, data, key, steps, batch_size=None):
    """The states and step objectives of ``steps`` steps driven by hand with infer's keys and minibatches
    (a single restart: the key splits into (init, run) keys; step t draws ``step_keys(run_key, t)``)."""
    from jaxvi.chunks import minibatch
    from jaxvi.run import step_keys

    n = len(data)
    init_key, run_key = jax.random.split(key)
    step = jax.jit(lambda state, batch, k: method.step(model, k, state, batch, num_data=n))
    states, objectives = [method.init(model, init_key, data)], []
    for t in range(steps):
        step_key, batch_key = step_keys(run_key, jnp.asarray(t, jnp.int32))
        batch = data
        if batch_size is not None:
            index = minibatch(batch_key, n, batch_size)
            batch = jaxvi.Batch(index, data[index])
        state, info = step(states[-1], batch, step_key)
        states.append(state)
        objectives.append(float(info.objective))
    return states, objectives


def test_a_non_finite_final_elbo_is_a_fault_and_the_result_is_the_last_finite_step():
    """-inf outside mu < 0.3: the one-particle step estimates stay finite for 100 steps, the final ELBO's
    100 particles do not (the fit used to return objective=-inf with no fault). err.result is the state
    of the last step, whose estimate was finite. Key 4 draws this case (as keys 0 and 5 do; the other nine of the
    first twelve meet mu >= 0.3 in a step first)."""
    x = np.random.default_rng(0).normal(size=30).astype(np.float32)
    latent = jaxvi.Global({"mu": jaxvi.Real(())}, lambda p, z: jax.scipy.stats.norm.logpdf(z["mu"], 0.0, 1.0))
    model = jaxvi.Model(lambda p, z, x: jnp.where(z["mu"] < 0.3, jax.scipy.stats.norm.logpdf(x, z["mu"], 1.0),
                                                  -jnp.inf), latent, lambda k, d: {})
    method = jaxvi.SVI(num_steps=100, learning_rate=0.05)
    key = jax.random.key(4)
    with pytest.raises(FloatingPointError, match=r"SVI's final evaluation \(on all the data, after 100 steps\) "
                                                 r"failed: the ELBO was not finite: its log_joint term for datum 0"
                       ) as err:
        jaxvi.infer(model, method, x, key=key, progress=False)
    result = err.value.result
    assert int(result.diagnostics.fault.kind) == 6 and int(result.n_iter) == 99
    states, objectives = _user_steps(model, method, jnp.asarray(x), key, 100)
    assert all(np.isfinite(objectives))
    np.testing.assert_allclose(float(result.objective), objectives[99], rtol=1e-6)  # the last step's estimate
    for a, b in zip(jax.tree_util.tree_leaves(result.guide_params), jax.tree_util.tree_leaves(states[99].global_psi)):
        np.testing.assert_allclose(a, b, rtol=1e-6)  # one compiled loop against steps one by one: an ulp apart
    np.testing.assert_array_equal(np.isfinite(np.asarray(result.trace)), True)


def normal_model_weights(spec, guide_params, x, key, num_particles):
    """``(mu, weights)``: the particles ``elbo`` draws for ``normal_model()``'s global mean from ``key`` (the
    estimator's draw from the key itself: nothing local is drawn) and their log importance weights, in float64."""
    u, log_q = spec.estimator.draw(spec.global_guide, guide_params, key, num_particles)
    mu = np.asarray(u["mu"] if isinstance(u, dict) else u, np.float64).reshape(num_particles)
    weights = (scipy.stats.norm.logpdf(mu, PRIOR_MEAN, PRIOR_SD) - np.asarray(log_q, np.float64)
               + scipy.stats.norm.logpdf(x.astype(np.float64)[:, None], mu, SIGMA).sum(axis=0))
    return mu, weights


def test_a_one_particle_elbo_has_no_standard_error():
    """The standard error of a bound estimated from one draw cannot be estimated (no spread): NaN, not 0; from two
    draws it is their sample standard deviation (n - 1 in its denominator) over the root of two, |w1 - w2| / 2."""
    x = np.random.default_rng(4).normal(1.0, SIGMA, 50).astype(np.float32)
    model = normal_model()
    fit = jaxvi.infer(model, jaxvi.SVI(num_steps=2, learning_rate=0.05), x, key=KEY, progress=False)  # q still wide
    q = fit.posterior()
    value, se = jaxvi.vi.elbo.guide_elbo(model, fit.params, x, q, key=jax.random.key(2), num_particles=1)
    assert np.isfinite(float(value)) and np.isnan(float(se))
    spec = jaxvi.SVI().elbo_spec(model)
    bound = jaxvi.vi.elbo.elbo(spec, model, {}, fit.guide_params, None, x, jax.random.key(2), 1.0, 2)
    _, weights = normal_model_weights(spec, fit.guide_params, x, jax.random.key(2), 2)
    resolution = 4 * np.finfo(np.float32).eps * np.max(np.abs(weights))  # the float32 weights' rounding
    assert abs(weights[0] - weights[1]) > 100 * resolution
    np.testing.assert_allclose(float(bound.stderr), abs(weights[0] - weights[1]) / 2, atol=resolution)


@pytest.mark.parametrize("estimator", ["elbo", "analytic", "iwae", "dreg", jaxvi.Renyi(0.5), jaxvi.Renyi(-0.5),
                                       jaxvi.Renyi(1.0)], ids=str)
def test_a_bounds_standard_error_is_the_spread_of_its_estimates_over_keys(estimator):
    """Each estimator's standard error of its 100-particle bound (the ELBO's mean; the delta method's for IWAE's and
    Renyi's log-mean-exp; Renyi(1) is the ELBO) against the truth it estimates: the standard deviation of the bound
    over 4,000 keys, at a q 0.5 posterior sds off and 1.3x as wide (weights with light tails, where the delta method
    holds; measured within 2.5% for all). The ELBO's formula applied to IWAE's weights would be 1.7x their spread
    here; for the other estimators the check also compares the standard error with the delta method (the ELBO's
    formula for Renyi(1)) in float64 on the same particles."""
    x = np.random.default_rng(4).normal(1.0, SIGMA, 50).astype(np.float32)
    model = normal_model()
    mean, sd, _ = normal_posterior(x)
    psi = {"loc": jnp.asarray([mean + 0.5 * sd], jnp.float32),
           "scale": jnp.asarray([np.log(np.expm1(1.3 * sd))], jnp.float32)}
    spec = jaxvi.SVI(estimator=estimator).elbo_spec(model)
    bounds = jax.jit(jax.vmap(lambda key: jaxvi.vi.elbo.elbo(spec, model, {}, psi, None, x, key, 1.0, 100)))(
        jax.random.split(jax.random.key(1), 4000))
    bound, stderr = np.asarray(bounds.bound, np.float64), np.asarray(bounds.stderr, np.float64)
    spread, reported = bound.std(ddof=1), np.sqrt(np.mean(stderr ** 2))
    assert 0.93 < reported / spread < 1.07, (reported, spread)
    if str(estimator) == "iwae":
        _, weights = normal_model_weights(spec, psi, x, jax.random.split(jax.random.key(1), 4000)[0], 100)
        assert weights.std(ddof=1) / 10 > 1.5 * spread  # the ELBO's formula: far off here
    if str(estimator) not in ("elbo", "analytic"):
        scale = 1 - getattr(estimator, "alpha", 0.0)
        key = jax.random.key(2)
        _, weights = normal_model_weights(spec, psi, x, key, 100)
        ratio = np.exp(scale * weights - scipy.special.logsumexp(scale * weights) + np.log(100))
        expected = weights.std(ddof=1) / 10 if scale == 0 else ratio.std(ddof=1) / 10 / abs(scale)
        bound = jax.jit(lambda: jaxvi.vi.elbo.elbo(spec, model, {}, psi, None, x, key, 1.0, 100))()
        np.testing.assert_allclose(float(bound.stderr), expected, rtol=1e-3)


def test_a_many_particle_elbo_sums_the_data_in_chunks_as_all_at_once(monkeypatch):
    """100 particles of a global mean on 610 data, the data in chunks of 40 rows (15 and a remainder of 10:
    ``PARTICLE_CHUNK`` lowered to 4,000 terms) against all at once: the bound and standard error of the float64 sum
    over the same particles, and k-hat's verdict (below 0.5, a good proposal, in both: the log weights are about
    -1,286 with a spread of 0.11, so float32's rounding of the two sums alone moves the tail's fit by about 0.08, and
    k-hat itself is not compared closer); and the first datum whose log-joint is not finite for some particle named
    alike (datum 377's for the particles above 1.5, datum 500's for all)."""
    from jaxvi.vi import elbo as elbo_module

    x = np.random.default_rng(3).normal(1.5, SIGMA, 610).astype(np.float32)
    flag = np.zeros(610, np.float32)
    fit = jaxvi.infer(normal_model(), jaxvi.SVI(num_steps=300, learning_rate=0.05), x, key=KEY, progress=False)

    def log_lik(params, z, datum):
        bad = (datum["flag"] == 2) | ((datum["flag"] == 1) & (z["mu"] > 1.5))
        return jnp.where(bad, jnp.nan, jax.scipy.stats.norm.logpdf(datum["x"], z["mu"], SIGMA))

    model = jaxvi.Model(log_lik, normal_model().latent, lambda k, d: {})
    spec = jaxvi.SVI().elbo_spec(model)

    def evaluate(particle_chunk, flag):
        monkeypatch.setattr(elbo_module, "PARTICLE_CHUNK", particle_chunk)
        bound = jax.jit(lambda psi, rows: elbo_module.elbo(spec, model, {}, psi, None, rows, jax.random.key(5), 1.0,
                                                           100))(fit.guide_params, {"x": x, "flag": flag})
        return jax.tree_util.tree_map(np.asarray, bound)

    assert elbo_module._particle_chunk(spec, {"x": x}, 100) is None  # the default: 61,000 terms, at once
    chunked, whole = evaluate(4000, flag), evaluate(2 ** 30, flag)
    monkeypatch.setattr(elbo_module, "PARTICLE_CHUNK", 4000)
    assert elbo_module._particle_chunk(spec, {"x": x}, 100) == 40
    mu, weights = normal_model_weights(spec, fit.guide_params, x, jax.random.key(5), 100)
    assert np.any(mu > 1.5) and np.any(mu <= 1.5)  # datum 377's log-joint is finite for some particles only
    for bound in chunked, whole:
        np.testing.assert_allclose(bound.bound, weights.mean(), rtol=1e-6)
        np.testing.assert_allclose(bound.stderr, weights.std(ddof=1) / 10, rtol=1e-3)  # their spread: 1e-4 of them
        assert bool(np.all(bound.finite))
    assert float(chunked.khat) < 0.5 and float(whole.khat) < 0.5
    flag[377], flag[500] = 1, 2
    for bound in evaluate(4000, flag), evaluate(2 ** 30, flag):
        assert not bound.finite[0] and int(bound.first_bad_datum) == 377
    flag[377] = 0
    for bound in evaluate(4000, flag), evaluate(2 ** 30, flag):
        assert not bound.finite[0] and int(bound.first_bad_datum) == 500


def test_after_a_minibatch_fault_the_result_is_the_last_finite_state_with_its_per_datum_guides():
    """Per-datum q_i on minibatches of 10 of 50: a NaN log-joint for datum 7 once the shared shift passes 0.3.
    The run keeps the last finite state at the cost of the batch's rows; err.result is that state exactly."""
    x = np.random.default_rng(1).normal(size=50).astype(np.float32)
    x[7] = 123.0

    def log_joint(params, z, x):
        value = jax.scipy.stats.norm.logpdf(x, z + params["shift"], 1.0) + jax.scipy.stats.norm.logpdf(z)
        return jnp.where((x == 123.0) & (params["shift"] > 0.3), jnp.nan, value)

    model = jaxvi.Model(log_joint, jaxvi.Real(()), lambda k, d: {"shift": jnp.array(0.0)})
    method = jaxvi.SVI(num_steps=300, batch_size=10, optimizer=optax.sgd(2e-3))
    with pytest.raises(FloatingPointError, match=r"SVI stopped at step \d+: the ELBO was not finite: its log_joint "
                                                 r"term for datum 7") as err:
        jaxvi.infer(model, method, x, key=KEY, progress=False)
    result, n = err.value.result, int(err.value.result.n_iter)
    assert 0 < n < int(result.diagnostics.fault.iteration) + 1
    states, objectives = _user_steps(model, method, jnp.asarray(x), KEY, n + 1, batch_size=10)
    kept = states[n]
    assert np.isfinite(objectives[n]) and float(kept.params["shift"]) > 0.3  # shifted, datum 7 not yet drawn
    for a, b in zip(jax.tree_util.tree_leaves((result.params, result.guide_params)),
                    jax.tree_util.tree_leaves((kept.params, kept.local_psi))):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert np.isfinite(float(result.objective))


def test_a_non_finite_parameter_is_a_fault_even_where_the_elbo_does_not_use_it(normal_data):
    """A NaN leaf the ELBO never reads used to be returned silently: from init it is bad input; made by an
    update (an optimiser that breaks leaf 'unused' at its 4th update) it stops the run at that iteration."""
    latent = normal_model().latent
    log_lik = lambda params, z, x: jax.scipy.stats.norm.logpdf(x, z["mu"], SIGMA)  # noqa: E731
    bad_init = jaxvi.Model(log_lik, latent, lambda k, d: {"unused": jnp.array(jnp.nan)})
    with pytest.raises(ValueError, match=r"init: expected finite initial parameters, but params leaf \['unused'\] "
                                         r"is not finite"):
        jaxvi.infer(bad_init, jaxvi.SVI(num_steps=5), normal_data, key=KEY, progress=False)
    model = jaxvi.Model(log_lik, latent, lambda k, d: {"unused": jnp.array(1.0)})
    with pytest.raises(ValueError, match=r"init_params\['unused'\]: expected finite values, got nan"):
        jaxvi.infer(model, jaxvi.SVI(num_steps=5), normal_data, key=KEY, progress=False,
                    init_params={"unused": jnp.array(jnp.nan)})

    def break_at(step):
        def update(updates, count, params=None):
            broken = jax.tree_util.tree_map(lambda u: u, updates)
            broken[0]["unused"] = jnp.where(count == step, jnp.nan, updates[0]["unused"])
            return broken, count + 1
        return optax.GradientTransformation(lambda params: jnp.array(0), update)

    method = jaxvi.SVI(num_steps=20, optimizer=optax.chain(optax.adam(1e-2), break_at(3)))
    with pytest.raises(FloatingPointError, match=r"SVI stopped at iteration 3: the update made params leaf "
                                                 r"\['unused'\] non-finite") as err:
        jaxvi.infer(model, method, normal_data, key=KEY, progress=False)
    result = err.value.result
    assert int(result.n_iter) == 3 and float(result.params["unused"]) == 1.0 and np.isfinite(float(result.objective))


@pytest.mark.parametrize("kwargs, message", [
    ({"num_steps": 0}, "num_steps"), ({"batch_size": 0}, "batch_size"), ({"num_particles": 1.5}, "num_particles"),
    ({"estimator": "reinforce"}, "estimator"), ({"discrete": "sample"}, "discrete"), ({"tol": -1.0}, "tol"),
    ({"guide": "normal"}, "guide"), ({"optimizer": "adam"}, "optimizer"),
])
def test_bad_svi_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jaxvi.SVI(**kwargs)


def test_bad_models_and_combinations_are_named_before_compiling(normal_data, mixture):
    model = normal_model()
    with pytest.raises(ValueError, match="batch_size"):
        jaxvi.infer(model, jaxvi.SVI(batch_size=51), normal_data, key=KEY, progress=False)
    with pytest.raises(ValueError, match="closed-form entropy"):
        jaxvi.infer(banana_model(), jaxvi.SVI(guide=jaxvi.Flow(), estimator="analytic"), np.zeros((1, 1)), key=KEY)
    with pytest.raises(ValueError, match="num_particles >= 2"):
        jaxvi.infer(mixture[0].model, jaxvi.SVI(discrete="guide"), mixture[1], key=KEY)
    with pytest.raises(ValueError, match="fit it with jaxvi.SVI"):
        jaxvi.infer(model, jaxvi.EM(), normal_data, key=KEY)
    bad_prior = jaxvi.Global({"mu": jaxvi.Real((2,))}, log_prior=lambda params, z: z["mu"])
    with pytest.raises(ValueError, match=r"Global\(log_prior\)"):
        jaxvi.infer(jaxvi.Model(lambda p, z, x: jnp.sum(z["mu"]) * x, bad_prior, lambda k, d: {}), jaxvi.SVI(),
                    normal_data, key=KEY)
    with pytest.raises(ValueError, match=r"Real\(shape\)"):
        jaxvi.Real((-1,))
    with pytest.raises(ValueError, match=r"Global\(log_prior\)"):
        jaxvi.Global({"mu": jaxvi.Real(())}, log_prior=3.0)
    with pytest.raises(ValueError, match="interval"):
        jaxvi.interval(1.0, 0.0)


# --- the fitted guide's densities, convergence, the other estimators and guides ---------------------

def test_fitted_guide_log_prob_is_the_change_of_variables_density():
    """A mean-field q on log(sigma) is log-normal in sigma; a simplex latent's q integrates to one."""
    x = np.random.default_rng(6).normal(0.0, 1.7, 40).astype(np.float32)
    latent = jaxvi.Global({"sigma": jaxvi.Real((), bijector=jaxvi.positive())},
                          log_prior=lambda params, z: jax.scipy.stats.expon.logpdf(z["sigma"]))
    model = jaxvi.Model(lambda params, z, x: jax.scipy.stats.norm.logpdf(x, 0.0, z["sigma"]), latent, lambda k, d: {})
    result = jaxvi.infer(model, jaxvi.SVI(num_steps=300, optimizer=optax.adam(5e-2)), x, key=KEY, progress=False)
    q = result.posterior()
    loc = float(result.guide_params["loc"][0])
    scale = float(jax.nn.softplus(result.guide_params["scale"][0]))
    sigmas = np.array([1.2, 1.7, 2.3], np.float32)
    np.testing.assert_allclose(jax.vmap(lambda s: q.log_prob({"sigma": s}))(sigmas),
                               scipy.stats.lognorm(scale, scale=np.exp(loc)).logpdf(sigmas), rtol=1e-5)
    draws = q.sample(jax.random.key(4), 5)["sigma"]
    assert draws.shape == (5,) and np.all(np.asarray(draws) > 0)
    opt_state, local_opt_state = result.diagnostics.opt_state
    assert local_opt_state is None and jax.tree_util.tree_leaves(opt_state)


def test_a_posterior_s_draws_compile_once_and_are_the_draws_op_by_op():
    """``Result.posterior().sample`` runs as one program, found again for the next ``posterior()`` of the same fit
    (a new ``FittedGuide`` each call): its draws are the op-by-op draws (float32 rounding), a second call with
    another key compiles nothing. A Categorical q's space holds its enumerated values (arrays, no hash): drawn op by
    op, each draw one of them."""
    from jit_events import compilations

    from jaxvi.vi import guides
    from jaxvi.vi.fitted import FittedGuide

    x = np.random.default_rng(7).normal(1.0, 2.0, 30).astype(np.float32)
    latent = jaxvi.Global({"mu": jaxvi.Real(()), "sigma": jaxvi.Real((), bijector=jaxvi.positive())},
                          log_prior=lambda params, z: jax.scipy.stats.expon.logpdf(z["sigma"]) - 0.5 * z["mu"] ** 2)
    model = jaxvi.Model(lambda params, z, x: jax.scipy.stats.norm.logpdf(x, z["mu"], z["sigma"]), latent,
                        lambda k, d: {})
    result = jaxvi.infer(model, jaxvi.SVI(num_steps=20), x, key=KEY, progress=False)
    with compilations(lambda name: "compiled_draws" in name) as first:
        draws = result.posterior().sample(jax.random.key(1), 6)
    with compilations() as again:
        other = result.posterior().sample(jax.random.key(2), 6)
    assert len(first) == 1 and again == []
    op_by_op = result.posterior()._draws(jax.random.key(1), 6)
    for name in ("mu", "sigma"):
        assert draws[name].shape == other[name].shape == (6,)
        np.testing.assert_allclose(draws[name], op_by_op[name], rtol=1e-6)
    assert not np.allclose(draws["mu"], other["mu"])
    values = jnp.array([-1.0, 0.5, 2.0])
    q = FittedGuide(guides.Categorical(), {"z": values}, {"logits": jnp.log(jnp.array([[0.2, 0.3, 0.5]] * 4))}, False)
    z = np.asarray(q.sample(jax.random.key(3), 50)["z"])
    assert z.shape == (4, 50) and set(np.unique(z)) <= {-1.0, 0.5, 2.0} and len(np.unique(z)) == 3


def test_a_posterior_s_density_takes_its_draws_at_once_in_one_program(random_effects):
    """``log_prob`` of S values as ``sample`` draws them, ``(S, *shape)`` (local q: ``(N, S, *shape)``), gives the
    densities ``(S,)`` (``(N, S)``): each the closed form, mu's Normal plus b_i's Normal (the mean-field q of a
    random-effects model, mu global and b_i per datum, no bijector). One compiled program, none at the next
    ``posterior()``; a value of another shape is refused by name. A Categorical q's S values per datum: their
    log-probabilities."""
    from jit_events import compilations

    from jaxvi.vi import guides
    from jaxvi.vi.fitted import FittedGuide

    model, x = random_effects
    result = jaxvi.infer(model, jaxvi.SVI(num_steps=30, learning_rate=5e-2), x, key=KEY, progress=False)
    q = result.posterior()
    mu, b = q.global_.sample(jax.random.key(1), 7), q.local.sample(jax.random.key(2), 7)
    assert jax.tree_util.tree_leaves(mu)[0].shape == (7,) and jax.tree_util.tree_leaves(b)[0].shape == (30, 7)
    with compilations(lambda name: "compiled_log_prob" in name) as first:
        log_q_mu, log_q_b = q.global_.log_prob(mu), q.local.log_prob(b)
    with compilations() as again:
        next_q = result.posterior()
        again_mu, again_b = next_q.global_.log_prob(mu), next_q.local.log_prob(b)
    assert len(first) == 2 and again == []
    assert log_q_mu.shape == (7,) and log_q_b.shape == (30, 7)
    np.testing.assert_array_equal(again_mu, log_q_mu)
    np.testing.assert_array_equal(again_b, log_q_b)
    for fitted, values, log_q in ((q.global_, mu, log_q_mu), (q.local, b, log_q_b)):
        mean = np.asarray(jax.tree_util.tree_leaves(fitted.mean())[0])
        sd = np.asarray(jax.tree_util.tree_leaves(fitted.stddev())[0])
        value = np.asarray(jax.tree_util.tree_leaves(values)[0])
        closed = scipy.stats.norm.logpdf(value, mean[..., None] if value.ndim == 2 else mean, sd[..., None]
                                         if value.ndim == 2 else sd)
        np.testing.assert_allclose(log_q, closed.reshape(log_q.shape), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(q.local.log_prob(jax.tree_util.tree_map(lambda v: v[:, 3], b)), log_q_b[:, 3],
                               rtol=1e-6)  # one value per datum
    with pytest.raises(ValueError, match=r"z: expected leaves of shapes \[\(30,\)\], or \(N, S, \*shape\) for S "
                                         r"values as sample\(\) draws them, got \[\(7, 30\)\]"):
        q.local.log_prob(jax.tree_util.tree_map(lambda v: v.T, b))
    with pytest.raises(ValueError, match=r"z: expected a value of the latent's structure"):
        q.global_.log_prob({"c": 1.0})
    values, probs = jnp.array([-1.0, 0.5, 2.0]), np.array([0.2, 0.3, 0.5])
    categorical = FittedGuide(guides.Categorical(), {"z": values}, {"logits": jnp.log(jnp.array([probs] * 4))}, False)
    z = categorical.sample(jax.random.key(3), 5)  # a Categorical q (enumerated values): its log-probabilities
    np.testing.assert_allclose(categorical.log_prob(z), np.log(probs)[np.searchsorted(values, z["z"])], rtol=1e-6)


def test_simplex_and_ordered_values_round_trip_through_the_unconstrained_space():
    from jaxvi.vi.space import latent_space, unconstrain
    sp = latent_space({"w": jaxvi.Real((4,), bijector=jaxvi.simplex()), "c": jaxvi.Real((3,), bijector=jaxvi.ordered()),
                       "p": jaxvi.Real((2,), bijector=jaxvi.interval(-1.0, 2.0))})
    u = jnp.array([0.3, -1.2, 0.8, -0.5, 0.1, 0.9, 1.5, -2.0])
    z, _ = sp.constrain(u)
    np.testing.assert_allclose(unconstrain(sp, z), u, rtol=1e-5, atol=1e-6)


def test_convergence_on_the_smoothed_elbo_stops_early(normal_data):
    model = normal_model()
    method = jaxvi.SVI(num_steps=20_000, tol=1e-4, window=200, num_particles=4, estimator="stl",
                       optimizer=optax.adam(3e-2))
    result = jaxvi.infer(model, method, normal_data, key=KEY, progress=False)
    n = int(result.n_iter)
    assert bool(result.converged) and n < 20_000 and n % 200 == 0
    trace = np.asarray(result.trace)
    np.testing.assert_array_equal(trace[n:], float(result.objective))
    _, _, log_evidence = normal_posterior(normal_data)
    np.testing.assert_allclose(float(result.objective), log_evidence, rtol=1e-4)


def test_a_non_finite_gradient_stops_the_run_and_names_the_leaf(normal_data):
    def log_lik(params, z, x):
        # a finite value with a NaN gradient once mu passes 1.0 (the where-of-sqrt trap: inf * 0)
        trap = jnp.where(z["mu"] > 1.0, jnp.sqrt(jnp.maximum(1.0 - z["mu"], 0.0)), 0.0)
        return jax.scipy.stats.norm.logpdf(x, z["mu"], SIGMA) + trap

    model = jaxvi.Model(log_lik, normal_model().latent, lambda k, d: {})
    with pytest.raises(FloatingPointError, match=r"SVI stopped at step \d+: the gradient of \['guide_params'\]"
                                                 r"\['loc'\] was not finite") as err:
        jaxvi.infer(model, jaxvi.SVI(guide=jaxvi.Delta(), num_steps=2000, optimizer=optax.sgd(1e-3)), normal_data,
                    key=KEY, progress=False)
    result = err.value.result  # the parameters at which the gradient went NaN (mu just past 1.0), all finite
    assert 1.0 < float(result.guide_params["loc"][0]) < 1.1 and int(result.n_iter) < 2000


def test_a_minibatch_step_moves_only_the_batch_s_local_parameters(factor_data):
    x, _ = factor_data
    fa = jaxvi.models.factor_analysis(2)
    method = jaxvi.SVI(num_steps=1, batch_size=5)
    x = jnp.asarray(x)
    state = method.init(fa.model, KEY, x)
    index = jnp.array([3, 17, 0, 42, 8])
    step = jax.jit(lambda s, b: method.step(fa.model, jax.random.key(1), s, b, num_data=x.shape[0]))
    new, _ = step(state, jaxvi.Batch(index, x[index]))
    moved = np.any(np.asarray(new.local_psi["loc"]) != np.asarray(state.local_psi["loc"]), axis=1)
    np.testing.assert_array_equal(np.flatnonzero(moved), np.sort(np.asarray(index)))
    counts = np.asarray(jax.tree_util.tree_leaves(new.local_opt_state)[0])  # Adam's per-datum step count
    np.testing.assert_array_equal(counts, moved.astype(counts.dtype))


@pytest.mark.parametrize("guide, estimator, particles", [(jaxvi.LowRank(1), "elbo", 4), (jaxvi.MeanField(), "analytic", 4),
                                                         (jaxvi.FullRank(), "iwae", 8)])
def test_other_guides_and_estimators_reach_the_regression_posterior(regression, guide, estimator, particles):
    """Low-rank (rank 1 of 3) and the analytic-entropy ELBO land near their optimum (the posterior mean); IWAE's
    bound is tighter than the ELBO of the same q and stays below log p(D) (its q is not fitted to the posterior:
    the proposal's gradient signal fades as K grows, Rainforth et al. 2018)."""
    model, data, mean, covariance, precision, log_evidence = regression
    method = jaxvi.SVI(guide=guide, estimator=estimator, num_particles=particles, num_steps=4000,
                       optimizer=optax.adam(optax.exponential_decay(3e-2, 4000, 0.02)), num_eval_particles=2000)
    result = jaxvi.infer(model, method, data, key=KEY, progress=False)
    se = float(result.diagnostics.elbo_stderr)
    assert float(result.objective) < log_evidence + 4.5 * se
    q = result.posterior()
    if estimator != "iwae":
        np.testing.assert_allclose(q.mean()["w"], mean, atol=0.05 * np.sqrt(np.diag(covariance)).max())
    if estimator == "iwae":
        elbo, elbo_se = method.elbo(result, data, key=jax.random.key(5), num_particles=2000)
        assert float(elbo) <= float(result.objective) + 4.5 * (se + float(elbo_se))
    else:
        assert log_evidence - float(result.objective) < 1.2  # mean-field's closed-form optimum pays 1.15


def test_auto_enumerates_small_discrete_latents_and_guides_large_ones():
    small = jaxvi.Model(lambda p, z, x: -(x - z) ** 2, jaxvi.Discrete(4), lambda k, d: {})
    large = jaxvi.Model(lambda p, z, x: -(x - z[0] - z[1]) ** 2, (jaxvi.Discrete(20), jaxvi.Discrete(20)),
                        lambda k, d: {})
    from jaxvi.vi.elbo import Guided, Summed

    assert isinstance(jaxvi.SVI().elbo_spec(small).local, Summed)
    assert isinstance(jaxvi.SVI().elbo_spec(large).local, Guided)      # 400 values > ENUMERATE_MAX: a Categorical q
    assert isinstance(jaxvi.SVI(discrete="enumerate").elbo_spec(large).local, Summed)
    with pytest.raises(ValueError, match="more than 256 latent values"):
        jaxvi.infer(large, jaxvi.SVI(), np.zeros(3, np.float32), key=KEY)
