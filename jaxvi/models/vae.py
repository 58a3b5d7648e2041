r"""The variational autoencoder's model: a decoder network as a log-joint.

.. math:: z \sim N(0, I_d), \qquad x \mid z \sim \prod_j \mathrm{Bernoulli}(\sigma(f_\theta(z)_j))
    \;\text{or}\; \prod_j N(f_\theta(z)_j, e^{2 s_j}),

with :math:`f_\theta` any ``jaxvi.nn.Network`` (the decoder) and, for the Gaussian likelihood, a
learned log standard deviation :math:`s` per dimension. The latent is ``Real((d,))``: fit it with
``jaxvi.Amortized`` (a VAE), ``jaxvi.SVI`` (one q per datum), or score it with ``jaxvi.evidence``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxvi.latents import Real
from jaxvi.methods.settings import check_count
from jaxvi.model import Model, check_key, check_values
from jaxvi.nn import Network, mlp
from jaxvi.run.compiled import OneProgram

__all__ = ["VAE", "VAEParams", "vae"]

PyTree = Any
LIKELIHOODS = ("bernoulli", "gaussian")


class VAEParams(NamedTuple):
    """``decoder``: the network's parameters; ``log_scale``: ``(D,)`` log standard deviations (Gaussian
    likelihood; unused for Bernoulli)."""

    decoder: PyTree
    log_scale: jax.Array


class VAE(NamedTuple):
    """A VAE model and what to do with a fit of it.

    Attributes:
      model: the ``jaxvi.Model`` (prior N(0, I) on z, the decoder's likelihood).
      decode: ``decode(params, z) -> (D,)``: Bernoulli probabilities or Gaussian means of x given z.
    """

    model: Model
    decode: Callable[[VAEParams, jax.Array], jax.Array]

    def reconstruct(self, result, data) -> jax.Array:
        """``(N, D)``: every datum decoded from its q's mean (``result.posterior(data)``)."""
        z = result.posterior(data).mean()
        return jax.vmap(lambda zi: self.decode(result.params, zi))(z)

    def sample(self, result, key: jax.Array, num_samples: int) -> jax.Array:
        """``(num_samples, D)``: new data's probabilities / means, decoded from z ~ N(0, I).

        Raises:
          ValueError: ``key`` is not a PRNG key, or ``num_samples`` not an integer >= 1."""
        key = check_key(key)
        check_count("num_samples", num_samples)
        dim = self.model.latent.shape[0]
        z = jax.random.normal(key, (num_samples, dim), jnp.result_type(result.objective))
        return jax.vmap(lambda zi: self.decode(result.params, zi))(z)


def vae(latent_dim: int, data_dim: int, decoder: Network | None = None, likelihood: str = "bernoulli") -> VAE:
    """A VAE model of ``data_dim``-dimensional data with a ``latent_dim``-dimensional latent.

    Args:
      latent_dim: d.
      data_dim: D, the length of one (flattened) datum.
      decoder: the network z -> D outputs (logits or means); None means ``jaxvi.nn.mlp((256, 256))``.
      likelihood: ``"bernoulli"`` (data in [0, 1]) or ``"gaussian"``.

    Example:
      >>> vae = jaxvi.models.vae(8, 64)
      >>> result = jaxvi.infer(vae.model, jaxvi.Amortized(num_epochs=100), x, key=jax.random.key(0))
      >>> vae.reconstruct(result, x[:10])
    """
    for name, value in (("latent_dim", latent_dim), ("data_dim", data_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood: expected one of {LIKELIHOODS}, got {likelihood!r}")
    if decoder is not None and not isinstance(decoder, Network):
        raise ValueError(f"decoder: expected a jaxvi.nn.Network, got {type(decoder).__name__}")
    network = mlp((256, 256)) if decoder is None else decoder
    bernoulli = likelihood == "bernoulli"

    def outputs(params: VAEParams, z):
        out = network.apply(params.decoder, z)
        if out.shape != (data_dim,):
            raise ValueError(f"decoder: expected an output of shape ({data_dim},), got {out.shape}")
        return out

    def log_joint(params: VAEParams, z, x):
        prior = -0.5 * (z @ z + latent_dim * math.log(2 * math.pi))
        out, x = outputs(params, z), jnp.ravel(x)
        if bernoulli:
            return prior + jnp.sum(x * out - jax.nn.softplus(out))
        scale = params.log_scale
        return prior - jnp.sum(0.5 * ((x - out) * jnp.exp(-scale)) ** 2 + scale + 0.5 * math.log(2 * math.pi))

    def decode(params: VAEParams, z):
        out = outputs(params, z)
        return jax.nn.sigmoid(out) if bernoulli else out

    def init(key, data):
        if jax.tree_util.tree_leaves(data)[0].size // jax.tree_util.tree_leaves(data)[0].shape[0] != data_dim:
            raise ValueError(f"data: expected data of {data_dim} values per datum, got shape "
                             f"{jax.tree_util.tree_leaves(data)[0].shape}")
        dtype = jnp.result_type(jax.tree_util.tree_leaves(data)[0], jnp.float32)
        z = jnp.zeros(latent_dim, dtype)
        return VAEParams(network.init(key, z, data_dim), jnp.zeros(data_dim, dtype))

    def validate(data) -> None:  # x out - softplus(out) is no likelihood outside [0, 1]
        check_values(data, "values", 0, 1, inclusive=True)

    return VAE(Model(log_joint, Real((latent_dim,)), OneProgram(init), validate=validate if bernoulli else None),
               decode)
