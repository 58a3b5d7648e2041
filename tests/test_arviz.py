"""``Result.to_arviz``: InferenceData that ArviZ's summary and PSIS-LOO read, against closed forms."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats as scipy_stats
from scipy.special import logsumexp

import jaxvi

az = pytest.importorskip("arviz")  # in the test extra: present in CI

KEY = jax.random.key(0)
SIGMA, PRIOR_MEAN, PRIOR_SD = 2.0, 0.5, 3.0


def groups(idata) -> set:
    """The groups' names: an InferenceData's ``groups()`` (ArviZ before 1.0), a DataTree's children (ArviZ 1)."""
    return set(idata.groups()) if callable(idata.groups) else set(idata.children)


def elpd_loo(loo) -> float:
    """PSIS-LOO's estimate: ``elpd_loo`` before ArviZ 1.0, ``elpd`` from it."""
    return float(loo.elpd_loo if hasattr(loo, "elpd_loo") else loo.elpd)


@pytest.fixture(scope="module")
def normal_fit():
    """A Normal mean with a conjugate prior, fitted by SVI (the family holds the exact posterior)."""
    x = np.random.default_rng(0).normal(1.5, SIGMA, 50).astype(np.float32)
    latent = jaxvi.Global({"mu": jaxvi.Real(())},
                          log_prior=lambda params, z: jax.scipy.stats.norm.logpdf(z["mu"], PRIOR_MEAN, PRIOR_SD))
    model = jaxvi.Model(lambda params, z, x: jax.scipy.stats.norm.logpdf(x, z["mu"], SIGMA), latent, lambda k, d: {})
    method = jaxvi.SVI(num_steps=1500, num_particles=4, estimator="stl", optimizer=optax.adam(3e-2))
    return x, jaxvi.infer(model, method, x, key=KEY, progress=False)


def conjugate_posterior(x):
    precision = 1 / PRIOR_SD**2 + len(x) / SIGMA**2
    return (PRIOR_MEAN / PRIOR_SD**2 + np.sum(x, dtype=np.float64) / SIGMA**2) / precision, precision**-0.5


def test_svi_fit_summary_and_psis_loo_match_the_closed_forms(normal_fit):
    x, result = normal_fit
    idata = result.to_arviz(x, key=jax.random.key(1))
    assert groups(idata) >= {"posterior", "log_likelihood", "observed_data"}
    assert idata.posterior["mu"].shape == (4, 1000)
    assert idata.attrs["objective_is"] == "ELBO" and idata.attrs["objective"] == pytest.approx(float(result.objective))
    summary = az.summary(idata, var_names=["mu"], kind="all")
    mean, sd = conjugate_posterior(x)
    assert abs(summary.loc["mu", "mean"] - mean) < 4.5 * summary.loc["mu", "mcse_mean"] + 2e-3 * sd  # + q's own error
    assert abs(summary.loc["mu", "sd"] / sd - 1) < 0.05
    assert abs(summary.loc["mu", "r_hat"] - 1) < 0.01  # independent draws split into chains
    # exact leave-one-out predictive density: x_i ~ N(m_-i, SIGMA^2 + s_-i^2) under the posterior without x_i
    x64, exact_loo = x.astype(np.float64), 0.0
    for i in range(len(x)):
        m, s = conjugate_posterior(np.delete(x64, i))
        exact_loo += -0.5 * math.log(2 * math.pi * (SIGMA**2 + s**2)) - (x64[i] - m) ** 2 / (2 * (SIGMA**2 + s**2))
    loo = az.loo(idata, pointwise=True)
    assert abs(elpd_loo(loo) - exact_loo) < 0.1, (elpd_loo(loo), exact_loo)  # 0.02 here: Monte Carlo and q's error
    assert np.all(np.asarray(loo.pareto_k) < 0.7)


