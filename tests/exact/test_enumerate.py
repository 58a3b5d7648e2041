"""The enumeration E-step against hand-computed closed forms and brute-force sums."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvi
from jaxvi.chunks import map_data, sum_data
from jaxvi.exact import enumerate as enumeration

WEIGHTS, LOCS, SCALES = np.array([0.3, 0.7]), np.array([-1.0, 2.0]), np.array([0.5, 1.5])
PARAMS = {"log_w": jnp.log(jnp.asarray(WEIGHTS)), "loc": jnp.asarray(LOCS), "scale": jnp.asarray(SCALES)}
X = np.array([-1.2, 0.0, 0.4, 2.5, 5.0])


def mixture_log_joint(params, z, x):
    return params["log_w"][z] + jax.scipy.stats.norm.logpdf(x, params["loc"][z], params["scale"][z])


def normal_pdf(x, loc, scale):
    return math.exp(-0.5 * ((x - loc) / scale) ** 2) / (scale * math.sqrt(2 * math.pi))


def test_two_component_mixture_matches_hand_computed_responsibilities_and_evidence():
    post = enumeration.posterior(mixture_log_joint, jaxvi.Discrete(2), PARAMS, jnp.asarray(X))
    for i, x in enumerate(X):
        joint = [WEIGHTS[k] * normal_pdf(x, LOCS[k], SCALES[k]) for k in range(2)]
        np.testing.assert_allclose(post.log_evidence[i], math.log(sum(joint)), rtol=1e-6)
        np.testing.assert_allclose(post.probs[i], np.array(joint) / sum(joint), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(post.probs.sum(axis=1), 1.0, rtol=1e-6)


def test_expect_equals_the_explicit_sum():
    post = enumeration.posterior(mixture_log_joint, jaxvi.Discrete(2), PARAMS, jnp.asarray(X))
    probs = np.asarray(post.probs)
    f_of_z = post.expect(lambda z: jnp.array([z**2 + 1.0, jnp.sin(z)]))
    explicit = probs @ np.array([[k**2 + 1.0, np.sin(k)] for k in range(2)])
    np.testing.assert_allclose(f_of_z, explicit, rtol=1e-5)
    f_of_zx = post.expect(lambda z, x: x * jnp.asarray(LOCS)[z] + z, jnp.asarray(X), chunk_size=2)
    explicit = [sum(probs[i, k] * (x * LOCS[k] + k) for k in range(2)) for i, x in enumerate(X)]
    np.testing.assert_allclose(f_of_zx, explicit, rtol=1e-5)


def test_a_pytree_of_discrete_latents_is_enumerated_over_the_product():
    table = np.random.default_rng(1).normal(size=(2, 3, 4))

    def log_joint(params, z, x):
        return params[z["a"], z["b"][0], z["b"][1]] * x

    latent = {"a": jaxvi.Discrete(2), "b": (jaxvi.Discrete(3), jaxvi.Discrete(4))}
    data = jnp.asarray([0.5, -2.0, 1.0])
    post = enumeration.posterior(log_joint, latent, jnp.asarray(table), data)
    assert post.probs.shape == (3, 24)
    for i, x in enumerate(np.asarray(data)):
        joint = {abc: table[abc] * x for abc in itertools.product(range(2), range(3), range(4))}
        log_z = np.log(sum(np.exp(v) for v in joint.values()))
        np.testing.assert_allclose(post.log_evidence[i], log_z, rtol=1e-5)
        values = jax.tree_util.tree_map(np.asarray, post.values)
        for m in range(24):
            abc = (values["a"][m], values["b"][0][m], values["b"][1][m])
            np.testing.assert_allclose(post.probs[i, m], np.exp(joint[abc] - log_z), rtol=1e-4, atol=1e-7)
        marg = post.marginals(latent)
        brute_b1 = [sum(np.exp(v - log_z) for abc, v in joint.items() if abc[2] == k) for k in range(4)]
        np.testing.assert_allclose(marg["b"][1][i], brute_b1, rtol=1e-4, atol=1e-7)


def test_elbo_plus_kl_is_the_log_evidence_for_any_q():
    data = jnp.asarray(X)
    post = enumeration.posterior(mixture_log_joint, jaxvi.Discrete(2), PARAMS, data)
    brute_log_evidence = [math.log(sum(WEIGHTS[k] * normal_pdf(x, LOCS[k], SCALES[k]) for k in range(2))) for x in X]
    for seed in range(5):
        log_q = jax.nn.log_softmax(3 * jax.random.normal(jax.random.key(seed), (len(X), 2)))
        bound = enumeration.elbo(mixture_log_joint, jaxvi.Discrete(2), PARAMS, data, log_q)
        gap = post.kl_from(log_q)
        assert np.all(np.asarray(gap) > 0)
        assert np.all(np.asarray(bound) < brute_log_evidence)
        np.testing.assert_allclose(bound + gap, brute_log_evidence, rtol=1e-5)
    exact = enumeration.elbo(mixture_log_joint, jaxvi.Discrete(2), PARAMS, data, post.log_probs)
    np.testing.assert_allclose(exact, brute_log_evidence, rtol=1e-5)
    np.testing.assert_allclose(post.kl_from(post.log_probs), 0.0, atol=1e-5)


def test_expected_log_joint_is_the_weighted_table_sum():
    data = jnp.asarray(X)
    post = enumeration.posterior(mixture_log_joint, jaxvi.Discrete(2), PARAMS, data)
    probs = np.asarray(post.probs)
    brute = sum(probs[i, k] * (math.log(WEIGHTS[k]) + math.log(normal_pdf(x, LOCS[k], SCALES[k])))
                for i, x in enumerate(X) for k in range(2))
    np.testing.assert_allclose(enumeration.expected_log_joint(mixture_log_joint, PARAMS, data, post, 2), brute,
                               rtol=1e-5)


@pytest.mark.parametrize("n, chunk", [(7, 3), (6, 3), (5, 8), (1, 1)])
def test_chunked_map_and_sum_equal_plain_vmap(n, chunk):
    data = {"a": jnp.arange(n * 2.0).reshape(n, 2), "b": jnp.arange(n) % 3}

    def f(x):
        return jnp.sin(x["a"]).sum() * x["b"]

    np.testing.assert_allclose(map_data(f, data, chunk), jax.vmap(f)(data), rtol=1e-6)
    chunk_total = sum_data(lambda c: jax.vmap(f)(c).sum(), data, chunk)
    np.testing.assert_allclose(chunk_total, jax.vmap(f)(data).sum(), rtol=1e-6)


@pytest.mark.parametrize("n, chunk, shapes", [(1000, 128, [125]), (1009, 128, [128, 113]), (200_000, 1024, [1000])])
def test_chunks_are_equal_where_n_has_a_divisor_near_the_chunk_size(n, chunk, shapes):
    """The chunk is traced once, for one shape, where N has a divisor in (chunk / 2, chunk]; N = 1,009 (a prime) has
    none: 7 chunks of 128 and a remainder of 113, each traced once."""
    from jaxvi.chunks import equal_chunk_size

    assert equal_chunk_size(n, chunk) == shapes[0]
    traced = []

    def chunk_sum(c):
        traced.append(c.shape[0])
        return jnp.sum(c)

    data = jnp.arange(n, dtype=jnp.float32) % 7  # sums exact in float32
    assert float(sum_data(chunk_sum, data, chunk)) == float(np.sum(np.arange(n) % 7))
    assert sorted(set(traced), reverse=True) == shapes
