"""Sweeps: equal settings built afresh reuse compiled code, other settings compile anew and get their own
answer, and compiled code beyond the cache's bound is freed.

Compilations are counted by JAX's own backend-compile event; the answers are checked against log p(D)
enumerated by hand (an EM fit whose M-step keeps the parameters: its objective is log p(D | θ0)).
"""
import collections
import gc
import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import logsumexp
from scipy.stats import norm

import jaxvi
from jaxvi import equality
from jit_events import compilations

compiled = importlib.import_module("jaxvi.run.compiled")

MEANS = np.array([-1.0, 1.0])
X = np.random.default_rng(0).normal(size=(30, 2)).astype(np.float32)
KEY = jax.random.key(0)


def mixture(scale):
    """A fresh model: two equally weighted components at θ = MEANS, of standard deviation ``scale`` (captured)."""
    def log_joint(params, z, x):
        return jnp.log(0.5) + jax.scipy.stats.norm.logpdf(x, params[z], scale).sum()

    return jaxvi.Model(log_joint, jaxvi.Discrete(2), init=lambda key, data: jnp.asarray(MEANS, jnp.float32))


def keep():
    """A fresh EM that keeps the parameters: its objective is log p(D | θ0)."""
    return jaxvi.EM(m_step=lambda params, data, posterior: params, max_iter=3)


def log_evidence(scale) -> float:
    """log p(D | θ0) enumerated by hand."""
    per_component = np.log(0.5) + norm.logpdf(X[:, None, :], MEANS[None, :, None], scale).sum(-1)
    return float(logsumexp(per_component, axis=1).sum())


def test_settings_built_alike_are_equal_and_different_ones_are_not():
    assert mixture(1.0) == mixture(1.0) and hash(mixture(1.0)) == hash(mixture(1.0))
    assert mixture(1.0) != mixture(2.0)
    adam = lambda rate: jax.tree_util.tree_structure(jaxvi.SVI(optimizer=optax.adam(rate)))  # noqa: E731
    assert adam(1e-2) == adam(1e-2) and adam(1e-2) != adam(1e-3)
    # numpy arrays by content; an object of another class by identity, and what holds it with it
    array = np.ones(2)
    reads = lambda: (lambda x: x + array)  # noqa: E731
    before = equality.key(reads())
    assert equality.key(reads()) == before
    array[0] = 2.0
    assert equality.key(reads()) != before
    thing = type("Thing", (), {})()
    holds = lambda: (lambda x: thing)  # noqa: E731
    assert equality.key(holds()) != equality.key(holds())


def test_zoo_models_built_again_are_equal_and_other_priors_are_not():
    """The CAVI zoo's models held their priors as JAX arrays (compared by identity) and called library functions
    whose globals made every closure holding them compare by identity: a loop rebuilding
    bayesian_gaussian_mixture(x, 3) or lda(docs, K, V) compiled 4 programs each time (gaussian_mixture did not)."""
    x = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    docs = jaxvi.models.bag_of_words(np.random.default_rng(0).poisson(1.0, (6, 5)))
    builds = [lambda: jaxvi.models.bayesian_gaussian_mixture(x, 3), lambda: jaxvi.models.bayesian_gaussian_mixture(
        x, 3, "diag"), lambda: jaxvi.models.lda(docs, 2, 5), lambda: jaxvi.models.variational_gaussian_hmm(2, 2),
              lambda: jaxvi.models.variational_categorical_hmm(2, 3)]
    for build in builds:
        assert build() == build() and hash(build()) == hash(build())
    assert jaxvi.models.bayesian_gaussian_mixture(x, 3) != jaxvi.models.bayesian_gaussian_mixture(x, 3,
                                                                                                 mean_precision=2.0)
    assert jaxvi.models.lda(docs, 2, 5) != jaxvi.models.lda(docs, 2, 5, topic_word_prior=0.2)


