r"""The method protocol: what every fitting method is, so that the run layer (and a researcher's own
loop) can drive any of them the same way.

A method is a frozen settings dataclass, registered as a pytree whose leaves are its *numbers*
(tolerances, learning rates, step-size powers: traced, so a new value does not recompile and
``jax.vmap`` over them works) and whose static part is its *structure* (sizes, guides, functions).
Its behaviour is three pure functions over an algorithm-only state::

    state = method.init(model, key, data, params=None)
    state, info = method.step(model, key, state, batch, num_data=N)
    result = method.finalize(model, key, state, data)

``batch`` is what the caller passes: all the data, or a minibatch it drew. A method that keeps
per-datum variational parameters needs to know which data a minibatch holds: pass
``jaxvi.Batch(index, data)``. ``num_data`` is N, for the unbiased N/B scaling of sums over data.
``key`` is the step's randomness (the same key, the same step). ``info`` has at least
``objective`` (the step's estimate of the maximised quantity, scaled to all N data) and ``fault``
(a ``Fault``; kind 0 when the step was healthy). A step that faults returns the state it was
given unchanged, so a caller can stop (or skip) without keeping a copy.

What a method reports (log p(D) or an ELBO), how ``jaxvi.infer`` drives it (how many steps,
which batches, which stopping rule) and which fields of its state hold one row per datum (a step on a
``jaxvi.Batch`` changes only its rows: the run keeps a copy of the last finite state at the cost of
those rows) it declares as data: ``reports``, ``schedule(num_data)`` and ``per_datum``.

A method may also say how its programs are best compiled: ``large_kernels(model)``, true where a step works in
large kernels over the data (EM with discrete latents, CAVI with discrete local latents or none), makes
``jaxvi.compiler_options`` choose XLA:CPU's older kernel emitters, which compile faster
(``jaxvi.run.compiled.LARGE_KERNEL_CODE``); a method without it is compiled with the defaults.

Called on concrete values (a user's own loop starting or ending outside ``jit``), jaxvi's methods run ``init`` and
``finalize`` as one program each, compiled once per model and method structure
(``jaxvi.run.compiled.compiled_outside_traces``); JAX would otherwise run them operation by operation and compile
each operation alone. A method of your own can take the same decorator.

``finalize`` reports the fault of its own evaluation in ``result.diagnostics.fault`` (a non-finite
objective or parameter leaf, ``Fault`` kinds 6 and 7; kind 0 when finite): ``jaxvi.infer`` then
returns the last state whose objective was finite instead, and raises.

Example (a user's own loop; ``jaxvi.infer`` does the same and more)::

    method = jaxvi.SVI(batch_size=64)
    state = method.init(model, jax.random.key(0), data)

    def one_step(state, key):
        batch_key, step_key = jax.random.split(key)
        index = jax.random.choice(batch_key, N, (64,), replace=False)
        batch = jaxvi.Batch(index, jax.tree_util.tree_map(lambda a: a[index], data))
        state, info = method.step(model, step_key, state, batch, num_data=N)
        return state, info.objective

    state, elbos = jax.lax.scan(one_step, state, jax.random.split(jax.random.key(1), 1000))
    result = method.finalize(model, jax.random.key(2), state, data)
"""
from __future__ import annotations

from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import jax

__all__ = ["Info", "Method"]

PyTree = Any


class Info(NamedTuple):
    """What a step tells the caller besides the new state.

    Attributes:
      objective: the step's estimate of the maximised quantity on all N data (log p(D) for EM at
        the parameters the step started from, an ELBO estimate for VI).
      fault: the step's numerical fault (``Fault``; ``kind == 0``: none). A faulty step left the
        state unchanged.
    """

    objective: jax.Array
    fault: Any


@runtime_checkable
class Method(Protocol):
    """A fitting method: settings plus pure ``init`` / ``step`` / ``finalize`` (module docstring)."""

    reports: ClassVar[str]  # what ``Result.objective`` is: "log p(D)" or "ELBO"
    per_datum: ClassVar[tuple[str, ...]]  # the state's fields with a leading datum axis, changed at a batch's rows
    n_init: int

    def check(self, model, data) -> None:
        """Raises ValueError for a model or data this method cannot fit, before anything compiles."""

    def schedule(self, num_data: int):
        """How ``jaxvi.infer`` drives this method on N data: a ``jaxvi.run.Schedule``."""

    def init(self, model, key: jax.Array, data: PyTree, params: PyTree | None = None) -> PyTree:
        """The state before the first step."""

    def step(self, model, key: jax.Array, state: PyTree, batch: PyTree, *, num_data) -> tuple[PyTree, Info]:
        """One step on ``batch`` (all the data or a minibatch of N = ``num_data``)."""

    def finalize(self, model, key: jax.Array, state: PyTree, data: PyTree):
        """The ``Result`` of the state (the run layer fills in its trace, fault and stopping record)."""

    def posterior(self, result, data: PyTree | None = None):
        """The fitted posterior (what ``Result.posterior`` returns)."""
