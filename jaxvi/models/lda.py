r"""Latent Dirichlet allocation (Blei, Ng & Jordan 2003), written only as a log-joint: ``jaxvi.CAVI`` derives its
updates (scikit-learn's ``LatentDirichletAllocation`` and gensim's ``LdaModel`` write them by hand).

.. math::
    \beta_k \sim \mathrm{Dir}(\eta), \quad \theta_d \sim \mathrm{Dir}(\alpha), \quad
    z_{dn} \sim \mathrm{Cat}(\theta_d), \quad w_{dn} \mid z_{dn} \sim \mathrm{Cat}(\beta_{z_{dn}}).

A document is a bag of words: the ids of its distinct words and their counts, padded to the longest document
(``bag_of_words``). Each distinct word's topic assignment is one ``OneHot`` entry standing for its count of
identical tokens (``multiplicity``), so q is scikit-learn's and gensim's: per document a Dirichlet
:math:`q(\theta_d) = \mathrm{Dir}(\gamma_d)` and one :math:`q(z_{dn}) = \phi_{dn}` per distinct word; per topic a
Dirichlet :math:`q(\beta_k) = \mathrm{Dir}(\lambda_k)`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from jaxvi.latents import Dirichlet, Global, OneHot
from jaxvi.model import Model, check_values, is_traced
from jaxvi.models import priors

__all__ = ["bag_of_words", "lda", "lda_perplexity", "lda_top_words"]


def bag_of_words(counts, dtype=np.float32, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, counts)``, both ``(N, L)``: every document's distinct word ids and their counts, padded with id 0
    and count 0 to the most distinct words of any document, or to ``length``.

    A fitted LDA model takes documents of its own L (its ``OneHot`` plate's size): pad new documents to it
    (``length``), or give the training documents a ``length`` the new ones fit in.

    Args:
      counts: an ``(N, V)`` document-term matrix of non-negative counts: a scipy.sparse matrix (what
        scikit-learn's ``CountVectorizer`` gives) or an array.
      dtype: the counts' dtype.
      length: L, at least the most distinct words of any document (None: that many).
    """
    import scipy.sparse

    matrix = scipy.sparse.csr_matrix(counts)
    if matrix.ndim != 2 or matrix.shape[0] < 1:
        raise ValueError(f"counts: expected an (N, V) document-term matrix with N >= 1, got shape {matrix.shape}")
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    values = matrix.data
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("counts: expected finite non-negative counts, got a negative or non-finite entry")
    lengths = np.diff(matrix.indptr)
    size = max(int(lengths.max()), 1)
    if length is not None:
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < size:
            raise ValueError(f"length: expected an integer >= {size}, the most distinct words of any document, got "
                             f"{length!r}")
        size = int(length)
    rows = np.repeat(np.arange(matrix.shape[0]), lengths)
    columns = np.arange(values.size) - np.repeat(matrix.indptr[:-1], lengths)
    ids = np.zeros((matrix.shape[0], size), np.int32)
    weights = np.zeros((matrix.shape[0], size), dtype)
    ids[rows, columns] = matrix.indices
    weights[rows, columns] = values
    return ids, weights


def _dirichlet_log_prob(log_p, concentration):
    """log Dir(p | concentration) from log p (last axis), concentration broadcast to it."""
    concentration = jnp.broadcast_to(concentration, log_p.shape)
    return (gammaln(jnp.sum(concentration, -1)) - jnp.sum(gammaln(concentration), -1)
            + jnp.sum((concentration - 1) * log_p, -1))


