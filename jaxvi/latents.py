"""Latent specifications: what kind of value ``z`` is, and so which exact posterior exists.

A model's ``latent`` is one spec or a pytree of specs (a tuple or dict of several). The spec is
static: it fixes shapes and the E-step algorithm before anything is traced.
"""
from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

__all__ = ["Beta", "Dirichlet", "Discrete", "EXPONENTIAL_FAMILY_SPECS", "Gamma", "Gaussian", "Global", "LatentParts",
           "MAX_ENUMERATED_TABLE", "MAX_ENUMERATED_VALUES", "Markov", "NormalGamma", "NormalWishart", "OneHot", "Real",
           "Wishart", "all_discrete", "check_enumeration", "discrete_sizes", "exact_family", "is_spec", "num_values",
           "split_latent", "value_shape"]

MAX_ENUMERATED_VALUES = 2 ** 20  # joint values of a Discrete latent enumerated for one datum (a table row)
MAX_ENUMERATED_TABLE = 2 ** 28   # elements (data x values x draws) of a table held at once: 1 GiB of float32


@dataclasses.dataclass(frozen=True)
class Discrete:
    """A discrete latent: ``z`` is an integer in ``[0, K)``.

    The exact posterior is found by enumeration: the log-joint is evaluated at every value of
    ``z`` and normalised with ``logsumexp``. A pytree of several ``Discrete`` specs is enumerated
    over the product of their values.

    Args:
      K: the number of values, an integer >= 1.

    Example:
      >>> jaxvi.Discrete(3)
      Discrete(K=3)
    """

    K: int

    def __post_init__(self):
        object.__setattr__(self, "K", _positive_int("Discrete(K)", self.K))


@dataclasses.dataclass(frozen=True)
class Markov:
    r"""A chain of discrete states :math:`z_0 .. z_{T-1}`, each in ``[0, K)``, over one sequence datum.

    The datum is a whole sequence: every leaf of the data has shape ``(N, T, ...)`` (sequences,
    time, ...), or the data are ``jaxvi.Sequences(obs, lengths)`` for sequences of unequal length.
    The model's ``log_joint(params, z, x)`` is the log-joint of ONE step,

    .. math:: \log p_\theta(x_t, z_t \mid z_{t-1}) \quad\text{with}\quad z = (z_{t-1}, z_t),

    where ``x`` is the observation at step t and ``z_{t-1}`` is ``None`` at the first step (so the
    same function gives the initial term :math:`\log p_\theta(x_0, z_0)`). The log-joint of a
    sequence is the sum over its steps. jaxvi evaluates the step on all K x K state pairs by vmap
    and runs forward–backward in log space.

    Args:
      K: the number of states, an integer >= 1.
      parallel: False runs the forward and backward recursions as one sequential ``lax.scan`` over
        time for all sequences at once (O(T) depth, O(T K^2) work), the faster one on CPUs; True
        as a parallel prefix scan of K x K log-matrix products per sequence (recursive doubling:
        O(log T) depth, O(T log T K^3) work), the faster one on accelerators.

    Example:
      >>> def log_joint(params, z, x):
      ...     prev, state = z
      ...     log_move = (jax.nn.log_softmax(params["start"]) if prev is None
      ...                 else jax.nn.log_softmax(params["trans"][prev]))[state]
      ...     return log_move + jax.scipy.stats.norm.logpdf(x, params["loc"][state]).sum()
      >>> model = jaxvi.Model(log_joint, jaxvi.Markov(3), init=...)
    """

    K: int
    parallel: bool = False

    def __post_init__(self):
        object.__setattr__(self, "K", _positive_int("Markov(K)", self.K))
        if not isinstance(self.parallel, bool):
            raise ValueError(f"Markov(parallel): expected True or False, got {self.parallel!r}")