@pytest.mark.parametrize("online", [False, True])
def test_em_fit_draws_the_exact_posterior_and_its_loo_is_the_log_likelihood(online):
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(-1.0, 1.0, (40, 1)), rng.normal(1.5, 0.8, (30, 1))]).astype(np.float32)
    gm = jaxvi.models.gaussian_mixture(2, covariance="diag")
    method = jaxvi.OnlineEM(gm.statistics, batch_size=20, num_steps=100) if online else jaxvi.EM(m_step=gm.m_step)
    result = jaxvi.infer(gm.model, method, x, key=KEY, progress=False)
    idata = result.to_arviz(x, key=jax.random.key(1), num_draws=2000)
    z = np.asarray(idata.posterior["z"])  # (chains, draws, datum)
    assert z.shape == (4, 2000, 70) and idata.posterior["z"].dims[2] == "datum"
    responsibilities = np.asarray(result.posterior(x).probs)[:, 1]
    frequency = (z == 1).mean(axis=(0, 1))
    assert np.all(np.abs(frequency - responsibilities) < 4.5 * np.sqrt(responsibilities * (1 - responsibilities) / 8000)
                  + 1e-6)
    az.summary(idata, var_names=["z"])  # reads
    # θ is a point: every draw has the datum's exact log p(x_i | θ̂), and PSIS-LOO returns their sum
    np.testing.assert_allclose(np.asarray(idata.log_likelihood["x"]).sum(axis=-1), float(result.objective), rtol=1e-6)
    if int(az.__version__.split(".")[0]) < 1:  # ArviZ 1's PSIS refuses log-weights all equal, which a point θ gives
        np.testing.assert_allclose(elpd_loo(az.loo(idata)), float(result.objective), rtol=1e-6)


def test_local_q_log_likelihood_estimates_the_evidence_and_bad_calls_are_named():
    def log_joint(params, z, x):  # z_i ~ N(θ, 1), x_i ~ N(z_i, 1): p(x_i | θ) = N(θ, 2)
        return jax.scipy.stats.norm.logpdf(z, params["theta"], 1.0) + jax.scipy.stats.norm.logpdf(x, z, 1.0)
    model = jaxvi.Model(log_joint, jaxvi.Real(()), lambda key, data: {"theta": jnp.zeros((), data.dtype)})
    x = np.random.default_rng(4).normal(1.0, math.sqrt(2), 20).astype(np.float32)
    result = jaxvi.infer(model, jaxvi.SVI(num_steps=3000, num_particles=4, estimator="stl",
                                          optimizer=optax.adam(optax.exponential_decay(5e-2, 3000, 0.02))),
                         x, key=KEY, progress=False)
    idata = result.to_arviz(x, key=jax.random.key(1), num_draws=500)
    assert idata.posterior["z"].shape == (4, 500, 20)
    log_lik = np.asarray(idata.log_likelihood["x"])
    theta = float(result.params["theta"])
    exact = -0.5 * np.log(2 * np.pi * 2.0) - (x - theta) ** 2 / 4.0
    np.testing.assert_allclose(log_lik[0, 0], exact, atol=2e-3)  # q_i is the posterior: the weights are flat
    assert np.all(log_lik == log_lik[:1, :1])  # the same estimate for every draw
    with pytest.raises(ValueError, match="num_draws: expected an integer >= 1, got 0"):
        result.to_arviz(x, key=KEY, num_draws=0)
    class Custom:  # a method of the user's own: nothing to draw from
        reports = "ELBO"

    with pytest.raises(ValueError, match=r"result: to_arviz takes fits of \('EM', 'OnlineEM', 'SVI', 'Amortized', "
                                         r"'CAVI'\), got a Custom fit"):
        dataclasses.replace(result, method=Custom()).to_arviz(x, key=KEY)


