"""Plots of fits: objective traces and the evidence identity log p(D) = ELBO + KL, with matplotlib.

matplotlib is an optional dependency (``pip install 'jaxvi[plot]'``), imported when a plot is drawn.
Every function draws on ``ax`` (a new figure's axes when None) and returns the axes.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["evidence_gap", "trace"]


def _axes(ax):
    if ax is not None:
        return ax
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - the message is the point
        raise ImportError("jaxvi.plot needs matplotlib: pip install 'jaxvi[plot]'") from err
    return plt.subplots(figsize=(6.4, 4.0))[1]


def _as_dict(results) -> dict:
    if isinstance(results, Mapping):
        return dict(results)
    if isinstance(results, (list, tuple)):
        return {f"{type(r.method).__name__} {i}": r for i, r in enumerate(results)}
    return {type(results.method).__name__: results}


def _objective_name(result) -> str:
    return result.method.reports


def trace(results, ax=None, *, per_datum: int | None = None):
    """The objective of every iteration, one line per fit, on one axis.

    Args:
      results: a ``Result``, a list of them, or a ``{label: Result}`` mapping.
      ax: matplotlib axes to draw on.
      per_datum: divide by this many data (to compare fits on data sets of different sizes).

    Returns:
      The axes. Iterations are on a log scale when any fit ran more than 200.
    """
    ax = _axes(ax)
    scale = 1.0 / per_datum if per_datum else 1.0
    longest = 0
    for label, result in _as_dict(results).items():
        n = int(np.asarray(result.n_iter).max())
        values = np.asarray(result.trace, np.float64)[: n + 1] * scale
        ax.plot(np.arange(1, len(values) + 1), values, label=f"{label} ({_objective_name(result)})")
        longest = max(longest, len(values))
    if longest > 200:
        ax.set_xscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective" + (" per datum" if per_datum else ""))
    ax.legend()
    return ax


def evidence_gap(results, ax=None, *, per_datum: int | None = None):
    """For every fit, its bound and the gap to the exact log p(D): log p(D) = ELBO + Σ KL(q ‖ p(z | x)).

    EM's bound is log p(D) itself (its q is the exact posterior: no gap). An SVI fit of a model with
    an exact E-step shows the exact log p(D) at its θ and the gap (``result.diagnostics.gap``); other
    fits show their bound alone.

    Returns:
      The axes: one bar per fit up to its ELBO, a hatched bar for the gap above it.
    """
    ax = _axes(ax)
    scale = 1.0 / per_datum if per_datum else 1.0
    labels, bounds, gaps = [], [], []
    for label, result in _as_dict(results).items():
        bound = float(np.asarray(result.objective).max()) * scale
        gap = getattr(result.diagnostics, "gap", None)
        gap = 0.0 if result.method.reports == "log p(D)" else (float(np.asarray(gap).max()) * scale
                                                                 if gap is not None else float("nan"))
        labels.append(label)
        bounds.append(bound)
        gaps.append(gap)
    x = np.arange(len(labels))
    bottom = min(bounds) - 0.05 * (abs(min(bounds)) + 1e-12)
    ax.bar(x, np.array(bounds) - bottom, bottom=bottom, label="ELBO (the bound)")
    known = np.nan_to_num(np.array(gaps))
    ax.bar(x, known, bottom=bounds, hatch="//", fill=False, label="KL gap to log p(D)")
    for i, (bound, gap) in enumerate(zip(bounds, gaps)):
        text = f"{bound:.4g}" + (f"\n+{gap:.3g}" if np.isfinite(gap) and gap != 0 else "")
        ax.annotate(text, (i, bound + (gap if np.isfinite(gap) else 0.0)), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, labels)
    ax.set_ylabel("nats" + (" per datum" if per_datum else ""))
    ax.legend()
    return ax
