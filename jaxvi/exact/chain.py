r"""The exact posterior of a Markov chain of discrete states: forward–backward in log space.

For one sequence :math:`x_0..x_{T-1}` the step potentials are the model's step log-joints on
every pair of states,

.. math::
    \phi_0(i, j) = \log p_\theta(x_0, z_0 = j) \;\text{(every row i alike)}, \qquad
    \phi_t(i, j) = \log p_\theta(x_t, z_t = j \mid z_{t-1} = i), \; t \ge 1,

so the chain starts from a dummy state 0 and every step has the same K x K form. Then

.. math::
    \alpha_t(j) = \operatorname{logsumexp}_i\, \alpha_{t-1}(i) + \phi_t(i, j), \quad
    \alpha_{-1} = \log e_0, \qquad
    \beta_t(i) = \operatorname{logsumexp}_j\, \phi_{t+1}(i, j) + \beta_{t+1}(j), \quad \beta_{T-1} = 0,

:math:`\log p_\theta(x) = \operatorname{logsumexp}_j \alpha_{T-1}(j)`, the state marginals are
:math:`\gamma_t \propto \exp(\alpha_t + \beta_t)` and the pair marginals
:math:`\xi_t(i, j) \propto \exp(\alpha_{t-1}(i) + \phi_t(i, j) + \beta_t(j))`.

Numerics: the messages are renormalised at every step (their log normalisers are summed
separately), so float32 keeps its precision for sequences of 10^5 steps and more. Steps past a
sequence's length get the identity potential (0 on the diagonal, -inf off it): they carry the
messages unchanged and add nothing.

The recursions run either as a sequential ``lax.scan`` or as a ``lax.associative_scan`` over
K x K matrices in the (logsumexp, +) semiring, O(log T) deep. Replacing logsumexp by max gives the
Viterbi (max-product) recursion with the same code.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxvi.chunks import map_data, sum_data

__all__ = ["ChainPosterior", "Sequences", "expected_log_joint", "posterior", "step_potentials"]

PyTree = Any
LogJoint = Callable[[PyTree, PyTree, PyTree], jax.Array]


class Sequences(NamedTuple):
    """Sequences of unequal length, padded to a common length T.

    Attributes:
      obs: the observations, an array or pytree of arrays of shape ``(N, T, ...)``. Steps past a
        sequence's length are ignored, but must hold values the log-joint accepts (finite).
      lengths: ``(N,)`` integers in ``[1, T]``, the length of every sequence.
    """

    obs: PyTree
    lengths: Any

    @classmethod
    def from_concatenated(cls, x, lengths) -> "Sequences":
        """Pads sequences given hmmlearn's way: rows of ``x`` concatenated, ``lengths`` summing to ``len(x)``.

        Each sequence is padded by repeating its last observation.
        """
        x, lengths = np.asarray(x), np.asarray(lengths)
        if lengths.ndim != 1 or lengths.size == 0 or not np.issubdtype(lengths.dtype, np.integer):
            raise ValueError(f"lengths: expected a non-empty 1-d array of integers, got {lengths!r}")
        if np.any(lengths < 1) or lengths.sum() != len(x):
            raise ValueError(f"lengths: expected positive lengths summing to len(x) = {len(x)}, "
                             f"got lengths summing to {lengths.sum()} (min {lengths.min()})")
        ends = np.cumsum(lengths)
        steps = np.minimum(np.arange(lengths.max())[None, :], lengths[:, None] - 1)
        return cls(x[(ends - lengths)[:, None] + steps], lengths.astype(np.int32))


def split_sequences(data: PyTree) -> tuple[PyTree, jax.Array]:
    """``(obs, lengths)``: the observations ``(N, T, ...)`` and every sequence's length."""
    if isinstance(data, Sequences):
        return data.obs, jnp.asarray(data.lengths)
    n, t = jax.tree_util.tree_leaves(data)[0].shape[:2]
    return data, jnp.full(n, t, jnp.int32)


def step_potentials(log_joint: LogJoint, params: PyTree, obs: PyTree, length: jax.Array, K: int) -> jax.Array:
    r"""The ``(T, K, K)`` step potentials :math:`\phi_t(i, j)` of one sequence (see the module docstring).

    Args:
      obs: one sequence, leaves of shape ``(T, ...)``.
      length: how many steps are real; later steps get the identity potential.
    """
    states = jnp.arange(K, dtype=jnp.int32)
    first_obs = jax.tree_util.tree_map(lambda a: a[0], obs)
    rest_obs = jax.tree_util.tree_map(lambda a: a[1:], obs)
    first = jax.vmap(lambda j: log_joint(params, (None, j), first_obs))(states)
    on_pairs = jax.vmap(jax.vmap(lambda i, j, x: log_joint(params, (i, j), x), (None, 0, None)), (0, None, None))
    rest = jax.vmap(lambda x: on_pairs(states, states, x))(rest_obs)
    potentials = jnp.concatenate([jnp.broadcast_to(first, (1, K, K)), rest.astype(first.dtype)])
    real = jnp.arange(potentials.shape[0]) < length
    return jnp.where(real[:, None, None], potentials, _log_identity(K, potentials.dtype))


