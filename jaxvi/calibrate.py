r"""``jaxvi.calibrate``: simulation-based calibration of a variational fit (VSBC; Yao, Vehtari, Simpson &
Gelman 2018).

For i = 1..n, draw a true global value and a data set from the model, :math:`(z^*_i, D_i) \sim
p(z) p(D \mid z)` (the user's ``simulate``), fit it, and take the fitted q's marginal probability below the
truth, :math:`p_{ij} = P_{q_i}(z_j < z^*_{ij})` for every scalar j of the global latent (``num_draws``
draws of q). Were q the exact posterior, every :math:`p_{ij}` would be uniform on [0, 1]; VSBC tests the
weaker, telling property that its distribution is symmetric about 1/2, which a q biased in location
breaks: ``asymmetry`` is the p-value of the two-sample Kolmogorov–Smirnov test of :math:`p_{\cdot j}`
against :math:`1 - p_{\cdot j}` (asymptotic, small: biased). The n fits run vmapped in one compiled call.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvi.methods.settings import check_count
from jaxvi.model import check_key
from jaxvi.export import global_draws

__all__ = ["Calibration", "calibrate"]

PyTree = Any


class Calibration(NamedTuple):
    """What ``calibrate`` found.

    Attributes:
      probabilities: :math:`P_q(z < z^*)` per simulation and scalar of the global latent, leaves ``(n, *shape)``.
      asymmetry: the KS p-value of each scalar's probabilities against one minus them, leaves ``shape``.
      truth: the simulated global values, leaves ``(n, *shape)``.
      results: the n fits, stacked (a vmapped ``Result``).
    """

    probabilities: PyTree
    asymmetry: PyTree
    truth: PyTree
    results: Any


def calibrate(model, method, simulate: Callable[[jax.Array], tuple[PyTree, PyTree]], n: int, *, key: jax.Array,
              num_draws: int = 1000) -> Calibration:
    """VSBC of ``method`` on ``model`` over ``n`` simulated data sets (module docstring).

    Args:
      model: a model with ``Global`` latents.
      method: a VI method whose fit has a global q (``SVI``, ``CAVI``).
      simulate: ``simulate(key) -> (z_true, data)``: a global value drawn from the prior (a pytree like
        ``result.posterior().sample``'s draws without their leading axis) and a data set drawn given it, of a
        fixed size.
      n: simulations (at least 2).
      key: a PRNG key.
      num_draws: draws of each q for its probabilities.

    Raises:
      ValueError: ``n`` or ``num_draws`` not a count, ``simulate`` not callable, a method whose fit has no
        global q.
    """
    from jaxvi.infer import infer

    check_count("n", n)
    if n < 2:
        raise ValueError(f"n: expected at least 2 simulations, got {n}")
    check_count("num_draws", num_draws)
    if not callable(simulate):
        raise ValueError(f"simulate: expected a function simulate(key) -> (z_true, data), got {simulate!r}")
    key = check_key(key)
    simulate_key, fit_key, draw_key = jax.random.split(key, 3)

    @jax.jit
    def run(simulate_keys, fit_keys, draw_keys):
        truth, data = jax.vmap(simulate)(simulate_keys)
        results = jax.vmap(lambda d, k: infer(model, method, d, key=k, progress=False))(data, fit_keys)

        def below(result, k, z_true):
            draws = global_draws(result, k, num_draws)
            if draws is None:
                raise ValueError(f"method: calibrate needs a fit with a global q (SVI or CAVI on a model with Global "
                                 f"latents), got a {type(result.method).__name__} fit without one")
            return jax.tree_util.tree_map(lambda d, t: jnp.mean(d < t, axis=0), draws, z_true)

        return jax.vmap(below)(results, draw_keys, truth), truth, results

    probabilities, truth, results = run(jax.random.split(simulate_key, n), jax.random.split(fit_key, n),
                                        jax.random.split(draw_key, n))
    asymmetry = jax.tree_util.tree_map(lambda p: _symmetry_p_value(np.asarray(p)), probabilities)
    return Calibration(probabilities, asymmetry, truth, results)


def _symmetry_p_value(p: np.ndarray) -> np.ndarray:
    """Per trailing index, the asymptotic two-sample KS p-value of ``p[:, j]`` against ``1 - p[:, j]``."""
    flat = p.reshape(p.shape[0], -1)
    values = [_ks_two_sample(column, 1 - column) for column in flat.T]
    return np.asarray(values).reshape(p.shape[1:])


def _ks_two_sample(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov–Smirnov p-value, from the asymptotic Kolmogorov distribution
    :math:`Q(\\lambda) = 2 \\sum_{j \\ge 1} (-1)^{j-1} e^{-2 j^2 \\lambda^2}` at
    :math:`\\lambda = (\\sqrt{m} + 0.12 + 0.11 / \\sqrt{m}) D`, :math:`m = n_a n_b / (n_a + n_b)`."""
    grid = np.sort(np.concatenate([a, b]))
    distance = np.max(np.abs(np.searchsorted(np.sort(a), grid, side="right") / a.size
                             - np.searchsorted(np.sort(b), grid, side="right") / b.size))
    m = a.size * b.size / (a.size + b.size)
    lam = (math.sqrt(m) + 0.12 + 0.11 / math.sqrt(m)) * distance
    if lam < 1e-3:
        return 1.0
    j = np.arange(1, 101)
    return float(np.clip(2 * np.sum((-1.0) ** (j - 1) * np.exp(-2 * j**2 * lam**2)), 0.0, 1.0))
