"""Bad input raises a ValueError naming the argument, before anything is compiled."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
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
    (np.ones((20, 2), np.complex64), r"data: expected a numeric array, got dtype complex64"),
    (GOOD.astype(np.float16), r"data: expected float32 or float64 values, got float16"),  # LAPACK has no float16
    (jnp.asarray(GOOD, jnp.bfloat16), r"data: expected float32 or float64 values, got bfloat16"),
    (GOOD.astype(">f4"), r"data: expected values in this machine's byte order, got dtype >f4; convert: "
                         r"\.astype\(numpy\.float32\)"),
])
def test_bad_data(bad, message):
    with pytest.raises(ValueError, match=message):
        fit(data=bad)


@pytest.mark.parametrize("in_host_memory", [True, False])
def test_a_non_finite_value_is_found_in_host_memory_and_on_an_accelerator(in_host_memory, monkeypatch):
    """Data in host memory are checked there; on an accelerator (here: as if the CPU were one) in one compiled call
    for all leaves, which names the leaf and the index all the same."""
    from jaxvi import model as model_module

    monkeypatch.setattr(model_module, "_in_host_memory", lambda a: in_host_memory)
    good = jnp.asarray(GOOD)
    with pytest.raises(ValueError, match=r"data\['b'\]: expected finite values, got -inf at index \(4, 0\)"):
        model_module.check_data({"a": good, "b": good.at[4, 0].set(-jnp.inf), "c": GOOD})
    checked = model_module.check_data({"a": good, "b": GOOD})
    assert all(np.array_equal(checked[k], GOOD) for k in "ab")


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


def test_a_half_precision_log_joint_is_rejected():
    """A bfloat16 log-joint was fitted silently: its objective 0.13 nats off the exact log p(D) at its own parameters
    (the data themselves, in half precision, are refused as too coarse)."""
    model = jaxvi.Model(lambda p, z, x: (p[z] - jnp.sum(x ** 2)).astype(jnp.bfloat16), jaxvi.Discrete(2), init)
    with pytest.raises(ValueError, match=r"log_joint: expected a float32 or float64 scalar, got bfloat16, too coarse"):
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
    with pytest.raises(ValueError, match=r"init: expected initial parameters at which log_joint is finite"):
        fit(init_params=jnp.array([3e19, -3e19]))  # finite, but (x - 3e19)^2 overflows float32
    with pytest.raises(ValueError, match=r"init_params: expected finite values, got inf at index \(0,\)"):
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


GLOBAL = jaxvi.Global({"mu": jaxvi.Real(())}, lambda p, z: -z["mu"] ** 2)


@pytest.mark.parametrize("make_fit, message", [
    (lambda: fit(jaxvi.Model(lambda p, z, x: -jnp.sum((x - z["mu"] * p["s"]) ** 2), GLOBAL, lambda k, d: {"s": 1.0}),
                 GOOD, jaxvi.SVI(num_steps=2), init_params={"s": 1}),
     r"init_params\['s'\]: expected a floating-point array \(float32, as init\(key, data\) gives\), got dtype int32"),
    (lambda: fit(jaxvi.Model(lambda p, z, x: -jnp.sum((x - z["mu"] * p["s"]) ** 2), GLOBAL,
                             lambda k, d: {"s": jnp.array(1)}), GOOD, jaxvi.SVI(num_steps=2)),
     r"init: expected floating-point params, as SVI follows their gradient, got dtype int32 for leaf params\['s'\]"),
    (lambda: fit(jaxvi.Model(lambda p, z, x: log_joint(p["loc"], z, x) + 0.0 * p["n"], jaxvi.Discrete(2),
                             lambda k, d: {"loc": jnp.array([-1.0, 1.0]), "n": jnp.array(2)})),
     r"init: expected floating-point params, as EM's gradient M-step follows their gradient, got dtype int32"),
    (lambda: fit(jaxvi.models.vae(2, 2).model, GOOD, jaxvi.Amortized(num_steps=2, batch_size=5),
                 init_params=jax.tree_util.tree_map(lambda a: a.astype(jnp.int32),
                                                    jaxvi.models.vae(2, 2).model.init(KEY, jnp.asarray(GOOD)))),
     r"init_params\.decoder.*: expected a floating-point array \(float32, as init\(key, data\) gives\)"),
    (lambda: fit(init_params=2 ** 40), r"init_params: expected a numeric array, got 1099511627776 .*too large"),
    (lambda: fit(init_params={"loc": 2 ** 40}), r"init_params\['loc'\]: expected a numeric array"),
])
def test_integer_params_for_a_gradient_method_are_value_errors(make_fit, message):
    """jax.grad of an integer leaf used to raise a TypeError (and a Python int beyond int32 an OverflowError)."""
    with pytest.raises(ValueError, match=message):
        make_fit()


def test_a_closed_form_m_step_takes_integer_params():
    """Only methods that follow the gradient in the params need them floating."""
    model = jaxvi.Model(lambda p, z, x: log_joint(p["loc"], z, x) + 0.0 * p["n"], jaxvi.Discrete(2),
                        lambda k, d: {"loc": jnp.array([-1.0, 1.0]), "n": jnp.array(2)})
    result = fit(model, method=jaxvi.EM(max_iter=3, m_step=lambda params, data, post: params))
    assert int(result.params["n"]) == 2 and np.isfinite(float(result.objective))


@pytest.mark.parametrize("make", [lambda: jaxvi.SVI(optimizer=optax.lbfgs()),
                                  lambda: jaxvi.SVI(optimizer=optax.lbfgs, learning_rate=0.1),
                                  lambda: jaxvi.SVI(local_optimizer=optax.lbfgs()),
                                  lambda: jaxvi.Amortized(num_steps=1, optimizer=optax.lbfgs())])
def test_a_line_search_optimizer_is_refused_for_stochastic_gradients(make):
    """optax.lbfgs needs the objective's value and a value_fn: it used to fail with a TypeError inside the step."""
    with pytest.raises(ValueError, match=r"\(optimizer\): expected an optax transformation a gradient step calls as "
                                         r"update\(gradient, state, params\).*value_fn"):
        make()
    jaxvi.EM(m_step_optimizer=optax.lbfgs())  # where it belongs