@dataclasses.dataclass(frozen=True)
class Gaussian:
    r"""A real latent vector :math:`z \in \mathbb{R}^d` that enters the log-joint quadratically.

    If :math:`\log p_\theta(x, z) = c + g^\top z - \tfrac12 z^\top \Lambda z` with
    :math:`\Lambda` positive definite (factor analysis, probabilistic PCA, linear-Gaussian models),
    the posterior is exactly :math:`N(\Lambda^{-1} g, \Lambda^{-1})` and the evidence is a Gaussian
    integral. jaxvi reads :math:`c, g, -\Lambda` off the log-joint's value, gradient and Hessian in
    ``z`` at ``z = 0`` and checks the expansion at two more points; a log-joint that is not
    quadratic stops the fit with an error.

    Args:
      d: the dimension of z, an integer >= 1.
      laplace: for a log-joint that is NOT quadratic, use the Laplace approximation instead:
        Newton's method finds the mode, the posterior is N(mode, (-Hessian at the mode)^-1) and
        log p(x) is approximated by the Gaussian integral there. The E-step is then approximate:
        log p(D) is approximate and EM's monotone ascent is not guaranteed.
      newton_steps: Newton iterations to the mode (only with ``laplace=True``).

    Example:
      >>> jaxvi.Gaussian(3)
      Gaussian(d=3, laplace=False, newton_steps=20)
    """

    d: int
    laplace: bool = False
    newton_steps: int = 20

    def __post_init__(self):
        object.__setattr__(self, "d", _positive_int("Gaussian(d)", self.d))
        object.__setattr__(self, "newton_steps", _positive_int("Gaussian(newton_steps)", self.newton_steps))
        if not isinstance(self.laplace, bool):
            raise ValueError(f"Gaussian(laplace): expected True or False, got {self.laplace!r}")


@dataclasses.dataclass(frozen=True)
class Real:
    r"""A continuous latent of any shape, for variational inference (no exact E-step).

    ``z = bijector.forward(u)`` for an unconstrained :math:`u \in \mathbb{R}^{shape}`; guides live
    on u and the ELBO adds :math:`\log |\det \partial z / \partial u|`. Without a bijector z is
    unconstrained. A pytree of ``Real`` specs (a dict of named latents) is one latent.

    Args:
      shape: the shape of z, e.g. ``()`` for a scalar or ``(8,)``.
      bijector: a distrax bijector (or anything with ``forward_and_log_det``) onto the support of z,
        applied elementwise or to the whole event of ``shape``: ``distrax.Lambda(jnp.exp)`` or
        ``distrax.Block(distrax.ScalarAffine(...), 1)`` style objects. ``jaxvi.positive()``,
        ``jaxvi.interval(a, b)`` and ``jaxvi.simplex()`` build the common ones.

    Example:
      >>> jaxvi.Real((3,))                              # z in R^3
      >>> jaxvi.Real((), bijector=jaxvi.positive())     # a scale, z > 0
    """

    shape: tuple = ()
    bijector: Any = None

    def __post_init__(self):
        shape = (self.shape,) if isinstance(self.shape, int) and not isinstance(self.shape, bool) else self.shape
        try:
            shape = tuple(operator.index(n) for n in shape)
        except TypeError:
            raise ValueError(f"Real(shape): expected a tuple of integers >= 0, got {self.shape!r}") from None
        if any(n < 0 for n in shape):
            raise ValueError(f"Real(shape): expected a tuple of integers >= 0, got {self.shape!r}")
        object.__setattr__(self, "shape", shape)
        if self.bijector is not None and not hasattr(self.bijector, "forward_and_log_det"):
            raise ValueError(f"Real(bijector): expected a distrax bijector or None, got {self.bijector!r}")


def _shape(name: str, shape) -> tuple:
    shape = (shape,) if isinstance(shape, int) and not isinstance(shape, bool) else shape
    try:
        shape = tuple(operator.index(n) for n in shape)
    except TypeError:
        raise ValueError(f"{name}: expected a tuple of integers >= 1, got {shape!r}") from None
    if any(n < 1 for n in shape):
        raise ValueError(f"{name}: expected a tuple of integers >= 1, got {shape!r}")
    return shape


@dataclasses.dataclass(frozen=True)
class Beta:
    r"""Probabilities :math:`z \in (0, 1)` of a batch ``shape``, each factor of q a Beta (for ``jaxvi.CAVI``).

    Conjugate where the log-joint is linear in :math:`(\log z, \log(1 - z))`: Bernoulli, binomial and
    geometric likelihoods under a Beta prior.

    Example:
      >>> jaxvi.Global({"p": jaxvi.Beta()}, log_prior=lambda params, z: jax.scipy.stats.beta.logpdf(z["p"], 1, 1))
    """

    shape: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "shape", _shape("Beta(shape)", self.shape))


