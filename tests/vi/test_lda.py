"""LDA written as a log-joint (jaxvi.models.lda) and fitted by jaxvi.CAVI with local exponential-family factors:
against scikit-learn's batch LatentDirichletAllocation from the same initial topics, a NumPy E-step and bound,
a corpus drawn from LDA, and the same corpus as single tokens."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, special
from sklearn.decomposition import LatentDirichletAllocation

import jaxvi
from jaxvi.models import bag_of_words, lda

K, V = 3, 30


def draw_corpus(rng, n, dtype=np.float64):
    topics = rng.dirichlet(np.full(V, 0.2), K)
    proportions = rng.dirichlet(np.full(K, 0.5), n)
    counts = np.stack([rng.multinomial(rng.integers(30, 80), p @ topics) for p in proportions]).astype(dtype)
    return topics, counts


@pytest.fixture(scope="module")
def corpus():
    return draw_corpus(np.random.default_rng(0), 80)


def expected_log(concentration):
    return special.digamma(concentration) - special.digamma(concentration.sum(-1, keepdims=True))


def numpy_e_step(counts, topic_concentration, alpha, tol, max_iter):
    """Blei, Ng & Jordan's per-document updates, document by document from gamma = 1, until the mean change of
    gamma is below tol; returns gamma (N, K)."""
    e_log_beta = expected_log(topic_concentration)
    gammas = []
    for doc in counts:
        words = np.flatnonzero(doc)
        gamma = np.ones(K)
        for _ in range(max_iter):
            log_phi = expected_log(gamma)[:, None] + e_log_beta[:, words]
            phi = np.exp(log_phi - special.logsumexp(log_phi, axis=0))
            new = alpha + phi @ doc[words]
            change, gamma = np.mean(np.abs(new - gamma)), new
            if change < tol:
                break
        gammas.append(gamma)
    return np.stack(gammas)


def numpy_bound(counts, gamma, topic_concentration, alpha, eta):
    """The LDA bound (Hoffman, Blei & Bach 2010, eq. 3, with counts) at q(theta) = Dir(gamma), q(beta) = Dir(lambda)
    and the phi that is optimal given them."""
    e_log_theta, e_log_beta = expected_log(gamma), expected_log(topic_concentration)
    total = 0.0
    for doc, g, e_theta in zip(counts, gamma, e_log_theta):
        words = np.flatnonzero(doc)
        log_phi = e_theta[:, None] + e_log_beta[:, words]
        total += doc[words] @ special.logsumexp(log_phi, axis=0)  # sum_k phi (E log theta + E log beta - log phi)
        total += special.gammaln(K * alpha) - K * special.gammaln(alpha) + (alpha - 1) * e_theta.sum()
        total -= special.gammaln(g.sum()) - special.gammaln(g).sum() + ((g - 1) * e_theta).sum()
    for lam, e_beta in zip(topic_concentration, e_log_beta):
        total += special.gammaln(V * eta) - V * special.gammaln(eta) + (eta - 1) * e_beta.sum()
        total -= special.gammaln(lam.sum()) - special.gammaln(lam).sum() + ((lam - 1) * e_beta).sum()
    return total


def test_bag_of_words_pads_every_document_to_the_most_distinct_words():
    counts = np.array([[0, 2, 0, 1], [3, 0, 0, 0], [0, 0, 0, 0]])
    ids, weights = bag_of_words(counts)
    np.testing.assert_array_equal(ids, [[1, 3], [0, 0], [0, 0]])
    np.testing.assert_array_equal(weights, [[2, 1], [3, 0], [0, 0]])
    with pytest.raises(ValueError, match="counts: expected finite non-negative counts"):
        bag_of_words(np.array([[1.0, -1.0]]))
    with pytest.raises(ValueError, match=r"docs: expected word ids in \[0, V\)"):
        lda((ids, weights), K=2, V=3)
    with pytest.raises(ValueError, match="length: expected an integer >= 2"):
        bag_of_words(counts, length=1)


def test_minibatches_where_they_do_not_apply_are_refused_with_their_names(corpus):
    docs = bag_of_words(corpus[1][:10])
    data = tuple(jnp.asarray(a) for a in docs)
    with pytest.raises(ValueError, match=r"CAVI\(batch_size\): expected at most the number of data, 10, got 20"):
        jaxvi.infer(lda(docs, K, V), jaxvi.CAVI(batch_size=20), data, key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match=r"CAVI\(step_size\) kappa: expected a number in \(0.5, 1\]"):
        jaxvi.CAVI(batch_size=5, step_size=(10.0, 0.4))
    factorial = jaxvi.models.factorial_hmm(2, 2, 1)
    with pytest.raises(ValueError, match=r"CAVI\(batch_size\): .* several Markov chains"):
        jaxvi.infer(factorial, jaxvi.CAVI(batch_size=2), jnp.zeros((4, 5, 1)), key=jax.random.key(0), progress=False)
    base = lda(docs, K, V)
    with_theta = jaxvi.Model(base.log_joint, base.latent, init=lambda key, data: {"unused": jnp.zeros(())})
    with pytest.raises(ValueError, match=r"CAVI\(batch_size\): stochastic VI has no M-step"):
        jaxvi.infer(with_theta, jaxvi.CAVI(batch_size=5), data, key=jax.random.key(0), progress=False)


def scikit_learn_from(start, method, **settings):
    """scikit-learn's LDA at the topics ``start``, every document's E-step from gamma = 1 (no random start: its
    ``_e_step`` draws one only from a ``random_state_``), its updates run to a mean change of 1e-10 (at its default
    1e-3 a document whose change lands next to the tolerance may stop one update apart from jaxvi's, scikit-learn's
    digamma being an approximation)."""
    from sklearn.decomposition._online_lda_fast import _dirichlet_expectation_2d

    peer = LatentDirichletAllocation(K, learning_method=method, mean_change_tol=1e-10, max_doc_update_iter=500,
                                     **settings)
    peer._init_latent_vars(V, np.float64)
    peer.random_state_ = None
    peer.components_ = start.copy()
    peer.exp_dirichlet_component_ = np.exp(_dirichlet_expectation_2d(peer.components_))
    return peer


def test_batch_variational_bayes_equals_scikit_learn_iteration_by_iteration(corpus):
    """From the same topics, every iteration every document from gamma = 1 (jaxvi's local q reset in the state the
    user drives): the same topics after each of 10 iterations."""
    _, counts = corpus
    with jax.enable_x64(True):
        docs = bag_of_words(counts, np.float64)
        data = tuple(jnp.asarray(a) for a in docs)
        model = lda(docs, K, V)
        start = np.random.default_rng(1).gamma(100.0, 0.01, (K, V))
        peer = scikit_learn_from(start, "batch")
        method = jaxvi.CAVI(local_tol=1e-10, local_max_iter=500)
        state = jax.jit(lambda d: method.init(model, jax.random.key(0), d))(data)._replace(
            factors=((jnp.asarray(start - 1.0),),))
        step = jax.jit(lambda s: method.step(model, jax.random.key(0), s, data, num_data=len(counts)))
        for _ in range(10):
            peer._em_step(counts, total_samples=len(counts), batch_update=True)
            state = state._replace(local=jax.tree_util.tree_map(jnp.zeros_like, state.local))  # gamma = 1
            state, _ = step(state)
            np.testing.assert_allclose(np.asarray(state.factors[0][0]) + 1.0, peer.components_, rtol=1e-6)


def test_a_small_corpus_is_swept_plainly_a_large_one_in_exp_space_and_both_are_scikit_learn_s_fit(corpus, monkeypatch):
    """Local passes over fewer than EXP_SPACE_ENTRIES plate entries (N x L x K) sweep plainly, compiling less; from
    there on in exp space. Forced either way on the same corpus, 4 batch iterations from the same topics (every
    document from gamma = 1) give the same topics, scikit-learn's."""
    from jaxvi.vi import local_factors

    _, counts = corpus
    with jax.enable_x64(True):
        docs = bag_of_words(counts, np.float64)
        data = tuple(jnp.asarray(a) for a in docs)
        model = lda(docs, K, V)
        layout = jaxvi.methods.cavi._structure(model).local_factors
        least = -(-local_factors.EXP_SPACE_ENTRIES // (docs[0].shape[1] * K))  # the fewest documents in exp space
        assert [local_factors.sweeps_in_exp_space(layout, n) for n in (least - 1, least)] == [False, True]
        assert not local_factors.sweeps_in_exp_space(layout, len(counts))
        start = np.random.default_rng(1).gamma(100.0, 0.01, (K, V))
        peer = scikit_learn_from(start, "batch")
        for _ in range(4):
            peer._em_step(counts, total_samples=len(counts), batch_update=True)
        method, topics = jaxvi.CAVI(local_tol=1e-10, local_max_iter=500), {}
        for entries, path in ((local_factors.EXP_SPACE_ENTRIES, "fit_plainly"), (0, "fit_chunk")):
            monkeypatch.setattr(local_factors, "EXP_SPACE_ENTRIES", entries)
            traced = []  # the sweeps each trace chose
            for name in ("fit_plainly", "fit_chunk"):
                monkeypatch.setattr(local_factors, name, lambda *a, name=name, fit=getattr(local_factors, name):
                                    traced.append(name) or fit(*a))

            def fit(d):
                def iteration(state, _):
                    state = state._replace(local=jax.tree_util.tree_map(jnp.zeros_like, state.local))  # gamma = 1
                    return method.step(model, jax.random.key(0), state, d, num_data=len(counts))[0], None

                state = method.init(model, jax.random.key(0), d)._replace(factors=((jnp.asarray(start - 1.0),),))
                return jax.lax.scan(iteration, state, None, length=4)[0].factors[0][0] + 1.0

            topics[path] = np.asarray(jax.jit(fit)(data))
            assert ("fit_chunk" in traced) == (path == "fit_chunk")  # (fit_chunk falls back to fit_plainly)
            monkeypatch.undo()
        np.testing.assert_allclose(topics["fit_plainly"], topics["fit_chunk"], rtol=1e-12)
        np.testing.assert_allclose(topics["fit_chunk"], peer.components_, rtol=1e-6)


def test_stochastic_variational_bayes_equals_scikit_learn_online_minibatch_by_minibatch(corpus):
    """Online LDA (Hoffman, Blei & Bach 2010): the same minibatches in the same order from the same topics, steps
    rho_t = (tau0 + t)^-kappa: the same topics after every minibatch of two passes."""
    _, counts = corpus
    n, size = len(counts), 20
    with jax.enable_x64(True):
        docs = bag_of_words(counts, np.float64)
        data = tuple(jnp.asarray(a) for a in docs)
        model = lda(docs, K, V)
        start = np.random.default_rng(1).gamma(100.0, 0.01, (K, V))
        peer = scikit_learn_from(start, "online", learning_offset=5.0, learning_decay=0.6)
        method = jaxvi.CAVI(batch_size=size, step_size=(5.0, 0.6), local_tol=1e-10, local_max_iter=500)
        state = jax.jit(lambda d: method.init(model, jax.random.key(0), d))(data)._replace(
            factors=((jnp.asarray(start - 1.0),),))
        step = jax.jit(lambda s, index: method.step(model, jax.random.key(0), s,
                                                     jaxvi.Batch(index, jax.tree_util.tree_map(lambda a: a[index], data)),
                                                     num_data=n))
        for first in list(range(0, n, size)) * 2:
            index = np.arange(first, first + size)
            peer._em_step(counts[index], total_samples=n, batch_update=False)
            state, _ = step(state, jnp.asarray(index))
            np.testing.assert_allclose(np.asarray(state.factors[0][0]) + 1.0, peer.components_, rtol=1e-6)


class GammaOfOnes(np.random.RandomState):
    """A random state whose Gamma draws are ones: gensim's start of every document's gamma, made scikit-learn's."""

    def gamma(self, shape, scale=1.0, size=None):
        return np.ones(size)


def test_stochastic_variational_bayes_equals_gensim_s_online_lda_over_a_pass(corpus):
    """gensim's LdaModel, online (update_every=1), from the same topics over one pass of the same chunks, every
    document from gamma = 1 (gensim draws each document's start from a Gamma(100, 1/100): here its draws are
    ones): the same topics. gensim's step at its t-th chunk of a pass is (offset + t - 1)^-decay, so its offset
    is tau0 + 1."""
    from gensim.models import LdaModel

    _, counts = corpus
    n, size, (tau0, kappa) = len(counts), 20, (5.0, 0.6)
    with jax.enable_x64(True):
        docs = bag_of_words(counts, np.float64)
        data = tuple(jnp.asarray(a) for a in docs)
        model = lda(docs, K, V)
        start = np.random.default_rng(1).gamma(100.0, 0.01, (K, V))
        peer = LdaModel(num_topics=K, id2word={i: str(i) for i in range(V)}, alpha="symmetric", eta="symmetric",
                        decay=kappa, offset=tau0 + 1, iterations=500, gamma_threshold=1e-10, chunksize=size,
                        passes=1, update_every=1, eval_every=None, dtype=np.float64)
        peer.random_state = GammaOfOnes()
        peer.state.sstats[...] = start - peer.eta
        peer.sync_state()
        peer.update([[(int(w), c) for w, c in zip(np.flatnonzero(doc), doc[doc > 0])] for doc in counts])
        method = jaxvi.CAVI(batch_size=size, step_size=(tau0, kappa), local_tol=1e-10, local_max_iter=500)
        state = jax.jit(lambda d: method.init(model, jax.random.key(0), d))(data)._replace(
            factors=((jnp.asarray(start - 1.0),),))
        step = jax.jit(lambda s, index: method.step(model, jax.random.key(0), s,
                                                     jax.tree_util.tree_map(lambda a: a[index], data), num_data=n))
        for first in range(0, n, size):
            state, _ = step(state, jnp.arange(first, first + size))
        np.testing.assert_allclose(np.asarray(state.factors[0][0]) + 1.0, peer.state.get_lambda(), rtol=1e-6)


def test_a_corpus_streamed_from_disk_a_minibatch_at_a_time_is_scikit_learn_s_online_fit(corpus, tmp_path):
    """``jaxvi.run.stream`` over minibatches read one at a time from arrays on disk (memory-mapped), two passes (the
    second going on from the first's state), equals scikit-learn's online LDA on the same minibatches from the same
    topics after each pass."""
    _, counts = corpus
    n, size = len(counts), 20
    with jax.enable_x64(True):
        ids, weights = bag_of_words(counts, np.float64)
        np.save(tmp_path / "ids.npy", ids)
        np.save(tmp_path / "counts.npy", weights)

        def minibatches():
            on_disk = [np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in ("ids", "counts")]
            for first in range(0, n, size):
                yield tuple(np.array(a[first:first + size]) for a in on_disk)

        model = lda((ids, weights), K, V)
        start = np.random.default_rng(1).gamma(100.0, 0.01, (K, V))
        peer = scikit_learn_from(start, "online", learning_offset=5.0, learning_decay=0.6)
        method = jaxvi.CAVI(batch_size=size, step_size=(5.0, 0.6), local_tol=1e-10, local_max_iter=500)
        first = next(minibatches())
        state = jax.jit(lambda d: method.init(model, jax.random.key(0), d, num_data=n))(first)
        state = state._replace(factors=((jnp.asarray(start - 1.0),),))
        for _ in range(2):
            for index in range(0, n, size):
                peer._em_step(counts[index:index + size], total_samples=n, batch_update=False)
            streamed = jaxvi.run.stream(model, method, minibatches(), num_data=n, key=jax.random.key(0), state=state,
                                        progress=False)
            state = streamed.state
            np.testing.assert_allclose(np.asarray(state.factors[0][0]) + 1.0, peer.components_, rtol=1e-6)
            assert streamed.objectives.shape == (n // size,) and np.all(np.isfinite(streamed.objectives))
        assert int(state.count) == 2 * n // size
        # without a state: method.init on the first minibatch, scaled to N, as in memory (where init given all the
        # data draws its B rows with the key, a stream has seen only its first minibatch)
        data = tuple(jnp.asarray(a) for a in (ids, weights))
        streamed = jaxvi.run.stream(model, method, minibatches(), num_data=n, key=jax.random.key(3), progress=False)
        in_memory = jax.jit(lambda d: method.init(model, jax.random.split(jax.random.key(3))[0], d, num_data=n))(
            jax.tree_util.tree_map(lambda a: a[:size], data))
        step = jax.jit(lambda s, rows: method.step(model, jax.random.key(0), s, rows, num_data=n))
        for first in range(0, n, size):
            in_memory, _ = step(in_memory, jax.tree_util.tree_map(lambda a: a[first:first + size], data))
        np.testing.assert_allclose(streamed.state.factors[0][0], in_memory.factors[0][0], rtol=1e-12)


def test_a_stream_that_cannot_be_fitted_is_refused_with_its_name(corpus):
    docs = bag_of_words(corpus[1][:30])
    model = lda(docs, K, V)
    rows = lambda first, last: tuple(a[first:last] for a in docs)  # noqa: E731
    cases = [(jaxvi.CAVI(), [rows(0, 10)], 30, r"method: expected jaxvi.CAVI\(batch_size=B\)"),
             (jaxvi.CAVI(batch_size=10), [rows(0, 10)], 5, r"num_data: expected an integer >= batch_size = 10"),
             (jaxvi.CAVI(batch_size=10), [], 30, r"minibatches: expected at least one minibatch"),
             (jaxvi.CAVI(batch_size=10), [rows(0, 8)], 30, r"minibatches: expected minibatches of batch_size = 10 rows, "
                                                             r"got 8 in minibatch 0"),
             (jaxvi.CAVI(batch_size=10), [rows(0, 10), rows(10, 20), rows(20, 28)], 30, r"minibatches: minibatch 2 is")]
    for method, minibatches, n, message in cases:
        with pytest.raises(ValueError, match=message):
            jaxvi.run.stream(model, method, minibatches, num_data=n, key=jax.random.key(0), progress=False)


def test_a_stream_checks_every_minibatch_and_reports_a_step_that_was_not_taken(corpus):
    """A minibatch holding a NaN, a negative count or a word id beyond the vocabulary was stepped on: its step
    was not finite, so not taken, and the stream returned without a word (NaN among its objectives), or failed on the
    conjugacy check with a message about SVI. Now each is refused, as jaxvi.infer refuses such data, naming the
    minibatch; a step that is not finite for another reason (here a state of NaN factors) is an error at the end."""
    docs = bag_of_words(corpus[1][:30])
    model, method = lda(docs, K, V), jaxvi.CAVI(batch_size=10)
    rows = lambda first, last: tuple(np.array(a[first:last]) for a in docs)  # noqa: E731
    for leaf, value, message in ((1, np.nan, r"data\[1\]: expected finite values, got nan at index \(3, 0\)"),
                                 (1, -1.0, r"data\[1\]: expected counts in \[0, inf\), got -1.0 at index \(3, 0\)"),
                                 (0, V, rf"data\[0\]: expected word ids \(whole numbers\) in \[0, {V}\), got {V} at "
                                        r"index \(3, 0\)")):
        bad = rows(10, 20)
        bad[leaf][3, 0] = value
        with pytest.raises(ValueError, match=r"minibatches: minibatch 1: " + message):
            jaxvi.run.stream(model, method, [rows(0, 10), bad, rows(20, 30)], num_data=30, key=jax.random.key(0),
                             progress=False)
    start = method.init(model, jax.random.key(0), tuple(jnp.asarray(a) for a in rows(0, 10)), num_data=30)
    start = start._replace(factors=jax.tree_util.tree_map(lambda a: jnp.full_like(a, jnp.nan), start.factors))
    with pytest.raises(FloatingPointError, match=r"minibatches: the step on minibatch 0 was not finite .*, nor on 1 "
                                                 r"more; those steps were not taken") as caught:
        jaxvi.run.stream(model, method, [rows(0, 10), rows(10, 20)], num_data=30, key=jax.random.key(0),
                         state=start, progress=False)
    assert caught.value.streamed.objectives.shape == (2,)
    assert np.all(np.isnan(np.asarray(caught.value.streamed.state.factors[0][0])))  # no step taken


@pytest.fixture(scope="module")
def fitted(corpus):
    _, counts = corpus
    with jax.enable_x64(True):
        docs = bag_of_words(counts, np.float64, length=V)  # every document of V distinct words or fewer
        data = tuple(jnp.asarray(a) for a in docs)
        model = lda(docs, K, V)
        method = jaxvi.CAVI(max_iter=40, tol=0.0, local_tol=1e-10, local_max_iter=500)
        result = jaxvi.infer(model, method, data, key=jax.random.key(0), progress=False)
        return model, method, data, result


def test_the_e_step_and_the_bound_equal_numpy_s(corpus, fitted):
    _, counts = corpus
    model, method, data, result = fitted
    with jax.enable_x64(True):
        q = result.posterior(data)
        topic_concentration = np.asarray(q.globals["topics"].parameters()["concentration"])
        gamma = np.asarray(q.local["proportions"].parameters()["concentration"])
        bound = float(method.bound(model, result.params, result.diagnostics.factors, data))
    alpha = eta = 1.0 / K
    np.testing.assert_allclose(gamma, numpy_e_step(counts, topic_concentration, alpha, 1e-10, 500), rtol=1e-9)
    np.testing.assert_allclose(bound, numpy_bound(counts, gamma, topic_concentration, alpha, eta), rtol=1e-10)
    assert np.isclose(bound, float(result.objective), rtol=1e-9)  # the fit's own last bound, at the same q
    assert np.all(np.diff(np.asarray(result.trace)) >= 0)


def test_perplexity_transform_and_top_words_are_scikit_learn_s_at_the_fitted_topics(corpus, fitted):
    """Held-out documents: scikit-learn's perplexity and transform (normalised gamma) with its components_ set to
    the fitted topics' concentrations. The bound keeps only the method's fields it reads: an online method on the same
    model compiles it no more."""
    from jit_events import compilations

    _, counts = corpus
    model, method, data, result = fitted
    heldout = draw_corpus(np.random.default_rng(7), 12)[1]
    online = dataclasses.replace(method, max_iter=3, batch_size=20)
    with jax.enable_x64(True):
        topic_concentration = np.asarray(result.diagnostics.factors[0][0]) + 1.0
        peer = scikit_learn_from(topic_concentration, "batch")
        docs = bag_of_words(heldout, np.float64, length=V)
        with compilations(lambda name: name.startswith("jit(_compiled_")) as compiled:
            ours = float(jaxvi.models.lda_perplexity(result, docs))
            bounds = [float(m.bound(model, result.params, result.diagnostics.factors, tuple(map(jnp.asarray, docs))))
                      for m in (method, online)]
        proportions = np.asarray(result.posterior(tuple(jnp.asarray(a) for a in docs)).local["proportions"].mean())
    assert compiled == ["jit(_compiled_bound)"], compiled  # the batch method's, once
    np.testing.assert_allclose(ours, peer.perplexity(heldout), rtol=1e-7)
    assert bounds[0] == bounds[1] and np.isclose(np.exp(-bounds[0] / heldout.sum()), ours, rtol=1e-12, atol=0)
    np.testing.assert_allclose(proportions, peer.transform(heldout), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match=f"docs: the model takes documents of L = {V} entries, got 3"):
        jaxvi.models.lda_perplexity(result, bag_of_words(np.eye(4, V) * 2 + np.eye(4, V, 1) + np.eye(4, V, 2)))
    words = jaxvi.models.lda_top_words(result, 4, vocabulary=[f"w{i}" for i in range(V)])
    assert words == [[f"w{i}" for i in np.argsort(-row, kind="stable")[:4]] for row in peer.components_]


def test_perplexity_and_top_words_refuse_what_they_cannot_read(corpus, fitted):
    """A count matrix (scipy.sparse) gave a TypeError, one document's 1-D arrays an IndexError, documents without
    a token a perplexity of inf; top words of n = -1 returned V - 1 words, a short vocabulary an IndexError."""
    import scipy.sparse

    _, counts = corpus
    _, _, data, result = fitted
    cases = [(lambda: jaxvi.models.lda_perplexity(result, scipy.sparse.csr_matrix(counts)),
              rf"docs: expected jaxvi.models.bag_of_words\(counts\), a pair of \(N, L\) arrays \(word ids, counts\), "
              rf"got csr_matrix of shape \(80, {V}\)"),
             (lambda: jaxvi.models.lda_perplexity(result, (data[0][0], data[1][0])),
              rf"got tuple of shapes \[\({V},\), \({V},\)\]"),
             (lambda: jaxvi.models.lda_perplexity(result, bag_of_words(np.zeros((3, V)), length=V)),
              r"docs: expected documents with at least one token, got none"),
             (lambda: jaxvi.models.lda_top_words(result, -1), r"n: expected an integer >= 1, got -1"),
             (lambda: jaxvi.models.lda_top_words(result, 3, ["a", "b"]),
              rf"vocabulary: expected an entry for each of the model's V = {V} words, got 2")]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_the_summary_says_the_evidence_is_not_available_not_nan(fitted):
    """LDA has no exact local evidence: the summary printed 'log evidence nan' and 'gap nan'."""
    text = fitted[3].summary()
    for field in ("log evidence", "gap"):
        assert re.search(rf"^{field} +not available \(no exact evidence for this model\)$", text, re.M), text


def test_the_same_corpus_as_single_tokens_gives_the_same_fit(corpus, fitted):
    """Counts are multiplicities: each distinct word's entry stands for its count of identical tokens (its entropy
    counted so many times), so a corpus of single tokens, one entry each, fits the same q and bound."""
    _, counts = corpus
    model, _, data, result = fitted
    tokens = [np.repeat(np.arange(V), doc.astype(int)) for doc in counts]
    length = max(map(len, tokens))
    ids = np.zeros((len(counts), length), np.int32)
    ones = np.zeros((len(counts), length))
    for row, words in enumerate(tokens):
        ids[row, :len(words)], ones[row, :len(words)] = words, 1.0
    with jax.enable_x64(True):
        method = jaxvi.CAVI(max_iter=40, tol=0.0, local_tol=1e-10, local_max_iter=500)
        single = jaxvi.infer(lda((ids, ones), K, V), method, (jnp.asarray(ids), jnp.asarray(ones)),
                             key=jax.random.key(0), progress=False)
        np.testing.assert_allclose(single.trace, result.trace, rtol=1e-9)
        np.testing.assert_allclose(single.diagnostics.factors[0][0], result.diagnostics.factors[0][0], rtol=1e-7,
                                   atol=1e-9)


def test_topics_of_a_corpus_drawn_from_lda_are_recovered(optimized_code):
    rng = np.random.default_rng(2)
    topics, counts = draw_corpus(rng, 400, np.float32)
    docs = bag_of_words(counts)
    result = jaxvi.infer(lda(docs, K, V), jaxvi.CAVI(max_iter=100, n_init=2), tuple(jnp.asarray(a) for a in docs),
                         key=jax.random.key(3), progress=False)
    assert np.all(np.diff(np.asarray(result.trace)) >= -1e-6 * np.abs(np.asarray(result.trace[1:])))
    fitted = np.asarray(result.posterior().globals["topics"].mean())
    distance = np.abs(fitted[:, None, :] - topics[None, :, :]).sum(-1)     # L1 between fitted and true topics
    rows, columns = optimize.linear_sum_assignment(distance)
    assert distance[rows, columns].max() < 0.1, distance[rows, columns]


def test_a_fit_by_default_settings_reaches_scikit_learn_s_optimum(optimized_code):
    """``jaxvi.infer``'s defaults on a corpus drawn from LDA (6 topics over 300 words, 400 documents): held-out
    perplexity within 2% of scikit-learn's batch fit and every topic found. Before, the fit's topics
    started at a draw from their sparse prior (a random partition of the vocabulary) and every local step swept each
    document from the q it carried, which stayed near its first assignments: 0 or 1 of the 6 topics found, held-out
    perplexity 93-98 against scikit-learn's 73.3."""
    rng = np.random.default_rng(0)
    k, v, n = 6, 300, 400
    topics = rng.dirichlet(np.full(v, 0.05), k)
    counts = np.stack([rng.multinomial(rng.poisson(80) + 1, p @ topics)
                       for p in rng.dirichlet(np.full(k, 0.3), n + 200)]).astype(np.float32)
    length = int((counts > 0).sum(1).max())
    docs = bag_of_words(counts[:n], length=length)
    peer = LatentDirichletAllocation(k, learning_method="batch", max_iter=20, random_state=0).fit(counts[:n])
    result = jaxvi.infer(lda(docs, k, v), jaxvi.CAVI(max_iter=50), docs, key=jax.random.key(0), progress=False)
    trace = np.asarray(result.trace, np.float64)
    assert np.all(np.diff(trace) >= -jaxvi.run.schedule.resolution(trace[1:]))
    concentration = np.asarray(result.diagnostics.factors[0][0], np.float64) + 1.0     # q(topics), (k, v)
    fitted = concentration / concentration.sum(-1, keepdims=True)
    distance = np.abs(fitted[:, None, :] - topics[None, :, :]).sum(-1)  # L1 between fitted and true topics
    rows, columns = optimize.linear_sum_assignment(distance)
    assert distance[rows, columns].max() < 0.5, distance[rows, columns]
    ours = LatentDirichletAllocation(k, learning_method="batch")  # scikit-learn scores jaxvi's topics too
    ours._init_latent_vars(v, np.float32)  # as the peer's, fitted to float32 counts
    ours.random_state_, ours.components_ = None, concentration.astype(np.float32)
    ours.exp_dirichlet_component_ = np.exp(expected_log(concentration)).astype(np.float32)
    held_out = ours.perplexity(counts[n:]), peer.perplexity(counts[n:])  # 74.3 and 73.6 (before: 93-98)
    assert held_out[0] < 1.02 * held_out[1], held_out


def weighted_lda(docs, weights):
    """LDA whose every distinct word also carries a weight w_n on log theta, sum_n c_n z_n . (w_n log theta +
    log beta_{w_n}): conjugate, but the plate's entries meet theta unalike (all alike where every w_n is 1)."""
    base = lda(docs, K, V)

    def log_joint(params, z, x):
        ids, counts, w = x
        log_beta = jnp.log(z["topics"][:, ids]).T
        words = jnp.sum(counts[:, None] * z["assignments"] * (w[:, None] * jnp.log(z["proportions"]) + log_beta))
        return words + jax.scipy.stats.dirichlet.logpdf(z["proportions"], jnp.full(K, 1.0 / K))

    latent = dict(base.latent, assignments=jaxvi.OneHot(K, (docs[0].shape[1],), multiplicity=lambda x: x[1]))
    return jaxvi.Model(log_joint, latent, base.init), (*docs, weights)


def numpy_weighted_e_step(counts, weights, topic_concentration, alpha, tol, max_iter):
    """``numpy_e_step`` with every distinct word's weight on E[log theta] (weights aligned with np.flatnonzero)."""
    e_log_beta = expected_log(topic_concentration)
    gammas = []
    for doc, w in zip(counts, weights):
        words = np.flatnonzero(doc)
        gamma = np.ones(K)
        for _ in range(max_iter):
            log_phi = w[:len(words)] * expected_log(gamma)[:, None] + e_log_beta[:, words]
            phi = np.exp(log_phi - special.logsumexp(log_phi, axis=0))
            new = alpha + phi @ (doc[words] * w[:len(words)])
            change, gamma = np.mean(np.abs(new - gamma)), new
            if change < tol:
                break
        gammas.append(gamma)
    return np.stack(gammas)


def exp_space_case(counts, seed, weighted):
    """(docs, random topic concentrations, per-word weights {"alike": 1, "unalike": random on the documents
    ``weighted`` (a mask), 1 on the others}, the local layout, the expected log-joint at those topics), float64 (call
    under ``jax.enable_x64``): one model for both weightings, the weights being data."""
    from jaxvi.methods.cavi import _structure

    rng = np.random.default_rng(seed)
    docs = bag_of_words(counts, np.float64, length=V)
    topic_concentration = rng.gamma(2.0, 1.0, (K, V))
    alike = np.where(docs[1] > 0, 1.0, 0.0)
    unalike = np.where(docs[1] > 0, rng.uniform(0.5, 2.0, docs[1].shape), 0.0)
    weights = {"alike": alike, "unalike": np.where(np.asarray(weighted)[:, None], unalike, alike)}
    model, _ = weighted_lda(docs, alike)
    structure = _structure(model)
    expected = structure.expected_log_joint(model, structure.rules(((jnp.asarray(topic_concentration - 1),),)))
    return docs, topic_concentration, weights, structure.local_factors, expected


def test_sweeps_in_exp_space_are_checked_and_a_plate_met_unalike_is_swept_plainly(corpus):
    """A document's sweeps run in exp space (one row of the assignments' natural parameters read per sweep)
    only where every word meets theta alike. With per-word weights on log theta it does not: the check refuses
    those documents, and the plain sweeps fit their chunk (half of it weighted), alone or vmapped beside a corpus
    that passes it; every
    document's gamma is NumPy's log-space E-step's (per-word weights, and weights of 1: plain LDA)."""
    from jaxvi.vi import local_factors

    _, counts = corpus
    counts = counts[:12]
    with jax.enable_x64(True):
        # half the documents weighted: the chunk is fitted again
        docs, topic_concentration, weights, layout, expected = exp_space_case(counts, 5, np.arange(12) < 6)
        alpha, tol, max_iter = 1.0 / K, 1e-10, 500
        start = local_factors.reference(layout, len(counts), jnp.float64)

        assert local_factors.shares_coupling(layout)

        def fit(data):
            """(every document's exp-space check, its gamma in exp space, its gamma after fit_chunk)."""
            exp_space, checks = jax.vmap(lambda x, c: local_factors._fit_shared(
                layout, layout.datum_joint(expected, {}, x), c, tol, max_iter, jnp.float64,
                layout.multiplicities(x)))(data, start)
            fitted = local_factors.fit_chunk(layout, lambda x: layout.datum_joint(expected, {}, x), data, start, tol,
                                             max_iter, jnp.float64)
            return checks, exp_space[1][0] + 1.0, fitted[1][0] + 1.0

        data = {name: (*(jnp.asarray(a) for a in docs), jnp.asarray(w)) for name, w in weights.items()}
        compiled, gammas = jax.jit(fit), {}
        for name, w in weights.items():
            checks, exp_space, gamma = compiled(data[name])
            np.testing.assert_array_equal(checks, np.arange(len(counts)) >= (0 if name == "alike" else 6))
            gammas[name] = np.asarray(gamma)
            numpy = numpy_weighted_e_step(counts, w, topic_concentration, alpha, tol, max_iter)
            np.testing.assert_allclose(gammas[name], numpy, rtol=1e-9)
            if name == "alike":  # fit_chunk kept the exp-space sweeps
                np.testing.assert_array_equal(gamma, exp_space)
        np.testing.assert_allclose(gammas["alike"], numpy_e_step(counts, topic_concentration, alpha, tol, max_iter),
                                   rtol=1e-9)
        # vmapped over the two corpora, one checked in exp space and one refused: each its own E-step
        both = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), data["alike"], data["unalike"])
        checks, _, stacked = jax.jit(jax.vmap(fit))(both)
        np.testing.assert_array_equal(checks, [[True] * 12, [False] * 6 + [True] * 6])
        np.testing.assert_allclose(np.asarray(stacked[0]), gammas["alike"], rtol=1e-12)
        np.testing.assert_allclose(np.asarray(stacked[1]), gammas["unalike"], rtol=1e-12)