def test_a_posterior_of_data_with_other_features_is_a_value_error():
    """More features used to fail inside the log-joint (or the encoder) with a broadcasting TypeError; fewer were
    broadcast against the fitted means, and a posterior and an evidence came back for data the fit never saw."""
    gm = jaxvi.models.gaussian_mixture(2)
    result = fit(gm.model, method=jaxvi.EM(m_step=gm.m_step, max_iter=2))
    for features in (3, 1):
        with pytest.raises(ValueError, match=rf"data: expected every datum of shape \(2,\), as the data the model was "
                                             rf"fitted to, got data of shape \(5, {features}\), a datum of shape "
                                             rf"\({features},\)$"):
            result.posterior(np.zeros((5, features), np.float32))
        message = (rf"data: expected data of the shapes the parameters were fitted to, got shapes \(5, {features}\), "
                   rf"for which init\(key, data\) gives params\.means of shape \(2, {features}\), where the "
                   r"parameters have \(2, 2\)")
        with pytest.raises(ValueError, match=message):  # no fit's data to compare with: the parameters' shapes
            jaxvi.evidence(gm.model, result.params, np.zeros((5, features), np.float32))
    with pytest.raises(ValueError, match=r"model: expected a jaxvi.Model \(a zoo fit's .model\), got GaussianMixture"):
        jaxvi.evidence(gm, result.params, GOOD)
    # a single datum, on which the mixture's init cannot run (fewer data than components), is taken: the same q
    np.testing.assert_allclose(result.posterior(GOOD[:1]).probs, result.posterior(GOOD).probs[:1], rtol=1e-6)
    # but not without its datum axis, nor one feature of one datum (init cannot run there either): these were read as
    # two data of one feature each, or one, and their posteriors came back
    one = r" \(a single datum needs its leading datum axis: data\[None\]\)"
    for bad, shapes in ((GOOD[0], r"\(2,\), a datum of shape \(\)" + one),
                        (GOOD[:1, :1], r"\(1, 1\), a datum of shape \(1,\)")):
        with pytest.raises(ValueError, match=r"data: expected every datum of shape \(2,\), as the data the model was "
                                             r"fitted to, got data of shape " + shapes + "$"):
            result.posterior(bad)
        with pytest.raises(ValueError, match=r"data: expected every datum of shape \(2,\)"):
            jaxvi.predictive(result, bad, key=KEY, num_draws=2)
    assert result.posterior(GOOD[:5]).probs.shape == (5, 2)
    vae = jaxvi.models.vae(2, 2, likelihood="gaussian")
    amortized = fit(vae.model, GOOD, jaxvi.Amortized(num_steps=2, batch_size=5))
    with pytest.raises(ValueError, match=r"data: expected every datum of shape \(2,\), as the data the model was "
                                         r"fitted to, got data of shape \(5, 4\), a datum of shape \(4,\)$"):
        amortized.posterior(np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError, match=r"key: expected a PRNG key"):  # JAX's TypeError from inside the draw
        vae.sample(amortized, 0, 2)
    with pytest.raises(ValueError, match=r"num_samples: expected an integer >= 1, got 0"):
        vae.sample(amortized, KEY, 0)


