r"""A fit as ArviZ ``InferenceData``: posterior draws, pointwise log-likelihoods and the fit's bound.

``to_arviz(result, data, key=...)`` draws ``num_chains`` x ``num_draws`` independent latent values from the
fit's posterior (independent draws, split into chains so that ArviZ's diagnostics apply; R-hat near 1):

- ``Global`` latents from their q (SVI, Amortized) or their fitted factors (CAVI);
- per-datum latents from their q_i (SVI, the encoder of an Amortized fit; CAVI's local factor, its chains for
  several ``Markov`` chains, or the exact posterior of its expected log-joint; q is a product, so these do not
  depend on the global draw) or, where the fit has one, the exact posterior p(z_i | x_i, θ̂) (EM, OnlineEM;
  SVI with a latent summed out, given each global draw), with the data on a ``datum`` dimension. A latent with
  a multiplicity (LDA's word assignments: entry l stands for c_l tokens) is drawn token by token, as each
  entry's number of tokens per value (Multinomial(c_l, q_l)).

Variables are named by their paths in the model's latent (``mu``, ``theta.w``; a bare local latent is ``z``,
a tuple's items ``z.0``, ``z.1``).

The ``log_likelihood`` group holds, for every draw s and datum i, the log-likelihood of x_i that ArviZ's
``loo`` and ``waic`` read: :math:`\log p_\theta(x_i \mid z_g^{(s)})` with the local latent summed out
exactly (enumeration, forward algorithm, Gaussian integral; several ``Markov`` chains on their product chain)
or absent; where the local latent has a q_i instead (SVI's local guides, Amortized, CAVI's local
exponential-family factors; a latent with a multiplicity summed out over every token's value first), the one-draw
importance estimate
:math:`\log p_\theta(x_i, z_i^{(s)} \mid z_g^{(s)}) - \log q_i(z_i^{(s)})` (unbiased for the likelihood,
not for its log), and without global latents, the estimate of :math:`\log p_\theta(x_i)` from all the
draws, :math:`\log \frac1S \sum_s e^{w_{is}}`, the same for every draw. θ is a point in every fit: with no
global latent the draws of the likelihood do not vary, and PSIS-LOO returns the in-sample fit.

``attrs`` say what the fit maximised: its method, ``objective`` and what that is (``objective_is``:
"log p(D)" or "ELBO").
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvi import exact
from jaxvi.exact.chain import ChainPosterior
from jaxvi.exact.enumerate import DiscretePosterior
from jaxvi.exact.gaussian import GaussianPosterior
from jaxvi.latents import is_spec, split_latent
from jaxvi.methods import cavi
from jaxvi.methods.settings import check_count
from jaxvi.model import check_data, check_key
from jaxvi.pareto import log_mean_exp
from jaxvi.vi import chains
from jaxvi.vi.factors import Factor
from jaxvi.vi.fitted import FittedGuide, GlobalLocal

__all__ = ["Predictive", "predictive", "to_arviz"]

PyTree = Any
SUPPORTED = ("EM", "OnlineEM", "SVI", "Amortized", "CAVI")


def to_arviz(result, data: PyTree, *, key: jax.Array, num_draws: int = 1000, num_chains: int = 4):
    """The fit ``result`` on ``data`` (the data it was fitted to) as an ``arviz.InferenceData`` (module docstring;
    with ArviZ 1, an ``xarray.DataTree``): groups ``posterior``, ``log_likelihood`` (variable ``x``),
    ``observed_data``, and the fit in ``attrs``.

    Raises:
      ImportError: arviz is not installed (``pip install jaxvi[arviz]``).
      ValueError: a fit of another method than EM, OnlineEM, SVI, Amortized or CAVI, multiplicities that are not
        whole numbers, bad data, key, ``num_draws`` or ``num_chains``.
    """
    try:
        import arviz as az
    except ImportError:
        raise ImportError("to_arviz needs arviz: pip install 'jaxvi[arviz]'") from None
    data, key = _check_fit("to_arviz", result, data, key, num_draws)
    check_count("num_chains", num_chains)
    global_draws, local_draws, log_likelihood = compiled_draws(result, data, key, num_draws * num_chains)
    as_chains = lambda a: np.asarray(a).reshape((num_chains, num_draws) + np.shape(a)[1:])  # noqa: E731
    posterior, dims = {}, {}
    global_leaves = {id(leaf) for leaf in jax.tree_util.tree_leaves(global_draws)}
    for var, value in _named(_as_latent(result.model, global_draws, local_draws), "z").items():
        posterior[var] = as_chains(value)
        if id(value) not in global_leaves:  # a local latent: the data on the axis after the draws
            dims[var] = ["datum"] + [f"{var}_dim_{j}" for j in range(value.ndim - 2)]
    observed = {var: np.asarray(value) for var, value in _named(data, "x").items()}
    for var in observed:
        dims[var] = ["datum"] + [f"{var}_dim_{j}" for j in range(observed[var].ndim - 1)]
    dims["x"] = ["datum"] + dims.get("x", ["datum"])[1:]  # the log-likelihood's variable: one value per datum
    attrs = {"jaxvi_method": repr(result.method), "objective": float(result.objective),
             "objective_is": result.method.reports}
    groups = {"posterior": posterior, "log_likelihood": {"x": as_chains(log_likelihood)}, "observed_data": observed}
    if int(az.__version__.split(".")[0]) < 1:
        return az.from_dict(**groups, dims=dims, attrs=attrs)
    tree = az.from_dict(groups, dims=dims)  # ArviZ 1: the groups in one mapping, an xarray DataTree back
    tree.attrs.update(attrs)
    return tree


def _check_fit(who: str, result, data: PyTree, key: jax.Array, num_draws: int) -> tuple[PyTree, jax.Array]:
    """``(data, key)`` checked for ``to_arviz`` and ``predictive``: one fit of a method they take, a count of draws.

    Raises:
      ValueError: naming what is wrong.
    """
    name = type(result.method).__name__
    if name not in SUPPORTED:
        raise ValueError(f"result: {who} takes fits of {SUPPORTED}, got a {name} fit")
    data, key = check_data(data), check_key(key)
    check_count("num_draws", num_draws)
    if jnp.ndim(result.objective) != 0:
        raise ValueError(f"result: expected one fit, got a batch of {jnp.shape(result.objective)} (index it first)")
    counted = [leaf for leaf in jax.tree_util.tree_leaves(result.model.latent, is_leaf=is_spec)
               if getattr(leaf, "multiplicity", None) is not None]
    for leaf in counted:  # drawn token by token: whole numbers of tokens
        counts = np.asarray(jax.vmap(leaf.multiplicity)(data))
        bad = counts[(counts < 0) | (counts != np.round(counts))]
        if bad.size:  # the values shown are the offending ones (negative or fractional)
            raise ValueError(f"data: {who} draws the tokens of {leaf!r} one by one, so its multiplicities must be "
                             f"whole numbers >= 0, got values such as {bad[:3]}")
    return data, key


def _draws(result, data, key, num_draws):
    """``(global draws (S, ...) or None, local draws (S, N, ...) or None, log-likelihoods (S, N))``."""
    model, params = result.model, result.params
    parts = split_latent(model.latent)
    q = result.posterior(data)
    if isinstance(q, cavi.CAVIPosterior):
        return _cavi_draws(result, q, data, key, num_draws)
    global_q, local_q = (q.global_, q.local) if isinstance(q, GlobalLocal) else (
        (q, None) if isinstance(q, FittedGuide) and q.is_global else (None, q))
    global_key, local_key = jax.random.split(key)
    if global_q is None:
        if isinstance(local_q, FittedGuide):
            z = _datum_major_to_draw_major(local_q.sample(local_key, num_draws))
            weights = _guided_weights(model, parts, params, None, z, local_q, data)
            return None, z, _estimate_of_evidence(weights)
        z = _exact_draws(local_q, local_key, num_draws)
        return None, z, jnp.broadcast_to(local_q.log_evidence, (num_draws,) + local_q.log_evidence.shape)
    z_global = global_q.sample(global_key, num_draws)
    if local_q is None:
        return z_global, None, _global_only(model, parts, params, data, z_global)
    if isinstance(local_q, FittedGuide):
        z = _datum_major_to_draw_major(local_q.sample(local_key, num_draws))
        return z_global, z, _guided_weights(model, parts, params, z_global, z, local_q, data)

    return (z_global,) + _summed_out(model, parts, params, data, z_global, local_key)


def _summed_out(model, parts, params, data, z_global, key) -> tuple[PyTree, jax.Array]:
    r"""``(local draws (S, N, ...), log-likelihoods (S, N))`` at every global draw: one draw of each datum's latent
    from its exact posterior given the draw, and :math:`\log p(x_i \mid z_g)` with the latent summed out."""
    def summed(zg, k):
        post = exact.posterior(lambda p, z, x: model.log_joint(p, parts.combine(zg, z), x), parts.local, params, data)
        draw = jax.tree_util.tree_map(lambda a: a[0], _exact_draws(post, k, 1))
        return draw, post.log_evidence

    num_draws = jax.tree_util.tree_leaves(z_global)[0].shape[0]
    return jax.vmap(summed)(z_global, jax.random.split(key, num_draws))


def global_draws(result, key: jax.Array, num_draws: int) -> PyTree | None:
    """``num_draws`` draws of the fit's ``Global`` latents from its q (SVI, Amortized: the guide; CAVI: the
    factors), leaves ``(num_draws, ...)`` in the value ``log_joint`` receives; None where the fit has no global q.
    Traceable (``calibrate`` draws inside its vmapped fits)."""
    if type(result.method).__name__ == "CAVI":
        structure = cavi._structure(result.model)
        if not structure.factors:
            return None
        encoded = jax.vmap(lambda k: cavi._draws(structure.factors, result.diagnostics.factors, k))(
            jax.random.split(key, num_draws))
        return jax.vmap(structure.global_value)(encoded)
    if type(result.method).__name__ not in ("SVI", "Amortized"):  # the exact posterior of local latents only
        return None
    q = result.posterior()
    q = q.global_ if isinstance(q, GlobalLocal) else q
    if not isinstance(q, FittedGuide) or not q.is_global:
        return None
    return q.sample(key, num_draws)


def _cavi_draws(result, q, data, key, num_draws):
    """``_draws`` of a CAVI fit: the global latents from their factors, every datum's latent from its factor(s)
    of q (independent of the global draw: q is a product), and the log-likelihoods of the module docstring."""
    model, params = result.model, result.params
    structure = cavi._structure(model)
    parts = structure.parts
    global_key, local_key = jax.random.split(key)
    z_global = global_draws(result, global_key, num_draws)
    if parts.local is None:
        return z_global, None, _global_only(model, parts, params, data, z_global)
    layout, chain_layout = structure.local_factors, structure.chains
    if layout is not None:  # every datum's exponential-family factors: the one-draw importance estimate
        factors = tuple(jax.tree_util.tree_leaves(q.local, is_leaf=lambda f: isinstance(f, Factor)))
        draw_key, count_key = jax.random.split(local_key)
        encoded = jax.vmap(lambda k: cavi._draws(layout.factors, [f.eta for f in factors], k))(
            jax.random.split(draw_key, num_draws))
        counts = jax.vmap(layout.multiplicities)(data)
        weights = _counted_weights(model, parts, params, layout, z_global, encoded, counts, data)
        weights = weights - jax.vmap(lambda e: _local_factors_log_prob(factors, layout, e, counts))(encoded)
        encoded = _token_draws(factors, encoded, counts, count_key)
        z = jax.vmap(layout.value)(encoded)
        if z_global is None:
            return None, z, _estimate_of_evidence(weights)
        return z_global, z, weights
    if chain_layout is not None:  # several chains: q draws each; log p(x_i | z_g) on their product chain
        z = jax.vmap(lambda k: chain_layout.value(q.local.sample(k)))(jax.random.split(local_key, num_draws))

        def product_chain(zg):
            joint = lambda p, zl, x: model.log_joint(p, parts.combine(zg, zl), x)  # noqa: E731
            table = chains.tables(joint, params, data, chain_layout, result.method.chunk_size)
            return chains.exact_log_normaliser(table, chain_layout.sizes, q.local.lengths)

        if z_global is None:
            return None, z, jnp.broadcast_to(product_chain(None), (num_draws,) + q.local.lengths.shape)
        return z_global, z, jax.vmap(product_chain)(z_global)
    z = _exact_draws(q.local, local_key, num_draws)  # the exact posterior of the expected log-joint
    if z_global is None:
        return None, z, jnp.broadcast_to(q.local.log_evidence, (num_draws,) + q.local.log_evidence.shape)
    return z_global, z, _summed_out(model, parts, params, data, z_global, local_key)[1]


def _local_factors_log_prob(factors, layout, encoded, counts) -> jax.Array:
    """``(N,)`` log q_i(z_i) of every datum's local factors at a draw in their families' layout, but those with a
    multiplicity (summed out: ``_counted_weights``)."""
    total = 0.0
    for factor, spec, value, count in zip(factors, layout.factors, encoded, counts):
        if count is None:
            log_prob = factor.log_prob(spec.value(value))
            total = total + jnp.sum(log_prob.reshape(log_prob.shape[0], -1), axis=1)
    return total


def _counted_weights(model, parts, params, layout, z_global, encoded, counts, data) -> jax.Array:
    r"""``(S, N)`` :math:`\log p(x_i, z_{is} \mid z_{gs})` with every local latent that has a multiplicity (a
    ``OneHot`` plate whose entry l stands for :math:`c_l` tokens, as LDA's word assignments) summed out exactly
    over every token's value. The log-joint is linear in such a latent (CAVI checked it),
    :math:`f(z) = a + \sum_{lk} g_{lk} z_{lk}` with :math:`g_{lk}/c_l` one token's term, so the sum over all
    tokens' values is :math:`a + \sum_l c_l \log \sum_k e^{g_{lk}/c_l}`."""
    def one(zg, e, x, c):
        def joint(counted):
            values = [v if k is None else counted[j] for j, (v, k) in enumerate(zip(e, c))]
            return model.log_joint(params, parts.combine(zg, layout.value(values)), x)

        zero = [jnp.zeros_like(v) if k is not None else None for v, k in zip(e, c)]
        a, g = jax.value_and_grad(joint)(zero)
        for slope, k in zip(g, c):
            if k is not None:
                per_token = slope / jnp.where(k > 0, k, 1)[..., None]
                a = a + jnp.sum(jnp.where(k > 0, k * jax.nn.logsumexp(per_token, axis=-1), 0.0))
        return a

    def per_draw(zg, e):
        return jax.vmap(lambda e_i, x, c: one(zg, e_i, x, c))(e, data, counts)
    if z_global is None:
        return jax.vmap(lambda e: per_draw(None, e))(encoded)
    return jax.vmap(per_draw)(z_global, encoded)


def _token_draws(factors, encoded, counts, key) -> tuple:
    """The draws of latents with a multiplicity as every entry's tokens per value (a draw of
    Multinomial(c_l, q_l)), the others unchanged."""
    num_draws = jax.tree_util.tree_leaves(encoded)[0].shape[0]
    drawn = list(encoded)
    for j, (factor, count) in enumerate(zip(factors, counts)):
        if count is not None:
            probs = jax.nn.softmax(factor.eta[0], axis=-1)
            keys = jax.random.split(jax.random.fold_in(key, j), num_draws)
            drawn[j] = jax.vmap(lambda k: jax.random.multinomial(k, count, probs, dtype=probs.dtype))(keys)
    return tuple(drawn)


compiled_draws = jax.jit(_draws, static_argnums=3)  # one executable per fit structure, data shape and draw count


def _global_only(model, parts, params, data, z_global) -> jax.Array:
    """``(S, N)`` log p(x_i | z_gs): without a local latent the log-joint is the datum's likelihood."""
    def per_draw(zg):
        return jax.vmap(lambda x: model.log_joint(params, parts.combine(zg, None), x))(data)
    return jax.vmap(per_draw)(z_global)


def _guided_weights(model, parts, params, z_global, z, local_q, data) -> jax.Array:
    """``(S, N)`` log p(x_i, z_is | z_gs) - log q_i(z_is)."""
    return _joint_weights(model, parts, params, z_global, z, data) - jax.vmap(local_q.log_prob)(z)


def _joint_weights(model, parts, params, z_global, z, data) -> jax.Array:
    """``(S, N)`` log p(x_i, z_is | z_gs) (z_g None: no global latent)."""
    def per_draw(zg, zs):
        return jax.vmap(lambda zi, x: model.log_joint(params, parts.combine(zg, zi), x))(zs, data)
    if z_global is None:
        return jax.vmap(lambda zs: per_draw(None, zs))(z)
    return jax.vmap(per_draw)(z_global, z)


def _estimate_of_evidence(weights: jax.Array) -> jax.Array:
    r"""``(S, N)``: every datum's :math:`\log \frac1S \sum_s e^{w_{is}}` from its ``(S, N)`` weights, for every draw."""
    return jnp.broadcast_to(log_mean_exp(weights), weights.shape)


def _exact_draws(post, key, num_draws) -> PyTree:
    """``num_draws`` draws of every datum's latent from an exact posterior, leaves ``(S, N, ...)``."""
    keys = jax.random.split(key, num_draws)
    if isinstance(post, DiscretePosterior):
        index = jax.vmap(lambda k: jax.random.categorical(k, post.log_probs, axis=-1))(keys)
        return jax.tree_util.tree_map(lambda values: values[index], post.values)
    if isinstance(post, (GaussianPosterior, ChainPosterior)):
        return jax.vmap(post.sample)(keys)
    raise ValueError(f"result: to_arviz cannot draw from a {type(post).__name__}")


def _as_latent(model, global_draws, local_draws) -> PyTree:
    """The draws in the structure of the model's latent (its names), leading axes kept."""
    parts = split_latent(model.latent)
    if not parts.globals:
        return local_draws
    return parts.combine(global_draws, local_draws)


def _datum_major_to_draw_major(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), tree)