def test_a_sweep_of_fresh_equal_settings_compiles_once():
    expected = log_evidence(1.0)
    first = jaxvi.infer(mixture(1.0), keep(), X, key=KEY, progress=False)
    np.testing.assert_allclose(float(first.objective), expected, rtol=1e-5)
    with compilations() as compiles:
        for i in range(20):
            result = jaxvi.infer(mixture(1.0), keep(), X, key=jax.random.key(i), progress=False)
            np.testing.assert_allclose(float(result.objective), expected, rtol=1e-5)
    assert compiles == []


def test_a_number_setting_of_any_python_or_numpy_type_compiles_once():
    """tol=0 (an int), np.float64 (a strong float32 where x64 is off) and 1e-3 (a weak float32) were three abstract
    values of the same setting and each compiled the fit's programs anew; every known number is now a float."""
    expected = log_evidence(1.0)
    method = lambda tol: jaxvi.EM(m_step=lambda params, data, posterior: params, max_iter=3, tol=tol)  # noqa: E731
    jaxvi.infer(mixture(1.0), method(1e-3), X, key=KEY, progress=False)
    svi = lambda rate: jaxvi.SVI(num_steps=3, learning_rate=rate)  # noqa: E731
    jaxvi.infer(mixture(1.0), svi(0.5), X, key=KEY, progress=False)
    tols = (0, np.float64(1e-4), np.float32(1e-5), np.array(2e-3), jnp.float32(1e-2), np.int64(1))  # made outside:
    with compilations() as compiles:  # jnp.float32(1e-2) is an operation JAX compiles
        for tol in tols:
            result = jaxvi.infer(mixture(1.0), method(tol), X, key=KEY, progress=False)
            np.testing.assert_allclose(float(result.objective), expected, rtol=1e-5)
        for rate in (1, np.float64(0.1), np.array(0.2, np.float32)):
            jaxvi.infer(mixture(1.0), svi(rate), X, key=KEY, progress=False)
    assert compiles == []
    assert type(method(0).tol) is float and svi(np.float32(0.2)).learning_rate == np.float32(0.2)


def test_a_sweep_of_fresh_optax_optimisers_compiles_once():
    model = mixture(1.0)
    method = lambda: jaxvi.SVI(num_steps=5, optimizer=optax.adam(1e-2))  # noqa: E731
    first = jaxvi.infer(model, method(), X, key=KEY)  # with a progress bar: compiled in three parts
    with compilations() as compiles:
        for _ in range(20):
            result = jaxvi.infer(model, method(), X, key=KEY)
            np.testing.assert_array_equal(result.trace, first.trace)
    assert compiles == []


def test_other_settings_compile_anew_and_get_their_own_answer():
    jaxvi.infer(mixture(1.0), keep(), X, key=KEY, progress=False)
    with compilations() as compiles:
        result = jaxvi.infer(mixture(2.0), keep(), X, key=KEY, progress=False)
    assert compiles
    np.testing.assert_allclose(float(result.objective), log_evidence(2.0), rtol=1e-5)
    # a numpy array changed in place: a fresh model reading it compiles anew and sees the new value
    scale = np.array(1.0, np.float32)
    reads = lambda: jaxvi.Model(lambda p, z, x: jnp.log(0.5) + jax.scipy.stats.norm.logpdf(x, p[z], scale).sum(),  # noqa: E731
                                jaxvi.Discrete(2), lambda key, data: jnp.asarray(MEANS, jnp.float32))
    jaxvi.infer(reads(), keep(), X, key=KEY, progress=False)
    scale[...] = 3.0
    result = jaxvi.infer(reads(), keep(), X, key=KEY, progress=False)
    np.testing.assert_allclose(float(result.objective), log_evidence(3.0), rtol=1e-5)


def test_the_cache_is_bounded_and_dropped_code_is_freed(monkeypatch):
    monkeypatch.setattr(compiled, "CACHED_FITS", 2)
    monkeypatch.setattr(compiled, "_fits", collections.OrderedDict())  # empty, whatever ran before
    client = jax.devices()[0].client
    live = []
    for scale in (4.0, 5.0, 6.0, 7.0, 8.0):
        result = jaxvi.infer(mixture(scale), keep(), X, key=KEY, progress=False)
        np.testing.assert_allclose(float(result.objective), log_evidence(scale), rtol=1e-5)
        assert compiled.cached_fits() <= 2
        gc.collect()
        live.append(len(client.live_executables()))
    # the first two fill the table; from then on each new fit's code replaces the oldest's
    assert live[1] > live[0] and live[2] == live[3] == live[4] == live[1]


