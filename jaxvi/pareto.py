r"""Pareto-smoothed importance sampling (PSIS; Vehtari, Simpson, Gelman, Yao & Gabry 2024).

Importance weights :math:`w_s = p(x, z_s) / q(z_s)`, :math:`z_s \sim q`, estimate expectations under the
posterior, and their mean estimates p(x); how far that can be trusted depends on the tail of the weights'
distribution. PSIS fits a generalized Pareto distribution (GPD) to the M largest weights,
:math:`M = \lceil \min(S/5,\ 3\sqrt S) \rceil` of S, and

- reports its shape :math:`\hat k`: below 0.5 the weights have a finite variance; up to 0.7 the estimate
  is still usable; above 0.7 (the published threshold) importance sampling from q is unreliable, which
  says q misses mass the posterior has (q too narrow, a missed mode);
- replaces those M weights by the GPD's quantiles at :math:`(j - 1/2)/M`, never above the largest raw
  weight: smoothed weights, whose self-normalised estimates have lower variance.

The GPD is fitted to the excesses :math:`e_j = w_{(S-M+j)} - w_{(S-M)}` by the empirical-Bayes method of
Zhang & Stephens (2009): a posterior mean of :math:`b = -k/\sigma` over a grid of
:math:`m = 30 + \lfloor\sqrt M\rfloor` values, the profile likelihood
:math:`L(b) = M(\log(b / \hat k(b)) - \hat k(b) - 1)` with :math:`\hat k(b) = \tfrac1M\sum_j \log(1 + b e_j)`
as the weights; then :math:`\hat k` is shrunk towards 0.5 by a prior worth 10 draws (Vehtari et al. 2024,
appendix G): :math:`\hat k \leftarrow (M \hat k + 5) / (M + 10)`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxvi.model import is_traced
from jaxvi.run.compiled import OneProgram

__all__ = ["KHAT_THRESHOLD", "MIN_DRAWS", "khat", "log_mean_exp", "log_mean_exp_variance", "psis", "tail_length"]

KHAT_THRESHOLD = 0.7  # above it, importance sampling from q is unreliable (Vehtari et al. 2024)
MIN_DRAWS = 21  # the fewest draws whose tail (5 weights) a GPD is fitted to


def log_mean_exp(values: jax.Array, axis: int = 0) -> jax.Array:
    r""":math:`\log \frac1S \sum_s e^{v_s}` over ``axis`` (S its length): the log of an importance-sampling
    estimate from its log weights."""
    return jax.nn.logsumexp(values, axis=axis) - jnp.log(jnp.asarray(values.shape[axis], values.dtype))


def log_mean_exp_variance(log_weights: jax.Array, axis: int = 0) -> jax.Array:
    r"""The Monte-Carlo variance of :math:`\hat L = \log \frac1S \sum_s e^{w_s}` over ``axis``, by the delta method:
    :math:`\mathrm{Var}(\log \bar W) \approx \mathrm{Var}(\bar W) / \bar W^2`, estimated as the sample variance
    (n - 1: NaN from one weight) of :math:`e^{w_s - \hat L} - 1` (``expm1``: accurate where the weights are nearly
    equal) over S."""
    log_mean = jnp.expand_dims(log_mean_exp(log_weights, axis), axis)
    return jnp.var(jnp.expm1(log_weights - log_mean), axis=axis, ddof=1) / log_weights.shape[axis]


def khat(log_weights: jax.Array, resolution: jax.Array | None = None) -> jax.Array:
    """PSIS k-hat over the last axis (``psis``, with its ``resolution``), or NaN under ``MIN_DRAWS`` weights (no
    tail to fit); no gradient."""
    if log_weights.shape[-1] < MIN_DRAWS:
        return jnp.full(log_weights.shape[:-1], jnp.nan, log_weights.dtype)
    return psis(lax.stop_gradient(log_weights),
                None if resolution is None else lax.stop_gradient(resolution))[1]


def tail_length(num_draws: int) -> int:
    """M, the number of largest weights PSIS smooths: :math:`\\lceil\\min(S/5, 3\\sqrt S)\\rceil`."""
    return math.ceil(min(0.2 * num_draws, 3.0 * math.sqrt(num_draws)))


def psis(log_weights: jax.Array, resolution: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    r"""Pareto-smoothed log importance weights and the tail shape :math:`\hat k`, over the last axis.

    Args:
      log_weights: ``(..., S)`` raw log importance weights :math:`\log p(x, z_s) - \log q(z_s)`, S >= 21
        draws per row (independent draws from q). ``-inf`` is a zero weight.
      resolution: optional, shape ``(...)``: how far rounding alone can move a row's log weights (from the
        magnitudes of the terms they were formed from, e.g. ``jaxvi.run.resolution(|log p| + |log q|)``). A row
        whose whole spread is within it is constant to float precision, as when q is the posterior: no tail
        (k-hat ``-inf``, the weights only normalised), as for exactly equal weights. Without it, such a row's
        rounding is read as a tail: a few distinct values, whose ties leave a tail of any length, so a k-hat
        anywhere from ``-inf`` to ``inf``.

    Returns:
      ``(smoothed, khat)``: ``smoothed`` of the same shape, normalised so that ``exp(smoothed)`` sums to 1
      over the last axis; ``khat`` of shape ``(...)``. The tail is the weights above the (M+1)-th largest;
      where it has fewer than 5 (ties), it cannot be fitted: ``khat`` is ``inf`` (as in ArviZ and NumPyro) and
      the weights are only normalised; where it is empty (the M + 1 largest weights are equal, as when q is
      the posterior and the weights are constant) there is no tail: ``khat`` is ``-inf``. Under a
      transformation (``jit``, ``vmap``), a row with a NaN or ``+inf`` log weight, or with every weight zero, is
      NaN (``smoothed`` and ``khat``).

    Raises:
      ValueError: ``log_weights`` is not a float array with at least 21 draws on its last axis, or (given
        concretely) holds a NaN or ``+inf``, or a row of zero weights only; ``resolution`` is not a number >= 0 or
        an array of them that broadcasts to the rows.

    Example:
      >>> smoothed, khat = jaxvi.psis(log_p - log_q)        # (S,) weights of S draws from q
      >>> expectation = jnp.sum(jnp.exp(smoothed) * f(z))   # a self-normalised PSIS estimate
    """
    log_weights = jnp.asarray(log_weights)
    if not jnp.issubdtype(log_weights.dtype, jnp.floating) or log_weights.ndim < 1:
        raise ValueError(f"log_weights: expected a float array of shape (..., S), got dtype {log_weights.dtype} "
                         f"and shape {log_weights.shape}")
    if log_weights.shape[-1] < MIN_DRAWS:
        raise ValueError(f"log_weights: expected at least {MIN_DRAWS} draws on the last axis (PSIS fits a generalized "
                         f"Pareto to the 5 or more largest), got {log_weights.shape[-1]}")
    if not is_traced(log_weights):
        _check_weights(np.asarray(log_weights))
    resolution = 0 if resolution is None else _checked_resolution(resolution, log_weights.shape[:-1])
    return _psis_rows(log_weights, resolution)


def _check_weights(log_weights: np.ndarray) -> None:
    """Raises ValueError naming the first NaN or ``+inf`` of concrete ``log_weights``, or a row of zero weights."""
    bad = np.isnan(log_weights) | (log_weights == np.inf)
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"log_weights: expected finite values or -inf (a zero weight), got {log_weights[at]} at index "
                         f"{at}")
    empty = np.all(log_weights == -np.inf, axis=-1)
    if empty.any():
        row = f" in row {tuple(int(i) for i in np.argwhere(empty)[0])}" if empty.ndim else ""
        raise ValueError(f"log_weights: expected at least one weight above zero, got every weight -inf{row}")


def _checked_resolution(resolution, rows: tuple):
    """``resolution`` checked: numbers >= 0 (concrete ones), broadcasting to ``rows``, the shape of the rows."""
    if isinstance(resolution, (str, bytes)) or not jnp.issubdtype(jnp.result_type(resolution), jnp.number):
        raise ValueError(f"resolution: expected a number >= 0 or an array of them, got {resolution!r}")
    shape = jnp.shape(resolution)
    try:
        fits = jnp.broadcast_shapes(shape, rows) == tuple(rows)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"resolution: expected a shape that broadcasts to the rows' {tuple(rows)}, got {shape}")
    if not is_traced(resolution):
        values = np.asarray(resolution, np.float64)
        if np.any(np.isnan(values) | (values < 0)):
            raise ValueError(f"resolution: expected numbers >= 0, got {values.min() if values.size else values}")
    return resolution


@OneProgram  # called outside jit (jaxvi.psis on an array), one program: 0.9 s for new shapes, not 5 s op by op
def _psis_rows(log_weights: jax.Array, resolution) -> tuple[jax.Array, jax.Array]:
    """``psis`` of every row of valid ``log_weights``, each row with its ``resolution`` (broadcast to the rows)."""
    resolution = jnp.broadcast_to(jnp.asarray(resolution, log_weights.dtype), log_weights.shape[:-1])
    one_row = _psis_row
    for _ in range(log_weights.ndim - 1):
        one_row = jax.vmap(one_row)
    return one_row(log_weights, resolution)


def _psis_row(log_weights: jax.Array, resolution: jax.Array) -> tuple[jax.Array, jax.Array]:
    """PSIS of one ``(S,)`` row: the weights above the (M+1)-th largest (at most M of them; found by a top-k, not
    a sort) replaced by GPD quantiles. Weights tied with that cutoff are not in the tail, as in ArviZ and NumPyro;
    a tail of fewer than 5 weights cannot be fitted (k-hat ``inf``, no smoothing), an empty one is no tail at all
    (k-hat ``-inf``: the M + 1 largest weights are equal, or all the weights within ``resolution``)."""
    dtype = log_weights.dtype
    m = tail_length(log_weights.shape[0])
    shifted = log_weights - jnp.max(log_weights)
    shifted = jnp.where(-jnp.min(shifted) <= resolution, jnp.zeros_like(shifted), shifted)  # constant to rounding
    largest, where = lax.top_k(shifted, m + 1)                     # descending: the M largest, then the cutoff
    cutoff = jnp.maximum(largest[m], jnp.log(jnp.finfo(dtype).tiny))
    tail, tail_at = largest[:m][::-1], where[:m][::-1]             # ascending
    in_tail = tail > cutoff                                        # a suffix of the ascending tail
    count = jnp.sum(in_tail)
    excess = jnp.where(in_tail, jnp.exp(tail) - jnp.exp(cutoff), 1.0)
    khat, sigma = _gpd_fit(excess, in_tail, count)
    rank = jnp.arange(m) - (m - count)                             # 0, 1, ... over the tail
    probs = (rank.astype(dtype) + 0.5) / count.astype(dtype)
    quantiles = _gpd_quantile(jnp.where(in_tail, probs, 0.5), khat, sigma)
    smoothed_tail = jnp.minimum(jnp.log(quantiles + jnp.exp(cutoff)), 0.0)
    smooth = (count >= 5) & jnp.isfinite(khat)
    smoothed = jnp.where(smooth, shifted.at[tail_at].set(jnp.where(in_tail, smoothed_tail, tail)), shifted)
    khat = jnp.where(count == 0, -jnp.inf, jnp.where(count < 5, jnp.inf, khat))
    # a NaN or +inf weight, or no weight above zero: nothing to smooth (traced rows; concrete ones are refused)
    invalid = jnp.any(jnp.isnan(log_weights) | (log_weights == jnp.inf)) | jnp.all(log_weights == -jnp.inf)
    nan = jnp.array(jnp.nan, dtype)
    return jnp.where(invalid, nan, smoothed - jax.nn.logsumexp(smoothed)), jnp.where(invalid, nan, khat)


def _gpd_fit(excess: jax.Array, in_tail: jax.Array, count: jax.Array) -> tuple[jax.Array, jax.Array]:
    r"""``(k, sigma)`` of a generalized Pareto fitted to the ``count`` positive excesses at the end of ascending
    ``excess`` (``in_tail`` marks them; Zhang & Stephens 2009, shrunk towards k = 0.5 as in Vehtari et al. 2024);
    the sign of k is the GPD's usual one (k > 0: a heavy tail). Static shapes: the tail's length is traced, the
    grid of :math:`30 + \lfloor\sqrt n\rfloor` candidates is masked within its largest size."""
    size, dtype = excess.shape[0], excess.dtype
    n = count.astype(dtype)
    grid = 30.0 + jnp.floor(jnp.sqrt(n))
    quartile = excess[size - count + jnp.floor(n / 4 + 0.5).astype(count.dtype) - 1]
    j = jnp.arange(1, 30 + int(math.sqrt(size)) + 1, dtype=dtype)
    on_grid = j <= grid
    b = 1.0 / excess[-1] + (1.0 - jnp.sqrt(grid / (j - 0.5))) / (3.0 * quartile)   # candidate -k / sigma
    k_of_b = jnp.sum(jnp.where(in_tail, jnp.log1p(-b[:, None] * excess[None, :]), 0.0), axis=1) / n
    # -b / k(b) -> 1 / mean excess as b -> 0 (an exponential tail): the limit where a candidate is exactly 0, as
    # when float32 rounding makes the largest excess exactly 3 quartiles (0 / 0 there otherwise)
    mean_excess = jnp.sum(jnp.where(in_tail, excess, 0.0)) / n
    scale = jnp.where(b == 0, 1.0 / mean_excess, -b / jnp.where(b == 0, 1.0, k_of_b))
    profile = jnp.where(on_grid, n * (jnp.log(scale) - k_of_b - 1.0), -jnp.inf)
    weights = jnp.where(on_grid, 1.0 / jnp.sum(jnp.exp(profile[None, :] - profile[:, None]), axis=1), 0.0)
    weights = jnp.where(weights >= 10 * jnp.finfo(dtype).eps, weights, 0.0)
    b_mean = jnp.sum(b * weights) / jnp.sum(weights)
    k = jnp.sum(jnp.where(in_tail, jnp.log1p(-b_mean * excess), 0.0)) / n
    sigma = jnp.where(b_mean == 0, mean_excess, -k / jnp.where(b_mean == 0, 1.0, b_mean))
    return (n * k + 10 * 0.5) / (n + 10), sigma


def _gpd_quantile(probs: jax.Array, k: jax.Array, sigma: jax.Array) -> jax.Array:
    r"""The GPD's quantiles: :math:`\sigma\,((1 - p)^{-k} - 1)/k`, and :math:`-\sigma\log(1 - p)` at k = 0."""
    tiny_k = jnp.abs(k) < jnp.finfo(probs.dtype).eps
    safe_k = jnp.where(tiny_k, 1.0, k)
    general = jnp.expm1(-safe_k * jnp.log1p(-probs)) / safe_k
    return sigma * jnp.where(tiny_k, -jnp.log1p(-probs), general)
