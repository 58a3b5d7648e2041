"""``jaxvi.infer(..., on_nonfinite="skip")``: a faulty step is rejected, counted and retried with fresh keys; the
default ``"stop"`` is unchanged."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxvi

KEY = jax.random.key(0)
PRIOR_SD, THRESHOLD = 3.0, 1.55


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).normal(1.0, 1.0, 50).astype(np.float32)


def rare_nan_model():
    """x_i ~ N(mu, 1), mu ~ N(0, 3^2), with a log-joint that is NaN where mu > 1.55: a region q reaches on rare
    draws only (the posterior is N(1.13, 0.14^2) here, 3.0 standard deviations below it: 1.4e-3 of its mass)."""
    def log_joint(params, z, x):
        return jnp.where(z["mu"] > THRESHOLD, jnp.nan, jax.scipy.stats.norm.logpdf(x, z["mu"], 1.0))
    latent = jaxvi.Global({"mu": jaxvi.Real(())}, log_prior=lambda p, z: jax.scipy.stats.norm.logpdf(z["mu"], 0, PRIOR_SD))
    return jaxvi.Model(log_joint, latent, lambda key, data: {})


def test_skip_finishes_a_fit_that_stop_ends_at_the_first_nan(data):
    """A step's particles meet the NaN region and the skipping run's final 100 particles do not (probability about
    0.87: of the first twelve keys, eleven draw this case; key 4's final evaluation meets the region, a fault of its
    own). The step decays to a tenth over the second half of the run, so that q ends at the posterior whatever the
    key (at a constant step, q's mean and sd wandered past the checks below for two of the twelve)."""
    rate = optax.join_schedules([optax.constant_schedule(5e-2), optax.exponential_decay(5e-2, 300, 0.1)], [300])
    model, method = rare_nan_model(), jaxvi.SVI(num_steps=600, optimizer=optax.adam(rate), num_particles=4)
    key = KEY
    with pytest.raises(FloatingPointError, match=r"SVI stopped at step (\d+): the ELBO was not finite") as err:
        jaxvi.infer(model, method, data, key=key, progress=False)
    stopped = err.value.result
    assert int(stopped.diagnostics.skips.count) == 0
    with pytest.warns(UserWarning, match=r"SVI skipped (\d+) step\(s\) whose update was not finite .* the first, after "
                                         rf"{int(stopped.diagnostics.fault.iteration)} steps: the ELBO was not finite"):
        result = jaxvi.infer(model, method, data, key=key, progress=False, on_nonfinite="skip")
    skips = result.diagnostics.skips
    # the same keys up to the first fault: the skipped run met it where the stopped run stopped
    assert int(skips.first.iteration) == int(stopped.diagnostics.fault.iteration) > 0
    assert int(skips.first.kind) == jaxvi.result.FAULT_OBJECTIVE
    assert 1 <= int(skips.count) < 100 and int(result.n_iter) == 600
    assert int(result.diagnostics.fault.kind) == 0 and int(result.diagnostics.stop_reason) == 2  # max_iter
    # the fit is the conjugate posterior (the NaN region holds 1.4e-3 of its mass)
    precision = 1 / PRIOR_SD**2 + len(data)
    mean = np.sum(data, dtype=np.float64) / precision
    q = result.posterior()
    assert abs(float(q.mean()["mu"]) - mean) < 0.03 and abs(float(q.stddev()["mu"]) * np.sqrt(precision) - 1) < 0.15
    assert "skipped steps" in result.summary()


def test_skip_stops_after_max_skips_and_a_deterministic_step_fails_again():
    """EM's step has no randomness: retried, it fails the same way, so the run stops after max_skips tries with
    the fault "stop" reports at once."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(-2.0, 1.0, (40, 1)), rng.normal(2.0, 1.0, (40, 1))]).astype(np.float32)
    gm = jaxvi.models.gaussian_mixture(2, covariance="diag")

    def log_joint(params, z, x):  # NaN once a mean passes 1.5 (EM's closed-form M-step moves one toward 2)
        return jnp.where(jnp.max(params.means) > 1.5, jnp.nan, gm.model.log_joint(params, z, x))

    model = jaxvi.Model(log_joint, gm.model.latent, gm.model.init)
    start = gm.model.init(KEY, jnp.asarray(x))._replace(means=jnp.array([[-0.5], [0.5]], jnp.float32))
    errors = {}
    for policy in ("stop", "skip"):
        with pytest.raises(FloatingPointError, match=r"EM stopped at iteration (\d+): log p\(x_i\) became non-finite"
                                                     r" for datum 0") as err:
            jaxvi.infer(model, jaxvi.EM(m_step=gm.m_step, max_iter=50), x, key=KEY, progress=False,
                        init_params=start, on_nonfinite=policy, max_skips=3)
        errors[policy] = err.value.result
    stop, skip = errors["stop"].diagnostics, errors["skip"].diagnostics
    assert int(stop.skips.count) == 0 and int(skip.skips.count) == 3
    assert int(skip.skips.first.iteration) == int(skip.fault.iteration) == int(stop.fault.iteration) > 0
    assert int(skip.skips.first.kind) == int(skip.fault.kind) == jaxvi.result.FAULT_LOG_EVIDENCE
    for a, b in zip(jax.tree_util.tree_leaves(errors["skip"].params), jax.tree_util.tree_leaves(errors["stop"].params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs, message", [
    ({"on_nonfinite": "ignore"}, "on_nonfinite: expected 'stop' or 'skip', got 'ignore'"),
    ({"on_nonfinite": "skip", "max_skips": 0}, "max_skips: expected an integer >= 1, got 0"),
    ({"max_skips": 2.5}, "max_skips: expected an integer >= 1, got 2.5"),
])
def test_bad_nonfinite_policies_are_named(data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        jaxvi.infer(rare_nan_model(), jaxvi.SVI(num_steps=5), data, key=KEY, progress=False, **kwargs)


def test_tree_where_picks_like_trees_by_cond_and_equals_a_leafwise_where():
    """The fault guard's select: for a scalar predicate between trees of like leaves, one ``lax.cond`` (XLA copies the
    chosen tree instead of compiling a select per leaf); else, and under ``vmap`` with a batched predicate, the
    leafwise ``jnp.where``. Every form equals NumPy's leafwise choice."""
    from jaxvi.methods.common import tree_where

    rng = np.random.default_rng(0)
    new = {"w": rng.normal(size=(3, 2)).astype(np.float32), "count": np.int32(7), "b": rng.normal(size=4).astype(np.float32)}
    old = {"w": rng.normal(size=(3, 2)).astype(np.float32), "count": np.int32(3), "b": rng.normal(size=4).astype(np.float32)}
    pick = jax.jit(tree_where)
    for pred in (True, False):
        got = pick(jnp.asarray(pred), new, old)
        for name in new:
            np.testing.assert_array_equal(got[name], new[name] if pred else old[name])
    primitives = {e.primitive.name for e in jax.make_jaxpr(tree_where)(jnp.asarray(True), new, old).eqns}
    assert "cond" in primitives and "select_n" not in primitives
    # a scalar broadcast against an array: leafwise where, as before
    got = pick(jnp.asarray(False), {"w": np.float32(0.0)}, {"w": new["w"]})
    np.testing.assert_array_equal(got["w"], new["w"])
    # a batched predicate (restarts under vmap): per restart
    preds = np.array([True, False, True])
    stacked_new = jax.tree_util.tree_map(lambda a: np.stack([a] * 3), new)
    stacked_old = jax.tree_util.tree_map(lambda a: np.stack([a] * 3), old)
    got = jax.vmap(tree_where)(jnp.asarray(preds), stacked_new, stacked_old)
    for name in new:
        for r, p in enumerate(preds):
            np.testing.assert_array_equal(got[name][r], (new if p else old)[name])
