"""``jaxvi.compare`` against scikit-learn's BIC / AIC on the same fitted mixtures, and PSIS-LOO against the
exact leave-one-out density of a conjugate model."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.mixture import GaussianMixture

import jaxvi
from jaxvi.models import gaussian_mixture

KEY = jax.random.key(0)


def test_nested_mixtures_rank_as_scikit_learn_s_bic_and_the_exact_evidence_do():
    """Mixtures of K = 1, 2, 3 diagonal Gaussians fitted by EM to data drawn from K = 2. scikit-learn, run from
    the same start for the same iterations, reaches the same θ̂: the table's BIC and AIC are its bic() and aic()
    (with its count of free parameters), and both rank K = 2 first."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2.0, 1.0, (150, 2)), rng.normal(2.0, 0.7, (150, 2))])
    fits, counts, sklearn_bic, sklearn_aic = {}, {}, {}, {}
    with jax.enable_x64(True):
        for k in (1, 2, 3):
            gm = gaussian_mixture(k, covariance="diag", init="kmeans++")
            start = gm.model.init(jax.random.key(1), jnp.asarray(x))
            fit = jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step), jnp.asarray(x), key=KEY, init_params=start,
                              progress=False)
            weights = np.asarray(start.weights)
            same = GaussianMixture(k, covariance_type="diag", max_iter=int(fit.n_iter), tol=0.0,
                                   weights_init=weights / weights.sum(), means_init=np.asarray(start.means),
                                   precisions_init=np.asarray(start.prec_chol) ** 2)
            with pytest.warns(UserWarning, match="converge"):  # scikit-learn's ConvergenceWarning at tol=0
                same.fit(x)
            name = f"K={k}"
            fits[name], counts[name] = fit, same._n_parameters()
            sklearn_bic[name], sklearn_aic[name] = same.bic(x), same.aic(x)
        table = jaxvi.compare(fits, jnp.asarray(x), by="bic", num_params=counts)
        by_evidence = jaxvi.compare(fits, jnp.asarray(x))
    for row in table.rows:
        np.testing.assert_allclose(row.bic, sklearn_bic[row.name], rtol=1e-9)
        np.testing.assert_allclose(row.aic, sklearn_aic[row.name], rtol=1e-9)
        np.testing.assert_allclose(row.log_evidence, float(fits[row.name].objective), rtol=1e-12)
        assert math.isnan(row.elpd_loo)  # no key, and θ is a point: no LOO
    assert [row.name for row in table.rows] == sorted(sklearn_bic, key=sklearn_bic.get)
    assert table.best == "K=2"
    # the exact evidence at θ̂ only grows with K (nested models): it ranks the largest first
    assert [row.name for row in by_evidence.rows] == ["K=3", "K=2", "K=1"]
    # without num_params, k is the size of θ: K logits, where K - 1 are free
    assert by_evidence.rows[0].num_params == counts["K=3"] + 1
    assert "| 1 | K=2 | EM |" in str(table)


def test_a_latent_dict_s_evidence_and_comparison_are_its_enumeration():
    """A latent of two Discrete leaves in a dict (enumerated over their product): jaxvi.evidence and compare failed
    in JAX's jit, which cannot hash a dict given as a static argument; now they give log p(D) by brute force."""
    from scipy.special import logsumexp
    x = np.random.default_rng(0).normal(size=(30, 2)).astype(np.float32)

    def log_joint(p, z, x):
        return (jax.nn.log_softmax(p["a"])[z["k"]] + jax.nn.log_softmax(p["b"])[z["j"]]
                + jnp.sum(jax.scipy.stats.norm.logpdf(x, p["m"][z["k"]] + p["n"][z["j"]])))

    params = {"a": jnp.array([0.3, -0.3]), "b": jnp.array([0.0, 0.5, -1.0]),
              "m": jnp.array([[-1.0, 0.0], [1.0, 0.5]]), "n": jnp.array([[0.0, 0.0], [0.5, -0.5], [1.0, 1.0]])}
    model = jaxvi.Model(log_joint, {"k": jaxvi.Discrete(2), "j": jaxvi.Discrete(3)}, lambda key, data: params)
    fit = jaxvi.infer(model, jaxvi.EM(max_iter=1, m_step=lambda p, data, post: p), x, key=KEY, progress=False)
    table = np.array([[float(log_joint(params, {"k": k, "j": j}, xi)) for k in range(2) for j in range(3)] for xi in x])
    brute = logsumexp(table, axis=1).sum()
    np.testing.assert_allclose(float(jaxvi.evidence(model, params, x).log_evidence), brute, rtol=1e-6)
    np.testing.assert_allclose(jaxvi.compare({"fit": fit}, x).rows[0].log_evidence, brute, rtol=1e-6)
    np.testing.assert_allclose(float(fit.objective), brute, rtol=1e-6)


def test_psis_loo_of_a_global_latent_is_the_exact_leave_one_out_density():
    sigma, prior_sd = 2.0, 3.0
    x = np.random.default_rng(0).normal(1.5, sigma, 40).astype(np.float32)
    latent = jaxvi.Global({"mu": jaxvi.Real(())},
                          log_prior=lambda params, z: jax.scipy.stats.norm.logpdf(z["mu"], 0.0, prior_sd))
    model = jaxvi.Model(lambda params, z, x: jax.scipy.stats.norm.logpdf(x, z["mu"], sigma), latent, lambda k, d: {})
    fit = jaxvi.infer(model, jaxvi.SVI(num_steps=1500, num_particles=4, estimator="stl", optimizer=optax.adam(3e-2)),
                      x, key=KEY, progress=False)
    table = jaxvi.compare({"normal": fit}, x, key=jax.random.key(1), num_draws=4000)
    row = table.rows[0]
    exact_loo, x64 = 0.0, x.astype(np.float64)
    for i in range(len(x)):
        rest = np.delete(x64, i)
        precision = 1 / prior_sd**2 + len(rest) / sigma**2
        mean, variance = rest.sum() / sigma**2 / precision, sigma**2 + 1 / precision
        exact_loo += -0.5 * math.log(2 * math.pi * variance) - (x64[i] - mean) ** 2 / (2 * variance)
    assert abs(row.elpd_loo - exact_loo) < 0.1 and row.loo_khat < 0.7, (row.elpd_loo, exact_loo, row.loo_khat)
    assert row.objective_is == "ELBO" and math.isnan(row.log_evidence) and math.isnan(row.bic)


@pytest.mark.parametrize("call, message", [
    (lambda fit: jaxvi.compare({}, np.zeros(3)), "fits: expected a non-empty mapping"),
    (lambda fit: jaxvi.compare({"a": 1.0}, np.zeros(3)), r"fits\['a'\]: expected a jaxvi Result, got float"),
    (lambda fit: jaxvi.compare({"a": fit}, np.zeros(3), by="waic"), "by: expected one of"),
    (lambda fit: jaxvi.compare({"a": fit}, np.zeros(3), num_params={"b": 2}), "num_params: 'b' names no fit"),
])
def test_bad_comparisons_are_named(tiny_fit, call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny_fit)


@pytest.fixture(scope="module")
def tiny_fit():
    gm = gaussian_mixture(1, covariance="diag")
    return jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step, max_iter=2), np.arange(3.0)[:, None], key=KEY,
                       progress=False)