def _log_identity(K: int, dtype) -> jax.Array:
    return jnp.where(jnp.eye(K, dtype=bool), 0.0, -jnp.inf).astype(dtype)


# --- recursions in a semiring: "sum" is (logsumexp, +), "max" is (max, +) -----------------------

def _reducer(semiring: str):
    return jax.nn.logsumexp if semiring == "sum" else jnp.max


def _normalise(log_values: jax.Array, reduce, axis) -> tuple[jax.Array, jax.Array]:
    """``(log_values - c, c)`` with c the reduction over ``axis`` (0 where it is not finite)."""
    c = reduce(log_values, axis=axis, keepdims=True)
    c = jnp.where(jnp.isfinite(c), c, 0.0)
    return log_values - c, c


def forward(potentials: jax.Array, semiring: str = "sum", parallel: bool = False
            ) -> tuple[jax.Array, jax.Array]:
    r"""Normalised forward messages :math:`\hat\alpha_t` ``(T, K)`` and :math:`\log \sum_j \alpha_{T-1}(j)`.

    In the "sum" semiring the total is :math:`\log p(x)`; in "max" it is the log-joint of the most
    probable path.
    """
    reduce = _reducer(semiring)
    if parallel:
        prefix_matrices, prefix_scales = lax.associative_scan(
            lambda a, b: _combine(a, b, reduce), _elements(potentials, reduce))
        first_rows, row_scale = _normalise(prefix_matrices[:, 0, :], reduce, -1)
        total = prefix_scales[-1, 0, 0] + row_scale[-1, 0]
        return first_rows, total

    K = potentials.shape[-1]
    start = jnp.full(K, -jnp.inf, potentials.dtype).at[0].set(0.0)

    def step(prev, potential):
        message, scale = _normalise(reduce(prev[:, None] + potential, axis=0), reduce, -1)
        return message, (message, scale[0])

    _, (messages, scales) = lax.scan(step, start, potentials)
    return messages, jnp.sum(scales)


def backward(potentials: jax.Array, semiring: str = "sum", parallel: bool = False) -> jax.Array:
    r"""Normalised backward messages :math:`\hat\beta_t` ``(T, K)``."""
    reduce = _reducer(semiring)
    K = potentials.shape[-1]
    last = jnp.zeros((1, K), potentials.dtype)
    if potentials.shape[0] == 1:
        return last
    if parallel:
        suffix_matrices, _ = lax.associative_scan(
            lambda later, earlier: _combine(earlier, later, reduce), _elements(potentials[1:], reduce),
            reverse=True)
        messages, _ = _normalise(reduce(suffix_matrices, axis=-1), reduce, -1)
        return jnp.concatenate([messages, last])

    def step(following, potential):
        message, _ = _normalise(reduce(potential + following[None, :], axis=1), reduce, -1)
        return message, message

    _, messages = lax.scan(step, last[0], potentials[1:], reverse=True)
    return jnp.concatenate([messages, last])


def _elements(potentials: jax.Array, reduce) -> tuple[jax.Array, jax.Array]:
    """Each potential as (matrix with maximum 0, its log scale), the associative scan's elements."""
    matrices, scales = _normalise(potentials, jnp.max, (-2, -1))
    return matrices, scales


def _combine(a, b, reduce):
    r"""The semiring matrix product :math:`(A \otimes B)(i, k) = \operatorname{reduce}_j A(i, j) + B(j, k)`, rescaled."""
    (a_matrix, a_scale), (b_matrix, b_scale) = a, b
    product = reduce(a_matrix[..., :, :, None] + b_matrix[..., None, :, :], axis=-2)
    product, scale = _normalise(product, jnp.max, (-2, -1))
    return product, a_scale + b_scale + scale


