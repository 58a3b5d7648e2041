r"""Structured mean field over several Markov chains (Ghahramani & Jordan 1997): :math:`q(z) = \prod_m q_m(z^m)`,
each factor a whole chain.

A local latent that is a pytree of ``Markov`` specs (a factorial HMM's M chains) has an exact posterior over the
product chain of :math:`\prod_m K_m` states, too many to enumerate for more than a few chains. CAVI fits
:math:`q = \prod_m q_m` instead, every factor a chain of its own. The model's step log-joint receives every
chain's ``(previous, current)`` pair, so its values on all joint pairs form a table :math:`F_t` with
:math:`\prod_m K_m^2` entries per step. With chain m's step weights :math:`w^m_t(i, j)` (its pair marginals, the
t = 0 state marginal in row 0, as ``ChainPosterior``'s),

.. math:: E_q[\log p(x, z)] = \sum_t \langle F_t,\; w^1_t \otimes \dots \otimes w^M_t \rangle,

and the best :math:`q_m` given the others, :math:`q_m \propto \exp E_{q_{-m}}[\log p(x, z)]`, is the chain whose
step potentials are :math:`F_t` contracted with every other chain's weights,

.. math:: \phi^m_t(i, j) = \langle F_t(\dots, i, j, \dots),\; \otimes_{l \ne m} w^l_t \rangle,

fitted exactly by forward–backward. Its entropy is :math:`H[q_m] = \log Z_m - \sum_t \langle w^m_t, \phi^m_t\rangle`,
and right after its update the bound :math:`\mathcal L = E_q[\log p] + \sum_l H[q_l]` is
:math:`\log Z_m + \sum_{l \ne m} H[q_l]`. A sweep updates the chains in turn; every update raises the bound.

Cost: the table takes :math:`T \prod_m K_m^2` evaluations of the step log-joint per sequence, computed once per
sweep (a few chains of a few states: M = 3 chains of 3 states is 729 per step).
"""
from __future__ import annotations

import dataclasses
import functools
import string
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxvi.chunks import map_data, sum_accurately
from jaxvi.exact import chain
from jaxvi.latents import Markov, is_spec

__all__ = ["ChainLayout", "ChainProduct", "chain_layout", "exact_log_normaliser", "fit", "initial", "step_table", "sweep", "tables"]

PyTree = Any
_AXES = [c for c in string.ascii_letters if c not in "nt"]


class ChainLayout(NamedTuple):
    """Where the chains are in the local latent (static): every chain's number of states, and the treedef that
    puts one ``(previous, current)`` pair per chain back into the latent's structure."""

    sizes: tuple
    treedef: Any

    def value(self, pairs) -> PyTree:
        return jax.tree_util.tree_unflatten(self.treedef, list(pairs))


def chain_layout(local) -> ChainLayout | None:
    """The ``ChainLayout`` of a local latent that is a pytree (not a bare spec) of ``Markov`` specs, else None."""
    if local is None or isinstance(local, Markov):
        return None
    leaves, treedef = jax.tree_util.tree_flatten(local, is_leaf=is_spec)
    if not leaves or not all(isinstance(leaf, Markov) for leaf in leaves):
        return None
    return ChainLayout(tuple(leaf.K for leaf in leaves), treedef)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["bound", "weights", "entropy", "lengths"],
                   meta_fields=["layout"])
