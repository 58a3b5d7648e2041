"""Gaussian, categorical and Poisson HMMs on simulated sequences: EM, Viterbi paths, posterior samples."""
import jax
import numpy as np

import jaxvi
from _size import size

rng = np.random.default_rng(0)
N, T, K = size(20, 4), size(500, 100), 3
stay = 0.95
transition = np.full((K, K), (1 - stay) / (K - 1)) + np.eye(K) * (stay - (1 - stay) / (K - 1))
states = np.zeros((N, T), int)
for t in range(1, T):
    states[:, t] = [rng.choice(K, p=transition[s]) for s in states[:, t - 1]]

fits = {
    "Gaussian": (jaxvi.models.gaussian_hmm(K), (np.array([-2.0, 0.0, 2.0])[states] + rng.normal(size=(N, T)))[..., None]),
    "categorical": (jaxvi.models.categorical_hmm(K, 4),
                    np.where(rng.uniform(size=(N, T)) < 0.8, states, rng.integers(0, 4, (N, T))).astype(np.int32)),
    "Poisson": (jaxvi.models.poisson_hmm(K), rng.poisson(np.array([1.0, 5.0, 12.0])[states])[..., None].astype(np.float32)),
}
for name, (hmm, data) in fits.items():
    data = data.astype(np.float32) if name != "categorical" else data
    result = jaxvi.infer(hmm.model, jaxvi.EM(m_step=hmm.m_step, n_init=4), data, key=jax.random.key(0))
    post = result.posterior(data)
    path = np.asarray(post.mode())
    draws = np.asarray(post.sample(jax.random.key(1)))
    print(f"{name} HMM: log p(D) per step {float(result.objective) / (N * T):.4f}; "
          f"transition matrix diagonal {np.round(np.diag(np.asarray(result.params.transition_matrix)), 3)}; "
          f"Viterbi and a posterior sample agree on {np.mean(path == draws):.1%} of the steps")
