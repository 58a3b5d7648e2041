"""Amortized inference: PPCA against its exact evidence, IWAE bounds, adapters, gradients, training controls."""
import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sklearn.datasets

import jaxvi
from jaxvi.methods import AmortizedParams
from jaxvi.vi import guide_elbo

KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def ppca_fit():
    """PPCA data (D=5, d=2) fitted with a linear encoder and a full-rank q: the exact posterior is in the family."""
    rng = np.random.default_rng(0)
    W = rng.normal(size=(5, 2))
    x = (rng.normal(size=(400, 2)) @ W.T + 0.3 * rng.normal(size=(400, 5)) + 0.5).astype(np.float32)
    # from random loadings: started at the ML theta (the zoo's default), the untrained encoder's ELBO (-6.8e4)
    # drags theta away from it and the fit ends 45 nats below it with a 67-nat gap
    pp = jaxvi.models.ppca(2, init="random")
    method = jaxvi.Amortized(encoder=jaxvi.nn.mlp(()), guide=jaxvi.FullRank(), num_steps=6000, batch_size=50,
                             num_particles=2, objective="stl", validation=0.0,
                             optimizer=optax.adam(optax.exponential_decay(1e-2, 6000, 0.01)))
    result = jaxvi.infer(pp.model, method, x, key=KEY, progress=False)
    return pp, method, result, x


def test_ppca_amortized_elbo_reaches_the_exact_log_likelihood(ppca_fit):
    pp, method, result, x = ppca_fit
    exact = jaxvi.evidence(pp.model, result.params, x)
    assert exact.exact
    elbo, se = method.elbo(result, x, key=jax.random.key(1), num_particles=200)
    gap = float(exact.log_evidence) - float(elbo)
    assert -4.5 * float(se) < gap < 0.01 * abs(float(exact.log_evidence))
    # and the fitted theta is PPCA's maximum likelihood
    em = jaxvi.infer(pp.model, jaxvi.EM(m_step=pp.m_step, max_iter=500, tol=0.0), x, key=KEY, progress=False)
    np.testing.assert_allclose(float(exact.log_evidence), float(em.objective), rtol=1e-3)


def test_iwae_bound_rises_with_k_and_stays_below_the_exact_evidence(ppca_fit):
    pp, _, result, x = ppca_fit
    q = result.posterior(x)
    exact = float(jaxvi.evidence(pp.model, result.params, x).log_evidence)
    bounds = []
    for k in (1, 10, 100):
        estimate = jaxvi.evidence(pp.model, result.params, x, key=jax.random.key(k), posterior=q, num_samples=k,
                                  exact=False) if k > 1 else None
        if k == 1:  # the ELBO (the K = 1 bound), its mean over 100 draws per datum: a standard error to compare with
            value, se = guide_elbo(pp.model, result.params, x, q, key=jax.random.key(1), num_particles=100)
            bounds.append((float(value), float(se)))
        else:
            bounds.append((float(estimate.log_evidence), float(estimate.stderr)))
    means = [b for b, _ in bounds]
    # each bound at most the next, within the standard error of the difference of the two independent estimates
    assert all(means[i] <= means[i + 1] + 4.5 * np.hypot(bounds[i][1], bounds[i + 1][1]) for i in range(2)), bounds
    assert estimate.khat.shape == (len(x),) and np.all(np.isfinite(estimate.khat))  # PSIS k-hat per datum (k = 100)
    assert all(b <= exact + 4.5 * s + 1e-3 for b, s in bounds)


@pytest.fixture(scope="module")
def digits_fit():
    x = (sklearn.datasets.load_digits().data / 16.0 > 0.5).astype(np.float32)
    vae = jaxvi.models.vae(4, 64, decoder=jaxvi.nn.mlp((64,)))
    method = jaxvi.Amortized(encoder=jaxvi.nn.mlp((64,)), num_epochs=6, batch_size=64, validation=0.1,
                             optimizer=optax.adam(3e-3))
    result = jaxvi.infer(vae.model, method, x, key=KEY, progress=False)
    return vae, method, result, x


