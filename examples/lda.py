"""LDA on the Lee news corpus that gensim ships in its test data, written only as a log-joint
(jaxvi.models.lda): batch variational Bayes by jaxvi.CAVI, then online (stochastic) variational Bayes on
minibatches; topics printed, held-out perplexity (scikit-learn's definition) compared.

``python lda.py --plot trace.png`` also draws both fits' bound per token, iteration by iteration (the training
perplexity is exp(-bound per token); the online trace is every minibatch's estimate)."""
import os
import sys

import gensim
import jax
import numpy as np
from sklearn.feature_extraction.text import CountVectorizer

import jaxvi
from _size import size

path = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data", "lee_background.cor")
with open(path, encoding="utf-8") as f:
    texts = [line for line in f if line.strip()][: size(300, 120)]
vectorizer = CountVectorizer(stop_words="english", min_df=2, max_df=0.5)
counts = vectorizer.fit_transform(texts)
vocabulary = vectorizer.get_feature_names_out()
train, heldout = counts[: len(texts) - 20], counts[len(texts) - 20:]
length = int(np.diff(counts.tocsr().indptr).max())  # the most distinct words of any document, held-out ones too
docs = jaxvi.models.bag_of_words(train, length=length)
K = size(10, 5)
model = jaxvi.models.lda(docs, K, len(vocabulary))

# tol is per document, whose bound is hundreds of nats here: float32 resolves about 1e-3 of it, too fine for the default
batch = jaxvi.infer(model, jaxvi.CAVI(max_iter=size(100, 10), tol=1e-2), docs, key=jax.random.key(0))
for k, words in enumerate(jaxvi.models.lda_top_words(batch, 8, vocabulary)):
    print(f"topic {k}: {' '.join(words)}")
online = jaxvi.infer(model, jaxvi.CAVI(max_iter=size(200, 20), batch_size=32), docs, key=jax.random.key(0))

heldout_docs = jaxvi.models.bag_of_words(heldout, length=length)
print(f"{train.shape[0]} documents, {len(vocabulary)} words, {K} topics; bound per token: batch "
      f"{float(batch.objective) / train.sum():.4f}, online {float(online.objective) / train.sum():.4f}")
print(f"held-out perplexity: batch {float(jaxvi.models.lda_perplexity(batch, heldout_docs)):.2f}, "
      f"online {float(jaxvi.models.lda_perplexity(online, heldout_docs)):.2f}")

if "--plot" in sys.argv:
    ax = jaxvi.plot.trace({"batch": batch, "online (minibatch estimates)": online}, per_datum=int(train.sum()))
    ax.set_ylabel("bound per token (training perplexity = exp(-it))")
    ax.figure.savefig(sys.argv[sys.argv.index("--plot") + 1], dpi=120, bbox_inches="tight")
