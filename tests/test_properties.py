"""Property tests: random shapes and values either fit with finite results or stop with a clear error
(a ValueError for bad input, a FloatingPointError naming where a fit went numerically wrong): never a NaN
result, never an error from inside XLA."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import HealthCheck, given, settings, strategies as st

import jaxvi

SETTINGS = settings(max_examples=8, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def finite_or_clear_error(fit):
    try:
        result = fit()
    except (ValueError, FloatingPointError) as err:
        assert str(err).split(":")[0], err                   # the message names what it is about
        return None
    for leaf in jax.tree_util.tree_leaves((result.params, result.objective, result.trace, result.guide_params)):
        assert np.all(np.isfinite(np.asarray(leaf))), result.summary()
    return result


data = dict(n=st.integers(1, 25), d=st.integers(1, 3), scale=st.sampled_from([1e-4, 1.0, 1e4]),
            seed=st.integers(0, 2**16), copies=st.integers(1, 3), outlier=st.booleans())


def sample(n, d, scale, seed, copies, outlier):
    rng = np.random.default_rng(seed)
    x = np.repeat(rng.normal(size=(-(-n // copies), d)) * scale, copies, axis=0)[:n]  # duplicated data
    if outlier:
        x[0] = 1e6 * scale
    return x.astype(np.float32)


@SETTINGS
@given(k=st.integers(1, 4), covariance=st.sampled_from(["full", "diag"]), **data)
def test_em_on_random_mixtures(k, covariance, n, d, scale, seed, copies, outlier):
    x = sample(n, d, scale, seed, copies, outlier)
    gm = jaxvi.models.gaussian_mixture(k, covariance=covariance)
    finite_or_clear_error(lambda: jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step, max_iter=20), x,
                                              key=jax.random.key(seed), progress=False))


@SETTINGS
@given(k=st.integers(1, 3), t=st.integers(1, 12), **data)
def test_em_on_random_hmms(k, t, n, d, scale, seed, copies, outlier):
    x = sample(n * t, d, scale, seed, copies, outlier).reshape(n, t, d)
    hmm = jaxvi.models.gaussian_hmm(k)
    finite_or_clear_error(lambda: jaxvi.infer(hmm.model, jaxvi.EM(m_step=hmm.m_step, max_iter=10), x,
                                              key=jax.random.key(seed), progress=False))


@SETTINGS
@given(batch=st.integers(1, 30), guide=st.sampled_from(["MeanField", "FullRank", "Delta"]), **data)
def test_svi_on_random_global_models(batch, guide, n, d, scale, seed, copies, outlier):
    x = sample(n, d, scale, seed, copies, outlier)
    latent = jaxvi.Global({"mu": jaxvi.Real((d,)), "sd": jaxvi.Real((), bijector=jaxvi.positive())},
                          lambda p, z: jnp.sum(jax.scipy.stats.norm.logpdf(z["mu"], 0, 10)) - z["sd"])
    model = jaxvi.Model(lambda p, z, x: jnp.sum(jax.scipy.stats.norm.logpdf(x, z["mu"], z["sd"])), latent,
                        lambda k, d: {})
    method = jaxvi.SVI(guide=getattr(jaxvi, guide)(), num_steps=50, batch_size=batch, optimizer=optax.adam(1e-2))
    finite_or_clear_error(lambda: jaxvi.infer(model, method, x, key=jax.random.key(seed), progress=False))
