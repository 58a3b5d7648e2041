r"""Coordinate-ascent variational inference (CAVI; Variational EM / Variational Bayes), derived from the log-joint.

q is a product: one exponential-family factor per leaf of the model's ``Global`` latents, and for the local
latent (``Discrete``, ``Markov`` or ``Gaussian``, or none) the exact posterior given the global factors; for a
local latent of several ``Markov`` chains (a factorial HMM), one chain per factor (structured mean field,
``jaxvi.vi.chains``: a sweep of exact chain updates is the local step). Each iteration (Bishop ch. 10; Blei,
Kucukelbir & McAuliffe 2017):

1. **Local step.** Given the global factors, the best local q is
   :math:`q_i(z_i) \propto \exp E_{q_g}[\log p_\theta(x_i, z_i \mid z_g)]`: the exact posterior of the
   *expected* log-joint, by the latent's own E-step (enumeration, forward–backward, a Gaussian integral). Its
   normaliser gives the bound in closed form,

   .. math:: \mathcal L = \sum_i \log \int \exp E_{q_g}[\log p_\theta(x_i, z_i \mid z_g)]\, dz_i
       + E_{q_g}[\log p_\theta(z_g)] + H[q_g],

   the iteration's ``objective``.
2. **Global steps.** Each factor j in turn is set to :math:`q_j \propto \exp E_{q_{-j}}[\log p]`: where the
   log-joint is linear in the factor's sufficient statistics :math:`T_j` (conditional conjugacy, Autoconj's
   condition), that function of :math:`z_j` is :math:`c + \eta_j \cdot T_j(z_j)` and its natural parameters
   are read off its gradient at as few points as determine them (``expfam.natural_parameters``, gradients only:
   the parts of the log-joint the factor does not enter are never evaluated for its update); ``init``'s reads
   (the prior's and the first updates') take one point more, so that their residuals test the linearity.
3. **M-step** (Variational EM), where the model has floating parameters θ: gradient ascent on the bound in θ
   with q fixed (L-BFGS), kept only if it raises the bound.

Every step maximises the bound over one block exactly, so the objective never falls. Expectations over the
global factors are exact: ``expfam.quadrature`` rules, a few evaluations of the log-joint with forward-mode
derivatives, exact for functions linear in the statistics.

The start's reads refuse a log-joint that is not linear in a factor's statistics, or an improper prior
(``check_start``, after the start and before the run compiles), naming the factor.
"""
from __future__ import annotations

import dataclasses
import functools
from types import SimpleNamespace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxvi import exact, kmeans
from jaxvi._xla import batched_lapack_may_deadlock
from jaxvi.chunks import map_chunks, map_data, minibatch, num_data as num_data_of, sum_data
from jaxvi.latents import Gaussian, Markov, all_discrete, exact_family, is_spec, split_latent
from jaxvi.methods.common import (batch_rows, final_fault, float_dtype, full_data, leaves_finite, sum_accurately,
                                 tree_where)
from jaxvi.methods.em import gradient_m_step
from jaxvi.methods.settings import check_count, check_number, settings
from jaxvi.model import Model, check_new_data, is_traced
from jaxvi.result import FAULT_LOG_EVIDENCE, FAULT_PARAMS, NO_FAULT, Fault, Result
from jaxvi.run.compiled import CHEAP_CODE, compiled_outside_traces, per_fit
from jaxvi.run.schedule import Change, Schedule
from jaxvi.vi import chains, expfam, local_factors
from jaxvi.vi.factors import Factor, FactorSpec, encoded, factor_spec, sample_factors

__all__ = ["CAVI", "CAVIDiagnostics", "CAVIInfo", "CAVIPosterior", "CAVIState", "DEFAULT_TOL", "NOT_CONJUGATE"]

PyTree = Any

STARTS = ("auto", "prior", "random", "kmeans")
RESTARTS = ("auto", "vmap", "sequence")
DEFAULT_TOL = 1e-5  # CAVI(tol=None): the change of the bound per datum ending a fit, where the float type resolves it
NOT_CONJUGATE = 1e-3  # a linearity residual (relative) above this refuses a factor: not conjugate
MAX_JOINT_PAIRS = 2 ** 16  # the most joint state pairs per step of several local chains (structured mean field)


class CAVIState(NamedTuple):
    """CAVI between iterations. A step evaluates the bound at (``params``, ``factors``) and then moves both,
    so the evaluated ones are a step behind, as EM's.

    Attributes:
      params: θ, the model's parameters the next local step uses.
      factors: the global factors' parameters as held (``jaxvi.vi.expfam``: natural parameters, but a
        ``NormalWishart``'s or ``NormalGamma``'s held about its mean), one tuple per global leaf (``Global`` nodes'
        leaves in order), the next local step's; a ``NormalWishart``'s or ``NormalGamma``'s are of its mean less its
        spec's ``center`` (``jaxvi.vi.factors.encoded``).
      evaluated_params, evaluated_factors: those of the last finite bound.
      bound: that bound; -inf before the first step.
      linearity: the worst linearity residual of any read so far (rounding level when every factor is
        conjugate): ``init``'s checked reads (the priors', the first global updates', the local factors' on the first
        8 data; inf where a prior is not proper), then every global update's gradients.
      local: the local q the next step starts from, where it is not exact given the globals (several ``Markov``
        chains: a ``chains.ChainProduct``; local exponential-family factors: their natural parameters but the
        first's, ``jaxvi.vi.local_factors``); else None, and None on minibatches (``batch_size``).
      count: the steps taken (a minibatch step's :math:`\rho_t` counts them).
    """

    params: PyTree
    factors: tuple
    evaluated_params: PyTree
    evaluated_factors: tuple
    bound: jax.Array
    linearity: jax.Array
    local: Any = None
    count: Any = None


class CAVIInfo(NamedTuple):
    """A step's ``objective`` (the bound of the factors and θ it started from) and ``fault``."""

    objective: jax.Array
    fault: Fault


class CAVIDiagnostics(NamedTuple):
    r"""What happened during a CAVI fit, beyond the bound.

    Attributes:
      linearity: the worst relative residual of the conjugacy (linearity) checks of the fit's reads
        (``CAVIState.linearity``).
      log_evidence: the exact log p(D | θ) (+ log p(θ)) at the fitted θ where the model has no ``Global`` latent
        (several ``Markov`` chains: the forward algorithm on their product chain), else NaN.
      gap: the local part's gap at the fitted global factors, :math:`\sum_i KL(q_i \| q^*_i)` with
        :math:`q^*_i \propto \exp E_{q_g}[\log p(x_i, z_i)]` the best local q: 0 where the local q is exact (one
        ``Discrete`` pytree, ``Markov`` chain or ``Gaussian``, or no local latent), what structured mean field
        over several chains loses otherwise; ``log_evidence - objective`` where the model has no ``Global``.
      fault: the first numerical fault (``kind == 0``: none).
      restart_objectives: ``(n_init,)`` final bound of every restart; the best is returned.
      stop_reason: why the run stopped, an index into ``jaxvi.run.STOP_REASONS``.
      factors: the fitted global factors' parameters as held (``CAVIState.factors``; ``Result.posterior()`` gives
        them as distributions).
      skips: the steps ``jaxvi.infer(..., on_nonfinite="skip")`` skipped, a ``jaxvi.result.Skips`` (None
        outside ``infer``).
    """

    linearity: jax.Array
    log_evidence: jax.Array
    gap: jax.Array
    fault: Fault
    restart_objectives: jax.Array
    stop_reason: jax.Array
    factors: tuple
    skips: Any = None


class CAVIPosterior(NamedTuple):
    """A CAVI fit's q: ``globals``, the fitted factors (``jaxvi.vi.factors.Factor``: mean, variance, sample,
    log_prob, entropy, parameters) in the structure of the model's latent (each ``Global`` node replaced by its
    factors, the local leaves by None: ``q.globals["theta"]["weights"]`` where ``log_joint`` reads
    ``z["theta"]["weights"]``); ``local``, the local q of the data
    passed (an exact-posterior object: ``DiscretePosterior``, ``ChainPosterior`` or ``GaussianPosterior``; local
    exponential-family factors as ``Factor``s, the data in front, in the structure of the local latent), or
    None."""

    globals: PyTree
    local: Any