def test_on_digits_iwae_is_above_the_elbo_and_the_fit_reconstructs_and_samples(digits_fit):
    vae, method, result, x = digits_fit
    test = x[-100:]
    q = result.posterior(test)
    elbo, elbo_se = guide_elbo(vae.model, result.params, test, q, key=jax.random.key(2), num_particles=100)
    iwae = jaxvi.evidence(vae.model, result.params, test, key=jax.random.key(3), posterior=q, num_samples=500)
    assert not iwae.exact
    assert float(iwae.log_evidence) > float(elbo) + 4.5 * (float(iwae.stderr) + float(elbo_se))
    assert np.isfinite(float(result.objective)) and np.isfinite(float(result.diagnostics.heldout_elbo))
    heldout = np.asarray(result.diagnostics.heldout_trace)
    assert heldout.shape == (6,) and np.all(np.isfinite(heldout)) and heldout[-1] > heldout[0]
    assert int(result.diagnostics.epochs) == 6
    recon = np.asarray(vae.reconstruct(result, test))
    assert recon.shape == (100, 64) and np.all((recon >= 0) & (recon <= 1))
    # reconstructions carry the datum: closer to it than the best constant image (the pixel means) is,
    # and closer to their own digit than to the others
    own = ((recon - test) ** 2).sum(-1).mean()
    constant = ((x.mean(axis=0) - test) ** 2).sum(-1).mean()
    other = ((recon[:, None, :] - test[None, :, :]) ** 2).sum(-1)[~np.eye(100, dtype=bool)].mean()
    assert own < 0.75 * constant and own < 0.75 * other, (own, constant, other)
    samples = np.asarray(vae.sample(result, jax.random.key(4), 7))
    assert samples.shape == (7, 64) and np.all((samples >= 0) & (samples <= 1))


def test_refinement_closes_part_of_the_amortization_gap(digits_fit):
    vae, method, result, x = digits_fit
    test = x[-50:]
    amortized = result.posterior(test)
    refined = method.refine(result, test, key=jax.random.key(5), num_steps=200)
    before, se_before = guide_elbo(vae.model, result.params, test, amortized, key=jax.random.key(6), num_particles=200)
    after, se_after = guide_elbo(vae.model, result.params, test, refined, key=jax.random.key(6), num_particles=200)
    assert float(after) > float(before) + 4.5 * (float(se_before) + float(se_after))
    # the evidence with and without refinement: two estimates of the same log p(D)
    with_encoder = jaxvi.evidence(vae.model, result.params, test, key=jax.random.key(7), posterior=amortized,
                                  num_samples=1000)
    with_refined = jaxvi.evidence(vae.model, result.params, test, key=jax.random.key(7), posterior=refined,
                                  num_samples=1000)
    assert abs(float(with_encoder.log_evidence) - float(with_refined.log_evidence)) < \
        4.5 * (float(with_encoder.stderr) + float(with_refined.stderr)) + 1.0


class EqxMLP(eqx.Module):
    layers: list

    def __init__(self, sizes, key):
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = [eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys)]

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jnp.tanh(layer(x))
        return self.layers[-1](x)


def test_an_equinox_encoder_gives_the_same_elbo_as_the_built_in_mlp_with_the_same_weights(digits_fit):
    vae, method, result, x = digits_fit
    weights = result.guide_params.encoder                                  # [(W (in, out), b), ...]
    module = EqxMLP((64, 64, 8), jax.random.key(9))
    module = eqx.tree_at(lambda m: [l.weight for l in m.layers] + [l.bias for l in m.layers], module,
                         [w.T for w, _ in weights] + [b for _, b in weights])
    adapted = dataclasses.replace(method, encoder=jaxvi.nn.from_equinox(module))
    eqx_result = dataclasses.replace(result, method=adapted,
                                     guide_params=AmortizedParams(eqx.filter(module, eqx.is_array), {}))
    ours = method.elbo(result, x[:200], key=jax.random.key(8), num_particles=10)
    theirs = adapted.elbo(eqx_result, x[:200], key=jax.random.key(8), num_particles=10)
    np.testing.assert_allclose(float(theirs[0]), float(ours[0]), rtol=1e-5)