def test_compiler_options_apply_to_a_top_level_call_and_step_aside_inside_a_trace(monkeypatch):
    """A ``per_fit`` function with XLA options (``CHEAP_CODE``): called on values it compiles with them; called
    inside a trace (``jit``, ``vmap``, ``eval_shape``), where JAX refuses options on a nested ``jit``, it becomes
    part of the caller's program; the same numbers either way."""
    monkeypatch.setattr(compiled, "_fits", collections.OrderedDict())
    model = mixture(4.0)
    double = compiled.per_fit(lambda model, method, x: 2.0 * x + model.init(KEY, x)[0],
                              options=compiled.CHEAP_CODE)
    x = jnp.arange(3.0)
    expected = 2.0 * np.arange(3.0) + MEANS[0]
    np.testing.assert_allclose(double(model, keep(), x), expected)
    np.testing.assert_allclose(jax.jit(lambda x: double(model, keep(), x))(x), expected)
    np.testing.assert_allclose(jax.vmap(lambda x: double(model, keep(), x))(x[:, None])[:, 0], expected)
    assert jax.eval_shape(lambda x: double(model, keep(), x), x).shape == (3,)
    (functions,) = compiled._fits.values()  # one with the options (the call on values), one without (traced)
    assert {options for _, options in functions} == {(), tuple(sorted(compiled.compiler_options(compiled.CHEAP_CODE)
                                                                      .items()))}


def test_compiler_options_keep_ynnpack_to_products_in_optimised_cpu_code_unless_xla_flags_choose(monkeypatch):
    """``compiler_options`` adds ``CPU_CODE`` (YNNPACK takes products and convolutions, not reductions; LLVM's level 1)
    to the options asked for, on a CPU whose XLA takes it, where the code is optimised: not with ``CHEAP_CODE`` (level
    0), nor where ``XLA_FLAGS`` turns optimisation off (as this suite's conftest does); an option ``XLA_FLAGS`` sets
    itself is left to it. A program compiled with them runs and gives NumPy's number. ``XLA_FLAGS`` is read when the
    choice is made, once a process."""
    assert jax.default_backend() == "cpu"
    x = np.arange(12.0).reshape(3, 4)
    expected = np.mean(np.sum((x @ x.T) ** 2, axis=1))
    try:
        level = {compiled.OPTIMIZATION_LEVEL: 1}
        ynn = {compiled.YNN_OPTION: compiled.CPU_CODE[compiled.YNN_OPTION]}
        assert compiled.CPU_CODE == {**ynn, **level}
        for flags, cpu_code in (("", compiled.CPU_CODE), ("--xla_backend_optimization_level=0", {}),
                                (f"--{compiled.YNN_OPTION}=", level), ("--xla_backend_optimization_level=3", ynn),
                                (f"--{compiled.YNN_OPTION}= --xla_backend_optimization_level=2", {})):
            monkeypatch.setenv("XLA_FLAGS", flags)
            compiled._cpu_code.cache_clear()
            assert compiled.compiler_options() == cpu_code, flags
            assert compiled.compiler_options({"xla_cpu_use_fusion_emitters": False}) == {
                **cpu_code, "xla_cpu_use_fusion_emitters": False}, flags
            assert compiled.compiler_options(compiled.CHEAP_CODE) == compiled.CHEAP_CODE, flags
            mean_square = jax.jit(lambda x: jnp.mean(jnp.sum((x @ x.T) ** 2, axis=1)),
                                  compiler_options=jaxvi.compiler_options())
            np.testing.assert_allclose(mean_square(jnp.asarray(x, jnp.float32)), expected, rtol=1e-6)
    finally:
        monkeypatch.undo()
        compiled._cpu_code.cache_clear()