class _Structure(NamedTuple):
    """The model's latent as CAVI sees it (static)."""

    parts: Any
    factors: tuple              # FactorSpec per global leaf
    node_treedefs: tuple        # per Global node: the treedef of its latent and its number of leaves

    @property
    def chains(self) -> chains.ChainLayout | None:
        """The layout of a local latent of several ``Markov`` chains (structured mean field), else None."""
        return chains.chain_layout(self.parts.local)

    @property
    def local_factors(self) -> local_factors.LocalLayout | None:
        """The layout of a local latent of exponential-family specs (a mean-field q per datum), else None."""
        return local_factors.local_layout(self.parts.local)

    def global_value(self, encoded: tuple) -> PyTree:
        """The global value ``log_joint`` receives, from every leaf's value in its family's layout."""
        if not self.node_treedefs:
            return None
        values = [f.value(z) for f, z in zip(self.factors, encoded)]
        nodes, start = [], 0
        for treedef, count in self.node_treedefs:
            nodes.append(jax.tree_util.tree_unflatten(treedef, values[start:start + count]))
            start += count
        return nodes[0] if len(nodes) == 1 else nodes

    def log_joint(self, model: Model, params, encoded: tuple, z_local, x) -> jax.Array:
        return model.log_joint(params, self.parts.combine(self.global_value(encoded), z_local), x)

    def log_prior(self, params, encoded: tuple) -> jax.Array:
        if not self.node_treedefs:
            return jnp.zeros(())
        return self.parts.global_log_prior(params, self.global_value(encoded))

    def rules(self, factors: tuple) -> tuple:
        """Every factor's ``expfam.Quadrature``."""
        return tuple(expfam.quadrature(f.family, eta) for f, eta in zip(self.factors, factors))

    def expected_log_joint(self, model: Model, rules: tuple):
        """``(params, z_local, x) -> E_{q_g}[log p(x, z_local | z_g)]``, a log-joint of the local latent alone."""
        return lambda p, z_local, x: expfam.expect_product(
            lambda *zs: self.log_joint(model, p, zs, z_local, x), rules)

    def global_terms(self, model: Model, params, factors: tuple, rules: tuple) -> jax.Array:
        """E_q[log p(z_g)] + H[q_g] (+ the model's own log prior of θ): the bound's part without the data."""
        prior = expfam.expect_product(lambda *zs: self.log_prior(params, zs), rules)
        entropy = sum(jnp.sum(expfam.entropy(f.family, eta)) for f, eta in zip(self.factors, factors))
        return prior + entropy + model.total_log_prior(params)


def _structure(model: Model) -> _Structure:
    parts = split_latent(model.latent)
    factors, treedefs = [], []
    for node in parts.globals:
        leaves, treedef = jax.tree_util.tree_flatten(node.latent, is_leaf=is_spec)
        factors.extend(factor_spec(leaf) for leaf in leaves)
        treedefs.append((treedef, len(leaves)))
    return _Structure(parts, tuple(factors), tuple(treedefs))