def test_the_joint_objective_s_gradient_matches_finite_differences():
    """On a tiny VAE in float64 with the particles' key fixed, the objective is a smooth function of (theta, phi)."""
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(1).uniform(size=(6, 3)) > 0.5, jnp.float64)
        vae = jaxvi.models.vae(2, 3, decoder=jaxvi.nn.mlp((4,)))
        method = jaxvi.Amortized(encoder=jaxvi.nn.mlp((4,)), num_steps=1, batch_size=6, validation=0.0)
        state = method.init(vae.model, KEY, x)

        def objective(params, variational):
            moved = state._replace(params=params, variational=variational)
            return method._bound(vae.model, moved, x, jax.random.key(3), 3, "elbo").surrogate

        jax.test_util.check_grads(jax.jit(objective), (state.params, state.variational), order=1, modes=["rev"],
                                  atol=1e-6, rtol=1e-6)


def test_early_stopping_returns_the_best_epoch():
    x = (sklearn.datasets.load_digits().data[:300] / 16.0 > 0.5).astype(np.float32)
    vae = jaxvi.models.vae(2, 64, decoder=jaxvi.nn.mlp((16,)))
    # a learning rate this large overfits and then degrades: the held-out ELBO stops improving
    method = jaxvi.Amortized(encoder=jaxvi.nn.mlp((16,)), num_epochs=200, batch_size=30, validation=0.2,
                             patience=3, optimizer=optax.adam(5e-2))
    result = jaxvi.infer(vae.model, method, x, key=KEY, progress=False)
    epochs = int(result.diagnostics.epochs)
    heldout = np.asarray(result.diagnostics.heldout_trace)[:epochs]
    assert bool(result.converged) and epochs < 200
    best = int(np.nanargmax(heldout))
    assert epochs - 1 - best == 3                                  # stopped after 3 epochs without a better one
    np.testing.assert_allclose(float(result.diagnostics.heldout_elbo), heldout[best], rtol=1e-6)
    assert np.all(np.isnan(np.asarray(result.diagnostics.heldout_trace)[epochs:]))


def _trap_model(threshold):
    """z_i ~ N(0, 1), x_i ~ N(z_i + shift, 1), and a NaN log-joint for the datum 123.0 once shift passes
    ``threshold`` (``None``: always)."""
    def log_joint(params, z, x):
        value = jax.scipy.stats.norm.logpdf(x[0], z[0] + params["shift"], 1.0) + jax.scipy.stats.norm.logpdf(z[0])
        trapped = x[0] == 123.0
        if threshold is not None:
            trapped = trapped & (params["shift"] > threshold)
        return jnp.where(trapped, jnp.nan, value)

    return jaxvi.Model(log_joint, jaxvi.Real((1,)), lambda k, d: {"shift": jnp.array(0.0)})


def _finite(result):
    leaves = jax.tree_util.tree_leaves((result.params, result.guide_params, result.objective, result.trace))
    return all(np.all(np.isfinite(np.asarray(a))) for a in leaves)


def test_a_non_finite_step_names_the_datum_and_term_and_the_result_is_finite():
    """The fault names datum 17 of the data given (with a held-out part, the batch's rows are indices of the
    whole data); err.result is the last state whose ELBO was finite, not the one at which it broke."""
    x = np.random.default_rng(2).normal(size=(40, 1)).astype(np.float32)
    x[17] = 123.0
    method = jaxvi.Amortized(encoder=jaxvi.nn.mlp((4,)), num_epochs=50, batch_size=4, validation=0.2,
                             optimizer=optax.sgd(1e-3))
    with pytest.raises(FloatingPointError, match=r"Amortized stopped at step \d+: the ELBO was not finite: its "
                                                 r"log_joint term for datum 17") as err:
        jaxvi.infer(_trap_model(0.3), method, x, key=KEY, progress=False)
    result = err.value.result
    assert _finite(result) and 0 < int(result.n_iter) <= int(result.diagnostics.fault.iteration)