def test_a_posterior_of_sequences_takes_any_length_but_not_one_sequence_without_its_datum_axis():
    """One hmmlearn-style (T, D) sequence used to fail inside the emission's bijector (distrax: event_ndims_out); the
    time axis is free (a fitted HMM scores longer sequences), the features are not."""
    hmm = jaxvi.models.gaussian_hmm(2)
    sequences = np.random.default_rng(3).normal(size=(3, 12, 2)).astype(np.float32)
    result = fit(hmm.model, sequences, jaxvi.EM(max_iter=2))
    longer = np.concatenate([sequences, sequences], axis=1)
    np.testing.assert_allclose(np.sum(result.posterior(longer).log_evidence),
                               jaxvi.evidence(hmm.model, result.params, longer).log_evidence, rtol=1e-6)
    with pytest.raises(ValueError, match=r"data: expected every datum of shape \(T, 2\), as the data the model was "
                                         r"fitted to \(T: any length\), got data of shape \(12, 2\), a datum of shape "
                                         r"\(2,\) \(a single datum needs its leading datum axis: data\[None\]\)$"):
        result.posterior(sequences[0])
    with pytest.raises(ValueError, match=r"got data of shape \(3, 12, 1\), a datum of shape \(12, 1\)$"):
        result.posterior(sequences[..., :1])


def test_a_guide_s_draws_need_a_key_and_an_hmm_is_not_for_an_encoder():
    """FittedGuide.sample(0, 3) took the integer 0 as a key; Amortized on an HMM called its Markov latent an
    exponential-family factor and suggested a Real; Amortized(validation=np.float32(0.1)) was refused."""
    latent = jaxvi.Global({"m": jaxvi.Real((2,))}, lambda p, z: jnp.sum(jax.scipy.stats.norm.logpdf(z["m"], 0, 10)))
    model = jaxvi.Model(lambda p, z, x: jnp.sum(jax.scipy.stats.norm.logpdf(x, z["m"])), latent, lambda k, d: {})
    q = fit(model, method=jaxvi.SVI(num_steps=5)).posterior()
    with pytest.raises(ValueError, match=r"key: expected a PRNG key"):
        q.sample(0, 3)
    assert jax.tree_util.tree_leaves(q.sample(KEY, 3))[0].shape == (3, 2)
    sequences = np.zeros((4, 6, 2), np.float32)
    with pytest.raises(ValueError, match=r"latent: expected Real or Gaussian specs for a continuous guide, got "
                                         r"Markov\(.*\), a discrete latent: fit it by jaxvi.EM"):
        fit(jaxvi.models.gaussian_hmm(2).model, sequences, jaxvi.Amortized(num_steps=1, batch_size=2))
    assert jaxvi.Amortized(num_steps=1, validation=np.float32(0.1)).validation == np.float32(0.1)