@settings("tol", "local_tol", "step_size")
@dataclasses.dataclass(frozen=True)
class CAVI:
    r"""Coordinate-ascent VI: every factor of a mean-field q set to its optimum in turn, in closed form,
    derived from the log-joint (module docstring).

    The model's ``Global`` latents are exponential-family specs (``Dirichlet``, ``Gamma``, ``Beta``,
    ``Wishart``, ``NormalWishart``, ``NormalGamma``, ``OneHot``, ``Gaussian``), each leaf one factor of q; its
    local latent, if any, a ``Discrete`` pytree, a ``Markov`` chain or a ``Gaussian``, whose q is exact given the
    globals; or a pytree of several ``Markov`` chains, one factor each; or a pytree of exponential-family specs,
    one factor of every datum's q each (``jaxvi.vi.local_factors``: LDA's ``OneHot`` token assignments and
    ``Dirichlet`` topic proportions). With the last two the model may have no ``Global``: Variational EM.

    Args:
      max_iter: the most iterations (``infer`` evaluates ``max_iter + 1`` bounds).
      tol: stop when the bound changes by less than ``tol`` per datum (traced). None (the default): by less than
        ``DEFAULT_TOL`` (1e-5) per datum or than the float type resolves of the bound, whichever is coarser,
        counted as converged (``Change(to_resolution=True)``). scikit-learn's ``BayesianGaussianMixture`` stops at
        1e-3 on the total; 1e-3 per datum stopped fits early: a two-cluster mixture (K = 4) with a cluster still split
        in two of four keys, a variational categorical HMM at the symmetric start in 5 of 8 keys (the bound of 8
        keys' fits, median -831.1 at 1e-3, -741.0 at 1e-4, -739.6 by default; hmmlearn's -748.0). An LDA fit's
        bound of a few hundred nats per document is resolved in float32 only to about 1e-3 per document.
      n_init: restarts from ``n_init`` keys, vmapped; the highest bound is returned.
      m_step_iters: L-BFGS steps per M-step on θ (the model's floating parameters; none: no M-step).
      chunk_size: how many data are evaluated at once (local exponential-family factors: at most this many, as
        many as keep a chunk's sweeps in cache, ``LocalLayout.chunk_size``). Each chunk repeats the work of the
        log-joint that does not depend on the datum (a mixture's log-determinants), so larger chunks pay it less
        often: a Bayesian mixture's iteration on 200,000 x 16 data, K = 16, took 77-79 ms with 1,024, 66-71 ms
        with 2,048, 56-57 ms with 4,096 and 8,192, and 77-82 ms with 16,384 (2-core CPU).
      start: where the first global updates start: ``"prior"``, the local q that is exact at one draw of the
        global factors from their priors (priors on the data's scale give data-like starts, as k-means' random
        centres do), a Dirichlet factor near uniform instead (``_start_rules``: a draw from a sparse Dirichlet
        prior, as LDA's topics', is sparse); ``"random"``, responsibilities drawn from Dirichlet(1) for every
        datum (a ``Discrete`` local latent only; near-symmetric, so restarts matter more); ``"kmeans"``, every
        datum (every step, for a ``Markov`` chain) assigned to its nearest center of k-means on the real-valued
        data, as many centers as the local latent has values (``_kmeans_start``: scikit-learn's
        ``BayesianGaussianMixture`` and hmmlearn's variational HMMs start so; a ``Discrete`` or one ``Markov``
        local latent only); ``"auto"`` (the default), ``"kmeans"`` for a ``Discrete`` latent or one ``Markov``
        chain over real-valued data, else ``"prior"``. Measured over six keys each: a variational Gaussian HMM
        (hmmlearn's priors, whose Wishart scale 1e-3 puts every state's drawn mean at the prior mean) reached the
        best bound from 2 of 6 prior starts and 6 of 6 k-means starts (3 states, d = 2), 1 and 4 of 6 (5 states,
        d = 3). Bayesian mixtures (scikit-learn's priors; tol=1e-4), median bound of six keys from prior draws
        against k-means: standardised wine, K = 3, -2,864 against -2,808, K = 8, -3,221 against -2,976;
        standardised breast cancer, K = 3, -3,823 against -3,219; iris, K = 3, -328.9 against -335.5, K = 8,
        -336.8 against -345.4 (the one data set of four where prior draws did better).
      restarts: how the ``n_init`` restarts run: ``"vmap"``, side by side in one vmapped program;
        ``"sequence"``, one after another in one compiled program (``lax.map``); ``"auto"`` (the default),
        ``"sequence"`` where batched LAPACK calls can deadlock (the CPU backend with jaxlib before 0.11.2:
        ``jaxvi/_xla.py``) or the model has local exponential-family factors (LDA's: every datum is swept until
        it converges, in loops and branches that vmapped restarts run in lockstep, both sides of every branch:
        2,000 documents, K = 20, two restarts of 10 iterations ran in 11.0 s one after another, 29.8 s
        vmapped), else ``"vmap"``. The fits are the same either way.
      local_tol: local exponential-family factors (a mean-field q per datum: LDA's document-topic proportions
        and token assignments) are swept, datum by datum, until the mean absolute change of their natural
        parameters is below this (scikit-learn's ``mean_change_tol``; traced); from their reference members every
        iteration, each datum keeping the last iteration's q where that is better, so the bound never falls.
      local_max_iter: the most local sweeps per datum and iteration (scikit-learn's ``max_doc_update_iter``).
      batch_size: stochastic VI (Hoffman, Blei, Wang & Paisley 2013; online LDA): each of ``max_iter`` steps fits
        the local q of a minibatch of this many data (from scratch: nothing per datum is kept) and moves every
        global factor's natural parameters a step :math:`\rho_t` toward the optimum its minibatch estimates (the
        data's part scaled by N / B); the step's objective is that minibatch estimate of the bound, the result's
        the bound on all the data. None (the default): every step on all the data.
      step_size: ``(tau0, kappa)``: :math:`\rho_t = (\tau_0 + t)^{-\kappa}` at the t-th step (t = 1, 2, ...;
        scikit-learn's ``learning_offset`` and ``learning_decay``, its defaults; traced), :math:`\kappa \in (1/2,
        1]`.

    Example:
      >>> result = jaxvi.infer(model, jaxvi.CAVI(max_iter=200), data, key=jax.random.key(0))
      >>> q = result.posterior(data); q.globals["weights"].mean()
    """

    max_iter: int = 100
    tol: float | None = None
    n_init: int = 1
    m_step_iters: int = 20
    chunk_size: int = 4096
    start: str = "auto"
    restarts: str = "auto"
    local_tol: float = 1e-3
    local_max_iter: int = 100
    batch_size: int | None = None
    step_size: tuple = (10.0, 0.7)

    reports = "ELBO"
    per_datum = ()
    # what the run layer's fault messages add for CAVI: its start is q fitted from the priors, not parameters
    start_hint = "CAVI's first q is fitted from the priors and its start (CAVI(start)): check them and the log_joint"
    global_terms_hint = (" (the global factors' terms of the bound, E_q log p(theta) + H[q]: a factor's q left its "
                         "family; in float32, for example, a Wishart factor of features so collinear that float32 "
                         "cannot resolve their covariance (condition 1e7 and more) can lose positive definiteness: fit "
                         "in float64, or decorrelate the features)")

    def __post_init__(self):
        for name in ("max_iter", "n_init", "m_step_iters", "chunk_size", "local_max_iter"):
            check_count(f"CAVI({name})", getattr(self, name))
        check_count("CAVI(batch_size)", self.batch_size, optional=True)
        if not (isinstance(self.step_size, tuple) and len(self.step_size) == 2):
            raise ValueError(f"CAVI(step_size): expected a pair (tau0, kappa), got {self.step_size!r}")
        check_number("CAVI(step_size) tau0", self.step_size[0], low=0)
        check_number("CAVI(step_size) kappa", self.step_size[1], low=0.5, low_open=True, high=1)
        check_number("CAVI(tol)", self.tol, low=0, optional=True)
        check_number("CAVI(local_tol)", self.local_tol, low=0)
        if self.start not in STARTS:
            raise ValueError(f"CAVI(start): expected one of {STARTS}, got {self.start!r}")
        if self.restarts not in RESTARTS:
            raise ValueError(f"CAVI(restarts): expected one of {RESTARTS}, got {self.restarts!r}")

    def restarts_in_sequence(self, model: Model) -> bool:
        """Whether the run layer runs the restarts of a fit of ``model`` one after another (``restarts``)."""
        if self.restarts == "auto":
            return batched_lapack_may_deadlock() or _structure(model).local_factors is not None
        return self.restarts == "sequence"

    # --- checks -------------------------------------------------------------------------------------

    @property
    def posterior_passes(self) -> int:
        """The most passes ``posterior`` makes over the data (``Result.posterior`` compiles by them): a local q of
        exponential-family factors takes up to ``local_max_iter`` sweeps of every datum."""
        return self.local_max_iter

    def check(self, model: Model, data: PyTree = None) -> None:
        """Raises ValueError for a model CAVI cannot fit, before anything compiles: no exponential-family
        ``Global`` factor; a local latent without an exact posterior; more than ``MAX_JOINT_PAIRS`` joint state pairs
        of several chains; minibatches (``batch_size``) for a model they do not apply to. A log-prior or log-joint
        not linear in a factor's statistics, and a prior that is not a proper member of its factor's family, are
        found by ``init``'s reads and refused by ``check_start``, before the run compiles."""
        parts = split_latent(model.latent)
        layout = chains.chain_layout(parts.local)
        local_layout = local_factors.local_layout(parts.local)
        if not parts.globals and layout is None and local_layout is None:
            raise ValueError(f"latent: CAVI fits a q over Global exponential-family factors, local exponential-family "
                             f"factors or several Markov chains, got {model.latent!r} with none; a model with only "
                             f"local latents of one family has an exact posterior: fit it with jaxvi.EM")
        structure = _structure(model)  # every global leaf has a factor
        if self.start == "random" and (layout is not None or local_layout is not None
                                       or isinstance(parts.local, (Markov, Gaussian))):
            raise ValueError(f"CAVI(start='random'): random responsibilities need a Discrete local latent, got "
                             f"{parts.local!r}; use start='prior'")
        if self.start == "kmeans":
            _check_kmeans_start(parts.local, layout, local_layout, data)
        if layout is not None:
            pairs = int(np.prod([K * K for K in layout.sizes]))
            if pairs > MAX_JOINT_PAIRS:
                raise ValueError(f"latent: {len(layout.sizes)} Markov chains of {layout.sizes} states make {pairs} "
                                 f"joint (previous, current) pairs per step, more than {MAX_JOINT_PAIRS}: structured "
                                 f"mean field evaluates the step log-joint on every one; use fewer chains or states")
        elif parts.local is not None and local_layout is None:
            exact_family(parts.local)
        if self.batch_size is not None:
            self._check_minibatches(model, structure, data)

    def check_start(self, model: Model, data: PyTree, state: CAVIState) -> None:
        """Raises ValueError where ``init``'s checked reads (``state.linearity``, of every restart) found a log-joint
        or a log-prior not linear in a factor's sufficient statistics, or a prior that is not a proper member of its
        family: ``jaxvi.infer`` asks before the run compiles. The factor is named by the probe (``_probe``, compiled
        only then: a conjugate model pays for no reads beyond its start's), which reads every factor at a broad member
        of its family; where those reads are linear, the message names none. A read that is not finite (NaN: the
        log-joint not finite at the start) is left to the run's fault report. Not under a user's ``jit`` or
        ``vmap``, where the state has no values: ``diagnostics.linearity`` reports the reads."""
        worst = float(np.max(np.asarray(state.linearity)))
        if not worst > NOT_CONJUGATE:
            return
        structure = _structure(model)
        proper, residuals = _compiled_probe(model, _keeping(self, "start", "chunk_size"), data)
        for name, residual in zip(_leaf_names(model, local=True), residuals[2]):
            if not float(residual) <= NOT_CONJUGATE:
                raise ValueError(
                    f"latent: the log-joint is not conjugate in the local factor {name}: E over the other factors of "
                    f"log p is not linear in its sufficient statistics, or the entries of its plate enter together "
                    f"(relative residual {float(residual):.2g} > {NOT_CONJUGATE:g}), so CAVI has no closed-form "
                    f"update for it. Fit the model with jaxvi.SVI")
        names = _leaf_names(model)
        for factor, name, finite in zip(structure.factors, names, np.asarray(proper)):
            if not finite:
                raise ValueError(f"latent: the prior of the factor {name} ({factor.spec!r}) is not a proper "
                                 f"{factor.family.name} distribution (its natural parameters, read off log_prior, "
                                 f"have no finite normaliser); CAVI starts from the priors and needs proper ones")
        for factor, name, prior_residual, residual in zip(structure.factors, names, residuals[0], residuals[1]):
            if not float(prior_residual) <= NOT_CONJUGATE:
                raise ValueError(
                    f"latent: the log-prior is not conjugate in the factor {name} ({factor.spec!r}): it is not linear "
                    f"in the factor's sufficient statistics (relative residual {float(prior_residual):.2g} > "
                    f"{NOT_CONJUGATE:g}), so the prior is not a member of the {factor.family.name} family. Give it a "
                    f"{factor.family.name} prior, or fit the model with jaxvi.SVI, writing that latent as a Real with "
                    f"a bijector")
            if not float(residual) <= NOT_CONJUGATE:
                raise ValueError(
                    f"latent: the log-joint is not conjugate in the factor {name} ({factor.spec!r}): E over the "
                    f"other factors of log p is not linear in its sufficient statistics (relative residual "
                    f"{float(residual):.2g} > {NOT_CONJUGATE:g}), so CAVI has no closed-form update for it. Fit the "
                    f"model with jaxvi.SVI, writing that latent as a Real with a bijector")
        raise ValueError(
            f"latent: CAVI's first updates read a log-joint or log-prior that is not linear in a factor's sufficient "
            f"statistics (relative residual {worst:.2g} > {NOT_CONJUGATE:g}), though not where every factor is a "
            f"broad member of its family: the log-joint is not conditionally conjugate in some factor near its "
            f"prior, so CAVI has no closed-form update for it. Fit the model with jaxvi.SVI")

    def _check_minibatches(self, model: Model, structure: _Structure, data: PyTree) -> None:
        """Raises ValueError where stochastic VI (``batch_size``) does not apply: several chains (their q is kept per
        sequence), no global factor to step, θ to fit (no M-step on minibatches), a batch larger than the data."""
        if structure.chains is not None or not structure.factors:
            raise ValueError(f"CAVI(batch_size): stochastic VI steps global factors on minibatches; a model "
                             f"{'of several Markov chains' if structure.chains is not None else 'without Global factors'} is "
                             f"fitted on all the data: leave batch_size=None")
        if data is None:
            return
        params = jax.eval_shape(model.init, jax.random.key(0), data)
        if any(jnp.issubdtype(a.dtype, jnp.floating) for a in jax.tree_util.tree_leaves(params)):
            raise ValueError("CAVI(batch_size): stochastic VI has no M-step for the model's parameters θ (its floating "
                             "params); make them constants of the model, or fit on all the data (batch_size=None)")
        if self.batch_size > num_data_of(data):
            raise ValueError(f"CAVI(batch_size): expected at most the number of data, {num_data_of(data)}, got "
                             f"{self.batch_size}")

    def _probe(self, model: Model, data: PyTree):
        """(whether each factor's prior, its natural parameters read off ``log_prior``, has a finite log-normaliser;
        (the prior reads' residuals, the log-joint reads' residuals, the local reads' residuals on the first 8 data)),
        every factor read with the others at their broad reference members, and a local q: local exponential-family
        factors at their reference members, another local latent's q as ``init`` starts it but at the global factors'
        means where ``init`` draws them (``_initial_local(draw=False)``)."""
        structure = _structure(model)
        params = model.init(jax.random.key(0), data)
        dtype = float_dtype(data)
        references = _references(structure, dtype)
        prior, prior_residuals = self._prior_factors(structure, params, dtype)
        layout = structure.local_factors
        if layout is None:
            post = self._initial_local(model, structure, params, references, data, jax.random.key(1), None,
                                       draw=False)
        else:  # linearity holds under any local q: the reference members, not swept (no fit in this program)
            expected = structure.expected_log_joint(model, structure.rules(references))
            post = self._local_factors(layout, expected, params,
                                       local_factors.reference(layout, num_data_of(data), dtype), dtype)
        residuals = []
        for j, f in enumerate(structure.factors):
            fn = self._factor_function(model, structure, params, references, data, post, j)
            _, _, residual = expfam.natural_parameters(fn, f.family, f.family.points(references[j],
                                                                                      f.read_points + 1))
            residuals.append(jnp.maximum(*residual))
        local_residuals = jnp.zeros((0,), dtype)
        if layout is not None:
            local_residuals = self._local_residuals(model, structure, params, references, _head(data), dtype)
        stacked = jnp.stack(residuals) if residuals else jnp.zeros((0,), dtype)
        return _proper(structure, prior), (prior_residuals, stacked, local_residuals)

    def _local_residuals(self, model, structure, params, factors, data, dtype) -> jax.Array:
        """Every local factor's worst linearity residual over ``data``, each read (checked) with the other local
        factors at their reference members and the global factors at ``factors``."""
        layout = structure.local_factors
        expected = structure.expected_log_joint(model, structure.rules(factors))
        start = tuple(f.reference(dtype) for f in layout.factors)

        def datum_residuals(x):
            fn, counts = layout.datum_joint(expected, params, x), layout.multiplicities(x)
            return jnp.stack([local_factors.read(layout, fn, start, j, dtype, counts, checked=True)[1]
                              for j in range(len(layout.factors))])

        return jnp.max(jax.vmap(datum_residuals)(data), axis=0)

    def large_kernels(self, model: Model) -> bool:
        """Whether a step on ``model`` works in large kernels over the data (or the minibatch), compiled for XLA:CPU's
        older emitters (``jaxvi.run.compiled.LARGE_KERNEL_CODE``): discrete local latents or none. Not Markov chains
        (forward-backward is a scan of small kernels) nor local exponential-family factors (LDA's sweeps ran slower
        in the older emitters' code)."""
        local = split_latent(model.latent).local
        return local is None or all_discrete(local)

    def schedule(self, num_data: int) -> Schedule:
        """All the data every step, ``max_iter + 1`` steps, stopping on the change of the bound per datum; with
        ``batch_size``, ``max_iter`` minibatches drawn without replacement, every one of them run."""
        if self.batch_size is not None:
            return Schedule(self.max_iter, batch_size=self.batch_size)
        return Schedule(self.max_iter + 1, stopping=Change(self._tol, to_resolution=self.tol is None),
                        evaluates_ahead=True)

    @property
    def _tol(self):
        """The tolerance per datum: ``tol``, or ``DEFAULT_TOL`` for None."""
        return DEFAULT_TOL if self.tol is None else self.tol

    # --- the algorithm ------------------------------------------------------------------------------

    @compiled_outside_traces
    def init(self, model: Model, key: jax.Array, data: PyTree, params: PyTree | None = None, *,
             local_posterior=None, num_data: int | None = None) -> CAVIState:
        r"""The state before the first iteration: θ from ``model.init`` (or ``params``); every factor its prior
        (read off ``log_prior``), then one round of global updates from a random local q (``CAVI(start)``), or from
        ``local_posterior`` (an exact-posterior object for the local latent) when given. With ``batch_size``, from
        B data drawn uniformly with ``key`` (the first B with a ``local_posterior``, which is theirs), scaled to
        ``num_data`` (default: the data's N; a stream's first minibatch stands for more, ``jaxvi.run.stream``). The
        first B alone started every component among the first rows: scikit-learn's wine, sorted by class, fitted by
        a mixture of 6 with batches of 32, ended with one component holding 70-78% of the weight and a bound 64-96
        nats below the batch fit's; from rows drawn so, 14-65 nats either side of it (three keys)."""
        init_key, local_key = jax.random.split(key)
        params = model.init(init_key, data) if params is None else params
        structure = _structure(model)
        dtype = float_dtype(data)
        factors, prior_residuals = self._prior_factors(structure, params, dtype)
        checks, proper = [prior_residuals], _proper(structure, factors)
        if structure.local_factors is not None:  # on the first 8 data, the global factors at their priors
            checks.append(self._local_residuals(model, structure, params, factors, _head(data), dtype))
        scale = 1.0
        if self.batch_size is not None:  # the first global updates from one minibatch, scaled to all the data
            size = min(self.batch_size, num_data_of(data))
            scale = (num_data_of(data) if num_data is None else num_data) / size
            rows = (jnp.arange(size) if local_posterior is not None
                    else minibatch(jax.random.fold_in(key, 1), num_data_of(data), size))
            data = jax.tree_util.tree_map(lambda a: a[rows], data)
        post = self._initial_local(model, structure, params, factors, data, local_key, local_posterior)
        factors, residual = self._global_updates(model, structure, params, factors, data, post, scale, checked=True)
        linearity = jnp.max(jnp.concatenate([jnp.ravel(c).astype(dtype) for c in checks + [residual]]))
        linearity = jnp.where(jnp.all(proper), linearity, jnp.inf)  # an improper prior's reads may be NaN
        minus_inf = jnp.array(-jnp.inf, dtype)
        local = None if self.batch_size is not None else _stored(post)
        return CAVIState(params, factors, params, factors, minus_inf, linearity, local, jnp.zeros((), jnp.int32))

    def _prior_factors(self, structure: _Structure, params, dtype) -> tuple[tuple, jax.Array]:
        """Every factor's prior, its natural parameters read off ``log_prior`` (the others at their reference
        members; a factor held about an anchor read twice, the second time about the first read's), and the reads'
        linearity residuals: checked at one point more than a read needs, values included."""
        references = _references(structure, dtype)
        rules = structure.rules(references)
        factors, residuals = [], []
        for j, f in enumerate(structure.factors):
            prior = lambda z_j, j=j: expfam.expect_product(  # noqa: E731
                lambda *others: structure.log_prior(params, _insert(others, j, z_j)), tuple(_drop(rules, j)))
            about = expfam.anchor(f.family, references[j])
            if about is not None:  # read about the prior's own mean, found by a first read (its mean alone is used):
                # about the reference's (0), a Normal-Wishart's prior is b0 m0 m0^T + W0^-1 in one sum, and float32
                # lost W0^-1 to it 300 units out
                first, _, _, about = expfam.read_about(prior, f.family, references[j], f.read_points, values=False)
                about = expfam.anchor(f.family, expfam.from_natural(f.family, first, about))
            eta, _, residual, about = expfam.read_about(prior, f.family, references[j], f.read_points + 1,
                                                        about=about)
            factors.append(tuple(e.astype(dtype) for e in expfam.from_natural(f.family, eta, about)))
            residuals.append(jnp.maximum(*residual))
        return tuple(factors), jnp.stack(residuals) if residuals else jnp.zeros((0,), dtype)

    def _initial_local(self, model, structure, params, factors, data, key, local_posterior, draw: bool = True):
        """The local q the first global updates start from: ``local_posterior`` if given; with ``start="random"``,
        responsibilities drawn from Dirichlet(1) per datum; else the local q that is exact (fitted, for local
        exponential-family factors) under one start of the global factors (``_start_rules``). Several ``Markov``
        chains: one sweep under that start, from random step weights. None without a local latent. ``draw=False``
        (the probe, which needs a local q, not a random one): the global factors' means, so that JAX's Gamma sampler
        is not compiled there too."""
        local = structure.parts.local
        dtype = float_dtype(data)
        layout = structure.local_factors
        if layout is not None and local_posterior is not None:  # its carried factors, fitted to the factors given
            expected = structure.expected_log_joint(model, structure.rules(factors))
            return self._local_factors(layout, expected, params, local_posterior, dtype)
        if layout is None and (local is None or local_posterior is not None):
            return local_posterior
        if self.start == "random" and layout is None and structure.chains is None:
            n, values = num_data_of(data), exact.latent_values(local)
            m = jax.tree_util.tree_leaves(values)[0].shape[0]
            probs = jax.random.dirichlet(key, jnp.ones(m, dtype), (n,))
            return exact.DiscretePosterior(_log_responsibilities(probs), jnp.zeros(n, dtype), values)
        if self._start_of(local, data) == "kmeans" and draw and layout is None and structure.chains is None:
            return _kmeans_start(local, data, key, dtype)
        expected = structure.expected_log_joint(model, _start_rules(structure.factors, factors, key, draw))
        if layout is not None:
            start = local_factors.reference(layout, num_data_of(data), dtype)
            _, post = self._fit_local_factors(layout, expected, params, data, start, dtype)
            return post
        if structure.chains is not None:
            start_key = jax.random.fold_in(key, len(factors))
            table = chains.tables(expected, params, data, structure.chains, self.chunk_size)
            return chains.sweep(table, chains.initial(start_key, data, structure.chains, dtype))
        return exact.posterior(expected, local, params, data, self.chunk_size)

    def _start_of(self, local, data: PyTree) -> str:
        """The start ``CAVI(start)`` names; for ``"auto"``, ``"kmeans"`` where the local latent is ``Discrete`` or one
        ``Markov`` chain and the data are real-valued, else ``"prior"``."""
        if self.start != "auto":
            return self.start
        clusters = isinstance(local, Markov) or (local is not None and all_discrete(local))
        return "kmeans" if clusters and not _dtypes_not_real(local, data) else "prior"

    def step(self, model: Model, key: jax.Array, state: CAVIState, batch: PyTree, *, num_data
             ) -> tuple[CAVIState, CAVIInfo]:
        """One iteration on all the data: the local step (its bound is the info's objective), the global
        updates in turn, then the M-step on θ. ``key`` is unused (CAVI is deterministic). With ``batch_size``: the
        local q of the minibatch ``batch`` (a ``jaxvi.Batch`` or its rows; ``num_data`` = N), its estimate of the
        bound (the objective), a natural-gradient step of every global factor."""
        structure = _structure(model)
        dtype = state.bound.dtype
        scale, rho = 1.0, None
        if self.batch_size is None:
            data = full_data(batch, num_data, "CAVI")
        else:
            _, data = batch_rows(batch, num_data, None)
            scale = num_data / num_data_of(data)
            tau0, kappa = self.step_size
            rho = (tau0 + state.count + 1.0) ** -kappa
        bound, post = self._local_step(model, structure, state.params, state.factors, data, state.local, scale,
                                       passes=self.max_iter + 1)
        bound = bound.astype(dtype)
        ok = jnp.isfinite(bound)

        def move():
            factors, residual = self._global_updates(model, structure, state.params, state.factors, data, post,
                                                     scale, rho)
            params = state.params if rho is not None else self._m_step(model, structure, state.params, factors,
                                                                         data, post)
            return params, factors, residual.astype(dtype)

        params, factors, residual = lax.cond(ok, move, lambda: (state.params, state.factors, jnp.zeros((), dtype)))
        leaf_finite = leaves_finite((params, factors))
        moved = ok & jnp.all(leaf_finite)
        kind = jnp.where(ok, jnp.where(moved, NO_FAULT, FAULT_PARAMS), FAULT_LOG_EVIDENCE)
        index = jnp.where(kind == FAULT_PARAMS, jnp.argmin(leaf_finite), -1)
        fault = Fault(jnp.array(-1, jnp.int32), kind.astype(jnp.int32), index.astype(jnp.int32),
                      jnp.array(-1, jnp.int32))
        local = None if state.local is None else _stored(post)  # none kept between minibatches
        kept_params, kept_factors, kept_local = tree_where(moved, (params, factors, local),
                                                           (state.params, state.factors, state.local))
        evaluated_params, evaluated_factors = tree_where(ok, (state.params, state.factors),
                                                         (state.evaluated_params, state.evaluated_factors))
        new_state = CAVIState(
            params=kept_params, factors=kept_factors, evaluated_params=evaluated_params,
            evaluated_factors=evaluated_factors, bound=jnp.where(ok, bound, state.bound),
            linearity=jnp.maximum(state.linearity, jnp.where(moved, residual, 0.0)), local=kept_local,
            count=state.count + 1)
        return new_state, CAVIInfo(bound, fault)

    @compiled_outside_traces
    def finalize(self, model: Model, key: jax.Array, state: CAVIState, data: PyTree) -> Result:
        """The last evaluated θ and factors and their bound (no further step), the local gap and, without
        ``Global`` latents, the exact log evidence."""
        structure = _structure(model)
        if self.batch_size is not None:  # the minibatch estimates were noisy: the bound on all the data, at the end
            objective = self._local_step(model, structure, state.params, state.factors, data)[0].astype(
                state.bound.dtype)
            state = state._replace(bound=objective, evaluated_params=state.params, evaluated_factors=state.factors)
        objective = state.bound
        gap = jnp.zeros_like(objective)
        if structure.local_factors is not None:  # no exact local evidence to set the bound against
            gap = jnp.full_like(objective, jnp.nan)
        if structure.chains is not None:
            rules = structure.rules(state.evaluated_factors)
            table = chains.tables(structure.expected_log_joint(model, rules), state.evaluated_params, data,
                                  structure.chains, self.chunk_size)
            exact_local = chains.exact_log_normaliser(table, structure.chains.sizes, state.local.lengths)
            gap = (sum_accurately(exact_local) - sum_accurately(state.local.bound)).astype(objective.dtype)
        log_evidence = objective + gap if not structure.factors else jnp.full_like(objective, jnp.nan)
        diagnostics = CAVIDiagnostics(state.linearity, log_evidence, gap, final_fault(objective, state.evaluated_params),
                                      objective[None], jnp.array(0, jnp.int32), state.evaluated_factors)
        return Result(state.evaluated_params, objective, objective[None], jnp.array(0, jnp.int32), jnp.array(False),
                      diagnostics, model, self)

    def posterior(self, result: Result, data: PyTree | None = None) -> CAVIPosterior:
        """The fitted q: the global factors as distributions, and the local q of ``data`` given them."""
        structure = _structure(result.model)
        fitted = [Factor(f.spec, tuple(eta)) for f, eta in zip(structure.factors, result.diagnostics.factors)]
        nodes, start = [], 0
        for treedef, count in structure.node_treedefs:
            nodes.append(jax.tree_util.tree_unflatten(treedef, fitted[start:start + count]))
            start += count
        parts = structure.parts  # the latent's structure, each Global node its fitted factors, local leaves None
        globals_ = jax.tree_util.tree_unflatten(parts.treedef, [nodes.pop(0) if is_global else None
                                                                for is_global in parts.is_global])
        local = None
        if structure.parts.local is not None and data is not None:
            local = _compiled_local_q(result.model, _local_step_fields(self, structure), result.params,
                                      result.diagnostics.factors, data)
            layout = structure.local_factors
            if layout is not None:  # every datum's factors, as distributions
                local = jax.tree_util.tree_unflatten(layout.treedef, [Factor(f.spec, tuple(eta))
                                                                      for f, eta in zip(layout.factors, local)])
        return CAVIPosterior(globals_, local)

    def bound(self, model: Model, params: PyTree, factors: tuple, data: PyTree, local_posterior=None) -> jax.Array:
        r"""The bound :math:`E_q[\log p_\theta(D, z)] + H[q]` at any q: the global ``factors`` (natural parameters,
        as in ``CAVIState.factors``) and the local ``local_posterior`` (a ``DiscretePosterior`` for a
        ``Discrete`` local latent; None: the optimal local q, the bound a step reports). Compiled once per model
        and local step (``_local_step_fields``)."""
        data = check_new_data(model, params, data)
        structure = _structure(model)
        if local_posterior is not None and not isinstance(local_posterior, (chains.ChainProduct,
                                                                            exact.DiscretePosterior)):
            raise ValueError(f"local_posterior: expected a DiscretePosterior, a ChainProduct or None, got "
                             f"{type(local_posterior).__name__}")
        if local_posterior is not None and structure.local_factors is not None:
            raise ValueError("local_posterior: CAVI.bound takes no local q for local exponential-family factors; "
                             "pass None for the bound at the optimal local q")
        if structure.parts.local is None:  # nothing for a local q to describe
            local_posterior = None
        return _compiled_bound(model, _local_step_fields(self, structure), params, factors, data, local_posterior)

    def _bound(self, model: Model, params: PyTree, factors: tuple, data: PyTree, local_posterior=None) -> jax.Array:
        """``bound``, traced (its arguments checked by ``bound``, ``local_posterior`` None without a local latent)."""
        structure = _structure(model)
        if local_posterior is None:
            return self._local_step(model, structure, params, factors, data)[0]
        if isinstance(local_posterior, chains.ChainProduct):
            rules = structure.rules(factors)
            data_term = local_posterior.expected_log_joint(structure.expected_log_joint(model, rules), params, data,
                                                           self.chunk_size)
            return (data_term + sum_accurately(jnp.sum(local_posterior.entropy, axis=1))
                    + structure.global_terms(model, params, factors, rules))
        rules = structure.rules(factors)
        probs = local_posterior.probs
        local_entropy = -jnp.sum(jnp.where(probs > 0, probs * local_posterior.log_probs, 0.0))
        data_term = exact.expected_log_joint(structure.expected_log_joint(model, rules), params, data,
                                             local_posterior, self.chunk_size)
        return data_term + local_entropy + structure.global_terms(model, params, factors, rules)

    # --- the three steps ------------------------------------------------------------------------------

    def _local_step(self, model: Model, structure: _Structure, params, factors, data, start=None, scale=1.0,
                    passes: int = 1):
        """(the bound, the local q) at the global factors ``factors``: the local q is the exact posterior of the
        expected log-joint, whose normalisers sum to the data's part of the bound (times ``scale``, N / B for a
        minibatch). Several ``Markov`` chains: one sweep of their updates from ``start``, or without one, sweeps
        from random step weights until the bound per datum changes by less than ``tol`` (at most ``max_iter``).
        Local exponential-family factors: swept to ``local_tol`` from their reference members, every step afresh (as
        scikit-learn's and gensim's LDA E-steps start every document), every datum then keeping the q it carried in
        (``start``, the last step's) where that is higher, so that the bound never falls. Swept from the carried q
        instead, LDA's documents stayed near their early assignments: on 120 of gensim's Lee documents (K = 10), from
        the same topics, the fits ended at perplexity 919-953 (four starts) against 831-871 (scikit-learn's algorithm:
        853), and on a corpus drawn from LDA (K = 6) none found a topic within 0.5 (L1) of a true one. A ``Markov``
        chain's posterior, one of ``passes`` over these data, runs in probability space where that repays its
        compile (``exact.differentiable_for``; nothing differentiates through it)."""
        rules = structure.rules(factors)
        expected = structure.expected_log_joint(model, rules)
        local = structure.parts.local
        if structure.local_factors is not None:
            layout, dtype = structure.local_factors, float_dtype(data)
            fresh = local_factors.reference(layout, num_data_of(data), dtype)
            bounds, post = self._fit_local_factors(layout, expected, params, data, fresh, dtype)
            if start is not None:
                bounds, post = self._better_of(layout, expected, params, data, start, bounds, post, dtype)
            data_term = sum_accurately(bounds)
        elif structure.chains is not None:
            table = chains.tables(expected, params, data, structure.chains, self.chunk_size)
            if start is None:
                start = chains.initial(jax.random.key(0), data, structure.chains, float_dtype(data))
                post = chains.fit(table, start, self.max_iter, self._tol)
            else:
                post = chains.sweep(table, start)
            data_term = sum_accurately(post.bound)
        elif local is None:
            data_term, post = sum_data(lambda chunk: sum_accurately(jax.vmap(
                lambda x: expected(params, None, x))(chunk)), data, self.chunk_size), None
        else:
            post = exact.posterior(expected, local, params, data, self.chunk_size,
                                   exact.differentiable_for(local, data, passes))
            data_term = sum_accurately(post.log_evidence)
        return scale * data_term + structure.global_terms(model, params, factors, rules), post

    def _local_factors(self, layout, expected, params, carried, dtype) -> local_factors.LocalFactors:
        """The ``LocalFactors`` of ``carried``, its first factor set from ``expected`` at ``params``."""
        return local_factors.LocalFactors(
            carried, layout, lambda encoded, x: layout.datum_joint(expected, params, x)(encoded), dtype)

    def _fit_local_factors(self, layout, expected, params, data, start, dtype):
        """(every datum's local bound, the fitted ``LocalFactors``): the local factors swept from ``start`` (carried
        natural parameters) to ``local_tol``, given the global factors' rules in ``expected``: in exp space where
        ``local_factors.sweeps_in_exp_space`` (in slots where also ``sweeps_in_slots``), else plainly."""
        def joint(x):
            return layout.datum_joint(expected, params, x)

        n = num_data_of(data)
        chunk_size = layout.chunk_size(self.chunk_size, n)
        exp_space = local_factors.sweeps_in_exp_space(layout, n)
        if exp_space and local_factors.sweeps_in_slots(layout, n):
            carried = local_factors.fit_slots(layout, joint, data, start, self.local_tol, self.local_max_iter, dtype,
                                              chunk_size)
            bounds = self._local_bounds(layout, expected, params, data, carried, dtype)
            return bounds, self._local_factors(layout, expected, params, carried, dtype)
        fit = local_factors.fit_chunk if exp_space else local_factors.fit_plainly

        def chunk(pair):
            x, carried = pair
            carried = fit(layout, joint, x, carried, self.local_tol, self.local_max_iter, dtype)
            return jax.vmap(lambda x, c: _datum_bound(layout, expected, params, x, c, dtype))(x, carried), carried

        bounds, carried = map_chunks(chunk, (data, start), chunk_size)
        return bounds, self._local_factors(layout, expected, params, carried, dtype)

    def _local_bounds(self, layout, expected, params, data, carried, dtype) -> jax.Array:
        """Every datum's local bound at its carried local factors (``_datum_bound``), a chunk of data at a time."""
        def datum_bound(x, c):
            return _datum_bound(layout, expected, params, x, c, dtype)

        return map_chunks(lambda pair: jax.vmap(datum_bound)(*pair), (data, carried),
                          layout.chunk_size(self.chunk_size, num_data_of(data)))

    def _better_of(self, layout, expected, params, data, carried, bounds, post, dtype):
        """``(bounds, post)`` with every datum's local q the carried one (``carried``, its first factor completed under
        these global factors) where that bound is higher than the fresh fit's in ``(bounds, post)``."""
        kept = self._local_bounds(layout, expected, params, data, carried, dtype)
        keep = kept > bounds

        def pick(old, new):
            return None if old is None else jnp.where(keep.reshape(keep.shape + (1,) * (old.ndim - 1)), old, new)

        chosen = jax.tree_util.tree_map(pick, carried, post.carried, is_leaf=lambda leaf: leaf is None)
        return jnp.where(keep, kept, bounds), self._local_factors(layout, expected, params, chosen, dtype)

    def _factor_function(self, model, structure, params, factors, data, post, j, scale=1.0):
        """:math:`z_j \\mapsto E_{q_{-j}}[\\log p]` (the data's part under the local q ``post``, times ``scale``: N / B
        for a minibatch), whose coefficients of :math:`T_j` are factor j's optimal natural parameters."""
        others = tuple(_drop(structure.rules(factors), j))

        def fn(z_j):
            def expected(p, z_local, x):
                return expfam.expect_product(
                    lambda *zs: structure.log_joint(model, p, _insert(zs, j, z_j), z_local, x), others)

            if post is None:
                data_term = sum_data(lambda chunk: jnp.sum(jax.vmap(lambda x: expected(params, None, x))(chunk)),
                                     data, self.chunk_size)
            else:
                data_term = exact.expected_log_joint(expected, params, data, post, self.chunk_size)
            prior_term = expfam.expect_product(lambda *zs: structure.log_prior(params, _insert(zs, j, z_j)), others)
            return scale * data_term + prior_term

        return fn

    def _global_updates(self, model, structure, params, factors, data, post, scale=1.0, rho=None, checked=False
                        ) -> tuple[tuple, jax.Array]:
        r"""Every global factor set to its optimum in turn, given the others (the newest) and the local q;
        and the worst linearity residual of the reads (``checked``: each read at one point more than it needs, so
        that the residual tests the linearity, as ``init`` reads). On a minibatch (``scale`` = N / B), each factor
        moves a step ``rho`` toward the optimum its minibatch estimates, in natural parameters:
        :math:`\eta \leftarrow (1 - \rho)\, \eta + \rho\, \hat\eta` (a natural-gradient step; Hoffman et al. 2013)."""
        factors, worst = list(factors), jnp.zeros(())
        for j, f in enumerate(structure.factors):
            fn = self._factor_function(model, structure, params, tuple(factors), data, post, j, scale)
            eta, _, residual, about = expfam.read_about(fn, f.family, factors[j], f.read_points + int(checked),
                                                        values=False)
            if rho is not None:  # both in the natural parameters of the value less the factor's anchor
                before = expfam.to_natural(f.family, factors[j], about)
                eta = tuple((1 - rho) * b + rho * e for e, b in zip(eta, before))
            eta = expfam.from_natural(f.family, eta, about)
            factors[j] = tuple(e.astype(old.dtype) for e, old in zip(eta, factors[j]))
            worst = jnp.maximum(worst, jnp.maximum(*residual))
        return tuple(factors), worst

    def _m_step(self, model, structure, params, factors, data, post):
        """θ raised on the bound with q fixed (L-BFGS, kept only if it rises); θ unchanged without floating
        leaves."""
        leaves = jax.tree_util.tree_leaves(params)
        if not leaves or not all(jnp.issubdtype(jnp.result_type(a), jnp.floating) for a in leaves):
            return params
        rules = structure.rules(factors)
        expected = structure.expected_log_joint(model, rules)

        def prior(p):
            return (expfam.expect_product(lambda *zs: structure.log_prior(p, zs), rules)
                    + model.total_log_prior(p))

        if post is None:  # no local latent: a posterior of one value per datum carries the sum over the data
            n = num_data_of(data)
            post = exact.DiscretePosterior(jnp.zeros((n, 1)), jnp.zeros(n), jnp.zeros(1, jnp.int32))
            surrogate = SimpleNamespace(log_joint=lambda p, z, x: expected(p, None, x), total_log_prior=prior)
        else:
            surrogate = SimpleNamespace(log_joint=expected, total_log_prior=prior)
        new, _ = gradient_m_step(surrogate, params, data, post, optax.lbfgs(), self.m_step_iters, self.chunk_size)
        return new