def options_of_a_fit_compiled_in_full(monkeypatch) -> dict:
    """``infer``'s fit of ``mixture(1.0)`` by ``keep()`` on X, no part compiled cheaply, checked against log p(D | θ0)
    enumerated by hand; the XLA options each of its functions compiled with, by name."""
    monkeypatch.setattr(compiled, "_fits", collections.OrderedDict())
    for name in ("CHEAP_RUN_BYTES", "CHEAP_PASS_BYTES"):  # X is small: no part of the fit compiled cheaply
        monkeypatch.setattr(compiled, name, 0)
    result = jaxvi.infer(mixture(1.0), keep(), X, key=KEY, progress=False)
    np.testing.assert_allclose(np.asarray(result.trace), log_evidence(1.0), rtol=1e-6)
    (functions,) = compiled._fits.values()
    return {fn.__name__: options for fn, options in functions}


def test_an_option_this_xla_refuses_is_left_out_alone(monkeypatch):
    """XLA is asked for each of jaxvi's options on its own: where it refuses one (jaxlib 0.11 dropped the older emitters
    and ``LARGE_KERNEL_CODE``'s option with them), a fit of large kernels compiles with the rest of ``CPU_CODE`` (the
    refusal of one had dropped them all), and gives log p(D | θ0) enumerated by hand."""
    monkeypatch.setenv("XLA_FLAGS", "")  # optimised code, which this suite's conftest turns off
    monkeypatch.setattr(compiled, "LARGE_KERNEL_CODE", {"xla_no_such_option": True})
    compiled._cpu_code.cache_clear()
    try:
        assert compiled.compiler_options(model=mixture(1.0), method=keep()) == compiled.CPU_CODE
        chosen = options_of_a_fit_compiled_in_full(monkeypatch)
        assert {chosen[name] for name in ("_start_restarts", "_run_restarts", "_finish_restarts")} == {
            tuple(sorted(compiled.CPU_CODE.items()))}, chosen
    finally:
        monkeypatch.undo()
        compiled._cpu_code.cache_clear()


def test_fits_whose_steps_are_large_kernels_compile_for_the_older_emitters(monkeypatch):
    """EM with discrete latents and CAVI with discrete local latents or none (on all the data or minibatches) are fits
    that work in large kernels over the data (``large_kernels``): ``compiler_options(model=, method=)`` adds
    ``LARGE_KERNEL_CODE`` to ``CPU_CODE`` for them, and ``infer`` compiles their start, run and final evaluation so;
    a chain's EM or CAVI (a scan of small kernels), LDA (local factors' sweeps) and SVI keep ``CPU_CODE``.
    ``CHEAP_CODE`` stays itself but for fits of large kernels where XLA takes the older emitters: their optimised
    code compiles as fast as XLA's level 0 with its fusion emitters or faster, so they take it for small problems too
    (a level 0 asked for by hand stays). The fit
    compiled so gives log p(D | θ0) enumerated by hand."""
    monkeypatch.setenv("XLA_FLAGS", "")  # optimised code, which this suite's conftest turns off
    compiled._cpu_code.cache_clear()
    try:
        assert compiled.LARGE_KERNEL_CODE == {"xla_cpu_use_fusion_emitters": False}
        older_emitters = compiled._accepts(compiled.LARGE_KERNEL_CODE)  # jaxlib 0.11 dropped them
        large = {**compiled.CPU_CODE, **(compiled.LARGE_KERNEL_CODE if older_emitters else {})}
        x = np.random.default_rng(1).normal(size=(40, 2)).astype(np.float32)
        bayes_gmm, hmm = jaxvi.models.bayesian_gaussian_mixture(x, 3), jaxvi.models.gaussian_hmm(2)
        cases = ((mixture(1.0), keep(), large), (hmm.model, jaxvi.EM(m_step=hmm.m_step), compiled.CPU_CODE),
                 (bayes_gmm, jaxvi.CAVI(), large), (bayes_gmm, jaxvi.CAVI(batch_size=8), large),
                 (jaxvi.models.lda(jaxvi.models.bag_of_words(np.array([[1, 2, 0]])), 2, 3), jaxvi.CAVI(),
                  compiled.CPU_CODE),
                 (jaxvi.models.variational_gaussian_hmm(2, 2), jaxvi.CAVI(), compiled.CPU_CODE),
                 (jaxvi.models.factorial_hmm(2, 2, 1), jaxvi.CAVI(), compiled.CPU_CODE),
                 (mixture(1.0), jaxvi.SVI(), compiled.CPU_CODE))
        for model, method, expected in cases:
            assert compiled.compiler_options(model=model, method=method) == expected, method
            cheap = large if expected == large and older_emitters else compiled.CHEAP_CODE
            assert compiled.compiler_options(compiled.CHEAP_CODE, model=model, method=method) == cheap, method
            by_hand = {compiled.OPTIMIZATION_LEVEL: 0}  # a level 0 a user asks for is kept
            assert compiled.compiler_options(by_hand, model=model, method=method) == by_hand, method
        assert compiled.compiler_options() == compiled.CPU_CODE  # no fit named: the default
        chosen = options_of_a_fit_compiled_in_full(monkeypatch)
        assert {chosen[name] for name in ("_start_restarts", "_run_restarts", "_finish_restarts")} == {
            tuple(sorted(large.items()))}, chosen
        if older_emitters:  # small: every part asked for CHEAP_CODE, and compiled as the large kernels' code
            monkeypatch.setattr(compiled, "_fits", collections.OrderedDict())
            for name in ("CHEAP_RUN_BYTES", "CHEAP_PASS_BYTES"):
                monkeypatch.setattr(compiled, name, 2 ** 30)
            result = jaxvi.infer(mixture(1.0), keep(), X, key=KEY, progress=False)
            np.testing.assert_allclose(np.asarray(result.trace), log_evidence(1.0), rtol=1e-6)
            (functions,) = compiled._fits.values()
            assert {options for _, options in functions} == {tuple(sorted(large.items()))}, functions
    finally:
        monkeypatch.undo()
        compiled._cpu_code.cache_clear()