def test_a_final_fault_names_the_datum_of_the_data_given():
    """Two steps of 5 visit 10 of the 32 training data; the one datum they miss that breaks the log-joint
    breaks only the final ELBO, which is on all the training data: the fault names it by its index in the
    data given (not in the training part), and err.result holds the last step's state and estimate."""
    from jaxvi.run import epoch_order

    n, n_valid = 40, 8
    _, run_key = jax.random.split(KEY)
    permutation = np.asarray(epoch_order(run_key, jnp.array(-1), jnp.arange(n)))
    train = permutation[: n - n_valid]
    unvisited = np.asarray(epoch_order(run_key, jnp.array(0), jnp.asarray(train)))[-1]  # last of epoch 0's order
    x = np.random.default_rng(3).normal(size=(n, 1)).astype(np.float32)
    x[unvisited] = 123.0
    method = jaxvi.Amortized(encoder=jaxvi.nn.mlp((4,)), num_steps=2, batch_size=5, validation=n_valid / n)
    with pytest.raises(FloatingPointError, match=rf"Amortized's final evaluation \(on all the data, after 2 steps\) "
                                                 rf"failed: the ELBO was not finite: its log_joint term for datum "
                                                 rf"{unvisited}\b") as err:
        jaxvi.infer(_trap_model(None), method, x, key=KEY, progress=False)
    result = err.value.result
    assert _finite(result) and int(result.n_iter) == 1 and int(result.diagnostics.fault.kind) == 6
    # the same two steps by hand: the result is the state after the first, with the second step's estimate
    from jaxvi.run import step_keys
    order = np.asarray(epoch_order(run_key, jnp.array(0), jnp.asarray(train)))
    model, states, objectives = _trap_model(None), [method.init(_trap_model(None), jax.random.split(KEY)[0], x)], []
    step = jax.jit(method.step, static_argnums=0)
    for t in range(2):
        index = jnp.asarray(order[5 * t: 5 * t + 5])
        state, info = step(model, step_keys(run_key, jnp.asarray(t))[0], states[-1], jnp.asarray(x)[index],
                           num_data=n - n_valid)
        states.append(state)
        objectives.append(float(info.objective))
    np.testing.assert_allclose(float(result.objective), objectives[1], rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves((result.params, result.guide_params)),
                    jax.tree_util.tree_leaves((states[1].params, states[1].variational))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of num_steps and num_epochs"), ({"num_steps": 10, "num_epochs": 2}, "exactly one"),
    ({"num_steps": 10, "objective": "kl"}, "objective"), ({"num_steps": 10, "guide": jaxvi.Delta()}, "guide"),
    ({"num_steps": 10, "validation": 1.0}, "validation"), ({"num_steps": 10, "patience": 2, "validation": 0.0}, "patience"),
    ({"num_steps": 10, "encoder": lambda p, x: x}, "encoder"), ({"num_steps": 10, "batch_size": 0}, "batch_size"),
])
def test_bad_amortized_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jaxvi.Amortized(**kwargs)


def test_bad_models_and_data_for_amortized_inference():
    gm = jaxvi.models.gaussian_mixture(2)
    x = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    with pytest.raises(ValueError, match="continuous guide"):
        jaxvi.infer(gm.model, jaxvi.Amortized(num_steps=5, batch_size=10), x, key=KEY)
    vae, binary = jaxvi.models.vae(2, 2), (x > 0).astype(np.float32)  # a Bernoulli likelihood's data
    with pytest.raises(ValueError, match=r"data: expected values in \[0, 1\]"):
        jaxvi.infer(vae.model, jaxvi.Amortized(num_steps=5, batch_size=10), x, key=KEY)
    with pytest.raises(ValueError, match="batch_size"):
        jaxvi.infer(vae.model, jaxvi.Amortized(num_steps=5, batch_size=49), binary, key=KEY)
    wrong = jaxvi.Amortized(num_steps=5, batch_size=10, encoder=jaxvi.nn.from_equinox(EqxMLP((2, 3), KEY)))
    with pytest.raises(ValueError, match="encoder: expected an output of shape"):
        jaxvi.infer(vae.model, wrong, binary, key=KEY)
    with pytest.raises(ValueError, match="data_dim"):
        jaxvi.models.vae(2, 0)