@functools.partial(per_fit, options=CHEAP_CODE)
def _compiled_probe(model: Model, method: CAVI, data: PyTree):
    """``CAVI._probe`` compiled once per model and method structure, like the fit itself; run once, to name what a
    start's reads refused, so compiled for XLA's cheapest code (``CHEAP_CODE``). ``method`` keeps only the fields the
    probe reads (``start``, ``chunk_size``), so that fits differing in the others (a batch fit and an online one)
    share its code."""
    return method._probe(model, data)


def _keeping(method: CAVI, *fields: str) -> CAVI:
    """``method`` with only ``fields`` kept, the others at their defaults: code compiled for it (keyed on the method's
    structure) serves every fit that differs in the others only."""
    return CAVI(**{name: getattr(method, name) for name in fields})


def _local_step_fields(method: CAVI, structure: _Structure) -> CAVI:
    """``_keeping`` the fields the local step reads (``chunk_size``, ``local_tol``, ``local_max_iter``; with several
    Markov chains ``max_iter`` and ``tol`` too): a bound or a local q compiled for it serves every fit of the model
    that differs in the others (a batch fit and an online one)."""
    chains_fields = ("max_iter", "tol") if structure.chains is not None else ()
    return _keeping(method, "chunk_size", "local_tol", "local_max_iter", *chains_fields)


