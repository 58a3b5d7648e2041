r"""The factorial hidden Markov model (Ghahramani & Jordan 1997), written only as a log-joint: ``jaxvi.CAVI`` fits
it by structured mean field and Variational EM.

M independent chains of K states each drive one Gaussian observation through the sum of their state means,

.. math::
    z^m_0 \sim \pi_m, \quad z^m_t \mid z^m_{t-1} \sim A_m[z^m_{t-1}, \cdot\,], \quad
    x_t \mid z_t \sim N\Big(\sum_m W_m[z^m_t],\; \mathrm{diag}(\sigma^2)\Big).

The exact posterior is a chain over :math:`K^M` joint states; CAVI fits :math:`q = \prod_m q_m`, every chain a
factor of its own (``jaxvi.vi.chains``), and θ = (π, A, W, σ) in its M-step on the same bound.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import stats

from jaxvi.data import Sequences
from jaxvi.latents import Markov
from jaxvi.model import Model
from jaxvi.run.compiled import OneProgram

__all__ = ["factorial_hmm"]


def factorial_hmm(M: int, K: int, d: int) -> Model:
    r"""A factorial HMM of M chains of K states over d-dimensional observations, for ``jaxvi.CAVI``.

    Data are ``(N, T, d)`` float sequences (or ``jaxvi.Sequences``). The latent is a tuple of M ``Markov(K)``
    specs: ``log_joint(params, z, x)`` receives one ``(previous, current)`` pair per chain for one step. The
    parameters θ are ``{"start": (M, K), "transitions": (M, K, K)}`` logits, ``"means"`` W ``(M, K, d)`` and
    ``"log_scale"`` :math:`\log\sigma` ``(d,)``; ``init`` starts the means at random multiples of the data's spread
    and σ at the data's standard deviation.
    """
    for name, value in (("M", M), ("K", K), ("d", d)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")

    def log_joint(params, z, x):
        log_move, location = 0.0, 0.0
        for m, (prev, state) in enumerate(z):  # a few chains, a static loop
            logits = params["start"][m] if prev is None else params["transitions"][m, prev]
            log_move = log_move + jax.nn.log_softmax(logits)[state]
            location = location + params["means"][m, state]
        return log_move + jnp.sum(stats.norm.logpdf(x, location, jnp.exp(params["log_scale"])))

    def init(key, data):
        obs = data.obs if isinstance(data, Sequences) else data
        flat = jnp.reshape(obs, (-1, d))
        mean, spread = jnp.mean(flat, axis=0), jnp.std(flat, axis=0)
        noise = jax.random.normal(key, (M, K, d), flat.dtype)
        return {"start": jnp.zeros((M, K), flat.dtype), "transitions": jnp.zeros((M, K, K), flat.dtype),
                "means": mean / M + noise * spread / np.sqrt(M), "log_scale": jnp.log(spread)}

    return Model(log_joint, tuple(Markov(K) for _ in range(M)), init=OneProgram(init))