def test_a_setting_of_several_values_and_a_flow_s_single_width_are_named():
    """EM(tol=array of two) failed in float() with a TypeError; Flow(2, 8) (one width) in tuple(8) with another; a size
    (max_iter) vmapped over was named by the tracer's repr, not as what it is."""
    with pytest.raises(ValueError, match=r"EM\(tol\): expected a scalar, got shape \(2,\) \(for several values, "
                                         r"jax.vmap over them\)"):
        jaxvi.EM(tol=jnp.array([1e-3, 1e-3]))
    with pytest.raises(ValueError, match=r"EM\(max_iter\): expected an integer >= 1 known when the method is "
                                         r"built, got a traced value \(BatchTracer of int32\[\]\): a size shapes"):
        jax.vmap(lambda n: jaxvi.EM(max_iter=n))(jnp.arange(1, 3))  # its message printed the tracer's repr
    assert jaxvi.Flow(2, 8).hidden == (8,) and jaxvi.Flow(2, [8, 4]).hidden == (8, 4)
    for hidden in ("x", (8, 0), 2.5):
        with pytest.raises(ValueError, match=r"Flow\(hidden\): expected the coupling networks' widths, integers >= 1"):
            jaxvi.Flow(2, hidden)


def test_evidence_of_several_global_nodes_says_to_write_them_as_one():
    """Two Global nodes and no local latent: importance sampling was refused as a model with 'both' global and
    local latents; the message now says what there is and what to write."""
    x = np.random.default_rng(0).normal(1.5, 1.0, 20).astype(np.float32)
    latent = {"mu": jaxvi.Global(jaxvi.Real(()), lambda p, mu: jax.scipy.stats.norm.logpdf(mu, 0, 10)),
              "s": jaxvi.Global(jaxvi.Real((), bijector=jaxvi.positive()), lambda p, s: -s)}
    model = jaxvi.Model(lambda p, z, x: jax.scipy.stats.norm.logpdf(x, z["mu"], z["s"]), latent, lambda k, d: {})
    fit = jaxvi.infer(model, jaxvi.SVI(num_steps=5), x, key=KEY, progress=False)
    with pytest.raises(ValueError, match=r"got 2 Global nodes: write them as one Global\(\{...\}, log_prior\) whose "
                                         r"log_prior sums theirs"):
        jaxvi.evidence(model, fit.params, x, key=KEY, posterior=fit.posterior())


def test_evidence_and_an_exact_posterior_check_their_arguments_as_infer_does():
    """Each of these used to pass into the computation: a vector or integer log-joint gave a Chex AssertionError or
    a log p(D) of +48 from an integer one; NaN parameters a NaN evidence; chunk_size 0 a ZeroDivisionError; a
    non-quadratic Gaussian log-joint an 'exact' evidence; a DiscretePosterior as the proposal an AttributeError."""
    params = jnp.array([-1.0, 1.0])
    vector = jaxvi.Model(lambda p, z, x: x * p[z], jaxvi.Discrete(2), init)
    integer = jaxvi.Model(lambda p, z, x: z, jaxvi.Discrete(2), init)
    quartic = jaxvi.Model(lambda p, z, x: -jnp.sum(z ** 4) - jnp.sum((x - z) ** 2), jaxvi.Gaussian(2), init)
    refused = [(lambda: jaxvi.evidence(vector, params, GOOD), r"log_joint: expected a scalar log density for one "
                                                              r"datum, got \(2,\)"),
               (lambda: jaxvi.evidence(integer, params, GOOD), r"log_joint: expected a real floating-point scalar, got "
                                                               r"dtype int32"),
               (lambda: jaxvi.evidence(MODEL, jnp.array([np.nan, 1.0]), GOOD), r"params: expected finite values, got "
                                                                              r"nan at index \(0,\)"),
               (lambda: jaxvi.evidence(MODEL, params, GOOD, chunk_size=0), r"chunk_size: expected an integer >= 1, "
                                                                           r"got 0"),
               (lambda: jaxvi.evidence(MODEL, params, GOOD, exact="yes"), r"exact: expected None, True or False, got "
                                                                          r"'yes'"),
               (lambda: jaxvi.evidence(quartic, params, GOOD),
                r"log_joint: a Gaussian latent needs log_joint\(params, z, x\) quadratic in z .* not for datum 0 \(and "
                r"19 more\)"),
               (lambda: jaxvi.exact.posterior(log_joint, jaxvi.Discrete(2), params, GOOD, 1.5),
                r"chunk_size: expected an integer >= 1, got 1.5"),
               (lambda: jaxvi.exact.posterior(lambda p, z, x: x * p[z], jaxvi.Discrete(2), params, GOOD),
                r"log_joint: expected a scalar log density for one datum, got \(2,\)"),
               (lambda: jaxvi.exact.posterior(log_joint, jaxvi.Discrete(2), params, np.float32(1.0)),
                r"data: expected a leading datum axis"),
               (lambda: jaxvi.exact.posterior(log_joint, jaxvi.Markov(2), params,
                                              jaxvi.Sequences(np.zeros((2, 5, 1), np.float32), np.array([0, 5]))),
                r"data.lengths: expected lengths in \[1, 5\] \(the padded length\), got 0 for sequence 0")]
    for call, message in refused:
        with pytest.raises(ValueError, match=message):
            call()
    proposal = jaxvi.exact.posterior(log_joint, jaxvi.Discrete(2), params, GOOD)
    real = jaxvi.Model(lambda p, z, x: jax.scipy.stats.norm.logpdf(x, z["m"]).sum(), {"m": jaxvi.Real(2)}, init)
    with pytest.raises(ValueError, match=r"posterior: expected a jaxvi.FittedGuide \(result.posterior\(\) of an SVI "
                                         r"fit\), got DiscretePosterior$"):
        jaxvi.evidence(real, params, GOOD, key=KEY, posterior=proposal)
    # the data as a list of lists, as NumPy reads it (it was a pytree of scalars: 'expected a leading datum axis')
    np.testing.assert_allclose(jaxvi.exact.posterior(log_joint, jaxvi.Discrete(2), params, GOOD.tolist()).probs,
                               proposal.probs, rtol=1e-6)
    with pytest.raises(ValueError, match=r"data: expected a list of numbers, or of equal-length lists of them \(one "
                                         r"array\), got a ragged list"):
        jaxvi.evidence(MODEL, params, [[1.0, 2.0], [1.0]])