@per_fit
def _compiled_bound(model: Model, method: CAVI, params, factors, data, local_posterior):
    """``CAVI.bound`` compiled once per model and local step (``_local_step_fields``)."""
    return method._bound(model, params, factors, data, local_posterior)


@per_fit
def _compiled_local_q(model: Model, method: CAVI, params, factors, data):
    """The local q of ``data`` at the global ``factors`` (``CAVI._local_step``; local exponential-family factors as
    every datum's natural parameters), compiled once per model and local step (``_local_step_fields``)."""
    local = method._local_step(model, _structure(model), params, factors, data)[1]
    if isinstance(local, local_factors.LocalFactors):  # every datum's natural parameters (it closes over a function)
        return map_data(lambda chunk: local.factors(*chunk), (data, local.carried), method.chunk_size)
    return local


def _proper(structure: _Structure, factors: tuple) -> jax.Array:
    """Per global factor: whether its natural parameters (``factors``, a prior's) have a finite log-normaliser (a
    proper member of its family)."""
    finite = [jnp.all(jnp.isfinite(expfam.log_normalizer(f.family, eta))) for f, eta in zip(structure.factors, factors)]
    return jnp.stack(finite) if finite else jnp.zeros((0,), bool)


def _head(data: PyTree) -> PyTree:
    """The first 8 data (all, where fewer): what the conjugacy checks of local factors read."""
    return jax.tree_util.tree_map(lambda a: a[:min(8, a.shape[0])], data)


