"""A small multilayer perceptron in plain JAX: parameters are a list of ``(weights, bias)`` pairs.

Used by normalizing-flow guides (coupling conditioners) and as the default encoder of amortized
inference. Any ``(params, x) -> output`` function works in its place.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

__all__ = ["mlp_apply", "mlp_init"]


def mlp_init(key: jax.Array, sizes: Sequence[int], *, dtype=jnp.float32, zero_last: bool = False) -> list:
    r"""Parameters of an MLP with layer widths ``sizes`` (input first, output last).

    Weights are drawn :math:`N(0, 1/\text{fan-in})` (LeCun), biases are zero. ``zero_last`` makes the
    last layer zero, so the network starts as the constant 0 (a flow layer then starts as the identity).
    """
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        scale = 0.0 if (last and zero_last) else fan_in ** -0.5
        params.append((scale * jax.random.normal(k, (fan_in, fan_out), dtype), jnp.zeros(fan_out, dtype)))
    return params


def mlp_apply(params: list, x: jax.Array, activation: Callable = jnp.tanh) -> jax.Array:
    """The MLP at ``x`` (``(..., sizes[0])``): ``activation`` between layers, none after the last."""
    for weights, bias in params[:-1]:
        x = activation(x @ weights + bias)
    weights, bias = params[-1]
    return x @ weights + bias