def backtrack(choices: jax.Array, last: jax.Array, parallel: bool = False) -> jax.Array:
    r"""A path from backpointers: :math:`z_{T-1} =` ``last``, :math:`z_{t-1} =` ``choices[t][z_t]``.

    Args:
      choices: ``(T, K)`` integer maps; ``choices[0]`` is unused.
      last: the final state.
      parallel: compose the maps with an associative scan instead of a sequential one.
    """
    if choices.shape[0] == 1:
        return last[None]
    maps = choices[1:]
    if parallel:
        # composed[t] = maps[t] o maps[t+1] o ... o maps[-1]
        composed = lax.associative_scan(
            lambda later, earlier: jnp.take_along_axis(earlier, later, axis=-1), maps, reverse=True)
        return jnp.concatenate([composed[:, last], last[None]])

    def step(state, choice):
        previous = choice[state]
        return previous, previous

    _, path = lax.scan(step, last, maps, reverse=True)
    return jnp.concatenate([path, last[None]])


# --- the posterior --------------------------------------------------------------------------------

class ChainPosterior(NamedTuple):
    r"""The exact posterior :math:`p_\theta(z_{0:T-1} \mid x)` of every sequence.

    Attributes:
      log_evidence: ``(N,)`` per-sequence :math:`\log p_\theta(x)`.
      log_potentials: ``(N, T, K, K)`` step potentials :math:`\phi_t(i, j)` (module docstring).
      log_forward: ``(N, T, K)`` normalised forward messages :math:`\hat\alpha_t`, so that
        ``softmax(log_forward[n, t])`` is the filtered :math:`p(z_t \mid x_{0:t})`.
      log_backward: ``(N, T, K)`` normalised backward messages :math:`\hat\beta_t`.
      lengths: ``(N,)`` sequence lengths.
    """

    log_evidence: jax.Array
    log_potentials: jax.Array
    log_forward: jax.Array
    log_backward: jax.Array
    lengths: jax.Array

    @property
    def real_steps(self) -> jax.Array:
        """``(N, T)`` True where a step is within its sequence's length."""
        return jnp.arange(self.log_forward.shape[1]) < self.lengths[:, None]

    @property
    def marginals(self) -> jax.Array:
        r"""``(N, T, K)`` state marginals :math:`\gamma_t(k) = p(z_t = k \mid x)`; 0 past a sequence's end."""
        gamma = jax.nn.softmax(self.log_forward + self.log_backward, axis=-1)
        return jnp.where(self.real_steps[..., None], gamma, 0.0)

    @property
    def pair_marginals(self) -> jax.Array:
        r"""``(N, T, K, K)`` pair marginals :math:`\xi_t(i, j) = p(z_{t-1} = i, z_t = j \mid x)`; 0 at t = 0 and past the end."""
        weights = self._step_weights()
        return weights.at[:, 0].set(0.0)

    @property
    def transitions(self) -> jax.Array:
        r"""``(N, K, K)`` expected transition counts :math:`\sum_{t \ge 1} \xi_t(i, j)`."""
        return jnp.sum(self.pair_marginals, axis=1)

    def _step_weights(self) -> jax.Array:
        r"""``(N, T, K, K)``: :math:`\xi_t` for real steps t >= 1, :math:`\gamma_0` in row 0 at t = 0, else 0.

        These are the posterior probabilities of the arguments of every call of the step
        log-joint, so :math:`E_q[\log p(x, z)] = \sum_{t,i,j} w_t(i, j) \phi_t(i, j)`.
        """
        n, _, K = self.log_forward.shape
        start = jnp.full((n, 1, K), -jnp.inf, self.log_forward.dtype).at[:, 0, 0].set(0.0)
        previous = jnp.concatenate([start, self.log_forward[:, :-1]], axis=1)
        log_xi = previous[..., :, None] + self.log_potentials + self.log_backward[..., None, :]
        log_xi, _ = _normalise(log_xi, jax.nn.logsumexp, (-2, -1))
        return jnp.where(self.real_steps[..., None, None], jnp.exp(log_xi), 0.0)

    def expect(self, f: Callable, data: PyTree | None = None, *, chunk_size: int = 1024) -> jax.Array:
        r"""Per-sequence :math:`E_q[\sum_t f((z_{t-1}, z_t), x_t)]`, with :math:`z_{-1}` = None.

        Args:
          f: ``f(z)`` or, with ``data``, ``f(z, x)``, called like the step log-joint: ``z`` is
            ``(previous state or None, state)`` and ``x`` one step's observation. It returns an
            array of any fixed shape.
          data: the sequences this posterior was computed for, or None.
          chunk_size: how many sequences are evaluated at once.

        Returns:
          ``(N, *f's output shape)``.
        """
        obs, _ = split_sequences(data) if data is not None else (None, None)
        weights = self._step_weights()
        if obs is None:
            T = weights.shape[1]
            obs = jnp.zeros((weights.shape[0], T, 0))
            g = lambda z, x: f(z)
        else:
            g = f
        return map_data(lambda args: _expect_one(g, *args), (obs, weights), chunk_size)

    def mode(self, parallel: bool = False) -> jax.Array:
        """``(N, T)`` the most probable state path of every sequence (Viterbi); -1 past its end."""
        def one(potentials):
            messages, _ = forward(potentials, "max", parallel)
            previous = jnp.concatenate([messages[:1], messages[:-1]])
            choices = jnp.argmax(previous[:, :, None] + potentials, axis=1).astype(jnp.int32)
            return backtrack(choices, jnp.argmax(messages[-1]).astype(jnp.int32), parallel)

        return jnp.where(self.real_steps, jax.vmap(one)(self.log_potentials), -1)

    def sample(self, key: jax.Array, parallel: bool = False) -> jax.Array:
        r"""``(N, T)`` one path per sequence drawn from the exact posterior; -1 past its end.

        Forward-filter backward-sample: :math:`z_{T-1} \sim \hat\alpha_{T-1}`, then
        :math:`z_{t-1} \mid z_t = j \sim \propto \hat\alpha_{t-1}(i) + \phi_t(i, j)`, drawn for every j
        at once by the Gumbel-max trick and followed back like Viterbi's backpointers.
        """
        def one(key, potentials, messages):
            final_key, step_key = jax.random.split(key)
            previous = jnp.concatenate([messages[:1], messages[:-1]])
            gumbel = jax.random.gumbel(step_key, potentials.shape, potentials.dtype)
            choices = jnp.argmax(previous[:, :, None] + potentials + gumbel, axis=1).astype(jnp.int32)
            last = jax.random.categorical(final_key, messages[-1]).astype(jnp.int32)
            return backtrack(choices, last, parallel)

        keys = jax.random.split(key, self.log_potentials.shape[0])
        return jnp.where(self.real_steps, jax.vmap(one)(keys, self.log_potentials, self.log_forward), -1)