def _stored(post):
    """What a state keeps of a step's local q: the carried local factors, the chains' product, or nothing (an exact
    local q, recomputed from the global factors)."""
    if isinstance(post, local_factors.LocalFactors):
        return post.carried
    return post if isinstance(post, chains.ChainProduct) else None


def _point_rule(value) -> expfam.Quadrature:
    """The rule of a point mass at ``value`` (family layout): E[f] = f(value)."""
    return expfam.Quadrature(value[None], None, jnp.zeros((), value.dtype))


def _datum_bound(layout, expected, params, x, carried: tuple, dtype) -> jax.Array:
    """The datum ``x``'s local bound (``local_factors.bound``) at its carried local factors, the first completed from
    them under the expected log-joint ``expected`` (of the global factors' rules) at ``params``."""
    fn, counts = layout.datum_joint(expected, params, x), layout.multiplicities(x)
    return local_factors.bound(layout, fn, local_factors.complete(layout, fn, carried, dtype, counts), counts)


def _start_rules(factors: tuple[FactorSpec, ...], etas: tuple, key: jax.Array, draw: bool = True) -> tuple:
    r"""Where a fit's first local q is fitted: every global factor at one draw from ``etas`` (their priors), a point
    (``_point_rule``); but a Dirichlet factor at a random member near uniform, concentrations drawn from
    Gamma(100, 1/100) (scikit-learn's and gensim's start of LDA's topics), as a draw from a Dirichlet of small
    concentrations (LDA's topic prior, a mixture's weights) is sparse: an LDA fit started at a draw of its topics
    began from a random partition of the vocabulary and ended far below one started near uniform (120 of gensim's Lee
    documents, K = 10: perplexity 1,375-1,402 against 822-853 over three keys; scikit-learn 825-839), and a Bayesian
    mixture started at drawn weights lost most of its components (two clusters, K = 4: four keys of four ended with
    one). ``draw=False``: every factor at its mean (no random start: CAVI's probe)."""
    if not factors:
        return ()
    if not draw:
        return tuple(_point_rule(value) for value in _means(factors, etas))
    draws = _draws(factors, etas, key)
    keys = jax.random.split(jax.random.fold_in(key, len(factors) + 1), len(factors))
    rules = []
    for f, value, near_key in zip(factors, draws, keys):
        if f.family is expfam.DIRICHLET:
            concentration = jax.random.gamma(near_key, 100.0, value.shape, value.dtype) / 100.0
            rules.append(expfam.quadrature(f.family, (concentration - 1.0,)))
        else:
            rules.append(_point_rule(value))
    return tuple(rules)