@dataclasses.dataclass(frozen=True)
class ChainProduct:
    r"""A structured mean-field q of every sequence: one chain per ``Markov`` leaf.

    Attributes:
      bound: ``(N,)`` every sequence's bound :math:`E_q[\log p(x, z)] + H[q]` (at most its log evidence).
      weights: per chain, ``(N, T, K_m, K_m)`` step weights: pair marginals :math:`q(z_{t-1} = i, z_t = j)` for
        t >= 1, the state marginal in row 0 at t = 0, 0 past a sequence's end.
      entropy: ``(N, M)`` every chain's entropy :math:`H[q_m]`.
      lengths: ``(N,)`` the sequences' lengths.
      layout: where the chains are in the latent (static).
    """

    bound: jax.Array
    weights: tuple
    entropy: jax.Array
    lengths: jax.Array
    layout: ChainLayout

    @property
    def marginals(self) -> tuple:
        r"""Per chain, ``(N, T, K_m)`` state marginals :math:`q(z^m_t = k)`; 0 past a sequence's end."""
        return tuple(jnp.sum(w, axis=-2) for w in self.weights)

    def sample(self, key: jax.Array) -> tuple:
        r"""Per chain, ``(N, T)`` one path per sequence drawn from :math:`q_m`; -1 past its end. Each chain is
        Markov under q with :math:`q_m(z_t = j \mid z_{t-1} = i) \propto w^m_t(i, j)`: :math:`z_0` from the state
        marginal in row 0, then every step from its row of the pair marginals."""
        paths = []
        for key_m, weights in zip(jax.random.split(key, len(self.weights)), self.weights):
            T = weights.shape[1]
            keys = jax.random.split(key_m, T)
            log_weights = jnp.log(weights)  # -inf where q puts no mass

            def step(previous, inputs):
                k, log_w = inputs                                         # log_w: (N, K, K)
                rows = jnp.take_along_axis(log_w, previous[:, None, None], axis=1)[:, 0]
                current = jax.random.categorical(k, rows).astype(jnp.int32)
                return current, current

            first = jax.random.categorical(keys[0], log_weights[:, 0, 0]).astype(jnp.int32)
            _, rest = lax.scan(step, first, (keys[1:], jnp.moveaxis(log_weights[:, 1:], 1, 0)))
            path = jnp.concatenate([first[:, None], rest.T], axis=1)
            paths.append(jnp.where(jnp.arange(T) < self.lengths[:, None], path, -1))
        return tuple(paths)

    def expected_log_joint(self, log_joint: Callable, params: PyTree, data: PyTree, chunk_size: int = 1024
                           ) -> jax.Array:
        r""":math:`\sum_n E_q[\log p_\theta(x_n, z_n)]`, q held fixed (no gradient through it): an M-step's
        objective, a global factor's update."""
        weights = jax.lax.stop_gradient(tuple(_flat(w) for w in self.weights))
        table = tables(log_joint, params, data, self.layout, chunk_size)
        return sum_accurately(sum_accurately(_contract(table, weights, None).T))     # pairwise over time and data


def _joint_pairs(sizes: tuple) -> np.ndarray:
    """``(2M, P)``: every chain's (previous, current) state in each of the P = prod K_m^2 joint pairs, in the
    row-major order of the axes (previous_1, current_1, ..., previous_M, current_M)."""
    shape = tuple(k for K in sizes for k in (K, K))
    return np.indices(shape).reshape(len(shape), -1).astype(np.int32)


def step_table(log_joint: Callable, params: PyTree, obs: PyTree, layout: ChainLayout) -> jax.Array:
    r"""``(T, P)`` one sequence's step log-joints on every joint pair of states: :math:`F_t`, flattened. At t = 0
    every chain's previous state is None (the values repeat along the previous-state axes)."""
    grid = jnp.asarray(_joint_pairs(layout.sizes))
    M = len(layout.sizes)

    def first(x):
        return jax.vmap(lambda g: log_joint(params, layout.value((None, g[2 * m + 1]) for m in range(M)), x),
                        in_axes=1)(grid)

    def pairs(x):
        return jax.vmap(lambda g: log_joint(params, layout.value((g[2 * m], g[2 * m + 1]) for m in range(M)), x),
                        in_axes=1)(grid)

    first_obs = jax.tree_util.tree_map(lambda a: a[0], obs)
    rest_obs = jax.tree_util.tree_map(lambda a: a[1:], obs)
    head = first(first_obs)
    return jnp.concatenate([head[None], jax.vmap(pairs)(rest_obs).astype(head.dtype)])


def tables(log_joint: Callable, params: PyTree, data: PyTree, layout: ChainLayout, chunk_size: int = 1024
           ) -> jax.Array:
    """``(N, T, P)`` every sequence's ``step_table``, 0 past its end."""
    obs, lengths = chain.split_sequences(data)
    values = map_data(lambda x: step_table(log_joint, params, x, layout), obs, chunk_size)
    real = jnp.arange(values.shape[1]) < lengths[:, None]
    return jnp.where(real[..., None], values, 0.0)


def _contract(table: jax.Array, weights: tuple, keep: int | None) -> jax.Array:
    r"""``(N, T, K_keep^2)`` (or ``(N, T)``): the table contracted with every chain's flattened weights but
    chain ``keep``'s, with :math:`0 \cdot (-\infty) = 0`: a -inf entry counts only where its weight is positive."""
    n, T = table.shape[:2]
    table = table.reshape(n, T, *(w.shape[-1] for w in weights))
    letters = _AXES[:len(weights)]
    others = [m for m in range(len(weights)) if m != keep]
    spec = ("nt" + "".join(letters) + "".join(",nt" + letters[m] for m in others) + "->nt"
            + (letters[keep] if keep is not None else ""))
    other_weights = [weights[m] for m in others]
    if not other_weights:
        return table.reshape(n, T, -1)
    impossible = table == -jnp.inf
    finite = jnp.einsum(spec, jnp.where(impossible, 0.0, table), *other_weights)
    reached = jnp.einsum(spec, impossible.astype(table.dtype), *other_weights)
    return jnp.where(reached > 0, -jnp.inf, finite)