def test_the_final_evaluation_is_compiled_for_the_cheapest_code_on_small_data_only(monkeypatch):
    """``infer`` compiles a fit's final evaluation with ``CHEAP_CODE`` where the data of all its restarts are at
    most ``CHEAP_PASS_BYTES`` (X: 240 bytes), with ``compiler_options()`` above; log p(D | θ0) either way."""
    infer_module = importlib.import_module("jaxvi.infer")
    for bound, n_init, options in ((240, 1, compiled.CHEAP_CODE), (480, 2, compiled.CHEAP_CODE), (239, 1, None),
                                   (479, 2, None)):
        monkeypatch.setattr(compiled, "CHEAP_PASS_BYTES", bound)
        monkeypatch.setattr(compiled, "_fits", collections.OrderedDict())
        method = jaxvi.EM(m_step=lambda params, data, posterior: params, max_iter=3, n_init=n_init)
        result = jaxvi.infer(mixture(1.0), method, X, key=KEY, progress=False)
        np.testing.assert_allclose(float(result.objective), log_evidence(1.0), rtol=1e-6)
        (functions,) = compiled._fits.values()
        finishes = {options for fn, options in functions if fn is infer_module._finish_restarts}
        assert finishes == {tuple(sorted(compiled.compiler_options(options).items()))}, (bound, n_init, finishes)


