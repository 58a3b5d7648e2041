"""A Gaussian mixture of the iris flowers by EM (scikit-learn's M-step), with restarts in one call."""
import jax
import numpy as np
from sklearn.datasets import load_iris

import jaxvi
from _size import size

iris = load_iris()
x = iris.data.astype(np.float32)
gm = jaxvi.models.gaussian_mixture(3, covariance="full")
result = jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step, n_init=size(16, 2)), x, key=jax.random.key(0))
print(result.summary())
clusters = np.argmax(np.asarray(result.posterior(x).probs), axis=1)
for k in range(3):
    counts = np.bincount(iris.target[clusters == k], minlength=3)
    print(f"cluster {k}: {counts.tolist()} of the species {[str(s) for s in iris.target_names]}")
print(f"log p(D) per flower: {float(result.objective) / len(x):.4f}")