def _expect_one(f: Callable, obs: PyTree, weights: jax.Array) -> jax.Array:
    """One sequence's :math:`\\sum_{t,i,j} w_t(i, j) f((i, j), x_t)`, with the t = 0 term on row 0."""
    K = weights.shape[-1]
    states = jnp.arange(K, dtype=jnp.int32)
    first_obs = jax.tree_util.tree_map(lambda a: a[0], obs)
    rest_obs = jax.tree_util.tree_map(lambda a: a[1:], obs)
    first = jax.vmap(lambda j: f((None, j), first_obs))(states)
    on_pairs = jax.vmap(jax.vmap(lambda i, j, x: f((i, j), x), (None, 0, None)), (0, None, None))
    rest = jax.vmap(lambda x: on_pairs(states, states, x))(rest_obs)
    return _weighted_sum(weights[0, 0], first) + _weighted_sum(weights[1:], rest)


def _weighted_sum(weights: jax.Array, values: jax.Array) -> jax.Array:
    """:math:`\\sum w \\cdot v` over ``weights``' axes (the leading axes of ``values``); 0-weight terms dropped."""
    w = weights.reshape(weights.shape + (1,) * (values.ndim - weights.ndim))
    return jnp.sum(jnp.where(w > 0, w * values, 0.0), axis=tuple(range(weights.ndim)))


def _posterior_one(log_joint: LogJoint, params: PyTree, obs: PyTree, length: jax.Array, K: int,
                   parallel: bool) -> tuple[jax.Array, ...]:
    potentials = step_potentials(log_joint, params, obs, length, K)
    log_forward, log_evidence = forward(potentials, "sum", parallel)
    log_backward = backward(potentials, "sum", parallel)
    return log_evidence, potentials, log_forward, log_backward


def posterior(log_joint: LogJoint, latent, params: PyTree, data: PyTree, chunk_size: int = 1024
              ) -> ChainPosterior:
    """The exact E-step for a ``Markov`` latent: step potentials, then forward–backward per sequence."""
    obs, lengths = split_sequences(data)
    outputs = map_data(lambda args: _posterior_one(log_joint, params, *args, latent.K, latent.parallel),
                       (obs, lengths), chunk_size)
    return ChainPosterior(*outputs, lengths)


def expected_log_joint(log_joint: LogJoint, params: PyTree, data: PyTree, post: ChainPosterior,
                       chunk_size: int = 1024) -> jax.Array:
    r"""EM's :math:`Q(\theta) = \sum_n E_{q_n}[\log p_\theta(x_n, z_n)]`, the posterior held fixed."""
    obs, _ = split_sequences(data)
    weights = jax.lax.stop_gradient(post._step_weights())

    def chunk_sum(chunk):
        x, w = chunk
        return jnp.sum(jax.vmap(lambda xi, wi: _expect_one(lambda z, s: log_joint(params, z, s), xi, wi))(x, w))

    return sum_data(chunk_sum, (obs, weights), chunk_size)