def test_a_gaussian_vae_with_a_linear_decoder_is_factor_analysis(optimized_code):
    """A linear decoder with a per-dimension Gaussian noise is factor analysis: the amortized ELBO approaches
    the factor-analysis maximum likelihood from EM (and stays below it), and the progress bar changes nothing."""
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(300, 2)) @ rng.normal(size=(2, 4)) + rng.uniform(0.2, 0.6, 4) * rng.normal(size=(300, 4))
         ).astype(np.float32)
    vae = jaxvi.models.vae(2, 4, decoder=jaxvi.nn.mlp(()), likelihood="gaussian")
    method = jaxvi.Amortized(encoder=jaxvi.nn.mlp(()), guide=jaxvi.FullRank(), num_steps=8000, batch_size=300,
                             num_particles=2, objective="stl", validation=0.0, optimizer=optax.adam(3e-2))
    result = jaxvi.infer(vae.model, method, x, key=KEY, progress=True)
    fa = jaxvi.models.factor_analysis(2)
    em = jaxvi.infer(fa.model, jaxvi.EM(m_step=fa.m_step, max_iter=1000, tol=0.0), x, key=KEY, progress=False)
    elbo, se = method.elbo(result, x, key=jax.random.key(1), num_particles=200)
    assert float(elbo) <= float(em.objective) + 4.5 * float(se)
    np.testing.assert_allclose(float(elbo), float(em.objective), rtol=1e-2)


def test_a_pytree_datum_is_encoded_as_its_leaves_joined():
    """Data as a dict of a (3,) and a () leaf: the built-in MLP encoder failed on it ('entry not a 2- or 3- tuple');
    now it reads the leaves raveled and joined, so the fit equals the fit of the same data as one (N, 4) array (the
    same encoder weights from the same key, the same batches)."""
    rng = np.random.default_rng(0)
    flat = rng.normal(size=(40, 4)).astype(np.float32)
    as_dict = {"a": flat[:, :3], "b": flat[:, 3]}

    def log_joint(p, z, x, split):
        a, b = (x["a"], x["b"]) if split else (x[:3], x[3])
        return (jnp.sum(jax.scipy.stats.norm.logpdf(z)) + jnp.sum(jax.scipy.stats.norm.logpdf(a, p["W"] @ z))
                + jax.scipy.stats.norm.logpdf(b, p["v"] @ z))

    init = lambda key, data: {"W": 0.1 * jax.random.normal(key, (3, 2)), "v": jnp.ones(2)}  # noqa: E731
    method = jaxvi.Amortized(encoder=jaxvi.nn.mlp((8,)), num_steps=30, batch_size=10, validation=0.0)
    fits = [jaxvi.infer(jaxvi.Model(lambda p, z, x, s=split: log_joint(p, z, x, s), jaxvi.Real((2,)), init), method,
                        data, key=KEY, progress=False) for split, data in ((True, as_dict), (False, flat))]
    np.testing.assert_allclose(fits[0].trace, fits[1].trace, rtol=1e-6)
    assert np.isfinite(fits[0].trace).all() and fits[0].trace[-1] > fits[0].trace[0]


def test_a_flow_guide_amortizes_its_base_and_shares_its_layers():
    x = (sklearn.datasets.load_digits().data[:200] / 16.0 > 0.5).astype(np.float32)
    vae = jaxvi.models.vae(2, 64, decoder=jaxvi.nn.mlp((32,)))
    method = jaxvi.Amortized(encoder=jaxvi.nn.mlp((32,)), guide=jaxvi.Flow(num_layers=2, hidden=(8,)), num_steps=50,
                             batch_size=50, validation=0.0)
    result = jaxvi.infer(vae.model, method, x, key=KEY, progress=False)
    assert jaxvi.methods.guide_size(jaxvi.Flow(), 2) == 4
    assert len(result.guide_params.shared["layers"]) == 2
    q = result.posterior(x[:3])
    assert q.params["layers"][0][0][0].shape[0] == 3          # the shared layers, one copy per datum
    assert np.isfinite(float(result.objective))
    draws = q.sample(jax.random.key(1), 4)
    assert draws.shape == (3, 4, 2)
