"""Bad input raises a ValueError naming the argument, before anything is compiled."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvi


def log_joint(params, z, x):
    return jax.scipy.stats.norm.logpdf(x, params[z], 1.0).sum() - jnp.log(2.0)


def init(key, data):
    return jnp.array([-1.0, 1.0])


MODEL = jaxvi.Model(log_joint, jaxvi.Discrete(2), init)
KEY = jax.random.key(0)
GOOD = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)


def fit(model=MODEL, data=GOOD, method=None, key=KEY, **kwargs):
    return jaxvi.infer(model, method or jaxvi.EM(max_iter=3), data, key=key, progress=False, **kwargs)


@pytest.mark.parametrize("bad, message", [
    (np.where(np.arange(40).reshape(20, 2) == 7, np.nan, GOOD), r"data: expected finite values, got nan at index \(3, 1\)"),
    (np.where(np.arange(40).reshape(20, 2) == 0, np.inf, GOOD), r"data: expected finite values, got inf"),
    (np.float32(1.0), r"data: expected a leading datum axis"),
    (np.zeros((0, 2), np.float32), r"data: expected at least one datum"),
    ({"a": GOOD, "b": GOOD[:5]}, r"data: every leaf needs the same leading \(datum\) axis"),
    ({}, r"data: expected an array or a pytree of arrays"),
    (np.array([["a", "b"]]), r"data: expected a numeric array"),
])
def test_bad_data(bad, message):
    with pytest.raises(ValueError, match=message):
        fit(data=bad)


@pytest.mark.parametrize("k", [0, -3, 2.5, "3"])
def test_discrete_needs_a_positive_integer(k):
    with pytest.raises(ValueError, match=r"Discrete\(K\): expected an integer >= 1"):
        jaxvi.Discrete(k)


def test_a_log_joint_that_returns_a_vector_is_rejected():
    model = jaxvi.Model(lambda p, z, x: x * p[z], jaxvi.Discrete(2), init)
    with pytest.raises(ValueError, match=r"log_joint: expected a scalar log density for one datum, got .*\(2,\)"):
        fit(model)


def test_a_log_joint_that_returns_an_integer_is_rejected():
    model = jaxvi.Model(lambda p, z, x: z * 2, jaxvi.Discrete(2), init)
    with pytest.raises(ValueError, match=r"log_joint: expected a real floating-point scalar, got dtype int32"):
        fit(model)


def test_a_log_joint_that_fails_on_the_datum_shape_names_the_shapes():
    model = jaxvi.Model(lambda p, z, x: jnp.dot(x, jnp.ones(5)) + p[z], jaxvi.Discrete(2), init)
    with pytest.raises(ValueError, match=r"log_joint: log_joint\(params, z, x\) failed for one datum x of shapes \(2,\)"):
        fit(model)


def test_an_init_that_fails_is_named():
    model = jaxvi.Model(log_joint, jaxvi.Discrete(2), lambda key, data: data["missing"])
    with pytest.raises(ValueError, match=r"init: init\(key, data\) failed"):
        fit(model)


def test_initial_params_with_non_finite_log_joint_are_rejected():
    model = jaxvi.Model(log_joint, jaxvi.Discrete(2), lambda key, data: jnp.array([-1.0, jnp.nan]))
    with pytest.raises(ValueError, match=r"init: expected initial parameters at which log_joint is finite.*datum 0"):
        fit(model)
    with pytest.raises(ValueError, match=r"init: expected initial parameters"):
        fit(init_params=jnp.array([jnp.inf, -jnp.inf]))


@pytest.mark.parametrize("key", [0, np.array([1, 2, 3]), jnp.zeros(2, jnp.float32), jax.random.split(KEY, 2)])
def test_bad_keys(key):
    with pytest.raises(ValueError, match=r"key: expected"):
        fit(key=key)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_iter=0), r"EM\(max_iter\): expected an integer >= 1"),
    (dict(n_init=1.5), r"EM\(n_init\): expected an integer >= 1"),
    (dict(tol=-1.0), r"EM\(tol\): expected a number >= 0"),
    (dict(m_step="closed"), r"EM\(m_step\): expected a function"),
    (dict(m_step_optimizer=lambda g: g), r"EM\(m_step_optimizer\): expected an optax GradientTransformation"),
    (dict(chunk_size=0), r"EM\(chunk_size\): expected an integer >= 1"),
])
def test_bad_em_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jaxvi.EM(**kwargs)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match=r"model: expected a jaxvi.Model"):
        fit(model=log_joint)
    with pytest.raises(ValueError, match=r"method: expected a jaxvi method"):
        fit(method="EM")
    with pytest.raises(ValueError, match=r"init_params: a single starting point needs n_init=1"):
        fit(method=jaxvi.EM(n_init=2), init_params=jnp.zeros(2))
    with pytest.raises(ValueError, match=r"Model\(log_joint\): expected a function"):
        jaxvi.Model("not a function", jaxvi.Discrete(2), init)
    with pytest.raises(ValueError, match=r"latent: exact enumeration needs Discrete specs"):
        fit(model=jaxvi.Model(log_joint, "two", init))


def test_an_m_step_returning_the_wrong_structure_is_named():
    with pytest.raises(ValueError, match=r"EM\(m_step\): expected params with the structure of init's"):
        fit(method=jaxvi.EM(m_step=lambda params, data, post: {"a": params}))


@pytest.mark.parametrize("make, message", [
    (lambda: jaxvi.Markov(0), r"Markov\(K\): expected an integer >= 1"),
    (lambda: jaxvi.Gaussian(0), r"Gaussian\(d\): expected an integer >= 1"),
    (lambda: jaxvi.Real((-1,)), r"Real\(shape\): expected a tuple of integers >= 0"),
    (lambda: jaxvi.Real((2,), bijector="exp"), r"Real\(bijector\): expected a distrax bijector"),
    (lambda: jaxvi.Global({"w": jaxvi.Discrete(2)}, lambda p, z: 0.0), r"Global\(latent\): expected a Real spec"),
])
def test_bad_latent_specs(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_sequences():
    hmm = jaxvi.models.gaussian_hmm(2)
    obs = np.zeros((3, 5, 1), np.float32)
    with pytest.raises(ValueError, match=r"data.lengths: expected lengths in \[1, 5\]"):
        fit(hmm.model, jaxvi.Sequences(obs, np.array([5, 6, 2])))
    with pytest.raises(ValueError, match=r"data.lengths: expected 3 integers"):
        fit(hmm.model, jaxvi.Sequences(obs, np.array([5, 2])))
    with pytest.raises(ValueError, match=r"data: a Markov latent needs sequences"):
        fit(hmm.model, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"data: gaussian_hmm expects sequences of shape \(N, T, D\)"):
        fit(hmm.model, np.zeros((3, 5), np.float32))


def test_bad_vi_inputs():
    latent = jaxvi.Global({"mu": jaxvi.Real(())}, lambda p, z: -z["mu"] ** 2)
    model = jaxvi.Model(lambda p, z, x: -(x - z["mu"]) ** 2, latent, lambda k, d: {})
    x = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match=r"SVI\(batch_size\): expected at most the number of data, 10"):
        fit(model, x, jaxvi.SVI(batch_size=11))
    with pytest.raises(ValueError, match=r"SVI\(optimizer\): expected an optax GradientTransformation"):
        jaxvi.SVI(optimizer=lambda g: g)
    with pytest.raises(ValueError, match=r"Amortized\(optimizer\): expected an optax GradientTransformation"):
        jaxvi.Amortized(num_steps=1, optimizer="adam")
    with pytest.raises(ValueError, match=r"fit it with jaxvi.SVI"):
        fit(model, x)
    nan_prior = jaxvi.Global({"mu": jaxvi.Real(())}, lambda p, z: jnp.log(z["mu"] - 10.0))
    with pytest.raises(ValueError, match=r"init: expected initial parameters at which the ELBO is finite, but its "
                                         r"log_prior term is not finite"):
        fit(jaxvi.Model(lambda p, z, x: -(x - z["mu"]) ** 2, nan_prior, lambda k, d: {}), x, jaxvi.SVI(num_steps=3))
    vae = jaxvi.models.vae(2, 3)
    with pytest.raises(ValueError, match=r"Amortized\(batch_size\): expected at most the 9 training data"):
        fit(vae.model, np.zeros((10, 3), np.float32), jaxvi.Amortized(num_steps=2, batch_size=10))
    with pytest.raises(ValueError, match=r"data: expected data of 3 values per datum"):
        fit(vae.model, np.zeros((10, 4), np.float32), jaxvi.Amortized(num_steps=2, batch_size=5))