def test_documents_swept_in_refilled_slots_are_each_fitted_as_alone(corpus, monkeypatch):
    """fit_slots sweeps S documents at once and gives a slot the next document soon after its own is done, R slots
    at a time. With 5 slots refilled 2 at a time and 23 documents (a multiple of neither), taking from 50 to 500
    sweeps (or all stopped at 3): every document's gamma is the one _fit_shared gives it alone, and NumPy's E-step's.
    Where some documents' words meet theta unalike, every document is fitted again by the plain sweeps: NumPy's
    weighted E-step's. Vmapped over the two corpora: each its own. The most sweeps is a traced number: one program
    for both."""
    from jaxvi.vi import local_factors

    monkeypatch.setattr(local_factors, "MOST_SLOTS", 5)
    monkeypatch.setattr(local_factors, "REFILL_SHARE", 2)
    _, counts = corpus
    counts = counts[:23]
    with jax.enable_x64(True):
        # the last 6 documents weighted
        docs, topic_concentration, weights, layout, expected = exp_space_case(counts, 6, np.arange(23) >= 17)
        alpha, tol = 1.0 / K, 1e-10
        start = local_factors.reference(layout, len(counts), jnp.float64)
        assert local_factors.slot_counts(layout, len(counts)) == (5, 2)
        # CAVI's local pass takes the slots where the data fill them 32 times
        assert [local_factors.sweeps_in_slots(layout, n) for n in (23, 159, 160)] == [False, False, True]

        def joint(x):
            return layout.datum_joint(expected, {}, x)

        def fit(data, max_iter):
            """(every document's gamma fitted alone by _fit_shared, and its check; every gamma after fit_slots)."""
            alone, checks = jax.vmap(lambda x, c: local_factors._fit_shared(
                layout, joint(x), c, tol, max_iter, jnp.float64, layout.multiplicities(x)))(data, start)
            slots = local_factors.fit_slots(layout, joint, data, start, tol, max_iter, jnp.float64, 8)
            return alone[1][0] + 1.0, checks, slots[1][0] + 1.0

        data = {name: (*(jnp.asarray(a) for a in docs), jnp.asarray(w)) for name, w in weights.items()}
        compiled, vmapped = jax.jit(fit), jax.jit(jax.vmap(fit, in_axes=(0, None)))
        both = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), data["alike"], data["unalike"])
        for max_iter in (500, 3):
            alone, checks, slots = compiled(data["alike"], max_iter)
            assert np.all(checks)
            np.testing.assert_allclose(slots, alone, rtol=1e-12)
            np.testing.assert_allclose(slots, numpy_e_step(counts, topic_concentration, alpha, tol, max_iter),
                                       rtol=1e-9)
            _, checks, refitted = compiled(data["unalike"], max_iter)
            np.testing.assert_array_equal(checks, np.arange(len(counts)) < 17)
            np.testing.assert_allclose(refitted, numpy_weighted_e_step(counts, weights["unalike"], topic_concentration,
                                                                       alpha, tol, max_iter), rtol=1e-9)
            _, _, stacked = vmapped(both, max_iter)
            np.testing.assert_allclose(stacked[0], slots, rtol=1e-12)
            np.testing.assert_allclose(stacked[1], refitted, rtol=1e-12)
        assert compiled._cache_size() == 1 and vmapped._cache_size() == 1  # a new max_iter compiled nothing