def _check_kmeans_start(local, chain_layout, local_layout, data) -> None:
    """Raises ValueError where ``CAVI(start="kmeans")`` has nothing to cluster: a local latent other than a
    ``Discrete`` pytree or one ``Markov`` chain, data not all real-valued, fewer data (real steps) than the latent
    has values."""
    if local is None or chain_layout is not None or local_layout is not None or not (
            isinstance(local, Markov) or all_discrete(local)):
        raise ValueError(f"CAVI(start='kmeans'): k-means responsibilities need a Discrete local latent or one Markov "
                         f"chain, got {local!r}; use start='prior'")
    if data is None:
        return
    if _dtypes_not_real(local, data):
        raise ValueError(f"CAVI(start='kmeans'): k-means clusters real-valued data, got dtypes "
                         f"{_dtypes_not_real(local, data)}; use start='prior'")
    if is_traced(data):
        return
    if isinstance(local, Markov):
        clusters, rows, what = local.K, int(np.sum(exact.chain.split_sequences(data)[1])), "steps"
    else:
        clusters, rows, what = len(np.asarray(jax.tree_util.tree_leaves(exact.latent_values(local))[0])), \
            num_data_of(data), "data"
    if rows < clusters:
        raise ValueError(f"CAVI(start='kmeans'): k-means of {clusters} clusters needs at least {clusters} {what}, got "
                         f"{rows}; use start='prior'")