def lda(docs, K: int, V: int, *, doc_topic_prior=None, topic_word_prior=None) -> Model:
    r"""LDA with K topics over a vocabulary of V words, for documents ``docs = bag_of_words(counts)``, for
    ``jaxvi.CAVI``.

    The latent is ``{"assignments": OneHot(K, (L,), multiplicity=counts), "proportions": Dirichlet(K), "topics":
    Global(Dirichlet(V, (K,)))}``: ``q.globals["topics"]`` is :math:`q(\beta)` (its concentrations are
    scikit-learn's ``components_``, gensim's ``lambda``), ``q.local["proportions"]`` every document's
    :math:`q(\theta_d)`. The priors are fixed numbers; the model has no parameters θ.

    Args:
      docs: ``(ids, counts)``, both ``(N, L)`` (``bag_of_words``).
      K: the number of topics; V: the vocabulary's size (every id below it).
      doc_topic_prior: :math:`\alpha`, a number or ``(K,)`` (scikit-learn's ``doc_topic_prior``, default 1/K).
      topic_word_prior: :math:`\eta`, a number, ``(V,)`` or ``(K, V)`` (scikit-learn's ``topic_word_prior``, default
        1/K; gensim's ``eta`` of every shape).
    """
    for name, value in (("K", K), ("V", V)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    if not (isinstance(docs, tuple) and len(docs) == 2):
        raise ValueError(f"docs: expected (ids, counts) from jaxvi.models.bag_of_words, got {type(docs).__name__}")
    ids, counts = (np.asarray(a) for a in docs)
    if ids.ndim != 2 or ids.shape != counts.shape or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"docs: expected integer ids and counts of one shape (N, L), got {ids.shape} "
                         f"({ids.dtype}) and {counts.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"docs: expected word ids in [0, V) = [0, {V}), got ids in [{ids.min()}, {ids.max()}]")
    dtype = jax.dtypes.canonicalize_dtype(counts.dtype if np.issubdtype(counts.dtype, np.floating) else np.float32)
    alpha = priors.numbers("doc_topic_prior", 1.0 / K if doc_topic_prior is None else doc_topic_prior, (K,), dtype,
                           above=0)
    eta = priors.numbers("topic_word_prior", 1.0 / K if topic_word_prior is None else topic_word_prior, (K, V),
                         dtype, above=0)

    def log_prior(params, topics):
        return jnp.sum(_dirichlet_log_prob(jnp.log(topics), eta))

    def log_joint(params, z, x):
        word_ids, word_counts = x
        log_theta = jnp.log(z["proportions"])                               # (K,)
        # the logarithm before the gather: the topics are shared, so it is taken once (K x V) for all documents, not
        # per document and word (a batch iteration on 20,000 documents 5% faster)
        log_beta = jnp.log(z["topics"])[:, word_ids].T                      # (L, K)
        # two contractions, not one product summed: their gradients in CAVI's sweeps are matrix-vector products
        words = (jnp.einsum("n,nk,k->", word_counts, z["assignments"], log_theta)
                 + jnp.einsum("n,nk,nk->", word_counts, z["assignments"], log_beta))
        return words + _dirichlet_log_prob(log_theta, alpha)

    latent = {"assignments": OneHot(K, (ids.shape[1],), multiplicity=lambda x: x[1]),
              "proportions": Dirichlet(K),
              "topics": Global(Dirichlet(V, (K,)), log_prior)}
    def validate(data) -> None:  # an id outside [0, V) would be a gather XLA clamps
        check_values(data[0], "word ids", 0, V, integer=True, name="data[0]")
        check_values(data[1], "counts", 0, name="data[1]")

    return Model(log_joint, latent, init=lambda key, data: {}, validate=validate)


def lda_perplexity(result, docs) -> jax.Array:
    r"""scikit-learn's perplexity of ``docs`` (``bag_of_words``, e.g. held out) under a fitted LDA,
    :math:`\exp(-\mathcal L / W)`: :math:`\mathcal L` the bound at the fitted topics with every document's q
    fitted to them (``CAVI.bound``; scikit-learn's ``_approx_bound``, its topic term included), W the number of
    tokens. gensim's ``log_perplexity`` returns :math:`\mathcal L / W` (with ``total_docs`` the number of
    documents) and logs :math:`2^{-\mathcal L / W}` as its perplexity.

    Raises:
      ValueError: ``docs`` are not a ``bag_of_words`` pair of (N, L) arrays of the model's L (a count matrix is
        named: pass it through ``bag_of_words``), or hold no token."""
    if not (isinstance(docs, (tuple, list)) and len(docs) == 2 and all(np.ndim(a) == 2 for a in docs)):
        raise ValueError(f"docs: expected jaxvi.models.bag_of_words(counts), a pair of (N, L) arrays (word ids, "
                         f"counts), got {type(docs).__name__}{_shapes_of(docs)}")
    data = tuple(jnp.asarray(a) for a in docs)
    length = result.model.latent["assignments"].shape[0]
    if data[0].shape[1] != length:
        raise ValueError(f"docs: the model takes documents of L = {length} entries, got {data[0].shape[1]}; pad them "
                         f"with jaxvi.models.bag_of_words(counts, length={length})")
    if not is_traced(data) and not float(np.sum(np.asarray(data[1], np.float64))) > 0:
        raise ValueError("docs: expected documents with at least one token, got none (a perplexity per token)")
    bound = result.method.bound(result.model, result.params, result.diagnostics.factors, data)
    return jnp.exp(-bound / jnp.sum(data[1]))


def _shapes_of(docs) -> str:
    """`` of shapes ...`` of what ``docs`` holds, where it holds arrays (a message's detail)."""
    if isinstance(docs, (tuple, list)):
        return f" of shapes {[np.shape(a) for a in docs]}"
    return f" of shape {np.shape(docs)}" if hasattr(docs, "shape") else ""


def lda_top_words(result, n: int = 10, vocabulary=None) -> list:
    """Every topic's ``n`` most probable words under q(topics): their ids, or their entries of ``vocabulary``
    (a sequence indexed by id, e.g. ``CountVectorizer().get_feature_names_out()``).

    Raises:
      ValueError: ``n`` is not an integer >= 1, or ``vocabulary`` has fewer entries than the model's V words."""
    concentration = np.asarray(result.diagnostics.factors[0][0]) + 1.0
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    if vocabulary is not None and len(vocabulary) < concentration.shape[-1]:
        raise ValueError(f"vocabulary: expected an entry for each of the model's V = {concentration.shape[-1]} words, "
                         f"got {len(vocabulary)}")
    best = np.argsort(-concentration, axis=1, kind="stable")[:, :n]
    if vocabulary is None:
        return best.tolist()
    return [[vocabulary[i] for i in row] for row in best]