def test_posterior_predictive_replicates_have_the_closed_form_moments(normal_fit):
    x, result = normal_fit
    draws = 2000

    def sample(key, params, z, x):
        return z["mu"] + SIGMA * jax.random.normal(key, jnp.shape(x), jnp.result_type(x))

    out = jaxvi.predictive(result, x, key=jax.random.key(2), num_draws=draws, sample=sample)
    mu = np.asarray(out.global_draws["mu"], np.float64)
    assert out.local_draws is None and out.replicates.shape == (draws, len(x))
    expected = -0.5 * np.log(2 * np.pi * SIGMA**2) - (x[None, :] - mu[:, None]) ** 2 / (2 * SIGMA**2)
    np.testing.assert_allclose(np.asarray(out.log_likelihood), expected, rtol=1e-5, atol=1e-5)
    mean, sd = conjugate_posterior(x)  # the posterior predictive of every datum: N(mean, SIGMA^2 + sd^2)
    replicates = np.asarray(out.replicates, np.float64)
    assert abs(replicates.mean() - mean) < 4.5 * math.sqrt(sd**2 / draws + SIGMA**2 / replicates.size)
    assert abs(replicates.var() / (SIGMA**2 + sd**2) - 1) < 0.03
    with pytest.raises(ValueError, match=r"sample: expected a replicate shaped like one datum, \(\), got \(2,\)"):
        jaxvi.predictive(result, x, key=KEY, sample=lambda k, p, z, x: jnp.zeros(2))
    with pytest.raises(ValueError, match=r"result: expected one fit, got a batch of \(2,\)"):  # as to_arviz
        jaxvi.predictive(dataclasses.replace(result, objective=jnp.zeros(2)), x, key=KEY)


def test_an_amortized_fit_exports_its_encoder_draws_and_an_evidence_estimate_below_the_exact_one():
    rng = np.random.default_rng(0)
    loadings = rng.normal(size=(5, 2))
    x = (rng.normal(size=(100, 2)) @ loadings.T + 0.3 * rng.normal(size=(100, 5)) + 0.5).astype(np.float32)
    pp = jaxvi.models.ppca(2)
    result = jaxvi.infer(pp.model, jaxvi.Amortized(encoder=jaxvi.nn.mlp(()), guide=jaxvi.FullRank(), num_steps=300,
                                                   batch_size=50, validation=0.0, learning_rate=1e-2),
                         x, key=KEY, progress=False)
    idata = result.to_arviz(x, key=jax.random.key(1), num_draws=500)
    assert idata.posterior["z"].shape == (4, 500, 100, 2) and idata.posterior["z"].dims[2] == "datum"
    log_lik = np.asarray(idata.log_likelihood["x"])
    assert np.all(log_lik == log_lik[:1, :1])  # one importance-sampled log p(x_i) per datum, from all 2,000 draws
    exact = float(jaxvi.evidence(pp.model, result.params, x).log_evidence)  # PPCA's Gaussian integral
    # an IWAE-2000 estimate: below log p(D) in expectation (3.5 nats here, after 300 steps of the encoder)
    assert exact - 10 < log_lik[0, 0].sum() < exact, (log_lik[0, 0].sum(), exact)


def test_global_and_local_draws_are_named_by_the_model_s_latent(random_effects):
    """A random-effects model, mu global and b_i per datum: the draws keep the latent's names, b on the data."""
    norm = jax.scipy.stats.norm
    model, x = random_effects
    result = jaxvi.infer(model, jaxvi.SVI(num_steps=100, learning_rate=5e-2), x, key=KEY, progress=False)
    idata = result.to_arviz(x, key=jax.random.key(1), num_draws=50)
    assert set(idata.posterior.data_vars) == {"mu", "b"}
    assert idata.posterior["mu"].dims == ("chain", "draw") and idata.posterior["b"].dims == ("chain", "draw", "datum")
    # one draw of (mu, b_i) per entry: the log-likelihood is that draw's importance weight (module docstring)
    mu, b = np.asarray(idata.posterior["mu"]), np.asarray(idata.posterior["b"])
    q = result.posterior()
    log_q = np.asarray(jax.vmap(jax.vmap(lambda b: q.local.log_prob(b)))(jnp.asarray(b)))
    weights = norm.logpdf(b, mu[..., None], 1.0) + norm.logpdf(x, b, 0.5) - log_q
    np.testing.assert_allclose(np.asarray(idata.log_likelihood["x"]), weights, rtol=1e-5, atol=1e-5)


