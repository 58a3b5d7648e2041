r"""k-means: greedy k-means++ seeds and Lloyd's rounds, compiled, for the starts of mixtures and HMMs (EM's
``gaussian_mixture(init="kmeans")`` and HMM initialisers, ``CAVI(start="kmeans")``)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxvi.chunks import sum_accurately

__all__ = ["CHAIN_INITS", "inertia", "kmeans", "kmeans_plusplus", "lloyd", "nearest", "random_points",
           "rows_by_potential", "square_distances"]

KMEANS_ROUNDS = 100  # the most Lloyd rounds of init="kmeans"
CHAIN_INITS = 10  # k-means runs of a Markov chain's start (hmmlearn's KMeans(n_init=10)), best kept
KMEANS_TOL = 1e-4  # Lloyd's rounds stop at a squared shift of the centers of at most this times the data's variance


def square_distances(x, centers):
    r""":math:`\|x_i - c_k\|^2` for every datum and center, expanded (one product of the data with the centers) about
    the centers' mean m: :math:`\|\tilde x_i\|^2 - 2 \tilde x_i \cdot \tilde c_k + \|\tilde c_k\|^2`, with
    :math:`\tilde x = x - m`, so that the terms are of the data's spread, not of their distance from the origin
    (expanded about 0, float32 data at 10^4 with unit spread kept no digit of the distances)."""
    about = jnp.mean(centers, axis=0)
    x, centers = x - about, centers - about
    return jnp.sum(x**2, 1)[:, None] - 2 * x @ centers.T + jnp.sum(centers**2, 1)


def nearest(x, centers):
    """Every row's nearest center: its index into ``centers``."""
    return jnp.argmin(square_distances(x, centers), axis=1)


def kmeans_plusplus(key, data, k, weights=None, greedy: bool = True):
    r"""Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; scikit-learn's ``kmeans_plusplus``): each next center
    the best of ``2 + floor(log k)`` candidates drawn with prob. ∝ D(x)^2, the one that leaves the least potential
    :math:`\sum_x D(x)^2`. With one candidate a step (plain k-means++), 5 of 40 keys seeded iris (K = 3) into
    k-means' worse optimum (inertia 143-146 against 78.9) and its GMM fit ended at log p(D) = -202.25, against
    scikit-learn's -180.20 from every seed. The candidates are drawn as scikit-learn draws them
    (``rows_by_potential``), from uniforms drawn once for all the steps.

    ``weights`` (0 or 1 per row; default all 1) leaves out the rows with weight 0: the first center is
    uniform over the others and a left-out row's D(x)^2 counts as 0. ``greedy=False``: one candidate a step.
    """
    trials = 2 + int(math.log(k)) if greedy and k > 1 else 1
    weights = jnp.ones(data.shape[0], data.dtype) if weights is None else weights.astype(data.dtype)
    first_key, key = jax.random.split(key)
    rank = jax.random.randint(first_key, (), 0, jnp.sum(weights).astype(jnp.int32))
    first = data[jnp.searchsorted(jnp.cumsum(weights), rank, side="right")]  # the rank-th row of weight 1
    centers = jnp.zeros((k, data.shape[1]), data.dtype).at[0].set(first)
    min_d2 = weights * jnp.sum((data - first) ** 2, axis=1)
    uniforms = jax.random.uniform(key, (k, trials), data.dtype)  # every step's draws at once

    def add_center(j, carry):
        centers, min_d2 = carry
        candidates = data[rows_by_potential(min_d2, uniforms[j])]                             # (trials, D)
        d2 = jnp.minimum(min_d2, weights * jnp.sum((data[None] - candidates[:, None]) ** 2, axis=2))
        best = jnp.argmin(jnp.sum(d2, axis=1))  # the potential each candidate would leave
        return centers.at[j].set(candidates[best]), d2[best]

    centers, _ = jax.lax.fori_loop(1, k, add_center, (centers, min_d2))
    return centers