def test_the_start_and_the_run_are_compiled_for_the_cheapest_code_on_small_problems_only(monkeypatch):
    """``infer`` compiles a fit's start with ``CHEAP_CODE`` where its data (X: 240 bytes) times ``START_PASSES`` (4
    here) and the restarts are at most ``CHEAP_RUN_BYTES``, and its run where the data and the restarts' states times
    the steps (4) are; ``compiler_options()`` above. log p(D | θ0) either way."""
    monkeypatch.setattr(compiled, "START_PASSES", 4)
    cheap = tuple(sorted(compiled.compiler_options(compiled.CHEAP_CODE).items()))
    plain = tuple(sorted(compiled.compiler_options().items()))
    for bound, n_init, start, run in ((960, 1, cheap, plain), (1920, 2, cheap, plain), (959, 1, plain, plain),
                                      (1919, 2, plain, plain), (2 ** 20, 2, cheap, cheap)):
        monkeypatch.setattr(compiled, "CHEAP_RUN_BYTES", bound)
        monkeypatch.setattr(compiled, "_fits", collections.OrderedDict())
        method = jaxvi.EM(m_step=lambda params, data, posterior: params, max_iter=3, n_init=n_init)
        result = jaxvi.infer(mixture(1.0), method, X, key=KEY, progress=False)
        np.testing.assert_allclose(np.asarray(result.trace), log_evidence(1.0), rtol=1e-6)
        (functions,) = compiled._fits.values()
        chosen = {fn.__name__: options for fn, options in functions}
        assert (chosen["_start_restarts"], chosen["_run_restarts"]) == (start, run), (bound, n_init, chosen)


def test_a_users_jit_of_a_fit_s_posterior_and_evidence_closing_over_concrete_values_runs_in_its_program():
    """A user's jit of a function that closes over a fit and its data (no tracer among their leaves): the posterior
    and the exact evidence are traced into the caller's program, which XLA compiles with the caller's options (JAX
    refuses options on a nested jit); log p(D | θ0) as outside it."""
    x = jnp.asarray(X)  # a JAX array: nothing in the caller's trace converts it
    result = jaxvi.infer(mixture(1.0), keep(), x, key=KEY, progress=False)
    posterior, evidence = jax.jit(lambda: (result.posterior(x).log_evidence.sum(),
                                           jaxvi.evidence(result.model, result.params, x).log_evidence))()
    np.testing.assert_allclose([float(posterior), float(evidence)], log_evidence(1.0), rtol=1e-6)


ZOO_STARTS = {"gaussian mixture": (lambda: jaxvi.models.gaussian_mixture(3).model, X),
              "gaussian hmm": (lambda: jaxvi.models.gaussian_hmm(2).model, X.reshape(3, 10, 2)),
              "categorical hmm": (lambda: jaxvi.models.categorical_hmm(2, 3).model, (X[:, 0] > 0).reshape(3, 10) * 2),
              "factor analysis": (lambda: jaxvi.models.factor_analysis(1).model, X)}


