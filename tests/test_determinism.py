"""The same key and inputs give bit-identical results on the same backend, for every method."""
import jax
import numpy as np
import optax
import pytest

import jaxvi

KEY = jax.random.key(7)
X = np.random.default_rng(0).normal(size=(120, 3)).astype(np.float32)


def cases():
    gm = jaxvi.models.gaussian_mixture(3)
    fa = jaxvi.models.factor_analysis(1)
    vae = jaxvi.models.vae(2, 3, decoder=jaxvi.nn.mlp((8,)), likelihood="gaussian")
    return {
        "EM with restarts": (gm.model, jaxvi.EM(m_step=gm.m_step, n_init=3, max_iter=20)),
        "EM, gradient M-step": (gm.model, jaxvi.EM(max_iter=5)),
        "SVI on minibatches": (fa.model, jaxvi.SVI(num_steps=100, batch_size=16, optimizer=optax.adam(1e-2))),
        "SVI, categorical guide": (gm.model, jaxvi.SVI(discrete="guide", num_particles=3, num_steps=30)),
        "amortized": (vae.model, jaxvi.Amortized(encoder=jaxvi.nn.mlp((8,)), num_steps=40, batch_size=16)),
    }


@pytest.mark.parametrize("name", list(cases()))
def test_same_key_same_bits(name):
    model, method = cases()[name]
    first = jaxvi.infer(model, method, X, key=KEY, progress=False)
    second = jaxvi.infer(model, method, X, key=KEY, progress=True)    # the chunked path too
    for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = jaxvi.infer(model, method, X, key=jax.random.key(8), progress=False)
    assert not np.array_equal(np.asarray(other.trace), np.asarray(first.trace))
