"""The forward–backward E-step of ``Markov`` latents against brute-force enumeration over all paths."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvi
from jaxvi import exact
from jaxvi.exact import chain
from jaxvi.exact import enumerate as enumeration

V = 4  # categories of the categorical emissions


def gaussian_step(params, z, x):
    prev, state = z
    move = params["log_start"][state] if prev is None else params["log_trans"][prev, state]
    return move + jax.scipy.stats.norm.logpdf(x, params["loc"][state], params["scale"][state])


def categorical_step(params, z, x):
    prev, state = z
    move = params["log_start"][state] if prev is None else params["log_trans"][prev, state]
    return move + params["log_emit"][state, x]


def vector_gaussian_step(params, z, x):
    prev, state = z
    move = params["log_start"][state] if prev is None else params["log_trans"][prev, state]
    return move + jnp.sum(jax.scipy.stats.norm.logpdf(x, params["loc"][state], params["scale"][state]))


STEPS = {"gaussian": gaussian_step, "categorical": categorical_step}


def random_hmm(seed, K, emission="gaussian", D=None):
    """NumPy float64 parameters of an HMM with random initial/transition probabilities."""
    rng = np.random.default_rng(seed)
    params = {"log_start": np.log(rng.dirichlet(np.ones(K))),
              "log_trans": np.log(rng.dirichlet(np.ones(K), size=K))}
    if emission == "categorical":
        params["log_emit"] = np.log(rng.dirichlet(np.ones(V), size=K))
    else:
        shape = (K,) if D is None else (K, D)
        params["loc"] = rng.normal(0.0, 1.5, shape)
        params["scale"] = rng.uniform(0.7, 1.5, shape)
    return params


def simulate(params, T, N, seed, emission="gaussian"):
    """N sequences of length T drawn from the HMM (NumPy)."""
    rng = np.random.default_rng(seed)
    start, trans = np.exp(params["log_start"]), np.exp(params["log_trans"])
    K = len(start)
    states = np.zeros((N, T), int)
    states[:, 0] = rng.choice(K, size=N, p=start)
    cum = np.cumsum(trans, axis=1)
    for t in range(1, T):
        u = rng.uniform(size=N)
        states[:, t] = np.minimum((u[:, None] > cum[states[:, t - 1]]).sum(axis=1), K - 1)
    if emission == "categorical":
        emit_cum = np.cumsum(np.exp(params["log_emit"]), axis=1)
        u = rng.uniform(size=(N, T))
        return np.minimum((u[..., None] > emit_cum[states]).sum(axis=-1), V - 1).astype(np.int32)
    loc, scale = params["loc"][states], params["scale"][states]
    return loc + scale * rng.normal(size=loc.shape)


def to_jax(tree, dtype=None):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype) if dtype is not None else jnp.asarray(a), tree)


@functools.partial(jax.jit, static_argnums=(0, 1, 4, 5), static_argnames=("chunk_size", "differentiable"))
def chain_posterior(step, latent, params, data, chunk_size=1024, differentiable=True):
    """``jaxvi.exact.posterior``, compiled once per model, latent and shape (the tests reuse it)."""
    return exact.posterior(step, latent, params, data, chunk_size, differentiable)


# the three forward-backwards: (parallel, differentiable); the last runs in probability space where it stands for
# log space (EM's E-step), else in log space again
WAYS = [(False, True), (True, True), (False, False)]


@functools.partial(jax.jit, static_argnums=1)
def mode_of(post, parallel=False):
    return post.mode(parallel=parallel)


@functools.partial(jax.jit, static_argnums=2)
def sample_of(post, key, parallel=False):
    return post.sample(key, parallel=parallel)


@jax.jit
def stats_of(post):
    """The posterior's derived fields, computed in one compiled call."""
    return {"log_evidence": post.log_evidence, "marginals": post.marginals,
            "pair": post.pair_marginals, "transitions": post.transitions}


@functools.partial(jax.jit, static_argnums=1)
def expect_of(post, f, data=None):
    return post.expect(f, data)


expected_log_joint = jax.jit(exact.expected_log_joint, static_argnums=0)
_enumerate = jax.jit(enumeration.posterior, static_argnums=(0, 1))
_enumerated_marginals = jax.jit(lambda post, latent: post.marginals(latent), static_argnums=1)
_enumerated_expected_log_joint = jax.jit(enumeration.expected_log_joint, static_argnums=0)


@functools.lru_cache(maxsize=None)
def path_log_joint_of(step, T):
    """The log-joint of a whole path z = (z_0, ..., z_{T-1}) of one sequence x (T, ...)."""
    def path_log_joint(params, z, x):
        total = step(params, (None, z[0]), x[0])
        for t in range(1, T):
            total = total + step(params, (z[t - 1], z[t]), x[t])
        return total
    return path_log_joint


