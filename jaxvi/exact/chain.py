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
separately), so float32 keeps its precision for sequences of 10^5 steps and more. A sequence no
path can explain gets :math:`\log p_\theta(x) = -\infty`, never NaN. Steps past a sequence's
length carry the messages unchanged and add nothing.

Two ways to run the recursions:

- sequential (``Markov(K)``): one ``lax.scan`` over time for all sequences at once, with the
  sequence axis LAST in every array (``(K, N)`` messages, ``(K, K, N)`` potentials), so each
  reduction over states is a vector operation across sequences. The step potentials are computed
  inside the scan from one step of the data and never stored; the backward scan also sums the
  pair marginals, which is all EM's M-step needs of them. (Measured on a 2-core CPU, K = 8,
  200 x 1000 steps: about 3x faster than a per-sequence scan over stored potentials.) Where nothing
  differentiates through them (EM's E-step) and the transitions do not depend on the step, the
  recursions run in probability space (``_scaled_scans``), their emissions computed before them
  for blocks of steps at once, so that each step is a K x K product and a normalisation.
- parallel (``Markov(K, parallel=True)``): per sequence, a parallel prefix scan (``prefix_scan``,
  recursive doubling) over K x K matrices in the (logsumexp, +) semiring, O(log T) deep, on stored
  potentials.

Replacing logsumexp by max gives the Viterbi (max-product) recursion with the same code.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import math

import chex
import jax
import jax.numpy as jnp
from jax import lax

from jaxvi.chunks import add_logs, kahan_add, map_data, sum_accurately, sum_data, unless
from jaxvi.data import Sequences

__all__ = ["ChainPosterior", "Sequences", "backtrack", "backward_scan", "expected_log_joint", "forward_scan",
           "from_potentials", "parallel_backward", "parallel_forward", "posterior", "prefix_scan", "real_steps",
           "step_potentials", "worth_scaling"]

PyTree = Any
LogJoint = Callable[[PyTree, PyTree, PyTree], jax.Array]
SCALED_TOLERANCE = 64  # epsilons of the dtype, relative: a step's transition part equals step 1's within this
# The work from which a fit's E-steps run in probability space (``worth_scaling``): (K^2 x sequences + STEP_ENTRIES)
# x steps x passes. On a 2-core CPU (Intel Xeon, K = 8, jaxvi.compiler_options) both recursions compile 0.7 s longer
# than the log-space ones alone, and an E-step saves about 1.3 us per step of the recursions plus 2 ns per K^2 x
# sequence step: 200 sequences of 1,000 steps 63 -> 36 ms, 20 of 1,000 9.3 -> 6.1 ms, one sequence of 2 x 10^5 steps
# 326 -> 34 ms, of 10^6 steps 1.65 -> 0.19 s. So a step costs as much as STEP_ENTRIES = 2^9 of the K^2 x sequences,
# and the saving repays the compile from about 3.5 x 10^8 of that work: a 10-iteration EM of 200 x 1,000 steps stays
# in log space (1.5 x 10^8), 100 iterations or one pass over one sequence of 10^6 steps (5.8 x 10^8) do not.
SCALED_WORK = 2 ** 28
STEP_ENTRIES = 2 ** 9
# potentials (K^2 x sequences x steps) per block of steps whose emissions ``_scaled_scans`` computes before the
# recursions (K = 8: 81 steps of 200 sequences, 16,384 of one; 2^18 to 2^22 ran alike)
EMISSION_BLOCK = 2 ** 20


def split_sequences(data: PyTree) -> tuple[PyTree, jax.Array]:
    """``(obs, lengths)``: the observations ``(N, T, ...)`` and every sequence's length."""
    if isinstance(data, Sequences):
        return data.obs, jnp.asarray(data.lengths)
    n, t = jax.tree_util.tree_leaves(data)[0].shape[:2]
    return data, jnp.full(n, t, jnp.int32)


def real_steps(data: PyTree) -> tuple[PyTree, jax.Array]:
    """``(obs, real)``: the observations ``(N, T, ...)`` (every leaf) with every padded step set to 0, so that no
    padding value (however large) reaches the arithmetic, and the ``(N, T)`` mask of real steps."""
    obs, lengths = split_sequences(data)
    real = _real_steps(jax.tree_util.tree_leaves(obs)[0].shape[1], lengths)
    zeroed = jax.tree_util.tree_map(lambda a: jnp.where(real.reshape(real.shape + (1,) * (a.ndim - 2)), a, 0), obs)
    return zeroed, real


def step_potentials(log_joint: LogJoint, params: PyTree, obs: PyTree, length: jax.Array, K: int) -> jax.Array:
    r"""The ``(T, K, K)`` step potentials :math:`\phi_t(i, j)` of one sequence (see the module docstring).

    Args:
      obs: one sequence, leaves of shape ``(T, ...)``.
      length: how many steps are real; later steps get the identity potential (0 on the diagonal,
        -inf off it), which carries the messages unchanged.
    """
    states = jnp.arange(K, dtype=jnp.int32)
    first_obs = jax.tree_util.tree_map(lambda a: a[0], obs)
    rest_obs = jax.tree_util.tree_map(lambda a: a[1:], obs)
    first = jax.vmap(lambda j: log_joint(params, (None, j), first_obs))(states)
    on_pairs = jax.vmap(jax.vmap(lambda i, j, x: log_joint(params, (i, j), x), (None, 0, None)), (0, None, None))
    rest = jax.vmap(lambda x: on_pairs(states, states, x))(rest_obs)
    T = jax.tree_util.tree_leaves(obs)[0].shape[0]
    chex.assert_shape(first, (K,))
    chex.assert_shape(rest, (T - 1, K, K))
    potentials = jnp.concatenate([jnp.broadcast_to(first, (1, K, K)), rest.astype(first.dtype)])
    real = jnp.arange(potentials.shape[0]) < length
    identity = jnp.where(jnp.eye(K, dtype=bool), 0.0, -jnp.inf).astype(potentials.dtype)
    return jnp.where(real[:, None, None], potentials, identity)


def _potential_functions(log_joint: LogJoint, params: PyTree, K: int) -> tuple[Callable, Callable]:
    r"""``(first, pairs)``: :math:`\phi_0(0, \cdot)` as ``(K, N)`` and :math:`\phi_t` as ``(K, K, N)`` from
    one step of every sequence (leaves ``(N, ...)``), the sequence axis last."""
    states = jnp.arange(K, dtype=jnp.int32)
    initial = jax.vmap(lambda j, x: log_joint(params, (None, j), x), (None, 0))
    moving = jax.vmap(lambda i, j, x: log_joint(params, (i, j), x), (None, None, 0))
    on_pairs = jax.vmap(jax.vmap(moving, (None, 0, None)), (0, None, None))

    def first(x):
        out = jax.vmap(initial, (0, None))(states, x)
        chex.assert_shape(out, (K, _num_sequences(x)))
        return out

    def pairs(x):
        out = on_pairs(states, states, x)
        chex.assert_shape(out, (K, K, _num_sequences(x)))
        return out

    return first, pairs


def _num_sequences(x: PyTree) -> int:
    return jax.tree_util.tree_leaves(x)[0].shape[0]


# --- recursions in a semiring: "sum" is (logsumexp, +), "max" is (max, +) -----------------------

def _reducer(semiring: str):
    return jax.nn.logsumexp if semiring == "sum" else jnp.max


def _normalise(log_values: jax.Array, reduce, axis) -> tuple[jax.Array, jax.Array]:
    """``(log_values - c, c)`` with c the reduction over ``axis`` (kept). Where c = -inf (nothing
    is possible) the values are left as they are and c stays -inf."""
    c = reduce(log_values, axis=axis, keepdims=True)
    return log_values - jnp.where(jnp.isfinite(c), c, 0.0), c


def forward_scan(first: jax.Array, steps: PyTree, potentials_of: Callable, lengths: jax.Array,
                 semiring: str = "sum") -> tuple[jax.Array, jax.Array, jax.Array | None]:
    r"""The forward recursion of N sequences at once, sequence axis last.

    Args:
      first: ``(K, N)`` :math:`\phi_0(0, j)` of every sequence.
      steps: the inputs of steps 1..T-1, leaves with a leading axis of size T - 1.
      potentials_of: maps one step's inputs to its ``(K, K, N)`` potentials :math:`\phi_t`.
      lengths: ``(N,)`` sequence lengths; later steps change nothing.
      semiring: ``"sum"`` (forward algorithm) or ``"max"`` (Viterbi).

    Returns:
      ``(messages, log_total, choices)``: normalised messages :math:`\hat\alpha_t` ``(T, K, N)``;
      ``(N,)`` :math:`\log \sum_j \alpha_{T-1}(j)` (sum: :math:`\log p(x)`; max: the log-joint of the
      best path); for "max" the backpointers ``(T - 1, K, N)`` (``choices[t-1][j]`` is the best
      :math:`z_{t-1}` given :math:`z_t = j`), else None.
    """
    reduce = _reducer(semiring)
    K = first.shape[0]
    message, scale = _normalise(first, reduce, 0)

    def step(carry, inputs):
        previous, total = carry
        t, x = inputs
        joint = previous[:, None, :] + potentials_of(x).astype(previous.dtype)      # (from i, to j, N)
        new, new_scale = _normalise(reduce(joint, axis=0), reduce, 0)
        real = t < lengths
        message = jnp.where(real, new, previous)
        outputs = (message,)
        if semiring == "max":
            keep = jnp.arange(K, dtype=jnp.int32)[:, None]
            outputs += (jnp.where(real, jnp.argmax(joint, axis=0).astype(jnp.int32), keep),)
        return (message, add_logs(*total, jnp.where(real, new_scale[0], 0.0))), outputs

    T = 1 + jax.tree_util.tree_leaves(steps)[0].shape[0]
    # the T log normalisers summed as the scan goes, compensated (``add_logs``): O(1) ulps of their sum
    (_, (log_total, _)), outputs = lax.scan(step, (message, (scale[0], jnp.zeros_like(scale[0]))),
                                            (jnp.arange(1, T), steps))
    messages = jnp.concatenate([message[None], outputs[0]])
    return messages, log_total, (outputs[1] if semiring == "max" else None)


def backward_scan(steps: PyTree, potentials_of: Callable, lengths: jax.Array, log_forward: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
    r"""The backward recursion of N sequences at once, and the expected transition counts.

    At step t the pair marginal is computed from the same exponentials as the message:
    with :math:`w(i, j) = \exp(\phi_t(i, j) + \hat\beta_t(j) - m(i))`, :math:`m(i) = \max_j`,
    :math:`b(i) = m(i) + \log \sum_j w(i, j)` (the unnormalised :math:`\beta_{t-1}`) and
    :math:`Z = \operatorname{logsumexp}_i \hat\alpha_{t-1}(i) + b(i)`,

    .. math:: \xi_t(i, j) = w(i, j) \exp(\hat\alpha_{t-1}(i) + m(i) - Z),

    where both factors are at most 1. The counts are summed with Kahan compensation, so float32
    keeps them to ~1e-7 relative over 10^6 steps.

    Args:
      steps, potentials_of, lengths: as for ``forward_scan``.
      log_forward: ``(T, K, N)`` the forward messages from ``forward_scan``.

    Returns:
      ``(messages, transitions)``: :math:`\hat\beta_t` ``(T, K, N)`` and
      :math:`\sum_{t \ge 1} \xi_t(i, j)` ``(K, K, N)``.
    """
    last = jnp.zeros(log_forward.shape[1:], log_forward.dtype)
    zero_counts = jnp.zeros((last.shape[0],) + last.shape, last.dtype)

    def step(carry, inputs):
        following, counts, compensation = carry
        t, x, previous_forward = inputs
        joint = potentials_of(x).astype(following.dtype) + following[None, :, :]    # (from i, to j, N)
        top = jnp.max(joint, axis=1)
        safe_top = jnp.where(jnp.isfinite(top), top, 0.0)
        weights = jnp.exp(joint - safe_top[:, None, :])
        unnormalised = safe_top + jnp.log(jnp.sum(weights, axis=1))                 # -inf for impossible rows
        message, _ = _normalise(unnormalised, jax.nn.logsumexp, 0)
        z = jax.nn.logsumexp(previous_forward + unnormalised, axis=0)
        row_factor = jnp.exp(previous_forward + safe_top - jnp.where(jnp.isfinite(z), z, 0.0))
        real = (t < lengths) & jnp.isfinite(z)
        row_factor = jnp.where(jnp.isfinite(top) & real, row_factor, 0.0)
        counts, compensation = kahan_add(counts, compensation, weights * row_factor[:, None, :])
        return (jnp.where(t < lengths, message, following), counts, compensation), \
            jnp.where(t < lengths, message, following)

    T = log_forward.shape[0]
    (_, counts, _), messages = lax.scan(step, (last, zero_counts, zero_counts),
                                        (jnp.arange(1, T), steps, log_forward[:-1]), reverse=True)
    return jnp.concatenate([messages, last[None]]), counts


def _scaled_scans(first: jax.Array, steps: PyTree, potentials_of: Callable, lengths: jax.Array
                  ) -> tuple[tuple[jax.Array, ...], jax.Array]:
    r"""The forward and backward recursions in probability space, for a chain whose transitions do not
    depend on the step: ``((log_evidence, forward, backward, transitions), ok)``, the messages normalised to sum 1
    (the log-space recursions' ``log_forward`` and ``log_backward``, exponentiated) in the layout of
    ``forward_scan`` and ``backward_scan``, and whether they stand for the log-space recursions.

    Each potential is split as :math:`\phi_t(i, j) = D_t(i, j) + u_t(j)` with :math:`u_t(j) = \max_i \phi_t(i, j)`.
    Where :math:`D_t = D_1` at every real step of every sequence (:math:`D_1`: step 1's, column j read from the
    first sequence of two or more steps where it is possible), with :math:`E = \exp D` (:math:`D`: the :math:`D_t`
    each of whose columns rounds least, ``_emissions``) and :math:`b_t = \exp(u_t - \max_j u_t)`, the recursions
    are those of the scaled (probability-space) forward–backward:

    .. math::
        a_t(j) \propto b_t(j) \sum_i a_{t-1}(i) E(i, j), \qquad
        \tilde\beta_{t-1}(i) = \sum_j E(i, j)\, b_t(j) \beta_t(j), \qquad
        \xi_t(i, j) = a_{t-1}(i) E(i, j) b_t(j) \beta_t(j) / Z_t,

    with :math:`Z_t = \sum_i a_{t-1}(i) \tilde\beta_{t-1}(i)` and :math:`\log p(x) = \sum_t \log c_t + \max_j u_t`,
    c_t the forward normaliser. The :math:`b_t` (and the check of :math:`D_t`) are computed before the recursions,
    for blocks of steps at once (``_emissions``), so a step of either recursion is a K x K product and a
    normalisation. ``ok`` is False unless, at every real step of every sequence, :math:`D_t` equals
    :math:`D_1` to ``SCALED_TOLERANCE`` epsilons of the terms' size (exactly where infinite; a column impossible
    at step t passes, one impossible at step 1 but not at t fails), and every :math:`c_t` and :math:`Z_t` is at
    least :math:`K^2` tiny / eps: the terms that flushed to 0 (each below tiny) then change no sum by more than
    an epsilon, where log space would have kept them.
    """
    dtype = first.dtype
    finfo, K = jnp.finfo(dtype), first.shape[0]
    floor = K * K * finfo.tiny / finfo.eps
    step_one = potentials_of(jax.tree_util.tree_map(lambda a: a[0], steps)).astype(dtype)    # (K, K, N)
    step_one_top = jnp.max(step_one, axis=0)
    usable = jnp.isfinite(step_one_top) & (lengths > 1)                                    # (K, N)
    states, which = jnp.arange(K), jnp.argmax(usable, axis=1)     # column j from the first sequence where possible
    reference, reference_top = step_one[:, states, which], step_one_top[states, which]     # (K, K), (K,)
    reference_part = jnp.where(jnp.any(usable, axis=1), reference - reference_top, jnp.nan)              # D_1
    reference_size = jnp.abs(reference) + jnp.abs(reference_top) + 1.0
    alike, emissions, step_tops, exact_part = _emissions(steps, potentials_of, lengths, reference_part, reference_size)
    matrix = jnp.where(jnp.isfinite(exact_part), jnp.exp(exact_part), 0.0)                               # E (from, to)

    message, top = _exp_below_top(first)
    message, norm = _unit_sum(message)
    first_scale = jnp.log(norm) + top

    def forward(carry, inputs):
        previous, in_range, total = carry
        t, emission, step_top = inputs
        new, norm = _unit_sum((matrix.T @ previous) * emission)
        real = t < lengths
        in_range = in_range & (~real | (norm >= floor))
        new = jnp.where(real, new, previous)
        return (new, in_range, add_logs(*total, jnp.where(real, jnp.log(norm) + step_top, 0.0))), new

    times = jnp.arange(1, 1 + emissions.shape[0])
    # log p(x): the log normalisers summed as the scan goes, compensated (``add_logs``): O(1) ulps of their sum
    (_, in_range, (log_evidence, _)), messages = lax.scan(
        forward, (message, norm >= floor, (first_scale, jnp.zeros_like(first_scale))), (times, emissions, step_tops))
    forward_messages = jnp.concatenate([message[None], messages])

    def backward(following, inputs):
        t, emission, previous = inputs
        weighted = emission * following                                                    # b_t beta_t (K, N)
        unnormalised = matrix @ weighted                                                   # (K, N)
        z = jnp.sum(previous * unnormalised, axis=0)
        real = t < lengths
        new = jnp.where(real, _unit_sum(unnormalised)[0], following)
        return new, (new, jnp.where(real, weighted / jnp.where(z > 0, z, 1.0), 0.0), ~real | (z >= floor))

    last = jnp.ones_like(message)
    _, (backward_messages, pair_weights, backward_ok) = lax.scan(
        backward, last, (times, emissions, forward_messages[:-1]), reverse=True)
    transitions = matrix[:, :, None] * _sum_over_time(forward_messages[:-1], pair_weights)
    backward_messages = jnp.concatenate([backward_messages, last[None]])
    ok = jnp.all(alike) & jnp.all(in_range) & jnp.all(backward_ok)
    return (log_evidence, forward_messages, backward_messages, transitions), ok


def _emissions(steps: PyTree, potentials_of: Callable, lengths: jax.Array, reference_part: jax.Array,
               reference_size: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    r"""``(alike, emissions, tops, exact_part)`` of steps 1..T-1 for ``_scaled_scans``: whether every real step's
    :math:`D_t` equals ``reference_part`` (:math:`D_1`); :math:`b_t` ``(T - 1, K, N)`` and :math:`\max_j u_t`
    ``(T - 1, N)``; and :math:`D` with each column j read where it is the most exact: at the real step and sequence
    of the smallest :math:`\max_i |\phi_t(i, j)| + |u_t(j)|` (``reference_part``'s column where none is possible).
    :math:`D_t(i, j) = \phi_t(i, j) - u_t(j)` rounds with the terms' size, and the recursions use one :math:`D` at
    every step, so its rounding error adds up over the steps: a 3-state chain of 500 steps whose emission terms reach
    -1,800 at step 1 had its float32 log evidence 0.01 off with step 1's :math:`D`, 10^-4 with the most exact one.
    The potentials of ``EMISSION_BLOCK`` / (K^2 N) steps at a time (at
    least one), in a ``lax.scan`` over such blocks: a few large kernels per block instead of a dozen small ones
    per step inside the recursions. Each block's check is reduced whole, to one flag: reduced over the block's
    steps alone, element by element, it took 10 EM iterations on 1,000 sequences of 1,000 steps from 1.98 to 2.65 s."""
    leaves = jax.tree_util.tree_leaves(steps)
    steps_count, K, N = leaves[0].shape[0], reference_part.shape[0], lengths.shape[0]
    dtype, finfo = reference_part.dtype, jnp.finfo(reference_part.dtype)
    block = max(1, min(steps_count, EMISSION_BLOCK // (K * K * N)))
    # padded steps get a time past every length, so they count as steps past a sequence's end
    times = _in_blocks(jnp.arange(1, 1 + steps_count), block, fill=1 + steps_count)
    part_one, size_one = reference_part[None, :, :, None], reference_size[None, :, :, None]

    def block_of(carry, inputs):
        alike, best_size, best_part = carry
        t, x = inputs
        potentials = jax.vmap(potentials_of)(x).astype(dtype)                               # (B, K, K, N)
        column_top = jnp.max(potentials, axis=1)                                            # u_t (B, K, N)
        part = potentials - column_top[:, None]
        size = jnp.abs(potentials) + jnp.abs(column_top)[:, None] + size_one
        close = (part == part_one) | ((jnp.abs(part - part_one) <= SCALED_TOLERANCE * finfo.eps * size)
                                      & jnp.isfinite(size))
        real = (t[:, None] < lengths)[:, None, None, :]
        alike = alike & jnp.all(close | ~jnp.isfinite(column_top)[:, None] | ~real)
        # each column's most exact D in the block: at the smallest size of its terms, among real steps
        column_size = jnp.max(jnp.where(jnp.isfinite(potentials), jnp.abs(potentials), 0.0), axis=1) + jnp.abs(
            column_top)                                                                     # (B, K, N)
        column_size = jnp.where(real[:, 0] & jnp.isfinite(column_top), column_size, jnp.inf)
        by_column = jnp.moveaxis(column_size, 1, 0).reshape(K, -1)                          # (K, B N)
        where = jnp.argmin(by_column, axis=1)
        here = jnp.take_along_axis(by_column, where[:, None], axis=1)[:, 0]
        at_step, at_sequence = jnp.unravel_index(where, (column_size.shape[0], N))
        part_here = part[at_step, :, jnp.arange(K), at_sequence].T                          # (K from, K to)
        better = here < best_size
        carry = alike, jnp.where(better, here, best_size), jnp.where(better[None, :], part_here, best_part)
        return carry, jax.vmap(_exp_below_top)(column_top)

    start = (jnp.array(True), jnp.full((K,), jnp.inf, dtype), reference_part)
    (alike, _, exact_part), (emissions, tops) = lax.scan(
        block_of, start, (times, jax.tree_util.tree_map(lambda a: _in_blocks(a, block), steps)))
    return alike, emissions.reshape((-1, K, N))[:steps_count], tops.reshape((-1, N))[:steps_count], exact_part


def _exp_below_top(values: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(exp(values - top), top)``, top the maximum over axis 0 (where it is -inf: nothing subtracted, all 0)."""
    top = jnp.max(values, axis=0)
    return jnp.exp(values - jnp.where(jnp.isfinite(top), top, 0.0)), top


def _unit_sum(values: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(values / total, total)``, total the sum over axis 0 (where it is 0: left as they are)."""
    total = jnp.sum(values, axis=0)
    return values / jnp.where(total > 0, total, 1.0), total


def _sum_over_time(previous: jax.Array, following: jax.Array, chunk: int = 256) -> jax.Array:
    r""":math:`\sum_t p_t(i) f_t(j)` per sequence, ``(K, K, N)`` from two ``(T, K, N)``: a contraction over
    ``chunk`` steps at a time, the chunks' sums added pairwise (``sum_accurately``), so float32 keeps them to a
    few ulps over 10^6 steps."""
    size = min(chunk, max(previous.shape[0], 1))
    return sum_accurately(jnp.einsum("ctin,ctjn->cijn", _in_blocks(previous, size), _in_blocks(following, size)))


def _in_blocks(a: jax.Array, block: int, fill=0) -> jax.Array:
    """``a`` ``(T, ...)`` as ``(ceil(T / block), block, ...)``, its last block padded with ``fill``."""
    pad = (-a.shape[0]) % block
    return jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1), constant_values=fill).reshape((-1, block) + a.shape[1:])


def prefix_scan(combine: Callable, elements: PyTree, reverse: bool = False) -> PyTree:
    r"""Inclusive prefix combinations :math:`e_0 \otimes \dots \otimes e_t` (``reverse``: suffix ones
    :math:`e_t \otimes \dots \otimes e_{T-1}`) of an associative ``combine`` along axis 0, by recursive doubling.

    After round d every position holds the combination of the :math:`2^{d+1}` elements ending
    (starting) there; :math:`\lceil \log_2 T \rceil` rounds of one fixed-shape ``combine`` over all
    positions, run by ``lax.fori_loop``: O(log T) depth and O(T log T) work, like
    ``lax.associative_scan`` (O(T) work) in depth, but compiled as ONE loop body instead of one
    set of kernels per level, which makes it several times faster to compile (on an H100 for
    T = 10^6: 0.4 s against 2.2 s) at a few milliseconds more run time.
    """
    T = jax.tree_util.tree_leaves(elements)[0].shape[0]
    position = jnp.arange(T)

    def double(round_, acc):
        shift = jnp.left_shift(1, round_)
        partner = jax.tree_util.tree_map(lambda a: jnp.roll(a, -shift if reverse else shift, axis=0), acc)
        combined = combine(acc, partner) if reverse else combine(partner, acc)
        valid = position + shift < T if reverse else position >= shift
        return jax.tree_util.tree_map(
            lambda c, a: jnp.where(valid.reshape((T,) + (1,) * (a.ndim - 1)), c, a), combined, acc)

    rounds = math.ceil(math.log2(T)) if T > 1 else 0
    return lax.fori_loop(0, rounds, double, elements)


def parallel_forward(potentials: jax.Array, semiring: str = "sum") -> tuple[jax.Array, jax.Array]:
    r"""One sequence's normalised forward messages ``(T, K)`` and log total by a parallel prefix scan.

    The prefix products :math:`\phi_0 \otimes \dots \otimes \phi_t` of the ``(T, K, K)``
    potentials in the semiring; row 0 of each is :math:`\alpha_t` (the chain starts in state 0).
    """
    reduce = _reducer(semiring)
    prefix_matrices, prefix_scales = prefix_scan(lambda a, b: _combine(a, b, reduce), _elements(potentials))
    first_rows, row_scale = _normalise(prefix_matrices[:, 0, :], reduce, -1)
    return first_rows, prefix_scales[-1, 0, 0] + row_scale[-1, 0]


def parallel_backward(potentials: jax.Array) -> jax.Array:
    r"""One sequence's normalised backward messages :math:`\hat\beta_t` ``(T, K)`` by a parallel suffix scan."""
    K = potentials.shape[-1]
    last = jnp.zeros((1, K), potentials.dtype)
    if potentials.shape[0] == 1:
        return last
    suffix_matrices, _ = prefix_scan(lambda a, b: _combine(a, b, jax.nn.logsumexp), _elements(potentials[1:]),
                                     reverse=True)
    messages, _ = _normalise(jax.nn.logsumexp(suffix_matrices, axis=-1), jax.nn.logsumexp, -1)
    return jnp.concatenate([messages, last])


def _elements(potentials: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each potential as (matrix with maximum 0, its log scale), the associative scan's elements."""
    return _normalise(potentials, jnp.max, (-2, -1))


def _combine(a, b, reduce):
    r"""The semiring matrix product :math:`(A \otimes B)(i, k) = \operatorname{reduce}_j A(i, j) + B(j, k)`, rescaled."""
    (a_matrix, a_scale), (b_matrix, b_scale) = a, b
    product = reduce(a_matrix[..., :, :, None] + b_matrix[..., None, :, :], axis=-2)
    product, scale = _normalise(product, jnp.max, (-2, -1))
    return product, a_scale + b_scale + scale


def backtrack(choices: jax.Array, last: jax.Array, parallel: bool = False) -> jax.Array:
    r"""Paths from backpointers: :math:`z_{T-1} =` ``last``, :math:`z_{t-1} =` ``choices[t-1][z_t]``.

    Args:
      choices: ``(T - 1, K, N)`` integer maps, the sequence axis last.
      last: ``(N,)`` the final states.
      parallel: compose the maps with a parallel suffix scan (``prefix_scan``) instead of a sequential scan.

    Returns:
      ``(T, N)`` the paths.
    """
    if parallel:
        # composed[t] = choices[t] o choices[t+1] o ... o choices[-1], as maps of z_{T-1}
        composed = prefix_scan(lambda earlier, later: jnp.take_along_axis(earlier, later, axis=-2), choices,
                               reverse=True)
        index = jnp.broadcast_to(last[None, None, :], (choices.shape[0], 1, last.shape[0]))
        path = jnp.take_along_axis(composed, index, axis=-2)[:, 0, :]
    else:
        def step(state, choice):
            previous = jnp.take_along_axis(choice, state[None, :], axis=0)[0]
            return previous, previous

        _, path = lax.scan(step, last, choices, reverse=True)
    return jnp.concatenate([path, last[None]])


# --- the posterior --------------------------------------------------------------------------------

class ChainPosterior(NamedTuple):
    r"""The exact posterior :math:`p_\theta(z_{0:T-1} \mid x)` of every sequence.

    Attributes:
      log_evidence: ``(N,)`` per-sequence :math:`\log p_\theta(x)`.
      log_potentials: ``(N, T, K, K)`` step potentials :math:`\phi_t(i, j)` (module docstring).
        Under ``jit`` they are only computed when something reads them (``pair_marginals``,
        ``expect``, ``mode``, ``sample``); EM with a closed-form M-step does not.
      log_forward: ``(N, T, K)`` normalised forward messages :math:`\hat\alpha_t`, so that
        ``softmax(log_forward[n, t])`` is the filtered :math:`p(z_t \mid x_{0:t})`.
      log_backward: ``(N, T, K)`` normalised backward messages :math:`\hat\beta_t`.
      transitions: ``(N, K, K)`` expected transition counts :math:`\sum_{t \ge 1} \xi_t(i, j)`.
      lengths: ``(N,)`` sequence lengths.
      marginals: ``(N, T, K)`` state marginals :math:`\gamma_t(k) = p(z_t = k \mid x)`, the normalised product of
        the forward and backward messages; 0 past a sequence's end.
    """

    log_evidence: jax.Array
    log_potentials: jax.Array
    log_forward: jax.Array
    log_backward: jax.Array
    transitions: jax.Array
    lengths: jax.Array
    marginals: jax.Array

    @property
    def real_steps(self) -> jax.Array:
        """``(N, T)`` True where a step is within its sequence's length."""
        return _real_steps(self.log_forward.shape[1], self.lengths)

    @property
    def pair_marginals(self) -> jax.Array:
        r"""``(N, T, K, K)`` pair marginals :math:`\xi_t(i, j) = p(z_{t-1} = i, z_t = j \mid x)`; 0 at t = 0 and past the end."""
        return self._step_weights().at[:, 0].set(0.0)

    def _step_weights(self) -> jax.Array:
        r"""``(N, T, K, K)``: :math:`\xi_t` for real steps t >= 1, :math:`\gamma_0` in row 0 at t = 0, else 0.

        These are the posterior probabilities of the arguments of every call of the step
        log-joint, so :math:`E_q[\log p(x, z)] = \sum_{t,i,j} w_t(i, j) \phi_t(i, j)`.
        """
        return _step_weights(self.log_potentials, self.log_forward, self.log_backward, self.real_steps)

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
        if parallel:
            messages = jax.vmap(lambda p: parallel_forward(p, "max")[0])(self.log_potentials)      # (N, T, K)
            previous = messages[:, :-1, :, None] + self.log_potentials[:, 1:]
            choices = jnp.moveaxis(jnp.argmax(previous, axis=2).astype(jnp.int32), 0, -1)      # (T-1, K, N)
            last = jnp.argmax(messages[:, -1], axis=-1).astype(jnp.int32)
        else:
            first, steps = self._time_major_potentials()
            messages, _, choices = forward_scan(first, steps, lambda p: p, self.lengths, "max")
            last = jnp.argmax(messages[-1], axis=0).astype(jnp.int32)
        return jnp.where(self.real_steps, backtrack(choices, last, parallel).T, -1)

    def sample(self, key: jax.Array, parallel: bool = False) -> jax.Array:
        r"""``(N, T)`` one path per sequence drawn from the exact posterior; -1 past its end.

        Forward-filter backward-sample: :math:`z_{T-1} \sim \hat\alpha_{T-1}`, then
        :math:`z_{t-1} \mid z_t = j \sim \propto \hat\alpha_{t-1}(i) + \phi_t(i, j)`, drawn for every j
        at once by the Gumbel-max trick and followed back like Viterbi's backpointers.
        """
        final_key, step_key = jax.random.split(key)
        potentials = self.log_potentials[:, 1:]
        gumbel = jax.random.gumbel(step_key, potentials.shape, potentials.dtype)
        previous = self.log_forward[:, :-1, :, None] + potentials + gumbel
        choices = jnp.moveaxis(jnp.argmax(previous, axis=2).astype(jnp.int32), 0, -1)          # (T-1, K, N)
        last = jax.random.categorical(final_key, self.log_forward[:, -1]).astype(jnp.int32)
        return jnp.where(self.real_steps, backtrack(choices, last, parallel).T, -1)

    def _time_major_potentials(self) -> tuple[jax.Array, jax.Array]:
        return time_major(self.log_potentials)


def time_major(potentials: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Stored ``(N, T, K, K)`` potentials as the scans take them: ``(K, N)`` :math:`\\phi_0(0, \\cdot)` and
    ``(T - 1, K, K, N)`` :math:`\\phi_{1..T-1}`."""
    return potentials[:, 0, 0, :].T, jnp.moveaxis(potentials[:, 1:], 0, -1)


def _step_weights(log_potentials, log_forward, log_backward, real_steps) -> jax.Array:
    """The weights of ``ChainPosterior._step_weights`` from its fields."""
    n, _, K = log_forward.shape
    start = jnp.full((n, 1, K), -jnp.inf, log_forward.dtype).at[:, 0, 0].set(0.0)
    previous = jnp.concatenate([start, log_forward[:, :-1]], axis=1)
    log_xi = previous[..., :, None] + log_potentials + log_backward[..., None, :]
    log_xi, _ = _normalise(log_xi, jax.nn.logsumexp, (-2, -1))
    return jnp.where(real_steps[..., None, None], jnp.exp(log_xi), 0.0)


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


def _sequential(log_joint: LogJoint, params: PyTree, obs: PyTree, lengths: jax.Array, K: int,
                differentiable: bool = True) -> tuple[jax.Array, ...]:
    """Forward and backward scans over all sequences at once; the potentials computed inside the scans, step by
    step (in probability space, before them, for blocks of steps: ``_emissions``). Unless ``differentiable``, in
    probability space where that stands for log space (``_scaled_scans``), else (for all the sequences) in log space
    again. Returns ``(log_evidence, log_forward, log_backward, transitions,
    marginals)``, sequence axis first."""
    first_of, pairs_of = _potential_functions(log_joint, params, K)
    time_major = jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 1, 0), obs)                  # (T, N, ...)
    first = first_of(jax.tree_util.tree_map(lambda a: a[0], time_major))
    steps = jax.tree_util.tree_map(lambda a: a[1:], time_major)

    def in_log_space():
        log_forward, log_evidence, _ = forward_scan(first, steps, pairs_of, lengths, "sum")
        log_backward, transitions = backward_scan(steps, pairs_of, lengths, log_forward)
        return (log_evidence, log_forward, log_backward, transitions,
                jax.nn.softmax(log_forward + log_backward, axis=1))

    if differentiable or jax.tree_util.tree_leaves(time_major)[0].shape[0] < 2:
        outputs = in_log_space()
    else:
        (log_evidence, forward, backward, transitions), ok = _scaled_scans(first, steps, pairs_of, lengths)
        # the state marginals from the messages themselves, not through their logarithms
        products = forward * backward                                                       # (T, K, N)
        scaled = (log_evidence, jnp.log(forward), jnp.log(backward), transitions,
                  products / jnp.sum(products, axis=1, keepdims=True))
        outputs = unless(ok, in_log_space, scaled)
    log_evidence, log_forward, log_backward, transitions, marginals = outputs
    sequence_first = lambda a: jnp.moveaxis(a, -1, 0)
    return (log_evidence, sequence_first(log_forward), sequence_first(log_backward), sequence_first(transitions),
            _past_the_end_zero(jnp.moveaxis(marginals, -1, 0), lengths))


def _past_the_end_zero(marginals: jax.Array, lengths: jax.Array) -> jax.Array:
    """``(N, T, K)`` state marginals, 0 at the steps past each sequence's length."""
    return jnp.where(_real_steps(marginals.shape[1], lengths)[..., None], marginals, 0.0)


def _real_steps(steps: int, lengths: jax.Array) -> jax.Array:
    """``(N, steps)`` True where a step is within its sequence's length."""
    return jnp.arange(steps) < lengths[:, None]


def _log_marginals(log_forward: jax.Array, log_backward: jax.Array, lengths: jax.Array) -> jax.Array:
    """``(N, T, K)`` state marginals from sequence-first log messages."""
    return _past_the_end_zero(jax.nn.softmax(log_forward + log_backward, axis=-1), lengths)


def _parallel(potentials: jax.Array, lengths: jax.Array) -> tuple[jax.Array, ...]:
    """Associative-scan forward and backward of every sequence, from stored potentials."""
    log_forward, log_evidence = jax.vmap(parallel_forward)(potentials)
    log_backward = jax.vmap(parallel_backward)(potentials)
    real_steps = _real_steps(potentials.shape[1], lengths)
    weights = _step_weights(potentials, log_forward, log_backward, real_steps)
    return log_evidence, log_forward, log_backward, jnp.sum(weights[:, 1:], axis=1)


def worth_scaling(latent, data: PyTree, passes: int) -> bool:
    """Whether ``passes`` E-steps of a ``Markov`` latent over ``data`` are work enough (``SCALED_WORK``, counted as
    (K^2 x sequences + ``STEP_ENTRIES``) x steps x passes) for the probability-space recursions to repay their compile
    time: ``posterior(differentiable=False)`` for them."""
    if latent.parallel:  # the parallel scan has no probability-space recursions
        return False
    obs, _ = split_sequences(data)
    n, t = jax.tree_util.tree_leaves(obs)[0].shape[:2]
    return (latent.K ** 2 * n + STEP_ENTRIES) * t * passes >= SCALED_WORK


def posterior(log_joint: LogJoint, latent, params: PyTree, data: PyTree, chunk_size: int = 1024,
              differentiable: bool = True) -> ChainPosterior:
    """The exact E-step for a ``Markov`` latent: forward–backward over every sequence.

    ``chunk_size`` bounds how many sequences' potentials are evaluated at once for the stored
    ``log_potentials``; the sequential recursions run on all sequences together (their memory is
    O(N T K) for the messages). ``differentiable=False`` (EM's E-step) lets the sequential recursions run in
    probability space where the chain's transitions do not depend on the step (``_scaled_scans``: K
    exponentials a step instead of K x K), checked as they run and else run again in log space: a loop decides,
    which reverse-mode differentiation cannot go through.
    """
    obs, lengths = split_sequences(data)
    potentials = map_data(lambda args: step_potentials(log_joint, params, *args, latent.K), (obs, lengths),
                          chunk_size)
    if latent.parallel:
        log_evidence, log_forward, log_backward, transitions = _parallel(potentials, lengths)
        marginals = _log_marginals(log_forward, log_backward, lengths)
    else:
        log_evidence, log_forward, log_backward, transitions, marginals = _sequential(
            log_joint, params, obs, lengths, latent.K, differentiable)
    return ChainPosterior(log_evidence, potentials, log_forward, log_backward, transitions, lengths, marginals)


def from_potentials(potentials: jax.Array, lengths: jax.Array) -> ChainPosterior:
    r"""The chain with stored step potentials ``(N, T, K, K)`` (:math:`\phi_0` in every row at t = 0), by the
    sequential forward and backward scans; its ``log_evidence`` is the log normaliser
    :math:`\log \sum_z \exp \sum_t \phi_t(z_{t-1}, z_t)`."""
    first, steps = time_major(potentials)
    log_forward, log_evidence, _ = forward_scan(first, steps, lambda p: p, lengths, "sum")
    log_backward, transitions = backward_scan(steps, lambda p: p, lengths, log_forward)
    sequence_first = lambda a: jnp.moveaxis(a, -1, 0)  # noqa: E731
    log_forward, log_backward = sequence_first(log_forward), sequence_first(log_backward)
    return ChainPosterior(log_evidence, potentials, log_forward, log_backward, sequence_first(transitions), lengths,
                          _log_marginals(log_forward, log_backward, lengths))


def expected_log_joint(log_joint: LogJoint, params: PyTree, data: PyTree, post: ChainPosterior,
                       chunk_size: int = 1024) -> jax.Array:
    r"""EM's :math:`Q(\theta) = \sum_n E_{q_n}[\log p_\theta(x_n, z_n)]`, the posterior held fixed."""
    obs, _ = split_sequences(data)
    weights = jax.lax.stop_gradient(post._step_weights())

    def chunk_sum(chunk):
        x, w = chunk
        return jnp.sum(jax.vmap(lambda xi, wi: _expect_one(lambda z, s: log_joint(params, z, s), xi, wi))(x, w))

    return sum_data(chunk_sum, (obs, weights), chunk_size)