@pytest.mark.parametrize("name", ZOO_STARTS)
def test_a_zoo_start_called_on_numpy_data_outside_jit_is_one_program(name):
    """A zoo model's ``init`` called on numpy data, as a scikit-learn user calls it to start a peer alike, runs as one
    compiled program: the same start as inside a user's jit on a JAX array. Run operation by operation it compiled
    each of about 100 operations alone (5 s for the mixture's k-means), and the mixture's failed: its k-means++
    indexed the numpy data with a traced draw (a TracerArrayConversionError)."""
    make, data = ZOO_STARTS[name]
    model = make()
    in_a_jit = jax.jit(model.init)(KEY, jnp.asarray(data))
    with compilations(lambda fun: fun != "jit(stage)") as names:  # the numpy data's transfer aside
        start = model.init(KEY, data)
    assert names == [f"jit({model.init.fn.__name__})"]
    for got, want in zip(jax.tree_util.tree_leaves(start), jax.tree_util.tree_leaves(in_a_jit)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_psis_called_on_numpy_weights_outside_jit_is_one_program():
    """``jaxvi.psis`` on numpy log weights (as an ArviZ user calls it) runs as one compiled program (op by op, 5 s of
    compilations for new shapes) and smooths as inside a user's jit."""
    log_weights = np.random.default_rng(1).standard_t(3, size=(3, 200)).astype(np.float32)
    in_a_jit = jax.jit(jaxvi.psis)(jnp.asarray(log_weights))
    with compilations(lambda fun: fun != "jit(stage)") as names:  # the numpy array's transfer aside
        smoothed, khat = jaxvi.psis(log_weights)
    assert names == ["jit(_psis_rows)"]
    np.testing.assert_allclose(smoothed, in_a_jit[0], rtol=1e-6)
    np.testing.assert_allclose(khat, in_a_jit[1], rtol=1e-6)


def test_numpy_data_reach_a_fit_without_a_program_of_their_own():
    """A fit's data checks hand NumPy data to JAX by ``device_put``: ``jnp.asarray`` compiled a small program (JAX's
    ``stage``) for each new shape and dtype of NumPy array, and for sequences' lengths a conversion, 12-35 ms each in a
    fresh process. The arrays are those ``jnp.asarray`` makes: float64 becomes float32 (x64 off), int64 int32."""
    from jaxvi.model import check_data
    rng = np.random.default_rng(3)
    x, labels = rng.normal(size=(7, 5)), rng.integers(0, 3, size=(7, 13))  # shapes no other test compiles for
    sequences = jaxvi.Sequences(rng.normal(size=(4, 11, 2)), np.array([11, 3, 7, 1]))
    with compilations() as names:
        data, padded = check_data((x, labels)), check_data(sequences)
    assert names == []
    for got, want in zip(jax.tree_util.tree_leaves((data, padded)),
                         [jnp.asarray(x), jnp.asarray(labels), jnp.asarray(sequences.obs), jnp.asarray([11, 3, 7, 1])]):
        assert isinstance(got, jax.Array) and got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert padded.lengths.dtype == jnp.int32 and data[0].dtype == jnp.float32


def test_initial_parameters_checked_and_a_result_loaded_compile_no_program(tmp_path):
    """``check_init_params`` and ``jaxvi.load`` take NumPy values to JAX by ``device_put`` too: ``jnp.asarray``
    compiled a staging program for every new shape of a parameter checked or of a leaf read from a file."""
    from jaxvi.model import check_init_params
    x = np.random.default_rng(4).normal(size=(37, 2)).astype(np.float32)
    gm = jaxvi.models.gaussian_mixture(2)
    result = jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step, max_iter=3), x, key=KEY, progress=False)
    result.save(tmp_path / "fit.npz")
    params = {"weights": np.full(7, 1 / 7), "scale": 2.5, "counts": np.arange(11).reshape(1, 11)}
    with compilations() as names:
        check_init_params(params)
        loaded = jaxvi.load(tmp_path / "fit.npz", like=result)
    assert names == []
    for got, want in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(result)):
        assert isinstance(got, jax.Array) and got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_method_s_init_and_finalize_called_outside_jit_are_one_program_each_per_structure():
    """``method.init`` and ``method.finalize`` called on concrete values, as a user's own loop starts and ends
    (docs/methods.md), run as one compiled program each, once per model and method structure (a fresh equal method
    with another learning rate compiles nothing), and give what they give inside a user's jit. Op by op, JAX compiled
    every operation alone: a Bayesian mixture's ``CAVI.init`` took 20 s so, ``SVI.finalize`` 3.4 s."""
    latent = jaxvi.Global({"w": jaxvi.Real((2,))}, lambda params, z: jnp.sum(jax.scipy.stats.norm.logpdf(z["w"])))
    model = jaxvi.Model(lambda params, z, x: jnp.sum(jax.scipy.stats.norm.logpdf(x, z["w"])), latent,
                        init=lambda key, data: {})
    method = jaxvi.SVI(num_steps=10, learning_rate=0.1)
    in_a_jit = jax.jit(lambda key, data: method.init(model, key, data))(KEY, X)
    with compilations(lambda fun: fun != "jit(stage)") as names:  # the numpy data's transfer aside
        state = method.init(model, KEY, X)
        again = jaxvi.SVI(num_steps=10, learning_rate=0.2).init(model, jax.random.key(1), X)
    assert names == ["jit(_method_init)"]
    for got, want, other in zip(*map(jax.tree_util.tree_leaves, (state, in_a_jit, again))):
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert np.shape(other) == np.shape(want)
    final_in_a_jit = jax.jit(lambda key, state, data: method.finalize(model, key, state, data).objective)(KEY, state, X)
    with compilations(lambda fun: fun != "jit(stage)") as names:
        final = method.finalize(model, KEY, state, X)
    assert names == ["jit(_method_finalize)"]
    np.testing.assert_allclose(float(final.objective), float(final_in_a_jit), rtol=1e-6)