def rows_by_potential(potential, uniforms):
    r"""Rows drawn with probability :math:`p_i / \sum_j p_j` (``potential`` p >= 0), one per uniform u in [0, 1): the
    first row whose running sum of p exceeds :math:`u \sum_j p_j` (scikit-learn's k-means++ draws). One running sum
    and a binary search per draw, where ``jax.random.categorical`` drew a Gumbel variate for every row and draw
    (greedy seeds of 16 centers in 200,000 x 16 data: 0.09-0.13 s against 0.24-0.29 s, benchmarks/kmeans_starts.py,
    2-core CPU). A row of potential 0 is never drawn: where the float32 running sum gives it the width of a rounding
    error, the row of the largest potential is taken (the first row where every potential is 0)."""
    running = jnp.cumsum(potential)
    rows = jnp.minimum(jnp.searchsorted(running, uniforms * running[-1], side="right"), potential.shape[0] - 1)
    return jnp.where(potential[rows] > 0, rows, jnp.argmax(potential))


def kmeans(key, data, k, weights=None, greedy: bool = True, n_init: int = 1):
    """Lloyd's k-means (``lloyd``) from k-means++ seeds (greedy, or plain with ``greedy=False``). Rows of
    ``weights`` 0 (0 or 1 per row; default all 1) are left out, as in ``kmeans_plusplus``. ``n_init`` > 1: as many
    runs, from keys split from ``key``, one after another, and the centers of the least inertia (``inertia``) kept,
    as scikit-learn's ``KMeans(n_init=...)`` (hmmlearn's starts take 10: ``CHAIN_INITS``)."""
    weights = jnp.ones(data.shape[0], data.dtype) if weights is None else weights.astype(data.dtype)

    def run(key):
        centers = lloyd(data, kmeans_plusplus(key, data, k, weights, greedy), weights)[0]
        return centers, inertia(data, centers, weights)

    if n_init == 1:
        return run(key)[0]
    centers, inertias = jax.lax.map(run, jax.random.split(key, n_init))
    return centers[jnp.argmin(inertias)]


def inertia(data, centers, weights):
    r"""k-means' objective :math:`\sum_i w_i \min_k \|x_i - c_k\|^2`, summed pairwise (``sum_accurately``)."""
    return sum_accurately(weights * jnp.min(square_distances(data, centers), axis=1))


def lloyd(data, seeds, weights):
    r"""Lloyd's k-means from ``seeds``: every datum to its nearest center, every center to the mean of its data (a
    center left without data stays put), until a round moves the centers by :math:`\sum_k \|c_k - c_k'\|^2 \le`
    ``KMEANS_TOL`` times the data's variance averaged over features (scikit-learn's ``KMeans`` tolerance; 0 for
    constant data: until no center moves), at most ``KMEANS_ROUNDS`` rounds. Rows of ``weights`` 0 (0 or 1 per
    row) are left out. Returns the centers and the number of rounds. It runs on the data less their mean (its
    result plus the mean), so that the centers' sums keep the data's spread in float32 wherever the data lie."""
    k = seeds.shape[0]
    count = sum_accurately(weights)
    mean = sum_accurately(weights[:, None] * data) / count
    data, seeds = data - mean, seeds - mean
    tolerance = KMEANS_TOL * jnp.mean(sum_accurately(weights[:, None] * data ** 2) / count)

    def round_(centers):
        assigned = jax.nn.one_hot(nearest(data, centers), k, dtype=data.dtype) * weights[:, None]
        counts = assigned.sum(axis=0)
        return jnp.where(counts[:, None] > 0, assigned.T @ data / jnp.maximum(counts, 1)[:, None], centers)

    def moving(carry):
        rounds, centers, previous = carry
        return (rounds < KMEANS_ROUNDS) & (jnp.sum((centers - previous) ** 2) > tolerance)

    def step(carry):
        rounds, centers, _ = carry
        return rounds + 1, round_(centers), centers

    rounds, centers, _ = jax.lax.while_loop(moving, step, (1, round_(seeds), seeds))
    return centers + mean, rounds


def random_points(key, data, k):
    return data[jax.random.choice(key, data.shape[0], (k,), replace=False)]