def _peak_rss_gib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # kilobytes on Linux


@pytest.mark.parametrize("make_fit, message", [
    (lambda: fit(jaxvi.Model(lambda p, z, x: -jnp.sum((x - p * z) ** 2), jaxvi.Discrete(10 ** 7), init), GOOD[:5]),
     r"latent: Discrete\(K=10000000\) has 10,000,000 joint values .* EM's E-step .* expected at most 1,048,576 values "
     r"per datum \(jaxvi.latents.MAX_ENUMERATED_VALUES\)"),
    (lambda: fit(jaxvi.Model(lambda p, z, x: -jnp.sum((x - p * z) ** 2), jaxvi.Discrete(10 ** 7), init), GOOD,
                 jaxvi.SVI(num_steps=2, num_particles=2)),
     r"10,000,000 joint values .* SVI's Categorical q_i .* expected at most 1,048,576 values per datum"),
    (lambda: fit(jaxvi.Model(lambda p, z, x: -jnp.sum((x - p * (z[0] + z[1] + z[2])) ** 2), (jaxvi.Discrete(1000),) * 3,
                             init), GOOD),
     r"1,000,000,000 joint values \(the product of its Discrete sizes\)"),
    (lambda: fit(jaxvi.Model(lambda p, z, x: -jnp.sum((x - p * z) ** 2), jaxvi.Discrete(2 ** 10), init),
                 np.zeros((2 ** 19, 1), np.float32)),
     r"latent: EM's E-step \(the posterior of all the data\) holds a table of 524,288 data x 1,024 values = "
     r"536,870,912 elements at once; expected at most 268,435,456 \(jaxvi.latents.MAX_ENUMERATED_TABLE\). Stream the "
     r"E-step .* jaxvi.Statistics M-step"),
    (lambda: fit(jaxvi.Model(lambda p, z, x: -jnp.sum((x - p * (z[0] + z[1])) ** 2), (jaxvi.Discrete(300),) * 2, init),
                 np.zeros((1000, 1), np.float32), jaxvi.SVI(num_steps=2, num_particles=2)),
     r"SVI's Categorical q_i .* holds a table of 1,000 data x 90,000 values x 100 draws = 9,000,000,000 elements at "
     r"once; expected at most 268,435,456 .* Draw at most 2 particles"),
])
def test_an_enumeration_too_large_is_refused_from_the_shapes_before_allocating(make_fit, message):
    """These used to die inside XLA (RESOURCE_EXHAUSTED, 802 GB), allocate 22.4 GiB in validation (np.indices) or
    take 3.9 GB; now the sizes are checked against documented bounds before anything is allocated."""
    before = _peak_rss_gib()
    with pytest.raises(ValueError, match=message):
        make_fit()
    assert _peak_rss_gib() - before < 0.5