def test_cavi_bayesian_mixture_draws_its_factors_and_sums_the_assignment_out_at_each_draw():
    """CAVI's q is a product: global draws from the Dirichlet and Normal-Wishart factors, assignments from q_i;
    the log-likelihood of a draw is log sum_k p(x_i, k | weights, components), enumerated here by hand."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2.0, 1.0, (40, 2)), rng.normal(2.0, 0.7, (30, 2))]).astype(np.float32)
    model = jaxvi.models.bayesian_gaussian_mixture(x, 3)
    result = jaxvi.infer(model, jaxvi.CAVI(max_iter=50), x, key=KEY, progress=False)
    draws = 4000
    out = jaxvi.predictive(result, x, key=jax.random.key(1), num_draws=draws)
    q = result.posterior(x)
    weights = np.asarray(out.global_draws["weights"], np.float64)  # (S, K) from Dirichlet(concentration)
    concentration = np.asarray(q.globals["theta"]["weights"].parameters()["concentration"], np.float64)
    mean = concentration / concentration.sum()
    sd = np.sqrt(mean * (1 - mean) / (concentration.sum() + 1))
    assert np.all(np.abs(weights.mean(0) - mean) < 4.5 * sd / math.sqrt(draws))
    assert np.all(np.abs(weights.std(0) / sd - 1) < 0.05)
    precision = np.asarray(out.global_draws["components"][1], np.float64)  # E[precision] = dof * scale
    expected = np.asarray(q.globals["theta"]["components"].mean()[1], np.float64)
    np.testing.assert_allclose(precision[:, 1:].mean(0), expected[1:], rtol=0.05, atol=0.02)
    assert np.all(np.isfinite(np.asarray(out.global_draws["components"][0])))  # also the switched-off component's
    probs = np.asarray(q.local.probs, np.float64)  # assignments: independent of the global draw
    counts = (np.asarray(out.local_draws)[..., None] == np.arange(3)).sum(0)  # binomial, many of p near 0 or 1
    low, high = scipy_stats.binom.ppf(1e-6, draws, probs), scipy_stats.binom.isf(1e-6, draws, probs)
    assert np.all((low <= counts) & (counts <= high))
    parts = jaxvi.latents.split_latent(model.latent)
    for s in (0, 1234):
        z_global = jax.tree_util.tree_map(lambda a: a[s], out.global_draws)
        joint = np.array([[float(model.log_joint(result.params, parts.combine(z_global, jnp.int32(k)), x_i))
                           for k in range(3)] for x_i in x[:8]])
        np.testing.assert_allclose(np.asarray(out.log_likelihood)[s, :8], logsumexp(joint, axis=1),
                                   rtol=1e-5, atol=1e-5)
    idata = result.to_arviz(x, key=jax.random.key(2))
    assert set(idata.posterior.data_vars) == {"theta.weights", "theta.components.0", "theta.components.1",
                                              "assignment"}
    loo = az.loo(idata, pointwise=True)
    assert np.all(np.asarray(loo.pareto_k) < 0.7)
    table = jaxvi.compare({"bgmm": result}, x, by="elpd_loo", key=jax.random.key(3), num_draws=4000)
    assert table.rows[0].method == "CAVI" and abs(table.rows[0].elpd_loo - elpd_loo(loo)) < 0.5


def test_cavi_local_factors_give_the_importance_weight_of_each_draw():
    """Student-t data as a scale mixture: a local Gamma factor per datum, a global Normal mean. The draws of
    lambda_i have q_i's moments, and each log-likelihood is log p(x_i, lambda_i | mu) - log q_i(lambda_i)."""
    nu = 4.0
    x = 1.0 + np.random.default_rng(3).standard_t(nu, 60)
    stats = jax.scipy.stats

    def log_joint(params, z, x):
        return stats.norm.logpdf(x, z["mu"][0], 1 / jnp.sqrt(z["lam"])) + stats.gamma.logpdf(z["lam"], nu / 2,
                                                                                               scale=2 / nu)

    latent = {"lam": jaxvi.Gamma(),
              "mu": jaxvi.Global(jaxvi.Gaussian(1), lambda p, mu: stats.norm.logpdf(mu[0], 0, 10))}
    with jax.enable_x64(True):
        model = jaxvi.Model(log_joint, latent, init=lambda key, data: {})
        result = jaxvi.infer(model, jaxvi.CAVI(max_iter=100), jnp.asarray(x), key=KEY, progress=False)
        draws = 4000
        out = jaxvi.predictive(result, jnp.asarray(x), key=jax.random.key(1), num_draws=draws)
        q = result.posterior(jnp.asarray(x))
        shape, rate = (np.asarray(v) for v in q.local.parameters().values())
        m = q.globals["mu"].parameters()
        mu_mean, mu_sd = float(m["mean"][0]), float(np.sqrt(m["covariance"][0, 0]))
    lam, mu = np.asarray(out.local_draws), np.asarray(out.global_draws)[:, 0]
    assert lam.shape == (draws, 60)
    assert np.all(np.abs(lam.mean(0) - shape / rate) < 4.5 * np.sqrt(shape) / rate / math.sqrt(draws))
    assert abs(mu.mean() - mu_mean) < 4.5 * mu_sd / math.sqrt(draws) and abs(mu.std() / mu_sd - 1) < 0.05
    expected = (scipy_stats.norm.logpdf(x, mu[:, None], 1 / np.sqrt(lam))
                + scipy_stats.gamma.logpdf(lam, nu / 2, scale=2 / nu) - scipy_stats.gamma.logpdf(lam, shape, scale=1 / rate))
    np.testing.assert_allclose(np.asarray(out.log_likelihood), expected, rtol=1e-9)