def _named(tree: PyTree, default: str) -> dict:
    """Leaves by name: the path in the tree (``mu``, ``theta.w``), or ``default`` for a bare array."""
    if tree is None:
        return {}
    named = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = [str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path]
        if path and isinstance(path[0], jax.tree_util.SequenceKey):  # a tuple's items: z.0, z.1
            parts = [default] + parts
        named[".".join(parts) or default] = leaf
    return named


class Predictive(NamedTuple):
    """Posterior-predictive draws (``predictive``).

    Attributes:
      global_draws: the ``Global`` latents' draws, leaves ``(S, ...)`` (None without them).
      local_draws: every datum's latent draws, leaves ``(S, N, ...)`` (None without a local latent).
      log_likelihood: ``(S, N)`` the pointwise log-likelihoods of the data at the draws (``to_arviz``'s).
      replicates: ``(S, N, ...)`` replicated data drawn from the model at each draw (None without ``sample``).
    """

    global_draws: Any
    local_draws: Any
    log_likelihood: jax.Array
    replicates: Any


def predictive(result, data: PyTree, *, key: jax.Array, num_draws: int = 100, sample=None) -> Predictive:
    r"""Posterior-predictive draws of a fit on ``data``: latent values from its posterior (q, or the exact one
    where the fit has it; module docstring), the pointwise log-likelihoods of the data at them, and, with a
    ``sample(key, params, z, x) -> x_rep`` that draws one datum from :math:`p_\theta(x \mid z)` (``x`` the datum
    it replicates, for covariates), replicated data for every draw and datum.

    Raises:
      ValueError: as ``to_arviz`` (a batch of fits, another method, bad data, key or ``num_draws``); a ``sample``
        that is not callable or whose replicate is not like the datum.
    """
    data, key = _check_fit("predictive", result, data, key, num_draws)
    if sample is not None and not callable(sample):
        raise ValueError(f"sample: expected a function sample(key, params, z, x) -> x_rep, got {sample!r}")
    draw_key, sample_key = jax.random.split(key)
    global_draws, local_draws, log_likelihood = compiled_draws(result, data, draw_key, num_draws)
    replicates = None
    if sample is not None:
        parts = split_latent(result.model.latent)
        datum = jax.tree_util.tree_map(lambda a: a[0], data)
        z_global = jax.tree_util.tree_map(lambda a: a[0], global_draws)
        z_local = jax.tree_util.tree_map(lambda a: a[0, 0], local_draws)
        shape = jax.eval_shape(sample, jax.random.key(0), result.params, parts.combine(z_global, z_local), datum)
        if jax.tree_util.tree_structure(shape) != jax.tree_util.tree_structure(datum) or any(
                s.shape != jnp.shape(d) for s, d in zip(jax.tree_util.tree_leaves(shape),
                                                         jax.tree_util.tree_leaves(datum))):
            raise ValueError(f"sample: expected a replicate shaped like one datum, {jax.tree_util.tree_map(jnp.shape, datum)}, "
                             f"got {jax.tree_util.tree_map(lambda s: s.shape, shape)}")
        replicates = jax.jit(_replicate, static_argnums=(0, 1, 7))(result.model, sample, result.params, global_draws,
                                                                 local_draws, data, sample_key, num_draws)
    return Predictive(global_draws, local_draws, log_likelihood, replicates)


def _replicate(model, sample, params, global_draws, local_draws, data, key, num_draws):
    """``(S, N, ...)`` replicates: ``sample`` at every draw and datum."""
    parts = split_latent(model.latent)
    n = jax.tree_util.tree_leaves(data)[0].shape[0]
    keys = jax.random.split(key, (num_draws, n))

    def per_draw(keys, zg, zl):
        if zl is None:
            return jax.vmap(lambda k, x: sample(k, params, parts.combine(zg, None), x))(keys, data)
        return jax.vmap(lambda k, z, x: sample(k, params, parts.combine(zg, z), x))(keys, zl, data)

    return jax.vmap(per_draw)(keys, global_draws, local_draws)