def _dtypes_not_real(local, data: PyTree) -> list[str]:
    """The dtypes of the data's leaves (a chain's observations, without their lengths) if any is not floating, else
    none: what k-means would cluster."""
    leaves = jax.tree_util.tree_leaves(exact.chain.split_sequences(data)[0] if isinstance(local, Markov) else data)
    dtypes = [jnp.result_type(leaf) for leaf in leaves]
    return [] if all(jnp.issubdtype(d, jnp.floating) for d in dtypes) else [str(d) for d in dtypes]


def _kmeans_start(local, data: PyTree, key: jax.Array, dtype) -> exact.DiscretePosterior | exact.ChainPosterior:
    r"""``CAVI(start="kmeans")``'s first local q: hard responsibilities, every datum (every real step of a ``Markov``
    chain) on its nearest center of k-means (greedy k-means++ seeds, Lloyd's rounds: ``jaxvi.kmeans``; for a chain the
    best of ``CHAIN_INITS`` runs, as hmmlearn's) of the data's leaves flattened and side by side, one cluster per value
    of the latent; the other values at the smallest positive float. A chain's q is the chain whose step potentials are
    those log-responsibilities (:math:`\phi_t(i, j) = \log r_t(j)`): its marginals are the responsibilities, its pair
    marginals their products."""
    if isinstance(local, Markov):
        obs, real = exact.chain.real_steps(data)  # padding may hold anything: zeroed, and left out of the clustering
        n, t = real.shape
        labels = _nearest_centers(key, _feature_rows(obs, 2, dtype), local.K, real.reshape(-1), kmeans.CHAIN_INITS)
        log_r = _log_responsibilities(jax.nn.one_hot(labels, local.K, dtype=dtype)).reshape(n, t, 1, local.K)
        return exact.chain.from_potentials(jnp.broadcast_to(log_r, (n, t, local.K, local.K)),
                                           exact.chain.split_sequences(data)[1])
    values = exact.latent_values(local)
    m = jax.tree_util.tree_leaves(values)[0].shape[0]
    log_r = _log_responsibilities(jax.nn.one_hot(_nearest_centers(key, _feature_rows(data, 1, dtype), m), m,
                                                 dtype=dtype))
    return exact.DiscretePosterior(log_r, jnp.zeros(log_r.shape[0], dtype), values)


def _feature_rows(data: PyTree, axes: int, dtype) -> jax.Array:
    """The data's leaves as rows of features: the leading ``axes`` axes (data; data and steps) flattened into rows,
    the rest into features, every leaf's side by side."""
    leaves = jax.tree_util.tree_leaves(data)
    rows = int(np.prod(leaves[0].shape[:axes]))
    return jnp.concatenate([jnp.reshape(leaf, (rows, -1)).astype(dtype) for leaf in leaves], axis=1)


def _nearest_centers(key: jax.Array, rows: jax.Array, k: int, weights: jax.Array | None = None, n_init: int = 1
                     ) -> jax.Array:
    """Every row's nearest of the ``k`` centers k-means finds, the best of ``n_init`` runs (rows of weight 0 left out
    of the clustering)."""
    return kmeans.nearest(rows, kmeans.kmeans(key, rows, k, weights, n_init=n_init))


def _log_responsibilities(probs: jax.Array) -> jax.Array:
    """log ``probs``, a 0 at the smallest positive float's log (a start's responsibilities, hard or drawn)."""
    return jnp.log(jnp.maximum(probs, jnp.finfo(probs.dtype).tiny))


def _references(structure: _Structure, dtype) -> tuple:
    """Every factor's broad reference member (``FactorSpec.reference``)."""
    return tuple(tuple(jnp.asarray(e, dtype) for e in f.reference(dtype)) for f in structure.factors)


def _insert(values: tuple, j: int, value) -> tuple:
    values = list(values)
    values.insert(j, value)
    return tuple(values)


def _drop(values, j: int) -> list:
    return [v for k, v in enumerate(values) if k != j]


def _draws(factors: tuple[FactorSpec, ...], etas: tuple, key: jax.Array) -> tuple:
    """One draw of each factor, in its family's layout (``sample_factors``: one Gamma sampler for them all)."""
    values = sample_factors(tuple(Factor(f.spec, tuple(eta)) for f, eta in zip(factors, etas)), key)
    return tuple(_encoded(f, value) for f, value in zip(factors, values))


def _means(factors: tuple[FactorSpec, ...], etas: tuple) -> tuple:
    """Each factor's mean E_q[z], in its family's layout."""
    return tuple(_encoded(f, Factor(f.spec, tuple(eta)).mean()) for f, eta in zip(factors, etas))


def _encoded(factor: FactorSpec, value) -> jax.Array:
    """A draw as ``log_joint`` receives it, in the family's layout (``factors.encoded``: a Normal-Wishart's
    (mean, precision) as [mean - center | precision])."""
    value = encoded(factor.spec, value)
    if factor.family is expfam.DIRICHLET:  # a draw under small concentrations underflows to 0, and log 0 = -inf
        return jnp.maximum(value, jnp.finfo(value.dtype).tiny)
    return value


def _leaf_names(model: Model, local: bool = False) -> list[str]:
    """A readable path of every global leaf (``local``: of every local leaf), for messages."""
    parts = split_latent(model.latent)
    if local:
        paths = jax.tree_util.tree_flatten_with_path(parts.local, is_leaf=is_spec)[0]
        return [f"z{jax.tree_util.keystr(path)} ({spec!r})" for path, spec in paths]
    names = []
    for i, node in enumerate(parts.globals):
        for path, _ in jax.tree_util.tree_flatten_with_path(node.latent, is_leaf=is_spec)[0]:
            prefix = f"Global #{i}" if len(parts.globals) > 1 else "Global"
            names.append(f"{prefix}{jax.tree_util.keystr(path)}")
    return names