@dataclasses.dataclass(frozen=True)
class Gamma:
    r"""Positive values :math:`z > 0` of a batch ``shape``, each factor of q a Gamma (for ``jaxvi.CAVI``).

    Conjugate where the log-joint is linear in :math:`(\log z, z)`: a Normal's precision, a Poisson's or
    exponential's rate, under a Gamma prior.
    """

    shape: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "shape", _shape("Gamma(shape)", self.shape))


@dataclasses.dataclass(frozen=True)
class Dirichlet:
    r"""Probability vectors over K values (the last axis, summing to one) of a batch ``shape``, each factor
    of q a Dirichlet (for ``jaxvi.CAVI``): mixture weights, the rows of a transition matrix, topics.

    Conjugate where the log-joint is linear in :math:`\log z`: categorical and multinomial likelihoods.
    """

    K: int
    shape: tuple = ()

    def __post_init__(self):
        K = _positive_int("Dirichlet(K)", self.K)
        if K < 2:  # a probability vector over one value is the constant 1: nothing to fit (distrax refuses it too)
            raise ValueError(f"Dirichlet(K): expected an integer >= 2 (probabilities of one value are all 1), got {K}")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "shape", _shape("Dirichlet(shape)", self.shape))


@dataclasses.dataclass(frozen=True)
class Wishart:
    r"""d x d precision matrices (symmetric positive definite) of a batch ``shape``, each factor of q a
    Wishart (for ``jaxvi.CAVI``). Conjugate where the log-joint is linear in :math:`(\Lambda, \log|\Lambda|)`:
    a Normal's precision given its mean."""

    d: int
    shape: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "d", _positive_int("Wishart(d)", self.d))
        object.__setattr__(self, "shape", _shape("Wishart(shape)", self.shape))


@dataclasses.dataclass(frozen=True)
class NormalWishart:
    r"""A Normal's mean and precision together, ``z = (mean, precision)`` with shapes ``shape + (d,)`` and
    ``shape + (d, d)``; each factor of q a Normal-Wishart, :math:`\mu \mid \Lambda \sim N(m, (b\Lambda)^{-1})`,
    :math:`\Lambda \sim W(W, \nu)` (for ``jaxvi.CAVI``): the components of a Bayesian Gaussian mixture, not
    split by mean-field. Conjugate where the log-joint is linear in
    :math:`(\Lambda\mu, \mu^\top\Lambda\mu, \Lambda, \log|\Lambda|)`: Normal likelihoods.

    ``center`` (d numbers, or None for 0): the origin of q's layout, which holds :math:`\mu - c`. Every factor, its
    prior's too, is read and held about its own mean, so float32 keeps :math:`W^{-1}`'s digits wherever the means
    lie (iris at 300 and 1,000, tested); a ``center`` near them (the data's mean, as the zoo's models take) keeps the
    first read of the prior, about the origin, near them too. ``log_joint`` and the fitted factor speak :math:`\mu`."""

    d: int
    shape: tuple = ()
    center: tuple | None = None

    def __post_init__(self):
        object.__setattr__(self, "d", _positive_int("NormalWishart(d)", self.d))
        object.__setattr__(self, "shape", _shape("NormalWishart(shape)", self.shape))
        object.__setattr__(self, "center", _center("NormalWishart(center)", self.center, (self.d,)))


@dataclasses.dataclass(frozen=True)
class NormalGamma:
    r"""A scalar Normal's mean and precision together, ``z = (mean, precision)``, both of shape ``shape``;
    each factor of q a Normal-Gamma, :math:`\mu \mid \tau \sim N(m, (b\tau)^{-1})`, :math:`\tau \sim
    \mathrm{Gamma}(a, r)` (for ``jaxvi.CAVI``): the Normal-Wishart with d = 1, e.g. per dimension of a
    diagonal Gaussian mixture's components. ``center``: as ``NormalWishart``'s, one number or one per entry of
    ``shape``'s last axis."""

    shape: tuple = ()
    center: tuple | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", _shape("NormalGamma(shape)", self.shape))
        object.__setattr__(self, "center", _center("NormalGamma(center)", self.center, (1,), self.shape[-1:] or (1,)))