def test_the_enumeration_bounds_admit_what_fits():
    from jaxvi.latents import MAX_ENUMERATED_TABLE, MAX_ENUMERATED_VALUES
    assert (MAX_ENUMERATED_VALUES, MAX_ENUMERATED_TABLE) == (2 ** 20, 2 ** 28)
    model = jaxvi.Model(lambda p, z, x: -jnp.sum((x - p * z) ** 2), jaxvi.Discrete(2 ** 10), init)
    big = np.zeros((2 ** 19, 1), np.float32)
    gm = jaxvi.models.gaussian_mixture(2 ** 10)
    jaxvi.EM(m_step=gm.statistics, chunk_size=2 ** 10).check(model, big)   # streamed: a chunk at a time
    jaxvi.EM().check(model, big[: 2 ** 18])                                 # the bound itself
    with pytest.raises(ValueError, match="smaller chunk_size"):
        jaxvi.EM(m_step=gm.statistics, chunk_size=2 ** 19).check(model, big)


def test_initial_params_of_another_shape_than_init_gives_are_refused():
    """A Bernoulli mixture's pixel logits of shape (2, 1) were broadcast over the 6 pixels (one logit for all of
    them), a Gaussian HMM's 3 x 3 transitions for 2 states failed inside with a broadcasting error."""
    binary = (np.random.default_rng(1).random((20, 6)) < 0.3).astype(np.float32)
    mixture = jaxvi.models.bernoulli_mixture(2)
    start = mixture.init(KEY, jnp.asarray(binary))
    with pytest.raises(ValueError, match=r"init_params\.pixel_logits: expected shape \(2, 6\), as init\(key, data\) "
                                         r"gives for data of shapes \(20, 6\), got \(2, 1\)"):
        fit(mixture, binary, init_params=start._replace(pixel_logits=jnp.zeros((2, 1))))
    hmm = jaxvi.models.gaussian_hmm(2)
    sequences = GOOD.reshape(2, 10, 2)
    start = hmm.model.init(KEY, jnp.asarray(sequences))
    with pytest.raises(ValueError, match=r"init_params\.transition_logits: expected shape \(2, 2\)"):
        fit(hmm.model, sequences, jaxvi.EM(m_step=hmm.m_step), init_params=start._replace(
            transition_logits=jnp.zeros((3, 3))))


