"""Networks for jaxvi: encoders of amortized inference and decoders of the VAE zoo model.

A ``Network`` is a pair of pure functions, ``init(key, x, out_dim) -> params`` (x: one input) and
``apply(params, x) -> (out_dim,)`` array. ``mlp(...)`` builds one in plain JAX; ``from_equinox``
and ``from_flax`` wrap modules of those libraries (imported only when used).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

__all__ = ["Network", "from_equinox", "from_flax", "mlp", "mlp_apply", "mlp_init"]


class Network(NamedTuple):
    """A network as two pure functions.

    Attributes:
      init: ``init(key, x, out_dim) -> params``: parameters for inputs like ``x`` (one input) and an
        output of ``out_dim`` values (a fixed-architecture module may ignore ``out_dim``; jaxvi then
        checks the size of what ``apply`` returns).
      apply: ``apply(params, x) -> (out_dim,)`` for one input; jaxvi vmaps it.
    """

    init: Callable[[jax.Array, Any, int], Any]
    apply: Callable[[Any, Any], jax.Array]


def mlp(hidden: Sequence[int] = (256, 256), activation: Callable = jnp.tanh) -> Network:
    """An MLP: the input flattened (a pytree's leaves raveled and joined, as ``jax.flatten_util.ravel_pytree``
    does), ``hidden`` layers with ``activation``, a linear output.

    Example:
      >>> jaxvi.Amortized(encoder=jaxvi.nn.mlp((64, 64), jax.nn.relu))
    """
    hidden = tuple(int(h) for h in hidden)

    def init(key, x, out_dim):
        flat = ravel_pytree(x)[0]
        return mlp_init(key, (flat.size, *hidden, out_dim), dtype=jnp.result_type(flat, jnp.float32))

    def apply(params, x):
        return mlp_apply(params, ravel_pytree(x)[0], activation)

    return Network(init, apply)


def from_equinox(module) -> Network:
    """A network from an equinox module mapping one input to its output: the module's arrays are the
    parameters, the rest is fixed (``eqx.partition(module, eqx.is_array)``)."""
    import equinox as eqx

    params, static = eqx.partition(module, eqx.is_array)
    return Network(lambda key, x, out_dim: params, lambda p, x: eqx.combine(p, static)(x))


def from_flax(module) -> Network:
    """A network from a flax linen module: ``init`` is ``module.init(key, x)``, ``apply`` is
    ``module.apply(params, x)`` on one input."""
    return Network(lambda key, x, out_dim: module.init(key, x), module.apply)


def mlp_init(key: jax.Array, sizes: Sequence[int], *, dtype=jnp.float32, zero_last: bool = False) -> list:
    r"""Parameters of an MLP with layer widths ``sizes`` (input first, output last).

    Weights are drawn :math:`N(0, 1/\text{fan-in})` (LeCun), biases are zero. ``zero_last`` makes the
    last layer zero, so the network starts as the constant 0 (a flow layer then starts as the identity).
    All weights come from one draw, cut into layers (one random-number kernel to compile, not one per layer).
    """
    shapes = list(zip(sizes[:-1], sizes[1:]))
    draws = jax.random.normal(key, (sum(a * b for a, b in shapes),), dtype)
    params, start = [], 0
    for i, (fan_in, fan_out) in enumerate(shapes):
        last = i == len(shapes) - 1
        scale = 0.0 if (last and zero_last) else fan_in ** -0.5
        weights = scale * draws[start:start + fan_in * fan_out].reshape(fan_in, fan_out)
        params.append((weights, jnp.zeros(fan_out, dtype)))
        start += fan_in * fan_out
    return params


def mlp_apply(params: list, x: jax.Array, activation: Callable = jnp.tanh) -> jax.Array:
    """The MLP at ``x`` (``(..., sizes[0])``): ``activation`` between layers, none after the last."""
    for weights, bias in params[:-1]:
        x = activation(x @ weights + bias)
    weights, bias = params[-1]
    return x @ weights + bias
