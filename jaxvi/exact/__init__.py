"""Exact posteriors: the E-step of EM, from the latent's structure.

``posterior`` picks the algorithm from the latent spec (``latents.exact_family``): enumeration for
``Discrete`` (``enumerate.py``), forward–backward for ``Markov`` (``chain.py``), the Gaussian
integral for ``Gaussian`` (``gaussian.py``). ``expected_log_joint`` picks it from the posterior.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvi.equality import Structural
from jaxvi.exact import chain, enumerate, gaussian
from jaxvi.exact.chain import ChainPosterior, Sequences
from jaxvi.exact.enumerate import DiscretePosterior, elbo, latent_values
from jaxvi.exact.gaussian import GaussianPosterior
from jaxvi.latents import exact_family
from jaxvi.model import Model, check_data, fitted_params, is_traced
from jaxvi.run.compiled import per_fit

__all__ = ["ChainPosterior", "DiscretePosterior", "GaussianPosterior", "Sequences", "elbo", "expected_log_joint",
           "all_well_posed", "latent_values", "posterior", "well_posed"]

_MODULES = {"discrete": enumerate, "markov": chain, "gaussian": gaussian}
_BY_POSTERIOR = {DiscretePosterior: enumerate, ChainPosterior: chain, GaussianPosterior: gaussian}


def posterior(log_joint, latent, params, data, chunk_size: int = 1024, differentiable: bool = True):
    """The exact posterior p(z_i | x_i, params) of every datum, by the latent's own algorithm.

    ``differentiable=False`` (an E-step that nothing differentiates through) allows a faster algorithm decided
    by a loop, which reverse-mode differentiation cannot go through: for a ``Markov`` chain whose transitions do
    not depend on the step, forward–backward in probability space (``chain.posterior``).

    Called on concrete values (outside ``jit``), it runs as one program, compiled once per log-joint (its code and
    values), latent and settings (``jaxvi.run.compiled.per_fit``): operation by operation, JAX compiled each
    operation alone, 4-8 s for a mixture's or an HMM's first posterior. There its arguments are checked first, as
    ``jaxvi.infer`` checks a fit's: the data (``check_data``: a leading datum axis, finite values, sequences'
    lengths), ``chunk_size``, and the log-joint, traced once at these shapes (a real scalar per datum).

    Raises:
      ValueError: naming the argument that is not as described (outside ``jit``)."""
    settings = Structural((log_joint, latent, chunk_size, differentiable))
    if is_traced(params, data):  # an E-step's: not through per_fit, whose table of fits it would fill
        return _posterior(settings, None, params, data)
    from jaxvi.methods.settings import check_count  # not at the top: the methods import this package

    exact_family(latent)  # a latent without an exact posterior: named
    check_count("chunk_size", chunk_size)
    data = check_data(data)
    params = fitted_params(Model(log_joint, latent, init=lambda key, data: params), params, data)
    return _compiled_posterior(settings, None, params, data)


def _posterior(settings: Structural, no_method: None, params, data):
    """``posterior`` of ``settings = Structural((log_joint, latent, chunk_size, differentiable))``, in ``per_fit``'s
    form: the settings in the model's place, compared by what they are (``jaxvi.equality``); no method."""
    log_joint, latent, chunk_size, differentiable = settings.value
    family = exact_family(latent)
    if family == "markov":
        return chain.posterior(log_joint, latent, params, data, chunk_size, differentiable)
    return _MODULES[family].posterior(log_joint, latent, params, data, chunk_size)


_compiled_posterior = per_fit(_posterior)


def differentiable_for(latent, data, passes: int) -> bool:
    """The ``differentiable`` an E-step that nothing differentiates through, run ``passes`` times over ``data``,
    gives ``posterior``: False where a faster path repays its compile time (``chain.worth_scaling``)."""
    return not (exact_family(latent) == "markov" and chain.worth_scaling(latent, data, passes))


def expected_log_joint(log_joint, params, data, post, chunk_size: int = 1024) -> jax.Array:
    r"""EM's auxiliary function :math:`Q(\theta) = \sum_i E_{q_i}[\log p_\theta(x_i, z_i)]` for any exact posterior."""
    module = _BY_POSTERIOR.get(type(post))
    if module is None:  # an approximate local q that computes its own expectation (``jaxvi.vi.chains``)
        return post.expected_log_joint(log_joint, params, data, chunk_size)
    return module.expected_log_joint(log_joint, params, data, post, chunk_size)


def well_posed(post) -> jax.Array | None:
    """``(N,)`` False for data where the E-step's assumption failed (a ``Gaussian`` log-joint not quadratic);
    None for the families whose E-step cannot fail so (an all-True constant of N values would be folded
    by XLA through every reduction of it, at a compile cost growing with N)."""
    if isinstance(post, GaussianPosterior):
        return post.quadratic
    return None


def all_well_posed(post) -> jax.Array:
    """Whether every datum's E-step assumption held (``well_posed``), a scalar."""
    mask = well_posed(post)
    return jnp.array(True) if mask is None else jnp.all(mask)
