"""Structured mean field over several Markov chains (jaxvi.vi.chains) and the factorial HMM (Ghahramani & Jordan
1997) fitted by jaxvi.CAVI: against the exact forward algorithm on the product chain (NumPy, every joint state
enumerated) and against Ghahramani & Jordan's closed-form update of one chain."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax, logsumexp
from scipy.stats import binom, norm

import jaxvi
from jaxvi.run.schedule import RESOLUTION_ULPS
from jaxvi.vi import chains

KEY = jax.random.key(0)
# a chain's step tables and one sweep, each one compiled program (run op by op they compiled one per operation)
step_tables = jax.jit(chains.tables, static_argnums=(0, 3))
sweep = jax.jit(chains.sweep)


def sample_factorial_hmm(rng, M, K, d, N, T, noise=0.3):
    """Sequences from M sticky chains whose state means add up."""
    means = rng.normal(size=(M, K, d)) * 2.0
    states = np.zeros((N, T, M), np.int64)
    states[:, 0] = rng.integers(0, K, (N, M))
    for t in range(1, T):
        stay = rng.random((N, M)) < 0.8
        states[:, t] = np.where(stay, states[:, t - 1], rng.integers(0, K, (N, M)))
    x = sum(means[m][states[..., m]] for m in range(M)) + noise * rng.normal(size=(N, T, d))
    return x


def product_chain_log_evidence(params, x):
    """log p(x) of one sequence by the forward algorithm over all K^M joint states (NumPy)."""
    M, K = np.shape(params["start"])
    joint = np.array(list(itertools.product(range(K), repeat=M)))                   # (K^M, M)
    start = log_softmax(np.asarray(params["start"]), -1)
    trans = log_softmax(np.asarray(params["transitions"]), -1)
    means, scale = np.asarray(params["means"]), np.exp(np.asarray(params["log_scale"]))
    location = sum(means[m, joint[:, m]] for m in range(M))                         # (K^M, d)
    emit = lambda x_t: norm.logpdf(x_t, location, scale).sum(-1)  # noqa: E731
    move = sum(trans[m][joint[:, m][:, None], joint[:, m][None, :]] for m in range(M))
    alpha = sum(start[m, joint[:, m]] for m in range(M)) + emit(x[0])
    for x_t in x[1:]:
        alpha = logsumexp(alpha[:, None] + move, axis=0) + emit(x_t)
    return logsumexp(alpha)


def forward_backward(log_start, log_move, log_emit):
    """State marginals (T, K) and log normaliser of one chain (NumPy)."""
    T = log_emit.shape[0]
    alpha, beta = np.zeros_like(log_emit), np.zeros_like(log_emit)
    alpha[0] = log_start + log_emit[0]
    for t in range(1, T):
        alpha[t] = logsumexp(alpha[t - 1][:, None] + log_move, axis=0) + log_emit[t]
    for t in range(T - 2, -1, -1):
        beta[t] = logsumexp(log_move + log_emit[t + 1] + beta[t + 1], axis=1)
    gamma = alpha + beta
    return np.exp(gamma - logsumexp(gamma, axis=1, keepdims=True)), logsumexp(alpha[-1])


def test_one_chain_is_exact_its_bound_is_the_log_evidence():
    """With one chain the structured q is the exact posterior: one sweep gives log p(x) and the marginals of
    forward-backward."""
    x = sample_factorial_hmm(np.random.default_rng(0), 1, 3, 2, 3, 9)
    with jax.enable_x64(True):
        model = jaxvi.models.factorial_hmm(1, 3, 2)
        params = model.init(KEY, jnp.asarray(x))
        layout = chains.chain_layout(model.latent)
        table = step_tables(model.log_joint, params, jnp.asarray(x), layout)
        post = sweep(table, chains.initial(KEY, jnp.asarray(x), layout, jnp.float64))
        bound, marginals = np.asarray(post.bound), np.asarray(post.marginals[0])
    start = log_softmax(np.asarray(params["start"][0]))
    move = log_softmax(np.asarray(params["transitions"][0]), -1)
    for n in range(3):
        emit = norm.logpdf(x[n][:, None, :], np.asarray(params["means"][0]),
                           np.exp(np.asarray(params["log_scale"]))).sum(-1)
        gamma, log_evidence = forward_backward(start, move, emit)
        np.testing.assert_allclose(bound[n], log_evidence, rtol=1e-12)
        np.testing.assert_allclose(bound[n], product_chain_log_evidence(params, x[n]), rtol=1e-12)
        np.testing.assert_allclose(marginals[n], gamma, atol=1e-12)


def test_a_chain_update_is_ghahramani_and_jordan_s():
    """Chain m's update given the others' marginals: G&J's variational emission parameters
    log h_t(k) = W_m[k]ᵀ C⁻¹ (x_t − Σ_{l≠m} W_lᵀ⟨s_l,t⟩) − ½ W_m[k]ᵀ C⁻¹ W_m[k], then forward-backward with the
    chain's own start and transitions. And after every update the bound (E_q log p + Σ H) equals what the
    weights give when evaluated from scratch."""
    M, K, d = 3, 2, 2
    x = sample_factorial_hmm(np.random.default_rng(1), M, K, d, 2, 8)
    with jax.enable_x64(True):
        model = jaxvi.models.factorial_hmm(M, K, d)
        params = model.init(KEY, jnp.asarray(x))
        layout = chains.chain_layout(model.latent)
        table = step_tables(model.log_joint, params, jnp.asarray(x), layout)
        start = chains.initial(jax.random.key(3), jnp.asarray(x), layout, jnp.float64)
        others = [np.asarray(m) for m in start.marginals]
        updated = sweep(table, start)
        marginals = [np.asarray(m) for m in updated.marginals]
        rescored = float(updated.expected_log_joint(model.log_joint, params, jnp.asarray(x))
                         + jnp.sum(updated.entropy))
    W, precision = np.asarray(params["means"]), np.exp(-2 * np.asarray(params["log_scale"]))
    current = list(others)
    for m in range(M):  # the sweep's order: chain m sees the updated chains before it
        for n in range(2):
            rest = sum(current[l][n] @ W[l] for l in range(M) if l != m)            # (T, d)
            log_h = (x[n] - rest) @ (precision * W[m]).T - 0.5 * np.sum(precision * W[m] ** 2, -1)
            gamma, _ = forward_backward(log_softmax(np.asarray(params["start"][m])),
                                        log_softmax(np.asarray(params["transitions"][m]), -1), log_h)
            np.testing.assert_allclose(marginals[m][n], gamma, atol=1e-10)
        current[m] = marginals[m]
    np.testing.assert_allclose(rescored, float(np.sum(np.asarray(updated.bound))), rtol=1e-12)


@pytest.fixture(scope="module")
def fitted():
    M, K, d = 2, 2, 2
    x = sample_factorial_hmm(np.random.default_rng(2), M, K, d, 6, 40, noise=1.5).astype(np.float32)
    model = jaxvi.models.factorial_hmm(M, K, d)
    result = jaxvi.infer(model, jaxvi.CAVI(max_iter=40, tol=0.0), jnp.asarray(x), key=KEY, progress=False)
    return model, x, result


def test_variational_em_bound_rises_and_stays_below_the_exact_evidence(fitted):
    """Variational EM on a factorial HMM (structured E-steps, gradient M-steps on θ): the bound never falls
    (float32), it is at most log p(D) from the product chain at the fitted θ, and the fitted θ explains the data
    better than the initial θ (exact log p(D))."""
    model, x, result = fitted
    trace = np.asarray(result.trace, np.float64)
    trace = trace[np.isfinite(trace)]
    resolution = RESOLUTION_ULPS * np.finfo(np.float32).eps * np.abs(trace[1:])
    assert np.all(np.diff(trace) >= -resolution)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), result.params)
    exact = sum(product_chain_log_evidence(params, sequence) for sequence in x)
    initial = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), model.init(jax.random.split(KEY)[0],
                                                                                    jnp.asarray(x)))
    assert float(result.objective) <= exact
    assert exact - float(result.objective) < 0.02 * abs(exact)
    np.testing.assert_allclose(float(result.diagnostics.log_evidence), exact, rtol=1e-6)  # both sides, reported
    np.testing.assert_allclose(float(result.diagnostics.gap), exact - float(result.objective), rtol=1e-3)
    assert exact > sum(product_chain_log_evidence(initial, sequence) for sequence in x) + 100


def test_posterior_gives_every_chain_s_marginals_and_the_bound_accepts_them(fitted):
    """``Result.posterior(data).local`` is the structured q (sweeps to convergence at the fitted θ); ``CAVI.bound``
    at that q equals the bound its sweeps report, and is at most the exact log p(D)."""
    model, x, result = fitted
    q = result.posterior(jnp.asarray(x)).local
    assert [m.shape for m in q.marginals] == [(6, 40, 2), (6, 40, 2)]
    np.testing.assert_allclose(np.sum(np.asarray(q.marginals[0]), -1), 1.0, rtol=1e-6)
    bound = float(jaxvi.CAVI().bound(model, result.params, (), jnp.asarray(x), q))
    np.testing.assert_allclose(bound, float(np.sum(np.asarray(q.bound, np.float64))), rtol=1e-6)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), result.params)
    assert bound <= sum(product_chain_log_evidence(params, sequence) for sequence in x)


def test_one_chain_beside_global_factors_is_the_exact_chain():
    """A local latent of one chain in a tuple runs the structured path; with a global factor beside it (Dirichlet
    transition rows), its fit is the exact-chain fit, bound for bound, and its local gap is 0 (the exact local
    normaliser, by the forward algorithm on the same table, equals the bound)."""
    emissions = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]]))

    def model(wrap):
        def log_joint(params, z, x):
            prev, state = z["states"][0] if wrap else z["states"]
            move = -jnp.log(2.0) if prev is None else jnp.log(z["rows"][prev, state])
            return move + jnp.asarray(emissions)[state, x]

        rows = jaxvi.Global(jaxvi.Dirichlet(2, (2,)), lambda params, z: jnp.sum(jnp.log(z)))  # Dirichlet(2) rows
        states = (jaxvi.Markov(2),) if wrap else jaxvi.Markov(2)
        return jaxvi.Model(log_joint, {"rows": rows, "states": states}, init=lambda key, data: {})

    sequences = jnp.asarray(np.random.default_rng(4).integers(0, 3, (3, 30)))
    with jax.enable_x64(True):
        results = [jaxvi.infer(model(wrap), jaxvi.CAVI(max_iter=6, tol=0.0), sequences, key=KEY, progress=False)
                   for wrap in (False, True)]
        traces = [np.asarray(r.trace) for r in results]
        gaps = [float(r.diagnostics.gap) for r in results]
        evidences = [float(r.diagnostics.log_evidence) for r in results]
    np.testing.assert_allclose(traces[1], traces[0], rtol=1e-10)
    assert gaps[0] == 0.0 and abs(gaps[1]) < 1e-9 * abs(traces[0][-1])
    assert np.isnan(evidences).all()  # a global factor: no exact evidence


def test_too_many_chains_and_em_on_chains_are_refused_with_their_names():
    x = jnp.zeros((2, 5, 1))
    with pytest.raises(ValueError, match="latent: 9 Markov chains"):
        jaxvi.infer(jaxvi.models.factorial_hmm(9, 2, 1), jaxvi.CAVI(), x, key=KEY, progress=False)
    with pytest.raises(ValueError, match="jaxvi.CAVI"):
        jaxvi.infer(jaxvi.models.factorial_hmm(2, 2, 1), jaxvi.EM(), x, key=KEY, progress=False)
    with pytest.raises(ValueError, match=r"CAVI\(start='random'\): random responsibilities need a Discrete"):
        jaxvi.infer(jaxvi.models.factorial_hmm(2, 2, 1), jaxvi.CAVI(start="random"), x, key=KEY, progress=False)
    with pytest.raises(ValueError, match="M: expected an integer"):
        jaxvi.models.factorial_hmm(0, 2, 1)


def test_a_structured_fit_killed_mid_way_resumes_to_the_uninterrupted_result(fitted, tmp_path, monkeypatch):
    """The run layer's checkpoints carry the chains' q (``CAVIState.local``): a fit stopped after its second
    checkpoint and rerun with the same call ends where the uninterrupted fit ends, bit for bit."""
    from jaxvi.run import checkpoint as checkpoints
    model, x, result = fitted
    method = jaxvi.CAVI(max_iter=40, tol=0.0)
    path, save, saved = str(tmp_path / "fit.ckpt"), checkpoints.save, []

    def save_then_stop(*args):
        save(*args)
        saved.append(args)
        if len(saved) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        jaxvi.infer(model, method, jnp.asarray(x), key=KEY, progress=False, checkpoint=path, checkpoint_every=10)
    monkeypatch.setattr(checkpoints, "save", save)
    resumed = jaxvi.infer(model, method, jnp.asarray(x), key=KEY, progress=False, checkpoint=path,
                          checkpoint_every=10)
    np.testing.assert_array_equal(resumed.trace, result.trace)
    np.testing.assert_array_equal(resumed.params["means"], result.params["means"])


def test_vmapped_over_data_sets_equals_one_fit_per_data_set(fitted):
    """``jax.vmap`` of a whole CAVI fit over two data sets gives each data set's own fit, bound for bound (float64:
    in float32 the batched and unbatched programs round differently and the M-step's L-BFGS line searches carry
    the difference on)."""
    model, x, _ = fitted
    with jax.enable_x64(True):
        sets = jnp.asarray(x, jnp.float64).reshape(2, 3, *x.shape[1:])
        fit = lambda data: jaxvi.infer(model, jaxvi.CAVI(max_iter=6, tol=0.0), data, key=KEY,  # noqa: E731
                                       progress=False).trace
        together = np.asarray(jax.vmap(fit)(sets))
        alone = [np.asarray(fit(data)) for data in sets]
    np.testing.assert_allclose(together, alone, rtol=1e-10)
    assert abs(alone[0][-1] - alone[1][-1]) > 0.1  # two different fits


def test_exported_draws_follow_each_chain_of_q_and_the_likelihood_is_the_product_chain_s(fitted):
    """``jaxvi.predictive`` of the structured fit: every chain's paths drawn from q_m (state and pair frequencies
    against its step weights), and the log-likelihood of every sequence log p(x_n | θ̂), the forward algorithm on
    the product chain (NumPy)."""
    model, x, result = fitted
    draws = 4000
    out = jaxvi.predictive(result, jnp.asarray(x), key=jax.random.key(1), num_draws=draws)
    q = result.posterior(jnp.asarray(x)).local
    def within(counts, p):  # binomial counts within their 1e-6 quantiles (many p are near 0)
        return np.all((binom.ppf(1e-6, draws, p) <= counts) & (counts <= binom.isf(1e-6, draws, p)))

    for m in range(2):
        paths = np.asarray(out.local_draws[m])                                     # (S, N, T)
        assert within((paths == 1).sum(0), np.asarray(q.marginals[m], np.float64)[..., 1])
        pair = np.asarray(q.weights[m], np.float64)[:, 1:, 1, 0]                    # q(z_{t-1} = 1, z_t = 0)
        assert within(((paths[:, :, :-1] == 1) & (paths[:, :, 1:] == 0)).sum(0), np.clip(pair, 0, 1))
    exact = [product_chain_log_evidence(result.params, x[n]) for n in range(len(x))]
    np.testing.assert_allclose(np.asarray(out.log_likelihood), np.broadcast_to(exact, (draws, len(x))), rtol=1e-5)
    idata = result.to_arviz(jnp.asarray(x), key=jax.random.key(2), num_draws=10)
    assert set(idata.posterior.data_vars) == {"z.0", "z.1"} and idata.posterior["z.1"].shape == (4, 10, 6, 40)