def test_an_exact_posterior_called_outside_jit_is_one_program_per_log_joint():
    """``jaxvi.exact.posterior`` called on concrete values runs as one compiled program, once per log-joint (a fresh
    equal one compiles nothing; another scale compiles anew) and gives what it gives inside a user's jit: here log
    p(D | θ0) enumerated by hand. Op by op, an HMM's first posterior compiled each operation alone (7.9 s)."""
    params = jnp.asarray(MEANS, jnp.float32)
    with compilations(lambda fun: fun != "jit(stage)") as names:  # the numpy data's transfer aside
        first = jaxvi.exact.posterior(mixture(1.0).log_joint, jaxvi.Discrete(2), params, X)
        again = jaxvi.exact.posterior(mixture(1.0).log_joint, jaxvi.Discrete(2), params, X)
        other = jaxvi.exact.posterior(mixture(2.0).log_joint, jaxvi.Discrete(2), params, X)
    assert names == ["jit(_posterior)", "jit(_posterior)"]
    in_a_jit = jax.jit(lambda p, x: jaxvi.exact.posterior(mixture(1.0).log_joint, jaxvi.Discrete(2), p, x).log_evidence)
    for post, scale in ((first, 1.0), (again, 1.0), (other, 2.0)):
        np.testing.assert_allclose(float(jnp.sum(post.log_evidence)), log_evidence(scale), rtol=1e-6)
    np.testing.assert_allclose(first.log_evidence, in_a_jit(params, jnp.asarray(X)), rtol=1e-6)


def test_importing_jaxvi_compiles_small_loops_whole_unless_xla_flags_pass_backend_options(monkeypatch):
    """``import jaxvi`` raises XLA:CPU's small-loop threshold (``jaxvi._xla``) in ``XLA_FLAGS``, keeping the user's own
    backend options whole; in this process (jaxvi imported before any computation) a scan whose carry is 10 kB, 10
    times XLA's default threshold, is compiled into one function (XLA marks it ``xla_cpu_small_call``)."""
    from jaxvi import _xla

    assert _xla.SMALL_LOOP_OPTION in os.environ["XLA_FLAGS"]
    scan = jax.jit(lambda x: jax.lax.scan(lambda c, _: (jnp.sin(c) * 0.5 + c, None), x, None, length=100)[0])
    assert "xla_cpu_small_call" in scan.lower(jnp.ones((32, 80))).compile().as_text()
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false")
    _xla.compile_small_loops_whole()
    assert os.environ["XLA_FLAGS"] == ("--xla_cpu_use_fusion_emitters=false --xla_backend_extra_options="
                                       f"xla_cpu_small_while_loop_byte_threshold={2 ** 20}")
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=0")
    _xla.compile_small_loops_whole()
    assert os.environ["XLA_FLAGS"] == "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=0"


DEFERRED = """
import json, sys
import jax.numpy as jnp
import jaxvi
before = sorted(m for m in ("distrax", "tensorflow_probability") if m in sys.modules)
z, log_det = jaxvi.interval(0.0, 2.0).forward_and_log_det(jnp.zeros(3))
print(json.dumps({"before": before, "after": "distrax" in sys.modules, "z": z.tolist(), "log_det": float(log_det.sum())}))
"""


def test_import_jaxvi_leaves_distrax_and_tensorflow_probability_to_their_first_use():
    """``import jaxvi`` imports neither distrax nor TensorFlow Probability's JAX substrate (0.5-0.7 s of its 0.8-0.9 s
    after JAX; a CAVI fit never needs them): they are imported where first used, here an interval's bijector, which
    then maps u = 0 to the midpoint 1 with log|dz/du| = log 2 + 2 log(1/2) = -log 2 per entry."""
    out = subprocess.run([sys.executable, "-c", DEFERRED], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["before"] == [] and got["after"], got
    np.testing.assert_allclose(got["z"], [1.0, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(got["log_det"], -3 * np.log(2.0), rtol=1e-6)