def brute_force(step, params, obs, K):
    """Exhaustive enumeration over all K^T paths with jaxvi's Discrete enumeration."""
    N, T = obs.shape[:2]
    latent = tuple(jaxvi.Discrete(K) for _ in range(T))
    path_log_joint = path_log_joint_of(step, T)
    post = _enumerate(path_log_joint, latent, params, obs)
    probs = np.asarray(post.probs)                                      # (N, M)
    paths = np.stack([np.asarray(v) for v in post.values], axis=1)     # (M, T)
    marginals = np.stack([np.asarray(m) for m in _enumerated_marginals(post, latent)], axis=1)  # (N, T, K)
    pair = np.zeros((N, T, K, K))
    for t in range(1, T):
        one_hot = np.eye(K * K)[paths[:, t - 1] * K + paths[:, t]]     # (M, K*K)
        pair[:, t] = (probs @ one_hot).reshape(N, K, K)
    return {"log_evidence": np.asarray(post.log_evidence), "marginals": marginals, "pair": pair,
            "transitions": pair.sum(axis=1), "probs": probs, "paths": paths, "post": post,
            "path_log_joint": path_log_joint, "latent": latent}


# --- brute force ----------------------------------------------------------------------------------

@pytest.mark.parametrize("T, K, emission", [
    (1, 3, "gaussian"), (2, 2, "categorical"), (3, 3, "gaussian"), (4, 2, "categorical"),
    (6, 3, "gaussian"), (5, 3, "categorical"),
])
def test_forward_backward_equals_enumeration_over_all_paths(T, K, emission):
    step = STEPS[emission]
    np_params = random_hmm(T * 10 + K, K, emission)
    np_obs = simulate(np_params, T, 3, seed=T + K, emission=emission)
    with jax.enable_x64(True):
        params, obs = to_jax(np_params), jnp.asarray(np_obs)
        assert params["log_trans"].dtype == jnp.float64
        truth = brute_force(step, params, obs, K)
        np.testing.assert_allclose(truth["probs"].sum(axis=1), 1.0, rtol=1e-12)
        for parallel, differentiable in WAYS:
            post = chain_posterior(step, jaxvi.Markov(K, parallel=parallel), params, obs,
                                   differentiable=differentiable)
            assert isinstance(post, jaxvi.ChainPosterior)
            st = stats_of(post)
            assert st["log_evidence"].dtype == jnp.float64
            assert st["marginals"].shape == (3, T, K)
            assert st["transitions"].shape == (3, K, K)
            assert st["pair"].shape == (3, T, K, K)
            names = ("log_evidence", "marginals", "pair", "transitions")
            chex.assert_trees_all_close({k: st[k] for k in names}, {k: truth[k] for k in names}, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(st["transitions"].sum(axis=(1, 2)), T - 1, rtol=1e-10, atol=1e-10)


def test_posterior_dispatches_on_the_markov_latent_without_jit():
    K, T = 2, 3
    np_params = random_hmm(3, K)
    np_obs = simulate(np_params, T, 2, seed=4)
    with jax.enable_x64(True):
        params, obs = to_jax(np_params), jnp.asarray(np_obs)
        post = exact.posterior(gaussian_step, jaxvi.Markov(K), params, obs, 1)
        assert isinstance(post, jaxvi.ChainPosterior)
        truth = brute_force(gaussian_step, params, obs, K)
        np.testing.assert_allclose(post.log_evidence, truth["log_evidence"], rtol=1e-10)
        np.testing.assert_allclose(post.marginals, truth["marginals"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(post.transitions, truth["transitions"], rtol=1e-10, atol=1e-12)
        assert exact.well_posed(post) is None and bool(exact.all_well_posed(post))  # a chain's E-step cannot be ill-posed


@pytest.mark.parametrize("T, K, emission", [(1, 3, "gaussian"), (5, 2, "categorical"), (6, 3, "gaussian")])
def test_viterbi_equals_the_most_probable_enumerated_path(T, K, emission):
    step = STEPS[emission]
    np_params = random_hmm(100 + T, K, emission)
    np_obs = simulate(np_params, T, 4, seed=7 * T, emission=emission)
    with jax.enable_x64(True):
        params, obs = to_jax(np_params), jnp.asarray(np_obs)
        truth = brute_force(step, params, obs, K)
        best = truth["paths"][np.argmax(truth["probs"], axis=1)]          # (N, T)
        # no near ties, so the argmax is well defined
        top_two = np.sort(truth["probs"], axis=1)[:, -2:]
        assert np.all(top_two[:, 1] - top_two[:, 0] > 1e-6)
        for parallel in (False, True):
            post = chain_posterior(step, jaxvi.Markov(K, parallel=parallel), params, obs)
            for mode_parallel in (False, True):
                mode = np.asarray(mode_of(post, mode_parallel))
                assert mode.shape == (4, T)
                np.testing.assert_array_equal(mode, best)


# --- padded sequences -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def occupancy(K):
    """f(z) = one_hot(z_t): its expectation is the expected time spent in every state."""
    return lambda z: jax.nn.one_hot(z[1], K)


@functools.lru_cache(maxsize=None)
def occupancy_times_x(K):
    return lambda z, x: jax.nn.one_hot(z[1], K) * x


PADDED_K, PADDED_T, PADDED_LENGTHS = 3, 6, np.array([6, 2, 4, 1])


@pytest.fixture(scope="module")
def padded():
    """Sequences padded with finite garbage past their ends, and each one's brute-force posterior alone."""
    np_params = random_hmm(5, PADDED_K)
    full = simulate(np_params, PADDED_T, len(PADDED_LENGTHS), seed=3)
    obs = full.copy()
    junk = np.random.default_rng(9).normal(0, 50.0, obs.shape)
    past = np.arange(PADDED_T)[None, :] >= PADDED_LENGTHS[:, None]
    obs[past] = junk[past]  # must be ignored
    with jax.enable_x64(True):
        params = to_jax(np_params)
        truths = [brute_force(gaussian_step, params, jnp.asarray(full[n:n + 1, :L]), PADDED_K)
                  for n, L in enumerate(PADDED_LENGTHS)]
    return np_params, full, obs, truths


@pytest.mark.parametrize("parallel, differentiable", WAYS)
def test_padded_sequences_equal_each_sequence_run_alone(padded, parallel, differentiable):
    np_params, full, obs, truths = padded
    K = PADDED_K
    with jax.enable_x64(True):
        params = to_jax(np_params)
        data = jaxvi.Sequences(jnp.asarray(obs), jnp.asarray(PADDED_LENGTHS, jnp.int32))
        post = chain_posterior(gaussian_step, jaxvi.Markov(K, parallel=parallel), params, data, chunk_size=3,
                               differentiable=differentiable)
        st = stats_of(post)
        np.testing.assert_array_equal(post.lengths, PADDED_LENGTHS)
        mode = np.asarray(mode_of(post, parallel))
        for n, L in enumerate(PADDED_LENGTHS):
            truth = truths[n]  # the unpadded sequence alone
            np.testing.assert_allclose(st["log_evidence"][n], truth["log_evidence"][0], rtol=1e-10)
            np.testing.assert_allclose(st["marginals"][n, :L], truth["marginals"][0], rtol=1e-10, atol=1e-12)
            np.testing.assert_array_equal(st["marginals"][n, L:], 0.0)
            np.testing.assert_allclose(st["pair"][n, :L], truth["pair"][0], rtol=1e-10, atol=1e-12)
            np.testing.assert_array_equal(st["pair"][n, L:], 0.0)
            np.testing.assert_allclose(st["transitions"][n], truth["transitions"][0], rtol=1e-10, atol=1e-12)
            np.testing.assert_array_equal(mode[n, :L], truth["paths"][np.argmax(truth["probs"][0])])
            np.testing.assert_array_equal(mode[n, L:], -1)


def test_probability_space_in_float32_is_as_exact_as_log_space_where_emission_terms_are_large():
    """States at 0, 30 and 60 with unit scale: emission terms down to about -1,800, and 5 sequences of up to 500 steps.
    The probability-space recursions use one transition matrix :math:`E = \\exp D` at every step, so the rounding of
    :math:`D` adds up over the steps; read where each of its columns rounds least, their float32 log evidence is
    within two ulps of float64 log space's, as float32 log space's is (1.1 ulps at most here; read at step 1, where
    the emission terms reached -1,800, it was 80 ulps off: -0.0101 nats on 500 steps)."""
    rng = np.random.default_rng(1)
    K, T, N = 3, 500, 5
    trans = np.full((K, K), 0.25)
    np.fill_diagonal(trans, 0.5)
    np_params = {"log_start": np.log(np.full(K, 1 / K)), "log_trans": np.log(trans), "loc": np.array([0.0, 30.0, 60.0]),
                 "scale": np.ones(K)}
    lengths = rng.integers(1, T + 1, N)
    lengths[0] = T
    obs = rng.normal(np_params["loc"][rng.integers(0, K, (N, T))], 1.0)
    with jax.enable_x64(True):
        data = jaxvi.Sequences(jnp.asarray(obs), jnp.asarray(lengths, jnp.int32))
        truth = np.asarray(exact.posterior(gaussian_step, jaxvi.Markov(K), to_jax(np_params), data).log_evidence)
    data = jaxvi.Sequences(jnp.asarray(obs, jnp.float32), jnp.asarray(lengths, jnp.int32))
    params = to_jax(np_params, jnp.float32)

    @jax.jit
    def scaled(params, data):
        first_of, pairs_of = chain._potential_functions(gaussian_step, params, K)
        time_major = jnp.moveaxis(data.obs, 1, 0)
        (log_evidence, *_), ok = chain._scaled_scans(first_of(time_major[0]), time_major[1:], pairs_of, data.lengths)
        return log_evidence, ok

    log_evidence, ok = scaled(params, data)
    in_log_space = exact.posterior(gaussian_step, jaxvi.Markov(K), params, data).log_evidence
    assert bool(ok) and log_evidence.dtype == jnp.float32
    ulp = np.spacing(np.abs(truth).astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(np.asarray(in_log_space, np.float64) - truth) <= 2 * ulp)
    off = np.abs(np.asarray(log_evidence, np.float64) - truth)
    assert np.all(off <= 2 * ulp), off / ulp


@pytest.mark.parametrize("block", [1, 2, 4])
def test_probability_space_in_blocks_of_steps_equals_each_padded_sequence_run_alone(padded, block, monkeypatch):
    """The probability-space recursions read their emissions off the potentials of ``block`` steps at a time
    (``EMISSION_BLOCK``): blocks of 1, 2 and 4 of the 5 steps after the first (the last block padded past the data)
    answer alone, with the check passed, as each sequence does by enumeration."""
    np_params, full, obs, truths = padded
    K, N = PADDED_K, len(PADDED_LENGTHS)
    monkeypatch.setattr(chain, "EMISSION_BLOCK", block * K * K * N)
    with jax.enable_x64(True):
        params = to_jax(np_params)
        data = jaxvi.Sequences(jnp.asarray(obs), jnp.asarray(PADDED_LENGTHS, jnp.int32))

        @jax.jit  # compiled afresh for each block size
        def scaled(params, data):
            first_of, pairs_of = chain._potential_functions(gaussian_step, params, K)
            time_major = jnp.moveaxis(data.obs, 1, 0)
            ok = chain._scaled_scans(first_of(time_major[0]), time_major[1:], pairs_of, data.lengths)[1]
            return ok, stats_of(exact.posterior(gaussian_step, jaxvi.Markov(K), params, data, differentiable=False))

        ok, st = scaled(params, data)
        assert bool(ok)
        for n, L in enumerate(PADDED_LENGTHS):
            truth = truths[n]
            np.testing.assert_allclose(st["log_evidence"][n], truth["log_evidence"][0], rtol=1e-10)
            np.testing.assert_allclose(st["marginals"][n, :L], truth["marginals"][0], rtol=1e-10, atol=1e-12)
            np.testing.assert_array_equal(st["marginals"][n, L:], 0.0)
            np.testing.assert_allclose(st["transitions"][n], truth["transitions"][0], rtol=1e-10, atol=1e-12)


def test_padded_sequences_sample_and_expect(padded):
    np_params, full, obs, truths = padded
    K = PADDED_K
    with jax.enable_x64(True):
        params = to_jax(np_params)
        data = jaxvi.Sequences(jnp.asarray(obs), jnp.asarray(PADDED_LENGTHS, jnp.int32))
        post = chain_posterior(gaussian_step, jaxvi.Markov(K), params, data)
        sample = np.asarray(sample_of(post, jax.random.key(0)))
        time_in_state = np.asarray(expect_of(post, occupancy(K)))
        time_in_state_x = np.asarray(expect_of(post, occupancy_times_x(K), data))
        for n, L in enumerate(PADDED_LENGTHS):
            truth = truths[n]
            assert np.all((sample[n, :L] >= 0) & (sample[n, :L] < K))
            np.testing.assert_array_equal(sample[n, L:], -1)
            np.testing.assert_allclose(time_in_state[n], truth["marginals"][0].sum(axis=0), rtol=1e-10)
            np.testing.assert_allclose(time_in_state_x[n], truth["marginals"][0].T @ full[n, :L], rtol=1e-10,
                                       atol=1e-12)


def test_from_concatenated_pads_hmmlearn_style_input():
    K, D, lengths = 2, 2, np.array([3, 5, 1])
    np_params = random_hmm(11, K, D=D)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(lengths.sum(), D))
    data = jaxvi.Sequences.from_concatenated(x, lengths)
    assert data.obs.shape == (3, 5, D)
    np.testing.assert_array_equal(data.lengths, lengths)
    np.testing.assert_array_equal(data.obs[1], x[3:8])
    np.testing.assert_array_equal(data.obs[0, :3], x[:3])
    np.testing.assert_array_equal(data.obs[0, 3:], np.broadcast_to(x[2], (2, D)))  # last row repeated
    np.testing.assert_array_equal(data.obs[2], np.broadcast_to(x[8], (5, D)))
    with pytest.raises(ValueError, match="lengths"):
        jaxvi.Sequences.from_concatenated(x, [3, 5])
    with jax.enable_x64(True):
        params = to_jax(np_params)
        post = chain_posterior(vector_gaussian_step, jaxvi.Markov(K), params,
                               jaxvi.Sequences(jnp.asarray(data.obs), jnp.asarray(data.lengths)))
        st = stats_of(post)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        for n, (s, L) in enumerate(zip(starts, lengths)):
            truth = brute_force(vector_gaussian_step, params, jnp.asarray(x[None, s:s + L]), K)
            np.testing.assert_allclose(st["log_evidence"][n], truth["log_evidence"][0], rtol=1e-10)
            np.testing.assert_allclose(st["marginals"][n, :L], truth["marginals"][0], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(st["transitions"][n], truth["transitions"][0], rtol=1e-10, atol=1e-12)
            np.testing.assert_array_equal(st["marginals"][n, L:], 0.0)


# --- sampling -------------------------------------------------------------------------------------

@pytest.mark.parametrize("parallel", [False, True])
def test_ffbs_path_frequencies_match_the_exact_posterior(parallel):
    K, T, n = 2, 3, 20000
    np_params = {"log_start": np.log([0.6, 0.4]), "log_trans": np.log([[0.7, 0.3], [0.2, 0.8]]),
                 "loc": np.array([-0.5, 0.5]), "scale": np.array([1.0, 1.2])}
    x = np.array([[0.3, -0.4, 0.9]])
    with jax.enable_x64(True):
        truth = brute_force(gaussian_step, to_jax(np_params), jnp.asarray(x), K)
    exact_probs = truth["probs"][0]                                  # over truth["paths"]
    assert exact_probs.min() > 0.01                                  # every path is seen often
    # the same sequence n times: n independent posterior draws in one call
    post = chain_posterior(gaussian_step, jaxvi.Markov(K, parallel=parallel), to_jax(np_params, jnp.float32),
                           jnp.asarray(np.repeat(x, n, axis=0), jnp.float32))
    samples = np.asarray(sample_of(post, jax.random.key(42), parallel))
    assert samples.shape == (n, T)
    weights = K ** np.arange(T - 1, -1, -1)
    counts = np.bincount(samples @ weights, minlength=K ** T)[truth["paths"] @ weights]
    freq = counts / n
    se = np.sqrt(exact_probs * (1 - exact_probs) / n)
    assert np.all(np.abs(freq - exact_probs) < 4.5 * se), (freq, exact_probs)
    # a different key gives different draws
    other = np.asarray(sample_of(post, jax.random.key(43), parallel))
    assert np.mean(other != samples) > 0.1


# --- sequential scan against associative scan -----------------------------------------------------

def test_scan_and_associative_scan_agree():
    K, T, N = 4, 200, 3
    np_params = random_hmm(21, K)
    obs = jnp.asarray(simulate(np_params, T, N, seed=22), jnp.float32)
    params = to_jax(np_params, jnp.float32)
    seq = chain_posterior(gaussian_step, jaxvi.Markov(K), params, obs)
    par = chain_posterior(gaussian_step, jaxvi.Markov(K, parallel=True), params, obs)
    seq_stats, par_stats = stats_of(seq), stats_of(par)
    assert seq_stats["log_evidence"].dtype == jnp.float32
    np.testing.assert_allclose(par_stats["log_evidence"], seq_stats["log_evidence"], rtol=1e-5)
    np.testing.assert_allclose(par_stats["marginals"], seq_stats["marginals"], atol=1e-5)
    np.testing.assert_allclose(par_stats["pair"], seq_stats["pair"], atol=1e-5)
    np.testing.assert_allclose(par_stats["transitions"], seq_stats["transitions"], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(mode_of(par, True), mode_of(seq))


# --- long sequences -------------------------------------------------------------------------------

LONG_K, LONG_T = 3, 100_000


@pytest.fixture(scope="module")
def long_sequence():
    """One sequence of 100000 steps and its float64 posterior (log evidence, marginals)."""
    np_params = random_hmm(31, LONG_K)
    np_params["log_trans"] = np.log(np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]]))
    np_params["loc"] = np.array([-2.0, 0.0, 2.0])
    x = simulate(np_params, LONG_T, 1, seed=32)
    with jax.enable_x64(True):
        reference = chain_posterior(gaussian_step, jaxvi.Markov(LONG_K), to_jax(np_params), jnp.asarray(x))
        ref = jax.tree_util.tree_map(np.asarray, stats_of(reference))
    assert ref["log_evidence"].dtype == np.float64
    return np_params, x, ref


@pytest.mark.parametrize("parallel, differentiable", WAYS)
def test_a_sequence_of_100000_steps_in_float32_matches_float64(long_sequence, parallel, differentiable):
    np_params, x, ref = long_sequence
    assert np.isfinite(ref["log_evidence"][0])
    post = chain_posterior(gaussian_step, jaxvi.Markov(LONG_K, parallel=parallel), to_jax(np_params, jnp.float32),
                           jnp.asarray(x, jnp.float32), differentiable=differentiable)
    st = jax.tree_util.tree_map(np.asarray, stats_of(post))
    assert st["log_evidence"].dtype == np.float32
    assert np.isfinite(st["log_evidence"][0])
    np.testing.assert_allclose(st["log_evidence"], ref["log_evidence"], rtol=1e-5)
    assert np.all(np.isfinite(st["marginals"]))
    np.testing.assert_allclose(st["marginals"].sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(st["marginals"], ref["marginals"], atol=1e-3)
    assert np.all(np.isfinite(st["transitions"]))
    np.testing.assert_allclose(st["transitions"].sum(), LONG_T - 1, rtol=1e-4)


# --- expectations ---------------------------------------------------------------------------------

def test_expect_and_expected_log_joint_equal_enumeration():
    K, T, N = 3, 4, 2
    np_params = random_hmm(41, K)
    np_obs = simulate(np_params, T, N, seed=42)

    def indicators(z, x):
        prev, state = z
        if prev is None:
            return jnp.concatenate([jax.nn.one_hot(state, K), jnp.zeros(K * K)])
        return jnp.concatenate([jnp.zeros(K), jax.nn.one_hot(prev * K + state, K * K)])

    def moments(z, x):
        return jnp.stack([jax.nn.one_hot(z[1], K) * x, jax.nn.one_hot(z[1], K) * x ** 2])

    def no_data(z):
        return jax.nn.one_hot(z[1], K) + (0.0 if z[0] is None else 10.0 * z[0])

    with jax.enable_x64(True):
        params, obs = to_jax(np_params), jnp.asarray(np_obs)
        truth = brute_force(gaussian_step, params, obs, K)
        path_log_joint = truth["path_log_joint"]
        brute_q = _enumerated_expected_log_joint(path_log_joint, params, obs, truth["post"])
        brute_per_sequence = expect_of(truth["post"], functools.partial(path_log_joint, params), obs)
        probs = truth["probs"]
        entropy = -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0))
        step_of_params = functools.partial(gaussian_step, params)
        for parallel in (False, True):
            post = chain_posterior(gaussian_step, jaxvi.Markov(K, parallel=parallel), params, obs)

            per_sequence = expect_of(post, step_of_params, obs)
            assert per_sequence.shape == (N,)
            np.testing.assert_allclose(per_sequence, brute_per_sequence, rtol=1e-10)
            q = expected_log_joint(gaussian_step, params, obs, post)
            np.testing.assert_allclose(q, brute_q, rtol=1e-10)
            np.testing.assert_allclose(q, per_sequence.sum(), rtol=1e-12)
            # ELBO identity: Q + H(q) = log p(x) for the exact posterior
            np.testing.assert_allclose(q + entropy, truth["log_evidence"].sum(), rtol=1e-10)

            features = np.asarray(expect_of(post, indicators, obs))
            assert features.shape == (N, K + K * K)
            np.testing.assert_allclose(features[:, :K], truth["marginals"][:, 0], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(features[:, K:].reshape(N, K, K), truth["transitions"], rtol=1e-10,
                                       atol=1e-12)

            weighted = expect_of(post, moments, obs)
            assert weighted.shape == (N, 2, K)
            np.testing.assert_allclose(weighted[:, 0], np.einsum("ntk,nt->nk", truth["marginals"], np_obs),
                                       rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(weighted[:, 1], np.einsum("ntk,nt->nk", truth["marginals"], np_obs ** 2),
                                       rtol=1e-10, atol=1e-12)

            expected_previous = np.einsum("ntk,k->n", truth["marginals"][:, :-1], np.arange(K))
            np.testing.assert_allclose(expect_of(post, no_data),
                                       truth["marginals"].sum(axis=1) + 10.0 * expected_previous[:, None],
                                       rtol=1e-10)


# --- impossible transitions -----------------------------------------------------------------------

@pytest.mark.parametrize("parallel, differentiable", WAYS)
def test_an_impossible_transition_gets_zero_probability_and_no_nan(parallel, differentiable):
    K, T, N = 3, 5, 3
    np_params = random_hmm(51, K)
    trans = np.exp(np_params["log_trans"])
    trans[0, 2] = 0.0
    trans[2, 1] = 0.0
    trans /= trans.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        np_params["log_trans"] = np.log(trans)
        np_params["log_start"] = np.log(np.array([0.5, 0.5, 0.0]))  # never starts in state 2
    assert np.isneginf(np_params["log_trans"][0, 2])
    np_obs = simulate(np_params, T, N, seed=52)
    with jax.enable_x64(True):
        params, obs = to_jax(np_params), jnp.asarray(np_obs)
        truth = brute_force(gaussian_step, params, obs, K)
        post = chain_posterior(gaussian_step, jaxvi.Markov(K, parallel=parallel), params, obs,
                               differentiable=differentiable)
        st = jax.tree_util.tree_map(np.asarray, stats_of(post))
        for name, field in st.items():
            assert not np.any(np.isnan(field)), name
        assert np.all(np.isfinite(st["log_evidence"]))
        np.testing.assert_allclose(st["log_evidence"], truth["log_evidence"], rtol=1e-10)
        np.testing.assert_allclose(st["marginals"], truth["marginals"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(st["transitions"], truth["transitions"], rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(st["transitions"][:, 0, 2], 0.0)
        np.testing.assert_array_equal(st["transitions"][:, 2, 1], 0.0)
        np.testing.assert_array_equal(st["marginals"][:, 0, 2], 0.0)
        q = expected_log_joint(gaussian_step, params, obs, post)
        assert np.isfinite(q)
        np.testing.assert_allclose(
            q, _enumerated_expected_log_joint(truth["path_log_joint"], params, obs, truth["post"]), rtol=1e-10)
        mode = np.asarray(mode_of(post, parallel))
        np.testing.assert_array_equal(mode, truth["paths"][np.argmax(truth["probs"], axis=1)])
        samples = np.asarray(jax.vmap(lambda k: sample_of(post, k, parallel))(
            jax.random.split(jax.random.key(1), 200)))
        for path in (mode, *samples):
            assert np.all(path[:, 0] != 2)
            moves = path[:, :-1] * K + path[:, 1:]
            assert not np.any((moves == 0 * K + 2) | (moves == 2 * K + 1))


# --- the parallel prefix scan ---------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 2, 5, 8, 13])
@pytest.mark.parametrize("reverse", [False, True])
def test_prefix_scan_equals_sequential_matrix_products(T, reverse):
    """Non-commutative: products of random 3x3 matrices, against numpy's running products."""
    mats = np.random.default_rng(T).normal(size=(T, 3, 3))
    with jax.enable_x64(True):
        out = np.asarray(jax.jit(lambda m: chain.prefix_scan(jnp.matmul, m, reverse=reverse))(jnp.asarray(mats)))
    for t in range(T):
        expected = np.eye(3)
        for m in (mats[t:] if reverse else mats[:t + 1]):
            expected = expected @ m
        np.testing.assert_allclose(out[t], expected, rtol=1e-10, atol=1e-12)


# --- a sequence no path explains ------------------------------------------------------------------

@pytest.mark.parametrize("parallel, differentiable", WAYS)
def test_a_sequence_no_path_explains_has_log_evidence_minus_infinity_and_no_nan(parallel, differentiable):
    """State 1 can only follow state 1; the second sequence's symbol 1 at t = 1 needs state 1 there, but
    state 1 is never a start and 0 -> 1 is impossible, so p(x) = 0 exactly."""
    K = 2
    with np.errstate(divide="ignore"):
        params = {"log_start": np.log([1.0, 0.0]), "log_trans": np.log([[1.0, 0.0], [0.5, 0.5]]),
                  "log_emit": np.log(np.array([[0.5, 0.0, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25]]))}
    obs = np.array([[0, 2, 3], [0, 1, 2]], np.int32)
    with jax.enable_x64(True):
        post = chain_posterior(categorical_step, jaxvi.Markov(K, parallel=parallel), to_jax(params), jnp.asarray(obs),
                               differentiable=differentiable)
        truth = brute_force(categorical_step, to_jax(params), jnp.asarray(obs), K)
        log_evidence = np.asarray(post.log_evidence)
    assert np.isneginf(truth["log_evidence"][1]) and np.isneginf(log_evidence[1])
    np.testing.assert_allclose(log_evidence[0], truth["log_evidence"][0], rtol=1e-12)
    assert not np.any(np.isnan(np.asarray(post.log_forward)))


def test_em_stops_on_a_sequence_no_path_explains_and_names_it():
    K = 2

    def init(key, data):
        with np.errstate(divide="ignore"):
            return {"log_start": jnp.log(jnp.array([1.0, 0.0])), "log_trans": jnp.log(jnp.array([[1.0, 0.0], [0.5, 0.5]])),
                    "log_emit": jnp.log(jnp.array([[0.5, 0.0, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25]]))}

    model = jaxvi.Model(categorical_step, jaxvi.Markov(K), init)
    obs = np.array([[0, 2, 3], [0, 2, 2], [0, 1, 2]], np.int32)
    with pytest.raises(ValueError, match=r"log p\(x\) is not finite for datum 2"):
        jaxvi.infer(model, jaxvi.EM(max_iter=3, m_step=lambda p, d, q: p), obs, key=jax.random.key(0), progress=False)


# --- the probability-space recursions and their check ---------------------------------------------

@functools.partial(jax.jit, static_argnums=(0, 1))
def stands_for_log_space(step, K, params, obs):
    """Whether ``chain._scaled_scans`` stands for the log-space recursions on these (unpadded) sequences."""
    first_of, pairs_of = chain._potential_functions(step, params, K)
    time_major = jnp.moveaxis(obs, 1, 0)
    lengths = jnp.full(obs.shape[0], obs.shape[1], jnp.int32)
    return chain._scaled_scans(first_of(time_major[0]), time_major[1:], pairs_of, lengths)[1]


def input_driven_step(params, z, x):
    """Transitions that depend on the step's observation: staying is likelier the larger x."""
    prev, state = z
    move = params["log_start"][state] if prev is None else params["log_trans"][prev, state] + 0.7 * x * (prev == state)
    return move + jax.scipy.stats.norm.logpdf(x, params["loc"][state], params["scale"][state])


def rare_jump_hmm():
    """Left to right, 0 -> 1 with probability exp(-103.6): in float32 that transition flushes to 0 in probability
    space (below the smallest float), and the sequence 0, 0, 100, 100 can only be explained by taking it."""
    with np.errstate(divide="ignore"):
        params = {"log_start": np.log([1.0, 0.0]), "log_trans": np.array([[0.0, -103.6], [-np.inf, 0.0]]),
                  "loc": np.array([0.0, 100.0]), "scale": np.array([1.0, 1.0])}
    return params, np.array([[0.0, 0.0, 100.0, 100.0]])


def test_probability_space_is_refused_where_transitions_depend_on_the_data_or_flush_to_zero():
    K, T, N = 3, 5, 3
    np_params = random_hmm(61, K)
    np_obs = simulate(np_params, T, N, seed=62)
    with jax.enable_x64(True):
        params, obs = to_jax(np_params), jnp.asarray(np_obs)
        assert bool(stands_for_log_space(gaussian_step, K, params, obs))
        assert not bool(stands_for_log_space(input_driven_step, K, params, obs))
        truth = brute_force(input_driven_step, params, obs, K)
        st = stats_of(chain_posterior(input_driven_step, jaxvi.Markov(K), params, obs, differentiable=False))
        names = ("log_evidence", "marginals", "pair", "transitions")
        chex.assert_trees_all_close({k: st[k] for k in names}, {k: truth[k] for k in names}, rtol=1e-10, atol=1e-10)

    # float32: a transition below the smallest float, which the only explanation of the sequence takes
    rare, x = rare_jump_hmm()
    with jax.enable_x64(True):
        truth = brute_force(gaussian_step, to_jax(rare), jnp.asarray(x), 2)
    assert np.isfinite(truth["log_evidence"][0])
    params32, x32 = to_jax(rare, jnp.float32), jnp.asarray(x, jnp.float32)
    assert not bool(stands_for_log_space(gaussian_step, 2, params32, x32))
    st = stats_of(chain_posterior(gaussian_step, jaxvi.Markov(2), params32, x32, differentiable=False))
    np.testing.assert_allclose(st["log_evidence"], truth["log_evidence"], rtol=1e-6)
    np.testing.assert_allclose(st["marginals"], truth["marginals"], atol=1e-6)
    np.testing.assert_allclose(st["transitions"], truth["transitions"], atol=1e-6)

    # vmapped over two parameter sets, one in float range and one not: each gets its own answer, the first the
    # probability-space one (at x = 100 float32 rounds its log-potentials of -5000 to 3e-4, so the two ways differ)
    plain = random_hmm(63, 2)
    both = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]).astype(jnp.float32), plain, rare)
    batched = jax.vmap(lambda p: stats_of(chain_posterior(gaussian_step, jaxvi.Markov(2), p, x32,
                                                          differentiable=False)))(both)
    for i, (one, differentiable) in enumerate(((plain, False), (rare, True))):
        alone = stats_of(chain_posterior(gaussian_step, jaxvi.Markov(2), to_jax(one, jnp.float32), x32,
                                         differentiable=differentiable))
        chex.assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[i], batched), alone, rtol=1e-6, atol=1e-7)
    scaled, logged = (stats_of(chain_posterior(gaussian_step, jaxvi.Markov(2), to_jax(plain, jnp.float32), x32,
                                               differentiable=d)) for d in (False, True))
    assert np.max(np.abs(scaled["marginals"] - logged["marginals"])) > 1e-6


