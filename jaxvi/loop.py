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
    """Runs ``run_chunk(state, stop_iter)`` until every run is done: in one call, or in chunks with a tqdm bar.

    A run stops by itself (``state.done``) after at most ``max_iter`` iterations; ``stop_iter`` only
    pauses it between chunks, so the last chunk's is ``max_iter + 1``. ``state`` may carry a
    leading restart axis; the bar follows the slowest restart.
    """
    end = max_iter + 1
    if not progress:
        return run_chunk(state, jnp.asarray(end, jnp.int32))
    from tqdm.auto import tqdm

    chunk = max(1, math.ceil(max_iter / 20))
    with tqdm(total=max_iter, desc=desc, unit="it", dynamic_ncols=True) as bar:
        for stop in range(chunk, end + chunk, chunk):
            state = run_chunk(state, jnp.asarray(stop if stop < max_iter else end, jnp.int32))
            bar.update(int(np.max(np.asarray(state.n_iter))) - bar.n)
            if describe is not None:
                bar.set_postfix_str(describe(state), refresh=False)
            if np.all(np.asarray(state.done)):
                bar.total = bar.n  # close the bar at the iterations run
                bar.refresh()
                break
    return state