@dataclasses.dataclass(frozen=True)
class OneHot:
    r"""Categorical values over K, each as a one-hot vector (the last axis), of a batch ``shape``; each factor
    of q a categorical (for ``jaxvi.CAVI``): per-token topic assignments, a plate of indicators.

    ``log_joint`` receives an array of shape ``shape + (K,)`` and must be linear in it, which any function of a
    one-hot vector can be written as (``z @ table`` where an index would pick ``table[index]``). CAVI evaluates
    it at probability vectors (the factors' means), which gives the expectation exactly where every entry of
    the plate enters on its own (it checks that), so a plate of L entries costs one evaluation, not K^L.

    Args:
      K: the number of values.
      shape: the plate's shape (a local latent's: per datum).
      multiplicity: for a bag of counts, ``multiplicity(x) -> array of shape``: how many independent copies of
        its entry (identical tokens, sharing one q) each entry stands for, given the datum x; ``log_joint`` weighs
        each entry's terms by it, and CAVI counts each entry's entropy so many times and reads its update per
        copy. None: one each.

    Example:
      >>> jaxvi.OneHot(20, shape=(100,))  # 100 tokens' topics out of 20
      OneHot(K=20, shape=(100,), multiplicity=None)
    """

    K: int
    shape: tuple = ()
    multiplicity: Callable | None = None

    def __post_init__(self):
        object.__setattr__(self, "K", _positive_int("OneHot(K)", self.K))
        object.__setattr__(self, "shape", _shape("OneHot(shape)", self.shape))
        if self.multiplicity is not None and not callable(self.multiplicity):
            raise ValueError(f"OneHot(multiplicity): expected None or a function x -> counts of shape {self.shape}, "
                             f"got {self.multiplicity!r}")


EXPONENTIAL_FAMILY_SPECS = (Beta, Gamma, Dirichlet, Wishart, NormalWishart, NormalGamma, OneHot)


@dataclasses.dataclass(frozen=True)
class Global:
    r"""A latent shared by all the data (a Bayesian model's unknowns), for variational inference.

    The model is :math:`p_\theta(z) \prod_i p_\theta(x_i \mid z)`: ``log_prior(params, z)`` is
    :math:`\log p_\theta(z)` and the model's ``log_joint(params, z, x)`` is the log-likelihood of
    ONE datum, :math:`\log p_\theta(x_i \mid z)`. On a minibatch of B of the N data, the
    likelihood sum is scaled by N / B, an unbiased estimate.

    Args:
      latent: a ``Real`` spec or a pytree of them (for ``jaxvi.SVI``); or of exponential-family specs
        (``Gaussian``, ``Beta``, ``Gamma``, ``Dirichlet``, ``Wishart``, ``NormalWishart``, ``NormalGamma``,
        ``OneHot``), the factors of ``jaxvi.CAVI``'s q.
      log_prior: ``log_prior(params, z) -> scalar``.

    Example:
      >>> latent = jaxvi.Global({"w": jaxvi.Real((3,))},
      ...                       log_prior=lambda params, z: jax.scipy.stats.norm.logpdf(z["w"]).sum())
    """

    latent: Any
    log_prior: Callable

    def __post_init__(self):
        if not callable(self.log_prior):
            raise ValueError(f"Global(log_prior): expected a function (params, z) -> scalar, got {self.log_prior!r}")
        leaves = jax.tree_util.tree_leaves(self.latent, is_leaf=is_spec)
        if not leaves or not all(isinstance(leaf, (Real, Gaussian) + EXPONENTIAL_FAMILY_SPECS) for leaf in leaves):
            raise ValueError(f"Global(latent): expected a Real spec or a pytree of them, or of exponential-family "
                             f"specs (Gaussian, Beta, Gamma, Dirichlet, Wishart, NormalWishart, NormalGamma, OneHot), got "
                             f"{self.latent!r}")