def _flat(weights: jax.Array) -> jax.Array:
    return weights.reshape(*weights.shape[:2], -1)


def _update(table: jax.Array, post: ChainProduct, m: int, K: int) -> tuple[ChainProduct, jax.Array]:
    """Chain m set to its optimum given the others: (the new q, its log normaliser per sequence)."""
    flat = tuple(_flat(w) for w in post.weights)
    potentials = _contract(table, flat, m)
    potentials = potentials.reshape(*potentials.shape[:2], K, K)
    exact = chain.from_potentials(potentials, post.lengths)
    weights = exact._step_weights()
    per_step = jnp.sum(jnp.where(weights > 0, weights * potentials, 0.0), axis=(2, 3))
    expected = sum_accurately(per_step.T)                                             # pairwise over time
    entropy = post.entropy.at[:, m].set(exact.log_evidence - expected)
    new_weights = tuple(weights if l == m else w for l, w in enumerate(post.weights))
    return dataclasses.replace(post, weights=new_weights, entropy=entropy), exact.log_evidence


def sweep(table: jax.Array, post: ChainProduct) -> ChainProduct:
    """Every chain updated once, in order; the bound is that after the last update."""
    log_normaliser = None
    for m, w in enumerate(post.weights):  # a few chains, a static loop
        post, log_normaliser = _update(table, post, m, w.shape[-1])
    others = jnp.sum(post.entropy[:, :-1], axis=1)
    return dataclasses.replace(post, bound=log_normaliser + others)


def exact_log_normaliser(table: jax.Array, sizes: tuple, lengths: jax.Array) -> jax.Array:
    r"""``(N,)`` :math:`\log \sum_z \exp \sum_t F_t(z_{t-1}, z_t)` over the product chain of
    :math:`\prod_m K_m` joint states: the exact log evidence the structured bound is below (the forward algorithm
    on the same table, :math:`O(T \prod_m K_m^2)` like a sweep)."""
    n, T = table.shape[:2]
    M = len(sizes)
    joint = table.reshape(n, T, *(k for K in sizes for k in (K, K)))
    order = [0, 1] + [2 + 2 * m for m in range(M)] + [3 + 2 * m for m in range(M)]  # previous axes, then current
    states = int(np.prod(sizes))
    potentials = jnp.transpose(joint, order).reshape(n, T, states, states)
    return chain.forward_scan(*chain.time_major(potentials), lambda p: p, lengths, "sum")[1]


def initial(key: jax.Array, data: PyTree, layout: ChainLayout, dtype) -> ChainProduct:
    """Random step weights (independent Dirichlet(1) state marginals at every step): where a first sweep starts.
    Their entropies and bound are not computed (a sweep replaces every chain)."""
    obs, lengths = chain.split_sequences(data)
    n, T = jax.tree_util.tree_leaves(obs)[0].shape[:2]
    real = (jnp.arange(T) < lengths[:, None])[..., None, None]
    weights = []
    for key_m, K in zip(jax.random.split(key, len(layout.sizes)), layout.sizes):
        p = jax.random.dirichlet(key_m, jnp.ones(K, dtype), (n, T))
        previous = jnp.concatenate([jnp.zeros((n, 1, K), dtype).at[:, 0, 0].set(1.0), p[:, :-1]], axis=1)
        weights.append(jnp.where(real, previous[..., :, None] * p[..., None, :], 0.0))
    zeros = jnp.zeros(n, dtype)
    return ChainProduct(zeros, tuple(weights), jnp.zeros((n, len(layout.sizes)), dtype), lengths, layout)


def fit(table: jax.Array, post: ChainProduct, max_sweeps: int, tol) -> ChainProduct:
    """Sweeps from ``post`` until the bound per sequence changes by less than ``tol`` (at least one sweep, at most
    ``max_sweeps``)."""
    def more(carry):
        i, previous, current = carry
        change = jnp.abs(jnp.sum(current.bound) - previous) / current.bound.shape[0]
        return (i < max_sweeps) & ~(change < tol)

    def again(carry):
        i, _, current = carry
        return i + 1, jnp.sum(current.bound), sweep(table, current)

    start = (jnp.array(1), jnp.array(-jnp.inf, table.dtype), sweep(table, post))
    return lax.while_loop(more, again, start)[2]