@pytest.mark.parametrize("extra, name", [
    (lambda z: jnp.sum(z["proportions"] ** 2), r"local factor z\['proportions'\]"),
    (lambda z: jnp.sum(z["assignments"][1:] * z["assignments"][:-1]), r"local factor z\['assignments'\]"),
])
def test_a_local_factor_the_log_joint_is_not_conjugate_in_is_refused(corpus, extra, name):
    """theta entering other than through log theta; two tokens' assignments entering together (a plate whose
    entries interact has no Jacobi update)."""
    docs = bag_of_words(corpus[1][:10])
    base = lda(docs, K, V)
    model = jaxvi.Model(lambda params, z, x: base.log_joint(params, z, x) + extra(z), base.latent, base.init)
    with pytest.raises(ValueError, match=name + ".*jaxvi.SVI"):
        jaxvi.infer(model, jaxvi.CAVI(max_iter=2), tuple(jnp.asarray(a) for a in docs), key=jax.random.key(0),
                    progress=False)


def test_stochastic_natural_gradient_steps_converge_to_the_exact_posterior_of_a_conjugate_model():
    """Beta-Bernoulli, minibatches of B of N flips: every step's target a - 1 + (N/B) sum(batch) is unbiased for
    the exact posterior's natural parameter, so over 64 fits (vmapped, each drawing its own minibatches) the
    final q averages to the exact posterior, and the fits spread as the steps' noise predicts:
    Var = rho / (2 - rho) Var(target) at the last step size rho."""
    n, size, steps, (tau0, kappa) = 2000, 100, 600, (10.0, 0.7)
    flips = (np.random.default_rng(4).random(n) < 0.3).astype(np.float64)
    with jax.enable_x64(True):
        model = jaxvi.Model(
            lambda params, z, x: x * jnp.log(z["p"]) + (1 - x) * jnp.log1p(-z["p"]),
            jaxvi.Global({"p": jaxvi.Beta()},
                         log_prior=lambda params, z: jax.scipy.stats.beta.logpdf(z["p"], 2.0, 3.0)),
            init=lambda key, data: {})
        method = jaxvi.CAVI(max_iter=steps, batch_size=size, step_size=(tau0, kappa))
        fit = jax.jit(jax.vmap(lambda key: jaxvi.infer(model, method, jnp.asarray(flips), key=key,
                                                       progress=False).diagnostics.factors[0][0]))
        heads_eta = np.asarray(fit(jax.random.split(jax.random.key(5), 64)))      # eta_1 = a - 1 per fit
    exact = 1.0 + flips.sum()                                                      # a - 1 of Beta(2 + heads, ...)
    p = flips.mean()
    target_variance = (n / size) ** 2 * size * p * (1 - p) * (n - size) / (n - 1)
    rho = (tau0 + steps) ** -kappa
    spread = np.sqrt(rho / (2 - rho) * target_variance)
    assert abs(heads_eta.mean() - exact) < 4 * spread / np.sqrt(64), (heads_eta.mean(), exact, spread)
    assert 0.6 * spread < heads_eta.std() < 1.6 * spread, (heads_eta.std(), spread)
