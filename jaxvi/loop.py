"""The compiled training loop and its host-side driver.

A method's iterations run inside one ``lax.while_loop``. With a progress bar, the loop runs in
chunks of iterations; between chunks the host reads the iteration count and updates the bar.
The compiled chunk is the same function with a different stop count, so it compiles once.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["run_until", "drive"]

State = Any


def run_until(step: Callable[[State], State], state: State, stop_iter: jax.Array) -> State:
    """Applies ``step`` while ``state.n_iter < stop_iter`` and not ``state.done``."""
    return lax.while_loop(lambda s: (s.n_iter < stop_iter) & ~s.done, step, state)


def drive(run_chunk: Callable[[State, jax.Array], State], state: State, max_iter: int, *,
          progress: bool, desc: str, describe: Callable[[State], str] | None = None) -> State:
    """Runs ``run_chunk(state, stop_iter)`` to ``max_iter``: in one call, or in chunks with a tqdm bar.

    ``state`` may carry a leading restart axis; the bar follows the slowest restart.
    """
    if not progress:
        return run_chunk(state, jnp.asarray(max_iter, jnp.int32))
    from tqdm.auto import tqdm

    chunk = max(1, math.ceil(max_iter / 20))
    with tqdm(total=max_iter, desc=desc, unit="it", dynamic_ncols=True) as bar:
        for stop in range(chunk, max_iter + chunk, chunk):
            state = run_chunk(state, jnp.asarray(min(stop, max_iter), jnp.int32))
            done, n_iter = np.asarray(state.done), np.asarray(state.n_iter)
            bar.update(int(np.max(n_iter)) - bar.n)
            if describe is not None:
                bar.set_postfix_str(describe(state), refresh=False)
            if np.all(done | (n_iter < min(stop, max_iter))):
                bar.total = bar.n  # every run stopped early: close the bar at the iterations run
                bar.refresh()
                break
    return state
