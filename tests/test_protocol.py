"""The method protocol as a researcher uses it: their own ``lax.scan`` over ``method.step`` with their own
keys and minibatches equals ``jaxvi.infer`` on the same draws; numbers are traced (no retrace, vmap over them);
minibatches are scaled by N/B and checked at the boundary."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxvi
from jaxvi.chunks import minibatch
from jaxvi.models import gaussian_mixture
from jaxvi.run import epoch_order, step_keys

KEY = jax.random.key(0)


def _mixture_data(n=240, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [4.0, 4.0], [-4.0, 4.0]])
    return jnp.asarray(rng.normal(size=(n, 2)) + centres[np.arange(n) % 3], jnp.float32)


def _global_model():
    """A Normal mean with a Normal(0, 10^2) prior: a Global latent, the likelihood per datum."""
    def log_joint(params, z, x):
        return jax.scipy.stats.norm.logpdf(x, z["mu"], 1.0).sum()

    prior = jaxvi.Global({"mu": jaxvi.Real((2,))}, lambda p, z: jax.scipy.stats.norm.logpdf(z["mu"], 0.0, 10.0).sum())
    return jaxvi.Model(log_joint, prior, init=lambda key, data: {})


def _user_loop(model, method, data, key, steps, draw):
    """What a researcher writes: init, a lax.scan over step with their keys and batches, finalize."""
    n = jax.tree_util.tree_leaves(data)[0].shape[0]
    init_key, keys = jax.random.split(key)  # as infer splits a restart's key
    state = method.init(model, init_key, data)

    def one(state, t):
        step_key, batch_key = step_keys(keys, t)
        state, info = method.step(model, step_key, state, draw(batch_key, t), num_data=n)
        return state, info.objective

    return jax.jit(lambda s: jax.lax.scan(one, s, jnp.arange(steps)))(state)


def test_em_steps_in_a_user_scan_equal_infer():
    x = _mixture_data()
    gm = gaussian_mixture(3)
    method = jaxvi.EM(m_step=gm.m_step, max_iter=7, tol=0.0)
    state, objectives = _user_loop(gm.model, method, x, KEY, 8, lambda k, t: x)
    fitted = jaxvi.infer(gm.model, method, x, key=KEY, progress=False)
    np.testing.assert_allclose(objectives, fitted.trace, rtol=1e-6)
    mine = method.finalize(gm.model, KEY, state, x)
    np.testing.assert_allclose(float(mine.objective), float(fitted.objective), rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(mine.params), jax.tree_util.tree_leaves(fitted.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case, b", [("global", 40), ("enumerated", 40), ("local", 40), ("local", None)])
def test_svi_steps_on_user_minibatches_equal_infer(case, b):
    """b None: batches of all the data, which infer passes in order; minibatch drew them permuted, and the per-datum
    draws of local guides, keyed by position in the batch, differed from the first step (0.17 nats)."""
    x = _mixture_data()
    n = x.shape[0]
    b = n if b is None else b
    if case == "global":
        model = _global_model()
    elif case == "enumerated":
        model = gaussian_mixture(3).model
    else:
        model = jaxvi.models.factor_analysis(1).model
    method = jaxvi.SVI(num_steps=30, batch_size=b, learning_rate=0.05)

    def draw(batch_key, t):
        index = minibatch(batch_key, n, b)
        return jaxvi.Batch(index, x[index])

    state, objectives = _user_loop(model, method, x, KEY, 30, draw)
    fitted = jaxvi.infer(model, method, x, key=KEY, progress=False)
    np.testing.assert_allclose(objectives, fitted.trace, rtol=2e-5)
    for a, b_ in zip(jax.tree_util.tree_leaves((state.params, state.global_psi, state.local_psi)),
                     jax.tree_util.tree_leaves((fitted.params, fitted.guide_params))):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-6)


def test_amortized_steps_on_user_epochs_equal_infer():
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(60, 5)) > 0.5, jnp.float32)
    vae = jaxvi.models.vae(2, 5, decoder=jaxvi.nn.mlp((8,)))
    method = jaxvi.Amortized(encoder=jaxvi.nn.mlp((8,)), num_epochs=3, batch_size=20, validation=0.0)
    n, b = x.shape[0], 20
    _, keys = jax.random.split(KEY)
    train = epoch_order(keys, jnp.array(-1), jnp.arange(n))

    def draw(batch_key, t):
        order = epoch_order(keys, t // 3, train)
        return x[jax.lax.dynamic_slice(order, ((t % 3) * b,), (b,))]

    state, objectives = _user_loop(vae.model, method, x, KEY, 9, draw)
    fitted = jaxvi.infer(vae.model, method, x, key=KEY, progress=False)
    np.testing.assert_allclose(objectives, fitted.trace, rtol=2e-5)
    for a, b_ in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(fitted.params)):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-6)


def test_a_global_model_s_minibatch_elbo_is_scaled_by_n_over_b():
    """100 distinct data repeated 10 times: the ELBO of the 100 with num_data=1000 equals the ELBO of all 1000
    (same key: the same global particles)."""
    x = jnp.tile(_mixture_data(100), (10, 1))
    model, method = _global_model(), jaxvi.SVI()
    state = method.init(model, KEY, x)

    def objective(batch, num_data):  # the step jitted: op by op, the three steps compiled 140 small programs
        return jax.jit(lambda b: method.step(model, jax.random.key(3), state, b, num_data=num_data)[1])(batch)

    on_batch, on_all = objective(x[:100], 1000), objective(x, 1000)
    np.testing.assert_allclose(float(on_batch.objective), float(on_all.objective), rtol=1e-5)
    unscaled = objective(x[:100], 100)
    assert float(on_batch.objective) < 5 * float(unscaled.objective)  # the likelihood term grew tenfold


def test_bad_batches_are_value_errors_not_clamped_gathers():
    x = _mixture_data(50)
    fa = jaxvi.models.factor_analysis(1)
    method = jaxvi.SVI(batch_size=10)
    state = method.init(fa.model, KEY, x)
    step = lambda batch, n=50: method.step(fa.model, KEY, state, batch, num_data=n)  # noqa: E731
    with pytest.raises(ValueError, match=r"batch.index: expected indices in \[0, 50\)"):
        step(jaxvi.Batch(jnp.arange(45, 55), x[:10]))
    with pytest.raises(ValueError, match=r"batch.index: expected shape \(10,\)"):
        step(jaxvi.Batch(jnp.arange(12), x[:10]))
    with pytest.raises(ValueError, match="distinct"):
        step(jaxvi.Batch(jnp.zeros(10, jnp.int32), x[:10]))
    with pytest.raises(ValueError, match="pass jaxvi.Batch"):
        step(x[:10])
    with pytest.raises(ValueError, match="num_data=60"):
        step(x, n=60)
    for n in (0, 5):  # the batch's sum scaled by n / 10: an objective of 0 and no fault, for n = 0
        with pytest.raises(ValueError, match=rf"num_data: expected the number of data the batch was drawn from, at "
                                             rf"least its 10 rows, got {n}"):
            method.step(fa.model, KEY, method.init(fa.model, KEY, x[:10]), x[:10], num_data=n)
    with pytest.raises(ValueError, match="EM steps on all the data"):
        gm = gaussian_mixture(2)
        em = jaxvi.EM(m_step=gm.m_step)
        em.step(gm.model, KEY, em.init(gm.model, KEY, x), x[:10], num_data=50)


def test_a_traced_out_of_range_index_faults_instead_of_clamping():
    x = _mixture_data(50)
    fa = jaxvi.models.factor_analysis(1)
    method = jaxvi.SVI()
    state = method.init(fa.model, KEY, x)
    step = jax.jit(lambda s, index: method.step(fa.model, KEY, s, jaxvi.Batch(index, x[:10]), num_data=50))
    new, info = step(state, jnp.arange(45, 55))
    assert int(info.fault.kind) != 0
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(a, b)  # a faulty step leaves the state as it was


def test_vmap_over_learning_rates_in_one_compiled_call():
    x = _mixture_data(60)
    model = _global_model()
    rates = jnp.array([1e-3, 1e-2, 3e-2, 1e-1])

    def fit(rate):
        return jaxvi.infer(model, jaxvi.SVI(num_steps=200, learning_rate=rate), x, key=KEY, progress=False).objective

    together = jax.jit(jax.vmap(fit))(rates)
    one_by_one = [float(fit(float(r))) for r in rates]
    np.testing.assert_allclose(together, one_by_one, rtol=1e-4)
    assert float(together[0]) < float(together[2])  # 200 steps of 1e-3 are too few


def test_new_numbers_do_not_retrace_the_log_joint():
    x = _mixture_data(60)
    traces = []
    gm = gaussian_mixture(3)

    def log_joint(params, z, x):
        traces.append(1)
        return gm.model.log_joint(params, z, x)

    model = jaxvi.Model(log_joint, gm.model.latent, gm.model.init)
    for tol in (1e-3, 1e-5):
        jaxvi.infer(model, jaxvi.EM(m_step=gm.m_step, tol=tol), x, key=KEY, progress=False)
        if tol == 1e-3:
            after_first = len(traces)
    assert len(traces) == after_first
    for rate in (1e-2, 3e-2):
        jaxvi.infer(model, jaxvi.SVI(num_steps=5, learning_rate=rate, optimizer=optax.sgd), x, key=KEY, progress=False)
        if rate == 1e-2:
            after_first = len(traces)
    assert len(traces) == after_first


def test_methods_declare_what_they_report():
    assert jaxvi.EM.reports == jaxvi.OnlineEM.reports == "log p(D)"
    assert jaxvi.SVI.reports == jaxvi.Amortized.reports == "ELBO"
    for method in (jaxvi.EM(), jaxvi.SVI(), jaxvi.Amortized(num_steps=1)):
        assert isinstance(method, jaxvi.Method)
    with pytest.raises(ValueError, match="method: expected a jaxvi method"):
        jaxvi.infer(gaussian_mixture(2).model, jaxvi.EM, _mixture_data(10), key=KEY)


def test_the_progress_text_reads_each_restart_s_own_last_step():
    """Restarts that stop early hold zeros past their last step: the bar shows the best restart's latest value."""
    import importlib

    infer_module = importlib.import_module("jaxvi.infer")
    x = _mixture_data(90)
    gm = gaussian_mixture(3, init="kmeans++")  # k-means starts all converge at once here
    method = jaxvi.EM(m_step=gm.m_step, max_iter=40, n_init=3)
    runs = infer_module._start(gm.model, method, x, KEY, None)  # restarts from jax.random.split(KEY, 3)
    runs = infer_module._run(gm.model, method, runs, data=x, stop=jnp.asarray(41))
    steps = np.asarray(runs.n_iter)
    assert len(set(steps.tolist())) > 1  # the restarts stopped at different steps
    latest = max(float(runs.trace[i, s - 1]) for i, s in enumerate(steps))
    assert infer_module._describe("log p(D)", 90, runs) == f"log p(D)/N={latest / 90:.5g}"
    assert latest < 0
