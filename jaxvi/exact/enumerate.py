r"""The exact posterior of discrete latents, by enumeration.

For a datum :math:`x_i` and a latent :math:`z` with finitely many values :math:`z_1..z_M`,

.. math::
    \log p_\theta(x_i) = \operatorname{logsumexp}_m \log p_\theta(x_i, z_m), \qquad
    \log q_i(z_m) = \log p_\theta(x_i, z_m) - \log p_\theta(x_i),

so :math:`q_i = p_\theta(z \mid x_i)` exactly and the KL term of the ELBO identity is zero.
Everything is computed in log space; the log-joint is evaluated at every ``(x_i, z_m)`` by vmap,
``chunk_size`` data at a time.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxvi.chunks import map_data, sum_data
from jaxvi.latents import check_enumeration, discrete_sizes

__all__ = ["DiscretePosterior", "elbo", "expected_log_joint", "latent_values", "log_joint_table", "posterior"]

PyTree = Any
LogJoint = Callable[[PyTree, PyTree, PyTree], jax.Array]


def latent_values(latent) -> PyTree:
    """Every value of a ``Discrete`` latent or pytree of them, stacked on a leading axis of size M.

    For one ``Discrete(K)``: ``arange(K)``. For several, the leaves enumerate the product of
    their values in row-major order, so ``M = prod(K_j)``.

    Raises:
      ValueError: M is more than ``jaxvi.latents.MAX_ENUMERATED_VALUES`` (checked before allocating).
    """
    sizes, treedef = discrete_sizes(latent)
    check_enumeration(latent, 1, "enumeration")
    grid = np.indices(sizes).reshape(len(sizes), -1)
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(row, jnp.int32) for row in grid])


def log_joint_table(log_joint: LogJoint, params: PyTree, data: PyTree, values: PyTree,
                    chunk_size: int) -> jax.Array:
    r"""The table :math:`\log p_\theta(x_i, z_m)`, shape ``(N, M)``."""
    num_values = jax.tree_util.tree_leaves(values)[0].shape[0]

    def one_datum(x):
        row = jax.vmap(lambda z: log_joint(params, z, x))(values)
        chex.assert_shape(row, (num_values,))  # one scalar per latent value
        return row

    return map_data(one_datum, data, chunk_size)


class DiscretePosterior(NamedTuple):
    r"""The exact posterior :math:`q_i(z) = p_\theta(z \mid x_i)` of every datum.

    Attributes:
      log_probs: ``(N, M)`` log posterior probabilities :math:`\log q_i(z_m)`.
      log_evidence: ``(N,)`` per-datum log evidence :math:`\log p_\theta(x_i)`.
      values: the enumerated latent values, a pytree like the latent with leaves of shape ``(M,)``.
    """

    log_probs: jax.Array
    log_evidence: jax.Array
    values: PyTree

    @property
    def probs(self) -> jax.Array:
        """``(N, M)`` responsibilities :math:`q_i(z_m)`; rows sum to one."""
        return jnp.exp(self.log_probs)

    def marginals(self, latent) -> PyTree:
        """Per leaf of ``latent`` (the spec this posterior enumerated), its ``(N, K_j)`` marginal."""
        sizes, treedef = discrete_sizes(latent)
        values = jax.tree_util.tree_leaves(self.values)
        return jax.tree_util.tree_unflatten(treedef, [
            self.probs @ jax.nn.one_hot(value, size, dtype=self.log_probs.dtype)
            for value, size in zip(values, sizes)
        ])

    def expect(self, f: Callable, data: PyTree | None = None, *, chunk_size: int = 1024) -> jax.Array:
        r"""Per-datum expectations :math:`E_{q_i}[f(z)]`, or :math:`E_{q_i}[f(z, x_i)]` given ``data``.

        Args:
          f: ``f(z)`` or, with ``data``, ``f(z, x)`` for one latent value and one datum; returns an
            array of any fixed shape.
          data: the data the posterior was computed for, or None.
          chunk_size: how many data are evaluated at once.

        Returns:
          An array of shape ``(N, *f's output shape)``.
        """
        if data is None:
            f_values = jax.vmap(f)(self.values)
            return jnp.tensordot(self.probs, f_values, axes=1)

        def one_datum(args):
            x, probs = args
            return jnp.tensordot(probs, jax.vmap(lambda z: f(z, x))(self.values), axes=1)

        return map_data(one_datum, (data, self.probs), chunk_size)

    def kl_from(self, log_q: jax.Array) -> jax.Array:
        r"""Per-datum :math:`KL(q_i \,\|\, p(z \mid x_i))` for another distribution ``log_q`` ``(N, M)``."""
        q = jnp.exp(log_q)
        return jnp.sum(jnp.where(q > 0, q * (log_q - self.log_probs), 0.0), axis=1)


def posterior(log_joint: LogJoint, latent, params: PyTree, data: PyTree, chunk_size: int = 1024
              ) -> DiscretePosterior:
    """The exact E-step: enumerate ``latent``, evaluate ``log_joint`` everywhere, normalise."""
    values = latent_values(latent)
    table = log_joint_table(log_joint, params, data, values, chunk_size)
    log_evidence = jax.nn.logsumexp(table, axis=1)
    return DiscretePosterior(table - log_evidence[:, None], log_evidence, values)


def elbo(log_joint: LogJoint, latent, params: PyTree, data: PyTree, log_q: jax.Array,
         chunk_size: int = 1024) -> jax.Array:
    r"""Per-datum evidence lower bound of a discrete distribution ``q`` over the latent values.

    .. math:: \mathrm{ELBO}_i(q, \theta) = \sum_m q_i(z_m) [\log p_\theta(x_i, z_m) - \log q_i(z_m)]
        = \log p_\theta(x_i) - KL(q_i \,\|\, p_\theta(z \mid x_i)).

    Args:
      log_q: ``(N, M)`` log probabilities of q for every datum, over ``latent_values(latent)``.
    """
    table = log_joint_table(log_joint, params, data, latent_values(latent), chunk_size)
    q = jnp.exp(log_q)
    return jnp.sum(jnp.where(q > 0, q * (table - log_q), 0.0), axis=1)


def expected_log_joint(log_joint: LogJoint, params: PyTree, data: PyTree, post: DiscretePosterior,
                       chunk_size: int = 1024) -> jax.Array:
    r"""EM's auxiliary function :math:`Q(\theta) = \sum_i E_{q_i}[\log p_\theta(x_i, z)]`.

    ``q`` (the posterior) is held fixed: no gradient flows into its probabilities. Terms with
    zero probability are dropped, so a value the model rules out (log-joint of -inf) costs nothing.
    """
    probs = jax.lax.stop_gradient(post.probs)

    def chunk_sum(chunk):
        x, weights = chunk
        table = jax.vmap(lambda xi: jax.vmap(lambda z: log_joint(params, z, xi))(post.values))(x)
        return jnp.sum(jnp.where(weights > 0, weights * table, 0.0))

    return sum_data(chunk_sum, (data, probs), chunk_size)
