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
          progress: bool, desc: str = "", describe: Callable[[State], str] | None = None,
          every: int | None = None, after_chunk: Callable[[State], None] | None = None) -> State:
    """Runs ``run_chunk(state, stop_iter)`` until every run is done: in one call, or in chunks.

    A run stops by itself (``state.done``) after at most ``max_iter`` iterations; ``stop_iter`` only
    pauses it between chunks, so the last chunk's is ``max_iter + 1``. ``state`` may carry a
    leading restart axis; the bar follows the slowest restart. A state that has already run some
    iterations (a resumed checkpoint) continues from there.

    Args:
      progress: show a tqdm bar, fed between chunks.
      describe: the bar's text for a state.
      every: iterations per chunk (default: a twentieth of ``max_iter``).
      after_chunk: called with the state after every chunk (to write a checkpoint).
    """
    end = max_iter + 1
    if not progress and after_chunk is None:
        return run_chunk(state, jnp.asarray(end, jnp.int32))
    chunk = every or max(1, math.ceil(max_iter / 20))
    done_so_far = int(np.min(np.asarray(state.n_iter)))
    stop = (done_so_far // chunk + 1) * chunk
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, initial=int(np.max(np.asarray(state.n_iter))), desc=desc, unit="it",
                   dynamic_ncols=True)
    try:
        while not np.all(np.asarray(state.done)):
            state = run_chunk(state, jnp.asarray(stop if stop < max_iter else end, jnp.int32))
            stop += chunk
            if after_chunk is not None:
                after_chunk(state)
            if bar is not None:
                bar.update(int(np.max(np.asarray(state.n_iter))) - bar.n)
                if describe is not None:
                    bar.set_postfix_str(describe(state), refresh=False)
        if bar is not None:
            bar.total = bar.n  # close the bar at the iterations run
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()
    return state