def test_probability_space_takes_a_column_impossible_at_step_one_from_another_sequence():
    """State 1 never emits symbol 0. Where some sequence has another symbol at step 1, state 1's transitions are
    read there and the recursions stand; where every sequence starts its steps with symbol 0 they cannot be read,
    the check refuses, and log space answers. Both equal enumeration."""
    K = 2
    with np.errstate(divide="ignore"):
        params = {"log_start": np.log([0.6, 0.4]), "log_trans": np.log([[0.7, 0.3], [0.2, 0.8]]),
                  "log_emit": np.log(np.array([[0.4, 0.2, 0.2, 0.2], [0.0, 0.5, 0.25, 0.25]]))}
    readable = np.array([[1, 0, 2, 1, 0], [2, 3, 1, 1, 2]], np.int32)
    unreadable = np.array([[1, 0, 2, 1, 0], [2, 0, 1, 1, 2]], np.int32)
    with jax.enable_x64(True):
        jparams = to_jax(params)
        for obs, stands in ((readable, True), (unreadable, False)):
            obs = jnp.asarray(obs)
            assert bool(stands_for_log_space(categorical_step, K, jparams, obs)) is stands
            truth = brute_force(categorical_step, jparams, obs, K)
            st = stats_of(chain_posterior(categorical_step, jaxvi.Markov(K), jparams, obs, differentiable=False))
            names = ("log_evidence", "marginals", "pair", "transitions")
            chex.assert_trees_all_close({k: st[k] for k in names}, {k: truth[k] for k in names},
                                        rtol=1e-10, atol=1e-10)


