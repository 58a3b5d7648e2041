r"""Mixture of products of Bernoullis, written only as a log-joint (fitted by the gradient M-step).

For binary vectors :math:`x \in \{0,1\}^D`:

.. math::
    \log p(x, z{=}k) = \log \pi_k + \sum_d x_d \log \sigma(\ell_{kd}) + (1 - x_d) \log \sigma(-\ell_{kd}),

with :math:`\log \pi = \mathrm{log\_softmax}(\text{logits})` and :math:`\ell` the per-component
Bernoulli logits. All parameters are unconstrained, so EM's default gradient M-step applies.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxvi.latents import Discrete
from jaxvi.model import Model, check_values
from jaxvi.run.compiled import OneProgram

__all__ = ["BernoulliMixtureParams", "bernoulli_mixture"]


class BernoulliMixtureParams(NamedTuple):
    """``logits``: ``(K,)`` mixture logits; ``pixel_logits``: ``(K, D)`` Bernoulli logits."""

    logits: jax.Array
    pixel_logits: jax.Array


def bernoulli_mixture(n_components: int) -> Model:
    """A mixture of ``n_components`` products of Bernoullis for binary data of shape ``(N, D)``.

    Initial Bernoulli probabilities are drawn uniformly in [0.25, 0.75]; weights start equal.

    Example:
      >>> model = jaxvi.models.bernoulli_mixture(10)
      >>> result = jaxvi.infer(model, jaxvi.EM(), binary_images, key=jax.random.key(0))
    """
    latent = Discrete(n_components)

    def init(key, data):
        if data.ndim != 2:
            raise ValueError(f"data: a Bernoulli mixture expects one (N, D) array, got shape {data.shape}")
        probs = jax.random.uniform(key, (n_components, data.shape[1]), minval=0.25, maxval=0.75)
        return BernoulliMixtureParams(jnp.zeros(n_components), jnp.log(probs) - jnp.log1p(-probs))

    def validate(data) -> None:  # x log p + (1 - x) log(1 - p) is no likelihood outside [0, 1]
        check_values(data, "values", 0, 1, inclusive=True)

    return Model(log_joint, latent, OneProgram(init), validate=validate)


def log_joint(params: BernoulliMixtureParams, z, x):
    logit = params.pixel_logits[z]
    x = x.astype(logit.dtype)
    bernoulli = jnp.sum(x * jax.nn.log_sigmoid(logit) + (1 - x) * jax.nn.log_sigmoid(-logit))
    return jax.nn.log_softmax(params.logits)[z] + bernoulli