class LatentParts(NamedTuple):
    """A model's latent split into its shared (``Global``) part and its per-datum (local) part.

    This is the one place that says which parts of a latent pytree are global and which local;
    every method reads it from here.

    Attributes:
      treedef: the latent pytree's structure, with specs (``Global`` nodes included) as leaves.
      is_global: for every leaf, whether it is a ``Global`` node.
      globals: the ``Global`` nodes, in leaf order.
      local: the local latent: the whole latent when there is no global part; else its one local
        spec, or the latent pytree with ``None`` in place of each ``Global`` node; None when every
        leaf is global.
    """

    treedef: Any
    is_global: tuple
    globals: tuple
    local: Any

    def combine(self, z_global, z_local) -> Any:
        """The latent value ``z`` that ``log_joint`` receives from the global value (in the structure
        of ``global_latent``) and one datum's local value, in the latent's structure."""
        if not self.globals:
            return z_local
        if self.local is None:
            locals_ = []
        elif is_spec(self.local):
            locals_ = [z_local]
        else:  # one value per local spec (a Markov chain's value is a (previous, current) pair)
            locals_ = jax.tree_util.tree_structure(self.local, is_leaf=is_spec).flatten_up_to(z_local)
        z_globals, locals_ = self._as_list(z_global), list(locals_)
        leaves = [z_globals.pop(0) if is_global else locals_.pop(0) for is_global in self.is_global]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def global_log_prior(self, params, z_global) -> Any:
        """:math:`\\sum_j \\log p_\\theta(z_j)` over the ``Global`` nodes (each counts once)."""
        return sum(node.log_prior(params, z) for node, z in zip(self.globals, self._as_list(z_global)))

    @property
    def global_latent(self) -> Any:
        """The specs of the global value: the one ``Global`` node's latent, or a list of every node's."""
        if len(self.globals) == 1:
            return self.globals[0].latent
        return [node.latent for node in self.globals]

    def _as_list(self, z_global) -> list:
        return [z_global] if len(self.globals) == 1 else list(z_global)


def split_latent(latent) -> LatentParts:
    """The ``LatentParts`` of a latent pytree.

    Raises:
      ValueError: a ``Global`` node whose latent holds another ``Global``.
    """
    leaves, treedef = jax.tree_util.tree_flatten(latent, is_leaf=is_spec)
    is_global = tuple(isinstance(leaf, Global) for leaf in leaves)
    globals_ = tuple(leaf for leaf in leaves if isinstance(leaf, Global))
    local_leaves = [leaf for leaf in leaves if not isinstance(leaf, Global)]
    if not globals_:
        return LatentParts(treedef, is_global, (), latent)
    if not local_leaves:
        local = None
    elif len(local_leaves) == 1:
        local = local_leaves[0]
    else:
        local = jax.tree_util.tree_unflatten(treedef, [None if g else leaf for g, leaf in zip(is_global, leaves)])
    return LatentParts(treedef, is_global, globals_, local)


def exact_family(latent) -> str:
    """Which exact E-step a latent spec has: ``"discrete"``, ``"markov"`` or ``"gaussian"``.

    Raises:
      ValueError: the latent is not a pytree of ``Discrete`` specs, one ``Markov`` or one ``Gaussian``.
    """
    if isinstance(latent, Markov):
        return "markov"
    if isinstance(latent, Gaussian):
        return "gaussian"
    leaves = jax.tree_util.tree_leaves(latent, is_leaf=is_spec)
    if any(isinstance(leaf, (Real, Global) + EXPONENTIAL_FAMILY_SPECS) for leaf in leaves):
        raise ValueError(f"latent: {latent!r} has no exact posterior (no E-step for Real, Global or local "
                         f"exponential-family latents); fit it with jaxvi.SVI, or with jaxvi.CAVI where the global "
                         f"latents are exponential-family specs in a Global and the local ones are all "
                         f"exponential-family specs (a mean-field q per datum) or have an exact posterior")
    if any(isinstance(leaf, (Markov, Gaussian)) for leaf in leaves):
        raise ValueError(
            f"latent: a Markov or Gaussian spec must be the whole latent (not combined with others) "
            f"for an exact E-step, got {latent!r}; several Markov chains (a factorial HMM) are fitted by jaxvi.CAVI, "
            f"one chain per factor of q (structured mean field)")
    discrete_sizes(latent)
    return "discrete"


def all_discrete(latent) -> bool:
    """Whether the latent pytree ``latent`` has specs and every one is ``Discrete``."""
    leaves = jax.tree_util.tree_leaves(latent, is_leaf=is_spec)
    return bool(leaves) and all(isinstance(leaf, Discrete) for leaf in leaves)


def discrete_sizes(latent) -> tuple[list[int], jax.tree_util.PyTreeDef]:
    """The sizes K of every ``Discrete`` leaf of ``latent`` and the latent's tree structure.

    Raises:
      ValueError: if ``latent`` is empty or a leaf is not a ``Discrete`` spec.
    """
    leaves, treedef = jax.tree_util.tree_flatten(latent, is_leaf=is_spec)
    if not leaves:
        raise ValueError("latent: expected a Discrete spec or a pytree of them, got an empty pytree")
    for leaf in leaves:
        if not isinstance(leaf, Discrete):
            raise ValueError(
                f"latent: exact enumeration needs Discrete specs, got {type(leaf).__name__}: {leaf!r}"
            )
    return [leaf.K for leaf in leaves], treedef