@pytest.mark.parametrize("in_host_memory", [True, False])
def test_data_outside_a_zoo_model_s_support_are_refused(in_host_memory, monkeypatch):
    """Symbols beyond a categorical HMM's alphabet were a gather XLA clamps onto the last symbol (and -1 onto it too),
    word ids beyond LDA's vocabulary alike, a Bernoulli likelihood took values outside [0, 1] (an "objective" of
    5.7e24 on unbinarised digits) and a Poisson one negative counts. Each is refused at the boundary, before anything
    compiles; on an accelerator (here: as if the CPU were one) after one compiled reduction."""
    from jaxvi import model as model_module

    monkeypatch.setattr(model_module, "_in_host_memory", lambda a: in_host_memory)
    symbols = np.random.default_rng(0).integers(0, 3, (4, 12))
    categorical = jaxvi.models.categorical_hmm(2, 3)
    em = jaxvi.EM(m_step=categorical.m_step, max_iter=2)
    for bad, value in ((3, 3), (-1, -1)):
        with pytest.raises(ValueError, match=rf"data: expected symbols \(whole numbers\) in \[0, 3\), got {value} at "
                                             r"index \(1, 5\)"):
            fit(categorical.model, jnp.asarray(symbols).at[1, 5].set(bad), em)
    variational = jaxvi.models.variational_categorical_hmm(2, 3)
    with pytest.raises(ValueError, match=r"data: expected symbols \(whole numbers\) in \[0, 3\), got 7"):
        fit(variational, jnp.asarray(symbols).at[0, 0].set(7), jaxvi.CAVI(max_iter=2))
    with pytest.raises(ValueError, match=r"data\.obs: expected symbols \(whole numbers\) in \[0, 3\), got 5 at index "
                                         r"\(2, 3\)"):
        fit(categorical.model, jaxvi.Sequences(jnp.asarray(symbols).at[2, 3].set(5), np.full(4, 12)), em)
    digits = np.random.default_rng(0).integers(0, 17, (20, 6)).astype(np.float32)
    with pytest.raises(ValueError, match=r"data: expected values in \[0, 1\], got 14\.0 at index \(0, 0\)"):
        fit(jaxvi.models.bernoulli_mixture(2), jnp.asarray(digits))
    with pytest.raises(ValueError, match=r"data: expected values in \[0, 1\], got 14\.0"):
        fit(jaxvi.models.vae(2, 6).model, jnp.asarray(digits), jaxvi.Amortized(num_steps=2, batch_size=5))
    counts = np.random.default_rng(0).poisson(1.0, (6, 12)).astype(np.float32)
    counts[:, 0] += 1
    docs = jaxvi.models.bag_of_words(counts)
    lda = jaxvi.models.lda(docs, 2, 12)
    ids, weights = docs
    with pytest.raises(ValueError, match=r"data\[0\]: expected word ids \(whole numbers\) in \[0, 12\), got 12"):
        fit(lda, (jnp.asarray(ids).at[0, 0].set(12), jnp.asarray(weights)), jaxvi.CAVI(max_iter=2))
    with pytest.raises(ValueError, match=r"data\[1\]: expected counts in \[0, inf\), got -3\.0 at index \(0, 0\)"):
        fit(lda, (jnp.asarray(ids), jnp.asarray(weights).at[0, 0].set(-3.0)), jaxvi.CAVI(max_iter=2))
    poisson = jaxvi.models.poisson_hmm(2)
    with pytest.raises(ValueError, match=r"data: expected counts in \[0, inf\), got -2\.0 at index \(0, 0, 0\)"):
        fit(poisson.model, jnp.asarray(counts.reshape(2, 3, 12)).at[0, 0, 0].set(-2.0),
            jaxvi.EM(m_step=poisson.m_step))


def test_a_sequence_s_padding_is_not_data():
    """The support is checked on the real steps alone: padding of any value (here -1, no symbol) fits as padding 0
    does, the same fit, since the padded steps carry the messages unchanged."""
    symbols = np.random.default_rng(0).integers(0, 3, (4, 12))
    lengths = np.array([12, 7, 9, 3])
    categorical = jaxvi.models.categorical_hmm(2, 3)
    em = jaxvi.EM(m_step=categorical.m_step, max_iter=3, tol=0.0)
    padded = [np.where(np.arange(12) < lengths[:, None], symbols, pad) for pad in (0, -1)]
    zero, minus_one = (fit(categorical.model, jaxvi.Sequences(p, lengths), em) for p in padded)
    assert float(zero.objective) == float(minus_one.objective)
    np.testing.assert_array_equal(zero.params.emission.logits, minus_one.params.emission.logits)
    with pytest.raises(ValueError, match=r"data\.obs: expected symbols \(whole numbers\) in \[0, 3\), got -1"):
        zero.posterior(jaxvi.Sequences(padded[1], np.full(4, 12)))  # where the -1 are real steps


def test_an_svi_posterior_of_per_datum_guides_is_of_the_data_fitted():
    """Its q_i belong to the fitted data: other data used to be ignored, the training q's returned for them."""
    fa = jaxvi.models.factor_analysis(1)
    result = fit(fa.model, GOOD, jaxvi.SVI(num_steps=3, batch_size=5))
    assert result.posterior(GOOD).mean().shape == (20, 1)
    with pytest.raises(ValueError, match=r"data: the fit has one q per datum for the 20 data it was fitted to; pass "
                                         r"those or none, got 10 data"):
        result.posterior(GOOD[:10])
    with pytest.raises(ValueError, match=r"data: the fit has one q per datum for the 20 data it was fitted to; pass "
                                         r"those, got 10 data"):
        result.method.elbo(result, GOOD[:10], key=jax.random.key(0))
