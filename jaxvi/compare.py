r"""``jaxvi.compare``: fits of several models to the same data, in one table.

For each fit, what can be said of it on the data D (N data):

- ``objective``: what the fit maximised (``objective_is``: log p(D) for EM, the ELBO for VI; + log p(θ) where
  the model has a prior on θ);
- ``log_evidence``: the exact :math:`\log p_{\hat\theta}(D)` where the latent has an exact posterior
  (``jaxvi.evidence``), else NaN;
- ``bic`` :math:`= k \log N - 2 \log p_{\hat\theta}(D)` and ``aic`` :math:`= 2k - 2 \log p_{\hat\theta}(D)`
  where that log evidence is exact; k, ``num_params``, is the size of θ's floating leaves unless given
  (pass the free count where θ has redundant coordinates, as a softmax's K logits have K - 1);
- ``elpd_loo``: the PSIS-LOO estimate of :math:`\sum_i \log p(x_i \mid D_{-i})` (Vehtari, Gelman & Gabry 2017)
  from ``num_draws`` posterior draws (``jaxvi.export``), for fits with ``Global`` latents, whose
  posterior predictive integrates over them; ``loo_khat`` its largest Pareto k-hat (above 0.7: unreliable).
  NaN otherwise.

The rows are ranked by ``by`` (higher is better for ``log_evidence``, ``objective`` and ``elpd_loo``; lower
for ``bic`` and ``aic``), NaN last.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvi.data import num_data
from jaxvi.evidence import evidence
from jaxvi.latents import exact_family, split_latent
from jaxvi.model import check_data, check_key
from jaxvi.pareto import MIN_DRAWS, psis

__all__ = ["Comparison", "ModelScore", "compare"]

CRITERIA = {"log_evidence": True, "objective": True, "elpd_loo": True, "bic": False, "aic": False}


class ModelScore(NamedTuple):
    """One fit's row of a ``Comparison`` (module docstring)."""

    name: str
    method: str
    objective: float
    objective_is: str
    log_evidence: float
    num_params: int
    bic: float
    aic: float
    elpd_loo: float
    loo_khat: float


class Comparison(NamedTuple):
    """The fits ranked by ``by``, best first; ``str()`` is a Markdown table."""

    rows: tuple
    by: str

    @property
    def best(self) -> str:
        """The name of the best fit by ``by``."""
        return self.rows[0].name

    def __str__(self) -> str:
        header = "| rank | fit | method | objective | log p(D) | k | BIC | AIC | elpd_loo | loo k-hat |"
        lines = [f"ranked by {self.by}", "", header, "|" + "---|" * 10]
        for rank, row in enumerate(self.rows, 1):
            lines.append(f"| {rank} | {row.name} | {row.method} | {row.objective:.6g} ({row.objective_is}) | "
                         f"{row.log_evidence:.6g} | {row.num_params} | {row.bic:.6g} | {row.aic:.6g} | "
                         f"{row.elpd_loo:.6g} | {row.loo_khat:.3g} |")
        return "\n".join(lines)


def compare(fits: Mapping[str, Any], data: Any, *, by: str = "log_evidence", key: jax.Array | None = None,
            num_params: Mapping[str, int] | None = None, num_draws: int = 1000) -> Comparison:
    """Scores every fit in ``fits`` (name → ``Result``, each fitted to ``data``) on ``data`` and ranks them by
    ``by`` (one of ``CRITERIA``; module docstring).

    Args:
      fits: the fits by name.
      data: the data they were fitted to.
      by: the criterion that ranks them.
      key: a PRNG key for the posterior draws of PSIS-LOO (fits with ``Global`` latents); None skips it.
      num_params: k per fit name for BIC and AIC, where it is not the size of θ.
      num_draws: posterior draws for PSIS-LOO.

    Raises:
      ValueError: an empty ``fits``, a fit that is not a ``Result``, an unknown ``by``, a ``num_params`` entry
        that names no fit or is not a count.
    """
    from jaxvi.result import Result

    if not isinstance(fits, Mapping) or not fits:
        raise ValueError(f"fits: expected a non-empty mapping of names to jaxvi Results, got {fits!r}")
    for name, fit in fits.items():
        if not isinstance(fit, Result):
            raise ValueError(f"fits[{name!r}]: expected a jaxvi Result, got {type(fit).__name__}")
    if by not in CRITERIA:
        raise ValueError(f"by: expected one of {tuple(CRITERIA)}, got {by!r}")
    num_params = dict(num_params or {})
    for name, k in num_params.items():
        if name not in fits:
            raise ValueError(f"num_params: {name!r} names no fit; the fits are {tuple(fits)}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"num_params[{name!r}]: expected an integer >= 0, got {k!r}")
    data = check_data(data)
    key = None if key is None else check_key(key)
    n = num_data(data)
    rows = []
    for i, (name, fit) in enumerate(fits.items()):
        log_evidence = _exact_log_evidence(fit, data)
        k = int(num_params.get(name, _size_of_theta(fit.params)))
        bic = k * math.log(n) - 2 * log_evidence
        aic = 2 * k - 2 * log_evidence
        elpd, khat = (math.nan, math.nan) if key is None else _psis_loo(fit, data, jax.random.fold_in(key, i),
                                                                         num_draws)
        rows.append(ModelScore(name, type(fit.method).__name__, float(fit.objective), fit.method.reports,
                               log_evidence, k, bic, aic, elpd, khat))
    higher_better = CRITERIA[by]

    def rank(row):
        value = getattr(row, by)
        return (math.isnan(value), -value if higher_better else value)

    return Comparison(tuple(sorted(rows, key=rank)), by)


def _exact_log_evidence(fit, data) -> float:
    """log p(D | θ̂) where the model's latent has an exact posterior, else NaN."""
    try:
        exact_family(fit.model.latent)
    except ValueError:
        return math.nan
    return float(evidence(fit.model, fit.params, data).log_evidence)


def _size_of_theta(params) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)
                   if jnp.issubdtype(jnp.result_type(leaf), jnp.floating)))


def _psis_loo(fit, data, key, num_draws) -> tuple[float, float]:
    """PSIS-LOO for a fit with ``Global`` latents (else NaN): with the draws' pointwise log-likelihoods
    :math:`\\ell_{is}`, raw weights :math:`-\\ell_{is}` smoothed per datum, and
    :math:`\\text{elpd}_i = \\log \\sum_s \\tilde w_{is} e^{\\ell_{is}}` over normalised smoothed weights."""
    from jaxvi.export import SUPPORTED, compiled_draws

    if type(fit.method).__name__ not in SUPPORTED or not split_latent(fit.model.latent).globals \
            or num_draws < MIN_DRAWS:
        return math.nan, math.nan
    log_likelihood = compiled_draws(fit, data, key, num_draws)[2]  # (S, N)
    elpd, khat = _loo(log_likelihood.T)
    return float(elpd), float(khat)


@jax.jit
def _loo(log_likelihood: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(elpd_loo, largest k-hat)`` from ``(N, S)`` pointwise log-likelihoods."""
    smoothed, khat = psis(-log_likelihood)
    smoothed = smoothed - jax.nn.logsumexp(smoothed, axis=-1, keepdims=True)
    return jnp.sum(jax.nn.logsumexp(smoothed + log_likelihood, axis=-1)), jnp.max(khat)
