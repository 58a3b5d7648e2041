"""Streamed E-steps (a Statistics M-step) equal the in-memory fit with memory bounded by a chunk; online EM
reaches the batch fit."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvi

KEY = jax.random.key(0)
infer_module = importlib.import_module("jaxvi.infer")


def clusters(n, seed=0, d=2, k=3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 4
    return centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))


def without_shift(fit):
    """The zoo's statistics as a user would write them without ``Statistics.shift``: three-argument ``collect`` and
    ``maximize``, the sums about the origin."""
    stats, origin = fit.statistics, jnp.zeros((3, 3))
    own = jaxvi.Statistics(lambda params, chunk, post: stats.collect(params, chunk, post, shift=origin),
                           lambda params, sums, n: stats.maximize(params, sums, n, shift=origin))
    return fit._replace(statistics=own)


@pytest.mark.parametrize("zoo", ["gmm full", "gmm diag", "factor analysis", "ppca", "statistics without a shift"])
def test_a_streamed_e_step_gives_the_in_memory_fit(zoo):
    make = {"gmm full": lambda: jaxvi.models.gaussian_mixture(3), "gmm diag": lambda: jaxvi.models.gaussian_mixture(
        3, covariance="diag"), "factor analysis": lambda: jaxvi.models.factor_analysis(1),
            "ppca": lambda: jaxvi.models.ppca(1),
            "statistics without a shift": lambda: without_shift(jaxvi.models.gaussian_mixture(3))}[zoo]
    with jax.enable_x64(True):
        x = clusters(1000, d=3)                                   # 1000 = 7 chunks of 128 and a rest of 104
        fit = make()
        memory = jaxvi.infer(fit.model, jaxvi.EM(m_step=fit.m_step, max_iter=25, tol=0.0), x, key=KEY, progress=False)
        streamed = jaxvi.infer(fit.model, jaxvi.EM(m_step=fit.statistics, max_iter=25, tol=0.0, chunk_size=128), x,
                               key=KEY, progress=False)
    np.testing.assert_allclose(streamed.trace, memory.trace, rtol=1e-10)
    for a, b in zip(jax.tree_util.tree_leaves(streamed.params), jax.tree_util.tree_leaves(memory.params)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def temp_bytes(method, n):
    """The scratch memory of the compiled EM iterations (not of the initialiser, which sees all data at once)."""
    gm = jaxvi.models.gaussian_mixture(8)
    x = jnp.asarray(clusters(n, k=8), jnp.float32)
    runs = infer_module._start(gm.model, method(gm), x, KEY, None)
    compiled = infer_module._run.lower(gm.model, method(gm), runs, data=x, stop=jnp.asarray(4)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_a_streamed_e_step_holds_one_chunk_not_every_datum():
    """XLA's own account of the compiled iterations (K = 8 components, D = 2): the streamed E-step's scratch
    memory is at most about one copy of the data (N x D floats), never the N x K responsibilities that the
    in-memory E-step holds."""
    streamed = lambda gm: jaxvi.EM(m_step=gm.statistics, max_iter=3, chunk_size=256)
    memory = lambda gm: jaxvi.EM(m_step=gm.m_step, max_iter=3, chunk_size=256)
    n, d, k, float_bytes = 65536, 2, 8, 4
    assert temp_bytes(streamed, n) < 1.2 * n * d * float_bytes
    assert temp_bytes(memory, n) > n * k * float_bytes


def test_a_streamed_fault_names_the_chunk():
    x = clusters(1000).astype(np.float32)

    def log_joint(params, z, x):
        trap = jnp.where((x[0] == 123.0) & (params.means[0, 0] > -1e9), jnp.nan, 0.0)
        return gm.model.log_joint(params, z, x) + trap

    gm = jaxvi.models.gaussian_mixture(3)
    model = jaxvi.Model(log_joint, gm.model.latent, gm.model.init)
    # 1,000 data in equal chunks of 125 (chunk_size=128: the largest divisor of 1,000 up to 128), datum 300 in the third
    with pytest.raises(ValueError, match=r"not finite for a datum in \[250, 375\)"):
        jaxvi.infer(model, jaxvi.EM(m_step=gm.statistics, chunk_size=128), x.at[300, 0].set(123.0) if hasattr(
            x, "at") else np.where(np.arange(1000)[:, None] == 300, 123.0, x).astype(np.float32), key=KEY,
            progress=False)


@pytest.mark.parametrize("zoo", ["gmm", "factor analysis"])
def test_online_em_reaches_the_batch_fit_in_a_few_passes(zoo):
    n = 5_000
    if zoo == "gmm":
        x, fit = clusters(n, k=4).astype(np.float32), jaxvi.models.gaussian_mixture(4)
    else:
        rng = np.random.default_rng(1)
        x = (rng.normal(size=(n, 2)) @ rng.normal(size=(2, 5)) + 0.5 * rng.normal(size=(n, 5))).astype(np.float32)
        fit = jaxvi.models.factor_analysis(2)
    restarts = 4 if zoo == "gmm" else 1  # factor analysis starts from PCA, the same start for every restart
    batch = jaxvi.infer(fit.model, jaxvi.EM(m_step=fit.m_step, max_iter=300, tol=0.0, n_init=restarts), x, key=KEY,
                        progress=False)
    online = jaxvi.infer(fit.model, jaxvi.OnlineEM(fit.statistics, batch_size=250, num_steps=200, n_init=4), x,
                         key=KEY, progress=False)                 # 10 passes over the data
    assert float(online.objective) <= float(batch.objective) + 1e-4 * abs(float(batch.objective))
    assert (float(batch.objective) - float(online.objective)) / n < 0.01      # nats per datum
    # the trace holds unbiased minibatch estimates of log p(D), near the final one at the end
    tail = np.asarray(online.trace)[-100:]
    assert abs(tail.mean() - float(online.objective)) < 4.5 * tail.std() / np.sqrt(len(tail)) + 1e-3 * abs(tail.mean())


@pytest.mark.parametrize("zoo, method", [("gmm full", "online"), ("gmm diag", "streamed"),
                                         ("factor analysis", "online"), ("factor analysis svd", "streamed")])
def test_statistics_of_data_far_from_the_origin_keep_their_spread_in_float32(zoo, method):
    """Data at 10^4 with unit spread: float32 sums of raw moments keep none of the spread's digits (the streamed GMM's
    precisions went non-finite at the first step; online EM's objective was 6.3e6 nats per datum off). Summed about
    a θ's means (``Statistics.shift``), the fit is the fit of the same float32 data moved to 0 (exactly) from the same
    start moved alike, as EM's is (it commutes with moving the data), to what float32 resolves at 10^4: there the
    means are held to its spacing s = 2^-10, and a mean off by s/2 moves a datum's quadratic form by about
    s |x - mu| / sigma^2 per dimension, random in sign over the data, so log p(D) / N by about D s / sqrt(N) (when this
    test was written the float32 fits far from 0 were also within 5.3e-6 of float64's from the same start)."""
    make = {"gmm full": lambda: jaxvi.models.gaussian_mixture(3), "gmm diag": lambda: jaxvi.models.gaussian_mixture(
        3, covariance="diag"), "factor analysis": lambda: jaxvi.models.factor_analysis(1),
            "factor analysis svd": lambda: jaxvi.models.factor_analysis(1, update="svd")}[zoo]
    n, d = 2000, 3
    far = (clusters(n, d=d) + 1e4).astype(np.float32)
    near = (far.astype(np.float64) - 1e4).astype(np.float32)            # the same data at 0, exactly
    fit = make()
    method = (jaxvi.OnlineEM(fit.statistics, batch_size=200, num_steps=100) if method == "online"
              else jaxvi.EM(m_step=fit.statistics, max_iter=20, tol=0.0, chunk_size=256))

    def moved(params, by):  # a mixture's means or factor analysis' mean moved by ``by``
        return params._replace(**{f: getattr(params, f) + by for f in ("means", "mean") if f in params._fields})

    start = fit.model.init(KEY, jnp.asarray(near))
    fits = [jaxvi.infer(fit.model, method, data, key=KEY, progress=False, init_params=moved(start, by))
            for data, by in ((near, 0.0), (far, 1e4))]                  # one compiled program for both
    spacing = float(np.spacing(np.float32(1e4)))
    assert abs(float(fits[1].objective) - float(fits[0].objective)) / n < d * spacing / np.sqrt(n)


@pytest.mark.parametrize("kwargs, message", [
    ({"statistics": lambda p, d, q: p}, "OnlineEM\\(statistics\\)"),
    ({"batch_size": 0}, "OnlineEM\\(batch_size\\)"), ({"step_size_power": 0.5}, "step_size_power"),
])
def test_bad_online_em_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jaxvi.OnlineEM(**{"statistics": jaxvi.models.gaussian_mixture(2).statistics, **kwargs})


def test_online_em_refuses_a_batch_larger_than_the_data():
    gm = jaxvi.models.gaussian_mixture(2)
    with pytest.raises(ValueError, match="OnlineEM\\(batch_size\\): expected at most the number of data, 10"):
        jaxvi.infer(gm.model, jaxvi.OnlineEM(gm.statistics, batch_size=11), np.zeros((10, 2), np.float32), key=KEY)


def test_online_em_s_default_batch_takes_fewer_data_than_256():
    """OnlineEM(statistics) on 100 data refused its own default batch of 256; it now steps on all of them, and on
    two clusters reaches EM's log p(D)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-3, 1, (50, 2)), rng.normal(3, 1, (50, 2))]).astype(np.float32)
    gm = jaxvi.models.gaussian_mixture(2)
    method = jaxvi.OnlineEM(gm.statistics, num_steps=200)
    assert method.schedule(100).batch_size == 100 and method.schedule(10_000).batch_size == 256
    online = jaxvi.infer(gm.model, method, x, key=KEY, progress=False)
    em = jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step), x, key=KEY, progress=False)
    np.testing.assert_allclose(float(online.objective), float(em.objective), rtol=1e-6)


def test_online_em_s_final_fault_names_the_chunk_and_keeps_the_last_finite_step():
    """A datum no minibatch drew breaks the log-joint: the steps never see it, the final log p(D) on all the data
    does (it used to come back as -inf with no fault). err.result holds the last step's parameters and its
    minibatch estimate of log p(D), the last finite value the fit had."""
    from jaxvi.chunks import minibatch
    from jaxvi.run import step_keys

    n, batch_size, steps = 1000, 10, 5
    gm = jaxvi.models.gaussian_mixture(3)
    _, run_key = jax.random.split(KEY)
    batches = [minibatch(step_keys(run_key, jnp.asarray(t))[1], n, batch_size) for t in range(steps)]
    trap = int(np.setdiff1d(np.arange(300, 375), np.concatenate(batches))[0])  # in the third chunk of 125
    x = clusters(n).astype(np.float32)
    x[trap, 0] = 123.0

    def log_joint(params, z, x):
        return gm.model.log_joint(params, z, x) + jnp.where(x[0] == 123.0, jnp.nan, 0.0)

    model = jaxvi.Model(log_joint, gm.model.latent, gm.model.init)
    method = jaxvi.OnlineEM(gm.statistics, batch_size=batch_size, num_steps=steps, chunk_size=128)
    with pytest.raises(FloatingPointError, match=r"OnlineEM's final evaluation \(on all the data, after 5 steps\) "
                                                 r"failed: log p\(x_i\) was not finite for a datum in \[250, 375\)"
                       ) as err:
        jaxvi.infer(model, method, x, key=KEY, progress=False)
    result = err.value.result
    state = method.init(model, jax.random.split(KEY)[0], jnp.asarray(x))
    step = jax.jit(lambda s, index: method.step(model, KEY, s, jaxvi.Batch(index, jnp.asarray(x)[index]), num_data=n))
    for index in batches:
        kept, (state, info) = state, step(state, index)
    assert int(result.n_iter) == steps - 1 and np.isfinite(float(info.objective))
    np.testing.assert_allclose(float(result.objective), float(info.objective), rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(result.params), jax.tree_util.tree_leaves(kept.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n, size, streamed", [(24, 8, False), (40, 8, True), (300, 4, True)])  # streamed: n > 4 size
def test_minibatches_are_uniform_draws_without_replacement(n, size, streamed):
    """20,000 minibatches: no index twice in one; every index, every pair of indices and every index in the first
    position as often as a uniform draw without replacement gives them (within 5 standard errors)."""
    from jaxvi.chunks import TOP_K_MINIBATCH, minibatch
    assert (n > TOP_K_MINIBATCH * size) == streamed
    reps = 20_000
    draws = np.asarray(jax.jit(jax.vmap(lambda k: minibatch(k, n, size)))(jax.random.split(jax.random.key(1), reps)))
    assert draws.min() >= 0 and draws.max() < n
    assert all(len(set(row)) == size for row in draws.tolist())
    for observed, p in [(np.bincount(draws.ravel(), minlength=n) / reps, size / n),
                        (np.mean(np.any(draws == 0, 1) & np.any(draws == 1, 1)), size * (size - 1) / (n * (n - 1))),
                        (np.bincount(draws[:, 0], minlength=n) / reps, 1 / n)]:
        assert np.all(np.abs(observed - p) < 5 * np.sqrt(p * (1 - p) / reps)), (observed, p)
    big = np.asarray(minibatch(jax.random.key(2), 2 ** 23, 256))  # (value, position) too large for int32 keys
    assert len(set(big.tolist())) == 256 and big.min() >= 0 and big.max() < 2 ** 23