def num_values(latent) -> int:
    """The number of joint values M = prod_j K_j of a ``Discrete`` latent or pytree of them (a Python
    int, from the specs alone)."""
    sizes, _ = discrete_sizes(latent)
    return math.prod(sizes)


def check_enumeration(latent, rows: int, who: str, instead: str = "", draws: int = 1) -> None:
    """Raises ValueError, from the shapes alone and before anything is allocated, when enumerating a
    ``Discrete`` latent would not fit: more than ``MAX_ENUMERATED_VALUES`` joint values per datum, or a
    table of ``rows`` data x M values (x ``draws``, each over all M values) of more than
    ``MAX_ENUMERATED_TABLE`` elements.

    Args:
      rows: how many data the table holds at once.
      who: what holds the table (a method and its setting), for the message.
      instead: what to do instead of a table this large, for the message.
      draws: draws held at once, each over all the values (1: the table of log-joints itself).
    """
    m = num_values(latent)
    if m > MAX_ENUMERATED_VALUES:
        raise ValueError(f"latent: {latent!r} has {m:,} joint values (the product of its Discrete sizes) and {who} "
                         f"holds one entry per datum and value; expected at most {MAX_ENUMERATED_VALUES:,} values "
                         f"per datum (jaxvi.latents.MAX_ENUMERATED_VALUES). Give the latent fewer joint values (a "
                         f"Categorical q, jaxvi.SVI(discrete='guide'), holds a probability per value as well)")
    total = rows * m * draws
    if total > MAX_ENUMERATED_TABLE:
        per = f" x {draws:,} draws" if draws > 1 else ""
        advice = [instead] if instead else []
        if draws > 1 and rows * m <= MAX_ENUMERATED_TABLE:
            advice.append(f"draw at most {MAX_ENUMERATED_TABLE // (rows * m):,} particles (num_particles, "
                          f"num_eval_particles)")
        raise ValueError(f"latent: {who} holds a table of {rows:,} data x {m:,} values{per} = {total:,} elements at "
                         f"once; expected at most {MAX_ENUMERATED_TABLE:,} (jaxvi.latents.MAX_ENUMERATED_TABLE)"
                         + "".join(f". {a[0].upper()}{a[1:]}" for a in advice))


def value_shape(spec, dtype) -> Any:
    """The abstract value (``jax.ShapeDtypeStruct`` leaves) that ``log_joint`` receives for a continuous spec."""
    struct = lambda shape: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
    if isinstance(spec, Real):
        return struct(spec.shape)
    if isinstance(spec, Gaussian):
        return struct((spec.d,))
    if isinstance(spec, (Beta, Gamma)):
        return struct(spec.shape)
    if isinstance(spec, (Dirichlet, OneHot)):
        return struct(spec.shape + (spec.K,))
    if isinstance(spec, Wishart):
        return struct(spec.shape + (spec.d, spec.d))
    if isinstance(spec, NormalWishart):
        return struct(spec.shape + (spec.d,)), struct(spec.shape + (spec.d, spec.d))
    if isinstance(spec, NormalGamma):
        return struct(spec.shape), struct(spec.shape)
    raise ValueError(f"latent: {spec!r} is not a continuous spec")


def is_spec(node) -> bool:
    """Whether ``node`` is a latent spec (a leaf of a latent pytree)."""
    return isinstance(node, (Discrete, Markov, Gaussian, Real, Global) + EXPONENTIAL_FAMILY_SPECS)


def _center(name: str, center, *shapes: tuple) -> tuple | None:
    """A Normal-Wishart's or Normal-Gamma's ``center`` as a tuple of finite floats of one of ``shapes``, or None."""
    if center is None:
        return None
    try:
        values = np.atleast_1d(np.asarray(center, dtype=float))
    except (TypeError, ValueError):
        values = None
    if values is None or values.shape not in shapes or not np.all(np.isfinite(values)):
        raise ValueError(f"{name}: expected None or finite numbers of shape {' or '.join(map(str, shapes))}, "
                         f"got {center!r}")
    return tuple(float(v) for v in values)


def _positive_int(name: str, value) -> int:
    try:
        size = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}") from None
    if isinstance(value, bool) or size < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return size