def test_lda_draws_tokens_and_sums_their_topics_out_of_the_log_likelihood():
    """LDA by CAVI: each word's tokens are drawn per topic from Multinomial(c_l, q_l), and the log-likelihood of a
    draw is log p(x_d, theta_d | beta) - log q(theta_d) with every token's topic summed out, written here in
    closed form: sum_l c_l log sum_k theta_dk beta_k,w_l + the Dirichlet densities."""
    rng = np.random.default_rng(0)
    V, K = 12, 2
    topics = rng.dirichlet(np.full(V, 0.3), K)
    counts = np.stack([rng.multinomial(rng.integers(5, 15), p @ topics)
                       for p in rng.dirichlet(np.full(K, 0.5), 15)]).astype(np.float32)
    docs = jaxvi.models.bag_of_words(counts)
    result = jaxvi.infer(jaxvi.models.lda(docs, K, V), jaxvi.CAVI(max_iter=30), docs, key=KEY, progress=False)
    draws = 2000
    out = jaxvi.predictive(result, docs, key=jax.random.key(1), num_draws=draws)
    q = result.posterior(docs)
    ids, words = (np.asarray(a) for a in docs)
    concentration = np.asarray(q.local["proportions"].parameters()["concentration"], np.float64)
    beta, theta = np.asarray(out.global_draws, np.float64), np.asarray(out.local_draws["proportions"], np.float64)
    theta /= theta.sum(-1, keepdims=True)  # float32 draws: onto scipy's simplex (1e-7 moves)
    for s in (0, 777):
        for d in range(len(counts)):
            expected = (np.sum(words[d] * np.log(theta[s, d] @ beta[s][:, ids[d]]))
                        + scipy_stats.dirichlet.logpdf(theta[s, d], np.full(K, 1 / K))
                        - scipy_stats.dirichlet.logpdf(theta[s, d], concentration[d]))
            np.testing.assert_allclose(float(out.log_likelihood[s, d]), expected, rtol=1e-4)
    tokens = np.asarray(out.local_draws["assignments"])                       # (S, N, L, K) tokens per topic
    np.testing.assert_array_equal(tokens.sum(-1), np.broadcast_to(words, tokens.shape[:-1]))
    probs = np.asarray(q.local["assignments"].parameters()["probs"], np.float64)[..., 0]
    in_topic_0 = tokens[..., 0].sum(0)  # binomial(draws x c_l, q_l0)
    low = scipy_stats.binom.ppf(1e-6, draws * words, probs)
    assert np.all((low <= in_topic_0) & (in_topic_0 <= scipy_stats.binom.isf(1e-6, draws * words, probs)))
    with pytest.raises(ValueError, match="data: to_arviz draws the tokens of OneHot.* whole numbers >= 0"):
        result.to_arviz((docs[0], docs[1] * 0.5), key=KEY)