def test_probability_space_is_chosen_where_the_fit_repays_its_compile_time():
    """``SCALED_WORK`` of (K^2 x sequences + ``STEP_ENTRIES``) x steps x passes: a 10-iteration EM of 200 x 1,000
    steps at K = 8 stays in log space, 100 iterations, or one pass over one sequence of 10^6 steps, do not; nor does a
    10-iteration EM of one sequence of 10^5 steps, though its K^2 x sequence steps are half the first fit's; the
    parallel scan and other latents are never switched."""
    many, long = jnp.zeros((200, 1_000, 4)), jax.ShapeDtypeStruct((1, 1_000_000, 4), jnp.float32)
    assert (64 * 200 + chain.STEP_ENTRIES) * 1_000 * 11 < chain.SCALED_WORK <= (64 * 200) * 1_000 * 101
    assert exact.differentiable_for(jaxvi.Markov(8), many, 11)
    assert not exact.differentiable_for(jaxvi.Markov(8), many, 101)
    assert not exact.differentiable_for(jaxvi.Markov(8), long, 1)
    assert not exact.differentiable_for(jaxvi.Markov(8), jax.ShapeDtypeStruct((1, 100_000, 4), jnp.float32), 11)
    assert exact.differentiable_for(jaxvi.Markov(8, parallel=True), many, 101)
    assert exact.differentiable_for(jaxvi.Discrete(8), jnp.zeros((10**7, 4)), 101)
